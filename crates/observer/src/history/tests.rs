//! Tests of the history: encoding round trips, the index, retention, recovery from torn and
//! corrupted files, and queries.

use std::sync::Arc;

use prost::Message;

use super::block::{self, time_ns};
use super::*;
use crate::proto::flow::{layer4, Endpoint, FlowFilter, Ip, Layer4, Tcp};

pub(super) fn flow(i: u64, src_pod: &str, dst_pod: &str) -> Flow {
    let ep = |pod: &str| Endpoint {
        id: 7,
        identity: 300 + u32::try_from(pod.len()).unwrap_or(0),
        namespace: "prod".into(),
        pod_name: pod.into(),
        labels: vec![
            format!("k8s:app={pod}"),
            "k8s:io.kubernetes.pod.namespace=prod".into(),
        ],
        ..Endpoint::default()
    };
    let t = 1_796_000_000_000_000_000i64 + i as i64 * 1_000_000;
    Flow {
        time: Some(pbjson_types::Timestamp {
            seconds: t / 1_000_000_000,
            nanos: (t % 1_000_000_000) as i32,
        }),
        uuid: format!("00000000-0000-4000-8000-{:012x}", i + 1),
        verdict: 1,
        node_name: "node-1".into(),
        ip: Some(Ip {
            source: "10.0.0.1".into(),
            destination: "10.0.0.2".into(),
            ip_version: 1,
            ..Ip::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40000 + (i % 1000) as u32,
                destination_port: 80,
                flags: None,
            })),
        }),
        source: Some(ep(src_pod)),
        destination: Some(ep(dst_pod)),
        ..Flow::default()
    }
}

#[test]
fn a_block_round_trips_every_flow_exactly() {
    let mut flows: Vec<Flow> = (0..100)
        .map(|i| flow(i, "client", if i % 3 == 0 { "db" } else { "web" }))
        .collect();
    // The odd ones: no time, no endpoints, a UUID not in canonical form, another node.
    flows[5].time = None;
    flows[6].source = None;
    flows[6].destination = None;
    flows[7].uuid = "NOT-A-UUID".into();
    flows[8].node_name = "node-2".into();
    flows[9].uuid.clear();
    let items: Vec<(u64, &Flow)> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64 + 10, f))
        .collect();
    let (meta, body) = block::encode(&items, 42, "node-1");
    assert_eq!(meta.count, 100);
    assert_eq!((meta.first_seq, meta.last_seq, meta.run), (10, 109, 42));
    assert_eq!(meta.src_pods, vec!["prod/client".to_owned()]);
    assert_eq!(
        meta.dst_pods,
        vec!["prod/db".to_owned(), "prod/web".to_owned()]
    );
    let d = block::decode(block::FORMAT, &meta, body.clone()).expect("decodes");
    assert_eq!(d.endpoint_names().len(), 3, "client, db and web once each");
    for (i, f) in flows.iter().enumerate() {
        assert_eq!(&d.flow(i).expect("flow"), f, "flow {i}");
        assert_eq!(d.seq_of(i).expect("seq"), i as u64 + 10);
        assert_eq!(d.time_of(i).expect("time"), time_ns(f));
    }
}

#[test]
fn the_stored_part_of_a_flow_leaves_out_what_the_columns_hold() {
    let f = flow(1, "client", "web");
    let items = vec![(1u64, &f)];
    let (meta, body) = block::encode(&items, 1, "node-1");
    let d = block::decode(block::FORMAT, &meta, body.clone()).expect("decodes");
    // Whole, the flow is hundreds of bytes; the endpoints, time, UUID and node are columns.
    assert!(f.encoded_len() > 150, "{}", f.encoded_len());
    let stored = d.stored_len(0).expect("readable");
    assert!(stored < 60, "{stored}");
}

#[test]
fn corrupted_blocks_are_refused_not_panicked_on() {
    let flows: Vec<Flow> = (0..50).map(|i| flow(i, "a", "b")).collect();
    let items: Vec<(u64, &Flow)> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64, f))
        .collect();
    let (meta, body) = block::encode(&items, 1, "node-1");
    for at in (0..body.len()).step_by(7) {
        let mut bad = body.clone();
        bad[at] ^= 0x5a;
        if let Ok(d) = block::decode(block::FORMAT, &meta, bad) {
            for i in 0..d.len() {
                let _ = d.flow(i);
            }
        }
    }
    let mut short = meta.clone();
    short.count = 49;
    assert!(block::decode(block::FORMAT, &short, body).is_err());
}

fn config(dir: &Path, max_bytes: u64) -> HistoryConfig {
    HistoryConfig {
        dir: dir.to_owned(),
        max_bytes,
        max_age: None,
        queue_flows: 1 << 16,
    }
}

fn numbered(from: u64, n: u64, pod: &str) -> Vec<Numbered> {
    (from..from + n)
        .map(|seq| Numbered {
            seq,
            entry: Arc::new(crate::ring::Entry::Flow(Box::new(flow(seq, "client", pod)))),
        })
        .collect()
}

fn all(h: &FlowHistory, whitelist: &[FlowFilter], ring_from: u64) -> Vec<Flow> {
    let filters = FlowFilters::compile(whitelist, &[]).expect("filters");
    let prefilter = PodPrefilter::new(whitelist);
    let scan = Scan {
        filters: &filters,
        prefilter: &prefilter,
        since_ns: None,
        until_ns: None,
        ring_from,
    };
    let mut out = Vec::new();
    h.snapshot().forward(&scan, 0, &mut |f| {
        out.push(f);
        true
    });
    out
}

fn wait_written(h: &FlowHistory, n: u64) {
    // Waits on the writer's own count, not on time.
    while h.written() < n {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn flows_survive_a_restart_and_queries_see_unwritten_ones_too() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("opens");
    h.offer(&numbered(1, BLOCK_FLOWS as u64 + 10, "web"));
    wait_written(&h, BLOCK_FLOWS as u64);
    // One block on disk, ten flows still queued: a query sees all, once, in order.
    let got = all(&h, &[], u64::MAX);
    assert_eq!(got.len(), BLOCK_FLOWS + 10);
    assert!(got.windows(2).all(|w| time_ns(&w[0]) < time_ns(&w[1])));
    // The ring's flows are left out (it answers for them).
    assert_eq!(all(&h, &[], 101).len(), 100);
    h.close();
    drop(h);
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("reopens");
    assert_eq!(h.disk_flows(), BLOCK_FLOWS as u64 + 10);
    // Sequence numbers of an earlier run are not the ring's: nothing is left out.
    assert_eq!(all(&h, &[], 1).len(), BLOCK_FLOWS + 10);
    h.close();
}

#[test]
fn pod_filters_skip_blocks_and_still_find_every_match() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("opens");
    let mut flows = numbered(1, BLOCK_FLOWS as u64, "web");
    flows.extend(numbered(BLOCK_FLOWS as u64 + 1, BLOCK_FLOWS as u64, "db"));
    h.offer(&flows);
    wait_written(&h, 2 * BLOCK_FLOWS as u64);
    let to_db = [FlowFilter {
        destination_pod: vec!["prod/db".into()],
        ..FlowFilter::default()
    }];
    let got = all(&h, &to_db, u64::MAX);
    assert_eq!(got.len(), BLOCK_FLOWS);
    assert!(got
        .iter()
        .all(|f| f.destination.as_ref().is_some_and(|d| d.pod_name == "db")));
    let snap = h.snapshot();
    assert!(!snap.blocks[0]
        .1
        .meta
        .dst_pods
        .contains(&"prod/db".to_owned()));
    h.close();
}

#[test]
fn last_n_reads_backwards_across_blocks_and_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("opens");
    h.offer(&numbered(1, 3 * BLOCK_FLOWS as u64 + 5, "web"));
    wait_written(&h, 3 * BLOCK_FLOWS as u64);
    let filters = FlowFilters::default();
    let prefilter = PodPrefilter::default();
    let scan = Scan {
        filters: &filters,
        prefilter: &prefilter,
        since_ns: None,
        until_ns: None,
        ring_from: u64::MAX,
    };
    let mut got = Vec::new();
    h.snapshot().last(&scan, BLOCK_FLOWS as u64 + 7, &mut |f| {
        got.push(f);
        true
    });
    assert_eq!(got.len(), BLOCK_FLOWS + 7);
    assert_eq!(
        got.last(),
        Some(&flow(3 * BLOCK_FLOWS as u64 + 5, "client", "web"))
    );
    assert_eq!(got[0], flow(2 * BLOCK_FLOWS as u64 - 1, "client", "web"));
    h.close();
}

#[test]
fn time_ranges_are_inclusive_and_skip_blocks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("opens");
    h.offer(&numbered(1, 2 * BLOCK_FLOWS as u64, "web"));
    wait_written(&h, 2 * BLOCK_FLOWS as u64);
    let filters = FlowFilters::default();
    let prefilter = PodPrefilter::default();
    let (a, b) = (
        time_ns(&flow(100, "", "")).expect("time"),
        time_ns(&flow(199, "", "")).expect("time"),
    );
    let scan = Scan {
        filters: &filters,
        prefilter: &prefilter,
        since_ns: Some(a),
        until_ns: Some(b),
        ring_from: u64::MAX,
    };
    let mut n = 0;
    h.snapshot().forward(&scan, 0, &mut |_| {
        n += 1;
        true
    });
    assert_eq!(n, 100);
    h.close();
}

#[test]
fn the_size_bound_deletes_whole_segments_oldest_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Segments of 64 KiB (the floor), at most 256 KiB in all.
    let h = FlowHistory::open(config(tmp.path(), 256 << 10), "node-1").expect("opens");
    let total = 40 * BLOCK_FLOWS as u64;
    for k in 0..40 {
        h.offer(&numbered(
            1 + k * BLOCK_FLOWS as u64,
            BLOCK_FLOWS as u64,
            "web",
        ));
        wait_written(&h, (k + 1) * BLOCK_FLOWS as u64);
    }
    assert!(h.disk_bytes() <= 256 << 10, "{}", h.disk_bytes());
    let kept = all(&h, &[], u64::MAX);
    assert!(!kept.is_empty() && (kept.len() as u64) < total);
    // What is kept is the newest, without a gap.
    assert_eq!(kept.last(), Some(&flow(total, "client", "web")));
    assert!(h.shared.counters.segments_deleted.load(Ordering::Relaxed) > 0);
    h.close();
}

#[test]
fn the_age_bound_deletes_segments_of_old_flows() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut c = config(tmp.path(), 1 << 30);
    // The test's flows are from 2026-12; a day's bound makes them old by now only if the
    // clock is later than that, so the bound is set from their own time instead, an hour
    // on either side of their age: a second was too little on a loaded machine, where the
    // writer (a background task) can take longer than that to write the block.
    let newest = time_ns(&flow(BLOCK_FLOWS as u64, "", "")).expect("time");
    let hour = 3_600_000_000_000;
    let age = now_ns() - newest + hour;
    let h = FlowHistory::open(c.clone(), "node-1").expect("opens");
    h.offer(&numbered(1, BLOCK_FLOWS as u64, "web"));
    wait_written(&h, BLOCK_FLOWS as u64);
    h.close();
    drop(h);
    // Reopened with a bound the flows are within: kept.
    c.max_age = Some(Duration::from_nanos(u64::try_from(age).unwrap_or(u64::MAX)));
    let h = FlowHistory::open(c.clone(), "node-1").expect("opens");
    assert_eq!(h.disk_flows(), BLOCK_FLOWS as u64);
    h.close();
    drop(h);
    // With a bound they are past: the earlier run's segment goes.
    c.max_age = Some(Duration::from_nanos(
        u64::try_from(age - 2 * hour).unwrap_or(1),
    ));
    let h = FlowHistory::open(c, "node-1").expect("opens");
    assert_eq!(h.disk_flows(), 0);
    h.close();
}

fn one_segment(dir: &Path) -> PathBuf {
    let files = segment::list(dir).expect("list");
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].1.clone()
}

fn written_history(dir: &Path, blocks: u64) {
    let h = FlowHistory::open(config(dir, 1 << 30), "node-1").expect("opens");
    h.offer(&numbered(1, blocks * BLOCK_FLOWS as u64, "web"));
    wait_written(&h, blocks * BLOCK_FLOWS as u64);
    h.close();
}

#[test]
fn a_truncated_segment_keeps_its_whole_blocks() {
    let tmp = tempfile::tempdir().expect("tmp");
    written_history(tmp.path(), 3);
    let path = one_segment(tmp.path());
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len - 100).expect("truncate");
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("opens");
    assert_eq!(h.disk_flows(), 2 * BLOCK_FLOWS as u64);
    assert!(h.recovered_dropped_bytes() > 0);
    assert_eq!(all(&h, &[], u64::MAX).len(), 2 * BLOCK_FLOWS);
    h.close();
}

#[test]
fn a_flipped_byte_loses_one_block_and_reading_resumes_after_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    written_history(tmp.path(), 3);
    let path = one_segment(tmp.path());
    let mut data = std::fs::read(&path).expect("read");
    let (blocks, dropped) = segment::scan_bytes(&data);
    assert_eq!((blocks.len(), dropped.bytes), (3, 0));
    // In the middle block's lengths: the frame cannot even be measured.
    data[blocks[1].offset as usize + 5] ^= 0xff;
    std::fs::write(&path, &data).expect("write");
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("opens");
    assert_eq!(h.disk_flows(), 2 * BLOCK_FLOWS as u64);
    let got = all(&h, &[], u64::MAX);
    assert_eq!(got.len(), 2 * BLOCK_FLOWS);
    assert_eq!(
        got.last(),
        Some(&flow(3 * BLOCK_FLOWS as u64, "client", "web"))
    );
    h.close();
}

#[test]
fn garbage_and_empty_files_never_stop_it_opening() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join(segment::file_name(1, 0)),
        b"not a segment at all",
    )
    .expect("w");
    std::fs::write(tmp.path().join(segment::file_name(2, 0)), b"").expect("w");
    std::fs::write(tmp.path().join("unrelated.txt"), b"kept").expect("w");
    let h = FlowHistory::open(config(tmp.path(), 1 << 30), "node-1").expect("opens");
    assert_eq!(h.disk_flows(), 0);
    assert!(tmp.path().join("unrelated.txt").exists());
    assert!(segment::list(tmp.path()).expect("list").is_empty());
    h.offer(&numbered(1, 5, "web"));
    assert_eq!(all(&h, &[], u64::MAX).len(), 5);
    h.close();
}

#[test]
fn a_full_queue_drops_and_counts_and_never_blocks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut c = config(tmp.path(), 1 << 30);
    c.queue_flows = 10;
    let h = FlowHistory::open(c, "node-1").expect("opens");
    h.offer(&numbered(1, 25, "web"));
    assert_eq!(h.dropped(), 15);
    assert!(h
        .render_metrics()
        .contains("ciliate_flow_history_flows_dropped_total{reason=\"queue_full\"} 15"));
    h.close();
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_segment_bytes_scan_without_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = segment::scan_bytes(&data);
        }

        #[test]
        fn any_prefix_of_a_segment_yields_the_blocks_wholly_inside_it(cut in 0usize..40_000) {
            let flows: Vec<Flow> = (0..300).map(|i| flow(i, "a", if i % 2 == 0 { "b" } else { "c" })).collect();
            let mut data = b"CILFLOWS\x02\0\0\0\0\0\0\0".to_vec();
            let mut ends = Vec::new();
            for chunk in flows.chunks(50) {
                let items: Vec<(u64, &Flow)> = chunk.iter().map(|f| (0u64, f)).collect();
                let (meta, body) = block::encode(&items, 1, "node-1");
                data.extend(segment::frame(&meta, &body));
                ends.push(data.len());
            }
            let cut = cut.min(data.len());
            let (blocks, dropped) = segment::scan_bytes(&data[..cut]);
            prop_assert_eq!(blocks.len(), ends.iter().filter(|e| **e <= cut).count());
            // A cut inside the 16-byte file header leaves nothing whole: every byte is dropped.
            let whole = ends.iter().copied().filter(|e| *e <= cut).max().unwrap_or(if cut < 16 { 0 } else { 16 });
            prop_assert_eq!(dropped.bytes as usize, cut - whole);
        }
    }
}

/// Datapath events as the ring keeps them: pods on both sides, a side without a pod (its
/// identity's labels), a drop, no time, a pod's entry replaced by an equal one mid-block, and
/// a record made under other node names.
fn records() -> Vec<crate::record::Recorded> {
    use crate::convert::record_of;
    use crate::convert::tests::{store, trace_event};
    use crate::record::{FlowIds, NodeNames, Recorded};
    use ciliate_model::monitor::{EventKind, MonitorEvent};
    let names = |node: &str| {
        Arc::new(NodeNames {
            node_name: node.into(),
            cluster: "default".into(),
            labels: vec!["zone=a".into()],
        })
    };
    let (here, elsewhere) = (names("default/node-1"), names("default/node-2"));
    let ids = FlowIds::default();
    let (first, second) = (store(), store());
    let syn = trace_event();
    let reply = MonitorEvent {
        ct_state: "reply".into(),
        src: syn.dst,
        dst: syn.src,
        ..syn.clone()
    };
    let drop = MonitorEvent {
        kind: EventKind::Drop,
        code: 133,
        ..syn.clone()
    };
    let world = MonitorEvent {
        src: Some("192.0.2.9".parse().expect("ip")),
        src_identity: 2,
        ..syn.clone()
    };
    let mut out = Vec::new();
    for i in 0..300u64 {
        let ev = [&syn, &reply, &drop, &world][(i % 4) as usize];
        let mut rec = record_of(ev);
        rec.time = (i != 7).then(|| {
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_000_000_000_000 + i)
        });
        let store = if i < 150 { &first } else { &second };
        let node = if i == 11 { &elsewhere } else { &here };
        out.push(Recorded::capture(rec, store, node, &ids));
    }
    out
}

#[test]
fn rows_written_from_records_are_those_written_from_their_built_flows() {
    let records = records();
    let built: Vec<Flow> = records.iter().map(|r| r.flow()).collect();
    let from_flows: Vec<(u64, &Flow)> = built
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64 + 1, f))
        .collect();
    let from_records: Vec<(u64, block::Row<'_>)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u64 + 1, block::Row::Event(r)))
        .collect();
    let (meta, body) = block::encode(&from_flows, 3, "default/node-1");
    let (meta_r, body_r) =
        block::Encoder::default().encode_rows(&from_records, 3, "default/node-1");
    assert_eq!(meta_r, meta);
    assert_eq!(body_r, body, "the same block, byte for byte");
    let d = block::decode(block::FORMAT, &meta_r, body_r).expect("decodes");
    // client and web-1 each under both identities (a reply keeps the request's), the world:
    // once each, though the second half's pods are other (equal) entries.
    assert_eq!(d.endpoint_names().len(), 5);
    for (i, f) in built.iter().enumerate() {
        assert_eq!(&d.flow(i).expect("flow"), f, "flow {i}");
    }
}

#[test]
fn a_block_encoded_in_steps_is_the_block_encoded_at_once() {
    let records = records();
    let rows: Vec<(u64, block::Row<'_>)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u64 + 1, block::Row::Event(r)))
        .collect();
    let at_once = block::Encoder::default().encode_rows(&rows, 3, "default/node-1");
    let mut steps = 0;
    let in_steps =
        block::Encoder::default()
            .encode_rows_pausing(&rows, 3, "default/node-1", &mut || steps += 1);
    assert_eq!(in_steps, at_once, "the same block, byte for byte");
    // Between each PAUSE_ROWS rows, and after each compressed chunk.
    let chunks = rows.len().div_ceil(block::CHUNK_ROWS);
    assert_eq!(steps, (rows.len() - 1) / block::PAUSE_ROWS + chunks);
}
