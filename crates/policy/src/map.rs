//! The engine's output in the datapath's map types ([`ciliate_model::bpf_policy`]), and the
//! datapath's lookup over them, mirrored from `bpf/include/ciliate/policy.h` so that tests can
//! hold the maps' verdicts against [`Resolved::explain`](crate::Resolved::explain).

use ciliate_model::bpf_policy::{self, MatchKind, PolicyMapEntry};
use ciliate_model::identity::NumericIdentity;
use ciliate_model::policy::{
    Direction, EndpointPolicy, EntrySource, IpcacheEntry, RuleRef, PROTO_ANY,
};
use ipnet::IpNet;

/// The policy map contents of one endpoint. `rule_id` numbers rules for verdict events
/// (see [`PolicyEngine::rule_id`](crate::PolicyEngine::rule_id)); an entry carries the id of
/// the first rule it came from, 0 for defaults.
///
/// The "allow everything" entries of directions not in default deny are left out: the
/// datapath admits what no entry matches in such a direction anyway.
pub fn to_map_policy(
    policy: &EndpointPolicy,
    mut rule_id: impl FnMut(&RuleRef) -> u32,
) -> bpf_policy::EndpointPolicy {
    let mut entries: Vec<PolicyMapEntry> = policy
        .entries
        .iter()
        .filter(|e| {
            e.deny
                || !e
                    .derived_from
                    .iter()
                    .all(|s| *s == EntrySource::NoDefaultDeny)
        })
        .map(|e| {
            let k = &e.key;
            let any_port = k.proto == PROTO_ANY;
            PolicyMapEntry {
                identity: k.identity,
                egress: k.direction == Direction::Egress,
                proto: (!any_port).then_some(k.proto),
                port: if any_port { 0 } else { k.dport },
                port_prefix_len: if any_port { 0 } else { k.port_prefix_len },
                deny: e.deny,
                kind: match (k.identity == 0, any_port) {
                    (false, true) => MatchKind::L3Only,
                    (false, false) => MatchKind::L3L4,
                    (true, false) => MatchKind::L4Only,
                    (true, true) => MatchKind::All,
                },
                rule: e
                    .derived_from
                    .iter()
                    .find_map(|s| match s {
                        EntrySource::Rule(r) => Some(rule_id(r)),
                        _ => None,
                    })
                    .unwrap_or(0),
                proxy_port: e.proxy_port,
            }
        })
        .collect();
    entries.sort();
    bpf_policy::EndpointPolicy {
        ingress_enforced: policy.ingress.default_deny,
        egress_enforced: policy.egress.default_deny,
        entries,
    }
}

/// The IPv4 ipcache entries (the datapath is IPv4-only; IPv6 prefixes are left out).
pub fn to_ipcache4(entries: &[IpcacheEntry]) -> Vec<bpf_policy::IpcacheEntry> {
    entries
        .iter()
        .filter_map(|e| match e.prefix {
            IpNet::V4(prefix) => Some(bpf_policy::IpcacheEntry {
                prefix,
                identity: e.identity,
                tunnel_endpoint: None,
            }),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// The datapath's verdict (`policy_check` in `bpf/include/ciliate/policy.h`): the longest
/// matching entry of the peer's identity and of identity 0; a deny in either drops (181), an
/// allow in either admits, and otherwise a direction under policy drops (133). `None` admits.
pub fn datapath_verdict(
    policy: &bpf_policy::EndpointPolicy,
    egress: bool,
    peer: NumericIdentity,
    proto: u8,
    port: u16,
) -> Option<u8> {
    let longest = |identity: NumericIdentity| {
        policy
            .entries
            .iter()
            .filter(|e| e.identity == identity && e.egress == egress)
            .filter(|e| match e.proto {
                None => true,
                Some(p) => {
                    let len = u32::from(e.port_prefix_len.min(16));
                    let mask = if len == 0 { 0 } else { u16::MAX << (16 - len) };
                    p == proto && port & mask == e.port & mask
                }
            })
            .max_by_key(|e| e.proto.map_or(0, |_| 8 + u32::from(e.port_prefix_len)))
    };
    let (exact, any) = (longest(peer), longest(0));
    if exact.is_some_and(|e| e.deny) || any.is_some_and(|e| e.deny) {
        return Some(crate::explain::DROP_POLICY_DENY);
    }
    if exact.is_some() || any.is_some() {
        return None;
    }
    let enforced = if egress {
        policy.egress_enforced
    } else {
        policy.ingress_enforced
    };
    enforced.then_some(crate::explain::DROP_POLICY_DEFAULT_DENY)
}
