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
use ciliate_model::manifest::ApplyRequest;
use ciliate_model::monitor::{EventKind, MonitorEvent};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tracing::{debug, warn};

use crate::config::Config;
use crate::endpoints::{EndpointError, EndpointManager, EndpointRef};
use crate::gc::CtGcHealth;
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
    /// Outcome of the last conntrack GC pass.
    pub ct_gc: Arc<CtGcHealth>,
    /// When the agent started.
    pub started: Instant,
    /// Turns true when the agent shuts down; ends monitor streams.
    pub shutdown: watch::Receiver<bool>,
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

impl From<EndpointError> for ApiFailure {
    fn from(e: EndpointError) -> Self {
        let status = match &e {
            EndpointError::Invalid(_) => StatusCode::BAD_REQUEST,
            EndpointError::NotFound(_) => StatusCode::NOT_FOUND,
            EndpointError::Conflict(_) => StatusCode::CONFLICT,
            // Nothing is wrong with the request; the node is full until something is deleted.
            EndpointError::Exhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
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
        .route("/v1/services", get(list_services))
        .route("/v1/services/{namespace}/{name}", get(get_service))
        .route("/v1/bpf/lb", get(lb_state))
        .route("/v1/monitor", get(monitor))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
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
    let manager = Arc::clone(&s.manager);
    let services = Arc::clone(&s.services);
    let (m, datapath, svc) = blocking(move || {
        (
            manager.status(),
            manager.datapath().status(),
            services.status(),
        )
    })
    .await?;
    let mut problems = m.problems;
    problems.extend(svc.problems);
    if !datapath.loaded {
        problems.insert(0, format!("the {} datapath is not loaded", datapath.kind));
    }
    if let Some(e) = s.ct_gc.last_error() {
        problems.push(e);
    }
    Ok(Json(Status {
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
    }))
}

async fn config(State(s): State<AppState>) -> Json<Config> {
    Json((*s.config).clone())
}

async fn list_endpoints(State(s): State<AppState>) -> Result<Response, ApiFailure> {
    let eps = blocking(move || s.manager.list()).await?;
    Ok(Json(eps).into_response())
}

async fn get_endpoint(
    State(s): State<AppState>,
    reference: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiFailure> {
    let Path(reference) = reference.map_err(|e| ApiFailure::invalid(e.body_text()))?;
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

async fn create_endpoint(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<EndpointCreateRequest>,
) -> Result<Response, ApiFailure> {
    let created = blocking(move || s.manager.create(&req)).await??;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn delete_endpoint(
    State(s): State<AppState>,
    cid: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiFailure> {
    let Path(cid) = cid.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let deleted = blocking(move || s.manager.delete(&cid)).await??;
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
    let ids = blocking(move || s.manager.identities()).await?;
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
    match blocking(move || s.manager.identity(n)).await? {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(ApiFailure::not_found(format!(
            "no identity {n} on this node; list them with GET /v1/identities"
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

async fn apply_manifests(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ApplyRequest>,
) -> Result<Response, ApiFailure> {
    let result = blocking(move || s.services.apply(&req)).await??;
    Ok(Json(result).into_response())
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
    /// `drop` or `trace`; all events when absent.
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
        Some(other) => {
            return Err(ApiFailure::invalid(format!(
                "unknown event type {other:?}; use ?type=drop or ?type=trace, or leave it out for all events"
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
