//! The kernel datapath: loads bpf/ with aya (being written; see the module docs once done).

use std::path::PathBuf;

use ciliate_model::api::{CtEntry, DatapathStatus};
use ciliate_model::monitor::MonitorEvent;
use tokio::sync::broadcast;

use crate::{CtGcStats, Datapath, DatapathError, EndpointSpec};

/// Where and how to load the datapath of one node.
#[derive(Clone, Debug)]
pub struct LinuxConfig {
    /// Node name; pins go to `<bpffs_root>/ciliate/<node_name>/`.
    pub node_name: String,
    /// Where bpffs is mounted (normally `/sys/fs/bpf`); mounted there if missing.
    pub bpffs_root: PathBuf,
}

/// The BPF datapath of one node.
#[derive(Debug)]
pub struct LinuxDatapath {
    events: broadcast::Sender<MonitorEvent>,
}

impl LinuxDatapath {
    /// Loads (or re-opens, after a restart) the node's datapath. Call inside a tokio runtime:
    /// it spawns the task that reads the event ring buffer.
    pub fn open(_cfg: LinuxConfig) -> Result<Self, DatapathError> {
        Err(DatapathError::Unsupported("the BPF datapath is not built yet".into()))
    }
}

impl Datapath for LinuxDatapath {
    fn status(&self) -> DatapathStatus {
        unimplemented!()
    }
    fn upsert_endpoint(&self, _ep: &EndpointSpec) -> Result<(), DatapathError> {
        unimplemented!()
    }
    fn remove_endpoint(&self, _ep: &EndpointSpec) -> Result<(), DatapathError> {
        unimplemented!()
    }
    fn list_endpoints(&self) -> Result<Vec<EndpointSpec>, DatapathError> {
        unimplemented!()
    }
    fn ct_entries(&self) -> Result<Vec<CtEntry>, DatapathError> {
        unimplemented!()
    }
    fn ct_gc(&self) -> Result<CtGcStats, DatapathError> {
        unimplemented!()
    }
    fn subscribe_events(&self) -> broadcast::Receiver<MonitorEvent> {
        self.events.subscribe()
    }
}
