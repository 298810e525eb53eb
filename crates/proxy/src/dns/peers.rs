//! The identities of a query's pod and resolver, remembered for a moment.
//!
//! Each identity is two `bpf()` lookups in the pinned maps (`cil_lxc4`, then `cil_ipcache4`),
//! and every query needs two: a fifth of the proxy's system calls per query. A node's pods ask
//! the same few resolvers again and again, so the answers are kept, but only while they can be
//! trusted: for at most [`FRESH`], and forgotten at once whenever the agent's redirects change
//! (a pod's new labels, a new policy: what a new identity comes with), so that a decision is
//! never made on an identity older than the redirects it is judged against.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ciliate_model::identity::NumericIdentity;

use crate::identity::Identities;
use crate::policy::PolicyTable;

/// The longest an identity is used without asking the maps again.
pub const FRESH: Duration = Duration::from_secs(1);
/// Addresses remembered at most; beyond, the memory starts over (a scan of many sources).
const MAX_ADDRESSES: usize = 4096;

/// See the module's documentation.
#[derive(Debug, Default)]
pub struct PeerIdentities {
    memory: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    /// The redirects the identities were read under (held, so that its address is never
    /// another table's).
    table: Option<Arc<PolicyTable>>,
    /// When the memory was started.
    since: Option<Instant>,
    by_ip: HashMap<Ipv4Addr, NumericIdentity>,
}

impl PeerIdentities {
    /// The identity of `ip`, from memory or from `source`; `table` is the redirect table the
    /// query is judged against.
    pub fn identity_of(
        &self,
        source: &dyn Identities,
        table: &Arc<PolicyTable>,
        ip: Ipv4Addr,
    ) -> NumericIdentity {
        let now = Instant::now();
        let same = |m: &Memory| m.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table));
        {
            let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            let stale = !same(&m)
                || m.since.is_none_or(|t| now.duration_since(t) >= FRESH)
                || m.by_ip.len() >= MAX_ADDRESSES;
            if stale {
                m.by_ip.clear();
                m.table = Some(table.clone());
                m.since = Some(now);
            } else if let Some(id) = m.by_ip.get(&ip) {
                return *id;
            }
        }
        // Outside the lock: a lookup is a system call.
        let id = source.identity_of(ip);
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if same(&m) {
            m.by_ip.insert(ip, id);
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting {
        asked: AtomicUsize,
        id: std::sync::atomic::AtomicU32,
    }

    impl Identities for Counting {
        fn identity_of(&self, _ip: Ipv4Addr) -> NumericIdentity {
            self.asked.fetch_add(1, Ordering::Relaxed);
            self.id.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn an_identity_is_read_once_per_table_and_again_under_new_redirects() {
        let maps = Counting::default();
        maps.id.store(300, Ordering::Relaxed);
        let peers = PeerIdentities::default();
        let table = Arc::new(PolicyTable::default());
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        for _ in 0..10 {
            assert_eq!(peers.identity_of(&maps, &table, ip), 300);
        }
        assert_eq!(maps.asked.load(Ordering::Relaxed), 1);
        // New redirects (the pod's new labels came with them): read again.
        maps.id.store(301, Ordering::Relaxed);
        let next = Arc::new(PolicyTable::default());
        assert_eq!(peers.identity_of(&maps, &next, ip), 301);
        assert_eq!(maps.asked.load(Ordering::Relaxed), 2);
        // Another address is its own lookup.
        assert_eq!(
            peers.identity_of(&maps, &next, Ipv4Addr::new(10, 0, 0, 2)),
            301
        );
        assert_eq!(maps.asked.load(Ordering::Relaxed), 3);
    }
}
