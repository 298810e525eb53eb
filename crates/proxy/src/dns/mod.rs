//! The DNS proxy: pods' queries the datapath sends here (UDP and TCP, any resolver, port 53
//! under a `rules.dns` redirect) are judged by name, forwarded unchanged to the resolver the
//! pod asked, and the answer is held until the agent has put the learned addresses into the
//! policy maps.
//!
//! - [`message`]: reading queries and answers, the proxy's own answers;
//! - [`gate`]: answers held until the agent's FqdnAllowed;
//! - [`acked`]: what the agent confirmed already (answers teaching nothing new go out at once);
//! - [`udp`], [`tcp`]: the sockets (the supervisor's, inherited) and the replies to the pod;
//! - [`upstream`]: the way to the resolver (UDP: a pool of random-port sockets, rotated);
//! - [`timing`]: where a query's time goes (a debugging aid, off unless asked for);
//! - [`thread`]: the thread that serves DNS, in the real-time class within a budget.
//!
//! The upstream query leaves from an ordinary socket of the node (the node's address, a
//! random port), not from the pod's address as the HTTP proxy's upstream does: the resolver
//! is outside the pod's L7 policy (the pod was allowed to ask it), a node socket needs no
//! from-proxy mark nor conntrack entry for the answer to come back, and random source ports
//! (a few per resolver, replaced every few hundred queries: see [`upstream`]) keep answers
//! from being spoofed into another pod's flow. The cost: a
//! resolver that is a pod of this node sees the node (`host`) as the client, so its ingress
//! policy must allow the host (Cilium's default allow-localhost does).

pub mod acked;
pub mod gate;
pub mod message;
pub mod peers;
pub mod tcp;
pub mod thread;
pub mod timing;
pub mod udp;
pub mod upstream;

pub use upstream::{UdpPool, Upstream};

use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ciliate_model::identity::NumericIdentity;
use ciliate_model::l7::{
    DnsRecord, FqdnAnswer, FqdnLearned, L7Parser, L7RecordType, L7Verdict, ProxyEvent,
};
use hickory_proto::op::ResponseCode;
use tracing::{debug, warn};

use crate::engine::Engine;
use crate::policy::RedirectKey;
use gate::AnswerGate;
use message::{AnswerInfo, QueryInfo};
use peers::PeerIdentities;

/// The largest DNS message (the TCP length prefix's limit).
pub const MAX_MESSAGE: usize = 65535;

/// How the DNS proxy waits.
#[derive(Clone, Copy, Debug)]
pub struct DnsConfig {
    /// Giving up on the resolver (the pod then gets SERVFAIL).
    pub upstream_timeout: Duration,
    /// The longest an answer is held for the agent's FqdnAllowed.
    pub allow_timeout: Duration,
    /// Answer from the resolver's address with IP_TRANSPARENT sockets (production); off, the
    /// answer leaves from the socket the query came in on (tests without a redirect).
    pub transparent: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(5),
            allow_timeout: Duration::from_millis(200),
            transparent: true,
        }
    }
}

/// The DNS proxy of one proxy process.
#[derive(Debug)]
pub struct DnsProxy {
    /// Policy, identities, events and counters shared with the HTTP side.
    pub engine: Arc<Engine>,
    /// Held answers.
    pub gate: Arc<AnswerGate>,
    /// Timeouts.
    pub config: DnsConfig,
    /// The identities of pods and resolvers, remembered for a moment.
    pub peers: PeerIdentities,
}

/// UDP or TCP, as the record says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One query per datagram.
    Udp,
    /// Length-prefixed queries on a connection.
    Tcp,
}

impl Transport {
    fn proto(self) -> u8 {
        match self {
            Self::Udp => 17,
            Self::Tcp => 6,
        }
    }
}

/// One query's pod and resolver.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// The pod's address and port.
    pub client: SocketAddrV4,
    /// The resolver it asked (the original destination).
    pub resolver: SocketAddrV4,
    /// How it asked.
    pub transport: Transport,
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What one query's records share.
struct Meta {
    endpoint: u16,
    flow: Flow,
    source_identity: NumericIdentity,
    destination_identity: NumericIdentity,
}

impl Meta {
    fn record(&self, record_type: L7RecordType, verdict: L7Verdict, query: &str) -> DnsRecord {
        DnsRecord {
            time_ns: now_ns(),
            record_type,
            endpoint: self.endpoint,
            source: self.flow.client,
            destination: self.flow.resolver,
            proto: self.flow.transport.proto(),
            source_identity: self.source_identity,
            destination_identity: self.destination_identity,
            verdict,
            rule: 0,
            query: query.to_owned(),
            qtypes: Vec::new(),
            rcode: 0,
            ips: Vec::new(),
            ttl: 0,
            cnames: Vec::new(),
            rrtypes: Vec::new(),
            latency_ns: 0,
            reason: None,
        }
    }
}

impl DnsProxy {
    /// Queues an event for the agent; false (and counted) when the queue is full.
    pub(crate) fn emit(&self, ev: ProxyEvent) -> bool {
        let sent = self.engine.events.try_send(ev).is_ok();
        if !sent {
            self.engine
                .counters
                .records_lost
                .fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    fn emit_record(&self, r: DnsRecord) {
        let _ = self.emit(ProxyEvent::Dns(Box::new(r)));
    }

    /// Handles one query of `flow`; returns the answer for the pod, or `None` when there is
    /// nothing to answer (not even a header to answer FORMERR with).
    pub async fn handle(
        &self,
        bytes: &[u8],
        flow: Flow,
        upstream: &mut Upstream,
    ) -> Option<Vec<u8>> {
        self.handle_timed(bytes, flow, upstream, None).await
    }

    /// [`handle`](Self::handle), ending the segments of `clock` (see [`timing`]) as it goes,
    /// all but the reply's.
    pub async fn handle_timed(
        &self,
        bytes: &[u8],
        flow: Flow,
        upstream: &mut Upstream,
        mut clock: Option<&mut timing::Clock>,
    ) -> Option<Vec<u8>> {
        // Every query (UDP or TCP) counts against the DNS thread's real-time budget: a flood
        // cannot keep it ahead of ordinary tasks beyond that.
        crate::rt_budget::check();
        let started = Instant::now();
        let mut lap = |segment| {
            if let (Some(c), Some(t)) = (clock.as_deref_mut(), timing::enabled()) {
                c.lap(t, segment);
            }
        };
        lap(timing::Segment::Queued);
        let counters = &self.engine.counters;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let key = RedirectKey {
            endpoint_ip: *flow.client.ip(),
            egress: true,
            port: flow.resolver.port(),
        };
        let table = self.engine.policy.current();
        let redirect = table
            .get(&key)
            .filter(|r| r.redirect.parser == L7Parser::Dns)
            .cloned();
        let meta = Meta {
            endpoint: redirect.as_ref().map_or(0, |r| r.redirect.endpoint),
            flow,
            source_identity: self.peers.identity_of(
                self.engine.identities.as_ref(),
                &table,
                *flow.client.ip(),
            ),
            destination_identity: self.peers.identity_of(
                self.engine.identities.as_ref(),
                &table,
                *flow.resolver.ip(),
            ),
        };

        let (query, info) = match message::inspect_query(bytes, flow.transport == Transport::Udp) {
            Ok(q) => q,
            Err(bad) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                debug!(client = %flow.client, reason = %bad.reason, "bad DNS query");
                let mut r = meta.record(L7RecordType::Request, L7Verdict::Error, "");
                r.reason = Some(bad.reason);
                self.emit_record(r);
                let id = bad.id?;
                let mut r = meta.record(L7RecordType::Response, L7Verdict::Error, "");
                r.rcode = u16::from(ResponseCode::FormErr);
                r.reason = Some("FORMERR".into());
                self.emit_record(r);
                return Some(message::header_only(id, ResponseCode::FormErr));
            }
        };
        let mut request = meta.record(L7RecordType::Request, L7Verdict::Forwarded, &info.name);
        request.qtypes = info.qtypes.clone();

        let rule = match &redirect {
            None => Err("no DNS redirect for this endpoint and port"),
            Some(r) => r
                .decide_dns(meta.destination_identity, &info.name)
                .ok_or("no rule allows the name"),
        };
        let rule = match rule {
            Ok(rule) => rule,
            Err(why) => {
                counters.denied.fetch_add(1, Ordering::Relaxed);
                request.verdict = L7Verdict::Dropped;
                request.reason = Some(why.into());
                let mut response = request.clone();
                response.record_type = L7RecordType::Response;
                response.rcode = u16::from(ResponseCode::Refused);
                response.time_ns = now_ns();
                self.emit_record(request);
                self.emit_record(response);
                return Some(message::answer_with(&query, ResponseCode::Refused));
            }
        };
        request.rule = rule;
        self.emit_record(request.clone());

        let mut response = request;
        response.record_type = L7RecordType::Response;
        lap(timing::Segment::ToUpstream);
        let exchanged = tokio::time::timeout(
            self.config.upstream_timeout,
            upstream.exchange(flow.transport, flow.resolver, bytes, info.id),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from {} within {:?}",
                flow.resolver, self.config.upstream_timeout
            ))
        });
        lap(timing::Segment::Upstream);
        let parsed = exchanged.and_then(|a| {
            let i = message::inspect_answer(&a, &info.name)?;
            if i.id != info.id {
                return Err(format!(
                    "the answer's id {} is not the query's {}",
                    i.id, info.id
                ));
            }
            Ok((a, i))
        });
        let (answer, ai) = match parsed {
            Ok(x) => x,
            Err(why) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                debug!(client = %flow.client, query = %info.name, reason = %why, "upstream failed");
                response.verdict = L7Verdict::Error;
                response.rcode = u16::from(ResponseCode::ServFail);
                response.reason = Some(why);
                response.latency_ns = elapsed_ns(started);
                response.time_ns = now_ns();
                self.emit_record(response);
                return Some(message::answer_with(&query, ResponseCode::ServFail));
            }
        };
        if ai.rcode == 0 && !ai.ips.is_empty() {
            self.hold_for_agent(&meta, &info, &ai).await;
        }
        lap(timing::Segment::Agent);
        response.rcode = ai.rcode;
        response.ips = ai.ips;
        response.ttl = ai.ttl;
        response.cnames = ai.cnames;
        response.rrtypes = ai.rrtypes;
        response.latency_ns = elapsed_ns(started);
        response.time_ns = now_ns();
        self.emit_record(response);
        Some(answer)
    }

    /// Tells the agent the addresses the answer teaches and waits for its FqdnAllowed (at
    /// most the configured delay), unless the agent confirmed them all recently for this
    /// endpoint: then it is told without waiting, at most once a second per name, to refresh
    /// its TTLs (see [`acked`]).
    async fn hold_for_agent(&self, meta: &Meta, q: &QueryInfo, a: &AnswerInfo) {
        let names: Vec<FqdnAnswer> = std::iter::once(q.name.clone())
            .chain(a.cnames.iter().cloned())
            .map(|name| FqdnAnswer {
                name,
                ips: a.ips.clone(),
                ttl: a.ttl,
            })
            .collect();
        let learned = |id, names| {
            ProxyEvent::FqdnLearned(Box::new(FqdnLearned {
                id,
                endpoint: meta.endpoint,
                endpoint_ip: *meta.flow.client.ip(),
                names,
            }))
        };
        if self.gate.confirmed(meta.endpoint, &names) {
            // Nothing waits for this id; its FqdnAllowed renews the confirmation.
            if self.gate.renewal_due(meta.endpoint, &names) {
                let id = self.gate.renewal(meta.endpoint, names.clone());
                let _ = self.emit(learned(id, names));
            }
            return;
        }
        if let Some(t) = timing::enabled() {
            t.held.fetch_add(1, Ordering::Relaxed);
        }
        let ticket = self.gate.ticket();
        let id = ticket.id;
        let told = self.emit(learned(id, names.clone()));
        // Nobody will answer an event that never left: waiting would only delay the pod.
        let limit = if told {
            self.config.allow_timeout
        } else {
            Duration::ZERO
        };
        if !self.gate.wait(ticket, limit, meta.endpoint, &names).await {
            let counter = &self.engine.counters.dns_allow_timeouts;
            let timeouts = counter.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(
                id,
                query = %q.name,
                waited = ?limit,
                timeouts,
                "the agent did not confirm the learned addresses in time; answering anyway"
            );
        }
    }
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
