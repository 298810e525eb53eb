//! Endpoints: one per pod interface wired by the CNI plugin.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::NumericIdentity;
use crate::labels::Labels;

/// The pod an endpoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    /// Kubernetes namespace (`default` when the runtime gives none).
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An Ethernet address, printed and parsed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Why a MAC address did not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address (want six hex bytes separated by ':')")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(|| MacParseError(s.to_owned()))?;
            if p.len() != 2 {
                return Err(MacParseError(s.to_owned()));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| MacParseError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_owned()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A named container port (`containerPorts[].name` in a Pod spec): what a policy's named
/// port (`port: http`) resolves to on this endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    /// The name, e.g. `http` (IANA_SVC_NAME: lower case, at most 15 characters).
    pub name: String,
    /// The protocol.
    pub protocol: crate::lb::L4Proto,
    /// The port.
    pub port: u16,
}

impl fmt::Display for NamedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}/{}",
            self.name,
            self.port,
            self.protocol.to_string().to_lowercase()
        )
    }
}

/// Why a named port did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a named port (want name=port[/tcp|udp|sctp], e.g. http=8080/tcp)")]
pub struct NamedPortError(String);

impl FromStr for NamedPort {
    type Err = NamedPortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NamedPortError(s.to_owned());
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let (port, proto) = rest.split_once('/').unwrap_or((rest, "tcp"));
        let valid_name = !name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.chars().any(|c| c.is_ascii_lowercase());
        let port: u16 = port.parse().map_err(|_| bad())?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => crate::lb::L4Proto::Tcp,
            "udp" => crate::lb::L4Proto::Udp,
            "sctp" => crate::lb::L4Proto::Sctp,
            _ => return Err(bad()),
        };
        if !valid_name || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_owned(),
            protocol,
            port,
        })
    }
}

/// Where an endpoint is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// Being wired: address allocated, datapath not yet programmed.
    Creating,
    /// Datapath programmed; traffic flows.
    Ready,
    /// The datapath could not be programmed for it; see the endpoint's `status_message`.
    NotReady,
    /// Being torn down.
    Disconnecting,
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::NotReady => "not-ready",
            Self::Disconnecting => "disconnecting",
        })
    }
}

/// An endpoint: one pod network interface that the datapath serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Node-local endpoint id (1..=65535), as in Cilium.
    pub id: u16,
    /// The runtime's container id (CNI_CONTAINERID).
    pub container_id: String,
    /// The interface name inside the pod (CNI_IFNAME).
    pub ifname: String,
    /// The pod's network namespace path (CNI_NETNS).
    pub netns: String,
    /// The pod, when the runtime named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Labels the identity is derived from.
    pub labels: Labels,
    /// Named container ports, for policies that name ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
    /// Security identity.
    pub identity: NumericIdentity,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The MAC address of the pod's interface.
    pub mac: MacAddr,
    /// Name of the host side of the veth pair.
    pub host_ifname: String,
    /// Interface index of the host side (in the node's network namespace).
    pub host_ifindex: u32,
    /// MAC address of the host side; the pod's gateway resolves to it.
    pub host_mac: MacAddr,
    /// Life-cycle state.
    pub state: EndpointState,
    /// Why the endpoint is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// When it was created (seconds since the Unix epoch).
    pub created_unix: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_parse_and_print() {
        let p: NamedPort = "http=8080/tcp".parse().unwrap();
        assert_eq!(
            (p.name.as_str(), p.port, p.protocol),
            ("http", 8080, crate::lb::L4Proto::Tcp)
        );
        assert_eq!(p.to_string(), "http=8080/tcp");
        assert_eq!(
            "dns=53/UDP".parse::<NamedPort>().unwrap().protocol,
            crate::lb::L4Proto::Udp
        );
        assert_eq!(
            "web=80".parse::<NamedPort>().unwrap().protocol,
            crate::lb::L4Proto::Tcp
        );
        for bad in [
            "http",
            "http=0",
            "http=70000",
            "HTTP=80",
            "http=80/icmp",
            "=80",
            "12=80",
            "a-very-long-port-name=80",
        ] {
            assert!(bad.parse::<NamedPort>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_round_trip_and_errors() {
        let m: MacAddr = "0a:58:0a:f4:00:01".parse().unwrap();
        assert_eq!(m.0, [0x0a, 0x58, 0x0a, 0xf4, 0, 1]);
        assert_eq!(m.to_string(), "0a:58:0a:f4:00:01");
        for bad in [
            "",
            "0a:58",
            "0a:58:0a:f4:00:01:02",
            "zz:58:0a:f4:00:01",
            "0a5:8:0a:f4:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
