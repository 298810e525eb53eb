//! `ciliate-bench http-server`: a small HTTP/1.1 server for the lab's L7 tests. Keep-alive,
//! `Content-Length` bodies (read and discarded); every request is answered `200 OK` with the
//! body `<id> <METHOD> <path>\n`, so the client sees which pod and which request it reached
//! (and a proxy's `403` is told apart by its body).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use anyhow::{Context, Result};

/// Serves forever on `port` (all addresses), a thread per connection.
pub fn run(id: &str, port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind port {port}"))?;
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        let id = id.to_owned();
        thread::spawn(move || {
            let _ = serve(&id, c);
        });
    }
    Ok(())
}

/// One request's head: what the answer names and how much body follows.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    length: usize,
    close: bool,
}

/// Reads one request head; `None` at a clean end of the connection.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let http10 = parts.next() == Some("HTTP/1.0");
    let mut head = Head {
        method,
        path,
        length: 0,
        close: http10,
    };
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        if h == "\r\n" || h == "\n" {
            return Ok(Some(head));
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                head.length = v.parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("connection") {
                head.close = v.eq_ignore_ascii_case("close");
            }
        }
    }
}

fn answer(id: &str, head: &Head) -> String {
    let body = format!("{id} {} {}\n", head.method, head.path);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if head.close {
            "Connection: close\r\n"
        } else {
            ""
        }
    )
}

fn serve(id: &str, c: TcpStream) -> std::io::Result<()> {
    let _ = c.set_nodelay(true);
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    while let Some(head) = read_head(&mut r)? {
        std::io::copy(&mut (&mut r).take(head.length as u64), &mut std::io::sink())?;
        w.write_all(answer(id, &head).as_bytes())?;
        if head.close {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_answered_with_who_and_what() {
        let mut r = std::io::Cursor::new(
            b"PUT /up HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\nabcGET / HTTP/1.1\r\nConnection: close\r\n\r\n"
                .to_vec(),
        );
        let h = read_head(&mut r).expect("read").expect("head");
        assert_eq!(
            h,
            Head {
                method: "PUT".into(),
                path: "/up".into(),
                length: 3,
                close: false
            }
        );
        assert_eq!(
            answer("echo", &h),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\necho PUT /up\n"
        );
        let mut body = [0u8; 3];
        r.read_exact(&mut body).expect("body");
        let h = read_head(&mut r).expect("read").expect("head");
        assert!(h.close && h.method == "GET");
        assert!(read_head(&mut r).expect("read").is_none());
    }
}
