//! DNS-aware policy end to end: the real agent, CNI plugin, `ciliate-proxy` and CLI; a pod in
//! its namespace; a "world" namespace behind the node with Debian's `dnsmasq` (started here
//! with its own configuration) answering names with world addresses, and TCP servers on those
//! addresses. The pod's policy sends its DNS through the node's DNS proxy (`matchPattern: "*"`)
//! and allows `toFQDNs: allowed.example.com` only. `dig` in the pod resolves through the proxy;
//! the first connection right after the answer must pass (the agent put the address in the
//! maps before the proxy released the answer), a denied name's address must not, and an agent
//! restart (`kill -9`) keeps both an open connection and new ones to the learned address
//! allowed before any new query.
//!
//! Needs root, dnsmasq and dig; without them it says SKIP (and fails under
//! CILIATE_REQUIRE_PRIVILEGED=1).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ciliate_testutil::{privileged, TestNetns};
use common::{eventually, text, Node, Pod, Proc};
use serde_json::Value;

const CIDR: &str = "10.232.0.0/24";
const RESOLVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const DENIED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const PORT: u16 = 9000;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [203.0.113.1/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
  - toFQDNs: [{matchName: allowed.example.com}]
    toPorts:
    - ports: [{port: "9000", protocol: TCP}]
"#;

fn tool_missing(tool: &str, arg: &str) -> bool {
    if Command::new(tool).arg(arg).output().is_ok() {
        return false;
    }
    assert!(
        !ciliate_testutil::privileged_required(),
        "{tool} is missing and CILIATE_REQUIRE_PRIVILEGED=1 (scripts/install-deps)"
    );
    eprintln!("\n!!! SKIPPED: {tool} is not installed (scripts/install-deps). !!!\n");
    true
}

/// The world: a namespace behind the node's `cwo0`, holding the resolver's and the servers'
/// addresses, with a route back to the pods.
fn world(node: &Node) -> TestNetns {
    world_for(node, CIDR)
}

fn world_for(node: &Node, pod_cidr: &str) -> TestNetns {
    let outside = TestNetns::new("cw");
    node.netns.exec(
        "ip",
        &[
            "link",
            "add",
            "cwo0",
            "type",
            "veth",
            "peer",
            "name",
            "cwi0",
            "netns",
            outside.name(),
        ],
    );
    node.netns
        .exec("ip", &["addr", "add", "203.0.113.2/24", "dev", "cwo0"]);
    node.netns.exec("ip", &["link", "set", "cwo0", "up"]);
    for a in ["203.0.113.1/24", "203.0.113.10/32", "203.0.113.11/32"] {
        outside.exec("ip", &["addr", "add", a, "dev", "cwi0"]);
    }
    outside.exec("ip", &["link", "set", "cwi0", "up"]);
    outside.exec("ip", &["link", "set", "lo", "up"]);
    outside.exec("ip", &["route", "add", pod_cidr, "via", "203.0.113.2"]);
    outside
}

/// A TCP echo server on `addr:port` inside the namespace at `path`.
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

/// dnsmasq in the world answering the test's names (and nothing else: no upstream).
fn dnsmasq(outside: &TestNetns, conf_dir: &tempfile::TempDir) -> Proc {
    let conf = conf_dir.path().join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={RESOLVER}\nport=53\n\
             local=/example.com/\nhost-record=allowed.example.com,{ALLOWED_IP}\n\
             host-record=denied.example.com,{DENIED_IP}\nlocal-ttl=2\n"
        ),
    )
    .expect("dnsmasq.conf");
    Proc(
        outside
            .command("dnsmasq")
            .args(["--no-daemon", "--user=root", "--pid-file", "-C"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    )
}

/// `dig @resolver name A` from `ns`: (status, addresses).
fn dig(ns: &TestNetns, name: &str, tcp: bool) -> (String, Vec<Ipv4Addr>) {
    let mut c = ns.command("dig");
    c.args([
        &format!("@{RESOLVER}"),
        name,
        "A",
        "+tries=1",
        "+time=5",
        "+noall",
        "+comments",
        "+answer",
    ]);
    if tcp {
        c.arg("+tcp");
    }
    let out = String::from_utf8_lossy(&c.output().expect("dig").stdout).into_owned();
    let status = out
        .lines()
        .find_map(|l| {
            l.find("status: ")
                .map(|i| l[i + 8..].split(',').next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    let ips = out
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[3] == "A")
                .then(|| f[4].parse().ok())
                .flatten()
        })
        .collect();
    (status, ips)
}

/// One connection and one echoed message from the pod; false when it is refused or dropped.
fn connects(pod: &Pod, dst: Ipv4Addr) -> bool {
    pod.tcp_echo(dst, PORT, b"hello")
        .is_ok_and(|b| b == b"hello")
}

/// An open connection from the pod, kept across the agent's restart.
struct Held {
    stream: TcpStream,
}

impl Held {
    fn open(pod: &Pod, dst: Ipv4Addr) -> Self {
        let stream = pod
            .in_netns(move || {
                let s = TcpStream::connect_timeout(&(dst, PORT).into(), Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                Ok::<_, std::io::Error>(s)
            })
            .join()
            .expect("connect thread")
            .expect("the held connection opens");
        let mut h = Self { stream };
        assert!(h.echo(), "the held connection echoes");
        h
    }

    fn echo(&mut self) -> bool {
        let mut buf = [0u8; 4];
        self.stream.write_all(b"ping").is_ok()
            && self.stream.read_exact(&mut buf).is_ok()
            && &buf == b"ping"
    }
}

#[test]
fn to_fqdns_allows_learned_addresses_before_the_answer_and_across_a_restart() {
    privileged!();
    if tool_missing("dnsmasq", "--version") || tool_missing("dig", "-v") {
        return;
    }
    // Short TTLs with a minimum that keeps the address for the test's length, as in Cilium.
    let mut node = Node::start_with(CIDR, &["--tofqdns-min-ttl", "600"]);
    let outside = world(&node);
    listen_in(outside.path(), ALLOWED_IP, PORT);
    listen_in(outside.path(), DENIED_IP, PORT);
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let _dnsmasq = dnsmasq(&outside, &conf_dir);
    eventually("dnsmasq answers", || {
        dig(&outside, "allowed.example.com", false).0 == "NOERROR"
    });

    let client = node.add_pod("client", "app=client");
    // Before any policy: the world is reachable.
    assert!(connects(&client, DENIED_IP));
    node.apply("fqdn.yaml", POLICY);
    eventually("the DNS proxy answers the pod", || {
        dig(&client.netns, "allowed.example.com", false).0 == "NOERROR"
    });
    // The denied name resolves (the DNS rule allows every name) but toFQDNs does not select
    // it: its address stays refused.
    let (status, ips) = dig(&client.netns, "denied.example.com", false);
    assert_eq!(
        (status.as_str(), ips.as_slice()),
        ("NOERROR", &[DENIED_IP][..])
    );
    assert!(!connects(&client, DENIED_IP), "a denied name's address");

    // Clean the cache so the next answer is a first one, then connect at once after it.
    let out = node.cli(&["fqdn", "cache", "clean"]);
    assert!(out.status.success(), "{}", text(&out));
    for tcp in [false, true] {
        let (status, ips) = dig(&client.netns, "allowed.example.com", tcp);
        assert_eq!(
            (status.as_str(), ips.as_slice()),
            ("NOERROR", &[ALLOWED_IP][..])
        );
        assert!(
            connects(&client, ALLOWED_IP),
            "the first connection right after the answer (tcp dns: {tcp})"
        );
    }

    // Flows to the learned address show it as Cilium labels it: its prefix, the world and
    // the selector that learned it; the verdict names the policy that allowed it.
    let flows: Vec<Value> = node
        .observe(&["--last", "2000", "--from-pod", "default/client"])
        .into_iter()
        .map(|v| v.get("flow").cloned().unwrap_or(v))
        .filter(|f| f["IP"]["destination"] == ALLOWED_IP.to_string())
        .collect();
    let labelled = |f: &Value| {
        let labels: Vec<&str> = f["destination"]["labels"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        [
            "cidr:203.0.113.10/32",
            "fqdn:allowed.example.com",
            "reserved:world",
        ]
        .iter()
        .all(|want| labels.contains(want))
    };
    assert!(flows.iter().any(labelled), "{flows:#?}");
    assert!(
        flows.iter().any(|f| {
            let by = f.get("egress_allowed_by").unwrap_or(&f["egressAllowedBy"]);
            by[0]["name"] == "client-fqdn" && by[0]["kind"] == "CiliumNetworkPolicy"
        }),
        "{flows:#?}"
    );

    // The cache and the trace say so.
    let list = node.cli_json(&["fqdn", "cache", "list"]);
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == "allowed.example.com."))
        .unwrap_or_else(|| panic!("allowed.example.com in {list:#}"));
    assert_eq!(entry["ips"], serde_json::json!([ALLOWED_IP.to_string()]));
    assert_eq!(entry["ttl"], 2);
    assert!(
        entry["ttlLeft"].as_u64().is_some_and(|t| t > 500),
        "{entry}"
    );
    let trace = node.cli(&[
        "policy",
        "trace",
        "--src",
        "default/client",
        "--dst-fqdn",
        "allowed.example.com",
        "--dport",
        "9000",
    ]);
    assert_eq!(trace.status.code(), Some(0), "{}", text(&trace));
    let trace = node.cli(&[
        "policy",
        "trace",
        "--src",
        "default/client",
        "--dst-fqdn",
        "unknown.example.com",
        "--dport",
        "9000",
    ]);
    assert_eq!(trace.status.code(), Some(1), "{}", text(&trace));
    assert!(
        String::from_utf8_lossy(&trace.stdout).contains("no IPs learned for unknown.example.com."),
        "{}",
        text(&trace)
    );

    // kill -9 and a new agent: the open connection keeps working, and a new one is allowed
    // before any new DNS query.
    let mut held = Held::open(&client, ALLOWED_IP);
    node.kill_agent();
    node.start_agent();
    assert!(held.echo(), "the connection opened before the restart");
    assert!(
        connects(&client, ALLOWED_IP),
        "a new connection after the restart"
    );
    assert!(
        !connects(&client, DENIED_IP),
        "still refused after the restart"
    );
    let list: Value = node.cli_json(&["fqdn", "cache", "list"]);
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|e| e["name"] == "allowed.example.com.")),
        "{list:#}"
    );
}

/// The cache's entry for `name` as `ciliate fqdn cache list -o json` prints it.
fn cache_entry(node: &Node, name: &str) -> Option<Value> {
    node.cli_json(&["fqdn", "cache", "list"])
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == name).cloned())
}

#[test]
fn an_expired_address_stays_while_a_connection_to_it_is_open() {
    privileged!();
    if tool_missing("dnsmasq", "--version") || tool_missing("dig", "-v") {
        return;
    }
    // No minimum: the answer's 2 s TTL counts. Conntrack GC (and the zombie check) every 2 s.
    let node = Node::start_with("10.233.0.0/24", &["--tofqdns-min-ttl", "0"]);
    let outside = world_for(&node, "10.233.0.0/24");
    listen_in(outside.path(), ALLOWED_IP, PORT);
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let _dnsmasq = dnsmasq(&outside, &conf_dir);
    eventually("dnsmasq answers", || {
        dig(&outside, "allowed.example.com", false).0 == "NOERROR"
    });
    let client = node.add_pod("client", "app=client");
    node.apply("fqdn.yaml", POLICY);
    eventually("the DNS proxy answers the pod", || {
        dig(&client.netns, "allowed.example.com", false).0 == "NOERROR"
    });
    let mut held = Held::open(&client, ALLOWED_IP);
    // Past its TTL, the address is kept for the open connection, and still allowed.
    eventually("the address becomes a zombie", || {
        cache_entry(&node, "allowed.example.com.")
            .is_some_and(|e| e["zombies"] == serde_json::json!([ALLOWED_IP.to_string()]))
    });
    assert!(held.echo(), "the open connection");
    // Closed (and its conntrack entry gone): the address goes, new connections are refused.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(40);
    while cache_entry(&node, "allowed.example.com.").is_some() {
        assert!(
            Instant::now() < deadline,
            "the address outlived its connection: {:?}",
            cache_entry(&node, "allowed.example.com.")
        );
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !connects(&client, ALLOWED_IP),
        "an expired address is refused"
    );
    // A new answer allows it again at once.
    assert_eq!(
        dig(&client.netns, "allowed.example.com", false).1,
        vec![ALLOWED_IP]
    );
    assert!(connects(&client, ALLOWED_IP), "after a new answer");
}
