//! The test's own workload on a lab: the client and echo pods (through the CNI, like any pod),
//! their ident servers and HTTP servers, an ident server in each node's own namespace, and the echo Services.
//! Everything is recorded in `lab.json` as it is made, so it can be removed by a later
//! command too (after a Ctrl-C, or with `lab down`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::scenarios::{Echo, Source, ECHO_PORT, HTTP_PORT, NAMESPACE};
use crate::cni::PodSpec;
use crate::layout::{HOST_PORT, WORLD_ID, WORLD_PORT};
use crate::objects::{self, Backend};
use crate::state::PodState;
use crate::{sys, Lab, LabError, Progress};

/// The manifest of the echo Services in the lab's manifest directory.
pub const SERVICES_FILE: &str = "connectivity-services.yaml";
/// The manifest of the policy in force, while a scenario runs.
pub const POLICY_FILE: &str = "connectivity-policy.yaml";
/// What every process of the workload is recorded as, first.
pub const PROCESS_PREFIX: &str = "connectivity: ";

/// The test's pods: (node index, pod).
pub fn pods(nodes: usize) -> Vec<(usize, PodSpec)> {
    let named = |name: &str, extra: &[(&str, &str)]| {
        let kind = if name.starts_with("echo") {
            "echo"
        } else {
            "client"
        };
        let mut labels = vec![("kind", kind), ("name", name)];
        labels.extend_from_slice(extra);
        let spec = PodSpec::new(NAMESPACE, name, &labels);
        if kind == "echo" {
            spec.with_ports(&format!("http={ECHO_PORT}/tcp"))
        } else {
            spec
        }
    };
    let mut out = vec![
        (0, named("client", &[])),
        (0, named("client2", &[("other", "client")])),
        (0, named(Echo::SameNode.name(), &[])),
    ];
    if nodes >= 2 {
        out.push((Echo::OtherNode.node(), named(Echo::OtherNode.name(), &[])));
    }
    out
}

/// The workload as deployed: the pods by name.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// The pods, by name.
    pub pods: BTreeMap<String, PodState>,
}

impl Workload {
    /// The pod of a source, if it is one.
    pub fn source(&self, s: Source) -> Option<&PodState> {
        s.pod().and_then(|p| self.pods.get(p))
    }

    /// An echo pod.
    pub fn echo(&self, e: Echo) -> Option<&PodState> {
        self.pods.get(e.name())
    }

    /// An echo pod's address.
    pub fn echo_ip(&self, e: Echo) -> Option<Ipv4Addr> {
        self.echo(e).and_then(|p| p.ip)
    }
}

/// Deploys the workload onto the lab (removing what a previous run left first).
pub async fn deploy(lab: &mut Lab, progress: Progress<'_>) -> Result<Workload, LabError> {
    let left = remove(lab).await;
    if !left.is_empty() {
        return Err(LabError::Failed(format!(
            "the previous test workload could not be removed: {}",
            left.join("; ")
        )));
    }
    ensure_world(lab)?;
    let mut workload = Workload::default();
    for (node, spec) in pods(lab.state.nodes.len()) {
        let pod = lab.add_pod(node, &spec)?;
        if spec.labels.get("kind").map(String::as_str) == Some("echo") {
            lab.start_ident_server(
                &format!("{PROCESS_PREFIX}ident-server {}", pod.reference()),
                &pod.netns,
                &pod.name,
                ECHO_PORT,
            )?;
            lab.start_http_server(
                &format!("{PROCESS_PREFIX}http-server {}", pod.reference()),
                &pod.netns,
                &pod.name,
                HTTP_PORT,
            )?;
        }
        progress(&format!(
            "Pod {} on {}: {}",
            pod.reference(),
            pod.node,
            pod.ip.map(|i| i.to_string()).unwrap_or_default()
        ));
        workload.pods.insert(pod.name.clone(), pod);
    }
    let nodes = lab.state.nodes.clone();
    for n in &nodes {
        lab.start_ident_server(
            &format!("{PROCESS_PREFIX}host ident-server {}", n.name),
            &n.netns,
            &n.name,
            HOST_PORT,
        )?;
    }
    progress(&format!(
        "Host ident servers on :{HOST_PORT} in {} node namespaces",
        nodes.len()
    ));
    let mut text = String::new();
    let mut names = Vec::new();
    for e in [Echo::SameNode, Echo::OtherNode] {
        let Some(pod) = workload.echo(e) else {
            continue;
        };
        if !text.is_empty() {
            text.push_str("---\n");
        }
        text.push_str(&objects::service(
            NAMESPACE,
            e.name(),
            e.service_ip(),
            ECHO_PORT,
            ECHO_PORT,
            &[Backend {
                ip: pod.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                node: pod.node.clone(),
            }],
        ));
        names.push(format!("{NAMESPACE}/{}", e.name()));
    }
    lab.write_manifest(SERVICES_FILE, &text)?;
    lab.wait_services(&names, true).await?;
    progress(&format!(
        "Services {} in force on every node",
        names.join(", ")
    ));
    Ok(workload)
}

/// The world's ident server is part of the lab; started again if it died.
fn ensure_world(lab: &mut Lab) -> Result<(), LabError> {
    let alive = lab
        .state
        .processes
        .iter()
        .any(|p| p.what == "world ident-server" && sys::is_alive(p.pid));
    if !alive {
        lab.state
            .processes
            .retain(|p| p.what != "world ident-server");
        let ns = lab.layout.underlay_netns();
        lab.start_ident_server("world ident-server", &ns, WORLD_ID, WORLD_PORT)?;
    }
    Ok(())
}

/// Removes the workload: the policy and Services from the manifest directory, the pods (CNI
/// DEL, namespaces) and the servers. Best effort; returns what could not be removed.
pub async fn remove(lab: &mut Lab) -> Vec<String> {
    let mut problems = Vec::new();
    let mut had_services = false;
    for file in [POLICY_FILE, SERVICES_FILE] {
        match lab.remove_manifest(file) {
            Ok(was) => had_services |= was && file == SERVICES_FILE,
            Err(e) => problems.push(e.to_string()),
        }
    }
    let recorded: Vec<(String, String)> = lab
        .state
        .pods
        .iter()
        .filter(|p| p.namespace == NAMESPACE)
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    for (ns, name) in recorded {
        problems.extend(lab.remove_pod(&ns, &name));
    }
    // Pods of a run that crashed before recording them: their namespaces by name.
    for n in lab.state.nodes.clone() {
        for (_, spec) in pods(lab.state.nodes.len()) {
            let netns = lab.layout.pod_netns(n.index, &spec.name);
            if sys::netns_inode(&netns).is_some() {
                if let Err(e) = sys::delete_netns(&netns) {
                    problems.push(e.to_string());
                }
            }
        }
    }
    problems.extend(lab.stop_processes(PROCESS_PREFIX));
    if had_services {
        let names: Vec<String> = [Echo::SameNode, Echo::OtherNode]
            .iter()
            .map(|e| format!("{NAMESPACE}/{}", e.name()))
            .collect();
        if let Err(e) = lab.wait_services(&names, false).await {
            problems.push(e.to_string());
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_of_cilium_connectivity_test() {
        let one: Vec<String> = pods(1).iter().map(|(_, p)| p.cni_args()).collect();
        assert_eq!(
            one,
            [
                "K8S_POD_NAMESPACE=ciliate-test;K8S_POD_NAME=client;CILIATE_LABELS=kind=client,name=client",
                "K8S_POD_NAMESPACE=ciliate-test;K8S_POD_NAME=client2;CILIATE_LABELS=kind=client,name=client2,other=client",
                "K8S_POD_NAMESPACE=ciliate-test;K8S_POD_NAME=echo-same-node;CILIATE_LABELS=kind=echo,name=echo-same-node;CILIATE_PORTS=http=8080/tcp",
            ]
        );
        let two = pods(3);
        assert_eq!(two.len(), 4);
        assert_eq!(two[3].0, 1);
        assert_eq!(two[3].1.name, "echo-other-node");
    }
}
