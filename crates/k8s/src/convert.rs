//! Typed views of Pod and Node documents, so that the agent need not depend on k8s-openapi.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ciliate_model::lb::L4Proto;
use ciliate_model::NamedPort;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::de::DeserializeOwned;

use crate::document::Document;
use crate::error::K8sError;
use crate::kind::ResourceKind;

/// `status.phase` of a Pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PodPhase {
    /// Accepted, not all containers running yet.
    Pending,
    /// Bound to a node, all containers created, at least one running.
    Running,
    /// All containers ended successfully (terminal: its IPs can be released).
    Succeeded,
    /// All containers ended, at least one in failure (terminal).
    Failed,
    /// No phase, or one this version does not know.
    #[default]
    Unknown,
}

impl PodPhase {
    /// Whether the pod will not run again (its address may be reused).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    fn parse(s: Option<&str>) -> PodPhase {
        match s {
            Some("Pending") => Self::Pending,
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

/// What the agent needs of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.nodeName` (`None` until scheduled).
    pub node_name: Option<String>,
    /// `spec.hostNetwork`: such a pod shares the node's addresses and gets no endpoint.
    pub host_network: bool,
    /// The IPv4 addresses of `status.podIPs` (or `status.podIP`), in order; IPv6 ones are
    /// skipped (the datapath is IPv4 only).
    pub pod_ips: Vec<Ipv4Addr>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Named container ports of `spec.containers[].ports[]` (and init containers'), in order.
    pub named_ports: Vec<NamedPort>,
    /// `status.phase`.
    pub phase: PodPhase,
}

impl PodInfo {
    /// Reads a Pod document.
    pub fn from_document(doc: &Document) -> Result<PodInfo, K8sError> {
        let pod: Pod = typed(doc, ResourceKind::Pod)?;
        let what = doc.describe();
        let field_err = |field: String, reason: String| K8sError::Field {
            object: what.clone(),
            field,
            reason,
        };
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();

        let mut pod_ips = Vec::new();
        let listed: Vec<(String, String)> = match status.pod_ips {
            Some(ips) if !ips.is_empty() => ips
                .into_iter()
                .enumerate()
                .map(|(i, ip)| (format!("status.podIPs[{i}].ip"), ip.ip))
                .collect(),
            _ => status
                .pod_ip
                .map(|ip| vec![("status.podIP".to_owned(), ip)])
                .unwrap_or_default(),
        };
        for (field, ip) in listed {
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => pod_ips.push(v4),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => return Err(field_err(field, format!("{ip:?} is not an IP address"))),
            }
        }

        let mut named_ports = Vec::new();
        let containers = [
            (
                "spec.initContainers",
                spec.init_containers.unwrap_or_default(),
            ),
            ("spec.containers", spec.containers),
        ];
        for (prefix, list) in containers {
            for (c, container) in list.into_iter().enumerate() {
                for (p, port) in container.ports.unwrap_or_default().into_iter().enumerate() {
                    let Some(name) = port.name.filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let field = format!("{prefix}[{c}].ports[{p}]");
                    let number = u16::try_from(port.container_port)
                        .ok()
                        .filter(|n| *n != 0)
                        .ok_or_else(|| {
                            field_err(
                                format!("{field}.containerPort"),
                                format!("{} is not a port (1-65535)", port.container_port),
                            )
                        })?;
                    let protocol = match port.protocol.as_deref() {
                        None | Some("TCP") => L4Proto::Tcp,
                        Some("UDP") => L4Proto::Udp,
                        Some("SCTP") => L4Proto::Sctp,
                        Some(other) => {
                            return Err(field_err(
                                format!("{field}.protocol"),
                                format!("{other:?} is not TCP, UDP or SCTP"),
                            ))
                        }
                    };
                    named_ports.push(NamedPort {
                        name,
                        protocol,
                        port: number,
                    });
                }
            }
        }

        Ok(PodInfo {
            namespace: pod.metadata.namespace.unwrap_or_default(),
            name: pod.metadata.name.unwrap_or_default(),
            uid: pod.metadata.uid.unwrap_or_default(),
            node_name: spec.node_name.filter(|n| !n.is_empty()),
            host_network: spec.host_network.unwrap_or(false),
            pod_ips,
            labels: pod.metadata.labels.unwrap_or_default(),
            named_ports,
            phase: PodPhase::parse(status.phase.as_deref()),
        })
    }
}

/// What the agent needs of a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR`), as written (IPv4 and IPv6 alike: the agent picks).
    pub pod_cidrs: Vec<String>,
    /// The IPv4 `InternalIP` entries of `status.addresses`, in order.
    pub internal_ips: Vec<Ipv4Addr>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    /// Reads a Node document.
    pub fn from_document(doc: &Document) -> Result<NodeInfo, K8sError> {
        let node: Node = typed(doc, ResourceKind::Node)?;
        let spec = node.spec.unwrap_or_default();
        let pod_cidrs = match spec.pod_cidrs {
            Some(cidrs) if !cidrs.is_empty() => cidrs,
            _ => spec.pod_cidr.into_iter().collect(),
        };
        let mut internal_ips = Vec::new();
        let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
        for (i, addr) in addresses.into_iter().enumerate() {
            if addr.type_ != "InternalIP" {
                continue;
            }
            match addr.address.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => internal_ips.push(v4),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => {
                    return Err(K8sError::Field {
                        object: doc.describe(),
                        field: format!("status.addresses[{i}].address"),
                        reason: format!("{:?} is not an IP address", addr.address),
                    })
                }
            }
        }
        Ok(NodeInfo {
            name: node.metadata.name.unwrap_or_default(),
            pod_cidrs,
            internal_ips,
            labels: node.metadata.labels.unwrap_or_default(),
        })
    }
}

fn typed<T: DeserializeOwned>(doc: &Document, want: ResourceKind) -> Result<T, K8sError> {
    if doc.kind != want {
        return Err(K8sError::WrongKind {
            object: doc.describe(),
            expected: want.as_str(),
            actual: doc.kind.as_str().to_owned(),
        });
    }
    serde_path_to_error::deserialize::<_, T>(&doc.object).map_err(|e| K8sError::Decode {
        object: doc.describe(),
        path: e.path().to_string(),
        reason: e.inner().to_string(),
    })
}
