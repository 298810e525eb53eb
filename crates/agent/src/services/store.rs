//! `<state-dir>/<node-name>/services.json`: the whole-file store of older agents (the Service
//! objects applied through the API, the manifest directory's last good set, and the id
//! allocator). It is read once to move its objects to the per-object journals
//! ([`super::journal`]) and then removed.
//!
//! Objects are stored as the documents they were applied as (`apiVersion`, `kind`, fields),
//! and read back through the same decoder and validation as any manifest.

use std::fs;
use std::path::{Path, PathBuf};

use ciliate_lb::AllocatorSnapshot;
use ciliate_model::manifest::ApplyDocument;
use serde::{Deserialize, Serialize};

use crate::state::{write_atomic, StateError};

/// Version of the file format.
pub const SERVICES_VERSION: u32 = 1;

/// The file's name in the node's state directory.
pub const SERVICES_FILE: &str = "services.json";

const TMP_FILE: &str = ".services.json.tmp";

/// What `services.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedServices {
    /// [`SERVICES_VERSION`].
    pub version: u32,
    /// Objects applied through the API.
    #[serde(default)]
    pub api: Vec<ApplyDocument>,
    /// The manifest directory's last good set (kept in force when the directory is broken at
    /// start-up).
    #[serde(default)]
    pub manifest_dir: Vec<ApplyDocument>,
    /// Backend ids and rev-NAT indexes.
    #[serde(default)]
    pub ids: AllocatorSnapshot,
}

/// Reads and writes `services.json` in one directory (the caller holds the directory's lock).
#[derive(Debug)]
pub struct ServiceStore {
    dir: PathBuf,
    path: PathBuf,
}

impl ServiceStore {
    /// The store in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            path: dir.join(SERVICES_FILE),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the file (once its objects are in the journals).
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Write {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Reads the file; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<PersistedServices>, StateError> {
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
        if v.version != SERVICES_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: v.version,
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(parse)
    }

    /// Replaces the file atomically and durably.
    pub fn save(&self, state: &PersistedServices) -> Result<(), StateError> {
        // Compact: with 10,000 Services the file is megabytes, written on every change.
        let bytes = serde_json::to_vec(state).map_err(|source| StateError::Serialise {
            path: self.path.clone(),
            source,
        })?;
        write_atomic(&self.dir, SERVICES_FILE, TMP_FILE, &bytes)
    }
}
