//! The supervisor's DNS sockets with the real `ciliate-proxy`, without a datapath: queries
//! sent straight to the DNS port on 127.0.0.1 (the "original destination" is the proxy's own
//! address, for which a DNS redirect allows no name, so the proxy answers REFUSED itself: a
//! live proxy on the supervisor's socket answered). The sockets are passed to every proxy, left
//! in the state file, and taken back by a new supervisor (an agent restart) with the proxy.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ciliate_model::l7::{DnsMatch, L7Parser, L7PeerRules, L7Redirect, ProxyCommand, ProxyPorts};
use ciliate_proxy::supervisor::{ProxyStatus, SocketKind, Supervisor, SupervisorConfig};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

fn free_port() -> u16 {
    // Free for UDP and TCP now; nothing else on this machine binds ports in this range on
    // purpose, and a clash only fails the supervisor's start loudly.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = u.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn config(run_dir: &std::path::Path, dns: u16) -> SupervisorConfig {
    SupervisorConfig {
        binary: env!("CARGO_BIN_EXE_ciliate-proxy").into(),
        run_dir: run_dir.to_owned(),
        ports: ProxyPorts {
            http_egress: 0,
            http_ingress: 0,
            dns,
        },
        listen_ip: Ipv4Addr::LOCALHOST,
        transparent: false,
        bpf_pin_dir: None,
        drain_timeout: Duration::from_secs(2),
        extra_args: vec!["--log".into(), "warn".into()],
    }
}

fn refuse_all(port: u16, revision: u64) -> ProxyCommand {
    let redirect = |proto| L7Redirect {
        endpoint: 1,
        endpoint_ip: Ipv4Addr::LOCALHOST,
        egress: true,
        proto,
        port,
        parser: L7Parser::Dns,
        proxy_port: port,
        rules: vec![L7PeerRules {
            peers: None,
            rule: 1,
            dns: vec![DnsMatch {
                match_name: Some("never.example".into()),
                match_pattern: None,
            }],
            ..Default::default()
        }],
    };
    ProxyCommand::Snapshot {
        revision,
        redirects: vec![redirect(17), redirect(6)],
    }
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

async fn wait_up(sup: &Supervisor, not_pid: Option<u32>, revision: Option<u64>) -> ProxyStatus {
    let start = Instant::now();
    loop {
        let st = sup.status();
        if st.up
            && st.pid.is_some()
            && st.pid != not_pid
            && (revision.is_none() || st.applied_revision >= revision)
        {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "proxy not up: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asks the DNS port over UDP; the rcode of the answer.
async fn ask(port: u16, id: u16) -> ResponseCode {
    tokio::task::spawn_blocking(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut m = Message::new();
        m.set_id(id).set_recursion_desired(true);
        m.add_query(Query::query(
            Name::from_ascii("x.example.").expect("name"),
            RecordType::A,
        ));
        s.send(&m.to_vec().expect("query")).expect("send");
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).expect("an answer");
        let a = Message::from_vec(&buf[..n]).expect("well-formed");
        assert_eq!(a.id(), id);
        a.response_code()
    })
    .await
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dns_sockets_serve_every_proxy_generation_and_survive_an_agent_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_owned());
    let port = free_port();
    let sup = Supervisor::start(config(dir.path(), port))
        .await
        .expect("supervisor");
    sup.apply(refuse_all(port, 1)).await;
    let st = wait_up(&sup, None, Some(1)).await;
    let kinds: Vec<(SocketKind, u16)> = st.listeners.iter().map(|l| (l.kind, l.port)).collect();
    assert!(kinds.contains(&(SocketKind::DnsUdp, port)), "{kinds:?}");
    assert!(kinds.contains(&(SocketKind::DnsTcp, port)), "{kinds:?}");
    assert_eq!(ask(port, 1).await, ResponseCode::Refused);

    // kill -9: the next proxy answers on the same socket.
    let pid = st.pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    assert_eq!(ask(port, 2).await, ResponseCode::Refused);
    let st = wait_up(&sup, Some(pid), Some(1)).await;

    // The agent goes away without stopping the proxy; a new one adopts it, DNS sockets too.
    drop(sup);
    let sup2 = Supervisor::start(config(dir.path(), port))
        .await
        .expect("supervisor");
    let st2 = wait_up(&sup2, None, None).await;
    assert!(st2.adopted, "{st2:?}");
    assert_eq!(st2.pid, st.pid, "the same process serves on");
    assert!(
        st2.listeners
            .iter()
            .any(|l| (l.kind, l.port) == (SocketKind::DnsUdp, port)),
        "{st2:?}"
    );
    assert_eq!(ask(port, 3).await, ResponseCode::Refused);
    sup2.apply(refuse_all(port, 2)).await;
    // And after the adopted proxy dies, its successor gets the DNS sockets taken back.
    let pid = st2.pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    assert_eq!(ask(port, 4).await, ResponseCode::Refused);
    let st3 = wait_up(&sup2, Some(pid), Some(2)).await;
    assert_ne!(st3.pid, Some(pid));
    sup2.shutdown().await;
}
