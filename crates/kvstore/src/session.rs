//! The background session of a store: holds the lease alive, lists and watches
//! `<prefix>/state/` into the view, and after a disconnect or a lost lease reconnects,
//! relists and writes this node's keys again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions,
    WatchResponse,
};
use tokio::sync::watch;

use crate::identity::Allocator;
use crate::owned::{Fix, Listed};
use crate::store::Shared;
use crate::{ClusterView, KvError};

/// First pause between reconnection attempts; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the session sends a lease keep-alive at most apart (its answer proves etcd is up).
const LIVENESS_PERIOD: Duration = Duration::from_secs(1);
/// How long unanswered keep-alives may go before etcd counts as gone.
const LIVENESS_DEADLINE: Duration = Duration::from_secs(3);

/// A synced session, ready to be served: the lease is alive and the view is current as of
/// `revision`.
pub(crate) struct Established {
    keeper: LeaseKeeper,
    acks: LeaseKeepAliveStream,
    ttl: Duration,
    revision: i64,
}

/// Why serving stopped.
enum Outcome {
    /// The store is closed or dropped.
    Stop,
    /// The lease is gone: this node's keys went with it.
    LeaseLost,
    /// The watch cannot go on from where it was (compaction): relist.
    Relist(String),
    /// etcd went away.
    Disconnected(String),
}

/// Makes sure the lease lives (granting a new one if it expired), lists `<prefix>/state/`,
/// publishes the fresh view and rewrites whatever of this node's keys is missing.
pub(crate) async fn establish(shared: &Shared) -> Result<Established, KvError> {
    let (keeper, acks, ttl) = ensure_lease(shared).await?;
    let lease = keeper.id();
    let _writes = shared.writes.lock().await;
    let revision = sync(shared, lease, true).await?;
    Ok(Established {
        keeper,
        acks,
        ttl,
        revision,
    })
}

/// Runs the session until the store is closed or dropped.
pub(crate) async fn run(shared: Arc<Shared>, first: Established, mut stop: watch::Receiver<bool>) {
    let mut next = Some(first);
    let mut backoff = MIN_BACKOFF;
    loop {
        let established = match next.take() {
            Some(e) => e,
            None => {
                let attempt = tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    r = tokio::time::timeout(shared.cfg.connect_timeout, establish(&shared)) => r,
                };
                match attempt {
                    Ok(Ok(e)) => {
                        tracing::info!(
                            endpoints = shared.conn.endpoints(),
                            revision = e.revision,
                            "etcd session synced"
                        );
                        backoff = MIN_BACKOFF;
                        e
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {:?}", shared.cfg.connect_timeout),
                        };
                        tracing::debug!("etcd still unreachable: {why}");
                        mark_disconnected(&shared);
                        shared.conn.renew_client().await;
                        if pause(&mut stop, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        match serve(&shared, established, &mut stop).await {
            Outcome::Stop => return,
            Outcome::LeaseLost => {
                tracing::warn!(
                    lease = format!("{:x}", shared.conn.lease()),
                    "etcd lease expired: granting a new one and writing this node's keys again"
                );
                shared.conn.set_lease(0);
            }
            Outcome::Relist(why) => tracing::info!("relisting etcd: {why}"),
            Outcome::Disconnected(why) => {
                tracing::warn!(
                    endpoints = shared.conn.endpoints(),
                    "lost etcd: {why}; keeping the last view and reconnecting"
                );
                mark_disconnected(&shared);
                shared.conn.renew_client().await;
                if pause(&mut stop, MIN_BACKOFF).await {
                    return;
                }
            }
        }
    }
}

/// Keeps the lease alive and applies watch events until something breaks.
async fn serve(
    shared: &Shared,
    established: Established,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let Established {
        mut keeper,
        mut acks,
        ttl,
        revision,
    } = established;
    let prefix = shared.keys.state_prefix().to_owned();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut events = match shared
        .conn
        .call("watch", &prefix, |mut c| {
            let p = prefix.clone();
            async move { c.watch(p, Some(options)).await }
        })
        .await
    {
        Ok(stream) => stream,
        Err(e) => return Outcome::Disconnected(e.to_string()),
    };
    // Keep-alives double as the liveness check of etcd: sent every second (or every third of
    // the lease, if shorter), unanswered for 3 s (or two thirds of the lease) means etcd is
    // gone, so a hung etcd is reported within seconds whatever the lease's length.
    let period = (ttl / 3).clamp(Duration::from_millis(100), LIVENESS_PERIOD);
    let deadline = (ttl * 2 / 3).min(LIVENESS_DEADLINE);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ack = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Outcome::Stop,
            _ = tick.tick() => {
                if last_ack.elapsed() > deadline {
                    return Outcome::Disconnected(format!(
                        "no keep-alive answer for {:?}", last_ack.elapsed()
                    ));
                }
                if let Err(e) = keeper.keep_alive().await {
                    return Outcome::Disconnected(format!("sending keep-alive: {e}"));
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) if a.ttl() > 0 => last_ack = Instant::now(),
                Ok(Some(_)) => return Outcome::LeaseLost,
                Ok(None) => return Outcome::Disconnected("keep-alive stream ended".into()),
                Err(e) => return Outcome::Disconnected(format!("keep-alive stream: {e}")),
            },
            msg = events.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.canceled() || resp.compact_revision() > 0 {
                        return Outcome::Relist(format!(
                            "watch canceled ({}; compacted at revision {})",
                            resp.cancel_reason(), resp.compact_revision()
                        ));
                    }
                    apply(shared, &resp);
                }
                Ok(None) => return Outcome::Disconnected("watch stream ended".into()),
                Err(e) => return Outcome::Disconnected(format!("watch stream: {e}")),
            },
            _ = shared.resync.notified() => {
                let _writes = shared.writes.lock().await;
                if let Err(e) = sync(shared, keeper.id(), false).await {
                    return Outcome::Disconnected(format!("rewriting this node's keys: {e}"));
                }
            }
        }
    }
}

/// Applies one watch response to the view: one publish per batch of events.
fn apply(shared: &Shared, resp: &WatchResponse) {
    let revision = resp.header().map(|h| h.revision());
    shared.view.send_if_modified(|view| {
        if resp.events().is_empty() {
            return false;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => view.apply_put(&shared.keys, kv.key(), kv.value()),
                EventType::Delete => view.apply_delete(&shared.keys, kv.key()),
            }
        }
        if let Some(r) = revision {
            view.revision = r;
        }
        true
    });
}

/// Lists `<prefix>/state/` and rewrites this node's keys from memory; with `publish`, the
/// listing also replaces the view. Returns the listing's revision. The caller holds
/// `shared.writes`, so no API write interleaves.
async fn sync(shared: &Shared, lease: i64, publish: bool) -> Result<i64, KvError> {
    let prefix = shared.keys.state_prefix().to_owned();
    let listed = shared
        .conn
        .call("list", &prefix, |mut c| {
            let p = prefix.clone();
            async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    if publish {
        let view = ClusterView::from_listing(
            &shared.keys,
            listed.kvs().iter().map(|kv| (kv.key(), kv.value())),
            revision,
        );
        shared.conn.set_connected(true);
        shared.view.send_replace(view);
    }
    let listing: Vec<Listed<'_>> = listed
        .kvs()
        .iter()
        .map(|kv| Listed {
            key: kv.key(),
            value: kv.value(),
            lease: kv.lease(),
        })
        .collect();
    let fixes = lock(&shared.owned).plan(&shared.keys, &shared.cfg.node_name, lease, &listing)?;
    if !fixes.is_empty() {
        tracing::info!(
            count = fixes.len(),
            "writing this node's keys to etcd again"
        );
    }
    for fix in fixes {
        match fix {
            Fix::Put { key, value } => {
                shared
                    .conn
                    .call("put", &key, |mut c| {
                        let k = key.clone();
                        async move {
                            c.put(k, value, Some(PutOptions::new().with_lease(lease)))
                                .await
                        }
                    })
                    .await?;
            }
            Fix::Delete { key } => {
                shared
                    .conn
                    .call("delete", &key, |mut c| {
                        let k = key.clone();
                        async move { c.delete(k, None).await }
                    })
                    .await?;
            }
            Fix::RestoreRef { labels, id } => {
                let allocator = Allocator {
                    conn: &shared.conn,
                    keys: &shared.keys,
                    node: &shared.cfg.node_name,
                    lease,
                };
                let now = allocator.allocate(&labels, Some(id)).await?;
                if let Some(held) = lock(&shared.owned).refs.get_mut(&labels) {
                    held.id = now;
                }
            }
        }
    }
    Ok(revision)
}

/// The lease to keep alive: the current one if etcd still has it, else a new one.
async fn ensure_lease(
    shared: &Shared,
) -> Result<(LeaseKeeper, LeaseKeepAliveStream, Duration), KvError> {
    let conn = &shared.conn;
    let current = conn.lease();
    if current != 0 {
        let client = conn.client();
        let kept = tokio::time::timeout(conn.request_timeout(), async move {
            let mut client = client;
            client.lease_keep_alive(current).await
        })
        .await;
        match kept {
            Ok(Ok((keeper, acks))) => return Ok((keeper, acks, shared.lease_ttl())),
            // etcd answered that the lease is gone.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                tracing::warn!(
                    lease = format!("{current:x}"),
                    "etcd lease expired while away"
                );
                conn.set_lease(0);
            }
            Ok(Err(e)) => return Err(KvError::etcd(format!("keep-alive lease {current:x}"), e)),
            Err(_) => {
                return Err(KvError::Timeout {
                    op: format!("keep-alive lease {current:x}"),
                    timeout: conn.request_timeout(),
                })
            }
        }
    }
    let ttl_secs = i64::try_from(shared.cfg.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let granted = conn
        .call(
            "grant lease for",
            &shared.cfg.node_name,
            |mut c| async move { c.lease_grant(ttl_secs, None).await },
        )
        .await?;
    let lease = granted.id();
    let (keeper, acks) = conn
        .call(
            "keep-alive lease",
            &format!("{lease:x}"),
            |mut c| async move { c.lease_keep_alive(lease).await },
        )
        .await?;
    conn.set_lease(lease);
    shared.set_lease_ttl(Duration::from_secs(
        u64::try_from(granted.ttl()).unwrap_or(1).max(1),
    ));
    tracing::debug!(
        lease = format!("{lease:x}"),
        ttl = granted.ttl(),
        "etcd lease granted"
    );
    Ok((keeper, acks, shared.lease_ttl()))
}

/// Flags the view as disconnected, keeping its content.
pub(crate) fn mark_disconnected(shared: &Shared) {
    shared.conn.set_connected(false);
    shared
        .view
        .send_if_modified(|v| std::mem::replace(&mut v.connected, false));
}

/// Sleeps unless stopped first; true when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, how_long: Duration) -> bool {
    tokio::select! {
        biased;
        _ = stop.changed() => true,
        _ = tokio::time::sleep(how_long) => false,
    }
}

/// Locks a std mutex, recovering from a panicked holder (the data stays consistent: every
/// holder only does map updates).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
