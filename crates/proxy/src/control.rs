//! The agent's control socket: line-delimited JSON, [`ProxyCommand`]s in, [`ProxyEvent`]s out.
//!
//! The agent is the only writer. A new connection replaces the previous one (a restarted
//! agent); the policy survives disconnects, and the agent sends a Snapshot first on every
//! connection. Events produced while nobody is connected are dropped (and counted).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ciliate_model::l7::{ProxyCommand, ProxyEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, info, warn};

use crate::dns::gate::AnswerGate;
use crate::engine::Engine;

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
    let writer: Arc<Mutex<Option<tokio::net::unix::OwnedWriteHalf>>> = Arc::new(Mutex::new(None));
    tokio::spawn(forward_events(events, writer.clone(), engine.clone()));
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
    let mut guard = writer.lock().await;
    if let Some(w) = guard.as_mut() {
        if w.write_all(&line).await.is_err() {
            *guard = None;
        }
    }
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
                    ProxyCommand::Snapshot { revision, .. }
                    | ProxyCommand::Endpoint { revision, .. } => *revision,
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

async fn forward_events(
    mut events: mpsc::Receiver<ProxyEvent>,
    writer: Arc<Mutex<Option<tokio::net::unix::OwnedWriteHalf>>>,
    engine: Arc<Engine>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = None;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => send(&writer, &ev).await,
                None => return,
            },
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
