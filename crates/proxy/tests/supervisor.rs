//! The supervisor with the real `ciliate-proxy` binary: kill -9 and graceful restarts under a
//! client that connects in a loop, and adoption by a second supervisor (an agent restart).
//!
//! No datapath here, so the accepted socket's local address (the "original destination") is
//! the proxy's own listener; the redirect for it only allows a path the client never asks
//! for, so every request is answered by the proxy itself with 403 — which proves a live proxy
//! served it, without an upstream.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ciliate_model::l7::{HttpMatch, L7Parser, L7PeerRules, L7Redirect, ProxyCommand, ProxyPorts};
use ciliate_proxy::supervisor::{ProxyStatus, Supervisor, SupervisorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(run_dir: &std::path::Path) -> SupervisorConfig {
    SupervisorConfig {
        binary: env!("CARGO_BIN_EXE_ciliate-proxy").into(),
        run_dir: run_dir.to_owned(),
        ports: ProxyPorts {
            http_egress: 0,
            http_ingress: 0,
            dns: 0,
        },
        listen_ip: "127.0.0.1".parse().expect("ip"),
        transparent: false,
        bpf_pin_dir: None,
        drain_timeout: Duration::from_secs(5),
        extra_args: vec!["--log".into(), "warn".into()],
    }
}

fn deny_all_but_never(port: u16, revision: u64) -> ProxyCommand {
    ProxyCommand::Snapshot {
        revision,
        redirects: vec![L7Redirect {
            endpoint: 1,
            endpoint_ip: "127.0.0.1".parse().expect("ip"),
            egress: true,
            proto: 6,
            port,
            parser: L7Parser::Http,
            proxy_port: port,
            rules: vec![L7PeerRules {
                peers: None,
                rule: 1,
                http: vec![HttpMatch {
                    path: Some("/never".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }],
    }
}

/// Kills the proxy a test leaves behind (it runs in a process group of its own and would
/// outlive us).
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

async fn wait_up(sup: &Supervisor, not_pid: Option<u32>) -> ProxyStatus {
    let start = Instant::now();
    loop {
        let st = sup.status();
        if st.up && st.pid.is_some() && st.pid != not_pid {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "proxy not up: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// One request per connection, in a loop: connect, GET, expect the proxy's 403.
async fn client_loop(addr: SocketAddrV4, load: Arc<Load>) {
    while !load.stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connect: {e}");
                load.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let r = async {
            s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        match tokio::time::timeout(Duration::from_secs(30), r).await {
            Ok(Ok(out)) if out.starts_with(b"HTTP/1.1 403") => {
                load.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                eprintln!("request failed: {other:?}");
                load.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn start(dir: &std::path::Path) -> (Supervisor, SocketAddrV4, ProxyStatus) {
    let sup = Supervisor::start(config(dir)).await.expect("supervisor");
    let st = wait_up(&sup, None).await;
    let port = st.listeners.iter().find(|l| l.egress).expect("egress").port;
    sup.apply(deny_all_but_never(port, 1)).await;
    let addr = SocketAddrV4::new("127.0.0.1".parse().expect("ip"), port);
    // The rule is in force once applied.
    let start = Instant::now();
    while sup.status().applied_revision != Some(1) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            sup.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sup, addr, st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_refuses_no_connection_and_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_owned());
    let (sup, addr, mut st) = start(dir.path()).await;
    let load = Arc::new(Load::default());
    let client = tokio::spawn(client_loop(addr, load.clone()));
    let kills = 5;
    let mut back = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pid = st.pid.expect("pid");
        let before = load.ok.load(Ordering::Relaxed);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        let t = Instant::now();
        st = wait_up(&sup, Some(pid)).await;
        back.push(t.elapsed());
        // And it serves again.
        while load.ok.load(Ordering::Relaxed) <= before + 1 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no request served after the kill"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    load.stop.store(true, Ordering::Relaxed);
    client.await.expect("client");
    let (ok, refused, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.refused.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    eprintln!("kill -9 x{kills}: requests ok {ok}, refused {refused}, failed {failed}; back up after {back:?}");
    assert_eq!(refused, 0, "connections refused");
    // Only a request the killed proxy had already accepted can fail: at most one per kill.
    assert!(
        failed <= kills,
        "{failed} failed requests for {kills} kills"
    );
    assert_eq!(sup.status().restarts, kills);
    // The policy came back with every proxy: a request is still answered by the rule (403).
    assert!(ok > kills * 2);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_fails_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_owned());
    let (sup, addr, _) = start(dir.path()).await;
    let load = Arc::new(Load::default());
    let client = tokio::spawn(client_loop(addr, load.clone()));
    let mut pids = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sup.restart().await.expect("restart");
        pids.push(sup.status().pid.expect("pid"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    load.stop.store(true, Ordering::Relaxed);
    client.await.expect("client");
    let (ok, refused, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.refused.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    eprintln!("graceful x3: requests ok {ok}, refused {refused}, failed {failed}; pids {pids:?}");
    assert_eq!((refused, failed), (0, 0));
    assert!(ok > 3);
    pids.dedup();
    assert_eq!(pids.len(), 3, "each restart is a new process");
    // The proxy's counters reach the status (it reports them every second).
    let t = Instant::now();
    loop {
        let st = sup.status();
        if let Some(stats) = st.stats.filter(|s| Some(s.pid) == st.pid && s.requests > 0) {
            assert_eq!(stats.denied, stats.requests, "{stats:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no stats: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_supervisor_adopts_the_running_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_owned());
    let (sup, addr, st) = start(dir.path()).await;
    let pid = st.pid.expect("pid");
    let port = addr.port();
    // The agent goes away without stopping the proxy.
    drop(sup);
    let load = Arc::new(Load::default());
    let client = tokio::spawn(client_loop(addr, load.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new agent: same run directory.
    let sup2 = Supervisor::start(config(dir.path()))
        .await
        .expect("supervisor");
    let st2 = wait_up(&sup2, None).await;
    assert!(st2.adopted, "{st2:?}");
    assert_eq!(st2.pid, Some(pid), "the same process serves on");
    assert_eq!(
        st2.listeners.iter().find(|l| l.egress).map(|l| l.port),
        Some(port)
    );
    sup2.apply(deny_all_but_never(port, 2)).await;
    // The adopted proxy is supervised: kill -9 brings a new one on the same sockets.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let st3 = wait_up(&sup2, Some(pid)).await;
    assert!(st3.pid != Some(pid));
    let before = load.ok.load(Ordering::Relaxed);
    let t = Instant::now();
    while load.ok.load(Ordering::Relaxed) <= before + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no request served after the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    load.stop.store(true, Ordering::Relaxed);
    client.await.expect("client");
    let (ok, refused, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.refused.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    eprintln!("adoption: requests ok {ok}, refused {refused}, failed {failed}");
    assert_eq!(refused, 0);
    assert!(failed <= 1);
    sup2.shutdown().await;
}

/// (process group, session) of a process, from `/proc/<pid>/stat` (after the command's
/// parenthesis: state, ppid, pgrp, session).
fn group_and_session(pid: u32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    let f: Vec<i32> = after
        .split_whitespace()
        .skip(2)
        .take(2)
        .map(|v| v.parse().expect("number"))
        .collect();
    (f[0], f[1])
}

/// The proxy outlives the agent in a process group of its own, but in the agent's session:
/// a session of its own would also make it an autogroup of its own (where autogroups apply),
/// and the agent's background threads would no longer give way to it (`spawn`'s notes). It
/// ignores the hangup of a terminal it shares with the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_runs_in_a_group_of_its_own_in_the_agents_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_owned());
    let (sup, _addr, st) = start(dir.path()).await;
    let pid = st.pid.expect("pid");
    let (pgrp, session) = group_and_session(pid);
    let (_, our_session) = group_and_session(std::process::id());
    assert_eq!(
        pgrp, pid as i32,
        "the proxy leads a process group of its own"
    );
    assert_eq!(
        session, our_session,
        "the proxy stays in the agent's session"
    );
    // Where autogroups are on (CONFIG_SCHED_AUTOGROUP), it is in the agent's.
    if let Ok(ours) = std::fs::read_to_string("/proc/self/autogroup") {
        let its = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).expect("autogroup");
        let group = |s: &str| s.split_whitespace().next().map(str::to_owned);
        assert_eq!(group(&its), group(&ours), "the proxy's autogroup");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).expect("SigIgn mask"))
        .expect("SigIgn");
    assert_ne!(
        ignored & (1 << (libc::SIGHUP - 1)),
        0,
        "SIGHUP ignored: {ignored:x}"
    );
    sup.shutdown().await;
}
