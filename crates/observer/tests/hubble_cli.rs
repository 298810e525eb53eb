//! The real `hubble observe` and our printer, on the same flows from a running observer,
//! print the same bytes in every output format.
//!
//! In compact, dict and table output Hubble asks the server for its default field mask; the
//! flows our printer gets here are cut down the same way.
//!
//! Needs Hubble's CLI (`ciliate_testutil::hubble::hubble_cli`: `$CILIATE_HUBBLE_BIN`,
//! `/work/tools/bin/hubble` or `hubble` on the PATH). CI has none, and this test then skips,
//! saying so.

mod common;

use std::sync::Arc;

use ciliate_model::l7::{DnsRecord, HttpRecord, KafkaRecord, L7RecordType, L7Verdict};
use ciliate_model::monitor::{EventKind, MonitorEvent, L4};
use ciliate_observer::print::{Options, Output, Printer, HUBBLE_DEFAULT_FIELD_MASK};
use ciliate_observer::proto::flow::LostEventSource;
use ciliate_observer::proto::observer::get_flows_response::ResponseTypes;
use ciliate_observer::proto::observer::GetFlowsRequest;
use ciliate_observer::protojson;
use ciliate_observer::store::ServiceRef;
use ciliate_observer::Observer;
use common::{client_and_server_pods, observer_on_node_1, serve_in_tempdir};

fn event(kind: EventKind, code: u8, src: &str, dst: &str, dport: u16, ct: &str) -> MonitorEvent {
    MonitorEvent {
        kind,
        time: "2024-05-01T10:00:00.123456Z".into(),
        code,
        reason: if kind == EventKind::PolicyVerdict {
            "ingress allowed".into()
        } else {
            String::new()
        },
        endpoint: 1,
        ifindex: 9,
        src_identity: 256,
        dst_identity: 2,
        ct_state: ct.into(),
        len: 60,
        ethertype: 0x0800,
        src: Some(src.parse().expect("ip")),
        dst: Some(dst.parse().expect("ip")),
        l4: Some(L4::Tcp {
            sport: 41000,
            dport,
            flags: vec!["SYN".into(), "ACK".into()],
        }),
        rev_nat: 0,
        rule: 0,
        ethernet: None,
    }
}

/// Flows of every kind we make: traces, drops, policy verdicts, a Service, a world peer,
/// HTTP with characters Go escapes, DNS, Kafka, and a loss record.
fn observer() -> Arc<Observer> {
    let mut store = client_and_server_pods();
    store.frontends.insert(
        ("10.96.0.10".parse().expect("ip"), 80, 6),
        ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
        },
    );
    let observer = observer_on_node_1(64, store);
    observer.observe(&event(
        EventKind::Trace,
        5,
        "10.200.0.2",
        "10.200.0.3",
        80,
        "new",
    ));
    observer.observe(&event(
        EventKind::Trace,
        0,
        "10.200.0.3",
        "10.200.0.2",
        80,
        "reply",
    ));
    observer.observe(&event(
        EventKind::Drop,
        133,
        "10.200.0.2",
        "192.0.2.9",
        443,
        "new",
    ));
    observer.observe(&event(
        EventKind::Drop,
        158,
        "10.200.0.2",
        "10.96.0.10",
        80,
        "",
    ));
    observer.observe(&event(
        EventKind::PolicyVerdict,
        0,
        "10.200.0.2",
        "10.200.0.3",
        80,
        "new",
    ));
    observer.observe(&event(
        EventKind::Trace,
        0,
        "10.200.0.2",
        "10.96.0.10",
        80,
        "new",
    ));
    use L7RecordType::{Request, Response};
    for (kind, code, latency) in [(Request, 0, 0), (Response, 200, 3_250_000)] {
        observer.observe_http(&HttpRecord {
            time_ns: 1_714_557_601_000_000_000,
            record_type: kind,
            endpoint: 1,
            egress: true,
            source: "10.200.0.2:41000".parse().expect("addr"),
            destination: "10.200.0.3:80".parse().expect("addr"),
            source_identity: 256,
            destination_identity: 257,
            verdict: L7Verdict::Forwarded,
            rule: 1,
            method: "GET".into(),
            url: "http://server/api?a=1&b=<x>\u{2028}".into(),
            protocol: "HTTP/1.1".into(),
            code,
            headers: vec![("x-request-id".into(), "\"q\"\t\\".into())],
            latency_ns: latency,
            reason: None,
        });
    }
    observer.observe_dns(&DnsRecord {
        time_ns: 1_714_557_602_000_000_000,
        record_type: Response,
        endpoint: 1,
        source: "10.200.0.2:41053".parse().expect("addr"),
        destination: "192.0.2.53:53".parse().expect("addr"),
        proto: 17,
        source_identity: 256,
        destination_identity: 2,
        verdict: L7Verdict::Forwarded,
        rule: 1,
        query: "api.example.com.".into(),
        qtypes: vec!["A".into()],
        rcode: 0,
        ips: vec!["192.0.2.80".parse().expect("ip")],
        ttl: 60,
        cnames: vec![],
        rrtypes: vec!["A".into()],
        latency_ns: 700_000,
        reason: None,
    });
    observer.observe_kafka(&KafkaRecord {
        time_ns: 1_714_557_603_000_000_000,
        record_type: Request,
        endpoint: 1,
        egress: true,
        source: "10.200.0.2:42000".parse().expect("addr"),
        destination: "10.200.0.9:9092".parse().expect("addr"),
        source_identity: 256,
        destination_identity: 300,
        verdict: L7Verdict::Dropped,
        rule: 1,
        api_key: "produce".into(),
        api_version: 7,
        correlation_id: 5,
        topic: "orders".into(),
        error_code: 0,
        latency_ns: 0,
        reason: None,
    });
    observer.lost(3, LostEventSource::ObserverEventsQueue);
    observer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_hubble_cli_prints_what_our_printer_prints() {
    let Some(hubble) = ciliate_testutil::hubble::hubble_cli() else {
        ciliate_testutil::hubble::skip_without_hubble(
            "the_real_hubble_cli_prints_what_our_printer_prints",
        );
        return;
    };
    let observer = observer();
    let served = serve_in_tempdir(&observer);
    let socket = &served.socket;
    let mut client = served.connect().await;
    let mut responses = Vec::new();
    let mut stream = client
        .get_flows(GetFlowsRequest {
            number: 100,
            ..GetFlowsRequest::default()
        })
        .await
        .expect("flows")
        .into_inner();
    while let Some(r) = stream.message().await.expect("message") {
        responses.push(r);
    }
    assert!(responses.len() >= 10, "{} responses", responses.len());

    let formats = [
        ("compact", Output::Compact),
        ("dict", Output::Dict),
        ("table", Output::Table),
        ("jsonpb", Output::JsonPb),
        ("json", Output::JsonPb),
    ];
    for (name, output) in formats {
        for node_name in [false, true] {
            let mut printer = Printer::new(Options {
                output,
                node_name,
                ..Options::default()
            });
            // Hubble asks for its default field mask in these formats: print the same
            // fields (whole flows print policy verdicts' direction, which Hubble's mask drops).
            let masked = !matches!(output, Output::JsonPb);
            let mask: Vec<String> = HUBBLE_DEFAULT_FIELD_MASK
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            let mut ours = String::new();
            for r in &responses {
                let mut r = r.clone();
                if let (true, Some(ResponseTypes::Flow(f))) = (masked, &mut r.response_types) {
                    *f = protojson::mask_message(f, "flow.Flow", &mask).expect("mask");
                }
                ours.push_str(&printer.write(&r).expect("print").stdout);
            }
            ours.push_str(&printer.finish());

            let mut cmd = std::process::Command::new(&hubble);
            cmd.args(["observe", "--server"])
                .arg(format!("unix://{}", socket.display()))
                .args(["--last", "100", "--color", "never", "-o", name]);
            if node_name {
                cmd.arg("--print-node-name");
            }
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .expect("join")
                .expect("run hubble");
            assert!(
                out.status.success(),
                "hubble observe -o {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let theirs = String::from_utf8(out.stdout).expect("utf-8");
            assert!(theirs.lines().count() >= 10, "-o {name}: {theirs}");
            for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
                assert_eq!(a, b, "-o {name} (node name: {node_name}), line {i}");
            }
            assert_eq!(ours, theirs, "-o {name} (node name: {node_name})");
        }
    }
    served.stop().await;
}
