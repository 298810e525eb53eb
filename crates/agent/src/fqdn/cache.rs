//! The FQDN cache as pure data: per endpoint, the names its DNS answers gave and their
//! addresses, each with its expiry. No clock, no I/O: every call takes `now` (Unix seconds, so
//! that a saved cache means the same after a restart) and the caller decides what to do with
//! the names whose addresses changed.
//!
//! As Cilium's DNS cache has it:
//!
//! * an address expires at `learned + max(ttl, min_ttl)` (`--tofqdns-min-ttl`); a later answer
//!   with the same address pushes its expiry out;
//! * an endpoint keeps at most `max_ips_per_hostname` addresses per name
//!   (`--tofqdns-max-ips-per-hostname`): the ones that expire first go;
//! * an expired address that an endpoint still has an open connection to is a "zombie": it
//!   stays (and stays allowed) until the connection closes;
//! * what policy sees is the union over endpoints: an address one pod learned for a name is
//!   allowed to every pod whose `toFQDNs` select that name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ciliate_model::api::FqdnCacheEntry;
use ciliate_model::fqdn::{validate_name, FqdnMatcher};
use ciliate_model::l7::FqdnLearned;
use serde::{Deserialize, Serialize};

/// Cilium's default `--tofqdns-min-ttl` for names `toFQDNs` select.
pub const DEFAULT_MIN_TTL: u32 = 3600;
/// Cilium's default `--tofqdns-max-ips-per-hostname`.
pub const DEFAULT_MAX_IPS_PER_HOSTNAME: usize = 50;

/// The cache's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheLimits {
    /// The shortest time an address stays, in seconds, whatever TTL the answer gave.
    pub min_ttl: u32,
    /// The most addresses an endpoint keeps per name.
    pub max_ips_per_hostname: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            min_ttl: DEFAULT_MIN_TTL,
            max_ips_per_hostname: DEFAULT_MAX_IPS_PER_HOSTNAME,
        }
    }
}

/// One address of one name of one endpoint; also the saved form of the cache (one record per
/// entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheRecord {
    /// The endpoint that asked.
    pub endpoint: u16,
    /// Its address (the source of its connections, for the zombie check).
    pub endpoint_ip: Ipv4Addr,
    /// The name, normalized.
    pub name: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// The TTL of the last answer that gave it.
    pub ttl: u32,
    /// When the last answer gave it (Unix seconds).
    pub learned: u64,
    /// When it expires (Unix seconds).
    pub expires: u64,
    /// Expired, kept for an open connection.
    #[serde(default)]
    pub zombie: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    ttl: u32,
    learned: u64,
    expires: u64,
    zombie: bool,
    /// The expiry as last saved (journal or snapshot); not part of the cache's value.
    saved: u64,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.ttl, self.learned, self.expires, self.zombie)
            == (o.ttl, o.learned, o.expires, o.zombie)
    }
}

impl Eq for Entry {}

/// The addresses of one name of one endpoint, sorted by address. A sorted `Vec`, not a
/// `BTreeMap`: almost every name has one to a few addresses (at most
/// `--tofqdns-max-ips-per-hostname`), and a `BTreeMap` allocates a node for eleven entries even
/// for one (~500 bytes a name, against 48 bytes an address here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Addrs(Vec<(Ipv4Addr, Entry)>);

impl Addrs {
    fn get(&self, ip: &Ipv4Addr) -> Option<&Entry> {
        self.0
            .binary_search_by_key(ip, |(a, _)| *a)
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// The entry of `ip`, made with `new` when there is none.
    fn get_or_insert(&mut self, ip: Ipv4Addr, new: Entry) -> &mut Entry {
        let i = match self.0.binary_search_by_key(&ip, |(a, _)| *a) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (ip, new));
                i
            }
        };
        &mut self.0[i].1
    }

    /// Sets the entry of `ip`, replacing any.
    fn insert(&mut self, ip: Ipv4Addr, entry: Entry) {
        let slot = self.get_or_insert(ip, entry.clone());
        *slot = entry;
    }

    fn remove(&mut self, ip: &Ipv4Addr) {
        if let Ok(i) = self.0.binary_search_by_key(ip, |(a, _)| *a) {
            self.0.remove(i);
        }
    }

    fn keys(&self) -> impl Iterator<Item = &Ipv4Addr> + '_ {
        self.0.iter().map(|(a, _)| a)
    }

    fn values(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.0.iter().map(|(_, e)| e)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> + '_ {
        self.0.iter_mut().map(|(_, e)| e)
    }

    fn iter(&self) -> impl Iterator<Item = (&Ipv4Addr, &Entry)> + '_ {
        self.0.iter().map(|(a, e)| (a, e))
    }

    fn retain(&mut self, mut keep: impl FnMut(&Ipv4Addr, &mut Entry) -> bool) {
        self.0.retain_mut(|(a, e)| keep(a, e));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct EndpointCache {
    ip: Option<Ipv4Addr>,
    names: BTreeMap<String, Addrs>,
}

/// What [`FqdnCache::learn`] found in an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Names whose addresses (over all endpoints) changed.
    pub changed: BTreeSet<String>,
    /// Names refused as not being DNS names (skipped; the rest of the answer counts).
    pub refused: Vec<String>,
    /// Whether the answer is worth saving: a new address, a zombie revived, or an expiry
    /// pushed out by at least [`PERSIST_REFRESH_SECS`] (an answer repeated every second
    /// need not be written every second).
    pub persist: bool,
    /// Whether the per-name limit evicted addresses of the answer's endpoint.
    pub evicted: bool,
}

/// How far a repeated answer must push an expiry out before it is worth saving.
pub const PERSIST_REFRESH_SECS: u64 = 60;

/// The node's FQDN cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FqdnCache {
    limits: CacheLimits,
    endpoints: BTreeMap<u16, EndpointCache>,
}

impl FqdnCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            endpoints: BTreeMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// The addresses of `name` over all endpoints (zombies included).
    pub fn ips_of(&self, name: &str) -> BTreeSet<Ipv4Addr> {
        self.endpoints
            .values()
            .filter_map(|e| e.names.get(name))
            .flat_map(|ips| ips.keys().copied())
            .collect()
    }

    /// Every name with its addresses over all endpoints: what policy sees.
    pub fn names(&self) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
        let mut out: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for e in self.endpoints.values() {
            for (name, ips) in &e.names {
                out.entry(name.clone())
                    .or_default()
                    .extend(ips.keys().copied());
            }
        }
        out
    }

    /// Takes one allowed answer in. Names that are not DNS names are refused, the rest of the
    /// answer still counts.
    pub fn learn(&mut self, ev: &FqdnLearned, now: u64) -> Learned {
        let mut out = Learned::default();
        for answer in &ev.names {
            let name = match validate_name(&answer.name) {
                Ok(n) => n,
                Err(_) => {
                    out.refused.push(answer.name.clone());
                    continue;
                }
            };
            if answer.ips.is_empty() {
                continue;
            }
            let before = self.ips_of(&name);
            let ttl = answer.ttl;
            let expires = now.saturating_add(u64::from(ttl.max(self.limits.min_ttl)));
            let ep = self.endpoints.entry(ev.endpoint).or_default();
            ep.ip = Some(ev.endpoint_ip);
            let ips = ep.names.entry(name.clone()).or_default();
            let persist = answer.ips.iter().any(|ip| {
                ips.get(ip).is_none_or(|old| {
                    old.zombie || expires >= old.saved.saturating_add(PERSIST_REFRESH_SECS)
                })
            });
            out.persist |= persist;
            for ip in &answer.ips {
                let e = ips.get_or_insert(
                    *ip,
                    Entry {
                        ttl,
                        learned: now,
                        expires,
                        zombie: false,
                        saved: 0,
                    },
                );
                if persist {
                    e.saved = e.saved.max(expires);
                }
                e.ttl = ttl;
                e.learned = now;
                e.expires = e.expires.max(expires);
                e.zombie = false;
            }
            out.evicted |= cap(ips, self.limits.max_ips_per_hostname);
            if self.ips_of(&name) != before {
                out.changed.insert(name);
            }
        }
        out
    }

    /// The next time [`FqdnCache::expire`] has something to do: the earliest expiry of an
    /// address that is not a zombie yet. Zombies are checked again on the caller's schedule.
    pub fn next_expiry(&self) -> Option<u64> {
        self.endpoints
            .values()
            .flat_map(|e| e.names.values())
            .flat_map(|ips| ips.values())
            .filter(|e| !e.zombie)
            .map(|e| e.expires)
            .min()
    }

    /// Whether some address is kept only for an open connection.
    pub fn has_zombies(&self) -> bool {
        self.endpoints
            .values()
            .flat_map(|e| e.names.values())
            .flat_map(|ips| ips.values())
            .any(|e| e.zombie)
    }

    /// Removes the addresses expired at `now`, except those `open(endpoint_ip, ip)` says an
    /// endpoint still has a connection to (they become zombies, and go once it is closed).
    /// Returns the names whose addresses changed.
    pub fn expire(
        &mut self,
        now: u64,
        open: impl Fn(Ipv4Addr, Ipv4Addr) -> bool,
    ) -> BTreeSet<String> {
        let before = self.names();
        for ep in self.endpoints.values_mut() {
            for ips in ep.names.values_mut() {
                ips.retain(|ip, e| {
                    if e.expires > now {
                        return true;
                    }
                    let alive = ep.ip.is_some_and(|src| open(src, *ip));
                    e.zombie = alive;
                    alive
                });
            }
            ep.names.retain(|_, ips| !ips.is_empty());
        }
        self.endpoints.retain(|_, e| !e.names.is_empty());
        changed(&before, &self.names())
    }

    /// Forgets the names `filter` matches (every name without one); returns the names whose
    /// addresses changed and how many entries went.
    pub fn clean(&mut self, filter: Option<&FqdnMatcher>) -> (BTreeSet<String>, usize) {
        let before = self.names();
        let mut entries = 0;
        for ep in self.endpoints.values_mut() {
            ep.names.retain(|name, ips| {
                let keep = filter.is_some_and(|f| !f.matches(name));
                if !keep {
                    entries += ips.len();
                }
                keep
            });
        }
        self.endpoints.retain(|_, e| !e.names.is_empty());
        (changed(&before, &self.names()), entries)
    }

    /// Forgets the endpoints not in `present` (deleted pods); returns the names whose
    /// addresses changed.
    pub fn retain_endpoints(&mut self, present: &BTreeSet<u16>) -> BTreeSet<String> {
        if self.endpoints.keys().all(|id| present.contains(id)) {
            return BTreeSet::new();
        }
        let before = self.names();
        self.endpoints.retain(|id, _| present.contains(id));
        changed(&before, &self.names())
    }

    /// The cache by name, for `ciliate fqdn cache list`; `filter` keeps the names it matches.
    pub fn list(&self, now: u64, filter: Option<&FqdnMatcher>) -> Vec<FqdnCacheEntry> {
        let mut by_name: BTreeMap<&str, FqdnCacheEntry> = BTreeMap::new();
        let mut last_learned: BTreeMap<&str, u64> = BTreeMap::new();
        for (id, ep) in &self.endpoints {
            for (name, ips) in &ep.names {
                if filter.is_some_and(|f| !f.matches(name)) {
                    continue;
                }
                let row = by_name.entry(name).or_insert_with(|| FqdnCacheEntry {
                    name: name.clone(),
                    ips: Vec::new(),
                    ttl_left: 0,
                    ttl: 0,
                    endpoints: Vec::new(),
                    zombies: Vec::new(),
                });
                row.endpoints.push(*id);
                for (ip, e) in ips.iter() {
                    row.ips.push(*ip);
                    if e.zombie {
                        row.zombies.push(*ip);
                    }
                    row.ttl_left = row.ttl_left.max(e.expires.saturating_sub(now));
                    let last = last_learned.entry(name).or_default();
                    if e.learned >= *last {
                        *last = e.learned;
                        row.ttl = e.ttl;
                    }
                }
            }
        }
        by_name
            .into_values()
            .map(|mut r| {
                r.ips.sort();
                r.ips.dedup();
                r.zombies.sort();
                r.zombies.dedup();
                r
            })
            .collect()
    }

    /// Records that everything is saved as it is now (after a snapshot).
    pub fn mark_saved(&mut self) {
        for e in self
            .endpoints
            .values_mut()
            .flat_map(|e| e.names.values_mut())
            .flat_map(|ips| ips.values_mut())
        {
            e.saved = e.expires;
        }
    }

    /// Every entry, for saving.
    pub fn records(&self) -> Vec<CacheRecord> {
        let mut out = Vec::new();
        for (id, ep) in &self.endpoints {
            for (name, ips) in &ep.names {
                for (ip, e) in ips.iter() {
                    out.push(CacheRecord {
                        endpoint: *id,
                        endpoint_ip: ep.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        name: name.clone(),
                        ip: *ip,
                        ttl: e.ttl,
                        learned: e.learned,
                        expires: e.expires,
                        zombie: e.zombie,
                    });
                }
            }
        }
        out
    }

    /// A cache from saved records (invalid names are skipped), with today's limits: an
    /// endpoint over the cap keeps the addresses that expire last.
    pub fn restore(limits: CacheLimits, records: impl IntoIterator<Item = CacheRecord>) -> Self {
        let mut out = Self::new(limits);
        for r in records {
            let Ok(name) = validate_name(&r.name) else {
                continue;
            };
            let ep = out.endpoints.entry(r.endpoint).or_default();
            if r.endpoint_ip != Ipv4Addr::UNSPECIFIED {
                ep.ip = Some(r.endpoint_ip);
            }
            ep.names.entry(name).or_default().insert(
                r.ip,
                Entry {
                    ttl: r.ttl,
                    learned: r.learned,
                    expires: r.expires,
                    zombie: r.zombie,
                    saved: r.expires,
                },
            );
        }
        for ep in out.endpoints.values_mut() {
            for ips in ep.names.values_mut() {
                // Restored before any proxy confirmed anything: nobody to tell.
                let _ = cap(ips, limits.max_ips_per_hostname);
            }
        }
        out
    }
}

/// Keeps the `max` addresses that expire last (ties: the most recently learned, then the
/// lowest address).
/// Keeps the `max` addresses that expire last; returns whether any was dropped.
fn cap(ips: &mut Addrs, max: usize) -> bool {
    if ips.len() <= max {
        return false;
    }
    let mut order: Vec<(u64, u64, Ipv4Addr)> = ips
        .iter()
        .map(|(ip, e)| (e.expires, e.learned, *ip))
        .collect();
    order.sort_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
    for (_, _, ip) in order.into_iter().take(ips.len() - max) {
        ips.remove(&ip);
    }
    true
}

fn changed(
    before: &BTreeMap<String, BTreeSet<Ipv4Addr>>,
    after: &BTreeMap<String, BTreeSet<Ipv4Addr>>,
) -> BTreeSet<String> {
    before
        .keys()
        .chain(after.keys())
        .filter(|n| before.get(*n) != after.get(*n))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
