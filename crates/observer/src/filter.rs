//! Hubble's FlowFilter semantics: within one field the values are alternatives (OR), the fields
//! set in one filter must all match (AND), a request's whitelist filters are alternatives, and
//! a flow is returned when it matches the whitelist (or there is none) and no blacklist filter.
//!
//! Filters are compiled once per request ([`FlowFilters::compile`]), so bad input (a CIDR, a
//! label selector) is refused up front with a message naming the field.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::proto::flow::{layer4, Endpoint, EventTypeFilter, Flow, FlowFilter, Service, TcpFlags};

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

/// `namespace/name-prefix`, `name-prefix` (any namespace) or `namespace/` (all of it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamespacedPrefix {
    namespace: Option<String>,
    prefix: String,
}

impl NamespacedPrefix {
    fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((ns, prefix)) => Self {
                namespace: Some(ns.to_owned()),
                prefix: prefix.to_owned(),
            },
            None => Self {
                namespace: None,
                prefix: s.to_owned(),
            },
        }
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

fn parse_net(field: &'static str, s: &str) -> Result<IpNet, FilterError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        bad(
            field,
            s,
            "expected an IP address or a CIDR, e.g. 10.0.0.1 or 10.0.0.0/24",
        )
    })
}

fn parse_port(field: &'static str, s: &str) -> Result<u32, FilterError> {
    s.parse::<u16>()
        .map(u32::from)
        .map_err(|_| bad(field, s, "expected a port number 0-65535"))
}

/// A `*` glob (Hubble's node name patterns).
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            s.starts_with(head)
                && (0..=s.len() - head.len())
                    .any(|i| s.is_char_boundary(head.len() + i) && glob(tail, &s[head.len() + i..]))
        }
    }
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

fn ip_of(flow: &Flow, source: bool) -> Option<IpAddr> {
    let ip = flow.ip.as_ref()?;
    (if source { &ip.source } else { &ip.destination })
        .parse()
        .ok()
}

impl Compiled {
    fn new(f: &FlowFilter) -> Result<Self, FilterError> {
        let mut checks: Vec<Check> = Vec::new();
        for (source, values, field) in [
            (true, &f.source_ip, "source_ip"),
            (false, &f.destination_ip, "destination_ip"),
        ] {
            if !values.is_empty() {
                let nets = values
                    .iter()
                    .map(|v| parse_net(field, v))
                    .collect::<Result<Vec<_>, _>>()?;
                checks.push(Box::new(move |fl| {
                    ip_of(fl, source).is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
                }));
            }
        }
        for (source, values) in [(true, &f.source_pod), (false, &f.destination_pod)] {
            if !values.is_empty() {
                let pats: Vec<_> = values.iter().map(|v| NamespacedPrefix::parse(v)).collect();
                checks.push(Box::new(move |fl| {
                    ep(fl, source)
                        .is_some_and(|e| pats.iter().any(|p| p.matches(&e.namespace, &e.pod_name)))
                }));
            }
        }
        for (source, values) in [(true, &f.source_service), (false, &f.destination_service)] {
            if !values.is_empty() {
                let pats: Vec<_> = values.iter().map(|v| NamespacedPrefix::parse(v)).collect();
                checks.push(Box::new(move |fl| {
                    svc(fl, source)
                        .is_some_and(|s| pats.iter().any(|p| p.matches(&s.namespace, &s.name)))
                }));
            }
        }
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
                    ep(fl, source).is_some_and(|e| sels.iter().any(|s| s.matches(&e.labels)))
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
            let mut want = Vec::new();
            for p in &f.protocol {
                let p = p.to_ascii_lowercase();
                want.push(match p.as_str() {
                    "icmp" | "icmpv4" => "icmpv4".to_owned(),
                    "tcp" | "udp" | "icmpv6" | "sctp" => p,
                    _ => {
                        return Err(bad(
                            "protocol",
                            &p,
                            "expected tcp, udp, icmp, icmpv4, icmpv6 or sctp",
                        ))
                    }
                });
            }
            checks.push(Box::new(move |fl| {
                flow_protocol(fl).is_some_and(|p| want.iter().any(|w| w == p))
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
                        w.r#type == et.r#type && (!w.match_sub_type || w.sub_type == et.sub_type)
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
            let want = f.node_name.clone();
            checks.push(Box::new(move |fl| {
                want.iter().any(|p| glob(p, &fl.node_name))
            }));
        }
        if !f.reply.is_empty() {
            let want = f.reply.clone();
            checks.push(Box::new(move |fl| {
                want.contains(&crate::convert::is_reply(fl).unwrap_or(false))
            }));
        }
        if !f.uuid.is_empty() {
            let want = f.uuid.clone();
            checks.push(Box::new(move |fl| want.contains(&fl.uuid)));
        }
        // Fields about what Ciliate's flows never carry (DNS names, L7, workloads, traces):
        // set, they match nothing, as they would in Hubble for flows without them.
        let never = !f.source_fqdn.is_empty()
            || !f.destination_fqdn.is_empty()
            || !f.http_status_code.is_empty()
            || !f.http_method.is_empty()
            || !f.http_path.is_empty()
            || !f.dns_query.is_empty()
            || !f.trace_id.is_empty()
            || !f.source_workload.is_empty()
            || !f.destination_workload.is_empty();
        if never {
            checks.push(Box::new(|_| false));
        }
        Ok(Self(checks))
    }

    fn matches(&self, flow: &Flow) -> bool {
        self.0.iter().all(|c| c(flow))
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
