//! Connecting to an observer API (an agent's or a relay's) by the addresses Hubble's CLI takes:
//! `unix:///path`, `host:port` or `http://host:port`.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::proto::observer::observer_client::ObserverClient;

/// Where an observer API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A unix socket.
    Unix(PathBuf),
    /// `host:port` over plain TCP (h2c).
    Tcp(String),
}

impl Target {
    /// Parses `unix:///path`, `unix:path`, a bare `/path` (a socket), `http://host:port` or
    /// `host:port`. TLS (`https://`) is refused: neither the agents nor the relay serve it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(format!("{s:?}: unix:// needs a socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        if s.starts_with("https://") || s.starts_with("tls://") {
            return Err(format!(
                "{s:?}: TLS is not supported; use host:port or unix:///path"
            ));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected host:port or unix:///path"))?;
        if host.is_empty() || host.contains('/') {
            return Err(format!("{s:?}: expected host:port or unix:///path"));
        }
        port.parse::<u16>()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        Ok(Self::Tcp(hostport.to_owned()))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => f.write_str(a),
        }
    }
}

/// Connects to `target` within `timeout`.
pub async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<ObserverClient<Channel>, tonic::transport::Error> {
    let (channel, _closed) = connect_watched(target, timeout).await?;
    Ok(ObserverClient::new(channel))
}

/// Connects to `target` within `timeout`; the receiver gets a message whenever a connection of
/// the channel closes (the peer went away), so a caller learns it at once instead of on its
/// next request.
pub async fn connect_watched(
    target: &Target,
    timeout: Duration,
) -> Result<(Channel, mpsc::UnboundedReceiver<()>), tonic::transport::Error> {
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    // The URI only fills `:authority`; the connector decides where to go.
    let endpoint = Endpoint::from_static("http://observer")
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .tcp_nodelay(true);
    let target = target.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let target = target.clone();
            let closed = closed_tx.clone();
            async move {
                let io: Box<dyn Io> = match &target {
                    Target::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
                    Target::Tcp(a) => {
                        let s = tokio::net::TcpStream::connect(a.as_str()).await?;
                        s.set_nodelay(true)?;
                        Box::new(s)
                    }
                };
                Ok::<_, std::io::Error>(TokioIo::new(Watched { io, closed }))
            }
        }))
        .await?;
    Ok((channel, closed_rx))
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection that says when it is dropped (hyper drops it when the peer closes it).
struct Watched {
    io: Box<dyn Io>,
    closed: mpsc::UnboundedSender<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.closed.send(());
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_hubble_takes_them() {
        assert_eq!(
            Target::parse("unix:///run/x/hubble.sock").unwrap(),
            Target::Unix("/run/x/hubble.sock".into())
        );
        assert_eq!(
            Target::parse("/run/h.sock").unwrap(),
            Target::Unix("/run/h.sock".into())
        );
        assert_eq!(
            Target::parse("localhost:4245").unwrap(),
            Target::Tcp("localhost:4245".into())
        );
        assert_eq!(
            Target::parse("http://10.0.0.1:4244/").unwrap(),
            Target::Tcp("10.0.0.1:4244".into())
        );
        assert_eq!(
            Target::parse("[::1]:4245").unwrap(),
            Target::Tcp("[::1]:4245".into())
        );
        for bad in [
            "localhost",
            "unix://",
            "https://x:1",
            "x:http",
            ":4245",
            "a/b:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Target::parse("unix:///a").unwrap().to_string(), "unix:///a");
    }
}
