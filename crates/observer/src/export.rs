//! Flow export, as Cilium's Hubble exporter does it: every flow (and loss record) the
//! observer keeps, filtered by an allowlist and a denylist of FlowFilters, cut down by a
//! field mask, written as one line of Hubble's JSON (a GetFlowsResponse with `node_name` and
//! `time`) to a file that rotates by size, and/or sent as an OpenTelemetry log record
//! ([`crate::export_otlp`]).
//!
//! The exporter is a follower of the observer's live feed, like a `--follow` client: the
//! datapath's intake never waits for it. When it falls behind (a slow disk, a collector that
//! does not answer) the feed's bounded buffer overruns and the flows it missed are counted in
//! [`ExportStats::dropped`], never queued without bound.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::filter::FlowFilters;
use crate::proto::flow::{Flow, FlowFilter};
use crate::proto::observer::{get_flows_response::ResponseTypes, GetFlowsResponse};
use crate::protojson;
use crate::ring::{Entry, Observer};

/// Cilium's default `--hubble-export-file-max-size-mb`.
pub const DEFAULT_FILE_MAX_SIZE_MB: u64 = 10;
/// Cilium's default `--hubble-export-file-max-backups`.
pub const DEFAULT_FILE_MAX_BACKUPS: usize = 5;

/// What is wrong with an export setting: the flag and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    /// The agent flag, without its dashes.
    pub flag: &'static str,
    /// Why it is refused.
    pub reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// The export settings in force, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportConfig {
    /// Where to write flows (`--hubble-export-file-path`); `stdout` writes them there.
    pub file_path: Option<PathBuf>,
    /// Size at which the file rotates, in MiB.
    pub file_max_size_mb: u64,
    /// Rotated files kept.
    pub file_max_backups: usize,
    /// Flows exported are those matching one of these (all when empty).
    pub allowlist: Vec<FlowFilter>,
    /// ... and none of these.
    pub denylist: Vec<FlowFilter>,
    /// Flow fields kept (all when empty), as paths: `time`, `source.namespace`.
    pub fieldmask: Vec<String>,
    /// OTLP/gRPC collector to send flows to as log records (`http://host:4317`).
    pub otlp_endpoint: Option<String>,
}

/// JSON FlowFilters, one or more in one string (Hubble's `ParseFlowFilters`).
pub fn parse_flow_filters(flag: &'static str, text: &str) -> Result<Vec<FlowFilter>, ConfigError> {
    let mut out = Vec::new();
    for f in serde_json::Deserializer::from_str(text).into_iter::<FlowFilter>() {
        out.push(f.map_err(|e| bad(flag, format!("failed to decode '{text}': {e}")))?);
    }
    Ok(out)
}

impl ExportConfig {
    /// Checks the flags' values: filters must compile, mask paths must name Flow fields, the
    /// file's limits must be positive, the endpoint must be a URL.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        file_path: Option<PathBuf>,
        file_max_size_mb: u64,
        file_max_backups: usize,
        allowlist: &str,
        denylist: &str,
        fieldmask: &[String],
        otlp_endpoint: Option<String>,
    ) -> Result<ExportConfig, ConfigError> {
        if file_path.as_deref() == Some(Path::new("")) {
            return Err(bad("hubble-export-file-path", "empty path"));
        }
        if file_path.is_some() && file_max_size_mb == 0 {
            return Err(bad(
                "hubble-export-file-max-size-mb",
                "must be at least 1 (MiB)",
            ));
        }
        let allowlist = parse_flow_filters("hubble-export-allowlist", allowlist)?;
        let denylist = parse_flow_filters("hubble-export-denylist", denylist)?;
        FlowFilters::compile(&allowlist, &[])
            .map_err(|e| bad("hubble-export-allowlist", e.to_string()))?;
        FlowFilters::compile(&denylist, &[])
            .map_err(|e| bad("hubble-export-denylist", e.to_string()))?;
        let fieldmask: Vec<String> = fieldmask
            .iter()
            .flat_map(|f| f.split(','))
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        // Without a mask there is nothing to check: the descriptor pool the check needs (and
        // its code) would stay in the agent's memory for nothing.
        if !fieldmask.is_empty() {
            protojson::check_field_mask("flow.Flow", &fieldmask).map_err(|e| {
                bad(
                    "hubble-export-fieldmask",
                    format!("contains invalid fieldmask '{fieldmask:?}': {e}"),
                )
            })?;
        }
        if let Some(e) = &otlp_endpoint {
            let uri: Result<tonic::codegen::http::Uri, _> = e.parse();
            match uri {
                Ok(u) if u.scheme().is_some() && u.authority().is_some() => {}
                _ => {
                    return Err(bad(
                        "flow-export-otlp-endpoint",
                        format!("{e:?} is not a URL such as http://collector:4317"),
                    ))
                }
            }
        }
        Ok(ExportConfig {
            file_path,
            file_max_size_mb,
            file_max_backups,
            allowlist,
            denylist,
            fieldmask,
            otlp_endpoint,
        })
    }

    /// Whether anything is exported.
    pub fn enabled(&self) -> bool {
        self.file_path.is_some() || self.otlp_endpoint.is_some()
    }
}

/// What the exporter did, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Lines written / records sent.
    pub exported: AtomicU64,
    /// Flows skipped by the allowlist/denylist.
    pub filtered: AtomicU64,
    /// Flows lost because the exporter fell behind the observer's live feed (or the OTLP
    /// queue was full).
    pub dropped: AtomicU64,
    /// Writes or sends that failed.
    pub errors: AtomicU64,
}

impl ExportStats {
    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            (
                "ciliate_flow_export_exported_total",
                "Flows (and loss records) exported.",
                &self.exported,
            ),
            (
                "ciliate_flow_export_filtered_total",
                "Flows the export allowlist/denylist left out.",
                &self.filtered,
            ),
            (
                "ciliate_flow_export_dropped_total",
                "Flows not exported because the exporter fell behind.",
                &self.dropped,
            ),
            (
                "ciliate_flow_export_errors_total",
                "Export writes or sends that failed.",
                &self.errors,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// A file that rotates by size as lumberjack does (Cilium's exporter writer): when a write
/// would pass the limit the file becomes `name-<UTC time>.ext` beside it and a new one is
/// started; the oldest backups beyond the limit are removed.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_backups: usize,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`, creating its directory.
    pub fn open(path: &Path, max_size_mb: u64, max_backups: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            max_bytes: max_size_mb.saturating_mul(1024 * 1024),
            max_backups,
            file: Some(file),
            size,
        })
    }

    /// Appends one line (with its newline).
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all(line.as_bytes())?;
        self.size += len;
        Ok(())
    }

    fn backup_name(&self) -> PathBuf {
        let now = crate::convert::system_time_to_timestamp(std::time::SystemTime::now());
        let stamp = protojson::timestamp_string(now.seconds, now.nanos / 1_000_000 * 1_000_000)
            .unwrap_or_default();
        // lumberjack's 2006-01-02T15-04-05.000: no colons in file names.
        let mut stamp = stamp.trim_end_matches('Z').replace(':', "-");
        if !stamp.contains('.') {
            stamp.push_str(".000");
        }
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match self.path.extension() {
            Some(ext) => format!("{stem}-{stamp}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{stamp}"),
        };
        self.path.with_file_name(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let mut backup = self.backup_name();
        let mut n = 1;
        while backup.exists() {
            // Two rotations within a millisecond: keep both.
            backup = PathBuf::from(format!("{}.{n}", backup.display()));
            n += 1;
        }
        std::fs::rename(&self.path, &backup)?;
        self.size = 0;
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.prune()
    }

    /// The rotated files of this file, oldest first.
    pub fn backups(&self) -> std::io::Result<Vec<PathBuf>> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!("{stem}-");
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let p = entry.path();
            if p == self.path {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let modified = entry.metadata()?.modified()?;
                found.push((modified, p));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }

    fn prune(&self) -> std::io::Result<()> {
        if self.max_backups == 0 {
            // lumberjack: 0 keeps them all.
            return Ok(());
        }
        let backups = self.backups()?;
        let excess = backups.len().saturating_sub(self.max_backups);
        for old in &backups[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

/// One export line: Hubble's JSON of the response, the flow cut down by the field mask.
pub fn export_line(
    res: &GetFlowsResponse,
    fieldmask: &[String],
) -> Result<String, protojson::Error> {
    let mut json = protojson::to_json(res, "observer.GetFlowsResponse")?;
    if !fieldmask.is_empty() {
        if let protojson::Json::Object(fields) = &mut json {
            for (name, value) in fields.iter_mut() {
                if name == "flow" {
                    *value = std::mem::replace(value, protojson::Json::Null).masked(fieldmask);
                }
            }
        }
    }
    let mut line = json.to_hubble_string();
    line.push('\n');
    Ok(line)
}

fn response(entry: &Entry, flow: Option<Flow>, node: &str) -> GetFlowsResponse {
    match (entry, flow) {
        (_, Some(f)) => crate::server::flow_response(f, node),
        (Entry::Lost(l, t), None) => GetFlowsResponse {
            response_types: Some(ResponseTypes::LostEvents(*l)),
            node_name: node.to_owned(),
            time: Some(*t),
        },
        (_, None) => GetFlowsResponse::default(),
    }
}

/// Where export lines go.
pub trait Sink: Send {
    /// Takes one exported response and its line; an error is counted, not fatal.
    fn send(&mut self, res: &GetFlowsResponse, line: &str) -> Result<(), String>;
    /// The exporter is stopping.
    fn close(&mut self) {}
}

/// Writes lines to a rotating file, or stdout.
#[derive(Debug)]
pub enum FileSink {
    /// A rotating file.
    File(RotatingFile),
    /// Standard output (`--hubble-export-file-path stdout`).
    Stdout,
}

impl FileSink {
    /// The sink `--hubble-export-file-path` names.
    pub fn open(path: &Path, max_size_mb: u64, max_backups: usize) -> std::io::Result<Self> {
        if path == Path::new("stdout") {
            return Ok(FileSink::Stdout);
        }
        RotatingFile::open(path, max_size_mb, max_backups).map(FileSink::File)
    }
}

impl Sink for FileSink {
    fn send(&mut self, _res: &GetFlowsResponse, line: &str) -> Result<(), String> {
        match self {
            FileSink::File(f) => f.write_line(line).map_err(|e| e.to_string()),
            FileSink::Stdout => std::io::stdout()
                .lock()
                .write_all(line.as_bytes())
                .map_err(|e| e.to_string()),
        }
    }
}

/// A running exporter: its counters, and its thread.
#[derive(Debug)]
pub struct Exporter {
    /// What it did.
    pub stats: Arc<ExportStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Waits for the exporter's thread: it ends when the observer is dropped.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts exporting what `observer` receives from now on to `sinks`, on a thread of its own,
/// counting in `stats` (shared with the sinks, which count their own drops).
pub fn spawn(
    observer: &Arc<Observer>,
    config: &ExportConfig,
    mut sinks: Vec<Box<dyn Sink>>,
    stats: Arc<ExportStats>,
) -> std::io::Result<Exporter> {
    let filters = FlowFilters::compile(&config.allowlist, &config.denylist)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let (_, mut live) = observer.snapshot_and_follow();
    let node = observer.config().node_name.clone();
    let fieldmask = config.fieldmask.clone();
    let counters = Arc::clone(&stats);
    // Only the live feed is held, not the observer: dropping the observer ends the feed.
    let thread = std::thread::Builder::new()
        .name("flow-export".into())
        .spawn(move || {
            loop {
                let numbered = match live.blocking_recv() {
                    Ok(n) => n,
                    Err(RecvError::Lagged(n)) => {
                        counters.dropped.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                // An event's flow is built here, on the exporter's thread, not the intake's.
                let flow = numbered.entry.flow().map(std::borrow::Cow::into_owned);
                if let Some(f) = &flow {
                    if !filters.matches(f) {
                        counters.filtered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                let res = response(&numbered.entry, flow, &node);
                let line = match export_line(&res, &fieldmask) {
                    Ok(l) => l,
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot write a flow as JSON");
                        continue;
                    }
                };
                for sink in &mut sinks {
                    match sink.send(&res, &line) {
                        Ok(()) => {
                            counters.exported.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if counters.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::warn!(error = %e, "flow export failed");
                            }
                        }
                    }
                }
            }
            for sink in &mut sinks {
                sink.close();
            }
        })?;
    Ok(Exporter {
        stats,
        thread: Some(thread),
    })
}

#[cfg(test)]
#[path = "export_tests.rs"]
mod tests;
