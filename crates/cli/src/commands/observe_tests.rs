#![allow(clippy::unwrap_used)]

use super::*;
use ciliate_observer::proto::flow::{EventTypeFilter, HttpHeader, Verdict};
use clap::Parser;
use std::time::Duration;

fn parse(args: &[&str]) -> (ObserveArgs, Vec<std::ffi::OsString>) {
    let argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let cli = crate::cli::Cli::try_parse_from(&argv).unwrap();
    match cli.command {
        crate::cli::Command::Observe(a) => (*a, argv),
        _ => panic!("not observe"),
    }
}

fn req(args: &[&str]) -> anyhow::Result<GetFlowsRequest> {
    let mut all = vec!["ciliate", "observe"];
    all.extend_from_slice(args);
    let (a, argv) = parse(&all);
    request(
        &a,
        &argv,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    )
}

#[test]
fn flags_become_hubble_filters_in_command_line_order() {
    let r = req(&[
        "--from-pod",
        "default/client",
        "--to-port",
        "80",
        "--verdict",
        "DROPPED",
        "-t",
        "drop:133",
        "--not",
        "--to-identity",
        "world",
    ])
    .unwrap();
    assert_eq!((r.number, r.first, r.follow), (20, false, false));
    assert_eq!(r.whitelist.len(), 1);
    let f = &r.whitelist[0];
    assert_eq!(f.source_pod, vec!["default/client"]);
    assert_eq!(f.destination_port, vec!["80"]);
    assert_eq!(f.verdict, vec![Verdict::Dropped as i32]);
    assert_eq!(
        f.event_type,
        vec![EventTypeFilter {
            r#type: 1,
            match_sub_type: true,
            sub_type: 133
        }]
    );
    assert_eq!(r.blacklist.len(), 1);
    assert_eq!(r.blacklist[0].destination_identity, vec![2]);

    // `--not` negates the flag right after it, wherever the others stand.
    let r = req(&[
        "-n",
        "prod",
        "--not",
        "--verdict",
        "FORWARDED",
        "--last",
        "5",
        "-f",
    ])
    .unwrap();
    assert_eq!((r.number, r.follow), (5, true));
    assert_eq!(r.whitelist.len(), 2);
    assert_eq!(r.whitelist[0].source_pod, vec!["prod/"]);
    assert_eq!(r.whitelist[1].destination_pod, vec!["prod/"]);
    assert!(r.whitelist[0].verdict.is_empty());
    assert_eq!(r.blacklist[0].verdict, vec![Verdict::Forwarded as i32]);
    let r = req(&["--not", "-4", "-A"]).unwrap();
    assert_eq!(r.blacklist[0].ip_version, vec![1]);
    assert_eq!(r.whitelist[0].source_pod, vec!["/"]);
}

#[test]
fn selectors_as_hubble_sets_them() {
    let r = req(&["--since", "10m", "--until", "1970-01-12T13:46:40Z"]).unwrap();
    assert_eq!(r.number, 0);
    assert_eq!(r.since.unwrap().seconds, 1_000_000 - 600);
    assert_eq!(r.until.unwrap().seconds, 1_000_000);
    // --until is ignored when following.
    let r = req(&["--since", "2d", "--until", "1m", "-f"]).unwrap();
    assert_eq!(r.since.unwrap().seconds, 1_000_000 - 2 * 86_400);
    assert!(r.until.is_none());
    let r = req(&["--since", "1970-01-12"]).unwrap();
    assert_eq!(r.since.unwrap().seconds, 11 * 86_400);
    assert_eq!(req(&["--all"]).unwrap().number, u64::MAX);
    let r = req(&["--first", "7"]).unwrap();
    assert_eq!((r.number, r.first), (7, true));
    assert_eq!(req(&["-f"]).unwrap().number, 0);
    for bad in [
        &["--first", "1", "--last", "2"][..],
        &["--first", "1", "-f"],
        &["--last", "1", "--all"],
        &["--since", "yesterday-ish"],
        &["--verdict", "maybe"],
        &["--type", "l8"],
        &["--http-header", "no-colon"],
        &["--ip", "1.1.1.1", "--from-ip", "2.2.2.2"],
        &["--from-pod", "x", "--not"],
        &["--allowlist", "{\"bogus_field\":1}"],
    ] {
        assert!(req(bad).is_err(), "{bad:?}");
    }
    let e = req(&["--http-header", "no-colon"]).unwrap_err().to_string();
    assert!(
        e.contains("--http-header") && e.contains("name:value"),
        "{e}"
    );
}

#[test]
fn l7_flags_and_raw_filters() {
    let r = req(&[
        "-t",
        "l7",
        "--http-method",
        "GET",
        "--http-path",
        "^/api/",
        "--http-status",
        "5+",
        "--http-status",
        "404",
        "--http-url",
        "web",
        "--http-header",
        "X-Request-Id:a:b",
        "--protocol",
        "http",
        "--not",
        "--http-method",
        "POST",
        "--allowlist",
        "{\"source_pod\":[\"a/\"]} {\"destinationPod\":[\"b/\"]}",
        "--denylist",
        "{\"verdict\":[\"DROPPED\"]}",
    ])
    .unwrap();
    assert_eq!(r.whitelist.len(), 3);
    let f = &r.whitelist[0];
    assert_eq!(f.event_type[0].r#type, 129);
    assert_eq!(f.http_method, vec!["GET"]);
    assert_eq!(f.http_path, vec!["^/api/"]);
    assert_eq!(f.http_status_code, vec!["5+", "404"]);
    assert_eq!(f.http_url, vec!["web"]);
    assert_eq!(
        f.http_header,
        vec![HttpHeader {
            key: "X-Request-Id".into(),
            value: "a:b".into()
        }]
    );
    assert_eq!(r.whitelist[1].source_pod, vec!["a/"]);
    assert_eq!(r.whitelist[2].destination_pod, vec!["b/"]);
    assert_eq!(r.blacklist.len(), 2);
    assert_eq!(r.blacklist[0].http_method, vec!["POST"]);
    assert_eq!(r.blacklist[1].verdict, vec![Verdict::Dropped as i32]);
    assert_eq!(
        raw_filters_yaml(&r).unwrap().lines().next(),
        Some("allowlist:")
    );
    let yaml =
        raw_filters_yaml(&req(&["--from-pod", "x", "--not", "--to-port", "53"]).unwrap()).unwrap();
    assert_eq!(
        yaml,
        "allowlist:\n    - '{\"source_pod\":[\"x\"]}'\ndenylist:\n    - '{\"destination_port\":[\"53\"]}'\n"
    );
}

fn l7_response() -> GetFlowsResponse {
    use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};
    use ciliate_observer::store::{EndpointInfo, Snapshot};
    let mut store = Snapshot::default();
    for (ip, id, pod) in [("10.0.0.2", 1, "client"), ("10.0.0.3", 2, "web-0")] {
        store.endpoints.insert(
            ip.parse().unwrap(),
            EndpointInfo {
                id,
                identity: 300 + id,
                namespace: "default".into(),
                pod_name: pod.into(),
                labels: vec![],
            }
            .into(),
        );
    }
    let record = HttpRecord {
        time_ns: 1_700_000_000_123_000_000,
        record_type: L7RecordType::Response,
        endpoint: 1,
        egress: true,
        source: "10.0.0.2:40000".parse().unwrap(),
        destination: "10.0.0.3:80".parse().unwrap(),
        source_identity: 301,
        destination_identity: 302,
        verdict: L7Verdict::Forwarded,
        rule: 1,
        method: "GET".into(),
        url: "http://web/api?a=1&b=<2>".into(),
        protocol: "HTTP/1.1".into(),
        code: 200,
        headers: vec![],
        latency_ns: 12_500_000,
        reason: None,
    };
    let flow = ciliate_observer::l7::http_to_flow(&record, &store, "node-1");
    ciliate_observer::server::flow_response(flow, "node-1")
}

fn rendered(format: Format, args: &[&str]) -> String {
    let mut all = vec!["ciliate", "observe"];
    all.extend_from_slice(args);
    let (a, _) = parse(&all);
    let mut printer = Printer::new(printer_options(format, &a).unwrap());
    let (mut out, err) = render(format, &mut printer, &l7_response()).unwrap();
    assert_eq!(err, "");
    out.push_str(&printer.finish());
    out
}

#[test]
fn l7_flows_print_as_hubble_prints_them() {
    assert_eq!(
        rendered(Format::Compact, &[]),
        "Nov 14 22:13:20.123: default/client:40000 (ID:301) <- default/web-0:80 (ID:302) \
         http-response FORWARDED (HTTP/1.1 200 12ms (GET http://web/api?a=1&b=<2>))\n"
    );
    assert!(
        rendered(Format::Compact, &["--print-node-name", "--numeric"])
            .starts_with("Nov 14 22:13:20.123 [node-1]: 10.0.0.2:40000 (ID:301) <- 10.0.0.3:80")
    );
    let table = rendered(Format::Table, &[]);
    assert!(
        table.starts_with("TIMESTAMP             SOURCE             DESTINATION            TYPE "),
        "{table}"
    );
    let json = rendered(Format::Json, &[]);
    // Hubble's JSON: the response around the flow, proto field names, HTML-safe escapes.
    assert!(
        json.starts_with("{\"flow\":{\"time\":\"2023-11-14T22:13:20.123Z\","),
        "{json}"
    );
    assert!(
        json.contains("\"url\":\"http://web/api?a=1\\u0026b=\\u003c2\\u003e\""),
        "{json}"
    );
    assert!(
        json.ends_with("\"node_name\":\"node-1\",\"time\":\"2023-11-14T22:13:20.123Z\"}\n"),
        "{json}"
    );
    assert_eq!(rendered(Format::Jsonpb, &[]), json);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["flow"]["source"]["pod_name"], "web-0");
    assert_eq!(v["flow"]["is_reply"], true);
    assert_eq!(v["flow"]["l7"]["http"]["code"], 200);
    assert_eq!(v["flow"]["l7"]["latency_ns"], "12500000");
    let legacy = rendered(Format::Json, &["--compat", "legacy-json-output"]);
    assert!(legacy.starts_with("{\"time\":"), "{legacy}");
    let yaml = rendered(Format::Yaml, &[]);
    assert!(
        yaml.starts_with("---\nflow:\n  time: 2023-11-14T22:13:20.123Z\n"),
        "{yaml}"
    );
    assert!(rendered(Format::Dict, &[])
        .starts_with("  TIMESTAMP: Nov 14 22:13:20.123\n     SOURCE: default/web-0:80\n"));
    assert_eq!(
        rendered(Format::Jsonpath("{.flow.source.pod_name}"), &[]),
        "web-0\n"
    );
    let (a, _) = parse(&["ciliate", "observe", "-f"]);
    assert!(printer_options(Format::Table, &a).is_err());
    let (a, _) = parse(&["ciliate", "observe", "--time-format", "Sundial"]);
    assert!(printer_options(Format::Compact, &a).is_err());
}
