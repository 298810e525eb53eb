//! A thread's scheduling class for work nobody waits on: Linux `SCHED_IDLE` while it keeps
//! up, the ordinary class while it is behind.
//!
//! A `SCHED_IDLE` thread gives way at once to any ordinary task that wakes on its CPU, and
//! the scheduler counts its CPU as free when it places one: a burst of such work (a block of
//! the flow history, a batch of the proxy's records made into flows) never holds up the
//! traffic's own processes. On a saturated machine it would get almost nothing (weight 3
//! against an ordinary task's 1,024), so its owner says when it is behind and it runs as an
//! ordinary task until it has caught up. When the class cannot be changed (no
//! `CAP_SYS_NICE` to leave `SCHED_IDLE`), it is logged once and left as it is.
//!
//! A change of class also resets the thread's scheduler slice to the kernel's default, which
//! the agent's threads have anyway (only the DNS proxy's thread asks for a short one:
//! `ciliate_proxy::sched`).
//!
//! "At once" holds only for a task that wakes while the background thread runs. The kernel's
//! scheduler (EEVDF) also runs a `SCHED_IDLE` thread when it is the only *eligible* one: an
//! ordinary task that has had more than its share lately (the DNS proxy's thread, which runs
//! half of a CPU at 10,000 queries a second) waits, once runnable, until the scheduler chooses
//! again, and nothing makes it choose before the background thread sleeps or the next tick
//! (4 ms at `HZ=250`): `perf sched` showed the DNS thread and the resolver waiting 0.3-2 ms
//! behind `proxy-flows` and the history writer that way (bench/README.md, "Session 17"). So a
//! background thread calls [`BackgroundClass::offer_cpu`] between small steps of its work:
//! once it has run [`RUN_BEFORE_OFFER`] since it woke or last offered, it yields, and the
//! scheduler chooses again (a yield costs a system call, ~1 µs, when nobody waits). A yield
//! reorders only the tasks of the thread's own scheduling group (cgroup or autogroup), which
//! on a node holds the agent and its proxy.

use std::time::{Duration, Instant};
use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
    ThreadPriorityOsValue, ThreadSchedulePolicy,
};

use tracing::warn;

/// How long a background thread runs before [`BackgroundClass::offer_cpu`] yields: short
/// against the wakeup latency the DNS path is held to (0.3 ms), long against a yield's cost.
pub const RUN_BEFORE_OFFER: Duration = Duration::from_micros(100);

/// The calling thread's class; changed only when it must be (a system call).
#[derive(Debug)]
pub struct BackgroundClass {
    /// The thread's name in the log.
    what: &'static str,
    /// `Some(true)`: background now; `None`: as the thread started (ordinary).
    background: Option<bool>,
    /// A change failed: no more are tried.
    stuck: bool,
    /// Since when the thread has run without offering its CPU (see [`Self::offer_cpu`]).
    running_since: Instant,
    /// Yields made by [`Self::offer_cpu`].
    offers: u64,
}

impl BackgroundClass {
    /// The class of a thread doing `what` (named in the log), ordinary until [`set`](Self::set).
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            background: None,
            stuck: false,
            running_since: Instant::now(),
            offers: 0,
        }
    }

    /// Puts the calling thread in the background class (`SCHED_IDLE`) or the ordinary one.
    /// Called as the thread takes up a piece of work (a batch, a block): it also starts the
    /// run that [`offer_cpu`](Self::offer_cpu) measures.
    pub fn set(&mut self, background: bool) {
        self.running_since = Instant::now();
        if self.stuck || self.background.unwrap_or(false) == background {
            return;
        }
        let policy = if background {
            NormalThreadSchedulePolicy::Idle
        } else {
            NormalThreadSchedulePolicy::Other
        };
        // Nice 0: SCHED_IDLE ignores it, and the agent's threads run at 0.
        match set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(policy),
        ) {
            Ok(()) => self.background = Some(background),
            Err(e) => {
                self.stuck = true;
                warn!(error = %e, to = ?policy, thread = self.what, "cannot change a background thread's scheduling class; left as it is");
            }
        }
    }

    /// Whether the thread runs in the background class now.
    pub fn background(&self) -> bool {
        self.background.unwrap_or(false)
    }

    /// Whether a change was refused (no more are tried).
    pub fn stuck(&self) -> bool {
        self.stuck
    }

    /// Between two steps of a piece of work: in the background class, once the thread has
    /// run [`RUN_BEFORE_OFFER`] since [`set`](Self::set) or its last offer, yields its CPU so
    /// that the scheduler chooses again and an ordinary task waiting for it runs first (see
    /// the module's notes); true if it yielded. Does nothing in the ordinary class (behind,
    /// the thread catches up as any task).
    pub fn offer_cpu(&mut self) -> bool {
        if !self.background() || self.running_since.elapsed() < RUN_BEFORE_OFFER {
            return false;
        }
        std::thread::yield_now();
        self.offers += 1;
        self.running_since = Instant::now();
        true
    }

    /// How many times [`offer_cpu`](Self::offer_cpu) yielded.
    pub fn offers(&self) -> u64 {
        self.offers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_background_thread_that_ran_long_enough_offers_its_cpu() {
        // On a thread of its own: the class stays with the thread.
        std::thread::spawn(|| {
            let mut class = BackgroundClass::new("test");
            let spin = |d: Duration| {
                let t = Instant::now();
                while t.elapsed() < d {
                    std::hint::spin_loop();
                }
            };
            // Ordinary: never.
            spin(RUN_BEFORE_OFFER * 2);
            assert!(!class.offer_cpu());
            class.set(true);
            if class.stuck() {
                return; // No class change allowed here: nothing to check.
            }
            // After a run as long as the limit, in the background: it yields, each time
            // (whether a check right after one yields depends on how long it waited for
            // the CPU: not asserted).
            spin(RUN_BEFORE_OFFER);
            assert!(class.offer_cpu());
            spin(RUN_BEFORE_OFFER);
            assert!(class.offer_cpu());
            assert_eq!(class.offers(), 2);
            // Ordinary again (behind): never, however long it runs.
            class.set(false);
            if class.stuck() {
                return; // Not allowed back to the ordinary class here.
            }
            spin(RUN_BEFORE_OFFER * 2);
            assert!(!class.offer_cpu());
            assert_eq!(class.offers(), 2);
        })
        .join()
        .expect("test thread");
    }
}
