//! Which nodes the relay reads: a static `--peer NAME=ADDR` list, and/or every node record in
//! etcd that names a `hubbleAddress` (the agent publishes its `--hubble-listen-address`),
//! watched so that joins, leaves and address changes reach the [`Pool`] at once.

use std::collections::BTreeMap;
use std::time::Duration;

use ciliate_kvstore::{ClusterView, Kvstore, KvstoreConfig};
use ciliate_observer::client::Target;
use ciliate_observer::ring::qualified_node_name;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::pool::Pool;

/// A `--peer NAME=ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPeer {
    /// The node's name.
    pub name: String,
    /// Where its observer API is.
    pub target: Target,
}

impl std::str::FromStr for StaticPeer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = s.split_once('=').ok_or_else(|| {
            format!("--peer {s:?}: expected NAME=ADDR, e.g. node0=unix:///run/ciliate/hubble.sock or node1=10.0.0.2:4244")
        })?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!(
                "--peer {s:?}: the node name must be non-empty without spaces"
            ));
        }
        let target = Target::parse(addr).map_err(|e| format!("--peer {s:?}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            target,
        })
    }
}

/// The nodes of `view` that publish an observer address (others are skipped: their agents
/// serve flows on a unix socket only). A malformed address is logged and skipped.
pub fn nodes_of_view(view: &ClusterView) -> BTreeMap<String, Target> {
    let mut nodes = BTreeMap::new();
    for (name, record) in &view.nodes {
        if record.hubble_address.is_empty() {
            continue;
        }
        match Target::parse(&record.hubble_address) {
            Ok(t) => {
                nodes.insert(name.clone(), t);
            }
            Err(e) => warn!(node = name, "skipping the node's hubbleAddress: {e}"),
        }
    }
    nodes
}

/// The static peers and, with `etcd`, the view's nodes (a static name wins), by their names
/// as the agents put them on flows: cluster-qualified (`default/node0`), as hubble-relay
/// names its peers.
pub fn desired(statics: &[StaticPeer], view: Option<&ClusterView>) -> BTreeMap<String, Target> {
    let mut nodes = view.map(nodes_of_view).unwrap_or_default();
    for p in statics {
        nodes.insert(p.name.clone(), p.target.clone());
    }
    nodes
        .into_iter()
        .map(|(name, t)| (qualified_node_name(&name), t))
        .collect()
}

/// Keeps `pool` reading the desired nodes: the static ones at once and, with etcd endpoints,
/// the cluster's as its node records change. Connecting to etcd is retried until it works;
/// while etcd is away the last known nodes stay.
pub async fn run(
    pool: Pool,
    statics: Vec<StaticPeer>,
    etcd: Option<KvstoreConfig>,
    mut stop: watch::Receiver<bool>,
) {
    pool.set_nodes(&desired(&statics, None));
    let Some(cfg) = etcd else {
        return;
    };
    let mut wait = Duration::from_millis(200);
    let kv = loop {
        tokio::select! {
            r = Kvstore::connect(cfg.clone()) => match r {
                Ok(kv) => break kv,
                Err(e) => warn!(error = %e, retry_in = ?wait, "cannot reach etcd for node discovery"),
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    };
    info!(endpoints = ?cfg.endpoints, "discovering nodes from their records in etcd");
    let mut views = kv.subscribe();
    loop {
        let nodes = {
            let view = views.borrow_and_update();
            // A view from before the first listing knows no node: keep the static ones only.
            desired(&statics, Some(&view))
        };
        pool.set_nodes(&nodes);
        tokio::select! {
            r = views.changed() => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    kv.close().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ciliate_kvstore::NodeRecord;

    fn record(name: &str, hubble: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            underlay_ip: "10.0.0.1".parse().unwrap(),
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
            health: "ok".into(),
            boot_id: "b".into(),
            hubble_address: hubble.into(),
        }
    }

    #[test]
    fn peers_parse_and_bad_ones_say_why() {
        let p: StaticPeer = "node0=unix:///run/a/hubble.sock".parse().unwrap();
        assert_eq!(p.name, "node0");
        assert_eq!(p.target, Target::Unix("/run/a/hubble.sock".into()));
        let p: StaticPeer = "node1=10.0.0.2:4244".parse().unwrap();
        assert_eq!(p.target, Target::Tcp("10.0.0.2:4244".into()));
        let e = "node1".parse::<StaticPeer>().unwrap_err();
        assert!(e.contains("expected NAME=ADDR"), "{e}");
        let e = "=1.2.3.4:1".parse::<StaticPeer>().unwrap_err();
        assert!(e.contains("node name"), "{e}");
        let e = "n=1.2.3.4".parse::<StaticPeer>().unwrap_err();
        assert!(e.contains("host:port"), "{e}");
    }

    #[test]
    fn only_records_with_an_observer_address_become_nodes() {
        let mut view = ClusterView::default();
        for r in [
            record("a", "10.0.0.1:4244"),
            record("b", ""),
            record("c", "not an address"),
        ] {
            view.nodes.insert(r.name.clone(), r);
        }
        let statics = vec![
            "s=unix:///x".parse().unwrap(),
            "a=10.9.9.9:1".parse().unwrap(),
        ];
        let d = desired(&statics, Some(&view));
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                ("default/a".into(), Target::Tcp("10.9.9.9:1".into())),
                ("default/s".into(), Target::Unix("/x".into())),
            ]
        );
        assert_eq!(
            nodes_of_view(&view).into_keys().collect::<Vec<_>>(),
            vec!["a".to_owned()]
        );
    }
}
