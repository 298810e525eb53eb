//! Flow metrics under Hubble's names, rendered in the Prometheus text format.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

use crate::convert::{MESSAGE_TYPE_DROP, MESSAGE_TYPE_POLICY_VERDICT, MESSAGE_TYPE_TRACE};
use crate::dns_metrics::DnsMetrics;
use crate::filter::ports;
use crate::http_metrics::{HttpMetrics, HttpSample};
use crate::kafka_metrics::KafkaMetrics;
use crate::l7::MESSAGE_TYPE_ACCESS_LOG;
use crate::print::{drop_reason_name, protocol_name};
use crate::proto::flow::{layer4, Flow, LostEventSource, TrafficDirection, Verdict};

type Labels = Vec<(&'static str, String)>;

/// The `subtype` label of `hubble_flows_processed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Subtype {
    None,
    /// A trace's observation point (Hubble's enum value).
    Point(i32),
    /// An L7 flow's protocol (`HTTP`).
    L7(&'static str),
}

/// What one counter counts, in the flow's own numbers: recording a flow allocates nothing
/// once its counters exist; the names Hubble's labels show are made only when rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Flows {
        protocol: &'static str,
        kind: &'static str,
        subtype: Subtype,
        verdict: i32,
    },
    Drop {
        reason: i32,
        protocol: &'static str,
    },
    TcpFlag(&'static str),
    Policy {
        direction: i32,
        matched: &'static str,
        verdict: i32,
    },
    Port {
        protocol: &'static str,
        port: u32,
    },
    Lost(&'static str),
}

impl Key {
    /// The metric's name and labels.
    fn labels(self) -> (&'static str, Labels) {
        match self {
            Key::Flows {
                protocol,
                kind,
                subtype,
                verdict,
            } => (
                "hubble_flows_processed_total",
                vec![
                    ("protocol", protocol.to_owned()),
                    ("type", kind.to_owned()),
                    (
                        "subtype",
                        match subtype {
                            Subtype::None => String::new(),
                            Subtype::Point(p) => crate::print::observation_point_name_of(p),
                            Subtype::L7(p) => p.to_owned(),
                        },
                    ),
                    ("verdict", verdict_name(verdict)),
                ],
            ),
            Key::Drop { reason, protocol } => (
                "hubble_drop_total",
                vec![
                    ("reason", drop_reason_name(reason)),
                    ("protocol", protocol.to_owned()),
                ],
            ),
            Key::TcpFlag(flag) => (
                "hubble_tcp_flags_total",
                vec![("flag", flag.to_owned()), ("family", "IPv4".to_owned())],
            ),
            Key::Policy {
                direction,
                matched,
                verdict,
            } => (
                "hubble_policy_verdicts_total",
                vec![
                    (
                        "direction",
                        TrafficDirection::try_from(direction)
                            .map(|d| d.as_str_name().to_ascii_lowercase())
                            .unwrap_or_default(),
                    ),
                    ("match", matched.to_owned()),
                    ("action", verdict_name(verdict).to_ascii_lowercase()),
                ],
            ),
            Key::Port { protocol, port } => (
                "hubble_port_distribution_total",
                vec![
                    ("protocol", protocol.to_owned()),
                    ("port", port.to_string()),
                ],
            ),
            Key::Lost(source) => (
                "hubble_lost_events_total",
                vec![("source", source.to_owned())],
            ),
        }
    }
}

/// Hubble's `FlowProtocol`, the `protocol` label of `hubble_flows_processed_total`: the L7
/// protocol of access-log flows, the L4 protocol of datapath events.
fn flow_protocol(flow: &Flow, l7: Option<&'static str>) -> &'static str {
    match flow.event_type.as_ref().map(|e| e.r#type) {
        Some(MESSAGE_TYPE_ACCESS_LOG) => l7.unwrap_or("Unknown L7"),
        Some(MESSAGE_TYPE_DROP | MESSAGE_TYPE_TRACE | MESSAGE_TYPE_POLICY_VERDICT) => {
            match protocol_name(flow) {
                "" => "Unknown L4",
                p => p,
            }
        }
        _ => "Unknown flow",
    }
}

/// Counters of flows seen, by Hubble's metric names and labels.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<HashMap<Key, u64>>,
    http: Mutex<HttpMetrics>,
    dns: Mutex<DnsMetrics>,
    kafka: Mutex<KafkaMetrics>,
}

const HELP: [(&str, &str); 6] = [
    (
        "hubble_flows_processed_total",
        "Total number of flows processed",
    ),
    ("hubble_drop_total", "Number of drops"),
    ("hubble_tcp_flags_total", "TCP flag occurrences"),
    ("hubble_policy_verdicts_total", "Number of policy verdicts"),
    (
        "hubble_port_distribution_total",
        "Numbers of packets distributed by destination port",
    ),
    ("hubble_lost_events_total", "Number of lost events"),
];

fn verdict_name(v: i32) -> String {
    Verdict::try_from(v)
        .map(|v| v.as_str_name().to_owned())
        .unwrap_or_else(|_| v.to_string())
}

impl Metrics {
    fn counters(&self) -> MutexGuard<'_, HashMap<Key, u64>> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn http_metrics(&self) -> MutexGuard<'_, HttpMetrics> {
        self.http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dns_metrics(&self) -> MutexGuard<'_, DnsMetrics> {
        self.dns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn kafka_metrics(&self) -> MutexGuard<'_, KafkaMetrics> {
        self.kafka
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one flow.
    pub fn record(&self, flow: &Flow) {
        let event_type = flow.event_type.as_ref().map(|e| e.r#type);
        let http = crate::l7::http(flow);
        let dns = crate::l7::dns(flow);
        let kafka = crate::l7::kafka(flow);
        // Hubble's L7 protocol of a flow (the `subtype` of L7 flows, and `FlowProtocol`).
        let l7 = if http.is_some() {
            Some("HTTP")
        } else if dns.is_some() {
            Some("DNS")
        } else if kafka.is_some() {
            Some("Kafka")
        } else {
            None
        };
        let (kind, subtype) = match (event_type, l7) {
            (Some(MESSAGE_TYPE_TRACE), _) => {
                ("Trace", Subtype::Point(flow.trace_observation_point))
            }
            (Some(MESSAGE_TYPE_DROP), _) => ("Drop", Subtype::None),
            (Some(MESSAGE_TYPE_POLICY_VERDICT), _) => ("PolicyVerdict", Subtype::None),
            (Some(MESSAGE_TYPE_ACCESS_LOG), Some(p)) => ("L7", Subtype::L7(p)),
            (Some(MESSAGE_TYPE_ACCESS_LOG), None) => ("L7", Subtype::None),
            _ => ("Unknown", Subtype::None),
        };
        let protocol = l7.unwrap_or_else(|| protocol_name(flow));
        if let Some(h) = http {
            self.http_metrics().record(flow, h);
        }
        if let Some(d) = dns {
            self.dns_metrics().record(flow, d);
        }
        if let Some(k) = kafka {
            self.kafka_metrics().record(flow, k);
        }
        let mut keys: [Option<Key>; 8] = [None; 8];
        keys[0] = Some(Key::Flows {
            protocol: flow_protocol(flow, l7),
            kind,
            subtype,
            verdict: flow.verdict,
        });
        if flow.verdict == Verdict::Dropped as i32 {
            keys[1] = Some(Key::Drop {
                reason: flow.drop_reason_desc,
                protocol,
            });
        }
        if let Some(layer4::Protocol::Tcp(t)) = flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            if let Some(f) = &t.flags {
                for (i, (set, name)) in [
                    (f.syn && !f.ack, "SYN"),
                    (f.syn && f.ack, "SYN-ACK"),
                    (f.fin, "FIN"),
                    (f.rst, "RST"),
                ]
                .into_iter()
                .enumerate()
                {
                    if set {
                        keys[2 + i] = Some(Key::TcpFlag(name));
                    }
                }
            }
        }
        if event_type == Some(MESSAGE_TYPE_POLICY_VERDICT) {
            let matched = match flow.policy_match_type {
                1 => "l3-only",
                2 => "l3-l4",
                3 => "l4-only",
                4 => "all",
                _ => "none",
            };
            keys[6] = Some(Key::Policy {
                direction: flow.traffic_direction,
                matched,
                verdict: flow.verdict,
            });
        }
        if crate::convert::is_reply(flow) != Some(true)
            && flow.verdict == Verdict::Forwarded as i32
            && event_type == Some(MESSAGE_TYPE_TRACE)
        {
            if let Some((_, port)) = ports(flow) {
                keys[7] = Some(Key::Port { protocol, port });
            }
        }
        let mut c = self.counters();
        for key in keys.into_iter().flatten() {
            *c.entry(key).or_default() += 1;
        }
    }

    /// Counts an L7 HTTP flow of the proxy given by what the metrics read of it (`verdict`
    /// and the HTTP metrics' sample): what [`record`](Self::record) counts of that flow, without
    /// the flow. An HTTP record's flow carries no TCP flags, drop reason or policy match, and
    /// is not a trace.
    pub(crate) fn record_http(&self, verdict: i32, sample: &HttpSample<'_>) {
        self.http_metrics().record_parts(sample);
        let mut c = self.counters();
        *c.entry(Key::Flows {
            protocol: "HTTP",
            kind: "L7",
            subtype: Subtype::L7("HTTP"),
            verdict,
        })
        .or_default() += 1;
        if verdict == Verdict::Dropped as i32 {
            *c.entry(Key::Drop {
                reason: 0,
                protocol: "HTTP",
            })
            .or_default() += 1;
        }
    }

    /// Counts lost events.
    pub fn record_lost(&self, source: LostEventSource, n: u64) {
        let source = match source {
            LostEventSource::PerfEventRingBuffer => "perf_event_ring_buffer",
            LostEventSource::ObserverEventsQueue => "observer_events_queue",
            LostEventSource::HubbleRingBuffer => "hubble_ring_buffer",
            LostEventSource::UnknownLostEventSource => "unknown",
        };
        *self.counters().entry(Key::Lost(source)).or_default() += n;
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut c: BTreeMap<&'static str, BTreeMap<Labels, u64>> = BTreeMap::new();
        for (key, n) in self.counters().iter() {
            let (name, labels) = key.labels();
            *c.entry(name).or_default().entry(labels).or_default() += n;
        }
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in c.get(name).into_iter().flatten() {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        self.http_metrics().render(&mut out);
        self.dns_metrics().render(&mut out);
        self.kafka_metrics().render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{store, trace_event};
    use crate::convert::to_flow;
    use ciliate_model::monitor::{EventKind, L4};

    // What the counters rendered before they were keyed by the flow's numbers.
    const EXPECTED: &str = r#"# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{protocol="ICMPv4",type="Drop",subtype="",verdict="DROPPED"} 1
hubble_flows_processed_total{protocol="TCP",type="PolicyVerdict",subtype="",verdict="DROPPED"} 1
hubble_flows_processed_total{protocol="TCP",type="PolicyVerdict",subtype="",verdict="FORWARDED"} 1
hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="from-endpoint",verdict="FORWARDED"} 2
hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="to-endpoint",verdict="FORWARDED"} 1
hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="to-stack",verdict="FORWARDED"} 1
hubble_flows_processed_total{protocol="UDP",type="Drop",subtype="",verdict="DROPPED"} 1
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{reason="250",protocol="ICMPv4"} 1
hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"} 1
hubble_drop_total{reason="POLICY_DENIED",protocol="UDP"} 1
# HELP hubble_tcp_flags_total TCP flag occurrences
# TYPE hubble_tcp_flags_total counter
hubble_tcp_flags_total{flag="FIN",family="IPv4"} 1
hubble_tcp_flags_total{flag="RST",family="IPv4"} 1
hubble_tcp_flags_total{flag="SYN",family="IPv4"} 4
hubble_tcp_flags_total{flag="SYN-ACK",family="IPv4"} 1
# HELP hubble_policy_verdicts_total Number of policy verdicts
# TYPE hubble_policy_verdicts_total counter
hubble_policy_verdicts_total{direction="egress",match="l3-l4",action="forwarded"} 1
hubble_policy_verdicts_total{direction="ingress",match="none",action="dropped"} 1
# HELP hubble_port_distribution_total Numbers of packets distributed by destination port
# TYPE hubble_port_distribution_total counter
hubble_port_distribution_total{protocol="TCP",port="80"} 2
hubble_port_distribution_total{protocol="TCP",port="8080"} 1
# HELP hubble_lost_events_total Number of lost events
# TYPE hubble_lost_events_total counter
hubble_lost_events_total{source="observer_events_queue"} 7
hubble_lost_events_total{source="perf_event_ring_buffer"} 1
"#;

    /// Every counter family, each label mapping, and sums across flows.
    #[test]
    fn renders_every_family_with_hubbles_labels() {
        let s = store();
        let m = Metrics::default();
        let mut events = Vec::new();
        let syn = trace_event();
        events.push(syn.clone());
        events.push(syn.clone());
        let mut to_ep = syn.clone();
        to_ep.code = 0;
        to_ep.ct_state = "reply".into();
        to_ep.l4 = Some(L4::Tcp {
            sport: 80,
            dport: 40000,
            flags: vec!["SYN".into(), "ACK".into()],
        });
        events.push(to_ep);
        let mut fin = syn.clone();
        fin.code = 3;
        fin.ct_state = "established".into();
        fin.l4 = Some(L4::Tcp {
            sport: 40000,
            dport: 8080,
            flags: vec!["FIN".into(), "RST".into()],
        });
        events.push(fin);
        let mut drop = syn.clone();
        drop.kind = EventKind::Drop;
        drop.code = 133;
        drop.l4 = Some(L4::Udp {
            sport: 5353,
            dport: 53,
        });
        events.push(drop);
        let mut odd = syn.clone();
        odd.kind = EventKind::Drop;
        odd.code = 250;
        odd.l4 = Some(L4::Icmp { r#type: 8, code: 0 });
        events.push(odd);
        for (code, reason) in [(0, "egress allowed (L3-L4)"), (133, "ingress denied")] {
            let mut v = syn.clone();
            v.kind = EventKind::PolicyVerdict;
            v.code = code;
            v.reason = reason.into();
            events.push(v);
        }
        for ev in &events {
            m.record(&to_flow(ev, &s, "n1"));
        }
        m.record_lost(LostEventSource::ObserverEventsQueue, 5);
        m.record_lost(LostEventSource::ObserverEventsQueue, 2);
        m.record_lost(LostEventSource::PerfEventRingBuffer, 1);
        assert_eq!(m.render(), EXPECTED);
    }
}

#[cfg(test)]
pub(crate) mod http_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::convert::tests::store;
    use crate::l7::http_to_flow;
    use crate::l7::tests::{request, response};
    use ciliate_model::l7::{HttpRecord, L7Verdict};

    /// The samples of an exposition: `name{labels}` → value; and each family's TYPE.
    pub(crate) fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
        let (mut samples, mut types) = (BTreeMap::new(), BTreeMap::new());
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("name and type");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') {
                let (series, value) = line.rsplit_once(' ').expect("series and value");
                let v = if value == "+Inf" {
                    f64::INFINITY
                } else {
                    value.parse().expect("a number")
                };
                assert!(
                    samples.insert(series.to_owned(), v).is_none(),
                    "{series} twice"
                );
            }
        }
        (samples, types)
    }

    #[test]
    fn http_requests_responses_and_durations_under_hubbles_names() {
        let s = store();
        let m = Metrics::default();
        let ingress = |r: HttpRecord| HttpRecord { egress: false, ..r };
        let mut records = Vec::new();
        // 3 GETs by the client (egress), answered 200 after 5.9 ms, 2 ms and 30 ms.
        for latency_ms in [5.9, 2.0, 30.0] {
            records.push(request());
            records.push(HttpRecord {
                latency_ns: (latency_ms * 1e6) as u64,
                ..response()
            });
        }
        // A POST refused at the server's ingress with 403, and an HTTP/2 GET that failed 503.
        let post = HttpRecord {
            method: "POST".into(),
            verdict: L7Verdict::Dropped,
            ..ingress(request())
        };
        records.push(post.clone());
        records.push(HttpRecord {
            code: 403,
            latency_ns: 100_000,
            ..HttpRecord {
                record_type: ciliate_model::l7::L7RecordType::Response,
                ..post
            }
        });
        records.push(HttpRecord {
            protocol: "HTTP/2".into(),
            code: 503,
            latency_ns: 2_000_000_000,
            verdict: L7Verdict::Error,
            ..ingress(response())
        });
        for r in &records {
            m.record(&http_to_flow(r, &s, "n1"));
        }
        let (samples, types) = parse(&m.render());
        assert_eq!(types["hubble_http_requests_total"], "counter");
        assert_eq!(types["hubble_http_responses_total"], "counter");
        assert_eq!(types["hubble_http_request_duration_seconds"], "histogram");
        let get = |k: &str| samples.get(k).copied().unwrap_or_else(|| panic!("no {k}"));
        assert_eq!(
            get(
                r#"hubble_http_requests_total{method="GET",protocol="HTTP/1.1",reporter="client"}"#
            ),
            3.0
        );
        assert_eq!(
            get(
                r#"hubble_http_requests_total{method="POST",protocol="HTTP/1.1",reporter="server"}"#
            ),
            1.0
        );
        let requests = samples
            .keys()
            .filter(|k| k.starts_with("hubble_http_requests_total"))
            .count();
        assert_eq!(requests, 2);
        assert_eq!(
            get(
                r#"hubble_http_responses_total{method="GET",protocol="HTTP/1.1",reporter="client",status="200"}"#
            ),
            3.0
        );
        assert_eq!(
            get(
                r#"hubble_http_responses_total{method="POST",protocol="HTTP/1.1",reporter="server",status="403"}"#
            ),
            1.0
        );
        assert_eq!(
            get(
                r#"hubble_http_responses_total{method="GET",protocol="HTTP/2",reporter="server",status="503"}"#
            ),
            1.0
        );
        // The client's GETs: 2 ms ≤ 0.005 < 5.9 ms ≤ 0.01 < 30 ms ≤ 0.05.
        let bucket = |labels: &str, le: &str| {
            get(&format!(
                "hubble_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}"
            ))
        };
        let client = r#"method="GET",reporter="client""#;
        for (le, n) in [
            ("0.005", 1.0),
            ("0.01", 2.0),
            ("0.025", 2.0),
            ("0.05", 3.0),
            ("0.1", 3.0),
            ("1", 3.0),
            ("10", 3.0),
            ("+Inf", 3.0),
        ] {
            assert_eq!(bucket(client, le), n, "le {le}");
        }
        assert_eq!(
            get(&format!(
                "hubble_http_request_duration_seconds_count{{{client}}}"
            )),
            3.0
        );
        let sum = get(&format!(
            "hubble_http_request_duration_seconds_sum{{{client}}}"
        ));
        assert!((sum - 0.0379).abs() < 1e-9, "{sum}");
        // The 2 s failure is past the 1 s bucket, within 2.5.
        let server_get = r#"method="GET",reporter="server""#;
        assert_eq!(bucket(server_get, "1"), 0.0);
        assert_eq!(bucket(server_get, "2.5"), 1.0);
        // Every L7 flow counted once, by verdict; the L7 drops as Hubble's drop metric has them.
        assert_eq!(
            get(
                r#"hubble_flows_processed_total{protocol="HTTP",type="L7",subtype="HTTP",verdict="FORWARDED"}"#
            ),
            6.0
        );
        assert_eq!(
            get(
                r#"hubble_flows_processed_total{protocol="HTTP",type="L7",subtype="HTTP",verdict="DROPPED"}"#
            ),
            2.0
        );
        assert_eq!(
            get(
                r#"hubble_flows_processed_total{protocol="HTTP",type="L7",subtype="HTTP",verdict="ERROR"}"#
            ),
            1.0
        );
        assert_eq!(
            get(r#"hubble_drop_total{reason="DROP_REASON_UNKNOWN",protocol="HTTP"}"#),
            2.0
        );
        // L7 flows carry no TCP flags and are no trace: nothing else counted.
        assert!(!samples
            .keys()
            .any(|k| k.starts_with("hubble_tcp_flags_total")
                || k.starts_with("hubble_port_distribution_total")));
    }

    #[test]
    fn without_http_flows_no_http_family_is_exposed() {
        let m = Metrics::default();
        m.record(&crate::convert::to_flow(
            &crate::convert::tests::trace_event(),
            &store(),
            "n1",
        ));
        assert!(!m.render().contains("hubble_http_"));
    }

    #[test]
    fn methods_a_client_makes_up_are_bounded() {
        let s = store();
        let m = Metrics::default();
        for i in 0..200 {
            m.record(&http_to_flow(
                &HttpRecord {
                    method: format!("M{i}"),
                    ..request()
                },
                &s,
                "n1",
            ));
        }
        let (samples, _) = parse(&m.render());
        let series: Vec<&String> = samples
            .keys()
            .filter(|k| k.starts_with("hubble_http_requests_total"))
            .collect();
        assert_eq!(series.len(), 65);
        assert_eq!(
            samples[r#"hubble_http_requests_total{method="other",protocol="HTTP/1.1",reporter="client"}"#],
            136.0
        );
    }
}
