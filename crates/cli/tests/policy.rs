//! `ciliate policy ...` and `ciliate bpf policy get` against a fake agent: axum on a temporary
//! unix socket answering canned JSON written out by hand, so these tests also pin the wire
//! format, the output and the exit codes.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tempfile::TempDir;

const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: server-ingress}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n";
const L7: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l7}\nspec:\n  endpointSelector: {}\n";
const BROKEN: &str =
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken}\nspec: {}\n";
const SERVICE: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (status, Json(json!({"kind": kind, "message": message}))).into_response()
}

fn policy_ref(d: &Value) -> Value {
    let o = &d["object"];
    let mut r = json!({"kind": o["kind"], "name": o["metadata"]["name"]});
    if o["kind"] != "CiliumClusterwideNetworkPolicy" {
        r["namespace"] = o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .into();
    }
    r
}

fn warning(d: &Value) -> Value {
    json!({"source": d["source"], "index": d["index"],
        "object": "CiliumNetworkPolicy default/l7", "path": "spec.ingress[0].toPorts[0].rules",
        "reason": "L7 rules are not enforced yet: the ports are allowed without them"})
}

/// `POST /v1/manifests`: policies named `gone` are not found on delete; `l7` has a warning.
fn apply_answer(req: &Value) -> Response {
    let docs = req["documents"].as_array().cloned().unwrap_or_default();
    let delete = req["delete"] == true;
    let mut warnings = Vec::new();
    let policies: Vec<Value> = docs
        .iter()
        .map(|d| {
            let mut r = policy_ref(d);
            let name = d["object"]["metadata"]["name"].as_str().unwrap_or_default();
            if name == "l7" {
                let w = warning(d);
                warnings.push(format!(
                    "{}: document {} ({}): {}: {}",
                    w["source"].as_str().unwrap(),
                    w["index"],
                    w["object"].as_str().unwrap(),
                    w["path"].as_str().unwrap(),
                    w["reason"].as_str().unwrap()
                ));
            }
            r["action"] = match (delete, name) {
                (true, "gone") => "not-found",
                (true, _) => "deleted",
                (false, _) => "created",
            }
            .into();
            r["source"] = d["source"].clone();
            r["index"] = d["index"].clone();
            r
        })
        .collect();
    Json(json!({"results": [], "warnings": warnings, "policies": policies, "policyRevision": 9}))
        .into_response()
}

fn validate_answer(req: &Value) -> Response {
    let docs = req["documents"].as_array().cloned().unwrap_or_default();
    let errors: Vec<Value> = docs
        .iter()
        .filter(|d| d["object"]["metadata"]["name"] == "broken")
        .map(|d| {
            json!({"source": d["source"], "index": d["index"],
                "object": "CiliumNetworkPolicy default/broken", "path": "spec",
                "reason": "a policy needs endpointSelector or nodeSelector"})
        })
        .collect();
    let warnings: Vec<Value> = docs
        .iter()
        .filter(|d| d["object"]["metadata"]["name"] == "l7")
        .map(warning)
        .collect();
    let policies: Vec<Value> = if errors.is_empty() {
        docs.iter().map(policy_ref).collect()
    } else {
        vec![]
    };
    Json(
        json!({"valid": errors.is_empty(), "policies": policies, "otherObjects": 0,
        "errors": errors, "warnings": warnings}),
    )
    .into_response()
}

fn peer(query: &str, name: &str, id: u32, ep: u16) -> Value {
    json!({"query": query, "kind": "endpoint", "identity": id,
        "labels": [format!("k8s:app={name}"), "k8s:io.kubernetes.pod.namespace=default"],
        "endpoint": ep, "pod": {"namespace": "default", "name": name}, "ip": format!("10.200.0.{ep}")})
}

fn trace_answer(q: &HashMap<String, String>) -> Response {
    let (src, dst) = (q["src"].as_str(), q["dst"].as_str());
    if src == "default/nope" {
        return error(
            StatusCode::NOT_FOUND,
            "not-found",
            "no pod default/nope on this node".into(),
        );
    }
    let port: u16 = q["dport"].parse().unwrap();
    let allowed = port == 8080;
    let ingress = if allowed {
        json!({"direction": "ingress", "endpoint": 257, "peer": 256, "allowed": true,
            "reason": "allowed-by",
            "rules": [{"policy": {"kind": "CiliumNetworkPolicy", "namespace": "default",
                "name": "server-ingress"}, "section": "ingress", "index": 0}],
            "policies": [],
            "message": "allowed by rule spec.ingress[0] of CiliumNetworkPolicy default/server-ingress"})
    } else {
        json!({"direction": "ingress", "endpoint": 257, "peer": 256, "allowed": false,
            "reason": "default-deny", "rules": [],
            "policies": [{"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "server-ingress"}],
            "dropReason": 133,
            "message": "default deny (from CiliumNetworkPolicy default/server-ingress): no rule allows it"})
    };
    let mut answer = json!({
        "src": peer(src, "client", 256, 2), "dst": peer(dst, "server", 257, 3),
        "proto": if q["proto"] == "udp" { 17 } else { 6 }, "dport": port,
        "allowed": allowed, "deciding": "ingress",
        "egress": {"direction": "egress", "endpoint": 256, "peer": 257, "allowed": true,
            "reason": "no-policy", "rules": [], "policies": [],
            "message": "no policy selects the endpoint (allow all)"},
        "ingress": ingress
    });
    if !allowed {
        answer["dropReason"] = 133.into();
    }
    Json(answer).into_response()
}

fn bpf_policy() -> Value {
    json!({"endpoint": 3, "identity": 257, "ingressEnforced": true, "egressEnforced": false,
    "pod": {"namespace": "default", "name": "server"},
    "entries": [
        {"identity": 1, "egress": false, "proto": null, "port": 0, "portPrefixLen": 0,
         "deny": false, "kind": "l3-only", "rule": 0, "labels": ["reserved:host"],
         "packets": 0, "bytes": 0},
        {"identity": 256, "egress": false, "proto": 6, "port": 8080, "portPrefixLen": 16,
         "deny": false, "kind": "l3-l4", "rule": 3,
         "labels": ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"],
         "ruleRef": {"policy": {"kind": "CiliumNetworkPolicy", "namespace": "default",
            "name": "server-ingress"}, "section": "ingress", "index": 0},
         "packets": 7, "bytes": 420}
    ]})
}

struct Agent {
    _dir: TempDir,
    socket: PathBuf,
    applied: Arc<Mutex<Vec<Value>>>,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&applied);
        let polled = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/v1/manifests",
                post(move |Json(req): Json<Value>| async move {
                    let answer = apply_answer(&req);
                    seen.lock().unwrap().push(req);
                    answer
                }),
            )
            .route(
                "/v1/policies/validate",
                post(|Json(req): Json<Value>| async move { validate_answer(&req) }),
            )
            .route(
                "/v1/policies",
                get(|| async {
                    Json(json!([
                        {"kind": "CiliumNetworkPolicy", "namespace": "default",
                         "name": "server-ingress", "source": "api", "endpoints": 1, "warnings": []},
                        {"kind": "CiliumClusterwideNetworkPolicy", "name": "deny-world",
                         "source": "/etc/ciliate/manifests/ccnp.yaml", "endpoints": 3,
                         "warnings": ["spec.egress[0].toFQDNs: not enforced yet"]}
                    ]))
                }),
            )
            .route(
                "/v1/policies/{kind}/{ns}/{name}",
                get(
                    |UrlPath((kind, ns, name)): UrlPath<(String, String, String)>| async move {
                        if kind != "CiliumNetworkPolicy" || name != "server-ingress" {
                            return error(
                                StatusCode::NOT_FOUND,
                                "not-found",
                                format!("no {kind} {ns}/{name} in force"),
                            );
                        }
                        Json(json!({"apiVersion": "cilium.io/v2", "kind": kind,
                        "metadata": {"name": name, "namespace": ns},
                        "spec": {"endpointSelector": {"matchLabels": {"app": "server"}}}}))
                        .into_response()
                    },
                ),
            )
            .route(
                "/v1/policy/revision",
                // At revision 9; each read finds one more revision in force, from 7.
                get(move || async move {
                    let in_force = 7 + polled.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"revision": 9, "inForce": in_force.min(9)}))
                }),
            )
            .route(
                "/v1/policy/trace",
                get(|Query(q): Query<HashMap<String, String>>| async move { trace_answer(&q) }),
            )
            .route(
                "/v1/bpf/policy/{reference}",
                get(|UrlPath(r): UrlPath<String>| async move {
                    if r == "default/server" {
                        Json(bpf_policy()).into_response()
                    } else {
                        error(
                            StatusCode::NOT_FOUND,
                            "not-found",
                            format!("no endpoint {r:?} on this node"),
                        )
                    }
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

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self._dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn applied(&self) -> Vec<Value> {
        self.applied.lock().unwrap().clone()
    }
}

fn ciliate(socket: &Path, args: &[&str]) -> Output {
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
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn out(o: &Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn import_applies_policies_and_shows_warnings() {
    let agent = Agent::start();
    let f = agent.file("p.yaml", &format!("{CNP}---\n{L7}"));
    let (code, stdout, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "import", "-f", f.to_str().unwrap()],
    ));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "ciliumnetworkpolicy.cilium.io/server-ingress created\nciliumnetworkpolicy.cilium.io/l7 created\nRevision: 9\n"
    );
    assert!(
        stderr.starts_with("Warning: ") && stderr.contains("document 2 (CiliumNetworkPolicy default/l7): spec.ingress[0].toPorts[0].rules: L7 rules are not enforced yet"),
        "{stderr}"
    );
    let sent = agent.applied();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["delete"], false);
    assert_eq!(sent[0]["documents"].as_array().unwrap().len(), 2);
}

#[test]
fn import_refuses_other_kinds_and_sends_nothing() {
    let agent = Agent::start();
    let f = agent.file("mixed.yaml", &format!("{CNP}---\n{SERVICE}"));
    let (code, stdout, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "import", "-f", f.to_str().unwrap()],
    ));
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("mixed.yaml: document 2 (Service default/web): kind: Service is not a network policy; `ciliate policy import` takes NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy only (use `ciliate apply -f` for other objects)"),
        "{stderr}"
    );
    assert!(agent.applied().is_empty(), "nothing sent");
}

#[test]
fn delete_by_name_and_by_file() {
    let agent = Agent::start();
    let (code, stdout, stderr) = out(&ciliate(
        &agent.socket,
        &[
            "policy",
            "delete",
            "cnp/default/server-ingress",
            "ccnp/deny-world",
        ],
    ));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "ciliumnetworkpolicy.cilium.io/server-ingress deleted\nciliumclusterwidenetworkpolicy.cilium.io/deny-world deleted\nRevision: 9\n"
    );
    let sent = agent.applied();
    assert_eq!(sent[0]["delete"], true);
    assert_eq!(
        sent[0]["documents"][1]["object"],
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "deny-world"}})
    );

    let (code, _, stderr) = out(&ciliate(&agent.socket, &["policy", "delete", "cnp/gone"]));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("ciliumnetworkpolicy.cilium.io/gone not found in namespace default"),
        "{stderr}"
    );
    let (code, _, _) = out(&ciliate(
        &agent.socket,
        &["policy", "delete", "cnp/gone", "--ignore-not-found"],
    ));
    assert_eq!(code, Some(0));

    let f = agent.file("p.yaml", CNP);
    let (code, stdout, _) = out(&ciliate(
        &agent.socket,
        &["policy", "delete", "-f", f.to_str().unwrap()],
    ));
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        "ciliumnetworkpolicy.cilium.io/server-ingress deleted\nRevision: 9\n"
    );

    let (code, _, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "delete", "service/default/web"],
    ));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("\"service\" is not a policy kind"),
        "{stderr}"
    );
}

#[test]
fn get_lists_and_shows_one() {
    let agent = Agent::start();
    let (code, stdout, stderr) = out(&ciliate(&agent.socket, &["policy", "get"]));
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "KIND",
            "NAMESPACE",
            "NAME",
            "ENDPOINTS",
            "SOURCE",
            "WARNINGS"
        ]
    );
    assert_eq!(
        rows[1],
        [
            "CiliumNetworkPolicy",
            "default",
            "server-ingress",
            "1",
            "api",
            "0"
        ]
    );
    assert_eq!(
        rows[2],
        [
            "CiliumClusterwideNetworkPolicy",
            "<none>",
            "deny-world",
            "3",
            "/etc/ciliate/manifests/ccnp.yaml",
            "1"
        ]
    );
    // The node's revision ends the list, with what is in force when that is older.
    assert_eq!(
        stdout.lines().last(),
        Some("Revision: 9 (in force on every endpoint: 7; `ciliate policy wait` waits for it)"),
        "{stdout}"
    );

    let (code, stdout, _) = out(&ciliate(
        &agent.socket,
        &["policy", "get", "cnp/default/server-ingress"],
    ));
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with("Kind:        CiliumNetworkPolicy\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Endpoints:   1\n"), "{stdout}");
    assert!(
        stdout.contains("---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"),
        "{stdout}"
    );

    let (code, stdout, _) = out(&ciliate(
        &agent.socket,
        &["policy", "get", "cnp/default/server-ingress", "-o", "json"],
    ));
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["spec"]["endpointSelector"]["matchLabels"]["app"],
        "server"
    );

    let (code, _, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "get", "cnp/default/nope"],
    ));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("Hint: `ciliate policy get` lists the policies in force"),
        "{stderr}"
    );
}

#[test]
fn validate_exits_0_when_valid_and_1_with_every_problem() {
    let agent = Agent::start();
    let good = agent.file("good.yaml", &format!("{CNP}---\n{L7}"));
    let (code, stdout, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "validate", "-f", good.to_str().unwrap()],
    ));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "valid: 2 policies\n");
    assert!(
        stderr.starts_with("Warning: ") && stderr.contains("L7 rules are not enforced yet"),
        "{stderr}"
    );

    let bad = agent.file("bad.yaml", &format!("{BROKEN}---\n{SERVICE}"));
    let (code, stdout, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "validate", "-f", bad.to_str().unwrap()],
    ));
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines[0],
        "2 problems in the manifests; the policies are not valid:"
    );
    assert!(lines[1].ends_with("bad.yaml: document 1 (CiliumNetworkPolicy default/broken): spec: a policy needs endpointSelector or nodeSelector"), "{stderr}");
    assert!(lines[2].ends_with("bad.yaml: document 2 (Service default/web): kind: Service is not a network policy; `ciliate policy validate` takes NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy only (use `ciliate apply -f` for other objects)"), "{stderr}");

    let (code, stdout, _) = out(&ciliate(
        &agent.socket,
        &[
            "policy",
            "validate",
            "-f",
            bad.to_str().unwrap(),
            "-o",
            "json",
        ],
    ));
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (v["valid"].clone(), v["errors"].as_array().unwrap().len()),
        (json!(false), 2)
    );
    assert!(agent.applied().is_empty(), "validation applies nothing");
}

#[test]
fn trace_exit_codes_are_0_allowed_1_denied_2_error() {
    let agent = Agent::start();
    let args = |port: &str| {
        vec![
            "policy",
            "trace",
            "--src",
            "default/client",
            "--dst",
            "default/server",
            "--dport",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([port.to_owned()])
        .collect::<Vec<String>>()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        out(&ciliate(&agent.socket, &a))
    };
    let (code, stdout, stderr) = run(args("8080"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("Verdict:       ALLOWED\n"), "{stdout}");
    assert!(
        stdout.contains("Flow:          TCP port 8080\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Decided by:    CiliumNetworkPolicy default/server-ingress spec.ingress[0] (ingress)\n"
        ),
        "{stdout}"
    );

    let (code, stdout, _) = run(args("8081"));
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with("Verdict:       DENIED (drop reason 133)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Decided by:    default deny of CiliumNetworkPolicy default/server-ingress (ingress)\n"
        ),
        "{stdout}"
    );

    let mut json_args = args("53/udp");
    json_args.extend(["-o".into(), "json".into()]);
    let (code, stdout, _) = run(json_args);
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            v["proto"].clone(),
            v["dport"].clone(),
            v["dropReason"].clone()
        ),
        (json!(17), json!(53), json!(133))
    );

    let (code, _, stderr) = out(&ciliate(
        &agent.socket,
        &[
            "policy",
            "trace",
            "--src",
            "default/nope",
            "--dst",
            "default/server",
            "--dport",
            "80",
        ],
    ));
    assert_eq!(code, Some(2), "could not trace");
    assert!(
        stderr.starts_with("Error: no pod default/nope on this node\nHint: "),
        "{stderr}"
    );

    let gone = agent._dir.path().join("missing.sock");
    let (code, _, stderr) = out(&ciliate(
        &gone,
        &[
            "policy", "trace", "--src", "a", "--dst", "b", "--dport", "80",
        ],
    ));
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, _) = out(&ciliate(
        &agent.socket,
        &[
            "policy", "trace", "--src", "a", "--dst", "b", "--dport", "x",
        ],
    ));
    assert_eq!(code, Some(2), "usage error");
}

#[test]
fn bpf_policy_get_shows_the_map() {
    let agent = Agent::start();
    let (code, stdout, stderr) = out(&ciliate(
        &agent.socket,
        &["bpf", "policy", "get", "default/server"],
    ));
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("Endpoint 3 (default/server), identity 257: ingress enforced"),
        "{stdout}"
    );
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "IDENTITY",
            "DIRECTION",
            "PROTO",
            "PORT(S)",
            "VERDICT",
            "MATCH",
            "RULE",
            "PACKETS"
        ]
    );
    assert_eq!(
        rows[1],
        [
            "1(reserved:host)",
            "ingress",
            "ANY",
            "*",
            "allow",
            "l3-only",
            "<allow-localhost>",
            "0"
        ]
    );
    assert_eq!(
        rows[2],
        [
            "256(k8s:app=client,k8s:io.kubernetes.pod.namespace=default)",
            "ingress",
            "TCP",
            "8080",
            "allow",
            "l3-l4",
            "CiliumNetworkPolicy:default/server-ingress:spec.ingress[0]",
            "7"
        ]
    );
    let (code, stdout, _) = out(&ciliate(
        &agent.socket,
        &["bpf", "policy", "get", "default/server", "-o", "json"],
    ));
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        bpf_policy()
    );
    let (code, _, stderr) = out(&ciliate(&agent.socket, &["bpf", "policy", "get", "nope"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("Hint: `ciliate endpoint list`"), "{stderr}");
}

#[test]
fn import_reads_standard_input() {
    let agent = Agent::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["policy", "import", "-f", "-"])
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
        .write_all(CNP.as_bytes())
        .unwrap();
    let (code, stdout, stderr) = out(&child.wait_with_output().unwrap());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "ciliumnetworkpolicy.cilium.io/server-ingress created\nRevision: 9\n"
    );
    assert_eq!(agent.applied()[0]["documents"][0]["source"], "<stdin>");
}

#[test]
fn wait_returns_once_the_revision_is_in_force_and_fails_on_timeout() {
    let agent = Agent::start();
    let (code, stdout, stderr) = out(&ciliate(&agent.socket, &["policy", "wait", "9"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "Revision 9 is in force\n");
    let (code, stdout, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "wait", "12", "--timeout", "300ms"],
    ));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains("Error: policy revision 12 is not in force after 300ms: every endpoint holds revision 9 (the node is at 9); the node is only at revision 9"),
        "{stderr}"
    );
    let (code, _, stderr) = out(&ciliate(
        &agent.socket,
        &["policy", "wait", "9", "--timeout", "soon"],
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'soon' for '--timeout"),
        "{stderr}"
    );
}
