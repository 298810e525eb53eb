//! `ciliate lab` and `ciliate connectivity test` end to end: labs of real agents, CNI plugin
//! and etcd in network namespaces, driven through the `ciliate` binary as a user would.
//! Every lab has a unique name and is removed by `ciliate lab down` when its guard drops, also
//! when the test fails.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ciliate_testutil::etcd::etcd_installed;
use ciliate_testutil::{privileged, unique_name};
use common::lab::LabGuard;
use common::{ciliate, text};
use serde_json::Value;

/// Every cell that failed, one line each, for assertion messages.
fn failures(report: &Value) -> Vec<String> {
    report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let name = s["name"].as_str().unwrap_or_default().to_owned();
            let error = s["error"]
                .as_str()
                .map(|e| format!("{name}: {e}"))
                .into_iter();
            let cells = s["cells"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["ok"] != true)
                .map(move |c| {
                    format!(
                        "{name}: {} ({}): actual {}, drop seen {}, {}",
                        c["cell"], c["address"], c["actual"], c["dropSeen"], c["detail"]
                    )
                })
                .collect::<Vec<_>>();
            error.chain(cells)
        })
        .collect()
}

fn scenario_names(report: &Value) -> Vec<String> {
    report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

/// What is left of lab `name` on this machine: namespaces, pins, cgroups, processes, state.
fn leftovers(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let prefix = format!("ciliate-{name}-");
    for e in std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) {
            left.push(format!("netns {n}"));
        }
    }
    let node = format!("{name}-node");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let cgroup2 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| format!("{}/ciliate", f[1]))
    });
    for dir in ["/sys/fs/bpf/ciliate".to_owned()]
        .into_iter()
        .chain(cgroup2)
    {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&node) {
                left.push(format!("{dir}/{n}"));
            }
        }
    }
    let marker = format!("CILIATE_LAB={name}");
    let state = format!("/run/ciliate/lab/{name}");
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        )
        .replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie
            && (environ.split(|b| *b == 0).any(|v| v == marker.as_bytes())
                || cmdline.contains(&state))
        {
            left.push(format!("process {pid}: {cmdline}"));
        }
    }
    if Path::new(&state).exists() {
        left.push(state);
    }
    // Pods' resolver configuration for `ip netns exec`.
    for e in std::fs::read_dir("/etc/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) {
            left.push(format!("/etc/netns/{n}"));
        }
    }
    // Links in this (the host's) namespace: the lab makes none here.
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for l in links.lines().filter(|l| l.contains(&prefix)) {
        left.push(format!("link {l}"));
    }
    left
}

/// (a) A one-node lab without the demo passes every single-node cell of every scenario: the
/// policy truth tables as NetworkPolicy and as CiliumNetworkPolicy, each cell a real probe and,
/// when dropped, the drop reason in Hubble.
#[test]
fn one_node_lab_passes_the_connectivity_test() {
    privileged!();
    if !etcd_installed("lab test") {
        return;
    }
    let lab = LabGuard::up(&["--nodes", "1", "--no-demo"]);
    let status = ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]);
    assert!(status.status.success(), "lab status: {}", text(&status));
    let s: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(1), "{s:#}");
    assert_eq!(s["etcd"]["healthy"], true, "{s:#}");
    assert_eq!(s["nodes"][0]["health"], "ok", "{s:#}");

    let (code, report, out) = lab.connectivity(&[]);
    assert!(
        failures(&report).is_empty(),
        "failed cells:\n{}\n{out}",
        failures(&report).join("\n")
    );
    assert_eq!(code, Some(0), "{out}");
    let names = scenario_names(&report);
    for want in [
        "no-policies",
        "client-ingress",
        "client-ingress-knp",
        "all-ingress-deny",
        "all-ingress-deny-knp",
        "all-egress-deny",
        "all-egress-deny-knp",
        "echo-ingress",
        "echo-ingress-knp",
        "client-egress",
        "client-egress-knp",
        "client-egress-expression",
        "client-egress-expression-knp",
        "allow-all-except-world",
        "ingress-deny-wins",
        "egress-deny-wins",
        "to-cidr-except",
        "to-cidr-except-knp",
        "client-ingress-icmp",
        "l7-ingress",
        "l7-egress",
        "fqdn",
        "fqdn-learned",
        "fqdn-ttl",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} did not run: {names:?}"
        );
    }
    assert!(report["passed"].as_u64() > Some(100), "{out}");
    assert_eq!(report["failed"], 0);
    assert!(
        report["skipped"].as_u64() > Some(0),
        "cross-node cells are skipped on one node"
    );
    // Drops were seen with both reasons.
    let seen: Vec<String> = report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["cells"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["dropSeen"].as_str().map(str::to_owned))
        .collect();
    assert!(
        seen.iter().any(|s| s.starts_with("133 POLICY_DENIED on ")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.starts_with("181 POLICY_DENY on ")),
        "{seen:?}"
    );
    // The L7 cells were checked by their flows, both verdicts, both sides' proxies.
    let l7 = l7_seen(&report);
    for want in [
        "L7 FORWARDED",
        "L7 DROPPED",
        "(INGRESS)",
        "(EGRESS)",
        "/private on ",
        // The FQDN cells' DNS flows: an allowed and a refused query.
        "DNS FORWARDED DNS Query world.ciliate.test. A on ",
        "DNS DROPPED DNS Query world2.ciliate.test. A on ",
    ] {
        assert!(l7.iter().any(|s| s.contains(want)), "{want}: {l7:?}");
    }

    // The workload is gone again; --test selects, --keep keeps.
    let st: Value = serde_json::from_slice(
        &ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]).stdout,
    )
    .expect("status JSON");
    assert_eq!(st["pods"], serde_json::json!([]), "{st:#}");
    let (code, report, out) = lab.connectivity(&["--test", "^echo-ingress$", "--keep"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(scenario_names(&report), ["echo-ingress"]);
    let st: Value = serde_json::from_slice(
        &ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]).stdout,
    )
    .expect("status JSON");
    assert_eq!(st["pods"].as_array().map(Vec::len), Some(3), "{st:#}");
    assert_eq!(st["nodes"][0]["endpoints"], 3, "{st:#}");
    // A second run replaces what --keep left.
    let (code, _, out) = lab.connectivity(&["--test", "^no-policies$"]);
    assert_eq!(code, Some(0), "{out}");
    let st: Value = serde_json::from_slice(
        &ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]).stdout,
    )
    .expect("status JSON");
    assert_eq!(st["pods"], serde_json::json!([]), "{st:#}");
}

/// (b) `lab down` after `kill -9` of every process of the lab, and with `lab.json` half
/// written, leaves no namespace, link, pin, cgroup, process or state; it is idempotent.
#[test]
fn lab_down_after_kill_9_leaves_nothing() {
    privileged!();
    if !etcd_installed("lab test") {
        return;
    }
    let lab = LabGuard::up(&["--nodes", "2", "--pods-per-node", "2"]);
    // A second lab of the same name is refused, saying what to do.
    let again = ciliate(&["lab", "up", "--name", &lab.name]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("lab down"),
        "{}",
        text(&again)
    );
    let before = leftovers(&lab.name);
    assert!(
        before.iter().any(|l| l.starts_with("process ")),
        "{before:?}"
    );
    assert!(before.iter().any(|l| l.starts_with("netns ")), "{before:?}");
    assert!(
        before.iter().any(|l| l.contains("/sys/fs/bpf/ciliate/")),
        "{before:?}"
    );

    // Crash everything: every process of the lab, at once.
    let pids: Vec<String> = before
        .iter()
        .filter_map(|l| l.strip_prefix("process "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect();
    let mut kill = vec!["-9"];
    kill.extend(pids.iter().map(String::as_str));
    let _ = Command::new("kill").args(&kill).status();
    std::thread::sleep(Duration::from_millis(300));
    // And the record half written.
    let state = format!("{}/lab.json", lab.state_dir());
    let full = std::fs::read_to_string(&state).expect("lab.json");
    std::fs::write(&state, &full[..full.len() / 2]).expect("truncate lab.json");

    let out = lab.down();
    assert!(out.status.success(), "lab down: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("deleted netns"), "{said}");
    assert!(said.contains("removed pins"), "{said}");
    assert!(
        said.contains("warning:") && said.contains("not a valid lab record"),
        "{said}"
    );
    let left = leftovers(&lab.name);
    assert!(
        left.is_empty(),
        "left after lab down: {left:#?}\n{}",
        text(&out)
    );

    // Idempotent: nothing to do is success.
    let out = lab.down();
    assert!(out.status.success(), "second lab down: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Nothing to remove"),
        "{}",
        text(&out)
    );
    let status = ciliate(&["lab", "status", "--name", &lab.name]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
}

/// (c) A three-node lab passes the whole connectivity test, the cells across nodes included:
/// identities travel between nodes (etcd, VXLAN overlay) and policy holds across them.
#[test]
fn three_node_lab_passes_the_full_connectivity_test() {
    privileged!();
    if !etcd_installed("lab test") {
        return;
    }
    let lab = LabGuard::up(&["--nodes", "3", "--pods-per-node", "1"]);
    // The demo app spans the nodes: a Service with backends on other nodes answers.
    let st: Value = serde_json::from_slice(
        &ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]).stdout,
    )
    .expect("status JSON");
    assert_eq!(st["nodes"].as_array().map(Vec::len), Some(3), "{st:#}");
    assert_eq!(st["healthy"], true, "{st:#}");
    let (code, report, out) = lab.connectivity(&[]);
    assert!(
        failures(&report).is_empty(),
        "failed cells:\n{}\n{out}",
        failures(&report).join("\n")
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(report["skipped"], 0, "{out}");
    assert_eq!(report["nodes"], 3);
    let cross_node_drops = report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["cells"].as_array().cloned().unwrap_or_default())
        .filter(|c| {
            c["cell"]
                .as_str()
                .is_some_and(|l| l.contains("echo-other-node"))
                && c["dropSeen"].is_string()
        })
        .count();
    assert!(
        cross_node_drops > 0,
        "no drop across nodes was checked: {out}"
    );
    // HTTP rules across nodes: the server's proxy (ingress) and the client's (egress) judged
    // requests to the echo pod on the other node, and said so in their flows.
    let cross_node_l7: Vec<String> = cells(&report)
        .into_iter()
        .filter(|c| {
            c["cell"]
                .as_str()
                .is_some_and(|l| l.contains("echo-other-node:8090"))
        })
        .filter_map(|c| c["l7Seen"].as_str().map(str::to_owned))
        .collect();
    for want in ["(INGRESS)", "(EGRESS)", "L7 DROPPED", "L7 FORWARDED"] {
        assert!(
            cross_node_l7.iter().any(|s| s.contains(want)),
            "{want}: {cross_node_l7:?}\n{out}"
        );
    }
}

/// Every cell of a report.
fn cells(report: &Value) -> Vec<Value> {
    report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["cells"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The L7 flows the report's HTTP cells were checked by.
fn l7_seen(report: &Value) -> Vec<String> {
    cells(report)
        .iter()
        .filter_map(|c| c["l7Seen"].as_str().map(str::to_owned))
        .collect()
}

/// Removes lab `name` on drop, whatever the test did with it.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let out = ciliate(&["lab", "down", "--lab", &self.0]);
        if !out.status.success() {
            eprintln!("lab down {} failed: {}", self.0, text(&out));
        }
    }
}

/// (d) `lab up` interrupted at any moment (SIGINT after N ms for a range of N, then a second
/// SIGINT during the rollback; and SIGTERM) exits 130 having removed everything it made:
/// nothing named for that lab is left, so the next `lab up` of that name is not refused.
#[test]
fn interrupted_lab_up_leaves_nothing() {
    privileged!();
    if !etcd_installed("lab test") {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut interrupted = 0;
    let delays = [
        0u64, 20, 60, 150, 300, 500, 800, 1200, 1800, 2600, 3600, 5000,
    ];
    for (i, delay) in delays.iter().enumerate() {
        let name = unique_name("int");
        let _guard = DownOnDrop(name.clone());
        let signal = if i % 4 == 3 {
            Signal::SIGTERM
        } else {
            Signal::SIGINT
        };
        let child = Command::new(common::bin("ciliate"))
            .args([
                "lab",
                "up",
                "--lab",
                &name,
                "--nodes",
                "1",
                "--pods-per-node",
                "2",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start lab up");
        std::thread::sleep(Duration::from_millis(*delay));
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = kill(pid, signal);
        // An impatient user presses Ctrl-C again while it cleans up.
        std::thread::sleep(Duration::from_millis(100));
        let _ = kill(pid, Signal::SIGINT);
        let out = child.wait_with_output().expect("wait for lab up");
        let what = format!("{signal} after {delay} ms: {}", text(&out));
        match out.status.code() {
            Some(130) => {
                interrupted += 1;
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("interrupted"), "{what}");
            }
            // Up before the signal came: a finished lab, which the guard removes.
            Some(0) => continue,
            // Killed before the handlers were in, when nothing was made yet.
            None => {}
            other => panic!("lab up exited {other:?}: {what}"),
        }
        let left = leftovers(&name);
        assert!(left.is_empty(), "{what}\nleft behind: {left:?}");
    }
    assert!(
        interrupted >= delays.len() / 2,
        "only {interrupted} of {} runs were interrupted mid-way: the delays need adjusting",
        delays.len()
    );
}

/// (e) `lab env` names the lab too, so plain `lab status` after its eval finds it; `lab list`
/// shows it; a node whose agent was killed gets it back with `lab restart-agent`.
#[test]
fn lab_env_list_and_restart_agent() {
    privileged!();
    if !etcd_installed("lab test") {
        return;
    }
    let lab = LabGuard::up(&["--nodes", "1", "--no-demo"]);
    let env = ciliate(&["lab", "env", "--lab", &lab.name, "0"]);
    assert!(env.status.success(), "{}", text(&env));
    let exports = String::from_utf8_lossy(&env.stdout).into_owned();
    assert!(
        exports.contains(&format!("export CILIATE_LAB_NAME={};", lab.name)),
        "{exports}"
    );
    // What the eval sets, without --lab.
    let in_env = |args: &[&str]| {
        Command::new(common::bin("ciliate"))
            .args(args)
            .env("CILIATE_LAB_NAME", &lab.name)
            .output()
            .expect("run ciliate")
    };
    let status = in_env(&["lab", "status", "-o", "json"]);
    assert!(status.status.success(), "{}", text(&status));
    let s: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(s["name"], lab.name.as_str(), "{s:#}");
    let old_pid = s["nodes"][0]["agentPid"].as_u64().expect("agent pid");

    let list = ciliate(&["lab", "list", "-o", "json"]);
    let labs: Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    let mine = labs
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == lab.name.as_str())
        .unwrap_or_else(|| panic!("{} not in {labs:#}", lab.name));
    assert_eq!(
        (&mine["state"], &mine["nodes"], &mine["agentsRunning"]),
        (&Value::from("up"), &Value::from(1), &Value::from(1))
    );

    // The agent dies; restart-agent brings it back, healthy, as a new process.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old_pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    );
    let restarted = in_env(&["lab", "restart-agent", "node0"]);
    assert!(restarted.status.success(), "{}", text(&restarted));
    let s: Value =
        serde_json::from_slice(&in_env(&["lab", "status", "-o", "json"]).stdout).expect("JSON");
    assert_eq!(s["nodes"][0]["health"], "ok", "{s:#}");
    assert_ne!(s["nodes"][0]["agentPid"].as_u64(), Some(old_pid), "{s:#}");
}

/// Runs `args` in pod namespace `netns` through `ip netns exec`, which puts the pod's
/// `/etc/netns/<netns>/resolv.conf` in place of `/etc/resolv.conf`: what a user typing
/// `ip netns exec <pod> dig NAME` gets.
fn in_pod(netns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// `dig +short` in a pod: the answer's lines.
fn dig_short(netns: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["dig", "+short", "+time=2", "+tries=2"];
    args.extend_from_slice(extra);
    let out = in_pod(netns, &args);
    assert!(out.status.success(), "dig {extra:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (f) `lab up` starts the world's DNS server (a real dnsmasq in the underlay): `lab status`
/// shows it, a pod resolves the configured names through it with `dig` and `getent` (several
/// A records, a CNAME chain, a short TTL, a wildcard, NXDOMAIN, over UDP and TCP) across its
/// node's datapath, and `lab down` leaves no dnsmasq and no resolver file behind.
#[test]
fn pods_resolve_through_the_worlds_dns_server() {
    privileged!();
    if !etcd_installed("lab test") {
        return;
    }
    if !Path::new("/usr/sbin/dnsmasq").exists() || !Path::new("/usr/bin/dig").exists() {
        // `lab up` refuses without dnsmasq (a clear prerequisite error); without dig there
        // is nothing to ask with.
        assert!(
            std::env::var_os("CILIATE_REQUIRE_PRIVILEGED").is_none(),
            "dnsmasq-base and dnsutils are required (scripts/install-deps)"
        );
        eprintln!("SKIPPED: dnsmasq or dig missing (scripts/install-deps installs them)");
        return;
    }
    let lab = LabGuard::up(&["--nodes", "1", "--pods-per-node", "1"]);
    let status = ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]);
    assert!(status.status.success(), "lab status: {}", text(&status));
    let s: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(s["dns"]["address"], "172.31.0.1:53", "{s:#}");
    assert_eq!(s["dns"]["domain"], "ciliate.test", "{s:#}");
    assert_eq!(s["dns"]["answering"], true, "{s:#}");
    let dns_pid = s["dns"]["pid"].as_u64().expect("dnsmasq pid");
    let cmdline = std::fs::read(format!("/proc/{dns_pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("dnsmasq"),
        "pid {dns_pid} is not dnsmasq"
    );
    let human = ciliate(&["lab", "status", "--name", &lab.name]);
    assert!(
        text(&human).contains("172.31.0.1:53 *.ciliate.test answering"),
        "{}",
        text(&human)
    );
    let netns = s["pods"][0]["netns"].as_str().expect("a pod").to_owned();
    let resolv = std::fs::read_to_string(format!("/etc/netns/{netns}/resolv.conf"))
        .expect("the pod's resolv.conf");
    assert!(resolv.contains("nameserver 172.31.0.1"), "{resolv}");

    assert_eq!(dig_short(&netns, &["world.ciliate.test"]), ["172.31.0.1"]);
    assert_eq!(
        dig_short(&netns, &["+tcp", "world2.ciliate.test"]),
        ["172.31.0.2"]
    );
    let mut multi = dig_short(&netns, &["multi.ciliate.test"]);
    multi.sort();
    assert_eq!(multi, ["172.31.0.1", "172.31.0.2"]);
    assert_eq!(
        dig_short(&netns, &["alias.ciliate.test"]),
        ["alias2.ciliate.test.", "world.ciliate.test.", "172.31.0.1"]
    );
    assert_eq!(
        dig_short(&netns, &["anything.s3.ciliate.test"]),
        ["172.31.0.2"]
    );
    let ttl = in_pod(
        &netns,
        &["dig", "+noall", "+answer", "+time=2", "short.ciliate.test"],
    );
    let line = String::from_utf8_lossy(&ttl.stdout).into_owned();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields.get(1),
        Some(&"2"),
        "TTL of short.ciliate.test: {line}"
    );
    let nx = in_pod(&netns, &["dig", "+time=2", "+tries=2", "nope.ciliate.test"]);
    assert!(
        String::from_utf8_lossy(&nx.stdout).contains("status: NXDOMAIN"),
        "{}",
        text(&nx)
    );
    // The C library's resolver reads the pod's resolv.conf too.
    let getent = in_pod(&netns, &["getent", "hosts", "world.ciliate.test"]);
    assert!(
        String::from_utf8_lossy(&getent.stdout).starts_with("172.31.0.1 "),
        "{}",
        text(&getent)
    );

    let out = lab.down();
    assert!(out.status.success(), "lab down: {}", text(&out));
    assert!(
        !Path::new(&format!("/proc/{dns_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{dns_pid}/stat"))
                .unwrap_or_default()
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        "dnsmasq (pid {dns_pid}) outlived lab down"
    );
    let left = leftovers(&lab.name);
    assert!(left.is_empty(), "left after lab down: {left:#?}");
}
