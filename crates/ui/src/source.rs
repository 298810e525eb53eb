//! Where flows come from: a Hubble Observer (an agent's `hubble.sock`, or the relay over TCP),
//! followed with GetFlows through the client generated from Hubble's protos, into the
//! [`FlowStore`]. A source that goes away is retried with back-off; the page says so meanwhile.

use std::sync::Arc;
use std::time::Duration;

use ciliate_observer::proto::observer::{get_flows_response::ResponseTypes, GetFlowsRequest};

use crate::store::FlowStore;

/// An Observer to follow: the same addresses `ciliate observe --server` takes.
pub use ciliate_observer::client::Target as Source;

/// How long connecting to a source may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
                store.set_state("error", Some(format!("{source} ended the flow stream")));
            }
            Err(e) => {
                tracing::warn!(source = %source, error = %e, "flow source failed");
                store.set_state("error", Some(e));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(source: &Source, store: &FlowStore) -> Result<(), String> {
    let what = source.to_string();
    let mut client = ciliate_observer::client::connect(source, CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("cannot reach the observer at {what}: {}", error_text(&e)))?;
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
