//! Endpoint records kept in the kernel: a pinned hash map `cil_ep_rec` (host ifindex → an
//! opaque record the agent writes, e.g. the endpoint as JSON), beside the datapath's own maps.
//!
//! The datapath's maps say which address and identity a pod's veth has, but not which
//! container it belongs to nor the labels its identity stands for. When the agent's state file
//! is lost while pods run, these records let it rebuild its endpoints from what the kernel
//! holds. No BPF program reads the map; it lives in bpffs only because bpffs outlives the agent
//! exactly as long as the pins it describes do.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};

use crate::{abi, DatapathError};

/// Name of the pinned map (and of its pin) in the node's pin directory.
pub const EP_RECORDS_MAP: &str = "cil_ep_rec";

/// Largest record, in bytes (the map's values hold a little-endian u32 length, then the bytes).
pub const MAX_RECORD: usize = RECORD_VALUE - 4;

const RECORD_VALUE: usize = 4096;

/// Values are only allocated when written, so an empty map costs nothing.
const BPF_F_NO_PREALLOC: u32 = 1;

type Records = BpfHashMap<MapData, u32, [u8; RECORD_VALUE]>;

fn kernel<E: std::error::Error + Send + Sync + 'static>(
    op: String,
) -> impl FnOnce(E) -> DatapathError {
    move |e| DatapathError::kernel(op, e)
}

fn pin_of(pin_dir: &Path) -> PathBuf {
    pin_dir.join(EP_RECORDS_MAP)
}

/// Opens the pinned map, creating and pinning it when missing.
fn open(pin_dir: &Path) -> Result<Records, DatapathError> {
    let pin = pin_of(pin_dir);
    if !pin.exists() {
        Records::create(abi::LXC_MAP_SIZE, BPF_F_NO_PREALLOC)
            .map_err(kernel(format!("create map {EP_RECORDS_MAP}")))?
            .pin(&pin)
            .map_err(kernel(format!("pin {}", pin.display())))?;
    }
    let data = MapData::from_pin(&pin).map_err(kernel(format!("open {}", pin.display())))?;
    Records::try_from(Map::HashMap(data))
        .map_err(kernel(format!("{} is not the expected map", pin.display())))
}

/// Stores `record` for the endpoint on `ifindex`, replacing what was there.
pub fn put(pin_dir: &Path, ifindex: u32, record: &[u8]) -> Result<(), DatapathError> {
    if record.len() > MAX_RECORD {
        return Err(DatapathError::Unsupported(format!(
            "endpoint record for ifindex {ifindex} is {} bytes, more than the {MAX_RECORD} {EP_RECORDS_MAP} holds",
            record.len()
        )));
    }
    let mut value = [0u8; RECORD_VALUE];
    value[..4].copy_from_slice(&(record.len() as u32).to_le_bytes());
    value[4..4 + record.len()].copy_from_slice(record);
    open(pin_dir)?
        .insert(ifindex, value, 0)
        .map_err(kernel(format!("write {EP_RECORDS_MAP} entry {ifindex}")))
}

/// Drops the record of `ifindex`; a missing one is not an error.
pub fn remove(pin_dir: &Path, ifindex: u32) -> Result<(), DatapathError> {
    let pin = pin_of(pin_dir);
    if !pin.exists() {
        return Ok(());
    }
    match open(pin_dir)?.remove(&ifindex) {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(DatapathError::kernel(
            format!("delete {EP_RECORDS_MAP} entry {ifindex}"),
            e,
        )),
    }
}

/// Every record, by ifindex. A value whose length field is out of range is skipped (it cannot
/// have been written by [`put`]).
pub fn all(pin_dir: &Path) -> Result<Vec<(u32, Vec<u8>)>, DatapathError> {
    if !pin_of(pin_dir).exists() {
        return Ok(Vec::new());
    }
    let map = open(pin_dir)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (ifindex, value) = item.map_err(kernel(format!("iterate {EP_RECORDS_MAP}")))?;
        if let Some(bytes) = decode(&value) {
            out.push((ifindex, bytes.to_vec()));
        }
    }
    Ok(out)
}

fn decode(value: &[u8; RECORD_VALUE]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(value[..4].try_into().ok()?) as usize;
    value.get(4..4 + len).filter(|_| len <= MAX_RECORD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_round_trips_and_bad_lengths_are_skipped() {
        let mut v = [0u8; RECORD_VALUE];
        v[..4].copy_from_slice(&3u32.to_le_bytes());
        v[4..7].copy_from_slice(b"abc");
        assert_eq!(decode(&v), Some(&b"abc"[..]));
        v[..4].copy_from_slice(&(RECORD_VALUE as u32).to_le_bytes());
        assert_eq!(decode(&v), None);
    }
}
