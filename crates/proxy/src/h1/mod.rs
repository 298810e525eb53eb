//! HTTP/1 by forwarding bytes: each request head is parsed (httparse) and judged, then the
//! head and the body go to the upstream connection as the client sent them, the body's end
//! found by its framing (`Content-Length` or chunked, tracked, never buffered whole); the
//! response comes back the same way. One task per client connection owns both sockets: no
//! hyper connection, no second task, no channel between them.
//!
//! Requests are served one after the other (pipelined requests wait in the client's buffer).
//! While a request's body streams up, its response is read at the same time (a server may
//! answer `100 Continue` or refuse early). An allowed `Upgrade` answered `101` (or a `CONNECT`
//! answered 2xx) turns the connection into a byte tunnel.

mod framing;

use std::borrow::Cow;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use ciliate_model::l7::{L7RecordType, L7Verdict};
use ciliate_model::l7_wire::{encode_http_parts, HttpParts};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, warn};

pub use framing::{Body, Chunked, FramingError};

use crate::engine::{connect_upstream, now_ns, ConnMeta, Engine, ACCESS_DENIED_BODY};
use crate::policy::RedirectKey;
use crate::rules::{CompiledRedirect, Decision, RequestView};

/// The largest request or response head.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers in a head.
const MAX_HEADERS: usize = 100;
/// What one read asks for.
const READ_SIZE: usize = 16 * 1024;
/// The most of a denied request's body read (and thrown away) to keep the connection usable.
const DENIED_BODY_LIMIT: u64 = 1 << 20;

/// A request the proxy cannot take, answered 400 (or 431) and recorded.
#[derive(Debug)]
struct BadRequest {
    code: u16,
    reason: String,
}

fn bad(reason: impl Into<String>) -> BadRequest {
    BadRequest {
        code: 400,
        reason: reason.into(),
    }
}

/// What the exchange's two records share.
struct Exchange {
    method: Cow<'static, str>,
    /// `http://{authority}{path}`.
    url: String,
    protocol: &'static str,
    verdict: L7Verdict,
    rule: u32,
    reason: Option<String>,
}

/// What a request head says, in owned form (the head's bytes stay in the client buffer).
struct Request {
    head_len: usize,
    /// The head to send instead of the client's (header actions edited it).
    rewritten: Option<Vec<u8>>,
    body: Body,
    head: bool,
    connect: bool,
    upgrade: bool,
    /// `Expect: 100-continue`: the client waits before it sends the body.
    expect_continue: bool,
    keep_alive: bool,
    allowed: bool,
    ex: Exchange,
    start: Instant,
}

/// What a response head says.
struct Response {
    head_len: usize,
    code: u16,
    body: Body,
    keep_alive: bool,
}

/// One HTTP/1 client connection.
pub(crate) struct Conn {
    engine: Arc<Engine>,
    meta: ConnMeta,
    key: RedirectKey,
    client: TcpStream,
    cbuf: BytesMut,
    upstream: Option<TcpStream>,
    ubuf: BytesMut,
    /// Requests sent on the current upstream connection.
    upstream_uses: u64,
    /// Lower-case header names of the head being recorded (kept to reuse its memory).
    names: String,
    /// This connection's redirect, as last looked up, and the policy's generation then: it
    /// is looked up again only after a command changed the table.
    redirect: Option<Arc<CompiledRedirect>>,
    policy_generation: Option<u64>,
    shutdown: watch::Receiver<bool>,
    closing: bool,
}

/// How an exchange ended for the connection.
enum Next {
    KeepAlive,
    Close,
}

fn protocol_of(version: Option<u8>) -> &'static str {
    match version {
        Some(0) => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn method_of(m: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match KNOWN.iter().find(|k| **k == m) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(m.to_owned()),
    }
}

/// Whether the comma-separated header values of `name` hold `token` (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, &'static str> {
    let mut found: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for v in h.value.split(|b| *b == b',') {
            let v = v.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 19 {
                return Err("invalid content-length");
            }
            let n: u64 = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("invalid content-length")?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting content-length values");
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// `Transfer-Encoding` ends in `chunked`; `None` without the header.
fn chunked_last(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut last: Option<&[u8]> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        for t in h.value.split(|b| *b == b',') {
            let t = t.trim_ascii();
            if !t.is_empty() {
                last = Some(t);
            }
        }
        last.get_or_insert(b"");
    }
    last.map(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Lower-case names of `headers`, one after the other in `out`.
fn lower_names(headers: &[httparse::Header<'_>], out: &mut String) {
    out.clear();
    for h in headers {
        out.extend(h.name.chars().map(|c| c.to_ascii_lowercase()));
    }
}

/// `headers` with the names from [`lower_names`].
fn named<'a>(
    headers: &'a [httparse::Header<'a>],
    names: &'a str,
) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
    headers.iter().scan(0usize, move |at, h| {
        let n = names.get(*at..*at + h.name.len()).unwrap_or(h.name);
        *at += h.name.len();
        Some((n, h.value))
    })
}

/// Sends one record of an exchange.
#[allow(clippy::too_many_arguments)]
fn record<'h>(
    engine: &Engine,
    meta: &ConnMeta,
    ex: &Exchange,
    record_type: L7RecordType,
    code: u16,
    latency_ns: u64,
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    count: usize,
) {
    let parts = HttpParts {
        time_ns: now_ns(),
        record_type,
        endpoint: meta.endpoint,
        egress: meta.egress,
        source: meta.client,
        destination: meta.original_dst,
        source_identity: meta.source_identity,
        destination_identity: meta.destination_identity,
        verdict: ex.verdict,
        rule: ex.rule,
        method: &ex.method,
        url: &[&ex.url],
        protocol: ex.protocol,
        code,
        latency_ns,
        reason: ex.reason.as_deref(),
    };
    let mut frame = Vec::with_capacity(128 + ex.url.len() + 48 * count);
    encode_http_parts(&parts, headers, &mut frame);
    if engine.events.try_send_frame(frame).is_err() {
        engine.counters.records_lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// The request target split into authority and path, as Hubble's URL shows them.
fn target_parts<'a>(target: &'a str, host: Option<&'a [u8]>) -> (&'a str, &'a str) {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
        {
            return match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
        }
    }
    let host = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or_default();
    (host, target)
}

/// A head again from its request line and (edited) headers.
fn write_head(method: &str, target: &str, version: Option<u8>, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(match version {
        Some(0) => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    for (n, v) in headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads more into `buf`; `Ok(false)` at EOF.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> io::Result<bool> {
    buf.reserve(READ_SIZE);
    Ok(r.read_buf(buf).await? > 0)
}

/// Forwards the message whose head is the first `head_len` bytes of `buf` (or `head`, sent in
/// their place) and whose body follows it, until the body ends; what comes after stays in
/// `buf`. Returns false if the source closed where an `UntilClose` body ends.
async fn forward<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    head_len: usize,
    head: Option<&[u8]>,
    dst: &mut W,
    body: &mut Body,
) -> Result<(), ForwardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let n = body.take(&buf[head_len..]).map_err(ForwardError::Framing)?;
    match head {
        Some(h) => {
            dst.write_all(h).await.map_err(ForwardError::Dst)?;
            dst.write_all(&buf[head_len..head_len + n])
                .await
                .map_err(ForwardError::Dst)?;
        }
        None => dst
            .write_all(&buf[..head_len + n])
            .await
            .map_err(ForwardError::Dst)?,
    }
    buf.advance(head_len + n);
    while !body.done() {
        if !fill(src, buf).await.map_err(ForwardError::Src)? {
            return if *body == Body::UntilClose {
                Ok(())
            } else {
                Err(ForwardError::Src(io::ErrorKind::UnexpectedEof.into()))
            };
        }
        let n = body.take(buf).map_err(ForwardError::Framing)?;
        dst.write_all(&buf[..n]).await.map_err(ForwardError::Dst)?;
        buf.advance(n);
    }
    Ok(())
}

#[derive(Debug)]
enum ForwardError {
    Src(io::Error),
    Dst(io::Error),
    Framing(FramingError),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Src(e) => write!(f, "reading: {e}"),
            ForwardError::Dst(e) => write!(f, "writing: {e}"),
            ForwardError::Framing(e) => write!(f, "body: {e}"),
        }
    }
}

/// Inserts `connection: close` before the end of `head` (which ends in an empty line, CRLF or
/// a bare LF as httparse accepts it).
fn with_close(head: &[u8]) -> Vec<u8> {
    let end = if head.ends_with(b"\r\n") { 2 } else { 1 };
    let mut out = Vec::with_capacity(head.len() + 19);
    out.extend_from_slice(&head[..head.len().saturating_sub(end)]);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

impl Conn {
    pub(crate) fn new(
        engine: Arc<Engine>,
        meta: ConnMeta,
        key: RedirectKey,
        client: TcpStream,
        pre: BytesMut,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            engine,
            meta,
            key,
            client,
            cbuf: pre,
            upstream: None,
            ubuf: BytesMut::new(),
            upstream_uses: 0,
            names: String::new(),
            redirect: None,
            policy_generation: None,
            shutdown,
            closing: false,
        }
    }

    /// Serves requests until the client leaves, an exchange cannot keep the connection, or a
    /// shutdown finds it between requests.
    pub(crate) async fn run(mut self) {
        loop {
            match self.exchange().await {
                Ok(Next::KeepAlive) => {}
                Ok(Next::Close) => break,
                Err(e) => {
                    debug!(client = %self.meta.client, error = %e, "connection ended");
                    break;
                }
            }
        }
        // A FIN after what was written; dropping the sockets closes them.
        let _ = self.client.shutdown().await;
    }

    /// Waits for a whole request head in the client buffer; `None` when the connection ends
    /// there (EOF, or a shutdown between requests).
    async fn read_head(&mut self) -> io::Result<Option<Result<Request, BadRequest>>> {
        loop {
            if !self.cbuf.is_empty() {
                if let Some(r) = self.parse_request() {
                    return Ok(Some(r));
                }
            }
            let idle = self.cbuf.is_empty();
            self.cbuf.reserve(READ_SIZE);
            let n = if idle && !self.closing {
                tokio::select! {
                    r = self.client.read_buf(&mut self.cbuf) => r?,
                    _ = self.shutdown.changed() => {
                        self.closing = true;
                        continue;
                    }
                }
            } else if idle {
                return Ok(None);
            } else {
                self.client.read_buf(&mut self.cbuf).await?
            };
            if n == 0 {
                if !self.cbuf.is_empty() {
                    debug!(client = %self.meta.client, "closed inside a request head");
                }
                return Ok(None);
            }
        }
    }

    /// Parses and judges the head at the start of the client buffer; `None` if incomplete.
    fn parse_request(&mut self) -> Option<Result<Request, BadRequest>> {
        let start = Instant::now();
        // Uninitialised: no 3 KB of empty headers written per head.
        let mut hs = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(&self.cbuf, &mut hs) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.cbuf.len() > MAX_HEAD => {
                return Some(Err(BadRequest {
                    code: 431,
                    reason: format!("cannot parse the request: head over {MAX_HEAD} bytes"),
                }))
            }
            Ok(httparse::Status::Partial) => return None,
            Err(httparse::Error::TooManyHeaders) => {
                return Some(Err(BadRequest {
                    code: 431,
                    reason: format!("cannot parse the request: over {MAX_HEADERS} headers"),
                }))
            }
            Err(e) => return Some(Err(bad(format!("cannot parse the request: {e}")))),
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Some(Err(bad("cannot parse the request: no request line")));
        };
        let headers: &[httparse::Header<'_>] = req.headers;
        let te = chunked_last(headers);
        let cl = match content_length(headers) {
            Ok(cl) => cl,
            Err(e) => return Some(Err(bad(format!("cannot parse the request: {e}")))),
        };
        let body = match (te, cl) {
            (Some(_), Some(_)) => {
                return Some(Err(bad(
                    "cannot parse the request: both transfer-encoding and content-length",
                )))
            }
            (Some(false), None) => {
                return Some(Err(bad(
                    "cannot parse the request: transfer-encoding does not end in chunked",
                )))
            }
            (Some(true), None) => Body::Chunked(Chunked::default()),
            (None, Some(n)) if n > 0 => Body::Length(n),
            (None, _) => Body::Empty,
        };
        let version = req.version;
        let keep_alive = if version == Some(0) {
            has_token(headers, "connection", "keep-alive")
        } else {
            !has_token(headers, "connection", "close")
        };
        let (authority, path) = target_parts(target, header(headers, "host"));
        let engine = &self.engine;
        engine.counters.requests.fetch_add(1, Ordering::Relaxed);
        let generation = engine.policy.generation();
        if self.policy_generation != Some(generation) {
            self.redirect = engine.policy.current().get(&self.key).cloned();
            self.policy_generation = Some(generation);
        }
        let redirect = self.redirect.as_ref();
        let remote = if self.meta.egress {
            self.meta.destination_identity
        } else {
            self.meta.source_identity
        };
        let view = RequestView {
            method,
            path_and_query: path,
            authority,
        };
        let mut url = String::with_capacity(7 + authority.len() + path.len());
        url.push_str("http://");
        url.push_str(authority);
        url.push_str(path);
        let mut ex = Exchange {
            method: method_of(method),
            url,
            protocol: protocol_of(version),
            verdict: L7Verdict::Forwarded,
            rule: 0,
            reason: None,
        };
        // Rules on headers see them as a map (and header actions edit it, then the head is
        // written anew); the common case reads none.
        let mut map = HeaderMap::new();
        if redirect.is_some_and(|r| r.reads_headers()) {
            for h in headers {
                let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) else {
                    return Some(Err(bad(format!(
                        "cannot parse the request: header {:?}",
                        h.name
                    ))));
                };
                map.append(n, v);
            }
        }
        let decision = match redirect {
            Some(r) => r.decide(remote, &view, &mut map),
            None => Decision::Denied,
        };
        let mut rewritten = None;
        let allowed = match decision {
            Decision::Allowed { rule, notes } => {
                ex.rule = rule;
                if !notes.is_empty() {
                    ex.reason = Some(notes.join("; "));
                }
                if redirect.is_some_and(|r| r.edits_headers()) {
                    rewritten = Some(write_head(method, target, version, &map));
                }
                true
            }
            Decision::Denied => {
                engine.counters.denied.fetch_add(1, Ordering::Relaxed);
                ex.verdict = L7Verdict::Dropped;
                ex.reason = Some(if redirect.is_some() {
                    "no rule matched".into()
                } else {
                    "redirect removed".into()
                });
                false
            }
        };
        lower_names(headers, &mut self.names);
        record(
            engine,
            &self.meta,
            &ex,
            L7RecordType::Request,
            0,
            0,
            named(headers, &self.names),
            headers.len(),
        );
        Some(Ok(Request {
            head_len,
            rewritten,
            body,
            head: method == "HEAD",
            connect: method == "CONNECT",
            upgrade: header(headers, "upgrade").is_some(),
            expect_continue: has_token(headers, "expect", "100-continue"),
            keep_alive,
            allowed,
            ex,
            start,
        }))
    }

    /// One request and its response.
    async fn exchange(&mut self) -> io::Result<Next> {
        let req = match self.read_head().await? {
            None => return Ok(Next::Close),
            Some(Err(b)) => {
                self.refuse_unparsable(b).await;
                return Ok(Next::Close);
            }
            Some(Ok(r)) => r,
        };
        if !req.allowed {
            return self.deny(req).await;
        }
        if self.upstream.is_none() {
            if let Err(e) = self.connect().await {
                self.cbuf.advance(req.head_len);
                let in_sync = req.body.done();
                return self.bad_gateway(req, &e, in_sync).await;
            }
        }
        if req.body.done() {
            self.exchange_without_body(req).await
        } else {
            self.exchange_with_body(req).await
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let s = connect_upstream(&self.meta, &self.engine.config)
            .await
            .map_err(|e| format!("connect {}: {e}", self.meta.original_dst))?;
        self.upstream = Some(s);
        self.upstream_uses = 0;
        self.ubuf.clear();
        Ok(())
    }

    /// A request without a body: its head goes up, then the response comes back. A reused
    /// upstream connection the server closed meanwhile is replaced once, the head sent again.
    async fn exchange_without_body(&mut self, req: Request) -> io::Result<Next> {
        let mut retried = false;
        // RFC 9110 section 9.2.2: only idempotent requests are sent again.
        let idempotent = matches!(
            &*req.ex.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
        loop {
            let Some(up) = self.upstream.as_mut() else {
                self.cbuf.advance(req.head_len);
                return self.bad_gateway(req, "no upstream", true).await;
            };
            let head = req
                .rewritten
                .as_deref()
                .unwrap_or(&self.cbuf[..req.head_len]);
            let sent = up.write_all(head).await;
            let reused = self.upstream_uses > 0;
            self.upstream_uses += 1;
            let first = match sent {
                Ok(()) => self.read_response_head(&req).await,
                Err(e) => Err(e.to_string()),
            };
            match first {
                Ok(resp) => {
                    self.cbuf.advance(req.head_len);
                    return self.respond(req, resp).await;
                }
                Err(e) if reused && idempotent && !retried && self.ubuf.is_empty() => {
                    debug!(error = %e, "upstream connection went away: reconnecting");
                    retried = true;
                    if let Err(e) = self.connect().await {
                        self.cbuf.advance(req.head_len);
                        return self.bad_gateway(req, &e, true).await;
                    }
                }
                Err(e) => {
                    self.cbuf.advance(req.head_len);
                    self.upstream = None;
                    return self.bad_gateway(req, &e, true).await;
                }
            }
        }
    }

    /// A request with a body: the body streams up while the response is read.
    async fn exchange_with_body(&mut self, mut req: Request) -> io::Result<Next> {
        let Some(up) = self.upstream.as_mut() else {
            self.cbuf.advance(req.head_len);
            return self.bad_gateway(req, "no upstream", false).await;
        };
        self.upstream_uses += 1;
        let closing = *self.shutdown.borrow() || self.closing;
        let mut body = std::mem::replace(&mut req.body, Body::Empty);
        let outcome = {
            let (mut ur, mut uw) = up.split();
            let (mut cr, mut cw) = self.client.split();
            let up_fut = forward(
                &mut cr,
                &mut self.cbuf,
                req.head_len,
                req.rewritten.as_deref(),
                &mut uw,
                &mut body,
            );
            let down_fut = respond_inner(
                &self.engine,
                &self.meta,
                &mut ur,
                &mut self.ubuf,
                &mut cw,
                &req,
                closing,
                &mut self.names,
            );
            tokio::pin!(up_fut, down_fut);
            // Both at once; a failure of either ends the exchange (the other side may wait
            // forever for bytes that will not come).
            let mut up_done = false;
            let mut down_r = None;
            loop {
                if up_done {
                    if let Some(next) = down_r {
                        break Ok(next);
                    }
                }
                tokio::select! {
                    r = &mut up_fut, if !up_done => match r {
                        Ok(()) => up_done = true,
                        Err(e) => break Err(RespondError::After(format!("request body: {e}"))),
                    },
                    r = &mut down_fut, if down_r.is_none() => match r {
                        Ok(next) => down_r = Some(next),
                        Err(e) => break Err(e),
                    },
                }
            }
        };
        match outcome {
            Ok(next) => self.after_response(next).await,
            Err(RespondError::BeforeHead(e)) => {
                self.upstream = None;
                self.bad_gateway(req, &e, false).await.map(|_| Next::Close)
            }
            Err(RespondError::After(e)) => {
                debug!(client = %self.meta.client, error = %e, "exchange");
                Ok(Next::Close)
            }
        }
    }

    /// Reads a response head (passing 1xx interim responses on to the client).
    async fn read_response_head(&mut self, req: &Request) -> Result<Response, String> {
        let Some(up) = self.upstream.as_mut() else {
            return Err("no upstream".into());
        };
        let (mut ur, _) = up.split();
        let recorder = Recorder {
            engine: &self.engine,
            meta: &self.meta,
            names: &mut self.names,
        };
        read_response_head(&mut ur, &mut self.ubuf, &mut self.client, req, recorder).await
    }

    /// Sends a response whose head has been read on to the client, records it, and decides
    /// what comes next.
    async fn respond(&mut self, req: Request, resp: Response) -> io::Result<Next> {
        let close = *self.shutdown.borrow() || self.closing;
        let Some(up) = self.upstream.as_mut() else {
            return Ok(Next::Close);
        };
        let (mut ur, _) = up.split();
        let r = send_response(&mut ur, &mut self.ubuf, &mut self.client, &req, resp, close).await;
        match r {
            Ok(next) => self.after_response(next).await,
            Err(e) => {
                debug!(error = %e, "response");
                Ok(Next::Close)
            }
        }
    }

    async fn after_response(&mut self, next: After) -> io::Result<Next> {
        match next {
            After::Tunnel => {
                self.tunnel().await;
                Ok(Next::Close)
            }
            After::Close => Ok(Next::Close),
            After::KeepAlive { upstream_open } => {
                if !upstream_open {
                    self.upstream = None;
                }
                if self.closing || *self.shutdown.borrow() {
                    return Ok(Next::Close);
                }
                Ok(Next::KeepAlive)
            }
        }
    }

    /// Bytes both ways until either side closes (after an allowed upgrade).
    async fn tunnel(&mut self) {
        let Some(mut up) = self.upstream.take() else {
            return;
        };
        if !self.cbuf.is_empty() {
            if let Err(e) = up.write_all(&self.cbuf).await {
                debug!(error = %e, "tunnel");
                return;
            }
            self.cbuf.clear();
        }
        if let Err(e) = tokio::io::copy_bidirectional(&mut self.client, &mut up).await {
            debug!(error = %e, "upgraded tunnel ended");
        }
    }

    /// Cilium's 403; the request's body is read (up to a bound) so that the connection stays
    /// usable.
    async fn deny(&mut self, mut req: Request) -> io::Result<Next> {
        self.cbuf.advance(req.head_len);
        let mut keep = req.keep_alive;
        if req.expect_continue && !req.body.done() {
            // The body will not come without a `100 Continue`: refuse and close instead.
            keep = false;
        } else if !req.body.done() {
            let mut seen = 0u64;
            loop {
                let n = req
                    .body
                    .take(&self.cbuf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.cbuf.advance(n);
                seen += n as u64;
                if req.body.done() {
                    break;
                }
                if seen > DENIED_BODY_LIMIT {
                    keep = false;
                    break;
                }
                if !fill(&mut self.client, &mut self.cbuf).await? {
                    return Ok(Next::Close);
                }
            }
        }
        keep &= !(self.closing || *self.shutdown.borrow());
        let latency = req.start.elapsed().as_nanos() as u64;
        let answer = Answer {
            status: "403 Forbidden",
            code: 403,
            content_type: Some("text/plain"),
            body: ACCESS_DENIED_BODY.as_bytes(),
        };
        self.answer(&req.ex, latency, &answer, keep).await
    }

    /// 502 with the reason (the request's head is no longer in the client buffer); the
    /// connection stays open if `in_sync` (nothing of the request is left unread).
    async fn bad_gateway(&mut self, mut req: Request, e: &str, in_sync: bool) -> io::Result<Next> {
        warn!(client = %self.meta.client, dst = %self.meta.original_dst, error = %e, "upstream");
        self.engine.counters.errors.fetch_add(1, Ordering::Relaxed);
        req.ex.verdict = L7Verdict::Error;
        req.ex.reason = Some(format!("upstream: {e}"));
        let keep = in_sync && req.keep_alive && !(self.closing || *self.shutdown.borrow());
        let body = format!("upstream: {e}\r\n");
        let latency = req.start.elapsed().as_nanos() as u64;
        let answer = Answer {
            status: "502 Bad Gateway",
            code: 502,
            content_type: None,
            body: body.as_bytes(),
        };
        self.answer(&req.ex, latency, &answer, keep).await
    }

    /// A head that cannot be parsed: 400 (431 for one too large), both records, and close.
    async fn refuse_unparsable(&mut self, b: BadRequest) {
        self.engine.counters.errors.fetch_add(1, Ordering::Relaxed);
        debug!(client = %self.meta.client, reason = %b.reason, "{}", b.code);
        let ex = Exchange {
            method: Cow::Borrowed(""),
            url: String::new(),
            protocol: "HTTP/1.1",
            verdict: L7Verdict::Error,
            rule: 0,
            reason: Some(b.reason),
        };
        record(
            &self.engine,
            &self.meta,
            &ex,
            L7RecordType::Request,
            0,
            0,
            std::iter::empty(),
            0,
        );
        let answer = Answer {
            status: if b.code == 431 {
                "431 Request Header Fields Too Large"
            } else {
                "400 Bad Request"
            },
            code: b.code,
            content_type: None,
            body: b"",
        };
        if let Err(e) = self.answer(&ex, 0, &answer, false).await {
            debug!(error = %e, "writing {}", b.code);
        }
    }

    /// Answers the request of `ex` itself (refused, failed upstream, unparsable): records the
    /// response, then writes it, with `connection: close` unless `keep`; what the connection
    /// does next.
    async fn answer(
        &mut self,
        ex: &Exchange,
        latency_ns: u64,
        answer: &Answer<'_>,
        keep: bool,
    ) -> io::Result<Next> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(128 + answer.body.len());
        let _ = write!(out, "HTTP/1.1 {}\r\n", answer.status);
        if let Some(t) = answer.content_type {
            let _ = write!(out, "content-type: {t}\r\n");
        }
        let _ = write!(out, "content-length: {}\r\n", answer.body.len());
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(answer.body);
        let content_type = answer.content_type.map(|t| ("content-type", t.as_bytes()));
        record(
            &self.engine,
            &self.meta,
            ex,
            L7RecordType::Response,
            answer.code,
            latency_ns,
            content_type.into_iter(),
            usize::from(content_type.is_some()),
        );
        self.client.write_all(&out).await?;
        Ok(if keep { Next::KeepAlive } else { Next::Close })
    }
}

/// A response the proxy makes itself (see `Conn::answer`).
struct Answer<'a> {
    /// The status line's code and reason phrase.
    status: &'a str,
    code: u16,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

/// What the connection does after a response.
enum After {
    KeepAlive { upstream_open: bool },
    Close,
    Tunnel,
}

enum RespondError {
    /// Nothing was sent to the client: a 502 can still be answered.
    BeforeHead(String),
    After(String),
}

/// What records a connection's final responses.
struct Recorder<'a> {
    engine: &'a Engine,
    meta: &'a ConnMeta,
    /// Reused for the lower-case header names.
    names: &'a mut String,
}

impl Recorder<'_> {
    /// Records the final response to `req`, its head parsed as `code` and `headers`.
    fn response(&mut self, req: &Request, code: u16, headers: &[httparse::Header<'_>]) {
        let latency = req.start.elapsed().as_nanos() as u64;
        lower_names(headers, self.names);
        record(
            self.engine,
            self.meta,
            &req.ex,
            L7RecordType::Response,
            code,
            latency,
            named(headers, self.names),
            headers.len(),
        );
    }
}

/// Reads a response head into `ubuf`; interim 1xx responses (not 101) go on to the client.
/// The final one is recorded as it is parsed.
async fn read_response_head<R, W>(
    ur: &mut R,
    ubuf: &mut BytesMut,
    client: &mut W,
    req: &Request,
    mut recorder: Recorder<'_>,
) -> Result<Response, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !ubuf.is_empty() {
            let parsed = parse_response(ubuf, req, |code, headers| {
                recorder.response(req, code, headers)
            })?;
            match parsed {
                Some(r) if !is_final(r.code) => {
                    client
                        .write_all(&ubuf[..r.head_len])
                        .await
                        .map_err(|e| format!("client: {e}"))?;
                    ubuf.advance(r.head_len);
                    continue;
                }
                Some(r) => return Ok(r),
                None => {}
            }
        }
        match fill(ur, ubuf).await {
            Ok(true) => {}
            Ok(false) => return Err("upstream closed before a response".into()),
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

/// Whether a response with this code is the final one (1xx ones are interim, but for `101
/// Switching Protocols`).
fn is_final(code: u16) -> bool {
    !(100..200).contains(&code) || code == 101
}

/// Parses the response head at the start of `ubuf` (`None`: not whole yet); `on_final`
/// sees the code and headers of a final one (see [`is_final`]), from the one parse.
fn parse_response(
    ubuf: &[u8],
    req: &Request,
    on_final: impl FnOnce(u16, &[httparse::Header<'_>]),
) -> Result<Option<Response>, String> {
    // Uninitialised: no 3 KB of empty headers written per head.
    let mut hs = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, ubuf, &mut hs)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if ubuf.len() > MAX_HEAD => {
            return Err(format!("response head over {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("cannot parse the response: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let headers: &[httparse::Header<'_>] = resp.headers;
    let no_body = req.head
        || (100..200).contains(&code)
        || code == 204
        || code == 304
        || (req.connect && (200..300).contains(&code));
    let body = if no_body {
        Body::Empty
    } else {
        match chunked_last(headers) {
            Some(true) => Body::Chunked(Chunked::default()),
            Some(false) => Body::UntilClose,
            None => match content_length(headers) {
                Ok(Some(0)) => Body::Empty,
                Ok(Some(n)) => Body::Length(n),
                Ok(None) => Body::UntilClose,
                Err(e) => return Err(format!("response: {e}")),
            },
        }
    };
    let keep_alive = body != Body::UntilClose
        && if resp.version == Some(0) {
            has_token(headers, "connection", "keep-alive")
        } else {
            !has_token(headers, "connection", "close")
        };
    if is_final(code) {
        on_final(code, headers);
    }
    Ok(Some(Response {
        head_len,
        code,
        body,
        keep_alive,
    }))
}

/// Passes the response (head parsed and recorded, at the start of `ubuf`) to the client.
async fn send_response<R, W>(
    ur: &mut R,
    ubuf: &mut BytesMut,
    client: &mut W,
    req: &Request,
    mut resp: Response,
    closing: bool,
) -> Result<After, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let tunnel =
        (resp.code == 101 && req.upgrade) || (req.connect && (200..300).contains(&resp.code));
    if tunnel {
        let all = ubuf.split();
        client
            .write_all(&all)
            .await
            .map_err(|e| format!("client: {e}"))?;
        return Ok(After::Tunnel);
    }
    if resp.code == 101 {
        return Err("101 to a request that asked for no upgrade".into());
    }
    let keep = resp.keep_alive && req.keep_alive && !closing;
    let close_head = (!keep && resp.keep_alive).then(|| with_close(&ubuf[..resp.head_len]));
    forward(
        ur,
        ubuf,
        resp.head_len,
        close_head.as_deref(),
        client,
        &mut resp.body,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(if keep {
        After::KeepAlive {
            upstream_open: resp.keep_alive,
        }
    } else {
        After::Close
    })
}

/// Reads the response head, then sends the response on (for requests whose body streams up
/// meanwhile).
#[allow(clippy::too_many_arguments)]
async fn respond_inner<R, W>(
    engine: &Engine,
    meta: &ConnMeta,
    ur: &mut R,
    ubuf: &mut BytesMut,
    client: &mut W,
    req: &Request,
    closing: bool,
    names: &mut String,
) -> Result<After, RespondError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let recorder = Recorder {
        engine,
        meta,
        names,
    };
    let resp = read_response_head(ur, ubuf, client, req, recorder)
        .await
        .map_err(RespondError::BeforeHead)?;
    send_response(ur, ubuf, client, req, resp, closing)
        .await
        .map_err(RespondError::After)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'h, 'b>(
        raw: &'b [u8],
        hs: &'h mut [httparse::Header<'b>],
    ) -> httparse::Request<'h, 'b> {
        let mut r = httparse::Request::new(hs);
        assert!(r.parse(raw).expect("parses").is_complete());
        r
    }

    #[test]
    fn framing_headers() {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let r = parse(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            &mut hs,
        );
        assert_eq!(chunked_last(r.headers), Some(true));
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let r = parse(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            &mut hs,
        );
        assert_eq!(chunked_last(r.headers), Some(false));
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let r = parse(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\n",
            &mut hs,
        );
        assert_eq!(content_length(r.headers), Ok(Some(5)));
        for bad in [&b"5, 6"[..], b"-1", b"+5", b"", b"99999999999999999999"] {
            let mut raw = b"POST / HTTP/1.1\r\nContent-Length: ".to_vec();
            raw.extend_from_slice(bad);
            raw.extend_from_slice(b"\r\n\r\n");
            let mut hs = [httparse::EMPTY_HEADER; 16];
            let r = parse(&raw, &mut hs);
            assert!(content_length(r.headers).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connection_tokens() {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let r = parse(
            b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n",
            &mut hs,
        );
        assert!(has_token(r.headers, "connection", "close"));
        assert!(has_token(r.headers, "connection", "upgrade"));
        assert!(!has_token(r.headers, "connection", "keep-alive"));
    }

    #[test]
    fn urls() {
        assert_eq!(target_parts("/a?b", Some(b"svc:80")), ("svc:80", "/a?b"));
        assert_eq!(target_parts("/a", None), ("", "/a"));
        assert_eq!(
            target_parts("http://svc/x?y", Some(b"other")),
            ("svc", "/x?y")
        );
        assert_eq!(target_parts("HTTP://svc", None), ("svc", "/"));
        assert_eq!(target_parts("*", Some(b"h")), ("h", "*"));
    }

    #[test]
    fn recorded_names_are_lower_case() {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let r = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Req-ID: 1\r\n\r\n", &mut hs);
        let mut names = String::new();
        lower_names(r.headers, &mut names);
        let got: Vec<_> = named(r.headers, &names).collect();
        assert_eq!(got, vec![("host", &b"a"[..]), ("x-req-id", &b"1"[..])]);
    }

    #[test]
    fn close_is_added_to_a_head() {
        assert_eq!(
            with_close(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(
            with_close(b"HTTP/1.1 200 OK\ncontent-length: 0\n\n"),
            b"HTTP/1.1 200 OK\ncontent-length: 0\nconnection: close\r\n\r\n"
        );
    }
}
