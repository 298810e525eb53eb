#![allow(clippy::unwrap_used)]

use super::*;
use ciliate_observer::proto::flow::{layer4, Endpoint, Http, Layer4, Layer7, Service, Tcp, Udp};
use proptest::prelude::*;

fn ep(namespace: &str, pod: &str, app: &str, identity: u32) -> Option<Endpoint> {
    Some(Endpoint {
        namespace: namespace.into(),
        pod_name: pod.into(),
        labels: if app.is_empty() {
            Vec::new()
        } else {
            vec![format!("k8s:app={app}")]
        },
        identity,
        ..Endpoint::default()
    })
}

fn world() -> Option<Endpoint> {
    Some(Endpoint {
        identity: 2,
        labels: vec!["reserved:world".into()],
        ..Endpoint::default()
    })
}

fn tcp(sport: u32, dport: u32) -> Option<Layer4> {
    Some(Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port: sport,
            destination_port: dport,
            ..Tcp::default()
        })),
    })
}

fn flow(
    src: Option<Endpoint>,
    dst: Option<Endpoint>,
    dport: u32,
    verdict: Verdict,
    t: i64,
) -> Flow {
    Flow {
        source: src,
        destination: dst,
        l4: tcp(40000, dport),
        verdict: verdict as i32,
        time: Some(pbjson_types::Timestamp {
            seconds: t,
            nanos: 0,
        }),
        ..Flow::default()
    }
}

fn via(mut f: Flow, svc: &str) -> Flow {
    f.destination_service = Some(Service {
        name: svc.into(),
        namespace: "demo".into(),
    });
    f
}

fn reply(mut f: Flow) -> Flow {
    f.is_reply = Some(pbjson_types::BoolValue { value: true });
    std::mem::swap(&mut f.source, &mut f.destination);
    std::mem::swap(&mut f.source_service, &mut f.destination_service);
    f.l4 = tcp(8080, 40000);
    f
}

fn edge<'a>(g: &'a Graph, from: &str, to: &str) -> &'a Edge {
    g.edges
        .iter()
        .find(|e| e.from == from && e.to == to)
        .unwrap_or_else(|| panic!("no edge {from} -> {to} in {:#?}", g.edges))
}

#[test]
fn frontends_reach_backends_through_the_service() {
    let flows = vec![
        via(
            flow(
                ep("demo", "frontend-0", "frontend", 300),
                ep("demo", "backend-0", "backend", 301),
                8080,
                Verdict::Forwarded,
                100,
            ),
            "backend",
        ),
        via(
            flow(
                ep("demo", "frontend-1", "frontend", 300),
                ep("demo", "backend-1", "backend", 301),
                8080,
                Verdict::Forwarded,
                105,
            ),
            "backend",
        ),
        reply(via(
            flow(
                ep("demo", "frontend-0", "frontend", 300),
                ep("demo", "backend-0", "backend", 301),
                8080,
                Verdict::Forwarded,
                106,
            ),
            "backend",
        )),
    ];
    let g = Aggregator { window: 10.0 }.aggregate(&flows, 110.0);
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["w:demo/backend", "w:demo/frontend", "s:demo/backend"]);
    assert_eq!(g.edges.len(), 2, "{:#?}", g.edges);
    let front = edge(&g, "w:demo/frontend", "s:demo/backend");
    assert_eq!(
        (
            front.protocol.as_str(),
            front.port,
            front.forwarded,
            front.dropped
        ),
        ("TCP", 8080, 2, 0)
    );
    assert_eq!(front.verdict, "forwarded");
    assert!((front.rate - 0.2).abs() < 1e-9, "{}", front.rate);
    let back = edge(&g, "s:demo/backend", "w:demo/backend");
    assert_eq!(back.forwarded, 2);
    let fe = g.nodes.iter().find(|n| n.id == "w:demo/frontend").unwrap();
    assert_eq!(fe.identities, vec![300]);
    assert_eq!(fe.pods, vec!["frontend-0", "frontend-1"]);
    assert_eq!(fe.pod_count, 2);
    // Layered: frontend, then the Service, then the backend.
    let layer = |id: &str| g.nodes.iter().find(|n| n.id == id).unwrap().layer;
    assert!(layer("w:demo/frontend") < layer("s:demo/backend"));
    assert!(layer("s:demo/backend") < layer("w:demo/backend"));
    assert_eq!(g.areas.len(), 1);
    assert_eq!(g.areas[0].namespace, "demo");
}

#[test]
fn drops_make_an_edge_red_and_keep_the_reason() {
    let mut drop = flow(
        ep("demo", "backend-0", "backend", 301),
        ep("demo", "frontend-0", "frontend", 300),
        8080,
        Verdict::Dropped,
        100,
    );
    drop.drop_reason_desc = 133;
    let mut flows = vec![drop.clone(), drop];
    let g = Aggregator::default().aggregate(&flows, 100.0);
    let e = edge(&g, "w:demo/backend", "w:demo/frontend");
    assert_eq!((e.verdict, e.dropped, e.forwarded), ("dropped", 2, 0));
    assert_eq!(e.drop_reasons, vec!["Policy denied"]);
    flows.push(flow(
        ep("demo", "backend-0", "backend", 301),
        ep("demo", "frontend-0", "frontend", 300),
        8080,
        Verdict::Forwarded,
        100,
    ));
    let g = Aggregator::default().aggregate(&flows, 100.0);
    assert_eq!(
        edge(&g, "w:demo/backend", "w:demo/frontend").verdict,
        "mixed"
    );
}

#[test]
fn ports_and_protocols_are_separate_connections_and_rates_use_the_window() {
    let mut udp = flow(ep("a", "x-0", "x", 5), world(), 53, Verdict::Forwarded, 50);
    udp.l4 = Some(Layer4 {
        protocol: Some(layer4::Protocol::Udp(Udp {
            source_port: 1,
            destination_port: 53,
        })),
    });
    let flows = vec![
        udp,
        flow(ep("a", "x-0", "x", 5), world(), 443, Verdict::Forwarded, 99),
        flow(ep("a", "x-0", "x", 5), world(), 443, Verdict::Forwarded, 10),
    ];
    let g = Aggregator { window: 5.0 }.aggregate(&flows, 100.0);
    assert_eq!(g.edges.len(), 2);
    let https = g.edges.iter().find(|e| e.port == 443).unwrap();
    assert_eq!(https.forwarded, 2);
    assert!(
        (https.rate - 0.2).abs() < 1e-9,
        "one flow in the last 5 s: {}",
        https.rate
    );
    assert_eq!(
        g.edges.iter().find(|e| e.port == 53).unwrap().protocol,
        "UDP"
    );
    // The world is outside every namespace: an area of its own, placed last.
    assert_eq!(g.areas.last().unwrap().namespace, "");
    assert!((https.last_seen - 99.0).abs() < 1e-9);
}

#[test]
fn http_requests_and_responses_land_on_the_request_edge() {
    let http = |code: u32| {
        Some(Layer7 {
            record: Some(layer7::Record::Http(Http {
                code,
                method: "GET".into(),
                url: "http://backend/api/items?x=1".into(),
                ..Http::default()
            })),
            ..Layer7::default()
        })
    };
    let mut req = flow(
        ep("demo", "frontend-0", "frontend", 300),
        ep("demo", "backend-0", "backend", 301),
        8080,
        Verdict::Forwarded,
        100,
    );
    req.l7 = http(0);
    let mut resp = reply(req.clone());
    resp.l7 = http(200);
    let g = Aggregator::default().aggregate(&[req.clone(), resp.clone(), resp], 100.0);
    let e = edge(&g, "w:demo/frontend", "w:demo/backend");
    assert_eq!(
        e.forwarded, 1,
        "responses are not counted as flows of the connection"
    );
    assert_eq!(
        e.l7,
        vec![
            L7Row {
                method: "GET".into(),
                path: "/api/items".into(),
                status: 200,
                count: 2
            },
            L7Row {
                method: "GET".into(),
                path: "/api/items".into(),
                status: 0,
                count: 1
            },
        ]
    );
    assert_eq!(
        e.port, 8080,
        "the response's source port is the connection's port"
    );
}

#[test]
fn flows_of_a_connection_without_the_service_go_through_it_too() {
    let fe = || ep("demo", "frontend-0", "frontend", 300);
    let be = || ep("demo", "backend-0", "backend", 301);
    let mut drop = flow(fe(), be(), 8080, Verdict::Dropped, 2);
    drop.drop_reason_desc = 181;
    drop.ingress_denied_by = vec![ciliate_observer::proto::flow::Policy {
        name: "deny-frontends".into(),
        namespace: "demo".into(),
        ..Default::default()
    }];
    let flows = vec![
        via(flow(fe(), be(), 8080, Verdict::Forwarded, 1), "backend"),
        // The backend's side of the same connection: no Service known there.
        flow(fe(), be(), 8080, Verdict::Forwarded, 1),
        drop,
        // Another port was never seen through the Service: direct.
        flow(fe(), be(), 9090, Verdict::Forwarded, 1),
    ];
    let g = Aggregator::default().aggregate(&flows, 2.0);
    assert_eq!(g.edges.len(), 3, "{:#?}", g.edges);
    let back = edge(&g, "s:demo/backend", "w:demo/backend");
    assert_eq!(
        (back.forwarded, back.dropped, back.verdict),
        (2, 1, "mixed")
    );
    assert_eq!(back.drop_reasons, vec!["Policy denied by denylist"]);
    assert_eq!(back.denied_by, vec!["demo/deny-frontends"]);
    assert_eq!(edge(&g, "w:demo/frontend", "w:demo/backend").port, 9090);
}

#[test]
fn a_flow_to_the_service_address_before_translation_ends_at_the_service() {
    let f = via(
        flow(
            ep("demo", "frontend-0", "frontend", 300),
            world(),
            80,
            Verdict::Dropped,
            1,
        ),
        "backend",
    );
    let g = Aggregator::default().aggregate(&[f], 1.0);
    assert_eq!(g.edges.len(), 1);
    assert_eq!(g.edges[0].to, "s:demo/backend");
}

/// A synthetic cluster: `n` workloads in `n / 50` namespaces, each calling the next two.
pub(crate) fn synthetic(n: usize, per: usize) -> Vec<Flow> {
    let mut flows = Vec::new();
    for i in 0..n {
        for k in 1..=per {
            let j = (i + k) % n;
            let ns = |x: usize| format!("ns{}", x / 50);
            flows.push(flow(
                ep(
                    &ns(i),
                    &format!("w{i}-0"),
                    &format!("w{i}"),
                    1000 + i as u32,
                ),
                ep(
                    &ns(j),
                    &format!("w{j}-0"),
                    &format!("w{j}"),
                    1000 + j as u32,
                ),
                8080,
                if (i + k) % 7 == 0 {
                    Verdict::Dropped
                } else {
                    Verdict::Forwarded
                },
                100,
            ));
        }
    }
    flows
}

#[test]
fn a_thousand_workloads_fit_without_overlap() {
    let g = Aggregator::default().aggregate(&synthetic(1000, 2), 100.0);
    assert_eq!(g.nodes.len(), 1000);
    assert_eq!(g.edges.len(), 2000);
    assert_eq!(g.areas.len(), 20);
    // No two boxes overlap, every box lies inside its namespace's area.
    let mut boxes: Vec<(f64, f64)> = g.nodes.iter().map(|n| (n.x, n.y)).collect();
    boxes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    boxes.dedup();
    assert_eq!(boxes.len(), 1000);
    for n in &g.nodes {
        let a = g.areas.iter().find(|a| a.namespace == n.namespace).unwrap();
        assert!(
            n.x >= a.x && n.x + n.w <= a.x + a.w && n.y >= a.y && n.y + n.h <= a.y + a.h,
            "{} outside its area",
            n.id
        );
    }
    for (i, a) in g.areas.iter().enumerate() {
        for b in &g.areas[i + 1..] {
            let apart =
                a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y;
            assert!(apart, "areas {} and {} overlap", a.namespace, b.namespace);
        }
    }
    // Readable: about as wide as tall (16:10), not a strip.
    let ratio = g.width / g.height;
    assert!((0.8..=3.0).contains(&ratio), "{} x {}", g.width, g.height);
}

proptest! {
    /// The graph does not depend on the order flows arrive in (the page must not jump around
    /// when the same flows come in another order), and every edge's ends are boxes.
    #[test]
    fn order_does_not_matter(seed in any::<u64>(), n in 2usize..30) {
        let flows = synthetic(n, 2);
        let mut shuffled = flows.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let a = Aggregator::default().aggregate(&flows, 100.0);
        let b = Aggregator::default().aggregate(&shuffled, 100.0);
        prop_assert_eq!(&a, &b);
        for e in &a.edges {
            prop_assert!(a.nodes.iter().any(|n| n.id == e.from));
            prop_assert!(a.nodes.iter().any(|n| n.id == e.to));
            prop_assert_eq!(e.forwarded + e.dropped, 1);
        }
        let total: u64 = a.edges.iter().map(|e| e.forwarded + e.dropped).sum();
        prop_assert_eq!(total, flows.len() as u64);
    }
}
