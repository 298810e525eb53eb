#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ciliate_model::k8s::SERVICE_NAME_LABEL;
use ciliate_model::lb::L4Proto;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::{compute, LbPlan};

fn node() -> Node {
    Node {
        name: "node-a".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
    }
}

fn service(n: u8, ip: Option<u8>, kind: u8, ports: u8, ext: Option<u8>) -> Object {
    let mut port_list = vec![
        json!({"name": "a", "port": 80, "targetPort": 8080, "nodePort": 30000 + u32::from(n % 2)}),
    ];
    if ports > 1 {
        port_list.push(json!({"name": "b", "port": 81, "targetPort": "web", "protocol": "UDP"}));
    }
    let service_type = ["ClusterIP", "NodePort", "ClusterIP"][usize::from(kind % 3)];
    let mut spec = json!({"ports": port_list, "type": service_type});
    spec["clusterIP"] = match ip {
        Some(i) => json!(format!("10.96.0.{i}")),
        None => json!("None"),
    };
    if let Some(e) = ext {
        spec["externalIPs"] = json!([format!("172.16.0.{e}")]);
    }
    if kind == 2 {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    Object::Service(
        serde_json::from_value(json!({
            "metadata": {"name": format!("s{n}"), "namespace": if n % 4 == 3 { "other" } else { "default" }},
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn slice(n: u8, version: u8, for_service: u8, eps: &[(u8, u8)]) -> Object {
    let mut labels = BTreeMap::new();
    labels.insert(SERVICE_NAME_LABEL.to_owned(), format!("s{for_service}"));
    let ns = if for_service % 4 == 3 {
        "other"
    } else {
        "default"
    };
    let endpoints: Vec<_> = eps
        .iter()
        .map(|&(a, cond)| {
            json!({
                "addresses": [format!("10.200.0.{a}")],
                "conditions": {"ready": cond == 0, "serving": cond < 2, "terminating": cond == 1},
                "nodeName": if a % 2 == 0 { "node-a" } else { "node-b" },
            })
        })
        .collect();
    Object::EndpointSlice(
        serde_json::from_value(json!({
            "metadata": {"name": format!("sl{n}-{version}"), "namespace": ns, "labels": labels},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "a", "port": 8080, "protocol": "TCP"}, {"name": "web", "port": 9000, "protocol": "UDP"}],
        }))
        .unwrap(),
    )
}

/// One operation: upsert an object of a small pool (so that keys collide and Services contest
/// cluster IPs and frontends), or delete one.
fn op() -> impl Strategy<Value = Change> {
    prop_oneof![
        (
            0u8..6,
            prop::option::weighted(0.85, 1u8..4),
            0u8..3,
            1u8..3,
            prop::option::weighted(0.3, 1u8..3)
        )
            .prop_map(|(n, ip, kind, ports, ext)| Change::Upsert(Arc::new(service(
                n, ip, kind, ports, ext
            )))),
        (
            0u8..6,
            0u8..2,
            0u8..6,
            prop::collection::vec((1u8..6, 0u8..3), 0..4)
        )
            .prop_map(|(n, v, s, eps)| Change::Upsert(Arc::new(slice(n, v, s, &eps)))),
        (0u8..6).prop_map(|n| Change::Delete(ObjectKey {
            kind: Kind::Service,
            namespace: if n % 4 == 3 {
                "other".into()
            } else {
                "default".into()
            },
            name: format!("s{n}").into(),
        })),
        (0u8..6, 0u8..2, 0u8..6).prop_map(|(n, v, s)| Change::Delete(ObjectKey {
            kind: Kind::EndpointSlice,
            namespace: if s % 4 == 3 {
                "other".into()
            } else {
                "default".into()
            },
            name: format!("sl{n}-{v}").into(),
        })),
    ]
}

type Shape = (
    Vec<(FrontendKey, String, Vec<BackendKey>, Option<u32>, String)>,
    Vec<(BackendKey, BackendState)>,
);

/// The state with ids replaced by what they stand for.
fn shape(s: &LbState) -> Shape {
    let key_of = |id: u32| {
        let b = s
            .backends
            .iter()
            .find(|b| b.id == id)
            .expect("slot points at a backend");
        (b.addr, b.port, b.proto)
    };
    (
        s.frontends
            .iter()
            .map(|f| {
                (
                    (f.addr, f.port, f.proto),
                    format!("{:?}", f.kind),
                    f.backends.iter().map(|&id| key_of(id)).collect(),
                    f.affinity_timeout,
                    f.service.to_string(),
                )
            })
            .collect(),
        {
            let mut b: Vec<_> = s
                .backends
                .iter()
                .map(|b| ((b.addr, b.port, b.proto), b.state))
                .collect();
            b.sort();
            b
        },
    )
}

fn views_without_ids(mut v: Vec<ServiceView>) -> Vec<ServiceView> {
    for s in &mut v {
        for f in &mut s.frontends {
            f.rev_nat_index = 0;
            for b in &mut f.backends {
                b.id = 0;
            }
        }
    }
    v
}

fn from_scratch(objects: &BTreeMap<ObjectKey, Arc<Object>>) -> LbPlan {
    compute(
        objects.values().map(|o| o.as_ref()),
        &node(),
        &mut IdAllocator::new(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_sequence_of_batches_ends_where_compute_does(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..12)
    ) {
        let mut b = Balancer::new(node(), IdAllocator::new());
        let mut objects: BTreeMap<ObjectKey, Arc<Object>> = BTreeMap::new();
        let mut state = LbState::default();
        for batch in batches {
            for c in &batch {
                match c {
                    Change::Upsert(o) => { objects.insert(o.key(), Arc::clone(o)); }
                    Change::Delete(k) => { objects.remove(k); }
                }
            }
            let diff = b.apply(batch).unwrap();
            let next = b.state();
            // The diff turns the previous state into the new one, exactly.
            prop_assert_eq!(diff.apply(&state), next.clone());
            // Ids of what stays do not change.
            for f in &next.frontends {
                if let Some(old) = state.frontends.iter().find(|o| (o.addr, o.port, o.proto) == (f.addr, f.port, f.proto)) {
                    prop_assert_eq!(old.rev_nat_index, f.rev_nat_index);
                }
            }
            for x in &next.backends {
                if let Some(old) = state.backends.iter().find(|o| (o.addr, o.port, o.proto) == (x.addr, x.port, x.proto)) {
                    prop_assert_eq!(old.id, x.id);
                }
            }
            let full = from_scratch(&objects);
            prop_assert_eq!(shape(&next), shape(&full.state));
            prop_assert_eq!(views_without_ids(b.views()), views_without_ids(full.services.clone()));
            let mut conflicts: Vec<_> = b.conflicts().into_iter().map(|c| (c.frontend, c.holder, c.loser)).collect();
            let mut expected: Vec<_> = full.conflicts.into_iter().map(|c| (c.frontend, c.holder, c.loser)).collect();
            conflicts.sort();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(conflicts, expected);
            state = next;
        }
    }
}

/// `batch` with one change per object key, the last one given.
fn last_per_key(batch: Vec<Change>) -> Vec<Change> {
    let key = |c: &Change| match c {
        Change::Upsert(o) => o.key(),
        Change::Delete(k) => k.clone(),
    };
    let mut out: Vec<Change> = Vec::new();
    for c in batch.into_iter().rev() {
        if !out.iter().any(|o| key(o) == key(&c)) {
            out.push(c);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A batch (one change per object) gives the same diff, state and ids whatever order its
    /// changes come in, after any earlier batch: the balancer's working sets are unordered.
    #[test]
    fn a_batch_gives_the_same_result_in_any_order(
        first in prop::collection::vec(op(), 0..8),
        second in prop::collection::vec(op(), 1..10),
    ) {
        let first = last_per_key(first);
        let second = last_per_key(second);
        let mut a = Balancer::new(node(), IdAllocator::new());
        let mut b = Balancer::new(node(), IdAllocator::new());
        prop_assert_eq!(a.apply(first.clone()).unwrap(), b.apply(first).unwrap());
        let reversed: Vec<Change> = second.iter().rev().cloned().collect();
        prop_assert_eq!(a.apply(second).unwrap(), b.apply(reversed).unwrap());
        prop_assert_eq!(a.state(), b.state());
        prop_assert_eq!(a.views(), b.views());
    }

    /// Names are equal, hashed alike and ordered as their (namespace, name) pairs, also
    /// where two pairs make the same text ("ab" + "c", "a" + "bc").
    #[test]
    fn service_names_compare_as_their_pairs(
        a in ("[ab]{0,3}", "[bc]{0,3}"),
        b in ("[ab]{0,3}", "[bc]{0,3}"),
    ) {
        let (x, y) = (ServiceName::new(&a.0, &a.1), ServiceName::new(&b.0, &b.1));
        let hash = |n: &ServiceName| foldhash::fast::FixedState::with_seed(7).hash_one(n);
        prop_assert_eq!(x == y, a == b);
        prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        prop_assert_eq!(x.cmp(&x.clone()), std::cmp::Ordering::Equal);
        if a == b {
            prop_assert_eq!(hash(&x), hash(&y));
        }
    }
}

#[test]
fn a_backend_change_touches_only_its_service() {
    let mut b = Balancer::new(node(), IdAllocator::new());
    let mut batch = Vec::new();
    for n in 0..3u8 {
        batch.push(Change::Upsert(Arc::new(service(
            n,
            Some(n + 1),
            0,
            1,
            None,
        ))));
        batch.push(Change::Upsert(Arc::new(slice(n, 0, n, &[(1, 0)]))));
    }
    b.apply(batch).unwrap();
    let diff = b
        .apply(vec![Change::Upsert(Arc::new(slice(
            1,
            0,
            1,
            &[(1, 0), (2, 0)],
        )))])
        .unwrap();
    assert!(diff.frontends_added.is_empty() && diff.frontends_removed.is_empty());
    assert_eq!(diff.frontends_changed.len(), 1);
    assert_eq!(diff.frontends_changed[0].service.name, "s1");
    assert_eq!(diff.backends_added.len(), 1);
    assert_eq!(diff.backends_added[0].addr, Ipv4Addr::new(10, 200, 0, 2));
}

#[test]
fn a_service_update_keeps_its_rev_nat_index_and_deleting_frees_everything() {
    let mut b = Balancer::new(node(), IdAllocator::new());
    b.apply(vec![
        Change::Upsert(Arc::new(service(0, Some(1), 0, 1, None))),
        Change::Upsert(Arc::new(slice(0, 0, 0, &[(1, 0)]))),
    ])
    .unwrap();
    let before = b.state().frontends[0].rev_nat_index;
    b.apply(vec![Change::Upsert(Arc::new(service(
        0,
        Some(1),
        2,
        1,
        None,
    )))])
    .unwrap();
    assert_eq!(b.state().frontends[0].rev_nat_index, before);
    assert_eq!(b.state().frontends[0].affinity_timeout, Some(10800));
    let d = b
        .apply(vec![Change::Delete(service(0, None, 0, 1, None).key())])
        .unwrap();
    assert_eq!(d.frontends_removed.len(), 1);
    assert_eq!(d.backends_removed.len(), 1);
    assert_eq!(b.state(), LbState::default());
    assert_eq!(b.ids.backends_in_use() + b.ids.rev_nat_in_use(), 0);
}

#[test]
fn seeded_ids_are_kept_and_unused_ones_freed() {
    let mut ids = IdAllocator::new();
    let fk = (Ipv4Addr::new(10, 96, 0, 1), 80, L4Proto::Tcp);
    let bk = (Ipv4Addr::new(10, 200, 0, 1), 8080, L4Proto::Tcp);
    let stale = (Ipv4Addr::new(10, 200, 0, 9), 8080, L4Proto::Tcp);
    ids.seed([(bk, 77), (stale, 78)], [(fk, 500)]);
    let mut b = Balancer::new(node(), ids);
    b.apply(vec![
        Change::Upsert(Arc::new(service(0, Some(1), 0, 1, None))),
        Change::Upsert(Arc::new(slice(0, 0, 0, &[(1, 0)]))),
    ])
    .unwrap();
    b.release_unused_ids();
    let s = b.state();
    assert_eq!(s.frontends[0].rev_nat_index, 500);
    assert_eq!(s.backends[0].id, 77);
    assert_eq!(b.ids.backend_id(&stale), None);
}

#[test]
fn conflicts_of_a_batch_name_both_services() {
    let mut b = Balancer::new(node(), IdAllocator::new());
    b.apply(vec![Change::Upsert(Arc::new(service(
        0,
        Some(1),
        0,
        1,
        None,
    )))])
    .unwrap();
    let c = b.conflicts_of(&[Change::Upsert(Arc::new(service(1, Some(1), 0, 1, None)))]);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].holder.as_str(), c[0].loser.as_str()),
        ("default/s0", "default/s1")
    );
    // Replacing the holder in the same batch frees its address.
    let c = b.conflicts_of(&[
        Change::Upsert(Arc::new(service(0, Some(2), 0, 1, None))),
        Change::Upsert(Arc::new(service(1, Some(1), 0, 1, None))),
    ]);
    assert!(c.is_empty(), "{c:?}");
}

/// The objects in force after `changes`, one per key, in the order last put.
fn in_force(changes: Vec<Change>) -> Vec<Arc<Object>> {
    let mut objects: Vec<Arc<Object>> = Vec::new();
    for c in changes {
        match c {
            Change::Upsert(o) => {
                objects.retain(|x| x.key() != o.key());
                objects.push(o);
            }
            Change::Delete(k) => objects.retain(|x| x.key() != k),
        }
    }
    objects
}

/// An allocator seeded with the ids `s` holds (what an agent reads back from its maps).
fn seeded(s: &LbState) -> IdAllocator {
    let mut ids = IdAllocator::new();
    ids.seed(
        s.backends.iter().map(|b| ((b.addr, b.port, b.proto), b.id)),
        s.frontends
            .iter()
            .map(|f| ((f.addr, f.port, f.proto), f.rev_nat_index)),
    );
    ids
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Loading objects into an empty balancer (an agent's start) builds what applying them
    /// does: the same state and ids (fresh, or seeded from an earlier state with other
    /// objects, as after a restart), views and conflicts; and the tables behind them are the
    /// same, so any later batch gives the same difference.
    #[test]
    fn loading_gives_what_applying_gives(
        before in prop::collection::vec(op(), 0..10),
        now in prop::collection::vec(op(), 0..14),
        later in prop::collection::vec(op(), 1..8),
    ) {
        let mut earlier = Balancer::new(node(), IdAllocator::new());
        earlier.apply(in_force(before).into_iter().map(Change::Upsert).collect()).unwrap();
        let held = earlier.state();
        for ids in [IdAllocator::new(), seeded(&held)] {
            let objects = in_force(now.clone());
            let mut applied = Balancer::new(node(), ids.clone());
            let mut loaded = Balancer::new(node(), ids);
            applied.apply(objects.iter().cloned().map(Change::Upsert).collect()).unwrap();
            loaded.load(objects).unwrap();
            prop_assert_eq!(applied.state(), loaded.state());
            prop_assert_eq!(applied.views(), loaded.views());
            let conflicts = |b: &Balancer| {
                let mut c: Vec<_> = b.conflicts().into_iter().map(|c| (c.frontend, c.holder, c.loser)).collect();
                c.sort();
                c
            };
            prop_assert_eq!(conflicts(&applied), conflicts(&loaded));
            prop_assert_eq!(applied.service_count(), loaded.service_count());
            prop_assert_eq!(applied.backend_count(), loaded.backend_count());
            applied.release_unused_ids();
            loaded.release_unused_ids();
            prop_assert_eq!(applied.apply(later.clone()).unwrap(), loaded.apply(later.clone()).unwrap());
            prop_assert_eq!(applied.state(), loaded.state());
            prop_assert_eq!(applied.views(), loaded.views());
        }
    }
}

#[test]
fn loading_into_a_balancer_that_holds_something_applies() {
    let mut b = Balancer::new(node(), IdAllocator::new());
    b.apply(vec![Change::Upsert(Arc::new(service(
        0,
        Some(1),
        0,
        1,
        None,
    )))])
    .unwrap();
    assert!(!b.is_empty());
    b.load(vec![
        Arc::new(service(1, Some(2), 0, 1, None)),
        Arc::new(slice(1, 0, 1, &[(1, 0)])),
    ])
    .unwrap();
    assert_eq!(b.service_count(), 2);
    assert_eq!(b.backend_count(), 1);
    let mut fresh = Balancer::new(node(), IdAllocator::new());
    assert!(fresh.is_empty());
    fresh.load(Vec::new()).unwrap();
    assert!(fresh.is_empty());
}
