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

use std::sync::Arc;
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
/// How long the agent keeps trying to reach etcd at start-up before giving up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often each node collects identities no node references any more (safe to run on every
/// node at once: a collection backs off from a number someone is taking).
const IDENTITY_GC_INTERVAL: Duration = Duration::from_secs(60);

/// This node's membership: its kvstore session and what it registered.
#[derive(Debug)]
pub struct ClusterMember {
    kv: Kvstore,
    rt: tokio::runtime::Handle,
    node: NodeRecord,
    etcd: Vec<String>,
    tunnel: Option<String>,
}

impl ClusterMember {
    /// Connects to etcd (retrying for up to a minute: etcd may be starting alongside) and
    /// registers the node.
    pub async fn join(
        node_name: &str,
        pod_cidr: Ipv4Net,
        cfg: &ClusterConfig,
        tunnel: Option<&str>,
    ) -> Result<Arc<Self>, String> {
        let kv_cfg = KvstoreConfig {
            endpoints: cfg.etcd_endpoints.clone(),
            node_name: node_name.to_owned(),
            lease_ttl: Duration::from_secs(cfg.lease_ttl_seconds),
            ..KvstoreConfig::default()
        };
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        let kv = loop {
            match Kvstore::connect(kv_cfg.clone()).await {
                Ok(kv) => break kv,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(endpoints = ?cfg.etcd_endpoints, error = %e, "cannot reach etcd yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot reach etcd at {} for {}s: {e}",
                        cfg.etcd_endpoints.join(","),
                        JOIN_TIMEOUT.as_secs()
                    ))
                }
            }
        };
        let node = NodeRecord {
            name: node_name.to_owned(),
            underlay_ip: cfg.underlay_ip,
            pod_cidr,
            health: "ok".to_owned(),
            boot_id: boot_id(),
        };
        kv.register_node(node.clone())
            .await
            .map_err(|e| format!("cannot register node {node_name} in etcd: {e}"))?;
        info!(node = node_name, underlay = %cfg.underlay_ip, %pod_cidr, "joined the cluster");
        Ok(Arc::new(Self {
            kv,
            rt: tokio::runtime::Handle::current(),
            node,
            etcd: cfg.etcd_endpoints.clone(),
            tunnel: tunnel.map(str::to_owned),
        }))
    }

    /// For `ciliate status`.
    pub fn status(&self) -> ClusterStatus {
        let view = self.kv.subscribe();
        let view = view.borrow();
        ClusterStatus {
            etcd: self.etcd.clone(),
            connected: view.connected,
            nodes: view.nodes.keys().cloned().collect(),
            identities: view.identities.len(),
            remote_endpoints: view
                .ips
                .values()
                .filter(|e| e.node != self.node.name)
                .count(),
            tunnel: self.tunnel.clone(),
        }
    }

    /// The cluster as this node sees it, kept current.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.kv.subscribe()
    }

    /// This node's record.
    pub fn node(&self) -> &NodeRecord {
        &self.node
    }
}

impl ClusterHooks for ClusterMember {
    fn allocate_identity(&self, labels: &Labels) -> Result<NumericIdentity, String> {
        let kv = self.kv.clone();
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
        let kv = self.kv.clone();
        let labels = labels.clone();
        self.rt.spawn(async move {
            if let Err(e) = kv.release_identity(&labels).await {
                warn!(labels = %labels, error = %e, "cannot release this node's reference on an identity; it ages out with the node's lease");
            }
        });
    }

    fn endpoint_up(&self, ep: &Endpoint) {
        let kv = self.kv.clone();
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
        let kv = self.kv.clone();
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

/// Keeps policy and the ipcache in step with the cluster until `shutdown`.
pub async fn run_cluster_sync(
    member: Arc<ClusterMember>,
    manager: Arc<EndpointManager>,
    policies: Arc<PolicyManager>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut view = member.subscribe();
    let me = member.node().name.clone();
    let mut was_connected = true;
    let mut gc = tokio::time::interval_at(
        tokio::time::Instant::now() + IDENTITY_GC_INTERVAL,
        IDENTITY_GC_INTERVAL,
    );
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = view.borrow_and_update().clone();
        if snapshot.connected != was_connected {
            if snapshot.connected {
                info!("etcd is reachable again; the cluster view is current");
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
        let collect = tokio::select! {
            changed = view.changed() => if changed.is_err() { return } else { false },
            _ = gc.tick() => true,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        if collect {
            match member.kv.gc_identities().await {
                Ok(0) => {}
                Ok(n) => info!(freed = n, "collected identities no node uses"),
                Err(e) => warn!(error = %e, "identity garbage collection failed; retried later"),
            }
        }
    }
}

/// The kernel's boot id, so that peers can tell a node that rebooted.
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
}
