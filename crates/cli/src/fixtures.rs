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
        datapath_repairs: 0,
        endpoints_vanished: 0,
        proxy: Some(ciliate_model::api::ProxyStatus {
            enabled: true,
            listeners: ciliate_model::l7::ProxyPorts::default(),
            redirects: 2,
            endpoints: 1,
            revision: 7,
            up: Some(true),
            applied_revision: Some(7),
            restarts: Some(1),
            requests: Some(12),
            pid: Some(4242),
            redirected_packets: 96,
        }),
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
        policies: 1,
        cluster: Some(ciliate_model::api::ClusterStatus {
            etcd: vec!["http://172.31.0.1:2379".into()],
            connected: true,
            nodes: vec!["node-1".into(), "node-2".into()],
            identities: 4,
            remote_endpoints: 2,
            tunnel: Some("ciliate_vxlan".into()),
            saved_view_unix: None,
        }),
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
        named_ports: Vec::new(),
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

/// A policy selecting two endpoints, with one warning.
pub fn policy_view() -> ciliate_model::policy_api::PolicyView {
    ciliate_model::policy_api::PolicyView {
        policy: server_ingress(),
        source: "api".into(),
        endpoints: 2,
        warnings: vec!["spec.ingress[0].toPorts[0].rules: L7 rules are not enforced yet".into()],
    }
}

fn server_ingress() -> ciliate_model::policy::PolicyRef {
    ciliate_model::policy::PolicyRef {
        kind: ciliate_model::policy::PolicyKind::CiliumNetworkPolicy,
        namespace: Some("default".into()),
        name: "server-ingress".into(),
    }
}

/// A client denied by an ingressDeny rule of the server.
pub fn trace() -> ciliate_model::policy_api::PolicyTrace {
    use ciliate_model::policy::{Direction, PolicyKind, PolicyRef, RuleRef, RuleSection};
    use ciliate_model::policy_api::{
        PolicyTrace, TraceDirection, TracePeer, TracePeerKind, TraceReason,
    };
    let labels = |s: &str| Labels::parse_list(s, "k8s").unwrap();
    PolicyTrace {
        src: TracePeer {
            query: "default/client".into(),
            kind: TracePeerKind::Endpoint,
            identity: 256,
            labels: labels("app=client,io.kubernetes.pod.namespace=default"),
            endpoint: Some(2),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "client".into(),
            }),
            ip: Some(Ipv4Addr::new(10, 200, 0, 2)),
            node: None,
        },
        dst: TracePeer {
            query: "default/server".into(),
            kind: TracePeerKind::Endpoint,
            identity: 257,
            labels: labels("app=server,io.kubernetes.pod.namespace=default"),
            endpoint: Some(3),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "server".into(),
            }),
            ip: Some(Ipv4Addr::new(10, 200, 0, 3)),
            node: None,
        },
        proto: 6,
        dport: 8080,
        allowed: false,
        deciding: Some(Direction::Ingress),
        drop_reason: Some(181),
        egress: Some(TraceDirection {
            direction: Direction::Egress,
            endpoint: 256,
            peer: 257,
            allowed: true,
            reason: TraceReason::NoPolicy,
            rules: vec![],
            policies: vec![],
            drop_reason: None,
            message: "no policy selects the endpoint (allow all)".into(),
            l7: None,
        }),
        ingress: Some(TraceDirection {
            direction: Direction::Ingress,
            endpoint: 257,
            peer: 256,
            allowed: false,
            reason: TraceReason::DeniedBy,
            rules: vec![RuleRef {
                policy: PolicyRef {
                    kind: PolicyKind::CiliumNetworkPolicy,
                    namespace: Some("default".into()),
                    name: "deny-client".into(),
                },
                spec: None,
                section: RuleSection::IngressDeny,
                index: 0,
            }],
            policies: vec![],
            drop_reason: Some(181),
            message:
                "denied by rule spec.ingressDeny[0] of CiliumNetworkPolicy default/deny-client"
                    .into(),
            l7: None,
        }),
        notes: vec![],
        http: None,
    }
}

/// A POST the server's L7 rules refuse.
pub fn trace_http() -> ciliate_model::policy_api::PolicyTrace {
    use ciliate_model::l7::HttpMatch;
    use ciliate_model::policy::{Direction, PolicyKind, PolicyRef, RuleRef, RuleSection};
    use ciliate_model::policy_api::{TraceDirection, TraceHttp, TraceL7, TraceL7Rule, TraceReason};
    let rule = RuleRef {
        policy: PolicyRef {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("default".into()),
            name: "http".into(),
        },
        spec: None,
        section: RuleSection::Ingress,
        index: 0,
    };
    let mut t = trace();
    t.dport = 80;
    t.allowed = false;
    t.drop_reason = None;
    t.deciding = Some(Direction::Ingress);
    t.http = Some(TraceHttp {
        method: "POST".into(),
        path: "/api".into(),
        host: String::new(),
        headers: vec!["X-Token: t".into()],
    });
    t.ingress = Some(TraceDirection {
        direction: Direction::Ingress,
        endpoint: 257,
        peer: 256,
        allowed: true,
        reason: TraceReason::AllowedBy,
        rules: vec![rule.clone()],
        policies: vec![],
        drop_reason: None,
        message: "allowed by rule spec.ingress[0] of CiliumNetworkPolicy default/http".into(),
        l7: Some(TraceL7 {
            proxy_port: 15002,
            rules: vec![TraceL7Rule {
                rule,
                http: vec![
                    HttpMatch {
                        method: Some("GET".into()),
                        path: Some("/public".into()),
                        ..HttpMatch::default()
                    },
                    HttpMatch {
                        path: Some("/healthz".into()),
                        headers: vec!["X-Probe: true".into()],
                        ..HttpMatch::default()
                    },
                ],
                kafka: vec![],
            }],
            allowed: Some(false),
            allowed_by: vec![],
            message: "the L7 proxy refuses the request with 403 Forbidden: no HTTP rule matches it"
                .into(),
        }),
    });
    t
}

/// The policy map of a server: host, a client on a port range, an ICMP deny for everyone.
pub fn bpf_policy_view() -> ciliate_model::policy_api::BpfPolicyView {
    use ciliate_model::bpf_policy::{MatchKind, PolicyMapEntry};
    use ciliate_model::policy::{RuleRef, RuleSection};
    use ciliate_model::policy_api::{BpfPolicyEntry, BpfPolicyView};
    let entry = |identity, proto, port, len, deny, kind, rule| PolicyMapEntry {
        identity,
        egress: false,
        proto,
        port,
        port_prefix_len: len,
        deny,
        kind,
        rule,
        proxy_port: 0,
    };
    BpfPolicyView {
        endpoint: 3,
        pod: Some(PodRef {
            namespace: "default".into(),
            name: "server".into(),
        }),
        identity: 257,
        ingress_enforced: true,
        egress_enforced: false,
        entries: vec![
            BpfPolicyEntry {
                entry: entry(1, None, 0, 0, false, MatchKind::L3Only, 0),
                labels: Labels::parse_list("reserved:host", "k8s").unwrap(),
                rule_ref: None,
                packets: 0,
                bytes: 0,
            },
            BpfPolicyEntry {
                entry: entry(256, Some(6), 8080, 14, false, MatchKind::L3L4, 4),
                labels: Labels::parse_list("app=client,io.kubernetes.pod.namespace=default", "k8s")
                    .unwrap(),
                rule_ref: Some(RuleRef {
                    policy: server_ingress(),
                    spec: None,
                    section: RuleSection::Ingress,
                    index: 0,
                }),
                packets: 12,
                bytes: 960,
            },
            BpfPolicyEntry {
                entry: entry(0, Some(1), 8, 16, true, MatchKind::L4Only, 9),
                labels: Labels::new(),
                rule_ref: None,
                packets: 0,
                bytes: 0,
            },
        ],
    }
}
