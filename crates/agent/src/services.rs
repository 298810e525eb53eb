//! Services: the store of Kubernetes Service, EndpointSlice and Endpoints objects, and the
//! reconciler that turns them into the datapath's load-balancing state.
//!
//! Objects come from two sources, each replaced as a whole batch:
//!
//! * the API (`POST /v1/manifests`, what `ciliate apply|delete -f` sends): a batch with any
//!   invalid document applies nothing and answers every problem; applied objects are
//!   persisted in `services.json` (see [`store`]) before the answer, so a restart keeps them;
//! * `--manifest-dir` (see [`manifest_dir`]): polled every [`POLL_INTERVAL`]; when a file
//!   changes, the directory's objects (its policies aside, which are
//!   [`crate::policy`]'s) replace its previous set, unless a file is invalid, in
//!   which case the last good set stays in force and the problems are logged and reported in
//!   the status. An object the directory defines cannot be changed through the API.
//!
//! After every change `crates/lb` computes the [`LbState`](ciliate_model::lb::LbState) with
//! ids from a persisted allocator (stable across restarts), and the datapath is synced to it.
//! A failed sync is reported (log, status) and retried on the next change or poll; the
//! objects stay applied.
//!
//! `v1/Namespace` objects are stored here too (same sources, same persistence); their labels
//! are handed to the policy store ([`ServiceManager::attach_policy`]), which adds them to
//! pods' identity labels.
//!
//! The methods block (fsync, datapath syscalls): async callers use `spawn_blocking`.

pub mod manifest_dir;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ciliate_datapath::Datapath;
use ciliate_lb::{compute, ConflictKind, IdAllocator, LbError, LbPlan, Node};
use ciliate_model::k8s::{Kind, Object, ObjectKey};
use ciliate_model::manifest::{
    decode_all, identify, report, ApplyAction, ApplyDocument, ApplyOutcome, ApplyRequest,
    ApplyResult, ManifestError,
};
use ciliate_model::service::ServiceView;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::state::StateError;
use store::{PersistedServices, ServiceStore, SERVICES_VERSION};

/// How often the manifest directory is checked for changes, and a failed datapath sync retried.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// `source` of the views of Services applied through the API.
pub const API_SOURCE: &str = "api";

/// Settings of the Service store, from the agent's configuration.
#[derive(Clone, Debug, Default)]
pub struct ServiceSettings {
    /// This node's name (for `Local` traffic policies).
    pub node_name: String,
    /// Node addresses NodePort Services answer on.
    pub node_ips: Vec<Ipv4Addr>,
    /// The manifest directory, if any.
    pub manifest_dir: Option<PathBuf>,
}

/// Why a request on Services failed. [`ServiceError::kind`] is the API's error kind.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Documents are invalid; nothing was applied.
    #[error("{}", report(.0, "nothing was applied"))]
    Invalid(Vec<ManifestError>),
    /// Ids ran out; nothing was applied.
    #[error("{0}; nothing was applied")]
    Exhausted(#[source] LbError),
    /// The objects could not be persisted; nothing was applied.
    #[error("{0}; nothing was applied, retry once the state directory is writable")]
    State(#[source] StateError),
}

impl ServiceError {
    /// The stable `kind` of the API error body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Exhausted(_) => "exhausted",
            Self::State(_) => "state",
        }
    }
}

/// Why the Service store could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceOpenError {
    /// `services.json` could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// `services.json` holds objects or ids that do not validate.
    #[error("{path} is inconsistent: {message}; repair or remove it (removing it forgets the Services applied through the API)")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// An object and the document it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    object: Object,
    source: String,
    index: usize,
}

impl Stored {
    fn document(&self) -> ApplyDocument {
        ApplyDocument {
            source: self.source.clone(),
            index: self.index,
            object: self.object.to_value(),
        }
    }
}

type Objects = BTreeMap<ObjectKey, Stored>;

struct Tables {
    api: Objects,
    dir: Objects,
    ids: IdAllocator,
    plan: Arc<LbPlan>,
    /// Bumped on every change of `plan`.
    generation: u64,
}

#[derive(Debug, Default)]
struct Health {
    /// The manifest directory as last read, and its problems.
    dir: manifest_dir::DirWatch,
    /// Why the last datapath sync failed.
    sync_error: Option<String>,
    /// The generation the datapath holds.
    synced: Option<u64>,
}

/// Counts and problems for `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicesStatus {
    /// Services known.
    pub services: usize,
    /// Backends programmed.
    pub backends: usize,
    /// What is wrong.
    pub problems: Vec<String>,
}

/// The node's Services.
pub struct ServiceManager {
    settings: ServiceSettings,
    node: Node,
    datapath: Arc<dyn Datapath>,
    store: ServiceStore,
    tables: Mutex<Tables>,
    health: Mutex<Health>,
    /// Serialises datapath syncs, so that a slow one is never overtaken by an older state.
    sync_lock: Mutex<()>,
    /// The policy store, told the namespaces' labels after every change.
    policy: OnceLock<Arc<crate::policy::PolicyManager>>,
}

impl fmt::Debug for ServiceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceManager")
            .field("settings", &self.settings)
            .field("store", &self.store.path())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another request must not take the Service store down with it; every change
    // is made on copies and swapped in at the end, so the data behind a poisoned lock is whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stored(decoded: Vec<ciliate_model::manifest::Decoded>) -> Objects {
    decoded
        .into_iter()
        .map(|d| {
            (
                d.object.key(),
                Stored {
                    object: d.object,
                    source: d.source,
                    index: d.index,
                },
            )
        })
        .collect()
}

/// The objects in force: the directory's, then the API's it does not shadow.
fn effective<'a>(dir: &'a Objects, api: &'a Objects) -> impl Iterator<Item = &'a Object> {
    dir.values()
        .chain(
            api.iter()
                .filter(|(k, _)| !dir.contains_key(k))
                .map(|(_, s)| s),
        )
        .map(|s| &s.object)
}

/// Fills each view's `source`.
fn with_sources(mut plan: LbPlan, dir: &Objects, api: &Objects) -> LbPlan {
    for v in &mut plan.services {
        let key = ObjectKey {
            kind: Kind::Service,
            namespace: v.namespace.clone(),
            name: v.name.clone(),
        };
        v.source = match dir.get(&key) {
            Some(s) => s.source.clone(),
            None if api.contains_key(&key) => API_SOURCE.to_owned(),
            None => String::new(),
        };
    }
    plan
}

impl ServiceManager {
    /// Loads `services.json` from `state_dir` (none: no Services yet), reads the manifest
    /// directory once, and syncs the datapath. The directory is read before the first sync so
    /// that a restart never removes its Services from the datapath, even briefly; when it is
    /// broken, its last good set (persisted) stays in force. A failed sync is reported and
    /// retried, not fatal: pods keep their connectivity meanwhile.
    pub fn open(
        settings: ServiceSettings,
        state_dir: &Path,
        datapath: Arc<dyn Datapath>,
    ) -> Result<Self, ServiceOpenError> {
        let store = ServiceStore::new(state_dir);
        let path = store.path().to_owned();
        let inconsistent = |message: String| ServiceOpenError::Inconsistent {
            path: path.clone(),
            message,
        };
        let persisted = store.load()?.unwrap_or_default();
        let restore = |docs: &[ApplyDocument]| {
            decode_all(docs)
                .map(stored)
                .map_err(|e| inconsistent(report(&e, "the agent does not start from it")))
        };
        let api = restore(&persisted.api)?;
        let dir = restore(&persisted.manifest_dir)?;
        let mut ids =
            IdAllocator::restore(&persisted.ids).map_err(|e| inconsistent(e.to_string()))?;
        let node = Node {
            name: settings.node_name.clone(),
            addresses: settings.node_ips.clone(),
        };
        let plan = compute(effective(&dir, &api), &node, &mut ids)
            .map_err(|e| inconsistent(e.to_string()))?;
        let plan = with_sources(plan, &dir, &api);
        info!(
            state = %path.display(),
            api_objects = api.len(),
            manifest_dir_objects = dir.len(),
            services = plan.services.len(),
            "Services loaded"
        );
        let manager = Self {
            node,
            datapath,
            store,
            tables: Mutex::new(Tables {
                api,
                dir,
                ids,
                plan: Arc::new(plan),
                generation: 1,
            }),
            health: Mutex::new(Health::default()),
            sync_lock: Mutex::new(()),
            policy: OnceLock::new(),
            settings,
        };
        if !manager.reload_dir() {
            // Proves the directory writable before any request, and records a fresh node.
            let tables = lock(&manager.tables);
            manager.save(&tables.api, &tables.dir, &tables.ids)?;
        }
        if let Err(e) = manager.sync() {
            warn!(error = %e, "cannot program the Services into the datapath at start-up; retrying");
        }
        Ok(manager)
    }

    /// The settings in force.
    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }

    /// The labels of the Namespace objects in force, by name.
    pub fn namespace_labels(&self) -> crate::policy::namespaces::NamespaceLabels {
        let t = lock(&self.tables);
        crate::policy::namespaces::namespace_labels(effective(&t.dir, &t.api))
    }

    /// Hands the namespaces' labels to `policy`, now and after every change of them (the
    /// policy loop reconciles; `POST /v1/manifests` does before it answers). Returns whether
    /// they changed what policy knew.
    pub fn attach_policy(&self, policy: Arc<crate::policy::PolicyManager>) -> bool {
        let policy = self.policy.get_or_init(|| policy);
        policy.set_namespaces(self.namespace_labels())
    }

    /// Tells the attached policy store the namespaces' labels; whether they changed.
    pub fn push_namespaces(&self) -> bool {
        match self.policy.get() {
            Some(p) => p.set_namespaces(self.namespace_labels()),
            None => false,
        }
    }

    fn save(&self, api: &Objects, dir: &Objects, ids: &IdAllocator) -> Result<(), StateError> {
        self.store.save(&PersistedServices {
            version: SERVICES_VERSION,
            api: api.values().map(Stored::document).collect(),
            manifest_dir: dir.values().map(Stored::document).collect(),
            ids: ids.snapshot(),
        })
    }

    /// Applies or deletes the documents of `req`, all or nothing, then syncs the datapath (a
    /// failed sync is a warning of the answer: the objects are applied and the sync retried).
    pub fn apply(&self, req: &ApplyRequest) -> Result<ApplyResult, ServiceError> {
        if req.documents.is_empty() {
            return Err(ServiceError::Invalid(vec![ManifestError {
                source: "request".into(),
                index: 0,
                object: String::new(),
                path: "documents".into(),
                reason: "required value: no documents to apply".into(),
            }]));
        }
        let started = Instant::now();
        let (mut result, changed) = if req.delete {
            self.delete_documents(&req.documents)?
        } else {
            self.apply_documents(&req.documents)?
        };
        if changed {
            if let Err(e) = self.sync() {
                result.warnings.push(format!(
                    "the objects are applied but the datapath could not be programmed yet: {e}; \
                     the agent retries every {}s",
                    POLL_INTERVAL.as_secs()
                ));
            }
        }
        info!(
            documents = req.documents.len(),
            delete = req.delete,
            changed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "manifests {}",
            if req.delete { "deleted" } else { "applied" }
        );
        Ok(result)
    }

    fn apply_documents(&self, docs: &[ApplyDocument]) -> Result<(ApplyResult, bool), ServiceError> {
        let decoded = decode_all(docs).map_err(ServiceError::Invalid)?;
        let mut tables = lock(&self.tables);
        let mut errors = Vec::new();
        let mut results = Vec::with_capacity(decoded.len());
        let mut next = tables.api.clone();
        // Services of this batch that change, for blaming frontend conflicts on them.
        let mut batch: BTreeMap<String, (String, usize, String)> = BTreeMap::new();
        for d in decoded {
            let key = d.object.key();
            if let Some(owner) = tables.dir.get(&key) {
                errors.push(ManifestError {
                    source: d.source,
                    index: d.index,
                    object: key.to_string(),
                    path: String::new(),
                    reason: format!(
                        "managed by the manifest directory (file {}); change it there",
                        owner.source
                    ),
                });
                continue;
            }
            let action = match tables.api.get(&key) {
                None => ApplyAction::Created,
                Some(s) if s.object == d.object => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Configured,
            };
            results.push(ApplyOutcome {
                key: key.clone(),
                action,
                source: d.source.clone(),
                index: d.index,
            });
            if action != ApplyAction::Unchanged {
                if key.kind == Kind::Service {
                    batch.insert(
                        format!("{}/{}", key.namespace, key.name),
                        (d.source.clone(), d.index, key.to_string()),
                    );
                }
                next.insert(
                    key,
                    Stored {
                        object: d.object,
                        source: d.source,
                        index: d.index,
                    },
                );
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        let changed = results.iter().any(|r| r.action != ApplyAction::Unchanged);
        if changed {
            let plan = self.commit(&mut tables, next, None, |plan| {
                // Two Services may not share a frontend; refuse the batch that would make them.
                let mut errors = Vec::new();
                for c in &plan.conflicts {
                    let (blamed, other) = if batch.contains_key(&c.loser) {
                        (&c.loser, &c.holder)
                    } else if batch.contains_key(&c.holder) {
                        (&c.holder, &c.loser)
                    } else {
                        continue;
                    };
                    if let Some((source, index, object)) = batch.get(blamed) {
                        let (path, reason) = match c.kind {
                            ConflictKind::Frontend => (
                                "spec",
                                format!(
                                    "frontend {} is already used by Service {other}; each \
                                     address, port and protocol belongs to one Service",
                                    c.frontend
                                ),
                            ),
                            ConflictKind::ClusterIp => (
                                "spec.clusterIP",
                                format!(
                                    "invalid value {:?}: the cluster IP is already allocated to \
                                     Service {other}; a cluster IP belongs to one Service (pick \
                                     another, or leave it out)",
                                    c.frontend
                                ),
                            ),
                        };
                        errors.push(ManifestError {
                            source: source.clone(),
                            index: *index,
                            object: object.clone(),
                            path: path.into(),
                            reason,
                        });
                    }
                }
                errors
            });
            plan?;
        }
        Ok((
            ApplyResult {
                results,
                warnings: Vec::new(),
                policies: Vec::new(),
                policy_revision: None,
            },
            changed,
        ))
    }

    fn delete_documents(
        &self,
        docs: &[ApplyDocument],
    ) -> Result<(ApplyResult, bool), ServiceError> {
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        for d in docs {
            match identify(d) {
                Ok(k) => keys.push((k, d)),
                Err(e) => errors.extend(e),
            }
        }
        let mut tables = lock(&self.tables);
        let mut next = tables.api.clone();
        let mut results = Vec::new();
        for (key, d) in keys {
            if let (Some(owner), false) = (tables.dir.get(&key), tables.api.contains_key(&key)) {
                errors.push(ManifestError {
                    source: d.source.clone(),
                    index: d.index,
                    object: key.to_string(),
                    path: String::new(),
                    reason: format!(
                        "managed by the manifest directory (file {}); remove it there",
                        owner.source
                    ),
                });
                continue;
            }
            let action = if next.remove(&key).is_some() {
                ApplyAction::Deleted
            } else {
                ApplyAction::NotFound
            };
            results.push(ApplyOutcome {
                key,
                action,
                source: d.source.clone(),
                index: d.index,
            });
        }
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        let changed = results.iter().any(|r| r.action == ApplyAction::Deleted);
        if changed {
            self.commit(&mut tables, next, None, |_| Vec::new())?;
        }
        Ok((
            ApplyResult {
                results,
                warnings: Vec::new(),
                policies: Vec::new(),
                policy_revision: None,
            },
            changed,
        ))
    }

    /// Computes the plan for new API objects (and a new directory set, if given), lets
    /// `check` refuse it, persists, and only then swaps it in.
    fn commit(
        &self,
        tables: &mut Tables,
        api: Objects,
        dir: Option<Objects>,
        check: impl FnOnce(&LbPlan) -> Vec<ManifestError>,
    ) -> Result<(), ServiceError> {
        let dir = dir.unwrap_or_else(|| tables.dir.clone());
        let mut ids = tables.ids.clone();
        let plan = compute(effective(&dir, &api), &self.node, &mut ids)
            .map_err(ServiceError::Exhausted)?;
        let errors = check(&plan);
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        self.save(&api, &dir, &ids).map_err(ServiceError::State)?;
        let plan = with_sources(plan, &dir, &api);
        debug!(
            frontends = plan.state.frontends.len(),
            backends = plan.state.backends.len(),
            changes = ciliate_lb::LbDiff::between(&tables.plan.state, &plan.state).len(),
            "load-balancing state recomputed"
        );
        tables.api = api;
        tables.dir = dir;
        tables.ids = ids;
        tables.plan = Arc::new(plan);
        tables.generation += 1;
        Ok(())
    }

    /// Reads the manifest directory when it changed; returns whether the objects in force
    /// changed. Problems are logged and kept for the status; the last good set stays.
    pub fn reload_dir(&self) -> bool {
        let Some(dir) = self.settings.manifest_dir.clone() else {
            return false;
        };
        manifest_dir::reload(
            &dir,
            "objects",
            &self.health,
            |h| &mut h.dir,
            |docs| {
                // Policies in the directory are the policy store's.
                let docs: Vec<ApplyDocument> = docs
                    .into_iter()
                    .filter(|d| !crate::policy::is_policy_document(&d.object))
                    .collect();
                let decoded = decode_all(&docs)
                    .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
                let next = stored(decoded);
                let mut tables = lock(&self.tables);
                if next == tables.dir {
                    return Ok(false);
                }
                let api = tables.api.clone();
                self.commit(&mut tables, api, Some(next), |_| Vec::new())
                    .map(|()| true)
                    .map_err(|e| vec![e.to_string()])
            },
        )
    }

    /// Programs the datapath with the current plan. Returns the error text when it fails
    /// (also kept for the status and logged).
    pub fn sync(&self) -> Result<(), String> {
        let _serial = lock(&self.sync_lock);
        let (generation, plan) = {
            let t = lock(&self.tables);
            (t.generation, Arc::clone(&t.plan))
        };
        let started = Instant::now();
        let result = self.datapath.sync_lb(&plan.state);
        let mut h = lock(&self.health);
        match result {
            Ok(stats) => {
                debug!(
                    written = stats.written,
                    deleted = stats.deleted,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "datapath load-balancing maps synced"
                );
                if h.sync_error.take().is_some() {
                    info!("datapath load-balancing maps synced again");
                }
                h.synced = Some(generation);
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                warn!(error = %text, "cannot program the Services into the datapath; retrying");
                h.sync_error = Some(text.clone());
                Err(text)
            }
        }
    }

    /// One poll: re-reads the manifest directory if it changed, and syncs the datapath when
    /// it does not hold the current state (a change, or a failed sync to retry).
    pub fn tick(&self) {
        if self.reload_dir() {
            self.push_namespaces();
        }
        let generation = lock(&self.tables).generation;
        let needed = {
            let h = lock(&self.health);
            h.synced != Some(generation) || h.sync_error.is_some()
        };
        if needed {
            let _ = self.sync();
        }
    }

    /// Every Service, sorted by namespace/name.
    pub fn list(&self) -> Vec<ServiceView> {
        lock(&self.tables).plan.services.clone()
    }

    /// One Service.
    pub fn get(&self, namespace: &str, name: &str) -> Option<ServiceView> {
        let plan = Arc::clone(&lock(&self.tables).plan);
        plan.services
            .binary_search_by(|v| (v.namespace.as_str(), v.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| plan.services[i].clone())
    }

    /// Counts and problems.
    pub fn status(&self) -> ServicesStatus {
        let (plan, shadowed) = {
            let t = lock(&self.tables);
            let shadowed: Vec<String> = t
                .api
                .keys()
                .filter_map(|k| t.dir.get(k).map(|d| (k, d)))
                .map(|(k, d)| {
                    format!(
                        "{k} is defined both through the API and by {}; the file's copy is in force",
                        d.source
                    )
                })
                .collect();
            (Arc::clone(&t.plan), shadowed)
        };
        let h = lock(&self.health);
        let mut problems: Vec<String> = h
            .dir
            .problems
            .iter()
            .map(|p| format!("manifest directory: {p}"))
            .collect();
        if let Some(e) = &h.sync_error {
            problems.push(format!(
                "cannot program the Services into the datapath: {e}; retrying every {}s",
                POLL_INTERVAL.as_secs()
            ));
        }
        problems.extend(shadowed);
        let mut seen = BTreeSet::new();
        for c in &plan.conflicts {
            if seen.insert((&c.frontend, &c.loser)) {
                problems.push(match c.kind {
                    ConflictKind::Frontend => format!(
                        "frontend {} is claimed by Services {} and {}; only {}'s is programmed",
                        c.frontend, c.holder, c.loser, c.holder
                    ),
                    ConflictKind::ClusterIp => format!(
                        "cluster IP {} is claimed by Services {} and {}; only {} is programmed",
                        c.frontend, c.holder, c.loser, c.holder
                    ),
                });
            }
        }
        ServicesStatus {
            services: plan.services.len(),
            backends: plan.state.backends.len(),
            problems,
        }
    }
}

/// Polls every `interval` until `shutdown`: re-reads the manifest directory when it changed
/// and retries a failed datapath sync.
pub async fn run_services_loop(
    manager: Arc<ServiceManager>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let m = Arc::clone(&manager);
        // Reading files and syncing maps block.
        if let Err(e) = tokio::task::spawn_blocking(move || m.tick()).await {
            warn!(error = %e, "the Services poll panicked; retrying next interval");
        }
    }
}

#[cfg(test)]
mod tests;
