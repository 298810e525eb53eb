//! Runs the node's L7 proxy: the policy manager's redirects go to `ciliate-proxy` through its
//! supervisor (crates/proxy), the proxy's HTTP, DNS and Kafka records become L7 flows in the
//! observer (on a background thread: [`crate::proxy_flows`]), and its state reaches `status`.
//!
//! An allowed DNS answer the proxy holds ([`ProxyEvent::FqdnLearned`]) goes to the FQDN cache
//! ([`crate::fqdn`]) on one blocking thread, which takes the answers queued meanwhile with it
//! ([`FqdnLearner`]); once their addresses are in the maps the proxy is told
//! [`ProxyCommand::FqdnAllowed`] through the same queue as the policy's commands.
//!
//! The proxy starts with the first redirect (a node without HTTP rules runs no proxy), or at
//! once when an earlier agent left one running (the supervisor adopts it, so traffic never
//! stops across an agent restart). The agent going away leaves the proxy serving: the
//! supervisor is dropped, not shut down.

use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;

use ciliate_model::l7::{FqdnLearned, ProxyCommand, ProxyEvent, ProxyPorts};
use ciliate_observer::Observer;
use ciliate_proxy::supervisor::{EventBatch, Supervisor, SupervisorConfig};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::fqdn::FqdnManager;
use crate::l7::ProxyHealth;
use crate::policy::PolicyManager;
use crate::proxy_flows::ProxyFlows;

/// Where the proxy runs from.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// The `ciliate-proxy` binary.
    pub binary: PathBuf,
    /// Its control socket and the state file a later agent adopts it by.
    pub run_dir: PathBuf,
    /// The node's pinned maps (the proxy reads peer identities there).
    pub bpf_pin_dir: PathBuf,
    /// The listeners.
    pub ports: ProxyPorts,
}

impl ProxySettings {
    /// Whether an earlier supervisor left a proxy to adopt.
    fn left_running(&self) -> bool {
        self.run_dir.join("proxy.json").exists()
    }
}

/// Whether a command gives the proxy something to do.
fn has_redirects(cmd: &ProxyCommand) -> bool {
    match cmd {
        ProxyCommand::Snapshot { redirects, .. } | ProxyCommand::Endpoint { redirects, .. } => {
            !redirects.is_empty()
        }
        ProxyCommand::FqdnAllowed { .. } | ProxyCommand::FqdnForget { .. } => false,
    }
}

/// Attaches to the policy manager and runs the proxy while the agent runs.
pub fn spawn(
    settings: ProxySettings,
    policies: Arc<PolicyManager>,
    observer: Option<Arc<Observer>>,
    fqdn: Option<Arc<FqdnManager>>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut commands) = mpsc::unbounded_channel::<ProxyCommand>();
    let acks = tx.clone();
    if let Some(f) = &fqdn {
        let forget = tx.clone();
        f.set_forget_sink(Box::new(move |endpoint| {
            let _ = forget.send(ProxyCommand::FqdnForget { endpoint });
        }));
    }
    policies.attach_l7_sink(Box::new(tx));
    let learner = FqdnLearner::new(fqdn, acks);
    let flows = observer.map(ProxyFlows::new);
    tokio::spawn(async move {
        let mut supervisor: Option<Supervisor> = None;
        let mut events: Option<broadcast::Receiver<EventBatch>> = None;
        // `status` shows the proxy up with its pid already: records need not refresh it.
        let mut reported_up = false;
        if settings.left_running() {
            start(&settings, &policies, &mut supervisor, &mut events).await;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    if supervisor.is_none() {
                        if !has_redirects(&cmd) {
                            continue;
                        }
                        // Starting sends the whole table; what is queued after it converges
                        // to the same state (see crate::l7).
                        start(&settings, &policies, &mut supervisor, &mut events).await;
                        continue;
                    }
                    if let Some(s) = &supervisor {
                        s.apply(cmd).await;
                    }
                }
                batch = next_batch(&mut events) => match batch {
                    Some(batch) => handle_batch(batch, &learner, supervisor.as_ref(), &policies, flows.as_ref(), &mut reported_up),
                    None => events = None,
                },
            }
        }
        // Dropping the supervisor leaves the proxy serving for the next agent to adopt.
        drop(supervisor);
    })
}

/// Puts learned answers' addresses in force, then lets the proxy release the answers: one
/// blocking thread takes them in order, each time with every answer queued meanwhile (one
/// policy computation for a burst of new names, and no thread per answer: a thread each,
/// blocked on the cache's lock, cost a stack and an allocator arena apiece). Without an FQDN
/// cache (never in the agent; tests) answers are released at once.
#[derive(Debug)]
pub struct FqdnLearner {
    queue: Option<std::sync::mpsc::Sender<FqdnLearned>>,
    thread: Option<std::thread::JoinHandle<()>>,
    acks: mpsc::UnboundedSender<ProxyCommand>,
}

/// Answers taken in one computation at most.
const LEARN_BATCH: usize = 512;

/// How long the learner waits without answers before it has the allocator return free memory
/// to the kernel. Each batch computes the policy of the endpoints that see the change, and
/// with thousands of learned names those temporaries (megabytes, on this thread's arena and
/// the observer's) were left behind as free memory that glibc keeps: 10,000 names grew the
/// agent by 87 MB where 30 MB were live. Once per burst, not per batch: trimming walks every
/// arena (a few ms).
const TRIM_WHEN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

impl FqdnLearner {
    /// Starts the thread (none without `fqdn`). It ends when the learner is dropped.
    pub fn new(fqdn: Option<Arc<FqdnManager>>, acks: mpsc::UnboundedSender<ProxyCommand>) -> Self {
        let learning = fqdn.and_then(|fqdn| {
            let (tx, rx) = std::sync::mpsc::channel::<FqdnLearned>();
            let acks = acks.clone();
            let started = std::thread::Builder::new()
                .name("fqdn-learn".into())
                .spawn(move || {
                    // Whether a batch ran since the allocator last gave memory back.
                    let mut dirty = false;
                    loop {
                        let first = if dirty {
                            match rx.recv_timeout(TRIM_WHEN_IDLE) {
                                Ok(ev) => ev,
                                Err(RecvTimeoutError::Timeout) => {
                                    crate::heap::release_free_memory();
                                    dirty = false;
                                    continue;
                                }
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        } else {
                            match rx.recv() {
                                Ok(ev) => ev,
                                Err(_) => break,
                            }
                        };
                        dirty = true;
                        let mut batch = vec![first];
                        while batch.len() < LEARN_BATCH {
                            match rx.try_recv() {
                                Ok(ev) => batch.push(ev),
                                Err(_) => break,
                            }
                        }
                        // On an error the datapath refuses what policy lacks; holding the
                        // answers would only make the pods retry.
                        let _ = fqdn.learned_all(&batch);
                        for ev in &batch {
                            let _ = acks.send(ProxyCommand::FqdnAllowed { id: ev.id });
                        }
                    }
                });
            match started {
                Ok(thread) => Some((tx, thread)),
                Err(e) => {
                    warn!(error = %e, "cannot start the FQDN learning thread; DNS answers go out unconfirmed");
                    None
                }
            }
        });
        let (queue, thread) = learning.unzip();
        Self {
            queue,
            thread,
            acks,
        }
    }

    /// Queues an answer (its FqdnAllowed follows once its addresses are in force).
    pub fn learn(&self, learned: FqdnLearned) {
        let id = learned.id;
        let queued = self.queue.as_ref().is_some_and(|q| q.send(learned).is_ok());
        if !queued {
            let _ = self.acks.send(ProxyCommand::FqdnAllowed { id });
        }
    }
}

impl Drop for FqdnLearner {
    /// Ends the thread and waits for it: it finishes what is queued, and once the learner is
    /// gone nothing holds the FQDN cache (and through it the state store's lock) any more.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One answer through a [`FqdnLearner`] of its own (tests).
pub fn allow_learned(
    learned: FqdnLearned,
    fqdn: Option<Arc<FqdnManager>>,
    acks: mpsc::UnboundedSender<ProxyCommand>,
) {
    FqdnLearner::new(fqdn, acks).learn(learned);
}

async fn next_batch(events: &mut Option<broadcast::Receiver<EventBatch>>) -> Option<EventBatch> {
    let Some(rx) = events else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(ev) => return Some(ev),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    lost_batches = n,
                    "the agent fell behind the proxy's records: L7 flows lost"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn start(
    settings: &ProxySettings,
    policies: &PolicyManager,
    supervisor: &mut Option<Supervisor>,
    events: &mut Option<broadcast::Receiver<EventBatch>>,
) {
    let cfg = SupervisorConfig {
        binary: settings.binary.clone(),
        run_dir: settings.run_dir.clone(),
        ports: settings.ports,
        listen_ip: std::net::Ipv4Addr::LOCALHOST,
        transparent: true,
        bpf_pin_dir: Some(settings.bpf_pin_dir.clone()),
        drain_timeout: std::time::Duration::from_secs(10),
        extra_args: Vec::new(),
    };
    match Supervisor::start(cfg).await {
        Ok(s) => {
            info!(binary = %settings.binary.display(), "L7 proxy supervisor started");
            *events = Some(s.batches());
            s.apply(policies.l7_snapshot()).await;
            report(&s, policies);
            *supervisor = Some(s);
        }
        Err(e) => {
            // Connections the redirects cover are refused by the datapath (no socket): fail
            // closed, and status says so.
            warn!(error = %e, "cannot start the L7 proxy: traffic under HTTP rules is refused");
            policies.set_proxy_health(ProxyHealth {
                up: Some(false),
                ..ProxyHealth::default()
            });
        }
    }
}

/// Handles the events the proxy sent together: records go to the observer's thread
/// ([`ProxyFlows`]), learned DNS answers to the FQDN learner.
fn handle_batch(
    batch: EventBatch,
    learner: &FqdnLearner,
    supervisor: Option<&Supervisor>,
    policies: &PolicyManager,
    flows: Option<&ProxyFlows>,
    reported_up: &mut bool,
) {
    let mut only_records = true;
    for ev in batch.iter() {
        match ev {
            ProxyEvent::Http(_)
            | ProxyEvent::HttpFrame(_)
            | ProxyEvent::Dns(_)
            | ProxyEvent::DnsFrame(_)
            | ProxyEvent::Kafka(_) => {}
            ProxyEvent::FqdnLearned(learned) => learner.learn(FqdnLearned::clone(learned)),
            ProxyEvent::Rejected { revision, reason } => {
                warn!(revision, %reason, "the proxy refused a policy update");
                only_records = false;
            }
            ProxyEvent::Applied { .. } | ProxyEvent::Stats(_) => only_records = false,
        }
    }
    // Last, so that the flows' thread is most likely its only holder (see `offer`).
    if let Some(f) = flows {
        f.offer(batch);
    }
    // Records change nothing `status` shows (the counters come with Stats), so once it shows
    // the proxy up they refresh nothing (they come two per request). Until then they do: the
    // supervisor marks a new proxy up only after its first Applied, which reports it down.
    if only_records && *reported_up {
        return;
    }
    if let Some(s) = supervisor {
        *reported_up = report(s, policies);
    }
}

/// The supervisor's view of the proxy, for `status`; true if it shows the proxy up.
fn report(supervisor: &Supervisor, policies: &PolicyManager) -> bool {
    let st = supervisor.status();
    let up = st.up && st.pid.is_some();
    policies.set_proxy_health(ProxyHealth {
        up: Some(st.up),
        applied_revision: st.applied_revision,
        restarts: Some(st.restarts),
        requests: st.stats.map(|s| s.requests),
        pid: st.pid,
    });
    up
}
