//! One object from the API server, as the agent gets it: plain JSON, complete, trimmed.

use ciliate_model::policy::{CiliumNetworkPolicy, NetworkPolicy};
use serde_json::{Map, Value};

use crate::kind::ResourceKind;
use crate::unknown_fields::strip_unknown_fields;

/// The annotation `kubectl apply` writes: a second copy of the whole object, never needed here.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One object of one [`ResourceKind`], as JSON.
///
/// `object` always has `apiVersion` and `kind` (list items come without them and get them
/// filled in), keeps `metadata.uid` and `metadata.resourceVersion`, and has lost
/// `metadata.managedFields` and the [`LAST_APPLIED_ANNOTATION`] (they can be most of an
/// object's size). Policy objects (NetworkPolicy, CiliumNetworkPolicy,
/// CiliumClusterwideNetworkPolicy) have also lost every field `ciliate_model::policy` does not
/// know, each named in `warnings`, so that the agent's strict decoder accepts them.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The kind.
    pub kind: ResourceKind,
    /// The object.
    pub object: Value,
    /// Fields that were dropped, one line each (`spec.foo: unknown field, ignored`).
    pub warnings: Vec<String>,
}

impl Document {
    /// Normalises an object as the API server sent it (see [`Document`]). An object that is
    /// not a JSON object is kept as it is (the agent's decoder reports it).
    pub fn new(kind: ResourceKind, mut object: Value) -> Document {
        let mut warnings = Vec::new();
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), kind.api_version().into());
            map.insert("kind".into(), kind.as_str().into());
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                trim_metadata(meta);
            }
            warnings = match kind {
                ResourceKind::NetworkPolicy => strip_unknown_fields::<NetworkPolicy>(&mut object),
                ResourceKind::CiliumNetworkPolicy
                | ResourceKind::CiliumClusterwideNetworkPolicy => {
                    strip_unknown_fields::<CiliumNetworkPolicy>(&mut object)
                }
                _ => Vec::new(),
            };
        }
        Document {
            kind,
            object,
            warnings,
        }
    }

    /// `metadata.name` (empty when missing).
    pub fn name(&self) -> &str {
        self.meta_str("name").unwrap_or_default()
    }

    /// `metadata.namespace` (`None` for cluster-scoped kinds).
    pub fn namespace(&self) -> Option<&str> {
        self.meta_str("namespace")
    }

    /// `metadata.uid`.
    pub fn uid(&self) -> Option<&str> {
        self.meta_str("uid")
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(&self) -> Option<&str> {
        self.meta_str("resourceVersion")
    }

    /// `Kind namespace/name` (or `Kind name`), for messages.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name()),
            None => format!("{} {}", self.kind, self.name()),
        }
    }

    fn meta_str(&self, field: &str) -> Option<&str> {
        self.object.get("metadata")?.get(field)?.as_str()
    }
}

fn trim_metadata(meta: &mut Map<String, Value>) {
    meta.remove("managedFields");
    if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn list_items_get_their_type_and_lose_bookkeeping() {
        let item = json!({
            "metadata": {
                "name": "web", "namespace": "prod", "uid": "5b3f", "resourceVersion": "1042",
                "annotations": {LAST_APPLIED_ANNOTATION: "{\"big\":true}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {"clusterIP": "10.96.0.10"}
        });
        let doc = Document::new(ResourceKind::Service, item);
        assert_eq!(
            doc.object,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "prod", "uid": "5b3f", "resourceVersion": "1042"},
                "spec": {"clusterIP": "10.96.0.10"}
            })
        );
        assert_eq!(doc.describe(), "Service prod/web");
        assert_eq!(doc.uid(), Some("5b3f"));
        assert_eq!(doc.resource_version(), Some("1042"));
        assert!(doc.warnings.is_empty());
    }

    #[test]
    fn other_annotations_stay() {
        let item = json!({"metadata": {"name": "n1", "annotations": {
            LAST_APPLIED_ANNOTATION: "{}", "team": "net"}}});
        let doc = Document::new(ResourceKind::Node, item);
        assert_eq!(
            doc.object["metadata"]["annotations"],
            json!({"team": "net"})
        );
        assert_eq!(doc.describe(), "Node n1");
    }

    #[test]
    fn clusterwide_policy_unknown_fields_become_warnings() {
        let item = json!({
            "metadata": {"name": "host-fw", "uid": "9d", "resourceVersion": "7"},
            "spec": {"nodeSelector": {}, "ingress": [{"fromEntities": ["cluster"]}], "newThing": 1},
            "status": {"conditions": []}
        });
        let doc = Document::new(ResourceKind::CiliumClusterwideNetworkPolicy, item);
        assert_eq!(doc.warnings, ["spec.newThing: unknown field, ignored"]);
        assert_eq!(doc.object["apiVersion"], "cilium.io/v2");
        assert!(doc.object["spec"].get("newThing").is_none());
        assert_eq!(doc.object["status"], json!({"conditions": []}));
    }

    #[test]
    fn a_network_policy_as_the_api_server_returns_it_has_no_warnings() {
        let item = json!({
            "metadata": {"name": "db", "namespace": "prod", "uid": "2a", "resourceVersion": "3301",
                         "generation": 1, "creationTimestamp": "2026-12-01T12:00:00Z",
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                       "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}},
                                      {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                             "ports": [{"protocol": "TCP", "port": 5432, "endPort": 5440}]}],
                "egress": [{"to": [{"podSelector": {}}], "ports": [{"protocol": "UDP", "port": "dns"}]}],
                "policyTypes": ["Ingress", "Egress"]
            }
        });
        let doc = Document::new(ResourceKind::NetworkPolicy, item);
        assert!(doc.warnings.is_empty(), "{:?}", doc.warnings);
        serde_json::from_value::<NetworkPolicy>(doc.object).expect("the strict model decodes it");
    }
}
