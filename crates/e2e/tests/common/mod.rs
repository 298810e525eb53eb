//! Fixtures for end-to-end tests: a node (a network namespace running a real `ciliate-agent`)
//! and pods (network namespaces wired by the real `ciliate-cni`, invoked as a runtime does).
//! Everything a fixture makes is removed on drop, also when the test fails.

#![allow(dead_code)]

pub mod lab;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ciliate_testutil::{unique_name, TestNetns};
use serde_json::Value;

/// A binary of the workspace, built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs the `ciliate` CLI (no --socket: the caller names it when needed).
pub fn ciliate(args: &[&str]) -> Output {
    Command::new(bin("ciliate"))
        .args(args)
        .output()
        .expect("run ciliate")
}

/// A command's outcome for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until `f` holds, up to 20 s (what the agent, the proxy or a server does after a command
/// returns happens asynchronously); fails the test naming `what` otherwise.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The node's own address inside its namespace (documentation range: never routed anywhere).
pub const NODE_IP: &str = "192.0.2.1/32";

/// One node: its namespace, its agent, its state and its pins.
pub struct Node {
    pub name: String,
    pub netns: TestNetns,
    pub state: tempfile::TempDir,
    pub socket: PathBuf,
    pub cidr: String,
    extra_args: Vec<String>,
    agent: Option<Child>,
}

impl Node {
    /// A node namespace with an agent serving `cidr`.
    pub fn start(cidr: &str) -> Self {
        Self::start_with(cidr, &[])
    }

    /// The same, with extra agent flags (kept for restarts).
    pub fn start_with(cidr: &str, extra_args: &[&str]) -> Self {
        Self::start_with_setup(cidr, extra_args, |_| {})
    }

    /// The same, with `setup` run on the node's namespace before the agent starts (e.g. to
    /// put a server the agent talks to inside it).
    pub fn start_with_setup(
        cidr: &str,
        extra_args: &[&str],
        setup: impl FnOnce(&TestNetns),
    ) -> Self {
        let netns = TestNetns::new("cn");
        // A node has an address of its own (pods and the node talk through it). On lo,
        // because this kernel has no dummy interfaces.
        netns.exec("ip", &["addr", "add", NODE_IP, "dev", "lo"]);
        setup(&netns);
        let state = tempfile::tempdir().expect("state dir");
        let socket = state.path().join("agent.sock");
        let mut node = Self {
            name: unique_name("node"),
            netns,
            state,
            socket,
            cidr: cidr.to_owned(),
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            agent: None,
        };
        node.start_agent();
        node
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/ciliate").join(&self.name)
    }

    /// The cgroup whose processes get socket LB (the agent's default for this node).
    pub fn cgroup(&self) -> Option<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        let root = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })?;
        Some(root.join("ciliate").join(&self.name))
    }

    /// The Hubble-compatible observer's socket (the agent puts it beside its API socket).
    pub fn hubble_socket(&self) -> PathBuf {
        self.socket.with_file_name("hubble.sock")
    }

    /// `ciliate observe` against this node's observer; one JSON value per flow line.
    pub fn observe(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new(bin("ciliate"))
            .arg("observe")
            .arg("--hubble-socket")
            .arg(self.hubble_socket())
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("run ciliate observe");
        assert!(
            out.status.success(),
            "observe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.state.path().join("agent.log")
    }

    /// Starts the agent and waits until it answers `ciliate status`.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let child = self
            .netns
            .command(bin("ciliate-agent"))
            .args(["--node-name", &self.name, "--pod-cidr", &self.cidr])
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--socket")
            .arg(&self.socket)
            .args(["--ct-gc-interval", "2"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn ciliate-agent");
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("agent exited with {status}:\n{}", self.agent_log());
            }
            if self.cli(&["status"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up:\n{}",
                self.agent_log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to the agent.
    pub fn signal_agent(&self, signal: nix::sys::signal::Signal) {
        let pid = self.agent.as_ref().expect("agent running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .expect("signal agent");
    }

    /// The running agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Stops the agent as `systemctl stop` does (SIGTERM) and waits for it to exit (SIGKILL
    /// after 20 s).
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }

    /// `kill -9` the agent.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the `ciliate` CLI against this node's agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("ciliate"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run ciliate")
    }

    /// Runs the CLI and parses its `-o json` output.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "ciliate {all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    /// The network configuration a runtime would hand the plugin.
    pub fn cni_config(&self, version: &str) -> String {
        serde_json::json!({
            "cniVersion": version,
            "name": "ciliate",
            "type": "ciliate-cni",
            "agentSocket": self.socket,
        })
        .to_string()
    }

    /// Invokes the CNI plugin exactly as a runtime does: env vars, config on stdin, in the
    /// node's namespace.
    pub fn cni(&self, env: &[(&str, &str)], stdin: &str) -> CniOutcome {
        let mut cmd = self.netns.command(bin("ciliate-cni"));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", "/opt/cni/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ciliate-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("wait ciliate-cni");
        CniOutcome {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// ADD a pod of namespace `default` the normal way; panics with the plugin's answer when
    /// it fails.
    pub fn add_pod(&self, pod: &str, labels: &str) -> Pod {
        self.add_pod_in("default", pod, labels)
    }

    /// ADD a pod of `namespace`; panics with the plugin's answer when it fails.
    pub fn add_pod_in(&self, namespace: &str, pod: &str, labels: &str) -> Pod {
        let netns = TestNetns::new("cp");
        let container_id = format!("{}-{}", pod, unique_name("c"));
        let args =
            format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};CILIATE_LABELS={labels}");
        let out = self.cni(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &container_id),
                ("CNI_NETNS", &netns.path()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            &self.cni_config("1.0.0"),
        );
        assert!(
            out.ok,
            "ADD {pod} failed: {}\n{}\nagent log:\n{}",
            out.stdout,
            out.stderr,
            self.agent_log()
        );
        let result: Value = serde_json::from_str(&out.stdout).expect("ADD result is JSON");
        let addr = result["ips"][0]["address"]
            .as_str()
            .expect("ips[0].address");
        let ip: Ipv4Addr = addr
            .split('/')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("IPv4 address");
        Pod {
            name: pod.to_owned(),
            container_id,
            netns,
            ip,
            result,
        }
    }

    /// DEL a pod (the namespace stays until the Pod is dropped).
    pub fn del_pod(&self, pod: &Pod) -> CniOutcome {
        self.cni(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", &pod.container_id),
                ("CNI_NETNS", &pod.netns.path()),
                ("CNI_IFNAME", "eth0"),
            ],
            &self.cni_config("1.0.0"),
        )
    }

    /// Interface names in the node's namespace.
    pub fn links(&self) -> Vec<String> {
        self.netns
            .exec("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect()
    }

    /// Entries pinned for links under the node's bpffs directory.
    pub fn link_pins(&self) -> Vec<String> {
        std::fs::read_dir(self.pin_dir().join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // Endpoint links are `<ifindex>-from|to`; the node's own are `cgroup-*`.
                    .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts that nothing of any pod is left: links in the node's namespace are exactly
    /// `base_links` (those before the first pod), and no endpoint, allocated address, link
    /// pin or endpoint map entry remains.
    pub fn assert_no_pod_left(&self, base_links: &[String]) {
        let mut links = self.links();
        links.sort();
        let mut base = base_links.to_vec();
        base.sort();
        assert_eq!(links, base, "links left in the node namespace");
        assert_eq!(self.endpoint_count(), 0, "endpoints left");
        assert_eq!(self.ipam_allocated(), 0, "addresses left allocated");
        let pins = self.link_pins();
        assert!(pins.is_empty(), "link pins left: {pins:?}");
        assert_eq!(
            self.map_entries("cil_lxc_ifx"),
            0,
            "endpoint map entries left"
        );
    }

    /// Entries in use of a map, as `ciliate status` reports it.
    pub fn map_entries(&self, map: &str) -> u64 {
        let st = self.cli_json(&["status"]);
        st["datapath"]["maps"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == map))
            .and_then(|m| m["entries"].as_u64())
            .unwrap_or_else(|| panic!("map {map} not in status: {st}"))
    }

    pub fn ipam_allocated(&self) -> u64 {
        self.cli_json(&["status"])["ipam"]["allocated"]
            .as_u64()
            .expect("ipam.allocated")
    }

    pub fn endpoint_count(&self) -> usize {
        self.cli_json(&["endpoint", "list"])
            .as_array()
            .expect("list")
            .len()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        // What the agent started outlives it on purpose (the L7 proxy serves across agent
        // restarts): everything still in the node's namespace goes with the node.
        let pids = Command::new("ip")
            .args(["netns", "pids", self.netns.name()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Removing the pins detaches the programs; the namespace takes its links with it.
        let _ = std::fs::remove_dir_all(self.pin_dir());
        // The shared parents go too once the last node is gone (fails harmlessly otherwise).
        let _ = std::fs::remove_dir("/sys/fs/bpf/ciliate");
        if let Some(cg) = self.cgroup() {
            let _ = std::fs::remove_dir(&cg);
            if let Some(parent) = cg.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        if thread::panicking() {
            eprintln!("---- agent log of {} ----\n{}", self.name, self.agent_log());
        }
    }
}

/// A process that is killed when dropped (servers in pods).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Node {
    /// `ciliate apply -f` (or `delete`) of a manifest written to a file named `name`.
    pub fn manifest(&self, verb: &str, name: &str, yaml: &str) -> Output {
        let path = self.state.path().join(name);
        std::fs::write(&path, yaml).expect("write manifest");
        Command::new(bin("ciliate"))
            .arg("--socket")
            .arg(&self.socket)
            .args([verb, "-f"])
            .arg(&path)
            .output()
            .expect("run ciliate apply")
    }

    /// Applies a manifest and insists it worked.
    pub fn apply(&self, name: &str, yaml: &str) {
        let out = self.manifest("apply", name, yaml);
        assert!(
            out.status.success(),
            "apply {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command in a pod's namespace, optionally inside the node's socket-LB cgroup (as the
    /// pod's processes would be), with `nsenter` exec'ing it.
    pub fn pod_command(
        &self,
        pod: &Pod,
        in_cgroup: bool,
        program: &Path,
        args: &[&str],
    ) -> Command {
        let mut cmd = Command::new("sh");
        let cg = self.cgroup().expect("cgroup v2 is mounted");
        let join = if in_cgroup {
            format!("echo $$ > {}/cgroup.procs && ", cg.display())
        } else {
            String::new()
        };
        let mut script = format!(
            "{join}exec nsenter --net={} {}",
            pod.netns.path(),
            program.display()
        );
        for a in args {
            script.push(' ');
            script.push_str(a);
        }
        cmd.args(["-c", &script]);
        cmd
    }

    /// Starts `ciliate-bench ident-server --id <pod name>` in the pod: every TCP connection is
    /// answered with the pod's name.
    pub fn ident_server(&self, pod: &Pod, port: u16) -> Proc {
        self.bench_server(pod, "ident-server", port)
    }

    /// Starts `ciliate-bench http-ident-server --id <pod name>` in the pod: HTTP/1.1 with
    /// keep-alive, every request answered 200 with "<pod> <METHOD> <path>", so the client sees
    /// which request arrived where.
    pub fn http_server(&self, pod: &Pod, port: u16) -> Proc {
        self.bench_server(pod, "http-ident-server", port)
    }

    /// A `ciliate-bench` server in the pod, returned once it listens on `port`.
    fn bench_server(&self, pod: &Pod, kind: &str, port: u16) -> Proc {
        let child = self
            .pod_command(
                pod,
                false,
                &bin("ciliate-bench"),
                &[kind, "--id", &pod.name, "--port", &port.to_string()],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {kind} in {}: {e}", pod.name));
        let proc = Proc(child);
        eventually(&format!("{kind} in {} listens on {port}", pod.name), || {
            pod.tcp_connect(pod.ip, port).is_ok()
        });
        proc
    }

    /// Runs `ciliate-bench probe` from the pod and parses its JSON.
    pub fn probe(&self, pod: &Pod, in_cgroup: bool, args: &[&str]) -> Value {
        let mut all = vec!["probe"];
        all.extend_from_slice(args);
        let out = self
            .pod_command(pod, in_cgroup, &bin("ciliate-bench"), &all)
            .output()
            .expect("probe");
        assert!(
            out.status.success(),
            "probe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or_default()).expect("probe JSON")
    }
}

/// What the plugin answered.
#[derive(Debug)]
pub struct CniOutcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutcome {
    /// The error code of a failed invocation (spec error JSON on stdout).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {}", self.stdout);
        let v: Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "error output is not JSON ({e}): {:?} {:?}",
                self.stdout, self.stderr
            )
        });
        v["code"].as_u64().expect("code")
    }

    pub fn msg(&self) -> String {
        let v: Value = serde_json::from_str(&self.stdout).unwrap_or_default();
        v["msg"].as_str().unwrap_or_default().to_owned()
    }
}

/// A pod: its namespace and what ADD returned.
pub struct Pod {
    pub name: String,
    pub container_id: String,
    pub netns: TestNetns,
    pub ip: Ipv4Addr,
    pub result: Value,
}

impl Pod {
    /// Runs `f` on a thread inside the pod's network namespace.
    pub fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.netns.path();
        thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// A TCP connection from this pod (no data).
    pub fn tcp_connect(&self, dst: Ipv4Addr, port: u16) -> std::io::Result<()> {
        self.in_netns(move || {
            TcpStream::connect_timeout(&(dst, port).into(), Duration::from_secs(1)).map(drop)
        })
        .join()
        .expect("connect thread")
    }

    /// `ping -c n` from this pod; true when every echo came back.
    pub fn ping(&self, dst: Ipv4Addr, n: u32) -> bool {
        let out = self
            .netns
            .command("ping")
            .args([
                "-c",
                &n.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                &dst.to_string(),
            ])
            .output()
            .expect("ping");
        out.status.success()
    }

    /// Starts a TCP echo server on `port` in this pod; it serves until the test ends.
    pub fn echo_server(&self, port: u16) {
        let ready = std::sync::mpsc::channel();
        let tx = ready.0;
        self.in_netns(move || {
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind echo server");
            tx.send(()).expect("ready");
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ready
            .1
            .recv_timeout(Duration::from_secs(5))
            .expect("echo server up");
    }

    /// One TCP request/response from this pod; returns the echoed bytes.
    pub fn tcp_echo(
        &self,
        dst: Ipv4Addr,
        port: u16,
        msg: &'static [u8],
    ) -> std::io::Result<Vec<u8>> {
        self.in_netns(move || {
            let mut s = TcpStream::connect_timeout(&(dst, port).into(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(msg)?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf)?;
            Ok(buf)
        })
        .join()
        .expect("tcp client thread")
    }
}
