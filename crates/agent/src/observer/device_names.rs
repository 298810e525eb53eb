//! The names of the node's own network devices (the uplink, the overlay device, the host
//! device) by interface index, for flows seen on them: Hubble names the interface of every
//! flow, and pod veths are only a part of them. Looked up in the kernel on first sight and
//! kept; forgotten whenever the endpoint table changes, since that is when devices come and
//! go and indexes can be reused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// More distinct indexes than a node has devices: past it the cache starts over, so indexes
/// that name nothing (a corrupt event) cannot grow it without bound.
const MAX_ENTRIES: usize = 4_096;

/// Interface index → name (or `None`: no such device), as the kernel answered.
#[derive(Debug, Default)]
pub struct DeviceNames {
    known: RwLock<HashMap<u32, Option<Arc<str>>>>,
}

impl DeviceNames {
    /// The name of the device with index `ifindex` in the agent's network namespace.
    pub fn name(&self, ifindex: u32) -> Option<Arc<str>> {
        if let Ok(known) = self.known.read() {
            if let Some(name) = known.get(&ifindex) {
                return name.clone();
            }
        }
        // One SIOCGIFNAME ioctl, once per device.
        // nix answers an empty name (not an error) for an index that names no device.
        let name = nix::net::if_::if_indextoname(ifindex)
            .ok()
            .and_then(|n| n.into_string().ok())
            .filter(|n| !n.is_empty())
            .map(Arc::from);
        if let Ok(mut known) = self.known.write() {
            if known.len() >= MAX_ENTRIES {
                known.clear();
            }
            known.insert(ifindex, name.clone());
        }
        name
    }

    /// Drops every name: devices changed.
    pub fn forget(&self) {
        if let Ok(mut known) = self.known.write() {
            known.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_kernel_and_unknown_indexes_name_nothing() {
        let names = DeviceNames::default();
        // Every network namespace has the loopback device at index 1.
        assert_eq!(names.name(1).as_deref(), Some("lo"));
        assert_eq!(names.name(1).as_deref(), Some("lo"));
        assert_eq!(names.name(u32::MAX - 7), None);
        names.forget();
        assert_eq!(names.name(1).as_deref(), Some("lo"));
    }
}
