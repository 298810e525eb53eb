//! The FQDN cache on disk, in the node's state directory, so that a restarted agent (even
//! after `kill -9`) allows the learned addresses before its first policy computation.
//!
//! Two files:
//!
//! * `fqdn.json`, the whole cache, replaced atomically and durably ([`write_atomic`]) when it
//!   is compacted: after expiry, a clean, and every [`COMPACT_EVERY`] journaled answers;
//! * `fqdn.journal`, one JSON line per answer learned since that was worth saving (see
//!   [`super::cache::Learned::persist`]), appended with one `write(2)` before the agent tells
//!   the proxy the addresses are allowed. No fsync on that path: the
//!   page cache outlives a killed process, and a machine that loses power loses its pods and
//!   pinned maps too. Replaying an answer is idempotent (the expiry is absolute), so a line
//!   that made it into both files does no harm, and a torn last line is ignored.
//!
//! Expiry and endpoint removal are not journaled: replayed entries past their expiry expire
//! again on the first pass, which is deterministic.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ciliate_model::l7::FqdnLearned;
use serde::{Deserialize, Serialize};

use super::cache::{CacheLimits, CacheRecord, FqdnCache};
use crate::state::{write_atomic, StateError};

/// The cache as of the last compaction.
pub const SNAPSHOT_FILE: &str = "fqdn.json";
const SNAPSHOT_TMP: &str = ".fqdn.json.tmp";
/// Answers learned since.
pub const JOURNAL_FILE: &str = "fqdn.journal";
/// Answers after which the journal is folded into the snapshot.
pub const COMPACT_EVERY: usize = 1024;
/// The snapshot's format version.
pub const FQDN_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    version: u32,
    /// When it was written (Unix seconds).
    saved_unix: u64,
    records: Vec<CacheRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JournalLine {
    /// When the answer was learned (Unix seconds).
    at: u64,
    learned: FqdnLearned,
}

/// Why the saved cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FqdnStoreError {
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The snapshot is not what this agent writes.
    #[error("{path} is corrupt: {reason}; move it away to start with an empty FQDN cache (pods then need a new DNS answer before they reach names their toFQDNs allow)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] StateError),
}

/// What [`FqdnStore::load`] read.
#[derive(Debug)]
pub struct Loaded {
    /// The cache.
    pub cache: FqdnCache,
    /// Journal lines replayed.
    pub replayed: usize,
    /// Journal lines that could not be read (a torn last line after a crash).
    pub skipped: usize,
}

/// The cache's files in one directory.
#[derive(Debug)]
pub struct FqdnStore {
    dir: PathBuf,
    journal: Option<File>,
    journaled: usize,
}

impl FqdnStore {
    /// The files in `dir` (the node's state directory); nothing is read yet.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            journal: None,
            journaled: 0,
        }
    }

    /// The snapshot's path.
    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// The journal's path.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// Reads the snapshot and replays the journal over it (none: an empty cache).
    pub fn load(&mut self, limits: CacheLimits) -> Result<Loaded, FqdnStoreError> {
        let path = self.snapshot_path();
        let records = match fs::read(&path) {
            Ok(bytes) => {
                let snap: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|e| FqdnStoreError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if snap.version != FQDN_VERSION {
                    return Err(FqdnStoreError::Corrupt {
                        path,
                        reason: format!(
                            "format version {} (this agent reads {FQDN_VERSION})",
                            snap.version
                        ),
                    });
                }
                snap.records
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(FqdnStoreError::Read { path, source }),
        };
        let mut cache = FqdnCache::restore(limits, records);
        let jpath = self.journal_path();
        let (mut replayed, mut skipped) = (0, 0);
        match fs::read_to_string(&jpath) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match serde_json::from_str::<JournalLine>(line) {
                        Ok(j) => {
                            cache.learn(&j.learned, j.at);
                            replayed += 1;
                        }
                        Err(_) => skipped += 1,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FqdnStoreError::Read {
                    path: jpath,
                    source,
                })
            }
        }
        self.journaled = replayed + skipped;
        Ok(Loaded {
            cache,
            replayed,
            skipped,
        })
    }

    /// Appends one learned answer to the journal (one write, no fsync: see the module).
    pub fn append(&mut self, learned: &FqdnLearned, at: u64) -> Result<(), FqdnStoreError> {
        let path = self.journal_path();
        let write_err = |source| {
            FqdnStoreError::Write(StateError::Write {
                path: path.clone(),
                source,
            })
        };
        if self.journal.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(write_err)?;
            self.journal = Some(f);
        }
        let mut line = serde_json::to_vec(&JournalLine {
            at,
            learned: learned.clone(),
        })
        .map_err(|source| {
            FqdnStoreError::Write(StateError::Serialise {
                path: path.clone(),
                source,
            })
        })?;
        line.push(b'\n');
        if let Some(f) = self.journal.as_mut() {
            f.write_all(&line).map_err(write_err)?;
        }
        self.journaled += 1;
        Ok(())
    }

    /// Whether the journal is long enough to fold into the snapshot.
    pub fn wants_compaction(&self) -> bool {
        self.journaled >= COMPACT_EVERY
    }

    /// Writes the whole cache as the snapshot and empties the journal.
    pub fn compact(&mut self, cache: &FqdnCache, now: u64) -> Result<(), FqdnStoreError> {
        let path = self.snapshot_path();
        let bytes = serde_json::to_vec(&Snapshot {
            version: FQDN_VERSION,
            saved_unix: now,
            records: cache.records(),
        })
        .map_err(|source| {
            FqdnStoreError::Write(StateError::Serialise {
                path: path.clone(),
                source,
            })
        })?;
        write_atomic(&self.dir, SNAPSHOT_FILE, SNAPSHOT_TMP, &bytes)?;
        // Only once the snapshot holds everything may the journal go.
        let jpath = self.journal_path();
        self.journal = None;
        match fs::remove_file(&jpath) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FqdnStoreError::Write(StateError::Write {
                    path: jpath,
                    source,
                }))
            }
        }
        self.journaled = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ciliate_model::l7::FqdnAnswer;
    use std::net::Ipv4Addr;

    const T0: u64 = 1_800_000_000;

    fn ev(id: u64, name: &str, ip: [u8; 4]) -> FqdnLearned {
        FqdnLearned {
            id,
            endpoint: 7,
            endpoint_ip: Ipv4Addr::new(10, 200, 0, 7),
            names: vec![FqdnAnswer {
                name: name.into(),
                ips: vec![Ipv4Addr::from(ip)],
                ttl: 30,
            }],
        }
    }

    #[test]
    fn journal_then_snapshot_then_journal_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let limits = CacheLimits::default();
        let mut store = FqdnStore::new(dir.path());
        let mut cache = store.load(limits).unwrap().cache;
        for (i, e) in [
            ev(1, "a.example.com.", [192, 0, 2, 1]),
            ev(2, "b.example.com.", [192, 0, 2, 2]),
        ]
        .iter()
        .enumerate()
        {
            cache.learn(e, T0 + i as u64);
            store.append(e, T0 + i as u64).unwrap();
        }
        // A restart with only the journal.
        let back = FqdnStore::new(dir.path()).load(limits).unwrap();
        assert_eq!(back.replayed, 2);
        assert_eq!(back.cache, cache);
        store.compact(&cache, T0 + 2).unwrap();
        assert!(!store.journal_path().exists());
        let e3 = ev(3, "c.example.com.", [192, 0, 2, 3]);
        cache.learn(&e3, T0 + 3);
        store.append(&e3, T0 + 3).unwrap();
        let back = FqdnStore::new(dir.path()).load(limits).unwrap();
        assert_eq!((back.replayed, back.skipped), (1, 0));
        assert_eq!(back.cache, cache);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FqdnStore::new(dir.path());
        store
            .append(&ev(1, "a.example.com.", [192, 0, 2, 1]), T0)
            .unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.journal_path())
            .unwrap();
        f.write_all(b"{\"at\": 17, \"learn").unwrap();
        let back = FqdnStore::new(dir.path())
            .load(CacheLimits::default())
            .unwrap();
        assert_eq!((back.replayed, back.skipped), (1, 1));
        assert_eq!(back.cache.names().len(), 1);
    }

    #[test]
    fn a_corrupt_snapshot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SNAPSHOT_FILE), b"{not json").unwrap();
        let err = FqdnStore::new(dir.path())
            .load(CacheLimits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("fqdn.json is corrupt"), "{err}");
        assert!(err.contains("move it away"), "{err}");
    }
}
