//! The engine end to end over real TCP on loopback: a client, the engine (given the accepted
//! stream and the original destination, as the listener does after reading local_addr), and a
//! real hyper upstream server.

use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ciliate_model::l7::{
    HttpMatch, HttpRecord, L7Parser, L7PeerRules, L7RecordType, L7Redirect, L7Verdict,
    ProxyCommand, ProxyEvent,
};
use ciliate_proxy::engine::{Counters, Engine, EngineConfig, ACCESS_DENIED_BODY};
use ciliate_proxy::events::Outgoing;
use ciliate_proxy::identity::StaticIdentities;
use ciliate_proxy::policy::Policy;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const T: Duration = Duration::from_secs(10);

/// What the upstream saw, for assertions.
#[derive(Default)]
struct Seen {
    body_bytes: AtomicU64,
}

/// The upstream's answer: `<method> <path?query> x-env=<value>` for GETs; for POSTs the byte
/// count of the body (read as it streams); `/ws` upgrades and echoes bytes.
async fn upstream_handler(
    seen: Arc<Seen>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/ws" {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = up.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()))
            .expect("response"));
    }
    if req.uri().path() == "/kb" {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'k'; 1024]))));
    }
    let line = format!(
        "{} {} x-env={}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        req.headers()
            .get("x-env")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    );
    if req.method() == http::Method::POST {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(f) = body.frame().await {
            let Ok(f) = f else { break };
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
                seen.body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
            }
        }
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "{line} bytes={n}"
        )))));
    }
    Ok(Response::new(Full::new(Bytes::from(line))))
}

async fn upstream(h2: bool) -> (SocketAddrV4, Arc<Seen>) {
    upstream_on("127.0.0.1", h2).await
}

async fn upstream_on(ip: &str, h2: bool) -> (SocketAddrV4, Arc<Seen>) {
    let l = TcpListener::bind(format!("{ip}:0")).await.expect("bind");
    let SocketAddr::V4(addr) = l.local_addr().expect("addr") else {
        panic!("v4")
    };
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |r| upstream_handler(seen.clone(), r));
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

struct Proxy {
    addr: SocketAddrV4,
    policy: Arc<Policy>,
    events: mpsc::Receiver<Outgoing>,
    engine: Arc<Engine>,
}

fn redirect(port: u16, http: Vec<HttpMatch>) -> L7Redirect {
    L7Redirect {
        endpoint: 42,
        endpoint_ip: "127.0.0.1".parse().expect("ip"),
        egress: true,
        proto: 6,
        port,
        parser: L7Parser::Http,
        proxy_port: 15001,
        rules: vec![L7PeerRules {
            peers: None,
            rule: 7,
            http,
            ..Default::default()
        }],
    }
}

fn get(path: &str) -> HttpMatch {
    HttpMatch {
        method: Some("GET".into()),
        path: Some(path.into()),
        ..Default::default()
    }
}

/// The engine behind a plain listener; every connection's original destination is `dst`.
async fn proxy(dst: SocketAddrV4, rules: Option<Vec<HttpMatch>>) -> Proxy {
    let policy = Arc::new(Policy::default());
    if let Some(rules) = rules {
        policy
            .apply(&ProxyCommand::Snapshot {
                revision: 1,
                redirects: vec![redirect(dst.port(), rules)],
            })
            .expect("policy");
    }
    proxy_with(dst, policy, StaticIdentities::default(), true).await
}

async fn proxy_with(
    dst: SocketAddrV4,
    policy: Arc<Policy>,
    identities: StaticIdentities,
    egress: bool,
) -> Proxy {
    let (tx, rx) = mpsc::channel(1024);
    let engine = Arc::new(Engine {
        policy: policy.clone(),
        identities: Arc::new(identities),
        events: tx.into(),
        config: EngineConfig::default(),
        counters: Counters::default(),
    });
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let SocketAddr::V4(addr) = l.local_addr().expect("addr") else {
        panic!("v4")
    };
    let e2 = engine.clone();
    let (_stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = _stop_tx;
        loop {
            let Ok((s, SocketAddr::V4(peer))) = l.accept().await else {
                return;
            };
            tokio::spawn(e2.clone().serve(s, peer, dst, egress, stop.clone()));
        }
    });
    Proxy {
        addr,
        policy,
        events: rx,
        engine,
    }
}

impl Proxy {
    async fn records(&mut self, n: usize) -> Vec<HttpRecord> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(T, self.events.recv()).await {
                Ok(Some(ev)) => {
                    // HTTP records come as frames: decoding them checks the encoding too.
                    if let ProxyEvent::Http(r) = ev.into_event().expect("a frame that decodes") {
                        out.push(*r);
                    }
                }
                _ => panic!("only {} of {n} records: {out:#?}", out.len()),
            }
        }
        out
    }
}

/// Reads one HTTP/1.1 response (content-length or chunked) from a raw stream.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut tmp = [0u8; 4096];
        let n = tokio::time::timeout(T, s.read(&mut tmp))
            .await
            .expect("timely")
            .expect("read");
        assert!(
            n > 0,
            "closed before a response; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code: u16 = head[9..12].parse().expect("status");
    let lower = head.to_ascii_lowercase();
    let len = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().expect("len"));
    let chunked = lower.contains("transfer-encoding: chunked");
    buf.drain(..head_end);
    let mut body = Vec::new();
    if let Some(len) = len {
        while buf.len() < len {
            let mut tmp = [0u8; 65536];
            let n = tokio::time::timeout(T, s.read(&mut tmp))
                .await
                .expect("timely")
                .expect("read");
            assert!(n > 0, "closed mid-body");
            buf.extend_from_slice(&tmp[..n]);
        }
        body.extend(buf.drain(..len));
    } else if chunked {
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                let mut tmp = [0u8; 65536];
                let n = tokio::time::timeout(T, s.read(&mut tmp))
                    .await
                    .expect("timely")
                    .expect("read");
                assert!(n > 0, "closed mid-chunk");
                buf.extend_from_slice(&tmp[..n]);
            }
            let i = buf.windows(2).position(|w| w == b"\r\n").expect("crlf");
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..i]).trim(), 16)
                .expect("chunk size");
            buf.drain(..i + 2);
            while buf.len() < size + 2 {
                let mut tmp = [0u8; 65536];
                let n = tokio::time::timeout(T, s.read(&mut tmp))
                    .await
                    .expect("timely")
                    .expect("read");
                assert!(n > 0, "closed mid-chunk");
                buf.extend_from_slice(&tmp[..n]);
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    (code, String::from_utf8_lossy(&body).to_string())
}

fn req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n")
}

#[tokio::test]
async fn keep_alive_and_pipelining() {
    let (up, _) = upstream(false).await;
    let mut p = proxy(up, Some(vec![get("/.*")])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut buf = Vec::new();
    for path in ["/one", "/two?x=1"] {
        s.write_all(req(path).as_bytes()).await.expect("write");
        let (code, body) = read_response(&mut s, &mut buf).await;
        assert_eq!(
            (code, body.as_str()),
            (200, format!("GET {path} x-env=-").as_str())
        );
    }
    // Three requests in one write: answered in order on the same connection.
    s.write_all(format!("{}{}{}", req("/a"), req("/b"), req("/c")).as_bytes())
        .await
        .expect("write");
    for path in ["/a", "/b", "/c"] {
        let (code, body) = read_response(&mut s, &mut buf).await;
        assert_eq!(code, 200);
        assert_eq!(body, format!("GET {path} x-env=-"));
    }
    let recs = p.records(10).await;
    let reqs: Vec<_> = recs
        .iter()
        .filter(|r| r.record_type == L7RecordType::Request)
        .collect();
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[1].url, "http://svc/two?x=1");
    assert!(reqs
        .iter()
        .all(|r| r.verdict == L7Verdict::Forwarded && r.rule == 7 && r.protocol == "HTTP/1.1"));
    assert_eq!(p.engine.counters.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn denied_gets_403_and_the_connection_stays_usable() {
    let (up, _) = upstream(false).await;
    let mut p = proxy(up, Some(vec![get("/public")])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(req("/private").as_bytes())
        .await
        .expect("write");
    let (code, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((code, body.as_str()), (403, ACCESS_DENIED_BODY));
    // A denied POST with a body: the body is read, the connection stays in sync.
    s.write_all(b"POST /public HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let (code, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(code, 403);
    s.write_all(req("/public").as_bytes()).await.expect("write");
    let (code, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((code, body.as_str()), (200, "GET /public x-env=-"));

    let recs = p.records(6).await;
    assert_eq!(recs[0].record_type, L7RecordType::Request);
    assert_eq!(recs[0].verdict, L7Verdict::Dropped);
    assert_eq!(recs[0].reason.as_deref(), Some("no rule matched"));
    assert_eq!(recs[1].record_type, L7RecordType::Response);
    assert_eq!(recs[1].code, 403);
    assert_eq!(recs[4].verdict, L7Verdict::Forwarded);
    assert_eq!(recs[5].code, 200);
    assert!(recs[5].latency_ns > 0);
}

#[tokio::test]
async fn chunked_request_body() {
    let (up, _) = upstream(false).await;
    let p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let (code, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((code, body.as_str()), (200, "POST /up x-env=- bytes=11"));
}

/// 8 MiB uploaded in 64 KiB frames; the second half is only sent once the upstream has
/// received the first, which deadlocks (and times out) if the proxy buffered bodies whole.
#[tokio::test]
async fn large_body_is_streamed() {
    let (up, seen) = upstream(false).await;
    let p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let s = TcpStream::connect(p.addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let total: u64 = 8 << 20;
    let half = total / 2;
    let seen2 = seen.clone();
    let feeder = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < total {
            if sent == half {
                // Wait until the upstream holds the first half.
                let mut waited = 0;
                while seen2.body_bytes.load(Ordering::SeqCst) < half {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    waited += 1;
                    assert!(
                        waited < 1000,
                        "upstream never got the first half: the proxy buffers"
                    );
                }
            }
            tx.send(Ok(Frame::data(chunk.clone()))).await.expect("send");
            sent += chunk.len() as u64;
        }
    });
    let r = Request::post("/big")
        .header("host", "svc")
        .body(body)
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(60), send.send_request(r))
        .await
        .expect("timely")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&b),
        format!("POST /big x-env=- bytes={total}")
    );
    feeder.await.expect("feeder");
}

/// A stream over an mpsc receiver (no tokio-stream dependency needed).
fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let (up, _) = upstream(false).await;
    let mut p = proxy(up, Some(vec![get("/ws")])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    let (code, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(code, 101);
    assert!(buf.is_empty());
    for msg in [&b"ping"[..], b"\x00\x01 not http at all \xff"] {
        s.write_all(msg).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(T, s.read_exact(&mut got))
            .await
            .expect("timely")
            .expect("echo");
        assert_eq!(got, msg);
    }
    let recs = p.records(2).await;
    assert_eq!(recs[1].code, 101);
}

#[tokio::test]
async fn websocket_upgrade_denied() {
    let (up, _) = upstream(false).await;
    let p = proxy(up, Some(vec![get("/public")])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    let (code, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((code, body.as_str()), (403, ACCESS_DENIED_BODY));
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let (up, _) = upstream(true).await;
    let mut p = proxy(up, Some(vec![get("/allowed/.*")])).await;
    let s = TcpStream::connect(p.addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for path in ["/allowed/1", "/allowed/2", "/denied"] {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let r = Request::get(format!("http://svc{path}"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = send.send_request(r).await.expect("response");
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (path, code, String::from_utf8_lossy(&body).to_string())
        }));
    }
    for t in tasks {
        let (path, code, body) = t.await.expect("task");
        if path == "/denied" {
            assert_eq!((code, body.as_str()), (403, ACCESS_DENIED_BODY));
        } else {
            assert_eq!((code, body), (200, format!("GET {path} x-env=-")));
        }
    }
    let recs = p.records(6).await;
    assert!(recs.iter().all(|r| r.protocol == "HTTP/2"), "{recs:#?}");
    assert!(recs.iter().any(|r| r.url == "http://svc/allowed/1"));
}

#[tokio::test]
async fn unparsable_request_gets_400_and_a_record() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_test_writer()
        .try_init();
    let (up, _) = upstream(false).await;
    let mut p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nthis is no header\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let (code, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(code, 400);
    let recs = p.records(2).await;
    assert_eq!(recs[0].verdict, L7Verdict::Error);
    assert_eq!(recs[1].code, 400);
    assert!(
        recs[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("parse")),
        "{recs:#?}"
    );
}

async fn expect_reset(s: &mut TcpStream) {
    let mut tmp = [0u8; 64];
    let r = tokio::time::timeout(T, s.read(&mut tmp))
        .await
        .expect("timely");
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes (0 = FIN)"),
    }
}

#[tokio::test]
async fn non_http_is_reset_and_recorded() {
    let (up, _) = upstream(false).await;
    let mut p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    // A TLS ClientHello's first bytes.
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await
        .expect("write");
    expect_reset(&mut s).await;
    let recs = p.records(1).await;
    assert_eq!(recs[0].verdict, L7Verdict::Dropped);
    assert_eq!(recs[0].reason.as_deref(), Some("not HTTP"));
}

#[tokio::test]
async fn no_redirect_fails_closed() {
    let (up, _) = upstream(false).await;
    let mut p = proxy(up, None).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let _ = s.write_all(req("/").as_bytes()).await;
    expect_reset(&mut s).await;
    let recs = p.records(1).await;
    assert_eq!(recs[0].verdict, L7Verdict::Dropped);
}

#[tokio::test]
async fn rule_change_applies_to_the_next_request_on_the_same_connection() {
    let (up, _) = upstream(false).await;
    let p = proxy(up, Some(vec![get("/a")])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(req("/a").as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf).await.0, 200);
    s.write_all(req("/b").as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf).await.0, 403);
    p.policy
        .apply(&ProxyCommand::Endpoint {
            revision: 2,
            endpoint: 42,
            redirects: vec![redirect(up.port(), vec![get("/b")])],
        })
        .expect("apply");
    s.write_all(req("/b").as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf).await.0, 200);
    s.write_all(req("/a").as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf).await.0, 403);
    // The endpoint loses its redirects: the open connection's next request is refused.
    p.policy
        .apply(&ProxyCommand::Endpoint {
            revision: 3,
            endpoint: 42,
            redirects: vec![],
        })
        .expect("apply");
    s.write_all(req("/b").as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf).await.0, 403);
}

#[tokio::test]
async fn header_actions_reach_the_upstream() {
    let (up, _) = upstream(false).await;
    let p = proxy(
        up,
        Some(vec![HttpMatch {
            header_matches: vec![ciliate_model::l7::HeaderMatch {
                name: "X-Env".into(),
                value: Some("prod".into()),
                mismatch: Some(ciliate_model::l7::HeaderMismatch::Replace),
            }],
            ..Default::default()
        }]),
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Env: dev\r\n\r\n")
        .await
        .expect("write");
    let (code, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((code, body.as_str()), (200, "GET /x x-env=prod"));
}

#[tokio::test]
async fn upstream_down_is_502() {
    // A port nobody listens on: bind, note, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let SocketAddr::V4(a) = l.local_addr().expect("addr") else {
            panic!()
        };
        a
    };
    let mut p = proxy(dead, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(req("/").as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf).await.0, 502);
    let recs = p.records(2).await;
    assert_eq!(recs[1].verdict, L7Verdict::Error);
}

/// Direction decides which endpoint's redirect applies and whose identity is the remote one:
/// egress = the client's redirect, judged on the server's identity; ingress = the server's
/// redirect, judged on the client's identity. Client 127.0.0.1 (identity 1000), server
/// 127.0.0.2 (identity 2000).
#[tokio::test]
async fn direction_selects_redirect_and_remote_identity() {
    let (up, _) = upstream_on("127.0.0.2", false).await;
    let ids = || StaticIdentities {
        table: [
            ("127.0.0.1".parse().expect("ip"), 1000),
            ("127.0.0.2".parse().expect("ip"), 2000),
        ]
        .into_iter()
        .collect(),
    };
    let entry = |ip: &str, egress: bool, peer: u32| L7Redirect {
        endpoint: if egress { 1 } else { 2 },
        endpoint_ip: ip.parse().expect("ip"),
        egress,
        proto: 6,
        port: up.port(),
        parser: L7Parser::Http,
        proxy_port: 15001,
        rules: vec![L7PeerRules {
            peers: Some(vec![peer]),
            rule: 50 + peer,
            http: vec![get("/.*")],
            ..Default::default()
        }],
    };
    // (direction, redirect's peer, expected status)
    let cases = [
        (true, entry("127.0.0.1", true, 2000), 200),
        (true, entry("127.0.0.1", true, 1000), 403),
        (false, entry("127.0.0.2", false, 1000), 200),
        (false, entry("127.0.0.2", false, 2000), 403),
    ];
    for (egress, red, want) in cases {
        let policy = Arc::new(Policy::default());
        let peer = red.rules[0].peers.clone();
        policy
            .apply(&ProxyCommand::Snapshot {
                revision: 1,
                redirects: vec![red],
            })
            .expect("policy");
        let mut p = proxy_with(up, policy, ids(), egress).await;
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        let mut buf = Vec::new();
        s.write_all(req("/x").as_bytes()).await.expect("write");
        let (code, _) = read_response(&mut s, &mut buf).await;
        assert_eq!(code, want, "egress {egress}, peers {peer:?}");
        let recs = p.records(2).await;
        assert_eq!(
            (recs[0].source_identity, recs[0].destination_identity),
            (1000, 2000)
        );
        assert_eq!(recs[0].endpoint, if egress { 1 } else { 2 });
        assert_eq!(recs[0].egress, egress);
    }
    // An egress listener never uses the server's ingress redirect.
    let policy = Arc::new(Policy::default());
    policy
        .apply(&ProxyCommand::Snapshot {
            revision: 1,
            redirects: vec![entry("127.0.0.2", false, 1000)],
        })
        .expect("policy");
    let p = proxy_with(up, policy, ids(), true).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let _ = s.write_all(req("/x").as_bytes()).await;
    expect_reset(&mut s).await;
}

/// Not a test: prints the engine's added latency and rate on loopback (run by hand with
/// `cargo test --release -p ciliate-proxy --test engine measure -- --ignored --nocapture`).
/// Sequential keep-alive GETs of a 1 KiB body, direct and through the engine with a rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_added_latency_and_rate() {
    async fn one_conn(addr: SocketAddrV4, n: usize) -> Vec<Duration> {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = Vec::new();
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = std::time::Instant::now();
            s.write_all(req("/kb").as_bytes()).await.expect("write");
            let (code, _) = read_response(&mut s, &mut buf).await;
            assert_eq!(code, 200);
            lat.push(t.elapsed());
        }
        lat
    }
    fn pct(v: &mut [Duration], p: f64) -> Duration {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    }
    let (up, _) = upstream(false).await;
    let p = proxy(up, Some(vec![get("/kb|/other")])).await;
    let n = 20_000;
    // Warm up both paths.
    one_conn(up, 1000).await;
    one_conn(p.addr, 1000).await;
    let mut direct = one_conn(up, n).await;
    let mut proxied = one_conn(p.addr, n).await;
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (p50, p99) = (pct(&mut proxied, 0.5), pct(&mut proxied, 0.99));
    eprintln!("sequential keep-alive, {n} requests: direct p50 {d50:?} p99 {d99:?}; proxied p50 {p50:?} p99 {p99:?}; added p50 {:?} p99 {:?}", p50.saturating_sub(d50), p99.saturating_sub(d99));
    for (name, addr) in [("direct", up), ("proxied", p.addr)] {
        let t = std::time::Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|_| tokio::spawn(one_conn(addr, 2000)))
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "{name}: 16 connections x 2000 requests: {:.0} req/s",
            32_000.0 / secs
        );
    }
}

/// gRPC's shape over h2c: a POST with `content-type: application/grpc`, a length-prefixed
/// message, and the status in response trailers, which must come through the proxy.
#[tokio::test]
async fn grpc_over_h2c_keeps_trailers() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let SocketAddr::V4(up) = l.local_addr().expect("addr") else {
        panic!("v4")
    };
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let got = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().expect("value"));
                    trailers.insert(
                        "grpc-message",
                        format!("{path} {got}").parse().expect("value"),
                    );
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x02hi"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures::stream::iter(frames));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .expect("response"),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p = proxy(
        up,
        Some(vec![HttpMatch {
            method: Some("POST".into()),
            path: Some("/echo\\.Echo/Say".into()),
            ..Default::default()
        }]),
    )
    .await;
    let s = TcpStream::connect(p.addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let call = |path: &str| {
        Request::post(format!("http://svc{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x03abc")))
            .expect("request")
    };
    let resp = send
        .send_request(call("/echo.Echo/Say"))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body");
    let trailers = body.trailers().cloned().expect("trailers came through");
    assert_eq!(trailers.get("grpc-status").expect("status"), "0");
    assert_eq!(
        trailers.get("grpc-message").expect("message"),
        "/echo.Echo/Say 8"
    );
    assert_eq!(&body.to_bytes()[..], b"\x00\x00\x00\x00\x02hi");
    // Another method of the service is not allowed.
    let resp = send
        .send_request(call("/echo.Echo/Admin"))
        .await
        .expect("response");
    assert_eq!(resp.status(), 403);
}

/// An upstream that reads one request head per exchange and answers with what `answer`
/// writes, on one connection after another.
async fn raw_upstream<F, Fut>(answer: F) -> SocketAddrV4
where
    F: Fn(TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let SocketAddr::V4(addr) = l.local_addr().expect("addr") else {
        panic!("v4")
    };
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                answer(s, head).await;
            });
        }
    });
    addr
}

/// Reads until `want` bytes came or the peer closed.
async fn read_n(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let mut tmp = [0u8; 65536];
        let n = tokio::time::timeout(T, s.read(&mut tmp))
            .await
            .expect("timely")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&tmp[..n]);
    }
    got
}

/// A chunked request with extensions and trailers, pipelined with the next request in one
/// write: the body ends where its trailers end, and the next request is served after it.
#[tokio::test]
async fn chunked_request_with_trailers_then_a_pipelined_request() {
    let (up, _) = upstream(false).await;
    let p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\nx-more: 1\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc\
          GET /three HTTP/1.1\r\nHost: svc\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    for want in [
        "POST /up x-env=- bytes=11",
        "POST /two x-env=- bytes=3",
        "GET /three x-env=-",
    ] {
        let (code, body) = read_response(&mut s, &mut buf).await;
        assert_eq!((code, body.as_str()), (200, want));
    }
}

/// A chunked response with trailers passes byte for byte, and the connection is in sync
/// after it (its end found after the trailers).
#[tokio::test]
async fn chunked_response_with_trailers_passes_unchanged() {
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
        3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n";
    let up = raw_upstream(|mut s, _head| async move {
        let _ = s.write_all(RESP).await;
        // The second request on the same connection.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let mut p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(req("/a").as_bytes()).await.expect("write");
    assert_eq!(read_n(&mut s, RESP.len()).await, RESP);
    s.write_all(req("/b").as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf).await, (200, "ok".into()));
    let recs = p.records(4).await;
    assert_eq!(recs[1].code, 200);
    assert!(recs[1]
        .headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked"));
}

/// 8 MiB downloaded: the upstream writes the second half only after the client has read a
/// good part of the first, which never happens if the proxy buffered responses whole.
#[tokio::test]
async fn large_response_is_streamed() {
    const TOTAL: usize = 8 << 20;
    let (read_tx, read_rx) = watch::channel(0usize);
    let read_rx = Arc::new(tokio::sync::Mutex::new(read_rx));
    let up = raw_upstream(move |mut s, _head| {
        let read_rx = read_rx.clone();
        async move {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {TOTAL}\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let half = vec![b'z'; TOTAL / 2];
            let _ = s.write_all(&half).await;
            let mut rx = read_rx.lock().await;
            let _ = rx.wait_for(|n| *n >= TOTAL / 4).await;
            let _ = s.write_all(&half).await;
        }
    })
    .await;
    let p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(req("/big").as_bytes()).await.expect("write");
    let mut got = 0usize;
    let mut tmp = vec![0u8; 65536];
    let mut head_seen = false;
    let mut head = Vec::new();
    while got < TOTAL {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut tmp))
            .await
            .expect("timely: the proxy streams")
            .expect("read");
        assert!(n > 0, "closed after {got} bytes");
        if head_seen {
            got += n;
        } else {
            head.extend_from_slice(&tmp[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                head_seen = true;
                got += head.len() - i - 4;
            }
        }
        let _ = read_tx.send(got);
    }
    assert_eq!(got, TOTAL);
    let _ = p;
}

/// An upgrade: the client's bytes sent right behind its request and the server's right
/// behind its `101` both reach the other side.
#[tokio::test]
async fn upgrade_carries_the_bytes_around_the_101() {
    let up = raw_upstream(|mut s, _head| async move {
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nserver-first")
            .await;
        let mut b = [0u8; 64];
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 || s.write_all(&b[..n]).await.is_err() {
                break;
            }
        }
    })
    .await;
    let p = proxy(up, Some(vec![get("/ws")])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nclient-first",
    )
    .await
    .expect("write");
    let head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n";
    let want = [&head[..], b"server-first", b"client-first"].concat();
    assert_eq!(read_n(&mut s, want.len()).await, want);
}

/// `Expect: 100-continue`: the interim response reaches the client before it sends the body.
#[tokio::test]
async fn expect_continue() {
    let (up, _) = upstream(false).await;
    let p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"POST /c HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .await
    .expect("write");
    let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
    assert_eq!(read_n(&mut s, cont.len()).await, cont);
    s.write_all(b"body").await.expect("write");
    let mut buf = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut buf).await,
        (200, "POST /c x-env=- bytes=4".into())
    );
}

/// A response to HEAD has no body even with a length; one without a length ends when the
/// server closes, and then the client's connection closes too.
#[tokio::test]
async fn head_and_close_delimited_responses() {
    let up = raw_upstream(|mut s, head| async move {
        if head.starts_with(b"HEAD") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                .await;
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(b[0]);
            }
        }
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil close").await;
    })
    .await;
    let p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .expect("write");
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
    assert_eq!(read_n(&mut s, head.len()).await, head);
    s.write_all(req("/").as_bytes()).await.expect("write");
    let want = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
    // read_n stops at the close: exactly the response, then EOF.
    assert_eq!(read_n(&mut s, usize::MAX).await, want);
}

/// Framing the proxy cannot trust: a clear 400 and a record, never a panic or a hang.
#[tokio::test]
async fn malformed_framing_is_refused() {
    let (up, _) = upstream(false).await;
    for (raw, reason) in [
        (
            &b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "both transfer-encoding and content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3, 4\r\n\r\n",
            "conflicting content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: -3\r\n\r\n",
            "invalid content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip\r\n\r\n",
            "does not end in chunked",
        ),
    ] {
        let mut p = proxy(up, Some(vec![HttpMatch::default()])).await;
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(raw).await.expect("write");
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf).await.0, 400);
        let recs = p.records(2).await;
        assert!(
            recs[0].reason.as_deref().is_some_and(|r| r.contains(reason)),
            "{recs:#?}"
        );
        assert_eq!(recs[1].code, 400);
    }
    // A broken chunk in a body already on its way: the connection is closed.
    let p = proxy(up, Some(vec![HttpMatch::default()])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await
        .expect("write");
    let mut tmp = [0u8; 256];
    loop {
        match tokio::time::timeout(T, s.read(&mut tmp))
            .await
            .expect("timely")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A denied request that waits for `100 Continue` gets its 403 at once (its body never
/// comes), and the connection closes.
#[tokio::test]
async fn denied_expect_continue_is_answered_at_once() {
    let (up, _) = upstream(false).await;
    let p = proxy(up, Some(vec![get("/public")])).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut buf).await,
        (403, ACCESS_DENIED_BODY.into())
    );
    assert_eq!(read_n(&mut s, 1).await, b"");
}

/// Draining: a request in flight when the proxy is asked to stop is answered, with
/// `connection: close`, then the connection closes; an idle one closes at once.
#[tokio::test]
async fn drain_finishes_the_request_in_flight_then_closes() {
    let (go_tx, go_rx) = watch::channel(false);
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let up = raw_upstream(move |mut s, _head| {
        let go_rx = go_rx.clone();
        async move {
            let _ = go_rx.lock().await.wait_for(|go| *go).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let policy = Arc::new(Policy::default());
    policy
        .apply(&ProxyCommand::Snapshot {
            revision: 1,
            redirects: vec![redirect(up.port(), vec![HttpMatch::default()])],
        })
        .expect("policy");
    let (tx, _rx) = mpsc::channel(1024);
    let engine = Arc::new(Engine {
        policy,
        identities: Arc::new(StaticIdentities::default()),
        events: tx.into(),
        config: EngineConfig::default(),
        counters: Counters::default(),
    });
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (stop_tx, stop) = watch::channel(false);
    let e2 = engine.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, SocketAddr::V4(peer))) = l.accept().await else {
                return;
            };
            tokio::spawn(e2.clone().serve(s, peer, up, true, stop.clone()));
        }
    });
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(req("/first").as_bytes())
        .await
        .expect("write");
    busy.write_all(req("/slow").as_bytes())
        .await
        .expect("write");
    // The idle connection's first request waits for the upstream too: let both through, then
    // hold the next one on `busy`.
    go_tx.send(true).expect("go");
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut idle, &mut buf).await.0, 200);
    let mut buf2 = Vec::new();
    assert_eq!(read_response(&mut busy, &mut buf2).await.0, 200);
    go_tx.send(false).expect("hold");
    busy.write_all(req("/held").as_bytes())
        .await
        .expect("write");
    // Until the proxy has the request, the drain would close the connection under it.
    while engine.counters.requests.load(Ordering::Relaxed) < 3 {
        tokio::task::yield_now().await;
    }
    stop_tx.send(true).expect("stop");
    assert_eq!(
        read_n(&mut idle, 1).await,
        b"",
        "the idle connection closes"
    );
    go_tx.send(true).expect("go");
    let got = String::from_utf8(read_n(&mut busy, usize::MAX).await).expect("utf-8");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nok"), "{got}");
}
