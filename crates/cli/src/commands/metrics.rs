//! `ciliate metrics list`: the agent's Prometheus metrics, from its metrics listener.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Ctx, Hinted, Outcome};
use crate::output::{self, table};

/// How long the metrics listener may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The metric's name.
    pub metric: String,
    /// Its labels as written, `k="v",...` (empty when none).
    pub labels: String,
    /// Its value.
    pub value: f64,
}

/// Prints the metrics whose name contains `pattern`.
pub async fn list(ctx: &Ctx, pattern: Option<&str>) -> anyhow::Result<Outcome> {
    let config = ctx.client.config().await?;
    let addr = config
        .pointer("/observer/hubbleMetricsAddress")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Hinted {
            error: anyhow!("the agent serves no metrics (observer.hubbleMetricsAddress is unset)"),
            hint: "start ciliate-agent with --hubble-metrics-address 127.0.0.1:9965".into(),
        })?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("the agent's metrics address {addr:?}"))?;
    let text = tokio::time::timeout(TIMEOUT, fetch(addr))
        .await
        .map_err(|_| anyhow!("the agent's metrics at {addr} did not answer within {TIMEOUT:?}"))?
        .with_context(|| format!("reading the agent's metrics at http://{addr}/metrics (from this network namespace)"))?;
    let samples: Vec<Sample> = parse(&text)
        .into_iter()
        .filter(|s| pattern.is_none_or(|p| s.metric.contains(p)))
        .collect();
    output::print(&output::render(ctx.format, &samples, |s| samples_table(s))?)?;
    Ok(Outcome::Success)
}

async fn fetch(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(anyhow!("the metrics listener answered {status:?}"));
    }
    Ok(body.to_owned())
}

/// The series of a Prometheus text exposition; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, rest) = match l.find('{') {
                Some(open) => {
                    let close = open + l[open..].rfind('}')?;
                    (&l[..=close], &l[close + 1..])
                }
                None => l.split_once(' ')?,
            };
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, labels)) => (m, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                metric: metric.trim().to_owned(),
                labels: labels.to_owned(),
                value,
            })
        })
        .collect()
}

/// METRIC, LABELS, VALUE.
pub fn samples_table(samples: &[Sample]) -> String {
    table(
        &["metric", "labels", "value"],
        samples.iter().map(|s| {
            vec![
                s.metric.clone(),
                output::or_none(s.labels.clone()),
                s.value.to_string(),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_parsed() {
        let text = "# HELP hubble_flows_processed_total Flows\n\
            # TYPE hubble_flows_processed_total counter\n\
            hubble_flows_processed_total{type=\"L3_L4\",verdict=\"FORWARDED\"} 12\n\
            ciliate_endpoints 3\n\
            ciliate_api_request_duration_seconds_bucket{route=\"/v1/x y\",le=\"+Inf\"} 2 1700000000\n\
            garbage\n";
        let s = parse(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].metric, "hubble_flows_processed_total");
        assert_eq!(s[0].labels, "type=\"L3_L4\",verdict=\"FORWARDED\"");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(
            (s[1].metric.as_str(), s[1].labels.as_str()),
            ("ciliate_endpoints", "")
        );
        assert_eq!(s[2].labels, "route=\"/v1/x y\",le=\"+Inf\"");
        let t = samples_table(&s);
        assert!(t.starts_with("METRIC"), "{t}");
        assert!(t.contains("ciliate_endpoints"), "{t}");
    }
}
