//! Model values for the render tests: everything filled in, so every column is checked.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ciliate_model::api::{CtEntry, DatapathStatus, IpamStatus, MapUsage, Status};
use ciliate_model::{Endpoint, EndpointState, Identity, Labels, MacAddr, PodRef};

/// A degraded status with two problems.
pub fn status() -> Status {
    Status {
        node: "node-1".into(),
        version: "0.1.0".into(),
        uptime_seconds: 3725,
        health: "degraded".into(),
        problems: vec![
            "ct map 95% full".into(),
            "kubernetes source unreachable".into(),
        ],
        datapath: DatapathStatus {
            loaded: true,
            kind: "bpf".into(),
            pin_dir: "/sys/fs/bpf/ciliate".into(),
            programs: vec!["from_container".into(), "to_container".into()],
            maps: vec![MapUsage {
                name: "ciliate_ct".into(),
                entries: 62_259,
                max_entries: 65_536,
            }],
        },
        endpoints: 3,
        identities: 2,
        ipam: IpamStatus {
            cidr: "10.0.0.0/24".parse().unwrap(),
            allocated: 4,
            capacity: 253,
        },
    }
}

/// A ready endpoint of pod default/web.
pub fn endpoint() -> Endpoint {
    Endpoint {
        id: 1234,
        container_id: "9f1c2d3e".into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/cni-1".into(),
        pod: Some(PodRef {
            namespace: "default".into(),
            name: "web".into(),
        }),
        labels: Labels::parse_list("app=web,k8s:io.kubernetes.pod.namespace=default", "k8s")
            .unwrap(),
        identity: 256,
        ipv4: Ipv4Addr::new(10, 0, 0, 5),
        mac: MacAddr([0x0a, 0x58, 0x0a, 0, 0, 5]),
        host_ifname: "lxc9f1c2d3e".into(),
        host_ifindex: 17,
        host_mac: MacAddr([0x0a, 0x58, 0x0a, 0, 1, 5]),
        state: EndpointState::NotReady,
        status_message: Some("policy map full".into()),
        created_unix: 1_700_000_000,
    }
}

/// A cluster identity used by two endpoints.
pub fn identity() -> Identity {
    Identity {
        id: 256,
        labels: Labels::parse_list("app=web,k8s:io.kubernetes.pod.namespace=default", "k8s")
            .unwrap(),
        reserved: false,
        references: 2,
    }
}

/// An established TCP connection from a pod to a service backend.
pub fn ct_entry() -> CtEntry {
    CtEntry {
        proto: "tcp".into(),
        src: Ipv4Addr::new(10, 0, 0, 5),
        sport: 40_000,
        dst: Ipv4Addr::new(10, 0, 0, 9),
        dport: 80,
        direction: "egress".into(),
        expires_in: 21_540,
        tx_packets: 10,
        tx_bytes: 1_200,
        rx_packets: 8,
        rx_bytes: 9_000,
        flags: vec!["SYN".into(), "ACK".into()],
        src_identity: 256,
    }
}
