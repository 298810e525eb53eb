//! Pod and Node documents, as the API server returns them, read into the agent's views.

mod common;

use std::net::Ipv4Addr;

use ciliate_k8s::{Document, K8sError, NodeInfo, PodInfo, PodPhase, ResourceKind};
use ciliate_model::lb::L4Proto;
use ciliate_model::NamedPort;
use common::fixture;
use serde_json::json;

fn pod_doc(i: usize) -> Document {
    Document::new(
        ResourceKind::Pod,
        fixture("pod-list.json")["items"][i].clone(),
    )
}

#[test]
fn a_running_pod() {
    let info = PodInfo::from_document(&pod_doc(0)).expect("a pod");
    assert_eq!(
        info,
        PodInfo {
            namespace: "prod".into(),
            name: "web-6d4cf56db6-2xk8p".into(),
            uid: "0b9a7c1e-3f5d-4c63-9f1e-5a3b2c1d0e01".into(),
            node_name: Some("node-a".into()),
            host_network: false,
            // The IPv6 address of the dual-stack pair is left out.
            pod_ips: vec![Ipv4Addr::new(10, 0, 1, 17)],
            labels: [("app", "web"), ("pod-template-hash", "6d4cf56db6")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            // The unnamed port is not a named port.
            named_ports: vec![
                NamedPort {
                    name: "http".into(),
                    protocol: L4Proto::Tcp,
                    port: 80
                },
                NamedPort {
                    name: "dns".into(),
                    protocol: L4Proto::Udp,
                    port: 53
                },
            ],
            phase: PodPhase::Running,
        }
    );
}

#[test]
fn a_pending_pod_without_addresses() {
    let info = PodInfo::from_document(&pod_doc(1)).expect("a pod");
    assert_eq!(info.phase, PodPhase::Pending);
    assert!(info.pod_ips.is_empty());
    assert_eq!(
        info.named_ports,
        [NamedPort {
            name: "pg".into(),
            protocol: L4Proto::Tcp,
            port: 5432
        }]
    );
    assert!(!info.phase.is_terminal());
}

#[test]
fn host_network_pods_and_pod_ip_alone() {
    let mut v = fixture("pod-list.json")["items"][1].clone();
    v["spec"]["hostNetwork"] = json!(true);
    v["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox:1.37",
        "ports": [{"name": "probe", "containerPort": 8081}]}]);
    v["status"] = json!({"phase": "Succeeded", "podIP": "192.168.49.2"});
    let info = PodInfo::from_document(&Document::new(ResourceKind::Pod, v)).expect("a pod");
    assert!(info.host_network);
    assert_eq!(info.pod_ips, [Ipv4Addr::new(192, 168, 49, 2)]);
    // Init containers' ports come first; a port without protocol is TCP.
    assert_eq!(
        info.named_ports[0],
        NamedPort {
            name: "probe".into(),
            protocol: L4Proto::Tcp,
            port: 8081
        }
    );
    assert!(info.phase.is_terminal());
}

#[test]
fn bad_pod_fields_are_named() {
    let mut v = fixture("pod-list.json")["items"][0].clone();
    v["status"]["podIPs"][1]["ip"] = json!("10.0.1.300");
    let err = PodInfo::from_document(&Document::new(ResourceKind::Pod, v)).expect_err("bad ip");
    assert_eq!(
        err.to_string(),
        "Pod prod/web-6d4cf56db6-2xk8p: status.podIPs[1].ip: \"10.0.1.300\" is not an IP address"
    );

    let mut v = fixture("pod-list.json")["items"][0].clone();
    v["spec"]["containers"][0]["ports"][2]["protocol"] = json!("QUIC");
    let err = PodInfo::from_document(&Document::new(ResourceKind::Pod, v)).expect_err("bad proto");
    assert!(
        err.to_string()
            .ends_with("spec.containers[0].ports[2].protocol: \"QUIC\" is not TCP, UDP or SCTP"),
        "{err}"
    );

    let mut v = fixture("pod-list.json")["items"][0].clone();
    v["spec"]["hostNetwork"] = json!("yes");
    let err = PodInfo::from_document(&Document::new(ResourceKind::Pod, v)).expect_err("bad type");
    assert!(
        matches!(&err, K8sError::Decode { path, .. } if path == "spec.hostNetwork"),
        "{err}"
    );
}

#[test]
fn a_node() {
    let doc = Document::new(ResourceKind::Node, fixture("node.json"));
    assert!(doc.object["metadata"].get("managedFields").is_none());
    let info = NodeInfo::from_document(&doc).expect("a node");
    assert_eq!(info.name, "node-a");
    assert_eq!(info.pod_cidrs, ["10.0.1.0/24", "fd00:10:244:1::/64"]);
    assert_eq!(info.internal_ips, [Ipv4Addr::new(192, 168, 49, 2)]);
    assert_eq!(
        info.labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("zone-1")
    );
}

#[test]
fn a_node_with_only_the_old_pod_cidr_field() {
    let mut v = fixture("node.json");
    v["spec"].as_object_mut().expect("spec").remove("podCIDRs");
    let info = NodeInfo::from_document(&Document::new(ResourceKind::Node, v)).expect("a node");
    assert_eq!(info.pod_cidrs, ["10.0.1.0/24"]);
}

#[test]
fn the_wrong_kind_is_refused() {
    let err = NodeInfo::from_document(&pod_doc(0)).expect_err("a pod is not a node");
    assert_eq!(
        err.to_string(),
        "Pod prod/web-6d4cf56db6-2xk8p: is a Pod, not a Node"
    );
}
