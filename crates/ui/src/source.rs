//! Where flows come from: a Hubble Observer (an agent's `hubble.sock`, or the relay over TCP),
//! followed with GetFlows through the client generated from Hubble's protos, into the
//! [`FlowStore`]. A source that goes away is retried with back-off; the page says so meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ciliate_observer::proto::observer::observer_client::ObserverClient;
use ciliate_observer::proto::observer::{get_flows_response::ResponseTypes, GetFlowsRequest};
use tonic::transport::{Channel, Endpoint};

use crate::store::FlowStore;

/// An Observer to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A unix socket (an agent's `hubble.sock`).
    Unix(PathBuf),
    /// `host:port` over plain HTTP/2 (the relay, an agent's TCP listener).
    Tcp(String),
}

/// A source address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("observer address {address:?}: {reason}")]
pub struct SourceError {
    address: String,
    reason: String,
}

impl Source {
    /// `unix:///path`, `/path` (a socket), `host:port` or `http://host:port` (Hubble's
    /// `--server` forms).
    pub fn parse(address: &str) -> Result<Self, SourceError> {
        let err = |reason: &str| SourceError {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = address.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(err("the socket path is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if address.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(address)));
        }
        let hostport = address
            .strip_prefix("http://")
            .unwrap_or(address)
            .trim_end_matches('/');
        if address.starts_with("https://") {
            return Err(err("TLS is not supported; use the plain-text address"));
        }
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(hostport.to_owned()))
            }
            _ => Err(err(
                "expected unix:///path/to/hubble.sock, /path/to/hubble.sock or host:port",
            )),
        }
    }

    /// How the page names it.
    pub fn describe(&self) -> String {
        match self {
            Self::Unix(p) => format!("unix://{}", p.display()),
            Self::Tcp(a) => a.clone(),
        }
    }

    /// A client of the Observer at this address.
    pub async fn connect(&self) -> Result<ObserverClient<Channel>, String> {
        match self {
            Self::Unix(path) => ciliate_observer::server::connect_unix(path.clone())
                .await
                .map_err(|e| error_text(&e)),
            Self::Tcp(addr) => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| error_text(&e))?
                    .connect_timeout(Duration::from_secs(5));
                let channel = endpoint.connect().await.map_err(|e| error_text(&e))?;
                Ok(ObserverClient::new(channel))
            }
        }
    }
}

/// An error with its causes, which is where tonic says what really went wrong.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The longest wait between attempts to reach a source that went away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows `source` into `store` until the task is dropped: GetFlows with follow, the newest
/// `store.capacity()` flows first; on any failure the store's status says why and the next
/// attempt comes after a back-off of up to [`MAX_BACKOFF`].
pub async fn follow(source: Source, store: Arc<FlowStore>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        store.set_state("connecting", None);
        match follow_once(&source, &store).await {
            Ok(()) => {
                store.set_state(
                    "error",
                    Some(format!("{} ended the flow stream", source.describe())),
                );
            }
            Err(e) => {
                tracing::warn!(source = %source.describe(), error = %e, "flow source failed");
                store.set_state("error", Some(e));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(source: &Source, store: &FlowStore) -> Result<(), String> {
    let what = source.describe();
    let mut client = source
        .connect()
        .await
        .map_err(|e| format!("cannot reach the observer at {what}: {e}"))?;
    let req = GetFlowsRequest {
        number: u64::try_from(store.capacity()).unwrap_or(u64::MAX),
        follow: true,
        ..GetFlowsRequest::default()
    };
    let mut stream = client
        .get_flows(req)
        .await
        .map_err(|s| format!("the observer at {what} refused GetFlows: {}", s.message()))?
        .into_inner();
    // The source sends its history again on every connection.
    store.clear();
    store.set_state("connected", None);
    loop {
        match stream.message().await {
            Ok(Some(r)) => match r.response_types {
                Some(ResponseTypes::Flow(f)) => store.push(f),
                Some(ResponseTypes::LostEvents(l)) => store.lost(l.num_events_lost),
                Some(ResponseTypes::NodeStatus(_)) | None => {}
            },
            Ok(None) => return Ok(()),
            Err(s) => {
                return Err(format!(
                    "the flow stream from {what} broke: {} ({:?})",
                    s.message(),
                    s.code()
                ))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Source::parse("unix:///run/x/hubble.sock").unwrap(),
            Source::Unix("/run/x/hubble.sock".into())
        );
        assert_eq!(
            Source::parse("/run/h.sock").unwrap(),
            Source::Unix("/run/h.sock".into())
        );
        assert_eq!(
            Source::parse("127.0.0.1:4245").unwrap(),
            Source::Tcp("127.0.0.1:4245".into())
        );
        assert_eq!(
            Source::parse("http://relay:4245/").unwrap(),
            Source::Tcp("relay:4245".into())
        );
        for bad in [
            "",
            "unix://",
            "relay",
            "relay:http",
            "https://relay:443",
            ":4245",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Source::Unix("/a".into()).describe(), "unix:///a".to_owned());
    }
}
