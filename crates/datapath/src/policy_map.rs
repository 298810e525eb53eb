//! Policy and ipcache map records: how an [`EndpointPolicy`] and [`IpcacheEntry`]s are laid
//! out as LPM keys and values, and back. Pure.

use std::net::Ipv4Addr;

use ciliate_model::bpf_policy::{IpcacheEntry, MatchKind, PolicyMapEntry};
use ipnet::Ipv4Net;

use crate::abi::{
    IpcacheValue, PolicyKeyData, PolicyValue, POLICY_F_DENY, POLICY_PREFIX_ANY_PROTO,
};

/// The LPM key (prefix length, data) of one entry of endpoint `ep_id`, generation `version`.
pub fn policy_key(ep_id: u16, version: u8, e: &PolicyMapEntry) -> (u32, PolicyKeyData) {
    let port_bits = if e.proto.is_some() {
        u32::from(e.port_prefix_len.min(16))
    } else {
        0
    };
    let mask: u16 = if port_bits == 0 {
        0
    } else {
        u16::MAX << (16 - port_bits)
    };
    let prefix = match e.proto {
        None => POLICY_PREFIX_ANY_PROTO,
        Some(_) => POLICY_PREFIX_ANY_PROTO + 8 + port_bits,
    };
    (
        prefix,
        PolicyKeyData {
            ep_id: ep_id.to_be_bytes(),
            version,
            egress: u8::from(e.egress),
            identity: e.identity.to_be_bytes(),
            proto: e.proto.unwrap_or(0),
            dport: (e.port & mask).to_be_bytes(),
            pad: 0,
        },
    )
}

fn match_code(k: MatchKind) -> u8 {
    match k {
        MatchKind::L3Only => 1,
        MatchKind::L3L4 => 2,
        MatchKind::L4Only => 3,
        MatchKind::All => 4,
    }
}

/// The match kind of a policy-verdict event's match code (0: nothing matched).
pub fn match_kind(code: u8) -> Option<MatchKind> {
    match code {
        1 => Some(MatchKind::L3Only),
        2 => Some(MatchKind::L3L4),
        3 => Some(MatchKind::L4Only),
        4 => Some(MatchKind::All),
        _ => None,
    }
}

/// The map value of an entry whose key is `(prefix, key)` (from [`policy_key`]): the value
/// carries its own key, under which `cil_pol_stats` counts what it allows.
pub fn policy_value(prefix: u32, key: &PolicyKeyData, e: &PolicyMapEntry) -> PolicyValue {
    PolicyValue {
        flags: if e.deny { POLICY_F_DENY } else { 0 },
        match_kind: match_code(e.kind),
        proxy_port: e.proxy_port,
        rule: e.rule,
        key_prefix_len: prefix,
        key: *key,
    }
}

/// Reads an entry back from its key and value.
pub fn policy_entry(prefix: u32, k: &PolicyKeyData, v: &PolicyValue) -> PolicyMapEntry {
    let proto = (prefix > POLICY_PREFIX_ANY_PROTO).then_some(k.proto);
    PolicyMapEntry {
        identity: u32::from_be_bytes(k.identity),
        egress: k.egress != 0,
        proto,
        port: u16::from_be_bytes(k.dport),
        port_prefix_len: prefix.saturating_sub(POLICY_PREFIX_ANY_PROTO + 8) as u8,
        deny: v.flags & POLICY_F_DENY != 0,
        kind: match_kind(v.match_kind).unwrap_or(MatchKind::All),
        rule: v.rule,
        proxy_port: v.proxy_port,
    }
}

/// The ipcache key and value of an entry.
pub fn ipcache_record(e: &IpcacheEntry) -> (u32, [u8; 4], IpcacheValue) {
    (
        u32::from(e.prefix.prefix_len()),
        e.prefix.network().octets(),
        IpcacheValue {
            identity: e.identity,
            tunnel_endpoint: e.tunnel_endpoint.map(|a| a.octets()).unwrap_or([0; 4]),
            flags: 0,
            pad: 0,
        },
    )
}

/// Reads an ipcache entry back.
pub fn ipcache_entry(prefix: u32, addr: [u8; 4], v: &IpcacheValue) -> IpcacheEntry {
    let prefix = Ipv4Net::new(Ipv4Addr::from(addr), prefix.min(32) as u8)
        .unwrap_or_else(|_| Ipv4Net::from(Ipv4Addr::from(addr)));
    IpcacheEntry {
        prefix,
        identity: v.identity,
        tunnel_endpoint: (v.tunnel_endpoint != [0; 4]).then(|| Ipv4Addr::from(v.tunnel_endpoint)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: Option<u8>, port: u16, len: u8) -> PolicyMapEntry {
        PolicyMapEntry {
            identity: 300,
            egress: true,
            proto,
            port,
            port_prefix_len: len,
            deny: false,
            kind: MatchKind::L3L4,
            rule: 7,
            proxy_port: 0,
        }
    }

    #[test]
    fn keys_round_trip_and_mask_ports_beyond_the_prefix() {
        for e in [
            entry(None, 0, 0),
            entry(Some(6), 0, 0),
            entry(Some(6), 80, 16),
            entry(Some(17), 8080, 14),
        ] {
            let (prefix, k) = policy_key(9, 1, &e);
            let v = policy_value(prefix, &k, &e);
            assert_eq!((v.key_prefix_len, v.key), (prefix, k));
            assert_eq!(policy_entry(prefix, &k, &v), e);
        }
        let (prefix, k) = policy_key(9, 0, &entry(Some(6), 8083, 14));
        assert_eq!((prefix, u16::from_be_bytes(k.dport)), (86, 8080));
        assert_eq!(
            policy_key(9, 0, &entry(None, 80, 16)).0,
            64,
            "any protocol: no port"
        );
    }
}
