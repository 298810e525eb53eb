//! The agent's persistent state: `<state-dir>/<node-name>/state.json`.
//!
//! The file is the agent's memory across restarts: which endpoints exist, which addresses they
//! hold and which identities their label sets map to. It is written atomically (temporary file
//! in the same directory, fsync, rename, fsync of the directory) before any change is answered
//! as done, so a crash at any point leaves either the old or the new state, never half of one.
//! A file that does not parse stops the agent: starting empty would hand out addresses that
//! running pods still use.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ciliate_model::Endpoint;
use ipnet::Ipv4Net;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::identity::IdentitySnapshot;
use crate::ipam::IpamSnapshot;

/// The version of the file format this agent writes and reads.
pub const STATE_VERSION: u32 = 1;

/// Name of the state file inside the node's state directory.
pub const STATE_FILE: &str = "state.json";

/// Temporary file the next state is written to before it is renamed over [`STATE_FILE`].
pub(crate) const TMP_FILE: &str = ".state.json.tmp";

/// Lock file held for as long as the agent runs, so two agents never share a state directory.
const LOCK_FILE: &str = "agent.lock";

/// Everything the agent persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedState {
    /// File format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The node the state belongs to.
    pub node_name: String,
    /// The pod CIDR the addresses were allocated from.
    pub pod_cidr: Ipv4Net,
    /// Endpoints, by id.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Identities in use and the allocation cursor.
    #[serde(default)]
    pub identities: IdentitySnapshot,
    /// Address allocations and the allocation cursor.
    #[serde(default)]
    pub ipam: IpamSnapshot,
}

/// Why the state could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another agent holds the state directory.
    #[error(
        "another ciliate-agent is running for this node: {path} is locked; stop it first, or \
         give this one a different --node-name or --state-dir"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but could not be read.
    #[error("cannot read state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error(
        "state file {path} is corrupt: {source}; the agent will not start from an empty state \
         because running pods still hold addresses it records. Repair the file, or move it away \
         after deleting every pod on this node"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why parsing failed.
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by a newer agent.
    #[error("state file {path} has format version {found}, this agent reads version {STATE_VERSION}; run a newer agent")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The file belongs to another node.
    #[error("state file {path} belongs to node {found:?}, not {expected:?}")]
    WrongNode {
        /// The file.
        path: PathBuf,
        /// The node name in the file.
        found: String,
        /// The node name configured.
        expected: String,
    },
    /// The new state could not be written.
    #[error("cannot write state file {path}: {source}")]
    Write {
        /// The file being written (the temporary file or the directory being synced).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state could not be serialised (a bug).
    #[error("cannot serialise the state for {path}: {source}")]
    Serialise {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// The state directory of one node, locked for as long as this value lives.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    path: PathBuf,
    _lock: Flock<File>,
}

impl StateStore {
    /// Creates the directory if needed (mode 0700: the state names every pod of the node) and
    /// locks it against a second agent.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let lock_path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| StateError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Err(StateError::Locked { path: lock_path }),
            Err((_, errno)) => {
                return Err(StateError::Lock {
                    path: lock_path,
                    source: errno.into(),
                })
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            path: dir.join(STATE_FILE),
            _lock: lock,
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; `None` when there is no file yet (a fresh node).
    pub fn load(&self, node_name: &str) -> Result<Option<PersistedState>, StateError> {
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
        // Read the version first so a newer format is reported as such, not as corruption.
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: self.path.clone(),
                source,
            })?;
        if v.version != STATE_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: v.version,
            });
        }
        let state: PersistedState =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: self.path.clone(),
                source,
            })?;
        if state.node_name != node_name {
            return Err(StateError::WrongNode {
                path: self.path.clone(),
                found: state.node_name,
                expected: node_name.to_owned(),
            });
        }
        Ok(Some(state))
    }

    /// Replaces the state file atomically and durably.
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| StateError::Serialise {
            path: self.path.clone(),
            source,
        })?;
        write_atomic(&self.dir, STATE_FILE, TMP_FILE, &bytes)
    }

    /// The node's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Replaces `<dir>/<name>` with `bytes` atomically and durably: written to `<dir>/<tmp>`,
/// synced, renamed over `name`, and the directory synced, so a crash leaves the old or the
/// new content, never a mix. Other files of the agent's state directory are written this way.
pub fn write_atomic(dir: &Path, name: &str, tmp: &str, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = dir.join(tmp);
    let path = dir.join(name);
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Write { path, source }
    };
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err(&tmp))?;
    f.write_all(bytes).map_err(write_err(&tmp))?;
    // The data must be on disk before the rename makes it the state, or a power loss could
    // leave an empty file under the real name.
    f.sync_all().map_err(write_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(write_err(&path))?;
    // The rename itself is only durable once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(node: &str) -> PersistedState {
        PersistedState {
            version: STATE_VERSION,
            node_name: node.to_owned(),
            pod_cidr: "10.200.0.0/24".parse().expect("cidr"),
            endpoints: vec![],
            identities: IdentitySnapshot::default(),
            ipam: IpamSnapshot::default(),
        }
    }

    #[test]
    fn missing_file_is_a_fresh_node_and_saves_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("n1");
        let store = StateStore::open(&dir).expect("opens");
        assert_eq!(store.load("n1").expect("loads"), None);
        let s = sample("n1");
        store.save(&s).expect("saves");
        assert_eq!(store.load("n1").expect("loads"), Some(s));
        assert!(
            !dir.join(TMP_FILE).exists(),
            "the temporary file is renamed away"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_a_hard_error_naming_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(tmp.path()).expect("opens");
        fs::write(store.path(), b"{\"version\": 1, \"nodeName\": ").expect("write");
        let err = store.load("n1").expect_err("corrupt");
        let msg = err.to_string();
        assert!(matches!(err, StateError::Parse { .. }), "{msg}");
        assert!(msg.contains(&store.path().display().to_string()), "{msg}");
        assert!(msg.contains("line 1"), "names where: {msg}");
    }

    #[test]
    fn newer_version_and_other_node_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(tmp.path()).expect("opens");
        fs::write(store.path(), br#"{"version": 7, "whatever": true}"#).expect("write");
        assert!(matches!(
            store.load("n1"),
            Err(StateError::Version { found: 7, .. })
        ));
        store.save(&sample("other")).expect("saves");
        assert!(matches!(
            store.load("n1"),
            Err(StateError::WrongNode { .. })
        ));
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = StateStore::open(tmp.path()).expect("opens");
        let err = StateStore::open(tmp.path()).expect_err("locked");
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(first);
        StateStore::open(tmp.path()).expect("free again");
    }

    #[test]
    fn failed_write_keeps_the_old_state() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(tmp.path()).expect("opens");
        let old = sample("n1");
        store.save(&old).expect("saves");
        // A directory where the temporary file goes makes the write fail, even as root.
        fs::create_dir(tmp.path().join(TMP_FILE)).expect("mkdir");
        let mut new = sample("n1");
        new.pod_cidr = "10.0.0.0/8".parse().expect("cidr");
        let err = store.save(&new).expect_err("cannot write");
        assert!(err.to_string().contains(TMP_FILE), "{err}");
        assert_eq!(store.load("n1").expect("loads"), Some(old));
    }
}
