//! The scheduler slice of the thread that serves DNS (and the class switches of
//! [`crate::rt_budget`]).
//!
//! Why: a query through the proxy wakes this thread twice (the pod's query, the resolver's
//! answer). Linux's EEVDF scheduler lets the task running on a CPU finish its slice (0.75 ms
//! times 1 + log2(CPUs): 1.4 ms on the 2-CPU bench VM) before a task that wakes there runs, unless the
//! waking task asks for a shorter slice than the running one's. The agent reads the proxy's
//! records in bursts of a millisecond or more (a batch every few milliseconds); a query that
//! arrives during one waited for its end, which was the DNS proxy's added p99 (about 2.6 ms
//! at 10,000 queries/s, p50 +0.04 ms; `perf sched timehist` showed the proxy runnable behind
//! the agent on its CPU for 1–3 ms).
//!
//! A custom slice (`sched_setattr`'s `sched_runtime` for SCHED_OTHER, Linux 6.12 and later)
//! makes the waking thread preempt a task with a longer slice at once, and also means this
//! thread is preempted sooner when it runs long: right for a thread that does little per
//! wakeup and is waited on. It needs no privilege and changes nothing else (policy and nice
//! stay). Older kernels ignore the field.
//!
//! Only the DNS thread asks for it. A short slice is what EEVDF gives latency: the task that
//! has it wins the CPU at its wakeups, against everything with a longer slice. Giving it to
//! the agent as well (tried: every agent thread at 0.1 ms) made dnsmasq and dnsperf wait
//! behind the agent *more* often (`perf sched`: wakeups delayed over 0.3 ms mostly behind the
//! agent 44 -> 71 and 28 -> 90), and the direct path's p99 worse, since the agent then
//! preempted them at its own wakeups.

use std::time::Duration;

/// The kernel's bounds for a custom slice.
const MIN_SLICE: Duration = Duration::from_micros(100);
const MAX_SLICE: Duration = Duration::from_millis(100);

/// Whether the kernel takes `slice` (0: its default).
pub fn check_slice(slice: Duration) -> Result<(), String> {
    if !slice.is_zero() && !(MIN_SLICE..=MAX_SLICE).contains(&slice) {
        return Err(format!(
            "{slice:?}: a scheduler slice is between {MIN_SLICE:?} and {MAX_SLICE:?} (or 0: the kernel's default)"
        ));
    }
    Ok(())
}

/// Asks for a scheduler slice of `slice` for the calling thread, keeping its policy
/// (SCHED_OTHER) and nice value. Zero asks for the kernel's default again.
pub fn set_thread_slice(slice: Duration) -> Result<(), String> {
    check_slice(slice)?;
    // SAFETY: sched_getscheduler only reads the calling thread's attributes (0 = the caller).
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy != libc::SCHED_OTHER {
        return Err(format!(
            "the thread's scheduling policy is {policy}, not SCHED_OTHER: left alone"
        ));
    }
    set_thread_class(Class::Other { slice }, false)
}

/// A scheduling class for the calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// SCHED_OTHER with a custom slice (0: the kernel's default).
    Other {
        /// The slice.
        slice: Duration,
    },
    /// SCHED_FIFO at this priority (1..=99).
    Fifo {
        /// The real-time priority.
        priority: i32,
    },
}

/// Puts the calling thread in `class`, keeping its nice value. With `reset_on_fork` the
/// threads it starts from then on begin in SCHED_OTHER at the default slice and nice >= 0
/// (SCHED_FLAG_RESET_ON_FORK) instead of inheriting the class.
pub fn set_thread_class(class: Class, reset_on_fork: bool) -> Result<(), String> {
    // getpriority returns the nice value of the calling thread (Linux: per thread), also
    // while it is in a real-time class.
    // SAFETY: only reads the calling thread's attributes (who 0 = the caller).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let (policy, priority, runtime) = match class {
        Class::Other { slice } => {
            check_slice(slice)?;
            (
                libc::SCHED_OTHER,
                0,
                u64::try_from(slice.as_nanos()).unwrap_or(0),
            )
        }
        Class::Fifo { priority } => (libc::SCHED_FIFO, priority, 0),
    };
    let attr = libc::sched_attr {
        size: u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(48),
        sched_policy: u32::try_from(policy).unwrap_or(0),
        sched_flags: if reset_on_fork {
            SCHED_FLAG_RESET_ON_FORK
        } else {
            0
        },
        sched_nice: nice,
        sched_priority: u32::try_from(priority).unwrap_or(0),
        sched_runtime: runtime,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: attr is a valid sched_attr of the size it states; pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "sched_setattr: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `include/uapi/linux/sched.h`.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The calling thread's slice as the kernel reports it (`sched_getattr`'s `sched_runtime`).
pub fn thread_slice() -> Result<Duration, String> {
    let mut attr = libc::sched_attr {
        size: 0,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    };
    let size = u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(48);
    // SAFETY: attr has room for `size` bytes; pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size,
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "sched_getattr: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Duration::from_nanos(attr.sched_runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out-of-range slices are refused with the bounds, before any syscall.
    #[test]
    fn a_slice_out_of_the_kernels_bounds_is_refused() {
        for bad in [Duration::from_micros(50), Duration::from_millis(101)] {
            let e = set_thread_slice(bad).expect_err("out of bounds");
            assert!(e.contains("between 100µs and 100ms"), "{e}");
        }
    }

    /// On a thread of its own (the setting is per thread): the slice is set and read back,
    /// and the nice value is kept. Kernels before 6.12 have no custom slice for SCHED_OTHER
    /// (they report the default, 0 or the base slice): the read-back is then only printed.
    #[test]
    fn the_slice_is_set_on_the_calling_thread_only_and_nice_is_kept() {
        std::thread::spawn(|| {
            // SAFETY: reads the calling thread's nice value.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            set_thread_slice(Duration::from_micros(200)).expect("set");
            let got = thread_slice().expect("get");
            // SAFETY: as above.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, nice);
            if kernel_has_custom_slices() {
                assert_eq!(got, Duration::from_micros(200));
            } else {
                eprintln!("kernel before 6.12: slice reads back as {got:?}");
            }
        })
        .join()
        .expect("thread");
        // The test harness's thread kept the default.
        if kernel_has_custom_slices() {
            assert_ne!(thread_slice().expect("get"), Duration::from_micros(200));
        }
    }

    pub(crate) fn kernel_has_custom_slices() -> bool {
        let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
            return false;
        };
        let mut parts = release.trim().split(['.', '-']);
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor) >= (6, 12)
    }
}
