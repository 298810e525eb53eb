//! The load-balancing maps, synced by difference against a shadow of what they hold.

use ciliate_model::lb::{LbState, LbSyncStats};
use ciliate_model::lb_diff::LbDiff;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Pod;

use tracing::debug;

use super::batch::{self, BatchError};
use super::maps::{ignore_missing, Maps};
use super::{kernel, Inner};
use crate::lb::{self as lbmaps, LbEntries, LbOp};
use crate::DatapathError;

pub(super) fn read_lb_entries(maps: &Maps) -> Result<LbEntries, DatapathError> {
    Ok(LbEntries {
        services: read_all(&maps.lb_svc, "read cil_lb4_svc")?,
        backends: read_all(&maps.lb_be, "read cil_lb4_be")?,
        rev_nat: read_all(&maps.lb_rnat, "read cil_lb4_rnat")?,
    })
}

/// Every entry of `map`: in batches, or entry by entry where the kernel has no batched read.
fn read_all<K: Pod, V: Pod, C: FromIterator<(K, V)>>(
    map: &BpfHashMap<MapData, K, V>,
    what: &'static str,
) -> Result<C, DatapathError> {
    match batch::lookup_all(map) {
        Ok(entries) => Ok(entries.into_iter().collect()),
        Err(BatchError::Unsupported(_)) => {
            map.iter().map(|item| item.map_err(kernel(what))).collect()
        }
        Err(BatchError::Failed { error, .. }) => Err(DatapathError::kernel(what, error)),
    }
}

fn apply_lb_op(maps: &mut Maps, op: LbOp) -> Result<(), DatapathError> {
    match op {
        LbOp::PutBackend(id, b) => maps
            .lb_be
            .insert(id, b, 0)
            .map_err(kernel("write cil_lb4_be")),
        LbOp::PutRevNat(i, r) => maps
            .lb_rnat
            .insert(i, r, 0)
            .map_err(kernel("write cil_lb4_rnat")),
        LbOp::PutService(k, v) => maps
            .lb_svc
            .insert(k, v, 0)
            .map_err(kernel("write cil_lb4_svc")),
        LbOp::DelService(k) => ignore_missing(maps.lb_svc.remove(&k)),
        LbOp::DelRevNat(i) => ignore_missing(maps.lb_rnat.remove(&i)),
        LbOp::DelBackend(id) => ignore_missing(maps.lb_be.remove(&id)),
    }
}

pub(super) fn sync_lb(inner: &mut Inner, desired: &LbState) -> Result<LbSyncStats, DatapathError> {
    let ops = lbmaps::plan_state(&inner.lb_shadow, desired);
    write_ops(inner, ops)
}

pub(super) fn update_lb(inner: &mut Inner, diff: &LbDiff) -> Result<LbSyncStats, DatapathError> {
    let ops = lbmaps::plan_diff(&inner.lb_shadow, diff);
    write_ops(inner, ops)
}

/// After this many writes the shadow is rebuilt packed ([`LbEntries::compact`]).
const COMPACT_AFTER: usize = 1_000;

fn write_ops(inner: &mut Inner, ops: Vec<LbOp>) -> Result<LbSyncStats, DatapathError> {
    let large = ops.len() >= COMPACT_AFTER;
    let stats = write_runs(inner, ops);
    if large {
        inner.lb_shadow.compact();
    }
    stats
}

fn write_runs(inner: &mut Inner, ops: Vec<LbOp>) -> Result<LbSyncStats, DatapathError> {
    let mut stats = LbSyncStats::default();
    // Runs of one kind of write go to the kernel as one batch each, in plan order, so the
    // maps pass through the same states as with one write per entry, only fewer of them.
    for run in lbmaps::runs(&ops) {
        let written = if inner.lb_batch {
            match write_batch(&inner.maps, run) {
                Ok(()) => run.len(),
                Err(BatchError::Unsupported(e)) => {
                    debug!(error = %e, "no batch map writes here: one bpf() per entry");
                    inner.lb_batch = false;
                    0
                }
                Err(BatchError::Failed { done, error }) => {
                    // The kernel wrote the run's first `done` entries: the shadow follows
                    // them, so it stays true, and the next sync writes the rest. What is in
                    // the maps is a prefix of the plan, whose order keeps every slot's
                    // backend and reverse-NAT entry present.
                    record(inner, &run[..done], &mut stats);
                    return Err(DatapathError::kernel(
                        format!("{} (entry {} of {})", run_name(run[0]), done + 1, run.len()),
                        error,
                    ));
                }
            }
        } else {
            0
        };
        record(inner, &run[..written], &mut stats);
        for op in &run[written..] {
            // The shadow follows every write that succeeded, so a failure part-way leaves it
            // true and the next sync finishes the job.
            apply_lb_op(&mut inner.maps, *op)?;
            record(inner, std::slice::from_ref(op), &mut stats);
        }
    }
    Ok(stats)
}

fn record(inner: &mut Inner, ops: &[LbOp], stats: &mut LbSyncStats) {
    for op in ops {
        lbmaps::apply(&mut inner.lb_shadow, *op);
        match op {
            LbOp::PutBackend(..) | LbOp::PutRevNat(..) | LbOp::PutService(..) => stats.written += 1,
            _ => stats.deleted += 1,
        }
    }
}

fn run_name(op: LbOp) -> &'static str {
    match op {
        LbOp::PutBackend(..) => "write cil_lb4_be",
        LbOp::PutRevNat(..) => "write cil_lb4_rnat",
        LbOp::PutService(..) => "write cil_lb4_svc",
        LbOp::DelService(..) => "delete from cil_lb4_svc",
        LbOp::DelRevNat(..) => "delete from cil_lb4_rnat",
        LbOp::DelBackend(..) => "delete from cil_lb4_be",
    }
}

/// One run (writes of one kind, see [`lbmaps::runs`]) as one batch.
fn write_batch(maps: &Maps, run: &[LbOp]) -> Result<(), BatchError> {
    macro_rules! keys_values {
        ($variant:ident) => {
            run.iter()
                .filter_map(|op| match op {
                    LbOp::$variant(k, v) => Some((*k, *v)),
                    _ => None,
                })
                .unzip::<_, _, Vec<_>, Vec<_>>()
        };
    }
    macro_rules! keys {
        ($variant:ident) => {
            run.iter()
                .filter_map(|op| match op {
                    LbOp::$variant(k) => Some(*k),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
    }
    match run.first() {
        None => Ok(()),
        Some(LbOp::PutBackend(..)) => {
            let (k, v) = keys_values!(PutBackend);
            batch::update(&maps.lb_be, &k, &v)
        }
        Some(LbOp::PutRevNat(..)) => {
            let (k, v) = keys_values!(PutRevNat);
            batch::update(&maps.lb_rnat, &k, &v)
        }
        Some(LbOp::PutService(..)) => {
            let (k, v) = keys_values!(PutService);
            batch::update(&maps.lb_svc, &k, &v)
        }
        Some(LbOp::DelService(..)) => batch::delete(&maps.lb_svc, &keys!(DelService)),
        Some(LbOp::DelRevNat(..)) => batch::delete(&maps.lb_rnat, &keys!(DelRevNat)),
        Some(LbOp::DelBackend(..)) => batch::delete(&maps.lb_be, &keys!(DelBackend)),
    }
}

pub(super) fn lb_state(inner: &Inner) -> Result<LbState, DatapathError> {
    Ok(lbmaps::state_of(&read_lb_entries(&inner.maps)?))
}

/// The state the shadow says the maps hold: read when the datapath opened, then following
/// every write.
pub(super) fn lb_state_written(inner: &Inner) -> LbState {
    lbmaps::state_of(&inner.lb_shadow)
}
