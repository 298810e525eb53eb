//! Peer identities, read from the datapath's pinned maps (the agent does not push them).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use ciliate_datapath::linux::identity_reader::IdentityReader;
use ciliate_model::identity::{NumericIdentity, ReservedIdentity};
use tracing::warn;

/// Where identities come from.
pub trait Identities: Send + Sync + std::fmt::Debug + 'static {
    /// The security identity of `ip`; "world" when nothing knows it.
    fn identity_of(&self, ip: Ipv4Addr) -> NumericIdentity;
}

/// A fixed table (tests, and nodes without a datapath).
#[derive(Debug, Default)]
pub struct StaticIdentities {
    /// Known addresses.
    pub table: HashMap<Ipv4Addr, NumericIdentity>,
}

impl Identities for StaticIdentities {
    fn identity_of(&self, ip: Ipv4Addr) -> NumericIdentity {
        self.table
            .get(&ip)
            .copied()
            .unwrap_or(ReservedIdentity::World.id())
    }
}

/// The node's pinned `cil_lxc4` and `cil_ipcache4`, opened lazily and reopened after an
/// error (the agent may not have created them yet when the proxy starts).
#[derive(Debug)]
pub struct PinnedIdentities {
    pin_dir: PathBuf,
    reader: Mutex<Option<IdentityReader>>,
}

impl PinnedIdentities {
    /// Reads the maps pinned under `pin_dir` (e.g. `/sys/fs/bpf/ciliate/<node>`).
    pub fn new(pin_dir: PathBuf) -> Self {
        Self {
            pin_dir,
            reader: Mutex::new(None),
        }
    }
}

impl Identities for PinnedIdentities {
    fn identity_of(&self, ip: Ipv4Addr) -> NumericIdentity {
        let world = ReservedIdentity::World.id();
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match IdentityReader::open(&self.pin_dir) {
                Ok(r) => *guard = Some(r),
                Err(e) => {
                    warn!(pin_dir = %self.pin_dir.display(), error = %e, "cannot open the identity maps; peer is world");
                    return world;
                }
            }
        }
        let Some(reader) = guard.as_ref() else {
            return world;
        };
        match reader.identity(ip) {
            Ok(id) => id.unwrap_or(world),
            Err(e) => {
                warn!(%ip, error = %e, "identity lookup failed; peer is world, maps reopened next time");
                *guard = None;
                world
            }
        }
    }
}
