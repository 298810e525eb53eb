//! `<state-dir>/<node-name>/policies.json`: the policies applied through the API, the manifest
//! directory's last good set of policies, and the CIDR identities, so that a restart keeps
//! every policy and every prefix keeps its identity (the ipcache and the policy maps are not
//! renumbered under live traffic).
//!
//! Policies are stored as the documents they were applied as and read back through the same
//! loader and checks as any manifest.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ciliate_model::manifest::ApplyDocument;
use ciliate_model::policy::IpcacheEntry;
use serde::{Deserialize, Serialize};

use crate::services::journal::{doc_key, Journal, Record};
use crate::state::{write_atomic, StateError};

/// Version of the file format.
pub const POLICIES_VERSION: u32 = 1;

/// The file's name in the node's state directory.
pub const POLICIES_FILE: &str = "policies.json";

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

/// Reads and writes a node's persisted policies (the caller holds the directory's lock).
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    path: PathBuf,
    journals: Mutex<Option<Journals>>,
}

/// The journals and what they hold, to append only differences.
#[derive(Debug)]
struct Journals {
    api: Journal,
    dir: Journal,
    saved_api: BTreeMap<(String, String, String), ApplyDocument>,
    saved_dir: BTreeMap<(String, String, String), ApplyDocument>,
    saved_cidr: Vec<IpcacheEntry>,
}

/// The CIDR identities' file in the node's state directory.
pub const CIDR_FILE: &str = "policy-cidr-identities.json";

fn keyed(docs: &[ApplyDocument]) -> BTreeMap<(String, String, String), ApplyDocument> {
    docs.iter().map(|d| (doc_key(d), d.clone())).collect()
}

/// The records that turn `old` into `new`.
fn changes(
    old: &BTreeMap<(String, String, String), ApplyDocument>,
    new: &BTreeMap<(String, String, String), ApplyDocument>,
) -> Vec<Record> {
    let mut out: Vec<Record> = old
        .iter()
        .filter(|(k, _)| !new.contains_key(*k))
        .map(|(_, d)| Record::del_doc(d))
        .collect();
    out.extend(
        new.iter()
            .filter(|(k, d)| old.get(*k) != Some(*d))
            .map(|(_, d)| Record::Put(d.clone())),
    );
    out
}

impl PolicyStore {
    /// The store in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            path: dir.join(POLICIES_FILE),
            journals: Mutex::new(None),
        }
    }

    /// Where the policies are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn objects(&self) -> PathBuf {
        self.dir.join(crate::services::OBJECTS_DIR)
    }

    /// Reads what is persisted; `None` when nothing is yet. Opens the journals for
    /// [`PolicyStore::save`].
    pub fn load(&self) -> Result<Option<PersistedPolicies>, StateError> {
        let legacy = self.load_legacy()?;
        let (mut api, api_docs) = Journal::open(&self.objects(), "policies-api")?;
        let (mut dir, dir_docs) = Journal::open(&self.objects(), "policies-manifest-dir")?;
        let cidr_path = self.dir.join(CIDR_FILE);
        let cidr: Option<Vec<IpcacheEntry>> = match fs::read(&cidr_path) {
            Ok(b) => Some(
                serde_json::from_slice(&b).map_err(|source| StateError::Parse {
                    path: cidr_path.clone(),
                    source,
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StateError::Read {
                    path: cidr_path,
                    source,
                })
            }
        };
        let state = match legacy {
            Some(old) => {
                // An older agent's whole file: it becomes the journals, then goes.
                api.rewrite(&old.api)?;
                dir.rewrite(&old.manifest_dir)?;
                self.write_cidr(&old.cidr_identities)?;
                fs::remove_file(&self.path).map_err(|source| StateError::Write {
                    path: self.path.clone(),
                    source,
                })?;
                Some(old)
            }
            None if api_docs.is_empty() && dir_docs.is_empty() && cidr.is_none() => None,
            None => Some(PersistedPolicies {
                version: POLICIES_VERSION,
                api: api_docs,
                manifest_dir: dir_docs,
                cidr_identities: cidr.unwrap_or_default(),
            }),
        };
        let s = state.clone().unwrap_or_default();
        *self.journals.lock().unwrap_or_else(|p| p.into_inner()) = Some(Journals {
            api,
            dir,
            saved_api: keyed(&s.api),
            saved_dir: keyed(&s.manifest_dir),
            saved_cidr: s.cidr_identities,
        });
        Ok(state)
    }

    fn load_legacy(&self) -> Result<Option<PersistedPolicies>, StateError> {
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

    fn write_cidr(&self, cidr: &[IpcacheEntry]) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(cidr).map_err(|source| StateError::Serialise {
            path: self.dir.join(CIDR_FILE),
            source,
        })?;
        write_atomic(
            &self.dir,
            CIDR_FILE,
            ".policy-cidr-identities.json.tmp",
            &bytes,
        )
    }

    /// Persists `state`: appends the records of the policies that changed since the last
    /// save, and rewrites the CIDR identities when they changed. Durable when it returns.
    pub fn save(&self, state: &PersistedPolicies) -> Result<(), StateError> {
        let mut guard = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            drop(guard);
            self.load()?;
            guard = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        }
        let Some(j) = guard.as_mut() else {
            return Ok(());
        };
        let api = keyed(&state.api);
        let dir = keyed(&state.manifest_dir);
        j.api.append(&changes(&j.saved_api, &api))?;
        j.saved_api = api;
        j.dir.append(&changes(&j.saved_dir, &dir))?;
        j.saved_dir = dir;
        if j.saved_cidr != state.cidr_identities {
            self.write_cidr(&state.cidr_identities)?;
            j.saved_cidr.clone_from(&state.cidr_identities);
        }
        Ok(())
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
        assert_eq!(store.load().expect("reads"), Some(state.clone()));
        assert!(
            !store.path().exists(),
            "kept per object, not in policies.json"
        );
        // An older agent's whole file is moved into the journals.
        let tmp2 = tempfile::tempdir().expect("tempdir");
        let old = PolicyStore::new(tmp2.path());
        std::fs::write(old.path(), serde_json::to_vec(&state).expect("json")).expect("write");
        assert_eq!(old.load().expect("reads"), Some(state.clone()));
        assert!(!old.path().exists());
        assert_eq!(
            PolicyStore::new(tmp2.path()).load().expect("reads"),
            Some(state)
        );
        std::fs::write(store.path(), br#"{"version": 9}"#).expect("write");
        assert!(matches!(
            store.load(),
            Err(StateError::Version { found: 9, .. })
        ));
    }
}
