//! The binaries a lab runs: the agent, the CNI plugin, `ciliate-bench` (ident servers) and
//! `ciliate-relay` (when built), found
//! next to the running `ciliate` (they are built together) or in `$CILIATE_BIN_DIR`; and etcd.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::layout::ETCD_BINARY;
use crate::LabError;

/// Environment variable naming the directory of the Ciliate binaries.
pub const BIN_DIR_ENV: &str = "CILIATE_BIN_DIR";

/// Paths of the binaries a lab needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    /// Where they were found.
    pub dir: PathBuf,
    /// `ciliate-agent`.
    pub agent: PathBuf,
    /// `ciliate-cni`.
    pub cni: PathBuf,
    /// `ciliate-bench` (ident servers).
    pub bench: PathBuf,
    /// `ciliate-relay`, when built: the lab then runs one (the cluster's flows in one API).
    pub relay: Option<PathBuf>,
}

impl Binaries {
    /// The binaries in `$CILIATE_BIN_DIR`, or beside the running executable.
    pub fn locate() -> Result<Self, LabError> {
        let dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_owned))
                .ok_or_else(|| {
                    LabError::Prerequisite(format!(
                        "cannot tell where ciliate runs from: set {BIN_DIR_ENV} to the directory \
                         of ciliate-agent, ciliate-cni and ciliate-bench"
                    ))
                })?,
        };
        Self::in_dir(&dir)
    }

    /// The binaries in `dir`; each must exist.
    pub fn in_dir(dir: &Path) -> Result<Self, LabError> {
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LabError::Prerequisite(format!(
                    "{name} is not in {}: build the binaries together (cargo build --bins, or \
                     --release) or set {BIN_DIR_ENV} to where they are",
                    dir.display()
                )))
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            agent: find("ciliate-agent")?,
            cni: find("ciliate-cni")?,
            bench: find("ciliate-bench")?,
            relay: Some(dir.join("ciliate-relay")).filter(|p| p.is_file()),
        })
    }

    /// Whether this agent takes `--etcd-endpoints` (state in etcd, the VXLAN overlay between
    /// nodes). The lab passes the flag exactly when it does: agents built before it existed
    /// still run a lab, whose nodes then route pod traffic over the underlay without
    /// identities crossing nodes.
    pub fn agent_takes_etcd(&self) -> bool {
        Command::new(&self.agent)
            .arg("--help")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(ETCD_ENDPOINTS_FLAG))
    }
}

/// The agent flag that points it at etcd.
pub const ETCD_ENDPOINTS_FLAG: &str = "--etcd-endpoints";

/// etcd's binary ([`ETCD_BINARY`]), or a message saying how to install it.
pub fn etcd() -> Result<PathBuf, LabError> {
    etcd_at(Path::new(ETCD_BINARY))
}

fn etcd_at(path: &Path) -> Result<PathBuf, LabError> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(LabError::Prerequisite(format!(
            "etcd is not installed ({} is missing): the lab's nodes share their state through \
             it. Install it with `apt-get install -y etcd-server` (or run scripts/install-deps)",
            path.display()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ciliate-agent"), "").unwrap();
        let err = Binaries::in_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ciliate-cni is not in"), "{err}");
        assert!(err.contains(BIN_DIR_ENV), "{err}");
        for b in ["ciliate-cni", "ciliate-bench"] {
            std::fs::write(dir.path().join(b), "").unwrap();
        }
        let bins = Binaries::in_dir(dir.path()).unwrap();
        assert_eq!(bins.bench, dir.path().join("ciliate-bench"));
        assert_eq!(bins.relay, None, "the relay is optional");
        std::fs::write(dir.path().join("ciliate-relay"), "").unwrap();
        let bins = Binaries::in_dir(dir.path()).unwrap();
        assert_eq!(bins.relay, Some(dir.path().join("ciliate-relay")));
    }

    #[test]
    fn a_missing_etcd_says_how_to_install_it() {
        let err = etcd_at(Path::new("/nonexistent/etcd"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/etcd is missing"), "{err}");
        assert!(err.contains("apt-get install -y etcd-server"), "{err}");
    }
}
