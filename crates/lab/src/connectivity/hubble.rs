//! The drops of a cell, as the node that dropped them reports them: Hubble's `GetFlows` on the
//! node's observer socket, through the client `ciliate observe` uses.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ciliate_observer::convert::system_time_to_timestamp;
use ciliate_observer::proto::flow::{FlowFilter, Verdict};
use ciliate_observer::proto::observer::{get_flows_response::ResponseTypes, GetFlowsRequest};

use super::scenarios::Proto;

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
            Proto::Tcp => {
                filter.protocol = vec!["tcp".into()];
                filter.destination_port = vec![self.port.to_string()];
            }
            Proto::Udp => {
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
        }
    }
}

/// The drops matching `q` that `node`'s observer (at `socket`) has.
pub async fn drops(node: &str, socket: &Path, q: &Query) -> Result<Vec<Seen>, String> {
    let mut client = ciliate_observer::server::connect_unix(socket.to_owned())
        .await
        .map_err(|e| {
            format!(
                "cannot reach the observer of {node} at {}: {e}",
                socket.display()
            )
        })?;
    let mut stream = client
        .get_flows(q.request())
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
                    out.push(Seen {
                        reason: f.drop_reason,
                        node: if f.node_name.is_empty() {
                            node.to_owned()
                        } else {
                            f.node_name
                        },
                    });
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
}
