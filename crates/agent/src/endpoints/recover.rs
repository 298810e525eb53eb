//! Rebuilding the endpoint table from the datapath when the state file is gone.
//!
//! The kernel still holds what matters while pods run: per host veth the endpoint id, address,
//! identity and MACs (the endpoint map), the attached links, and the record the agent wrote
//! beside them when it created the endpoint (container id, interface, labels; see
//! [`ciliate_datapath::ep_records`]). From these the agent rebuilds a state as it would have
//! persisted it, so that no live pod is detached and no live address handed out again.
//!
//! An endpoint without a usable record (made by an agent that wrote none) is still kept, with
//! its address, identity number and the policy its maps hold, but it is marked not ready with
//! the reason: its container id is unknown, so no CNI DEL will name it (its veth going away
//! does, see the link watch), and its labels are only known when another endpoint's record
//! has the same identity.

use std::collections::BTreeMap;

use ciliate_datapath::EndpointSpec;
use ciliate_model::{Endpoint, EndpointState, Label, Labels, NumericIdentity};
use ipnet::Ipv4Net;

use ciliate_model::identity::{MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY};

use crate::identity::{IdentitySnapshot, PersistedIdentity};
use crate::ipam::IpamSnapshot;
use crate::state::{PersistedState, STATE_VERSION};

/// Label source of the placeholder label set of an identity whose labels were lost.
pub const UNRECOVERED_SOURCE: &str = "unrecovered";

/// What [`rebuild`] found.
#[derive(Debug)]
pub struct Rebuilt {
    /// The state to start from.
    pub state: PersistedState,
    /// Endpoints rebuilt from their records.
    pub complete: usize,
    /// Endpoints kept without a record (not ready; listed in the status).
    pub partial: usize,
    /// What the datapath holds that could not be taken over (it is removed as unknown).
    pub skipped: Vec<String>,
}

/// The container id given to an endpoint whose record is missing.
pub fn unrecovered_container(ifindex: u32) -> String {
    format!("unrecovered-ifindex-{ifindex}")
}

/// Whether the endpoint was recovered without its record (see [`unrecovered_container`]).
pub fn is_unrecovered(ep: &Endpoint) -> bool {
    ep.container_id == unrecovered_container(ep.host_ifindex)
}

/// Rebuilds the state of node `node` (pod CIDR `cidr`) from the endpoints the datapath holds
/// and the records stored beside them.
pub fn rebuild(
    node: &str,
    cidr: Ipv4Net,
    held: &[EndpointSpec],
    records: &[(u32, Vec<u8>)],
    now_unix: u64,
) -> Rebuilt {
    let by_ifindex: BTreeMap<u32, Endpoint> = records
        .iter()
        .filter_map(|(ifindex, bytes)| {
            serde_json::from_slice::<Endpoint>(bytes)
                .ok()
                .map(|e| (*ifindex, e))
        })
        .collect();
    let mut skipped = Vec::new();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut complete = 0;
    for spec in held {
        let usable = spec.id != 0
            && cidr.contains(&spec.ipv4)
            && (MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).contains(&spec.identity)
            && !endpoints
                .iter()
                .any(|e| e.id == spec.id || e.ipv4 == spec.ipv4);
        if !usable {
            skipped.push(format!(
                "host interface {} (ifindex {}): endpoint id {}, address {}, identity {} cannot be an endpoint of pod CIDR {cidr}",
                spec.ifname, spec.ifindex, spec.id, spec.ipv4, spec.identity
            ));
            continue;
        }
        let record = by_ifindex.get(&spec.ifindex).filter(|r| {
            r.id == spec.id
                && r.ipv4 == spec.ipv4
                && r.identity == spec.identity
                && r.host_ifindex == spec.ifindex
        });
        let ep = match record {
            Some(r) => {
                complete += 1;
                Endpoint {
                    host_ifname: spec.ifname.clone(),
                    state: EndpointState::Ready,
                    status_message: None,
                    ..r.clone()
                }
            }
            None => Endpoint {
                id: spec.id,
                container_id: unrecovered_container(spec.ifindex),
                ifname: String::new(),
                netns: String::new(),
                pod: None,
                labels: Labels::new(),
                named_ports: Vec::new(),
                identity: spec.identity,
                ipv4: spec.ipv4,
                mac: spec.mac,
                host_ifname: spec.ifname.clone(),
                host_ifindex: spec.ifindex,
                host_mac: spec.host_mac,
                state: EndpointState::NotReady,
                status_message: None,
                created_unix: now_unix,
            },
        };
        endpoints.push(ep);
    }
    // An identity's labels are one per node: a partial endpoint learns them from any complete
    // one with its number; otherwise it gets a placeholder set naming the number.
    let mut labels_of: BTreeMap<NumericIdentity, Labels> = BTreeMap::new();
    for e in endpoints.iter().filter(|e| e.state == EndpointState::Ready) {
        labels_of
            .entry(e.identity)
            .or_insert_with(|| e.labels.clone());
    }
    let mut partial = 0;
    for e in endpoints
        .iter_mut()
        .filter(|e| e.state != EndpointState::Ready)
    {
        partial += 1;
        let known = labels_of.get(&e.identity).cloned();
        let labels_note = if known.is_some() {
            "its labels come from another endpoint with identity"
        } else {
            "its labels are unknown; it keeps identity"
        };
        e.labels = known.unwrap_or_else(|| {
            [Label::new(
                UNRECOVERED_SOURCE,
                "identity",
                &e.identity.to_string(),
            )]
            .into_iter()
            .collect()
        });
        labels_of
            .entry(e.identity)
            .or_insert_with(|| e.labels.clone());
        e.status_message = Some(format!(
            "recovered from the datapath without its record after the state file was lost: \
             container id and interface unknown, {labels_note} {} and the policy its maps hold; \
             it is removed when its veth goes away, or recreate the pod",
            e.identity
        ));
    }
    let mut refs: BTreeMap<NumericIdentity, u32> = BTreeMap::new();
    for e in &endpoints {
        *refs.entry(e.identity).or_default() += 1;
    }
    let identities = IdentitySnapshot {
        identities: refs
            .iter()
            .map(|(id, references)| PersistedIdentity {
                id: *id,
                labels: labels_of[id].clone(),
                references: *references,
            })
            .collect(),
        cursor: None,
    };
    let ipam = IpamSnapshot {
        allocations: endpoints
            .iter()
            .map(|e| (e.ipv4, e.container_id.clone()))
            .collect(),
        cursor: None,
    };
    Rebuilt {
        state: PersistedState {
            version: STATE_VERSION,
            node_name: node.to_owned(),
            pod_cidr: cidr,
            endpoints,
            identities,
            ipam,
        },
        complete,
        partial,
        skipped,
    }
}
