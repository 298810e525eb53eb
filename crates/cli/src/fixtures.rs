//! Model values for the render tests: everything filled in, so every column is checked.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ciliate_model::api::{CtEntry, DatapathStatus, IpamStatus, MapUsage, Status};
use ciliate_model::k8s::ServiceType;
use ciliate_model::lb::{
    BackendState, FrontendKind, L4Proto, LbBackend, LbFrontend, LbState, ServiceRef,
};
use ciliate_model::service::{BackendView, FrontendView, ServiceView};
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
        services: 2,
        backends: 5,
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

/// A NodePort Service with affinity: one active and one terminating backend on its cluster IP,
/// none on its node port.
pub fn service() -> ServiceView {
    let backend = |id, last, state| BackendView {
        id,
        addr: Ipv4Addr::new(10, 200, 0, last),
        port: 8080,
        state,
    };
    ServiceView {
        namespace: "default".into(),
        name: "web".into(),
        service_type: ServiceType::NodePort,
        cluster_ip: "10.96.0.10".into(),
        affinity_timeout: Some(600),
        source: "api".into(),
        frontends: vec![
            FrontendView {
                addr: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                proto: L4Proto::Tcp,
                kind: FrontendKind::ClusterIp,
                port_name: "http".into(),
                rev_nat_index: 1,
                backends: vec![
                    backend(1, 5, BackendState::Active),
                    backend(2, 6, BackendState::Terminating),
                ],
            },
            FrontendView {
                addr: Ipv4Addr::new(192, 168, 1, 10),
                port: 30080,
                proto: L4Proto::Tcp,
                kind: FrontendKind::NodePort,
                port_name: "http".into(),
                rev_nat_index: 2,
                backends: vec![],
            },
        ],
        problems: vec!["port http: no ready endpoints".into()],
    }
}

/// The maps of [`service`]'s cluster IP, and a terminating backend in no slot.
pub fn lb_state() -> LbState {
    LbState {
        frontends: vec![LbFrontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: L4Proto::Tcp,
            kind: FrontendKind::ClusterIp,
            rev_nat_index: 1,
            backends: vec![1, 3],
            affinity_timeout: Some(600),
            service: ServiceRef {
                namespace: "default".into(),
                name: "web".into(),
                port_name: "http".into(),
            },
        }],
        backends: vec![
            LbBackend {
                id: 1,
                addr: Ipv4Addr::new(10, 200, 0, 5),
                port: 8080,
                proto: L4Proto::Tcp,
                state: BackendState::Active,
            },
            LbBackend {
                id: 2,
                addr: Ipv4Addr::new(10, 200, 0, 6),
                port: 8080,
                proto: L4Proto::Tcp,
                state: BackendState::Terminating,
            },
            LbBackend {
                id: 3,
                addr: Ipv4Addr::new(10, 200, 0, 7),
                port: 8080,
                proto: L4Proto::Tcp,
                state: BackendState::Active,
            },
        ],
    }
}
