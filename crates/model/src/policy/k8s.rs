//! `networking.k8s.io/v1` `NetworkPolicy`, field for field.

use serde::{Deserialize, Serialize};

use super::meta::{IntOrString, ObjectMeta};
use super::selector::LabelSelector;

/// The `apiVersion` of a Kubernetes NetworkPolicy.
pub const API_VERSION: &str = "networking.k8s.io/v1";

/// A Kubernetes NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    /// `networking.k8s.io/v1`.
    pub api_version: String,
    /// `NetworkPolicy`.
    pub kind: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the policy says.
    pub spec: NetworkPolicySpec,
    /// Written by controllers; kept verbatim, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `spec` of a NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; `{}` is all of them.
    pub pod_selector: LabelSelector,
    /// Allowed incoming traffic; each rule allows what matches both its `from` and its `ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    /// Allowed outgoing traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
    /// The directions the policy isolates; see [`NetworkPolicySpec::effective_policy_types`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<PolicyType>>,
}

impl NetworkPolicySpec {
    /// The directions this policy isolates its pods in, as `(ingress, egress)`.
    ///
    /// Kubernetes' defaulting (`SetDefaults_NetworkPolicySpec`): when `policyTypes` is absent
    /// *or empty*, the policy isolates ingress always, and egress only when `egress` holds at
    /// least one rule (`egress: []` does not count). When `policyTypes` is given it is taken as
    /// it is, even if it leaves out a direction that has rules: those rules then do nothing.
    pub fn effective_policy_types(&self) -> (bool, bool) {
        match &self.policy_types {
            Some(types) if !types.is_empty() => (
                types.contains(&PolicyType::Ingress),
                types.contains(&PolicyType::Egress),
            ),
            _ => (true, self.egress.as_ref().is_some_and(|e| !e.is_empty())),
        }
    }
}

/// A direction a NetworkPolicy isolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    /// Incoming traffic.
    Ingress,
    /// Outgoing traffic.
    Egress,
}

/// One `spec.ingress` rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    /// Sources; absent or empty means every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    /// Destination ports; absent or empty means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// One `spec.egress` rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    /// Destinations; absent or empty means every destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    /// Destination ports; absent or empty means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// A peer: pods (by pod and/or namespace labels) or an IP block, never both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    /// Pods; alone, in the policy's namespace; with `namespaceSelector`, in those namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces, by their labels; `{}` is every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`: a CIDR minus some of its sub-ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The block, e.g. `10.0.0.0/8`.
    pub cidr: String,
    /// Sub-ranges of `cidr` left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// One entry of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// `TCP` (the default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<K8sProtocol>,
    /// A number (1-65535) or the name of a container port; absent means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// With a numeric `port`, the last port of the range `port..=endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// The protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum K8sProtocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        types: Option<Vec<PolicyType>>,
        egress: Option<Vec<NetworkPolicyEgressRule>>,
    ) -> NetworkPolicySpec {
        NetworkPolicySpec {
            pod_selector: LabelSelector::default(),
            ingress: None,
            egress,
            policy_types: types,
        }
    }

    #[test]
    fn policy_types_default_as_kubernetes_defaults_them() {
        assert_eq!(spec(None, None).effective_policy_types(), (true, false));
        assert_eq!(
            spec(Some(vec![]), Some(vec![])).effective_policy_types(),
            (true, false)
        );
        assert_eq!(
            spec(None, Some(vec![NetworkPolicyEgressRule::default()])).effective_policy_types(),
            (true, true)
        );
        assert_eq!(
            spec(
                Some(vec![PolicyType::Egress]),
                Some(vec![NetworkPolicyEgressRule::default()])
            )
            .effective_policy_types(),
            (false, true)
        );
        assert_eq!(
            spec(
                Some(vec![PolicyType::Ingress]),
                Some(vec![Default::default()])
            )
            .effective_policy_types(),
            (true, false)
        );
    }
}
