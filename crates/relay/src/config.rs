//! The relay's flags, parsed into one [`Config`] by a pure function.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::discovery::StaticPeer;
use crate::flows::MergeConfig;
use crate::pool::PoolConfig;

/// Hubble relay's port.
pub const DEFAULT_PORT: u16 = 4245;

/// `ciliate-relay`: one Hubble observer API for the whole cluster.
#[derive(Debug, Parser)]
#[command(
    name = "ciliate-relay",
    version,
    about = "One Hubble observer API for the whole cluster: merges every node's flows in time \
             order, as hubble-relay does",
    long_about = "One Hubble observer API (observer.Observer, gRPC) for the whole cluster: \
                  GetFlows merges every node's flows in time order (filters, --last, --first, \
                  --since/--until and --follow apply cluster-wide), ServerStatus sums the \
                  nodes' counts and names the missing ones, GetNodes lists each node's state. \
                  Nodes come from --peer and/or from their records in etcd \
                  (--etcd-endpoints; agents publish their --hubble-listen-address there). \
                  Hubble's CLI reads it: `hubble observe --server localhost:4245`."
)]
pub struct Args {
    /// Where to serve the API: `host:port`, `:port` (every address) or `unix:///path`;
    /// repeat for several.
    #[arg(long, env = "CILIATE_RELAY_LISTEN_ADDRESS", value_name = "ADDR", default_value = ":4245", value_parser = parse_listen)]
    pub listen_address: Vec<Listen>,

    /// A node to read: `NAME=ADDR` with ADDR `host:port` or `unix:///path/hubble.sock`;
    /// repeat for several. Works alone or beside --etcd-endpoints.
    #[arg(long, value_name = "NAME=ADDR")]
    pub peer: Vec<StaticPeer>,

    /// etcd client URLs (comma-separated): read every node whose record carries a
    /// hubbleAddress, following joins and leaves.
    #[arg(
        long,
        env = "CILIATE_ETCD_ENDPOINTS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,

    /// The most flows held to sort the nodes' streams into one; when full the oldest goes out
    /// even if a slower node might still send an older one.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sort_buffer_len_max: u32,

    /// The longest a flow waits for slower (or idle) nodes before it goes out.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub sort_buffer_drain_timeout: Duration,

    /// Bound on connecting to a node and on each node's answer to a status request.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub dial_timeout: Duration,

    /// The longest wait between two attempts to reach a node that went away (the wait starts
    /// at 200 ms and doubles).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub retry_timeout: Duration,

    /// How long a node whose record left etcd stays listed (as NODE_GONE).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub gone_node_retention: Duration,

    /// Also serve the service map (what `ciliate ui` serves: workloads, Services and their
    /// connections, live) on this `host:port`, drawn from this relay's flows.
    #[arg(long, env = "CILIATE_RELAY_UI_ADDRESS", value_name = "ADDR")]
    pub ui_address: Option<SocketAddr>,

    /// The relay's name in the node status events it sends.
    #[arg(long, value_name = "NAME", default_value = "ciliate-relay")]
    pub name: String,
}

/// A listen address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// TCP.
    Tcp(SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(p) = s.strip_prefix("unix://") {
        if p.is_empty() {
            return Err("unix:// needs a socket path".into());
        }
        return Ok(Listen::Unix(PathBuf::from(p)));
    }
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse().map(Listen::Tcp).map_err(|_| {
        format!("{s:?}: expected host:port with a numeric host, :port, or unix:///path")
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 500ms, 2s, 1m)"))
}

/// The configuration in force.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to serve.
    pub listen: Vec<Listen>,
    /// Static nodes.
    pub peers: Vec<StaticPeer>,
    /// etcd endpoints, if discovering through etcd.
    pub etcd_endpoints: Vec<String>,
    /// Connections to the nodes.
    pub pool: PoolConfig,
    /// Merging.
    pub merge: MergeConfig,
    /// Where to serve the service map, if anywhere.
    pub ui_address: Option<SocketAddr>,
}

impl Config {
    /// Checks the flags and resolves them.
    pub fn from_args(a: Args) -> Result<Self, String> {
        if a.peer.is_empty() && a.etcd_endpoints.is_empty() {
            return Err(
                "no nodes to read: give --peer NAME=ADDR (repeatable) and/or --etcd-endpoints"
                    .into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &a.peer {
            if !seen.insert(&p.name) {
                return Err(format!("--peer {}: the name is given twice", p.name));
            }
        }
        if a.sort_buffer_drain_timeout.is_zero() {
            return Err("--sort-buffer-drain-timeout must be above zero".into());
        }
        if a.dial_timeout.is_zero() || a.retry_timeout.is_zero() {
            return Err("--dial-timeout and --retry-timeout must be above zero".into());
        }
        Ok(Self {
            listen: a.listen_address,
            peers: a.peer,
            etcd_endpoints: a.etcd_endpoints,
            pool: PoolConfig {
                dial_timeout: a.dial_timeout,
                backoff_min: Duration::from_millis(200).min(a.retry_timeout),
                backoff_max: a.retry_timeout,
                gone_retention: a.gone_node_retention,
            },
            merge: MergeConfig {
                sort_buffer_len_max: a.sort_buffer_len_max as usize,
                sort_buffer_drain_timeout: a.sort_buffer_drain_timeout,
                relay_name: a.name,
            },
            ui_address: a.ui_address,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["ciliate-relay"];
        argv.extend_from_slice(args);
        Config::from_args(Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_match_hubble_relay_where_it_has_them() {
        let c = parse(&["--peer", "a=unix:///x"]).unwrap();
        assert_eq!(c.listen, [Listen::Tcp("0.0.0.0:4245".parse().unwrap())]);
        assert_eq!(c.merge.sort_buffer_drain_timeout, Duration::from_secs(1));
        assert!(c.etcd_endpoints.is_empty());
    }

    #[test]
    fn bad_flags_say_which_and_why() {
        let e = parse(&[]).unwrap_err();
        assert!(e.contains("no nodes to read"), "{e}");
        let e = parse(&["--peer", "a=unix:///x", "--peer", "a=1.2.3.4:1"]).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        let e = parse(&["--peer", "nonsense"]).unwrap_err();
        assert!(e.contains("NAME=ADDR"), "{e}");
        let e = parse(&["--peer", "a=unix:///x", "--listen-address", "localhost"]).unwrap_err();
        assert!(e.contains("expected host:port"), "{e}");
        let e = parse(&[
            "--peer",
            "a=unix:///x",
            "--sort-buffer-drain-timeout",
            "soon",
        ])
        .unwrap_err();
        assert!(e.contains("e.g. 500ms"), "{e}");
        let c = parse(&[
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--listen-address",
            "127.0.0.1:4245",
            "--listen-address",
            "unix:///run/r.sock",
        ])
        .unwrap();
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert_eq!(c.listen[1], Listen::Unix("/run/r.sock".into()));
    }
}
