//! `ciliate-proxy`: the node's L7 proxy. Started by the agent's supervisor, not by hand.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ciliate_datapath::proxy_mark::{self, ProxyDirection};
use ciliate_model::l7::L7Parser;
use ciliate_proxy::control;
use ciliate_proxy::dns::{self, gate::AnswerGate, thread::DnsThread, DnsConfig, DnsProxy};
use ciliate_proxy::engine::{ConnMeta, MarkFn};
use ciliate_proxy::engine::{Counters, Engine, EngineConfig};
use ciliate_proxy::identity::{Identities, PinnedIdentities, StaticIdentities};
use ciliate_proxy::listener::{listener_from_fd, ListenSpec, Listeners};
use ciliate_proxy::policy::Policy;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// The node's L7 proxy: enforces `toPorts[].rules.http` on the connections the datapath
/// redirects to it, and `rules.dns` on pods' DNS queries, and reports every request and
/// response.
///
/// It does not open its listening sockets: the supervisor (in the agent) creates them
/// (IP_TRANSPARENT, on the ProxyPorts) and passes them as inherited file descriptors, one
/// `--listen` per socket, so that a restarted proxy serves the same sockets and no connection
/// is refused while it is down. It accepts only once the agent's first policy is in force
/// (until then connections wait in the backlog). For each accepted connection the socket's local address is the
/// original destination; the redirect is the one of the endpoint (the source for egress, the
/// destination for ingress) and the original destination port; the peer's identity comes from
/// the pinned endpoint and ipcache maps.
///
/// The agent drives it over the control socket: `ProxyCommand`s in, one JSON object per line
/// (`{"snapshot":{"revision":N,"redirects":[...]}}`, `{"endpoint":{...}}`), `ProxyEvent`s out
/// (`applied`, `rejected`, `stats` as JSON lines; HTTP, DNS and Kafka records as binary
/// frames). The policy stays in force when the agent disconnects.
///
/// DNS (`--listen egress:dns=FD` for TCP, `--dns-udp FD` for UDP): a query whose name no rule
/// allows is answered REFUSED; an allowed one goes unchanged to the resolver the pod asked (from
/// the node's address), and an answer with addresses is held until the agent answers the
/// `fqdnLearned` event with `{"fqdnAllowed":{"id":N}}` (at most --dns-allow-timeout), then sent
/// to the pod from the resolver's address.
///
/// SIGTERM: stop accepting, finish the requests in flight (up to --drain-timeout), exit 0.
///
/// Example (what the supervisor runs):
///   ciliate-proxy --listen egress:http=3 --listen ingress:http=4 --listen egress:dns=5 \
///     --dns-udp 6 --control-socket /run/ciliate/proxy/ctl-1.sock --bpf-pin-dir /sys/fs/bpf/ciliate/node1
#[derive(Debug, Parser)]
#[command(name = "ciliate-proxy", version, verbatim_doc_comment)]
struct Args {
    /// An inherited listening socket: DIRECTION:PARSER=FD, DIRECTION egress|ingress, PARSER
    /// http or dns (TCP, egress only), e.g. `egress:http=3`. Repeat per socket; at least one.
    #[arg(long = "listen", value_name = "DIR:PARSER=FD", required = true)]
    listen: Vec<ListenSpec>,

    /// An inherited UDP socket for DNS queries (IP_TRANSPARENT, IP_RECVORIGDSTADDR).
    #[arg(long, value_name = "FD")]
    dns_udp: Option<i32>,

    /// How long an answer with addresses waits for the agent's fqdnAllowed before it goes to
    /// the pod anyway (counted and logged).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    dns_allow_timeout: Duration,

    /// How long the resolver may take before the pod gets SERVFAIL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    dns_upstream_timeout: Duration,

    /// The unix socket the agent connects to (created, replacing a stale one).
    #[arg(long, value_name = "PATH")]
    control_socket: PathBuf,

    /// Where the datapath's maps are pinned (`<bpffs>/ciliate/<node>`), for peer identities.
    /// Without it every peer is `world` (only for tests).
    #[arg(long, value_name = "DIR")]
    bpf_pin_dir: Option<PathBuf>,

    /// Connect upstream from the client's own address (IP_TRANSPARENT), as in production.
    /// `--transparent false` connects from the node's address (tests without the datapath).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    transparent: bool,

    /// On SIGTERM, how long requests in flight may take before the proxy exits anyway.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    drain_timeout: Duration,

    /// Threads serving connections. Each runs an event loop of its own and serves the
    /// connections given to it (new ones go to the thread with the fewest open) from start to
    /// end, so that a request wakes no other thread.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    threads: u16,

    /// The scheduler slice of the thread that serves DNS (Linux 6.12+; 0: the kernel's
    /// default). A short slice lets a query's wakeup preempt a longer-sliced task on the CPU
    /// at once instead of waiting up to its slice (1.5 ms on two CPUs): see `sched.rs`.
    #[arg(long, default_value = "100us", value_parser = parse_slice, value_name = "DURATION")]
    dns_sched_slice: Duration,

    /// Percent of one CPU per 10 ms for which the DNS thread runs in the real-time class
    /// (SCHED_FIFO 1, ahead of ordinary tasks); beyond it, in the ordinary class for the rest
    /// of the 10 ms, so that a flood of queries cannot take a CPU from the node. 0 (the
    /// default): ordinary class only; on a quiet 2-CPU node 50 did not lower the DNS p99 and
    /// cost ~10 % of the max q/s (bench/README.md, "DNS proxy"). Needs CAP_SYS_NICE (else
    /// ordinary, with a warning). See `rt_budget.rs`.
    #[arg(long, default_value_t = 0, value_parser = parse_rt_budget, value_name = "PERCENT")]
    dns_realtime_budget: u8,

    /// Log filter (tracing's env-filter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut seen = HashSet::new();
    for fd in args.listen.iter().map(|l| l.fd).chain(args.dns_udp) {
        if !seen.insert(fd) {
            eprintln!("ciliate-proxy: --listen/--dns-udp: fd {fd} given twice");
            return ExitCode::from(2);
        }
    }
    // The main thread serves connections too, besides the control socket and signals.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ciliate-proxy: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Set here, before any thread starts, for the DNS thread to inherit (`run`); the main
    // thread keeps it too (its share of connections, the control socket), as it did when it
    // served DNS itself.
    match ciliate_proxy::sched::set_thread_slice(args.dns_sched_slice) {
        Ok(()) => info!(slice = ?args.dns_sched_slice, "the DNS thread's scheduler slice is set"),
        Err(e) => warn!(error = %e, "--dns-sched-slice: keeping the kernel's default slice"),
    }
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let mut listeners = Vec::new();
    let mut dns_tcp = Vec::new();
    for spec in &args.listen {
        match listener_from_fd(spec) {
            Ok(l) if spec.parser == L7Parser::Dns => dns_tcp.push(l),
            Ok(l) => listeners.push((l, spec.egress)),
            Err(e) => {
                eprintln!("ciliate-proxy: --listen {}: {e}", spec.fd);
                return ExitCode::from(2);
            }
        }
    }
    let dns_udp = match args.dns_udp.map(dns::udp::socket_from_fd).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ciliate-proxy: --dns-udp: {e}");
            return ExitCode::from(2);
        }
    };
    let control = match control::bind(&args.control_socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ciliate-proxy: --control-socket {}: {e}",
                args.control_socket.display()
            );
            return ExitCode::from(2);
        }
    };
    let identities: Arc<dyn Identities> = match &args.bpf_pin_dir {
        Some(dir) => Arc::new(PinnedIdentities::new(dir.clone())),
        None => {
            warn!("no --bpf-pin-dir: every peer is world");
            Arc::new(StaticIdentities::default())
        }
    };
    let (tx, rx) = mpsc::channel(8192);
    let engine = Arc::new(Engine {
        policy: Arc::new(Policy::default()),
        identities,
        events: tx.into(),
        config: EngineConfig {
            transparent: args.transparent,
            // The datapath's mark layout: not redirected again, judged (and tunnelled) as the
            // client, its replies steered back to this socket.
            mark: args.transparent.then(upstream_mark),
            ..EngineConfig::default()
        },
        counters: Counters::default(),
    });
    let gate = Arc::new(AnswerGate::default());
    let control = control::spawn(control, engine.clone(), rx, Some(gate.clone()));
    let dns_proxy = Arc::new(DnsProxy {
        engine: engine.clone(),
        gate,
        config: DnsConfig {
            upstream_timeout: args.dns_upstream_timeout,
            allow_timeout: args.dns_allow_timeout,
            transparent: args.transparent,
        },
        peers: Default::default(),
    });
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("ciliate-proxy: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    // Accept only once the agent's policy is in force: connections wait in the backlog
    // meanwhile, instead of finding no redirect.
    tokio::select! {
        _ = engine.policy.wait_applied() => {}
        _ = term.recv() => return ExitCode::SUCCESS,
        _ = int.recv() => return ExitCode::SUCCESS,
    }
    let mut runtimes = vec![tokio::runtime::Handle::current()];
    for i in 1..args.threads {
        match worker_thread(i) {
            Ok(h) => runtimes.push(h),
            Err(e) => {
                eprintln!("ciliate-proxy: starting thread {i}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let running = Listeners::start_on(engine.clone(), listeners, &runtimes);
    // DNS runs on a thread of its own, in the real-time class within its budget (see
    // `dns/thread.rs`); its listeners move to that thread's runtime.
    let (stop_dns, stop_rx) = watch::channel(false);
    let mut dns_done = None;
    if !dns_tcp.is_empty() || dns_udp.is_some() {
        let mut tcp = Vec::new();
        for l in dns_tcp {
            match l.into_std() {
                Ok(l) => tcp.push(l),
                Err(e) => warn!(error = %e, "DNS TCP listener"),
            }
        }
        let thread = DnsThread {
            proxy: dns_proxy.clone(),
            tcp,
            udp: dns_udp,
            realtime_budget: args.dns_realtime_budget,
            slice: args.dns_sched_slice,
        };
        match thread.spawn(stop_rx, args.drain_timeout) {
            Ok(done) => dns_done = Some(done),
            Err(e) => {
                eprintln!("ciliate-proxy: starting the DNS thread: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    dns::timing::spawn_dump();
    info!(pid = std::process::id(), "ciliate-proxy running");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    // DNS: stop reading (queries not read yet wait in the sockets for the next proxy) and
    // answer those in flight, within the same deadline as HTTP's.
    let _ = stop_dns.send(true);
    let dns_drain = async {
        match dns_done {
            Some(done) => done.await.unwrap_or(false),
            None => true,
        }
    };
    let (left, dns_drained) = tokio::join!(running.drain(args.drain_timeout), dns_drain);
    if !dns_drained {
        warn!("drain deadline reached with DNS queries in flight");
    }
    // The records of the last requests, still gathering for the next write.
    control.flush().await;
    let _ = std::fs::remove_file(&args.control_socket);
    info!(left, "exiting");
    ExitCode::SUCCESS
}

/// `--dns-sched-slice`: a duration within the kernel's bounds for a slice, or 0.
fn parse_slice(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    ciliate_proxy::sched::check_slice(d)?;
    Ok(d)
}

/// `--dns-realtime-budget`: a percentage, 0 ..= rt_budget::MAX_PERCENT.
fn parse_rt_budget(s: &str) -> Result<u8, String> {
    let p: u8 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("{s}: {e}"))?;
    ciliate_proxy::rt_budget::check_percent(p)?;
    Ok(p)
}

/// A thread with a single-threaded runtime of its own, running until the process exits.
fn worker_thread(i: u16) -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name(format!("proxy-{i}"))
        .spawn(move || {
            // Threads inherit the main thread's (DNS) slice: the HTTP threads keep the
            // kernel's default, as before the DNS slice.
            if let Err(e) = ciliate_proxy::sched::set_thread_slice(Duration::ZERO) {
                warn!(thread = i, error = %e, "scheduler slice");
            }
            rt.block_on(std::future::pending::<()>())
        })?;
    Ok(handle)
}

/// The mark of an upstream connection made for a client (`crates/datapath/src/proxy_mark.rs`).
fn upstream_mark() -> MarkFn {
    Arc::new(|meta: &ConnMeta| {
        let direction = if meta.egress {
            ProxyDirection::Egress
        } else {
            ProxyDirection::Ingress
        };
        match proxy_mark::from_proxy(direction, meta.source_identity) {
            Ok(mark) => Some(mark),
            Err(e) => {
                warn!(error = %e, client = %meta.client, "upstream connection left unmarked");
                None
            }
        }
    })
}
