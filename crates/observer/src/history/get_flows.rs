//! GetFlows beyond the ring: which of a request's flows come from the history, and sending
//! them ahead of the ring's.
//!
//! The ring answers for the flows it holds (from its oldest sequence number on, at the moment
//! the request arrived); the history for everything older, so a request sees each flow once
//! and no gap between the two, and a follower then continues with the live flows as before.
//!
//! When the history is read (the ring alone answers otherwise, as Hubble's does):
//! * `since` given, or `first`: every wanted flow of the time range (`first`: the oldest
//!   `number` of them, then the ring's continue up to `number`);
//! * `number` N (Hubble's `--last N`) with fewer than N wanted flows in the ring: the newest
//!   of the history's make up the difference.
//!
//! A request with neither (`observe -f`, `--all` without `--since`) reads the ring alone.

use tokio::sync::mpsc;
use tonic::Status;

use super::{PodPrefilter, Scan, Snapshot};
use crate::fieldmask::FlowMask;
use crate::filter::FlowFilters;
use crate::proto::observer::{GetFlowsRequest, GetFlowsResponse};
use crate::ring::{Numbered, Observer};

fn ns(ts: &pbjson_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.nanos))
}

#[derive(Debug, Clone, Copy)]
enum Take {
    /// The oldest N (0: all).
    First(u64),
    /// The newest N.
    Last(u64),
}

/// The part of a GetFlows answer that comes from the history.
#[derive(Debug)]
pub struct Older {
    snapshot: Snapshot,
    filters: FlowFilters,
    prefilter: PodPrefilter,
    since_ns: Option<i64>,
    until_ns: Option<i64>,
    ring_from: u64,
    take: Take,
    mask: Option<FlowMask>,
}

/// What of `req` the history answers, given the ring's snapshot and how many entries of it the
/// request selected; `None` when the ring alone answers.
pub fn older(
    observer: &Observer,
    req: &GetFlowsRequest,
    ring: &[Numbered],
    ring_selected: usize,
) -> Option<Older> {
    let history = observer.history()?;
    let take = if req.first {
        Take::First(req.number)
    } else if req.number > 0 {
        let missing = req.number.saturating_sub(ring_selected as u64);
        if missing == 0 {
            return None;
        }
        Take::Last(missing)
    } else if req.since.is_some() {
        Take::First(0)
    } else {
        return None;
    };
    // The request's filters compiled again (the server's copy stays with the follower); they
    // compiled there, so they compile here.
    let filters = FlowFilters::compile(&req.whitelist, &req.blacklist).ok()?;
    let mask = FlowMask::new(req.field_mask.as_ref().map_or(&[][..], |m| &m.paths[..])).ok()?;
    Some(Older {
        // Taken after the ring's snapshot: flows arriving in between are in both, and
        // `ring_from` leaves them to the ring (or to the live stream).
        snapshot: history.snapshot(),
        filters,
        prefilter: PodPrefilter::new(&req.whitelist),
        since_ns: req.since.as_ref().map(ns),
        until_ns: req.until.as_ref().map(ns),
        // An empty ring: no flow of this run existed when the request came.
        ring_from: ring.first().map_or(1, |n| n.seq),
        take,
        mask,
    })
}

impl Older {
    /// Whether the request takes the oldest flows (the ring's part then shrinks by what the
    /// history sent).
    pub fn takes_first(&self) -> bool {
        matches!(self.take, Take::First(_))
    }

    /// Sends the history's flows on `tx`, oldest first, reading on a blocking thread; returns
    /// how many, or `None` when the client went away.
    pub async fn send(
        self,
        tx: &mpsc::Sender<Result<GetFlowsResponse, Status>>,
        node: &str,
    ) -> Option<u64> {
        let tx = tx.clone();
        let node = node.to_owned();
        tokio::task::spawn_blocking(move || {
            let scan = Scan {
                filters: &self.filters,
                prefilter: &self.prefilter,
                since_ns: self.since_ns,
                until_ns: self.until_ns,
                ring_from: self.ring_from,
            };
            let mut sent = 0u64;
            let mut gone = false;
            let mask = self.mask.as_ref();
            let mut emit = |flow: crate::proto::flow::Flow| {
                let flow = match mask {
                    Some(m) => m.apply(&flow),
                    None => flow,
                };
                if tx
                    .blocking_send(Ok(crate::server::flow_response(flow, &node)))
                    .is_err()
                {
                    gone = true;
                    return false;
                }
                sent += 1;
                true
            };
            match self.take {
                Take::First(0) => self.snapshot.forward(&scan, 0, &mut emit),
                Take::First(n) => {
                    let mut left = n;
                    self.snapshot.forward(&scan, 0, &mut |f| {
                        left -= 1;
                        emit(f) && left > 0
                    });
                }
                Take::Last(n) => self.snapshot.last(&scan, n, &mut emit),
            }
            (!gone).then_some(sent)
        })
        .await
        .ok()
        .flatten()
    }
}
