//! The agent's L7 redirect state: every endpoint's [`L7Redirect`]s as policy last computed
//! them, pushed to the node's proxy as they change.
//!
//! The policy manager calls [`L7State::set_endpoint`] whenever it computes an endpoint's
//! policy (reconciliation, a new endpoint, new labels) and [`L7State::retain`] after a
//! reconciliation; only an endpoint whose redirects differ from what was last sent produces a
//! [`ProxyCommand::Endpoint`], so the cost of a change is the endpoints it touches. The table
//! is whole at all times: [`L7State::snapshot`] gives the [`ProxyCommand::Snapshot`] a proxy
//! (re)connecting must receive first.
//!
//! Whoever runs the proxy attaches an [`L7Sink`] ([`L7State::attach`]): it receives the
//! snapshot at once, then every change in order. Since every change is sent, the last command
//! for an endpoint always equals the table's state, so a consumer may also take a
//! [`L7State::snapshot`] at any time and then apply the commands still queued: it ends in the
//! same state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ciliate_model::api::ProxyStatus;
use ciliate_model::l7::{L7Redirect, ProxyCommand, ProxyPorts};

/// Where the commands for the proxy go (the proxy supervisor's side).
pub trait L7Sink: Send + Sync {
    /// Takes one command; must not block (queue it).
    fn send(&self, command: ProxyCommand);
}

impl L7Sink for tokio::sync::mpsc::UnboundedSender<ProxyCommand> {
    fn send(&self, command: ProxyCommand) {
        // A closed receiver means the supervisor is gone; its successor attaches again and
        // starts from a snapshot.
        let _ = tokio::sync::mpsc::UnboundedSender::send(self, command);
    }
}

impl L7Sink for std::sync::mpsc::Sender<ProxyCommand> {
    fn send(&self, command: ProxyCommand) {
        let _ = std::sync::mpsc::Sender::send(self, command);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    redirects: Vec<L7Redirect>,
    /// The [`L7State::set_endpoint`] call that last wrote it.
    seq: u64,
}

/// What the supervisor reports about the proxy process, for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyHealth {
    /// The process runs and answers.
    pub up: Option<bool>,
    /// The revision it has in force.
    pub applied_revision: Option<u64>,
    /// Restarts since the agent started.
    pub restarts: Option<u64>,
    /// HTTP requests handled.
    pub requests: Option<u64>,
    /// The proxy's process id.
    pub pid: Option<u32>,
}

/// Every endpoint's redirects, and where changes go.
pub struct L7State {
    ports: ProxyPorts,
    table: BTreeMap<u16, Row>,
    seq: u64,
    revision: u64,
    sink: Option<Box<dyn L7Sink>>,
    health: ProxyHealth,
    /// The revision the proxy has confirmed in force, for those waiting on it.
    applied: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for L7State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L7State")
            .field("endpoints", &self.table.len())
            .field("revision", &self.revision)
            .field("attached", &self.sink.is_some())
            .finish()
    }
}

impl L7State {
    /// An empty table; commands go nowhere until a sink is attached.
    pub fn new(ports: ProxyPorts) -> Self {
        Self {
            ports,
            table: BTreeMap::new(),
            seq: 0,
            revision: 0,
            sink: None,
            health: ProxyHealth::default(),
            applied: tokio::sync::watch::Sender::new(0),
        }
    }

    /// What to wait on so that `endpoint`'s redirects are in force in the proxy: the revision
    /// that holds them and a receiver of the proxy's confirmations; `None` when there is
    /// nothing to wait for (no redirects, or no proxy to take them).
    pub fn pending(&self, endpoint: u16) -> Option<(u64, tokio::sync::watch::Receiver<u64>)> {
        (self.sink.is_some() && self.table.contains_key(&endpoint))
            .then(|| (self.revision, self.applied.subscribe()))
    }

    /// Attaches the proxy's side: it receives the snapshot now, then every change. Replaces an
    /// earlier sink.
    pub fn attach(&mut self, sink: Box<dyn L7Sink>) {
        sink.send(self.snapshot());
        self.sink = Some(sink);
    }

    /// Detaches the sink (the proxy is not run any more).
    pub fn detach(&mut self) {
        self.sink = None;
        self.health = ProxyHealth::default();
    }

    /// Records what the supervisor knows about the proxy process.
    pub fn set_health(&mut self, health: ProxyHealth) {
        if let Some(r) = health.applied_revision {
            self.applied.send_if_modified(|a| {
                let newer = r > *a;
                *a = (*a).max(r);
                newer
            });
        }
        self.health = health;
    }

    /// A position to give [`L7State::retain`]: endpoints written after it are kept.
    pub fn mark(&self) -> u64 {
        self.seq
    }

    /// Sets one endpoint's redirects (empty: none) at policy `revision`; sends them when they
    /// changed.
    pub fn set_endpoint(&mut self, endpoint: u16, redirects: Vec<L7Redirect>, revision: u64) {
        self.seq += 1;
        self.revision = self.revision.max(revision);
        let changed = match self.table.get(&endpoint) {
            Some(row) => row.redirects != redirects,
            None => !redirects.is_empty(),
        };
        if redirects.is_empty() {
            self.table.remove(&endpoint);
        } else {
            self.table.insert(
                endpoint,
                Row {
                    redirects: redirects.clone(),
                    seq: self.seq,
                },
            );
        }
        if changed {
            self.send(ProxyCommand::Endpoint {
                revision: self.revision,
                endpoint,
                redirects,
            });
        }
    }

    /// Removes the redirects of endpoints not in `present`, except those set after `mark` (a
    /// view older than them must not undo them); each removal is sent as an empty list.
    pub fn retain(&mut self, present: &BTreeSet<u16>, mark: u64, revision: u64) {
        let gone: Vec<u16> = self
            .table
            .iter()
            .filter(|(id, row)| !present.contains(id) && row.seq <= mark)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.set_endpoint(id, Vec::new(), revision);
        }
    }

    /// Forgets an endpoint that was removed.
    pub fn remove_endpoint(&mut self, endpoint: u16, revision: u64) {
        self.set_endpoint(endpoint, Vec::new(), revision);
    }

    /// Every redirect in force, as the proxy must receive them first.
    pub fn snapshot(&self) -> ProxyCommand {
        ProxyCommand::Snapshot {
            revision: self.revision,
            redirects: self.redirects(),
        }
    }

    /// Every redirect, by endpoint.
    pub fn redirects(&self) -> Vec<L7Redirect> {
        self.table
            .values()
            .flat_map(|r| r.redirects.iter().cloned())
            .collect()
    }

    /// One endpoint's redirects.
    pub fn endpoint(&self, endpoint: u16) -> &[L7Redirect] {
        self.table
            .get(&endpoint)
            .map_or(&[][..], |r| r.redirects.as_slice())
    }

    /// For `status`.
    pub fn status(&self) -> ProxyStatus {
        ProxyStatus {
            enabled: self.sink.is_some(),
            listeners: self.ports,
            redirects: self.table.values().map(|r| r.redirects.len()).sum(),
            endpoints: self.table.len(),
            revision: self.revision,
            up: self.health.up,
            applied_revision: self.health.applied_revision,
            restarts: self.health.restarts,
            requests: self.health.requests,
            pid: self.health.pid,
            redirected_packets: 0,
        }
    }

    /// What is wrong, for `status`: redirects with no proxy to take them are refused.
    pub fn problems(&self) -> Vec<String> {
        let s = self.status();
        if s.redirects == 0 {
            return Vec::new();
        }
        if !s.enabled {
            return vec![format!(
                "{} L7 redirects of {} endpoints are in force but no L7 proxy runs on this node: \
                 their connections are refused (fail closed)",
                s.redirects, s.endpoints
            )];
        }
        if s.up == Some(false) {
            return vec![format!(
                "the L7 proxy is down: connections of {} L7 redirects wait or are refused until it is back",
                s.redirects
            )];
        }
        Vec::new()
    }

    fn send(&self, command: ProxyCommand) {
        if let Some(sink) = &self.sink {
            sink.send(command);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ciliate_model::l7::{L7Parser, L7PeerRules};

    use super::*;

    fn redirect(endpoint: u16, port: u16) -> L7Redirect {
        L7Redirect {
            endpoint,
            endpoint_ip: Ipv4Addr::new(10, 0, 0, 1),
            egress: false,
            proto: 6,
            port,
            parser: L7Parser::Http,
            proxy_port: 15002,
            rules: vec![L7PeerRules {
                peers: None,
                rule: 1,
                http: vec![],
                kafka: vec![],
                dns: vec![],
            }],
        }
    }

    #[test]
    fn only_changes_are_sent_and_the_snapshot_is_whole() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut s = L7State::new(ProxyPorts::default());
        s.set_endpoint(1, vec![redirect(1, 80)], 2);
        s.attach(Box::new(tx));
        assert_eq!(
            rx.try_recv().unwrap(),
            ProxyCommand::Snapshot {
                revision: 2,
                redirects: vec![redirect(1, 80)]
            }
        );
        s.set_endpoint(1, vec![redirect(1, 80)], 3);
        s.set_endpoint(2, vec![], 3);
        assert!(rx.try_recv().is_err(), "nothing changed");
        s.set_endpoint(2, vec![redirect(2, 8080)], 4);
        assert!(matches!(
            rx.try_recv().unwrap(),
            ProxyCommand::Endpoint {
                revision: 4,
                endpoint: 2,
                ..
            }
        ));
        let mark = s.mark();
        s.set_endpoint(3, vec![redirect(3, 80)], 5);
        let _ = rx.try_recv();
        // Endpoint 1 is gone from the view; 3 was set after the view was taken and stays.
        s.retain(&BTreeSet::from([2]), mark, 5);
        assert_eq!(
            rx.try_recv().unwrap(),
            ProxyCommand::Endpoint {
                revision: 5,
                endpoint: 1,
                redirects: vec![]
            }
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(s.redirects(), vec![redirect(2, 8080), redirect(3, 80)]);
        let st = s.status();
        assert!(st.enabled);
        assert_eq!((st.redirects, st.endpoints, st.revision), (2, 2, 5));
        assert!(s.problems().is_empty());
        s.detach();
        assert!(
            !s.problems().is_empty(),
            "redirects without a proxy fail closed"
        );
    }
}
