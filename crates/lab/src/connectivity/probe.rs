//! Probes, run from inside the client's network namespace on a thread of their own: a TCP
//! connect and the ident line the server sends, a UDP datagram and its answer, one ping, one
//! HTTP/1.1 request and its status and body, or one DNS query with `dig` (also to resolve a
//! name before connecting to it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::scenarios::{Proto, Request};
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
    /// The HTTP status code, for an HTTP probe answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The DNS response code (`NOERROR`, `REFUSED`, ...), for a DNS probe answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
}

impl Outcome {
    fn from(r: std::io::Result<String>) -> Self {
        match r {
            Ok(a) => Self {
                answer: Some(a),
                error: None,
                status: None,
                rcode: None,
            },
            Err(e) => Self::failed(e.to_string()),
        }
    }

    fn failed(error: String) -> Self {
        Self {
            answer: None,
            error: Some(error),
            status: None,
            rcode: None,
        }
    }
}

/// One probe from the namespace at `netns` to `dst:port` over `proto` (ICMP ignores the port).
/// With `name`, a DNS probe asks the world's DNS server for it, and a TCP probe first
/// resolves it there and connects to the answer's first address instead of `dst`.
pub fn probe(
    netns: PathBuf,
    proto: Proto,
    dst: Ipv4Addr,
    port: u16,
    name: Option<&'static str>,
) -> Outcome {
    match (proto, name) {
        (Proto::Dns, Some(n)) => dns(&netns, n, false),
        (Proto::Dns, None) => Outcome::failed("a DNS probe needs a name".into()),
        (Proto::Tcp, Some(n)) => {
            let resolved = dns(&netns, n, false);
            let first = resolved
                .answer
                .as_deref()
                .and_then(|a| a.split(',').next())
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            match first {
                Some(ip) => probe(netns, proto, ip, port, None),
                None => Outcome::failed(format!(
                    "cannot resolve {n}: {}",
                    resolved.error.unwrap_or_default()
                )),
            }
        }
        (proto, _) => probe_address(netns, proto, dst, port),
    }
}

fn probe_address(netns: PathBuf, proto: Proto, dst: Ipv4Addr, port: u16) -> Outcome {
    match proto {
        Proto::Icmp => ping(&netns, dst),
        Proto::Tcp => sys::in_netns(netns, move || Outcome::from(tcp(dst, port)))
            .unwrap_or_else(|e| Outcome::from(Err(std::io::Error::other(e.to_string())))),
        Proto::Udp => sys::in_netns(netns, move || Outcome::from(udp(dst, port)))
            .unwrap_or_else(|e| Outcome::from(Err(std::io::Error::other(e.to_string())))),
        Proto::Http(r) => sys::in_netns(netns, move || match http(dst, port, r) {
            Ok((status, body)) => Outcome {
                answer: Some(body),
                error: None,
                status: Some(status),
                rcode: None,
            },
            Err(e) => Outcome::failed(e.to_string()),
        })
        .unwrap_or_else(|e| Outcome::failed(e.to_string())),
        Proto::Dns => Outcome::failed("a DNS probe needs a name".into()),
    }
}

/// `dig` in the namespace asks the world's DNS server for `name` (A; over TCP with `tcp`):
/// the answer is the addresses, comma-separated, when NOERROR brought at least one; the
/// response code in any case it answered.
pub fn dns(netns: &std::path::Path, name: &str, tcp: bool) -> Outcome {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).args([
        "dig",
        "+time=1",
        "+tries=2",
        "+noall",
        "+comments",
        "+answer",
    ]);
    if tcp {
        cmd.arg("+tcp");
    }
    cmd.arg(format!("@{}", crate::world_dns::DNS_IP))
        .args([name, "A"])
        .stdin(Stdio::null());
    match cmd.output() {
        Ok(o) => parse_dig(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => Outcome::failed(format!("running dig: {e}")),
    }
}

/// `dig +noall +comments +answer`'s output: the status of the header line, the A records.
pub fn parse_dig(text: &str) -> Outcome {
    let rcode = text.lines().find_map(|l| {
        l.split_once("status: ")
            .map(|(_, r)| r.split(',').next().unwrap_or(r).trim().to_owned())
    });
    let Some(rcode) = rcode else {
        let why = text
            .lines()
            .find(|l| l.contains("timed out") || l.contains("no servers"))
            .unwrap_or("no answer");
        return Outcome::failed(why.trim_start_matches(';').trim().to_owned());
    };
    let ips: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[3] == "A").then(|| f[4])
        })
        .collect();
    if rcode == "NOERROR" && !ips.is_empty() {
        Outcome {
            answer: Some(ips.join(",")),
            error: None,
            status: None,
            rcode: Some(rcode),
        }
    } else {
        Outcome {
            answer: None,
            error: Some(format!("{rcode}, no address")),
            status: None,
            rcode: Some(rcode),
        }
    }
}

/// The request as sent: HTTP/1.1, one per connection.
fn request_text(dst: Ipv4Addr, port: u16, r: Request) -> String {
    let mut text = format!(
        "{} {} HTTP/1.1\r\nHost: {dst}:{port}\r\nUser-Agent: ciliate-connectivity\r\n",
        r.method, r.path
    );
    if r.token {
        text.push_str("X-Token: yes\r\n");
    }
    if r.method != "GET" {
        text.push_str("Content-Length: 0\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    text
}

fn http(dst: Ipv4Addr, port: u16, r: Request) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&(dst, port).into(), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(request_text(dst, port, r).as_bytes())?;
    parse_response(&mut BufReader::new(s))
}

/// Reads one HTTP/1.x response: its status code and body (by `Content-Length`, else to the
/// end of the connection), trimmed.
pub fn parse_response(r: &mut impl BufRead) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("closed without an answer"));
    }
    let mut parts = line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad(&format!("not an HTTP response: {:?}", line.trim())));
    }
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("no status code in {:?}", line.trim())))?;
    let mut length = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(bad("the response ends inside its headers"));
        }
        if h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = Some(
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| bad(&format!("bad Content-Length {:?}", v.trim())))?,
                );
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            r.take(n).read_to_end(&mut body)?;
            if (body.len() as u64) < n {
                return Err(bad("the response ends inside its body"));
            }
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
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
            status: None,
            rcode: None,
        },
        Ok(o) => Outcome::failed(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("packet loss") || l.contains("unreachable"))
                .unwrap_or("no echo reply")
                .trim()
                .to_owned(),
        ),
        Err(e) => Outcome::failed(format!("running ping: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::io::Result<(u16, String)> {
        parse_response(&mut std::io::Cursor::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn responses_parse_to_status_and_body() {
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\necho-same-node GET /p\nrest")
                .expect("200"),
            (200, "echo-same-node GET /p".to_owned())
        );
        assert_eq!(
            parse("HTTP/1.1 403 Forbidden\r\ncontent-length: 13\r\n\r\nAccess denied")
                .expect("403"),
            (403, "Access denied".to_owned())
        );
        // No length: the body runs to the end of the connection.
        assert_eq!(
            parse("HTTP/1.0 200 OK\n\nhello\n").expect("1.0"),
            (200, "hello".to_owned())
        );
        for bad in [
            "",
            "SSH-2.0-x\r\n\r\n",
            "HTTP/1.1 abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nHost: a\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dig_output_parses_to_status_and_addresses() {
        let ok = parse_dig(
            ";; Got answer:\n;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
             ;; flags: qr aa rd ra; QUERY: 1, ANSWER: 3\n\n\
             alias.ciliate.test.\t300\tIN\tCNAME\talias2.ciliate.test.\n\
             world.ciliate.test.\t300\tIN\tA\t172.31.0.1\n\
             world.ciliate.test.\t300\tIN\tA\t172.31.0.2\n",
        );
        assert_eq!(ok.answer.as_deref(), Some("172.31.0.1,172.31.0.2"));
        assert_eq!(ok.rcode.as_deref(), Some("NOERROR"));
        let refused =
            parse_dig(";; ->>HEADER<<- opcode: QUERY, status: REFUSED, id: 2\n;; flags: qr\n");
        assert_eq!(refused.answer, None);
        assert_eq!(refused.rcode.as_deref(), Some("REFUSED"));
        let timeout = parse_dig(";; communications error to 172.31.0.1#53: timed out\n");
        assert_eq!(timeout.rcode, None);
        assert!(timeout
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"));
    }

    #[test]
    fn requests_carry_method_path_and_token() {
        let r = Request {
            method: "PUT",
            path: "/public",
            token: true,
        };
        assert_eq!(
            request_text(Ipv4Addr::new(10, 0, 0, 1), 8090, r),
            "PUT /public HTTP/1.1\r\nHost: 10.0.0.1:8090\r\nUser-Agent: ciliate-connectivity\r\n\
             X-Token: yes\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
}
