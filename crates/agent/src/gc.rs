//! Connection-tracking garbage collection: a background task that deletes expired conntrack
//! entries every `--ct-gc-interval` seconds, so the LRU table holds live connections rather
//! than evicting them under pressure.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ciliate_datapath::Datapath;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The outcome of the last GC pass, for `GET /v1/status`.
#[derive(Debug, Default)]
pub struct CtGcHealth {
    last_error: Mutex<Option<String>>,
}

impl CtGcHealth {
    /// The error of the last pass, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// Runs GC passes every `interval` until `shutdown` turns true. The first pass runs one
/// interval after the start: right after a restart the table holds what the previous agent
/// left, which is no more urgent than at any other time.
pub async fn run_ct_gc(
    datapath: Arc<dyn Datapath>,
    interval: Duration,
    health: Arc<CtGcHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A pass delayed by a slow one is not followed by a burst of catch-up passes.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let dp = Arc::clone(&datapath);
        // ct_gc walks a BPF map with one syscall per entry: keep it off the async workers.
        match tokio::task::spawn_blocking(move || dp.ct_gc()).await {
            Ok(Ok(stats)) => {
                debug!(
                    scanned = stats.scanned,
                    deleted = stats.deleted,
                    "conntrack GC pass"
                );
                health.set(None);
            }
            Ok(Err(e)) => {
                warn!(error = %e, "conntrack GC pass failed; retrying next interval");
                health.set(Some(format!("conntrack GC failed: {e}")));
            }
            Err(e) => {
                warn!(error = %e, "conntrack GC pass panicked; retrying next interval");
                health.set(Some(format!("conntrack GC panicked: {e}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_datapath::{CtGcStats, DatapathError, EndpointSpec};
    use ciliate_model::api::{CtEntry, DatapathStatus};
    use ciliate_model::bpf_policy::{EndpointPolicy, IpcacheEntry, PolicySyncStats};
    use ciliate_model::lb::{LbState, LbSyncStats};
    use ciliate_model::monitor::MonitorEvent;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::broadcast;

    /// Counts GC passes and fails every other one.
    #[derive(Debug, Default)]
    struct CountingDatapath {
        passes: AtomicU32,
    }

    impl Datapath for CountingDatapath {
        fn status(&self) -> DatapathStatus {
            DatapathStatus {
                loaded: true,
                kind: "test".into(),
                pin_dir: String::new(),
                programs: vec![],
                maps: vec![],
            }
        }
        fn upsert_endpoint(&self, _: &EndpointSpec) -> Result<(), DatapathError> {
            Ok(())
        }
        fn remove_endpoint(&self, _: &EndpointSpec) -> Result<(), DatapathError> {
            Ok(())
        }
        fn list_endpoints(&self) -> Result<Vec<EndpointSpec>, DatapathError> {
            Ok(vec![])
        }
        fn ct_entries(&self) -> Result<Vec<CtEntry>, DatapathError> {
            Ok(vec![])
        }
        fn ct_gc(&self) -> Result<CtGcStats, DatapathError> {
            let n = self.passes.fetch_add(1, Ordering::SeqCst);
            if n & 1 == 0 {
                Err(DatapathError::Injected("map gone".into()))
            } else {
                Ok(CtGcStats {
                    scanned: 3,
                    deleted: 1,
                })
            }
        }
        fn sync_lb(&self, _: &LbState) -> Result<LbSyncStats, DatapathError> {
            Ok(LbSyncStats::default())
        }
        fn update_lb(
            &self,
            _: &ciliate_model::lb_diff::LbDiff,
        ) -> Result<LbSyncStats, DatapathError> {
            Ok(LbSyncStats::default())
        }
        fn lb_state(&self) -> Result<LbState, DatapathError> {
            Ok(LbState::default())
        }
        fn set_endpoint_policy(
            &self,
            _: &EndpointSpec,
            _: &EndpointPolicy,
        ) -> Result<PolicySyncStats, DatapathError> {
            Ok(PolicySyncStats::default())
        }
        fn endpoint_policy(&self, _: &EndpointSpec) -> Result<EndpointPolicy, DatapathError> {
            Ok(EndpointPolicy::default())
        }
        fn sync_ipcache(&self, _: &[IpcacheEntry]) -> Result<PolicySyncStats, DatapathError> {
            Ok(PolicySyncStats::default())
        }
        fn ipcache(&self) -> Result<Vec<IpcacheEntry>, DatapathError> {
            Ok(vec![])
        }
        fn subscribe_events(&self) -> broadcast::Receiver<MonitorEvent> {
            broadcast::channel(1).1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passes_run_every_interval_record_errors_and_stop_on_shutdown() {
        let dp = Arc::new(CountingDatapath::default());
        let health = Arc::new(CtGcHealth::default());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run_ct_gc(
            dp.clone(),
            Duration::from_secs(30),
            health.clone(),
            rx,
        ));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(
            dp.passes.load(Ordering::SeqCst),
            0,
            "no pass before the first interval"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        // spawn_blocking runs on a real thread: give it a moment.
        for _ in 0..100 {
            if health.last_error().is_some() {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(dp.passes.load(Ordering::SeqCst), 1);
        assert!(health.last_error().is_some_and(|e| e.contains("map gone")));
        tokio::time::sleep(Duration::from_secs(30)).await;
        for _ in 0..100 {
            if health.last_error().is_none() {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(dp.passes.load(Ordering::SeqCst), 2);
        assert!(
            health.last_error().is_none(),
            "a good pass clears the error"
        );
        tx.send(true).expect("task listens");
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}
