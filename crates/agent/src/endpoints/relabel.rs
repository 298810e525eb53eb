//! The relabel transaction: a Pod whose labels (or named ports) change in the API moves its
//! endpoints to the identity of the new labels without a restart.
//!
//! As every change of the manager, it is one transaction under the tables' lock: the new
//! identity is taken on a copy of the tables (from the cluster first, in multi-node, with no
//! lock held), each endpoint's policy is written for the new identity, then the endpoint map
//! entry (the identity its packets carry), then its record; the copy is persisted and only then
//! replaces the tables. Any failure puts back the old policy, entry and record and drops the
//! copy: the old state stays whole. Once committed, the reconciliation that follows every
//! change rewrites the other endpoints' policies and the ipcache for the new identity, the
//! cluster learns the endpoint's new identity and the old identity's reference is released.

use ciliate_k8s::PodInfo;
use ciliate_model::{Endpoint, EndpointState, Labels, NamedPort, NumericIdentity, PodRef};
use tracing::{info, warn};

use super::{
    put_record, recover, spec_of, with_namespace_label, EndpointError, EndpointManager, Tables,
};
use crate::pods;

/// Whether `e` is an endpoint of `pod` that does not have `labels` and `named_ports` yet.
fn is_stale(e: &Endpoint, pod: &PodRef, labels: &Labels, named_ports: &[NamedPort]) -> bool {
    // An endpoint recovered without its record carries placeholder labels and no cluster
    // reference: it stays as it is until it goes.
    e.pod.as_ref() == Some(pod)
        && !recover::is_unrecovered(e)
        && (e.labels != *labels || e.named_ports != named_ports)
}

impl EndpointManager {
    /// Gives the endpoints of `pod` the Pod object's labels (with the namespace label) and
    /// named ports; see [`EndpointManager::relabel`].
    pub fn relabel_pod(&self, pod: &PodInfo) -> Result<Vec<Endpoint>, EndpointError> {
        let r = pods::pod_ref(pod);
        let labels =
            with_namespace_label(pods::pod_labels(pod).map_err(EndpointError::Invalid)?, &r)?;
        self.relabel(&r, &labels, &pod.named_ports)
    }

    /// Moves every endpoint of `pod` to `labels` (its identity) and `named_ports`, all or
    /// nothing; returns the endpoints changed (none when they already are so, or the pod has
    /// no endpoint on this node). Blocks (datapath, fsync, the cluster).
    pub fn relabel(
        &self,
        pod: &PodRef,
        labels: &Labels,
        named_ports: &[NamedPort],
    ) -> Result<Vec<Endpoint>, EndpointError> {
        // How many endpoints change identity: one cluster reference each, as creation takes.
        let moving = self
            .lock()
            .endpoints
            .values()
            .filter(|e| is_stale(e, pod, labels, named_ports) && e.labels != *labels)
            .count();
        let cluster = self.cluster.get().filter(|_| moving > 0);
        let mut cluster_id = None;
        if let Some(c) = cluster {
            for taken in 0..moving {
                match c.allocate_identity(labels) {
                    Ok(id) => cluster_id = Some(id),
                    Err(e) => {
                        for _ in 0..taken {
                            c.release_identity(labels);
                        }
                        return Err(EndpointError::Cluster(format!(
                            "cannot get the cluster-wide identity of labels [{labels}] for pod {pod}: {e}; its endpoints keep their identity, retried at the pod's next change"
                        )));
                    }
                }
            }
        }
        // In a cluster, no more endpoints may move than references were taken for.
        let max_moves = self.cluster.get().map(|_| moving);
        let result = self.relabel_with(pod, labels, named_ports, cluster_id, max_moves);
        if let Some(c) = cluster {
            let moved = result.as_ref().map_or(0, |changed| {
                changed
                    .iter()
                    .filter(|(old, new)| old.labels != new.labels)
                    .count()
            });
            // The tables may have changed between counting and the transaction.
            for _ in moved..moving {
                c.release_identity(labels);
            }
        }
        let changed = result?;
        if let Some(c) = self.cluster.get() {
            for (old, new) in &changed {
                if old.labels != new.labels {
                    if new.state == EndpointState::Ready {
                        c.endpoint_up(new);
                    }
                    c.release_identity(&old.labels);
                }
            }
        }
        Ok(changed.into_iter().map(|(_, new)| new).collect())
    }

    fn relabel_with(
        &self,
        pod: &PodRef,
        labels: &Labels,
        named_ports: &[NamedPort],
        cluster_id: Option<NumericIdentity>,
        max_moves: Option<usize>,
    ) -> Result<Vec<(Endpoint, Endpoint)>, EndpointError> {
        let mut tables = self.lock();
        let olds: Vec<Endpoint> = tables
            .endpoints
            .values()
            .filter(|e| is_stale(e, pod, labels, named_ports))
            .cloned()
            .collect();
        if olds.is_empty() {
            return Ok(Vec::new());
        }
        let moves = olds.iter().filter(|e| e.labels != *labels).count();
        if max_moves.is_some_and(|max| moves > max) {
            // An endpoint of the pod was created meanwhile: the cluster references taken do
            // not cover it.
            return Err(EndpointError::Unavailable(format!(
                "the endpoints of pod {pod} changed during its relabel; nothing was changed, it is retried"
            )));
        }
        let mut next = tables.clone();
        let mut changed = Vec::new();
        for old in olds {
            let mut ep = old.clone();
            if old.labels != *labels {
                let identity = match cluster_id {
                    Some(id) => next.identities.acquire_as(labels, id).map_err(|e| {
                        EndpointError::Cluster(format!(
                            "the cluster's identity {id} for labels [{labels}] contradicts this node's: {e}"
                        ))
                    })?,
                    None => next
                        .identities
                        .acquire(labels)
                        .map_err(|e| EndpointError::Exhausted(e.to_string()))?,
                };
                next.identities.release(old.identity);
                ep.identity = identity;
                ep.labels = labels.clone();
            }
            ep.named_ports = named_ports.to_vec();
            next.endpoints.insert(ep.id, ep.clone());
            changed.push((old, ep));
        }
        let mut done = 0;
        let mut failure = None;
        for (_, ep) in &changed {
            match self.program_relabelled(ep, &next) {
                Ok(()) => done += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = self.store.save(&self.persisted(&next)) {
                failure = Some(EndpointError::State(e));
            }
        }
        if let Some(e) = failure {
            // The one that failed may be half done: put it back too.
            for (old, _) in changed.iter().take(done + 1) {
                if let Err(undo) = self.program_relabelled(old, &tables) {
                    warn!(endpoint = old.id, error = %undo, "cannot put back the datapath of an endpoint whose relabel failed; the policy loop and the endpoint checks retry");
                }
            }
            warn!(pod = %pod, labels = %labels, error = %e, "cannot relabel the pod's endpoints; they keep their identity");
            return Err(e);
        }
        *tables = next;
        self.changes.send_modify(|g| *g += 1);
        drop(tables);
        // Other endpoints' policies and the ipcache now see the new identity.
        self.after_change();
        for (old, new) in &changed {
            info!(
                endpoint = new.id,
                pod = %pod,
                old_identity = old.identity,
                identity = new.identity,
                labels = %new.labels,
                named_ports = new.named_ports.len(),
                "endpoint relabelled"
            );
        }
        Ok(changed)
    }

    /// Writes what the datapath holds of `ep` as `t` has it: its policy first (so the identity
    /// its packets carry is never newer than the policy judging them), then its endpoint entry
    /// and record. An endpoint that is not ready has no working datapath to write: the endpoint
    /// checks program it, from the tables, once it is repaired.
    fn program_relabelled(&self, ep: &Endpoint, t: &Tables) -> Result<(), EndpointError> {
        if ep.state != EndpointState::Ready {
            return Ok(());
        }
        let spec = spec_of(ep);
        let what = |doing: &str| {
            format!(
                "cannot {doing} of endpoint {} (pod {}, host interface {})",
                ep.id,
                ep.pod.as_ref().map(ToString::to_string).unwrap_or_default(),
                ep.host_ifname
            )
        };
        if let Some(policy) = self.policy.get() {
            policy
                .program_endpoint(&spec, &t.identity_labels(), &t.named_ports())
                .map_err(|source| EndpointError::Datapath {
                    what: what("write the network policy"),
                    source,
                })?;
        }
        self.datapath
            .upsert_endpoint(&spec)
            .map_err(|source| EndpointError::Datapath {
                what: what("write the identity"),
                source,
            })?;
        put_record(self.datapath.as_ref(), ep).map_err(|source| EndpointError::Datapath {
            what: what("store the record"),
            source,
        })
    }
}
