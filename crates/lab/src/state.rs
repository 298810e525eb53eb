//! `lab.json`: the record of everything a lab made, written atomically after every piece, so
//! that `lab down` knows what to remove. It is a help, not the only source of truth: `lab down`
//! also finds leftovers by name, since a crash can happen between making a thing and writing
//! it down, and the file itself may be lost.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the `lab.json` format.
pub const FORMAT_VERSION: u32 = 1;

/// The whole lab, as `lab.json` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    /// Format version ([`FORMAT_VERSION`]).
    #[serde(default)]
    pub version: u32,
    /// The lab's name.
    pub name: String,
    /// etcd's client URL.
    pub etcd_endpoint: String,
    /// The underlay network.
    pub underlay_cidr: String,
    /// The manifest directory every agent watches.
    pub manifest_dir: PathBuf,
    /// The nodes, by index.
    #[serde(default)]
    pub nodes: Vec<NodeState>,
    /// The pods, recorded before their CNI ADD (`ip` is set once it returned).
    #[serde(default)]
    pub pods: Vec<PodState>,
    /// Processes the lab started (etcd, agents, ident servers).
    #[serde(default)]
    pub processes: Vec<ProcessState>,
    /// Whether the demo app was deployed.
    #[serde(default)]
    pub demo: bool,
    /// The relay, once started (labs from before it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayState>,
    /// When `lab up` started, RFC 3339.
    pub created_at: String,
}

/// The lab's `ciliate-relay` (its process is in `processes` as `relay`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayState {
    /// Its TCP address in the host's namespace (`hubble observe --server <address>`).
    pub address: String,
    /// Its unix socket.
    pub socket: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The node's name (`<lab>-node<i>`).
    pub name: String,
    /// 0-based index.
    pub index: usize,
    /// Its network namespace.
    pub netns: String,
    /// Its `eth0` address on the underlay.
    pub underlay_ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: String,
    /// The agent's API socket.
    pub agent_socket: PathBuf,
    /// The agent's observer socket.
    pub hubble_socket: PathBuf,
    /// The agent's process id, once started.
    #[serde(default)]
    pub agent_pid: Option<u32>,
    /// The agent's log.
    pub log: PathBuf,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The name of the node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address, once the CNI ADD returned.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The container id given to the CNI plugin.
    pub container_id: String,
}

impl PodState {
    /// `namespace/name`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A process the lab started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessState {
    /// What it is, e.g. `etcd`, `agent lab-node0`, `ident-server demo/backend-0`.
    pub what: String,
    /// Its process id.
    pub pid: u32,
    /// The network namespace it runs in.
    #[serde(default)]
    pub netns: Option<String>,
}

/// Why `lab.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// There is none.
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// It is not a lab record (half written, or edited by hand).
    #[error("{} is not a valid lab record ({reason})", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// It could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// reading, writing, ...
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl LabState {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing(path.to_owned()))
            }
            Err(source) => {
                return Err(StateError::Io {
                    what: "reading",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Writes `path` atomically: a temporary file beside it, synced, then renamed over it, so
    /// a reader (or a crash) sees the old record or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |what, source| StateError::Io {
            what,
            path: path.to_owned(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| io("encoding", std::io::Error::other(e)))?;
        text.push(b'\n');
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(|e| io("writing", e))?;
        f.write_all(&text).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))?;
        if let Some(dir) = path.parent() {
            // The rename is durable once the directory is.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodState> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Records a started process.
    pub fn add_process(&mut self, what: impl Into<String>, pid: u32, netns: Option<&str>) {
        self.processes.push(ProcessState {
            what: what.into(),
            pid,
            netns: netns.map(str::to_owned),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        LabState {
            version: FORMAT_VERSION,
            name: "lab".into(),
            etcd_endpoint: "http://172.31.0.1:2379".into(),
            underlay_cidr: "172.31.0.0/24".into(),
            manifest_dir: "/run/ciliate/lab/lab/manifests".into(),
            nodes: vec![NodeState {
                name: "lab-node0".into(),
                index: 0,
                netns: "ciliate-lab-node0".into(),
                underlay_ip: Ipv4Addr::new(172, 31, 0, 10),
                pod_cidr: "10.200.0.0/24".into(),
                agent_socket: "/run/ciliate/lab/lab/node0/agent.sock".into(),
                hubble_socket: "/run/ciliate/lab/lab/node0/hubble.sock".into(),
                agent_pid: Some(1234),
                log: "/run/ciliate/lab/lab/node0/agent.log".into(),
            }],
            pods: vec![PodState {
                name: "frontend-0".into(),
                namespace: "demo".into(),
                labels: [("app".to_owned(), "frontend".to_owned())].into(),
                node: "lab-node0".into(),
                netns: "ciliate-lab-node0-frontend-0".into(),
                ip: Some(Ipv4Addr::new(10, 200, 0, 5)),
                container_id: "lab-demo-frontend-0".into(),
            }],
            processes: vec![ProcessState {
                what: "etcd".into(),
                pid: 99,
                netns: Some("ciliate-lab-net".into()),
            }],
            demo: true,
            relay: None,
            created_at: "2025-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let s = sample();
        s.save(&path).unwrap();
        assert_eq!(LabState::load(&path).unwrap(), s);
        // The temporary file is gone.
        assert!(!dir.path().join("lab.json.tmp").exists());
        // Overwriting replaces it whole.
        let mut t = s.clone();
        t.pods.clear();
        t.save(&path).unwrap();
        assert_eq!(LabState::load(&path).unwrap(), t);
        // camelCase on disk, as the API objects are.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"etcdEndpoint\"") && text.contains("\"agentSocket\""));
    }

    #[test]
    fn missing_and_half_written_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        assert!(matches!(LabState::load(&path), Err(StateError::Missing(_))));
        let full = serde_json::to_string_pretty(&sample()).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        let err = LabState::load(&path).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("not a valid lab record"), "{err}");
        // A save over the broken file recovers it.
        sample().save(&path).unwrap();
        assert_eq!(LabState::load(&path).unwrap(), sample());
    }

    #[test]
    fn old_records_without_optional_fields_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        std::fs::write(
            &path,
            r#"{"name":"lab","etcdEndpoint":"http://172.31.0.1:2379","underlayCidr":"172.31.0.0/24",
                "manifestDir":"/m","createdAt":"2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let s = LabState::load(&path).unwrap();
        assert!(s.nodes.is_empty() && s.pods.is_empty() && s.processes.is_empty());
    }
}
