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
        ("/cli", true),
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
    // Without a namespace the pod is looked for in `default` (Hubble's ParseNamespaceName).
    assert!(!m(
        FlowFilter {
            destination_pod: vec!["web-".into()],
            ..Default::default()
        },
        &f
    ));
    let empty = FlowFilters::compile(
        &[FlowFilter {
            source_pod: vec![String::new()],
            ..Default::default()
        }],
        &[],
    )
    .expect_err("an empty pod name is refused");
    assert_eq!(empty.field, "source_pod");
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
    // As Hubble: a name without a namespace is in `default`; `/web` is any namespace.
    assert!(!m(
        FlowFilter {
            destination_service: vec!["web".into()],
            ..Default::default()
        },
        &f
    ));
    assert!(m(
        FlowFilter {
            destination_service: vec!["/web".into()],
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

mod http {
    use super::*;
    use crate::l7::tests::{request, response};
    use crate::l7::{http_to_flow, MESSAGE_TYPE_ACCESS_LOG};
    use crate::proto::flow::HttpHeader;
    use ciliate_model::l7::{HttpRecord, L7Verdict};

    fn flow(r: &HttpRecord) -> Flow {
        http_to_flow(r, &store(), "kind-worker")
    }

    fn with_code(code: u16) -> Flow {
        flow(&HttpRecord { code, ..response() })
    }

    fn refused(f: FlowFilter) -> FilterError {
        FlowFilters::compile(&[f], &[]).expect_err("refused")
    }

    fn l7_type() -> EventTypeFilter {
        EventTypeFilter {
            r#type: MESSAGE_TYPE_ACCESS_LOG,
            match_sub_type: false,
            sub_type: 0,
        }
    }

    #[test]
    fn status_codes_full_and_by_prefix() {
        let status = |v: &[&str]| FlowFilter {
            http_status_code: v.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        for (codes, code, want) in [
            (&["404"][..], 404, true),
            (&["404"][..], 403, false),
            (&["4+"][..], 403, true),
            (&["4+"][..], 503, false),
            (&["40+"][..], 404, true),
            (&["40+"][..], 410, false),
            (&["5+", "200"][..], 200, true),
            (&["5+", "200"][..], 503, true),
            (&["5+", "200"][..], 302, false),
            (&["1+"][..], 101, true),
        ] {
            assert_eq!(m(status(codes), &with_code(code)), want, "{codes:?} {code}");
        }
        // A request has no status: no status filter matches it; nor a packet flow.
        assert!(!m(status(&["2+"]), &flow(&request())));
        assert!(!m(status(&["2+"]), &syn()));
        for bad in ["4", "600", "0+", "4++", "404+", "2xx", "", "+", "40 "] {
            let e = refused(status(&[bad]));
            assert_eq!(e.field, "http_status_code", "{bad:?}");
        }
    }

    #[test]
    fn methods_case_insensitively() {
        let method = |v: &str| FlowFilter {
            http_method: vec![v.into()],
            ..Default::default()
        };
        let get = flow(&request());
        assert!(m(method("GET"), &get));
        assert!(m(method("get"), &get));
        assert!(!m(method("POST"), &get));
        assert!(
            m(method("GET"), &flow(&response())),
            "responses carry the method"
        );
        assert!(!m(method("GET"), &syn()));
        let unnamed = flow(&HttpRecord {
            method: String::new(),
            ..request()
        });
        assert!(!m(method(""), &unnamed));
    }

    #[test]
    fn paths_and_urls_by_unanchored_regex() {
        let path = |v: &str| FlowFilter {
            http_path: vec![v.into()],
            ..Default::default()
        };
        let url = |v: &str| FlowFilter {
            http_url: vec![v.into()],
            ..Default::default()
        };
        let get = flow(&request()); // http://web/api?x=1
        assert!(
            m(path("^/api$"), &get),
            "the path leaves out host and query"
        );
        assert!(m(path("pi"), &get));
        assert!(!m(path("x=1"), &get));
        assert!(!m(path("web"), &get));
        assert!(m(url("x=1"), &get));
        assert!(m(url("^http://web/"), &get));
        assert!(!m(url("^/api"), &get));
        assert!(!m(path(".*"), &syn()));
        assert!(!m(url(".*"), &syn()));
        let escaped = flow(&HttpRecord {
            url: "/a%20b/c".into(),
            ..request()
        });
        assert!(m(path("^/a b/c$"), &escaped), "the path is percent-decoded");
        let broken = flow(&HttpRecord {
            url: "/a%zz".into(),
            ..request()
        });
        assert!(
            !m(path(".*"), &broken),
            "a URL Go cannot parse matches no path"
        );
        assert!(m(url("zz"), &broken));
        for (field, f) in [("http_path", path("(")), ("http_url", url("[a-"))] {
            let e = refused(f);
            assert_eq!(e.field, field);
            assert!(e.reason.contains("regular expression"), "{e}");
        }
    }

    #[test]
    fn request_paths_as_go_parses_request_uris() {
        for (url, want) in [
            ("http://web/api?x=1", Some("/api")),
            ("http://web", Some("")),
            ("https://web:8443/a/b", Some("/a/b")),
            ("/only/path?q", Some("/only/path")),
            ("/p#frag", Some("/p#frag")),
            ("web/api", None),
            ("", None),
            ("/%41", Some("/A")),
            ("/%4", None),
        ] {
            assert_eq!(crate::filter::request_path(url).as_deref(), want, "{url:?}");
        }
    }

    #[test]
    fn headers_by_exact_key_and_value() {
        let header = |k: &str, v: &str| FlowFilter {
            http_header: vec![HttpHeader {
                key: k.into(),
                value: v.into(),
            }],
            ..Default::default()
        };
        let get = flow(&request());
        assert!(m(header("X-Request-Id", "abc"), &get));
        assert!(m(header("X-Forwarded-For", "b"), &get));
        assert!(!m(header("X-Request-Id", "abd"), &get));
        assert!(
            !m(header("x-request-id", "abc"), &get),
            "names as Hubble shows them"
        );
        assert!(!m(header("X-Request-Id", ""), &get));
        assert!(!m(header("X-Request-Id", "abc"), &syn()));
    }

    #[test]
    fn l7_protocols_event_type_and_verdict() {
        let get = flow(&request());
        let denied = flow(&HttpRecord {
            verdict: L7Verdict::Dropped,
            ..request()
        });
        let proto = |p: &str| FlowFilter {
            protocol: vec![p.into()],
            ..Default::default()
        };
        assert!(m(proto("http"), &get));
        assert!(m(proto("HTTP"), &get));
        assert!(!m(proto("http"), &syn()));
        assert!(
            m(proto("tcp"), &get),
            "an L7 flow's L4 is TCP, as in Hubble"
        );
        assert!(!m(proto("dns"), &get));
        assert!(!m(proto("kafka"), &get));
        assert_eq!(refused(proto("gopher")).field, "protocol");
        let l7 = FlowFilter {
            event_type: vec![l7_type()],
            ..Default::default()
        };
        assert!(m(l7.clone(), &get));
        assert!(!m(l7, &syn()));
        let dropped_l7 = FlowFilter {
            event_type: vec![l7_type()],
            verdict: vec![Verdict::Dropped as i32],
            ..Default::default()
        };
        assert!(m(dropped_l7.clone(), &denied));
        assert!(!m(dropped_l7.clone(), &get));
        assert!(!m(dropped_l7, &dropped()));
    }

    #[test]
    fn http_fields_with_other_event_types_are_refused_as_hubble_refuses_them() {
        let trace = EventTypeFilter {
            r#type: 4,
            match_sub_type: false,
            sub_type: 0,
        };
        let fields: [(&str, FlowFilter); 5] = [
            (
                "http_status_code",
                FlowFilter {
                    http_status_code: vec!["200".into()],
                    ..Default::default()
                },
            ),
            (
                "http_method",
                FlowFilter {
                    http_method: vec!["GET".into()],
                    ..Default::default()
                },
            ),
            (
                "http_path",
                FlowFilter {
                    http_path: vec!["/".into()],
                    ..Default::default()
                },
            ),
            (
                "http_url",
                FlowFilter {
                    http_url: vec!["/".into()],
                    ..Default::default()
                },
            ),
            (
                "http_header",
                FlowFilter {
                    http_header: vec![HttpHeader::default()],
                    ..Default::default()
                },
            ),
        ];
        for (field, f) in fields {
            let only_trace = FlowFilter {
                event_type: vec![trace],
                ..f.clone()
            };
            assert_eq!(refused(only_trace).field, field);
            let with_l7 = FlowFilter {
                event_type: vec![trace, l7_type()],
                ..f
            };
            assert!(FlowFilters::compile(&[with_l7], &[]).is_ok(), "{field}");
        }
    }

    #[test]
    fn combinations_and_with_blacklists() {
        let get = flow(&request());
        let ok = flow(&response());
        let not_found = with_code(404);
        let post = flow(&HttpRecord {
            method: "POST".into(),
            ..request()
        });
        // GET requests to /api from the client pod.
        let f = FlowFilter {
            source_pod: vec!["default/client".into()],
            http_method: vec!["GET".into()],
            http_path: vec!["^/api".into()],
            event_type: vec![l7_type()],
            ..Default::default()
        };
        assert!(m(f.clone(), &get));
        assert!(!m(f.clone(), &post));
        assert!(!m(f, &ok), "a response's source is the server");
        // Every L7 flow but the 4xx responses.
        let all = FlowFilters::compile(
            &[FlowFilter {
                event_type: vec![l7_type()],
                ..Default::default()
            }],
            &[FlowFilter {
                http_status_code: vec!["4+".into()],
                ..Default::default()
            }],
        )
        .expect("compiles");
        assert!(all.matches(&get));
        assert!(all.matches(&ok));
        assert!(!all.matches(&not_found));
        assert!(!all.matches(&syn()));
        // Whitelist alternatives: POSTs, or responses of 404.
        let either = FlowFilters::compile(
            &[
                FlowFilter {
                    http_method: vec!["POST".into()],
                    ..Default::default()
                },
                FlowFilter {
                    http_status_code: vec!["404".into()],
                    ..Default::default()
                },
            ],
            &[],
        )
        .expect("compiles");
        let hits: Vec<bool> = [&get, &post, &ok, &not_found]
            .iter()
            .map(|f| either.matches(f))
            .collect();
        assert_eq!(hits, vec![false, true, false, true]);
    }
}

mod dns_and_kafka {
    use super::*;
    use crate::dns::dns_to_flow;
    use crate::dns::tests::{answer, query};
    use crate::kafka::kafka_to_flow;
    use crate::kafka::tests::produce;
    use crate::l7::http_to_flow;
    use crate::l7::tests::request;

    fn proto(p: &str) -> FlowFilter {
        FlowFilter {
            protocol: vec![p.into()],
            ..Default::default()
        }
    }

    fn query_re(res: &[&str]) -> FlowFilter {
        FlowFilter {
            dns_query: res.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn protocols_pick_each_l7_record() {
        let s = store();
        let (q, a) = (
            dns_to_flow(&query(), &s, "n"),
            dns_to_flow(&answer(), &s, "n"),
        );
        let k = kafka_to_flow(&produce(), &s, "n");
        let h = http_to_flow(&request(), &s, "n");
        for (p, want) in [
            ("dns", [true, true, false, false, false]),
            ("DNS", [true, true, false, false, false]),
            ("kafka", [false, false, true, false, false]),
            ("http", [false, false, false, true, false]),
            // A DNS flow's L4 is UDP here, a Kafka flow's TCP, as Hubble's L4 mask sees them.
            ("udp", [true, true, false, false, false]),
            ("tcp", [false, false, true, true, true]),
        ] {
            let got: Vec<bool> = [&q, &a, &k, &h, &syn()]
                .iter()
                .map(|f| m(proto(p), f))
                .collect();
            assert_eq!(got, want, "--protocol {p}");
        }
    }

    #[test]
    fn dns_queries_by_unanchored_regex_and_only_on_dns_flows() {
        let s = store();
        let (q, a) = (
            dns_to_flow(&query(), &s, "n"),
            dns_to_flow(&answer(), &s, "n"),
        );
        let other = dns_to_flow(
            &ciliate_model::l7::DnsRecord {
                query: "db.internal.".into(),
                ..query()
            },
            &s,
            "n",
        );
        let h = http_to_flow(&request(), &s, "n");
        assert!(m(query_re(&["example"]), &q));
        assert!(m(query_re(&["example"]), &a));
        assert!(m(query_re(&[r"^api\.example\.com\.$"]), &q));
        assert!(!m(query_re(&[r"^example\.com\.$"]), &q));
        assert!(!m(query_re(&["example"]), &other));
        assert!(
            m(query_re(&["nothing", "internal"]), &other),
            "values are ORed"
        );
        assert!(!m(query_re(&[".*"]), &h), "flows without DNS never match");
        assert!(!m(query_re(&[".*"]), &syn()));
        let e = FlowFilters::compile(&[query_re(&["(unclosed"])], &[]).expect_err("refused");
        assert_eq!(e.field, "dns_query");
        // With the protocol and the verdict: AND across fields.
        let f = FlowFilter {
            dns_query: vec!["example".into()],
            protocol: vec!["dns".into()],
            verdict: vec![Verdict::Forwarded as i32],
            reply: vec![true],
            ..Default::default()
        };
        assert!(m(f.clone(), &a));
        assert!(!m(f, &q));
    }
}

/// The FlowFilter fields of current Hubble beyond the classic ones, each with its semantics.
mod hubble_fields {
    use super::*;
    use crate::proto::flow::{
        flow_filter::Experimental, DropReason, IpTraceId, TraceContext, TraceParent, Workload,
    };

    fn refused(f: FlowFilter) -> FilterError {
        FlowFilters::compile(&[f], &[]).expect_err("refused")
    }

    fn finished(mut f: Flow) -> Flow {
        crate::convert::finish_flow(&mut f, "default");
        f
    }

    #[test]
    fn drop_reason_desc_matches_only_drops_with_that_reason() {
        let (f, d) = (syn(), dropped());
        let r = |x: DropReason| FlowFilter {
            drop_reason_desc: vec![x as i32],
            ..Default::default()
        };
        assert!(m(r(DropReason::PolicyDenied), &d));
        assert!(!m(r(DropReason::CtMapInsertionFailed), &d));
        assert!(!m(r(DropReason::PolicyDenied), &f));
        // The unknown reason matches no forwarded flow either: only drops have a reason.
        assert!(!m(r(DropReason::Unknown), &f));
    }

    #[test]
    fn interface_by_index_name_or_both() {
        let mut f = syn();
        f.interface = Some(NetworkInterface {
            index: 7,
            name: "lxc1".into(),
        });
        let i = |index: u32, name: &str| FlowFilter {
            interface: vec![NetworkInterface {
                index,
                name: name.into(),
            }],
            ..Default::default()
        };
        assert!(m(i(7, ""), &f) && m(i(0, "lxc1"), &f) && m(i(7, "lxc1"), &f));
        assert!(!m(i(8, ""), &f) && !m(i(7, "eth0"), &f));
        f.interface = None;
        assert!(!m(i(0, ""), &f));
    }

    #[test]
    fn node_labels_by_selector() {
        let mut f = syn();
        f.node_labels = vec!["kubernetes.io/hostname=kind-worker".into(), "zone=a".into()];
        let n = |sel: &str| FlowFilter {
            node_labels: vec![sel.into()],
            ..Default::default()
        };
        assert!(m(n("zone=a"), &f) && m(n("zone in (a,b)"), &f));
        assert!(!m(n("zone=b"), &f) && m(n("!gpu"), &f));
        assert_eq!(refused(n("zone in a")).field, "node_labels");
    }

    #[test]
    fn cluster_names_exactly_and_never_empty() {
        let f = finished(syn());
        let c = |src: &str, dst: &str| FlowFilter {
            source_cluster_name: (!src.is_empty()).then(|| src.into()).into_iter().collect(),
            destination_cluster_name: (!dst.is_empty()).then(|| dst.into()).into_iter().collect(),
            ..Default::default()
        };
        assert!(m(c("default", ""), &f) && m(c("", "default"), &f));
        assert!(!m(c("other", ""), &f) && !m(c("defaul", ""), &f));
        let e = refused(FlowFilter {
            destination_cluster_name: vec![String::new()],
            ..Default::default()
        });
        assert_eq!(e.field, "destination_cluster_name");
    }

    #[test]
    fn encrypted_true_or_false() {
        let mut f = syn();
        let e = |x: bool| FlowFilter {
            encrypted: vec![x],
            ..Default::default()
        };
        assert!(m(e(false), &f) && !m(e(true), &f));
        if let Some(ip) = f.ip.as_mut() {
            ip.encrypted = true;
        }
        assert!(m(e(true), &f) && !m(e(false), &f));
    }

    #[test]
    fn source_ip_xlated_addresses_and_cidrs() {
        let mut f = syn();
        let x = |v: &str| FlowFilter {
            source_ip_xlated: vec![v.into()],
            ..Default::default()
        };
        // Not translated: no address to match.
        assert!(!m(x("10.200.0.2"), &f));
        if let Some(ip) = f.ip.as_mut() {
            ip.source_xlated = "192.168.1.5".into();
        }
        assert!(m(x("192.168.1.5"), &f) && m(x("192.168.0.0/16"), &f));
        assert!(!m(x("10.200.0.2"), &f));
        assert_eq!(refused(x("192.168.1.500")).field, "source_ip_xlated");
        assert_eq!(refused(x("192.168.1.0/33")).field, "source_ip_xlated");
    }

    #[test]
    fn ip_trace_id_and_trace_id() {
        let mut f = syn();
        let ip = |id: u64| FlowFilter {
            ip_trace_id: vec![id],
            ..Default::default()
        };
        let tr = |id: &str| FlowFilter {
            trace_id: vec![id.into()],
            ..Default::default()
        };
        assert!(!m(ip(42), &f) && !m(tr("4bf92f3577b34da6a3ce929d0e0e4736"), &f));
        f.ip_trace_id = Some(IpTraceId {
            trace_id: 42,
            ip_option_type: 136,
        });
        f.trace_context = Some(TraceContext {
            parent: Some(TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            }),
        });
        assert!(m(ip(42), &f) && !m(ip(43), &f));
        assert!(m(tr("4bf92f3577b34da6a3ce929d0e0e4736"), &f) && !m(tr("00"), &f));
    }

    #[test]
    fn workloads_by_name_and_or_kind() {
        let mut f = syn();
        let w = |name: &str, kind: &str| FlowFilter {
            source_workload: vec![Workload {
                name: name.into(),
                kind: kind.into(),
            }],
            ..Default::default()
        };
        assert!(!m(w("client", ""), &f));
        if let Some(ep) = f.source.as_mut() {
            ep.workloads = vec![Workload {
                name: "client".into(),
                kind: "Deployment".into(),
            }];
        }
        assert!(m(w("client", ""), &f) && m(w("", "Deployment"), &f));
        assert!(m(w("client", "Deployment"), &f) && !m(w("client", "StatefulSet"), &f));
        assert!(!m(
            FlowFilter {
                destination_workload: vec![Workload {
                    name: "client".into(),
                    kind: String::new(),
                }],
                ..Default::default()
            },
            &f
        ));
    }

    #[test]
    fn fqdns_by_hubbles_patterns() {
        let mut f = syn();
        f.destination_names = vec!["api.example.com".into()];
        let q = |p: &str| FlowFilter {
            destination_fqdn: vec![p.into()],
            ..Default::default()
        };
        assert!(m(q("api.example.com"), &f) && m(q("API.example.com."), &f));
        assert!(m(q("*.example.com"), &f) && !m(q("example.com"), &f));
        assert!(!m(
            FlowFilter {
                source_fqdn: vec!["api.example.com".into()],
                ..Default::default()
            },
            &f
        ));
        assert_eq!(refused(q("a b")).field, "destination_fqdn");
        assert_eq!(refused(q("")).field, "destination_fqdn");
    }

    #[test]
    fn node_names_carry_the_cluster() {
        let f = syn();
        assert_eq!(f.node_name, "kind-worker");
        let mut qualified = f.clone();
        qualified.node_name = "default/kind-worker".into();
        let n = |p: &str| FlowFilter {
            node_name: vec![p.into()],
            ..Default::default()
        };
        for flow in [&f, &qualified] {
            assert!(m(n("default/kind-worker"), flow) && m(n("kind-worker"), flow));
            assert!(m(n("default/"), flow) && m(n("default/kind-*"), flow));
            assert!(!m(n("other/kind-worker"), flow) && !m(n("kind"), flow));
        }
        assert_eq!(refused(n("a/b/c")).field, "node_name");
        assert_eq!(refused(n("")).field, "node_name");
    }

    #[test]
    fn event_type_zero_is_any_type() {
        let (f, d) = (syn(), dropped());
        let any = FlowFilter {
            event_type: vec![EventTypeFilter {
                r#type: 0,
                match_sub_type: false,
                sub_type: 0,
            }],
            ..Default::default()
        };
        assert!(m(any.clone(), &f) && m(any, &d));
        let any_133 = FlowFilter {
            event_type: vec![EventTypeFilter {
                r#type: 0,
                match_sub_type: true,
                sub_type: 133,
            }],
            ..Default::default()
        };
        assert!(m(any_133.clone(), &d) && !m(any_133, &f));
    }

    #[test]
    fn icmp_is_either_version_and_vrrp_igmp_are_known() {
        let f = syn();
        let p = |x: &str| FlowFilter {
            protocol: vec![x.into()],
            ..Default::default()
        };
        assert!(!m(p("vrrp"), &f) && !m(p("igmp"), &f));
        let mut ping6 = syn();
        ping6.l4 = Some(crate::proto::flow::Layer4 {
            protocol: Some(layer4::Protocol::IcmPv6(Default::default())),
        });
        assert!(m(p("icmp"), &ping6) && m(p("icmpv6"), &ping6) && !m(p("icmpv4"), &ping6));
    }

    #[test]
    fn reply_unknown_matches_only_on_drops() {
        let mut f = syn();
        f.is_reply = None;
        let r = |x: bool| FlowFilter {
            reply: vec![x],
            ..Default::default()
        };
        assert!(!m(r(false), &f) && !m(r(true), &f));
        let mut d = dropped();
        d.is_reply = None;
        assert!(m(r(false), &d) && !m(r(true), &d));
    }

    #[test]
    fn cel_expressions_are_refused_by_name() {
        let e = refused(FlowFilter {
            experimental: Some(Experimental {
                cel_expression: vec!["_flow.verdict == 1".into()],
            }),
            ..Default::default()
        });
        assert_eq!(e.field, "experimental.cel_expression");
        assert!(e.to_string().contains("not supported"), "{e}");
        // An empty experimental message asks for nothing.
        assert!(m(
            FlowFilter {
                experimental: Some(Experimental::default()),
                ..Default::default()
            },
            &syn()
        ));
    }

    #[test]
    fn invalid_regexes_name_their_field() {
        let e = refused(FlowFilter {
            dns_query: vec!["(".into()],
            ..Default::default()
        });
        assert_eq!(e.field, "dns_query");
        assert!(e.to_string().contains("regular expression"), "{e}");
    }
}
