//! Membership in a cluster of nodes (`--etcd-endpoints`).
//!
//! What a node shares through etcd (see `ciliate-kvstore` for the keys): its record (name,
//! underlay address, pod CIDR), a reference on the identity of every label set its endpoints
//! use (so a label set has one number on every node), and each endpoint's address with its
//! identity and the node to tunnel to. What it learns back, the [`ClusterView`], becomes
//! policy input here: the other nodes' identities (selectors must see them) and ipcache
//! entries (their pods' addresses with identity and tunnel endpoint, their pod CIDRs, their own
//! addresses as `remote-node`).
//!
//! While etcd is unreachable the node keeps forwarding with what it knew; the kvstore puts
//! everything this node owns back when etcd returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ciliate_kvstore::{ClusterView, IpEntry, Kvstore, KvstoreConfig, NodeRecord};
use ciliate_model::api::ClusterStatus;
use ciliate_model::bpf_policy::IpcacheEntry;
use ciliate_model::{Endpoint, Labels, NumericIdentity, ReservedIdentity};
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::endpoints::{ClusterHooks, EndpointManager};
use crate::policy::{ClusterInputs, PolicyManager, RemoteEndpoint};

/// How long a new endpoint waits for its cluster-wide identity before its CNI ADD fails.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two attempts to reach etcd (the agent never stops trying).
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How often each node collects identities no node references any more (safe to run on every
/// node at once: a collection backs off from a number someone is taking).
const IDENTITY_GC_INTERVAL: Duration = Duration::from_secs(60);

/// The file, in the node's state directory, that keeps the last complete cluster view.
pub const CLUSTER_FILE: &str = "cluster.json";
const CLUSTER_TMP: &str = ".cluster.json.tmp";

/// The cluster view as persisted: what the node last saw, and when.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedView {
    /// When it was saved (seconds since the Unix epoch).
    pub saved_unix: u64,
    /// The view (its `connected` flag is meaningless on disk).
    pub view: ClusterView,
}

/// Reads the persisted cluster view of the node whose state directory is `dir`; `None` when
/// there is none. A file that does not parse is reported and ignored: the view is only a
/// head start, etcd has the truth.
pub fn load_view(dir: &Path) -> Option<SavedView> {
    let path = dir.join(CLUSTER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the saved cluster view; starting without it");
            return None;
        }
    };
    match serde_json::from_slice::<SavedView>(&bytes) {
        Ok(mut v) => {
            v.view.connected = false;
            Some(v)
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "the saved cluster view is corrupt; starting without it");
            None
        }
    }
}

/// Persists a complete cluster view (atomically, like the state file).
pub fn save_view(dir: &Path, view: &ClusterView) -> Result<(), String> {
    let saved = SavedView {
        saved_unix: now_unix(),
        view: view.clone(),
    };
    let bytes = serde_json::to_vec(&saved).map_err(|e| e.to_string())?;
    crate::state::write_atomic(dir, CLUSTER_FILE, CLUSTER_TMP, &bytes).map_err(|e| e.to_string())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This node's membership: its kvstore session (once etcd has answered) and what it
/// registered. It exists, and answers, before etcd does: the view is then the one saved by
/// the last run, and asking for a new identity fails until etcd is reached.
#[derive(Debug)]
pub struct ClusterMember {
    kv: OnceLock<Kvstore>,
    rt: tokio::runtime::Handle,
    node: NodeRecord,
    etcd: Vec<String>,
    tunnel: Option<String>,
    kv_cfg: KvstoreConfig,
    /// The view this node works with: the saved one until etcd's first complete listing, then
    /// etcd's, kept current.
    view: watch::Sender<ClusterView>,
    /// When the saved view in use was saved, until etcd's listing replaces it.
    saved_unix: Mutex<Option<u64>>,
}

impl ClusterMember {
    /// A membership not yet connected, starting from `saved` (the last run's view), if any;
    /// `hubble_listen` is the observer's TCP address, published for `ciliate-relay`.
    /// Call inside a tokio runtime.
    pub fn new(
        node_name: &str,
        pod_cidr: Ipv4Net,
        cfg: &ClusterConfig,
        tunnel: Option<&str>,
        saved: Option<SavedView>,
        hubble_listen: Option<std::net::SocketAddr>,
    ) -> Arc<Self> {
        let kv_cfg = KvstoreConfig {
            endpoints: cfg.etcd_endpoints.clone(),
            node_name: node_name.to_owned(),
            lease_ttl: Duration::from_secs(cfg.lease_ttl_seconds),
            ..KvstoreConfig::default()
        };
        let node = NodeRecord {
            name: node_name.to_owned(),
            underlay_ip: cfg.underlay_ip,
            pod_cidr,
            health: "ok".to_owned(),
            boot_id: boot_id(),
            hubble_address: advertised_hubble_address(hubble_listen, cfg.underlay_ip),
        };
        let (view, saved_unix) = match saved {
            Some(s) => (s.view, Some(s.saved_unix)),
            None => (ClusterView::default(), None),
        };
        Arc::new(Self {
            kv: OnceLock::new(),
            rt: tokio::runtime::Handle::current(),
            node,
            etcd: cfg.etcd_endpoints.clone(),
            tunnel: tunnel.map(str::to_owned),
            kv_cfg,
            view: watch::Sender::new(view),
            saved_unix: Mutex::new(saved_unix),
        })
    }

    /// Reaches etcd, retrying for as long as it takes (or until `shutdown`), registers the
    /// node and from then on forwards etcd's view. Returns whether it connected.
    pub async fn connect(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> bool {
        let mut pause = Duration::from_millis(200);
        let kv = loop {
            let attempt = async {
                let kv = Kvstore::connect(self.kv_cfg.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                kv.register_node(self.node.clone())
                    .await
                    .map_err(|e| format!("cannot register node {}: {e}", self.node.name))?;
                Ok::<_, String>(kv)
            };
            tokio::select! {
                r = attempt => match r {
                    Ok(kv) => break kv,
                    Err(e) => warn!(endpoints = ?self.etcd, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot reach etcd; working with the saved cluster view, retrying"),
                },
                _ = shutdown.wait_for(|s| *s) => return false,
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|s| *s) => return false,
            }
            pause = (pause * 2).min(MAX_RETRY);
        };
        info!(node = %self.node.name, underlay = %self.node.underlay_ip, pod_cidr = %self.node.pod_cidr, "joined the cluster");
        let mut from_etcd = kv.subscribe();
        let _ = self.kv.set(kv);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let v = from_etcd.borrow_and_update().clone();
                // Only a listed view replaces the saved one: never a partial or empty one.
                if v.revision > 0 {
                    *me.saved_unix.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    me.view.send_replace(v);
                }
                if from_etcd.changed().await.is_err() {
                    return;
                }
            }
        });
        true
    }

    /// For `ciliate status`.
    pub fn status(&self) -> ClusterStatus {
        let view = self.view.borrow();
        ClusterStatus {
            etcd: self.etcd.clone(),
            connected: self.kv.get().is_some() && view.connected,
            nodes: view.nodes.keys().cloned().collect(),
            identities: view.identities.len(),
            remote_endpoints: view
                .ips
                .values()
                .filter(|e| e.node != self.node.name)
                .count(),
            tunnel: self.tunnel.clone(),
            saved_view_unix: *self.saved_unix.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The cluster as this node sees it, kept current.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.view.subscribe()
    }

    /// This node's record.
    pub fn node(&self) -> &NodeRecord {
        &self.node
    }

    fn kv(&self) -> Option<Kvstore> {
        self.kv.get().cloned()
    }
}

impl ClusterHooks for ClusterMember {
    fn allocate_identity(&self, labels: &Labels) -> Result<NumericIdentity, String> {
        let kv = self.kv().ok_or_else(|| {
            format!(
                "etcd ({}) has not been reached since the agent started",
                self.etcd.join(",")
            )
        })?;
        let labels = labels.clone();
        // Called from blocking code (the API's spawn_blocking), never from a runtime thread.
        self.rt.block_on(async move {
            match tokio::time::timeout(ALLOCATE_TIMEOUT, kv.allocate_identity(&labels)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "etcd did not answer within {}s",
                    ALLOCATE_TIMEOUT.as_secs()
                )),
            }
        })
    }

    fn release_identity(&self, labels: &Labels) {
        // Before etcd is reached this node holds no reference of this run: nothing to give back.
        let Some(kv) = self.kv() else { return };
        let labels = labels.clone();
        self.rt.spawn(async move {
            if let Err(e) = kv.release_identity(&labels).await {
                warn!(labels = %labels, error = %e, "cannot release this node's reference on an identity; it ages out with the node's lease");
            }
        });
    }

    fn endpoint_up(&self, ep: &Endpoint) {
        // Before etcd is reached, joining publishes every endpoint.
        let Some(kv) = self.kv() else { return };
        let entry = IpEntry {
            ip: ep.ipv4,
            identity: ep.identity,
            node: self.node.name.clone(),
            tunnel_endpoint: self.node.underlay_ip,
            namespace: ep
                .pod
                .as_ref()
                .map(|p| p.namespace.clone())
                .unwrap_or_default(),
            pod_name: ep.pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
        };
        self.rt.spawn(async move {
            let ip = entry.ip;
            if let Err(e) = kv.upsert_ip(entry).await {
                warn!(%ip, error = %e, "cannot publish an endpoint's address; published when etcd is back");
            }
        });
    }

    fn endpoint_down(&self, ep: &Endpoint) {
        // Before etcd is reached, the address ages out with the last run's lease.
        let Some(kv) = self.kv() else { return };
        let ip = ep.ipv4;
        self.rt.spawn(async move {
            if let Err(e) = kv.delete_ip(ip).await {
                warn!(%ip, error = %e, "cannot withdraw an endpoint's address; it ages out with the node's lease");
            }
        });
    }
}

/// What policy takes from the cluster view, for a node called `me`.
pub fn cluster_inputs(view: &ClusterView, me: &str) -> ClusterInputs {
    let mut ipcache = Vec::new();
    for node in view.nodes.values().filter(|n| n.name != me) {
        // Addresses of that node's pods not (yet) published still travel to it; the identity
        // they are judged by on arrival is the one in the tunnel key.
        ipcache.push(IpcacheEntry {
            prefix: node.pod_cidr,
            identity: ReservedIdentity::World.id(),
            tunnel_endpoint: Some(node.underlay_ip),
        });
        ipcache.push(IpcacheEntry {
            prefix: Ipv4Net::from(node.underlay_ip),
            identity: ReservedIdentity::RemoteNode.id(),
            tunnel_endpoint: None,
        });
    }
    for e in view.ips.values().filter(|e| e.node != me) {
        ipcache.push(IpcacheEntry {
            prefix: Ipv4Net::from(e.ip),
            identity: e.identity,
            tunnel_endpoint: Some(e.tunnel_endpoint),
        });
    }
    ipcache.sort_by_key(|e| e.prefix);
    ipcache.dedup_by_key(|e| e.prefix);
    ClusterInputs {
        identities: view.identities.clone(),
        ipcache,
        // semantics (#14): other nodes' pods, for `policy trace` by name.
        endpoints: view
            .ips
            .values()
            .filter(|e| e.node != me)
            .map(|e| RemoteEndpoint {
                ip: e.ip,
                identity: e.identity,
                node: e.node.clone(),
                pod: (!e.namespace.is_empty() && !e.pod_name.is_empty()).then(|| {
                    ciliate_model::PodRef {
                        namespace: e.namespace.clone(),
                        name: e.pod_name.clone(),
                    }
                }),
            })
            .collect(),
    }
}

/// Keeps policy and the ipcache in step with the cluster until `shutdown`, and saves every
/// complete view etcd gives in `state_dir` (the next run starts from it).
pub async fn run_cluster_sync(
    member: Arc<ClusterMember>,
    manager: Arc<EndpointManager>,
    policies: Arc<PolicyManager>,
    state_dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut view = member.subscribe();
    let me = member.node().name.clone();
    let mut was_connected = view.borrow().connected;
    let mut saved: Option<ClusterView> = None;
    let mut gc = tokio::time::interval_at(
        tokio::time::Instant::now() + IDENTITY_GC_INTERVAL,
        IDENTITY_GC_INTERVAL,
    );
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = view.borrow_and_update().clone();
        if snapshot.connected != was_connected {
            if snapshot.connected {
                info!("etcd is reachable; the cluster view is current");
            } else {
                warn!("etcd is unreachable; forwarding with the cluster as last seen");
            }
            was_connected = snapshot.connected;
        }
        if policies.set_cluster(cluster_inputs(&snapshot, &me)) {
            let m = Arc::clone(&manager);
            if let Err(e) = tokio::task::spawn_blocking(move || m.reconcile_policy()).await {
                warn!(error = %e, "policy reconciliation after a cluster change panicked");
            }
        }
        // Only views etcd listed are saved; the flag and revision alone do not make a change.
        let content = |v: &ClusterView| (v.nodes.clone(), v.identities.clone(), v.ips.clone());
        if snapshot.connected
            && snapshot.revision > 0
            && saved.as_ref().map(content) != Some(content(&snapshot))
        {
            let (dir, v) = (state_dir.clone(), snapshot.clone());
            match tokio::task::spawn_blocking(move || save_view(&dir, &v)).await {
                Ok(Ok(())) => saved = Some(snapshot),
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot save the cluster view; a restart without etcd would start without it")
                }
                Err(e) => warn!(error = %e, "saving the cluster view panicked"),
            }
        }
        let collect = tokio::select! {
            changed = view.changed() => if changed.is_err() { return } else { false },
            _ = gc.tick() => true,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        if let (true, Some(kv)) = (collect, member.kv()) {
            match kv.gc_identities().await {
                Ok(0) => {}
                Ok(n) => info!(freed = n, "collected identities no node uses"),
                Err(e) => warn!(error = %e, "identity garbage collection failed; retried later"),
            }
        }
    }
}

/// The kernel's boot id, so that peers can tell a node that rebooted.
/// Where other hosts reach this node's observer API: its TCP listen address, with the node's
/// underlay address in place of an unspecified one (`:4244` listens on every address).
fn advertised_hubble_address(
    listen: Option<std::net::SocketAddr>,
    underlay: std::net::Ipv4Addr,
) -> String {
    match listen {
        None => String::new(),
        Some(a) if a.ip().is_unspecified() => format!("{underlay}:{}", a.port()),
        Some(a) => a.to_string(),
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    #[test]
    fn the_hubble_address_names_the_node_when_listening_everywhere() {
        let node = Ipv4Addr::new(172, 31, 0, 10);
        assert_eq!(advertised_hubble_address(None, node), "");
        assert_eq!(
            advertised_hubble_address(Some("0.0.0.0:4244".parse().unwrap()), node),
            "172.31.0.10:4244"
        );
        assert_eq!(
            advertised_hubble_address(Some("10.0.0.1:4244".parse().unwrap()), node),
            "10.0.0.1:4244"
        );
    }

    fn is_remote_node(inputs: &ClusterInputs, ip: Ipv4Addr) -> bool {
        inputs.ipcache.iter().any(|e| {
            e.prefix == Ipv4Net::from(ip) && e.identity == ReservedIdentity::RemoteNode.id()
        })
    }

    fn view() -> ClusterView {
        let node = |name: &str, ip: [u8; 4], cidr: &str| NodeRecord {
            name: name.into(),
            underlay_ip: Ipv4Addr::from(ip),
            pod_cidr: cidr.parse().unwrap(),
            health: "ok".into(),
            boot_id: String::new(),
            hubble_address: String::new(),
        };
        let ip = |addr: [u8; 4], identity, node: &str, tep: [u8; 4]| IpEntry {
            ip: Ipv4Addr::from(addr),
            identity,
            node: node.into(),
            tunnel_endpoint: Ipv4Addr::from(tep),
            namespace: "default".into(),
            pod_name: format!("pod-{}", addr[3]),
        };
        ClusterView {
            nodes: BTreeMap::from([
                ("a".into(), node("a", [172, 31, 0, 10], "10.200.0.0/24")),
                ("b".into(), node("b", [172, 31, 0, 11], "10.200.1.0/24")),
            ]),
            identities: BTreeMap::from([(300, Labels::parse_list("app=web", "k8s").unwrap())]),
            ips: BTreeMap::from([
                (
                    Ipv4Addr::new(10, 200, 0, 5),
                    ip([10, 200, 0, 5], 300, "a", [172, 31, 0, 10]),
                ),
                (
                    Ipv4Addr::new(10, 200, 1, 7),
                    ip([10, 200, 1, 7], 300, "b", [172, 31, 0, 11]),
                ),
            ]),
            connected: true,
            revision: 1,
        }
    }

    #[test]
    fn other_nodes_pods_go_through_the_tunnel_and_our_own_are_left_out() {
        let inputs = cluster_inputs(&view(), "a");
        assert_eq!(inputs.identities.len(), 1);
        let by_prefix: BTreeMap<String, &IpcacheEntry> = inputs
            .ipcache
            .iter()
            .map(|e| (e.prefix.to_string(), e))
            .collect();
        assert_eq!(
            by_prefix.keys().collect::<Vec<_>>(),
            ["10.200.1.0/24", "10.200.1.7/32", "172.31.0.11/32"]
        );
        let pod = by_prefix["10.200.1.7/32"];
        assert_eq!(pod.identity, 300);
        assert_eq!(pod.tunnel_endpoint, Some(Ipv4Addr::new(172, 31, 0, 11)));
        assert_eq!(
            by_prefix["10.200.1.0/24"].tunnel_endpoint,
            Some(Ipv4Addr::new(172, 31, 0, 11))
        );
        assert!(is_remote_node(&inputs, Ipv4Addr::new(172, 31, 0, 11)));
        assert!(!is_remote_node(&inputs, Ipv4Addr::new(172, 31, 0, 10)));
    }

    #[test]
    fn a_lone_node_adds_nothing_but_identities() {
        let mut v = view();
        v.nodes.remove("b");
        v.ips.retain(|_, e| e.node == "a");
        let inputs = cluster_inputs(&v, "a");
        assert!(inputs.ipcache.is_empty());
    }

    #[test]
    fn the_saved_view_round_trips_and_a_bad_one_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load_view(tmp.path()), None, "nothing saved yet");
        let v = view();
        save_view(tmp.path(), &v).unwrap();
        let loaded = load_view(tmp.path()).unwrap();
        assert!(!loaded.view.connected, "a saved view is never current");
        assert_eq!(loaded.view.nodes, v.nodes);
        assert_eq!(loaded.view.identities, v.identities);
        assert_eq!(loaded.view.ips, v.ips);
        assert!(loaded.saved_unix > 0);
        // What policy gets from it is what it got from the live view.
        assert_eq!(cluster_inputs(&loaded.view, "a"), cluster_inputs(&v, "a"));
        std::fs::write(tmp.path().join(CLUSTER_FILE), b"{not json").unwrap();
        assert_eq!(load_view(tmp.path()), None);
    }
}
