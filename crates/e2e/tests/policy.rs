//! Network policy end to end: the real agent, CNI plugin and CLI, pods in network namespaces,
//! real connections through the kernel and `bpf/lxc.c`. Every cell of every scenario is
//! checked three ways: the connection itself, `ciliate policy trace` (exit code and drop
//! reason), and for denied ones the drop event `ciliate monitor` reports (133 default deny, 181
//! deny rule).

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ciliate_testutil::{privileged, TestNetns};
use common::{bin, text, Node, Pod};
use serde_json::Value;

/// How long a connection may take before it counts as dropped. Policy drops the SYN, so a
/// denied connection never answers; an allowed one answers within a millisecond here.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// `ciliate monitor -o json`, its events collected by a thread until dropped.
struct Monitor {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Monitor {
    fn start(node: &Node) -> Self {
        let mut child = Command::new(bin("ciliate"))
            .arg("--socket")
            .arg(&node.socket)
            .args(["monitor", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ciliate monitor");
        let stdout = child.stdout.take().expect("stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("events").push(v);
                }
            }
        });
        // Subscribed before any traffic of the test.
        thread::sleep(Duration::from_millis(300));
        Self { child, events }
    }

    /// Waits for an event of `kind` with `code` from `src` to `dst`.
    fn wait_for(&self, kind: &str, code: u64, src: Ipv4Addr, dst: Ipv4Addr) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .events
                .lock()
                .expect("events")
                .iter()
                .find(|e| {
                    e["kind"] == kind
                        && e["code"] == code
                        && e["src"] == src.to_string()
                        && e["dst"] == dst.to_string()
                })
                .cloned();
            if let Some(e) = found {
                return e;
            }
            if Instant::now() > deadline {
                let seen = self.events.lock().expect("events").clone();
                panic!("no {kind} event with code {code} for {src} -> {dst} among {seen:#?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn drops(&self) -> Vec<Value> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e["kind"] == "drop")
            .cloned()
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_cli(node: &Node, args: &[&str]) -> Output {
    node.cli(args)
}

/// `ciliate policy import -f <file>`; insists it worked and returns its output.
fn import(node: &Node, name: &str, yaml: &str) -> Output {
    let path = node.state.path().join(name);
    std::fs::write(&path, yaml).expect("write policy");
    let out = run_cli(
        node,
        &["policy", "import", "-f", path.to_str().expect("utf-8 path")],
    );
    assert!(out.status.success(), "policy import {name}: {}", text(&out));
    out
}

fn delete(node: &Node, reference: &str) {
    let out = run_cli(node, &["policy", "delete", reference]);
    assert!(
        out.status.success(),
        "policy delete {reference}: {}",
        text(&out)
    );
}

/// `ciliate policy trace ... -o json`: the exit code and the answer.
fn trace(node: &Node, src: &str, dst: &str, dport: &str) -> (i32, Value) {
    let out = run_cli(
        node,
        &[
            "policy", "trace", "--src", src, "--dst", dst, "--dport", dport, "-o", "json",
        ],
    );
    let code = out.status.code().expect("exit code");
    assert!(
        code == 0 || code == 1,
        "trace could not trace: {}",
        text(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("trace JSON");
    (code, v)
}

/// A TCP connection from `pod`, short timeout; whether it was established.
fn connects(pod: &Pod, dst: Ipv4Addr, port: u16) -> bool {
    pod.in_netns(move || TcpStream::connect_timeout(&(dst, port).into(), CONNECT_TIMEOUT).is_ok())
        .join()
        .expect("connect thread")
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_ns<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        let ns = File::open(&path).expect("open netns");
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A TCP echo server on `addr:port` in the namespace at `path`, for the rest of the test.
fn listen_in(path: String, addr: Ipv4Addr, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let ns = File::open(&path).expect("open netns");
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind((addr, port)).expect("bind listener");
        tx.send(()).expect("ready");
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener up");
}

/// One cell of a truth table: `src` → `dst` on TCP `port`, expected to pass (`None`) or to be
/// dropped with `want`. The connection, the trace and (when denied) the drop event must agree.
fn cell(
    node: &Node,
    monitor: &Monitor,
    (src, src_ref): (&Pod, &str),
    (dst_ip, dst_ref): (Ipv4Addr, &str),
    port: u16,
    want: Option<u64>,
) {
    let ok = connects(src, dst_ip, port);
    let (code, t) = trace(node, src_ref, dst_ref, &port.to_string());
    let what = format!("{src_ref} -> {dst_ref}:{port}");
    assert_eq!(
        ok,
        want.is_none(),
        "{what}: connection {} but expected {want:?}; trace says {t:#}",
        if ok { "established" } else { "dropped" }
    );
    assert_eq!(
        code,
        i32::from(want.is_some()),
        "{what}: trace exit code disagrees with the connection: {t:#}"
    );
    assert_eq!(
        t["dropReason"].as_u64(),
        want,
        "{what}: trace drop reason: {t:#}"
    );
    if let Some(reason) = want {
        monitor.wait_for("drop", reason, src.ip, dst_ip);
    }
}

const SERVER_ALLOW_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-allow-client}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

const SERVER_DENY_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-deny-client}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#;

/// (a) no policy: all allowed; (b) an allow rule: only client → server:8080, the rest dropped
/// with 133 and a policy-verdict event; (c) a deny rule wins over the allow: 181; (g) trace
/// agrees everywhere; deleting the policies restores (a).
#[test]
fn allow_default_deny_and_deny_rules_with_trace_and_monitor() {
    privileged!();
    let node = Node::start("10.221.0.0/24");
    let server = node.add_pod("server", "app=server");
    let client = node.add_pod("client", "app=client");
    let other = node.add_pod("other", "app=other");
    server.echo_server(8080);
    server.echo_server(8081);
    client.echo_server(7000);
    let monitor = Monitor::start(&node);
    let (s, c, o) = (
        (server.ip, "default/server"),
        (&client, "default/client"),
        (&other, "default/other"),
    );

    // (a) No policy.
    cell(&node, &monitor, c, s, 8080, None);
    cell(&node, &monitor, o, s, 8080, None);
    cell(&node, &monitor, c, s, 8081, None);
    assert!(
        monitor.drops().is_empty(),
        "no drops without policy: {:?}",
        monitor.drops()
    );

    // (b) Only app=client, only TCP 8080.
    let out = import(&node, "allow.yaml", SERVER_ALLOW_CLIENT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let revision = stdout
        .strip_prefix("ciliumnetworkpolicy.cilium.io/server-allow-client created\nRevision: ")
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|r| r.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("import prints the outcome and the revision: {stdout:?}"));
    // The revision import printed is in force (import returns once it is); a later one is
    // not, and waiting for it times out with exit code 1.
    let out = run_cli(&node, &["policy", "wait", &revision.to_string()]);
    assert!(out.status.success(), "policy wait: {}", text(&out));
    let later = (revision + 1000).to_string();
    let out = run_cli(&node, &["policy", "wait", &later, "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "policy revision {later} is not in force after 300ms"
        )),
        "{}",
        text(&out)
    );
    // `policy get` ends with the node's revision: this one, or a later one (node addresses
    // are read every 2 s, and count).
    let out = run_cli(&node, &["policy", "get"]);
    let shown = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("Revision: "))
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse::<u64>().ok());
    assert!(shown.is_some_and(|r| r >= revision), "{}", text(&out));
    assert_eq!(
        client.tcp_echo(server.ip, 8080, b"hello").expect("allowed"),
        b"hello"
    );
    cell(&node, &monitor, c, s, 8080, None);
    cell(&node, &monitor, o, s, 8080, Some(133));
    cell(&node, &monitor, c, s, 8081, Some(133));
    // Policy-verdict events: the denied new connection, and the allowed one.
    let denied = monitor.wait_for("policy-verdict", 133, other.ip, server.ip);
    assert!(
        denied["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ingress denied"),
        "{denied}"
    );
    let allowed = monitor.wait_for("policy-verdict", 0, client.ip, server.ip);
    assert_eq!(allowed["reason"], "ingress allowed (L3-L4)", "{allowed}");
    // The server's egress is not under policy: it still reaches the client.
    cell(
        &node,
        &monitor,
        (&server, "default/server"),
        (client.ip, "default/client"),
        7000,
        None,
    );

    // The deciding rule, in words and as data.
    let (_, t) = trace(&node, "default/client", "default/server", "8080/tcp");
    assert_eq!(t["deciding"], "ingress");
    assert_eq!(t["ingress"]["reason"], "allowed-by");
    assert_eq!(
        t["ingress"]["rules"][0]["policy"]["name"],
        "server-allow-client"
    );
    assert_eq!(t["ingress"]["rules"][0]["section"], "ingress");
    let (_, t) = trace(&node, "default/other", "default/server", "8080");
    assert_eq!(t["ingress"]["reason"], "default-deny");
    assert_eq!(t["ingress"]["policies"][0]["name"], "server-allow-client");

    // The map in force: the client's entry, with the packets it admitted.
    let bpf = node.cli_json(&["bpf", "policy", "get", "default/server"]);
    assert_eq!(bpf["ingressEnforced"], true, "{bpf:#}");
    assert_eq!(bpf["egressEnforced"], false, "{bpf:#}");
    let client_id = node.cli_json(&["endpoint", "get", "default/client"])["identity"].clone();
    let entry = bpf["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["identity"] == client_id)
        .unwrap_or_else(|| panic!("no entry for the client's identity: {bpf:#}"))
        .clone();
    assert_eq!(
        (entry["proto"].clone(), entry["port"].clone()),
        (6.into(), 8080.into())
    );
    assert!(entry["packets"].as_u64() > Some(0), "{entry}");
    assert_eq!(entry["ruleRef"]["policy"]["name"], "server-allow-client");
    let table = run_cli(&node, &["bpf", "policy", "get", "default/server"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("CiliumNetworkPolicy:default/server-allow-client:spec.ingress[0]"),
        "{table}"
    );

    // A pod created now is under the policy before its ADD returns.
    let late = node.add_pod("late", "app=other");
    cell(&node, &monitor, (&late, "default/late"), s, 8080, Some(133));
    let client2 = node.add_pod("client2", "app=client");
    cell(
        &node,
        &monitor,
        (&client2, "default/client2"),
        s,
        8080,
        None,
    );

    // (c) A deny rule for the client wins over the allow.
    import(&node, "deny.yaml", SERVER_DENY_CLIENT);
    cell(&node, &monitor, c, s, 8080, Some(181));
    monitor.wait_for("policy-verdict", 181, client.ip, server.ip);
    let (_, t) = trace(&node, "default/client", "default/server", "8080");
    assert_eq!(t["ingress"]["reason"], "denied-by");
    assert_eq!(t["ingress"]["rules"][0]["section"], "ingressDeny");
    assert_eq!(
        t["ingress"]["rules"][0]["policy"]["name"],
        "server-deny-client"
    );
    cell(&node, &monitor, o, s, 8080, Some(133));

    // Listed with the endpoints they select.
    let list = node.cli_json(&["policy", "get"]);
    let names: Vec<(String, u64)> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["endpoints"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("server-allow-client".to_owned(), 1),
            ("server-deny-client".to_owned(), 1)
        ]
    );

    // Deleted: back to (a).
    delete(&node, "cnp/default/server-deny-client");
    delete(&node, "cnp/server-allow-client");
    cell(&node, &monitor, o, s, 8081, None);
    cell(&node, &monitor, c, s, 8080, None);
    let bpf = node.cli_json(&["bpf", "policy", "get", "default/server"]);
    assert_eq!(
        (bpf["ingressEnforced"].clone(), bpf["entries"].clone()),
        (false.into(), serde_json::json!([]))
    );
}

/// (d) The Kubernetes idiom: default-deny-ingress for a namespace, then allow from one other
/// namespace on one port.
#[test]
fn network_policy_default_deny_and_allow_from_namespace() {
    privileged!();
    let node = Node::start("10.222.0.0/24");
    let db = node.add_pod_in("prod", "db", "app=db");
    let api = node.add_pod_in("prod", "api", "app=api");
    let web = node.add_pod_in("frontend", "web", "app=web");
    let stranger = node.add_pod("stranger", "app=web");
    db.echo_server(5432);
    db.echo_server(5433);
    stranger.echo_server(80);
    let monitor = Monitor::start(&node);
    import(
        &node,
        "netpol.yaml",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-frontend, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: frontend}}
    ports: [{protocol: TCP, port: 5432}]
"#,
    );
    let db_dst = (db.ip, "prod/db");
    cell(&node, &monitor, (&web, "frontend/web"), db_dst, 5432, None);
    cell(
        &node,
        &monitor,
        (&web, "frontend/web"),
        db_dst,
        5433,
        Some(133),
    );
    cell(
        &node,
        &monitor,
        (&stranger, "default/stranger"),
        db_dst,
        5432,
        Some(133),
    );
    cell(&node, &monitor, (&api, "prod/api"), db_dst, 5432, Some(133));
    // Egress is not under policy, and default/stranger is not selected at all.
    cell(
        &node,
        &monitor,
        (&db, "prod/db"),
        (stranger.ip, "default/stranger"),
        80,
        None,
    );
    // The node reaches its pods whatever their ingress policy.
    let out = node
        .netns
        .command("ping")
        .args(["-c", "1", "-W", "2", &db.ip.to_string()])
        .output()
        .expect("ping");
    assert!(out.status.success(), "node -> prod/db: {out:?}");
    let (code, t) = trace(&node, &NODE_IP.to_string(), "prod/db", "5433");
    assert_eq!(
        (code, &t["ingress"]["reason"]),
        (0, &Value::from("allow-localhost"))
    );
    // The deciding rule of the allowed cell is the namespace rule.
    let (_, t) = trace(&node, "frontend/web", "prod/db", "5432");
    assert_eq!(
        t["ingress"]["rules"][0]["policy"]["name"],
        "allow-from-frontend"
    );
    assert_eq!(t["ingress"]["rules"][0]["policy"]["kind"], "NetworkPolicy");
    let (_, t) = trace(&node, "prod/api", "prod/db", "5432");
    let mut policies: Vec<&str> = t["ingress"]["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    policies.sort_unstable();
    assert_eq!(policies, ["allow-from-frontend", "default-deny-ingress"]);
}

/// (e) Egress to world and to CIDRs against the node's own address (host), and the node
/// reaching its pods while everything else is default-denied.
#[test]
fn egress_world_cidr_and_host() {
    privileged!();
    let node = Node::start("10.223.0.0/24");
    // An outside network behind the node: 203.0.113.1 is world.
    let outside = TestNetns::new("co");
    node.netns.exec(
        "ip",
        &[
            "link",
            "add",
            "cvo0",
            "type",
            "veth",
            "peer",
            "name",
            "cvi0",
            "netns",
            outside.name(),
        ],
    );
    node.netns
        .exec("ip", &["addr", "add", "203.0.113.2/24", "dev", "cvo0"]);
    node.netns.exec("ip", &["link", "set", "cvo0", "up"]);
    outside.exec("ip", &["addr", "add", "203.0.113.1/24", "dev", "cvi0"]);
    outside.exec("ip", &["link", "set", "cvi0", "up"]);
    outside.exec(
        "ip",
        &["route", "add", "10.223.0.0/24", "via", "203.0.113.2"],
    );
    let world = Ipv4Addr::new(203, 0, 113, 1);
    listen_in(outside.path(), world, 9000);
    listen_in(node.netns.path(), NODE_IP, 9100);

    let client = node.add_pod("client", "app=client");
    let server = node.add_pod("server", "app=server");
    server.echo_server(8080);
    client.echo_server(7000);
    let monitor = Monitor::start(&node);
    let c = (&client, "default/client");
    let world_dst = (world, "203.0.113.1");
    let host_dst = (NODE_IP, "192.0.2.1");
    cell(&node, &monitor, c, world_dst, 9000, None);
    cell(&node, &monitor, c, host_dst, 9100, None);

    // Egress to world only: not the node, not other pods.
    let world_only = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [world]
"#;
    import(&node, "egress.yaml", world_only);
    cell(&node, &monitor, c, world_dst, 9000, None);
    cell(&node, &monitor, c, host_dst, 9100, Some(133));
    cell(
        &node,
        &monitor,
        c,
        (server.ip, "default/server"),
        8080,
        Some(133),
    );
    let (_, t) = trace(&node, "default/client", "192.0.2.1", "9100");
    assert_eq!(
        (t["dst"]["identity"].clone(), t["deciding"].clone()),
        (1.into(), "egress".into())
    );
    let (_, t) = trace(&node, "default/client", "203.0.113.1", "9000");
    assert_eq!(t["dst"]["identity"], 2, "world: no policy names its prefix");

    // A CIDR and the host entity, replacing it.
    let cidr_and_host = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [203.0.113.0/24]
    toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
  - toEntities: [host]
"#;
    let out = import(&node, "egress.yaml", cidr_and_host);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("client-egress configured"),
        "{}",
        text(&out)
    );
    cell(&node, &monitor, c, world_dst, 9000, None);
    cell(&node, &monitor, c, host_dst, 9100, None);
    cell(
        &node,
        &monitor,
        c,
        (server.ip, "default/server"),
        8080,
        Some(133),
    );
    let (_, t) = trace(&node, "default/client", "203.0.113.1", "9000");
    let cidr_identity = t["dst"]["identity"].as_u64().expect("identity");
    assert!(cidr_identity >= 1 << 24, "a CIDR identity: {t:#}");
    assert_eq!(t["egress"]["rules"][0]["section"], "egress");
    assert_eq!(t["egress"]["rules"][0]["index"], 0);
    let ids = node.cli_json(&["identity", "list"]);
    assert!(
        ids.as_array()
            .expect("ids")
            .iter()
            .any(|i| i["id"] == cidr_identity
                && i["labels"] == serde_json::json!(["cidr:203.0.113.0/24", "reserved:world"])),
        "{ids:#}"
    );

    // Except carves the address out again.
    import(
        &node,
        "egress.yaml",
        &cidr_and_host.replace(
            "toCIDR: [203.0.113.0/24]",
            "toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.1/32]}]",
        ),
    );
    cell(&node, &monitor, c, world_dst, 9000, Some(133));
    cell(&node, &monitor, c, host_dst, 9100, None);
    delete(&node, "cnp/default/client-egress");

    // Ingress default deny for the client: the node still reaches it; outside does not.
    import(
        &node,
        "ingress.yaml",
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-lockdown}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
"#,
    );
    let ping = node
        .netns
        .command("ping")
        .args([
            "-c",
            "1",
            "-W",
            "2",
            "-I",
            "192.0.2.1",
            &client.ip.to_string(),
        ])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "node -> client: {ping:?}");
    let cip = client.ip;
    let from_node = in_ns(node.netns.path(), move || {
        TcpStream::connect_timeout(&(cip, 7000).into(), CONNECT_TIMEOUT).is_ok()
    });
    assert!(from_node, "the node reaches its pod under default deny");
    let from_outside = in_ns(outside.path(), move || {
        TcpStream::connect_timeout(&(cip, 7000).into(), CONNECT_TIMEOUT).is_ok()
    });
    assert!(!from_outside, "world does not");
    monitor.wait_for("drop", 133, world, client.ip);
    let (code, t) = trace(&node, "192.0.2.1", "default/client", "7000");
    assert_eq!(
        (code, &t["ingress"]["reason"]),
        (0, &Value::from("allow-localhost"))
    );
    let (code, t) = trace(&node, "203.0.113.1", "default/client", "7000");
    assert_eq!((code, t["dropReason"].clone()), (1, 133.into()));
}

/// (f) Policy updates under an established connection: replies need no new decision, and
/// each update switches whole; a malformed batch changes nothing in force.
#[test]
fn updates_under_a_live_connection_and_a_malformed_batch() {
    privileged!();
    let node = Node::start("10.224.0.0/24");
    let server = node.add_pod("server", "app=server");
    let client = node.add_pod("client", "app=client");
    server.echo_server(8080);
    client.echo_server(7000);
    let monitor = Monitor::start(&node);
    let sip = server.ip;
    let mut stream = client
        .in_netns(move || {
            let s = TcpStream::connect_timeout(&(sip, 8080).into(), Duration::from_secs(3))
                .expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            s
        })
        .join()
        .expect("connect thread");
    let round_trip = |stream: &mut TcpStream, i: usize| {
        let msg = format!("message {i:04}");
        stream.write_all(msg.as_bytes()).expect("send");
        let mut buf = vec![0u8; msg.len()];
        stream
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reply {i} lost: {e}"));
        assert_eq!(buf, msg.as_bytes());
    };
    round_trip(&mut stream, 0);

    // The replies' directions (server egress, client ingress) go to default deny; the
    // connection's own direction stays allowed. Updated again and again under the connection.
    let policy = |port: u16| {
        format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{{port: "8080", protocol: TCP}}, {{port: "{port}", protocol: TCP}}]}}]
  egress:
  - toEndpoints: [{{matchLabels: {{app: nobody}}}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: nobody}}}}]
"#
        )
    };
    for (i, port) in (9000..9006).enumerate() {
        import(&node, "live.yaml", &policy(port));
        round_trip(&mut stream, i + 1);
    }
    // New decisions are made: server -> client is denied both ways out and in...
    cell(
        &node,
        &monitor,
        (&server, "default/server"),
        (client.ip, "default/client"),
        7000,
        Some(133),
    );
    // ... while a new client -> server connection is allowed, its replies included.
    assert_eq!(
        client
            .tcp_echo(server.ip, 8080, b"fresh")
            .expect("new connection"),
        b"fresh"
    );
    cell(
        &node,
        &monitor,
        (&client, "default/client"),
        (server.ip, "default/server"),
        8080,
        None,
    );
    round_trip(&mut stream, 100);

    // A malformed batch: one valid change, one broken policy. Nothing changes.
    let entries = |node: &Node| {
        let mut v = node.cli_json(&["bpf", "policy", "get", "default/server"]);
        for e in v["entries"].as_array_mut().expect("entries") {
            // Counters move with traffic; the entries themselves must not.
            e["packets"] = 0.into();
            e["bytes"] = 0.into();
        }
        v
    };
    let before = (entries(&node), node.cli_json(&["policy", "get"]));
    let broken = format!(
        "{}---\n{}",
        policy(9999),
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - toPorts: [{ports: [{port: "80", endPort: 79, protocol: TCP}]}]
"#
    );
    let path = node.state.path().join("broken.yaml");
    std::fs::write(&path, &broken).expect("write");
    let out = run_cli(
        &node,
        &["policy", "import", "-f", path.to_str().expect("path")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.yaml: document 3 (CiliumNetworkPolicy default/broken): spec.ingress[0].toPorts[0].ports[0].endPort:"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    let validate = run_cli(
        &node,
        &["policy", "validate", "-f", path.to_str().expect("path")],
    );
    assert_eq!(validate.status.code(), Some(1), "{}", text(&validate));
    let after = (entries(&node), node.cli_json(&["policy", "get"]));
    assert_eq!(before, after, "a malformed batch changes nothing in force");
    round_trip(&mut stream, 101);
    cell(
        &node,
        &monitor,
        (&client, "default/client"),
        (server.ip, "default/server"),
        9999,
        Some(133),
    );
}

/// A restart, even `kill -9`, keeps policies in force: the datapath enforces while the agent
/// is down, and the restarted agent has the same policies, CIDR identities and maps.
#[test]
fn restart_keeps_policies_and_cidr_identities() {
    privileged!();
    let mut node = Node::start("10.225.0.0/24");
    let server = node.add_pod("server", "app=server");
    let client = node.add_pod("client", "app=client");
    let other = node.add_pod("other", "app=other");
    server.echo_server(8080);
    import(
        &node,
        "p.yaml",
        &format!(
            "{SERVER_ALLOW_CLIENT}---\n{}",
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
  - toCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.128/25]}]
  - toCIDR: [203.0.113.0/24]
"#
        ),
    );
    let maps = |node: &Node| {
        ["default/server", "default/client"].map(|pod| {
            let mut v = node.cli_json(&["bpf", "policy", "get", pod]);
            for e in v["entries"].as_array_mut().expect("entries") {
                e["packets"] = 0.into();
                e["bytes"] = 0.into();
            }
            v
        })
    };
    let cidr = |node: &Node| -> Vec<Value> {
        node.cli_json(&["identity", "list"])
            .as_array()
            .expect("ids")
            .iter()
            .filter(|i| i["id"].as_u64() >= Some(1 << 24))
            .cloned()
            .collect()
    };
    let (maps_before, cidr_before) = (maps(&node), cidr(&node));
    assert_eq!(cidr_before.len(), 3, "{cidr_before:#?}");

    node.kill_agent();
    assert!(
        !connects(&other, server.ip, 8080),
        "enforced with the agent down"
    );
    assert!(connects(&client, server.ip, 8080), "and allowed");
    node.start_agent();

    assert_eq!(cidr(&node), cidr_before, "same prefixes, same identities");
    assert_eq!(
        maps(&node),
        maps_before,
        "the same maps, re-applied before serving"
    );
    let monitor = Monitor::start(&node);
    let s = (server.ip, "default/server");
    cell(&node, &monitor, (&client, "default/client"), s, 8080, None);
    cell(
        &node,
        &monitor,
        (&other, "default/other"),
        s,
        8080,
        Some(133),
    );
    assert_eq!(
        node.cli_json(&["policy", "get"]).as_array().map(Vec::len),
        Some(2)
    );
}

/// A NetworkPolicy that names its port (`port: http`) opens what the pod declared as `http`
/// (CNI_ARGS `CILIATE_PORTS`) and nothing else.
#[test]
fn named_ports_open_the_port_the_pod_declares() {
    privileged!();
    let node = Node::start("10.229.0.0/24");
    // add_pod_in puts its labels last in CNI_ARGS, so a further key can follow them.
    let web = node.add_pod_in("default", "web", "app=web;CILIATE_PORTS=http=8080/tcp");
    let client = node.add_pod("client", "app=client");
    web.echo_server(8080);
    web.echo_server(8081);
    let ep = node.cli_json(&["endpoint", "get", "default/web"]);
    assert_eq!(ep["namedPorts"][0]["name"], "http", "{ep}");
    import(
        &node,
        "named.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-http, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: http}]\n",
    );
    assert!(
        connects(&client, web.ip, 8080),
        "http (8080) is open to the client"
    );
    assert!(!connects(&client, web.ip, 8081), "8081 is not");
    assert_eq!(
        trace(&node, "default/client", "default/web", "8080/tcp").0,
        0
    );
    assert_eq!(
        trace(&node, "default/client", "default/web", "8081/tcp").0,
        1
    );
}

/// A Namespace object's labels are its pods' (#12): a namespaceSelector on them admits the
/// namespace's pods once `ciliate apply` gives it the label, and no longer once it loses it.
#[test]
fn namespace_labels_from_namespace_objects_select_pods() {
    privileged!();
    let node = Node::start("10.231.0.0/24");
    let db = node.add_pod_in("prod", "db", "app=db");
    let web = node.add_pod_in("frontend", "web", "app=web");
    db.echo_server(5432);
    let monitor = Monitor::start(&node);
    import(
        &node,
        "netpol.yaml",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-team-front, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: front}}
    ports: [{protocol: TCP, port: 5432}]
"#,
    );
    let db_dst = (db.ip, "prod/db");
    cell(
        &node,
        &monitor,
        (&web, "frontend/web"),
        db_dst,
        5432,
        Some(133),
    );
    let apply_ns = |team: &str| {
        let path = node.state.path().join("ns.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: frontend, labels: {{team: {team}}}}}\n"
            ),
        )
        .expect("write namespace");
        let out = run_cli(&node, &["apply", "-f", path.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "apply namespace: {}", text(&out));
        assert!(
            text(&out).contains("namespace/frontend"),
            "apply names the namespace: {}",
            text(&out)
        );
    };
    apply_ns("front");
    cell(&node, &monitor, (&web, "frontend/web"), db_dst, 5432, None);
    apply_ns("back");
    cell(
        &node,
        &monitor,
        (&web, "frontend/web"),
        db_dst,
        5432,
        Some(133),
    );
}

/// HTTP rules (#12): the port's policy map entry carries the proxy's port, `policy trace`
/// lists the rules in force and judges requests (exit 1 and a 403 for one no rule allows),
/// `status` shows the redirect and says no proxy takes it yet, and a policy with a bad regex
/// is refused with its field while the previous one stays in force.
#[test]
fn http_rules_redirect_to_the_proxy_and_trace_requests() {
    privileged!();
    // No proxy on this node (`--no-l7-proxy`): the redirects are still computed, traced and
    // written, and status says nothing takes them (crates/e2e/tests/l7.rs runs the proxy).
    let node = Node::start_with("10.247.0.0/24", &["--no-l7-proxy"]);
    let _web = node.add_pod("web", "app=web");
    let _client = node.add_pod("client", "app=client");
    let policy = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web-http, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:\n    - ports: [{port: \"8080\", protocol: TCP}]\n      rules:\n        http:\n        - {method: GET, path: \"/public/.*\"}\n        - {method: PUT, path: \"/items\", headers: [\"X-Token: t\"]}\n";
    import(&node, "http.yaml", policy);

    let bpf = node.cli_json(&["bpf", "policy", "get", "default/web"]);
    let entries = bpf["entries"].as_array().expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["port"] == 8080 && e["proxyPort"] == 15002 && e["deny"] == false),
        "{bpf:#}"
    );

    let (code, t) = trace(&node, "default/client", "default/web", "8080/tcp");
    assert_eq!(code, 0, "{t:#}");
    let l7 = &t["ingress"]["l7"];
    assert_eq!(l7["proxyPort"], 15002, "{t:#}");
    assert_eq!(l7["rules"][0]["http"][0]["method"], "GET", "{t:#}");
    assert_eq!(
        l7["rules"][0]["http"][1]["headers"][0], "X-Token: t",
        "{t:#}"
    );

    let http = |args: &[&str]| {
        let mut all = vec![
            "policy",
            "trace",
            "--src",
            "default/client",
            "--dst",
            "default/web",
            "--dport",
            "8080",
        ];
        all.extend_from_slice(args);
        run_cli(&node, &all)
    };
    let out = http(&[
        "--http-method",
        "GET",
        "--http-path",
        "/public/a",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ingress"]["l7"]["allowedBy"][0]["httpIndex"], 0, "{v:#}");
    let out = http(&[
        "--http-method",
        "PUT",
        "--http-path",
        "/items",
        "-H",
        "X-Token: t",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("rules.http[1] (ingress, L7)"),
        "{}",
        text(&out)
    );
    let out = http(&["--http-method", "PUT", "--http-path", "/items"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("403 Forbidden"), "{}", text(&out));

    // Degraded (a redirect no proxy takes), so `status` exits 1; its JSON says why.
    let out = run_cli(&node, &["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["health"], "degraded", "{status:#}");
    assert_eq!(status["proxy"]["redirects"], 1, "{status:#}");
    assert_eq!(status["proxy"]["enabled"], false, "{status:#}");
    assert!(
        status["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("no L7 proxy runs"))),
        "{status:#}"
    );

    // A bad regex: refused with file, field and reason; the policy in force stays.
    let bad = policy.replace("/public/.*", "/public/(");
    let path = node.state.path().join("bad.yaml");
    std::fs::write(&path, bad).expect("write");
    let out = run_cli(
        &node,
        &["policy", "import", "-f", path.to_str().expect("path")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("spec.ingress[0].toPorts[0].rules.http[0].path: \"/public/(\" is not a valid regular expression"),
        "{}",
        text(&out)
    );
    let after = node.cli_json(&["bpf", "policy", "get", "default/web"]);
    assert_eq!(after["entries"], bpf["entries"]);
}
