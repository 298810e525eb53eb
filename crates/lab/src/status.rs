//! `ciliate lab status`: the nodes (is the agent up, how many endpoints it has), the pods,
//! etcd, the world's DNS server and the relay, asked live.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Serialize;

use crate::{sys, up, world_dns, Lab, LabError};

/// A lab, as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabStatus {
    /// The lab.
    pub name: String,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// When it was made.
    pub created_at: String,
    /// etcd.
    pub etcd: EtcdStatus,
    /// The world's DNS server.
    pub dns: DnsStatus,
    /// The relay, if the lab runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayStatus>,
    /// The nodes.
    pub nodes: Vec<NodeStatus>,
    /// The pods.
    pub pods: Vec<PodStatus>,
    /// True when etcd, the world's DNS server, every agent and the relay are healthy.
    pub healthy: bool,
}

/// etcd, as the lab sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStatus {
    /// Its client URL.
    pub endpoint: String,
    /// Its answer to `GET /health`.
    pub healthy: bool,
    /// Its process, when recorded and running.
    pub pid: Option<u32>,
}

/// The world's DNS server (dnsmasq), as the lab sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsStatus {
    /// Where it listens (UDP and TCP).
    pub address: String,
    /// The domain it answers for.
    pub domain: String,
    /// Whether it accepts connections on its address.
    pub answering: bool,
    /// Its process, when recorded and running.
    pub pid: Option<u32>,
}

/// The relay, as the lab sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatus {
    /// Its TCP address.
    pub address: String,
    /// Its unix socket.
    pub socket: PathBuf,
    /// Whether it accepts connections.
    pub answering: bool,
    /// Its process, when recorded and running.
    pub pid: Option<u32>,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: String,
    /// The agent's socket (for `ciliate --socket`).
    pub agent_socket: PathBuf,
    /// The agent's process, when running.
    pub agent_pid: Option<u32>,
    /// `ok`, `degraded`, or `down` (no answer).
    pub health: String,
    /// The agent's problems, or why it does not answer.
    pub problems: Vec<String>,
    /// Endpoints, as the agent counts them.
    pub endpoints: Option<usize>,
    /// Policies in force.
    pub policies: Option<usize>,
    /// Services known.
    pub services: Option<usize>,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `namespace/name`.
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Its address.
    pub ip: Option<Ipv4Addr>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its namespace.
    pub netns: String,
}

/// Asks every part of lab `name` how it is.
pub async fn status(name: &str) -> Result<LabStatus, LabError> {
    // Without root the agents' sockets and etcd (inside the underlay) cannot be asked: every
    // healthy agent would look down. Say so instead.
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let lab = Lab::open(name)?;
    let etcd_pid = lab
        .state
        .processes
        .iter()
        .find(|p| p.what == "etcd")
        .map(|p| p.pid)
        .filter(|p| sys::is_alive(*p));
    let etcd = EtcdStatus {
        endpoint: lab.state.etcd_endpoint.clone(),
        healthy: up::etcd_healthy(&lab.layout).await,
        pid: etcd_pid,
    };
    let dns = DnsStatus {
        address: format!("{}:53", world_dns::DNS_IP),
        domain: world_dns::DOMAIN.to_owned(),
        answering: world_dns::answering(&lab.layout),
        pid: lab
            .state
            .processes
            .iter()
            .find(|p| p.what == world_dns::PROCESS)
            .map(|p| p.pid)
            .filter(|p| sys::is_alive(*p)),
    };
    let relay = lab.state.relay.as_ref().map(|r| RelayStatus {
        address: r.address.clone(),
        socket: r.socket.clone(),
        answering: crate::relay::answering(r),
        pid: lab
            .state
            .processes
            .iter()
            .find(|p| p.what == crate::relay::PROCESS)
            .map(|p| p.pid)
            .filter(|p| sys::is_alive(*p)),
    });
    let mut nodes = Vec::new();
    for n in &lab.state.nodes {
        let client = Lab::client(n);
        let mut node = NodeStatus {
            name: n.name.clone(),
            netns: n.netns.clone(),
            underlay_ip: n.underlay_ip,
            pod_cidr: n.pod_cidr.clone(),
            agent_socket: n.agent_socket.clone(),
            agent_pid: n.agent_pid.filter(|p| sys::is_alive(*p)),
            health: "down".into(),
            problems: Vec::new(),
            endpoints: None,
            policies: None,
            services: None,
        };
        match client.status().await {
            Ok(s) => {
                node.health = s.health;
                node.problems = s.problems;
                node.endpoints = Some(s.endpoints);
                node.policies = Some(s.policies);
                node.services = Some(s.services);
            }
            Err(e) => node.problems.push(e.to_string()),
        }
        nodes.push(node);
    }
    let pods = lab
        .state
        .pods
        .iter()
        .map(|p| PodStatus {
            pod: p.reference(),
            node: p.node.clone(),
            ip: p.ip,
            labels: p.labels.clone(),
            netns: p.netns.clone(),
        })
        .collect();
    let healthy = etcd.healthy
        && dns.answering
        && nodes.iter().all(|n| n.health == "ok")
        && relay.as_ref().is_none_or(|r| r.answering);
    Ok(LabStatus {
        name: lab.name().to_owned(),
        state_dir: lab.layout.state_dir(),
        created_at: lab.state.created_at.clone(),
        etcd,
        dns,
        relay,
        nodes,
        pods,
        healthy,
    })
}
