//! `cilium.io/v2` `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy`, field for field.
//!
//! Both kinds share one shape; the kind decides the scope (a namespaced policy selects only
//! endpoints of its namespace). Fields Ciliate does not enforce yet (Kafka `rules`,
//! `toServices`, `authentication`, TLS, listeners, groups, nodes) are still typed, so that a
//! misspelt field inside them is an error, and `crates/policy` reports each one it meets.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::meta::{IntOrString, ObjectMeta};
use super::selector::LabelSelector;

/// The `apiVersion` of Cilium's policies.
pub const API_VERSION: &str = "cilium.io/v2";

/// A `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy` (see `kind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumNetworkPolicy {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy`.
    pub kind: String,
    /// Name and (for the namespaced kind) namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// One rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// More rules; with `spec`, all of them apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
    /// Written by Cilium's agents; kept verbatim, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// One rule: a subject (endpoints or nodes) and what it may send and receive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The endpoints the rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    /// The nodes the rule applies to (host policies; clusterwide only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Allowed incoming traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Denied incoming traffic; a deny wins over any allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    /// Allowed outgoing traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    /// Denied outgoing traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    /// Labels of the rule itself (metadata for people and tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<RuleLabel>>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether the rule puts its endpoints in default deny, per direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Policy verdict logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogConfig>,
}

/// `enableDefaultDeny`: unset means "yes, when the rule has rules in that direction".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDeny {
    /// Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// Egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// `log`: a value attached to verdicts of this rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A rule label, written as `source:key=value` or as `{key, value, source}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RuleLabel {
    /// `source:key=value`.
    Text(String),
    /// The structured form Cilium prints.
    Structured {
        /// Key.
        key: String,
        /// Value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// Source.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
}

impl<'de> Deserialize<'de> for RuleLabel {
    // By hand so that a wrong shape gets a precise error (serde's `untagged` says only "did not
    // match any variant") and unknown fields of the structured form are rejected.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Structured {
            key: String,
            #[serde(default)]
            value: Option<String>,
            #[serde(default)]
            source: Option<String>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RuleLabel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label as \"source:key=value\" or {key, value, source}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RuleLabel::Text(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let s = Structured::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RuleLabel::Structured {
                    key: s.key,
                    value: s.value,
                    source: s.source,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One `ingress` rule: from whom (L3) and to which ports (L4) traffic is allowed.
///
/// The L3 fields (`fromEndpoints`, `fromCIDR`, `fromCIDRSet`, `fromEntities`, `fromNodes`,
/// `fromGroups`) may not be combined in one rule. A rule with no L3 field but with `toPorts`
/// or `icmps` allows from everyone; a rule with neither (`{}`) allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Endpoints by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every allowed source must also carry (applies to all rules of the endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_requires: Option<Vec<LabelSelector>>,
    /// Addresses: CIDRs or bare IPs.
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    /// CIDRs with exceptions.
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Entities such as `world` or `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    /// Cloud provider groups (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_groups: Option<Vec<serde_json::Value>>,
    /// Nodes by labels (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_nodes: Option<Vec<LabelSelector>>,
    /// Ports (and L7 rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Mutual authentication (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

/// One `ingressDeny` rule: as [`IngressRule`], without L7 and authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressDenyRule {
    /// Endpoints by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// See [`IngressRule::from_requires`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_requires: Option<Vec<LabelSelector>>,
    /// Addresses: CIDRs or bare IPs.
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    /// CIDRs with exceptions.
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    /// Cloud provider groups (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_groups: Option<Vec<serde_json::Value>>,
    /// Nodes by labels (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_nodes: Option<Vec<LabelSelector>>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortDenyRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// One `egress` rule: to whom (L3) and to which ports (L4) traffic is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Endpoints by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every allowed destination must also carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_requires: Option<Vec<LabelSelector>>,
    /// Addresses: CIDRs or bare IPs.
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    /// CIDRs with exceptions.
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    /// Kubernetes Services (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_services: Option<Vec<ServiceSelector>>,
    /// Cloud provider groups (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_groups: Option<Vec<serde_json::Value>>,
    /// Nodes by labels (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_nodes: Option<Vec<LabelSelector>>,
    /// DNS names (not enforced).
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Ports (and L7 rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Mutual authentication (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

/// One `egressDeny` rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDenyRule {
    /// Endpoints by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// See [`EgressRule::to_requires`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_requires: Option<Vec<LabelSelector>>,
    /// Addresses.
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    /// CIDRs with exceptions.
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    /// Kubernetes Services (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_services: Option<Vec<ServiceSelector>>,
    /// Cloud provider groups (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_groups: Option<Vec<serde_json::Value>>,
    /// Nodes by labels (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_nodes: Option<Vec<LabelSelector>>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortDenyRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// A CIDR with exceptions, or a reference to a CiliumCIDRGroup (not enforced).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    /// The block, `address/length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Sub-blocks of `cidr` left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
    /// A CiliumCIDRGroup by name (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
    /// CiliumCIDRGroups by labels (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_selector: Option<LabelSelector>,
}

/// The entities a rule can name instead of labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything, inside and outside the cluster.
    All,
    /// Everything outside the cluster.
    World,
    /// IPv4 addresses outside the cluster.
    #[serde(rename = "world-ipv4")]
    WorldIpv4,
    /// IPv6 addresses outside the cluster.
    #[serde(rename = "world-ipv6")]
    WorldIpv6,
    /// Everything in the cluster: endpoints, nodes, and the reserved cluster identities.
    Cluster,
    /// The local node.
    Host,
    /// The other nodes of the cluster.
    RemoteNode,
    /// Health-check endpoints.
    Health,
    /// Endpoints whose labels are not known yet.
    Init,
    /// Pods not managed by Ciliate.
    Unmanaged,
    /// The Kubernetes API server.
    KubeApiserver,
    /// The ingress proxy.
    Ingress,
    /// Nothing.
    None,
}

impl Entity {
    /// The name as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::World => "world",
            Self::WorldIpv4 => "world-ipv4",
            Self::WorldIpv6 => "world-ipv6",
            Self::Cluster => "cluster",
            Self::Host => "host",
            Self::RemoteNode => "remote-node",
            Self::Health => "health",
            Self::Init => "init",
            Self::Unmanaged => "unmanaged",
            Self::KubeApiserver => "kube-apiserver",
            Self::Ingress => "ingress",
            Self::None => "none",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `toPorts` of an allow rule: ports, and optionally L7 rules and TLS/listener settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// The ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortProtocol>>,
    /// L7 rules (HTTP, Kafka and DNS, enforced through the node's proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    /// TLS termination (not enforced).
    #[serde(
        default,
        rename = "terminatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub terminating_tls: Option<serde_json::Value>,
    /// TLS origination (not enforced).
    #[serde(
        default,
        rename = "originatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub originating_tls: Option<serde_json::Value>,
    /// Allowed TLS server names (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_names: Option<Vec<String>>,
    /// An Envoy listener to redirect to (not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<serde_json::Value>,
}

/// `toPorts` of a deny rule: ports only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortDenyRule {
    /// The ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortProtocol>>,
}

/// A port (number, `"0"` for all, or a name), an optional range end, and a protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// `"80"`, `80`, `"0"` (every port) or a named port such as `"http"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// With a numeric `port`, the last port of the range `port..=endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
    /// `TCP`, `UDP`, `SCTP` or `ANY` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<CiliumProtocol>,
}

/// The protocols a Cilium port rule can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CiliumProtocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
    /// TCP, UDP and SCTP (and, with port 0, every protocol).
    #[serde(rename = "ANY")]
    Any,
}

/// L7 rules of a port rule; at most one kind per port rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    /// HTTP requests allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
    /// Kafka requests allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Vec<KafkaRule>>,
    /// DNS lookups allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<FqdnSelector>>,
    /// A proxylib parser name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7proto: Option<String>,
    /// Generic key/value rules for `l7proto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<Vec<BTreeMap<String, String>>>,
}

/// One HTTP rule; every field given must match, an empty rule matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    /// Path regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Method regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Host regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// Header value matches, with what to do on a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_matches: Option<Vec<HttpHeaderMatch>>,
}

/// One `headerMatches` entry of an HTTP rule, as Cilium defines it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderMatch {
    /// The header's name (required).
    #[serde(default)]
    pub name: String,
    /// The value it must have; empty or absent: it must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `LOG`, `ADD`, `DELETE` or `REPLACE`: what to do when the header does not match (absent:
    /// the rule does not match). Kept as written so the checker can name a wrong one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    /// The value from a Kubernetes Secret (not supported: rejected by the checker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<HeaderSecret>,
}

/// A Kubernetes Secret holding a header's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderSecret {
    /// Its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    #[serde(default)]
    pub name: String,
}

/// One Kafka rule; an empty rule matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaRule {
    /// `produce` or `consume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Client id.
    #[serde(default, rename = "clientID", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A DNS name or pattern (`toFQDNs`, DNS L7 rules).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    /// An exact name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A pattern with `*` wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// A Service by name or by labels (`toServices`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSelector {
    /// By name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service: Option<ServiceName>,
    /// By labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service_selector: Option<ServiceLabels>,
}

/// A Service by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceName {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Services by labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceLabels {
    /// The selector.
    pub selector: LabelSelector,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `icmps` entry: ICMP types by number or name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpRule {
    /// The types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<IcmpField>>,
}

/// One ICMP type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpField {
    /// `IPv4` (the default) or `IPv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IcmpFamily>,
    /// A type number (0-255) or name (`EchoRequest`, ...).
    #[serde(rename = "type")]
    pub icmp_type: IntOrString,
}

/// The ICMP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IcmpFamily {
    /// ICMP (IP protocol 1).
    IPv4,
    /// ICMPv6 (IP protocol 58).
    IPv6,
}

/// `authentication`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// The mode.
    pub mode: AuthMode,
}

/// Authentication modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// No authentication.
    Disabled,
    /// Mutual authentication required.
    Required,
    /// Always fails (for tests).
    TestAlwaysFail,
}
