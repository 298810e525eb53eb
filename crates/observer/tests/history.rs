//! GetFlows over the ring and the flow history together, through the gRPC server on a unix
//! socket: time ranges older than the ring, `--last N` beyond it, `first`, and follow, each
//! flow once, in order, without gaps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ciliate_observer::history::{FlowHistory, HistoryConfig};
use ciliate_observer::proto::flow::{Endpoint, Flow, FlowFilter};
use ciliate_observer::proto::observer::{get_flows_response, GetFlowsRequest};
use ciliate_observer::{Observer, Snapshot};
use common::{observer_on_node_1, serve_in, ServedObserver};

const T0: i64 = 1_796_000_000;

fn flow(i: u32) -> Flow {
    let pod = if i.is_multiple_of(2) { "web" } else { "db" };
    Flow {
        time: Some(pbjson_types::Timestamp {
            seconds: T0 + i64::from(i),
            nanos: 0,
        }),
        drop_reason: i,
        destination: Some(Endpoint {
            namespace: "prod".into(),
            pod_name: pod.into(),
            ..Endpoint::default()
        }),
        ..Flow::default()
    }
}

struct Setup {
    observer: Arc<Observer>,
    history: FlowHistory,
    server: ServedObserver,
}

/// An observer with a ring of 10 and a history, 100 flows through it (1 s apart), served.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let observer = observer_on_node_1(10, Snapshot::default());
    let history = FlowHistory::open(
        HistoryConfig {
            dir: dir.path().join("history"),
            max_bytes: 1 << 30,
            max_age: None,
            queue_flows: 1 << 16,
        },
        "node-1",
    )
    .expect("history");
    observer.attach_history(history.clone()).expect("attach");
    for i in 0..100 {
        observer.push_flow(flow(i));
    }
    Setup {
        server: serve_in(dir, &observer),
        observer,
        history,
    }
}

async fn get(s: &Setup, req: GetFlowsRequest, want: usize) -> Vec<u32> {
    let mut client = s.server.connect().await;
    let mut stream = client.get_flows(req).await.expect("get").into_inner();
    let mut got = Vec::new();
    while got.len() < want {
        match stream.message().await.expect("message") {
            Some(r) => {
                if let Some(get_flows_response::ResponseTypes::Flow(f)) = r.response_types {
                    got.push(f.drop_reason);
                }
            }
            None => break,
        }
    }
    got
}

fn at(i: i64) -> Option<pbjson_types::Timestamp> {
    Some(pbjson_types::Timestamp {
        seconds: T0 + i,
        nanos: 0,
    })
}

#[tokio::test]
async fn since_reads_the_history_then_the_ring_once_each_in_order() {
    let s = setup().await;
    let req = GetFlowsRequest {
        since: at(0),
        ..Default::default()
    };
    assert_eq!(get(&s, req, 1000).await, (0..100).collect::<Vec<_>>());
    // A window inside the history only.
    let req = GetFlowsRequest {
        since: at(20),
        until: at(29),
        ..Default::default()
    };
    assert_eq!(get(&s, req, 1000).await, (20..30).collect::<Vec<_>>());
    // The same filters as the ring: to a pod.
    let req = GetFlowsRequest {
        since: at(0),
        whitelist: vec![FlowFilter {
            destination_pod: vec!["prod/db".into()],
            ..FlowFilter::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        get(&s, req, 1000).await,
        (0..100).filter(|i| i % 2 == 1).collect::<Vec<_>>()
    );
    s.history.close();
}

#[tokio::test]
async fn last_n_beyond_the_ring_and_first_n() {
    let s = setup().await;
    let req = GetFlowsRequest {
        number: 25,
        ..Default::default()
    };
    assert_eq!(get(&s, req, 1000).await, (75..100).collect::<Vec<_>>());
    let req = GetFlowsRequest {
        number: 5,
        ..Default::default()
    };
    assert_eq!(
        get(&s, req, 1000).await,
        (95..100).collect::<Vec<_>>(),
        "the ring alone"
    );
    let req = GetFlowsRequest {
        number: 15,
        first: true,
        ..Default::default()
    };
    assert_eq!(get(&s, req, 1000).await, (0..15).collect::<Vec<_>>());
    let req = GetFlowsRequest {
        number: 95,
        first: true,
        ..Default::default()
    };
    assert_eq!(
        get(&s, req, 1000).await,
        (0..95).collect::<Vec<_>>(),
        "history then ring"
    );
    s.history.close();
}

#[tokio::test]
async fn follow_with_since_continues_live_without_gap_or_repeat() {
    let s = setup().await;
    let req = GetFlowsRequest {
        since: at(0),
        follow: true,
        ..Default::default()
    };
    let mut client = s.server.connect().await;
    let mut stream = client.get_flows(req).await.expect("get").into_inner();
    let mut got = Vec::new();
    while got.len() < 100 {
        let r = stream.message().await.expect("message").expect("open");
        if let Some(get_flows_response::ResponseTypes::Flow(f)) = r.response_types {
            got.push(f.drop_reason);
        }
    }
    for i in 100..110 {
        s.observer.push_flow(flow(i));
    }
    while got.len() < 110 {
        let r = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("live flows arrive")
            .expect("message")
            .expect("open");
        if let Some(get_flows_response::ResponseTypes::Flow(f)) = r.response_types {
            got.push(f.drop_reason);
        }
    }
    assert_eq!(got, (0..110).collect::<Vec<_>>());
    s.history.close();
}
