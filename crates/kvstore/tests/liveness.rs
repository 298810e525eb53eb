//! A node's keys live as long as its lease: gone at once on close, after the TTL when the
//! node dies without closing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ciliate_kvstore::{KvError, Kvstore};
use ciliate_testutil::etcd::TestEtcd;
use common::*;

/// Puts a node record, one held identity and one IP for `name`, and returns the keys that
/// must vanish with the node.
async fn publish(store: &Kvstore, name: &str, n: u8) -> Vec<String> {
    store
        .register_node(node_record(name, n))
        .await
        .expect("register");
    let id = store
        .allocate_identity(&app("web"))
        .await
        .expect("allocate");
    let entry = ip_entry(name, n, 5, id);
    store.upsert_ip(entry.clone()).await.expect("upsert");
    vec![
        format!("ciliate/state/nodes/v1/{name}"),
        format!("ciliate/state/identities/v1/refs/k8s:app=web/{name}"),
        format!("ciliate/state/ip/v1/default/{}", entry.ip),
    ]
}

async fn present(raw: &mut etcd_client::Client, keys: &[String]) -> usize {
    let mut n = 0;
    for k in keys {
        if value_of(raw, k).await.is_some() {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_removes_the_nodes_keys_at_once() {
    init_logging();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let a = connect(&etcd, "node-a", Duration::from_secs(30)).await;
    let keys = publish(&a, "node-a", 1).await;
    let mut raw = raw(&etcd).await;
    assert_eq!(present(&mut raw, &keys).await, 3);

    let clone = a.clone();
    a.close().await;
    assert_eq!(present(&mut raw, &keys).await, 0, "keys left after close");
    // The identity itself is not leased: it stays until collected.
    let ids = keys_under(&mut raw, "ciliate/state/identities/v1/id/").await;
    assert_eq!(ids.len(), 1);
    // Clones are closed too.
    let err = clone.upsert_ip(ip_entry("node-a", 1, 6, 300)).await;
    assert!(matches!(err, Err(KvError::Closed)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropped_without_close_loses_its_keys_after_the_ttl() {
    init_logging();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let a = connect(&etcd, "node-a", ttl).await;
    let b = connect(&etcd, "node-b", Duration::from_secs(30)).await;
    let keys = publish(&a, "node-a", 1).await;
    let mut raw = raw(&etcd).await;

    // Alive: the keep-alive holds the keys well past the TTL.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        present(&mut raw, &keys).await,
        3,
        "keys expired while alive"
    );

    // "Crash": the handle goes without close; the lease is left to expire.
    let dropped = Instant::now();
    drop(a);
    assert_eq!(
        present(&mut raw, &keys).await,
        3,
        "keys went before the TTL"
    );
    eventually(
        "node-a's keys to expire",
        ttl + Duration::from_secs(8),
        || {
            let mut raw = raw.clone();
            let keys = keys.clone();
            async move { present(&mut raw, &keys).await == 0 }
        },
    )
    .await;
    let took = dropped.elapsed();
    assert!(took >= ttl / 2, "keys went after {took:?}, before the TTL");

    // The other node sees node-a go.
    wait_view(&mut b.subscribe(), "node-a gone from the view", |v| {
        !v.nodes.contains_key("node-a") && v.ips.is_empty()
    })
    .await;
    // Its identity is unreferenced now: collectable.
    assert_eq!(b.gc_identities().await.expect("gc"), 1);
    assert_eq!(
        keys_under(&mut raw, "ciliate/state/identities/").await,
        BTreeMap::new()
    );
    b.close().await;
}
