//! The DNS proxy against a real resolver: Debian's `dnsmasq` in a "world" namespace, `dig` in
//! a pod namespace, the supervisor and the real `ciliate-proxy` in the node's namespace, and
//! nftables `tproxy` standing in for the datapath's `bpf_sk_assign` (that the BPF programs
//! hand UDP queries to a transparent socket is crates/datapath/tests/proxy_kernel.rs's job).
//! The test plays the agent: it answers `fqdnLearned` with `fqdnAllowed`.
//!
//! Needs root, nft, dnsmasq and dig; without them it says SKIP.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ciliate_model::l7::{
    DnsMatch, DnsRecord, L7Parser, L7PeerRules, L7RecordType, L7Redirect, L7Verdict, ProxyCommand,
    ProxyEvent, ProxyPorts,
};
use ciliate_proxy::supervisor::{Supervisor, SupervisorConfig};
use ciliate_testutil::{run, unique_name, TestNetns};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

const POD: &str = "10.233.1.2";
const NODE_P: &str = "10.233.1.1";
const RESOLVER: &str = "10.233.2.2";
const NODE_R: &str = "10.233.2.1";
const DNS_PORT: u16 = 15053;

/// Runs `f` on a thread inside the namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

fn veth(a_ns: &TestNetns, a_ip: &str, b_ns: &TestNetns, b_ip: &str) -> String {
    let a = unique_name("dxa");
    let b = unique_name("dxb");
    run(
        "ip",
        &["link", "add", &a, "type", "veth", "peer", "name", &b],
    );
    run("ip", &["link", "set", &a, "netns", a_ns.name()]);
    run("ip", &["link", "set", &b, "netns", b_ns.name()]);
    a_ns.exec("ip", &["addr", "add", &format!("{a_ip}/24"), "dev", &a]);
    a_ns.exec("ip", &["link", "set", &a, "up"]);
    b_ns.exec("ip", &["addr", "add", &format!("{b_ip}/24"), "dev", &b]);
    b_ns.exec("ip", &["link", "set", &b, "up"]);
    b
}

/// dnsmasq, killed on drop (also when the test fails), with its configuration's directory.
struct Dnsmasq {
    child: Child,
    _conf: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The world's resolver's names; NXDOMAIN for the rest of example.test.
const WORLD_RECORDS: &str = "host-record=api.example.test,192.0.2.10
host-record=multi.example.test,192.0.2.20
host-record=multi.example.test,192.0.2.21
host-record=a.pat.example.test,192.0.2.30
host-record=blocked.example.test,192.0.2.99
cname=www.example.test,api.example.test
";

/// A resolver on `listen`:53 answering only `records` (dnsmasq configuration lines).
fn start_dnsmasq(ns: &TestNetns, listen: &str, records: &str) -> Dnsmasq {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={listen}\nport=53\n\
             local=/example.test/\nlocal-ttl=30\n{records}"
        ),
    )
    .expect("conf");
    let child = ns
        .command("dnsmasq")
        .args(["--no-daemon", "--user=root", "--pid-file", "-C"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    Dnsmasq { child, _conf: dir }
}

/// What dig said.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    a: Vec<Ipv4Addr>,
    cnames: Vec<String>,
}

fn dig(ns: &TestNetns, name: &str, tcp: bool) -> Dig {
    dig_with(ns.command("dig"), RESOLVER, name, tcp)
}

fn redirect(proto: u8) -> L7Redirect {
    let name = |n: &str| DnsMatch {
        match_name: Some(n.into()),
        match_pattern: None,
    };
    L7Redirect {
        endpoint: 7,
        endpoint_ip: POD.parse().expect("ip"),
        egress: true,
        proto,
        port: 53,
        parser: L7Parser::Dns,
        proxy_port: DNS_PORT,
        rules: vec![L7PeerRules {
            peers: None,
            rule: 11,
            dns: vec![
                name("api.example.test"),
                name("www.example.test"),
                name("multi.example.test"),
                name("nx.example.test"),
                name("local.example.test"),
                DnsMatch {
                    match_name: None,
                    match_pattern: Some("*.pat.example.test".into()),
                },
            ],
            ..Default::default()
        }],
    }
}

enum Cmd {
    Allow(u64),
    /// kill -9 of the proxy; answers its pid at once (the supervisor restarts it meanwhile).
    Kill(std::sync::mpsc::Sender<u32>),
    /// Answers the pid once a proxy other than this one is up.
    UpAgain(u32, std::sync::mpsc::Sender<u32>),
    /// A graceful restart; answers (old pid, new pid).
    Restart(std::sync::mpsc::Sender<(u32, u32)>),
}

/// Kills the proxy a test leaves behind (it runs in a process group of its own).
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.0.join("proxy.json")) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        if let Some(pid) = v.get("pid").and_then(|p| p.as_i64()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

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

/// A query for `name` A, as a stub resolver sends it.
fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("query")
}

/// Waits for the first record matching `f`.
fn wait_record(rx: &mpsc::Receiver<DnsRecord>, f: impl Fn(&DnsRecord) -> bool) -> DnsRecord {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = rx.recv_timeout(left).expect("a matching DNS record");
        if f(&r) {
            return r;
        }
    }
}

#[test]
fn queries_are_judged_forwarded_held_for_the_agent_and_survive_kill_9() {
    ciliate_testutil::privileged!();
    if tool_missing("nft", "--version")
        || tool_missing("dnsmasq", "--version")
        || tool_missing("dig", "-v")
    {
        return;
    }
    let pod = TestNetns::new("dxp");
    let node = TestNetns::new("dxn");
    let world = TestNetns::new("dxw");
    let node_p_if = veth(&pod, POD, &node, NODE_P);
    veth(&world, RESOLVER, &node, NODE_R);
    pod.exec("ip", &["route", "add", "default", "via", NODE_P]);
    world.exec("ip", &["route", "add", "default", "via", NODE_R]);
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    let _dnsmasq = start_dnsmasq(&world, RESOLVER, WORLD_RECORDS);
    // A node-local resolver (a DNS cache on the pod's gateway address).
    let _node_dnsmasq = start_dnsmasq(&node, NODE_P, "host-record=local.example.test,192.0.2.40\n");

    // The node reaches the resolver directly (its own queries are not redirected).
    let start = Instant::now();
    while dig(&node, "api.example.test", false).a != ["192.0.2.10".parse::<Ipv4Addr>().unwrap()] {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "dnsmasq did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // What the datapath does with bpf_sk_assign, with nftables tproxy: the pod's port-53
    // traffic to the proxy's transparent sockets, delivered locally (mark 1 -> table 100).
    let rules = format!(
        "table ip ciliate_dns_test {{
            chain pre {{
                type filter hook prerouting priority mangle; policy accept;
                meta l4proto tcp socket transparent 1 meta mark set 1 accept
                iifname \"{node_p_if}\" udp dport 53 tproxy to :{DNS_PORT} meta mark set 1 accept
                iifname \"{node_p_if}\" tcp dport 53 tproxy to :{DNS_PORT} meta mark set 1 accept
            }}
        }}"
    );
    let mut child = node
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules");
    assert!(child.wait().expect("nft").success(), "nft -f failed");
    node.exec("ip", &["rule", "add", "fwmark", "1", "lookup", "100"]);
    node.exec(
        "ip",
        &[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "100",
        ],
    );

    // The supervisor (the agent's side) in the node's namespace.
    let run_dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(run_dir.path().to_owned());
    let cfg = SupervisorConfig {
        binary: env!("CARGO_BIN_EXE_ciliate-proxy").into(),
        run_dir: run_dir.path().to_owned(),
        ports: ProxyPorts {
            http_egress: 0,
            http_ingress: 0,
            dns: DNS_PORT,
        },
        listen_ip: "0.0.0.0".parse().expect("ip"),
        transparent: true,
        bpf_pin_dir: None,
        drain_timeout: Duration::from_secs(2),
        // Long: an answer reaches the pod only when the test (the agent) releases it.
        extra_args: vec![
            "--log".into(),
            "warn".into(),
            "--dns-allow-timeout".into(),
            "60s".into(),
        ],
    };
    let auto_release = Arc::new(AtomicBool::new(false));
    let (learned_tx, learned_rx) = mpsc::channel();
    let (rec_tx, rec_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<Cmd>(4);
    let auto = auto_release.clone();
    let sup_thread = in_netns(node.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sup = Supervisor::start(cfg).await.expect("supervisor");
            let mut events = sup.events();
            sup.apply(ProxyCommand::Snapshot {
                revision: 1,
                redirects: vec![redirect(17), redirect(6)],
            })
            .await;
            while !(sup.status().up && sup.status().applied_revision == Some(1)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ready_tx.send(sup.status()).expect("ready");
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ProxyEvent::FqdnLearned(l)) => {
                            if auto.load(Ordering::Relaxed) {
                                sup.apply(ProxyCommand::FqdnAllowed { id: l.id }).await;
                            }
                            let _ = learned_tx.send(*l);
                        }
                        // The supervisor hands DNS records on as their frames.
                        Ok(ProxyEvent::DnsFrame(f)) => { let _ = rec_tx.send(f.record()); }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    cmd = cmd_rx.recv() => match cmd {
                        Some(Cmd::Allow(id)) => sup.apply(ProxyCommand::FqdnAllowed { id }).await,
                        Some(Cmd::Kill(reply)) => {
                            let old = sup.status().pid.unwrap_or(0);
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(old as i32),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                            let _ = reply.send(old);
                        }
                        Some(Cmd::Restart(reply)) => {
                            let old = sup.status().pid.unwrap_or(0);
                            sup.restart().await.expect("restart");
                            let _ = reply.send((old, sup.status().pid.unwrap_or(0)));
                        }
                        Some(Cmd::UpAgain(old, reply)) => {
                            loop {
                                let st = sup.status();
                                if st.up && st.pid.is_some_and(|p| p != old) {
                                    let _ = reply.send(st.pid.unwrap_or(0));
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                        None => break,
                    },
                }
            }
            sup.shutdown().await;
        });
    });
    let status = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("proxy up");
    assert!(
        status.listeners.iter().any(|l| l.port == DNS_PORT),
        "{status:?}"
    );

    // 1. An allowed name: FqdnLearned first, the answer only once the agent allowed it.
    let pod_path = pod.path();
    let asking = {
        let p = pod_path.clone();
        std::thread::spawn(move || {
            let ns = TestNetnsRef(p);
            ns.dig("api.example.test", false)
        })
    };
    let learned = learned_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("FqdnLearned");
    assert_eq!(learned.endpoint, 7);
    assert_eq!(learned.endpoint_ip.to_string(), POD);
    assert_eq!(learned.names.len(), 1);
    assert_eq!(learned.names[0].name, "api.example.test.");
    assert_eq!(
        learned.names[0].ips,
        ["192.0.2.10".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(learned.names[0].ttl, 30);
    // Held: the proxy has the answer (it told us its addresses) but the pod has nothing yet.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !asking.is_finished(),
        "the answer reached the pod before FqdnAllowed"
    );
    cmd_tx.blocking_send(Cmd::Allow(learned.id)).expect("allow");
    let got = asking.join().expect("dig");
    assert_eq!(got.status, "NOERROR");
    assert_eq!(got.a, ["192.0.2.10".parse::<Ipv4Addr>().unwrap()]);
    let resp = wait_record(&rec_rx, |r| {
        r.record_type == L7RecordType::Response && r.query == "api.example.test."
    });
    assert_eq!(
        (resp.verdict, resp.rule, resp.rcode, resp.ttl, resp.proto),
        (L7Verdict::Forwarded, 11, 0, 30, 17)
    );
    assert_eq!(resp.rrtypes, ["A"]);
    assert_eq!(
        resp.destination,
        SocketAddrV4::new(RESOLVER.parse().unwrap(), 53)
    );

    // From here the "agent" allows at once.
    auto_release.store(true, Ordering::Relaxed);

    // 2. A name no rule allows: REFUSED by the proxy, the resolver never asked.
    let denied = dig(&pod, "blocked.example.test", false);
    assert_eq!(denied.status, "REFUSED", "{denied:?}");
    assert!(denied.a.is_empty());
    let r = wait_record(&rec_rx, |r| {
        r.record_type == L7RecordType::Response && r.query == "blocked.example.test."
    });
    assert_eq!((r.verdict, r.rcode), (L7Verdict::Dropped, 5));
    assert_eq!(r.reason.as_deref(), Some("no rule allows the name"));

    // 3. A pattern.
    let pat = dig(&pod, "a.pat.example.test", false);
    assert_eq!(
        (pat.status.as_str(), pat.a.clone()),
        ("NOERROR", vec!["192.0.2.30".parse::<Ipv4Addr>().unwrap()])
    );
    let deep = dig(&pod, "b.a.pat.example.test", false);
    assert_eq!(deep.status, "REFUSED", "'*' does not cross a dot");

    // 4. A CNAME chain: both names learned with the final address.
    let www = dig(&pod, "www.example.test", false);
    assert_eq!(www.status, "NOERROR");
    assert_eq!(www.cnames, ["api.example.test."]);
    assert_eq!(www.a, ["192.0.2.10".parse::<Ipv4Addr>().unwrap()]);
    let l = loop {
        let l = learned_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("learned");
        if l.names.iter().any(|n| n.name == "www.example.test.") {
            break l;
        }
    };
    let names: Vec<&str> = l.names.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["www.example.test.", "api.example.test."]);
    assert!(l
        .names
        .iter()
        .all(|n| n.ips == ["192.0.2.10".parse::<Ipv4Addr>().unwrap()]));
    let r = wait_record(&rec_rx, |r| {
        r.record_type == L7RecordType::Response && r.query == "www.example.test."
    });
    assert_eq!(r.cnames, ["api.example.test."]);
    assert_eq!(r.rrtypes, ["CNAME", "A"]);

    // 5. NXDOMAIN passes through (allowed name, no such host), without holding.
    let nx = dig(&pod, "nx.example.test", false);
    assert_eq!(nx.status, "NXDOMAIN");
    let r = wait_record(&rec_rx, |r| {
        r.record_type == L7RecordType::Response && r.query == "nx.example.test."
    });
    assert_eq!((r.verdict, r.rcode), (L7Verdict::Forwarded, 3));

    // 6. TCP, several addresses.
    let multi = dig(&pod, "multi.example.test", true);
    assert_eq!(multi.status, "NOERROR");
    let mut a = multi.a.clone();
    a.sort();
    assert_eq!(
        a,
        [
            "192.0.2.20".parse::<Ipv4Addr>().unwrap(),
            "192.0.2.21".parse().unwrap()
        ]
    );
    let r = wait_record(&rec_rx, |r| {
        r.record_type == L7RecordType::Response && r.query == "multi.example.test."
    });
    assert_eq!(r.proto, 6);
    let denied_tcp = dig(&pod, "blocked.example.test", true);
    assert_eq!(denied_tcp.status, "REFUSED");

    // 7. Bad input: a header with garbage after it gets FORMERR with its id, and a record.
    let formerr = in_netns(pod_path.clone(), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect((RESOLVER, 53)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.send(&[
            0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
        ])
        .expect("send");
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).expect("an answer");
        buf[..n].to_vec()
    })
    .join()
    .expect("bad query");
    assert_eq!(&formerr[..2], &[0x12, 0x34]);
    assert_eq!(formerr[3] & 0x0f, 1, "FORMERR");
    let r = wait_record(&rec_rx, |r| r.verdict == L7Verdict::Error);
    assert!(
        r.reason.as_deref().unwrap_or("").contains("malformed"),
        "{r:?}"
    );

    // 8. The node's own resolver: the answer leaves from its address too, and the node's
    // own queries to it still reach it (the proxy's answering socket took nothing).
    let local = dig_with(pod.command("dig"), NODE_P, "local.example.test", false);
    assert_eq!(local.status, "NOERROR", "{local:?}");
    assert_eq!(local.a, ["192.0.2.40".parse::<Ipv4Addr>().unwrap()]);
    let r = wait_record(&rec_rx, |r| {
        r.record_type == L7RecordType::Response && r.query == "local.example.test."
    });
    assert_eq!(
        r.destination,
        SocketAddrV4::new(NODE_P.parse().unwrap(), 53)
    );
    let denied_local = dig_with(pod.command("dig"), NODE_P, "blocked.example.test", false);
    assert_eq!(
        denied_local.status, "REFUSED",
        "judged whatever the resolver"
    );
    for _ in 0..3 {
        let own = dig_with(node.command("dig"), NODE_P, "local.example.test", false);
        assert_eq!(own.status, "NOERROR", "the node's own query: {own:?}");
    }

    // 9. A graceful restart (a new proxy first, the old one drains) under a query stream.
    // Nothing is lost: the old proxy answers what it read (the supervisor sends it the
    // FqdnAllowed of its own held answers), so with a patient client nothing is retried.
    let (s, a, _) = query_stream(&pod_path, Duration::from_secs(10));
    while a.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    cmd_tx
        .blocking_send(Cmd::Restart(reply_tx))
        .expect("restart");
    let (old, new) = reply_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("restarted");
    assert_ne!(old, new);
    let before = a.load(Ordering::Relaxed);
    while a.load(Ordering::Relaxed) < before + 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (answered, retried, lost) = s.finish();
    eprintln!(
        "graceful restart under a query stream: {answered} answered, {retried} retries, \
         {lost} never answered"
    );
    assert_eq!((retried, lost), (0, 0));

    // 10. kill -9 with no query in flight, then a burst at once: whatever the new proxy's
    // start overlaps, every query of the burst waits in the supervisor's socket and is
    // answered, without a retry.
    let kill = |cmd_tx: &tokio::sync::mpsc::Sender<Cmd>| {
        let (reply_tx, reply_rx) = mpsc::channel();
        cmd_tx.blocking_send(Cmd::Kill(reply_tx)).expect("kill");
        reply_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("killed")
    };
    let up_again = |cmd_tx: &tokio::sync::mpsc::Sender<Cmd>, old: u32| {
        let (reply_tx, reply_rx) = mpsc::channel();
        cmd_tx
            .blocking_send(Cmd::UpAgain(old, reply_tx))
            .expect("status");
        reply_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("restarted")
    };
    let old = kill(&cmd_tx);
    let burst = 50u16;
    let answers = in_netns(pod_path.clone(), move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect((RESOLVER, 53)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        for id in 1..=burst {
            s.send(&query_bytes(id, "api.example.test.")).expect("send");
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut buf = [0u8; 1500];
        while ids.len() < usize::from(burst) {
            let Ok(n) = s.recv(&mut buf) else { break };
            if n >= 4 && buf[3] & 0x0f == 0 {
                ids.insert(u16::from_be_bytes([buf[0], buf[1]]));
            }
        }
        ids.len()
    })
    .join()
    .expect("burst");
    assert_eq!(
        answers,
        usize::from(burst),
        "every query of the burst answered"
    );
    assert_ne!(up_again(&cmd_tx, old), old);

    // 11. kill -9 while a pod sends queries one after another, as a stub resolver does (one
    // second, then the same query again, three tries): the supervisor holds the socket, so
    // queries sent while no proxy runs wait for the next one; only the query the killed proxy
    // had already read is lost, and the pod's retry gets it answered.
    let (s, answered, _) = query_stream(&pod_path, Duration::from_secs(1));
    let kills = 3;
    for _ in 0..kills {
        let before = answered.load(Ordering::Relaxed);
        while answered.load(Ordering::Relaxed) < before + 20 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let old = kill(&cmd_tx);
        assert_ne!(up_again(&cmd_tx, old), old);
    }
    let before = answered.load(Ordering::Relaxed);
    while answered.load(Ordering::Relaxed) < before + 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (answered, retried, lost) = s.finish();
    eprintln!(
        "kill -9 x{kills} under a query stream: {answered} queries answered, {retried} retries \
         (a query in flight in the killed proxy), {lost} never answered"
    );
    assert_eq!(lost, 0, "every query got its answer");

    drop(cmd_tx);
    sup_thread.join().expect("supervisor thread");
}

/// A pod's stub resolver asking api.example.test in a loop, one query at a time: `timeout`,
/// then the same query again, three tries.
struct QueryStream {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl QueryStream {
    /// Stops it; (answered, retries, never answered).
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("query stream");
        (
            self.answered.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
        )
    }
}

/// Starts a [`QueryStream`] in the pod; also returns its answered and lost counters.
fn query_stream(
    pod_path: &str,
    timeout: Duration,
) -> (QueryStream, Arc<AtomicU64>, Arc<AtomicU64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let thread = {
        let (stop, answered) = (stop.clone(), answered.clone());
        let (retried, lost) = (retried.clone(), lost.clone());
        in_netns(pod_path.to_owned(), move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.connect((RESOLVER, 53)).expect("connect");
            s.set_read_timeout(Some(timeout)).expect("timeout");
            let mut id: u16 = 0;
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                id = id.wrapping_add(1);
                let q = query_bytes(id, "api.example.test.");
                let mut ok = false;
                for attempt in 0..3 {
                    if attempt > 0 {
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                    s.send(&q).expect("send");
                    let got = loop {
                        match s.recv(&mut buf) {
                            Ok(n) if n >= 4 && buf[..2] == id.to_be_bytes() => {
                                break Some(buf[3] & 0x0f == 0);
                            }
                            Ok(_) => continue, // a late answer to an earlier try
                            Err(_) => break None,
                        }
                    };
                    if let Some(noerror) = got {
                        ok = noerror;
                        break;
                    }
                }
                if ok {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let a = answered.clone();
    let l = lost.clone();
    (
        QueryStream {
            stop,
            answered,
            retried,
            lost,
            thread,
        },
        a,
        l,
    )
}

/// A namespace path usable from another thread (TestNetns itself stays with the test).
struct TestNetnsRef(String);

impl TestNetnsRef {
    fn dig(&self, name: &str, tcp: bool) -> Dig {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.0)).arg("dig");
        dig_with(c, RESOLVER, name, tcp)
    }
}

fn dig_with(mut c: Command, server: &str, name: &str, tcp: bool) -> Dig {
    c.args([
        &format!("@{server}"),
        name,
        "A",
        "+tries=1",
        "+time=20",
        "+noall",
        "+comments",
        "+answer",
    ]);
    if tcp {
        c.arg("+tcp");
    }
    let out = c.output().expect("dig");
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

fn parse_dig(text: &str) -> Dig {
    let mut d = Dig::default();
    for line in text.lines() {
        if let Some(i) = line.find("status: ") {
            d.status = line[i + 8..]
                .split(',')
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 5 && f[2] == "IN" && !line.starts_with(';') {
            match f[3] {
                "A" => d.a.push(f[4].parse().expect("ip")),
                "CNAME" => d.cnames.push(f[4].to_owned()),
                _ => {}
            }
        }
    }
    d
}
