//! Golden strings from Hubble's own printer tests (`hubble/pkg/printer/printer_test.go` in
//! cilium/cilium): the same flows must print the same bytes.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::proto::flow::{
    CiliumEventType, Dns, Endpoint, Ethernet, FlowType, Ip, Layer4, Layer7, LostEvent, Service,
    Tcp, Udp,
};
use crate::proto::relay::NodeStatusEvent;

/// Hubble's test flow `f`.
fn hubble_flow() -> Flow {
    Flow {
        time: Some(pbjson_types::Timestamp {
            seconds: 1234,
            nanos: 567_800_000,
        }),
        r#type: FlowType::L3L4 as i32,
        node_name: "k8s1".into(),
        verdict: Verdict::Dropped as i32,
        ip: Some(Ip {
            source: "1.1.1.1".into(),
            destination: "2.2.2.2".into(),
            ..Ip::default()
        }),
        source: Some(Endpoint {
            identity: 4,
            ..Endpoint::default()
        }),
        destination: Some(Endpoint {
            identity: 12345,
            ..Endpoint::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 31793,
                destination_port: 8080,
                ..Tcp::default()
            })),
        }),
        event_type: Some(CiliumEventType {
            r#type: 1,
            sub_type: 133,
        }),
        summary: "TCP Flags: SYN".into(),
        is_reply: Some(pbjson_types::BoolValue { value: false }),
        ..Flow::default()
    }
}

fn flow_response(f: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::Flow(f)),
        ..GetFlowsResponse::default()
    }
}

/// All a printer prints for these responses, stdout then the end of the stream.
fn print(opts: Options, responses: &[GetFlowsResponse]) -> String {
    let mut p = Printer::new(opts);
    let mut out = String::new();
    for r in responses {
        let w = p.write(r).unwrap();
        out.push_str(&w.stdout);
        out.push_str(&w.stderr);
    }
    out.push_str(&p.finish());
    out
}

fn opts(output: Output, node_name: bool) -> Options {
    Options {
        output,
        node_name,
        ..Options::default()
    }
}

#[test]
fn flows_print_as_hubble_printer_tests_expect() {
    let f = flow_response(hubble_flow());
    let cases: [(&str, Options, &str); 8] = [
        (
            "tabular",
            opts(Output::Table, false),
            "TIMESTAMP             SOURCE          DESTINATION    TYPE            VERDICT   SUMMARY\n\
             Jan  1 00:20:34.567   1.1.1.1:31793   2.2.2.2:8080   Policy denied   DROPPED   TCP Flags: SYN\n",
        ),
        (
            "tabular-with-node",
            opts(Output::Table, true),
            "TIMESTAMP             NODE   SOURCE          DESTINATION    TYPE            VERDICT   SUMMARY\n\
             Jan  1 00:20:34.567   k8s1   1.1.1.1:31793   2.2.2.2:8080   Policy denied   DROPPED   TCP Flags: SYN\n",
        ),
        (
            "compact",
            opts(Output::Compact, false),
            "Jan  1 00:20:34.567: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)\n",
        ),
        (
            "compact-with-node",
            opts(Output::Compact, true),
            "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)\n",
        ),
        (
            "json",
            opts(Output::JsonLegacy, false),
            "{\"time\":\"1970-01-01T00:20:34.567800Z\",\"verdict\":\"DROPPED\",\
             \"IP\":{\"source\":\"1.1.1.1\",\"destination\":\"2.2.2.2\"},\
             \"l4\":{\"TCP\":{\"source_port\":31793,\"destination_port\":8080}},\
             \"source\":{\"identity\":4},\"destination\":{\"identity\":12345},\
             \"Type\":\"L3_L4\",\"node_name\":\"k8s1\",\
             \"event_type\":{\"type\":1,\"sub_type\":133},\
             \"is_reply\":false,\"Summary\":\"TCP Flags: SYN\"}\n",
        ),
        (
            "jsonpb",
            opts(Output::JsonPb, false),
            "{\"flow\":{\"time\":\"1970-01-01T00:20:34.567800Z\",\"verdict\":\"DROPPED\",\
             \"IP\":{\"source\":\"1.1.1.1\",\"destination\":\"2.2.2.2\"},\
             \"l4\":{\"TCP\":{\"source_port\":31793,\"destination_port\":8080}},\
             \"source\":{\"identity\":4},\"destination\":{\"identity\":12345},\
             \"Type\":\"L3_L4\",\"node_name\":\"k8s1\",\
             \"event_type\":{\"type\":1,\"sub_type\":133},\
             \"is_reply\":false,\"Summary\":\"TCP Flags: SYN\"}}\n",
        ),
        (
            "dict",
            opts(Output::Dict, false),
            "  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n       TYPE: Policy denied\n    VERDICT: DROPPED\n    SUMMARY: TCP Flags: SYN\n",
        ),
        (
            "dict-with-node",
            opts(Output::Dict, true),
            "  TIMESTAMP: Jan  1 00:20:34.567\n       NODE: k8s1\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n       TYPE: Policy denied\n    VERDICT: DROPPED\n    SUMMARY: TCP Flags: SYN\n",
        ),
    ];
    for (name, o, want) in cases {
        assert_eq!(print(o, std::slice::from_ref(&f)), want, "{name}");
    }
    // Hubble's "jsonpb_with_trace" and "compact-with-trace-id".
    let mut traced = hubble_flow();
    traced.ip_trace_id = Some(crate::proto::flow::IpTraceId {
        trace_id: 1234,
        ip_option_type: 136,
    });
    let traced = [flow_response(traced)];
    assert!(print(opts(Output::JsonPb, false), &traced).contains(
        "\"event_type\":{\"type\":1,\"sub_type\":133},\"ip_trace_id\":{\"trace_id\":\"1234\",\"ip_option_type\":136},\"is_reply\":false,"
    ));
    assert!(print(opts(Output::Compact, true), &traced)
        .ends_with("Policy denied DROPPED (IP Trace ID: 1234; TCP Flags: SYN)\n"));
}

#[test]
fn replies_unknown_directions_and_policy_verdicts() {
    let mut reply = hubble_flow();
    reply.is_reply = Some(pbjson_types::BoolValue { value: true });
    assert_eq!(
        print(opts(Output::Compact, true), &[flow_response(reply)]),
        "Jan  1 00:20:34.567 [k8s1]: 2.2.2.2:8080 (ID:12345) <- 1.1.1.1:31793 (health) Policy denied DROPPED (TCP Flags: SYN)\n"
    );
    let mut unknown = hubble_flow();
    unknown.is_reply = None;
    assert_eq!(
        print(opts(Output::Compact, true), &[flow_response(unknown.clone())]),
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)\n"
    );
    let mut denied = unknown;
    denied.event_type = Some(CiliumEventType {
        r#type: 5,
        sub_type: 0,
    });
    denied.traffic_direction = TrafficDirection::Egress as i32;
    assert_eq!(
        print(opts(Output::Compact, true), &[flow_response(denied.clone())]),
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS DENIED (TCP Flags: SYN)\n"
    );
    let mut allowed = denied.clone();
    allowed.verdict = Verdict::Forwarded as i32;
    allowed.traffic_direction = TrafficDirection::Ingress as i32;
    allowed.policy_match_type = 1;
    assert!(
        print(opts(Output::Compact, false), &[flow_response(allowed)])
            .contains(" policy-verdict:L3-Only INGRESS ALLOWED (TCP Flags: SYN)")
    );
    let mut audited = denied;
    audited.verdict = Verdict::Audit as i32;
    assert!(
        print(opts(Output::Compact, false), &[flow_response(audited)])
            .contains(" policy-verdict:none EGRESS AUDITED (")
    );
}

#[test]
fn lost_events_print_as_hubble_printer_tests_expect() {
    let lost = |node: &str| GetFlowsResponse {
        time: Some(pbjson_types::Timestamp {
            seconds: 1234,
            nanos: 567_800_000,
        }),
        node_name: node.into(),
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: 1,
            cpu: Some(pbjson_types::Int32Value { value: 5 }),
            ..LostEvent::default()
        })),
    };
    let cases: [(Options, &str, &str); 8] = [
        (
            opts(Output::Table, false),
            "",
            "TIMESTAMP             SOURCE               DESTINATION   TYPE          VERDICT   SUMMARY\n\
             Jan  1 00:20:34.567   HUBBLE_RING_BUFFER   -             EVENTS LOST   -         CPU(5) - 1\n",
        ),
        (
            opts(Output::Compact, false),
            "",
            "Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1\n",
        ),
        (
            opts(Output::JsonPb, false),
            "",
            "{\"lost_events\":{\"source\":\"HUBBLE_RING_BUFFER\",\"num_events_lost\":\"1\",\"cpu\":5},\"time\":\"1970-01-01T00:20:34.567800Z\"}\n",
        ),
        (
            opts(Output::Dict, false),
            "",
            "  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: HUBBLE_RING_BUFFER\n       TYPE: EVENTS LOST\n    VERDICT: -\n    SUMMARY: CPU(5) - 1\n",
        ),
        (
            opts(Output::Table, true),
            "node-name",
            "TIMESTAMP             NODE        SOURCE               DESTINATION   TYPE          VERDICT   SUMMARY\n\
             Jan  1 00:20:34.567   node-name   HUBBLE_RING_BUFFER   -             EVENTS LOST   -         CPU(5) - 1\n",
        ),
        (
            opts(Output::Compact, true),
            "node-name",
            "Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1\n",
        ),
        (
            opts(Output::JsonPb, true),
            "node-name",
            "{\"lost_events\":{\"source\":\"HUBBLE_RING_BUFFER\",\"num_events_lost\":\"1\",\"cpu\":5},\"node_name\":\"node-name\",\"time\":\"1970-01-01T00:20:34.567800Z\"}\n",
        ),
        (
            opts(Output::Dict, true),
            "node-name",
            "  TIMESTAMP: Jan  1 00:20:34.567\n       NODE: node-name\n     SOURCE: HUBBLE_RING_BUFFER\n       TYPE: EVENTS LOST\n    VERDICT: -\n    SUMMARY: CPU(5) - 1\n",
        ),
    ];
    for (o, node, want) in cases {
        assert_eq!(print(o, &[lost(node)]), want, "{o:?}");
    }
    let mut spanned = lost("");
    if let Some(ResponseTypes::LostEvents(l)) = &mut spanned.response_types {
        l.first = Some(pbjson_types::Timestamp {
            seconds: 1230,
            nanos: 567_800_000,
        });
        l.last = Some(pbjson_types::Timestamp {
            seconds: 1238,
            nanos: 567_800_000,
        });
    }
    let spanned = [spanned];
    assert_eq!(
        print(opts(Output::Compact, false), &spanned),
        "Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1 (first: Jan  1 00:20:30.567, last: Jan  1 00:20:38.567)\n"
    );
    assert_eq!(
        print(opts(Output::JsonPb, false), &spanned),
        "{\"lost_events\":{\"source\":\"HUBBLE_RING_BUFFER\",\"num_events_lost\":\"1\",\"cpu\":5,\"first\":\"1970-01-01T00:20:30.567800Z\",\"last\":\"1970-01-01T00:20:38.567800Z\"},\"time\":\"1970-01-01T00:20:34.567800Z\"}\n"
    );
    assert!(print(opts(Output::Table, false), &spanned)
        .ends_with("CPU(5) - 1 (first: Jan  1 00:20:30.567, last: Jan  1 00:20:38.567)\n"));
}

#[test]
fn host_names_as_hubble_names_them() {
    let ip = Some(Ip {
        source: "1.1.1.1".into(),
        destination: "2.2.2.2".into(),
        ..Ip::default()
    });
    assert_eq!(
        host_names(&Flow::default(), true),
        (String::new(), String::new())
    );
    let pods = Flow {
        ip: ip.clone(),
        source: Some(Endpoint {
            namespace: "srcns".into(),
            pod_name: "srcpod".into(),
            ..Endpoint::default()
        }),
        destination: Some(Endpoint {
            namespace: "dstns".into(),
            pod_name: "dstpod".into(),
            ..Endpoint::default()
        }),
        ..Flow::default()
    };
    assert_eq!(
        host_names(&pods, true),
        ("srcns/srcpod".into(), "dstns/dstpod".into())
    );
    assert_eq!(
        host_names(&pods, false),
        ("1.1.1.1".into(), "2.2.2.2".into())
    );
    let services = Flow {
        ip: ip.clone(),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: 55555,
                destination_port: 53,
            })),
        }),
        source_service: Some(Service {
            name: "xwing".into(),
            namespace: "default".into(),
        }),
        destination_service: Some(Service {
            name: "tiefighter".into(),
            namespace: "deathstar".into(),
        }),
        ..Flow::default()
    };
    assert_eq!(
        host_names(&services, true),
        (
            "default/xwing:55555".into(),
            "deathstar/tiefighter:53".into()
        )
    );
    let names = Flow {
        ip,
        source_names: vec!["a".into()],
        destination_names: vec!["b".into(), "c".into()],
        ..Flow::default()
    };
    assert_eq!(host_names(&names, true), ("a".into(), "b,c".into()));
    let eth = Flow {
        ethernet: Some(Ethernet {
            source: "00:01:02:03:04:05".into(),
            destination: "06:07:08:09:0a:0b".into(),
        }),
        ..Flow::default()
    };
    assert_eq!(
        host_names(&eth, true),
        ("00:01:02:03:04:05".into(), "06:07:08:09:0a:0b".into())
    );
    assert_eq!(
        hostname("fd00::1", "80", "", "", "", &[], true),
        "[fd00::1]:80"
    );
    assert_eq!(
        hostname("1.1.1.1", "0", "default", "pod", "", &[], false),
        "1.1.1.1"
    );
}

#[test]
fn flow_types_and_times_as_hubble_prints_them() {
    let typed = |t: i32, sub: i32| Flow {
        event_type: Some(CiliumEventType {
            r#type: t,
            sub_type: sub,
        }),
        ..Flow::default()
    };
    assert_eq!(flow_type(&typed(4, 2)), "to-host");
    assert_eq!(flow_type(&typed(4, 123)), "123");
    assert_eq!(flow_type(&typed(1, 133)), "Policy denied");
    assert_eq!(flow_type(&typed(1, 250)), "250, 0");
    assert_eq!(flow_type(&Flow::default()), "UNKNOWN");
    let mut pv = typed(5, 0);
    pv.policy_match_type = 2;
    pv.traffic_direction = TrafficDirection::Ingress as i32;
    assert_eq!(flow_type(&pv), "policy-verdict:L3-L4 INGRESS");
    let l7 = |record| Flow {
        l7: Some(Layer7 {
            r#type: L7FlowType::Request as i32,
            record,
            ..Layer7::default()
        }),
        ..typed(129, 0)
    };
    assert_eq!(flow_type(&l7(None)), "l7-request");
    assert_eq!(
        flow_type(&l7(Some(layer7::Record::Dns(Dns {
            observation_source: "proxy".into(),
            ..Dns::default()
        })))),
        "dns-request proxy"
    );

    let ts = |seconds, nanos| Some(pbjson_types::Timestamp { seconds, nanos });
    assert_eq!(
        format_time(TimeFormat::StampMilli, ts(0, 0).as_ref()),
        "Jan  1 00:00:00.000"
    );
    assert_eq!(
        format_time(
            TimeFormat::StampMilli,
            ts(1_530_984_600, 123_000_000).as_ref()
        ),
        "Jul  7 17:30:00.123"
    );
    assert_eq!(
        format_time(TimeFormat::StampMilli, ts(-1, -1).as_ref()),
        "N/A"
    );
    assert_eq!(format_time(TimeFormat::StampMilli, None), "N/A");
    let t = ts(1_530_984_600, 120_000_000);
    assert_eq!(
        format_time(TimeFormat::Rfc3339, t.as_ref()),
        "2018-07-07T17:30:00Z"
    );
    assert_eq!(
        format_time(TimeFormat::Rfc3339Milli, t.as_ref()),
        "2018-07-07T17:30:00.12Z"
    );
    assert_eq!(
        format_time(TimeFormat::Rfc3339Nano, ts(1_530_984_600, 0).as_ref()),
        "2018-07-07T17:30:00Z"
    );
    assert_eq!(
        format_time(TimeFormat::YearMonthDayHour, t.as_ref()),
        "2018-07-07T17Z"
    );
    assert_eq!(
        format_time(TimeFormat::Rfc1123Z, t.as_ref()),
        "Sat, 07 Jul 2018 17:30:00 +0000"
    );
}

#[test]
fn node_status_events_go_to_stderr_as_hubble_prints_them() {
    let status = |state: NodeState, message: &str| GetFlowsResponse {
        time: Some(pbjson_types::Timestamp {
            seconds: 1234,
            nanos: 567_800_000,
        }),
        node_name: "relay".into(),
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: vec!["k8s1".into(), "k8s2".into()],
            message: message.into(),
        })),
    };
    let mut p = Printer::new(Options::default());
    let w = p.write(&status(NodeState::NodeUnavailable, "")).unwrap();
    assert_eq!(w.stdout, "");
    assert_eq!(
        w.stderr,
        "Jan  1 00:20:34.567 [relay]: 2 nodes are unavailable: k8s1, k8s2\n"
    );
    let w = p
        .write(&status(NodeState::NodeError, "dial \"x\""))
        .unwrap();
    assert_eq!(
        w.stderr,
        "Jan  1 00:20:34.567 [relay]: Error \"dial \\\"x\\\"\" on 2 nodes: k8s1, k8s2\n"
    );
    // Informational events only with --debug.
    assert_eq!(
        p.write(&status(NodeState::NodeConnected, "")).unwrap(),
        Written::default()
    );
    let mut debug = Printer::new(Options {
        debug: true,
        ..Options::default()
    });
    assert_eq!(
        debug
            .write(&status(NodeState::NodeConnected, ""))
            .unwrap()
            .stderr,
        "Jan  1 00:20:34.567 [relay]: Receiving flows from 2 nodes: k8s1, k8s2\n"
    );
    let names: Vec<String> = (0..20).map(|i| format!("node-{i:02}")).collect();
    assert_eq!(
        join_with_cut_off(&names, ", ", 50),
        "node-00, node-01, node-02, node-03, node-04 (and 15 more)"
    );
}

#[test]
fn yaml_is_a_stream_of_documents_and_terminal_escapes_are_defused() {
    let f = flow_response(hubble_flow());
    let out = print(opts(Output::Yaml, false), &[f.clone(), f]);
    assert_eq!(out.matches("---\n").count(), 2, "{out}");
    assert!(
        out.starts_with("---\nflow:\n  time: 1970-01-01T00:20:34.567800Z\n"),
        "{out}"
    );
    assert!(out.contains("  is_reply: false\n"), "{out}");
    let mut evil = hubble_flow();
    evil.summary = "\x1b[31mred\rx".into();
    let line = print(opts(Output::Compact, false), &[flow_response(evil)]);
    assert!(line.ends_with("(^[[31mred\\rx)\n"), "{line}");
}

#[test]
fn policy_names_as_hubble_printer_tests_expect() {
    use crate::proto::flow::Policy;
    let policy = |name: &str, ns: &str, kind: &str| Policy {
        name: name.into(),
        namespace: ns.into(),
        kind: kind.into(),
        ..Policy::default()
    };
    let mut denied = hubble_flow();
    denied.event_type = Some(CiliumEventType {
        r#type: 5,
        sub_type: 0,
    });
    denied.is_reply = None;
    denied.traffic_direction = TrafficDirection::Egress as i32;
    denied.egress_denied_by = vec![policy(
        "my-policy",
        "my-policy-namespace",
        "CiliumNetworkPolicy",
    )];
    let mut allowed = denied.clone();
    allowed.verdict = Verdict::Forwarded as i32;
    allowed.traffic_direction = TrafficDirection::Ingress as i32;
    allowed.ingress_allowed_by = vec![
        policy("my-policy", "my-policy-namespace", "CiliumNetworkPolicy"),
        policy("my-policy-2", "", "CiliumClusterwideNetworkPolicy"),
    ];
    allowed.policy_match_type = 1;
    let named = |output| Options {
        output,
        node_name: true,
        policy_names: true,
        ..Options::default()
    };
    assert_eq!(
        print(named(Output::Compact), &[flow_response(denied.clone())]),
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS DENIED BY my-policy (CiliumNetworkPolicy) (TCP Flags: SYN)\n"
    );
    assert_eq!(
        print(named(Output::Compact), &[flow_response(allowed)]),
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:L3-Only INGRESS ALLOWED BY my-policy (CiliumNetworkPolicy), my-policy-2 (CiliumClusterwideNetworkPolicy) (TCP Flags: SYN)\n"
    );
    let dict = Options {
        output: Output::Dict,
        policy_names: true,
        ..Options::default()
    };
    assert_eq!(
        print(dict, &[flow_response(denied.clone())]),
        "  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n       TYPE: policy-verdict:none EGRESS\n    VERDICT: DENIED BY my-policy (CiliumNetworkPolicy)\n    SUMMARY: TCP Flags: SYN\n"
    );
    // Without the option, no names.
    assert!(print(opts(Output::Compact, false), &[flow_response(denied)]).contains(" DENIED (TCP"));
    assert_eq!(
        policy_names_text(&[
            policy("AllowAll", "", ""),
            policy("", "", "CiliumNetworkPolicy")
        ]),
        ""
    );
}
