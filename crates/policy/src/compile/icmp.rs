//! ICMP peers' L4: `icmps` fields by type number or name, for IPv4 and IPv6.

use ciliate_model::policy::cilium::{IcmpFamily, IcmpRule};
use ciliate_model::policy::{IntOrString, PROTO_ICMP, PROTO_ICMPV6};

use super::{Compiler, PortMatch, RuleCtx, MAX_ICMP_FIELDS};

impl Compiler<'_> {
    pub(super) fn icmps(&mut self, c: &RuleCtx<'_>, icmps: &[IcmpRule]) -> Vec<PortMatch> {
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
