//! A fake Observer for the UI bench: a real observer ring and gRPC service (the agent's own)
//! filled with a synthetic cluster's flows instead of a datapath's, on a unix socket.
//!
//!   ciliate-ui-synthetic --socket PATH [--workloads 1000] [--calls 3] [--rate 0]
//!
//! Prints `ready` once it serves; `--rate N` adds N flows a second after that (live updates).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ciliate_observer::server::{bind_unix, serve_unix, Service};
use ciliate_observer::{Observer, ObserverConfig, Snapshot};
use ciliate_ui::synthetic;

fn usage() -> ! {
    eprintln!("usage: ciliate-ui-synthetic --socket PATH [--workloads N] [--calls N] [--rate N]");
    std::process::exit(2)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (mut socket, mut workloads, mut calls, mut rate) = (None, 1000usize, 3usize, 0u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--socket" => socket = Some(value()),
            "--workloads" => workloads = value().parse().unwrap_or_else(|_| usage()),
            "--calls" => calls = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => rate = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let Some(socket) = socket else { usage() };
    let flows = synthetic::cluster(workloads, calls, now());
    let config = ObserverConfig {
        capacity: flows.len().max(16),
        node_name: "synthetic".into(),
    };
    let observer = Arc::new(Observer::new(config, Arc::new(Snapshot::default())));
    for f in flows {
        observer.push_flow(f);
    }
    let listener = match bind_unix(std::path::Path::new(&socket)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ciliate-ui-synthetic: {e}");
            std::process::exit(1)
        }
    };
    let service = Service::new(observer.clone(), "synthetic", &socket);
    if rate > 0 {
        let observer = observer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(
                Duration::from_secs(1) / u32::try_from(rate.min(1000)).unwrap_or(1),
            );
            let mut i = 0usize;
            loop {
                tick.tick().await;
                observer.push_flow(synthetic::call(
                    workloads,
                    i % workloads.max(1),
                    1 + i % calls.max(1),
                    now(),
                ));
                i += 1;
            }
        });
    }
    println!("ready");
    if let Err(e) = serve_unix(service, listener, std::future::pending()).await {
        eprintln!("ciliate-ui-synthetic: {e}");
        std::process::exit(1)
    }
}
