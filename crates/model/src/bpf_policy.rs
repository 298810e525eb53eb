//! Policy as the datapath holds it: per endpoint, entries keyed by (peer identity,
//! direction, protocol, port prefix) with an allow or deny verdict, plus whether each
//! direction is under policy (default deny). `crates/policy` computes what should be there;
//! the datapath writes it, replacing an endpoint's whole policy atomically.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::identity::NumericIdentity;

/// How an entry matches, as Hubble names policy-verdict match types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchKind {
    /// A peer identity, any port.
    L3Only,
    /// A peer identity and a port.
    L3L4,
    /// Any peer, a port.
    L4Only,
    /// Any peer, any port.
    All,
}

/// One policy map entry of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMapEntry {
    /// Peer identity; 0 = any peer.
    pub identity: NumericIdentity,
    /// True for the endpoint's egress, false for its ingress.
    pub egress: bool,
    /// IP protocol; `None` = any protocol (then the port is not looked at).
    pub proto: Option<u8>,
    /// The port (ICMP: the type), meaningful in its first `port_prefix_len` bits.
    pub port: u16,
    /// 0 = any port, 16 = exactly `port`; in between, a power-of-two aligned range.
    pub port_prefix_len: u8,
    /// Deny instead of allow.
    pub deny: bool,
    /// How it matches (for verdict events).
    pub kind: MatchKind,
    /// The agent's id of the rule that made it (see `policy trace`); 0 if none.
    pub rule: u32,
    /// An allowed packet goes to the node's L7 proxy listening on this port (see
    /// [`crate::l7`]); 0 = forwarded as it is.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub proxy_port: u16,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

/// An endpoint's whole policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPolicy {
    /// Some policy selects the endpoint for ingress: what no entry allows is denied.
    pub ingress_enforced: bool,
    /// Some policy selects the endpoint for egress.
    pub egress_enforced: bool,
    /// The entries, sorted.
    pub entries: Vec<PolicyMapEntry>,
}

/// One ipcache entry: a prefix and the identity of the addresses in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpcacheEntry {
    /// The prefix.
    pub prefix: Ipv4Net,
    /// Its identity.
    pub identity: NumericIdentity,
    /// The node that holds it, for remote pods (multi-node); `None` for local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<Ipv4Addr>,
}

/// What one policy map entry admitted so far (the datapath counts allow hits only; a new
/// policy generation starts from zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntryCounters {
    /// The entry.
    #[serde(flatten)]
    pub entry: PolicyMapEntry,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// What a policy or ipcache sync wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySyncStats {
    /// Map entries written.
    pub written: u64,
    /// Map entries deleted.
    pub deleted: u64,
}

/// Splits the port range `from..=to` into the fewest (port, prefix length) pairs that cover
/// it exactly, as an LPM key holds them.
pub fn port_range_prefixes(from: u16, to: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if from > to {
        return out;
    }
    let mut start = u32::from(from);
    let end = u32::from(to);
    while start <= end {
        // The largest aligned block that starts at `start` and stays within `end`.
        let mut size = if start == 0 {
            1 << 16
        } else {
            1u32 << start.trailing_zeros().min(16)
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        out.push((start as u16, 16 - size.trailing_zeros() as u8));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn covers(prefixes: &[(u16, u8)], port: u16) -> bool {
        prefixes.iter().any(|(p, len)| {
            let mask: u16 = if *len == 0 { 0 } else { u16::MAX << (16 - len) };
            port & mask == *p & mask
        })
    }

    #[test]
    fn well_known_ranges() {
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(8080, 8083), vec![(8080, 14)]);
        assert_eq!(port_range_prefixes(1024, 2047), vec![(1024, 6)]);
        assert!(port_range_prefixes(10, 9).is_empty());
    }

    proptest! {
        #[test]
        fn prefixes_cover_exactly_the_range(a in 0u16..=65535, b in 0u16..=65535, probe in 0u16..=65535) {
            let (from, to) = (a.min(b), a.max(b));
            let prefixes = port_range_prefixes(from, to);
            prop_assert!(prefixes.len() <= 32);
            prop_assert_eq!(covers(&prefixes, probe), (from..=to).contains(&probe));
        }
    }
}
