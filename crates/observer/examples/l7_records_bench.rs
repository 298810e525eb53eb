//! CPU per HTTP record on the agent's path from the proxy's frame to the ring, the metrics
//! and the flow history's block: what `bench/l7.sh`'s "agent CPU per request" is made of,
//! measured alone (one thread, no proxy, no sockets), so that a change to that path can be
//! sized on a machine too busy for `l7.sh`'s own figures.
//!
//! The records are those the proxy sends for `wrk`'s keep-alive GETs through an HTTP rule
//! (a request with its `Host` header, a 200 response with two headers, client and server pods
//! named in the store, the rule's policy known), in batches of `--batch` as the proxy's
//! control socket delivers them. Two phases, each timed by the thread's CPU time
//! (`/proc/thread-self/stat`, 10 ms ticks: run long enough):
//!
//! 1. `observe`: `Observer::observe_http_frames` per batch (each record named, counted in
//!    the metrics, pushed to the ring), what the agent's `proxy-flows` thread does;
//! 2. `history`: the ring's entries encoded into blocks of 4,096 rows
//!    (`block::Encoder::encode_rows`), what the `flow-history` thread does per block but for
//!    the write.
//!
//!   l7_records_bench [--records N] [--batch N]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};
use ciliate_model::l7_wire::HttpFrame;
use ciliate_observer::history::block::{self, Row};
use ciliate_observer::proto::flow::Policy;
use ciliate_observer::ring::{Entry, ObserverConfig};
use ciliate_observer::store::{EndpointInfo, Snapshot};
use ciliate_observer::Observer;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 3);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);

fn store() -> Snapshot {
    let mut s = Snapshot::default();
    for (i, (ip, pod)) in [(CLIENT, "client"), (SERVER, "web")]
        .into_iter()
        .enumerate()
    {
        let i = i as u32;
        s.endpoints.insert(
            ip,
            EndpointInfo {
                id: 100 + i,
                identity: 256 + i,
                namespace: "bench".into(),
                pod_name: pod.into(),
                labels: vec![
                    format!("k8s:app={pod}"),
                    "k8s:io.kubernetes.pod.namespace=bench".into(),
                ],
            }
            .into(),
        );
    }
    s.rules.insert(
        3,
        Policy {
            name: "web-http".into(),
            namespace: "bench".into(),
            labels: vec![
                "k8s:io.cilium.k8s.policy.name=web-http".into(),
                "k8s:io.cilium.k8s.policy.namespace=bench".into(),
            ],
            revision: 2,
            kind: "CiliumNetworkPolicy".into(),
        },
    );
    s
}

fn record(i: u64, response: bool) -> HttpRecord {
    HttpRecord {
        time_ns: 1_796_000_000_000_000_000 + i * 25_000,
        record_type: if response {
            L7RecordType::Response
        } else {
            L7RecordType::Request
        },
        endpoint: 100,
        egress: false,
        source: SocketAddrV4::new(CLIENT, 40_000 + (i % 16) as u16),
        destination: SocketAddrV4::new(SERVER, 8001),
        source_identity: 256,
        destination_identity: 257,
        verdict: L7Verdict::Forwarded,
        rule: 3,
        method: "GET".into(),
        url: "http://10.201.1.2:8001/".into(),
        protocol: "HTTP/1.1".into(),
        code: if response { 200 } else { 0 },
        headers: if response {
            vec![
                ("content-length".into(), "1024".into()),
                ("content-type".into(), "application/octet-stream".into()),
            ]
        } else {
            vec![("host".into(), "10.201.1.2:8001".into())]
        },
        latency_ns: if response { 180_000 } else { 0 },
        reason: None,
    }
}

/// The calling thread's user + system CPU seconds.
fn thread_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let records = arg("--records", 400_000);
    let batch = arg("--batch", 200).max(1);
    let frames: Vec<HttpFrame> = (0..records as u64)
        .map(|i| HttpFrame::of_record(&record(i / 2, i % 2 == 1)))
        .collect();
    let observer = Observer::new(
        ObserverConfig {
            node_name: "bench-y".into(),
            capacity: records,
        },
        Arc::new(store()),
    );

    let (cpu, wall) = (thread_cpu_s(), Instant::now());
    let mut frames = frames.into_iter();
    loop {
        let step: Vec<HttpFrame> = frames.by_ref().take(batch).collect();
        if step.is_empty() {
            break;
        }
        observer.observe_http_frames(step);
    }
    let observe = (thread_cpu_s() - cpu, wall.elapsed().as_secs_f64());

    let entries = observer.snapshot();
    let (cpu, wall) = (thread_cpu_s(), Instant::now());
    let mut encoder = block::Encoder::default();
    let mut bytes = 0usize;
    for chunk in entries.chunks(ciliate_observer::history::BLOCK_FLOWS) {
        let rows: Vec<(u64, Row<'_>)> = chunk
            .iter()
            .filter_map(|n| match n.entry.as_ref() {
                Entry::Http(r) => Some((n.seq, Row::Http(r))),
                _ => None,
            })
            .collect();
        let (_, body) = encoder.encode_rows(&rows, 1, "default/bench-y");
        bytes += body.len();
    }
    let history = (thread_cpu_s() - cpu, wall.elapsed().as_secs_f64());

    let per = |s: f64| s / records as f64 * 1e6;
    println!("records {records} batch {batch} ring {}", entries.len());
    println!(
        "observe: {:.2} us CPU per record ({:.2} us wall)",
        per(observe.0),
        per(observe.1)
    );
    println!(
        "history: {:.2} us CPU per record ({:.2} us wall), {:.1} bytes per record in blocks",
        per(history.0),
        per(history.1),
        bytes as f64 / records as f64
    );
}
