//! One agent per node datapath: an exclusive `flock` on the node's bpffs pin directory, held
//! for as long as the agent lives.
//!
//! The lock is keyed by what two agents would fight over (the pins), not by the state
//! directory: two agents with the same node name but different state directories would
//! otherwise both program, and strip, the same pods. bpffs directories take `flock` like any
//! other file; the kernel drops the lock when the process dies, even by `kill -9`, so there is
//! no stale lock to clean up.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why the pin directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another ciliate-agent{} holds the datapath of this node: {dir} is locked; stop it first, \
         or give this one a different --node-name",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The pin directory.
        dir: PathBuf,
        /// The holder's pid, when the kernel tells (`/proc/locks`).
        pid: Option<u32>,
    },
    /// The directory could not be created, opened or locked.
    #[error("cannot lock the pin directory {dir}: {source}")]
    Io {
        /// The pin directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on a node's pin directory; released when dropped (or the process exits).
#[derive(Debug)]
pub struct PinDirLock {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl PinDirLock {
    /// Creates `dir` if needed and locks it, without waiting: a held lock is an error naming the
    /// holder.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |source: std::io::Error| LockError::Io {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = File::open(dir).map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self {
                dir: dir.to_owned(),
                _lock: lock,
            }),
            Err((file, Errno::EWOULDBLOCK)) => Err(LockError::Held {
                dir: dir.to_owned(),
                pid: holder_pid(&file),
            }),
            Err((_, errno)) => Err(io(errno.into())),
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pid holding a `flock` on `file`, from `/proc/locks`.
fn holder_pid(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino(), std::process::id())
}

/// Finds, in the text of `/proc/locks`, a FLOCK on the file (`dev`, `ino`) held by a process
/// other than `me`. Lines read `1: FLOCK  ADVISORY  WRITE 20797 00:28:16257 0 EOF`, the device
/// as hex major:minor.
fn holder_in(locks: &str, dev: u64, ino: u64, me: u32) -> Option<u32> {
    let major = nix::sys::stat::major(dev);
    let minor = nix::sys::stat::minor(dev);
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with "1: ->"; skip those.
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let ma = u64::from_str_radix(id.next()?, 16).ok()?;
        let mi = u64::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (ma == major && mi == minor && i == ino && pid != me).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_is_found_by_device_and_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 20797 00:28:16257 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 999 00:28:16257 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 555 00:28:16257 0 EOF\n";
        let dev = nix::sys::stat::makedev(0, 0x28);
        assert_eq!(holder_in(locks, dev, 16257, 1), Some(20797));
        assert_eq!(holder_in(locks, dev, 16258, 1), None, "other inode");
        assert_eq!(holder_in(locks, dev, 16257, 20797), None, "ourselves");
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("node");
        let first = PinDirLock::acquire(&dir).expect("locks");
        let err = PinDirLock::acquire(&dir).expect_err("held");
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        drop(first);
        PinDirLock::acquire(&dir).expect("free again");
    }
}
