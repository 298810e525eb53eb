//! Flows as OpenTelemetry logs: each exported flow becomes a LogRecord whose body is its
//! line of Hubble's JSON, sent in batches to an OTLP/gRPC collector
//! (`LogsService/Export`, e.g. the OpenTelemetry Collector's `otlp` receiver on :4317).
//!
//! The export thread hands records over through a bounded queue and never waits: when the
//! collector is slow or away the queue fills and further records are counted as dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::mpsc;

use crate::export::{ExportStats, Sink};
use crate::proto::observer::GetFlowsResponse;

/// Records queued for the collector at most.
pub const QUEUE_CAPACITY: usize = 8192;
/// Records sent in one Export call at most.
pub const BATCH: usize = 512;
/// OTLP's severity number for INFO.
const SEVERITY_INFO: i32 = 9;

fn string_value(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    })
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: string_value(value),
    }
}

fn unix_nanos(seconds: i64, nanos: i32) -> u64 {
    u64::try_from(i128::from(seconds) * 1_000_000_000 + i128::from(nanos)).unwrap_or(0)
}

/// The log record of one exported response: the time of the flow, its JSON as the body.
pub fn log_record(res: &GetFlowsResponse, line: &str) -> LogRecord {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(0))
        .unwrap_or(0);
    LogRecord {
        time_unix_nano: res.time.map_or(0, |t| unix_nanos(t.seconds, t.nanos)),
        observed_time_unix_nano: now,
        severity_number: SEVERITY_INFO,
        severity_text: "INFO".into(),
        body: string_value(line.trim_end_matches('\n')),
        attributes: vec![attribute("node_name", &res.node_name)],
        ..LogRecord::default()
    }
}

/// The request carrying `records`, from this node's agent.
pub fn export_request(node: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", "ciliate-agent"),
                    attribute("host.name", node),
                ],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "ciliate.flow-export".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

/// The OTLP sink: queues records for a sender task on the runtime.
#[derive(Debug)]
pub struct OtlpSink {
    queue: mpsc::Sender<LogRecord>,
    stats: Arc<ExportStats>,
}

impl Sink for OtlpSink {
    fn send(&mut self, res: &GetFlowsResponse, line: &str) -> Result<(), String> {
        match self.queue.try_send(log_record(res, line)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Err("the OTLP queue is full (the collector is slow or away)".into())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err("the OTLP sender stopped".into()),
        }
    }
}

/// Starts the sender task on `runtime` and returns the sink feeding it. The channel to the
/// collector connects lazily and reconnects on its own; failed batches are counted in
/// `stats.errors` and dropped.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    endpoint: &str,
    node: &str,
    stats: Arc<ExportStats>,
) -> Result<OtlpSink, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let (queue, mut rx) = mpsc::channel::<LogRecord>(QUEUE_CAPACITY);
    let node = node.to_owned();
    let counters = Arc::clone(&stats);
    let endpoint = endpoint.to_owned();
    runtime.spawn(async move {
        let mut client = LogsServiceClient::new(channel);
        let mut batch = Vec::with_capacity(BATCH);
        let mut warned = false;
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let n = batch.len() as u64;
            let request = export_request(&node, std::mem::take(&mut batch));
            match client.export(request).await {
                Ok(_) => warned = false,
                Err(status) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    counters.dropped.fetch_add(n, Ordering::Relaxed);
                    if !warned {
                        tracing::warn!(endpoint = %endpoint, error = %status.message(), "cannot export flows to the OTLP collector");
                        warned = true;
                    }
                }
            }
        }
    });
    Ok(OtlpSink { queue, stats })
}
