//! A Hubble client built from the independent copy of Hubble's protos in tests/hubble-proto/
//! reads a running observer server: what `hubble observe` would see.

use std::sync::Arc;

use ciliate_model::monitor::{EventKind, MonitorEvent, L4};
use ciliate_observer::proto::flow::LostEventSource;
use ciliate_observer::server::{bind_unix, serve_unix, Service};
use ciliate_observer::store::{EndpointInfo, Snapshot};
use ciliate_observer::{Observer, ObserverConfig};

#[allow(clippy::all, missing_docs, missing_debug_implementations)]
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

use hubble::flow as hf;
use hubble::observer as ho;

fn event(kind: EventKind, code: u8, dport: u16) -> MonitorEvent {
    MonitorEvent {
        kind,
        time: "2024-05-01T10:00:00.5Z".into(),
        code,
        reason: String::new(),
        endpoint: 1,
        ifindex: 9,
        src_identity: 256,
        dst_identity: 257,
        ct_state: "new".into(),
        len: 60,
        ethertype: 0x0800,
        src: Some("10.200.0.2".parse().expect("ip")),
        dst: Some("10.200.0.3".parse().expect("ip")),
        l4: Some(L4::Tcp {
            sport: 41000,
            dport,
            flags: vec!["SYN".into()],
        }),
        rev_nat: 0,
    }
}

#[tokio::test]
async fn a_hubble_client_reads_flows_and_status() {
    let mut store = Snapshot::default();
    for (ip, id, pod) in [("10.200.0.2", 1, "client"), ("10.200.0.3", 2, "server")] {
        store.endpoints.insert(
            ip.parse().expect("ip"),
            EndpointInfo {
                id,
                identity: 255 + id,
                namespace: "default".into(),
                pod_name: pod.into(),
                labels: vec![format!("k8s:app={pod}")],
            },
        );
    }
    let observer = Arc::new(Observer::new(
        ObserverConfig {
            node_name: "node-1".into(),
            capacity: 16,
        },
        Arc::new(store),
    ));
    observer.observe(&event(EventKind::Trace, 5, 80));
    observer.observe(&event(EventKind::Drop, 133, 443));
    observer.lost(3, LostEventSource::ObserverEventsQueue);

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("hubble.sock");
    let listener = bind_unix(&socket).expect("bind");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_unix(
        Service::new(Arc::clone(&observer), "0.1.0-test", "unix://hubble.sock"),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Connect with the generated client of the *test* protos, over the unix socket.
    let path = socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .expect("connect");
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
    assert_eq!(nodes.nodes[0].name, "node-1");
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
    assert_eq!(got[0].node_name, "node-1");
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
    let Some(hf::layer4::Protocol::Tcp(tcp)) = f.l4.and_then(|l| l.protocol) else {
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
    assert_eq!(f.node_name, "node-1");

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

    let _ = stop_tx.send(());
    drop(stream);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
}

/// Throughput of decode + enrich + ring + filter, printed, never asserted:
/// `cargo test -p ciliate-observer --release --test compat -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn throughput() {
    let mut store = Snapshot::default();
    store.endpoints.insert(
        "10.200.0.2".parse().expect("ip"),
        EndpointInfo {
            id: 1,
            identity: 256,
            namespace: "default".into(),
            pod_name: "client".into(),
            labels: vec!["k8s:app=client".into()],
        },
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
    let ev = event(EventKind::Trace, 5, 80);
    let n = 1_000_000u32;
    let start = std::time::Instant::now();
    let mut matched = 0u32;
    for _ in 0..n {
        let f = ciliate_observer::convert::to_flow(&ev, store.as_ref(), "n");
        if filters.matches(&f) {
            matched += 1;
        }
        observer.push_flow(f);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{n} events decoded, enriched, filtered and kept in {secs:.2}s: {:.0} events/s ({matched} matched)", f64::from(n) / secs);
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
