//! The agent's control socket: line-delimited JSON, [`ProxyCommand`]s in, [`ProxyEvent`]s out.
//!
//! The agent is the only writer. A new connection replaces the previous one (a restarted
//! agent); the policy survives disconnects, and the agent sends a Snapshot first on every
//! connection. Events produced while nobody is connected are dropped (and counted).
//!
//! Records (HTTP, DNS, Kafka) are written in batches, several lines per write, a few
//! milliseconds after the first of them: per request, the write and the agent's wakeup to read
//! it cost more CPU than the proxying itself.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ciliate_model::l7::{ProxyCommand, ProxyEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{debug, info, warn};

use crate::dns::gate::AnswerGate;
use crate::engine::Engine;
use crate::events::{is_record, EventSender};

/// Binds the control socket at `path` (replacing a stale one).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Serves the control socket forever: commands applied in order, events forwarded to the
/// newest connection, stats every second while they change.
pub async fn serve(
    listener: UnixListener,
    engine: Arc<Engine>,
    events: mpsc::Receiver<ProxyEvent>,
) {
    serve_with_gate(listener, engine, events, None).await;
}

/// [`serve`], with FqdnAllowed releasing the DNS proxy's held answers in `gate`.
pub async fn serve_with_gate(
    listener: UnixListener,
    engine: Arc<Engine>,
    events: mpsc::Receiver<ProxyEvent>,
    gate: Option<Arc<AnswerGate>>,
) {
    let _control = spawn(listener, engine, events, gate);
    std::future::pending::<()>().await
}

/// The control socket's tasks, as [`spawn`] started them.
#[derive(Debug)]
pub struct Control {
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl Control {
    /// Returns once every record emitted before the call has been written to the agent's
    /// connection (or dropped and counted, with no agent connected): a proxy about to exit
    /// calls it so that the records of its last requests are not lost in the batch.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts serving the control socket (see [`serve_with_gate`]) on the current runtime.
pub fn spawn(
    listener: UnixListener,
    engine: Arc<Engine>,
    events: mpsc::Receiver<ProxyEvent>,
    gate: Option<Arc<AnswerGate>>,
) -> Control {
    let writer: Arc<Mutex<Option<tokio::net::unix::OwnedWriteHalf>>> = Arc::new(Mutex::new(None));
    let (flush, flush_requests) = mpsc::channel(4);
    tokio::spawn(forward_events(
        events,
        flush_requests,
        writer.clone(),
        engine.clone(),
        gate.clone(),
    ));
    tokio::spawn(accept(listener, writer, engine, gate));
    Control { flush }
}

async fn accept(
    listener: UnixListener,
    writer: Arc<Mutex<Option<tokio::net::unix::OwnedWriteHalf>>>,
    engine: Arc<Engine>,
    gate: Option<Arc<AnswerGate>>,
) {
    let mut generation = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        generation += 1;
        info!(generation, "control connection");
        let (read, write) = stream.into_split();
        *writer.lock().await = Some(write);
        tokio::spawn(read_commands(
            read,
            writer.clone(),
            engine.clone(),
            gate.clone(),
        ));
    }
}

async fn send(writer: &Mutex<Option<tokio::net::unix::OwnedWriteHalf>>, ev: &ProxyEvent) {
    let Ok(mut line) = serde_json::to_vec(ev) else {
        return;
    };
    line.push(b'\n');
    write_lines(writer, &line).await;
}

/// Writes whole lines to the agent's connection; drops the connection if that fails. False
/// if they did not reach it.
async fn write_lines(
    writer: &Mutex<Option<tokio::net::unix::OwnedWriteHalf>>,
    lines: &[u8],
) -> bool {
    let mut guard = writer.lock().await;
    let Some(w) = guard.as_mut() else {
        return false;
    };
    if w.write_all(lines).await.is_err() {
        *guard = None;
        return false;
    }
    true
}

async fn read_commands(
    read: tokio::net::unix::OwnedReadHalf,
    writer: Arc<Mutex<Option<tokio::net::unix::OwnedWriteHalf>>>,
    engine: Arc<Engine>,
    gate: Option<Arc<AnswerGate>>,
) {
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                info!("control connection closed; keeping the policy in force");
                return;
            }
            Err(e) => {
                warn!(error = %e, "control read");
                return;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let ev = match serde_json::from_str::<ProxyCommand>(&line) {
            Ok(cmd) => {
                let revision = match &cmd {
                    // A (re)connected agent may have lost FQDN cache entries: what it
                    // confirmed before counts no more (see crate::dns::acked).
                    ProxyCommand::Snapshot { revision, .. } => {
                        if let Some(g) = &gate {
                            g.forget_all();
                        }
                        *revision
                    }
                    ProxyCommand::Endpoint {
                        revision, endpoint, ..
                    } => {
                        if let Some(g) = &gate {
                            g.forget_endpoint(*endpoint);
                        }
                        *revision
                    }
                    // Not a policy change: the agent removes addresses it confirmed.
                    ProxyCommand::FqdnForget { endpoint } => {
                        if let Some(g) = &gate {
                            match endpoint {
                                Some(ep) => g.forget_endpoint(*ep),
                                None => g.forget_all(),
                            }
                        }
                        continue;
                    }
                    // Not a policy change: the held answer goes to the pod now.
                    ProxyCommand::FqdnAllowed { id } => {
                        let released = gate.as_ref().is_some_and(|g| g.release(*id));
                        if !released {
                            debug!(id, "FqdnAllowed for no held answer (released already)");
                        }
                        continue;
                    }
                };
                match engine.policy.apply(&cmd) {
                    Ok(revision) => {
                        info!(
                            revision,
                            redirects = engine.policy.current().len(),
                            "policy applied"
                        );
                        ProxyEvent::Applied { revision }
                    }
                    Err(e) => {
                        warn!(revision, error = %e, "command rejected; policy unchanged");
                        ProxyEvent::Rejected {
                            revision,
                            reason: e.to_string(),
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "bad control line");
                ProxyEvent::Rejected {
                    revision: 0,
                    reason: format!("bad command: {e}"),
                }
            }
        };
        send(&writer, &ev).await;
    }
}

/// How long records gather before they are written: one write (and one wakeup of the agent's
/// reader) per batch instead of two per request. Records only; requests are not held.
const RECORD_LINGER: Duration = Duration::from_millis(5);
/// Records per write at most.
const MAX_BATCH: usize = 512;

async fn forward_events(
    mut events: mpsc::Receiver<ProxyEvent>,
    mut flush_requests: mpsc::Receiver<oneshot::Sender<()>>,
    writer: Arc<Mutex<Option<tokio::net::unix::OwnedWriteHalf>>>,
    engine: Arc<Engine>,
    gate: Option<Arc<AnswerGate>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut lines = Vec::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            n = events.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
                gather(&mut events, &mut batch, &engine.events, gate.as_deref()).await;
                write_batch(&writer, &mut batch, &mut lines, &engine).await;
            }
            done = flush_requests.recv() => {
                let Some(done) = done else { continue };
                take_ready(&mut events, &mut batch);
                write_batch(&writer, &mut batch, &mut lines, &engine).await;
                let _ = done.send(());
            }
            _ = tick.tick() => {
                let s = engine.counters.snapshot();
                if last != Some(s) {
                    last = Some(s);
                    send(&writer, &ProxyEvent::Stats(s)).await;
                }
            }
        }
    }
}

/// Adds the records of the next [`RECORD_LINGER`] to `batch`, up to [`MAX_BATCH`]. Anything
/// urgent (an FQDN answer the proxy holds until the agent allows it, a policy reply) ends the
/// wait at once; an FqdnLearned of an answer already sent (a renewal) is not urgent. The queue
/// is not watched meanwhile, so records sent during the wait wake nobody (see
/// [`crate::events`]).
async fn gather(
    events: &mut mpsc::Receiver<ProxyEvent>,
    batch: &mut Vec<ProxyEvent>,
    urgent: &EventSender,
    gate: Option<&AnswerGate>,
) {
    let linger = tokio::time::sleep(RECORD_LINGER);
    tokio::pin!(linger);
    let mut seen = 0;
    loop {
        if batch[seen..].iter().any(|ev| is_urgent(ev, gate)) || batch.len() >= MAX_BATCH {
            return;
        }
        seen = batch.len();
        tokio::select! {
            biased;
            _ = &mut linger => {
                take_ready(events, batch);
                return;
            }
            _ = urgent.urgent() => take_ready(events, batch),
        }
    }
}

fn is_urgent(ev: &ProxyEvent, gate: Option<&AnswerGate>) -> bool {
    match ev {
        ProxyEvent::FqdnLearned(l) => gate.is_none_or(|g| g.is_held(l.id)),
        ev => !is_record(ev),
    }
}

/// Moves the events already queued into `batch`, up to [`MAX_BATCH`].
fn take_ready(events: &mut mpsc::Receiver<ProxyEvent>, batch: &mut Vec<ProxyEvent>) {
    while batch.len() < MAX_BATCH {
        match events.try_recv() {
            Ok(ev) => batch.push(ev),
            Err(_) => return,
        }
    }
}

/// Writes `batch` as JSON lines in one write (`lines` is the reused buffer) and empties it.
/// Records that reach no agent are counted as lost.
async fn write_batch(
    writer: &Mutex<Option<tokio::net::unix::OwnedWriteHalf>>,
    batch: &mut Vec<ProxyEvent>,
    lines: &mut Vec<u8>,
    engine: &Engine,
) {
    lines.clear();
    let n = batch.len() as u64;
    for ev in batch.drain(..) {
        let start = lines.len();
        match serde_json::to_writer(&mut *lines, &ev) {
            Ok(()) => lines.push(b'\n'),
            Err(e) => {
                lines.truncate(start);
                warn!(error = %e, "unserializable proxy event");
            }
        }
    }
    if n > 0 && !write_lines(writer, lines).await {
        engine.counters.records_lost.fetch_add(n, Ordering::Relaxed);
    }
}

async fn next_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> std::io::Result<Option<ProxyEvent>> {
    loop {
        let Some(line) = lines.next_line().await? else {
            return Ok(None);
        };
        match serde_json::from_str(&line) {
            Ok(ev) => return Ok(Some(ev)),
            Err(e) => warn!(error = %e, "unparsable proxy event"),
        }
    }
}

/// A client of the control socket (the supervisor, and tests).
#[derive(Debug)]
pub struct ControlClient {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl ControlClient {
    /// Connects to the control socket at `path`.
    pub async fn connect(path: &Path) -> std::io::Result<Self> {
        let s = UnixStream::connect(path).await?;
        let (r, w) = s.into_split();
        Ok(Self {
            lines: BufReader::new(r).lines(),
            write: w,
        })
    }

    /// Sends one command.
    pub async fn send(&mut self, cmd: &ProxyCommand) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cmd).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.write.write_all(&line).await
    }

    /// Sends raw bytes (tests of bad input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// The next event; `None` when the proxy closed the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<ProxyEvent>> {
        next_event(&mut self.lines).await
    }

    /// Splits into the two halves (reader, writer) for separate tasks.
    pub fn into_split(self) -> (ControlReader, ControlWriter) {
        (
            ControlReader { lines: self.lines },
            ControlWriter { write: self.write },
        )
    }
}

/// The reading half of a [`ControlClient`].
#[derive(Debug)]
pub struct ControlReader {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
}

impl ControlReader {
    /// The next event; `None` at end of stream.
    pub async fn next(&mut self) -> std::io::Result<Option<ProxyEvent>> {
        next_event(&mut self.lines).await
    }
}

/// The writing half of a [`ControlClient`].
#[derive(Debug)]
pub struct ControlWriter {
    write: tokio::net::unix::OwnedWriteHalf,
}

impl ControlWriter {
    /// Sends one command.
    pub async fn send(&mut self, cmd: &ProxyCommand) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cmd).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.write.write_all(&line).await
    }
}
