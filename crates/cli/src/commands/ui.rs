//! `ciliate ui`: the service map in a browser, served from this process, fed by an Observer
//! (a node's hubble.sock, the relay, or the lab's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use ciliate_ui::Source;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use super::{Hinted, Outcome};

/// Arguments of `ciliate ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// The Observer to follow over TCP or a socket: `host:port` (the relay), `unix:///path`
    /// [default: the lab's relay (or its node0's hubble.sock) when a lab is up, else
    /// hubble.sock beside --socket].
    #[arg(long, value_name = "ADDR", conflicts_with = "hubble_socket")]
    pub server: Option<String>,
    /// A node's observer socket.
    #[arg(long, env = "CILIATE_HUBBLE_SOCKET", value_name = "PATH")]
    pub hubble_socket: Option<PathBuf>,
    /// Where to serve the page.
    #[arg(long, value_name = "ADDR", default_value = ciliate_ui::DEFAULT_ADDRESS)]
    pub address: SocketAddr,
    /// Open the page in the desktop's browser (xdg-open).
    #[arg(long)]
    pub open: bool,
    /// The lab whose observer to follow when neither --server nor --hubble-socket is given.
    #[arg(
        long = "lab",
        env = ciliate_lab::layout::LAB_NAME_ENV,
        value_name = "NAME",
        default_value = ciliate_lab::DEFAULT_NAME,
        value_parser = super::lab::parse_name
    )]
    pub lab: String,
    /// How many of the newest flows the map is drawn from.
    #[arg(long, value_name = "N", default_value_t = ciliate_ui::store::DEFAULT_CAPACITY)]
    pub flows: usize,
}

/// The flow source the flags name: --server, --hubble-socket, the lab's, or the socket beside
/// the agent's.
pub fn source(args: &UiArgs, api_socket: &Path) -> anyhow::Result<(Source, String)> {
    if let Some(s) = &args.server {
        return Ok((
            Source::parse(s).map_err(anyhow::Error::msg)?,
            "--server".into(),
        ));
    }
    if let Some(p) = &args.hubble_socket {
        return Ok((Source::Unix(p.clone()), "--hubble-socket".into()));
    }
    let layout = ciliate_lab::Layout::new(&args.lab)?;
    if let Ok(state) = ciliate_lab::state::LabState::load(&layout.state_file()) {
        // The relay sees every node's flows; node0's socket is the fallback of labs without.
        if let Some(r) = &state.relay {
            return Ok((
                Source::Unix(r.socket.clone()),
                format!("lab {}, its relay", state.name),
            ));
        }
        if let Some(n) = state.nodes.first() {
            return Ok((
                Source::Unix(n.hubble_socket.clone()),
                format!("lab {}, {}", state.name, n.name),
            ));
        }
    }
    Ok((
        Source::Unix(api_socket.with_file_name("hubble.sock")),
        "beside --socket".into(),
    ))
}

/// Serves the page until Ctrl-C or SIGTERM.
pub async fn run(args: UiArgs, api_socket: &Path) -> anyhow::Result<Outcome> {
    let (source, why) = source(&args, api_socket)?;
    let listener = tokio::net::TcpListener::bind(args.address)
        .await
        .map_err(|e| Hinted {
            error: anyhow!("cannot serve the UI on {}: {e}", args.address),
            hint: "pass another --address (e.g. 127.0.0.1:0 for any free port)".into(),
        })?;
    let addr = listener.local_addr().context("the UI's address")?;
    let what = source.to_string();
    let (ui, feed) = ciliate_ui::start(source, args.flows);
    let url = format!("http://{addr}/");
    println!("Service map of {what} ({why}) at {url}  (Ctrl-C to stop)");
    if args.open {
        if let Err(e) = std::process::Command::new("xdg-open").arg(&url).spawn() {
            eprintln!("warning: cannot open a browser (xdg-open: {e}); open {url} yourself");
        }
    }
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| anyhow!("cannot handle Ctrl-C: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    let served = ciliate_ui::serve(ui, listener, shutdown).await;
    feed.abort();
    served.context("serving the UI")?;
    Ok(Outcome::Success)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> UiArgs {
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        match cli.command {
            crate::cli::Command::Ui(a) => a,
            _ => panic!("not ui"),
        }
    }

    #[test]
    fn the_source_comes_from_the_flags_first() {
        let sock = Path::new("/run/x/agent.sock");
        let a = parse(&["ciliate", "ui", "--server", "127.0.0.1:4245"]);
        assert_eq!(
            source(&a, sock).unwrap().0,
            Source::Tcp("127.0.0.1:4245".into())
        );
        let a = parse(&[
            "ciliate",
            "ui",
            "--hubble-socket",
            "/h.sock",
            "--address",
            "127.0.0.1:0",
        ]);
        assert_eq!(source(&a, sock).unwrap().0, Source::Unix("/h.sock".into()));
        assert_eq!(a.address.port(), 0);
        let a = parse(&["ciliate", "ui", "--server", "nowhere"]);
        assert!(source(&a, sock).is_err());
        assert!(crate::cli::Cli::try_parse_from([
            "ciliate",
            "ui",
            "--server",
            "a:1",
            "--hubble-socket",
            "/h"
        ])
        .is_err());
        assert!(
            crate::cli::Cli::try_parse_from(["ciliate", "ui", "--address", "localhost"]).is_err()
        );
    }
}
