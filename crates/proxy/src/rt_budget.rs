//! The DNS thread in the real-time class, within a CPU budget (`--dns-realtime-budget`; 0, off,
//! by default: on a quiet 2-CPU node it did not lower the DNS p99, see bench/README.md).
//!
//! Why: a query through the proxy wakes the DNS thread twice (the pod's query, the resolver's
//! answer), and each wakeup waited for a CPU behind whatever ran there: the agent's record
//! bursts, dnsmasq, dnsperf. The short EEVDF slice ([`crate::sched`]) shortened those waits
//! but left the p99 at 10,000 queries/s 0.5-1.5 ms above the direct path's on two CPUs; the
//! proxy's segment histograms (`dns/timing.rs`) put that tail in *queued*: read from the pod,
//! not yet handled. In SCHED_FIFO (priority [`PRIORITY`], the lowest) the thread runs at its
//! wakeup, ahead of every ordinary task, and *queued* drops to a few microseconds
//! (bench/README.md, "DNS proxy").
//!
//! The bound: a pod that floods DNS must not take a CPU away from the node through this
//! thread. The thread counts its own CPU time per [`WINDOW`]; once it has used its budget
//! (a share of one CPU, `--dns-realtime-budget`) in the current window it returns to
//! SCHED_OTHER (with the DNS slice) for the rest of that window, where it weighs as any
//! ordinary task, and goes back to SCHED_FIFO at the next window. So in any window it runs
//! ahead of ordinary tasks for at most its budget plus [`CHECK_EVERY`]: it checks at each
//! query (UDP or TCP), each TCP connection accepted and each answer read from a resolver,
//! which is all the work on the thread, and no more than once per [`CHECK_EVERY`] (reading
//! its CPU clock is a system call). No timer: an idle thread is not woken. The kernel's own
//! real-time throttling (`sched_rt_runtime_us`, 95 %) stays the backstop should the thread
//! stop checking.
//!
//! The DNS thread is a thread of its own ([`crate::dns::thread`]): HTTP connections and the
//! control socket stay in the ordinary class. Threads it starts begin in SCHED_OTHER (SCHED_FLAG_RESET_ON_FORK). Without the
//! privilege for a real-time class (CAP_SYS_NICE) the thread stays as it was, with a warning.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use tracing::warn;

use crate::sched::{set_thread_class, Class};

/// The window the budget is counted over.
pub const WINDOW: Duration = Duration::from_millis(10);
/// The longest a busy thread goes without reading its CPU clock (it is a system call, so
/// not at every query).
pub const CHECK_EVERY: Duration = Duration::from_millis(1);
/// SCHED_FIFO's lowest priority: ahead of ordinary tasks, behind every other real-time one.
pub const PRIORITY: i32 = 1;
/// The largest budget, percent of one CPU (above it the bound would be the kernel's).
pub const MAX_PERCENT: u8 = 90;

/// Windows in which a thread used its budget and returned to SCHED_OTHER (all threads).
static DEMOTIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static GUARD: RefCell<Option<Guard>> = const { RefCell::new(None) };
}

/// The calling thread's budget state.
#[derive(Debug)]
struct Guard {
    /// CPU time per window in the real-time class.
    budget: Duration,
    /// The SCHED_OTHER slice to return to.
    slice: Duration,
    window_start: Instant,
    cpu_at_start: Duration,
    last_check: Instant,
    realtime: bool,
    /// Back to the real-time class was refused (the thread's cgroup or rlimits changed):
    /// it stays in the ordinary class.
    refused: bool,
}

/// `--dns-realtime-budget`: percent of one CPU, 0 (off) ..= [`MAX_PERCENT`].
pub fn check_percent(percent: u8) -> Result<(), String> {
    if percent > MAX_PERCENT {
        return Err(format!(
            "{percent}%: the real-time budget is at most {MAX_PERCENT}% of a CPU (0: off)"
        ));
    }
    Ok(())
}

/// Puts the calling thread in SCHED_FIFO, within `percent` of one CPU per [`WINDOW`]; over
/// it, SCHED_OTHER with `slice`. `percent` 0 changes nothing. On an error (no privilege) the
/// thread is left as it was.
pub fn enter(percent: u8, slice: Duration) -> Result<(), String> {
    check_percent(percent)?;
    if percent == 0 {
        return Ok(());
    }
    set_thread_class(Class::Fifo { priority: PRIORITY }, true)?;
    let now = Instant::now();
    GUARD.with(|g| {
        *g.borrow_mut() = Some(Guard {
            budget: WINDOW * u32::from(percent) / 100,
            slice,
            window_start: now,
            cpu_at_start: thread_cpu(),
            last_check: now,
            realtime: true,
            refused: false,
        });
    });
    Ok(())
}

/// Counts the calling thread's CPU time against its budget, switching its class when due.
/// Cheap (a clock read) when called more often than [`CHECK_EVERY`]; nothing on a thread
/// that did not [`enter`].
pub fn check() {
    GUARD.with(|g| {
        if let Some(guard) = g.borrow_mut().as_mut() {
            guard.check(Instant::now());
        }
    });
}

/// Whether the calling thread is in the real-time class now (by its budget's account).
pub fn is_realtime() -> bool {
    GUARD.with(|g| g.borrow().as_ref().is_some_and(|g| g.realtime))
}

/// Windows in which a thread used its budget up (since the process started).
pub fn demotions() -> u64 {
    DEMOTIONS.load(Ordering::Relaxed)
}

impl Guard {
    fn check(&mut self, now: Instant) {
        if self.refused || now.saturating_duration_since(self.last_check) < CHECK_EVERY {
            return;
        }
        self.last_check = now;
        let cpu = thread_cpu();
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.cpu_at_start = cpu;
            if !self.realtime {
                self.switch(true);
            }
            return;
        }
        if self.realtime && cpu.saturating_sub(self.cpu_at_start) > self.budget {
            DEMOTIONS.fetch_add(1, Ordering::Relaxed);
            self.switch(false);
        }
    }

    fn switch(&mut self, realtime: bool) {
        let class = if realtime {
            Class::Fifo { priority: PRIORITY }
        } else {
            Class::Other { slice: self.slice }
        };
        match set_thread_class(class, true) {
            Ok(()) => self.realtime = realtime,
            Err(e) if realtime => {
                warn!(error = %e, "the DNS thread cannot return to the real-time class; it stays in the ordinary class");
                self.refused = true;
            }
            // Leaving the real-time class needs no privilege; should it fail anyway the next
            // check tries again, and the kernel's throttling still bounds the thread.
            Err(e) => warn!(error = %e, "the DNS thread cannot leave the real-time class"),
        }
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_over_the_maximum_is_refused() {
        let e = enter(91, Duration::ZERO).expect_err("over the maximum");
        assert!(e.contains("at most 90%"), "{e}");
        assert!(check_percent(0).is_ok() && check_percent(90).is_ok());
    }

    #[test]
    fn zero_leaves_the_thread_alone() {
        std::thread::spawn(|| {
            enter(0, Duration::ZERO).expect("off");
            assert!(!is_realtime());
            // SAFETY: reads the calling thread's policy.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
        })
        .join()
        .expect("thread");
    }
}
