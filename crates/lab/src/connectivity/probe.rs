//! Probes, run from inside the client's network namespace on a thread of their own: a TCP
//! connect and the ident line the server sends, a UDP datagram and its answer, or one ping.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::scenarios::Proto;
use crate::sys;

/// How long a probe waits for an answer: a dropped packet never answers, an allowed one
/// answers within milliseconds here.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The answer: the server's ident, or `echo reply` for a ping.
    pub answer: Option<String>,
    /// Why there was none.
    pub error: Option<String>,
}

impl Outcome {
    fn from(r: std::io::Result<String>) -> Self {
        match r {
            Ok(a) => Self {
                answer: Some(a),
                error: None,
            },
            Err(e) => Self {
                answer: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// One probe from the namespace at `netns` to `dst:port` over `proto` (ICMP ignores the port).
pub fn probe(netns: PathBuf, proto: Proto, dst: Ipv4Addr, port: u16) -> Outcome {
    match proto {
        Proto::Icmp => ping(&netns, dst),
        Proto::Tcp => sys::in_netns(netns, move || Outcome::from(tcp(dst, port)))
            .unwrap_or_else(|e| Outcome::from(Err(std::io::Error::other(e.to_string())))),
        Proto::Udp => sys::in_netns(netns, move || Outcome::from(udp(dst, port)))
            .unwrap_or_else(|e| Outcome::from(Err(std::io::Error::other(e.to_string())))),
    }
}

fn tcp(dst: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&(dst, port).into(), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(line.trim().to_owned())
}

fn udp(dst: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send_to(b"who", (dst, port))?;
    let mut buf = [0u8; 256];
    let (n, _) = s.recv_from(&mut buf).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer")
        } else {
            e
        }
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// `ping -c1 -W1` in the namespace: a raw socket needs no code of ours in it.
fn ping(netns: &std::path::Path, dst: Ipv4Addr) -> Outcome {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ping", "-n", "-q", "-c", "1", "-W", "1"])
        .arg(dst.to_string())
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Outcome {
            answer: Some("echo reply".into()),
            error: None,
        },
        Ok(o) => Outcome {
            answer: None,
            error: Some(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find(|l| l.contains("packet loss") || l.contains("unreachable"))
                    .unwrap_or("no echo reply")
                    .trim()
                    .to_owned(),
            ),
        },
        Err(e) => Outcome {
            answer: None,
            error: Some(format!("running ping: {e}")),
        },
    }
}
