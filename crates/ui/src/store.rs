//! The flows the page is drawn from: the newest N of the source, in a ring (so memory is
//! bounded whatever the source sends), and what the source connection is doing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use ciliate_observer::proto::flow::Flow;
use serde::Serialize;
use tokio::sync::watch;

/// Default ring size: enough for a 1,000-workload map, small enough to aggregate every second.
pub const DEFAULT_CAPACITY: usize = 20_000;

/// What the connection to the flow source is doing.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// Where flows come from (`unix:///run/.../hubble.sock`, `127.0.0.1:4245`).
    pub source: String,
    /// `connecting`, `connected` or `error`.
    pub state: &'static str,
    /// Why the last attempt failed (set with `error`), for the page to show.
    pub error: Option<String>,
    /// Flows received since the UI started.
    pub received: u64,
    /// Events the source reported lost.
    pub lost: u64,
}

struct Inner {
    flows: VecDeque<Arc<Flow>>,
    status: SourceStatus,
}

/// The ring and the status, shared by the source task and the HTTP handlers.
#[derive(Debug)]
pub struct FlowStore {
    capacity: usize,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("flows", &self.flows.len())
            .field("status", &self.status)
            .finish()
    }
}

impl FlowStore {
    /// An empty store keeping the newest `capacity` flows (at least one) from `source`.
    pub fn new(source: &str, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            inner: Mutex::new(Inner {
                flows: VecDeque::with_capacity(capacity.min(4096)),
                status: SourceStatus {
                    source: source.to_owned(),
                    state: "connecting",
                    error: None,
                    received: 0,
                    lost: 0,
                },
            }),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The ring's size.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a flow, dropping the oldest when full.
    pub fn push(&self, flow: Flow) {
        {
            let mut inner = self.lock();
            if inner.flows.len() == self.capacity {
                inner.flows.pop_front();
            }
            inner.flows.push_back(Arc::new(flow));
            inner.status.received += 1;
        }
        self.bump();
    }

    /// Counts events the source lost.
    pub fn lost(&self, n: u64) {
        self.lock().status.lost += n;
        self.bump();
    }

    /// Forgets every flow (a reconnected source sends its history again).
    pub fn clear(&self) {
        self.lock().flows.clear();
        self.bump();
    }

    /// Records what the source connection is doing.
    pub fn set_state(&self, state: &'static str, error: Option<String>) {
        {
            let mut inner = self.lock();
            inner.status.state = state;
            inner.status.error = error;
        }
        self.bump();
    }

    /// The flows, oldest first (cheap: shared pointers).
    pub fn flows(&self) -> Vec<Arc<Flow>> {
        self.lock().flows.iter().cloned().collect()
    }

    /// The source's status.
    pub fn status(&self) -> SourceStatus {
        self.lock().status.clone()
    }

    /// A receiver that sees a new value whenever something changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest() {
        let s = FlowStore::new("x", 3);
        let mut rx = s.subscribe();
        for i in 0..5u32 {
            s.push(Flow {
                node_name: i.to_string(),
                ..Flow::default()
            });
        }
        let names: Vec<String> = s.flows().iter().map(|f| f.node_name.clone()).collect();
        assert_eq!(names, ["2", "3", "4"]);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        s.set_state("error", Some("gone".into()));
        assert!(rx.has_changed().unwrap());
        assert_eq!(s.status().received, 5);
        assert_eq!(s.status().error.as_deref(), Some("gone"));
        s.clear();
        assert!(s.flows().is_empty());
        assert_eq!(FlowStore::new("x", 0).capacity(), 1);
    }
}
