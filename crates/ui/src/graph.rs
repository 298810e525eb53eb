//! Flows aggregated into the service map: boxes (workloads, Services, reserved identities),
//! connections between them per protocol and port with their verdicts, rate and L7 requests.
//! Pure: the same flows and the same `now` give the same graph, so it is tested without a
//! browser or a server, and the browser only draws what it gets.

use std::collections::{BTreeMap, BTreeSet};

use ciliate_observer::filter::ports;
use ciliate_observer::print::{drop_reason_text, protocol_name};
use ciliate_observer::proto::flow::{layer7, Flow, Verdict};
use serde::Serialize;

use crate::workload::{node_of, shown_labels, NodeKey};

/// At most this many pod names, labels and L7 rows are kept per box or connection: the
/// page shows a sample, and a workload of 10,000 pods must not make the model grow.
pub const SAMPLE: usize = 8;

/// A box of the map.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Stable id (`w:ns/name`, `s:ns/name`, `r:world`, `i:1234`).
    pub id: String,
    /// `workload`, `service`, `reserved` or `identity`.
    pub kind: &'static str,
    /// Namespace ("" outside every namespace).
    pub namespace: String,
    /// Name on the box.
    pub name: String,
    /// The security identities seen for it (sorted, at most [`SAMPLE`]).
    pub identities: Vec<u32>,
    /// Pod names seen (sorted, at most [`SAMPLE`]).
    pub pods: Vec<String>,
    /// How many distinct pods were seen.
    pub pod_count: usize,
    /// Labels of its endpoints (at most [`SAMPLE`]).
    pub labels: Vec<String>,
    /// Position and size, from [`crate::layout`].
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
    /// Column the layout put it in (0: nothing sends to it).
    pub layer: usize,
}

/// One HTTP request kind on a connection.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct L7Row {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Response status (0 for requests whose response was not seen).
    pub status: u32,
    /// How many flows.
    pub count: u64,
}

/// A connection: from one box to another, one protocol and destination port.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// Source box id.
    pub from: String,
    /// Destination box id.
    pub to: String,
    /// `TCP`, `UDP`, `ICMPv4`, ... ("" without an L4 header).
    pub protocol: String,
    /// Destination port (0 for ICMP and L3 only).
    pub port: u32,
    /// Forwarded flows (also redirected, translated, traced, audited).
    pub forwarded: u64,
    /// Dropped (and error) flows.
    pub dropped: u64,
    /// `forwarded`, `dropped` or `mixed`: how the page colours it (dropped: red).
    pub verdict: &'static str,
    /// Flows per second over the window ending now.
    pub rate: f64,
    /// Why flows were dropped (Hubble's texts, at most [`SAMPLE`]).
    pub drop_reasons: Vec<String>,
    /// The policies that denied them (`namespace/name`, from the flows' `*_denied_by`; at
    /// most [`SAMPLE`]).
    pub denied_by: Vec<String>,
    /// HTTP requests seen on it, most frequent first (at most [`SAMPLE`]).
    pub l7: Vec<L7Row>,
    /// Time of the newest flow (seconds since the epoch).
    pub last_seen: f64,
}

/// A namespace's area.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Area {
    /// Namespace ("" for the area of what is outside every namespace).
    pub namespace: String,
    /// Position and size, from [`crate::layout`].
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

/// The map.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// Namespaces' areas.
    pub areas: Vec<Area>,
    /// Boxes: workloads, Services, reserved identities, identities; each by namespace and name.
    pub nodes: Vec<Node>,
    /// Connections, sorted by (from, to, protocol, port).
    pub edges: Vec<Edge>,
    /// How many flows the graph was built from.
    pub flows: u64,
    /// The rate window in seconds.
    pub window: f64,
    /// Width of the whole drawing.
    pub width: f64,
    /// Height of the whole drawing.
    pub height: f64,
}

/// A flow's time in seconds since the epoch (0 without one).
pub fn flow_time(flow: &Flow) -> f64 {
    flow.time
        .as_ref()
        .map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

#[derive(Default)]
struct NodeAcc {
    identities: BTreeSet<u32>,
    pods: BTreeSet<String>,
    pod_count: usize,
    labels: Vec<String>,
}

impl NodeAcc {
    fn add(&mut self, ep: Option<&ciliate_observer::proto::flow::Endpoint>) {
        let Some(ep) = ep else { return };
        if ep.identity != 0
            && (self.identities.len() < SAMPLE || self.identities.contains(&ep.identity))
        {
            self.identities.insert(ep.identity);
        }
        if !ep.pod_name.is_empty() && !self.pods.contains(&ep.pod_name) {
            // Distinct pods beyond the sample are counted, not kept.
            self.pod_count += 1;
            if self.pods.len() < SAMPLE {
                self.pods.insert(ep.pod_name.clone());
            }
        }
        if self.labels.is_empty() {
            self.labels = shown_labels(ep).into_iter().take(SAMPLE).collect();
        }
    }
}

#[derive(Default)]
struct EdgeAcc {
    forwarded: u64,
    dropped: u64,
    recent: u64,
    drop_reasons: BTreeSet<String>,
    denied_by: BTreeSet<String>,
    l7: BTreeMap<(String, String, u32), u64>,
    last_seen: f64,
}

type EdgeKey = (NodeKey, NodeKey, &'static str, u32);

/// Builds graphs from flows.
#[derive(Debug, Clone, Copy)]
pub struct Aggregator {
    /// The window rates are computed over, in seconds.
    pub window: f64,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self { window: 10.0 }
    }
}

fn is_drop(flow: &Flow) -> bool {
    matches!(
        Verdict::try_from(flow.verdict),
        Ok(Verdict::Dropped | Verdict::Error)
    )
}

/// The destination port (0 for ICMP, whose type the summary shows, and L3 only).
fn destination_port(flow: &Flow) -> u32 {
    ports(flow).map_or(0, |(_, d)| d)
}

/// `namespace/name` of a policy (`name` for a cluster-wide one).
fn policy_name(p: &ciliate_observer::proto::flow::Policy) -> String {
    if p.namespace.is_empty() {
        p.name.clone()
    } else {
        format!("{}/{}", p.namespace, p.name)
    }
}

fn service_key(svc: Option<&ciliate_observer::proto::flow::Service>) -> Option<NodeKey> {
    svc.filter(|s| !s.name.is_empty())
        .map(|s| NodeKey::Service {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        })
}

fn http_row(flow: &Flow) -> Option<(String, String, u32)> {
    let Some(layer7::Record::Http(h)) = flow.l7.as_ref().and_then(|l| l.record.as_ref()) else {
        return None;
    };
    let path = ciliate_observer::filter::request_path(&h.url).unwrap_or_else(|| h.url.clone());
    Some((h.method.clone(), path, h.code))
}

impl Aggregator {
    /// The map of `flows` as of `now` (seconds since the epoch). Replies are left out (they
    /// run along the connection their request opened), except L7 responses, whose status
    /// codes go onto their request's connection.
    pub fn aggregate<'a>(&self, flows: impl IntoIterator<Item = &'a Flow>, now: f64) -> Graph {
        let mut nodes: BTreeMap<NodeKey, NodeAcc> = BTreeMap::new();
        let mut edges: BTreeMap<EdgeKey, EdgeAcc> = BTreeMap::new();
        let mut count = 0u64;
        let since = now - self.window;
        let flows: Vec<&Flow> = flows.into_iter().collect();
        // Which Service a client reached a backend through, per port. One connection is seen
        // where the datapath knows the Service (the client's side) and where it does not (the
        // backend's ingress); both are drawn through the Service, so a drop at the backend
        // turns Service -> backend red rather than adding a second, direct connection.
        let mut via: BTreeMap<(NodeKey, NodeKey, u32), NodeKey> = BTreeMap::new();
        for flow in &flows {
            if flow.is_reply.as_ref().is_some_and(|b| b.value) {
                continue;
            }
            if let Some(svc) = service_key(flow.destination_service.as_ref()) {
                let key = (
                    node_of(flow.source.as_ref()),
                    node_of(flow.destination.as_ref()),
                    destination_port(flow),
                );
                via.entry(key)
                    .and_modify(|s| {
                        if svc < *s {
                            *s = svc.clone();
                        }
                    })
                    .or_insert(svc);
            }
        }
        for flow in flows {
            count += 1;
            let reply = flow.is_reply.as_ref().is_some_and(|b| b.value);
            let http = http_row(flow);
            // A reply runs back along its request's connection: swap the ends.
            let (src_ep, dst_ep, dst_service) = if reply {
                (
                    flow.destination.as_ref(),
                    flow.source.as_ref(),
                    &flow.source_service,
                )
            } else {
                (
                    flow.source.as_ref(),
                    flow.destination.as_ref(),
                    &flow.destination_service,
                )
            };
            if reply && http.is_none() {
                continue;
            }
            let src = node_of(src_ep);
            let dst = node_of(dst_ep);
            nodes.entry(src.clone()).or_default().add(src_ep);
            nodes.entry(dst.clone()).or_default().add(dst_ep);
            let protocol = protocol_name(flow);
            let port = if reply {
                ports(flow).map_or(0, |(s, _)| s)
            } else {
                destination_port(flow)
            };
            let t = flow_time(flow);
            let mut hops = Vec::with_capacity(2);
            let service = service_key(dst_service.as_ref())
                .or_else(|| via.get(&(src.clone(), dst.clone(), port)).cloned());
            match service {
                Some(s) => {
                    nodes.entry(s.clone()).or_default();
                    hops.push((src, s.clone()));
                    // Seen before translation (to the Service's own address), the flow has no
                    // backend yet.
                    if !matches!(dst, NodeKey::Reserved(_)) {
                        hops.push((s, dst));
                    }
                }
                None => hops.push((src, dst)),
            }
            for (from, to) in hops {
                let e = edges.entry((from, to, protocol, port)).or_default();
                if !reply {
                    if is_drop(flow) {
                        e.dropped += 1;
                        if e.drop_reasons.len() < SAMPLE {
                            e.drop_reasons
                                .insert(drop_reason_text(flow.drop_reason_desc));
                        }
                        for p in flow.ingress_denied_by.iter().chain(&flow.egress_denied_by) {
                            if e.denied_by.len() < SAMPLE {
                                e.denied_by.insert(policy_name(p));
                            }
                        }
                    } else {
                        e.forwarded += 1;
                    }
                    if t >= since {
                        e.recent += 1;
                    }
                }
                if let Some(row) = &http {
                    let known = e.l7.contains_key(row);
                    if known || e.l7.len() < 4 * SAMPLE {
                        *e.l7.entry(row.clone()).or_default() += 1;
                    }
                }
                e.last_seen = e.last_seen.max(t);
            }
        }
        let nodes = nodes
            .into_iter()
            .map(|(key, acc)| Node {
                id: key.id(),
                kind: key.kind(),
                namespace: key.namespace().to_owned(),
                name: key.name(),
                identities: acc.identities.into_iter().collect(),
                pods: acc.pods.into_iter().collect(),
                pod_count: acc.pod_count,
                labels: acc.labels,
                x: 0.0,
                y: 0.0,
                w: 0.0,
                h: 0.0,
                layer: 0,
            })
            .collect();
        let edges = edges
            .into_iter()
            .map(|((from, to, protocol, port), acc)| {
                let mut l7: Vec<L7Row> = acc
                    .l7
                    .into_iter()
                    .map(|((method, path, status), count)| L7Row {
                        method,
                        path,
                        status,
                        count,
                    })
                    .collect();
                // Most frequent first; the stable sort keeps (method, path, status) order
                // among equals, so the result does not depend on arrival order.
                l7.sort_by_key(|r| std::cmp::Reverse(r.count));
                l7.truncate(SAMPLE);
                Edge {
                    from: from.id(),
                    to: to.id(),
                    protocol: protocol.to_owned(),
                    port,
                    forwarded: acc.forwarded,
                    dropped: acc.dropped,
                    verdict: match (acc.forwarded, acc.dropped) {
                        (_, 0) => "forwarded",
                        (0, _) => "dropped",
                        _ => "mixed",
                    },
                    rate: acc.recent as f64 / self.window,
                    drop_reasons: acc.drop_reasons.into_iter().collect(),
                    denied_by: acc.denied_by.into_iter().collect(),
                    l7,
                    last_seen: acc.last_seen,
                }
            })
            .collect();
        let mut graph = Graph {
            nodes,
            edges,
            flows: count,
            window: self.window,
            ..Graph::default()
        };
        crate::layout::layout(&mut graph);
        graph
    }
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
