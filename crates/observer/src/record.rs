//! A datapath event as the ring keeps it: the kernel's numbers ([`EventRecord`]) and the
//! names it had when it happened (shared endpoint entries of the [`Store`], not copies); the
//! Hubble [`Flow`] is built from it only when someone reads it (GetFlows, follow, export,
//! history). An event whose pod is gone by then is still shown with that pod's names.
//!
//! Why: building a Flow costs dozens of allocations (strings for addresses, names, labels,
//! summary, id) and about 1 KB, at every event, most of which nobody ever reads; a record is
//! about 200 bytes and one allocation. Metrics are counted when the event arrives, exactly,
//! from [`Recorded::numbers`]: the flow without its names, built without allocating.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ciliate_model::monitor::{CtState, EventKind, EventRecord, RecordL4};

use crate::convert::{
    l34_summary_of, observation_point, system_time_to_timestamp, tcp_flags_of, MESSAGE_TYPE_DROP,
    MESSAGE_TYPE_POLICY_VERDICT, MESSAGE_TYPE_TRACE,
};
use crate::proto::flow::{
    layer4, CiliumEventType, Endpoint, Ethernet, Flow, FlowType, IcmPv4, Ip, IpVersion, Layer4,
    NetworkInterface, Policy, Service, Tcp, TraceReason, TrafficDirection, Udp, Verdict,
};
use crate::store::{EndpointInfo, ServiceRef, Store};

/// Cilium's trace observation point `TRACE_TO_LXC` (to-endpoint).
const TRACE_TO_LXC: u8 = 0;
/// Cilium's trace observation point `TRACE_FROM_LXC` (from-endpoint).
const TRACE_FROM_LXC: u8 = 5;
/// Cilium's trace observation point `TRACE_TO_OVERLAY`: a pod's packet into the tunnel.
const TRACE_TO_OVERLAY: u8 = 4;

/// Makes flow ids: v7 UUIDs (time-ordered, as Hubble's ids are unique per flow) whose 74
/// random bits are a counter mixed with a seed drawn once, not the kernel's randomness per
/// flow (`Uuid::now_v7` makes a `getrandom` system call each time: eight per connection).
#[derive(Debug)]
pub struct FlowIds {
    seed: u64,
    next: AtomicU64,
}

impl Default for FlowIds {
    fn default() -> Self {
        let random = uuid::Uuid::now_v7().as_u64_pair().1;
        Self {
            seed: random,
            next: AtomicU64::new(0),
        }
    }
}

/// SplitMix64's finalizer: a bijection of u64 that scatters consecutive inputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl FlowIds {
    /// The id of a flow at `time`.
    pub fn next(&self, time: Option<std::time::SystemTime>) -> uuid::Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let millis = time
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // A bijection of distinct counters: distinct in 64 bits, of which the UUID keeps 62
        // (rand_b; two collide with odds of about n²/2⁶³), plus 12 more (rand_a).
        let low = mix(self.seed.wrapping_add(n));
        let high = mix(low ^ self.seed);
        let mut bytes = [0u8; 10];
        bytes[..2].copy_from_slice(&high.to_be_bytes()[..2]);
        bytes[2..].copy_from_slice(&low.to_be_bytes());
        uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
    }
}

/// The node's names every flow carries, shared by all records of one observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNames {
    /// `<cluster>/<node>`.
    pub node_name: String,
    /// The cluster, put on the endpoints that belong to it (see `finish_flow`).
    pub cluster: String,
    /// The node's labels (`key=value`) when the event happened.
    pub labels: Vec<String>,
}

/// One side of a flow as it was named when the event happened.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Side {
    /// A pod (of this node or, in a cluster, another).
    Endpoint(Arc<EndpointInfo>),
    /// No pod: the identity's labels (empty when unknown).
    Identity(Box<[String]>),
}

/// What few events have: Services and the deciding policy, boxed so the others carry a
/// pointer only.
#[derive(Clone, Debug, Default, PartialEq)]
struct Rare {
    source_service: Option<ServiceRef>,
    destination_service: Option<ServiceRef>,
    policy: Option<Policy>,
}

/// What [`Recorded::names`] returns: the names [`Recorded::build`] puts on the flow besides
/// its endpoints.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordNames<'a> {
    /// The node's names.
    pub node: &'a NodeNames,
    /// The interface's name (empty when unknown; the flow has an interface when the event's
    /// `ifindex` is not 0).
    pub interface: &'a str,
    /// The Service of the source, if any.
    pub source_service: Option<&'a ServiceRef>,
    /// The Service of the destination, if any.
    pub destination_service: Option<&'a ServiceRef>,
    /// The policy that decided, if any (the flow names it when the event has a decision).
    pub policy: Option<&'a Policy>,
}

/// A datapath event with the names it had: what the ring keeps instead of a built Flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The event's numbers.
    pub event: EventRecord,
    /// The flow's id, fixed when the event arrived (a v7 UUID, time-ordered).
    uuid: uuid::Uuid,
    node: Arc<NodeNames>,
    source: Side,
    destination: Side,
    interface: Option<Arc<str>>,
    rare: Option<Box<Rare>>,
}

/// Whether the packet is a reply, from connection tracking: `None` when untracked.
fn is_reply(ct: CtState) -> Option<bool> {
    match ct {
        CtState::Reply => Some(true),
        CtState::New | CtState::Established => Some(false),
        CtState::Untracked | CtState::Related => None,
    }
}

pub(crate) fn side(store: &dyn Store, ip: Option<Ipv4Addr>, identity: u32) -> Side {
    match ip.and_then(|ip| store.endpoint_by_ip(ip)) {
        Some(ep) => Side::Endpoint(ep),
        None => Side::Identity(
            store
                .identity_labels(identity)
                .unwrap_or_default()
                .into_boxed_slice(),
        ),
    }
}

/// What tells a side's endpoint apart without building it: the pod's shared entry (by
/// address), the identity and the node's names. Sides with equal keys show equal endpoints
/// while their records live (the addresses are not reused). `None` for a side without a pod.
pub(crate) fn side_key(
    side: &Side,
    identity: u32,
    node: &Arc<NodeNames>,
) -> Option<(usize, u32, usize)> {
    match side {
        Side::Endpoint(ep) => Some((
            Arc::as_ptr(ep) as usize,
            identity,
            Arc::as_ptr(node) as usize,
        )),
        Side::Identity(_) => None,
    }
}

/// A side's endpoint as a flow shows it to clients (with the cluster's name on the
/// cluster's endpoints).
pub(crate) fn side_endpoint(side: &Side, identity: u32, node: &NodeNames) -> Endpoint {
    let mut ep = Recorded::endpoint(side, identity);
    crate::convert::finish_endpoint(&mut ep, &node.cluster);
    ep
}

/// Ports and IP protocol number of the L4 header.
fn ports_and_proto(l4: Option<RecordL4>) -> (Option<(u16, u16)>, u8) {
    match l4 {
        Some(RecordL4::Tcp { sport, dport, .. }) => (Some((sport, dport)), 6),
        Some(RecordL4::Udp { sport, dport }) => (Some((sport, dport)), 17),
        Some(RecordL4::Icmp { .. }) => (None, 1),
        Some(RecordL4::Other { proto }) => (None, proto),
        None => (None, 0),
    }
}

impl Recorded {
    /// Names `event` from `store` as it is now: what the flow will show whenever it is read.
    pub fn capture(
        event: EventRecord,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
    ) -> Self {
        let source = side(store, event.src, event.src_identity);
        let destination = side(store, event.dst, event.dst_identity);
        let interface = if event.ifindex != 0 {
            store.interface_name(event.ifindex)
        } else {
            None
        };
        let mut rare = Rare::default();
        let (ports, proto) = ports_and_proto(event.l4);
        // A side is a Service when its address:port is a frontend (the packet was not
        // translated, or a reply was translated back); else, as Hubble does, by the frontend
        // the datapath translated the connection from (per-packet DNAT or socket LB): the
        // request's destination, or the reply's source.
        if let (Some(src), Some(dst), Some((sport, dport))) = (event.src, event.dst, ports) {
            rare.destination_service = store.service_by_frontend(dst, dport, proto);
            rare.source_service = store.service_by_frontend(src, sport, proto);
        }
        if event.rev_nat != 0 {
            let side = if is_reply(event.ct_state) == Some(true) {
                &mut rare.source_service
            } else {
                &mut rare.destination_service
            };
            if side.is_none() {
                *side = store.service_by_rev_nat(event.rev_nat);
            }
        }
        if crate::policy_names::decision(&event).is_some() {
            rare.policy = store.policy_by_rule(event.rule);
        }
        let rare = (rare != Rare::default()).then(|| Box::new(rare));
        Self {
            event,
            uuid: ids.next(event.time),
            node: Arc::clone(node),
            source,
            destination,
            interface,
            rare,
        }
    }

    /// The flow's time.
    pub fn time(&self) -> Option<pbjson_types::Timestamp> {
        self.event.time.map(system_time_to_timestamp)
    }

    fn endpoint_id(side: &Side) -> Option<u32> {
        match side {
            Side::Endpoint(ep) => Some(ep.id),
            Side::Identity(_) => None,
        }
    }

    /// The flow without names: every number Hubble's metrics and filters on verdicts,
    /// directions, ports and flags look at, built without allocating.
    pub fn numbers(&self) -> Flow {
        let ev = &self.event;
        let mut flow = Flow {
            time: self.time(),
            r#type: FlowType::L3L4 as i32,
            ..Flow::default()
        };
        flow.l4 = ev.l4.and_then(|l4| {
            let protocol = match l4 {
                RecordL4::Tcp {
                    sport,
                    dport,
                    flags,
                } => layer4::Protocol::Tcp(Tcp {
                    source_port: u32::from(sport),
                    destination_port: u32::from(dport),
                    flags: Some(tcp_flags_of(flags)),
                }),
                RecordL4::Udp { sport, dport } => layer4::Protocol::Udp(Udp {
                    source_port: u32::from(sport),
                    destination_port: u32::from(dport),
                }),
                RecordL4::Icmp { r#type, code } => layer4::Protocol::IcmPv4(IcmPv4 {
                    r#type: u32::from(r#type),
                    code: u32::from(code),
                }),
                RecordL4::Other { .. } => return None,
            };
            Some(Layer4 {
                protocol: Some(protocol),
            })
        });
        let is_reply = is_reply(ev.ct_state);
        flow.is_reply = is_reply.map(|value| pbjson_types::BoolValue { value });
        flow.reply = is_reply == Some(true);

        // The reporting endpoint tells the direction when the observation point does not:
        // a packet the endpoint sent is egress, one it receives is ingress.
        let reporter = u32::from(ev.endpoint);
        let by_endpoint = if reporter != 0 && Self::endpoint_id(&self.source) == Some(reporter) {
            TrafficDirection::Egress
        } else if reporter != 0 && Self::endpoint_id(&self.destination) == Some(reporter) {
            TrafficDirection::Ingress
        } else {
            TrafficDirection::Unknown
        };
        match ev.kind {
            EventKind::Trace => {
                flow.verdict = Verdict::Forwarded as i32;
                flow.trace_reason = trace_reason(ev.ct_state) as i32;
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
                // As Hubble does: the direction of a connection, not of the packet, so a
                // reply to a connection the pod opened is still egress.
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
                flow.policy_match_type = u32::from(ev.verdict.match_type);
                flow.event_type = Some(CiliumEventType {
                    r#type: MESSAGE_TYPE_POLICY_VERDICT,
                    sub_type: 0,
                });
                flow.traffic_direction = match ev.verdict.egress {
                    Some(true) => TrafficDirection::Egress,
                    Some(false) => TrafficDirection::Ingress,
                    None => by_endpoint,
                } as i32;
            }
        }
        flow
    }

    pub(crate) fn endpoint(side: &Side, identity: u32) -> Endpoint {
        match side {
            Side::Endpoint(ep) => Endpoint {
                id: ep.id,
                identity: if identity != 0 { identity } else { ep.identity },
                namespace: ep.namespace.clone(),
                labels: ep.labels.clone(),
                pod_name: ep.pod_name.clone(),
                ..Endpoint::default()
            },
            Side::Identity(labels) => Endpoint {
                identity,
                labels: labels.to_vec(),
                ..Endpoint::default()
            },
        }
    }

    /// The Hubble flow, as it was when the event happened, without its id and cluster names
    /// (what [`crate::convert::to_flow`] returns).
    pub fn build(&self) -> Flow {
        let mut flow = self.build_parts(true);
        flow.node_name.clone_from(&self.node.node_name);
        flow
    }

    /// The flow's id.
    pub fn uuid(&self) -> uuid::Uuid {
        self.uuid
    }

    /// The names the flow carries besides its endpoints, for a writer that encodes the flow
    /// without building it (the history's rows: `history::row`).
    pub(crate) fn names(&self) -> RecordNames<'_> {
        let rare = self.rare.as_deref();
        RecordNames {
            node: &self.node,
            interface: self.interface.as_deref().unwrap_or_default(),
            source_service: rare.and_then(|r| r.source_service.as_ref()),
            destination_service: rare.and_then(|r| r.destination_service.as_ref()),
            policy: rare.and_then(|r| r.policy.as_ref()),
        }
    }

    fn side(&self, destination: bool) -> (&Side, u32) {
        if destination {
            (&self.destination, self.event.dst_identity)
        } else {
            (&self.source, self.event.src_identity)
        }
    }

    /// What tells the source's (or the destination's) endpoint as [`flow`](Self::flow)
    /// shows it from other records' without building it: the pod's shared entry (by address),
    /// the identity and the node's names. Records with equal keys show equal endpoints while
    /// they all live (the addresses are not reused). `None` for a side without a pod.
    pub fn history_endpoint_key(&self, destination: bool) -> Option<(usize, u32, usize)> {
        let (side, identity) = self.side(destination);
        side_key(side, identity, &self.node)
    }

    /// The source's (or the destination's) endpoint exactly as [`flow`](Self::flow) shows
    /// it.
    pub fn history_endpoint(&self, destination: bool) -> Endpoint {
        let (side, identity) = self.side(destination);
        side_endpoint(side, identity, &self.node)
    }

    /// The flow but for its node name, its endpoints when `endpoints` is false, its id and
    /// the cluster's names.
    fn build_parts(&self, endpoints: bool) -> Flow {
        let ev = &self.event;
        let mut flow = self.numbers();
        flow.node_labels.clone_from(&self.node.labels);
        if ev.ifindex != 0 {
            flow.interface = Some(NetworkInterface {
                index: ev.ifindex,
                name: self.interface.as_deref().unwrap_or_default().to_owned(),
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
        if endpoints {
            flow.source = Some(Self::endpoint(&self.source, ev.src_identity));
            flow.destination = Some(Self::endpoint(&self.destination, ev.dst_identity));
        }
        if let Some(rare) = &self.rare {
            let service = |s: &Option<ServiceRef>| {
                s.as_ref().map(|s| Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                })
            };
            flow.source_service = service(&rare.source_service);
            flow.destination_service = service(&rare.destination_service);
            if let (Some(policy), Some(allowed)) = (&rare.policy, crate::policy_names::decision(ev))
            {
                crate::policy_names::fill(&mut flow, allowed, policy.clone());
            }
        }
        flow.summary = l34_summary_of(ev);
        flow.ethernet = ev.ethernet.map(|e| Ethernet {
            source: e.source.to_string(),
            destination: e.destination.to_string(),
        });
        flow
    }

    /// The Hubble flow as clients receive it: [`build`](Self::build) with its id and the
    /// cluster's name on the cluster's endpoints.
    pub fn flow(&self) -> Flow {
        let mut flow = self.build();
        flow.uuid = self.uuid.to_string();
        crate::convert::finish_flow(&mut flow, &self.node.cluster);
        flow
    }
}

/// Cilium's trace reason of a traced packet from its connection tracking state.
fn trace_reason(ct: CtState) -> TraceReason {
    match ct {
        CtState::New => TraceReason::New,
        CtState::Established => TraceReason::Established,
        CtState::Reply => TraceReason::Reply,
        CtState::Related => TraceReason::Related,
        CtState::Untracked => TraceReason::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::record_of;
    use crate::convert::tests::{store, trace_event};
    use crate::metrics::Metrics;
    use crate::ring::Entry;
    use crate::store::{Snapshot, SwappableStore};
    use ciliate_model::monitor::{EventKind, MonitorEvent, L4};

    fn names() -> Arc<NodeNames> {
        Arc::new(NodeNames {
            node_name: "default/n1".into(),
            cluster: "default".into(),
            labels: vec!["zone=a".into()],
        })
    }

    /// Events of every kind the datapath reports, with and without names and Services.
    fn events() -> Vec<MonitorEvent> {
        let syn = trace_event();
        let reply = MonitorEvent {
            ct_state: "reply".into(),
            code: 0,
            reason: "to-endpoint".into(),
            l4: Some(L4::Tcp {
                sport: 80,
                dport: 40000,
                flags: vec!["SYN".into(), "ACK".into()],
            }),
            src: syn.dst,
            dst: syn.src,
            ..syn.clone()
        };
        let drop = MonitorEvent {
            kind: EventKind::Drop,
            code: 133,
            reason: "Policy denied".into(),
            ..syn.clone()
        };
        let verdict = MonitorEvent {
            kind: EventKind::PolicyVerdict,
            code: 0,
            reason: "egress allowed (L3-L4)".into(),
            rule: 7,
            ..syn.clone()
        };
        let to_service = MonitorEvent {
            dst: Some("10.96.0.10".parse().expect("ip")),
            rev_nat: 5,
            ..syn.clone()
        };
        let icmp = MonitorEvent {
            l4: Some(L4::Icmp { r#type: 8, code: 0 }),
            src: Some("192.0.2.9".parse().expect("ip")),
            ..syn.clone()
        };
        let udp = MonitorEvent {
            l4: Some(L4::Udp {
                sport: 5353,
                dport: 53,
            }),
            ct_state: String::new(),
            ..syn.clone()
        };
        vec![syn, reply, drop, verdict, to_service, icmp, udp]
    }

    #[test]
    fn the_numbers_are_the_built_flow_without_its_names() {
        let store = store();
        for ev in events() {
            let r = Recorded::capture(record_of(&ev), &store, &names(), &FlowIds::default());
            let mut built = r.build();
            // Everything a name, address or text: what `numbers` leaves out.
            built.node_name.clear();
            built.node_labels.clear();
            built.interface = None;
            built.ip = None;
            built.source = None;
            built.destination = None;
            built.source_service = None;
            built.destination_service = None;
            built.summary.clear();
            built.ethernet = None;
            built.ingress_allowed_by.clear();
            built.egress_allowed_by.clear();
            built.ingress_denied_by.clear();
            built.egress_denied_by.clear();
            assert_eq!(built, r.numbers(), "{ev:?}");
        }
    }

    #[test]
    fn metrics_counted_from_the_numbers_equal_those_of_the_built_flows() {
        let store = store();
        let (from_numbers, from_flows) = (Metrics::default(), Metrics::default());
        for ev in events() {
            let r = Recorded::capture(record_of(&ev), &store, &names(), &FlowIds::default());
            from_numbers.record(&r.numbers());
            from_flows.record(&r.flow());
        }
        assert_eq!(from_numbers.render(), from_flows.render());
        assert!(from_numbers.render().contains("hubble_tcp_flags_total"));
    }

    #[test]
    fn a_flow_read_after_its_pod_is_gone_keeps_the_names_it_had() {
        let names_now = SwappableStore::default();
        names_now.replace(store());
        let r = Recorded::capture(
            record_of(&trace_event()),
            &names_now,
            &names(),
            &FlowIds::default(),
        );
        names_now.replace(Snapshot::default());
        let f = r.flow();
        let src = f.source.expect("source");
        assert_eq!(
            (src.namespace.as_str(), src.pod_name.as_str()),
            ("default", "client")
        );
        assert_eq!(src.labels, ["k8s:app=client"]);
        assert_eq!(src.cluster_name, "default");
        assert_eq!(f.interface.expect("interface").index, 42);
        // Read twice, the same flow (its id too).
        assert_eq!(r.flow(), r.flow());
        assert!(!r.flow().uuid.is_empty());
    }

    #[test]
    fn flow_ids_are_distinct_v7_uuids_of_the_flows_time() {
        let ids = FlowIds::default();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_714_557_600_123);
        let all: std::collections::HashSet<uuid::Uuid> =
            (0..100_000).map(|_| ids.next(Some(t))).collect();
        assert_eq!(all.len(), 100_000);
        for id in all.iter().take(10) {
            assert_eq!(id.get_version_num(), 7);
            let (secs, nanos) = id.get_timestamp().expect("v7").to_unix();
            assert_eq!((secs, nanos / 1_000_000), (1_714_557_600, 123));
        }
    }

    #[test]
    fn a_ring_entry_is_a_fraction_of_a_flow() {
        // Arc<Entry> allocates the size of the largest kind: events, not boxed flows.
        let entry = std::mem::size_of::<Entry>();
        let flow = std::mem::size_of::<Flow>();
        assert!(entry <= 256, "an entry is {entry} bytes (a Flow {flow})");
    }
}
