//! `policy trace`: what a source or destination stands for (an endpoint, an address, a label
//! set), and the engine's verdict on a flow between them with the rule that decides.
//!
//! A peer is written as:
//!
//! * an IPv4 address: an endpoint of this node when one has it, else the identity of the
//!   longest prefix of the ipcache the datapath holds that holds it (the node's own addresses
//!   as `host`, other nodes' pods with their identities, other nodes as `remote-node`, the
//!   CIDR identities policies name), else `world` — exactly as the datapath resolves it
//!   ([`address_identity`]);
//! * a label list (anything with `=` or `:`), e.g. `k8s:app=web,k8s:io.kubernetes.pod.namespace=default`
//!   (`k8s:` is the default source): the identity with exactly these labels, a reserved one
//!   (`reserved:world`), or else a hypothetical identity, as if a pod had them;
//! * an endpoint: its id, container id or `namespace/pod` (a bare name is also tried as a pod
//!   of `default`), of this node or, by pod, of another node of the cluster.
//!
//! Identities of other nodes' endpoints are known from the cluster's kvstore, so a trace
//! between pods of different nodes judges them as the datapath of either node does.

use std::net::Ipv4Addr;

use ciliate_model::bpf_policy::IpcacheEntry;
use ciliate_model::identity::{NumericIdentity, ReservedIdentity, MIN_CLUSTER_IDENTITY};
use ciliate_model::labels::{Labels, POD_NAMESPACE_LABEL, SOURCE_K8S};
use ciliate_model::policy::Direction;
use ciliate_model::policy::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use ciliate_model::policy_api::{
    PolicyTrace, TraceDirection, TraceHttp, TraceL7, TraceL7Match, TraceL7Rule, TracePeer,
    TracePeerKind, TraceReason,
};
use ciliate_model::{Endpoint, PodRef};
use ciliate_policy::l7::{parse_header, HttpRequestView, L7Explanation};
use ciliate_policy::{DirectionVerdict, IdentityLabels, Reason};

use super::{lock, PolicyManager, RemoteEndpoint};
use crate::endpoints::EndpointRef;

/// What to trace: `GET /v1/policy/trace?src=&dst=&dport=&proto=` (and `httpMethod=`,
/// `httpPath=`, `httpHost=`, `httpHeader=` for an HTTP request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceQuery {
    /// The source, as written.
    pub src: String,
    /// The destination, as written.
    pub dst: String,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port (ICMP: the type).
    pub dport: u16,
    /// An HTTP request to judge against the L7 rules, if any.
    pub http: Option<TraceHttp>,
}

/// Why a trace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The query is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A peer names no endpoint of this node.
    #[error("{0}")]
    NotFound(String),
}

/// Reads a protocol: `tcp`, `udp`, `sctp`, `icmp` (any case) or a number.
pub fn parse_proto(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(PROTO_TCP),
        "udp" => Some(PROTO_UDP),
        "sctp" => Some(PROTO_SCTP),
        "icmp" => Some(PROTO_ICMP),
        n => n.parse().ok().filter(|p| *p != 0),
    }
}

/// The identity assumed for a label set no identity has: the first cluster-local number not
/// in use.
fn free_identity(taken: &IdentityLabels) -> NumericIdentity {
    (MIN_CLUSTER_IDENTITY..)
        .find(|id| !taken.contains_key(id))
        .unwrap_or(MIN_CLUSTER_IDENTITY)
}

/// The entry the datapath's LPM lookup finds for `ip` in `ipcache`: the longest prefix that
/// holds it.
pub fn ipcache_lookup(ipcache: &[IpcacheEntry], ip: Ipv4Addr) -> Option<&IpcacheEntry> {
    ipcache
        .iter()
        .filter(|e| e.prefix.contains(&ip))
        .max_by_key(|e| e.prefix.prefix_len())
}

/// The identity the datapath gives `ip` when it is no endpoint of this node
/// (`ipcache_identity` in `bpf/include/ciliate/policy.h`): its ipcache entry's, else world.
pub fn address_identity(ipcache: &[IpcacheEntry], ip: Ipv4Addr) -> NumericIdentity {
    ipcache_lookup(ipcache, ip).map_or(ReservedIdentity::World.id(), |e| e.identity)
}

fn endpoint_peer(query: &str, ep: &Endpoint, known: &IdentityLabels) -> TracePeer {
    TracePeer {
        query: query.to_owned(),
        kind: TracePeerKind::Endpoint,
        identity: ep.identity,
        // As policy sees them (with the namespace's labels).
        labels: known
            .get(&ep.identity)
            .cloned()
            .unwrap_or_else(|| ep.labels.clone()),
        endpoint: Some(ep.id),
        pod: ep.pod.clone(),
        ip: Some(ep.ipv4),
        node: None,
    }
}

fn remote_peer(query: &str, ep: &RemoteEndpoint, known: &IdentityLabels) -> TracePeer {
    TracePeer {
        query: query.to_owned(),
        kind: TracePeerKind::RemoteEndpoint,
        identity: ep.identity,
        labels: known.get(&ep.identity).cloned().unwrap_or_default(),
        endpoint: None,
        pod: ep.pod.clone(),
        ip: Some(ep.ip),
        node: Some(ep.node.clone()),
    }
}

impl PolicyManager {
    /// Resolves one side; hypothetical identities are added to `known`, so that both sides
    /// with the same labels get the same one.
    fn trace_peer(
        &self,
        query: &str,
        endpoints: &[Endpoint],
        known: &mut IdentityLabels,
        notes: &mut Vec<String>,
    ) -> Result<TracePeer, TraceError> {
        let q = query.trim();
        if q.is_empty() {
            return Err(TraceError::Invalid(
                "empty source or destination: give a pod (namespace/name), an endpoint id, an address or labels (k8s:app=web,...)".into(),
            ));
        }
        if let Ok(ip) = q.parse::<Ipv4Addr>() {
            if let Some(ep) = endpoints.iter().find(|e| e.ipv4 == ip) {
                return Ok(endpoint_peer(query, ep, known));
            }
            let identity = address_identity(&self.datapath_ipcache(), ip);
            if let Some(ep) = self
                .remote_endpoints()
                .iter()
                .find(|e| e.ip == ip && e.identity == identity)
            {
                return Ok(remote_peer(query, ep, known));
            }
            return Ok(TracePeer {
                query: query.to_owned(),
                kind: TracePeerKind::Address,
                identity,
                labels: known
                    .get(&identity)
                    .cloned()
                    .or_else(|| self.identity_labels(identity))
                    .unwrap_or_default(),
                endpoint: None,
                pod: None,
                ip: Some(ip),
                node: None,
            });
        }
        if q.contains('=') || q.contains(':') {
            let labels = Labels::parse_list(q, SOURCE_K8S)
                .map_err(|e| TraceError::Invalid(format!("labels {q:?}: {e}")))?;
            // With its namespace's labels, as an identity of these labels has them.
            let labels = self.effective_labels(&labels);
            let found = ReservedIdentity::ALL
                .into_iter()
                .map(|r| (r.id(), r.labels()))
                .chain(self.cidr_identities().into_iter().map(|i| (i.id, i.labels)))
                .chain(known.iter().map(|(id, l)| (*id, l.clone())))
                .find(|(_, l)| *l == labels);
            let (identity, kind) = match found {
                Some((id, _)) => (id, TracePeerKind::Identity),
                None => {
                    let id = free_identity(known);
                    known.insert(id, labels.clone());
                    if labels.get(SOURCE_K8S, POD_NAMESPACE_LABEL).is_none() {
                        notes.push(format!(
                            "{q:?} has no {SOURCE_K8S}:{POD_NAMESPACE_LABEL} label: no namespaced \
                             policy selects such a pod (add k8s:{POD_NAMESPACE_LABEL}=<namespace>)"
                        ));
                    }
                    (id, TracePeerKind::Hypothetical)
                }
            };
            return Ok(TracePeer {
                query: query.to_owned(),
                kind,
                identity,
                labels,
                endpoint: None,
                pod: None,
                ip: None,
                node: None,
            });
        }
        let r = EndpointRef::parse(q);
        let found = endpoints.iter().find(|e| match &r {
            EndpointRef::Id(id) => e.id == *id || e.container_id == q,
            EndpointRef::Pod(p) => e.pod.as_ref() == Some(p),
            EndpointRef::Container(c) => &e.container_id == c,
        });
        let found = found.or_else(|| match &r {
            EndpointRef::Container(name) => {
                let pod = PodRef {
                    namespace: "default".into(),
                    name: name.clone(),
                };
                endpoints.iter().find(|e| e.pod.as_ref() == Some(&pod))
            }
            _ => None,
        });
        if let Some(ep) = found {
            return Ok(endpoint_peer(query, ep, known));
        }
        // A pod of another node of the cluster.
        let pod = match &r {
            EndpointRef::Pod(p) => Some(p.clone()),
            EndpointRef::Container(name) => Some(PodRef {
                namespace: "default".into(),
                name: name.clone(),
            }),
            EndpointRef::Id(_) => None,
        };
        let remote = pod.and_then(|p| {
            self.remote_endpoints()
                .into_iter()
                .find(|e| e.pod.as_ref() == Some(&p))
        });
        match remote {
            Some(ep) => Ok(remote_peer(query, &ep, known)),
            None => Err(TraceError::NotFound(format!(
                "no {r} on this node, nor a pod of that name on another node of the cluster; \
                 give a pod (namespace/name), an endpoint id or container id (see `ciliate \
                 endpoint list`), an IPv4 address, or labels such as \
                 k8s:app=web,k8s:{POD_NAMESPACE_LABEL}=default"
            ))),
        }
    }

    /// The engine's verdict on a flow from `q.src` to `q.dst`. `endpoints` are the node's
    /// endpoints, `identities` the labels of the endpoint identities in use.
    pub fn trace(
        &self,
        endpoints: &[Endpoint],
        identities: &IdentityLabels,
        q: &TraceQuery,
    ) -> Result<PolicyTrace, TraceError> {
        let mut known = self.with_cluster_identities(identities);
        let mut notes = Vec::new();
        let src = self.trace_peer(&q.src, endpoints, &mut known, &mut notes)?;
        let dst = self.trace_peer(&q.dst, endpoints, &mut known, &mut notes)?;
        if let Some(h) = &q.http {
            if q.proto != PROTO_TCP {
                return Err(TraceError::Invalid(
                    "an HTTP request can only be traced over TCP: leave the protocol out or give tcp".into(),
                ));
            }
            if h.method.is_empty() || !h.path.starts_with('/') {
                return Err(TraceError::Invalid(format!(
                    "an HTTP request needs a method and a path starting with / (got method {:?}, path {:?})",
                    h.method, h.path
                )));
            }
            if let Some(bad) = h.headers.iter().find(|x| parse_header(x).1.is_none()) {
                return Err(TraceError::Invalid(format!(
                    "header {bad:?}: write \"Name: value\""
                )));
            }
        }
        let named = super::named_ports_of(endpoints);
        let mut engine = lock(&self.engine);
        let resolved = engine.resolve(&known, &named);
        let verdict = resolved.explain(src.identity, dst.identity, q.proto, q.dport);
        // What the proxy does on each side the datapath redirects.
        let request = q.http.as_ref().map(|h| HttpRequestView {
            method: &h.method,
            path: &h.path,
            // Without one, a rule on host matches nothing (the request names no host).
            host: &h.host,
            headers: h
                .headers
                .iter()
                .map(|x| {
                    let (n, v) = parse_header(x);
                    (n, v.unwrap_or_default())
                })
                .collect(),
        });
        let l7 = |endpoint: u32, direction: Direction, peer: u32| {
            (q.proto == PROTO_TCP)
                .then(|| resolved.explain_l7(endpoint, direction, peer, q.dport, request.as_ref()))
                .flatten()
        };
        let egress_l7 = verdict
            .egress
            .as_ref()
            .filter(|v| v.allowed)
            .and_then(|_| l7(src.identity, Direction::Egress, dst.identity));
        let ingress_l7 = verdict
            .ingress
            .as_ref()
            .filter(|v| v.allowed)
            .and_then(|_| l7(dst.identity, Direction::Ingress, src.identity));
        drop(resolved);
        drop(engine);
        for (peer, side) in [(&src, "egress"), (&dst, "ingress")] {
            if let Some(node) = &peer.node {
                notes.push(format!(
                    "{peer} is on node {node}: its {side} is judged here with this node's \
                     policies, as node {node} judges it when it holds the same ones"
                ));
            }
        }
        if verdict.egress.is_none() && verdict.ingress.is_none() {
            notes.push(
                "neither side is an endpoint: no policy applies (the datapath judges traffic \
                 only where it enters or leaves an endpoint)"
                    .into(),
            );
        }
        let mut egress = verdict.egress.as_ref().map(direction);
        let mut ingress = verdict.ingress.as_ref().map(direction);
        for (side, x) in [(&mut egress, egress_l7), (&mut ingress, ingress_l7)] {
            if let (Some(side), Some(x)) = (side.as_mut(), x) {
                side.l7 = Some(trace_l7(x, q.http.is_some()));
            }
        }
        if q.http.is_some()
            && verdict.allowed
            && [egress.as_ref(), ingress.as_ref()]
                .into_iter()
                .flatten()
                .all(|d| d.l7.is_none())
        {
            notes.push(format!(
                "no side sends port {} through the L7 proxy: no HTTP rule applies, every request passes",
                q.dport
            ));
        }
        // A request the proxy refuses makes the flow denied, by the first side that refuses
        // it (egress first, as the request meets it first).
        let refused = [egress.as_ref(), ingress.as_ref()]
            .into_iter()
            .flatten()
            .find(|d| d.l7.as_ref().is_some_and(|l| l.allowed == Some(false)))
            .map(|d| d.direction);
        let (allowed, deciding, drop_reason) = match refused {
            Some(d) if verdict.allowed => (false, Some(d), None),
            _ => (
                verdict.allowed,
                verdict.deciding().map(|d| d.direction),
                verdict.drop_reason(),
            ),
        };
        Ok(PolicyTrace {
            allowed,
            deciding,
            drop_reason,
            egress,
            ingress,
            src,
            dst,
            proto: q.proto,
            dport: q.dport,
            notes,
            http: q.http.clone(),
        })
    }
}

/// The API's form of one side's L7 explanation.
fn trace_l7(x: L7Explanation, with_request: bool) -> TraceL7 {
    let rules: Vec<TraceL7Rule> = x
        .rules
        .iter()
        .map(|(rule, r)| TraceL7Rule {
            rule: rule.clone(),
            http: r.http.clone(),
            kafka: r.kafka.clone(),
        })
        .collect();
    let allowed_by: Vec<TraceL7Match> = x
        .allowed_by
        .iter()
        .flatten()
        .map(|(rule, i)| TraceL7Match {
            rule: rule.clone(),
            http_index: *i,
        })
        .collect();
    let name = |m: &TraceL7Match| match m.http_index {
        Some(i) => format!("{} of {} (rules.http[{i}])", m.rule.path(), m.rule.policy),
        None => format!(
            "{} of {} (no HTTP rules for this port: every request)",
            m.rule.path(),
            m.rule.policy
        ),
    };
    let message = match (with_request, allowed_by.is_empty()) {
        (false, _) => format!(
            "redirected to the L7 proxy (port {}); {} rule(s) in force, a request must match one",
            x.proxy_port,
            rules.len()
        ),
        (true, false) => format!(
            "the L7 proxy forwards the request: allowed by {}",
            allowed_by.iter().map(name).collect::<Vec<_>>().join("; ")
        ),
        (true, true) => {
            "the L7 proxy refuses the request with 403 Forbidden: no HTTP rule matches it"
                .to_owned()
        }
    };
    TraceL7 {
        proxy_port: x.proxy_port,
        rules,
        allowed: with_request.then_some(!allowed_by.is_empty()),
        allowed_by,
        message,
    }
}

fn direction(v: &DirectionVerdict) -> TraceDirection {
    let (reason, rules, policies) = match &v.reason {
        Reason::NoPolicy => (TraceReason::NoPolicy, Vec::new(), Vec::new()),
        Reason::NoDefaultDeny { policies } => {
            (TraceReason::NoDefaultDeny, Vec::new(), policies.clone())
        }
        Reason::AllowedBy { rules } => (TraceReason::AllowedBy, rules.clone(), Vec::new()),
        Reason::AllowLocalhost => (TraceReason::AllowLocalhost, Vec::new(), Vec::new()),
        Reason::DeniedBy { rules } => (TraceReason::DeniedBy, rules.clone(), Vec::new()),
        Reason::DefaultDeny { policies } => {
            (TraceReason::DefaultDeny, Vec::new(), policies.clone())
        }
    };
    TraceDirection {
        direction: v.direction,
        endpoint: v.endpoint,
        peer: v.peer,
        allowed: v.allowed,
        reason,
        rules,
        policies,
        drop_reason: v.drop_reason(),
        message: v.reason.to_string(),
        l7: None,
    }
}
