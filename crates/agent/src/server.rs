//! The API socket and the agent's life: bind, serve, shut down.
//!
//! The socket is root-only (0600): whoever can talk to the agent can wire pods into the
//! network. It is created in a private directory and moved into place after its mode is set, so
//! there is no moment at which another user could connect.

use std::future::IntoFuture;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use ciliate_datapath::linux::{LinuxConfig, LinuxDatapath};
use ciliate_datapath::{Datapath, DatapathError, FakeDatapath};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::cluster::{run_cluster_sync, ClusterMember};
use crate::config::{ClusterConfig, Config, DatapathKind, TunnelMode};
use crate::endpoints::{EndpointManager, ManagerSettings, OpenError};
use crate::gc::{self, CtGcHealth};
use crate::policy::{PolicyManager, PolicyOpenError, PolicySettings};
use crate::services::{self, ServiceManager, ServiceOpenError, ServiceSettings};
use crate::state::{StateError, StateStore};

/// How long open connections (a monitor stream, a request in flight) may take to finish once
/// the agent is told to stop.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another agent answers on the socket.
    #[error(
        "another agent is already serving on {0}; stop it first, or pass a different --socket"
    )]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; remove it or pass a different --socket")]
    NotASocket(PathBuf),
    /// A filesystem or socket operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Removes the socket file when dropped, unless it has been replaced by another agent's.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    /// Device, inode and change time of our socket file: inode numbers are reused at once, so
    /// the change time tells our file from a newer one that got the same number.
    id: (u64, u64, i64, i64),
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl SocketGuard {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if file_id(&m) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(socket = %self.path.display(), error = %e, "cannot remove the API socket");
                }
            }
            _ => {}
        }
    }
}

/// How long a socket that still accepts connections is given to go away before the agent
/// refuses to start. An agent killed with SIGKILL keeps its listening socket until its last
/// thread has exited, which can take a moment after its pid already shows as a zombie; a
/// supervisor (systemd, the kubelet, the lab) restarts the agent within that moment.
pub const SOCKET_IN_USE_GRACE: Duration = Duration::from_secs(3);

/// Binds the API socket at `path` (inside a tokio runtime): creates the parent directory
/// (0755), removes a stale socket nobody answers on, refuses when another agent still
/// answers after [`SOCKET_IN_USE_GRACE`], and leaves the socket with mode 0600.
pub fn bind_socket(path: &Path) -> Result<(UnixListener, SocketGuard), SocketError> {
    bind_socket_with_grace(path, SOCKET_IN_USE_GRACE)
}

fn bind_socket_with_grace(
    path: &Path,
    grace: Duration,
) -> Result<(UnixListener, SocketGuard), SocketError> {
    let io = |what: &'static str, p: &Path| {
        let path = p.to_owned();
        move |source| SocketError::Io { what, path, source }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&parent)
            .map_err(io("cannot create the socket directory", &parent))?;
        // Explicitly, whatever the umask: clients of any user must reach the socket's mode
        // check rather than fail on the directory.
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))
            .map_err(io("cannot set the mode of", &parent))?;
    }

    let deadline = Instant::now() + grace;
    let mut waiting = false;
    loop {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) if Instant::now() < deadline => {
                        if !waiting {
                            info!(socket = %path.display(), grace = ?grace, "another agent answers on the API socket; waiting in case it is exiting");
                            waiting = true;
                        }
                        // Blocking is fine: nothing else runs before the socket is ours.
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    Ok(_) => return Err(SocketError::InUse(path.to_owned())),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        info!(socket = %path.display(), "removing stale API socket left by an agent that is gone");
                        std::fs::remove_file(path)
                            .map_err(io("cannot remove the stale socket", path))?;
                    }
                    // Removed between the two calls: the agent that held it has exited.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("cannot check whether an agent answers on", path)(e)),
                }
            }
            Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot inspect", path)(e)),
        }
        break;
    }

    // Bind inside a directory only root can enter, set the mode, then move the socket into
    // place: the listening socket follows its inode, and nobody could connect in between.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let private = parent.join(format!(
        ".ciliate-agent-bind-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io("cannot create", &private))?;
    let staged = private.join("agent.sock");
    let result = (|| {
        let listener = UnixListener::bind(&staged).map_err(io("cannot bind", &staged))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(io("cannot set the mode of", &staged))?;
        std::fs::rename(&staged, path).map_err(io("cannot move the socket to", path))?;
        let m = std::fs::symlink_metadata(path).map_err(io("cannot inspect", path))?;
        Ok((
            listener,
            SocketGuard {
                path: path.to_owned(),
                id: file_id(&m),
            },
        ))
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Serves `app` on `listener` until `shutdown` turns true, then stops accepting and gives open
/// connections [`DRAIN_TIMEOUT`] to finish.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut stop = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .into_future();
    let mut stop = shutdown;
    let drain_deadline = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        r = server => r,
        () = drain_deadline => {
            warn!(timeout = ?DRAIN_TIMEOUT, "connections still open at shutdown; closing them");
            Ok(())
        }
    }
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The API socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The state directory could not be opened or locked.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another agent holds this node's datapath (its pin directory).
    #[error(transparent)]
    NodeLocked(#[from] ciliate_datapath::lock::LockError),
    /// The datapath could not be opened.
    #[error("cannot open the {kind} datapath: {source}")]
    Datapath {
        /// Which datapath.
        kind: DatapathKind,
        /// Why.
        #[source]
        source: DatapathError,
    },
    /// The endpoint manager could not start (state or datapath reconciliation).
    #[error(transparent)]
    Manager(#[from] OpenError),
    /// The Service store could not start.
    #[error(transparent)]
    Services(#[from] ServiceOpenError),
    /// The policy store could not start.
    #[error(transparent)]
    Policies(#[from] PolicyOpenError),
    /// Serving failed.
    #[error("serving the API on {path}: {source}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The node could not join its cluster (etcd, the overlay device).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A start-up step panicked.
    #[error("start-up failed unexpectedly: {0}")]
    Panicked(String),
    /// The saved FQDN cache could not be read.
    #[error("FQDN cache: {0}")]
    Fqdn(String),
    /// The CNI plugin could not be installed (`--write-cni-conf`, `--install-cni-bin`).
    #[error(transparent)]
    CniInstall(#[from] crate::cni_install::InstallError),
    /// The Kubernetes API could not be used.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
}

/// How long the agent waits at start for the Kubernetes API to list Nodes (for its pod CIDR)
/// before going on with the configured one.
const KUBE_NODE_WAIT: Duration = Duration::from_secs(30);

/// Opens the datapath the configuration names. Call inside a tokio runtime.
pub fn open_datapath(config: &Config) -> Result<Arc<dyn Datapath>, AgentError> {
    match config.datapath {
        DatapathKind::Fake => {
            warn!("using the fake datapath: pods get addresses but no traffic is forwarded");
            Ok(Arc::new(FakeDatapath::new()))
        }
        DatapathKind::Bpf => LinuxDatapath::open(LinuxConfig {
            socket_lb_cgroup: config.socket_lb_cgroup.clone(),
            ..LinuxConfig::new(&config.node_name, &config.bpffs_root)
        })
        .map(|d| Arc::new(d) as Arc<dyn Datapath>)
        .map_err(|source| AgentError::Datapath {
            kind: DatapathKind::Bpf,
            source,
        }),
    }
}

/// Runs the agent until `shutdown` turns true, with the datapath the configuration names.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    run_inner(config, None, None, shutdown).await
}

/// Runs the agent with a datapath given by the caller (tests, embedding).
pub async fn run_with_datapath(
    config: Config,
    datapath: Arc<dyn Datapath>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    run_inner(config, Some(datapath), None, shutdown).await
}

/// Runs the agent with a datapath and a Kubernetes client given by the caller (tests against
/// a scripted API server); `config.kubernetes` must be set for the client to be used.
pub async fn run_with_kube_client(
    config: Config,
    datapath: Arc<dyn Datapath>,
    client: ciliate_k8s::Client,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    run_inner(config, Some(datapath), Some(client), shutdown).await
}

async fn run_inner(
    config: Config,
    datapath: Option<Arc<dyn Datapath>>,
    kube_client: Option<ciliate_k8s::Client>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let started = Instant::now();
    info!(
        node = %config.node_name,
        pod_cidr = %config.pod_cidr,
        datapath = %config.datapath,
        socket = %config.socket.display(),
        state = %config.state_file().display(),
        "starting ciliate-agent {}",
        env!("CARGO_PKG_VERSION")
    );
    // The socket first: when another agent runs, touch neither its state nor its datapath.
    let (listener, guard) = bind_socket(&config.socket)?;
    // The node's pins next: a second agent for the same node (another socket and state
    // directory) must not even open the datapath, or it would strip the first one's pods.
    let _pin_lock = match (&datapath, config.datapath) {
        (None, DatapathKind::Bpf) => {
            // The lock lives in bpffs, which must be mounted before the directory is made.
            ciliate_datapath::linux::ensure_bpffs(&config.bpffs_root).map_err(|source| {
                AgentError::Datapath {
                    kind: DatapathKind::Bpf,
                    source,
                }
            })?;
            Some(ciliate_datapath::lock::PinDirLock::acquire(
                &LinuxConfig::new(&config.node_name, &config.bpffs_root).pin_dir(),
            )?)
        }
        _ => None,
    };
    let store = StateStore::open(&config.node_state_dir())?;
    let state_dir = store.dir().to_owned();
    let datapath = match datapath {
        Some(d) => d,
        None => open_datapath(&config)?,
    };
    // The Kubernetes API first among the sources: the node's pod CIDR comes from its Node.
    let mut config = config;
    let mut kube = match &config.kubernetes {
        Some(k) => {
            let mut source = match kube_client {
                Some(client) => {
                    crate::kubernetes::KubeSource::from_client(client, &config.node_name)
                }
                None => crate::kubernetes::KubeSource::start(k, &config.node_name)
                    .await
                    .map_err(|e| AgentError::Kubernetes(e.to_string()))?,
            };
            if let Some(cidr) = source
                .node_pod_cidr(&config.node_name, KUBE_NODE_WAIT)
                .await
            {
                if cidr != config.pod_cidr {
                    info!(pod_cidr = %cidr, "pod CIDR from the node's Node object");
                    config.pod_cidr = cidr;
                }
            }
            Some(source)
        }
        None => None,
    };
    let pod_mtu = resolve_pod_mtu(&config, datapath.as_ref()).await;
    configure_masquerade(&config, datapath.as_ref())
        .await
        .map_err(|source| AgentError::Datapath {
            kind: config.datapath,
            source,
        })?;
    datapath
        .set_monitor_aggregation(config.observer.monitor_aggregation)
        .map_err(|source| AgentError::Datapath {
            kind: config.datapath,
            source,
        })?;
    // Packets the datapath hands to the L7 proxy's sockets are delivered locally whatever
    // their destination (policy routing on the to-proxy mark).
    datapath
        .install_proxy_routing()
        .await
        .map_err(|source| AgentError::Datapath {
            kind: config.datapath,
            source,
        })?;
    let settings = ManagerSettings {
        node_name: config.node_name.clone(),
        pod_cidr: config.pod_cidr,
        mtu: pod_mtu,
    };
    let dp = Arc::clone(&datapath);
    let manager = tokio::task::spawn_blocking(move || EndpointManager::open(settings, store, dp))
        .await
        .map_err(|e| AgentError::Panicked(e.to_string()))??;
    let manager = Arc::new(manager);
    let service_settings = ServiceSettings {
        node_name: config.node_name.clone(),
        node_ips: config.node_ips.clone(),
        manifest_dir: config.manifest_dir.clone(),
        kubernetes: config.kubernetes.is_some(),
    };
    let dp = Arc::clone(&datapath);
    let services_dir = state_dir.clone();
    let services = tokio::task::spawn_blocking(move || {
        ServiceManager::open(service_settings, &services_dir, dp)
    })
    .await
    .map_err(|e| AgentError::Panicked(e.to_string()))??;
    let services = Arc::new(services);

    // Policy is in force before the API answers anything: the policies as persisted (and as
    // the manifest directory has them), against the endpoints as restored.
    let policy_settings = PolicySettings {
        manifest_dir: config.manifest_dir.clone(),
        node_ips: config.node_ips.clone(),
        ..PolicySettings::default()
    };
    let dp = Arc::clone(&datapath);
    let policies =
        tokio::task::spawn_blocking(move || PolicyManager::open(policy_settings, &state_dir, dp))
            .await
            .map_err(|e| AgentError::Panicked(e.to_string()))??;
    let policies = Arc::new(policies);
    refresh_node_addresses(datapath.as_ref(), &policies).await;
    // semantics (#12): Namespace objects' labels reach policy through the Service store.
    services.attach_policy(Arc::clone(&policies));
    // In a cluster, the other nodes' identities and addresses as the last run saw them, before
    // the first reconciliation: policy never shrinks because etcd has not answered yet.
    let saved_view = match &config.cluster {
        Some(_) => crate::cluster::load_view(&config.node_state_dir()),
        None => None,
    };
    if let Some(saved) = &saved_view {
        policies.set_cluster(crate::cluster::cluster_inputs(
            &saved.view,
            &config.node_name,
        ));
        info!(
            saved_unix = saved.saved_unix,
            nodes = saved.view.nodes.len(),
            "cluster view restored from the last run"
        );
    }
    manager.attach_policy(Arc::clone(&policies));
    // The learned names before the first reconciliation: a restart never drops an address a
    // pod was allowed to reach.
    let fqdn = {
        let settings = config.fqdn_settings();
        let dir = config.node_state_dir();
        let (p, dp, m) = (
            Arc::clone(&policies),
            Arc::clone(&datapath),
            Arc::clone(&manager),
        );
        let node: crate::fqdn::NodeView = Box::new(move || m.policy_snapshot());
        let fqdn = tokio::task::spawn_blocking(move || {
            crate::fqdn::FqdnManager::open(settings, &dir, p, dp, node)
        })
        .await
        .map_err(|e| AgentError::Panicked(e.to_string()))?
        .map_err(|e| AgentError::Fqdn(e.to_string()))?;
        Arc::new(fqdn)
    };
    // Kubernetes mode: endpoints of pods take their labels from the Pod objects.
    let pod_cache = kube.as_ref().map(|_| {
        let cache = Arc::new(crate::pods::PodCache::new());
        manager.attach_pods(Arc::clone(&cache), crate::pods::POD_WAIT);
        cache
    });
    let m = Arc::clone(&manager);
    let reconciled = tokio::task::spawn_blocking(move || m.reconcile_policy())
        .await
        .map_err(|e| AgentError::Panicked(e.to_string()))?;
    if let Err(e) = reconciled {
        warn!(error = %e, "cannot put the policies in force at start-up; retrying");
    }
    let (cluster_task, cluster_view, cluster_member) = match &config.cluster {
        Some(cluster) => {
            let (task, member) = join_cluster(
                &config,
                pod_mtu,
                cluster,
                &datapath,
                &manager,
                &policies,
                saved_view,
                shutdown.clone(),
            )
            .await?;
            let names = (member.node().name.clone(), member.subscribe());
            (Some(task), Some(names), Some(member))
        }
        None => {
            datapath
                .set_tunnel(None)
                .map_err(|source| AgentError::Datapath {
                    kind: config.datapath,
                    source,
                })?;
            (None, None, None)
        }
    };
    let policy_wake = Arc::new(tokio::sync::Notify::new());
    // The manifest directory wakes both stores when a file settles (inotify); their
    // periodic read stays as a safety net and for retries.
    let _dir_watch = match &config.manifest_dir {
        Some(dir) => match services::dir_watch::watch(
            dir,
            vec![services.wake_handle(), Arc::clone(&policy_wake)],
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot watch the manifest directory; it is read every {}s", services::POLL_INTERVAL.as_secs());
                None
            }
        },
        None => None,
    };
    let node_labels = kube
        .as_ref()
        .map(crate::kubernetes::KubeSource::node_labels);
    let kube_task = kube.take().map(|k| {
        k.run(
            Arc::clone(&services),
            Arc::clone(&policies),
            Arc::clone(&policy_wake),
            pod_cache.map(|c| (c, Arc::clone(&manager))),
            shutdown.clone(),
        )
    });
    let policy_task = tokio::spawn(run_policy_loop(
        Arc::clone(&datapath),
        Arc::clone(&manager),
        Arc::clone(&policies),
        services::POLL_INTERVAL,
        policy_wake,
        shutdown.clone(),
    ));
    let services_task = tokio::spawn(services::run_services_loop(
        Arc::clone(&services),
        services::POLL_INTERVAL,
        shutdown.clone(),
    ));

    let watch_task = tokio::spawn(crate::endpoints_watch::run_endpoint_watch(
        Arc::clone(&manager),
        crate::endpoints_watch::CHECK_INTERVAL,
        shutdown.clone(),
    ));
    let ct_gc = Arc::new(CtGcHealth::default());
    let fqdn_task = tokio::spawn(Arc::clone(&fqdn).run(shutdown.clone()));
    let gc_task = tokio::spawn(gc::run_ct_gc(
        Arc::clone(&datapath),
        Duration::from_secs(config.ct_gc_interval_seconds),
        Arc::clone(&ct_gc),
        shutdown.clone(),
    ));
    // The plugin and its configuration last: a runtime that finds them can wire pods at once
    // (the API answers from here on).
    if let Some(dir) = &config.install_cni_bin {
        let plugin = crate::cni_install::plugin_beside_agent().map_err(|source| {
            crate::cni_install::InstallError::from_io(
                "plugin",
                dir.join(crate::cni_install::PLUGIN),
                source,
            )
        })?;
        crate::cni_install::install_plugin(dir, &plugin)?;
    }
    if let Some(dir) = &config.write_cni_conf {
        crate::cni_install::write_conf(dir, &config.socket)?;
    }
    let socket = config.socket.clone();
    let proxy_settings = config.proxy_bin.clone().and_then(|binary| {
        // The fake datapath redirects nothing and has no maps for the proxy to read.
        (config.datapath == DatapathKind::Bpf).then(|| crate::proxy::ProxySettings {
            binary,
            run_dir: config.node_state_dir().join("proxy"),
            bpf_pin_dir: LinuxConfig::new(&config.node_name, &config.bpffs_root).pin_dir(),
            ports: ciliate_model::l7::ProxyPorts::default(),
        })
    });
    let observer_settings = config.observer.clone();
    let node_name = config.node_name.clone();
    let flow_history =
        crate::observer::open_history(&observer_settings, &config.node_state_dir(), &node_name);
    let state = AppState {
        config: Arc::new(config),
        manager: Arc::clone(&manager),
        services: Arc::clone(&services),
        policies,
        fqdn: Arc::clone(&fqdn),
        cluster: cluster_member,
        ct_gc,
        api_metrics: Arc::default(),
        started,
        shutdown: shutdown.clone(),
        flow_history: flow_history.clone(),
    };
    let agent_metrics = {
        let s = state.clone();
        Arc::new(move || crate::metrics::render(&api::collect_status(&s), &s.api_metrics))
            as crate::observer::ExtraMetrics
    };
    let proxy_policies = Arc::clone(&state.policies);
    let (mut observer_tasks, observer) = crate::observer::start(
        &observer_settings,
        &node_name,
        crate::observer::Sources {
            datapath: Arc::clone(&datapath),
            manager,
            services,
            cluster: cluster_view,
            policies: Some(Arc::clone(&state.policies)),
            extra_metrics: Some(agent_metrics),
            history: flow_history.clone(),
            node_labels,
        },
        shutdown.clone(),
    );
    if let Some(settings) = proxy_settings {
        observer_tasks.push(crate::proxy::spawn(
            settings,
            proxy_policies,
            Some(observer),
            Some(Arc::clone(&fqdn)),
            shutdown.clone(),
        ));
    }
    let app = api::router(state);
    // Start-up parsed the BPF objects and the kernel's BTF and freed them between allocations
    // that stay: hand those free pages back once (0.6 MB of RSS at start).
    tokio::task::spawn_blocking(crate::heap::release_free_memory);
    info!(socket = %socket.display(), elapsed_ms = started.elapsed().as_millis() as u64, "serving the API");
    let served = serve(listener, app, shutdown).await;
    gc_task.abort();
    fqdn_task.abort();
    watch_task.abort();
    observer_tasks
        .iter()
        .for_each(tokio::task::JoinHandle::abort);
    services_task.abort();
    policy_task.abort();
    if let Some(t) = kube_task {
        // It ends at shutdown (a blocking task cannot be aborted) and holds the endpoint
        // manager until then: a restart in this process needs its state lock.
        if let Err(e) = t.await {
            warn!(error = %e, "the Kubernetes source's task panicked");
        }
    }
    if let Some(t) = cluster_task {
        t.abort();
    }
    // Nothing is detached: pods keep forwarding while the agent is down, and the next agent
    // picks the pinned datapath up again.
    drop(guard);
    if let Some(h) = flow_history {
        // What is still queued goes to disk: a restart's `observe --since` finds it.
        tokio::task::spawn_blocking(move || h.close()).await.ok();
    }
    info!("stopped; the datapath keeps forwarding");
    served.map_err(|source| AgentError::Serve {
        path: socket,
        source,
    })
}

/// The MTU of pod interfaces: as configured, else following the node's uplink as the
/// datapath finds it (see [`Config::pod_mtu`]).
async fn resolve_pod_mtu(config: &Config, datapath: &dyn Datapath) -> u32 {
    let uplink = match config.mtu {
        Some(_) => None,
        None => match datapath.uplink_mtu(config.uplink_address()).await {
            Ok(mtu) => mtu,
            Err(e) => {
                warn!(error = %e, "cannot read the uplink's MTU; using the default");
                None
            }
        },
    };
    let mtu = config.pod_mtu(uplink);
    info!(pod_mtu = mtu, uplink_mtu = ?uplink, configured = ?config.mtu, "pod MTU");
    mtu
}

/// Masquerades pods' traffic to the world on the node's uplink as its address (see
/// `bpf/host.c`), or turns it off: off by configuration, or when there is no uplink with an
/// IPv4 address to leave as. Off by configuration, the uplink programs are attached all the
/// same: they carry the node's own traffic to other nodes' pods through the overlay.
async fn configure_masquerade(
    config: &Config,
    datapath: &dyn Datapath,
) -> Result<(), DatapathError> {
    let want = config.uplink_address();
    let uplink = match datapath.uplink(want).await {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "cannot find the uplink; not masquerading");
            None
        }
    };
    if !config.masquerade {
        // The uplink programs still carry the node's own traffic to other nodes' pods
        // through the overlay (they pass everything else).
        if let Some(u) = &uplink {
            datapath.attach_host_programs(&u.name)?;
        }
        return datapath.set_masquerade(None);
    }
    let spec = uplink.and_then(|u| {
        let node_ip = want
            .filter(|ip| u.addresses.contains(ip))
            .or_else(|| u.addresses.first().copied())?;
        let mut exempt = vec![config.pod_cidr];
        exempt.extend(config.non_masquerade_cidrs.iter().copied());
        Some(ciliate_datapath::MasqueradeSpec {
            device: u.name,
            node_ip,
            exempt,
        })
    });
    if spec.is_none() {
        info!("no uplink with an IPv4 address: pods' traffic is not masqueraded");
    }
    datapath.set_masquerade(spec.as_ref())
}

/// The name of the overlay device in the node's namespace.
pub const TUNNEL_DEVICE: &str = "ciliate_vxlan";

/// Sets up the overlay and becomes a member of the cluster without waiting for etcd: the
/// membership starts from `saved` (the last run's view) and a task reaches etcd, retrying for
/// as long as it takes; once reached, the node's endpoints take their cluster references and
/// are published. Returns the task that follows the cluster, and the membership.
#[allow(clippy::too_many_arguments)] // start-up wiring: each is a distinct part of the agent
async fn join_cluster(
    config: &Config,
    pod_mtu: u32,
    cluster: &ClusterConfig,
    datapath: &Arc<dyn Datapath>,
    manager: &Arc<EndpointManager>,
    policies: &Arc<PolicyManager>,
    saved: Option<crate::cluster::SavedView>,
    shutdown: watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, Arc<ClusterMember>), AgentError> {
    let tunnel = match cluster.tunnel {
        TunnelMode::Vxlan if config.datapath == DatapathKind::Bpf => {
            datapath
                .ensure_tunnel_device(TUNNEL_DEVICE, cluster.tunnel_port, pod_mtu)
                .await
                .map_err(|e| AgentError::Cluster(format!("overlay: {e}")))?;
            Some(TUNNEL_DEVICE)
        }
        _ => None,
    };
    datapath
        .set_tunnel(tunnel)
        .map_err(|source| AgentError::Datapath {
            kind: config.datapath,
            source,
        })?;
    let member = ClusterMember::new(
        &config.node_name,
        config.pod_cidr,
        cluster,
        tunnel,
        saved,
        config.observer.hubble_listen_address,
    );
    manager.set_cluster_hooks(Arc::clone(&member) as Arc<dyn crate::endpoints::ClusterHooks>);
    let sync = tokio::spawn(run_cluster_sync(
        Arc::clone(&member),
        Arc::clone(manager),
        Arc::clone(policies),
        config.node_state_dir(),
        shutdown.clone(),
    ));
    let (m, c) = (Arc::clone(manager), Arc::clone(&member));
    let task = tokio::spawn(async move {
        if c.connect(shutdown).await {
            if let Err(e) = tokio::task::spawn_blocking(move || m.publish_to_cluster()).await {
                warn!(error = %e, "publishing this node's endpoints to the cluster panicked");
            }
        }
        // The membership's life is the sync task's.
        let _ = sync.await;
    });
    Ok((task, member))
}

/// Reads the node's addresses from its interfaces into the policy store (they are `host` in
/// the ipcache). A failure keeps the addresses known so far.
pub async fn refresh_node_addresses(datapath: &dyn Datapath, policies: &PolicyManager) {
    match datapath.node_addresses().await {
        Ok(addrs) => {
            policies.set_discovered_addresses(addrs);
        }
        Err(e) => warn!(error = %e, "cannot read the node's addresses; keeping those known"),
    }
}

/// Wakes when the manifest directory changed and every `interval` until `shutdown`: re-reads
/// the node's addresses and the manifest directory's policies, and reconciles when anything
/// changed or the last attempt failed.
pub async fn run_policy_loop(
    datapath: Arc<dyn Datapath>,
    manager: Arc<EndpointManager>,
    policies: Arc<PolicyManager>,
    interval: Duration,
    wake: Arc<tokio::sync::Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = wake.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        refresh_node_addresses(datapath.as_ref(), &policies).await;
        let (m, p) = (Arc::clone(&manager), Arc::clone(&policies));
        let tick = tokio::task::spawn_blocking(move || {
            p.reload_dir();
            if p.needs_reconcile() {
                let _ = m.reconcile_policy();
            }
        });
        if let Err(e) = tick.await {
            warn!(error = %e, "the policy poll panicked; retrying next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_private_and_a_live_one_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let tmp = tempfile::tempdir().expect("tempdir");
            let path = tmp.path().join("run/ciliate/agent.sock");
            let (listener, guard) = bind_socket(&path).expect("binds");
            let m = std::fs::metadata(&path).expect("exists");
            assert!(m.file_type().is_socket());
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
            let parent = std::fs::metadata(path.parent().expect("has parent")).expect("dir");
            assert_eq!(parent.permissions().mode() & 0o777, 0o755);
            let err =
                bind_socket_with_grace(&path, Duration::from_millis(200)).expect_err("in use");
            assert!(matches!(err, SocketError::InUse(_)), "{err}");
            // A stale socket (nobody listening) is replaced.
            drop(listener);
            std::mem::forget(guard);
            let (_l2, g2) = bind_socket(&path).expect("stale socket replaced");
            drop(g2);
            assert!(!path.exists(), "guard removes the socket");
            // A regular file is never removed.
            std::fs::write(&path, b"precious").expect("write");
            assert!(matches!(
                bind_socket(&path),
                Err(SocketError::NotASocket(_))
            ));
            assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
        });
    }

    /// An agent killed with SIGKILL keeps its socket listening until its last thread is gone;
    /// a restart in that moment waits for it instead of refusing.
    #[test]
    fn a_socket_that_goes_away_within_the_grace_is_taken_over() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("agent.sock");
        let dying = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let exiting = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // Closed without removing the file, as a killed process leaves it.
            drop(dying);
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let bound = rt.block_on(async { bind_socket_with_grace(&path, Duration::from_secs(30)) });
        exiting.join().expect("thread");
        let (_listener, guard) = bound.expect("took over the socket of the exited agent");
        assert_eq!(guard.path(), path);
    }

    fn config(args: &[&str]) -> Config {
        let env = crate::config::StaticEnvironment {
            vars: Default::default(),
            hostname: Some("node-a".to_owned()),
        };
        Config::parse_from(
            std::iter::once("ciliate-agent").chain(args.iter().copied()),
            &env,
        )
        .expect("config")
    }

    #[tokio::test]
    async fn the_pod_mtu_follows_the_uplink_the_datapath_finds_unless_configured() {
        let fake = FakeDatapath::new();
        fake.set_uplink_mtu(Some(1400));
        assert_eq!(resolve_pod_mtu(&config(&[]), &fake).await, 1400);
        assert_eq!(
            fake.uplink_queries(),
            vec![None],
            "the default route's device"
        );
        let with_ip = config(&["--node-ip", "192.0.2.1"]);
        assert_eq!(resolve_pod_mtu(&with_ip, &fake).await, 1400);
        assert_eq!(
            fake.uplink_queries().last(),
            Some(&Some(std::net::Ipv4Addr::new(192, 0, 2, 1))),
            "the device holding --node-ip"
        );
        let asked = fake.uplink_queries().len();
        assert_eq!(
            resolve_pod_mtu(&config(&["--mtu", "9000"]), &fake).await,
            9000
        );
        assert_eq!(
            fake.uplink_queries().len(),
            asked,
            "a configured MTU asks nothing"
        );
        fake.set_uplink_mtu(None);
        assert_eq!(
            resolve_pod_mtu(&config(&[]), &fake).await,
            1500,
            "no uplink"
        );
    }

    #[tokio::test]
    async fn masquerading_goes_on_the_uplink_as_its_address_unless_turned_off() {
        let fake = FakeDatapath::new();
        fake.set_uplink(Some(ciliate_datapath::Uplink {
            name: "eth0".into(),
            mtu: Some(1500),
            addresses: vec![
                std::net::Ipv4Addr::new(198, 18, 0, 1),
                std::net::Ipv4Addr::new(198, 18, 0, 2),
            ],
        }));
        let c = config(&[
            "--pod-cidr",
            "10.200.0.0/24",
            "--node-ip",
            "198.18.0.2",
            "--non-masquerade-cidrs",
            "10.0.0.0/8",
        ]);
        configure_masquerade(&c, &fake).await.expect("on");
        let spec = fake.masquerade().expect("masquerading");
        assert_eq!(spec.device, "eth0");
        assert_eq!(
            spec.node_ip,
            std::net::Ipv4Addr::new(198, 18, 0, 2),
            "--node-ip's"
        );
        assert_eq!(
            spec.exempt,
            vec![
                "10.200.0.0/24".parse().expect("net"),
                "10.0.0.0/8".parse().expect("net")
            ]
        );
        configure_masquerade(&config(&["--no-masquerade"]), &fake)
            .await
            .expect("off");
        assert_eq!(fake.masquerade(), None);
        assert_eq!(
            fake.host_device().as_deref(),
            Some("eth0"),
            "the uplink programs stay for the node's traffic through the overlay"
        );
        // No uplink: nothing to masquerade on.
        fake.set_uplink(None);
        configure_masquerade(&config(&[]), &fake)
            .await
            .expect("none");
        assert_eq!(fake.masquerade(), None);
    }

    #[test]
    fn guard_leaves_a_newer_socket_alone() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let tmp = tempfile::tempdir().expect("tempdir");
            let path = tmp.path().join("agent.sock");
            let (l1, g1) = bind_socket(&path).expect("binds");
            drop(l1);
            // Another agent replaced the stale socket before this guard dropped.
            let (_l2, _g2) = bind_socket(&path).expect("replaces stale");
            drop(g1);
            assert!(path.exists(), "the other agent's socket stays");
        });
    }
}
