//! Endpoint health: is each endpoint's datapath still what the agent programmed, and does its
//! veth still exist?
//!
//! Checked periodically and on link events (see `endpoints_watch`): a broken datapath (a link
//! unpinned, detached or running another program; a map entry gone) is reported in the status
//! until it is repaired, and each repair is counted; an endpoint whose veth vanished without a
//! CNI DEL (its pod's namespace deleted) is removed with everything it held, as a CNI DEL
//! would, so that its address can be reused.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// What the checks found and did, for the status.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Endpoint id → what is broken, until repaired.
    broken: Mutex<BTreeMap<u16, String>>,
    repairs: AtomicU64,
    vanished: AtomicU64,
}

impl Health {
    pub(super) fn problems(&self) -> Vec<String> {
        lock_map(&self.broken).values().cloned().collect()
    }

    pub(super) fn repairs(&self) -> u64 {
        self.repairs.load(Ordering::Relaxed)
    }

    pub(super) fn vanished(&self) -> u64 {
        self.vanished.load(Ordering::Relaxed)
    }
}

fn lock_map<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one check pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Endpoints looked at.
    pub checked: usize,
    /// Endpoints found broken and repaired.
    pub repaired: Vec<u16>,
    /// Endpoints found broken that could not be repaired (reported in the status).
    pub broken: Vec<u16>,
    /// Endpoints removed because their veth is gone.
    pub vanished: Vec<u16>,
}

impl EndpointManager {
    pub(super) fn forget_health(&self, id: u16) {
        lock_map(&self.health.broken).remove(&id);
    }

    /// Removes the endpoint on host interface `ifindex` when its veth is really gone (a link
    /// event alone is not trusted: the name and index are looked up again). Returns it.
    pub fn remove_vanished(&self, ifindex: u32) -> Option<Endpoint> {
        let ep = self
            .list()
            .into_iter()
            .find(|e| e.host_ifindex == ifindex)?;
        if self.datapath.endpoint_link_present(&spec_of(&ep)) {
            return None;
        }
        let id = ep.id;
        match self.delete_where(
            |e| e.id == id && e.host_ifindex == ifindex,
            "endpoint removed: its veth vanished without a CNI DEL",
        ) {
            Ok(d) => {
                if d.endpoint.is_some() {
                    self.health.vanished.fetch_add(1, Ordering::Relaxed);
                }
                d.endpoint
            }
            Err(e) => {
                warn!(endpoint = id, ifindex, error = %e, "the veth of this endpoint vanished but it cannot be removed; retrying at the next check");
                None
            }
        }
    }

    /// Checks every endpoint (or only the one on host interface `only`): a vanished veth
    /// removes the endpoint, a broken datapath is reported and repaired. Blocks (syscalls).
    pub fn check_datapath(&self, only: Option<u32>) -> CheckReport {
        let mut report = CheckReport::default();
        let endpoints: Vec<Endpoint> = self
            .list()
            .into_iter()
            .filter(|e| only.is_none_or(|i| e.host_ifindex == i))
            .collect();
        for ep in endpoints {
            report.checked += 1;
            let spec = spec_of(&ep);
            if !self.datapath.endpoint_link_present(&spec) {
                if self.remove_vanished(ep.host_ifindex).is_some() {
                    report.vanished.push(ep.id);
                }
                continue;
            }
            // Not-ready endpoints were never (fully) programmed: nothing to compare with.
            if ep.state != EndpointState::Ready {
                continue;
            }
            let problems = match self.datapath.check_endpoint(&spec) {
                Ok(p) => p,
                Err(e) => vec![format!("cannot check: {e}")],
            };
            if problems.is_empty() {
                self.forget_health(ep.id);
                continue;
            }
            let what = format!(
                "endpoint {} (container {}, host interface {}) has a broken datapath: {}",
                ep.id,
                ep.container_id,
                ep.host_ifname,
                problems.join("; ")
            );
            warn!("{what}; repairing");
            lock_map(&self.health.broken).insert(ep.id, what.clone());
            // Under the tables' lock, so that a concurrent delete cannot be undone by the repair.
            let repaired = {
                let tables = self.lock();
                if !tables.endpoints.contains_key(&ep.id) {
                    self.forget_health(ep.id);
                    continue;
                }
                self.datapath
                    .repair_endpoint(&spec)
                    .and_then(|()| self.datapath.check_endpoint(&spec))
            };
            match repaired {
                Ok(left) if left.is_empty() => {
                    self.forget_health(ep.id);
                    self.health.repairs.fetch_add(1, Ordering::Relaxed);
                    info!(endpoint = ep.id, container = %ep.container_id, "endpoint datapath repaired");
                    report.repaired.push(ep.id);
                }
                Ok(left) => {
                    let msg = format!("{what}; repair left: {}", left.join("; "));
                    warn!("{msg}");
                    lock_map(&self.health.broken).insert(ep.id, msg);
                    report.broken.push(ep.id);
                }
                Err(e) => {
                    let msg = format!("{what}; repair failed: {e}");
                    warn!("{msg}");
                    lock_map(&self.health.broken).insert(ep.id, msg);
                    report.broken.push(ep.id);
                }
            }
        }
        if !report.repaired.is_empty() {
            // A map entry written again lost its policy flags: put the policy back in force.
            self.after_change();
        }
        report
    }
}
