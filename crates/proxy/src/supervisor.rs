//! What the agent runs the proxy with: the listening sockets, the `ciliate-proxy` process, its
//! restarts, and the control connection.
//!
//! The supervisor creates the transparent listening sockets (IP_TRANSPARENT, SO_REUSEADDR, in
//! the host network namespace, on the ProxyPorts) and keeps them for its whole life, passing
//! them to every proxy it starts as inherited descriptors. So:
//! - `kill -9` of the proxy refuses nothing: new connections wait in the sockets' backlog
//!   until the next proxy (started at once) accepts them;
//! - a graceful restart ([`Supervisor::restart`]) starts the new proxy first, gives it the
//!   policy, then sends SIGTERM to the old one, which stops accepting and finishes its requests
//!   in flight while the new one already accepts from the same sockets;
//! - the proxy runs in a process group of its own, so it survives the agent (`spawn` says why
//!   not in a session of its own). A new agent's supervisor adopts it ([`Supervisor::start`]
//!   finds its state file): it takes the listening sockets back from the running proxy with
//!   `pidfd_getfd`, reconnects to its control socket and sends the snapshot; traffic never
//!   stops.
//!
//! The DNS proxy's UDP socket (on `ports.dns`, with its TCP listener) is held the same way: a
//! datagram sent while no proxy runs waits in the socket's receive buffer for the next one, so
//! no query is lost to a restart.
//!
//! After every (re)start and reconnect the whole policy is sent again as a Snapshot.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ciliate_model::l7::{L7Redirect, ProxyCommand, ProxyEvent, ProxyPorts, ProxyStats};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, Mutex as AsyncMutex};
use tracing::{info, warn};

use crate::control::{ControlClient, ControlWriter};

/// Why the supervisor could not do something.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A listening socket could not be made.
    #[error("proxy listener on {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddrV4,
        /// Why.
        source: std::io::Error,
    },
    /// The run directory could not be made.
    #[error("proxy run directory {path}: {source}")]
    RunDir {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The supervisor has stopped.
    #[error("the proxy supervisor has stopped")]
    Stopped,
}

/// How to run the proxy.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The `ciliate-proxy` binary.
    pub binary: PathBuf,
    /// Where control sockets and the state file live (e.g. `/run/ciliate/proxy`).
    pub run_dir: PathBuf,
    /// The listening ports (0: any free port, for tests).
    pub ports: ProxyPorts,
    /// The listening address (0.0.0.0 on a node; the datapath assigns sockets itself).
    pub listen_ip: Ipv4Addr,
    /// IP_TRANSPARENT on the listeners, and upstream connections from the client's address.
    pub transparent: bool,
    /// Passed as `--bpf-pin-dir` (peer identities).
    pub bpf_pin_dir: Option<PathBuf>,
    /// Passed as `--drain-timeout`.
    pub drain_timeout: Duration,
    /// More arguments (e.g. `--log debug`).
    pub extra_args: Vec<String>,
}

/// What one socket the supervisor holds is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SocketKind {
    /// HTTP (and Kafka), connections endpoints open.
    #[default]
    HttpEgress,
    /// HTTP (and Kafka), connections towards endpoints.
    HttpIngress,
    /// DNS over TCP (a listener).
    DnsTcp,
    /// DNS over UDP (one datagram socket for every query).
    DnsUdp,
}

impl SocketKind {
    fn egress(self) -> bool {
        self != Self::HttpIngress
    }

    /// The proxy's flag passing a socket of this kind.
    fn arg(self, fd: RawFd) -> [String; 2] {
        match self {
            Self::HttpEgress => ["--listen".into(), format!("egress:http={fd}")],
            Self::HttpIngress => ["--listen".into(), format!("ingress:http={fd}")],
            Self::DnsTcp => ["--listen".into(), format!("egress:dns={fd}")],
            Self::DnsUdp => ["--dns-udp".into(), fd.to_string()],
        }
    }
}

/// One listening socket as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// The port.
    pub port: u16,
    /// Egress or ingress.
    pub egress: bool,
    /// What it carries.
    #[serde(default)]
    pub kind: SocketKind,
}

/// The proxy as the agent reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// A proxy process is running and its control connection is up.
    pub up: bool,
    /// Its pid.
    pub pid: Option<u32>,
    /// How many times it was started after the first (crashes, kills, graceful restarts).
    pub restarts: u64,
    /// The listening sockets.
    pub listeners: Vec<ListenerStatus>,
    /// The last revision the proxy confirmed in force.
    pub applied_revision: Option<u64>,
    /// The last revision sent.
    pub desired_revision: u64,
    /// Redirects sent.
    pub redirects: usize,
    /// The proxy's counters, as last reported.
    pub stats: Option<ProxyStats>,
    /// Why it is not up, or the last thing that went wrong.
    pub last_error: Option<String>,
    /// Adopted from an earlier agent.
    pub adopted: bool,
}

/// What a supervisor leaves for the next one (after an agent restart).
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    pid: u32,
    control_socket: PathBuf,
    /// HTTP listeners: (fd number in the proxy, egress).
    listeners: Vec<(RawFd, bool)>,
    /// The DNS sockets (absent in a state file of a supervisor without DNS).
    #[serde(default)]
    dns: Vec<(RawFd, SocketKind)>,
}

const STATE_FILE: &str = "proxy.json";

/// The sockets passed to every proxy generation.
type Listeners = Vec<(OwnedFd, SocketKind)>;

/// A running proxy: our child, or adopted from an earlier supervisor.
enum Proc {
    Child(tokio::process::Child),
    Adopted { pid: u32, pidfd: AsyncFd<OwnedFd> },
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Adopted { pid, .. } => Some(*pid),
        }
    }

    async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => match c.wait().await {
                Ok(s) => format!("exited: {s}"),
                Err(e) => format!("wait: {e}"),
            },
            // A pidfd becomes readable when the process exits.
            Proc::Adopted { pidfd, .. } => match pidfd.readable().await {
                Ok(_) => "exited".into(),
                Err(e) => format!("wait: {e}"),
            },
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }
}

struct State {
    /// The agent applied something (a snapshot is worth sending).
    has_policy: bool,
    desired: BTreeMap<u16, Vec<L7Redirect>>,
    revision: u64,
    writer: Option<Arc<AsyncMutex<ControlWriter>>>,
    /// Proxies draining after a graceful restart, by pid: their held DNS answers still wait
    /// for the FqdnAllowed of ids they issued (see [`crate::dns::gate`]).
    draining: BTreeMap<u32, Arc<AsyncMutex<ControlWriter>>>,
    status: ProxyStatus,
}

impl State {
    fn snapshot(&self) -> ProxyCommand {
        ProxyCommand::Snapshot {
            revision: self.revision,
            redirects: self.desired.values().flatten().cloned().collect(),
        }
    }
}

struct Inner {
    cfg: SupervisorConfig,
    listeners: Listeners,
    state: Mutex<State>,
    events: broadcast::Sender<ProxyEvent>,
    batches: broadcast::Sender<EventBatch>,
}

/// Events as they arrived together from the proxy, in order (see [`Supervisor::batches`]).
pub type EventBatch = Arc<Vec<ProxyEvent>>;

/// Events read from the control connection and passed on at once at most: with records two
/// per request, one batch (one wakeup of the agent's task, one lock of the observer's ring)
/// per read of the proxy's batched writes rather than per record.
const EVENT_BATCH: usize = 1024;

enum Request {
    Restart(tokio::sync::oneshot::Sender<Result<(), String>>),
    Shutdown(tokio::sync::oneshot::Sender<()>),
}

/// The agent's handle on the proxy.
#[derive(Debug)]
pub struct Supervisor {
    inner: Arc<Inner>,
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("cfg", &self.cfg).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates one transparent listening socket.
pub fn transparent_listener(
    addr: SocketAddrV4,
    transparent: bool,
) -> Result<OwnedFd, SupervisorError> {
    let err = |source| SupervisorError::Listen { addr, source };
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if transparent {
        // Lets the datapath assign connections for any destination to this socket.
        s.set_ip_transparent_v4(true).map_err(err)?;
    }
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    s.listen(4096).map_err(err)?;
    Ok(OwnedFd::from(s))
}

/// The DNS proxy's datagram socket: IP_TRANSPARENT (the datapath assigns queries for any
/// resolver to it), IP_RECVORIGDSTADDR (each datagram says which resolver it was for), and a
/// receive buffer big enough to hold the queries of a proxy restart.
pub fn transparent_udp_socket(
    addr: SocketAddrV4,
    transparent: bool,
) -> Result<OwnedFd, SupervisorError> {
    let err = |source| SupervisorError::Listen { addr, source };
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if transparent {
        s.set_ip_transparent_v4(true).map_err(err)?;
    }
    let fd = OwnedFd::from(s);
    set_int_opt(&fd, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1).map_err(err)?;
    // Beyond net.core.rmem_max when we may (root); else the largest the kernel grants.
    if set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, UDP_RCVBUF).is_err() {
        let _ = set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, UDP_RCVBUF);
    }
    socket2::SockRef::from(&fd)
        .bind(&SocketAddr::V4(addr).into())
        .map_err(err)?;
    Ok(fd)
}

/// The DNS socket's receive buffer: some 8,000 queries waiting for a restarted proxy.
const UDP_RCVBUF: i32 = 8 << 20;

fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: fd is an open socket; the value is a live i32 of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates every socket of `cfg`: the HTTP listeners (port 0: any free port) and, when
/// `ports.dns` is not 0, the DNS listener and datagram socket on that port.
fn open_sockets(cfg: &SupervisorConfig) -> Result<Listeners, SupervisorError> {
    let mut ls = Vec::new();
    for (port, kind) in [
        (cfg.ports.http_egress, SocketKind::HttpEgress),
        (cfg.ports.http_ingress, SocketKind::HttpIngress),
    ] {
        let fd = transparent_listener(SocketAddrV4::new(cfg.listen_ip, port), cfg.transparent)?;
        ls.push((fd, kind));
    }
    if cfg.ports.dns != 0 {
        let addr = SocketAddrV4::new(cfg.listen_ip, cfg.ports.dns);
        ls.push((
            transparent_listener(addr, cfg.transparent)?,
            SocketKind::DnsTcp,
        ));
        ls.push((
            transparent_udp_socket(addr, cfg.transparent)?,
            SocketKind::DnsUdp,
        ));
    }
    Ok(ls)
}

fn local_port(fd: &OwnedFd) -> u16 {
    socket2::SockRef::from(fd)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(0, |a| a.port())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Supervisor {
    /// Adopts the proxy an earlier supervisor left running (per the state file in the run
    /// directory), or creates the listening sockets and starts a new one. Returns once the
    /// supervision task runs; the proxy comes up in the background (see [`Self::status`]).
    pub async fn start(cfg: SupervisorConfig) -> Result<Self, SupervisorError> {
        std::fs::create_dir_all(&cfg.run_dir).map_err(|source| SupervisorError::RunDir {
            path: cfg.run_dir.clone(),
            source,
        })?;
        let adopted = match adopt(&cfg.run_dir) {
            Ok(a) => Some(a),
            Err(why) => {
                info!(%why, "no proxy to adopt; starting one");
                None
            }
        };
        let (listeners, first) = match adopted {
            Some((listeners, proc_, ctl)) => (listeners, Some((proc_, ctl))),
            None => (open_sockets(&cfg)?, None),
        };
        let status = ProxyStatus {
            listeners: listeners
                .iter()
                .map(|(fd, kind)| ListenerStatus {
                    port: local_port(fd),
                    egress: kind.egress(),
                    kind: *kind,
                })
                .collect(),
            adopted: first.is_some(),
            ..Default::default()
        };
        let (events, _) = broadcast::channel(4096);
        let (batches, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            cfg,
            listeners,
            state: Mutex::new(State {
                has_policy: false,
                desired: BTreeMap::new(),
                revision: 0,
                writer: None,
                draining: BTreeMap::new(),
                status,
            }),
            events,
            batches,
        });
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(supervise(inner.clone(), rx, first));
        Ok(Self {
            inner,
            requests: tx,
        })
    }

    /// Records the command (so every later proxy gets it in its snapshot) and sends it to the
    /// running proxy. The proxy confirms with [`ProxyEvent::Applied`] (see [`Self::events`]).
    pub async fn apply(&self, cmd: ProxyCommand) {
        let writer = {
            let mut draining = None;
            let mut st = lock(&self.inner.state);
            // A policy to give every later proxy (an FqdnAllowed is none: a new agent answering
            // an adopted proxy's DNS before its first policy must not make an empty snapshot
            // worth sending).
            st.has_policy |= !matches!(
                cmd,
                ProxyCommand::FqdnAllowed { .. } | ProxyCommand::FqdnForget { .. }
            );
            match &cmd {
                ProxyCommand::Snapshot {
                    revision,
                    redirects,
                } => {
                    st.revision = *revision;
                    st.desired.clear();
                    for r in redirects {
                        st.desired.entry(r.endpoint).or_default().push(r.clone());
                    }
                }
                ProxyCommand::Endpoint {
                    revision,
                    endpoint,
                    redirects,
                } => {
                    st.revision = *revision;
                    if redirects.is_empty() {
                        st.desired.remove(endpoint);
                    } else {
                        st.desired.insert(*endpoint, redirects.clone());
                    }
                }
                // Meant for the proxy that issued the id only (the current one, or one still
                // draining); not part of any later snapshot.
                ProxyCommand::FqdnAllowed { id } => {
                    let issuer = crate::dns::gate::issuer_pid(*id);
                    if let Some(w) = st.draining.get(&issuer) {
                        draining = Some(w.clone());
                    }
                }
                // For the running proxy (a later one starts from a Snapshot, which forgets
                // everything anyway).
                ProxyCommand::FqdnForget { .. } => {}
            }
            st.status.desired_revision = st.revision;
            st.status.redirects = st.desired.values().map(Vec::len).sum();
            draining.or_else(|| st.writer.clone())
        };
        if let Some(w) = writer {
            send_or_warn(w, &cmd).await;
        }
    }

    /// Every event of every proxy generation: Applied, Rejected, HTTP records, Stats. Each
    /// receiver gets its own copy of each event: for records in bulk, see
    /// [`batches`](Self::batches).
    pub fn events(&self) -> broadcast::Receiver<ProxyEvent> {
        self.inner.events.subscribe()
    }

    /// The same events as [`events`](Self::events), in batches shared by every receiver (no
    /// copy per receiver, one wakeup per batch).
    pub fn batches(&self) -> broadcast::Receiver<EventBatch> {
        self.inner.batches.subscribe()
    }

    /// The proxy now.
    pub fn status(&self) -> ProxyStatus {
        lock(&self.inner.state).status.clone()
    }

    /// Graceful restart (e.g. after an upgrade of the binary): the new proxy is started and
    /// given the policy before the old one is asked to drain and exit.
    pub async fn restart(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send(Request::Restart(tx))
            .await
            .map_err(|_| "supervisor stopped".to_owned())?;
        rx.await.map_err(|_| "supervisor stopped".to_owned())?
    }

    /// Stops the proxy (SIGTERM, drain) and the supervision. For an agent that goes away but
    /// wants the proxy to keep serving, just drop the supervisor instead.
    pub async fn shutdown(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.requests.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = std::fs::remove_file(self.inner.cfg.run_dir.join(STATE_FILE));
    }
}

async fn send_or_warn(w: Arc<AsyncMutex<ControlWriter>>, cmd: &ProxyCommand) {
    if let Err(e) = w.lock().await.send(cmd).await {
        // The proxy is going away; its successor gets the snapshot.
        warn!(error = %e, "sending to the proxy");
    }
}

/// Finds the proxy an earlier supervisor left, takes its listening sockets back and connects
/// to it.
fn adopt(run_dir: &Path) -> Result<(Listeners, Proc, PathBuf), String> {
    let path = run_dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st: StateFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", st.pid))
        .map_err(|e| format!("pid {}: {e}", st.pid))?;
    if !String::from_utf8_lossy(&cmdline).contains("ciliate-proxy") {
        return Err(format!("pid {} is not a ciliate-proxy any more", st.pid));
    }
    // SAFETY: plain syscalls on integers; the results are checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, st.pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(format!(
            "pidfd_open {}: {}",
            st.pid,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: pidfd_open returned a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut listeners = Vec::new();
    let http = st.listeners.iter().map(|(fd, egress)| {
        let kind = if *egress {
            SocketKind::HttpEgress
        } else {
            SocketKind::HttpIngress
        };
        (*fd, kind)
    });
    for (fd, kind) in http.chain(st.dns.iter().copied()) {
        // SAFETY: as above; pidfd_getfd duplicates the proxy's descriptor into ours.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(format!(
                "pidfd_getfd {} fd {fd}: {}",
                st.pid,
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new descriptor we own; set close-on-exec like our own sockets.
        let owned = unsafe { OwnedFd::from_raw_fd(got as RawFd) };
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        listeners.push((owned, kind));
    }
    // SAFETY: we own the pidfd and nothing else registers or closes it while the AsyncFd lives.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| format!("pidfd: {e}"))?;
    info!(pid = st.pid, "adopting the running proxy");
    Ok((
        listeners,
        Proc::Adopted { pid: st.pid, pidfd },
        st.control_socket,
    ))
}

/// Starts a proxy generation with the listening sockets inherited.
fn spawn(inner: &Inner, ctl: &Path) -> std::io::Result<Proc> {
    let cfg = &inner.cfg;
    let mut cmd = tokio::process::Command::new(&cfg.binary);
    for (fd, kind) in &inner.listeners {
        cmd.args(kind.arg(fd.as_raw_fd()));
    }
    cmd.arg("--control-socket").arg(ctl);
    if let Some(d) = &cfg.bpf_pin_dir {
        cmd.arg("--bpf-pin-dir").arg(d);
    }
    cmd.arg("--transparent").arg(cfg.transparent.to_string());
    cmd.arg("--drain-timeout")
        .arg(humantime::format_duration(cfg.drain_timeout).to_string());
    cmd.args(&cfg.extra_args);
    cmd.kill_on_drop(false);
    let fds: Vec<RawFd> = inner
        .listeners
        .iter()
        .map(|(fd, _)| fd.as_raw_fd())
        .collect();
    // A process group of its own, not a session: the proxy outlives the agent (nothing ties a
    // child's life to its parent's), and the terminal's Ctrl-C or a `kill -- -<agent's group>`
    // reaches only the agent. A new session would also put the proxy in a scheduling group of
    // its own where autogroups apply (every process in the root cpu cgroup, as on a laptop or in
    // bench/dns.sh): `setsid` starts a new autogroup, and the agent's SCHED_IDLE record threads
    // (proxy-flows, flow-history) give way at once only to tasks of their own group, so the
    // proxy's DNS thread waited behind their runs of 0.6-1.7 ms (bench/README.md, session 15).
    // On a real node the agent runs in a cgroup of its own (a systemd unit, a pod's container)
    // and autogroups do not apply there; the proxy, its child, stays in that cgroup either way.
    // Stopping such a unit stops the proxy too unless it says otherwise (systemd:
    // KillMode=process); the next agent then starts a new one, as after the proxy's kill -9.
    cmd.process_group(0);
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, signal).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                // Inherit the listening sockets (they are close-on-exec in the agent).
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Still in the agent's session, so the agent's terminal, if it has one, is the
            // proxy's too: its hangup (or the orphaned group's SIGHUP once the agent is gone)
            // must not stop the proxy, nor must writing its log from a background group. Ignored
            // dispositions survive exec; the proxy handles only SIGTERM and SIGINT.
            for sig in [libc::SIGHUP, libc::SIGTTOU, libc::SIGTTIN] {
                if libc::signal(sig, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(Proc::Child(cmd.spawn()?))
}

fn write_state(inner: &Inner, pid: u32, ctl: &Path) {
    let st = StateFile {
        pid,
        control_socket: ctl.to_owned(),
        listeners: inner
            .listeners
            .iter()
            .filter(|(_, k)| matches!(k, SocketKind::HttpEgress | SocketKind::HttpIngress))
            .map(|(fd, k)| (fd.as_raw_fd(), k.egress()))
            .collect(),
        dns: inner
            .listeners
            .iter()
            .filter(|(_, k)| matches!(k, SocketKind::DnsTcp | SocketKind::DnsUdp))
            .map(|(fd, k)| (fd.as_raw_fd(), *k))
            .collect(),
    };
    let path = inner.cfg.run_dir.join(STATE_FILE);
    let tmp = path.with_extension("json.tmp");
    let ok = serde_json::to_vec(&st)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = ok {
        warn!(path = %path.display(), error = %e, "writing the proxy state file");
    }
}

/// Connects to a proxy's control socket, sends it the snapshot and marks it up in the same
/// step that lets commands reach it; the events of the snapshot's confirmation are passed on
/// only then, so whoever sees its first `Applied` also sees it up (and its pid). A new
/// generation (not `adopted`) is written to the state file first: a proxy is up only once
/// the state file names it, so that an agent restarting from then on adopts this one.
async fn connect(
    inner: &Arc<Inner>,
    ctl: &Path,
    proc_: &mut Proc,
    adopted: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match ControlClient::connect(ctl).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("control socket {}: {e}", ctl.display()))
            }
            Err(_) => {
                // Give up early if the process died while starting.
                tokio::select! {
                    why = proc_.wait() => return Err(format!("proxy {why} before its control socket was up")),
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    };
    let (mut reader, writer) = client.into_split();
    let mut held = Vec::new();
    let writer = Arc::new(AsyncMutex::new(writer));
    // Send the policy (if the agent gave one yet: a new agent adopting a running proxy must
    // not wipe the policy in force before it computed its own), and wait until it is in
    // force; again if a command came in meanwhile, so none is lost between the snapshot and
    // the moment the writer is published for `apply`.
    loop {
        let snapshot = {
            let st = lock(&inner.state);
            st.has_policy.then(|| st.snapshot())
        };
        let sent_revision = match &snapshot {
            Some(ProxyCommand::Snapshot { revision, .. }) => Some(*revision),
            _ => None,
        };
        if let (Some(snapshot), Some(revision)) = (&snapshot, sent_revision) {
            writer
                .lock()
                .await
                .send(snapshot)
                .await
                .map_err(|e| format!("sending the snapshot: {e}"))?;
            loop {
                match tokio::time::timeout(Duration::from_secs(10), reader.next()).await {
                    Ok(Ok(Some(ev))) => {
                        let done = matches!(&ev, ProxyEvent::Applied { revision: r } if *r >= revision)
                            || matches!(&ev, ProxyEvent::Rejected { revision: r, .. } if *r >= revision);
                        note_event(inner, &ev);
                        held.push(ev);
                        if done {
                            break;
                        }
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => return Err("control connection closed".into()),
                    Err(_) => return Err("the proxy did not confirm the snapshot".into()),
                }
            }
        }
        let mut st = lock(&inner.state);
        let unchanged = match sent_revision {
            None => !st.has_policy,
            Some(r) => st.revision == r,
        };
        if unchanged {
            if let (false, Some(pid)) = (adopted, proc_.pid()) {
                write_state(inner, pid, ctl);
                info!(pid, "proxy up");
            }
            st.writer = Some(writer.clone());
            st.status.up = true;
            st.status.pid = proc_.pid();
            st.status.last_error = None;
            break;
        }
    }
    publish(inner, held);
    let inner2 = inner.clone();
    tokio::spawn(async move {
        while let Ok(Some(batch)) = reader.next_batch(EVENT_BATCH).await {
            for ev in &batch {
                note_event(&inner2, ev);
            }
            publish(&inner2, batch);
        }
    });
    Ok(())
}

/// Passes `batch` to the receivers of [`Supervisor::batches`] and [`Supervisor::events`] (if
/// any: a copy each).
fn publish(inner: &Inner, batch: Vec<ProxyEvent>) {
    if batch.is_empty() {
        return;
    }
    if inner.events.receiver_count() > 0 {
        for ev in &batch {
            let _ = inner.events.send(ev.clone());
        }
    }
    let _ = inner.batches.send(Arc::new(batch));
}

fn note_event(inner: &Inner, ev: &ProxyEvent) {
    if crate::events::is_record(ev) {
        return;
    }
    let mut st = lock(&inner.state);
    match ev {
        ProxyEvent::Applied { revision } => st.status.applied_revision = Some(*revision),
        ProxyEvent::Rejected { reason, .. } => st.status.last_error = Some(reason.clone()),
        ProxyEvent::Stats(s) => st.status.stats = Some(*s),
        ProxyEvent::Http(_)
        | ProxyEvent::HttpFrame(_)
        | ProxyEvent::Dns(_)
        | ProxyEvent::DnsFrame(_)
        | ProxyEvent::Kafka(_)
        | ProxyEvent::FqdnLearned(_) => {}
    }
}

fn mark_down(inner: &Inner, why: String) {
    let mut st = lock(&inner.state);
    st.status.up = false;
    st.status.pid = None;
    st.writer = None;
    st.status.last_error = Some(why);
}

/// Starts a new generation and brings it up; on failure the process is killed.
async fn start_generation(inner: &Arc<Inner>) -> Result<Proc, String> {
    let ctl = inner.cfg.run_dir.join(format!("ctl-{}.sock", now_nanos()));
    let mut p =
        spawn(inner, &ctl).map_err(|e| format!("starting {}: {e}", inner.cfg.binary.display()))?;
    // Up (and in the state file) once connected: see `connect`.
    if let Err(e) = connect(inner, &ctl, &mut p, false).await {
        p.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = p.wait().await;
        return Err(e);
    }
    Ok(p)
}

fn mark_up(inner: &Inner, p: &Proc) {
    let mut st = lock(&inner.state);
    st.status.up = true;
    st.status.pid = p.pid();
    st.status.last_error = None;
}

async fn supervise(
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<Request>,
    first: Option<(Proc, PathBuf)>,
) {
    let mut current: Option<Proc> = None;
    if let Some((mut p, ctl)) = first {
        match connect(&inner, &ctl, &mut p, true).await {
            Ok(()) => {
                mark_up(&inner, &p);
                current = Some(p);
            }
            Err(e) => {
                warn!(error = %e, "adopted proxy unreachable; replacing it");
                p.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let mut first_start = current.is_none();
    let mut up_since = Instant::now();
    loop {
        let mut p = match current.take() {
            Some(p) => p,
            None => {
                up_since = Instant::now();
                if !first_start {
                    lock(&inner.state).status.restarts += 1;
                }
                first_start = false;
                match start_generation(&inner).await {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "proxy did not start; retrying");
                        mark_down(&inner, e);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
        };
        tokio::select! {
            why = p.wait() => {
                warn!(%why, "proxy died; restarting");
                mark_down(&inner, format!("proxy {why}"));
                // current stays None: the loop starts the next one at once, unless it keeps
                // dying young (a crash loop should not spin).
                if up_since.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            req = requests.recv() => match req {
                Some(Request::Restart(done)) => {
                    let old_writer = {
                        let mut st = lock(&inner.state);
                        st.status.restarts += 1;
                        st.writer.clone()
                    };
                    match start_generation(&inner).await {
                        Ok(next) => {
                            // The new one accepts already; the old one drains and exits,
                            // still told which of its held DNS answers may go.
                            let old_pid = p.pid();
                            if let (Some(pid), Some(w)) = (old_pid, old_writer) {
                                lock(&inner.state).draining.insert(pid, w);
                            }
                            p.signal(nix::sys::signal::Signal::SIGTERM);
                            let drain = inner.cfg.drain_timeout + Duration::from_secs(5);
                            let inner2 = inner.clone();
                            tokio::spawn(async move {
                                if tokio::time::timeout(drain, p.wait()).await.is_err() {
                                    p.signal(nix::sys::signal::Signal::SIGKILL);
                                    let _ = p.wait().await;
                                }
                                if let Some(pid) = old_pid {
                                    lock(&inner2.state).draining.remove(&pid);
                                }
                            });
                            current = Some(next);
                            up_since = Instant::now();
                            let _ = done.send(Ok(()));
                        }
                        Err(e) => {
                            current = Some(p);
                            let _ = done.send(Err(e));
                        }
                    }
                }
                Some(Request::Shutdown(done)) => {
                    p.signal(nix::sys::signal::Signal::SIGTERM);
                    let _ = tokio::time::timeout(inner.cfg.drain_timeout + Duration::from_secs(5), p.wait()).await;
                    mark_down(&inner, "stopped".into());
                    let _ = done.send(());
                    return;
                }
                None => {
                    // The agent dropped us: leave the proxy serving for the next agent.
                    info!("supervisor dropped; the proxy keeps serving");
                    return;
                }
            }
        }
    }
}
