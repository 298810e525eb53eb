//! HTTP/1.1 keep-alive load for `bench/l7.sh`: a server answering every request with a fixed
//! body, and a client holding N connections that sends either as fast as the answers come (one
//! request in flight per connection) or at a fixed total rate. At a fixed rate the latency of a
//! request is counted from when it was due, not from when it was sent, so a stall is charged to
//! every request it delayed (what wrk2 does against coordinated omission; wrk2 is not packaged
//! for Debian, and wrk has no fixed-rate mode).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

#[derive(clap::Args, Debug)]
pub struct HttpServer {
    /// Ports to listen on (all addresses); repeat for several.
    #[arg(long = "port", default_values_t = [8000u16])]
    ports: Vec<u16>,
    /// Bytes of body in every response.
    #[arg(long, default_value_t = 1024)]
    body: usize,
}

#[derive(clap::Args, Debug)]
pub struct HttpLoad {
    /// Server address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// Server port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Path to request.
    #[arg(long, default_value = "/bench")]
    path: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Keep-alive connections, one thread and one request in flight each.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Requests per second over all connections; 0: as fast as answers come.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

pub fn serve(s: &HttpServer) -> Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.body
    );
    let mut resp = head.into_bytes();
    resp.extend(std::iter::repeat_n(b'x', s.body));
    let resp: &'static [u8] = resp.leak();
    let mut listeners = Vec::new();
    for &port in &s.ports {
        let l =
            TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind port {port}"))?;
        listeners.push(thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(c) = conn else { continue };
                thread::spawn(move || serve_conn(c, resp));
            }
        }));
    }
    for l in listeners {
        let _ = l.join();
    }
    Ok(())
}

/// Answers each request (request line and headers; a body by Content-Length) with `resp`.
fn serve_conn(c: TcpStream, resp: &[u8]) {
    let _ = c.set_nodelay(true);
    let Ok(mut w) = c.try_clone() else { return };
    let mut r = BufReader::new(c);
    let mut line = String::new();
    loop {
        let mut length = 0usize;
        let mut first = true;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                if first {
                    continue; // a stray empty line between requests
                }
                break;
            }
            first = false;
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        if length > 0
            && std::io::copy(&mut (&mut r).take(length as u64), &mut std::io::sink()).is_err()
        {
            return;
        }
        if w.write_all(resp).is_err() {
            return;
        }
    }
}

/// Reads one response; Ok(status).
fn response(
    r: &mut BufReader<TcpStream>,
    line: &mut String,
    body: &mut Vec<u8>,
) -> std::io::Result<u16> {
    let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(eof());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(eof());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    body.resize(length, 0);
    r.read_exact(body)?;
    Ok(status)
}

struct Worker {
    lat_us: Vec<u32>,
    errors: u64,
    non_2xx: u64,
}

pub fn run(load: &HttpLoad) -> Result<()> {
    let addr = SocketAddr::from((load.dst, load.port));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: ciliate-bench\r\n\r\n",
        load.path, load.dst, load.port
    );
    let request: &'static [u8] = request.into_bytes().leak();
    let conns = load.conns.max(1);
    let interval = (load.rate > 0.0).then(|| Duration::from_secs_f64(conns as f64 / load.rate));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(load.secs);
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            thread::spawn(move || {
                let mut w = Worker {
                    lat_us: Vec::with_capacity(1 << 16),
                    errors: 0,
                    non_2xx: 0,
                };
                let (mut line, mut body) = (String::new(), Vec::new());
                let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                // Connections start spread over one interval, not all at once.
                let mut due =
                    start + interval.map_or(Duration::ZERO, |d| d * i as u32 / conns as u32);
                while due < deadline {
                    if interval.is_some() {
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                    } else {
                        due = Instant::now();
                    }
                    let result = (|| {
                        if conn.is_none() {
                            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                            s.set_nodelay(true)?;
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            conn = Some((s.try_clone()?, BufReader::new(s)));
                        }
                        let (s, r) = conn.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
                        s.write_all(request)?;
                        response(r, &mut line, &mut body)
                    })();
                    match result {
                        Ok(status) => {
                            w.lat_us
                                .push(due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            if !(200..300).contains(&status) {
                                w.non_2xx += 1;
                            }
                        }
                        Err(_) => {
                            w.errors += 1;
                            conn = None;
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                    if let Some(d) = interval {
                        due += d;
                    }
                }
                w
            })
        })
        .collect();
    let (mut all, mut errors, mut non_2xx) = (Vec::new(), 0u64, 0u64);
    for w in workers {
        let w = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        all.extend(w.lat_us);
        errors += w.errors;
        non_2xx += w.non_2xx;
    }
    let elapsed = start.elapsed().as_secs_f64().max(load.secs);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": "http",
            "requests": all.len(),
            "per_second": all.len() as f64 / elapsed,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "errors": errors,
            "non_2xx": non_2xx,
        })
    );
    Ok(())
}
