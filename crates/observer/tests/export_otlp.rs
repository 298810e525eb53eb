//! Flows exported as OpenTelemetry logs reach a real OTLP/gRPC LogsService (a tonic server
//! from the OpenTelemetry protos), one LogRecord per flow with Hubble's JSON as its body.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

mod common;

use ciliate_model::monitor::{EventKind, MonitorEvent};
use ciliate_observer::export::{self, ExportConfig, Sink};
use ciliate_observer::store::{EndpointInfo, Snapshot};
use ciliate_observer::Observer;
use common::{observer_on_node_1, pod_endpoint, tcp_syn};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use tokio::sync::mpsc;

/// A collector that hands every request it receives to the test.
struct Collector(mpsc::UnboundedSender<ExportLogsServiceRequest>);

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A drop to the world peer 192.0.2.7 (identity 2).
fn event(dport: u16) -> MonitorEvent {
    MonitorEvent {
        time: "2024-05-01T10:00:00.25Z".into(),
        dst_identity: 2,
        dst: Some("192.0.2.7".parse().expect("ip")),
        ..tcp_syn(EventKind::Drop, 133, dport)
    }
}

fn observer() -> Arc<Observer> {
    let mut store = Snapshot::default();
    store.endpoints.insert(
        "10.200.0.2".parse().expect("ip"),
        EndpointInfo {
            labels: vec![],
            ..pod_endpoint(1, "client")
        }
        .into(),
    );
    observer_on_node_1(4095, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_arrive_at_an_otlp_collector_as_log_records_of_hubble_json() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut received) = mpsc::unbounded_channel();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let o = observer();
    let config = ExportConfig::new(
        None,
        10,
        5,
        "",
        r#"{"destination_port":["22"]}"#,
        &[],
        Some(format!("http://{addr}")),
    )
    .expect("config");
    let stats = Arc::new(export::ExportStats::default());
    let sink = ciliate_observer::export_otlp::spawn(
        &tokio::runtime::Handle::current(),
        config.otlp_endpoint.as_deref().expect("endpoint"),
        "node-1",
        Arc::clone(&stats),
    )
    .expect("sink");
    let exporter = export::spawn(
        &o,
        &config,
        vec![Box::new(sink) as Box<dyn Sink>],
        Arc::clone(&stats),
    )
    .expect("spawn");
    for port in [443, 22, 8443] {
        o.observe(&event(port));
    }

    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let req = tokio::time::timeout(Duration::from_secs(20), received.recv())
            .await
            .expect("the collector receives the flows")
            .expect("request");
        let rl = &req.resource_logs[0];
        let resource = rl.resource.as_ref().expect("resource");
        assert!(resource.attributes.iter().any(|kv| kv.key == "host.name"));
        for r in &rl.scope_logs[0].log_records {
            assert_eq!(r.time_unix_nano, 1_714_557_600_250_000_000);
            assert_eq!(r.severity_text, "INFO");
            match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => bodies.push(s.clone()),
                other => panic!("body {other:?}"),
            }
        }
    }
    // The denylist left port 22 out; the bodies are the exporter's lines.
    assert_eq!(bodies.len(), 2);
    for (body, port) in bodies.iter().zip([443, 8443]) {
        let flow = o
            .snapshot()
            .into_iter()
            .find_map(|n| {
                n.entry
                    .flow()
                    .map(std::borrow::Cow::into_owned)
                    .filter(|f| {
                        format!("{:?}", f.l4).contains(&format!("destination_port: {port}"))
                    })
            })
            .expect("flow");
        let line = export::export_line(
            &ciliate_observer::server::flow_response(flow, &o.config().node_name),
            &[],
        )
        .expect("line");
        assert_eq!(format!("{body}\n"), line);
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(v["flow"]["source"]["pod_name"], "client");
        assert_eq!(v["flow"]["drop_reason_desc"], "POLICY_DENIED");
    }
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    drop(o);
    tokio::task::spawn_blocking(move || exporter.join())
        .await
        .expect("join");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_away_costs_errors_not_the_observer() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let o = observer();
    let stats = Arc::new(export::ExportStats::default());
    let sink = ciliate_observer::export_otlp::spawn(
        &tokio::runtime::Handle::current(),
        &format!("http://127.0.0.1:{port}"),
        "node-1",
        Arc::clone(&stats),
    )
    .expect("sink");
    let exporter = export::spawn(
        &o,
        &ExportConfig::default(),
        vec![Box::new(sink) as Box<dyn Sink>],
        Arc::clone(&stats),
    )
    .expect("spawn");
    for _ in 0..100 {
        o.observe(&event(443));
    }
    assert_eq!(o.seen_flows(), 100);
    // Every record ends up sent-and-failed (counted as dropped) once the sender tried.
    let mut waited = 0;
    while stats.dropped.load(Ordering::Relaxed) < 100 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 100);
    assert!(stats.errors.load(Ordering::Relaxed) >= 1);
    drop(o);
    tokio::task::spawn_blocking(move || exporter.join())
        .await
        .expect("join");
}
