//! `ciliate lab list`: the labs on this machine, from their state directories and, for what
//! a crash left without one, from their namespaces.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::layout::{check_name, Layout, STATE_ROOT};
use crate::state::LabState;
use crate::sys;

/// One lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabSummary {
    /// Its name.
    pub name: String,
    /// `up` (it has a `lab.json`) or `leftovers` (namespaces without one: `lab down` them).
    pub state: String,
    /// Nodes recorded.
    pub nodes: usize,
    /// Agents running, of those nodes.
    pub agents_running: usize,
    /// Pods recorded.
    pub pods: usize,
    /// When it was made, RFC 3339 (empty for leftovers).
    pub created_at: String,
    /// Its network namespaces now.
    pub netns: usize,
}

/// Every lab found under [`STATE_ROOT`] or by its namespaces, by name.
pub fn list() -> Vec<LabSummary> {
    list_under(Path::new(STATE_ROOT), &sys::list_netns())
}

/// [`list`] with the state root and the namespaces given (tests).
pub fn list_under(root: &Path, netns: &[String]) -> Vec<LabSummary> {
    let mut labs: BTreeMap<String, LabSummary> = BTreeMap::new();
    let entries = std::fs::read_dir(root)
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default();
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(layout) = Layout::with_root(&name, root) else {
            continue;
        };
        let summary = match LabState::load(&layout.state_file()) {
            Ok(s) => LabSummary {
                name: name.clone(),
                state: "up".into(),
                nodes: s.nodes.len(),
                agents_running: s
                    .nodes
                    .iter()
                    .filter(|n| n.agent_pid.is_some_and(sys::is_alive))
                    .count(),
                pods: s.pods.len(),
                created_at: s.created_at,
                netns: 0,
            },
            Err(_) => LabSummary {
                name: name.clone(),
                state: "leftovers".into(),
                nodes: 0,
                agents_running: 0,
                pods: 0,
                created_at: String::new(),
                netns: 0,
            },
        };
        labs.insert(name, summary);
    }
    for ns in netns {
        // ciliate-<name>-net, ciliate-<name>-node<i>, ciliate-<name>-node<i>-<pod>
        let Some(name) = ns
            .strip_prefix("ciliate-")
            .and_then(|rest| rest.split('-').next())
            .filter(|n| check_name(n).is_ok())
        else {
            continue;
        };
        let Ok(layout) = Layout::with_root(name, root) else {
            continue;
        };
        if layout.classify_netns(ns).is_none() {
            continue;
        }
        labs.entry(name.to_owned())
            .or_insert_with(|| LabSummary {
                name: name.to_owned(),
                state: "leftovers".into(),
                nodes: 0,
                agents_running: 0,
                pods: 0,
                created_at: String::new(),
                netns: 0,
            })
            .netns += 1;
    }
    labs.into_values().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labs_come_from_state_dirs_and_namespaces() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::with_root("one", root.path()).unwrap();
        std::fs::create_dir_all(layout.state_dir()).unwrap();
        let state = LabState {
            version: crate::state::FORMAT_VERSION,
            name: "one".into(),
            etcd_endpoint: String::new(),
            underlay_cidr: String::new(),
            manifest_dir: layout.manifest_dir(),
            nodes: Vec::new(),
            pods: Vec::new(),
            processes: Vec::new(),
            demo: false,
            relay: None,
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        state.save(&layout.state_file()).unwrap();
        std::fs::create_dir_all(root.path().join("Not-A-Lab")).unwrap();
        let netns: Vec<String> = [
            "ciliate-one-net",
            "ciliate-one-node0",
            "ciliate-two-node1",
            "ciliate-two-node1-web",
            "cni-1234",
            "ciliate-x-y-z",
        ]
        .map(String::from)
        .to_vec();
        let labs = list_under(root.path(), &netns);
        let names: Vec<(&str, &str, usize)> = labs
            .iter()
            .map(|l| (l.name.as_str(), l.state.as_str(), l.netns))
            .collect();
        assert_eq!(names, [("one", "up", 2), ("two", "leftovers", 2)]);
        assert_eq!(labs[0].created_at, "2026-01-01T00:00:00Z");
    }
}
