//! Hubble's `observer.Observer` gRPC service over the [`Observer`], on a unix socket and
//! optionally TCP.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::fieldmask::FlowMask;
use crate::filter::FlowFilters;
use crate::proto::flow::{Flow, LostEvent, LostEventSource};
use crate::proto::observer::observer_server::{Observer as ObserverApi, ObserverServer};
use crate::proto::observer::{
    get_flows_response, GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, Node,
    ServerStatusRequest, ServerStatusResponse, Tls,
};
use crate::proto::relay::NodeState;
use crate::ring::{Entry, Numbered, Observer};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Service {
    observer: Arc<Observer>,
    version: String,
    address: String,
}

impl Service {
    /// A service over `observer`; `version` is reported in ServerStatus and GetNodes, `address`
    /// (where clients reach it) in GetNodes.
    pub fn new(observer: Arc<Observer>, version: &str, address: &str) -> Self {
        Self {
            observer,
            version: version.to_owned(),
            address: address.to_owned(),
        }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> ObserverServer<Self> {
        ObserverServer::new(self)
    }
}

fn ts_key(ts: &pbjson_types::Timestamp) -> (i64, i32) {
    (ts.seconds, ts.nanos)
}

fn entry_time(e: &Entry) -> Option<(i64, i32)> {
    e.time().as_ref().map(ts_key)
}

/// A request's time bound, refused when it is no valid protobuf Timestamp. A time in the
/// future is valid: `since` then matches only flows yet to come (none without follow).
fn valid_time(
    field: &str,
    t: Option<&pbjson_types::Timestamp>,
) -> Result<Option<(i64, i32)>, Status> {
    let Some(t) = t else { return Ok(None) };
    // Timestamp's documented range: 0001-01-01 to 9999-12-31, nanos in 0..1e9.
    if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds)
        || !(0..1_000_000_000).contains(&t.nanos)
    {
        return Err(Status::invalid_argument(format!(
            "{field} is not a valid timestamp (seconds {}, nanos {})",
            t.seconds, t.nanos
        )));
    }
    Ok(Some(ts_key(t)))
}

/// A compiled GetFlows request: which entries it wants.
#[derive(Debug)]
pub struct Query {
    filters: FlowFilters,
    mask: Option<FlowMask>,
    since: Option<(i64, i32)>,
    until: Option<(i64, i32)>,
    number: u64,
    first: bool,
    follow: bool,
}

impl Query {
    /// Compiles a request, refusing bad filters and contradictory options.
    pub fn new(req: &GetFlowsRequest) -> Result<Self, Status> {
        let filters = FlowFilters::compile(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.first && req.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        let mask = FlowMask::new(req.field_mask.as_ref().map_or(&[][..], |m| &m.paths[..]))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let since = valid_time("since", req.since.as_ref())?;
        let until = valid_time("until", req.until.as_ref())?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err(Status::invalid_argument(
                    "since is after until: no flow can match",
                ));
            }
        }
        Ok(Self {
            filters,
            mask,
            since,
            until,
            number: req.number,
            first: req.first,
            follow: req.follow,
        })
    }

    /// Whether an entry is wanted (time window and filters; lost events pass every filter).
    pub fn wants(&self, e: &Entry) -> bool {
        let t = entry_time(e);
        if let (Some(since), Some(t)) = (self.since, t) {
            if t < since {
                return false;
            }
        }
        if let (Some(until), Some(t)) = (self.until, t) {
            if t > until {
                return false;
            }
        }
        // An event's flow is built to be filtered (and again when sent: only the few a
        // request wants are kept, not their flows).
        e.flow().is_none_or(|f| self.filters.matches(&f))
    }

    /// What the request gets from the ring: the first or last `number` wanted entries (all of
    /// them when `number` is 0 and a time window or nothing bounds them), oldest first.
    pub fn select(&self, ring: &[Numbered]) -> Vec<Numbered> {
        let wanted = ring.iter().filter(|n| self.wants(&n.entry));
        let limit = if self.number == 0 {
            if self.follow && self.since.is_none() {
                0
            } else {
                usize::MAX
            }
        } else {
            usize::try_from(self.number).unwrap_or(usize::MAX)
        };
        if self.first {
            wanted.take(limit).cloned().collect()
        } else {
            let mut v: Vec<Numbered> = wanted.rev().take(limit).cloned().collect();
            v.reverse();
            v
        }
    }
}

fn response(e: &Entry, node_name: &str, mask: Option<&FlowMask>) -> GetFlowsResponse {
    match (e.flow(), e) {
        (Some(f), _) => GetFlowsResponse {
            time: f.time,
            response_types: Some(get_flows_response::ResponseTypes::Flow(match mask {
                Some(m) => m.apply(&f),
                None => f.into_owned(),
            })),
            node_name: node_name.to_owned(),
        },
        (None, Entry::Lost(l, t)) => GetFlowsResponse {
            response_types: Some(get_flows_response::ResponseTypes::LostEvents(*l)),
            node_name: node_name.to_owned(),
            time: Some(*t),
        },
        (None, _) => GetFlowsResponse::default(),
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ObserverApi for Service {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let query = Query::new(request.get_ref())?;
        let (ring, mut live) = self.observer.snapshot_and_follow();
        let node = self.observer.config().node_name.clone();
        let mut history = query.select(&ring);
        // Flows older than the ring's, from the flow history (see history::get_flows).
        let older = crate::history::get_flows::older(
            &self.observer,
            request.get_ref(),
            &ring,
            history.len(),
        );
        let mut last_seq = ring.last().map(|n| n.seq).unwrap_or(0);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            if let Some(older) = older {
                let first = older.takes_first();
                let Some(sent) = older.send(&tx, &node).await else {
                    return;
                };
                if first && query.number > 0 {
                    let left = query.number.saturating_sub(sent);
                    history.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                }
            }
            for n in history {
                if tx
                    .send(Ok(response(&n.entry, &node, query.mask.as_ref())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if !query.follow {
                return;
            }
            loop {
                let n = match live.recv().await {
                    Ok(n) => n,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // This client fell behind: say so, as Hubble does, and go on.
                        let lost = Entry::Lost(
                            LostEvent {
                                source: LostEventSource::HubbleRingBuffer as i32,
                                num_events_lost: missed,
                                ..LostEvent::default()
                            },
                            crate::convert::system_time_to_timestamp(std::time::SystemTime::now()),
                        );
                        if tx.send(Ok(response(&lost, &node, None))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if n.seq <= last_seq {
                    continue;
                }
                last_seq = n.seq;
                if let (Some(until), Some(t)) = (query.until, entry_time(&n.entry)) {
                    if t > until {
                        return;
                    }
                }
                if query.wants(&n.entry)
                    && tx
                        .send(Ok(response(&n.entry, &node, query.mask.as_ref())))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let o = &self.observer;
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: o.config().node_name.clone(),
                version: self.version.clone(),
                address: self.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: Some(Tls {
                    enabled: false,
                    server_name: String::new(),
                }),
                uptime_ns: o.uptime_ns(),
                num_flows: o.num_flows(),
                max_flows: o.config().capacity as u64,
                seen_flows: o.seen_flows(),
            }],
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let o = &self.observer;
        let ring = o.snapshot();
        let full = ring.len() >= o.config().capacity;
        let flows_rate = flows_rate(&ring, full, std::time::SystemTime::now());
        Ok(Response::new(ServerStatusResponse {
            num_flows: o.num_flows(),
            max_flows: o.config().capacity as u64,
            seen_flows: o.seen_flows(),
            uptime_ns: o.uptime_ns(),
            num_connected_nodes: Some(pbjson_types::UInt32Value { value: 1 }),
            num_unavailable_nodes: Some(pbjson_types::UInt32Value { value: 0 }),
            unavailable_nodes: Vec::new(),
            version: self.version.clone(),
            flows_rate,
        }))
    }
}

/// Flows per second over the last minute, as Hubble's `getFlowRate`: the flows of the ring
/// newer than a minute ago, over that minute; when the ring has been overwritten within the
/// minute, over the time since its oldest flow instead.
pub fn flows_rate(ring: &[Numbered], full: bool, now: std::time::SystemTime) -> f64 {
    let to_secs = |t: (i64, i32)| t.0 as f64 + f64::from(t.1) / 1e9;
    let now = crate::convert::system_time_to_timestamp(now);
    let now = to_secs(ts_key(&now));
    let mut since = now - 60.0;
    let (mut count, mut oldest) = (0u64, None);
    let mut in_minute_to_the_start = true;
    for n in ring.iter().rev() {
        if !n.entry.is_flow() {
            continue;
        }
        let Some(t) = n.entry.time().as_ref().map(|t| to_secs(ts_key(t))) else {
            continue;
        };
        if t < since {
            in_minute_to_the_start = false;
            break;
        }
        oldest = Some(t);
        count += 1;
    }
    if full && in_minute_to_the_start {
        if let Some(t) = oldest {
            since = t;
        }
    }
    let span = now - since;
    if span <= 0.0 {
        return 0.0;
    }
    count as f64 / span
}

/// Why the observer server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket or TCP address could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The socket path or address.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("observer gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds a unix socket at `path` for the observer (replacing a stale file), mode 0660.
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let bind = |source| ServeError::Bind {
        what: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(bind)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(bind(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another server answers on this socket; stop it or pass another --hubble-socket",
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind)?;
    Ok(listener)
}

/// The name `hubble status` checks in the health service (Hubble's `ObserverServiceName`).
pub const HUBBLE_HEALTH_SERVICE: &str = "hubble.server.Observer";

/// The observer and the standard gRPC health service (`grpc.health.v1.Health`, which
/// `hubble status` asks first), reporting SERVING for the server (""), the gRPC service
/// (`observer.Observer`) and the name Hubble's CLI asks for (`hubble.server.Observer`).
async fn routes(service: Service) -> tonic::service::Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<ObserverServer<Service>>().await;
    reporter
        .set_service_status(HUBBLE_HEALTH_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    tonic::service::Routes::new(health).add_service(service.into_server())
}

/// How many bytes a unix connection's relay buffers between the client and the server.
const RELAY_BUFFER: usize = 64 * 1024;

/// Serves `service` on `listener` until `shutdown` resolves. Every connection goes through
/// [`authority::relay`](crate::authority::relay), so gRPC C-core and Java clients, which send
/// the socket path as `:authority`, are served too.
pub async fn serve_unix(
    service: Service,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (tx, rx) = mpsc::channel::<std::io::Result<tokio::io::DuplexStream>>(16);
    let acceptor = tokio::spawn(async move {
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    // Out of descriptors and the like: say so and go on accepting.
                    tracing::warn!(error = %e, "observer socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (near, far) = tokio::io::duplex(RELAY_BUFFER);
            tokio::spawn(async move {
                if let Err(e) = crate::authority::relay(client, near).await {
                    tracing::debug!(error = %e, "observer socket: connection ended");
                }
            });
            if tx.send(Ok(far)).await.is_err() {
                return;
            }
        }
    });
    let served = tonic::transport::Server::builder()
        .add_routes(routes(service).await)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    acceptor.abort();
    served?;
    Ok(())
}

/// Serves `service` on a TCP listener until `shutdown` resolves.
pub async fn serve_tcp(
    service: Service,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_routes(routes(service).await)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// A client of the observer API over a unix socket (what `ciliate observe` uses).
pub async fn connect_unix(
    path: PathBuf,
) -> Result<
    crate::proto::observer::observer_client::ObserverClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(crate::proto::observer::observer_client::ObserverClient::new(channel))
}

/// Used by tests that need a flow quickly.
#[doc(hidden)]
pub fn flow_response(flow: Flow, node: &str) -> GetFlowsResponse {
    response(&Entry::Flow(Box::new(flow)), node, None)
}
