//! The real server on a temporary unix socket, spoken to over HTTP/1.1; and the binary itself,
//! started and stopped with SIGTERM. All with the fake datapath: no root needed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ciliate_agent::config::{Config, StaticEnvironment};
use ciliate_agent::server::{run_with_datapath, AgentError};
use ciliate_datapath::FakeDatapath;
use ciliate_model::monitor::{EventKind, MonitorEvent};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::watch;

fn config(dir: &Path) -> Config {
    let env = StaticEnvironment {
        hostname: Some("node-s".into()),
        ..Default::default()
    };
    let socket = dir.join("run/agent.sock").display().to_string();
    let state = dir.join("state").display().to_string();
    Config::parse_from(
        [
            "ciliate-agent",
            "--datapath",
            "fake",
            "--socket",
            &socket,
            "--state-dir",
            &state,
        ],
        &env,
    )
    .expect("config")
}

async fn send(socket: &Path, method: &str, uri: &str, body: Option<Value>) -> Response<Incoming> {
    let stream = UnixStream::connect(socket).await.expect("connects");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "agent");
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(&v).expect("serialises")))
        }
        None => Full::new(Bytes::new()),
    };
    sender
        .send_request(req.body(body).expect("request"))
        .await
        .expect("answer")
}

async fn call(socket: &Path, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let resp = send(socket, method, uri, body).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

async fn wait_for_socket(socket: &Path) {
    for _ in 0..500 {
        if UnixStream::connect(socket).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent never listened on {}", socket.display());
}

fn create_body(cid: &str, ifindex: u32) -> Value {
    json!({
        "containerId": cid,
        "ifname": "eth0",
        "netns": "/var/run/netns/x",
        "pod": {"namespace": "default", "name": cid},
        "hostIfname": format!("lxc{ifindex}"),
        "hostIfindex": ifindex,
        "hostMac": "02:00:00:00:00:01",
        "mac": "02:00:00:00:00:02"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http_on_the_socket_and_shuts_down_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path());
    let socket = cfg.socket.clone();
    let dp = Arc::new(FakeDatapath::new());
    let (tx, rx) = watch::channel(false);
    let agent = tokio::spawn(run_with_datapath(cfg.clone(), dp.clone(), rx));
    wait_for_socket(&socket).await;

    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "root-only socket");

    // A second agent on the same socket is refused and leaves the first alone.
    let (_tx2, rx2) = watch::channel(false);
    let err = run_with_datapath(cfg.clone(), Arc::new(FakeDatapath::new()), rx2)
        .await
        .expect_err("socket in use");
    assert!(matches!(err, AgentError::Socket(_)), "{err}");
    assert!(err.to_string().contains("already serving"), "{err}");

    let (s, created) = call(&socket, "POST", "/v1/endpoints", Some(create_body("c1", 3))).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["address"], "10.200.0.2/32");
    let (s, status) = call(&socket, "GET", "/v1/status", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status["endpoints"], 1);
    assert_eq!(status["node"], "node-s");
    let (s, err) = call(&socket, "GET", "/v1/endpoints/zzz", None).await;
    assert_eq!(
        (s, err["kind"].as_str()),
        (StatusCode::NOT_FOUND, Some("not-found"))
    );

    // The monitor streams over the socket, one JSON per line, as events happen.
    let resp = send(&socket, "GET", "/v1/monitor?type=drop", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let ev = MonitorEvent {
        kind: EventKind::Drop,
        time: "2024-01-01T00:00:00Z".into(),
        code: 133,
        reason: "Policy denied".into(),
        endpoint: 1,
        ifindex: 3,
        src_identity: 2,
        dst_identity: 256,
        ct_state: String::new(),
        len: 60,
        ethertype: 0x0800,
        src: None,
        dst: None,
        l4: None,
        rev_nat: 0,
        rule: 0,
        ethernet: None,
    };
    dp.emit(ev.clone());
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(d) = frame.into_data() {
            line.extend_from_slice(&d);
        }
    }
    assert_eq!(
        serde_json::from_slice::<MonitorEvent>(&line).expect("event"),
        ev
    );

    // Shutdown ends the monitor stream, stops the server and removes the socket.
    tx.send(true).expect("agent listens");
    let done = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops in time")
        .expect("no panic");
    done.expect("clean exit");
    assert!(!socket.exists(), "socket removed");
    assert_eq!(dp.programmed().len(), 1, "nothing detached on shutdown");

    // A restart over the same state serves the same endpoint.
    let (tx, rx) = watch::channel(false);
    let agent = tokio::spawn(run_with_datapath(cfg, dp.clone(), rx));
    wait_for_socket(&socket).await;
    let (s, ep) = call(&socket, "GET", "/v1/endpoints/c1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ep["ipv4"], "10.200.0.2");
    assert_eq!(ep["state"], "ready");
    tx.send(true).expect("agent listens");
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops in time")
        .expect("no panic")
        .expect("clean exit");
}

/// Kills the child when the test fails half-way.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ciliate-agent"))
}

#[test]
fn binary_help_and_sigterm() {
    let help = Command::new(agent_bin())
        .arg("--help")
        .output()
        .expect("runs");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--pod-cidr") && text.contains("CILIATE_POD_CIDR"),
        "{text}"
    );

    let bad = Command::new(agent_bin())
        .args(["--pod-cidr", "10.0.0.0/31"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/30"),
        "{:?}",
        bad
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("agent.sock");
    let child = Command::new(agent_bin())
        .args([
            "--datapath",
            "fake",
            "--node-name",
            "bin-node",
            "--log-format",
            "json",
        ])
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut child = Child(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "agent never listened");
        if let Some(status) = child.0.try_wait().expect("wait") {
            panic!("agent exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit 0 on SIGTERM, got {status}");
    assert!(!socket.exists(), "socket removed on exit");
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut stderr).expect("stderr");
    }
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<Value>(first).is_ok(),
        "--log-format json writes JSON lines: {stderr}"
    );
    assert!(tmp.path().join("state/bin-node/state.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_directory_is_served_and_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    let service = |port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80, nodePort: {port}}}]\n"
        )
    };
    std::fs::write(manifests.join("web.yaml"), service(30080)).expect("write");
    let env = StaticEnvironment {
        hostname: Some("node-m".into()),
        ..Default::default()
    };
    let socket = tmp.path().join("agent.sock");
    let cfg = Config::parse_from(
        [
            "ciliate-agent",
            "--datapath=fake",
            &format!("--socket={}", socket.display()),
            &format!("--state-dir={}", tmp.path().join("state").display()),
            &format!("--manifest-dir={}", manifests.display()),
            "--node-ip=192.168.7.1",
        ],
        &env,
    )
    .expect("config");
    let (tx, rx) = watch::channel(false);
    let agent = tokio::spawn(run_with_datapath(cfg, Arc::new(FakeDatapath::new()), rx));
    wait_for_socket(&socket).await;

    let node_port = |v: &Value| {
        v["frontends"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["kind"] == "NodePort"))
            .map(|f| format!("{}:{}", f["addr"].as_str().unwrap_or_default(), f["port"]))
    };
    let (s, web) = call(&socket, "GET", "/v1/services/default/web", None).await;
    assert_eq!(s, StatusCode::OK, "read before the API serves: {web}");
    assert_eq!(node_port(&web).as_deref(), Some("192.168.7.1:30080"));

    // A change is picked up by the poll (every 2 s).
    std::fs::write(manifests.join("web.yaml"), service(30081)).expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, web) = call(&socket, "GET", "/v1/services/default/web", None).await;
        if node_port(&web).as_deref() == Some("192.168.7.1:30081") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reloaded: {web}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tx.send(true).expect("agent listens");
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops in time")
        .expect("no panic")
        .expect("clean exit");
}
