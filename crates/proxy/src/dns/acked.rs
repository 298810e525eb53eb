//! The (name, address) pairs the agent has confirmed per endpoint, so that an answer teaching
//! nothing new need not be held (the fast path of [`super::DnsProxy::handle`]).
//!
//! The rule, and why it is safe enough:
//!
//! - A pair counts only after the agent's FqdnAllowed for an answer that carried it, and only
//!   from the time that FqdnLearned was *sent* (before the agent put it in its cache), so the
//!   agent's own entry is at least as old as ours.
//! - It counts for `min(ttl - 1 s, FRESH_FOR)`: the agent keeps an entry for at least its TTL
//!   (its minimum TTL, 3600 s by default, only lengthens that; the second covers its whole-second
//!   clock), so TTL expiry alone never removes it before the proxy stops trusting it.
//! - Everything is forgotten on a `Snapshot` (a (re)connecting or restarted agent, whose cache
//!   may have lost entries) and an endpoint's pairs on its `Endpoint` command; an answer held
//!   across such a forget is not remembered when it is released ([`AckedAnswers::generation`]).
//! - What the agent drops before its TTL (`fqdn cache clean`, the per-name address limit), it
//!   announces first with `FqdnForget` (all, or the endpoint), handled like the above. The
//!   announcement and the removal from the maps are not one step: an answer sent between the
//!   two has the same exposure as one the pod received just before the clean.
//!
//! The fast path still sends FqdnLearned (the agent refreshes its TTLs), without waiting; its
//! FqdnAllowed renews the confirmation like a held answer's, so a name in steady use stays
//! confirmed instead of lapsing (and being held) every [`FRESH_FOR`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ciliate_model::l7::FqdnAnswer;

/// The longest a confirmation is trusted: short, so a lost confirmation or a missed forget
/// costs little.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// (endpoint, name) pairs kept; beyond, the memory starts over (a slow answer each).
const MAX_NAMES: usize = 65536;

/// Confirmed pairs by endpoint and name, each with the instant it stops counting.
#[derive(Debug, Default)]
pub struct AckedAnswers {
    by_name: HashMap<(u16, String), HashMap<Ipv4Addr, Instant>>,
    generation: u64,
}

impl AckedAnswers {
    /// Changes on every forget: a confirmation of an answer sent before it is not remembered.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether every address of every name in `names` is confirmed for `endpoint` at `now`.
    pub fn covers(&self, endpoint: u16, names: &[FqdnAnswer], now: Instant) -> bool {
        !names.is_empty()
            && names.iter().all(|n| {
                // Names are compared as the answer spells them; a case difference only means
                // one more held answer.
                self.by_name
                    .get(&(endpoint, n.name.clone()))
                    .is_some_and(|ips| {
                        !n.ips.is_empty()
                            && n.ips
                                .iter()
                                .all(|ip| ips.get(ip).is_some_and(|until| *until > now))
                    })
            })
    }

    /// The agent confirmed `names` for `endpoint`, told at `sent` (generation `generation`).
    pub fn remember(
        &mut self,
        endpoint: u16,
        names: &[FqdnAnswer],
        sent: Instant,
        generation: u64,
    ) {
        if generation != self.generation {
            return;
        }
        if self.by_name.len() >= MAX_NAMES {
            self.by_name.clear();
        }
        for n in names {
            let fresh = Duration::from_secs(u64::from(n.ttl.saturating_sub(1))).min(FRESH_FOR);
            let ips = self.by_name.entry((endpoint, n.name.clone())).or_default();
            let now = Instant::now();
            ips.retain(|_, until| *until > now);
            for ip in &n.ips {
                let until = sent + fresh;
                let e = ips.entry(*ip).or_insert(until);
                *e = (*e).max(until);
            }
        }
    }

    /// Forgets everything (the agent (re)connected with a Snapshot).
    pub fn forget_all(&mut self) {
        self.by_name.clear();
        self.generation += 1;
    }

    /// Forgets one endpoint's pairs (its policy changed).
    pub fn forget_endpoint(&mut self, endpoint: u16) {
        self.by_name.retain(|(e, _), _| *e != endpoint);
        self.generation += 1;
    }
}
