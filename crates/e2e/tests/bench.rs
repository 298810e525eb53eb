//! Every script in `bench/` in `--quick` mode: it runs to the end (exit 0) against the debug
//! binaries, and leaves nothing behind: no namespace, pin, cgroup or process named for its run.
//! The numbers are not looked at (speed is measured by the scripts, never asserted).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ciliate_testutil::etcd::etcd_installed;
use ciliate_testutil::privileged;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// What is left with a name that starts with one of `prefixes`.
fn leftovers(prefixes: &[String]) -> Vec<String> {
    let ours = |n: &str| prefixes.iter().any(|p| n.starts_with(p.as_str()));
    let mut left = Vec::new();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let cgroup2 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| format!("{}/ciliate", f[1]))
    });
    for dir in [
        "/var/run/netns".to_owned(),
        "/sys/fs/bpf/ciliate".to_owned(),
    ]
    .into_iter()
    .chain(cgroup2)
    {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if ours(&n) {
                left.push(format!("{dir}/{n}"));
            }
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let cmdline = String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        )
        .replace('\0', " ");
        // Agents are named after the run (--node-name cb<pid>...), etcd too (--name cb<pid>ov).
        if cmdline
            .split_whitespace()
            .any(|w| ours(w) || prefixes.iter().any(|p| w.contains(&format!("/{p}"))))
        {
            left.push(format!("process {pid}: {cmdline}"));
        }
    }
    left
}

/// Processes running one of the binaries in `bin_dir` (servers, clients, agents of a run): the
/// names the scripts give their namespaces do not show on a server started inside one.
fn running_from(bin_dir: &Path) -> std::collections::BTreeMap<u32, String> {
    let mut found = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        )
        .replace('\0', " ");
        if cmdline.starts_with(&format!("{}/", bin_dir.display())) {
            found.insert(pid, cmdline);
        }
    }
    found
}

/// One script at a time: they share the machine's two CPUs with their pinned client and server.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn quick(script: &str) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bin_dir = common::bin("ciliate")
        .parent()
        .expect("target dir")
        .to_owned();
    let before = running_from(&bin_dir);
    let child = Command::new("bash")
        .arg(repo().join("bench").join(script))
        .arg("--quick")
        .env("CILIATE_BIN_DIR", &bin_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the script");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for the script");
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "bench/{script} --quick: {text}");
    // The run's names: cb<pid>... (bench/lib.sh), cb-lb-<pid>... (lb.sh).
    let mut left = leftovers(&[format!("cb{pid}"), format!("cb-lb-{pid}")]);
    left.extend(
        running_from(&bin_dir)
            .into_iter()
            .filter(|(p, _)| !before.contains_key(p))
            .map(|(p, cmdline)| format!("process {p}: {cmdline}")),
    );
    assert!(
        left.is_empty(),
        "bench/{script} --quick left behind: {left:?}\n{text}"
    );
}

#[test]
fn pod2pod_quick() {
    privileged!();
    quick("pod2pod.sh");
}

#[test]
fn policy_quick() {
    privileged!();
    quick("policy.sh");
}

#[test]
fn history_quick() {
    // Needs no privileges (files only), but runs with the other scripts, one at a time.
    quick("history.sh");
}

#[test]
fn observer_quick() {
    privileged!();
    quick("observer.sh");
}

#[test]
fn overlay_quick() {
    privileged!();
    if !etcd_installed("bench/overlay.sh") {
        return;
    }
    quick("overlay.sh");
}

#[test]
fn lb_quick() {
    privileged!();
    quick("lb.sh");
}

/// Whether `tool` is on the PATH (or in /usr/sbin, where Debian puts nginx): false after a loud
/// SKIP, or a panic under `CILIATE_REQUIRE_PRIVILEGED=1` (CI installs it: .ci/run).
fn installed(tool: &str, what: &str) -> bool {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
        .any(|d| Path::new(d).join(tool).exists());
    if found {
        return true;
    }
    let why = format!("{tool} is not installed (scripts/install-deps installs it)");
    if ciliate_testutil::privileged_required() {
        panic!("{what} cannot run: {why} and CILIATE_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("\n!!! SKIPPED {what}: {why}. !!!\n");
    false
}

#[test]
fn l7_quick() {
    privileged!();
    if !installed("wrk", "bench/l7.sh") || !installed("nginx", "bench/l7.sh") {
        return;
    }
    quick("l7.sh");
}

#[test]
fn ui_quick() {
    privileged!();
    if !installed("chromium", "bench/ui.sh") || !installed("curl", "bench/ui.sh") {
        return;
    }
    quick("ui.sh");
}

#[test]
fn kafka_quick() {
    privileged!();
    if !ciliate_testutil::kafka::kafka_tools_installed("bench/kafka.sh") {
        return;
    }
    quick("kafka.sh");
}

#[test]
fn dns_quick() {
    privileged!();
    if !installed("dnsperf", "bench/dns.sh") || !installed("dnsmasq", "bench/dns.sh") {
        return;
    }
    quick("dns.sh");
}

// Not in CI yet: one run in three on this kind of machine, an agent stopped mid-script (SIGTERM
// at N, for the restart measurement) neither exits within 60 s nor disappears within 10 s of
// SIGKILL (stuck in the kernel; agents of the previous release did the same in this script).
// Run it by hand with `--ignored` until that is understood.
#[test]
#[ignore = "an agent stopped mid-run can hang in the kernel: run with --ignored"]
fn services_scale_quick() {
    privileged!();
    quick("services-scale.sh");
}

#[test]
fn relay_quick() {
    // No root needed: synthetic nodes and the relay on unix sockets in a temporary directory.
    quick("relay.sh");
}
