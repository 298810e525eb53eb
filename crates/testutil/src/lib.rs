//! Fixtures for tests that need root, BPF and network namespaces.
//!
//! Privileged tests start with [`privileged!`]: where root or bpffs is missing they print a loud
//! SKIP and return, except when `CILIATE_REQUIRE_PRIVILEGED=1` (set by `.ci/run`), where a skip
//! is a failure. Every namespace a test makes has a unique name and is removed on drop, also
//! when the test panics.

pub mod bench_services;
pub mod etcd;
pub mod heap;
pub mod hubble;
pub mod kafka;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why privileged tests cannot run here, or `None` when they can.
pub fn missing_privileges() -> Option<String> {
    // SAFETY-free check: geteuid via /proc avoids a libc dependency.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!("not running as root (euid {uid})"));
    }
    if !Path::new("/sys/fs/bpf").exists() {
        return Some("/sys/fs/bpf does not exist".into());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Some("bpffs is not mounted (mount -t bpf bpf /sys/fs/bpf)".into());
    }
    None
}

/// True when a skipped privileged test must fail instead (CI).
pub fn privileged_required() -> bool {
    std::env::var("CILIATE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Returns from the calling test with a loud SKIP when privileges are missing; panics instead
/// when `CILIATE_REQUIRE_PRIVILEGED=1`.
#[macro_export]
macro_rules! privileged {
    () => {
        if let Some(why) = $crate::missing_privileges() {
            if $crate::privileged_required() {
                panic!("privileged test cannot run ({why}) and CILIATE_REQUIRE_PRIVILEGED=1");
            }
            eprintln!(
                "\n!!! SKIPPED {}: {why}. Run as root with bpffs mounted. !!!\n",
                module_path!()
            );
            return;
        }
    };
}

/// A name no other test (or test process) uses: `<prefix><pid mod 10000>x<counter>`,
/// at most 15 bytes so it fits an interface name.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(
        name.len() <= 15,
        "unique_name({prefix:?}) is too long: {name}"
    );
    name
}

/// Runs a command, panicking with its output when it fails (test fixtures only).
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`/var/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Makes a new namespace with a unique name starting with `prefix`, loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, as a runtime passes it in CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace with `nsenter --net` (unlike `ip netns exec` this
    /// keeps the host's /sys, so bpffs stays visible).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let net = format!("--net={}", self.path());
        let mut all = vec![net.as_str(), cmd];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// A `Command` that runs inside the namespace; the caller adds arguments and env.
    pub fn command(&self, cmd: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg(cmd);
        c
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Deleting a namespace also deletes every interface inside it (and their veth peers).
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
