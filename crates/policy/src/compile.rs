//! Policies to rules: every resource is checked, field by field, and turned into flat
//! [`Rule`]s with compiled selectors, so that the engine never looks at a manifest again.
//!
//! Checking and compiling are one walk, so that what is validated is exactly what is
//! enforced. The semantics follow Cilium's translation of both kinds of policy
//! (`pkg/k8s/apis/cilium.io/utils`, `pkg/k8s/network_policy.go`):
//!
//! * a namespaced policy's subject is always limited to its namespace;
//! * a namespaced policy's peer selectors are limited to its namespace unless they name
//!   `io.kubernetes.pod.namespace` or namespace labels (`io.cilium.k8s.namespace.labels.*`)
//!   themselves, or reserved labels; a clusterwide policy's peer selectors select only pods
//!   (`io.kubernetes.pod.namespace` exists) unless they match `reserved:init`; a selector
//!   that names the namespace or namespace labels only negatively (`NotIn`, `DoesNotExist`),
//!   like a Kubernetes `namespaceSelector`, still selects only pods;
//! * an allow rule with no L3 field but with ports allows from/to everyone; a rule with
//!   neither (`{}`) allows nothing; an L3 field given as an empty list selects nothing;
//! * what cannot be enforced yet fails closed: an allow that depends on it allows nothing, a
//!   deny that depends on it applies to every peer, and a warning says so.

use std::collections::BTreeSet;

use ciliate_model::identity::{NumericIdentity, ReservedIdentity, MIN_CIDR_IDENTITY};
use ciliate_model::labels::{Label, Labels, POD_NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED};
use ciliate_model::policy::cilium::{
    self, AuthMode, CidrRule, CiliumProtocol, Entity, FqdnSelector, IcmpFamily, IcmpRule, L7Rules,
    PortDenyRule, PortProtocol, PortRule, RuleLabel, ServiceSelector,
};
use ciliate_model::policy::k8s::{K8sProtocol, NetworkPolicyPeer, NetworkPolicyPort, PolicyType};
use ciliate_model::policy::{
    CiliumNetworkPolicy, Direction, IntOrString, LabelSelector, NetworkPolicy, ObjectMeta,
    PolicyKind, PolicyRef, PolicyResource, RuleRef, RuleSection, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use ipnet::IpNet;

use crate::names::{check_dns_label, check_dns_subdomain, check_port_name};
use crate::problems::Problems;
use crate::selector::{KeyStyle, Selector, NAMESPACE_LABELS_PREFIX};

/// Most ports one `toPorts` entry may list (Cilium's limit).
const MAX_PORTS: usize = 40;
/// Most ICMP types one `icmps` entry may list (Cilium's limit).
const MAX_ICMP_FIELDS: usize = 40;

/// Whether an identity stands for addresses outside the cluster (world, CIDR identities).
pub(crate) fn is_world_like(id: NumericIdentity) -> bool {
    id == ReservedIdentity::World.id() || id >= MIN_CIDR_IDENTITY
}

/// What a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    /// Endpoints (never the host, world or CIDR identities).
    Endpoints(Selector),
    /// The node (host policies): the host identity, if its labels match.
    Nodes(Selector),
}

impl Subject {
    pub(crate) fn selects(&self, id: NumericIdentity, labels: &Labels) -> bool {
        match self {
            Self::Endpoints(sel) => {
                id != ReservedIdentity::Host.id() && !is_world_like(id) && sel.matches(labels)
            }
            Self::Nodes(sel) => id == ReservedIdentity::Host.id() && sel.matches(labels),
        }
    }
}

/// A policy's claim on its subject in one direction: with `default_deny`, whatever no rule
/// allows is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Selection {
    pub subject: Subject,
    pub direction: Direction,
    pub default_deny: bool,
}

/// Who a rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Everyone, inside and outside the cluster (identity 0 in the map).
    All,
    /// Identities whose labels match.
    Endpoints(Selector),
    /// An entity.
    Entity(Entity),
    /// CIDR identities inside `net` and outside every `except` (and world for `/0`).
    Cidr { net: IpNet, except: Vec<IpNet> },
}

/// Which traffic of a peer a rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortMatch {
    /// Every protocol and port.
    AnyProto,
    /// One protocol, ports `lo..=hi` (ICMP: types).
    Range { proto: u8, lo: u16, hi: u16 },
    /// A named port, of one of these protocols.
    Named { protos: Vec<u8>, name: String },
}

impl PortMatch {
    fn range(proto: u8, lo: u16, hi: u16) -> Self {
        Self::Range { proto, lo, hi }
    }
}

/// One rule of one policy, compiled.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub origin: RuleRef,
    pub subject: Subject,
    pub direction: Direction,
    pub deny: bool,
    /// Empty: the rule selects no peer.
    pub peers: Vec<Peer>,
    /// `fromRequires`/`toRequires`: they narrow the endpoint selectors of every allow rule of
    /// the subject in this direction, this one's and other policies' alike.
    pub requirements: Vec<Selector>,
    /// Empty: the rule matches no traffic.
    pub ports: Vec<PortMatch>,
}

/// A checked and compiled policy.
#[derive(Clone, Debug)]
pub(crate) struct CompiledPolicy {
    pub policy: PolicyRef,
    pub rules: Vec<Rule>,
    pub selections: Vec<Selection>,
}

impl CompiledPolicy {
    /// Every prefix the policy names (with `except` prefixes), for CIDR identities.
    pub(crate) fn cidr_prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.rules
            .iter()
            .flat_map(|r| r.peers.iter())
            .flat_map(|p| match p {
                Peer::Cidr { net, except } => std::iter::once(*net).chain(except.clone()).collect(),
                _ => Vec::new(),
            })
    }
}

/// Checks a policy as the API server and Cilium's agent would, without compiling it into an
/// engine: errors make it invalid; warnings say what will not be enforced as written.
pub fn check(resource: &PolicyResource) -> Problems {
    compile(resource).1
}

/// Checks and compiles; `None` when there are errors.
pub(crate) fn compile(resource: &PolicyResource) -> (Option<CompiledPolicy>, Problems) {
    let policy = resource.policy_ref();
    let mut c = Compiler {
        policy: &policy,
        problems: Problems::default(),
        rules: Vec::new(),
        selections: Vec::new(),
    };
    match resource {
        PolicyResource::NetworkPolicy(np) => c.network_policy(np),
        PolicyResource::Cilium(cnp) => c.cilium_policy(cnp),
    }
    let Compiler {
        problems,
        rules,
        selections,
        ..
    } = c;
    if problems.errors.is_empty() {
        let compiled = CompiledPolicy {
            policy,
            rules,
            selections,
        };
        (Some(compiled), problems)
    } else {
        (None, problems)
    }
}

struct Compiler<'a> {
    policy: &'a PolicyRef,
    problems: Problems,
    rules: Vec<Rule>,
    selections: Vec<Selection>,
}

/// The L3 fields of one Cilium rule, whichever direction and verdict.
#[derive(Default)]
struct L3<'a> {
    endpoints: Option<&'a [LabelSelector]>,
    requires: Option<&'a [LabelSelector]>,
    cidr: Option<&'a [String]>,
    cidr_set: Option<&'a [CidrRule]>,
    entities: Option<&'a [Entity]>,
    groups: Option<&'a [serde_json::Value]>,
    nodes: Option<&'a [LabelSelector]>,
    services: Option<&'a [ServiceSelector]>,
    fqdns: Option<&'a [FqdnSelector]>,
}

/// The L4 fields of one Cilium rule.
enum L4Ports<'a> {
    Allow(&'a [PortRule]),
    Deny(&'a [PortDenyRule]),
}

/// Where a Cilium rule sits and what it may do.
struct RuleCtx<'a> {
    path: String,
    section: RuleSection,
    spec: Option<usize>,
    index: usize,
    subject: &'a Subject,
    /// The policy's namespace; `None` for clusterwide.
    namespace: Option<&'a str>,
    /// Whether the subject selector names `reserved:init`.
    matches_init: bool,
}

impl RuleCtx<'_> {
    fn deny(&self) -> bool {
        self.section.is_deny()
    }
    fn ingress(&self) -> bool {
        matches!(
            self.section,
            RuleSection::Ingress | RuleSection::IngressDeny
        )
    }
    fn word(&self) -> &'static str {
        if self.ingress() {
            "from"
        } else {
            "to"
        }
    }
}

impl Compiler<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.error(path, message);
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.warn(path, message);
    }

    fn metadata(&mut self, meta: &ObjectMeta, namespaced: bool) {
        match meta.name.as_deref() {
            None | Some("") => self.error("metadata.name", "a name is required"),
            Some(name) => {
                if let Err(e) = check_dns_subdomain(name) {
                    self.error("metadata.name", e);
                }
            }
        }
        match meta.namespace.as_deref() {
            Some(ns) if !ns.is_empty() && !namespaced => self.warn(
                "metadata.namespace",
                format!(
                    "ignored: a {} is cluster-scoped and applies in every namespace",
                    PolicyKind::CiliumClusterwideNetworkPolicy
                ),
            ),
            Some(ns) if !ns.is_empty() => {
                if let Err(e) = check_dns_label(ns) {
                    self.error("metadata.namespace", e);
                }
            }
            _ => {}
        }
    }

    fn api_version(&mut self, got: &str, kind: PolicyKind) {
        if got != kind.api_version() {
            self.error(
                "apiVersion",
                format!(
                    "{got:?} is not served for {kind} (want {})",
                    kind.api_version()
                ),
            );
        }
    }

    // ---- Kubernetes NetworkPolicy ------------------------------------------------------------

    fn network_policy(&mut self, np: &NetworkPolicy) {
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

    #[allow(clippy::too_many_arguments)]
    fn push_rule(
        &mut self,
        section: RuleSection,
        spec: Option<usize>,
        index: usize,
        subject: &Subject,
        peers: Vec<Peer>,
        requirements: Vec<Selector>,
        ports: Vec<PortMatch>,
    ) {
        let direction = match section {
            RuleSection::Ingress | RuleSection::IngressDeny => Direction::Ingress,
            RuleSection::Egress | RuleSection::EgressDeny => Direction::Egress,
        };
        self.rules.push(Rule {
            origin: RuleRef {
                policy: self.policy.clone(),
                spec,
                section,
                index,
            },
            subject: subject.clone(),
            direction,
            deny: section.is_deny(),
            peers,
            requirements,
            ports,
        });
    }

    /// `from`/`to` of a NetworkPolicy rule; absent or empty is everyone.
    fn k8s_peers(
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
    fn k8s_ports(&mut self, ports: Option<&[NetworkPolicyPort]>, path: &str) -> Vec<PortMatch> {
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

    fn port_number(&mut self, n: i64, min: i64, path: &str) -> Option<u16> {
        if n < min || n > i64::from(u16::MAX) {
            self.error(path, format!("port {n} is out of range {min}-65535"));
            return None;
        }
        u16::try_from(n).ok()
    }

    fn end_port(&mut self, lo: u16, end: i64, path: &str) -> Option<u16> {
        if end > i64::from(u16::MAX) || end < 0 {
            self.error(path, format!("endPort {end} is out of range 0-65535"));
            return None;
        }
        if end < i64::from(lo) {
            self.error(
                path,
                format!("endPort {end} must be greater than or equal to port {lo}"),
            );
            return None;
        }
        u16::try_from(end).ok()
    }

    /// Parses a CIDR (or, with `bare_ip`, a single address); warns and truncates host bits.
    fn cidr(&mut self, s: &str, bare_ip: bool, path: &str) -> Option<IpNet> {
        let net = match s.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match s.parse::<std::net::IpAddr>() {
                Ok(ip) if bare_ip => IpNet::from(ip),
                Ok(_) => {
                    self.error(
                        path,
                        format!("{s:?} is an address, not a CIDR: write it as address/length"),
                    );
                    return None;
                }
                Err(_) => {
                    self.error(path, format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)"));
                    return None;
                }
            },
        };
        if net.trunc() != net {
            self.warn(
                path,
                format!("{s:?} has host bits set; it is taken as {}", net.trunc()),
            );
        }
        Some(net.trunc())
    }

    fn excepts(
        &mut self,
        net: IpNet,
        except: Option<&[String]>,
        strict: bool,
        path: &str,
    ) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, e) in except.into_iter().flatten().enumerate() {
            let p = format!("{path}.except[{i}]");
            let Some(x) = self.cidr(e, false, &p) else {
                continue;
            };
            let inside = net.contains(&x) && (x.prefix_len() > net.prefix_len() || !strict);
            if !inside {
                self.error(
                    &p,
                    format!(
                        "{x} is not {} {net}",
                        if strict {
                            "a strict subset of"
                        } else {
                            "inside"
                        }
                    ),
                );
                continue;
            }
            out.push(x);
        }
        out
    }

    // ---- Cilium policies ---------------------------------------------------------------------

    fn cilium_policy(&mut self, cnp: &CiliumNetworkPolicy) {
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

    fn cilium_rule(&mut self, rule: &cilium::Rule, spec: Option<usize>, namespace: Option<&str>) {
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

    fn cilium_section_rule(
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
        let mut ports = if has_ports && has_icmps {
            self.error(
                &c.path,
                "icmps may only be given without toPorts: write a separate rule for the ports",
            );
            Vec::new()
        } else if has_ports {
            match to_ports {
                Some(L4Ports::Allow(rules)) => self.allow_ports(c, rules),
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
    }

    /// The peers of a Cilium rule and its `*Requires` selectors.
    fn cilium_l3(
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
        if let Some(fqdns) = l3.fqdns.filter(|f| !f.is_empty()) {
            for (i, f) in fqdns.iter().enumerate() {
                self.fqdn(f, &format!("{}.toFQDNs[{i}]", c.path));
            }
            self.unsupported(c, &format!("{}.toFQDNs", c.path), "toFQDNs", &mut peers);
        }
        (peers, requirements)
    }

    /// Reports a peer kind that cannot be enforced yet and fails closed: an allow rule gets no
    /// peer from it, a deny rule applies to every peer.
    fn unsupported(&mut self, c: &RuleCtx<'_>, path: &str, what: &str, peers: &mut Vec<Peer>) {
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

    fn fqdn(&mut self, f: &FqdnSelector, path: &str) {
        match (&f.match_name, &f.match_pattern) {
            (Some(_), Some(_)) | (None, None) => self.error(
                path,
                "exactly one of matchName and matchPattern is required",
            ),
            (Some(s), None) | (None, Some(s)) => {
                let pattern = f.match_pattern.is_some();
                let ok = !s.is_empty()
                    && s.chars().all(|ch| {
                        ch.is_ascii_alphanumeric()
                            || matches!(ch, '-' | '.' | '_')
                            || (pattern && ch == '*')
                    });
                if !ok {
                    self.error(
                        path,
                        format!(
                            "{s:?} is not a DNS name{}",
                            if pattern { " pattern" } else { "" }
                        ),
                    );
                }
            }
        }
    }

    /// Cilium's namespace scoping of a peer selector (`getEndpointSelector`).
    fn scope_peer_selector(&self, mut sel: Selector, c: &RuleCtx<'_>, endpoints: bool) -> Selector {
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

    fn allow_ports(&mut self, c: &RuleCtx<'_>, rules: &[PortRule]) -> Vec<PortMatch> {
        let mut out = Vec::new();
        for (i, pr) in rules.iter().enumerate() {
            let p = format!("{}.toPorts[{i}]", c.path);
            let (ports, has_zero, protos) = self.port_list(pr.ports.as_deref(), &p);
            let mut closed = false;
            if let Some(l7) = &pr.rules {
                closed |= self.l7(
                    c,
                    l7,
                    &format!("{p}.rules"),
                    has_zero,
                    &protos,
                    pr.ports.as_ref().is_some_and(|v| !v.is_empty()),
                );
            }
            if let Some(names) = &pr.server_names {
                if names.iter().any(String::is_empty) {
                    self.error(
                        format!("{p}.serverNames"),
                        "empty server name is not allowed",
                    );
                }
            }
            if pr.listener.is_some() && c.ingress() {
                self.error(
                    format!("{p}.listener"),
                    "a listener is not allowed on ingress",
                );
            }
            for (field, given) in [
                ("terminatingTLS", pr.terminating_tls.is_some()),
                ("originatingTLS", pr.originating_tls.is_some()),
                ("serverNames", pr.server_names.is_some()),
                ("listener", pr.listener.is_some()),
            ] {
                if given {
                    self.warn(
                        format!("{p}.{field}"),
                        "not enforced yet: the ports of this toPorts entry stay closed until it is (fail closed)",
                    );
                    closed = true;
                }
            }
            if !closed {
                out.extend(ports);
            }
        }
        out
    }

    fn deny_ports(&mut self, c: &RuleCtx<'_>, rules: &[PortDenyRule]) -> Vec<PortMatch> {
        let mut out = Vec::new();
        for (i, pr) in rules.iter().enumerate() {
            let p = format!("{}.toPorts[{i}]", c.path);
            out.extend(self.port_list(pr.ports.as_deref(), &p).0);
        }
        out
    }

    /// The `ports` of one `toPorts` entry: the matches, whether a port is 0 (all), and the
    /// protocols named.
    fn port_list(
        &mut self,
        ports: Option<&[PortProtocol]>,
        path: &str,
    ) -> (Vec<PortMatch>, bool, Vec<CiliumProtocol>) {
        let mut out = Vec::new();
        let mut has_zero = false;
        let mut protos = Vec::new();
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            self.warn(
                format!("{path}.ports"),
                "no ports: this toPorts entry matches nothing",
            );
            return (out, false, protos);
        };
        if ports.len() > MAX_PORTS {
            self.error(
                format!("{path}.ports"),
                format!("too many ports ({}), the most is {MAX_PORTS}", ports.len()),
            );
            return (out, false, protos);
        }
        for (i, pp) in ports.iter().enumerate() {
            let p = format!("{path}.ports[{i}]");
            let proto = pp.protocol.unwrap_or(CiliumProtocol::Any);
            protos.push(proto);
            let numbers: Vec<u8> = match proto {
                CiliumProtocol::Tcp => vec![PROTO_TCP],
                CiliumProtocol::Udp => vec![PROTO_UDP],
                CiliumProtocol::Sctp => vec![PROTO_SCTP],
                CiliumProtocol::Any => vec![PROTO_TCP, PROTO_UDP, PROTO_SCTP],
            };
            let port = match &pp.port {
                None => {
                    self.error(
                        format!("{p}.port"),
                        "a port is required (\"0\" means every port)",
                    );
                    continue;
                }
                Some(IntOrString::Int(n)) => Ok(*n),
                Some(IntOrString::String(s))
                    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Ok(s.parse::<i64>().unwrap_or(i64::MAX))
                }
                Some(IntOrString::String(s)) => Err(s.to_ascii_lowercase()),
            };
            match port {
                Ok(n) => {
                    let Some(lo) = self.port_number(n, 0, &format!("{p}.port")) else {
                        continue;
                    };
                    let hi = match pp.end_port {
                        None => lo,
                        Some(_) if lo == 0 => {
                            self.error(
                                format!("{p}.endPort"),
                                "endPort needs a non-zero port (port 0 already means every port)",
                            );
                            continue;
                        }
                        Some(e) => match self.end_port(lo, e, &format!("{p}.endPort")) {
                            Some(hi) => hi,
                            None => continue,
                        },
                    };
                    if lo == 0 {
                        has_zero = true;
                        if proto == CiliumProtocol::Any {
                            out.push(PortMatch::AnyProto);
                            continue;
                        }
                        for n in numbers {
                            out.push(PortMatch::range(n, 0, u16::MAX));
                        }
                    } else {
                        for n in numbers {
                            out.push(PortMatch::range(n, lo, hi));
                        }
                    }
                }
                Err(name) => {
                    if pp.end_port.is_some() {
                        self.error(
                            format!("{p}.endPort"),
                            "endPort may only be given with a numeric port, not a named one",
                        );
                        continue;
                    }
                    if let Err(e) = check_port_name(&name) {
                        self.error(format!("{p}.port"), e);
                        continue;
                    }
                    out.push(PortMatch::Named {
                        protos: numbers,
                        name,
                    });
                }
            }
        }
        (out, has_zero, protos)
    }

    /// Checks L7 rules; returns whether the ports they guard must stay closed because the rules
    /// restrict something the datapath cannot check yet.
    fn l7(
        &mut self,
        c: &RuleCtx<'_>,
        l7: &L7Rules,
        path: &str,
        has_zero: bool,
        protos: &[CiliumProtocol],
        has_ports: bool,
    ) -> bool {
        let kinds = [
            l7.http.is_some(),
            l7.kafka.is_some(),
            l7.dns.is_some(),
            l7.l7proto.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if kinds == 0 {
            if l7.l7.is_some() {
                self.error(format!("{path}.l7"), "l7 may only be given with l7proto");
            }
            return false;
        }
        if kinds > 1 {
            self.error(path, "multiple L7 protocol rule types in one toPorts entry");
            return true;
        }
        if let Some(dns) = &l7.dns {
            if c.ingress() {
                self.error(
                    format!("{path}.dns"),
                    "DNS rules are not allowed on ingress",
                );
                return true;
            }
            if !has_ports {
                self.error(format!("{path}.dns"), "port 53 must be given for DNS rules");
            }
            for (i, f) in dns.iter().enumerate() {
                self.fqdn(f, &format!("{path}.dns[{i}]"));
            }
        } else if let Some(p) = protos.iter().find(|p| **p != CiliumProtocol::Tcp) {
            self.error(
                path,
                format!("L7 rules can only apply to TCP (not {p:?}), except DNS rules"),
            );
            return true;
        }
        if has_zero {
            self.error(path, "L7 rules can not be used when a port is 0");
            return true;
        }
        if l7.l7.is_some() && l7.l7proto.is_none() {
            self.error(format!("{path}.l7"), "l7 may only be given with l7proto");
        }
        let unrestricted = l7.http.as_ref().is_some_and(|rules| {
            rules.iter().any(|r| {
                r.path.is_none()
                    && r.method.is_none()
                    && r.host.is_none()
                    && r.headers.as_ref().is_none_or(Vec::is_empty)
                    && r.header_matches.as_ref().is_none_or(Vec::is_empty)
            })
        }) || l7
            .kafka
            .as_ref()
            .is_some_and(|rules| rules.iter().any(|r| *r == Default::default()))
            || l7.dns.as_ref().is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r.match_pattern.as_deref() == Some("*"))
            });
        if unrestricted {
            self.warn(
                path,
                "L7 rules are not enforced yet; these allow every request, so the ports are allowed at L4",
            );
            false
        } else {
            self.warn(
                path,
                "L7 rules are not enforced yet: the ports of this toPorts entry stay closed until they are (fail closed)",
            );
            true
        }
    }

    fn icmps(&mut self, c: &RuleCtx<'_>, icmps: &[IcmpRule]) -> Vec<PortMatch> {
        let mut out = Vec::new();
        for (i, rule) in icmps.iter().enumerate() {
            let p = format!("{}.icmps[{i}]", c.path);
            let fields = rule.fields.as_deref().unwrap_or_default();
            if fields.is_empty() {
                self.warn(
                    format!("{p}.fields"),
                    "no ICMP types: this entry matches nothing",
                );
            }
            if fields.len() > MAX_ICMP_FIELDS {
                self.error(
                    format!("{p}.fields"),
                    format!(
                        "too many types ({}), the most is {MAX_ICMP_FIELDS}",
                        fields.len()
                    ),
                );
                continue;
            }
            for (j, f) in fields.iter().enumerate() {
                let fp = format!("{p}.fields[{j}].type");
                let v6 = f.family == Some(IcmpFamily::IPv6);
                let ty = match &f.icmp_type {
                    IntOrString::Int(n) => u8::try_from(*n).ok(),
                    IntOrString::String(s) => {
                        s.parse::<u8>().ok().or_else(|| icmp_type_by_name(s, v6))
                    }
                };
                match ty {
                    Some(t) => out.push(PortMatch::range(
                        if v6 { PROTO_ICMPV6 } else { PROTO_ICMP },
                        u16::from(t),
                        u16::from(t),
                    )),
                    None => self.error(
                        fp,
                        format!(
                            "{} is not an {} type (0-255 or a name such as {})",
                            f.icmp_type,
                            if v6 { "ICMPv6" } else { "ICMP" },
                            if v6 {
                                "EchoRequest"
                            } else {
                                "EchoRequest or DestinationUnreachable"
                            }
                        ),
                    ),
                }
            }
        }
        out
    }
}

/// ICMP type names as Cilium accepts them.
fn icmp_type_by_name(name: &str, v6: bool) -> Option<u8> {
    const V4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    const V6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    let table = if v6 { V6 } else { V4 };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
