//! Clients of gRPC's C core read the observer over its unix socket: Python `grpcio`, with stubs
//! generated at test time from Hubble's own protos (tests/hubble-proto/), as a Python user of
//! Hubble would. Such clients send the socket path, percent-encoded, as `:authority`; h2 alone
//! refuses that (RST_STREAM PROTOCOL_ERROR), so this test fails without the relay of
//! `ciliate_observer::authority`.
//!
//! Needs `/opt/ciliate-tools/grpc-venv` (scripts/install-grpc-tools, run by
//! scripts/install-deps; `CILIATE_GRPC_PYTHON` overrides the interpreter). Without it the test
//! skips loudly, and fails under CI (`CI` set), where install-deps has run.

mod common;

use std::path::PathBuf;

use ciliate_model::monitor::{EventKind, MonitorEvent};
use ciliate_observer::store::Snapshot;
use common::{now_rfc3339, observer_on_node_1, pod_endpoint, serve_in_tempdir, tcp_syn};

const SCRIPT: &str = r#"
import json, os, subprocess, sys
out, proto, sock = sys.argv[1], sys.argv[2], sys.argv[3]
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", proto,
                "--python_out", out, "--grpc_python_out", out,
                "flow/flow.proto", "relay/relay.proto", "observer/observer.proto"], check=True)
sys.path.insert(0, out)
import grpc
from flow import flow_pb2
from observer import observer_pb2, observer_pb2_grpc

result = {}
# No options: the channel's default authority is the percent-encoded socket path.
with grpc.insecure_channel("unix:" + sock) as ch:
    # grpc.health.v1 without its stubs: HealthCheckRequest{service} and the status varint.
    check = ch.unary_unary("/grpc.health.v1.Health/Check")
    for svc in ["", "observer.Observer", "hubble.server.Observer"]:
        raw = svc.encode()
        resp = check(b"\x0a" + bytes([len(raw)]) + raw if raw else b"", timeout=10)
        result["health:" + svc] = resp[1] if resp[:1] == b"\x08" else 0
    stub = observer_pb2_grpc.ObserverStub(ch)
    st = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
    result["num_flows"] = st.num_flows
    result["flows_rate"] = st.flows_rate
    req = observer_pb2.GetFlowsRequest(number=10, whitelist=[
        flow_pb2.FlowFilter(drop_reason_desc=[flow_pb2.POLICY_DENIED])])
    flows = [r.flow for r in stub.GetFlows(req, timeout=10) if r.HasField("flow")]
    result["dropped"] = [[f.verdict, f.drop_reason_desc, f.uuid, f.node_name, f.Summary,
                          f.source.pod_name, f.source.cluster_name] for f in flows]
    try:
        bad = observer_pb2.GetFlowsRequest(number=1, whitelist=[flow_pb2.FlowFilter(http_path=["("])])
        list(stub.GetFlows(bad, timeout=10))
        result["bad"] = "accepted"
    except grpc.RpcError as e:
        result["bad"] = [e.code().name, e.details()]
print(json.dumps(result))
"#;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("CILIATE_GRPC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/ciliate-tools/grpc-venv/bin/python"));
    p.exists().then_some(p)
}

/// The fixture's event, stamped now: the server's flows_rate counts the last minute.
fn event(kind: EventKind, code: u8, dport: u16) -> MonitorEvent {
    MonitorEvent {
        time: now_rfc3339(),
        ..tcp_syn(kind, code, dport)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_reads_the_unix_socket() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: /opt/ciliate-tools/grpc-venv is missing; scripts/install-deps installs it"
        );
        eprintln!(
            "SKIPPED python_grpcio_reads_the_unix_socket: no grpcio venv \
             (run scripts/install-grpc-tools)"
        );
        return;
    };
    let mut store = Snapshot::default();
    store.endpoints.insert(
        "10.200.0.2".parse().expect("ip"),
        pod_endpoint(1, "client").into(),
    );
    let observer = observer_on_node_1(16, store);
    observer.observe(&event(EventKind::Trace, 5, 80));
    observer.observe(&event(EventKind::Drop, 133, 443));

    let served = serve_in_tempdir(&observer);
    let dir = served.dir();
    let socket = &served.socket;
    let script = dir.join("client.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hubble-proto");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(dir)
        .arg(&proto)
        .arg(socket)
        .output()
        .await
        .expect("run python");
    served.stop().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed: {stderr}");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!("{got}");
    // SERVING is 1.
    assert_eq!(got["health:"], 1, "{got}");
    assert_eq!(got["health:observer.Observer"], 1, "{got}");
    assert_eq!(got["health:hubble.server.Observer"], 1, "{got}");
    assert_eq!(got["num_flows"], 2, "{got}");
    // Two flows stamped now: a rate over the last minute, above zero.
    assert!(got["flows_rate"].as_f64().is_some_and(|r| r > 0.0), "{got}");
    let dropped = got["dropped"].as_array().expect("dropped");
    assert_eq!(dropped.len(), 1, "{got}");
    let d = &dropped[0];
    // DROPPED (2), POLICY_DENIED (133).
    assert_eq!(
        (d[0].as_i64(), d[1].as_i64()),
        (Some(2), Some(133)),
        "{got}"
    );
    assert!(
        uuid::Uuid::parse_str(d[2].as_str().unwrap_or_default()).is_ok(),
        "{got}"
    );
    assert_eq!(d[3], "default/node-1", "{got}");
    assert_eq!(d[4], "TCP Flags: SYN", "{got}");
    assert_eq!(
        (d[5].as_str(), d[6].as_str()),
        (Some("client"), Some("default"))
    );
    assert_eq!(got["bad"][0], "INVALID_ARGUMENT", "{got}");
    assert!(
        got["bad"][1]
            .as_str()
            .unwrap_or_default()
            .contains("http_path"),
        "{got}"
    );
}
