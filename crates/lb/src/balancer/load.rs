//! Loading a whole state into an empty balancer (an agent's start): the same tables as
//! [`Balancer::apply`] of the same objects builds, without the work a batch does for a
//! balancer that holds something. With nothing held there is nothing to withdraw or compare,
//! and every Service is in the batch: no closure of Services sharing addresses to search, no
//! old plans or holdings to look up, and no difference to build (the caller compares the
//! whole state with the datapath's maps). At 50,000 Services a restart spent ~0.75 s of its
//! ~2 s in `apply`.

use std::sync::Arc;

use ciliate_model::k8s::Object;

use super::{
    as_service, candidates_of, raw_name, BackendKey, Balancer, Change, FrontendKey, HashSet,
    HeldFrontend, LbError, ServiceName, COMPACT_AFTER,
};

impl Balancer {
    /// Whether nothing is loaded: no object, plan, claim or holding (ids may be seeded).
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.slices.is_empty()
            && self.by_service.is_empty()
            && self.planned.is_empty()
            && self.cluster_ips.is_empty()
            && self.claims.is_empty()
            && self.frontends.is_empty()
            && self.rev_nats.is_empty()
            && self.backends.is_empty()
    }

    /// Loads `objects` (one per key) into an empty balancer: the state, ids, views and
    /// conflicts are those [`Balancer::apply`] of their upserts gives, without the
    /// difference (everything is new). A balancer that holds something gets them through
    /// [`Balancer::apply`]. On error the balancer is to be dropped (as after a failed start):
    /// what was loaded before the error stays.
    pub fn load(&mut self, objects: Vec<Arc<Object>>) -> Result<(), LbError> {
        if !self.is_empty() {
            let changes: Vec<Change> = objects.into_iter().map(Change::Upsert).collect();
            self.check(&changes)?;
            return self.apply_checked(changes).map(|_| ());
        }
        // Into an empty balancer, [`Balancer::check`] (the reverse-NAT indexes a batch would
        // need, counted before anything changes) is not run: the ids are given below, and
        // giving one past the last is the same error; the balancer is dropped on error.
        let large = objects.len() >= COMPACT_AFTER;
        // The ids held before: a restart's, seeded from the maps into tables built packed at
        // once ([`IdAllocator::seed`]), are most often all the state uses.
        let ids_before = (self.ids.backends_in_use(), self.ids.rev_nat_in_use());

        // The objects, each Service's name shared by its Service and its slices (the object
        // before's, when they come grouped as a file has them: no lookup).
        let mut names: HashSet<ServiceName> = HashSet::default();
        // Room for the tables at once, as for a Service and a slice each (growing tables of
        // 50,000 rows moved and hashed them again at each doubling); `shrink` below gives
        // back what is far from used.
        let half = objects.len() / 2;
        names.reserve(half);
        self.services.reserve(half);
        self.by_service.reserve(half);
        self.slices.reserve(half);
        let mut last: Option<ServiceName> = None;
        for o in objects {
            let name = match raw_name(&o) {
                None => None,
                Some(pair) if last.as_ref().is_some_and(|l| l.pair() == pair) => last.clone(),
                Some((ns, n)) => {
                    let n = ServiceName::new(ns, n);
                    let n = match names.get(&n) {
                        Some(k) => k.clone(),
                        None => {
                            names.insert(n.clone());
                            n
                        }
                    };
                    last = Some(n.clone());
                    Some(n)
                }
            };
            self.put_object(o, name);
        }
        drop(names);
        drop(last);

        // Every Service's plan.
        let mut planned = Vec::with_capacity(self.services.len());
        for (name, o) in &self.services {
            if let Some(svc) = as_service(o) {
                let slices = self.slices_of(name);
                let refs: Vec<&ciliate_model::k8s::EndpointSlice> =
                    slices.iter().map(|s| s.as_ref()).collect();
                planned.push((name.clone(), self.plan(svc, &refs)));
            }
        }
        self.planned.reserve(planned.len());
        for (name, p) in planned {
            if let Some(ip) = p.cluster_ip {
                self.cluster_ips.entry(ip).or_default().insert(name.clone());
            }
            self.planned.insert(name, p);
        }

        // Claims: a Service without its cluster IP claims nothing (as in `apply`). The plans
        // are walked, not looked up by name.
        let cluster_ips = &self.cluster_ips;
        let eligible = |n: &ServiceName, p: &super::Planned| match p.cluster_ip {
            None => true,
            Some(ip) => cluster_ips.get(&ip).and_then(|s| s.first()) == Some(n),
        };
        for (n, p) in &self.planned {
            if eligible(n, p) {
                for k in p.keys() {
                    self.claims.entry(k).or_default().insert(n.clone());
                }
            }
        }

        // Holdings and backend use; then ids in key order, backends first (as `apply`).
        let mut new_keys: Vec<(FrontendKey, ServiceName)> = Vec::new();
        for (n, p) in &self.planned {
            if !eligible(n, p) {
                continue;
            }
            for k in p.keys() {
                if self.claims.get(&k).and_then(|s| s.first()) != Some(n) {
                    continue;
                }
                for b in candidates_of(p, &k) {
                    let bk: BackendKey = (b.0, b.1, k.2);
                    self.backends.entry(bk).or_default().uses.add(b.2, 1);
                }
                // A key of `keys()` is its plan's first frontend of that key: `apply`'s
                // `build_frontend` finds it.
                new_keys.push((k, n.clone()));
            }
        }
        let mut backends: Vec<BackendKey> = self.backends.keys().copied().collect();
        backends.sort_unstable();
        for bk in backends {
            let Some(e) = self.backends.get(&bk) else {
                continue;
            };
            match e.uses.state() {
                None => {
                    self.backends.remove(&bk);
                }
                Some(state) => {
                    let id = self.ids.ensure_backend(bk)?;
                    if let Some(e) = self.backends.get_mut(&bk) {
                        e.programmed = Some((id, state));
                    }
                }
            }
        }
        new_keys.sort_unstable_by_key(|(k, _)| *k);
        self.frontends.reserve(new_keys.len());
        self.rev_nats.reserve(new_keys.len());
        for (k, n) in new_keys {
            let rev_nat_index = self.ids.ensure_rev_nat(k)?;
            self.rev_nats.insert(rev_nat_index, k);
            self.frontends.insert(
                k,
                HeldFrontend {
                    service: n,
                    rev_nat_index,
                },
            );
        }
        self.shrink();
        // Rebuilding the id tables packed is for ids given here in key order (half-full
        // B-tree nodes); when none was given (ids only ever grow here) they are as they were
        // seeded: at 50,000 Services the rebuild took ~10 ms of a restart for nothing.
        if large && (self.ids.backends_in_use(), self.ids.rev_nat_in_use()) != ids_before {
            self.compact();
        }
        Ok(())
    }
}
