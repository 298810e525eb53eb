//! Scale: 1,000 identities, 1,000 rules, 100 endpoints. Run with
//! `cargo test -p ciliate-policy --release --test scale -- --ignored --nocapture` to see timings;
//! the plain run checks only that it works.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ciliate_model::labels::Labels;
use ciliate_model::policy::{Direction, PolicyResource, PROTO_TCP};
use ciliate_policy::{IdentityLabels, NamedPorts, PolicyEngine};
use serde_json::json;

fn setup(identities: u32, rules: u32) -> (IdentityLabels, PolicyEngine) {
    let ids: IdentityLabels = (0..identities)
        .map(|i| {
            let l = format!("app=app{i},role=server,io.kubernetes.pod.namespace=default");
            (1000 + i, Labels::parse_list(&l, "k8s").unwrap())
        })
        .collect();
    let mut e = PolicyEngine::default();
    let ingress: Vec<_> = (0..rules)
        .map(|i| {
            json!({
                "fromEndpoints": [{"matchLabels": {"app": format!("app{i}")}}],
                "toPorts": [{"ports": [{"port": (1000 + i % 1000).to_string(), "protocol": "TCP"}]}],
            })
        })
        .collect();
    let p: PolicyResource = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "big", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"role": "server"}}, "ingress": ingress},
    }))
    .unwrap();
    e.upsert(p).unwrap();
    (ids, e)
}

fn run(identities: u32, rules: u32, endpoints: u32) -> (f64, usize) {
    let (ids, mut e) = setup(identities, rules);
    let named = NamedPorts::new();
    let start = Instant::now();
    let r = e.resolve(&ids, &named);
    let mut entries = 0;
    for i in 0..endpoints {
        let p = r.endpoint_policy(1000 + i).policy;
        entries += p.entries.len();
        assert!(p
            .lookup(
                Direction::Ingress,
                1000 + rules - 1,
                PROTO_TCP,
                (1000 + (rules - 1) % 1000) as u16
            )
            .is_allowed());
    }
    (
        start.elapsed().as_secs_f64() * 1000.0,
        entries / endpoints as usize,
    )
}

#[test]
fn small_scale_works() {
    let (_, per_endpoint) = run(50, 50, 5);
    assert_eq!(per_endpoint, 52);
}

#[test]
#[ignore = "timing; run in release"]
fn thousand_rules_thousand_identities() {
    let (ms, per_endpoint) = run(1000, 1000, 100);
    println!("resolve + 100 endpoints (1000 rules, 1000 identities): {ms:.1} ms, {per_endpoint} entries each");
}

#[test]
#[ignore = "timing; run in release"]
fn where_the_time_goes() {
    let (ids, mut e) = setup(1000, 1000);
    let named = NamedPorts::new();
    let t = Instant::now();
    let r = e.resolve(&ids, &named);
    println!("resolve: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    let t = Instant::now();
    r.endpoint_policy(1000);
    println!(
        "first endpoint: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    for i in 1..100 {
        r.endpoint_policy(1000 + i);
    }
    println!("99 more: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
}
