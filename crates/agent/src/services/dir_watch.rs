//! Change notifications for `--manifest-dir` (inotify, through the `notify` crate): the stores
//! read the directory when a file was written, renamed, created or removed, instead of
//! polling it.
//!
//! A file being written is read once its writer closes it (or renames it into place, as
//! editors and Kubernetes' ConfigMap volumes do); a read that still finds it half-written
//! fails to parse and keeps the last good set in force until the next event.

use std::path::Path;
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::warn;

/// Whether an event may change what the directory holds once settled. Writes in progress
/// (data modified, file still open) are not: their close follows.
fn settles(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(_)) => false,
        _ => true,
    }
}

/// Watches `dir` and notifies every `Notify` of `wake` on each settling change. The watch
/// stops when the returned watcher is dropped. Errors (no inotify instances left, say) are
/// returned: the caller falls back on its periodic read.
pub fn watch(dir: &Path, wake: Vec<Arc<Notify>>) -> notify::Result<RecommendedWatcher> {
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if settles(&ev.kind) => {
                for w in &wake {
                    w.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "manifest directory watch error; the periodic read catches up")
            }
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_closed_write_wakes_and_a_read_does_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wake = Arc::new(Notify::new());
        let _w = watch(tmp.path(), vec![Arc::clone(&wake)]).expect("watches");
        std::fs::write(tmp.path().join("a.yaml"), "x: 1\n").expect("write");
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("woken by the write");
        // Drain anything else of that write, then only read.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::time::timeout(Duration::from_millis(10), wake.notified()).await;
        let _ = std::fs::read_to_string(tmp.path().join("a.yaml")).expect("read");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), wake.notified())
                .await
                .is_err(),
            "a read is not a change"
        );
        std::fs::remove_file(tmp.path().join("a.yaml")).expect("rm");
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("woken by the removal");
    }
}
