//! Load-balancing state as the datapath holds it: frontends (a Service's VIP:port), backends
//! and reverse-NAT entries. `crates/lb` computes it from Services and EndpointSlices; the
//! datapath writes it into its maps. Plain data; ids are assigned by `crates/lb`.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// L4 protocols a Service port can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132): accepted in manifests; the datapath balances it like the others.
    Sctp,
}

impl L4Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// The protocol with this IP number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// How a frontend is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum FrontendKind {
    /// `spec.clusterIP(s)`.
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
    /// A node address with the port's `nodePort`.
    NodePort,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

/// A backend's state, as kube-proxy reads EndpointSlice conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    /// Ready: takes new connections.
    Active,
    /// Terminating but still serving: no new connections (unless no backend is ready), its
    /// established connections keep going.
    Terminating,
}

/// One backend: an address and port that serves some Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbBackend {
    /// Stable id (never 0).
    pub id: u32,
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub proto: L4Proto,
    /// Whether it takes new connections.
    pub state: BackendState,
}

/// The Service a frontend belongs to, for display.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The Service port's name ("" when unnamed).
    #[serde(default)]
    pub port_name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// One frontend: VIP, port and protocol, and the backends that serve it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbFrontend {
    /// The virtual address.
    pub addr: Ipv4Addr,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub proto: L4Proto,
    /// How it is reached.
    pub kind: FrontendKind,
    /// Reverse-NAT index (never 0): replies from a backend get this frontend's address back.
    pub rev_nat_index: u16,
    /// Backends that take new connections, in slot order. When none is ready, kube-proxy
    /// falls back to terminating-but-serving ones; `crates/lb` puts those here then.
    pub backends: Vec<u32>,
    /// `sessionAffinity: ClientIP` timeout in seconds, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// The Service it belongs to.
    pub service: ServiceRef,
}

/// Everything the datapath needs for load balancing. Backends not referenced by any frontend
/// slot stay (terminating ones keep their established connections) until they leave this set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbState {
    /// Frontends, sorted by (addr, port, proto).
    pub frontends: Vec<LbFrontend>,
    /// Backends, sorted by id.
    pub backends: Vec<LbBackend>,
}

/// What a datapath sync wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbSyncStats {
    /// Map entries written (inserted or changed).
    pub written: u64,
    /// Map entries deleted.
    pub deleted: u64,
}
