//! Load balancing, kept up to date: the same rules as [`crate::compute`], applied one change at
//! a time, so that the cost of a change grows with the change and not with the number of
//! Services.
//!
//! A [`Balancer`] holds the objects in force (Services, EndpointSlices, Endpoints), indexes
//! them by the Service they belong to, and remembers per Service what it planned (frontends and
//! their candidate backends) and which frontends it holds. [`Balancer::apply`] takes a batch of
//! upserts and deletes and answers the [`LbDiff`] to write into the datapath: only the
//! frontends and backends of the Services the batch touched (plus, when frontends or cluster
//! IPs are contested, the Services contesting them) are recomputed.
//!
//! Who holds a contested cluster IP or frontend is decided as [`crate::compute`] decides it,
//! independent of the order changes came in: the first Service by namespace/name. The property
//! tests check that any sequence of batches ends in the state `compute` gives for the final
//! objects (ids aside: they depend on history, by design).
//!
//! Ids: a frontend that stays keeps its reverse-NAT index and a backend that stays keeps its
//! id, within a batch too (ids are freed only after the batch's new ones are given), so a
//! Service update never renumbers what conntrack entries name.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::Ipv4Addr;
use std::sync::Arc;

use smallvec::SmallVec;

use ciliate_model::k8s::{EndpointSlice, Kind, Object, ObjectKey, Service, ServiceType};
use ciliate_model::lb::{
    BackendState, FrontendKind, L4Proto, LbBackend, LbFrontend, LbState, ServiceRef,
};
use ciliate_model::service::{BackendView, FrontendView, ServiceView};

use crate::alloc::{BackendKey, FrontendKey, IdAllocator, MAX_REV_NAT};
use crate::table::{ObjectRow, ObjectTable};
use crate::{
    cluster_ip_addr, plan_port, port_keys, Candidate, Conflict, ConflictKind, LbDiff, LbError, Node,
};

/// The balancer's hash tables: keyed by names and addresses, looked up several times per
/// Service of a batch, where SipHash (std's default) of a namespace and a name was a tenth of
/// programming 10,000 Services. foldhash is seeded per process.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A sorted set that is nearly always of one element (the Services claiming one address, the
/// slices of one Service): one element is kept in place, more in a vector. A `BTreeSet`
/// allocates a whole node of eleven slots for one, which at 10,000 Services was most of the
/// balancer's memory; a vector of one still took a block of its own for each set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SmallSet<T>(SmallVec<[T; 1]>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        Self(SmallVec::new())
    }
}

impl<T: Ord> SmallSet<T> {
    /// Adds `t`; whether it was new.
    pub fn insert(&mut self, t: T) -> bool {
        match self.0.binary_search(&t) {
            Ok(_) => false,
            Err(i) => {
                // Room for exactly one more: growing doubles it.
                self.0.reserve_exact(1);
                self.0.insert(i, t);
                true
            }
        }
    }

    /// Removes `t`; whether it was there.
    pub fn remove(&mut self, t: &T) -> bool {
        match self.0.binary_search(t) {
            Ok(i) => {
                self.0.remove(i);
                if self.0.capacity() > 2 * self.0.len() + 1 {
                    // Back in place when one is left.
                    self.0.shrink_to_fit();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// The least element.
    pub fn first(&self) -> Option<&T> {
        self.0.first()
    }

    /// Elements, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Batches of at least this many changes are followed by [`Balancer::compact`] (a few ms at
/// 50,000 Services, against the hundreds the batch took).
const COMPACT_AFTER: usize = 1_000;

/// Frontend keys of one Service: nearly always one (a ClusterIP Service of one port), kept in
/// place.
type Keys = SmallVec<[FrontendKey; 1]>;

/// A Service's namespace and name, shared: the balancer's tables name each Service several
/// times (its objects, plan, claims, holdings), and one copy of the strings serves them all.
/// Ordered as the pair (namespace, name); both are kept in one string (at 10,000 Services, a
/// pair of `String`s behind the `Arc` took 144 bytes of chunks per Service, this 80).
#[derive(Clone)]
pub struct ServiceName(Arc<NameText>);

struct NameText {
    /// The namespace, then the name.
    text: Box<str>,
    /// Where the name starts.
    split: u32,
    /// The pair's hash, made once: a batch of 10,000 Services hashed names ~100,000 times in
    /// the balancer's tables, each time reading the text through a second pointer (12 ms of
    /// its 94). Half of a 64-bit hash, in the room `split` leaves (the block stays 40 bytes);
    /// the tables hash it again with their own seeds.
    hash: u32,
}

/// Hashes the names: seeded once per process, so which names collide is not known outside.
static NAME_HASHER: std::sync::LazyLock<foldhash::fast::RandomState> =
    std::sync::LazyLock::new(foldhash::fast::RandomState::default);

impl ServiceName {
    /// The name of Service `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        let mut text = String::with_capacity(namespace.len() + name.len());
        text.push_str(namespace);
        text.push_str(name);
        // A name longer than 4 GB is not a Kubernetes name (253 bytes at most); saturating
        // only makes such names compare by their text.
        let split = u32::try_from(namespace.len()).unwrap_or(u32::MAX);
        // Equal pairs are equal texts split at the same place, and the other way round.
        let hash = NAME_HASHER.hash_one((text.as_str(), split)) as u32;
        Self(Arc::new(NameText {
            text: text.into_boxed_str(),
            split,
            hash,
        }))
    }

    fn split(&self) -> usize {
        // Saturated only for a namespace above 4 GB: then the whole text is the namespace.
        usize::try_from(self.0.split)
            .unwrap_or(usize::MAX)
            .min(self.0.text.len())
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.0.text[..self.split()]
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0.text[self.split()..]
    }

    fn pair(&self) -> (&str, &str) {
        (self.namespace(), self.name())
    }
}

impl Default for ServiceName {
    fn default() -> Self {
        Self::new("", "")
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.name())
    }
}

impl PartialEq for ServiceName {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash
                && self.0.split == other.0.split
                && self.0.text == other.0.text)
    }
}

impl Eq for ServiceName {}

impl Hash for ServiceName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Made from the text and the split, which `eq` compares: equal names, equal hashes.
        state.write_u32(self.0.hash);
    }
}

impl PartialOrd for ServiceName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServiceName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            // The tables share one name per Service: a lookup ends on the same pointer.
            return std::cmp::Ordering::Equal;
        }
        self.pair().cmp(&other.pair())
    }
}

/// An EndpointSlice or Endpoints object and the Service it serves.
#[derive(Clone, Debug)]
struct SliceRow {
    service: ServiceName,
    object: Arc<Object>,
}

impl ObjectRow for SliceRow {
    fn object(&self) -> &Object {
        &self.object
    }
}

/// A slice of a Service, ordered and compared by its key (kind, namespace, name), which its
/// object carries: a set of them needs no copy of the keys.
#[derive(Clone, Debug)]
struct SliceRef(Arc<Object>);

impl SliceRef {
    fn key(&self) -> (Kind, &str, &str) {
        let m = self.0.metadata();
        (self.0.kind(), &m.namespace, &m.name)
    }
}

impl PartialEq for SliceRef {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for SliceRef {}

impl PartialOrd for SliceRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SliceRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// One change of a batch.
#[derive(Clone, Debug)]
pub enum Change {
    /// The object is now this (created or replaced).
    Upsert(Arc<Object>),
    /// The object is gone.
    Delete(ObjectKey),
}

/// What a Service planned: its problems and frontends (before any contest), in port order.
/// Kept as long as the Service is, in one block for its frontends (a Service of one port and
/// two endpoints had four: its ports, their frontends, the port's name and the candidates).
#[derive(Debug, Default)]
struct Planned {
    cluster_ip: Option<Ipv4Addr>,
    /// Each problem with the index of the Service port it is about.
    problems: Box<[(u32, String)]>,
    fronts: Box<[PlanFront]>,
}

impl Planned {
    /// Frontend keys it claims when it holds its cluster IP (deduplicated, in plan order).
    fn keys(&self) -> impl Iterator<Item = FrontendKey> + '_ {
        self.fronts.iter().filter(|f| f.first).map(PlanFront::key)
    }
}

/// A planned frontend ([`PlannedFrontend`]) as the balancer keeps it: its port by index in
/// the Service's `spec.ports` (the name is there), its backends in place when two or fewer.
#[derive(Clone, Debug)]
struct PlanFront {
    addr: Ipv4Addr,
    port: u16,
    proto: L4Proto,
    kind: FrontendKind,
    /// Whether no earlier frontend of the plan has its key: the first one is in force.
    first: bool,
    /// Index of its port in the Service's `spec.ports`.
    port_index: u32,
    backends: SmallVec<[Candidate; 2]>,
}

impl PlanFront {
    fn key(&self) -> FrontendKey {
        (self.addr, self.port, self.proto)
    }
}

/// A frontend a Service holds: its reverse-NAT index. The rest of its [`LbFrontend`] is in
/// the tables already (the address, port and protocol are its key; kind, port and backends
/// in the Service's plan; the backends' ids in the backend table; the affinity in the
/// Service), so nothing is copied per frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeldFrontend {
    service: ServiceName,
    rev_nat_index: u16,
}

/// A backend in use: how the frontends holding it use it, and its id and state in the
/// datapath (`None` until the batch that brought it gives it an id). One table for both (two
/// tables keyed alike took ~40 bytes more per Service of two backends).
#[derive(Clone, Copy, Debug, Default)]
struct BackendEntry {
    uses: BackendUse,
    programmed: Option<(u32, BackendState)>,
}

impl BackendEntry {
    /// The backend as the datapath takes it, once programmed.
    fn lb_backend(&self, k: &BackendKey) -> Option<LbBackend> {
        self.programmed.map(|(id, state)| LbBackend {
            id,
            addr: k.0,
            port: k.1,
            proto: k.2,
            state,
        })
    }
}

/// Reference counts of one backend across the frontends holding it, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BackendUse {
    active: u32,
    terminating: u32,
}

impl BackendUse {
    fn add(&mut self, s: BackendState, n: i64) {
        let c = match s {
            BackendState::Active => &mut self.active,
            BackendState::Terminating => &mut self.terminating,
        };
        *c = (i64::from(*c) + n).max(0) as u32;
    }

    fn state(self) -> Option<BackendState> {
        if self.active > 0 {
            Some(BackendState::Active)
        } else if self.terminating > 0 {
            Some(BackendState::Terminating)
        } else {
            None
        }
    }
}

/// The load-balancing state of a node, maintained incrementally.
#[derive(Debug, Default)]
pub struct Balancer {
    node: Node,
    ids: IdAllocator,
    /// The Services by name. A hash map: a batch looks each Service up several times, and a
    /// B-tree's search compared names through their pointers (at 50,000 Services a restart
    /// spent a tenth of its time there); listings sort.
    services: HashMap<ServiceName, Arc<Object>>,
    /// EndpointSlices and Endpoints by key, with the Service they serve.
    slices: ObjectTable<SliceRow>,
    /// Each Service's slices (the same objects as in `slices`).
    by_service: HashMap<ServiceName, SmallSet<SliceRef>>,
    planned: HashMap<ServiceName, Planned>,
    cluster_ips: HashMap<Ipv4Addr, SmallSet<ServiceName>>,
    claims: HashMap<FrontendKey, SmallSet<ServiceName>>,
    frontends: HashMap<FrontendKey, HeldFrontend>,
    rev_nats: HashMap<u16, FrontendKey>,
    /// Backends in use, and what they are in the datapath.
    backends: HashMap<BackendKey, BackendEntry>,
}

/// The namespace and name of the Service `o` is or serves.
fn raw_name(o: &Object) -> Option<(&str, &str)> {
    match o {
        Object::Service(s) => Some((&s.metadata.namespace, &s.metadata.name)),
        Object::EndpointSlice(s) => s.service_name().map(|n| (&*s.metadata.namespace, n)),
        Object::Endpoints(e) => Some((&e.metadata.namespace, &e.metadata.name)),
        Object::Namespace(_) => None,
    }
}

fn as_service(o: &Object) -> Option<&Service> {
    match o {
        Object::Service(s) => Some(s),
        _ => None,
    }
}

fn full_name(n: &ServiceName) -> String {
    format!("{}/{}", n.namespace(), n.name())
}

impl Balancer {
    /// An empty balancer for `node`, giving ids from `ids` (seeded with what the datapath
    /// holds after a restart; unused seeds are freed by the first [`Balancer::apply`] through
    /// [`Balancer::release_unused_ids`]).
    pub fn new(node: Node, ids: IdAllocator) -> Self {
        Self {
            node,
            ids,
            ..Self::default()
        }
    }

    /// The node it computes for.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Frees ids not used by the current state (seeded ids of objects that are gone).
    pub fn release_unused_ids(&mut self) {
        let (frontends, backends) = (&self.frontends, &self.backends);
        self.ids
            .retain(|k| backends.contains_key(k), |k| frontends.contains_key(k));
    }

    /// Services known.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Backends programmed.
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Frontends programmed.
    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// The whole state, sorted as [`crate::compute`] sorts it.
    pub fn state(&self) -> LbState {
        let mut frontends: Vec<LbFrontend> = self
            .frontends
            .iter()
            .map(|(k, h)| self.lb_frontend(k, h))
            .collect();
        frontends.sort_by_key(|f| (f.addr, f.port, f.proto));
        let mut backends: Vec<LbBackend> = self
            .backends
            .iter()
            .filter_map(|(k, e)| e.lb_backend(k))
            .collect();
        backends.sort_by_key(|b| b.id);
        LbState {
            frontends,
            backends,
        }
    }

    /// The Service of the frontend with reverse-NAT index `index`.
    pub fn service_by_rev_nat(&self, index: u16) -> Option<ServiceRef> {
        let key = self.rev_nats.get(&index)?;
        self.service_by_frontend(key)
    }

    /// The Service of a frontend.
    pub fn service_by_frontend(&self, key: &FrontendKey) -> Option<ServiceRef> {
        let h = self.frontends.get(key)?;
        let svc = self.services.get(&h.service).and_then(|o| as_service(o));
        let pf = self
            .planned
            .get(&h.service)
            .and_then(|p| planned_frontend(p, key));
        Some(ServiceRef {
            namespace: h.service.namespace().to_owned(),
            name: h.service.name().to_owned(),
            port_name: port_name(svc, pf),
        })
    }

    /// A held frontend as the datapath takes it, from the plan it is held by and the Service
    /// that plan was made of.
    fn lb_frontend(&self, key: &FrontendKey, h: &HeldFrontend) -> LbFrontend {
        let svc = self.services.get(&h.service).and_then(|o| as_service(o));
        self.lb_frontend_of(key, h, self.planned.get(&h.service), svc)
    }

    /// [`Self::lb_frontend`] with the plan and the Service given (while a batch replaces
    /// them, the old ones).
    fn lb_frontend_of(
        &self,
        key: &FrontendKey,
        h: &HeldFrontend,
        plan: Option<&Planned>,
        svc: Option<&Service>,
    ) -> LbFrontend {
        let pf = plan.and_then(|p| planned_frontend(p, key));
        LbFrontend {
            addr: key.0,
            port: key.1,
            proto: key.2,
            kind: pf.map_or(FrontendKind::ClusterIp, |f| f.kind),
            rev_nat_index: h.rev_nat_index,
            backends: pf.map(|f| self.slots(f)).unwrap_or_default(),
            affinity_timeout: svc.and_then(|s| s.spec.affinity_timeout()),
            service: ServiceRef {
                namespace: h.service.namespace().to_owned(),
                name: h.service.name().to_owned(),
                port_name: port_name(svc, pf),
            },
        }
    }

    /// The backend ids of a planned frontend's slots.
    fn slots(&self, f: &PlanFront) -> Vec<u32> {
        crate::slot_ids(&f.backends, |b| self.backend_id(&(b.addr, b.port, f.proto)))
    }

    /// The id of a backend in the datapath (0: none).
    fn backend_id(&self, k: &BackendKey) -> u32 {
        self.backends
            .get(k)
            .and_then(|e| e.programmed)
            .map_or(0, |(id, _)| id)
    }

    /// The Services that would contest a cluster IP or frontend if `changes` were applied,
    /// where one of the contestants is a Service of the batch: what an API request is refused
    /// for. Nothing is changed.
    pub fn conflicts_of(&self, changes: &[Change]) -> Vec<Conflict> {
        // Names borrowed from the changes: a batch of 10,000 Services is checked without a
        // copy of each name.
        type Name<'n> = (&'n str, &'n str);
        fn borrowed(n: &ServiceName) -> Name<'_> {
            n.pair()
        }
        let mut batch: BTreeMap<Name<'_>, Option<&Service>> = BTreeMap::new();
        for c in changes {
            match c {
                Change::Upsert(o) => {
                    if let Some(s) = as_service(o) {
                        batch.insert((&s.metadata.namespace, &s.metadata.name), Some(s));
                    }
                }
                Change::Delete(k) if k.kind == Kind::Service => {
                    batch.insert((&k.namespace, &k.name), None);
                }
                Change::Delete(_) => {}
            }
        }
        let mut out = Vec::new();
        let mut cips: BTreeMap<Ipv4Addr, Name<'_>> = BTreeMap::new();
        let mut keys: HashMap<FrontendKey, Name<'_>> = HashMap::default();
        for (&name, svc) in &batch {
            let Some(svc) = svc else { continue };
            let (cip, fkeys) = self.frontend_keys_of(svc);
            // Another Service (not replaced by the batch) or an earlier one of the batch.
            fn other<'s>(
                claimants: Option<&'s SmallSet<ServiceName>>,
                name: Name<'_>,
                batch: &BTreeMap<Name<'_>, Option<&Service>>,
            ) -> Option<Name<'s>> {
                claimants
                    .into_iter()
                    .flatten()
                    .map(borrowed)
                    .find(|c| *c != name && !batch.contains_key(c))
            }
            let pair = |a: Name<'_>, b: Name<'_>| {
                let (a, b) = if a < b { (a, b) } else { (b, a) };
                (format!("{}/{}", a.0, a.1), format!("{}/{}", b.0, b.1))
            };
            if let Some(ip) = cip {
                let holder = other(self.cluster_ips.get(&ip), name, &batch)
                    .or_else(|| cips.get(&ip).copied());
                if let Some(h) = holder {
                    let (holder, loser) = pair(h, name);
                    out.push(Conflict {
                        kind: ConflictKind::ClusterIp,
                        frontend: ip.to_string(),
                        holder,
                        loser,
                    });
                    continue;
                }
                cips.insert(ip, name);
            }
            // `fkeys` has each key once.
            for k in fkeys {
                let holder =
                    other(self.claims.get(&k), name, &batch).or_else(|| keys.get(&k).copied());
                match holder {
                    Some(h) => {
                        let (holder, loser) = pair(h, name);
                        out.push(Conflict {
                            kind: ConflictKind::Frontend,
                            frontend: format!("{}:{}/{}", k.0, k.1, k.2),
                            holder,
                            loser,
                        });
                    }
                    None => {
                        keys.insert(k, name);
                    }
                }
            }
        }
        out
    }

    /// A Service's cluster IP and frontend keys (what it claims, deduplicated, in plan
    /// order), without planning its backends.
    fn frontend_keys_of(&self, svc: &Service) -> (Option<Ipv4Addr>, Vec<FrontendKey>) {
        let cip = cluster_ip_addr(svc);
        let balanced =
            svc.spec.service_type != ServiceType::ExternalName && !svc.spec.is_headless();
        let mut keys: Vec<FrontendKey> = Vec::new();
        if balanced {
            for sp in &svc.spec.ports {
                for k in port_keys(svc, sp, &self.node) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
        }
        (cip, keys)
    }

    fn plan(&self, svc: &Service, slices: &[&EndpointSlice]) -> Planned {
        let cip = cluster_ip_addr(svc);
        let mut planned = Planned {
            cluster_ip: cip,
            ..Planned::default()
        };
        let balanced =
            svc.spec.service_type != ServiceType::ExternalName && !svc.spec.is_headless();
        if !balanced {
            return planned;
        }
        let mut seen = HashSet::default();
        let mut all_problems = Vec::new();
        let mut all_fronts = Vec::new();
        let mut problems = Vec::new();
        for (i, sp) in svc.spec.ports.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let fronts = plan_port(svc, sp, slices, &self.node, &mut problems);
            all_problems.extend(problems.drain(..).map(|p| (i, p)));
            for f in fronts {
                let first = seen.insert((f.addr, f.port, f.proto));
                all_fronts.push(PlanFront {
                    addr: f.addr,
                    port: f.port,
                    proto: f.proto,
                    kind: f.kind,
                    first,
                    port_index: i,
                    backends: {
                        let mut b = SmallVec::from_vec(f.backends);
                        b.shrink_to_fit();
                        b
                    },
                });
            }
        }
        // Kept until the Service changes: no spare room.
        planned.problems = all_problems.into_boxed_slice();
        planned.fronts = all_fronts.into_boxed_slice();
        planned
    }

    /// The slices of a Service, sorted by name as [`crate::compute`] sorts them: borrowed,
    /// but for `v1/Endpoints`, converted.
    fn slices_of(&self, name: &ServiceName) -> Vec<Cow<'_, EndpointSlice>> {
        let mut out: Vec<Cow<'_, EndpointSlice>> = Vec::new();
        for slice in self.by_service.get(name).into_iter().flatten() {
            match slice.0.as_ref() {
                Object::EndpointSlice(s) => out.push(Cow::Borrowed(s)),
                Object::Endpoints(e) => out.extend(e.to_slices().into_iter().map(Cow::Owned)),
                _ => {}
            }
        }
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }

    /// Whether `changes` fit: refuses what would exhaust reverse-NAT indexes, with an upper
    /// bound (every frontend of every upserted Service new, those of the Services it replaces
    /// or deletes freed). Nothing is changed.
    pub fn check(&self, changes: &[Change]) -> Result<(), LbError> {
        // What the Services the batch replaces or deletes hold, each counted once (nothing
        // while nothing is held: a batch into an empty balancer copies no names for it).
        let mut touched: HashSet<ServiceName> = HashSet::default();
        if !self.frontends.is_empty() {
            for c in changes {
                match c {
                    Change::Upsert(o) if matches!(o.as_ref(), Object::Service(_)) => {
                        touched.extend(raw_name(o).map(|(ns, n)| ServiceName::new(ns, n)));
                    }
                    Change::Delete(k) if k.kind == Kind::Service => {
                        touched.insert(ServiceName::new(&k.namespace, &k.name));
                    }
                    _ => {}
                }
            }
        }
        let freed: usize = touched.iter().map(|n| self.held_keys(n).len()).sum();
        let added: usize = changes
            .iter()
            .filter_map(|c| match c {
                Change::Upsert(o) => as_service(o),
                Change::Delete(_) => None,
            })
            .map(|s| self.frontend_keys_of(s).1.len())
            .sum();
        let wanted = self.frontends.len() - freed + added;
        if wanted > usize::from(MAX_REV_NAT) {
            return Err(LbError::RevNatExhausted {
                wanted,
                kept: self.frontends.len() - freed,
            });
        }

        Ok(())
    }

    /// Applies a batch and answers what to write into the datapath. On error nothing
    /// changed.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<LbDiff, LbError> {
        self.check(&changes)?;
        self.apply_checked(changes)
    }

    /// [`Balancer::apply`] of a batch that [`Balancer::check`] accepted (or a superset of its
    /// upserts: a subset needs no more room) with nothing applied since: the caller checked
    /// before persisting the batch, and holds the balancer throughout. The check is not
    /// repeated; at 10,000 Services it was a tenth of the balancer's time.
    pub fn apply_checked(&mut self, changes: Vec<Change>) -> Result<LbDiff, LbError> {
        let large = changes.len() >= COMPACT_AFTER;
        // Services whose plan is recomputed. Hash sets here and for the closure below: what
        // is done with them does not depend on their order (claims are sorted sets, new ids
        // are given in key order), and a B-tree of names compared through their pointers was
        // a fifth of a 50,000-Service batch.
        let mut touched: HashSet<ServiceName> =
            HashSet::with_capacity_and_hasher(changes.len(), Default::default());
        // The Service each upserted object names (one shared name per Service).
        let mut names: Vec<Option<ServiceName>> = Vec::with_capacity(changes.len());
        // Services and slices the tables do not hold yet: their room is made once below.
        let (mut new_services, mut new_slices) = (0usize, 0usize);
        for c in &changes {
            match c {
                Change::Upsert(o) => {
                    let name = raw_name(o).map(|n| self.intern(&touched, n));
                    match o.as_ref() {
                        Object::Namespace(_) => {}
                        Object::Service(_) => {
                            new_services += usize::from(
                                name.as_ref()
                                    .is_some_and(|n| !self.services.contains_key(n)),
                            );
                        }
                        _ => match self.slices.get_like(o) {
                            Some(old) => {
                                touched.insert(old.service.clone());
                            }
                            None => new_slices += 1,
                        },
                    }
                    touched.extend(name.clone());
                    names.push(name);
                }
                Change::Delete(k) => match k.kind {
                    Kind::Service => {
                        let n = self.intern(&touched, (&k.namespace, &k.name));
                        touched.insert(n);
                    }
                    Kind::Namespace => {}
                    _ => touched.extend(self.slices.get(k).map(|r| r.service.clone())),
                },
            }
        }

        // The Services the batch replaces or deletes, as they were: their frontends are
        // withdrawn from the plans they were made of.
        let replaced: HashMap<ServiceName, Arc<Object>> = touched
            .iter()
            .filter_map(|n| Some((n.clone(), Arc::clone(self.services.get(n)?))))
            .collect();

        // Room for what the batch adds, made once (a table grown from empty by 10,000
        // Services re-hashed its rows at every doubling: ~7 ms of the balancer's 94). Upper
        // bounds of the new entries, so nothing is reserved for a batch of changes to what
        // is held; `shrink` gives back what stays unused.
        if new_services > 0 || new_slices > 0 {
            self.services.reserve(new_services);
            self.planned.reserve(new_services);
            self.by_service.reserve(new_slices);
            self.cluster_ips.reserve(new_services);
            // One frontend per Service port: a lower bound of these, as a rule.
            self.claims.reserve(new_services);
            self.frontends.reserve(new_services);
            self.rev_nats.reserve(new_services);
            self.slices.reserve(new_slices);
        }

        // The objects.
        let mut names = names.into_iter();
        for c in changes {
            match c {
                Change::Upsert(o) => {
                    let name = names.next().flatten();
                    self.put_object(o, name);
                }
                Change::Delete(k) => self.delete_object(&k),
            }
        }

        // New plans of the touched Services.
        let mut next: HashMap<ServiceName, Planned> =
            HashMap::with_capacity_and_hasher(touched.len(), Default::default());
        for name in &touched {
            if let Some(svc) = self.services.get(name).and_then(|o| as_service(o)) {
                let slices = self.slices_of(name);
                let refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
                next.insert(name.clone(), self.plan(svc, &refs));
            }
        }

        // Every Service whose holdings may change: the touched ones and, transitively, those
        // sharing a cluster IP or a frontend key with them (before or after). The new plans
        // are indexed once, so a batch of N Services costs N lookups, not N².
        let mut next_ips: HashMap<Ipv4Addr, Vec<&ServiceName>> = HashMap::default();
        let mut next_keys: HashMap<FrontendKey, Vec<&ServiceName>> = HashMap::default();
        for (n, p) in &next {
            if let Some(ip) = p.cluster_ip {
                next_ips.entry(ip).or_default().push(n);
            }
            for k in p.keys() {
                next_keys.entry(k).or_default().push(n);
            }
        }
        let mut closure: HashSet<ServiceName> =
            HashSet::with_capacity_and_hasher(touched.len(), Default::default());
        let mut queue: Vec<ServiceName> = touched.iter().cloned().collect();
        while let Some(n) = queue.pop() {
            if !closure.insert(n.clone()) {
                continue;
            }
            let plans = [self.planned.get(&n), next.get(&n)];
            for p in plans.into_iter().flatten() {
                let ips = p.cluster_ip.into_iter();
                let sharing = ips
                    .clone()
                    .filter_map(|ip| self.cluster_ips.get(&ip))
                    .flatten()
                    .chain(p.keys().filter_map(|k| self.claims.get(&k)).flatten())
                    .chain(ips.filter_map(|ip| next_ips.get(&ip)).flatten().copied())
                    .chain(
                        p.keys()
                            .filter_map(|k| next_keys.get(&k))
                            .flatten()
                            .copied(),
                    );
                for other in sharing {
                    if !closure.contains(other) {
                        queue.push(other.clone());
                    }
                }
            }
        }

        // Withdraw the closure's claims and holdings.
        let mut old_held: HashMap<FrontendKey, LbFrontend> = HashMap::default();
        let mut touched_backends: HashSet<BackendKey> = HashSet::default();
        for n in &closure {
            if let Some(p) = self.planned.get(n) {
                if let Some(ip) = p.cluster_ip {
                    remove_claim(&mut self.cluster_ips, &ip, n);
                }
                for k in p.keys() {
                    remove_claim(&mut self.claims, &k, n);
                }
            }
            let svc = replaced
                .get(n)
                .or_else(|| self.services.get(n))
                .and_then(|o| as_service(o));
            for k in self.held_keys(n) {
                if let Some(h) = self.frontends.remove(&k) {
                    // Built while the plan it was held by is still in place.
                    let f = self.lb_frontend_of(&k, &h, self.planned.get(n), svc);
                    self.rev_nats.remove(&f.rev_nat_index);
                    if let Some(p) = self.planned.get(n) {
                        for b in candidates_of(p, &k) {
                            let bk = (b.0, b.1, k.2);
                            self.backends.entry(bk).or_default().uses.add(b.2, -1);
                            touched_backends.insert(bk);
                        }
                    }
                    old_held.insert(k, f);
                }
            }
        }
        for (n, p) in next {
            self.planned.insert(n, p);
        }
        for n in &touched {
            if !self.services.contains_key(n) {
                self.planned.remove(n);
            }
        }

        // Claim again: cluster IPs first (a Service without its cluster IP claims nothing).
        for n in &closure {
            if let Some(ip) = self.planned.get(n).and_then(|p| p.cluster_ip) {
                self.cluster_ips.entry(ip).or_default().insert(n.clone());
            }
        }
        let eligible: Vec<ServiceName> = closure
            .iter()
            .filter(|n| {
                self.planned.get(*n).is_some_and(|p| match p.cluster_ip {
                    None => true,
                    Some(ip) => self.cluster_ips.get(&ip).and_then(|s| s.first()) == Some(*n),
                })
            })
            .cloned()
            .collect();
        for n in &eligible {
            for k in self.planned[n].keys() {
                self.claims.entry(k).or_default().insert(n.clone());
            }
        }

        // Holdings, backend use, ids.
        let mut new_keys: Vec<(ServiceName, FrontendKey)> = Vec::new();
        for n in &eligible {
            let p = &self.planned[n];
            let held: Keys = p
                .keys()
                .filter(|k| self.claims.get(k).and_then(|s| s.first()) == Some(n))
                .collect();
            for k in &held {
                for b in candidates_of(p, k) {
                    let bk = (b.0, b.1, k.2);
                    self.backends.entry(bk).or_default().uses.add(b.2, 1);
                    touched_backends.insert(bk);
                }
                new_keys.push((n.clone(), *k));
            }
        }
        let mut diff = LbDiff::default();
        let mut gone_backends = Vec::new();
        // New ids in key order, as `compute` gives them: the same objects loaded afresh get
        // the same ids whatever order they came in.
        let mut touched_backends: Vec<BackendKey> = touched_backends.into_iter().collect();
        touched_backends.sort_unstable();
        new_keys.sort_by_key(|k| k.1);
        for bk in &touched_backends {
            let entry = self.backends.get(bk).copied().unwrap_or_default();
            match entry.uses.state() {
                None => {
                    self.backends.remove(bk);
                    diff.backends_removed.extend(entry.lb_backend(bk));
                    gone_backends.push(*bk);
                }
                Some(state) => {
                    let id = self.ids.ensure_backend(*bk)?;
                    let e = self.backends.entry(*bk).or_default();
                    let old = e.programmed.replace((id, state));
                    let Some(b) = e.lb_backend(bk) else { continue };
                    match old {
                        None => diff.backends_added.push(b),
                        Some(old) if old != (id, state) => diff.backends_changed.push(b),
                        Some(_) => {}
                    }
                }
            }
        }
        for (n, k) in &new_keys {
            let rev_nat_index = self.ids.ensure_rev_nat(*k)?;
            let Some(f) = self.build_frontend(n, k, rev_nat_index) else {
                continue;
            };
            self.rev_nats.insert(rev_nat_index, *k);
            let held = HeldFrontend {
                service: n.clone(),
                rev_nat_index,
            };
            match old_held.remove(k) {
                None => diff.frontends_added.push(f),
                Some(old) if old != f => diff.frontends_changed.push(f),
                Some(_) => {}
            }
            self.frontends.insert(*k, held);
        }
        // Only now free what is gone, so nothing that stays was renumbered.
        for (k, f) in old_held {
            self.ids.release_rev_nat(&k);
            diff.frontends_removed.push(f);
        }
        for bk in gone_backends {
            self.ids.release_backend(&bk);
        }
        for v in [
            &mut diff.frontends_added,
            &mut diff.frontends_changed,
            &mut diff.frontends_removed,
        ] {
            v.sort_by_key(|f| (f.addr, f.port, f.proto));
        }
        for v in [
            &mut diff.backends_added,
            &mut diff.backends_changed,
            &mut diff.backends_removed,
        ] {
            v.sort_by_key(|b| b.id);
        }
        self.shrink();
        if large {
            self.compact();
        }
        Ok(diff)
    }

    /// Rebuilds the id tables' B-trees packed (see [`IdAllocator::compact`]): after a large
    /// batch their nodes are little more than half full.
    fn compact(&mut self) {
        self.ids.compact();
    }

    /// Gives back the tables' room once most of it is unused (after many Services went): a
    /// hash map keeps its capacity when emptied.
    fn shrink(&mut self) {
        self.slices.shrink();
        shrink(&mut self.services);
        shrink(&mut self.by_service);
        shrink(&mut self.planned);
        shrink(&mut self.cluster_ips);
        shrink(&mut self.claims);
        shrink(&mut self.frontends);
        shrink(&mut self.rev_nats);
        shrink(&mut self.backends);
    }

    /// The frontend keys Service `n` holds, in plan order: those of its plan that it holds
    /// in `frontends` (not kept apart, which took ~50 bytes per Service).
    fn held_keys(&self, n: &ServiceName) -> Keys {
        let Some(p) = self.planned.get(n) else {
            return Keys::new();
        };
        p.keys()
            .filter(|k| self.frontends.get(k).is_some_and(|h| h.service == *n))
            .collect()
    }

    /// The shared name of Service `n`: the batch's, or the tables', or a new one.
    fn intern(&self, batch: &HashSet<ServiceName>, (ns, name): (&str, &str)) -> ServiceName {
        let n = ServiceName::new(ns, name);
        if let Some(k) = batch.get(&n) {
            return k.clone();
        }
        if let Some((k, _)) = self.services.get_key_value(&n) {
            return k.clone();
        }
        if let Some((k, _)) = self.by_service.get_key_value(&n) {
            return k.clone();
        }
        n
    }

    /// Stores `o`, which names Service `name` (its own, or the one a slice serves).
    fn put_object(&mut self, o: Arc<Object>, name: Option<ServiceName>) {
        match o.as_ref() {
            Object::Namespace(_) => {}
            Object::Service(_) => {
                if let Some(n) = name {
                    self.services.insert(n, o);
                }
            }
            Object::EndpointSlice(_) | Object::Endpoints(_) => {
                self.unindex_slice(&o);
                // A slice without a service-name label serves nothing; it is kept so that a
                // later delete finds it.
                let n = name.unwrap_or_default();
                self.by_service
                    .entry(n.clone())
                    .or_default()
                    .insert(SliceRef(Arc::clone(&o)));
                self.slices.insert(SliceRow {
                    service: n,
                    object: o,
                });
            }
        }
    }

    fn delete_object(&mut self, key: &ObjectKey) {
        match key.kind {
            Kind::Namespace => {}
            Kind::Service => {
                self.services
                    .remove(&ServiceName::new(&key.namespace, &key.name));
            }
            Kind::EndpointSlice | Kind::Endpoints => {
                if let Some(row) = self.slices.remove(key) {
                    self.unindex(row);
                }
            }
        }
    }

    /// Forgets the slice of `o`'s key, if any.
    fn unindex_slice(&mut self, o: &Object) {
        if let Some(row) = self.slices.remove_like(o) {
            self.unindex(row);
        }
    }

    /// Takes a slice out of its Service's set.
    fn unindex(&mut self, row: SliceRow) {
        if let Some(set) = self.by_service.get_mut(&row.service) {
            set.remove(&SliceRef(row.object));
            if set.is_empty() {
                self.by_service.remove(&row.service);
            }
        }
    }

    fn build_frontend(
        &self,
        n: &ServiceName,
        k: &FrontendKey,
        rev_nat_index: u16,
    ) -> Option<LbFrontend> {
        // Held keys are planned keys, by construction.
        planned_frontend(self.planned.get(n)?, k)?;
        let h = HeldFrontend {
            service: n.clone(),
            rev_nat_index,
        };
        Some(self.lb_frontend(k, &h))
    }

    /// Every Service's view, sorted by namespace/name (`source` left empty).
    pub fn views(&self) -> Vec<ServiceView> {
        let mut names: Vec<&ServiceName> = self.services.keys().collect();
        names.sort_unstable();
        names.into_iter().filter_map(|n| self.view(n)).collect()
    }

    /// One Service's view (`source` left empty).
    pub fn view(&self, n: &ServiceName) -> Option<ServiceView> {
        let svc = as_service(self.services.get(n)?)?;
        let mut view = crate::empty_view(n.namespace(), n.name(), svc);
        let Some(p) = self.planned.get(n) else {
            return Some(view);
        };
        if let Some(ip) = p.cluster_ip {
            if let Some(holder) = self.cluster_ips.get(&ip).and_then(|s| s.first()) {
                if holder != n {
                    view.problems.push(format!(
                        "cluster IP {ip} is allocated to Service {}; this Service gets no frontend",
                        full_name(holder)
                    ));
                    return Some(view);
                }
            }
        }
        let held_keys = self.held_keys(n);
        let held: HashSet<&FrontendKey> = held_keys.iter().collect();
        let mut reported = HashSet::default();
        for port in 0..svc.spec.ports.len() {
            let port = u32::try_from(port).unwrap_or(u32::MAX);
            view.problems.extend(
                p.problems
                    .iter()
                    .filter(|(i, _)| *i == port)
                    .map(|(_, m)| m.clone()),
            );
            for f in p.fronts.iter().filter(|f| f.port_index == port) {
                let k = (f.addr, f.port, f.proto);
                if held.contains(&k) || !reported.insert(k) {
                    continue;
                }
                if let Some(holder) = self.claims.get(&k).and_then(|s| s.first()) {
                    if holder != n {
                        view.problems.push(format!(
                            "frontend {}:{}/{} is held by Service {}; not programmed for this one",
                            f.addr,
                            f.port,
                            f.proto,
                            full_name(holder)
                        ));
                    }
                }
            }
        }
        for k in &held_keys {
            let (Some(fe), Some(pf)) = (self.frontends.get(k), planned_frontend(p, k)) else {
                continue;
            };
            view.frontends.push(FrontendView {
                addr: k.0,
                port: k.1,
                proto: k.2,
                kind: pf.kind,
                port_name: port_name(Some(svc), Some(pf)),
                rev_nat_index: fe.rev_nat_index,
                backends: pf
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        id: self.backend_id(&(b.addr, b.port, k.2)),
                        addr: b.addr,
                        port: b.port,
                        state: b.state,
                    })
                    .collect(),
            });
        }
        view.frontends.sort_by_key(|f| (f.addr, f.port, f.proto));
        Some(view)
    }

    /// Every conflict in force (for the status).
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        let mut ips: Vec<_> = self
            .cluster_ips
            .iter()
            .filter(|(_, s)| s.len() > 1)
            .collect();
        ips.sort();
        for (ip, set) in ips {
            let mut it = set.iter();
            let holder = it.next().map(full_name).unwrap_or_default();
            for loser in it {
                out.push(Conflict {
                    kind: ConflictKind::ClusterIp,
                    frontend: ip.to_string(),
                    holder: holder.clone(),
                    loser: full_name(loser),
                });
            }
        }
        let mut keys: Vec<_> = self.claims.iter().filter(|(_, s)| s.len() > 1).collect();
        keys.sort();
        for (k, set) in keys {
            let mut it = set.iter();
            let holder = it.next().map(full_name).unwrap_or_default();
            for loser in it {
                out.push(Conflict {
                    kind: ConflictKind::Frontend,
                    frontend: format!("{}:{}/{}", k.0, k.1, k.2),
                    holder: holder.clone(),
                    loser: full_name(loser),
                });
            }
        }
        out
    }
}

/// Shrinks `m` when under a quarter of its room is used (rarely: only after it lost most of
/// its entries), so that deleting Services returns their memory.
pub fn shrink<K: Hash + Eq, V, S: BuildHasher>(m: &mut std::collections::HashMap<K, V, S>) {
    if m.capacity() > 64 && m.len() * 4 < m.capacity() {
        m.shrink_to_fit();
    }
}

fn remove_claim<K: Hash + Eq>(
    map: &mut HashMap<K, SmallSet<ServiceName>>,
    key: &K,
    n: &ServiceName,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(n);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The first planned frontend with key `k` (a Service may list one address twice; the first
/// wins, as in [`crate::compute`]).
fn planned_frontend<'a>(p: &'a Planned, k: &FrontendKey) -> Option<&'a PlanFront> {
    p.fronts.iter().find(|f| f.first && f.key() == *k)
}

/// The name of the Service port a planned frontend serves (its plan made of `svc`).
fn port_name(svc: Option<&Service>, f: Option<&PlanFront>) -> String {
    svc.zip(f)
        .and_then(|(s, f)| s.spec.ports.get(usize::try_from(f.port_index).ok()?))
        .map(|sp| sp.name.to_string())
        .unwrap_or_default()
}

/// The candidate backends of a held frontend: (address, port, state).
fn candidates_of(p: &Planned, k: &FrontendKey) -> Vec<(Ipv4Addr, u16, BackendState)> {
    planned_frontend(p, k)
        .map(|f| {
            f.backends
                .iter()
                .map(|b| (b.addr, b.port, b.state))
                .collect()
        })
        .unwrap_or_default()
}

mod load;

#[cfg(test)]
mod tests;
