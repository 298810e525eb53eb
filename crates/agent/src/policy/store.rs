//! `<state-dir>/<node-name>/policies.json`: the policies applied through the API, the manifest
//! directory's last good set of policies, and the CIDR identities, so that a restart keeps
//! every policy and every prefix keeps its identity (the ipcache and the policy maps are not
//! renumbered under live traffic).
//!
//! Policies are stored as the documents they were applied as and read back through the same
//! loader and checks as any manifest.

use std::fs;
use std::path::{Path, PathBuf};

use ciliate_model::manifest::ApplyDocument;
use ciliate_model::policy::IpcacheEntry;
use serde::{Deserialize, Serialize};

use crate::state::{write_atomic, StateError};

/// Version of the file format.
pub const POLICIES_VERSION: u32 = 1;

/// The file's name in the node's state directory.
pub const POLICIES_FILE: &str = "policies.json";

const TMP_FILE: &str = ".policies.json.tmp";

/// What `policies.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedPolicies {
    /// [`POLICIES_VERSION`].
    pub version: u32,
    /// Policies applied through the API.
    #[serde(default)]
    pub api: Vec<ApplyDocument>,
    /// The manifest directory's last good set of policies.
    #[serde(default)]
    pub manifest_dir: Vec<ApplyDocument>,
    /// The CIDR identities: prefix → identity.
    #[serde(default)]
    pub cidr_identities: Vec<IpcacheEntry>,
}

/// Reads and writes `policies.json` in one directory (the caller holds the directory's lock).
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    path: PathBuf,
}

impl PolicyStore {
    /// The store in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            path: dir.join(POLICIES_FILE),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<PersistedPolicies>, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let parse = |source| StateError::Parse {
            path: self.path.clone(),
            source,
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(&bytes).map_err(parse)?;
        if v.version != POLICIES_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: v.version,
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(parse)
    }

    /// Replaces the file atomically and durably.
    pub fn save(&self, state: &PersistedPolicies) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(state).map_err(|source| StateError::Serialise {
            path: self.path.clone(),
            source,
        })?;
        write_atomic(&self.dir, POLICIES_FILE, TMP_FILE, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = PolicyStore::new(tmp.path());
        assert_eq!(store.load().expect("reads"), None);
        let state = PersistedPolicies {
            version: POLICIES_VERSION,
            api: vec![ApplyDocument {
                source: "p.yaml".into(),
                index: 1,
                object: serde_json::json!({"kind": "CiliumNetworkPolicy"}),
            }],
            manifest_dir: vec![],
            cidr_identities: vec![IpcacheEntry {
                prefix: "10.0.0.0/8".parse().expect("prefix"),
                identity: 1 << 24,
            }],
        };
        store.save(&state).expect("saves");
        assert_eq!(store.load().expect("reads"), Some(state));
        std::fs::write(store.path(), br#"{"version": 9}"#).expect("write");
        assert!(matches!(
            store.load(),
            Err(StateError::Version { found: 9, .. })
        ));
    }
}
