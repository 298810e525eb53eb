//! The real `ciliate` binary against a fake agent: axum on a temporary unix socket serving
//! canned JSON written out by hand, so these tests also pin the wire format.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Path as UrlPath;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tempfile::TempDir;

fn status(health: &str) -> Value {
    json!({
        "node": "node-1", "version": "9.9.9", "uptimeSeconds": 90061, "health": health,
        "problems": if health == "ok" { json!([]) } else { json!(["ct map 95% full"]) },
        "datapath": {
            "loaded": true, "kind": "fake", "pinDir": "/sys/fs/bpf/ciliate",
            "programs": ["from_container"],
            "maps": [{"name": "ciliate_ct", "entries": 10, "maxEntries": 100}]
        },
        "endpoints": 1, "identities": 1,
        "ipam": {"cidr": "10.0.0.0/24", "allocated": 2, "capacity": 253},
        "services": 2, "backends": 6, "policies": 3
    })
}

fn endpoint() -> Value {
    json!({
        "id": 1234, "containerId": "9f1c2d3e", "ifname": "eth0", "netns": "/var/run/netns/cni-1",
        "pod": {"namespace": "default", "name": "web"},
        "labels": ["k8s:app=web"], "identity": 256, "ipv4": "10.0.0.5",
        "mac": "0a:58:0a:00:00:05", "hostIfname": "lxc9f1c", "hostIfindex": 17,
        "hostMac": "0a:58:0a:00:01:05", "state": "ready", "createdUnix": 1700000000
    })
}

fn identity() -> Value {
    json!({"id": 256, "labels": ["k8s:app=web"], "reserved": false, "references": 1})
}

fn event(code: u8) -> Value {
    json!({
        "kind": "drop", "time": "2024-05-01T10:00:00Z", "code": code, "reason": "Policy denied",
        "endpoint": 1234, "ifindex": 17, "srcIdentity": 2, "dstIdentity": 256, "ctState": "new",
        "len": 60, "ethertype": 2048, "src": "1.2.3.4", "dst": "10.0.0.5",
        "l4": {"protocol": "tcp", "sport": 5555, "dport": 80, "flags": ["SYN"]}
    })
}

fn not_found(what: String) -> Response {
    let body = json!({"kind": "not-found", "message": format!("no {what}")});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

fn service_view() -> Value {
    json!({
        "namespace": "default", "name": "web", "type": "ClusterIP", "clusterIp": "10.96.0.10",
        "source": "api", "affinityTimeout": 10800,
        "frontends": [{
            "addr": "10.96.0.10", "port": 80, "proto": "TCP", "kind": "ClusterIp", "portName": "http",
            "revNatIndex": 1,
            "backends": [
                {"id": 1, "addr": "10.200.0.5", "port": 8080, "state": "active"},
                {"id": 2, "addr": "10.200.0.6", "port": 8080, "state": "terminating"}
            ]
        }]
    })
}

fn lb_state() -> Value {
    json!({
        "frontends": [{
            "addr": "10.96.0.10", "port": 80, "proto": "TCP", "kind": "ClusterIp", "revNatIndex": 1,
            "backends": [1], "affinityTimeout": 10800,
            // As the datapath reads it back: the maps hold no names.
            "service": {"namespace": "", "name": "", "portName": ""}
        }],
        "backends": [
            {"id": 1, "addr": "10.200.0.5", "port": 8080, "proto": "TCP", "state": "active"},
            {"id": 2, "addr": "10.200.0.6", "port": 8080, "proto": "TCP", "state": "terminating"}
        ]
    })
}

fn config(metrics: Option<std::net::SocketAddr>) -> Value {
    json!({
        "nodeName": "node-1", "podCidr": "10.0.0.0/24", "mtu": 1500, "cluster": null,
        "observer": {"hubbleSocket": "/run/h.sock", "hubbleMetricsAddress": metrics}
    })
}

/// What the fake agent answers to `POST /v1/manifests`: documents of kind Deployment are
/// invalid; a delete does not find objects named `gone`.
fn apply_answer(req: &Value) -> Response {
    let docs = req["documents"].as_array().cloned().unwrap_or_default();
    let bad: Vec<String> = docs
        .iter()
        .filter(|d| d["object"]["kind"] == "Deployment")
        .map(|d| {
            format!(
                "  {}: document {} (Deployment default/x): kind: unsupported kind \"Deployment\"",
                d["source"].as_str().unwrap_or_default(),
                d["index"]
            )
        })
        .collect();
    if !bad.is_empty() {
        let message = format!(
            "{} problems in the manifests; nothing was applied:\n{}",
            bad.len(),
            bad.join("\n")
        );
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"kind": "invalid", "message": message})),
        )
            .into_response();
    }
    let delete = req["delete"] == true;
    let results: Vec<Value> = docs
        .iter()
        .map(|d| {
            let name = d["object"]["metadata"]["name"].clone();
            let action = match (delete, name == "gone") {
                (true, true) => "not-found",
                (true, false) => "deleted",
                (false, _) => "created",
            };
            json!({
                "kind": d["object"]["kind"], "namespace": "default", "name": name,
                "action": action, "source": d["source"], "index": d["index"]
            })
        })
        .collect();
    Json(json!({"results": results, "warnings": if delete { json!([]) } else { json!(["datapath busy; retrying"]) }})).into_response()
}

/// A `POST /v1/manifests` body as one request value, in either form: JSON, or the streamed
/// lines `ciliate apply` sends (a header line, then one document per line).
fn manifest_request(headers: &HeaderMap, body: &[u8]) -> Value {
    if headers[header::CONTENT_TYPE] != "application/x-ndjson" {
        return serde_json::from_slice(body).unwrap();
    }
    let mut lines = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .map(|l| serde_json::from_slice::<Value>(l).unwrap());
    let header = lines.next().unwrap();
    json!({"documents": lines.collect::<Vec<_>>(), "delete": header["delete"]})
}

/// A fake agent on its own thread and runtime (the tests block on child processes).
struct Agent {
    _dir: TempDir,
    socket: PathBuf,
    /// The bodies of `POST /v1/manifests` received.
    applied: Arc<Mutex<Vec<Value>>>,
}

impl Agent {
    fn start(health: &'static str) -> Agent {
        Self::start_with(health, None)
    }

    /// An agent whose configuration names `metrics` as its metrics address.
    fn start_with(health: &'static str, metrics: Option<std::net::SocketAddr>) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&applied);
        let app = Router::new()
            .route(
                "/v1/manifests",
                post(move |headers: HeaderMap, body: Bytes| async move {
                    let req = manifest_request(&headers, &body);
                    let answer = apply_answer(&req);
                    seen.lock().unwrap().push(req);
                    answer
                }),
            )
            .route("/v1/services", get(|| async { Json(json!([service_view()])) }))
            .route(
                "/v1/services/{namespace}/{name}",
                get(|UrlPath((ns, name)): UrlPath<(String, String)>| async move {
                    if ns == "default" && name == "web" {
                        Json(service_view()).into_response()
                    } else {
                        not_found(format!("Service {ns}/{name}"))
                    }
                }),
            )
            .route("/v1/bpf/lb", get(|| async { Json(lb_state()) }))
            .route("/v1/config", get(move || async move { Json(config(metrics)) }))
            .route(
                "/v1/bpf/ipcache",
                get(|| async {
                    Json(json!([
                        {"prefix": "10.0.0.5/32", "identity": 256},
                        {"prefix": "10.0.1.7/32", "identity": 256, "tunnelEndpoint": "172.31.0.11"}
                    ]))
                }),
            )
            .route(
                "/v1/bpf/endpoints",
                get(|| async {
                    Json(json!([{
                        "id": 1234, "ipv4": "10.0.0.5", "identity": 256, "ifname": "lxc9f1c",
                        "ifindex": 17, "mac": "0a:58:0a:00:00:05", "hostMac": "0a:58:0a:00:01:05"
                    }]))
                }),
            )
            .route(
                "/v1/nodes",
                get(|| async {
                    Json(json!([
                        {"name": "node-1", "underlayIp": "172.31.0.10", "podCidr": "10.0.0.0/24", "health": "ok", "local": true},
                        {"name": "node-2", "underlayIp": "172.31.0.11", "podCidr": "10.0.1.0/24", "health": "ok", "local": false}
                    ]))
                }),
            )
            .route("/v1/status", get(move || async move { Json(status(health)) }))
            .route("/v1/endpoints", get(|| async { Json(json!([endpoint()])) }))
            .route(
                "/v1/endpoints/{reference}",
                get(|UrlPath(r): UrlPath<String>| async move {
                    if r == "default/web" || r == "1234" {
                        Json(endpoint()).into_response()
                    } else {
                        not_found(format!("endpoint {r:?}"))
                    }
                }),
            )
            .route(
                "/v1/identities",
                get(|| async {
                    Json(json!([identity(), {"id": 2, "labels": ["reserved:world"], "reserved": true}]))
                }),
            )
            .route(
                "/v1/identities/{id}",
                get(|UrlPath(id): UrlPath<u32>| async move {
                    if id == 256 {
                        Json(identity()).into_response()
                    } else {
                        not_found(format!("identity {id}"))
                    }
                }),
            )
            .route(
                "/v1/bpf/ct",
                get(|| async {
                    Json(json!([{
                        "proto": "tcp", "src": "10.0.0.5", "sport": 40000, "dst": "10.0.0.9",
                        "dport": 80, "direction": "egress", "expiresIn": 60, "txPackets": 10,
                        "txBytes": 1200, "rxPackets": 8, "rxBytes": 9000, "flags": ["SYN", "ACK"],
                        "srcIdentity": 256
                    }]))
                }),
            )
            .route(
                "/v1/monitor",
                get(|| async {
                    let mut other = event(133);
                    other["endpoint"] = json!(7);
                    let lines = format!("{}\n{}\n{}\n", event(133), event(181), other);
                    let first = futures::stream::iter([Ok::<_, std::io::Error>(lines)]);
                    // Then stay open, as a real agent does, until the client goes away.
                    Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
                }),
            );
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = socket.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&path).unwrap();
                ready_tx.send(()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Agent {
            _dir: dir,
            socket,
            applied,
        }
    }
}

fn ciliate(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("CILIATE_SOCKET")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn healthy_status_exits_0() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "Health:",
        "ok",
        "node-1",
        "9.9.9",
        "1d1h",
        "loaded (fake)",
        "2/253 allocated from 10.0.0.0/24",
        "Services:     2 (6 backends)",
        "Policies:     3",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn degraded_status_exits_1_with_its_problems() {
    let agent = Agent::start("degraded");
    let out = ciliate(&agent.socket, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("ct map 95% full"), "{}", stdout(&out));

    let out = ciliate(&agent.socket, &["status", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v, status("degraded"));
}

#[test]
fn endpoint_list_and_get() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["endpoint", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ENDPOINT", "ID", "POD", "IPV4", "IDENTITY", "LABELS", "STATE"]
    );
    assert_eq!(
        rows[1],
        [
            "1234",
            "default/web",
            "10.0.0.5",
            "256",
            "k8s:app=web",
            "ready"
        ]
    );

    let out = ciliate(
        &agent.socket,
        &["endpoint", "get", "default/web", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        endpoint()
    );

    let out = ciliate(&agent.socket, &["endpoint", "get", "1234"]);
    assert!(
        stdout(&out).contains("Host interface:   lxc9f1c (ifindex 17"),
        "{}",
        stdout(&out)
    );

    let out = ciliate(&agent.socket, &["endpoint", "get", "default/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "Error: no endpoint \"default/nope\"\nHint: `ciliate endpoint list` shows the endpoints; \
         refer to one by ENDPOINT ID, container id or namespace/pod\n"
    );
}

#[test]
fn identity_list_and_get() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["identity", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["ID", "LABELS", "RESERVED", "REFS"]);
    // Sorted by id whatever order the agent sent.
    assert_eq!(rows[1], ["2", "reserved:world", "yes", "0"]);
    assert_eq!(rows[2], ["256", "k8s:app=web", "no", "1"]);

    let out = ciliate(&agent.socket, &["identity", "get", "256", "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_yaml_ng::from_str(&stdout(&out)).unwrap();
    assert_eq!(v, identity());

    let out = ciliate(&agent.socket, &["identity", "get", "7"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Hint: `ciliate identity list`"),
        "{}",
        stderr(&out)
    );

    let out = ciliate(&agent.socket, &["identity", "get", "seven"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn bpf_ct_list() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["bpf", "ct", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["PROTO", "SRC", "DST", "DIR", "EXPIRES", "TX", "RX", "FLAGS"]
    );
    assert_eq!(
        rows[1],
        [
            "tcp",
            "10.0.0.5:40000",
            "10.0.0.9:80",
            "egress",
            "1m0s",
            "10/1200",
            "8/9000",
            "SYN,ACK"
        ]
    );
}

#[test]
fn version_with_and_without_agent() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["version"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(concat!("Client:   ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("Agent:    9.9.9 (node node-1)"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let out = ciliate(&missing, &["version"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("Client:"), "{}", stdout(&out));
    let out = ciliate(&missing, &["version", "--client", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v, json!({"client": {"version": env!("CARGO_PKG_VERSION")}}));
}

#[test]
fn unreachable_agent_exits_1_with_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    for args in [&["status"][..], &["endpoint", "list"], &["monitor"]] {
        let out = ciliate(&missing, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "Error: cannot reach the agent at {}: ",
                missing.display()
            )),
            "{err}"
        );
        assert!(
            err.trim_end()
                .ends_with("(is ciliate-agent running? set --socket or CILIATE_SOCKET)"),
            "{err}"
        );
    }
    // The environment variable works as --socket does.
    let out = Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .arg("status")
        .env("CILIATE_SOCKET", &missing)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn monitor_prints_events_until_interrupted() {
    let agent = Agent::start("ok");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["monitor", "--type", "drop", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for code in [133, 181] {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), event(code));
    }
    // Ctrl-C is how a user ends it, and that is success.
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/services")
}

fn ciliate_stdin(socket: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("CILIATE_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn apply_sends_every_document_of_a_directory_in_order() {
    let agent = Agent::start("ok");
    let dir = examples();
    let out = ciliate(&agent.socket, &["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "service/api created\nendpointslice/api-m4v9c created\n\
         service/echo created\nendpointslice/echo-5f2hq created\n\
         service/cart created\nendpoints/cart created\n\
         service/web created\nendpointslice/web-7xk2p created\n"
    );
    assert_eq!(stderr(&out), "Warning: datapath busy; retrying\n");
    let sent = agent.applied.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one batch");
    let docs = sent[0]["documents"].as_array().unwrap();
    let where_: Vec<(String, u64)> = docs
        .iter()
        .map(|d| {
            let source = d["source"].as_str().unwrap();
            (
                source.rsplit('/').next().unwrap().to_owned(),
                d["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(where_[0], ("api.yaml".to_owned(), 1));
    assert_eq!(where_[7], ("web.yaml".to_owned(), 2));
    assert_eq!(docs[6]["object"]["spec"]["clusterIP"], "10.96.0.50");
    assert_eq!(sent[0]["delete"], false);

    // -o json prints the agent's answer.
    let out = ciliate(
        &agent.socket,
        &[
            "apply",
            "-f",
            dir.join("web.yaml").to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["results"][1]["kind"], "EndpointSlice");
}

#[test]
fn apply_reads_standard_input() {
    let agent = Agent::start("ok");
    let out = ciliate_stdin(
        &agent.socket,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "service/web created\n");
    assert_eq!(
        agent.applied.lock().unwrap()[0]["documents"][0]["source"],
        "<stdin>"
    );
}

#[test]
fn invalid_manifests_exit_1_with_every_problem() {
    let agent = Agent::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Deployment\n---\nkind: Service\n---\nkind: Deployment\n",
    )
    .unwrap();
    let out = ciliate(&agent.socket, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        "Error: 2 problems in the manifests; nothing was applied:"
    );
    assert!(
        lines[1].contains("bad.yaml: document 1 (Deployment default/x)"),
        "{err}"
    );
    assert!(
        lines[2].contains("bad.yaml: document 3 (Deployment default/x)"),
        "{err}"
    );

    // Syntax errors never reach the agent, and every broken file is named.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "a: [\n").unwrap();
    let before = agent.applied.lock().unwrap().len();
    let out = ciliate(
        &agent.socket,
        &[
            "apply",
            "-f",
            broken.to_str().unwrap(),
            "-f",
            "/nonexistent/x.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("Error: 2 problems in the manifests; nothing was sent to the agent:\n"),
        "{err}"
    );
    assert!(
        err.contains("broken.yaml: document 1: YAML syntax error"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/x.yaml: cannot read"), "{err}");
    assert_eq!(agent.applied.lock().unwrap().len(), before);

    // A syntax error after the first documents were streamed: the body is broken off, the
    // agent applies nothing, and the error names the place.
    let late = dir.path().join("late.yaml");
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n---\n"
        ));
    }
    text.push_str("a: [\n");
    std::fs::write(&late, text).unwrap();
    let out = ciliate(&agent.socket, &["apply", "-f", late.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("Error: 1 problem in the manifests; nothing was applied:\n"),
        "{err}"
    );
    assert!(
        err.contains("late.yaml: document 3001: YAML syntax error"),
        "{err}"
    );
    assert_eq!(agent.applied.lock().unwrap().len(), before);

    let out = ciliate(&agent.socket, &["apply"]);
    assert_eq!(out.status.code(), Some(2), "-f is required");
}

#[test]
fn delete_reports_what_was_not_found() {
    let agent = Agent::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("svc.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: gone}\n",
    )
    .unwrap();
    let out = ciliate(&agent.socket, &["delete", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "service/web deleted\n");
    assert!(
        stderr(&out).starts_with("Error: service/gone not found in namespace default ("),
        "{}",
        stderr(&out)
    );
    assert_eq!(agent.applied.lock().unwrap()[0]["delete"], true);
    let out = ciliate(
        &agent.socket,
        &["delete", "-f", f.to_str().unwrap(), "--ignore-not-found"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty());
}

#[test]
fn service_list_and_get() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["service", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(rows[0], ["ID", "SERVICE", "TYPE", "FRONTEND", "BACKENDS"]);
    assert_eq!(
        rows[1],
        [
            "1",
            "default/web",
            "ClusterIP",
            "10.96.0.10:80/TCP",
            "10.200.0.5:8080",
            "(active)"
        ]
    );
    assert_eq!(rows[2], ["10.200.0.6:8080", "(terminating)"]);

    let out = ciliate(&agent.socket, &["service", "list", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        json!([service_view()])
    );

    // A bare name is in the default namespace.
    let out = ciliate(&agent.socket, &["service", "get", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Affinity:     ClientIP, 10800s\n"), "{text}");
    assert!(
        text.contains("  10.200.0.6:8080 terminating (backend 2)\n"),
        "{text}"
    );
    let out = ciliate(
        &agent.socket,
        &["service", "get", "default/web", "-o", "yaml"],
    );
    assert_eq!(
        serde_yaml_ng::from_str::<Value>(&stdout(&out)).unwrap(),
        service_view()
    );

    let out = ciliate(&agent.socket, &["service", "get", "shop/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error: no Service shop/nope\nHint: `ciliate service list` shows the Services; name one as namespace/name\n"
    );
}

#[test]
fn bpf_lb_list() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["bpf", "lb", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["FRONTEND", "REV-NAT", "SERVICE", "FLAGS", "SLOTS"]
    );
    assert_eq!(
        rows[1],
        [
            "10.96.0.10:80/TCP",
            "1",
            "default/web:http",
            "affinity=10800s",
            "1",
            "=>",
            "10.200.0.5:8080",
            "(id",
            "1,",
            "active)"
        ]
    );
    assert_eq!(
        rows[2][0], "<none>",
        "the terminating backend in no slot: {text}"
    );
    let out = ciliate(&agent.socket, &["bpf", "lb", "list", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        lb_state()
    );
}

/// Runs `ciliate` as user nobody (the tests run as root; skipped otherwise).
fn ciliate_as_nobody(socket: &Path, args: &[&str]) -> Option<Output> {
    use std::os::unix::process::CommandExt;
    if std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_none_or(|l| l.split_whitespace().nth(1) != Some("0"))
    {
        eprintln!("SKIPPED: needs root to run ciliate as another user");
        return None;
    }
    Some(
        Command::new(env!("CARGO_BIN_EXE_ciliate"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env_remove("CILIATE_SOCKET")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap(),
    )
}

#[test]
fn a_root_only_socket_says_run_as_root() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start("ok");
    // The agent's own socket is root-only (0600 in a directory others may enter).
    let dir = agent.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let Some(out) = ciliate_as_nobody(&agent.socket, &["status"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "Error: the agent's socket {} is root-only: run as root",
            agent.socket.display()
        )),
        "{err}"
    );
    assert!(!err.contains("is ciliate-agent running"), "{err}");
    // As root the same socket answers.
    assert_eq!(ciliate(&agent.socket, &["status"]).status.code(), Some(0));
}

#[test]
fn lab_status_without_root_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let Some(out) = ciliate_as_nobody(&dir.path().join("x.sock"), &["lab", "status"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("must run as root"), "{err}");
    assert!(!err.contains("down"), "{err}");
}

#[test]
fn usage_errors_exit_2_also_when_found_late() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    for args in [
        &["observe", "--verdict", "BOGUS"][..],
        &["observe", "--type", "nonsense"],
        &["observe", "--since", "yesterday-ish"],
        &["lab", "up", "-o", "json"],
        &["endpoint", "list", "-o", "jsonpath={.items["],
        &["status", "--wait", "--wait-duration", "never"],
    ] {
        let out = ciliate(&socket, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let err = stderr(&ciliate(&socket, &["observe", "--verdict", "BOGUS"]));
    assert!(
        err.contains("\"--verdict\" flag: invalid --verdict value: BOGUS (expected FORWARDED"),
        "{err}"
    );
}

#[test]
fn jsonpath_output_of_listings_and_objects() {
    let agent = Agent::start("ok");
    let out = ciliate(
        &agent.socket,
        &[
            "endpoint",
            "list",
            "-o",
            "jsonpath={.items[*].id} {.items[0].ipv4}",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1234 10.0.0.5\n");
    let out = ciliate(&agent.socket, &["status", "-o", "jsonpath={.health}"]);
    assert_eq!(stdout(&out), "ok\n");
    let out = ciliate(
        &agent.socket,
        &[
            "identity",
            "list",
            "-o",
            "jsonpath={.items[?(@.reserved == true)].id}",
        ],
    );
    assert_eq!(stdout(&out), "2\n");
}

#[test]
fn status_wait_and_verbose() {
    let agent = Agent::start("ok");
    let out = ciliate(
        &agent.socket,
        &["status", "--wait", "--wait-duration", "10s"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Health:"), "{}", stdout(&out));
    // A degraded agent is waited for, then reported with its problems.
    let degraded = Agent::start("degraded");
    let out = ciliate(
        &degraded.socket,
        &["status", "--wait", "--wait-duration", "1s"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("ct map 95% full"), "{}", stdout(&out));
    // No agent at all: the last error, and how long we waited.
    let dir = tempfile::tempdir().unwrap();
    let out = ciliate(
        &dir.path().join("none.sock"),
        &["status", "--wait", "--wait-duration", "1s"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot reach the agent"), "{err}");
    assert!(err.contains("Hint: waited 1s"), "{err}");
    // --verbose adds the endpoints, Services and identities.
    let out = ciliate(&agent.socket, &["status", "--verbose"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "Health:",
        "\nEndpoints:\n",
        "default/web",
        "\nServices:\n",
        "\nIdentities:\n",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
}

#[test]
fn config_prints_the_agent_configuration() {
    let agent = Agent::start("ok");
    let out = ciliate(&agent.socket, &["config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert!(
        rows.contains(&vec!["podCidr".into(), "10.0.0.0/24".into()]),
        "{rows:?}"
    );
    assert!(
        rows.contains(&vec!["observer.hubbleSocket".into(), "/run/h.sock".into()]),
        "{rows:?}"
    );
    let out = ciliate(&agent.socket, &["config", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        config(None)
    );
}

#[test]
fn metrics_list_reads_the_metrics_listener() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let body = "# TYPE ciliate_endpoints gauge\nciliate_endpoints 3\n\
                hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"TCP\"} 5\n";
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}"
            );
        }
    });
    let agent = Agent::start_with("ok", Some(addr));
    let out = ciliate(&agent.socket, &["metrics", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["METRIC", "LABELS", "VALUE"]);
    assert_eq!(rows[1], ["ciliate_endpoints", "<none>", "3"]);
    assert_eq!(
        rows[2],
        [
            "hubble_drop_total",
            "reason=\"POLICY_DENIED\",protocol=\"TCP\"",
            "5"
        ]
    );
    let out = ciliate(
        &agent.socket,
        &["metrics", "list", "-p", "drop", "-o", "json"],
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // An agent without a metrics listener: say which flag turns it on.
    let plain = Agent::start("ok");
    let out = ciliate(&plain.socket, &["metrics", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--hubble-metrics-address"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn monitor_related_to_keeps_one_endpoint() {
    let agent = Agent::start("ok");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["monitor", "--related-to", "7", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The fake sends events of endpoint 1234 first, then one of endpoint 7.
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["endpoint"], 7, "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn completion_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    for (shell, want) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ciliate"),
        ("fish", "complete -c ciliate"),
    ] {
        let out = ciliate(&socket, &["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = stdout(&out);
        assert!(
            text.contains(want),
            "{shell}: {}",
            &text[..text.len().min(200)]
        );
        assert!(
            text.contains("restart-agent"),
            "{shell}: subcommands are completed"
        );
    }
}

/// `ciliate completion bash | head`: the script (over 64 KB, more than a pipe holds) meets a
/// closed pipe, which ends it quietly with 0 instead of a panic.
#[test]
fn completion_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .args(["completion", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn bpf_ipcache_endpoint_and_node_lists() {
    let agent = Agent::start("ok");
    let rows = |args: &[&str]| -> Vec<Vec<String>> {
        let out = ciliate(&agent.socket, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    let ipc = rows(&["bpf", "ipcache", "list"]);
    assert_eq!(ipc[0], ["PREFIX", "IDENTITY", "TUNNEL", "ENDPOINT"]);
    assert_eq!(ipc[1], ["10.0.0.5/32", "256", "(k8s:app=web)", "<local>"]);
    assert_eq!(
        ipc[2],
        ["10.0.1.7/32", "256", "(k8s:app=web)", "172.31.0.11"]
    );
    let eps = rows(&["bpf", "endpoint", "list"]);
    assert_eq!(eps[1][..4], ["1234", "10.0.0.5", "256", "17"]);
    let nodes = rows(&["node", "list"]);
    assert_eq!(
        nodes[0],
        ["NAME", "UNDERLAY", "IP", "POD", "CIDR", "HEALTH"]
    );
    assert_eq!(
        nodes[1],
        ["node-1", "*", "172.31.0.10", "10.0.0.0/24", "ok"]
    );
    assert_eq!(nodes[2], ["node-2", "172.31.0.11", "10.0.1.0/24", "ok"]);
    let out = ciliate(
        &agent.socket,
        &[
            "node",
            "list",
            "-o",
            "jsonpath={.items[?(@.local == false)].name}",
        ],
    );
    assert_eq!(stdout(&out), "node-2\n");
}
