//! The difference between two [`LbState`]s (what `crates/lb` computes and the datapath writes): which frontends and backends to add, change and
//! remove. Minimal by construction: entries are matched by key (frontend address, port and
//! protocol; backend id) and only those whose value differs appear.

use std::collections::BTreeMap;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::lb::{L4Proto, LbBackend, LbFrontend, LbState};

/// What identifies a frontend: address, port, protocol.
pub type FrontendKey = (Ipv4Addr, u16, L4Proto);

/// What turns one [`LbState`] into another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbDiff {
    /// Frontends new in the second state.
    pub frontends_added: Vec<LbFrontend>,
    /// Frontends in both whose value differs (the second state's value).
    pub frontends_changed: Vec<LbFrontend>,
    /// Frontends only in the first state.
    pub frontends_removed: Vec<LbFrontend>,
    /// Backends new in the second state.
    pub backends_added: Vec<LbBackend>,
    /// Backends in both whose value differs (the second state's value).
    pub backends_changed: Vec<LbBackend>,
    /// Backends only in the first state.
    pub backends_removed: Vec<LbBackend>,
}

/// A frontend's key.
pub fn frontend_key(f: &LbFrontend) -> FrontendKey {
    (f.addr, f.port, f.proto)
}

impl LbDiff {
    /// What changes from `old` to `new`.
    pub fn between(old: &LbState, new: &LbState) -> Self {
        let mut d = Self::default();
        let (fa, fc, fr) = keyed(&old.frontends, &new.frontends, frontend_key);
        (d.frontends_added, d.frontends_changed, d.frontends_removed) = (fa, fc, fr);
        let (ba, bc, br) = keyed(&old.backends, &new.backends, |b| b.id);
        (d.backends_added, d.backends_changed, d.backends_removed) = (ba, bc, br);
        d
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many frontends and backends change.
    pub fn len(&self) -> usize {
        self.frontends_added.len()
            + self.frontends_changed.len()
            + self.frontends_removed.len()
            + self.backends_added.len()
            + self.backends_changed.len()
            + self.backends_removed.len()
    }

    /// `old` with this difference applied: [`LbDiff::between`]`(a, b).apply(a) == b`.
    pub fn apply(&self, old: &LbState) -> LbState {
        let mut frontends: BTreeMap<FrontendKey, LbFrontend> = old
            .frontends
            .iter()
            .map(|f| (frontend_key(f), f.clone()))
            .collect();
        for f in &self.frontends_removed {
            frontends.remove(&frontend_key(f));
        }
        for f in self.frontends_added.iter().chain(&self.frontends_changed) {
            frontends.insert(frontend_key(f), f.clone());
        }
        let mut backends: BTreeMap<u32, LbBackend> =
            old.backends.iter().map(|b| (b.id, b.clone())).collect();
        for b in &self.backends_removed {
            backends.remove(&b.id);
        }
        for b in self.backends_added.iter().chain(&self.backends_changed) {
            backends.insert(b.id, b.clone());
        }
        LbState {
            frontends: frontends.into_values().collect(),
            backends: backends.into_values().collect(),
        }
    }
}

/// (added, changed, removed) between two lists, matched by `key`.
fn keyed<T: Clone + PartialEq, K: Ord>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let old: BTreeMap<K, &T> = old.iter().map(|t| (key(t), t)).collect();
    let new: BTreeMap<K, &T> = new.iter().map(|t| (key(t), t)).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (k, n) in &new {
        match old.get(k) {
            None => added.push((*n).clone()),
            Some(o) if o != n => changed.push((*n).clone()),
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|(k, _)| !new.contains_key(k))
        .map(|(_, o)| (*o).clone())
        .collect();
    (added, changed, removed)
}
