//! `relay-node` and `relay-measure`: load for `bench/relay.sh`.
//!
//! `relay-node --socket PATH --name N --rate R` serves the observer API exactly as an agent
//! does (the agent's own ring and gRPC service, `ciliate_observer`) on a unix socket and pushes
//! R synthetic flows per second into it, each stamped with the time it was made and a sequence
//! number (`source.id`). The datapath is not involved: what is measured is the relay's merge,
//! not packet capture.
//!
//! `relay-measure --server unix://PATH --path NAME --nodes K --secs S` follows GetFlows on the
//! server (the relay, or one node directly for the baseline) for S seconds after a warm-up and
//! prints `metric path value` lines for bench/lib.sh's `summarize`: delay from a flow's making
//! to its arrival (p50/p99/max, ms), flows received per second, flows lost (gaps in the nodes'
//! sequences plus lost events reported), and flows out of time order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ciliate_observer::client::{connect, Target};
use ciliate_observer::convert::system_time_to_timestamp;
use ciliate_observer::proto::flow::{Endpoint, Flow, Ip, Verdict};
use ciliate_observer::proto::observer::get_flows_response::ResponseTypes;
use ciliate_observer::proto::observer::GetFlowsRequest;
use ciliate_observer::server::{bind_unix, serve_unix, Service};
use ciliate_observer::{Observer, ObserverConfig, Snapshot};

/// `relay-node`: a synthetic node.
#[derive(clap::Args, Debug)]
pub struct Node {
    /// The unix socket to serve on.
    #[arg(long)]
    socket: PathBuf,
    /// The node's name.
    #[arg(long)]
    name: String,
    /// Flows per second.
    #[arg(long)]
    rate: u64,
    /// Ring capacity (also the live channel's).
    #[arg(long, default_value_t = 65535)]
    capacity: usize,
}

/// `relay-measure`: follow a server and measure.
#[derive(clap::Args, Debug)]
pub struct Measure {
    /// The server (`unix:///path` or `host:port`).
    #[arg(long)]
    server: String,
    /// The name of this path in the output (`relay`, `direct`).
    #[arg(long)]
    path: String,
    /// How many nodes must be seen.
    #[arg(long)]
    nodes: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Seconds of warm-up (not measured).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Runs a synthetic node until killed.
pub fn run_node(n: Node) -> anyhow::Result<()> {
    runtime()?.block_on(node(n.socket, n.name, n.rate, n.capacity))
}

/// Follows and prints the measurements.
pub fn run_measure(m: Measure) -> anyhow::Result<()> {
    runtime()?.block_on(measure(m.server, m.path, m.nodes, m.secs, m.warmup))
}

async fn node(socket: PathBuf, name: String, rate: u64, capacity: usize) -> anyhow::Result<()> {
    let observer = Arc::new(Observer::new(
        ObserverConfig {
            node_name: name.clone(),
            capacity,
        },
        Arc::new(Snapshot::default()),
    ));
    let listener = bind_unix(&socket)?;
    let service = Service::new(Arc::clone(&observer), "bench", &name);
    tokio::spawn(serve_unix(service, listener, std::future::pending()));
    println!("ready");
    // Flows in batches every millisecond, as a busy node's ring reader delivers them.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut made: u64 = 0;
    loop {
        tick.tick().await;
        let due = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX) * rate / 1_000_000;
        let time = Some(system_time_to_timestamp(SystemTime::now()));
        while made < due {
            made += 1;
            observer.push_flow(Flow {
                time,
                node_name: name.clone(),
                verdict: Verdict::Forwarded as i32,
                ip: Some(Ip {
                    source: "10.0.0.1".into(),
                    destination: "10.0.0.2".into(),
                    ..Ip::default()
                }),
                source: Some(Endpoint {
                    id: u32::try_from(made % u64::from(u32::MAX)).unwrap_or(0),
                    ..Endpoint::default()
                }),
                ..Flow::default()
            });
        }
    }
}

#[derive(Default)]
struct PerNode {
    first: Option<u32>,
    last: u32,
    received: u64,
}

async fn measure(
    server: String,
    path: String,
    nodes: usize,
    secs: u64,
    warmup: u64,
) -> anyhow::Result<()> {
    let target = Target::parse(&server).map_err(anyhow::Error::msg)?;
    let mut client = connect(&target, Duration::from_secs(5)).await?;
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let warm_until = Instant::now() + Duration::from_secs(warmup);
    let end = warm_until + Duration::from_secs(secs);
    let mut per: BTreeMap<String, PerNode> = BTreeMap::new();
    let mut latencies: Vec<f64> = Vec::new();
    let (mut lost_events, mut out_of_order) = (0u64, 0u64);
    let mut last_time = (i64::MIN, i32::MIN);
    loop {
        let deadline = tokio::time::Instant::from_std(end);
        let r = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => break,
            Ok(r) => r?.ok_or_else(|| anyhow::anyhow!("the stream ended"))?,
        };
        let now = SystemTime::now();
        let measuring = Instant::now() >= warm_until;
        match r.response_types {
            Some(ResponseTypes::Flow(f)) if measuring => {
                let t = f.time.unwrap_or_default();
                if (t.seconds, t.nanos) < last_time {
                    out_of_order += 1;
                }
                last_time = last_time.max((t.seconds, t.nanos));
                let made = SystemTime::UNIX_EPOCH
                    + Duration::new(
                        u64::try_from(t.seconds).unwrap_or(0),
                        u32::try_from(t.nanos).unwrap_or(0),
                    );
                latencies.push(now.duration_since(made).unwrap_or_default().as_secs_f64() * 1000.0);
                let seq = f.source.map(|e| e.id).unwrap_or(0);
                let n = per.entry(r.node_name).or_default();
                n.first.get_or_insert(seq);
                n.last = seq;
                n.received += 1;
            }
            Some(ResponseTypes::Flow(f)) => {
                let t = f.time.unwrap_or_default();
                last_time = last_time.max((t.seconds, t.nanos));
            }
            Some(ResponseTypes::LostEvents(l)) if measuring => lost_events += l.num_events_lost,
            _ => {}
        }
    }
    if per.len() < nodes {
        anyhow::bail!("saw flows of {} nodes, expected {nodes}", per.len());
    }
    let gaps: u64 = per
        .values()
        .map(|n| {
            let span = u64::from(n.last.wrapping_sub(n.first.unwrap_or(0))) + 1;
            span.saturating_sub(n.received)
        })
        .sum();
    let received: u64 = per.values().map(|n| n.received).sum();
    latencies.sort_by(f64::total_cmp);
    let q = |x: f64| {
        let i = ((latencies.len() as f64) * x) as usize;
        latencies[i.min(latencies.len() - 1)]
    };
    println!("p50 {path} {:.3}", q(0.5));
    println!("p99 {path} {:.3}", q(0.99));
    println!("max {path} {:.3}", q(1.0));
    println!("rate {path} {:.0}", received as f64 / secs as f64);
    println!("lost {path} {}", gaps + lost_events);
    println!("disorder {path} {out_of_order}");
    Ok(())
}
