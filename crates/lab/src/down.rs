//! `ciliate lab down`: removes everything of a lab, also after a crash. What `lab.json`
//! records is used first (pods get their CNI DEL while their agent still runs, processes are
//! named), and everything is also found by name, so a lost or half-written record, or a
//! `kill -9` of every process, still ends with nothing left:
//!
//! * processes carrying `CILIATE_LAB=<name>`, running in one of the lab's namespaces, or whose
//!   command line names the lab's state directory or namespaces;
//! * namespaces `ciliate-<name>-net`, `ciliate-<name>-node<i>` and `ciliate-<name>-node<i>-*`;
//! * bpffs pins `/sys/fs/bpf/ciliate/<name>-node<i>`, cgroups `<cgroup2>/ciliate/<name>-node<i>`;
//! * the state directory `/run/ciliate/lab/<name>/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::layout::{Layout, NetnsKind, LAB_ENV};
use crate::state::{LabState, StateError};
use crate::{cni, sys, world_dns, LabError, Progress};

/// Where the agents pin, per node.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/ciliate";

/// What is left of a lab.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leftovers {
    /// The state directory, if it exists.
    pub state_dir: Option<PathBuf>,
    /// Namespaces, pods first, the underlay last.
    pub netns: Vec<String>,
    /// Pin directories.
    pub pins: Vec<PathBuf>,
    /// Cgroups.
    pub cgroups: Vec<PathBuf>,
    /// Processes: (pid, command line).
    pub processes: Vec<(u32, String)>,
    /// Pods' `/etc/netns/<netns>/` directories (their resolver configuration).
    pub etc_netns: Vec<PathBuf>,
}

impl Leftovers {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.state_dir.is_none()
            && self.netns.is_empty()
            && self.pins.is_empty()
            && self.cgroups.is_empty()
            && self.processes.is_empty()
            && self.etc_netns.is_empty()
    }

    /// One line for people: what was found.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.state_dir {
            parts.push(format!("state {}", d.display()));
        }
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        if !self.netns.is_empty() {
            parts.push(count(self.netns.len(), "namespace", "namespaces"));
        }
        if !self.processes.is_empty() {
            parts.push(count(self.processes.len(), "process", "processes"));
        }
        if !self.pins.is_empty() {
            parts.push(count(self.pins.len(), "pin directory", "pin directories"));
        }
        if !self.cgroups.is_empty() {
            parts.push(count(self.cgroups.len(), "cgroup", "cgroups"));
        }
        if !self.etc_netns.is_empty() {
            parts.push(count(
                self.etc_netns.len(),
                "/etc/netns entry",
                "/etc/netns entries",
            ));
        }
        parts.join(", ")
    }
}

/// What `lab down` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownReport {
    /// The lab.
    pub name: String,
    /// One line per thing removed.
    pub removed: Vec<String>,
    /// What could not be removed, or was odd (a broken `lab.json`).
    pub problems: Vec<String>,
    /// What is still there after everything was tried.
    pub left: Leftovers,
}

/// Finds what is left of a lab, without changing anything.
pub fn find(layout: &Layout) -> Leftovers {
    let state_dir = layout.state_dir();
    let mut netns: Vec<(NetnsKind, String)> = sys::list_netns()
        .into_iter()
        .filter_map(|n| layout.classify_netns(&n).map(|k| (k, n)))
        .collect();
    netns.sort();
    let inodes: Vec<u64> = netns
        .iter()
        .filter_map(|(_, n)| sys::netns_inode(n))
        .collect();
    let mine = sys::self_and_ancestors();
    let state_mark = format!("{}/", state_dir.display());
    let netns_mark = format!("{}/{}", sys::NETNS_DIR, layout.netns_prefix());
    let processes = sys::pids()
        .into_iter()
        .filter(|p| !mine.contains(p) && sys::is_alive(*p))
        .filter_map(|pid| {
            let cmd = sys::cmdline(pid);
            let ours = sys::has_env(pid, LAB_ENV, layout.name())
                || sys::netns_inode_of_pid(pid).is_some_and(|i| inodes.contains(&i))
                || cmd.contains(&state_mark)
                || cmd.contains(&netns_mark);
            ours.then_some((pid, cmd))
        })
        .collect();
    let node_dirs = |root: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .filter(|e| layout.is_node_name(&e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    Leftovers {
        state_dir: state_dir.exists().then_some(state_dir),
        netns: netns.into_iter().map(|(_, n)| n).collect(),
        pins: node_dirs(Path::new(BPFFS_DIR)),
        cgroups: sys::cgroup2_root()
            .map(|r| node_dirs(&r.join("ciliate")))
            .unwrap_or_default(),
        processes,
        etc_netns: world_dns::etc_netns_entries(layout),
    }
}

/// Removes lab `name`. Idempotent: a lab that is not there is nothing to do.
pub fn down(name: &str, progress: Progress<'_>) -> Result<DownReport, LabError> {
    let layout = Layout::new(name)?;
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let mut report = DownReport {
        name: name.to_owned(),
        ..DownReport::default()
    };
    let mut note = |report: &mut DownReport, line: String| {
        progress(&line);
        report.removed.push(line);
    };
    let state = match LabState::load(&layout.state_file()) {
        Ok(s) => Some(s),
        Err(StateError::Missing(_)) => None,
        Err(e) => {
            report
                .problems
                .push(format!("{e}; finding what is left by name"));
            None
        }
    };
    let found = find(&layout);

    // Pods first, while their agents still run, as a runtime tears pods down.
    if let Some(state) = &state {
        if let Ok(bins) = crate::bins::Binaries::locate() {
            for pod in &state.pods {
                let Some(node) = state.node(&pod.node) else {
                    continue;
                };
                let agent_up = node.agent_pid.is_some_and(sys::is_alive);
                if !agent_up || sys::netns_inode(&pod.netns).is_none() {
                    continue;
                }
                match cni::del(
                    &bins.cni,
                    &node.netns,
                    &node.agent_socket,
                    &pod.netns,
                    &pod.container_id,
                ) {
                    Ok(()) => note(&mut report, format!("CNI DEL pod {}", pod.reference())),
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
        }
    }

    // Then every process: nothing may hold a namespace, a pin or a cgroup. Looked for again
    // after each round: an agent being stopped may still start a process (its supervisor
    // restarts the L7 proxy it sees die), which outlives it by design.
    let mut found = found;
    let mut stuck_before: Vec<u32> = Vec::new();
    for round in 0..3 {
        if round > 0 {
            found = find(&layout);
            found.processes.retain(|(p, _)| !stuck_before.contains(p));
        }
        if found.processes.is_empty() {
            break;
        }
        let pids: Vec<u32> = found.processes.iter().map(|(p, _)| *p).collect();
        let stuck = sys::terminate(&pids, Duration::from_secs(3));
        stuck_before.extend(&stuck);
        for (pid, cmd) in &found.processes {
            if stuck.contains(pid) {
                report
                    .problems
                    .push(format!("process {pid} ({cmd}) would not die"));
                continue;
            }
            let what = state
                .as_ref()
                .and_then(|s| s.processes.iter().find(|p| p.pid == *pid))
                .map(|p| p.what.clone())
                .unwrap_or_else(|| short(cmd));
            note(&mut report, format!("stopped {what} (pid {pid})"));
        }
    }

    // Looked for again now that nothing of the lab runs: a process stopped mid-start (an agent
    // interrupted with `lab up`) may have made a pin or a cgroup after the first look.
    let found = find(&layout);
    for ns in &found.netns {
        match sys::delete_netns(ns) {
            Ok(()) => note(&mut report, format!("deleted netns {ns}")),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    for dir in &found.etc_netns {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => note(&mut report, format!("removed {}", dir.display())),
            Err(e) => report
                .problems
                .push(format!("removing {}: {e}", dir.display())),
        }
    }
    for pin in &found.pins {
        match std::fs::remove_dir_all(pin) {
            Ok(()) => note(&mut report, format!("removed pins {}", pin.display())),
            Err(e) => report
                .problems
                .push(format!("removing {}: {e}", pin.display())),
        }
    }
    // The shared parent goes too once no node of any lab or agent is left (else it stays).
    let _ = std::fs::remove_dir(BPFFS_DIR);
    for cg in &found.cgroups {
        match remove_cgroup(cg) {
            Ok(()) => note(&mut report, format!("removed cgroup {}", cg.display())),
            Err(e) => report
                .problems
                .push(format!("removing cgroup {}: {e}", cg.display())),
        }
    }
    if let Some(cg) = found.cgroups.first().and_then(|c| c.parent()) {
        let _ = std::fs::remove_dir(cg);
    }
    if let Some(dir) = &found.state_dir {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => note(&mut report, format!("removed {}", dir.display())),
            Err(e) => report
                .problems
                .push(format!("removing {}: {e}", dir.display())),
        }
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    report.left = find(&layout);
    Ok(report)
}

/// A cgroup and the cgroups below it, deepest first (only empty cgroups can go).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    std::fs::remove_dir(dir)
}

/// A command line cut for a report line.
fn short(cmd: &str) -> String {
    let mut s: String = cmd.chars().take(80).collect();
    if s.len() < cmd.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_count_what_is_left() {
        let l = Leftovers {
            state_dir: Some("/run/ciliate/lab/lab".into()),
            netns: vec!["a".into(), "b".into()],
            pins: vec!["/sys/fs/bpf/ciliate/lab-node0".into()],
            cgroups: Vec::new(),
            processes: vec![(1, "x".into())],
            etc_netns: Vec::new(),
        };
        assert_eq!(
            l.summary(),
            "state /run/ciliate/lab/lab, 2 namespaces, 1 process, 1 pin directory"
        );
        assert!(!l.is_empty());
        assert!(Leftovers::default().is_empty());
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(&"x".repeat(100)).len(), 83);
    }
}
