//! Hubble's `observer.Observer` service over the cluster: GetFlows merges the nodes' streams
//! ([`crate::flows`]), ServerStatus sums the nodes' counts and names the missing ones, GetNodes
//! lists every node with its state.

use std::pin::Pin;
use std::time::{Duration, Instant};

use ciliate_observer::proto::observer::observer_server::{Observer as ObserverApi, ObserverServer};
use ciliate_observer::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, Node,
    ServerStatusRequest, ServerStatusResponse, Tls,
};
use ciliate_observer::proto::relay::NodeState;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::flows::{get_flows, MergeConfig};
use crate::pool::{PeerView, Pool};

/// Hubble relay reports at most this many unavailable nodes in ServerStatus (the count is
/// complete).
pub const UNAVAILABLE_NODES_REPORT_MAX: usize = 10;

/// The relay's Observer service.
#[derive(Clone, Debug)]
pub struct RelayService {
    pool: Pool,
    merge: MergeConfig,
    version: String,
    /// Bound on each node's answer to ServerStatus.
    status_timeout: Duration,
    started: Instant,
}

impl RelayService {
    /// The service over the nodes of `pool`.
    pub fn new(pool: Pool, merge: MergeConfig, version: &str, status_timeout: Duration) -> Self {
        Self {
            pool,
            merge,
            version: version.to_owned(),
            status_timeout,
            started: Instant::now(),
        }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> ObserverServer<Self> {
        ObserverServer::new(self)
    }

    /// Each node with its ServerStatus, or why there is none; asked concurrently.
    async fn statuses(&self) -> Vec<(PeerView, Result<ServerStatusResponse, String>)> {
        let asks = self.pool.list().into_iter().map(|p| async move {
            let status = match p.client.clone() {
                None => Err(p.reason.clone().unwrap_or_else(|| "not connected".into())),
                Some(mut c) => {
                    match tokio::time::timeout(
                        self.status_timeout,
                        c.server_status(ServerStatusRequest {}),
                    )
                    .await
                    {
                        Ok(Ok(r)) => Ok(r.into_inner()),
                        Ok(Err(s)) => {
                            self.pool.report_failure(&p.name);
                            Err(s.message().to_owned())
                        }
                        Err(_) => {
                            self.pool.report_failure(&p.name);
                            Err("no answer to ServerStatus in time".into())
                        }
                    }
                }
            };
            if let Err(e) = &status {
                if p.client.is_some() {
                    warn!(node = p.name, error = e, "failed to retrieve server status");
                }
            }
            (p, status)
        });
        futures::future::join_all(asks).await
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ObserverApi for RelayService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let rx = get_flows(&self.pool, &self.merge, request.into_inner())?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let nodes = self
            .statuses()
            .await
            .into_iter()
            .map(|(p, status)| {
                let mut n = Node {
                    name: p.name,
                    address: p.address,
                    state: p.state as i32,
                    tls: Some(Tls {
                        enabled: false,
                        server_name: String::new(),
                    }),
                    ..Node::default()
                };
                match status {
                    Ok(s) => {
                        n.version = s.version;
                        n.uptime_ns = s.uptime_ns;
                        n.num_flows = s.num_flows;
                        n.max_flows = s.max_flows;
                        n.seen_flows = s.seen_flows;
                    }
                    Err(_) if p.state == NodeState::NodeConnected => {
                        n.state = NodeState::NodeError as i32;
                    }
                    Err(_) => {}
                }
                n
            })
            .collect();
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let mut resp = ServerStatusResponse {
            version: self.version.clone(),
            ..ServerStatusResponse::default()
        };
        let (mut connected, mut unavailable) = (0u32, 0u32);
        for (p, status) in self.statuses().await {
            match status {
                Ok(s) => {
                    connected += 1;
                    resp.num_flows += s.num_flows;
                    resp.max_flows += s.max_flows;
                    resp.seen_flows += s.seen_flows;
                    resp.flows_rate += s.flows_rate;
                    // The oldest node's uptime: summing uptimes means nothing.
                    resp.uptime_ns = resp.uptime_ns.max(s.uptime_ns);
                }
                Err(_) => {
                    unavailable += 1;
                    if resp.unavailable_nodes.len() < UNAVAILABLE_NODES_REPORT_MAX {
                        resp.unavailable_nodes.push(p.name);
                    }
                }
            }
        }
        if connected == 0 {
            resp.uptime_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        }
        resp.num_connected_nodes = Some(pbjson_types::UInt32Value { value: connected });
        resp.num_unavailable_nodes = Some(pbjson_types::UInt32Value { value: unavailable });
        Ok(Response::new(resp))
    }
}
