use std::net::Ipv4Addr;

use ciliate_model::monitor::{EventKind, MonitorEvent, L4};

use super::*;
use crate::proto::flow::{
    layer4, CiliumEventType, DropReason, FlowType, LostEventSource, NetworkInterface, TraceReason,
    TrafficDirection, Verdict,
};
use crate::store::{EndpointInfo, ServiceRef, Snapshot};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub(crate) fn trace_event() -> MonitorEvent {
    MonitorEvent {
        kind: EventKind::Trace,
        time: "2024-05-01T10:00:00.123456Z".into(),
        code: 5,
        reason: "from-endpoint".into(),
        endpoint: 1,
        ifindex: 42,
        src_identity: 256,
        dst_identity: 257,
        ct_state: "new".into(),
        len: 74,
        ethertype: 0x0800,
        src: Some(CLIENT),
        dst: Some(SERVER),
        l4: Some(L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: vec!["SYN".into()],
        }),
        rev_nat: 0,
        rule: 0,
        ethernet: None,
    }
}

pub(crate) fn store() -> Snapshot {
    let mut s = Snapshot::default();
    s.endpoints.insert(
        CLIENT,
        EndpointInfo {
            id: 1,
            identity: 256,
            namespace: "default".into(),
            pod_name: "client".into(),
            labels: vec!["k8s:app=client".into()],
        }
        .into(),
    );
    s.endpoints.insert(
        SERVER,
        EndpointInfo {
            id: 2,
            identity: 257,
            namespace: "prod".into(),
            pod_name: "web-1".into(),
            labels: vec!["k8s:app=web".into(), "k8s:tier=front".into()],
        }
        .into(),
    );
    s.identities.insert(2, vec!["reserved:world".into()]);
    let web = ServiceRef {
        namespace: "prod".into(),
        name: "web".into(),
    };
    s.frontends.insert((VIP, 80, 6), web.clone());
    s.rev_nats.insert(5, web);
    s
}

#[test]
fn a_trace_becomes_a_forwarded_flow_with_both_pods() {
    let f = to_flow(&trace_event(), &store(), "node-a");
    assert_eq!(f.verdict, Verdict::Forwarded as i32);
    assert_eq!(f.r#type, FlowType::L3L4 as i32);
    assert_eq!(f.node_name, "node-a");
    assert_eq!(
        f.time.map(|t| (t.seconds, t.nanos)),
        Some((1_714_557_600, 123_456_000))
    );
    let ip = f.ip.clone().expect("ip");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str()),
        ("10.200.0.2", "10.200.0.3")
    );
    let src = f.source.clone().expect("source");
    assert_eq!(
        (
            src.namespace.as_str(),
            src.pod_name.as_str(),
            src.id,
            src.identity
        ),
        ("default", "client", 1, 256)
    );
    let dst = f.destination.clone().expect("destination");
    assert_eq!(
        (dst.namespace.as_str(), dst.pod_name.as_str()),
        ("prod", "web-1")
    );
    assert_eq!(dst.labels, vec!["k8s:app=web", "k8s:tier=front"]);
    match f.l4.and_then(|l| l.protocol) {
        Some(layer4::Protocol::Tcp(t)) => {
            assert_eq!((t.source_port, t.destination_port), (40000, 80));
            let flags = t.flags.expect("flags");
            assert!(flags.syn && !flags.ack);
        }
        other => panic!("not TCP: {other:?}"),
    }
    assert_eq!(
        f.event_type,
        Some(CiliumEventType {
            r#type: 4,
            sub_type: 5
        })
    );
    assert_eq!(
        f.trace_observation_point,
        TraceObservationPoint::FromEndpoint as i32
    );
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    assert_eq!(is_reply(&f), Some(false));
    assert_eq!(f.interface.map(|i| i.index), Some(42));
    assert_eq!(f.drop_reason_desc, 0);
}

#[test]
fn to_endpoint_is_hubbles_101_and_replies_keep_the_connection_direction() {
    let mut ev = trace_event();
    ev.code = 0;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(
        f.trace_observation_point,
        TraceObservationPoint::ToEndpoint as i32
    );
    assert_eq!(f.trace_observation_point, 101);
    assert_eq!(f.traffic_direction, TrafficDirection::Ingress as i32);
    ev.ct_state = "reply".into();
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(is_reply(&f), Some(true));
    assert!(f.reply);
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    ev.ct_state = String::new();
    assert_eq!(is_reply(&to_flow(&ev, &store(), "n")), None);
    for code in 1..=11u8 {
        assert_eq!(observation_point(code) as i32, i32::from(code));
    }
    assert_eq!(observation_point(200), TraceObservationPoint::UnknownPoint);
}

#[test]
fn a_drop_carries_its_reason_in_both_fields_and_the_event_sub_type() {
    let mut ev = trace_event();
    ev.kind = EventKind::Drop;
    ev.code = 133;
    ev.reason = "Policy denied".into();
    ev.endpoint = 2;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(f.verdict, Verdict::Dropped as i32);
    assert_eq!(f.drop_reason, 133);
    assert_eq!(f.drop_reason_desc, DropReason::PolicyDenied as i32);
    assert_eq!(
        f.event_type,
        Some(CiliumEventType {
            r#type: 1,
            sub_type: 133
        })
    );
    // Reported by the destination endpoint: ingress.
    assert_eq!(f.traffic_direction, TrafficDirection::Ingress as i32);
    assert_eq!(f.trace_observation_point, 0);
}

#[test]
fn a_service_drop_names_the_service_by_its_frontend() {
    let mut ev = trace_event();
    ev.kind = EventKind::Drop;
    ev.code = 158;
    ev.dst = Some(VIP);
    ev.dst_identity = 2;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(
        f.drop_reason_desc,
        DropReason::ServiceBackendNotFound as i32
    );
    let svc = f.destination_service.clone().expect("service");
    assert_eq!((svc.namespace.as_str(), svc.name.as_str()), ("prod", "web"));
    // Not a local endpoint: named by its identity's labels.
    let dst = f.destination.expect("destination");
    assert_eq!(dst.pod_name, "");
    assert_eq!(dst.labels, vec!["reserved:world"]);
    // Reported by the source endpoint: egress.
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
}

fn names(s: Option<Service>) -> Option<(String, String)> {
    s.map(|s| (s.namespace, s.name))
}

#[test]
fn a_translated_request_names_the_service_by_its_rev_nat_index() {
    // The datapath reports the packet after DNAT (or socket LB): the backend is the
    // destination, the rev-NAT index names the frontend.
    let mut ev = trace_event();
    ev.rev_nat = 5;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(
        names(f.destination_service),
        Some(("prod".into(), "web".into()))
    );
    assert_eq!(f.source_service, None);
    assert_eq!(f.destination.expect("dst").pod_name, "web-1");

    ev.ct_state = "established".into();
    let f = to_flow(&ev, &store(), "n");
    assert!(f.destination_service.is_some());

    // An index the agent does not know (a Service deleted since): nothing, no panic.
    ev.rev_nat = 6;
    assert_eq!(to_flow(&ev, &store(), "n").destination_service, None);
    // Without one, a backend's address names no Service.
    ev.rev_nat = 0;
    assert_eq!(to_flow(&ev, &store(), "n").destination_service, None);
}

#[test]
fn a_reply_of_a_translated_connection_names_the_service_as_its_source() {
    // Socket LB: the reply comes from the backend, untranslated.
    let mut ev = trace_event();
    ev.code = 0;
    ev.reason = "to-endpoint".into();
    ev.ct_state = "reply".into();
    ev.src = Some(SERVER);
    ev.dst = Some(CLIENT);
    ev.l4 = Some(L4::Tcp {
        sport: 80,
        dport: 40000,
        flags: vec!["SYN".into(), "ACK".into()],
    });
    ev.rev_nat = 5;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(names(f.source_service), Some(("prod".into(), "web".into())));
    assert_eq!(f.destination_service, None);
    assert!(f.reply);

    // Per-packet: the reply was translated back to the frontend, which names it too.
    ev.src = Some(VIP);
    ev.rev_nat = 0;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(names(f.source_service), Some(("prod".into(), "web".into())));
    assert_eq!(f.destination_service, None);
}

#[test]
fn policy_verdicts_map_action_direction_and_match_type() {
    let mut ev = trace_event();
    ev.kind = EventKind::PolicyVerdict;
    ev.code = 0;
    ev.reason = "ingress allowed (L3-L4)".into();
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(f.verdict, Verdict::Forwarded as i32);
    assert_eq!(
        f.event_type,
        Some(CiliumEventType {
            r#type: 5,
            sub_type: 0
        })
    );
    assert_eq!(f.traffic_direction, TrafficDirection::Ingress as i32);
    assert_eq!(f.policy_match_type, 2);
    ev.code = 181;
    ev.reason = "egress denied (Policy denied by denylist)".into();
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(f.verdict, Verdict::Dropped as i32);
    assert_eq!(f.drop_reason_desc, DropReason::PolicyDeny as i32);
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    assert_eq!(f.policy_match_type, 0);
    for (reason, m) in [
        ("egress allowed (L3-Only)", 1),
        ("egress allowed (L4-Only)", 3),
        ("egress allowed (all)", 4),
    ] {
        ev.code = 0;
        ev.reason = reason.into();
        assert_eq!(to_flow(&ev, &store(), "n").policy_match_type, m, "{reason}");
    }
}

#[test]
fn udp_icmp_other_and_truncated_packets_decode_as_far_as_they_go() {
    let mut ev = trace_event();
    ev.l4 = Some(L4::Udp {
        sport: 5353,
        dport: 53,
    });
    match to_flow(&ev, &store(), "n").l4.and_then(|l| l.protocol) {
        Some(layer4::Protocol::Udp(u)) => {
            assert_eq!((u.source_port, u.destination_port), (5353, 53))
        }
        other => panic!("{other:?}"),
    }
    ev.l4 = Some(L4::Icmp { r#type: 8, code: 0 });
    match to_flow(&ev, &store(), "n").l4.and_then(|l| l.protocol) {
        Some(layer4::Protocol::IcmPv4(i)) => assert_eq!((i.r#type, i.code), (8, 0)),
        other => panic!("{other:?}"),
    }
    ev.l4 = Some(L4::Other { proto: 47 });
    assert_eq!(to_flow(&ev, &store(), "n").l4, None);
    // Truncated: no L4, then no L3 either; never a panic, and still attributed and typed.
    ev.l4 = None;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(f.l4, None);
    assert!(f.ip.is_some());
    ev.src = None;
    ev.dst = None;
    ev.ethertype = 0x86dd;
    let f = to_flow(&ev, &store(), "n");
    assert_eq!(f.ip, None);
    assert_eq!(f.source.expect("source").identity, 256);
    assert_eq!(f.verdict, Verdict::Forwarded as i32);
    // A time we cannot read leaves the field empty rather than inventing one.
    ev.time = "garbage".into();
    assert_eq!(to_flow(&ev, &store(), "n").time, None);
}

#[test]
fn unknown_endpoints_keep_their_numbers() {
    let ev = trace_event();
    let f = to_flow(&ev, &Snapshot::default(), "n");
    let src = f.source.expect("source");
    assert_eq!((src.identity, src.pod_name.as_str(), src.id), (256, "", 0));
    let _ = LostEventSource::ObserverEventsQueue;
}

#[test]
fn summaries_read_as_hubbles() {
    let mut ev = trace_event();
    ev.l4 = Some(L4::Tcp {
        sport: 1,
        dport: 2,
        flags: vec!["ACK".into(), "SYN".into()],
    });
    assert_eq!(l34_summary(&ev), "TCP Flags: SYN, ACK");
    ev.l4 = Some(L4::Udp {
        sport: 1,
        dport: 53,
    });
    assert_eq!(l34_summary(&ev), "UDP");
    ev.l4 = Some(L4::Icmp { r#type: 8, code: 0 });
    assert_eq!(l34_summary(&ev), "ICMPv4 EchoRequest");
    ev.l4 = Some(L4::Icmp { r#type: 3, code: 3 });
    assert_eq!(l34_summary(&ev), "ICMPv4 DestinationUnreachable(Port)");
    ev.l4 = Some(L4::Icmp { r#type: 0, code: 7 });
    assert_eq!(l34_summary(&ev), "ICMPv4 EchoReply(Code: 7)");
    ev.l4 = Some(L4::Icmp {
        r#type: 99,
        code: 1,
    });
    assert_eq!(l34_summary(&ev), "ICMPv4 99(1)");
    ev.l4 = Some(L4::Other { proto: 47 });
    assert_eq!(l34_summary(&ev), "IPv4");
    ev.l4 = None;
    ev.src = None;
    ev.ethertype = 0x0806;
    assert_eq!(l34_summary(&ev), "ARP");
    let f = to_flow(&trace_event(), &store(), "node-a");
    assert_eq!(f.summary, "TCP Flags: SYN");
}

#[test]
fn traces_carry_their_reason_and_interface_name() {
    let mut s = store();
    s.interfaces.insert(42, "lxc1234".into());
    let f = to_flow(&trace_event(), &s, "node-a");
    assert_eq!(f.trace_reason, TraceReason::New as i32);
    assert_eq!(
        f.interface,
        Some(NetworkInterface {
            index: 42,
            name: "lxc1234".into()
        })
    );
    let mut ev = trace_event();
    ev.ct_state = "reply".into();
    assert_eq!(
        to_flow(&ev, &store(), "n").trace_reason,
        TraceReason::Reply as i32
    );
    ev.kind = EventKind::Drop;
    assert_eq!(to_flow(&ev, &store(), "n").trace_reason, 0, "only traces");
}

#[test]
fn finished_flows_have_a_uuid_and_cluster_names_on_cluster_endpoints() {
    let mut a = to_flow(&trace_event(), &store(), "default/node-a");
    let mut b = a.clone();
    finish_flow(&mut a, "prod-cluster");
    finish_flow(&mut b, "prod-cluster");
    let id = uuid::Uuid::parse_str(&a.uuid).expect("uuid");
    assert_eq!(id.get_version_num(), 7);
    assert_ne!(a.uuid, b.uuid);
    // Time-ordered: the id's timestamp is the time it was made.
    let (secs, _) = id.get_timestamp().expect("v7 timestamp").to_unix();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(secs.abs_diff(now) < 60, "{secs} vs {now}");
    assert_eq!(
        a.source.as_ref().map(|e| e.cluster_name.as_str()),
        Some("prod-cluster")
    );
    // The world is no endpoint of the cluster.
    let mut ev = trace_event();
    ev.dst = Some(Ipv4Addr::new(1, 1, 1, 1));
    ev.dst_identity = 2;
    let mut w = to_flow(&ev, &store(), "n");
    finish_flow(&mut w, "default");
    assert_eq!(
        w.destination.as_ref().map(|e| e.cluster_name.as_str()),
        Some("")
    );
    // A uuid already set is kept.
    let kept = a.uuid.clone();
    finish_flow(&mut a, "x");
    assert_eq!(a.uuid, kept);
}

#[test]
fn the_ethernet_header_is_in_the_flow() {
    let mut ev = trace_event();
    assert_eq!(to_flow(&ev, &store(), "n").ethernet, None);
    ev.ethernet = Some(ciliate_model::monitor::EthernetAddrs {
        source: "0a:00:00:00:00:01".parse().expect("mac"),
        destination: "0a:00:00:00:00:02".parse().expect("mac"),
    });
    let e = to_flow(&ev, &store(), "n").ethernet.expect("ethernet");
    assert_eq!(
        (e.source.as_str(), e.destination.as_str()),
        ("0a:00:00:00:00:01", "0a:00:00:00:00:02")
    );
}
