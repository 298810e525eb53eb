//! The loop that keeps endpoints honest: link events from the kernel (a veth removed or
//! changed) are acted on as they come, and every endpoint is checked periodically besides, for
//! what no event announces (a link unpinned or a program swapped) and for events the netlink
//! socket dropped. See [`EndpointManager::check_datapath`].

use std::sync::Arc;
use std::time::Duration;

use ciliate_datapath::link_watch::LinkEvent;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::endpoints::EndpointManager;

/// How often every endpoint is checked when no event says anything.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Runs until `shutdown`: checks all endpoints at once (veths may have vanished while the
/// agent was down), then on every link event and every `interval`.
pub async fn run_endpoint_watch(
    manager: Arc<EndpointManager>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = match manager.datapath().watch_links() {
        Ok(rx) => rx,
        Err(e) => {
            warn!(error = %e, "cannot watch link events; vanished pods are noticed by the periodic check only");
            None
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let only = tokio::select! {
            _ = ticker.tick() => None,
            ev = next_event(&mut events) => match ev {
                Some(ev) => Some(ev),
                None => {
                    warn!("the link event stream ended; vanished pods are noticed by the periodic check only");
                    events = None;
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let m = Arc::clone(&manager);
        let pass = tokio::task::spawn_blocking(move || match only {
            Some(LinkEvent::Removed { ifindex, .. }) => {
                let gone = m.remove_vanished(ifindex);
                debug!(ifindex, removed = gone.is_some(), "link removed");
            }
            Some(LinkEvent::Changed { ifindex, .. }) => {
                m.check_datapath(Some(ifindex));
            }
            None => {
                m.check_datapath(None);
            }
        });
        if let Err(e) = pass.await {
            warn!(error = %e, "an endpoint check panicked; retrying at the next one");
        }
    }
}

/// The next event; pending forever without a stream, so the loop runs on the ticker alone.
async fn next_event(
    events: &mut Option<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>,
) -> Option<LinkEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
