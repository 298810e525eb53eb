//! `ciliate-bench`: the load generator behind `bench/`. It measures what netperf's TCP_RR and
//! TCP_CRR measure (netperf is not packaged for Debian 12): request/response transactions per
//! second on one connection, and connect + request + response + close per second, with p50/p99
//! latency. Results are one JSON object on stdout so scripts can compute ratios. `map-wait`
//! times a Service change reaching the kernel's maps, from outside the agent. `http-server` and
//! `http` are HTTP/1.1 keep-alive load at a fixed or the maximum rate (`bench/l7.sh`).
//! `relay-node` and `relay-measure` load and measure `ciliate-relay` (`bench/relay.sh`).

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

mod http;
mod http_server;
mod map_wait;
mod probe;
mod relay_load;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "TCP request/response load generator for Ciliate's benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve: answer every 64-byte request with 64 bytes, on every connection, forever.
    Server {
        /// Port to listen on (all addresses).
        #[arg(long, default_value_t = 5001)]
        port: u16,
    },
    /// Request/response on long-lived connections (like netperf TCP_RR).
    Rr(Load),
    /// Identify yourself: on TCP write "<id>\n" then echo lines; on UDP answer "<id>".
    IdentServer {
        /// The name to answer with.
        #[arg(long)]
        id: String,
        /// Port (TCP and UDP).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Ask an ident-server (or a Service in front of some) who answers, N times; print JSON.
    Probe(probe::Probe),
    /// A new connection per transaction: connect, request, response, close (like TCP_CRR).
    Crr(Load),
    /// Wait until a Service's backend is in the pinned load-balancing maps (optionally after
    /// renaming a manifest into place); print the microseconds waited as JSON.
    MapWait(map_wait::MapWait),
    /// Serve HTTP/1.1 keep-alive: every request answered 200 with a fixed body (1 KB default).
    HttpServer(http::HttpServer),
    /// HTTP/1.1 GETs on N keep-alive connections, at a fixed rate or as fast as answered;
    /// print requests/s, p50/p99 latency and errors as JSON.
    Http(http::HttpLoad),
    /// A synthetic node for bench/relay.sh: the agent's observer API on a unix socket, fed
    /// synthetic flows at a rate.
    RelayNode(relay_load::Node),
    /// Follow an observer API (the relay, or a node) and print delay, rate, loss and order.
    RelayMeasure(relay_load::Measure),
    /// Serve HTTP/1.1 (keep-alive) as a lab pod: answer every request 200 with
    /// "<id> <METHOD> <path>", so a client sees which pod and request it reached.
    HttpIdentServer {
        /// The name to answer with.
        #[arg(long)]
        id: String,
        /// Port to listen on (all addresses).
        #[arg(long, default_value_t = 8090)]
        port: u16,
    },
}

#[derive(clap::Args, Debug)]
struct Load {
    /// Server address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// Server port.
    #[arg(long, default_value_t = 5001)]
    port: u16,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Concurrent client threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

const MSG: usize = 64;

fn serve(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind port {port}"))?;
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_nodelay(true);
        thread::spawn(move || {
            let mut buf = [0u8; MSG];
            while c.read_exact(&mut buf).is_ok() {
                if c.write_all(&buf).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn transaction(s: &mut TcpStream, buf: &mut [u8; MSG]) -> std::io::Result<()> {
    s.write_all(buf)?;
    s.read_exact(buf)
}

fn run(load: &Load, per_connection: bool) -> Result<()> {
    let addr = SocketAddr::from((load.dst, load.port));
    let deadline = Instant::now() + Duration::from_secs_f64(load.secs);
    let workers: Vec<_> = (0..load.threads)
        .map(|_| {
            thread::spawn(move || -> std::io::Result<(Vec<u32>, u64)> {
                let mut lat_us = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut buf = [7u8; MSG];
                let mut conn: Option<TcpStream> = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let result = (|| {
                        if per_connection || conn.is_none() {
                            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                            s.set_nodelay(true)?;
                            conn = Some(s);
                        }
                        let s = conn.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
                        transaction(s, &mut buf)?;
                        if per_connection {
                            conn = None; // dropping closes
                        }
                        Ok::<(), std::io::Error>(())
                    })();
                    match result {
                        Ok(()) => {
                            lat_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32)
                        }
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                }
                Ok((lat_us, errors))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": if per_connection { "crr" } else { "rr" },
            "transactions": all.len(),
            "per_second": all.len() as f64 / load.secs,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "errors": errors,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server { port } => serve(port),
        Cmd::IdentServer { id, port } => probe::ident_server(&id, port),
        Cmd::Probe(p) => probe::run(&p),
        Cmd::Rr(l) => run(&l, false),
        Cmd::Crr(l) => run(&l, true),
        Cmd::MapWait(w) => map_wait::run(&w),
        Cmd::HttpServer(s) => http::serve(&s),
        Cmd::Http(l) => http::run(&l),
        Cmd::HttpIdentServer { id, port } => http_server::run(&id, port),
        Cmd::RelayNode(n) => relay_load::run_node(n),
        Cmd::RelayMeasure(m) => relay_load::run_measure(m),
    }
}
