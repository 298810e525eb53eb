//! The demo app of `ciliate lab up`: frontends and backends spread over the nodes, each
//! running an ident server on 8080, a Service `backend` in front of every backend, and a policy
//! letting only frontends reach the backends (`examples/lab/demo-policy.yaml`).

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::cni::PodSpec;
use crate::lab::policy_refs;
use crate::objects::{self, Backend};
use crate::{Lab, LabError, Progress};

/// The demo's Kubernetes namespace.
pub const NAMESPACE: &str = "demo";
/// The Service's cluster IP.
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The Service's port.
pub const SERVICE_PORT: u16 = 80;
/// Where the pods listen.
pub const POD_PORT: u16 = 8080;
/// The demo's policy.
pub const POLICY: &str = include_str!("../../../examples/lab/demo-policy.yaml");
/// Its file in the manifest directory.
pub const POLICY_FILE: &str = "demo-policy.yaml";
/// The Service's file in the manifest directory.
pub const SERVICE_FILE: &str = "demo-service.yaml";

/// The demo pods: `per_node` on each node, frontends and backends taking turns, numbered per
/// kind (`frontend-0`, `backend-0`, `frontend-1`, ...). Returns (node index, pod).
pub fn pods(nodes: usize, per_node: usize) -> Vec<(usize, PodSpec)> {
    let mut out = Vec::new();
    let (mut frontends, mut backends) = (0, 0);
    for node in 0..nodes {
        for _ in 0..per_node {
            let global = out.len();
            let (app, n) = if global % 2 == 0 {
                frontends += 1;
                ("frontend", frontends - 1)
            } else {
                backends += 1;
                ("backend", backends - 1)
            };
            let spec = PodSpec::new(NAMESPACE, &format!("{app}-{n}"), &[("app", app)])
                .with_ports(&format!("http={POD_PORT}/tcp"));
            out.push((node, spec));
        }
    }
    out
}

/// Deploys the demo onto a lab whose agents are up.
pub async fn deploy(
    lab: &mut Lab,
    per_node: usize,
    progress: Progress<'_>,
) -> Result<(), LabError> {
    let mut backends = Vec::new();
    for (node, spec) in pods(lab.state.nodes.len(), per_node) {
        let pod = lab.add_pod(node, &spec)?;
        let ip = pod.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        lab.start_ident_server(
            &format!("ident-server {}", pod.reference()),
            &pod.netns,
            &pod.name,
            POD_PORT,
        )?;
        progress(&format!(
            "Pod {} on {}: {ip}, ident server on :{POD_PORT}",
            pod.reference(),
            pod.node
        ));
        if spec.labels.get("app").map(String::as_str) == Some("backend") {
            backends.push(Backend {
                ip,
                node: pod.node.clone(),
            });
        }
    }
    lab.state.demo = true;
    lab.save()?;
    let service = objects::service(
        NAMESPACE,
        "backend",
        SERVICE_IP,
        SERVICE_PORT,
        POD_PORT,
        &backends,
    );
    lab.write_manifest(SERVICE_FILE, &service)?;
    lab.write_manifest(POLICY_FILE, POLICY)?;
    if !backends.is_empty() {
        lab.wait_services(&[format!("{NAMESPACE}/backend")], true)
            .await?;
        progress(&format!(
            "Service {NAMESPACE}/backend: {SERVICE_IP}:{SERVICE_PORT} -> {} backends on :{POD_PORT}",
            backends.len()
        ));
    }
    let refs = policy_refs(POLICY_FILE, POLICY)?;
    lab.wait_policies(&refs, |r| r.namespace.as_deref() == Some(NAMESPACE))
        .await?;
    progress("Policy demo/backend-from-frontend: only frontends reach the backends, on 8080/TCP");
    Ok(())
}

/// What to try once a lab is up: for people, printed by `ciliate lab up`.
pub fn how_to_look_around(lab: &Lab) -> String {
    let name = lab.name();
    let flag = crate::name_flag(name);
    let mut s = String::from("How to look around:\n");
    if let Some(n) = lab.state.nodes.first() {
        let _ = writeln!(
            s,
            "  ciliate --socket {} endpoint list      # the pods of {}",
            n.agent_socket.display(),
            n.name
        );
        let _ = writeln!(
            s,
            "  eval $(ciliate lab env{flag} 0)                 # then plain `ciliate ...` talks to {}",
            n.name
        );
        let _ = writeln!(
            s,
            "  ciliate observe --hubble-socket {} -f   # flows on {}",
            n.hubble_socket.display(),
            n.name
        );
    }
    if let Some(r) = &lab.state.relay {
        let _ = writeln!(
            s,
            "  ciliate observe --server {} -f   # flows of every node, merged (the relay; hubble observe --server works too)",
            r.address
        );
    }
    let frontend = lab.state.pods.iter().find(|p| {
        p.namespace == NAMESPACE && p.labels.get("app").map(String::as_str) == Some("frontend")
    });
    let backend = lab.state.pods.iter().find(|p| {
        p.namespace == NAMESPACE && p.labels.get("app").map(String::as_str) == Some("backend")
    });
    if let (Some(f), Some(b)) = (frontend, backend) {
        let bench = lab.bins.bench.display();
        let _ = writeln!(
            s,
            "  nsenter --net=/var/run/netns/{} {bench} probe --dst {SERVICE_IP} --port {SERVICE_PORT} --count 6",
            f.netns
        );
        if let Some(ip) = b.ip {
            let _ = writeln!(
                s,
                "  nsenter --net=/var/run/netns/{} ping -c1 -W1 {ip}   # dropped: only 8080/TCP is allowed",
                f.netns
            );
        }
    }
    let _ = writeln!(s, "  ciliate lab status{flag}");
    let _ = writeln!(
        s,
        "  ciliate connectivity test{}",
        if name == crate::DEFAULT_NAME {
            String::new()
        } else {
            format!(" --lab {name}")
        }
    );
    if let Some(n) = lab.state.nodes.first() {
        let _ = writeln!(
            s,
            "  ciliate observe --hubble-socket {} --type l7   # HTTP requests judged by {}'s proxy \
             (after `ciliate connectivity test --test '^l7-'`, or a policy with rules.http)",
            n.hubble_socket.display(),
            n.name
        );
    }
    let _ = writeln!(s, "  ciliate lab down{flag}");
    let _ = write!(
        s,
        "Manifests written to {} reach every node.",
        lab.layout.manifest_dir().display()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_take_turns_and_spread() {
        let names: Vec<(usize, String)> =
            pods(2, 2).into_iter().map(|(n, p)| (n, p.name)).collect();
        assert_eq!(
            names,
            [
                (0, "frontend-0".to_owned()),
                (0, "backend-0".to_owned()),
                (1, "frontend-1".to_owned()),
                (1, "backend-1".to_owned())
            ]
        );
        // One per node still gives both kinds.
        let one: Vec<String> = pods(2, 1).into_iter().map(|(_, p)| p.name).collect();
        assert_eq!(one, ["frontend-0", "backend-0"]);
        assert!(pods(3, 0).is_empty());
        let (_, p) = &pods(1, 1)[0];
        assert_eq!(p.labels.get("app").map(String::as_str), Some("frontend"));
        assert_eq!(p.ports.as_deref(), Some("http=8080/tcp"));
    }

    #[test]
    fn the_policy_is_a_valid_policy() {
        let loaded = ciliate_policy::load(POLICY_FILE, POLICY).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(loaded.policies.len(), 1);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let refs = policy_refs(POLICY_FILE, POLICY).expect("refs");
        assert_eq!(refs.len(), 1);
    }
}
