//! The `ciliate-relay` binary: flags, logging, discovery, the pool and the server.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use ciliate_kvstore::KvstoreConfig;
use ciliate_relay::{serve, Args, Config, Pool, RelayService};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ciliate-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ciliate-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("ciliate-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let bound = serve::bind(&config.listen).await?;
    let (stop_tx, stop) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(serve::stop_on(
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            info!("stopping");
        },
        stop_tx,
    ));

    if let Some(addr) = config.ui_address {
        let (bound, _) = ciliate_relay::ui::start(addr, &config.listen, stop.clone()).await?;
        info!("service map on http://{bound}/");
    }
    let pool = Pool::new(config.pool.clone());
    let etcd = (!config.etcd_endpoints.is_empty()).then(|| {
        KvstoreConfig::new(
            config.etcd_endpoints.clone(),
            format!("relay-{}", std::process::id()),
        )
    });
    let discovery = tokio::spawn(ciliate_relay::discovery::run(
        pool.clone(),
        config.peers.clone(),
        etcd,
        stop.clone(),
    ));
    let service = RelayService::new(
        pool.clone(),
        config.merge.clone(),
        env!("CARGO_PKG_VERSION"),
        config.pool.dial_timeout,
    );
    let result = serve::serve(serve::routes(service).await, bound, stop).await;
    pool.shutdown();
    let _ = discovery.await;
    result.map_err(Into::into)
}
