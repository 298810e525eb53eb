//! What the observer asks the agent to turn numbers into names.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::proto::flow::Policy;

/// An endpoint as a flow shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Node-local endpoint id.
    pub id: u32,
    /// Security identity.
    pub identity: u32,
    /// Pod namespace ("" when the runtime did not name the pod).
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Labels as `source:key=value`, e.g. `k8s:app=web`.
    pub labels: Vec<String>,
}

/// A Service, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The agent's tables as the observer reads them. Lookups happen for every event, so an
/// implementation should answer from memory without taking long locks.
pub trait Store: Send + Sync + 'static {
    /// The local endpoint holding `ip`: shared, because the observer keeps it with every
    /// event (as it was then) instead of a copy of its names.
    fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<Arc<EndpointInfo>>;
    /// The labels of a security identity (reserved ones included), as `source:key=value`.
    fn identity_labels(&self, identity: u32) -> Option<Vec<String>>;
    /// The Service whose frontend is `ip:port` for IP protocol `proto`.
    fn service_by_frontend(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<ServiceRef>;
    /// The Service owning the frontend with reverse-NAT index `index`: what the datapath
    /// reports for a connection it translated to a backend.
    fn service_by_rev_nat(&self, index: u16) -> Option<ServiceRef>;
    /// The policy holding the rule the datapath numbers `rule` (policy map entries and
    /// verdict events carry the number), as Hubble names policies in flows. A store that
    /// knows no rules names none.
    fn policy_by_rule(&self, _rule: u32) -> Option<Policy> {
        None
    }
    /// The name of the node's interface with index `ifindex` (a pod's host-side veth), when
    /// known: flows name the interface they were seen on.
    fn interface_name(&self, _ifindex: u32) -> Option<Arc<str>> {
        None
    }
    /// This node's labels as `key=value` (Hubble's `Flow.node_labels`, what the
    /// `node_labels` filter selects on); none when the node has none or they are unknown.
    fn node_labels(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A point-in-time copy of the tables: what the agent refreshes and tests build by hand.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Endpoints by address.
    pub endpoints: HashMap<Ipv4Addr, Arc<EndpointInfo>>,
    /// Labels by identity.
    pub identities: HashMap<u32, Vec<String>>,
    /// Services by frontend (address, port, IP protocol).
    pub frontends: HashMap<(Ipv4Addr, u16, u8), ServiceRef>,
    /// Services by the reverse-NAT index of their frontends.
    pub rev_nats: HashMap<u16, ServiceRef>,
    /// Policies by the numbers of their rules (see
    /// [`policy_names::policy`](crate::policy_names::policy) for how to build one).
    pub rules: HashMap<u32, Policy>,
    /// The node's interface names by index.
    pub interfaces: HashMap<u32, Arc<str>>,
    /// The node's labels, `key=value`.
    pub node_labels: Vec<String>,
}

impl Store for Snapshot {
    fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<Arc<EndpointInfo>> {
        self.endpoints.get(&ip).cloned()
    }

    fn identity_labels(&self, identity: u32) -> Option<Vec<String>> {
        self.identities.get(&identity).cloned()
    }

    fn service_by_frontend(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<ServiceRef> {
        self.frontends.get(&(ip, port, proto)).cloned()
    }

    fn service_by_rev_nat(&self, index: u16) -> Option<ServiceRef> {
        self.rev_nats.get(&index).cloned()
    }

    fn policy_by_rule(&self, rule: u32) -> Option<Policy> {
        self.rules.get(&rule).cloned()
    }

    fn interface_name(&self, ifindex: u32) -> Option<Arc<str>> {
        self.interfaces.get(&ifindex).cloned()
    }

    fn node_labels(&self) -> Vec<String> {
        self.node_labels.clone()
    }
}

/// A [`Store`] whose snapshot is swapped as a whole: readers never wait for a writer longer
/// than a pointer copy.
#[derive(Debug, Default)]
pub struct SwappableStore {
    current: std::sync::RwLock<std::sync::Arc<Snapshot>>,
}

impl SwappableStore {
    /// Puts a new snapshot in force.
    pub fn replace(&self, snapshot: Snapshot) {
        let snapshot = std::sync::Arc::new(snapshot);
        match self.current.write() {
            Ok(mut g) => *g = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    fn get(&self) -> std::sync::Arc<Snapshot> {
        match self.current.read() {
            Ok(g) => std::sync::Arc::clone(&g),
            Err(poisoned) => std::sync::Arc::clone(&poisoned.into_inner()),
        }
    }
}

impl Store for SwappableStore {
    fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<Arc<EndpointInfo>> {
        self.get().endpoint_by_ip(ip)
    }

    fn identity_labels(&self, identity: u32) -> Option<Vec<String>> {
        self.get().identity_labels(identity)
    }

    fn service_by_frontend(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<ServiceRef> {
        self.get().service_by_frontend(ip, port, proto)
    }

    fn service_by_rev_nat(&self, index: u16) -> Option<ServiceRef> {
        self.get().service_by_rev_nat(index)
    }

    fn policy_by_rule(&self, rule: u32) -> Option<Policy> {
        self.get().policy_by_rule(rule)
    }

    fn interface_name(&self, ifindex: u32) -> Option<Arc<str>> {
        self.get().interface_name(ifindex)
    }

    fn node_labels(&self) -> Vec<String> {
        self.get().node_labels()
    }
}
