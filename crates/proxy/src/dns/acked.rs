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
//! The fast path still tells the agent (FqdnLearned without waiting), so that it refreshes
//! its TTLs; that FqdnAllowed renews the confirmation like a held answer's, so a name in steady
//! use stays confirmed instead of lapsing (and being held) every [`FRESH_FOR`]. It tells it at
//! most once per [`RENEW_EVERY`] per endpoint and name, not per answer (one agent wakeup and
//! cache update per query was most of the agent's CPU under a query stream): an answer between
//! two tellings whose TTL reaches further than the agent was told by more than [`RENEW_EVERY`]
//! is told at once, so the agent's expiry is never more than [`RENEW_EVERY`] short of the
//! pod's last answer. With the agent's minimum TTL (`--tofqdns-min-ttl`, 3600 s by default)
//! above the answer's TTL, the agent keeps the address far longer anyway.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ciliate_model::l7::FqdnAnswer;

/// The longest a confirmation is trusted: short, so a lost confirmation or a missed forget
/// costs little.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// How often a name answered on the fast path is told to the agent again (at most).
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// (endpoint, name) pairs kept; beyond, the memory starts over (a slow answer each).
const MAX_NAMES: usize = 65536;

/// One name of one endpoint: its confirmed addresses, and what the agent was last told.
#[derive(Debug, Default)]
struct NameState {
    /// Confirmed addresses, each with the instant it stops counting.
    ips: HashMap<Ipv4Addr, Instant>,
    /// When the agent was last told of this name on the fast path, and the TTL's end then.
    told: Option<(Instant, Instant)>,
}

/// Confirmed pairs by endpoint and name.
#[derive(Debug, Default)]
pub struct AckedAnswers {
    by_endpoint: HashMap<u16, HashMap<String, NameState>>,
    names: usize,
    generation: u64,
}

impl AckedAnswers {
    /// Changes on every forget: a confirmation of an answer sent before it is not remembered.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether every address of every name in `names` is confirmed for `endpoint` at `now`.
    pub fn covers(&self, endpoint: u16, names: &[FqdnAnswer], now: Instant) -> bool {
        let Some(known) = self.by_endpoint.get(&endpoint) else {
            return false;
        };
        !names.is_empty()
            && names.iter().all(|n| {
                // Names are compared as the answer spells them; a case difference only means
                // one more held answer.
                known.get(n.name.as_str()).is_some_and(|s| {
                    !n.ips.is_empty()
                        && n.ips
                            .iter()
                            .all(|ip| s.ips.get(ip).is_some_and(|until| *until > now))
                })
            })
    }

    /// Whether the agent should hear of a fast-path answer of `names` for `endpoint` at `now`
    /// (see the module's notes); if so, it counts as told from `now`. Names not confirmed
    /// are always due (the caller asks only for confirmed answers).
    pub fn renewal_due(&mut self, endpoint: u16, names: &[FqdnAnswer], now: Instant) -> bool {
        let Some(known) = self.by_endpoint.get_mut(&endpoint) else {
            return true;
        };
        let due = names.iter().any(|n| {
            let ends = now + Duration::from_secs(u64::from(n.ttl));
            known
                .get(n.name.as_str())
                .and_then(|s| s.told)
                .is_none_or(|(at, until)| {
                    now.saturating_duration_since(at) >= RENEW_EVERY || ends > until + RENEW_EVERY
                })
        });
        if due {
            for n in names {
                if let Some(s) = known.get_mut(n.name.as_str()) {
                    let ends = now + Duration::from_secs(u64::from(n.ttl));
                    s.told = Some((now, ends));
                }
            }
        }
        due
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
        if self.names >= MAX_NAMES {
            self.by_endpoint.clear();
            self.names = 0;
        }
        let now = Instant::now();
        let known = self.by_endpoint.entry(endpoint).or_default();
        for n in names {
            let fresh = Duration::from_secs(u64::from(n.ttl.saturating_sub(1))).min(FRESH_FOR);
            let state = match known.get_mut(n.name.as_str()) {
                Some(s) => s,
                None => {
                    self.names += 1;
                    known.entry(n.name.clone()).or_default()
                }
            };
            state.ips.retain(|_, until| *until > now);
            for ip in &n.ips {
                let until = sent + fresh;
                let e = state.ips.entry(*ip).or_insert(until);
                *e = (*e).max(until);
            }
        }
    }

    /// Forgets everything (the agent (re)connected with a Snapshot).
    pub fn forget_all(&mut self) {
        self.by_endpoint.clear();
        self.names = 0;
        self.generation += 1;
    }

    /// Forgets one endpoint's pairs (its policy changed).
    pub fn forget_endpoint(&mut self, endpoint: u16) {
        if let Some(known) = self.by_endpoint.remove(&endpoint) {
            self.names -= known.len();
        }
        self.generation += 1;
    }
}
