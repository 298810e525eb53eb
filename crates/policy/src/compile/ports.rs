//! L4: `toPorts` (ports, ranges, named ports, protocols) for allow and deny rules, and the
//! L7 rules they may carry (checked, not enforced yet).

use ciliate_model::policy::cilium::{
    CiliumProtocol, L7Rules, PortDenyRule, PortProtocol, PortRule,
};
use ciliate_model::policy::{IntOrString, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use super::{Compiler, PortMatch, RuleCtx, MAX_PORTS};
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

    pub(super) fn allow_ports(&mut self, c: &RuleCtx<'_>, rules: &[PortRule]) -> Vec<PortMatch> {
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

    pub(super) fn deny_ports(&mut self, c: &RuleCtx<'_>, rules: &[PortDenyRule]) -> Vec<PortMatch> {
        let mut out = Vec::new();
        for (i, pr) in rules.iter().enumerate() {
            let p = format!("{}.toPorts[{i}]", c.path);
            out.extend(self.port_list(pr.ports.as_deref(), &p).0);
        }
        out
    }

    /// The `ports` of one `toPorts` entry: the matches, whether a port is 0 (all), and the
    /// protocols named.
    pub(super) fn port_list(
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
    pub(super) fn l7(
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
}
