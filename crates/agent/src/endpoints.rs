//! The endpoint manager: the node's endpoint table, with the address, identity and datapath
//! entries each endpoint holds, kept consistent and persisted.
//!
//! Every change is one transaction under one lock: the tables are cloned, the clone is changed,
//! the datapath is programmed, the clone is persisted, and only then does it replace the
//! tables. A failure at any step drops the clone and undoes what was done to the datapath, so
//! nothing is ever half applied, in memory, on disk or in the kernel. Cloning costs O(endpoints)
//! per change, which is small next to the fsync every change pays anyway.
//!
//! The methods block (datapath syscalls, fsync): async callers run them with `spawn_blocking`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ciliate_datapath::{Datapath, DatapathError, EndpointSpec};
use ciliate_model::api::{
    EndpointCreateRequest, EndpointCreated, EndpointDeleted, GcRequest, GcResult, IpamStatus,
    GATEWAY_IPV4,
};
use ciliate_model::labels::{POD_NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED};
use ciliate_model::{
    Endpoint, EndpointState, Identity, Label, Labels, NamedPort, NumericIdentity, PodRef,
};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::identity::{IdentityAllocator, IdentityError};
use crate::ipam::{Ipam, IpamError};
use crate::pods::{self, PodCache};
use crate::policy::{NodeEndpoints, PolicyManager};
use crate::state::{PersistedState, StateError, StateStore, STATE_VERSION};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Why a request on endpoints failed. [`EndpointError::kind`] is the API's stable error kind.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with an existing endpoint.
    #[error("{0}")]
    Conflict(String),
    /// No such endpoint.
    #[error("{0}")]
    NotFound(String),
    /// No address, endpoint id or identity left.
    #[error("{0}")]
    Exhausted(String),
    /// The datapath refused.
    #[error("{what}: {source}")]
    Datapath {
        /// What was being done, naming the endpoint.
        what: String,
        /// The datapath's error.
        #[source]
        source: DatapathError,
    },
    /// The state could not be persisted; nothing was changed.
    #[error("{0}; nothing was changed, retry once the state directory is writable")]
    State(#[source] StateError),
    /// The cluster (etcd) could not give the endpoint its identity; nothing was changed.
    #[error("{0}")]
    Cluster(String),
    /// Something the endpoint needs is not there yet (its Pod object, in Kubernetes mode);
    /// nothing was changed and a retry may succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl EndpointError {
    /// The stable `kind` of the API error body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Conflict(_) => "conflict",
            Self::NotFound(_) => "not-found",
            Self::Exhausted(_) => "exhausted",
            Self::Datapath { .. } => "datapath",
            Self::State(_) => "state",
            Self::Cluster(_) => "cluster",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Why the manager could not start. Each names the state file or the datapath operation.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The persisted allocations do not fit the configured pod CIDR.
    #[error("state file {path}: {source}")]
    Ipam {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: IpamError,
    },
    /// The persisted identities are invalid.
    #[error("state file {path}: {source}")]
    Identity {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: IdentityError,
    },
    /// The persisted tables contradict each other.
    #[error("state file {path} is inconsistent: {message}; repair it by hand (the agent never guesses which address a running pod holds)")]
    Inconsistent {
        /// The state file.
        path: PathBuf,
        /// What contradicts what.
        message: String,
    },
    /// The datapath could not say which endpoints it holds.
    #[error("cannot list the endpoints the datapath holds: {0}")]
    Datapath(#[source] DatapathError),
}

/// How an endpoint is named in `GET /v1/endpoints/{ref}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointRef {
    /// A numeric endpoint id (a container id of digits is tried too).
    Id(u16),
    /// `namespace/pod`.
    Pod(PodRef),
    /// A container id.
    Container(String),
}

impl EndpointRef {
    /// Reads a reference: digits are an id, `a/b` a pod, anything else a container id.
    pub fn parse(s: &str) -> Self {
        if let Ok(id) = s.parse::<u16>() {
            return Self::Id(id);
        }
        if let Some((namespace, name)) = s.split_once('/') {
            return Self::Pod(PodRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        Self::Container(s.to_owned())
    }
}

impl fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "endpoint id {id}"),
            Self::Pod(p) => write!(f, "pod {p}"),
            Self::Container(c) => write!(f, "container id {c}"),
        }
    }
}

/// Settings of the manager, from the agent's configuration.
#[derive(Clone, Debug)]
pub struct ManagerSettings {
    /// This node's name (checked against the state file).
    pub node_name: String,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// MTU handed to the CNI plugin for pod interfaces.
    pub mtu: u32,
}

/// Counts and problems for `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerStatus {
    /// Number of endpoints.
    pub endpoints: usize,
    /// Cluster-local identities in use.
    pub identities: usize,
    /// Address usage.
    pub ipam: IpamStatus,
    /// What is wrong (not-ready endpoints, broken datapaths not yet repaired).
    pub problems: Vec<String>,
    /// Endpoint datapaths repaired since start.
    pub datapath_repairs: u64,
    /// Endpoints removed since start because their veth vanished.
    pub endpoints_vanished: u64,
}

#[derive(Clone, Debug)]
struct Tables {
    endpoints: BTreeMap<u16, Endpoint>,
    ipam: Ipam,
    identities: IdentityAllocator,
}

/// The node's endpoints and everything they hold.
pub struct EndpointManager {
    settings: ManagerSettings,
    datapath: Arc<dyn Datapath>,
    store: StateStore,
    tables: Mutex<Tables>,
    /// Network policy, once attached: a new endpoint gets its policy before it is reported
    /// created, and every change of endpoints is followed by a reconciliation.
    policy: OnceLock<Arc<PolicyManager>>,
    /// The cluster, once joined (multi-node): it numbers identities and learns every endpoint.
    cluster: OnceLock<Arc<dyn ClusterHooks>>,
    /// What the endpoint checks found wrong in the kernel and the repair counters ([`health`]).
    health: health::Health,
    /// The node's Pod objects (Kubernetes mode), with how long a new endpoint waits for its
    /// Pod: they give endpoints of pods their labels and named ports.
    pods: OnceLock<(Arc<PodCache>, std::time::Duration)>,
    /// Bumped after every change of the endpoint table: readers of names (the observer)
    /// refresh on it instead of polling.
    changes: tokio::sync::watch::Sender<u64>,
}

/// What the endpoint manager needs from the cluster it is part of (multi-node, through etcd).
pub trait ClusterHooks: Send + Sync + fmt::Debug {
    /// The cluster-wide number of `labels`, taking one reference on it (one per endpoint).
    /// Blocks (call from blocking code); an error means the cluster cannot be reached or
    /// refused, and takes no reference.
    fn allocate_identity(&self, labels: &Labels) -> Result<NumericIdentity, String>;
    /// Gives back one reference taken by [`ClusterHooks::allocate_identity`].
    fn release_identity(&self, labels: &Labels);
    /// The endpoint is ready: every node should now know its address and identity.
    fn endpoint_up(&self, ep: &Endpoint);
    /// The endpoint is gone.
    fn endpoint_down(&self, ep: &Endpoint);
}

impl fmt::Debug for EndpointManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointManager")
            .field("settings", &self.settings)
            .field("state", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl EndpointManager {
    /// Loads the state (a missing file is a fresh node), then makes the datapath match it:
    /// endpoints the datapath holds that the state does not know (left by a crash in the middle
    /// of an add) are removed, and every persisted endpoint is programmed again, which changes
    /// nothing where the datapath is already right. An endpoint that cannot be programmed (its
    /// veth vanished while the agent was down) is kept, not ready, with its address: the CNI
    /// DEL or GC that follows releases it.
    pub fn open(
        settings: ManagerSettings,
        store: StateStore,
        datapath: Arc<dyn Datapath>,
    ) -> Result<Self, OpenError> {
        let path = store.path().to_owned();
        let mut tables = match store.load(&settings.node_name)? {
            None => match Self::rebuild_from_datapath(&settings, datapath.as_ref(), &path)? {
                Some(t) => t,
                None => {
                    info!(state = %path.display(), "no state file: starting as a fresh node");
                    Tables {
                        endpoints: BTreeMap::new(),
                        ipam: Ipam::new(settings.pod_cidr).map_err(|source| OpenError::Ipam {
                            path: path.clone(),
                            source,
                        })?,
                        identities: IdentityAllocator::new(),
                    }
                }
            },
            Some(p) => {
                let t = Tables::restore(settings.pod_cidr, p, &path)?;
                info!(
                    state = %path.display(),
                    endpoints = t.endpoints.len(),
                    identities = t.identities.in_use(),
                    "state loaded"
                );
                t
            }
        };

        let held = datapath.list_endpoints().map_err(OpenError::Datapath)?;
        for spec in held {
            let known = tables
                .endpoints
                .values()
                .any(|e| e.id == spec.id && e.host_ifindex == spec.ifindex && e.ipv4 == spec.ipv4);
            if known {
                continue;
            }
            // Removed before the upserts below, so that removing a stale entry can never undo
            // what is programmed for a known endpoint sharing one of its keys.
            warn!(
                endpoint = spec.id,
                ifname = %spec.ifname,
                ipv4 = %spec.ipv4,
                "the datapath holds an endpoint the state does not know (an add interrupted by a crash?); removing it"
            );
            if let Err(e) = datapath.remove_endpoint(&spec) {
                warn!(endpoint = spec.id, ifname = %spec.ifname, error = %e, "cannot remove unknown endpoint from the datapath");
            }
        }
        for ep in tables.endpoints.values_mut() {
            match datapath.upsert_endpoint(&spec_of(ep)) {
                // Recovered without its record: programmed, but it stays listed as not ready
                // (its policy left as the maps hold it) until it goes away.
                Ok(()) if recover::is_unrecovered(ep) => {}
                Ok(()) => {
                    ep.state = EndpointState::Ready;
                    ep.status_message = None;
                }
                Err(e) => {
                    warn!(
                        endpoint = ep.id,
                        container = %ep.container_id,
                        host_ifname = %ep.host_ifname,
                        error = %e,
                        "cannot program restored endpoint; it stays not ready and keeps its address until CNI DEL or GC"
                    );
                    ep.state = EndpointState::NotReady;
                    ep.status_message = Some(format!(
                        "cannot program the datapath for host interface {} (ifindex {}): {e}",
                        ep.host_ifname, ep.host_ifindex
                    ));
                }
            }
        }
        sync_records(datapath.as_ref(), &tables.endpoints);
        let manager = Self {
            settings,
            datapath,
            store,
            tables: Mutex::new(tables),
            policy: OnceLock::new(),
            cluster: OnceLock::new(),
            health: health::Health::default(),
            pods: OnceLock::new(),
            changes: tokio::sync::watch::Sender::new(0),
        };
        // Records the CIDR on a fresh node, and proves the directory is writable before any
        // request is accepted.
        {
            let tables = manager.lock();
            manager.store.save(&manager.persisted(&tables))?;
        }
        Ok(manager)
    }

    /// With the state file missing, rebuilds the tables from the endpoints the datapath holds
    /// and their records ([`recover`]); `None` when the datapath holds none (a fresh node).
    fn rebuild_from_datapath(
        settings: &ManagerSettings,
        datapath: &dyn Datapath,
        path: &std::path::Path,
    ) -> Result<Option<Tables>, OpenError> {
        let held = datapath.list_endpoints().map_err(OpenError::Datapath)?;
        if held.iter().all(|e| e.id == 0) {
            return Ok(None);
        }
        let records = datapath.endpoint_records().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the endpoint records; endpoints are recovered without them");
            Vec::new()
        });
        let rebuilt = recover::rebuild(
            &settings.node_name,
            settings.pod_cidr,
            &held,
            &records,
            now_unix(),
        );
        warn!(
            state = %path.display(),
            endpoints = rebuilt.complete + rebuilt.partial,
            with_record = rebuilt.complete,
            without_record = rebuilt.partial,
            "the state file is missing but the datapath holds endpoints: rebuilt the state from the datapath"
        );
        for s in &rebuilt.skipped {
            warn!("not recovered (removed as unknown): {s}");
        }
        Tables::restore(settings.pod_cidr, rebuilt.state, path).map(Some)
    }

    /// The settings in force.
    pub fn settings(&self) -> &ManagerSettings {
        &self.settings
    }

    /// The datapath the manager programs.
    pub fn datapath(&self) -> &Arc<dyn Datapath> {
        &self.datapath
    }

    /// Puts endpoints under network policy from now on: each new endpoint gets its policy
    /// inside its creation, and each change of endpoints is followed by
    /// [`EndpointManager::reconcile_policy`]. The caller reconciles once after attaching (at
    /// start-up, before serving). A second call changes nothing.
    pub fn attach_policy(&self, policy: Arc<PolicyManager>) {
        let _ = self.policy.set(policy);
    }

    /// Kubernetes mode: from now on an endpoint created for a pod takes its labels and named
    /// ports from the pod's object in `cache` (waiting up to `wait` for it to arrive), not
    /// from the request; [`EndpointManager::relabel_pod`] follows later changes. A second
    /// call changes nothing.
    pub fn attach_pods(&self, cache: Arc<PodCache>, wait: std::time::Duration) {
        let _ = self.pods.set((cache, wait));
    }

    /// Makes this node part of a cluster: identities of new endpoints come from it, and it
    /// learns of every endpoint. The endpoints already here (restored after a restart) take
    /// their cluster references again and are published. Blocks on the cluster; call once,
    /// before serving.
    pub fn attach_cluster(&self, cluster: Arc<dyn ClusterHooks>) {
        if self.set_cluster_hooks(cluster) {
            self.publish_to_cluster();
        }
    }

    /// The first half of [`EndpointManager::attach_cluster`], for a cluster not reached yet:
    /// new endpoints take their identity from it (and fail while it cannot be reached).
    /// Returns false when a cluster was already attached.
    pub fn set_cluster_hooks(&self, cluster: Arc<dyn ClusterHooks>) -> bool {
        self.cluster.set(cluster).is_ok()
    }

    /// The second half: the endpoints here take their cluster references again and are
    /// published. Blocks on the cluster; call once it is reached.
    pub fn publish_to_cluster(&self) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        let endpoints: Vec<Endpoint> = self.lock().endpoints.values().cloned().collect();
        // One reference per endpoint, as creating them took (and removing them gives back).
        // Not for one recovered without its labels: the cluster would number its placeholder.
        for ep in endpoints.iter().filter(|e| !recover::is_unrecovered(e)) {
            match cluster.allocate_identity(&ep.labels) {
                Ok(n) if n == ep.identity => {}
                Ok(n) => warn!(
                    endpoint = ep.id, identity = ep.identity, cluster_identity = n, labels = %ep.labels,
                    "the cluster numbers this label set differently from this node's endpoint; \
                     recreate the pod so that policy on other nodes sees it right"
                ),
                Err(e) => {
                    warn!(endpoint = ep.id, identity = ep.identity, labels = %ep.labels, error = %e,
                    "cannot take this node's reference on an identity in the cluster")
                }
            }
        }
        for ep in endpoints.iter().filter(|e| e.state == EndpointState::Ready) {
            cluster.endpoint_up(ep);
        }
    }

    /// After an endpoint left: tell the cluster, and give back the identity reference its
    /// creation took.
    fn after_removal(&self, ep: &Endpoint) {
        if let Some(cluster) = self.cluster.get() {
            cluster.endpoint_down(ep);
            if !recover::is_unrecovered(ep) {
                cluster.release_identity(&ep.labels);
            }
        }
    }

    /// The network policy attached, if any.
    pub fn policy(&self) -> Option<&Arc<PolicyManager>> {
        self.policy.get()
    }

    /// What policy needs to know about the node: the endpoints the datapath holds (ready
    /// ones) and the labels of every identity in use.
    pub fn policy_snapshot(&self) -> NodeEndpoints {
        let tables = self.lock();
        NodeEndpoints {
            endpoints: tables
                .endpoints
                .values()
                .filter(|e| e.state == EndpointState::Ready)
                .map(spec_of)
                .collect(),
            identities: tables.identity_labels(),
            named_ports: tables.named_ports(),
        }
    }

    /// Writes every endpoint's policy and the ipcache (see [`PolicyManager::reconcile`]); a
    /// no-op without policy attached. A failure is logged, reported in the status and retried
    /// by the agent's policy loop.
    pub fn reconcile_policy(&self) -> Result<(), String> {
        match self.policy.get() {
            Some(p) => p.reconcile(|| self.policy_snapshot()).map(drop),
            None => Ok(()),
        }
    }

    /// Reconciles after a change of endpoints; failures are retried by the policy loop.
    fn after_change(&self) {
        if let Err(e) = self.reconcile_policy() {
            warn!(error = %e, "endpoints changed but the policies could not be updated; retrying");
        }
    }

    /// Registers an endpoint: allocates its id, address and identity, programs the datapath
    /// and persists, all or nothing.
    pub fn create(&self, req: &EndpointCreateRequest) -> Result<EndpointCreated, EndpointError> {
        validate(req)?;
        let (labels, named_ports, pod) = self.identity_inputs(req)?;
        // In a cluster, the number comes from etcd first (it may block; no lock is held).
        let cluster_id = match self.cluster.get() {
            Some(c) => Some(c.allocate_identity(&labels).map_err(|e| {
                EndpointError::Cluster(format!(
                    "cannot get the cluster-wide identity of labels [{labels}] for container {}: {e}; nothing was changed, retry once etcd is reachable",
                    req.container_id
                ))
            })?),
            None => None,
        };
        let created = self.create_with(req, labels.clone(), named_ports, cluster_id);
        if let Some(cluster) = self.cluster.get() {
            match &created {
                Ok(c) => cluster.endpoint_up(&c.endpoint),
                Err(_) => cluster.release_identity(&labels),
            }
        }
        let mut created = created?;
        if let Some(seen) = pod {
            if let Some(ep) = self.follow_pod_after_create(&seen, &created.endpoint) {
                created.endpoint = ep;
            }
        }
        Ok(created)
    }

    /// The labels and named ports of a new endpoint: from its Pod object in Kubernetes mode
    /// (with the Pod as read), else from the request.
    fn identity_inputs(
        &self,
        req: &EndpointCreateRequest,
    ) -> Result<(Labels, Vec<NamedPort>, Option<ciliate_k8s::PodInfo>), EndpointError> {
        let (Some((cache, wait)), Some(pod)) = (self.pods.get(), &req.pod) else {
            return Ok((endpoint_labels(req)?, req.named_ports.clone(), None));
        };
        // Failing (the runtime retries the ADD) rather than falling back to the request's
        // labels: kubelet passes none, so the pod would run for a while under its namespace's
        // bare identity, admitted or refused by policies that were never meant for it.
        let info = cache.wait_for(pod, *wait).ok_or_else(|| {
            EndpointError::Unavailable(format!(
                "pod {pod} (container {}) is not known to this node's Kubernetes watch after                  {}s: not scheduled to this node, or the API server is not reachable; nothing                  was changed, the runtime retries the ADD",
                req.container_id,
                wait.as_secs()
            ))
        })?;
        let labels = with_namespace_label(
            pods::pod_labels(&info).map_err(EndpointError::Invalid)?,
            pod,
        )?;
        Ok((labels, info.named_ports.clone(), Some(info)))
    }

    /// Closes the race of a Pod relabelled while its endpoint was being created: the
    /// relabel found no endpoint yet, so the creation checks the cache again.
    fn follow_pod_after_create(
        &self,
        seen: &ciliate_k8s::PodInfo,
        created: &Endpoint,
    ) -> Option<Endpoint> {
        let (cache, _) = self.pods.get()?;
        let now = cache.get(&pods::pod_ref(seen))?;
        if now.labels == seen.labels && now.named_ports == seen.named_ports {
            return None;
        }
        match self.relabel_pod(&now) {
            Ok(_) => self.get(&EndpointRef::Id(created.id)),
            Err(e) => {
                warn!(endpoint = created.id, pod = %pods::pod_ref(seen), error = %e, "the pod's labels changed while its endpoint was created, and it cannot take them yet");
                None
            }
        }
    }

    fn create_with(
        &self,
        req: &EndpointCreateRequest,
        labels: Labels,
        named_ports: Vec<NamedPort>,
        cluster_id: Option<NumericIdentity>,
    ) -> Result<EndpointCreated, EndpointError> {
        let mut tables = self.lock();
        // An attachment is (container id, interface): a container may have several.
        if let Some(e) = tables
            .endpoints
            .values()
            .find(|e| e.container_id == req.container_id && e.ifname == req.ifname)
        {
            return Err(EndpointError::Conflict(format!(
                "container {} already has endpoint {} on interface {} ({}, address {}); delete it \
                 first (DELETE /v1/endpoints/{}?ifname={}) if the container is being re-created",
                req.container_id,
                e.id,
                e.ifname,
                e.host_ifname,
                e.ipv4,
                req.container_id,
                req.ifname
            )));
        }
        if let Some(e) = tables
            .endpoints
            .values()
            .find(|e| e.host_ifindex == req.host_ifindex || e.host_ifname == req.host_ifname)
        {
            return Err(EndpointError::Conflict(format!(
                "host interface {} (ifindex {}) is already used by endpoint {} of container {} \
                 ({} ifindex {}); pick another host veth or delete that endpoint",
                req.host_ifname,
                req.host_ifindex,
                e.id,
                e.container_id,
                e.host_ifname,
                e.host_ifindex
            )));
        }

        let mut next = tables.clone();
        let id = next.free_endpoint_id().ok_or_else(|| {
            EndpointError::Exhausted(
                "all 65535 endpoint ids of this node are in use; delete unused pods".to_owned(),
            )
        })?;
        let ipv4 = next
            .ipam
            .allocate(&req.container_id)
            .map_err(|e| EndpointError::Exhausted(e.to_string()))?;
        let identity = match cluster_id {
            Some(id) => next.identities.acquire_as(&labels, id).map_err(|e| {
                EndpointError::Cluster(format!(
                    "the cluster's identity {id} for labels [{labels}] contradicts this node's: {e}"
                ))
            })?,
            None => next
                .identities
                .acquire(&labels)
                .map_err(|e| EndpointError::Exhausted(e.to_string()))?,
        };
        let mut ep = Endpoint {
            id,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            pod: req.pod.clone(),
            labels,
            named_ports,
            identity,
            ipv4,
            mac: req.mac,
            host_ifname: req.host_ifname.clone(),
            host_ifindex: req.host_ifindex,
            host_mac: req.host_mac,
            state: EndpointState::Creating,
            status_message: None,
            created_unix: now_unix(),
        };
        let spec = spec_of(&ep);
        if let Err(source) = self.datapath.upsert_endpoint(&spec) {
            // The datapath promises to leave nothing behind; removing again costs little and
            // covers a datapath that broke that promise.
            self.undo_upsert(&spec);
            warn!(container = %req.container_id, host_ifname = %req.host_ifname, error = %source, "cannot program endpoint");
            return Err(EndpointError::Datapath {
                what: format!(
                    "cannot program the datapath for container {} on host interface {} (ifindex {})",
                    req.container_id, req.host_ifname, req.host_ifindex
                ),
                source,
            });
        }
        ep.state = EndpointState::Ready;
        next.endpoints.insert(id, ep.clone());
        // Its policy before anything else: the endpoint must never be reachable, or reach,
        // more than policy allows, not even before the CNI ADD is answered.
        if let Some(policy) = self.policy.get() {
            if let Err(source) =
                policy.program_endpoint(&spec, &next.identity_labels(), &next.named_ports())
            {
                self.undo_upsert(&spec);
                warn!(container = %req.container_id, host_ifname = %req.host_ifname, error = %source, "cannot program the policy of a new endpoint; undone");
                return Err(EndpointError::Datapath {
                    what: format!(
                        "cannot program the network policy of container {} on host interface {} (ifindex {})",
                        req.container_id, req.host_ifname, req.host_ifindex
                    ),
                    source,
                });
            }
        }
        // The record lets a lost state file be rebuilt from the datapath (see `recover`).
        if let Err(source) = put_record(self.datapath.as_ref(), &ep) {
            self.undo_upsert(&spec);
            warn!(container = %req.container_id, error = %source, "cannot store the endpoint record; undone");
            return Err(EndpointError::Datapath {
                what: format!(
                    "cannot store the record of container {} (host interface {}) in the datapath",
                    req.container_id, req.host_ifname
                ),
                source,
            });
        }
        if let Err(e) = self.store.save(&self.persisted(&next)) {
            self.undo_upsert(&spec);
            warn!(container = %req.container_id, error = %e, "cannot persist new endpoint; undone");
            return Err(EndpointError::State(e));
        }
        *tables = next;
        self.changes.send_modify(|g| *g += 1);
        drop(tables);
        // Other endpoints' policies may name the new identity.
        self.after_change();
        info!(
            endpoint = id,
            container = %ep.container_id,
            pod = %ep.pod.as_ref().map(ToString::to_string).unwrap_or_default(),
            ipv4 = %ipv4,
            identity,
            host_ifname = %ep.host_ifname,
            "endpoint created"
        );
        Ok(EndpointCreated {
            address: Ipv4Net::from(ipv4),
            endpoint: ep,
            gateway: GATEWAY_IPV4,
            mtu: self.settings.mtu,
        })
    }

    /// Removes the endpoint of a container, if any (a second delete answers `None`).
    /// Without `ifname` a container with several attachments is refused (which one?), so
    /// that a runtime's DEL of one interface never removes another.
    pub fn delete(&self, container_id: &str) -> Result<EndpointDeleted, EndpointError> {
        let ifnames: Vec<String> = self
            .lock()
            .endpoints
            .values()
            .filter(|e| e.container_id == container_id)
            .map(|e| e.ifname.clone())
            .collect();
        if ifnames.len() > 1 {
            return Err(EndpointError::Conflict(format!(
                "container {container_id} has {} attachments (interfaces {}); name the one to \
                 delete: DELETE /v1/endpoints/{container_id}?ifname=<interface>",
                ifnames.len(),
                ifnames.join(", ")
            )));
        }
        self.delete_where(|e| e.container_id == container_id, "endpoint deleted")
    }

    /// Removes the endpoint of one attachment (container id, interface in the container), if
    /// any (a second delete answers `None`). Other interfaces of the container stay.
    pub fn delete_attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<EndpointDeleted, EndpointError> {
        self.delete_where(
            |e| e.container_id == container_id && e.ifname == ifname,
            "endpoint deleted",
        )
    }

    /// The endpoint of one attachment (container id, interface in the container). Unlike
    /// [`EndpointManager::get`], a container id of digits is never read as an endpoint id.
    pub fn get_attachment(&self, container_id: &str, ifname: &str) -> Option<Endpoint> {
        self.lock()
            .endpoints
            .values()
            .find(|e| e.container_id == container_id && e.ifname == ifname)
            .cloned()
    }

    /// Removes the first endpoint `pick` chooses, if any, as one transaction.
    fn delete_where(
        &self,
        pick: impl Fn(&Endpoint) -> bool,
        done: &str,
    ) -> Result<EndpointDeleted, EndpointError> {
        let mut tables = self.lock();
        let Some(ep) = tables.endpoints.values().find(|e| pick(e)).cloned() else {
            return Ok(EndpointDeleted {
                endpoint: None,
                released: None,
            });
        };
        self.datapath
            .remove_endpoint(&spec_of(&ep))
            .map_err(|source| EndpointError::Datapath {
                what: format!(
                    "cannot remove endpoint {} (container {}, host interface {}) from the datapath",
                    ep.id, ep.container_id, ep.host_ifname
                ),
                source,
            })?;
        self.drop_record(ep.host_ifindex);
        let mut next = tables.clone();
        let released = next.forget(&ep);
        if let Err(e) = self.store.save(&self.persisted(&next)) {
            mark_removed_but_unsaved(&mut tables, ep.id);
            return Err(EndpointError::State(e));
        }
        *tables = next;
        self.changes.send_modify(|g| *g += 1);
        drop(tables);
        self.after_change();
        self.after_removal(&ep);
        self.forget_health(ep.id);
        info!(endpoint = ep.id, container = %ep.container_id, ipv4 = %ep.ipv4, "{done}");
        Ok(EndpointDeleted {
            endpoint: Some(ep),
            released,
        })
    }

    /// Removes every endpoint whose (container id, ifname) is not in `req`; returns them. An
    /// endpoint the datapath refuses to remove is kept (and logged): the next GC retries it.
    pub fn gc(&self, req: &GcRequest) -> Result<GcResult, EndpointError> {
        let keep: HashSet<(&str, &str)> = req
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let mut tables = self.lock();
        let stale: Vec<Endpoint> = tables
            .endpoints
            .values()
            .filter(|e| !keep.contains(&(e.container_id.as_str(), e.ifname.as_str())))
            .cloned()
            .collect();
        if stale.is_empty() {
            return Ok(GcResult { removed: vec![] });
        }
        let mut next = tables.clone();
        let mut removed = Vec::new();
        let mut first_failure = None;
        for ep in stale {
            match self.datapath.remove_endpoint(&spec_of(&ep)) {
                Ok(()) => {
                    self.drop_record(ep.host_ifindex);
                    next.forget(&ep);
                    removed.push(ep);
                }
                Err(source) => {
                    warn!(endpoint = ep.id, container = %ep.container_id, error = %source, "GC: cannot remove endpoint from the datapath; kept for the next GC");
                    first_failure.get_or_insert((ep, source));
                }
            }
        }
        if removed.is_empty() {
            if let Some((ep, source)) = first_failure {
                return Err(EndpointError::Datapath {
                    what: format!(
                        "GC: cannot remove endpoint {} (container {}) from the datapath",
                        ep.id, ep.container_id
                    ),
                    source,
                });
            }
        }
        if let Err(e) = self.store.save(&self.persisted(&next)) {
            for ep in &removed {
                mark_removed_but_unsaved(&mut tables, ep.id);
            }
            return Err(EndpointError::State(e));
        }
        *tables = next;
        self.changes.send_modify(|g| *g += 1);
        drop(tables);
        self.after_change();
        for ep in &removed {
            self.after_removal(ep);
            info!(endpoint = ep.id, container = %ep.container_id, ipv4 = %ep.ipv4, "endpoint garbage-collected");
        }
        Ok(GcResult { removed })
    }

    /// A receiver that changes after every change of the endpoint table (creates, deletes,
    /// garbage collection, relabels).
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// All endpoints, by id.
    pub fn list(&self) -> Vec<Endpoint> {
        self.lock().endpoints.values().cloned().collect()
    }

    /// One endpoint by id, container id or `namespace/pod`.
    pub fn get(&self, r: &EndpointRef) -> Option<Endpoint> {
        let tables = self.lock();
        let eps = || tables.endpoints.values();
        match r {
            // A container id made of digits is still found by its id.
            EndpointRef::Id(id) => tables
                .endpoints
                .get(id)
                .or_else(|| eps().find(|e| e.container_id == id.to_string())),
            EndpointRef::Pod(p) => eps().find(|e| e.pod.as_ref() == Some(p)),
            EndpointRef::Container(c) => eps().find(|e| &e.container_id == c),
        }
        .cloned()
    }

    /// Every identity: reserved ones, then those in use.
    pub fn identities(&self) -> Vec<Identity> {
        self.lock().identities.list()
    }

    /// One identity.
    pub fn identity(&self, id: NumericIdentity) -> Option<Identity> {
        self.lock().identities.get(id)
    }

    /// Counts and problems.
    pub fn status(&self) -> ManagerStatus {
        let tables = self.lock();
        let problems = tables
            .endpoints
            .values()
            .filter(|e| e.state != EndpointState::Ready)
            .map(|e| {
                let pod = e
                    .pod
                    .as_ref()
                    .map(|p| format!(", pod {p}"))
                    .unwrap_or_default();
                format!(
                    "endpoint {} (container {}{pod}) is {}: {}",
                    e.id,
                    e.container_id,
                    e.state,
                    e.status_message.as_deref().unwrap_or("no reason recorded")
                )
            })
            .collect();
        let mut problems: Vec<String> = problems;
        problems.extend(self.health.problems());
        ManagerStatus {
            endpoints: tables.endpoints.len(),
            identities: tables.identities.in_use(),
            ipam: tables.ipam.status(),
            problems,
            datapath_repairs: self.health.repairs(),
            endpoints_vanished: self.health.vanished(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Tables are only replaced whole after a transaction succeeded, so a panic in the middle
        // of one leaves them intact: it is safe to carry on after a poisoned lock.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persisted(&self, t: &Tables) -> PersistedState {
        PersistedState {
            version: STATE_VERSION,
            node_name: self.settings.node_name.clone(),
            pod_cidr: t.ipam.cidr(),
            endpoints: t.endpoints.values().cloned().collect(),
            identities: t.identities.snapshot(),
            ipam: t.ipam.snapshot(),
        }
    }

    fn undo_upsert(&self, spec: &EndpointSpec) {
        if let Err(e) = self.datapath.remove_endpoint(spec) {
            warn!(endpoint = spec.id, ifname = %spec.ifname, error = %e, "cannot undo datapath programming of a failed add");
        }
        self.drop_record(spec.ifindex);
    }

    /// Drops the record of an endpoint removed from the datapath. A record left behind is
    /// harmless (recovery matches records to the endpoint map) and dropped at the next start.
    fn drop_record(&self, ifindex: u32) {
        if let Err(e) = self.datapath.remove_endpoint_record(ifindex) {
            warn!(ifindex, error = %e, "cannot drop the endpoint record; it is dropped at the next start");
        }
    }
}

impl Tables {
    fn restore(
        cidr: Ipv4Net,
        p: PersistedState,
        path: &std::path::Path,
    ) -> Result<Self, OpenError> {
        let inconsistent = |message: String| OpenError::Inconsistent {
            path: path.to_owned(),
            message,
        };
        let ipam =
            Ipam::restore(cidr, Some(p.pod_cidr), &p.ipam).map_err(|source| OpenError::Ipam {
                path: path.to_owned(),
                source,
            })?;
        let mut identities =
            IdentityAllocator::restore(&p.identities).map_err(|source| OpenError::Identity {
                path: path.to_owned(),
                source,
            })?;
        let mut endpoints = BTreeMap::new();
        let mut refs: BTreeMap<NumericIdentity, u32> = BTreeMap::new();
        for ep in p.endpoints {
            if ep.id == 0 {
                return Err(inconsistent(format!(
                    "endpoint of container {} has id 0",
                    ep.container_id
                )));
            }
            for other in endpoints.values() {
                let other: &Endpoint = other;
                if other.id == ep.id
                    || (other.container_id == ep.container_id && other.ifname == ep.ifname)
                    || other.host_ifindex == ep.host_ifindex
                {
                    return Err(inconsistent(format!(
                        "endpoints {} (container {}, {}) and {} (container {}, {}) share an id, attachment (container id and interface) or host ifindex",
                        other.id, other.container_id, other.ifname, ep.id, ep.container_id, ep.ifname
                    )));
                }
            }
            match ipam.owner(ep.ipv4) {
                Some(owner) if owner == ep.container_id => {}
                other => {
                    return Err(inconsistent(format!(
                    "endpoint {} (container {}) has address {} but the allocations give it to {}",
                    ep.id,
                    ep.container_id,
                    ep.ipv4,
                    other.map_or_else(|| "nobody".to_owned(), |o| format!("container {o}"))
                )))
                }
            }
            match identities.labels_of(ep.identity) {
                Some(l) if *l == ep.labels => {}
                other => {
                    return Err(inconsistent(format!(
                        "endpoint {} (container {}) has identity {} with labels [{}], but the identity table {}",
                        ep.id,
                        ep.container_id,
                        ep.identity,
                        ep.labels,
                        other.map_or_else(|| "does not have it".to_owned(), |l| format!("gives it labels [{l}]"))
                    )))
                }
            }
            *refs.entry(ep.identity).or_default() += 1;
            endpoints.insert(ep.id, ep);
        }
        for (id, persisted, actual) in identities.recount(&refs) {
            warn!(identity = id, persisted, actual, state = %path.display(), "identity reference count did not match the endpoints; corrected");
        }
        let owners: HashSet<&str> = endpoints
            .values()
            .map(|e: &Endpoint| e.container_id.as_str())
            .collect();
        for (ip, owner) in ipam.snapshot().allocations {
            if !owners.contains(owner.as_str()) {
                // Kept, not released: an address is only reused when the agent is sure no pod
                // holds it.
                warn!(%ip, container = %owner, state = %path.display(), "address allocated to a container without endpoint; kept allocated");
            }
        }
        Ok(Self {
            endpoints,
            ipam,
            identities,
        })
    }

    /// The labels of every identity in use, for policy.
    fn identity_labels(&self) -> ciliate_policy::IdentityLabels {
        self.endpoints
            .values()
            .map(|e| (e.identity, e.labels.clone()))
            .collect()
    }

    /// The named container ports every endpoint declares.
    fn named_ports(&self) -> ciliate_policy::NamedPorts {
        crate::policy::named_ports_of(self.endpoints.values())
    }

    /// The lowest endpoint id not in use.
    fn free_endpoint_id(&self) -> Option<u16> {
        // Ids are kept sorted: the first gap in 1, 2, 3, ... is the answer.
        let mut want: u16 = 1;
        for id in self.endpoints.keys() {
            if *id != want {
                break;
            }
            want = want.checked_add(1)?;
        }
        Some(want)
    }

    /// Drops an endpoint with its address and identity reference; returns the address
    /// released.
    fn forget(&mut self, ep: &Endpoint) -> Option<Ipv4Addr> {
        self.endpoints.remove(&ep.id);
        self.identities.release(ep.identity);
        // Only release what this container holds, never an address reallocated to another.
        match self.ipam.owner(ep.ipv4) {
            Some(owner) if owner == ep.container_id => self.ipam.release(ep.ipv4).map(|_| ep.ipv4),
            _ => None,
        }
    }
}

/// After the datapath forgot an endpoint but the state could not be saved, the endpoint stays
/// (memory matches disk) but must not look healthy.
fn mark_removed_but_unsaved(tables: &mut Tables, id: u16) {
    if let Some(e) = tables.endpoints.get_mut(&id) {
        e.state = EndpointState::NotReady;
        e.status_message = Some(
            "removed from the datapath, but the state could not be saved; retry the delete"
                .to_owned(),
        );
    }
}

/// Stores the endpoint's record in the datapath (recovery's source when the state is lost).
fn put_record(datapath: &dyn Datapath, ep: &Endpoint) -> Result<(), DatapathError> {
    let bytes = serde_json::to_vec(ep).map_err(|e| {
        DatapathError::Unsupported(format!("cannot serialise endpoint {}: {e}", ep.id))
    })?;
    datapath.put_endpoint_record(ep.host_ifindex, &bytes)
}

/// Makes the records match the endpoints at start: each (recovered without one excepted) gets
/// its record, records of interfaces no endpoint has are dropped. Best effort: a failure only
/// weakens recovery from a lost state file, so it is logged.
fn sync_records(datapath: &dyn Datapath, endpoints: &BTreeMap<u16, Endpoint>) {
    let held = match datapath.endpoint_records() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot read the endpoint records");
            Vec::new()
        }
    };
    for (ifindex, _) in &held {
        if !endpoints.values().any(|e| e.host_ifindex == *ifindex) {
            if let Err(e) = datapath.remove_endpoint_record(*ifindex) {
                warn!(ifindex, error = %e, "cannot drop a stale endpoint record");
            }
        }
    }
    for ep in endpoints.values().filter(|e| !recover::is_unrecovered(e)) {
        if let Err(e) = put_record(datapath, ep) {
            warn!(endpoint = ep.id, error = %e, "cannot store the endpoint record; a lost state file could not restore its labels");
        }
    }
}

/// What the datapath needs of an endpoint.
pub fn spec_of(ep: &Endpoint) -> EndpointSpec {
    EndpointSpec {
        id: ep.id,
        ifname: ep.host_ifname.clone(),
        ifindex: ep.host_ifindex,
        ipv4: ep.ipv4,
        mac: ep.mac,
        host_mac: ep.host_mac,
        identity: ep.identity,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn validate(req: &EndpointCreateRequest) -> Result<(), EndpointError> {
    let invalid = |m: String| Err(EndpointError::Invalid(m));
    // The CNI spec's rule for container ids; it also keeps them safe in URL paths and logs.
    let cid = &req.container_id;
    if cid.is_empty() {
        return invalid("containerId is empty; pass the runtime's CNI_CONTAINERID".to_owned());
    }
    if cid.len() > 1024
        || !cid.starts_with(|c: char| c.is_ascii_alphanumeric())
        || cid.contains(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return invalid(format!(
            "containerId {cid:?} is not a valid container id: it must start with a letter or digit \
             and hold only letters, digits, '_', '.' and '-'"
        ));
    }
    for (field, name) in [("ifname", &req.ifname), ("hostIfname", &req.host_ifname)] {
        if name.is_empty() {
            return invalid(format!("{field} is empty; pass the interface name"));
        }
        if name.len() > MAX_IFNAME
            || name == "."
            || name == ".."
            || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return invalid(format!(
                "{field} {name:?} is not a valid interface name (at most {MAX_IFNAME} bytes, no '/', ':' or spaces)"
            ));
        }
    }
    if req.host_ifindex == 0 {
        return invalid(
            "hostIfindex is 0; pass the interface index of the host side of the veth".to_owned(),
        );
    }
    if let Some(pod) = &req.pod {
        if pod.namespace.is_empty() || pod.name.is_empty() {
            return invalid(format!(
                "pod {:?}/{:?}: namespace and name must both be set (or leave pod out)",
                pod.namespace, pod.name
            ));
        }
        if pod.namespace.contains('/') || pod.name.contains('/') {
            return invalid(format!("pod {pod}: namespace and name may not contain '/'"));
        }
    }
    if let Some(l) = req.labels.iter().find(|l| l.source == SOURCE_RESERVED) {
        return invalid(format!(
            "label {l}: the `{SOURCE_RESERVED}` source belongs to the agent's reserved identities and cannot be requested"
        ));
    }
    Ok(())
}

/// The labels the endpoint's identity is derived from: the request's plus the namespace label.
fn endpoint_labels(req: &EndpointCreateRequest) -> Result<Labels, EndpointError> {
    match &req.pod {
        Some(pod) => with_namespace_label(req.labels.clone(), pod),
        None => Ok(req.labels.clone()),
    }
}

/// `labels` with the namespace label of `pod`.
fn with_namespace_label(mut labels: Labels, pod: &PodRef) -> Result<Labels, EndpointError> {
    // Parsed rather than built so a namespace that is no valid label value is refused; the
    // pod's namespace replaces any namespace label the labels carried, so a pod cannot claim
    // another namespace's identity.
    let label = Label::parse(
        &format!("{SOURCE_K8S}:{POD_NAMESPACE_LABEL}={}", pod.namespace),
        SOURCE_K8S,
    )
    .map_err(|e| EndpointError::Invalid(format!("pod namespace {:?}: {e}", pod.namespace)))?;
    labels.insert(label);
    Ok(labels)
}

pub mod health;
pub mod recover;
mod relabel;

#[cfg(test)]
mod tests;
