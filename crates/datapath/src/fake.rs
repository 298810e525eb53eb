//! An in-memory [`Datapath`] for tests of the control plane: no root, no kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ciliate_model::api::{CtEntry, DatapathStatus};
use ciliate_model::bpf_policy::{EndpointPolicy, IpcacheEntry, PolicySyncStats};
use ciliate_model::lb::{LbState, LbSyncStats};
use ciliate_model::monitor::MonitorEvent;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

use crate::{CtGcStats, Datapath, DatapathError, EndpointSpec};

/// Keeps endpoints in a map; can be told to fail the next upsert.
#[derive(Debug)]
pub struct FakeDatapath {
    endpoints: Mutex<BTreeMap<u32, EndpointSpec>>,
    fail_next_upsert: Mutex<Option<String>>,
    lb: Mutex<LbState>,
    fail_lb_sync: Mutex<Option<String>>,
    lb_syncs: std::sync::atomic::AtomicU64,
    policies: Mutex<BTreeMap<u16, EndpointPolicy>>,
    fail_next_policy: Mutex<Option<String>>,
    ipcache: Mutex<Vec<IpcacheEntry>>,
    tunnel: Mutex<Option<String>>,
    uplink_mtu: Mutex<Option<u32>>,
    uplink_queries: Mutex<Vec<Option<Ipv4Addr>>>,
    tunnel_devices: Mutex<Vec<(String, u16, u32)>>,
    node_addresses: Mutex<Vec<Ipv4Addr>>,
    uplink: Mutex<Option<crate::Uplink>>,
    masquerade: Mutex<Option<crate::MasqueradeSpec>>,
    monitor_aggregation: Mutex<Option<crate::MonitorAggregation>>,
    host_device: Mutex<Option<String>>,
    events: broadcast::Sender<MonitorEvent>,
    records: Mutex<BTreeMap<u32, Vec<u8>>>,
    broken: Mutex<BTreeMap<u32, String>>,
    fail_repairs: Mutex<Option<String>>,
    vanished: Mutex<std::collections::BTreeSet<u32>>,
    links: Mutex<Option<tokio::sync::mpsc::UnboundedSender<crate::link_watch::LinkEvent>>>,
}

impl Default for FakeDatapath {
    fn default() -> Self {
        Self {
            endpoints: Mutex::default(),
            fail_next_upsert: Mutex::default(),
            lb: Mutex::default(),
            fail_lb_sync: Mutex::default(),
            lb_syncs: std::sync::atomic::AtomicU64::new(0),
            policies: Mutex::default(),
            fail_next_policy: Mutex::default(),
            ipcache: Mutex::default(),
            tunnel: Mutex::default(),
            uplink_mtu: Mutex::default(),
            uplink_queries: Mutex::default(),
            tunnel_devices: Mutex::default(),
            node_addresses: Mutex::default(),
            uplink: Mutex::default(),
            masquerade: Mutex::default(),
            monitor_aggregation: Mutex::default(),
            host_device: Mutex::default(),
            events: broadcast::channel(1024).0,
            records: Mutex::default(),
            broken: Mutex::default(),
            fail_repairs: Mutex::default(),
            vanished: Mutex::default(),
            links: Mutex::default(),
        }
    }
}

impl FakeDatapath {
    /// The tunnel device last set.
    pub fn tunnel(&self) -> Option<String> {
        self.tunnel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Breaks the endpoint on `ifindex` behind the agent's back: `check_endpoint` reports
    /// `why` until it is repaired.
    pub fn break_endpoint(&self, ifindex: u32, why: &str) {
        lock(&self.broken).insert(ifindex, why.to_owned());
    }

    /// Makes every `repair_endpoint` fail with this message until called with `None`.
    pub fn fail_repairs(&self, why: Option<&str>) {
        *lock(&self.fail_repairs) = why.map(str::to_owned);
    }

    /// Deletes the host veth `ifindex`: it is no longer present, and a `Removed` link event
    /// goes to the watcher, if any.
    pub fn remove_link(&self, ifindex: u32, ifname: &str) {
        lock(&self.vanished).insert(ifindex);
        if let Some(tx) = lock(&self.links).as_ref() {
            let _ = tx.send(crate::link_watch::LinkEvent::Removed {
                ifindex,
                ifname: ifname.to_owned(),
            });
        }
    }

    /// An empty fake datapath.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `upsert_endpoint` fail with this message.
    pub fn fail_next_upsert(&self, why: &str) {
        *lock(&self.fail_next_upsert) = Some(why.to_owned());
    }

    /// Makes every `sync_lb` fail with this message until called with `None`.
    pub fn fail_lb_sync(&self, why: Option<&str>) {
        *lock(&self.fail_lb_sync) = why.map(str::to_owned);
    }

    /// How many `sync_lb` calls succeeded.
    pub fn lb_syncs(&self) -> u64 {
        self.lb_syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes the next `set_endpoint_policy` fail with this message.
    pub fn fail_next_policy(&self, why: &str) {
        *lock(&self.fail_next_policy) = Some(why.to_owned());
    }

    /// The policy in force per endpoint id.
    pub fn policies(&self) -> BTreeMap<u16, EndpointPolicy> {
        lock(&self.policies).clone()
    }

    /// Publishes an event as if the datapath had reported it.
    pub fn emit(&self, ev: MonitorEvent) {
        let _ = self.events.send(ev);
    }

    /// Makes `uplink_mtu` answer `mtu` (`None`: no uplink found).
    pub fn set_uplink_mtu(&self, mtu: Option<u32>) {
        *lock(&self.uplink_mtu) = mtu;
    }

    /// The underlay addresses `uplink_mtu` was asked about, in order.
    pub fn uplink_queries(&self) -> Vec<Option<Ipv4Addr>> {
        lock(&self.uplink_queries).clone()
    }

    /// The tunnel devices `ensure_tunnel_device` was asked for: (name, UDP port, MTU).
    pub fn tunnel_devices(&self) -> Vec<(String, u16, u32)> {
        lock(&self.tunnel_devices).clone()
    }

    /// Makes `node_addresses` answer `addrs`.
    pub fn set_node_addresses(&self, addrs: Vec<Ipv4Addr>) {
        *lock(&self.node_addresses) = addrs;
    }

    /// Makes `uplink` answer `uplink`.
    pub fn set_uplink(&self, uplink: Option<crate::Uplink>) {
        *lock(&self.uplink) = uplink;
    }

    /// The device the uplink programs were last attached to by
    /// [`Datapath::attach_host_programs`].
    pub fn host_device(&self) -> Option<String> {
        lock(&self.host_device).clone()
    }

    /// The masquerading last set.
    pub fn masquerade(&self) -> Option<crate::MasqueradeSpec> {
        lock(&self.masquerade).clone()
    }

    /// The monitor aggregation level last set, if any.
    pub fn monitor_aggregation(&self) -> Option<crate::MonitorAggregation> {
        *lock(&self.monitor_aggregation)
    }

    /// The endpoints programmed, by host ifindex.
    pub fn programmed(&self) -> Vec<EndpointSpec> {
        lock(&self.endpoints).values().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock in a test must not hide the original failure.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Datapath for FakeDatapath {
    fn status(&self) -> DatapathStatus {
        DatapathStatus {
            loaded: true,
            kind: "fake".into(),
            pin_dir: String::new(),
            programs: vec!["from-container".into(), "to-container".into()],
            maps: vec![],
        }
    }

    fn upsert_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        if let Some(why) = lock(&self.fail_next_upsert).take() {
            return Err(DatapathError::Injected(why));
        }
        lock(&self.endpoints).insert(ep.ifindex, ep.clone());
        Ok(())
    }

    fn remove_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        // As the kernel datapath does: the endpoint's policy goes with it.
        if lock(&self.endpoints).remove(&ep.ifindex).is_some() {
            lock(&self.policies).remove(&ep.id);
        }
        Ok(())
    }

    fn list_endpoints(&self) -> Result<Vec<EndpointSpec>, DatapathError> {
        Ok(self.programmed())
    }

    fn ct_entries(&self) -> Result<Vec<CtEntry>, DatapathError> {
        Ok(vec![])
    }

    fn ct_gc(&self) -> Result<CtGcStats, DatapathError> {
        Ok(CtGcStats::default())
    }

    fn sync_lb(&self, desired: &LbState) -> Result<LbSyncStats, DatapathError> {
        if let Some(why) = lock(&self.fail_lb_sync).clone() {
            return Err(DatapathError::Injected(why));
        }
        self.lb_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut lb = lock(&self.lb);
        let changed = *lb != *desired;
        *lb = desired.clone();
        Ok(LbSyncStats {
            written: u64::from(changed),
            deleted: 0,
        })
    }

    fn update_lb(
        &self,
        diff: &ciliate_model::lb_diff::LbDiff,
    ) -> Result<LbSyncStats, DatapathError> {
        if let Some(why) = lock(&self.fail_lb_sync).clone() {
            return Err(DatapathError::Injected(why));
        }
        self.lb_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut lb = lock(&self.lb);
        *lb = diff.apply(&lb);
        Ok(LbSyncStats {
            written: (diff.len() - diff.frontends_removed.len() - diff.backends_removed.len())
                as u64,
            deleted: (diff.frontends_removed.len() + diff.backends_removed.len()) as u64,
        })
    }

    fn lb_state(&self) -> Result<LbState, DatapathError> {
        Ok(lock(&self.lb).clone())
    }

    fn set_endpoint_policy(
        &self,
        ep: &EndpointSpec,
        policy: &EndpointPolicy,
    ) -> Result<PolicySyncStats, DatapathError> {
        if let Some(why) = lock(&self.fail_next_policy).take() {
            return Err(DatapathError::Injected(why));
        }
        // As the kernel datapath does: policy belongs to a programmed endpoint.
        if !lock(&self.endpoints).values().any(|e| e.id == ep.id) {
            return Err(DatapathError::Unsupported(format!(
                "endpoint {} is not programmed",
                ep.id
            )));
        }
        let mut all = lock(&self.policies);
        let changed = all.get(&ep.id) != Some(policy);
        all.insert(ep.id, policy.clone());
        Ok(PolicySyncStats {
            written: if changed {
                policy.entries.len() as u64 + 1
            } else {
                0
            },
            deleted: 0,
        })
    }

    fn endpoint_policy(&self, ep: &EndpointSpec) -> Result<EndpointPolicy, DatapathError> {
        Ok(lock(&self.policies)
            .get(&ep.id)
            .cloned()
            .unwrap_or_default())
    }

    fn sync_ipcache(&self, desired: &[IpcacheEntry]) -> Result<PolicySyncStats, DatapathError> {
        let mut cur = lock(&self.ipcache);
        let changed = *cur != desired;
        *cur = desired.to_vec();
        Ok(PolicySyncStats {
            written: u64::from(changed),
            deleted: 0,
        })
    }

    fn ipcache(&self) -> Result<Vec<IpcacheEntry>, DatapathError> {
        Ok(lock(&self.ipcache).clone())
    }

    fn subscribe_events(&self) -> broadcast::Receiver<MonitorEvent> {
        self.events.subscribe()
    }

    fn check_endpoint(&self, ep: &EndpointSpec) -> Result<Vec<String>, DatapathError> {
        Ok(lock(&self.broken)
            .get(&ep.ifindex)
            .cloned()
            .into_iter()
            .collect())
    }

    fn repair_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        if let Some(why) = lock(&self.fail_repairs).clone() {
            return Err(DatapathError::Injected(why));
        }
        lock(&self.broken).remove(&ep.ifindex);
        self.upsert_endpoint(ep)
    }

    fn endpoint_link_present(&self, ep: &EndpointSpec) -> bool {
        !lock(&self.vanished).contains(&ep.ifindex)
    }

    fn watch_links(
        &self,
    ) -> Result<
        Option<tokio::sync::mpsc::UnboundedReceiver<crate::link_watch::LinkEvent>>,
        DatapathError,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.links) = Some(tx);
        Ok(Some(rx))
    }

    fn put_endpoint_record(&self, ifindex: u32, record: &[u8]) -> Result<(), DatapathError> {
        if record.len() > crate::ep_records::MAX_RECORD {
            return Err(DatapathError::Unsupported(format!(
                "endpoint record for ifindex {ifindex} is too large ({} bytes)",
                record.len()
            )));
        }
        lock(&self.records).insert(ifindex, record.to_vec());
        Ok(())
    }

    fn remove_endpoint_record(&self, ifindex: u32) -> Result<(), DatapathError> {
        lock(&self.records).remove(&ifindex);
        Ok(())
    }

    fn endpoint_records(&self) -> Result<Vec<(u32, Vec<u8>)>, DatapathError> {
        Ok(lock(&self.records)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    fn set_tunnel(&self, ifname: Option<&str>) -> Result<(), DatapathError> {
        *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = ifname.map(str::to_owned);
        Ok(())
    }

    fn uplink_mtu(
        &self,
        underlay: Option<Ipv4Addr>,
    ) -> BoxFuture<'_, Result<Option<u32>, DatapathError>> {
        lock(&self.uplink_queries).push(underlay);
        let mtu = *lock(&self.uplink_mtu);
        Box::pin(async move { Ok(mtu) })
    }

    fn ensure_tunnel_device<'a>(
        &'a self,
        name: &'a str,
        port: u16,
        mtu: u32,
    ) -> BoxFuture<'a, Result<(), DatapathError>> {
        let mut devices = lock(&self.tunnel_devices);
        devices.retain(|(n, _, _)| n != name);
        devices.push((name.to_owned(), port, mtu));
        Box::pin(async { Ok(()) })
    }

    fn node_addresses(&self) -> BoxFuture<'_, Result<Vec<Ipv4Addr>, DatapathError>> {
        let addrs = lock(&self.node_addresses).clone();
        Box::pin(async move { Ok(addrs) })
    }

    fn uplink(
        &self,
        underlay: Option<Ipv4Addr>,
    ) -> BoxFuture<'_, Result<Option<crate::Uplink>, DatapathError>> {
        lock(&self.uplink_queries).push(underlay);
        let uplink = lock(&self.uplink).clone();
        Box::pin(async move { Ok(uplink) })
    }

    fn set_monitor_aggregation(
        &self,
        level: crate::MonitorAggregation,
    ) -> Result<(), DatapathError> {
        *lock(&self.monitor_aggregation) = Some(level);
        Ok(())
    }

    fn set_masquerade(&self, spec: Option<&crate::MasqueradeSpec>) -> Result<(), DatapathError> {
        *lock(&self.masquerade) = spec.cloned();
        Ok(())
    }

    fn attach_host_programs(&self, device: &str) -> Result<(), DatapathError> {
        *lock(&self.host_device) = Some(device.to_owned());
        Ok(())
    }
}
