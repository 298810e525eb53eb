//! The deciding policy of a flow: Hubble's `ingress_allowed_by`, `egress_allowed_by`,
//! `ingress_denied_by` and `egress_denied_by`, from the rule number the datapath (or the L7
//! proxy) records with a verdict, named through the [`Store`]'s rule table.
//!
//! Which flows name a policy:
//! - policy verdicts: the allowing rule (`*_allowed_by`), or the explicit deny rule
//!   (`*_denied_by`, drop reason 181);
//! - drops by policy (reasons 133 and 181): the deny rule; a default deny (133) was decided
//!   by no rule, so it names none, as in Hubble;
//! - forwarded packets policy judged (the trace of an allowed packet) and L7 requests a rule
//!   allowed: the allowing rule. Hubble sets these on policy verdicts only; we add them
//!   wherever the datapath knows the rule.
//!
//! The side is the flow's traffic direction (a verdict of the endpoint's egress fills the
//! `egress_*` list).

use ciliate_model::monitor::{EventKind, EventRecord};
use ciliate_model::policy::PolicyKind;

use crate::proto::flow::{Flow, Policy, TrafficDirection};
use crate::store::Store;

/// Hubble's "Policy denied" drop reason: no rule allowed the packet (default deny).
const DROP_POLICY: u8 = 133;
/// Hubble's "Policy denied by denylist" drop reason: an explicit deny rule matched.
const DROP_POLICY_DENY: u8 = 181;

/// The label prefix of Cilium's policy labels (`k8s:io.cilium.k8s.policy.*`).
const LABEL_PREFIX: &str = "k8s:io.cilium.k8s.policy";

/// Hubble's `Policy` of a policy object, with the labels Cilium gives its rules:
/// `derived-from` (the kind), `name`, `namespace` (namespaced kinds only) and `uid` (when the
/// object has one: those from the Kubernetes API do), in Cilium's (sorted) order.
pub fn policy(
    kind: PolicyKind,
    namespace: Option<&str>,
    name: &str,
    uid: Option<&str>,
    revision: u64,
) -> Policy {
    let mut labels = vec![
        format!("{LABEL_PREFIX}.derived-from={}", kind.as_str()),
        format!("{LABEL_PREFIX}.name={name}"),
    ];
    if let Some(ns) = namespace {
        labels.push(format!("{LABEL_PREFIX}.namespace={ns}"));
    }
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        labels.push(format!("{LABEL_PREFIX}.uid={uid}"));
    }
    Policy {
        name: name.to_owned(),
        namespace: namespace.unwrap_or_default().to_owned(),
        labels,
        revision,
        kind: kind.as_str().to_owned(),
    }
}

/// Whether the event says the rule allowed (`Some(true)`) or denied (`Some(false)`) the
/// packet; `None` when the rule did not decide (no rule, or a drop for another reason).
pub(crate) fn decision(ev: &EventRecord) -> Option<bool> {
    if ev.rule == 0 {
        return None;
    }
    match ev.kind {
        EventKind::PolicyVerdict if ev.code == 0 => Some(true),
        EventKind::PolicyVerdict | EventKind::Drop
            if ev.code == DROP_POLICY_DENY || ev.code == DROP_POLICY =>
        {
            Some(false)
        }
        EventKind::PolicyVerdict | EventKind::Drop => None,
        EventKind::Trace => Some(true),
    }
}

/// Fills the flow's policy lists for a rule that allowed (or denied) it, from the store;
/// nothing when the store does not know the rule or the flow has no direction.
pub(crate) fn fill_from_store(flow: &mut Flow, rule: u32, allowed: bool, store: &dyn Store) {
    if rule == 0 {
        return;
    }
    if let Some(p) = store.policy_by_rule(rule) {
        fill(flow, allowed, p);
    }
}

/// Puts `policy`, which allowed (or denied) the flow, in the list of the flow's direction
/// (which must be set); nothing when the flow has no direction.
pub(crate) fn fill(flow: &mut Flow, allowed: bool, policy: Policy) {
    let list = match (TrafficDirection::try_from(flow.traffic_direction), allowed) {
        (Ok(TrafficDirection::Ingress), true) => &mut flow.ingress_allowed_by,
        (Ok(TrafficDirection::Egress), true) => &mut flow.egress_allowed_by,
        (Ok(TrafficDirection::Ingress), false) => &mut flow.ingress_denied_by,
        (Ok(TrafficDirection::Egress), false) => &mut flow.egress_denied_by,
        _ => return,
    };
    list.push(policy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::trace_event;
    use crate::convert::to_flow;
    use crate::Snapshot;
    use ciliate_model::monitor::MonitorEvent;

    fn web_policy() -> Policy {
        policy(
            PolicyKind::CiliumNetworkPolicy,
            Some("prod"),
            "web-allow",
            Some("1234-abcd"),
            7,
        )
    }

    fn store() -> Snapshot {
        let mut s = Snapshot::default();
        s.rules.insert(42, web_policy());
        s.rules.insert(
            43,
            policy(
                PolicyKind::CiliumClusterwideNetworkPolicy,
                None,
                "deny-world",
                None,
                7,
            ),
        );
        s
    }

    #[test]
    fn labels_are_ciliums_policy_labels_in_order() {
        let p = web_policy();
        assert_eq!(
            p.labels,
            [
                "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                "k8s:io.cilium.k8s.policy.name=web-allow",
                "k8s:io.cilium.k8s.policy.namespace=prod",
                "k8s:io.cilium.k8s.policy.uid=1234-abcd",
            ]
        );
        assert_eq!(
            (
                p.name.as_str(),
                p.namespace.as_str(),
                p.kind.as_str(),
                p.revision
            ),
            ("web-allow", "prod", "CiliumNetworkPolicy", 7)
        );
        let np = policy(PolicyKind::NetworkPolicy, Some("a"), "b", None, 1);
        assert_eq!(
            np.labels,
            [
                "k8s:io.cilium.k8s.policy.derived-from=NetworkPolicy",
                "k8s:io.cilium.k8s.policy.name=b",
                "k8s:io.cilium.k8s.policy.namespace=a",
            ]
        );
    }

    fn verdict(code: u8, egress: bool, rule: u32) -> MonitorEvent {
        let dir = if egress { "egress" } else { "ingress" };
        let what = if code == 0 { "allowed" } else { "denied" };
        MonitorEvent {
            kind: EventKind::PolicyVerdict,
            code,
            reason: format!("{dir} {what} (L3-L4)"),
            rule,
            ..trace_event()
        }
    }

    #[test]
    fn an_allowing_verdict_names_the_policy_on_its_side() {
        let s = store();
        let f = to_flow(&verdict(0, false, 42), &s, "n");
        assert_eq!(f.ingress_allowed_by, vec![web_policy()]);
        assert!(f.egress_allowed_by.is_empty() && f.ingress_denied_by.is_empty());
        let f = to_flow(&verdict(0, true, 42), &s, "n");
        assert_eq!(f.egress_allowed_by, vec![web_policy()]);
        assert!(f.ingress_allowed_by.is_empty());
    }

    #[test]
    fn an_explicit_deny_names_the_policy_in_verdict_and_drop() {
        let s = store();
        let f = to_flow(&verdict(181, true, 43), &s, "n");
        assert_eq!(f.egress_denied_by.len(), 1);
        assert_eq!(f.egress_denied_by[0].name, "deny-world");
        assert_eq!(f.egress_denied_by[0].kind, "CiliumClusterwideNetworkPolicy");
        assert_eq!(f.egress_denied_by[0].namespace, "");

        // The drop event of the same packet: the reporting endpoint (7, the source's) tells
        // the direction.
        let mut drop = verdict(181, true, 43);
        drop.kind = EventKind::Drop;
        drop.reason = "Policy denied by denylist".into();
        let mut s = s;
        s.endpoints.insert(
            drop.src.expect("src"),
            crate::EndpointInfo {
                id: 7,
                identity: 256,
                ..Default::default()
            }
            .into(),
        );
        drop.endpoint = 7;
        let f = to_flow(&drop, &s, "n");
        assert_eq!(f.egress_denied_by.len(), 1, "{f:?}");
        assert!(f.ingress_denied_by.is_empty());
    }

    #[test]
    fn default_deny_and_unknown_rules_name_nothing() {
        let s = store();
        for ev in [verdict(133, false, 0), verdict(0, false, 99)] {
            let f = to_flow(&ev, &s, "n");
            assert!(
                f.ingress_allowed_by.is_empty()
                    && f.ingress_denied_by.is_empty()
                    && f.egress_allowed_by.is_empty()
                    && f.egress_denied_by.is_empty(),
                "{f:?}"
            );
        }
        // A drop for another reason names no policy even with a rule (the proxy's protocol
        // check after an allow).
        let mut ev = verdict(180, false, 42);
        ev.kind = EventKind::Drop;
        assert!(to_flow(&ev, &s, "n").ingress_denied_by.is_empty());
    }

    #[test]
    fn the_trace_of_an_allowed_packet_names_the_allowing_policy() {
        let s = store();
        // trace_event: from-endpoint, a new connection: egress.
        let ev = MonitorEvent {
            rule: 42,
            ..trace_event()
        };
        let f = to_flow(&ev, &s, "n");
        assert_eq!(f.egress_allowed_by, vec![web_policy()]);
        let f = to_flow(&trace_event(), &s, "n");
        assert!(f.egress_allowed_by.is_empty());
    }

    #[test]
    fn an_l7_request_names_the_rule_that_allowed_it_and_a_refused_one_none() {
        use ciliate_model::l7::{HttpRecord, L7Verdict};
        let mut s = store();
        s.rules.insert(3, web_policy());
        // request(): an egress redirect's request allowed by rule 3.
        let f = crate::l7::http_to_flow(&crate::l7::tests::request(), &s, "n");
        assert_eq!(f.egress_allowed_by, vec![web_policy()]);
        let ingress = HttpRecord {
            egress: false,
            ..crate::l7::tests::request()
        };
        let f = crate::l7::http_to_flow(&ingress, &s, "n");
        assert_eq!(f.ingress_allowed_by, vec![web_policy()]);
        let refused = HttpRecord {
            verdict: L7Verdict::Dropped,
            ..crate::l7::tests::request()
        };
        let f = crate::l7::http_to_flow(&refused, &s, "n");
        assert!(f.egress_allowed_by.is_empty() && f.egress_denied_by.is_empty());
    }
}
