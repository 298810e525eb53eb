//! `policy whatif`: replays recorded flows through the policies in force and through a
//! proposed set, and reports the flows whose verdict would change, grouped by source,
//! destination, port and protocol, with the rule that decides under each. Nothing is
//! applied: both policy sets are copies of the engine.
//!
//! Which flows: L3/L4 flows from the flow history (and what it has not written yet) where
//! either side is an endpoint, forwarded or dropped by policy (drop reasons 133 and 181),
//! replies left out (policy judges a connection by its requests). Each is judged by its
//! identities and destination port as the datapath judges it: the source's egress policy, then
//! the destination's ingress policy.
//!
//! Identities: by the current identity table (the node's and the cluster's, with namespace
//! labels, as enforcement sees them); an identity that no longer exists (its pods are gone) is
//! judged by the labels its flows recorded. An address outside the cluster (world, or a CIDR
//! identity) is resolved again under each policy set, so a proposed `toCIDR` rule is judged
//! by the prefix it names.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ciliate_model::identity::{NumericIdentity, ReservedIdentity, MIN_CIDR_IDENTITY};
use ciliate_model::labels::{Label, Labels};
use ciliate_model::manifest::{ApplyDocument, ManifestError};
use ciliate_model::policy::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use ciliate_model::whatif::{WhatIfChange, WhatIfReport};
use ciliate_observer::filter::FlowFilters;
use ciliate_observer::history::{PodPrefilter, Scan, Snapshot};
use ciliate_observer::proto::flow::{layer4, Flow, FlowType, Verdict as FlowVerdict};
use ciliate_policy::explain::{DROP_POLICY_DEFAULT_DENY, DROP_POLICY_DENY};
use ciliate_policy::{
    is_endpoint_identity, load_documents, IdentityLabels, PolicyEngine, Resolved,
};

use super::{lock, PolicyError, PolicyManager};

/// What a replayed flow is judged by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Decision {
    src: NumericIdentity,
    dst: NumericIdentity,
    /// The address outside the cluster, when a side is world or a CIDR identity.
    external: Option<IpAddr>,
    external_is_dst: bool,
    proto: u8,
    dport: u16,
}

/// A replayed flow's group in the report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    to_denied: bool,
    source: String,
    destination: String,
    port: u16,
    proto: u8,
    proposed_rule: String,
    current_rule: String,
}

/// The names of a decision's two sides, and each of its flows' time and recorded verdict
/// (allowed or not).
type Seen = (String, String, Vec<(i64, bool)>);

#[derive(Debug)]
struct Group {
    flows: u64,
    first: i64,
    last: i64,
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        PROTO_ICMP => "ICMP".into(),
        n => n.to_string(),
    }
}

fn rfc3339(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The side's name in the report: its pod, else its identity's labels.
fn side_name(
    ep: Option<&ciliate_observer::proto::flow::Endpoint>,
    id: NumericIdentity,
    ip: Option<&str>,
) -> String {
    if let Some(e) = ep.filter(|e| !e.pod_name.is_empty()) {
        return format!("{}/{}", e.namespace, e.pod_name);
    }
    if let Some(r) = ReservedIdentity::from_id(id) {
        let base = format!("reserved:{}", r.name());
        return match (r, ip) {
            (ReservedIdentity::World, Some(ip)) => format!("{base} ({ip})"),
            _ => base,
        };
    }
    match (ep, ip) {
        (Some(e), _) if !e.labels.is_empty() => e.labels.join(","),
        (_, Some(ip)) => format!("identity {id} ({ip})"),
        _ => format!("identity {id}"),
    }
}

fn decision_of(flow: &Flow) -> Option<Decision> {
    if flow.r#type != FlowType::L3L4 as i32 || flow.is_reply.as_ref().is_some_and(|r| r.value) {
        return None;
    }
    let policy_drop = flow.verdict == FlowVerdict::Dropped as i32
        && [
            u32::from(DROP_POLICY_DEFAULT_DENY),
            u32::from(DROP_POLICY_DENY),
        ]
        .contains(&flow.drop_reason);
    if flow.verdict != FlowVerdict::Forwarded as i32 && !policy_drop {
        return None;
    }
    let src = flow.source.as_ref()?.identity;
    let dst = flow.destination.as_ref()?.identity;
    if !is_endpoint_identity(src) && !is_endpoint_identity(dst) {
        return None;
    }
    let (proto, dport) = match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => (PROTO_TCP, t.destination_port),
        layer4::Protocol::Udp(u) => (PROTO_UDP, u.destination_port),
        layer4::Protocol::Sctp(s) => (PROTO_SCTP, s.destination_port),
        layer4::Protocol::IcmPv4(i) => (PROTO_ICMP, i.r#type),
        _ => return None,
    };
    let outside =
        |id: NumericIdentity| id == ReservedIdentity::World.id() || id >= MIN_CIDR_IDENTITY;
    let ip = flow.ip.as_ref();
    let (external, external_is_dst) = if outside(dst) {
        (ip.and_then(|i| i.destination.parse().ok()), true)
    } else if outside(src) {
        (ip.and_then(|i| i.source.parse().ok()), false)
    } else {
        (None, false)
    };
    Some(Decision {
        src,
        dst,
        external,
        external_is_dst,
        proto,
        dport: u16::try_from(dport).unwrap_or(0),
    })
}

/// The verdict under `r`: whether allowed, and why (the deciding side's reason).
fn judge(r: &Resolved<'_>, d: &Decision) -> (bool, String) {
    let (mut src, mut dst) = (d.src, d.dst);
    if let Some(ip) = d.external {
        let id = r.cidr_identity_of(ip);
        if d.external_is_dst {
            dst = id;
        } else {
            src = id;
        }
    }
    let v = r.explain(src, dst, d.proto, d.dport);
    let why = v
        .deciding()
        .map(|s| format!("{} of identity {}: {}", s.direction, s.endpoint, s.reason))
        .unwrap_or_else(|| "no policy applies".into());
    (v.allowed, why)
}

fn labels_of(strings: &[String]) -> Labels {
    strings
        .iter()
        .filter_map(|s| Label::parse(s, "k8s").ok())
        .collect()
}

impl PolicyManager {
    /// Replays the flows of `history` (since `since_ns`, when given) through the policies in
    /// force and through them with `docs` added (or instead of them, `replace_all`). Invalid
    /// documents: every problem, nothing replayed. `identities` are the node's endpoint
    /// identities, `endpoints` its endpoints (for named ports).
    pub fn whatif(
        &self,
        docs: &[ApplyDocument],
        replace_all: bool,
        history: Option<&Snapshot>,
        since_ns: Option<i64>,
        identities: &IdentityLabels,
        endpoints: &[ciliate_model::Endpoint],
    ) -> Result<WhatIfReport, PolicyError> {
        let loaded = load_documents(docs).map_err(PolicyError::Invalid)?;
        let mut report = WhatIfReport {
            warnings: loaded.warnings.iter().map(ToString::to_string).collect(),
            history: history.is_some(),
            ..WhatIfReport::default()
        };
        let mut current: PolicyEngine = lock(&self.engine).clone();
        let mut proposed = current.clone();
        if replace_all {
            let all: Vec<_> = proposed.policies().map(|(r, _)| r.clone()).collect();
            for r in all {
                if !loaded.policies.iter().any(|p| p.resource.policy_ref() == r) {
                    report.removed.push(r.to_string());
                }
                proposed.remove(&r);
            }
        }
        let mut errors = Vec::new();
        for p in &loaded.policies {
            let r = p.resource.policy_ref();
            if current.get(&r).is_some() {
                report.replaced.push(r.to_string());
            } else {
                report.added.push(r.to_string());
            }
            if let Err(problems) = proposed.upsert(p.resource.clone()) {
                errors.extend(problems.into_iter().map(|pr| ManifestError {
                    source: p.source.clone(),
                    index: p.index,
                    object: r.to_string(),
                    path: pr.path,
                    reason: pr.message,
                }));
            }
        }
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }

        // Every flow of the range, decisions deduplicated first (a few thousand distinct ones
        // for millions of flows), so the engines judge each once.
        let mut known = self.with_cluster_identities(identities);
        let mut decisions: HashMap<Decision, Seen> = HashMap::new();
        if let Some(snapshot) = history {
            let filters = FlowFilters::default();
            let prefilter = PodPrefilter::default();
            let scan = Scan {
                filters: &filters,
                prefilter: &prefilter,
                since_ns,
                until_ns: None,
                ring_from: u64::MAX,
            };
            let (mut from, mut to) = (i64::MAX, i64::MIN);
            snapshot.forward(&scan, 0, &mut |flow| {
                report.flows_read += 1;
                let t = ciliate_observer::history::block::time_ns(&flow).unwrap_or(0);
                from = from.min(t);
                to = to.max(t);
                let Some(d) = decision_of(&flow) else {
                    return true;
                };
                report.flows_replayed += 1;
                for ep in [&flow.source, &flow.destination].into_iter().flatten() {
                    if is_endpoint_identity(ep.identity) && !known.contains_key(&ep.identity) {
                        known.insert(ep.identity, labels_of(&ep.labels));
                        report.identities_from_flows += 1;
                    }
                }
                let recorded_allowed = flow.verdict == FlowVerdict::Forwarded as i32;
                let ip = flow.ip.as_ref();
                let e = decisions.entry(d).or_insert_with(|| {
                    (
                        side_name(
                            flow.source.as_ref(),
                            flow.source.as_ref().map_or(0, |e| e.identity),
                            ip.map(|i| i.source.as_str()),
                        ),
                        side_name(
                            flow.destination.as_ref(),
                            flow.destination.as_ref().map_or(0, |e| e.identity),
                            ip.map(|i| i.destination.as_str()),
                        ),
                        Vec::new(),
                    )
                });
                e.2.push((t, recorded_allowed));
                true
            });
            if report.flows_read > 0 {
                report.from = Some(rfc3339(from));
                report.to = Some(rfc3339(to));
            }
        }

        let named = super::named_ports_of(endpoints);
        let before = current.resolve(&known, &named);
        let after = proposed.resolve(&known, &named);
        let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
        for (d, (source, destination, seen)) in &decisions {
            let (was, why_was) = judge(&before, d);
            let (will, why_will) = judge(&after, d);
            report.flows_recorded_differently +=
                seen.iter().filter(|(_, recorded)| *recorded != was).count() as u64;
            if was == will {
                continue;
            }
            let key = GroupKey {
                to_denied: was,
                source: source.clone(),
                destination: destination.clone(),
                port: d.dport,
                proto: d.proto,
                proposed_rule: why_will,
                current_rule: why_was,
            };
            let g = groups.entry(key).or_insert(Group {
                flows: 0,
                first: i64::MAX,
                last: i64::MIN,
            });
            g.flows += seen.len() as u64;
            for (t, _) in seen {
                g.first = g.first.min(*t);
                g.last = g.last.max(*t);
            }
        }
        report.changes = groups
            .into_iter()
            .map(|(k, g)| WhatIfChange {
                change: if k.to_denied {
                    "allowed-to-denied"
                } else {
                    "denied-to-allowed"
                }
                .into(),
                source: k.source,
                destination: k.destination,
                port: k.port,
                protocol: proto_name(k.proto),
                flows: g.flows,
                proposed_rule: k.proposed_rule,
                current_rule: k.current_rule,
                first_seen: rfc3339(g.first),
                last_seen: rfc3339(g.last),
            })
            .collect();
        report.changes.sort_by(|a, b| {
            b.flows.cmp(&a.flows).then_with(|| {
                (&a.source, &a.destination, a.port).cmp(&(&b.source, &b.destination, b.port))
            })
        });
        Ok(report)
    }
}
