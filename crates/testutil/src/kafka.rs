//! A throwaway Kafka broker for tests, and the real clients that talk to it.
//!
//! The broker is Tansu (a Kafka-compatible broker written in Rust, from crates.io), with its
//! in-memory storage, on a free loopback port; it advertises whatever address the test
//! gives it (a proxy in front of it, so that clients keep going through the proxy after the
//! bootstrap metadata). The client is `kafka-python` in its own venv (Debian's kcat, with
//! librdkafka 2.0.2, cannot read Tansu 0.6's ApiVersions v3 answer). `scripts/install-deps`
//! installs both; where one is missing the test prints a loud SKIP, except when
//! `CILIATE_REQUIRE_PRIVILEGED=1` (CI), where it panics.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::privileged_required;

/// Where `scripts/install-deps` puts Tansu.
pub const TANSU_BINARY: &str = "/opt/ciliate-tools/bin/tansu";
/// The venv's python with kafka-python.
pub const KAFKA_PYTHON: &str = "/opt/ciliate-tools/kafka-venv/bin/python";

/// Whether the broker and the client are installed; otherwise a loud SKIP (or a panic in
/// CI) naming what is missing.
pub fn kafka_tools_installed(what: &str) -> bool {
    let missing: Vec<&str> = [TANSU_BINARY, KAFKA_PYTHON]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} missing (scripts/install-deps installs them)",
        missing.join(", ")
    );
    if privileged_required() {
        panic!("{what} cannot run: {why} and CILIATE_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("\n!!! SKIPPED {what}: {why}. !!!\n");
    false
}

/// A running broker. Dropping it kills the process.
#[derive(Debug)]
pub struct TestBroker {
    addr: SocketAddrV4,
    child: Child,
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding a free port on 127.0.0.1: {e}"))
}

impl TestBroker {
    /// Starts Tansu on 127.0.0.1 (a free port), advertising `advertised` to clients, and
    /// waits until it accepts connections.
    pub fn start(advertised: SocketAddrV4) -> Self {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
        let child = Command::new(TANSU_BINARY)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://{addr}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{advertised}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {TANSU_BINARY}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {addr} within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { addr, child }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
