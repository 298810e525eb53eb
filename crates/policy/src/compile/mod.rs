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
//!
//! This module holds the compiled forms and the walk's frame (metadata, rules); the fields are
//! checked by kind in [`k8s`] (NetworkPolicy), [`cnp`] (Cilium specs, rules and sections),
//! [`peers`] (L3 selectors, entities, unsupported peers), [`cidr`], [`ports`] (L4 and L7) and
//! [`icmp`].

use std::collections::BTreeMap;

use ciliate_model::fqdn::FqdnMatcher;
use ciliate_model::identity::{NumericIdentity, ReservedIdentity, MIN_CIDR_IDENTITY};
use ciliate_model::l7::{DnsMatch, HttpMatch, KafkaMatch};
use ciliate_model::labels::Labels;
use ciliate_model::policy::cilium::{
    CidrRule, Entity, FqdnSelector, PortDenyRule, PortRule, ServiceSelector,
};
use ciliate_model::policy::{
    Direction, LabelSelector, ObjectMeta, PolicyKind, PolicyRef, PolicyResource, RuleRef,
    RuleSection,
};
use ipnet::IpNet;

use crate::names::{check_dns_label, check_dns_subdomain};
use crate::problems::Problems;
use crate::selector::Selector;

mod cidr;
mod cnp;
mod icmp;
mod k8s;
mod peers;
mod ports;

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
    /// `toFQDNs`: the CIDR identities of the addresses the node's FQDN cache holds for the
    /// names this matches (none until a DNS answer taught one).
    Fqdn(FqdnMatcher),
}

/// The L7 rules of one port of a rule: the traffic they allow goes through the node's proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortL7 {
    /// `rules.http`: a TCP port, parsed as HTTP.
    Http(Vec<HttpMatch>),
    /// `rules.dns`: a UDP or TCP port (egress), parsed as DNS.
    Dns(Vec<DnsMatch>),
    /// `rules.kafka`: a TCP port, parsed as Kafka; roles and API key names expanded.
    Kafka(Vec<KafkaMatch>),
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
    /// L7 rules of some of `ports` (by index; each such port is one port or a named one):
    /// the traffic they allow goes through the node's proxy, which allows only the requests
    /// these match.
    pub l7: BTreeMap<usize, PortL7>,
}

/// A checked and compiled policy.
#[derive(Clone, Debug)]
pub(crate) struct CompiledPolicy {
    pub policy: PolicyRef,
    pub rules: Vec<Rule>,
    pub selections: Vec<Selection>,
}

impl CompiledPolicy {
    /// The `toFQDNs` selectors of the policy's rules.
    pub(crate) fn fqdn_matchers(&self) -> impl Iterator<Item = &FqdnMatcher> + '_ {
        self.rules
            .iter()
            .flat_map(|r| r.peers.iter())
            .filter_map(|p| match p {
                Peer::Fqdn(m) => Some(m),
                _ => None,
            })
    }

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
            l7: BTreeMap::new(),
        });
    }
}
