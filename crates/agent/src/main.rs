//! `ciliate-agent`: the per-node daemon. See the library for what it does; this file only
//! wires configuration, logging, signals and the runtime together.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::anyhow;
use ciliate_agent::config::{Config, ConfigError, ProcessEnvironment};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> ExitCode {
    // Before any thread exists: threads pick their malloc arena when they first allocate.
    ciliate_agent::heap::limit_arenas();
    ciliate_agent::heap::fix_thresholds();
    let config = match Config::parse_from(std::env::args_os(), &ProcessEnvironment) {
        Ok(c) => c,
        // Prints help, version or the usage error, with clap's exit code.
        Err(ConfigError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("ciliate-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = ciliate_agent::logging::init(&config) {
        eprintln!("ciliate-agent: {e}");
        return ExitCode::from(2);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error here carries its causes in its own message (our thiserror types embed
            // their sources), so `{e}` prints all of it, once.
            // To the log, and to stderr as well when the log filter would swallow it.
            error!("{e}");
            if !tracing::enabled!(tracing::Level::ERROR) {
                eprintln!("ciliate-agent: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ciliate-agent")
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let (tx, rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| anyhow!("cannot install the SIGTERM handler: {e}"))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| anyhow!("cannot install the SIGINT handler: {e}"))?;
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            info!(
                signal = name,
                "shutting down: no new requests; the datapath keeps forwarding"
            );
            let _ = tx.send(true);
        });
        ciliate_agent::server::run(config, rx)
            .await
            .map_err(anyhow::Error::from)
    })
}
