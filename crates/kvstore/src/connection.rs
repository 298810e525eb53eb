//! The etcd client of one store: bounded requests, the current lease, whether etcd is reachable.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::{KvError, KvstoreConfig};

/// The client and the session facts every request needs.
pub(crate) struct Connection {
    endpoints: Vec<String>,
    request_timeout: Duration,
    /// Replaced after a disconnect, so a dead channel is never reused.
    client: RwLock<Client>,
    /// The lease this node's keys are attached to; 0 while there is none.
    lease: AtomicI64,
    /// True from a successful (re)sync until the session notices etcd is gone.
    connected: AtomicBool,
    closed: AtomicBool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoints", &self.endpoints)
            .field("lease", &self.lease())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A client for `cfg.endpoints`. Connects lazily: nothing is sent yet.
    pub(crate) async fn new(cfg: &KvstoreConfig) -> Result<Self, KvError> {
        let client = open(&cfg.endpoints, cfg.request_timeout).await?;
        Ok(Self {
            endpoints: cfg.endpoints.clone(),
            request_timeout: cfg.request_timeout,
            client: RwLock::new(client),
            lease: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// The endpoints, comma-separated, for messages.
    pub(crate) fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// The bound on each request.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A handle on the current client (cheap: channels inside).
    pub(crate) fn client(&self) -> Client {
        match self.client.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a fresh client after a disconnect.
    pub(crate) async fn renew_client(&self) {
        match open(&self.endpoints, self.request_timeout).await {
            Ok(fresh) => match self.client.write() {
                Ok(mut c) => *c = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            },
            Err(e) => tracing::warn!("etcd client for {}: {e}", self.endpoints()),
        }
    }

    /// The current lease (0 = none).
    pub(crate) fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Records the lease the session holds.
    pub(crate) fn set_lease(&self, lease: i64) {
        self.lease.store(lease, Ordering::SeqCst);
    }

    /// Whether the session is synced with etcd right now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Set by the session.
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
    }

    /// Marks the store closed; true if it already was.
    pub(crate) fn close(&self) -> bool {
        self.closed.swap(true, Ordering::SeqCst)
    }

    /// Fails unless the store is open.
    pub(crate) fn check_open(&self) -> Result<(), KvError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(KvError::Closed);
        }
        Ok(())
    }

    /// The lease to write with, failing fast when etcd is known to be unreachable.
    pub(crate) fn ready_lease(&self, what: &str) -> Result<i64, KvError> {
        self.check_open()?;
        let lease = self.lease();
        if !self.is_connected() || lease == 0 {
            return Err(KvError::Disconnected { what: what.into() });
        }
        Ok(lease)
    }

    /// Runs one request against the current client, bounded by the request timeout.
    /// `op` names the request and its key for errors.
    pub(crate) async fn call<T, F, Fut>(&self, op: &str, key: &str, f: F) -> Result<T, KvError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.request_timeout, f(self.client())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(KvError::etcd(format!("{op} {key}"), e)),
            Err(_) => Err(KvError::Timeout {
                op: format!("{op} {key}"),
                timeout: self.request_timeout,
            }),
        }
    }
}

/// A lazily connecting client with HTTP/2 keep-alive, so a silently dead connection is noticed.
async fn open(endpoints: &[String], timeout: Duration) -> Result<Client, KvError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        // etcd refuses pings more often than every 5 s (too_many_pings).
        .with_keep_alive(Duration::from_secs(10), timeout);
    match tokio::time::timeout(timeout, Client::connect(endpoints, Some(options))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(KvError::Config(format!(
            "etcd endpoints {}: {e}",
            endpoints.join(",")
        ))),
        Err(_) => Err(KvError::Timeout {
            op: format!("connect {}", endpoints.join(",")),
            timeout,
        }),
    }
}
