//! Serving the relay: the Observer service and gRPC health (`grpc.health.v1.Health`, which
//! `hubble status` asks first) on every listen address. The routes are one
//! [`tonic::service::Routes`], so more services (or an axum router, through
//! `Routes::into_axum_router`) can be added beside them.

use std::future::Future;

use ciliate_observer::proto::observer::observer_server::ObserverServer;
use ciliate_observer::server::HUBBLE_HEALTH_SERVICE;
use futures::future::try_join_all;
use tokio::sync::watch;
use tracing::info;

use crate::config::Listen;
use crate::service::RelayService;

/// Why the relay could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("relay gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The relay's gRPC routes: Observer and health (SERVING for the server as a whole, for
/// `observer.Observer` and for the name `hubble status` asks about).
pub async fn routes(service: RelayService) -> tonic::service::Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<ObserverServer<RelayService>>().await;
    reporter
        .set_service_status(HUBBLE_HEALTH_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::service::Routes::new(health).add_service(service.into_server())
}

/// A bound listen address.
#[derive(Debug)]
pub enum Bound {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A unix socket.
    Unix(tokio::net::UnixListener),
}

/// Binds every address (a stale unix socket file is replaced; one a server answers on is not).
pub async fn bind(listen: &[Listen]) -> Result<Vec<Bound>, ServeError> {
    let mut bound = Vec::new();
    for l in listen {
        match l {
            Listen::Tcp(a) => {
                let t =
                    tokio::net::TcpListener::bind(a)
                        .await
                        .map_err(|source| ServeError::Bind {
                            what: a.to_string(),
                            source,
                        })?;
                bound.push(Bound::Tcp(t));
            }
            Listen::Unix(p) => {
                let u = ciliate_observer::server::bind_unix(p).map_err(|e| ServeError::Bind {
                    what: format!("unix://{}", p.display()),
                    source: std::io::Error::other(e.to_string()),
                })?;
                bound.push(Bound::Unix(u));
            }
        }
    }
    Ok(bound)
}

/// Serves `routes` on every bound listener until `stop` turns true.
pub async fn serve(
    routes: tonic::service::Routes,
    bound: Vec<Bound>,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let servers = bound.into_iter().map(|b| {
        let routes = routes.clone();
        let stop = stopped(stop.clone());
        async move {
            let builder = tonic::transport::Server::builder().add_routes(routes);
            match b {
                Bound::Tcp(l) => {
                    if let Ok(a) = l.local_addr() {
                        info!(address = %a, "serving the relay's observer API");
                    }
                    builder
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::TcpListenerStream::new(l),
                            stop,
                        )
                        .await
                }
                Bound::Unix(l) => {
                    info!("serving the relay's observer API on a unix socket");
                    builder
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::UnixListenerStream::new(l),
                            stop,
                        )
                        .await
                }
            }
        }
    });
    try_join_all(servers).await?;
    Ok(())
}

/// Runs until `signal` resolves, then turns `stop` true.
pub async fn stop_on(signal: impl Future<Output = ()>, stop: watch::Sender<bool>) {
    signal.await;
    let _ = stop.send(true);
}
