//! Kubernetes mode end to end on the real datapath: the agent (`--k8s`) reads a scripted API
//! server running inside its node's namespace, pods wired by the real CNI plugin take their
//! labels from their Pod objects, a CiliumNetworkPolicy from the API is in force on real
//! connections, and a Pod relabelled in the API (a MODIFIED watch event) gets the new identity
//! and its connections the new verdict, without a restart.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ciliate_testutil::{privileged, TestNetns};
use common::Node;
use serde_json::{json, Value};

const PODS: &str = "/api/v1/pods";

/// A minimal API server over plain HTTP/1.1: lists from a table, watches held open (chunked)
/// for the test to push events on. Enough for kube's client; not a general HTTP server.
#[derive(Default)]
struct FakeApi {
    lists: BTreeMap<&'static str, Value>,
    watches: Mutex<BTreeMap<String, Vec<TcpStream>>>,
}

impl FakeApi {
    fn serve(self: Arc<Self>, listener: TcpListener) {
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let api = Arc::clone(&self);
                thread::spawn(move || api.connection(conn));
            }
        });
    }

    fn connection(&self, mut conn: TcpStream) {
        let Ok(read_half) = conn.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        loop {
            let mut request = String::new();
            if reader.read_line(&mut request).unwrap_or(0) == 0 {
                return;
            }
            // Requests are GETs without a body: skip the headers.
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                if header == "\r\n" {
                    break;
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
            if query.split('&').any(|kv| kv == "watch=true") {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_ok() {
                    if let Ok(c) = conn.try_clone() {
                        self.watches
                            .lock()
                            .expect("lock")
                            .entry(path.to_owned())
                            .or_default()
                            .push(c);
                    }
                }
                return;
            }
            let body = self
                .lists
                .get(path)
                .cloned()
                .unwrap_or_else(|| {
                    json!({"kind": "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": "1"}, "items": []})
                })
                .to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Sends a watch event on every open watch of `path` (waits for one to be open).
    fn event(&self, path: &str, kind: &str, object: &Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        loop {
            let mut watches = self.watches.lock().expect("lock");
            if let Some(open) = watches.get_mut(path) {
                open.retain_mut(|c| c.write_all(chunk.as_bytes()).is_ok());
                if !open.is_empty() {
                    return;
                }
            }
            drop(watches);
            assert!(Instant::now() < deadline, "no watch of {path} open");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn pod(name: &str, labels: Value) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"),
                     "resourceVersion": "40", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]},
        "status": {"phase": "Pending"}
    })
}

fn api() -> FakeApi {
    let mut lists = BTreeMap::new();
    lists.insert(
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        json!({"kind": "CiliumNetworkPolicyList", "apiVersion": "cilium.io/v2",
        "metadata": {"resourceVersion": "30"},
        "items": [{
            "metadata": {"name": "db-from-web", "namespace": "prod", "resourceVersion": "13"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                             "toPorts": [{"ports": [{"port": "7000", "protocol": "TCP"}]}]}]
            }
        }]}),
    );
    lists.insert(
        PODS,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "50"},
               "items": [pod("db-0", json!({"app": "db"})),
                         pod("client-0", json!({"app": "other"}))]}),
    );
    FakeApi {
        lists,
        ..FakeApi::default()
    }
}

/// Binds a listener on the namespace's loopback (a thread enters it; the socket stays there).
fn listen_in(netns: &TestNetns) -> TcpListener {
    let path = netns.path();
    thread::spawn(move || {
        let ns = File::open(&path).expect("open netns");
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpListener::bind("127.0.0.1:0").expect("bind in the node namespace")
    })
    .join()
    .expect("listener thread")
}

fn write_kubeconfig(path: &Path, addr: SocketAddr) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: agent\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n\
         current-context: fake\n"
    );
    std::fs::write(path, text).expect("write kubeconfig");
}

#[test]
fn pods_take_their_labels_from_the_api_and_a_relabel_changes_the_verdict() {
    privileged!();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let api = Arc::new(api());
    let node = Node::start_with_setup(
        "10.226.0.0/24",
        &[
            "--k8s",
            "--k8s-kubeconfig",
            kubeconfig.to_str().expect("utf-8 path"),
        ],
        |netns| {
            let listener = listen_in(netns);
            write_kubeconfig(&kubeconfig, listener.local_addr().expect("address"));
            Arc::clone(&api).serve(listener);
        },
    );

    // CILIATE_LABELS are what a standalone runtime passes; in Kubernetes mode the Pod wins.
    let db = node.add_pod_in("prod", "db-0", "app=spoofed");
    let client = node.add_pod_in("prod", "client-0", "app=web");
    let db_ep = node.cli_json(&["endpoint", "get", "prod/db-0"]);
    assert!(
        db_ep["labels"].to_string().contains("k8s:app=db"),
        "{db_ep}"
    );
    let before = node.cli_json(&["endpoint", "get", "prod/client-0"]);
    assert!(
        before["labels"].to_string().contains("k8s:app=other"),
        "{before}"
    );
    db.echo_server(7000);

    // The policy from the API admits only app=web: the client is refused (once db's policy
    // map enforces it: the API's policies arrive while the agent already serves).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bpf = node.cli_json(&["bpf", "policy", "get", "prod/db-0"]);
        if bpf["ingressEnforced"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "db's policy never enforced: {bpf}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    assert!(
        client.tcp_echo(db.ip, 7000, b"no").is_err(),
        "app=other must not reach db:7000\n{}",
        node.agent_log()
    );

    // Relabelled app=web in the API: same pod, same address, new identity, admitted.
    api.event(PODS, "MODIFIED", &pod("client-0", json!({"app": "web"})));
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let ep = node.cli_json(&["endpoint", "get", "prod/client-0"]);
        if ep["labels"].to_string().contains("k8s:app=web") {
            break ep;
        }
        assert!(
            Instant::now() < deadline,
            "never relabelled: {ep}\n{}",
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(after["identity"], before["identity"]);
    assert_eq!(after["ipv4"], before["ipv4"]);
    // db's policy learns the new identity in the reconciliation that follows the relabel.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.tcp_echo(db.ip, 7000, b"yes").is_err() {
        assert!(
            Instant::now() < deadline,
            "app=web never admitted after the relabel\n{}",
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}
