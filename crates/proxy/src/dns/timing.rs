//! Where one query's time goes inside the proxy, as histograms of its segments: read from the
//! pod → sent to the resolver → the resolver's answer read → the agent's part done (the answer
//! held for its FqdnAllowed, or released at once) → the answer sent to the pod.
//!
//! A debugging aid for `bench/dns.sh` (which tail is the proxy's own, which the agent's):
//! with `CILIATE_DNS_TIMINGS=<file>` in the proxy's environment the histograms are written to
//! that file every second ([`spawn_dump`]); without it nothing is measured (one branch per
//! query).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Upper bounds of the buckets, in microseconds (the last one takes the rest).
const BOUNDS_US: [u64; 16] = [
    5,
    10,
    20,
    50,
    100,
    200,
    300,
    500,
    1_000,
    2_000,
    3_000,
    5_000,
    10_000,
    20_000,
    50_000,
    u64::MAX,
];

/// The segments of one query's life, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Read from the pod's datagram until its handling began (waiting in the proxy's loop).
    Queued,
    /// Parsed, judged, its query record queued, until it left for the resolver.
    ToUpstream,
    /// At the resolver until its answer was read.
    Upstream,
    /// The answer parsed and the agent's part done: held for FqdnAllowed or released.
    Agent,
    /// Its records queued and the answer sent to the pod.
    Reply,
    /// All of the above.
    Total,
}

const SEGMENTS: [(Segment, &str); 6] = [
    (Segment::Queued, "queued"),
    (Segment::ToUpstream, "to-upstream"),
    (Segment::Upstream, "upstream"),
    (Segment::Agent, "agent"),
    (Segment::Reply, "reply"),
    (Segment::Total, "total"),
];

/// One histogram per segment, plus the answers the agent held.
#[derive(Debug)]
pub struct Timings {
    buckets: [[AtomicU64; BOUNDS_US.len()]; SEGMENTS.len()],
    /// Answers that waited for the agent's FqdnAllowed (not released at once).
    pub held: AtomicU64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            held: AtomicU64::new(0),
        }
    }
}

fn bucket(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    BOUNDS_US
        .iter()
        .position(|b| us <= *b)
        .unwrap_or(BOUNDS_US.len() - 1)
}

impl Timings {
    /// Counts one segment's duration.
    pub fn add(&self, segment: Segment, d: Duration) {
        self.buckets[segment as usize][bucket(d)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts of `segment`'s buckets.
    pub fn counts(&self, segment: Segment) -> [u64; BOUNDS_US.len()] {
        std::array::from_fn(|i| self.buckets[segment as usize][i].load(Ordering::Relaxed))
    }

    /// The upper bound (µs) of the bucket holding quantile `q` of `segment`; None if empty.
    pub fn quantile_us(&self, segment: Segment, q: f64) -> Option<u64> {
        let counts = self.counts(segment);
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the first bucket whose running sum reaches it.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut sum = 0;
        counts.iter().zip(BOUNDS_US).find_map(|(c, b)| {
            sum += c;
            (sum >= rank).then_some(b)
        })
    }

    /// A text table: one line per segment with its counts per bucket, p50 and p99.
    pub fn render(&self) -> String {
        let mut out = String::from("segment");
        for b in BOUNDS_US {
            if b == u64::MAX {
                out.push_str(" >50000");
            } else {
                let _ = write!(out, " <={b}");
            }
        }
        out.push_str(" p50us p99us\n");
        for (seg, name) in SEGMENTS {
            out.push_str(name);
            for c in self.counts(seg) {
                let _ = write!(out, " {c}");
            }
            let q = |q| match self.quantile_us(seg, q) {
                None => "-".to_owned(),
                Some(u64::MAX) => ">50000".to_owned(),
                Some(v) => v.to_string(),
            };
            let _ = writeln!(out, " {} {}", q(0.5), q(0.99));
        }
        let _ = writeln!(out, "held {}", self.held.load(Ordering::Relaxed));
        let _ = writeln!(out, "rt-demotions {}", crate::rt_budget::demotions());
        out
    }
}

/// One query's clock: the instant each segment ended.
#[derive(Debug)]
pub struct Clock {
    started: Instant,
    last: Instant,
}

impl Clock {
    /// A query read at `received`.
    pub fn new(received: Instant) -> Self {
        Self {
            started: received,
            last: received,
        }
    }

    /// Ends `segment` now.
    pub fn lap(&mut self, timings: &Timings, segment: Segment) {
        let now = Instant::now();
        timings.add(segment, now.saturating_duration_since(self.last));
        self.last = now;
    }

    /// Ends the last segment (`Reply`) now, and the whole.
    pub fn finish(mut self, timings: &Timings) {
        self.lap(timings, Segment::Reply);
        timings.add(
            Segment::Total,
            self.last.saturating_duration_since(self.started),
        );
    }
}

/// The process's timings, when `CILIATE_DNS_TIMINGS` names a file to write them to.
pub fn enabled() -> Option<&'static Timings> {
    static TIMINGS: OnceLock<Option<(Timings, PathBuf)>> = OnceLock::new();
    TIMINGS
        .get_or_init(|| {
            std::env::var_os("CILIATE_DNS_TIMINGS")
                .filter(|p| !p.is_empty())
                .map(|p| (Timings::default(), PathBuf::from(p)))
        })
        .as_ref()
        .map(|(t, _)| t)
}

/// With timings enabled, writes them to their file every second (replacing it).
pub fn spawn_dump() {
    let Some(path) = std::env::var_os("CILIATE_DNS_TIMINGS").filter(|p| !p.is_empty()) else {
        return;
    };
    let Some(timings) = enabled() else { return };
    let path = PathBuf::from(path);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, timings.render()).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_their_upper_bound() {
        assert_eq!(bucket(Duration::from_micros(0)), 0);
        assert_eq!(bucket(Duration::from_micros(5)), 0);
        assert_eq!(bucket(Duration::from_micros(6)), 1);
        assert_eq!(bucket(Duration::from_micros(300)), 6);
        assert_eq!(bucket(Duration::from_secs(10)), BOUNDS_US.len() - 1);
    }

    #[test]
    fn quantiles_come_from_the_counts() {
        let t = Timings::default();
        assert_eq!(t.quantile_us(Segment::Agent, 0.99), None);
        for _ in 0..98 {
            t.add(Segment::Agent, Duration::from_micros(3));
        }
        t.add(Segment::Agent, Duration::from_micros(150));
        t.add(Segment::Agent, Duration::from_millis(4));
        assert_eq!(t.quantile_us(Segment::Agent, 0.5), Some(5));
        assert_eq!(t.quantile_us(Segment::Agent, 0.99), Some(200));
        assert_eq!(t.quantile_us(Segment::Agent, 1.0), Some(5_000));
        let text = t.render();
        assert!(
            text.contains("agent 98 0 0 0 0 1 0 0 0 0 0 1 0 0 0 0 5 200\n"),
            "{text}"
        );
        assert!(text.contains("total 0 "), "{text}");
    }

    #[test]
    fn a_clock_counts_each_segment_once_and_the_whole() {
        let t = Timings::default();
        let mut c = Clock::new(Instant::now());
        for s in [
            Segment::Queued,
            Segment::ToUpstream,
            Segment::Upstream,
            Segment::Agent,
        ] {
            c.lap(&t, s);
        }
        c.finish(&t);
        for (s, _) in SEGMENTS {
            assert_eq!(t.counts(s).iter().sum::<u64>(), 1, "{s:?}");
        }
    }
}
