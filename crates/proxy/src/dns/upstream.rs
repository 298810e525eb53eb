//! How queries reach the resolver: over TCP, the pod's connection gets one of its own; over
//! UDP, a small pool of connected sockets per resolver, shared by every pod's queries.
//!
//! Why a pool, and why this one. A fresh socket per UDP query (the first design) costs
//! socket, connect, getsockname, two epoll registrations and close on top of the send and the
//! receive: most of the proxy's syscalls per query. Its point was spoofing resistance: an
//! answer forged from outside must guess the source port as well as the 16-bit id. The pool
//! keeps most of that, the way dnsdist keeps a set of sockets per backend and unbound a range
//! of random ports:
//!
//! - each socket's port is the kernel's choice, which Linux randomizes for UDP binds to port
//!   0, and each socket is connected, so the kernel delivers it nothing but the resolver's
//!   address and port;
//! - a query takes one of [`SOCKETS_PER_RESOLVER`] sockets at random: a blind spoofer must
//!   hit one of 4 unknown ports (2 bits less than one port per query) and the id, and the
//!   answer must still carry the query's question ([`super::message::inspect_answer`]);
//! - a socket is replaced by a new random port after a random number of queries
//!   ([`ROTATE_MIN`]..[`ROTATE_MAX`]): a port seen on the wire is good for a few hundred
//!   queries only.
//!
//! Answers on a shared socket are matched to their query by id (the query goes unchanged, so
//! the id is the pod's). Two pods asking the same resolver with the same id at once take
//! different sockets; when all of them have that id in flight, the query gets a socket of its
//! own as before. Each socket has one reading task (not one per query).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{oneshot, Notify};

use super::{message, tcp, Transport, MAX_MESSAGE};

/// UDP sockets kept per resolver.
pub const SOCKETS_PER_RESOLVER: usize = 4;
/// The fewest queries a UDP socket carries before it is replaced by a new random port.
pub const ROTATE_MIN: u64 = 256;
/// The most (exclusive).
pub const ROTATE_MAX: u64 = 1024;
/// Resolvers with pooled sockets; beyond, the pool starts over (the sockets in use finish).
const RESOLVERS: usize = 64;

/// How the proxy reaches the resolver for one flow.
#[derive(Debug, Default)]
pub struct Upstream {
    /// TCP: the connection for the pod's connection (opened at its first query).
    tcp: Option<TcpStream>,
    /// UDP: the shared sockets; without them, a socket per query.
    udp: Option<Arc<UdpPool>>,
}

impl Upstream {
    /// UDP queries through `pool`'s shared sockets.
    pub fn pooled(pool: Arc<UdpPool>) -> Self {
        Self {
            tcp: None,
            udp: Some(pool),
        }
    }

    /// Sends `query` to `resolver` the way the pod did and returns the answer with the same
    /// id. The caller bounds the wait.
    pub(super) async fn exchange(
        &mut self,
        transport: Transport,
        resolver: SocketAddrV4,
        query: &[u8],
        id: u16,
    ) -> Result<Vec<u8>, String> {
        match transport {
            Transport::Udp => match &self.udp {
                Some(pool) => pool.exchange(resolver, query, id).await,
                None => udp_exchange(resolver, query, id).await,
            },
            Transport::Tcp => {
                let r = self.tcp_exchange(resolver, query).await;
                if r.is_err() {
                    // A broken connection is not reused; the next query opens another.
                    self.tcp = None;
                }
                r
            }
        }
    }

    async fn tcp_exchange(
        &mut self,
        resolver: SocketAddrV4,
        query: &[u8],
    ) -> Result<Vec<u8>, String> {
        if self.tcp.is_none() {
            let s = TcpStream::connect(resolver)
                .await
                .map_err(|e| format!("connecting to {resolver}: {e}"))?;
            let _ = s.set_nodelay(true);
            self.tcp = Some(s);
        }
        let Some(s) = self.tcp.as_mut() else {
            return Err("no upstream connection".into());
        };
        let len = u16::try_from(query.len()).map_err(|_| "query too long".to_owned())?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        s.write_all(&framed)
            .await
            .map_err(|e| format!("writing to {resolver}: {e}"))?;
        tcp::read_message(s)
            .await
            .map_err(|e| format!("reading from {resolver}: {e}"))?
            .ok_or_else(|| format!("{resolver} closed the connection"))
    }
}

/// A UDP socket connected to `resolver` from the node's own address and a random port.
fn connected_socket(resolver: SocketAddrV4) -> Result<UdpSocket, String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("upstream socket: {e}"))?;
    s.connect(resolver)
        .map_err(|e| format!("connecting to {resolver}: {e}"))?;
    // The query leaves from the node's own address: a node with none (a bare network
    // namespace) would send it from 0.0.0.0, and nothing could answer.
    if s.local_addr().is_ok_and(|a| a.ip().is_unspecified()) {
        return Err(format!(
            "the node has no address to ask {resolver} from (the DNS proxy queries from the node's own address)"
        ));
    }
    s.set_nonblocking(true)
        .map_err(|e| format!("upstream socket: {e}"))?;
    UdpSocket::from_std(s).map_err(|e| format!("upstream socket: {e}"))
}

/// One query on a socket of its own (no pool, or every pooled socket has its id in flight).
async fn udp_exchange(resolver: SocketAddrV4, query: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let s = connected_socket(resolver)?;
    s.send(query)
        .await
        .map_err(|e| format!("sending to {resolver}: {e}"))?;
    loop {
        // Room for the largest answer, not zeroed; shrunk to the answer, which may be held for
        // the agent a while.
        let mut buf = Vec::with_capacity(MAX_MESSAGE);
        s.recv_buf(&mut buf)
            .await
            .map_err(|e| format!("receiving from {resolver}: {e}"))?;
        // Anything else on this port is not the answer (the socket is connected, so it came
        // from the resolver, but a stray or late datagram must not answer this query).
        if message::header_id(&buf) == Some(id) {
            buf.shrink_to_fit();
            return Ok(buf);
        }
    }
}

/// The UDP sockets shared by the queries of one DNS listener, per resolver.
#[derive(Debug)]
pub struct UdpPool {
    by_resolver: Mutex<HashMap<SocketAddrV4, Vec<Arc<Shared>>>>,
    /// Keyed randomness: which socket a query takes, how long a socket lives.
    random: RandomState,
    draws: AtomicU64,
    /// How long a replaced socket keeps reading for the answers still due on it.
    linger: Duration,
}

/// The queries in flight on one socket, by id: the query's ticket (see [`Waiter`]) and where
/// its answer goes.
type InFlight = HashMap<u16, (u64, oneshot::Sender<Vec<u8>>)>;

/// A query registered on a pooled socket: the socket, its ticket, its answer to come.
type Claimed = (Arc<Shared>, u64, oneshot::Receiver<Vec<u8>>);

/// One pooled socket: the queries in flight on it by id, and its reading task's state.
#[derive(Debug)]
struct Shared {
    socket: UdpSocket,
    waiting: Mutex<InFlight>,
    /// Queries left before the socket is replaced.
    left: AtomicU64,
    /// Wakes the reading task when the socket leaves the pool.
    retired: Notify,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes a query's place on a pooled socket back when the query ends (answered, timed out,
/// or dropped with its task), unless a later query with the same id holds it already (the
/// answer was handed over, and the id taken again, before this query ran on).
struct Waiter<'a> {
    shared: &'a Shared,
    id: u16,
    ticket: u64,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiting = self.shared.waiting();
        if waiting
            .get(&self.id)
            .is_some_and(|(t, _)| *t == self.ticket)
        {
            waiting.remove(&self.id);
        }
    }
}

impl UdpPool {
    /// An empty pool; `linger`: how long a replaced socket still reads answers (the
    /// upstream timeout).
    pub fn new(linger: Duration) -> Self {
        Self {
            by_resolver: Mutex::default(),
            random: RandomState::new(),
            draws: AtomicU64::new(0),
            linger,
        }
    }

    fn draw(&self) -> u64 {
        self.random
            .hash_one(self.draws.fetch_add(1, Ordering::Relaxed))
    }

    /// Sockets open now (for tests and counters).
    pub fn sockets(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddrV4, Vec<Arc<Shared>>>> {
        self.by_resolver.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socket for `resolver` without `id` in flight, with the query registered on it; None
    /// when every socket has it.
    fn claim(&self, resolver: SocketAddrV4, id: u16) -> Result<Option<Claimed>, String> {
        let start = usize::try_from(self.draw() % SOCKETS_PER_RESOLVER as u64).unwrap_or(0);
        let mut pool = self.lock();
        if !pool.contains_key(&resolver) && pool.len() >= RESOLVERS {
            for s in pool.drain().flat_map(|(_, v)| v) {
                s.retired.notify_one();
            }
        }
        let sockets = pool.entry(resolver).or_default();
        for k in 0..SOCKETS_PER_RESOLVER {
            let slot = (start + k) % SOCKETS_PER_RESOLVER;
            while sockets.len() <= slot {
                let s = self.open(resolver)?;
                sockets.push(s);
            }
            let shared = sockets[slot].clone();
            let (tx, rx) = oneshot::channel();
            let ticket = self.draws.fetch_add(1, Ordering::Relaxed);
            {
                let mut waiting = shared.waiting();
                if waiting.contains_key(&id) {
                    continue;
                }
                waiting.insert(id, (ticket, tx));
            }
            // The last query of this socket: a new random port takes its place for the next
            // (this one still reads the answers due on it).
            if shared.left.fetch_sub(1, Ordering::Relaxed) <= 1 {
                let fresh = self.open(resolver)?;
                sockets[slot] = fresh;
                shared.retired.notify_one();
            }
            return Ok(Some((shared, ticket, rx)));
        }
        Ok(None)
    }

    /// A new socket in the pool, with its reading task.
    fn open(&self, resolver: SocketAddrV4) -> Result<Arc<Shared>, String> {
        let socket = connected_socket(resolver)?;
        let life = ROTATE_MIN + self.draw() % (ROTATE_MAX - ROTATE_MIN);
        let shared = Arc::new(Shared {
            socket,
            waiting: Mutex::default(),
            left: AtomicU64::new(life),
            retired: Notify::new(),
        });
        tokio::spawn(read_answers(shared.clone(), self.linger));
        Ok(shared)
    }

    /// Sends `query` to `resolver` on a pooled socket and waits for the answer with its id.
    pub async fn exchange(
        &self,
        resolver: SocketAddrV4,
        query: &[u8],
        id: u16,
    ) -> Result<Vec<u8>, String> {
        let Some((shared, ticket, answer)) = self.claim(resolver, id)? else {
            return udp_exchange(resolver, query, id).await;
        };
        let _waiter = Waiter {
            shared: &shared,
            id,
            ticket,
        };
        shared
            .socket
            .send(query)
            .await
            .map_err(|e| format!("sending to {resolver}: {e}"))?;
        answer
            .await
            .map_err(|_| format!("the socket to {resolver} failed before the answer"))
    }
}

impl Drop for UdpPool {
    fn drop(&mut self) {
        for s in self.lock().drain().flat_map(|(_, v)| v) {
            s.retired.notify_one();
        }
    }
}

/// Reads a pooled socket's answers and hands each to the query with its id (anything else is
/// a stray or late datagram: dropped). Ends once the socket is out of the pool and nothing
/// waits on it, or `linger` after it left the pool.
async fn read_answers(shared: Arc<Shared>, linger: Duration) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(deadline);
    let mut retired = false;
    loop {
        tokio::select! {
            got = shared.socket.recv(&mut buf) => match got {
                Ok(n) => {
                    // So do answers (a resolver, or someone in its place, sending many).
                    crate::rt_budget::check();
                    let answer = &buf[..n];
                    let waiter = message::header_id(answer).and_then(|id| shared.waiting().remove(&id));
                    if let Some((_, tx)) = waiter {
                        let _ = tx.send(answer.to_vec());
                    }
                }
                // An ICMP error (the resolver's port closed) ends every query on the socket
                // early: they are answered SERVFAIL as on a timeout, and new ones go elsewhere.
                Err(_) => {
                    shared.waiting().clear();
                    if !retired {
                        // Out of the pool at its next use: its queries count runs out.
                        shared.left.store(1, Ordering::Relaxed);
                    }
                }
            },
            () = shared.retired.notified(), if !retired => {
                retired = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + linger);
            }
            () = &mut deadline, if retired => return,
        }
        if retired && shared.waiting().is_empty() {
            return;
        }
    }
}
