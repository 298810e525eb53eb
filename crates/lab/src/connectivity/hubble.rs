//! The drops of a cell, as the node that dropped them reports them, and the L7 flows of an
//! HTTP cell, as the proxy's node reports them: Hubble's `GetFlows` on the node's observer
//! socket, through the client `ciliate observe` uses.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ciliate_observer::convert::system_time_to_timestamp;
use ciliate_observer::proto::flow::{
    EventTypeFilter, Flow, FlowFilter, L7FlowType, TrafficDirection, Verdict,
};
use ciliate_observer::proto::observer::{get_flows_response::ResponseTypes, GetFlowsRequest};

use super::scenarios::{Proto, Request};

/// A drop seen: its reason code and the node that reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The drop reason (133, 181, ...).
    pub reason: u32,
    /// The node.
    pub node: String,
}

/// What to look for.
#[derive(Clone, Debug)]
pub struct Query {
    /// The client's address.
    pub src: Ipv4Addr,
    /// Any of these as the destination (a Service's address and its backend's).
    pub dst: Vec<Ipv4Addr>,
    /// The protocol.
    pub proto: Proto,
    /// The destination port (TCP, UDP).
    pub port: u16,
    /// Flows since.
    pub since: SystemTime,
}

impl Query {
    fn request(&self) -> GetFlowsRequest {
        let mut filter = FlowFilter {
            source_ip: vec![self.src.to_string()],
            destination_ip: self.dst.iter().map(ToString::to_string).collect(),
            verdict: vec![Verdict::Dropped as i32],
            ..FlowFilter::default()
        };
        match self.proto {
            Proto::Tcp | Proto::Http(_) => {
                filter.protocol = vec!["tcp".into()];
                filter.destination_port = vec![self.port.to_string()];
            }
            Proto::Udp | Proto::Dns => {
                filter.protocol = vec!["udp".into()];
                filter.destination_port = vec![self.port.to_string()];
            }
            Proto::Icmp => filter.protocol = vec!["icmp".into()],
        }
        GetFlowsRequest {
            number: 0,
            first: false,
            follow: false,
            whitelist: vec![filter],
            blacklist: Vec::new(),
            since: Some(system_time_to_timestamp(self.since)),
            until: None,
            field_mask: None,
        }
    }
}

/// A flow's node name as the lab names nodes: without the cluster Hubble puts in front.
fn lab_node(qualified: &str) -> String {
    qualified
        .split_once('/')
        .map_or(qualified, |(_, node)| node)
        .to_owned()
}

/// The drops matching `q` that `node`'s observer (at `socket`) has.
pub async fn drops(node: &str, socket: &Path, q: &Query) -> Result<Vec<Seen>, String> {
    Ok(flows(node, socket, q.request())
        .await?
        .into_iter()
        .map(|f| Seen {
            reason: f.drop_reason,
            node: if f.node_name.is_empty() {
                node.to_owned()
            } else {
                lab_node(&f.node_name)
            },
        })
        .collect())
}

/// The flows `node`'s observer (at `socket`) answers `req` with.
async fn flows(node: &str, socket: &Path, req: GetFlowsRequest) -> Result<Vec<Flow>, String> {
    let mut client = ciliate_observer::server::connect_unix(socket.to_owned())
        .await
        .map_err(|e| {
            format!(
                "cannot reach the observer of {node} at {}: {e}",
                socket.display()
            )
        })?;
    let mut stream = client
        .get_flows(req)
        .await
        .map_err(|s| {
            format!(
                "the observer of {node} refused the request: {}",
                s.message()
            )
        })?
        .into_inner();
    let mut out = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(r)) => {
                if let Some(ResponseTypes::Flow(f)) = r.response_types {
                    out.push(f);
                }
            }
            Ok(None) => return Ok(out),
            Err(s) => return Err(format!("reading flows of {node}: {}", s.message())),
        }
    }
}

/// Waits up to `timeout` for a drop with reason `want` on any of `nodes` ((name, socket));
/// returns it, or every drop seen (possibly with other reasons) and the last error.
pub async fn wait_for(
    nodes: &[(String, std::path::PathBuf)],
    q: &Query,
    want: u32,
    timeout: Duration,
) -> Result<Seen, (Vec<Seen>, Option<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen = Vec::new();
        let mut last_error = None;
        for (name, socket) in nodes {
            match drops(name, socket, q).await {
                Ok(s) => seen.extend(s),
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(hit) = seen.iter().find(|s| s.reason == want) {
            return Ok(hit.clone());
        }
        if Instant::now() > deadline {
            seen.dedup();
            return Err((seen, last_error));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What to look for in the L7 flows: the request of an HTTP cell.
#[derive(Clone, Debug)]
pub struct L7Query {
    /// The client's address.
    pub src: Ipv4Addr,
    /// Any of these as the destination.
    pub dst: Vec<Ipv4Addr>,
    /// The request.
    pub request: Request,
    /// Flows since.
    pub since: SystemTime,
}

/// An L7 request flow seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Seen {
    /// `FORWARDED`, `DROPPED`.
    pub verdict: String,
    /// `INGRESS`, `EGRESS`.
    pub direction: String,
    /// The URL as the flow has it.
    pub url: String,
    /// The node that reported it.
    pub node: String,
}

impl std::fmt::Display for L7Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "L7 {} {} on {} ({})",
            self.verdict, self.url, self.node, self.direction
        )
    }
}

impl L7Query {
    fn request(&self) -> GetFlowsRequest {
        let filter = FlowFilter {
            source_ip: vec![self.src.to_string()],
            destination_ip: self.dst.iter().map(ToString::to_string).collect(),
            event_type: vec![EventTypeFilter {
                r#type: ciliate_observer::l7::MESSAGE_TYPE_ACCESS_LOG,
                ..EventTypeFilter::default()
            }],
            http_method: vec![self.request.method.to_owned()],
            ..FlowFilter::default()
        };
        GetFlowsRequest {
            number: 0,
            first: false,
            follow: false,
            whitelist: vec![filter],
            blacklist: Vec::new(),
            since: Some(system_time_to_timestamp(self.since)),
            until: None,
            field_mask: None,
        }
    }

    /// Whether `f` is this request's request flow (not its response).
    fn matches(&self, f: &Flow) -> Option<L7Seen> {
        let l7 = f.l7.as_ref()?;
        let h = ciliate_observer::l7::http(f)?;
        (l7.r#type == L7FlowType::Request as i32
            && h.method == self.request.method
            && url_path(&h.url) == self.request.path)
            .then(|| L7Seen {
                verdict: Verdict::try_from(f.verdict)
                    .map_or_else(|_| f.verdict.to_string(), |v| v.as_str_name().to_owned()),
                direction: TrafficDirection::try_from(f.traffic_direction).map_or_else(
                    |_| f.traffic_direction.to_string(),
                    |d| d.as_str_name().to_owned(),
                ),
                url: h.url.clone(),
                node: lab_node(&f.node_name),
            })
    }
}

/// The path of a URL as flows carry it (`http://10.200.0.5:8090/public?x` → `/public`).
pub fn url_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map_or(url, |r| r.find('/').map_or("/", |i| &r[i..]));
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// Waits up to `timeout` for the request flow of `q` with `verdict` and `direction` in the
/// observer of `node` (at `socket`); returns it, or the request flows seen and the last error.
pub async fn wait_for_l7(
    node: &str,
    socket: &Path,
    q: &L7Query,
    verdict: &str,
    direction: &str,
    timeout: Duration,
) -> Result<L7Seen, (Vec<L7Seen>, Option<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let (seen, last_error) = match flows(node, socket, q.request()).await {
            Ok(fs) => (
                fs.iter()
                    .filter_map(|f| q.matches(f))
                    .map(|mut s| {
                        if s.node.is_empty() {
                            node.clone_into(&mut s.node);
                        }
                        s
                    })
                    .collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e)),
        };
        if let Some(hit) = seen
            .iter()
            .find(|s| s.verdict == verdict && s.direction == direction)
        {
            return Ok(hit.clone());
        }
        if Instant::now() > deadline {
            return Err((seen, last_error));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The L7 DNS flow of a DNS cell: the client's query for a name.
#[derive(Clone, Debug)]
pub struct DnsQuery {
    /// The client.
    pub src: Ipv4Addr,
    /// The name asked, lower-case with the trailing dot, as flows carry it.
    pub query: String,
    /// Flows from this time on.
    pub since: SystemTime,
}

/// An L7 DNS flow seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSeen {
    /// FORWARDED, DROPPED.
    pub verdict: String,
    /// Hubble's summary (`DNS Query world.ciliate.test. A`).
    pub summary: String,
    /// The node whose observer reported it.
    pub node: String,
}

impl std::fmt::Display for DnsSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DNS {} {} on {}", self.verdict, self.summary, self.node)
    }
}

impl DnsQuery {
    /// `hubble observe --protocol dns --from-ip <client>` and the query name: the client's
    /// queries only (its answers run from the resolver).
    fn request(&self) -> GetFlowsRequest {
        let filter = FlowFilter {
            source_ip: vec![self.src.to_string()],
            protocol: vec!["dns".into()],
            dns_query: vec![format!("^{}$", regex::escape(&self.query))],
            ..FlowFilter::default()
        };
        GetFlowsRequest {
            number: 0,
            first: false,
            follow: false,
            whitelist: vec![filter],
            blacklist: Vec::new(),
            since: Some(system_time_to_timestamp(self.since)),
            until: None,
            field_mask: None,
        }
    }
}

/// Waits until the observer of `node` holds the client's DNS query with `verdict`; on
/// timeout, the DNS flows it has for the query and the last error.
pub async fn wait_for_dns(
    node: &str,
    socket: &Path,
    q: &DnsQuery,
    verdict: &str,
    timeout: Duration,
) -> Result<DnsSeen, (Vec<DnsSeen>, Option<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let (seen, last_error) = match flows(node, socket, q.request()).await {
            Ok(fs) => (
                fs.iter()
                    .filter(|f| ciliate_observer::l7::dns(f).is_some())
                    .map(|f| DnsSeen {
                        verdict: Verdict::try_from(f.verdict)
                            .map_or_else(|_| f.verdict.to_string(), |v| v.as_str_name().to_owned()),
                        summary: f.summary.clone(),
                        node: if f.node_name.is_empty() {
                            node.to_owned()
                        } else {
                            lab_node(&f.node_name)
                        },
                    })
                    .collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e)),
        };
        if let Some(hit) = seen.iter().find(|s| s.verdict == verdict) {
            return Ok(hit.clone());
        }
        if Instant::now() > deadline {
            return Err((seen, last_error));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Hubble's name of a drop reason code, for the ones a policy test meets.
pub fn reason_name(code: u32) -> String {
    use ciliate_observer::proto::flow::DropReason;
    i32::try_from(code)
        .ok()
        .and_then(|c| DropReason::try_from(c).ok())
        .map_or_else(
            || code.to_string(),
            |r| format!("{code} {}", r.as_str_name()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_filter_the_cell() {
        let q = Query {
            src: Ipv4Addr::new(10, 200, 0, 3),
            dst: vec![Ipv4Addr::new(10, 96, 200, 10), Ipv4Addr::new(10, 200, 0, 5)],
            proto: Proto::Tcp,
            port: 8080,
            since: SystemTime::UNIX_EPOCH,
        };
        let r = q.request();
        let f = &r.whitelist[0];
        assert_eq!(f.source_ip, ["10.200.0.3"]);
        assert_eq!(f.destination_ip, ["10.96.200.10", "10.200.0.5"]);
        assert_eq!(f.destination_port, ["8080"]);
        assert_eq!(f.verdict, [Verdict::Dropped as i32]);
        assert!(!r.follow && r.number == 0 && r.since.is_some());
        let icmp = Query {
            proto: Proto::Icmp,
            ..q
        }
        .request();
        assert!(icmp.whitelist[0].destination_port.is_empty());
        assert_eq!(icmp.whitelist[0].protocol, ["icmp"]);
        assert_eq!(reason_name(133), "133 POLICY_DENIED");
        assert_eq!(reason_name(181), "181 POLICY_DENY");
    }

    #[test]
    fn l7_requests_filter_the_request() {
        let q = L7Query {
            src: Ipv4Addr::new(10, 200, 0, 3),
            dst: vec![Ipv4Addr::new(10, 200, 1, 5)],
            request: Request {
                method: "PUT",
                path: "/public",
                token: true,
            },
            since: SystemTime::UNIX_EPOCH,
        };
        let f = &q.request().whitelist[0];
        assert_eq!(f.http_method, ["PUT"]);
        assert_eq!(f.event_type[0].r#type, 129);
        assert_eq!(f.destination_ip, ["10.200.1.5"]);
        assert_eq!(url_path("http://10.200.1.5:8090/public"), "/public");
        assert_eq!(url_path("http://10.200.1.5:8090/public?a=b"), "/public");
        assert_eq!(url_path("http://host"), "/");
        assert_eq!(url_path("/private"), "/private");
    }
}
