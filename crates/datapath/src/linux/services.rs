//! The load-balancing maps, synced by difference against a shadow of what they hold.

use ciliate_model::lb::{LbState, LbSyncStats};
use ciliate_model::lb_diff::LbDiff;

use super::maps::{ignore_missing, Maps};
use super::{kernel, Inner};
use crate::lb::{self as lbmaps, LbEntries, LbOp};
use crate::DatapathError;

pub(super) fn read_lb_entries(maps: &Maps) -> Result<LbEntries, DatapathError> {
    let mut e = LbEntries::default();
    for item in maps.lb_svc.iter() {
        let (k, v) = item.map_err(kernel("read cil_lb4_svc"))?;
        e.services.insert(k, v);
    }
    for item in maps.lb_be.iter() {
        let (k, v) = item.map_err(kernel("read cil_lb4_be"))?;
        e.backends.insert(k, v);
    }
    for item in maps.lb_rnat.iter() {
        let (k, v) = item.map_err(kernel("read cil_lb4_rnat"))?;
        e.rev_nat.insert(k, v);
    }
    Ok(e)
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
    let ops = lbmaps::plan(&inner.lb_shadow, &lbmaps::entries(desired));
    write_ops(inner, ops)
}

pub(super) fn update_lb(inner: &mut Inner, diff: &LbDiff) -> Result<LbSyncStats, DatapathError> {
    let ops = lbmaps::plan_diff(&inner.lb_shadow, diff);
    write_ops(inner, ops)
}

fn write_ops(inner: &mut Inner, ops: Vec<LbOp>) -> Result<LbSyncStats, DatapathError> {
    let mut stats = LbSyncStats::default();
    for op in ops {
        // The shadow follows every write that succeeded, so a failure part-way leaves it
        // true and the next sync finishes the job.
        apply_lb_op(&mut inner.maps, op)?;
        lbmaps::apply(&mut inner.lb_shadow, op);
        match op {
            LbOp::PutBackend(..) | LbOp::PutRevNat(..) | LbOp::PutService(..) => stats.written += 1,
            _ => stats.deleted += 1,
        }
    }
    Ok(stats)
}

pub(super) fn lb_state(inner: &Inner) -> Result<LbState, DatapathError> {
    Ok(lbmaps::state_of(&read_lb_entries(&inner.maps)?))
}

/// The state the shadow says the maps hold: read when the datapath opened, then following
/// every write.
pub(super) fn lb_state_written(inner: &Inner) -> LbState {
    lbmaps::state_of(&inner.lb_shadow)
}
