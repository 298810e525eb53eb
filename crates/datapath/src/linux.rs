//! The kernel datapath of one node: `bpf/lxc.c` loaded with aya, maps pinned by name under
//! `<bpffs>/ciliate/<node>/`, and one TCX link per direction and pod veth pinned under
//! `<bpffs>/ciliate/<node>/links/`. Because maps and links are pinned, the kernel keeps
//! forwarding when the agent dies; a restarted agent reopens the maps and atomically swaps
//! its freshly loaded programs into the existing links, so no packet sees a gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, CgroupSockAddrAttachType, LinkOrder, SchedClassifier,
    TcAttachType,
};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use ciliate_model::api::{CtEntry, DatapathStatus, MapUsage};
use ciliate_model::lb::{LbState, LbSyncStats};
use ciliate_model::monitor::MonitorEvent;
use ciliate_model::MacAddr;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::abi::{
    self, maps, CtEntry4, CtKey4, EndpointInfo, IpcacheValue, Lb4Backend, Lb4Key, Lb4ReverseNat,
    Lb4Service, MetricsValue, NodeConfig, PolicyKeyData, PolicyValue, EP_F_EGRESS_ENFORCED,
    EP_F_INGRESS_ENFORCED, EP_F_POLICY_V1, POLICY_F_DENY,
};
use crate::events::{self, Clock};
use crate::lb::{self as lbmaps, LbEntries, LbOp};
use crate::policy_map;
use crate::{CtGcStats, Datapath, DatapathError, EndpointSpec};
use ciliate_model::bpf_policy::{
    EndpointPolicy, IpcacheEntry, PolicyEntryCounters, PolicySyncStats,
};

/// The compiled `bpf/lxc.c`.
pub static LXC_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lxc.o"));
/// The compiled `bpf/sock.c`.
pub static SOCK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));

/// The socket-LB programs: (name in the object, attach type).
const SOCK_PROGRAMS: [(&str, CgroupSockAddrAttachType); 4] = [
    ("sock4_connect", CgroupSockAddrAttachType::Connect4),
    ("sock4_sendmsg", CgroupSockAddrAttachType::UDPSendMsg4),
    ("sock4_recvmsg", CgroupSockAddrAttachType::UDPRecvMsg4),
    ("sock4_getpeername", CgroupSockAddrAttachType::GetPeerName4),
];

/// The endpoint programs: (name in the object, where it attaches, pin suffix).
const ENDPOINT_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("from_container", TcAttachType::Ingress, "from"),
    ("to_container", TcAttachType::Egress, "to"),
];

/// The program on the VXLAN device's ingress (packets from other nodes), and its pin suffix.
const OVERLAY_PROGRAM: (&str, TcAttachType, &str) =
    ("from_overlay", TcAttachType::Ingress, "overlay");

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

struct Maps {
    ct: BpfHashMap<MapData, CtKey4, CtEntry4>,
    lxc4: BpfHashMap<MapData, [u8; 4], EndpointInfo>,
    lxc_ifx: BpfHashMap<MapData, u32, EndpointInfo>,
    metrics: PerCpuArray<MapData, MetricsValue>,
    lb_svc: BpfHashMap<MapData, Lb4Key, Lb4Service>,
    lb_be: BpfHashMap<MapData, u32, Lb4Backend>,
    lb_rnat: BpfHashMap<MapData, u16, Lb4ReverseNat>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    ipcache: LpmTrie<MapData, [u8; 4], IpcacheValue>,
    node_cfg: Array<MapData, NodeConfig>,
}

/// What this process knows of the policy and ipcache maps, so that updates need no dumps.
#[derive(Default)]
struct PolicyShadow {
    /// Every policy key present, per endpoint id (both generations).
    keys: HashMap<u16, Vec<(u32, PolicyKeyData)>>,
    /// The policy last written per endpoint (empty after a restart: the first write swaps
    /// generations even if nothing changed, which is harmless).
    written: HashMap<u16, EndpointPolicy>,
    /// The ipcache.
    ipcache: BTreeMap<(u32, [u8; 4]), IpcacheValue>,
}

struct Inner {
    bpf: Ebpf,
    /// Kept for its socket programs; their links are pinned.
    _sock: Option<Ebpf>,
    maps: Maps,
    /// What the load-balancing maps hold, so that a sync writes only differences without
    /// dumping them (read once at start).
    lb_shadow: LbEntries,
    policy_shadow: PolicyShadow,
    /// Links whose program this process has already swapped in (or attached).
    fresh_links: HashSet<PathBuf>,
}

/// The BPF datapath of one node.
pub struct LinuxDatapath {
    pin_dir: PathBuf,
    inner: Mutex<Inner>,
    events: broadcast::Sender<MonitorEvent>,
}

impl std::fmt::Debug for LinuxDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxDatapath")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

fn kernel<E: std::error::Error + Send + Sync + 'static>(
    op: impl Into<String>,
) -> impl FnOnce(E) -> DatapathError {
    let op = op.into();
    move |e| DatapathError::kernel(op, e)
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, path, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}

/// `<cgroup2>/ciliate/<node>`: the cgroup a node's pods run in when no runtime chose one. Never
/// the cgroup root, which would put every process of the machine behind the node's Services.
pub fn default_socket_lb_cgroup(node_name: &str) -> Option<PathBuf> {
    cgroup2_mount().map(|m| m.join("ciliate").join(node_name))
}

/// Mounts bpffs at `root` unless a bpffs is already mounted there (as Cilium's agent does).
pub fn ensure_bpffs(root: &Path) -> Result<(), DatapathError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(kernel("read /proc/mounts"))?;
    let root_s = root.to_string_lossy();
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _dev = f.next();
        f.next() == Some(&root_s) && f.next() == Some("bpf")
    }) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(kernel(format!("create {}", root.display())))?;
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        DatapathError::Unsupported(format!(
            "bpffs is not mounted at {} and mounting it failed: {e}",
            root.display()
        ))
    })?;
    info!(path = %root.display(), "mounted bpffs");
    Ok(())
}

/// Loads `bpf/lxc.c` with its maps pinned (or reused) under `pin_dir`, programs loaded
/// into the kernel but not attached. Tests use this directly for BPF_PROG_TEST_RUN.
pub fn load_endpoint_programs(pin_dir: &Path) -> Result<Ebpf, DatapathError> {
    std::fs::create_dir_all(pin_dir).map_err(kernel(format!("create {}", pin_dir.display())))?;
    let mut bpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(LXC_OBJECT)
        .map_err(kernel("load bpf/lxc.c"))?;
    for (name, _, _) in ENDPOINT_PROGRAMS.iter().chain([&OVERLAY_PROGRAM]) {
        let prog: &mut SchedClassifier = bpf
            .program_mut(name)
            .ok_or_else(|| {
                DatapathError::Unsupported(format!("program {name} missing from lxc.o"))
            })?
            .try_into()
            .map_err(kernel(format!("{name} is not a classifier")))?;
        prog.load()
            .map_err(kernel(format!("verify and load {name}")))?;
    }
    Ok(bpf)
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &str,
) -> Result<BpfHashMap<MapData, K, V>, DatapathError> {
    let map = bpf
        .take_map(name)
        .ok_or_else(|| DatapathError::Unsupported(format!("map {name} missing from lxc.o")))?;
    BpfHashMap::try_from(map).map_err(kernel(format!("open map {name}")))
}

fn ipv4_key(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

fn info_of(ep: &EndpointSpec) -> EndpointInfo {
    EndpointInfo {
        ifindex: ep.ifindex,
        ep_id: ep.id,
        flags: 0,
        sec_identity: ep.identity,
        ipv4: ipv4_key(ep.ipv4),
        mac: ep.mac.0,
        host_mac: ep.host_mac.0,
    }
}

fn ifname_of(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_not_found(e: &LinkError) -> bool {
    matches!(e, LinkError::SyscallError(SyscallError { io_error, .. }) if io_error.kind() == io::ErrorKind::NotFound)
}

impl LinuxDatapath {
    /// Loads (or re-opens, after a restart) the node's datapath. Call inside a tokio runtime:
    /// it spawns the task that reads the event ring buffer.
    pub fn open(cfg: LinuxConfig) -> Result<Self, DatapathError> {
        ensure_bpffs(&cfg.bpffs_root)?;
        // Pods reach the world through the node's stack, which must route for them.
        crate::netlink::set_ipv4_forwarding(true).map_err(kernel("enable IPv4 forwarding"))?;
        let pin_dir = cfg.pin_dir();
        let reused = pin_dir.join(maps::CT4).exists();
        let mut bpf = load_endpoint_programs(&pin_dir)?;
        std::fs::create_dir_all(pin_dir.join("links")).map_err(kernel("create links directory"))?;
        let maps = Maps {
            ct: take_hash(&mut bpf, maps::CT4)?,
            lxc4: take_hash(&mut bpf, maps::LXC4)?,
            lxc_ifx: take_hash(&mut bpf, maps::LXC_IFX)?,
            lb_svc: take_hash(&mut bpf, maps::LB4_SVC)?,
            lb_be: take_hash(&mut bpf, maps::LB4_BE)?,
            lb_rnat: take_hash(&mut bpf, maps::LB4_RNAT)?,
            policy: take_lpm(&mut bpf, maps::POLICY)?,
            ipcache: take_lpm(&mut bpf, maps::IPCACHE4)?,
            node_cfg: Array::try_from(
                bpf.take_map(maps::NODE_CFG)
                    .ok_or_else(|| DatapathError::Unsupported("map cil_node_cfg missing".into()))?,
            )
            .map_err(kernel("open map cil_node_cfg"))?,
            metrics: PerCpuArray::try_from(
                bpf.take_map(maps::METRICS)
                    .ok_or_else(|| DatapathError::Unsupported("map cil_metrics missing".into()))?,
            )
            .map_err(kernel("open map cil_metrics"))?,
        };
        let ring = RingBuf::try_from(
            bpf.take_map(maps::EVENTS)
                .ok_or_else(|| DatapathError::Unsupported("map cil_events missing".into()))?,
        )
        .map_err(kernel("open ring buffer cil_events"))?;
        let lb_shadow = read_lb_entries(&maps)?;
        let policy_shadow = read_policy_shadow(&maps)?;
        let sock = match &cfg.socket_lb_cgroup {
            Some(cgroup) => Some(attach_socket_lb(&pin_dir, cgroup)?),
            None => None,
        };
        let (events, _) = broadcast::channel(4096);
        spawn_event_reader(ring, events.clone())?;
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
                _sock: sock,
                maps,
                lb_shadow,
                policy_shadow,
                fresh_links: HashSet::new(),
            }),
            events,
        })
    }

    /// The node's bpffs directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link_pin(&self, ifindex: u32, suffix: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{ifindex}-{suffix}"))
    }

    /// Attaches `prog` to the interface, or swaps it into the link pinned at `pin`.
    fn attach_one(
        inner: &mut Inner,
        prog_name: &str,
        ifname: &str,
        at: TcAttachType,
        pin: &Path,
    ) -> Result<bool, DatapathError> {
        if inner.fresh_links.contains(pin) && pin.exists() {
            return Ok(false);
        }
        let prog: &mut SchedClassifier = inner
            .bpf
            .program_mut(prog_name)
            .ok_or_else(|| DatapathError::Unsupported(format!("program {prog_name} missing")))?
            .try_into()
            .map_err(kernel(format!("{prog_name} is not a classifier")))?;
        let (id, created) = match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let link = FdLink::from(old).try_into().map_err(kernel(format!(
                    "pinned link {} is not a TCX link",
                    pin.display()
                )))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(kernel(format!("swap {prog_name} into {}", pin.display())))?;
                (id, false)
            }
            Err(e) if is_not_found(&e) => {
                let id = prog
                    .attach_with_options(
                        ifname,
                        at,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(kernel(format!("attach {prog_name} to {ifname}")))?;
                (id, true)
            }
            Err(e) => {
                return Err(DatapathError::kernel(
                    format!("open pinned link {}", pin.display()),
                    e,
                ))
            }
        };
        // Take the link out of the program so that dropping the program never detaches it.
        let link = prog.take_link(id).map_err(kernel("take link"))?;
        let fd_link: FdLink = link.try_into().map_err(kernel("TCX link as fd link"))?;
        if created {
            fd_link
                .pin(pin)
                .map_err(kernel(format!("pin {}", pin.display())))?;
        }
        inner.fresh_links.insert(pin.to_path_buf());
        Ok(created)
    }

    fn unpin(pin: &Path) -> Result<(), DatapathError> {
        match PinnedLink::from_pin(pin) {
            // Removing the last reference detaches the program from the interface.
            Ok(link) => link
                .unpin()
                .map(drop)
                .map_err(kernel(format!("unpin {}", pin.display()))),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DatapathError::kernel(
                format!("open pinned link {}", pin.display()),
                e,
            )),
        }
    }

    fn remove_locked(&self, inner: &mut Inner, ep: &EndpointSpec) -> Result<(), DatapathError> {
        for (_, _, suffix) in ENDPOINT_PROGRAMS {
            let pin = self.link_pin(ep.ifindex, suffix);
            Self::unpin(&pin)?;
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
                ignore_missing(inner.maps.policy.remove(&LpmKey::new(prefix, data)))?;
            }
        }
        inner.policy_shadow.written.remove(&ep.id);
        Ok(())
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

    fn metrics_sum(inner: &Inner) -> (u64, u64) {
        let mut fwd = 0;
        let mut drops = 0;
        for idx in 0..abi::METRICS_SLOTS {
            if let Ok(values) = inner.maps.metrics.get(&idx, 0) {
                let total: u64 = values.iter().map(|v| v.packets).sum();
                if idx == abi::METRIC_EVENTS_LOST_SLOT {
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

fn take_lpm<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &str,
) -> Result<LpmTrie<MapData, K, V>, DatapathError> {
    let map = bpf
        .take_map(name)
        .ok_or_else(|| DatapathError::Unsupported(format!("map {name} missing from lxc.o")))?;
    LpmTrie::try_from(map).map_err(kernel(format!("open map {name}")))
}

fn read_policy_shadow(maps: &Maps) -> Result<PolicyShadow, DatapathError> {
    let mut shadow = PolicyShadow::default();
    for key in maps.policy.keys() {
        let key = key.map_err(kernel("read cil_policy"))?;
        let data = key.data();
        shadow
            .keys
            .entry(u16::from_be_bytes(data.ep_id))
            .or_default()
            .push((key.prefix_len(), data));
    }
    for item in maps.ipcache.iter() {
        let (k, v) = item.map_err(kernel("read cil_ipcache4"))?;
        shadow.ipcache.insert((k.prefix_len(), k.data()), v);
    }
    Ok(shadow)
}

/// The map records of a policy under one generation; where two entries share a key, deny
/// wins.
fn policy_records(
    ep_id: u16,
    version: u8,
    policy: &EndpointPolicy,
) -> BTreeMap<(u32, PolicyKeyData), PolicyValue> {
    let mut out: BTreeMap<(u32, PolicyKeyData), PolicyValue> = BTreeMap::new();
    for e in &policy.entries {
        let key = policy_map::policy_key(ep_id, version, e);
        let value = policy_map::policy_value(e);
        match out.get(&key) {
            Some(existing) if existing.flags & POLICY_F_DENY != 0 => {}
            _ => {
                out.insert(key, value);
            }
        }
    }
    out
}

fn read_lb_entries(maps: &Maps) -> Result<LbEntries, DatapathError> {
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

/// Loads `bpf/sock.c` with its maps pinned (or reused) under `pin_dir`, programs verified and
/// loaded but not attached.
pub fn load_socket_programs(pin_dir: &Path) -> Result<Ebpf, DatapathError> {
    std::fs::create_dir_all(pin_dir).map_err(kernel(format!("create {}", pin_dir.display())))?;
    let mut bpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(SOCK_OBJECT)
        .map_err(kernel("load bpf/sock.c"))?;
    for (name, _) in SOCK_PROGRAMS {
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(name)
            .ok_or_else(|| {
                DatapathError::Unsupported(format!("program {name} missing from sock.o"))
            })?
            .try_into()
            .map_err(kernel(format!("{name} is not a cgroup sock_addr program")))?;
        prog.load()
            .map_err(kernel(format!("verify and load {name}")))?;
    }
    Ok(bpf)
}

/// Loads the socket-LB programs (sharing the node's pinned maps) and attaches them to `cgroup`,
/// pinning the links. Links pinned by an earlier run are kept: their programs use the same maps.
pub fn attach_socket_lb(pin_dir: &Path, cgroup: &Path) -> Result<Ebpf, DatapathError> {
    std::fs::create_dir_all(cgroup)
        .map_err(kernel(format!("create cgroup {}", cgroup.display())))?;
    let cgroup_dir =
        std::fs::File::open(cgroup).map_err(kernel(format!("open cgroup {}", cgroup.display())))?;
    std::fs::create_dir_all(pin_dir.join("links")).map_err(kernel("create links directory"))?;
    let mut bpf = load_socket_programs(pin_dir)?;
    for (name, attach_type) in SOCK_PROGRAMS {
        let pin = pin_dir.join("links").join(format!("cgroup-{name}"));
        if pin.exists() {
            continue;
        }
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Unsupported(format!("program {name} missing")))?
            .try_into()
            .map_err(kernel(format!("{name} is not a cgroup sock_addr program")))?;
        debug!(program = name, ?attach_type, cgroup = %cgroup.display(), "attaching socket LB");
        let id = prog
            // Links are always "multi"; link_create refuses the legacy ALLOW_MULTI flag.
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(kernel(format!("attach {name} to {}", cgroup.display())))?;
        let link = prog.take_link(id).map_err(kernel("take link"))?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(kernel("cgroup link as fd link (kernel without BPF links?)"))?;
        fd_link
            .pin(&pin)
            .map_err(kernel(format!("pin {}", pin.display())))?;
    }
    Ok(bpf)
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

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), DatapathError> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(DatapathError::kernel("delete map entry", e)),
    }
}

/// How often the agent drains the event ring when the programs have not woken it.
const EVENTS_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

fn drain(ring: &mut RingBuf<MapData>, clock: &Clock, tx: &broadcast::Sender<MonitorEvent>) {
    while let Some(item) = ring.next() {
        match events::decode(&item, clock) {
            // No subscriber is not an error: events are only kept for listeners.
            Ok(ev) => drop(tx.send(ev)),
            Err(e) => debug!(error = %e, "undecodable datapath event"),
        }
    }
}

fn spawn_event_reader(
    ring: RingBuf<MapData>,
    tx: broadcast::Sender<MonitorEvent>,
) -> Result<(), DatapathError> {
    // SAFETY: the RingBuf owns its map fd and never changes it; the AsyncFd owns the RingBuf,
    // so the fd stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| DatapathError::kernel("poll ring buffer", e.into_parts().1))?;
    tokio::spawn(async move {
        let clock = Clock::now();
        // The programs do not wake us per event (see events.h): drain on a short timer, and
        // at once when they do wake us because the ring is filling up.
        let mut tick = tokio::time::interval(EVENTS_DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = fd.readable_mut() => match ready {
                    Ok(mut guard) => {
                        drain(guard.get_inner_mut(), &clock, &tx);
                        guard.clear_ready();
                    }
                    Err(e) => {
                        warn!(error = %e, "event ring buffer: poll failed; events stop");
                        return;
                    }
                },
                _ = tick.tick() => drain(fd.get_mut(), &clock, &tx),
            }
        }
    });
    Ok(())
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
                    name: maps::LXC_IFX.into(),
                    entries: lxc,
                    max_entries: abi::LXC_MAP_SIZE,
                },
                MapUsage {
                    name: maps::CT4.into(),
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
                Self::attach_one(inner, name, &ep.ifname, at, &pin)?;
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
                let Some(ifindex) = name.split('-').next().and_then(|s| s.parse::<u32>().ok())
                else {
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
        let now = events::monotonic_now().as_secs() as i64;
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
        let now = events::monotonic_now().as_secs();
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
        let mut guard = self.lock();
        let inner = &mut *guard;
        let ops = lbmaps::plan(&inner.lb_shadow, &lbmaps::entries(desired));
        let mut stats = LbSyncStats::default();
        for op in ops {
            // The shadow follows every write that succeeded, so a failure part-way leaves it
            // true and the next sync finishes the job.
            apply_lb_op(&mut inner.maps, op)?;
            lbmaps::apply(&mut inner.lb_shadow, op);
            match op {
                LbOp::PutBackend(..) | LbOp::PutRevNat(..) | LbOp::PutService(..) => {
                    stats.written += 1
                }
                _ => stats.deleted += 1,
            }
        }
        Ok(stats)
    }

    fn lb_state(&self) -> Result<LbState, DatapathError> {
        let inner = self.lock();
        Ok(lbmaps::state_of(&read_lb_entries(&inner.maps)?))
    }

    fn set_endpoint_policy(
        &self,
        ep: &EndpointSpec,
        policy: &EndpointPolicy,
    ) -> Result<PolicySyncStats, DatapathError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut info = inner.maps.lxc_ifx.get(&ep.ifindex, 0).map_err(|e| {
            DatapathError::kernel(format!("endpoint {} is not programmed", ep.id), e)
        })?;
        let current: u8 = u8::from(info.flags & EP_F_POLICY_V1 != 0);
        // The generation bit is set below for the generation written; keeping the old one
        // here would leave the endpoint on the generation just deleted (empty: all dropped).
        let mut flags =
            info.flags & !(EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED | EP_F_POLICY_V1);
        if policy.ingress_enforced {
            flags |= EP_F_INGRESS_ENFORCED;
        }
        if policy.egress_enforced {
            flags |= EP_F_EGRESS_ENFORCED;
        }
        let in_force_flags = flags | (info.flags & EP_F_POLICY_V1);
        if inner.policy_shadow.written.get(&ep.id) == Some(policy) && in_force_flags == info.flags {
            return Ok(PolicySyncStats::default());
        }
        let next = 1 - current;
        let mut stats = PolicySyncStats::default();
        let existing = inner.policy_shadow.keys.remove(&ep.id).unwrap_or_default();
        let (stale_next, in_force): (Vec<_>, Vec<_>) =
            existing.into_iter().partition(|(_, d)| d.version == next);
        // 1. The next generation starts empty (a crash may have left a half-written one).
        for (prefix, data) in &stale_next {
            ignore_missing(inner.maps.policy.remove(&LpmKey::new(*prefix, *data)))?;
            stats.deleted += 1;
        }
        // 2. Write it whole; packets still use the generation in force.
        let records = policy_records(ep.id, next, policy);
        let mut written_keys = Vec::with_capacity(records.len());
        for ((prefix, data), value) in &records {
            if let Err(e) = inner
                .maps
                .policy
                .insert(&LpmKey::new(*prefix, *data), *value, 0)
            {
                // Nothing changed for packets: drop what was written and keep the old.
                for (p, d) in &written_keys {
                    let _ = inner.maps.policy.remove(&LpmKey::new(*p, *d));
                }
                inner.policy_shadow.keys.insert(ep.id, in_force);
                return Err(DatapathError::kernel("write cil_policy", e));
            }
            written_keys.push((*prefix, *data));
            stats.written += 1;
        }
        // 3. One map update switches the endpoint to it.
        info.flags = flags | if next == 1 { EP_F_POLICY_V1 } else { 0 };
        inner
            .maps
            .lxc_ifx
            .insert(ep.ifindex, info, 0)
            .map_err(kernel("switch the endpoint's policy generation"))?;
        if let Ok(by_ip) = inner.maps.lxc4.get(&ipv4_key(ep.ipv4), 0) {
            if by_ip.ifindex == ep.ifindex {
                let _ = inner.maps.lxc4.insert(ipv4_key(ep.ipv4), info, 0);
            }
        }
        // 4. The old generation goes.
        for (prefix, data) in &in_force {
            ignore_missing(inner.maps.policy.remove(&LpmKey::new(*prefix, *data)))?;
            stats.deleted += 1;
        }
        inner.policy_shadow.keys.insert(ep.id, written_keys);
        inner.policy_shadow.written.insert(ep.id, policy.clone());
        Ok(stats)
    }

    fn endpoint_policy(&self, ep: &EndpointSpec) -> Result<EndpointPolicy, DatapathError> {
        let inner = self.lock();
        let info = inner.maps.lxc_ifx.get(&ep.ifindex, 0).map_err(|e| {
            DatapathError::kernel(format!("endpoint {} is not programmed", ep.id), e)
        })?;
        let version = u8::from(info.flags & EP_F_POLICY_V1 != 0);
        let mut entries = Vec::new();
        for (prefix, data) in inner.policy_shadow.keys.get(&ep.id).into_iter().flatten() {
            if data.version != version {
                continue;
            }
            let key = LpmKey::new(*prefix, *data);
            if let Ok(v) = inner.maps.policy.get(&key, 0) {
                entries.push(policy_map::policy_entry(*prefix, data, &v));
            }
        }
        entries.sort();
        Ok(EndpointPolicy {
            ingress_enforced: info.flags & EP_F_INGRESS_ENFORCED != 0,
            egress_enforced: info.flags & EP_F_EGRESS_ENFORCED != 0,
            entries,
        })
    }

    fn policy_counters(
        &self,
        ep: &EndpointSpec,
    ) -> Result<Vec<PolicyEntryCounters>, DatapathError> {
        let inner = self.lock();
        let info = inner.maps.lxc_ifx.get(&ep.ifindex, 0).map_err(|e| {
            DatapathError::kernel(format!("endpoint {} is not programmed", ep.id), e)
        })?;
        let version = u8::from(info.flags & EP_F_POLICY_V1 != 0);
        let mut out = Vec::new();
        for (prefix, data) in inner.policy_shadow.keys.get(&ep.id).into_iter().flatten() {
            if data.version != version {
                continue;
            }
            if let Ok(v) = inner.maps.policy.get(&LpmKey::new(*prefix, *data), 0) {
                out.push(PolicyEntryCounters {
                    entry: policy_map::policy_entry(*prefix, data, &v),
                    packets: v.packets,
                    bytes: v.bytes,
                });
            }
        }
        out.sort_by(|a, b| a.entry.cmp(&b.entry));
        Ok(out)
    }

    fn sync_ipcache(&self, desired: &[IpcacheEntry]) -> Result<PolicySyncStats, DatapathError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let want: BTreeMap<(u32, [u8; 4]), IpcacheValue> = desired
            .iter()
            .map(|e| {
                let (p, a, v) = policy_map::ipcache_record(e);
                ((p, a), v)
            })
            .collect();
        let mut stats = PolicySyncStats::default();
        for (k, v) in &want {
            if inner.policy_shadow.ipcache.get(k) != Some(v) {
                inner
                    .maps
                    .ipcache
                    .insert(&LpmKey::new(k.0, k.1), *v, 0)
                    .map_err(kernel("write cil_ipcache4"))?;
                inner.policy_shadow.ipcache.insert(*k, *v);
                stats.written += 1;
            }
        }
        let stale: Vec<_> = inner
            .policy_shadow
            .ipcache
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            ignore_missing(inner.maps.ipcache.remove(&LpmKey::new(k.0, k.1)))?;
            inner.policy_shadow.ipcache.remove(&k);
            stats.deleted += 1;
        }
        Ok(stats)
    }

    fn ipcache(&self) -> Result<Vec<IpcacheEntry>, DatapathError> {
        let inner = self.lock();
        let mut out = Vec::new();
        for item in inner.maps.ipcache.iter() {
            let (k, v) = item.map_err(kernel("read cil_ipcache4"))?;
            out.push(policy_map::ipcache_entry(k.prefix_len(), k.data(), &v));
        }
        out.sort();
        Ok(out)
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
                Self::attach_one(inner, prog, name, at, &pin)?;
                ifindex
            }
            None => 0,
        };
        let cfg = NodeConfig {
            tunnel_ifindex: ifindex,
            ..NodeConfig::default()
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
}

/// Removes everything a node's datapath pinned: links (detaching the programs) and maps.
/// For tear-down of a whole node (tests, the lab); the agent never calls it on its own.
pub fn purge_node_pins(cfg: &LinuxConfig) -> io::Result<()> {
    let dir = cfg.pin_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
