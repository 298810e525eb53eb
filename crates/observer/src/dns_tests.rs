use std::net::{Ipv4Addr, SocketAddrV4};

use ciliate_model::l7::{DnsRecord, L7RecordType, L7Verdict};

use super::*;
use crate::convert::tests::store;
use crate::proto::flow::{layer4, FlowType, L7FlowType, TrafficDirection, Verdict};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// A resolver outside the cluster (identity 2, world).
const RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// The client pod asks the world's resolver for `api.example.com.` (A), over UDP, at
/// 2024-05-01T10:00:00Z.
pub(crate) fn query() -> DnsRecord {
    DnsRecord {
        time_ns: 1_714_557_600_000_000_000,
        record_type: L7RecordType::Request,
        endpoint: 1,
        source: SocketAddrV4::new(CLIENT, 41000),
        destination: SocketAddrV4::new(RESOLVER, 53),
        proto: 17,
        source_identity: 256,
        destination_identity: 2,
        verdict: L7Verdict::Forwarded,
        rule: 4,
        query: "api.example.com.".into(),
        qtypes: vec!["A".into()],
        rcode: 0,
        ips: vec![],
        ttl: 0,
        cnames: vec![],
        rrtypes: vec![],
        latency_ns: 0,
        reason: None,
    }
}

/// Its answer after 1.2 ms: a CNAME to `edge.example.net.` and two addresses, TTL 30.
pub(crate) fn answer() -> DnsRecord {
    DnsRecord {
        time_ns: 1_714_557_600_001_200_000,
        record_type: L7RecordType::Response,
        ips: vec![Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)],
        ttl: 30,
        cnames: vec!["edge.example.net.".into()],
        rrtypes: vec!["CNAME".into(), "A".into(), "A".into()],
        latency_ns: 1_200_000,
        ..query()
    }
}

fn dns_of(f: &Flow) -> &Dns {
    crate::l7::dns(f).expect("a DNS record")
}

#[test]
fn a_query_runs_from_the_pod_to_the_resolver_with_only_the_query_fields() {
    let f = dns_to_flow(&query(), &store(), "node-a");
    assert_eq!(f.r#type, FlowType::L7 as i32);
    assert_eq!(f.verdict, Verdict::Forwarded as i32);
    assert_eq!(f.event_type.as_ref().map(|e| e.r#type), Some(129));
    let ip = f.ip.clone().expect("ip");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str()),
        ("10.200.0.2", "192.0.2.53")
    );
    assert!(matches!(
        f.l4.as_ref().and_then(|l| l.protocol.as_ref()),
        Some(layer4::Protocol::Udp(u)) if (u.source_port, u.destination_port) == (41000, 53)
    ));
    let src = f.source.clone().expect("source");
    assert_eq!(
        (src.identity, src.namespace.as_str(), src.pod_name.as_str()),
        (256, "default", "client")
    );
    let dst = f.destination.clone().expect("destination");
    assert_eq!(dst.identity, 2);
    assert_eq!(dst.labels, vec!["reserved:world"]);
    assert_eq!(crate::convert::is_reply(&f), Some(false));
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    let l7 = f.l7.clone().expect("l7");
    assert_eq!(l7.r#type, L7FlowType::Request as i32);
    assert_eq!(l7.latency_ns, 0);
    assert_eq!(
        dns_of(&f),
        &Dns {
            query: "api.example.com.".into(),
            observation_source: "proxy".into(),
            qtypes: vec!["A".into()],
            ..Dns::default()
        }
    );
    assert_eq!(f.summary, "DNS Query api.example.com. A");
    assert_eq!(
        crate::print::compact(&f),
        "May  1 10:00:00.000: default/client:41000 (ID:256) -> 192.0.2.53:53 (world) \
         dns-request proxy FORWARDED (DNS Query api.example.com. A)"
    );
}

#[test]
fn an_answer_runs_from_the_resolver_back_to_the_pod_with_everything_it_said() {
    let f = dns_to_flow(&answer(), &store(), "node-a");
    let ip = f.ip.clone().expect("ip");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str()),
        ("192.0.2.53", "10.200.0.2")
    );
    assert_eq!(crate::filter::ports(&f), Some((53, 41000)));
    assert_eq!(f.destination.clone().expect("dst").pod_name, "client");
    assert_eq!(crate::convert::is_reply(&f), Some(true));
    assert!(f.reply);
    // Cilium's DNS proxy observes at the pod's egress, answers included.
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    let l7 = f.l7.clone().expect("l7");
    assert_eq!(l7.r#type, L7FlowType::Response as i32);
    assert_eq!(l7.latency_ns, 1_200_000);
    assert_eq!(
        dns_of(&f),
        &Dns {
            query: "api.example.com.".into(),
            ips: vec!["192.0.2.10".into(), "192.0.2.11".into()],
            ttl: 30,
            cnames: vec!["edge.example.net.".into()],
            observation_source: "proxy".into(),
            rcode: 0,
            qtypes: vec!["A".into()],
            rrtypes: vec!["CNAME".into(), "A".into(), "A".into()],
        }
    );
    assert_eq!(
        f.summary,
        "DNS Answer \"192.0.2.10,192.0.2.11\" CNAMEs: \"edge.example.net.\" TTL: 30 \
         (Proxy api.example.com. A)"
    );
    assert_eq!(
        crate::print::compact(&f),
        "May  1 10:00:00.001: default/client:41000 (ID:256) <- 192.0.2.53:53 (world) \
         dns-response proxy FORWARDED (DNS Answer \"192.0.2.10,192.0.2.11\" CNAMEs: \
         \"edge.example.net.\" TTL: 30 (Proxy api.example.com. A))"
    );
}

#[test]
fn failed_and_refused_answers_name_their_response_code() {
    let nx = DnsRecord {
        query: "nope.example.com.".into(),
        rcode: 3,
        ips: vec![],
        cnames: vec![],
        rrtypes: vec![],
        ttl: 0,
        ..answer()
    };
    let f = dns_to_flow(&nx, &store(), "n");
    assert_eq!(dns_of(&f).rcode, 3);
    assert_eq!(
        f.summary,
        "DNS Answer RCode: Non-Existent Domain TTL: 0 (Proxy nope.example.com. A)"
    );
    let denied = DnsRecord {
        verdict: L7Verdict::Dropped,
        rule: 0,
        query: "evil.example.org.".into(),
        qtypes: vec!["A".into(), "AAAA".into()],
        reason: Some("no rule matched".into()),
        ..query()
    };
    let f = dns_to_flow(&denied, &store(), "n");
    assert_eq!(f.verdict, Verdict::Dropped as i32);
    assert_eq!(f.summary, "DNS Query evil.example.org. A,AAAA");
    let refused = DnsRecord {
        record_type: L7RecordType::Response,
        rcode: 5,
        ..denied
    };
    let f = dns_to_flow(&refused, &store(), "n");
    assert_eq!(
        f.summary,
        "DNS Answer RCode: Query Refused TTL: 0 (Proxy evil.example.org. A,AAAA)"
    );
    assert_eq!(crate::print::event_summary(&f), "dns-response proxy");
}

#[test]
fn an_answer_with_only_a_cname_and_dns_over_tcp() {
    let r = DnsRecord {
        proto: 6,
        ips: vec![],
        rrtypes: vec!["CNAME".into()],
        ..answer()
    };
    let f = dns_to_flow(&r, &store(), "n");
    assert!(matches!(
        f.l4.as_ref().and_then(|l| l.protocol.as_ref()),
        Some(layer4::Protocol::Tcp(t)) if (t.source_port, t.destination_port) == (53, 41000)
    ));
    assert_eq!(
        f.summary,
        "DNS Answer CNAMEs: \"edge.example.net.\" TTL: 30 (Proxy api.example.com. A)"
    );
}

#[test]
fn response_code_names_are_gopackets() {
    assert_eq!(rcode_text(0), "No Error");
    assert_eq!(rcode_text(2), "Server Failure");
    assert_eq!(rcode_text(5), "Query Refused");
    assert_eq!(rcode_text(12), "Unknown");
}
