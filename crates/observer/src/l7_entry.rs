//! An HTTP record of the node's proxy as the ring keeps it: the record itself, the two ends as
//! the store named them when the record arrived (shared endpoint entries, not copies) and the
//! Services they were. The whole Hubble [`Flow`] is built only when someone reads it
//! (GetFlows, follow, export); the flow history stores it from these parts (its endpoints once
//! per block, as for datapath events: [`crate::record::Recorded`]).
//!
//! Why: the proxy sends two records per request, and naming both ends of each flow (a pod's
//! namespace, name and labels, the node's labels, the id as text) was most of the agent's
//! allocations per request, for flows most of which nobody reads. Nor is the flow without
//! its names built per record (its summary, addresses as text, node name, headers' canonical
//! names): the metrics and the flow history fill one such flow per batch in place
//! ([`RecordedHttp::fill_unnamed`]), so that everything they look at is what the built flow
//! shows.
//!
//! DNS records are kept as a flow without names ([`RecordedHttp::capture_dns_with`]): at
//! 10,000 queries a second, building their named flows and freeing those the full ring pushed
//! out were two thirds of the agent's record thread, whose runs the DNS path's wakeups wait
//! behind on a busy CPU (bench/README.md, "Session 15: where the p99 comes from").

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};
use ciliate_model::l7_wire::{DnsView, HttpFrame, HttpView};

use crate::convert::{service, system_time_to_timestamp};
use crate::dns::dns_parts;
use crate::http_metrics::{reporter_of, HttpSample};
use crate::l7::{l7_flow_unnamed, verdict, MESSAGE_TYPE_ACCESS_LOG, TCP};
use crate::metrics::Metrics;
use crate::proto::flow::{
    layer4, layer7, CiliumEventType, Endpoint, Flow, FlowType, Http, HttpHeader, Ip, IpVersion,
    L7FlowType, Layer4, Layer7, Policy, Service, Tcp, TrafficDirection,
};
use crate::record::{side, side_endpoint, side_key, FlowIds, NodeNames, Side};
use crate::store::Store;

/// An HTTP (or DNS) record with the names it had: what the ring keeps instead of a built Flow.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedHttp {
    /// The record.
    kept: Kept,
    /// The record's time (Unix nanoseconds), read without the frame.
    time_ns: u64,
    /// The flow's id, fixed when the record arrived.
    uuid: uuid::Uuid,
    node: Arc<NodeNames>,
    /// The flow's source and destination (a response's source is the server), with their
    /// identities.
    ends: [(Side, u32); 2],
    /// The policy that allowed the request (shared by the records of a batch: a copy per
    /// record was ~7 allocations), put in the flow's `*_allowed_by` when it is built, and that
    /// field's number.
    policy: Option<(u32, Arc<Policy>)>,
}

/// What a kept record is.
#[derive(Clone, Debug, PartialEq)]
enum Kept {
    /// An HTTP record as the proxy sent it: its frame, read in place whenever the flow is
    /// built.
    Http {
        frame: HttpFrame,
        /// The flow's node name (the observer's).
        node_name: Arc<str>,
        /// The Services whose frontends the flow's source and destination were when the
        /// record arrived; `None` when neither was one (as a rule: the proxy sees backends).
        services: Option<Box<[Option<Service>; 2]>>,
    },
    /// A DNS record: its flow without endpoints, node labels, id and policy.
    Unnamed(Box<Flow>),
}

/// The policies of the rules a batch of records names, each asked of the store once per
/// batch (the records of a connection all name the same rule).
#[derive(Debug, Default)]
pub struct RulePolicies {
    last: Option<(u32, Option<Arc<Policy>>)>,
}

impl RulePolicies {
    fn get(&mut self, rule: u32, store: &dyn Store) -> Option<Arc<Policy>> {
        match &self.last {
            Some((r, p)) if *r == rule => p.clone(),
            _ => {
                let p = store.policy_by_rule(rule).map(Arc::new);
                self.last = Some((rule, p.clone()));
                p
            }
        }
    }
}

/// The field of `Flow` that lists the policies that allowed a flow of this direction
/// (`egress_allowed_by`, `ingress_allowed_by` in flow.proto).
fn allowed_by_field(egress: bool) -> u32 {
    if egress {
        21001
    } else {
        21002
    }
}

/// The flow's source and destination addresses with their identities: a response runs from
/// the server to the client (Cilium's access log swaps a response's ends, and Hubble shows
/// it so).
pub(crate) fn flow_ends(r: &HttpView<'_>) -> [(SocketAddrV4, u32); 2] {
    let client = (r.source, r.source_identity);
    let server = (r.destination, r.destination_identity);
    if r.record_type == L7RecordType::Response {
        [server, client]
    } else {
        [client, server]
    }
}

/// A header name as Go's `http.Header` stores it, written into `out` (see
/// [`crate::l7::canonical_header_key`]).
pub(crate) fn canonical_key_into(name: &str, out: &mut String) {
    out.clear();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        out.push_str(name);
        return;
    }
    let mut upper = true;
    for b in name.bytes() {
        let c = if upper {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        };
        out.push(char::from(c));
        upper = c == b'-';
    }
}

impl RecordedHttp {
    /// Names `record` from `store` as it is now: what the flow will show whenever it is
    /// read. `node_name` is the flow's node name (the observer's).
    pub fn capture(
        record: HttpRecord,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &str,
    ) -> Self {
        Self::capture_with(
            record,
            store,
            node,
            ids,
            &Arc::from(node_name),
            &mut RulePolicies::default(),
        )
    }

    /// [`capture`](Self::capture), the rules' policies asked of `policies` (one per batch).
    pub fn capture_with(
        record: HttpRecord,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &Arc<str>,
        policies: &mut RulePolicies,
    ) -> Self {
        Self::capture_frame(
            HttpFrame::of_record(&record),
            store,
            node,
            ids,
            node_name,
            policies,
            None,
        )
    }

    /// [`capture_with`](Self::capture_with) for a record as its frame arrived; with `metrics`,
    /// the record is also counted there as [`Metrics::record`] counts its flow, from the frame
    /// (read once for both) without filling the flow: the metrics read six of its fields, and
    /// filling it formats both addresses and the summary, two records per request.
    pub fn capture_frame(
        frame: HttpFrame,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &Arc<str>,
        policies: &mut RulePolicies,
        metrics: Option<&Metrics>,
    ) -> Self {
        let record = frame.view();
        if let Some(m) = metrics {
            count_http(&record, m);
        }
        // A refused request carries no rule (L7 rules only allow): as `l7_flow` fills it.
        let policy = (record.verdict == L7Verdict::Forwarded && record.rule != 0)
            .then(|| policies.get(record.rule, store))
            .flatten()
            .map(|p| (allowed_by_field(record.egress), p));
        let time_ns = record.time_ns;
        let addrs = flow_ends(&record);
        let svc = |a: SocketAddrV4| {
            store
                .service_by_frontend(*a.ip(), a.port(), TCP)
                .map(service)
        };
        let services = [svc(addrs[0].0), svc(addrs[1].0)];
        let services = services
            .iter()
            .any(Option::is_some)
            .then(|| Box::new(services));
        let ends =
            addrs.map(|(addr, identity)| (side(store, Some(*addr.ip()), identity), identity));
        Self {
            kept: Kept::Http {
                frame,
                node_name: Arc::clone(node_name),
                services,
            },
            time_ns,
            uuid: ids.next(Some(SystemTime::now())),
            node: Arc::clone(node),
            ends,
            policy,
        }
    }

    /// A DNS query or answer of the node's DNS proxy, named from `store` as it is now: its
    /// flow is [`crate::dns::dns_to_flow`]'s, with an id and the node's labels as an HTTP
    /// record's has.
    pub fn capture_dns_with(
        record: &DnsView<'_>,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &str,
        policies: &mut RulePolicies,
    ) -> Self {
        let (mut common, dns, summary) = dns_parts(record);
        // A refused query carries no rule (L7 rules only allow): as `l7_flow` fills it.
        let rule = std::mem::take(&mut common.rule);
        let policy = (common.verdict == L7Verdict::Forwarded && rule != 0)
            .then(|| policies.get(rule, store))
            .flatten()
            .map(|p| (allowed_by_field(common.egress), p));
        let (unnamed, ends) = l7_flow_unnamed(&common, dns, summary, store, node_name);
        let ends = ends.map(|(addr, identity)| (side(store, Some(*addr.ip()), identity), identity));
        Self {
            kept: Kept::Unnamed(Box::new(unnamed)),
            time_ns: common.time_ns,
            uuid: ids.next(Some(SystemTime::now())),
            node: Arc::clone(node),
            ends,
            policy,
        }
    }

    /// The policy that allowed the flow and the field of `Flow` it is listed in (see
    /// [`flow`](Self::flow)): what the flow history adds to [`unnamed`](Self::unnamed)'s
    /// bytes.
    pub fn history_policy(&self) -> Option<(u32, &Policy)> {
        let (field, p) = self.policy.as_ref()?;
        Some((*field, p))
    }

    /// The flow's time.
    pub fn time(&self) -> pbjson_types::Timestamp {
        system_time_to_timestamp(UNIX_EPOCH + Duration::from_nanos(self.time_ns))
    }

    /// The flow without its endpoints, node labels, id and the policy that allowed it: every
    /// field Hubble's metrics look at.
    pub fn unnamed(&self) -> Flow {
        let mut flow = Flow::default();
        self.fill_unnamed(&mut flow);
        flow
    }

    /// Calls `f` with [`unnamed`](Self::unnamed)'s flow: a DNS record's own, an HTTP record's
    /// filled into `scratch` ([`fill_unnamed`](Self::fill_unnamed)).
    pub fn with_unnamed<T>(&self, scratch: &mut Flow, f: impl FnOnce(&Flow) -> T) -> T {
        match &self.kept {
            Kept::Unnamed(flow) => f(flow),
            Kept::Http { .. } => {
                self.fill_unnamed(scratch);
                f(scratch)
            }
        }
    }

    /// Makes `flow` [`unnamed`](Self::unnamed)'s flow, reusing its strings and lists: `flow`
    /// must be a default `Flow` or one only this filled before (the fields it does not set
    /// are left as they are). The flow history and the metrics fill one flow per batch
    /// instead of building one per record.
    pub fn fill_unnamed(&self, flow: &mut Flow) {
        let (frame, node_name, services) = match &self.kept {
            Kept::Http {
                frame,
                node_name,
                services,
            } => (frame, node_name, services),
            Kept::Unnamed(f) => {
                flow.clone_from(f);
                return;
            }
        };
        let r = frame.view();
        let response = r.record_type == L7RecordType::Response;
        let [(src, _), (dst, _)] = flow_ends(&r);
        flow.time = Some(self.time());
        flow.verdict = verdict(r.verdict) as i32;
        let ip = flow.ip.get_or_insert_with(Ip::default);
        ip.source.clear();
        let _ = write!(ip.source, "{}", src.ip());
        ip.destination.clear();
        let _ = write!(ip.destination, "{}", dst.ip());
        ip.ip_version = IpVersion::IPv4 as i32;
        flow.l4 = Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: u32::from(src.port()),
                destination_port: u32::from(dst.port()),
                flags: None,
            })),
        });
        flow.r#type = FlowType::L7 as i32;
        flow.node_name.clear();
        flow.node_name.push_str(node_name);
        let l7 = flow.l7.get_or_insert_with(Layer7::default);
        l7.r#type = if response {
            L7FlowType::Response
        } else {
            L7FlowType::Request
        } as i32;
        l7.latency_ns = if response { r.latency_ns } else { 0 };
        if !matches!(l7.record, Some(layer7::Record::Http(_))) {
            l7.record = Some(layer7::Record::Http(Http::default()));
        }
        if let Some(layer7::Record::Http(http)) = &mut l7.record {
            // Hubble sets only the request's fields on a request.
            http.code = if response { u32::from(r.code) } else { 0 };
            set(&mut http.method, r.method);
            set(&mut http.url, r.url);
            set(&mut http.protocol, r.protocol);
            http.headers
                .resize_with(r.header_count(), HttpHeader::default);
            for (h, (k, v)) in http.headers.iter_mut().zip(r.headers()) {
                canonical_key_into(k, &mut h.key);
                set(&mut h.value, v);
            }
            // Stable: a repeated header keeps its values' order.
            http.headers.sort_by(|a, b| a.key.cmp(&b.key));
        }
        flow.reply = response;
        flow.is_reply = Some(pbjson_types::BoolValue { value: response });
        flow.event_type = Some(CiliumEventType {
            r#type: MESSAGE_TYPE_ACCESS_LOG,
            sub_type: 0,
        });
        let [source_service, destination_service] = match services {
            Some(s) => [s[0].as_ref(), s[1].as_ref()],
            None => [None, None],
        };
        fill_service(&mut flow.source_service, source_service);
        fill_service(&mut flow.destination_service, destination_service);
        flow.traffic_direction = if r.egress {
            TrafficDirection::Egress
        } else {
            TrafficDirection::Ingress
        } as i32;
        flow.summary.clear();
        // Hubble's `httpSummary`, as `crate::l7::http_summary` writes it.
        let _ = if response {
            write!(
                flow.summary,
                "{} {} {}ms ({} {})",
                r.protocol,
                r.code,
                r.latency_ns / 1_000_000,
                r.method,
                r.url
            )
        } else {
            write!(flow.summary, "{} {} {}", r.protocol, r.method, r.url)
        };
    }

    /// An HTTP record's frame read in place, the flow's node name and the Services of its
    /// source and destination: what [`fill_unnamed`](Self::fill_unnamed) fills the flow from
    /// (the flow history writes a row from them); `None` for a DNS record.
    pub(crate) fn http_parts(&self) -> Option<(HttpView<'_>, &str, [Option<&Service>; 2])> {
        match &self.kept {
            Kept::Http {
                frame,
                node_name,
                services,
            } => Some((
                frame.view(),
                node_name,
                match services {
                    Some(s) => [s[0].as_ref(), s[1].as_ref()],
                    None => [None, None],
                },
            )),
            Kept::Unnamed(_) => None,
        }
    }

    /// The flow's id.
    pub fn uuid(&self) -> uuid::Uuid {
        self.uuid
    }

    /// The node's labels the flow carries.
    pub fn node_labels(&self) -> &[String] {
        &self.node.labels
    }

    /// What tells the source's (or the destination's) endpoint apart without building it
    /// (see [`crate::record::Recorded::history_endpoint_key`]); `None` for a side without a
    /// pod.
    pub fn history_endpoint_key(&self, destination: bool) -> Option<(usize, u32, usize)> {
        let (side, identity) = &self.ends[usize::from(destination)];
        side_key(side, *identity, &self.node)
    }

    /// The source's (or the destination's) endpoint exactly as [`flow`](Self::flow) shows
    /// it.
    pub fn history_endpoint(&self, destination: bool) -> Endpoint {
        let (side, identity) = &self.ends[usize::from(destination)];
        side_endpoint(side, *identity, &self.node)
    }

    /// The Hubble flow as clients receive it: named, with its id, the node's labels and the
    /// cluster's name on the cluster's endpoints.
    pub fn flow(&self) -> Flow {
        let mut flow = self.unnamed();
        flow.source = Some(self.history_endpoint(false));
        flow.destination = Some(self.history_endpoint(true));
        flow.node_labels.clone_from(&self.node.labels);
        flow.uuid = self.uuid.to_string();
        if let Some((_, p)) = &self.policy {
            crate::policy_names::fill(&mut flow, true, Policy::clone(p));
        }
        flow
    }
}

/// Counts an HTTP record's flow in `metrics` from the record (see
/// [`RecordedHttp::capture_frame`]).
fn count_http(r: &HttpView<'_>, metrics: &Metrics) {
    let response = r.record_type == L7RecordType::Response;
    let direction = if r.egress {
        TrafficDirection::Egress
    } else {
        TrafficDirection::Ingress
    };
    metrics.record_http(
        verdict(r.verdict) as i32,
        &HttpSample {
            kind: if response {
                L7FlowType::Response
            } else {
                L7FlowType::Request
            },
            reporter: reporter_of(direction as i32),
            method: r.method,
            protocol: r.protocol,
            code: if response { u32::from(r.code) } else { 0 },
            latency_ns: if response { r.latency_ns } else { 0 },
        },
    );
}

/// Makes `to` `s`, in its own buffer.
fn set(to: &mut String, s: &str) {
    to.clear();
    to.push_str(s);
}

/// Sets a flow's Service to `s`, reusing its strings.
fn fill_service(slot: &mut Option<Service>, s: Option<&Service>) {
    match (slot.as_mut(), s) {
        (Some(have), Some(s)) => have.clone_from(s),
        (_, s) => *slot = s.cloned(),
    }
}

#[cfg(test)]
#[path = "l7_entry_tests.rs"]
mod tests;
