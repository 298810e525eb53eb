//! The client against a small in-process axum server on a temporary unix socket.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ciliate_client::{Client, ClientError};
use ciliate_model::api::{ApiError, EndpointCreateRequest, GcRequest};
use ciliate_model::lb::{BackendState, L4Proto};
use ciliate_model::manifest::{split_documents, ApplyAction, ApplyRequest};
use ciliate_model::monitor::{EventKind, MonitorEvent};
use ciliate_model::{Endpoint, EndpointState, Labels, MacAddr, PodRef};
use futures::StreamExt;
use tempfile::TempDir;

fn endpoint() -> Endpoint {
    Endpoint {
        id: 42,
        container_id: "c0ffee".into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/x".into(),
        pod: Some(PodRef {
            namespace: "default".into(),
            name: "web".into(),
        }),
        labels: Labels::parse_list("app=web", "k8s").unwrap(),
        named_ports: Vec::new(),
        identity: 256,
        ipv4: Ipv4Addr::new(10, 0, 0, 5),
        mac: MacAddr([2, 0, 0, 0, 0, 5]),
        host_ifname: "lxc42".into(),
        host_ifindex: 7,
        host_mac: MacAddr([2, 0, 0, 0, 1, 5]),
        state: EndpointState::Ready,
        status_message: None,
        created_unix: 1_700_000_000,
    }
}

fn event(code: u8) -> MonitorEvent {
    MonitorEvent {
        kind: EventKind::Drop,
        time: "2024-01-01T00:00:00Z".into(),
        code,
        reason: "Policy denied".into(),
        endpoint: 42,
        ifindex: 7,
        src_identity: 2,
        dst_identity: 256,
        ct_state: "new".into(),
        len: 60,
        ethertype: 0x0800,
        src: Some(Ipv4Addr::new(1, 2, 3, 4)),
        dst: Some(Ipv4Addr::new(10, 0, 0, 5)),
        l4: None,
        rev_nat: 0,
        rule: 0,
        ethernet: None,
    }
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = ApiError {
        kind: kind.into(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

async fn get_endpoint(Path(reference): Path<String>) -> Response {
    if reference == "default/web" || reference == "42" {
        Json(endpoint()).into_response()
    } else {
        api_error(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("no endpoint {reference:?}"),
        )
    }
}

async fn monitor(Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    if q.get("type").is_some_and(|t| t != "drop") {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "type must be drop or trace",
        );
    }
    let mut text = String::new();
    for code in [133u8, 181] {
        text.push_str(&serde_json::to_string(&event(code)).unwrap());
        text.push('\n');
    }
    // Split the lines at awkward places, as a real stream may: mid-object and mid-newline.
    let bytes = text.into_bytes();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(bytes[..10].to_vec()),
        Ok(Vec::new()), // an empty frame must not end or confuse the stream
        Ok(bytes[10..bytes.len() - 30].to_vec()),
        Ok(bytes[bytes.len() - 30..].to_vec()),
    ];
    Response::new(Body::from_stream(futures::stream::iter(chunks)))
}

struct Server {
    _dir: TempDir,
    socket: PathBuf,
}

async fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let app = Router::new()
        .route(
            "/v1/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/v1/config",
            get(|| async { Json(serde_json::json!({"mtu": 1450})) }),
        )
        .route("/v1/endpoints/{reference}", get(get_endpoint))
        .route(
            "/v1/endpoints",
            post(|Json(req): Json<EndpointCreateRequest>| async move {
                api_error(
                    StatusCode::CONFLICT,
                    "conflict",
                    &format!("container {} already has an endpoint", req.container_id),
                )
            }),
        )
        .route(
            "/v1/endpoints/gc",
            post(|Json(req): Json<GcRequest>| async move {
                assert_eq!(req.valid_attachments.len(), 0);
                Json(serde_json::json!({"removed": [endpoint()]}))
            }),
        )
        .route(
            "/v1/identities",
            get(|| async { Json(serde_json::json!({"not": "a list"})) }),
        )
        .route(
            "/v1/bpf/ct",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/v1/status",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/v1/monitor", get(monitor))
        .route(
            "/v1/manifests",
            post(|Json(req): Json<ApplyRequest>| async move {
                if req.delete {
                    return api_error(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        "1 problem in the manifests; nothing was applied:\n  a.yaml: document 1: kind: required value",
                    );
                }
                Json(serde_json::json!({"results": [{
                    "kind": "Service", "namespace": "default", "name": "web",
                    "action": "created", "source": req.documents[0].source, "index": req.documents[0].index
                }]}))
                .into_response()
            }),
        )
        .route(
            "/v1/services/{namespace}/{name}",
            get(|Path((ns, name)): Path<(String, String)>| async move {
                Json(serde_json::json!({
                    "namespace": ns, "name": name, "type": "ClusterIP", "clusterIp": "10.96.0.10",
                    "frontends": [{"addr": "10.96.0.10", "port": 80, "proto": "TCP", "kind": "ClusterIp",
                                   "portName": "http", "revNatIndex": 1,
                                   "backends": [{"id": 1, "addr": "10.200.0.5", "port": 8080, "state": "active"}]}]
                }))
            }),
        )
        .route(
            "/v1/bpf/lb",
            get(|| async {
                Json(serde_json::json!({"frontends": [], "backends": [
                    {"id": 7, "addr": "10.200.0.5", "port": 8080, "proto": "UDP", "state": "terminating"}
                ]}))
            }),
        );
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { _dir: dir, socket }
}

#[tokio::test]
async fn success_answers_decode() {
    let server = serve().await;
    let client = Client::new(&server.socket);
    assert_eq!(client.health().await.unwrap().status, "ok");
    assert_eq!(client.config().await.unwrap()["mtu"], 1450);
    // `ns/pod` must arrive as one path segment.
    assert_eq!(client.endpoint("default/web").await.unwrap(), endpoint());
    assert_eq!(client.endpoint("42").await.unwrap().id, 42);
    let gc = client
        .gc(&GcRequest {
            valid_attachments: vec![],
        })
        .await
        .unwrap();
    assert_eq!(gc.removed, vec![endpoint()]);
}

#[tokio::test]
async fn api_errors_keep_status_kind_and_message() {
    let server = serve().await;
    let client = Client::new(&server.socket);

    let err = client.endpoint("default/nope").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.api_kind(), Some("not-found"));
    assert_eq!(err.to_string(), "no endpoint \"default/nope\"");

    let req = EndpointCreateRequest {
        container_id: "c0ffee".into(),
        ifname: "eth0".into(),
        netns: "/x".into(),
        pod: None,
        labels: Labels::new(),
        named_ports: Vec::new(),
        host_ifname: "lxc1".into(),
        host_ifindex: 3,
        host_mac: MacAddr::default(),
        mac: MacAddr::default(),
    };
    let err = client.create_endpoint(&req).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 409, error } if error.kind == "conflict"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "container c0ffee already has an endpoint");

    // A body that is not an ApiError still reports the status and the text.
    let err = client.ct_entries().await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("boom"), "{err}");
}

#[tokio::test]
async fn wrong_shape_is_a_decode_error() {
    let server = serve().await;
    let err = Client::new(&server.socket).identities().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Decode { what, .. } if what == "GET /v1/identities"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_socket_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let err = Client::new(&socket).health().await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(
        text.contains("is ciliate-agent running? set --socket or CILIATE_SOCKET"),
        "{text}"
    );
}

#[tokio::test]
async fn slow_agent_times_out() {
    let server = serve().await;
    let client = Client::new(&server.socket).with_timeout(Duration::from_millis(200));
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn monitor_streams_ndjson_across_chunks() {
    let server = serve().await;
    let client = Client::new(&server.socket);
    let events: Vec<MonitorEvent> = client
        .monitor(Some("drop"))
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(events, vec![event(133), event(181)]);

    let err = client.monitor(Some("bogus")).await.err().unwrap();
    assert_eq!(err.status(), Some(400));
}

#[tokio::test]
async fn services_and_manifests() {
    let server = serve().await;
    let client = Client::new(&server.socket);
    let request = ApplyRequest {
        documents: split_documents("a.yaml", "---\nkind: Service\n").unwrap(),
        delete: false,
    };
    let r = client.apply(&request).await.unwrap();
    assert_eq!(r.results[0].action, ApplyAction::Created);
    assert_eq!(
        (r.results[0].source.as_str(), r.results[0].index),
        ("a.yaml", 1),
        "a leading --- starts the first document"
    );
    assert_eq!(r.results[0].to_string(), "service/web created");

    let err = client
        .apply(&ApplyRequest {
            delete: true,
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(err.api_kind(), Some("invalid"));
    assert_eq!(
        err.to_string().lines().count(),
        2,
        "every problem on its own line"
    );

    // Namespace and name each stay one path segment.
    let v = client.service("my ns", "web").await.unwrap();
    assert_eq!(v.full_name(), "my ns/web");
    assert_eq!(v.frontends[0].backends[0].state, BackendState::Active);

    let lb = client.lb_state().await.unwrap();
    assert_eq!(lb.backends[0].proto, L4Proto::Udp);
    assert_eq!(lb.backends[0].state, BackendState::Terminating);
}
