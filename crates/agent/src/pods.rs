//! The node's pods as the Kubernetes API has them (`--k8s`): namespace/name → [`PodInfo`],
//! filled from the source's Pod events (the source only watches this node's pods).
//!
//! In Kubernetes mode an endpoint takes its labels and named ports from its Pod object, not
//! from the CNI request (kubelet passes neither). The runtime may call ADD a moment before the
//! Pod (with its IP-less status) reaches this node's watch, so [`PodCache::wait_for`] waits,
//! bounded, woken by each change rather than polling.
//!
//! Relists follow [`ciliate_k8s::SourceEvent`]'s contract: the objects of a relist replace the
//! cache whole at its end; until then lookups see the relist's objects first (they are newer).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ciliate_k8s::PodInfo;
use ciliate_model::labels::{Label, POD_NAMESPACE_LABEL, SOURCE_K8S};
use ciliate_model::{Labels, PodRef};

/// How long a CNI ADD waits for its Pod to reach the cache before it fails (the runtime
/// retries). Kubelet creates the sandbox only after the Pod is bound to this node, so the
/// watch event is normally already here or milliseconds away.
pub const POD_WAIT: Duration = Duration::from_secs(10);

/// Pod label keys left out of identities, as Cilium's default label filter does: each one is
/// unique per pod or per rollout, so keeping them would give every pod, or every rollout, an
/// identity of its own and churn every policy that selects it.
pub const IGNORED_LABEL_KEYS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
];

#[derive(Debug, Default)]
struct Inner {
    pods: BTreeMap<PodRef, PodInfo>,
    /// The objects of a relist in progress (`Init` seen, `InitDone` not yet).
    relist: Option<BTreeMap<PodRef, PodInfo>>,
}

impl Inner {
    fn get(&self, r: &PodRef) -> Option<&PodInfo> {
        self.relist
            .as_ref()
            .and_then(|p| p.get(r))
            .or_else(|| self.pods.get(r))
    }
}

/// The pod cache, shared by the Kubernetes source (writer) and the endpoint manager (reader).
#[derive(Debug, Default)]
pub struct PodCache {
    inner: Mutex<Inner>,
    /// Notified on every change, for [`PodCache::wait_for`].
    changed: Condvar,
}

/// The reference of a pod.
pub fn pod_ref(info: &PodInfo) -> PodRef {
    PodRef {
        namespace: info.namespace.clone(),
        name: info.name.clone(),
    }
}

/// Whether two versions of a pod give its endpoint the same identity and named ports.
fn same_identity_inputs(a: &PodInfo, b: &PodInfo) -> bool {
    a.labels == b.labels && a.named_ports == b.named_ports
}

impl PodCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is a single insert/remove/swap: the data behind a poisoned lock is whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A relist starts (`Init`).
    pub fn start_relist(&self) {
        self.lock().relist = Some(BTreeMap::new());
    }

    /// An object of the relist (`InitApply`). Waiters see it at once.
    pub fn relist_apply(&self, info: PodInfo) {
        let mut inner = self.lock();
        inner
            .relist
            .get_or_insert_with(BTreeMap::new)
            .insert(pod_ref(&info), info);
        drop(inner);
        self.changed.notify_all();
    }

    /// The relist is complete (`InitDone`): its objects replace the cache. Returns the pods
    /// that are new or whose labels or named ports differ from before (their endpoints may
    /// need relabelling; after a restart, every pod is new).
    pub fn finish_relist(&self) -> Vec<PodInfo> {
        let mut inner = self.lock();
        let next = inner.relist.take().unwrap_or_default();
        let changed = next
            .iter()
            .filter(|(r, p)| {
                inner
                    .pods
                    .get(*r)
                    .is_none_or(|old| !same_identity_inputs(old, p))
            })
            .map(|(_, p)| p.clone())
            .collect();
        inner.pods = next;
        drop(inner);
        self.changed.notify_all();
        changed
    }

    /// A pod was added or changed (`Apply`). Returns it again when its labels or named ports
    /// changed (or it is new).
    pub fn apply(&self, info: PodInfo) -> Option<PodInfo> {
        let r = pod_ref(&info);
        let mut inner = self.lock();
        let changed = inner
            .get(&r)
            .is_none_or(|old| !same_identity_inputs(old, &info));
        // A watch event during a relist is newer than the relist's object of that pod.
        if let Some(relist) = inner.relist.as_mut() {
            relist.insert(r.clone(), info.clone());
        }
        inner.pods.insert(r, info.clone());
        drop(inner);
        self.changed.notify_all();
        changed.then_some(info)
    }

    /// A pod was deleted (`Delete`). Its endpoint, if any, goes with CNI DEL, not here.
    pub fn delete(&self, r: &PodRef) {
        let mut inner = self.lock();
        inner.pods.remove(r);
        if let Some(relist) = inner.relist.as_mut() {
            relist.remove(r);
        }
    }

    /// A pod, if the cache has it.
    pub fn get(&self, r: &PodRef) -> Option<PodInfo> {
        self.lock().get(r).cloned()
    }

    /// Number of pods cached.
    pub fn len(&self) -> usize {
        self.lock().pods.len()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pod, waiting up to `wait` for it to arrive; `None` if it does not. Blocks (call
    /// from blocking code); woken by every change of the cache, never polling.
    pub fn wait_for(&self, r: &PodRef, wait: Duration) -> Option<PodInfo> {
        let deadline = Instant::now() + wait;
        let mut inner = self.lock();
        loop {
            if let Some(p) = inner.get(r) {
                return Some(p.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// The labels an endpoint of `pod` gets, before the agent's namespace label: each Pod label as
/// a `k8s:` label, except [`IGNORED_LABEL_KEYS`] and the namespace label (the agent sets that
/// one from the pod's namespace, so that no pod can claim another namespace's identity).
pub fn pod_labels(pod: &PodInfo) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for (key, value) in &pod.labels {
        if key == POD_NAMESPACE_LABEL || IGNORED_LABEL_KEYS.contains(&key.as_str()) {
            continue;
        }
        // The API server validated the label; parsing still guards our own label rules.
        let label =
            Label::parse(&format!("{SOURCE_K8S}:{key}={value}"), SOURCE_K8S).map_err(|e| {
                format!(
                    "pod {}/{}: label {key}={value}: {e}",
                    pod.namespace, pod.name
                )
            })?;
        labels.insert(label);
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ciliate_k8s::PodPhase;
    use ciliate_model::lb::L4Proto;
    use ciliate_model::NamedPort;

    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: "prod".to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            node_name: Some("node-a".to_owned()),
            host_network: false,
            pod_ips: Vec::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            named_ports: Vec::new(),
            phase: PodPhase::Pending,
        }
    }

    fn r(name: &str) -> PodRef {
        PodRef {
            namespace: "prod".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn apply_reports_only_identity_changes() {
        let c = PodCache::new();
        assert!(c.apply(pod("a", &[("app", "web")])).is_some(), "new");
        let mut running = pod("a", &[("app", "web")]);
        running.phase = PodPhase::Running;
        running.pod_ips = vec!["10.0.0.5".parse().expect("ip")];
        assert!(c.apply(running).is_none(), "status only: no relabel");
        assert!(c.apply(pod("a", &[("app", "api")])).is_some(), "labels");
        let mut ports = pod("a", &[("app", "api")]);
        ports.named_ports = vec![NamedPort {
            name: "http".to_owned(),
            protocol: L4Proto::Tcp,
            port: 8080,
        }];
        assert!(c.apply(ports).is_some(), "named ports");
        assert_eq!(c.get(&r("a")).expect("cached").named_ports.len(), 1);
        c.delete(&r("a"));
        assert!(c.get(&r("a")).is_none());
    }

    #[test]
    fn a_relist_replaces_the_cache_at_its_end() {
        let c = PodCache::new();
        c.apply(pod("gone", &[]));
        c.apply(pod("same", &[("app", "x")]));
        c.apply(pod("relabelled", &[("app", "old")]));
        c.start_relist();
        c.relist_apply(pod("same", &[("app", "x")]));
        c.relist_apply(pod("relabelled", &[("app", "new")]));
        c.relist_apply(pod("new", &[]));
        // Mid-relist: the relist's objects are newer; those not listed yet are still there.
        assert_eq!(
            c.get(&r("relabelled")).expect("cached").labels["app"],
            "new"
        );
        assert!(c.get(&r("gone")).is_some());
        let mut changed: Vec<String> = c.finish_relist().into_iter().map(|p| p.name).collect();
        changed.sort();
        assert_eq!(changed, ["new", "relabelled"]);
        assert!(c.get(&r("gone")).is_none(), "not in the relist: deleted");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_watch_event_during_a_relist_is_kept() {
        let c = PodCache::new();
        c.start_relist();
        c.relist_apply(pod("a", &[("v", "1")]));
        c.apply(pod("a", &[("v", "2")]));
        c.finish_relist();
        assert_eq!(c.get(&r("a")).expect("cached").labels["v"], "2");
    }

    #[test]
    fn wait_for_is_woken_by_the_pod() {
        let c = Arc::new(PodCache::new());
        let writer = Arc::clone(&c);
        let t = std::thread::spawn(move || {
            // Unrelated changes wake the waiter, which goes back to waiting.
            writer.apply(pod("other", &[]));
            writer.apply(pod("a", &[("app", "web")]));
        });
        // Generous bound: the test is about being woken, not about speed.
        let got = c.wait_for(&r("a"), Duration::from_secs(60));
        t.join().expect("writer");
        assert_eq!(got.expect("arrived").labels["app"], "web");
    }

    #[test]
    fn wait_for_gives_up_after_the_bound() {
        let c = PodCache::new();
        assert!(c.wait_for(&r("never"), Duration::from_millis(20)).is_none());
    }

    #[test]
    fn labels_become_k8s_labels_without_per_pod_ones_or_a_namespace_claim() {
        let p = pod(
            "a",
            &[
                ("app", "web"),
                ("app.kubernetes.io/name", "shop"),
                ("pod-template-hash", "6d4cf56db6"),
                (POD_NAMESPACE_LABEL, "kube-system"),
            ],
        );
        let l = pod_labels(&p).expect("valid");
        assert_eq!(l.to_string(), "k8s:app=web,k8s:app.kubernetes.io/name=shop");
        let bad = pod("b", &[("app", "we b")]);
        let e = pod_labels(&bad).expect_err("invalid value");
        assert!(e.contains("pod prod/b") && e.contains("app"), "{e}");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Apply(u8, u8),
        Delete(u8),
        Relist(Vec<(u8, u8)>),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..6, 0u8..3).prop_map(|(n, l)| Op::Apply(n, l)),
            (0u8..6).prop_map(Op::Delete),
            proptest::collection::vec((0u8..6, 0u8..3), 0..6).prop_map(Op::Relist),
        ]
    }

    proptest::proptest! {
        /// Any sequence of source events leaves the cache equal to a plain map of the last
        /// version of each pod (a relist replacing it whole), and reports exactly the pods
        /// whose labels are new or changed.
        #[test]
        fn the_cache_follows_the_source_contract(ops in proptest::collection::vec(op(), 0..40)) {
            let c = PodCache::new();
            let mut model: BTreeMap<String, u8> = BTreeMap::new();
            let p = |n: u8, l: u8| pod(&format!("p{n}"), &[("app", &format!("v{l}"))]);
            for op in ops {
                match op {
                    Op::Apply(n, l) => {
                        let changed = c.apply(p(n, l)).is_some();
                        let before = model.insert(format!("p{n}"), l);
                        proptest::prop_assert_eq!(changed, before != Some(l));
                    }
                    Op::Delete(n) => {
                        c.delete(&r(&format!("p{n}")));
                        model.remove(&format!("p{n}"));
                    }
                    Op::Relist(items) => {
                        c.start_relist();
                        let mut next = BTreeMap::new();
                        for (n, l) in items {
                            c.relist_apply(p(n, l));
                            next.insert(format!("p{n}"), l);
                        }
                        let mut changed: Vec<String> =
                            c.finish_relist().into_iter().map(|p| p.name).collect();
                        changed.sort();
                        let want: Vec<String> = next
                            .iter()
                            .filter(|(k, l)| model.get(*k) != Some(*l))
                            .map(|(k, _)| k.clone())
                            .collect();
                        proptest::prop_assert_eq!(changed, want);
                        model = next;
                    }
                }
                proptest::prop_assert_eq!(c.len(), model.len());
                for (name, l) in &model {
                    let got = c.get(&r(name)).map(|p| p.labels["app"].clone());
                    proptest::prop_assert_eq!(got, Some(format!("v{l}")));
                }
            }
        }
    }
}
