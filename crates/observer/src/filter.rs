//! Hubble's FlowFilter semantics: within one field the values are alternatives (OR), the fields
//! set in one filter must all match (AND), a request's whitelist filters are alternatives, and
//! a flow is returned when it matches the whitelist (or there is none) and no blacklist filter.
//!
//! Filters are compiled once per request ([`FlowFilters::compile`]), so bad input (a CIDR, a
//! label selector) is refused up front with a message naming the field.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::l7::MESSAGE_TYPE_ACCESS_LOG;
use crate::proto::flow::{
    layer4, layer7, Endpoint, EventTypeFilter, Flow, FlowFilter, NetworkInterface, Service,
    TcpFlags, Verdict,
};

/// Why a filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {field} filter {value:?}: {reason}")]
pub struct FilterError {
    /// Which FlowFilter field.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, value: &str, reason: impl Into<String>) -> FilterError {
    FilterError {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A request's whitelist and blacklist, compiled.
#[derive(Debug, Default)]
pub struct FlowFilters {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FlowFilters {
    /// Compiles both lists.
    pub fn compile(
        whitelist: &[FlowFilter],
        blacklist: &[FlowFilter],
    ) -> Result<Self, FilterError> {
        Ok(Self {
            whitelist: whitelist
                .iter()
                .map(Compiled::new)
                .collect::<Result<_, _>>()?,
            blacklist: blacklist
                .iter()
                .map(Compiled::new)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether `flow` is in the whitelist (or there is none) and in no blacklist filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

/// Hubble's `k8s.ParseNamespaceName`: `namespace/name-prefix`, `name-prefix` (in namespace
/// `default`), `namespace/` (all of it) or `/name-prefix` (any namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamespacedPrefix {
    namespace: Option<String>,
    prefix: String,
}

impl NamespacedPrefix {
    fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        if s.is_empty() {
            return Err(bad(field, s, "name must not be empty"));
        }
        let mut parts = s.split('/');
        let first = parts.next().unwrap_or_default();
        let (ns, prefix) = match parts.next() {
            Some(prefix) => (first, prefix),
            None => ("default", first),
        };
        Ok(Self {
            namespace: (!ns.is_empty()).then(|| ns.to_owned()),
            prefix: prefix.to_owned(),
        })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        if name.is_empty() && namespace.is_empty() {
            return false;
        }
        self.namespace.as_deref().is_none_or(|ns| ns == namespace) && name.starts_with(&self.prefix)
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(LabelKey, String),
    NotEquals(LabelKey, String),
    In(LabelKey, Vec<String>),
    NotIn(LabelKey, Vec<String>),
    Exists(LabelKey),
    NotExists(LabelKey),
}

/// A label key with an optional source (`k8s:app`); without one it matches any source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelKey {
    source: Option<String>,
    key: String,
}

impl LabelKey {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("a requirement has no key".to_owned());
        }
        Ok(match s.split_once(':') {
            Some((src, key)) if !src.contains('/') && !src.contains('.') => Self {
                source: if src == "any" {
                    None
                } else {
                    Some(src.to_owned())
                },
                key: key.to_owned(),
            },
            _ => Self {
                source: None,
                key: s.to_owned(),
            },
        })
    }

    /// The values this key has among `labels` (`source:key=value` strings).
    fn values<'a>(&'a self, labels: &'a [String]) -> impl Iterator<Item = &'a str> + 'a {
        labels.iter().filter_map(move |l| {
            let (src, rest) = l.split_once(':').unwrap_or(("", l));
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            (key == self.key && self.source.as_deref().is_none_or(|s| s == src)).then_some(value)
        })
    }
}

/// A Kubernetes label selector in its string form: requirements separated by commas, each
/// `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` or `!key`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector(Vec<Requirement>);

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn set_values(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected a set of values in parentheses, found {s:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl Selector {
    fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err("empty requirement".to_owned());
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(LabelKey::parse(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(LabelKey::parse(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(LabelKey::parse(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(LabelKey::parse(k)?, set_values(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(LabelKey::parse(k)?, set_values(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(LabelKey::parse(k)?)
            } else {
                Requirement::Exists(LabelKey::parse(part)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    fn matches(&self, labels: &[String]) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => k.values(labels).any(|x| x == v),
            Requirement::NotEquals(k, v) => !k.values(labels).any(|x| x == v),
            Requirement::In(k, vs) => k.values(labels).any(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !k.values(labels).any(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => k.values(labels).next().is_some(),
            Requirement::NotExists(k) => k.values(labels).next().is_none(),
        })
    }
}

fn parse_port(field: &'static str, s: &str) -> Result<u32, FilterError> {
    s.parse::<u16>()
        .map(u32::from)
        .map_err(|_| bad(field, s, "expected a port number 0-65535"))
}

/// An FQDN, underscores included (Hubble's `fqdnRegexpStr`).
const FQDN_REGEX: &str = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)";

/// Hubble's `appendFQDNPatternRegexp`: a lower-cased name where `*` is any run of name
/// characters.
fn fqdn_pattern_regex(out: &mut String, pattern: &str) -> Result<(), String> {
    let p = pattern.trim();
    let p = p.strip_suffix('.').unwrap_or(p).to_lowercase();
    if p.is_empty() {
        return Err("empty pattern".to_owned());
    }
    if p.ends_with('.') {
        return Err("multiple trailing dots in pattern".to_owned());
    }
    for c in p.chars() {
        match c {
            '.' => out.push_str(r"\."),
            '*' => out.push_str("[-.0-9a-z]*"),
            '-' | '_' | '0'..='9' | 'a'..='z' => out.push(c),
            _ => return Err(format!("{c:?}: invalid rune in pattern")),
        }
    }
    Ok(())
}

/// Hubble's `compileFQDNPattern`: the patterns as one anchored regex.
fn fqdn_regex(field: &'static str, patterns: &[String]) -> Result<regex::Regex, FilterError> {
    let mut re = String::from(r"\A(?:");
    for (i, p) in patterns.iter().enumerate() {
        if i > 0 {
            re.push('|');
        }
        fqdn_pattern_regex(&mut re, p).map_err(|e| bad(field, p, e))?;
    }
    re.push_str(r")\z");
    regex::Regex::new(&re).map_err(|e| bad(field, &patterns.join(","), e.to_string()))
}

/// Hubble's `compileNodeNamePattern`: `cluster/node` patterns (either part may be empty or
/// use `*`; without `/` the cluster is any) as one anchored regex.
fn node_name_regex(patterns: &[String]) -> Result<regex::Regex, FilterError> {
    let mut re = String::from(r"\A(?:");
    for (i, p) in patterns.iter().enumerate() {
        if i > 0 {
            re.push('|');
        }
        if p.is_empty() {
            return Err(bad("node_name", p, "empty pattern"));
        }
        let parts: Vec<&str> = p.split('/').collect();
        let (cluster, node) = match parts.as_slice() {
            [node] => ("", *node),
            [cluster, node] => (*cluster, *node),
            _ => return Err(bad("node_name", p, "too many slashes in pattern")),
        };
        for (j, part) in [cluster, node].into_iter().enumerate() {
            if j == 1 {
                re.push('/');
            }
            if part.is_empty() {
                re.push_str(FQDN_REGEX);
            } else {
                fqdn_pattern_regex(&mut re, part).map_err(|e| bad("node_name", p, e))?;
            }
        }
    }
    re.push_str(r")\z");
    regex::Regex::new(&re).map_err(|e| bad("node_name", &patterns.join(","), e.to_string()))
}

/// The flow's L7 protocol as `--protocol` names it.
fn l7_protocol(flow: &Flow) -> Option<&'static str> {
    Some(match flow.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(_) => "http",
        layer7::Record::Dns(_) => "dns",
        layer7::Record::Kafka(_) => "kafka",
    })
}

fn flow_protocol(flow: &Flow) -> Option<&'static str> {
    Some(match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(_) => "tcp",
        layer4::Protocol::Udp(_) => "udp",
        layer4::Protocol::IcmPv4(_) => "icmpv4",
        layer4::Protocol::IcmPv6(_) => "icmpv6",
        layer4::Protocol::Sctp(_) => "sctp",
    })
}

/// Hubble's IP filter values: an address (compared as the flow writes it) or a prefix.
enum IpMatch {
    Addr(String),
    Net(IpNet),
}

fn parse_ip_match(field: &'static str, s: &str) -> Result<IpMatch, FilterError> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map(IpMatch::Net)
            .map_err(|_| bad(field, s, "not a valid CIDR, e.g. 10.0.0.0/24"))
    } else {
        s.parse::<IpAddr>()
            .map(|_| IpMatch::Addr(s.to_owned()))
            .map_err(|_| bad(field, s, "not a valid IP address, e.g. 10.0.0.1"))
    }
}

fn ip_matches(want: &[IpMatch], have: &str) -> bool {
    if have.is_empty() {
        return false;
    }
    let parsed = have.parse::<IpAddr>().ok();
    want.iter().any(|w| match w {
        IpMatch::Addr(a) => a == have,
        IpMatch::Net(n) => parsed.is_some_and(|ip| n.contains(&ip)),
    })
}

/// The flow's (source, destination) ports.
pub fn ports(flow: &Flow) -> Option<(u32, u32)> {
    Some(match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => (t.source_port, t.destination_port),
        layer4::Protocol::Udp(u) => (u.source_port, u.destination_port),
        layer4::Protocol::Sctp(s) => (s.source_port, s.destination_port),
        _ => return None,
    })
}

fn flow_tcp_flags(flow: &Flow) -> Option<&TcpFlags> {
    match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => t.flags.as_ref(),
        _ => None,
    }
}

fn flags_contain(have: &TcpFlags, want: &TcpFlags) -> bool {
    let h = [
        have.fin, have.syn, have.rst, have.psh, have.ack, have.urg, have.ece, have.cwr, have.ns,
    ];
    let w = [
        want.fin, want.syn, want.rst, want.psh, want.ack, want.urg, want.ece, want.cwr, want.ns,
    ];
    h.iter().zip(w).all(|(h, w)| *h || !w)
}

type Check = Box<dyn Fn(&Flow) -> bool + Send + Sync>;

/// One FlowFilter, compiled into the checks of the fields it sets.
struct Compiled(Vec<Check>);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compiled({} checks)", self.0.len())
    }
}

fn ep(flow: &Flow, source: bool) -> Option<&Endpoint> {
    if source {
        flow.source.as_ref()
    } else {
        flow.destination.as_ref()
    }
}

fn svc(flow: &Flow, source: bool) -> Option<&Service> {
    if source {
        flow.source_service.as_ref()
    } else {
        flow.destination_service.as_ref()
    }
}

/// The flow's source, destination or translated source address ("" when it has none).
fn ip_str(flow: &Flow, which: IpSide) -> &str {
    flow.ip.as_ref().map_or("", |ip| match which {
        IpSide::Source => &ip.source,
        IpSide::Destination => &ip.destination,
        IpSide::SourceXlated => &ip.source_xlated,
    })
}

#[derive(Clone, Copy)]
enum IpSide {
    Source,
    Destination,
    SourceXlated,
}

impl Compiled {
    fn new(f: &FlowFilter) -> Result<Self, FilterError> {
        let mut checks: Vec<Check> = Vec::new();
        refuse_unsupported(f)?;
        for (side, values, field) in [
            (IpSide::Source, &f.source_ip, "source_ip"),
            (IpSide::Destination, &f.destination_ip, "destination_ip"),
            (
                IpSide::SourceXlated,
                &f.source_ip_xlated,
                "source_ip_xlated",
            ),
        ] {
            if !values.is_empty() {
                let want = values
                    .iter()
                    .map(|v| parse_ip_match(field, v))
                    .collect::<Result<Vec<_>, _>>()?;
                checks.push(Box::new(move |fl| ip_matches(&want, ip_str(fl, side))));
            }
        }
        for (source, values, field) in [
            (true, &f.source_pod, "source_pod"),
            (false, &f.destination_pod, "destination_pod"),
        ] {
            if !values.is_empty() {
                let pats = values
                    .iter()
                    .map(|v| NamespacedPrefix::parse(field, v))
                    .collect::<Result<Vec<_>, _>>()?;
                checks.push(Box::new(move |fl| {
                    let (ns, name) = ep(fl, source)
                        .map_or(("", ""), |e| (e.namespace.as_str(), e.pod_name.as_str()));
                    pats.iter().any(|p| p.matches(ns, name))
                }));
            }
        }
        for (source, values, field) in [
            (true, &f.source_service, "source_service"),
            (false, &f.destination_service, "destination_service"),
        ] {
            if !values.is_empty() {
                let pats = values
                    .iter()
                    .map(|v| NamespacedPrefix::parse(field, v))
                    .collect::<Result<Vec<_>, _>>()?;
                checks.push(Box::new(move |fl| {
                    let (ns, name) = svc(fl, source)
                        .map_or(("", ""), |s| (s.namespace.as_str(), s.name.as_str()));
                    pats.iter().any(|p| p.matches(ns, name))
                }));
            }
        }
        endpoint_checks(f, &mut checks)?;
        for (source, values, field) in [
            (true, &f.source_label, "source_label"),
            (false, &f.destination_label, "destination_label"),
        ] {
            if !values.is_empty() {
                let sels = values
                    .iter()
                    .map(|v| Selector::parse(v).map_err(|e| bad(field, v, e)))
                    .collect::<Result<Vec<_>, _>>()?;
                checks.push(Box::new(move |fl| {
                    let labels = ep(fl, source).map_or(&[][..], |e| &e.labels[..]);
                    sels.iter().any(|s| s.matches(labels))
                }));
            }
        }
        for (source, values) in [(true, &f.source_identity), (false, &f.destination_identity)] {
            if !values.is_empty() {
                let ids = values.clone();
                checks.push(Box::new(move |fl| {
                    ep(fl, source).is_some_and(|e| ids.contains(&e.identity))
                }));
            }
        }
        for (source, values, field) in [
            (true, &f.source_port, "source_port"),
            (false, &f.destination_port, "destination_port"),
        ] {
            if !values.is_empty() {
                let want = values
                    .iter()
                    .map(|v| parse_port(field, v))
                    .collect::<Result<Vec<_>, _>>()?;
                checks.push(Box::new(move |fl| {
                    ports(fl).is_some_and(|(s, d)| want.contains(if source { &s } else { &d }))
                }));
            }
        }
        if !f.protocol.is_empty() {
            let (mut l4, mut l7) = (Vec::new(), Vec::new());
            for p in &f.protocol {
                let p = p.to_lowercase();
                match p.as_str() {
                    // As Hubble: `icmp` is either version.
                    "icmp" => l4.extend(["icmpv4".to_owned(), "icmpv6".to_owned()]),
                    // Ciliate's flows never carry VRRP or IGMP headers: valid, matching none.
                    "tcp" | "udp" | "icmpv4" | "icmpv6" | "sctp" | "vrrp" | "igmp" => l4.push(p),
                    "http" | "dns" | "kafka" => l7.push(p),
                    _ => {
                        return Err(bad(
                            "protocol",
                            &p,
                            "unknown protocol; expected tcp, udp, icmp, icmpv4, icmpv6, sctp, \
                             vrrp, igmp, http, dns or kafka",
                        ))
                    }
                }
            }
            checks.push(Box::new(move |fl| {
                flow_protocol(fl).is_some_and(|p| l4.iter().any(|w| w == p))
                    || l7_protocol(fl).is_some_and(|p| l7.iter().any(|w| w == p))
            }));
        }
        if !f.verdict.is_empty() {
            let want = f.verdict.clone();
            checks.push(Box::new(move |fl| want.contains(&fl.verdict)));
        }
        if !f.traffic_direction.is_empty() {
            let want = f.traffic_direction.clone();
            checks.push(Box::new(move |fl| want.contains(&fl.traffic_direction)));
        }
        if !f.ip_version.is_empty() {
            let want = f.ip_version.clone();
            checks.push(Box::new(move |fl| {
                fl.ip
                    .as_ref()
                    .is_some_and(|ip| want.contains(&ip.ip_version))
            }));
        }
        if !f.event_type.is_empty() {
            let want: Vec<EventTypeFilter> = f.event_type.clone();
            checks.push(Box::new(move |fl| {
                fl.event_type.as_ref().is_some_and(|et| {
                    want.iter().any(|w| {
                        // Type 0 is any type, as in Hubble.
                        (w.r#type == 0 || w.r#type == et.r#type)
                            && (!w.match_sub_type || w.sub_type == et.sub_type)
                    })
                })
            }));
        }
        if !f.tcp_flags.is_empty() {
            let want = f.tcp_flags.clone();
            checks.push(Box::new(move |fl| {
                flow_tcp_flags(fl).is_some_and(|have| want.iter().any(|w| flags_contain(have, w)))
            }));
        }
        if !f.node_name.is_empty() {
            let re = node_name_regex(&f.node_name)?;
            checks.push(Box::new(move |fl| {
                !fl.node_name.is_empty()
                    && re.is_match(&crate::ring::qualified_node_name(&fl.node_name))
            }));
        }
        if !f.reply.is_empty() {
            let want = f.reply.clone();
            checks.push(Box::new(move |fl| {
                // As Hubble: an unknown direction is "not a reply" only for drops.
                match crate::convert::is_reply(fl) {
                    None if fl.verdict != Verdict::Dropped as i32 => false,
                    r => want.contains(&r.unwrap_or(false)),
                }
            }));
        }
        if !f.uuid.is_empty() {
            let want = f.uuid.clone();
            checks.push(Box::new(move |fl| want.contains(&fl.uuid)));
        }
        http_checks(f, &mut checks)?;
        if !f.dns_query.is_empty() {
            // Hubble's `filterByDNSQueries`: unanchored regexes over the query name of DNS
            // flows (`example\.com\.$`); flows without a DNS record never match.
            let want = f
                .dns_query
                .iter()
                .map(|s| parse_regex("dns_query", s))
                .collect::<Result<Vec<_>, _>>()?;
            checks.push(Box::new(move |fl| {
                crate::l7::dns(fl).is_some_and(|d| want.iter().any(|r| r.is_match(&d.query)))
            }));
        }
        flow_field_checks(f, &mut checks)?;
        Ok(Self(checks))
    }

    fn matches(&self, flow: &Flow) -> bool {
        self.0.iter().all(|c| c(flow))
    }
}

/// Refuses the fields Ciliate cannot evaluate, naming them, rather than ignoring them.
fn refuse_unsupported(f: &FlowFilter) -> Result<(), FilterError> {
    if let Some(cel) = f
        .experimental
        .as_ref()
        .and_then(|e| e.cel_expression.first())
    {
        return Err(bad(
            "experimental.cel_expression",
            cel,
            "CEL expressions are not supported by Ciliate; use the other filter fields",
        ));
    }
    Ok(())
}

/// The endpoint fields of a filter: labels, identities, workloads, clusters, FQDNs.
fn endpoint_checks(f: &FlowFilter, checks: &mut Vec<Check>) -> Result<(), FilterError> {
    for (source, values) in [(true, &f.source_workload), (false, &f.destination_workload)] {
        if !values.is_empty() {
            let want: Vec<(String, String)> = values
                .iter()
                .map(|w| (w.name.clone(), w.kind.clone()))
                .collect();
            checks.push(Box::new(move |fl| {
                ep(fl, source).is_some_and(|e| {
                    e.workloads.iter().any(|w| {
                        want.iter().any(|(name, kind)| {
                            (name.is_empty() || *name == w.name)
                                && (kind.is_empty() || *kind == w.kind)
                        })
                    })
                })
            }));
        }
    }
    for (source, values, field) in [
        (true, &f.source_cluster_name, "source_cluster_name"),
        (
            false,
            &f.destination_cluster_name,
            "destination_cluster_name",
        ),
    ] {
        if !values.is_empty() {
            if values.iter().any(String::is_empty) {
                return Err(bad(field, "", "name must not be empty"));
            }
            let want = values.clone();
            checks.push(Box::new(move |fl| {
                let have = ep(fl, source).map_or("", |e| e.cluster_name.as_str());
                want.iter().any(|w| w == have)
            }));
        }
    }
    for (source, values, field) in [
        (true, &f.source_fqdn, "source_fqdn"),
        (false, &f.destination_fqdn, "destination_fqdn"),
    ] {
        if !values.is_empty() {
            let re = fqdn_regex(field, values)?;
            checks.push(Box::new(move |fl| {
                let names = if source {
                    &fl.source_names
                } else {
                    &fl.destination_names
                };
                names.iter().any(|n| re.is_match(n))
            }));
        }
    }
    if !f.node_labels.is_empty() {
        let sels = f
            .node_labels
            .iter()
            .map(|v| Selector::parse(v).map_err(|e| bad("node_labels", v, e)))
            .collect::<Result<Vec<_>, _>>()?;
        checks.push(Box::new(move |fl| {
            sels.iter().any(|s| s.matches(&fl.node_labels))
        }));
    }
    Ok(())
}

/// The fields over the flow itself: drop reasons, interface, encryption, trace ids.
fn flow_field_checks(f: &FlowFilter, checks: &mut Vec<Check>) -> Result<(), FilterError> {
    if !f.drop_reason_desc.is_empty() {
        let want = f.drop_reason_desc.clone();
        checks.push(Box::new(move |fl| {
            fl.verdict == Verdict::Dropped as i32 && want.contains(&fl.drop_reason_desc)
        }));
    }
    if !f.interface.is_empty() {
        let want: Vec<NetworkInterface> = f.interface.clone();
        checks.push(Box::new(move |fl| {
            fl.interface.as_ref().is_some_and(|have| {
                want.iter().any(|w| {
                    (w.index == 0 || w.index == have.index)
                        && (w.name.is_empty() || w.name == have.name)
                })
            })
        }));
    }
    if !f.encrypted.is_empty() {
        let want = f.encrypted.clone();
        checks.push(Box::new(move |fl| {
            want.contains(&fl.ip.as_ref().is_some_and(|ip| ip.encrypted))
        }));
    }
    if !f.ip_trace_id.is_empty() {
        let want = f.ip_trace_id.clone();
        checks.push(Box::new(move |fl| {
            want.contains(&fl.ip_trace_id.as_ref().map_or(0, |t| t.trace_id))
        }));
    }
    if !f.trace_id.is_empty() {
        let want = f.trace_id.clone();
        checks.push(Box::new(move |fl| {
            let have = fl
                .trace_context
                .as_ref()
                .and_then(|c| c.parent.as_ref())
                .map_or("", |p| p.trace_id.as_str());
            want.iter().any(|w| w == have)
        }));
    }
    Ok(())
}

/// Whether HTTP fields may be combined with the filter's event types: Hubble refuses them
/// unless the event types are empty or include L7 (access log) events.
fn http_compatible(types: &[EventTypeFilter]) -> bool {
    types.is_empty() || types.iter().any(|t| t.r#type == MESSAGE_TYPE_ACCESS_LOG)
}

/// An HTTP status code (`404`) or a prefix of one (`4+`, `40+`), as Hubble accepts them.
enum StatusMatch {
    Full(String),
    Prefix(String),
}

fn parse_status(s: &str) -> Result<StatusMatch, FilterError> {
    let b = s.as_bytes();
    let first = |b: &[u8]| b.first().is_some_and(|c| (b'1'..=b'5').contains(c));
    if b.len() == 3 && first(b) && b[1..].iter().all(u8::is_ascii_digit) {
        return Ok(StatusMatch::Full(s.to_owned()));
    }
    if let Some(prefix) = s.strip_suffix('+') {
        let p = prefix.as_bytes();
        if (1..=2).contains(&p.len()) && first(p) && p[1..].iter().all(u8::is_ascii_digit) {
            return Ok(StatusMatch::Prefix(prefix.to_owned()));
        }
    }
    Err(bad(
        "http_status_code",
        s,
        "expected a status code (404) or a prefix of one (4+, 40+)",
    ))
}

fn parse_regex(field: &'static str, s: &str) -> Result<regex::Regex, FilterError> {
    regex::Regex::new(s).map_err(|e| bad(field, s, format!("not a valid regular expression: {e}")))
}

/// The path of a request URL as Go's `url.ParseRequestURI` decodes it: after the scheme and
/// authority, before the query, percent-decoded. `None` when Go would refuse the URL (no
/// scheme and not absolute, a bad escape), which Hubble's path filter treats as no match.
pub fn request_path(url: &str) -> Option<String> {
    let rest = url.split_once('?').map_or(url, |(r, _)| r);
    let scheme_end = rest
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphabetic() || (i > 0 && (c.is_ascii_digit() || "+-.".contains(c))))
        })
        .filter(|&(i, c)| c == ':' && i > 0)
        .map(|(i, _)| i);
    let path = match scheme_end {
        None if rest.starts_with('/') => rest,
        None => return None,
        Some(i) => {
            let after = &rest[i + 1..];
            match after.strip_prefix("//") {
                Some(auth_path) => auth_path.find('/').map_or("", |j| &auth_path[j..]),
                // An opaque URL (`mailto:x`) has no path.
                None if !after.starts_with('/') => "",
                None => after,
            }
        }
    };
    let (mut out, bytes) = (Vec::with_capacity(path.len()), path.as_bytes());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The HTTP fields of a filter (Hubble's `HTTPFilter`): each set field must match the flow's
/// HTTP record; flows without one never match.
fn http_checks(f: &FlowFilter, checks: &mut Vec<Check>) -> Result<(), FilterError> {
    for (set, field) in [
        (!f.http_status_code.is_empty(), "http_status_code"),
        (!f.http_method.is_empty(), "http_method"),
        (!f.http_path.is_empty(), "http_path"),
        (!f.http_url.is_empty(), "http_url"),
        (!f.http_header.is_empty(), "http_header"),
    ] {
        if set && !http_compatible(&f.event_type) {
            let types: Vec<String> = f.event_type.iter().map(|t| t.r#type.to_string()).collect();
            return Err(bad(
                field,
                &types.join(","),
                format!(
                    "filtering on {field} needs the event type filter to include L7 events \
                     (type {MESSAGE_TYPE_ACCESS_LOG}), or no event type filter"
                ),
            ));
        }
    }
    if !f.http_status_code.is_empty() {
        let want = f
            .http_status_code
            .iter()
            .map(|s| parse_status(s))
            .collect::<Result<Vec<_>, _>>()?;
        checks.push(Box::new(move |fl| {
            let Some(h) = crate::l7::http(fl).filter(|h| h.code != 0) else {
                return false;
            };
            let code = format!("{:03}", h.code);
            want.iter().any(|w| match w {
                StatusMatch::Full(s) => *s == code,
                StatusMatch::Prefix(p) => code.starts_with(p.as_str()),
            })
        }));
    }
    if !f.http_method.is_empty() {
        let want = f.http_method.clone();
        checks.push(Box::new(move |fl| {
            crate::l7::http(fl).is_some_and(|h| {
                !h.method.is_empty() && want.iter().any(|m| m.eq_ignore_ascii_case(&h.method))
            })
        }));
    }
    if !f.http_path.is_empty() {
        let res = f
            .http_path
            .iter()
            .map(|s| parse_regex("http_path", s))
            .collect::<Result<Vec<_>, _>>()?;
        checks.push(Box::new(move |fl| {
            crate::l7::http(fl)
                .filter(|h| !h.url.is_empty())
                .and_then(|h| request_path(&h.url))
                .is_some_and(|p| res.iter().any(|r| r.is_match(&p)))
        }));
    }
    if !f.http_url.is_empty() {
        let res = f
            .http_url
            .iter()
            .map(|s| parse_regex("http_url", s))
            .collect::<Result<Vec<_>, _>>()?;
        checks.push(Box::new(move |fl| {
            crate::l7::http(fl)
                .is_some_and(|h| !h.url.is_empty() && res.iter().any(|r| r.is_match(&h.url)))
        }));
    }
    if !f.http_header.is_empty() {
        let want: Vec<(String, String)> = f
            .http_header
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        checks.push(Box::new(move |fl| {
            crate::l7::http(fl).is_some_and(|h| {
                h.headers
                    .iter()
                    .any(|have| want.iter().any(|(k, v)| *k == have.key && *v == have.value))
            })
        }));
    }
    Ok(())
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
