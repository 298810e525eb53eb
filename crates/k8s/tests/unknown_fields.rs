//! Property: whatever unknown fields a newer schema adds to a valid policy, at any depth,
//! stripping gives back a policy the strict model decodes, keeps every field that was there,
//! and names each field it removed.

mod common;

use ciliate_k8s::strip_unknown_fields;
use ciliate_model::policy::{CiliumNetworkPolicy, NetworkPolicy};
use common::fixture;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Paths (as JSON pointers) of every object inside `v`.
fn object_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            out.push(at.clone());
            for (k, child) in map {
                object_pointers(
                    child,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                object_pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn cnp() -> Value {
    let mut v = fixture("cnp-list.json")["items"][0].clone();
    v["spec"]["ingress"][0]
        .as_object_mut()
        .expect("rule")
        .remove("fromFutureThing");
    v["specs"] = json!([{"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
                         "egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}],
                                     "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}],
                                                  "rules": {"dns": [{"matchPattern": "*"}]}}]}],
                         "labels": [{"key": "team", "value": "a", "source": "k8s"}]}]);
    v
}

fn netpol() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "db", "namespace": "prod", "uid": "1", "resourceVersion": "2"},
           "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                 "ports": [{"port": 5432, "protocol": "TCP"}]}],
                    "policyTypes": ["Ingress"]}})
}

/// Values are strings: inserted into a struct they are unknown fields, inserted into a map of
/// strings (labels, annotations, matchLabels) they are valid entries the model must keep.
fn check<T: serde::de::DeserializeOwned>(original: Value, picks: Vec<(usize, u8)>) {
    serde_json::from_value::<T>(original.clone()).expect("the base decodes");
    let mut pointers = Vec::new();
    object_pointers(&original, String::new(), &mut pointers);
    let mut mutated = original.clone();
    let mut inserted = Vec::new();
    for (n, (pick, tag)) in picks.into_iter().enumerate() {
        let at = &pointers[pick % pointers.len()];
        let key = format!("zzFuture{n}");
        let value = json!(format!("v{tag}"));
        mutated
            .pointer_mut(at)
            .and_then(Value::as_object_mut)
            .expect("an object")
            .insert(key.clone(), value);
        inserted.push((at.clone(), key));
    }

    let mut stripped = mutated.clone();
    let warnings = strip_unknown_fields::<T>(&mut stripped);
    serde_json::from_value::<T>(stripped.clone()).expect("decodes after stripping");

    // Inserted keys still there sat in free-form maps (labels, annotations, status): take
    // them out, and what is left must be the original, untouched.
    let mut removed = 0;
    for (at, key) in &inserted {
        let obj = stripped
            .pointer_mut(at)
            .and_then(Value::as_object_mut)
            .expect("still there");
        if obj.remove(key).is_none() {
            removed += 1;
            assert!(
                warnings.iter().any(|w| w.contains(key.as_str())),
                "{key} removed silently: {warnings:?}"
            );
        }
    }
    assert_eq!(stripped, original);
    assert_eq!(warnings.len(), removed, "{warnings:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cilium_policies(picks in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        check::<CiliumNetworkPolicy>(cnp(), picks);
    }

    #[test]
    fn network_policies(picks in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        check::<NetworkPolicy>(netpol(), picks);
    }
}
