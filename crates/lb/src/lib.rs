//! Load balancing, computed: Kubernetes Services and their endpoints → the frontends, backends
//! and reverse-NAT entries the datapath holds ([`LbState`]), plus a per-Service view of the
//! same for people ([`ServiceView`]).
//!
//! Pure: no I/O, no clock, no kernel. [`compute`] is a function of the objects, the node and
//! the [`IdAllocator`] (which it updates), so the agent can run it on every change, and tests
//! can run it on anything.
//!
//! What it does, as kube-proxy does it:
//!
//! * One frontend per address × Service port: the cluster IP, each external IP, each
//!   load-balancer ingress IP (LoadBalancer Services) and each node address given in [`Node`]
//!   with the port's `nodePort` (NodePort and LoadBalancer Services). Headless and ExternalName
//!   Services have none.
//! * Backends come from the EndpointSlices labelled `kubernetes.io/service-name: <service>`
//!   in the Service's namespace (and from `v1/Endpoints` of the same name, converted). A slice
//!   port serves a Service port when its name and protocol are the Service port's (what the
//!   EndpointSlice controller writes), and its number is used as is, whatever `targetPort`
//!   says (kube-proxy's rule); a named `targetPort` also matches a slice port of that name.
//! * Conditions: ready → active; not ready but serving and terminating → terminating (new
//!   connections only when no backend is active; its own connections continue); not serving →
//!   left out. Like kube-proxy, only an endpoint's first address is used.
//! * `internalTrafficPolicy: Local` limits the cluster IP, `externalTrafficPolicy: Local` the
//!   other frontends, to endpoints whose `nodeName` is this node.
//! * `sessionAffinity: ClientIP` sets the frontend's affinity timeout.
//! * A cluster IP belongs to one Service (the API server refuses any reuse): a second Service
//!   on it, by namespace/name, gets no frontend and a [`Conflict`]; so does a Service whose
//!   frontend another already has.
//!
//! Ids are stable: see [`alloc`]. [`LbDiff`] says what changed between two states.

#![forbid(unsafe_code)]

pub mod alloc;
pub mod balancer;
pub mod table;

/// The difference between two states (defined in `ciliate-model`, which the datapath shares).
pub mod diff {
    pub use ciliate_model::lb_diff::{frontend_key, LbDiff};
}

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ciliate_model::k8s::{
    AddressType, EndpointSlice, IntOrString, Object, Service, ServicePort, ServiceType,
    TrafficPolicy,
};
use ciliate_model::lb::{
    BackendState, FrontendKind, L4Proto, LbBackend, LbFrontend, LbState, ServiceRef,
};
use ciliate_model::service::{BackendView, FrontendView, ServiceView};

pub use alloc::{AllocatorSnapshot, BackendKey, FrontendKey, IdAllocator};
pub use balancer::Balancer;
pub use diff::LbDiff;

/// Why load-balancing state could not be computed. Nothing was changed when it fails.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LbError {
    /// More frontends than 16-bit reverse-NAT indexes.
    #[error(
        "{wanted} frontends need a reverse-NAT index each, but there are only 65535 ({kept} of \
         them already had one); remove Services, ports or external addresses"
    )]
    RevNatExhausted {
        /// Frontends wanted.
        wanted: usize,
        /// How many of them already had an index.
        kept: usize,
    },
    /// Every backend id is in use.
    #[error("every backend id is in use; remove EndpointSlices")]
    BackendIdsExhausted,
    /// A persisted allocator is inconsistent.
    #[error("invalid id allocator state: {0}")]
    Snapshot(String),
}

/// What the computation needs to know of the node it runs for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// The node's name, compared with endpoints' `nodeName` for `Local` traffic policies.
    pub name: String,
    /// The addresses NodePort frontends listen on.
    pub addresses: Vec<Ipv4Addr>,
}

/// Two Services claim the same frontend, or the same cluster IP; the first by namespace/name
/// keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// What is claimed twice.
    pub kind: ConflictKind,
    /// `addr:port/PROTO` for a frontend, the address for a cluster IP.
    pub frontend: String,
    /// `namespace/name` of the Service that has it.
    pub holder: String,
    /// `namespace/name` of the Service that does not get it.
    pub loser: String,
}

/// What two Services claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// One address, port and protocol (external, load-balancer or node address).
    Frontend,
    /// A cluster IP, whatever the ports: Kubernetes gives one to one Service only, so the
    /// second Service gets no frontend at all.
    ClusterIp,
}

/// The result of [`compute`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbPlan {
    /// What the datapath should hold.
    pub state: LbState,
    /// Every Service, sorted by namespace/name, with its frontends and backends (`source`
    /// is left empty for the caller to fill).
    pub services: Vec<ServiceView>,
    /// Frontends claimed by more than one Service.
    pub conflicts: Vec<Conflict>,
}

/// A backend a Service port could use, before ids.
#[derive(Clone, Debug)]
struct Candidate {
    addr: Ipv4Addr,
    port: u16,
    state: BackendState,
    /// Whether it runs on this node (its `nodeName` is the node's), for `Local` policies.
    local: bool,
}

/// A frontend of a Service port, before ids.
#[derive(Clone, Debug)]
struct PlannedFrontend {
    addr: Ipv4Addr,
    port: u16,
    proto: L4Proto,
    kind: FrontendKind,
    port_name: String,
    /// Eligible backends (traffic policy applied), sorted by address and port.
    backends: Vec<Candidate>,
}

/// Computes the load-balancing state of `objects` (Services, EndpointSlices, Endpoints; other
/// objects are not expected but ignored) for `node`, giving ids from `ids` and updating it:
/// keys still in use keep their ids, keys gone free theirs. On error `ids` is unchanged.
pub fn compute<'a>(
    objects: impl IntoIterator<Item = &'a Object>,
    node: &Node,
    ids: &mut IdAllocator,
) -> Result<LbPlan, LbError> {
    let mut services: BTreeMap<(&str, &str), &Service> = BTreeMap::new();
    let mut slices: Vec<&EndpointSlice> = Vec::new();
    let mut converted: Vec<EndpointSlice> = Vec::new();
    for o in objects {
        match o {
            Object::Service(s) => {
                services.insert((s.metadata.namespace.as_str(), s.metadata.name.as_str()), s);
            }
            Object::EndpointSlice(s) => slices.push(s),
            Object::Endpoints(e) => converted.extend(e.to_slices()),
            // Namespaces matter to policy only.
            Object::Namespace(_) => {}
        }
    }
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices.into_iter().chain(&converted) {
        if let Some(svc) = s.service_name() {
            by_service
                .entry((s.metadata.namespace.as_str(), svc))
                .or_default()
                .push(s);
        }
    }
    for list in by_service.values_mut() {
        // Deterministic whatever order the objects came in.
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }

    let mut views = Vec::with_capacity(services.len());
    let mut planned: Vec<(usize, PlannedFrontend, Option<u32>)> = Vec::new();
    let mut claimed: BTreeMap<FrontendKey, usize> = BTreeMap::new();
    let mut conflicts = Vec::new();
    let mut cluster_ips: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (&(namespace, name), svc) in &services {
        let view_index = views.len();
        let mut view = empty_view(namespace, name, svc);
        // "None" (headless) and "" parse as no address: only real ones are allocated.
        if let Ok(ip) = view.cluster_ip.parse::<Ipv4Addr>() {
            if let Some(&holder) = cluster_ips.get(&ip) {
                let holder: &ServiceView = &views[holder];
                view.problems.push(format!(
                    "cluster IP {ip} is allocated to Service {}; this Service gets no frontend",
                    holder.full_name()
                ));
                conflicts.push(Conflict {
                    kind: ConflictKind::ClusterIp,
                    frontend: ip.to_string(),
                    holder: holder.full_name(),
                    loser: view.full_name(),
                });
                views.push(view);
                continue;
            }
            cluster_ips.insert(ip, view_index);
        }
        let balanced =
            svc.spec.service_type != ServiceType::ExternalName && !svc.spec.is_headless();
        if balanced {
            let slices = by_service
                .get(&(namespace, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            for sp in &svc.spec.ports {
                for f in plan_port(svc, sp, slices, node, &mut view.problems) {
                    let key = (f.addr, f.port, f.proto);
                    match claimed.get(&key) {
                        Some(&holder) if holder == view_index => {}
                        Some(&holder) => {
                            let holder: &ServiceView = &views[holder];
                            let frontend = format!("{}:{}/{}", f.addr, f.port, f.proto);
                            view.problems.push(format!(
                                "frontend {frontend} is held by Service {}; not programmed for this one",
                                holder.full_name()
                            ));
                            conflicts.push(Conflict {
                                kind: ConflictKind::Frontend,
                                frontend,
                                holder: holder.full_name(),
                                loser: view.full_name(),
                            });
                        }
                        None => {
                            claimed.insert(key, view_index);
                            planned.push((view_index, f, view.affinity_timeout));
                        }
                    }
                }
            }
        }
        views.push(view);
    }

    let backend_keys: BTreeSet<BackendKey> = planned
        .iter()
        .flat_map(|(_, f, _)| f.backends.iter().map(|b| (b.addr, b.port, f.proto)))
        .collect();
    let frontend_keys: BTreeSet<FrontendKey> = claimed.keys().copied().collect();
    ids.assign(&backend_keys, &frontend_keys)?;

    let mut state = LbState::default();
    let mut backends: BTreeMap<u32, LbBackend> = BTreeMap::new();
    for (view_index, f, affinity_timeout) in planned {
        let key = (f.addr, f.port, f.proto);
        // Every key was just given an id by `assign`.
        let rev_nat_index = ids.rev_nat_index(&key).unwrap_or_default();
        let id_of = |b: &Candidate| {
            ids.backend_id(&(b.addr, b.port, f.proto))
                .unwrap_or_default()
        };
        let slots = slot_ids(&f.backends, id_of);
        for b in &f.backends {
            let id = id_of(b);
            let entry = backends.entry(id).or_insert_with(|| LbBackend {
                id,
                addr: b.addr,
                port: b.port,
                proto: f.proto,
                state: b.state,
            });
            // Ready for one Service beats terminating for another.
            entry.state = entry.state.min(b.state);
        }
        let view = &mut views[view_index];
        view.frontends.push(FrontendView {
            addr: f.addr,
            port: f.port,
            proto: f.proto,
            kind: f.kind,
            port_name: f.port_name.clone(),
            rev_nat_index,
            backends: f
                .backends
                .iter()
                .map(|b| BackendView {
                    id: id_of(b),
                    addr: b.addr,
                    port: b.port,
                    state: b.state,
                })
                .collect(),
        });
        state.frontends.push(LbFrontend {
            addr: f.addr,
            port: f.port,
            proto: f.proto,
            kind: f.kind,
            rev_nat_index,
            backends: slots,
            affinity_timeout,
            service: ServiceRef {
                namespace: view.namespace.clone(),
                name: view.name.clone(),
                port_name: f.port_name,
            },
        });
    }
    state.frontends.sort_by_key(|f| (f.addr, f.port, f.proto));
    state.backends = backends.into_values().collect();
    for v in &mut views {
        v.frontends.sort_by_key(|f| (f.addr, f.port, f.proto));
    }
    Ok(LbPlan {
        state,
        services: views,
        conflicts,
    })
}

/// The backend ids a frontend's slots hold: its active backends or, with none active,
/// kube-proxy's fallback: terminating-but-serving endpoints take new connections rather than
/// refusing them.
fn slot_ids(backends: &[Candidate], id_of: impl Fn(&Candidate) -> u32) -> Vec<u32> {
    let active: Vec<u32> = backends
        .iter()
        .filter(|b| b.state == BackendState::Active)
        .map(&id_of)
        .collect();
    if active.is_empty() {
        backends.iter().map(id_of).collect()
    } else {
        active
    }
}

/// A Service's view before its frontends and problems are known.
fn empty_view(namespace: &str, name: &str, svc: &Service) -> ServiceView {
    ServiceView {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service_type: svc.spec.service_type,
        cluster_ip: cluster_ip(svc),
        affinity_timeout: svc.spec.affinity_timeout(),
        source: String::new(),
        frontends: Vec::new(),
        problems: Vec::new(),
    }
}

/// The cluster IP as written, defaulted from `clusterIPs[0]` as the API server does.
fn cluster_ip(svc: &Service) -> String {
    cluster_ip_str(svc).to_owned()
}

fn cluster_ip_str(svc: &Service) -> &str {
    if svc.spec.cluster_ip.is_empty() {
        svc.spec.cluster_ips.first().map_or("", |s| s.as_str())
    } else {
        &svc.spec.cluster_ip
    }
}

/// The cluster IP, if it is an address ("None", headless, and "" are not).
fn cluster_ip_addr(svc: &Service) -> Option<Ipv4Addr> {
    cluster_ip_str(svc).parse().ok()
}

/// `http` or, for an unnamed port, `80/TCP`: how messages name a Service port.
fn port_label(sp: &ServicePort) -> String {
    if sp.name.is_empty() {
        format!("{}/{}", sp.port, sp.protocol)
    } else {
        sp.name.to_string()
    }
}

/// The frontends of one Service port, each with its eligible backends.
fn plan_port(
    svc: &Service,
    sp: &ServicePort,
    slices: &[&EndpointSlice],
    node: &Node,
    problems: &mut Vec<String>,
) -> Vec<PlannedFrontend> {
    let Ok(port) = u16::try_from(sp.port) else {
        return Vec::new();
    };
    let candidates = resolve_backends(sp, slices, &node.name, problems);
    frontend_addrs(svc, sp, port, node, Some(problems))
        .into_iter()
        .map(|(addr, port, kind, local_only)| PlannedFrontend {
            addr,
            port,
            proto: sp.protocol,
            kind,
            port_name: sp.name.to_string(),
            backends: candidates
                .iter()
                .filter(|b| !local_only || b.local)
                .cloned()
                .collect(),
        })
        .collect()
}

/// The frontend keys of one Service port, in plan order (what [`plan_port`] gives, without
/// backends or problems: what a Service claims, cheap enough to ask before a batch).
fn port_keys(svc: &Service, sp: &ServicePort, node: &Node) -> Vec<FrontendKey> {
    let Ok(port) = u16::try_from(sp.port) else {
        return Vec::new();
    };
    frontend_addrs(svc, sp, port, node, None)
        .into_iter()
        .map(|(addr, port, _, _)| (addr, port, sp.protocol))
        .collect()
}

/// The addresses of one Service port: (address, port, kind, whether only local endpoints
/// serve it).
fn frontend_addrs(
    svc: &Service,
    sp: &ServicePort,
    port: u16,
    node: &Node,
    problems: Option<&mut Vec<String>>,
) -> Vec<(Ipv4Addr, u16, FrontendKind, bool)> {
    let spec = &svc.spec;
    let local = |p: Option<TrafficPolicy>| p == Some(TrafficPolicy::Local);
    let mut addrs: Vec<(Ipv4Addr, u16, FrontendKind, bool)> = Vec::new();
    if let Some(ip) = cluster_ip_addr(svc) {
        addrs.push((
            ip,
            port,
            FrontendKind::ClusterIp,
            local(spec.internal_traffic_policy),
        ));
    }
    let external = local(spec.external_traffic_policy);
    for ip in spec.external_ips.iter().filter_map(|s| s.parse().ok()) {
        addrs.push((ip, port, FrontendKind::ExternalIp, external));
    }
    if spec.service_type == ServiceType::LoadBalancer {
        for ip in svc
            .status
            .load_balancer
            .ingress
            .iter()
            .filter_map(|i| i.ip.parse().ok())
        {
            addrs.push((ip, port, FrontendKind::LoadBalancer, external));
        }
    }
    if matches!(
        spec.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) {
        if let Some(node_port) = sp.node_port.and_then(|n| u16::try_from(n).ok()) {
            if let (true, Some(problems)) = (node.addresses.is_empty(), problems) {
                problems.push(format!(
                    "port {}: node port {node_port} is not programmed: the agent knows no node \
                     address (start it with --node-ip)",
                    port_label(sp)
                ));
            }
            for &ip in &node.addresses {
                addrs.push((ip, node_port, FrontendKind::NodePort, external));
            }
        }
    }
    addrs
}

/// The backends of one Service port across its slices, deduplicated by address and port
/// (the better state wins), sorted by address and port.
fn resolve_backends(
    sp: &ServicePort,
    slices: &[&EndpointSlice],
    node_name: &str,
    problems: &mut Vec<String>,
) -> Vec<Candidate> {
    let mut out: BTreeMap<(Ipv4Addr, u16), Candidate> = BTreeMap::new();
    let mut matched = false;
    for slice in slices {
        if slice.address_type != AddressType::IPv4 {
            continue;
        }
        let Some(port) = slice_port(slice, sp) else {
            continue;
        };
        matched = true;
        for ep in &slice.endpoints {
            let c = &ep.conditions;
            let state = if c.is_ready() {
                BackendState::Active
            } else if c.is_serving() && c.is_terminating() {
                BackendState::Terminating
            } else {
                continue;
            };
            let Some(addr) = ep.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let e = out.entry((addr, port)).or_insert_with(|| Candidate {
                addr,
                port,
                state,
                local: ep.node_name == node_name,
            });
            if state < e.state {
                e.state = state;
                e.local = ep.node_name == node_name;
            }
        }
    }
    if !slices.is_empty() && !matched {
        problems.push(format!(
            "port {}: no EndpointSlice port serves it (slice ports are named after the Service \
             port{}, protocol {})",
            port_label(sp),
            match &sp.target_port {
                Some(IntOrString::String(t)) => format!(", or after its targetPort {t:?}"),
                _ => String::new(),
            },
            sp.protocol
        ));
    } else if out.is_empty() {
        problems.push(format!(
            "port {}: no ready or terminating endpoints: connections are refused",
            port_label(sp)
        ));
    }
    out.into_values().collect()
}

/// The port of `slice` that serves `sp`, if any: the slice port of the same name and
/// protocol, its number taken as is, as kube-proxy does (`endpointslicecache`): the slice says
/// where the endpoints listen; `targetPort` only tells the EndpointSlice controller what to
/// write, so a selectorless Service's hand-written slice, or a slice written before a
/// `targetPort` change, still serves. A named `targetPort` also matches a slice port of that
/// name when none is named after the Service port (hand-written slices).
fn slice_port(slice: &EndpointSlice, sp: &ServicePort) -> Option<u16> {
    let ports = || slice.ports.iter().filter(|p| p.protocol == sp.protocol);
    let p = ports()
        .find(|p| p.name == sp.name)
        .or_else(|| match &sp.target_port {
            Some(IntOrString::String(name)) => ports().find(|p| &p.name == name),
            _ => None,
        })?;
    u16::try_from(p.port).ok()
}

#[cfg(test)]
mod tests;
