//! What the balancer holds per Service, counted by the allocator (heap bytes, deterministic):
//! 10,000 Services of one port with a two-endpoint EndpointSlice each, the objects themselves
//! counted apart; and that deleting them all gives the memory back. Run with `--nocapture` for
//! the figures.

use std::alloc::System;
use std::sync::Arc;

use ciliate_lb::balancer::Change;
use ciliate_lb::{Balancer, IdAllocator, Node};
use ciliate_model::k8s::Object;
use serde_json::json;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: u32 = 10_000;

fn live() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn ip(base: u32, i: u32) -> String {
    std::net::Ipv4Addr::from(base + i).to_string()
}

fn objects() -> Vec<Arc<Object>> {
    let mut out = Vec::new();
    for i in 0..N {
        let name = format!("svc-{i}");
        out.push(Arc::new(Object::Service(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"clusterIP": ip(0x0A60_0000, i + 1),
                         "ports": [{"name": "http", "port": 80, "targetPort": 5001}]}}))
            .expect("Service"),
        )));
        out.push(Arc::new(Object::EndpointSlice(
            serde_json::from_value(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-a"), "namespace": "bench",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 5001, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": [ip(0x0A80_0000, 2 * i)], "conditions": {"ready": true}},
                    {"addresses": [ip(0x0A80_0000, 2 * i + 1)], "conditions": {"ready": true}}
                ]}),
            )
            .expect("EndpointSlice"),
        )));
    }
    out
}

#[test]
fn heap_per_service_and_returned_on_delete() {
    let base = live();
    let objs = objects();
    let with_objects = live();
    let mut b = Balancer::new(Node::default(), IdAllocator::new());
    let keys: Vec<_> = objs.iter().map(|o| o.key()).collect();
    let with_keys = live();
    let diff = b
        .apply(objs.iter().cloned().map(Change::Upsert).collect())
        .expect("applies");
    assert_eq!(b.frontend_count(), N as usize);
    drop(diff);
    let held = live() - with_keys;
    println!(
        "balancer: {} B per Service besides the objects ({} B per Service and its slice)",
        held / i64::from(N),
        (with_objects - base) / i64::from(N)
    );
    drop(objs);
    b.apply(keys.into_iter().map(Change::Delete).collect())
        .expect("deletes");
    assert_eq!(b.service_count(), 0);
    let left = live() - base;
    println!("after deleting all: {left} B held");
    // Emptied tables give their room back (what stays is a few empty maps).
    assert!(
        left < 64 * 1024,
        "{left} B still held after deleting every Service"
    );
    // What the balancer holds per Service, besides the objects: a ceiling that catches a
    // table copied again (it was 1,700 B before names were shared).
    assert!(
        held / i64::from(N) < 2_048,
        "{} B per Service",
        held / i64::from(N)
    );
}
