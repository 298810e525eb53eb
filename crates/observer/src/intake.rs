//! The observer's intake: what stands between the datapath's events and the [`Observer`], so
//! that a burst of events is queued rather than lost.
//!
//! The datapath's event reader hands its events straight to the intake, in batches, as
//! numbers ([`EventRecord`]s, a few dozen bytes, no allocation each: [`Intake::push_all`],
//! see the datapath's `set_event_sink`); a worker thread takes the whole queue at once and
//! observes it as a batch (naming each event costs more than queueing it). The worker is an
//! OS thread, not an async task, so a busy runtime (gRPC followers, table refreshes) cannot
//! delay it into a loss. A datapath without a sink publishes named events on a bounded
//! broadcast channel instead, which a reader thread moves into the queue ([`spawn`]; a lag
//! there is a loss). Only past `capacity` queued events does the intake drop (counted, and
//! reported as Hubble's `OBSERVER_EVENTS_QUEUE` loss, as a lag is).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use ciliate_model::monitor::{EventRecord, MonitorEvent};
use tokio::sync::broadcast;

use crate::convert::record_of;
use crate::proto::flow::LostEventSource;
use crate::ring::{LostSpan, Observer};

/// Default number of events the intake queues before it drops: at 10,000 connections/s
/// and a handful of events each, several seconds of a stalled worker.
pub const DEFAULT_INTAKE_CAPACITY: usize = 1 << 18;

/// Events' room the worker's batch keeps after a burst (the queue and the batch trade
/// places, so this bounds both once the burst is over): ~0.1 MB.
const KEPT_BATCH: usize = 1024;

#[derive(Debug, Default)]
struct Queue {
    events: Vec<EventRecord>,
    /// Events lost since the worker last looked: the channel lagged, or the queue was full.
    lost: u64,
    /// When those were lost: the dropped events' own times, or when a lag was noticed.
    lost_span: Option<LostSpan>,
    closed: bool,
}

impl Queue {
    /// Counts `n` events lost at `at`.
    fn lose(&mut self, n: u64, at: SystemTime) {
        if n == 0 {
            return;
        }
        self.lost += n;
        self.lost_span = Some(match self.lost_span {
            Some(span) => span.with(at),
            None => LostSpan::at(at),
        });
    }
}

/// The queue between the reader and the worker, with its counters.
#[derive(Debug)]
pub struct Intake {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    received: AtomicU64,
    lost: AtomicU64,
}

impl Intake {
    /// An empty intake that queues at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            received: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues one event, or counts it lost when the queue is full.
    pub fn push(&self, ev: EventRecord) {
        let mut q = self.lock();
        let idle = Self::idle(&q);
        if q.events.len() >= self.capacity {
            q.lose(1, ev.time.unwrap_or_else(SystemTime::now));
            self.lost.fetch_add(1, Ordering::Relaxed);
        } else {
            q.events.push(ev);
            self.received.fetch_add(1, Ordering::Relaxed);
        }
        drop(q);
        self.wake_if(idle);
    }

    /// Counts `n` events lost before they reached the intake.
    pub fn lost(&self, n: u64) {
        let mut q = self.lock();
        let idle = Self::idle(&q);
        q.lose(n, SystemTime::now());
        self.lost.fetch_add(n, Ordering::Relaxed);
        drop(q);
        self.wake_if(idle);
    }

    /// Whether the worker may be waiting: it waits only on a queue with nothing to do.
    fn idle(q: &Queue) -> bool {
        q.events.is_empty() && q.lost == 0
    }

    /// Wakes the worker for the first event after a quiet spell only: until it takes the
    /// queue, later ones join the same batch, and a wake-up (a futex call) per event would
    /// cost the reader more than the queueing.
    fn wake_if(&self, idle: bool) {
        if idle {
            self.ready.notify_one();
        }
    }

    /// No more events will come: the worker ends once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Events queued since start (whether observed yet or not).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Events lost since start: the channel lagged or the queue was full.
    pub fn lost_events(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Waits for work; moves everything queued into `batch` (which must be empty; its
    /// allocation is reused) and returns the loss to report: how many, and when (`None` when
    /// nothing was lost). `None`: closed and drained.
    fn take(&self, batch: &mut Vec<EventRecord>) -> Option<(u64, Option<LostSpan>)> {
        let mut q = self.lock();
        while q.events.is_empty() && q.lost == 0 && !q.closed {
            q = self
                .ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if q.events.is_empty() && q.lost == 0 {
            return None;
        }
        std::mem::swap(&mut q.events, batch);
        Some((std::mem::take(&mut q.lost), q.lost_span.take()))
    }

    /// Observes batches until the intake is closed and drained.
    pub fn drain_into(&self, observer: &Observer) {
        let mut batch = Vec::new();
        while let Some((lost, span)) = self.take(&mut batch) {
            if lost > 0 {
                tracing::warn!(lost, "observer fell behind the datapath's events");
                let span = span.unwrap_or_else(|| LostSpan::at(SystemTime::now()));
                observer.lost_during(lost, LostEventSource::ObserverEventsQueue, span);
            }
            observer.observe_records(&batch);
            batch.clear();
            // The queue and this batch trade places: without a bound both would keep the
            // size of the largest burst behind the observer for good (issue #15).
            batch.shrink_to(KEPT_BATCH);
        }
    }

    /// Queues events in order, taking the lock once; what does not fit is counted lost.
    /// Leaves `events` empty (its allocation is the caller's to reuse).
    pub fn push_all(&self, events: &mut Vec<EventRecord>) {
        let mut q = self.lock();
        let idle = Self::idle(&q);
        let room = self
            .capacity
            .saturating_sub(q.events.len())
            .min(events.len());
        let dropped = (events.len() - room) as u64;
        q.events.extend(events.drain(..room));
        if dropped > 0 {
            let now = SystemTime::now();
            for ev in events.iter() {
                q.lose(1, ev.time.unwrap_or(now));
            }
        }
        events.clear();
        drop(q);
        self.received.fetch_add(room as u64, Ordering::Relaxed);
        self.lost.fetch_add(dropped, Ordering::Relaxed);
        self.wake_if(idle);
    }

    /// Moves events from `events` into the queue until the channel closes, then closes.
    /// It waits for one event, then takes whatever else is already there (up to a batch),
    /// so that under a burst the queue's lock is taken once per batch, not per event.
    pub fn read_from(&self, mut events: broadcast::Receiver<MonitorEvent>) {
        const BATCH: usize = 1024;
        let mut batch = Vec::with_capacity(BATCH);
        'read: loop {
            let mut next = events.blocking_recv();
            loop {
                match next {
                    Ok(ev) => batch.push(record_of(&ev)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.push_all(&mut batch);
                        self.lost(n);
                    }
                    Err(broadcast::error::RecvError::Closed) => break 'read,
                }
                if batch.len() >= BATCH {
                    break;
                }
                next = match events.try_recv() {
                    Ok(ev) => Ok(ev),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                };
            }
            self.push_all(&mut batch);
        }
        self.push_all(&mut batch);
        self.close();
    }
}

/// Starts the worker thread feeding `observer` from a new intake of `capacity` events, which
/// the caller fills ([`Intake::push_all`]); it ends once the intake is closed and drained.
pub fn spawn_worker(observer: Arc<Observer>, capacity: usize) -> std::io::Result<Arc<Intake>> {
    let intake = Arc::new(Intake::new(capacity));
    let worker = Arc::clone(&intake);
    std::thread::Builder::new()
        .name("observer".into())
        .spawn(move || worker.drain_into(&observer))?;
    Ok(intake)
}

/// Starts the reader and worker threads feeding `observer` from `events`; returns the
/// intake, for its counters. The threads end when the channel closes.
pub fn spawn(
    observer: Arc<Observer>,
    events: broadcast::Receiver<MonitorEvent>,
    capacity: usize,
) -> std::io::Result<Arc<Intake>> {
    let intake = spawn_worker(observer, capacity)?;
    let reader = Arc::clone(&intake);
    if let Err(e) = std::thread::Builder::new()
        .name("observer-intake".into())
        .spawn(move || reader.read_from(events))
    {
        // Without a reader nothing would ever close the queue: let the worker end.
        intake.close();
        return Err(e);
    }
    Ok(intake)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::ObserverConfig;
    use crate::store::Snapshot;

    fn observer(capacity: usize) -> Arc<Observer> {
        Arc::new(Observer::new(
            ObserverConfig {
                node_name: "n1".into(),
                capacity,
            },
            Arc::new(Snapshot::default()),
        ))
    }

    #[test]
    fn a_burst_larger_than_any_channel_is_queued_and_observed_whole() {
        let o = observer(100);
        let intake = Intake::new(DEFAULT_INTAKE_CAPACITY);
        let ev = record_of(&crate::convert::tests::trace_event());
        // The whole burst arrives before the worker observes anything.
        for _ in 0..50_000 {
            intake.push(ev);
        }
        intake.close();
        intake.drain_into(&o);
        assert_eq!(intake.received(), 50_000);
        assert_eq!(intake.lost_events(), 0);
        assert_eq!(o.seen_flows(), 50_000);
        assert_eq!(o.lost_events(), 0);
        assert_eq!(o.num_flows(), 100);
    }

    #[test]
    fn past_its_capacity_the_intake_counts_what_it_drops_and_reports_it_once() {
        let o = observer(100);
        let intake = Intake::new(10);
        let ev = record_of(&crate::convert::tests::trace_event());
        for _ in 0..25 {
            intake.push(ev);
        }
        intake.lost(3);
        intake.close();
        intake.drain_into(&o);
        assert_eq!(intake.received(), 10);
        assert_eq!(intake.lost_events(), 18);
        assert_eq!(o.seen_flows(), 10);
        assert_eq!(o.lost_events(), 18);
        let lost: Vec<u64> = o
            .snapshot()
            .iter()
            .filter_map(|n| match &*n.entry {
                crate::ring::Entry::Lost(l, _) => Some(l.num_events_lost),
                _ => None,
            })
            .collect();
        assert_eq!(lost, vec![18]);
    }

    #[test]
    fn a_loss_says_when_the_dropped_events_happened() {
        use std::time::{Duration, UNIX_EPOCH};
        let o = observer(100);
        let intake = Intake::new(2);
        let at = |secs: u64| {
            let mut ev = record_of(&crate::convert::tests::trace_event());
            ev.time = Some(UNIX_EPOCH + Duration::from_secs(secs));
            ev
        };
        // Two fit; the rest are dropped, out of order and in two calls.
        let mut batch = vec![at(100), at(101), at(250), at(200)];
        intake.push_all(&mut batch);
        intake.push(at(150));
        intake.close();
        intake.drain_into(&o);
        let lost: Vec<(u64, i64, i64)> = o
            .snapshot()
            .iter()
            .filter_map(|n| match &*n.entry {
                crate::ring::Entry::Lost(l, _) => Some((
                    l.num_events_lost,
                    l.first.as_ref().expect("first").seconds,
                    l.last.as_ref().expect("last").seconds,
                )),
                _ => None,
            })
            .collect();
        assert_eq!(lost, vec![(3, 150, 250)]);
    }

    #[test]
    fn spawned_threads_observe_everything_sent_and_end_when_the_channel_closes() {
        let o = observer(10);
        let (tx, rx) = broadcast::channel(64);
        let intake = spawn(Arc::clone(&o), rx, DEFAULT_INTAKE_CAPACITY).expect("threads");
        let ev = crate::convert::tests::trace_event();
        let mut sent = 0u64;
        for _ in 0..100 {
            for _ in 0..32 {
                tx.send(ev.clone()).expect("reader alive");
                sent += 1;
            }
            // Paced by counts, not time: the channel never holds more than half its slots.
            while intake.received() + intake.lost_events() < sent {
                std::thread::yield_now();
            }
        }
        drop(tx);
        // The worker holds the observer until it has drained the closed intake.
        while Arc::strong_count(&o) > 1 {
            std::thread::yield_now();
        }
        assert_eq!(intake.lost_events(), 0);
        assert_eq!(o.seen_flows(), sent);
        assert_eq!(o.lost_events(), 0);
    }
}
