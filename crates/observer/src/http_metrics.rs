//! Hubble's `http` metrics (its v1 handler, `pkg/hubble/metrics/http`): requests and
//! responses counted, and the request duration as a histogram, from L7 HTTP flows.
//!
//! - `hubble_http_requests_total{method,protocol,reporter}`: requests;
//! - `hubble_http_responses_total{method,protocol,reporter,status}`: responses;
//! - `hubble_http_request_duration_seconds{method,reporter}`: a response's latency, in
//!   Prometheus' default buckets (Hubble's histogram sets none).
//!
//! `reporter` is `client` for flows of an egress redirect (the client's side reported them),
//! `server` for ingress, as Hubble derives it from the traffic direction. Labels are printed
//! in name order, as Prometheus' Go client prints them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::proto::flow::{Flow, Http, L7FlowType, TrafficDirection};

/// Prometheus' default buckets (`prometheus.DefBuckets`), in seconds.
pub(crate) const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Distinct methods counted under their own name. A client chooses the method (any token
/// is valid HTTP), so without a bound a scan with random methods would grow the metrics
/// without end; past the bound, new methods are counted as `other`.
const MAX_METHODS: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations at or below each bucket's bound (cumulative, as exposed).
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub(crate) fn observe(&mut self, v: f64) {
        for (n, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if v <= le {
                *n += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// The `_bucket`, `_sum` and `_count` samples of one child with these labels.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {n}", float(*le));
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", float(self.sum));
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Distinct values a peer chooses (an HTTP method, a DNS query type, a Kafka topic) counted
/// under their own name; past `max`, new ones are counted as `other`, so that a scan with
/// made-up values cannot grow the metrics without end.
#[derive(Debug, Default)]
pub(crate) struct BoundedLabel {
    seen: std::collections::BTreeSet<String>,
}

impl BoundedLabel {
    /// `v`, or `other` once `max` distinct values were seen and `v` is not one of them.
    pub(crate) fn label(&mut self, v: &str, max: usize) -> String {
        if self.seen.contains(v) {
            return v.to_owned();
        }
        if self.seen.len() >= max {
            return "other".to_owned();
        }
        self.seen.insert(v.to_owned());
        v.to_owned()
    }

    /// [`label`](Self::label) without a copy: `v` itself, or `other`.
    pub(crate) fn label_str<'a>(&mut self, v: &'a str, max: usize) -> &'a str {
        if self.seen.contains(v) {
            return v;
        }
        if self.seen.len() >= max {
            return "other";
        }
        self.seen.insert(v.to_owned());
        v
    }
}

/// The value of `key` in `map`, inserted (as its default) the first time: a key seen before
/// is found by reference, without a copy of it.
fn slot<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// Values by one label's value (a method's, a protocol's).
type ByLabel<V> = BTreeMap<String, V>;

/// The HTTP counters and histogram, keyed by their label values, one map per label (in
/// label order), so that a flow finds its counters without copying its method and protocol
/// (two flows per request).
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    /// method -> protocol -> reporter.
    requests: ByLabel<ByLabel<BTreeMap<&'static str, u64>>>,
    /// method -> protocol -> (reporter, status).
    responses: ByLabel<ByLabel<BTreeMap<(&'static str, u32), u64>>>,
    /// method -> reporter.
    durations: ByLabel<BTreeMap<&'static str, Histogram>>,
    methods: BoundedLabel,
}

/// What the HTTP metrics read of an L7 HTTP flow.
#[derive(Debug)]
pub(crate) struct HttpSample<'a> {
    /// Request or response.
    pub kind: L7FlowType,
    /// Hubble's `reporter` label ([`reporter`]).
    pub reporter: &'static str,
    pub method: &'a str,
    pub protocol: &'a str,
    /// A response's status code (0 on a request).
    pub code: u32,
    /// A response's latency (0 on a request).
    pub latency_ns: u64,
}

/// Hubble's `reporter` label: which side of the connection reported the flow.
pub(crate) fn reporter(flow: &Flow) -> &'static str {
    reporter_of(flow.traffic_direction)
}

/// [`reporter`] of a flow's `traffic_direction`.
pub(crate) fn reporter_of(traffic_direction: i32) -> &'static str {
    match TrafficDirection::try_from(traffic_direction) {
        Ok(TrafficDirection::Egress) => "client",
        Ok(TrafficDirection::Ingress) => "server",
        _ => "unknown",
    }
}

/// A label value in the exposition format.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `v` as the shortest decimal that reads back as `v` (`0.005`, `1`, `+Inf`), as Prometheus'
/// Go client prints bucket bounds; a tiny sum may read `0.000001` where Go writes `1e-06`,
/// which every exposition parser reads alike.
fn float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    format!("{v}")
}

impl HttpMetrics {
    /// Counts one HTTP flow (`http` is its record).
    pub(crate) fn record(&mut self, flow: &Flow, http: &Http) {
        let Some(l7) = &flow.l7 else { return };
        let Ok(kind) = L7FlowType::try_from(l7.r#type) else {
            return;
        };
        self.record_parts(&HttpSample {
            kind,
            reporter: reporter(flow),
            method: &http.method,
            protocol: &http.protocol,
            code: http.code,
            latency_ns: l7.latency_ns,
        });
    }

    /// Counts one HTTP flow given by the fields these metrics read (what
    /// [`record`](Self::record) reads of the flow).
    pub(crate) fn record_parts(&mut self, s: &HttpSample<'_>) {
        match s.kind {
            L7FlowType::Request => {
                let method = self.methods.label_str(s.method, MAX_METHODS);
                let by_protocol = slot(&mut self.requests, method);
                *slot(by_protocol, s.protocol).entry(s.reporter).or_default() += 1;
            }
            L7FlowType::Response => {
                let method = self.methods.label_str(s.method, MAX_METHODS);
                let by_protocol = slot(&mut self.responses, method);
                *slot(by_protocol, s.protocol)
                    .entry((s.reporter, s.code))
                    .or_default() += 1;
                // Nanoseconds to seconds, as Hubble divides by time.Second.
                #[allow(clippy::cast_precision_loss)]
                let seconds = s.latency_ns as f64 / 1e9;
                slot(&mut self.durations, method)
                    .entry(s.reporter)
                    .or_default()
                    .observe(seconds);
            }
            _ => {}
        }
    }

    /// Appends the families that have samples (as Prometheus' Go client, which exposes a
    /// labelled metric only once it has a child).
    pub(crate) fn render(&self, out: &mut String) {
        if !self.requests.is_empty() {
            let name = "hubble_http_requests_total";
            let _ = writeln!(
                out,
                "# HELP {name} Count of HTTP requests\n# TYPE {name} counter"
            );
            for (method, by_protocol) in &self.requests {
                for (protocol, by_reporter) in by_protocol {
                    for (reporter, n) in by_reporter {
                        let _ = writeln!(
                            out,
                            "{name}{{method=\"{}\",protocol=\"{}\",reporter=\"{reporter}\"}} {n}",
                            escape(method),
                            escape(protocol)
                        );
                    }
                }
            }
        }
        if !self.responses.is_empty() {
            let name = "hubble_http_responses_total";
            let _ = writeln!(
                out,
                "# HELP {name} Count of HTTP responses\n# TYPE {name} counter"
            );
            for (method, by_protocol) in &self.responses {
                for (protocol, by_reporter) in by_protocol {
                    for ((reporter, status), n) in by_reporter {
                        let _ = writeln!(
                            out,
                            "{name}{{method=\"{}\",protocol=\"{}\",reporter=\"{reporter}\",status=\"{status}\"}} {n}",
                            escape(method),
                            escape(protocol)
                        );
                    }
                }
            }
        }
        if !self.durations.is_empty() {
            let name = "hubble_http_request_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Quantiles of HTTP request duration in seconds\n# TYPE {name} histogram"
            );
            for (method, by_reporter) in &self.durations {
                for (reporter, h) in by_reporter {
                    let labels = format!("method=\"{}\",reporter=\"{reporter}\"", escape(method));
                    h.render(out, name, &labels);
                }
            }
        }
    }
}
