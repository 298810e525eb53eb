//! The multi-node cluster end to end: two-node labs (`ciliate lab up --nodes 2`, real agents,
//! CNI plugin and etcd in network namespaces) carrying real TCP traffic between the demo pods,
//! while the test looks at flows across nodes, kills an agent and takes etcd away.
//!
//! Every lab has a unique name and is removed by `ciliate lab down` when its guard drops, also
//! when the test fails (the tails of the agents' and etcd's logs are printed then). The tests of
//! this file run one at a time: they measure how long things take, and two labs on a small
//! machine would measure each other.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use ciliate_testutil::etcd::etcd_installed;
use ciliate_testutil::{privileged, unique_name};
use common::{bin, ciliate, text};
use serde_json::Value;

/// The port every demo pod's ident server listens on.
const DEMO_PORT: u16 = 8080;

/// One lab at a time (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

fn netns_path(netns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(netns)
}

/// A process's command line, one string per argument.
fn proc_cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A process's environment.
fn proc_environ(pid: u32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|v| {
            let v = String::from_utf8_lossy(v);
            let (k, val) = v.split_once('=')?;
            Some((k.to_owned(), val.to_owned()))
        })
        .collect()
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Whether process `pid` runs in named namespace `netns`.
fn runs_in(pid: u32, netns: &str) -> bool {
    let of_pid = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
    let named = std::fs::metadata(netns_path(netns)).map(|m| m.ino());
    matches!((of_pid, named), (Ok(a), Ok(b)) if a == b)
}

/// Threads of `pid` other than its main one that have not exited yet.
fn other_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// `kill -9 pid`, then waits until it is gone (or a zombie whose threads have all exited: a
/// zombie main thread alone does not mean its sockets are closed).
fn kill_9(pid: u32) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -9 {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) || other_threads(pid) > 0 {
        assert!(Instant::now() < deadline, "{pid} survived kill -9");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A pod of the lab, from `lab.json`.
#[derive(Clone, Debug)]
struct Pod {
    name: String,
    namespace: String,
    node: String,
    netns: String,
    ip: Ipv4Addr,
}

impl Pod {
    fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A node of the lab, from `lab.json`.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    netns: String,
    socket: PathBuf,
    log: PathBuf,
    agent_pid: u32,
}

/// A lab for one test, removed on drop, with the processes the test started in it.
struct LabGuard {
    name: String,
    state: Value,
    /// Processes the test started (a restarted agent or etcd, servers); they live in the lab's
    /// namespaces and carry `CILIATE_LAB`, so `lab down` ends them; the guard reaps them.
    children: Vec<Child>,
}

impl LabGuard {
    /// `ciliate lab up --name <unique> <args>`; insists it worked.
    fn up(args: &[&str]) -> Self {
        let name = unique_name("mn");
        let mut guard = Self {
            name,
            state: Value::Null,
            children: Vec::new(),
        };
        let mut all = vec!["lab", "up", "--name", &guard.name];
        all.extend_from_slice(args);
        let started = Instant::now();
        let out = ciliate(&all);
        assert!(out.status.success(), "lab up {args:?}: {}", text(&out));
        eprintln!(
            "lab {} up in {:.1}s",
            guard.name,
            started.elapsed().as_secs_f64()
        );
        guard.state = guard.read_state();
        guard
    }

    fn state_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/ciliate/lab/{}", self.name))
    }

    fn read_state(&self) -> Value {
        let path = self.state_dir().join("lab.json");
        let t = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&t).expect("lab.json is JSON")
    }

    fn node(&self, index: usize) -> Node {
        let n = &self.state["nodes"][index];
        let s = |k: &str| {
            n[k].as_str()
                .unwrap_or_else(|| panic!("lab.json: nodes[{index}].{k} in {n}"))
                .to_owned()
        };
        Node {
            name: s("name"),
            netns: s("netns"),
            socket: s("agentSocket").into(),
            log: s("log").into(),
            agent_pid: n["agentPid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or_else(|| panic!("lab.json: nodes[{index}].agentPid in {n}")),
        }
    }

    fn pod(&self, namespace: &str, name: &str) -> Pod {
        let p = self.state["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["namespace"] == namespace && p["name"] == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name} in lab.json: {}", self.state));
        let s = |k: &str| p[k].as_str().expect("pod field").to_owned();
        Pod {
            name: s("name"),
            namespace: s("namespace"),
            node: s("node"),
            netns: s("netns"),
            ip: s("ip").parse().expect("pod ip"),
        }
    }

    /// The pid of the process `lab.json` records as `what`.
    fn process(&self, what: &str) -> u32 {
        self.state["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["what"] == what)
            .and_then(|p| p["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no process {what:?} in lab.json: {}", self.state))
    }

    /// Starts `argv` inside `netns` with exactly `env`, its output appended to `log`, in a
    /// process group of its own: as the lab starts its daemons.
    fn start_in(&mut self, netns: &str, argv: &[String], env: &[(String, String)], log: &Path) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log");
        let err = out.try_clone().expect("log fd");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(netns).display()))
            .arg("--")
            .args(argv)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {argv:?} in {netns}: {e}"));
        self.children.push(child);
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            let dir = self.state_dir();
            for log in [
                "node0/agent.log",
                "node1/agent.log",
                "etcd.log",
                "servers.log",
            ] {
                let path = dir.join(log);
                eprintln!("---- last lines of {} ----", path.display());
                eprintln!("{}", tail(&path, 40));
            }
        }
        let out = ciliate(&["lab", "down", "--name", &self.name]);
        if !out.status.success() {
            eprintln!("lab down {} failed: {}", self.name, text(&out));
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `ciliate` CLI against one node's agent (`--socket`; hubble.sock is found beside it).
fn at(node: &Node, args: &[&str]) -> Output {
    Command::new(bin("ciliate"))
        .arg("--socket")
        .arg(&node.socket)
        .args(args)
        .output()
        .expect("run ciliate")
}

/// `ciliate status -o json` of a node: exit code and the status (`Null` when unreachable).
fn status(node: &Node) -> (Option<i32>, Value) {
    let out = at(node, &["status", "-o", "json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v)
}

/// The identity of `pod` as its node's agent lists it.
fn endpoint_identity(node: &Node, pod: &Pod) -> u64 {
    let out = at(node, &["endpoint", "list", "-o", "json"]);
    assert!(out.status.success(), "endpoint list: {}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("endpoint list JSON");
    list.as_array()
        .into_iter()
        .flatten()
        .find(|e| e["pod"]["namespace"] == pod.namespace && e["pod"]["name"] == pod.name)
        .and_then(|e| e["identity"].as_u64())
        .unwrap_or_else(|| {
            panic!(
                "{} not in {}'s endpoints: {list:#}",
                pod.reference(),
                node.name
            )
        })
}

/// `ciliate --socket <node> observe <args> -o json`: the flows.
fn observe(node: &Node, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["observe"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let out = at(node, &all);
    assert!(out.status.success(), "observe {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

/// Runs `f` on a thread inside named namespace `netns`.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns_path(netns);
    thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns")
}

/// A new TCP connection from `from` to `dst:port`; the ident line the server sent and the
/// client's port, or what went wrong.
fn connect(from: &Pod, dst: Ipv4Addr, port: u16) -> Result<(String, u16), String> {
    in_netns(&from.netns, move || {
        let s = TcpStream::connect_timeout(&(dst, port).into(), Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let local = s.local_addr().map_err(|e| e.to_string())?.port();
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        Ok((line.trim().to_owned(), local))
    })
}

/// Insists that `from` reaches `to`'s ident server and that `to` answers.
fn reaches(from: &Pod, to: &Pod) -> Result<(), String> {
    match connect(from, to.ip, DEMO_PORT) {
        Ok((id, _)) if id == to.name => Ok(()),
        Ok((id, _)) => Err(format!(
            "{} -> {} ({}): answered by {id:?}",
            from.reference(),
            to.reference(),
            to.ip
        )),
        Err(e) => Err(format!(
            "{} -> {} ({}): {e}",
            from.reference(),
            to.reference(),
            to.ip
        )),
    }
}

/// A held connection: `ciliate-bench probe --hold-secs` in a pod's namespace.
struct Held {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    id: String,
    secs: f64,
}

impl Held {
    /// Opens it and waits until the probe says the connection is up (`hold <id>`).
    fn open(from: &Pod, to: &Pod, secs: f64) -> Self {
        let what = format!("held {} -> {} ({secs}s)", from.reference(), to.reference());
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(&from.netns).display()))
            .arg(bin("ciliate-bench"))
            .args(["probe", "--dst", &to.ip.to_string()])
            .args(["--port", &DEMO_PORT.to_string(), "--count", "0"])
            .args(["--hold-secs", &secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start probe");
        let stdout = child.stdout.take().expect("probe stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(5));
        let mut held = Self {
            what,
            child,
            lines,
            id: String::new(),
            secs,
        };
        match first {
            Ok(l) if l.starts_with("hold ") => {
                held.id = l["hold ".len()..].to_owned();
            }
            other => {
                let _ = held.child.kill();
                let mut err = String::new();
                if let Some(mut e) = held.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{}: no `hold` line ({other:?}); stderr: {err}", held.what);
            }
        }
        assert_eq!(
            held.id, to.name,
            "{}: answered by the wrong server",
            held.what
        );
        held
    }

    /// Waits for the probe's report (bounded) and returns its `hold` object.
    fn finish(mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs_f64(self.secs + 10.0);
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => last = Some(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no report {:.0}s after it began",
                        self.what,
                        self.secs + 10.0
                    )
                }
            }
        }
        let status = self.child.wait().expect("wait probe");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "{}: probe failed: {err}", self.what);
        let report: Value = serde_json::from_str(last.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{}: report {last:?} is not JSON: {e}", self.what));
        report["hold"].clone()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Insists a held connection lived through its whole time without an error: it exchanged lines
/// all along (one per ~50 ms; at least `min` of them).
fn assert_survived(what: &str, hold: &Value, min: u64) {
    assert!(
        hold["error"].is_null(),
        "{what}: the held connection broke: {hold}"
    );
    let n = hold["exchanges"].as_u64().unwrap_or(0);
    assert!(n >= min, "{what}: only {n} exchanges (want {min}+): {hold}");
}

fn tcp_ports(flow: &Value) -> (Option<u64>, Option<u64>) {
    let tcp = &flow["l4"]["TCP"];
    (
        tcp["source_port"].as_u64(),
        tcp["destination_port"].as_u64(),
    )
}

/// Whether `flow` is a packet of the connection `client:cport -> server:sport` (either way).
fn of_connection(flow: &Value, client: (Ipv4Addr, u16), server: (Ipv4Addr, u16)) -> bool {
    let (src, dst) = (
        flow["IP"]["source"].as_str().unwrap_or_default(),
        flow["IP"]["destination"].as_str().unwrap_or_default(),
    );
    let (sp, dp) = tcp_ports(flow);
    let (c, s) = (client.0.to_string(), server.0.to_string());
    let (cp, spt) = (Some(u64::from(client.1)), Some(u64::from(server.1)));
    (src == c && dst == s && sp == cp && dp == spt)
        || (src == s && dst == c && sp == spt && dp == cp)
}

fn pod_of(endpoint: &Value) -> String {
    format!(
        "{}/{}",
        endpoint["namespace"].as_str().unwrap_or_default(),
        endpoint["pod_name"].as_str().unwrap_or_default()
    )
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `limit`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// (1) A TCP connection from a pod of node 0 to a pod of node 1 shows in node 1's Hubble API
/// naming both pods and carrying the client's identity as node 0 numbered it, and in node 0's
/// as forwarded to the overlay.
/// A 2-node lab with the demo app (two pods per node), one at a time; `None` after a loud
/// SKIP when etcd is missing.
fn demo_lab() -> Option<(std::sync::MutexGuard<'static, ()>, LabGuard)> {
    if !etcd_installed("multi-node test") {
        return None;
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((
        serial,
        LabGuard::up(&["--nodes", "2", "--pods-per-node", "2"]),
    ))
}

#[test]
fn a_cross_node_flow_names_both_pods_and_carries_the_identity() {
    privileged!();
    let Some((_serial, lab)) = demo_lab() else {
        return;
    };
    let (n0, n1) = (lab.node(0), lab.node(1));
    let client = lab.pod("demo", "frontend-0");
    let server = lab.pod("demo", "backend-1");
    assert_eq!(client.node, n0.name);
    assert_eq!(server.node, n1.name);
    let client_id = endpoint_identity(&n0, &client);
    let server_id = endpoint_identity(&n1, &server);
    assert!(
        client_id >= 256 && server_id >= 256,
        "pods have reserved identities: {client_id}, {server_id}"
    );
    assert_ne!(client_id, server_id, "different label sets, one identity");

    let (answer, cport) = connect(&client, server.ip, DEMO_PORT)
        .unwrap_or_else(|e| panic!("frontend-0 -> backend-1 ({}): {e}", server.ip));
    assert_eq!(answer, server.name);
    let conn = ((client.ip, cport), (server.ip, DEMO_PORT));
    let ip_filter = client.ip.to_string();

    // Node 1: the flow into backend-1, named and identified.
    let mut seen = Vec::new();
    let request = poll(Duration::from_secs(10), || {
        seen = observe(&n1, &["--last", "50", "--ip", &ip_filter])
            .into_iter()
            .filter(|f| of_connection(f, conn.0, conn.1))
            .collect();
        seen.iter()
            .find(|f| {
                f["IP"]["source"] == client.ip.to_string()
                    && f["source"]["pod_name"].is_string()
                    && f["destination"]["pod_name"].is_string()
            })
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no flow of {}:{cport} -> {}:{DEMO_PORT} naming its pods on {} within 10s; flows of \
             the connection there: {seen:#?}",
            client.ip, server.ip, n1.name
        )
    });
    eprintln!("flow on {}: {request}", n1.name);
    // Node 1 took it from the overlay: the flows seen there name the overlay device, one of
    // the node's own devices (named from the kernel by index, not from the endpoint table).
    let on_overlay = poll(Duration::from_secs(10), || {
        observe(&n1, &["--last", "50", "--ip", &ip_filter])
            .into_iter()
            .filter(|f| of_connection(f, conn.0, conn.1))
            // The agent's TUNNEL_DEVICE.
            .find(|f| f["interface"]["name"] == "ciliate_vxlan")
    });
    assert!(
        on_overlay.is_some(),
        "no flow of the connection on {} names the overlay device: {seen:#?}",
        n1.name
    );
    assert_eq!(
        pod_of(&request["source"]),
        client.reference(),
        "{request:#}"
    );
    assert_eq!(
        pod_of(&request["destination"]),
        server.reference(),
        "{request:#}"
    );
    assert_eq!(
        request["source"]["identity"].as_u64(),
        Some(client_id),
        "node 1 does not see frontend-0's identity: {request:#}"
    );
    assert_eq!(
        request["destination"]["identity"].as_u64(),
        Some(server_id),
        "{request:#}"
    );
    assert_eq!(request["verdict"], "FORWARDED", "{request:#}");
    // Every packet of the connection node 1 reported names both ends, with their identities.
    for f in &seen {
        let (src, dst) = if f["IP"]["source"] == client.ip.to_string() {
            (&client, &server)
        } else {
            (&server, &client)
        };
        let id = |p: &Pod| {
            if p.name == client.name {
                client_id
            } else {
                server_id
            }
        };
        assert_eq!(pod_of(&f["source"]), src.reference(), "{f:#}");
        assert_eq!(pod_of(&f["destination"]), dst.reference(), "{f:#}");
        assert_eq!(f["source"]["identity"].as_u64(), Some(id(src)), "{f:#}");
        assert_eq!(
            f["destination"]["identity"].as_u64(),
            Some(id(dst)),
            "{f:#}"
        );
        assert_eq!(f["node_name"], format!("default/{}", n1.name), "{f:#}");
    }

    // Node 0: the same connection handed to the overlay.
    let mut seen0 = Vec::new();
    let overlay = poll(Duration::from_secs(10), || {
        seen0 = observe(&n0, &["--last", "50", "--ip", &ip_filter])
            .into_iter()
            .filter(|f| of_connection(f, conn.0, conn.1))
            .collect();
        seen0
            .iter()
            .find(|f| {
                f["trace_observation_point"] == "TO_OVERLAY"
                    && f["IP"]["source"] == client.ip.to_string()
            })
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no TO_OVERLAY flow of {}:{cport} -> {}:{DEMO_PORT} on {} within 10s; flows of the \
             connection there: {seen0:#?}",
            client.ip, server.ip, n0.name
        )
    });
    eprintln!("flow on {}: {overlay}", n0.name);
    assert_eq!(overlay["verdict"], "FORWARDED", "{overlay:#}");
    // The interface it was seen on, named (a pod's veth or one of the node's own devices).
    assert!(
        overlay["interface"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "{overlay:#}"
    );
    assert_eq!(
        pod_of(&overlay["source"]),
        client.reference(),
        "{overlay:#}"
    );
    assert_eq!(
        overlay["source"]["identity"].as_u64(),
        Some(client_id),
        "{overlay:#}"
    );
    assert_eq!(
        overlay["destination"]["identity"].as_u64(),
        Some(server_id),
        "node 0 does not know backend-1's identity: {overlay:#}"
    );
    assert_eq!(
        pod_of(&overlay["destination"]),
        server.reference(),
        "{overlay:#}"
    );
}

/// (2) `kill -9` of node 1's agent leaves traffic flowing: held connections within node 0 and
/// across nodes survive, new connections both ways across nodes succeed; the agent restarted
/// with its command line is healthy, keeps its endpoints and identities, traffic flows and the
/// demo policy still holds.
#[test]
fn killing_one_agent_leaves_traffic_flowing() {
    privileged!();
    let Some((_serial, mut lab)) = demo_lab() else {
        return;
    };
    let (n0, n1) = (lab.node(0), lab.node(1));
    let fe0 = lab.pod("demo", "frontend-0");
    let be0 = lab.pod("demo", "backend-0");
    let fe1 = lab.pod("demo", "frontend-1");
    let be1 = lab.pod("demo", "backend-1");
    for (p, n) in [(&fe0, &n0), (&be0, &n0), (&fe1, &n1), (&be1, &n1)] {
        assert_eq!(p.node, n.name, "{p:?}");
    }
    let ids_before: BTreeMap<String, u64> = [&fe1, &be1]
        .iter()
        .map(|p| (p.reference(), endpoint_identity(&n1, p)))
        .collect();

    // The agent's command line and environment, to start it again later.
    let pid = n1.agent_pid;
    let argv = proc_cmdline(pid);
    let env = proc_environ(pid);
    assert!(
        argv.first().is_some_and(|a| a.ends_with("ciliate-agent")) && argv.contains(&n1.name),
        "pid {pid} of lab.json is not {}'s agent: {argv:?}",
        n1.name
    );
    assert!(
        runs_in(pid, &n1.netns),
        "agent {pid} is not in {}",
        n1.netns
    );

    let cross = Held::open(&fe0, &be1, 8.0);
    let local = Held::open(&fe0, &be0, 8.0);
    let killed = Instant::now();
    kill_9(pid);
    let (code, _) = status(&n1);
    assert_ne!(
        code,
        Some(0),
        "{}'s agent still answers after kill -9",
        n1.name
    );

    // While it is dead: new connections both ways across nodes, and within node 1.
    let mut rounds = 0;
    let mut failed = Vec::new();
    while killed.elapsed() < Duration::from_secs(6) {
        for (from, to) in [(&fe0, &be1), (&fe1, &be0), (&be1, &fe0), (&fe1, &be1)] {
            if let Err(e) = reaches(from, to) {
                failed.push(format!(
                    "{:.1}s after kill: {e}",
                    killed.elapsed().as_secs_f64()
                ));
            }
        }
        rounds += 1;
        thread::sleep(Duration::from_millis(300));
    }
    assert!(
        failed.is_empty(),
        "with {}'s agent dead, {} of {} new connections failed:\n{}",
        n1.name,
        failed.len(),
        rounds * 4,
        failed.join("\n")
    );
    let cross_hold = cross.finish();
    let local_hold = local.finish();
    eprintln!(
        "agent dead for {:.1}s: {} rounds of new connections; held: {cross_hold} {local_hold}",
        killed.elapsed().as_secs_f64(),
        rounds
    );
    assert!(!alive(pid), "the agent came back by itself");
    assert_survived("frontend-0 -> backend-1 (across nodes)", &cross_hold, 40);
    assert_survived("frontend-0 -> backend-0 (on node 0)", &local_hold, 40);

    // Start it again, as the lab did.
    let log = n1.log.clone();
    lab.start_in(&n1.netns, &argv, &env, &log);
    let restarted = Instant::now();
    let mut last = (None, Value::Null);
    let healthy = poll(Duration::from_secs(30), || {
        last = status(&n1);
        (last.0 == Some(0) && last.1["health"] == "ok").then_some(())
    });
    assert!(
        healthy.is_some(),
        "restarted agent of {} not healthy within 30s: exit {:?}, {:#}",
        n1.name,
        last.0,
        last.1
    );
    eprintln!(
        "restarted agent healthy after {:.1}s",
        restarted.elapsed().as_secs_f64()
    );
    let st = &last.1;
    assert_eq!(st["endpoints"], 2, "{st:#}");
    assert_eq!(st["cluster"]["connected"], true, "{st:#}");
    let ids_after: BTreeMap<String, u64> = [&fe1, &be1]
        .iter()
        .map(|p| (p.reference(), endpoint_identity(&n1, p)))
        .collect();
    assert_eq!(ids_before, ids_after, "identities changed over the restart");

    for (from, to) in [(&fe0, &be1), (&fe1, &be0), (&be1, &fe0), (&fe1, &be1)] {
        reaches(from, to).unwrap_or_else(|e| panic!("after the restart: {e}"));
    }
    let after = Held::open(&fe0, &be1, 2.0).finish();
    assert_survived("frontend-0 -> backend-1 after the restart", &after, 10);
    // The demo policy (only frontends reach backends) is still in force on node 1: backend-0,
    // which reaches a frontend there, is dropped at backend-1 for policy, as Hubble says.
    reaches(&be0, &fe1).unwrap_or_else(|e| panic!("after the restart: {e}"));
    let denied = connect(&be0, be1.ip, DEMO_PORT);
    assert!(
        denied.is_err(),
        "after the restart backend-0 reaches backend-1 ({denied:?}): the demo policy is not \
         enforced"
    );
    let be0_ip = be0.ip.to_string();
    let mut drops = Vec::new();
    let seen = poll(Duration::from_secs(5), || {
        drops = observe(
            &n1,
            &["--last", "50", "--verdict", "DROPPED", "--ip", &be0_ip],
        );
        drops
            .iter()
            .find(|f| {
                f["IP"]["destination"] == be1.ip.to_string()
                    && f["drop_reason_desc"] == "POLICY_DENIED"
                    && f["source"]["identity"].as_u64() == Some(endpoint_identity(&n0, &be0))
            })
            .cloned()
    });
    assert!(
        seen.is_some(),
        "no POLICY_DENIED drop of backend-0 -> backend-1 with backend-0's identity on {}: \
         {drops:#?}",
        n1.name
    );
}

/// (3) etcd gone for 10 s: the agents say so, no connection is lost and pods keep talking
/// across nodes; once it is back both agents reconnect within 15 s, and a pod added to node 1
/// afterwards is reachable from node 0, which knows its identity.
#[test]
fn stopping_etcd_for_10s_loses_no_connection_and_agents_catch_up() {
    privileged!();
    let Some((_serial, mut lab)) = demo_lab() else {
        return;
    };
    let (n0, n1) = (lab.node(0), lab.node(1));
    let fe0 = lab.pod("demo", "frontend-0");
    let be0 = lab.pod("demo", "backend-0");
    let fe1 = lab.pod("demo", "frontend-1");
    let be1 = lab.pod("demo", "backend-1");
    let underlay = format!("ciliate-{}-net", lab.name);
    let state_dir = lab.state_dir().display().to_string();

    let etcd = lab.process("etcd");
    let argv = proc_cmdline(etcd);
    let env = proc_environ(etcd);
    assert!(
        argv.first().is_some_and(|a| a.ends_with("etcd"))
            && argv.iter().any(|a| a.starts_with(&state_dir)),
        "pid {etcd} is not the lab's etcd: {argv:?}"
    );
    assert!(runs_in(etcd, &underlay), "etcd {etcd} is not in {underlay}");
    for n in [&n0, &n1] {
        let (_, st) = status(n);
        assert_eq!(st["cluster"]["connected"], true, "{}: {st:#}", n.name);
    }

    let held = Held::open(&fe0, &be1, 16.0);
    let stopped = Instant::now();
    kill_9(etcd);

    // Both agents notice within a few seconds, and say why they are degraded.
    for n in [&n0, &n1] {
        let mut last = Value::Null;
        let noticed = poll(Duration::from_secs(5), || {
            last = status(n).1;
            (last["cluster"]["connected"] == false).then_some(())
        });
        assert!(
            noticed.is_some(),
            "{}: cluster.connected is not false 5s after etcd died: {last:#}",
            n.name
        );
        eprintln!(
            "{} reports etcd disconnected {:.1}s after it died",
            n.name,
            stopped.elapsed().as_secs_f64()
        );
        assert_eq!(last["health"], "degraded", "{last:#}");
        assert!(
            last["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.as_str().is_some_and(|p| p.contains("etcd"))),
            "no problem names etcd: {last:#}"
        );
    }

    // Existing pods keep talking across nodes while etcd is away.
    let mut rounds = 0;
    let mut failed = Vec::new();
    while stopped.elapsed() < Duration::from_secs(10) {
        for (from, to) in [(&fe0, &be1), (&fe1, &be0), (&be1, &fe0)] {
            if let Err(e) = reaches(from, to) {
                failed.push(format!(
                    "{:.1}s without etcd: {e}",
                    stopped.elapsed().as_secs_f64()
                ));
            }
        }
        rounds += 1;
        thread::sleep(Duration::from_millis(300));
    }
    assert!(
        failed.is_empty(),
        "without etcd, {} of {} new connections failed:\n{}",
        failed.len(),
        rounds * 3,
        failed.join("\n")
    );

    // etcd back, as the lab started it.
    let etcd_log = lab.state_dir().join("etcd.log");
    lab.start_in(&underlay, &argv, &env, &etcd_log);
    let resumed = Instant::now();
    for n in [&n0, &n1] {
        let mut last = Value::Null;
        let back = poll(
            Duration::from_secs(15).saturating_sub(resumed.elapsed()),
            || {
                last = status(n).1;
                (last["cluster"]["connected"] == true).then_some(())
            },
        );
        assert!(
            back.is_some(),
            "{}: cluster.connected is not true 15s after etcd came back: {last:#}",
            n.name
        );
    }
    eprintln!(
        "both agents reconnected {:.1}s after etcd came back",
        resumed.elapsed().as_secs_f64()
    );
    let hold = held.finish();
    eprintln!("held across the outage: {hold}");
    assert_survived("frontend-0 -> backend-1 across the etcd outage", &hold, 100);

    // A new pod on node 1, with a label set never seen before (a new identity from etcd).
    let late = Pod {
        name: "late".to_owned(),
        namespace: "demo".to_owned(),
        node: n1.name.clone(),
        netns: format!("{}-late", n1.netns),
        ip: Ipv4Addr::UNSPECIFIED,
    };
    let added = Instant::now();
    let late = cni_add(&mut lab, &n1, late, "app=late");
    let late_id = endpoint_identity(&n1, &late);
    assert!(late_id >= 256, "new pod got a reserved identity {late_id}");
    let reached = poll(Duration::from_secs(5), || reaches(&fe0, &late).ok());
    assert!(
        reached.is_some(),
        "the pod added after etcd came back is not reachable from node 0 within 5s: {:?}",
        reaches(&fe0, &late)
    );
    eprintln!(
        "new pod {} ({}) reachable from node 0 {:.1}s after its CNI ADD",
        late.reference(),
        late.ip,
        added.elapsed().as_secs_f64()
    );
    // Node 0 learned its identity: its flows to the new pod carry it.
    let ip = late.ip.to_string();
    let mut seen = Vec::new();
    let known = poll(Duration::from_secs(5), || {
        let (_, cport) = connect(&fe0, late.ip, DEMO_PORT).ok()?;
        seen = observe(&n0, &["--last", "50", "--ip", &ip])
            .into_iter()
            .filter(|f| of_connection(f, (fe0.ip, cport), (late.ip, DEMO_PORT)))
            .collect();
        seen.iter()
            .find(|f| {
                f["trace_observation_point"] == "TO_OVERLAY"
                    && f["destination"]["identity"].as_u64() == Some(late_id)
            })
            .cloned()
    });
    assert!(
        known.is_some(),
        "node 0 does not carry the new pod's identity {late_id} within 5s; its flows: {seen:#?}"
    );
}

/// CNI ADD of `pod` (in a new namespace `pod.netns`) through `node`'s agent, as the lab does;
/// starts its ident server and returns it with its address.
fn cni_add(lab: &mut LabGuard, node: &Node, mut pod: Pod, labels: &str) -> Pod {
    let st = Command::new("ip")
        .args(["netns", "add", &pod.netns])
        .status()
        .expect("ip netns add");
    assert!(st.success(), "ip netns add {}", pod.netns);
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ciliate",
        "type": "ciliate-cni",
        "agentSocket": node.socket,
    })
    .to_string();
    let cni = bin("ciliate-cni");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(&node.netns).display()))
        .arg(&cni)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("{}-{}", lab.name, pod.name))
        .env("CNI_NETNS", netns_path(&pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni.parent().expect("bin dir"))
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={};CILIATE_LABELS={labels}",
                pod.namespace, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ciliate-cni");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), config.as_bytes())
        .expect("write CNI config");
    let out = child.wait_with_output().expect("ciliate-cni");
    assert!(
        out.status.success(),
        "CNI ADD of {}: {}",
        pod.reference(),
        text(&out)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("ADD result JSON");
    pod.ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in the ADD result {result}"));
    let env = vec![
        (
            "PATH".to_owned(),
            "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("CILIATE_LAB".to_owned(), lab.name.clone()),
    ];
    let argv = vec![
        bin("ciliate-bench").display().to_string(),
        "ident-server".to_owned(),
        "--id".to_owned(),
        pod.name.clone(),
        "--port".to_owned(),
        DEMO_PORT.to_string(),
    ];
    let log = lab.state_dir().join("servers.log");
    lab.start_in(&pod.netns.clone(), &argv, &env, &log);
    // Listening, seen from inside the pod itself.
    let own = pod.clone();
    let up = poll(Duration::from_secs(5), || {
        connect(&own, Ipv4Addr::LOCALHOST, DEMO_PORT).ok()
    });
    assert!(
        up.is_some(),
        "the ident server of {} did not start",
        pod.reference()
    );
    pod
}

/// `ciliate policy trace -o json` at `node`: exit code and answer.
fn trace_at(node: &Node, src: &str, dst: &str) -> (Option<i32>, Value) {
    let port = DEMO_PORT.to_string();
    let out = at(
        node,
        &[
            "policy", "trace", "--src", src, "--dst", dst, "--dport", &port, "-o", "json",
        ],
    );
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("trace {src} -> {dst} at {}: {e}: {}", node.name, text(&out)));
    (out.status.code(), v)
}

/// (#14) `policy trace` and `identity get` answer from the cluster view: a pod of the other
/// node, by name or address, is its identity (not `world`), judged as its node judges it.
#[test]
fn trace_and_identity_answer_for_pods_of_other_nodes() {
    privileged!();
    let Some((_serial, lab)) = demo_lab() else {
        return;
    };
    let (n0, n1) = (lab.node(0), lab.node(1));
    let client = lab.pod("demo", "frontend-0");
    let server = lab.pod("demo", "backend-1");
    let client_id = endpoint_identity(&n0, &client);
    let server_id = endpoint_identity(&n1, &server);
    // At node 0, the server is on node 1: by name and by address.
    for dst in [server.reference(), server.ip.to_string()] {
        let (code, t) = trace_at(&n0, &client.reference(), &dst);
        assert_eq!(code, Some(0), "frontend -> backend is allowed: {t:#}");
        assert_eq!(t["dst"]["identity"].as_u64(), Some(server_id), "{t:#}");
        assert_eq!(t["dst"]["kind"], "remote-endpoint", "{t:#}");
        assert_eq!(t["dst"]["node"], n1.name.as_str(), "{t:#}");
        assert_eq!(t["ingress"]["reason"], "allowed-by", "{t:#}");
    }
    // At node 1, the client is on node 0.
    let (code, t) = trace_at(&n1, &client.ip.to_string(), &server.reference());
    assert_eq!(code, Some(0), "{t:#}");
    assert_eq!(t["src"]["identity"].as_u64(), Some(client_id), "{t:#}");
    // A backend does not reach another backend's port across nodes: default deny at the
    // destination, named by the other node.
    let other = lab.pod("demo", "backend-0");
    let (code, t) = trace_at(&n1, &server.reference(), &other.reference());
    assert_eq!(code, Some(1), "{t:#}");
    assert_eq!(t["dropReason"], 133, "{t:#}");
    // Node 0 knows node 1's pod's identity.
    let out = at(
        &n0,
        &["identity", "get", &server_id.to_string(), "-o", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let i: Value = serde_json::from_slice(&out.stdout).expect("identity JSON");
    assert_eq!(i["id"].as_u64(), Some(server_id), "{i:#}");
    assert!(
        i["labels"]
            .as_array()
            .is_some_and(|l| l.contains(&Value::from("k8s:io.kubernetes.pod.namespace=demo"))),
        "{i:#}"
    );
}

/// The argument after `flag` in a command line.
fn arg_after(argv: &[String], flag: &str) -> String {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("no {flag} in {argv:?}"))
}

/// POLICY_DENIED drops node `n` reports for `from` -> `to`.
fn policy_drops(n: &Node, from: &Pod, to: &Pod) -> usize {
    observe(
        n,
        &[
            "--last",
            "1000",
            "--verdict",
            "DROPPED",
            "--ip",
            &from.ip.to_string(),
        ],
    )
    .iter()
    .filter(|f| {
        f["IP"]["destination"] == to.ip.to_string() && f["drop_reason_desc"] == "POLICY_DENIED"
    })
    .count()
}

/// (4) Restarts of an agent (issue #6): with etcd down, it answers its API at once from the
/// cluster view it saved, allowed traffic across nodes keeps flowing and denied traffic stays
/// denied, and it joins once etcd is back; with etcd up, a restart drops no allowed packet.
#[test]
fn restarting_an_agent_with_etcd_down_or_up_keeps_cross_node_policy() {
    privileged!();
    let Some((_serial, mut lab)) = demo_lab() else {
        return;
    };
    let n1 = lab.node(1);
    let fe0 = lab.pod("demo", "frontend-0");
    let be0 = lab.pod("demo", "backend-0");
    let fe1 = lab.pod("demo", "frontend-1");
    let be1 = lab.pod("demo", "backend-1");
    let underlay = format!("ciliate-{}-net", lab.name);
    let agent_argv = proc_cmdline(n1.agent_pid);
    let agent_env = proc_environ(n1.agent_pid);
    let saved = PathBuf::from(arg_after(&agent_argv, "--state-dir"))
        .join(&n1.name)
        .join("cluster.json");
    assert!(
        poll(Duration::from_secs(5), || saved.exists().then_some(())).is_some(),
        "{} never saved its cluster view",
        saved.display()
    );
    let etcd = lab.process("etcd");
    let etcd_argv = proc_cmdline(etcd);
    let etcd_env = proc_environ(etcd);

    // (b) etcd down, then the agent restarted.
    kill_9(etcd);
    kill_9(n1.agent_pid);
    lab.start_in(&n1.netns, &agent_argv, &agent_env, &n1.log);
    let agent_pid = lab.children.last().map(Child::id).expect("restarted agent");
    let started = Instant::now();
    let mut last = Value::Null;
    let answered = poll(Duration::from_secs(10), || {
        last = status(&n1).1;
        (!last.is_null()).then_some(())
    });
    assert!(answered.is_some(), "no status without etcd");
    eprintln!(
        "restarted agent answers {:.1}s after start, etcd down",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(last["cluster"]["connected"], false, "{last:#}");
    assert!(
        last["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.as_str().is_some_and(|p| p.contains("saved"))),
        "status says it uses the saved cluster state: {last:#}"
    );
    let mut failed = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        for (from, to) in [(&fe0, &be1), (&fe1, &be0), (&be1, &fe0)] {
            if let Err(e) = reaches(from, to) {
                failed.push(e);
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(failed.is_empty(), "without etcd: {failed:#?}");
    assert!(
        connect(&be0, be1.ip, DEMO_PORT).is_err(),
        "backend-0 -> backend-1 must stay denied"
    );
    assert_eq!(status(&n1).0.map(|c| c != 2), Some(true), "still answering");

    // etcd back: the agent joins.
    lab.start_in(
        &underlay,
        &etcd_argv,
        &etcd_env,
        &lab.state_dir().join("etcd.log"),
    );
    let back = poll(Duration::from_secs(20), || {
        last = status(&n1).1;
        (last["cluster"]["connected"] == true && last["health"] == "ok").then_some(())
    });
    assert!(back.is_some(), "not joined after etcd came back: {last:#}");
    reaches(&fe0, &be1).unwrap_or_else(|e| panic!("after etcd came back: {e}"));

    // (a) a restart with etcd up, under a steady probe: no allowed packet is denied.
    let before = policy_drops(&n1, &fe0, &be1);
    let probe = {
        let (fe0, be1) = (fe0.clone(), be1.clone());
        thread::spawn(move || {
            let t = Instant::now();
            let mut fails = Vec::new();
            let mut n = 0;
            while t.elapsed() < Duration::from_secs(6) {
                if let Err(e) = reaches(&fe0, &be1) {
                    fails.push(e);
                }
                n += 1;
            }
            (n, fails)
        })
    };
    thread::sleep(Duration::from_millis(500));
    kill_9(agent_pid);
    lab.start_in(&n1.netns, &agent_argv, &agent_env, &n1.log);
    let (n, fails) = probe.join().expect("probe");
    assert!(
        fails.is_empty(),
        "{} of {n} probes failed: {fails:#?}",
        fails.len()
    );
    let healthy = poll(Duration::from_secs(20), || {
        last = status(&n1).1;
        (last["health"] == "ok").then_some(())
    });
    assert!(healthy.is_some(), "{last:#}");
    let after = policy_drops(&n1, &fe0, &be1);
    assert_eq!(
        after, 0,
        "frontend-0 -> backend-1 denied over the restart ({before} before in the old agent's ring)"
    );
}

/// A TCP connection from inside node `netns` (the node's own stack) to `dst:port`: the ident
/// line the server sent, or what went wrong.
fn connect_from_node(netns: &str, dst: Ipv4Addr, port: u16) -> Result<String, String> {
    let path = netns_path(netns);
    thread::spawn(move || {
        let ns = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns: {e}"))?;
        let s = TcpStream::connect_timeout(&(dst, port).into(), Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        Ok(line.trim().to_owned())
    })
    .join()
    .expect("thread in the node's netns")
}

/// (5) Host traffic across nodes (issue #10 item 13): node 0's own connection to a pod of
/// node 1 goes through the tunnel as the host (node 0's Hubble shows it handed to the overlay
/// with the host identity) and node 1 judges it as remote-node: the demo policy (frontends
/// only) drops it with POLICY_DENIED, a policy allowing `remote-node` lets it in.
#[test]
fn a_nodes_own_connection_to_a_remote_pod_is_tunnelled_and_judged_as_remote_node() {
    privileged!();
    let Some((_serial, lab)) = demo_lab() else {
        return;
    };
    let (n0, n1) = (lab.node(0), lab.node(1));
    let server = lab.pod("demo", "backend-1");
    assert_eq!(server.node, n1.name);

    let denied = connect_from_node(&n0.netns, server.ip, DEMO_PORT);
    assert!(
        denied.is_err(),
        "node 0 -> backend-1 must be denied by the demo policy: {denied:?}"
    );
    let dst = server.ip.to_string();
    let mut seen = Vec::new();
    let drop = poll(Duration::from_secs(10), || {
        seen = observe(&n1, &["--last", "200", "--verdict", "DROPPED"])
            .into_iter()
            .filter(|f| f["IP"]["destination"] == dst)
            .collect();
        seen.iter()
            .find(|f| f["drop_reason_desc"] == "POLICY_DENIED")
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no POLICY_DENIED drop towards {dst} on {} within 10s: {seen:#?}",
            n1.name
        )
    });
    eprintln!("drop on {}: {drop}", n1.name);
    assert_eq!(
        drop["source"]["identity"].as_u64(),
        Some(6),
        "node 0 is remote-node to node 1: {drop:#}"
    );
    let mut seen0 = Vec::new();
    let tunnelled = poll(Duration::from_secs(10), || {
        seen0 = observe(&n0, &["--last", "200"])
            .into_iter()
            .filter(|f| f["IP"]["destination"] == dst)
            .collect();
        seen0
            .iter()
            .find(|f| f["trace_observation_point"] == "TO_OVERLAY")
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no TO_OVERLAY flow towards {dst} on {} within 10s: {seen0:#?}",
            n0.name
        )
    });
    assert_eq!(
        tunnelled["source"]["identity"].as_u64(),
        Some(1),
        "sent as the host: {tunnelled:#}"
    );

    let allow = lab.state_dir().join("allow-remote-node.yaml");
    std::fs::write(
        &allow,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: \
         backend-from-remote-node\n  namespace: demo\nspec:\n  endpointSelector:\n    \
         matchLabels:\n      app: backend\n  ingress:\n  - fromEntities: [remote-node]\n",
    )
    .expect("write policy");
    let out = at(
        &n1,
        &[
            "policy",
            "import",
            "-f",
            allow.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.status.success(), "policy import: {}", text(&out));
    let mut last = Err(String::new());
    let answered = poll(Duration::from_secs(10), || {
        last = connect_from_node(&n0.netns, server.ip, DEMO_PORT);
        last.as_ref().ok().filter(|a| **a == server.name).cloned()
    });
    assert!(
        answered.is_some(),
        "node 0 -> backend-1 with remote-node allowed: {last:?}"
    );
}

/// The HTTP status `curl` gets from `pod` for `url` (`None`: no HTTP answer).
fn http_status(pod: &Pod, url: &str) -> Option<u16> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(&pod.netns).display()))
        .args([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "3",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .expect("curl");
    let code: u16 = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (out.status.success() && code != 0).then_some(code)
}

#[test]
fn http_rules_hold_across_nodes_on_both_sides() {
    privileged!();
    let Some((_serial, mut lab)) = demo_lab() else {
        return;
    };
    let (n0, n1) = (lab.node(0), lab.node(1));
    let client = lab.pod("demo", "frontend-0");
    let server = lab.pod("demo", "backend-1");
    assert_eq!(
        (client.node.as_str(), server.node.as_str()),
        (n0.name.as_str(), n1.name.as_str())
    );
    // HTTP on 9090 in the backend (answers "<pod> <METHOD> <path>"), reaped by the guard.
    let argv: Vec<String> = vec![
        bin("ciliate-bench").display().to_string(),
        "http-ident-server".into(),
        "--id".into(),
        server.name.clone(),
        "--port".into(),
        "9090".into(),
    ];
    let log = lab.state_dir().join("servers.log");
    lab.start_in(&server.netns, &argv, &[], &log);
    let (netns, ip) = (server.netns.clone(), server.ip);
    poll(Duration::from_secs(5), || {
        in_netns(&netns, move || {
            TcpStream::connect_timeout(&(ip, 9090).into(), Duration::from_secs(1))
        })
        .ok()
    })
    .expect("the backend's HTTP server listens");
    // The backend's ingress (enforced by node 1's proxy) and the frontend's egress (node 0's
    // proxy, whose upstream crosses the tunnel as the frontend) both have HTTP rules.
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-http, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
      rules: {http: [{method: GET, path: "/(public|admin)(/.*)?"}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-http, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public(/.*)?"}]}
"#;
    let file = lab.state_dir().join("http-policy.yaml");
    std::fs::write(&file, policy).expect("write policy");
    for n in [&n0, &n1] {
        let out = at(n, &["apply", "-f", &file.display().to_string()]);
        assert!(out.status.success(), "apply at {}: {}", n.name, text(&out));
    }
    let url = |path: &str| format!("http://{}:9090{path}", server.ip);
    poll(Duration::from_secs(10), || {
        (http_status(&client, &url("/public/x")) == Some(200)).then_some(())
    })
    .unwrap_or_else(|| panic!("GET /public/x across nodes never answered 200"));
    // Refused by the client's own egress rule on node 0.
    assert_eq!(http_status(&client, &url("/admin")), Some(403));
    // Refused by the server's ingress rule on node 1 (the egress rule allows every GET /public).
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(&client.netns).display()))
        .args([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "3",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
        ])
        .arg(url("/public"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "POST /public");

    // Node 1's proxy judged the real client: its L7 flows name frontend-0 on node 0.
    let flows = poll(Duration::from_secs(10), || {
        let f = observe(&n1, &["--type", "l7", "--last", "100"]);
        f.iter()
            .any(|f| {
                f["l7"]["type"] == "REQUEST"
                    && f["verdict"] == "FORWARDED"
                    && pod_of(&f["source"]) == "demo/frontend-0"
                    && pod_of(&f["destination"]) == "demo/backend-1"
            })
            .then_some(f)
    })
    .unwrap_or_else(|| panic!("no forwarded L7 request from frontend-0 on {}", n1.name));
    assert!(
        flows.iter().any(|f| f["traffic_direction"] == "INGRESS"),
        "{flows:#?}"
    );
    // And node 0's proxy reports the egress side, with the request it refused.
    poll(Duration::from_secs(10), || {
        observe(&n0, &["--type", "l7", "--last", "100"])
            .iter()
            .any(|f| {
                f["traffic_direction"] == "EGRESS"
                    && f["verdict"] == "DROPPED"
                    && f["l7"]["http"]["url"]
                        .as_str()
                        .is_some_and(|u| u.ends_with("/admin"))
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no dropped egress L7 flow on {}", n0.name));
}

/// `hubble <args> --server <relay>`: its output, insisting it worked.
fn hubble_at(hubble: &Path, relay: &str, args: &[&str]) -> String {
    let out = Command::new(hubble)
        .args(args)
        .args(["--server", relay])
        .output()
        .expect("run hubble");
    assert!(out.status.success(), "hubble {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

mod relay_client {
    //! A gRPC client of the relay, generated from Hubble's observer protos.

    use std::time::Duration;

    use ciliate_observer::client::{connect, Target};
    use ciliate_observer::proto::observer::get_flows_response::ResponseTypes;
    use ciliate_observer::proto::observer::{
        GetFlowsRequest, GetFlowsResponse, GetNodesRequest, ServerStatusRequest,
        ServerStatusResponse,
    };
    use ciliate_observer::proto::relay::NodeState;

    /// The relay's answers, asked on a runtime of the caller's.
    pub struct Relay {
        pub rt: tokio::runtime::Runtime,
        pub address: String,
    }

    impl Relay {
        pub fn new(address: &str) -> Self {
            Self {
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime"),
                address: address.to_owned(),
            }
        }

        fn client(
            &self,
        ) -> ciliate_observer::proto::observer::observer_client::ObserverClient<
            tonic::transport::Channel,
        > {
            self.rt
                .block_on(connect(
                    &Target::Tcp(self.address.clone()),
                    Duration::from_secs(5),
                ))
                .expect("connect to the relay")
        }

        /// GetFlows without follow: every response.
        pub fn flows(&self, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
            let mut c = self.client();
            self.rt.block_on(async {
                let mut s = c.get_flows(req).await.expect("GetFlows").into_inner();
                let mut v = Vec::new();
                while let Some(r) = s.message().await.expect("GetFlows stream") {
                    v.push(r);
                }
                v
            })
        }

        pub fn status(&self) -> ServerStatusResponse {
            let mut c = self.client();
            self.rt
                .block_on(c.server_status(ServerStatusRequest {}))
                .expect("ServerStatus")
                .into_inner()
        }

        /// (name, state, flows) of every node.
        pub fn nodes(&self) -> Vec<(String, NodeState, u64)> {
            let mut c = self.client();
            self.rt
                .block_on(c.get_nodes(GetNodesRequest {}))
                .expect("GetNodes")
                .into_inner()
                .nodes
                .into_iter()
                .map(|n| {
                    let state = NodeState::try_from(n.state).unwrap_or(NodeState::UnknownNodeState);
                    (n.name, state, n.num_flows)
                })
                .collect()
        }
    }

    /// (node, time in ns) of the flows.
    pub fn flows_of(v: &[GetFlowsResponse]) -> Vec<(String, i128)> {
        v.iter()
            .filter_map(|r| match &r.response_types {
                Some(ResponseTypes::Flow(f)) => {
                    let t = f.time.expect("flow time");
                    Some((
                        r.node_name.clone(),
                        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// (state, nodes) of the node status events.
    pub fn statuses_of(v: &[GetFlowsResponse]) -> Vec<(NodeState, Vec<String>)> {
        v.iter()
            .filter_map(|r| match &r.response_types {
                Some(ResponseTypes::NodeStatus(n)) => Some((
                    NodeState::try_from(n.state_change).unwrap_or(NodeState::UnknownNodeState),
                    n.node_names.clone(),
                )),
                _ => None,
            })
            .collect()
    }
}

/// (7) The lab's relay: the flows of both nodes in one stream in time order, GetNodes and
/// ServerStatus per node, `ciliate observe --server` and Hubble's own CLI against it; with
/// one node's agent killed it answers with the other and names the missing one, and takes
/// the node back once its agent is up again.
#[test]
fn the_relay_merges_both_nodes_and_names_the_missing_one() {
    use ciliate_observer::proto::observer::GetFlowsRequest;
    use ciliate_observer::proto::relay::NodeState;
    use relay_client::{flows_of, statuses_of, Relay};

    privileged!();
    let Some((_serial, mut lab)) = demo_lab() else {
        return;
    };
    let address = lab.state["relay"]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("lab.json has no relay: {}", lab.state))
        .to_owned();
    let (n0, n1) = (lab.node(0), lab.node(1));
    // The relay names nodes as their agents do on flows: with the cluster in front.
    let names = [
        format!("default/{}", n0.name),
        format!("default/{}", n1.name),
    ];
    let (q0, q1) = (names[0].clone(), names[1].clone());
    let out = ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("lab status JSON");
    assert_eq!(status["relay"]["answering"], true, "{status:#}");
    assert_eq!(status["relay"]["address"], address.as_str());

    // Traffic on both nodes: each frontend to the backend of the other node.
    let (fe0, be1) = (lab.pod("demo", "frontend-0"), lab.pod("demo", "backend-1"));
    let (fe1, be0) = (lab.pod("demo", "frontend-1"), lab.pod("demo", "backend-0"));
    reaches(&fe0, &be1).expect("frontend-0 -> backend-1");
    reaches(&fe1, &be0).expect("frontend-1 -> backend-0");

    let relay = Relay::new(&address);
    let all = poll(Duration::from_secs(20), || {
        let v = relay.flows(GetFlowsRequest::default());
        let f = flows_of(&v);
        names
            .iter()
            .all(|n| f.iter().any(|(node, _)| node == n))
            .then_some(v)
    })
    .unwrap_or_else(|| panic!("flows of both nodes through the relay at {address}"));
    assert_eq!(
        statuses_of(&all)[0],
        (NodeState::NodeConnected, names.to_vec()),
        "the stream starts by naming the nodes it reads"
    );
    let flows = flows_of(&all);
    assert!(
        flows.windows(2).all(|w| w[0].1 <= w[1].1),
        "the merged flows are not in time order: {flows:?}"
    );
    eprintln!(
        "relay: {} flows of {names:?} merged in time order",
        flows.len()
    );
    // --last 5: the newest five of the cluster.
    let last = flows_of(&relay.flows(GetFlowsRequest {
        number: 5,
        ..Default::default()
    }));
    assert_eq!(last.len(), 5, "{last:?}");

    let nodes = relay.nodes();
    assert_eq!(
        nodes
            .iter()
            .map(|(n, s, _)| (n.clone(), *s))
            .collect::<Vec<_>>(),
        names
            .iter()
            .map(|n| (n.clone(), NodeState::NodeConnected))
            .collect::<Vec<_>>()
    );
    assert!(nodes.iter().all(|(_, _, flows)| *flows > 0), "{nodes:?}");
    let st = relay.status();
    assert_eq!(st.num_connected_nodes.map(|v| v.value), Some(2), "{st:?}");
    assert_eq!(st.num_flows, nodes.iter().map(|(_, _, f)| f).sum::<u64>());

    // `ciliate observe --server`.
    let out = ciliate(&[
        "observe", "--server", &address, "--last", "100", "-o", "json",
    ]);
    assert!(out.status.success(), "observe --server: {}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    for n in &names {
        assert!(
            printed.contains(n.as_str()),
            "observe --server: no flow of {n}: {printed}"
        );
    }

    // Hubble's own CLI.
    let hubble = ciliate_testutil::hubble::hubble_cli();
    match &hubble {
        Some(h) => {
            let out = hubble_at(h, &address, &["observe", "--last", "100", "-o", "json"]);
            for n in &names {
                assert!(
                    out.contains(n.as_str()),
                    "hubble observe: no flow of {n}: {out}"
                );
            }
            let out = hubble_at(h, &address, &["status"]);
            assert!(out.contains("Connected Nodes: 2/2"), "hubble status: {out}");
            let out = hubble_at(h, &address, &["list", "nodes"]);
            for n in &names {
                assert!(out.contains(n.as_str()), "hubble list nodes: {out}");
            }
            assert_eq!(
                out.matches("Connected").count(),
                2,
                "hubble list nodes: {out}"
            );
        }
        None => ciliate_testutil::hubble::skip_without_hubble("the relay's Hubble CLI part"),
    }

    // A follower from before the node goes away hears of it.
    let follower = {
        let address = address.clone();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let relay = Relay::new(&address);
            relay.rt.block_on(async {
                let mut c = ciliate_observer::client::connect(
                    &ciliate_observer::client::Target::Tcp(address.clone()),
                    Duration::from_secs(5),
                )
                .await
                .expect("connect");
                let mut s = c
                    .get_flows(GetFlowsRequest {
                        follow: true,
                        ..Default::default()
                    })
                    .await
                    .expect("GetFlows follow")
                    .into_inner();
                while let Ok(Some(r)) = s.message().await {
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            });
        });
        rx
    };
    let first = follower
        .recv_timeout(Duration::from_secs(10))
        .expect("the follower's first response");
    assert_eq!(
        statuses_of(&[first]),
        [(NodeState::NodeConnected, names.to_vec())]
    );

    // Kill node 1's agent.
    let pid = n1.agent_pid;
    let argv = proc_cmdline(pid);
    let env = proc_environ(pid);
    kill_9(pid);
    let st = poll(Duration::from_secs(20), || {
        let st = relay.status();
        (st.num_unavailable_nodes.map(|v| v.value) == Some(1)).then_some(st)
    })
    .expect("the relay notices the killed agent");
    assert_eq!(st.unavailable_nodes, std::slice::from_ref(&q1), "{st:?}");
    assert_eq!(st.num_connected_nodes.map(|v| v.value), Some(1));
    let nodes = relay.nodes();
    assert!(
        nodes.contains(&(q1.clone(), NodeState::NodeUnavailable, 0)),
        "{nodes:?}"
    );
    let v = relay.flows(GetFlowsRequest::default());
    assert!(
        flows_of(&v).iter().all(|(n, _)| *n == q0) && !flows_of(&v).is_empty(),
        "only node 0's flows while node 1 is away: {:?}",
        flows_of(&v)
    );
    assert!(
        statuses_of(&v).contains(&(NodeState::NodeUnavailable, vec![q1.clone()])),
        "the answer names the missing node: {:?}",
        statuses_of(&v)
    );
    let heard = poll(Duration::from_secs(10), || {
        let r = follower.recv_timeout(Duration::from_millis(200)).ok()?;
        statuses_of(&[r])
            .into_iter()
            .find(|(s, n)| *s == NodeState::NodeUnavailable && *n == [q1.clone()])
    });
    assert!(
        heard.is_some(),
        "the follower was not told that {} went away",
        n1.name
    );
    if let Some(h) = &hubble {
        let out = hubble_at(h, &address, &["status"]);
        assert!(out.contains("Connected Nodes: 1/2"), "hubble status: {out}");
        assert!(
            out.contains(&q1),
            "hubble status names the missing node: {out}"
        );
    }

    // Start it again, as the lab did: the relay takes it back.
    let log = n1.log.clone();
    lab.start_in(&n1.netns, &argv, &env, &log);
    let back = poll(Duration::from_secs(30), || {
        let st = relay.status();
        (st.num_connected_nodes.map(|v| v.value) == Some(2)).then_some(())
    });
    assert!(back.is_some(), "the relay did not reconnect to {}", n1.name);
    let heard = poll(Duration::from_secs(10), || {
        let r = follower.recv_timeout(Duration::from_millis(200)).ok()?;
        statuses_of(&[r])
            .into_iter()
            .find(|(s, n)| *s == NodeState::NodeConnected && *n == [q1.clone()])
    });
    assert!(
        heard.is_some(),
        "the follower was not told that {} is back",
        n1.name
    );
    reaches(&fe1, &be0).expect("frontend-1 -> backend-0 after the restart");
    let both = poll(Duration::from_secs(20), || {
        let f = flows_of(&relay.flows(GetFlowsRequest::default()));
        f.iter().any(|(n, _)| *n == q1).then_some(())
    });
    assert!(
        both.is_some(),
        "no flows of {} after its agent came back",
        n1.name
    );
}
