//! Counters of the source, per kind: plain atomics for a metrics endpoint to read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::kind::ResourceKind;

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    relists: AtomicU64,
    errors: AtomicU64,
    warnings: AtomicU64,
    listed: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// Counters of one running source. Shared (`Arc`) between the source's task and its readers.
#[derive(Debug, Default)]
pub struct Stats {
    kinds: [Counters; ResourceKind::ALL.len()],
}

/// The counters of one kind at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindStats {
    /// The kind.
    pub kind: ResourceKind,
    /// Objects delivered (`InitApply`, `Apply`, `Delete`).
    pub events: u64,
    /// Lists started after the first one (after a 410 Gone, or a failed list).
    pub relists: u64,
    /// Failed lists, watches and watch streams (each retried after a backoff).
    pub errors: u64,
    /// Unknown fields dropped from objects (see [`crate::Document::warnings`]).
    pub warnings: u64,
    /// Whether the latest list has completed (`InitDone` sent and no `Init` since).
    pub listed: bool,
    /// The latest error, as text (e.g. the API server's 403 or 404 when RBAC or a CRD is
    /// missing): what a status command shows next to a kind that never lists.
    pub last_error: Option<String>,
}

impl Stats {
    /// The counters of one kind.
    pub fn kind(&self, kind: ResourceKind) -> KindStats {
        let c = &self.kinds[kind.index()];
        KindStats {
            kind,
            events: c.events.load(Ordering::Relaxed),
            relists: c.relists.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            warnings: c.warnings.load(Ordering::Relaxed),
            listed: c.listed.load(Ordering::Relaxed),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// The counters of every kind, in [`ResourceKind::ALL`] order.
    pub fn snapshot(&self) -> Vec<KindStats> {
        ResourceKind::ALL
            .into_iter()
            .map(|k| self.kind(k))
            .collect()
    }

    pub(crate) fn event(&self, kind: ResourceKind, warnings: usize) {
        let c = &self.kinds[kind.index()];
        c.events.fetch_add(1, Ordering::Relaxed);
        c.warnings.fetch_add(warnings as u64, Ordering::Relaxed);
    }

    pub(crate) fn relist(&self, kind: ResourceKind) {
        self.kinds[kind.index()]
            .relists
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, kind: ResourceKind, error: String) {
        let c = &self.kinds[kind.index()];
        c.errors.fetch_add(1, Ordering::Relaxed);
        // A panic while holding this lock cannot leave the string half-written: take it.
        let mut last = c.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(error);
    }

    pub(crate) fn set_listed(&self, kind: ResourceKind, listed: bool) {
        self.kinds[kind.index()]
            .listed
            .store(listed, Ordering::Relaxed);
    }
}
