//! Network namespaces: open one by path and run code inside it.
//!
//! The network namespace is per-thread kernel state. Switching a tokio worker would silently move
//! every task that later runs on that worker, and switching across an `.await` would let the task
//! resume on a thread that is somewhere else. So code that must run "inside" a namespace runs on
//! a fresh OS thread that enters it, does its work and exits: the switched thread dies with the
//! work, and there is nothing to switch back (the pattern of ztunnel's `inpod/netns.rs`).
//!
//! Sockets keep the namespace they were created in. The usual pattern is therefore: create the
//! socket with [`NetNs::run_in`], then use it from any thread or task
//! (see [`Netlink::connect_in`](crate::netlink::Netlink::connect_in)).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// The calling thread's own network namespace, as procfs shows it.
const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";

/// Why a namespace could not be opened or entered. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path could not be opened (most often: it does not exist).
    #[error("network namespace {path}: {source}", path = path.display())]
    Open {
        /// The path as given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a namespace file.
    #[error(
        "{path} is not a network namespace (nothing is mounted there: a stale /var/run/netns entry?)",
        path = path.display()
    )]
    NotANamespace {
        /// The path as given.
        path: PathBuf,
    },
    /// `setns(2)` refused (not a *network* namespace, or no CAP_SYS_ADMIN).
    #[error("entering network namespace {path}: {source}", path = path.display())]
    Enter {
        /// The namespace's path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// No thread could be started to enter the namespace.
    #[error("starting a thread to enter network namespace {path}: {source}", path = path.display())]
    Thread {
        /// The namespace's path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// True when the namespace path does not exist: the container is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// The namespace path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Open { path, .. }
            | Self::NotANamespace { path }
            | Self::Enter { path, .. }
            | Self::Thread { path, .. } => path,
        }
    }
}

/// An open network namespace. Holding the file descriptor keeps the namespace alive and pins
/// exactly the namespace that was opened, even if the path is later unmounted or reused.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Opens the namespace at `path`: a bind mount such as `/var/run/netns/<name>` or a
    /// `/proc/<pid>/ns/net` file (what runtimes pass in `CNI_NETNS`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        // An unmounted /var/run/netns entry is an empty file on tmpfs: opening it succeeds, and
        // without this check the mistake would only surface later as a puzzling EINVAL.
        match fstatfs(&file) {
            Ok(st) if st.filesystem_type() == NSFS_MAGIC => Ok(Self { path, file }),
            Ok(_) => Err(NetnsError::NotANamespace { path }),
            Err(e) => Err(NetnsError::Open {
                path,
                source: e.into(),
            }),
        }
    }

    /// The network namespace the calling thread is in now (normally the node's).
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(THREAD_SELF_NETNS)
    }

    /// A second handle on the same namespace (not a second lookup of its path).
    pub fn try_clone(&self) -> Result<Self, NetnsError> {
        Ok(Self {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(|source| NetnsError::Open {
                path: self.path.clone(),
                source,
            })?,
        })
    }

    /// The path the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number: two handles with the same inode are the same namespace.
    pub fn inode(&self) -> Result<u64, NetnsError> {
        self.file
            .metadata()
            .map(|m| m.ino())
            .map_err(|source| NetnsError::Open {
                path: self.path.clone(),
                source,
            })
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its result.
    ///
    /// Blocks the caller until `f` returns, so keep `f` short when calling from async code (make
    /// a socket, write a sysctl). A panic in `f` is propagated to the caller.
    pub fn run_in<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Thread {
                    path: self.path.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_not_found_and_named() {
        let err = NetNs::open("/var/run/netns/ciliate-does-not-exist").unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(
            err.path(),
            Path::new("/var/run/netns/ciliate-does-not-exist")
        );
        assert!(
            err.to_string()
                .contains("/var/run/netns/ciliate-does-not-exist"),
            "{err}"
        );
    }

    #[test]
    fn a_regular_file_is_not_a_namespace() {
        let err = NetNs::open("/proc/self/status").unwrap_err();
        assert!(matches!(err, NetnsError::NotANamespace { .. }), "{err}");
        assert!(!err.is_not_found());
        assert!(err.to_string().contains("/proc/self/status"), "{err}");
    }

    #[test]
    fn current_namespace_opens() {
        let ns = NetNs::current().unwrap();
        let again = NetNs::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns.inode().unwrap(), again.inode().unwrap());
    }
}
