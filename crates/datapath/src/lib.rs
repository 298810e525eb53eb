//! The datapath: the only crate that talks to the kernel.
//!
//! [`Datapath`] is what the agent programs. [`LinuxDatapath`](linux::LinuxDatapath) loads the
//! BPF programs under `bpf/` with aya, pins them and their maps under one bpffs directory per
//! node and attaches them with TCX to pod veths; [`FakeDatapath`](fake::FakeDatapath) keeps the
//! same state in memory so the control plane can be tested without root.
//!
//! Netlink helpers (veth pairs, addresses, routes, neighbours, entering a network namespace)
//! live in [`netlink`] and [`netns`]; the CNI plugin uses them.

pub mod abi;
pub mod ct;
pub mod ep_records;
mod error;
pub mod events;
pub mod fake;
pub mod health;
pub mod lb;
pub mod link_watch;
pub mod linux;
pub mod lock;
pub mod monitor_aggregation;
pub mod netlink;
pub mod netns;
pub mod policy_map;
pub mod proxy_mark;
pub mod uplink;

use std::net::Ipv4Addr;

use ciliate_model::api::{CtEntry, DatapathStatus};
use ciliate_model::bpf_policy::{
    EndpointPolicy, IpcacheEntry, PolicyEntryCounters, PolicySyncStats,
};
use ciliate_model::lb::{LbState, LbSyncStats};
use ciliate_model::monitor::{EventRecord, MonitorEvent};
use ciliate_model::MacAddr;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

pub use fake::FakeDatapath;
pub use monitor_aggregation::MonitorAggregation;

/// Where a datapath hands its events as it reads them, in batches, as numbers (no names, no
/// allocation per event): the observer's intake. The sink takes what it keeps out of the Vec
/// (the datapath reuses it).
pub type EventSink = std::sync::Arc<dyn Fn(&mut Vec<EventRecord>) + Send + Sync>;

/// What the datapath needs to know of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Node-local endpoint id.
    pub id: u16,
    /// Host-side veth name (in the node's network namespace).
    pub ifname: String,
    /// Host-side veth interface index.
    pub ifindex: u32,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The pod interface's MAC.
    pub mac: MacAddr,
    /// The host-side veth's MAC.
    pub host_mac: MacAddr,
    /// Security identity of the endpoint.
    pub identity: u32,
}

/// Masquerading of pods' traffic to the world (see `bpf/host.c`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqueradeSpec {
    /// The uplink device the programs attach to.
    pub device: String,
    /// The node address pods' traffic leaves as (one of the device's).
    pub node_ip: Ipv4Addr,
    /// Destinations never masqueraded, besides the cluster's pods and nodes (the ipcache).
    pub exempt: Vec<ipnet::Ipv4Net>,
}

/// The node's uplink as the datapath found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Interface name.
    pub name: String,
    /// Its MTU, if the kernel reported one.
    pub mtu: Option<u32>,
    /// Its IPv4 addresses.
    pub addresses: Vec<Ipv4Addr>,
}

/// What one conntrack garbage-collection pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtGcStats {
    /// Entries looked at.
    pub scanned: u64,
    /// Expired entries deleted.
    pub deleted: u64,
}

/// Errors of the datapath, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A BPF or netlink operation failed.
    #[error("{op}: {source}")]
    Kernel {
        /// What was being done, e.g. "attach from-container to lxc1234".
        op: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The environment cannot run the datapath (no bpffs, not root, kernel too old).
    #[error("{0}")]
    Unsupported(String),
    /// What the operation names does not exist (an interface gone, an endpoint never
    /// programmed, a pinned object removed): retrying will not help until it is made.
    #[error("{op}: not found: {source}")]
    NotFound {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The kernel refused for now (resource busy, a map full): a later retry can succeed.
    #[error("{op}: busy: {source}")]
    Busy {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An injected failure (tests only).
    #[error("injected failure: {0}")]
    Injected(String),
}

impl DatapathError {
    /// Wraps an error with the operation it interrupted, as [`DatapathError::NotFound`],
    /// [`DatapathError::Busy`] or [`DatapathError::Unsupported`] when its errno says so,
    /// else [`DatapathError::Kernel`].
    pub fn kernel(
        op: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        error::classify(op.into(), Box::new(source))
    }
}

/// The datapath as the agent sees it. Every method is idempotent: calling it again with the
/// same input changes nothing, which is what makes restarts and retries safe.
pub trait Datapath: Send + Sync + 'static {
    /// What is loaded and how full the maps are.
    fn status(&self) -> DatapathStatus;

    /// Programs an endpoint: attaches the programs to its host veth unless they already are,
    /// and writes its map entries. Leaves nothing behind when it fails.
    fn upsert_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError>;

    /// Undoes [`Datapath::upsert_endpoint`]: map entries, links and pins. An endpoint the
    /// datapath does not know is not an error.
    fn remove_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError>;

    /// The endpoints the datapath holds now (from its maps and pins), so that a restarted
    /// agent can compare them with what it persisted.
    fn list_endpoints(&self) -> Result<Vec<EndpointSpec>, DatapathError>;

    /// The connection-tracking table.
    fn ct_entries(&self) -> Result<Vec<CtEntry>, DatapathError>;

    /// Deletes expired conntrack entries.
    fn ct_gc(&self) -> Result<CtGcStats, DatapathError>;

    /// Makes the load-balancing maps hold exactly `desired`, writing only what differs, in an
    /// order where no packet sees a frontend pointing at a missing backend.
    fn sync_lb(&self, desired: &LbState) -> Result<LbSyncStats, DatapathError>;

    /// The load-balancing state the maps hold now (`ciliate bpf lb list`).
    /// Writes what `diff` changes in the load-balancing maps and nothing else: a change
    /// costs what it changes, whatever the number of Services. `diff` must be relative to
    /// what the datapath holds (the agent's [`sync_lb`](Datapath::sync_lb) at start, then
    /// every diff in order).
    fn update_lb(
        &self,
        diff: &ciliate_model::lb_diff::LbDiff,
    ) -> Result<LbSyncStats, DatapathError>;

    fn lb_state(&self) -> Result<LbState, DatapathError>;

    /// The load-balancing state as the datapath last wrote it, or read it when opened:
    /// [`lb_state`](Datapath::lb_state) without reading the maps again (the agent seeds its
    /// ids from it at start, where reading 10,000 Services' entries back cost ~0.1 s).
    fn lb_state_written(&self) -> Result<LbState, DatapathError> {
        self.lb_state()
    }

    /// Replaces the policy of an endpoint as one step: packets are judged by the old policy
    /// or the new one, never a mix. Writes nothing when it is already in force.
    fn set_endpoint_policy(
        &self,
        ep: &EndpointSpec,
        policy: &EndpointPolicy,
    ) -> Result<PolicySyncStats, DatapathError>;

    /// The policy in force for an endpoint, read from the maps (`ciliate bpf policy get`).
    fn endpoint_policy(&self, ep: &EndpointSpec) -> Result<EndpointPolicy, DatapathError>;

    /// What each entry of the policy in force for an endpoint admitted (packets and bytes,
    /// counted on allow hits), for `ciliate bpf policy get`. A datapath that does not count
    /// answers no entries.
    fn policy_counters(
        &self,
        _ep: &EndpointSpec,
    ) -> Result<Vec<PolicyEntryCounters>, DatapathError> {
        Ok(Vec::new())
    }

    /// Makes the ipcache hold exactly `desired` (prefix → identity), writing only differences.
    fn sync_ipcache(&self, desired: &[IpcacheEntry]) -> Result<PolicySyncStats, DatapathError>;

    /// The ipcache as the maps hold it.
    fn ipcache(&self) -> Result<Vec<IpcacheEntry>, DatapathError>;

    /// A receiver of datapath events (trace and drop), decoded.
    fn subscribe_events(&self) -> broadcast::Receiver<MonitorEvent>;

    /// Hands every event from now on to `sink` too (once: a second sink is refused). Events
    /// are named only for [`subscribe_events`](Self::subscribe_events)'s receivers, when
    /// there are any. `false`: this datapath has no sink; read `subscribe_events` instead.
    fn set_event_sink(&self, _sink: EventSink) -> bool {
        false
    }

    /// Events the programs could not report since the maps were made, because the ring
    /// buffer was full (a slow reader, or a flood). Only grows.
    fn events_lost(&self) -> u64 {
        0
    }

    /// Sends traffic for pods of other nodes through the VXLAN device `ifname` (collect_md
    /// mode, made by the caller) and receives theirs from it; `None` turns the overlay off.
    /// Idempotent; after a restart the device's program is swapped in without a gap. A
    /// datapath without an overlay accepts only `None`.
    fn set_tunnel(&self, ifname: Option<&str>) -> Result<(), DatapathError> {
        match ifname {
            None => Ok(()),
            Some(name) => Err(DatapathError::Unsupported(format!(
                "this datapath has no overlay (tunnel device {name})"
            ))),
        }
    }

    /// Stores an opaque record of the endpoint on host ifindex `ifindex` where it outlives the
    /// agent and its state directory (the node's pins), so that a lost state file can be rebuilt
    /// from the datapath. Replaces an earlier record of that ifindex.
    fn put_endpoint_record(&self, _ifindex: u32, _record: &[u8]) -> Result<(), DatapathError> {
        Ok(())
    }

    /// Drops the record of `ifindex`; a missing one is not an error.
    fn remove_endpoint_record(&self, _ifindex: u32) -> Result<(), DatapathError> {
        Ok(())
    }

    /// Every endpoint record, by host ifindex.
    fn endpoint_records(&self) -> Result<Vec<(u32, Vec<u8>)>, DatapathError> {
        Ok(Vec::new())
    }

    /// The MTU of the node's uplink: the interface holding `underlay` (the node's address
    /// towards other nodes) when given, else the one the default route leaves by; `None`
    /// when there is none. Pod interfaces follow it unless the MTU is configured.
    fn uplink_mtu(
        &self,
        _underlay: Option<Ipv4Addr>,
    ) -> BoxFuture<'_, Result<Option<u32>, DatapathError>> {
        Box::pin(async { Ok(None) })
    }

    /// Makes sure the VXLAN device `name` exists in collect_md mode on UDP `port`, with
    /// `mtu`, and is up (reused as it is after a restart). Idempotent.
    fn ensure_tunnel_device<'a>(
        &'a self,
        name: &'a str,
        _port: u16,
        _mtu: u32,
    ) -> BoxFuture<'a, Result<(), DatapathError>> {
        Box::pin(async move {
            Err(DatapathError::Unsupported(format!(
                "this datapath makes no tunnel device ({name})"
            )))
        })
    }

    /// The IPv4 addresses of the node's interfaces (the `host` identity for policy).
    fn node_addresses(&self) -> BoxFuture<'_, Result<Vec<Ipv4Addr>, DatapathError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Packets the datapath has handed to the L7 proxy's sockets since the node's maps were
    /// made (both directions, all connections): what detours through the proxy.
    fn proxy_redirects(&self) -> u64 {
        0
    }

    /// Installs the L7 proxy's policy routing in the node's namespace: packets the datapath
    /// hands to a proxy socket (to-proxy mark) are delivered locally whatever their
    /// destination ([`netlink::Netlink::install_proxy_routing`]). Idempotent. The fake has
    /// nothing to route.
    fn install_proxy_routing(&self) -> BoxFuture<'_, Result<(), DatapathError>> {
        Box::pin(async { Ok(()) })
    }

    /// Removes what [`Datapath::install_proxy_routing`] installed (node teardown).
    fn remove_proxy_routing(&self) -> BoxFuture<'_, Result<(), DatapathError>> {
        Box::pin(async { Ok(()) })
    }

    /// The node's uplink (as [`Datapath::uplink_mtu`] finds it), with its name and addresses.
    fn uplink(
        &self,
        _underlay: Option<Ipv4Addr>,
    ) -> BoxFuture<'_, Result<Option<Uplink>, DatapathError>> {
        Box::pin(async { Ok(None) })
    }

    /// Masquerades pods' traffic to the world as `spec` says, or stops (`None`). Idempotent.
    fn set_masquerade(&self, spec: Option<&MasqueradeSpec>) -> Result<(), DatapathError> {
        match spec {
            None => Ok(()),
            Some(s) => Err(DatapathError::Unsupported(format!(
                "this datapath cannot masquerade (device {})",
                s.device
            ))),
        }
    }

    /// Reports trace events at monitor aggregation `level` from now on. A datapath without
    /// events ignores it.
    fn set_monitor_aggregation(&self, _level: MonitorAggregation) -> Result<(), DatapathError> {
        Ok(())
    }

    /// What is wrong with the endpoint's programming in the kernel (links unpinned, detached or
    /// running another program; its map entry gone or different); empty when it is as
    /// attached. A datapath without kernel state answers empty.
    fn check_endpoint(&self, _ep: &EndpointSpec) -> Result<Vec<String>, DatapathError> {
        Ok(Vec::new())
    }

    /// Puts back what [`Datapath::check_endpoint`] finds broken: broken links are dropped and
    /// attached again, the map entries written again. Healthy directions are left alone.
    fn repair_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        self.upsert_endpoint(ep)
    }

    /// Whether the endpoint's host veth still exists (same name, same index).
    fn endpoint_link_present(&self, _ep: &EndpointSpec) -> bool {
        true
    }

    /// Link events of the node's namespace as they happen ([`link_watch`]); `None` from a
    /// datapath that has no kernel links. Call inside a tokio runtime.
    fn watch_links(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<link_watch::LinkEvent>>, DatapathError>
    {
        Ok(None)
    }

    /// Attaches the uplink programs (`bpf/host.c`) to `device` without masquerading, so that
    /// the node's own traffic to other nodes' pods still goes through the overlay as the
    /// host. [`Datapath::set_masquerade`] attaches them too. Idempotent; a datapath without
    /// them does nothing.
    fn attach_host_programs(&self, _device: &str) -> Result<(), DatapathError> {
        Ok(())
    }
}
