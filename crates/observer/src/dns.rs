//! One DNS record of the node's DNS proxy → one Hubble L7 flow with `l7.dns`, as Cilium's
//! DNS proxy logs it (`notifyOnDNSMsg`) and Hubble's L7 parser decodes it (`decodeDNS`,
//! `dnsSummary`).
//!
//! Cilium logs every DNS record at the endpoint's egress (a pod's queries are the only ones
//! its proxy sees); a query runs from the pod to the resolver, an answer from the resolver
//! back to the pod (`is_reply`). A query carries only its name, types and observation
//! source; an answer adds the addresses, TTL, CNAMEs, response code and record types.

use ciliate_model::l7::{DnsRecord, L7RecordType};
use ciliate_model::l7_wire::{DnsFrame, DnsView};

use crate::l7::{l7_flow, L7Common};
use crate::proto::flow::{layer7, Dns, Flow};
use crate::store::Store;

/// Cilium's `DNSSourceProxy`: the DNS proxy saw it (the only source Ciliate has).
pub const OBSERVATION_SOURCE_PROXY: &str = "proxy";

/// A response code as gopacket's `DNSResponseCode.String()` names it, which Hubble prints in
/// the summary of a failed answer (`RCode: Non-Existent Domain`).
pub fn rcode_text(rcode: u32) -> &'static str {
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
        9 => "Server Not Authoritative for zone",
        10 => "Name not contained in zone",
        16 => "Bad OPT Version",
        17 => "Key not recognized",
        18 => "Signature out of time window",
        19 => "Bad TKEY Mode",
        20 => "Duplicate key name",
        21 => "Algorithm not supported",
        22 => "Bad Truncation",
        23 => "Bad/missing Server Cookie",
        _ => "Unknown",
    }
}

/// Go's `%q` of a plain string: quoted, with `"` and `\` escaped (names and addresses
/// have nothing else to escape once the proxy has parsed them).
fn go_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Hubble's summary of a DNS flow (`dnsSummary`): `DNS Query api.example.com. A` for a query;
/// for an answer `DNS Answer "192.0.2.1,192.0.2.2" CNAMEs: "b.example.com." TTL: 30 (Proxy
/// api.example.com. A)`, or `DNS Answer RCode: Non-Existent Domain TTL: 0 (Proxy ...)`.
pub fn dns_summary(d: &Dns, response: bool) -> String {
    let qtypes = d.qtypes.join(",");
    if !response {
        return format!("DNS Query {} {qtypes}", d.query);
    }
    let answer = if d.rcode == 0 {
        let mut parts = Vec::new();
        if !d.ips.is_empty() {
            parts.push(go_quote(&d.ips.join(",")));
        }
        if !d.cnames.is_empty() {
            parts.push(format!("CNAMEs: {}", go_quote(&d.cnames.join(","))));
        }
        parts.join(" ")
    } else {
        format!("RCode: {}", rcode_text(d.rcode))
    };
    let source = if d.observation_source == OBSERVATION_SOURCE_PROXY {
        "Proxy"
    } else {
        "Query"
    };
    format!(
        "DNS Answer {answer} TTL: {} ({source} {} {qtypes})",
        d.ttl, d.query
    )
}

/// The `l7.dns` record as Hubble fills it: a query's answer fields stay empty.
fn dns_of(record: &DnsView<'_>, response: bool) -> Dns {
    let mut d = Dns {
        query: record.query.to_owned(),
        observation_source: OBSERVATION_SOURCE_PROXY.to_owned(),
        qtypes: record.qtypes.iter().map(str::to_owned).collect(),
        ..Dns::default()
    };
    if response {
        d.ips = record.ips().map(|ip| ip.to_string()).collect();
        d.ttl = record.ttl;
        d.cnames = record.cnames.iter().map(str::to_owned).collect();
        d.rcode = u32::from(record.rcode);
        d.rrtypes = record.rrtypes.iter().map(str::to_owned).collect();
    }
    d
}

/// Converts one record. `node_name` is this node's; the store names both ends.
pub fn dns_to_flow(record: &DnsRecord, store: &dyn Store, node_name: &str) -> Flow {
    let frame = DnsFrame::of_record(record);
    let (common, dns, summary) = dns_parts(&frame.view());
    l7_flow(&common, dns, summary, store, node_name)
}

/// What [`l7_flow`] makes a DNS record's flow of: its connection, its L7 record and its
/// summary.
pub(crate) fn dns_parts(record: &DnsView<'_>) -> (L7Common, layer7::Record, String) {
    let response = record.record_type == L7RecordType::Response;
    let common = L7Common {
        time_ns: record.time_ns,
        response,
        // The pod's queries: always its egress.
        egress: true,
        client: (record.source, record.source_identity),
        server: (record.destination, record.destination_identity),
        proto: record.proto,
        verdict: record.verdict,
        latency_ns: record.latency_ns,
        rule: record.rule,
    };
    let dns = dns_of(record, response);
    let summary = dns_summary(&dns, response);
    (common, layer7::Record::Dns(dns), summary)
}

#[cfg(test)]
#[path = "dns_tests.rs"]
pub(crate) mod tests;
