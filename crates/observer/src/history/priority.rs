//! The history writer's scheduling class: a background task (Linux `SCHED_IDLE`) while it
//! keeps up, an ordinary one while it is behind.
//!
//! Why: the writer encodes and compresses a block of 4,096 flows at a time, milliseconds of
//! CPU in one go. At normal priority such a burst holds a CPU on which the traffic's own
//! processes are about to be woken, and each of their wakeups waits behind it: on
//! `bench/pod2pod.sh` new connections ran at 0.96 of plain veth with the history and 1.01
//! without it, though the writer takes about 1.5 % of one CPU there. A `SCHED_IDLE` thread
//! gives way at once to any ordinary task that wakes, and the scheduler counts its CPU as
//! free when it places one; it runs on time nobody else wants, which a node rarely lacks.
//!
//! On a saturated machine it would get almost nothing (its weight is 3 against an ordinary
//! task's 1,024) and its queue would fill and drop flows, so once the queue holds
//! [`BEHIND_BLOCKS`] blocks (one being written, one more waiting) the writer goes back to the
//! ordinary class until it has caught up, and keeps up as well as it did before. When the
//! class cannot be changed (no `CAP_SYS_NICE` to leave `SCHED_IDLE`), it is logged once and
//! left as it is.
//!
//! A change of class also resets the thread's scheduler slice to the kernel's default, which
//! the agent's threads have anyway (only the DNS proxy's thread asks for a short one:
//! `ciliate_proxy::sched`).
//!
//! In the background class the writer offers its CPU between steps of a block (every 16 rows
//! encoded and after each compressed chunk, once it has run 0.1 ms: see
//! [`BackgroundClass::offer_cpu`] for why `SCHED_IDLE` alone is not enough).

use crate::background::BackgroundClass;

use super::BLOCK_FLOWS;

/// Blocks queued from which the writer is behind and runs as an ordinary task.
pub(super) const BEHIND_BLOCKS: usize = 2;

/// The class the writer thread runs in (see [`BackgroundClass`]).
#[derive(Debug)]
pub(super) struct WriterPriority {
    class: BackgroundClass,
}

impl Default for WriterPriority {
    fn default() -> Self {
        Self {
            class: BackgroundClass::new("flow history writer"),
        }
    }
}

impl WriterPriority {
    /// Sets the calling thread's class for the next block from the flows queued, ordinary
    /// when `closing` (what is left is written before the agent exits).
    pub(super) fn choose(&mut self, queued: usize, closing: bool) {
        self.class
            .set(!closing && queued < BEHIND_BLOCKS * BLOCK_FLOWS);
    }

    /// Between steps of a block's work: lets a waiting task go first once the writer has run
    /// a while in the background class ([`BackgroundClass::offer_cpu`]).
    pub(super) fn offer_cpu(&mut self) {
        self.class.offer_cpu();
    }

    /// Whether the writer runs in the background class now.
    #[cfg(test)]
    pub(super) fn background(&self) -> bool {
        self.class.background()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The class as the kernel reports it for this thread (`/proc/thread-self/stat`, field
    /// 41: 0 ordinary, 5 idle).
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let after_name = &stat[stat.rfind(')').expect("name") + 2..];
        after_name
            .split(' ')
            .nth(41 - 3)
            .and_then(|v| v.parse().ok())
            .expect("policy field")
    }

    #[test]
    fn the_writer_is_in_the_background_while_it_keeps_up_and_ordinary_when_behind() {
        // On a thread of its own: the class stays with the thread.
        std::thread::spawn(|| {
            let mut p = WriterPriority::default();
            p.choose(10, false);
            assert!(p.background());
            assert_eq!(policy(), 5, "SCHED_IDLE");
            p.choose(BEHIND_BLOCKS * BLOCK_FLOWS, false);
            if p.class.stuck() {
                // Unprivileged: leaving SCHED_IDLE needs CAP_SYS_NICE (or RLIMIT_NICE).
                assert!(
                    !ciliate_testutil::privileged_required(),
                    "leaving SCHED_IDLE was refused, and CILIATE_REQUIRE_PRIVILEGED=1"
                );
                eprintln!(
                    "SKIPPED the return to SCHED_OTHER: not permitted here (needs CAP_SYS_NICE)"
                );
                return;
            }
            assert!(!p.background());
            assert_eq!(policy(), 0, "SCHED_OTHER");
            p.choose(0, false);
            assert_eq!(policy(), 5);
            p.choose(0, true);
            assert_eq!(policy(), 0, "closing: ordinary");
        })
        .join()
        .expect("thread");
    }
}
