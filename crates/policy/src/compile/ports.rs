//! L4: `toPorts` (ports, ranges, named ports, protocols) for allow and deny rules, and the
//! L7 rules they may carry: HTTP, Kafka and DNS rules checked and compiled for the node's
//! proxy.
//!
//! DNS rules (egress only) apply to the UDP and TCP ports of their entry (port 53 with no
//! protocol gives both); their names and patterns are checked with [`FqdnMatcher`] and sent
//! to the proxy lower-cased with the trailing dot. The SCTP part of a port without protocol
//! stays closed: the DNS proxy only speaks UDP and TCP.
//!
//! Where an L7 rule may stand follows Cilium's `PortRule.sanitize`
//! (`pkg/policy/api/rule_validation.go`): L7 rules other than DNS only on ports whose
//! protocol is `TCP` (a port without a protocol is `ANY`, which Cilium rejects with "L7 rules
//! can only apply to TCP (not ANY) except for DNS rules"); no L7 rules when a port is 0; one L7
//! protocol per `toPorts` entry ("multiple L7 protocol rule types"); regexes that compile
//! (`PortRuleHTTP.Sanitize`); a header match needs a name and a known mismatch action. Ciliate
//! also refuses port ranges (`endPort`) with L7 rules: its proxy redirects exact ports.

use std::collections::BTreeMap;

use ciliate_model::fqdn::FqdnMatcher;
use ciliate_model::l7::DnsMatch;
use ciliate_model::policy::cilium::{
    CiliumProtocol, L7Rules, PortDenyRule, PortProtocol, PortRule,
};
use ciliate_model::policy::{IntOrString, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use super::{Compiler, PortL7, PortMatch, RuleCtx, MAX_PORTS};
use crate::names::check_port_name;

impl Compiler<'_> {
    pub(super) fn port_number(&mut self, n: i64, min: i64, path: &str) -> Option<u16> {
        if n < min || n > i64::from(u16::MAX) {
            self.error(path, format!("port {n} is out of range {min}-65535"));
            return None;
        }
        u16::try_from(n).ok()
    }

    pub(super) fn end_port(&mut self, lo: u16, end: i64, path: &str) -> Option<u16> {
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

    /// The ports of an allow rule's `toPorts`, and the L7 rules of those that have some (by
    /// index into the ports).
    pub(super) fn allow_ports(
        &mut self,
        c: &RuleCtx<'_>,
        rules: &[PortRule],
    ) -> (Vec<PortMatch>, BTreeMap<usize, PortL7>) {
        let mut out = Vec::new();
        let mut l7_of = BTreeMap::new();
        for (i, pr) in rules.iter().enumerate() {
            let p = format!("{p}.toPorts[{i}]", p = c.path);
            let list = self.port_list(pr.ports.as_deref(), &p);
            let mut closed = false;
            let mut port_l7 = None;
            if let Some(l7) = &pr.rules {
                match self.l7(c, l7, &format!("{p}.rules"), &list, pr.ports.as_deref()) {
                    L7Outcome::None => {}
                    L7Outcome::Closed => closed = true,
                    L7Outcome::Http(rules) => port_l7 = Some(PortL7::Http(rules)),
                    L7Outcome::Dns(rules) => port_l7 = Some(PortL7::Dns(rules)),
                    L7Outcome::Kafka(rules) => port_l7 = Some(PortL7::Kafka(rules)),
                }
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
                for pm in list.ports {
                    let pm = match &port_l7 {
                        Some(PortL7::Dns(_)) => match dns_port(pm) {
                            Some(pm) => pm,
                            None => continue,
                        },
                        _ => pm,
                    };
                    if let Some(l7) = &port_l7 {
                        l7_of.insert(out.len(), l7.clone());
                    }
                    out.push(pm);
                }
            }
        }
        (out, l7_of)
    }

    pub(super) fn deny_ports(&mut self, c: &RuleCtx<'_>, rules: &[PortDenyRule]) -> Vec<PortMatch> {
        let mut out = Vec::new();
        for (i, pr) in rules.iter().enumerate() {
            let p = format!("{}.toPorts[{i}]", c.path);
            out.extend(self.port_list(pr.ports.as_deref(), &p).ports);
        }
        out
    }

    /// The `ports` of one `toPorts` entry.
    pub(super) fn port_list(&mut self, ports: Option<&[PortProtocol]>, path: &str) -> PortList {
        let mut out = Vec::new();
        let mut has_zero = false;
        let mut ranges = Vec::new();
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            self.warn(
                format!("{path}.ports"),
                "no ports: this toPorts entry matches nothing",
            );
            return PortList::default();
        };
        if ports.len() > MAX_PORTS {
            self.error(
                format!("{path}.ports"),
                format!("too many ports ({}), the most is {MAX_PORTS}", ports.len()),
            );
            return PortList::default();
        }
        for (i, pp) in ports.iter().enumerate() {
            let p = format!("{path}.ports[{i}]");
            let proto = pp.protocol.unwrap_or(CiliumProtocol::Any);
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
                    if hi > lo {
                        ranges.push(i);
                    }
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
        PortList {
            ports: out,
            has_zero,
            ranges,
        }
    }

    /// Checks the L7 rules of one `toPorts` entry whose ports are `list` (`given` as written).
    pub(super) fn l7(
        &mut self,
        c: &RuleCtx<'_>,
        l7: &L7Rules,
        path: &str,
        list: &PortList,
        given: Option<&[PortProtocol]>,
    ) -> L7Outcome {
        fn some<T>(v: &Option<Vec<T>>) -> bool {
            v.as_ref().is_some_and(|v| !v.is_empty())
        }
        // Cilium counts a kind only when its list is non-empty (`countL7Rules`); `http: []`
        // is no L7 rule at all.
        let kinds: Vec<&str> = [
            ("http", some(&l7.http)),
            ("kafka", some(&l7.kafka)),
            ("dns", some(&l7.dns)),
            ("l7proto", l7.l7proto.is_some()),
        ]
        .into_iter()
        .filter(|(_, given)| *given)
        .map(|(k, _)| k)
        .collect();
        if kinds.is_empty() {
            if l7.l7.is_some() {
                self.error(format!("{path}.l7"), "l7 may only be given with l7proto");
            }
            return L7Outcome::None;
        }
        if kinds.len() > 1 {
            self.error(
                path,
                format!(
                    "multiple L7 protocol rule types in one toPorts entry ({}): one port speaks one protocol; write a toPorts entry per protocol",
                    kinds.join(" and ")
                ),
            );
            return L7Outcome::Closed;
        }
        let ports = given.unwrap_or_default();
        if l7.dns.as_ref().is_some_and(|d| !d.is_empty()) {
            if c.ingress() {
                self.error(
                    format!("{path}.dns"),
                    "DNS rules are not allowed on ingress",
                );
                return L7Outcome::Closed;
            }
            if ports.is_empty() {
                self.error(format!("{path}.dns"), "port 53 must be given for DNS rules");
            }
        } else {
            let mut bad = false;
            for (i, pp) in ports.iter().enumerate() {
                let proto = pp.protocol.unwrap_or(CiliumProtocol::Any);
                if proto != CiliumProtocol::Tcp {
                    let name = match proto {
                        CiliumProtocol::Tcp => "TCP",
                        CiliumProtocol::Udp => "UDP",
                        CiliumProtocol::Sctp => "SCTP",
                        CiliumProtocol::Any => "ANY",
                    };
                    let hint = if pp.protocol.is_none() {
                        " (no protocol given means ANY: add protocol: TCP)"
                    } else {
                        ""
                    };
                    self.error(
                        format!("{}.ports[{i}].protocol", path.trim_end_matches(".rules")),
                        format!("L7 rules can only apply to TCP (not {name}) except for DNS rules{hint}"),
                    );
                    bad = true;
                }
            }
            if bad {
                return L7Outcome::Closed;
            }
        }
        if list.has_zero {
            self.error(path, "L7 rules can not be used when a port is 0");
            return L7Outcome::Closed;
        }
        if let Some(i) = list.ranges.first() {
            self.error(
                format!("{}.ports[{i}].endPort", path.trim_end_matches(".rules")),
                "L7 rules can not be used with a port range: the proxy redirects single ports; list the ports",
            );
            return L7Outcome::Closed;
        }
        if l7.l7.is_some() && l7.l7proto.is_none() {
            self.error(format!("{path}.l7"), "l7 may only be given with l7proto");
        }
        if let Some(rules) = l7.http.as_ref().filter(|r| !r.is_empty()) {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                if let Some(m) =
                    crate::l7::check_http_rule(r, &format!("{path}.http[{i}]"), &mut self.problems)
                {
                    out.push(m);
                }
            }
            return if out.len() == rules.len() {
                L7Outcome::Http(out)
            } else {
                L7Outcome::Closed
            };
        }
        if let Some(rules) = l7.dns.as_ref().filter(|r| !r.is_empty()) {
            let mut out = Vec::new();
            for (i, f) in rules.iter().enumerate() {
                match FqdnMatcher::new(f.match_name.as_deref(), f.match_pattern.as_deref()) {
                    Ok(m) => out.push(dns_match(&m)),
                    Err(e) => self.error(format!("{path}.dns[{i}]"), e),
                }
            }
            return if out.len() == rules.len() {
                L7Outcome::Dns(out)
            } else {
                L7Outcome::Closed
            };
        }
        if let Some(rules) = l7.kafka.as_ref().filter(|r| !r.is_empty()) {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                if let Some(m) = crate::l7::check_kafka_rule(
                    r,
                    &format!("{path}.kafka[{i}]"),
                    &mut self.problems,
                ) {
                    out.push(m);
                }
            }
            return if out.len() == rules.len() {
                L7Outcome::Kafka(out)
            } else {
                L7Outcome::Closed
            };
        }
        self.warn(
            path,
            "l7proto rules are not enforced yet: the ports of this toPorts entry stay closed until they are (fail closed)",
        );
        L7Outcome::Closed
    }
}

/// The `ports` of one `toPorts` entry, checked.
#[derive(Default)]
pub(super) struct PortList {
    /// The matches.
    pub ports: Vec<PortMatch>,
    /// Whether a port is 0 (every port).
    pub has_zero: bool,
    /// The indexes of ports given as ranges (`endPort` above `port`).
    pub ranges: Vec<usize>,
}

/// What the L7 rules of a `toPorts` entry make of its ports.
pub(super) enum L7Outcome {
    /// No L7 rules (or ones that allow every request): the ports are allowed at L4.
    None,
    /// Rules Ciliate cannot enforce, or errors: the ports stay closed.
    Closed,
    /// HTTP rules: the ports are allowed through the proxy, for requests these match.
    Http(Vec<ciliate_model::l7::HttpMatch>),
    /// DNS rules: the UDP and TCP ports are allowed through the DNS proxy, for queries these
    /// match.
    Dns(Vec<DnsMatch>),
    /// Kafka rules: the ports are allowed through the proxy, for requests these match.
    Kafka(Vec<ciliate_model::l7::KafkaMatch>),
}

/// The contract's form of a checked DNS rule: normalized (lower-case, trailing dot).
fn dns_match(m: &FqdnMatcher) -> DnsMatch {
    match m {
        FqdnMatcher::Name(n) => DnsMatch {
            match_name: Some(n.clone()),
            match_pattern: None,
        },
        FqdnMatcher::Pattern(p) => DnsMatch {
            match_name: None,
            match_pattern: Some(p.clone()),
        },
    }
}

/// The part of a port that can carry DNS to the proxy (UDP and TCP); `None` when none can.
fn dns_port(pm: PortMatch) -> Option<PortMatch> {
    let dns = |p: &u8| matches!(*p, PROTO_TCP | PROTO_UDP);
    match pm {
        PortMatch::Range { proto, .. } if !dns(&proto) => None,
        PortMatch::Named { protos, name } => {
            let protos: Vec<u8> = protos.into_iter().filter(dns).collect();
            (!protos.is_empty()).then_some(PortMatch::Named { protos, name })
        }
        PortMatch::AnyProto => None,
        other => Some(other),
    }
}
