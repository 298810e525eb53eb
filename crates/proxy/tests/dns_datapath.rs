//! The DNS proxy behind the real datapath: two pods wired as the CNI plugin wires them in a
//! node namespace of their own, the BPF programs loaded and attached as the agent does, the
//! proxy's policy routing, the supervisor with the real `ciliate-proxy` on the DNS port, and
//! Debian's `dnsmasq` as the resolver in pod B. Pod A's policy sends its DNS to B (UDP and TCP
//! port 53) to the proxy: `dig` in A gets allowed names answered (through the veth program's
//! `bpf_sk_assign`, the proxy, the node's query to B, and the answer from B's address back
//! through conntrack) and other names REFUSED, and the records carry both pods' identities
//! read from the pinned maps.
//!
//! Needs root, dnsmasq and dig; without them it says SKIP.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ciliate_datapath::linux::{purge_node_pins, LinuxConfig, LinuxDatapath};
use ciliate_datapath::netlink::{disable_rp_filter, Netlink, PodInterface};
use ciliate_datapath::netns::NetNs;
use ciliate_datapath::{Datapath, EndpointSpec};
use ciliate_model::api::GATEWAY_IPV4;
use ciliate_model::bpf_policy::{EndpointPolicy, MatchKind, PolicyMapEntry};
use ciliate_model::l7::{
    DnsMatch, DnsRecord, L7Parser, L7PeerRules, L7RecordType, L7Redirect, L7Verdict, ProxyCommand,
    ProxyEvent, ProxyPorts,
};
use ciliate_proxy::supervisor::{Supervisor, SupervisorConfig};
use ciliate_testutil::{unique_name, TestNetns};
use ipnet::Ipv4Net;

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 11);
const ID_A: u32 = 81001;
const ID_B: u32 = 81002;
const DNS_PORT: u16 = 15053;

struct Pins(LinuxConfig);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = purge_node_pins(&self.0);
    }
}

/// dnsmasq, killed on drop.
struct Dnsmasq {
    child: std::process::Child,
    _conf: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the proxy the test leaves behind (it runs in a process group of its own).
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

/// Wires a pod as the CNI plugin does (veth, /32, gateway, permanent neighbour, host route).
async fn wire(nl: &Netlink, pod: &str, id: u16, ip: Ipv4Addr, identity: u32) -> EndpointSpec {
    let host_name = unique_name("dph");
    let tmp_name = unique_name("dpt");
    let (host, _) = nl.create_veth(&host_name, &tmp_name).await.unwrap();
    let pod_ns = NetNs::open(pod).unwrap();
    nl.move_link(&tmp_name, &pod_ns).await.unwrap();
    let nl_pod = Netlink::connect_in(&pod_ns).unwrap();
    let host_mac = host.mac.unwrap();
    let eth0 = nl_pod
        .configure_pod_interface(&PodInterface {
            current_name: tmp_name,
            ifname: "eth0".into(),
            mac: None,
            mtu: None,
            address: Ipv4Net::from(ip),
            gateway: GATEWAY_IPV4,
            gateway_mac: host_mac,
        })
        .await
        .unwrap();
    let host = nl.configure_host_veth(&host_name, ip, None).await.unwrap();
    // As the CNI plugin does: both queues attached before the first packet.
    assert!(nl.settle_link(&host_name).await.unwrap());
    assert!(nl_pod.settle_link("eth0").await.unwrap());
    disable_rp_filter(&host_name).unwrap();
    EndpointSpec {
        id,
        ifname: host_name,
        ifindex: host.index,
        ipv4: ip,
        mac: eth0.mac.unwrap(),
        host_mac,
        identity,
    }
}

fn entry(proto: u8, egress: bool, identity: u32, port: u16, proxy_port: u16) -> PolicyMapEntry {
    PolicyMapEntry {
        identity,
        egress,
        proto: Some(proto),
        port,
        port_prefix_len: 16,
        deny: false,
        kind: MatchKind::L3L4,
        rule: 1,
        proxy_port,
    }
}

fn redirect(proto: u8) -> L7Redirect {
    L7Redirect {
        endpoint: 1,
        endpoint_ip: IP_A,
        egress: true,
        proto,
        port: 53,
        parser: L7Parser::Dns,
        proxy_port: DNS_PORT,
        rules: vec![L7PeerRules {
            peers: Some(vec![ID_B]),
            rule: 5,
            dns: vec![DnsMatch {
                match_name: None,
                match_pattern: Some("*.allowed.test".into()),
            }],
            ..Default::default()
        }],
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

/// `dig` in `ns` for `name` A at B: (status, addresses).
fn dig(ns: &TestNetns, name: &str, tcp: bool) -> (String, Vec<String>) {
    let mut c = ns.command("dig");
    c.args([
        &format!("@{IP_B}"),
        name,
        "A",
        "+tries=1",
        "+time=10",
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
            (f.len() == 5 && f[3] == "A").then(|| f[4].to_owned())
        })
        .collect();
    (status, ips)
}

#[test]
fn pods_dns_goes_through_the_datapath_to_the_dns_proxy_and_back() {
    ciliate_testutil::privileged!();
    if tool_missing("dnsmasq", "--version") || tool_missing("dig", "-v") {
        return;
    }
    let node = TestNetns::new("dpn");
    let pod_a = TestNetns::new("dpa");
    let pod_b = TestNetns::new("dpb");
    let pins = Pins(LinuxConfig {
        node_name: unique_name("dpnode"),
        bpffs_root: "/sys/fs/bpf".into(),
        socket_lb_cgroup: None,
    });
    let cfg = pins.0.clone();
    let pin_dir = cfg.pin_dir();
    let run_dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(run_dir.path().to_owned());

    // The node: pods wired, the datapath loaded, A's DNS to B sent to the proxy's port.
    let (a_path, b_path, run) = (pod_a.path(), pod_b.path(), run_dir.path().to_owned());
    let (rec_tx, rec_rx) = mpsc::channel::<DnsRecord>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node_ns = NetNs::open(node.path()).unwrap();
    let node_thread = std::thread::spawn(move || {
        node_ns
            .run_in(move || {
                for conf in ["all", "default"] {
                    disable_rp_filter(conf).unwrap();
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _rt = rt.enter();
                let nl = Netlink::connect().unwrap();
                let (a, b) = rt.block_on(async {
                    let a = wire(&nl, &a_path, 1, IP_A, ID_A).await;
                    let b = wire(&nl, &b_path, 2, IP_B, ID_B).await;
                    nl.install_proxy_routing().await.unwrap();
                    (a, b)
                });
                let dp = LinuxDatapath::open(cfg).unwrap();
                dp.upsert_endpoint(&a).unwrap();
                dp.upsert_endpoint(&b).unwrap();
                let mut entries = vec![
                    entry(17, true, ID_B, 53, DNS_PORT),
                    entry(6, true, ID_B, 53, DNS_PORT),
                ];
                entries.sort();
                dp.set_endpoint_policy(
                    &a,
                    &EndpointPolicy {
                        ingress_enforced: false,
                        egress_enforced: true,
                        entries,
                    },
                )
                .unwrap();
                rt.block_on(async move {
                    let sup = Supervisor::start(SupervisorConfig {
                        binary: env!("CARGO_BIN_EXE_ciliate-proxy").into(),
                        run_dir: run,
                        ports: ProxyPorts {
                            http_egress: 0,
                            http_ingress: 0,
                            dns: DNS_PORT,
                        },
                        listen_ip: Ipv4Addr::UNSPECIFIED,
                        transparent: true,
                        bpf_pin_dir: Some(pin_dir),
                        drain_timeout: Duration::from_secs(2),
                        extra_args: vec!["--log".into(), "warn".into()],
                    })
                    .await
                    .expect("supervisor");
                    let mut events = sup.events();
                    sup.apply(ProxyCommand::Snapshot {
                        revision: 1,
                        redirects: vec![redirect(17), redirect(6)],
                    })
                    .await;
                    while !(sup.status().up && sup.status().applied_revision == Some(1)) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    ready_tx.send(()).unwrap();
                    let agent = async {
                        loop {
                            match events.recv().await {
                                // The agent's part: the addresses are "in the maps" at once.
                                Ok(ProxyEvent::FqdnLearned(l)) => {
                                    sup.apply(ProxyCommand::FqdnAllowed { id: l.id }).await;
                                }
                                // The supervisor hands DNS records on as their frames.
                                Ok(ProxyEvent::DnsFrame(f)) => {
                                    let _ = rec_tx.send(f.record());
                                }
                                Ok(_)
                                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                                Err(_) => return,
                            }
                        }
                    };
                    tokio::select! {
                        _ = agent => {}
                        _ = stop_rx => {}
                    }
                    let redirects = dp.proxy_redirects();
                    sup.shutdown().await;
                    nl.remove_proxy_routing().await.unwrap();
                    redirects
                })
            })
            .expect("enter the node's namespace")
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("node and proxy up");

    // The resolver, in pod B.
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let conf = conf_dir.path().join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={IP_B}\nport=53\n\
             local=/test/\nhost-record=api.allowed.test,192.0.2.50\n\
             host-record=api.denied.test,192.0.2.51\n"
        ),
    )
    .unwrap();
    let child = pod_b
        .command("dnsmasq")
        .args(["--no-daemon", "--user=root", "--pid-file", "-C"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    let _dnsmasq = Dnsmasq {
        child,
        _conf: conf_dir,
    };
    let start = Instant::now();
    while dig(&pod_b, "api.allowed.test", false).0 != "NOERROR" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "dnsmasq did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A node without an address of its own cannot ask the resolver (the proxy queries from
    // the node's address): SERVFAIL at once, and an error record that says why.
    let (status, _) = dig(&pod_a, "api.allowed.test", false);
    assert_eq!(status, "SERVFAIL");
    let why = loop {
        let r = rec_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("records");
        if r.verdict == L7Verdict::Error {
            break r.reason.unwrap_or_default();
        }
    };
    assert!(why.contains("the node has no address"), "{why}");
    // A real node has one.
    node.exec("ip", &["addr", "add", "10.81.255.1/32", "dev", "lo"]);

    for tcp in [false, true] {
        let (status, ips) = dig(&pod_a, "api.allowed.test", tcp);
        assert_eq!(
            (status.as_str(), ips),
            ("NOERROR", vec!["192.0.2.50".to_owned()]),
            "tcp={tcp}"
        );
        let (status, ips) = dig(&pod_a, "api.denied.test", tcp);
        assert_eq!(status, "REFUSED", "tcp={tcp}");
        assert!(ips.is_empty());
    }
    let mut recs = Vec::new();
    while recs.len() < 8 {
        recs.push(
            rec_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("records"),
        );
    }
    let b53 = SocketAddrV4::new(IP_B, 53);
    for r in &recs {
        assert_eq!(
            (r.endpoint, r.destination, *r.source.ip()),
            (1, b53, IP_A),
            "{r:?}"
        );
        assert_eq!(
            (r.source_identity, r.destination_identity),
            (ID_A, ID_B),
            "identities from the pinned maps: {r:?}"
        );
    }
    let answered: Vec<_> = recs
        .iter()
        .filter(|r| r.record_type == L7RecordType::Response)
        .map(|r| (r.query.as_str(), r.proto, r.verdict, r.rcode))
        .collect();
    assert_eq!(
        answered,
        [
            ("api.allowed.test.", 17, L7Verdict::Forwarded, 0),
            ("api.denied.test.", 17, L7Verdict::Dropped, 5),
            ("api.allowed.test.", 6, L7Verdict::Forwarded, 0),
            ("api.denied.test.", 6, L7Verdict::Dropped, 5),
        ]
    );
    let _ = stop_tx.send(());
    let redirects = node_thread.join().expect("node thread");
    assert!(
        redirects >= 4,
        "the datapath handed {redirects} packets to the proxy"
    );
}
