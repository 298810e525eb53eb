//! Hubble's `kafka` metrics (its handler `pkg/hubble/metrics/kafka`), from L7 Kafka flows:
//!
//! - `hubble_kafka_requests_total{api_key,error_code,reporter,topic}`: requests;
//! - `hubble_kafka_request_duration_seconds{api_key,reporter,topic}`: the time from request
//!   to response, in Prometheus' default buckets.
//!
//! Hubble observes the duration on request flows, whose latency is always zero; Ciliate's
//! proxy puts the latency on the response, so the histogram observes responses (their
//! count then matches the answered requests). `reporter` is `client` for an egress redirect,
//! `server` for ingress. Labels in name order, as Prometheus' Go client prints them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::http_metrics::{escape, reporter, BoundedLabel, Histogram};
use crate::proto::flow::{Flow, Kafka, L7FlowType};

/// Distinct topics (the client names them) counted under their own name; the rest are
/// `other`.
const MAX_TOPICS: usize = 256;

/// The Kafka counters and histogram, keyed by their label values.
#[derive(Debug, Default)]
pub(crate) struct KafkaMetrics {
    /// (api_key, error_code, reporter, topic).
    requests: BTreeMap<(String, i32, &'static str, String), u64>,
    /// (api_key, reporter, topic).
    durations: BTreeMap<(String, &'static str, String), Histogram>,
    topics: BoundedLabel,
    api_keys: BoundedLabel,
}

impl KafkaMetrics {
    /// Counts one Kafka flow (`kafka` is its record).
    pub(crate) fn record(&mut self, flow: &Flow, kafka: &Kafka) {
        let Some(l7) = &flow.l7 else { return };
        let reporter = reporter(flow);
        let topic = self.topics.label(&kafka.topic, MAX_TOPICS);
        // The proxy names the keys it knows; an unknown one is named by its number.
        let api_key = self.api_keys.label(&kafka.api_key, MAX_TOPICS);
        match L7FlowType::try_from(l7.r#type) {
            Ok(L7FlowType::Request) => {
                *self
                    .requests
                    .entry((api_key, kafka.error_code, reporter, topic))
                    .or_default() += 1;
            }
            Ok(L7FlowType::Response) => {
                #[allow(clippy::cast_precision_loss)]
                let seconds = l7.latency_ns as f64 / 1e9;
                self.durations
                    .entry((api_key, reporter, topic))
                    .or_default()
                    .observe(seconds);
            }
            _ => {}
        }
    }

    /// Appends the families that have samples (as Prometheus' Go client).
    pub(crate) fn render(&self, out: &mut String) {
        if !self.requests.is_empty() {
            let name = "hubble_kafka_requests_total";
            let _ = writeln!(
                out,
                "# HELP {name} Count of Kafka requests\n# TYPE {name} counter"
            );
            for ((api_key, code, reporter, topic), n) in &self.requests {
                let _ = writeln!(
                    out,
                    "{name}{{api_key=\"{}\",error_code=\"{code}\",reporter=\"{reporter}\",topic=\"{}\"}} {n}",
                    escape(api_key),
                    escape(topic)
                );
            }
        }
        if !self.durations.is_empty() {
            let name = "hubble_kafka_request_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Quantiles of HTTP request duration in seconds\n# TYPE {name} histogram"
            );
            for ((api_key, reporter, topic), h) in &self.durations {
                let labels = format!(
                    "api_key=\"{}\",reporter=\"{reporter}\",topic=\"{}\"",
                    escape(api_key),
                    escape(topic)
                );
                h.render(out, name, &labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ciliate_model::l7::KafkaRecord;

    use crate::convert::tests::store;
    use crate::kafka::kafka_to_flow;
    use crate::kafka::tests::{produce, refused};
    use crate::metrics::http_tests::parse;
    use crate::metrics::Metrics;

    #[test]
    fn requests_and_durations_under_hubbles_names_and_labels() {
        let s = store();
        let m = Metrics::default();
        let fetch = KafkaRecord {
            api_key: "fetch".into(),
            egress: false,
            ..produce()
        };
        for r in [produce(), produce(), fetch, refused()] {
            m.record(&kafka_to_flow(&r, &s, "n1"));
        }
        let text = m.render();
        let (samples, types) = parse(&text);
        assert_eq!(types["hubble_kafka_requests_total"], "counter");
        assert_eq!(types["hubble_kafka_request_duration_seconds"], "histogram");
        assert_eq!(
            samples[r#"hubble_kafka_requests_total{api_key="produce",error_code="0",reporter="client",topic="orders"}"#],
            2.0
        );
        assert_eq!(
            samples[r#"hubble_kafka_requests_total{api_key="fetch",error_code="0",reporter="server",topic="orders"}"#],
            1.0
        );
        let labels = r#"api_key="produce",reporter="client",topic="secrets""#;
        assert_eq!(
            samples[&format!("hubble_kafka_request_duration_seconds_count{{{labels}}}")],
            1.0
        );
        assert_eq!(
            samples
                [&format!("hubble_kafka_request_duration_seconds_bucket{{{labels},le=\"0.005\"}}")],
            1.0
        );
        assert!(
            (samples[&format!("hubble_kafka_request_duration_seconds_sum{{{labels}}}")] - 0.00008)
                .abs()
                < 1e-12
        );
        assert!(text.contains(
            r#"hubble_flows_processed_total{protocol="Kafka",type="L7",subtype="Kafka",verdict="DROPPED"} 1"#
        ));
        assert!(
            text.contains(r#"hubble_drop_total{reason="DROP_REASON_UNKNOWN",protocol="Kafka"} 1"#),
            "{text}"
        );
    }
}
