//! Any policy resource, and the names that point at a policy and at one of its rules.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::cilium::CiliumNetworkPolicy;
use super::k8s::NetworkPolicy;

/// The kinds of policy resource Ciliate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` `NetworkPolicy`.
    NetworkPolicy,
    /// `cilium.io/v2` `CiliumNetworkPolicy` (namespaced).
    CiliumNetworkPolicy,
    /// `cilium.io/v2` `CiliumClusterwideNetworkPolicy`.
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    /// Every kind.
    pub const ALL: [PolicyKind; 3] = [
        Self::NetworkPolicy,
        Self::CiliumNetworkPolicy,
        Self::CiliumClusterwideNetworkPolicy,
    ];

    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "NetworkPolicy",
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }

    /// The `apiVersion` objects of this kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicy => super::k8s::API_VERSION,
            Self::CiliumNetworkPolicy | Self::CiliumClusterwideNetworkPolicy => {
                super::cilium::API_VERSION
            }
        }
    }

    /// The kind named by a `kind` field.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// Whether policies of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        self != Self::CiliumClusterwideNetworkPolicy
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one policy: kind, namespace (none for clusterwide) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    /// The kind.
    pub kind: PolicyKind,
    /// The namespace; `None` for clusterwide policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl PolicyRef {
    /// `namespace/name`, or `name` for a clusterwide policy.
    pub fn short_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.short_name())
    }
}

/// The four rule lists of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleSection {
    /// `ingress`.
    Ingress,
    /// `ingressDeny`.
    IngressDeny,
    /// `egress`.
    Egress,
    /// `egressDeny`.
    EgressDeny,
}

impl RuleSection {
    /// The field name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::IngressDeny => "ingressDeny",
            Self::Egress => "egress",
            Self::EgressDeny => "egressDeny",
        }
    }

    /// Whether rules of this section deny.
    pub fn is_deny(self) -> bool {
        matches!(self, Self::IngressDeny | Self::EgressDeny)
    }
}

impl fmt::Display for RuleSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one rule of one policy, e.g. `specs[1].ingress[2]` of `CiliumNetworkPolicy default/web`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// The policy.
    pub policy: PolicyRef,
    /// For Cilium policies, which entry of `specs` holds the rule; `None` for `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<usize>,
    /// The rule list.
    pub section: RuleSection,
    /// The rule's index in that list.
    pub index: usize,
}

impl RuleRef {
    /// The rule's field path in the manifest, e.g. `spec.ingress[2]` or `specs[1].egressDeny[0]`:
    /// the same path the loader names in its messages.
    pub fn path(&self) -> String {
        match self.spec {
            None => format!("spec.{}[{}]", self.section, self.index),
            Some(i) => format!("specs[{i}].{}[{}]", self.section, self.index),
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} of {}", self.path(), self.policy)
    }
}

/// Any policy resource Ciliate reads. Serialised as the resource itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PolicyResource {
    /// A Kubernetes NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
    /// A CiliumNetworkPolicy or a CiliumClusterwideNetworkPolicy (its `kind` says which).
    Cilium(CiliumNetworkPolicy),
}

impl PolicyResource {
    /// The kind. A Cilium policy whose `kind` is not one of Cilium's is taken as namespaced;
    /// `crates/policy` rejects such documents before they get here.
    pub fn kind(&self) -> PolicyKind {
        match self {
            Self::NetworkPolicy(_) => PolicyKind::NetworkPolicy,
            Self::Cilium(p) if p.kind == PolicyKind::CiliumClusterwideNetworkPolicy.as_str() => {
                PolicyKind::CiliumClusterwideNetworkPolicy
            }
            Self::Cilium(_) => PolicyKind::CiliumNetworkPolicy,
        }
    }

    /// The object's uid, as the Kubernetes API server set it.
    pub fn uid(&self) -> Option<&str> {
        match self {
            Self::NetworkPolicy(p) => p.metadata.uid.as_deref(),
            Self::Cilium(p) => p.metadata.uid.as_deref(),
        }
    }

    /// The policy's name, namespace (`default` when a namespaced policy names none) and kind.
    pub fn policy_ref(&self) -> PolicyRef {
        let kind = self.kind();
        let meta = match self {
            Self::NetworkPolicy(p) => &p.metadata,
            Self::Cilium(p) => &p.metadata,
        };
        PolicyRef {
            kind,
            namespace: kind.is_namespaced().then(|| {
                meta.namespace
                    .clone()
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or_else(|| "default".to_owned())
            }),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl<'de> Deserialize<'de> for PolicyResource {
    // Dispatches on `kind`, so that errors are those of the right type.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        let kind = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| D::Error::missing_field("kind"))?;
        match PolicyKind::from_kind(kind) {
            Some(PolicyKind::NetworkPolicy) => serde_json::from_value(value)
                .map(Self::NetworkPolicy)
                .map_err(D::Error::custom),
            Some(_) => serde_json::from_value(value)
                .map(Self::Cilium)
                .map_err(D::Error::custom),
            None => Err(D::Error::custom(format!(
                "kind {kind:?} is not a policy (want NetworkPolicy, CiliumNetworkPolicy or \
                 CiliumClusterwideNetworkPolicy)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_paths_match_manifest_paths() {
        let policy = PolicyRef {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("default".into()),
            name: "web".into(),
        };
        let r = RuleRef {
            policy: policy.clone(),
            spec: Some(1),
            section: RuleSection::IngressDeny,
            index: 2,
        };
        assert_eq!(r.path(), "specs[1].ingressDeny[2]");
        assert_eq!(
            r.to_string(),
            "rule specs[1].ingressDeny[2] of CiliumNetworkPolicy default/web"
        );
        let r = RuleRef {
            spec: None,
            section: RuleSection::Egress,
            index: 0,
            policy,
        };
        assert_eq!(r.path(), "spec.egress[0]");
    }

    #[test]
    fn resources_round_trip_through_json() {
        let json = serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "all"},
            "spec": {"endpointSelector": {}, "ingress": [{}]}
        });
        let p: PolicyResource = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(p.kind(), PolicyKind::CiliumClusterwideNetworkPolicy);
        assert_eq!(
            p.policy_ref().to_string(),
            "CiliumClusterwideNetworkPolicy all"
        );
        assert_eq!(serde_json::to_value(&p).unwrap(), json);
    }
}
