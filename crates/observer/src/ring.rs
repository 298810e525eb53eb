//! The observer proper: events in, flows kept in a ring of the last N, followers fed live.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};

use ciliate_model::l7::{DnsRecord, HttpRecord, KafkaRecord};
use ciliate_model::l7_wire::{DnsFrame, DnsView, HttpFrame};
use ciliate_model::monitor::{EventRecord, MonitorEvent};
use tokio::sync::broadcast;

use crate::convert::{record_of, system_time_to_timestamp};
use crate::history::FlowHistory;
use crate::kafka::kafka_to_flow;
use crate::l7_entry::{RecordedHttp, RulePolicies};
use crate::metrics::Metrics;
use crate::proto::flow::{Flow, LostEvent, LostEventSource};
use crate::record::{FlowIds, NodeNames, Recorded};
use crate::store::Store;

/// How the observer is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    /// This node's name, put on every flow as Hubble does: `<cluster>/<node>`, with the
    /// cluster [`DEFAULT_CLUSTER_NAME`](crate::DEFAULT_CLUSTER_NAME) when the name has none.
    pub node_name: String,
    /// How many flows the ring keeps.
    pub capacity: usize,
}

/// `name` with the default cluster in front when it names none (`node0` → `default/node0`).
pub fn qualified_node_name(name: &str) -> String {
    if name.contains('/') || name.is_empty() {
        name.to_owned()
    } else {
        format!("{}/{name}", crate::DEFAULT_CLUSTER_NAME)
    }
}

/// When lost events happened: Hubble's `LostEvent.first` and `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostSpan {
    /// The time of the first lost event.
    pub first: SystemTime,
    /// The time of the last lost event.
    pub last: SystemTime,
}

impl LostSpan {
    /// A span of one instant.
    pub fn at(t: SystemTime) -> Self {
        Self { first: t, last: t }
    }

    /// This span widened to take in `t`.
    #[must_use]
    pub fn with(self, t: SystemTime) -> Self {
        Self {
            first: self.first.min(t),
            last: self.last.max(t),
        }
    }
}

/// What the ring holds and followers receive: a datapath event or an HTTP or DNS record of
/// the L7 proxy (their flows built when read), a flow built elsewhere (the proxy's Kafka
/// records), or a count of events lost.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A flow, built (boxed: entries are allocated at the size of the largest kind, and most
    /// are events, a fifth of a flow's size).
    Flow(Box<Flow>),
    /// A datapath event with the names it had; [`Entry::flow`] builds its flow.
    Event(Recorded),
    /// An HTTP or DNS record of the node's proxy with the names it had; [`Entry::flow`]
    /// builds its flow (boxed: it carries most of a flow).
    Http(Box<RecordedHttp>),
    /// Events that were lost (the observer fell behind the datapath), at this time.
    Lost(LostEvent, pbjson_types::Timestamp),
}

impl Entry {
    /// The entry's flow (built now for an event); `None` for a loss.
    pub fn flow(&self) -> Option<Cow<'_, Flow>> {
        match self {
            Entry::Flow(f) => Some(Cow::Borrowed(f)),
            Entry::Event(r) => Some(Cow::Owned(r.flow())),
            Entry::Http(r) => Some(Cow::Owned(r.flow())),
            Entry::Lost(..) => None,
        }
    }

    /// Whether the entry is a flow (built or not), not a loss.
    pub fn is_flow(&self) -> bool {
        !matches!(self, Entry::Lost(..))
    }

    /// The entry's time, without building its flow.
    pub fn time(&self) -> Option<pbjson_types::Timestamp> {
        match self {
            Entry::Flow(f) => f.time,
            Entry::Event(r) => r.time(),
            Entry::Http(r) => Some(r.time()),
            Entry::Lost(_, t) => Some(*t),
        }
    }
}

/// An entry with its sequence number (1, 2, ... in arrival order).
#[derive(Clone, Debug)]
pub struct Numbered {
    /// Sequence number; a follower uses it to skip what it already sent from the ring.
    pub seq: u64,
    /// The entry.
    pub entry: Arc<Entry>,
}

#[derive(Debug)]
struct Ring {
    entries: VecDeque<Numbered>,
    next_seq: u64,
}

/// The flow observer of one node.
pub struct Observer {
    config: ObserverConfig,
    /// `config.node_name`, shared by the HTTP records kept unnamed.
    flow_node_name: Arc<str>,
    /// The cluster this node is in (the first part of its qualified name).
    cluster: String,
    /// The node's and cluster's names and the node's labels, shared by every record made
    /// while the labels are these.
    names: Mutex<Arc<NodeNames>>,
    ids: FlowIds,
    store: Arc<dyn Store>,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Numbered>,
    seen: AtomicU64,
    lost: AtomicU64,
    started: Instant,
    metrics: Metrics,
    /// Where every flow is also kept on disk, once attached.
    history: OnceLock<FlowHistory>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("config", &self.config)
            .field("seen", &self.seen)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// An empty observer that names flows from `store`.
    pub fn new(config: ObserverConfig, store: Arc<dyn Store>) -> Self {
        let capacity = config.capacity.max(1);
        let (live, _) = broadcast::channel(capacity.clamp(64, 65_536));
        let node_name = qualified_node_name(&config.node_name);
        let cluster = node_name
            .split_once('/')
            .map_or(crate::DEFAULT_CLUSTER_NAME, |(c, _)| c)
            .to_owned();
        Self {
            ids: FlowIds::default(),
            names: Mutex::new(Arc::new(NodeNames {
                node_name: node_name.clone(),
                cluster: cluster.clone(),
                labels: Vec::new(),
            })),
            flow_node_name: Arc::from(node_name.as_str()),
            config: ObserverConfig {
                capacity,
                node_name,
            },
            cluster,
            store,
            ring: Mutex::new(Ring {
                entries: VecDeque::with_capacity(capacity.min(65_536)),
                next_seq: 1,
            }),
            live,
            seen: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            started: Instant::now(),
            metrics: Metrics::default(),
            history: OnceLock::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ObserverConfig {
        &self.config
    }

    /// The flow metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Keeps every flow from now on in `history` too (once; a second history is refused and
    /// returned).
    pub fn attach_history(&self, history: FlowHistory) -> Result<(), FlowHistory> {
        self.history.set(history)
    }

    /// The flow history, if one is attached.
    pub fn history(&self) -> Option<&FlowHistory> {
        self.history.get()
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps one datapath event (named: see [`observe_records`](Self::observe_records)).
    pub fn observe(&self, ev: &MonitorEvent) {
        self.observe_records(&[record_of(ev)]);
    }

    /// Keeps a batch of datapath events, named (see
    /// [`observe_records`](Self::observe_records)).
    pub fn observe_batch(&self, events: &[MonitorEvent]) {
        let records: Vec<EventRecord> = events.iter().map(record_of).collect();
        self.observe_records(&records);
    }

    /// Keeps a batch of datapath events, in order, taking the ring's lock once: each with the
    /// names the store gives now (its flow is built when read) and counted in the metrics.
    pub fn observe_records(&self, events: &[EventRecord]) {
        if events.is_empty() {
            return;
        }
        let store = self.store.as_ref();
        let names = self.node_names(store.node_labels());
        let entries: Vec<Entry> = events
            .iter()
            .map(|ev| {
                let recorded = Recorded::capture(*ev, store, &names, &self.ids);
                self.metrics.record(&recorded.numbers());
                Entry::Event(recorded)
            })
            .collect();
        self.push_seen(entries);
    }

    /// The names records share, with the node's `labels` now (a new one when they changed).
    fn node_names(&self, labels: Vec<String>) -> Arc<NodeNames> {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if names.labels != labels {
            *names = Arc::new(NodeNames {
                labels,
                ..NodeNames::clone(&names)
            });
        }
        Arc::clone(&names)
    }

    /// Turns one HTTP request or response of the node's proxy into a Hubble L7 flow and keeps
    /// it: the same naming, ring, followers and metrics as the datapath's events. Cheap
    /// (a conversion and the ring's lock): callable from the task that reads the proxy.
    pub fn observe_http(&self, record: &HttpRecord) {
        self.observe_http_batch(std::slice::from_ref(record));
    }

    /// [`observe_http`](Self::observe_http) for several records, in order, taking the ring's
    /// lock once.
    pub fn observe_http_batch<'a>(&self, records: impl IntoIterator<Item = &'a HttpRecord>) {
        self.observe_http_records(records.into_iter().cloned());
    }

    /// [`observe_http_batch`](Self::observe_http_batch), taking the records: their strings
    /// become the flows'. Each is kept with the names the store gives now and its flow built
    /// when read ([`RecordedHttp`]); the metrics count it now.
    pub fn observe_http_records(&self, records: impl IntoIterator<Item = HttpRecord>) {
        self.observe_http_frames(records.into_iter().map(|r| HttpFrame::of_record(&r)));
    }

    /// [`observe_http_records`](Self::observe_http_records) for records as their frames
    /// arrived (what the agent reads off the proxy's control socket): each frame is kept as
    /// it is, and read in place when its flow is counted, stored or built.
    pub fn observe_http_frames(&self, frames: impl IntoIterator<Item = HttpFrame>) {
        self.observe_http_frames_with(frames, &mut RulePolicies::default());
    }

    /// [`observe_http_frames`](Self::observe_http_frames), the rules' policies asked of
    /// `policies` (a caller that hands one batch over in several calls asks the store once
    /// for the batch, not once per call).
    pub fn observe_http_frames_with(
        &self,
        frames: impl IntoIterator<Item = HttpFrame>,
        policies: &mut RulePolicies,
    ) {
        let store = self.store.as_ref();
        let names = self.node_names(store.node_labels());
        let entries: Vec<Entry> = frames
            .into_iter()
            .map(|f| {
                let recorded = RecordedHttp::capture_frame(
                    f,
                    store,
                    &names,
                    &self.ids,
                    &self.flow_node_name,
                    policies,
                    Some(&self.metrics),
                );
                Entry::Http(Box::new(recorded))
            })
            .collect();
        self.push_seen(entries);
    }

    /// Turns one DNS query or answer of the node's DNS proxy into a Hubble L7 DNS flow and
    /// keeps it, as [`observe_http`](Self::observe_http) does for HTTP.
    pub fn observe_dns(&self, record: &DnsRecord) {
        self.observe_dns_batch(std::slice::from_ref(record));
    }

    /// [`observe_dns`](Self::observe_dns) for several records, in order, taking the ring's
    /// lock once (a query and its answer are two records: a DNS proxy's stream is many).
    /// Each is kept as an HTTP record is, with the names the store gives now and its flow
    /// (that of [`dns_to_flow`](crate::dns::dns_to_flow), with an id and the node's labels)
    /// built when read; the metrics count it now.
    pub fn observe_dns_batch<'a>(&self, records: impl IntoIterator<Item = &'a DnsRecord>) {
        let frames: Vec<DnsFrame> = records.into_iter().map(DnsFrame::of_record).collect();
        self.observe_dns_frames(&frames);
    }

    /// [`observe_dns_batch`](Self::observe_dns_batch) for records as their frames arrived
    /// (what the agent reads off the proxy's control socket): each is read in place into its
    /// flow, without an owned record in between.
    pub fn observe_dns_frames<'a>(&self, frames: impl IntoIterator<Item = &'a DnsFrame>) {
        self.observe_dns_views(frames.into_iter().map(DnsFrame::view));
    }

    fn observe_dns_views<'a>(&self, records: impl IntoIterator<Item = DnsView<'a>>) {
        let store = self.store.as_ref();
        let names = self.node_names(store.node_labels());
        let mut policies = RulePolicies::default();
        let mut unnamed = Flow::default();
        let entries: Vec<Entry> = records
            .into_iter()
            .map(|r| {
                let recorded = RecordedHttp::capture_dns_with(
                    &r,
                    store,
                    &names,
                    &self.ids,
                    &self.config.node_name,
                    &mut policies,
                );
                recorded.with_unnamed(&mut unnamed, |f| self.metrics.record(f));
                Entry::Http(Box::new(recorded))
            })
            .collect();
        self.push_seen(entries);
    }

    /// Turns one Kafka request or response of the node's proxy into a Hubble L7 Kafka flow
    /// and keeps it, as [`observe_http`](Self::observe_http) does for HTTP.
    pub fn observe_kafka(&self, record: &KafkaRecord) {
        self.push_flow(kafka_to_flow(
            record,
            self.store.as_ref(),
            &self.config.node_name,
        ));
    }

    /// Keeps a flow that was built elsewhere (tests, other sources).
    pub fn push_flow(&self, flow: Flow) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        self.metrics.record(&flow);
        self.push(Entry::Flow(Box::new(flow)));
    }

    /// Records that `n` events were lost on their way to the observer, noticed now: counted,
    /// kept in the ring as a LostEvent, and sent to followers, as Hubble does. Where the lost
    /// events' own times are unknown (a full kernel ring, a lagging channel), the time they
    /// were noticed stands for their `first` and `last`.
    pub fn lost(&self, n: u64, source: LostEventSource) {
        self.lost_during(n, source, LostSpan::at(SystemTime::now()));
    }

    /// As [`lost`](Self::lost), for events whose times are known: `span` runs from the first
    /// lost event's time to the last one's.
    pub fn lost_during(&self, n: u64, source: LostEventSource, span: LostSpan) {
        if n == 0 {
            return;
        }
        self.lost.fetch_add(n, Ordering::Relaxed);
        self.metrics.record_lost(source, n);
        self.push(Entry::Lost(
            LostEvent {
                source: source as i32,
                num_events_lost: n,
                first: Some(system_time_to_timestamp(span.first)),
                last: Some(system_time_to_timestamp(span.last)),
                ..LostEvent::default()
            },
            system_time_to_timestamp(SystemTime::now()),
        ));
    }

    /// Keeps entries seen on the node (counted in `seen`, unlike lost-event notices), taking
    /// the ring's lock once.
    fn push_seen(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        self.seen.fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.push_all(entries);
    }

    fn push(&self, entry: Entry) {
        self.push_all(std::iter::once(entry));
    }

    fn push_all(&self, entries: impl IntoIterator<Item = Entry>) {
        // Built before the lock is taken: followers and `observe --last` wait on it.
        // Once per batch: the node's labels go on every flow, as Hubble puts them.
        let node_labels = self.store.node_labels();
        let entries: Vec<Arc<Entry>> = entries
            .into_iter()
            .map(|mut e| {
                if let Entry::Flow(f) = &mut e {
                    crate::convert::finish_flow(f, &self.cluster);
                    if f.node_labels.is_empty() {
                        f.node_labels.clone_from(&node_labels);
                    }
                }
                Arc::new(e)
            })
            .collect();
        let history = self.history.get();
        let mut kept = Vec::with_capacity(if history.is_some() { entries.len() } else { 0 });
        // The entries pushed out, dropped once the lock is released: freeing a built flow
        // (dozens of strings) is most of the cost of a push, and readers wait on the lock.
        let mut evicted = Vec::with_capacity(entries.len());
        let mut ring = self.lock();
        for entry in entries {
            let numbered = Numbered {
                seq: ring.next_seq,
                entry,
            };
            ring.next_seq += 1;
            if ring.entries.len() >= self.config.capacity {
                evicted.extend(ring.entries.pop_front());
            }
            ring.entries.push_back(numbered.clone());
            if history.is_some() {
                kept.push(numbered.clone());
            }
            // Sent under the lock, so followers see entries in sequence order.
            let _ = self.live.send(numbered);
        }
        if let Some(h) = history {
            // Under the lock too, so the history receives them in sequence order (a queue
            // push: it never waits for the disk).
            h.offer(&kept);
        }
        drop(ring);
        drop(evicted);
    }

    /// Everything in the ring, oldest first, and a receiver of what comes after it.
    pub fn snapshot_and_follow(&self) -> (Vec<Numbered>, broadcast::Receiver<Numbered>) {
        let ring = self.lock();
        let rx = self.live.subscribe();
        (ring.entries.iter().cloned().collect(), rx)
    }

    /// Everything in the ring, oldest first.
    pub fn snapshot(&self) -> Vec<Numbered> {
        self.lock().entries.iter().cloned().collect()
    }

    /// Flows in the ring now.
    pub fn num_flows(&self) -> u64 {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.entry.is_flow())
            .count() as u64
    }

    /// Flows seen since start.
    pub fn seen_flows(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Events lost since start.
    pub fn lost_events(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Time since start, in nanoseconds.
    pub fn uptime_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads `events` until it closes, observing each; lag becomes a LostEvent.
    pub async fn run(self: Arc<Self>, mut events: broadcast::Receiver<MonitorEvent>) {
        loop {
            match events.recv().await {
                Ok(ev) => self.observe(&ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "observer fell behind the datapath's events");
                    self.lost(n, LostEventSource::ObserverEventsQueue);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Snapshot;

    fn observer(capacity: usize) -> Observer {
        Observer::new(
            ObserverConfig {
                node_name: "n1".into(),
                capacity,
            },
            Arc::new(Snapshot::default()),
        )
    }

    #[test]
    fn keeps_the_last_n_and_counts_everything_seen() {
        let o = observer(3);
        for i in 0..5 {
            o.push_flow(Flow {
                drop_reason: i,
                ..Flow::default()
            });
        }
        let kept: Vec<u32> = o
            .snapshot()
            .iter()
            .map(|n| n.entry.flow().map_or(99, |f| f.drop_reason))
            .collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert_eq!(o.num_flows(), 3);
        assert_eq!(o.seen_flows(), 5);
    }

    #[test]
    fn flows_carry_the_nodes_labels_and_the_node_labels_filter_selects_them() {
        let store = Snapshot {
            node_labels: vec!["kubernetes.io/hostname=n1".into(), "zone=a".into()],
            ..Snapshot::default()
        };
        let o = Observer::new(
            ObserverConfig {
                node_name: "n1".into(),
                capacity: 10,
            },
            Arc::new(store),
        );
        o.observe(&crate::convert::tests::trace_event());
        let snap = o.snapshot();
        let Some(flow) = snap[0].entry.flow() else {
            panic!("a flow");
        };
        let flow = &*flow;
        assert_eq!(
            flow.node_labels,
            vec!["kubernetes.io/hostname=n1", "zone=a"]
        );
        let select = |sel: &str| {
            let f = crate::proto::flow::FlowFilter {
                node_labels: vec![sel.into()],
                ..Default::default()
            };
            crate::filter::FlowFilters::compile(&[f], &[])
                .expect("compiles")
                .matches(flow)
        };
        assert!(select("zone=a"));
        assert!(!select("zone=b"));
    }

    #[test]
    fn lost_events_are_counted_and_kept_in_the_ring() {
        let o = observer(10);
        o.lost(7, LostEventSource::ObserverEventsQueue);
        o.lost(0, LostEventSource::ObserverEventsQueue);
        assert_eq!(o.lost_events(), 7);
        let snap = o.snapshot();
        assert_eq!(snap.len(), 1);
        assert!(matches!(&*snap[0].entry, Entry::Lost(l, _) if l.num_events_lost == 7));
        assert_eq!(o.num_flows(), 0);
    }

    #[tokio::test]
    async fn a_flood_that_overruns_the_event_channel_yields_a_lost_count() {
        let o = Arc::new(observer(100));
        let (tx, rx) = broadcast::channel(8);
        let ev = crate::convert::tests::trace_event();
        // Fill the channel far past its capacity before the observer reads anything.
        for _ in 0..50 {
            tx.send(ev.clone()).expect("receiver alive");
        }
        drop(tx);
        Arc::clone(&o).run(rx).await;
        assert_eq!(o.lost_events(), 42);
        assert_eq!(o.seen_flows(), 8);
    }
}
