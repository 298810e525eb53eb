use super::*;
use crate::convert::tests::{store, trace_event};
use crate::convert::to_flow;
use crate::proto::flow::{TrafficDirection, Verdict};
use ciliate_model::monitor::EventKind;

fn syn() -> Flow {
    to_flow(&trace_event(), &store(), "kind-worker")
}

fn dropped() -> Flow {
    let mut ev = trace_event();
    ev.kind = EventKind::Drop;
    ev.code = 133;
    ev.endpoint = 2;
    to_flow(&ev, &store(), "kind-worker")
}

fn m(f: FlowFilter, flow: &Flow) -> bool {
    FlowFilters::compile(&[f], &[])
        .expect("compiles")
        .matches(flow)
}

#[test]
fn pods_by_namespace_and_prefix() {
    let f = syn();
    for (pat, want) in [
        ("default/client", true),
        ("default/cli", true),
        ("default/", true),
        ("client", true),
        ("prod/client", false),
        ("default/web", false),
    ] {
        assert_eq!(
            m(
                FlowFilter {
                    source_pod: vec![pat.into()],
                    ..Default::default()
                },
                &f
            ),
            want,
            "{pat}"
        );
    }
    assert!(m(
        FlowFilter {
            destination_pod: vec!["prod/web-".into()],
            ..Default::default()
        },
        &f
    ));
    // Values of one field are ORed.
    assert!(m(
        FlowFilter {
            source_pod: vec!["x/".into(), "default/".into()],
            ..Default::default()
        },
        &f
    ));
}

#[test]
fn ips_and_cidrs_and_bad_input() {
    let f = syn();
    for (ip, want) in [
        ("10.200.0.2", true),
        ("10.200.0.0/24", true),
        ("10.201.0.0/16", false),
    ] {
        assert_eq!(
            m(
                FlowFilter {
                    source_ip: vec![ip.into()],
                    ..Default::default()
                },
                &f
            ),
            want,
            "{ip}"
        );
    }
    assert!(m(
        FlowFilter {
            destination_ip: vec!["10.200.0.3".into()],
            ..Default::default()
        },
        &f
    ));
    let err = FlowFilters::compile(
        &[FlowFilter {
            source_ip: vec!["10.0.0.300".into()],
            ..Default::default()
        }],
        &[],
    )
    .expect_err("bad ip");
    assert_eq!(err.field, "source_ip");
}

#[test]
fn label_selectors() {
    let f = syn();
    for (sel, want) in [
        ("app=web", true),
        ("k8s:app=web", true),
        ("reserved:app=web", false),
        ("app==web,tier=front", true),
        ("app=web,tier=back", false),
        ("app in (web, api)", true),
        ("app notin (web)", false),
        ("tier", true),
        ("!tier", false),
        ("app!=api", true),
    ] {
        assert_eq!(
            m(
                FlowFilter {
                    destination_label: vec![sel.into()],
                    ..Default::default()
                },
                &f
            ),
            want,
            "{sel}"
        );
    }
    assert!(FlowFilters::compile(
        &[FlowFilter {
            source_label: vec!["app in web".into()],
            ..Default::default()
        }],
        &[]
    )
    .is_err());
}

#[test]
fn identity_port_protocol_verdict_direction_node_and_flags() {
    let f = syn();
    let d = dropped();
    assert!(m(
        FlowFilter {
            source_identity: vec![256],
            ..Default::default()
        },
        &f
    ));
    assert!(!m(
        FlowFilter {
            destination_identity: vec![256],
            ..Default::default()
        },
        &f
    ));
    assert!(m(
        FlowFilter {
            destination_port: vec!["80".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(m(
        FlowFilter {
            source_port: vec!["40000".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(!m(
        FlowFilter {
            destination_port: vec!["443".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(FlowFilters::compile(
        &[FlowFilter {
            destination_port: vec!["http".into()],
            ..Default::default()
        }],
        &[]
    )
    .is_err());
    assert!(m(
        FlowFilter {
            protocol: vec!["TCP".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(!m(
        FlowFilter {
            protocol: vec!["udp".into(), "icmp".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(FlowFilters::compile(
        &[FlowFilter {
            protocol: vec!["http2".into()],
            ..Default::default()
        }],
        &[]
    )
    .is_err());
    let v = |x: Verdict| FlowFilter {
        verdict: vec![x as i32],
        ..Default::default()
    };
    assert!(m(v(Verdict::Forwarded), &f) && !m(v(Verdict::Forwarded), &d));
    assert!(m(v(Verdict::Dropped), &d));
    let dir = |x: TrafficDirection| FlowFilter {
        traffic_direction: vec![x as i32],
        ..Default::default()
    };
    assert!(m(dir(TrafficDirection::Egress), &f) && m(dir(TrafficDirection::Ingress), &d));
    for (p, want) in [
        ("kind-worker", true),
        ("kind-*", true),
        ("*worker", true),
        ("k*r", true),
        ("other", false),
    ] {
        assert_eq!(
            m(
                FlowFilter {
                    node_name: vec![p.into()],
                    ..Default::default()
                },
                &f
            ),
            want,
            "{p}"
        );
    }
    let flags = |syn: bool, ack: bool| FlowFilter {
        tcp_flags: vec![TcpFlags {
            syn,
            ack,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(m(flags(true, false), &f));
    assert!(!m(flags(true, true), &f));
    assert!(m(
        FlowFilter {
            reply: vec![false],
            ..Default::default()
        },
        &f
    ));
    assert!(!m(
        FlowFilter {
            reply: vec![true],
            ..Default::default()
        },
        &f
    ));
}

#[test]
fn event_types_and_drop_reasons_through_sub_types() {
    let (f, d) = (syn(), dropped());
    let et = |t: i32, sub: Option<i32>| FlowFilter {
        event_type: vec![EventTypeFilter {
            r#type: t,
            match_sub_type: sub.is_some(),
            sub_type: sub.unwrap_or(0),
        }],
        ..Default::default()
    };
    assert!(m(et(4, None), &f) && !m(et(4, None), &d));
    assert!(m(et(1, None), &d));
    assert!(m(et(1, Some(133)), &d));
    assert!(!m(et(1, Some(181)), &d));
    assert!(m(et(4, Some(5)), &f));
}

#[test]
fn services_by_namespace_and_name() {
    let mut ev = trace_event();
    ev.dst = Some(std::net::Ipv4Addr::new(10, 96, 0, 10));
    let f = to_flow(&ev, &store(), "n");
    assert!(m(
        FlowFilter {
            destination_service: vec!["prod/web".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(m(
        FlowFilter {
            destination_service: vec!["web".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(!m(
        FlowFilter {
            destination_service: vec!["default/".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(!m(
        FlowFilter {
            source_service: vec!["prod/".into()],
            ..Default::default()
        },
        &f
    ));
}

#[test]
fn fields_are_anded_filters_ored_and_blacklist_subtracted() {
    let (f, d) = (syn(), dropped());
    let and = FlowFilter {
        source_pod: vec!["default/".into()],
        verdict: vec![Verdict::Dropped as i32],
        ..Default::default()
    };
    assert!(!m(and.clone(), &f));
    assert!(m(and.clone(), &d));
    let fwd = FlowFilter {
        verdict: vec![Verdict::Forwarded as i32],
        ..Default::default()
    };
    let either = FlowFilters::compile(&[and.clone(), fwd.clone()], &[]).expect("compiles");
    assert!(either.matches(&f) && either.matches(&d));
    let minus = FlowFilters::compile(
        &[fwd.clone(), and],
        &[FlowFilter {
            destination_port: vec!["80".into()],
            ..Default::default()
        }],
    )
    .expect("compiles");
    assert!(!minus.matches(&f) && !minus.matches(&d));
    let only_black = FlowFilters::compile(&[], &[fwd]).expect("compiles");
    assert!(!only_black.matches(&f) && only_black.matches(&d));
    assert!(FlowFilters::default().matches(&f));
    // An empty filter matches everything; a field Ciliate never fills matches nothing.
    assert!(m(FlowFilter::default(), &f));
    assert!(!m(
        FlowFilter {
            http_method: vec!["GET".into()],
            ..Default::default()
        },
        &f
    ));
}
