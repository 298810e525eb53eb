//! The redirects in force. Commands replace them whole or per endpoint (compiled first, so a
//! bad rule changes nothing); connections look the current table up on every request, so a
//! change applies to the next request on connections already open.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ciliate_model::l7::{L7Redirect, ProxyCommand};

use crate::rules::{CompiledRedirect, RuleError};

/// Which redirect a connection belongs to: the endpoint's address, its direction, the
/// original destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RedirectKey {
    /// The endpoint: the source of an egress connection, the destination of an ingress one.
    pub endpoint_ip: Ipv4Addr,
    /// Egress (the endpoint connects) or ingress.
    pub egress: bool,
    /// The original destination port.
    pub port: u16,
}

/// One consistent set of redirects.
#[derive(Debug, Default)]
pub struct PolicyTable {
    /// The revision of the last command applied.
    pub revision: u64,
    by_endpoint: BTreeMap<u16, Vec<Arc<CompiledRedirect>>>,
    by_key: HashMap<RedirectKey, Arc<CompiledRedirect>>,
}

impl PolicyTable {
    /// The redirect for a connection, if any.
    pub fn get(&self, key: &RedirectKey) -> Option<&Arc<CompiledRedirect>> {
        self.by_key.get(key)
    }

    /// How many redirects are in force.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True without redirects.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn rebuild(revision: u64, by_endpoint: BTreeMap<u16, Vec<Arc<CompiledRedirect>>>) -> Self {
        let by_key = by_endpoint
            .values()
            .flatten()
            .map(|c| (key_of(&c.redirect), c.clone()))
            .collect();
        Self {
            revision,
            by_endpoint,
            by_key,
        }
    }
}

fn key_of(r: &L7Redirect) -> RedirectKey {
    RedirectKey {
        endpoint_ip: r.endpoint_ip,
        egress: r.egress,
        port: r.port,
    }
}

fn compile_all(redirects: &[L7Redirect]) -> Result<Vec<Arc<CompiledRedirect>>, RuleError> {
    redirects
        .iter()
        .map(|r| CompiledRedirect::compile(r.clone()).map(Arc::new))
        .collect()
}

/// The current table, swapped whole on every command.
#[derive(Debug)]
pub struct Policy {
    current: RwLock<Arc<PolicyTable>>,
    /// Bumped after every table swap (see [`Policy::generation`]).
    generation: AtomicU64,
    applied: tokio::sync::watch::Sender<bool>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            current: RwLock::default(),
            generation: AtomicU64::new(0),
            applied: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Policy {
    /// Returns once a first command is in force (a new proxy accepts nothing before: every
    /// connection would otherwise find no redirect and be reset).
    pub async fn wait_applied(&self) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<PolicyTable> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes with every command applied, after the table in force has changed: a
    /// connection that keeps what it last looked up in [`Policy::current`] looks again only
    /// when this moved (read it first). One atomic load, where `current` takes the lock and
    /// a reference on the table, which every request of every thread would share.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies a command; on error nothing changes. Returns the revision now in force.
    pub fn apply(&self, cmd: &ProxyCommand) -> Result<u64, RuleError> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let next = match cmd {
            ProxyCommand::Snapshot {
                revision,
                redirects,
            } => {
                let mut by_endpoint: BTreeMap<u16, Vec<_>> = BTreeMap::new();
                for c in compile_all(redirects)? {
                    by_endpoint.entry(c.redirect.endpoint).or_default().push(c);
                }
                PolicyTable::rebuild(*revision, by_endpoint)
            }
            ProxyCommand::Endpoint {
                revision,
                endpoint,
                redirects,
            } => {
                let compiled = compile_all(redirects)?;
                let mut by_endpoint = guard.by_endpoint.clone();
                if compiled.is_empty() {
                    by_endpoint.remove(endpoint);
                } else {
                    by_endpoint.insert(*endpoint, compiled);
                }
                PolicyTable::rebuild(*revision, by_endpoint)
            }
            ProxyCommand::FqdnAllowed { .. } | ProxyCommand::FqdnForget { .. } => {
                return Ok(guard.revision)
            }
        };
        let rev = next.revision;
        *guard = Arc::new(next);
        self.generation.fetch_add(1, Ordering::Release);
        self.applied.send_replace(true);
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_moves_with_every_command_after_the_table() {
        let policy = Policy::default();
        let mut seen = policy.generation();
        for revision in 1..=3 {
            let rev = policy
                .apply(&ProxyCommand::Snapshot {
                    revision,
                    redirects: Vec::new(),
                })
                .expect("applies");
            assert_eq!(rev, revision);
            let now = policy.generation();
            assert_ne!(now, seen, "after revision {revision}");
            assert_eq!(policy.current().revision, revision);
            seen = now;
        }
        let removal = ProxyCommand::Endpoint {
            revision: 9,
            endpoint: 1,
            redirects: vec![],
        };
        policy.apply(&removal).expect("applies");
        assert_eq!(policy.current().revision, 9);
        assert_ne!(policy.generation(), seen);
    }
}
