//! The client's policy calls against a small in-process axum server: paths and queries are
//! encoded as the agent routes them, and hand-written answers decode (pinning the wire format).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use ciliate_client::Client;
use ciliate_model::manifest::{split_documents, ApplyRequest};
use ciliate_model::policy::{Direction, PolicyKind, PolicyRef, PolicyResource};
use ciliate_model::policy_api::{TracePeerKind, TraceReason};
use serde_json::json;
use tempfile::TempDir;

struct Server {
    _dir: TempDir,
    socket: PathBuf,
}

async fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let app = Router::new()
        .route(
            "/v1/policies",
            get(|| async {
                Json(json!([{"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "web",
                    "source": "api", "endpoints": 2,
                    "warnings": ["spec.ingress[0].toPorts[0].rules: L7 rules are not enforced yet"]}]))
            }),
        )
        .route(
            "/v1/policies/{kind}/{name}",
            get(|Path((kind, name)): Path<(String, String)>| async move {
                Json(json!({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": {"name": name},
                    "spec": {"endpointSelector": {}}}))
            }),
        )
        .route(
            "/v1/policies/{kind}/{ns}/{name}",
            get(|Path((kind, ns, name)): Path<(String, String, String)>| async move {
                if name != "web" {
                    let body = json!({"kind": "not-found", "message": format!("no {kind} {ns}/{name}")});
                    return (StatusCode::NOT_FOUND, Json(body)).into_response();
                }
                Json(json!({"apiVersion": "cilium.io/v2", "kind": kind,
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}}}))
                .into_response()
            }),
        )
        .route(
            "/v1/policies/validate",
            post(|Json(req): Json<ApplyRequest>| async move {
                Json(json!({"valid": false, "policies": [], "otherObjects": 0,
                    "errors": [{"source": req.documents[0].source, "index": 1,
                        "object": "CiliumNetworkPolicy default/x", "path": "spec",
                        "reason": "required value"}],
                    "warnings": []}))
            }),
        )
        .route(
            "/v1/policy/trace",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                // Echo what arrived, so the test sees the decoded query.
                Json(json!({
                    "src": {"query": q["src"], "kind": "hypothetical", "identity": 256,
                            "labels": ["k8s:app=client"]},
                    "dst": {"query": q["dst"], "kind": "endpoint", "identity": 257,
                            "labels": ["k8s:app=web"], "endpoint": 3,
                            "pod": {"namespace": "default", "name": "web"}, "ip": "10.200.0.3"},
                    "proto": if q["proto"] == "udp" { 17 } else { 6 },
                    "dport": q["dport"].parse::<u16>().unwrap(),
                    "allowed": false, "deciding": "ingress", "dropReason": 181,
                    "ingress": {"direction": "ingress", "endpoint": 257, "peer": 256,
                        "allowed": false, "reason": "denied-by",
                        "rules": [{"policy": {"kind": "CiliumNetworkPolicy", "namespace": "default",
                                   "name": "deny"}, "section": "ingressDeny", "index": 0}],
                        "policies": [], "dropReason": 181,
                        "message": "denied by rule spec.ingressDeny[0] of CiliumNetworkPolicy default/deny"}
                }))
            }),
        )
        .route(
            "/v1/bpf/policy/{reference}",
            get(|Path(r): Path<String>| async move {
                Json(json!({"endpoint": 3, "identity": 257, "ingressEnforced": true,
                    "egressEnforced": false, "pod": {"namespace": "default", "name": r},
                    "entries": [{"identity": 256, "egress": false, "proto": 6, "port": 8080,
                        "portPrefixLen": 16, "deny": false, "kind": "l3-l4", "rule": 4,
                        "labels": ["k8s:app=client"], "packets": 12, "bytes": 960,
                        "ruleRef": {"policy": {"kind": "CiliumNetworkPolicy", "namespace": "default",
                                    "name": "web"}, "section": "ingress", "index": 0}}]}))
            }),
        );
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { _dir: dir, socket }
}

#[tokio::test]
async fn list_get_and_validate() {
    let server = serve().await;
    let client = Client::new(&server.socket);
    let list = client.policies().await.unwrap();
    assert_eq!(
        list[0].policy.to_string(),
        "CiliumNetworkPolicy default/web"
    );
    assert_eq!((list[0].endpoints, list[0].warnings.len()), (2, 1));

    let r = PolicyRef {
        kind: PolicyKind::CiliumNetworkPolicy,
        namespace: Some("my ns".into()),
        name: "web".into(),
    };
    let p = client.policy(&r).await.unwrap();
    assert_eq!(p.policy_ref(), r, "namespace arrived as one segment");
    let missing = PolicyRef {
        name: "gone".into(),
        ..r
    };
    assert_eq!(
        client.policy(&missing).await.unwrap_err().status(),
        Some(404)
    );
    let ccnp = PolicyRef {
        kind: PolicyKind::CiliumClusterwideNetworkPolicy,
        namespace: None,
        name: "all".into(),
    };
    let p = client.policy(&ccnp).await.unwrap();
    assert!(matches!(p, PolicyResource::Cilium(_)));
    assert_eq!(p.policy_ref(), ccnp);

    let v = client
        .validate_policies(&ApplyRequest {
            documents: split_documents("x.yaml", "kind: CiliumNetworkPolicy\n").unwrap(),
            delete: false,
        })
        .await
        .unwrap();
    assert!(!v.valid);
    assert_eq!(
        v.errors[0].to_string(),
        "x.yaml: document 1 (CiliumNetworkPolicy default/x): spec: required value"
    );
}

#[tokio::test]
async fn trace_and_bpf_policy() {
    let server = serve().await;
    let client = Client::new(&server.socket);
    let t = client
        .policy_trace(
            "k8s:app=client,k8s:io.kubernetes.pod.namespace=default",
            "default/web",
            53,
            "udp",
        )
        .await
        .unwrap();
    assert_eq!(
        t.src.query, "k8s:app=client,k8s:io.kubernetes.pod.namespace=default",
        "labels with '=' and ',' survive the query string"
    );
    assert_eq!(
        (t.dst.query.as_str(), t.proto, t.dport),
        ("default/web", 17, 53)
    );
    assert_eq!(t.src.kind, TracePeerKind::Hypothetical);
    assert_eq!(t.deciding, Some(Direction::Ingress));
    let d = t.deciding_verdict().unwrap();
    assert_eq!(
        (d.reason, d.drop_reason),
        (TraceReason::DeniedBy, Some(181))
    );
    assert_eq!(d.rules[0].path(), "spec.ingressDeny[0]");
    assert_eq!(
        t.dst.to_string(),
        "pod default/web (endpoint 3, identity 257: k8s:app=web)"
    );

    let v = client.bpf_policy("default/web").await.unwrap();
    assert_eq!(v.pod.unwrap().name, "default/web", "one path segment");
    assert_eq!(v.entries[0].entry.port, 8080);
    assert_eq!(v.entries[0].packets, 12);
    assert_eq!(
        v.entries[0].rule_ref.as_ref().unwrap().path(),
        "spec.ingress[0]"
    );
}
