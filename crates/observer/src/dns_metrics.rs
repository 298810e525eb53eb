//! Hubble's `dns` metrics (its handler `pkg/hubble/metrics/dns`), from L7 DNS flows:
//!
//! - `hubble_dns_queries_total{ips_returned,qtypes,rcode}`: queries; a query the policy
//!   refused has `rcode="Policy denied"`, the others an empty `rcode`;
//! - `hubble_dns_responses_total{ips_returned,qtypes,rcode}`: answers, `rcode` named as
//!   Hubble names it (`No Error`, `Non-Existent Domain`, ...);
//! - `hubble_dns_response_types_total{qtypes,type}`: one per record type in an answer.
//!
//! `qtypes` is the query types joined by commas, `ips_returned` the number of addresses.
//! Hubble counts every dropped DNS flow as a refused query; Cilium's proxy logs a refused
//! query once (the request), so a dropped answer (the proxy's own REFUSED to it) is not
//! counted again here. Labels in name order, as Prometheus' Go client prints them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::http_metrics::{escape, BoundedLabel};
use crate::proto::flow::{Dns, Flow, Verdict};

/// Distinct `qtypes` values (a client chooses its query types) and record types (the server
/// chooses them) counted under their own name; the rest are `other`.
const MAX_TYPES: usize = 64;

/// Hubble's names of response codes in metrics (`rcodeNames`).
fn rcode_name(rcode: u32) -> String {
    match rcode {
        0 => "No Error",
        1 => "Format Error",
        2 => "Server Failure",
        3 => "Non-Existent Domain",
        4 => "Not Implemented",
        5 => "Query Refused",
        6 => "Name Exists when it should not",
        7 => "RR Set Exists when it should not",
        8 => "RR Set that should exist does not",
        9 => "Not Authorized",
        10 => "Name not contained in zone",
        11 => "DSO-TYPE Not Implemented",
        16 => "Bad OPT Version",
        17 => "Key not recognized",
        18 => "Signature out of time window",
        19 => "Bad TKEY Mode",
        20 => "Duplicate key name",
        21 => "Algorithm not supported",
        22 => "Bad Truncation",
        23 => "Bad/missing Server Cookie",
        // Hubble's map has no entry: Go's zero value.
        _ => "",
    }
    .to_owned()
}

/// (ips_returned, qtypes, rcode).
type Key = (usize, String, String);

/// The DNS counters, keyed by their label values.
#[derive(Debug, Default)]
pub(crate) struct DnsMetrics {
    queries: BTreeMap<Key, u64>,
    responses: BTreeMap<Key, u64>,
    /// (qtypes, type).
    response_types: BTreeMap<(String, String), u64>,
    qtypes: BoundedLabel,
    rrtypes: BoundedLabel,
}

impl DnsMetrics {
    /// Counts one DNS flow (`dns` is its record).
    pub(crate) fn record(&mut self, flow: &Flow, dns: &Dns) {
        let qtypes = self.qtypes.label(&dns.qtypes.join(","), MAX_TYPES);
        let ips = dns.ips.len();
        let reply = crate::convert::is_reply(flow).unwrap_or(false);
        if flow.verdict == Verdict::Dropped as i32 {
            if !reply {
                *self
                    .queries
                    .entry((ips, qtypes, "Policy denied".to_owned()))
                    .or_default() += 1;
            }
        } else if !reply {
            *self
                .queries
                .entry((ips, qtypes, String::new()))
                .or_default() += 1;
        } else {
            for t in &dns.rrtypes {
                let t = self.rrtypes.label(t, MAX_TYPES);
                *self.response_types.entry((qtypes.clone(), t)).or_default() += 1;
            }
            *self
                .responses
                .entry((ips, qtypes, rcode_name(dns.rcode)))
                .or_default() += 1;
        }
    }

    /// Appends the families that have samples (as Prometheus' Go client).
    pub(crate) fn render(&self, out: &mut String) {
        for (name, map) in [
            ("hubble_dns_queries_total", &self.queries),
            ("hubble_dns_responses_total", &self.responses),
        ] {
            if map.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "# HELP {name} Number of DNS queries observed\n# TYPE {name} counter"
            );
            for ((ips, qtypes, rcode), n) in map {
                let _ = writeln!(
                    out,
                    "{name}{{ips_returned=\"{ips}\",qtypes=\"{}\",rcode=\"{}\"}} {n}",
                    escape(qtypes),
                    escape(rcode)
                );
            }
        }
        if !self.response_types.is_empty() {
            let name = "hubble_dns_response_types_total";
            let _ = writeln!(
                out,
                "# HELP {name} Number of DNS queries observed\n# TYPE {name} counter"
            );
            for ((qtypes, t), n) in &self.response_types {
                let _ = writeln!(
                    out,
                    "{name}{{qtypes=\"{}\",type=\"{}\"}} {n}",
                    escape(qtypes),
                    escape(t)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ciliate_model::l7::{DnsRecord, L7RecordType, L7Verdict};

    use crate::convert::tests::store;
    use crate::dns::dns_to_flow;
    use crate::dns::tests::{answer, query};
    use crate::metrics::http_tests::parse;
    use crate::metrics::Metrics;

    #[test]
    fn queries_answers_and_record_types_under_hubbles_names_and_labels() {
        let s = store();
        let m = Metrics::default();
        let nx = DnsRecord {
            query: "nope.example.com.".into(),
            rcode: 3,
            ips: vec![],
            cnames: vec![],
            rrtypes: vec![],
            ..answer()
        };
        let denied = DnsRecord {
            verdict: L7Verdict::Dropped,
            qtypes: vec!["A".into(), "AAAA".into()],
            ..query()
        };
        // The proxy's own REFUSED to the denied query: not a second query.
        let refused = DnsRecord {
            record_type: L7RecordType::Response,
            rcode: 5,
            ..denied.clone()
        };
        for r in [query(), answer(), query(), nx, denied, refused] {
            m.record(&dns_to_flow(&r, &s, "n1"));
        }
        let (samples, types) = parse(&m.render());
        for family in [
            "hubble_dns_queries_total",
            "hubble_dns_responses_total",
            "hubble_dns_response_types_total",
        ] {
            assert_eq!(types[family], "counter", "{family}");
        }
        let dns: Vec<(String, f64)> = samples
            .into_iter()
            .filter(|(k, _)| k.starts_with("hubble_dns_"))
            .collect();
        let want = [
            (
                r#"hubble_dns_queries_total{ips_returned="0",qtypes="A",rcode=""}"#,
                2.0,
            ),
            (
                r#"hubble_dns_queries_total{ips_returned="0",qtypes="A,AAAA",rcode="Policy denied"}"#,
                1.0,
            ),
            (
                r#"hubble_dns_response_types_total{qtypes="A",type="A"}"#,
                2.0,
            ),
            (
                r#"hubble_dns_response_types_total{qtypes="A",type="CNAME"}"#,
                1.0,
            ),
            (
                r#"hubble_dns_responses_total{ips_returned="0",qtypes="A",rcode="Non-Existent Domain"}"#,
                1.0,
            ),
            (
                r#"hubble_dns_responses_total{ips_returned="2",qtypes="A",rcode="No Error"}"#,
                1.0,
            ),
        ];
        let want: Vec<(String, f64)> = want.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        assert_eq!(dns, want);
        // Flows processed name the L7 protocol as Hubble's subtype.
        assert!(m.render().contains(
            r#"hubble_flows_processed_total{protocol="DNS",type="L7",subtype="DNS",verdict="FORWARDED"} 4"#
        ));
    }

    #[test]
    fn query_types_a_client_makes_up_are_bounded() {
        let s = store();
        let m = Metrics::default();
        for i in 0..200 {
            m.record(&dns_to_flow(
                &DnsRecord {
                    qtypes: vec![format!("TYPE{i}")],
                    ..query()
                },
                &s,
                "n",
            ));
        }
        let (samples, _) = parse(&m.render());
        let n = samples
            .keys()
            .filter(|k| k.starts_with("hubble_dns_queries_total"))
            .count();
        assert_eq!(n, 65);
        assert_eq!(
            samples[r#"hubble_dns_queries_total{ips_returned="0",qtypes="other",rcode=""}"#],
            136.0
        );
    }

    #[test]
    fn without_dns_flows_no_dns_family_is_exposed() {
        assert!(!Metrics::default().render().contains("hubble_dns_"));
    }
}
