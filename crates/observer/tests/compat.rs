//! A Hubble client built from the independent copy of Hubble's protos in tests/hubble-proto/
//! reads a running observer server: what `hubble observe` would see.

use std::sync::Arc;

use ciliate_model::l7::{DnsRecord, HttpRecord, KafkaRecord, L7RecordType, L7Verdict};
use ciliate_model::monitor::{EventKind, MonitorEvent};
use ciliate_observer::proto::flow::LostEventSource;
use ciliate_observer::store::Snapshot;
use ciliate_observer::{Observer, ObserverConfig};

#[allow(clippy::all, dead_code, missing_docs, missing_debug_implementations)]
mod hubble {
    pub mod flow {
        include!(concat!(env!("OUT_DIR"), "/hubble_compat/flow.rs"));
    }
    pub mod relay {
        include!(concat!(env!("OUT_DIR"), "/hubble_compat/relay.rs"));
    }
    pub mod observer {
        include!(concat!(env!("OUT_DIR"), "/hubble_compat/observer.rs"));
    }
}

mod common;

use common::{
    client_and_server_pods, observer_on_node_1, pod_endpoint, serve_in_tempdir, tcp_syn as event,
};
use hubble::flow as hf;
use hubble::observer as ho;

#[tokio::test]
async fn a_hubble_client_reads_flows_and_status() {
    let observer = observer_on_node_1(16, client_and_server_pods());
    observer.observe(&event(EventKind::Trace, 5, 80));
    observer.observe(&event(EventKind::Drop, 133, 443));
    observer.lost(3, LostEventSource::ObserverEventsQueue);

    let served = serve_in_tempdir(&observer);
    // Connect with the generated client of the *test* protos, over the unix socket.
    let channel = served.channel().await;
    let mut client = ho::observer_client::ObserverClient::new(channel);

    let status = client
        .server_status(ho::ServerStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        (status.num_flows, status.max_flows, status.seen_flows),
        (2, 16, 2)
    );
    assert_eq!(status.version, "0.1.0-test");
    assert_eq!(status.num_connected_nodes, Some(1));

    let nodes = client
        .get_nodes(ho::GetNodesRequest {})
        .await
        .expect("nodes")
        .into_inner();
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(nodes.nodes[0].name, "default/node-1");
    assert_eq!(
        nodes.nodes[0].state,
        hubble::relay::NodeState::NodeConnected as i32
    );

    let mut stream = client
        .get_flows(ho::GetFlowsRequest {
            number: 10,
            ..Default::default()
        })
        .await
        .expect("flows")
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = stream.message().await.expect("message") {
        got.push(r);
    }
    assert_eq!(got.len(), 3);
    let Some(ho::get_flows_response::ResponseTypes::Flow(f)) = &got[0].response_types else {
        panic!("not a flow: {:?}", got[0]);
    };
    assert_eq!(got[0].node_name, "default/node-1");
    assert_eq!(f.verdict, hf::Verdict::Forwarded as i32);
    assert_eq!(f.r#type, hf::FlowType::L3L4 as i32);
    assert_eq!(
        f.time.map(|t| (t.seconds, t.nanos)),
        Some((1_714_557_600, 500_000_000))
    );
    let ip = f.ip.clone().expect("ip");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str(), ip.ip_version),
        ("10.200.0.2", "10.200.0.3", hf::IpVersion::IPv4 as i32)
    );
    let (src, dst) = (
        f.source.clone().expect("src"),
        f.destination.clone().expect("dst"),
    );
    assert_eq!(
        (
            src.namespace.as_str(),
            src.pod_name.as_str(),
            src.id,
            src.identity
        ),
        ("default", "client", 1, 256)
    );
    assert_eq!(
        (dst.pod_name.as_str(), dst.labels.as_slice()),
        ("server", &["k8s:app=server".to_owned()][..])
    );
    let Some(hf::layer4::Protocol::Tcp(tcp)) = f.l4.clone().and_then(|l| l.protocol) else {
        panic!("no TCP: {f:?}");
    };
    assert_eq!((tcp.source_port, tcp.destination_port), (41000, 80));
    assert!(tcp.flags.expect("flags").syn);
    assert_eq!(
        f.event_type,
        Some(hf::CiliumEventType {
            r#type: 4,
            sub_type: 5
        })
    );
    assert_eq!(
        f.trace_observation_point,
        hf::TraceObservationPoint::FromEndpoint as i32
    );
    assert_eq!(f.traffic_direction, hf::TrafficDirection::Egress as i32);
    assert_eq!(f.is_reply, Some(false));
    assert_eq!(f.node_name, "default/node-1");

    let Some(ho::get_flows_response::ResponseTypes::Flow(d)) = &got[1].response_types else {
        panic!("not a flow: {:?}", got[1]);
    };
    assert_eq!(d.verdict, hf::Verdict::Dropped as i32);
    assert_eq!(d.drop_reason_desc, hf::DropReason::PolicyDenied as i32);
    let Some(ho::get_flows_response::ResponseTypes::LostEvents(l)) = &got[2].response_types else {
        panic!("not lost events: {:?}", got[2]);
    };
    assert_eq!(
        (l.source, l.num_events_lost),
        (hf::LostEventSource::ObserverEventsQueue as i32, 3)
    );

    // A whitelist on the drop reason (event type 1, sub type 133), as Hubble's CLI sends it.
    let mut stream = client
        .get_flows(ho::GetFlowsRequest {
            number: 10,
            whitelist: vec![hf::FlowFilter {
                verdict: vec![hf::Verdict::Dropped as i32],
                destination_port: vec!["443".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("flows")
        .into_inner();
    let mut flows = 0;
    while let Some(r) = stream.message().await.expect("message") {
        if let Some(ho::get_flows_response::ResponseTypes::Flow(f)) = r.response_types {
            assert_eq!(f.verdict, hf::Verdict::Dropped as i32);
            flows += 1;
        }
    }
    assert_eq!(flows, 1);

    // follow: a flow that happens after the request arrives.
    let mut stream = client
        .get_flows(ho::GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("flows")
        .into_inner();
    observer.observe(&event(EventKind::Trace, 0, 8080));
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("a message");
    let Some(ho::get_flows_response::ResponseTypes::Flow(f)) = r.response_types else {
        panic!("not a flow");
    };
    assert_eq!(
        f.trace_observation_point,
        hf::TraceObservationPoint::ToEndpoint as i32
    );

    // A bad filter is refused with a message naming it.
    let err = client
        .get_flows(ho::GetFlowsRequest {
            whitelist: vec![hf::FlowFilter {
                source_ip: vec!["nope".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("source_ip"), "{}", err.message());

    drop(stream);
    served.stop_within_5s().await;
}

/// A served observer and a Hubble client of it.
struct Served {
    client: ho::observer_client::ObserverClient<tonic::transport::Channel>,
    server: common::ServedObserver,
}

async fn serve(observer: &Arc<Observer>) -> Served {
    let server = serve_in_tempdir(observer);
    Served {
        client: ho::observer_client::ObserverClient::new(server.channel().await),
        server,
    }
}

/// The deciding policy, as a client of Hubble's own protos reads it: the four lists under
/// Hubble's field numbers, the Policy message whole.
#[tokio::test]
async fn a_hubble_client_reads_which_policy_decided() {
    let mut store = Snapshot::default();
    store.rules.insert(
        7,
        ciliate_observer::policy_names::policy(
            ciliate_model::policy::PolicyKind::CiliumNetworkPolicy,
            Some("default"),
            "server-deny-other",
            Some("uid-1"),
            3,
        ),
    );
    let observer = observer_on_node_1(16, store);
    observer.observe(&MonitorEvent {
        rule: 7,
        reason: "ingress denied (L3-Only)".into(),
        ..event(EventKind::PolicyVerdict, 181, 80)
    });
    observer.observe(&MonitorEvent {
        reason: "egress allowed (L3-L4)".into(),
        rule: 7,
        ..event(EventKind::PolicyVerdict, 0, 443)
    });
    let mut served = serve(&observer).await;
    let got = flows(&mut served.client, vec![]).await;
    assert_eq!(got.len(), 2);
    let want = hf::Policy {
        name: "server-deny-other".into(),
        namespace: "default".into(),
        labels: vec![
            "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy".into(),
            "k8s:io.cilium.k8s.policy.name=server-deny-other".into(),
            "k8s:io.cilium.k8s.policy.namespace=default".into(),
            "k8s:io.cilium.k8s.policy.uid=uid-1".into(),
        ],
        revision: 3,
        kind: "CiliumNetworkPolicy".into(),
    };
    assert_eq!(got[0].ingress_denied_by, vec![want.clone()]);
    assert!(got[0].egress_denied_by.is_empty() && got[0].ingress_allowed_by.is_empty());
    assert_eq!(got[1].egress_allowed_by, vec![want]);
    assert!(got[1].ingress_allowed_by.is_empty());
    served.server.stop_within_5s().await;
}

fn http_record(
    record_type: L7RecordType,
    method: &str,
    path: &str,
    code: u16,
    verdict: L7Verdict,
) -> HttpRecord {
    HttpRecord {
        time_ns: 1_714_557_601_000_000_000,
        record_type,
        endpoint: 1,
        egress: true,
        source: "10.200.0.2:41000".parse().expect("addr"),
        destination: "10.200.0.3:80".parse().expect("addr"),
        source_identity: 256,
        destination_identity: 257,
        verdict,
        rule: 1,
        method: method.into(),
        url: format!("http://server{path}"),
        protocol: "HTTP/1.1".into(),
        code,
        headers: vec![("x-request-id".into(), format!("{method}{path}"))],
        latency_ns: if record_type == L7RecordType::Response {
            3_000_000
        } else {
            0
        },
        reason: None,
    }
}

async fn flows(
    client: &mut ho::observer_client::ObserverClient<tonic::transport::Channel>,
    whitelist: Vec<hf::FlowFilter>,
) -> Vec<hf::Flow> {
    let mut stream = client
        .get_flows(ho::GetFlowsRequest {
            number: 100,
            whitelist,
            ..Default::default()
        })
        .await
        .expect("flows")
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = stream.message().await.expect("message") {
        if let Some(ho::get_flows_response::ResponseTypes::Flow(f)) = r.response_types {
            got.push(f);
        }
    }
    got
}

#[tokio::test]
#[allow(deprecated)] // Hubble marks Summary deprecated, and still prints it.
async fn a_hubble_client_reads_l7_flows_through_l7_filters() {
    let observer = observer_on_node_1(64, client_and_server_pods());
    use L7RecordType::{Request, Response};
    use L7Verdict::{Dropped, Forwarded};
    observer.observe(&event(EventKind::Trace, 5, 80));
    observer.observe_http_batch(&[
        http_record(Request, "GET", "/api/v1", 0, Forwarded),
        http_record(Response, "GET", "/api/v1", 200, Forwarded),
        http_record(Request, "POST", "/admin", 0, Dropped),
        http_record(Response, "POST", "/admin", 403, Dropped),
    ]);
    let mut served = serve(&observer).await;
    let client = &mut served.client;

    let l7 = hf::EventTypeFilter {
        r#type: 129,
        match_sub_type: false,
        sub_type: 0,
    };
    // `hubble observe --type l7`: the four HTTP flows, as Hubble's own schema decodes them.
    let all = flows(
        client,
        vec![hf::FlowFilter {
            event_type: vec![l7],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(all.len(), 4);
    let resp = &all[1];
    assert_eq!(resp.r#type, hf::FlowType::L7 as i32);
    assert_eq!(resp.is_reply, Some(true));
    assert_eq!(resp.summary, "HTTP/1.1 200 3ms (GET http://server/api/v1)");
    assert_eq!(resp.source.clone().expect("src").pod_name, "server");
    assert_eq!(resp.destination.clone().expect("dst").pod_name, "client");
    let l7rec = resp.l7.clone().expect("l7");
    assert_eq!(l7rec.r#type, hf::L7FlowType::Response as i32);
    assert_eq!(l7rec.latency_ns, 3_000_000);
    let Some(hf::layer7::Record::Http(h)) = l7rec.record else {
        panic!("no HTTP record: {resp:?}");
    };
    assert_eq!(
        (
            h.code,
            h.method.as_str(),
            h.url.as_str(),
            h.protocol.as_str()
        ),
        (200, "GET", "http://server/api/v1", "HTTP/1.1")
    );
    assert_eq!(
        h.headers,
        vec![hf::HttpHeader {
            key: "X-Request-Id".into(),
            value: "GET/api/v1".into()
        }]
    );
    assert_eq!(
        resp.event_type,
        Some(hf::CiliumEventType {
            r#type: 129,
            sub_type: 0
        })
    );

    // `--http-status 4+ --verdict DROPPED`; `--http-method get --http-path ^/api`;
    // `--protocol http`; `--http-url admin`; `--http-header X-Request-Id:POST/admin`.
    let codes = |fs: &[hf::Flow]| -> Vec<(String, u32)> {
        fs.iter()
            .map(|f| match f.l7.clone().and_then(|l| l.record) {
                Some(hf::layer7::Record::Http(h)) => (h.method, h.code),
                _ => (String::new(), 999),
            })
            .collect()
    };
    let got = flows(
        client,
        vec![hf::FlowFilter {
            http_status_code: vec!["4+".into()],
            verdict: vec![hf::Verdict::Dropped as i32],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(codes(&got), vec![("POST".to_owned(), 403)]);
    let got = flows(
        client,
        vec![hf::FlowFilter {
            http_method: vec!["get".into()],
            http_path: vec!["^/api".into()],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(
        codes(&got),
        vec![("GET".to_owned(), 0), ("GET".to_owned(), 200)]
    );
    let got = flows(
        client,
        vec![hf::FlowFilter {
            protocol: vec!["http".into()],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(got.len(), 4);
    let got = flows(
        client,
        vec![hf::FlowFilter {
            http_url: vec!["admin".into()],
            http_header: vec![hf::HttpHeader {
                key: "X-Request-Id".into(),
                value: "POST/admin".into(),
            }],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(
        codes(&got),
        vec![("POST".to_owned(), 0), ("POST".to_owned(), 403)]
    );

    // Follow with an L7 filter: a packet flow and a GET arrive, only the GET is sent.
    let mut stream = client
        .get_flows(ho::GetFlowsRequest {
            follow: true,
            whitelist: vec![hf::FlowFilter {
                event_type: vec![l7],
                http_method: vec!["GET".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("flows")
        .into_inner();
    // (number 0: nothing from the ring, only what comes.)
    observer.observe(&event(EventKind::Trace, 5, 80));
    observer.observe_http(&http_record(Request, "GET", "/live", 0, Forwarded));
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("a message");
    let Some(ho::get_flows_response::ResponseTypes::Flow(f)) = r.response_types else {
        panic!("not a flow");
    };
    assert_eq!(f.summary, "HTTP/1.1 GET http://server/live");

    // Bad L7 filters are refused, never ignored.
    for (filter, field) in [
        (
            hf::FlowFilter {
                http_path: vec!["(".into()],
                ..Default::default()
            },
            "http_path",
        ),
        (
            hf::FlowFilter {
                http_status_code: vec!["2xx".into()],
                ..Default::default()
            },
            "http_status_code",
        ),
        (
            hf::FlowFilter {
                http_method: vec!["GET".into()],
                event_type: vec![hf::EventTypeFilter {
                    r#type: 1,
                    match_sub_type: false,
                    sub_type: 0,
                }],
                ..Default::default()
            },
            "http_method",
        ),
    ] {
        let err = client
            .get_flows(ho::GetFlowsRequest {
                whitelist: vec![filter],
                ..Default::default()
            })
            .await
            .expect_err("invalid");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }

    drop(stream);
    served.server.stop_within_5s().await;
}

fn dns_record(record_type: L7RecordType, query: &str, rcode: u16, verdict: L7Verdict) -> DnsRecord {
    let response = record_type == L7RecordType::Response;
    DnsRecord {
        time_ns: 1_714_557_602_000_000_000,
        record_type,
        endpoint: 1,
        source: "10.200.0.2:41053".parse().expect("addr"),
        destination: "192.0.2.53:53".parse().expect("addr"),
        proto: 17,
        source_identity: 256,
        destination_identity: 2,
        verdict,
        rule: 1,
        query: query.into(),
        qtypes: vec!["A".into()],
        rcode,
        ips: if response && rcode == 0 {
            vec!["192.0.2.80".parse().expect("ip")]
        } else {
            vec![]
        },
        ttl: if response { 60 } else { 0 },
        cnames: vec![],
        rrtypes: if response && rcode == 0 {
            vec!["A".into()]
        } else {
            vec![]
        },
        latency_ns: if response { 700_000 } else { 0 },
        reason: None,
    }
}

#[tokio::test]
#[allow(deprecated)] // Hubble marks Summary deprecated, and still prints it.
async fn a_hubble_client_reads_dns_and_kafka_flows_through_their_filters() {
    let mut store = Snapshot::default();
    store.endpoints.insert(
        "10.200.0.2".parse().expect("ip"),
        pod_endpoint(1, "client").into(),
    );
    let observer = observer_on_node_1(64, store);
    use L7RecordType::{Request, Response};
    use L7Verdict::{Dropped, Forwarded};
    observer.observe(&event(EventKind::Trace, 5, 53));
    observer.observe_http(&http_record(Request, "GET", "/", 0, Forwarded));
    for r in [
        dns_record(Request, "api.example.com.", 0, Forwarded),
        dns_record(Response, "api.example.com.", 0, Forwarded),
        dns_record(Request, "nope.example.com.", 0, Forwarded),
        dns_record(Response, "nope.example.com.", 3, Forwarded),
        dns_record(Request, "evil.example.org.", 0, Dropped),
    ] {
        observer.observe_dns(&r);
    }
    observer.observe_kafka(&KafkaRecord {
        time_ns: 1_714_557_603_000_000_000,
        record_type: Request,
        endpoint: 1,
        egress: true,
        source: "10.200.0.2:42000".parse().expect("addr"),
        destination: "10.200.0.9:9092".parse().expect("addr"),
        source_identity: 256,
        destination_identity: 300,
        verdict: Forwarded,
        rule: 1,
        api_key: "produce".into(),
        api_version: 7,
        correlation_id: 5,
        topic: "orders".into(),
        error_code: 0,
        latency_ns: 0,
        reason: None,
    });
    let mut served = serve(&observer).await;
    let client = &mut served.client;
    let queries = |fs: &[hf::Flow]| -> Vec<(String, bool)> {
        fs.iter()
            .map(|f| match f.l7.clone().and_then(|l| l.record) {
                Some(hf::layer7::Record::Dns(d)) => (d.query, f.is_reply == Some(true)),
                Some(hf::layer7::Record::Kafka(k)) => (format!("kafka {}", k.topic), false),
                _ => (String::new(), false),
            })
            .collect()
    };

    // `hubble observe --protocol dns`: the five DNS flows, in Hubble's own schema.
    let dns = flows(
        client,
        vec![hf::FlowFilter {
            protocol: vec!["dns".into()],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(dns.len(), 5);
    let answer = &dns[1];
    assert_eq!(answer.r#type, hf::FlowType::L7 as i32);
    assert_eq!(answer.is_reply, Some(true));
    assert_eq!(
        answer.traffic_direction,
        hf::TrafficDirection::Egress as i32
    );
    assert_eq!(answer.destination.clone().expect("dst").pod_name, "client");
    assert_eq!(
        answer.summary,
        "DNS Answer \"192.0.2.80\" TTL: 60 (Proxy api.example.com. A)"
    );
    let Some(hf::Layer4 {
        protocol: Some(hf::layer4::Protocol::Udp(udp)),
    }) = answer.l4
    else {
        panic!("not UDP: {answer:?}");
    };
    assert_eq!((udp.source_port, udp.destination_port), (53, 41053));
    let l7 = answer.l7.clone().expect("l7");
    assert_eq!(l7.r#type, hf::L7FlowType::Response as i32);
    assert_eq!(l7.latency_ns, 700_000);
    assert_eq!(
        l7.record,
        Some(hf::layer7::Record::Dns(hf::Dns {
            query: "api.example.com.".into(),
            ips: vec!["192.0.2.80".into()],
            ttl: 60,
            cnames: vec![],
            observation_source: "proxy".into(),
            rcode: 0,
            qtypes: vec!["A".into()],
            rrtypes: vec!["A".into()],
        }))
    );

    // `--dns-query`-style regexes (Hubble's `dns_query`), with the verdict and reply.
    let got = flows(
        client,
        vec![hf::FlowFilter {
            dns_query: vec![r"example\.com\.$".into()],
            reply: vec![true],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(
        queries(&got),
        vec![
            ("api.example.com.".to_owned(), true),
            ("nope.example.com.".to_owned(), true)
        ]
    );
    let got = flows(
        client,
        vec![hf::FlowFilter {
            protocol: vec!["dns".into()],
            verdict: vec![hf::Verdict::Dropped as i32],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(queries(&got), vec![("evil.example.org.".to_owned(), false)]);

    // `--protocol kafka` (a Ciliate extension: Hubble's filter knows only http and dns).
    let got = flows(
        client,
        vec![hf::FlowFilter {
            protocol: vec!["kafka".into()],
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(queries(&got), vec![("kafka orders".to_owned(), false)]);
    let Some(hf::layer7::Record::Kafka(k)) = got[0].l7.clone().and_then(|l| l.record) else {
        panic!("no Kafka record");
    };
    assert_eq!(
        k,
        hf::Kafka {
            error_code: 0,
            api_version: 7,
            api_key: "produce".into(),
            correlation_id: 5,
            topic: "orders".into(),
        }
    );

    let err = client
        .get_flows(ho::GetFlowsRequest {
            whitelist: vec![hf::FlowFilter {
                dns_query: vec!["(".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("dns_query"), "{}", err.message());

    served.server.stop_within_5s().await;
}

/// Throughput of the observer, printed, never asserted: events named and kept in the ring
/// (what the agent does per event), then the ring's flows built and filtered (what a client's
/// read costs):
/// `cargo test -p ciliate-observer --release --test compat -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn throughput() {
    let mut store = Snapshot::default();
    store.endpoints.insert(
        "10.200.0.2".parse().expect("ip"),
        pod_endpoint(1, "client").into(),
    );
    let store = Arc::new(store);
    let observer = Observer::new(
        ObserverConfig {
            node_name: "n".into(),
            capacity: 4095,
        },
        Arc::clone(&store) as Arc<dyn ciliate_observer::Store>,
    );
    let filters = ciliate_observer::filter::FlowFilters::compile(
        &[ciliate_observer::proto::flow::FlowFilter {
            source_pod: vec!["default/".into()],
            ..Default::default()
        }],
        &[],
    )
    .expect("filters");
    let ev = ciliate_observer::convert::record_of(&event(EventKind::Trace, 5, 80));
    // As the datapath's reader hands them over: in batches.
    let batch = vec![ev; 1024];
    let n = 1_000_000u32;
    let start = std::time::Instant::now();
    for _ in 0..n / 1024 {
        observer.observe_records(&batch);
    }
    let kept = n / 1024 * 1024;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{kept} events named, counted and kept in {secs:.2}s: {:.0} events/s",
        f64::from(kept) / secs
    );
    let start = std::time::Instant::now();
    let mut matched = 0u32;
    let mut read = 0u32;
    for _ in 0..25 {
        for e in observer.snapshot() {
            read += 1;
            if e.entry.flow().is_some_and(|f| filters.matches(&f)) {
                matched += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{read} flows built from the ring and filtered in {secs:.2}s: {:.0} events/s ({matched} matched)", f64::from(read) / secs);
}

/// Bursts of 8192 events at up to 1/µs, every 100 ms (82k events/s: 10k connections/s at ~8
/// events each), through a channel the size of the datapath's (4096 slots), read once by
/// one async task (`Observer::run`) and once by the intake's threads: how many are lost.
/// `cargo test -p ciliate-observer --release --test compat -- --ignored --nocapture bursts`.
#[test]
#[ignore = "a measurement, not a test"]
fn bursts() {
    const CHANNEL: usize = 4096;
    const BURST: usize = 8192;
    const BURSTS: usize = 40;
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);
    // CILIATE_BENCH_PACE_NS: nanoseconds between the events of a burst (default 1000).
    let pace = std::time::Duration::from_nanos(
        std::env::var("CILIATE_BENCH_PACE_NS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000),
    );
    let send = |tx: tokio::sync::broadcast::Sender<MonitorEvent>| {
        std::thread::spawn(move || {
            let ev = event(EventKind::Trace, 5, 80);
            for _ in 0..BURSTS {
                let start = std::time::Instant::now();
                for i in 0..BURST {
                    // At most one event a microsecond: about the datapath reader's own pace
                    // (ring read, decode, time stamp), a million events/s within a burst.
                    while start.elapsed() < pace * i as u32 {
                        std::hint::spin_loop();
                    }
                    let _ = tx.send(ev.clone());
                }
                std::thread::sleep(EVERY.saturating_sub(start.elapsed()));
            }
        })
    };
    let observer = || {
        Arc::new(Observer::new(
            ObserverConfig {
                node_name: "n".into(),
                capacity: 4095,
            },
            Arc::new(Snapshot::default()),
        ))
    };
    let total = (BURST * BURSTS) as u64;

    let o = observer();
    let (tx, rx) = tokio::sync::broadcast::channel(CHANNEL);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let task = rt.spawn(Arc::clone(&o).run(rx));
    let start = std::time::Instant::now();
    send(tx).join().expect("sender");
    rt.block_on(task).expect("task");
    println!(
        "async task: {total} events in bursts of {BURST}: {} observed, {} lost, {:.0} events/s",
        o.seen_flows(),
        o.lost_events(),
        o.seen_flows() as f64 / start.elapsed().as_secs_f64()
    );

    let o = observer();
    let (tx, rx) = tokio::sync::broadcast::channel(CHANNEL);
    let start = std::time::Instant::now();
    let intake = ciliate_observer::intake::spawn(
        Arc::clone(&o),
        rx,
        ciliate_observer::intake::DEFAULT_INTAKE_CAPACITY,
    )
    .expect("threads");
    send(tx).join().expect("sender");
    while Arc::strong_count(&o) > 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    println!(
        "intake: {total} events in bursts of {BURST}: {} observed, {} lost ({} at the intake), {:.0} events/s",
        o.seen_flows(),
        o.lost_events(),
        intake.lost_events(),
        o.seen_flows() as f64 / start.elapsed().as_secs_f64()
    );
}
