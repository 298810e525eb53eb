//! The agent API's policy answers: what applying a policy did, the policies in force, a
//! validation report, a trace of one flow, and an endpoint's policy map as `ciliate bpf policy
//! get` shows it.
//!
//! | method + path                                  | body → answer                         |
//! |------------------------------------------------|---------------------------------------|
//! | `GET /v1/policies`                             | → `[PolicyView]`                      |
//! | `GET /v1/policies/{kind}/{ns}/{name}`          | → the policy resource as applied      |
//! | `GET /v1/policies/{kind}/{name}`               | → the same, for a clusterwide policy  |
//! | `POST /v1/policies/validate`                   | `ApplyRequest` → [`PolicyValidation`] |
//! | `GET /v1/policy/trace?src=&dst=&dport=&proto=` | → [`PolicyTrace`]                     |
//! | `GET /v1/bpf/policy/{endpoint}`                | → [`BpfPolicyView`]                   |
//!
//! A trace of an HTTP request adds `httpMethod=&httpPath=` (and `httpHost=`, `httpHeader=`
//! repeated) to the trace query.
//!
//! Policies are applied and deleted through `POST /v1/manifests` with Services; the answer's
//! [`ApplyResult::policies`](crate::manifest::ApplyResult::policies) says what happened to each.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::bpf_policy::PolicyMapEntry;
use crate::endpoint::PodRef;
use crate::identity::NumericIdentity;
use crate::labels::Labels;
use crate::manifest::{ApplyAction, ManifestError};
use crate::policy::{Direction, PolicyKind, PolicyRef, RuleRef};

/// The resource name kubectl prints for a policy kind: `networkpolicy.networking.k8s.io`,
/// `ciliumnetworkpolicy.cilium.io`, `ciliumclusterwidenetworkpolicy.cilium.io`.
pub fn resource_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::NetworkPolicy => "networkpolicy.networking.k8s.io",
        PolicyKind::CiliumNetworkPolicy => "ciliumnetworkpolicy.cilium.io",
        PolicyKind::CiliumClusterwideNetworkPolicy => "ciliumclusterwidenetworkpolicy.cilium.io",
    }
}

/// Reads a kind as users type it: the kind itself in any case, kubectl's short names
/// (`netpol`, `cnp`, `ccnp`) and resource names (`networkpolicies`,
/// `ciliumnetworkpolicy.cilium.io`, ...).
pub fn parse_kind(s: &str) -> Option<PolicyKind> {
    let s = s.to_ascii_lowercase();
    let s = s
        .strip_suffix(".networking.k8s.io")
        .or_else(|| s.strip_suffix(".cilium.io"))
        .unwrap_or(&s);
    match s {
        "networkpolicy" | "networkpolicies" | "netpol" | "np" => Some(PolicyKind::NetworkPolicy),
        "ciliumnetworkpolicy" | "ciliumnetworkpolicies" | "cnp" => {
            Some(PolicyKind::CiliumNetworkPolicy)
        }
        "ciliumclusterwidenetworkpolicy" | "ciliumclusterwidenetworkpolicies" | "ccnp" => {
            Some(PolicyKind::CiliumClusterwideNetworkPolicy)
        }
        _ => None,
    }
}

/// Whether a manifest document is a policy (NetworkPolicy, CiliumNetworkPolicy,
/// CiliumClusterwideNetworkPolicy), or a `List` of them: such documents go to the policy store,
/// everything else to the Services'.
pub fn is_policy_document(v: &serde_json::Value) -> bool {
    let kind = |v: &serde_json::Value| {
        v.get("kind")
            .and_then(serde_json::Value::as_str)
            .and_then(PolicyKind::from_kind)
    };
    if kind(v).is_some() {
        return true;
    }
    let is_list = v
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|k| k.ends_with("List"));
    match v.get("items").and_then(serde_json::Value::as_array) {
        Some(items) if is_list && !items.is_empty() => items.iter().all(|i| kind(i).is_some()),
        _ => false,
    }
}

/// What applying or deleting one policy did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOutcome {
    /// The policy.
    #[serde(flatten)]
    pub policy: PolicyRef,
    /// What happened to it.
    pub action: ApplyAction,
    /// The file of the document that named it.
    pub source: String,
    /// The document's index in that file.
    pub index: usize,
}

impl fmt::Display for PolicyOutcome {
    /// kubectl's line: `ciliumnetworkpolicy.cilium.io/web created`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}",
            resource_name(self.policy.kind),
            self.policy.name,
            self.action
        )
    }
}

/// One policy in force, as `GET /v1/policies` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    /// Kind, namespace and name.
    #[serde(flatten)]
    pub policy: PolicyRef,
    /// `api` when applied through the API, else the manifest directory's file.
    pub source: String,
    /// How many endpoints of this node it selects (in either direction).
    pub endpoints: usize,
    /// What it does not enforce as written (L7 rules, toFQDNs, ...), one per line.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Answer of `POST /v1/policies/validate`: every problem of a batch; nothing is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyValidation {
    /// True when the batch would apply.
    pub valid: bool,
    /// The policies the batch holds (when valid, or as far as they could be read).
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
    /// Number of other objects (Services, EndpointSlices, Endpoints) it holds.
    #[serde(default)]
    pub other_objects: usize,
    /// Every error, with file, document and field.
    #[serde(default)]
    pub errors: Vec<ManifestError>,
    /// What would be accepted but not enforced as written.
    #[serde(default)]
    pub warnings: Vec<ManifestError>,
}

/// What a trace's source or destination turned out to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TracePeerKind {
    /// An endpoint of this node (named by id, container id, pod or address).
    Endpoint,
    /// An address outside the node's endpoints: the node itself, a CIDR identity, or world.
    Address,
    /// An identity with exactly the labels given.
    Identity,
    /// No identity has exactly the labels given: one is assumed, as if a pod had them.
    Hypothetical,
    /// An endpoint of another node of the cluster (named by pod or address), as the cluster's
    /// kvstore publishes it.
    RemoteEndpoint,
}

/// One side of a traced flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracePeer {
    /// What the caller wrote.
    pub query: String,
    /// What it is.
    pub kind: TracePeerKind,
    /// Its security identity (a made-up one, from 256 up, when hypothetical).
    pub identity: NumericIdentity,
    /// The identity's labels.
    pub labels: Labels,
    /// The endpoint id, when an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u16>,
    /// The pod, when an endpoint of a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The node it lives on, for an endpoint of another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl fmt::Display for TracePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(node) = &self.node {
            match (&self.pod, self.ip) {
                (Some(p), _) => write!(f, "pod {p} on node {node} (")?,
                (None, Some(ip)) => write!(f, "{ip} on node {node} (")?,
                (None, None) => write!(f, "node {node} (")?,
            }
            write!(f, "identity {}", self.identity)?;
            if !self.labels.is_empty() {
                write!(f, ": {}", self.labels)?;
            }
            return f.write_str(")");
        }
        match (&self.pod, self.endpoint, self.ip) {
            (Some(p), Some(id), _) => write!(f, "pod {p} (endpoint {id}")?,
            (None, Some(id), _) => write!(f, "endpoint {id} (")?,
            (_, None, Some(ip)) => write!(f, "{ip} (")?,
            _ => f.write_str("(")?,
        }
        if self.endpoint.is_some() {
            f.write_str(", ")?;
        }
        write!(f, "identity {}", self.identity)?;
        if self.kind == TracePeerKind::Hypothetical {
            f.write_str(", hypothetical")?;
        }
        if !self.labels.is_empty() {
            write!(f, ": {}", self.labels)?;
        }
        f.write_str(")")
    }
}

/// Why one direction decided as it did, as the engine explains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceReason {
    /// No policy has rules for the endpoint in this direction: allowed.
    NoPolicy,
    /// Policies select the endpoint but none enables default deny, and no deny rule matched.
    NoDefaultDeny,
    /// Allow rules matched.
    AllowedBy,
    /// The node may always reach its own endpoints.
    AllowLocalhost,
    /// Deny rules matched (drop reason 181).
    DeniedBy,
    /// Default deny and no rule allows it (drop reason 133).
    DefaultDeny,
}

/// The verdict of one side: the source's egress or the destination's ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceDirection {
    /// The direction.
    pub direction: Direction,
    /// The identity whose policy decided.
    pub endpoint: NumericIdentity,
    /// The other side's identity.
    pub peer: NumericIdentity,
    /// Whether the flow passes this side.
    pub allowed: bool,
    /// Why.
    pub reason: TraceReason,
    /// The rules that matched (deny rules when denied by rule, allow rules when allowed).
    #[serde(default)]
    pub rules: Vec<RuleRef>,
    /// The policies behind a default (default deny, or no default deny).
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
    /// Hubble's drop reason when denied: 181 deny rule, 133 default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<u8>,
    /// The engine's explanation, in words.
    pub message: String,
    /// When this side's entry sends the connection through the node's proxy: the HTTP rules
    /// in force there for the peer and, when the trace gave a request, the proxy's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<TraceL7>,
}

/// An HTTP request to trace (`policy trace --http-method ... --http-path ...`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceHttp {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path (a query after `?` is ignored by the rules).
    pub path: String,
    /// The authority (`Host`); empty when not given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Headers as `Name: value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

/// One side's L7 policy, for `policy trace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceL7 {
    /// The proxy listener the connection is redirected to.
    pub proxy_port: u16,
    /// The rules in force for this peer on this port (OR'ed).
    pub rules: Vec<TraceL7Rule>,
    /// With a request: whether the proxy forwards it (otherwise it answers 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    /// With a request: the rules that allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_by: Vec<TraceL7Match>,
    /// In words.
    pub message: String,
}

/// A policy rule's HTTP rules for a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceL7Rule {
    /// The policy rule.
    pub rule: RuleRef,
    /// Its HTTP rules; empty (and no Kafka rules): every request (an allow without L7 rules
    /// on this port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<crate::l7::HttpMatch>,
    /// Its Kafka rules (a port whose parser is Kafka), roles expanded into API keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<crate::l7::KafkaMatch>,
}

/// A rule that allows the traced request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceL7Match {
    /// The policy rule.
    pub rule: RuleRef,
    /// The index of the HTTP rule in its `rules.http`; absent: the rule allows every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_index: Option<usize>,
}

/// Answer of `GET /v1/policy/trace`: would this flow pass, and which rule decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    /// The source.
    pub src: TracePeer,
    /// The destination.
    pub dst: TracePeer,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP).
    pub proto: u8,
    /// Destination port (the ICMP type for ICMP).
    pub dport: u16,
    /// Whether the flow passes both sides.
    pub allowed: bool,
    /// The side that decided: the first that denies (egress first, as the packet meets it
    /// first), else ingress, else egress; none when neither side is an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deciding: Option<Direction>,
    /// Hubble's drop reason of the deciding side, when denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<u8>,
    /// The source's egress verdict, when the source is an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<TraceDirection>,
    /// The destination's ingress verdict, when the destination is an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<TraceDirection>,
    /// What the caller may want to know (e.g. a label set without a namespace label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The HTTP request traced, when one was given; `allowed` then includes the proxy's
    /// verdict on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<TraceHttp>,
}

impl PolicyTrace {
    /// The verdict of the deciding side.
    pub fn deciding_verdict(&self) -> Option<&TraceDirection> {
        match self.deciding? {
            Direction::Egress => self.egress.as_ref(),
            Direction::Ingress => self.ingress.as_ref(),
        }
    }
}

/// Answer of `GET /v1/policy/revision`: the node's policy revision (as `cilium-dbg policy
/// get` prints it) and the one in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRevision {
    /// Bumped on every change of what policy is computed from: the policies, the namespaces'
    /// labels, the node's addresses, the cluster's identities.
    pub revision: u64,
    /// The newest revision every endpoint's policy map and the ipcache hold (0: none yet).
    /// A revision is in force once this is at least that revision.
    pub in_force: u64,
}

impl PolicyRevision {
    /// Whether `revision` is in force on every endpoint of the node.
    pub fn is_in_force(&self, revision: u64) -> bool {
        self.in_force >= revision
    }
}

/// One entry of an endpoint's policy map, with what the agent knows about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfPolicyEntry {
    /// The entry as the map holds it.
    #[serde(flatten)]
    pub entry: PolicyMapEntry,
    /// The peer identity's labels (empty for identity 0, any peer, or an unknown identity).
    #[serde(default)]
    pub labels: Labels,
    /// The rule the entry's rule number stands for, when the agent still knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_ref: Option<RuleRef>,
    /// Packets the entry admitted (deny entries are not counted).
    #[serde(default)]
    pub packets: u64,
    /// Bytes the entry admitted.
    #[serde(default)]
    pub bytes: u64,
}

/// Answer of `GET /v1/bpf/policy/{endpoint}`: the policy map of one endpoint as the datapath
/// holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfPolicyView {
    /// The endpoint id.
    pub endpoint: u16,
    /// Its pod, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Its identity.
    pub identity: NumericIdentity,
    /// Ingress is under policy: what no entry allows is dropped (133).
    pub ingress_enforced: bool,
    /// Egress is under policy.
    pub egress_enforced: bool,
    /// The entries, sorted.
    pub entries: Vec<BpfPolicyEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_as_users_type_them() {
        for (s, k) in [
            ("cnp", PolicyKind::CiliumNetworkPolicy),
            ("CiliumNetworkPolicy", PolicyKind::CiliumNetworkPolicy),
            (
                "ciliumnetworkpolicies.cilium.io",
                PolicyKind::CiliumNetworkPolicy,
            ),
            ("netpol", PolicyKind::NetworkPolicy),
            ("networkpolicy.networking.k8s.io", PolicyKind::NetworkPolicy),
            ("CCNP", PolicyKind::CiliumClusterwideNetworkPolicy),
        ] {
            assert_eq!(parse_kind(s), Some(k), "{s}");
        }
        assert_eq!(parse_kind("service"), None);
    }

    #[test]
    fn policy_documents_and_lists_of_them() {
        use serde_json::json;
        assert!(is_policy_document(&json!({"kind": "NetworkPolicy"})));
        assert!(is_policy_document(
            &json!({"kind": "List", "items": [{"kind": "CiliumNetworkPolicy"}]})
        ));
        assert!(!is_policy_document(
            &json!({"kind": "List", "items": [{"kind": "CiliumNetworkPolicy"}, {"kind": "Service"}]})
        ));
        assert!(!is_policy_document(&json!({"kind": "List", "items": []})));
        assert!(!is_policy_document(&json!({"kind": "Service"})));
        assert!(!is_policy_document(&json!("text")));
    }

    #[test]
    fn outcomes_read_like_kubectl_and_flatten_the_policy() {
        let o = PolicyOutcome {
            policy: PolicyRef {
                kind: PolicyKind::CiliumNetworkPolicy,
                namespace: Some("default".into()),
                name: "web".into(),
            },
            action: ApplyAction::Created,
            source: "p.yaml".into(),
            index: 1,
        };
        assert_eq!(o.to_string(), "ciliumnetworkpolicy.cilium.io/web created");
        let v = serde_json::to_value(&o).expect("serialises");
        assert_eq!(
            v,
            serde_json::json!({"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "web",
                "action": "created", "source": "p.yaml", "index": 1})
        );
        assert_eq!(
            serde_json::from_value::<PolicyOutcome>(v).expect("reads back"),
            o
        );
    }
}
