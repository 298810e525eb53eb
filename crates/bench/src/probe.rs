//! `ident-server` and `probe`: who answers behind an address, as seen by a client. The
//! end-to-end tests of Services use them to see load spreading, draining and what
//! `getpeername()` shows, from processes placed in a pod's namespace and cgroup.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// `ciliate-bench probe` arguments.
#[derive(clap::Args, Debug)]
pub struct Probe {
    /// Address to ask (a Service VIP or a backend).
    #[arg(long)]
    dst: Ipv4Addr,
    /// Port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    proto: String,
    /// How many connections (TCP) or datagrams from fresh sockets (UDP).
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// First open one TCP connection, print `hold <id>` at once, then keep exchanging lines
    /// on it for this many seconds while the other probes run; its fate is in the JSON.
    #[arg(long)]
    hold_secs: Option<f64>,
}

/// Serves `id` on TCP and UDP `port` until killed.
pub fn ident_server(id: &str, port: u16) -> Result<()> {
    let tcp = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind TCP {port}"))?;
    let udp = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("bind UDP {port}"))?;
    let uid = id.to_owned();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(uid.as_bytes(), from);
        }
    });
    for conn in tcp.incoming() {
        let Ok(mut c) = conn else { continue };
        let id = id.to_owned();
        thread::spawn(move || {
            if writeln!(c, "{id}").is_err() {
                return;
            }
            let Ok(read) = c.try_clone() else { return };
            for line in BufReader::new(read).lines() {
                let Ok(line) = line else { return };
                if writeln!(c, "{line}").is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn tcp_once(dst: SocketAddr) -> Result<(String, String)> {
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let peer = s.peer_addr()?.to_string();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok((line.trim().to_owned(), peer))
}

fn udp_once(dst: SocketAddr) -> Result<(String, String)> {
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(b"who", dst)?;
    let mut buf = [0u8; 256];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        from.to_string(),
    ))
}

/// Opens the held connection; returns its id and a thread that exchanges lines on it.
fn hold(dst: SocketAddr, secs: f64) -> Result<(String, thread::JoinHandle<Result<u32, String>>)> {
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut id = String::new();
    reader.read_line(&mut id)?;
    let mut writer = s;
    let handle = thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u32;
        while Instant::now() < end {
            writeln!(writer, "ping {n}").map_err(|e| format!("write #{n}: {e}"))?;
            let mut back = String::new();
            reader
                .read_line(&mut back)
                .map_err(|e| format!("read #{n}: {e}"))?;
            if back.trim() != format!("ping {n}") {
                return Err(format!("#{n}: got {back:?}"));
            }
            n += 1;
            thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    });
    Ok((id.trim().to_owned(), handle))
}

/// Runs the probe and prints one JSON object.
pub fn run(p: &Probe) -> Result<()> {
    let dst = SocketAddr::from((p.dst, p.port));
    let held = match p.hold_secs {
        Some(secs) => {
            let (id, h) = hold(dst, secs)?;
            println!("hold {id}");
            std::io::stdout().flush()?;
            Some((id, h))
        }
        None => None,
    };
    let mut answers: BTreeMap<String, u32> = BTreeMap::new();
    let mut peers: BTreeMap<String, u32> = BTreeMap::new();
    let mut errors = Vec::new();
    for _ in 0..p.count {
        let r = if p.proto == "udp" {
            udp_once(dst)
        } else {
            tcp_once(dst)
        };
        match r {
            Ok((id, peer)) => {
                *answers.entry(id).or_default() += 1;
                *peers.entry(peer).or_default() += 1;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let hold = match held {
        Some((id, h)) => {
            let outcome = h
                .join()
                .map_err(|_| anyhow::anyhow!("hold thread panicked"))?;
            serde_json::json!({
                "id": id,
                "exchanges": outcome.as_ref().ok(),
                "error": outcome.err(),
            })
        }
        None => serde_json::Value::Null,
    };
    println!(
        "{}",
        serde_json::json!({"answers": answers, "peers": peers, "errors": errors, "hold": hold})
    );
    Ok(())
}
