//! The API router driven in-process, one request at a time, against the fake datapath.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use ciliate_agent::api::{router, AppState};
use ciliate_agent::config::{Config, StaticEnvironment};
use ciliate_agent::endpoints::{EndpointManager, ManagerSettings};
use ciliate_agent::gc::CtGcHealth;
use ciliate_agent::policy::{PolicyManager, PolicySettings};
use ciliate_agent::services::{ServiceManager, ServiceSettings};
use ciliate_agent::state::StateStore;
use ciliate_datapath::{Datapath, FakeDatapath};
use ciliate_model::manifest::raw;
use ciliate_model::monitor::{EventKind, MonitorEvent};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

struct Harness {
    app: Router,
    dp: Arc<FakeDatapath>,
    policies: Arc<PolicyManager>,
    fqdn: Arc<ciliate_agent::fqdn::FqdnManager>,
    history: ciliate_observer::history::FlowHistory,
    _shutdown: watch::Sender<bool>,
    _tmp: tempfile::TempDir,
}

fn harness_with(cidr: &str) -> Harness {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = StaticEnvironment {
        hostname: Some("node-a".into()),
        ..Default::default()
    };
    let state_dir = tmp.path().display().to_string();
    let config = Config::parse_from(
        [
            "ciliate-agent",
            "--datapath",
            "fake",
            "--pod-cidr",
            cidr,
            "--state-dir",
            &state_dir,
            "--mtu",
            "1400",
        ],
        &env,
    )
    .expect("config");
    let dp = Arc::new(FakeDatapath::new());
    let store = StateStore::open(&config.node_state_dir()).expect("state dir");
    let manager = EndpointManager::open(
        ManagerSettings {
            node_name: config.node_name.clone(),
            pod_cidr: config.pod_cidr,
            mtu: config.pod_mtu(None),
        },
        store,
        dp.clone(),
    )
    .expect("manager");
    let services = ServiceManager::open(
        ServiceSettings {
            node_name: config.node_name.clone(),
            node_ips: vec![Ipv4Addr::new(192, 168, 1, 10)],
            manifest_dir: None,
            kubernetes: false,
        },
        &config.node_state_dir(),
        dp.clone(),
    )
    .expect("services");
    let policies = Arc::new(
        PolicyManager::open(
            PolicySettings::default(),
            &config.node_state_dir(),
            dp.clone(),
        )
        .expect("policies"),
    );
    let manager = Arc::new(manager);
    services.attach_policy(Arc::clone(&policies));
    manager.attach_policy(Arc::clone(&policies));
    let view = Arc::clone(&manager);
    let fqdn = Arc::new(
        ciliate_agent::fqdn::FqdnManager::open(
            config.fqdn_settings(),
            &config.node_state_dir(),
            Arc::clone(&policies),
            dp.clone(),
            Box::new(move || view.policy_snapshot()),
        )
        .expect("fqdn cache"),
    );
    manager.reconcile_policy().expect("reconciles");
    let (tx, rx) = watch::channel(false);
    let history = ciliate_observer::history::FlowHistory::open(
        ciliate_observer::history::HistoryConfig {
            dir: tmp.path().join("flow-history"),
            max_bytes: 1 << 30,
            max_age: None,
            queue_flows: 1 << 16,
        },
        "node-a",
    )
    .expect("flow history");
    let app = router(AppState {
        config: Arc::new(config),
        manager,
        services: Arc::new(services),
        policies: Arc::clone(&policies),
        fqdn: Arc::clone(&fqdn),
        cluster: None,
        api_metrics: Default::default(),
        ct_gc: Arc::new(CtGcHealth::default()),
        started: Instant::now(),
        shutdown: rx,
        flow_history: Some(history.clone()),
    });
    Harness {
        app,
        dp,
        policies,
        fqdn,
        history,
        _shutdown: tx,
        _tmp: tmp,
    }
}

fn harness() -> Harness {
    harness_with("10.200.0.0/24")
}

impl Harness {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).expect("serialises"))
            }
            None => Body::empty(),
        };
        self.send(req.body(body).expect("request")).await
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }
}

fn create_body(cid: &str, ifindex: u32) -> Value {
    json!({
        "containerId": cid,
        "ifname": "eth0",
        "netns": format!("/var/run/netns/{cid}"),
        "pod": {"namespace": "default", "name": format!("web-{cid}")},
        "labels": ["k8s:app=web"],
        "hostIfname": format!("lxc{ifindex}"),
        "hostIfindex": ifindex,
        "hostMac": "02:00:00:00:00:01",
        "mac": "02:00:00:00:00:02"
    })
}

/// An error answer: the status, and a body with the kind and a message.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, kind: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["kind"], kind, "{}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| m.len() > 10),
        "an error needs a message that says what to do: {}",
        got.1
    );
}

#[tokio::test]
async fn healthz_config_and_status() {
    let h = harness();
    assert_eq!(
        h.get("/v1/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let (s, cfg) = h.get("/v1/config").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cfg["nodeName"], "node-a");
    assert_eq!(cfg["datapath"], "fake");
    assert_eq!(cfg["mtu"], 1400);

    h.call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    let (s, st) = h.get("/v1/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(st["node"], "node-a");
    assert_eq!(st["health"], "ok");
    assert_eq!(st["problems"], json!([]));
    assert_eq!(st["endpoints"], 1);
    assert_eq!(st["identities"], 1);
    assert_eq!(
        st["ipam"],
        json!({"cidr": "10.200.0.0/24", "allocated": 1, "capacity": 253})
    );
    assert_eq!(st["datapath"]["kind"], "fake");
    assert_eq!(st["datapath"]["loaded"], true);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn create_get_and_delete_an_endpoint() {
    let h = harness();
    let (s, created) = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["address"], "10.200.0.2/32");
    assert_eq!(created["gateway"], "169.254.1.1");
    assert_eq!(created["mtu"], 1400);
    assert_eq!(created["endpoint"]["id"], 1);
    assert_eq!(created["endpoint"]["state"], "ready");
    assert_eq!(created["endpoint"]["identity"], 256);
    assert_eq!(
        created["endpoint"]["labels"],
        json!(["k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"])
    );
    assert_eq!(h.dp.programmed().len(), 1);

    for r in ["1", "c1", "default%2Fweb-c1"] {
        let (s, ep) = h.get(&format!("/v1/endpoints/{r}")).await;
        assert_eq!(s, StatusCode::OK, "{r}: {ep}");
        assert_eq!(ep["containerId"], "c1", "{r}");
    }
    let (s, list) = h.get("/v1/endpoints").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    let missing = h.get("/v1/endpoints/nope").await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not-found");
    assert!(missing.1["message"]
        .as_str()
        .is_some_and(|m| m.contains("nope")));
    assert_error(
        &h.get("/v1/endpoints/default%2Fnope").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );

    let (s, deleted) = h.call(Method::DELETE, "/v1/endpoints/c1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(deleted["endpoint"]["containerId"], "c1");
    assert_eq!(deleted["released"], "10.200.0.2");
    assert!(h.dp.programmed().is_empty());
    let (s, again) = h.call(Method::DELETE, "/v1/endpoints/c1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, json!({"endpoint": null, "released": null}));
}

#[tokio::test]
async fn conflicts_and_bad_requests_answer_api_errors() {
    let h = harness();
    h.call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    let dup = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c1", 6)))
        .await;
    assert_error(&dup, StatusCode::CONFLICT, "conflict");
    let same_if = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c2", 5)))
        .await;
    assert_error(&same_if, StatusCode::CONFLICT, "conflict");

    let mut empty = create_body("x", 7);
    empty["containerId"] = json!("");
    assert_error(
        &h.call(Method::POST, "/v1/endpoints", Some(empty)).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    let mut zero = create_body("x", 7);
    zero["hostIfindex"] = json!(0);
    assert_error(
        &h.call(Method::POST, "/v1/endpoints", Some(zero)).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    let mut bad_label = create_body("x", 7);
    bad_label["labels"] = json!(["app=we b"]);
    let got = h.call(Method::POST, "/v1/endpoints", Some(bad_label)).await;
    assert_eq!(got.1["kind"], "invalid", "{}", got.1);
    assert!(got.0.is_client_error());
    let missing_field = h
        .call(
            Method::POST,
            "/v1/endpoints",
            Some(json!({"containerId": "x"})),
        )
        .await;
    assert_eq!(missing_field.1["kind"], "invalid");
    assert!(missing_field.0.is_client_error());

    let not_json = Request::post("/v1/endpoints")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{nope"))
        .expect("request");
    assert_error(&h.send(not_json).await, StatusCode::BAD_REQUEST, "invalid");
    let no_type = Request::post("/v1/endpoints")
        .body(Body::from("{}"))
        .expect("request");
    assert_error(
        &h.send(no_type).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid",
    );
    assert_eq!(
        h.get("/v1/endpoints").await.1.as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn datapath_failure_is_a_500_and_leaves_nothing() {
    let h = harness();
    h.dp.fail_next_upsert("attach failed");
    let got = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    assert_error(&got, StatusCode::INTERNAL_SERVER_ERROR, "datapath");
    assert!(got.1["message"]
        .as_str()
        .is_some_and(|m| m.contains("attach failed")));
    assert_eq!(h.get("/v1/endpoints").await.1, json!([]));
    assert_eq!(h.get("/v1/status").await.1["ipam"]["allocated"], 0);
}

#[tokio::test]
async fn exhausted_pod_cidr_is_reported() {
    let h = harness_with("10.0.0.4/30");
    assert_eq!(
        h.call(Method::POST, "/v1/endpoints", Some(create_body("a", 1)))
            .await
            .0,
        StatusCode::CREATED
    );
    let got = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("b", 2)))
        .await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "exhausted");
}

#[tokio::test]
async fn gc_removes_unlisted_endpoints() {
    let h = harness();
    for (cid, i) in [("a", 1), ("b", 2)] {
        h.call(Method::POST, "/v1/endpoints", Some(create_body(cid, i)))
            .await;
    }
    let (s, res) = h
        .call(
            Method::POST,
            "/v1/endpoints/gc",
            Some(json!({"validAttachments": [{"containerId": "a", "ifname": "eth0"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{res}");
    assert_eq!(res["removed"].as_array().map(Vec::len), Some(1));
    assert_eq!(res["removed"][0]["containerId"], "b");
    assert_eq!(
        h.get("/v1/endpoints").await.1.as_array().map(Vec::len),
        Some(1)
    );
    assert_error(
        &h.call(Method::POST, "/v1/endpoints/gc", Some(json!({})))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    );
}

#[tokio::test]
async fn identities_reserved_and_allocated() {
    let h = harness();
    h.call(Method::POST, "/v1/endpoints", Some(create_body("a", 1)))
        .await;
    let (s, ids) = h.get("/v1/identities").await;
    assert_eq!(s, StatusCode::OK);
    let ids = ids.as_array().cloned().unwrap_or_default();
    assert_eq!(ids.len(), 9);
    assert!(ids[..8].iter().all(|i| i["reserved"] == true));
    assert_eq!(ids[0]["labels"], json!(["reserved:host"]));
    assert_eq!(ids[8]["id"], 256);
    assert_eq!(ids[8]["references"], 1);
    let (s, world) = h.get("/v1/identities/2").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(world["labels"], json!(["reserved:world"]));
    assert_eq!(h.get("/v1/identities/256").await.1["reserved"], false);
    assert_error(
        &h.get("/v1/identities/999").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    assert_error(
        &h.get("/v1/identities/web").await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
}

#[tokio::test]
async fn ct_entries_and_unknown_routes() {
    let h = harness();
    assert_eq!(h.get("/v1/bpf/ct").await, (StatusCode::OK, json!([])));
    assert_error(
        &h.get("/v1/nothing").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    assert_error(&h.get("/").await, StatusCode::NOT_FOUND, "not-found");
    assert_error(
        &h.call(Method::PUT, "/v1/endpoints", Some(json!({}))).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    );
    assert_error(
        &h.call(Method::GET, "/v1/endpoints/gc", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    );
}

fn event(kind: EventKind, endpoint: u16) -> MonitorEvent {
    MonitorEvent {
        kind,
        time: "2024-01-01T00:00:00Z".into(),
        code: 133,
        reason: "Policy denied".into(),
        endpoint,
        ifindex: 5,
        src_identity: 256,
        dst_identity: 2,
        ct_state: "new".into(),
        len: 60,
        ethertype: 0x0800,
        src: Some(Ipv4Addr::new(10, 200, 0, 2)),
        dst: Some(Ipv4Addr::new(1, 1, 1, 1)),
        l4: None,
        rev_nat: 0,
        rule: 0,
        ethernet: None,
    }
}

/// Reads body frames until one line is complete.
async fn next_line(body: &mut Body) -> String {
    let mut buf = Vec::new();
    while !buf.ends_with(b"\n") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    String::from_utf8(buf).expect("utf-8")
}

#[tokio::test]
async fn monitor_streams_ndjson_with_filters() {
    let h = harness();
    let resp = h
        .app
        .clone()
        .oneshot(
            Request::get("/v1/monitor?type=drop")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    let mut body = resp.into_body();
    // The subscription exists once the handler answered: events from now on are delivered.
    h.dp.emit(event(EventKind::Trace, 1));
    h.dp.emit(event(EventKind::Drop, 2));
    let line = next_line(&mut body).await;
    let got: MonitorEvent = serde_json::from_str(line.trim_end()).expect("one event per line");
    assert_eq!(
        (got.kind, got.endpoint),
        (EventKind::Drop, 2),
        "traces filtered out"
    );

    let all = h
        .app
        .clone()
        .oneshot(
            Request::get("/v1/monitor")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let mut all = all.into_body();
    h.dp.emit(event(EventKind::Trace, 3));
    let line = next_line(&mut all).await;
    assert_eq!(
        serde_json::from_str::<MonitorEvent>(line.trim_end())
            .expect("event")
            .endpoint,
        3
    );

    assert_error(
        &h.get("/v1/monitor?type=flow").await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
}

#[tokio::test]
async fn monitor_survives_lag() {
    let h = harness();
    let resp = h
        .app
        .clone()
        .oneshot(
            Request::get("/v1/monitor")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let mut body = resp.into_body();
    // More than the fake's channel holds: the reader lags, loses the oldest, and goes on.
    for i in 0..1500u16 {
        h.dp.emit(event(EventKind::Drop, i));
    }
    let first: MonitorEvent =
        serde_json::from_str(next_line(&mut body).await.trim_end()).expect("event");
    assert!(
        first.endpoint >= 1500 - 1024,
        "oldest events were dropped, got {}",
        first.endpoint
    );
    h.dp.emit(event(EventKind::Drop, 9999));
    let mut last = first.endpoint;
    while last != 9999 {
        last = serde_json::from_str::<MonitorEvent>(next_line(&mut body).await.trim_end())
            .expect("event")
            .endpoint;
    }
}

/// The documents of a YAML text, as `ciliate apply` sends them.
fn apply_body(source: &str, yaml: &str, delete: bool) -> Value {
    let docs = ciliate_model::manifest::split_documents(source, yaml).expect("YAML");
    json!({"documents": docs, "delete": delete})
}

const WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.200.0.5]
- addresses: [10.200.0.6]
  conditions: {ready: false, serving: true, terminating: true}
";

#[tokio::test]
async fn manifests_services_and_the_lb_maps() {
    let h = harness();
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("web.yaml", WEB, false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["kind"], "Service");
    assert_eq!(r["results"][0]["name"], "web");
    assert_eq!(r["results"][0]["action"], "created");
    assert_eq!(r["results"][1]["action"], "created");
    assert_eq!(r["results"][1]["source"], "web.yaml");
    assert_eq!(r["results"][1]["index"], 2);

    let (s, list) = h.get("/v1/services").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (s, web) = h.get("/v1/services/default/web").await;
    assert_eq!(s, StatusCode::OK, "{web}");
    assert_eq!(web, list[0]);
    assert_eq!(web["type"], "ClusterIP");
    assert_eq!(web["clusterIp"], "10.96.0.10");
    assert_eq!(web["affinityTimeout"], 10800);
    assert_eq!(web["source"], "api");
    let f = &web["frontends"][0];
    assert_eq!(
        (f["addr"].as_str(), f["port"].as_u64(), f["proto"].as_str()),
        (Some("10.96.0.10"), Some(80), Some("TCP"))
    );
    assert_eq!(f["kind"], "ClusterIp");
    assert_eq!(f["revNatIndex"], 1);
    assert_eq!(
        f["backends"][0],
        json!({"id": 1, "addr": "10.200.0.5", "port": 8080, "state": "active"})
    );
    assert_eq!(f["backends"][1]["state"], "terminating");

    let (s, lb) = h.get("/v1/bpf/lb").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        lb["frontends"][0]["backends"],
        json!([1]),
        "only the active one takes new connections"
    );
    assert_eq!(lb["backends"].as_array().map(Vec::len), Some(2));

    let (_, st) = h.get("/v1/status").await;
    assert_eq!(
        (st["services"].as_u64(), st["backends"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(st["health"], "ok", "{st}");

    // Applying again changes nothing; deleting removes.
    let (_, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("web.yaml", WEB, false)),
        )
        .await;
    assert_eq!(r["results"][0]["action"], "unchanged");
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("web.yaml", WEB, true)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["action"], "deleted");
    assert_eq!(r["results"][1]["action"], "deleted");
    assert_error(
        &h.get("/v1/services/default/web").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    assert_eq!(h.dp.lb_state().expect("state").frontends.len(), 0);
}

/// `POST /v1/manifests` in the streamed form, `chunks` as the body's pieces (an `Err` breaks
/// the body off there).
async fn post_streamed(
    h: &Harness,
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> (StatusCode, Value) {
    let body = Body::from_stream(futures::stream::iter(chunks));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/manifests")
        .header(header::CONTENT_TYPE, raw::STREAM_CONTENT_TYPE)
        .body(body)
        .expect("request");
    h.send(req).await
}

/// The streamed form of `yaml`'s documents (what `ciliate apply` sends).
fn streamed_body(source: &str, yaml: &str, delete: bool) -> Vec<u8> {
    let mut out = serde_json::to_vec(&raw::StreamHeader { delete }).expect("header");
    out.push(b'\n');
    for d in ciliate_model::manifest::split_documents_raw(source, yaml).expect("YAML") {
        raw::write_stream_document(&mut out, &d.source, d.index, d.object.get().as_bytes());
    }
    out
}

/// A batch refused as invalid (400), its message naming `needle`.
fn assert_refused(got: &(StatusCode, Value), needle: &str) {
    assert_error(got, StatusCode::BAD_REQUEST, "invalid");
    let message = got.1["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{}", got.1);
}

#[tokio::test]
async fn the_streamed_form_applies_only_a_complete_body() {
    let h = harness();
    let body = streamed_body("web.yaml", WEB, false);
    let services = |h: &Harness| h.dp.lb_state().expect("state").frontends.len();

    // Broken off half-way (the CLI found a syntax error further on): nothing applied.
    let half = body[..body.len() / 2].to_vec();
    let (s, r) = post_streamed(&h, vec![Ok(half), Err(std::io::Error::other("cut"))]).await;
    assert_refused(&(s, r), "nothing was applied");
    assert_eq!(services(&h), 0);

    // A line that is not a document: refused, naming the line, nothing applied.
    let mut bad = body.clone();
    bad.extend_from_slice(b"{not json\n");
    let (s, r) = post_streamed(&h, vec![Ok(bad)]).await;
    assert_refused(&(s, r), "line 4");
    assert_eq!(services(&h), 0);

    // An invalid object among valid ones: refused whole, as in the JSON form.
    let with_bad =
        format!("{WEB}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n");
    let (s, r) = post_streamed(&h, vec![Ok(streamed_body("bad.yaml", &with_bad, false))]).await;
    assert_refused(&(s, r), "bad.yaml: document 3");
    assert_eq!(services(&h), 0);

    // Whole, in more pieces than the agent's queue between the body and its decoder holds
    // (a decoder started only once the body was read would never see the end), most of
    // them splitting lines: applied, with each document's place.
    let pieces: Vec<_> = body.chunks(3).map(|c| Ok(c.to_vec())).collect();
    assert!(pieces.len() > 200, "{}", pieces.len());
    let (s, r) = post_streamed(&h, pieces).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["action"], "created");
    assert_eq!(r["results"][1]["source"], "web.yaml");
    assert_eq!(r["results"][1]["index"], 2);
    assert_eq!(services(&h), 1);

    // A delete in the streamed form.
    let (s, r) = post_streamed(&h, vec![Ok(streamed_body("web.yaml", WEB, true))]).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["action"], "deleted");
    assert_eq!(r["results"][1]["action"], "deleted");
    assert_eq!(services(&h), 0);
}

#[tokio::test]
async fn an_invalid_batch_is_refused_whole_with_every_problem() {
    let h = harness();
    let bad = format!(
        "{WEB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: other}}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{{port: 70000}}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n"
    );
    let got = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("bad.yaml", &bad, false)),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid");
    let message = got.1["message"].as_str().unwrap_or_default();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(
        lines[0],
        "2 problems in the manifests; nothing was applied:"
    );
    assert_eq!(
        lines[1],
        "  bad.yaml: document 3 (Service default/other): spec.ports[0].port: invalid value 70000: must be 1-65535"
    );
    assert!(
        lines[2]
            .starts_with("  bad.yaml: document 4 (Deployment default/x): kind: unsupported kind"),
        "{message}"
    );
    assert_eq!(
        h.get("/v1/services").await.1,
        json!([]),
        "nothing of the batch applied"
    );

    // A body that is not an ApplyRequest is an `invalid` error too.
    assert_error(
        &h.call(Method::POST, "/v1/manifests", Some(json!({"docs": []})))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/v1/manifests",
            Some(json!({"documents": []})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
}

#[tokio::test]
async fn a_failed_datapath_sync_is_a_warning_and_a_status_problem() {
    let h = harness();
    h.dp.fail_lb_sync(Some("map is full"));
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("web.yaml", WEB, false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("map is full"),
        "{r}"
    );
    let (_, st) = h.get("/v1/status").await;
    assert_eq!(st["health"], "degraded");
    assert!(
        st["problems"][0]
            .as_str()
            .unwrap_or_default()
            .contains("map is full"),
        "{st}"
    );
}

#[tokio::test]
async fn large_batches_fit_the_body_limit() {
    let h = harness();
    let mut yaml = String::new();
    for i in 0..8000u32 {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, labels: {{app: a-rather-long-application-name, tier: frontend}}}}\nspec:\n  clusterIP: 10.97.{}.{}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let body = apply_body("many.yaml", &yaml, false);
    assert!(
        serde_json::to_vec(&body).expect("json").len() > 2 << 20,
        "more than axum's default limit"
    );
    let (s, r) = h.call(Method::POST, "/v1/manifests", Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{}", r["message"]);
    assert_eq!(
        h.get("/v1/services").await.1.as_array().map(Vec::len),
        Some(8000)
    );
}

const SERVER_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ingress}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
  - toCIDR: [10.0.0.0/8]
"#;

#[tokio::test]
async fn policies_are_imported_listed_got_and_deleted() {
    let h = harness();
    let (s, created) = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("p.yaml", SERVER_POLICY, false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["policies"],
        json!([{"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "web-ingress",
            "action": "created", "source": "p.yaml", "index": 1}])
    );
    let (s, list) = h.get("/v1/policies").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        list,
        json!([{"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "web-ingress",
            "source": "api", "endpoints": 1, "warnings": []}])
    );
    for uri in [
        "/v1/policies/CiliumNetworkPolicy/default/web-ingress",
        "/v1/policies/cnp/default/web-ingress",
    ] {
        let (s, p) = h.get(uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {p}");
        assert_eq!(p["kind"], "CiliumNetworkPolicy");
        assert_eq!(p["spec"]["endpointSelector"]["matchLabels"]["app"], "web");
    }
    assert_error(
        &h.get("/v1/policies/cnp/default/nope").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    assert_error(
        &h.get("/v1/policies/cnp/web-ingress").await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    assert_error(
        &h.get("/v1/policies/service/default/x").await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    let (_, st) = h.get("/v1/status").await;
    assert_eq!(st["policies"], 1);

    // The CIDR identity is an identity like the others.
    let (_, ids) = h.get("/v1/identities").await;
    let cidr: Vec<&Value> = ids
        .as_array()
        .expect("list")
        .iter()
        .filter(|i| i["id"].as_u64() >= Some(1 << 24))
        .collect();
    assert_eq!(cidr.len(), 1, "{ids}");
    assert_eq!(
        cidr[0]["labels"],
        json!(["cidr:10.0.0.0/8", "reserved:world"])
    );
    let (s, one) = h.get(&format!("/v1/identities/{}", 1u32 << 24)).await;
    assert_eq!((s, &one["labels"]), (StatusCode::OK, &cidr[0]["labels"]));

    // The endpoint's policy map, with labels and the rule behind each entry.
    let (s, bpf) = h.get("/v1/bpf/policy/c1").await;
    assert_eq!(s, StatusCode::OK, "{bpf}");
    assert_eq!(bpf["ingressEnforced"], true);
    assert_eq!(bpf["egressEnforced"], true);
    let entries = bpf["entries"].as_array().expect("entries");
    let cidr_entry = entries
        .iter()
        .find(|e| e["identity"] == 1u32 << 24)
        .expect("egress CIDR entry");
    assert_eq!(cidr_entry["egress"], true);
    assert_eq!(
        cidr_entry["labels"],
        json!(["cidr:10.0.0.0/8", "reserved:world"])
    );
    assert_eq!(cidr_entry["ruleRef"]["section"], "egress");
    let host = entries
        .iter()
        .find(|e| e["identity"] == 1)
        .expect("allow-localhost entry");
    assert_eq!(host["labels"], json!(["reserved:host"]));
    assert_error(
        &h.get("/v1/bpf/policy/nope").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );

    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("p.yaml", SERVER_POLICY, true)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["policies"][0]["action"], "deleted");
    assert_eq!(h.get("/v1/policies").await.1, json!([]));
    let (_, bpf) = h.get("/v1/bpf/policy/c1").await;
    assert_eq!(
        (&bpf["ingressEnforced"], &bpf["entries"]),
        (&json!(false), &json!([]))
    );
}

#[tokio::test]
async fn validate_answers_every_problem_and_applies_nothing() {
    let h = harness();
    let bad = SERVER_POLICY
        .replace("\"8080\"", "\"80800\"")
        .replace("app: web", "app: [web]");
    let (s, v) = h
        .call(
            Method::POST,
            "/v1/policies/validate",
            Some(apply_body("p.yaml", &format!("{bad}---\n{WEB}"), false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().expect("errors");
    assert!(!errors.is_empty(), "{v}");
    assert!(
        errors
            .iter()
            .all(|e| e["source"] == "p.yaml" && e["index"] == 1),
        "{v}"
    );
    assert_eq!(v["otherObjects"], 2, "the Service and its slice check out");
    let (_, v) = h
        .call(
            Method::POST,
            "/v1/policies/validate",
            Some(apply_body("p.yaml", SERVER_POLICY, false)),
        )
        .await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["policies"][0]["name"], "web-ingress");
    assert_eq!(h.get("/v1/policies").await.1, json!([]), "nothing applied");
}

#[tokio::test]
async fn trace_answers_the_verdict_and_the_deciding_rule() {
    let h = harness();
    h.call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    h.call(
        Method::POST,
        "/v1/manifests",
        Some(apply_body("p.yaml", SERVER_POLICY, false)),
    )
    .await;
    let (s, t) = h
        .get("/v1/policy/trace?src=k8s:app%3Dclient,k8s:io.kubernetes.pod.namespace%3Ddefault&dst=default/web-c1&dport=8080&proto=tcp")
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["allowed"], true, "{t}");
    assert_eq!(t["src"]["kind"], "hypothetical");
    assert_eq!(t["deciding"], "ingress");
    assert_eq!(t["ingress"]["reason"], "allowed-by");
    assert_eq!(t["ingress"]["rules"][0]["section"], "ingress");
    assert_eq!(t["ingress"]["rules"][0]["policy"]["name"], "web-ingress");

    let (_, t) = h
        .get("/v1/policy/trace?src=default/web-c1&dst=192.0.2.9&dport=443")
        .await;
    assert_eq!(t["allowed"], false, "{t}");
    assert_eq!(t["dropReason"], 133);
    assert_eq!(t["deciding"], "egress");
    assert_eq!(t["dst"]["identity"], 2, "world");

    assert_error(
        &h.get("/v1/policy/trace?src=default/web-c1").await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    assert_error(
        &h.get("/v1/policy/trace?src=a/b&dst=default/web-c1&dport=80&proto=xyz")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    assert_error(
        &h.get("/v1/policy/trace?src=a/b&dst=default/web-c1&dport=80")
            .await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

/// Whether the BPF policy of `endpoint` (as the fake datapath holds it) admits ingress from
/// `identity` on TCP `port`, judged as the BPF program judges it.
async fn bpf_allows_ingress(h: &Harness, endpoint: &Value, identity: u64, port: u16) -> bool {
    let (s, view) = h.get(&format!("/v1/bpf/policy/{endpoint}")).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let view: ciliate_model::policy_api::BpfPolicyView =
        serde_json::from_value(view).expect("a BPF policy view");
    let policy = ciliate_model::bpf_policy::EndpointPolicy {
        ingress_enforced: view.ingress_enforced,
        egress_enforced: view.egress_enforced,
        entries: view.entries.into_iter().map(|e| e.entry).collect(),
    };
    let identity = u32::try_from(identity).expect("an identity");
    ciliate_policy::map::datapath_verdict(&policy, false, identity, 6, port).is_none()
}

const FROM_TEAM_A: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-a, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
";

#[tokio::test]
async fn namespace_objects_label_their_pods_for_policy() {
    let h = harness();
    let (s, web) = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{web}");
    let mut client = create_body("c2", 6);
    client["pod"] = json!({"namespace": "beta", "name": "client"});
    client["labels"] = json!(["k8s:app=client"]);
    let (s, client) = h.call(Method::POST, "/v1/endpoints", Some(client)).await;
    assert_eq!(s, StatusCode::CREATED, "{client}");
    let client_id = client["endpoint"]["identity"].as_u64().expect("identity");
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("p.yaml", FROM_TEAM_A, false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let trace = "/v1/policy/trace?src=beta/client&dst=default/web-c1&dport=80";
    let (_, t) = h.get(trace).await;
    assert_eq!(
        t["allowed"], false,
        "no Namespace object: beta has no labels: {t}"
    );
    assert!(!bpf_allows_ingress(&h, &web["endpoint"]["id"], client_id, 80).await);

    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: beta, labels: {team: a}}\n";
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("ns.yaml", ns, false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["kind"], "Namespace", "{r}");
    assert_eq!(r["results"][0]["action"], "created", "{r}");
    let (_, t) = h.get(trace).await;
    assert_eq!(t["allowed"], true, "{t}");
    // In force in the endpoint's maps before the answer, under the same identity number.
    assert!(bpf_allows_ingress(&h, &web["endpoint"]["id"], client_id, 80).await);
    let (_, ep) = h
        .get(&format!("/v1/endpoints/{}", client["endpoint"]["id"]))
        .await;
    assert_eq!(ep["identity"], client_id, "{ep}");

    // Relabelling the namespace takes its pods out again; deleting it too.
    let relabelled = ns.replace("team: a", "team: b");
    h.call(
        Method::POST,
        "/v1/manifests",
        Some(apply_body("ns.yaml", &relabelled, false)),
    )
    .await;
    assert!(!bpf_allows_ingress(&h, &web["endpoint"]["id"], client_id, 80).await);
    h.call(
        Method::POST,
        "/v1/manifests",
        Some(apply_body("ns.yaml", ns, false)),
    )
    .await;
    assert!(bpf_allows_ingress(&h, &web["endpoint"]["id"], client_id, 80).await);
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("ns.yaml", ns, true)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(!bpf_allows_ingress(&h, &web["endpoint"]["id"], client_id, 80).await);

    // A bad Namespace is refused with its field.
    let (s, r) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body(
                "ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad}\n",
                false,
            )),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("ns.yaml: document 1 (Namespace Bad): metadata.name")),
        "{r}"
    );
}

#[tokio::test]
async fn the_policy_revision_counts_changes_and_says_when_they_are_in_force() {
    let h = harness();
    let (s, r0) = h.get("/v1/policy/revision").await;
    assert_eq!(s, StatusCode::OK, "{r0}");
    let rev = |v: &Value| v["revision"].as_u64().expect("revision");
    assert_eq!(
        r0["inForce"], r0["revision"],
        "the harness reconciled: {r0}"
    );
    h.call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;

    let (s, applied) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("p.yaml", SERVER_POLICY, false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{applied}");
    let r1 = applied["policyRevision"]
        .as_u64()
        .expect("a policy batch has a revision");
    assert!(r1 > rev(&r0), "{applied} after {r0}");
    let (_, now) = h.get("/v1/policy/revision").await;
    assert_eq!(rev(&now), r1);
    assert!(
        now["inForce"].as_u64() >= Some(r1),
        "in force before the answer: {now}"
    );

    // Unchanged: the same revision; Services alone: no revision in the answer.
    let (_, again) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("p.yaml", SERVER_POLICY, false)),
        )
        .await;
    assert_eq!(again["policyRevision"], r1, "{again}");
    let (_, svc) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("web.yaml", WEB, false)),
        )
        .await;
    assert!(svc.get("policyRevision").is_none(), "{svc}");

    // A failing datapath: the revision moves on, the one in force does not.
    let (_, deleted) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("p.yaml", SERVER_POLICY, true)),
        )
        .await;
    let r2 = deleted["policyRevision"].as_u64().expect("revision");
    assert!(r2 > r1, "{deleted}");
    h.dp.fail_next_policy("injected");
    let (s, failed) = h
        .call(
            Method::POST,
            "/v1/manifests",
            Some(apply_body("p.yaml", SERVER_POLICY, false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{failed}");
    let r3 = failed["policyRevision"].as_u64().expect("revision");
    let (_, now) = h.get("/v1/policy/revision").await;
    assert_eq!(rev(&now), r3);
    assert_eq!(now["inForce"], r2, "{now}");
}

/// #14: identities of other nodes' endpoints (the cluster view) are listed and got like the
/// node's own, with their namespace's labels.
#[tokio::test]
async fn identities_of_the_cluster_are_listed_and_got() {
    let h = harness();
    let labels =
        ciliate_model::Labels::parse_list("app=remote,io.kubernetes.pod.namespace=beta", "k8s")
            .expect("labels");
    h.policies
        .set_cluster(ciliate_agent::policy::ClusterInputs {
            identities: [(400, labels)].into_iter().collect(),
            ..Default::default()
        });
    let (s, i) = h.get("/v1/identities/400").await;
    assert_eq!(s, StatusCode::OK, "{i}");
    assert_eq!(
        i["labels"],
        json!(["k8s:app=remote", "k8s:io.kubernetes.pod.namespace=beta"])
    );
    assert_eq!(i["references"], 0);
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: beta, labels: {team: b}}\n";
    h.call(
        Method::POST,
        "/v1/manifests",
        Some(apply_body("ns.yaml", ns, false)),
    )
    .await;
    let (_, list) = h.get("/v1/identities").await;
    let remote = list
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["id"] == 400)
        .unwrap_or_else(|| panic!("the cluster's identity is listed: {list}"));
    assert!(
        remote["labels"]
            .as_array()
            .expect("labels")
            .contains(&json!("k8s:io.cilium.k8s.namespace.labels.team=b")),
        "{remote}"
    );
    assert_error(
        &h.get("/v1/identities/401").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

#[tokio::test]
async fn bpf_endpoints_ipcache_and_nodes() {
    let h = harness();
    let (s, created) = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");

    let (s, eps) = h.get("/v1/bpf/endpoints").await;
    assert_eq!(s, StatusCode::OK, "{eps}");
    let e = &eps[0];
    assert_eq!(
        (&e["id"], &e["ipv4"], &e["identity"], &e["ifindex"]),
        (&json!(1), &json!("10.200.0.2"), &json!(256), &json!(5)),
        "{eps}"
    );
    assert_eq!(eps.as_array().map(Vec::len), Some(1));

    let (s, ipc) = h.get("/v1/bpf/ipcache").await;
    assert_eq!(s, StatusCode::OK, "{ipc}");
    assert_eq!(ipc, serde_json::to_value(h.dp.ipcache().unwrap()).unwrap());

    // Outside a cluster: this node alone, with its pod CIDR.
    let (s, nodes) = h.get("/v1/nodes").await;
    assert_eq!(s, StatusCode::OK, "{nodes}");
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    assert_eq!(nodes[0]["local"], true);
    assert_eq!(nodes[0]["podCidr"], "10.200.0.0/24");
    assert!(nodes[0].get("underlayIp").is_none(), "{nodes}");
}

#[tokio::test]
async fn fqdn_cache_list_and_clean() {
    let h = harness();
    let (s, list) = h.get("/v1/fqdn/cache").await;
    assert_eq!((s, list), (StatusCode::OK, json!([])));
    for (i, name) in ["a.s3.example.com.", "api.example.com."].iter().enumerate() {
        h.fqdn
            .learned(&ciliate_model::l7::FqdnLearned {
                id: i as u64,
                endpoint: 7,
                endpoint_ip: Ipv4Addr::new(10, 200, 0, 7),
                names: vec![ciliate_model::l7::FqdnAnswer {
                    name: (*name).into(),
                    ips: vec![Ipv4Addr::new(192, 0, 2, i as u8 + 1)],
                    ttl: 30,
                }],
            })
            .expect("learned");
    }
    let (s, list) = h.get("/v1/fqdn/cache").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert_eq!(list[0]["name"], "a.s3.example.com.");
    assert_eq!(list[0]["ips"], json!(["192.0.2.1"]));
    assert_eq!(list[0]["endpoints"], json!([7]));
    assert_eq!(list[0]["ttl"], 30);
    // --tofqdns-min-ttl (3600 by default) applies.
    assert!(list[0]["ttlLeft"].as_u64().is_some_and(|t| t > 3500));
    let (_, one) = h.get("/v1/fqdn/cache?matchpattern=*.s3.example.com").await;
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_error(
        &h.get("/v1/fqdn/cache?matchpattern=**.example.com").await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    let (s, cleaned) = h
        .call(
            Method::DELETE,
            "/v1/fqdn/cache?matchpattern=*.s3.example.com",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cleaned, json!({"names": 1, "entries": 1}));
    let (_, cleaned) = h.call(Method::DELETE, "/v1/fqdn/cache", None).await;
    assert_eq!(cleaned, json!({"names": 1, "entries": 1}));
    assert_eq!(h.get("/v1/fqdn/cache").await.1, json!([]));
}

/// A recorded L3/L4 request flow between two pods (or identities).
fn recorded(
    seq: u64,
    src: (&str, u32, &str),
    dst: (&str, u32, &str),
    dport: u32,
    verdict: ciliate_observer::proto::flow::Verdict,
) -> ciliate_observer::ring::Numbered {
    use ciliate_observer::proto::flow::{layer4, Endpoint, Flow, FlowType, Layer4, Tcp};
    let ep = |(pod, identity, app): (&str, u32, &str)| Endpoint {
        identity,
        namespace: if pod.is_empty() {
            String::new()
        } else {
            "default".into()
        },
        pod_name: pod.into(),
        labels: vec![
            format!("k8s:app={app}"),
            "k8s:io.kubernetes.pod.namespace=default".into(),
        ],
        ..Endpoint::default()
    };
    let flow = Flow {
        time: Some(pbjson_types::Timestamp {
            seconds: 1_796_000_000 + i64::try_from(seq).unwrap_or(0),
            nanos: 0,
        }),
        verdict: verdict as i32,
        drop_reason: if verdict == ciliate_observer::proto::flow::Verdict::Dropped {
            133
        } else {
            0
        },
        r#type: FlowType::L3L4 as i32,
        source: Some(ep(src)),
        destination: Some(ep(dst)),
        is_reply: Some(pbjson_types::BoolValue { value: false }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40000,
                destination_port: dport,
                flags: None,
            })),
        }),
        ..Flow::default()
    };
    ciliate_observer::ring::Numbered {
        seq,
        entry: Arc::new(ciliate_observer::ring::Entry::Flow(Box::new(flow))),
    }
}

const DENY_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-client}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#;

#[tokio::test]
async fn whatif_replays_recorded_flows_and_names_the_rule_that_would_change_them() {
    use ciliate_observer::proto::flow::Verdict;
    let h = harness();
    let (_, web) = h
        .call(Method::POST, "/v1/endpoints", Some(create_body("c1", 5)))
        .await;
    let mut client = create_body("c2", 6);
    client["pod"]["name"] = json!("client");
    client["labels"] = json!(["k8s:app=client"]);
    let (_, client) = h.call(Method::POST, "/v1/endpoints", Some(client)).await;
    let web_id = u32::try_from(web["endpoint"]["identity"].as_u64().expect("id")).expect("u32");
    let client_id =
        u32::try_from(client["endpoint"]["identity"].as_u64().expect("id")).expect("u32");
    // 30 requests client -> web:8080 (no policy: forwarded), and 5 from a pod whose identity
    // is gone (app=client too, so the deny applies to it as well).
    let mut flows: Vec<_> = (1..=30)
        .map(|i| {
            recorded(
                i,
                ("client", client_id, "client"),
                ("web-c1", web_id, "web"),
                8080,
                Verdict::Forwarded,
            )
        })
        .collect();
    flows.extend((31..=35).map(|i| {
        recorded(
            i,
            ("old-client", 4000, "client"),
            ("web-c1", web_id, "web"),
            8080,
            Verdict::Forwarded,
        )
    }));
    h.history.offer(&flows);

    let whatif = |yaml: &str| json!({"documents": ciliate_model::manifest::split_documents("deny.yaml", yaml).expect("YAML")});
    let (s, r) = h
        .call(Method::POST, "/v1/policy/whatif", Some(whatif(DENY_CLIENT)))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["added"],
        json!(["CiliumNetworkPolicy default/no-client"]),
        "{r}"
    );
    assert_eq!(r["flowsRead"], 35, "{r}");
    assert_eq!(r["flowsReplayed"], 35, "{r}");
    assert_eq!(r["identitiesFromFlows"], 1, "{r}");
    let changes = r["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{r}");
    assert_eq!(changes[0]["change"], "allowed-to-denied");
    assert_eq!(changes[0]["source"], "default/client");
    assert_eq!(changes[0]["destination"], "default/web-c1");
    assert_eq!(changes[0]["port"], 8080);
    assert_eq!(changes[0]["protocol"], "TCP");
    assert_eq!(changes[0]["flows"], 30);
    let rule = changes[0]["proposedRule"].as_str().expect("rule");
    assert!(
        rule.contains("no-client") && rule.contains("denied by"),
        "{rule}"
    );
    assert_eq!(changes[1]["source"], "default/old-client");
    assert_eq!(changes[1]["flows"], 5);
    // Nothing was applied.
    let (_, list) = h.get("/v1/policies").await;
    assert!(!list.to_string().contains("no-client"), "{list}");

    // A proposal that allows what is allowed already changes nothing.
    let (_, r) = h
        .call(
            Method::POST,
            "/v1/policy/whatif",
            Some(whatif(SERVER_POLICY)),
        )
        .await;
    assert_eq!(r["changes"], json!([]), "{r}");

    // A bad manifest: its file and field, nothing replayed.
    let bad = DENY_CLIENT.replace("ingressDeny:", "ingressDeny: 7\n  x:");
    let (s, r) = h
        .call(Method::POST, "/v1/policy/whatif", Some(whatif(&bad)))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    let msg = r["message"].as_str().expect("message");
    assert!(
        msg.contains("deny.yaml") && msg.contains("ingressDeny"),
        "{msg}"
    );
    assert!(msg.contains("nothing was replayed"), "{msg}");
    h.history.close();
}
