//! What the source hands on is what the agent's model reads: API-shaped Services,
//! EndpointSlices and Namespaces decode with `ciliate_model::manifest::decode` once they are
//! [`Document`]s (list items gain `apiVersion`/`kind`; fields the model does not use are
//! ignored by it).

mod common;

use ciliate_k8s::{Document, ResourceKind};
use ciliate_model::k8s::Object;
use ciliate_model::manifest::{decode, ApplyDocument};
use common::fixture;
use serde_json::{json, Value};

fn decoded(kind: ResourceKind, item: Value) -> Object {
    let doc = Document::new(kind, item);
    let apply = ApplyDocument {
        source: "kubernetes".into(),
        index: 1,
        object: doc.object,
    };
    decode(&apply).unwrap_or_else(|errors| panic!("{}: {errors:?}", doc.kind))
}

#[test]
fn services_from_the_api_decode() {
    for item in fixture("service-list.json")["items"]
        .as_array()
        .expect("items")
    {
        match decoded(ResourceKind::Service, item.clone()) {
            Object::Service(s) => assert!(!s.spec.ports.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn endpoint_slices_from_the_api_decode() {
    let item = fixture("endpointslice-list.json")["items"][0].clone();
    match decoded(ResourceKind::EndpointSlice, item) {
        Object::EndpointSlice(s) => assert_eq!(s.endpoints.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn namespaces_from_the_api_decode() {
    let item = json!({
        "metadata": {"name": "prod", "uid": "6e", "resourceVersion": "12",
                     "creationTimestamp": "2026-11-30T09:00:00Z",
                     "labels": {"kubernetes.io/metadata.name": "prod", "team": "a"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    });
    match decoded(ResourceKind::Namespace, item) {
        Object::Namespace(n) => {
            assert_eq!(n.metadata.labels.get("team"), Some("a"))
        }
        other => panic!("{other:?}"),
    }
}
