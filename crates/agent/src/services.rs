//! Services: the table of Kubernetes Service, EndpointSlice, Endpoints and Namespace objects,
//! fed by sources, and the reconciler that keeps the datapath's load-balancing maps in step.
//!
//! Each source owns its rows, keyed by (source, object); where two sources define one object,
//! the first of [`Source::ALL`] is in force (the manifest directory, then the Kubernetes API,
//! then `ciliate apply`):
//!
//! * the API (`POST /v1/manifests`, what `ciliate apply|delete -f` sends): a batch with any
//!   invalid document applies nothing and answers every problem; the objects it changed are
//!   appended to the source's journal ([`journal`]) before the answer;
//! * `--manifest-dir` (see [`manifest_dir`]): read when a file changes (the agent is woken by
//!   inotify), only the changed files re-read; the directory's objects (its policies aside,
//!   which are [`crate::policy`]'s) apply as one batch unless a file is invalid, in which case
//!   the last good set stays in force and the problems are logged and reported in the status;
//! * the Kubernetes API ([`ServiceManager::kubernetes_event`]): watch events as kube-rs gives
//!   them; an initial list replaces the source's rows when it is complete. Its objects are not
//!   persisted: the API server is their store.
//!
//! Every change is handed to a [`Balancer`] as the objects whose row in force changed; it
//! recomputes only the Services they touch and answers the [`LbDiff`] the datapath writes
//! ([`Datapath::update_lb`]). The cost of a change grows with the change, not with the number
//! of Services. Ids (backend ids, reverse-NAT indexes) are read back from the datapath's
//! pinned maps at start, so a restart keeps them; only once every source has listed its
//! objects is the datapath made to hold exactly the state (stale entries removed).
//!
//! A failed datapath write is reported (log, status) and the whole state written again on the
//! next wake-up (a change, or the retry interval while one is pending); the objects stay
//! applied.
//!
//! `v1/Namespace` objects are stored here too (same sources, same persistence); their labels
//! are handed to the policy store ([`ServiceManager::attach_policy`]), which adds them to
//! pods' identity labels.
//!
//! The methods block (fsync, datapath syscalls): async callers use `spawn_blocking`.

pub mod dir_watch;
pub mod journal;
pub mod manifest_dir;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ciliate_datapath::Datapath;
use ciliate_lb::balancer::{Change, ServiceName};
use ciliate_lb::table::ObjectTable;
use ciliate_lb::{Balancer, Conflict, ConflictKind, IdAllocator, LbDiff, LbError, Node};
use ciliate_model::k8s::{Kind, Object, ObjectKey};
use ciliate_model::lb::ServiceRef;
use ciliate_model::manifest::raw::Streamed;
use ciliate_model::manifest::{
    decode_all, identify, report, ApplyAction, ApplyDocument, ApplyOutcome, ApplyRequest,
    ApplyResult, Decoded, ManifestError, SharedText,
};
use ciliate_model::service::ServiceView;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::state::StateError;
use journal::{Journal, Manifest, ObjectRecord};
use store::ServiceStore;

/// How often a failed datapath write is retried (and, as a safety net, the manifest directory
/// read again should a change notification have been missed).
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
    /// Whether the Kubernetes API is a source (`--k8s`): until its first list is complete,
    /// nothing is removed from the datapath.
    pub kubernetes: bool,
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
    /// The persisted objects could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A journal holds objects that do not validate.
    #[error("{path} is inconsistent: {message}; repair or remove it (removing it forgets the Services applied through the API)")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Where an object came from. Where two sources define one object, the first of
/// [`Source::ALL`] is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// `--manifest-dir`.
    ManifestDir,
    /// The Kubernetes API (`--k8s`).
    Kubernetes,
    /// `ciliate apply` (`POST /v1/manifests`).
    Api,
}

impl Source {
    /// Every source, by precedence.
    pub const ALL: [Source; 3] = [Source::ManifestDir, Source::Kubernetes, Source::Api];

    fn index(self) -> usize {
        self as usize
    }

    /// The journal a persisted source writes (`None`: not persisted, its owner is its store).
    fn journal(self) -> Option<&'static str> {
        match self {
            Self::ManifestDir => Some("manifest-dir"),
            Self::Kubernetes => None,
            Self::Api => Some("api"),
        }
    }
}

/// An event of the Kubernetes source, in the shape kube-rs's watcher gives them, per kind: an
/// initial list (`Init`, `InitApply`…, `InitDone`) replaces the source's objects of that kind
/// when complete (objects deleted while the watch was broken are gone from the relist), then
/// single changes.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// A (re)list of a kind starts.
    Init(Kind),
    /// An object of the list.
    InitApply(Object),
    /// The list of a kind is complete: it replaces what the source had of that kind.
    InitDone(Kind),
    /// An object was created or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjectKey),
}

/// An object, the source document it came from (file path, request, or `kubernetes`) and its
/// index there. 24 bytes, a row of the tables (two per Service and its slice).
#[derive(Clone, Debug)]
struct Stored {
    object: Arc<Object>,
    /// Shared by the rows of one file or request (behind a thin pointer).
    source: Arc<String>,
    index: u32,
}

impl Stored {
    fn record(&self) -> ObjectRecord<'_> {
        ObjectRecord::Put {
            source: &self.source,
            index: self.index(),
            object: Manifest(&self.object),
        }
    }

    fn index(&self) -> usize {
        self.index as usize
    }

    fn same_object(&self, other: &Stored) -> bool {
        Arc::ptr_eq(&self.object, &other.object) || self.object == other.object
    }
}

impl ciliate_lb::table::ObjectRow for Stored {
    fn object(&self) -> &Object {
        &self.object
    }
}

impl journal::JournalRow for Stored {
    fn record(&self) -> ObjectRecord<'_> {
        Stored::record(self)
    }
}

impl From<ciliate_model::manifest::Decoded> for Stored {
    fn from(d: ciliate_model::manifest::Decoded) -> Self {
        Self {
            object: Arc::new(d.object),
            source: d.source,
            // A document's place in its file or request: far below 2^32.
            index: u32::try_from(d.index).unwrap_or(u32::MAX),
        }
    }
}

/// One source's rows, found by their object's key (not kept apart: at 10,000 Services the
/// copied keys were ~300 bytes per Service).
type Rows = ObjectTable<Stored>;

struct Tables {
    /// Each source's rows, by [`Source::index`].
    rows: [Rows; 3],
    balancer: Balancer,
    /// Kubernetes (re)lists being received, by kind.
    pending: HashMap<Kind, Rows>,
    /// Kinds the Kubernetes source has listed at least once.
    k8s_listed: BTreeSet<Kind>,
    /// Sources whose first list is not complete: until it is, nothing is removed from the
    /// datapath that they might still name.
    listing: BTreeSet<Source>,
    /// While the store is being opened: changes are computed, written once at the end.
    opening: bool,
}

impl Tables {
    fn effective(&self, key: &ObjectKey) -> Option<(Source, &Stored)> {
        Source::ALL
            .into_iter()
            .find_map(|s| self.rows[s.index()].get(key).map(|r| (s, r)))
    }

    /// Sets the rows of `source` for these keys (`None`: removes) and answers the changes of
    /// the objects in force, and whether a Namespace changed.
    fn set_rows(
        &mut self,
        source: Source,
        rows: impl IntoIterator<Item = (ObjectKey, Option<Stored>)>,
    ) -> (Vec<Change>, bool) {
        let mut changes = Vec::new();
        let mut namespaces = false;
        for (key, row) in rows {
            let before = self.effective(&key).map(|(_, r)| Arc::clone(&r.object));
            match row {
                Some(r) => {
                    debug_assert_eq!(r.object.key(), key, "a row is keyed by its object");
                    self.rows[source.index()].insert(r);
                }
                None => {
                    self.rows[source.index()].remove(&key);
                }
            }
            let after = self.effective(&key).map(|(_, r)| Arc::clone(&r.object));
            let same = match (&before, &after) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            namespaces |= key.kind == Kind::Namespace;
            changes.push(match after {
                Some(o) => Change::Upsert(o),
                None => Change::Delete(key),
            });
        }
        self.rows[source.index()].shrink();
        (changes, namespaces)
    }

    fn namespace_labels(&self) -> crate::policy::namespaces::NamespaceLabels {
        let mut objects: BTreeMap<ObjectKey, &Object> = BTreeMap::new();
        for s in Source::ALL.into_iter().rev() {
            for r in &self.rows[s.index()] {
                if r.object.kind() == Kind::Namespace {
                    objects.insert(r.object.key(), &r.object);
                }
            }
        }
        crate::policy::namespaces::namespace_labels(objects.into_values())
    }
}

#[derive(Debug, Default)]
struct Health {
    /// Why the last datapath write failed.
    sync_error: Option<String>,
    /// The datapath may not hold the state: write it whole on the next occasion.
    resync: bool,
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
    datapath: Arc<dyn Datapath>,
    store: ServiceStore,
    journals: Mutex<BTreeMap<Source, Journal>>,
    tables: RwLock<Tables>,
    health: Mutex<Health>,
    dir_watch: Mutex<manifest_dir::DirWatch>,
    /// The policy store, told the namespaces' labels after every change of them.
    policy: OnceLock<Arc<crate::policy::PolicyManager>>,
    /// Woken when the manifest directory changed.
    wake: Arc<Notify>,
}

impl fmt::Debug for ServiceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceManager")
            .field("settings", &self.settings)
            .field("state", &self.store.dir())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another request must not take the Service store down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// The source of every object of the Kubernetes API, one shared copy.
fn kubernetes_source() -> Arc<String> {
    static SOURCE: OnceLock<Arc<String>> = OnceLock::new();
    Arc::clone(SOURCE.get_or_init(|| Arc::new(KUBERNETES_SOURCE.to_owned())))
}

/// Rows of decoded objects; consecutive objects of one source share its name.
fn stored_rows(decoded: Vec<ciliate_model::manifest::Decoded>) -> impl Iterator<Item = Stored> {
    let mut last: Option<Arc<String>> = None;
    decoded.into_iter().map(move |d| {
        let source = match &last {
            Some(s) if **s == *d.source => Arc::clone(s),
            _ => d.source,
        };
        last = Some(Arc::clone(&source));
        Stored {
            object: Arc::new(d.object),
            source,
            // A document's place in its file or request: far below 2^32.
            index: u32::try_from(d.index).unwrap_or(u32::MAX),
        }
    })
}

/// [`stored_rows`] with their objects' keys.
fn stored(
    decoded: Vec<ciliate_model::manifest::Decoded>,
) -> impl Iterator<Item = (ObjectKey, Stored)> {
    stored_rows(decoded).map(|r| (r.object.key(), r))
}

fn conflict_error(
    c: &Conflict,
    blamed: &str,
    other: &str,
    source: &str,
    index: usize,
) -> ManifestError {
    let (path, reason) = match c.kind {
        ConflictKind::Frontend => (
            "spec",
            format!(
                "frontend {} is already used by Service {other}; each address, port and \
                 protocol belongs to one Service",
                c.frontend
            ),
        ),
        ConflictKind::ClusterIp => (
            "spec.clusterIP",
            format!(
                "invalid value {:?}: the cluster IP is already allocated to Service {other}; a \
                 cluster IP belongs to one Service (pick another, or leave it out)",
                c.frontend
            ),
        ),
    };
    ManifestError {
        source: source.to_owned(),
        index,
        object: blamed.to_owned(),
        path: path.into(),
        reason,
    }
}

impl ServiceManager {
    /// Loads the persisted sources from `state_dir` (migrating a `services.json` of an older
    /// agent), reads the manifest directory once, and programs the datapath. Ids are taken
    /// from what the datapath's pinned maps hold, so established connections keep their
    /// backends and reverse NAT. A failed write is reported and retried, not fatal: pods keep
    /// their connectivity meanwhile.
    pub fn open(
        settings: ServiceSettings,
        state_dir: &Path,
        datapath: Arc<dyn Datapath>,
    ) -> Result<Self, ServiceOpenError> {
        let store = ServiceStore::new(state_dir);
        let legacy = store.load()?;
        let objects_dir = state_dir.join(OBJECTS_DIR);
        let mut journals = BTreeMap::new();
        let mut rows: [Rows; 3] = Default::default();
        for source in [Source::Api, Source::ManifestDir] {
            let name = source.journal().unwrap_or_default();
            let (mut journal, table) = Journal::open_objects(&objects_dir, name, Stored::from)?;
            let mut path = objects_dir.join(format!("{name}.jsonl"));
            let table = match &legacy {
                // An older agent's whole-file store: its objects become the journal.
                Some(old) => {
                    let docs = match source {
                        Source::Api => old.api.clone(),
                        _ => old.manifest_dir.clone(),
                    };
                    path = store.path().to_owned();
                    let decoded = decode_all(&docs);
                    if decoded.is_ok() {
                        journal.rewrite(&docs)?;
                    }
                    decoded.map(|d| stored_rows(d).collect())
                }
                None => table,
            };
            rows[source.index()] = table.map_err(|e| ServiceOpenError::Inconsistent {
                path,
                message: report(&e, "the agent does not start from it"),
            })?;
            journals.insert(source, journal);
        }
        if legacy.is_some() {
            store.remove()?;
            info!(state = %store.path().display(), "Services of the older whole-file store moved to per-object journals");
        }

        let mut ids = IdAllocator::new();
        if let Some(old) = &legacy {
            if let Ok(a) = IdAllocator::restore(&old.ids) {
                ids = a;
            }
        }
        match datapath.lb_state_written() {
            Ok(held) => ids.seed(
                held.backends
                    .iter()
                    .map(|b| ((b.addr, b.port, b.proto), b.id)),
                held.frontends
                    .iter()
                    .map(|f| ((f.addr, f.port, f.proto), f.rev_nat_index)),
            ),
            Err(e) => {
                warn!(error = %e, "cannot read the load-balancing maps back: ids start afresh")
            }
        }
        let node = Node {
            name: settings.node_name.clone(),
            addresses: settings.node_ips.clone(),
        };
        let mut listing = BTreeSet::new();
        if settings.kubernetes {
            listing.insert(Source::Kubernetes);
        }
        let mut tables = Tables {
            rows: Default::default(),
            balancer: Balancer::new(node, ids),
            pending: HashMap::new(),
            k8s_listed: BTreeSet::new(),
            listing,
            opening: true,
        };
        // The rows as read become the tables; the objects in force (each key's row of the
        // first source that has it) are loaded into the empty balancer at once, without a
        // batch's difference: the whole state is compared with the maps by `sync` below.
        let mut objects = Vec::with_capacity(rows.iter().map(Rows::len).sum());
        for (i, source) in Source::ALL.into_iter().enumerate() {
            // Only the sources above that hold something are looked in (at a restart, the
            // API's objects are most often all there is).
            let above: Vec<Source> = Source::ALL[..i]
                .iter()
                .copied()
                .filter(|s| !rows[s.index()].is_empty())
                .collect();
            let shadowed = |o: &Object| above.iter().any(|s| rows[s.index()].get_like(o).is_some());
            objects.extend(
                rows[source.index()]
                    .iter()
                    .filter(|r| !shadowed(&r.object))
                    .map(|r| Arc::clone(&r.object)),
            );
        }
        tables.rows = rows;
        tables
            .balancer
            .load(objects)
            .map_err(|e| ServiceOpenError::Inconsistent {
                path: objects_dir.clone(),
                message: e.to_string(),
            })?;
        let manager = Self {
            datapath,
            store,
            journals: Mutex::new(journals),
            tables: RwLock::new(tables),
            health: Mutex::new(Health::default()),
            dir_watch: Mutex::new(manifest_dir::DirWatch::default()),
            policy: OnceLock::new(),
            wake: Arc::new(Notify::new()),
            settings,
        };
        manager.reload_dir();
        {
            let mut t = write(&manager.tables);
            t.opening = false;
            info!(
                state = %objects_dir.display(),
                api_objects = t.rows[Source::Api.index()].len(),
                manifest_dir_objects = t.rows[Source::ManifestDir.index()].len(),
                services = t.balancer.service_count(),
                waiting_for = ?t.listing,
                "Services loaded"
            );
        }
        if let Err(e) = manager.sync() {
            warn!(error = %e, "cannot program the Services into the datapath at start-up; retrying");
        }
        let objects: usize = read(&manager.tables).rows.iter().map(Rows::len).sum();
        if objects >= crate::heap::LARGE_BATCH {
            // Replaying the journals and reading the maps back freed far more than it kept.
            crate::heap::release_free_memory();
        }
        Ok(manager)
    }

    /// The settings in force.
    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }

    /// The labels of the Namespace objects in force, by name.
    pub fn namespace_labels(&self) -> crate::policy::namespaces::NamespaceLabels {
        read(&self.tables).namespace_labels()
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

    /// Persists `records` in the journal of `source` (if it has one).
    fn persist(&self, source: Source, records: &[ObjectRecord]) -> Result<(), StateError> {
        let mut journals = lock(&self.journals);
        let Some(j) = journals.get_mut(&source) else {
            return Ok(());
        };
        j.append(records)
    }

    /// Hands `changes` to the balancer and writes the difference into the datapath (unless
    /// the store is being opened). A failed write is kept for the status and the whole state
    /// written again later. Returns the write's error, if any.
    fn commit(&self, t: &mut Tables, changes: Vec<Change>) -> Result<(), String> {
        self.commit_as(t, changes, false)
    }

    /// [`ServiceManager::commit`]; `checked`: the caller had [`Balancer::check`] accept these
    /// changes (or a superset of their upserts) under the same lock.
    fn commit_as(&self, t: &mut Tables, changes: Vec<Change>, checked: bool) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let applied = if checked {
            t.balancer.apply_checked(changes)
        } else {
            t.balancer.apply(changes)
        };
        let diff = match applied {
            Ok(d) => d,
            Err(e) => {
                // Checked before anything was persisted; reaching this is a bug. The state
                // is whole (apply changes nothing on error) but no longer the sources'.
                warn!(error = %e, "load-balancing state not recomputed");
                return Err(e.to_string());
            }
        };
        if t.opening || diff.is_empty() {
            return Ok(());
        }
        let result = self.write_diff(t, &diff);
        debug!(
            changes = diff.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "load-balancing state changed"
        );
        result
    }

    fn write_diff(&self, t: &Tables, diff: &LbDiff) -> Result<(), String> {
        let resync = lock(&self.health).resync;
        let result = if resync {
            self.write_all(t)
        } else {
            self.datapath.update_lb(diff).map(|_| ())
        };
        self.record_write(result.map_err(|e| e.to_string()))
    }

    /// Writes the whole state: exactly (stale entries removed) once every source has listed,
    /// only additions and changes before.
    fn write_all(&self, t: &Tables) -> Result<(), ciliate_datapath::DatapathError> {
        let state = t.balancer.state();
        if t.listing.is_empty() {
            self.datapath.sync_lb(&state).map(|_| ())
        } else {
            self.datapath
                .update_lb(&LbDiff {
                    frontends_added: state.frontends,
                    backends_added: state.backends,
                    ..LbDiff::default()
                })
                .map(|_| ())
        }
    }

    fn record_write(&self, result: Result<(), String>) -> Result<(), String> {
        let mut h = lock(&self.health);
        match &result {
            Ok(()) => {
                if h.sync_error.take().is_some() {
                    info!("datapath load-balancing maps synced again");
                }
                h.resync = false;
            }
            Err(e) => {
                warn!(error = %e, "cannot program the Services into the datapath; retrying");
                h.sync_error = Some(e.clone());
                h.resync = true;
            }
        }
        result
    }

    /// Applies or deletes the documents of `req`, all or nothing, then writes the datapath (a
    /// failed write is a warning of the answer: the objects are applied and the write retried).
    pub fn apply(&self, req: &ApplyRequest) -> Result<ApplyResult, ServiceError> {
        self.apply_documents_of(&req.documents, req.delete)
    }

    /// [`ServiceManager::apply`] of documents borrowed from a larger request.
    pub fn apply_documents_of(
        &self,
        documents: &[ApplyDocument],
        delete: bool,
    ) -> Result<ApplyResult, ServiceError> {
        if documents.is_empty() {
            return Err(ServiceError::Invalid(vec![ManifestError {
                source: "request".into(),
                index: 0,
                object: String::new(),
                path: "documents".into(),
                reason: "required value: no documents to apply".into(),
            }]));
        }
        let started = Instant::now();
        let outcome = if delete {
            self.delete_documents(documents)?
        } else {
            self.apply_objects(decode_all(documents).map_err(ServiceError::Invalid)?, None)?
        };
        Ok(Self::answer(outcome, documents.len(), delete, started))
    }

    /// [`ServiceManager::apply`] of objects decoded already (straight from a request's
    /// text: [`ciliate_model::manifest::raw`]), `started` when their decoding did.
    pub fn apply_decoded(
        &self,
        decoded: Vec<Decoded>,
        started: Instant,
    ) -> Result<ApplyResult, ServiceError> {
        self.apply_decoded_from(decoded, None, started)
    }

    /// [`ServiceManager::apply_decoded`] of the objects of a streamed batch, `texts`, whose
    /// objects' JSON text is journaled as it came (not serialised a second time) where
    /// `decoded` is every document of it, in order.
    pub fn apply_decoded_from(
        &self,
        decoded: Vec<Decoded>,
        texts: Option<&Streamed>,
        started: Instant,
    ) -> Result<ApplyResult, ServiceError> {
        let documents = decoded.len();
        let texts = texts.filter(|t| t.documents() == documents);
        let outcome = self.apply_objects(decoded, texts)?;
        Ok(Self::answer(outcome, documents, false, started))
    }

    /// The answer of an apply or delete whose datapath write gave `written`, logged with the
    /// time it took (`bench/services-scale.sh` reads that line).
    fn answer(
        (mut result, written): (ApplyResult, Result<(), String>),
        documents: usize,
        delete: bool,
        started: Instant,
    ) -> ApplyResult {
        if let Err(e) = written {
            result.warnings.push(format!(
                "the objects are applied but the datapath could not be programmed yet: {e}; \
                 the agent retries every {}s",
                POLL_INTERVAL.as_secs()
            ));
        }
        info!(
            documents,
            delete,
            elapsed_us = started.elapsed().as_micros() as u64,
            "manifests {}",
            if delete { "deleted" } else { "applied" }
        );
        result
    }

    /// Who else defines `key` above the API, as an error for document `index` of `source`.
    fn owned_elsewhere(
        t: &Tables,
        key: &ObjectKey,
        (source, index): (&str, usize),
        verb: &str,
    ) -> Option<ManifestError> {
        let reason = if let Some(owner) = t.rows[Source::ManifestDir.index()].get(key) {
            format!(
                "managed by the manifest directory (file {}); {verb} it there",
                owner.source
            )
        } else if t.rows[Source::Kubernetes.index()].contains_key(key) {
            format!("managed by the Kubernetes API; {verb} it there (kubectl)")
        } else {
            return None;
        };
        Some(ManifestError {
            source: source.to_owned(),
            index,
            object: key.to_string(),
            path: String::new(),
            reason,
        })
    }

    #[allow(clippy::type_complexity)]
    /// `texts`: the batch whose documents `decoded` are, each (by its place) decoded from
    /// [`Streamed::object_text`].
    fn apply_objects(
        &self,
        decoded: Vec<Decoded>,
        texts: Option<&Streamed>,
    ) -> Result<(ApplyResult, Result<(), String>), ServiceError> {
        let mut t = write(&self.tables);
        let mut errors = Vec::new();
        let mut results = Vec::with_capacity(decoded.len());
        let mut rows: Vec<(ObjectKey, Stored)> = Vec::new();
        // The place in `decoded` of each of `rows`, while there are texts to journal.
        let mut places: Vec<usize> = Vec::new();
        // Objects the API's table does not hold yet: its room is made once.
        let mut created = 0usize;
        for (place, (key, row)) in stored(decoded).enumerate() {
            if let Some(e) = Self::owned_elsewhere(&t, &key, (&row.source, row.index()), "change") {
                errors.push(e);
                continue;
            }
            let action = match t.rows[Source::Api.index()].get(&key) {
                None => ApplyAction::Created,
                Some(s) if s.same_object(&row) => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Configured,
            };
            created += usize::from(action == ApplyAction::Created);
            results.push(ApplyOutcome {
                key: key.clone(),
                action,
                source: Arc::clone(&row.source).into(),
                index: row.index(),
            });
            if action != ApplyAction::Unchanged {
                rows.push((key, row));
                if texts.is_some() {
                    places.push(place);
                }
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        // What would change, checked before anything is: contested addresses, id capacity.
        let preview: Vec<Change> = rows
            .iter()
            .map(|(_, r)| Change::Upsert(Arc::clone(&r.object)))
            .collect();
        let conflicts = t.balancer.conflicts_of(&preview);
        // Which document each changed object came from, for the conflicts' messages (rare:
        // not built for a batch without any).
        let by_doc: HashMap<&ObjectKey, (&str, usize)> = if conflicts.is_empty() {
            HashMap::new()
        } else {
            rows.iter()
                .map(|(k, r)| (k, (r.source.as_str(), r.index())))
                .collect()
        };
        let blame = |name: &str| -> Option<(&str, usize)> {
            let (ns, n) = name.split_once('/')?;
            by_doc
                .get(&ObjectKey {
                    kind: Kind::Service,
                    namespace: ns.into(),
                    name: n.into(),
                })
                .copied()
        };
        for c in conflicts {
            let (blamed, other) = if blame(&c.loser).is_some() {
                (&c.loser, &c.holder)
            } else {
                (&c.holder, &c.loser)
            };
            if let Some((source, index)) = blame(blamed) {
                errors.push(conflict_error(
                    &c,
                    &format!("Service {blamed}"),
                    other,
                    source,
                    index,
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        t.balancer
            .check(&preview)
            .map_err(ServiceError::Exhausted)?;
        let records: Vec<ObjectRecord> = rows
            .iter()
            .enumerate()
            .map(|(i, (_, r))| {
                match texts.and_then(|t| places.get(i).and_then(|&p| t.object_text(p))) {
                    Some(object) => ObjectRecord::PutText {
                        source: &r.source,
                        index: r.index(),
                        object,
                    },
                    None => r.record(),
                }
            })
            .collect();
        self.persist(Source::Api, &records)
            .map_err(ServiceError::State)?;
        // Grown a row at a time, the table re-hashed every row at each doubling.
        t.rows[Source::Api.index()].reserve(created);
        let (changes, namespaces) =
            t.set_rows(Source::Api, rows.into_iter().map(|(k, r)| (k, Some(r))));
        // Namespace labels reach policy through the caller (`manifests::apply`), which puts
        // them in force before it answers.
        let _ = namespaces;
        // Checked above (`preview`, which has every upsert of `changes`), under this lock.
        let written = self.commit_as(&mut t, changes, true);
        drop(t);
        Ok((
            ApplyResult {
                results,
                warnings: Vec::new(),
                policies: Vec::new(),
                policy_revision: None,
            },
            written,
        ))
    }

    #[allow(clippy::type_complexity)]
    fn delete_documents(
        &self,
        docs: &[ApplyDocument],
    ) -> Result<(ApplyResult, Result<(), String>), ServiceError> {
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        for d in docs {
            match identify(d) {
                Ok(k) => keys.push((k, d)),
                Err(e) => errors.extend(e),
            }
        }
        let mut t = write(&self.tables);
        let mut results = Vec::new();
        let mut gone = Vec::new();
        // What `gone` holds, to look up (a search of `gone` made deleting 10,000 Services
        // quadratic).
        let mut seen: HashSet<ObjectKey> = HashSet::new();
        // The outcomes of one file share its name.
        let mut last_source: Option<SharedText> = None;
        for (key, d) in keys {
            if !t.rows[Source::Api.index()].contains_key(&key) {
                if let Some(e) = Self::owned_elsewhere(&t, &key, (&d.source, d.index), "remove") {
                    errors.push(e);
                    continue;
                }
            }
            let action =
                if t.rows[Source::Api.index()].contains_key(&key) && seen.insert(key.clone()) {
                    gone.push(key.clone());
                    ApplyAction::Deleted
                } else {
                    ApplyAction::NotFound
                };
            let source = match &last_source {
                Some(s) if *s == *d.source => s.clone(),
                _ => SharedText::from(d.source.as_str()),
            };
            last_source = Some(source.clone());
            results.push(ApplyOutcome {
                key,
                action,
                source,
                index: d.index,
            });
        }
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        let records: Vec<ObjectRecord> = gone.iter().map(ObjectRecord::del).collect();
        self.persist(Source::Api, &records)
            .map_err(ServiceError::State)?;
        let (changes, namespaces) = t.set_rows(Source::Api, gone.into_iter().map(|k| (k, None)));
        // Namespace labels reach policy through the caller (`manifests::apply`), which puts
        // them in force before it answers.
        let _ = namespaces;
        let written = self.commit(&mut t, changes);
        drop(t);
        Ok((
            ApplyResult {
                results,
                warnings: Vec::new(),
                policies: Vec::new(),
                policy_revision: None,
            },
            written,
        ))
    }

    /// Reads the files of the manifest directory that changed; returns whether the objects
    /// in force changed. Problems are logged and kept for the status; the last good set stays.
    pub fn reload_dir(&self) -> bool {
        let Some(dir) = self.settings.manifest_dir.clone() else {
            return false;
        };
        let mut namespaces = false;
        let changed = manifest_dir::reload(
            &dir,
            "objects",
            &self.dir_watch,
            // Policies in the directory are the policy store's.
            |d| !crate::policy::is_policy_document(&d.object),
            |files| {
                let mut t = write(&self.tables);
                let current = &t.rows[Source::ManifestDir.index()];
                // Objects of the changed files, decoded; those of the others stay as they are.
                let mut next: BTreeMap<ObjectKey, Stored> = BTreeMap::new();
                let mut problems = Vec::new();
                for name in files.changed {
                    let docs = files.files.get(name.as_str()).copied().unwrap_or_default();
                    match decode_all(docs) {
                        Ok(decoded) => next.extend(stored(decoded)),
                        Err(e) => problems.extend(e.iter().map(ToString::to_string)),
                    }
                }
                // An object defined by an unchanged file as well.
                for (k, r) in &next {
                    if let Some(other) = current.get(k) {
                        if !files.changed.contains(&*other.source) {
                            problems.push(format!(
                                "{}: {k} is defined by {} too; keep one",
                                r.source, other.source
                            ));
                        }
                    }
                }
                if !problems.is_empty() {
                    return Err(problems);
                }
                let mut rows: Vec<(ObjectKey, Option<Stored>)> = current
                    .iter()
                    .filter(|r| files.changed.contains(&*r.source))
                    .map(|r| r.object.key())
                    .filter(|k| !next.contains_key(k))
                    .map(|k| (k, None))
                    .collect();
                for (k, r) in next {
                    if current
                        .get(&k)
                        .is_some_and(|c| c.same_object(&r) && c.source == r.source)
                    {
                        continue;
                    }
                    rows.push((k, Some(r)));
                }
                if rows.is_empty() {
                    return Ok(false);
                }
                let records: Vec<ObjectRecord> = rows
                    .iter()
                    .map(|(k, r)| match r {
                        Some(r) => r.record(),
                        None => ObjectRecord::del(k),
                    })
                    .collect();
                self.persist(Source::ManifestDir, &records)
                    .map_err(|e| vec![e.to_string()])?;
                let (changes, ns) = t.set_rows(Source::ManifestDir, rows);
                namespaces = ns;
                // A failed datapath write is retried; the objects are in force.
                let _ = self.commit(&mut t, changes);
                Ok(true)
            },
        );
        if namespaces {
            self.push_namespaces();
        }
        changed
    }

    /// One event of the Kubernetes source.
    pub fn kubernetes_event(&self, ev: SourceEvent) {
        let mut t = write(&self.tables);
        let k8s = |object: Object| {
            let key = object.key();
            (
                key,
                Stored {
                    object: Arc::new(object),
                    source: kubernetes_source(),
                    index: 0,
                },
            )
        };
        let (changes, namespaces) = match ev {
            SourceEvent::Init(kind) => {
                t.pending.insert(kind, Rows::new());
                return;
            }
            SourceEvent::InitApply(o) => {
                let (k, r) = k8s(o);
                t.pending.entry(k.kind).or_default().insert(r);
                return;
            }
            SourceEvent::InitDone(kind) => {
                let next = t.pending.remove(&kind).unwrap_or_default();
                let current = &t.rows[Source::Kubernetes.index()];
                let mut rows: Vec<(ObjectKey, Option<Stored>)> = current
                    .iter()
                    .filter(|r| r.object.kind() == kind && next.get_like(&r.object).is_none())
                    .map(|r| (r.object.key(), None))
                    .collect();
                rows.extend(
                    next.into_iter()
                        .filter(|r| {
                            !current
                                .get_like(&r.object)
                                .is_some_and(|c| c.same_object(r))
                        })
                        .map(|r| (r.object.key(), Some(r))),
                );
                let out = t.set_rows(Source::Kubernetes, rows);
                t.k8s_listed.insert(kind);
                let all = K8S_KINDS.iter().all(|k| t.k8s_listed.contains(k));
                if all && t.listing.remove(&Source::Kubernetes) {
                    info!("the Kubernetes source has listed its objects: stale load-balancing entries are removed now");
                    let _ = self.commit(&mut t, out.0);
                    t.balancer.release_unused_ids();
                    let result = self.write_all(&t).map_err(|e| e.to_string());
                    let _ = self.record_write(result);
                    drop(t);
                    if out.1 {
                        self.push_namespaces();
                    }
                    return;
                }
                out
            }
            SourceEvent::Apply(o) => {
                let (k, r) = k8s(o);
                t.set_rows(Source::Kubernetes, [(k, Some(r))])
            }
            SourceEvent::Delete(k) => t.set_rows(Source::Kubernetes, [(k, None)]),
        };
        let _ = self.commit(&mut t, changes);
        drop(t);
        if namespaces {
            self.push_namespaces();
        }
    }

    /// Writes the whole state into the datapath (at start, and to repair after a failed
    /// write). Returns the error text when it fails (also kept for the status and logged).
    pub fn sync(&self) -> Result<(), String> {
        let mut t = write(&self.tables);
        let result = self.write_all(&t).map_err(|e| e.to_string());
        if result.is_ok() && t.listing.is_empty() {
            t.balancer.release_unused_ids();
        }
        self.record_write(result)
    }

    /// One wake-up: re-reads the manifest directory's changed files, and writes the whole
    /// state again when a write failed.
    pub fn tick(&self) {
        self.reload_dir();
        if lock(&self.health).resync {
            let _ = self.sync();
        }
    }

    /// What wakes the Services loop (the manifest directory's watch notifies it).
    pub fn wake_handle(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    fn source_of(t: &Tables, namespace: &str, name: &str) -> String {
        let key = ObjectKey {
            kind: Kind::Service,
            namespace: namespace.into(),
            name: name.into(),
        };
        match t.effective(&key) {
            Some((Source::ManifestDir, r)) => r.source.to_string(),
            Some((Source::Kubernetes, _)) => KUBERNETES_SOURCE.to_owned(),
            Some((Source::Api, _)) => API_SOURCE.to_owned(),
            None => String::new(),
        }
    }

    /// Every Service, sorted by namespace/name.
    pub fn list(&self) -> Vec<ServiceView> {
        let t = read(&self.tables);
        let mut views = t.balancer.views();
        for v in &mut views {
            v.source = Self::source_of(&t, &v.namespace, &v.name);
        }
        views
    }

    /// One Service.
    pub fn get(&self, namespace: &str, name: &str) -> Option<ServiceView> {
        let t = read(&self.tables);
        let n = ServiceName::new(namespace, name);
        let mut v = t.balancer.view(&n)?;
        v.source = Self::source_of(&t, namespace, name);
        Some(v)
    }

    /// The Service of the frontend with reverse-NAT index `index` (what flows name).
    pub fn service_by_rev_nat(&self, index: u16) -> Option<ServiceRef> {
        read(&self.tables).balancer.service_by_rev_nat(index)
    }

    /// The Service of a frontend.
    pub fn service_by_frontend(
        &self,
        addr: Ipv4Addr,
        port: u16,
        proto: ciliate_model::lb::L4Proto,
    ) -> Option<ServiceRef> {
        read(&self.tables)
            .balancer
            .service_by_frontend(&(addr, port, proto))
    }

    /// Counts and problems.
    pub fn status(&self) -> ServicesStatus {
        let mut problems: Vec<String> = lock(&self.dir_watch)
            .problems
            .iter()
            .map(|p| format!("manifest directory: {p}"))
            .collect();
        if let Some(e) = &lock(&self.health).sync_error {
            problems.push(format!(
                "cannot program the Services into the datapath: {e}; retrying every {}s",
                POLL_INTERVAL.as_secs()
            ));
        }
        let t = read(&self.tables);
        if t.listing.contains(&Source::Kubernetes) {
            problems.push(
                "waiting for the Kubernetes API's first list: stale load-balancing entries are \
                 kept until it is complete"
                    .into(),
            );
        }
        // An API object is shadowed by a row of a source ahead of it: those sources' rows are
        // walked (few, as a rule) and looked up among the API's, not the API's rows (50,000
        // Services are 100,000 rows: ~10 ms a call) among theirs.
        let api = &t.rows[Source::Api.index()];
        let mut shadowed: Vec<String> = Source::ALL
            .into_iter()
            .filter(|s| *s != Source::Api)
            .flat_map(|s| t.rows[s.index()].iter().map(move |r| (s, r)))
            .filter_map(|(s, r)| {
                let k = r.object.key();
                if !api.contains_key(&k) || t.effective(&k).map(|(e, _)| e) != Some(s) {
                    return None;
                }
                Some(match s {
                    Source::ManifestDir => format!(
                        "{k} is defined both through the API and by {}; the file's copy is in force",
                        r.source
                    ),
                    _ => format!(
                        "{k} is defined both through the API and in Kubernetes; the Kubernetes copy is in force"
                    ),
                })
            })
            .collect();
        shadowed.sort();
        problems.extend(shadowed);
        for c in t.balancer.conflicts() {
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
        ServicesStatus {
            services: t.balancer.service_count(),
            backends: t.balancer.backend_count(),
            problems,
        }
    }
}

/// The kinds the Kubernetes source lists for this store (not `v1/Endpoints`: EndpointSlices
/// replace them, as for kube-proxy).
pub const K8S_KINDS: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Namespace];

/// `source` of the views of Services from the Kubernetes API.
pub const KUBERNETES_SOURCE: &str = "kubernetes";

/// The directory of the per-source journals in the node's state directory.
pub const OBJECTS_DIR: &str = "objects";

/// Wakes on every change of the manifest directory (and every `interval` while a datapath
/// write is to be retried, or to catch a missed notification) until `shutdown`.
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
            _ = manager.wake.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let m = Arc::clone(&manager);
        // Reading files and writing maps block.
        if let Err(e) = tokio::task::spawn_blocking(move || m.tick()).await {
            warn!(error = %e, "the Services loop panicked; retrying next interval");
        }
    }
}

#[cfg(test)]
mod tests;
