//! Cluster-wide identity allocation against a real etcd: agreement under concurrency, no
//! leaks after release and collection, and collection that never frees a referenced number.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ciliate_model::identity::{NumericIdentity, MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY};
use ciliate_model::labels::Labels;
use ciliate_testutil::etcd::TestEtcd;
use common::*;

const IDS: &str = "ciliate/state/identities/v1/";
const TTL: Duration = Duration::from_secs(15);

/// Label set `i` of the test: some with one label, some with two, one with a '/' in a key.
fn label_set(i: usize) -> Labels {
    let list = match i % 3 {
        0 => format!("app=svc{i}"),
        1 => format!("app=svc{i},tier=t{}", i % 4),
        _ => format!("app=svc{i},example.com/team=x{i}"),
    };
    Labels::parse_list(&list, "k8s").expect("labels")
}

/// Whether node `n` of 4 uses label set `i`: every set is used by two to four nodes.
fn uses(n: usize, i: usize) -> bool {
    !(i + n).is_multiple_of(4) || i.is_multiple_of(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_agree_on_numbers_and_nothing_leaks() {
    init_logging();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    const SETS: usize = 50;
    let names = ["n0", "n1", "n2", "n3"];
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(connect(&etcd, name, TTL).await);
    }

    // All four allocate at once, each its sets in its own order, each set from many tasks.
    let mut tasks = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        let mut order: Vec<usize> = (0..SETS).filter(|i| uses(n, *i)).collect();
        if n % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = store
                    .allocate_identity(&label_set(i))
                    .await
                    .unwrap_or_else(|e| panic!("node {n} set {i}: {e}"));
                (n, i, id)
            }));
        }
    }
    let mut got: BTreeMap<usize, BTreeMap<usize, NumericIdentity>> = BTreeMap::new();
    for t in futures::future::join_all(tasks).await {
        let (n, i, id) = t.expect("allocation task");
        got.entry(i).or_default().insert(n, id);
    }

    // One number per set on every node, and no number for two sets.
    let mut numbers: BTreeMap<NumericIdentity, usize> = BTreeMap::new();
    for (i, per_node) in &got {
        let ids: BTreeSet<NumericIdentity> = per_node.values().copied().collect();
        assert_eq!(ids.len(), 1, "set {i} got different numbers: {per_node:?}");
        let id = *ids.first().expect("one number");
        assert!((MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).contains(&id));
        if let Some(other) = numbers.insert(id, *i) {
            panic!("number {id} given to sets {other} and {i}");
        }
    }
    assert_eq!(numbers.len(), SETS);

    // etcd holds exactly: id/<n> -> L, labels/<L> -> n, refs/<L>/<node> for each user.
    let mut raw = raw(&etcd).await;
    let keys = keys_under(&mut raw, IDS).await;
    let mut expected = BTreeMap::new();
    for (id, i) in &numbers {
        let l = label_set(*i).to_string();
        expected.insert(format!("{IDS}id/{id}"), l.clone());
        expected.insert(format!("{IDS}labels/{l}"), id.to_string());
        for n in got[i].keys() {
            expected.insert(format!("{IDS}refs/{l}/{}", names[*n]), id.to_string());
        }
    }
    assert_eq!(keys, expected);

    // Every node's view shows all of them.
    let want: BTreeMap<NumericIdentity, Labels> =
        numbers.iter().map(|(id, i)| (*id, label_set(*i))).collect();
    for store in &nodes {
        wait_view(&mut store.subscribe(), "all identities in the view", |v| {
            v.identities == want
        })
        .await;
    }

    // A second allocation on a node is a second local use, answered from memory.
    let again = nodes[0]
        .allocate_identity(&label_set(1))
        .await
        .expect("again");
    assert_eq!(again, *got[&1].values().next().expect("number"));
    nodes[0]
        .release_identity(&label_set(1))
        .await
        .expect("release");
    assert!(
        value_of(&mut raw, &format!("{IDS}refs/{}/n0", label_set(1)))
            .await
            .is_some()
    );

    // Collection frees nothing while references exist.
    assert_eq!(nodes[3].gc_identities().await.expect("gc"), 0);

    // Release everything (concurrently), collect, and nothing is left.
    let mut releases = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        for i in (0..SETS).filter(|i| uses(n, *i)) {
            let store = store.clone();
            releases.push(tokio::spawn(async move {
                store.release_identity(&label_set(i)).await
            }));
        }
    }
    for r in futures::future::join_all(releases).await {
        r.expect("release task").expect("release");
    }
    assert_eq!(nodes[1].gc_identities().await.expect("gc"), SETS);
    assert_eq!(keys_under(&mut raw, IDS).await, BTreeMap::new());
    for store in &nodes {
        wait_view(&mut store.subscribe(), "no identities in the view", |v| {
            v.identities.is_empty()
        })
        .await;
    }
    for store in nodes {
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_never_frees_a_referenced_identity() {
    init_logging();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let a = connect(&etcd, "a", TTL).await;
    let b = connect(&etcd, "b", TTL).await;
    let sets: Vec<Labels> = (0..4).map(|i| app(&format!("churn{i}"))).collect();

    // b collects in a loop while a takes and drops the same label sets over and over.
    let done = Arc::new(AtomicBool::new(false));
    let collector = {
        let b = b.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut freed = 0;
            while !done.load(Ordering::SeqCst) {
                freed += b.gc_identities().await.expect("gc");
            }
            freed
        })
    };
    let mut raw = raw(&etcd).await;
    for round in 0..25 {
        for labels in &sets {
            let id = a.allocate_identity(labels).await.expect("allocate");
            // Held now: both keys must be there and agree, whatever the collector does.
            let l = labels.to_string();
            assert_eq!(
                value_of(&mut raw, &format!("{IDS}labels/{l}")).await,
                Some(id.to_string()),
                "round {round}: master key of {l}"
            );
            assert_eq!(
                value_of(&mut raw, &format!("{IDS}id/{id}")).await,
                Some(l.clone()),
                "round {round}: number key {id}"
            );
        }
        for labels in &sets {
            a.release_identity(labels).await.expect("release");
        }
    }
    done.store(true, Ordering::SeqCst);
    let freed = collector.await.expect("collector");
    assert!(
        freed > 0,
        "the collector never freed anything: the race was not exercised"
    );

    // One held set survives any number of collections.
    let kept = a.allocate_identity(&sets[0]).await.expect("allocate");
    for _ in 0..3 {
        b.gc_identities().await.expect("gc");
    }
    assert_eq!(
        value_of(&mut raw, &format!("{IDS}id/{kept}")).await,
        Some(sets[0].to_string())
    );
    a.release_identity(&sets[0]).await.expect("release");
    b.gc_identities().await.expect("gc");
    assert_eq!(keys_under(&mut raw, IDS).await, BTreeMap::new());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_that_cannot_be_keys_are_refused() {
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let a = connect(&etcd, "a", TTL).await;
    let bad: Labels =
        std::iter::once(ciliate_model::labels::Label::new("k8s", "app", "a,b")).collect();
    let err = a.allocate_identity(&bad).await.expect_err("refused");
    assert!(
        matches!(err, ciliate_kvstore::KvError::InvalidLabels { .. }),
        "{err}"
    );
    a.close().await;
}
