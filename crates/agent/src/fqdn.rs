//! The node's FQDN cache: the names and addresses the DNS proxy's allowed answers taught, put
//! in force for `toFQDNs` rules before the pod sees the answer.
//!
//! * [`cache`] is the pure part (TTLs, `--tofqdns-min-ttl`, `--tofqdns-max-ips-per-hostname`,
//!   zombies, clean), [`store`] the files in the state directory.
//! * [`FqdnManager::learned`] takes a [`FqdnLearned`] from the proxy: the cache learns it, the
//!   journal records it, and when the addresses of a name some `toFQDNs` selects changed, the
//!   policy manager recomputes only the endpoints that can see the change and writes their
//!   maps ([`PolicyManager::update_fqdn`]). Then (and only then) the caller answers
//!   [`ciliate_model::l7::ProxyCommand::FqdnAllowed`].
//! * [`FqdnManager::run`] expires addresses: one timer, set to the next expiry (and, while a
//!   zombie waits for its connection to close, to the next conntrack check); no polling loop.
//! * [`FqdnManager::open`] restores the cache and puts it in the policy engine before the
//!   agent's first policy computation, so a restart never drops a learned address.
//!
//! Every change of the cache goes through one lock, held until the maps are written, so that
//! two answers for the same name can never reach the maps out of order.

pub mod cache;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ciliate_datapath::Datapath;
use ciliate_model::api::{FqdnCacheCleaned, FqdnCacheEntry};
use ciliate_model::fqdn::FqdnMatcher;
use ciliate_model::l7::FqdnLearned;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::policy::{NodeEndpoints, PolicyManager};
use cache::{CacheLimits, FqdnCache};
use store::{FqdnStore, FqdnStoreError};

/// Settings from the agent's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqdnSettings {
    /// `--tofqdns-min-ttl` and `--tofqdns-max-ips-per-hostname`.
    pub limits: CacheLimits,
    /// How often an address kept for an open connection is checked again (the conntrack GC
    /// interval: a closed connection's entry is gone by then).
    pub zombie_check: Duration,
}

impl Default for FqdnSettings {
    fn default() -> Self {
        Self {
            limits: CacheLimits::default(),
            zombie_check: Duration::from_secs(30),
        }
    }
}

/// Where the manager reads the node's endpoints from (the endpoint manager).
pub type NodeView = Box<dyn Fn() -> NodeEndpoints + Send + Sync>;

/// The node's FQDN cache and what keeps it in force.
pub struct FqdnManager {
    settings: FqdnSettings,
    cache: Mutex<FqdnCache>,
    store: Mutex<FqdnStore>,
    policies: Arc<PolicyManager>,
    datapath: Arc<dyn Datapath>,
    node: NodeView,
    /// Wakes the expiry timer when the next expiry may have moved earlier.
    wake: Notify,
    /// Asks the expiry task to fold the journal into the snapshot.
    compact: Notify,
    /// Tells the proxy that addresses it saw confirmed are being dropped early (clean, the
    /// per-name limit): `Some(endpoint)` or `None` for all. Set once the proxy runs.
    forget: OnceLock<ForgetSink>,
}

/// See [`FqdnManager::set_forget_sink`].
pub type ForgetSink = Box<dyn Fn(Option<u16>) + Send + Sync>;

impl std::fmt::Debug for FqdnManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FqdnManager")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FqdnManager {
    /// Restores the cache from `state_dir` and puts it in the policy engine (with the CIDR
    /// identities the pinned ipcache gives its addresses), before the first reconciliation.
    pub fn open(
        settings: FqdnSettings,
        state_dir: &Path,
        policies: Arc<PolicyManager>,
        datapath: Arc<dyn Datapath>,
        node: NodeView,
    ) -> Result<Self, FqdnStoreError> {
        let mut store = FqdnStore::new(state_dir);
        let loaded = store.load(settings.limits)?;
        let mut cache = loaded.cache;
        if loaded.skipped > 0 {
            warn!(
                file = %store.journal_path().display(),
                lines = loaded.skipped,
                "FQDN journal lines could not be read (a write cut short); skipped"
            );
        }
        let now = unix_now();
        // What expired while the agent was away goes now, except what a connection holds.
        if cache.next_expiry().is_some_and(|t| t <= now) || cache.has_zombies() {
            cache.expire(now, open_connections(datapath.as_ref()));
        }
        policies.restore_fqdn(cache.names());
        if loaded.replayed > 0 || loaded.skipped > 0 {
            store.compact(&cache, now)?;
            cache.mark_saved();
        }
        info!(
            names = cache.names().len(),
            replayed = loaded.replayed,
            "FQDN cache restored"
        );
        Ok(Self {
            settings,
            cache: Mutex::new(cache),
            store: Mutex::new(store),
            policies,
            datapath,
            node,
            wake: Notify::new(),
            compact: Notify::new(),
            forget: OnceLock::new(),
        })
    }

    /// Where to say that confirmed addresses go before their TTL: the proxy answers from
    /// what the agent confirmed without asking again (see the proxy's `dns::acked`), so it
    /// must hear of it before the addresses leave the maps. Only the first sink counts.
    pub fn set_forget_sink(&self, sink: ForgetSink) {
        let _ = self.forget.set(sink);
    }

    fn tell_forget(&self, endpoint: Option<u16>) {
        if let Some(f) = self.forget.get() {
            f(endpoint);
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> FqdnSettings {
        self.settings
    }

    /// Takes an allowed answer in: cache, journal, and the maps of the endpoints whose
    /// `toFQDNs` can see a changed address. When this returns, the proxy may hand the answer
    /// to the pod (an error is logged and returned: the caller still answers, since holding
    /// the answer forever helps nobody; the datapath then refuses what policy lacks).
    pub fn learned(&self, ev: &FqdnLearned) -> Result<(), String> {
        self.learned_all(std::slice::from_ref(ev))
    }

    /// [`FqdnManager::learned`] for several answers at once: each is learned and journaled,
    /// then the policy is computed and the maps written once for all of them. A burst of new
    /// names then costs one computation per batch, not one per address (each is O(learned
    /// addresses): the CIDR identities and the ipcache cover all of them).
    pub fn learned_all(&self, evs: &[FqdnLearned]) -> Result<(), String> {
        let now = unix_now();
        let mut cache = lock(&self.cache);
        let mut changed = BTreeSet::new();
        let mut persist = Vec::new();
        for ev in evs {
            let learned = cache.learn(ev, now);
            if learned.evicted {
                self.tell_forget(Some(ev.endpoint));
            }
            for name in &learned.refused {
                warn!(endpoint = ev.endpoint, name = %name.escape_debug(), "DNS answer with a name that is not a DNS name; not learned");
            }
            if learned.persist {
                persist.push(ev);
            }
            changed.extend(learned.changed);
        }
        if !persist.is_empty() {
            let mut store = lock(&self.store);
            for ev in persist {
                if let Err(e) = store.append(ev, now) {
                    warn!(error = %e, "cannot journal a learned DNS answer; it is in force but a restart may forget it");
                }
            }
            if store.wants_compaction() {
                // Off the answer's path: the expiry task folds the journal.
                self.compact.notify_one();
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let changes: BTreeMap<String, BTreeSet<Ipv4Addr>> = changed
            .iter()
            .map(|n| (n.clone(), cache.ips_of(n)))
            .collect();
        self.wake.notify_one();
        let result = self.policies.update_fqdn(&changes, || (self.node)());
        drop(cache);
        match result {
            Ok(written) => {
                debug!(
                    answers = evs.len(),
                    names = changes.len(),
                    endpoints = written,
                    "FQDN addresses in force"
                );
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "cannot put learned FQDN addresses in force");
                Err(e)
            }
        }
    }

    /// The cache by name; `pattern` keeps the names it matches.
    pub fn list(&self, pattern: Option<&FqdnMatcher>) -> Vec<FqdnCacheEntry> {
        lock(&self.cache).list(unix_now(), pattern)
    }

    /// Forgets the names `pattern` matches (all without one), as `cilium fqdn cache clean`;
    /// their addresses leave the maps at once, and the saved cache with them.
    pub fn clean(&self, pattern: Option<&FqdnMatcher>) -> Result<FqdnCacheCleaned, String> {
        let mut cache = lock(&self.cache);
        self.tell_forget(None);
        let (names, entries) = cache.clean(pattern);
        let changes: BTreeMap<String, BTreeSet<Ipv4Addr>> =
            names.iter().map(|n| (n.clone(), cache.ips_of(n))).collect();
        let saved = lock(&self.store)
            .compact(&cache, unix_now())
            .map_err(|e| e.to_string());
        if saved.is_ok() {
            cache.mark_saved();
        }
        self.policies.update_fqdn(&changes, || (self.node)())?;
        saved?;
        info!(names = names.len(), entries, "FQDN cache cleaned");
        Ok(FqdnCacheCleaned {
            names: names.len(),
            entries,
        })
    }

    /// Expires what is due now (and drops the entries of endpoints that are gone).
    pub fn expire_now(&self) {
        let now = unix_now();
        let mut cache = lock(&self.cache);
        let due = cache.next_expiry().is_some_and(|t| t <= now) || cache.has_zombies();
        let mut changed = BTreeSet::new();
        if due {
            changed = cache.expire(now, open_connections(self.datapath.as_ref()));
        }
        let present: BTreeSet<u16> = (self.node)().endpoints.iter().map(|e| e.id).collect();
        changed.extend(cache.retain_endpoints(&present));
        if changed.is_empty() {
            return;
        }
        let changes: BTreeMap<String, BTreeSet<Ipv4Addr>> = changed
            .iter()
            .map(|n| (n.clone(), cache.ips_of(n)))
            .collect();
        if let Err(e) = self.policies.update_fqdn(&changes, || (self.node)()) {
            warn!(error = %e, "cannot remove expired FQDN addresses from policy; retrying");
        }
        match lock(&self.store).compact(&cache, now) {
            Ok(()) => cache.mark_saved(),
            Err(e) => warn!(error = %e, "cannot save the FQDN cache"),
        }
        debug!(names = changed.len(), "FQDN addresses expired");
    }

    /// Folds the journal into the snapshot.
    pub fn compact_now(&self) {
        let mut cache = lock(&self.cache);
        match lock(&self.store).compact(&cache, unix_now()) {
            Ok(()) => cache.mark_saved(),
            Err(e) => warn!(error = %e, "cannot save the FQDN cache"),
        }
    }

    /// How long until [`FqdnManager::expire_now`] has something to do; `None`: nothing until
    /// something is learned.
    fn next_wake(&self) -> Option<Duration> {
        let cache = lock(&self.cache);
        let now = unix_now();
        let expiry = cache
            .next_expiry()
            .map(|t| Duration::from_secs(t.saturating_sub(now)));
        let zombie = cache.has_zombies().then_some(self.settings.zombie_check);
        match (expiry, zombie) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires addresses until `shutdown`: sleeps until the next expiry, or until something
    /// learned may have an earlier one.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = self.next_wake();
            let sleep = async {
                match wait {
                    // A second past the expiry, so that the whole second has passed.
                    Some(d) => tokio::time::sleep(d + Duration::from_secs(1)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.wake.notified() => continue,
                _ = self.compact.notified() => {
                    let me = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || me.compact_now()).await;
                    continue;
                }
                _ = sleep => {}
            }
            let me = Arc::clone(&self);
            if tokio::task::spawn_blocking(move || me.expire_now())
                .await
                .is_err()
            {
                warn!("FQDN expiry panicked");
            }
        }
    }
}

/// Whether an endpoint (by address) still has a connection it opened to an address, as
/// conntrack holds them now.
fn open_connections(datapath: &dyn Datapath) -> impl Fn(Ipv4Addr, Ipv4Addr) -> bool {
    let open: Option<BTreeSet<(Ipv4Addr, Ipv4Addr)>> = match datapath.ct_entries() {
        Ok(entries) => Some(
            entries
                .into_iter()
                .filter(|e| e.direction == "egress" && e.expires_in >= 0)
                .map(|e| (e.src, e.dst))
                .collect(),
        ),
        Err(e) => {
            // Unknown: keep every expired address for now rather than cut a connection.
            warn!(error = %e, "cannot read conntrack; expired FQDN addresses are kept until it can be read");
            None
        }
    };
    move |src, dst| open.as_ref().is_none_or(|o| o.contains(&(src, dst)))
}

#[cfg(test)]
mod tests;
