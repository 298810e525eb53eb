//! Tests of the block format: queries that read only the index and the chunks they need answer
//! as a full scan does, blocks of the previous format are still read, and a block whose
//! sections are inconsistent is skipped and counted, never trusted.

use std::sync::Arc;

use proptest::prelude::*;

use super::block::time_ns;
use super::tests::flow;
use super::*;
use crate::proto::flow::{Endpoint, FlowFilter};

fn config(dir: &Path) -> HistoryConfig {
    HistoryConfig {
        dir: dir.to_owned(),
        max_bytes: 1 << 30,
        max_age: None,
        queue_flows: 1 << 16,
    }
}

fn query(
    h: &FlowHistory,
    whitelist: &[FlowFilter],
    since: Option<i64>,
    until: Option<i64>,
) -> Vec<Flow> {
    let filters = FlowFilters::compile(whitelist, &[]).expect("filters");
    let prefilter = PodPrefilter::new(whitelist);
    let scan = Scan {
        filters: &filters,
        prefilter: &prefilter,
        since_ns: since,
        until_ns: until,
        ring_from: u64::MAX,
    };
    let mut out = Vec::new();
    h.snapshot().forward(&scan, 0, &mut |f| {
        out.push(f);
        true
    });
    out
}

/// What a full scan answers: every flow, judged by the filters and the time range alone.
fn full_scan(
    flows: &[Flow],
    whitelist: &[FlowFilter],
    since: Option<i64>,
    until: Option<i64>,
) -> Vec<Flow> {
    let filters = FlowFilters::compile(whitelist, &[]).expect("filters");
    flows
        .iter()
        .filter(|f| {
            time_ns(f).is_none_or(|t| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t <= u))
                && filters.matches(f)
        })
        .cloned()
        .collect()
}

/// Writes `flows` (sequence numbers from 1) and waits until all are on disk.
fn written(dir: &Path, flows: &[Flow]) -> FlowHistory {
    let h = FlowHistory::open(config(dir), "node-1").expect("opens");
    let numbered: Vec<Numbered> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| Numbered {
            seq: i as u64 + 1,
            entry: Arc::new(crate::ring::Entry::Flow(Box::new(f.clone()))),
        })
        .collect();
    h.offer(&numbered);
    h.close();
    assert_eq!(h.written(), flows.len() as u64);
    h
}

const PODS: [&str; 6] = ["web-1", "web-2", "db", "client-a", "client-b", ""];
const PREFIXES: [&str; 10] = [
    "prod/web",
    "web",
    "dev/",
    "db",
    "client",
    "prod/client-a",
    "x",
    "dev/db",
    "/web",
    "prod/db/x",
];

fn any_flow() -> impl Strategy<Value = (usize, usize, bool, bool, u8, bool)> {
    (
        0..PODS.len(),
        0..PODS.len(),
        any::<bool>(),
        any::<bool>(),
        0u8..8,
        any::<bool>(),
    )
}

fn make_flow(
    i: u64,
    (s, d, s_dev, d_dev, shape, dropped): (usize, usize, bool, bool, u8, bool),
) -> Flow {
    let mut f = flow(i, PODS[s], PODS[d]);
    let ns = |dev: bool| if dev { "dev" } else { "prod" };
    if let Some(e) = f.source.as_mut() {
        e.namespace = ns(s_dev).into();
    }
    if let Some(e) = f.destination.as_mut() {
        e.namespace = ns(d_dev).into();
        e.identity += u32::from(shape % 2);
    }
    match shape {
        0 => f.source = None,
        1 => f.destination = None,
        2 => f.time = None,
        3 => f.destination = Some(Endpoint::default()),
        _ => {}
    }
    if dropped {
        f.verdict = 2;
    }
    f
}

fn any_filter() -> impl Strategy<Value = FlowFilter> {
    let pods = proptest::collection::vec(0..PREFIXES.len(), 0..3).prop_map(|v| {
        v.into_iter()
            .map(|i| PREFIXES[i].to_owned())
            .collect::<Vec<_>>()
    });
    (pods.clone(), pods, 0u8..3).prop_map(|(source_pod, destination_pod, verdict)| FlowFilter {
        source_pod,
        destination_pod,
        verdict: if verdict == 0 {
            vec![]
        } else {
            vec![i32::from(verdict)]
        },
        ..FlowFilter::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn a_query_answers_what_a_full_scan_answers(
        shapes in proptest::collection::vec(any_flow(), 1..1500),
        whitelist in proptest::collection::vec(any_filter(), 0..3),
        since in proptest::option::of(0u64..1500),
        until in proptest::option::of(0u64..1500),
    ) {
        let flows: Vec<Flow> = shapes.into_iter().enumerate().map(|(i, s)| make_flow(i as u64, s)).collect();
        let at = |i: u64| time_ns(&flow(i, "", ""));
        let (since, until) = (since.and_then(at), until.and_then(at));
        let tmp = tempfile::tempdir().expect("tmp");
        let h = written(tmp.path(), &flows);
        let (got, want) = (query(&h, &whitelist, since, until), full_scan(&flows, &whitelist, since, until));
        // The first difference, not two long lists.
        let diff = got.iter().zip(&want).position(|(a, b)| a != b);
        prop_assert!(got.len() == want.len() && diff.is_none(),
            "{} flows, {} wanted for {:?} {:?}-{:?}; first difference at {:?}: {:?} vs {:?}", got.len(), want.len(),
            whitelist.iter().map(|f| (&f.source_pod, &f.destination_pod, &f.verdict)).collect::<Vec<_>>(), since, until, diff,
            diff.map(|i| (&got[i].uuid, &got[i].source, &got[i].destination)), diff.map(|i| (&want[i].uuid, &want[i].source, &want[i].destination)));
        prop_assert_eq!(h.unreadable_blocks(), 0);
    }
}

/// The 120 flows in `testdata/v1-segment.seg`, written by the format-1 writer (run 5,
/// sequence numbers from 1, two blocks of 60).
fn v1_flows() -> Vec<Flow> {
    (0..120)
        .map(|i| {
            flow(
                i,
                if i % 2 == 0 { "client" } else { "db" },
                if i % 3 == 0 { "db" } else { "web" },
            )
        })
        .collect()
}

#[test]
fn a_history_of_the_previous_format_is_read_and_extended() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join(segment::file_name(5, 0)),
        include_bytes!("testdata/v1-segment.seg"),
    )
    .expect("write");
    let mut flows = v1_flows();
    let newer: Vec<Flow> = (200..300).map(|i| flow(i, "db", "web")).collect();
    let h = FlowHistory::open(config(tmp.path()), "node-1").expect("opens");
    assert_eq!((h.disk_flows(), h.recovered_dropped_bytes()), (120, 0));
    assert_eq!(query(&h, &[], None, None), flows);
    let numbered: Vec<Numbered> = newer
        .iter()
        .enumerate()
        .map(|(i, f)| Numbered {
            seq: i as u64 + 1,
            entry: Arc::new(crate::ring::Entry::Flow(Box::new(f.clone()))),
        })
        .collect();
    h.offer(&numbered);
    h.close();
    drop(h);
    // Both formats side by side after a restart.
    let h = FlowHistory::open(config(tmp.path()), "node-1").expect("reopens");
    flows.extend(newer);
    assert_eq!(h.disk_flows(), 220);
    let to_db = [FlowFilter {
        destination_pod: vec!["prod/db".into()],
        ..FlowFilter::default()
    }];
    assert_eq!(query(&h, &[], None, None), flows);
    assert_eq!(
        query(&h, &to_db, None, None),
        full_scan(&flows, &to_db, None, None)
    );
    assert_eq!(h.unreadable_blocks(), 0);
    h.close();
}

#[test]
fn a_segment_of_a_newer_format_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join(segment::file_name(5, 0));
    let newer = b"CILFLOWS\x09\0\0\0\0\0\0\0CFB9 whatever comes next".to_vec();
    std::fs::write(&path, &newer).expect("write");
    let h = FlowHistory::open(config(tmp.path()), "node-1").expect("opens");
    assert_eq!(h.disk_flows(), 0);
    assert_eq!(std::fs::read(&path).expect("still there"), newer);
    h.close();
}

/// Makes block `k` of the segment at `path` inconsistent inside while its checksum holds (what
/// a bug, not a disk, would leave): `at` picks the byte of its body to flip, given where the
/// index section ends and the body's length.
fn corrupt_behind_the_checksum(path: &Path, k: usize, at: fn(usize, usize) -> usize) {
    let mut data = std::fs::read(path).expect("read");
    let (blocks, _) = segment::scan_bytes(&data);
    let b = &blocks[k];
    let body = b.offset as usize + 16 + b.meta_len as usize;
    let end = b.offset as usize + 16 + b.len as usize;
    let index_len = u32::from_le_bytes(data[body..body + 4].try_into().expect("4 bytes")) as usize;
    data[body + at(4 + index_len, end - body)] ^= 0xff;
    let crc = crc32fast::hash(&data[b.offset as usize + 16..end]);
    data[b.offset as usize + 12..b.offset as usize + 16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, &data).expect("write");
}

#[test]
fn an_inconsistent_section_skips_its_block_and_is_counted() {
    let blocks = 3 * BLOCK_FLOWS as u64;
    let flows: Vec<Flow> = (0..blocks)
        .map(|i| flow(i, "client", if i % 5 == 0 { "db" } else { "web" }))
        .collect();
    // The index section (its zstd frame's magic), a byte inside the endpoint dictionary that
    // follows it, one inside the last chunk of flows.
    type Where = fn(usize, usize) -> usize;
    let sections: [(&str, Where); 3] = [
        ("index", |_, _| 4),
        ("dictionary", |index_end, _| index_end + 20),
        ("chunk", |_, len| len - 50),
    ];
    for (name, at) in sections {
        let tmp = tempfile::tempdir().expect("tmp");
        drop(written(tmp.path(), &flows));
        let path = segment::list(tmp.path()).expect("list")[0].1.clone();
        corrupt_behind_the_checksum(&path, 1, at);
        let h = FlowHistory::open(config(tmp.path()), "node-1").expect("opens");
        assert_eq!(h.disk_flows(), blocks, "{name}: the checksum holds");
        let got = query(&h, &[], None, None);
        assert_eq!(h.unreadable_blocks(), 1, "{name}");
        assert!(h
            .render_metrics()
            .contains("ciliate_flow_history_unreadable_blocks_total 1"));
        // Every flow of the other blocks, and of the bad one at most what was read before the
        // bad section: never a flow that was not written.
        let n = BLOCK_FLOWS;
        assert!(
            got.len() >= 2 * n && got.len() < 3 * n,
            "{name}: {}",
            got.len()
        );
        assert_eq!(&got[..n], &flows[..n], "{name}");
        assert_eq!(&got[got.len() - n..], &flows[2 * n..], "{name}");
        assert!(
            got[n..got.len() - n]
                .iter()
                .all(|f| flows[n..2 * n].contains(f)),
            "{name}"
        );
        h.close();
    }
}

#[test]
fn a_block_changed_on_disk_after_opening_is_skipped_and_counted() {
    let flows: Vec<Flow> = (0..2 * BLOCK_FLOWS as u64)
        .map(|i| flow(i, "client", "web"))
        .collect();
    let tmp = tempfile::tempdir().expect("tmp");
    drop(written(tmp.path(), &flows));
    let h = FlowHistory::open(config(tmp.path()), "node-1").expect("opens");
    let path = segment::list(tmp.path()).expect("list")[0].1.clone();
    let mut data = std::fs::read(&path).expect("read");
    let last = data.len() - 10;
    data[last] ^= 0xff;
    std::fs::write(&path, &data).expect("write");
    assert_eq!(query(&h, &[], None, None), flows[..BLOCK_FLOWS]);
    assert_eq!(h.unreadable_blocks(), 1);
    h.close();
}

#[test]
fn a_query_stopped_early_or_skipping_gets_the_flows_in_order() {
    // Blocks read by one thread and by two: the flows still come in order, and stopping
    // halfway stops both readers.
    let flows: Vec<Flow> = (0..3 * BLOCK_FLOWS as u64 + 100)
        .map(|i| flow(i, "client", if i % 3 == 0 { "db" } else { "web" }))
        .collect();
    let tmp = tempfile::tempdir().expect("tmp");
    let h = written(tmp.path(), &flows);
    let filters = FlowFilters::default();
    let prefilter = PodPrefilter::default();
    let scan = Scan {
        filters: &filters,
        prefilter: &prefilter,
        since_ns: None,
        until_ns: None,
        ring_from: u64::MAX,
    };
    for threads in [1, 2] {
        for (skip, take) in [(0, 5000), (4100, 10), (0, flows.len()), (7, 1)] {
            let mut got = Vec::new();
            h.snapshot()
                .forward_on(threads, &scan, skip as u64, &mut |f| {
                    got.push(f);
                    got.len() < take
                });
            assert_eq!(
                got,
                flows[skip..(skip + take).min(flows.len())],
                "{threads} thread(s), skip {skip}, take {take}"
            );
        }
    }
    h.close();
}

/// The writer gives its block-sized buffers back when its queue runs empty: a block encoded
/// after that is the one a fresh encoder writes, as is the one before.
#[test]
fn an_encoder_that_gave_its_buffers_back_encodes_the_same_block() {
    let flows: Vec<Flow> = (0..600u64)
        .map(|i| flow(i, PODS[i as usize % 5], PODS[(i as usize + 1) % 5]))
        .collect();
    let rows: Vec<(u64, &Flow)> = flows.iter().zip(1..).map(|(f, s)| (s, f)).collect();
    let fresh = block::Encoder::default()
        .encode(&rows, 3, "default/node-1")
        .1;
    let mut enc = block::Encoder::default();
    let before = enc.encode(&rows, 3, "default/node-1").1;
    enc.release_block_buffers();
    let after = enc.encode(&rows, 3, "default/node-1").1;
    assert_eq!(before, fresh);
    assert_eq!(after, fresh);
}
