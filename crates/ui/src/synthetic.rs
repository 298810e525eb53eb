//! A synthetic cluster's flows, for the bench and tests: `n` workloads (one pod each) in
//! namespaces of 50, each calling the next ones on 8080, every seventh call dropped by policy,
//! every fifth through a Service and carrying an HTTP request. What a fake Observer serves
//! (`ciliate-ui-synthetic`) so the page can be measured at a scale the lab cannot reach.

use ciliate_observer::proto::flow::{
    layer4, layer7, Endpoint, Flow, Http, Layer4, Layer7, Service, Tcp, Verdict,
};

/// Workloads per namespace.
pub const PER_NAMESPACE: usize = 50;

fn endpoint(i: usize) -> Endpoint {
    let ns = format!("ns{}", i / PER_NAMESPACE);
    Endpoint {
        id: u32::try_from(i).unwrap_or(u32::MAX),
        identity: 10_000 + u32::try_from(i).unwrap_or(0),
        namespace: ns.clone(),
        pod_name: format!("w{i}-0"),
        labels: vec![
            format!("k8s:app=w{i}"),
            format!("k8s:io.kubernetes.pod.namespace={ns}"),
        ],
        ..Endpoint::default()
    }
}

/// Call `k` (1-based) of workload `i` out of `n`, at `time` (seconds since the epoch).
pub fn call(n: usize, i: usize, k: usize, time: i64) -> Flow {
    let n = n.max(1);
    let j = (i + k) % n;
    let dropped = (i + k).is_multiple_of(7);
    let mut flow = Flow {
        time: Some(pbjson_types::Timestamp {
            seconds: time,
            nanos: 0,
        }),
        node_name: format!("node{}", i % 3),
        source: Some(endpoint(i)),
        destination: Some(endpoint(j)),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40_000 + u32::try_from(k).unwrap_or(0),
                destination_port: 8080,
                ..Tcp::default()
            })),
        }),
        verdict: if dropped {
            Verdict::Dropped as i32
        } else {
            Verdict::Forwarded as i32
        },
        drop_reason_desc: if dropped { 133 } else { 0 },
        ..Flow::default()
    };
    if (i + k).is_multiple_of(5) {
        flow.destination_service = Some(Service {
            name: format!("w{j}"),
            namespace: format!("ns{}", j / PER_NAMESPACE),
        });
        flow.l7 = Some(Layer7 {
            record: Some(layer7::Record::Http(Http {
                method: "GET".into(),
                url: format!("http://w{j}/api/items"),
                protocol: "HTTP/1.1".into(),
                ..Http::default()
            })),
            ..Layer7::default()
        });
    }
    flow
}

/// Every call of every workload once: `n * calls` flows.
pub fn cluster(n: usize, calls: usize, time: i64) -> Vec<Flow> {
    (0..n)
        .flat_map(|i| (1..=calls).map(move |k| call(n, i, k, time)))
        .collect()
}
