//! `ciliate lab up`: the underlay, etcd, the nodes and their agents, and the demo app. Every
//! piece is written to `lab.json` as soon as it exists.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::bins::{self, Binaries};
use crate::layout::{
    check_nodes, Layout, BRIDGE, GATEWAY_IP, UNDERLAY_CIDR, UNDERLAY_PREFIX, WORLD2_IP, WORLD_ID,
    WORLD_PORT,
};
use crate::state::{LabState, NodeState, FORMAT_VERSION};
use crate::{demo, down, sys, world_dns, Lab, LabError, Progress};

/// How long an agent may take to answer after it started.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcd may take to report itself healthy.
const ETCD_TIMEOUT: Duration = Duration::from_secs(20);
/// The most demo pods per node.
pub const MAX_PODS_PER_NODE: usize = 16;

/// What `lab up` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpOptions {
    /// The lab's name.
    pub name: String,
    /// How many nodes (1..=8).
    pub nodes: usize,
    /// Demo pods per node.
    pub pods_per_node: usize,
    /// Whether to deploy the demo app.
    pub demo: bool,
}

impl UpOptions {
    /// Checks the options before anything is made.
    pub fn check(&self) -> Result<(), LabError> {
        crate::layout::check_name(&self.name)?;
        check_nodes(self.nodes)?;
        if self.pods_per_node > MAX_PODS_PER_NODE {
            return Err(LabError::Usage(format!(
                "--pods-per-node {}: at most {MAX_PODS_PER_NODE}",
                self.pods_per_node
            )));
        }
        Ok(())
    }
}

/// Checks everything `lab up` needs before it makes anything.
pub fn preflight(layout: &Layout) -> Result<Binaries, LabError> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    if !sys::bpffs_mounted() {
        return Err(LabError::Prerequisite(
            "no BPF filesystem at /sys/fs/bpf, where the agents pin their maps: mount it with \
             `mount -t bpf bpf /sys/fs/bpf`"
                .into(),
        ));
    }
    bins::etcd()?;
    world_dns::binary()?;
    let bins = Binaries::locate()?;
    let found = down::find(layout);
    if !found.is_empty() {
        return Err(LabError::AlreadyUp {
            name: layout.name().to_owned(),
            found: found.summary(),
        });
    }
    Ok(bins)
}

/// Brings lab `opts.name` up. On error the pieces made so far stay (and are in `lab.json`):
/// `lab down` removes them.
pub async fn up(opts: &UpOptions, progress: Progress<'_>) -> Result<Lab, LabError> {
    opts.check()?;
    let layout = Layout::new(&opts.name)?;
    let bins = preflight(&layout)?;
    let etcd_bin = bins::etcd()?;
    for dir in [layout.state_dir(), layout.manifest_dir()] {
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    }
    let mut lab = Lab {
        state: LabState {
            version: FORMAT_VERSION,
            name: opts.name.clone(),
            etcd_endpoint: layout.etcd_endpoint(),
            underlay_cidr: UNDERLAY_CIDR.to_owned(),
            manifest_dir: layout.manifest_dir(),
            nodes: Vec::new(),
            pods: Vec::new(),
            processes: Vec::new(),
            demo: false,
            relay: None,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        },
        layout,
        bins,
    };
    lab.save()?;
    progress(&format!(
        "State in {} (lab.json, manifests/, logs)",
        lab.layout.state_dir().display()
    ));

    underlay(&lab.layout)?;
    progress(&format!(
        "Underlay: netns {}, {BRIDGE} {GATEWAY_IP}/{UNDERLAY_PREFIX} (the nodes' gateway and \"the world\", also {WORLD2_IP})",
        lab.layout.underlay_netns()
    ));

    start_etcd(&mut lab, &etcd_bin).await?;
    progress(&format!(
        "etcd: {} (log {})",
        lab.layout.etcd_endpoint(),
        lab.layout.etcd_log().display()
    ));
    let underlay_ns = lab.layout.underlay_netns();
    lab.start_ident_server("world ident-server", &underlay_ns, WORLD_ID, WORLD_PORT)?;
    progress(&format!(
        "World: ident server on {GATEWAY_IP}:{WORLD_PORT} and {WORLD2_IP}:{WORLD_PORT} (TCP and UDP)"
    ));
    world_dns::start(&mut lab)?;
    progress(&format!(
        "World: DNS server (dnsmasq) on {}:53 for *.{} (config {}, log {})",
        world_dns::DNS_IP,
        world_dns::DOMAIN,
        world_dns::config_path(&lab.layout).display(),
        world_dns::log_path(&lab.layout).display()
    ));

    for i in 0..opts.nodes {
        let node = make_node(&mut lab, i)?;
        progress(&format!(
            "Node {}: netns {}, eth0 {}/{UNDERLAY_PREFIX}, pod CIDR {}",
            node.name, node.netns, node.underlay_ip, node.pod_cidr
        ));
    }

    let etcd = lab.bins.agent_takes_etcd();
    if !etcd {
        progress(&format!(
            "Note: this ciliate-agent has no {} flag yet: agents keep their state to \
             themselves, pods reach other nodes over the underlay's routes, and identities do \
             not cross nodes",
            bins::ETCD_ENDPOINTS_FLAG
        ));
    }
    let mut children = Vec::new();
    for i in 0..opts.nodes {
        children.push(start_agent(&mut lab, i, etcd)?);
    }
    for (i, child) in children.iter_mut().enumerate() {
        wait_agent(&lab, i, child).await?;
        let node = lab.node(i)?;
        progress(&format!(
            "Agent of {} ready (pid {}, log {})",
            node.name,
            child.id(),
            node.log.display()
        ));
    }

    match crate::relay::start(&mut lab)? {
        Some(r) => progress(&format!(
            "Relay: the flows of every node on {} and unix://{} (log {})",
            r.address,
            r.socket.display(),
            r.log.display()
        )),
        None => progress(
            "Note: ciliate-relay is not built beside ciliate: no relay (cargo build --bins)",
        ),
    }

    if opts.demo {
        demo::deploy(&mut lab, opts.pods_per_node, progress).await?;
    }
    Ok(lab)
}

/// Restarts the agent of node `index` of lab `name`: stops it if it still runs, starts it
/// again with the same arguments and state directory, and waits until it is healthy.
/// Returns the new pid. The agent keeps its endpoints across the restart (they are in its
/// state directory), so pods stay wired.
pub async fn restart_agent(
    name: &str,
    index: usize,
    progress: Progress<'_>,
) -> Result<u32, LabError> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let mut lab = Lab::open(name)?;
    let node = lab.node(index)?.clone();
    let problems = lab.stop_processes(&format!("agent {}", node.name));
    if let Some(p) = problems.first() {
        return Err(LabError::Failed(format!(
            "stopping the agent of {}: {p}",
            node.name
        )));
    }
    // A pid recorded on the node but missing from the process list (an older lab.json).
    if let Some(pid) = node
        .agent_pid
        .filter(|p| sys::is_alive(*p) && sys::has_env(*p, crate::layout::LAB_ENV, name))
    {
        if !sys::terminate(&[pid], Duration::from_secs(3)).is_empty() {
            return Err(LabError::Failed(format!(
                "the agent of {} (pid {pid}) would not stop",
                node.name
            )));
        }
    }
    progress(&format!("Stopped the agent of {}", node.name));
    let etcd = lab.bins.agent_takes_etcd();
    let mut child = start_agent(&mut lab, index, etcd)?;
    wait_agent(&lab, index, &mut child).await?;
    progress(&format!(
        "Agent of {} ready (pid {}, log {})",
        node.name,
        child.id(),
        node.log.display()
    ));
    Ok(child.id())
}

/// The underlay namespace with its bridge and addresses, forwarding on.
fn underlay(layout: &Layout) -> Result<(), LabError> {
    let ns = layout.underlay_netns();
    sys::add_netns(&ns)?;
    sys::ip_in(&ns, &["link", "add", BRIDGE, "type", "bridge"])?;
    for addr in [GATEWAY_IP, WORLD2_IP] {
        sys::ip_in(
            &ns,
            &[
                "addr",
                "add",
                &format!("{addr}/{UNDERLAY_PREFIX}"),
                "dev",
                BRIDGE,
            ],
        )?;
    }
    sys::ip_in(&ns, &["link", "set", BRIDGE, "up"])?;
    sys::sysctl_in(&ns, "net.ipv4.ip_forward=1")
}

/// A node's namespace, its veth to the bridge, addresses and routes.
fn make_node(lab: &mut Lab, index: usize) -> Result<NodeState, LabError> {
    let n = lab.layout.node(index);
    let underlay = lab.layout.underlay_netns();
    std::fs::create_dir_all(&n.agent_state_dir)
        .map_err(|e| LabError::io(format!("creating {}", n.agent_state_dir.display()), e))?;
    let state = NodeState {
        name: n.name.clone(),
        index,
        netns: n.netns.clone(),
        underlay_ip: n.underlay_ip,
        pod_cidr: n.pod_cidr.clone(),
        agent_socket: n.agent_socket.clone(),
        hubble_socket: n.hubble_socket.clone(),
        agent_pid: None,
        log: n.log.clone(),
    };
    lab.state.nodes.push(state.clone());
    lab.save()?;
    sys::add_netns(&n.netns)?;
    sys::ip_in(
        &underlay,
        &[
            "link",
            "add",
            &n.underlay_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &n.netns,
        ],
    )?;
    sys::ip_in(
        &underlay,
        &["link", "set", &n.underlay_veth, "master", BRIDGE, "up"],
    )?;
    let addr = format!("{}/{UNDERLAY_PREFIX}", n.underlay_ip);
    sys::ip_in(&n.netns, &["addr", "add", &addr, "dev", "eth0"])?;
    sys::ip_in(&n.netns, &["link", "set", "eth0", "up"])?;
    sys::ip_in(
        &n.netns,
        &["route", "add", "default", "via", &GATEWAY_IP.to_string()],
    )?;
    sys::sysctl_in(&n.netns, "net.ipv4.ip_forward=1")?;
    sys::ip_in(
        &underlay,
        &[
            "route",
            "add",
            &n.pod_cidr,
            "via",
            &n.underlay_ip.to_string(),
        ],
    )?;
    Ok(state)
}

async fn start_etcd(lab: &mut Lab, etcd: &std::path::Path) -> Result<(), LabError> {
    let ns = lab.layout.underlay_netns();
    let mut child = sys::spawn_daemon(
        lab.name(),
        &ns,
        etcd,
        &lab.layout.etcd_args(),
        &[],
        &lab.layout.etcd_log(),
    )?;
    lab.state.add_process("etcd", child.id(), Some(&ns));
    lab.save()?;
    let deadline = Instant::now() + ETCD_TIMEOUT;
    loop {
        if etcd_healthy(&lab.layout).await {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Failed(format!(
                "etcd exited with {status}; its log ({}) ends with:\n{}",
                lab.layout.etcd_log().display(),
                sys::tail(&lab.layout.etcd_log(), 10)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "etcd is not healthy after {} s; its log ({}) ends with:\n{}",
                ETCD_TIMEOUT.as_secs(),
                lab.layout.etcd_log().display(),
                sys::tail(&lab.layout.etcd_log(), 10)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether etcd answers `GET /health` with `"health":"true"`, asked from inside the underlay
/// (its address is not reachable from the host's own namespace).
pub async fn etcd_healthy(layout: &Layout) -> bool {
    let path = sys::netns_path(&layout.underlay_netns());
    if !path.exists() {
        return false;
    }
    let ask = move || {
        let s = TcpStream::connect_timeout(
            &(GATEWAY_IP, crate::layout::ETCD_PORT).into(),
            Duration::from_secs(1),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut s = s;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body.contains("\"health\":\"true\""))
    };
    tokio::task::spawn_blocking(move || sys::in_netns(path, ask))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .unwrap_or(false)
}

fn start_agent(lab: &mut Lab, index: usize, etcd: bool) -> Result<Child, LabError> {
    let n = lab.layout.node(index);
    let args = lab.layout.agent_args(index, etcd);
    let child = sys::spawn_daemon(
        lab.name(),
        &n.netns,
        &lab.bins.agent,
        &args,
        &[("RUST_LOG", "info")],
        &n.log,
    )?;
    let pid = child.id();
    lab.state
        .add_process(format!("agent {}", n.name), pid, Some(&n.netns));
    if let Some(node) = lab.state.nodes.get_mut(index) {
        node.agent_pid = Some(pid);
    }
    lab.save()?;
    Ok(child)
}

async fn wait_agent(lab: &Lab, index: usize, child: &mut Child) -> Result<(), LabError> {
    let node = lab.node(index)?;
    let client = Lab::client(node);
    let deadline = Instant::now() + AGENT_TIMEOUT;
    loop {
        if let Ok(s) = client.status().await {
            if s.health == "ok" {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Failed(format!(
                "the agent of {} exited with {status}; its log ({}) ends with:\n{}",
                node.name,
                node.log.display(),
                sys::tail(&node.log, 15)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "the agent of {} is not healthy after {} s; its log ({}) ends with:\n{}",
                node.name,
                AGENT_TIMEOUT.as_secs(),
                node.log.display(),
                sys::tail(&node.log, 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_first() {
        let ok = UpOptions {
            name: "lab".into(),
            nodes: 2,
            pods_per_node: 2,
            demo: true,
        };
        assert!(ok.check().is_ok());
        let err = UpOptions {
            nodes: 0,
            ..ok.clone()
        }
        .check()
        .unwrap_err();
        assert!(err.to_string().contains("1 to 8 nodes"), "{err}");
        assert!(UpOptions {
            nodes: 9,
            ..ok.clone()
        }
        .check()
        .is_err());
        assert!(UpOptions {
            pods_per_node: 17,
            ..ok.clone()
        }
        .check()
        .is_err());
        assert!(UpOptions {
            name: "My-Lab".into(),
            ..ok
        }
        .check()
        .is_err());
    }
}
