//! Datapath events as `ciliate monitor` shows them: decoded, not yet enriched into Flows.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What kind of event the datapath reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A packet was forwarded (reported on new connections and TCP flag changes).
    Trace,
    /// A packet was dropped.
    Drop,
    /// Policy judged a new connection (allowed or denied), for a direction under policy.
    PolicyVerdict,
}

/// The L4 part of an event, when the packet had one the datapath understands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "protocol")]
pub enum L4 {
    /// TCP with its ports and flags (e.g. "SYN", "ACK", "FIN").
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flags set, by name.
        flags: Vec<String>,
    },
    /// UDP with its ports.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMPv4 with type and code.
    Icmp {
        /// ICMP type.
        r#type: u8,
        /// ICMP code.
        code: u8,
    },
    /// Another IP protocol.
    Other {
        /// IP protocol number.
        proto: u8,
    },
}

/// One decoded datapath event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorEvent {
    /// Trace or drop.
    pub kind: EventKind,
    /// Wall-clock time the agent stamped on it, RFC 3339.
    pub time: String,
    /// For drops, the drop reason code (Hubble's numbering); for traces, the observation point code.
    pub code: u8,
    /// Human name of `code`, e.g. "Policy denied" or "to-endpoint".
    pub reason: String,
    /// Endpoint id that reported it (0 when not attributable).
    pub endpoint: u16,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// Source security identity, when known.
    pub src_identity: u32,
    /// Destination security identity, when known.
    pub dst_identity: u32,
    /// Connection-tracking verdict: "new", "established", "reply", or "" when not tracked.
    pub ct_state: String,
    /// Length of the packet on the wire.
    pub len: u32,
    /// Ethertype of the packet (0x0800 IPv4, 0x86dd IPv6, 0x0806 ARP).
    pub ethertype: u16,
    /// IPv4 source, when the packet is IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Ipv4Addr>,
    /// IPv4 destination, when the packet is IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Ipv4Addr>,
    /// The L4 header, when parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<L4>,
    /// The reverse-NAT index of the Service frontend the connection was addressed to, when
    /// the datapath translated it (per packet or with socket LB) and so the packet shows the
    /// backend instead; 0 when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rev_nat: u16,
    /// The agent's number of the policy rule whose map entry judged the packet (see
    /// `PolicyEngine::rule`): on policy verdicts, policy drops and the trace of a packet
    /// policy allowed; 0 when no entry matched (default deny, no policy) or not judged.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub rule: u32,
    /// The Ethernet header's source and destination, when the capture has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethernet: Option<EthernetAddrs>,
}

/// An Ethernet header's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EthernetAddrs {
    /// Source MAC.
    pub source: crate::endpoint::MacAddr,
    /// Destination MAC.
    pub destination: crate::endpoint::MacAddr,
}

impl fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            EventKind::Trace => "->",
            EventKind::Drop => "xx drop",
            EventKind::PolicyVerdict => "policy-verdict",
        };
        write!(
            f,
            "{} {kind} ({}) ep {} ",
            self.time, self.reason, self.endpoint
        )?;
        let (sport, dport, what) = match &self.l4 {
            Some(L4::Tcp {
                sport,
                dport,
                flags,
            }) => (
                Some(*sport),
                Some(*dport),
                format!("tcp {}", flags.join("|")),
            ),
            Some(L4::Udp { sport, dport }) => (Some(*sport), Some(*dport), "udp".to_owned()),
            Some(L4::Icmp { r#type, code }) => {
                (None, None, format!("icmp type {type} code {code}"))
            }
            Some(L4::Other { proto }) => (None, None, format!("proto {proto}")),
            None => (None, None, format!("ethertype {:#06x}", self.ethertype)),
        };
        let addr = |ip: Option<Ipv4Addr>, port: Option<u16>| match (ip, port) {
            (Some(ip), Some(p)) => format!("{ip}:{p}"),
            (Some(ip), None) => ip.to_string(),
            _ => "?".to_owned(),
        };
        write!(
            f,
            "{} -> {} {what}",
            addr(self.src, sport),
            addr(self.dst, dport)
        )?;
        if !self.ct_state.is_empty() {
            write!(f, " ct={}", self.ct_state)?;
        }
        write!(
            f,
            " identity {}->{} len {}",
            self.src_identity, self.dst_identity, self.len
        )?;
        if self.rule != 0 {
            write!(f, " rule {}", self.rule)?;
        }
        Ok(())
    }
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// Connection tracking's verdict on a packet, as the datapath reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CtState {
    /// Not tracked (or a state this agent does not name).
    #[default]
    Untracked,
    /// The first packet of a connection.
    New,
    /// A packet of a known connection, in its original direction.
    Established,
    /// A packet of a known connection, in the reply direction.
    Reply,
    /// A packet related to a known connection (ICMP errors).
    Related,
}

impl CtState {
    /// The name [`MonitorEvent::ct_state`] uses ("" when untracked).
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::Untracked => "",
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Reply => "reply",
            CtState::Related => "related",
        }
    }

    /// The state a [`MonitorEvent::ct_state`] names.
    pub fn from_name(name: &str) -> Self {
        match name {
            "new" => CtState::New,
            "established" => CtState::Established,
            "reply" => CtState::Reply,
            "related" => CtState::Related,
            _ => CtState::Untracked,
        }
    }
}

/// TCP header flag bits, in header order, with their names.
pub const TCP_FLAG_NAMES: [(u8, &str); 8] = [
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

/// The L4 part of an [`EventRecord`]: [`L4`] with TCP flags as the header's bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordL4 {
    /// TCP with its ports and flag bits (`TCP_FLAG_NAMES`).
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flag bits as in the TCP header's 14th byte.
        flags: u8,
    },
    /// UDP with its ports.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMPv4 with type and code.
    Icmp {
        /// ICMP type.
        r#type: u8,
        /// ICMP code.
        code: u8,
    },
    /// Another IP protocol.
    Other {
        /// IP protocol number.
        proto: u8,
    },
}

impl RecordL4 {
    /// The same header with flags named, as [`MonitorEvent`] shows it.
    pub fn to_l4(self) -> L4 {
        match self {
            RecordL4::Tcp {
                sport,
                dport,
                flags,
            } => L4::Tcp {
                sport,
                dport,
                flags: TCP_FLAG_NAMES
                    .iter()
                    .filter(|(bit, _)| flags & bit != 0)
                    .map(|(_, n)| (*n).to_owned())
                    .collect(),
            },
            RecordL4::Udp { sport, dport } => L4::Udp { sport, dport },
            RecordL4::Icmp { r#type, code } => L4::Icmp { r#type, code },
            RecordL4::Other { proto } => L4::Other { proto },
        }
    }

    /// The same header with flags as bits (names this type has no bit for are left out).
    pub fn from_l4(l4: &L4) -> Self {
        match l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => RecordL4::Tcp {
                sport: *sport,
                dport: *dport,
                flags: TCP_FLAG_NAMES
                    .iter()
                    .filter(|(_, n)| flags.iter().any(|f| f == n))
                    .fold(0, |acc, (bit, _)| acc | bit),
            },
            L4::Udp { sport, dport } => RecordL4::Udp {
                sport: *sport,
                dport: *dport,
            },
            L4::Icmp { r#type, code } => RecordL4::Icmp {
                r#type: *r#type,
                code: *code,
            },
            L4::Other { proto } => RecordL4::Other { proto: *proto },
        }
    }
}

/// Which side of an endpoint a policy verdict judged, and how its entry matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictInfo {
    /// `Some(true)` egress, `Some(false)` ingress, `None` not said.
    pub egress: Option<bool>,
    /// Cilium's policy match type: none 0, L3-only 1, L3-L4 2, L4-only 3, all 4.
    pub match_type: u8,
}

/// One datapath event as the kernel reported it: numbers only, nothing named and nothing
/// allocated. What the observer keeps per event (with the names it had, see the observer's
/// `record` module); [`MonitorEvent`] is the same event with names, for `ciliate monitor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Trace, drop or policy verdict.
    pub kind: EventKind,
    /// Wall-clock time of the event (`None` when unknown).
    pub time: Option<std::time::SystemTime>,
    /// For drops, the drop reason code; for traces, the observation point code; for policy
    /// verdicts, 0 (allowed) or the drop reason.
    pub code: u8,
    /// For policy verdicts: direction and match type.
    pub verdict: VerdictInfo,
    /// Endpoint id that reported it (0 when not attributable).
    pub endpoint: u16,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// Source security identity, when known.
    pub src_identity: u32,
    /// Destination security identity, when known.
    pub dst_identity: u32,
    /// Connection tracking's verdict.
    pub ct_state: CtState,
    /// Length of the packet on the wire.
    pub len: u32,
    /// Ethertype of the packet.
    pub ethertype: u16,
    /// IPv4 source, when the packet is IPv4.
    pub src: Option<Ipv4Addr>,
    /// IPv4 destination, when the packet is IPv4.
    pub dst: Option<Ipv4Addr>,
    /// The L4 header, when parsed.
    pub l4: Option<RecordL4>,
    /// The reverse-NAT index of the Service frontend the connection was addressed to; 0 none.
    pub rev_nat: u16,
    /// The number of the policy rule that judged the packet; 0 none.
    pub rule: u32,
    /// The Ethernet header's addresses, when captured.
    pub ethernet: Option<EthernetAddrs>,
}
