//! The node's pinned maps as this process holds them, and small helpers to open and edit them.

use std::io;
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::sys::SyscallError;
use aya::Ebpf;

use super::kernel;
use crate::abi::{
    CtEntry4, CtKey4, EndpointInfo, IpcacheValue, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service,
    MetricsValue, NodeConfig, PolicyKeyData, PolicyStats, PolicyValue,
};
use crate::{DatapathError, EndpointSpec};

pub(super) struct Maps {
    pub(super) ct: BpfHashMap<MapData, CtKey4, CtEntry4>,
    pub(super) lxc4: BpfHashMap<MapData, [u8; 4], EndpointInfo>,
    pub(super) lxc_ifx: BpfHashMap<MapData, u32, EndpointInfo>,
    pub(super) metrics: PerCpuArray<MapData, MetricsValue>,
    pub(super) lb_svc: BpfHashMap<MapData, Lb4Key, Lb4Service>,
    pub(super) lb_be: BpfHashMap<MapData, u32, Lb4Backend>,
    pub(super) lb_rnat: BpfHashMap<MapData, u16, Lb4ReverseNat>,
    pub(super) policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    /// What each policy entry allowed, per CPU, under the entry's key.
    pub(super) policy_stats: PerCpuHashMap<MapData, LpmKey<PolicyKeyData>, PolicyStats>,
    pub(super) ipcache: LpmTrie<MapData, [u8; 4], IpcacheValue>,
    pub(super) node_cfg: Array<MapData, NodeConfig>,
    pub(super) nomasq: LpmTrie<MapData, [u8; 4], u8>,
}

pub(super) fn take_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &str,
) -> Result<BpfHashMap<MapData, K, V>, DatapathError> {
    let map = bpf
        .take_map(name)
        .ok_or_else(|| DatapathError::Unsupported(format!("map {name} missing from lxc.o")))?;
    BpfHashMap::try_from(map).map_err(kernel(format!("open map {name}")))
}

pub(super) fn take_lpm<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &str,
) -> Result<LpmTrie<MapData, K, V>, DatapathError> {
    let map = bpf
        .take_map(name)
        .ok_or_else(|| DatapathError::Unsupported(format!("map {name} missing from lxc.o")))?;
    LpmTrie::try_from(map).map_err(kernel(format!("open map {name}")))
}

pub(super) fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), DatapathError> {
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

pub(super) fn ipv4_key(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

pub(super) fn info_of(ep: &EndpointSpec) -> EndpointInfo {
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

pub(super) fn ifname_of(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Maps {
    /// Deletes a policy entry that packets no longer use (its endpoint switched generation
    /// or is gone) with its counters, so that a later entry under the same key starts from
    /// zero. The counters go first: a crash in between leaves an entry without counters,
    /// never counters for a later entry.
    pub(super) fn remove_policy_entry(
        &mut self,
        prefix: u32,
        data: PolicyKeyData,
    ) -> Result<(), DatapathError> {
        let key = LpmKey::new(prefix, data);
        ignore_missing(self.policy_stats.remove(&key))?;
        ignore_missing(self.policy.remove(&key))
    }
}
