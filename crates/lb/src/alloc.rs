//! Stable ids: backend ids and reverse-NAT indexes, kept per key across recomputations and
//! restarts.
//!
//! Conntrack entries and affinity records in the kernel hold backend ids and rev-NAT indexes,
//! so an id must keep meaning the same thing: the allocator remembers the id of every key
//! (backend: address, port, protocol; frontend: address, port, protocol), gives it back on
//! every recomputation, and the agent persists it so a restart finds the same ids. New ids
//! come from a cursor that moves forward and wraps, rather than the lowest free id, so an id
//! just freed is not handed to another backend while connections may still name it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::Hash;
use std::net::Ipv4Addr;

use ciliate_model::lb::L4Proto;
use serde::{Deserialize, Serialize};

use crate::LbError;

/// What a backend id stands for.
pub type BackendKey = (Ipv4Addr, u16, L4Proto);

/// What a rev-NAT index stands for: the frontend.
pub use ciliate_model::lb_diff::FrontendKey;

/// Highest backend id handed out. The datapath's backend map is a hash, so any non-zero
/// `u32` works; the limit only keeps ids readable.
pub const MAX_BACKEND_ID: u32 = u32::MAX;

/// Highest rev-NAT index: the field is 16 bits wide in conntrack entries.
pub const MAX_REV_NAT: u16 = u16::MAX;

/// Ids in use, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdAllocator {
    backends: BTreeMap<BackendKey, u32>,
    rev_nat: BTreeMap<FrontendKey, u16>,
    backend_ids: BTreeSet<u32>,
    rev_nat_ids: BTreeSet<u16>,
    /// The next backend id to try.
    next_backend: u32,
    /// The next rev-NAT index to try.
    next_rev_nat: u16,
}

/// One backend id, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendIdEntry {
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub proto: L4Proto,
    /// Its id.
    pub id: u32,
}

/// One rev-NAT index, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevNatEntry {
    /// Frontend address.
    pub addr: Ipv4Addr,
    /// Frontend port.
    pub port: u16,
    /// Protocol.
    pub proto: L4Proto,
    /// Its index.
    pub index: u16,
}

/// The allocator as the agent persists it (JSON has no tuple keys, hence lists).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocatorSnapshot {
    /// Backend ids.
    #[serde(default)]
    pub backends: Vec<BackendIdEntry>,
    /// Rev-NAT indexes.
    #[serde(default)]
    pub rev_nat: Vec<RevNatEntry>,
    /// Next backend id to try.
    #[serde(default)]
    pub next_backend: u32,
    /// Next rev-NAT index to try.
    #[serde(default)]
    pub next_rev_nat: u16,
}

impl IdAllocator {
    /// An allocator with no id in use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The allocator a snapshot describes. Refuses id 0 and ids given twice, which would
    /// make two backends (or frontends) share a datapath entry.
    pub fn restore(s: &AllocatorSnapshot) -> Result<Self, LbError> {
        let mut a = Self {
            next_backend: s.next_backend,
            next_rev_nat: s.next_rev_nat,
            ..Self::default()
        };
        for e in &s.backends {
            let key = (e.addr, e.port, e.proto);
            if e.id == 0 || !a.backend_ids.insert(e.id) || a.backends.insert(key, e.id).is_some() {
                return Err(LbError::Snapshot(format!(
                    "backend {}:{}/{} has id {}, which is 0 or given twice",
                    e.addr, e.port, e.proto, e.id
                )));
            }
        }
        for e in &s.rev_nat {
            let key = (e.addr, e.port, e.proto);
            if e.index == 0
                || !a.rev_nat_ids.insert(e.index)
                || a.rev_nat.insert(key, e.index).is_some()
            {
                return Err(LbError::Snapshot(format!(
                    "frontend {}:{}/{} has rev-NAT index {}, which is 0 or given twice",
                    e.addr, e.port, e.proto, e.index
                )));
            }
        }
        Ok(a)
    }

    /// What to persist.
    pub fn snapshot(&self) -> AllocatorSnapshot {
        AllocatorSnapshot {
            backends: self
                .backends
                .iter()
                .map(|(&(addr, port, proto), &id)| BackendIdEntry {
                    addr,
                    port,
                    proto,
                    id,
                })
                .collect(),
            rev_nat: self
                .rev_nat
                .iter()
                .map(|(&(addr, port, proto), &index)| RevNatEntry {
                    addr,
                    port,
                    proto,
                    index,
                })
                .collect(),
            next_backend: self.next_backend,
            next_rev_nat: self.next_rev_nat,
        }
    }

    /// The id of a backend, if it has one.
    pub fn backend_id(&self, key: &BackendKey) -> Option<u32> {
        self.backends.get(key).copied()
    }

    /// The rev-NAT index of a frontend, if it has one.
    pub fn rev_nat_index(&self, key: &FrontendKey) -> Option<u16> {
        self.rev_nat.get(key).copied()
    }

    /// Backend ids in use.
    pub fn backends_in_use(&self) -> usize {
        self.backends.len()
    }

    /// Rev-NAT indexes in use.
    pub fn rev_nat_in_use(&self) -> usize {
        self.rev_nat.len()
    }

    /// The id of `key`, given a new one if it has none (incremental use, see
    /// [`crate::Balancer`]).
    pub fn ensure_backend(&mut self, key: BackendKey) -> Result<u32, LbError> {
        if let Some(&id) = self.backends.get(&key) {
            return Ok(id);
        }
        let id = next_free(&mut self.next_backend, MAX_BACKEND_ID, &self.backend_ids)
            .ok_or(LbError::BackendIdsExhausted)?;
        self.backend_ids.insert(id);
        self.backends.insert(key, id);
        Ok(id)
    }

    /// Frees the id of `key`, if it has one.
    pub fn release_backend(&mut self, key: &BackendKey) {
        if let Some(id) = self.backends.remove(key) {
            self.backend_ids.remove(&id);
        }
    }

    /// The rev-NAT index of `key`, given a new one if it has none.
    pub fn ensure_rev_nat(&mut self, key: FrontendKey) -> Result<u16, LbError> {
        if let Some(&id) = self.rev_nat.get(&key) {
            return Ok(id);
        }
        let id = next_free(&mut self.next_rev_nat, MAX_REV_NAT, &self.rev_nat_ids).ok_or(
            LbError::RevNatExhausted {
                wanted: self.rev_nat.len() + 1,
                kept: self.rev_nat.len(),
            },
        )?;
        self.rev_nat_ids.insert(id);
        self.rev_nat.insert(key, id);
        Ok(id)
    }

    /// Frees the rev-NAT index of `key`, if it has one.
    pub fn release_rev_nat(&mut self, key: &FrontendKey) {
        if let Some(id) = self.rev_nat.remove(key) {
            self.rev_nat_ids.remove(&id);
        }
    }

    /// Takes the ids the datapath already holds (read back from its pinned maps after a
    /// restart), so that connections in its conntrack table keep meaning the same backends and
    /// frontends. An id or key given twice keeps its first owner; 0 is skipped. Ids seeded
    /// but not used once the state is loaded are freed with [`IdAllocator::retain`].
    pub fn seed(
        &mut self,
        backends: impl IntoIterator<Item = (BackendKey, u32)>,
        frontends: impl IntoIterator<Item = (FrontendKey, u16)>,
    ) {
        seed_one(
            &mut self.backends,
            &mut self.backend_ids,
            &mut self.next_backend,
            backends,
            |id| id.wrapping_add(1),
        );
        seed_one(
            &mut self.rev_nat,
            &mut self.rev_nat_ids,
            &mut self.next_rev_nat,
            frontends,
            |id| id.wrapping_add(1),
        );
    }

    /// Rebuilds its tables packed, after many ids were given or freed. B-trees filled in
    /// key order (as a batch gives ids) keep their nodes little more than half full: at
    /// 10,000 Services this halves the ~100 bytes per Service of the four.
    pub fn compact(&mut self) {
        fn packed<T: Ord>(t: &mut BTreeSet<T>) {
            *t = std::mem::take(t).into_iter().collect();
        }
        fn packed_map<K: Ord, V>(t: &mut BTreeMap<K, V>) {
            *t = std::mem::take(t).into_iter().collect();
        }
        packed_map(&mut self.backends);
        packed_map(&mut self.rev_nat);
        packed(&mut self.backend_ids);
        packed(&mut self.rev_nat_ids);
    }

    /// Frees every id whose key the predicates reject.
    pub fn retain(
        &mut self,
        mut backend: impl FnMut(&BackendKey) -> bool,
        mut frontend: impl FnMut(&FrontendKey) -> bool,
    ) {
        let Self {
            backends,
            rev_nat,
            backend_ids,
            rev_nat_ids,
            ..
        } = self;
        backends.retain(|k, id| backend(k) || !backend_ids.remove(id));
        rev_nat.retain(|k, id| frontend(k) || !rev_nat_ids.remove(id));
    }

    /// Makes the ids in use exactly those of `backends` and `frontends`: keys that are gone
    /// free their ids, keys that stay keep theirs, new keys get new ones in key order (so the
    /// same input on a fresh allocator always yields the same ids). On error nothing changed.
    pub fn assign(
        &mut self,
        backends: &BTreeSet<BackendKey>,
        frontends: &BTreeSet<FrontendKey>,
    ) -> Result<(), LbError> {
        let new_frontends = frontends
            .iter()
            .filter(|k| !self.rev_nat.contains_key(k))
            .count();
        let kept_frontends = frontends.len() - new_frontends;
        if frontends.len() > usize::from(MAX_REV_NAT) {
            return Err(LbError::RevNatExhausted {
                wanted: frontends.len(),
                kept: kept_frontends,
            });
        }

        // Worked on a copy, so that a failure leaves the allocator as it was.
        let mut next = self.clone();
        let IdAllocator {
            backends: by_backend,
            rev_nat: by_frontend,
            backend_ids,
            rev_nat_ids,
            next_backend,
            next_rev_nat,
        } = &mut next;
        by_backend.retain(|k, id| {
            let keep = backends.contains(k);
            if !keep {
                backend_ids.remove(id);
            }
            keep
        });
        by_frontend.retain(|k, id| {
            let keep = frontends.contains(k);
            if !keep {
                rev_nat_ids.remove(id);
            }
            keep
        });
        for k in backends {
            if !by_backend.contains_key(k) {
                let id = next_free(next_backend, MAX_BACKEND_ID, backend_ids)
                    .ok_or(LbError::BackendIdsExhausted)?;
                backend_ids.insert(id);
                by_backend.insert(*k, id);
            }
        }
        for k in frontends {
            if !by_frontend.contains_key(k) {
                // Cannot fail: the count was checked above and every freed index is free.
                let id = next_free(next_rev_nat, MAX_REV_NAT, rev_nat_ids).ok_or(
                    LbError::RevNatExhausted {
                        wanted: frontends.len(),
                        kept: kept_frontends,
                    },
                )?;
                rev_nat_ids.insert(id);
                by_frontend.insert(*k, id);
            }
        }
        *self = next;
        Ok(())
    }
}

/// [`IdAllocator::seed`] of one kind: `(key, id)` pairs in order, an id or key given twice
/// keeping its first owner, 0 skipped, `next` moved past the highest id taken. Into empty
/// tables (an agent's start: 100,000 backends at 50,000 Services) the pairs are taken with
/// hash sets and the B-trees built once from them sorted, packed, instead of one B-tree
/// search and two inserts per pair in the kernel's bucket order.
fn seed_one<K: Ord + Hash + Copy, I: Ord + Hash + Copy + Default>(
    keys: &mut BTreeMap<K, I>,
    ids: &mut BTreeSet<I>,
    next: &mut I,
    pairs: impl IntoIterator<Item = (K, I)>,
    after: impl Fn(I) -> I,
) {
    let zero = I::default();
    if !keys.is_empty() || !ids.is_empty() {
        for (key, id) in pairs {
            if id != zero && !keys.contains_key(&key) && ids.insert(id) {
                keys.insert(key, id);
                *next = (*next).max(after(id));
            }
        }
        return;
    }
    let pairs = pairs.into_iter();
    let room = pairs.size_hint().0;
    let hasher = foldhash::fast::RandomState::default();
    let mut seen_keys: HashSet<K, _> = HashSet::with_capacity_and_hasher(room, hasher.clone());
    let mut seen_ids: HashSet<I, _> = HashSet::with_capacity_and_hasher(room, hasher);
    let mut taken: Vec<(K, I)> = Vec::with_capacity(room);
    for (key, id) in pairs {
        if id != zero && !seen_keys.contains(&key) && seen_ids.insert(id) {
            seen_keys.insert(key);
            taken.push((key, id));
            *next = (*next).max(after(id));
        }
    }
    drop(seen_keys);
    drop(seen_ids);
    let mut by_id: Vec<I> = taken.iter().map(|(_, id)| *id).collect();
    by_id.sort_unstable();
    taken.sort_unstable_by_key(|a| a.0);
    *ids = by_id.into_iter().collect();
    *keys = taken.into_iter().collect();
}

/// The first id at or after the cursor (wrapping, skipping 0) not in `used`; moves the cursor
/// past it.
fn next_free<T>(cursor: &mut T, max: T, used: &BTreeSet<T>) -> Option<T>
where
    T: Copy + Ord + From<u8> + std::ops::Add<Output = T> + TryInto<u64>,
{
    let one = T::from(1);
    let total = max.try_into().ok()?;
    if u64::try_from(used.len()).ok()? >= total {
        return None;
    }
    let mut id = if *cursor < one { one } else { *cursor };
    // Terminates: fewer than `max` ids are used, so a free one exists within one wrap.
    loop {
        if !used.contains(&id) {
            *cursor = if id == max { one } else { id + one };
            return Some(id);
        }
        id = if id == max { one } else { id + one };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(last: u8) -> BackendKey {
        (Ipv4Addr::new(10, 0, 0, last), 8080, L4Proto::Tcp)
    }

    #[test]
    fn ids_are_kept_and_freed_ids_not_reused_at_once() {
        let mut a = IdAllocator::new();
        let set = |v: &[u8]| v.iter().map(|&l| be(l)).collect::<BTreeSet<_>>();
        a.assign(&set(&[1, 2, 3]), &BTreeSet::new()).expect("fits");
        assert_eq!(
            [1, 2, 3].map(|l| a.backend_id(&be(l))),
            [Some(1), Some(2), Some(3)]
        );
        a.assign(&set(&[1, 3, 4]), &BTreeSet::new()).expect("fits");
        assert_eq!(a.backend_id(&be(1)), Some(1));
        assert_eq!(a.backend_id(&be(2)), None, "freed");
        assert_eq!(a.backend_id(&be(3)), Some(3));
        assert_eq!(a.backend_id(&be(4)), Some(4), "not 2: just freed");
        let again = IdAllocator::restore(&a.snapshot()).expect("valid");
        assert_eq!(again, a);
    }

    proptest::proptest! {
        /// Seeding an empty allocator (the tables built at once) takes what seeding pair by
        /// pair takes: keys and ids given twice keep their first owner, 0 is skipped, the
        /// cursor moves past the highest id; the same after something was seeded.
        #[test]
        fn seed_takes_first_owners(
            backends in proptest::collection::vec((0u8..40, 0u32..40), 0..120),
            frontends in proptest::collection::vec((0u8..40, 0u16..40), 0..120),
        ) {
            let backends: Vec<(BackendKey, u32)> =
                backends.into_iter().map(|(k, id)| (be(k), id)).collect();
            let frontends: Vec<(FrontendKey, u16)> =
                frontends.into_iter().map(|(k, id)| (be(k), id)).collect();
            // The model: one pair at a time, as the allocator did before.
            let mut model = IdAllocator::new();
            for &(key, id) in &backends {
                if id != 0 && !model.backends.contains_key(&key) && model.backend_ids.insert(id) {
                    model.backends.insert(key, id);
                    model.next_backend = model.next_backend.max(id.wrapping_add(1));
                }
            }
            for &(key, id) in &frontends {
                if id != 0 && !model.rev_nat.contains_key(&key) && model.rev_nat_ids.insert(id) {
                    model.rev_nat.insert(key, id);
                    model.next_rev_nat = model.next_rev_nat.max(id.wrapping_add(1));
                }
            }
            let mut bulk = IdAllocator::new();
            bulk.seed(backends.iter().copied(), frontends.iter().copied());
            proptest::prop_assert_eq!(&bulk, &model);
            // In two halves: the second half goes pair by pair into tables that hold some.
            let mut halves = IdAllocator::new();
            let (b1, b2) = backends.split_at(backends.len() / 2);
            let (f1, f2) = frontends.split_at(frontends.len() / 2);
            halves.seed(b1.iter().copied(), f1.iter().copied());
            halves.seed(b2.iter().copied(), f2.iter().copied());
            proptest::prop_assert_eq!(&halves, &model);
        }
    }

    #[test]
    fn cursor_wraps_and_skips_zero_and_used() {
        let mut used = BTreeSet::new();
        let mut cursor: u16 = u16::MAX;
        assert_eq!(next_free(&mut cursor, u16::MAX, &used), Some(u16::MAX));
        assert_eq!(cursor, 1);
        used.insert(1);
        assert_eq!(next_free(&mut cursor, u16::MAX, &used), Some(2));
        let mut cursor = 0u16;
        assert_eq!(next_free(&mut cursor, 3, &BTreeSet::from([1, 2, 3])), None);
        assert_eq!(next_free(&mut cursor, 3, &BTreeSet::from([1, 3])), Some(2));
    }

    #[test]
    fn rev_nat_exhaustion_is_an_error_that_changes_nothing() {
        let mut a = IdAllocator::new();
        let frontends: BTreeSet<FrontendKey> = (0..=u32::from(MAX_REV_NAT))
            .map(|i| (Ipv4Addr::from(0x0a60_0000 + i), 80, L4Proto::Tcp))
            .collect();
        let before = a.clone();
        let err = a
            .assign(&BTreeSet::new(), &frontends)
            .expect_err("65536 frontends do not fit");
        assert!(err.to_string().contains("65536 frontends"), "{err}");
        assert_eq!(a, before);
        let fits: BTreeSet<_> = frontends.iter().take(65_535).copied().collect();
        a.assign(&BTreeSet::new(), &fits).expect("65535 fit");
        assert_eq!(a.rev_nat_in_use(), 65_535);
    }

    #[test]
    fn bad_snapshots_are_refused() {
        let mut s = AllocatorSnapshot::default();
        s.backends.push(BackendIdEntry {
            addr: Ipv4Addr::new(10, 0, 0, 1),
            port: 1,
            proto: L4Proto::Tcp,
            id: 0,
        });
        assert!(IdAllocator::restore(&s).is_err());
        s.backends[0].id = 7;
        let mut twice = s.backends[0].clone();
        twice.port = 2;
        s.backends.push(twice);
        assert!(IdAllocator::restore(&s).is_err());
    }
}
