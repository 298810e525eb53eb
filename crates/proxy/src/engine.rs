//! One client connection, from the accepted socket to the original destination.
//!
//! The first bytes decide the protocol: the HTTP/2 preface (h2c with prior knowledge, as gRPC
//! speaks it), an HTTP/1 request line (a method token and a space), or neither (the connection
//! is reset and a drop recorded). HTTP/1 is served by forwarding bytes ([`crate::h1`]); h2c
//! here with hyper. Each request is judged against the redirect's rules as they are *now* (so a
//! policy change applies to the next request), recorded, then forwarded on the one upstream
//! connection this client connection owns (opened lazily, reopened when the server closed it),
//! or refused with Cilium's `403` and body. Bodies stream both ways.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use ciliate_model::identity::NumericIdentity;
use ciliate_model::l7::{HttpRecord, L7Parser, L7RecordType, L7Verdict, ProxyEvent, ProxyStats};
use ciliate_model::l7_wire::{encode_http_parts, HttpParts};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Mutex};
use tracing::{debug, warn};

use crate::events::EventSender;
use crate::identity::Identities;
use crate::policy::{Policy, RedirectKey};
use crate::rules::{Decision, RequestView};

/// Cilium's body of a denied request (its Envoy filter's default, with the CRLF it appends).
pub const ACCESS_DENIED_BODY: &str = "Access denied\r\n";

/// What the upstream mark function is told about a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnMeta {
    /// The client's address.
    pub client: SocketAddrV4,
    /// The original destination.
    pub original_dst: SocketAddrV4,
    /// Egress redirect (the endpoint is the client).
    pub egress: bool,
    /// The redirect's endpoint.
    pub endpoint: u16,
    /// The client's identity.
    pub source_identity: NumericIdentity,
    /// The server's identity.
    pub destination_identity: NumericIdentity,
}

/// Computes `SO_MARK` for an upstream connection (the datapath's mark layout), or none.
pub type MarkFn = Arc<dyn Fn(&ConnMeta) -> Option<u32> + Send + Sync>;

/// How upstream connections are made.
#[derive(Clone)]
pub struct EngineConfig {
    /// Bind upstream sockets to the client's address with `IP_TRANSPARENT` (production); off
    /// in tests that run without the datapath's redirect.
    pub transparent: bool,
    /// The upstream socket's mark.
    pub mark: Option<MarkFn>,
    /// Giving up on the original destination.
    pub connect_timeout: Duration,
    /// Giving up on a client that sends nothing after connecting.
    pub first_bytes_timeout: Duration,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("transparent", &self.transparent)
            .field("mark", &self.mark.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            transparent: false,
            mark: None,
            connect_timeout: Duration::from_secs(5),
            first_bytes_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters, reported as [`ProxyStats`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Accepted connections.
    pub connections: AtomicU64,
    /// Open connections.
    pub active: AtomicU64,
    /// Requests.
    pub requests: AtomicU64,
    /// 403s.
    pub denied: AtomicU64,
    /// 400s and 502s.
    pub errors: AtomicU64,
    /// Resets.
    pub resets: AtomicU64,
    /// Records nobody read.
    pub records_lost: AtomicU64,
    /// DNS answers released by the bounded wait instead of the agent.
    pub dns_allow_timeouts: AtomicU64,
}

impl Counters {
    /// A snapshot.
    pub fn snapshot(&self) -> ProxyStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            pid: std::process::id(),
            connections: l(&self.connections),
            active_connections: l(&self.active),
            requests: l(&self.requests),
            denied: l(&self.denied),
            errors: l(&self.errors),
            resets: l(&self.resets),
            records_lost: l(&self.records_lost),
            dns_allow_timeouts: l(&self.dns_allow_timeouts),
        }
    }
}

/// Everything connections share.
#[derive(Debug)]
pub struct Engine {
    /// The redirects in force.
    pub policy: Arc<Policy>,
    /// Peer identities.
    pub identities: Arc<dyn Identities>,
    /// Records to the control socket.
    pub events: EventSender,
    /// Upstream settings.
    pub config: EngineConfig,
    /// Counters.
    pub counters: Counters,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The protocol the first bytes announce.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    H1,
    H2,
    NotHttp,
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn sniff(buf: &[u8]) -> Sniff {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Sniff::H2
        } else {
            Sniff::NeedMore
        };
    }
    // HTTP/1 servers ignore empty lines before a request line; hyper decides about those.
    if buf.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        return Sniff::H1;
    }
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return if i > 0 { Sniff::H1 } else { Sniff::NotHttp };
        }
        if !is_tchar(b) || i >= 32 {
            return Sniff::NotHttp;
        }
    }
    Sniff::NeedMore
}

/// The accepted stream with the bytes read for detection put back in front.
struct Rewind {
    pre: Bytes,
    inner: TcpStream,
    /// hyper has read from the connection (it closes, on graceful shutdown, a connection it
    /// has read nothing from, even though our sniffed bytes are waiting for it here).
    hyper_read: Arc<AtomicBool>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            self.hyper_read.store(true, Ordering::Relaxed);
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Closes with a RST (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        debug!(error = %e, "SO_LINGER 0");
    }
    drop(stream);
}

/// One h2c client connection's state, shared by its requests.
struct Conn {
    engine: Arc<Engine>,
    meta: ConnMeta,
    key: RedirectKey,
    upstream: Mutex<Option<hyper::client::conn::http2::SendRequest<Incoming>>>,
}

impl Engine {
    pub(crate) fn emit(&self, ev: ProxyEvent) {
        if self.events.try_send(ev).is_err() {
            self.counters.records_lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Serves one accepted connection whose original destination is `original_dst` (the
    /// accepted socket's local address under the datapath's redirect). `egress` is the
    /// listener's direction. Returns when the connection is done; `shutdown` turning true
    /// asks it to finish its requests in flight and close.
    pub async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddrV4,
        original_dst: SocketAddrV4,
        egress: bool,
        shutdown: watch::Receiver<bool>,
    ) {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        self.clone()
            .serve_inner(stream, client, original_dst, egress, shutdown)
            .await;
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve_inner(
        self: Arc<Self>,
        mut stream: TcpStream,
        client: SocketAddrV4,
        original_dst: SocketAddrV4,
        egress: bool,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let key = RedirectKey {
            endpoint_ip: if egress {
                *client.ip()
            } else {
                *original_dst.ip()
            },
            egress,
            port: original_dst.port(),
        };
        let source_identity = self.identities.identity_of(*client.ip());
        let destination_identity = self.identities.identity_of(*original_dst.ip());
        let found = self
            .policy
            .current()
            .get(&key)
            .map(|r| (r.redirect.endpoint, r.redirect.parser));
        let endpoint = found.map(|f| f.0);
        let meta = ConnMeta {
            client,
            original_dst,
            egress,
            endpoint: endpoint.unwrap_or(0),
            source_identity,
            destination_identity,
        };
        if endpoint.is_none() {
            // Fail closed: the datapath sent us a connection the agent has no rules for.
            self.drop_record(&meta, "no redirect for this endpoint, direction and port");
            self.counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(stream);
            return;
        }
        if found.is_some_and(|f| f.1 == L7Parser::Kafka) {
            crate::kafka::serve(self, stream, meta, key, shutdown).await;
            return;
        }

        let mut buf = BytesMut::with_capacity(64);
        let proto = loop {
            let read =
                tokio::time::timeout(self.config.first_bytes_timeout, stream.read_buf(&mut buf));
            // Not cut short by a shutdown: the client connected to be served, and its request
            // is on its way (bounded by the timeout and the drain deadline).
            let n = read.await;
            match n {
                Ok(Ok(0)) | Err(_) => return,
                Ok(Err(e)) => {
                    debug!(%client, error = %e, "read");
                    return;
                }
                Ok(Ok(_)) => {}
            }
            match sniff(&buf) {
                Sniff::NeedMore => continue,
                p => break p,
            }
        };
        if proto == Sniff::NotHttp {
            self.drop_record(&meta, "not HTTP");
            self.counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(stream);
            return;
        }
        if proto == Sniff::H1 {
            crate::h1::Conn::new(self, meta, key, stream, buf, shutdown)
                .run()
                .await;
            return;
        }
        let hyper_read = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(Rewind {
            pre: buf.freeze(),
            inner: stream,
            hyper_read: hyper_read.clone(),
        });
        let conn = Arc::new(Conn {
            engine: self.clone(),
            meta,
            key,
            upstream: Mutex::new(None),
        });
        let svc = service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc);
        tokio::pin!(c);
        let result = tokio::select! {
            r = c.as_mut() => r,
            _ = shutdown.changed() => match until_read(&hyper_read, c.as_mut()).await {
                Some(r) => r,
                None => {
                    c.as_mut().graceful_shutdown();
                    c.await
                }
            }
        };
        debug!(%client, result = ?result, "connection done");
    }

    fn drop_record(&self, meta: &ConnMeta, reason: &str) {
        let mut rec = base_record(meta, L7RecordType::Request, L7Verdict::Dropped);
        rec.reason = Some(reason.into());
        self.emit(ProxyEvent::Http(Box::new(rec)));
    }
}

/// Drives `conn` until hyper has read the bytes waiting for it (then a graceful shutdown
/// finishes the request instead of dropping it); `Some` if the connection ended first.
async fn until_read<F: std::future::Future + Unpin>(
    read: &AtomicBool,
    mut conn: F,
) -> Option<F::Output> {
    while !read.load(Ordering::Relaxed) {
        tokio::select! {
            r = &mut conn => return Some(r),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    None
}

fn base_record(meta: &ConnMeta, record_type: L7RecordType, verdict: L7Verdict) -> HttpRecord {
    HttpRecord {
        time_ns: now_ns(),
        record_type,
        endpoint: meta.endpoint,
        egress: meta.egress,
        source: meta.client,
        destination: meta.original_dst,
        source_identity: meta.source_identity,
        destination_identity: meta.destination_identity,
        verdict,
        rule: 0,
        method: String::new(),
        url: String::new(),
        protocol: String::new(),
        code: 0,
        headers: Vec::new(),
        latency_ns: 0,
        reason: None,
    }
}

fn protocol_of(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// The URL as Hubble shows it, `http://{authority}{path}`, and where the path starts in it:
/// the only string a request's records need that outlives the request (which goes upstream
/// before its response is recorded).
fn request_url(req: &Request<Incoming>) -> (String, usize) {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let authority = authority.unwrap_or_default();
    let mut url = String::with_capacity(URL_SCHEME.len() + authority.len() + path.len());
    url.push_str(URL_SCHEME);
    url.push_str(authority);
    let path_at = url.len();
    url.push_str(path);
    (url, path_at)
}

const URL_SCHEME: &str = "http://";

/// What a request's two records share.
struct Exchange<'a> {
    method: &'a str,
    url: &'a str,
    protocol: &'static str,
    verdict: L7Verdict,
    rule: u32,
    reason: Option<String>,
}

impl Conn {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let engine = &self.engine;
        engine.counters.requests.fetch_add(1, Ordering::Relaxed);
        let table = engine.policy.current();
        let remote = if self.meta.egress {
            self.meta.destination_identity
        } else {
            self.meta.source_identity
        };
        // A standard method is a constant: no copy.
        let method = req.method().clone();
        let (url, path_at) = request_url(&req);
        let view = RequestView {
            method: method.as_str(),
            path_and_query: &url[path_at..],
            authority: &url[URL_SCHEME.len()..path_at],
        };
        let decision = match table.get(&self.key) {
            Some(r) => r.decide(remote, &view, req.headers_mut()),
            None => Decision::Denied,
        };
        let mut ex = Exchange {
            method: method.as_str(),
            url: &url,
            protocol: protocol_of(req.version()),
            verdict: L7Verdict::Forwarded,
            rule: 0,
            reason: None,
        };
        match decision {
            Decision::Allowed { rule, notes } => {
                ex.rule = rule;
                if !notes.is_empty() {
                    ex.reason = Some(notes.join("; "));
                }
            }
            Decision::Denied => {
                engine.counters.denied.fetch_add(1, Ordering::Relaxed);
                ex.verdict = L7Verdict::Dropped;
                ex.reason = Some(if table.get(&self.key).is_some() {
                    "no rule matched".into()
                } else {
                    "redirect removed".into()
                });
                self.record(&ex, L7RecordType::Request, 0, 0, req.headers());
                let resp = Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header(http::header::CONTENT_TYPE, "text/plain")
                    .body(full(ACCESS_DENIED_BODY))
                    .unwrap_or_else(|_| Response::new(full(ACCESS_DENIED_BODY)));
                self.respond_record(&ex, &resp, start);
                return resp;
            }
        }
        self.record(&ex, L7RecordType::Request, 0, 0, req.headers());

        let sent = self.send_upstream(req).await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                warn!(client = %self.meta.client, dst = %self.meta.original_dst, error = %e, "upstream");
                engine.counters.errors.fetch_add(1, Ordering::Relaxed);
                ex.verdict = L7Verdict::Error;
                ex.reason = Some(format!("upstream: {e}"));
                let resp = Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(full(format!("upstream: {e}\r\n")))
                    .unwrap_or_else(|_| Response::new(full("upstream error\r\n")));
                self.respond_record(&ex, &resp, start);
                return resp;
            }
        };
        let resp = resp.map(|b| b.boxed());
        self.respond_record(&ex, &resp, start);
        resp
    }

    fn respond_record(&self, ex: &Exchange<'_>, resp: &Response<Body>, start: Instant) {
        let latency_ns = start.elapsed().as_nanos() as u64;
        self.record(
            ex,
            L7RecordType::Response,
            resp.status().as_u16(),
            latency_ns,
            resp.headers(),
        );
    }

    /// Sends one of the exchange's records (the request's with the request's headers, the
    /// response's with the response's), encoded here from the borrowed parts.
    fn record(
        &self,
        ex: &Exchange<'_>,
        record_type: L7RecordType,
        code: u16,
        latency_ns: u64,
        headers: &HeaderMap,
    ) {
        let m = &self.meta;
        let parts = HttpParts {
            time_ns: now_ns(),
            record_type,
            endpoint: m.endpoint,
            egress: m.egress,
            source: m.client,
            destination: m.original_dst,
            source_identity: m.source_identity,
            destination_identity: m.destination_identity,
            verdict: ex.verdict,
            rule: ex.rule,
            method: ex.method,
            url: &[ex.url],
            protocol: ex.protocol,
            code,
            latency_ns,
            reason: ex.reason.as_deref(),
        };
        // Room for the fixed fields, the strings and typical headers: one allocation.
        let mut frame = Vec::with_capacity(128 + ex.url.len() + 48 * headers.len());
        encode_http_parts(
            &parts,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            &mut frame,
        );
        if self.engine.events.try_send_frame(frame).is_err() {
            self.engine
                .counters
                .records_lost
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn send_upstream(&self, req: Request<Incoming>) -> Result<Response<Incoming>, String> {
        let mut guard = self.upstream.lock().await;
        let usable = match &mut *guard {
            None => false,
            Some(s) => s.ready().await.is_ok(),
        };
        if !usable {
            *guard = Some(self.connect().await?);
        }
        let Some(s) = &*guard else {
            return Err("no upstream".into());
        };
        let mut s = s.clone();
        drop(guard);
        s.send_request(req).await.map_err(|e| e.to_string())
    }

    async fn connect(&self) -> Result<hyper::client::conn::http2::SendRequest<Incoming>, String> {
        let cfg = &self.engine.config;
        let stream = connect_upstream(&self.meta, cfg)
            .await
            .map_err(|e| format!("connect {}: {e}", self.meta.original_dst))?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream h2 connection");
            }
        });
        Ok(send)
    }
}

/// Opens the upstream socket: from the client's own address (`IP_TRANSPARENT`) when
/// transparent, marked as the datapath wants, to the original destination.
pub async fn connect_upstream(meta: &ConnMeta, cfg: &EngineConfig) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    if cfg.transparent {
        sock.set_ip_transparent_v4(true)?;
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(*meta.client.ip(), 0)).into())?;
    }
    if let Some(mark) = cfg.mark.as_ref().and_then(|f| f(meta)) {
        sock.set_mark(mark)?;
    }
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    let stream = tokio::time::timeout(
        cfg.connect_timeout,
        sock.connect(SocketAddr::V4(meta.original_dst)),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::H1);
        assert_eq!(sniff(b"GE"), Sniff::NeedMore);
        assert_eq!(sniff(b"M-SEARCH * HTTP/1.1"), Sniff::H1);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Sniff::H2);
        assert_eq!(sniff(b"PRI * HTTP/2"), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI /x HTTP/1.1"), Sniff::H1);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniff::NotHttp);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.6\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b" GET"), Sniff::NotHttp);
        assert_eq!(sniff(&[b'A'; 40]), Sniff::NotHttp);
        assert_eq!(sniff(b"\r\nGET / HTTP/1.1"), Sniff::H1);
    }
}
