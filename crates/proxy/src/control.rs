//! The agent's control socket: [`ProxyCommand`]s in as JSON lines, [`ProxyEvent`]s out, the
//! records (HTTP, DNS, Kafka) as binary frames and everything else as JSON lines (the format:
//! [`ciliate_model::l7_wire`]).
//!
//! The agent is the only writer. A new connection replaces the previous one (a restarted
//! agent); the policy survives disconnects, and the agent sends a Snapshot first on every
//! connection. Events produced while nobody is connected are dropped (and counted).
//!
//! Records (HTTP, DNS, Kafka) are written in batches, several per write, a few
//! milliseconds after the first of them: per request, the write and the agent's wakeup to read
//! it cost more CPU than the proxying itself.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ciliate_model::l7::{ProxyCommand, ProxyEvent};
use ciliate_model::l7_wire::{self, FRAME_HEADER, MAX_FRAME};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{debug, info, warn};

use crate::dns::gate::AnswerGate;
use crate::engine::Engine;
use crate::events::{EventSender, Outgoing};

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
pub async fn serve(listener: UnixListener, engine: Arc<Engine>, events: mpsc::Receiver<Outgoing>) {
    serve_with_gate(listener, engine, events, None).await;
}

/// [`serve`], with FqdnAllowed releasing the DNS proxy's held answers in `gate`.
pub async fn serve_with_gate(
    listener: UnixListener,
    engine: Arc<Engine>,
    events: mpsc::Receiver<Outgoing>,
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
    events: mpsc::Receiver<Outgoing>,
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
    mut events: mpsc::Receiver<Outgoing>,
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
    events: &mut mpsc::Receiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
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

fn is_urgent(ev: &Outgoing, gate: Option<&AnswerGate>) -> bool {
    match ev {
        Outgoing::Event(ProxyEvent::FqdnLearned(l)) => gate.is_none_or(|g| g.is_held(l.id)),
        ev => !ev.is_record(),
    }
}

/// Moves the events already queued into `batch`, up to [`MAX_BATCH`].
fn take_ready(events: &mut mpsc::Receiver<Outgoing>, batch: &mut Vec<Outgoing>) {
    while batch.len() < MAX_BATCH {
        match events.try_recv() {
            Ok(ev) => batch.push(ev),
            Err(_) => return,
        }
    }
}

/// Writes `batch` in one write (`lines` is the reused buffer), records as frames and other
/// events as JSON lines, and empties it. Records that reach no agent are counted as lost.
async fn write_batch(
    writer: &Mutex<Option<tokio::net::unix::OwnedWriteHalf>>,
    batch: &mut Vec<Outgoing>,
    lines: &mut Vec<u8>,
    engine: &Engine,
) {
    lines.clear();
    let n = batch.len() as u64;
    for ev in batch.drain(..) {
        let ev = match ev {
            Outgoing::Frame(f) => {
                lines.extend_from_slice(&f);
                continue;
            }
            Outgoing::Event(ev) => ev,
        };
        if l7_wire::encode_record(&ev, lines) {
            continue;
        }
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

/// The proxy's side of the control stream as its reader sees it: JSON lines and record
/// frames, parsed from what arrived (reads are cancel-safe: nothing is lost when a caller's
/// timeout drops a pending [`EventStream::next`]).
#[derive(Debug)]
struct EventStream {
    read: tokio::net::unix::OwnedReadHalf,
    buf: BytesMut,
}

/// What the front of the buffer holds.
enum Item {
    Event(ProxyEvent),
    /// A line or frame that was not understood (logged), or an empty line.
    Skipped,
    NeedMore,
}

impl EventStream {
    fn new(read: tokio::net::unix::OwnedReadHalf) -> Self {
        Self {
            read,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next event; `None` at the end of the stream. An error ends the stream: a frame
    /// header over the size limit or a line longer than it (nothing after it can be trusted),
    /// or the stream ending inside an item. A frame or line that is whole but undecodable is
    /// skipped with a warning, and the stream goes on.
    async fn next(&mut self) -> std::io::Result<Option<ProxyEvent>> {
        loop {
            match parse_item(&mut self.buf)? {
                Item::Event(ev) => return Ok(Some(ev)),
                Item::Skipped => continue,
                Item::NeedMore => {}
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the proxy's control stream ended inside an event ({} bytes)",
                        self.buf.len()
                    ),
                ));
            }
        }
    }

    /// The next event and those that arrived with it, `max` at most; `None` at the end of
    /// the stream.
    async fn next_batch(&mut self, max: usize) -> std::io::Result<Option<Vec<ProxyEvent>>> {
        let Some(first) = self.next().await? else {
            return Ok(None);
        };
        let mut batch = vec![first];
        while batch.len() < max {
            // An error stays in the buffer for the next call to report.
            match parse_item(&mut self.buf) {
                Ok(Item::Event(ev)) => batch.push(ev),
                Ok(Item::Skipped) => {}
                Ok(Item::NeedMore) | Err(_) => break,
            }
        }
        Ok(Some(batch))
    }
}

/// Takes the first whole item off `buf`.
fn parse_item(buf: &mut BytesMut) -> std::io::Result<Item> {
    let Some(&first) = buf.first() else {
        return Ok(Item::NeedMore);
    };
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    if l7_wire::is_frame_kind(first) {
        let Some(header) = buf.get(..FRAME_HEADER) else {
            return Ok(Item::NeedMore);
        };
        let header: [u8; FRAME_HEADER] = header.try_into().expect("sliced to length");
        let len = l7_wire::frame_len(header).map_err(|e| invalid(e.to_string()))?;
        if buf.len() < FRAME_HEADER + len {
            buf.reserve(FRAME_HEADER + len - buf.len());
            return Ok(Item::NeedMore);
        }
        buf.advance(FRAME_HEADER);
        // HTTP and DNS records stay their frames (checked here): the agent reads them in
        // place, on the thread that makes them flows, not on the task reading this stream.
        let decoded = match first {
            l7_wire::FRAME_HTTP => l7_wire::HttpFrame::new(&buf[..len]).map(ProxyEvent::HttpFrame),
            l7_wire::FRAME_DNS => l7_wire::DnsFrame::new(&buf[..len]).map(ProxyEvent::DnsFrame),
            kind => l7_wire::decode_record(kind, &buf[..len]),
        };
        buf.advance(len);
        return Ok(match decoded {
            Ok(ev) => Item::Event(ev),
            Err(e) => {
                warn!(error = %e, "undecodable proxy record; skipped");
                Item::Skipped
            }
        });
    }
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_FRAME {
            return Err(invalid(format!(
                "a line of the proxy's control stream is over {MAX_FRAME} bytes"
            )));
        }
        return Ok(Item::NeedMore);
    };
    let line = buf.split_to(end + 1);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Item::Skipped);
    }
    Ok(match serde_json::from_slice(&line) {
        Ok(ev) => Item::Event(ev),
        Err(e) => {
            warn!(error = %e, "unparsable proxy event");
            Item::Skipped
        }
    })
}

/// A client of the control socket (the supervisor, and tests).
#[derive(Debug)]
pub struct ControlClient {
    events: EventStream,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl ControlClient {
    /// Connects to the control socket at `path`.
    pub async fn connect(path: &Path) -> std::io::Result<Self> {
        let s = UnixStream::connect(path).await?;
        let (r, w) = s.into_split();
        Ok(Self {
            events: EventStream::new(r),
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
        self.events.next().await
    }

    /// Splits into the two halves (reader, writer) for separate tasks.
    pub fn into_split(self) -> (ControlReader, ControlWriter) {
        (
            ControlReader {
                events: self.events,
            },
            ControlWriter { write: self.write },
        )
    }
}

/// The reading half of a [`ControlClient`].
#[derive(Debug)]
pub struct ControlReader {
    events: EventStream,
}

impl ControlReader {
    /// The next event; `None` at end of stream.
    pub async fn next(&mut self) -> std::io::Result<Option<ProxyEvent>> {
        self.events.next().await
    }

    /// The next event and those already received after it, `max` at most; `None` at end of
    /// stream.
    pub async fn next_batch(&mut self, max: usize) -> std::io::Result<Option<Vec<ProxyEvent>>> {
        self.events.next_batch(max).await
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use ciliate_model::l7::{DnsRecord, HttpRecord, L7RecordType, L7Verdict};
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn record(n: u64) -> ProxyEvent {
        ProxyEvent::Http(Box::new(HttpRecord {
            time_ns: n,
            record_type: L7RecordType::Request,
            endpoint: 1,
            egress: true,
            source: SocketAddrV4::new([10, 0, 0, 1].into(), 40000),
            destination: SocketAddrV4::new([10, 0, 0, 2].into(), 80),
            source_identity: 256,
            destination_identity: 257,
            verdict: L7Verdict::Forwarded,
            rule: 1,
            method: "GET".into(),
            url: "http://web/".into(),
            protocol: "HTTP/1.1".into(),
            code: 0,
            headers: vec![("accept".into(), "*/*".into())],
            latency_ns: 0,
            reason: None,
        }))
    }

    fn dns_record(n: u64) -> ProxyEvent {
        ProxyEvent::Dns(Box::new(DnsRecord {
            time_ns: n,
            record_type: L7RecordType::Response,
            endpoint: 1,
            source: SocketAddrV4::new([10, 0, 0, 1].into(), 40000),
            destination: SocketAddrV4::new([10, 0, 0, 3].into(), 53),
            proto: 17,
            source_identity: 256,
            destination_identity: 258,
            verdict: L7Verdict::Forwarded,
            rule: 1,
            query: "web.example.com.".into(),
            qtypes: vec!["A".into()],
            rcode: 0,
            ips: vec![[192, 0, 2, 1].into(), [192, 0, 2, 2].into()],
            ttl: 300,
            cnames: Vec::new(),
            rrtypes: vec!["A".into()],
            latency_ns: 1_000,
            reason: None,
        }))
    }

    fn frame(ev: &ProxyEvent) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(l7_wire::encode_record(ev, &mut out));
        out
    }

    /// `events` as the agent reads them: an HTTP or DNS record as its frame.
    fn received(events: &[ProxyEvent]) -> Vec<ProxyEvent> {
        events
            .iter()
            .map(|ev| match ev {
                ProxyEvent::Http(r) => ProxyEvent::HttpFrame(l7_wire::HttpFrame::of_record(r)),
                ProxyEvent::Dns(r) => ProxyEvent::DnsFrame(l7_wire::DnsFrame::of_record(r)),
                ev => ev.clone(),
            })
            .collect()
    }

    /// A reader of what `bytes` (written in pieces of `chunk` bytes, then closed) holds.
    async fn read_all(bytes: Vec<u8>, chunk: usize) -> (Vec<ProxyEvent>, Option<std::io::Error>) {
        let (a, b) = UnixStream::pair().expect("pair");
        let (r, _w) = b.into_split();
        let writer = tokio::spawn(async move {
            let mut a = a;
            for piece in bytes.chunks(chunk) {
                a.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
        });
        let mut stream = EventStream::new(r);
        let mut got = Vec::new();
        let err = loop {
            match stream.next_batch(3).await {
                Ok(Some(batch)) => got.extend(batch),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        writer.await.expect("writer");
        (got, err)
    }

    #[tokio::test]
    async fn frames_and_lines_mix_in_any_split() {
        let events = vec![
            record(1),
            ProxyEvent::Applied { revision: 7 },
            dns_record(2),
            record(3),
            dns_record(4),
            ProxyEvent::Stats(Default::default()),
            record(5),
        ];
        let mut bytes = Vec::new();
        for ev in &events {
            if !l7_wire::encode_record(ev, &mut bytes) {
                serde_json::to_writer(&mut bytes, ev).expect("json");
                bytes.push(b'\n');
            }
        }
        for chunk in [1, 2, 7, 64, bytes.len()] {
            let (got, err) = read_all(bytes.clone(), chunk).await;
            assert!(err.is_none(), "chunk {chunk}: {err:?}");
            assert_eq!(got, received(&events), "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn an_undecodable_frame_or_line_is_skipped_and_the_stream_goes_on() {
        let mut bad = frame(&record(1));
        bad[FRAME_HEADER + 8] = 9; // record_type: no such value
        let mut bytes = bad;
        bytes.extend_from_slice(b"{\"nonsense\": 1}\n\n");
        let mut bad_dns = frame(&dns_record(2));
        bad_dns[FRAME_HEADER + 8] = 9; // record_type again
        bytes.extend(bad_dns);
        bytes.extend(frame(&dns_record(3)));
        bytes.extend(frame(&record(4)));
        let (got, err) = read_all(bytes, 5).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, received(&[dns_record(3), record(4)]));
    }

    #[tokio::test]
    async fn a_truncated_frame_or_an_oversized_header_ends_the_stream_with_an_error() {
        let mut bytes = frame(&record(1));
        let whole = bytes.len();
        bytes.extend(frame(&record(2)));
        bytes.truncate(whole + 10);
        let (got, err) = read_all(bytes, 4).await;
        assert_eq!(got, received(&[record(1)]));
        let err = err.expect("an error");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("ended inside an event"), "{err}");

        let mut bytes = frame(&record(1));
        bytes.extend_from_slice(&[l7_wire::FRAME_HTTP, 0xff, 0xff, 0xff, 0x7f, 0, 0]);
        let (got, err) = read_all(bytes, 64).await;
        assert_eq!(got, received(&[record(1)]));
        let err = err.expect("an error");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }
}
