//! Wiring pods as a container runtime does: `ciliate-cni` run inside the node's namespace with
//! the CNI environment variables and the network configuration on standard input.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::sys::netns_path;
use crate::LabError;

/// What a pod is, for the CNI plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Labels (`CILIATE_LABELS`).
    pub labels: BTreeMap<String, String>,
    /// Named container ports (`CILIATE_PORTS`), e.g. `http=8080/tcp`.
    pub ports: Option<String>,
}

impl PodSpec {
    /// A pod with `labels` given as `k=v` pairs.
    pub fn new(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ports: None,
        }
    }

    /// The same with named ports.
    pub fn with_ports(mut self, ports: &str) -> Self {
        self.ports = Some(ports.to_owned());
        self
    }

    /// `CNI_ARGS` for it.
    pub fn cni_args(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut args = format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};CILIATE_LABELS={}",
            self.namespace,
            self.name,
            labels.join(",")
        );
        if let Some(p) = &self.ports {
            args.push_str(";CILIATE_PORTS=");
            args.push_str(p);
        }
        args
    }
}

/// The network configuration a runtime would hand the plugin for a node's agent.
pub fn config(agent_socket: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ciliate",
        "type": "ciliate-cni",
        "agentSocket": agent_socket,
    })
    .to_string()
}

/// One invocation of the plugin.
struct Invocation<'a> {
    cni: &'a Path,
    node_netns: &'a str,
    agent_socket: &'a Path,
    command: &'a str,
    container_id: &'a str,
    pod_netns: &'a str,
    args: Option<String>,
}

impl Invocation<'_> {
    fn run(&self) -> Result<String, LabError> {
        let cni_path = self
            .cni
            .parent()
            .map_or_else(|| "/opt/cni/bin".to_owned(), |p| p.display().to_string());
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns_path(self.node_netns).display()))
            .arg(self.cni)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", netns_path(self.pod_netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A terminal's Ctrl-C is for `ciliate`, which rolls back between steps.
            .process_group(0);
        if let Some(a) = &self.args {
            cmd.env("CNI_ARGS", a);
        }
        let what = format!("CNI {} of {}", self.command, self.container_id);
        let mut child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("{what}: starting {}", self.cni.display()), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(config(self.agent_socket).as_bytes())
                .map_err(|e| LabError::io(format!("{what}: writing the configuration"), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::io(what.clone(), e))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        // The plugin answers errors as the spec's JSON on standard output.
        let msg = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| {
                let msg = v["msg"].as_str()?.to_owned();
                Some(match v["details"].as_str() {
                    Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                    _ => msg,
                })
            })
            .unwrap_or_else(|| format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        Err(LabError::Failed(format!("{what} failed: {}", msg.trim())))
    }
}

/// CNI ADD of `pod` into namespace `pod_netns` through the agent of the node in `node_netns`;
/// returns the pod's address.
pub fn add(
    cni: &Path,
    node_netns: &str,
    agent_socket: &Path,
    pod_netns: &str,
    container_id: &str,
    pod: &PodSpec,
) -> Result<Ipv4Addr, LabError> {
    let out = Invocation {
        cni,
        node_netns,
        agent_socket,
        command: "ADD",
        container_id,
        pod_netns,
        args: Some(pod.cni_args()),
    }
    .run()?;
    parse_add_result(&out).ok_or_else(|| {
        LabError::Failed(format!(
            "CNI ADD of {container_id} returned no IPv4 address: {out}"
        ))
    })
}

/// CNI DEL (idempotent in the plugin: a pod it does not know is fine).
pub fn del(
    cni: &Path,
    node_netns: &str,
    agent_socket: &Path,
    pod_netns: &str,
    container_id: &str,
) -> Result<(), LabError> {
    Invocation {
        cni,
        node_netns,
        agent_socket,
        command: "DEL",
        container_id,
        pod_netns,
        args: None,
    }
    .run()
    .map(drop)
}

/// The first address of an ADD result (`ips[0].address`, `10.200.0.5/32`).
pub fn parse_add_result(out: &str) -> Option<Ipv4Addr> {
    let v: serde_json::Value = serde_json::from_str(out).ok()?;
    v["ips"].as_array()?.iter().find_map(|ip| {
        ip["address"]
            .as_str()?
            .split('/')
            .next()?
            .parse::<Ipv4Addr>()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_carry_labels_and_ports() {
        let p = PodSpec::new(
            "ciliate-test",
            "client2",
            &[("kind", "client"), ("other", "client")],
        );
        assert_eq!(
            p.cni_args(),
            "K8S_POD_NAMESPACE=ciliate-test;K8S_POD_NAME=client2;CILIATE_LABELS=kind=client,other=client"
        );
        assert!(p
            .with_ports("http=8080/tcp")
            .cni_args()
            .ends_with(";CILIATE_PORTS=http=8080/tcp"));
    }

    #[test]
    fn add_results_are_read() {
        let out =
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.200.0.7/32","gateway":"169.254.1.1"}]}"#;
        assert_eq!(parse_add_result(out), Some(Ipv4Addr::new(10, 200, 0, 7)));
        assert_eq!(parse_add_result("{}"), None);
        assert_eq!(parse_add_result("nope"), None);
        assert!(config(Path::new("/x/agent.sock")).contains(r#""agentSocket":"/x/agent.sock""#));
    }
}
