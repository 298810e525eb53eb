//! The proxy's records (HTTP, DNS, Kafka) made into the observer's L7 flows on a thread of
//! their own, in the background scheduling class while it keeps up
//! ([`ciliate_observer::background`]).
//!
//! Why a thread, and why in the background: the proxy sends its records in batches (one
//! write per few milliseconds), and making a batch into flows takes the agent ~0.5-1 ms of
//! CPU at once (10,000 DNS queries a second are 20,000 records). Done on the agent's runtime
//! at the ordinary class, such a burst held the CPU on which the DNS proxy, the resolver and
//! the client were about to be woken, and their wakeups waited behind it (`perf sched` in
//! bench/README.md, "Session 10: where the p99 went"): most of the DNS path's added p99.
//! Nobody waits for a flow within milliseconds, so the thread gives way to every ordinary
//! task that wakes, and only when [`BEHIND_BATCHES`] batches wait does it run as an ordinary
//! task until it has caught up. It makes a batch into flows [`STEP_EVENTS`] records at a time
//! and offers its CPU between steps once it has run 0.1 ms
//! ([`BackgroundClass::offer_cpu`]): the scheduler can otherwise leave a waiting ordinary task
//! behind it until the next tick. The learned DNS answers (`FqdnLearned`), which a pod's answer
//! may wait for, do not come this way.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use ciliate_model::l7::ProxyEvent;
use ciliate_model::l7_wire::{DnsFrame, HttpFrame};
use ciliate_observer::background::BackgroundClass;
use ciliate_observer::l7_entry::RulePolicies;
use ciliate_observer::proto::flow::LostEventSource;
use ciliate_observer::Observer;
use ciliate_proxy::supervisor::EventBatch;
use tracing::warn;

/// Batches waiting from which the thread is behind and runs as an ordinary task (the proxy
/// writes a batch every few milliseconds under load: this is tens of milliseconds of records).
pub const BEHIND_BATCHES: usize = 4;
/// Batches queued at most; the records of a batch beyond are counted as lost flows.
const QUEUE_BATCHES: usize = 1024;
/// Events made into flows between two offers of the CPU ([`BackgroundClass::offer_cpu`]): a
/// batch is ~100 records at 10,000 DNS queries a second, 0.5-1 ms of work, and a DNS record
/// ~5 µs, so the thread checks every few tens of microseconds whether it has run long enough
/// to let a waiting task go first.
const STEP_EVENTS: usize = 8;

/// The thread that makes the proxy's records into flows (see the module's notes).
#[derive(Debug)]
pub struct ProxyFlows {
    queue: Option<SyncSender<EventBatch>>,
    queued: Arc<AtomicUsize>,
    /// Set when the owner goes: what is left is done as an ordinary task (not to hold up
    /// the agent's exit).
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    observer: Arc<Observer>,
}

/// Whether an event becomes a flow.
fn is_record(ev: &ProxyEvent) -> bool {
    matches!(
        ev,
        ProxyEvent::Http(_)
            | ProxyEvent::HttpFrame(_)
            | ProxyEvent::Dns(_)
            | ProxyEvent::DnsFrame(_)
            | ProxyEvent::Kafka(_)
    )
}

/// Whether an event is an HTTP record (decoded, or as its frame arrived).
fn is_http(ev: &ProxyEvent) -> bool {
    matches!(ev, ProxyEvent::Http(_) | ProxyEvent::HttpFrame(_))
}

/// Whether an event is a DNS record (decoded, or as its frame arrived).
fn is_dns(ev: &ProxyEvent) -> bool {
    matches!(ev, ProxyEvent::Dns(_) | ProxyEvent::DnsFrame(_))
}

impl ProxyFlows {
    /// Starts the thread; without one (it could not start) records become flows on the
    /// caller's thread.
    pub fn new(observer: Arc<Observer>) -> Self {
        let (tx, rx) = sync_channel::<EventBatch>(QUEUE_BATCHES);
        let queued = Arc::new(AtomicUsize::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let started = {
            let (observer, queued) = (Arc::clone(&observer), Arc::clone(&queued));
            let closing = Arc::clone(&closing);
            std::thread::Builder::new()
                .name("proxy-flows".into())
                .spawn(move || {
                    let mut class = BackgroundClass::new("proxy records to flows");
                    while let Ok(batch) = rx.recv() {
                        let waiting = queued.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                        class.set(waiting < BEHIND_BATCHES && !closing.load(Ordering::Relaxed));
                        // The only holder (as a rule: the caller hands the batch over last)
                        // takes the records, whose strings then become the flows'. In
                        // steps, between which a task waiting for this CPU may go first.
                        match Arc::try_unwrap(batch) {
                            Ok(events) => {
                                let mut events = events.into_iter();
                                // The rules' policies asked of the store once per batch, not
                                // once per step.
                                let mut policies = RulePolicies::default();
                                loop {
                                    let step: Vec<ProxyEvent> =
                                        events.by_ref().take(STEP_EVENTS).collect();
                                    if step.is_empty() {
                                        break;
                                    }
                                    observe_owned(step, &observer, &mut policies);
                                    class.offer_cpu();
                                }
                            }
                            Err(batch) => {
                                for step in batch.chunks(STEP_EVENTS) {
                                    observe(step, &observer);
                                    class.offer_cpu();
                                }
                            }
                        }
                    }
                })
        };
        let (queue, thread) = match started {
            Ok(t) => (Some(tx), Some(t)),
            Err(e) => {
                warn!(error = %e, "cannot start the proxy-flows thread; the proxy's records become flows on the agent's runtime");
                (None, None)
            }
        };
        Self {
            queue,
            queued,
            closing,
            thread,
            observer,
        }
    }

    /// Hands a batch's records over (the batch's other events are the caller's). Give it
    /// last, once done with the other events: if the thread then holds the only reference,
    /// it moves the records' strings into the flows instead of copying them.
    pub fn offer(&self, batch: EventBatch) {
        let records = batch.iter().filter(|ev| is_record(ev)).count();
        if records == 0 {
            return;
        }
        let Some(queue) = &self.queue else {
            observe(&batch, &self.observer);
            return;
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.observer
                    .lost(records as u64, LostEventSource::ObserverEventsQueue);
            }
        }
    }
}

impl Drop for ProxyFlows {
    /// Ends the thread once it has made flows of what is queued.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes a batch's records into flows, in order, each run of one kind under one lock of the
/// ring.
fn observe(batch: &[ProxyEvent], observer: &Observer) {
    let mut http: Vec<HttpFrame> = Vec::new();
    // DNS records as frames: those of the control socket as they are (read in place).
    let mut dns: Vec<Cow<'_, DnsFrame>> = Vec::new();
    for ev in batch {
        if !is_http(ev) && !http.is_empty() {
            observer.observe_http_frames(http.drain(..));
        }
        if !is_dns(ev) && !dns.is_empty() {
            observer.observe_dns_frames(dns.iter().map(|f| &**f));
            dns.clear();
        }
        match ev {
            ProxyEvent::Http(r) => http.push(HttpFrame::of_record(r)),
            ProxyEvent::HttpFrame(f) => http.push(f.clone()),
            ProxyEvent::Dns(r) => dns.push(Cow::Owned(DnsFrame::of_record(r))),
            ProxyEvent::DnsFrame(f) => dns.push(Cow::Borrowed(f)),
            ProxyEvent::Kafka(r) => observer.observe_kafka(r),
            _ => {}
        }
    }
    observer.observe_http_frames(http);
    observer.observe_dns_frames(dns.iter().map(|f| &**f));
}

/// [`observe`] for a batch the thread owns: a batch whose only records are HTTP ones (the
/// common case: they are two per request) has their frames moved into the ring
/// (`Observer::observe_http_frames`); any other goes through `observe`, which keeps the
/// order between kinds.
fn observe_owned(batch: Vec<ProxyEvent>, observer: &Observer, policies: &mut RulePolicies) {
    if batch
        .iter()
        .any(|ev| is_dns(ev) || matches!(ev, ProxyEvent::Kafka(_)))
    {
        observe(&batch, observer);
        return;
    }
    observer.observe_http_frames_with(
        batch.into_iter().filter_map(|ev| match ev {
            ProxyEvent::Http(r) => Some(HttpFrame::of_record(&r)),
            ProxyEvent::HttpFrame(f) => Some(f),
            _ => None,
        }),
        policies,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_model::l7::{DnsRecord, HttpRecord};
    use ciliate_model::l7::{L7RecordType, L7Verdict};
    use ciliate_observer::proto::flow::Flow;
    use ciliate_observer::ring::ObserverConfig;

    fn observer() -> Arc<Observer> {
        Arc::new(Observer::new(
            ObserverConfig {
                node_name: "node-a".into(),
                capacity: 100,
            },
            Arc::new(ciliate_observer::Snapshot::default()),
        ))
    }

    fn dns(query: &str, record_type: L7RecordType) -> ProxyEvent {
        ProxyEvent::Dns(Box::new(DnsRecord {
            time_ns: 1,
            record_type,
            endpoint: 7,
            source: "10.0.0.2:5353".parse().expect("addr"),
            destination: "10.0.0.3:53".parse().expect("addr"),
            proto: 17,
            source_identity: 256,
            destination_identity: 257,
            verdict: L7Verdict::Forwarded,
            rule: 0,
            query: query.into(),
            qtypes: vec!["A".into()],
            rcode: 0,
            ips: vec!["192.0.2.1".parse().expect("ip")],
            ttl: 30,
            cnames: Vec::new(),
            rrtypes: vec!["A".into()],
            latency_ns: 5,
            reason: None,
        }))
    }

    fn queries(o: &Observer) -> Vec<String> {
        o.snapshot()
            .iter()
            .filter_map(|n| n.entry.flow())
            .filter_map(|f| ciliate_observer::l7::dns(&f).map(|d| d.query.clone()))
            .collect()
    }

    #[test]
    fn records_become_flows_in_order_and_other_events_are_left_alone() {
        let o = observer();
        let flows = ProxyFlows::new(Arc::clone(&o));
        for i in 0..20 {
            let batch: EventBatch = Arc::new(vec![
                dns(&format!("q{i}.a."), L7RecordType::Request),
                ProxyEvent::Applied { revision: i },
                dns(&format!("q{i}.b."), L7RecordType::Response),
            ]);
            flows.offer(batch);
        }
        // Nothing but records: nothing queued.
        flows.offer(Arc::new(vec![ProxyEvent::Applied { revision: 99 }]));
        drop(flows);
        let expected: Vec<String> = (0..20)
            .flat_map(|i| [format!("q{i}.a."), format!("q{i}.b.")])
            .collect();
        assert_eq!(queries(&o), expected);
        assert_eq!(o.seen_flows(), 40);
        assert_eq!(o.lost_events(), 0);
    }

    #[test]
    fn a_batch_of_one_kind_takes_the_ring_once_and_mixed_kinds_keep_their_order() {
        let o = observer();
        observe(
            &[
                dns("a.", L7RecordType::Request),
                dns("b.", L7RecordType::Response),
                ProxyEvent::Stats(Default::default()),
                dns("c.", L7RecordType::Request),
            ],
            &o,
        );
        assert_eq!(queries(&o), ["a.", "b.", "c."]);
    }

    fn http(url: &str, record_type: L7RecordType) -> ProxyEvent {
        ProxyEvent::Http(Box::new(HttpRecord {
            time_ns: 1_700_000_000_000_000_000,
            record_type,
            endpoint: 7,
            egress: false,
            source: "10.0.0.2:40000".parse().expect("addr"),
            destination: "10.0.0.3:80".parse().expect("addr"),
            source_identity: 256,
            destination_identity: 257,
            verdict: L7Verdict::Forwarded,
            rule: 3,
            method: "GET".into(),
            url: url.into(),
            protocol: "HTTP/1.1".into(),
            code: if record_type == L7RecordType::Response {
                200
            } else {
                0
            },
            headers: vec![
                ("x-request-id".into(), "abc".into()),
                ("host".into(), "web".into()),
            ],
            latency_ns: 5_000_000,
            reason: None,
        }))
    }

    /// The ring's flows without their ids (each observer numbers its own).
    fn flows(o: &Observer) -> Vec<Flow> {
        o.snapshot()
            .iter()
            .filter_map(|n| n.entry.flow())
            .map(|f| {
                let mut f = f.into_owned();
                f.uuid.clear();
                f
            })
            .collect()
    }

    #[test]
    fn an_owned_batch_makes_the_same_flows_as_a_shared_one() {
        let batches = [
            // HTTP records only: moved into their flows.
            vec![
                http("http://web/a", L7RecordType::Request),
                ProxyEvent::Applied { revision: 1 },
                http("http://web/a", L7RecordType::Response),
            ],
            // Mixed kinds: the shared path, in order.
            vec![
                http("http://web/b", L7RecordType::Request),
                dns("b.", L7RecordType::Request),
                http("http://web/b", L7RecordType::Response),
            ],
        ];
        let (owned, shared) = (observer(), observer());
        for b in &batches {
            observe_owned(b.clone(), &owned, &mut RulePolicies::default());
            observe(b, &shared);
        }
        assert_eq!(flows(&owned).len(), 5);
        assert_eq!(flows(&owned), flows(&shared));
    }

    /// The DNS record `dns` makes, as the control socket's reader hands it on.
    fn dns_frame(query: &str, record_type: L7RecordType) -> ProxyEvent {
        match dns(query, record_type) {
            ProxyEvent::Dns(r) => ProxyEvent::DnsFrame(DnsFrame::of_record(&r)),
            _ => unreachable!("dns() makes a DNS record"),
        }
    }

    #[test]
    fn dns_frames_make_the_flows_their_records_make_in_order_with_other_kinds() {
        let as_records = vec![
            dns("a.", L7RecordType::Request),
            dns("a.", L7RecordType::Response),
            http("http://web/b", L7RecordType::Request),
            dns("c.", L7RecordType::Request),
            ProxyEvent::Applied { revision: 1 },
            dns("c.", L7RecordType::Response),
        ];
        let as_frames: Vec<ProxyEvent> = as_records
            .iter()
            .map(|ev| match ev {
                ProxyEvent::Dns(r) => ProxyEvent::DnsFrame(DnsFrame::of_record(r)),
                ev => ev.clone(),
            })
            .collect();
        let (records, frames) = (observer(), observer());
        observe(&as_records, &records);
        observe_owned(as_frames.clone(), &frames, &mut RulePolicies::default());
        assert_eq!(flows(&frames).len(), 5);
        assert_eq!(flows(&frames), flows(&records));
        assert_eq!(queries(&frames), ["a.", "a.", "c.", "c."]);

        // Through the thread, in steps: a batch of several steps' records, given (moved into
        // the flows) and shared (copied), in order.
        let o = observer();
        let thread = ProxyFlows::new(Arc::clone(&o));
        let names: Vec<String> = (0..3 * STEP_EVENTS + 1).map(|i| format!("x{i}.")).collect();
        let batch: Vec<ProxyEvent> = names
            .iter()
            .map(|q| dns_frame(q, L7RecordType::Request))
            .collect();
        thread.offer(Arc::new(batch.clone()));
        let shared: EventBatch = Arc::new(batch);
        thread.offer(Arc::clone(&shared));
        drop(thread);
        let want: Vec<String> = names.iter().chain(&names).cloned().collect();
        assert_eq!(queries(&o), want);
        assert_eq!(o.seen_flows(), want.len() as u64);
    }

    #[test]
    fn the_thread_takes_a_batch_it_alone_holds_and_copies_a_shared_one() {
        let o = observer();
        let flows_thread = ProxyFlows::new(Arc::clone(&o));
        let kept: EventBatch = Arc::new(vec![http("http://web/kept", L7RecordType::Request)]);
        flows_thread.offer(Arc::clone(&kept));
        flows_thread.offer(Arc::new(vec![http(
            "http://web/given",
            L7RecordType::Request,
        )]));
        drop(flows_thread);
        let urls: Vec<String> = flows(&o)
            .iter()
            .filter_map(|f| ciliate_observer::l7::http(f).map(|h| h.url.clone()))
            .collect();
        assert_eq!(urls, ["http://web/kept", "http://web/given"]);
        // The caller's copy is untouched.
        assert!(matches!(&kept[0], ProxyEvent::Http(r) if r.url == "http://web/kept"));
    }
}
