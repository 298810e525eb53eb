//! L3 peers of Cilium rules: endpoint selectors (and their namespace scoping), `fromRequires`,
//! CIDRs, entities, FQDNs (`toFQDNs`, egress allow rules only, as in Cilium), and the fields
//! not enforced yet (nodes, services, groups).

use ciliate_model::fqdn::FqdnMatcher;
use ciliate_model::labels::{POD_NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED};
use ciliate_model::policy::cilium::{Entity, FqdnSelector};

use super::{Compiler, Peer, RuleCtx, L3};
use crate::selector::{KeyStyle, Selector, NAMESPACE_LABELS_PREFIX};

impl Compiler<'_> {
    /// The peers of a Cilium rule and its `*Requires` selectors.
    pub(super) fn cilium_l3(
        &mut self,
        c: &RuleCtx<'_>,
        l3: &L3<'_>,
        has_l4: bool,
    ) -> (Vec<Peer>, Vec<Selector>) {
        let w = c.word();
        let members: [(String, Option<usize>); 8] = [
            (format!("{w}Endpoints"), l3.endpoints.map(<[_]>::len)),
            (format!("{w}CIDR"), l3.cidr.map(<[_]>::len)),
            (format!("{w}CIDRSet"), l3.cidr_set.map(<[_]>::len)),
            (format!("{w}Entities"), l3.entities.map(<[_]>::len)),
            (format!("{w}Groups"), l3.groups.map(<[_]>::len)),
            (format!("{w}Nodes"), l3.nodes.map(<[_]>::len)),
            ("toServices".to_owned(), l3.services.map(<[_]>::len)),
            ("toFQDNs".to_owned(), l3.fqdns.map(<[_]>::len)),
        ];
        let used: Vec<&String> = members
            .iter()
            .filter(|(_, n)| n.is_some_and(|n| n > 0))
            .map(|(name, _)| name)
            .collect();
        if used.len() > 1 {
            self.error(
                &c.path,
                format!(
                    "combining {} and {} in one rule is not supported (as in Cilium): write one rule for each",
                    used[0], used[1]
                ),
            );
        }

        let mut requirements = Vec::new();
        for (i, sel) in l3.requires.into_iter().flatten().enumerate() {
            let p = format!("{}.{w}Requires[{i}]", c.path);
            let s = Selector::compile(sel, KeyStyle::Cilium, &p, &mut self.problems);
            requirements.push(self.scope_peer_selector(s, c, false));
        }

        let any_l3 = members.iter().any(|(_, n)| n.is_some());
        if !any_l3 {
            // No L3 field: with ports, the rule is about every peer; `{}` is about none.
            return (
                if has_l4 { vec![Peer::All] } else { Vec::new() },
                requirements,
            );
        }

        let mut peers = Vec::new();
        for (i, sel) in l3.endpoints.into_iter().flatten().enumerate() {
            let p = format!("{}.{w}Endpoints[{i}]", c.path);
            let s = Selector::compile(sel, KeyStyle::Cilium, &p, &mut self.problems);
            peers.push(Peer::Endpoints(self.scope_peer_selector(s, c, true)));
        }
        for (i, s) in l3.cidr.into_iter().flatten().enumerate() {
            let p = format!("{}.{w}CIDR[{i}]", c.path);
            if let Some(net) = self.cidr(s, true, &p) {
                peers.push(Peer::Cidr {
                    net,
                    except: vec![],
                });
            }
        }
        for (i, r) in l3.cidr_set.into_iter().flatten().enumerate() {
            let p = format!("{}.{w}CIDRSet[{i}]", c.path);
            let given = [
                r.cidr.is_some(),
                r.cidr_group_ref.is_some(),
                r.cidr_group_selector.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if given != 1 {
                self.error(
                    &p,
                    "exactly one of cidr, cidrGroupRef and cidrGroupSelector is required",
                );
                continue;
            }
            if let Some(cidr) = &r.cidr {
                if let Some(net) = self.cidr(cidr, false, &format!("{p}.cidr")) {
                    let except = self.excepts(net, r.except.as_deref(), false, &p);
                    peers.push(Peer::Cidr { net, except });
                }
            } else {
                if let Some(sel) = &r.cidr_group_selector {
                    Selector::compile(
                        sel,
                        KeyStyle::Cilium,
                        &format!("{p}.cidrGroupSelector"),
                        &mut self.problems,
                    );
                }
                self.unsupported(c, &p, "CiliumCIDRGroup references", &mut peers);
            }
        }
        for e in l3.entities.into_iter().flatten() {
            if *e != Entity::None {
                peers.push(Peer::Entity(*e));
            }
        }
        if l3.groups.is_some_and(|g| !g.is_empty()) {
            self.unsupported(
                c,
                &format!("{}.{w}Groups", c.path),
                "cloud provider groups",
                &mut peers,
            );
        }
        if let Some(nodes) = l3.nodes.filter(|n| !n.is_empty()) {
            for (i, sel) in nodes.iter().enumerate() {
                let p = format!("{}.{w}Nodes[{i}]", c.path);
                Selector::compile(sel, KeyStyle::Cilium, &p, &mut self.problems);
            }
            self.unsupported(
                c,
                &format!("{}.{w}Nodes", c.path),
                "node selectors",
                &mut peers,
            );
        }
        if let Some(services) = l3.services.filter(|s| !s.is_empty()) {
            for (i, s) in services.iter().enumerate() {
                let p = format!("{}.toServices[{i}]", c.path);
                if s.k8s_service.is_some() == s.k8s_service_selector.is_some() {
                    self.error(
                        &p,
                        "exactly one of k8sService and k8sServiceSelector is required",
                    );
                }
                if let Some(sel) = &s.k8s_service_selector {
                    Selector::compile(
                        &sel.selector,
                        KeyStyle::Cilium,
                        &format!("{p}.k8sServiceSelector.selector"),
                        &mut self.problems,
                    );
                }
            }
            self.unsupported(
                c,
                &format!("{}.toServices", c.path),
                "toServices",
                &mut peers,
            );
        }
        for (i, f) in l3.fqdns.into_iter().flatten().enumerate() {
            if let Some(m) = self.fqdn(f, &format!("{}.toFQDNs[{i}]", c.path)) {
                peers.push(Peer::Fqdn(m));
            }
        }
        (peers, requirements)
    }

    /// Reports a peer kind that cannot be enforced yet and fails closed: an allow rule gets no
    /// peer from it, a deny rule applies to every peer.
    pub(super) fn unsupported(
        &mut self,
        c: &RuleCtx<'_>,
        path: &str,
        what: &str,
        peers: &mut Vec<Peer>,
    ) {
        if c.deny() {
            self.warn(
                path,
                format!("{what} are not enforced yet: this deny rule applies to every peer until they are (fail closed)"),
            );
            peers.push(Peer::All);
        } else {
            self.warn(
                path,
                format!("{what} are not enforced yet: they select no peer, so this rule allows nothing through them until they are (fail closed)"),
            );
        }
    }

    /// One `toFQDNs` selector, checked and normalized.
    pub(super) fn fqdn(&mut self, f: &FqdnSelector, path: &str) -> Option<FqdnMatcher> {
        FqdnMatcher::new(f.match_name.as_deref(), f.match_pattern.as_deref())
            .map_err(|e| self.error(path, e))
            .ok()
    }

    /// Cilium's namespace scoping of a peer selector (`getEndpointSelector`).
    pub(super) fn scope_peer_selector(
        &self,
        mut sel: Selector,
        c: &RuleCtx<'_>,
        endpoints: bool,
    ) -> Selector {
        if endpoints && sel.has_source(SOURCE_RESERVED) {
            return sel;
        }
        let names_ns = sel.has_key(Some(SOURCE_K8S), POD_NAMESPACE_LABEL)
            || sel.has_key(None, POD_NAMESPACE_LABEL);
        let names_ns_labels = sel.has_key_prefix(Some(SOURCE_K8S), NAMESPACE_LABELS_PREFIX)
            || sel.has_key_prefix(None, NAMESPACE_LABELS_PREFIX);
        match c.namespace {
            Some(ns) if !names_ns && !names_ns_labels => {
                sel.add_match(Some(SOURCE_K8S), POD_NAMESPACE_LABEL, ns);
            }
            // The selector names the namespace (or, clusterwide, names nothing of it): it
            // selects pods of any namespace it matches, never the node or the world, even when
            // it says only which namespaces it does not want (`NotIn`, `DoesNotExist`).
            _ if !c.matches_init && !sel.requires_pod() => {
                sel.add_exists(Some(SOURCE_K8S), POD_NAMESPACE_LABEL);
            }
            _ => {}
        }
        sel
    }
}
