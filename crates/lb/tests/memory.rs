//! What the balancer holds per Service, counted by the allocator (heap bytes, blocks, and
//! glibc's chunks for them; deterministic): 10,000 Services of one port with a two-endpoint
//! EndpointSlice each, decoded from JSON text as the agent decodes a request, the objects
//! themselves counted apart; and that deleting them all gives the memory back. Run with
//! `--nocapture` for the figures.

use std::sync::Arc;

use ciliate_lb::balancer::Change;
use ciliate_lb::{Balancer, IdAllocator, Node};
use ciliate_model::k8s::Object;
use ciliate_testutil::bench_services;
use ciliate_testutil::heap::{Counting, Stats};

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: u32 = 10_000;

fn live() -> i64 {
    Stats::now().live()
}

/// The bench's objects, decoded from their text as the agent reads a request (serde_json's
/// values would give exact list sizes that text does not).
fn objects() -> Vec<Arc<Object>> {
    let mut out = Vec::new();
    for i in 0..N {
        out.push(Arc::new(Object::Service(
            serde_json::from_str(&bench_services::service(i)).expect("decodes"),
        )));
        out.push(Arc::new(Object::EndpointSlice(
            serde_json::from_str(&bench_services::slice(i)).expect("decodes"),
        )));
    }
    out
}

#[test]
fn heap_per_service_and_returned_on_delete() {
    let n = i64::from(N);
    let base = Stats::now();
    let objs = objects();
    let with_objects = Stats::now();
    let mut b = Balancer::new(Node::default(), IdAllocator::new());
    let keys: Vec<_> = objs.iter().map(|o| o.key()).collect();
    let with_keys = Stats::now();
    let diff = b
        .apply(objs.iter().cloned().map(Change::Upsert).collect())
        .expect("applies");
    assert_eq!(b.frontend_count(), N as usize);
    drop(diff);
    let (bytes, blocks, chunks) = Stats::now().since(&with_keys);
    let (obytes, oblocks, ochunks) = with_objects.since(&base);
    println!(
        "balancer: {} B per Service besides the objects, in {} blocks, {} B of glibc chunks; \
         the objects: {} B per Service and its slice, in {} blocks, {} B of chunks",
        bytes / n,
        blocks / n,
        chunks / n,
        obytes / n,
        oblocks / n,
        ochunks / n,
    );
    drop(objs);
    b.apply(keys.into_iter().map(Change::Delete).collect())
        .expect("deletes");
    assert_eq!(b.service_count(), 0);
    let left = live() - base.live();
    println!("after deleting all: {left} B held");
    // Emptied tables give their room back (what stays is a few empty maps).
    assert!(
        left < 64 * 1024,
        "{left} B still held after deleting every Service"
    );
    // What the balancer holds per Service, besides the objects, as glibc counts it (session
    // 14: 624 B in 3 blocks; session 13: 1,100 B in 9, and 1,511 B in 18 before the slices'
    // keys were shared and sets of one kept in place): a ceiling that catches a table or a
    // copy of the names added.
    assert!(chunks / n <= 680, "{} B of chunks per Service", chunks / n);
    // The objects as decoded from text (session 15: 810 B in 7 blocks, with their short
    // strings in place, a Service's spec in a block of its own so that a slice's object is the
    // size of a slice, and an endpoint's one address in place; session 13: 1,322 B in 19 blocks
    // with lists without spare room; 1,882 B when each list had room for four).
    assert!(
        ochunks / n <= 860,
        "{} B of chunks per Service and its slice",
        ochunks / n
    );
}
