//! What the source costs per object: lists N Services (paged by 500, as the watcher asks)
//! and then receives N watch events, from an in-process scripted API server, and prints the
//! time per object. The bodies are rendered before the clock starts, so the figures are the
//! client side only (HTTP body → kube's decoding → `Document` → the channel), plus copying
//! each body once into the mock's stream.
//!
//!     cargo run --release -p ciliate-k8s --example list_throughput -- 10000

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use ciliate_k8s::{spawn, Backoff, Options, ResourceKind, SourceEvent};
use serde_json::{json, Value};

fn service(i: usize, resource_version: usize) -> Value {
    json!({
        "metadata": {
            "name": format!("svc-{i}"), "namespace": "bench", "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "resourceVersion": resource_version.to_string(), "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"app": format!("app-{i}")},
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:spec": {"f:ports": {}, "f:selector": {}}}}]
        },
        "spec": {
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
            "selector": {"app": format!("app-{i}")},
            "clusterIP": format!("10.96.{}.{}", i / 256, i % 256),
            "clusterIPs": [format!("10.96.{}.{}", i / 256, i % 256)],
            "type": "ClusterIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"
        },
        "status": {"loadBalancer": {}}
    })
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N, a number of Services"))
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(n));
}

async fn run(n: usize) {
    const PAGE: usize = 500;
    let pages: Vec<String> = (0..n.div_ceil(PAGE).max(1))
        .map(|p| {
            let items = (p * PAGE..((p + 1) * PAGE).min(n))
                .map(|i| service(i, i + 1))
                .collect();
            let mut page = common::list("v1", "Service", &(n + 1).to_string(), items);
            if (p + 1) * PAGE < n {
                page["metadata"]["continue"] = json!((p + 1).to_string());
            }
            page.to_string()
        })
        .collect();
    let list_bytes: usize = pages.iter().map(String::len).sum();
    let events: Vec<String> = (0..n)
        .map(|i| {
            let mut s = service(i, n + 2 + i);
            s["apiVersion"] = json!("v1");
            s["kind"] = json!("Service");
            format!("{}\n", json!({"type": "MODIFIED", "object": s}))
        })
        .collect();

    let (client, mut api) = common::pair();
    let opts = Options {
        kinds: vec![ResourceKind::Service],
        node_name: None,
        backoff: Backoff::Fixed(Duration::ZERO),
        channel_capacity: 1024,
    };
    let started = Instant::now();
    let mut source = spawn(client, opts);
    let server = tokio::spawn(async move {
        let mut pages = pages.into_iter();
        loop {
            let call = api.next().await;
            if call.is_watch() {
                let watch = call.watch();
                for line in &events {
                    watch.raw(line.as_bytes());
                }
                // Keep the stream open until the client is done.
                std::future::pending::<()>().await;
            } else {
                call.text(200, pages.next().expect("no more pages than rendered"));
            }
        }
    });

    let mut listed = 0usize;
    let mut list_time = Duration::ZERO;
    let mut applied = 0usize;
    while let Some(event) = source.events.recv().await {
        match event {
            SourceEvent::InitApply(_) => listed += 1,
            SourceEvent::InitDone(_) => {
                list_time = started.elapsed();
                if n == 0 {
                    break;
                }
            }
            SourceEvent::Apply(_) => {
                applied += 1;
                if applied == n {
                    break;
                }
            }
            _ => {}
        }
    }
    let watch_time = started.elapsed() - list_time;
    assert_eq!(listed, n);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "{n} Services: list {:.1} ms ({:.1} µs/object, {:.1} MB of JSON), watch {:.1} ms ({:.1} µs/event)",
        list_time.as_secs_f64() * 1e3,
        per(list_time),
        list_bytes as f64 / 1e6,
        watch_time.as_secs_f64() * 1e3,
        per(watch_time),
    );
    source.task.abort();
    server.abort();
}
