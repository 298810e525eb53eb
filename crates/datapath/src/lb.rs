//! Load-balancing map contents: what `LbState` becomes in `cil_lb4_svc`, `cil_lb4_be` and
//! `cil_lb4_rnat`, and the ordered list of writes that turns one content into another.
//! Pure, so the ordering rules are tested without a kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ciliate_model::lb::{
    BackendState, FrontendKind, L4Proto, LbBackend, LbFrontend, LbState, ServiceRef,
};
use ciliate_model::lb_diff::LbDiff;

use crate::abi::{
    Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, BE_STATE_ACTIVE, BE_STATE_TERMINATING,
    SVC_F_AFFINITY,
};

/// The three maps' contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbEntries {
    /// `cil_lb4_svc`.
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    /// `cil_lb4_be`.
    pub backends: BTreeMap<u32, Lb4Backend>,
    /// `cil_lb4_rnat`.
    pub rev_nat: BTreeMap<u16, Lb4ReverseNat>,
}

impl LbEntries {
    /// Rebuilds the three B-trees packed. Filled in key order (as a batch writes them), their
    /// nodes stay little more than half full: at 10,000 Services of two backends the copy took
    /// ~240 bytes per Service, packed ~130.
    pub fn compact(&mut self) {
        self.services = std::mem::take(&mut self.services).into_iter().collect();
        self.backends = std::mem::take(&mut self.backends).into_iter().collect();
        self.rev_nat = std::mem::take(&mut self.rev_nat).into_iter().collect();
    }
}

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbOp {
    /// Insert or overwrite a backend.
    PutBackend(u32, Lb4Backend),
    /// Insert or overwrite a reverse-NAT entry.
    PutRevNat(u16, Lb4ReverseNat),
    /// Insert or overwrite a service slot.
    PutService(Lb4Key, Lb4Service),
    /// Delete a service slot.
    DelService(Lb4Key),
    /// Delete a reverse-NAT entry.
    DelRevNat(u16),
    /// Delete a backend.
    DelBackend(u32),
}

fn frontend_key(f: &LbFrontend, slot: u16) -> Lb4Key {
    Lb4Key {
        address: f.addr.octets(),
        dport: f.port.to_be_bytes(),
        backend_slot: slot,
        proto: f.proto.number(),
        scope: 0,
        pad: [0; 2],
    }
}

/// The map contents that stand for `state`.
pub fn entries(state: &LbState) -> LbEntries {
    entries_of(&state.frontends, &state.backends)
}

/// Where map contents are put, entry by entry (a later entry of one key replaces an earlier).
trait EntrySink {
    fn backend(&mut self, id: u32, b: Lb4Backend);
    fn rev_nat(&mut self, index: u16, r: Lb4ReverseNat);
    fn service(&mut self, k: Lb4Key, v: Lb4Service);
}

impl EntrySink for LbEntries {
    fn backend(&mut self, id: u32, b: Lb4Backend) {
        self.backends.insert(id, b);
    }
    fn rev_nat(&mut self, index: u16, r: Lb4ReverseNat) {
        self.rev_nat.insert(index, r);
    }
    fn service(&mut self, k: Lb4Key, v: Lb4Service) {
        self.services.insert(k, v);
    }
}

/// The map contents that stand for these frontends and backends (borrowed: a diff's are
/// not copied into a state first).
fn entries_of<'a>(
    frontends: impl IntoIterator<Item = &'a LbFrontend>,
    backends: impl IntoIterator<Item = &'a LbBackend>,
) -> LbEntries {
    let mut out = LbEntries::default();
    put_entries(&mut out, frontends, backends);
    out
}

/// Puts the map entries that stand for these frontends and backends into `out`.
fn put_entries<'a>(
    out: &mut impl EntrySink,
    frontends: impl IntoIterator<Item = &'a LbFrontend>,
    backends: impl IntoIterator<Item = &'a LbBackend>,
) {
    for b in backends {
        out.backend(
            b.id,
            Lb4Backend {
                address: b.addr.octets(),
                port: b.port.to_be_bytes(),
                proto: b.proto.number(),
                state: match b.state {
                    BackendState::Active => BE_STATE_ACTIVE,
                    BackendState::Terminating => BE_STATE_TERMINATING,
                },
            },
        );
    }
    for f in frontends {
        let count = u16::try_from(f.backends.len()).unwrap_or(u16::MAX);
        out.service(
            frontend_key(f, 0),
            Lb4Service {
                backend_id: 0,
                count,
                rev_nat_index: f.rev_nat_index,
                flags: if f.affinity_timeout.is_some() {
                    SVC_F_AFFINITY
                } else {
                    0
                },
                pad: [0; 3],
                affinity_timeout: f.affinity_timeout.unwrap_or(0),
            },
        );
        for (i, id) in f.backends.iter().take(usize::from(count)).enumerate() {
            out.service(
                frontend_key(f, i as u16 + 1),
                Lb4Service {
                    backend_id: *id,
                    rev_nat_index: f.rev_nat_index,
                    ..Lb4Service::default()
                },
            );
        }
        out.rev_nat(
            f.rev_nat_index,
            Lb4ReverseNat {
                address: f.addr.octets(),
                port: f.port.to_be_bytes(),
                rev_nat_index: f.rev_nat_index,
            },
        );
    }
}

/// Map contents as lists (put in the order given, sorted when planned): what a whole state is
/// compared with the shadow as, without a B-tree of its own.
#[derive(Default)]
struct EntryLists {
    backends: Vec<(u32, Lb4Backend)>,
    rev_nat: Vec<(u16, Lb4ReverseNat)>,
    services: Vec<(Lb4Key, Lb4Service)>,
}

impl EntrySink for EntryLists {
    fn backend(&mut self, id: u32, b: Lb4Backend) {
        self.backends.push((id, b));
    }
    fn rev_nat(&mut self, index: u16, r: Lb4ReverseNat) {
        self.rev_nat.push((index, r));
    }
    fn service(&mut self, k: Lb4Key, v: Lb4Service) {
        self.services.push((k, v));
    }
}

/// `list` sorted by key, of each key the entry put last (as a B-tree filled in that order
/// keeps it). A state's lists come nearly sorted: the stable sort takes them in runs.
fn sorted_last<K: Ord + Copy, V: Copy>(mut list: Vec<(K, V)>) -> Vec<(K, V)> {
    list.sort_by_key(|(k, _)| *k);
    let mut out: Vec<(K, V)> = Vec::with_capacity(list.len());
    for e in list {
        match out.last_mut() {
            Some(last) if last.0 == e.0 => *last = e,
            _ => out.push(e),
        }
    }
    out
}

/// Walks `current` and `desired` (sorted, one entry per key) together in key order: `put` for
/// every desired entry that `current` lacks or holds otherwise, `del` for every key of
/// `current` that `desired` lacks.
fn merge<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &[(K, V)],
    mut put: impl FnMut(K, V),
    mut del: impl FnMut(K),
) {
    let mut cur = current.iter().peekable();
    for &(k, v) in desired {
        while let Some((&ck, _)) = cur.next_if(|(ck, _)| **ck < k) {
            del(ck);
        }
        match cur.next_if(|(ck, _)| **ck == k) {
            Some((_, cv)) if *cv == v => {}
            _ => put(k, v),
        }
    }
    for (&ck, _) in cur {
        del(ck);
    }
}

/// [`plan`] from `current` to the contents of a whole `state` (what a sync writes): the same
/// writes in the same order, found by walking the shadow's B-trees and the state's entries
/// sorted together instead of building the state's B-trees and looking every entry up in the
/// shadow's (at 50,000 Services, most of a restart's sync).
pub fn plan_state(current: &LbEntries, state: &LbState) -> Vec<LbOp> {
    let mut lists = EntryLists::default();
    put_entries(&mut lists, &state.frontends, &state.backends);
    let mut ops = Vec::new();
    let (mut del_backends, mut del_rev_nat) = (Vec::new(), Vec::new());
    let (mut slots, mut entries, mut del_entries, mut del_slots) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    merge(
        &current.backends,
        &sorted_last(lists.backends),
        |id, b| ops.push(LbOp::PutBackend(id, b)),
        |id| del_backends.push(LbOp::DelBackend(id)),
    );
    merge(
        &current.rev_nat,
        &sorted_last(lists.rev_nat),
        |i, r| ops.push(LbOp::PutRevNat(i, r)),
        |i| del_rev_nat.push(LbOp::DelRevNat(i)),
    );
    merge(
        &current.services,
        &sorted_last(lists.services),
        |k, v| match k.backend_slot {
            0 => entries.push(LbOp::PutService(k, v)),
            _ => slots.push(LbOp::PutService(k, v)),
        },
        |k| match k.backend_slot {
            0 => del_entries.push(LbOp::DelService(k)),
            _ => del_slots.push(LbOp::DelService(k)),
        },
    );
    // `plan`'s phases: backends and reverse NAT, slots, service entries, then removals in
    // the opposite order.
    ops.extend(slots);
    ops.extend(entries);
    ops.extend(del_entries);
    ops.extend(del_slots);
    ops.extend(del_rev_nat);
    ops.extend(del_backends);
    ops
}

/// The writes that turn `current` into `desired`, in an order where a packet never finds a
/// slot pointing at a missing backend, nor a count covering a missing slot: backends and
/// reverse NAT first, then backend slots, then the service entries (counts), then removals
/// in the opposite order.
pub fn plan(current: &LbEntries, desired: &LbEntries) -> Vec<LbOp> {
    let mut ops = Vec::new();
    for (id, b) in &desired.backends {
        if current.backends.get(id) != Some(b) {
            ops.push(LbOp::PutBackend(*id, *b));
        }
    }
    for (idx, r) in &desired.rev_nat {
        if current.rev_nat.get(idx) != Some(r) {
            ops.push(LbOp::PutRevNat(*idx, *r));
        }
    }
    let changed = |k: &Lb4Key, v: &Lb4Service| current.services.get(k) != Some(v);
    for (k, v) in desired.services.iter().filter(|(k, _)| k.backend_slot != 0) {
        if changed(k, v) {
            ops.push(LbOp::PutService(*k, *v));
        }
    }
    for (k, v) in desired.services.iter().filter(|(k, _)| k.backend_slot == 0) {
        if changed(k, v) {
            ops.push(LbOp::PutService(*k, *v));
        }
    }
    // Removed frontends lose their service entry before their slots.
    for k in current.services.keys().filter(|k| k.backend_slot == 0) {
        if !desired.services.contains_key(k) {
            ops.push(LbOp::DelService(*k));
        }
    }
    for k in current.services.keys().filter(|k| k.backend_slot != 0) {
        if !desired.services.contains_key(k) {
            ops.push(LbOp::DelService(*k));
        }
    }
    for idx in current.rev_nat.keys() {
        if !desired.rev_nat.contains_key(idx) {
            ops.push(LbOp::DelRevNat(*idx));
        }
    }
    for id in current.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(LbOp::DelBackend(*id));
        }
    }
    ops
}

/// The writes that apply `diff` to maps holding `current`: [`plan`] over just the entries
/// the diff names (the frontends' slots and reverse-NAT entries, old and new, and the
/// backends), so a change costs what it changes, whatever the number of Services.
pub fn plan_diff(current: &LbEntries, diff: &LbDiff) -> Vec<LbOp> {
    let desired = entries_of(
        diff.frontends_added.iter().chain(&diff.frontends_changed),
        diff.backends_added.iter().chain(&diff.backends_changed),
    );
    let mut now = LbEntries::default();
    let frontends = diff
        .frontends_added
        .iter()
        .chain(&diff.frontends_changed)
        .chain(&diff.frontends_removed);
    for f in frontends {
        let first = frontend_key(f, 0);
        let last = Lb4Key {
            backend_slot: u16::MAX,
            proto: u8::MAX,
            scope: u8::MAX,
            pad: [u8::MAX; 2],
            ..first
        };
        for (k, v) in current
            .services
            .range(first..=last)
            .filter(|(k, _)| k.proto == first.proto && k.scope == first.scope)
        {
            now.services.insert(*k, *v);
            if k.backend_slot == 0 {
                now.rev_nat.extend(
                    current
                        .rev_nat
                        .get(&v.rev_nat_index)
                        .map(|r| (v.rev_nat_index, *r)),
                );
            }
        }
        now.rev_nat.extend(
            current
                .rev_nat
                .get(&f.rev_nat_index)
                .map(|r| (f.rev_nat_index, *r)),
        );
    }
    for b in diff
        .backends_added
        .iter()
        .chain(&diff.backends_changed)
        .chain(&diff.backends_removed)
    {
        now.backends
            .extend(current.backends.get(&b.id).map(|v| (b.id, *v)));
    }
    plan(&now, &desired)
}

/// `ops` cut into runs of one kind of write (one map, all puts or all deletes), in order:
/// each run can go to the kernel as one batch, which writes its entries in order. A plan's
/// runs are its phases (backends, reverse NAT, slots and service entries together, then
/// removals), so writing run after run passes through the states [`plan`]'s order allows,
/// and a run cut short leaves a prefix of them.
pub fn runs(ops: &[LbOp]) -> impl Iterator<Item = &[LbOp]> {
    ops.chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b))
}

/// Applies `op` to an in-memory copy (the datapath's shadow of its maps).
pub fn apply(entries: &mut LbEntries, op: LbOp) {
    match op {
        LbOp::PutBackend(id, b) => {
            entries.backends.insert(id, b);
        }
        LbOp::PutRevNat(i, r) => {
            entries.rev_nat.insert(i, r);
        }
        LbOp::PutService(k, v) => {
            entries.services.insert(k, v);
        }
        LbOp::DelService(k) => {
            entries.services.remove(&k);
        }
        LbOp::DelRevNat(i) => {
            entries.rev_nat.remove(&i);
        }
        LbOp::DelBackend(id) => {
            entries.backends.remove(&id);
        }
    }
}

/// Reads map contents back as an `LbState` (for `ciliate bpf lb list`). What the maps do not
/// hold (frontend kind, Service name) comes back as ClusterIP and empty.
pub fn state_of(e: &LbEntries) -> LbState {
    let mut frontends = Vec::new();
    for (k, v) in e.services.iter().filter(|(k, _)| k.backend_slot == 0) {
        let backends = (1..=v.count)
            .filter_map(|slot| {
                e.services
                    .get(&Lb4Key {
                        backend_slot: slot,
                        ..*k
                    })
                    .map(|s| s.backend_id)
            })
            .collect();
        frontends.push(LbFrontend {
            addr: Ipv4Addr::from(k.address),
            port: u16::from_be_bytes(k.dport),
            proto: L4Proto::from_number(k.proto).unwrap_or(L4Proto::Tcp),
            kind: FrontendKind::ClusterIp,
            rev_nat_index: v.rev_nat_index,
            backends,
            affinity_timeout: (v.flags & SVC_F_AFFINITY != 0).then_some(v.affinity_timeout),
            service: ServiceRef {
                namespace: String::new(),
                name: String::new(),
                port_name: String::new(),
            },
        });
    }
    let backends = e
        .backends
        .iter()
        .map(|(id, b)| LbBackend {
            id: *id,
            addr: Ipv4Addr::from(b.address),
            port: u16::from_be_bytes(b.port),
            proto: L4Proto::from_number(b.proto).unwrap_or(L4Proto::Tcp),
            state: if b.state == BE_STATE_TERMINATING {
                BackendState::Terminating
            } else {
                BackendState::Active
            },
        })
        .collect();
    LbState {
        frontends,
        backends,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: u32, last: u8) -> LbBackend {
        LbBackend {
            id,
            addr: Ipv4Addr::new(10, 0, 0, last),
            port: 8080,
            proto: L4Proto::Tcp,
            state: BackendState::Active,
        }
    }

    fn frontend(vip: u8, rev: u16, backends: Vec<u32>) -> LbFrontend {
        LbFrontend {
            addr: Ipv4Addr::new(10, 96, 0, vip),
            port: 80,
            proto: L4Proto::Tcp,
            kind: FrontendKind::ClusterIp,
            rev_nat_index: rev,
            backends,
            affinity_timeout: None,
            service: ServiceRef {
                namespace: "default".into(),
                name: format!("svc{vip}"),
                port_name: String::new(),
            },
        }
    }

    fn state(frontends: Vec<LbFrontend>, backends: Vec<LbBackend>) -> LbState {
        LbState {
            frontends,
            backends,
        }
    }

    /// Replays `ops` on `from` and checks, after every step, that whatever a packet can
    /// reach through a service entry exists.
    fn replay_checking_reachability(from: &LbEntries, ops: &[LbOp]) -> LbEntries {
        let mut cur = from.clone();
        for op in ops {
            apply(&mut cur, *op);
            for (k, v) in cur.services.iter().filter(|(k, _)| k.backend_slot == 0) {
                for slot in 1..=v.count {
                    let s = cur
                        .services
                        .get(&Lb4Key {
                            backend_slot: slot,
                            ..*k
                        })
                        .unwrap_or_else(|| panic!("slot {slot} of {k:?} missing after {op:?}"));
                    assert!(
                        cur.backends.contains_key(&s.backend_id),
                        "backend of {k:?} missing after {op:?}"
                    );
                }
                assert!(
                    cur.rev_nat.contains_key(&v.rev_nat_index),
                    "rev-NAT missing after {op:?}"
                );
            }
        }
        cur
    }

    #[test]
    fn entries_have_a_service_slot_per_backend_and_a_rev_nat() {
        let s = state(
            vec![frontend(1, 7, vec![3, 4])],
            vec![backend(3, 3), backend(4, 4)],
        );
        let e = entries(&s);
        assert_eq!(e.services.len(), 3);
        assert_eq!(e.backends.len(), 2);
        assert_eq!(e.rev_nat.get(&7).map(|r| r.port), Some(80u16.to_be_bytes()));
        assert_eq!(state_of(&e).frontends[0].backends, vec![3, 4]);
    }

    #[test]
    fn no_change_plans_nothing_and_one_backend_change_plans_only_it() {
        let a = state(
            vec![frontend(1, 1, vec![1, 2]), frontend(2, 2, vec![3])],
            vec![backend(1, 1), backend(2, 2), backend(3, 3)],
        );
        assert!(plan(&entries(&a), &entries(&a)).is_empty());
        let mut b = a.clone();
        b.backends[2].port = 9090;
        assert_eq!(plan(&entries(&a), &entries(&b)).len(), 1);
    }

    #[test]
    fn growing_shrinking_adding_and_removing_keep_every_slot_reachable() {
        let a = state(
            vec![frontend(1, 1, vec![1, 2]), frontend(2, 2, vec![2])],
            vec![backend(1, 1), backend(2, 2)],
        );
        let b = state(
            vec![frontend(1, 1, vec![2, 3, 4]), frontend(3, 3, vec![4])],
            vec![backend(2, 2), backend(3, 3), backend(4, 4)],
        );
        let c = state(vec![frontend(1, 1, vec![4])], vec![backend(4, 4)]);
        let empty = LbState::default();
        let mut cur = LbEntries::default();
        for next in [&a, &b, &c, &a, &empty] {
            let ops = plan(&cur, &entries(next));
            cur = replay_checking_reachability(&cur, &ops);
            assert_eq!(cur, entries(next));
        }
    }

    #[test]
    fn runs_are_the_plans_phases_and_any_cut_short_run_is_finished_by_the_next_plan() {
        let a = state(
            vec![frontend(1, 1, vec![1, 2]), frontend(2, 2, vec![2])],
            vec![backend(1, 1), backend(2, 2)],
        );
        let b = state(
            vec![frontend(1, 1, vec![2, 3, 4]), frontend(3, 3, vec![4])],
            vec![backend(2, 2), backend(3, 3), backend(4, 4)],
        );
        let from = entries(&a);
        let to = entries(&b);
        let ops = plan(&from, &to);
        let runs: Vec<&[LbOp]> = runs(&ops).collect();
        assert_eq!(runs.concat(), ops, "runs cover the plan in order");
        for r in &runs {
            let kind = std::mem::discriminant(&r[0]);
            assert!(r.iter().all(|op| std::mem::discriminant(op) == kind));
        }
        // Six kinds of writes, each in one run: one batch per kind.
        assert_eq!(runs.len(), 6, "{runs:?}");
        // A batch stops part-way (the kernel reports how many it wrote): whatever the cut,
        // the maps hold a prefix of the plan, every slot reachable, and the next plan from
        // that shadow finishes the job.
        for cut in 0..=ops.len() {
            let partial = replay_checking_reachability(&from, &ops[..cut]);
            let rest = plan(&partial, &to);
            assert_eq!(replay_checking_reachability(&partial, &rest), to);
            assert!(rest.len() <= ops.len() - cut, "no more than what was left");
        }
    }

    /// A small deterministic generator (xorshift), so the comparison below covers many
    /// shapes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    fn random_state(rng: &mut Rng) -> LbState {
        let backends: Vec<LbBackend> = (0..rng.next(8))
            .map(|_| {
                let mut b = backend(rng.next(6) as u32 + 1, rng.next(4) as u8);
                b.port = 8080 + rng.next(2) as u16;
                if rng.next(3) == 0 {
                    b.state = BackendState::Terminating;
                }
                b
            })
            .collect();
        let frontends = (0..rng.next(6))
            .map(|_| {
                let ids = (0..rng.next(4)).map(|_| rng.next(7) as u32).collect();
                let mut f = frontend(rng.next(4) as u8, rng.next(5) as u16 + 1, ids);
                f.port = 80 + rng.next(2) as u16;
                if rng.next(2) == 0 {
                    f.proto = L4Proto::Udp;
                }
                if rng.next(3) == 0 {
                    f.affinity_timeout = Some(rng.next(100) as u32 + 1);
                }
                f
            })
            .collect();
        state(frontends, backends)
    }

    /// Whatever the shadow holds and whatever the state (keys given twice, slots, entries,
    /// reverse NAT and backends added, changed and removed), planning from the state's
    /// entries sorted gives `plan`'s writes in `plan`'s order.
    #[test]
    fn a_state_planned_from_sorted_entries_plans_what_plan_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let current = entries(&random_state(&mut rng));
            let desired = random_state(&mut rng);
            assert_eq!(
                plan_state(&current, &desired),
                plan(&current, &entries(&desired)),
                "{current:?} -> {desired:?}"
            );
            assert!(plan_state(&entries(&desired), &desired).is_empty());
        }
    }

    #[test]
    fn a_diff_writes_what_a_full_sync_would_and_nothing_else() {
        let a = state(
            vec![
                frontend(1, 1, vec![1, 2]),
                frontend(2, 2, vec![2]),
                frontend(5, 5, vec![1]),
            ],
            vec![backend(1, 1), backend(2, 2)],
        );
        let b = state(
            vec![
                frontend(1, 1, vec![2, 3, 4]),
                frontend(3, 3, vec![4]),
                frontend(5, 5, vec![1]),
            ],
            vec![backend(1, 1), backend(2, 2), backend(3, 3), backend(4, 4)],
        );
        let c = state(
            vec![frontend(1, 1, vec![4]), frontend(5, 5, vec![1])],
            vec![backend(1, 1), backend(4, 4)],
        );
        let empty = LbState::default();
        let mut cur = LbEntries::default();
        let mut prev = LbState::default();
        for next in [&a, &b, &c, &a, &empty] {
            let diff = LbDiff::between(&prev, next);
            let ops = plan_diff(&cur, &diff);
            // Untouched frontend 5 (same in a, b, c) is never written again.
            let untouched = frontend_key(&frontend(5, 5, vec![1]), 1);
            if !prev.frontends.is_empty() && !next.frontends.is_empty() {
                assert!(!ops.iter().any(|op| matches!(op, LbOp::PutService(k, _) | LbOp::DelService(k) if *k == untouched)));
            }
            assert_eq!(
                ops.len(),
                plan(&cur, &entries(next)).len(),
                "as minimal as a full plan"
            );
            cur = replay_checking_reachability(&cur, &ops);
            assert_eq!(cur, entries(next));
            prev = next.clone();
        }
    }
}
