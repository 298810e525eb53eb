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

use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
    ThreadPriorityOsValue, ThreadSchedulePolicy,
};
use tracing::warn;

/// The calling thread's class; changed only when it must be (a system call).
#[derive(Debug)]
pub struct BackgroundClass {
    /// The thread's name in the log.
    what: &'static str,
    /// `Some(true)`: background now; `None`: as the thread started (ordinary).
    background: Option<bool>,
    /// A change failed: no more are tried.
    stuck: bool,
}

impl BackgroundClass {
    /// The class of a thread doing `what` (named in the log), ordinary until [`set`](Self::set).
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            background: None,
            stuck: false,
        }
    }

    /// Puts the calling thread in the background class (`SCHED_IDLE`) or the ordinary one.
    pub fn set(&mut self, background: bool) {
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
}
