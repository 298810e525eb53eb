//! `ciliate lab up|status|down|env`: a Ciliate cluster of network namespaces on this machine
//! (`ciliate-lab`).

use std::io::Write;

use anyhow::anyhow;
use ciliate_lab::down::DownReport;
use ciliate_lab::status::LabStatus;
use ciliate_lab::up::UpOptions;
use ciliate_lab::{Lab, LabError, DEFAULT_NAME};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Hinted, Outcome};
use crate::output::{self, fields, or_none, table, Format};

/// `ciliate lab ...`
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a lab: etcd, N nodes with their agents, and the demo app
    #[command(
        long_about = "Start a lab: a Ciliate cluster on this machine, made of network \
            namespaces. An underlay namespace (ciliate-<name>-net) holds a bridge with \
            172.31.0.1/24, etcd on http://172.31.0.1:2379 and \"the world\" (an ident server on \
            172.31.0.1:8080); each node i is a namespace (ciliate-<name>-node<i>, eth0 \
            172.31.0.<10+i>, pod CIDR 10.200.<i>.0/24) running the real ciliate-agent; pods \
            are namespaces wired by the real ciliate-cni. The host's own networking is never \
            touched.\n\n\
            Unless --no-demo, the demo app runs in namespace demo: frontends and backends \
            spread over the nodes (each an ident server on 8080), a Service backend \
            (10.96.0.10:80) in front of the backends, and a policy letting only the frontends \
            reach them.\n\n\
            Everything shared by the nodes goes through the lab's manifest directory \
            (/run/ciliate/lab/<name>/manifests), which every agent watches: Services, \
            EndpointSlices and policies written there reach every node. Needs root, bpffs \
            and etcd (apt-get install etcd-server); the other binaries are found next to \
            ciliate, or in $CILIATE_BIN_DIR.",
        after_help = "Examples:\n  \
            ciliate lab up\n  \
            ciliate lab up --nodes 3 --pods-per-node 4\n  \
            ciliate lab up --lab dev --nodes 1 --no-demo"
    )]
    Up(UpArgs),

    /// Show a lab's nodes, agents, pods and etcd
    #[command(
        long_about = "Show a lab: etcd's health, each node's agent (running? healthy? how \
            many endpoints, policies and Services it has, asked through its API) and the \
            pods.\n\n\
            Exit code 0 when etcd and every agent are healthy, 1 otherwise (or when there \
            is no such lab).",
        after_help = "Examples:\n  \
            ciliate lab status\n  \
            ciliate lab status --lab dev -o json"
    )]
    Status(NameArg),

    /// Remove a lab and everything it made, also after a crash
    #[command(
        long_about = "Remove a lab: CNI DEL of its pods, then its processes (etcd, agents, \
            servers), namespaces, bpffs pins, cgroups and state directory. What lab.json does \
            not record (after a crash, or when it is lost) is found by name: namespaces \
            ciliate-<name>-*, pins /sys/fs/bpf/ciliate/<name>-node*, cgroups \
            ciliate/<name>-node*, and processes marked CILIATE_LAB=<name>, running in the \
            lab's namespaces or naming its state directory.\n\n\
            Idempotent: exit code 0 when nothing of the lab is left (also when there was \
            nothing), 1 when something could not be removed (it is listed).",
        after_help = "Examples:\n  \
            ciliate lab down\n  \
            ciliate lab down --lab dev"
    )]
    Down(NameArg),

    /// Print the environment that points ciliate at one node of a lab
    #[command(
        long_about = "Print shell commands that point ciliate at one node's agent and \
            observer (CILIATE_SOCKET, CILIATE_HUBBLE_SOCKET) and the lab commands at the lab \
            (CILIATE_LAB_NAME), for eval. The same as passing --socket \
            /run/ciliate/lab/<name>/node<i>/agent.sock to every command and --lab <name> to \
            `ciliate lab` and `ciliate connectivity`.\n\n\
            NODE is the node's index (0), node<i>, or its full name (lab-node0).",
        after_help = "Examples:\n  \
            eval $(ciliate lab env 1)      # then: ciliate endpoint list, ciliate observe, ciliate lab status\n  \
            ciliate lab env --lab dev node0 -o json"
    )]
    Env(EnvArgs),

    /// List the labs on this machine
    #[command(
        visible_alias = "ls",
        long_about = "List the labs on this machine: NAME, STATE (up, or leftovers: \
            namespaces or a state directory without a lab, which `lab down` removes), NODES, \
            AGENTS (running), PODS, CREATED.",
        after_help = "Examples:\n  \
            ciliate lab list\n  \
            ciliate lab list -o jsonpath='{.items[*].name}'"
    )]
    List,

    /// Restart the agent of one node (after it died, or to pick up a new binary)
    #[command(
        long_about = "Restart the agent of one node of a lab: stop it if it still runs, start \
            it again with the same flags and state directory, and wait until it reports itself \
            healthy. Its endpoints survive (they are in its state directory), so pods stay \
            wired.\n\n\
            NODE is the node's index (0), node<i>, or its full name (lab-node0).",
        after_help = "Examples:\n  \
            ciliate lab restart-agent 1\n  \
            ciliate lab restart-agent --lab dev node0"
    )]
    RestartAgent(RestartArgs),
}

/// Arguments of `ciliate lab up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// How many nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub nodes: u8,
    /// Demo pods per node (frontends and backends taking turns).
    #[arg(long, value_name = "M", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=16))]
    pub pods_per_node: u8,
    /// No demo app: nodes and agents only.
    #[arg(long)]
    pub no_demo: bool,
}

/// A lab name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The lab's name (also --name; or CILIATE_LAB_NAME, as `lab env` sets it).
    #[arg(
        long = "lab",
        visible_alias = "name",
        env = ciliate_lab::layout::LAB_NAME_ENV,
        value_name = "NAME",
        default_value = DEFAULT_NAME,
        value_parser = parse_name
    )]
    pub name: String,
}

/// Arguments of `ciliate lab env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// The node: its index, node<i>, or its name.
    #[arg(default_value = "0")]
    pub node: String,
}

/// Arguments of `ciliate lab restart-agent`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// The node: its index, node<i>, or its name.
    pub node: String,
}

/// Checks a lab name on the command line (a bad one is a usage error, exit 2).
pub fn parse_name(s: &str) -> Result<String, String> {
    ciliate_lab::layout::check_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Runs a `ciliate lab` command.
pub async fn run(cmd: LabCommand, format: Format) -> anyhow::Result<Outcome> {
    match cmd {
        LabCommand::Up(args) => up(args).await,
        LabCommand::Status(a) => status(&a.name, format).await,
        LabCommand::Down(a) => down(&a.name, format),
        LabCommand::Env(a) => env(&a.lab.name, &a.node, format),
        LabCommand::List => list(format),
        LabCommand::RestartAgent(a) => restart_agent(&a.lab.name, &a.node).await,
    }
}

/// Prints a progress line as it comes (stdout: `lab up` and `lab down` print nothing else
/// there but their summary).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Turns a lab error into one with advice when there is some to give.
fn advise(e: LabError, name: &str, partial: bool) -> anyhow::Error {
    let flag = ciliate_lab::name_flag(name);
    match e {
        LabError::Usage(_)
        | LabError::NotRoot
        | LabError::Prerequisite(_)
        | LabError::AlreadyUp { .. }
        | LabError::NotUp { .. } => e.into(),
        other if partial => Hinted {
            error: other.into(),
            hint: format!(
                "what was made so far is still there (see /run/ciliate/lab/{name}/ for logs); \
                 `ciliate lab down{flag}` removes it"
            ),
        }
        .into(),
        other => other.into(),
    }
}

async fn up(args: UpArgs) -> anyhow::Result<Outcome> {
    // The handlers go in before anything is made, and stay for the life of the process: from
    // here on an interruption (Ctrl-C, SIGTERM, a closed terminal) never kills us half-way; it
    // ends the step under way and rolls back everything lab.json and the lab's names record.
    let mut signals = Signals::new()?;
    let opts = UpOptions {
        name: args.lab.name.clone(),
        nodes: usize::from(args.nodes),
        pods_per_node: usize::from(args.pods_per_node),
        demo: !args.no_demo,
    };
    // Refused before anything is printed or made: not root, no etcd, a lab of that name.
    opts.check()?;
    ciliate_lab::up::preflight(&ciliate_lab::Layout::new(&opts.name)?)?;
    say(&format!(
        "Starting lab {:?}: {} node{}{}",
        opts.name,
        opts.nodes,
        if opts.nodes == 1 { "" } else { "s" },
        if opts.demo {
            format!(", demo app with {} pods per node", opts.pods_per_node)
        } else {
            String::new()
        }
    ));
    let mut progress = |line: &str| say(&format!("  {line}"));
    let started = std::time::Instant::now();
    let result = tokio::select! {
        // Signals first: a step that failed because of the interruption is an interruption.
        biased;
        signal = signals.recv() => Err(signal),
        r = ciliate_lab::up::up(&opts, &mut progress) => Ok(r),
    };
    // A signal that came while the last step finished (or failed) still means "stop".
    let result = match (result, signals.pending()) {
        (Ok(_), Some(signal)) => Err(signal),
        (r, _) => r,
    };
    match result {
        Ok(Ok(lab)) => {
            say(&format!(
                "Lab {:?} is up ({}, {}) in {:.1}s.\n\n{}",
                lab.name(),
                output::counted(lab.state.nodes.len(), "node", "nodes"),
                output::counted(lab.state.pods.len(), "pod", "pods"),
                started.elapsed().as_secs_f64(),
                ciliate_lab::demo::how_to_look_around(&lab)
            ));
            Ok(Outcome::Success)
        }
        Ok(Err(e)) => Err(advise(e, &opts.name, true)),
        Err(signal) => {
            say(&format!(
                "Interrupted ({signal}): removing what was made (further signals are ignored \
                 until it is done)"
            ));
            let mut quiet = |line: &str| say(&format!("  {line}"));
            let report = ciliate_lab::down::down(&opts.name, &mut quiet);
            let left = match &report {
                Ok(r) if r.left.is_empty() => String::new(),
                Ok(r) => format!("; left: {}", r.left.summary()),
                Err(e) => format!("; removing it failed: {e}"),
            };
            Err(super::Coded {
                code: 130,
                error: anyhow!("interrupted; lab {:?} was not started{left}", opts.name),
            }
            .into())
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let catch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| anyhow!("cannot handle {name}: {e}"))
        };
        Ok(Self {
            int: catch(SignalKind::interrupt(), "SIGINT")?,
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            hup: catch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }

    /// A signal that has arrived and not been received yet.
    fn pending(&mut self) -> Option<&'static str> {
        futures::FutureExt::now_or_never(self.recv())
    }
}

fn list(format: Format) -> anyhow::Result<Outcome> {
    let labs = ciliate_lab::list::list();
    output::print(&output::render(format, &labs, |labs| {
        table(
            &[
                "name", "state", "nodes", "agents", "pods", "netns", "created",
            ],
            labs.iter().map(|l| {
                vec![
                    l.name.clone(),
                    l.state.clone(),
                    l.nodes.to_string(),
                    l.agents_running.to_string(),
                    l.pods.to_string(),
                    l.netns.to_string(),
                    or_none(l.created_at.clone()),
                ]
            }),
        )
    })?)?;
    Ok(Outcome::Success)
}

async fn restart_agent(name: &str, node: &str) -> anyhow::Result<Outcome> {
    let lab = Lab::open(name).map_err(|e| advise(e, name, false))?;
    let index = node_index(&lab, node)?;
    drop(lab);
    let mut progress = |line: &str| say(line);
    ciliate_lab::up::restart_agent(name, index, &mut progress)
        .await
        .map_err(|e| advise(e, name, false))?;
    Ok(Outcome::Success)
}

async fn status(name: &str, format: Format) -> anyhow::Result<Outcome> {
    let s = ciliate_lab::status::status(name)
        .await
        .map_err(|e| advise(e, name, false))?;
    output::print(&output::render(format, &s, status_table)?)?;
    Ok(if s.healthy {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

/// The lab as people read it: a summary, the nodes, the pods.
pub fn status_table(s: &LabStatus) -> String {
    let etcd = format!(
        "{} {}{}",
        s.etcd.endpoint,
        if s.etcd.healthy {
            "healthy"
        } else {
            "NOT HEALTHY"
        },
        s.etcd
            .pid
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_else(|| " (not running)".into())
    );
    let mut out = fields(vec![
        ("Lab", s.name.clone()),
        ("Created", s.created_at.clone()),
        ("State", s.state_dir.display().to_string()),
        ("etcd", etcd),
        (
            "DNS",
            format!(
                "{} *.{} {}{}",
                s.dns.address,
                s.dns.domain,
                if s.dns.answering {
                    "answering"
                } else {
                    "NOT ANSWERING"
                },
                s.dns
                    .pid
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_else(|| " (not running)".into())
            ),
        ),
        (
            "Relay",
            match &s.relay {
                None => "none".to_owned(),
                Some(r) => format!(
                    "{} (unix://{}) {}{}",
                    r.address,
                    r.socket.display(),
                    if r.answering {
                        "answering"
                    } else {
                        "NOT ANSWERING"
                    },
                    r.pid
                        .map(|p| format!(" (pid {p})"))
                        .unwrap_or_else(|| " (not running)".into())
                ),
            },
        ),
        (
            "Health",
            if s.healthy { "ok" } else { "degraded" }.to_owned(),
        ),
    ]);
    out.push('\n');
    let count = |n: Option<usize>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    out.push_str(&table(
        &[
            "node",
            "agent",
            "health",
            "endpoints",
            "policies",
            "services",
            "underlay ip",
            "pod cidr",
            "socket",
        ],
        s.nodes.iter().map(|n| {
            vec![
                n.name.clone(),
                n.agent_pid
                    .map_or_else(|| "stopped".to_owned(), |p| format!("pid {p}")),
                n.health.clone(),
                count(n.endpoints),
                count(n.policies),
                count(n.services),
                n.underlay_ip.to_string(),
                n.pod_cidr.clone(),
                n.agent_socket.display().to_string(),
            ]
        }),
    ));
    for n in &s.nodes {
        for p in &n.problems {
            out.push_str(&format!("{}: {p}\n", n.name));
        }
    }
    if !s.pods.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["pod", "node", "ip", "labels"],
            s.pods.iter().map(|p| {
                vec![
                    p.pod.clone(),
                    p.node.clone(),
                    p.ip.map(|i| i.to_string())
                        .unwrap_or_else(|| "<none>".into()),
                    or_none(
                        p.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                ]
            }),
        ));
    }
    out
}

fn down(name: &str, format: Format) -> anyhow::Result<Outcome> {
    let quiet = matches!(format, Format::Json | Format::Yaml | Format::Jsonpb);
    let mut progress = |line: &str| {
        if !quiet {
            say(line);
        }
    };
    let report =
        ciliate_lab::down::down(name, &mut progress).map_err(|e| advise(e, name, false))?;
    if quiet {
        output::print(&output::render(format, &report, |_| String::new())?)?;
    } else {
        say(&down_summary(&report));
    }
    if report.left.is_empty() {
        Ok(Outcome::Success)
    } else {
        Err(anyhow!(
            "lab {name:?} is not completely removed: {} is left{}",
            report.left.summary(),
            if report.problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.problems.join("; "))
            }
        ))
    }
}

/// The last line(s) of `lab down`.
pub fn down_summary(r: &DownReport) -> String {
    let mut out = String::new();
    for p in &r.problems {
        out.push_str(&format!("warning: {p}\n"));
    }
    if r.removed.is_empty() {
        out.push_str(&format!("Nothing to remove: lab {:?} is not up.", r.name));
    } else if r.left.is_empty() {
        out.push_str(&format!("Lab {:?} removed.", r.name));
    } else {
        out.push_str(&format!("Lab {:?} partly removed.", r.name));
    }
    out
}

/// What `lab env` prints with -o json|yaml.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Env {
    lab: String,
    node: String,
    socket: String,
    hubble_socket: String,
}

fn env(name: &str, node: &str, format: Format) -> anyhow::Result<Outcome> {
    let lab = Lab::open(name).map_err(|e| advise(e, name, false))?;
    let index = node_index(&lab, node)?;
    let n = lab.node(index)?;
    let e = Env {
        lab: name.to_owned(),
        node: n.name.clone(),
        socket: n.agent_socket.display().to_string(),
        hubble_socket: n.hubble_socket.display().to_string(),
    };
    output::print(&output::render(format, &e, |e| {
        format!(
            "export CILIATE_SOCKET={};\nexport CILIATE_HUBBLE_SOCKET={};\nexport {}={};\n# eval $(ciliate lab env{} {index}) points ciliate at {}\n",
            e.socket,
            e.hubble_socket,
            ciliate_lab::layout::LAB_NAME_ENV,
            e.lab,
            ciliate_lab::name_flag(name),
            e.node
        )
    })?)?;
    Ok(Outcome::Success)
}

/// `1`, `node1` or `lab-node1` → 1.
fn node_index(lab: &Lab, node: &str) -> anyhow::Result<usize> {
    let by_name = lab
        .state
        .nodes
        .iter()
        .find(|n| n.name == node || n.name == format!("{}-{node}", lab.name()));
    let index = match by_name {
        Some(n) => Some(n.index),
        None => node.parse::<usize>().ok(),
    };
    match index {
        Some(i) if i < lab.state.nodes.len() => Ok(i),
        _ => Err(anyhow!(
            "lab {:?} has no node {node:?}: it has {}",
            lab.name(),
            lab.state
                .nodes
                .iter()
                .map(|n| format!("{} ({})", n.index, n.name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::commands::connectivity::ConnectivityCommand;
    use ciliate_lab::down::Leftovers;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(args)
    }

    #[test]
    fn lab_commands_parse_with_defaults() {
        let cli = parse(&["ciliate", "lab", "up"]).expect("parses");
        let Command::Lab(LabCommand::Up(a)) = cli.command else {
            panic!("not lab up")
        };
        assert_eq!(
            (a.lab.name.as_str(), a.nodes, a.pods_per_node, a.no_demo),
            ("lab", 2, 2, false)
        );
        let cli = parse(&[
            "ciliate",
            "lab",
            "up",
            "--name",
            "dev",
            "--nodes",
            "8",
            "--pods-per-node",
            "0",
            "--no-demo",
        ])
        .expect("parses");
        let Command::Lab(LabCommand::Up(a)) = cli.command else {
            panic!("not lab up")
        };
        assert_eq!(
            (a.lab.name.as_str(), a.nodes, a.pods_per_node, a.no_demo),
            ("dev", 8, 0, true)
        );
        let cli = parse(&["ciliate", "lab", "status", "-o", "json"]).expect("parses");
        assert!(matches!(cli.command, Command::Lab(LabCommand::Status(ref n)) if n.name == "lab"));
        assert_eq!(cli.output, Some(Format::Json));
        let cli = parse(&["ciliate", "lab", "env", "--name", "x1", "node1"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Lab(LabCommand::Env(ref e)) if e.lab.name == "x1" && e.node == "node1")
        );
        let cli = parse(&["ciliate", "lab", "down"]).expect("parses");
        assert!(matches!(cli.command, Command::Lab(LabCommand::Down(ref n)) if n.name == "lab"));
    }

    #[test]
    fn connectivity_test_parses() {
        let cli = parse(&["ciliate", "connectivity", "test"]).expect("parses");
        let Command::Connectivity(ConnectivityCommand::Test(a)) = cli.command else {
            panic!("not connectivity test")
        };
        assert_eq!(
            (a.lab.as_str(), a.test.is_none(), a.keep),
            ("lab", true, false)
        );
        let cli = parse(&[
            "ciliate",
            "connectivity",
            "test",
            "--lab",
            "l2",
            "--test",
            "^client-(in|e)gress$",
            "--keep",
            "-o",
            "json",
        ])
        .expect("parses");
        let Command::Connectivity(ConnectivityCommand::Test(a)) = cli.command else {
            panic!("not connectivity test")
        };
        let re = a.test.expect("a pattern");
        assert!(re.is_match("client-egress") && !re.is_match("client-egress-knp"));
        assert!(a.keep && a.lab == "l2");
    }

    #[test]
    fn bad_lab_arguments_are_usage_errors() {
        for args in [
            vec!["ciliate", "lab", "up", "--nodes", "0"],
            vec!["ciliate", "lab", "up", "--nodes", "9"],
            vec!["ciliate", "lab", "up", "--nodes", "two"],
            vec!["ciliate", "lab", "up", "--pods-per-node", "17"],
            vec!["ciliate", "lab", "up", "--name", "My-Lab"],
            vec!["ciliate", "lab", "down", "--name", ""],
            vec!["ciliate", "lab"],
            vec!["ciliate", "connectivity"],
            vec!["ciliate", "connectivity", "test", "--test", "("],
            vec!["ciliate", "connectivity", "test", "--lab", "a-b"],
        ] {
            match parse(&args) {
                Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
                Err(e) => assert_eq!(e.exit_code(), 2, "{args:?}: {e}"),
            }
        }
        let err = parse(&["ciliate", "lab", "up", "--nodes", "9"])
            .expect_err("bad")
            .to_string();
        assert!(err.contains("1..=8"), "{err}");
    }

    #[test]
    fn down_summaries() {
        let mut r = DownReport {
            name: "lab".into(),
            ..DownReport::default()
        };
        assert_eq!(
            down_summary(&r),
            "Nothing to remove: lab \"lab\" is not up."
        );
        r.removed.push("deleted netns ciliate-lab-net".into());
        assert_eq!(down_summary(&r), "Lab \"lab\" removed.");
        r.problems.push("lab.json is broken".into());
        r.left = Leftovers {
            netns: vec!["ciliate-lab-node0".into()],
            ..Leftovers::default()
        };
        assert_eq!(
            down_summary(&r),
            "warning: lab.json is broken\nLab \"lab\" partly removed."
        );
    }
}
