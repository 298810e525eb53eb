//! `--ui-address`: the service map (`crates/ui`, what `ciliate ui` serves) on its own
//! listener, drawn from this relay's merged flows: it follows the relay through its first
//! listen address like any other client would.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::sync::watch;

use crate::config::Listen;

/// Why the service map could not be served.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// There is no listen address to follow.
    #[error("--ui-address needs a --listen-address to draw from")]
    NoSource,
    /// The address could not be bound.
    #[error("cannot serve the UI on --ui-address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The Observer address the UI follows: the first listen address, a wildcard one reached on
/// loopback.
fn source(listen: &[Listen]) -> Option<ciliate_ui::Source> {
    Some(match listen.first()? {
        Listen::Tcp(a) => {
            let ip = match a.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            ciliate_ui::Source::Tcp(SocketAddr::new(ip, a.port()).to_string())
        }
        Listen::Unix(p) => ciliate_ui::Source::Unix(p.clone()),
    })
}

/// Binds `addr` and serves the service map there until `stop` turns true; returns the bound
/// address and the task.
pub async fn start(
    addr: SocketAddr,
    listen: &[Listen],
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), UiError> {
    let source = source(listen).ok_or(UiError::NoSource)?;
    let bind = |source| UiError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    let (ui, feed) = ciliate_ui::start(source, ciliate_ui::store::DEFAULT_CAPACITY);
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = ciliate_ui::serve(ui, listener, stopped).await {
            tracing::error!(error = %e, "the service map stopped");
        }
        feed.abort();
    });
    Ok((bound, task))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_followed_on_loopback() {
        let tcp = |s: &str| Listen::Tcp(s.parse().unwrap());
        assert_eq!(
            source(&[tcp("0.0.0.0:4245")]),
            Some(ciliate_ui::Source::Tcp("127.0.0.1:4245".into()))
        );
        assert_eq!(
            source(&[tcp("[::]:4245")]),
            Some(ciliate_ui::Source::Tcp("[::1]:4245".into()))
        );
        assert_eq!(
            source(&[Listen::Unix("/run/r.sock".into()), tcp("10.0.0.1:1")]),
            Some(ciliate_ui::Source::Unix("/run/r.sock".into()))
        );
        assert_eq!(source(&[]), None);
    }
}
