//! Pieces every policy resource shares: `metadata` and Kubernetes' int-or-string.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata` of a policy resource.
///
/// Only `name`, `namespace`, `labels` and `annotations` mean anything to Ciliate. The fields the
/// API server fills in are accepted (so that `kubectl get -o yaml` output loads) and kept
/// verbatim; any other field is an error, as it is for the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The policy's name (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The namespace; `default` when a namespaced policy names none, as with kubectl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels of the policy object itself (not a selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Set by the API server; kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Set by the API server; kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Set by the API server; kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Set by the API server; kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Set by the API server; kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// Set by the API server; kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// Set by the API server; kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    /// Kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Vec<String>>,
    /// Kept verbatim, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<serde_json::Value>,
    /// Set by the API server; kept verbatim, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<serde_json::Value>,
}

/// A value that is a number or a string (ports, ICMP types): the same type Services use.
/// What a string means (a named port, a number in a string, an ICMP type name) depends on the
/// field and is decided by validation, which also checks ranges so that an out-of-range number
/// gets a message naming the field rather than a decoding error.
pub use crate::k8s::IntOrString;
