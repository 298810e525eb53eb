//! GetFlows across the cluster: the request goes to every connected node as is (filters,
//! time window, number, follow); their answers are merged in time order by a [`SortBuffer`]
//! and cut to what the request asked of the whole cluster (`number` means the N newest, or
//! with `first` the N oldest, cluster-wide). Node status events tell the client which nodes
//! answer and which are missing, at the start and whenever a node goes away or comes back
//! during `follow`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use ciliate_observer::convert::system_time_to_timestamp;
use ciliate_observer::proto::observer::observer_client::ObserverClient;
use ciliate_observer::proto::observer::{get_flows_response, GetFlowsRequest, GetFlowsResponse};
use ciliate_observer::proto::relay::{NodeState, NodeStatusEvent};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{debug, warn};

use crate::pool::{error_chain, Pool};
use crate::sort::{SortBuffer, SourceId, Time};

/// How GetFlows merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeConfig {
    /// The most responses waiting to be sorted (`--sort-buffer-len-max`).
    pub sort_buffer_len_max: usize,
    /// The longest a response waits for slower nodes (`--sort-buffer-drain-timeout`).
    pub sort_buffer_drain_timeout: Duration,
    /// The relay's name in the node status events it sends.
    pub relay_name: String,
}

impl Default for MergeConfig {
    fn default() -> Self {
        Self {
            sort_buffer_len_max: 4096,
            sort_buffer_drain_timeout: Duration::from_secs(1),
            relay_name: "ciliate-relay".into(),
        }
    }
}

/// What the node tasks hand the merger.
enum FromNode {
    Response(SourceId, Box<GetFlowsResponse>),
    /// The node's stream ended: `None` normally, `Some(status)` when it failed.
    Ended(SourceId, Option<Status>),
}

fn ts(t: &pbjson_types::Timestamp) -> Time {
    (t.seconds, t.nanos)
}

fn time_of(r: &GetFlowsResponse) -> Option<Time> {
    r.time.as_ref().map(ts).or_else(|| match &r.response_types {
        Some(get_flows_response::ResponseTypes::Flow(f)) => f.time.as_ref().map(ts),
        _ => None,
    })
}

/// A node status event from the relay.
pub fn node_status(
    relay: &str,
    state: NodeState,
    nodes: Vec<String>,
    message: String,
) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(get_flows_response::ResponseTypes::NodeStatus(
            NodeStatusEvent {
                state_change: state as i32,
                node_names: nodes,
                message,
            },
        )),
        node_name: relay.to_owned(),
        time: Some(system_time_to_timestamp(SystemTime::now())),
    }
}

/// Cuts the merged stream to what the request asked of the whole cluster.
#[derive(Debug)]
struct Cut {
    /// `number` without `first`: the newest N are kept until the history is complete.
    last: Option<VecDeque<GetFlowsResponse>>,
    cap: usize,
    /// `number` with `first`: how many may still go.
    remaining: Option<u64>,
    /// With follow: entries up to this time are history (they were in the rings before the
    /// request); the first newer entry ends the history.
    history_until: Option<Time>,
}

impl Cut {
    fn new(req: &GetFlowsRequest, started: Time) -> Self {
        let cap = usize::try_from(req.number).unwrap_or(usize::MAX);
        let last = (req.number > 0 && !req.first).then(|| VecDeque::with_capacity(cap.min(8192)));
        Self {
            history_until: (last.is_some() && req.follow).then_some(started),
            last,
            cap,
            remaining: (req.number > 0 && req.first).then_some(req.number),
        }
    }

    /// Whether no more entries are wanted.
    fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Takes one merged entry; returns what may be sent now.
    fn take(&mut self, r: GetFlowsResponse) -> Vec<GetFlowsResponse> {
        if let Some(n) = self.remaining.as_mut() {
            if *n == 0 {
                return Vec::new();
            }
            *n -= 1;
            return vec![r];
        }
        let Some(ring) = self.last.as_mut() else {
            return vec![r];
        };
        if let (Some(until), Some(t)) = (self.history_until, time_of(&r)) {
            if t > until {
                let mut out = self.end_history();
                out.push(r);
                return out;
            }
        }
        if ring.len() == self.cap {
            ring.pop_front();
        }
        ring.push_back(r);
        Vec::new()
    }

    /// The history is complete: the kept entries go, and everything after goes at once.
    fn end_history(&mut self) -> Vec<GetFlowsResponse> {
        self.history_until = None;
        self.last.take().map(Vec::from).unwrap_or_default()
    }

    fn in_history(&self) -> bool {
        self.last.is_some()
    }
}

/// One node being read for this request.
#[derive(Debug)]
struct Reading {
    name: String,
    /// The newest time it sent, to resume after it without repeats if it comes back.
    last: Option<Time>,
    open: bool,
}

/// The merger of one GetFlows request.
struct Merge {
    pool: Pool,
    cfg: MergeConfig,
    req: GetFlowsRequest,
    started: Time,
    buffer: SortBuffer<GetFlowsResponse>,
    readings: Vec<Reading>,
    by_name: BTreeMap<String, SourceId>,
    tasks: JoinSet<()>,
    from_nodes: mpsc::Sender<FromNode>,
    out: mpsc::Sender<Result<GetFlowsResponse, Status>>,
}

/// Starts GetFlows for `req` over the nodes of `pool`. Refuses what no node would take.
pub fn get_flows(
    pool: &Pool,
    cfg: &MergeConfig,
    req: GetFlowsRequest,
) -> Result<mpsc::Receiver<Result<GetFlowsResponse, Status>>, Status> {
    // Judged as the agents judge it (filters, times, field mask), once, not once per node.
    ciliate_observer::server::Query::new(&req)?;
    let (out, rx) = mpsc::channel(1024);
    let (from_nodes, from_rx) = mpsc::channel(4096);
    let merge = Merge {
        pool: pool.clone(),
        buffer: SortBuffer::new(cfg.sort_buffer_len_max, cfg.sort_buffer_drain_timeout),
        cfg: cfg.clone(),
        started: ts(&system_time_to_timestamp(SystemTime::now())),
        req,
        readings: Vec::new(),
        by_name: BTreeMap::new(),
        tasks: JoinSet::new(),
        from_nodes,
        out,
    };
    tokio::spawn(merge.run(from_rx));
    Ok(rx)
}

impl Merge {
    async fn send(&self, r: GetFlowsResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    async fn status(&self, state: NodeState, nodes: Vec<String>, message: String) -> bool {
        if nodes.is_empty() {
            return true;
        }
        self.send(node_status(&self.cfg.relay_name, state, nodes, message))
            .await
    }

    /// Starts reading `name` with `req`: a new source of the buffer (a node coming back gets
    /// a new one; its old one is closed), remembering what we had of it.
    fn start(&mut self, name: String, client: ObserverClient<Channel>, req: GetFlowsRequest) {
        let last = self
            .by_name
            .get(&name)
            .and_then(|&id| self.readings.get(id))
            .and_then(|r| r.last);
        let id = self.buffer.add_source();
        self.readings.push(Reading {
            name: name.clone(),
            last,
            open: true,
        });
        self.by_name.insert(name, id);
        let tx = self.from_nodes.clone();
        self.tasks.spawn(read_node(id, client, req, tx));
    }

    /// The request a node joining (or coming back) during follow gets: only what it saw
    /// after what we already have of it, or after the request started.
    fn late_request(&self, name: &str) -> GetFlowsRequest {
        let after = self
            .by_name
            .get(name)
            .and_then(|&id| self.readings.get(id))
            .and_then(|r| r.last)
            .unwrap_or(self.started);
        let since = (after.0, after.1 + 1);
        let since = if since.1 >= 1_000_000_000 {
            (since.0 + 1, 0)
        } else {
            since
        };
        let mut req = self.req.clone();
        req.number = 0;
        req.first = false;
        let floor = req.since.as_ref().map(ts);
        if floor.is_none_or(|f| f < since) {
            req.since = Some(pbjson_types::Timestamp {
                seconds: since.0,
                nanos: since.1,
            });
        }
        req
    }

    async fn run(mut self, mut from_rx: mpsc::Receiver<FromNode>) {
        let mut changes = self.pool.subscribe();
        changes.mark_unchanged();
        let (mut connected, mut unavailable) = (Vec::new(), Vec::new());
        for p in self.pool.list() {
            match p.client {
                Some(c) => {
                    connected.push(p.name.clone());
                    let req = self.req.clone();
                    self.start(p.name, c, req);
                }
                None if p.state == ciliate_observer::proto::relay::NodeState::NodeUnavailable => {
                    unavailable.push(p.name)
                }
                None => {}
            }
        }
        if !self
            .status(NodeState::NodeConnected, connected, String::new())
            .await
            || !self
                .status(NodeState::NodeUnavailable, unavailable, String::new())
                .await
        {
            return;
        }
        let mut cut = Cut::new(&self.req, self.started);
        let tick = (self.cfg.sort_buffer_drain_timeout / 4).max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // During follow, the history ends at the first live entry or, when nothing new
        // comes, this long after the last entry.
        let history_quiet = self.cfg.sort_buffer_drain_timeout * 2;
        let mut last_entry = Instant::now();
        loop {
            tokio::select! {
                msg = from_rx.recv() => {
                    let Some(msg) = msg else { break };
                    match msg {
                        FromNode::Response(id, r) => {
                            last_entry = Instant::now();
                            match time_of(&r) {
                                Some(t) => {
                                    if let Some(rd) = self.readings.get_mut(id) {
                                        rd.last = Some(rd.last.map_or(t, |l| l.max(t)));
                                    }
                                    self.buffer.push(id, t, *r, last_entry);
                                }
                                // Without a time it cannot be ordered: it goes at once.
                                None => if !self.send(*r).await { return },
                            }
                        }
                        FromNode::Ended(id, error) => {
                            self.buffer.close_source(id);
                            let name = self.readings.get(id).map(|r| r.name.clone()).unwrap_or_default();
                            if let Some(r) = self.readings.get_mut(id) {
                                r.open = false;
                            }
                            if let Some(s) = error {
                                if s.code() == Code::InvalidArgument {
                                    // The nodes refuse the request itself: say so as they do.
                                    let _ = self.out.send(Err(s)).await;
                                    return;
                                }
                                warn!(node = name, error = s.message(), "reading flows of node failed");
                                self.pool.report_failure(&name);
                                if !self.status(NodeState::NodeUnavailable, vec![name], s.message().to_owned()).await {
                                    return;
                                }
                            }
                        }
                    }
                }
                _ = ticker.tick() => {
                    if cut.in_history() && self.req.follow && last_entry.elapsed() >= history_quiet {
                        for r in cut.end_history() {
                            if !self.send(r).await { return }
                        }
                    }
                }
                r = changes.changed(), if self.req.follow => {
                    if r.is_err() { break }
                    if !self.rejoin().await { return }
                }
                () = self.out.closed() => return,
            }
            let now = Instant::now();
            while let Some(r) = self.buffer.pop_ready(now) {
                for r in cut.take(r) {
                    if !self.send(r).await {
                        return;
                    }
                }
            }
            if cut.done() {
                return;
            }
            if !self.req.follow && !self.readings.iter().any(|r| r.open) {
                break;
            }
            if self.req.follow && self.req.until.is_some() && !self.readings.iter().any(|r| r.open)
            {
                // Every node has passed `until`.
                break;
            }
        }
        while let Some(r) = self.buffer.pop_any() {
            for r in cut.take(r) {
                if !self.send(r).await {
                    return;
                }
            }
        }
        for r in cut.end_history() {
            if !self.send(r).await {
                return;
            }
        }
    }

    /// During follow: starts reading nodes that connected since (new ones, or ones back after
    /// going away) and tells the client.
    async fn rejoin(&mut self) -> bool {
        let mut joined = Vec::new();
        for p in self.pool.list() {
            let Some(client) = p.client else { continue };
            let reading = self
                .by_name
                .get(&p.name)
                .and_then(|&id| self.readings.get(id))
                .is_some_and(|r| r.open);
            if reading {
                continue;
            }
            let req = self.late_request(&p.name);
            debug!(node = p.name, "reading flows of node that (re)joined");
            joined.push(p.name.clone());
            self.start(p.name, client, req);
        }
        self.status(NodeState::NodeConnected, joined, String::new())
            .await
    }
}

/// Reads one node's answer to `req` into the merger.
async fn read_node(
    id: SourceId,
    mut client: ObserverClient<Channel>,
    req: GetFlowsRequest,
    tx: mpsc::Sender<FromNode>,
) {
    let mut stream = match client.get_flows(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            let _ = tx.send(FromNode::Ended(id, Some(s))).await;
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(r)) => {
                if tx.send(FromNode::Response(id, Box::new(r))).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(FromNode::Ended(id, None)).await;
                return;
            }
            Err(s) if s.code() == Code::Cancelled => {
                let _ = tx.send(FromNode::Ended(id, None)).await;
                return;
            }
            Err(s) => {
                let s = if s.code() == Code::Unknown || s.code() == Code::Unavailable {
                    let detail = std::error::Error::source(&s)
                        .map(error_chain)
                        .unwrap_or_default();
                    Status::new(
                        s.code(),
                        if detail.is_empty() {
                            s.message().to_owned()
                        } else {
                            format!("{}: {detail}", s.message())
                        },
                    )
                } else {
                    s
                };
                let _ = tx.send(FromNode::Ended(id, Some(s))).await;
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ciliate_observer::proto::flow::Flow;

    fn at(secs: i64) -> GetFlowsResponse {
        GetFlowsResponse {
            response_types: Some(get_flows_response::ResponseTypes::Flow(Flow::default())),
            node_name: String::new(),
            time: Some(pbjson_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
        }
    }

    fn secs(v: &[GetFlowsResponse]) -> Vec<i64> {
        v.iter().map(|r| r.time.unwrap().seconds).collect()
    }

    #[test]
    fn last_n_keeps_the_newest_cluster_wide() {
        let req = GetFlowsRequest {
            number: 2,
            ..Default::default()
        };
        let mut cut = Cut::new(&req, (100, 0));
        for s in 1..=5 {
            assert!(cut.take(at(s)).is_empty());
        }
        assert_eq!(secs(&cut.end_history()), [4, 5]);
    }

    #[test]
    fn first_n_stops_after_n() {
        let req = GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        };
        let mut cut = Cut::new(&req, (100, 0));
        assert_eq!(secs(&cut.take(at(1))), [1]);
        assert!(!cut.done());
        assert_eq!(secs(&cut.take(at(2))), [2]);
        assert!(cut.done());
        assert!(cut.take(at(3)).is_empty());
    }

    #[test]
    fn follow_with_last_n_sends_the_history_at_the_first_live_entry() {
        let req = GetFlowsRequest {
            number: 2,
            follow: true,
            ..Default::default()
        };
        let mut cut = Cut::new(&req, (100, 0));
        for s in [97, 98, 99, 100] {
            assert!(cut.take(at(s)).is_empty());
        }
        assert_eq!(secs(&cut.take(at(101))), [99, 100, 101]);
        assert_eq!(secs(&cut.take(at(102))), [102]);
    }

    #[test]
    fn no_number_passes_everything() {
        let mut cut = Cut::new(&GetFlowsRequest::default(), (100, 0));
        assert_eq!(secs(&cut.take(at(1))), [1]);
        assert!(cut.end_history().is_empty());
    }
}
