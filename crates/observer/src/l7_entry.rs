//! An HTTP or DNS record of the node's proxy as the ring keeps it: the flow without its endpoints,
//! node labels and id, and the two ends as the store named them when the record arrived
//! (shared endpoint entries, not copies). The whole Hubble [`Flow`] is built only when
//! someone reads it (GetFlows, follow, export); the flow history stores it from these parts
//! (its endpoints once per block, as for datapath events: [`crate::record::Recorded`]).
//!
//! Why: the proxy sends two records per request, and naming both ends of each flow (a pod's
//! namespace, name and labels, the node's labels, the id as text) was most of the agent's
//! allocations per request, for flows most of which nobody reads. Metrics are counted when
//! the record arrives, from [`RecordedHttp::unnamed`]: everything they look at is there.
//! DNS records are kept the same way ([`RecordedHttp::capture_dns_with`]): at 10,000 queries
//! a second, building their named flows and freeing those the full ring pushed out were two
//! thirds of the agent's record thread, whose runs the DNS path's wakeups wait behind on a
//! busy CPU (bench/README.md, "Session 15: where the p99 comes from").

use std::sync::Arc;
use std::time::SystemTime;

use ciliate_model::l7::{DnsRecord, HttpRecord, L7Verdict};

use crate::dns::dns_parts;
use crate::l7::{http_parts, l7_flow_unnamed, L7Common};
use crate::proto::flow::layer7;
use crate::proto::flow::{Endpoint, Flow, Policy, TrafficDirection};
use crate::record::{side, side_endpoint, side_key, FlowIds, NodeNames, Side};
use crate::store::Store;

/// An HTTP (or DNS) record with the names it had: what the ring keeps instead of a built Flow.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedHttp {
    /// The flow but for its endpoints, node labels, id, the cluster's names and `policy`.
    unnamed: Flow,
    /// The flow's id, fixed when the record arrived.
    uuid: uuid::Uuid,
    node: Arc<NodeNames>,
    /// The flow's source and destination (a response's source is the server), with their
    /// identities.
    ends: [(Side, u32); 2],
    /// The policy that allowed the request (shared by the records of a batch: a copy per
    /// record was ~7 allocations), put in the flow's `*_allowed_by` when it is built.
    policy: Option<Arc<Policy>>,
}

/// The policies of the rules a batch of records names, each asked of the store once per
/// batch (the records of a connection all name the same rule).
#[derive(Debug, Default)]
pub struct RulePolicies {
    last: Option<(u32, Option<Arc<Policy>>)>,
}

impl RulePolicies {
    fn get(&mut self, rule: u32, store: &dyn Store) -> Option<Arc<Policy>> {
        match &self.last {
            Some((r, p)) if *r == rule => p.clone(),
            _ => {
                let p = store.policy_by_rule(rule).map(Arc::new);
                self.last = Some((rule, p.clone()));
                p
            }
        }
    }
}

/// The field of `Flow` that lists the policies that allowed a flow of this direction
/// (`egress_allowed_by`, `ingress_allowed_by` in flow.proto); none for another direction.
fn allowed_by_field(flow: &Flow) -> Option<u32> {
    match TrafficDirection::try_from(flow.traffic_direction) {
        Ok(TrafficDirection::Egress) => Some(21001),
        Ok(TrafficDirection::Ingress) => Some(21002),
        _ => None,
    }
}

impl RecordedHttp {
    /// Names `record` from `store` as it is now: what the flow will show whenever it is
    /// read. `node_name` is the flow's node name (the observer's).
    pub fn capture(
        record: HttpRecord,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &str,
    ) -> Self {
        Self::capture_with(
            record,
            store,
            node,
            ids,
            node_name,
            &mut RulePolicies::default(),
        )
    }

    /// [`capture`](Self::capture), the rules' policies asked of `policies` (one per batch).
    pub fn capture_with(
        record: HttpRecord,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &str,
        policies: &mut RulePolicies,
    ) -> Self {
        let (common, http, summary) = http_parts(record);
        Self::capture_parts(common, http, summary, store, node, ids, node_name, policies)
    }

    /// [`capture_with`](Self::capture_with) for a DNS query or answer of the node's DNS
    /// proxy: its flow is [`crate::dns::dns_to_flow`]'s, with an id and the node's labels
    /// as an HTTP record's has.
    pub fn capture_dns_with(
        record: &DnsRecord,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &str,
        policies: &mut RulePolicies,
    ) -> Self {
        let (common, dns, summary) = dns_parts(record);
        Self::capture_parts(common, dns, summary, store, node, ids, node_name, policies)
    }

    #[allow(clippy::too_many_arguments)]
    fn capture_parts(
        mut common: L7Common,
        l7: layer7::Record,
        summary: String,
        store: &dyn Store,
        node: &Arc<NodeNames>,
        ids: &FlowIds,
        node_name: &str,
        policies: &mut RulePolicies,
    ) -> Self {
        // A refused request carries no rule (L7 rules only allow): as `l7_flow` fills it.
        let rule = std::mem::take(&mut common.rule);
        let policy = (common.verdict == L7Verdict::Forwarded && rule != 0)
            .then(|| policies.get(rule, store))
            .flatten();
        let (unnamed, ends) = l7_flow_unnamed(&common, l7, summary, store, node_name);
        let ends = ends.map(|(addr, identity)| (side(store, Some(*addr.ip()), identity), identity));
        let policy = policy.filter(|_| allowed_by_field(&unnamed).is_some());
        Self {
            unnamed,
            uuid: ids.next(Some(SystemTime::now())),
            node: Arc::clone(node),
            ends,
            policy,
        }
    }

    /// The policy that allowed the flow and the field of `Flow` it is listed in (see
    /// [`flow`](Self::flow)): what the flow history adds to [`unnamed`](Self::unnamed)'s
    /// bytes.
    pub fn history_policy(&self) -> Option<(u32, &Policy)> {
        let p = self.policy.as_deref()?;
        Some((allowed_by_field(&self.unnamed)?, p))
    }

    /// The flow without its endpoints, node labels, id and the policy that allowed it: every
    /// field Hubble's metrics look at.
    pub fn unnamed(&self) -> &Flow {
        &self.unnamed
    }

    /// The flow's id.
    pub fn uuid(&self) -> uuid::Uuid {
        self.uuid
    }

    /// The node's labels the flow carries.
    pub fn node_labels(&self) -> &[String] {
        &self.node.labels
    }

    /// What tells the source's (or the destination's) endpoint apart without building it
    /// (see [`crate::record::Recorded::history_endpoint_key`]); `None` for a side without a
    /// pod.
    pub fn history_endpoint_key(&self, destination: bool) -> Option<(usize, u32, usize)> {
        let (side, identity) = &self.ends[usize::from(destination)];
        side_key(side, *identity, &self.node)
    }

    /// The source's (or the destination's) endpoint exactly as [`flow`](Self::flow) shows
    /// it.
    pub fn history_endpoint(&self, destination: bool) -> Endpoint {
        let (side, identity) = &self.ends[usize::from(destination)];
        side_endpoint(side, *identity, &self.node)
    }

    /// The Hubble flow as clients receive it: named, with its id, the node's labels and the
    /// cluster's name on the cluster's endpoints.
    pub fn flow(&self) -> Flow {
        let mut flow = self.unnamed.clone();
        flow.source = Some(self.history_endpoint(false));
        flow.destination = Some(self.history_endpoint(true));
        flow.node_labels.clone_from(&self.node.labels);
        flow.uuid = self.uuid.to_string();
        if let Some(p) = &self.policy {
            crate::policy_names::fill(&mut flow, true, Policy::clone(p));
        }
        flow
    }
}

#[cfg(test)]
#[path = "l7_entry_tests.rs"]
mod tests;
