//! The agent's own metrics, under `ciliate_`, served beside Hubble's flow metrics
//! (`--hubble-metrics-address`): what the node holds (endpoints, identities, Services,
//! policies, BPF map usage and pressure, the cluster) and how the API answers (requests and
//! latency by route). Rendered in the Prometheus text format from the same status the API
//! serves, so the two never disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use ciliate_model::api::Status;

/// Upper bounds (seconds) of the API latency histogram's buckets.
const BUCKETS: [f64; 9] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// API requests by (method, route, status code): a latency histogram each.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    by_request: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl ApiMetrics {
    /// Records one answered request.
    pub fn observe(&self, method: &str, route: &str, code: u16, seconds: f64) {
        let mut m = self
            .by_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = m
            .entry((method.to_owned(), route.to_owned(), code))
            .or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    fn render(&self, out: &mut String) {
        let m = self
            .by_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = "ciliate_api_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to answer an API request, by method, route and status code\n# TYPE {name} histogram"
        );
        for ((method, route, code), h) in m.iter() {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",code=\"{code}\"",
                escape(route)
            );
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
    }
}

/// Axum middleware (a route layer, so the matched route is known): times every request.
pub async fn track(State(m): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    m.observe(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// The agent metrics, from the node's status and the API's counters.
pub fn render(status: &Status, api: &ApiMetrics) -> String {
    let mut out = String::new();
    counter(
        &mut out,
        "ciliate_datapath_repairs_total",
        "Endpoint datapaths found broken behind the agent's back (links detached, unpinned or swapped; map entries gone) and put back",
        status.datapath_repairs,
    );
    counter(
        &mut out,
        "ciliate_endpoints_vanished_total",
        "Endpoints removed because their veth vanished without a CNI DEL",
        status.endpoints_vanished,
    );
    let one = |v: usize| vec![(String::new(), v as f64)];
    gauge(
        &mut out,
        "ciliate_endpoints",
        "Endpoints (pods) of this node",
        &one(status.endpoints),
    );
    gauge(
        &mut out,
        "ciliate_identities",
        "Security identities used by this node's endpoints (reserved ones not counted)",
        &one(status.identities),
    );
    gauge(
        &mut out,
        "ciliate_services",
        "Services programmed",
        &one(status.services),
    );
    gauge(
        &mut out,
        "ciliate_service_backends",
        "Backends programmed for them",
        &one(status.backends),
    );
    gauge(
        &mut out,
        "ciliate_policies",
        "Network policies in force",
        &one(status.policies),
    );
    gauge(
        &mut out,
        "ciliate_ipam_allocated",
        "Pod addresses allocated",
        &one(status.ipam.allocated as usize),
    );
    gauge(
        &mut out,
        "ciliate_ipam_capacity",
        "Pod addresses in the node's pod CIDR",
        &one(status.ipam.capacity as usize),
    );
    gauge(
        &mut out,
        "ciliate_datapath_loaded",
        "1 when the BPF programs are loaded",
        &one(usize::from(status.datapath.loaded)),
    );
    let maps = |f: &dyn Fn(&ciliate_model::api::MapUsage) -> f64| {
        status
            .datapath
            .maps
            .iter()
            .map(|m| (format!("map=\"{}\"", escape(&m.name)), f(m)))
            .collect::<Vec<_>>()
    };
    gauge(
        &mut out,
        "ciliate_bpf_map_entries",
        "Entries in a BPF map",
        &maps(&|m| f64::from(m.entries)),
    );
    gauge(
        &mut out,
        "ciliate_bpf_map_capacity",
        "Maximum entries of a BPF map",
        &maps(&|m| f64::from(m.max_entries)),
    );
    gauge(
        &mut out,
        "ciliate_bpf_map_pressure",
        "How full a BPF map is, 0 to 1 (an LRU map at 1 evicts; a hash map at 1 refuses)",
        &maps(&|m| {
            if m.max_entries == 0 {
                0.0
            } else {
                f64::from(m.entries) / f64::from(m.max_entries)
            }
        }),
    );
    gauge(
        &mut out,
        "ciliate_problems",
        "Problems the node reports in its status (0 when healthy)",
        &one(status.problems.len()),
    );
    if let Some(c) = &status.cluster {
        gauge(
            &mut out,
            "ciliate_kvstore_connected",
            "1 while etcd answers",
            &one(usize::from(c.connected)),
        );
        gauge(
            &mut out,
            "ciliate_cluster_nodes",
            "Nodes registered in the cluster",
            &one(c.nodes.len()),
        );
        gauge(
            &mut out,
            "ciliate_cluster_identities",
            "Identities in use anywhere in the cluster",
            &one(c.identities),
        );
        gauge(
            &mut out,
            "ciliate_cluster_remote_endpoints",
            "Endpoints of other nodes this node knows",
            &one(c.remote_endpoints),
        );
    }
    api.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_model::api::{DatapathStatus, IpamStatus, MapUsage};

    fn status() -> Status {
        Status {
            datapath_repairs: 0,
            endpoints_vanished: 0,
            proxy: None,
            node: "n1".into(),
            version: "0".into(),
            uptime_seconds: 1,
            health: "ok".into(),
            problems: vec![],
            datapath: DatapathStatus {
                loaded: true,
                kind: "bpf".into(),
                pin_dir: String::new(),
                programs: vec![],
                maps: vec![MapUsage {
                    name: "cil_ct4".into(),
                    entries: 65536,
                    max_entries: 262144,
                }],
            },
            endpoints: 3,
            identities: 2,
            ipam: IpamStatus {
                cidr: "10.0.0.0/24".parse().unwrap(),
                allocated: 3,
                capacity: 253,
            },
            services: 4,
            backends: 9,
            policies: 1,
            cluster: None,
        }
    }

    #[test]
    fn gauges_and_the_latency_histogram_render_in_the_text_format() {
        let api = ApiMetrics::default();
        api.observe("POST", "/v1/endpoints", 200, 0.003);
        api.observe("POST", "/v1/endpoints", 200, 0.2);
        let text = render(&status(), &api);
        for want in [
            "# TYPE ciliate_endpoints gauge\nciliate_endpoints 3\n",
            "ciliate_services 4\n",
            "ciliate_bpf_map_pressure{map=\"cil_ct4\"} 0.25\n",
            "ciliate_api_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/endpoints\",code=\"200\",le=\"0.001\"} 0\n",
            "ciliate_api_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/endpoints\",code=\"200\",le=\"0.005\"} 1\n",
            "ciliate_api_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/endpoints\",code=\"200\",le=\"+Inf\"} 2\n",
            "ciliate_api_request_duration_seconds_count{method=\"POST\",route=\"/v1/endpoints\",code=\"200\"} 2\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("ciliate_kvstore_connected"), "no cluster");
    }
}
