//! `ciliate connectivity test`: what passes and what is dropped on a lab, scenario by
//! scenario (`ciliate_lab::connectivity`).

use std::io::Write;

use anyhow::anyhow;
use ciliate_lab::connectivity::scenarios::Expect;
use ciliate_lab::connectivity::{Actual, TestOptions, TestReport};
use ciliate_lab::{LabError, DEFAULT_NAME};
use clap::{Args, Subcommand};

use super::{Hinted, Outcome};
use crate::output::{self, table, Format};

/// `ciliate connectivity ...`
#[derive(Debug, Subcommand)]
pub enum ConnectivityCommand {
    /// Check pod, Service, node and world connectivity and policy enforcement on a lab
    #[command(
        long_about = "Check connectivity and policy enforcement on a lab (`ciliate lab up`), in \
            the spirit of `cilium connectivity test`.\n\n\
            Deploys its own workload in namespace ciliate-test through the CNI plugin: client \
            and client2 (kind=client) and echo-same-node (kind=echo) on node 0, echo-other-node \
            on node 1 (with 2 nodes or more), each echo an ident server on 8080 (TCP and UDP) \
            behind a Service of its name; an ident server on 8081 in each node's own namespace. \
            Then runs the scenarios: no policy (pod to pod on the same and the other node, to \
            Services, to the node, to the world), then policies from examples/connectivity/ as \
            NetworkPolicy and as CiliumNetworkPolicy (client-ingress, all-ingress-deny, \
            all-egress-deny, echo-ingress, client-egress with matchLabels and with \
            matchExpressions, allow-all-except-world, deny wins over allow, CIDR with except, \
            ICMP). Each policy is written into the lab's manifest directory and in force on \
            every agent before its cells are probed.\n\n\
            Every cell is a real TCP connection (reading the ident line), UDP datagram or ping \
            from the client's network namespace; every expected drop must also show in the \
            Hubble API of the node that dropped it with the right reason (133 POLICY_DENIED, \
            181 POLICY_DENY). Cells needing a second node are skipped on a one-node lab.\n\n\
            The workload is removed afterwards, also on failure or Ctrl-C, unless --keep. Exit \
            code 0 when every cell passes, 1 otherwise.",
        after_help = "Examples:\n  \
            ciliate connectivity test\n  \
            ciliate connectivity test --test 'client-ingress|echo-ingress'\n  \
            ciliate connectivity test --lab dev -o json | jq '.scenarios[].cells[] | select(.ok | not)'"
    )]
    Test(TestArgs),
}

/// Arguments of `ciliate connectivity test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The lab to test (also --name; or CILIATE_LAB_NAME, as `lab env` sets it).
    #[arg(
        long,
        visible_alias = "name",
        env = ciliate_lab::layout::LAB_NAME_ENV,
        value_name = "NAME",
        default_value = DEFAULT_NAME,
        value_parser = super::lab::parse_name
    )]
    pub lab: String,
    /// Only the scenarios whose name matches this regular expression.
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    pub test: Option<ciliate_lab::connectivity::Regex>,
    /// Leave the test workload in place afterwards.
    #[arg(long)]
    pub keep: bool,
}

fn parse_regex(s: &str) -> Result<ciliate_lab::connectivity::Regex, String> {
    ciliate_lab::connectivity::Regex::new(s).map_err(|e| e.to_string())
}

/// Runs `ciliate connectivity test`.
pub async fn run(cmd: ConnectivityCommand, format: Format) -> anyhow::Result<Outcome> {
    let ConnectivityCommand::Test(args) = cmd;
    let opts = TestOptions {
        lab: args.lab.clone(),
        filter: args.test,
        keep: args.keep,
    };
    // Progress goes to standard error: standard output holds the table or the JSON.
    let mut progress = |line: &str| {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    };
    let result = tokio::select! {
        r = ciliate_lab::connectivity::run(&opts, &mut progress) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let report = match result {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(advise(e, &opts.lab)),
        None => {
            if opts.keep {
                return Err(anyhow!(
                    "interrupted; the test workload was left in place (--keep)"
                ));
            }
            progress("Interrupted: removing the test workload");
            let left = ciliate_lab::connectivity::cleanup(&opts.lab).await?;
            if !left.is_empty() {
                return Err(anyhow!(
                    "interrupted, and the test workload could not all be removed: {}",
                    left.join("; ")
                ));
            }
            return Err(anyhow!("interrupted"));
        }
    };
    output::print(&output::render(format, &report, render_table)?)?;
    if !report.cleanup_problems.is_empty() {
        progress(&format!(
            "warning: the test workload could not all be removed: {}",
            report.cleanup_problems.join("; ")
        ));
    }
    Ok(if report.ok() {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

fn advise(e: LabError, lab: &str) -> anyhow::Error {
    match e {
        LabError::NotUp { .. } | LabError::Usage(_) | LabError::NotRoot => e.into(),
        other => Hinted {
            error: other.into(),
            hint: format!(
                "`ciliate lab status{}` shows the lab's health; the agents' logs are under \
                 /run/ciliate/lab/{lab}/",
                ciliate_lab::name_flag(lab)
            ),
        }
        .into(),
    }
}

/// The report as people read it: one row per cell, the failures explained, a summary line.
pub fn render_table(r: &TestReport) -> String {
    let rows = r.scenarios.iter().flat_map(|s| {
        s.cells.iter().map(move |c| {
            vec![
                s.name.clone(),
                c.cell.clone(),
                match c.spec.expect {
                    Expect::Pass => "pass".to_owned(),
                    Expect::Drop(reason) => format!("drop {}", reason.code()),
                    Expect::Http(h) => format!("http {}", h.status),
                    Expect::Refused => "refused".to_owned(),
                    Expect::Expired => "drop 133 (ttl)".to_owned(),
                },
                match c.actual {
                    Actual::Pass => "pass".to_owned(),
                    Actual::Drop => "drop".to_owned(),
                    Actual::Error => "error".to_owned(),
                    Actual::Denied => "http 403".to_owned(),
                    Actual::Refused => "refused".to_owned(),
                },
                c.drop_seen
                    .clone()
                    .or_else(|| c.l7_seen.clone())
                    .unwrap_or_else(|| "-".into()),
                if c.ok { "ok" } else { "FAIL" }.to_owned(),
            ]
        })
    });
    let mut out = table(
        &[
            "scenario",
            "cell",
            "expected",
            "actual",
            "drop seen",
            "result",
        ],
        rows,
    );
    let mut failures = String::new();
    for s in &r.scenarios {
        if let Some(e) = &s.error {
            failures.push_str(&format!("  {}: {e}\n", s.name));
        }
        for c in s.cells.iter().filter(|c| !c.ok) {
            failures.push_str(&format!(
                "  {}: {} ({}): {}\n",
                s.name,
                c.cell,
                c.address,
                c.detail.as_deref().unwrap_or("failed")
            ));
        }
    }
    if !failures.is_empty() {
        out.push_str("\nFailures:\n");
        out.push_str(&failures);
    }
    let scenarios_failed: Vec<&str> = r
        .scenarios
        .iter()
        .filter(|s| !s.ok())
        .map(|s| s.name.as_str())
        .collect();
    out.push_str(&format!(
        "\n{} {}/{} cells passed in {} scenarios on lab {:?} ({} node{}){}{}, {}s.\n",
        if r.ok() { "✅" } else { "❌" },
        r.passed,
        r.passed + r.failed,
        r.scenarios.len(),
        r.lab,
        r.nodes,
        if r.nodes == 1 { "" } else { "s" },
        if scenarios_failed.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", scenarios_failed.join(", "))
        },
        if r.skipped > 0 {
            format!("; {} cells need a second node", r.skipped)
        } else {
            String::new()
        },
        r.seconds
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_lab::connectivity::scenarios::{Cell, DropReason, Proto, Source, Target};
    use ciliate_lab::connectivity::{CellResult, ScenarioResult};

    fn report(ok: bool) -> TestReport {
        let spec = Cell {
            from: Source::Client,
            to: Target::World,
            proto: Proto::Tcp,
            expect: Expect::Drop(DropReason::PolicyDenied),
        };
        TestReport {
            lab: "lab".into(),
            nodes: 1,
            scenarios: vec![ScenarioResult {
                name: "client-egress".into(),
                description: String::new(),
                policy: Some("examples/connectivity/client-egress.yaml".into()),
                cells: vec![CellResult {
                    cell: spec.label(),
                    spec,
                    address: "172.31.0.1:8080".into(),
                    actual: if ok { Actual::Drop } else { Actual::Pass },
                    answered_by: (!ok).then(|| "world".into()),
                    drop_seen: ok.then(|| "133 POLICY_DENIED on lab-node0".into()),
                    l7_seen: None,
                    ok,
                    detail: (!ok).then(|| "answered by \"world\"; expected a drop".into()),
                }],
                error: None,
                skipped: 2,
            }],
            passed: usize::from(ok),
            failed: usize::from(!ok),
            skipped: 2,
            seconds: 3,
            kept: false,
            cleanup_problems: Vec::new(),
        }
    }

    #[test]
    fn tables_show_cells_failures_and_a_summary() {
        let text = render_table(&report(true));
        assert!(text.starts_with("SCENARIO"), "{text}");
        assert!(
            text.contains("client → world/172.31.0.1:8080/TCP   drop 133   drop     133 POLICY_DENIED on lab-node0   ok"),
            "{text}"
        );
        assert!(text.contains("✅ 1/1 cells passed in 1 scenarios on lab \"lab\" (1 node); 2 cells need a second node, 3s."), "{text}");
        let text = render_table(&report(false));
        assert!(text.contains("Failures:\n  client-egress: client → world/172.31.0.1:8080/TCP (172.31.0.1:8080): answered by"), "{text}");
        assert!(
            text.contains("❌ 0/1 cells passed") && text.contains("failed: client-egress"),
            "{text}"
        );
    }

    #[test]
    fn json_is_the_report() {
        let json = output::render(Format::Json, &report(true), render_table).expect("json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("parses");
        let cell = &v["scenarios"][0]["cells"][0];
        assert_eq!(cell["cell"], "client → world/172.31.0.1:8080/TCP");
        assert_eq!(cell["expect"]["verdict"], "drop");
        assert_eq!(cell["expect"]["reason"], "POLICY_DENIED");
        assert_eq!(cell["ok"], true);
        assert_eq!(v["passed"], 1);
    }
}
