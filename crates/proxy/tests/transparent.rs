//! Transparent mode without our BPF: three namespaces (client, proxy node, server), nftables
//! `tproxy` in the node's namespace standing in for the datapath's `bpf_sk_assign`. Shows that
//! the supervisor's IP_TRANSPARENT listeners get the connection with its original destination,
//! that the proxy applies the redirect of the client endpoint, and that the server sees the
//! client's own address (the upstream socket is bound to it with IP_TRANSPARENT).

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use ciliate_model::l7::{
    HttpMatch, L7Parser, L7PeerRules, L7RecordType, L7Redirect, ProxyCommand, ProxyEvent,
    ProxyPorts,
};
use ciliate_proxy::supervisor::{Supervisor, SupervisorConfig};
use ciliate_testutil::{run, unique_name, TestNetns};

const CLIENT: &str = "10.231.1.2";
const NODE_C: &str = "10.231.1.1";
const SERVER: &str = "10.231.2.2";
const NODE_S: &str = "10.231.2.1";

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

fn veth(a_ns: &TestNetns, a_ip: &str, b_ns: &TestNetns, b_ip: &str) -> (String, String) {
    let a = unique_name("pxa");
    let b = unique_name("pxb");
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
    (a, b)
}

/// A one-request-per-connection HTTP server answering who connected to whom.
fn server(l: TcpListener) {
    for s in l.incoming() {
        let Ok(s) = s else { return };
        std::thread::spawn(move || serve_one(s));
    }
}

fn serve_one(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    if buf.starts_with(b"GET /slow") {
        // Long enough for a graceful restart of the proxy to happen meanwhile.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let body = format!(
        "peer={} local={}",
        s.peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
        s.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn request(path: &str) -> String {
    let mut s = TcpStream::connect_timeout(
        &format!("{SERVER}:80").parse().expect("addr"),
        Duration::from_secs(10),
    )
    .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn tproxy_gives_original_destination_and_the_upstream_keeps_the_client_address() {
    ciliate_testutil::privileged!();
    if Command::new("nft").arg("--version").output().is_err() {
        assert!(
            !ciliate_testutil::privileged_required(),
            "nft is missing and CILIATE_REQUIRE_PRIVILEGED=1"
        );
        eprintln!("\n!!! SKIPPED: nft (nftables) is not installed. !!!\n");
        return;
    }
    let cli = TestNetns::new("pxc");
    let node = TestNetns::new("pxn");
    let srv = TestNetns::new("pxs");
    let (_, node_c_if) = veth(&cli, CLIENT, &node, NODE_C);
    veth(&srv, SERVER, &node, NODE_S);
    cli.exec("ip", &["route", "add", "default", "via", NODE_C]);
    srv.exec("ip", &["route", "add", "default", "via", NODE_S]);
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);

    // The server.
    let srv_listener = in_netns(srv.path(), || {
        TcpListener::bind(format!("{SERVER}:80")).expect("bind")
    })
    .join()
    .expect("bind thread");
    std::thread::spawn(move || server(srv_listener));

    // The supervisor and the proxy, in the node's namespace.
    let run_dir = tempfile::tempdir().expect("tempdir");
    let cfg = SupervisorConfig {
        binary: env!("CARGO_BIN_EXE_ciliate-proxy").into(),
        run_dir: run_dir.path().to_owned(),
        ports: ProxyPorts {
            http_egress: 0,
            http_ingress: 0,
            dns: 0,
        },
        listen_ip: "0.0.0.0".parse().expect("ip"),
        transparent: true,
        bpf_pin_dir: None,
        drain_timeout: Duration::from_secs(2),
        extra_args: vec!["--log".into(), "warn".into()],
    };
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<std::sync::mpsc::Sender<(u32, u32)>>(1);
    let (rec_tx, rec_rx) = std::sync::mpsc::channel();
    let sup_thread = in_netns(node.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sup = Supervisor::start(cfg).await.expect("supervisor");
            let mut events = sup.events();
            let port = sup
                .status()
                .listeners
                .iter()
                .find(|l| l.egress)
                .expect("egress")
                .port;
            sup.apply(ProxyCommand::Snapshot {
                revision: 1,
                redirects: vec![L7Redirect {
                    endpoint: 9,
                    endpoint_ip: CLIENT.parse().expect("ip"),
                    egress: true,
                    proto: 6,
                    port: 80,
                    parser: L7Parser::Http,
                    proxy_port: port,
                    rules: vec![L7PeerRules {
                        peers: None,
                        rule: 3,
                        http: vec![HttpMatch {
                            method: Some("GET".into()),
                            path: Some("/allowed|/slow".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                }],
            })
            .await;
            loop {
                let st = sup.status();
                if st.up && st.applied_revision == Some(1) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            port_tx.send(port).expect("port");
            let forward = async {
                while let Ok(ev) = events.recv().await {
                    if let ProxyEvent::HttpFrame(f) = ev {
                        let _ = rec_tx.send(f.record());
                    }
                }
            };
            tokio::pin!(forward);
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => match cmd {
                        // A graceful restart; answers (old pid, new pid).
                        Some(reply) => {
                            let old = sup.status().pid.unwrap_or(0);
                            sup.restart().await.expect("restart");
                            let _ = reply.send((old, sup.status().pid.unwrap_or(0)));
                        }
                        None => break,
                    },
                    _ = &mut forward => break,
                }
            }
            sup.shutdown().await;
        });
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("proxy up");

    // What the datapath does with bpf_sk_assign, done here with nftables tproxy: the client's
    // port-80 connections go to the proxy's transparent listener, and packets of transparent
    // sockets (the accepted ones, and the upstream replies to the client's address) are
    // delivered locally.
    let rules = format!(
        "table ip ciliate_test {{
            chain pre {{
                type filter hook prerouting priority mangle; policy accept;
                meta l4proto tcp socket transparent 1 meta mark set 1 accept
                iifname \"{node_c_if}\" tcp dport 80 tproxy to :{port} meta mark set 1 accept
            }}
        }}"
    );
    let mut nft = node.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().expect("nft");
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

    let cli_path = cli.path();
    let (allowed, denied) = in_netns(cli_path, || (request("/allowed"), request("/secret")))
        .join()
        .expect("client");
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    // The server saw the client's own address, and was reached at the original destination.
    assert!(
        allowed.ends_with(&format!("peer={CLIENT} local={SERVER}:80")),
        "{allowed}"
    );
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.ends_with("Access denied\r\n"), "{denied}");

    let mut recs = Vec::new();
    while recs.len() < 4 {
        recs.push(
            rec_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("record"),
        );
    }
    let dst: SocketAddrV4 = format!("{SERVER}:80").parse().expect("addr");
    assert!(recs
        .iter()
        .all(|r| r.destination == dst && r.source.ip().to_string() == CLIENT && r.endpoint == 9));
    assert!(recs
        .iter()
        .any(|r| r.record_type == L7RecordType::Response && r.code == 200 && r.rule == 3));
    assert!(recs
        .iter()
        .any(|r| r.record_type == L7RecordType::Response && r.code == 403));

    // A graceful restart while a request is in flight: the old proxy finishes it, the new
    // one serves the next request, from the same sockets.
    let slow = in_netns(cli.path(), || request("/slow"));
    std::thread::sleep(Duration::from_millis(300));
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    cmd_tx.blocking_send(reply_tx).expect("restart request");
    let (old_pid, new_pid) = reply_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("restarted");
    assert_ne!(old_pid, new_pid);
    let after = in_netns(cli.path(), || request("/allowed"))
        .join()
        .expect("client");
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    let slow = slow.join().expect("slow client");
    assert!(
        slow.starts_with("HTTP/1.1 200"),
        "the request in flight was cut: {slow:?}"
    );
    assert!(
        slow.ends_with(&format!("peer={CLIENT} local={SERVER}:80")),
        "{slow}"
    );

    drop(cmd_tx);
    sup_thread.join().expect("supervisor thread");
}
