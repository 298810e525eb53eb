//! Kubernetes NetworkPolicy: its peers (`podSelector`, `namespaceSelector`, `ipBlock`) and
//! ports, as Cilium translates them.

use std::collections::BTreeSet;

use ciliate_model::labels::{POD_NAMESPACE_LABEL, SOURCE_K8S};
use ciliate_model::policy::k8s::{K8sProtocol, NetworkPolicyPeer, NetworkPolicyPort, PolicyType};
use ciliate_model::policy::{
    Direction, IntOrString, NetworkPolicy, PolicyKind, RuleSection, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

use super::{Compiler, Peer, PortMatch, Selection, Subject};
use crate::names::check_port_name;
use crate::selector::{KeyStyle, Selector, NAMESPACE_LABELS_PREFIX};

impl Compiler<'_> {
    pub(super) fn network_policy(&mut self, np: &NetworkPolicy) {
        self.api_version(&np.api_version, PolicyKind::NetworkPolicy);
        self.metadata(&np.metadata, true);
        let ns = self.policy.namespace.clone().unwrap_or_default();
        let spec = &np.spec;
        let mut subject = Selector::compile(
            &spec.pod_selector,
            KeyStyle::Kubernetes { prefix: "" },
            "spec.podSelector",
            &mut self.problems,
        );
        subject.add_match(Some(SOURCE_K8S), POD_NAMESPACE_LABEL, &ns);
        let subject = Subject::Endpoints(subject);

        if let Some(types) = &spec.policy_types {
            let mut seen = BTreeSet::new();
            for (i, t) in types.iter().enumerate() {
                if !seen.insert(*t) {
                    self.error(format!("spec.policyTypes[{i}]"), format!("duplicate {t:?}"));
                }
            }
        }
        let (ingress, egress) = spec.effective_policy_types();
        for (on, rules, name, ty) in [
            (
                ingress,
                spec.ingress.as_ref().map(Vec::len),
                "ingress",
                PolicyType::Ingress,
            ),
            (
                egress,
                spec.egress.as_ref().map(Vec::len),
                "egress",
                PolicyType::Egress,
            ),
        ] {
            if !on && rules.is_some_and(|n| n > 0) {
                self.warn(
                    format!("spec.{name}"),
                    format!(
                        "ignored: spec.policyTypes does not include {ty:?}, so Kubernetes ignores these rules too; add {ty:?} to policyTypes to enforce them"
                    ),
                );
            }
        }
        for (on, direction) in [(ingress, Direction::Ingress), (egress, Direction::Egress)] {
            if on {
                self.selections.push(Selection {
                    subject: subject.clone(),
                    direction,
                    default_deny: true,
                });
            }
        }
        if ingress {
            for (i, r) in spec.ingress.iter().flatten().enumerate() {
                let path = format!("spec.ingress[{i}]");
                let peers = self.k8s_peers(r.from.as_deref(), &format!("{path}.from"), &ns);
                let ports = self.k8s_ports(r.ports.as_deref(), &format!("{path}.ports"));
                self.push_rule(
                    RuleSection::Ingress,
                    None,
                    i,
                    &subject,
                    peers,
                    vec![],
                    ports,
                );
            }
        }
        if egress {
            for (i, r) in spec.egress.iter().flatten().enumerate() {
                let path = format!("spec.egress[{i}]");
                let peers = self.k8s_peers(r.to.as_deref(), &format!("{path}.to"), &ns);
                let ports = self.k8s_ports(r.ports.as_deref(), &format!("{path}.ports"));
                self.push_rule(RuleSection::Egress, None, i, &subject, peers, vec![], ports);
            }
        }
    }

    /// `from`/`to` of a NetworkPolicy rule; absent or empty is everyone.
    pub(super) fn k8s_peers(
        &mut self,
        peers: Option<&[NetworkPolicyPeer]>,
        path: &str,
        ns: &str,
    ) -> Vec<Peer> {
        let Some(peers) = peers.filter(|p| !p.is_empty()) else {
            return vec![Peer::All];
        };
        let mut out = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
                (None, None, None) => {
                    self.error(&p, "a peer needs podSelector, namespaceSelector or ipBlock")
                }
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) => self.error(
                    &p,
                    "ipBlock may not be combined with podSelector or namespaceSelector in one peer",
                ),
                (Some(block), None, None) => {
                    let bp = format!("{p}.ipBlock");
                    if let Some(net) = self.cidr(&block.cidr, false, &format!("{bp}.cidr")) {
                        let except = self.excepts(net, block.except.as_deref(), true, &bp);
                        out.push(Peer::Cidr { net, except });
                    }
                }
                (None, pods, namespaces) => {
                    let mut sel = Selector::all();
                    if let Some(nsel) = namespaces {
                        sel = Selector::compile(
                            nsel,
                            KeyStyle::Kubernetes {
                                prefix: NAMESPACE_LABELS_PREFIX,
                            },
                            &format!("{p}.namespaceSelector"),
                            &mut self.problems,
                        );
                        if !sel.requires_pod() {
                            // A namespaceSelector selects pods of the matching namespaces: `{}`
                            // or only negative expressions (`NotIn`) must not select the node
                            // or the world, which have no namespace labels.
                            sel.add_exists(Some(SOURCE_K8S), POD_NAMESPACE_LABEL);
                        }
                    }
                    if let Some(psel) = pods {
                        let ps = Selector::compile(
                            psel,
                            KeyStyle::Kubernetes { prefix: "" },
                            &format!("{p}.podSelector"),
                            &mut self.problems,
                        );
                        sel = sel.and(&ps);
                    }
                    if namespaces.is_none() {
                        sel.add_match(Some(SOURCE_K8S), POD_NAMESPACE_LABEL, ns);
                    }
                    out.push(Peer::Endpoints(sel));
                }
            }
        }
        out
    }

    /// `ports` of a NetworkPolicy rule; absent or empty is every port of every protocol.
    pub(super) fn k8s_ports(
        &mut self,
        ports: Option<&[NetworkPolicyPort]>,
        path: &str,
    ) -> Vec<PortMatch> {
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            return vec![PortMatch::AnyProto];
        };
        let mut out = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let proto = match port.protocol.unwrap_or(K8sProtocol::Tcp) {
                K8sProtocol::Tcp => PROTO_TCP,
                K8sProtocol::Udp => PROTO_UDP,
                K8sProtocol::Sctp => PROTO_SCTP,
            };
            match (&port.port, port.end_port) {
                (None, Some(_)) => self.error(
                    format!("{p}.endPort"),
                    "endPort may only be given with a numeric port",
                ),
                (None, None) => out.push(PortMatch::range(proto, 0, u16::MAX)),
                (Some(IntOrString::Int(n)), end) => {
                    let Some(lo) = self.port_number(*n, 1, &format!("{p}.port")) else {
                        continue;
                    };
                    let hi = match end {
                        None => lo,
                        Some(e) => match self.end_port(lo, e, &format!("{p}.endPort")) {
                            Some(hi) => hi,
                            None => continue,
                        },
                    };
                    out.push(PortMatch::range(proto, lo, hi));
                }
                (Some(IntOrString::String(name)), end) => {
                    if end.is_some() {
                        self.error(
                            format!("{p}.endPort"),
                            "endPort may only be given with a numeric port, not a named one",
                        );
                    }
                    if let Err(e) = check_port_name(name) {
                        self.error(format!("{p}.port"), e);
                        continue;
                    }
                    out.push(PortMatch::Named {
                        protos: vec![proto],
                        name: name.clone(),
                    });
                }
            }
        }
        out
    }
}
