//! Policy as the datapath holds it: per-endpoint entries keyed by (peer identity, direction,
//! protocol, port prefix), and ipcache entries mapping CIDRs to identities.
//!
//! `crates/policy` computes these; the datapath writes them into its maps. The lookup the BPF
//! program does is [`EndpointPolicy::lookup`], here in plain Rust so that both sides, and the
//! tests that hold one against the other, agree on it:
//!
//! 1. look the peer's identity up, longest (protocol, port) prefix wins;
//! 2. if nothing matched, look identity 0 (any peer) up the same way;
//! 3. the entry found decides by its deny bit (drop reason 181 when it denies); no entry at all
//!    is a default-deny drop (reason 133).
//!
//! The entries are built so that this lookup gives the policy's verdict: deny entries that
//! apply to any peer are copied under every peer identity that has entries of its own, allow
//! entries inside a deny entry's range are left out, and a direction no policy puts in default
//! deny gets an allow-everything entry (identity 0, protocol 0), so a miss always means deny.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::resource::{PolicyRef, RuleRef};
use crate::identity::NumericIdentity;

/// Protocol 0 in a key: any protocol (and then any port).
pub const PROTO_ANY: u8 = 0;
/// ICMP; the key's port is the ICMP type.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMPv6; the key's port is the ICMPv6 type.
pub const PROTO_ICMPV6: u8 = 58;
/// SCTP.
pub const PROTO_SCTP: u8 = 132;

/// Number of entries a per-endpoint policy map holds (Cilium's default).
pub const POLICY_MAP_MAX_ENTRIES: usize = 16384;

/// Which way traffic crosses the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the endpoint; the peer is the source.
    Ingress,
    /// Out of the endpoint; the peer is the destination.
    Egress,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Self::Ingress, Self::Egress];

    /// The value in a BPF key (as Cilium: 0 ingress, 1 egress).
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Ingress => 0,
            Self::Egress => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// The key of one policy map entry.
///
/// Identity and direction are always exact. Protocol and destination port form a 24-bit LPM
/// key (8 bits protocol, then 16 bits port): [`PolicyKey::lpm_prefix_len`] is 0 for any protocol
/// (then the port is any too), 8 for one protocol and every port, `8 + n` for one protocol and
/// the ports sharing the top `n` bits of `dport`. A port range becomes several keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyKey {
    /// The peer's identity; 0 for any peer.
    pub identity: NumericIdentity,
    /// The direction.
    pub direction: Direction,
    /// IP protocol; [`PROTO_ANY`] for any.
    pub proto: u8,
    /// First destination port of the block (host byte order; the ICMP type for ICMP).
    pub dport: u16,
    /// How many high bits of `dport` are significant (0..=16); 0 when `proto` is any.
    pub port_prefix_len: u8,
}

impl PolicyKey {
    /// The key matching every protocol and port of a peer.
    pub fn any(identity: NumericIdentity, direction: Direction) -> Self {
        Self {
            identity,
            direction,
            proto: PROTO_ANY,
            dport: 0,
            port_prefix_len: 0,
        }
    }

    /// Prefix length over (protocol, port): 0, or 8 plus the port prefix length.
    pub fn lpm_prefix_len(&self) -> u8 {
        if self.proto == PROTO_ANY {
            0
        } else {
            8 + self.port_prefix_len
        }
    }

    /// The first and last port the key covers.
    pub fn port_range(&self) -> (u16, u16) {
        if self.proto == PROTO_ANY || self.port_prefix_len == 0 {
            return (0, u16::MAX);
        }
        let host_bits = 16 - u32::from(self.port_prefix_len.min(16));
        let span = ((1u32 << host_bits) - 1) as u16;
        let start = self.dport & !span;
        (start, start | span)
    }

    /// Whether a packet of this protocol and destination port falls under the key
    /// (identity and direction aside).
    pub fn covers(&self, proto: u8, dport: u16) -> bool {
        if self.proto == PROTO_ANY {
            return true;
        }
        let (lo, hi) = self.port_range();
        self.proto == proto && (lo..=hi).contains(&dport)
    }

    /// Whether every (protocol, port) of `other` falls under `self` (identity and direction aside).
    pub fn contains(&self, other: &PolicyKey) -> bool {
        if self.proto == PROTO_ANY {
            return true;
        }
        if other.proto != self.proto {
            return false;
        }
        let (a, b) = self.port_range();
        let (c, d) = other.port_range();
        a <= c && d <= b
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = if self.identity == 0 {
            "any".to_owned()
        } else {
            self.identity.to_string()
        };
        write!(f, "{} {peer} ", self.direction)?;
        if self.proto == PROTO_ANY {
            return f.write_str("any");
        }
        let proto = match self.proto {
            PROTO_TCP => "TCP".to_owned(),
            PROTO_UDP => "UDP".to_owned(),
            PROTO_SCTP => "SCTP".to_owned(),
            PROTO_ICMP => "ICMP".to_owned(),
            PROTO_ICMPV6 => "ICMPv6".to_owned(),
            n => format!("proto-{n}"),
        };
        let (lo, hi) = self.port_range();
        match (lo, hi) {
            (0, u16::MAX) => write!(f, "{proto}/any"),
            (lo, hi) if lo == hi => write!(f, "{proto}/{lo}"),
            (lo, hi) => write!(f, "{proto}/{lo}-{hi}"),
        }
    }
}

/// Why an entry exists.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntrySource {
    /// A rule of a policy.
    Rule(RuleRef),
    /// No policy puts the endpoint in default deny in this direction: what no deny rule denies
    /// is allowed.
    NoDefaultDeny,
    /// The node may always reach its own endpoints (Cilium's `allow-localhost`), so that
    /// health probes keep working under default deny.
    AllowLocalhost,
}

impl fmt::Display for EntrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule(r) => r.fmt(f),
            Self::NoDefaultDeny => f.write_str("no policy enables default deny (allow all)"),
            Self::AllowLocalhost => f.write_str("the local node may always reach its endpoints"),
        }
    }
}

/// One policy map entry: key, verdict, and the rules it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    /// The key.
    pub key: PolicyKey,
    /// Deny (drop with reason 181) rather than allow.
    pub deny: bool,
    /// L7 proxy port to redirect to; always 0 until L7 policy is enforced.
    pub proxy_port: u16,
    /// The rules (or defaults) that produced the entry; for the CLI and traces, not the map.
    pub derived_from: Vec<EntrySource>,
}

/// The policy of one endpoint identity in one direction, apart from its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionPolicy {
    /// Whether traffic no entry allows is dropped.
    pub default_deny: bool,
    /// The policies with rules for the endpoint in this direction.
    pub selected_by: Vec<PolicyRef>,
}

/// Everything the datapath needs to enforce policy for the endpoints of one identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPolicy {
    /// The endpoints' identity.
    pub identity: NumericIdentity,
    /// Ingress.
    pub ingress: DirectionPolicy,
    /// Egress.
    pub egress: DirectionPolicy,
    /// The map entries, sorted by key, each key once.
    pub entries: Vec<PolicyEntry>,
}

/// What [`EndpointPolicy::lookup`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// An allow entry matched.
    Allowed(&'a PolicyEntry),
    /// A deny entry matched (drop reason 181).
    Denied(&'a PolicyEntry),
    /// No entry matched (drop reason 133).
    DefaultDenied,
}

impl Lookup<'_> {
    /// Whether the packet passes.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed(_))
    }
}

impl EndpointPolicy {
    /// The policy of a direction.
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The datapath's lookup (see the module documentation): the peer's identity first, then
    /// identity 0; within one identity the longest (protocol, port) prefix; then the deny bit.
    pub fn lookup(
        &self,
        direction: Direction,
        peer: NumericIdentity,
        proto: u8,
        dport: u16,
    ) -> Lookup<'_> {
        for identity in [peer, 0] {
            let best = self
                .entries
                .iter()
                .filter(|e| {
                    e.key.identity == identity
                        && e.key.direction == direction
                        && e.key.covers(proto, dport)
                })
                .max_by_key(|e| e.key.lpm_prefix_len());
            if let Some(e) = best {
                return if e.deny {
                    Lookup::Denied(e)
                } else {
                    Lookup::Allowed(e)
                };
            }
            if peer == 0 {
                break;
            }
        }
        Lookup::DefaultDenied
    }
}

/// One ipcache entry: addresses in `prefix` (unless a longer prefix says otherwise) have
/// `identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpcacheEntry {
    /// The prefix.
    pub prefix: IpNet,
    /// Its identity.
    pub identity: NumericIdentity,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(proto: u8, dport: u16, len: u8) -> PolicyKey {
        PolicyKey {
            identity: 7,
            direction: Direction::Ingress,
            proto,
            dport,
            port_prefix_len: len,
        }
    }

    #[test]
    fn key_ranges_and_containment() {
        assert_eq!(key(PROTO_TCP, 80, 16).port_range(), (80, 80));
        assert_eq!(key(PROTO_TCP, 0, 6).port_range(), (0, 1023));
        assert_eq!(key(PROTO_TCP, 1024, 6).port_range(), (1024, 2047));
        assert_eq!(key(PROTO_TCP, 0, 0).port_range(), (0, 65535));
        assert_eq!(key(PROTO_TCP, 80, 16).lpm_prefix_len(), 24);
        assert_eq!(PolicyKey::any(0, Direction::Egress).lpm_prefix_len(), 0);
        assert!(key(PROTO_TCP, 0, 6).contains(&key(PROTO_TCP, 80, 16)));
        assert!(!key(PROTO_UDP, 0, 6).contains(&key(PROTO_TCP, 80, 16)));
        assert!(key(PROTO_ANY, 0, 0).contains(&key(PROTO_UDP, 53, 16)));
        assert!(key(PROTO_TCP, 8080, 13).covers(PROTO_TCP, 8087));
        assert!(!key(PROTO_TCP, 8080, 13).covers(PROTO_TCP, 8088));
        assert_eq!(
            key(PROTO_TCP, 8080, 13).to_string(),
            "ingress 7 TCP/8080-8087"
        );
    }

    #[test]
    fn lookup_prefers_exact_identity_then_longest_prefix() {
        let entry = |identity, proto, dport, len, deny| PolicyEntry {
            key: PolicyKey {
                identity,
                direction: Direction::Ingress,
                proto,
                dport,
                port_prefix_len: len,
            },
            deny,
            proxy_port: 0,
            derived_from: vec![],
        };
        let p = EndpointPolicy {
            identity: 300,
            ingress: DirectionPolicy::default(),
            egress: DirectionPolicy::default(),
            entries: vec![
                entry(0, PROTO_ANY, 0, 0, false),
                entry(9, PROTO_TCP, 0, 0, false),
                entry(9, PROTO_TCP, 80, 16, true),
            ],
        };
        assert!(matches!(
            p.lookup(Direction::Ingress, 9, PROTO_TCP, 80),
            Lookup::Denied(_)
        ));
        assert!(p.lookup(Direction::Ingress, 9, PROTO_TCP, 81).is_allowed());
        // Identity 9 has entries, but none for UDP: the wildcard identity decides.
        assert!(p.lookup(Direction::Ingress, 9, PROTO_UDP, 53).is_allowed());
        assert_eq!(
            p.lookup(Direction::Egress, 9, PROTO_UDP, 53),
            Lookup::DefaultDenied
        );
    }
}
