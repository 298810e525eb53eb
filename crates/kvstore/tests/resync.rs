//! The session survives etcd going away and a lost lease: the view keeps its content while
//! disconnected, and this node's keys come back afterwards.

mod common;

use std::time::Duration;

use ciliate_kvstore::KvError;
use ciliate_testutil::etcd::TestEtcd;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_keeps_the_view_and_brings_the_keys_back() {
    init_logging();
    let Some(mut etcd) = TestEtcd::start() else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let a = connect(&etcd, "node-a", ttl).await;
    let b = connect(&etcd, "node-b", ttl).await;
    a.register_node(node_record("node-a", 1))
        .await
        .expect("register");
    let web = a.allocate_identity(&app("web")).await.expect("allocate");
    let e1 = ip_entry("node-a", 1, 10, web);
    a.upsert_ip(e1.clone()).await.expect("upsert");
    let mut view_a = a.subscribe();
    let mut view_b = b.subscribe();
    let before = wait_view(&mut view_b, "node-a's state", |v| {
        v.nodes.contains_key("node-a") && v.ips.contains_key(&e1.ip)
    })
    .await;

    etcd.stop();
    let during = wait_view(&mut view_b, "connected=false", |v| !v.connected).await;
    assert_eq!(
        during.nodes, before.nodes,
        "the view lost nodes while disconnected"
    );
    assert_eq!(during.identities, before.identities);
    assert_eq!(during.ips, before.ips);
    wait_view(&mut view_a, "node-a disconnected", |v| !v.connected).await;

    // Changes made meanwhile are refused now but kept for later.
    let e2 = ip_entry("node-a", 1, 11, web);
    let err = a.upsert_ip(e2.clone()).await.expect_err("etcd is down");
    assert!(matches!(err, KvError::Disconnected { .. }), "{err}");
    // A label set already held is answered from memory; a new one needs etcd.
    assert_eq!(a.allocate_identity(&app("web")).await.expect("held"), web);
    a.release_identity(&app("web"))
        .await
        .expect("local release");
    assert!(a.allocate_identity(&app("new")).await.is_err());

    // Down for longer than the TTL, then back on the same data.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert!(!view_b.borrow().connected);
    assert_eq!(view_b.borrow().ips, before.ips);
    etcd.restart();

    let after = wait_view(&mut view_b, "reconnected with node-a's new IP", |v| {
        v.connected && v.ips.contains_key(&e2.ip) && v.nodes.contains_key("node-a")
    })
    .await;
    assert_eq!(after.ips[&e1.ip], e1);
    assert_eq!(after.identities[&web], app("web"));
    wait_view(&mut view_a, "node-a reconnected", |v| v.connected).await;

    let mut raw = raw(&etcd).await;
    for key in [
        "ciliate/state/nodes/v1/node-a".to_string(),
        "ciliate/state/identities/v1/refs/k8s:app=web/node-a".to_string(),
        format!("ciliate/state/ip/v1/default/{}", e1.ip),
        format!("ciliate/state/ip/v1/default/{}", e2.ip),
    ] {
        assert!(
            value_of(&mut raw, &key).await.is_some(),
            "{key} missing after restart"
        );
    }

    // And the store works as before.
    let e3 = ip_entry("node-a", 1, 12, web);
    a.upsert_ip(e3.clone()).await.expect("upsert after restart");
    wait_view(&mut view_b, "an IP published after the restart", |v| {
        v.ips.contains_key(&e3.ip)
    })
    .await;

    // Keys held past several TTLs after the restart: the keep-alive runs again.
    tokio::time::sleep(ttl * 2).await;
    assert!(value_of(&mut raw, "ciliate/state/nodes/v1/node-a")
        .await
        .is_some());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_replaced_and_the_keys_rewritten_with_the_same_numbers() {
    init_logging();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let a = connect(&etcd, "node-a", Duration::from_secs(10)).await;
    let b = connect(&etcd, "node-b", Duration::from_secs(10)).await;
    a.register_node(node_record("node-a", 1))
        .await
        .expect("register");
    let web = a.allocate_identity(&app("web")).await.expect("allocate");
    let e1 = ip_entry("node-a", 1, 10, web);
    a.upsert_ip(e1.clone()).await.expect("upsert");

    let mut raw = raw(&etcd).await;
    let node_key = "ciliate/state/nodes/v1/node-a";
    let lease = raw.get(node_key, None).await.expect("get").kvs()[0].lease();
    assert_ne!(lease, 0);

    // The lease vanishes behind the store's back; b collects the now unreferenced identity
    // before node-a notices.
    raw.lease_revoke(lease).await.expect("revoke");
    assert!(value_of(&mut raw, node_key).await.is_none());
    let _ = b.gc_identities().await.expect("gc");

    eventually(
        "node-a's keys to come back",
        Duration::from_secs(15),
        || {
            let mut raw = raw.clone();
            let e1 = e1.clone();
            async move {
                value_of(&mut raw, node_key).await.is_some()
                    && value_of(&mut raw, &format!("ciliate/state/ip/v1/default/{}", e1.ip))
                        .await
                        .is_some()
                    && value_of(
                        &mut raw,
                        "ciliate/state/identities/v1/refs/k8s:app=web/node-a",
                    )
                    .await
                    .is_some()
            }
        },
    )
    .await;
    let new_lease = raw.get(node_key, None).await.expect("get").kvs()[0].lease();
    assert_ne!(new_lease, lease, "still on the revoked lease");

    // The number the datapath already uses is kept.
    assert_eq!(
        value_of(&mut raw, "ciliate/state/identities/v1/labels/k8s:app=web").await,
        Some(web.to_string())
    );
    assert_eq!(
        value_of(&mut raw, &format!("ciliate/state/identities/v1/id/{web}")).await,
        Some("k8s:app=web".into())
    );
    assert_eq!(
        b.allocate_identity(&app("web")).await.expect("allocate"),
        web
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_etcd_is_reported_within_seconds_even_with_a_long_lease() {
    init_logging();
    let Some(mut etcd) = TestEtcd::start() else {
        return;
    };
    // The agent's lease is long (900 s): liveness must not wait for it.
    let a = connect(&etcd, "node-a", Duration::from_secs(900)).await;
    a.register_node(node_record("node-a", 1))
        .await
        .expect("register");
    let mut view = a.subscribe();
    // Connected is set before the watch has delivered node-a's own record: wait for both, or a
    // pause in between freezes a view that never held node-a (a CI flake of session 8).
    wait_view(&mut view, "connected with node-a", |v| {
        v.connected && v.nodes.contains_key("node-a")
    })
    .await;

    etcd.pause();
    let frozen = std::time::Instant::now();
    let during = wait_view(&mut view, "connected=false", |v| !v.connected).await;
    let noticed = frozen.elapsed();
    etcd.resume();
    assert!(
        noticed < Duration::from_secs(6),
        "a frozen etcd was noticed only after {noticed:?}"
    );
    assert!(
        during.nodes.contains_key("node-a"),
        "the view kept its content"
    );
    wait_view(&mut view, "connected again", |v| {
        v.connected && v.nodes.contains_key("node-a")
    })
    .await;
}
