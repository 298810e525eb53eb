//! Answers held until the agent has put their addresses into the policy maps.
//!
//! The proxy sends [`ciliate_model::l7::ProxyEvent::FqdnLearned`] with a fresh id and waits
//! for [`ciliate_model::l7::ProxyCommand::FqdnAllowed`] with that id, so that the pod's first
//! connection to an address it just resolved is already allowed. It waits a bounded time
//! only: an agent that is slow or gone must not turn into a DNS outage (the answer then goes
//! out anyway, counted and logged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// The held answers' waiters, by FqdnLearned id.
///
/// Ids carry the process id in their high bits ([`issuer_pid`]): during a graceful restart
/// the supervisor sends the FqdnAllowed of the draining proxy's answers to that proxy, not to
/// the new one, and no counter value of one proxy can release another's answer.
#[derive(Debug)]
pub struct AnswerGate {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

/// Bits of an id below the issuing proxy's pid.
const PID_SHIFT: u32 = 40;

/// The pid of the proxy that issued FqdnLearned `id`.
pub fn issuer_pid(id: u64) -> u32 {
    u32::try_from(id >> PID_SHIFT).unwrap_or(0)
}

impl Default for AnswerGate {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(u64::from(std::process::id()) << PID_SHIFT),
            waiting: Mutex::default(),
        }
    }
}

/// One held answer.
#[derive(Debug)]
pub struct Ticket {
    /// The id to send in FqdnLearned.
    pub id: u64,
    rx: oneshot::Receiver<()>,
}

impl AnswerGate {
    /// Registers a new held answer.
    pub fn ticket(&self) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        Ticket { id, rx }
    }

    /// The agent's FqdnAllowed: releases the answer (an unknown id, e.g. one that timed out
    /// already, changes nothing). Returns whether one was waiting.
    pub fn release(&self, id: u64) -> bool {
        match self.lock().remove(&id) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        }
    }

    /// Waits for the release of `ticket`, at most `limit`. True when the agent released it.
    pub async fn wait(&self, ticket: Ticket, limit: Duration) -> bool {
        let released = tokio::time::timeout(limit, ticket.rx).await;
        self.lock().remove(&ticket.id);
        matches!(released, Ok(Ok(())))
    }

    /// Answers held now.
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
