//! Kafka: one client connection of a redirect whose parser is Kafka, from the accepted socket
//! to the broker.
//!
//! - [`frame`]: size-prefixed frames, bounded;
//! - [`request`]: a request's header and the topics it names;
//! - [`splice`]: the rest of a large allowed request, socket to socket in the kernel;
//! - [`deny`]: the error response the proxy answers a refused request with;
//! - [`response`]: the error code of a broker's response, for the record.
//!
//! Each request is judged against the redirect's rules as they are *now* (Cilium's semantics,
//! [`ciliate_model::kafka`]); an allowed one is forwarded unchanged on the one upstream
//! connection this client connection owns, a refused one is answered by the proxy. Kafka
//! clients pipeline requests and expect the responses in request order, so every request
//! that expects a response queues a slot (the broker's next response, or the proxy's own
//! refusal) and one task writes the slots to the client in order. A request that cannot be
//! read, or refused where no refusal can be built, closes the connection (recorded with why).
//!
//! A large Produce request is decided on its first bytes (its one topic's name comes before
//! its records): allowed, those bytes are written to the broker and the rest of the frame is
//! spliced after them without passing through the proxy's memory; refused (or naming more
//! topics), it is read whole as any other. Once a connection has sent a large request, the
//! next one is looked at before it is read ([`frame::peek_large`]): when it is large again,
//! it is decided on a copy of its head and, allowed, spliced whole, nothing of it read.

pub mod deny;
pub mod frame;
pub mod request;
pub mod response;
pub mod splice;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use ciliate_model::kafka::{api_key_name, request_allowed, KafkaRequestView};
use ciliate_model::l7::{KafkaRecord, L7RecordType, L7Redirect, L7Verdict, ProxyEvent};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::engine::{connect_upstream, ConnMeta, Engine};
use crate::policy::RedirectKey;
use frame::{Frame, FrameReader};
use request::KafkaRequest;

/// Responses a connection may owe at once; more requests wait for the broker to catch up.
const MAX_IN_FLIGHT: usize = 1024;

/// Requests from this size on are decided on their head and spliced when allowed (see the
/// module's doc); smaller ones are read whole, one copy costing less than the pipe's calls.
const STREAM_MIN: usize = 64 << 10;

/// A request's bytes as read: whole, its head with the rest still in the client's socket, or
/// none of it read (its `size` bytes and the 4 of the size are all in the socket).
enum Body {
    Whole(Bytes),
    Head { head: Bytes, rest: usize },
    Peeked { size: usize },
}

/// The next request as it comes: read (whole or its head), or only looked at.
enum Incoming {
    Read(Frame),
    Peeked { head: Bytes, size: usize },
}

/// The next request from the client: looked at first when `peek` (the last one was large)
/// and nothing of it is read yet, else read.
async fn next_request(
    reader: &mut FrameReader,
    client: &mut OwnedReadHalf,
    max_frame: usize,
    peek: bool,
) -> Result<Option<Incoming>, frame::FrameError> {
    if peek && reader.is_empty() {
        if let Some((head, size)) =
            frame::peek_large(client.as_ref(), STREAM_MIN, max_frame).await?
        {
            return Ok(Some(Incoming::Peeked { head, size }));
        }
    }
    Ok(reader.next(client, STREAM_MIN).await?.map(Incoming::Read))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What the rules say about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaDecision {
    /// Forward it; the agent's id of the rule that allowed it.
    Allowed(u32),
    /// Refuse it.
    Denied,
}

/// Decides `req` from `remote` under `redirect`: the Kafka rules of every entry for that peer
/// are taken together (Cilium merges them), and an entry without rules allows everything.
pub fn decide(redirect: &L7Redirect, remote: u32, req: &KafkaRequest) -> KafkaDecision {
    let view = KafkaRequestView {
        api_key: req.api_key,
        api_version: req.api_version,
        client_id: &req.client_id,
        topics: req.topics.iter().map(|(t, _)| t.as_str()).collect(),
        topics_known: req.topics_known,
    };
    let entries: Vec<_> = redirect
        .rules
        .iter()
        .filter(|e| e.peers.as_ref().is_none_or(|p| p.contains(&remote)))
        .collect();
    if let Some(e) = entries.iter().find(|e| e.kafka.is_empty()) {
        return KafkaDecision::Allowed(e.rule);
    }
    if let Some(e) = entries.iter().find(|e| request_allowed(&e.kafka, &view)) {
        return KafkaDecision::Allowed(e.rule);
    }
    let all: Vec<_> = entries.iter().flat_map(|e| e.kafka.clone()).collect();
    match entries.first() {
        Some(e) if !all.is_empty() && request_allowed(&all, &view) => {
            KafkaDecision::Allowed(e.rule)
        }
        _ => KafkaDecision::Denied,
    }
}

/// One response the client is owed, in request order (or the upstream connection, once open).
enum Slot {
    /// The broker connection's read side, for the slots after it.
    Upstream(OwnedReadHalf),
    /// The broker's next response to a request of this API key.
    Broker {
        rec: KafkaRecord,
        start: Instant,
        key: i16,
    },
    /// The proxy's refusal.
    Refusal {
        frame: Bytes,
        rec: KafkaRecord,
        start: Instant,
    },
}

struct Conn {
    engine: Arc<Engine>,
    meta: ConnMeta,
    key: RedirectKey,
    max_frame: usize,
}

impl Conn {
    fn record(&self, record_type: L7RecordType, verdict: L7Verdict) -> KafkaRecord {
        KafkaRecord {
            time_ns: now_ns(),
            record_type,
            endpoint: self.meta.endpoint,
            egress: self.meta.egress,
            source: self.meta.client,
            destination: self.meta.original_dst,
            source_identity: self.meta.source_identity,
            destination_identity: self.meta.destination_identity,
            verdict,
            rule: 0,
            api_key: String::new(),
            api_version: 0,
            correlation_id: 0,
            topic: String::new(),
            error_code: 0,
            latency_ns: 0,
            reason: None,
        }
    }

    fn emit(&self, rec: KafkaRecord) {
        self.engine.emit(ProxyEvent::Kafka(Box::new(rec)));
    }

    fn request_record(&self, req: &KafkaRequest, verdict: L7Verdict) -> KafkaRecord {
        let mut rec = self.record(L7RecordType::Request, verdict);
        rec.api_key = api_key_name(req.api_key);
        rec.api_version = req.api_version;
        rec.correlation_id = req.correlation_id;
        rec.topic = req.topics.first().map(|t| t.0.clone()).unwrap_or_default();
        rec
    }

    fn error(&self, reason: String) {
        self.engine.counters.errors.fetch_add(1, Ordering::Relaxed);
        debug!(client = %self.meta.client, %reason, "kafka connection closed");
        let mut rec = self.record(L7RecordType::Request, L7Verdict::Error);
        rec.reason = Some(reason);
        self.emit(rec);
    }
}

/// Serves one accepted connection of a Kafka redirect (the engine dispatches here).
pub async fn serve(
    engine: Arc<Engine>,
    stream: TcpStream,
    meta: ConnMeta,
    key: RedirectKey,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn = Arc::new(Conn {
        engine,
        meta,
        key,
        max_frame: frame::DEFAULT_MAX_FRAME,
    });
    let (mut client_rd, client_wr) = stream.into_split();
    let mut upstream: Option<OwnedWriteHalf> = None;
    let mut reader = FrameReader::new(conn.max_frame);
    let mut pipe: Option<splice::Pipe> = None;
    let (slots_tx, slots_rx) = mpsc::channel::<Slot>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_responses(conn.clone(), slots_rx, client_wr));
    // The last request was large: a producer's next one most likely is too.
    let mut peek = false;
    loop {
        let frame = tokio::select! {
            f = next_request(&mut reader, &mut client_rd, conn.max_frame, peek) => f,
            _ = shutdown.changed() => break,
            // The writer gave up (the broker closed, the client stopped reading).
            _ = slots_tx.closed() => break,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                conn.error(format!("request frame: {e}"));
                break;
            }
        };
        let start = Instant::now();
        conn.engine
            .counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        let (parsed, body) = match frame {
            Incoming::Read(Frame::Whole(p)) => (request::parse(p.clone()), Body::Whole(p)),
            Incoming::Peeked { head, size } => match request::parse_head(head) {
                Some(req) => (Ok(req), Body::Peeked { size }),
                None => {
                    match read_peeked(&conn, &mut reader, &mut client_rd, &mut shutdown).await {
                        Some(p) => (request::parse(p.clone()), Body::Whole(p)),
                        None => break,
                    }
                }
            },
            Incoming::Read(Frame::Head { head, rest }) => match request::parse_head(head.clone()) {
                Some(req) => (Ok(req), Body::Head { head, rest }),
                None => match read_rest(
                    &conn,
                    &mut reader,
                    &mut client_rd,
                    head,
                    rest,
                    &mut shutdown,
                )
                .await
                {
                    Some(p) => (request::parse(p.clone()), Body::Whole(p)),
                    None => break,
                },
            },
        };
        peek = match &body {
            Body::Whole(p) => p.len() >= STREAM_MIN,
            Body::Head { .. } | Body::Peeked { .. } => true,
        };
        let mut req = match parsed {
            Ok(r) => r,
            Err(e) => {
                conn.error(e.to_string());
                break;
            }
        };
        let table = conn.engine.policy.current();
        let remote = if conn.meta.egress {
            conn.meta.destination_identity
        } else {
            conn.meta.source_identity
        };
        let decision = match table.get(&conn.key) {
            Some(r) => decide(&r.redirect, remote, &req),
            None => KafkaDecision::Denied,
        };
        match decision {
            KafkaDecision::Allowed(rule) => {
                if upstream.is_none() {
                    match connect_upstream(&conn.meta, &conn.engine.config).await {
                        Ok(s) => {
                            let (rd, wr) = s.into_split();
                            upstream = Some(wr);
                            if slots_tx.send(Slot::Upstream(rd)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let mut rec = conn.request_record(&req, L7Verdict::Error);
                            rec.rule = rule;
                            rec.reason = Some(format!("connect {}: {e}", conn.meta.original_dst));
                            conn.engine.counters.errors.fetch_add(1, Ordering::Relaxed);
                            conn.emit(rec);
                            break;
                        }
                    }
                }
                let mut rec = conn.request_record(&req, L7Verdict::Forwarded);
                rec.rule = rule;
                conn.emit(rec.clone());
                let Some(up) = upstream.as_mut() else { break };
                let forwarded = tokio::select! {
                    r = forward(up, &client_rd, &body, &mut pipe) => r,
                    _ = shutdown.changed() => break,
                };
                if let Err(e) = forwarded {
                    conn.error(format!("forwarding to {}: {e}", conn.meta.original_dst));
                    break;
                }
                if !req.no_response
                    && slots_tx
                        .send(Slot::Broker {
                            rec,
                            start,
                            key: req.api_key,
                        })
                        .await
                        .is_err()
                {
                    break;
                }
            }
            KafkaDecision::Denied => {
                conn.engine.counters.denied.fetch_add(1, Ordering::Relaxed);
                // The refusal names every partition: read the request whole.
                let whole = match body {
                    Body::Whole(_) => None,
                    Body::Head { head, rest } => Some(
                        read_rest(
                            &conn,
                            &mut reader,
                            &mut client_rd,
                            head,
                            rest,
                            &mut shutdown,
                        )
                        .await,
                    ),
                    Body::Peeked { .. } => {
                        Some(read_peeked(&conn, &mut reader, &mut client_rd, &mut shutdown).await)
                    }
                };
                if let Some(whole) = whole {
                    let Some(p) = whole else {
                        break;
                    };
                    match request::parse(p.clone()) {
                        Ok(r) => req = r,
                        Err(e) => {
                            conn.error(e.to_string());
                            break;
                        }
                    }
                }
                let mut rec = conn.request_record(&req, L7Verdict::Dropped);
                rec.reason = Some(if table.get(&conn.key).is_some() {
                    "no rule matched".into()
                } else {
                    "redirect removed".into()
                });
                if req.no_response {
                    // acks=0: the client reads no answer; the request is dropped.
                    conn.emit(rec);
                    continue;
                }
                match deny::refusal(&req) {
                    Ok(r) => {
                        conn.emit(rec.clone());
                        rec.error_code = r.error_code;
                        let slot = Slot::Refusal {
                            frame: r.frame,
                            rec,
                            start,
                        };
                        if slots_tx.send(slot).await.is_err() {
                            break;
                        }
                    }
                    Err(why) => {
                        rec.reason = Some(format!("no rule matched; {why}: connection closed"));
                        conn.emit(rec);
                        break;
                    }
                }
            }
        }
    }
    // Let the writer deliver what is owed, then close.
    drop(slots_tx);
    let _ = writer.await;
}

/// The rest of a request handed out as a head, read whole; `None` (the connection to close,
/// recorded) when it cannot be or the proxy stops.
async fn read_rest(
    conn: &Conn,
    reader: &mut FrameReader,
    client: &mut OwnedReadHalf,
    head: Bytes,
    rest: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Bytes> {
    let read = tokio::select! {
        r = reader.read_rest(client, head, rest) => r,
        _ = shutdown.changed() => return None,
    };
    read.map_err(|e| conn.error(format!("request frame: {e}")))
        .ok()
}

/// A request only looked at, read whole (nothing of it was taken from the socket, so the
/// reader reads it as any other); `None` (the connection to close, recorded) when it cannot
/// be or the proxy stops.
async fn read_peeked(
    conn: &Conn,
    reader: &mut FrameReader,
    client: &mut OwnedReadHalf,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Bytes> {
    let read = tokio::select! {
        r = reader.next_whole(client) => r,
        _ = shutdown.changed() => return None,
    };
    match read {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            conn.error("request frame: the connection closed before a peeked frame".into());
            None
        }
        Err(e) => {
            conn.error(format!("request frame: {e}"));
            None
        }
    }
}

/// Writes an allowed request to the broker: the size and the bytes read in one vectored write
/// (two writes were two segments, the first of 4 bytes, and two system calls), then the bytes
/// still in the client's socket, spliced (copied through memory if no pipe can be had); a
/// request only looked at is spliced whole, its size with it.
async fn forward(
    up: &mut OwnedWriteHalf,
    client: &OwnedReadHalf,
    body: &Body,
    pipe: &mut Option<splice::Pipe>,
) -> std::io::Result<()> {
    let (bytes, rest) = match body {
        Body::Whole(p) => (Some(p), 0),
        Body::Head { head, rest } => (Some(head), *rest),
        Body::Peeked { size } => (None, 4 + size),
    };
    if let Some(bytes) = bytes {
        let size = ((bytes.len() + rest) as u32).to_be_bytes();
        let mut out = (&size[..]).chain(&bytes[..]);
        up.write_all_buf(&mut out).await?;
    }
    if rest == 0 {
        return Ok(());
    }
    if pipe.is_none() {
        *pipe = splice::Pipe::new().ok();
    }
    match pipe {
        Some(p) => splice::forward(client.as_ref(), up.as_ref(), p, rest).await,
        None => copy_exactly(client, up, rest).await,
    }
}

/// `n` bytes from `from` to `to` through a buffer, for when no pipe could be made.
async fn copy_exactly(
    from: &OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    n: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; n.min(frame::GROW_STEP)];
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len());
        from.readable().await?;
        let got = match from.try_read(&mut buf[..want]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..got]).await?;
        left -= got;
    }
    Ok(())
}

/// Writes the responses to the client in request order: the broker's (read one per slot) and
/// the proxy's refusals.
async fn write_responses(conn: Arc<Conn>, slots: mpsc::Receiver<Slot>, mut client: OwnedWriteHalf) {
    deliver(&conn, slots, &mut client).await;
    // Done or failed: the client sees the connection end rather than wait for an answer.
    let _ = client.shutdown().await;
}

async fn deliver(conn: &Conn, mut slots: mpsc::Receiver<Slot>, client: &mut OwnedWriteHalf) {
    let mut upstream: Option<OwnedReadHalf> = None;
    // Responses are read whole (a size and a small body in one read, as often as not).
    let mut responses = FrameReader::new(conn.max_frame);
    while let Some(slot) = slots.recv().await {
        let (bytes, mut rec, start) = match slot {
            Slot::Upstream(rd) => {
                upstream = Some(rd);
                continue;
            }
            Slot::Refusal { frame, rec, start } => (frame.chain(Bytes::new()), rec, start),
            Slot::Broker {
                mut rec,
                start,
                key,
            } => {
                let Some(up) = upstream.as_mut() else {
                    conn.error("no upstream connection for a forwarded request".into());
                    return;
                };
                match responses.next_whole(up).await {
                    Ok(Some(payload)) => {
                        rec.error_code =
                            response::error_code(key, rec.api_version, payload.clone());
                        // Sent as it came, size first (one vectored write, no copy).
                        let size = Bytes::copy_from_slice(&(payload.len() as u32).to_be_bytes());
                        (size.chain(payload), rec, start)
                    }
                    Ok(None) => {
                        conn.error(format!(
                            "{} closed the connection with a response owed",
                            conn.meta.original_dst
                        ));
                        return;
                    }
                    Err(e) => {
                        conn.error(format!("response frame: {e}"));
                        return;
                    }
                }
            }
        };
        let mut bytes = bytes;
        if let Err(e) = client.write_all_buf(&mut bytes).await {
            debug!(client = %conn.meta.client, error = %e, "writing a response");
            return;
        }
        rec.time_ns = now_ns();
        rec.record_type = L7RecordType::Response;
        rec.latency_ns = start.elapsed().as_nanos() as u64;
        conn.emit(rec);
    }
}
