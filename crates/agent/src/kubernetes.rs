//! The Kubernetes API as a source of the agent (`--k8s`): [`ciliate_k8s`]'s one stream of list
//! and watch events, handed to the stores that own each kind.
//!
//! * Services, EndpointSlices and Namespaces go to the Service store as one source among its
//!   others ([`ServiceManager::kubernetes_event`]); it removes stale datapath entries only
//!   once all three kinds have been listed.
//! * NetworkPolicies and Cilium's policy CRDs go to the policy store as a layer of their own
//!   ([`PolicyManager::set_kubernetes`]), then the policy loop is woken to put them in force.
//! * The node's own Node object gives the pod CIDR at start ([`KubeSource::node_pod_cidr`])
//!   and the node's labels, which flows carry ([`KubeSource::node_labels`]).
//! * Pods (only this node's) fill the pod cache ([`PodCache`]), from which new endpoints of
//!   pods take their labels and named ports; a pod whose labels or named ports change is
//!   relabelled ([`EndpointManager::relabel_pod`]): new identity and policy, no restart. A
//!   relabel that fails is retried at the source's next event, or after a few seconds.
//!
//! Objects are decoded with the same model as manifests; the source has already dropped (and
//! named) fields of the policy CRDs that model does not know. One the agent cannot use is left
//! out with a warning: the API server has accepted it, so refusing is not an option.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ciliate_k8s::{Document, NodeInfo, PodInfo, ResourceKind, SourceEvent as KubeEvent};
use ciliate_model::k8s::{Kind, Object, ObjectKey};
use ciliate_model::manifest::{decode_all, ApplyDocument};
use ciliate_model::PodRef;
use ipnet::Ipv4Net;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config::KubernetesConfig;
use crate::endpoints::EndpointManager;
use crate::pods::{pod_ref, PodCache};
use crate::policy::PolicyManager;
use crate::services::{ServiceManager, SourceEvent, KUBERNETES_SOURCE};

/// A started source, with the events read ahead of the stores (at start, looking for the
/// node's pod CIDR).
#[derive(Debug)]
pub struct KubeSource {
    source: ciliate_k8s::Source,
    read_ahead: VecDeque<KubeEvent>,
    node: NodeLabels,
}

/// This node's labels as its Node object has them, `key=value` (Hubble's form).
#[derive(Debug)]
struct NodeLabels {
    name: String,
    labels: watch::Sender<Vec<String>>,
}

impl NodeLabels {
    /// Takes the labels of this node's Node from `ev`, if it is that.
    fn note(&self, ev: &KubeEvent) {
        let (KubeEvent::InitApply(d) | KubeEvent::Apply(d)) = ev else {
            return;
        };
        if d.kind != ResourceKind::Node || d.name() != self.name {
            return;
        }
        let Ok(node) = NodeInfo::from_document(d) else {
            return;
        };
        let labels: Vec<String> = node
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.labels.send_if_modified(|old| {
            let changed = *old != labels;
            *old = labels;
            changed
        });
    }
}

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Kubernetes API: {0}")]
pub struct KubeError(String);

impl KubeSource {
    /// Connects (kubeconfig or in-cluster) and starts listing and watching every kind.
    pub async fn start(cfg: &KubernetesConfig, node_name: &str) -> Result<Self, KubeError> {
        let client = ciliate_k8s::client(cfg.kubeconfig.as_deref())
            .await
            .map_err(|e| KubeError(e.to_string()))?;
        Ok(Self::from_client(client, node_name))
    }

    /// Starts listing and watching every kind through `client` (tests: a scripted API
    /// server).
    pub fn from_client(client: ciliate_k8s::Client, node_name: &str) -> Self {
        let source = ciliate_k8s::spawn(
            client,
            ciliate_k8s::Options {
                node_name: Some(node_name.to_owned()),
                ..ciliate_k8s::Options::default()
            },
        );
        info!(node = node_name, "listing and watching the Kubernetes API");
        Self {
            source,
            read_ahead: VecDeque::new(),
            node: NodeLabels {
                name: node_name.to_owned(),
                labels: watch::Sender::new(Vec::new()),
            },
        }
    }

    /// The node's labels (`key=value`, sorted), following its Node object; empty until the
    /// Node is listed, and when it has none.
    pub fn node_labels(&self) -> watch::Receiver<Vec<String>> {
        self.node.labels.subscribe()
    }

    /// The node's pod CIDR from its Node object (the first IPv4 one of `spec.podCIDRs`), once
    /// Nodes are listed; `None` when the node has none or the list does not come within
    /// `wait` (the configured `--pod-cidr` stays). Events read meanwhile are kept for
    /// [`KubeSource::run`].
    pub async fn node_pod_cidr(&mut self, node_name: &str, wait: Duration) -> Option<Ipv4Net> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut found = None;
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.source.events.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => return found,
                Err(_) => {
                    warn!(
                        node = node_name,
                        "Nodes not listed within {}s: keeping the configured pod CIDR",
                        wait.as_secs()
                    );
                    return found;
                }
            };
            let done = matches!(ev, KubeEvent::InitDone(ResourceKind::Node));
            self.node.note(&ev);
            if let KubeEvent::InitApply(d) | KubeEvent::Apply(d) = &ev {
                if d.kind == ResourceKind::Node && d.name() == node_name {
                    found = NodeInfo::from_document(d)
                        .ok()
                        .and_then(|n| n.pod_cidrs.iter().find_map(|c| c.parse::<Ipv4Net>().ok()));
                }
            }
            self.read_ahead.push_back(ev);
            if done {
                return found;
            }
        }
    }

    /// Hands every event to its store until the source ends or `shutdown` turns true (its task
    /// runs on a blocking thread: the stores write the datapath). Await the handle after
    /// shutdown: the task holds the stores (and the endpoint manager's state lock) until it
    /// returns.
    pub fn run(
        self,
        services: Arc<ServiceManager>,
        policies: Arc<PolicyManager>,
        policy_wake: Arc<Notify>,
        pods: Option<(Arc<PodCache>, Arc<EndpointManager>)>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let KubeSource {
            mut source,
            read_ahead,
            node,
        } = self;
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut state = Dispatch::new(services, policies, policy_wake, pods);
            for ev in read_ahead {
                state.handle(ev);
            }
            loop {
                let next = async {
                    tokio::select! {
                        ev = source.events.recv() => ev,
                        () = stopped(&mut shutdown) => None,
                    }
                };
                let next = if state.relabel_retry.is_empty() {
                    rt.block_on(next)
                } else {
                    // A failed relabel is retried at the next event, or after a while when
                    // the API is quiet.
                    match rt.block_on(tokio::time::timeout(RELABEL_RETRY, next)) {
                        Ok(next) => next,
                        Err(_) => {
                            state.retry_relabels();
                            continue;
                        }
                    }
                };
                match next {
                    Some(ev) => {
                        node.note(&ev);
                        state.handle(ev);
                    }
                    None => break,
                }
            }
            info!("the Kubernetes source stopped");
        })
    }
}

/// Returns once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// How soon a relabel that failed is tried again when no event comes meanwhile.
const RELABEL_RETRY: Duration = Duration::from_secs(5);

/// The kind of our model a source kind maps to (Service store kinds only).
fn service_kind(k: ResourceKind) -> Option<Kind> {
    match k {
        ResourceKind::Service => Some(Kind::Service),
        ResourceKind::EndpointSlice => Some(Kind::EndpointSlice),
        ResourceKind::Namespace => Some(Kind::Namespace),
        _ => None,
    }
}

fn is_policy(k: ResourceKind) -> bool {
    matches!(
        k,
        ResourceKind::NetworkPolicy
            | ResourceKind::CiliumNetworkPolicy
            | ResourceKind::CiliumClusterwideNetworkPolicy
    )
}

fn as_apply_document(d: &Document) -> ApplyDocument {
    ApplyDocument {
        source: KUBERNETES_SOURCE.to_owned(),
        index: 1,
        object: d.object.clone(),
    }
}

/// Decodes a Service-store object, or says why not.
fn decode(d: &Document) -> Result<Object, String> {
    decode_all(&[as_apply_document(d)])
        .map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?
        .pop()
        .map(|x| x.object)
        .ok_or_else(|| "no object".to_owned())
}

fn key_of(kind: Kind, d: &Document) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: d.namespace().unwrap_or_default().into(),
        name: d.name().into(),
    }
}

/// Policies of the source, by kind/namespace/name, and the (re)lists in progress.
struct Dispatch {
    services: Arc<ServiceManager>,
    policies: Arc<PolicyManager>,
    policy_wake: Arc<Notify>,
    policy_docs: BTreeMap<(ResourceKind, String, String), ApplyDocument>,
    pending: BTreeMap<ResourceKind, BTreeMap<(ResourceKind, String, String), ApplyDocument>>,
    /// Warnings already logged, so a relist does not repeat them.
    warned: BTreeSet<String>,
    /// The pod cache and the endpoints that follow it.
    pods: Option<(Arc<PodCache>, Arc<EndpointManager>)>,
    /// Pods whose endpoints could not be relabelled yet, retried at the next event.
    relabel_retry: BTreeSet<PodRef>,
}

impl Dispatch {
    fn new(
        services: Arc<ServiceManager>,
        policies: Arc<PolicyManager>,
        policy_wake: Arc<Notify>,
        pods: Option<(Arc<PodCache>, Arc<EndpointManager>)>,
    ) -> Self {
        Self {
            services,
            policies,
            policy_wake,
            policy_docs: BTreeMap::new(),
            pending: BTreeMap::new(),
            warned: BTreeSet::new(),
            pods,
            relabel_retry: BTreeSet::new(),
        }
    }

    fn warn_once(&mut self, text: String) {
        if self.warned.insert(text.clone()) {
            warn!("{text}");
        }
    }

    fn decode_or_warn(&mut self, d: &Document) -> Option<Object> {
        match decode(d) {
            Ok(o) => Some(o),
            Err(e) => {
                self.warn_once(format!(
                    "{} from the Kubernetes API is not used: {e}",
                    d.describe()
                ));
                None
            }
        }
    }

    fn handle(&mut self, ev: KubeEvent) {
        // Failures of earlier events first (a failure of this one waits for the next).
        self.retry_relabels();
        let kind = ev.kind();
        if let KubeEvent::InitApply(d) | KubeEvent::Apply(d) = &ev {
            for w in &d.warnings {
                self.warn_once(format!("{}: {w}", d.describe()));
            }
        }
        if let Some(k) = service_kind(kind) {
            let event = match ev {
                KubeEvent::Init(_) => SourceEvent::Init(k),
                KubeEvent::InitDone(_) => SourceEvent::InitDone(k),
                KubeEvent::Delete(d) => SourceEvent::Delete(key_of(k, &d)),
                KubeEvent::InitApply(d) => match self.decode_or_warn(&d) {
                    Some(o) => SourceEvent::InitApply(o),
                    None => return,
                },
                KubeEvent::Apply(d) => match self.decode_or_warn(&d) {
                    Some(o) => SourceEvent::Apply(o),
                    None => return,
                },
            };
            self.services.kubernetes_event(event);
            return;
        }
        if is_policy(kind) {
            let key = |d: &Document| {
                (
                    d.kind,
                    d.namespace().unwrap_or_default().to_owned(),
                    d.name().to_owned(),
                )
            };
            let changed = match ev {
                KubeEvent::Init(k) => {
                    self.pending.insert(k, BTreeMap::new());
                    false
                }
                KubeEvent::InitApply(d) => {
                    self.pending
                        .entry(kind)
                        .or_default()
                        .insert(key(&d), as_apply_document(&d));
                    false
                }
                KubeEvent::InitDone(k) => {
                    let next = self.pending.remove(&k).unwrap_or_default();
                    self.policy_docs.retain(|(kk, _, _), _| *kk != k);
                    self.policy_docs.extend(next);
                    true
                }
                KubeEvent::Apply(d) => {
                    self.policy_docs.insert(key(&d), as_apply_document(&d));
                    true
                }
                KubeEvent::Delete(d) => self.policy_docs.remove(&key(&d)).is_some(),
            };
            if changed {
                let docs: Vec<ApplyDocument> = self.policy_docs.values().cloned().collect();
                for p in self.policies.set_kubernetes(&docs) {
                    self.warn_once(p);
                }
                self.policy_wake.notify_one();
            }
            return;
        }
        match ev {
            ev if kind == ResourceKind::Pod => self.pod_event(ev),
            KubeEvent::InitDone(k) => info!(kind = %k, "listed"),
            _ => {}
        }
    }

    fn pod_info(&mut self, d: &Document) -> Option<PodInfo> {
        match PodInfo::from_document(d) {
            Ok(p) => Some(p),
            Err(e) => {
                self.warn_once(format!(
                    "{} from the Kubernetes API is not used: {e}",
                    d.describe()
                ));
                None
            }
        }
    }

    fn pod_event(&mut self, ev: KubeEvent) {
        let Some((cache, _)) = self.pods.clone() else {
            return;
        };
        let changed = match ev {
            KubeEvent::Init(_) => {
                cache.start_relist();
                Vec::new()
            }
            KubeEvent::InitApply(d) => {
                if let Some(p) = self.pod_info(&d) {
                    cache.relist_apply(p);
                }
                Vec::new()
            }
            KubeEvent::InitDone(k) => {
                let changed = cache.finish_relist();
                info!(kind = %k, pods = cache.len(), "listed");
                changed
            }
            KubeEvent::Apply(d) => self
                .pod_info(&d)
                .and_then(|p| cache.apply(p))
                .into_iter()
                .collect(),
            KubeEvent::Delete(d) => {
                if let Some(p) = self.pod_info(&d) {
                    cache.delete(&pod_ref(&p));
                }
                Vec::new()
            }
        };
        for p in changed {
            self.relabel(&p);
        }
    }

    /// Relabels the endpoints of `pod` (if it has any here); a failure is retried.
    fn relabel(&mut self, pod: &PodInfo) {
        let Some((_, endpoints)) = &self.pods else {
            return;
        };
        let r = pod_ref(pod);
        match endpoints.relabel_pod(pod) {
            Ok(_) => {
                self.relabel_retry.remove(&r);
            }
            Err(e) => {
                warn!(pod = %r, error = %e, "cannot give the pod's endpoints its new labels; they keep their identity, retried at the next event");
                self.relabel_retry.insert(r);
            }
        }
    }

    fn retry_relabels(&mut self) {
        let Some((cache, _)) = self.pods.clone() else {
            return;
        };
        for r in std::mem::take(&mut self.relabel_retry) {
            // A pod deleted meanwhile has nothing left to follow.
            if let Some(p) = cache.get(&r) {
                self.relabel(&p);
            }
        }
    }
}
