//! [`Kvstore`]: the API the agent calls.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ciliate_model::identity::NumericIdentity;
use ciliate_model::labels::Labels;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::connection::Connection;
use crate::identity::{self, Allocator};
use crate::keys::{canonical_labels, Keys};
use crate::owned::{encode, Held, Owned};
use crate::session::{self, lock};
use crate::{ClusterView, IpEntry, KvError, KvstoreConfig, NodeRecord};

/// What the API and the session share.
pub(crate) struct Shared {
    pub(crate) cfg: KvstoreConfig,
    pub(crate) keys: Keys,
    pub(crate) conn: Connection,
    /// This node's desired keys, rewritten on resync.
    pub(crate) owned: Mutex<Owned>,
    /// Held by every write of this node's keys and by the session's resync, so a resync
    /// never puts back what an API call just deleted.
    pub(crate) writes: tokio::sync::Mutex<()>,
    pub(crate) view: watch::Sender<ClusterView>,
    /// Poked when a write failed while connected: the session rewrites this node's keys.
    pub(crate) resync: Notify,
    granted_ttl_secs: AtomicU64,
}

impl Shared {
    /// The TTL etcd granted the lease (may exceed the configured one).
    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.granted_ttl_secs.load(Ordering::SeqCst))
    }

    pub(crate) fn set_lease_ttl(&self, ttl: Duration) {
        self.granted_ttl_secs.store(ttl.as_secs(), Ordering::SeqCst);
    }

    fn allocator(&self, lease: i64) -> Allocator<'_> {
        Allocator {
            conn: &self.conn,
            keys: &self.keys,
            node: &self.cfg.node_name,
            lease,
        }
    }

    /// Puts one of this node's keys on the lease. A failure leaves the desired state in
    /// memory for the next resync.
    async fn put_owned(&self, key: String, value: Vec<u8>, what: &str) -> Result<(), KvError> {
        let lease = self.conn.ready_lease(what)?;
        let put = self
            .conn
            .call("put", &key, |mut c| {
                let k = key.clone();
                async move {
                    c.put(k, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await;
        self.resync_on_failure(put.map(drop))
    }

    /// Deletes one of this node's keys.
    async fn delete_owned(&self, key: String, what: &str) -> Result<(), KvError> {
        self.conn.ready_lease(what)?;
        let deleted = self
            .conn
            .call("delete", &key, |mut c| {
                let k = key.clone();
                async move { c.delete(k, None).await }
            })
            .await;
        self.resync_on_failure(deleted.map(drop))
    }

    fn resync_on_failure<T>(&self, result: Result<T, KvError>) -> Result<T, KvError> {
        if result.is_err() {
            self.resync.notify_one();
        }
        result
    }
}

/// Stops the session when the last handle goes: without [`Kvstore::close`] that is like the
/// process dying, and this node's keys expire with the lease.
struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A node's connection to the cluster state. Clones share one session and one lease.
///
/// Writes of this node's own keys (node record, identity references, IPs) are kept in memory
/// first, so a write that fails because etcd is away is done again, with everything else this
/// node owns, as soon as the session is back.
#[derive(Clone)]
pub struct Kvstore {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for Kvstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kvstore")
            .field("node", &self.shared().cfg.node_name)
            .field("conn", &self.shared().conn)
            .finish_non_exhaustive()
    }
}

impl Kvstore {
    /// Connects to etcd: takes a lease, lists the cluster state (so [`Kvstore::subscribe`]
    /// is current at once) and starts the session that keeps it so. Fails with
    /// [`KvError::Unreachable`] when etcd does not answer within `cfg.connect_timeout`.
    pub async fn connect(cfg: KvstoreConfig) -> Result<Kvstore, KvError> {
        cfg.validate()?;
        let conn = Connection::new(&cfg).await?;
        let shared = Arc::new(Shared {
            keys: Keys::new(&cfg.prefix),
            granted_ttl_secs: AtomicU64::new(cfg.lease_ttl.as_secs()),
            conn,
            owned: Mutex::new(Owned::default()),
            writes: tokio::sync::Mutex::new(()),
            view: watch::Sender::new(ClusterView::default()),
            resync: Notify::new(),
            cfg,
        });
        let unreachable = |reason: String| KvError::Unreachable {
            endpoints: shared.conn.endpoints(),
            timeout: shared.cfg.connect_timeout,
            reason,
        };
        let established =
            match tokio::time::timeout(shared.cfg.connect_timeout, session::establish(&shared))
                .await
            {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Err(_) => return Err(unreachable("no answer".into())),
            };
        tracing::info!(
            endpoints = shared.conn.endpoints(),
            node = shared.cfg.node_name,
            "connected to etcd"
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(session::run(shared.clone(), established, stopped));
        Ok(Kvstore {
            inner: Arc::new(Handle {
                shared,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.shared().cfg.node_name
    }

    /// Publishes this node's record under `nodes/v1/<name>` on the lease. `node.name` must be
    /// this store's node name.
    pub async fn register_node(&self, node: NodeRecord) -> Result<(), KvError> {
        let shared = self.shared();
        shared.conn.check_open()?;
        if node.name != shared.cfg.node_name {
            return Err(KvError::InvalidRecord(format!(
                "node record names {:?} but this kvstore is node {:?}",
                node.name, shared.cfg.node_name
            )));
        }
        let key = shared.keys.node(&node.name);
        let value = encode(&node, "node record")?;
        let _writes = shared.writes.lock().await;
        lock(&shared.owned).node = Some(node);
        shared.put_owned(key, value, "registering this node").await
    }

    /// Removes this node's record.
    pub async fn deregister_node(&self) -> Result<(), KvError> {
        let shared = self.shared();
        shared.conn.check_open()?;
        let _writes = shared.writes.lock().await;
        lock(&shared.owned).node = None;
        let key = shared.keys.node(&shared.cfg.node_name);
        shared.delete_owned(key, "deregistering this node").await
    }

    /// The cluster-wide number of `labels`, allocating one if no node has, and a reference of
    /// this node to it. Every node gets the same number for the same label set. References
    /// count locally: each call needs one [`Kvstore::release_identity`]. A label set this node
    /// already holds is answered from memory, also while etcd is away.
    pub async fn allocate_identity(&self, labels: &Labels) -> Result<NumericIdentity, KvError> {
        let shared = self.shared();
        shared.conn.check_open()?;
        let canonical = canonical_labels(labels)?;
        let _writes = shared.writes.lock().await;
        if let Some(held) = lock(&shared.owned).refs.get_mut(&canonical) {
            held.count += 1;
            return Ok(held.id);
        }
        let lease = shared
            .conn
            .ready_lease(&format!("allocating an identity for {canonical}"))?;
        let id = shared.allocator(lease).allocate(&canonical, None).await?;
        lock(&shared.owned)
            .refs
            .insert(canonical, Held { id, count: 1 });
        Ok(id)
    }

    /// Drops one local use of `labels`; with the last one, this node's reference goes.
    /// The number stays allocated until [`Kvstore::gc_identities`] finds it unreferenced.
    pub async fn release_identity(&self, labels: &Labels) -> Result<(), KvError> {
        let shared = self.shared();
        shared.conn.check_open()?;
        let canonical = canonical_labels(labels)?;
        let _writes = shared.writes.lock().await;
        {
            let mut owned = lock(&shared.owned);
            let Some(held) = owned.refs.get_mut(&canonical) else {
                return Ok(());
            };
            held.count = held.count.saturating_sub(1);
            if held.count > 0 {
                return Ok(());
            }
            owned.refs.remove(&canonical);
        }
        let key = shared.keys.identity_ref(&canonical, &shared.cfg.node_name);
        shared
            .delete_owned(key, &format!("releasing the identity of {canonical}"))
            .await
    }

    /// Frees every identity no node references (its `labels/` and `id/` keys) and returns how
    /// many were freed. Safe to run on any node at any time: an identity allocated or
    /// referenced concurrently is left alone.
    pub async fn gc_identities(&self) -> Result<usize, KvError> {
        let shared = self.shared();
        shared.conn.ready_lease("collecting identities")?;
        // Ours even if a reference write is still pending.
        let keep: BTreeSet<String> = lock(&shared.owned).refs.keys().cloned().collect();
        identity::collect(&shared.conn, &shared.keys, &keep).await
    }

    /// Publishes an endpoint address under `ip/v1/default/<ip>` on the lease.
    pub async fn upsert_ip(&self, entry: IpEntry) -> Result<(), KvError> {
        let shared = self.shared();
        shared.conn.check_open()?;
        let key = shared.keys.ip(entry.ip);
        let value = encode(&entry, "IP entry")?;
        let what = format!("publishing {}", entry.ip);
        let _writes = shared.writes.lock().await;
        lock(&shared.owned).ips.insert(entry.ip, entry);
        shared.put_owned(key, value, &what).await
    }

    /// Withdraws an endpoint address: one this node published, or a leftover of an earlier
    /// run of this node (its entry names this node). Addresses of other nodes are left alone.
    pub async fn delete_ip(&self, ip: Ipv4Addr) -> Result<(), KvError> {
        let shared = self.shared();
        shared.conn.check_open()?;
        let key = shared.keys.ip(ip);
        let what = format!("withdrawing {ip}");
        let _writes = shared.writes.lock().await;
        if lock(&shared.owned).ips.remove(&ip).is_some() {
            return shared.delete_owned(key, &what).await;
        }
        shared.conn.ready_lease(&what)?;
        let got = shared
            .conn
            .call("get", &key, |mut c| {
                let k = key.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        let Some(kv) = got.kvs().first() else {
            return Ok(());
        };
        let ours = serde_json::from_slice::<IpEntry>(kv.value())
            .is_ok_and(|e| e.node == shared.cfg.node_name);
        if !ours {
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(key.clone(), None)]);
        shared
            .conn
            .call("txn on", &key, |mut c| async move { c.txn(txn).await })
            .await
            .map(drop)
    }

    /// The whole cluster, kept current by list+watch. While etcd is away the view keeps its
    /// content with `connected == false`; after a reconnect it is relisted.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.shared().view.subscribe()
    }

    /// Stops the session and revokes the lease, so this node's keys go at once. Every clone
    /// of this store is closed with it.
    pub async fn close(self) {
        let shared = self.shared();
        if shared.conn.close() {
            return;
        }
        let _ = self.inner.stop.send(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let lease = shared.conn.lease();
        if lease != 0 {
            let revoked = shared
                .conn
                .call("revoke lease", &format!("{lease:x}"), |mut c| async move {
                    c.lease_revoke(lease).await
                })
                .await;
            if let Err(e) = revoked {
                tracing::warn!("closing the kvstore: {e}; this node's keys expire with the lease");
            }
        }
        shared.conn.set_lease(0);
        session::mark_disconnected(shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    /// Compiles only if every API future can be spawned on a multi-threaded runtime.
    #[allow(dead_code)]
    fn api_futures_are_send(kv: Kvstore, labels: Labels, entry: IpEntry, node: NodeRecord) {
        is_send(&kv.register_node(node));
        is_send(&kv.deregister_node());
        is_send(&kv.allocate_identity(&labels));
        is_send(&kv.release_identity(&labels));
        is_send(&kv.gc_identities());
        is_send(&kv.delete_ip(entry.ip));
        is_send(&kv.upsert_ip(entry));
        is_send(&kv.clone().close());
    }

    #[test]
    fn store_is_shareable() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Kvstore>();
    }
}
