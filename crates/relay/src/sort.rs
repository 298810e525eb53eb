//! The reorder buffer that merges the nodes' flow streams into one in time order.
//!
//! Each node sends its flows (nearly) in time order, so an entry can go out as soon as every
//! node still streaming has sent something at least as new (its *watermark*): then nothing
//! older can come. A node that sends nothing (idle, or filtered out) would hold everything
//! back, so an entry also goes out once it, or anything newer, has waited `window` (Hubble
//! relay's `--sort-buffer-drain-timeout`), and the oldest goes out when more than `max_len`
//! wait (`--sort-buffer-len-max`). Pure: time is passed in.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// A flow's time as (seconds, nanoseconds) since the epoch.
pub type Time = (i64, i32);

/// Where entries come from: an index handed out by [`SortBuffer::add_source`].
pub type SourceId = usize;

#[derive(Debug)]
struct Waiting<T> {
    time: Time,
    seq: u64,
    value: T,
}

impl<T> PartialEq for Waiting<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<T> Eq for Waiting<T> {}
impl<T> PartialOrd for Waiting<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Waiting<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    /// The newest time this source sent, if any.
    watermark: Option<Time>,
    /// Still streaming: it may send more.
    open: bool,
}

/// Merges timed entries from several sources; see the module documentation.
#[derive(Debug)]
pub struct SortBuffer<T> {
    heap: BinaryHeap<Reverse<Waiting<T>>>,
    /// (arrival, time) of entries in arrival order, to find what has waited `window`.
    arrivals: VecDeque<(Instant, Time)>,
    /// Entries up to this time may go: something at least this new has waited `window`.
    expired_up_to: Option<Time>,
    sources: Vec<Source>,
    seq: u64,
    max_len: usize,
    window: Duration,
}

impl<T> SortBuffer<T> {
    /// A buffer holding at most `max_len` entries (at least 1), each at most about `window`.
    pub fn new(max_len: usize, window: Duration) -> Self {
        Self {
            heap: BinaryHeap::new(),
            arrivals: VecDeque::new(),
            expired_up_to: None,
            sources: Vec::new(),
            seq: 0,
            max_len: max_len.max(1),
            window,
        }
    }

    /// A new source that has sent nothing yet: until it does (or is closed) it holds entries
    /// back for up to `window`.
    pub fn add_source(&mut self) -> SourceId {
        self.sources.push(Source {
            watermark: None,
            open: true,
        });
        self.sources.len() - 1
    }

    /// The source ended its stream: it no longer holds anything back.
    pub fn close_source(&mut self, source: SourceId) {
        if let Some(s) = self.sources.get_mut(source) {
            s.open = false;
        }
    }

    /// Whether any source is still streaming.
    pub fn any_open(&self) -> bool {
        self.sources.iter().any(|s| s.open)
    }

    /// How many entries wait.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Adds an entry of `source` with `time`, arrived `now`.
    pub fn push(&mut self, source: SourceId, time: Time, value: T, now: Instant) {
        if let Some(s) = self.sources.get_mut(source) {
            s.watermark = Some(s.watermark.map_or(time, |w| w.max(time)));
        }
        self.seq += 1;
        self.heap.push(Reverse(Waiting {
            time,
            seq: self.seq,
            value,
        }));
        self.arrivals.push_back((now, time));
    }

    /// The oldest entry if it may go out at `now`, else `None`.
    pub fn pop_ready(&mut self, now: Instant) -> Option<T> {
        while let Some(&(arrived, time)) = self.arrivals.front() {
            if now.saturating_duration_since(arrived) < self.window {
                break;
            }
            self.expired_up_to = Some(self.expired_up_to.map_or(time, |e| e.max(time)));
            self.arrivals.pop_front();
        }
        let oldest = self.heap.peek()?.0.time;
        let ready = self.heap.len() > self.max_len
            || self.expired_up_to.is_some_and(|e| oldest <= e)
            || self.watermark().is_none_or(|w| oldest <= w);
        if !ready {
            return None;
        }
        if self.heap.len() == 1 {
            // Nothing waits any more: forget arrivals of entries already gone.
            self.arrivals.clear();
        }
        self.heap.pop().map(|Reverse(w)| w.value)
    }

    /// The oldest entry, whatever its time (the stream ended).
    pub fn pop_any(&mut self) -> Option<T> {
        let v = self.heap.pop().map(|Reverse(w)| w.value);
        if self.heap.is_empty() {
            self.arrivals.clear();
        }
        v
    }

    /// The time up to which every open source has sent everything: `None` when no source is
    /// open (everything may go), the minimum of their watermarks otherwise, and "nothing yet"
    /// (`Some` of the smallest time) while an open source has sent nothing.
    fn watermark(&self) -> Option<Time> {
        let mut w: Option<Time> = None;
        for s in self.sources.iter().filter(|s| s.open) {
            let t = s.watermark.unwrap_or((i64::MIN, i32::MIN));
            w = Some(w.map_or(t, |w| w.min(t)));
        }
        w
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn drain(b: &mut SortBuffer<&'static str>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| b.pop_ready(now)).collect()
    }

    #[test]
    fn entries_wait_until_every_open_source_has_passed_them() {
        let t0 = Instant::now();
        let mut b = SortBuffer::new(100, Duration::from_secs(1));
        let a = b.add_source();
        let c = b.add_source();
        b.push(a, (10, 0), "a10", t0);
        b.push(a, (12, 0), "a12", t0);
        // c has sent nothing: a's entries could still be preceded by c's.
        assert!(drain(&mut b, t0).is_empty());
        b.push(c, (11, 0), "c11", t0);
        assert_eq!(drain(&mut b, t0), ["a10", "c11"]);
        b.push(c, (13, 0), "c13", t0);
        assert_eq!(drain(&mut b, t0), ["a12"]);
        // a ends its stream: it holds nothing back any more.
        b.close_source(a);
        assert_eq!(drain(&mut b, t0), ["c13"]);
        assert!(b.is_empty());
    }

    #[test]
    fn an_idle_source_holds_entries_back_at_most_the_window() {
        let t0 = Instant::now();
        let w = Duration::from_millis(500);
        let mut b = SortBuffer::new(100, w);
        let busy = b.add_source();
        let _idle = b.add_source();
        b.push(busy, (5, 0), "old", t0);
        b.push(busy, (6, 0), "new", t0 + w / 2);
        assert!(drain(&mut b, t0 + w / 2).is_empty());
        assert_eq!(drain(&mut b, t0 + w), ["old"]);
        assert_eq!(drain(&mut b, t0 + w + w / 2), ["new"]);
    }

    #[test]
    fn a_late_older_entry_goes_out_when_a_newer_one_has_expired() {
        // "new" arrived first and expired: "late" (older, arrived later) goes out before it.
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut b = SortBuffer::new(100, w);
        let s = b.add_source();
        let _idle = b.add_source();
        b.push(s, (9, 0), "new", t0);
        b.push(s, (8, 0), "late", t0 + w / 2);
        assert_eq!(drain(&mut b, t0 + w), ["late", "new"]);
    }

    #[test]
    fn a_full_buffer_lets_the_oldest_go() {
        let t0 = Instant::now();
        let mut b = SortBuffer::new(2, Duration::from_secs(60));
        let s = b.add_source();
        let _idle = b.add_source();
        b.push(s, (3, 0), "3", t0);
        b.push(s, (1, 0), "1", t0);
        assert!(drain(&mut b, t0).is_empty());
        b.push(s, (2, 0), "2", t0);
        assert_eq!(drain(&mut b, t0), ["1"]);
        assert_eq!(b.pop_any(), Some("2"));
        assert_eq!(b.pop_any(), Some("3"));
        assert_eq!(b.pop_any(), None);
    }

    #[test]
    fn equal_times_keep_arrival_order_and_nanoseconds_count() {
        let t0 = Instant::now();
        let mut b = SortBuffer::new(100, Duration::from_secs(1));
        let s = b.add_source();
        b.push(s, (1, 5), "x", t0);
        b.push(s, (1, 5), "y", t0);
        b.push(s, (1, 1), "z", t0);
        b.close_source(s);
        assert!(!b.any_open());
        assert_eq!(drain(&mut b, t0), ["z", "x", "y"]);
    }
}
