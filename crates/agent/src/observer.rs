//! Flow observability in the agent: feeds the datapath's events to a
//! [`ciliate_observer::Observer`], keeps its name tables fresh from the endpoint, Service and
//! policy stores, and serves Hubble's observer gRPC API (unix socket, optionally TCP) and the
//! flow metrics (optionally, HTTP).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ciliate_datapath::Datapath;
use ciliate_kvstore::ClusterView;
use ciliate_model::lb::L4Proto;
use ciliate_observer::history::{FlowHistory, HistoryConfig};
use ciliate_observer::proto::flow::LostEventSource;
use ciliate_observer::server::{bind_unix, serve_tcp, serve_unix, Service};
use ciliate_observer::store::{EndpointInfo, ServiceRef, Snapshot, SwappableStore};
use ciliate_observer::{Observer, ObserverConfig};
use clap::Args;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

mod device_names;

use self::device_names::DeviceNames;
use crate::endpoints::EndpointManager;
use crate::policy::{FlowNames, PolicyManager};
use crate::services::ServiceManager;

/// How often the datapath's counter of lost events is read (names are refreshed on change
/// notifications, see [`AgentNames`]).
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// The observer's flags.
#[derive(Clone, Debug, Args)]
pub struct ObserverArgs {
    /// Unix socket the Hubble-compatible observer API is served on (`ciliate observe` and
    /// `hubble observe --server unix://PATH` read it). [default: hubble.sock beside --socket]
    #[arg(long, env = "CILIATE_HUBBLE_SOCKET", value_name = "PATH")]
    pub hubble_socket: Option<PathBuf>,

    /// Also serve the observer API on this TCP address, e.g. `:4244` (Hubble's port); off
    /// unless given. It has no authentication: bind it to an address only trusted peers reach.
    #[arg(long, env = "CILIATE_HUBBLE_LISTEN_ADDRESS", value_name = "ADDR", value_parser = parse_listen_address)]
    pub hubble_listen_address: Option<SocketAddr>,

    /// How many flows the observer keeps for `observe --last`.
    #[arg(long, env = "CILIATE_HUBBLE_EVENT_BUFFER_CAPACITY", value_name = "FLOWS", default_value_t = ciliate_observer::DEFAULT_RING_CAPACITY, value_parser = parse_capacity)]
    pub hubble_event_buffer_capacity: usize,

    /// Serve Hubble's flow metrics in the Prometheus text format on this address, e.g.
    /// `:9965`; off unless given.
    #[arg(long, env = "CILIATE_HUBBLE_METRICS_ADDRESS", value_name = "ADDR", value_parser = parse_listen_address)]
    pub hubble_metrics_address: Option<SocketAddr>,

    /// Which packets the datapath reports as trace events, in Cilium's levels: `medium`
    /// (`maximum`) reports a connection's first packet, first reply and new TCP flags where
    /// they are handed on (to-endpoint, to-stack, to-overlay, to-proxy); `low` (`lowest`)
    /// every packet there; `none` (`disabled`) every packet, also where it leaves an endpoint
    /// (from-endpoint). Drops are always reported.
    #[arg(
        long,
        env = "CILIATE_MONITOR_AGGREGATION",
        value_name = "LEVEL",
        default_value = "medium"
    )]
    pub monitor_aggregation: ciliate_datapath::MonitorAggregation,

    /// Flow export, as Cilium's agent flags.
    #[command(flatten)]
    pub export: ExportArgs,

    /// Keep every flow on disk (in `<state-dir>/<node>/flow-history`) up to this size, for
    /// `observe --since` beyond the ring and `policy whatif`: e.g. `1GiB`, `500MB`; `0` keeps
    /// no history.
    #[arg(long, env = "CILIATE_FLOW_HISTORY_SIZE", value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub flow_history_size: u64,

    /// Delete flows from the history once older than this, e.g. `7d`, `12h`; `0`: only the
    /// size bounds it.
    #[arg(long, env = "CILIATE_FLOW_HISTORY_AGE", value_name = "DURATION", default_value = "7d", value_parser = parse_age)]
    pub flow_history_age: Duration,
}

/// Flow export flags: Cilium's `--hubble-export-*` (a file of Hubble JSON lines), and OTLP.
#[derive(Clone, Debug, Default, Args)]
pub struct ExportArgs {
    /// Write every flow as a line of Hubble's JSON (a GetFlowsResponse) to this file, as
    /// Cilium's exporter does; `stdout` prints them. Off unless given.
    #[arg(long, env = "CILIATE_HUBBLE_EXPORT_FILE_PATH", value_name = "PATH")]
    pub hubble_export_file_path: Option<PathBuf>,
    /// Size in MiB at which the export file rotates (to name-<time>.ext beside it).
    #[arg(long, env = "CILIATE_HUBBLE_EXPORT_FILE_MAX_SIZE_MB", value_name = "MB", default_value_t = ciliate_observer::export::DEFAULT_FILE_MAX_SIZE_MB)]
    pub hubble_export_file_max_size_mb: u64,
    /// Rotated export files kept (0 keeps all).
    #[arg(long, env = "CILIATE_HUBBLE_EXPORT_FILE_MAX_BACKUPS", value_name = "N", default_value_t = ciliate_observer::export::DEFAULT_FILE_MAX_BACKUPS)]
    pub hubble_export_file_max_backups: usize,
    /// Export only flows matching one of these JSON FlowFilters, e.g.
    /// '{"verdict":["DROPPED"]}'.
    #[arg(
        long,
        env = "CILIATE_HUBBLE_EXPORT_ALLOWLIST",
        value_name = "JSON",
        default_value = ""
    )]
    pub hubble_export_allowlist: String,
    /// Export no flow matching one of these JSON FlowFilters.
    #[arg(
        long,
        env = "CILIATE_HUBBLE_EXPORT_DENYLIST",
        value_name = "JSON",
        default_value = ""
    )]
    pub hubble_export_denylist: String,
    /// Export only these Flow fields, comma-separated (time,source.pod_name,verdict).
    #[arg(
        long,
        env = "CILIATE_HUBBLE_EXPORT_FIELDMASK",
        value_name = "FIELDS",
        value_delimiter = ','
    )]
    pub hubble_export_fieldmask: Vec<String>,
    /// Also send every exported flow as an OpenTelemetry log record (body: the same JSON) to
    /// this OTLP/gRPC collector, e.g. http://collector:4317. Off unless given.
    #[arg(long, env = "CILIATE_FLOW_EXPORT_OTLP_ENDPOINT", value_name = "URL")]
    pub flow_export_otlp_endpoint: Option<String>,
}

/// The flow export settings in force (checked when the agent starts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSettings {
    /// The export file, or `stdout`.
    pub file_path: Option<PathBuf>,
    /// Rotation size in MiB.
    pub file_max_size_mb: u64,
    /// Rotated files kept.
    pub file_max_backups: usize,
    /// The allowlist, JSON FlowFilters.
    pub allowlist: String,
    /// The denylist, JSON FlowFilters.
    pub denylist: String,
    /// The field mask.
    pub fieldmask: Vec<String>,
    /// The OTLP collector.
    pub otlp_endpoint: Option<String>,
}

impl ExportSettings {
    /// The checked export configuration; an error names the flag.
    pub fn config(&self) -> Result<ciliate_observer::export::ExportConfig, String> {
        ciliate_observer::export::ExportConfig::new(
            self.file_path.clone(),
            self.file_max_size_mb,
            self.file_max_backups,
            &self.allowlist,
            &self.denylist,
            &self.fieldmask,
            self.otlp_endpoint.clone(),
        )
        .map_err(|e| e.to_string())
    }
}

/// The observer's configuration in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObserverSettings {
    /// The observer API's unix socket.
    pub hubble_socket: PathBuf,
    /// The observer API's TCP address, if any.
    pub hubble_listen_address: Option<SocketAddr>,
    /// Flows kept.
    pub hubble_event_buffer_capacity: usize,
    /// The metrics address, if any.
    pub hubble_metrics_address: Option<SocketAddr>,
    /// Trace events the datapath reports (`--monitor-aggregation`).
    #[serde(serialize_with = "serialize_display")]
    pub monitor_aggregation: ciliate_datapath::MonitorAggregation,
    /// Flow export.
    pub export: ExportSettings,
    /// Bound of the flow history on disk in bytes; 0: no history.
    pub flow_history_size: u64,
    /// Age bound of the flow history; `None`: none.
    #[serde(with = "humantime_serde_opt")]
    pub flow_history_age: Option<Duration>,
}

/// A value as its text (`Display`) in the served configuration.
fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// `Option<Duration>` as humantime text in the served configuration.
mod humantime_serde_opt {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

impl ObserverSettings {
    /// Resolves the flags; the socket defaults to `hubble.sock` beside the API socket. Bad
    /// export flags are refused, naming the flag.
    pub fn from_args(args: ObserverArgs, api_socket: &Path) -> Result<Self, String> {
        let hubble_socket = args.hubble_socket.unwrap_or_else(|| {
            api_socket
                .parent()
                .unwrap_or(Path::new("."))
                .join("hubble.sock")
        });
        let e = args.export;
        let export = ExportSettings {
            file_path: e.hubble_export_file_path,
            file_max_size_mb: e.hubble_export_file_max_size_mb,
            file_max_backups: e.hubble_export_file_max_backups,
            allowlist: e.hubble_export_allowlist,
            denylist: e.hubble_export_denylist,
            fieldmask: e.hubble_export_fieldmask,
            otlp_endpoint: e.flow_export_otlp_endpoint,
        };
        export.config()?;
        Ok(Self {
            hubble_socket,
            hubble_listen_address: args.hubble_listen_address,
            hubble_event_buffer_capacity: args.hubble_event_buffer_capacity,
            hubble_metrics_address: args.hubble_metrics_address,
            monitor_aggregation: args.monitor_aggregation,
            flow_history_size: args.flow_history_size,
            flow_history_age: (!args.flow_history_age.is_zero()).then_some(args.flow_history_age),
            export,
        })
    }

    /// The flow history's configuration under this node's state directory; `None` when it is
    /// off.
    pub fn history_config(&self, node_state_dir: &Path) -> Option<HistoryConfig> {
        (self.flow_history_size > 0).then(|| HistoryConfig {
            dir: node_state_dir.join("flow-history"),
            max_bytes: self.flow_history_size,
            max_age: self.flow_history_age,
            queue_flows: ciliate_observer::history::DEFAULT_QUEUE_FLOWS,
        })
    }
}

/// `256MiB`, `1GiB`, `500MB`, `1048576` (bytes); `0` is allowed (no history).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. 256MiB, 1GiB, 500MB or 0"))?;
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; write e.g. 256MiB, 1GiB, 500MB or 0"
            ))
        }
    };
    let bytes = n * unit_bytes as f64;
    if !(0.0..=1.8e19).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    let bytes = bytes as u64;
    if bytes != 0 && bytes < 1 << 20 {
        return Err(format!("{s:?} is below 1MiB: too small to hold a segment; give at least 1MiB, or 0 for no history"));
    }
    Ok(bytes)
}

/// `7d`, `12h`, `90m`, or `0` (no age bound).
fn parse_age(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 7d, 12h or 0"))
}

/// Opens the flow history when configured. A history that cannot be opened is logged and left
/// off: the agent runs without one rather than not at all.
pub fn open_history(
    settings: &ObserverSettings,
    node_state_dir: &Path,
    node_name: &str,
) -> Option<FlowHistory> {
    let config = settings.history_config(node_state_dir)?;
    match FlowHistory::open(config, node_name) {
        Ok(h) => Some(h),
        Err(e) => {
            warn!(error = %e, "the flow history is off: flows are kept in the ring only");
            None
        }
    }
}

/// `:4244`, `0.0.0.0:4244` or `[::1]:4244`.
fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse().map_err(|_| {
        format!("{s:?} is not an address to listen on; write e.g. :4244 or 127.0.0.1:4244")
    })
}

fn parse_capacity(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: give a number of flows from 1 to 1048576")),
    }
}

/// More metrics to serve beside the flow metrics (the agent's own); called per scrape, from
/// blocking code.
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// The cluster as the observer needs it (multi-node): this node's name and the view of the
/// others, whose pods flows name too.
pub type ClusterNames = (String, watch::Receiver<ClusterView>);

/// The other nodes' pods and the cluster's identities, from the cluster view: rebuilt only
/// when the view changes (it can hold every pod of the cluster).
pub fn cluster_snapshot(cluster: &ClusterNames) -> Snapshot {
    let (me, view) = cluster;
    let mut s = Snapshot::default();
    let view = view.borrow();
    for (id, labels) in &view.identities {
        s.identities
            .insert(*id, labels.iter().map(|l| l.to_string()).collect());
    }
    for e in view.ips.values().filter(|e| &e.node != me) {
        s.endpoints.insert(
            e.ip,
            EndpointInfo {
                // Endpoint ids are node-local: Hubble shows 0 for other nodes' pods.
                id: 0,
                identity: e.identity,
                namespace: e.namespace.clone(),
                pod_name: e.pod_name.clone(),
                labels: s.identities.get(&e.identity).cloned().unwrap_or_default(),
            }
            .into(),
        );
    }
    s
}

/// This node's endpoints and identities (a few hundred at most: the pods of one node).
pub fn local_snapshot(manager: &EndpointManager) -> Snapshot {
    let mut s = Snapshot::default();
    for ep in manager.list() {
        let (namespace, pod_name) = ep
            .pod
            .as_ref()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .unwrap_or_default();
        s.endpoints.insert(
            ep.ipv4,
            EndpointInfo {
                id: u32::from(ep.id),
                identity: ep.identity,
                namespace,
                pod_name,
                labels: ep.labels.iter().map(|l| l.to_string()).collect(),
            }
            .into(),
        );
        if ep.host_ifindex != 0 {
            s.interfaces
                .insert(ep.host_ifindex, ep.host_ifname.as_str().into());
        }
    }
    for id in manager.identities() {
        s.identities
            .insert(id.id, id.labels.iter().map(|l| l.to_string()).collect());
    }
    s
}

/// The policy names of flows: rule number → policy (Hubble's `Policy`), and the CIDR
/// identities' labels. `retired` are the rules of the table before, which no longer exist:
/// kept one more round, because the datapath still reports them until the reconciliation
/// after the change has rewritten the maps (the engine never reuses a number, so an old
/// number cannot name the wrong rule).
pub fn policy_snapshot(names: FlowNames, retired: &Snapshot) -> Snapshot {
    let mut s = Snapshot::default();
    for (id, policy, uid) in &names.rules {
        s.rules.insert(
            *id,
            ciliate_observer::policy_names::policy(
                policy.kind,
                policy.namespace.as_deref(),
                &policy.name,
                uid.as_deref(),
                names.revision,
            ),
        );
    }
    for (id, p) in &retired.rules {
        s.rules.entry(*id).or_insert_with(|| p.clone());
    }
    s.identities.extend(names.cidr_identities);
    s
}

/// The observer's name tables: local endpoints first, then the cluster's, then policy's CIDR
/// identities; Services straight from the Service store's index (never copied, so their
/// number costs nothing when idle); rule numbers from a table of their own, rebuilt only when
/// policy changes.
#[derive(Debug)]
pub struct AgentNames {
    local: SwappableStore,
    cluster: SwappableStore,
    policy: SwappableStore,
    node: SwappableStore,
    devices: DeviceNames,
    services: Arc<ServiceManager>,
}

impl AgentNames {
    /// Tables over `services`, with empty endpoint and policy tables until refreshed.
    pub fn new(services: Arc<ServiceManager>) -> Self {
        Self {
            local: SwappableStore::default(),
            cluster: SwappableStore::default(),
            policy: SwappableStore::default(),
            node: SwappableStore::default(),
            devices: DeviceNames::default(),
            services,
        }
    }
}

impl ciliate_observer::Store for AgentNames {
    fn endpoint_by_ip(&self, ip: std::net::Ipv4Addr) -> Option<Arc<EndpointInfo>> {
        self.local
            .endpoint_by_ip(ip)
            .or_else(|| self.cluster.endpoint_by_ip(ip))
    }

    fn identity_labels(&self, identity: u32) -> Option<Vec<String>> {
        self.local
            .identity_labels(identity)
            .or_else(|| self.cluster.identity_labels(identity))
            .or_else(|| self.policy.identity_labels(identity))
    }

    fn policy_by_rule(&self, rule: u32) -> Option<ciliate_observer::proto::flow::Policy> {
        self.policy.policy_by_rule(rule)
    }

    fn interface_name(&self, ifindex: u32) -> Option<Arc<str>> {
        self.local
            .interface_name(ifindex)
            .or_else(|| self.devices.name(ifindex))
    }

    fn node_labels(&self) -> Vec<String> {
        self.node.node_labels()
    }

    fn service_by_frontend(
        &self,
        ip: std::net::Ipv4Addr,
        port: u16,
        proto: u8,
    ) -> Option<ServiceRef> {
        let proto = L4Proto::from_number(proto)?;
        self.services
            .service_by_frontend(ip, port, proto)
            .map(|s| ServiceRef {
                namespace: s.namespace,
                name: s.name,
            })
    }

    fn service_by_rev_nat(&self, index: u16) -> Option<ServiceRef> {
        self.services.service_by_rev_nat(index).map(|s| ServiceRef {
            namespace: s.namespace,
            name: s.name,
        })
    }
}

/// What the observer reads names and events from.
pub struct Sources {
    /// The datapath's events and loss counter.
    pub datapath: Arc<dyn Datapath>,
    /// Local endpoints and identities.
    pub manager: Arc<EndpointManager>,
    /// Services.
    pub services: Arc<ServiceManager>,
    /// Other nodes' pods, in a cluster.
    pub cluster: Option<ClusterNames>,
    /// Policy: what rule numbers and CIDR identities are named by.
    pub policies: Option<Arc<PolicyManager>>,
    /// The agent's own metrics, served beside the flow metrics.
    pub extra_metrics: Option<ExtraMetrics>,
    /// Where every flow is kept on disk too, if anywhere.
    pub history: Option<FlowHistory>,
    /// This node's labels (`key=value`), when something knows them (its Node object).
    pub node_labels: Option<watch::Receiver<Vec<String>>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("manager", &self.manager)
            .field("cluster", &self.cluster.as_ref().map(|(me, _)| me))
            .finish_non_exhaustive()
    }
}

/// Feeds the datapath's events to `observer` through a queue large enough for bursts (see
/// [`ciliate_observer::intake`]): handed over by the datapath's event reader directly, as
/// numbers, when it takes a sink; else read from its event channel (whose closing ends the
/// threads).
pub fn spawn_intake(
    observer: Arc<Observer>,
    datapath: &dyn Datapath,
) -> std::io::Result<Arc<ciliate_observer::intake::Intake>> {
    use ciliate_observer::intake;
    let intake = intake::spawn_worker(Arc::clone(&observer), intake::DEFAULT_INTAKE_CAPACITY)?;
    let sink = Arc::clone(&intake);
    if datapath.set_event_sink(Arc::new(move |batch| sink.push_all(batch))) {
        return Ok(intake);
    }
    intake.close();
    intake::spawn(
        observer,
        datapath.subscribe_events(),
        intake::DEFAULT_INTAKE_CAPACITY,
    )
}

/// How often the flows seen are counted to tell when a burst is over.
const BURST_CHECK: Duration = Duration::from_secs(5);

/// Returns the allocator's free memory to the kernel each time a burst of flows is over
/// ([`crate::heap::BurstEnd`]): the intake's, the history's and the followers' queues grow
/// with a burst, and glibc keeps what they free between blocks that stay (issue #15).
fn release_after_bursts(
    observer: Arc<Observer>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(BURST_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut burst = crate::heap::BurstEnd::default();
        let mut seen = observer.seen_flows();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = observer.seen_flows();
            if burst.ended(now.saturating_sub(seen)) {
                // It walks every arena under its lock: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(crate::heap::release_free_memory).await;
            }
            seen = now;
        }
    })
}

/// Starts the flow exporter the settings ask for, if any: its counters, or None. A sink that
/// cannot be opened is logged, never fatal.
fn start_export(
    settings: &ExportSettings,
    observer: &Arc<Observer>,
) -> Option<Arc<ciliate_observer::export::ExportStats>> {
    use ciliate_observer::export::{self, FileSink, Sink};
    let config = match settings.config() {
        Ok(c) if c.enabled() => c,
        Ok(_) => return None,
        Err(e) => {
            warn!(error = %e, "flows are not exported");
            return None;
        }
    };
    let stats = Arc::new(export::ExportStats::default());
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(path) = &config.file_path {
        match FileSink::open(path, config.file_max_size_mb, config.file_max_backups) {
            Ok(s) => {
                info!(path = %path.display(), "exporting flows to a file");
                sinks.push(Box::new(s));
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot open the flow export file"),
        }
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        match ciliate_observer::export_otlp::spawn(
            &tokio::runtime::Handle::current(),
            endpoint,
            &observer.config().node_name,
            Arc::clone(&stats),
        ) {
            Ok(s) => {
                info!(endpoint = %endpoint, "exporting flows as OTLP logs");
                sinks.push(Box::new(s));
            }
            Err(e) => warn!(endpoint = %endpoint, error = %e, "cannot export flows over OTLP"),
        }
    }
    if sinks.is_empty() {
        return None;
    }
    match export::spawn(observer, &config, sinks, Arc::clone(&stats)) {
        Ok(_exporter) => Some(stats),
        Err(e) => {
            warn!(error = %e, "cannot start the flow exporter");
            None
        }
    }
}

/// Starts the observer: event intake, table refresh, gRPC and metrics servers. Problems
/// binding a listener are logged, never fatal: pods must get wired even when observability
/// cannot be served.
pub fn start(
    settings: &ObserverSettings,
    node_name: &str,
    sources: Sources,
    shutdown: watch::Receiver<bool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Observer>) {
    let Sources {
        datapath,
        manager,
        services,
        cluster,
        policies,
        extra_metrics,
        history,
        node_labels,
    } = sources;
    let datapath = &datapath;
    let names = Arc::new(AgentNames::new(services));
    names.local.replace(local_snapshot(&manager));
    if let Some(c) = &cluster {
        names.cluster.replace(cluster_snapshot(c));
    }
    let observer = Arc::new(Observer::new(
        ObserverConfig {
            node_name: node_name.to_owned(),
            capacity: settings.hubble_event_buffer_capacity,
        },
        Arc::clone(&names) as Arc<dyn ciliate_observer::Store>,
    ));
    if let Some(h) = history {
        // A fresh observer has none yet.
        let _ = observer.attach_history(h);
    }
    if let Err(e) = spawn_intake(Arc::clone(&observer), datapath.as_ref()) {
        warn!(error = %e, "cannot start the observer's threads: no flows will be recorded");
    }
    let export_stats = start_export(&settings.export, &observer);
    let mut tasks = vec![release_after_bursts(
        Arc::clone(&observer),
        shutdown.clone(),
    )];
    if let Some((me, mut view)) = cluster {
        // The cluster's names, rebuilt when the view changes (a notification, not a poll).
        let names = Arc::clone(&names);
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = view.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
                let c = (me.clone(), view.clone());
                names.cluster.replace(cluster_snapshot(&c));
            }
        }));
    }
    if let Some(mut labels) = node_labels {
        // The node's labels, as its Node object changes (a notification).
        let names = Arc::clone(&names);
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let now = labels.borrow_and_update().clone();
                names.node.replace(Snapshot {
                    node_labels: now,
                    ..Snapshot::default()
                });
                tokio::select! {
                    changed = labels.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }));
    }
    {
        // This node's names, rebuilt when the endpoint table changes (a notification).
        let names = Arc::clone(&names);
        let mut changes = manager.subscribe_changes();
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                names.local.replace(local_snapshot(&manager));
                names.devices.forget();
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }));
    }
    if let Some(policies) = policies {
        // Policy names, rebuilt when policy changes (a notification, not a poll).
        let names = Arc::clone(&names);
        let mut changes = policies.subscribe_names();
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut retired = Snapshot::default();
            loop {
                let p = Arc::clone(&policies);
                let Ok(now) = tokio::task::spawn_blocking(move || p.flow_names()).await else {
                    return;
                };
                // Only the rules are kept for the next round; the identities' labels (one
                // table of them per learned FQDN address) live in the table alone.
                let rules_now = FlowNames {
                    rules: now.rules.clone(),
                    cidr_identities: Vec::new(),
                    revision: now.revision,
                };
                let table = policy_snapshot(now, &retired);
                retired = policy_snapshot(rules_now, &Snapshot::default());
                names.policy.replace(table);
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }));
    }
    let (o, dp) = (Arc::clone(&observer), Arc::clone(datapath));
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        // Losses before this agent started were reported (or not) by its predecessor.
        let mut lost = dp.events_lost();
        loop {
            tick.tick().await;
            let now = dp.events_lost();
            if now > lost {
                warn!(
                    events = now - lost,
                    "the datapath's event ring was full: events lost"
                );
                o.lost(now - lost, LostEventSource::PerfEventRingBuffer);
            }
            lost = now;
        }
    }));

    let handle = Arc::clone(&observer);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let version = env!("CARGO_PKG_VERSION");
    match bind_unix(&settings.hubble_socket) {
        Ok(listener) => {
            let address = format!("unix://{}", settings.hubble_socket.display());
            let service = Service::new(Arc::clone(&observer), version, &address);
            info!(socket = %settings.hubble_socket.display(), "serving the Hubble observer API");
            let stop = stopped(shutdown.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve_unix(service, listener, stop).await {
                    warn!(error = %e, "the observer API on its unix socket stopped");
                }
            }));
        }
        Err(e) => warn!(error = %e, "flows are not served on a unix socket"),
    }
    if let Some(addr) = settings.hubble_listen_address {
        let service = Service::new(Arc::clone(&observer), version, &addr.to_string());
        let stop = stopped(shutdown.clone());
        tasks.push(tokio::spawn(async move {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    info!(address = %addr, "serving the Hubble observer API over TCP");
                    if let Err(e) = serve_tcp(service, l, stop).await {
                        warn!(error = %e, "the observer API over TCP stopped");
                    }
                }
                Err(e) => {
                    warn!(address = %addr, error = %e, "cannot serve the observer API over TCP")
                }
            }
        }));
    }
    if let Some(addr) = settings.hubble_metrics_address {
        let stop = stopped(shutdown);
        tasks.push(tokio::spawn(async move {
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let o = Arc::clone(&observer);
                    let extra = extra_metrics.clone();
                    let export = export_stats.clone();
                    async move {
                        let mut text = o.metrics().render();
                        if let Some(stats) = export {
                            text.push_str(&stats.render());
                        }
                        if let Some(h) = o.history() {
                            text.push_str(&h.render_metrics());
                        }
                        if let Some(f) = extra {
                            match tokio::task::spawn_blocking(move || f()).await {
                                Ok(more) => text.push_str(&more),
                                Err(e) => warn!(error = %e, "agent metrics panicked"),
                            }
                        }
                        ([("content-type", "text/plain; version=0.0.4")], text)
                    }
                }),
            );
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    info!(address = %addr, "serving flow metrics on /metrics");
                    if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                        warn!(error = %e, "the metrics server stopped");
                    }
                }
                Err(e) => warn!(address = %addr, error = %e, "cannot serve metrics"),
            }
        }));
    }
    (tasks, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_datapath::FakeDatapath;
    use ciliate_model::manifest::{split_documents, ApplyRequest};
    use ciliate_model::policy::PolicyRef;
    use ciliate_observer::Store;

    #[test]
    fn services_are_named_by_frontend_and_by_rev_nat_index() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dp = Arc::new(FakeDatapath::new());
        let manager = EndpointManager::open(
            crate::endpoints::ManagerSettings {
                node_name: "node-a".into(),
                pod_cidr: "10.200.0.0/24".parse().expect("cidr"),
                mtu: 1500,
            },
            crate::state::StateStore::open(tmp.path()).expect("state dir"),
            Arc::clone(&dp) as Arc<dyn Datapath>,
        )
        .expect("endpoints");
        let services = ServiceManager::open(
            crate::services::ServiceSettings {
                node_name: "node-a".into(),
                node_ips: vec![],
                manifest_dir: None,
                kubernetes: false,
            },
            tmp.path(),
            Arc::clone(&dp) as Arc<dyn Datapath>,
        )
        .expect("services");
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, targetPort: 8080}]\n";
        services
            .apply(&ApplyRequest {
                documents: split_documents("web.yaml", yaml).expect("YAML"),
                delete: false,
            })
            .expect("applies");
        let index = services.list()[0].frontends[0].rev_nat_index;

        let _ = manager;
        let s = AgentNames::new(Arc::new(services));
        let web = Some(ServiceRef {
            namespace: "prod".into(),
            name: "web".into(),
        });
        assert_eq!(
            s.service_by_frontend("10.96.0.10".parse().expect("ip"), 80, 6),
            web
        );
        assert_eq!(s.service_by_rev_nat(index), web);
        assert_eq!(s.service_by_rev_nat(index.wrapping_add(1)), None);
        // Devices that are no pod's veth (here the loopback, index 1 in every namespace)
        // are named from the kernel.
        assert_eq!(s.interface_name(1).as_deref(), Some("lo"));
    }

    #[test]
    fn rules_name_their_policy_and_retired_ones_stay_one_round() {
        use ciliate_model::policy::PolicyKind;
        let cnp = |name: &str| PolicyRef {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("prod".into()),
            name: name.into(),
        };
        let first = FlowNames {
            rules: vec![(5, cnp("old"), None), (6, cnp("kept"), Some("u-1".into()))],
            cidr_identities: vec![(
                16_777_217,
                vec!["cidr:203.0.113.0/24".into(), "reserved:world".into()],
            )],
            revision: 2,
        };
        let s1 = policy_snapshot(first, &Snapshot::default());
        let kept = s1.policy_by_rule(6).expect("rule 6");
        assert_eq!(
            (kept.name.as_str(), kept.namespace.as_str()),
            ("kept", "prod")
        );
        assert_eq!(kept.kind, "CiliumNetworkPolicy");
        assert_eq!(kept.revision, 2);
        assert!(kept
            .labels
            .contains(&"k8s:io.cilium.k8s.policy.uid=u-1".to_owned()));
        assert_eq!(
            s1.identity_labels(16_777_217),
            Some(vec![
                "cidr:203.0.113.0/24".to_owned(),
                "reserved:world".to_owned()
            ])
        );
        // Rule 5 went away: still named while the maps may carry it, then forgotten.
        let second = FlowNames {
            rules: vec![(6, cnp("kept"), Some("u-1".into()))],
            revision: 3,
            ..FlowNames::default()
        };
        let s2 = policy_snapshot(second.clone(), &s1);
        assert_eq!(s2.policy_by_rule(5).map(|p| p.name), Some("old".into()));
        assert_eq!(s2.policy_by_rule(6).map(|p| p.revision), Some(3));
        let s3 = policy_snapshot(
            second.clone(),
            &policy_snapshot(second, &Snapshot::default()),
        );
        assert_eq!(s3.policy_by_rule(5), None);
    }

    #[test]
    fn a_burst_of_50k_events_through_the_intake_loses_none() {
        const BURST: u64 = 50_000;
        let dp = FakeDatapath::new();
        let observer = Arc::new(Observer::new(
            ObserverConfig {
                node_name: "node-a".into(),
                capacity: 1000,
            },
            Arc::new(ciliate_observer::Snapshot::default()),
        ));
        let intake = spawn_intake(Arc::clone(&observer), &dp).expect("threads");
        let ev = ciliate_model::monitor::MonitorEvent {
            kind: ciliate_model::monitor::EventKind::Trace,
            time: "2026-12-06T05:00:00.123456Z".into(),
            code: 5,
            reason: "from-endpoint".into(),
            endpoint: 1,
            ifindex: 42,
            src_identity: 256,
            dst_identity: 257,
            ct_state: "new".into(),
            len: 74,
            ethertype: 0x0800,
            src: Some("10.200.0.2".parse().expect("ip")),
            dst: Some("10.200.0.3".parse().expect("ip")),
            l4: Some(ciliate_model::monitor::L4::Tcp {
                sport: 40000,
                dport: 80,
                flags: vec!["SYN".into()],
            }),
            rev_nat: 0,
            rule: 0,
            ethernet: None,
        };
        let mut sent = 0;
        while sent < BURST {
            // The fake's channel has 1024 slots: at most about half in flight, waiting on
            // the intake's count of what it took (not on time). The worker that turns events
            // into flows is not waited for: the burst must queue, not be lost.
            for _ in 0..500 {
                dp.emit(ev.clone());
                sent += 1;
            }
            while intake.received() + intake.lost_events() < sent {
                std::thread::yield_now();
            }
        }
        drop(dp);
        // The worker lets go of the observer once it has drained the closed intake.
        while Arc::strong_count(&observer) > 1 {
            std::thread::yield_now();
        }
        assert_eq!(intake.lost_events(), 0);
        assert_eq!(observer.lost_events(), 0);
        assert_eq!(observer.seen_flows(), BURST);
        assert_eq!(observer.num_flows(), 1000);
    }

    #[test]
    fn bad_export_flags_are_refused_naming_the_flag() {
        let with = |export: ExportArgs| {
            ObserverSettings::from_args(
                ObserverArgs {
                    hubble_socket: None,
                    hubble_listen_address: None,
                    hubble_event_buffer_capacity: 10,
                    hubble_metrics_address: None,
                    monitor_aggregation: Default::default(),
                    flow_history_size: 0,
                    flow_history_age: Duration::ZERO,
                    export,
                },
                Path::new("/run/x/agent.sock"),
            )
        };
        let base = || ExportArgs {
            hubble_export_file_path: Some("/var/run/ciliate/hubble/events.log".into()),
            hubble_export_file_max_size_mb: 10,
            hubble_export_file_max_backups: 5,
            ..ExportArgs::default()
        };
        let ok = with(ExportArgs {
            hubble_export_allowlist: r#"{"verdict":["DROPPED"]}"#.into(),
            hubble_export_fieldmask: vec!["time".into(), "source.pod_name".into()],
            ..base()
        })
        .expect("valid");
        assert_eq!(ok.export.fieldmask, vec!["time", "source.pod_name"]);
        for (export, flag) in [
            (
                ExportArgs {
                    hubble_export_allowlist: "{\"verdict\":".into(),
                    ..base()
                },
                "--hubble-export-allowlist",
            ),
            (
                ExportArgs {
                    hubble_export_denylist: r#"{"source_pod":[1]}"#.into(),
                    ..base()
                },
                "--hubble-export-denylist",
            ),
            (
                ExportArgs {
                    hubble_export_fieldmask: vec!["source.nope".into()],
                    ..base()
                },
                "--hubble-export-fieldmask",
            ),
            (
                ExportArgs {
                    hubble_export_file_max_size_mb: 0,
                    ..base()
                },
                "--hubble-export-file-max-size-mb",
            ),
            (
                ExportArgs {
                    flow_export_otlp_endpoint: Some("collector".into()),
                    ..base()
                },
                "--flow-export-otlp-endpoint",
            ),
        ] {
            let e = with(export).expect_err(flag);
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn listen_addresses_and_socket_default() {
        assert_eq!(
            parse_listen_address(":4244"),
            Ok("0.0.0.0:4244".parse().expect("addr"))
        );
        assert!(parse_listen_address("4244").is_err());
        let s = ObserverSettings::from_args(
            ObserverArgs {
                hubble_socket: None,
                hubble_listen_address: None,
                hubble_event_buffer_capacity: 10,
                hubble_metrics_address: None,
                monitor_aggregation: Default::default(),
                export: ExportArgs::default(),
                flow_history_size: 0,
                flow_history_age: Duration::ZERO,
            },
            Path::new("/run/x/agent.sock"),
        )
        .expect("settings");
        assert_eq!(s.hubble_socket, PathBuf::from("/run/x/hubble.sock"));
        assert_eq!(s.history_config(Path::new("/var/lib/ciliate/n1")), None);
    }

    #[test]
    fn history_sizes_and_ages() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("10KiB").unwrap_err().contains("below 1MiB"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert!(parse_age("soon").is_err());
    }
}
