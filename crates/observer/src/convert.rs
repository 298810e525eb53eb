//! One datapath event → one Hubble [`Flow`], enriched from the [`Store`].

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use ciliate_model::monitor::{EventKind, MonitorEvent, L4};

use crate::proto::flow::{
    layer4, CiliumEventType, Endpoint, Ethernet, Flow, FlowType, IcmPv4, Ip, IpVersion, Layer4,
    NetworkInterface, Service, Tcp, TcpFlags, TraceObservationPoint, TraceReason, TrafficDirection,
    Udp, Verdict,
};
use crate::store::{EndpointInfo, ServiceRef, Store};

/// Cilium's monitor message type of a drop notification.
pub const MESSAGE_TYPE_DROP: i32 = 1;
/// Cilium's monitor message type of a trace notification.
pub const MESSAGE_TYPE_TRACE: i32 = 4;
/// Cilium's monitor message type of a policy verdict notification.
pub const MESSAGE_TYPE_POLICY_VERDICT: i32 = 5;

/// Cilium's trace observation point `TRACE_TO_LXC` (to-endpoint).
const TRACE_TO_LXC: u8 = 0;
/// Cilium's trace observation point `TRACE_FROM_LXC` (from-endpoint).
const TRACE_FROM_LXC: u8 = 5;
/// Cilium's trace observation point `TRACE_TO_OVERLAY`: a pod's packet into the tunnel.
const TRACE_TO_OVERLAY: u8 = 4;

/// Hubble's enum value for one of Cilium's trace observation point codes: the same number,
/// except `TRACE_TO_LXC` (0), which Hubble calls `TO_ENDPOINT` (101) to keep 0 for unknown.
pub fn observation_point(code: u8) -> TraceObservationPoint {
    if code == TRACE_TO_LXC {
        return TraceObservationPoint::ToEndpoint;
    }
    TraceObservationPoint::try_from(i32::from(code)).unwrap_or(TraceObservationPoint::UnknownPoint)
}

/// Cilium's policy match type (`PolicyMatch*`) named in a policy verdict's reason text,
/// e.g. "egress allowed (L3-L4)": none 0, L3-only 1, L3-L4 2, L4-only 3, all 4.
fn policy_match_type(reason: &str) -> u32 {
    if reason.contains("(L3-Only)") {
        1
    } else if reason.contains("(L3-L4)") {
        2
    } else if reason.contains("(L4-Only)") {
        3
    } else if reason.contains("(all)") {
        4
    } else {
        0
    }
}

fn timestamp(time: &str) -> Option<pbjson_types::Timestamp> {
    let t = humantime::parse_rfc3339_weak(time).ok()?;
    Some(system_time_to_timestamp(t))
}

/// A protobuf timestamp of a wall-clock time.
pub fn system_time_to_timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn tcp_flags(names: &[String]) -> TcpFlags {
    let mut f = TcpFlags::default();
    for n in names {
        match n.as_str() {
            "FIN" => f.fin = true,
            "SYN" => f.syn = true,
            "RST" => f.rst = true,
            "PSH" => f.psh = true,
            "ACK" => f.ack = true,
            "URG" => f.urg = true,
            "ECE" => f.ece = true,
            "CWR" => f.cwr = true,
            _ => {}
        }
    }
    f
}

/// The flow's endpoint at `ip`, and the id of the local endpoint there, if any.
pub(crate) fn endpoint(
    store: &dyn Store,
    ip: Option<Ipv4Addr>,
    identity: u32,
) -> (Endpoint, Option<u32>) {
    // The store's copy is moved into the flow, not copied again: its strings are this
    // event's to keep.
    match ip.and_then(|ip| store.endpoint_by_ip(ip)) {
        Some(EndpointInfo {
            id,
            identity: own,
            namespace,
            pod_name,
            labels,
        }) => (
            Endpoint {
                id,
                identity: if identity != 0 { identity } else { own },
                namespace,
                labels,
                pod_name,
                ..Endpoint::default()
            },
            Some(id),
        ),
        None => (
            Endpoint {
                identity,
                labels: store.identity_labels(identity).unwrap_or_default(),
                ..Endpoint::default()
            },
            None,
        ),
    }
}

pub(crate) fn service(s: ServiceRef) -> Service {
    Service {
        name: s.name,
        namespace: s.namespace,
    }
}

/// Whether the flow is a reply: `None` when unknown.
pub fn is_reply(flow: &Flow) -> Option<bool> {
    flow.is_reply.as_ref().map(|b| b.value)
}

/// Converts one event. `node_name` is this node's; the store supplies names.
pub fn to_flow(ev: &MonitorEvent, store: &dyn Store, node_name: &str) -> Flow {
    let mut flow = Flow {
        time: timestamp(&ev.time),
        r#type: FlowType::L3L4 as i32,
        node_name: node_name.to_owned(),
        ..Flow::default()
    };
    if ev.ifindex != 0 {
        flow.interface = Some(NetworkInterface {
            index: ev.ifindex,
            name: store.interface_name(ev.ifindex).unwrap_or_default(),
        });
    }
    if let (Some(src), Some(dst)) = (ev.src, ev.dst) {
        flow.ip = Some(Ip {
            source: src.to_string(),
            destination: dst.to_string(),
            ip_version: IpVersion::IPv4 as i32,
            ..Ip::default()
        });
    }
    let (ports, proto) = match &ev.l4 {
        Some(L4::Tcp {
            sport,
            dport,
            flags,
        }) => {
            flow.l4 = Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: u32::from(*sport),
                    destination_port: u32::from(*dport),
                    flags: Some(tcp_flags(flags)),
                })),
            });
            (Some((*sport, *dport)), 6)
        }
        Some(L4::Udp { sport, dport }) => {
            flow.l4 = Some(Layer4 {
                protocol: Some(layer4::Protocol::Udp(Udp {
                    source_port: u32::from(*sport),
                    destination_port: u32::from(*dport),
                })),
            });
            (Some((*sport, *dport)), 17)
        }
        Some(L4::Icmp { r#type, code }) => {
            flow.l4 = Some(Layer4 {
                protocol: Some(layer4::Protocol::IcmPv4(IcmPv4 {
                    r#type: u32::from(*r#type),
                    code: u32::from(*code),
                })),
            });
            (None, 1)
        }
        Some(L4::Other { proto }) => (None, *proto),
        None => (None, 0),
    };

    let (src_ep, src_info) = endpoint(store, ev.src, ev.src_identity);
    let (dst_ep, dst_info) = endpoint(store, ev.dst, ev.dst_identity);
    flow.source = Some(src_ep);
    flow.destination = Some(dst_ep);

    let is_reply = match ev.ct_state.as_str() {
        "reply" => Some(true),
        "new" | "established" => Some(false),
        _ => None,
    };
    // A side is a Service when its address:port is a frontend (the packet was not
    // translated, or a reply was translated back); else, as Hubble does, by the frontend the
    // datapath translated the connection from (per-packet DNAT or socket LB): the request's
    // destination, or the reply's source.
    if let (Some(src), Some(dst), Some((sport, dport))) = (ev.src, ev.dst, ports) {
        flow.destination_service = store.service_by_frontend(dst, dport, proto).map(service);
        flow.source_service = store.service_by_frontend(src, sport, proto).map(service);
    }
    if ev.rev_nat != 0 {
        let side = if is_reply == Some(true) {
            &mut flow.source_service
        } else {
            &mut flow.destination_service
        };
        if side.is_none() {
            *side = store.service_by_rev_nat(ev.rev_nat).map(service);
        }
    }
    flow.is_reply = is_reply.map(|value| pbjson_types::BoolValue { value });
    flow.summary = l34_summary(ev);
    flow.ethernet = ev.ethernet.map(|e| Ethernet {
        source: e.source.to_string(),
        destination: e.destination.to_string(),
    });
    flow.reply = is_reply == Some(true);

    // The reporting endpoint tells the direction when the observation point does not:
    // a packet the endpoint sent is egress, one it receives is ingress.
    let reporter = u32::from(ev.endpoint);
    let by_endpoint = if reporter != 0 && src_info == Some(reporter) {
        TrafficDirection::Egress
    } else if reporter != 0 && dst_info == Some(reporter) {
        TrafficDirection::Ingress
    } else {
        TrafficDirection::Unknown
    };

    match ev.kind {
        EventKind::Trace => {
            flow.verdict = Verdict::Forwarded as i32;
            flow.trace_reason = trace_reason(&ev.ct_state) as i32;
            flow.trace_observation_point = observation_point(ev.code) as i32;
            flow.event_type = Some(CiliumEventType {
                r#type: MESSAGE_TYPE_TRACE,
                sub_type: i32::from(ev.code),
            });
            let packet_direction = match ev.code {
                TRACE_FROM_LXC | TRACE_TO_OVERLAY => TrafficDirection::Egress,
                TRACE_TO_LXC => TrafficDirection::Ingress,
                _ => by_endpoint,
            };
            // As Hubble does: the direction of a connection, not of the packet, so a reply
            // to a connection the pod opened is still egress.
            flow.traffic_direction = match (packet_direction, is_reply) {
                (TrafficDirection::Egress, Some(true)) => TrafficDirection::Ingress,
                (TrafficDirection::Ingress, Some(true)) => TrafficDirection::Egress,
                (d, _) => d,
            } as i32;
        }
        EventKind::Drop => {
            flow.verdict = Verdict::Dropped as i32;
            flow.drop_reason = u32::from(ev.code);
            flow.drop_reason_desc = i32::from(ev.code);
            flow.event_type = Some(CiliumEventType {
                r#type: MESSAGE_TYPE_DROP,
                sub_type: i32::from(ev.code),
            });
            flow.traffic_direction = by_endpoint as i32;
        }
        EventKind::PolicyVerdict => {
            let allowed = ev.code == 0;
            flow.verdict = if allowed {
                Verdict::Forwarded
            } else {
                Verdict::Dropped
            } as i32;
            if !allowed {
                flow.drop_reason = u32::from(ev.code);
                flow.drop_reason_desc = i32::from(ev.code);
            }
            flow.policy_match_type = policy_match_type(&ev.reason);
            flow.event_type = Some(CiliumEventType {
                r#type: MESSAGE_TYPE_POLICY_VERDICT,
                sub_type: 0,
            });
            flow.traffic_direction = if ev.reason.starts_with("egress") {
                TrafficDirection::Egress
            } else if ev.reason.starts_with("ingress") {
                TrafficDirection::Ingress
            } else {
                by_endpoint
            } as i32;
        }
    }
    crate::policy_names::fill_from_event(&mut flow, ev, store);
    flow
}

/// Cilium's trace reason of a traced packet from its connection tracking state.
fn trace_reason(ct_state: &str) -> TraceReason {
    match ct_state {
        "new" => TraceReason::New,
        "established" => TraceReason::Established,
        "reply" => TraceReason::Reply,
        "related" => TraceReason::Related,
        _ => TraceReason::Unknown,
    }
}

/// Hubble's summary of an L3/L4 flow (what its compact output prints in parentheses): the
/// innermost layer decoded, `TCP Flags: SYN, ACK` for TCP, `ICMPv4 EchoRequest` for ICMP.
pub fn l34_summary(ev: &MonitorEvent) -> String {
    match &ev.l4 {
        Some(L4::Tcp { flags, .. }) => {
            // gopacket's order, which Hubble's getTCPFlags follows.
            let order = ["SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS"];
            let set: Vec<&str> = order
                .into_iter()
                .filter(|f| flags.iter().any(|g| g == f))
                .collect();
            format!("TCP Flags: {}", set.join(", "))
        }
        Some(L4::Udp { .. }) => "UDP".to_owned(),
        Some(L4::Icmp { r#type, code }) => format!("ICMPv4 {}", icmpv4_type_code(*r#type, *code)),
        Some(L4::Other { proto: 132 }) => "SCTP".to_owned(),
        Some(L4::Other { .. }) | None if ev.src.is_some() => "IPv4".to_owned(),
        _ => match ev.ethertype {
            0x0806 => "ARP".to_owned(),
            0x86dd => "IPv6".to_owned(),
            _ => "Ethernet".to_owned(),
        },
    }
}

/// gopacket's `ICMPv4TypeCode.String()`, as Hubble's summaries print it.
fn icmpv4_type_code(t: u8, c: u8) -> String {
    let (name, codes): (&str, &[&str]) = match t {
        0 => ("EchoReply", &[]),
        3 => (
            "DestinationUnreachable",
            &[
                "Net",
                "Host",
                "Protocol",
                "Port",
                "FragmentationNeeded",
                "SourceRoutingFailed",
                "NetUnknown",
                "HostUnknown",
                "SourceIsolated",
                "NetAdminProhibited",
                "HostAdminProhibited",
                "NetTOS",
                "HostTOS",
                "CommAdminProhibited",
                "HostPrecedence",
                "PrecedenceCutoff",
            ],
        ),
        4 => ("SourceQuench", &[]),
        5 => ("Redirect", &["Network", "Host", "TOS+Network", "TOS+Host"]),
        8 => ("EchoRequest", &[]),
        9 => ("RouterAdvertisement", &[]),
        10 => ("RouterSolicitation", &[]),
        11 => (
            "TimeExceeded",
            &["TTLExceeded", "FragmentReassemblyTimeExceeded"],
        ),
        12 => (
            "ParameterProblem",
            &["PointerIndicatesError", "MissingOption", "BadLength"],
        ),
        13 => ("Timestamp", &[]),
        14 => ("TimestampReply", &[]),
        15 => ("InfoRequest", &[]),
        16 => ("InfoReply", &[]),
        17 => ("AddressMaskRequest", &[]),
        18 => ("AddressMaskReply", &[]),
        _ => return format!("{t}({c})"),
    };
    match codes.get(usize::from(c)) {
        None if codes.is_empty() && c == 0 => name.to_owned(),
        Some(code) => format!("{name}({code})"),
        None => format!("{name}(Code: {c})"),
    }
}

/// What every flow gets once made, whatever made it (datapath or proxy): a unique id (a
/// time-ordered v7 UUID, as Hubble's are unique per flow) and, on the endpoints that belong
/// to the cluster (a pod's, or a node's own), the cluster's name.
pub fn finish_flow(flow: &mut Flow, cluster: &str) {
    if flow.uuid.is_empty() {
        flow.uuid = uuid::Uuid::now_v7().to_string();
    }
    for ep in [flow.source.as_mut(), flow.destination.as_mut()]
        .into_iter()
        .flatten()
    {
        if ep.cluster_name.is_empty() && in_cluster(ep) {
            ep.cluster_name = cluster.to_owned();
        }
    }
}

/// Whether an endpoint is the cluster's: a pod, or one of its reserved host/remote-node
/// identities (1 host, 6 remote-node), not the world outside it.
fn in_cluster(ep: &Endpoint) -> bool {
    !ep.namespace.is_empty() || !ep.pod_name.is_empty() || matches!(ep.identity, 1 | 6)
}

#[cfg(test)]
#[path = "convert_tests.rs"]
pub(crate) mod tests;
