#![allow(clippy::unwrap_used)]

use super::*;
use crate::proto::flow::LostEventSource;
use crate::store::{EndpointInfo, Snapshot};
use crate::ObserverConfig;
use ciliate_model::monitor::{EventKind, MonitorEvent, L4};

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
        src: Some("10.200.0.2".parse().unwrap()),
        dst: Some("10.200.0.3".parse().unwrap()),
        l4: Some(L4::Tcp {
            sport: 41000,
            dport,
            flags: vec!["SYN".into()],
        }),
        rev_nat: 0,
        rule: 0,
        ethernet: None,
    }
}

fn observer() -> Arc<Observer> {
    let mut store = Snapshot::default();
    for (ip, id, pod) in [("10.200.0.2", 1, "client"), ("10.200.0.3", 2, "server")] {
        store.endpoints.insert(
            ip.parse().unwrap(),
            EndpointInfo {
                id,
                identity: 255 + id,
                namespace: "default".into(),
                pod_name: pod.into(),
                labels: vec![format!("k8s:app={pod}")],
            }
            .into(),
        );
    }
    Arc::new(Observer::new(
        ObserverConfig {
            node_name: "node-1".into(),
            capacity: 64,
        },
        Arc::new(store),
    ))
}

fn config(path: &Path, allow: &str, deny: &str, mask: &[&str]) -> ExportConfig {
    ExportConfig::new(
        Some(path.to_owned()),
        DEFAULT_FILE_MAX_SIZE_MB,
        DEFAULT_FILE_MAX_BACKUPS,
        allow,
        deny,
        &mask.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        None,
    )
    .unwrap()
}

/// Runs `observer` through an exporter into `path` until the observer is gone.
fn export(
    observer: Arc<Observer>,
    cfg: &ExportConfig,
    feed: impl FnOnce(&Observer),
) -> Arc<ExportStats> {
    let path = cfg.file_path.clone().unwrap();
    let sink = FileSink::open(&path, cfg.file_max_size_mb, cfg.file_max_backups).unwrap();
    let exporter = spawn(&observer, cfg, vec![Box::new(sink)], Arc::default()).unwrap();
    feed(&observer);
    let stats = Arc::clone(&exporter.stats);
    // The exporter follows the live feed: dropping the observer closes it, after which the
    // thread has written everything it received.
    drop(observer);
    exporter.join();
    stats
}

#[test]
fn flows_are_written_as_hubble_json_lines_through_the_filters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hubble/events.log");
    let cfg = config(
        &path,
        r#"{"source_pod":["default/client"]}"#,
        r#"{"destination_port":["443"]}"#,
        &[],
    );
    let stats = export(observer(), &cfg, |o| {
        o.observe(&event(EventKind::Trace, 5, 80));
        o.observe(&event(EventKind::Drop, 133, 443));
        o.observe(&event(EventKind::Drop, 133, 8080));
        o.lost(3, LostEventSource::ObserverEventsQueue);
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("{\"flow\":{\"time\":\"2024-05-01T10:00:00.500Z\","),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("\"source\":{\"ID\":1,\"identity\":256,\"cluster_name\":\"default\",\"namespace\":\"default\","),
        "{}",
        lines[0]
    );
    assert!(
        lines[0]
            .ends_with(",\"node_name\":\"default/node-1\",\"time\":\"2024-05-01T10:00:00.500Z\"}"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("\"destination_port\":8080"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(
            "{\"lost_events\":{\"source\":\"OBSERVER_EVENTS_QUEUE\",\"num_events_lost\":\"3\""
        ),
        "{}",
        lines[2]
    );
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        // Node names carry the cluster, as Hubble's do.
        assert_eq!(v["node_name"], "default/node-1");
    }
    assert_eq!(stats.exported.load(Ordering::Relaxed), 3);
    assert_eq!(stats.filtered.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn the_field_mask_keeps_only_the_fields_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    let cfg = config(&path, "", "", &["time,source.pod_name", "verdict"]);
    export(observer(), &cfg, |o| {
        o.observe(&event(EventKind::Drop, 133, 80))
    });
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"flow\":{\"time\":\"2024-05-01T10:00:00.500Z\",\"verdict\":\"DROPPED\",\
         \"source\":{\"pod_name\":\"client\"}},\"node_name\":\"default/node-1\",\
         \"time\":\"2024-05-01T10:00:00.500Z\"}\n"
    );
}

#[test]
fn the_file_rotates_by_size_and_keeps_the_newest_backups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    let mut f = RotatingFile::open(&path, 1, 2).unwrap();
    let line = format!("{}\n", "x".repeat(300 * 1024 - 1));
    // 300 KiB lines, 1 MiB files: three lines a file.
    for i in 0..10 {
        f.write_line(&line).unwrap();
        if i % 3 == 2 {
            // Backups are told apart by their time of rotation.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let backups = f.backups().unwrap();
    assert_eq!(backups.len(), 2, "{backups:?}");
    for b in &backups {
        let name = b.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("events-") && name.ends_with(".log"),
            "{name}"
        );
        assert_eq!(std::fs::metadata(b).unwrap().len(), 3 * line.len() as u64);
    }
    // 10 lines: three rotations; the current file holds the tenth.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), line.len() as u64);
}

#[test]
fn bad_settings_are_refused_naming_the_flag() {
    let err = |allow: &str, deny: &str, mask: &[&str], size: u64, otlp: Option<&str>| {
        ExportConfig::new(
            Some("/tmp/x.log".into()),
            size,
            5,
            allow,
            deny,
            &mask.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            otlp.map(str::to_owned),
        )
        .unwrap_err()
    };
    let e = err("{\"source_pod\":", "", &[], 10, None);
    assert_eq!(e.flag, "hubble-export-allowlist");
    assert!(
        e.to_string()
            .starts_with("--hubble-export-allowlist: failed to decode"),
        "{e}"
    );
    assert_eq!(
        err("", "{\"no_such_field\":[1]}", &[], 10, None).flag,
        "hubble-export-denylist"
    );
    assert_eq!(
        err("", "{\"source_ip\":[\"10.0.0.0/33\"]}", &[], 10, None).flag,
        "hubble-export-denylist"
    );
    let e = err("", "", &["source.bogus"], 10, None);
    assert_eq!(e.flag, "hubble-export-fieldmask");
    assert!(e.reason.contains("source.bogus"), "{e}");
    assert_eq!(
        err("", "", &["time.seconds.x"], 10, None).flag,
        "hubble-export-fieldmask"
    );
    assert_eq!(
        err("", "", &[], 0, None).flag,
        "hubble-export-file-max-size-mb"
    );
    assert_eq!(
        err("", "", &[], 10, Some("collector:4317")).flag,
        "flow-export-otlp-endpoint"
    );
    // Two filters in one flag value, as Hubble's ParseFlowFilters reads them.
    let ok = ExportConfig::new(
        None,
        10,
        5,
        "{\"source_pod\":[\"a/\"]} {\"destinationPod\":[\"b/\"]}",
        "",
        &[],
        Some("http://127.0.0.1:4317".into()),
    )
    .unwrap();
    assert_eq!(ok.allowlist.len(), 2);
    assert!(ok.enabled());
}

#[test]
fn a_stalled_exporter_never_holds_the_observer_back_and_counts_what_it_missed() {
    /// A sink stuck until told to go on.
    struct Stalled(std::sync::mpsc::Receiver<()>);
    impl Sink for Stalled {
        fn send(&mut self, _: &GetFlowsResponse, _: &str) -> Result<(), String> {
            let _ = self.0.recv();
            Ok(())
        }
    }
    let o = observer();
    let (go, wait) = std::sync::mpsc::channel();
    let exporter = spawn(
        &o,
        &ExportConfig::default(),
        vec![Box::new(Stalled(wait))],
        Arc::default(),
    )
    .unwrap();
    // Far more flows than the live feed holds (64 for this ring), all taken at once.
    for _ in 0..10_000 {
        o.observe(&event(EventKind::Trace, 5, 80));
    }
    assert_eq!(o.seen_flows(), 10_000);
    let stats = Arc::clone(&exporter.stats);
    drop(o);
    for _ in 0..10_000 {
        let _ = go.send(());
    }
    exporter.join();
    let (exported, dropped) = (
        stats.exported.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
    );
    assert_eq!(
        exported + dropped,
        10_000,
        "exported {exported}, dropped {dropped}"
    );
    assert!(dropped > 9_000, "dropped {dropped}");
    assert!(stats
        .render()
        .contains(&format!("ciliate_flow_export_dropped_total {dropped}\n")));
}

#[test]
fn a_flow_masked_as_hubble_masks_flows_keeps_only_those_fields() {
    let o = observer();
    o.observe(&event(EventKind::Drop, 133, 80));
    let Some(flow) = o.snapshot()[0]
        .entry
        .flow()
        .map(std::borrow::Cow::into_owned)
    else {
        panic!("a flow");
    };
    let masked = protojson::mask_message(
        &flow,
        "flow.Flow",
        &["time".into(), "source.pod_name".into(), "l4".into()],
    )
    .unwrap();
    assert_eq!(masked.time, flow.time);
    assert_eq!(masked.l4, flow.l4);
    let src = masked.source.unwrap();
    assert_eq!(
        (src.pod_name.as_str(), src.identity, src.namespace.as_str()),
        ("client", 0, "")
    );
    assert!(masked.destination.is_none() && masked.ip.is_none() && masked.verdict == 0);
    assert!(protojson::mask_message(&flow, "flow.Flow", &["nope".into()]).is_err());
}
