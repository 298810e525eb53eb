//! A Ciliate cluster on one Linux box, and the connectivity test that runs against it.
//!
//! `ciliate lab up` makes N nodes out of network namespaces, each running the real
//! `ciliate-agent`, wires pods to them with the real `ciliate-cni`, and starts the etcd the
//! agents share. `ciliate connectivity test` deploys its own pods onto a lab and checks, cell by
//! cell, what passes and what is dropped (with the drop seen in Hubble) with and without
//! policies, in the spirit of `cilium connectivity test`.
//!
//! # Layout of lab `<name>` (default `lab`)
//!
//! ```text
//!  netns ciliate-<name>-net  (the underlay, "the world")
//!  ┌───────────────────────────────────────────────────────────────┐
//!  │ br0 172.31.0.1/24 (+ 172.31.0.2)  etcd http://172.31.0.1:2379  │
//!  │ ident-server "world" :8080        route 10.200.<i>.0/24 via     │
//!  │ dnsmasq 172.31.0.1:53 (*.ciliate.test)                        │
//!  │                                         172.31.0.<10+i>         │
//!  └──── node0 ─────────────── node1 ─────────── ... ──────────────┘
//!         │ veth                 │ veth
//!  netns ciliate-<name>-node0    netns ciliate-<name>-node1
//!  eth0 172.31.0.10/24           eth0 172.31.0.11/24
//!  default via 172.31.0.1        default via 172.31.0.1
//!  ciliate-agent --node-name <name>-node0 --pod-cidr 10.200.0.0/24 ...
//!   │ CNI (ciliate-cni run in the node's namespace)
//!  netns ciliate-<name>-node0-<pod>   (pod address from 10.200.0.0/24)
//! ```
//!
//! * Node `i` (0-based): namespace `ciliate-<name>-node<i>`, a veth whose host end `node<i>`
//!   is enslaved to `br0` in the underlay and whose other end is the node's `eth0`
//!   (`172.31.0.<10+i>/24`). Its agent runs inside it with `--node-name <name>-node<i>`,
//!   `--pod-cidr 10.200.<i>.0/24`, `--node-ip 172.31.0.<10+i>` and its files under
//!   `<state>/node<i>/` (`agent.sock`, `hubble.sock`, `state/`, `agent.log`); its pins are
//!   `/sys/fs/bpf/ciliate/<name>-node<i>` and its socket-LB cgroup
//!   `<cgroup2>/ciliate/<name>-node<i>` (the agent's defaults for that node name).
//! * Pods: namespace `ciliate-<name>-node<i>-<pod>`, wired by `ciliate-cni` (ADD, and DEL on
//!   teardown) run inside the node's namespace with `agentSocket` naming that node's agent.
//! * State: `/run/ciliate/lab/<name>/`: `lab.json` ([`state::LabState`]), the manifest
//!   directory every agent watches (`manifests/`: Services, EndpointSlices and policies
//!   written there reach every node, as through a Kubernetes API server), etcd's data and log.
//! * The world's DNS server: a real dnsmasq on 172.31.0.1:53 answering `*.ciliate.test`
//!   ([`world_dns`]); each pod namespace gets `/etc/netns/<netns>/resolv.conf` naming it.
//! * The relay: `ciliate-relay` in the host's namespace, reading every node's `hubble.sock`,
//!   serving the cluster's flows on `127.0.0.1:4245` (another free port when that is taken)
//!   and `<state>/relay.sock` ([`relay`]); `hubble observe --server localhost:4245` and
//!   `ciliate observe --server localhost:4245` read it.
//! * Every process the lab starts carries `CILIATE_LAB=<name>` in its environment, and runs in
//!   one of the lab's namespaces, so `lab down` finds it even without `lab.json`.
//!
//! Binaries are found next to the running `ciliate` (they are built together) or in
//! `$CILIATE_BIN_DIR`; etcd is `/usr/bin/etcd` (Debian's `etcd-server`).

#![forbid(unsafe_code)]

pub mod bins;
pub mod cni;
pub mod connectivity;
pub mod demo;
pub mod down;
pub mod lab;
pub mod layout;
pub mod list;
pub mod objects;
pub mod relay;
pub mod state;
pub mod status;
pub mod sys;
pub mod up;
pub mod world_dns;

pub use lab::Lab;
pub use layout::{Layout, DEFAULT_NAME};
pub use state::LabState;

/// What went wrong in the lab. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A bad argument (lab name, node count, test pattern).
    #[error("{0}")]
    Usage(String),
    /// Not root.
    #[error(
        "ciliate lab must run as root: it makes network namespaces, loads BPF programs and \
         starts agents (try sudo)"
    )]
    NotRoot,
    /// Something the lab needs is missing (etcd, bpffs, a binary).
    #[error("{0}")]
    Prerequisite(String),
    /// The lab, or leftovers of it, exist already.
    #[error("lab {name:?} is already up ({found}): run `ciliate lab down{}` first", name_flag(.name))]
    AlreadyUp {
        /// The lab.
        name: String,
        /// What was found.
        found: String,
    },
    /// There is no such lab.
    #[error("no lab {name:?} is up ({reason}): start one with `ciliate lab up{}`", name_flag(.name))]
    NotUp {
        /// The lab.
        name: String,
        /// Why we think so.
        reason: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A command (`ip`, the CNI plugin, ...) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// `lab.json` could not be read or written.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Anything else, fully described.
    #[error("{0}")]
    Failed(String),
}

impl LabError {
    /// An I/O error with what we were doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// ` --lab <name>`, or nothing for the default lab: what to add to a suggested command.
pub fn name_flag(name: &str) -> String {
    if name == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --lab {name}")
    }
}

/// Progress lines for people: the library never prints, the CLI passes a printer.
pub type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);
