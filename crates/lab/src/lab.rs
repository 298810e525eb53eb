//! A lab that is up: its layout, its record and its binaries, and what can be done to it once
//! it runs: add and remove pods, start servers, write manifests into the directory every agent
//! watches and wait until every agent has them in force.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use ciliate_client::Client;
use ciliate_model::manifest::split_documents;
use ciliate_model::policy::{PolicyKind, PolicyRef};

use crate::bins::Binaries;
use crate::cni::{self, PodSpec};
use crate::layout::Layout;
use crate::state::{LabState, NodeState, PodState, StateError};
use crate::sys;
use crate::LabError;

/// How long an agent takes at most to see a change of the manifest directory (it polls every
/// 2 s) and put it in force.
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long an API call to an agent of the lab may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// A lab that is up.
#[derive(Debug)]
pub struct Lab {
    /// Its names and paths.
    pub layout: Layout,
    /// Its record.
    pub state: LabState,
    /// The binaries it runs.
    pub bins: Binaries,
}

impl Lab {
    /// Opens lab `name` from its `lab.json`.
    pub fn open(name: &str) -> Result<Self, LabError> {
        let layout = Layout::new(name)?;
        let state = match LabState::load(&layout.state_file()) {
            Ok(s) => s,
            Err(StateError::Missing(p)) => {
                return Err(LabError::NotUp {
                    name: name.to_owned(),
                    reason: format!("{} does not exist", p.display()),
                })
            }
            Err(e @ StateError::Corrupt { .. }) => {
                return Err(LabError::Failed(format!(
                    "{e}: the lab is broken; remove it with `ciliate lab down{}` and start \
                     it again",
                    crate::name_flag(name)
                )))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            layout,
            state,
            bins: Binaries::locate()?,
        })
    }

    /// Writes `lab.json`.
    pub fn save(&self) -> Result<(), LabError> {
        self.state.save(&self.layout.state_file())?;
        Ok(())
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        self.layout.name()
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> Result<&NodeState, LabError> {
        self.state.nodes.get(index).ok_or_else(|| {
            LabError::Failed(format!(
                "lab {:?} has no node {index} (it has {})",
                self.name(),
                self.state.nodes.len()
            ))
        })
    }

    /// The API client of a node's agent.
    pub fn client(node: &NodeState) -> Client {
        Client::new(&node.agent_socket).with_timeout(API_TIMEOUT)
    }

    /// Makes a pod on node `index`: its namespace, then CNI ADD through that node's agent.
    /// The pod is recorded before the ADD, so that a crash in between still leaves a record
    /// `lab down` uses.
    pub fn add_pod(&mut self, index: usize, spec: &PodSpec) -> Result<PodState, LabError> {
        let node = self.node(index)?.clone();
        if self.state.pod(&spec.namespace, &spec.name).is_some() {
            return Err(LabError::Failed(format!(
                "pod {}/{} exists already in lab {:?}",
                spec.namespace,
                spec.name,
                self.name()
            )));
        }
        let netns = self.layout.pod_netns(index, &spec.name);
        let container_id = format!("{}-{}-{}", self.name(), spec.namespace, spec.name);
        let mut pod = PodState {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            labels: spec.labels.clone(),
            node: node.name.clone(),
            netns: netns.clone(),
            ip: None,
            container_id: container_id.clone(),
        };
        self.state.pods.push(pod.clone());
        self.save()?;
        sys::add_netns(&netns)?;
        crate::world_dns::write_pod_resolv_conf(&netns)?;
        let ip = cni::add(
            &self.bins.cni,
            &node.netns,
            &node.agent_socket,
            &netns,
            &container_id,
            spec,
        )?;
        pod.ip = Some(ip);
        if let Some(p) = self
            .state
            .pods
            .iter_mut()
            .find(|p| p.namespace == spec.namespace && p.name == spec.name)
        {
            p.ip = Some(ip);
        }
        self.save()?;
        Ok(pod)
    }

    /// Removes a pod: its processes, CNI DEL, its namespace, its record. Best effort: returns
    /// what could not be done.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Vec<String> {
        let Some(pod) = self.state.pod(namespace, name).cloned() else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        if let Some(inode) = sys::netns_inode(&pod.netns) {
            let mine = sys::self_and_ancestors();
            let inside: Vec<u32> = sys::pids()
                .into_iter()
                .filter(|p| !mine.contains(p) && sys::netns_inode_of_pid(*p) == Some(inode))
                .collect();
            for pid in sys::terminate(&inside, Duration::from_secs(2)) {
                problems.push(format!("process {pid} in {} would not die", pod.netns));
            }
        }
        if let Some(node) = self.state.node(&pod.node).cloned() {
            if let Err(e) = cni::del(
                &self.bins.cni,
                &node.netns,
                &node.agent_socket,
                &pod.netns,
                &pod.container_id,
            ) {
                problems.push(e.to_string());
            }
        }
        if sys::netns_inode(&pod.netns).is_some() {
            if let Err(e) = sys::delete_netns(&pod.netns) {
                problems.push(e.to_string());
            }
        }
        if let Err(e) = crate::world_dns::remove_pod_resolv_conf(&pod.netns) {
            problems.push(format!("removing /etc/netns/{}: {e}", pod.netns));
        }
        self.state
            .pods
            .retain(|p| !(p.namespace == namespace && p.name == name));
        self.state
            .processes
            .retain(|p| p.netns.as_deref() != Some(pod.netns.as_str()));
        if let Err(e) = self.save() {
            problems.push(e.to_string());
        }
        problems
    }

    /// Starts `ciliate-bench ident-server --id <id> --port <port>` (TCP and UDP) in `netns`,
    /// records it as `what` and waits until it accepts connections.
    pub fn start_ident_server(
        &mut self,
        what: &str,
        netns: &str,
        id: &str,
        port: u16,
    ) -> Result<u32, LabError> {
        self.start_bench_server(what, netns, "ident-server", id, port)
    }

    /// Starts `ciliate-bench http-ident-server` (HTTP/1.1, answers `<id> <METHOD> <path>`) in
    /// `netns` on `port`, recorded as `what`; returns once it accepts connections.
    pub fn start_http_server(
        &mut self,
        what: &str,
        netns: &str,
        id: &str,
        port: u16,
    ) -> Result<u32, LabError> {
        self.start_bench_server(what, netns, "http-ident-server", id, port)
    }

    fn start_bench_server(
        &mut self,
        what: &str,
        netns: &str,
        mode: &str,
        id: &str,
        port: u16,
    ) -> Result<u32, LabError> {
        let log = self.layout.state_dir().join("servers.log");
        let args = vec![
            mode.to_owned(),
            "--id".to_owned(),
            id.to_owned(),
            "--port".to_owned(),
            port.to_string(),
        ];
        let mut child = sys::spawn_daemon(self.name(), netns, &self.bins.bench, &args, &[], &log)?;
        let pid = child.id();
        self.state.add_process(what, pid, Some(netns));
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = sys::netns_path(netns);
            let up = sys::in_netns(path, move || {
                TcpStream::connect_timeout(
                    &(Ipv4Addr::LOCALHOST, port).into(),
                    Duration::from_millis(200),
                )
                .is_ok()
            })?;
            if up {
                return Ok(pid);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LabError::Failed(format!(
                    "{what} in {netns} exited with {status}:\n{}",
                    sys::tail(&log, 5)
                )));
            }
            if Instant::now() > deadline {
                return Err(LabError::Failed(format!(
                    "{what} in {netns} does not listen on port {port} after 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the recorded processes whose `what` starts with `prefix` and forgets them; only
    /// processes that still carry this lab's mark are signalled (a pid may have been reused).
    pub fn stop_processes(&mut self, prefix: &str) -> Vec<String> {
        let (stop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.processes)
            .into_iter()
            .partition(|p| p.what.starts_with(prefix));
        self.state.processes = keep;
        let pids: Vec<u32> = stop
            .iter()
            .map(|p| p.pid)
            .filter(|p| sys::has_env(*p, crate::layout::LAB_ENV, self.layout.name()))
            .collect();
        let mut problems: Vec<String> = sys::terminate(&pids, Duration::from_secs(2))
            .into_iter()
            .map(|p| format!("process {p} would not die"))
            .collect();
        if let Err(e) = self.save() {
            problems.push(e.to_string());
        }
        problems
    }

    /// Writes a manifest into the lab's manifest directory, atomically (the agents skip dot
    /// files, so they never read half of it).
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<(), LabError> {
        let dir = self.layout.manifest_dir();
        let tmp = dir.join(format!(".{file}.tmp"));
        let path = dir.join(file);
        std::fs::write(&tmp, text)
            .map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    /// Removes a manifest from the manifest directory; true when it was there.
    pub fn remove_manifest(&self, file: &str) -> Result<bool, LabError> {
        let path = self.layout.manifest_dir().join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(LabError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Waits until every agent lists exactly `expected` among the policies `in_scope` selects,
    /// and then until the policy revision it has once it lists them is in force on every
    /// endpoint (`ciliate policy wait`): the agent bumps its revision before it lists a change
    /// of the manifest directory, so that revision includes the change.
    pub async fn wait_policies(
        &self,
        expected: &BTreeSet<PolicyRef>,
        in_scope: impl Fn(&PolicyRef) -> bool,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + MANIFEST_TIMEOUT;
        for node in &self.state.nodes {
            let client = Self::client(node);
            loop {
                let seen: Result<BTreeSet<PolicyRef>, String> = client
                    .policies()
                    .await
                    .map(|v| {
                        v.into_iter()
                            .map(|p| p.policy)
                            .filter(|p| in_scope(p))
                            .collect()
                    })
                    .map_err(|e| e.to_string());
                if seen.as_ref() == Ok(expected) {
                    break;
                }
                if Instant::now() > deadline {
                    let status = client.status().await.ok();
                    let problems = status.map(|s| s.problems.join("; ")).unwrap_or_default();
                    return Err(LabError::Failed(format!(
                        "the agent of {} does not have the policies {} in force after {} s \
                         (it has {}){}",
                        node.name,
                        names(expected),
                        MANIFEST_TIMEOUT.as_secs(),
                        match &seen {
                            Ok(s) => names(s),
                            Err(e) => format!("no answer: {e}"),
                        },
                        if problems.is_empty() {
                            String::new()
                        } else {
                            format!("; its problems: {problems}")
                        }
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Self::wait_revision(node, &client, deadline).await?;
        }
        Ok(())
    }

    /// Waits until the policy revision `node` has now is in force on all its endpoints.
    async fn wait_revision(
        node: &NodeState,
        client: &Client,
        deadline: Instant,
    ) -> Result<(), LabError> {
        let no_answer = |e: ciliate_client::ClientError| {
            LabError::Failed(format!(
                "the agent of {} does not say its policy revision: {e}",
                node.name
            ))
        };
        let want = client.policy_revision().await.map_err(no_answer)?.revision;
        loop {
            let now = client.policy_revision().await.map_err(no_answer)?;
            if now.is_in_force(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let problems = client
                    .status()
                    .await
                    .map(|s| s.problems.join("; "))
                    .unwrap_or_default();
                return Err(LabError::Failed(format!(
                    "the agent of {} does not have policy revision {want} in force after {} s \
                     (its endpoints hold revision {}){}",
                    node.name,
                    MANIFEST_TIMEOUT.as_secs(),
                    now.in_force,
                    if problems.is_empty() {
                        String::new()
                    } else {
                        format!("; its problems: {problems}")
                    }
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every agent has the Services `names` (`namespace/name`) with at least one
    /// backend behind each frontend (`present`), or none of them (`!present`).
    pub async fn wait_services(&self, wanted: &[String], present: bool) -> Result<(), LabError> {
        let deadline = Instant::now() + MANIFEST_TIMEOUT;
        for node in &self.state.nodes {
            let client = Self::client(node);
            loop {
                let done = match client.services().await {
                    Ok(list) => wanted.iter().all(|w| {
                        let s = list.iter().find(|s| &s.full_name() == w);
                        match s {
                            Some(s) => {
                                present
                                    && !s.frontends.is_empty()
                                    && s.frontends.iter().all(|f| !f.backends.is_empty())
                            }
                            None => !present,
                        }
                    }),
                    Err(_) => false,
                };
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LabError::Failed(format!(
                        "the agent of {} does not {} the Services {} after {} s (see `ciliate \
                         --socket {} service list`)",
                        node.name,
                        if present { "serve" } else { "drop" },
                        wanted.join(", "),
                        MANIFEST_TIMEOUT.as_secs(),
                        node.agent_socket.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Checks that every agent answers and is healthy.
    pub async fn check_agents(&self) -> Result<(), LabError> {
        for node in &self.state.nodes {
            match Self::client(node).status().await {
                Ok(s) if s.health == "ok" => {}
                Ok(s) => {
                    return Err(LabError::Failed(format!(
                        "the agent of {} is {}: {} (log: {})",
                        node.name,
                        s.health,
                        s.problems.join("; "),
                        node.log.display()
                    )))
                }
                Err(e) => {
                    return Err(LabError::Failed(format!(
                        "the agent of {} does not answer: {e}; see its log {} or start the lab \
                         again (`ciliate lab down{n}` then `ciliate lab up{n}`)",
                        node.name,
                        node.log.display(),
                        n = crate::name_flag(self.name())
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The policies a manifest's text defines (namespaced kinds default to `default`).
pub fn policy_refs(source: &str, text: &str) -> Result<BTreeSet<PolicyRef>, LabError> {
    let docs =
        split_documents(source, text).map_err(|e| LabError::Failed(format!("{source}: {e}")))?;
    let mut out = BTreeSet::new();
    for d in docs {
        let o = &d.object;
        let Some(kind) = o["kind"].as_str().and_then(PolicyKind::from_kind) else {
            continue;
        };
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = kind.is_namespaced().then(|| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned()
        });
        out.insert(PolicyRef {
            kind,
            namespace,
            name,
        });
    }
    Ok(out)
}

fn names(set: &BTreeSet<PolicyRef>) -> String {
    if set.is_empty() {
        return "<none>".into();
    }
    set.iter()
        .map(|p| format!("{}/{}", p.kind, p.short_name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a path exists (a socket, a pin).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn policy_refs_of_a_manifest() {
        let refs = policy_refs(
            "x.yaml",
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: t}\nspec: {endpointSelector: {}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec: {podSelector: {}}\n---\n\
             apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec: {endpointSelector: {}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        )
        .unwrap();
        let got: Vec<String> = refs
            .iter()
            .map(|r| format!("{}/{}", r.kind, r.short_name()))
            .collect();
        assert_eq!(
            got,
            [
                "NetworkPolicy/default/b",
                "CiliumNetworkPolicy/t/a",
                "CiliumClusterwideNetworkPolicy/c"
            ]
        );
    }
}
