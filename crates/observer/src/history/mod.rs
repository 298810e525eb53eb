//! Flow history: every flow the observer sees, kept on disk beyond the ring, bounded by size
//! and age, read back by GetFlows time ranges and `policy whatif`.
//!
//! The store is a directory of append-only segment files ([`segment`]) of compressed blocks of
//! a few thousand flows ([`block`]), with an index in memory of each block's time range and
//! pods, rebuilt at start by reading the segments back (checksums per block: a torn or flipped
//! block is dropped and logged, the rest kept; opening never fails for what is in the files).
//! Retention deletes whole segments, oldest first: past `max_bytes` on disk, or when their
//! newest flow is older than `max_age`. See docs/observability.md for why this and not SQLite.
//!
//! Writing never holds up the observer: [`FlowHistory::offer`] puts the ring's entries (shared,
//! not copied) in a bounded queue, and a writer thread encodes, compresses and appends them in
//! blocks, as a background task while it keeps up ([`priority`]: it must not hold up the
//! traffic either). When the queue is full, flows are dropped and counted
//! (`ciliate_flow_history_flows_dropped_total`). Flows still in the queue are part of every
//! query, so a query never waits for the writer and never misses what it has not written yet.

pub mod block;
#[cfg(test)]
mod format_tests;
pub mod get_flows;
mod prefilter;
mod priority;
mod row;
pub mod segment;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::filter::FlowFilters;
use crate::proto::flow::Flow;
use crate::ring::{Entry, Numbered};
use block::{BlockMeta, Decoded};
pub use prefilter::PodPrefilter;
use segment::BlockRef;

/// Default bound of the history on disk.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Default number of flows queued for the writer before flows are dropped: a second of
/// 100,000 flows/s on top of a block being written.
pub const DEFAULT_QUEUE_FLOWS: usize = 1 << 17;
/// Flows per block: enough for the endpoint dictionary and zstd to pay off, small enough that
/// a query with a narrow time range decodes little beyond it.
pub const BLOCK_FLOWS: usize = 4096;
/// A block is written at the latest this long after its first flow arrived, so a crash loses
/// at most this much at a low flow rate.
const BLOCK_MAX_WAIT: Duration = Duration::from_secs(5);

/// How the history is bounded and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Directory of the segment files (created when missing).
    pub dir: PathBuf,
    /// Bound of the files' total size, in bytes.
    pub max_bytes: u64,
    /// Flows older than this are deleted (whole segments); `None`: no age bound.
    pub max_age: Option<Duration>,
    /// Flows queued for the writer before new ones are dropped.
    pub queue_flows: usize,
}

impl HistoryConfig {
    /// Size at which the writer starts a new segment: an eighth of the bound, so retention
    /// frees space in steps of about an eighth.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(64 << 10, 64 << 20)
    }
}

/// Why the history could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("flow history directory {dir}: {source}")]
pub struct OpenError {
    /// The directory.
    pub dir: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug)]
struct Segment {
    id: (u64, u32),
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    blocks: Vec<Arc<BlockRef>>,
    created: Instant,
}

impl Segment {
    fn max_time(&self) -> i64 {
        self.blocks
            .iter()
            .map(|b| b.meta.max_time_ns)
            .max()
            .unwrap_or(0)
    }

    fn flows(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.meta.count)).sum()
    }
}

#[derive(Debug, Default)]
struct Queue {
    /// Flows offered and not yet on disk, oldest first; the writer pops them once written.
    flows: VecDeque<Numbered>,
    /// When the oldest queued flow arrived.
    since: Option<Instant>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Counters {
    offered: AtomicU64,
    written: AtomicU64,
    dropped_full: AtomicU64,
    dropped_error: AtomicU64,
    bytes_written: AtomicU64,
    segments_deleted: AtomicU64,
    recovered_dropped_bytes: AtomicU64,
    unreadable_blocks: Arc<AtomicU64>,
    disk_bytes: AtomicU64,
    disk_flows: AtomicU64,
    oldest_ns: AtomicI64,
}

#[derive(Debug)]
struct Shared {
    config: HistoryConfig,
    node_name: String,
    run: u64,
    queue: Mutex<Queue>,
    ready: Condvar,
    segments: RwLock<Vec<Segment>>,
    counters: Counters,
}

/// The flow history of one node.
#[derive(Debug, Clone)]
pub struct FlowHistory {
    shared: Arc<Shared>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FlowHistory {
    /// Opens (or creates) the history in `config.dir`, reading back what earlier runs left
    /// (dropping and logging what is unreadable), and starts its writer thread. Flows of this
    /// node carry `node_name`.
    pub fn open(config: HistoryConfig, node_name: &str) -> Result<Self, OpenError> {
        let dir = config.dir.clone();
        let err = |source| OpenError {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(err)?;
        let mut segments = Vec::new();
        let mut last_run = 0;
        let mut unreadable = 0;
        for (id, path) in segment::list(&config.dir).map_err(err)? {
            last_run = last_run.max(id.0);
            match open_segment(id, &path) {
                Ok((s, dropped)) => {
                    unreadable += dropped;
                    segments.extend(s);
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read a flow history segment; left as is")
                }
            }
        }
        let run = u64::try_from(now_ns()).unwrap_or(0).max(last_run + 1);
        let shared = Arc::new(Shared {
            config,
            node_name: node_name.to_owned(),
            run,
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            segments: RwLock::new(segments),
            counters: Counters::default(),
        });
        shared
            .counters
            .recovered_dropped_bytes
            .store(unreadable, Ordering::Relaxed);
        shared.retain();
        shared.update_gauges();
        {
            let s = shared
                .segments
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            info!(
                dir = %shared.config.dir.display(),
                segments = s.len(),
                flows = shared.counters.disk_flows.load(Ordering::Relaxed),
                bytes = shared.counters.disk_bytes.load(Ordering::Relaxed),
                "flow history opened"
            );
        }
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("flow-history".into())
            .spawn(move || writer.write_loop())
            .map_err(err)?;
        Ok(Self { shared })
    }

    /// The configuration in force.
    pub fn config(&self) -> &HistoryConfig {
        &self.shared.config
    }

    /// Queues the flows among `entries` for writing; never blocks on the disk. Lost-event
    /// entries are not kept.
    pub fn offer(&self, entries: &[Numbered]) {
        let c = &self.shared.counters;
        let mut q = lock(&self.shared.queue);
        if q.closed {
            return;
        }
        let was = q.flows.len();
        for n in entries {
            if !n.entry.is_flow() {
                continue;
            }
            c.offered.fetch_add(1, Ordering::Relaxed);
            if q.flows.len() >= self.shared.config.queue_flows {
                c.dropped_full.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            q.flows.push_back(n.clone());
        }
        if was == 0 && !q.flows.is_empty() {
            q.since = Some(Instant::now());
        }
        let wake = was < BLOCK_FLOWS && q.flows.len() >= BLOCK_FLOWS;
        drop(q);
        if wake {
            self.shared.ready.notify_one();
        }
    }

    /// Writes what is queued and stops the writer (at shutdown). Later offers are ignored.
    pub fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
        // The writer drains the queue before it ends; wait for that, briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !lock(&self.shared.queue).flows.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What a query reads: the blocks on disk and the flows not yet written, as of now.
    pub fn snapshot(&self) -> Snapshot {
        // The queue first: a block the writer finishes meanwhile is then in both, and its flows
        // are taken from memory (see `Snapshot::excluded`); the other order could miss it.
        let memory: Vec<Numbered> = lock(&self.shared.queue).flows.iter().cloned().collect();
        let blocks = self
            .shared
            .segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .flat_map(|s| {
                s.blocks
                    .iter()
                    .map(|b| (Arc::clone(&s.file), Arc::clone(b)))
            })
            .collect();
        Snapshot {
            run: self.shared.run,
            memory_from: memory.first().map_or(u64::MAX, |n| n.seq),
            memory,
            blocks,
            unreadable_blocks: Arc::clone(&self.shared.counters.unreadable_blocks),
        }
    }

    /// Flows stored on disk now.
    pub fn disk_flows(&self) -> u64 {
        self.shared.counters.disk_flows.load(Ordering::Relaxed)
    }

    /// Bytes of the segment files now.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.counters.disk_bytes.load(Ordering::Relaxed)
    }

    /// Flows dropped since start (queue full or write failed).
    pub fn dropped(&self) -> u64 {
        let c = &self.shared.counters;
        c.dropped_full.load(Ordering::Relaxed) + c.dropped_error.load(Ordering::Relaxed)
    }

    /// Flows written since start.
    pub fn written(&self) -> u64 {
        self.shared.counters.written.load(Ordering::Relaxed)
    }

    /// Flows queued for the writer now.
    pub fn queued(&self) -> usize {
        lock(&self.shared.queue).flows.len()
    }

    /// Bytes dropped as unreadable when the history was opened.
    pub fn recovered_dropped_bytes(&self) -> u64 {
        self.shared
            .counters
            .recovered_dropped_bytes
            .load(Ordering::Relaxed)
    }

    /// Blocks queries found unreadable and skipped since start.
    pub fn unreadable_blocks(&self) -> u64 {
        self.shared
            .counters
            .unreadable_blocks
            .load(Ordering::Relaxed)
    }

    /// The history's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let c = &self.shared.counters;
        let mut s = String::new();
        let mut m = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in lines {
                s.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        m(
            "ciliate_flow_history_flows_written_total",
            "counter",
            "Flows written to the flow history since start.",
            &[(String::new(), get(&c.written))],
        );
        m(
            "ciliate_flow_history_flows_dropped_total",
            "counter",
            "Flows not kept in the history: its queue was full, or writing failed.",
            &[
                ("{reason=\"queue_full\"}".into(), get(&c.dropped_full)),
                ("{reason=\"write_error\"}".into(), get(&c.dropped_error)),
            ],
        );
        m(
            "ciliate_flow_history_flows",
            "gauge",
            "Flows stored in the flow history on disk.",
            &[(String::new(), get(&c.disk_flows))],
        );
        m(
            "ciliate_flow_history_bytes",
            "gauge",
            "Size of the flow history's files.",
            &[(String::new(), get(&c.disk_bytes))],
        );
        m(
            "ciliate_flow_history_segments_deleted_total",
            "counter",
            "Segments deleted by the size and age bounds since start.",
            &[(String::new(), get(&c.segments_deleted))],
        );
        m(
            "ciliate_flow_history_unreadable_bytes",
            "gauge",
            "Bytes of the history found unreadable (torn or corrupted blocks) when it was opened.",
            &[(String::new(), get(&c.recovered_dropped_bytes))],
        );
        m(
            "ciliate_flow_history_unreadable_blocks_total",
            "counter",
            "Blocks a query found unreadable (changed on disk since the history was opened, or inconsistent) and skipped.",
            &[(String::new(), get(&c.unreadable_blocks))],
        );
        s
    }
}

/// Reads one segment back, with the bytes it had to drop; `None` when nothing in it is
/// readable (it is then removed).
fn open_segment(id: (u64, u32), path: &Path) -> std::io::Result<(Option<Segment>, u64)> {
    let (blocks, dropped, size) = segment::scan(path)?;
    if dropped.bytes > 0 {
        warn!(
            file = %path.display(),
            bytes = dropped.bytes,
            ranges = ?dropped.ranges,
            blocks_kept = blocks.len(),
            "flow history: unreadable parts of a segment dropped (torn write or corruption); the rest is kept"
        );
    }
    if blocks.is_empty() {
        if size > segment::HEADER_LEN {
            warn!(file = %path.display(), bytes = size, "flow history: nothing readable in a segment; removed");
        }
        std::fs::remove_file(path)?;
        return Ok((None, dropped.bytes));
    }
    let file = File::open(path)?;
    let segment = Segment {
        id,
        path: path.to_owned(),
        file: Arc::new(file),
        size,
        blocks: blocks.into_iter().map(Arc::new).collect(),
        created: Instant::now(),
    };
    Ok((Some(segment), dropped.bytes))
}

/// The active segment of this run, where blocks are appended.
#[derive(Debug)]
struct Active {
    file: File,
    id: (u64, u32),
    size: u64,
}

impl Shared {
    fn write_loop(self: Arc<Self>) {
        let mut active: Option<Active> = None;
        let mut encoder = block::Encoder::default();
        let mut next_n = 0u32;
        let mut errors = 0u64;
        let mut priority = priority::WriterPriority::default();
        loop {
            let batch: Vec<Numbered> = {
                let mut q = lock(&self.queue);
                loop {
                    let due = q.since.is_some_and(|t| t.elapsed() >= BLOCK_MAX_WAIT);
                    if q.flows.len() >= BLOCK_FLOWS
                        || (q.closed && !q.flows.is_empty())
                        || (due && !q.flows.is_empty())
                    {
                        break;
                    }
                    if q.closed {
                        return;
                    }
                    q = self
                        .ready
                        .wait_timeout(q, Duration::from_millis(500))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                let (queued, closing) = (q.flows.len(), q.closed);
                let batch = q.flows.iter().take(BLOCK_FLOWS).cloned().collect();
                drop(q);
                priority.choose(queued, closing);
                batch
            };
            let n = batch.len();
            match self.write_block(&batch, &mut encoder, &mut active, &mut next_n, &mut || {
                priority.offer_cpu();
            }) {
                Ok(()) => {
                    self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    errors += 1;
                    self.counters
                        .dropped_error
                        .fetch_add(n as u64, Ordering::Relaxed);
                    // The segment may hold half a block now: start another (the half is
                    // dropped when read back).
                    active = None;
                    if errors == 1 || errors.is_multiple_of(100) {
                        warn!(error = %e, flows = n, failures = errors, dir = %self.config.dir.display(), "cannot write the flow history: flows dropped");
                    }
                }
            }
            let idle = {
                let mut q = lock(&self.queue);
                let n = n.min(q.flows.len());
                q.flows.drain(..n);
                q.since = (!q.flows.is_empty()).then(Instant::now);
                if q.flows.is_empty() {
                    // A burst past a block grew the queue; a block's worth is what it needs.
                    q.flows.shrink_to(BLOCK_FLOWS);
                }
                q.flows.is_empty()
            };
            if idle {
                // Nothing waits: the next block is at least BLOCK_MAX_WAIT away or starts a
                // new burst, and either way need not find the last one's buffers.
                encoder.release_block_buffers();
            }
            self.retain();
            self.update_gauges();
        }
    }

    fn write_block(
        &self,
        batch: &[Numbered],
        encoder: &mut block::Encoder,
        active: &mut Option<Active>,
        next_n: &mut u32,
        between: &mut dyn FnMut(),
    ) -> std::io::Result<()> {
        use std::io::Write;
        // Events' and HTTP records' flows are built here, on the history's writer thread, in the parts a block
        // stores (each distinct endpoint once per block).
        let rows: Vec<(u64, block::Row<'_>)> = batch
            .iter()
            .filter_map(|n| {
                let row = match n.entry.as_ref() {
                    Entry::Flow(f) => block::Row::Flow(f),
                    Entry::Event(r) => block::Row::Event(r),
                    Entry::Http(r) => block::Row::Http(r),
                    Entry::Lost(..) => return None,
                };
                Some((n.seq, row))
            })
            .collect();
        let (meta, body) = encoder.encode_rows_pausing(&rows, self.run, &self.node_name, between);
        let frame = segment::frame(&meta, &body);
        let rotate = active.as_ref().is_none_or(|a| {
            a.size >= self.config.segment_bytes()
                || self.config.max_age.is_some_and(|age| {
                    self.segments
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .iter()
                        .find(|s| s.id == a.id)
                        .is_some_and(|s| s.created.elapsed() >= age / 8)
                })
        });
        if rotate {
            let id = (self.run, *next_n);
            *next_n += 1;
            let path = self.config.dir.join(segment::file_name(id.0, id.1));
            let file = segment::create(&path)?;
            let reader = File::open(&path)?;
            self.segments
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Segment {
                    id,
                    path,
                    file: Arc::new(reader),
                    size: segment::HEADER_LEN,
                    blocks: Vec::new(),
                    created: Instant::now(),
                });
            *active = Some(Active {
                file,
                id,
                size: segment::HEADER_LEN,
            });
        }
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        a.file.write_all(&frame)?;
        let offset = a.size;
        a.size += frame.len() as u64;
        self.counters
            .bytes_written
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        let meta_len = u32::try_from(frame.len() - 16 - body.len()).unwrap_or(0);
        let mut segs = self
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = segs.iter_mut().find(|s| s.id == a.id) {
            s.size = a.size;
            s.blocks.push(Arc::new(BlockRef {
                offset,
                len: (frame.len() - 16) as u64,
                meta_len,
                format: block::FORMAT,
                meta,
            }));
        }
        Ok(())
    }

    /// Deletes whole segments, oldest first, past the size bound or the age bound. The
    /// segment being written is kept (it is the newest).
    fn retain(&self) {
        let mut segs = self
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cutoff = self
            .config
            .max_age
            .map(|a| now_ns().saturating_sub(i64::try_from(a.as_nanos()).unwrap_or(i64::MAX)));
        loop {
            let total: u64 = segs.iter().map(|s| s.size).sum();
            let Some(oldest) = segs.first() else { break };
            let too_big = total > self.config.max_bytes && segs.len() > 1;
            let too_old = cutoff.is_some_and(|c| oldest.max_time() < c)
                && (segs.len() > 1 || oldest.id.0 != self.run);
            if !too_big && !too_old {
                break;
            }
            let s = segs.remove(0);
            match std::fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %s.path.display(), error = %e, "cannot delete an old flow history segment")
                }
            }
            self.counters
                .segments_deleted
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn update_gauges(&self) {
        let segs = self
            .segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = &self.counters;
        c.disk_bytes
            .store(segs.iter().map(|s| s.size).sum(), Ordering::Relaxed);
        c.disk_flows
            .store(segs.iter().map(Segment::flows).sum(), Ordering::Relaxed);
        c.oldest_ns.store(
            segs.iter()
                .flat_map(|s| s.blocks.first())
                .map(|b| b.meta.min_time_ns)
                .next()
                .unwrap_or(0),
            Ordering::Relaxed,
        );
    }
}

/// Threads that read blocks for one query (`forward`): two where the process may use four CPUs
/// or more, else one. On a 2-vCPU machine two readers were slower than one (`bench/history.sh`,
/// quiet machine: 0.62 s wall and 1.05 s CPU against 0.53 s pinned to one CPU): the readers
/// take turns block by block, and the second competes with the ring and the datapath's events.
fn query_threads() -> usize {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() >= 4 => 2,
        _ => 1,
    }
}

/// What a query reads from the history (see [`FlowHistory::snapshot`]).
#[derive(Debug)]
pub struct Snapshot {
    run: u64,
    memory: Vec<Numbered>,
    /// Flows of this run with sequence numbers from here on are taken from `memory`.
    memory_from: u64,
    blocks: Vec<(Arc<File>, Arc<BlockRef>)>,
    /// The history's count of blocks queries skipped as unreadable.
    unreadable_blocks: Arc<AtomicU64>,
}

/// Which flows a query wants from the history.
#[derive(Debug)]
pub struct Scan<'a> {
    /// The request's filters.
    pub filters: &'a FlowFilters,
    /// Their pod prefilter ([`PodPrefilter::new`] of the whitelist).
    pub prefilter: &'a PodPrefilter,
    /// Flows before this time (ns since the epoch) are left out.
    pub since_ns: Option<i64>,
    /// Flows after this time are left out.
    pub until_ns: Option<i64>,
    /// Flows of this run from this ring sequence number on are left out: the ring answers
    /// for them. `u64::MAX` leaves none out.
    pub ring_from: u64,
}

impl Scan<'_> {
    fn time_ok(&self, t: Option<i64>) -> bool {
        t.is_none_or(|t| {
            self.since_ns.is_none_or(|s| t >= s) && self.until_ns.is_none_or(|u| t <= u)
        })
    }

    fn block_ok(&self, m: &BlockMeta) -> bool {
        (m.untimed > 0
            || (self.since_ns.is_none_or(|s| m.max_time_ns >= s)
                && self.until_ns.is_none_or(|u| m.min_time_ns <= u)))
            && self.prefilter.block_may_match(&m.src_pods, &m.dst_pods)
    }
}

/// One unit of a snapshot, in order: each block, then the memory.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Block(usize),
    Memory,
}

impl Snapshot {
    fn units(&self) -> impl DoubleEndedIterator<Item = Unit> {
        (0..self.blocks.len())
            .map(Unit::Block)
            .chain(std::iter::once(Unit::Memory))
    }

    /// Counts and logs a block a query could not read (changed on disk since it was opened, or
    /// inconsistent inside): it is skipped, the query goes on.
    fn unreadable_block(&self, b: &BlockRef, error: &str) {
        self.unreadable_blocks.fetch_add(1, Ordering::Relaxed);
        warn!(offset = b.offset, error = %error, "flow history: unreadable block skipped");
    }

    fn excluded(&self, scan: &Scan<'_>, run: u64, seq: u64, from_disk: bool) -> bool {
        run == self.run && (seq >= scan.ring_from || (from_disk && seq >= self.memory_from))
    }

    /// Calls `f` with every wanted flow of `unit`, in order, until it returns false; returns
    /// false then.
    fn each(&self, unit: Unit, scan: &Scan<'_>, f: &mut dyn FnMut(Flow) -> bool) -> bool {
        match unit {
            Unit::Memory => {
                for n in &self.memory {
                    let Some(flow) = n.entry.flow() else {
                        continue;
                    };
                    if self.excluded(scan, self.run, n.seq, false)
                        || !scan.time_ok(block::time_ns(&flow))
                        || !scan.filters.matches(&flow)
                    {
                        continue;
                    }
                    if !f(flow.into_owned()) {
                        return false;
                    }
                }
                true
            }
            Unit::Block(i) => {
                let (file, b) = &self.blocks[i];
                let m = &b.meta;
                if !scan.block_ok(m)
                    || (m.run == self.run && m.first_seq >= scan.ring_from.min(self.memory_from))
                {
                    return true;
                }
                let decoded = match segment::read_body(file, b)
                    .map_err(|e| e.to_string())
                    .and_then(|body| block::decode(b.format, m, body).map_err(|e| e.to_string()))
                {
                    Ok(d) => d,
                    Err(e) => {
                        self.unreadable_block(b, &e);
                        return true;
                    }
                };
                each_in_block(self, &decoded, b, scan, f)
            }
        }
    }

    /// Calls `f` with the wanted flows, oldest first, skipping the first `skip`, until `f`
    /// returns false.
    pub fn forward(&self, scan: &Scan<'_>, mut skip: u64, f: &mut dyn FnMut(Flow) -> bool) {
        self.forward_from(0, query_threads(), scan, &mut skip, f);
    }

    /// [`forward`](Self::forward) with `threads` readers, whatever the machine (for tests).
    #[cfg(test)]
    pub(crate) fn forward_on(
        &self,
        threads: usize,
        scan: &Scan<'_>,
        mut skip: u64,
        f: &mut dyn FnMut(Flow) -> bool,
    ) {
        self.forward_from(0, threads, scan, &mut skip, f);
    }

    fn forward_from(
        &self,
        start: usize,
        threads: usize,
        scan: &Scan<'_>,
        skip: &mut u64,
        f: &mut dyn FnMut(Flow) -> bool,
    ) {
        let units: Vec<Unit> = self.units().skip(start).collect();
        let mut emit = |flow| {
            if *skip > 0 {
                *skip -= 1;
                return true;
            }
            f(flow)
        };
        if threads < 2 || units.len() < 2 {
            for unit in units {
                if !self.each(unit, scan, &mut emit) {
                    return;
                }
            }
            return;
        }
        // Two readers: this thread reads units 0, 2, 4, ... and sends their flows as it
        // reads them; a helper reads 1, 3, 5, ... ahead, one unit's wanted flows at a time
        // (memory stays bounded by two blocks' flows). Flows are sent in order, from here.
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Flow>>(1);
            let stop = &stop;
            let theirs: Vec<Unit> = units.iter().skip(1).step_by(2).copied().collect();
            let helper = std::thread::Builder::new()
                .name("flow-history-read".into())
                .spawn_scoped(s, move || {
                    for unit in theirs {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let mut wanted = Vec::new();
                        self.each(unit, scan, &mut |flow| {
                            wanted.push(flow);
                            true
                        });
                        if tx.send(wanted).is_err() {
                            break;
                        }
                    }
                });
            if helper.is_err() {
                // No thread to be had: this one reads everything.
                for unit in &units {
                    if !self.each(*unit, scan, &mut emit) {
                        return;
                    }
                }
                return;
            }
            for (k, unit) in units.iter().enumerate() {
                let go = if k % 2 == 0 {
                    self.each(*unit, scan, &mut emit)
                } else {
                    rx.recv()
                        .is_ok_and(|flows| flows.into_iter().all(&mut emit))
                };
                if !go {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            // A helper waiting to hand over a unit nobody wants now gets an error and ends.
            drop(rx);
        });
    }

    /// Calls `f` with the last `n` wanted flows, oldest first, until it returns false. Reads
    /// backwards to find where they start (counting, not keeping), then forwards from there,
    /// so memory stays bounded whatever `n` is.
    pub fn last(&self, scan: &Scan<'_>, n: u64, f: &mut dyn FnMut(Flow) -> bool) {
        if n == 0 {
            return;
        }
        let units: Vec<Unit> = self.units().collect();
        let mut found = 0u64;
        let mut start = 0;
        for (i, unit) in units.iter().enumerate().rev() {
            let mut count = 0u64;
            self.each(*unit, scan, &mut |_| {
                count += 1;
                true
            });
            found += count;
            if found >= n {
                start = i;
                break;
            }
        }
        let mut skip = found.saturating_sub(n);
        self.forward_from(start, query_threads(), scan, &mut skip, f);
    }
}

fn each_in_block(
    snap: &Snapshot,
    d: &Decoded,
    b: &BlockRef,
    scan: &Scan<'_>,
    f: &mut dyn FnMut(Flow) -> bool,
) -> bool {
    let run = b.meta.run;
    let masks = scan.prefilter.masks(d.endpoint_names());
    for i in 0..d.len() {
        // The endpoints first: they are in the index, the rest is in the chunks.
        if let Some((src, dst)) = &masks {
            let (s, t) = d.endpoints_of(i);
            if src[s as usize] & dst[t as usize] == 0 {
                continue;
            }
        }
        let read = d.seq_of(i).and_then(|seq| {
            if snap.excluded(scan, run, seq, true) || !scan.time_ok(d.time_of(i)?) {
                return Ok(None);
            }
            d.flow(i).map(Some)
        });
        let flow = match read {
            Ok(Some(flow)) => flow,
            Ok(None) => continue,
            Err(e) => {
                // The checksum held, so this is not the disk: the rest of the block is not
                // to be trusted either.
                snap.unreadable_block(b, &e.to_string());
                return true;
            }
        };
        if scan.filters.matches(&flow) && !f(flow) {
            return false;
        }
    }
    true
}
