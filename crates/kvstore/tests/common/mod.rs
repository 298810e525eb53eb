//! Helpers shared by the kvstore tests: configs for a test etcd, a raw etcd client to look at
//! the keys directly, and waiting for views.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use ciliate_kvstore::{ClusterView, IpEntry, Kvstore, KvstoreConfig, NodeRecord};
use ciliate_model::labels::Labels;
use ciliate_testutil::etcd::TestEtcd;
use etcd_client::{Client, GetOptions};
use tokio::sync::watch;

/// How long anything in these tests may take to show up.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Logs of the code under test on the test's output (RUST_LOG, default info).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ciliate_kvstore=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A config for `node` on the test etcd.
pub fn config(etcd: &TestEtcd, node: &str) -> KvstoreConfig {
    let mut cfg = KvstoreConfig::new(vec![etcd.endpoint()], node);
    cfg.request_timeout = Duration::from_secs(3);
    cfg
}

/// Connects `node` with `lease_ttl`.
pub async fn connect(etcd: &TestEtcd, node: &str, lease_ttl: Duration) -> Kvstore {
    let mut cfg = config(etcd, node);
    cfg.lease_ttl = lease_ttl;
    Kvstore::connect(cfg)
        .await
        .expect("connecting to the test etcd")
}

/// A plain etcd client, to look behind the store's back.
pub async fn raw(etcd: &TestEtcd) -> Client {
    Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw etcd client")
}

/// Every key under `prefix` with its value, as text.
pub async fn keys_under(client: &mut Client, prefix: &str) -> BTreeMap<String, String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("listing etcd");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

/// The value of `key`, if present.
pub async fn value_of(client: &mut Client, key: &str) -> Option<String> {
    let resp = client.get(key, None).await.expect("reading etcd");
    resp.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// Waits until the view satisfies `f`; panics with the last view after [`PATIENCE`].
pub async fn wait_view(
    rx: &mut watch::Receiver<ClusterView>,
    what: &str,
    f: impl Fn(&ClusterView) -> bool,
) -> ClusterView {
    let waited = tokio::time::timeout(PATIENCE, async {
        rx.wait_for(|v| f(v)).await.map(|v| v.clone())
    })
    .await;
    match waited {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => panic!("the view's sender went away while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}; view: {:#?}", *rx.borrow()),
    }
}

/// Polls `check` until it holds; panics after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node record for `name` with underlay 192.168.0.`n` and pod CIDR 10.`n`.0.0/24.
pub fn node_record(name: &str, n: u8) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        underlay_ip: Ipv4Addr::new(192, 168, 0, n),
        pod_cidr: format!("10.{n}.0.0/24").parse().expect("pod CIDR"),
        health: "ok".into(),
        boot_id: format!("boot-{name}"),
        hubble_address: String::new(),
    }
}

/// An endpoint of node `n` with address 10.`n`.0.`host`.
pub fn ip_entry(node: &str, n: u8, host: u8, identity: u32) -> IpEntry {
    IpEntry {
        ip: Ipv4Addr::new(10, n, 0, host),
        identity,
        node: node.into(),
        tunnel_endpoint: Ipv4Addr::new(192, 168, 0, n),
        namespace: String::new(),
        pod_name: String::new(),
    }
}

/// `k8s:app=<app>`.
pub fn app(app: &str) -> Labels {
    Labels::parse_list(&format!("app={app}"), "k8s").expect("labels")
}
