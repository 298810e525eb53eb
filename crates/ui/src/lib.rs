//! The service map in a browser, as hubble-ui shows it: namespaces as areas, workloads (pods
//! grouped by their app labels, with their identities) and Services as boxes, connections with
//! protocol, port, verdict, rate and HTTP requests (dropped ones red), and a flow table with
//! `ciliate observe`'s filters, updated live.
//!
//! Flows come from any Hubble Observer ([`source`]: an agent's `hubble.sock` or the relay)
//! into a bounded ring ([`store`]); the server aggregates them into a compact graph
//! ([`graph`], [`workload`]) and lays it out ([`layout`]), so the browser only draws; the
//! page's filters are `observe`'s flags ([`query`]). [`api`] serves the page (embedded,
//! [`assets`]) and its JSON and server-sent-event API; [`start`] wires it all up, and
//! [`Ui::router`] can be mounted by any axum server (the relay's `--ui-address`).

#![forbid(unsafe_code)]

pub mod api;
pub mod assets;
pub mod graph;
pub mod layout;
pub mod query;
pub mod source;
pub mod store;
pub mod synthetic;
pub mod workload;

use std::sync::Arc;

pub use api::Ui;
pub use source::Source;
pub use store::FlowStore;

/// Default address of `ciliate ui` (hubble-ui's port is 12000 too).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:12000";

/// Default window of the rates, in seconds.
pub const DEFAULT_WINDOW: f64 = 10.0;

/// A UI following `source`: the store, the task feeding it (abort it to stop) and the UI.
pub fn start(source: Source, capacity: usize) -> (Arc<Ui>, tokio::task::JoinHandle<()>) {
    let store = Arc::new(FlowStore::new(&source.to_string(), capacity));
    let feed = tokio::spawn(source::follow(source, store.clone()));
    (Arc::new(Ui::new(store, DEFAULT_WINDOW)), feed)
}

/// Serves `ui` on `listener` until `shutdown` resolves. Live streams never end by
/// themselves, so shutdown does not wait for them: open connections are dropped.
pub async fn serve(
    ui: Arc<Ui>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::select! {
        r = axum::serve(listener, ui.router()) => r,
        () = shutdown => Ok(()),
    }
}
