#![allow(clippy::unwrap_used)]

use super::*;
use ciliate_observer::proto::flow::{DropReason, TcpFlags, TrafficDirection, Verdict, Workload};

#[test]
fn flags_become_observes_filters() {
    let (_, white, black) =
        parse("from_pod=demo/frontend&to_port=8080&verdict=dropped", &[]).unwrap();
    assert_eq!(white.len(), 1);
    assert_eq!(white[0].source_pod, vec!["demo/frontend"]);
    assert_eq!(white[0].destination_port, vec!["8080"]);
    assert_eq!(white[0].verdict, vec![Verdict::Dropped as i32]);
    assert!(black.is_empty());
    let (_, white, black) = parse("namespace=demo&not_verdict=FORWARDED,TRACED", &[]).unwrap();
    assert_eq!(white.len(), 2);
    assert_eq!(white[0].source_pod, vec!["demo/"]);
    assert_eq!(white[1].destination_pod, vec!["demo/"]);
    assert_eq!(black[0].verdict.len(), 2);
    let (_, white, _) = parse("", &[]).unwrap();
    assert!(white.is_empty());
    let (_, white, _) = parse("namespace=&limit=5", &["limit"]).unwrap();
    assert!(white.is_empty());
    let (_, white, _) = parse(
        "to_service=demo/backend&from_identity=300&node_name=default/node0&drop_reason_desc=POLICY_DENIED&traffic_direction=ingress",
        &[],
    )
    .unwrap();
    assert_eq!(white.len(), 1);
    assert_eq!(white[0].destination_service, vec!["demo/backend"]);
    assert_eq!(white[0].source_identity, vec![300]);
    assert_eq!(white[0].node_name, vec!["default/node0"]);
    assert_eq!(
        white[0].drop_reason_desc,
        vec![DropReason::PolicyDenied as i32]
    );
    assert_eq!(
        white[0].traffic_direction,
        vec![TrafficDirection::Ingress as i32]
    );
    // Hubble's namespace folding: the namespace goes into both sides' pod filters.
    let (_, white, _) = parse("identity=7&to_namespace=prod", &[]).unwrap();
    assert_eq!(white.len(), 2);
    assert_eq!(white[0].source_identity, vec![7]);
    assert_eq!(white[1].destination_identity, vec![7]);
    assert_eq!(white[1].destination_pod, vec!["prod/"]);
    assert_eq!(white[0].destination_pod, vec!["prod/"]);
}

#[test]
fn the_filters_the_old_page_lacked() {
    let (_, white, black) = parse(
        "to_workload=deployment/backend&from_cluster=prod&tcp_flags=syn,ack&identity=world\
         &encrypted&node_label=zone=a&interface=eth0&snat_ip=192.0.2.1&ip_trace_id=7\
         &from_all_namespaces=true&ipv6=false&not_uuid=a,b",
        &[],
    )
    .unwrap();
    assert_eq!(white.len(), 2, "{white:?}");
    for f in &white {
        assert_eq!(
            f.destination_workload,
            vec![Workload {
                kind: "deployment".into(),
                name: "backend".into()
            }]
        );
        assert_eq!(f.source_cluster_name, vec!["prod"]);
        assert_eq!(
            f.tcp_flags,
            vec![TcpFlags {
                syn: true,
                ack: true,
                ..TcpFlags::default()
            }]
        );
        assert_eq!(f.encrypted, vec![true]);
        assert_eq!(f.node_labels, vec!["zone=a"]);
        assert_eq!(f.interface[0].name, "eth0");
        assert_eq!(f.source_ip_xlated, vec!["192.0.2.1"]);
        assert_eq!(f.ip_trace_id, vec![7]);
        assert!(f.ip_version.is_empty(), "ipv6=false is off");
    }
    assert_eq!(white[0].source_identity, vec![2]);
    assert_eq!(white[1].destination_identity, vec![2]);
    // --from-all-namespaces: any namespace at the source.
    assert_eq!(white[0].source_pod, vec!["/"]);
    assert_eq!(black.len(), 1);
    assert_eq!(black[0].uuid, vec!["a", "b"]);
}

#[test]
fn every_builder_flag_is_a_parameter() {
    let params: Vec<String> = filter_params().collect();
    for flag in VALUE_FLAGS {
        assert!(params.contains(&flag.replace('-', "_")), "{flag}");
    }
    assert!(!params.iter().any(|p| p == "not"));
}

#[test]
fn bad_values_are_named() {
    for (q, param) in [
        ("verdict=maybe", "verdict"),
        ("port=http", "port"),
        ("to_port=70000", "to_port"),
        ("protocol=quic", "protocol"),
        ("type=bogus", "type"),
        ("type=drop:x", "type"),
        ("colour=red", "colour"),
        ("not_colour=red", "not_colour"),
        ("http_path=(", "http_path"),
        ("not_http_url=[", "not_http_url"),
        ("from_identity=web", "from_identity"),
        ("identity=-1", "identity"),
        ("drop_reason_desc=OOPS", "drop_reason_desc"),
        ("traffic_direction=sideways", "traffic_direction"),
        ("tcp_flags=syn,nope", "tcp_flags"),
        ("label=a%20in%20b", "label"),
        ("from_ip=1.2.3.4&from_fqdn=x.io", "from_fqdn"),
        ("from_namespace=a&from_pod=b/x", "from_pod"),
        ("encrypted&unencrypted", "unencrypted"),
        ("encrypted=maybe", "encrypted"),
        ("cel_expression=true", "cel_expression"),
        ("ip_trace_id=0", "ip_trace_id"),
        // Fine alone, refused together: HTTP fields need L7 events.
        ("type=drop&http_status=5%2B", "http_status"),
    ] {
        let e = parse(q, &[]).unwrap_err();
        assert_eq!(e.param, param, "{q}: {e}");
    }
    let e = parse("colour=red", &[]).unwrap_err();
    assert!(e.to_string().contains("unknown filter"), "{e}");
    assert!(e.to_string().contains("to_workload"), "{e}");
}

#[test]
fn docs_name_every_parameter() {
    let doc = include_str!("../../../docs/ui.md");
    for p in filter_params() {
        assert!(doc.contains(&format!("`{p}`")), "docs/ui.md lacks `{p}`");
    }
}
