//! DNS over UDP: the supervisor's transparent datagram socket (each query says which resolver
//! it was for: IP_RECVORIGDSTADDR), and the answers sent to the pod from that resolver's
//! address and port, as the pod expects them (a connected socket takes nothing else).

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::timing::{self, Clock};
use super::{DnsProxy, Flow, Transport, UdpPool, Upstream, MAX_MESSAGE};

/// Queries handled at once; more wait in the socket's buffer. Bounds the memory of a flood
/// with a slow resolver: at most this many upstream receive buffers (64 KiB) at a time.
const IN_FLIGHT: usize = 1024;
/// Reply sockets kept (one per resolver address); beyond, the cache starts over.
const REPLY_SOCKETS: usize = 1024;

/// An IPv4 (or v4-mapped) socket address.
pub fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// Takes ownership of an inherited fd after checking it is a UDP socket.
pub fn socket_from_fd(fd: RawFd) -> Result<std::net::UdpSocket, String> {
    // SAFETY: fcntl on an arbitrary number only queries it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("fd {fd} is not open in this process"));
    }
    // SAFETY: the fd is open and from here on owned by this socket only (main refuses the
    // same fd twice).
    let sock = unsafe { socket2::Socket::from_raw_fd(fd) };
    if sock.r#type().ok() != Some(socket2::Type::DGRAM) {
        std::mem::forget(sock);
        return Err(format!("fd {fd} is not a UDP socket"));
    }
    sock.set_nonblocking(true)
        .map_err(|e| format!("fd {fd}: {e}"))?;
    Ok(sock.into())
}

/// One datagram and where it was going.
fn recv_one(
    fd: RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddrV4, Option<SocketAddrV4>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in);
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let from = msg
        .address
        .map(SocketAddrV4::from)
        .ok_or_else(|| std::io::Error::other("a datagram without a source address"))?;
    let mut orig = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::Ipv4OrigDstAddr(sa) = c {
                orig = Some(SocketAddrV4::new(
                    u32::from_be(sa.sin_addr.s_addr).into(),
                    u16::from_be(sa.sin_port),
                ));
            }
        }
    }
    Ok((msg.bytes, from, orig))
}

/// Sockets bound (IP_TRANSPARENT) to resolvers' addresses, to answer pods from there.
///
/// One per resolver is kept when the resolver's address is not the node's: nothing is ever
/// delivered to such a socket (packets for a foreign address are forwarded, and the pods'
/// queries are assigned to the proxy's own socket), so it only sends. An address of the node
/// (a node-local resolver) gets a socket per answer instead: kept bound beside the resolver's
/// own socket, it could take queries meant for the resolver.
#[derive(Debug, Default)]
struct ReplySockets {
    by_addr: Mutex<HashMap<SocketAddrV4, Arc<UdpSocket>>>,
}

/// Whether `ip` is an address of this node (a plain socket may bind it).
fn is_local(ip: std::net::Ipv4Addr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

impl ReplySockets {
    fn get(&self, resolver: SocketAddrV4) -> std::io::Result<Arc<UdpSocket>> {
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&resolver) {
            return Ok(s.clone());
        }
        let s = Arc::new(bind_transparent(resolver)?);
        if is_local(*resolver.ip()) {
            return Ok(s);
        }
        if map.len() >= REPLY_SOCKETS {
            map.clear();
        }
        map.insert(resolver, s.clone());
        Ok(s)
    }
}

fn bind_transparent(resolver: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_ip_transparent_v4(true)?;
    // A resolver socket of the node itself may hold the port (with SO_REUSEADDR too).
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(resolver).into())?;
    UdpSocket::from_std(s.into())
}

/// Serves queries until `stop`; returns the queries still being answered. The socket stays
/// open in the supervisor (and the next proxy): datagrams not read here wait for it.
///
/// The queries in flight are futures of this one task, not a task each: a task per query
/// cost an allocation, a trip through the scheduler's queue and a wake-up of its own, for
/// work that is mostly waiting on the resolver.
pub async fn serve(
    proxy: Arc<DnsProxy>,
    sock: std::net::UdpSocket,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut queries = JoinSet::new();
    let sock = match UdpSocket::from_std(sock) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "DNS UDP socket");
            return queries;
        }
    };
    if let Ok(a) = sock.local_addr() {
        info!(addr = %a, "DNS over UDP listening");
    }
    let replies = Arc::new(ReplySockets::default());
    let upstreams = Arc::new(UdpPool::new(proxy.config.upstream_timeout));
    let mut in_flight = FuturesUnordered::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let fd = sock.as_raw_fd();
    loop {
        let got = tokio::select! {
            r = sock.async_io(Interest::READABLE, || recv_one(fd, &mut buf)), if in_flight.len() < IN_FLIGHT => r,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            _ = stop.changed() => break,
        };
        let received = std::time::Instant::now();
        let (n, client, orig) = match got {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "DNS receive");
                continue;
            }
        };
        let Some(resolver) = orig else {
            warn!(%client, "a datagram without its original destination; dropped");
            continue;
        };
        let flow = Flow {
            client,
            resolver,
            transport: Transport::Udp,
        };
        in_flight.push(answer(
            proxy.clone(),
            buf[..n].to_vec(),
            flow,
            replies.clone(),
            upstreams.clone(),
            sock.clone(),
            timing::enabled().map(|_| Clock::new(received)),
        ));
    }
    // The queries read already are answered by a task of their own while the caller drains.
    if !in_flight.is_empty() {
        queries.spawn(async move { while in_flight.next().await.is_some() {} });
    }
    queries
}

/// Answers one query of `flow`.
async fn answer(
    proxy: Arc<DnsProxy>,
    bytes: Vec<u8>,
    flow: Flow,
    replies: Arc<ReplySockets>,
    upstreams: Arc<UdpPool>,
    sock: Arc<UdpSocket>,
    mut clock: Option<Clock>,
) {
    let Some(answer) = proxy
        .handle_timed(
            &bytes,
            flow,
            &mut Upstream::pooled(upstreams),
            clock.as_mut(),
        )
        .await
    else {
        return;
    };
    let (client, resolver) = (flow.client, flow.resolver);
    let sent = if proxy.config.transparent {
        match replies.get(resolver) {
            Ok(s) => s.send_to(&answer, client).await,
            Err(e) => Err(e),
        }
    } else {
        sock.send_to(&answer, client).await
    };
    if let (Some(c), Some(t)) = (clock, timing::enabled()) {
        c.finish(t);
    }
    if let Err(e) = sent {
        proxy
            .engine
            .counters
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(%client, %resolver, error = %e, "answering the pod");
    }
}
