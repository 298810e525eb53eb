//! The nodes the relay reads: one connection task per node that connects, notices at once when
//! the connection closes, and reconnects with exponential backoff. Requests read the current
//! state with [`Pool::list`]; long requests learn of changes through [`Pool::subscribe`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ciliate_observer::client::{connect_watched, Target};
use ciliate_observer::proto::observer::observer_client::ObserverClient;
use ciliate_observer::proto::observer::ServerStatusRequest;
use ciliate_observer::proto::relay::NodeState;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::{info, warn};

/// How the pool connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bound on connecting to a node and on its first answer.
    pub dial_timeout: Duration,
    /// First wait before reconnecting; doubles on each failure.
    pub backoff_min: Duration,
    /// Longest wait between reconnection attempts (Hubble relay's `--retry-timeout`).
    pub backoff_max: Duration,
    /// How long a node that left the cluster stays listed as `NODE_GONE`.
    pub gone_retention: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            dial_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            gone_retention: Duration::from_secs(600),
        }
    }
}

/// A node as a request sees it.
#[derive(Clone, Debug)]
pub struct PeerView {
    /// The node's name.
    pub name: String,
    /// Where it is reached.
    pub address: String,
    /// `NODE_CONNECTED`, `NODE_UNAVAILABLE` or `NODE_GONE`.
    pub state: NodeState,
    /// A client while connected.
    pub client: Option<ObserverClient<Channel>>,
    /// Why it is not connected.
    pub reason: Option<String>,
}

#[derive(Debug)]
struct Peer {
    target: Target,
    client: Option<ObserverClient<Channel>>,
    reason: Option<String>,
    gone_since: Option<Instant>,
    task: Option<JoinHandle<()>>,
    /// Woken when a request to the node failed, to check the connection at once.
    failed: Arc<Notify>,
}

#[derive(Debug)]
struct Shared {
    cfg: PoolConfig,
    peers: Mutex<BTreeMap<String, Peer>>,
    changed: watch::Sender<u64>,
}

/// The nodes and their connections. Clones share them.
#[derive(Clone, Debug)]
pub struct Pool {
    shared: Arc<Shared>,
}

fn lock(m: &Mutex<BTreeMap<String, Peer>>) -> MutexGuard<'_, BTreeMap<String, Peer>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// An empty pool; call inside a tokio runtime.
    pub fn new(cfg: PoolConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg,
                peers: Mutex::new(BTreeMap::new()),
                changed: watch::Sender::new(0),
            }),
        }
    }

    /// Makes the pool read exactly `nodes` (name → address): new ones are connected, ones with
    /// a new address reconnected, missing ones dropped and listed as `NODE_GONE` for a while.
    pub fn set_nodes(&self, nodes: &BTreeMap<String, Target>) {
        let now = Instant::now();
        let mut peers = lock(&self.shared.peers);
        for (name, peer) in peers.iter_mut() {
            if !nodes.contains_key(name) && peer.gone_since.is_none() {
                info!(node = name, "node left the cluster");
                if let Some(t) = peer.task.take() {
                    t.abort();
                }
                peer.client = None;
                peer.reason = Some("the node left the cluster".into());
                peer.gone_since = Some(now);
            }
        }
        let retention = self.shared.cfg.gone_retention;
        peers.retain(|_, p| {
            p.gone_since
                .is_none_or(|g| now.duration_since(g) < retention)
        });
        for (name, target) in nodes {
            let fresh = match peers.get(name) {
                Some(p) => p.gone_since.is_some() || p.target != *target,
                None => true,
            };
            if !fresh {
                continue;
            }
            if let Some(t) = peers.get_mut(name).and_then(|p| p.task.take()) {
                t.abort();
            }
            info!(node = name, address = %target, "reading flows of node");
            let failed = Arc::new(Notify::new());
            let task = tokio::spawn(run_peer(
                self.clone(),
                name.clone(),
                target.clone(),
                Arc::clone(&failed),
            ));
            peers.insert(
                name.clone(),
                Peer {
                    target: target.clone(),
                    client: None,
                    reason: Some("connecting".into()),
                    gone_since: None,
                    task: Some(task),
                    failed,
                },
            );
        }
        drop(peers);
        self.bump();
    }

    /// Every node known, by name.
    pub fn list(&self) -> Vec<PeerView> {
        lock(&self.shared.peers)
            .iter()
            .map(|(name, p)| PeerView {
                name: name.clone(),
                address: p.target.to_string(),
                state: if p.gone_since.is_some() {
                    NodeState::NodeGone
                } else if p.client.is_some() {
                    NodeState::NodeConnected
                } else {
                    NodeState::NodeUnavailable
                },
                client: p.client.clone(),
                reason: p.reason.clone(),
            })
            .collect()
    }

    /// Changes whenever a node connects, goes away, joins or leaves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// A request to `node` failed: check its connection now rather than on the next close.
    pub fn report_failure(&self, node: &str) {
        if let Some(p) = lock(&self.shared.peers).get(node) {
            p.failed.notify_one();
        }
    }

    /// Stops every connection task.
    pub fn shutdown(&self) {
        for p in lock(&self.shared.peers).values_mut() {
            if let Some(t) = p.task.take() {
                t.abort();
            }
        }
    }

    fn bump(&self) {
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Records the state of `node` if it is still served by this target.
    fn set_state(
        &self,
        node: &str,
        target: &Target,
        client: Option<ObserverClient<Channel>>,
        reason: Option<String>,
    ) {
        let mut peers = lock(&self.shared.peers);
        let Some(p) = peers.get_mut(node) else {
            return;
        };
        if p.target != *target || p.gone_since.is_some() {
            return;
        }
        p.client = client;
        p.reason = reason;
        drop(peers);
        self.bump();
    }
}

/// Keeps one node connected: connect, confirm it serves the observer API, wait until the
/// connection closes or a request fails, then retry with backoff.
async fn run_peer(pool: Pool, name: String, target: Target, failed: Arc<Notify>) {
    let cfg = pool.shared.cfg.clone();
    let mut backoff = cfg.backoff_min;
    loop {
        let lost = match connect_watched(&target, cfg.dial_timeout).await {
            Err(e) => format!("cannot connect to {target}: {}", error_chain(&e)),
            Ok((channel, mut closed)) => {
                let mut client = ObserverClient::new(channel);
                let status = tokio::time::timeout(
                    cfg.dial_timeout,
                    client.server_status(ServerStatusRequest {}),
                )
                .await;
                match status {
                    Err(_) => format!("{target} did not answer ServerStatus in time"),
                    Ok(Err(s)) => format!("{target} answered ServerStatus with {}", s.message()),
                    Ok(Ok(_)) => {
                        info!(node = name, address = %target, "connected to node");
                        pool.set_state(&name, &target, Some(client.clone()), None);
                        backoff = cfg.backoff_min;
                        wait_lost(&target, &mut client, &mut closed, &failed, cfg.dial_timeout)
                            .await
                    }
                }
            }
        };
        warn!(node = name, reason = lost, retry_in = ?backoff, "node unavailable");
        pool.set_state(&name, &target, None, Some(lost));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// Waits until the connection to `target` closes, or a request failed and the node does not
/// answer a status request either; says why.
async fn wait_lost(
    target: &Target,
    client: &mut ObserverClient<Channel>,
    closed: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    failed: &Notify,
    timeout: Duration,
) -> String {
    loop {
        tokio::select! {
            _ = closed.recv() => return format!("connection to {target} closed"),
            () = failed.notified() => {
                // A request failed; the node may still be fine.
                let check = client.server_status(ServerStatusRequest {});
                if !matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(_))) {
                    return format!("{target} stopped answering");
                }
            }
        }
    }
}

/// An error with its sources, which carry the useful part of transport errors.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cur = c.source();
    }
    s
}
