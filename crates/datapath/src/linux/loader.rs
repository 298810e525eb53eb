//! The compiled objects and how they are loaded: bpffs, the cgroup of socket LB, and one
//! `Ebpf` per object, all sharing the node's maps pinned by name under one directory.

use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, CgroupSockAddrAttachType, SchedClassifier, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info};

use super::kernel;
use crate::DatapathError;

/// The compiled `bpf/lxc.c`.
pub static LXC_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lxc.o"));
/// The compiled `bpf/overlay.c`.
pub static OVERLAY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay.o"));
/// The compiled `bpf/host.c`.
pub static HOST_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/host.o"));
/// The compiled `bpf/sock.c`.
pub static SOCK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));

/// Refuses an object that the build left empty (`CILIATE_BPF_SKIP`), rather than letting the
/// loader report a parse error.
fn object(name: &str, bytes: &'static [u8]) -> Result<&'static [u8], DatapathError> {
    if bytes.is_empty() {
        return Err(DatapathError::Unsupported(format!(
            "bpf/{name} was not compiled (built with CILIATE_BPF_SKIP set); rebuild without it"
        )));
    }
    Ok(bytes)
}

/// The socket-LB programs: (name in the object, attach type).
pub(super) const SOCK_PROGRAMS: [(&str, CgroupSockAddrAttachType); 4] = [
    ("sock4_connect", CgroupSockAddrAttachType::Connect4),
    ("sock4_sendmsg", CgroupSockAddrAttachType::UDPSendMsg4),
    ("sock4_recvmsg", CgroupSockAddrAttachType::UDPRecvMsg4),
    ("sock4_getpeername", CgroupSockAddrAttachType::GetPeerName4),
];

/// The endpoint programs: (name in the object, where it attaches, pin suffix).
pub(super) const ENDPOINT_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("from_container", TcAttachType::Ingress, "from"),
    ("to_container", TcAttachType::Egress, "to"),
];

/// The program on the VXLAN device's ingress (packets from other nodes), and its pin suffix.
pub(super) const OVERLAY_PROGRAM: (&str, TcAttachType, &str) =
    ("from_overlay", TcAttachType::Ingress, "overlay");

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

/// Loads the node's objects, their maps pinned (or reused) by name under one directory.
///
/// One loader serves every object, and it never holds the kernel's BTF. aya 0.14's
/// `EbpfLoader::new` reads and parses /sys/kernel/btf/vmlinux (5 MB here; about 19 MB of
/// allocations at its peak) whether or not an object needs it. Ours need none (no CO-RE
/// relocations, no kernel types), so the parsed BTF is dropped at once, before anything
/// long-lived is allocated: parsed once per object, in between the allocations of the objects
/// already loaded, it left the agent's heap about 4 MB larger for good (issue #15's RSS).
#[derive(Debug)]
pub struct ObjectLoader {
    loader: EbpfLoader<'static>,
}

impl ObjectLoader {
    /// A loader whose maps are pinned (or reused) under `pin_dir`, which it creates.
    pub fn new(pin_dir: &Path) -> Result<Self, DatapathError> {
        std::fs::create_dir_all(pin_dir)
            .map_err(kernel(format!("create {}", pin_dir.display())))?;
        let mut loader = EbpfLoader::new();
        // Drops what `new` parsed (see above); nothing of ours relocates against it.
        loader.btf(None);
        loader.default_map_pin_directory(pin_dir);
        Ok(Self { loader })
    }

    /// Loads the tc object `file`, its classifiers `names` verified and loaded into the kernel
    /// but not attached.
    fn classifiers(
        &mut self,
        file: &str,
        bytes: &'static [u8],
        names: impl IntoIterator<Item = &'static str>,
    ) -> Result<Ebpf, DatapathError> {
        let mut bpf = self
            .loader
            .load(object(file, bytes)?)
            .map_err(kernel(format!("load bpf/{file}")))?;
        for name in names {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| {
                    DatapathError::Unsupported(format!("program {name} missing from bpf/{file}"))
                })?
                .try_into()
                .map_err(kernel(format!("{name} is not a classifier")))?;
            prog.load()
                .map_err(kernel(format!("verify and load {name}")))?;
        }
        Ok(bpf)
    }

    /// `bpf/lxc.c`, its programs loaded into the kernel but not attached.
    pub fn endpoint_programs(&mut self) -> Result<Ebpf, DatapathError> {
        self.classifiers(
            "lxc.c",
            LXC_OBJECT,
            ENDPOINT_PROGRAMS.map(|(name, _, _)| name),
        )
    }

    /// `bpf/overlay.c`, sharing the maps of [`Self::endpoint_programs`], its program loaded
    /// but not attached.
    pub fn overlay_program(&mut self) -> Result<Ebpf, DatapathError> {
        self.classifiers("overlay.c", OVERLAY_OBJECT, [OVERLAY_PROGRAM.0])
    }

    /// `bpf/host.c` (masquerading), programs loaded but not attached.
    pub fn host_programs(&mut self) -> Result<Ebpf, DatapathError> {
        self.classifiers(
            "host.c",
            HOST_OBJECT,
            HOST_PROGRAMS.map(|(name, _, _)| name),
        )
    }

    /// `bpf/sock.c`, programs verified and loaded but not attached.
    pub fn socket_programs(&mut self) -> Result<Ebpf, DatapathError> {
        let mut bpf = self
            .loader
            .load(object("sock.c", SOCK_OBJECT)?)
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
}

/// Loads `bpf/lxc.c` with its maps pinned (or reused) under `pin_dir`, programs loaded
/// into the kernel but not attached. Tests use this directly for BPF_PROG_TEST_RUN.
pub fn load_endpoint_programs(pin_dir: &Path) -> Result<Ebpf, DatapathError> {
    ObjectLoader::new(pin_dir)?.endpoint_programs()
}

/// Loads `bpf/overlay.c` with the same pinned maps as [`load_endpoint_programs`] under
/// `pin_dir`, its program loaded but not attached.
pub fn load_overlay_program(pin_dir: &Path) -> Result<Ebpf, DatapathError> {
    ObjectLoader::new(pin_dir)?.overlay_program()
}

/// The masquerading programs on the uplink: (name in the object, where it attaches, pin name
/// prefix). Pins are named `<prefix>-<ifindex>`, never starting with a number, so that they
/// are not taken for a pod veth's.
pub(super) const HOST_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("to_netdev", TcAttachType::Egress, "netdev-egress"),
    ("from_netdev", TcAttachType::Ingress, "netdev-ingress"),
];

/// Loads `bpf/host.c` with the node's pinned maps under `pin_dir`, programs loaded but not
/// attached.
pub fn load_host_programs(pin_dir: &Path) -> Result<Ebpf, DatapathError> {
    ObjectLoader::new(pin_dir)?.host_programs()
}

/// Loads `bpf/sock.c` with its maps pinned (or reused) under `pin_dir`, programs verified and
/// loaded but not attached.
pub fn load_socket_programs(pin_dir: &Path) -> Result<Ebpf, DatapathError> {
    ObjectLoader::new(pin_dir)?.socket_programs()
}

/// Loads the socket-LB programs (sharing the node's pinned maps) and attaches them to `cgroup`,
/// pinning the links. Links pinned by an earlier run are kept: their programs use the same maps.
pub fn attach_socket_lb(pin_dir: &Path, cgroup: &Path) -> Result<Ebpf, DatapathError> {
    attach_socket_lb_with(&mut ObjectLoader::new(pin_dir)?, pin_dir, cgroup)
}

/// [`attach_socket_lb`] with the node's [`ObjectLoader`].
pub fn attach_socket_lb_with(
    loader: &mut ObjectLoader,
    pin_dir: &Path,
    cgroup: &Path,
) -> Result<Ebpf, DatapathError> {
    std::fs::create_dir_all(cgroup)
        .map_err(kernel(format!("create cgroup {}", cgroup.display())))?;
    let cgroup_dir =
        std::fs::File::open(cgroup).map_err(kernel(format!("open cgroup {}", cgroup.display())))?;
    std::fs::create_dir_all(pin_dir.join("links")).map_err(kernel("create links directory"))?;
    let mut bpf = loader.socket_programs()?;
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
