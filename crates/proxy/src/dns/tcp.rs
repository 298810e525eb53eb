//! DNS over TCP: the supervisor's transparent listener, RFC 1035's 2-byte length framing,
//! several queries per connection (answered in order), one upstream connection per pod
//! connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ciliate_model::l7::{DnsRecord, L7RecordType, L7Verdict, ProxyEvent};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{DnsProxy, Flow, Transport, Upstream};

/// How long a pod's connection may sit between queries.
const IDLE: Duration = Duration::from_secs(10);
/// How long the rest of a message may take once its length arrived.
const BODY: Duration = Duration::from_secs(5);

/// Reads one length-prefixed message; `None` at the end of the stream before a new one.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = usize::from(u16::from_be_bytes(len));
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a zero-length message",
        ));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Accepts pods' connections until `stop`; returns the connections still being served.
pub async fn serve(
    proxy: Arc<DnsProxy>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "DNS over TCP listening");
    }
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        // A flood of connections counts against the real-time budget as one of queries does.
        crate::rt_budget::check();
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "DNS accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (Some(client), Some(resolver)) = (
            super::udp::v4(peer),
            stream.local_addr().ok().and_then(super::udp::v4),
        ) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let flow = Flow {
            client,
            resolver,
            transport: Transport::Tcp,
        };
        conns.spawn(serve_conn(proxy.clone(), stream, flow, stop.clone()));
    }
    conns
}

async fn serve_conn(
    proxy: Arc<DnsProxy>,
    mut stream: TcpStream,
    flow: Flow,
    mut stop: watch::Receiver<bool>,
) {
    let counters = &proxy.engine.counters;
    counters.connections.fetch_add(1, Ordering::Relaxed);
    counters.active.fetch_add(1, Ordering::Relaxed);
    let mut upstream = Upstream::default();
    loop {
        let mut len = [0u8; 2];
        let got = tokio::select! {
            r = tokio::time::timeout(IDLE, stream.read_exact(&mut len)) => r,
            _ = stop.changed() => break,
        };
        match got {
            Ok(Ok(_)) => {}
            // Idle, closed, or reset between messages: nothing was cut short.
            Ok(Err(_)) | Err(_) => break,
        }
        let n = usize::from(u16::from_be_bytes(len));
        let mut body = vec![0u8; n];
        let complete = n > 0
            && matches!(
                tokio::time::timeout(BODY, stream.read_exact(&mut body)).await,
                Ok(Ok(_))
            );
        if !complete {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            let reason = if n == 0 {
                "a zero-length TCP message".to_owned()
            } else {
                format!("truncated TCP message: the length says {n} bytes")
            };
            debug!(client = %flow.client, %reason, "closing the DNS connection");
            error_record(&proxy, flow, reason);
            break;
        }
        let Some(answer) = proxy.handle(&body, flow, &mut upstream).await else {
            break;
        };
        let Ok(alen) = u16::try_from(answer.len()) else {
            break;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&alen.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    counters.active.fetch_sub(1, Ordering::Relaxed);
}

fn error_record(proxy: &DnsProxy, flow: Flow, reason: String) {
    let ident = &proxy.engine.identities;
    let r = DnsRecord {
        time_ns: super::now_ns(),
        record_type: L7RecordType::Request,
        endpoint: 0,
        source: flow.client,
        destination: flow.resolver,
        proto: 6,
        source_identity: ident.identity_of(*flow.client.ip()),
        destination_identity: ident.identity_of(*flow.resolver.ip()),
        verdict: L7Verdict::Error,
        rule: 0,
        query: String::new(),
        qtypes: Vec::new(),
        rcode: 0,
        ips: Vec::new(),
        ttl: 0,
        cnames: Vec::new(),
        rrtypes: Vec::new(),
        latency_ns: 0,
        reason: Some(reason),
    };
    let _ = proxy.emit(ProxyEvent::Dns(Box::new(r)));
}
