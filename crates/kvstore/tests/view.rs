//! One node's view of what another published, through a real etcd.

mod common;

use std::time::Duration;

use ciliate_kvstore::{KvError, Kvstore, KvstoreConfig};
use ciliate_testutil::etcd::TestEtcd;
use common::*;

const TTL: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sees_another_nodes_record_identities_and_ips() {
    init_logging();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let a = connect(&etcd, "node-a", TTL).await;
    let b = connect(&etcd, "node-b", TTL).await;
    let mut view_b = b.subscribe();
    assert!(view_b.borrow().connected);

    a.register_node(node_record("node-a", 1))
        .await
        .expect("register");
    let web = a.allocate_identity(&app("web")).await.expect("allocate");
    let e1 = ip_entry("node-a", 1, 10, web);
    let e2 = ip_entry("node-a", 1, 11, web);
    a.upsert_ip(e1.clone()).await.expect("upsert");
    a.upsert_ip(e2.clone()).await.expect("upsert");

    let v = wait_view(&mut view_b, "node-a's record, identity and IPs", |v| {
        v.nodes.contains_key("node-a") && v.ips.len() == 2 && v.identities.contains_key(&web)
    })
    .await;
    assert_eq!(v.nodes["node-a"], node_record("node-a", 1));
    assert_eq!(v.identities[&web], app("web"));
    assert_eq!(v.ips[&e1.ip], e1);
    assert!(v.connected && v.revision > 0);

    // A node connecting later lists what is already there.
    let c = connect(&etcd, "node-c", TTL).await;
    let v = c.subscribe().borrow().clone();
    assert_eq!(v.ips.len(), 2, "{v:#?}");
    assert!(v.nodes.contains_key("node-a"));

    // Updates and removals travel too.
    let mut moved = e1.clone();
    moved.identity = 9999;
    a.upsert_ip(moved.clone()).await.expect("update");
    a.delete_ip(e2.ip).await.expect("delete");
    a.deregister_node().await.expect("deregister");
    let v = wait_view(&mut view_b, "the update and the removals", |v| {
        v.ips.get(&e1.ip) == Some(&moved) && v.ips.len() == 1 && v.nodes.is_empty()
    })
    .await;
    assert_eq!(v.identities[&web], app("web"));

    // b cannot withdraw a's address.
    b.delete_ip(e1.ip)
        .await
        .expect("delete of a foreign IP is a no-op");
    let mut raw = raw(&etcd).await;
    assert!(
        value_of(&mut raw, &format!("ciliate/state/ip/v1/default/{}", e1.ip))
            .await
            .is_some()
    );

    a.close().await;
    b.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_skipped_and_the_watch_goes_on() {
    init_logging();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let mut raw = raw(&etcd).await;
    // Already there at the first listing.
    raw.put("ciliate/state/nodes/v1/garbled", "{not json", None)
        .await
        .expect("put");
    let b = connect(&etcd, "node-b", TTL).await;
    let mut view = b.subscribe();
    assert!(view.borrow().nodes.is_empty());

    // Arriving through the watch.
    for (key, value) in [
        ("ciliate/state/nodes/v1/x", "[1,2]"),
        ("ciliate/state/nodes/v1/y", r#"{"name":"z"}"#),
        ("ciliate/state/identities/v1/id/notanumber", "k8s:app=x"),
        ("ciliate/state/identities/v1/id/300", "k8s:app=has space"),
        ("ciliate/state/ip/v1/default/10.0.0.999", "{}"),
        ("ciliate/state/ip/v1/default/10.0.0.1", "null"),
        ("ciliate/state/unknown/v9/thing", "whatever"),
    ] {
        raw.put(key, value, None).await.expect("put");
    }
    let a = connect(&etcd, "node-a", TTL).await;
    a.register_node(node_record("node-a", 1))
        .await
        .expect("register");
    let v = wait_view(&mut view, "the valid record after the garbage", |v| {
        v.nodes.contains_key("node-a")
    })
    .await;
    assert_eq!(v.nodes.len(), 1, "{v:#?}");
    assert!(v.identities.is_empty() && v.ips.is_empty(), "{v:#?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_clearly_and_in_bounded_time_without_etcd() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut cfg = KvstoreConfig::new(vec![format!("http://127.0.0.1:{port}")], "lonely");
    cfg.connect_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = Kvstore::connect(cfg).await.expect_err("no etcd there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, KvError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");

    let err = Kvstore::connect(KvstoreConfig::new(vec![], "x"))
        .await
        .expect_err("no endpoints");
    assert!(matches!(err, KvError::Config(_)), "{err}");
}
