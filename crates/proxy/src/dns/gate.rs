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
use std::time::{Duration, Instant};

use ciliate_model::l7::FqdnAnswer;
use tokio::sync::oneshot;

use super::acked::AckedAnswers;

/// The held answers' waiters, by FqdnLearned id.
///
/// Ids carry the process id in their high bits ([`issuer_pid`]): during a graceful restart
/// the supervisor sends the FqdnAllowed of the draining proxy's answers to that proxy, not to
/// the new one, and no counter value of one proxy can release another's answer.
#[derive(Debug)]
pub struct AnswerGate {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// What the agent confirmed already: answers teaching nothing new are not held.
    acked: Mutex<AckedAnswers>,
    /// Answers sent at once, by FqdnLearned id: their FqdnAllowed renews the confirmation, so
    /// that it does not lapse while the agent keeps confirming.
    renewing: Mutex<HashMap<u64, Renewal>>,
}

/// An answer sent at once whose FqdnAllowed is awaited (by nobody) to renew its names.
#[derive(Debug)]
struct Renewal {
    endpoint: u16,
    names: Vec<FqdnAnswer>,
    sent: Instant,
    generation: u64,
}

/// Renewals kept waiting for the agent; beyond, they start over (one held answer each later).
const MAX_RENEWING: usize = 65536;

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
            acked: Mutex::default(),
            renewing: Mutex::default(),
        }
    }
}

/// One held answer.
#[derive(Debug)]
pub struct Ticket {
    /// The id to send in FqdnLearned.
    pub id: u64,
    rx: oneshot::Receiver<()>,
    /// When it was issued (just before FqdnLearned left).
    sent: Instant,
    /// The memory's generation then (see [`AckedAnswers::generation`]).
    generation: u64,
}

impl AnswerGate {
    /// Registers a new held answer.
    pub fn ticket(&self) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        let generation = self.acked().generation();
        self.lock().insert(id, tx);
        Ticket {
            id,
            rx,
            sent: Instant::now(),
            generation,
        }
    }

    /// The id for an FqdnLearned of an answer sent at once: nothing waits for it, but its
    /// FqdnAllowed renews `names` for `endpoint`.
    pub fn renewal(&self, endpoint: u16, names: Vec<FqdnAnswer>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let generation = self.acked().generation();
        let mut renewing = self.renewing();
        if renewing.len() >= MAX_RENEWING {
            renewing.clear();
        }
        renewing.insert(
            id,
            Renewal {
                endpoint,
                names,
                sent: Instant::now(),
                generation,
            },
        );
        id
    }

    /// Whether the agent confirmed every address of `names` for `endpoint` recently enough
    /// that the answer need not be held (see [`super::acked`]).
    pub fn confirmed(&self, endpoint: u16, names: &[FqdnAnswer]) -> bool {
        self.acked().covers(endpoint, names, Instant::now())
    }

    /// Whether the agent should hear of a fast-path answer now (at most once per
    /// [`super::acked::RENEW_EVERY`] per endpoint and name); if so it counts as told.
    pub fn renewal_due(&self, endpoint: u16, names: &[FqdnAnswer]) -> bool {
        self.acked().renewal_due(endpoint, names, Instant::now())
    }

    /// Whether FqdnLearned `id` holds an answer (the control socket sends it at once; the
    /// others may wait for the next batch of records).
    pub fn is_held(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Forgets every confirmation (a Snapshot: the agent may have restarted).
    pub fn forget_all(&self) {
        self.acked().forget_all();
    }

    /// Forgets `endpoint`'s confirmations (its policy changed).
    pub fn forget_endpoint(&self, endpoint: u16) {
        self.acked().forget_endpoint(endpoint);
    }

    /// The agent's FqdnAllowed: releases the answer (an unknown id, e.g. one that timed out
    /// already, changes nothing). Returns whether one was waiting.
    pub fn release(&self, id: u64) -> bool {
        if let Some(tx) = self.lock().remove(&id) {
            return tx.send(()).is_ok();
        }
        let renewal = self.renewing().remove(&id);
        if let Some(r) = renewal {
            self.acked()
                .remember(r.endpoint, &r.names, r.sent, r.generation);
        }
        false
    }

    /// Waits for the release of `ticket`, at most `limit`. True when the agent released it;
    /// then `names` are remembered as confirmed for `endpoint`.
    pub async fn wait(
        &self,
        ticket: Ticket,
        limit: Duration,
        endpoint: u16,
        names: &[FqdnAnswer],
    ) -> bool {
        let released = tokio::time::timeout(limit, ticket.rx).await;
        self.lock().remove(&ticket.id);
        let released = matches!(released, Ok(Ok(())));
        if released {
            self.acked()
                .remember(endpoint, names, ticket.sent, ticket.generation);
        }
        released
    }

    /// Answers held now.
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn renewing(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Renewal>> {
        self.renewing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acked(&self) -> std::sync::MutexGuard<'_, AckedAnswers> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
