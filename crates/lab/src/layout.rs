//! Where everything of a lab lives: names of namespaces, addresses, paths. Pure: every name
//! the lab makes and every name `lab down` looks for comes from here, so the two never drift.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::LabError;

/// Parent of every lab's state directory.
pub const STATE_ROOT: &str = "/run/ciliate/lab";
/// The lab's name when none is given.
pub const DEFAULT_NAME: &str = "lab";
/// The most nodes a lab may have (node addresses and pod CIDRs are numbered by index).
pub const MAX_NODES: usize = 8;
/// The underlay network: the bridge, etcd, "the world" and the nodes' `eth0`.
pub const UNDERLAY_CIDR: &str = "172.31.0.0/24";
/// Prefix length of the underlay.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The underlay's bridge (in the underlay namespace).
pub const BRIDGE: &str = "br0";
/// The bridge's address: the nodes' default gateway, etcd's address and "the world".
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
/// A second "world" address on the bridge: outside the cluster but inside the underlay CIDR,
/// so that a CIDR rule with an `except` has an address it still allows.
pub const WORLD2_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
/// etcd's client port on [`GATEWAY_IP`].
pub const ETCD_PORT: u16 = 2379;
/// etcd's peer port, on the underlay namespace's loopback (a single member never uses it).
pub const ETCD_PEER_PORT: u16 = 2380;
/// Port of the world's ident server (TCP and UDP) on the underlay addresses.
pub const WORLD_PORT: u16 = 8080;
/// Port of the ident server the connectivity test starts in each node's own namespace.
pub const HOST_PORT: u16 = 8081;
/// What the world's ident server answers.
pub const WORLD_ID: &str = "world";
/// Where Debian's `etcd-server` package puts etcd.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";
/// Environment variable every process the lab starts carries (`CILIATE_LAB=<name>`), so that
/// `lab down` finds them even when the lab's record of them is lost.
pub const LAB_ENV: &str = "CILIATE_LAB";
/// Environment variable that picks the lab `ciliate lab ...` and `ciliate connectivity`
/// work on (`lab env` prints it). Not [`LAB_ENV`]: a shell that exported that would mark
/// every process started from it as the lab's, for `lab down` to stop.
pub const LAB_NAME_ENV: &str = "CILIATE_LAB_NAME";

/// Checks a lab name: 1–20 lowercase letters and digits, starting with a letter. No `-`, so
/// that `ciliate-<name>-` is a prefix no other lab's names share.
pub fn check_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::Usage(format!(
            "{name:?} is not a lab name: use 1-20 lowercase letters and digits, starting with a \
             letter (e.g. lab, lab2, dev)"
        )))
    }
}

/// Checks a node count given to `lab up --nodes`.
pub fn check_nodes(nodes: usize) -> Result<(), LabError> {
    if (1..=MAX_NODES).contains(&nodes) {
        Ok(())
    } else {
        Err(LabError::Usage(format!(
            "--nodes {nodes}: a lab has 1 to {MAX_NODES} nodes"
        )))
    }
}

/// The names, addresses and paths of one lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    name: String,
    root: PathBuf,
}

/// The names, addresses and paths of one node of a lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLayout {
    /// 0-based index.
    pub index: usize,
    /// The node's name, as its agent knows it: `<lab>-node<i>`.
    pub name: String,
    /// Its network namespace: `ciliate-<lab>-node<i>`.
    pub netns: String,
    /// The host end of its veth, in the underlay namespace, enslaved to the bridge.
    pub underlay_veth: String,
    /// Its `eth0` address: `172.31.0.<10+i>`.
    pub underlay_ip: Ipv4Addr,
    /// Its pod CIDR: `10.200.<i>.0/24`.
    pub pod_cidr: String,
    /// `<state>/node<i>/`.
    pub dir: PathBuf,
    /// The agent's API socket.
    pub agent_socket: PathBuf,
    /// The agent's Hubble-compatible observer socket.
    pub hubble_socket: PathBuf,
    /// The agent's `--state-dir`.
    pub agent_state_dir: PathBuf,
    /// The agent's log.
    pub log: PathBuf,
}

impl Layout {
    /// The layout of lab `name` under [`STATE_ROOT`].
    pub fn new(name: &str) -> Result<Self, LabError> {
        Self::with_root(name, Path::new(STATE_ROOT))
    }

    /// The layout of lab `name` with its state under `root` (tests).
    pub fn with_root(name: &str, root: &Path) -> Result<Self, LabError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            root: root.to_owned(),
        })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/ciliate/lab/<name>/`: everything of the lab that is a file.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    /// `lab.json`, the record of what the lab made.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("lab.json")
    }

    /// The manifest directory every agent watches: the lab's "API server".
    pub fn manifest_dir(&self) -> PathBuf {
        self.state_dir().join("manifests")
    }

    /// etcd's data directory.
    pub fn etcd_dir(&self) -> PathBuf {
        self.state_dir().join("etcd")
    }

    /// etcd's log.
    pub fn etcd_log(&self) -> PathBuf {
        self.state_dir().join("etcd.log")
    }

    /// The relay's unix socket.
    pub fn relay_socket(&self) -> PathBuf {
        self.state_dir().join("relay.sock")
    }

    /// The relay's log.
    pub fn relay_log(&self) -> PathBuf {
        self.state_dir().join("relay.log")
    }

    /// The relay's command line (after the program): every node's observer socket as a
    /// peer, served on `tcp` and on [`Layout::relay_socket`]. The relay runs in the host's
    /// namespace, where the nodes' sockets are files and clients reach `tcp`.
    pub fn relay_args(&self, nodes: usize, tcp: std::net::SocketAddr) -> Vec<String> {
        let mut args = vec![
            "--listen-address".to_owned(),
            tcp.to_string(),
            "--listen-address".to_owned(),
            format!("unix://{}", self.relay_socket().display()),
            "--name".to_owned(),
            format!("{}-relay", self.name),
            // A node's agent restarting comes back within seconds: look for it often.
            "--retry-timeout".to_owned(),
            "2s".to_owned(),
        ];
        for i in 0..nodes {
            let n = self.node(i);
            args.push("--peer".to_owned());
            args.push(format!("{}=unix://{}", n.name, n.hubble_socket.display()));
        }
        args
    }

    /// Log of the world's ident server.
    pub fn world_log(&self) -> PathBuf {
        self.state_dir().join("world.log")
    }

    /// etcd's client URL.
    pub fn etcd_endpoint(&self) -> String {
        format!("http://{GATEWAY_IP}:{ETCD_PORT}")
    }

    /// The underlay namespace: `ciliate-<name>-net`.
    pub fn underlay_netns(&self) -> String {
        format!("ciliate-{}-net", self.name)
    }

    /// The prefix of every namespace of the lab.
    pub fn netns_prefix(&self) -> String {
        format!("ciliate-{}-", self.name)
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> NodeLayout {
        let dir = self.state_dir().join(format!("node{index}"));
        // Indexes stay below MAX_NODES, so the last octets fit.
        let octet = u8::try_from(index).unwrap_or(u8::MAX);
        NodeLayout {
            index,
            name: format!("{}-node{index}", self.name),
            netns: format!("ciliate-{}-node{index}", self.name),
            underlay_veth: format!("node{index}"),
            underlay_ip: Ipv4Addr::new(172, 31, 0, 10u8.saturating_add(octet)),
            pod_cidr: format!("10.200.{index}.0/24"),
            agent_socket: dir.join("agent.sock"),
            hubble_socket: dir.join("hubble.sock"),
            agent_state_dir: dir.join("state"),
            log: dir.join("agent.log"),
            dir,
        }
    }

    /// The namespace of pod `pod` on node `node`: `ciliate-<name>-node<i>-<pod>`.
    pub fn pod_netns(&self, node: usize, pod: &str) -> String {
        format!("ciliate-{}-node{node}-{pod}", self.name)
    }

    /// What kind of lab namespace `netns` is, or `None` when it is not this lab's.
    pub fn classify_netns(&self, netns: &str) -> Option<NetnsKind> {
        let rest = netns.strip_prefix(&self.netns_prefix())?;
        if rest == "net" {
            return Some(NetnsKind::Underlay);
        }
        let after = rest.strip_prefix("node")?;
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        match &after[digits..] {
            "" => Some(NetnsKind::Node),
            pod if pod.len() > 1 && pod.starts_with('-') => Some(NetnsKind::Pod),
            _ => None,
        }
    }

    /// Whether `entry` (a directory name under `/sys/fs/bpf/ciliate` or `<cgroup2>/ciliate`)
    /// is one of this lab's nodes: `<name>-node<digits>`.
    pub fn is_node_name(&self, entry: &str) -> bool {
        entry
            .strip_prefix(&self.name)
            .and_then(|r| r.strip_prefix("-node"))
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
    }

    /// The agent's command line for node `index` (after the program), with
    /// `--etcd-endpoints` when `etcd` says the agent takes it.
    pub fn agent_args(&self, index: usize, etcd: bool) -> Vec<String> {
        let n = self.node(index);
        let path = |p: &Path| p.display().to_string();
        let mut args = vec![
            "--node-name".to_owned(),
            n.name.clone(),
            "--pod-cidr".to_owned(),
            n.pod_cidr.clone(),
            "--node-ip".to_owned(),
            n.underlay_ip.to_string(),
            "--state-dir".to_owned(),
            path(&n.agent_state_dir),
            "--socket".to_owned(),
            path(&n.agent_socket),
            "--hubble-socket".to_owned(),
            path(&n.hubble_socket),
            "--manifest-dir".to_owned(),
            path(&self.manifest_dir()),
            // The answers' own TTLs, not Cilium's hour-long floor: the world's short-TTL name
            // expires in seconds (the connectivity test's fqdn-ttl scenario).
            "--tofqdns-min-ttl".to_owned(),
            "0".to_owned(),
        ];
        if etcd {
            args.push("--etcd-endpoints".to_owned());
            args.push(self.etcd_endpoint());
        }
        args
    }

    /// etcd's command line (after the program): one member, clients on the gateway address.
    pub fn etcd_args(&self) -> Vec<String> {
        let client = self.etcd_endpoint();
        let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let member = format!("{}-etcd", self.name);
        vec![
            "--name".to_owned(),
            member.clone(),
            "--data-dir".to_owned(),
            self.etcd_dir().display().to_string(),
            "--listen-client-urls".to_owned(),
            client.clone(),
            "--advertise-client-urls".to_owned(),
            client,
            "--listen-peer-urls".to_owned(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_owned(),
            peer.clone(),
            "--initial-cluster".to_owned(),
            format!("{member}={peer}"),
        ]
    }
}

/// The kinds of namespaces a lab makes, in the order `lab down` deletes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NetnsKind {
    /// A pod's.
    Pod,
    /// A node's.
    Node,
    /// The underlay's.
    Underlay,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Layout {
        Layout::with_root("lab", Path::new("/run/ciliate/lab")).expect("valid")
    }

    #[test]
    fn names_are_checked() {
        for good in ["lab", "lab2", "l", "lab123x4", "abcdefghij0123456789"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Lab",
            "2lab",
            "my-lab",
            "lab_1",
            "a/b",
            "abcdefghij0123456789x",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_nodes(0).is_err());
        assert!(check_nodes(9).is_err());
        assert!(check_nodes(1).is_ok() && check_nodes(8).is_ok());
    }

    #[test]
    fn node_layout() {
        let n = lab().node(2);
        assert_eq!(n.name, "lab-node2");
        assert_eq!(n.netns, "ciliate-lab-node2");
        assert_eq!(n.underlay_ip, Ipv4Addr::new(172, 31, 0, 12));
        assert_eq!(n.pod_cidr, "10.200.2.0/24");
        assert_eq!(
            n.agent_socket,
            PathBuf::from("/run/ciliate/lab/lab/node2/agent.sock")
        );
        assert_eq!(lab().pod_netns(1, "client"), "ciliate-lab-node1-client");
    }

    #[test]
    fn agent_command_line() {
        let args = lab().agent_args(0, false).join(" ");
        assert_eq!(
            args,
            "--node-name lab-node0 --pod-cidr 10.200.0.0/24 --node-ip 172.31.0.10 \
             --state-dir /run/ciliate/lab/lab/node0/state \
             --socket /run/ciliate/lab/lab/node0/agent.sock \
             --hubble-socket /run/ciliate/lab/lab/node0/hubble.sock \
             --manifest-dir /run/ciliate/lab/lab/manifests --tofqdns-min-ttl 0"
        );
        assert!(lab()
            .agent_args(0, true)
            .join(" ")
            .ends_with("--etcd-endpoints http://172.31.0.1:2379"));
    }

    #[test]
    fn only_our_namespaces_are_ours() {
        let l = lab();
        assert_eq!(
            l.classify_netns("ciliate-lab-net"),
            Some(NetnsKind::Underlay)
        );
        assert_eq!(l.classify_netns("ciliate-lab-node0"), Some(NetnsKind::Node));
        assert_eq!(
            l.classify_netns("ciliate-lab-node12"),
            Some(NetnsKind::Node)
        );
        assert_eq!(
            l.classify_netns("ciliate-lab-node1-echo-other-node"),
            Some(NetnsKind::Pod)
        );
        for other in [
            "ciliate-lab2-net",
            "ciliate-lab2-node0",
            "ciliate-demo-node",
            "ciliate-lab-nodex",
            "ciliate-lab-node",
            "ciliate-lab-node0-",
            "ciliate-lab-netx",
            "lab-node0",
        ] {
            assert_eq!(l.classify_netns(other), None, "{other}");
        }
        assert!(l.is_node_name("lab-node0") && l.is_node_name("lab-node7"));
        assert!(
            !l.is_node_name("lab2-node0")
                && !l.is_node_name("lab-node")
                && !l.is_node_name("lab-nodes")
        );
    }
}
