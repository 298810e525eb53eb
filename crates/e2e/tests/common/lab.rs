//! A lab (`ciliate lab up`) for one test, removed by `ciliate lab down` when the guard drops,
//! also when the test fails (then with the last lines of its logs).

use std::process::Output;

use ciliate_testutil::unique_name;
use serde_json::Value;

use super::{ciliate, text};

/// A lab for one test, removed on drop.
pub struct LabGuard {
    /// The lab's unique name.
    pub name: String,
}

impl LabGuard {
    /// `ciliate lab up --name <unique> <args>`; insists it worked.
    pub fn up(args: &[&str]) -> Self {
        let name = unique_name("lab");
        let guard = Self { name };
        let mut all = vec!["lab", "up", "--name", &guard.name];
        all.extend_from_slice(args);
        let out = ciliate(&all);
        assert!(out.status.success(), "lab up {args:?}: {}", text(&out));
        guard
    }

    /// `/run/ciliate/lab/<name>`: lab.json, manifests, logs.
    pub fn state_dir(&self) -> String {
        format!("/run/ciliate/lab/{}", self.name)
    }

    /// `ciliate lab down --name <name>`.
    pub fn down(&self) -> Output {
        ciliate(&["lab", "down", "--name", &self.name])
    }

    /// `ciliate connectivity test --lab <name> -o json`: exit code and report.
    pub fn connectivity(&self, extra: &[&str]) -> (Option<i32>, Value, String) {
        let mut args = vec!["connectivity", "test", "--lab", &self.name, "-o", "json"];
        args.extend_from_slice(extra);
        let out = ciliate(&args);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("connectivity test output is not JSON ({e}): {}", text(&out))
        });
        (out.status.code(), report, text(&out))
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["node0/agent.log", "node1/agent.log", "etcd.log"] {
                let path = format!("{}/{log}", self.state_dir());
                if let Ok(t) = std::fs::read_to_string(&path) {
                    let tail: Vec<&str> = t.lines().rev().take(30).collect();
                    eprintln!("---- last lines of {path} ----");
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        let out = self.down();
        if !out.status.success() {
            eprintln!("lab down {} failed: {}", self.name, text(&out));
        }
    }
}
