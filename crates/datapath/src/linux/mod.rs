//! The kernel datapath of one node: `bpf/lxc.c` and `bpf/overlay.c` loaded with aya, maps pinned by name under
//! `<bpffs>/ciliate/<node>/`, and one TCX link per direction and pod veth pinned under
//! `<bpffs>/ciliate/<node>/links/`. Because maps and links are pinned, the kernel keeps
//! forwarding when the agent dies; a restarted agent reopens the maps and atomically swaps
//! its freshly loaded programs into the existing links, so no packet sees a gap.
//!
//! - [`loader`]: the compiled objects, bpffs, loading and socket-LB attachment;
//! - `links`: TCX links pinned per interface;
//! - `maps`, `policy`, `services`: the maps, the policy/ipcache and load-balancing syncs;
//! - `events`: the ring-buffer reader.

mod batch;
mod events;
pub mod identity_reader;
mod links;
pub mod loader;
mod maps;
mod policy;
mod services;

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::Ebpf;
use ciliate_model::api::{CtEntry, DatapathStatus, MapUsage};
use ciliate_model::bpf_policy::{
    EndpointPolicy, IpcacheEntry, PolicyEntryCounters, PolicySyncStats,
};
use ciliate_model::lb::{LbState, LbSyncStats};
use ciliate_model::monitor::MonitorEvent;
use ciliate_model::MacAddr;
use futures::future::BoxFuture;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

pub use loader::{
    attach_socket_lb, attach_socket_lb_with, cgroup2_mount, default_socket_lb_cgroup, ensure_bpffs,
    load_endpoint_programs, load_host_programs, load_overlay_program, load_socket_programs,
    ObjectLoader, HOST_OBJECT, LXC_OBJECT, OVERLAY_OBJECT, SOCK_OBJECT,
};

use crate::abi::{self, maps as map_names, NodeConfig};
use crate::netlink::Netlink;
use crate::{CtGcStats, Datapath, DatapathError, EndpointSpec};
use loader::{ENDPOINT_PROGRAMS, HOST_PROGRAMS, OVERLAY_PROGRAM};
use maps::{ifname_of, ignore_missing, info_of, ipv4_key, take_hash, take_lpm, Maps};
use policy::PolicyShadow;

/// Slots of the channel that carries named events to `ciliate monitor`'s clients. The
/// channel allocates and writes every slot when it is made, in use or not (a named event is
/// ~180 bytes: 4,096 slots were 0.75 MB of the agent's heap from its start, issue #15); the
/// reader names and sends events only while a client listens. 1,024 slots are ~25 ms of events
/// at 10,000 connections/s (about 4 each); a client further behind loses events (the agent
/// logs how many) and its stream goes on.
const MONITOR_SLOTS: usize = 1024;

/// Where and how to load the datapath of one node.
#[derive(Clone, Debug)]
pub struct LinuxConfig {
    /// Node name; pins go to `<bpffs_root>/ciliate/<node_name>/`.
    pub node_name: String,
    /// Where bpffs is mounted (normally `/sys/fs/bpf`); mounted there if missing.
    pub bpffs_root: PathBuf,
    /// The cgroup (v2) whose processes get socket-level load balancing, created if missing;
    /// `None` leaves Services to the per-packet path alone.
    pub socket_lb_cgroup: Option<PathBuf>,
}

impl LinuxConfig {
    /// A configuration with socket LB on the node's own cgroup ([`default_socket_lb_cgroup`]).
    pub fn new(node_name: &str, bpffs_root: &Path) -> Self {
        Self {
            node_name: node_name.to_owned(),
            bpffs_root: bpffs_root.to_owned(),
            socket_lb_cgroup: default_socket_lb_cgroup(node_name),
        }
    }

    /// The node's pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs_root.join("ciliate").join(&self.node_name)
    }
}

struct Inner {
    bpf: Ebpf,
    /// `bpf/overlay.c`, sharing the maps of `bpf`.
    overlay: Ebpf,
    /// `bpf/host.c` (masquerading), sharing the maps of `bpf`.
    host: Ebpf,
    /// Kept for its socket programs; their links are pinned.
    _sock: Option<Ebpf>,
    maps: Maps,
    /// What the load-balancing maps hold, so that a sync writes only differences without
    /// dumping them (read once at start).
    lb_shadow: crate::lb::LbEntries,
    /// Whether the kernel takes load-balancing writes in batches (cleared the first time it
    /// says it does not: then one `bpf()` per entry).
    lb_batch: bool,
    policy_shadow: PolicyShadow,
    /// Links whose program this process has already swapped in (or attached).
    fresh_links: HashSet<PathBuf>,
}

/// The BPF datapath of one node.
pub struct LinuxDatapath {
    pin_dir: PathBuf,
    inner: Mutex<Inner>,
    events: broadcast::Sender<MonitorEvent>,
    /// Where the event reader hands every event, once the observer has set it.
    event_sink: Arc<std::sync::OnceLock<crate::EventSink>>,
}

impl std::fmt::Debug for LinuxDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxDatapath")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

pub(super) fn kernel<E: std::error::Error + Send + Sync + 'static>(
    op: impl Into<String>,
) -> impl FnOnce(E) -> DatapathError {
    let op = op.into();
    move |e| DatapathError::kernel(op, e)
}

impl LinuxDatapath {
    /// Loads (or re-opens, after a restart) the node's datapath. Call inside a tokio runtime:
    /// it spawns the task that reads the event ring buffer.
    pub fn open(cfg: LinuxConfig) -> Result<Self, DatapathError> {
        ensure_bpffs(&cfg.bpffs_root)?;
        // Pods reach the world through the node's stack, which must route for them.
        crate::netlink::set_ipv4_forwarding(true).map_err(kernel("enable IPv4 forwarding"))?;
        let pin_dir = cfg.pin_dir();
        let reused = pin_dir.join(map_names::CT4).exists();
        // One loader for every object: it parses the kernel's BTF once and drops it (see
        // ObjectLoader), where one per object parsed it four times.
        let mut loader = ObjectLoader::new(&pin_dir)?;
        let mut bpf = loader.endpoint_programs()?;
        let overlay = loader.overlay_program()?;
        let host = loader.host_programs()?;
        std::fs::create_dir_all(pin_dir.join("links")).map_err(kernel("create links directory"))?;
        let maps = Maps {
            ct: take_hash(&mut bpf, map_names::CT4)?,
            lxc4: take_hash(&mut bpf, map_names::LXC4)?,
            lxc_ifx: take_hash(&mut bpf, map_names::LXC_IFX)?,
            lb_svc: take_hash(&mut bpf, map_names::LB4_SVC)?,
            lb_be: take_hash(&mut bpf, map_names::LB4_BE)?,
            lb_rnat: take_hash(&mut bpf, map_names::LB4_RNAT)?,
            policy: take_lpm(&mut bpf, map_names::POLICY)?,
            policy_stats: PerCpuHashMap::try_from(
                bpf.take_map(map_names::POLICY_STATS).ok_or_else(|| {
                    DatapathError::Unsupported("map cil_pol_stats missing".into())
                })?,
            )
            .map_err(kernel("open map cil_pol_stats"))?,
            ipcache: take_lpm(&mut bpf, map_names::IPCACHE4)?,
            nomasq: take_lpm(&mut bpf, map_names::NOMASQ4)?,
            node_cfg: Array::try_from(
                bpf.take_map(map_names::NODE_CFG)
                    .ok_or_else(|| DatapathError::Unsupported("map cil_node_cfg missing".into()))?,
            )
            .map_err(kernel("open map cil_node_cfg"))?,
            metrics: PerCpuArray::try_from(
                bpf.take_map(map_names::METRICS)
                    .ok_or_else(|| DatapathError::Unsupported("map cil_metrics missing".into()))?,
            )
            .map_err(kernel("open map cil_metrics"))?,
        };
        let ring = RingBuf::try_from(
            bpf.take_map(map_names::EVENTS)
                .ok_or_else(|| DatapathError::Unsupported("map cil_events missing".into()))?,
        )
        .map_err(kernel("open ring buffer cil_events"))?;
        let lb_shadow = services::read_lb_entries(&maps)?;
        let policy_shadow = policy::read_policy_shadow(&maps)?;
        let sock = match &cfg.socket_lb_cgroup {
            Some(cgroup) => Some(attach_socket_lb_with(&mut loader, &pin_dir, cgroup)?),
            None => None,
        };
        let (events, _) = broadcast::channel(MONITOR_SLOTS);
        let event_sink = Arc::default();
        events::spawn_event_reader(ring, events.clone(), Arc::clone(&event_sink))?;
        info!(
            pin_dir = %pin_dir.display(),
            reused_pins = reused,
            socket_lb = ?cfg.socket_lb_cgroup,
            "datapath loaded"
        );
        Ok(Self {
            pin_dir,
            inner: Mutex::new(Inner {
                bpf,
                overlay,
                host,
                _sock: sock,
                maps,
                lb_shadow,
                lb_batch: true,
                policy_shadow,
                fresh_links: HashSet::new(),
            }),
            events,
            event_sink,
        })
    }

    /// The node's bpffs directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The links of an endpoint as this process attaches them.
    fn expected_links(
        &self,
        inner: &Inner,
        ep: &EndpointSpec,
    ) -> Result<Vec<crate::health::ExpectedLink>, DatapathError> {
        ENDPOINT_PROGRAMS
            .iter()
            .map(|(name, at, suffix)| {
                let prog = inner
                    .bpf
                    .program(name)
                    .ok_or_else(|| DatapathError::Unsupported(format!("program {name} missing")))?;
                let info = prog
                    .info()
                    .map_err(kernel(format!("read program {name}")))?;
                Ok(crate::health::ExpectedLink {
                    pin: self.link_pin(ep.ifindex, suffix),
                    at: *at,
                    program: name,
                    program_id: info.id(),
                })
            })
            .collect()
    }

    /// Attaches `bpf/host.c` to both directions of the uplink `device` (idempotent).
    fn attach_host(
        &self,
        inner: &mut Inner,
        device: &str,
        ifindex: u32,
    ) -> Result<(), DatapathError> {
        for (prog, at, prefix) in HOST_PROGRAMS {
            let pin = self
                .pin_dir
                .join("links")
                .join(format!("{prefix}-{ifindex}"));
            links::attach_tcx(
                &mut inner.host,
                &mut inner.fresh_links,
                prog,
                device,
                at,
                &pin,
            )?;
        }
        Ok(())
    }

    fn link_pin(&self, ifindex: u32, suffix: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{ifindex}-{suffix}"))
    }

    fn remove_locked(&self, inner: &mut Inner, ep: &EndpointSpec) -> Result<(), DatapathError> {
        for (_, _, suffix) in ENDPOINT_PROGRAMS {
            let pin = self.link_pin(ep.ifindex, suffix);
            links::unpin(&pin)?;
            inner.fresh_links.remove(&pin);
        }
        // Only delete the address entry if it still points at this endpoint: a new pod
        // may already hold the address.
        if let Ok(cur) = inner.maps.lxc4.get(&ipv4_key(ep.ipv4), 0) {
            if cur.ifindex == ep.ifindex {
                ignore_missing(inner.maps.lxc4.remove(&ipv4_key(ep.ipv4)))?;
            }
        }
        ignore_missing(inner.maps.lxc_ifx.remove(&ep.ifindex))?;
        if let Some(keys) = inner.policy_shadow.keys.remove(&ep.id) {
            for (prefix, data) in keys {
                inner.maps.remove_policy_entry(prefix, data)?;
            }
        }
        inner.policy_shadow.written.remove(&ep.id);
        Ok(())
    }

    fn metrics_sum(inner: &Inner) -> (u64, u64) {
        let mut fwd = 0;
        let mut drops = 0;
        for idx in 0..abi::METRICS_SLOTS {
            if let Ok(values) = inner.maps.metrics.get(&idx, 0) {
                let total: u64 = values.iter().map(|v| v.packets).sum();
                if idx == abi::METRIC_EVENTS_LOST_SLOT || idx == abi::METRIC_TO_PROXY_SLOT {
                    continue;
                }
                if idx % 256 == 0 {
                    fwd += total;
                } else {
                    drops += total;
                }
            }
        }
        (fwd, drops)
    }
}

/// The interface of an endpoint's link pin, `<ifindex>-from` or `<ifindex>-to`; `None` for
/// any other pin under `links/`, such as the tunnel device's `<ifindex>-overlay` (taking that
/// one for a pod made every restart "remove" the tunnel device and attach it again).
fn endpoint_pin_ifindex(name: &str) -> Option<u32> {
    let (ifindex, suffix) = name.split_once('-')?;
    if ENDPOINT_PROGRAMS.iter().any(|(_, _, s)| *s == suffix) {
        ifindex.parse().ok()
    } else {
        None
    }
}

impl Datapath for LinuxDatapath {
    fn status(&self) -> DatapathStatus {
        let inner = self.lock();
        let lxc = inner.maps.lxc_ifx.keys().count() as u32;
        let ct = inner.maps.ct.keys().count() as u32;
        let (fwd, drops) = Self::metrics_sum(&inner);
        debug!(forwarded = fwd, dropped = drops, "datapath counters");
        DatapathStatus {
            loaded: true,
            kind: "bpf".into(),
            pin_dir: self.pin_dir.display().to_string(),
            programs: ENDPOINT_PROGRAMS
                .iter()
                .map(|(n, _, _)| (*n).to_owned())
                .collect(),
            maps: vec![
                MapUsage {
                    name: map_names::LXC_IFX.into(),
                    entries: lxc,
                    max_entries: abi::LXC_MAP_SIZE,
                },
                MapUsage {
                    name: map_names::CT4.into(),
                    entries: ct,
                    max_entries: abi::CT_MAP_SIZE,
                },
            ],
        }
    }

    fn upsert_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let actual = nix::net::if_::if_nametoindex(ep.ifname.as_str())
            .map_err(|e| DatapathError::kernel(format!("look up interface {}", ep.ifname), e))?;
        if actual != ep.ifindex {
            return Err(DatapathError::Unsupported(format!(
                "interface {} has index {actual}, not {} as registered: it was recreated",
                ep.ifname, ep.ifindex
            )));
        }
        let mut info = info_of(ep);
        let previous = inner.maps.lxc_ifx.get(&ep.ifindex, 0).ok();
        // Policy generation and enforcement belong to set_endpoint_policy: keep them.
        if let Some(prev) = previous {
            info.flags = prev.flags;
        }
        let result = (|| {
            inner
                .maps
                .lxc_ifx
                .insert(ep.ifindex, info, 0)
                .map_err(kernel("write cil_lxc_ifx"))?;
            inner
                .maps
                .lxc4
                .insert(ipv4_key(ep.ipv4), info, 0)
                .map_err(kernel("write cil_lxc4"))?;
            for (name, at, suffix) in ENDPOINT_PROGRAMS {
                let pin = self.link_pin(ep.ifindex, suffix);
                links::attach_tcx(
                    &mut inner.bpf,
                    &mut inner.fresh_links,
                    name,
                    &ep.ifname,
                    at,
                    &pin,
                )?;
            }
            Ok(())
        })();
        if let Err(e) = &result {
            warn!(endpoint = ep.id, error = %e, "programming endpoint failed; undoing");
            if previous.is_none() {
                if let Err(undo) = self.remove_locked(inner, ep) {
                    warn!(endpoint = ep.id, error = %undo, "undo failed");
                }
            }
        }
        result
    }

    fn remove_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        let mut guard = self.lock();
        self.remove_locked(&mut guard, ep)
    }

    fn list_endpoints(&self) -> Result<Vec<EndpointSpec>, DatapathError> {
        let inner = self.lock();
        let mut out: Vec<EndpointSpec> = Vec::new();
        for item in inner.maps.lxc_ifx.iter() {
            let (ifindex, info) = item.map_err(kernel("iterate cil_lxc_ifx"))?;
            out.push(EndpointSpec {
                id: info.ep_id,
                ifname: ifname_of(ifindex),
                ifindex,
                ipv4: Ipv4Addr::from(info.ipv4),
                mac: MacAddr(info.mac),
                host_mac: MacAddr(info.host_mac),
                identity: info.sec_identity,
            });
        }
        // Links pinned for interfaces with no map entry (a crash between the two steps)
        // are endpoints too, so that the agent removes them.
        let links = self.pin_dir.join("links");
        if let Ok(dir) = std::fs::read_dir(&links) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(ifindex) = endpoint_pin_ifindex(&name) else {
                    continue;
                };
                if !out.iter().any(|e| e.ifindex == ifindex) {
                    out.push(EndpointSpec {
                        id: 0,
                        ifname: ifname_of(ifindex),
                        ifindex,
                        ipv4: Ipv4Addr::UNSPECIFIED,
                        mac: MacAddr::default(),
                        host_mac: MacAddr::default(),
                        identity: 0,
                    });
                }
            }
        }
        Ok(out)
    }

    fn ct_entries(&self) -> Result<Vec<CtEntry>, DatapathError> {
        let inner = self.lock();
        let now = crate::events::monotonic_now().as_secs() as i64;
        let mut out = Vec::new();
        for item in inner.maps.ct.iter() {
            let (k, v) = item.map_err(kernel("iterate cil_ct4"))?;
            out.push(crate::ct::to_api(&k, &v, now));
        }
        out.sort_by_key(|e| (e.src, e.sport, e.dst, e.dport));
        Ok(out)
    }

    fn ct_gc(&self) -> Result<CtGcStats, DatapathError> {
        let mut inner = self.lock();
        let now = crate::events::monotonic_now().as_secs();
        let mut stats = CtGcStats::default();
        let mut expired = Vec::new();
        for item in inner.maps.ct.iter() {
            let Ok((k, v)) = item else { continue };
            stats.scanned += 1;
            if v.expires < now {
                expired.push(k);
            }
        }
        for k in expired {
            if ignore_missing(inner.maps.ct.remove(&k)).is_ok() {
                stats.deleted += 1;
            }
        }
        Ok(stats)
    }

    fn sync_lb(&self, desired: &LbState) -> Result<LbSyncStats, DatapathError> {
        services::sync_lb(&mut self.lock(), desired)
    }

    fn update_lb(
        &self,
        diff: &ciliate_model::lb_diff::LbDiff,
    ) -> Result<LbSyncStats, DatapathError> {
        services::update_lb(&mut self.lock(), diff)
    }

    fn lb_state(&self) -> Result<LbState, DatapathError> {
        services::lb_state(&self.lock())
    }

    fn lb_state_written(&self) -> Result<LbState, DatapathError> {
        Ok(services::lb_state_written(&self.lock()))
    }

    fn set_endpoint_policy(
        &self,
        ep: &EndpointSpec,
        policy: &EndpointPolicy,
    ) -> Result<PolicySyncStats, DatapathError> {
        policy::set_endpoint_policy(&mut self.lock(), ep, policy)
    }

    fn endpoint_policy(&self, ep: &EndpointSpec) -> Result<EndpointPolicy, DatapathError> {
        policy::endpoint_policy(&self.lock(), ep)
    }

    fn policy_counters(
        &self,
        ep: &EndpointSpec,
    ) -> Result<Vec<PolicyEntryCounters>, DatapathError> {
        policy::policy_counters(&self.lock(), ep)
    }

    fn sync_ipcache(&self, desired: &[IpcacheEntry]) -> Result<PolicySyncStats, DatapathError> {
        policy::sync_ipcache(&mut self.lock(), desired)
    }

    fn ipcache(&self) -> Result<Vec<IpcacheEntry>, DatapathError> {
        policy::ipcache(&self.lock())
    }

    fn proxy_redirects(&self) -> u64 {
        self.lock()
            .maps
            .metrics
            .get(&abi::METRIC_TO_PROXY_SLOT, 0)
            .map(|values| values.iter().map(|v| v.packets).sum())
            .unwrap_or(0)
    }

    fn events_lost(&self) -> u64 {
        self.lock()
            .maps
            .metrics
            .get(&abi::METRIC_EVENTS_LOST_SLOT, 0)
            .map(|values| values.iter().map(|v| v.packets).sum())
            .unwrap_or(0)
    }

    fn set_tunnel(&self, ifname: Option<&str>) -> Result<(), DatapathError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let ifindex = match ifname {
            Some(name) => {
                let ifindex = nix::net::if_::if_nametoindex(name).map_err(|e| {
                    DatapathError::kernel(format!("look up tunnel device {name}"), e)
                })?;
                let (prog, at, suffix) = OVERLAY_PROGRAM;
                let pin = self.link_pin(ifindex, suffix);
                links::attach_tcx(
                    &mut inner.overlay,
                    &mut inner.fresh_links,
                    prog,
                    name,
                    at,
                    &pin,
                )?;
                ifindex
            }
            None => 0,
        };
        // The masquerading half of the configuration stays as it is.
        let cfg = NodeConfig {
            tunnel_ifindex: ifindex,
            ..inner.maps.node_cfg.get(&0, 0).unwrap_or_default()
        };
        inner
            .maps
            .node_cfg
            .set(0, cfg, 0)
            .map_err(kernel("write cil_node_cfg"))?;
        info!(tunnel = ?ifname, ifindex, "overlay configured");
        Ok(())
    }

    fn check_endpoint(&self, ep: &EndpointSpec) -> Result<Vec<String>, DatapathError> {
        let inner = self.lock();
        let mut problems = Vec::new();
        for want in self.expected_links(&inner, ep)? {
            problems.extend(crate::health::check_link(&ep.ifname, &want));
        }
        match inner.maps.lxc_ifx.get(&ep.ifindex, 0) {
            Ok(i)
                if i.ep_id == ep.id
                    && i.sec_identity == ep.identity
                    && i.ipv4 == ipv4_key(ep.ipv4) => {}
            _ => problems.push(format!(
                "the endpoint map has no entry for {} (ifindex {}) or another one",
                ep.ifname, ep.ifindex
            )),
        }
        Ok(problems)
    }

    fn repair_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        {
            let mut inner = self.lock();
            // An entry written again carries no policy flags: make the next policy write
            // happen even if the policy did not change.
            if !matches!(inner.maps.lxc_ifx.get(&ep.ifindex, 0), Ok(i) if i.ep_id == ep.id) {
                inner.policy_shadow.written.remove(&ep.id);
            }
            for want in self.expected_links(&inner, ep)? {
                if crate::health::check_link(&ep.ifname, &want).is_some() {
                    inner.fresh_links.remove(&want.pin);
                    crate::health::drop_pin(&want.pin).map_err(kernel(format!(
                        "remove broken link pin {}",
                        want.pin.display()
                    )))?;
                }
            }
        }
        self.upsert_endpoint(ep)
    }

    fn endpoint_link_present(&self, ep: &EndpointSpec) -> bool {
        crate::health::link_present(&ep.ifname, ep.ifindex)
    }

    fn watch_links(
        &self,
    ) -> Result<
        Option<tokio::sync::mpsc::UnboundedReceiver<crate::link_watch::LinkEvent>>,
        DatapathError,
    > {
        crate::link_watch::watch().map(Some)
    }

    fn put_endpoint_record(&self, ifindex: u32, record: &[u8]) -> Result<(), DatapathError> {
        crate::ep_records::put(&self.pin_dir, ifindex, record)
    }

    fn remove_endpoint_record(&self, ifindex: u32) -> Result<(), DatapathError> {
        crate::ep_records::remove(&self.pin_dir, ifindex)
    }

    fn endpoint_records(&self) -> Result<Vec<(u32, Vec<u8>)>, DatapathError> {
        crate::ep_records::all(&self.pin_dir)
    }

    fn subscribe_events(&self) -> broadcast::Receiver<MonitorEvent> {
        self.events.subscribe()
    }

    fn set_event_sink(&self, sink: crate::EventSink) -> bool {
        self.event_sink.set(sink).is_ok()
    }

    fn uplink_mtu(
        &self,
        underlay: Option<Ipv4Addr>,
    ) -> BoxFuture<'_, Result<Option<u32>, DatapathError>> {
        Box::pin(async move { Ok(self.uplink(underlay).await?.and_then(|u| u.mtu)) })
    }

    fn uplink(
        &self,
        underlay: Option<Ipv4Addr>,
    ) -> BoxFuture<'_, Result<Option<crate::Uplink>, DatapathError>> {
        Box::pin(async move {
            let nl = Netlink::connect().map_err(kernel("netlink"))?;
            let addresses = nl
                .all_addresses()
                .await
                .map_err(kernel("read the node's addresses"))?;
            let routes = nl
                .routes()
                .await
                .map_err(kernel("read the node's routes"))?;
            let Some(index) = crate::uplink::uplink_index(&addresses, &routes, underlay) else {
                return Ok(None);
            };
            let links = nl.links().await.map_err(kernel("read the node's links"))?;
            let Some(link) = links.into_iter().find(|l| l.index == index) else {
                return Ok(None);
            };
            debug!(uplink = %link.name, mtu = ?link.mtu, ?underlay, "uplink");
            Ok(Some(crate::Uplink {
                name: link.name,
                mtu: link.mtu,
                addresses: addresses
                    .iter()
                    .filter(|(i, _)| *i == index)
                    .map(|(_, net)| net.addr())
                    .collect(),
            }))
        })
    }

    fn set_monitor_aggregation(
        &self,
        level: crate::MonitorAggregation,
    ) -> Result<(), DatapathError> {
        let inner = &mut *self.lock();
        let mut cfg: NodeConfig = inner.maps.node_cfg.get(&0, 0).unwrap_or_default();
        cfg.flags =
            (cfg.flags & !(abi::NODE_F_TRACE_FROM | abi::NODE_F_TRACE_EVERY)) | level.node_flags();
        inner
            .maps
            .node_cfg
            .set(0, cfg, 0)
            .map_err(kernel("write cil_node_cfg"))?;
        info!(%level, "monitor aggregation");
        Ok(())
    }

    fn set_masquerade(&self, spec: Option<&crate::MasqueradeSpec>) -> Result<(), DatapathError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut cfg: NodeConfig = inner.maps.node_cfg.get(&0, 0).unwrap_or_default();
        let Some(spec) = spec else {
            // The programs stay attached where they were and pass everything.
            cfg.flags &= !abi::NODE_F_MASQUERADE;
            return inner
                .maps
                .node_cfg
                .set(0, cfg, 0)
                .map_err(kernel("write cil_node_cfg"));
        };
        let ifindex = nix::net::if_::if_nametoindex(spec.device.as_str())
            .map_err(|e| DatapathError::kernel(format!("look up uplink {}", spec.device), e))?;
        // Exemptions first, so that no packet is masqueraded that should not be.
        let want: HashSet<(u32, [u8; 4])> = spec
            .exempt
            .iter()
            .map(|n| (u32::from(n.prefix_len()), n.network().octets()))
            .collect();
        let have: Vec<(u32, [u8; 4])> = inner
            .maps
            .nomasq
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        for (p, a) in &want {
            inner
                .maps
                .nomasq
                .insert(&LpmKey::new(*p, *a), 1, 0)
                .map_err(kernel("write cil_nomasq4"))?;
        }
        for (p, a) in have.iter().filter(|k| !want.contains(k)) {
            ignore_missing(inner.maps.nomasq.remove(&LpmKey::new(*p, *a)))?;
        }
        self.attach_host(inner, &spec.device, ifindex)?;
        cfg.flags |= abi::NODE_F_MASQUERADE;
        cfg.masq_ipv4 = spec.node_ip.octets();
        cfg.masq_ifindex = ifindex;
        inner
            .maps
            .node_cfg
            .set(0, cfg, 0)
            .map_err(kernel("write cil_node_cfg"))?;
        info!(device = %spec.device, node_ip = %spec.node_ip, exempt = spec.exempt.len(), "masquerading");
        Ok(())
    }

    fn attach_host_programs(&self, device: &str) -> Result<(), DatapathError> {
        let ifindex = nix::net::if_::if_nametoindex(device)
            .map_err(|e| DatapathError::kernel(format!("look up uplink {device}"), e))?;
        let mut guard = self.lock();
        self.attach_host(&mut guard, device, ifindex)?;
        info!(%device, "uplink programs attached");
        Ok(())
    }

    fn ensure_tunnel_device<'a>(
        &'a self,
        name: &'a str,
        port: u16,
        mtu: u32,
    ) -> BoxFuture<'a, Result<(), DatapathError>> {
        Box::pin(async move {
            let nl = Netlink::connect().map_err(kernel("netlink"))?;
            nl.ensure_vxlan(name, port, mtu)
                .await
                .map_err(kernel(format!("VXLAN device {name}")))?;
            // from_netdev takes the overlay's packets for this node's pods off the uplink
            // by this port (bpf/host.c); set_tunnel turns the overlay on.
            let inner = &mut *self.lock();
            let mut cfg: NodeConfig = inner.maps.node_cfg.get(&0, 0).unwrap_or_default();
            cfg.flags = (cfg.flags & 0xffff) | (u32::from(port) << abi::NODE_TUNNEL_PORT_SHIFT);
            inner
                .maps
                .node_cfg
                .set(0, cfg, 0)
                .map_err(kernel("write cil_node_cfg"))?;
            Ok(())
        })
    }

    fn node_addresses(&self) -> BoxFuture<'_, Result<Vec<Ipv4Addr>, DatapathError>> {
        Box::pin(async {
            let nl = Netlink::connect().map_err(kernel("netlink"))?;
            nl.ipv4_addresses()
                .await
                .map_err(kernel("read the node's addresses"))
        })
    }

    fn install_proxy_routing(&self) -> BoxFuture<'_, Result<(), DatapathError>> {
        Box::pin(async {
            let nl = Netlink::connect().map_err(kernel("netlink"))?;
            nl.install_proxy_routing()
                .await
                .map_err(kernel("install the L7 proxy's policy routing"))
        })
    }

    fn remove_proxy_routing(&self) -> BoxFuture<'_, Result<(), DatapathError>> {
        Box::pin(async {
            let nl = Netlink::connect().map_err(kernel("netlink"))?;
            nl.remove_proxy_routing()
                .await
                .map_err(kernel("remove the L7 proxy's policy routing"))
        })
    }
}

/// Removes everything a node's datapath pinned: links (detaching the programs) and maps.
/// For tear-down of a whole node (tests, the lab); the agent never calls it on its own.
pub fn purge_node_pins(cfg: &LinuxConfig) -> io::Result<()> {
    let dir = cfg.pin_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The shared `<bpffs>/ciliate` goes with the last node's pins (it fails, harmlessly,
    // while another node still has its own there).
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::endpoint_pin_ifindex;

    #[test]
    fn only_endpoint_link_pins_name_an_endpoint() {
        assert_eq!(endpoint_pin_ifindex("17-from"), Some(17));
        assert_eq!(endpoint_pin_ifindex("17-to"), Some(17));
        // The tunnel device's pin, the uplink's and anything unexpected are not pods.
        for name in [
            "5-overlay",
            "netdev-ingress-3",
            "cgroup-sock4_connect",
            "x-from",
            "17",
        ] {
            assert_eq!(endpoint_pin_ifindex(name), None, "{name}");
        }
    }
}
