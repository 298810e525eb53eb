//! The agent's configuration: command-line flags with `CILIATE_*` environment fallbacks.
//!
//! [`Config::parse_from`] is a pure function of the arguments and an [`Environment`], so tests
//! never touch the process environment. The resolved [`Config`] is served at `GET /v1/config`,
//! so anyone can see what is in force.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use crate::ipam::MAX_PREFIX_LEN;

/// Where configuration comes from besides the command line.
pub trait Environment {
    /// The value of an environment variable, if set.
    fn var(&self, name: &str) -> Option<OsString>;
    /// The machine's hostname (the default node name).
    fn hostname(&self) -> std::io::Result<String>;
}

/// The process environment and the kernel's hostname.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn hostname(&self) -> std::io::Result<String> {
        // The kernel's UTS name, as `hostname` prints it; no libc call needed.
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned())
    }
}

/// A fixed environment, for tests and embedding.
#[derive(Clone, Debug, Default)]
pub struct StaticEnvironment {
    /// Variables by name.
    pub vars: BTreeMap<String, String>,
    /// The hostname; `None` makes [`Environment::hostname`] fail.
    pub hostname: Option<String>,
}

impl Environment for StaticEnvironment {
    fn var(&self, name: &str) -> Option<OsString> {
        self.vars.get(name).map(OsString::from)
    }

    fn hostname(&self) -> std::io::Result<String> {
        self.hostname
            .clone()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no hostname set"))
    }
}

/// How the agent reaches the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// The kubeconfig file; `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

/// Which datapath to program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// The kernel datapath: BPF programs attached to pod veths (needs root and bpffs).
    Bpf,
    /// An in-memory datapath that forwards nothing: for tests and for trying the control plane
    /// without root.
    Fake,
}

/// How pods reach pods of other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    /// A VXLAN device in collect_md mode, driven by the BPF programs.
    Vxlan,
    /// No overlay: the node's routing must know the other nodes' pod CIDRs.
    Disabled,
}

/// Membership in a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// etcd endpoints.
    pub etcd_endpoints: Vec<String>,
    /// The address other nodes reach this one on (the first --node-ip).
    pub underlay_ip: Ipv4Addr,
    /// The overlay.
    pub tunnel: TunnelMode,
    /// Its UDP port.
    pub tunnel_port: u16,
    /// Lifetime of the node's etcd records without the agent.
    pub lease_ttl_seconds: u64,
}

/// Bytes VXLAN adds to a packet (outer Ethernet, IPv4, UDP, VXLAN headers).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The node's MTU when neither configured nor found on an uplink.
pub const DEFAULT_MTU: u32 = 1500;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The command line of `ciliate-agent`. Every flag can also be set through the environment
/// variable shown in `--help`; a flag given on the command line wins.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ciliate-agent",
    version,
    about = "The per-node Ciliate agent: owns the node's pod CIDR, allocates addresses and \
             security identities to pods, programs the datapath and serves the API the CNI \
             plugin and the ciliate CLI use.",
    after_help = "The log level comes from RUST_LOG (default: info), e.g. RUST_LOG=debug or \
                  RUST_LOG=ciliate_agent=debug,info."
)]
pub struct Args {
    /// Name of this node. It keys the agent's state directory and the datapath's bpffs pins, so
    /// it must stay the same across restarts. [default: the hostname]
    #[arg(long, env = "CILIATE_NODE_NAME", value_name = "NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,

    /// The IPv4 range pods on this node get addresses from. The network, first host (kept for
    /// the node's router) and broadcast addresses are never handed out, so the prefix must be
    /// /30 or shorter. Changing it while pods hold addresses from the old range is refused.
    #[arg(long, env = "CILIATE_POD_CIDR", value_name = "CIDR", default_value = "10.200.0.0/24", value_parser = parse_pod_cidr)]
    pub pod_cidr: Ipv4Net,

    /// Directory for the agent's persistent state; the agent keeps <DIR>/<node-name>/state.json
    /// (endpoints, identities and address allocations) so a restart loses nothing.
    #[arg(
        long,
        env = "CILIATE_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/ciliate"
    )]
    pub state_dir: PathBuf,

    /// Where the BPF filesystem is mounted; the datapath pins its programs and maps under
    /// <DIR>/ciliate/<node-name>/ so they outlive the agent.
    #[arg(
        long,
        env = "CILIATE_BPFFS_ROOT",
        value_name = "DIR",
        default_value = "/sys/fs/bpf"
    )]
    pub bpffs_root: PathBuf,

    /// Path of the unix socket the API is served on (mode 0600: only root may talk to the
    /// agent). The CNI plugin and the ciliate CLI connect to it.
    #[arg(long, env = "CILIATE_SOCKET", value_name = "PATH", default_value = ciliate_model::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Which datapath to program: `bpf` loads the kernel datapath (needs root and bpffs);
    /// `fake` keeps everything in memory and forwards nothing, to try the control plane
    /// without root.
    #[arg(long, env = "CILIATE_DATAPATH", value_name = "KIND", value_enum, default_value_t = DatapathKind::Bpf)]
    pub datapath: DatapathKind,

    /// MTU of the node's network; by default the MTU of its uplink (the interface holding
    /// --node-ip, else the one the default route leaves by; 1500 when there is none). Pod
    /// interfaces get it as it is, or 50 bytes less with the VXLAN overlay (the
    /// encapsulation's overhead), so that nothing needs fragmenting.
    #[arg(long, env = "CILIATE_MTU", value_name = "BYTES", value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub mtu: Option<u32>,

    /// Seconds between two passes of connection-tracking garbage collection, which deletes
    /// expired entries so the table does not fill up.
    #[arg(long, env = "CILIATE_CT_GC_INTERVAL", value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub ct_gc_interval: u64,

    /// Directory of Kubernetes manifests (Service, EndpointSlice, Endpoints, NetworkPolicy,
    /// CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy; *.yaml, *.yml, *.json) the agent
    /// keeps in force. A file is read when its writer closes or renames it (inotify; checked
    /// every 2 seconds as well); only changed files are read again; the directory's objects
    /// apply as one batch (Services and policies each), and a directory with an invalid file
    /// keeps the last good set (the errors are logged and shown in status). Where it and the
    /// API define one object, the directory's copy is in force.
    #[arg(long, env = "CILIATE_MANIFEST_DIR", value_name = "DIR")]
    pub manifest_dir: Option<PathBuf>,

    /// Take Services, EndpointSlices, Namespaces, NetworkPolicies, CiliumNetworkPolicies and
    /// CiliumClusterwideNetworkPolicies from the Kubernetes API (list and watch), and the
    /// node's pod CIDR from its Node object. Uses the in-cluster service account unless
    /// --k8s-kubeconfig is given.
    #[arg(long, env = "CILIATE_K8S")]
    pub k8s: bool,

    /// The kubeconfig to reach the Kubernetes API with (implies --k8s).
    #[arg(long, env = "CILIATE_K8S_KUBECONFIG", value_name = "PATH")]
    pub k8s_kubeconfig: Option<PathBuf>,

    /// Write the CNI network configuration (`05-ciliate.conflist`) into this directory at
    /// start, e.g. the host's /etc/cni/net.d, as Cilium's install-cni does.
    #[arg(long, env = "CILIATE_WRITE_CNI_CONF", value_name = "DIR")]
    pub write_cni_conf: Option<PathBuf>,

    /// Copy the `ciliate-cni` plugin (found beside this binary) into this directory at start,
    /// e.g. the host's /opt/cni/bin.
    #[arg(long, env = "CILIATE_INSTALL_CNI_BIN", value_name = "DIR")]
    pub install_cni_bin: Option<PathBuf>,

    /// An IPv4 address of this node that NodePort Services answer on; repeat the flag (or
    /// separate with commas) for several. Without one, node ports are not programmed. For
    /// policy these are the `host` identity, as are the addresses found on the node's
    /// interfaces.
    #[arg(long = "node-ip", env = "CILIATE_NODE_IPS", value_name = "ADDR", value_delimiter = ',', value_parser = parse_node_ip)]
    pub node_ips: Vec<Ipv4Addr>,

    /// The cgroup (v2) whose processes get socket-level load balancing: their connect() to a
    /// Service goes straight to a backend. Put the pods' processes (the runtime's pod cgroups)
    /// under it. Never the cgroup root by default, which would put every process of the
    /// machine behind this node's Services. [default: <cgroup2 mount>/ciliate/<node-name>]
    #[arg(
        long,
        env = "CILIATE_SOCKET_LB_CGROUP",
        value_name = "DIR",
        conflicts_with = "no_socket_lb"
    )]
    pub socket_lb_cgroup: Option<PathBuf>,

    /// Turn socket-level load balancing off: Services are then served by per-packet
    /// translation on the pods' veths alone.
    #[arg(long, env = "CILIATE_NO_SOCKET_LB")]
    pub no_socket_lb: bool,

    /// Masquerade pods' traffic to destinations outside the cluster (neither a pod nor a node
    /// the cluster knows, nor in --non-masquerade-cidrs) as the node's address, in BPF on the
    /// uplink: the interface holding --node-ip, else the one the default route leaves by. On
    /// by default; without an uplink there is nothing to do.
    #[arg(long, overrides_with = "no_masquerade")]
    pub masquerade: bool,

    /// Turn masquerading off: pods' traffic leaves with their own addresses, so the network
    /// must route the pod CIDRs back to the node.
    #[arg(long, env = "CILIATE_NO_MASQUERADE", overrides_with = "masquerade")]
    pub no_masquerade: bool,

    /// Destinations never masqueraded besides the cluster's own (comma-separated IPv4 CIDRs,
    /// e.g. 10.0.0.0/8,192.168.0.0/16). The node's pod CIDR always is.
    #[arg(long, env = "CILIATE_NON_MASQUERADE_CIDRS", value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub non_masquerade_cidrs: Vec<Ipv4Net>,

    /// Join a cluster through these etcd endpoints (comma-separated URLs, e.g.
    /// http://10.0.0.1:2379): the node registers itself, security identities are numbered
    /// cluster-wide, and every node learns every pod's address and identity. Needs --node-ip
    /// (the first is the address other nodes reach this one on). Without it the node stands
    /// alone.
    #[arg(long, env = "CILIATE_ETCD_ENDPOINTS", value_name = "URLS", value_delimiter = ',', value_parser = parse_etcd_endpoint)]
    pub etcd_endpoints: Vec<String>,

    /// How pods reach pods of other nodes: `vxlan` (the default in a cluster) encapsulates their
    /// packets with the sender's security identity as the VNI; `disabled` leaves them to the
    /// node's routing.
    #[arg(long, env = "CILIATE_TUNNEL", value_name = "MODE", value_enum)]
    pub tunnel: Option<TunnelMode>,

    /// UDP port of the VXLAN overlay (Cilium's default; every node must use the same).
    #[arg(
        long,
        env = "CILIATE_TUNNEL_PORT",
        value_name = "PORT",
        default_value_t = 8472
    )]
    pub tunnel_port: u16,

    /// Seconds the node's records in etcd (its registration, identity references, endpoint
    /// addresses) outlive the agent: long enough that a restarting or briefly dead agent
    /// leaves other nodes' traffic to its pods untouched, short enough that a node gone for
    /// good ages out.
    #[arg(long, env = "CILIATE_ETCD_LEASE_TTL", value_name = "SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(5..=86400))]
    pub etcd_lease_ttl: u64,

    /// How log lines are written: `text` for people, `json` for log collectors.
    #[arg(long, env = "CILIATE_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The node's L7 proxy binary, started (and restarted) by the agent as soon as a policy
    /// with HTTP rules is in force; connections such rules cover go through it. Default:
    /// `ciliate-proxy` beside the agent's own binary.
    #[arg(long, env = "CILIATE_PROXY_BIN", value_name = "PATH")]
    pub proxy_bin: Option<PathBuf>,

    /// Run no L7 proxy: HTTP rules are still computed, and the connections they cover are
    /// refused (fail closed), as `ciliate status` then says.
    #[arg(long, env = "CILIATE_NO_L7_PROXY")]
    pub no_l7_proxy: bool,

    /// The shortest time an address learned from a DNS answer stays allowed for `toFQDNs`
    /// rules, whatever TTL the answer gave (Cilium's default).
    #[arg(long, env = "CILIATE_TOFQDNS_MIN_TTL", value_name = "SECONDS", default_value_t = crate::fqdn::cache::DEFAULT_MIN_TTL)]
    pub tofqdns_min_ttl: u32,

    /// The most addresses each endpoint keeps per name learned from DNS answers; the ones
    /// that expire first go (Cilium's default).
    #[arg(long, env = "CILIATE_TOFQDNS_MAX_IPS_PER_HOSTNAME", value_name = "N", default_value_t = crate::fqdn::cache::DEFAULT_MAX_IPS_PER_HOSTNAME, value_parser = parse_max_ips)]
    pub tofqdns_max_ips_per_hostname: usize,

    /// Flow observability (the Hubble-compatible observer).
    #[command(flatten)]
    pub observer: crate::observer::ObserverArgs,
}

/// The configuration in force, resolved from flags, environment and defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Name of this node.
    pub node_name: String,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Root of the state directories (`<state_dir>/<node_name>/`).
    pub state_dir: PathBuf,
    /// Where bpffs is mounted.
    pub bpffs_root: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// Which datapath is programmed.
    pub datapath: DatapathKind,
    /// MTU of the node's network as configured; `None` follows the uplink.
    pub mtu: Option<u32>,
    /// Seconds between conntrack GC passes.
    pub ct_gc_interval_seconds: u64,
    /// `--tofqdns-min-ttl`, seconds.
    pub tofqdns_min_ttl: u32,
    /// `--tofqdns-max-ips-per-hostname`.
    pub tofqdns_max_ips_per_hostname: usize,
    /// The manifest directory, if any.
    pub manifest_dir: Option<PathBuf>,
    /// The Kubernetes API as a source, when enabled.
    pub kubernetes: Option<KubernetesConfig>,
    /// Where to write the CNI configuration at start.
    pub write_cni_conf: Option<PathBuf>,
    /// Where to install the CNI plugin at start.
    pub install_cni_bin: Option<PathBuf>,
    /// Node addresses NodePort Services answer on.
    pub node_ips: Vec<Ipv4Addr>,
    /// Whether pods' traffic to the world is masqueraded.
    pub masquerade: bool,
    /// Destinations never masqueraded besides the cluster's and the pod CIDR.
    pub non_masquerade_cidrs: Vec<Ipv4Net>,
    /// The cgroup with socket LB, `None` when it is off.
    pub socket_lb_cgroup: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// The log filter (RUST_LOG, default `info`).
    pub log_filter: String,
    /// The flow observer's sockets, ring size and metrics address.
    pub observer: crate::observer::ObserverSettings,
    /// The L7 proxy binary; `None` runs none (`--no-l7-proxy`).
    pub proxy_bin: Option<PathBuf>,
    /// The cluster this node is part of; `None` stands alone.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// The MTU of pod interfaces: the node's (as configured, else `uplink`'s, else
    /// [`DEFAULT_MTU`]), less the overlay's overhead when there is one.
    pub fn pod_mtu(&self, uplink: Option<u32>) -> u32 {
        let node = self.mtu.or(uplink).unwrap_or(DEFAULT_MTU);
        match &self.cluster {
            Some(c) if c.tunnel == TunnelMode::Vxlan => node.saturating_sub(VXLAN_OVERHEAD),
            _ => node,
        }
    }

    /// The node's address whose interface is the uplink: the underlay address in a cluster,
    /// else the first `--node-ip`; `None` means the default route's interface.
    pub fn uplink_address(&self) -> Option<Ipv4Addr> {
        match &self.cluster {
            Some(c) => Some(c.underlay_ip),
            None => self.node_ips.first().copied(),
        }
    }
}

/// `ciliate-proxy` beside the running binary (as installed, and as cargo builds them).
fn default_proxy_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ciliate-proxy")))
        .unwrap_or_else(|| PathBuf::from("ciliate-proxy"))
}

/// Why the configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag was wrong, or `--help`/`--version` was asked for: [`clap::Error::exit`] prints it
    /// and exits with the right code.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// An environment variable held a value the flag does not accept.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What clap said about the value.
        message: String,
    },
    /// An environment variable is not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    /// Flags that are fine alone contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// No node name was given and the hostname cannot be read or is not a valid node name.
    #[error("no --node-name given and the hostname is not usable as one ({0}); pass --node-name or set CILIATE_NODE_NAME")]
    NoNodeName(String),
}

impl Config {
    /// Resolves the configuration from `args` (the first item is the program name) and `env`.
    ///
    /// Precedence per flag: command line, then the environment variable, then the default. The
    /// node name defaults to the hostname.
    pub fn parse_from<I, T>(args: I, env: &dyn Environment) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cmd = command();

        // First pass, environment ignored: which flags did the command line set?
        let matches = cmd.clone().try_get_matches_from(&args)?;

        // Values from the environment go in as flags for what the command line left unset, so
        // they pass through the same parsers and checks as the flags themselves.
        let mut from_env: Vec<(String, String)> = Vec::new();
        let mut extra: Vec<OsString> = Vec::new();
        for (id, long, var, switch) in env_flags() {
            if matches.value_source(&id) == Some(ValueSource::CommandLine) {
                continue;
            }
            if let Some(value) = env.var(&var) {
                let value = value
                    .into_string()
                    .map_err(|_| ConfigError::NotUnicode(var.clone()))?;
                if switch {
                    // A switch takes no value on the command line: the variable says whether
                    // it is given.
                    if env_switch(&var, &value)? {
                        extra.push(format!("--{long}").into());
                    }
                } else {
                    extra.push(format!("--{long}={value}").into());
                }
                from_env.push((long, var));
            }
        }
        let mut all = Vec::with_capacity(args.len() + extra.len());
        all.extend(args.first().cloned());
        all.extend(extra);
        all.extend(args.iter().skip(1).cloned());

        let matches = cmd
            .try_get_matches_from(&all)
            .map_err(|e| blame_env(e, &from_env))?;
        let parsed = Args::from_arg_matches(&matches)?;

        let node_name = match parsed.node_name {
            Some(n) => n,
            None => {
                let host = env
                    .hostname()
                    .map_err(|e| ConfigError::NoNodeName(e.to_string()))?;
                parse_node_name(&host).map_err(|e| ConfigError::NoNodeName(e.to_string()))?
            }
        };
        let log_filter = env
            .var("RUST_LOG")
            .and_then(|v| v.into_string().ok())
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "info".to_owned());

        let socket_lb_cgroup = if parsed.no_socket_lb {
            None
        } else {
            parsed
                .socket_lb_cgroup
                .or_else(|| ciliate_datapath::linux::default_socket_lb_cgroup(&node_name))
        };
        let cluster = match (parsed.etcd_endpoints.is_empty(), parsed.node_ips.first()) {
            (true, _) => {
                if parsed.tunnel == Some(TunnelMode::Vxlan) {
                    return Err(ConfigError::Invalid(
                        "--tunnel vxlan needs --etcd-endpoints: the overlay learns where pods are from the cluster".into(),
                    ));
                }
                None
            }
            (false, None) => {
                return Err(ConfigError::Invalid(
                    "--etcd-endpoints needs --node-ip: the first is the address other nodes reach this node on".into(),
                ))
            }
            (false, Some(ip)) => Some(ClusterConfig {
                etcd_endpoints: parsed.etcd_endpoints,
                underlay_ip: *ip,
                tunnel: parsed.tunnel.unwrap_or(TunnelMode::Vxlan),
                tunnel_port: parsed.tunnel_port,
                lease_ttl_seconds: parsed.etcd_lease_ttl,
            }),
        };
        Ok(Config {
            cluster,
            node_name,
            observer: crate::observer::ObserverSettings::from_args(parsed.observer, &parsed.socket)
                .map_err(ConfigError::Invalid)?,
            pod_cidr: parsed.pod_cidr,
            state_dir: parsed.state_dir,
            bpffs_root: parsed.bpffs_root,
            socket: parsed.socket,
            datapath: parsed.datapath,
            mtu: parsed.mtu,
            ct_gc_interval_seconds: parsed.ct_gc_interval,
            tofqdns_min_ttl: parsed.tofqdns_min_ttl,
            tofqdns_max_ips_per_hostname: parsed.tofqdns_max_ips_per_hostname,
            manifest_dir: parsed.manifest_dir,
            kubernetes: (parsed.k8s || parsed.k8s_kubeconfig.is_some()).then_some(
                KubernetesConfig {
                    kubeconfig: parsed.k8s_kubeconfig,
                },
            ),
            write_cni_conf: parsed.write_cni_conf,
            install_cni_bin: parsed.install_cni_bin,
            node_ips: parsed.node_ips,
            socket_lb_cgroup,
            masquerade: !parsed.no_masquerade,
            non_masquerade_cidrs: parsed.non_masquerade_cidrs,
            log_format: parsed.log_format,
            log_filter,
            proxy_bin: (!parsed.no_l7_proxy)
                .then(|| parsed.proxy_bin.unwrap_or_else(default_proxy_bin)),
        })
    }

    /// The FQDN cache's settings.
    pub fn fqdn_settings(&self) -> crate::fqdn::FqdnSettings {
        crate::fqdn::FqdnSettings {
            limits: crate::fqdn::cache::CacheLimits {
                min_ttl: self.tofqdns_min_ttl,
                max_ips_per_hostname: self.tofqdns_max_ips_per_hostname,
            },
            zombie_check: std::time::Duration::from_secs(self.ct_gc_interval_seconds),
        }
    }

    /// This node's state directory: `<state_dir>/<node_name>`.
    pub fn node_state_dir(&self) -> PathBuf {
        self.state_dir.join(&self.node_name)
    }

    /// This node's state file: `<state_dir>/<node_name>/state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.node_state_dir().join("state.json")
    }
}

/// The clap command with environment lookups removed (clap would read the process environment
/// itself), the variable names moved into the help text instead.
pub fn command() -> clap::Command {
    Args::command().mut_args(|arg| {
        let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
            return arg;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.env(None::<&'static str>)
            .help(format!("{help} [env: {var}]"))
    })
}

/// `(id, long flag, env var)` of every flag with an environment fallback.
/// An etcd endpoint: an http(s) URL with a host and port.
fn parse_etcd_endpoint(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("{s:?} is not an http:// or https:// URL (e.g. http://10.0.0.1:2379)")
        })?;
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_owned()),
        _ => Err(format!(
            "{s:?} has no host:port (e.g. http://10.0.0.1:2379)"
        )),
    }
}

/// Every flag with an environment variable: (id, long name, variable, whether it is a switch).
fn env_flags() -> Vec<(String, String, String, bool)> {
    // `command()` moved the names into the help text; read them from the untouched command.
    Args::command()
        .get_arguments()
        .filter_map(|a| {
            let var = a.get_env()?.to_str()?.to_owned();
            let long = a.get_long()?.to_owned();
            let switch = matches!(a.get_action(), clap::ArgAction::SetTrue);
            Some((a.get_id().to_string(), long, var, switch))
        })
        .collect()
}

/// The value of a switch's variable, read as clap's own `FalseyValueParser` would.
fn env_switch(var: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Ok(true),
        "" | "0" | "false" | "no" | "off" | "n" => Ok(false),
        _ => Err(ConfigError::Env {
            var: var.to_owned(),
            message: format!("invalid value {value:?}: use true or false"),
        }),
    }
}

/// Rewrites a clap error about a value that came from the environment so it names the variable.
fn blame_env(e: clap::Error, from_env: &[(String, String)]) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        for (long, var) in from_env {
            let flag = format!("--{long}");
            if arg == &flag || arg.starts_with(&format!("{flag} ")) {
                let mut message = e.render().to_string();
                // Keep clap's first line (what was wrong), not its usage hints.
                if let Some(first) = message.lines().next() {
                    message = first.trim_start_matches("error: ").to_owned();
                }
                return ConfigError::Env {
                    var: var.clone(),
                    message,
                };
            }
        }
    }
    ConfigError::Args(e)
}

/// A pod CIDR: IPv4, network address, prefix /30 or shorter.
fn parse_pod_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net: IpNet = s.parse().map_err(|_| {
        format!("{s:?} is not a CIDR; write it as address/prefix, e.g. 10.200.0.0/24")
    })?;
    let IpNet::V4(net) = net else {
        return Err(format!(
            "{s} is an IPv6 CIDR; only IPv4 pod CIDRs are supported, e.g. 10.200.0.0/24"
        ));
    };
    if net.prefix_len() > MAX_PREFIX_LEN {
        return Err(format!(
            "{net} is too small: the prefix must be /{MAX_PREFIX_LEN} or shorter, because the \
             network, router and broadcast addresses are reserved"
        ));
    }
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// An IPv4 CIDR, network address (for --non-masquerade-cidrs).
fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        format!("{s:?} is not an IPv4 CIDR; write it as address/prefix, e.g. 10.0.0.0/8")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A node address for NodePort frontends: IPv4, unicast.
fn parse_node_ip(s: &str) -> Result<Ipv4Addr, String> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()) => Ok(a),
        Ok(IpAddr::V4(a)) => Err(format!(
            "{a} is not a unicast address; give one of the node's own addresses"
        )),
        Ok(IpAddr::V6(a)) => Err(format!("{a} is IPv6; the datapath is IPv4-only")),
        Err(_) => Err(format!("{s:?} is not an IPv4 address, e.g. 192.168.1.10")),
    }
}

fn parse_max_ips(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a count of at least 1")),
    }
}

/// Node names end up in file paths and bpffs pin paths: keep them to what DNS names allow.
fn parse_node_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the node name is empty".to_owned());
    }
    if s.len() > 253 {
        return Err(format!("node name {s:?} is longer than 253 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "node name {s:?} holds {c:?}; use letters, digits, '-', '.' and '_' only"
        ));
    }
    if s.starts_with('.') {
        return Err(format!("node name {s:?} may not start with '.'"));
    }
    Ok(s.to_owned())
}

impl fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bpf => "bpf",
            Self::Fake => "fake",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> StaticEnvironment {
        StaticEnvironment {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            hostname: Some("node-a".to_owned()),
        }
    }

    fn parse(args: &[&str], e: &StaticEnvironment) -> Result<Config, ConfigError> {
        Config::parse_from(
            std::iter::once("ciliate-agent").chain(args.iter().copied()),
            e,
        )
    }

    #[test]
    fn switches_from_the_environment_take_true_or_false() {
        let on = parse(
            &["--node-name", "n1"],
            &env(&[
                ("CILIATE_NO_SOCKET_LB", "true"),
                ("CILIATE_NO_MASQUERADE", "1"),
            ]),
        )
        .expect("switches on");
        assert_eq!(on.socket_lb_cgroup, None);
        assert!(!on.masquerade, "{on:?}");
        let off = parse(
            &["--node-name", "n1"],
            &env(&[
                ("CILIATE_NO_SOCKET_LB", "false"),
                ("CILIATE_NO_MASQUERADE", ""),
            ]),
        )
        .expect("switches off");
        assert!(off.socket_lb_cgroup.is_some());
        assert!(off.masquerade, "{off:?}");
        let bad = parse(
            &["--node-name", "n1"],
            &env(&[("CILIATE_NO_SOCKET_LB", "maybe")]),
        )
        .expect_err("not a boolean");
        assert!(
            bad.to_string()
                .contains("environment variable CILIATE_NO_SOCKET_LB: invalid value \"maybe\""),
            "{bad}"
        );
    }

    #[test]
    fn a_cluster_needs_an_underlay_address_and_takes_the_overlay_from_the_mtu() {
        let alone = parse(&["--node-name", "n1"], &env(&[])).expect("defaults");
        assert_eq!(alone.cluster, None);
        assert_eq!(alone.pod_mtu(None), 1500);
        assert_eq!(alone.pod_mtu(Some(1400)), 1400, "the uplink's");
        let joined = parse(
            &["--node-name", "n1", "--node-ip", "172.31.0.10"],
            &env(&[(
                "CILIATE_ETCD_ENDPOINTS",
                "http://172.31.0.1:2379,https://e2:2379",
            )]),
        )
        .expect("cluster");
        let c = joined.cluster.clone().expect("cluster config");
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert_eq!(c.underlay_ip, Ipv4Addr::new(172, 31, 0, 10));
        assert_eq!(
            (c.tunnel, c.tunnel_port, c.lease_ttl_seconds),
            (TunnelMode::Vxlan, 8472, 900)
        );
        assert_eq!(joined.pod_mtu(None), 1450);
        assert_eq!(
            joined.pod_mtu(Some(9000)),
            8950,
            "the uplink's, less the overlay"
        );
        assert_eq!(joined.uplink_address(), Some(Ipv4Addr::new(172, 31, 0, 10)));
        let routed = parse(
            &[
                "--node-name",
                "n1",
                "--node-ip",
                "172.31.0.10",
                "--etcd-endpoints",
                "http://e:2379",
                "--tunnel",
                "disabled",
            ],
            &env(&[]),
        )
        .expect("no overlay");
        assert_eq!(routed.pod_mtu(None), 1500);

        let err = |args: &[&str]| parse(args, &env(&[])).expect_err("refused").to_string();
        assert!(
            err(&["--node-name", "n1", "--etcd-endpoints", "http://e:2379"])
                .contains("needs --node-ip")
        );
        assert!(err(&["--node-name", "n1", "--tunnel", "vxlan"]).contains("needs --etcd-endpoints"));
        assert!(err(&[
            "--node-name",
            "n1",
            "--node-ip",
            "10.0.0.1",
            "--etcd-endpoints",
            "e:2379"
        ])
        .contains("not an http"));
        assert!(err(&[
            "--node-name",
            "n1",
            "--node-ip",
            "10.0.0.1",
            "--etcd-endpoints",
            "http://e"
        ])
        .contains("no host:port"));
    }

    #[test]
    fn socket_lb_is_on_by_default_and_can_move_or_go() {
        let on = parse(&["--node-name", "n1"], &env(&[])).expect("defaults");
        if let Some(cg) = on.socket_lb_cgroup {
            assert!(
                cg.ends_with("ciliate/n1"),
                "never the cgroup root: {}",
                cg.display()
            );
        }
        let moved = parse(
            &[
                "--node-name",
                "n1",
                "--socket-lb-cgroup",
                "/sys/fs/cgroup/pods",
            ],
            &env(&[]),
        )
        .expect("moved");
        assert_eq!(
            moved.socket_lb_cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/pods"))
        );
        let on = parse(&["--node-name", "n1"], &env(&[])).expect("default");
        assert!(on.masquerade, "masquerading is on by default");
        let masq_off = parse(&["--node-name", "n1", "--no-masquerade"], &env(&[])).expect("off");
        assert!(!masq_off.masquerade);
        let again = parse(&["--no-masquerade", "--masquerade"], &env(&[])).expect("last wins");
        assert!(again.masquerade);
        let cidrs = parse(
            &["--non-masquerade-cidrs", "10.0.0.0/8,192.168.0.0/16"],
            &env(&[]),
        )
        .expect("cidrs");
        assert_eq!(cidrs.non_masquerade_cidrs.len(), 2);
        for bad in ["10.0.0.1/8", "fd00::/8", "ten"] {
            let err = parse(&["--non-masquerade-cidrs", bad], &env(&[]))
                .expect_err("refused")
                .to_string();
            assert!(err.contains("--non-masquerade-cidrs"), "{bad}: {err}");
        }
        let off = parse(&["--node-name", "n1", "--no-socket-lb"], &env(&[])).expect("off");
        assert_eq!(off.socket_lb_cgroup, None);
        assert!(parse(&["--no-socket-lb", "--socket-lb-cgroup", "/x"], &env(&[])).is_err());
    }

    #[test]
    fn monitor_aggregation_takes_ciliums_levels_and_defaults_to_medium() {
        use ciliate_datapath::MonitorAggregation;
        let level = |args: &[&str]| {
            let mut all = vec!["--node-name", "n1"];
            all.extend_from_slice(args);
            parse(&all, &env(&[])).map(|c| c.observer.monitor_aggregation)
        };
        assert_eq!(level(&[]).expect("default"), MonitorAggregation::Medium);
        assert_eq!(
            level(&["--monitor-aggregation", "none"]).expect("none"),
            MonitorAggregation::None
        );
        assert_eq!(
            level(&["--monitor-aggregation", "maximum"]).expect("maximum"),
            MonitorAggregation::Medium
        );
        let e = level(&["--monitor-aggregation", "loud"]).expect_err("unknown level");
        assert!(e.to_string().contains("loud"), "{e}");
    }

    #[test]
    fn export_flags_as_cilium_names_them() {
        let c = parse(
            &[
                "--node-name",
                "n1",
                "--hubble-export-file-path",
                "/tmp/events.log",
                "--hubble-export-fieldmask",
                "time,verdict",
            ],
            &env(&[(
                "CILIATE_HUBBLE_EXPORT_DENYLIST",
                r#"{"verdict":["FORWARDED"]}"#,
            )]),
        )
        .expect("valid");
        assert_eq!(c.observer.export.fieldmask, vec!["time", "verdict"]);
        assert_eq!(c.observer.export.denylist, r#"{"verdict":["FORWARDED"]}"#);
        let e = parse(
            &["--node-name", "n1", "--hubble-export-allowlist", "not json"],
            &env(&[]),
        )
        .expect_err("bad JSON");
        assert!(
            e.to_string().starts_with("--hubble-export-allowlist: "),
            "{e}"
        );
    }

    #[test]
    fn fqdn_limits_from_flags_and_environment() {
        let c = parse(
            &["--tofqdns-min-ttl", "60"],
            &env(&[("CILIATE_TOFQDNS_MAX_IPS_PER_HOSTNAME", "5")]),
        )
        .expect("parses");
        assert_eq!(c.fqdn_settings().limits.min_ttl, 60);
        assert_eq!(c.fqdn_settings().limits.max_ips_per_hostname, 5);
        assert_eq!(c.fqdn_settings().zombie_check.as_secs(), 30);
        let err = parse(&["--tofqdns-max-ips-per-hostname", "0"], &env(&[]))
            .expect_err("0 is refused")
            .to_string();
        assert!(err.contains("tofqdns-max-ips-per-hostname"), "{err}");
        assert!(parse(&["--tofqdns-min-ttl", "-1"], &env(&[])).is_err());
    }

    #[test]
    fn defaults() {
        let c = parse(&[], &env(&[])).expect("defaults parse");
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.pod_cidr.to_string(), "10.200.0.0/24");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ciliate"));
        assert_eq!(
            c.state_file(),
            PathBuf::from("/var/lib/ciliate/node-a/state.json")
        );
        assert_eq!(c.bpffs_root, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(c.socket, PathBuf::from("/var/run/ciliate/agent.sock"));
        assert_eq!(c.datapath, DatapathKind::Bpf);
        assert_eq!(c.mtu, None, "follows the uplink");
        assert_eq!(c.uplink_address(), None);
        assert_eq!(c.ct_gc_interval_seconds, 30);
        assert_eq!(
            (c.tofqdns_min_ttl, c.tofqdns_max_ips_per_hostname),
            (3600, 50)
        );
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.log_filter, "info");
        assert_eq!(c.manifest_dir, None);
        assert!(c.node_ips.is_empty());
    }

    #[test]
    fn service_flags() {
        let c = parse(
            &[
                "--node-ip",
                "192.168.1.10",
                "--node-ip=10.0.0.1,10.0.0.2",
                "--manifest-dir",
                "/etc/ciliate/services",
            ],
            &env(&[]),
        )
        .expect("parses");
        assert_eq!(
            c.node_ips,
            ["192.168.1.10", "10.0.0.1", "10.0.0.2"].map(|a| a.parse::<Ipv4Addr>().expect("addr"))
        );
        assert_eq!(c.manifest_dir, Some(PathBuf::from("/etc/ciliate/services")));
        let c = parse(&[], &env(&[("CILIATE_NODE_IPS", "10.1.1.1,10.1.1.2")])).expect("env");
        assert_eq!(c.node_ips.len(), 2);
        for (bad, want) in [
            ("fd00::1", "IPv6"),
            ("0.0.0.0", "unicast"),
            ("node", "not an IPv4"),
        ] {
            let err = parse(&["--node-ip", bad], &env(&[])).expect_err(bad);
            assert!(err.to_string().contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_beat_environment_beats_defaults() {
        let e = env(&[
            ("CILIATE_POD_CIDR", "10.1.0.0/16"),
            ("CILIATE_MTU", "9000"),
            ("CILIATE_NODE_NAME", "from-env"),
            ("CILIATE_DATAPATH", "fake"),
            ("RUST_LOG", "debug"),
        ]);
        let c = parse(&["--mtu", "1400", "--socket=/tmp/a.sock"], &e).expect("parses");
        assert_eq!(c.mtu, Some(1400), "flag wins");
        assert_eq!(c.pod_mtu(Some(9000)), 1400, "over the uplink");
        assert_eq!(c.pod_cidr.to_string(), "10.1.0.0/16", "env beats default");
        assert_eq!(c.node_name, "from-env");
        assert_eq!(c.datapath, DatapathKind::Fake);
        assert_eq!(c.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.log_filter, "debug");
    }

    #[test]
    fn pod_cidr_is_checked() {
        for (bad, want) in [
            ("10.0.0.0/31", "/30 or shorter"),
            ("10.0.0.1/32", "/30 or shorter"),
            ("fd00::/64", "IPv6"),
            ("10.0.0.5/24", "did you mean 10.0.0.0/24"),
            ("banana", "not a CIDR"),
        ] {
            let err = parse(&["--pod-cidr", bad], &env(&[])).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains(want), "{bad}: {msg}");
        }
        assert_eq!(
            parse(&["--pod-cidr", "10.0.0.4/30"], &env(&[]))
                .expect("a /30 is fine")
                .pod_cidr
                .to_string(),
            "10.0.0.4/30"
        );
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let err = parse(&[], &env(&[("CILIATE_POD_CIDR", "10.0.0.0/31")])).expect_err("too small");
        let msg = err.to_string();
        assert!(
            msg.contains("CILIATE_POD_CIDR") && msg.contains("/30"),
            "{msg}"
        );
        let err = parse(&[], &env(&[("CILIATE_DATAPATH", "ebpf")])).expect_err("bad kind");
        assert!(err.to_string().contains("CILIATE_DATAPATH"), "{err}");
        // A bad env value the command line overrides is never looked at.
        parse(
            &["--datapath", "fake"],
            &env(&[("CILIATE_DATAPATH", "ebpf")]),
        )
        .expect("flag wins");
    }

    #[test]
    fn other_flag_checks() {
        assert!(parse(&["--mtu", "100"], &env(&[])).is_err());
        assert!(parse(&["--ct-gc-interval", "0"], &env(&[])).is_err());
        assert!(parse(&["--log-format", "yaml"], &env(&[])).is_err());
        assert!(parse(&["--node-name", "../etc"], &env(&[])).is_err());
        assert!(parse(&["--node-name", ""], &env(&[])).is_err());
        assert!(parse(&["--bogus"], &env(&[])).is_err());
        let c = parse(
            &["--log-format", "json", "--ct-gc-interval", "5"],
            &env(&[]),
        )
        .expect("parses");
        assert_eq!(
            (c.log_format, c.ct_gc_interval_seconds),
            (LogFormat::Json, 5)
        );
    }

    #[test]
    fn node_name_falls_back_to_a_usable_hostname() {
        let mut e = env(&[]);
        e.hostname = None;
        let err = parse(&[], &e).expect_err("no hostname");
        assert!(matches!(err, ConfigError::NoNodeName(_)), "{err}");
        e.hostname = Some("bad/name".to_owned());
        assert!(matches!(parse(&[], &e), Err(ConfigError::NoNodeName(_))));
        assert_eq!(
            parse(&["--node-name", "n1"], &e).expect("flag").node_name,
            "n1"
        );
    }

    #[test]
    fn help_documents_every_flag_and_its_variable() {
        let err = parse(&["--help"], &env(&[])).expect_err("help is an exit");
        let ConfigError::Args(e) = err else {
            panic!("help must come back as a clap error to print");
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = e.render().to_string();
        for flag in [
            "--node-name",
            "--pod-cidr",
            "--state-dir",
            "--bpffs-root",
            "--socket",
            "--datapath",
            "--mtu",
            "--ct-gc-interval",
            "--log-format",
            "--manifest-dir",
            "--node-ip",
            "RUST_LOG",
        ] {
            assert!(help.contains(flag), "help lacks {flag}:\n{help}");
        }
        for var in [
            "CILIATE_NODE_NAME",
            "CILIATE_POD_CIDR",
            "CILIATE_LOG_FORMAT",
        ] {
            assert!(help.contains(var), "help lacks {var}:\n{help}");
        }
    }

    #[test]
    fn serialises_for_the_api() {
        let c = parse(&["--datapath", "fake"], &env(&[])).expect("parses");
        let v = serde_json::to_value(&c).expect("serialises");
        assert_eq!(v["nodeName"], "node-a");
        assert_eq!(v["podCidr"], "10.200.0.0/24");
        assert_eq!(v["datapath"], "fake");
        assert_eq!(v["ctGcIntervalSeconds"], 30);
    }
}
