//! Network policy: the store of NetworkPolicy, CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy objects, and the reconciler that puts them in force.
//!
//! Policies come from the same two sources as Services, each replaced as a whole batch:
//!
//! * the API (`POST /v1/manifests`, what `ciliate policy import` and `ciliate apply` send):
//!   a batch with any invalid document applies nothing and answers every problem with its
//!   file, document and field; applied policies are persisted in `policies.json` (see
//!   [`store`]) before the answer, with the CIDR identities they need, so a restart keeps
//!   both;
//! * `--manifest-dir`: its policy documents, read with the Services' (see
//!   [`crate::services::manifest_dir`]); a broken set keeps the last good one in force.
//!
//! HTTP rules are enforced by the node's L7 proxy: the entries of their ports carry the
//! proxy's port, and every endpoint's redirects (the rules the proxy applies) are kept in
//! [`crate::l7::L7State`] and pushed to the proxy as they change, before the datapath starts
//! sending connections there (see [`PolicyManager::attach_l7_sink`]).
//!
//! DNS rules redirect port 53 to the proxy's DNS listener the same way; `toFQDNs` select the
//! CIDR identities of the addresses the FQDN cache ([`crate::fqdn`]) holds, which
//! [`PolicyManager::update_fqdn`] puts in force for the endpoints a learned answer touches.
//!
//! What a policy parses but does not enforce yet (Kafka rules, toServices,
//! authentication) is a warning: returned with the answer, logged, listed by
//! `GET /v1/policies`; never silently dropped, never a reason to allow more.
//!
//! The reconciler ([`PolicyManager::reconcile`]) resolves the policies against every identity
//! of the node (its endpoints', the reserved ones, the CIDR identities the policies need) and
//! writes each endpoint's policy (one atomic generation switch per endpoint) and the ipcache
//! (CIDR identities, and the node's own addresses as `host`). It runs after every change of
//! policies, endpoints or node addresses, and once at start-up before the API is served. New
//! prefixes enter the ipcache before the policies that name their identities, and leave it
//! only after. A new endpoint gets its policy inside its creation
//! ([`PolicyManager::program_endpoint`]), before the CNI ADD is answered.
//!
//! The methods block (fsync, datapath syscalls): async callers use `spawn_blocking`.

pub mod namespaces;
pub mod store;
pub mod trace;
pub mod whatif;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ciliate_datapath::{Datapath, DatapathError, EndpointSpec};
use ciliate_model::api::ProxyStatus;
use ciliate_model::bpf_policy::{self, PolicySyncStats};
use ciliate_model::identity::{Identity, NumericIdentity, ReservedIdentity};
use ciliate_model::l7::{L7Redirect, ProxyCommand};
use ciliate_model::labels::Labels;
use ciliate_model::manifest::{report, ApplyAction, ApplyDocument, ManifestError};
use ciliate_model::policy::{PolicyKind, PolicyRef, PolicyResource, RuleRef};
pub use ciliate_model::policy_api::is_policy_document;
use ciliate_model::policy_api::{PolicyOutcome, PolicyRevision, PolicyValidation, PolicyView};
use ciliate_model::Endpoint;
use ciliate_policy::{load_documents, IdentityLabels, Loaded, NamedPorts, PolicyEngine};
use ipnet::Ipv4Net;
use tracing::{debug, info, warn};

use crate::l7::{L7Sink, L7State, ProxyHealth};
use crate::services::manifest_dir;
use crate::state::StateError;
use namespaces::NamespaceLabels;
use store::{PersistedPolicies, PolicyStore, POLICIES_VERSION};

/// `source` of the policies applied through the API.
pub const API_SOURCE: &str = "api";

/// Settings of the policy store, from the agent's configuration.
#[derive(Clone, Debug, Default)]
pub struct PolicySettings {
    /// The manifest directory, if any.
    pub manifest_dir: Option<PathBuf>,
    /// Addresses of this node given with `--node-ip`: always `host`, whatever discovery finds.
    pub node_ips: Vec<Ipv4Addr>,
    /// The node's L7 proxy listeners, which redirected policy entries carry.
    pub proxy_ports: ciliate_model::l7::ProxyPorts,
}

/// Why a change of policies failed. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Documents are invalid.
    #[error("{}", report(.0, "nothing was applied"))]
    Invalid(Vec<ManifestError>),
    /// The policies could not be persisted.
    #[error("{0}; nothing was applied, retry once the state directory is writable")]
    State(#[source] StateError),
}

/// Why the policy store could not start.
#[derive(Debug, thiserror::Error)]
pub enum PolicyOpenError {
    /// `policies.json` could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// `policies.json` holds policies that do not validate.
    #[error("{path} is inconsistent: {message}; repair or remove it (removing it forgets the policies applied through the API)")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A policy and the document it came from.
#[derive(Clone, Debug, PartialEq)]
struct Stored {
    resource: PolicyResource,
    source: String,
    index: usize,
    /// `field: what is not enforced`, without the file.
    warnings: Vec<String>,
}

impl Stored {
    fn document(&self) -> ApplyDocument {
        ApplyDocument {
            source: self.source.clone(),
            index: self.index,
            // A resource serialises back to the manifest it was read from.
            object: serde_json::to_value(&self.resource).unwrap_or_default(),
        }
    }
}

type Policies = BTreeMap<PolicyRef, Stored>;

/// The policies of a loaded batch, keyed, with their warnings.
fn stored(loaded: Loaded) -> Policies {
    let mut out = Policies::new();
    for p in loaded.policies {
        let policy = p.resource.policy_ref();
        let object = policy.to_string();
        let warnings = loaded
            .warnings
            .iter()
            .filter(|w| w.object == object)
            .map(|w| {
                if w.path.is_empty() {
                    w.reason.clone()
                } else {
                    format!("{}: {}", w.path, w.reason)
                }
            })
            .collect();
        out.insert(
            policy,
            Stored {
                resource: p.resource,
                source: p.source,
                index: p.index,
                warnings,
            },
        );
    }
    out
}

/// The policies in force: the directory's, then the API's it does not shadow.
fn effective<'a>(
    dir: &'a Policies,
    k8s: &'a Policies,
    api: &'a Policies,
) -> BTreeMap<&'a PolicyRef, &'a Stored> {
    let mut out: BTreeMap<&PolicyRef, &Stored> = api.iter().collect();
    out.extend(k8s.iter());
    out.extend(dir.iter());
    out
}

/// Makes `engine` hold exactly the effective policies, changing only what differs (rules keep
/// their numbers).
fn sync_engine(
    engine: &mut PolicyEngine,
    dir: &Policies,
    k8s: &Policies,
    api: &Policies,
) -> Vec<ManifestError> {
    let want = effective(dir, k8s, api);
    let stale: Vec<PolicyRef> = engine
        .policies()
        .map(|(r, _)| r.clone())
        .filter(|r| !want.contains_key(r))
        .collect();
    for r in stale {
        engine.remove(&r);
    }
    let mut errors = Vec::new();
    for (r, s) in want {
        if engine.get(r) == Some(&s.resource) {
            continue;
        }
        if let Err(problems) = engine.upsert(s.resource.clone()) {
            errors.extend(problems.into_iter().map(|p| ManifestError {
                source: s.source.clone(),
                index: s.index,
                object: r.to_string(),
                path: p.path,
                reason: p.message,
            }));
        }
    }
    errors
}

/// What a document names, for deletion: only `kind` and `metadata` need to be right, so a
/// policy can be deleted with a manifest that no longer validates.
fn identify(doc: &ApplyDocument) -> Result<Vec<PolicyRef>, Vec<ManifestError>> {
    let items: Vec<(String, &serde_json::Value)> = match doc
        .object
        .get("items")
        .and_then(serde_json::Value::as_array)
    {
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("items[{i}]."), v))
            .collect(),
        None => vec![(String::new(), &doc.object)],
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (prefix, v) in items {
        let err = |path: &str, reason: String| ManifestError {
            source: doc.source.clone(),
            index: doc.index,
            object: ciliate_model::manifest::describe(v),
            path: format!("{prefix}{path}"),
            reason,
        };
        let text = |path: &[&str]| {
            path.iter()
                .try_fold(v, |v, k| v.get(*k))
                .and_then(serde_json::Value::as_str)
        };
        let Some(kind) = text(&["kind"]).and_then(PolicyKind::from_kind) else {
            errors.push(err(
                "kind",
                format!(
                    "{:?} is not a policy (want NetworkPolicy, CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy)",
                    text(&["kind"]).unwrap_or_default()
                ),
            ));
            continue;
        };
        let name = text(&["metadata", "name"]).unwrap_or_default();
        if name.is_empty() {
            errors.push(err("metadata.name", "required value".into()));
            continue;
        }
        let namespace = text(&["metadata", "namespace"])
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        out.push(PolicyRef {
            kind,
            namespace: kind.is_namespaced().then(|| namespace.to_owned()),
            name: name.to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Checks policy documents without applying them: every error and warning.
pub fn validate(docs: &[ApplyDocument]) -> PolicyValidation {
    match load_documents(docs) {
        Ok(loaded) => PolicyValidation {
            valid: true,
            policies: loaded
                .policies
                .iter()
                .map(|p| p.resource.policy_ref())
                .collect(),
            other_objects: 0,
            errors: Vec::new(),
            warnings: loaded.warnings,
        },
        Err(errors) => PolicyValidation {
            valid: false,
            policies: Vec::new(),
            other_objects: 0,
            errors,
            warnings: Vec::new(),
        },
    }
}

/// What the endpoint manager tells the reconciler about the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeEndpoints {
    /// The endpoints programmed in the datapath.
    pub endpoints: Vec<EndpointSpec>,
    /// The labels of every endpoint identity in use.
    pub identities: IdentityLabels,
    /// The named container ports of every endpoint, by identity.
    pub named_ports: NamedPorts,
}

/// What named ports the endpoints declare, for policies that name ports.
pub fn named_ports_of<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> NamedPorts {
    let mut named = NamedPorts::new();
    for ep in endpoints {
        for p in &ep.named_ports {
            named.insert(ep.identity, &p.name, p.protocol.number(), p.port);
        }
    }
    named
}

/// What one reconciliation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileStats {
    /// Endpoints whose policy was written.
    pub endpoints: usize,
    /// Map entries written and deleted (policy and ipcache).
    pub written: u64,
    /// Map entries deleted.
    pub deleted: u64,
}

#[derive(Debug, Default)]
struct Health {
    /// Why the last reconciliation failed.
    reconcile_error: Option<String>,
    /// The generation the datapath holds.
    reconciled: Option<u64>,
}

/// Counts and problems for `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Policies in force.
    pub policies: usize,
    /// What is wrong.
    pub problems: Vec<String>,
    /// The L7 proxy's redirects and state.
    pub proxy: ProxyStatus,
}

/// The documents in force; its lock is held for a whole change, so changes never interleave.
#[derive(Debug)]
struct Docs {
    api: Policies,
    dir: Policies,
    /// From the Kubernetes API: not persisted (the API server is their store).
    k8s: Policies,
}

/// A checked batch, ready to [`PolicyManager::commit`]. It holds the change lock: nothing
/// else changes the policies until it is committed or dropped (dropping applies nothing).
pub struct Prepared<'a> {
    docs: MutexGuard<'a, Docs>,
    /// The API's policies and the engine once committed; `None` when nothing changes.
    next: Option<(Policies, PolicyEngine)>,
    outcomes: Vec<PolicyOutcome>,
    warnings: Vec<ManifestError>,
}

impl fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("outcomes", &self.outcomes)
            .field("changes", &self.next.is_some())
            .finish_non_exhaustive()
    }
}

/// What a committed batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// One outcome per policy.
    pub outcomes: Vec<PolicyOutcome>,
    /// Warnings, with file, document and field.
    pub warnings: Vec<String>,
    /// Whether the policies in force changed.
    pub changed: bool,
}

/// The node's network policies.
pub struct PolicyManager {
    settings: PolicySettings,
    datapath: Arc<dyn Datapath>,
    store: PolicyStore,
    docs: Mutex<Docs>,
    engine: Mutex<PolicyEngine>,
    /// The node's own addresses: discovered ones and `--node-ip`.
    addresses: Mutex<BTreeSet<Ipv4Addr>>,
    /// Serialises reconciliations, so that an older view never overwrites a newer one.
    reconcile_lock: Mutex<()>,
    health: Mutex<Health>,
    /// The manifest directory as last read.
    dir_watch: Mutex<manifest_dir::DirWatch>,
    /// What other nodes of the cluster hold (multi-node): their endpoints' identities and
    /// addresses.
    cluster: Mutex<ClusterInputs>,
    /// The labels of the Namespace objects in force (from the Service store), added to
    /// identities' labels (see [`namespaces`]).
    namespaces: Mutex<NamespaceLabels>,
    /// Bumped on every change of policies, node addresses, namespaces or the cluster.
    generation: AtomicU64,
    /// Every endpoint's L7 redirects, and the proxy they are pushed to.
    l7: Mutex<L7State>,
    /// Bumped when the numbered rules or the CIDR identities may have changed: the observer
    /// rebuilds its names of them (see [`PolicyManager::flow_names`]).
    names_changed: tokio::sync::watch::Sender<u64>,
}

/// What flows name from policy: the policy of every numbered rule, the labels of the CIDR
/// identities, and the revision they belong to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowNames {
    /// Rule number → the policy holding the rule, and the policy object's uid (set by the
    /// Kubernetes API server; none for policies from the API or the manifest directory).
    pub rules: Vec<(u32, PolicyRef, Option<String>)>,
    /// CIDR identity → labels (`cidr:`, `reserved:world`, and `fqdn:` for learned addresses),
    /// as flows show them.
    pub cidr_identities: Vec<(NumericIdentity, Vec<String>)>,
    /// The policy revision these were read at.
    pub revision: u64,
}

/// What the cluster adds to policy (multi-node): the identities of endpoints on other nodes,
/// which selectors must see, and the ipcache entries of their addresses (identity and the
/// node to tunnel to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterInputs {
    /// Identities in use anywhere in the cluster, with their labels.
    pub identities: IdentityLabels,
    /// Addresses of other nodes' endpoints, and other nodes' own addresses.
    pub ipcache: Vec<bpf_policy::IpcacheEntry>,
    /// Other nodes' endpoints, for `policy trace` to name them by pod.
    pub endpoints: Vec<RemoteEndpoint>,
}

/// An endpoint of another node, as the cluster's kvstore publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its identity.
    pub identity: NumericIdentity,
    /// The node it lives on.
    pub node: String,
    /// Its pod, when the runtime named one.
    pub pod: Option<ciliate_model::PodRef>,
}

impl fmt::Debug for PolicyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyManager")
            .field("settings", &self.settings)
            .field("store", &self.store.path())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change is made on copies and swapped in whole, so the data behind a poisoned lock
    // is consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PolicyManager {
    /// Loads `policies.json` from `state_dir` (none: no policies yet) and reads the manifest
    /// directory once. The datapath is not touched: [`PolicyManager::reconcile`] does that.
    pub fn open(
        settings: PolicySettings,
        state_dir: &Path,
        datapath: Arc<dyn Datapath>,
    ) -> Result<Self, PolicyOpenError> {
        let store = PolicyStore::new(state_dir);
        let path = store.path().to_owned();
        let inconsistent = |message: String| PolicyOpenError::Inconsistent {
            path: path.clone(),
            message,
        };
        let persisted = store.load()?.unwrap_or_default();
        let restore = |docs: &[ApplyDocument]| {
            load_documents(docs)
                .map(stored)
                .map_err(|e| inconsistent(report(&e, "the agent does not start from it")))
        };
        let api = restore(&persisted.api)?;
        let dir = restore(&persisted.manifest_dir)?;
        let mut engine = PolicyEngine::new(ciliate_policy::Config {
            proxy_ports: settings.proxy_ports,
            ..ciliate_policy::Config::default()
        });
        engine.restore_cidr_identities(persisted.cidr_identities.iter().copied());
        let errors = sync_engine(&mut engine, &dir, &Policies::new(), &api);
        if !errors.is_empty() {
            return Err(inconsistent(report(
                &errors,
                "the agent does not start from it",
            )));
        }
        info!(
            state = %path.display(),
            api_policies = api.len(),
            manifest_dir_policies = dir.len(),
            cidr_identities = persisted.cidr_identities.len(),
            "policies loaded"
        );
        let addresses = settings.node_ips.iter().copied().collect();
        let proxy_ports = engine.config().proxy_ports;
        let manager = Self {
            settings,
            datapath,
            store,
            docs: Mutex::new(Docs {
                api,
                dir,
                k8s: Policies::new(),
            }),
            engine: Mutex::new(engine),
            addresses: Mutex::new(addresses),
            cluster: Mutex::default(),
            namespaces: Mutex::default(),
            reconcile_lock: Mutex::new(()),
            health: Mutex::new(Health::default()),
            dir_watch: Mutex::new(manifest_dir::DirWatch::default()),
            generation: AtomicU64::new(1),
            l7: Mutex::new(L7State::new(proxy_ports)),
            names_changed: tokio::sync::watch::Sender::new(0),
        };
        if !manager.reload_dir() {
            // Proves the directory writable before any request, and records the CIDR
            // identities as the engine numbers them.
            let docs = lock(&manager.docs);
            let mut engine = lock(&manager.engine);
            manager.save(&docs.api, &docs.dir, &mut engine)?;
        }
        Ok(manager)
    }

    /// The settings in force.
    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }

    fn save(
        &self,
        api: &Policies,
        dir: &Policies,
        engine: &mut PolicyEngine,
    ) -> Result<(), StateError> {
        let cidr = engine
            .resolve(&IdentityLabels::new(), &NamedPorts::new())
            .ipcache();
        self.store.save(&PersistedPolicies {
            version: POLICIES_VERSION,
            api: api.values().map(Stored::document).collect(),
            manifest_dir: dir.values().map(Stored::document).collect(),
            cidr_identities: cidr,
        })
    }

    /// Checks a batch of policy documents (apply, or with `delete` delete) against the
    /// policies in force and prepares the change, without applying anything. Every problem is
    /// reported at once.
    pub fn prepare(
        &self,
        docs: &[ApplyDocument],
        delete: bool,
    ) -> Result<Prepared<'_>, Vec<ManifestError>> {
        let guard = lock(&self.docs);
        let mut errors = Vec::new();
        let mut outcomes = Vec::new();
        let mut warnings = Vec::new();
        let mut api = guard.api.clone();
        let owned = |r: &PolicyRef, source: &str, index: usize, verb: &str| {
            let reason = match guard.dir.get(r) {
                Some(owner) => format!(
                    "managed by the manifest directory (file {}); {verb} it there",
                    owner.source
                ),
                None if guard.k8s.contains_key(r) => {
                    format!("managed by the Kubernetes API; {verb} it there (kubectl)")
                }
                None => return None,
            };
            Some(ManifestError {
                source: source.to_owned(),
                index,
                object: r.to_string(),
                path: String::new(),
                reason,
            })
        };
        if delete {
            for d in docs {
                let refs = match identify(d) {
                    Ok(r) => r,
                    Err(e) => {
                        errors.extend(e);
                        continue;
                    }
                };
                for r in refs {
                    if !api.contains_key(&r) {
                        if let Some(e) = owned(&r, &d.source, d.index, "remove") {
                            errors.push(e);
                            continue;
                        }
                    }
                    let action = if api.remove(&r).is_some() {
                        ApplyAction::Deleted
                    } else {
                        ApplyAction::NotFound
                    };
                    outcomes.push(PolicyOutcome {
                        policy: r,
                        action,
                        source: d.source.clone(),
                        index: d.index,
                    });
                }
            }
        } else {
            let loaded = load_documents(docs)?;
            warnings = loaded.warnings.clone();
            for (r, s) in stored(loaded) {
                if let Some(e) = owned(&r, &s.source, s.index, "change") {
                    errors.push(e);
                    continue;
                }
                let action = match guard.api.get(&r) {
                    None => ApplyAction::Created,
                    Some(old) if old.resource == s.resource => ApplyAction::Unchanged,
                    Some(_) => ApplyAction::Configured,
                };
                outcomes.push(PolicyOutcome {
                    policy: r.clone(),
                    action,
                    source: s.source.clone(),
                    index: s.index,
                });
                if action == ApplyAction::Unchanged {
                    // Keep where it was first applied from, and its warnings as they were.
                    continue;
                }
                api.insert(r, s);
            }
            // Document order, as kubectl prints.
            outcomes.sort_by(|a, b| (&a.source, a.index).cmp(&(&b.source, b.index)));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let changed = outcomes
            .iter()
            .any(|o| !matches!(o.action, ApplyAction::Unchanged | ApplyAction::NotFound));
        let next = if changed {
            let mut engine = lock(&self.engine).clone();
            let errors = sync_engine(&mut engine, &guard.dir, &guard.k8s, &api);
            if !errors.is_empty() {
                return Err(errors);
            }
            Some((api, engine))
        } else {
            None
        };
        Ok(Prepared {
            docs: guard,
            next,
            outcomes,
            warnings,
        })
    }

    /// Persists a prepared batch and puts it in force in the engine (the datapath follows with
    /// the next [`PolicyManager::reconcile`]). Warnings are logged.
    pub fn commit(&self, mut p: Prepared<'_>) -> Result<Committed, PolicyError> {
        let changed = p.next.is_some();
        if let Some((api, mut engine)) = p.next.take() {
            self.save(&api, &p.docs.dir, &mut engine)
                .map_err(PolicyError::State)?;
            p.docs.api = api;
            *lock(&self.engine) = engine;
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.names_changed();
        }
        drop(p.docs);
        for o in &p.outcomes {
            if o.action != ApplyAction::Unchanged {
                info!(policy = %o.policy, source = %o.source, "policy {}", o.action);
            }
        }
        let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
        for w in &warnings {
            warn!("policy accepted with a field not enforced as written: {w}");
        }
        Ok(Committed {
            outcomes: p.outcomes,
            warnings,
            changed,
        })
    }

    /// [`PolicyManager::prepare`] and [`PolicyManager::commit`] in one.
    pub fn apply(&self, docs: &[ApplyDocument], delete: bool) -> Result<Committed, PolicyError> {
        let prepared = self.prepare(docs, delete).map_err(PolicyError::Invalid)?;
        self.commit(prepared)
    }

    /// Makes the policies from the Kubernetes API these documents. The API server has already
    /// accepted them, so one this agent cannot enforce is left out with a warning rather than
    /// refusing the rest; returns those warnings. Whether the policies in force changed is
    /// seen in [`PolicyManager::needs_reconcile`].
    pub fn set_kubernetes(&self, docs: &[ApplyDocument]) -> Vec<String> {
        let mut next = Policies::new();
        let mut problems = Vec::new();
        for d in docs {
            match load_documents(std::slice::from_ref(d)) {
                Ok(loaded) => next.extend(stored(loaded)),
                Err(errors) => {
                    problems.extend(errors.iter().map(|e| {
                        format!("{e}; this policy from the Kubernetes API is not enforced")
                    }))
                }
            }
        }
        let mut docs = lock(&self.docs);
        if next == docs.k8s {
            return problems;
        }
        let mut engine = lock(&self.engine).clone();
        let mut errors = sync_engine(&mut engine, &docs.dir, &next, &docs.api);
        if !errors.is_empty() {
            // Rules the engine refuses (checked per policy above, so rarely): leave those out.
            for e in &errors {
                next.retain(|r, _| r.to_string() != e.object);
            }
            engine = lock(&self.engine).clone();
            errors = sync_engine(&mut engine, &docs.dir, &next, &docs.api);
            problems.extend(errors.iter().map(ToString::to_string));
        }
        docs.k8s = next;
        *lock(&self.engine) = engine;
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.names_changed();
        problems
    }

    /// Reads the manifest directory's policies when it changed; returns whether the policies
    /// in force changed. Problems are logged and kept for the status; the last good set stays.
    pub fn reload_dir(&self) -> bool {
        let Some(dir) = self.settings.manifest_dir.clone() else {
            return false;
        };
        manifest_dir::reload(
            &dir,
            "policies",
            &self.dir_watch,
            |d| is_policy_document(&d.object),
            |docs| {
                let docs = docs.all();
                let next = load_documents(&docs)
                    .map(stored)
                    .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
                let mut docs = lock(&self.docs);
                if next == docs.dir {
                    return Ok(false);
                }
                let mut engine = lock(&self.engine).clone();
                let errors = sync_engine(&mut engine, &next, &docs.k8s, &docs.api);
                if !errors.is_empty() {
                    return Err(errors.iter().map(ToString::to_string).collect());
                }
                self.save(&docs.api, &next, &mut engine)
                    .map_err(|e| vec![e.to_string()])?;
                for s in next.values() {
                    for w in &s.warnings {
                        warn!(file = %s.source, "policy accepted with a field not enforced as written: {w}");
                    }
                }
                docs.dir = next;
                *lock(&self.engine) = engine;
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.names_changed();
                Ok(true)
            },
        )
    }

    /// Sets the node addresses found on its interfaces (`--node-ip` ones are always kept);
    /// returns whether they changed.
    pub fn set_discovered_addresses(&self, found: impl IntoIterator<Item = Ipv4Addr>) -> bool {
        let mut next: BTreeSet<Ipv4Addr> = found.into_iter().collect();
        next.extend(self.settings.node_ips.iter().copied());
        let mut cur = lock(&self.addresses);
        if *cur == next {
            return false;
        }
        info!(addresses = ?next, "node addresses (identity host in the ipcache)");
        *cur = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Sets what the cluster holds; returns whether it changed (then the next reconciliation
    /// writes it).
    pub fn set_cluster(&self, next: ClusterInputs) -> bool {
        let mut cur = lock(&self.cluster);
        if *cur == next {
            return false;
        }
        *cur = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Sets the labels of the Namespace objects in force; returns whether they changed (then
    /// the policies must be reconciled: selectors on namespace labels may select other pods).
    pub fn set_namespaces(&self, next: NamespaceLabels) -> bool {
        let mut cur = lock(&self.namespaces);
        if *cur == next {
            return false;
        }
        *cur = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// `local` (the node's endpoint identities) with the cluster's added: a label set has one
    /// number cluster-wide, so the two never disagree; the node's own win if they ever did.
    /// Every identity carries its namespace's labels (see [`namespaces`]).
    pub fn with_cluster_identities(&self, local: &IdentityLabels) -> IdentityLabels {
        let mut all = lock(&self.cluster).identities.clone();
        all.extend(local.iter().map(|(id, l)| (*id, l.clone())));
        namespaces::identities_with_namespace_labels(all, &lock(&self.namespaces))
    }

    /// `labels` of an endpoint's identity with its namespace's labels, as policy sees them.
    pub fn effective_labels(&self, labels: &Labels) -> Labels {
        namespaces::with_namespace_labels(labels, &lock(&self.namespaces))
    }

    /// The node's own addresses.
    pub fn node_addresses(&self) -> BTreeSet<Ipv4Addr> {
        lock(&self.addresses).clone()
    }

    /// The ipcache the datapath holds once reconciled: what [`PolicyManager::reconcile`]
    /// writes, for `policy trace` to resolve addresses exactly as the datapath does.
    pub fn datapath_ipcache(&self) -> Vec<bpf_policy::IpcacheEntry> {
        let cidr = lock(&self.engine)
            .resolve(&IdentityLabels::new(), &NamedPorts::new())
            .ipcache4();
        self.ipcache(cidr)
    }

    /// Other nodes' endpoints (multi-node).
    pub fn remote_endpoints(&self) -> Vec<RemoteEndpoint> {
        lock(&self.cluster).endpoints.clone()
    }

    /// The identities of other nodes' endpoints, with their labels as policy sees them.
    pub fn cluster_identities(&self) -> IdentityLabels {
        let all = lock(&self.cluster).identities.clone();
        namespaces::identities_with_namespace_labels(all, &lock(&self.namespaces))
    }

    /// The ipcache the datapath should hold: the CIDR identities, and the node's addresses as
    /// `host` (which wins over a CIDR naming the same /32).
    fn ipcache(&self, cidr: Vec<bpf_policy::IpcacheEntry>) -> Vec<bpf_policy::IpcacheEntry> {
        let mut by_prefix: BTreeMap<Ipv4Net, bpf_policy::IpcacheEntry> =
            cidr.into_iter().map(|e| (e.prefix, e)).collect();
        // A pod's address is the pod's identity even where a CIDR rule names it.
        for e in &lock(&self.cluster).ipcache {
            by_prefix.insert(e.prefix, e.clone());
        }
        for a in lock(&self.addresses).iter() {
            let prefix = Ipv4Net::from(*a);
            by_prefix.insert(
                prefix,
                bpf_policy::IpcacheEntry {
                    prefix,
                    identity: ReservedIdentity::Host.id(),
                    tunnel_endpoint: None,
                },
            );
        }
        by_prefix.into_values().collect()
    }

    /// Computes and writes the policy of one endpoint, against `identities` (every endpoint
    /// identity of the node, the endpoint's own included). For a new endpoint, before it is
    /// reported created.
    pub fn program_endpoint(
        &self,
        spec: &EndpointSpec,
        identities: &IdentityLabels,
        named_ports: &NamedPorts,
    ) -> Result<PolicySyncStats, DatapathError> {
        let identities = self.with_cluster_identities(identities);
        let revision = self.generation.load(Ordering::SeqCst);
        let (policy, redirects) = {
            let mut engine = lock(&self.engine);
            let resolved = engine.resolve(&identities, named_ports);
            let result = resolved.endpoint_policy(spec.identity);
            (resolved.to_map(&result), result.redirects)
        };
        // The proxy has the rules before the datapath sends it connections.
        lock(&self.l7).set_endpoint(
            spec.id,
            ciliate_policy::l7::for_endpoint(&redirects, spec.id, spec.ipv4),
            revision,
        );
        self.datapath.set_endpoint_policy(spec, &policy)
    }

    /// Puts a restored FQDN cache in the engine before the first reconciliation, keeping the
    /// CIDR identity numbers the pinned ipcache gives its addresses.
    pub fn restore_fqdn(&self, names: BTreeMap<String, BTreeSet<Ipv4Addr>>) {
        let ips: BTreeSet<Ipv4Addr> = names.values().flatten().copied().collect();
        let pinned = match self.datapath.ipcache() {
            Ok(entries) => entries,
            Err(e) => {
                warn!(error = %e, "cannot read the ipcache; learned FQDN addresses may be renumbered");
                Vec::new()
            }
        };
        let adopt = pinned
            .into_iter()
            .filter(|e| e.prefix.prefix_len() == 32 && ips.contains(&e.prefix.addr()))
            .map(|e| ciliate_model::policy::IpcacheEntry {
                prefix: ipnet::IpNet::V4(e.prefix),
                identity: e.identity,
            });
        let _docs = lock(&self.docs);
        let mut engine = lock(&self.engine);
        engine.adopt_cidr_identities(adopt);
        engine.set_fqdn_names(names);
    }

    /// The addresses the FQDN cache holds for `name` (normalized), as policy sees them.
    pub fn fqdn_ips(&self, name: &str) -> Vec<Ipv4Addr> {
        lock(&self.engine)
            .fqdn_ips(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Sets the addresses of the FQDN cache's changed names (none: forgotten) and writes the
    /// policy of the endpoints that can see the change (see
    /// [`ciliate_policy::Resolved::fqdn_affects`]), the ipcache's new prefixes first. Returns
    /// how many endpoints were written. Names no `toFQDNs` selects change no map.
    pub fn update_fqdn(
        &self,
        changes: &BTreeMap<String, BTreeSet<Ipv4Addr>>,
        node: impl FnOnce() -> NodeEndpoints,
    ) -> Result<usize, String> {
        if changes.is_empty() {
            return Ok(0);
        }
        // The docs lock keeps a batch that copies the engine from swapping in a copy without
        // these names.
        let _docs = lock(&self.docs);
        let _serial = lock(&self.reconcile_lock);
        let (names, ips) = {
            let mut engine = lock(&self.engine);
            let mut names = BTreeSet::new();
            let mut ips = BTreeSet::new();
            for (name, next) in changes {
                let before = engine.fqdn_ips(name).cloned().unwrap_or_default();
                if engine.set_fqdn_name(name, next.clone()) && engine.fqdn_selected(name) {
                    names.insert(name.clone());
                    ips.extend(before.symmetric_difference(next).copied());
                }
            }
            (names, ips)
        };
        if names.is_empty() {
            return Ok(0);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let node = node();
        let identities = self.with_cluster_identities(&node.identities);
        let (policies, cidr_before, cidr) = {
            let mut engine = lock(&self.engine);
            let cidr_before = engine.cidr_ipcache4();
            let resolved = engine.resolve(&identities, &node.named_ports);
            let mut policies: BTreeMap<NumericIdentity, Option<(_, Vec<L7Redirect>)>> =
                BTreeMap::new();
            for ep in &node.endpoints {
                policies.entry(ep.identity).or_insert_with(|| {
                    resolved.fqdn_affects(ep.identity, &names, &ips).then(|| {
                        let result = resolved.endpoint_policy(ep.identity);
                        (resolved.to_map(&result), result.redirects)
                    })
                });
            }
            (policies, cidr_before, resolved.ipcache4())
        };
        // New addresses have CIDR identities now, named before their flows come.
        self.names_changed();
        let want = self.ipcache(cidr);
        // New prefixes first, as in a reconciliation; gone ones after the policies. What the
        // datapath holds is what the last computation wanted (the datapath writes only the
        // difference from what it wrote last): reading the map back would cost two syscalls
        // per entry, per learned address.
        let old = self.ipcache(cidr_before);
        let mut union: BTreeMap<Ipv4Net, bpf_policy::IpcacheEntry> =
            old.iter().map(|e| (e.prefix, e.clone())).collect();
        union.extend(want.iter().map(|e| (e.prefix, e.clone())));
        let union: Vec<_> = union.into_values().collect();
        if union != old {
            self.datapath
                .sync_ipcache(&union)
                .map_err(|e| format!("cannot write the ipcache: {e}"))?;
        }
        let mut written = 0;
        let mut errors = Vec::new();
        for ep in &node.endpoints {
            let Some(Some((policy, redirects))) = policies.get(&ep.identity) else {
                continue;
            };
            lock(&self.l7).set_endpoint(
                ep.id,
                ciliate_policy::l7::for_endpoint(redirects, ep.id, ep.ipv4),
                generation,
            );
            match self.datapath.set_endpoint_policy(ep, policy) {
                Ok(_) => written += 1,
                Err(e) => errors.push(format!(
                    "cannot write the policy of endpoint {} ({}): {e}",
                    ep.id, ep.ifname
                )),
            }
        }
        if !errors.is_empty() {
            // The next reconciliation retries the whole node.
            lock(&self.health).reconcile_error = Some(errors.join("; "));
            return Err(errors.join("; "));
        }
        if union != want {
            self.datapath
                .sync_ipcache(&want)
                .map_err(|e| format!("cannot write the ipcache: {e}"))?;
        }
        Ok(written)
    }

    /// Attaches the L7 proxy's side (the proxy supervisor): `sink` receives a
    /// [`ProxyCommand::Snapshot`] of every redirect now, then a [`ProxyCommand::Endpoint`] for
    /// every endpoint whose redirects change, in order.
    pub fn attach_l7_sink(&self, sink: Box<dyn L7Sink>) {
        lock(&self.l7).attach(sink);
    }

    /// Detaches the proxy's side: redirects are still computed (and refused by the datapath
    /// with no proxy to take them); `status` says so.
    pub fn detach_l7_sink(&self) {
        lock(&self.l7).detach();
    }

    /// Every redirect in force, as a proxy (re)connecting must receive first.
    pub fn l7_snapshot(&self) -> ProxyCommand {
        lock(&self.l7).snapshot()
    }

    /// One endpoint's redirects.
    pub fn l7_redirects(&self, endpoint: u16) -> Vec<L7Redirect> {
        lock(&self.l7).endpoint(endpoint).to_vec()
    }

    /// Waits (at most `limit`) until the node's proxy confirms the redirects `endpoint` has now,
    /// so its first connection finds its rules there; true when confirmed or there is nothing
    /// to wait for. On a timeout the datapath still refuses what the proxy cannot judge.
    pub async fn wait_l7_applied(&self, endpoint: u16, limit: std::time::Duration) -> bool {
        let Some((revision, mut applied)) = lock(&self.l7).pending(endpoint) else {
            return true;
        };
        tokio::time::timeout(limit, applied.wait_for(|a| *a >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Records the proxy process's state (from its supervisor), for `status`.
    pub fn set_proxy_health(&self, health: ProxyHealth) {
        lock(&self.l7).set_health(health);
    }

    /// The policy revision and the one in force on every endpoint.
    pub fn revision(&self) -> PolicyRevision {
        PolicyRevision {
            revision: self.generation.load(Ordering::SeqCst),
            in_force: lock(&self.health).reconciled.unwrap_or(0),
        }
    }

    /// Whether the datapath may not hold the current policies (a change since the last
    /// reconciliation, or a failed one to retry).
    pub fn needs_reconcile(&self) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        let h = lock(&self.health);
        h.reconciled != Some(generation) || h.reconcile_error.is_some()
    }

    /// Writes every endpoint's policy and the ipcache. `node` is called once the previous
    /// reconciliation is done, so the view it gives is never older than one already written.
    /// A failure is kept for the status and retried by the caller's loop.
    pub fn reconcile(
        &self,
        node: impl FnOnce() -> NodeEndpoints,
    ) -> Result<ReconcileStats, String> {
        let _serial = lock(&self.reconcile_lock);
        let generation = self.generation.load(Ordering::SeqCst);
        let l7_mark = lock(&self.l7).mark();
        let node = node();
        let started = Instant::now();
        let identities = self.with_cluster_identities(&node.identities);
        let (policies, cidr, notes) = {
            let mut engine = lock(&self.engine);
            let resolved = engine.resolve(&identities, &node.named_ports);
            let mut policies: BTreeMap<NumericIdentity, (_, Vec<L7Redirect>)> = BTreeMap::new();
            let mut notes = BTreeSet::new();
            for ep in &node.endpoints {
                policies.entry(ep.identity).or_insert_with(|| {
                    let result = resolved.endpoint_policy(ep.identity);
                    notes.extend(result.notes.iter().cloned());
                    (resolved.to_map(&result), result.redirects)
                });
            }
            (policies, resolved.ipcache4(), notes)
        };
        self.names_changed();
        for n in &notes {
            debug!("policy note: {n}");
        }
        let want = self.ipcache(cidr);
        let mut stats = ReconcileStats::default();
        let mut errors = Vec::new();
        let mut add = |s: PolicySyncStats| {
            stats.written += s.written;
            stats.deleted += s.deleted;
        };
        // New prefixes first: a policy never names an identity no address has yet. Old ones
        // stay until no policy names them.
        match self.datapath.ipcache() {
            Ok(old) => {
                let mut union: BTreeMap<Ipv4Net, bpf_policy::IpcacheEntry> =
                    old.iter().map(|e| (e.prefix, e.clone())).collect();
                union.extend(want.iter().map(|e| (e.prefix, e.clone())));
                let union: Vec<_> = union.into_values().collect();
                if union != old {
                    match self.datapath.sync_ipcache(&union) {
                        Ok(s) => add(s),
                        Err(e) => errors.push(format!("cannot write the ipcache: {e}")),
                    }
                }
            }
            Err(e) => errors.push(format!("cannot read the ipcache: {e}")),
        }
        for ep in &node.endpoints {
            let Some((policy, redirects)) = policies.get(&ep.identity) else {
                continue;
            };
            // The proxy has the rules before the datapath sends it connections.
            lock(&self.l7).set_endpoint(
                ep.id,
                ciliate_policy::l7::for_endpoint(redirects, ep.id, ep.ipv4),
                generation,
            );
            match self.datapath.set_endpoint_policy(ep, policy) {
                Ok(s) => {
                    if s.written + s.deleted > 0 {
                        stats.endpoints += 1;
                    }
                    add(s);
                }
                Err(e) => errors.push(format!(
                    "cannot write the policy of endpoint {} ({}): {e}",
                    ep.id, ep.ifname
                )),
            }
        }
        // Endpoints gone since: their redirects go (those written after the view was taken,
        // by a new endpoint's creation, stay).
        let present: BTreeSet<u16> = node.endpoints.iter().map(|e| e.id).collect();
        lock(&self.l7).retain(&present, l7_mark, generation);
        if errors.is_empty() {
            match self.datapath.sync_ipcache(&want) {
                Ok(s) => add(s),
                Err(e) => errors.push(format!("cannot write the ipcache: {e}")),
            }
        }
        let mut h = lock(&self.health);
        if errors.is_empty() {
            if h.reconcile_error.take().is_some() {
                info!("policies are in force again");
            }
            h.reconciled = Some(generation);
            debug!(
                endpoints = node.endpoints.len(),
                changed = stats.endpoints,
                written = stats.written,
                deleted = stats.deleted,
                elapsed_us = started.elapsed().as_micros() as u64,
                "policy reconciled"
            );
            Ok(stats)
        } else {
            let text = errors.join("; ");
            warn!(error = %text, "cannot put the policies in force; retrying");
            h.reconcile_error = Some(text.clone());
            Err(text)
        }
    }

    /// Every policy in force, with how many of `node`'s endpoints it selects.
    pub fn list(&self, node: &NodeEndpoints) -> Vec<PolicyView> {
        let docs = lock(&self.docs);
        let mut selecting: BTreeMap<PolicyRef, usize> = BTreeMap::new();
        {
            let identities = self.with_cluster_identities(&node.identities);
            let mut engine = lock(&self.engine);
            let resolved = engine.resolve(&identities, &node.named_ports);
            let mut per_identity: BTreeMap<NumericIdentity, usize> = BTreeMap::new();
            for ep in &node.endpoints {
                *per_identity.entry(ep.identity).or_default() += 1;
            }
            for (id, count) in per_identity {
                let p = resolved.endpoint_policy(id).policy;
                let by: BTreeSet<&PolicyRef> = p
                    .ingress
                    .selected_by
                    .iter()
                    .chain(p.egress.selected_by.iter())
                    .collect();
                for r in by {
                    *selecting.entry(r.clone()).or_default() += count;
                }
            }
        }
        effective(&docs.dir, &docs.k8s, &docs.api)
            .into_iter()
            .map(|(r, s)| PolicyView {
                policy: r.clone(),
                source: if docs.dir.contains_key(r) {
                    s.source.clone()
                } else if docs.k8s.contains_key(r) {
                    crate::services::KUBERNETES_SOURCE.to_owned()
                } else {
                    API_SOURCE.to_owned()
                },
                endpoints: selecting.get(r).copied().unwrap_or(0),
                warnings: s.warnings.clone(),
            })
            .collect()
    }

    /// One policy in force.
    pub fn get(&self, policy: &PolicyRef) -> Option<PolicyResource> {
        lock(&self.engine).get(policy).cloned()
    }

    /// The rule a map entry's rule number stands for.
    pub fn rule(&self, id: u32) -> Option<RuleRef> {
        lock(&self.engine).rule(id).cloned()
    }

    fn names_changed(&self) {
        self.names_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever [`PolicyManager::flow_names`] may answer differently: policies put in
    /// force, CIDR identities allocated (a reconciliation, a learned FQDN address).
    pub fn subscribe_names(&self) -> tokio::sync::watch::Receiver<u64> {
        self.names_changed.subscribe()
    }

    /// The names flows give rule numbers and CIDR identities, read at once (one short hold
    /// of the engine).
    pub fn flow_names(&self) -> FlowNames {
        let revision = self.generation.load(Ordering::SeqCst);
        let engine = lock(&self.engine);
        let rules = engine
            .rules()
            .map(|(id, r)| {
                let uid = engine
                    .get(&r.policy)
                    .and_then(|p| p.uid().map(str::to_owned));
                (id, r.policy.clone(), uid)
            })
            .collect();
        // As strings at once: the `Labels` of 10,000 learned addresses took 8 MB, held while
        // the observer built its table from them.
        let mut cidr_identities = Vec::new();
        engine.each_cidr_identity_labels(|id, labels| {
            cidr_identities.push((id, labels.iter().map(|l| l.to_string()).collect()));
        });
        FlowNames {
            rules,
            cidr_identities,
            revision,
        }
    }

    /// The CIDR identities the policies use, with their labels.
    pub fn cidr_identities(&self) -> Vec<Identity> {
        lock(&self.engine)
            .resolve(&IdentityLabels::new(), &NamedPorts::new())
            .cidr_identities()
    }

    /// Counts and problems.
    pub fn status(&self) -> PolicyStatus {
        let policies = lock(&self.engine).policies().count();
        let shadowed: Vec<String> = {
            let d = lock(&self.docs);
            d.api
                .keys()
                .filter_map(|k| d.dir.get(k).map(|s| (k, s)))
                .map(|(k, s)| {
                    format!(
                        "{k} is defined both through the API and by {}; the file's copy is in force",
                        s.source
                    )
                })
                .collect()
        };
        let mut problems: Vec<String> = lock(&self.dir_watch)
            .problems
            .iter()
            .map(|p| format!("manifest directory: {p}"))
            .collect();
        let h = lock(&self.health);
        if let Some(e) = &h.reconcile_error {
            problems.push(format!("cannot put the policies in force: {e}; retrying"));
        }
        problems.extend(shadowed);
        let l7 = lock(&self.l7);
        problems.extend(l7.problems());
        PolicyStatus {
            policies,
            problems,
            proxy: l7.status(),
        }
    }

    /// The labels of a reserved, cluster (other nodes') or CIDR identity.
    pub fn identity_labels(&self, id: NumericIdentity) -> Option<Labels> {
        if let Some(r) = ReservedIdentity::from_id(id) {
            return Some(r.labels());
        }
        if let Some(l) = lock(&self.cluster).identities.get(&id) {
            return Some(self.effective_labels(l));
        }
        self.cidr_identities()
            .into_iter()
            .find(|i| i.id == id)
            .map(|i| i.labels)
    }
}

#[cfg(test)]
mod tests;
