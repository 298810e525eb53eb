//! One datapath event → one Hubble [`Flow`], enriched from the [`Store`].

use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ciliate_model::monitor::{
    CtState, EventKind, EventRecord, MonitorEvent, RecordL4, VerdictInfo,
};

use crate::proto::flow::{Endpoint, Flow, Service, TcpFlags, TraceObservationPoint};
use crate::record::{FlowIds, NodeNames, Recorded, Side};
use crate::store::{ServiceRef, Store};

/// Cilium's monitor message type of a drop notification.
pub const MESSAGE_TYPE_DROP: i32 = 1;
/// Cilium's monitor message type of a trace notification.
pub const MESSAGE_TYPE_TRACE: i32 = 4;
/// Cilium's monitor message type of a policy verdict notification.
pub const MESSAGE_TYPE_POLICY_VERDICT: i32 = 5;

/// Cilium's trace observation point `TRACE_TO_LXC` (to-endpoint).
const TRACE_TO_LXC: u8 = 0;

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
fn policy_match_type(reason: &str) -> u8 {
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

/// A protobuf timestamp of a wall-clock time.
pub fn system_time_to_timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Hubble's TCP flags of the TCP header's flag bits (see `TCP_FLAG_NAMES`).
pub(crate) fn tcp_flags_of(bits: u8) -> TcpFlags {
    TcpFlags {
        fin: bits & 0x01 != 0,
        syn: bits & 0x02 != 0,
        rst: bits & 0x04 != 0,
        psh: bits & 0x08 != 0,
        ack: bits & 0x10 != 0,
        urg: bits & 0x20 != 0,
        ece: bits & 0x40 != 0,
        cwr: bits & 0x80 != 0,
        ..TcpFlags::default()
    }
}

/// The flow's endpoint at `ip`, and the id of the local endpoint there, if any: named as the
/// ring's records name theirs ([`Recorded::endpoint`]).
pub(crate) fn endpoint(
    store: &dyn Store,
    ip: Option<Ipv4Addr>,
    identity: u32,
) -> (Endpoint, Option<u32>) {
    let side = crate::record::side(store, ip, identity);
    let local = match &side {
        Side::Endpoint(ep) => Some(ep.id),
        Side::Identity(_) => None,
    };
    (Recorded::endpoint(&side, identity), local)
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

/// Converts one event, named from the store as it is now, without the flow's id and cluster
/// names (see [`Recorded`] for what the observer keeps). `node_name` is this node's.
pub fn to_flow(ev: &MonitorEvent, store: &dyn Store, node_name: &str) -> Flow {
    let node = Arc::new(NodeNames {
        node_name: node_name.to_owned(),
        cluster: String::new(),
        labels: store.node_labels(),
    });
    Recorded::capture(record_of(ev), store, &node, &FlowIds::default()).build()
}

/// The numbers of a named event (what `ciliate monitor` and the fake datapath give): the
/// inverse of the datapath's naming.
pub fn record_of(ev: &MonitorEvent) -> EventRecord {
    let verdict = if ev.kind == EventKind::PolicyVerdict {
        VerdictInfo {
            egress: if ev.reason.starts_with("egress") {
                Some(true)
            } else if ev.reason.starts_with("ingress") {
                Some(false)
            } else {
                None
            },
            match_type: policy_match_type(&ev.reason),
        }
    } else {
        VerdictInfo::default()
    };
    EventRecord {
        kind: ev.kind,
        time: humantime::parse_rfc3339_weak(&ev.time).ok(),
        code: ev.code,
        verdict,
        endpoint: ev.endpoint,
        ifindex: ev.ifindex,
        src_identity: ev.src_identity,
        dst_identity: ev.dst_identity,
        ct_state: CtState::from_name(&ev.ct_state),
        len: ev.len,
        ethertype: ev.ethertype,
        src: ev.src,
        dst: ev.dst,
        l4: ev.l4.as_ref().map(RecordL4::from_l4),
        rev_nat: ev.rev_nat,
        rule: ev.rule,
        ethernet: ev.ethernet,
    }
}

/// Hubble's summary of an L3/L4 flow (what its compact output prints in parentheses): the
/// innermost layer decoded, `TCP Flags: SYN, ACK` for TCP, `ICMPv4 EchoRequest` for ICMP.
pub fn l34_summary(ev: &MonitorEvent) -> String {
    l34_summary_of(&record_of(ev))
}

/// [`l34_summary`] of an event's numbers.
pub fn l34_summary_of(ev: &EventRecord) -> String {
    let mut s = String::new();
    write_l34_summary(ev, &mut s);
    s
}

/// [`l34_summary_of`] appended to `s` (a writer that reuses its buffer allocates nothing for
/// TCP and UDP).
pub(crate) fn write_l34_summary(ev: &EventRecord, s: &mut String) {
    let text = match ev.l4 {
        Some(RecordL4::Tcp { flags, .. }) => {
            // gopacket's order, which Hubble's getTCPFlags follows.
            const ORDER: [(u8, &str); 8] = [
                (0x02, "SYN"),
                (0x10, "ACK"),
                (0x04, "RST"),
                (0x01, "FIN"),
                (0x08, "PSH"),
                (0x20, "URG"),
                (0x40, "ECE"),
                (0x80, "CWR"),
            ];
            s.push_str("TCP Flags: ");
            let mut first = true;
            for (bit, name) in ORDER {
                if flags & bit != 0 {
                    if !first {
                        s.push_str(", ");
                    }
                    s.push_str(name);
                    first = false;
                }
            }
            return;
        }
        Some(RecordL4::Udp { .. }) => "UDP",
        Some(RecordL4::Icmp { r#type, code }) => {
            s.push_str("ICMPv4 ");
            s.push_str(&icmpv4_type_code(r#type, code));
            return;
        }
        Some(RecordL4::Other { proto: 132 }) => "SCTP",
        Some(RecordL4::Other { .. }) | None if ev.src.is_some() => "IPv4",
        _ => match ev.ethertype {
            0x0806 => "ARP",
            0x86dd => "IPv6",
            _ => "Ethernet",
        },
    };
    s.push_str(text);
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

/// The ids of flows that come without one (the proxy's L7 flows): drawn like the
/// datapath's ([`FlowIds`]), not with `Uuid::now_v7`, whose `getrandom` system call per flow
/// was 2.5% of the agent's CPU under a stream of DNS queries (two flows each).
static FLOW_IDS: LazyLock<FlowIds> = LazyLock::new(FlowIds::default);

/// What every flow gets once made, whatever made it (datapath or proxy): a unique id (a
/// time-ordered v7 UUID, as Hubble's are unique per flow) and, on the endpoints that belong
/// to the cluster (a pod's, or a node's own), the cluster's name.
pub fn finish_flow(flow: &mut Flow, cluster: &str) {
    if flow.uuid.is_empty() {
        flow.uuid = FLOW_IDS.next(Some(SystemTime::now())).to_string();
    }
    for ep in [flow.source.as_mut(), flow.destination.as_mut()]
        .into_iter()
        .flatten()
    {
        finish_endpoint(ep, cluster);
    }
}

/// Puts the cluster's name on an endpoint of the cluster that has none (see [`finish_flow`]).
pub fn finish_endpoint(ep: &mut Endpoint, cluster: &str) {
    if ep.cluster_name.is_empty() && in_cluster(ep) {
        ep.cluster_name = cluster.to_owned();
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
