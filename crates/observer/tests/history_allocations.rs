//! The flow history's writer allocates per block and per distinct endpoint of a block, not per
//! flow: a block of datapath events (as the agent's ring holds them) is encoded with a few
//! dozen allocations, however many flows it holds. Counted with a counting allocator, on
//! this test's thread only (its own test binary, so nothing else shares the count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ciliate_model::monitor::{CtState, EthernetAddrs, EventKind, EventRecord, RecordL4};
use ciliate_model::MacAddr;
use ciliate_observer::history::block::{Encoder, Row};
use ciliate_observer::record::{FlowIds, NodeNames, Recorded};
use ciliate_observer::store::{EndpointInfo, Snapshot};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches a
// thread-local `Cell` of a const-initialized u64 (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const PODS: u32 = 20;

fn pod(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 2 + u8::try_from(i).expect("few pods"))
}

/// 4,096 events between 20 pods (TCP with every flag, Ethernet addresses, an interface, node
/// labels): what a busy node's ring holds.
fn records() -> Vec<Recorded> {
    let mut store = Snapshot::default();
    for i in 0..PODS {
        store.endpoints.insert(
            pod(i),
            EndpointInfo {
                id: 100 + i,
                identity: 256 + i,
                namespace: format!("team-{}", i % 4),
                pod_name: format!("pod-{i}"),
                labels: vec![format!("k8s:app=pod-{i}"), "k8s:tier=front".into()],
            }
            .into(),
        );
        store
            .interfaces
            .insert(40 + i, Arc::from(format!("lxc{i}")));
    }
    let node = Arc::new(NodeNames {
        node_name: "default/node-1".into(),
        cluster: "default".into(),
        labels: vec!["zone=a".into(), "kubernetes.io/os=linux".into()],
    });
    let ids = FlowIds::default();
    (0..4096u32)
        .map(|k| {
            let (s, d) = (k % PODS, (k / PODS + 1 + k) % PODS);
            let ev = EventRecord {
                kind: EventKind::Trace,
                time: Some(
                    UNIX_EPOCH + Duration::from_micros(1_796_000_000_000_000 + u64::from(k)),
                ),
                code: 5,
                verdict: Default::default(),
                endpoint: u16::try_from(100 + s).expect("small"),
                ifindex: 40 + s,
                src_identity: 256 + s,
                dst_identity: 256 + d,
                ct_state: CtState::Established,
                len: 66,
                ethertype: 0x0800,
                src: Some(pod(s)),
                dst: Some(pod(d)),
                l4: Some(RecordL4::Tcp {
                    sport: 40000 + u16::try_from(k % 20000).expect("small"),
                    dport: 8080,
                    flags: u8::try_from(k % 256).expect("byte"),
                }),
                rev_nat: 0,
                rule: 0,
                ethernet: Some(EthernetAddrs {
                    source: MacAddr([2, 0, 0, 0, 0, u8::try_from(s).expect("small")]),
                    destination: MacAddr([2, 0, 0, 0, 0, u8::try_from(d).expect("small")]),
                }),
            };
            Recorded::capture(ev, &store, &node, &ids)
        })
        .collect()
}

#[test]
fn a_block_of_events_is_written_with_allocations_per_block_not_per_flow() {
    let records = records();
    let rows: Vec<(u64, Row<'_>)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u64 + 1, Row::Event(r)))
        .collect();
    let mut encoder = Encoder::default();
    // A first block grows the encoder's buffers, as the writer's first block does.
    let _ = encoder.encode_rows(&rows, 1, "default/node-1");
    let before = allocations();
    let (meta, body) = encoder.encode_rows(&rows, 1, "default/node-1");
    let spent = allocations() - before;
    assert_eq!(meta.count, 4096);
    assert!(!body.is_empty());
    // Per block: the columns, the sections, each chunk's compressed bytes, the pod sets;
    // per distinct endpoint (20 pods): its entry and its strings. Building each flow cost
    // about a dozen per flow (~50,000 here).
    assert!(
        spent < 1000,
        "{spent} allocations for a block of 4,096 flows ({:.2} per flow)",
        spent as f64 / 4096.0
    );
}
