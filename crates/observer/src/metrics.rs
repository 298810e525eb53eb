//! Flow metrics under Hubble's names, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::convert::{MESSAGE_TYPE_DROP, MESSAGE_TYPE_POLICY_VERDICT, MESSAGE_TYPE_TRACE};
use crate::filter::ports;
use crate::print::{drop_reason_name, protocol_name};
use crate::proto::flow::{layer4, Flow, LostEventSource, TrafficDirection, Verdict};

type Labels = Vec<(&'static str, String)>;

/// Counters of flows seen, by Hubble's metric names and labels.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<&'static str, BTreeMap<Labels, u64>>>,
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
    fn add(&self, name: &'static str, labels: Labels, n: u64) {
        let mut c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *c.entry(name).or_default().entry(labels).or_default() += n;
    }

    /// Counts one flow.
    pub fn record(&self, flow: &Flow) {
        let (kind, subtype) = match flow.event_type.as_ref().map(|e| e.r#type) {
            Some(MESSAGE_TYPE_TRACE) => ("Trace", crate::print::observation_point_name(flow)),
            Some(MESSAGE_TYPE_DROP) => ("Drop", String::new()),
            Some(MESSAGE_TYPE_POLICY_VERDICT) => ("PolicyVerdict", String::new()),
            _ => ("Unknown", String::new()),
        };
        let verdict = verdict_name(flow.verdict);
        self.add(
            "hubble_flows_processed_total",
            vec![
                ("type", kind.to_owned()),
                ("subtype", subtype),
                ("verdict", verdict.clone()),
            ],
            1,
        );
        let protocol = protocol_name(flow).to_owned();
        if flow.verdict == Verdict::Dropped as i32 {
            self.add(
                "hubble_drop_total",
                vec![
                    ("reason", drop_reason_name(flow.drop_reason_desc)),
                    ("protocol", protocol.clone()),
                ],
                1,
            );
        }
        if let Some(layer4::Protocol::Tcp(t)) = flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            if let Some(f) = &t.flags {
                for (set, name) in [
                    (f.syn && !f.ack, "SYN"),
                    (f.syn && f.ack, "SYN-ACK"),
                    (f.fin, "FIN"),
                    (f.rst, "RST"),
                ] {
                    if set {
                        self.add(
                            "hubble_tcp_flags_total",
                            vec![("flag", name.to_owned()), ("family", "IPv4".to_owned())],
                            1,
                        );
                    }
                }
            }
        }
        if flow.event_type.as_ref().map(|e| e.r#type) == Some(MESSAGE_TYPE_POLICY_VERDICT) {
            let direction = TrafficDirection::try_from(flow.traffic_direction)
                .map(|d| d.as_str_name().to_ascii_lowercase())
                .unwrap_or_default();
            let matched = match flow.policy_match_type {
                1 => "l3-only",
                2 => "l3-l4",
                3 => "l4-only",
                4 => "all",
                _ => "none",
            };
            self.add(
                "hubble_policy_verdicts_total",
                vec![
                    ("direction", direction),
                    ("match", matched.to_owned()),
                    ("action", verdict.to_ascii_lowercase()),
                ],
                1,
            );
        }
        if crate::convert::is_reply(flow) != Some(true) && flow.verdict == Verdict::Forwarded as i32
        {
            if let Some((_, dport)) = ports(flow) {
                if flow.event_type.as_ref().map(|e| e.r#type) == Some(MESSAGE_TYPE_TRACE) {
                    self.add(
                        "hubble_port_distribution_total",
                        vec![("protocol", protocol), ("port", dport.to_string())],
                        1,
                    );
                }
            }
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
        self.add(
            "hubble_lost_events_total",
            vec![("source", source.to_owned())],
            n,
        );
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        out
    }
}
