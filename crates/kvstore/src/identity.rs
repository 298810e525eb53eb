//! Cluster-wide identity numbers: race-free allocation through etcd transactions, and garbage
//! collection that backs off from a concurrent allocation.
//!
//! Every write of a reference also rewrites the label set's master key (`labels/<L>`), so its
//! mod revision changes. Collection deletes a master key only if its mod revision is still the
//! one read in the same snapshot that showed no references: an allocation in between makes the
//! collection's transaction fail, and a collection first makes the allocation's fail.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::time::Duration;

use ciliate_model::identity::{NumericIdentity, MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnResponse};

use crate::connection::Connection;
use crate::keys::{parse_number, Keys, StateKey};
use crate::KvError;

/// Transactions lost in a row before allocation gives up.
const MAX_ATTEMPTS: u32 = 20;

/// Where to allocate and for whom.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allocator<'a> {
    /// The etcd connection.
    pub(crate) conn: &'a Connection,
    /// The key layout.
    pub(crate) keys: &'a Keys,
    /// This node's name (the last segment of its references).
    pub(crate) node: &'a str,
    /// The lease references are attached to.
    pub(crate) lease: i64,
}

impl Allocator<'_> {
    /// The number of `labels` (canonical form), allocating one if the label set has none, and
    /// this node's reference to it. `preferred` is tried first for a new allocation: a
    /// reconnecting node brings back the number it already handed to its datapath.
    pub(crate) async fn allocate(
        &self,
        labels: &str,
        preferred: Option<NumericIdentity>,
    ) -> Result<NumericIdentity, KvError> {
        let master = self.keys.identity_labels(labels);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tracing::debug!(labels, attempt, "identity allocation lost a race: retrying");
                // Spread the losers out so that they do not collide again.
                let jitter = random_below(5 + 5 * u64::from(attempt));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            let got = self
                .conn
                .call("get", &master, |mut c| {
                    let master = master.clone();
                    async move { c.get(master, None).await }
                })
                .await?;
            let Some(kv) = got.kvs().first() else {
                if let Some(id) = self.create(labels, preferred).await? {
                    return Ok(id);
                }
                continue;
            };
            let mod_revision = kv.mod_revision();
            let Some(id) = std::str::from_utf8(kv.value()).ok().and_then(parse_number) else {
                tracing::warn!(
                    key = master,
                    value = %String::from_utf8_lossy(kv.value()),
                    "identity master key does not hold a number: deleting it"
                );
                self.delete_if_unchanged(&master, mod_revision).await?;
                continue;
            };
            if let Some(p) = preferred.filter(|p| *p != id) {
                tracing::warn!(
                    labels,
                    "identity {p} of this node's label set is now {id} in etcd: adopting {id}"
                );
            }
            if self.reference(labels, id).await? {
                return Ok(id);
            }
            self.repair(labels, id, mod_revision).await?;
        }
        Err(KvError::Contention {
            labels: labels.into(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Adds this node's reference to an existing identity, touching its master key.
    async fn reference(&self, labels: &str, id: NumericIdentity) -> Result<bool, KvError> {
        let master = self.keys.identity_labels(labels);
        let id_key = self.keys.identity_id(id);
        let txn = Txn::new()
            .when([
                Compare::value(master.clone(), CompareOp::Equal, id.to_string()),
                Compare::value(id_key, CompareOp::Equal, labels),
            ])
            .and_then([
                TxnOp::put(master.clone(), id.to_string(), None),
                self.put_ref(labels, id),
            ]);
        Ok(self.txn(&master, txn).await?.succeeded())
    }

    /// After a failed reference: puts back a missing `id/<n>` or drops a master key whose
    /// number belongs to another label set. Anything else was a race: the caller re-reads.
    async fn repair(
        &self,
        labels: &str,
        id: NumericIdentity,
        mod_revision: i64,
    ) -> Result<(), KvError> {
        let master = self.keys.identity_labels(labels);
        let id_key = self.keys.identity_id(id);
        let got = self
            .conn
            .call("get", &id_key, |mut c| {
                let k = id_key.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        match got.kvs().first() {
            None => {
                tracing::warn!(
                    labels,
                    "identity {id} has a master key but no {id_key}: writing it"
                );
                let txn = Txn::new()
                    .when([
                        Compare::value(master.clone(), CompareOp::Equal, id.to_string()),
                        Compare::version(id_key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(id_key, labels, None),
                        TxnOp::put(master.clone(), id.to_string(), None),
                        self.put_ref(labels, id),
                    ]);
                self.txn(&master, txn).await?;
            }
            Some(kv) if kv.value() != labels.as_bytes() => {
                tracing::warn!(
                    key = master,
                    owner = %String::from_utf8_lossy(kv.value()),
                    "identity {id} belongs to another label set: dropping this stale master key"
                );
                self.delete_if_unchanged(&master, mod_revision).await?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Creates the label set's identity with a free number; `None` when another node won.
    async fn create(
        &self,
        labels: &str,
        preferred: Option<NumericIdentity>,
    ) -> Result<Option<NumericIdentity>, KvError> {
        let prefix = self.keys.ids_prefix();
        let listed = self
            .conn
            .call("list", &prefix, |mut c| {
                let p = prefix.clone();
                async move {
                    c.get(p, Some(GetOptions::new().with_prefix().with_keys_only()))
                        .await
                }
            })
            .await?;
        let used: BTreeSet<NumericIdentity> = listed
            .kvs()
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(prefix.as_bytes()))
            .filter_map(|n| std::str::from_utf8(n).ok().and_then(parse_number))
            .collect();
        let in_range =
            |n: &NumericIdentity| (MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).contains(n);
        let id = match preferred.filter(|p| in_range(p) && !used.contains(p)) {
            Some(p) => p,
            None => {
                let span = u64::from(MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY) + 1;
                let start = MIN_CLUSTER_IDENTITY
                    + NumericIdentity::try_from(random_below(span)).unwrap_or_default();
                choose_free(&used, start).ok_or(KvError::IdentitiesExhausted)?
            }
        };
        let master = self.keys.identity_labels(labels);
        let id_key = self.keys.identity_id(id);
        let txn = Txn::new()
            .when([
                Compare::version(id_key.clone(), CompareOp::Equal, 0),
                Compare::version(master.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(id_key, labels, None),
                TxnOp::put(master.clone(), id.to_string(), None),
                self.put_ref(labels, id),
            ]);
        Ok(self.txn(&master, txn).await?.succeeded().then_some(id))
    }

    fn put_ref(&self, labels: &str, id: NumericIdentity) -> TxnOp {
        TxnOp::put(
            self.keys.identity_ref(labels, self.node),
            id.to_string(),
            Some(PutOptions::new().with_lease(self.lease)),
        )
    }

    async fn delete_if_unchanged(&self, key: &str, mod_revision: i64) -> Result<bool, KvError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(key, txn).await?.succeeded())
    }

    async fn txn(&self, key: &str, txn: Txn) -> Result<TxnResponse, KvError> {
        txn_on(self.conn, key, txn).await
    }
}

async fn txn_on(conn: &Connection, key: &str, txn: Txn) -> Result<TxnResponse, KvError> {
    conn.call("txn on", key, |mut c| async move { c.txn(txn).await })
        .await
}

/// The lowest free number at or above `start`, wrapping around to the lowest free one.
pub(crate) fn choose_free(
    used: &BTreeSet<NumericIdentity>,
    start: NumericIdentity,
) -> Option<NumericIdentity> {
    let start = start.clamp(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY);
    (start..=MAX_CLUSTER_IDENTITY)
        .chain(MIN_CLUSTER_IDENTITY..start)
        .find(|n| !used.contains(n))
}

/// A number below `bound` (> 0), different in every call and process.
fn random_below(bound: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let calls = CALLS.fetch_add(1, Ordering::Relaxed);
    std::collections::hash_map::RandomState::new().hash_one(calls) % bound.max(1)
}

/// One snapshot of `identities/v1/`, as collection sees it.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Master keys: canonical labels → (number if it parses, mod revision).
    masters: BTreeMap<String, (Option<NumericIdentity>, i64)>,
    /// Label sets with at least one reference.
    referenced: BTreeSet<String>,
    /// Number keys: number → (canonical labels, mod revision).
    ids: BTreeMap<NumericIdentity, (String, i64)>,
}

/// What collection deletes, each guarded by the mod revisions of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Collect {
    /// A label set nobody references: its master key, and its number key if that is its own.
    Unreferenced {
        /// Canonical labels.
        labels: String,
        /// The master key's mod revision.
        mod_revision: i64,
        /// Its number, when `id/<n>` points back at the label set.
        id: Option<NumericIdentity>,
    },
    /// A number key whose label set's master key is missing or names another number.
    Orphan {
        /// The number.
        id: NumericIdentity,
        /// The number key's mod revision.
        mod_revision: i64,
        /// Its label set.
        labels: String,
        /// That label set's master key's mod revision (0 = absent).
        master_mod_revision: i64,
    },
}

impl Snapshot {
    /// Reads a listing of `identities/v1/` (key, value, mod revision).
    pub(crate) fn new<'a>(
        keys: &Keys,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64)>,
    ) -> Self {
        let mut s = Snapshot::default();
        for (key, value, mod_revision) in kvs {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            match keys.parse(key) {
                Ok(StateKey::IdentityLabels(labels)) => {
                    let id = std::str::from_utf8(value).ok().and_then(parse_number);
                    s.masters.insert(labels, (id, mod_revision));
                }
                Ok(StateKey::IdentityRef { labels, .. }) => {
                    s.referenced.insert(labels);
                }
                Ok(StateKey::IdentityId(id)) => {
                    let labels = String::from_utf8_lossy(value).into_owned();
                    s.ids.insert(id, (labels, mod_revision));
                }
                _ => {}
            }
        }
        s
    }

    /// What to delete; label sets in `keep` (held by this node) are never collected.
    pub(crate) fn plan(&self, keep: &BTreeSet<String>) -> Vec<Collect> {
        let mut out = Vec::new();
        for (labels, (id, mod_revision)) in &self.masters {
            if self.referenced.contains(labels) || keep.contains(labels) {
                continue;
            }
            let own_id = id.filter(|n| self.ids.get(n).is_some_and(|(l, _)| l == labels));
            out.push(Collect::Unreferenced {
                labels: labels.clone(),
                mod_revision: *mod_revision,
                id: own_id,
            });
        }
        for (id, (labels, mod_revision)) in &self.ids {
            let master = self.masters.get(labels);
            if master.is_some_and(|(n, _)| *n == Some(*id)) || keep.contains(labels) {
                continue;
            }
            out.push(Collect::Orphan {
                id: *id,
                mod_revision: *mod_revision,
                labels: labels.clone(),
                master_mod_revision: master.map_or(0, |(_, r)| *r),
            });
        }
        out
    }
}

/// Frees the identities no node references; returns how many keys sets were freed.
pub(crate) async fn collect(
    conn: &Connection,
    keys: &Keys,
    keep: &BTreeSet<String>,
) -> Result<usize, KvError> {
    let prefix = keys.identities_prefix();
    let listed = conn
        .call("list", &prefix, |mut c| {
            let p = prefix.clone();
            async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let snapshot = Snapshot::new(
        keys,
        listed
            .kvs()
            .iter()
            .map(|kv| (kv.key(), kv.value(), kv.mod_revision())),
    );
    let mut freed = 0;
    for step in snapshot.plan(keep) {
        let (guard_key, txn) = match &step {
            Collect::Unreferenced {
                labels,
                mod_revision,
                id,
            } => {
                let master = keys.identity_labels(labels);
                let mut ops = vec![TxnOp::delete(master.clone(), None)];
                if let Some(id) = id {
                    ops.push(TxnOp::delete(keys.identity_id(*id), None));
                }
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        master.clone(),
                        CompareOp::Equal,
                        *mod_revision,
                    )])
                    .and_then(ops);
                (master, txn)
            }
            Collect::Orphan {
                id,
                mod_revision,
                labels,
                master_mod_revision,
            } => {
                let id_key = keys.identity_id(*id);
                let txn = Txn::new()
                    .when([
                        Compare::mod_revision(id_key.clone(), CompareOp::Equal, *mod_revision),
                        Compare::mod_revision(
                            keys.identity_labels(labels),
                            CompareOp::Equal,
                            *master_mod_revision,
                        ),
                    ])
                    .and_then([TxnOp::delete(id_key.clone(), None)]);
                (id_key, txn)
            }
        };
        if txn_on(conn, &guard_key, txn).await?.succeeded() {
            tracing::debug!(?step, "identity collected");
            freed += 1;
        } else {
            tracing::debug!(?step, "identity changed since the snapshot: not collected");
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_the_lowest_free_number_from_the_start_and_wraps() {
        let used: BTreeSet<NumericIdentity> = [256, 257, 300, 65535].into();
        assert_eq!(choose_free(&used, 256), Some(258));
        assert_eq!(choose_free(&used, 300), Some(301));
        assert_eq!(choose_free(&used, 65535), Some(258));
        assert_eq!(choose_free(&used, 0), Some(258));
        let all: BTreeSet<NumericIdentity> =
            (MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).collect();
        assert_eq!(choose_free(&all, 1000), None);
    }

    #[test]
    fn random_numbers_stay_below_the_bound() {
        assert!((0..1000).all(|_| random_below(7) < 7));
        assert_eq!(random_below(0), 0);
    }

    #[test]
    fn collection_plan_spares_referenced_and_held_label_sets() {
        let k = Keys::new("ciliate");
        let listing: Vec<(String, &[u8], i64)> = vec![
            // referenced: kept
            (k.identity_labels("k8s:app=a"), b"256", 10),
            (k.identity_id(256), b"k8s:app=a", 10),
            (k.identity_ref("k8s:app=a", "n2"), b"256", 11),
            // unreferenced: collected with its number
            (k.identity_labels("k8s:app=b"), b"257", 12),
            (k.identity_id(257), b"k8s:app=b", 12),
            // unreferenced but held by this node: kept
            (k.identity_labels("k8s:app=c"), b"258", 13),
            (k.identity_id(258), b"k8s:app=c", 13),
            // orphan number key
            (k.identity_id(259), b"k8s:app=gone", 14),
            // master with a garbage value and no refs: collected alone
            (k.identity_labels("k8s:app=d"), b"xx", 15),
        ];
        let snapshot = Snapshot::new(
            &k,
            listing.iter().map(|(key, v, r)| (key.as_bytes(), *v, *r)),
        );
        let keep: BTreeSet<String> = ["k8s:app=c".to_string()].into();
        assert_eq!(
            snapshot.plan(&keep),
            vec![
                Collect::Unreferenced {
                    labels: "k8s:app=b".into(),
                    mod_revision: 12,
                    id: Some(257)
                },
                Collect::Unreferenced {
                    labels: "k8s:app=d".into(),
                    mod_revision: 15,
                    id: None
                },
                Collect::Orphan {
                    id: 259,
                    mod_revision: 14,
                    labels: "k8s:app=gone".into(),
                    master_mod_revision: 0
                },
            ]
        );
    }
}
