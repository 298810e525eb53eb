//! Accept loops over the listening sockets the supervisor created and the proxy inherited,
//! on the main thread, which gives each new connection to the serving thread with the fewest
//! open connections.
//!
//! The accepted socket's local address is the original destination (the datapath assigned the
//! packet to our transparent socket without rewriting it). On shutdown the loops stop
//! accepting (connections still queued are left to the next proxy, which accepts on the same
//! sockets), connections finish their requests in flight, and [`Listeners::drain`] waits for
//! them up to a deadline.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ciliate_model::l7::L7Parser;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::engine::Engine;

/// One inherited listening socket and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    /// Egress (the endpoint connects) or ingress.
    pub egress: bool,
    /// The parser.
    pub parser: L7Parser,
    /// The inherited file descriptor.
    pub fd: RawFd,
}

impl std::str::FromStr for ListenSpec {
    type Err = String;

    /// `egress:http=3`, `ingress:http=4` or `egress:dns=5`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (what, fd) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected DIRECTION:PARSER=FD, e.g. egress:http=3"))?;
        let (dir, parser) = what
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected DIRECTION:PARSER=FD, e.g. egress:http=3"))?;
        let egress = match dir {
            "egress" => true,
            "ingress" => false,
            d => {
                return Err(format!(
                    "{s:?}: direction {d:?} is neither egress nor ingress"
                ))
            }
        };
        let parser = match parser {
            "http" => L7Parser::Http,
            // DNS over TCP (egress only); its UDP socket comes with --dns-udp.
            "dns" if egress => L7Parser::Dns,
            "dns" => return Err(format!("{s:?}: DNS is egress only")),
            p => return Err(format!("{s:?}: unknown parser {p:?} (known: http, dns)")),
        };
        let fd: RawFd = fd
            .parse()
            .map_err(|_| format!("{s:?}: {fd:?} is not a file descriptor number"))?;
        if fd < 3 {
            return Err(format!("{s:?}: fd {fd} is stdin/stdout/stderr"));
        }
        Ok(Self { egress, parser, fd })
    }
}

/// Takes ownership of an inherited fd after checking it is a listening TCP socket.
pub fn listener_from_fd(spec: &ListenSpec) -> Result<TcpListener, String> {
    // SAFETY: fcntl on an arbitrary number only queries it.
    if unsafe { libc::fcntl(spec.fd, libc::F_GETFD) } < 0 {
        return Err(format!("fd {} is not open in this process", spec.fd));
    }
    // SAFETY: the fd is open and, from here on, owned by this socket only (the flag parser
    // refuses the same fd twice).
    let sock = unsafe { socket2::Socket::from_raw_fd(spec.fd) };
    let listening = sock.is_listener().unwrap_or(false);
    let stream = sock
        .r#type()
        .map(|t| t == socket2::Type::STREAM)
        .unwrap_or(false);
    if !listening || !stream {
        // Do not close what we were wrongly given.
        std::mem::forget(sock);
        return Err(format!("fd {} is not a listening TCP socket", spec.fd));
    }
    sock.set_nonblocking(true)
        .map_err(|e| format!("fd {}: {e}", spec.fd))?;
    let std_listener: std::net::TcpListener = sock.into();
    TcpListener::from_std(std_listener).map_err(|e| format!("fd {}: {e}", spec.fd))
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// The running accept loops and their connections.
#[derive(Debug)]
pub struct Listeners {
    stop_accepting: watch::Sender<bool>,
    stop_connections: watch::Sender<bool>,
    loops: JoinSet<JoinSet<()>>,
    engine: Arc<Engine>,
    workers: Arc<Workers>,
}

/// The runtimes that serve connections, each with its count of open connections.
#[derive(Debug)]
struct Workers {
    runtimes: Vec<tokio::runtime::Handle>,
    open: Vec<Arc<AtomicUsize>>,
}

impl Workers {
    /// The runtime with the fewest open connections (the first of equals): the kernel would
    /// give a burst of new connections to whichever accept loop woke first, and a thread
    /// holding all of them leaves the others idle at the maximum rate.
    fn least_loaded(&self) -> usize {
        (0..self.open.len())
            .min_by_key(|&i| self.open[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// Accepts until `stop` and hands each connection to the least loaded runtime; returns the
/// connections still open.
async fn accept_loop(
    engine: Arc<Engine>,
    l: TcpListener,
    egress: bool,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
    conn_stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = l.accept() => a,
            _ = stop.changed() => break,
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let local = stream.local_addr();
        let (Some(client), Ok(Some(dst))) = (v4(peer), local.map(v4)) else {
            debug!(%peer, "not IPv4; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let i = workers.least_loaded();
        let open = workers.open[i].clone();
        open.fetch_add(1, Ordering::Relaxed);
        let (engine, conn_stop) = (engine.clone(), conn_stop.clone());
        if i == 0 {
            // This runtime (the accept loop's).
            conns.spawn(async move {
                engine.serve(stream, client, dst, egress, conn_stop).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
            continue;
        }
        // A socket is registered with the runtime it was made in: move it over.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                warn!(error = %e, %client, "moving a connection to another thread; closed");
                continue;
            }
        };
        conns.spawn_on(
            async move {
                match TcpStream::from_std(std_stream) {
                    Ok(stream) => engine.serve(stream, client, dst, egress, conn_stop).await,
                    Err(e) => warn!(error = %e, %client, "taking a connection over; closed"),
                }
                open.fetch_sub(1, Ordering::Relaxed);
            },
            &workers.runtimes[i],
        );
    }
    // Dropping `l` closes this copy of the socket; the supervisor's and the next proxy's
    // copies keep it listening.
    drop(l);
    conns
}

impl Listeners {
    /// Starts one accept loop per listener on the current runtime.
    pub fn start(engine: Arc<Engine>, listeners: Vec<(TcpListener, bool)>) -> Self {
        Self::start_on(engine, listeners, &[tokio::runtime::Handle::current()])
    }

    /// Starts one accept loop per listener on the current runtime (which must be the first
    /// of `runtimes`); each new connection is served whole by the runtime of `runtimes`
    /// with the fewest open connections, so with one single-threaded runtime per thread no
    /// request wakes another thread (on a VM, the wakeups cost more than the proxying) and
    /// the threads share the connections evenly.
    pub fn start_on(
        engine: Arc<Engine>,
        listeners: Vec<(TcpListener, bool)>,
        runtimes: &[tokio::runtime::Handle],
    ) -> Self {
        let (stop_accepting, _) = watch::channel(false);
        let (stop_connections, _) = watch::channel(false);
        let runtimes = if runtimes.is_empty() {
            vec![tokio::runtime::Handle::current()]
        } else {
            runtimes.to_vec()
        };
        let workers = Arc::new(Workers {
            open: runtimes.iter().map(|_| Arc::default()).collect(),
            runtimes,
        });
        let mut loops = JoinSet::new();
        for (l, egress) in listeners {
            if let Ok(a) = l.local_addr() {
                info!(addr = %a, direction = if egress { "egress" } else { "ingress" }, "listening");
            }
            loops.spawn(accept_loop(
                engine.clone(),
                l,
                egress,
                workers.clone(),
                stop_accepting.subscribe(),
                stop_connections.subscribe(),
            ));
        }
        Self {
            stop_accepting,
            stop_connections,
            loops,
            engine,
            workers,
        }
    }

    /// The open connections of each runtime, in the order of `start_on`'s `runtimes`.
    pub fn open_per_runtime(&self) -> Vec<usize> {
        self.workers
            .open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops accepting, asks connections to finish, and waits for them up to `deadline`.
    /// Returns how many were still open at the deadline.
    pub async fn drain(mut self, deadline: Duration) -> u64 {
        let _ = self.stop_accepting.send(true);
        let mut conns = Vec::new();
        while let Some(r) = self.loops.join_next().await {
            if let Ok(set) = r {
                conns.push(set);
            }
        }
        let _ = self.stop_connections.send(true);
        let wait = async {
            for mut set in conns {
                while set.join_next().await.is_some() {}
            }
        };
        if tokio::time::timeout(deadline, wait).await.is_err() {
            let left = self.engine.counters.active.load(Ordering::Relaxed);
            warn!(
                left,
                "drain deadline reached; closing the remaining connections"
            );
            return left;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ciliate_model::l7::{L7PeerRules, L7Redirect, ProxyCommand};
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::engine::{Counters, EngineConfig};
    use crate::identity::StaticIdentities;
    use crate::policy::Policy;

    /// A burst of connections is shared by the runtimes, not taken by the first to wake.
    #[test]
    fn new_connections_go_to_the_least_loaded_runtime() {
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let second_handle = second.handle().clone();
        let _second_thread = std::thread::spawn(move || {
            second.block_on(tokio::time::sleep(Duration::from_secs(30)))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = l.local_addr().expect("addr").port();
            // A redirect for these connections, so that each waits for its first bytes.
            let policy = Arc::new(Policy::default());
            policy
                .apply(&ProxyCommand::Snapshot {
                    revision: 1,
                    redirects: vec![L7Redirect {
                        endpoint: 1,
                        endpoint_ip: Ipv4Addr::LOCALHOST,
                        egress: true,
                        proto: 6,
                        port,
                        parser: L7Parser::Http,
                        proxy_port: port,
                        rules: vec![L7PeerRules::default()],
                    }],
                })
                .expect("policy");
            let (tx, _rx) = mpsc::channel(64);
            let engine = Arc::new(Engine {
                policy,
                identities: Arc::new(StaticIdentities::default()),
                events: tx.into(),
                config: EngineConfig::default(),
                counters: Counters::default(),
            });
            let runtimes = [tokio::runtime::Handle::current(), second_handle];
            let running = Listeners::start_on(engine.clone(), vec![(l, true)], &runtimes);
            let mut clients = Vec::new();
            for _ in 0..6 {
                let c = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                clients.push(c);
            }
            let mut open = Vec::new();
            for _ in 0..500 {
                open = running.open_per_runtime();
                if open.iter().sum::<usize>() == 6 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(open, vec![3, 3]);
            // Closing the clients ends their connections on both runtimes.
            for mut c in clients {
                let _ = c.shutdown().await;
            }
            assert_eq!(running.drain(Duration::from_secs(10)).await, 0);
            assert_eq!(engine.counters.active.load(Ordering::Relaxed), 0);
        });
    }
}
