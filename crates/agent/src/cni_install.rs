//! Installing the CNI plugin on the node, as Cilium's install-cni does: the network
//! configuration into the runtime's configuration directory and the plugin binary into its
//! binary directory. Both are written to a temporary name and renamed, so a runtime never
//! reads half a file.

use std::path::{Path, PathBuf};

use tracing::info;

/// The configuration's file name: read before other runtimes' defaults (`10-…`).
pub const CONF_FILE: &str = "05-ciliate.conflist";

/// The plugin's file name.
pub const PLUGIN: &str = "ciliate-cni";

/// Why the plugin could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the CNI {what} into {path}: {source}")]
pub struct InstallError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl InstallError {
    /// An I/O error on `path` while installing `what`.
    pub fn from_io(what: &'static str, path: PathBuf, source: std::io::Error) -> Self {
        Self { what, path, source }
    }
}

/// The network configuration list that points the plugin at `agent_socket`.
pub fn conflist(agent_socket: &Path) -> String {
    let v = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ciliate",
        "plugins": [{"type": PLUGIN, "agentSocket": agent_socket}],
    });
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}

fn replace(
    dir: &Path,
    name: &str,
    what: &'static str,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<PathBuf, InstallError> {
    let path = dir.join(name);
    let err = |source| InstallError {
        what,
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    write(&tmp).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(path)
}

/// Writes the configuration into `dir`.
pub fn write_conf(dir: &Path, agent_socket: &Path) -> Result<PathBuf, InstallError> {
    let text = conflist(agent_socket);
    let path = replace(dir, CONF_FILE, "configuration", |tmp| {
        std::fs::write(tmp, &text)
    })?;
    info!(path = %path.display(), "CNI configuration written");
    Ok(path)
}

/// Copies `plugin` into `dir` (executable).
pub fn install_plugin(dir: &Path, plugin: &Path) -> Result<PathBuf, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let path = replace(dir, PLUGIN, "plugin", |tmp| {
        std::fs::copy(plugin, tmp)?;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
    })?;
    info!(path = %path.display(), from = %plugin.display(), "CNI plugin installed");
    Ok(path)
}

/// The plugin beside the running agent's binary.
pub fn plugin_beside_agent() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(PLUGIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_conflist_and_an_executable_plugin() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let conf = write_conf(
            &tmp.path().join("net.d"),
            Path::new("/var/run/ciliate/agent.sock"),
        )
        .expect("writes");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&conf).expect("read")).expect("JSON");
        assert_eq!(v["plugins"][0]["type"], "ciliate-cni");
        assert_eq!(
            v["plugins"][0]["agentSocket"],
            "/var/run/ciliate/agent.sock"
        );
        let src = tmp.path().join("src-plugin");
        std::fs::write(&src, b"#!/bin/sh\n").expect("write");
        let bin = install_plugin(&tmp.path().join("bin"), &src).expect("installs");
        let mode = std::fs::metadata(&bin)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let e = install_plugin(&tmp.path().join("bin"), &tmp.path().join("missing"))
            .expect_err("no source");
        assert!(
            e.to_string().contains("cannot install the CNI plugin into"),
            "{e}"
        );
    }
}
