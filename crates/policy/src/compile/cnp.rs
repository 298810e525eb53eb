//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy: specs, rules and their sections
//! (ingress, egress and their deny forms), down to the L3 and L4 fields.

use std::collections::BTreeMap;

use ciliate_model::labels::{Label, POD_NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED};
use ciliate_model::policy::cilium::{self, AuthMode, IcmpRule, RuleLabel};
use ciliate_model::policy::{CiliumNetworkPolicy, Direction, PolicyKind, RuleSection};

use super::{Compiler, L4Ports, PortMatch, RuleCtx, Selection, Subject, L3};
use crate::selector::{KeyStyle, Selector};

impl Compiler<'_> {
    pub(super) fn cilium_policy(&mut self, cnp: &CiliumNetworkPolicy) {
        let Some(kind) =
            PolicyKind::from_kind(&cnp.kind).filter(|k| *k != PolicyKind::NetworkPolicy)
        else {
            self.error(
                "kind",
                format!(
                    "{:?} is not a Cilium policy kind (want CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy)",
                    cnp.kind
                ),
            );
            return;
        };
        self.api_version(&cnp.api_version, kind);
        self.metadata(&cnp.metadata, kind.is_namespaced());
        let namespace = self.policy.namespace.clone();
        let mut any = false;
        if let Some(rule) = &cnp.spec {
            any = true;
            self.cilium_rule(rule, None, namespace.as_deref());
        }
        for (i, rule) in cnp.specs.iter().flatten().enumerate() {
            any = true;
            self.cilium_rule(rule, Some(i), namespace.as_deref());
        }
        if !any {
            self.error("spec", "a Cilium policy needs spec or a non-empty specs");
        }
    }

    pub(super) fn cilium_rule(
        &mut self,
        rule: &cilium::Rule,
        spec: Option<usize>,
        namespace: Option<&str>,
    ) {
        let base = match spec {
            None => "spec".to_owned(),
            Some(i) => format!("specs[{i}]"),
        };
        let subject = match (&rule.endpoint_selector, &rule.node_selector) {
            (None, None) => {
                self.error(&base, "a rule needs endpointSelector or nodeSelector");
                return;
            }
            (Some(_), Some(_)) => {
                self.error(
                    &base,
                    "a rule may not have both endpointSelector and nodeSelector",
                );
                return;
            }
            (Some(es), None) => {
                let path = format!("{base}.endpointSelector");
                let mut sel = Selector::compile(es, KeyStyle::Cilium, &path, &mut self.problems);
                if let Some(ns) = namespace {
                    let named = sel.remove_matches(Some(SOURCE_K8S), POD_NAMESPACE_LABEL);
                    if named.iter().any(|n| n != ns) {
                        self.warn(
                            format!("{path}.matchLabels"),
                            format!(
                                "the namespace {named:?} is ignored: a CiliumNetworkPolicy applies only in its own namespace ({ns})"
                            ),
                        );
                    }
                    sel.add_match(Some(SOURCE_K8S), POD_NAMESPACE_LABEL, ns);
                }
                Subject::Endpoints(sel)
            }
            (None, Some(nsel)) => {
                let path = format!("{base}.nodeSelector");
                if namespace.is_some() {
                    self.error(
                        &path,
                        "host policies (nodeSelector) are only valid in a CiliumClusterwideNetworkPolicy",
                    );
                    return;
                }
                self.warn(
                    &path,
                    "host policies are computed for the host identity but not enforced by the datapath yet",
                );
                Subject::Nodes(Selector::compile(
                    nsel,
                    KeyStyle::Cilium,
                    &path,
                    &mut self.problems,
                ))
            }
        };
        let matches_init = match &subject {
            Subject::Endpoints(s) => s.has_key(Some(SOURCE_RESERVED), "init"),
            Subject::Nodes(_) => false,
        };

        fn n<T>(v: &Option<Vec<T>>) -> usize {
            v.as_ref().map_or(0, Vec::len)
        }
        let (n_in, n_in_deny) = (n(&rule.ingress), n(&rule.ingress_deny));
        let (n_eg, n_eg_deny) = (n(&rule.egress), n(&rule.egress_deny));
        if n_in + n_in_deny + n_eg + n_eg_deny == 0 {
            self.error(
                &base,
                "a rule needs at least one of ingress, ingressDeny, egress, egressDeny (to deny all ingress, write `ingress: [{}]`)",
            );
        }
        let edd = rule.enable_default_deny.clone().unwrap_or_default();
        for (rules, explicit, direction, name) in [
            (n_in + n_in_deny, edd.ingress, Direction::Ingress, "ingress"),
            (n_eg + n_eg_deny, edd.egress, Direction::Egress, "egress"),
        ] {
            if rules > 0 {
                self.selections.push(Selection {
                    subject: subject.clone(),
                    direction,
                    default_deny: explicit.unwrap_or(true),
                });
            } else if explicit == Some(true) {
                self.warn(
                    format!("{base}.enableDefaultDeny.{name}"),
                    format!(
                        "has no effect without {name} or {name}Deny rules; to deny all {name}, write `{name}: [{{}}]`"
                    ),
                );
            }
        }
        if rule.log.is_some() {
            self.warn(
                format!("{base}.log"),
                "not supported yet: verdicts are not tagged with it",
            );
        }
        for (i, l) in rule.labels.iter().flatten().enumerate() {
            let p = format!("{base}.labels[{i}]");
            match l {
                RuleLabel::Text(t) => {
                    if let Err(e) = Label::parse(t, "unspec") {
                        self.error(p, e.to_string());
                    }
                }
                RuleLabel::Structured { key, .. } if key.is_empty() => {
                    self.error(format!("{p}.key"), "must not be empty")
                }
                RuleLabel::Structured { .. } => {}
            }
        }

        let ctx = |section, index, path: String| RuleCtx {
            path,
            section,
            spec,
            index,
            subject: &subject,
            namespace,
            matches_init,
        };
        for (i, r) in rule.ingress.iter().flatten().enumerate() {
            let c = ctx(RuleSection::Ingress, i, format!("{base}.ingress[{i}]"));
            let l3 = L3 {
                endpoints: r.from_endpoints.as_deref(),
                requires: r.from_requires.as_deref(),
                cidr: r.from_cidr.as_deref(),
                cidr_set: r.from_cidr_set.as_deref(),
                entities: r.from_entities.as_deref(),
                groups: r.from_groups.as_deref(),
                nodes: r.from_nodes.as_deref(),
                ..L3::default()
            };
            let auth = r.authentication.as_ref().map(|a| a.mode);
            self.cilium_section_rule(
                &c,
                &l3,
                r.to_ports.as_deref().map(L4Ports::Allow),
                r.icmps.as_deref(),
                auth,
            );
        }
        for (i, r) in rule.ingress_deny.iter().flatten().enumerate() {
            let c = ctx(
                RuleSection::IngressDeny,
                i,
                format!("{base}.ingressDeny[{i}]"),
            );
            let l3 = L3 {
                endpoints: r.from_endpoints.as_deref(),
                requires: r.from_requires.as_deref(),
                cidr: r.from_cidr.as_deref(),
                cidr_set: r.from_cidr_set.as_deref(),
                entities: r.from_entities.as_deref(),
                groups: r.from_groups.as_deref(),
                nodes: r.from_nodes.as_deref(),
                ..L3::default()
            };
            self.cilium_section_rule(
                &c,
                &l3,
                r.to_ports.as_deref().map(L4Ports::Deny),
                r.icmps.as_deref(),
                None,
            );
        }
        for (i, r) in rule.egress.iter().flatten().enumerate() {
            let c = ctx(RuleSection::Egress, i, format!("{base}.egress[{i}]"));
            let l3 = L3 {
                endpoints: r.to_endpoints.as_deref(),
                requires: r.to_requires.as_deref(),
                cidr: r.to_cidr.as_deref(),
                cidr_set: r.to_cidr_set.as_deref(),
                entities: r.to_entities.as_deref(),
                groups: r.to_groups.as_deref(),
                nodes: r.to_nodes.as_deref(),
                services: r.to_services.as_deref(),
                fqdns: r.to_fqdns.as_deref(),
            };
            let auth = r.authentication.as_ref().map(|a| a.mode);
            self.cilium_section_rule(
                &c,
                &l3,
                r.to_ports.as_deref().map(L4Ports::Allow),
                r.icmps.as_deref(),
                auth,
            );
        }
        for (i, r) in rule.egress_deny.iter().flatten().enumerate() {
            let c = ctx(
                RuleSection::EgressDeny,
                i,
                format!("{base}.egressDeny[{i}]"),
            );
            let l3 = L3 {
                endpoints: r.to_endpoints.as_deref(),
                requires: r.to_requires.as_deref(),
                cidr: r.to_cidr.as_deref(),
                cidr_set: r.to_cidr_set.as_deref(),
                entities: r.to_entities.as_deref(),
                groups: r.to_groups.as_deref(),
                nodes: r.to_nodes.as_deref(),
                services: r.to_services.as_deref(),
                fqdns: None,
            };
            self.cilium_section_rule(
                &c,
                &l3,
                r.to_ports.as_deref().map(L4Ports::Deny),
                r.icmps.as_deref(),
                None,
            );
        }
    }

    pub(super) fn cilium_section_rule(
        &mut self,
        c: &RuleCtx<'_>,
        l3: &L3<'_>,
        to_ports: Option<L4Ports<'_>>,
        icmps: Option<&[IcmpRule]>,
        auth: Option<AuthMode>,
    ) {
        let has_ports = match &to_ports {
            Some(L4Ports::Allow(p)) => !p.is_empty(),
            Some(L4Ports::Deny(p)) => !p.is_empty(),
            None => false,
        };
        let has_icmps = icmps.is_some_and(|i| !i.is_empty());
        let (peers, requirements) = self.cilium_l3(c, l3, has_ports || has_icmps);
        let mut l7 = BTreeMap::new();
        let mut ports = if has_ports && has_icmps {
            self.error(
                &c.path,
                "icmps may only be given without toPorts: write a separate rule for the ports",
            );
            Vec::new()
        } else if has_ports {
            match to_ports {
                Some(L4Ports::Allow(rules)) => {
                    let (ports, of) = self.allow_ports(c, rules);
                    l7 = of;
                    ports
                }
                Some(L4Ports::Deny(rules)) => self.deny_ports(c, rules),
                None => Vec::new(),
            }
        } else if has_icmps {
            self.icmps(c, icmps.unwrap_or_default())
        } else {
            vec![PortMatch::AnyProto]
        };
        match auth {
            Some(AuthMode::Required) | Some(AuthMode::TestAlwaysFail) => {
                self.warn(
                    format!("{}.authentication", c.path),
                    "mutual authentication is not enforced yet: this rule allows nothing until it is (fail closed)",
                );
                ports.clear();
                l7.clear();
            }
            Some(AuthMode::Disabled) | None => {}
        }
        self.push_rule(
            c.section,
            c.spec,
            c.index,
            c.subject,
            peers,
            requirements,
            ports,
        );
        if let Some(rule) = self.rules.last_mut() {
            rule.l7 = l7;
        }
    }
}
