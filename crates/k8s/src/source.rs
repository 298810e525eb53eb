//! The source: one list+watch per kind, merged into one channel of [`SourceEvent`]s.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use kube::api::Api;
use kube::runtime::utils::Backoff as KubeBackoff;
use kube::runtime::watcher::{self, DefaultBackoff, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::document::Document;
use crate::kind::ResourceKind;
use crate::raw::RawObject;
use crate::stats::Stats;

/// What the source reports, per kind, in the order it happened for that kind. Events of
/// different kinds interleave in no particular order.
///
/// # Contract
///
/// For each kind the events follow `Init, InitApply*, InitDone, (Apply | Delete)*`, and the
/// whole sequence may start again with `Init` at any time: after the API server answers a
/// watch with 410 Gone (the resourceVersion is too old), or when a watch could not be resumed.
/// A consumer keeps, per kind, the set of objects it last knew, and:
///
/// - on `Init`, starts collecting a new set (and keeps using the old one meanwhile); an
///   `Init` before the `InitDone` (a list that failed part-way, retried) starts it anew;
/// - on `InitApply`, adds to the new set;
/// - on `InitDone`, **replaces** the old set by the new one: an object of the old set that
///   was not listed again was deleted while the source was not watching, and no `Delete`
///   event comes for it;
/// - on `Apply` / `Delete`, changes the current set.
///
/// Garbage collection of state derived from the API (datapath entries of pods or Services
/// that are gone) must wait until every watched kind has sent its first `InitDone`: before
/// that, an absent object may just not have been listed yet. (A later relist needs no such
/// wait: the old set stays in force until its `InitDone`.) A watch that breaks is resumed
/// from the last resourceVersion seen (including bookmarks) without a relist when the API
/// server still has it; errors are retried forever with the configured [`Backoff`], counted in
/// [`Stats`] and logged, never sent on the channel.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// A (re)list of this kind starts.
    Init(ResourceKind),
    /// One object of the list.
    InitApply(Document),
    /// The list is complete: replace this kind's objects by those of `InitApply` since `Init`.
    InitDone(ResourceKind),
    /// An object was added or changed.
    Apply(Document),
    /// An object was deleted (its last state).
    Delete(Document),
}

impl SourceEvent {
    /// The kind the event is about.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Init(k) | Self::InitDone(k) => *k,
            Self::InitApply(d) | Self::Apply(d) | Self::Delete(d) => d.kind,
        }
    }
}

/// How long to wait before retrying after an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backoff {
    /// kube's `default_backoff()` (client-go's: 0.8 s doubling to 30 s, with jitter, reset
    /// after 120 s without errors).
    #[default]
    Default,
    /// The same delay after every error (for tests, and for callers with their own policy).
    Fixed(Duration),
}

/// What the source watches and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The kinds to list and watch (default: all of [`ResourceKind::ALL`]). A kind whose
    /// resource the API server does not serve (the Cilium CRDs not installed) never completes
    /// its list; leave it out rather than let it hold garbage collection back. With no kinds
    /// the source ends at once.
    pub kinds: Vec<ResourceKind>,
    /// Only the Pods scheduled to this node (a `spec.nodeName=<node>` field selector), as an
    /// agent wants; `None` watches every Pod.
    pub node_name: Option<String>,
    /// Retry policy after errors.
    pub backoff: Backoff,
    /// Capacity of the event channel: the source waits (and the API server buffers) when the
    /// consumer is this far behind.
    pub channel_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kinds: ResourceKind::ALL.to_vec(),
            node_name: None,
            backoff: Backoff::Default,
            channel_capacity: 1024,
        }
    }
}

/// A running source.
#[derive(Debug)]
pub struct Source {
    /// The events, see [`SourceEvent`]. Dropping the receiver stops the source.
    pub events: mpsc::Receiver<SourceEvent>,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// The task doing the lists and watches; it ends soon after `events` is dropped (or
    /// abort it).
    pub task: JoinHandle<()>,
}

/// Starts listing and watching `opts.kinds` with `client` on the current tokio runtime.
///
/// # Panics
///
/// Outside a tokio runtime (as `tokio::spawn` does).
pub fn spawn(client: Client, opts: Options) -> Source {
    let (tx, events) = mpsc::channel(opts.channel_capacity.max(1));
    let stats = Arc::new(Stats::default());
    let mut kinds = opts.kinds.clone();
    kinds.sort();
    kinds.dedup();
    let streams: Vec<_> = kinds
        .into_iter()
        .map(|kind| watch_kind(client.clone(), kind, &opts))
        .collect();
    let task = tokio::spawn(run(streams, tx, stats.clone()));
    Source {
        events,
        stats,
        task,
    }
}

type KindStream = BoxStream<'static, (ResourceKind, watcher::Result<Event<RawObject>>)>;

fn watch_kind(client: Client, kind: ResourceKind, opts: &Options) -> KindStream {
    let api: Api<RawObject> = Api::all_with(client, &kind.api_resource());
    let mut config = watcher::Config::default();
    if kind == ResourceKind::Pod {
        if let Some(node) = &opts.node_name {
            config = config.fields(&format!("spec.nodeName={node}"));
        }
    }
    let backoff: Box<dyn KubeBackoff> = match opts.backoff {
        Backoff::Default => Box::new(DefaultBackoff::default()),
        Backoff::Fixed(delay) => Box::new(FixedBackoff(delay)),
    };
    watcher::watcher(api, config)
        .backoff(backoff)
        .map(move |item| (kind, item))
        .boxed()
}

/// Polls every kind's watcher, translates, and sends, until the receiver is dropped.
async fn run(streams: Vec<KindStream>, tx: mpsc::Sender<SourceEvent>, stats: Arc<Stats>) {
    let mut merged = stream::select_all(streams);
    let mut listed_before = [false; ResourceKind::ALL.len()];
    loop {
        // Also wake up when the consumer goes away, not only at the next event (a quiet watch
        // can go minutes without one).
        let (kind, item) = tokio::select! {
            biased;
            () = tx.closed() => return,
            next = merged.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let event = match item {
            Ok(Event::Init) => {
                if std::mem::replace(&mut listed_before[kind.index()], true) {
                    stats.relist(kind);
                }
                stats.set_listed(kind, false);
                SourceEvent::Init(kind)
            }
            Ok(Event::InitApply(obj)) => SourceEvent::InitApply(document(kind, obj, &stats)),
            Ok(Event::InitDone) => SourceEvent::InitDone(kind),
            Ok(Event::Apply(obj)) => SourceEvent::Apply(document(kind, obj, &stats)),
            Ok(Event::Delete(obj)) => SourceEvent::Delete(document(kind, obj, &stats)),
            Err(err) => {
                stats.error(kind, err.to_string());
                tracing::warn!(%kind, error = %err, "kubernetes watch failed; retrying after a backoff");
                continue;
            }
        };
        let done = matches!(event, SourceEvent::InitDone(_));
        if tx.send(event).await.is_err() {
            return;
        }
        if done {
            stats.set_listed(kind, true);
        }
    }
}

fn document(kind: ResourceKind, obj: RawObject, stats: &Stats) -> Document {
    let doc = Document::new(kind, obj.object);
    stats.event(kind, doc.warnings.len());
    doc
}

/// The same delay after every error.
struct FixedBackoff(Duration);

impl Iterator for FixedBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl KubeBackoff for FixedBackoff {
    fn reset(&mut self) {}
}
