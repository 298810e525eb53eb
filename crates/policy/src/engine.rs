//! The policy engine: policies in, per-endpoint policy entries, CIDR identities and verdicts
//! out.
//!
//! [`PolicyEngine`] holds the policies (checked and compiled on the way in, so a bad one never
//! replaces a good one) and the CIDR identity allocation. [`PolicyEngine::resolve`] takes the
//! identities that exist now and gives a [`Resolved`] view that computes, for any endpoint
//! identity, its [`EndpointPolicy`] and explains any flow. Endpoints are computed one at a
//! time and independently, so an agent recomputes only those a change can touch; selector
//! matches are cached within one `Resolved`.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::rc::Rc;

use ciliate_model::bpf_policy::{self, port_range_prefixes};
use ciliate_model::fqdn::FqdnMatcher;
use ciliate_model::identity::{
    Identity, NumericIdentity, ReservedIdentity, MIN_CIDR_IDENTITY, MIN_CLUSTER_IDENTITY,
};
use ciliate_model::l7::{L7Redirect, ProxyPorts};
use ciliate_model::labels::Labels;
use ciliate_model::policy::cilium::Entity;
use ciliate_model::policy::entries::Lookup;
use ciliate_model::policy::entries::{DirectionPolicy, POLICY_MAP_MAX_ENTRIES};
use ciliate_model::policy::SelectorOperator;
use ciliate_model::policy::{
    Direction, EndpointPolicy, EntrySource, IpcacheEntry, PolicyEntry, PolicyKey, PolicyRef,
    PolicyResource, RuleRef, PROTO_ANY, PROTO_TCP,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cidr::{cidr_labels, CidrIdentities};
use crate::compile::{compile, is_world_like, CompiledPolicy, Peer, PortL7, PortMatch, Rule};
use crate::explain::{DirectionVerdict, Reason, Verdict};
use crate::l7::{allowing_rules, peer_rules_apply, HttpRequestView, L7Explanation};
use crate::problems::Problem;
use crate::selector::{Selector, NAMESPACE_LABELS_PREFIX};

/// Node-wide settings of the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Let the local node (identity 1) reach its endpoints whatever their ingress policy
    /// allows (deny rules still win), as Cilium does by default, so that kubelet probes work.
    pub allow_localhost: bool,
    /// The node proxy's listeners, which entries of ports with HTTP rules carry.
    #[serde(default)]
    pub proxy_ports: ProxyPorts,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allow_localhost: true,
            proxy_ports: ProxyPorts::default(),
        }
    }
}

/// The labels of every identity that exists, by number: the endpoints' (cluster-local, from
/// 256) and, when known, remote ones. Reserved identities need not be listed (they always
/// exist; a listed one's labels, e.g. node labels on `reserved:host`, replace the default).
/// CIDR identities (from 1<<24) are the engine's own: do not list them.
pub type IdentityLabels = BTreeMap<NumericIdentity, Labels>;

/// Named ports declared by endpoints (`containerPort` names), by the endpoints' identity.
///
/// On ingress a named port is looked up among the destination endpoint's ports; on egress
/// among the destination's, or, for a rule that applies to every destination, among all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPorts {
    by_identity: BTreeMap<NumericIdentity, BTreeMap<String, BTreeSet<(u8, u16)>>>,
}

impl NamedPorts {
    /// None declared.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that endpoints of `identity` serve `name` on `proto`/`port`.
    pub fn insert(&mut self, identity: NumericIdentity, name: &str, proto: u8, port: u16) {
        self.by_identity
            .entry(identity)
            .or_default()
            .entry(name.to_ascii_lowercase())
            .or_default()
            .insert((proto, port));
    }

    fn of(&self, identity: NumericIdentity, name: &str) -> BTreeSet<(u8, u16)> {
        self.by_identity
            .get(&identity)
            .and_then(|m| m.get(name))
            .cloned()
            .unwrap_or_default()
    }

    fn anywhere(&self, name: &str) -> BTreeSet<(u8, u16)> {
        self.by_identity
            .values()
            .filter_map(|m| m.get(name))
            .flatten()
            .copied()
            .collect()
    }
}

#[derive(Clone)]
struct Stored {
    resource: PolicyResource,
    compiled: CompiledPolicy,
    warnings: Vec<Problem>,
}

/// The policies in force and the CIDR identities they need. Cloning it gives a copy to change
/// and swap in whole (a batch that must apply all or nothing).
#[derive(Clone)]
pub struct PolicyEngine {
    config: Config,
    policies: BTreeMap<PolicyRef, Stored>,
    cidr: CidrIdentities,
    /// Numbers for rules, carried in map entries and verdict events: a hash of the rule's
    /// name (policy kind, namespace, name, rule path; see [`stable_rule_number`]), so that
    /// the same rule gets the same number in every engine, before and after an agent restart,
    /// and events already in flight keep naming the right rule.
    rule_ids: BTreeMap<RuleRef, u32>,
    rules_by_id: BTreeMap<u32, RuleRef>,
    /// The node's FQDN cache as policy sees it: every name a DNS answer taught, with its
    /// addresses (all endpoints' together, as Cilium's selectors see them).
    fqdn: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// What the CIDR allocation must catch up with at the next [`PolicyEngine::resolve`].
    cidr_sync: CidrSync,
}

/// How the CIDR allocation follows the policies and the FQDN view: in whole after a policy
/// change (rare), by address after a learned name (each DNS answer), so that learning one
/// address costs the same with 10 or 10,000 learned before it.
#[derive(Clone, Debug)]
struct CidrSync {
    /// Recompute everything: policies, or the FQDN view as a whole, changed.
    full: bool,
    /// The prefixes the policies name, as of the last whole computation.
    policy_prefixes: BTreeSet<IpNet>,
    /// Per address, how many names some `toFQDNs` selects hold it.
    fqdn_refs: HashMap<Ipv4Addr, u32>,
    /// Addresses whose count changed since the allocation last caught up.
    pending: BTreeSet<Ipv4Addr>,
}

impl Default for CidrSync {
    fn default() -> Self {
        Self {
            full: true,
            policy_prefixes: BTreeSet::new(),
            fqdn_refs: HashMap::new(),
            pending: BTreeSet::new(),
        }
    }
}

impl CidrSync {
    fn count(&mut self, ip: Ipv4Addr, up: bool) {
        let n = self.fqdn_refs.entry(ip).or_default();
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.fqdn_refs.remove(&ip);
            }
        }
        self.pending.insert(ip);
    }
}

fn host_net(ip: Ipv4Addr) -> IpNet {
    IpNet::from(std::net::IpAddr::V4(ip))
}

/// The number of a rule: FNV-1a (32 bits) of its policy's kind, namespace and name and its
/// path in the manifest. Stable across processes and versions (not `std`'s hasher, whose
/// algorithm may change); 0 is left for "no rule".
pub fn stable_rule_number(r: &RuleRef) -> u32 {
    let spec = r.spec.map(|i| i.to_string()).unwrap_or_default();
    let index = r.index.to_string();
    let parts = [
        r.policy.kind.as_str(),
        r.policy.namespace.as_deref().unwrap_or_default(),
        &r.policy.name,
        &spec,
        r.section.as_str(),
        &index,
    ];
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("config", &self.config)
            .field("policies", &self.policies.keys().collect::<Vec<_>>())
            .field("cidr", &self.cidr)
            .field("rules", &self.rule_ids.len())
            .field("fqdn_names", &self.fqdn.len())
            .finish()
    }
}

impl Default for PolicyEngine {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl PolicyEngine {
    /// An engine with no policy.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            policies: BTreeMap::new(),
            cidr: CidrIdentities::new(),
            rule_ids: BTreeMap::new(),
            rules_by_id: BTreeMap::new(),
            fqdn: BTreeMap::new(),
            cidr_sync: CidrSync::default(),
        }
    }

    /// Sets the addresses of one name (normalized: lower-case, trailing dot) as the FQDN
    /// cache holds them; none forgets the name. Returns whether anything changed.
    pub fn set_fqdn_name(&mut self, name: &str, ips: BTreeSet<Ipv4Addr>) -> bool {
        if self
            .fqdn
            .get(name)
            .map_or(ips.is_empty(), |old| *old == ips)
        {
            return false;
        }
        let old = if ips.is_empty() {
            self.fqdn.remove(name)
        } else {
            self.fqdn.insert(name.to_owned(), ips.clone())
        };
        if !self.cidr_sync.full && self.fqdn_selected(name) {
            for ip in old.iter().flatten() {
                self.cidr_sync.count(*ip, false);
            }
            for ip in &ips {
                self.cidr_sync.count(*ip, true);
            }
        }
        true
    }

    /// Replaces the whole FQDN view (a restart restoring the cache, a cleaned cache).
    pub fn set_fqdn_names(&mut self, names: BTreeMap<String, BTreeSet<Ipv4Addr>>) {
        self.fqdn = names;
        self.fqdn.retain(|_, ips| !ips.is_empty());
        self.cidr_sync.full = true;
    }

    /// The addresses the FQDN view holds for `name` (normalized).
    pub fn fqdn_ips(&self, name: &str) -> Option<&BTreeSet<Ipv4Addr>> {
        self.fqdn.get(name)
    }

    /// Every name of the FQDN view with its addresses.
    pub fn fqdn_names(&self) -> &BTreeMap<String, BTreeSet<Ipv4Addr>> {
        &self.fqdn
    }

    /// Whether some policy's `toFQDNs` selects `name` (normalized): only then do its
    /// addresses need CIDR identities and policy entries.
    pub fn fqdn_selected(&self, name: &str) -> bool {
        self.fqdn_matchers().any(|m| m.matches(name))
    }

    fn fqdn_matchers(&self) -> impl Iterator<Item = &FqdnMatcher> + '_ {
        self.policies
            .values()
            .flat_map(|s| s.compiled.fqdn_matchers())
    }

    /// Allocates CIDR identities for the prefixes the policies name and the addresses of
    /// names some `toFQDNs` selects, releasing the others: all of them after a policy change,
    /// only the addresses whose names changed since otherwise.
    fn sync_cidr(&mut self) {
        if !self.cidr_sync.full {
            let pending = std::mem::take(&mut self.cidr_sync.pending);
            for ip in pending {
                let net = host_net(ip);
                if self.cidr_sync.fqdn_refs.contains_key(&ip)
                    || self.cidr_sync.policy_prefixes.contains(&net)
                {
                    self.cidr.insert(net);
                } else {
                    self.cidr.remove(&net);
                }
            }
            return;
        }
        let policy_prefixes: BTreeSet<IpNet> = self
            .policies
            .values()
            .flat_map(|s| s.compiled.cidr_prefixes())
            .map(|p| p.trunc())
            .collect();
        let mut refs: HashMap<Ipv4Addr, u32> = HashMap::new();
        let matchers: Vec<&FqdnMatcher> = self.fqdn_matchers().collect();
        if !matchers.is_empty() {
            for (_, ips) in self
                .fqdn
                .iter()
                .filter(|(name, _)| matchers.iter().any(|m| m.matches(name)))
            {
                for ip in ips {
                    *refs.entry(*ip).or_default() += 1;
                }
            }
        }
        let mut wanted = policy_prefixes.clone();
        wanted.extend(refs.keys().map(|ip| host_net(*ip)));
        self.cidr.sync(&wanted);
        self.cidr_sync = CidrSync {
            full: false,
            policy_prefixes,
            fqdn_refs: refs,
            pending: BTreeSet::new(),
        };
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds a policy, or replaces the one of the same kind, namespace and name. A policy with
    /// errors changes nothing and its errors are returned; otherwise its warnings are.
    pub fn upsert(&mut self, resource: PolicyResource) -> Result<Vec<Problem>, Vec<Problem>> {
        let (compiled, problems) = compile(&resource);
        let Some(compiled) = compiled else {
            return Err(problems.errors);
        };
        let warnings = problems.warnings;
        let policy = compiled.policy.clone();
        let rules: BTreeSet<RuleRef> = compiled.rules.iter().map(|r| r.origin.clone()).collect();
        self.number_rules(&policy, &rules);
        self.cidr_sync.full = true;
        self.policies.insert(
            policy,
            Stored {
                resource,
                compiled,
                warnings: warnings.clone(),
            },
        );
        Ok(warnings)
    }

    /// Removes a policy; returns it if it was there.
    pub fn remove(&mut self, policy: &PolicyRef) -> Option<PolicyResource> {
        self.number_rules(policy, &BTreeSet::new());
        self.cidr_sync.full = true;
        self.policies.remove(policy).map(|s| s.resource)
    }

    /// Gives `policy` exactly `rules`: keeps the numbers of rules it already had, numbers the
    /// new ones, forgets the others.
    fn number_rules(&mut self, policy: &PolicyRef, rules: &BTreeSet<RuleRef>) {
        let stale: Vec<RuleRef> = self
            .rule_ids
            .keys()
            .filter(|r| r.policy == *policy && !rules.contains(r))
            .cloned()
            .collect();
        for r in stale {
            if let Some(id) = self.rule_ids.remove(&r) {
                self.rules_by_id.remove(&id);
            }
        }
        for r in rules {
            if !self.rule_ids.contains_key(r) {
                // Two names with one hash (rare): the later one takes the next free number.
                let mut id = stable_rule_number(r);
                while id == 0 || self.rules_by_id.contains_key(&id) {
                    id = id.wrapping_add(1);
                }
                self.rule_ids.insert(r.clone(), id);
                self.rules_by_id.insert(id, r.clone());
            }
        }
    }

    /// The number of a rule (0 if there is no such rule), as map entries carry it.
    pub fn rule_id(&self, rule: &RuleRef) -> u32 {
        self.rule_ids.get(rule).copied().unwrap_or(0)
    }

    /// The rule with this number, for verdict events and `policy trace`.
    pub fn rule(&self, id: u32) -> Option<&RuleRef> {
        self.rules_by_id.get(&id)
    }

    /// Every numbered rule, by number: what flows name policies from.
    pub fn rules(&self) -> impl Iterator<Item = (u32, &RuleRef)> + '_ {
        self.rules_by_id.iter().map(|(id, r)| (*id, r))
    }

    /// The CIDR identities with the labels flows show for them: the prefix's `cidr:` label and
    /// `reserved:world`, and for a single address some `toFQDNs` selector reached through the
    /// FQDN cache, that selector as an `fqdn:` label (`fqdn:*.example.com`), as Cilium labels
    /// the addresses of its FQDN selectors.
    pub fn cidr_identity_labels(&self) -> Vec<(NumericIdentity, Labels)> {
        let mut out = Vec::new();
        self.each_cidr_identity_labels(|id, labels| out.push((id, labels)));
        out
    }

    /// [`PolicyEngine::cidr_identity_labels`] one identity at a time, so that a caller
    /// keeping another form (the observer keeps strings) never holds all the `Labels` at once.
    pub fn each_cidr_identity_labels(&self, mut f: impl FnMut(NumericIdentity, Labels)) {
        let by_ip = self.fqdn_selectors_by_ip();
        for (id, labels) in self.cidr.iter().map(|(id, prefix)| {
            let mut labels = cidr_labels(&prefix);
            if let IpNet::V4(net) = prefix {
                if net.prefix_len() == 32 {
                    for m in by_ip.get(&net.addr()).into_iter().flatten() {
                        labels.insert(ciliate_model::labels::Label::new("fqdn", m, ""));
                    }
                }
            }
            (id, labels)
        }) {
            f(id, labels);
        }
    }

    /// For every address the FQDN cache holds, the selectors (as written, without the
    /// trailing dot) that match one of its names: one pass over the names, each matched once
    /// against each selector, so that labelling N addresses costs O(N), not O(N) per address.
    fn fqdn_selectors_by_ip(&self) -> HashMap<Ipv4Addr, BTreeSet<&str>> {
        let matchers: Vec<(&FqdnMatcher, &str)> = self
            .fqdn_matchers()
            .map(|m| {
                let s = match m {
                    FqdnMatcher::Name(s) | FqdnMatcher::Pattern(s) => s,
                };
                (m, s.strip_suffix('.').unwrap_or(s))
            })
            .collect();
        let mut out: HashMap<Ipv4Addr, BTreeSet<&str>> = HashMap::new();
        if matchers.is_empty() {
            return out;
        }
        for (name, ips) in &self.fqdn {
            let selected: Vec<&str> = matchers
                .iter()
                .filter(|(m, _)| m.matches(name))
                .map(|(_, s)| *s)
                .collect();
            if selected.is_empty() {
                continue;
            }
            for ip in ips {
                out.entry(*ip).or_default().extend(selected.iter().copied());
            }
        }
        out
    }

    /// A policy by name.
    pub fn get(&self, policy: &PolicyRef) -> Option<&PolicyResource> {
        self.policies.get(policy).map(|s| &s.resource)
    }

    /// The warnings a policy was accepted with.
    pub fn warnings(&self, policy: &PolicyRef) -> &[Problem] {
        self.policies
            .get(policy)
            .map_or(&[][..], |s| s.warnings.as_slice())
    }

    /// Every policy, in name order.
    pub fn policies(&self) -> impl Iterator<Item = (&PolicyRef, &PolicyResource)> {
        self.policies.iter().map(|(r, s)| (r, &s.resource))
    }

    /// Restores a CIDR identity allocation saved earlier (see [`Resolved::ipcache`]), so that
    /// prefixes keep their numbers across restarts.
    pub fn restore_cidr_identities(&mut self, entries: impl IntoIterator<Item = IpcacheEntry>) {
        self.cidr = CidrIdentities::restore(entries);
        self.cidr_sync.full = true;
    }

    /// Keeps numbers the datapath already uses for prefixes the allocation lacks (the
    /// addresses of a restored FQDN cache, as the pinned ipcache has them), so that a restart
    /// does not renumber addresses under live connections. Clashing entries are skipped.
    pub fn adopt_cidr_identities(&mut self, entries: impl IntoIterator<Item = IpcacheEntry>) {
        self.cidr.adopt(entries);
        self.cidr_sync.full = true;
    }

    /// The IPv4 ipcache entries of the CIDR identities allocated now (as the last
    /// [`PolicyEngine::resolve`] left them), in the datapath's type.
    pub fn cidr_ipcache4(&self) -> Vec<bpf_policy::IpcacheEntry> {
        crate::map::to_ipcache4(&self.cidr.ipcache())
    }

    /// Allocates CIDR identities for the prefixes the policies name now (releasing those no
    /// longer named) and gives a view for computing policy against these identities.
    pub fn resolve<'a>(
        &'a mut self,
        identities: &'a IdentityLabels,
        named_ports: &'a NamedPorts,
    ) -> Resolved<'a> {
        self.sync_cidr();
        let engine: &'a PolicyEngine = self;
        // CIDR identities' labels are not built here but when a selector asks (see
        // `Resolved::labels`): with 10,000 learned FQDN addresses, building them all took 8 MB
        // and O(addresses) for every learned batch.
        let mut extra: BTreeMap<NumericIdentity, Labels> = ReservedIdentity::ALL
            .into_iter()
            .map(|r| (r.id(), r.labels()))
            .collect();
        extra.retain(|id, _| !identities.contains_key(id) && engine.cidr.prefix(*id).is_none());
        Resolved {
            engine,
            identities,
            extra,
            named_ports,
            cache: RefCell::new(HashMap::new()),
            by_peer: RefCell::new(HashMap::new()),
            index: OnceCell::new(),
        }
    }
}

/// The peers a rule selects.
enum Peers {
    /// Identity 0: everyone.
    All,
    /// These identities.
    Some(Rc<BTreeSet<NumericIdentity>>),
}

/// The rules that apply to one endpoint identity in one direction.
struct Applicable<'r> {
    allows: Vec<&'r Rule>,
    denies: Vec<&'r Rule>,
    requirements: Vec<&'r Selector>,
    default_deny: bool,
    /// Policies with rules for the endpoint here, and those of them enabling default deny.
    selected_by: BTreeSet<PolicyRef>,
    denying: BTreeSet<PolicyRef>,
}

/// What [`Resolved::endpoint_policy`] computes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointResult {
    /// The entries and per-direction state, for the datapath.
    pub policy: EndpointPolicy,
    /// What could not be computed as written (named ports no endpoint declares, a map that
    /// would overflow), for the agent to report.
    pub notes: Vec<String>,
    /// The ports whose entries send traffic to the proxy, with the rules it applies there,
    /// sorted by direction (ingress first) and port. `endpoint` and `endpoint_ip` are left 0:
    /// the identity's endpoints share them (see [`crate::l7::for_endpoint`]).
    pub redirects: Vec<L7Redirect>,
}

/// The engine's policies resolved against the identities that exist now.
pub struct Resolved<'a> {
    engine: &'a PolicyEngine,
    identities: &'a IdentityLabels,
    /// Reserved identities the caller did not list (CIDR identities' labels are made from
    /// their prefix when asked).
    extra: BTreeMap<NumericIdentity, Labels>,
    named_ports: &'a NamedPorts,
    cache: RefCell<HashMap<Selector, Rc<BTreeSet<NumericIdentity>>>>,
    by_peer: RefCell<HashMap<usize, Rc<BTreeSet<NumericIdentity>>>>,
    /// (key, value) to the identities carrying it, any source; built on first use.
    index: OnceCell<HashMap<(String, String), Vec<NumericIdentity>>>,
}

impl std::fmt::Debug for Resolved<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("identities", &self.identities.len())
            .field("extra", &self.extra.len())
            .finish()
    }
}

impl Resolved<'_> {
    /// The ipcache entries of the CIDR identities, in prefix order.
    pub fn ipcache(&self) -> Vec<IpcacheEntry> {
        self.engine.cidr.ipcache()
    }

    /// The rule with this number (see [`PolicyEngine::rule`]).
    pub fn rule(&self, id: u32) -> Option<&RuleRef> {
        self.engine.rule(id)
    }

    /// The IPv4 ipcache entries in the datapath's type.
    pub fn ipcache4(&self) -> Vec<bpf_policy::IpcacheEntry> {
        crate::map::to_ipcache4(&self.engine.cidr.ipcache())
    }

    /// The policy map contents of the endpoints with identity `subject`, in the datapath's
    /// type, with rule numbers from [`PolicyEngine::rule_id`]. (Notes are in
    /// [`Resolved::endpoint_policy`].)
    pub fn map_policy(&self, subject: NumericIdentity) -> bpf_policy::EndpointPolicy {
        crate::map::to_map_policy(&self.endpoint_policy(subject).policy, |r| {
            self.engine.rule_id(r)
        })
    }

    /// An endpoint policy computed by [`Resolved::endpoint_policy`] in the datapath's type,
    /// as [`Resolved::map_policy`] gives it (without computing it again).
    pub fn to_map(&self, result: &EndpointResult) -> bpf_policy::EndpointPolicy {
        crate::map::to_map_policy(&result.policy, |r| self.engine.rule_id(r))
    }

    /// The CIDR identities, with their labels, for the agent's identity table.
    pub fn cidr_identities(&self) -> Vec<Identity> {
        self.engine
            .cidr
            .iter()
            .map(|(id, prefix)| Identity {
                id,
                labels: cidr_labels(&prefix),
                reserved: false,
                references: 0,
            })
            .collect()
    }

    /// The identity of an address as far as policy's CIDR identities go (world when no
    /// policy names a prefix holding it).
    pub fn cidr_identity_of(&self, ip: std::net::IpAddr) -> NumericIdentity {
        self.engine.cidr.lookup(ip)
    }

    fn labels(&self, id: NumericIdentity) -> Option<Cow<'_, Labels>> {
        if let Some(l) = self.identities.get(&id) {
            return Some(Cow::Borrowed(l));
        }
        if let Some(prefix) = self.engine.cidr.prefix(id) {
            return Some(Cow::Owned(cidr_labels(&prefix)));
        }
        self.extra.get(&id).map(Cow::Borrowed)
    }

    /// The engine's CIDR identities the caller did not list.
    fn own_cidr_ids(&self) -> impl Iterator<Item = (NumericIdentity, IpNet)> + '_ {
        self.engine
            .cidr
            .iter()
            .filter(|(id, _)| !self.identities.contains_key(id))
    }

    /// Every identity's number.
    fn all_ids(&self) -> impl Iterator<Item = NumericIdentity> + '_ {
        self.identities
            .keys()
            .chain(self.extra.keys())
            .copied()
            .chain(self.own_cidr_ids().map(|(id, _)| id))
    }

    /// Every identity with its labels; CIDR identities' are made one at a time.
    fn all_identities(&self) -> impl Iterator<Item = (NumericIdentity, Cow<'_, Labels>)> {
        self.identities
            .iter()
            .chain(self.extra.iter())
            .map(|(id, l)| (*id, Cow::Borrowed(l)))
            .chain(
                self.own_cidr_ids()
                    .map(|(id, prefix)| (id, Cow::Owned(cidr_labels(&prefix)))),
            )
    }

    /// Whether an `In` requirement on `key` can hold for a CIDR identity: their labels are
    /// `cidr:<prefix>` and `reserved:world`, keys no endpoint selector names but by intent.
    fn cidr_key(key: &str) -> bool {
        key == ReservedIdentity::World.name() || key.replace('-', ":").parse::<IpNet>().is_ok()
    }

    fn selector_ids(&self, sel: &Selector) -> Rc<BTreeSet<NumericIdentity>> {
        if let Some(hit) = self.cache.borrow().get(sel) {
            return Rc::clone(hit);
        }
        // A selector with an `In` requirement can only match identities carrying one of its
        // values: look those up in the label index instead of matching every identity.
        let narrowing = sel
            .requirements()
            .find(|r| r.op == SelectorOperator::In && !r.key.starts_with(NAMESPACE_LABELS_PREFIX));
        let ids: Rc<BTreeSet<NumericIdentity>> = Rc::new(match narrowing {
            Some(req) => {
                let index = self.index.get_or_init(|| {
                    let mut m: HashMap<(String, String), Vec<NumericIdentity>> = HashMap::new();
                    // Without the CIDR identities, which `cidr_key` leaves out or adds below.
                    let listed = self.identities.iter().chain(self.extra.iter());
                    for (id, labels) in listed.map(|(id, l)| (*id, l)) {
                        for (_, key, value) in labels.entries() {
                            m.entry((key.to_owned(), value.to_owned()))
                                .or_default()
                                .push(id);
                        }
                    }
                    m
                });
                let mut ids: BTreeSet<NumericIdentity> = req
                    .values
                    .iter()
                    .filter_map(|v| index.get(&(req.key.clone(), v.clone())))
                    .flatten()
                    .copied()
                    .filter(|id| self.labels(*id).is_some_and(|l| sel.matches(&l)))
                    .collect();
                if Self::cidr_key(&req.key) {
                    ids.extend(
                        self.own_cidr_ids()
                            .filter(|(_, p)| sel.matches(&cidr_labels(p)))
                            .map(|(id, _)| id),
                    );
                }
                ids
            }
            None => self
                .all_identities()
                .filter(|(_, l)| sel.matches(l))
                .map(|(id, _)| id)
                .collect(),
        });
        self.cache.borrow_mut().insert(sel.clone(), Rc::clone(&ids));
        ids
    }

    fn entity_ids(&self, e: Entity) -> Option<BTreeSet<NumericIdentity>> {
        let one = |r: ReservedIdentity| Some(std::iter::once(r.id()).collect());
        let world = |v4: bool, v6: bool| {
            let mut s: BTreeSet<NumericIdentity> = self
                .engine
                .cidr
                .iter()
                .filter(|(_, p)| matches!(p, IpNet::V4(_)) && v4 || matches!(p, IpNet::V6(_)) && v6)
                .map(|(id, _)| id)
                .collect();
            s.extend(
                self.all_ids().filter(|id| {
                    *id >= MIN_CIDR_IDENTITY && self.engine.cidr.prefix(*id).is_none()
                }),
            );
            s.insert(ReservedIdentity::World.id());
            Some(s)
        };
        match e {
            Entity::All => None,
            Entity::World => world(true, true),
            Entity::WorldIpv4 => world(true, false),
            Entity::WorldIpv6 => world(false, true),
            Entity::Cluster => Some(
                ReservedIdentity::ALL
                    .into_iter()
                    .map(ReservedIdentity::id)
                    .chain(self.all_ids())
                    .filter(|id| !is_world_like(*id) && *id != 0)
                    .filter(|id| {
                        *id >= MIN_CLUSTER_IDENTITY || ReservedIdentity::from_id(*id).is_some()
                    })
                    .collect(),
            ),
            Entity::Host => one(ReservedIdentity::Host),
            Entity::RemoteNode => one(ReservedIdentity::RemoteNode),
            Entity::Health => one(ReservedIdentity::Health),
            Entity::Init => one(ReservedIdentity::Init),
            Entity::Unmanaged => one(ReservedIdentity::Unmanaged),
            Entity::KubeApiserver => one(ReservedIdentity::KubeApiserver),
            Entity::Ingress => one(ReservedIdentity::Ingress),
            Entity::None => Some(BTreeSet::new()),
        }
    }

    fn cidr_ids(&self, net: &IpNet, except: &[IpNet]) -> BTreeSet<NumericIdentity> {
        let mut out: BTreeSet<NumericIdentity> = self
            .engine
            .cidr
            .iter()
            .filter(|(_, p)| net.contains(p) && !except.iter().any(|e| e.contains(p)))
            .map(|(id, _)| id)
            .collect();
        if net.prefix_len() == 0 {
            out.insert(ReservedIdentity::World.id());
        }
        out
    }

    /// The identities one peer of a rule selects; `requirements` narrow endpoint selectors.
    fn peer_ids(&self, peer: &Peer, requirements: &[&Selector]) -> Peers {
        match peer {
            Peer::All => Peers::All,
            Peer::Endpoints(sel) if requirements.is_empty() => {
                // Keyed by the peer's address: stable while the engine is borrowed, and far
                // cheaper than hashing the selector for every rule of every endpoint.
                let key = peer as *const Peer as usize;
                if let Some(hit) = self.by_peer.borrow().get(&key) {
                    return Peers::Some(Rc::clone(hit));
                }
                let ids = self.selector_ids(sel);
                self.by_peer.borrow_mut().insert(key, Rc::clone(&ids));
                Peers::Some(ids)
            }
            Peer::Endpoints(sel) => {
                let sel = requirements.iter().fold(sel.clone(), |acc, r| acc.and(r));
                Peers::Some(self.selector_ids(&sel))
            }
            Peer::Entity(e) => match self.entity_ids(*e) {
                None => Peers::All,
                Some(s) => Peers::Some(Rc::new(s)),
            },
            Peer::Cidr { net, except } => Peers::Some(Rc::new(self.cidr_ids(net, except))),
            Peer::Fqdn(m) => {
                let key = peer as *const Peer as usize;
                if let Some(hit) = self.by_peer.borrow().get(&key) {
                    return Peers::Some(Rc::clone(hit));
                }
                let ids = Rc::new(self.fqdn_ids(m));
                self.by_peer.borrow_mut().insert(key, Rc::clone(&ids));
                Peers::Some(ids)
            }
        }
    }

    /// The CIDR identities of the addresses of the names `m` matches.
    fn fqdn_ids(&self, m: &FqdnMatcher) -> BTreeSet<NumericIdentity> {
        self.engine
            .fqdn
            .iter()
            .filter(|(name, _)| m.matches(name))
            .flat_map(|(_, ips)| ips.iter())
            .filter_map(|ip| {
                self.engine
                    .cidr
                    .identity(&IpNet::from(std::net::IpAddr::V4(*ip)))
            })
            .collect()
    }

    /// The addresses the FQDN view holds for `name` (normalized), for `policy trace`.
    pub fn fqdn_ips(&self, name: &str) -> Vec<Ipv4Addr> {
        self.engine
            .fqdn_ips(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether the policy of `subject` can change when the FQDN view changes `names` and the
    /// CIDR identities of `ips` come or go: a rule of it has a `toFQDNs` selector matching
    /// one of the names, or a peer that selects CIDR identities holding one of the
    /// addresses (a CIDR, the world entities). Other endpoints need not be recomputed.
    pub fn fqdn_affects(
        &self,
        subject: NumericIdentity,
        names: &BTreeSet<String>,
        ips: &BTreeSet<Ipv4Addr>,
    ) -> bool {
        let labels = self.labels(subject).unwrap_or_default();
        let labels = labels.as_ref();
        let holds = |net: &IpNet| {
            ips.iter()
                .any(|ip| net.contains(&std::net::IpAddr::V4(*ip)))
        };
        self.engine
            .policies
            .values()
            .flat_map(|s| s.compiled.rules.iter())
            .filter(|r| r.subject.selects(subject, labels))
            .flat_map(|r| r.peers.iter())
            .any(|p| match p {
                Peer::Fqdn(m) => names.iter().any(|n| m.matches(n)),
                Peer::Cidr { net, .. } => !ips.is_empty() && holds(net),
                Peer::Entity(Entity::World | Entity::WorldIpv4) => !ips.is_empty(),
                _ => false,
            })
    }

    fn applicable(&self, subject: NumericIdentity, direction: Direction) -> Applicable<'_> {
        let labels = self.labels(subject).unwrap_or_default();
        let labels = labels.as_ref();
        let mut a = Applicable {
            allows: Vec::new(),
            denies: Vec::new(),
            requirements: Vec::new(),
            default_deny: false,
            selected_by: BTreeSet::new(),
            denying: BTreeSet::new(),
        };
        for stored in self.engine.policies.values() {
            let c = &stored.compiled;
            for s in &c.selections {
                if s.direction == direction && s.subject.selects(subject, labels) {
                    a.selected_by.insert(c.policy.clone());
                    if s.default_deny {
                        a.default_deny = true;
                        a.denying.insert(c.policy.clone());
                    }
                }
            }
            let mut selected = false;
            for r in &c.rules {
                if r.direction == direction && r.subject.selects(subject, labels) {
                    selected = true;
                    a.requirements.extend(r.requirements.iter());
                    if r.deny {
                        a.denies.push(r);
                    } else {
                        a.allows.push(r);
                    }
                }
            }
            if selected && !a.selected_by.contains(&c.policy) {
                a.selected_by.insert(c.policy.clone());
            }
        }
        a
    }

    /// The (protocol, port) pairs a named port stands for.
    fn named(
        &self,
        name: &str,
        protos: &[u8],
        direction: Direction,
        subject: NumericIdentity,
        peer: Option<NumericIdentity>,
    ) -> BTreeSet<(u8, u16)> {
        let found = match (direction, peer) {
            (Direction::Ingress, _) => self.named_ports.of(subject, name),
            (Direction::Egress, Some(p)) => self.named_ports.of(p, name),
            (Direction::Egress, None) => self.named_ports.anywhere(name),
        };
        found
            .into_iter()
            .filter(|(proto, _)| protos.contains(proto))
            .collect()
    }

    /// Computes the policy of the endpoints with identity `subject`.
    pub fn endpoint_policy(&self, subject: NumericIdentity) -> EndpointResult {
        // Each triple with the HTTP rules of the port it came from, if any.
        let mut raw: Vec<(PolicyKey, bool, EntrySource, Option<&PortL7>)> = Vec::new();
        let mut notes = Vec::new();
        let mut states = Vec::new();
        for direction in Direction::ALL {
            let a = self.applicable(subject, direction);
            for rule in a.allows.iter().chain(a.denies.iter()) {
                let reqs: &[&Selector] = if rule.deny { &[] } else { &a.requirements };
                let source = EntrySource::Rule(rule.origin.clone());
                for peer in &rule.peers {
                    let peers: Vec<Option<NumericIdentity>> = match self.peer_ids(peer, reqs) {
                        Peers::All => vec![None],
                        Peers::Some(ids) => ids.iter().map(|id| Some(*id)).collect(),
                    };
                    for (pi, pm) in rule.ports.iter().enumerate() {
                        let l7 = rule.l7.get(&pi);
                        // Only named ports on egress depend on the peer.
                        let per_peer =
                            matches!(pm, PortMatch::Named { .. }) && direction == Direction::Egress;
                        let mut shared: Option<Vec<(u8, u16, u8)>> = None;
                        for p in &peers {
                            let keys = if per_peer || shared.is_none() {
                                let k = self.port_keys(pm, direction, subject, *p);
                                if let (PortMatch::Named { name, .. }, true) = (pm, k.is_empty()) {
                                    let note = format!(
                                        "{}: named port {name:?} is not declared by {}; it matches nothing",
                                        rule.origin,
                                        match (direction, p) {
                                            (Direction::Ingress, _) => format!("identity {subject}"),
                                            (Direction::Egress, Some(p)) => format!("identity {p}"),
                                            (Direction::Egress, None) => "any endpoint".to_owned(),
                                        }
                                    );
                                    if !notes.contains(&note) {
                                        notes.push(note);
                                    }
                                }
                                if !per_peer {
                                    shared = Some(k.clone());
                                }
                                k
                            } else {
                                shared.clone().unwrap_or_default()
                            };
                            for (proto, dport, port_prefix_len) in keys {
                                let key = PolicyKey {
                                    identity: p.unwrap_or(0),
                                    direction,
                                    proto,
                                    dport,
                                    port_prefix_len,
                                };
                                raw.push((key, rule.deny, source.clone(), l7));
                            }
                        }
                    }
                }
            }
            if !a.default_deny {
                raw.push((
                    PolicyKey::any(0, direction),
                    false,
                    EntrySource::NoDefaultDeny,
                    None,
                ));
            } else if direction == Direction::Ingress && self.engine.config.allow_localhost {
                raw.push((
                    PolicyKey::any(ReservedIdentity::Host.id(), direction),
                    false,
                    EntrySource::AllowLocalhost,
                    None,
                ));
            }
            states.push(DirectionPolicy {
                default_deny: a.default_deny,
                selected_by: a.selected_by.into_iter().collect(),
            });
        }
        let plan = crate::l7::plan(&raw, |r| self.engine.rule_id(r));
        notes.extend(plan.notes);
        raw.extend(plan.extra);
        let mut entries = build_entries(raw.into_iter().map(|(k, d, s, _)| (k, d, s)).collect());
        let ports = self.engine.config.proxy_ports;
        let redirects = crate::l7::finish(plan.redirects, &mut entries, &plan.keys, ports);
        if entries.len() > POLICY_MAP_MAX_ENTRIES {
            notes.push(format!(
                "{} entries exceed the policy map's {POLICY_MAP_MAX_ENTRIES}",
                entries.len()
            ));
        }
        let egress = states.pop().unwrap_or_default();
        let ingress = states.pop().unwrap_or_default();
        EndpointResult {
            policy: EndpointPolicy {
                identity: subject,
                ingress,
                egress,
                entries,
            },
            notes,
            redirects,
        }
    }

    fn port_keys(
        &self,
        pm: &PortMatch,
        direction: Direction,
        subject: NumericIdentity,
        peer: Option<NumericIdentity>,
    ) -> Vec<(u8, u16, u8)> {
        match pm {
            PortMatch::AnyProto => vec![(PROTO_ANY, 0, 0)],
            PortMatch::Range { proto, lo, hi } => port_range_prefixes(*lo, *hi)
                .into_iter()
                .map(|(port, len)| (*proto, port, len))
                .collect(),
            PortMatch::Named { protos, name } => self
                .named(name, protos, direction, subject, peer)
                .into_iter()
                .map(|(proto, port)| (proto, port, 16))
                .collect(),
        }
    }

    fn rule_matches(
        &self,
        rule: &Rule,
        reqs: &[&Selector],
        subject: NumericIdentity,
        peer: NumericIdentity,
        proto: u8,
        dport: u16,
    ) -> bool {
        rule.peers.iter().any(|p| {
            let (selected, specific) = match self.peer_ids(p, reqs) {
                Peers::All => (true, false),
                Peers::Some(ids) => (ids.contains(&peer), true),
            };
            selected
                && rule.ports.iter().any(|pm| match pm {
                    PortMatch::AnyProto => true,
                    PortMatch::Range { proto: p, lo, hi } => {
                        *p == proto && (*lo..=*hi).contains(&dport)
                    }
                    PortMatch::Named { protos, name } => self
                        .named(
                            name,
                            protos,
                            rule.direction,
                            subject,
                            specific.then_some(peer),
                        )
                        .contains(&(proto, dport)),
                })
        })
    }

    /// Explains one direction: does the policy of `endpoint` let `peer` talk to it (ingress) or
    /// it talk to `peer` (egress) on `proto`/`dport` (the ICMP type for ICMP)? Computed from the
    /// rules directly, not from the entries, so that each checks the other.
    pub fn explain_direction(
        &self,
        endpoint: NumericIdentity,
        direction: Direction,
        peer: NumericIdentity,
        proto: u8,
        dport: u16,
    ) -> DirectionVerdict {
        let a = self.applicable(endpoint, direction);
        let denied: Vec<_> = a
            .denies
            .iter()
            .filter(|r| self.rule_matches(r, &[], endpoint, peer, proto, dport))
            .map(|r| r.origin.clone())
            .collect();
        let allowed: Vec<_> = a
            .allows
            .iter()
            .filter(|r| self.rule_matches(r, &a.requirements, endpoint, peer, proto, dport))
            .map(|r| r.origin.clone())
            .collect();
        let (ok, reason) = if !denied.is_empty() {
            (false, Reason::DeniedBy { rules: denied })
        } else if !allowed.is_empty() {
            (true, Reason::AllowedBy { rules: allowed })
        } else if !a.default_deny {
            if a.selected_by.is_empty() {
                (true, Reason::NoPolicy)
            } else {
                (
                    true,
                    Reason::NoDefaultDeny {
                        policies: a.selected_by.into_iter().collect(),
                    },
                )
            }
        } else if direction == Direction::Ingress
            && peer == ReservedIdentity::Host.id()
            && self.engine.config.allow_localhost
        {
            (true, Reason::AllowLocalhost)
        } else {
            (
                false,
                Reason::DefaultDeny {
                    policies: a.denying.into_iter().collect(),
                },
            )
        };
        DirectionVerdict {
            endpoint,
            direction,
            peer,
            allowed: ok,
            reason,
        }
    }

    /// Explains the L7 side of one direction of a TCP flow: `None` when the datapath's entry
    /// for it does not send it to the proxy; otherwise the HTTP rules in force for `peer` and,
    /// given a request, the rules that allow it (none: the proxy answers 403).
    pub fn explain_l7(
        &self,
        endpoint: NumericIdentity,
        direction: Direction,
        peer: NumericIdentity,
        dport: u16,
        request: Option<&HttpRequestView<'_>>,
    ) -> Option<L7Explanation> {
        let r = self.endpoint_policy(endpoint);
        let Lookup::Allowed(entry) = r.policy.lookup(direction, peer, PROTO_TCP, dport) else {
            return None;
        };
        if entry.proxy_port == 0 {
            return None;
        }
        let egress = direction == Direction::Egress;
        let redirect = r
            .redirects
            .iter()
            .find(|x| x.egress == egress && x.proto == PROTO_TCP && x.port == dport)?;
        let rules = redirect
            .rules
            .iter()
            .filter(|p| peer_rules_apply(p, peer))
            .filter_map(|p| Some((self.engine.rule(p.rule)?.clone(), p.clone())))
            .collect();
        let allowed_by = request.map(|q| {
            allowing_rules(redirect, peer, q)
                .into_iter()
                .filter_map(|(id, i)| Some((self.engine.rule(id)?.clone(), i)))
                .collect()
        });
        Some(L7Explanation {
            proxy_port: entry.proxy_port,
            rules,
            allowed_by,
        })
    }

    /// Explains a flow from `src` to `dst` on `proto`/`dport`: the egress policy of `src` and
    /// the ingress policy of `dst`, each applied when that side is an endpoint (a cluster-local
    /// identity, or health, init or ingress).
    pub fn explain(
        &self,
        src: NumericIdentity,
        dst: NumericIdentity,
        proto: u8,
        dport: u16,
    ) -> Verdict {
        let egress = is_endpoint_identity(src)
            .then(|| self.explain_direction(src, Direction::Egress, dst, proto, dport));
        let ingress = is_endpoint_identity(dst)
            .then(|| self.explain_direction(dst, Direction::Ingress, src, proto, dport));
        let allowed =
            egress.as_ref().is_none_or(|v| v.allowed) && ingress.as_ref().is_none_or(|v| v.allowed);
        Verdict {
            allowed,
            egress,
            ingress,
        }
    }
}

/// Whether an identity can be an endpoint with a policy of its own.
pub fn is_endpoint_identity(id: NumericIdentity) -> bool {
    (MIN_CLUSTER_IDENTITY..MIN_CIDR_IDENTITY).contains(&id)
        || matches!(
            ReservedIdentity::from_id(id),
            Some(ReservedIdentity::Health | ReservedIdentity::Init | ReservedIdentity::Ingress)
        )
}

/// Turns raw (key, deny, source) triples into entries the datapath's lookup reads right:
///
/// * one entry per key, deny if any triple denies (with only the deny sources);
/// * deny entries for any peer (identity 0) copied under every peer identity that has entries
///   of its own, since a hit there ends the lookup before identity 0 is tried;
/// * allow entries inside a deny entry of the same identity dropped, since the longer prefix
///   would otherwise win.
fn build_entries(raw: Vec<(PolicyKey, bool, EntrySource)>) -> Vec<PolicyEntry> {
    #[derive(Default)]
    struct Acc {
        allow: BTreeSet<EntrySource>,
        deny: BTreeSet<EntrySource>,
    }
    let mut map: BTreeMap<PolicyKey, Acc> = BTreeMap::new();
    for (key, deny, source) in raw {
        let acc = map.entry(key).or_default();
        if deny {
            acc.deny.insert(source);
        } else {
            acc.allow.insert(source);
        }
    }
    // Wildcard denies, per direction.
    let wildcard_denies: Vec<(PolicyKey, BTreeSet<EntrySource>)> = map
        .iter()
        .filter(|(k, a)| k.identity == 0 && !a.deny.is_empty())
        .map(|(k, a)| (*k, a.deny.clone()))
        .collect();
    let peers: BTreeSet<(NumericIdentity, Direction)> = map
        .keys()
        .filter(|k| k.identity != 0)
        .map(|k| (k.identity, k.direction))
        .collect();
    for (identity, direction) in peers {
        for (wk, sources) in wildcard_denies
            .iter()
            .filter(|(k, _)| k.direction == direction)
        {
            let key = PolicyKey { identity, ..*wk };
            map.entry(key)
                .or_default()
                .deny
                .extend(sources.iter().cloned());
        }
    }
    let denies: BTreeMap<(NumericIdentity, Direction), Vec<PolicyKey>> = map
        .iter()
        .filter(|(_, a)| !a.deny.is_empty())
        .fold(BTreeMap::new(), |mut m, (k, _)| {
            m.entry((k.identity, k.direction))
                .or_insert_with(Vec::new)
                .push(*k);
            m
        });
    map.into_iter()
        .filter_map(|(key, acc)| {
            if !acc.deny.is_empty() {
                return Some(PolicyEntry {
                    key,
                    deny: true,
                    proxy_port: 0,
                    derived_from: acc.deny.into_iter().collect(),
                });
            }
            let shadowed = denies
                .get(&(key.identity, key.direction))
                .is_some_and(|ds| ds.iter().any(|d| d.contains(&key)));
            (!shadowed).then(|| PolicyEntry {
                key,
                deny: false,
                proxy_port: 0,
                derived_from: acc.allow.into_iter().collect(),
            })
        })
        .collect()
}
