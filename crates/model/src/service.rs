//! A Service as the agent balances it (`GET /v1/services`, `ciliate service list|get`): its
//! frontends, each with the backends behind it and their state.
//!
//! `crates/lb` computes these next to the [`LbState`](crate::lb::LbState) it hands the
//! datapath, from the same objects, so the view never disagrees with what is programmed.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::k8s::ServiceType;
use crate::lb::{BackendState, FrontendKind, L4Proto};

/// One Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIP, NodePort, LoadBalancer or ExternalName.
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    /// The cluster IP; `None` for a headless Service, empty for ExternalName.
    #[serde(default)]
    pub cluster_ip: String,
    /// `sessionAffinity: ClientIP` timeout in seconds, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// Where the Service came from: `api` (`ciliate apply`) or `manifest-dir:<file>`.
    #[serde(default)]
    pub source: String,
    /// Its frontends, sorted by address, port and protocol. Empty for headless and
    /// ExternalName Services, which the datapath does not balance.
    #[serde(default)]
    pub frontends: Vec<FrontendView>,
    /// What keeps it from working as written (no backends, a port no slice serves, a
    /// frontend another Service holds), for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl ServiceView {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One frontend of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendView {
    /// The address.
    pub addr: Ipv4Addr,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub proto: L4Proto,
    /// How it is reached.
    pub kind: FrontendKind,
    /// The Service port's name ("" when unnamed).
    #[serde(default)]
    pub port_name: String,
    /// Its reverse-NAT index, which is also its id in `ciliate bpf lb list`.
    pub rev_nat_index: u16,
    /// Every backend behind it that is active or terminating; those not listed take no
    /// traffic. Terminating ones get new connections only when none is active.
    #[serde(default)]
    pub backends: Vec<BackendView>,
}

impl FrontendView {
    /// `addr:port/PROTO`.
    pub fn address(&self) -> String {
        format!("{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// One backend behind a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    /// Its backend id.
    pub id: u32,
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Active or terminating.
    pub state: BackendState,
}

impl fmt::Display for BackendView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}
