//! Security identities of this node: one number per distinct label set. Pure; the caller
//! persists.
//!
//! The reserved identities (1..=8) are fixed. Label sets of endpoints get numbers from
//! [`MIN_CLUSTER_IDENTITY`] up, reference-counted by the endpoints using them, and freed with the
//! last reference. New numbers are taken round-robin from a persisted cursor rather than the
//! lowest free one: conntrack entries, policy verdicts and flow logs carry numbers, and a number
//! reused at once would make a new workload inherit what was said about an old one.

use std::collections::{btree_map, BTreeMap};

use ciliate_model::identity::{MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY};
use ciliate_model::{Identity, Labels, NumericIdentity, ReservedIdentity};
use serde::{Deserialize, Serialize};

/// Why an identity could not be allocated or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Every cluster-local number is in use.
    #[error(
        "all {} cluster-local identities are in use; remove workloads with unique label sets",
        MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1
    )]
    Exhausted,
    /// A persisted identity's number is outside the cluster-local range.
    #[error("persisted identity {id} ({labels}) is outside the cluster-local range {MIN_CLUSTER_IDENTITY}..={MAX_CLUSTER_IDENTITY}")]
    OutOfRange {
        /// The number.
        id: NumericIdentity,
        /// Its labels.
        labels: Labels,
    },
    /// Two persisted identities share a number or a label set.
    #[error("persisted identity {id} ({labels}) duplicates the number or label set of another")]
    Duplicate {
        /// The number.
        id: NumericIdentity,
        /// Its labels.
        labels: Labels,
    },
}

/// One persisted identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedIdentity {
    /// The number.
    pub id: NumericIdentity,
    /// The label set.
    pub labels: Labels,
    /// Endpoints of this node using it.
    pub references: u32,
}

/// What is persisted of the allocator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySnapshot {
    /// Identities in use.
    pub identities: Vec<PersistedIdentity>,
    /// The next number to try; `None` on a fresh node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<NumericIdentity>,
}

#[derive(Clone, Debug)]
struct Entry {
    labels: Labels,
    references: u32,
}

/// The identity allocator of one node.
#[derive(Clone, Debug)]
pub struct IdentityAllocator {
    by_id: BTreeMap<NumericIdentity, Entry>,
    by_labels: BTreeMap<Labels, NumericIdentity>,
    cursor: NumericIdentity,
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityAllocator {
    /// An allocator with no cluster-local identity in use.
    pub fn new() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_labels: BTreeMap::new(),
            cursor: MIN_CLUSTER_IDENTITY,
        }
    }

    /// Rebuilds the allocator from what was persisted.
    pub fn restore(snap: &IdentitySnapshot) -> Result<Self, IdentityError> {
        let mut a = Self::new();
        for p in &snap.identities {
            if !(MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).contains(&p.id) {
                return Err(IdentityError::OutOfRange {
                    id: p.id,
                    labels: p.labels.clone(),
                });
            }
            if a.by_id.contains_key(&p.id) || a.by_labels.contains_key(&p.labels) {
                return Err(IdentityError::Duplicate {
                    id: p.id,
                    labels: p.labels.clone(),
                });
            }
            a.by_id.insert(
                p.id,
                Entry {
                    labels: p.labels.clone(),
                    references: p.references,
                },
            );
            a.by_labels.insert(p.labels.clone(), p.id);
        }
        if let Some(c) = snap
            .cursor
            .filter(|c| (MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).contains(c))
        {
            a.cursor = c;
        }
        Ok(a)
    }

    /// What to persist.
    pub fn snapshot(&self) -> IdentitySnapshot {
        IdentitySnapshot {
            identities: self
                .by_id
                .iter()
                .map(|(id, e)| PersistedIdentity {
                    id: *id,
                    labels: e.labels.clone(),
                    references: e.references,
                })
                .collect(),
            cursor: Some(self.cursor),
        }
    }

    /// Takes a reference on the identity of `labels`, allocating a number when the label set
    /// is new.
    pub fn acquire(&mut self, labels: &Labels) -> Result<NumericIdentity, IdentityError> {
        if let Some(id) = self.by_labels.get(labels) {
            if let Some(e) = self.by_id.get_mut(id) {
                e.references = e.references.saturating_add(1);
                return Ok(*id);
            }
        }
        let span = MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1;
        let start = self
            .cursor
            .clamp(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY);
        for i in 0..span {
            let id = MIN_CLUSTER_IDENTITY + (start - MIN_CLUSTER_IDENTITY + i) % span;
            if let btree_map::Entry::Vacant(slot) = self.by_id.entry(id) {
                slot.insert(Entry {
                    labels: labels.clone(),
                    references: 1,
                });
                self.by_labels.insert(labels.clone(), id);
                self.cursor = if id == MAX_CLUSTER_IDENTITY {
                    MIN_CLUSTER_IDENTITY
                } else {
                    id + 1
                };
                return Ok(id);
            }
        }
        Err(IdentityError::Exhausted)
    }

    /// Takes a reference on `labels` under the number the cluster gave it (multi-node: the
    /// numbers come from etcd, so that every node agrees). Fails when this node already knows
    /// the label set under another number, or the number under other labels: the caller must
    /// not let two meanings of one number into its policy.
    pub fn acquire_as(
        &mut self,
        labels: &Labels,
        id: NumericIdentity,
    ) -> Result<NumericIdentity, IdentityError> {
        if !(MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).contains(&id) {
            return Err(IdentityError::OutOfRange {
                id,
                labels: labels.clone(),
            });
        }
        match (self.by_labels.get(labels), self.by_id.get_mut(&id)) {
            (Some(known), Some(e)) if *known == id => {
                e.references = e.references.saturating_add(1);
                Ok(id)
            }
            (None, None) => {
                self.by_id.insert(
                    id,
                    Entry {
                        labels: labels.clone(),
                        references: 1,
                    },
                );
                self.by_labels.insert(labels.clone(), id);
                Ok(id)
            }
            _ => Err(IdentityError::Duplicate {
                id,
                labels: labels.clone(),
            }),
        }
    }

    /// Drops one reference on `id`; frees the number when it was the last. Returns whether the
    /// identity was freed. Unknown and reserved numbers are ignored, so a retried release is
    /// harmless.
    pub fn release(&mut self, id: NumericIdentity) -> bool {
        let Some(e) = self.by_id.get_mut(&id) else {
            return false;
        };
        e.references = e.references.saturating_sub(1);
        if e.references > 0 {
            return false;
        }
        let labels = e.labels.clone();
        self.by_id.remove(&id);
        self.by_labels.remove(&labels);
        true
    }

    /// Sets the reference counts to what the endpoints say (`id → count`) and frees
    /// identities no endpoint uses. Returns the identities whose count changed, as
    /// `(id, persisted, actual)`, so the caller can report the discrepancy.
    pub fn recount(
        &mut self,
        actual: &BTreeMap<NumericIdentity, u32>,
    ) -> Vec<(NumericIdentity, u32, u32)> {
        let mut changed = Vec::new();
        for (id, e) in &mut self.by_id {
            let n = actual.get(id).copied().unwrap_or(0);
            if e.references != n {
                changed.push((*id, e.references, n));
                e.references = n;
            }
        }
        let unused: Vec<NumericIdentity> = self
            .by_id
            .iter()
            .filter(|(_, e)| e.references == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in unused {
            if let Some(e) = self.by_id.remove(&id) {
                self.by_labels.remove(&e.labels);
            }
        }
        changed
    }

    /// The labels of a cluster-local identity in use.
    pub fn labels_of(&self, id: NumericIdentity) -> Option<&Labels> {
        self.by_id.get(&id).map(|e| &e.labels)
    }

    /// Number of cluster-local identities in use.
    pub fn in_use(&self) -> usize {
        self.by_id.len()
    }

    /// One identity, reserved or in use.
    pub fn get(&self, id: NumericIdentity) -> Option<Identity> {
        if let Some(r) = ReservedIdentity::from_id(id) {
            return Some(Identity::reserved(r));
        }
        self.by_id.get(&id).map(|e| Identity {
            id,
            labels: e.labels.clone(),
            reserved: false,
            references: e.references,
        })
    }

    /// Every identity: the reserved ones first, then those in use, by number.
    pub fn list(&self) -> Vec<Identity> {
        ReservedIdentity::ALL
            .into_iter()
            .map(Identity::reserved)
            .chain(self.by_id.iter().map(|(id, e)| Identity {
                id: *id,
                labels: e.labels.clone(),
                reserved: false,
                references: e.references,
            }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn labels(s: &str) -> Labels {
        Labels::parse_list(s, "k8s").expect("test labels")
    }

    #[test]
    fn numbers_given_by_the_cluster_are_taken_and_contradictions_refused() {
        let mut a = IdentityAllocator::new();
        let web = labels("app=web");
        assert_eq!(a.acquire_as(&web, 4711).expect("new"), 4711);
        assert_eq!(a.acquire_as(&web, 4711).expect("again"), 4711);
        assert_eq!(a.get(4711).expect("in use").references, 2);
        assert_eq!(a.get(4711).expect("in use").labels, web);
        // The same labels under another number, or the number under other labels.
        assert!(a.acquire_as(&web, 4712).is_err());
        assert!(a.acquire_as(&labels("app=db"), 4711).is_err());
        assert!(
            a.acquire_as(&labels("app=db"), 7).is_err(),
            "reserved range"
        );
        assert_eq!(a.get(4711).expect("unchanged").references, 2);
        assert!(!a.release(4711));
        assert!(a.release(4711));
        assert!(a.get(4711).is_none());
    }

    #[test]
    fn same_labels_same_number_and_counted() {
        let mut a = IdentityAllocator::new();
        let web = a.acquire(&labels("app=web")).expect("free");
        let db = a.acquire(&labels("app=db")).expect("free");
        assert_eq!(web, MIN_CLUSTER_IDENTITY);
        assert_eq!(db, MIN_CLUSTER_IDENTITY + 1);
        assert_eq!(a.acquire(&labels("app=web")).expect("existing"), web);
        assert_eq!(a.get(web).expect("in use").references, 2);
        assert!(!a.release(web));
        assert!(a.release(web), "last reference frees it");
        assert!(a.get(web).is_none());
        assert!(!a.release(web), "release is idempotent");
        assert_eq!(a.in_use(), 1);
    }

    #[test]
    fn freed_numbers_are_not_reused_at_once() {
        let mut a = IdentityAllocator::new();
        let first = a.acquire(&labels("app=a")).expect("free");
        a.release(first);
        let second = a.acquire(&labels("app=b")).expect("free");
        assert_ne!(first, second);
        // The same label set coming back after being freed gets a new number too.
        assert_ne!(a.acquire(&labels("app=a")).expect("free"), first);
    }

    #[test]
    fn reserved_identities_are_listed_and_never_released() {
        let mut a = IdentityAllocator::new();
        let list = a.list();
        assert_eq!(list.len(), 8);
        assert!(list.iter().all(|i| i.reserved && (1..=8).contains(&i.id)));
        assert_eq!(
            a.get(2).expect("world").labels.to_string(),
            "reserved:world"
        );
        assert!(!a.release(1));
        assert!(a.get(1).is_some());
        assert!(a.get(9).is_none());
    }

    #[test]
    fn snapshot_restores_numbers_counts_and_cursor() {
        let mut a = IdentityAllocator::new();
        let web = a.acquire(&labels("app=web")).expect("free");
        a.acquire(&labels("app=web")).expect("existing");
        let tmp = a.acquire(&labels("app=tmp")).expect("free");
        a.release(tmp);
        let snap = a.snapshot();
        let json = serde_json::to_string(&snap).expect("serialises");
        let back: IdentitySnapshot = serde_json::from_str(&json).expect("parses");
        let mut b = IdentityAllocator::restore(&back).expect("restores");
        assert_eq!(b.get(web).expect("kept").references, 2);
        assert_eq!(b.acquire(&labels("app=web")).expect("existing"), web);
        assert_eq!(
            b.acquire(&labels("app=new")).expect("free"),
            tmp + 1,
            "cursor survives"
        );
    }

    #[test]
    fn restore_rejects_bad_snapshots() {
        let p = |id, l: &str| PersistedIdentity {
            id,
            labels: labels(l),
            references: 1,
        };
        let out = IdentitySnapshot {
            identities: vec![p(5, "app=a")],
            cursor: None,
        };
        assert!(matches!(
            IdentityAllocator::restore(&out),
            Err(IdentityError::OutOfRange { .. })
        ));
        let dup_labels = IdentitySnapshot {
            identities: vec![p(300, "app=a"), p(301, "app=a")],
            cursor: None,
        };
        assert!(matches!(
            IdentityAllocator::restore(&dup_labels),
            Err(IdentityError::Duplicate { .. })
        ));
        let dup_id = IdentitySnapshot {
            identities: vec![p(300, "app=a"), p(300, "app=b")],
            cursor: None,
        };
        assert!(matches!(
            IdentityAllocator::restore(&dup_id),
            Err(IdentityError::Duplicate { .. })
        ));
    }

    #[test]
    fn recount_follows_the_endpoints() {
        let mut a = IdentityAllocator::new();
        let web = a.acquire(&labels("app=web")).expect("free");
        let db = a.acquire(&labels("app=db")).expect("free");
        let changed = a.recount(&[(web, 3)].into());
        assert_eq!(changed, vec![(web, 1, 3), (db, 1, 0)]);
        assert_eq!(a.get(web).expect("kept").references, 3);
        assert!(a.get(db).is_none(), "unused identity freed");
    }

    #[test]
    fn exhaustion_is_reported() {
        let mut a = IdentityAllocator::new();
        for i in MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY {
            a.acquire(&labels(&format!("n={i}"))).expect("free");
        }
        assert_eq!(a.acquire(&labels("n=x")), Err(IdentityError::Exhausted));
        assert!(a.release(300));
        assert_eq!(a.acquire(&labels("n=x")), Ok(300));
    }

    proptest! {
        /// Against a simple model: equal label sets share a number while referenced, distinct
        /// live label sets never share one, and counts match acquisitions minus releases.
        #[test]
        fn behaves_like_a_refcounted_map(ops in proptest::collection::vec((0u8..6, any::<bool>(), any::<bool>()), 0..200)) {
            let mut a = IdentityAllocator::new();
            let mut model: HashMap<u8, (NumericIdentity, u32)> = HashMap::new();
            for (set, acquire, restart) in ops {
                let l = labels(&format!("app=s{set}"));
                if acquire {
                    let id = a.acquire(&l).expect("plenty free");
                    let e = model.entry(set).or_insert((id, 0));
                    prop_assert_eq!(e.0, id);
                    e.1 += 1;
                } else if let Some((id, n)) = model.get(&set).copied() {
                    let freed = a.release(id);
                    prop_assert_eq!(freed, n == 1);
                    if n == 1 { model.remove(&set); } else { model.insert(set, (id, n - 1)); }
                }
                if restart {
                    a = IdentityAllocator::restore(&a.snapshot()).expect("own snapshot restores");
                }
                prop_assert_eq!(a.in_use(), model.len());
                let ids: std::collections::HashSet<_> = model.values().map(|(id, _)| *id).collect();
                prop_assert_eq!(ids.len(), model.len(), "two live label sets share a number");
                for (id, n) in model.values() {
                    prop_assert_eq!(a.get(*id).map(|i| i.references), Some(*n));
                }
            }
        }
    }
}
