//! Read-only lookups of a peer's security identity in the node's pinned maps, for processes
//! other than the agent (the L7 proxy): the endpoint table `cil_lxc4` first (local pods), then
//! the ipcache `cil_ipcache4` (longest prefix). Nothing here writes.

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};

use super::kernel;
use crate::abi::{maps as map_names, EndpointInfo, IpcacheValue};
use crate::DatapathError;

/// The endpoint table and ipcache of one node, opened from their pins.
#[derive(Debug)]
pub struct IdentityReader {
    lxc4: BpfHashMap<MapData, [u8; 4], EndpointInfo>,
    ipcache: LpmTrie<MapData, [u8; 4], IpcacheValue>,
}

impl IdentityReader {
    /// Opens `<pin_dir>/cil_lxc4` and `<pin_dir>/cil_ipcache4`.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let open = |name: &str| {
            MapData::from_pin(pin_dir.join(name))
                .map_err(kernel(format!("open {}", pin_dir.join(name).display())))
        };
        let lxc4 = BpfHashMap::try_from(Map::HashMap(open(map_names::LXC4)?))
            .map_err(kernel(format!("open map {}", map_names::LXC4)))?;
        let ipcache = LpmTrie::try_from(Map::LpmTrie(open(map_names::IPCACHE4)?))
            .map_err(kernel(format!("open map {}", map_names::IPCACHE4)))?;
        Ok(Self { lxc4, ipcache })
    }

    /// The identity of `ip`: a local endpoint's, else the ipcache's longest prefix; `None`
    /// when neither knows it (the caller decides, usually "world").
    pub fn identity(&self, ip: Ipv4Addr) -> Result<Option<u32>, DatapathError> {
        match self.lxc4.get(&ip.octets(), 0) {
            Ok(info) => return Ok(Some(info.sec_identity)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(DatapathError::kernel("read cil_lxc4", e)),
        }
        match self.ipcache.get(&LpmKey::new(32, ip.octets()), 0) {
            Ok(v) => Ok(Some(v.identity)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::kernel("read cil_ipcache4", e)),
        }
    }
}
