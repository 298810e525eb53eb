//! The HTTP API, as documented in [`ciliate_model::api`]: routes, handlers and the mapping of
//! failures to [`ApiError`] bodies with a stable `kind`.
//!
//! Handlers never block an async worker: everything that takes the manager's lock or calls the
//! datapath runs in `spawn_blocking`. A request whose client goes away still completes its
//! transaction, so a change is either fully made or not at all.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ciliate_model::api::{ApiError, EndpointCreateRequest, GcRequest, Health, Status};
use ciliate_model::manifest::raw::{RawApplyRequest, StreamedBatch, STREAM_CONTENT_TYPE};
use ciliate_model::manifest::ApplyRequest;
use ciliate_model::monitor::{EventKind, MonitorEvent};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tracing::{debug, warn};

use crate::config::Config;
use crate::endpoints::{spec_of, EndpointError, EndpointManager, EndpointRef};
use crate::gc::CtGcHealth;
use crate::heap;
use crate::manifests::{self, ApplyError};
use crate::policy::trace::{parse_proto, TraceError, TraceQuery};
use crate::policy::PolicyManager;
use crate::services::{ServiceError, ServiceManager};

/// Largest `POST /v1/manifests` body: 10,000 Services with their EndpointSlices are about
/// 15 MB of JSON; the limit stops a runaway client, not a big cluster.
pub const MAX_MANIFEST_BODY: usize = 256 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The configuration in force (served at `/v1/config`).
    pub config: Arc<Config>,
    /// The endpoint manager (which holds the datapath).
    pub manager: Arc<EndpointManager>,
    /// The Services.
    pub services: Arc<ServiceManager>,
    /// The network policies.
    pub policies: Arc<PolicyManager>,
    /// The FQDN cache (names learned from DNS answers, for `toFQDNs`).
    pub fqdn: Arc<crate::fqdn::FqdnManager>,
    /// The cluster, when the node is part of one.
    pub cluster: Option<Arc<crate::cluster::ClusterMember>>,
    /// Outcome of the last conntrack GC pass.
    pub ct_gc: Arc<CtGcHealth>,
    /// API request counts and latencies, for the agent metrics.
    pub api_metrics: Arc<crate::metrics::ApiMetrics>,
    /// When the agent started.
    pub started: Instant,
    /// Turns true when the agent shuts down; ends monitor streams.
    pub shutdown: watch::Receiver<bool>,
    /// The flow history, when kept (`policy whatif` replays it).
    pub flow_history: Option<ciliate_observer::history::FlowHistory>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("node", &self.config.node_name)
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

/// A failed request: an HTTP status and an [`ApiError`] body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub error: ApiError,
}

impl ApiFailure {
    /// A failure with this status, kind and message.
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error: ApiError {
                kind: kind.to_owned(),
                message: message.into(),
            },
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.error)).into_response()
    }
}

impl From<ServiceError> for ApiFailure {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::Exhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.kind(), e.to_string())
    }
}

impl From<ApplyError> for ApiFailure {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Services(e) => e.into(),
            e @ ApplyError::Invalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, e.kind(), e.to_string())
            }
            e @ ApplyError::State(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.kind(), e.to_string())
            }
        }
    }
}

impl From<TraceError> for ApiFailure {
    fn from(e: TraceError) -> Self {
        match e {
            TraceError::Invalid(m) => Self::invalid(m),
            TraceError::NotFound(m) => Self::not_found(m),
        }
    }
}

impl From<EndpointError> for ApiFailure {
    fn from(e: EndpointError) -> Self {
        let status = match &e {
            EndpointError::Invalid(_) => StatusCode::BAD_REQUEST,
            EndpointError::NotFound(_) => StatusCode::NOT_FOUND,
            EndpointError::Conflict(_) => StatusCode::CONFLICT,
            // Nothing is wrong with the request; the node is full until something is deleted.
            EndpointError::Exhausted(_)
            | EndpointError::Cluster(_)
            | EndpointError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            EndpointError::Datapath { .. } | EndpointError::State(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, e.kind(), e.to_string())
    }
}

/// A JSON body whose rejection is an [`ApiError`] like every other failure.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(r) => Err(ApiFailure::new(
                r.status(),
                "invalid",
                format!(
                    "{}; see the request types in the API documentation",
                    r.body_text()
                ),
            )),
        }
    }
}

/// The API router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/v1/config", get(config))
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/gc", post(gc_endpoints))
        .route(
            "/v1/endpoints/{ref}",
            get(get_endpoint).delete(delete_endpoint),
        )
        .route("/v1/identities", get(list_identities))
        .route("/v1/identities/{id}", get(get_identity))
        .route("/v1/bpf/ct", get(ct_entries))
        .route(
            "/v1/manifests",
            post(apply_manifests).layer(DefaultBodyLimit::max(MAX_MANIFEST_BODY)),
        )
        .route("/v1/policies", get(list_policies))
        .route(
            "/v1/policies/validate",
            post(validate_policies).layer(DefaultBodyLimit::max(MAX_MANIFEST_BODY)),
        )
        .route("/v1/policies/{kind}/{name}", get(get_clusterwide_policy))
        .route("/v1/policies/{kind}/{namespace}/{name}", get(get_policy))
        .route("/v1/policy/trace", get(trace_policy))
        .route("/v1/policy/whatif", post(policy_whatif))
        .route("/v1/policy/revision", get(policy_revision))
        .route("/v1/bpf/policy/{ref}", get(bpf_policy))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{namespace}/{name}", get(get_service))
        .route("/v1/bpf/lb", get(lb_state))
        .route("/v1/bpf/ipcache", get(bpf_ipcache))
        .route("/v1/bpf/endpoints", get(bpf_endpoints))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/monitor", get(monitor))
        .route(
            "/v1/fqdn/cache",
            get(list_fqdn_cache).delete(clean_fqdn_cache),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.api_metrics),
            crate::metrics::track,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn log_request(req: Request, next: Next) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let start = Instant::now();
    let resp = next.run(req).await;
    debug!(%method, %uri, status = resp.status().as_u16(), elapsed_ms = start.elapsed().as_millis() as u64, "request");
    resp
}

async fn no_route(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::not_found(format!(
        "no such API route: {method} {}; the routes are listed in the API documentation (e.g. GET /v1/status)",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!(
            "{} does not accept {method}; see the API documentation for its methods",
            uri.path()
        ),
    )
}

/// Runs blocking work (the manager's lock, datapath syscalls, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiFailure> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiFailure::internal(format!(
            "the request failed inside the agent ({e}); see the agent's log"
        ))
    })
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

async fn status(State(s): State<AppState>) -> Result<Json<Status>, ApiFailure> {
    Ok(Json(blocking(move || collect_status(&s)).await?))
}

/// The node's status (`GET /v1/status`, and the agent metrics). Takes the stores' locks
/// briefly and counts map entries: call from blocking code.
pub fn collect_status(s: &AppState) -> Status {
    let (m, datapath, svc, pol) = (
        s.manager.status(),
        s.manager.datapath().status(),
        s.services.status(),
        s.policies.status(),
    );
    let mut problems = m.problems;
    problems.extend(svc.problems);
    problems.extend(pol.problems);
    if !datapath.loaded {
        problems.insert(0, format!("the {} datapath is not loaded", datapath.kind));
    }
    if let Some(e) = s.ct_gc.last_error() {
        problems.push(e);
    }
    let cluster = s.cluster.as_ref().map(|c| c.status());
    if let Some(c) = cluster.as_ref().filter(|c| !c.connected) {
        let seen = match c.saved_view_unix {
            Some(t) => format!("using the cluster state saved at {t} (unix time)"),
            None => "forwarding with the cluster as last seen".to_owned(),
        };
        problems.push(format!(
            "etcd ({}) is unreachable: {seen}; new pods cannot get an identity",
            c.etcd.join(",")
        ));
    }
    Status {
        node: s.config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: s.started.elapsed().as_secs(),
        health: if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .to_owned(),
        problems,
        datapath,
        endpoints: m.endpoints,
        identities: m.identities,
        ipam: m.ipam,
        services: svc.services,
        backends: svc.backends,
        policies: pol.policies,
        cluster,
        datapath_repairs: m.datapath_repairs,
        endpoints_vanished: m.endpoints_vanished,
        proxy: Some(ciliate_model::api::ProxyStatus {
            redirected_packets: s.manager.datapath().proxy_redirects(),
            ..pol.proxy
        }),
    }
}

async fn config(State(s): State<AppState>) -> Json<Config> {
    Json((*s.config).clone())
}

async fn list_endpoints(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let eps = blocking(move || s.manager.list()).await?;
    Ok(Json(eps).into_response())
}

/// `?ifname=` of `GET` and `DELETE /v1/endpoints/{ref}`: the reference is then a container id
/// (never an endpoint id, whatever its characters) and the attachment is (container id,
/// ifname), as CNI names it.
#[derive(Debug, serde::Deserialize)]
struct AttachmentParams {
    ifname: Option<String>,
}

async fn get_endpoint(
    State(s): State<AppState>,
    reference: Result<Path<String>, PathRejection>,
    params: Result<Query<AttachmentParams>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let Path(reference) = reference.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    if let Some(ifname) = params.ifname {
        let (cid, ifn) = (reference.clone(), ifname.clone());
        return match blocking(move || s.manager.get_attachment(&cid, &ifn)).await? {
            Some(ep) => Ok(Json(ep).into_response()),
            None => Err(ApiFailure::not_found(format!(
                "no endpoint for container {reference} interface {ifname} on this node"
            ))),
        };
    }
    let r = EndpointRef::parse(&reference);
    let found = {
        let r = r.clone();
        blocking(move || s.manager.get(&r)).await?
    };
    match found {
        Some(ep) => Ok(Json(ep).into_response()),
        None => Err(ApiFailure::not_found(format!(
            "no endpoint with {r} on this node; list them with GET /v1/endpoints"
        ))),
    }
}

/// How long a CNI ADD waits for the proxy to confirm a new pod's HTTP rules.
const L7_APPLY_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn create_endpoint(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<EndpointCreateRequest>,
) -> Result<Response, ApiFailure> {
    let manager = Arc::clone(&s.manager);
    let created = blocking(move || manager.create(&req)).await??;
    // A pod under HTTP rules answers its runtime once the proxy has those rules, as it does
    // once its policy is in the maps.
    let id = created.endpoint.id;
    if !s.policies.wait_l7_applied(id, L7_APPLY_LIMIT).await {
        warn!(
            endpoint = id,
            "the L7 proxy has not confirmed the new pod's HTTP rules yet"
        );
    }
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn delete_endpoint(
    State(s): State<AppState>,
    cid: Result<Path<String>, PathRejection>,
    params: Result<Query<AttachmentParams>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let Path(cid) = cid.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let deleted = blocking(move || match params.ifname {
        Some(ifname) => s.manager.delete_attachment(&cid, &ifname),
        None => s.manager.delete(&cid),
    })
    .await??;
    Ok(Json(deleted).into_response())
}

async fn gc_endpoints(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<GcRequest>,
) -> Result<Response, ApiFailure> {
    let result = blocking(move || s.manager.gc(&req)).await??;
    Ok(Json(result).into_response())
}

async fn list_identities(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let ids = blocking(move || {
        let mut ids = s.manager.identities();
        for i in &mut ids {
            i.labels = s.policies.effective_labels(&i.labels);
        }
        // The cluster's: other nodes' endpoints' identities, as `cilium-dbg identity list`.
        let local: std::collections::BTreeSet<u32> = ids.iter().map(|i| i.id).collect();
        ids.extend(
            s.policies
                .cluster_identities()
                .into_iter()
                .filter(|(id, _)| !local.contains(id))
                .map(|(id, labels)| ciliate_model::Identity {
                    id,
                    labels,
                    reserved: false,
                    references: 0,
                }),
        );
        ids.sort_by_key(|i| i.id);
        ids.extend(s.policies.cidr_identities());
        ids
    })
    .await?;
    Ok(Json(ids).into_response())
}

async fn get_identity(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiFailure> {
    let Path(id) = id.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let n: u32 = id.parse().map_err(|_| {
        ApiFailure::invalid(format!(
            "identity {id:?} is not a number; identities are numeric, e.g. 256"
        ))
    })?;
    let found = blocking(move || {
        s.manager
            .identity(n)
            .map(|mut i| {
                i.labels = s.policies.effective_labels(&i.labels);
                i
            })
            .or_else(|| s.policies.cidr_identities().into_iter().find(|i| i.id == n))
            .or_else(|| {
                s.policies
                    .cluster_identities()
                    .remove(&n)
                    .map(|labels| ciliate_model::Identity {
                        id: n,
                        labels,
                        reserved: false,
                        references: 0,
                    })
            })
    })
    .await?;
    match found {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(ApiFailure::not_found(format!(
            "no identity {n} on this node or in the cluster; list them with GET /v1/identities"
        ))),
    }
}

async fn ct_entries(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let entries = blocking(move || s.manager.datapath().ct_entries())
        .await?
        .map_err(|e| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "datapath",
                format!("cannot read the conntrack table: {e}"),
            )
        })?;
    Ok(Json(entries).into_response())
}

async fn apply_manifests(State(s): State<AppState>, req: Request) -> Result<Response, ApiFailure> {
    let streamed = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(STREAM_CONTENT_TYPE));
    let (documents, result) = if streamed {
        apply_streamed(s, req.into_body()).await?
    } else {
        let ApiJson(req) = ApiJson::<RawApplyRequest>::from_request(req, &()).await?;
        let documents = req.documents.len();
        let result =
            blocking(move || manifests::apply_raw(&s.services, &s.policies, &s.manager, &req))
                .await?;
        (documents, result)
    };
    let large = documents >= heap::LARGE_BATCH;
    match result {
        Ok(r) if large => Ok(release_when_sent(Json(r).into_response()).await),
        Ok(r) => Ok(Json(r).into_response()),
        Err(e) => {
            if large {
                // The request is freed now: give its room back.
                tokio::task::spawn_blocking(heap::release_free_memory);
            }
            Err(e.into())
        }
    }
}

/// The answer, which gives the allocator's free memory back to the kernel once it has been
/// sent (or the client went away): by then the batch's request, its decoded documents, the
/// objects it replaced and the answer itself are all freed. (A trim as the answer went out
/// raced those frees: after deleting 10,000 Services the agent's RSS read 18 to 22 MB.)
async fn release_when_sent(response: Response) -> Response {
    /// Trims when dropped, with the answer's body.
    struct ReleaseOnDrop;
    impl Drop for ReleaseOnDrop {
        fn drop(&mut self) {
            // It walks every arena under its lock: off the runtime's workers.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(heap::release_free_memory)),
                Err(_) => drop(heap::release_free_memory()),
            }
        }
    }
    let (mut parts, body) = response.into_parts();
    // A JSON answer is one piece already: taking it copies nothing.
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be read",
        )
            .into_response();
    };
    // The length as the whole body would have had it, not chunks.
    parts
        .headers
        .insert(header::CONTENT_LENGTH, bytes.len().into());
    let guard = ReleaseOnDrop;
    let body = futures::stream::once(futures::future::ready(Ok::<_, Infallible>(bytes))).map(
        move |piece| {
            let _held = &guard;
            piece
        },
    );
    Response::from_parts(parts, Body::from_stream(body))
}

/// One piece of a streamed `POST /v1/manifests` body, for the thread that decodes it.
enum BodyPart {
    Data(Bytes),
    /// The body is complete: what arrived is the whole batch.
    End,
}

/// The streamed form ([`STREAM_CONTENT_TYPE`]): the body's lines are decoded on a blocking
/// thread as they arrive, and the batch applied (all or nothing, as ever) once the body is
/// complete. A body that breaks off, or passes [`MAX_MANIFEST_BODY`], applies nothing.
async fn apply_streamed(
    s: AppState,
    body: Body,
) -> Result<
    (
        usize,
        Result<ciliate_model::manifest::ApplyResult, ApplyError>,
    ),
    ApiFailure,
> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BodyPart>(64);
    // Spawned now (not when awaited): it decodes while the body arrives.
    let worker = tokio::task::spawn_blocking(move || {
        let mut batch = StreamedBatch::new();
        loop {
            match rx.blocking_recv() {
                Some(BodyPart::Data(chunk)) => batch.feed(&chunk)?,
                Some(BodyPart::End) => break,
                // The body broke off: the reader below says why.
                None => return Ok(None),
            }
        }
        // The agent's own part (the log's elapsed_us) starts with the last byte: decoding
        // went on while the client was still sending.
        let started = Instant::now();
        let mut batch = batch.finish()?;
        let documents = batch.documents();
        let decoded = batch.decoded.take();
        let result = manifests::apply_raw_decoded(
            &s.services,
            &s.policies,
            &s.manager,
            decoded,
            Some(&batch),
            || batch.to_request(),
            started,
        );
        Ok::<_, String>(Some((documents, result)))
    });
    let mut stream = body.into_data_stream();
    let mut received = 0usize;
    let mut broken = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                received += chunk.len();
                if received > MAX_MANIFEST_BODY {
                    broken = Some(ApiFailure::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid",
                        format!("the body is larger than {MAX_MANIFEST_BODY} bytes; nothing was applied"),
                    ));
                    break;
                }
                if tx.send(BodyPart::Data(chunk)).await.is_err() {
                    // The worker stopped at a bad line: it says which.
                    break;
                }
            }
            Err(e) => {
                broken = Some(ApiFailure::invalid(format!(
                    "the body broke off ({e}); nothing was applied"
                )));
                break;
            }
        }
    }
    if broken.is_none() {
        let _ = tx.send(BodyPart::End).await;
    }
    drop(tx);
    let worked = worker.await.map_err(|e| {
        ApiFailure::internal(format!(
            "the request failed inside the agent ({e}); see the agent's log"
        ))
    })?;
    match worked {
        Err(line) => Err(ApiFailure::invalid(format!(
            "{line}; see the request types in the API documentation"
        ))),
        Ok(Some(applied)) => Ok(applied),
        Ok(None) => Err(broken.unwrap_or_else(|| {
            ApiFailure::internal("the body's reader stopped; nothing was applied")
        })),
    }
}

async fn list_policies(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let views = blocking(move || s.policies.list(&s.manager.policy_snapshot())).await?;
    Ok(Json(views).into_response())
}

async fn policy_revision(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let r = blocking(move || s.policies.revision()).await?;
    Ok(Json(r).into_response())
}

async fn validate_policies(ApiJson(req): ApiJson<ApplyRequest>) -> Result<Response, ApiFailure> {
    let v = blocking(move || manifests::validate(&req.documents)).await?;
    Ok(Json(v).into_response())
}

/// The policy a path names; a namespaced kind needs a namespace, a clusterwide one has none.
fn policy_ref(
    kind: &str,
    namespace: Option<String>,
    name: String,
) -> Result<ciliate_model::policy::PolicyRef, ApiFailure> {
    let Some(kind) = ciliate_model::policy_api::parse_kind(kind) else {
        return Err(ApiFailure::invalid(format!(
            "{kind:?} is not a policy kind; use NetworkPolicy (netpol), CiliumNetworkPolicy (cnp)              or CiliumClusterwideNetworkPolicy (ccnp)"
        )));
    };
    match (kind.is_namespaced(), namespace) {
        (true, None) => Err(ApiFailure::invalid(format!(
            "{kind} is namespaced: use /v1/policies/{kind}/<namespace>/{name}"
        ))),
        (false, Some(_)) => Err(ApiFailure::invalid(format!(
            "{kind} has no namespace: use /v1/policies/{kind}/{name}"
        ))),
        (_, namespace) => Ok(ciliate_model::policy::PolicyRef {
            kind,
            namespace,
            name,
        }),
    }
}

async fn answer_policy(
    s: AppState,
    r: ciliate_model::policy::PolicyRef,
) -> Result<Response, ApiFailure> {
    let found = {
        let r = r.clone();
        blocking(move || s.policies.get(&r)).await?
    };
    match found {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiFailure::not_found(format!(
            "no {r} in force; list them with GET /v1/policies"
        ))),
    }
}

async fn get_policy(
    State(s): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiFailure> {
    let Path((kind, namespace, name)) = path.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let r = policy_ref(&kind, Some(namespace), name)?;
    answer_policy(s, r).await
}

async fn get_clusterwide_policy(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiFailure> {
    let Path((kind, name)) = path.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let r = policy_ref(&kind, None, name)?;
    answer_policy(s, r).await
}

/// Query of `GET /v1/policy/trace`.
#[derive(Debug, Deserialize)]
struct TraceParams {
    src: Option<String>,
    dst: Option<String>,
    dport: Option<u16>,
    proto: Option<String>,
    /// An HTTP request to trace: method, path, host, and headers (`Name: value`, several
    /// separated by newlines).
    #[serde(rename = "httpMethod")]
    http_method: Option<String>,
    #[serde(rename = "httpPath")]
    http_path: Option<String>,
    #[serde(rename = "httpHost")]
    http_host: Option<String>,
    #[serde(rename = "httpHeader")]
    http_header: Option<String>,
}

async fn trace_policy(
    State(s): State<AppState>,
    query: Result<Query<TraceParams>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let Query(q) = query.map_err(|e| {
        ApiFailure::invalid(format!(
            "{}; use ?src=<pod|labels|ip>&dst=<pod|labels|ip>&dport=<0-65535>&proto=tcp|udp|sctp|icmp",
            e.body_text()
        ))
    })?;
    let (Some(src), Some(dst)) = (q.src, q.dst) else {
        return Err(ApiFailure::invalid(
            "src and dst are required: ?src=<pod|labels|ip>&dst=<pod|labels|ip>&dport=N&proto=tcp",
        ));
    };
    let proto_text = q.proto.unwrap_or_else(|| "tcp".into());
    let Some(proto) = parse_proto(&proto_text) else {
        return Err(ApiFailure::invalid(format!(
            "proto {proto_text:?}: use tcp, udp, sctp, icmp or a protocol number"
        )));
    };
    let http = match (q.http_method, q.http_path) {
        (None, None) if q.http_host.is_none() && q.http_header.is_none() => None,
        (Some(method), Some(path)) => Some(ciliate_model::policy_api::TraceHttp {
            method,
            path,
            host: q.http_host.unwrap_or_default(),
            headers: q
                .http_header
                .iter()
                .flat_map(|h| h.lines())
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect(),
        }),
        _ => {
            return Err(ApiFailure::invalid(
                "an HTTP request needs both httpMethod and httpPath (httpHost and httpHeader are optional)",
            ))
        }
    };
    let query = TraceQuery {
        src,
        dst,
        proto,
        dport: q.dport.unwrap_or(0),
        http,
    };
    let trace = blocking(move || {
        let endpoints = s.manager.list();
        let identities = s.manager.policy_snapshot().identities;
        s.policies.trace(&endpoints, &identities, &query)
    })
    .await??;
    Ok(Json(trace).into_response())
}

/// `POST /v1/policy/whatif`: recorded flows replayed through the proposed policies; nothing
/// is applied.
async fn policy_whatif(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ciliate_model::whatif::WhatIfRequest>,
) -> Result<Response, ApiFailure> {
    let since_ns = req.since_seconds.map(|secs| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        now.saturating_sub(
            i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000_000),
        )
    });
    let report = blocking(move || {
        let endpoints = s.manager.list();
        let identities = s.manager.policy_snapshot().identities;
        let snapshot = s.flow_history.as_ref().map(|h| h.snapshot());
        s.policies.whatif(
            &req.documents,
            req.replace_all,
            snapshot.as_ref(),
            since_ns,
            &identities,
            &endpoints,
        )
    })
    .await?
    .map_err(|e| match e {
        crate::policy::PolicyError::Invalid(errors) => {
            ApiFailure::invalid(ciliate_model::manifest::report(
                &errors,
                "nothing was replayed (whatif never applies anything)",
            ))
        }
        e => ApiFailure::internal(e.to_string()),
    })?;
    Ok(Json(report).into_response())
}

#[derive(Debug, Deserialize)]
struct FqdnParams {
    /// A name or a pattern (`*` within one label) the names must match.
    matchpattern: Option<String>,
}

/// The `?matchpattern=` of the FQDN cache calls, checked as a `toFQDNs` pattern.
fn fqdn_filter(
    query: Result<Query<FqdnParams>, QueryRejection>,
) -> Result<Option<ciliate_model::fqdn::FqdnMatcher>, ApiFailure> {
    let Query(q) = query.map_err(|e| {
        ApiFailure::invalid(format!(
            "{}; use ?matchpattern=<name or pattern>",
            e.body_text()
        ))
    })?;
    q.matchpattern
        .filter(|p| !p.is_empty())
        .map(|p| {
            ciliate_model::fqdn::FqdnMatcher::new(None, Some(&p))
                .map_err(|e| ApiFailure::invalid(format!("matchpattern: {e}")))
        })
        .transpose()
}

async fn list_fqdn_cache(
    State(s): State<AppState>,
    query: Result<Query<FqdnParams>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let filter = fqdn_filter(query)?;
    let list = blocking(move || s.fqdn.list(filter.as_ref())).await?;
    Ok(Json(list).into_response())
}

async fn clean_fqdn_cache(
    State(s): State<AppState>,
    query: Result<Query<FqdnParams>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let filter = fqdn_filter(query)?;
    let cleaned = blocking(move || s.fqdn.clean(filter.as_ref()))
        .await?
        .map_err(ApiFailure::internal)?;
    Ok(Json(cleaned).into_response())
}

async fn bpf_policy(
    State(s): State<AppState>,
    reference: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiFailure> {
    let Path(reference) = reference.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let r = EndpointRef::parse(&reference);
    let view = blocking(move || {
        let Some(ep) = s.manager.get(&r) else {
            return Err(ApiFailure::not_found(format!(
                "no endpoint with {r} on this node; list them with GET /v1/endpoints"
            )));
        };
        let spec = spec_of(&ep);
        let dp = s.manager.datapath();
        let policy = dp.endpoint_policy(&spec).map_err(|e| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "datapath",
                format!("cannot read the policy map of endpoint {}: {e}", ep.id),
            )
        })?;
        let counters = dp.policy_counters(&spec).unwrap_or_default();
        let entries = policy
            .entries
            .into_iter()
            .map(|entry| {
                let (packets, bytes) = counters
                    .iter()
                    .find(|c| c.entry == entry)
                    .map_or((0, 0), |c| (c.packets, c.bytes));
                let labels = match entry.identity {
                    0 => Default::default(),
                    id => s
                        .manager
                        .identity(id)
                        .map(|i| i.labels)
                        .or_else(|| s.policies.identity_labels(id))
                        .unwrap_or_default(),
                };
                ciliate_model::policy_api::BpfPolicyEntry {
                    rule_ref: (entry.rule != 0)
                        .then(|| s.policies.rule(entry.rule))
                        .flatten(),
                    entry,
                    labels,
                    packets,
                    bytes,
                }
            })
            .collect();
        Ok(ciliate_model::policy_api::BpfPolicyView {
            endpoint: ep.id,
            pod: ep.pod.clone(),
            identity: ep.identity,
            ingress_enforced: policy.ingress_enforced,
            egress_enforced: policy.egress_enforced,
            entries,
        })
    })
    .await??;
    Ok(Json(view).into_response())
}

async fn list_services(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let services = blocking(move || s.services.list()).await?;
    Ok(Json(services).into_response())
}

async fn get_service(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiFailure> {
    let Path((namespace, name)) = path.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let found = {
        let (namespace, name) = (namespace.clone(), name.clone());
        blocking(move || s.services.get(&namespace, &name)).await?
    };
    match found {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(ApiFailure::not_found(format!(
            "no Service {namespace}/{name}; list them with GET /v1/services"
        ))),
    }
}

/// The datapath's ipcache, read back from the map (`ciliate bpf ipcache list`).
async fn bpf_ipcache(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let entries = blocking(move || s.manager.datapath().ipcache())
        .await?
        .map_err(|e| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "datapath",
                format!("cannot read the ipcache map: {e}"),
            )
        })?;
    Ok(Json(entries).into_response())
}

/// The datapath's endpoint map, read back (`ciliate bpf endpoint list`).
async fn bpf_endpoints(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let specs = blocking(move || s.manager.datapath().list_endpoints())
        .await?
        .map_err(|e| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "datapath",
                format!("cannot read the endpoint map: {e}"),
            )
        })?;
    let mut out: Vec<ciliate_model::api::BpfEndpoint> = specs
        .into_iter()
        .map(|e| ciliate_model::api::BpfEndpoint {
            id: e.id,
            ipv4: e.ipv4,
            identity: e.identity,
            ifname: e.ifname,
            ifindex: e.ifindex,
            mac: e.mac,
            host_mac: e.host_mac,
        })
        .collect();
    out.sort_by_key(|e| e.id);
    Ok(Json(out).into_response())
}

/// The nodes this agent knows: the cluster's registered nodes, or itself alone.
async fn list_nodes(
    State(s): State<AppState>,
) -> Result<Json<Vec<ciliate_model::api::NodeView>>, ApiFailure> {
    use ciliate_model::api::NodeView;
    let Some(cluster) = s.cluster.clone() else {
        let (name, pod_cidr) = (s.config.node_name.clone(), s.config.pod_cidr);
        let health = blocking(move || collect_status(&s).health).await?;
        return Ok(Json(vec![NodeView {
            name,
            underlay_ip: None,
            pod_cidr,
            health,
            local: true,
        }]));
    };
    let me = cluster.node().name.clone();
    let view = cluster.subscribe().borrow().clone();
    Ok(Json(
        view.nodes
            .into_values()
            .map(|n| NodeView {
                local: n.name == me,
                name: n.name,
                underlay_ip: Some(n.underlay_ip),
                pod_cidr: n.pod_cidr,
                health: n.health,
            })
            .collect(),
    ))
}

async fn lb_state(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let state = blocking(move || s.manager.datapath().lb_state())
        .await?
        .map_err(|e| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "datapath",
                format!("cannot read the load-balancing maps: {e}"),
            )
        })?;
    Ok(Json(state).into_response())
}

/// Query of `GET /v1/monitor`.
#[derive(Debug, Deserialize)]
struct MonitorQuery {
    /// `drop`, `trace` or `policy-verdict`; all events when absent.
    r#type: Option<String>,
}

async fn monitor(
    State(s): State<AppState>,
    query: Result<Query<MonitorQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let Query(query) = query.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let only = match query.r#type.as_deref() {
        None | Some("") => None,
        Some("drop") => Some(EventKind::Drop),
        Some("trace") => Some(EventKind::Trace),
        Some("policy-verdict") => Some(EventKind::PolicyVerdict),
        Some(other) => {
            return Err(ApiFailure::invalid(format!(
                "unknown event type {other:?}; use ?type=drop, ?type=trace or ?type=policy-verdict, or leave it out for all events"
            )))
        }
    };
    let events = BroadcastStream::new(s.manager.datapath().subscribe_events());
    let mut shutdown = s.shutdown.clone();
    let lines = events
        .filter_map(move |item| futures::future::ready(ndjson_line(item, only)))
        // A monitor client must not hold the agent's shutdown up.
        .take_until(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}

/// One event as a line of the stream, or nothing for events filtered out and lost ones.
fn ndjson_line(
    item: Result<MonitorEvent, BroadcastStreamRecvError>,
    only: Option<EventKind>,
) -> Option<Result<Bytes, Infallible>> {
    match item {
        Ok(ev) if only.is_none_or(|k| k == ev.kind) => match serde_json::to_vec(&ev) {
            Ok(mut line) => {
                line.push(b'\n');
                Some(Ok(Bytes::from(line)))
            }
            Err(e) => {
                warn!(error = %e, "cannot encode a monitor event; skipped");
                None
            }
        },
        Ok(_) => None,
        Err(BroadcastStreamRecvError::Lagged(lost)) => {
            warn!(
                lost,
                "monitor client too slow: events lost; the stream goes on"
            );
            None
        }
    }
}
