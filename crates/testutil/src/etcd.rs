//! A throwaway single-member etcd for tests: `/usr/bin/etcd` on free loopback ports with its
//! own data directory, killed and removed on drop.
//!
//! Where etcd is not installed, [`TestEtcd::start`] prints a loud SKIP and returns `None`,
//! except when `CILIATE_REQUIRE_PRIVILEGED=1` (CI), where it panics: `scripts/install-deps`
//! installs it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{privileged_required, unique_name};

/// Where Debian's `etcd-server` package puts the binary.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// How long a started etcd may take to answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd for one test. Dropping it kills the process and removes its data.
#[derive(Debug)]
pub struct TestEtcd {
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Whether etcd is installed, for a test that needs it (`what` names the test in messages).
/// Without it: false after a loud SKIP on stderr, or a panic when
/// `CILIATE_REQUIRE_PRIVILEGED=1` (CI, where `scripts/install-deps` installs it).
pub fn etcd_installed(what: &str) -> bool {
    if Path::new(ETCD_BINARY).exists() {
        return true;
    }
    let why =
        format!("{ETCD_BINARY} is missing (apt-get install etcd-server, or scripts/install-deps)");
    if privileged_required() {
        panic!("{what} cannot run: {why} and CILIATE_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("\n!!! SKIPPED {what}: {why}. !!!\n");
    false
}

impl TestEtcd {
    /// Starts etcd and waits until it serves requests. `None` (after a loud SKIP on stderr)
    /// when `/usr/bin/etcd` is missing; panics instead when `CILIATE_REQUIRE_PRIVILEGED=1`.
    pub fn start() -> Option<Self> {
        if !etcd_installed("etcd test") {
            return None;
        }
        let name = unique_name("etcd");
        let dir = std::env::temp_dir().join(format!("ciliate-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut etcd = Self {
            name,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.spawn();
        Some(etcd)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL, as a crash would); the data directory and ports stay for
    /// [`TestEtcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): it keeps its sockets but answers nothing, as a hung server.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Thaws etcd after [`TestEtcd::pause`] (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, sig: &str) {
        let pid = self.child.as_ref().expect("etcd is running").id();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} (etcd) failed");
    }

    /// Starts etcd again on the same data directory and ports and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// True while the process started last is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating {}: {e}", log_path.display()));
        let child = Command::new(ETCD_BINARY)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .args(["--initial-cluster-state", "new"])
            .arg("--initial-cluster-token")
            .arg(&self.name)
            // A single member elects itself after one election timeout: keep it short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {ETCD_BINARY}: {e}"));
        self.child = Some(child);
        self.wait_ready(&log_path);
    }

    fn wait_ready(&mut self, log_path: &Path) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        loop {
            if health(addr) {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "etcd {} did not become healthy on {} ({}); last log lines:\n{}",
                    self.name,
                    self.endpoint(),
                    match exited {
                        Some(status) => format!("exited: {status}"),
                        None => format!("not healthy after {READY_TIMEOUT:?}"),
                    },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port the kernel just handed out on 127.0.0.1 (free unless someone races us for it).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("binding a free port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("reading the bound port: {e}"))
        .port()
}

/// True when etcd answers `GET /health` with `"health":"true"` (it has a leader).
fn health(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
