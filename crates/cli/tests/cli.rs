//! The real `ciliate` binary against a fake agent: axum on a temporary unix socket serving
//! canned JSON written out by hand, so these tests also pin the wire format.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
        "ipam": {"cidr": "10.0.0.0/24", "allocated": 2, "capacity": 253}
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

/// A fake agent on its own thread and runtime (the tests block on child processes).
struct Agent {
    _dir: TempDir,
    socket: PathBuf,
}

impl Agent {
    fn start(health: &'static str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let app = Router::new()
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
                    let lines = format!("{}\n{}\n", event(133), event(181));
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
        Agent { _dir: dir, socket }
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
