use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};

use super::*;
use crate::convert::tests::store;
use crate::proto::flow::DropReason;
use crate::ring::{Observer, ObserverConfig};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// `GET http://web/api?x=1` from the client pod to the web pod, through the client's egress
/// redirect, at 2024-05-01T10:00:00.5Z.
pub(crate) fn request() -> HttpRecord {
    HttpRecord {
        time_ns: 1_714_557_600_500_000_000,
        record_type: L7RecordType::Request,
        endpoint: 1,
        egress: true,
        source: SocketAddrV4::new(CLIENT, 40000),
        destination: SocketAddrV4::new(SERVER, 8080),
        source_identity: 256,
        destination_identity: 257,
        verdict: L7Verdict::Forwarded,
        rule: 3,
        method: "GET".into(),
        url: "http://web/api?x=1".into(),
        protocol: "HTTP/1.1".into(),
        code: 0,
        headers: vec![
            ("user-agent".into(), "curl/8.5.0".into()),
            ("x-request-id".into(), "abc".into()),
            ("accept".into(), "*/*".into()),
            ("x-forwarded-for".into(), "a".into()),
            ("X-Forwarded-For".into(), "b".into()),
        ],
        latency_ns: 0,
        reason: None,
    }
}

/// The response to [`request`]: 200 after 5.9 ms.
pub(crate) fn response() -> HttpRecord {
    HttpRecord {
        time_ns: 1_714_557_600_505_900_000,
        record_type: L7RecordType::Response,
        code: 200,
        latency_ns: 5_900_000,
        headers: vec![("content-type".into(), "text/plain".into())],
        ..request()
    }
}

fn http_of(f: &Flow) -> &Http {
    http(f).expect("an HTTP record")
}

#[test]
fn a_request_becomes_an_l7_flow_with_both_pods() {
    let f = http_to_flow(&request(), &store(), "node-a");
    assert_eq!(f.r#type, FlowType::L7 as i32);
    assert_eq!(f.verdict, Verdict::Forwarded as i32);
    assert_eq!(f.node_name, "node-a");
    assert_eq!(
        f.time.map(|t| (t.seconds, t.nanos)),
        Some((1_714_557_600, 500_000_000))
    );
    assert_eq!(
        f.event_type,
        Some(CiliumEventType {
            r#type: 129,
            sub_type: 0
        })
    );
    let ip = f.ip.clone().expect("ip");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str()),
        ("10.200.0.2", "10.200.0.3")
    );
    assert_eq!(ip.ip_version, IpVersion::IPv4 as i32);
    assert_eq!(crate::filter::ports(&f), Some((40000, 8080)));
    let src = f.source.clone().expect("source");
    assert_eq!(
        (
            src.id,
            src.identity,
            src.namespace.as_str(),
            src.pod_name.as_str()
        ),
        (1, 256, "default", "client")
    );
    assert_eq!(src.labels, vec!["k8s:app=client"]);
    let dst = f.destination.clone().expect("destination");
    assert_eq!(
        (
            dst.id,
            dst.identity,
            dst.namespace.as_str(),
            dst.pod_name.as_str()
        ),
        (2, 257, "prod", "web-1")
    );
    assert_eq!(crate::convert::is_reply(&f), Some(false));
    assert!(!f.reply);
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    let l7 = f.l7.clone().expect("l7");
    assert_eq!(l7.r#type, L7FlowType::Request as i32);
    assert_eq!(l7.latency_ns, 0);
    let h = http_of(&f);
    assert_eq!(
        (
            h.code,
            h.method.as_str(),
            h.url.as_str(),
            h.protocol.as_str()
        ),
        (0, "GET", "http://web/api?x=1", "HTTP/1.1")
    );
    // Go's canonical names, sorted by name, repeated values in order.
    let headers: Vec<(&str, &str)> = h
        .headers
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        headers,
        vec![
            ("Accept", "*/*"),
            ("User-Agent", "curl/8.5.0"),
            ("X-Forwarded-For", "a"),
            ("X-Forwarded-For", "b"),
            ("X-Request-Id", "abc"),
        ]
    );
    assert_eq!(f.summary, "HTTP/1.1 GET http://web/api?x=1");
    assert_eq!(f.drop_reason_desc, DropReason::Unknown as i32);
}

#[test]
fn a_response_runs_from_the_server_to_the_client_with_its_latency() {
    let f = http_to_flow(&response(), &store(), "node-a");
    let ip = f.ip.clone().expect("ip");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str()),
        ("10.200.0.3", "10.200.0.2")
    );
    assert_eq!(crate::filter::ports(&f), Some((8080, 40000)));
    assert_eq!(f.source.clone().expect("src").pod_name, "web-1");
    assert_eq!(f.source.clone().expect("src").identity, 257);
    assert_eq!(f.destination.clone().expect("dst").pod_name, "client");
    assert_eq!(f.destination.clone().expect("dst").identity, 256);
    assert_eq!(crate::convert::is_reply(&f), Some(true));
    assert!(f.reply);
    // Still the egress redirect's flow.
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    let l7 = f.l7.clone().expect("l7");
    assert_eq!(l7.r#type, L7FlowType::Response as i32);
    assert_eq!(l7.latency_ns, 5_900_000);
    assert_eq!(http_of(&f).code, 200);
    assert_eq!(f.summary, "HTTP/1.1 200 5ms (GET http://web/api?x=1)");
    assert_eq!(
        crate::print::compact(&f),
        "May  1 10:00:00.505: default/client:40000 (ID:256) <- prod/web-1:8080 (ID:257) \
         http-response FORWARDED (HTTP/1.1 200 5ms (GET http://web/api?x=1))"
    );
}

#[test]
fn verdicts_and_directions_map_as_hubble_maps_them() {
    let s = store();
    // (record, verdict, direction, compact line without its time)
    let denied = HttpRecord {
        verdict: L7Verdict::Dropped,
        rule: 0,
        method: "DELETE".into(),
        url: "http://web/admin".into(),
        reason: Some("no rule matched".into()),
        ..request()
    };
    let forbidden = HttpRecord {
        record_type: L7RecordType::Response,
        code: 403,
        latency_ns: 120_000,
        ..denied.clone()
    };
    let bad = HttpRecord {
        verdict: L7Verdict::Error,
        record_type: L7RecordType::Response,
        code: 400,
        method: String::new(),
        url: String::new(),
        ..request()
    };
    let ingress = HttpRecord {
        egress: false,
        endpoint: 2,
        ..request()
    };
    let cases = [
        (
            denied,
            Verdict::Dropped,
            TrafficDirection::Egress,
            "default/client:40000 (ID:256) -> prod/web-1:8080 (ID:257) http-request DROPPED \
             (HTTP/1.1 DELETE http://web/admin)",
        ),
        (
            forbidden,
            Verdict::Dropped,
            TrafficDirection::Egress,
            "default/client:40000 (ID:256) <- prod/web-1:8080 (ID:257) http-response DROPPED \
             (HTTP/1.1 403 0ms (DELETE http://web/admin))",
        ),
        (
            bad,
            Verdict::Error,
            TrafficDirection::Egress,
            "default/client:40000 (ID:256) <- prod/web-1:8080 (ID:257) http-response ERROR \
             (HTTP/1.1 400 0ms ( ))",
        ),
        (
            ingress,
            Verdict::Forwarded,
            TrafficDirection::Ingress,
            "default/client:40000 (ID:256) -> prod/web-1:8080 (ID:257) http-request FORWARDED \
             (HTTP/1.1 GET http://web/api?x=1)",
        ),
    ];
    for (record, verdict, direction, line) in cases {
        let f = http_to_flow(&record, &s, "n");
        assert_eq!(f.verdict, verdict as i32, "{record:?}");
        assert_eq!(f.traffic_direction, direction as i32, "{record:?}");
        let compact = crate::print::compact(&f);
        let (_, rest) = compact.split_once(": ").expect("time prefix");
        assert_eq!(rest, line);
    }
}

#[test]
fn a_peer_that_is_no_local_pod_is_named_by_its_identity() {
    let r = HttpRecord {
        destination: SocketAddrV4::new(OUTSIDE, 443),
        destination_identity: 2,
        ..request()
    };
    let f = http_to_flow(&r, &store(), "n");
    let dst = f.destination.clone().expect("dst");
    assert_eq!((dst.id, dst.identity), (0, 2));
    assert_eq!(dst.labels, vec!["reserved:world"]);
    assert!(dst.pod_name.is_empty());
    assert!(crate::print::compact(&f).contains("-> 192.0.2.7:443 (world) http-request"));
}

#[test]
fn a_service_frontend_on_either_end_is_named() {
    let r = HttpRecord {
        destination: SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80),
        ..request()
    };
    let f = http_to_flow(&r, &store(), "n");
    assert_eq!(
        f.destination_service.map(|s| (s.namespace, s.name)),
        Some(("prod".into(), "web".into()))
    );
    let f = http_to_flow(
        &HttpRecord {
            record_type: L7RecordType::Response,
            code: 204,
            ..r
        },
        &store(),
        "n",
    );
    assert_eq!(f.source_service.map(|s| s.name), Some("web".to_owned()));
}

#[test]
fn header_names_are_canonical_as_go_makes_them() {
    for (raw, want) in [
        ("content-type", "Content-Type"),
        ("X-REQUEST-ID", "X-Request-Id"),
        ("etag", "Etag"),
        (":authority", ":authority"),
        ("bad header", "bad header"),
        ("", ""),
        ("a--b", "A--B"),
    ] {
        assert_eq!(canonical_header_key(raw), want);
    }
}

#[test]
fn the_observer_keeps_l7_flows_beside_packet_flows_and_counts_them() {
    let o = Observer::new(
        ObserverConfig {
            node_name: "n1".into(),
            capacity: 10,
        },
        Arc::new(store()),
    );
    o.observe(&crate::convert::tests::trace_event());
    o.observe_http(&request());
    o.observe_http_batch(&[response(), request()]);
    o.observe_http_batch(&[]);
    assert_eq!(o.seen_flows(), 4);
    assert_eq!(o.num_flows(), 4);
    let kinds: Vec<i32> = o
        .snapshot()
        .iter()
        .map(|n| n.entry.flow().map_or(-1, |f| f.r#type))
        .collect();
    let (l34, l7) = (FlowType::L3L4 as i32, FlowType::L7 as i32);
    assert_eq!(kinds, vec![l34, l7, l7, l7]);
    let text = o.metrics().render();
    assert!(text.contains(
        "hubble_flows_processed_total{protocol=\"HTTP\",type=\"L7\",subtype=\"HTTP\",verdict=\"FORWARDED\"} 3"
    ));
    assert!(text.contains(
        "hubble_http_requests_total{method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\"} 2"
    ));
}
