//! The page's filters: the flags of `ciliate observe` as query parameters (`namespace=demo`,
//! `verdict=DROPPED`, `to_port=8080`, ...; `not_<name>` negates one), turned into Hubble
//! FlowFilters the way `observe` builds them (flags about either end become a source-side and
//! a destination-side filter) and compiled by the observer's own filter code, so the map and
//! the table select exactly what `ciliate observe` with the same flags prints.

use ciliate_observer::filter::FlowFilters;
use ciliate_observer::l7::MESSAGE_TYPE_ACCESS_LOG;
use ciliate_observer::proto::flow::{
    DropReason, EventTypeFilter, FlowFilter, TrafficDirection, Verdict,
};

/// The filter parameters, as `ciliate observe`'s flags with `_` for `-`.
pub const FILTERS: [&str; 35] = [
    "namespace",
    "from_namespace",
    "to_namespace",
    "pod",
    "from_pod",
    "to_pod",
    "ip",
    "from_ip",
    "to_ip",
    "label",
    "from_label",
    "to_label",
    "service",
    "from_service",
    "to_service",
    "fqdn",
    "from_fqdn",
    "to_fqdn",
    "identity",
    "from_identity",
    "to_identity",
    "port",
    "from_port",
    "to_port",
    "verdict",
    "protocol",
    "type",
    "drop_reason_desc",
    "traffic_direction",
    "node_name",
    "dns_query",
    "http_method",
    "http_path",
    "http_status",
    "http_url",
];

/// Filters about one end of a flow: (either end, the source's, the destination's).
const ENDS: [(&str, &str, &str); 7] = [
    ("pod", "from_pod", "to_pod"),
    ("ip", "from_ip", "to_ip"),
    ("label", "from_label", "to_label"),
    ("service", "from_service", "to_service"),
    ("fqdn", "from_fqdn", "to_fqdn"),
    ("identity", "from_identity", "to_identity"),
    ("port", "from_port", "to_port"),
];

/// Parameters whose values are simple words, so a comma separates values
/// (`verdict=DROPPED,ERROR`). Label selectors and regexes may contain commas themselves, so
/// they are one value each.
const COMMA_LISTS: [&str; 25] = [
    "namespace",
    "from_namespace",
    "to_namespace",
    "pod",
    "from_pod",
    "to_pod",
    "ip",
    "from_ip",
    "to_ip",
    "service",
    "from_service",
    "to_service",
    "identity",
    "from_identity",
    "to_identity",
    "port",
    "from_port",
    "to_port",
    "verdict",
    "protocol",
    "type",
    "drop_reason_desc",
    "traffic_direction",
    "node_name",
    "http_method",
];

/// The protocols `--protocol` takes.
const PROTOCOLS: [&str; 9] = [
    "tcp", "udp", "icmp", "icmpv4", "icmpv6", "sctp", "http", "dns", "kafka",
];

/// A bad parameter: which, what value, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {param}={value:?}: {reason}")]
pub struct QueryError {
    /// The parameter.
    pub param: String,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(param: &str, value: &str, reason: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Values per filter parameter (one side: kept or negated).
#[derive(Debug, Default, Clone)]
struct Spec(Vec<(&'static str, String)>);

impl Spec {
    fn get(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `ciliate observe`'s construction: one filter of the directional flags, doubled into a
    /// source-side and a destination-side one (ORed) by flags about either end.
    fn filters(&self) -> Result<Vec<FlowFilter>, QueryError> {
        if self.0.is_empty() {
            return Ok(Vec::new());
        }
        let mut base = FlowFilter {
            protocol: self.get("protocol"),
            node_name: self.get("node_name"),
            dns_query: self.get("dns_query"),
            http_method: self.get("http_method"),
            http_path: self.get("http_path"),
            http_status_code: self.get("http_status"),
            http_url: self.get("http_url"),
            ..FlowFilter::default()
        };
        for v in self.get("verdict") {
            let verdict = Verdict::from_str_name(&v.to_ascii_uppercase()).ok_or_else(|| {
                bad(
                    "verdict",
                    &v,
                    "expected FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED or TRANSLATED",
                )
            })?;
            base.verdict.push(verdict as i32);
        }
        for v in self.get("drop_reason_desc") {
            let reason = DropReason::from_str_name(&v.to_ascii_uppercase()).ok_or_else(|| {
                bad(
                    "drop_reason_desc",
                    &v,
                    "expected a drop reason name, e.g. POLICY_DENIED",
                )
            })?;
            base.drop_reason_desc.push(reason as i32);
        }
        for v in self.get("traffic_direction") {
            let d = TrafficDirection::from_str_name(&v.to_ascii_uppercase())
                .filter(|d| *d != TrafficDirection::Unknown)
                .ok_or_else(|| bad("traffic_direction", &v, "expected ingress or egress"))?;
            base.traffic_direction.push(d as i32);
        }
        for k in self.get("type") {
            let (name, sub) = k
                .split_once(':')
                .map_or((k.as_str(), None), |(n, s)| (n, Some(s)));
            let r#type = match name {
                "drop" => 1,
                "trace" => 4,
                "policy-verdict" => 5,
                "l7" => MESSAGE_TYPE_ACCESS_LOG,
                _ => {
                    return Err(bad(
                        "type",
                        &k,
                        "expected trace, drop, policy-verdict or l7, optionally :SUBTYPE",
                    ))
                }
            };
            let sub_type = sub
                .map(|s| {
                    s.parse::<i32>()
                        .map_err(|_| bad("type", &k, "the sub type must be a number"))
                })
                .transpose()?;
            base.event_type.push(EventTypeFilter {
                r#type,
                match_sub_type: sub_type.is_some(),
                sub_type: sub_type.unwrap_or(0),
            });
        }
        for (kind, from, to) in ENDS {
            for v in self.get(from) {
                push_end(&mut base, kind, true, from, &v)?;
            }
            for v in self.get(to) {
                push_end(&mut base, kind, false, to, &v)?;
            }
        }
        for n in self.get("from_namespace") {
            base.source_pod
                .push(format!("{}/", n.trim_end_matches('/')));
        }
        for n in self.get("to_namespace") {
            base.destination_pod
                .push(format!("{}/", n.trim_end_matches('/')));
        }
        // Flags about either end: (kind, parameter, value).
        let mut either: Vec<(&str, &str, String)> = Vec::new();
        for (kind, _, _) in ENDS {
            either.extend(self.get(kind).into_iter().map(|v| (kind, kind, v)));
        }
        either.extend(
            self.get("namespace")
                .into_iter()
                .map(|n| ("pod", "namespace", format!("{}/", n.trim_end_matches('/')))),
        );
        if either.is_empty() {
            return Ok(vec![base]);
        }
        let (mut src, mut dst) = (base.clone(), base);
        for (kind, param, v) in &either {
            push_end(&mut src, kind, true, param, v)?;
            push_end(&mut dst, kind, false, param, v)?;
        }
        Ok(vec![src, dst])
    }
}

/// Adds `value` to the source's (or destination's) field of `kind`.
fn push_end(
    f: &mut FlowFilter,
    kind: &str,
    source: bool,
    param: &str,
    value: &str,
) -> Result<(), QueryError> {
    if kind == "identity" {
        let n = value
            .parse::<u32>()
            .map_err(|_| bad(param, value, "expected a numeric security identity"))?;
        let list = if source {
            &mut f.source_identity
        } else {
            &mut f.destination_identity
        };
        list.push(n);
        return Ok(());
    }
    let list = match (kind, source) {
        ("pod", true) => &mut f.source_pod,
        ("pod", false) => &mut f.destination_pod,
        ("ip", true) => &mut f.source_ip,
        ("ip", false) => &mut f.destination_ip,
        ("label", true) => &mut f.source_label,
        ("label", false) => &mut f.destination_label,
        ("service", true) => &mut f.source_service,
        ("service", false) => &mut f.destination_service,
        ("fqdn", true) => &mut f.source_fqdn,
        ("fqdn", false) => &mut f.destination_fqdn,
        ("port", true) => &mut f.source_port,
        _ => &mut f.destination_port,
    };
    list.push(value.to_owned());
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), QueryError> {
    match name {
        "port" | "from_port" | "to_port" => value
            .parse::<u16>()
            .map(drop)
            .map_err(|_| bad(name, value, "expected a port number (0-65535)")),
        "protocol" if !PROTOCOLS.contains(&value.to_ascii_lowercase().as_str()) => Err(bad(
            name,
            value,
            format!("expected one of {}", PROTOCOLS.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// The filters a query string asks for, compiled; also the Hubble FlowFilters themselves
/// (whitelist, blacklist) for a GetFlows request. Parameters in `extra` are the caller's
/// own (e.g. `limit`) and skipped here; any other unknown parameter is refused, naming it.
pub fn parse(
    query: &str,
    extra: &[&str],
) -> Result<(FlowFilters, Vec<FlowFilter>, Vec<FlowFilter>), QueryError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| bad("(query string)", query, e.to_string()))?;
    let (mut keep, mut negated) = (Spec::default(), Spec::default());
    for (key, value) in pairs {
        if extra.contains(&key.as_str()) {
            continue;
        }
        let (target, name) = match key.strip_prefix("not_") {
            Some(rest) => (&mut negated, rest),
            None => (&mut keep, key.as_str()),
        };
        let Some(&name) = FILTERS.iter().find(|f| **f == name) else {
            return Err(bad(
                &key,
                &value,
                format!(
                    "unknown filter; known: {} (not_<name> negates)",
                    FILTERS.join(", ")
                ),
            ));
        };
        let values: Vec<&str> = if COMMA_LISTS.contains(&name) {
            value.split(',').map(str::trim).collect()
        } else {
            vec![value.trim()]
        };
        for v in values.into_iter().filter(|v| !v.is_empty()) {
            check_value(name, v)?;
            target.0.push((name, v.to_owned()));
        }
    }
    let whitelist = keep.filters()?;
    let blacklist = negated.filters()?;
    let compiled = FlowFilters::compile(&whitelist, &blacklist)
        .map_err(|e| bad("(filters)", query, e.to_string()))?;
    Ok((compiled, whitelist, blacklist))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_observes_filters() {
        let (_, white, black) =
            parse("from_pod=demo/frontend&to_port=8080&verdict=dropped", &[]).unwrap();
        assert_eq!(white.len(), 1);
        assert_eq!(white[0].source_pod, vec!["demo/frontend"]);
        assert_eq!(white[0].destination_port, vec!["8080"]);
        assert_eq!(white[0].verdict, vec![Verdict::Dropped as i32]);
        assert!(black.is_empty());
        let (_, white, black) = parse("namespace=demo&not_verdict=FORWARDED,TRACED", &[]).unwrap();
        assert_eq!(white.len(), 2);
        assert_eq!(white[0].source_pod, vec!["demo/"]);
        assert_eq!(white[1].destination_pod, vec!["demo/"]);
        assert_eq!(black[0].verdict.len(), 2);
        let (_, white, _) = parse("", &[]).unwrap();
        assert!(white.is_empty());
        let (_, white, _) = parse("namespace=&limit=5", &["limit"]).unwrap();
        assert!(white.is_empty());
        let (_, white, _) = parse(
            "to_service=demo/backend&from_identity=300&node_name=default/node0&drop_reason_desc=policy_denied&traffic_direction=ingress",
            &[],
        )
        .unwrap();
        assert_eq!(white.len(), 1);
        assert_eq!(white[0].destination_service, vec!["demo/backend"]);
        assert_eq!(white[0].source_identity, vec![300]);
        assert_eq!(white[0].node_name, vec!["default/node0"]);
        assert_eq!(
            white[0].drop_reason_desc,
            vec![DropReason::PolicyDenied as i32]
        );
        assert_eq!(
            white[0].traffic_direction,
            vec![TrafficDirection::Ingress as i32]
        );
        let (_, white, _) = parse("identity=7&to_namespace=prod", &[]).unwrap();
        assert_eq!(white.len(), 2);
        assert_eq!(white[0].source_identity, vec![7]);
        assert_eq!(white[1].destination_identity, vec![7]);
        assert_eq!(white[1].destination_pod, vec!["prod/"]);
        assert_eq!(white[0].destination_pod, vec!["prod/"]);
    }

    #[test]
    fn bad_values_are_named() {
        for (q, param) in [
            ("verdict=maybe", "verdict"),
            ("port=http", "port"),
            ("to_port=70000", "to_port"),
            ("protocol=quic", "protocol"),
            ("type=bogus", "type"),
            ("type=drop:x", "type"),
            ("colour=red", "colour"),
            ("not_colour=red", "not_colour"),
            ("http_path=(", "(filters)"),
            ("from_identity=web", "from_identity"),
            ("identity=-1", "identity"),
            ("drop_reason_desc=OOPS", "drop_reason_desc"),
            ("traffic_direction=sideways", "traffic_direction"),
        ] {
            let e = parse(q, &[]).unwrap_err();
            assert_eq!(e.param, param, "{q}: {e}");
        }
        let e = parse("colour=red", &[]).unwrap_err();
        assert!(e.to_string().contains("unknown filter"), "{e}");
    }
}
