//! Cases from Hubble's `flows_filter_test.go`: the same flags build the same filters.

#![allow(clippy::unwrap_used)]

use super::*;

fn build(flags: &[(&str, &str)]) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>), String> {
    let mut b = FilterBuilder::default();
    for (name, val) in flags {
        b.set(name, val).map_err(|e| e.to_string())?;
    }
    b.finish().map_err(|e| e.to_string())
}

#[test]
fn dispatch_sends_the_flag_after_not_to_the_denylist() {
    let (allow, deny) = build(&[
        ("from-ip", "1.2.3.4"),
        ("from-ip", "5.6.7.8"),
        ("not", "true"),
        ("to-ip", "5.5.5.5"),
        ("verdict", "DROPPED"),
        ("type", "l7"),
    ])
    .unwrap();
    assert_eq!(
        allow,
        vec![FlowFilter {
            source_ip: vec!["1.2.3.4".into(), "5.6.7.8".into()],
            verdict: vec![Verdict::Dropped as i32],
            event_type: vec![EventTypeFilter {
                r#type: 129,
                match_sub_type: false,
                sub_type: 0
            }],
            ..FlowFilter::default()
        }]
    );
    assert_eq!(
        deny,
        vec![FlowFilter {
            destination_ip: vec!["5.5.5.5".into()],
            ..FlowFilter::default()
        }]
    );
    assert_eq!(build(&[]).unwrap(), (vec![], vec![]));
}

#[test]
fn either_end_flags_make_a_left_and_a_right_filter() {
    let (allow, deny) = build(&[
        ("ip", "1.2.3.4"),
        ("ip", "5.6.7.8"),
        ("verdict", "DROPPED"),
        ("not", "true"),
        ("pod", "deathstar"),
        ("not", "true"),
        ("http-status", "200"),
        ("http-method", "get"),
        ("http-path", "/page/\\d+"),
        ("node-name", "k8s*"),
    ])
    .unwrap();
    let common = FlowFilter {
        verdict: vec![Verdict::Dropped as i32],
        http_method: vec!["get".into()],
        http_path: vec!["/page/\\d+".into()],
        node_name: vec!["k8s*".into()],
        ..FlowFilter::default()
    };
    assert_eq!(
        allow,
        vec![
            FlowFilter {
                source_ip: vec!["1.2.3.4".into(), "5.6.7.8".into()],
                ..common.clone()
            },
            FlowFilter {
                destination_ip: vec!["1.2.3.4".into(), "5.6.7.8".into()],
                ..common
            },
        ]
    );
    assert_eq!(
        deny,
        vec![
            FlowFilter {
                source_pod: vec!["deathstar".into()],
                http_status_code: vec!["200".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                destination_pod: vec!["deathstar".into()],
                http_status_code: vec!["200".into()],
                ..FlowFilter::default()
            },
        ]
    );
    let (allow, _) = build(&[("identity", "1"), ("identity", "world")]).unwrap();
    assert_eq!(allow[0].source_identity, vec![1, 2]);
    assert_eq!(allow[1].destination_identity, vec![1, 2]);
    let (allow, _) = build(&[("from-pod", "cilium"), ("to-workload", "app")]).unwrap();
    assert_eq!(allow.len(), 1);
    assert_eq!(
        allow[0].destination_workload,
        vec![Workload {
            kind: String::new(),
            name: "app".into()
        }]
    );
}

#[test]
fn types_and_sub_types_by_name_or_number() {
    let (allow, _) = build(&[
        ("type", "254"),
        ("type", "255:127"),
        ("type", "trace:to-endpoint"),
        ("type", "trace:from-endpoint"),
        ("type", "4:2"),
        ("type", "agent"),
        ("type", "agent:3"),
        ("type", "agent:policy-updated"),
        ("type", "drop:133"),
    ])
    .unwrap();
    let t = |r#type, sub: Option<i32>| EventTypeFilter {
        r#type,
        match_sub_type: sub.is_some(),
        sub_type: sub.unwrap_or(0),
    };
    assert_eq!(
        allow[0].event_type,
        vec![
            t(254, None),
            t(255, Some(127)),
            t(4, Some(0)),
            t(4, Some(5)),
            t(4, Some(2)),
            t(130, None),
            t(130, Some(3)),
            t(130, Some(3)),
            t(1, Some(133)),
        ]
    );
    for bad in [
        "some-invalid-type",
        "trace:some-invalid-sub-type",
        "agent:Policy updated",
    ] {
        assert!(build(&[("type", bad)]).is_err(), "{bad}");
    }
}

#[test]
fn conflicts_and_bad_values_are_refused_as_hubble_refuses_them() {
    assert_eq!(
        build(&[("from-ip", "1.2.3.4"), ("from-fqdn", "doesnt.work")]).unwrap_err(),
        "filters --from-fqdn and --from-ip cannot be combined"
    );
    assert_eq!(
        build(&[("from-service", "foo"), ("service", "bar")]).unwrap_err(),
        "filters --service and --from-service cannot be combined"
    );
    for (a, b) in [
        ("port", "to-port"),
        ("identity", "from-identity"),
        ("ip", "pod"),
        ("to-pod", "namespace"),
        ("label", "to-label"),
        ("from-namespace", "from-fqdn"),
    ] {
        assert!(build(&[(a, "foo"), (b, "bar")]).is_err(), "{a} {b}");
    }
    // The same flag on both lists is no conflict.
    build(&[
        ("to-service", "foo"),
        ("from-service", "bar"),
        ("from-identity", "world"),
    ])
    .unwrap();
    assert_eq!(
        build(&[("from-ip", "1.2.3.4"), ("not", "true")]).unwrap_err(),
        "trailing --not found in the arguments"
    );
    assert_eq!(
        build(&[("not", "true"), ("not", "true")]).unwrap_err(),
        "consecutive --not statements"
    );
    assert!(build(&[("verdict", "MAYBE")])
        .unwrap_err()
        .contains("invalid --verdict value"));
    assert!(build(&[("identity", "nobody")])
        .unwrap_err()
        .contains("invalid security identity"));
    assert_eq!(
        build(&[("tcp-flags", "syn,bogus")]).unwrap_err(),
        "unknown tcp flag: bogus"
    );
    assert!(build(&[("traffic-direction", "Sideways")])
        .unwrap_err()
        .starts_with("sideways: invalid traffic direction"));
    assert!(build(&[("http-header", "no-colon")])
        .unwrap_err()
        .contains("expected name:value"));
}

#[test]
fn namespaces_fold_into_pod_and_service_filters() {
    // --namespace: either end, "ns/" prefixes.
    let (allow, _) = build(&[("namespace", "prod")]).unwrap();
    assert_eq!(
        allow,
        vec![
            FlowFilter {
                source_pod: vec!["prod/".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                destination_pod: vec!["prod/".into()],
                ..FlowFilter::default()
            },
        ]
    );
    // Pod names get the namespace; services too.
    let (allow, _) = build(&[("pod", "blib"), ("namespace", "test"), ("service", "bar")]).unwrap();
    assert_eq!(allow[0].source_pod, vec!["test/blib"]);
    assert_eq!(allow[0].source_service, vec!["test/bar"]);
    assert_eq!(allow[1].destination_pod, vec!["test/blib"]);
    // --from-namespace and --to-namespace: both filters, one side each; equal ones collapse.
    let (allow, _) = build(&[("from-namespace", "a"), ("to-namespace", "b")]).unwrap();
    assert_eq!(
        allow,
        vec![FlowFilter {
            source_pod: vec!["a/".into()],
            destination_pod: vec!["b/".into()],
            ..FlowFilter::default()
        }]
    );
    let (allow, _) = build(&[("all-namespaces", "true")]).unwrap();
    assert_eq!(allow[0].source_pod, vec!["/"]);
    assert!(build(&[("from-namespace", "a"), ("from-pod", "b/x")])
        .unwrap_err()
        .contains("namespace conflict"));
}

#[test]
fn ip_versions_tcp_flags_and_directions() {
    let (allow, _) = build(&[
        ("ipv4", "v4"),
        ("ip-version", "v6"),
        ("ip-version", "none"),
        ("tcp-flags", "syn,ACK"),
        ("traffic-direction", "Ingress"),
    ])
    .unwrap();
    let f = &allow[0];
    assert_eq!(f.ip_version, vec![1, 2, 0]);
    assert_eq!(
        f.tcp_flags,
        vec![TcpFlags {
            syn: true,
            ack: true,
            ..TcpFlags::default()
        }]
    );
    assert_eq!(f.traffic_direction, vec![TrafficDirection::Ingress as i32]);
}

#[test]
fn cluster_node_drop_reason_interface_and_the_rest() {
    let (allow, deny) = build(&[
        ("cluster", "prod-*"),
        ("node-label", "io.cilium/egress-gateway"),
        ("drop-reason-desc", "POLICY_DENIED"),
        ("interface", "eth0"),
        ("snat-ip", "192.0.2.1"),
        ("ip-trace-id", "1234"),
        ("encrypted", "true"),
        ("cel-expression", "_flow.verdict == DROPPED"),
        ("not", "true"),
        ("to-cluster", "dev"),
    ])
    .unwrap();
    assert_eq!(allow.len(), 2);
    assert_eq!(allow[0].source_cluster_name, vec!["prod-*"]);
    assert_eq!(allow[1].destination_cluster_name, vec!["prod-*"]);
    for f in &allow {
        assert_eq!(f.node_labels, vec!["io.cilium/egress-gateway"]);
        assert_eq!(f.drop_reason_desc, vec![DropReason::PolicyDenied as i32]);
        assert_eq!(f.interface[0].name, "eth0");
        assert_eq!(f.source_ip_xlated, vec!["192.0.2.1"]);
        assert_eq!(f.ip_trace_id, vec![1234]);
        assert_eq!(f.encrypted, vec![true]);
        assert_eq!(
            f.experimental.as_ref().unwrap().cel_expression,
            vec!["_flow.verdict == DROPPED"]
        );
    }
    assert_eq!(deny[0].destination_cluster_name, vec!["dev"]);
    assert!(build(&[("drop-reason-desc", "policy_denied")]).is_err());
    assert!(build(&[("drop-reason-desc", "")]).is_err());
    assert!(build(&[("ip-trace-id", "0")]).is_err());
    assert!(build(&[("encrypted", "true"), ("unencrypted", "true")]).is_err());
    // Hubble lets --cluster and --from-cluster be combined (no conflict group).
    assert!(build(&[("cluster", "a"), ("from-cluster", "b")]).is_ok());
}
