//! The HTTP side: the page and its assets (embedded in the binary), a JSON snapshot of the map
//! and the flow table for a set of filters, and the same snapshot as a server-sent event
//! stream whenever flows arrive (at most once a second per viewer, and every few seconds
//! regardless so rates decay and the source's state shows).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ciliate_observer::filter::FlowFilters;
use ciliate_observer::print;
use ciliate_observer::proto::flow::{Flow, Verdict};
use futures::Stream;
use serde::Serialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::graph::{Aggregator, Graph};
use crate::store::{FlowStore, SourceStatus};
use crate::workload::node_of;
use crate::{assets, query};

/// Viewers with a live stream at once; more are refused (each costs an aggregation a second).
pub const MAX_VIEWERS: usize = 32;
/// Rows of the flow table by default, and at most.
const DEFAULT_ROWS: usize = 200;
const MAX_ROWS: usize = 2000;
/// The least time between two events to one viewer.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// An event goes out at least this often, changed or not.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The UI: the store it draws from and how.
#[derive(Debug)]
pub struct Ui {
    store: Arc<FlowStore>,
    aggregator: Aggregator,
    viewers: Arc<Semaphore>,
}

/// A row of the flow table, as `ciliate observe` prints its parts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRow {
    /// `Jan  2 15:04:05.000`.
    pub time: String,
    /// The node that saw it.
    pub node: String,
    /// `namespace/pod:port (ID:n)`.
    pub source: String,
    /// Same for the destination.
    pub destination: String,
    /// Box ids of both ends (the page highlights them).
    pub from: String,
    /// Destination box id.
    pub to: String,
    /// `FORWARDED`, `DROPPED`, ...
    pub verdict: String,
    /// Hubble's drop reason text, for drops.
    pub drop_reason: String,
    /// `TCP Flags: SYN`, `HTTP/1.1 GET http://...`.
    pub summary: String,
    /// A reply.
    pub is_reply: bool,
}

/// What the page draws.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The flow source's state.
    pub status: SourceStatus,
    /// The map.
    pub graph: Graph,
    /// The newest flows first.
    pub flows: Vec<FlowRow>,
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn refuse(code: StatusCode, error: String) -> Response {
    (code, Json(ApiError { error })).into_response()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn row(flow: &Flow) -> FlowRow {
    let verdict = Verdict::try_from(flow.verdict).unwrap_or(Verdict::Unknown);
    FlowRow {
        time: print::stamp_milli(flow.time.as_ref()),
        node: flow.node_name.clone(),
        source: print::endpoint_text(flow, true),
        destination: print::endpoint_text(flow, false),
        from: node_of(flow.source.as_ref()).id(),
        to: node_of(flow.destination.as_ref()).id(),
        verdict: verdict.as_str_name().to_owned(),
        drop_reason: if matches!(verdict, Verdict::Dropped) {
            print::drop_reason_text(flow.drop_reason_desc)
        } else {
            String::new()
        },
        summary: print::summary(flow),
        is_reply: flow.is_reply.as_ref().is_some_and(|b| b.value),
    }
}

/// The table's size from `limit=N` (default 200, at most 2,000).
fn rows_wanted(query: &str) -> Result<usize, query::QueryError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    match pairs.iter().find(|(k, _)| k == "limit") {
        None => Ok(DEFAULT_ROWS),
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ROWS).contains(n))
            .ok_or_else(|| query::QueryError {
                param: "limit".into(),
                value: v.clone(),
                reason: format!("expected a number of rows from 1 to {MAX_ROWS}"),
            }),
    }
}

impl Ui {
    /// A UI drawing from `store`, rates over `window` seconds.
    pub fn new(store: Arc<FlowStore>, window: f64) -> Self {
        Self {
            store,
            aggregator: Aggregator { window },
            viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
        }
    }

    /// The store (for whoever feeds it).
    pub fn store(&self) -> &Arc<FlowStore> {
        &self.store
    }

    /// The map and table of the flows `filters` select, now.
    pub fn snapshot(&self, filters: &FlowFilters, rows: usize) -> Snapshot {
        let flows = self.store.flows();
        let selected: Vec<&Flow> = flows
            .iter()
            .map(AsRef::as_ref)
            .filter(|f| filters.matches(f))
            .collect();
        let graph = self.aggregator.aggregate(selected.iter().copied(), now());
        let flows = selected.iter().rev().take(rows).map(|f| row(f)).collect();
        Snapshot {
            status: self.store.status(),
            graph,
            flows,
        }
    }

    /// The router serving the page and the API under `/`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/index.html", get(index))
            .route("/app.js", get(app_js))
            .route("/style.css", get(style_css))
            .route("/api/status", get(status))
            .route("/api/snapshot", get(snapshot))
            .route("/api/events", get(events))
            .with_state(self)
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", assets::INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", assets::APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", assets::STYLE_CSS)
}

async fn status(State(ui): State<Arc<Ui>>) -> Json<SourceStatus> {
    Json(ui.store.status())
}

fn parse_query(raw: Option<String>) -> Result<(FlowFilters, usize), Box<Response>> {
    let q = raw.unwrap_or_default();
    let (filters, _, _) = query::parse(&q, &["limit"])
        .map_err(|e| Box::new(refuse(StatusCode::BAD_REQUEST, e.to_string())))?;
    let rows =
        rows_wanted(&q).map_err(|e| Box::new(refuse(StatusCode::BAD_REQUEST, e.to_string())))?;
    Ok((filters, rows))
}

async fn snapshot(State(ui): State<Arc<Ui>>, RawQuery(raw): RawQuery) -> Response {
    match parse_query(raw) {
        Ok((filters, rows)) => Json(ui.snapshot(&filters, rows)).into_response(),
        Err(r) => *r,
    }
}

/// One viewer's stream: its filters, its slot among [`MAX_VIEWERS`] (given back when the
/// browser goes away and the stream is dropped), and when it last got an event.
struct Viewer {
    ui: Arc<Ui>,
    filters: FlowFilters,
    rows: usize,
    changes: watch::Receiver<u64>,
    first: bool,
    _slot: OwnedSemaphorePermit,
}

fn viewer_stream(v: Viewer) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    futures::stream::unfold(v, |mut v| async move {
        if v.first {
            v.first = false;
        } else {
            tokio::time::sleep(MIN_INTERVAL).await;
            // Changed or not, a heartbeat; the source gone (the sender dropped) ends it.
            if let Ok(Err(_)) = tokio::time::timeout(HEARTBEAT, v.changes.changed()).await {
                return None;
            }
        }
        v.changes.mark_unchanged();
        let snap = v.ui.snapshot(&v.filters, v.rows);
        let event = Event::default()
            .event("snapshot")
            .json_data(&snap)
            .unwrap_or_else(|e| Event::default().event("failure").data(e.to_string()));
        Some((Ok(event), v))
    })
}

async fn events(State(ui): State<Arc<Ui>>, RawQuery(raw): RawQuery) -> Response {
    let (filters, rows) = match parse_query(raw) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Ok(slot) = ui.viewers.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many live viewers (at most {MAX_VIEWERS}); close another tab and reload"),
        );
    };
    let changes = ui.store.subscribe();
    let viewer = Viewer {
        ui,
        filters,
        rows,
        changes,
        first: true,
        _slot: slot,
    };
    Sse::new(viewer_stream(viewer))
        .keep_alive(KeepAlive::default())
        .into_response()
}
