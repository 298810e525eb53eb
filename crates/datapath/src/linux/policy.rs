//! Policy and ipcache maps: generation-swapped per-endpoint policy, and the ipcache synced
//! by difference against a shadow of what the maps hold.

use std::collections::{BTreeMap, HashMap};

use aya::maps::lpm_trie::Key as LpmKey;
use ciliate_model::bpf_policy::{
    EndpointPolicy, IpcacheEntry, PolicyEntryCounters, PolicySyncStats,
};

use super::maps::{ignore_missing, ipv4_key, Maps};
use super::{kernel, Inner};
use crate::abi::{
    IpcacheValue, PolicyKeyData, PolicyValue, EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED,
    EP_F_POLICY_V1, POLICY_F_DENY,
};
use crate::policy_map;
use crate::{DatapathError, EndpointSpec};

/// What this process knows of the policy and ipcache maps, so that updates need no dumps.
#[derive(Default)]
pub(super) struct PolicyShadow {
    /// Every policy key present, per endpoint id (both generations).
    pub(super) keys: HashMap<u16, Vec<(u32, PolicyKeyData)>>,
    /// The policy last written per endpoint (empty after a restart: the first write swaps
    /// generations even if nothing changed, which is harmless).
    pub(super) written: HashMap<u16, EndpointPolicy>,
    /// The ipcache.
    pub(super) ipcache: BTreeMap<(u32, [u8; 4]), IpcacheValue>,
}

pub(super) fn read_policy_shadow(maps: &Maps) -> Result<PolicyShadow, DatapathError> {
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
        let value = policy_map::policy_value(key.0, &key.1, e);
        match out.get(&key) {
            Some(existing) if existing.flags & POLICY_F_DENY != 0 => {}
            _ => {
                out.insert(key, value);
            }
        }
    }
    out
}

pub(super) fn set_endpoint_policy(
    inner: &mut Inner,
    ep: &EndpointSpec,
    policy: &EndpointPolicy,
) -> Result<PolicySyncStats, DatapathError> {
    let mut info =
        inner.maps.lxc_ifx.get(&ep.ifindex, 0).map_err(|e| {
            DatapathError::kernel(format!("endpoint {} is not programmed", ep.id), e)
        })?;
    let current: u8 = u8::from(info.flags & EP_F_POLICY_V1 != 0);
    // The generation bit is set below for the generation written; keeping the old one
    // here would leave the endpoint on the generation just deleted (empty: all dropped).
    let mut flags = info.flags & !(EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED | EP_F_POLICY_V1);
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
        inner.maps.remove_policy_entry(*prefix, *data)?;
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
        inner.maps.remove_policy_entry(*prefix, *data)?;
        stats.deleted += 1;
    }
    inner.policy_shadow.keys.insert(ep.id, written_keys);
    inner.policy_shadow.written.insert(ep.id, policy.clone());
    Ok(stats)
}

pub(super) fn endpoint_policy(
    inner: &Inner,
    ep: &EndpointSpec,
) -> Result<EndpointPolicy, DatapathError> {
    let info =
        inner.maps.lxc_ifx.get(&ep.ifindex, 0).map_err(|e| {
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

pub(super) fn policy_counters(
    inner: &Inner,
    ep: &EndpointSpec,
) -> Result<Vec<PolicyEntryCounters>, DatapathError> {
    let info =
        inner.maps.lxc_ifx.get(&ep.ifindex, 0).map_err(|e| {
            DatapathError::kernel(format!("endpoint {} is not programmed", ep.id), e)
        })?;
    let version = u8::from(info.flags & EP_F_POLICY_V1 != 0);
    let mut out = Vec::new();
    for (prefix, data) in inner.policy_shadow.keys.get(&ep.id).into_iter().flatten() {
        if data.version != version {
            continue;
        }
        let key = LpmKey::new(*prefix, *data);
        if let Ok(v) = inner.maps.policy.get(&key, 0) {
            // No counters yet: the entry has allowed nothing.
            let (packets, bytes) = inner
                .maps
                .policy_stats
                .get(&key, 0)
                .map_or((0, 0), |per_cpu| {
                    per_cpu
                        .iter()
                        .fold((0, 0), |(p, b), s| (p + s.packets, b + s.bytes))
                });
            out.push(PolicyEntryCounters {
                entry: policy_map::policy_entry(*prefix, data, &v),
                packets,
                bytes,
            });
        }
    }
    out.sort_by(|a, b| a.entry.cmp(&b.entry));
    Ok(out)
}

pub(super) fn sync_ipcache(
    inner: &mut Inner,
    desired: &[IpcacheEntry],
) -> Result<PolicySyncStats, DatapathError> {
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

pub(super) fn ipcache(inner: &Inner) -> Result<Vec<IpcacheEntry>, DatapathError> {
    let mut out = Vec::new();
    for item in inner.maps.ipcache.iter() {
        let (k, v) = item.map_err(kernel("read cil_ipcache4"))?;
        out.push(policy_map::ipcache_entry(k.prefix_len(), k.data(), &v));
    }
    out.sort();
    Ok(out)
}
