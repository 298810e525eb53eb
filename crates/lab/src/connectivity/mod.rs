//! `ciliate connectivity test`: deploys a workload onto a lab and checks, scenario by scenario,
//! that what should pass passes and what should be dropped is dropped, with the drop reason
//! reported by the Hubble API of the node that dropped it.
//!
//! A scenario's policy is written into the lab's manifest directory and the test waits until
//! every agent has it in force before probing; it is removed (and its removal waited for)
//! before the next scenario. The cells of a scenario are probed concurrently, each from the
//! client's network namespace: a TCP connection and the ident line, a UDP datagram and its
//! answer, or a ping. A cell expected to pass gets three tries; one expected to be dropped gets
//! one, and then the drop must show in Hubble with the expected reason.
//!
//! FQDN cells (scenarios with DNS cells or names as targets) run one after the other, in
//! order, with every node's FQDN cache emptied first: a DNS cell asks the world's DNS server
//! with `dig` from the client's namespace and must be answered (and show as a FORWARDED DNS
//! flow in the client's node's observer) or refused by the DNS proxy (a DROPPED DNS flow); a
//! TCP cell to a name resolves it the same way first and connects to the answer.
//!
//! L7 cells send one HTTP/1.1 request to the echo pod's HTTP server: the status must be the
//! expected one (200 from the server itself, or the proxy's 403), and the request must show as
//! an L7 flow, FORWARDED or DROPPED, in the observer of the node whose proxy holds the rule
//! (an ingress rule: the server's node; an egress rule: the client's).

pub mod hubble;
pub mod probe;
pub mod scenarios;
pub mod workload;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub use regex::Regex;
use serde::Serialize;

use self::scenarios::{
    Cell, Echo, Expect, HttpExpect, Proto, Scenario, Side, Source, Target, NAMESPACE,
};
use self::workload::{Workload, POLICY_FILE};
use crate::lab::policy_refs;
use crate::layout::{GATEWAY_IP, WORLD2_IP, WORLD_ID};
use crate::{sys, world_dns, Lab, LabError, Progress};

/// How long a drop may take to show in Hubble.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of a cell expected to pass.
const PASS_TRIES: usize = 3;
/// Tries of an L7 cell until it gets its status: the agent reports a policy in force when its
/// datapath has it; the proxy's rules follow on their own channel a moment later.
const HTTP_TRIES: usize = 10;

/// What to run.
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// The lab.
    pub lab: String,
    /// Only the scenarios whose name matches.
    pub filter: Option<Regex>,
    /// Leave the workload in place afterwards.
    pub keep: bool,
}

/// The scenarios `filter` selects, or a usage error naming them all.
pub fn select(filter: Option<&Regex>) -> Result<Vec<Scenario>, LabError> {
    let all = scenarios::all();
    let Some(re) = filter else { return Ok(all) };
    let chosen: Vec<Scenario> = all
        .iter()
        .filter(|s| re.is_match(s.name))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(LabError::Usage(format!(
            "--test {re}: no scenario matches; there are {}",
            all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(chosen)
}

/// What a probe did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Actual {
    /// It was answered.
    Pass,
    /// It was not.
    Drop,
    /// It could not be run.
    Error,
    /// An HTTP request answered `403 Forbidden` (by the proxy).
    Denied,
    /// A DNS query answered REFUSED (by the DNS proxy).
    Refused,
}

/// One cell's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CellResult {
    /// `client → echo-other-node:8080/TCP`.
    pub cell: String,
    /// The cell as data.
    #[serde(flatten)]
    pub spec: Cell,
    /// The address asked (`10.200.1.4:8080`).
    pub address: String,
    /// What happened.
    pub actual: Actual,
    /// Who answered (the ident), when answered.
    pub answered_by: Option<String>,
    /// The drop Hubble reported: `133 POLICY_DENIED on lab-node1`.
    pub drop_seen: Option<String>,
    /// The L7 flow of an HTTP cell: `L7 DROPPED http://10.200.0.5:8090/private on lab-node0
    /// (INGRESS)`; of a DNS cell: `DNS FORWARDED DNS Query world.ciliate.test. A on lab-node0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7_seen: Option<String>,
    /// Whether the cell passed.
    pub ok: bool,
    /// Why it failed, or what else is worth knowing.
    pub detail: Option<String>,
}

/// One scenario's results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioResult {
    /// Its name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Its policy file under `examples/connectivity/`.
    pub policy: Option<String>,
    /// Its cells.
    pub cells: Vec<CellResult>,
    /// What went wrong around the cells (a policy that never came into force).
    pub error: Option<String>,
    /// Cells left out: they need a second node.
    pub skipped: usize,
}

impl ScenarioResult {
    /// Whether every cell passed and nothing went wrong.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.cells.iter().all(|c| c.ok)
    }
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    /// The lab.
    pub lab: String,
    /// Its nodes.
    pub nodes: usize,
    /// The scenarios run.
    pub scenarios: Vec<ScenarioResult>,
    /// Cells passed.
    pub passed: usize,
    /// Cells failed.
    pub failed: usize,
    /// Cells left out (they need a second node).
    pub skipped: usize,
    /// Seconds the run took.
    pub seconds: u64,
    /// Whether the workload was left in place.
    pub kept: bool,
    /// What could not be cleaned up.
    pub cleanup_problems: Vec<String>,
}

impl TestReport {
    /// Whether everything passed.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.scenarios.iter().all(ScenarioResult::ok)
    }
}

/// Runs the test against lab `opts.lab`. The workload is removed at the end, also when a
/// scenario fails, unless `opts.keep`; a run that is cut short (Ctrl-C) leaves it recorded in
/// `lab.json` for [`cleanup`].
pub async fn run(opts: &TestOptions, progress: Progress<'_>) -> Result<TestReport, LabError> {
    let started = Instant::now();
    let chosen = select(opts.filter.as_ref())?;
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let mut lab = Lab::open(&opts.lab)?;
    lab.check_agents().await?;
    progress(&format!(
        "Deploying the test workload in namespace {NAMESPACE} on lab {:?} ({} node{})",
        lab.name(),
        lab.state.nodes.len(),
        if lab.state.nodes.len() == 1 { "" } else { "s" }
    ));
    let outcome = match workload::deploy(&mut lab, progress).await {
        Ok(w) => Ok(run_scenarios(&lab, &w, &chosen, progress).await),
        Err(e) => Err(e),
    };
    let cleanup_problems = if opts.keep {
        progress(&format!(
            "Leaving the workload in place (--keep): pods in namespace {NAMESPACE}, manifests {} \
             and {POLICY_FILE}",
            workload::SERVICES_FILE
        ));
        Vec::new()
    } else {
        progress("Removing the test workload");
        workload::remove(&mut lab).await
    };
    let scenarios = outcome?;
    let passed = scenarios
        .iter()
        .flat_map(|s| &s.cells)
        .filter(|c| c.ok)
        .count();
    let failed = scenarios
        .iter()
        .flat_map(|s| &s.cells)
        .filter(|c| !c.ok)
        .count();
    Ok(TestReport {
        lab: lab.name().to_owned(),
        nodes: lab.state.nodes.len(),
        skipped: scenarios.iter().map(|s| s.skipped).sum(),
        scenarios,
        passed,
        failed,
        seconds: started.elapsed().as_secs(),
        kept: opts.keep,
        cleanup_problems,
    })
}

/// Removes a test workload left by an interrupted run.
pub async fn cleanup(lab: &str) -> Result<Vec<String>, LabError> {
    let mut lab = Lab::open(lab)?;
    Ok(workload::remove(&mut lab).await)
}

async fn run_scenarios(
    lab: &Lab,
    w: &Workload,
    chosen: &[Scenario],
    progress: Progress<'_>,
) -> Vec<ScenarioResult> {
    let mut out = Vec::new();
    for (i, s) in chosen.iter().enumerate() {
        let r = run_scenario(lab, w, s).await;
        let failed = r.cells.iter().filter(|c| !c.ok).count();
        progress(&format!(
            "[{}/{}] {}: {}/{} cells passed{}{}",
            i + 1,
            chosen.len(),
            s.name,
            r.cells.len() - failed,
            r.cells.len(),
            if r.skipped > 0 {
                format!(" ({} need a second node)", r.skipped)
            } else {
                String::new()
            },
            r.error
                .as_ref()
                .map(|e| format!(" - {e}"))
                .unwrap_or_default()
        ));
        out.push(r);
    }
    out
}

async fn run_scenario(lab: &Lab, w: &Workload, s: &Scenario) -> ScenarioResult {
    let cells = s.cells_for(lab.state.nodes.len());
    let mut result = ScenarioResult {
        name: s.name.to_owned(),
        description: s.description.to_owned(),
        policy: s
            .policy
            .map(|p| format!("examples/connectivity/{}", p.file)),
        cells: Vec::new(),
        error: None,
        skipped: s.cells.len() - cells.len(),
    };
    let in_scope = |r: &ciliate_model::policy::PolicyRef| r.namespace.as_deref() == Some(NAMESPACE);
    if let Some(p) = s.policy {
        let applied = match policy_refs(p.file, p.yaml) {
            Ok(refs) => match lab.write_manifest(POLICY_FILE, p.yaml) {
                Ok(()) => lab.wait_policies(&refs, in_scope).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            result.error = Some(format!("policy {} not in force: {e}", p.file));
        }
    }
    if result.error.is_none() && s.ordered() {
        if let Err(e) = clean_fqdn_caches(lab).await {
            result.error = Some(e);
        }
    }
    if result.error.is_none() && s.ordered() {
        let since = SystemTime::now() - Duration::from_secs(1);
        for cell in &cells {
            result
                .cells
                .push(run_ordered_cell(lab, w, cell, since).await);
        }
    } else if result.error.is_none() {
        let since = SystemTime::now() - Duration::from_secs(1);
        let mut tasks = Vec::new();
        for cell in &cells {
            let plan = plan(lab, w, cell);
            tasks.push(tokio::task::spawn_blocking(move || {
                let outcome = plan.as_ref().ok().map(probe_cell);
                (plan, outcome)
            }));
        }
        for (cell, task) in cells.iter().zip(tasks) {
            let r = match task.await {
                Ok((Ok(plan), Some(outcome))) => judge(lab, cell, &plan, outcome, since).await,
                Ok((Err(e), _)) => unreachable(cell, &e),
                Ok((Ok(_), None)) => unreachable(cell, "not probed"),
                Err(e) => unreachable(cell, &format!("probe thread failed: {e}")),
            };
            result.cells.push(r);
        }
    } else {
        result.cells = cells
            .iter()
            .map(|c| unreachable(c, "not probed: the scenario's policy is not in force"))
            .collect();
    }
    if s.policy.is_some() {
        let _ = lab.remove_manifest(POLICY_FILE);
        if let Err(e) = lab.wait_policies(&Default::default(), in_scope).await {
            let msg = format!("policy not removed: {e}");
            result.error = Some(match result.error.take() {
                Some(prev) => format!("{prev}; {msg}"),
                None => msg,
            });
        }
    }
    result
}

/// One cell of an ordered scenario. An [`Expect::Expired`] cell first waits until no node's
/// FQDN cache holds its address any more, then is probed and judged as an expected drop.
async fn run_ordered_cell(lab: &Lab, w: &Workload, cell: &Cell, since: SystemTime) -> CellResult {
    let mut plan = match plan(lab, w, cell) {
        Ok(p) => p,
        Err(e) => return unreachable(cell, &e),
    };
    if cell.expect == Expect::Expired {
        if let Err(e) = wait_forgotten(lab, plan.dst).await {
            return unreachable(cell, &e);
        }
        plan.cell.expect = Expect::Drop(scenarios::DropReason::PolicyDenied);
    }
    let p = plan.clone();
    let mut r = match tokio::task::spawn_blocking(move || probe_cell(&p)).await {
        Ok(outcome) => judge(lab, &plan.cell, &plan, outcome, since).await,
        Err(e) => unreachable(cell, &format!("probe thread failed: {e}")),
    };
    r.spec = *cell;
    r
}

/// How long an address learned from a short-TTL answer may stay: its TTL, then a closed
/// connection's conntrack entry that keeps it as a zombie, then the agent's expiry pass.
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until no node's FQDN cache lists `ip`, as an address or a zombie.
async fn wait_forgotten(lab: &Lab, ip: Ipv4Addr) -> Result<(), String> {
    let deadline = Instant::now() + EXPIRY_TIMEOUT;
    loop {
        let mut holders = Vec::new();
        for node in &lab.state.nodes {
            let entries = Lab::client(node)
                .fqdn_cache(None)
                .await
                .map_err(|e| format!("reading the FQDN cache of {}: {e}", node.name))?;
            holders.extend(
                entries
                    .into_iter()
                    .filter(|e| e.ips.contains(&ip) || e.zombies.contains(&ip))
                    .map(|e| format!("{} ({} s left) on {}", e.name, e.ttl_left, node.name)),
            );
        }
        if holders.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{ip} is still learned after {} s: {}",
                EXPIRY_TIMEOUT.as_secs(),
                holders.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Empties every node's FQDN cache (`ciliate fqdn cache clean`), so that an FQDN scenario
/// starts with no address learned by an earlier one (or an earlier run).
async fn clean_fqdn_caches(lab: &Lab) -> Result<(), String> {
    for node in &lab.state.nodes {
        Lab::client(node)
            .fqdn_cache_clean(None)
            .await
            .map_err(|e| format!("cleaning the FQDN cache of {}: {e}", node.name))?;
    }
    Ok(())
}

/// How a cell is probed: from where, to what, and what answer is right.
#[derive(Clone, Debug)]
struct Plan {
    cell: Cell,
    /// The client's namespace.
    netns: PathBuf,
    /// The client's address (in flows).
    src: Ipv4Addr,
    /// The client's node, if it is a pod.
    src_node: Option<String>,
    /// The address asked.
    dst: Ipv4Addr,
    /// Addresses the flows may show as destination (a Service's backend too).
    flow_dst: Vec<Ipv4Addr>,
    /// The node of the pod asked, if it is one.
    dst_node: Option<String>,
    /// The ident the right server answers.
    ident: Option<String>,
}

fn plan(lab: &Lab, w: &Workload, cell: &Cell) -> Result<Plan, String> {
    let (netns, src, src_node) = match cell.from {
        Source::World => (
            sys::netns_path(&lab.layout.underlay_netns()),
            GATEWAY_IP,
            None,
        ),
        s => {
            let pod = w
                .source(s)
                .ok_or_else(|| format!("pod {s} is not deployed"))?;
            (
                sys::netns_path(&pod.netns),
                pod.ip.ok_or_else(|| format!("pod {s} has no address"))?,
                Some(pod.node.clone()),
            )
        }
    };
    let node_of = |i: usize| {
        lab.state
            .nodes
            .get(i)
            .cloned()
            .ok_or_else(|| format!("the lab has no node {i}"))
    };
    let echo = |e: Echo| {
        w.echo(e)
            .and_then(|p| p.ip.map(|ip| (ip, p.node.clone())))
            .ok_or_else(|| format!("pod {} is not deployed", e.name()))
    };
    let (dst, flow_dst, dst_node, ident) = match cell.to {
        Target::Pod(e) => {
            let (ip, node) = echo(e)?;
            (ip, vec![ip], Some(node), Some(e.name().to_owned()))
        }
        Target::Service(e) => {
            let (ip, node) = echo(e)?;
            (
                e.service_ip(),
                vec![e.service_ip(), ip],
                Some(node),
                Some(e.name().to_owned()),
            )
        }
        Target::Host => {
            // The clients run on node 0.
            let n = node_of(0)?;
            (n.underlay_ip, vec![n.underlay_ip], None, Some(n.name))
        }
        Target::RemoteHost => {
            let n = node_of(1)?;
            (n.underlay_ip, vec![n.underlay_ip], None, Some(n.name))
        }
        Target::World => (GATEWAY_IP, vec![GATEWAY_IP], None, Some(WORLD_ID.into())),
        Target::World2 => (WORLD2_IP, vec![WORLD2_IP], None, Some(WORLD_ID.into())),
        Target::Name(_) if cell.proto == Proto::Dns => {
            (world_dns::DNS_IP, vec![world_dns::DNS_IP], None, None)
        }
        Target::Name(n) => {
            // Where the answer should lead, for the flows; the probe asks DNS itself.
            let ips = world_dns::resolve(n);
            let first = *ips
                .first()
                .ok_or_else(|| format!("the world's DNS server has no address for {n}"))?;
            (first, ips, None, Some(WORLD_ID.into()))
        }
    };
    Ok(Plan {
        cell: *cell,
        netns,
        src,
        src_node,
        dst,
        flow_dst,
        dst_node,
        ident: if cell.proto == Proto::Icmp {
            None
        } else {
            ident
        },
    })
}

/// Probes a cell: up to [`PASS_TRIES`] times when it should pass, once when it should not.
fn probe_cell(p: &Plan) -> probe::Outcome {
    let tries = match p.cell.expect {
        Expect::Pass => PASS_TRIES,
        Expect::Http(_) => HTTP_TRIES,
        Expect::Drop(_) | Expect::Refused | Expect::Expired => 1,
    };
    let name = match p.cell.to {
        Target::Name(n) => Some(n),
        _ => None,
    };
    let mut last = None;
    for i in 0..tries {
        let o = probe::probe(p.netns.clone(), p.cell.proto, p.dst, p.cell.port(), name);
        let done = match p.cell.expect {
            Expect::Http(h) => o.status == Some(h.status),
            _ => o.answer.is_some(),
        };
        if done {
            return o;
        }
        last = Some(o);
        if matches!(p.cell.expect, Expect::Http(_)) && i + 1 < tries {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    last.unwrap_or(probe::Outcome {
        answer: None,
        status: None,
        rcode: None,
        error: Some("not probed".into()),
    })
}

async fn judge(
    lab: &Lab,
    cell: &Cell,
    p: &Plan,
    o: probe::Outcome,
    since: SystemTime,
) -> CellResult {
    let address = match cell.proto {
        Proto::Icmp => p.dst.to_string(),
        _ => format!("{}:{}", p.dst, cell.port()),
    };
    let mut r = CellResult {
        cell: cell.label(),
        spec: *cell,
        address,
        actual: match (o.answer.is_some(), o.status) {
            (_, Some(403)) => Actual::Denied,
            (false, _) if o.rcode.as_deref() == Some("REFUSED") => Actual::Refused,
            (true, _) => Actual::Pass,
            (false, _) => Actual::Drop,
        },
        answered_by: match (o.status, &o.answer) {
            (Some(code), Some(a)) => Some(format!("{code} {a}")),
            (_, a) => a.clone(),
        },
        drop_seen: None,
        l7_seen: None,
        ok: false,
        detail: None,
    };
    if cell.proto == Proto::Dns && (o.answer.is_some() || o.rcode.is_some()) {
        judge_dns(lab, p, &o, since, &mut r).await;
        return r;
    }
    if let (Proto::Http(req), Some(_)) = (cell.proto, &o.answer) {
        let want = match cell.expect {
            Expect::Http(h) => Some(h),
            Expect::Pass | Expect::Refused | Expect::Expired => None,
            Expect::Drop(reason) => {
                r.detail = Some(format!(
                    "answered {}; expected a drop ({reason})",
                    r.answered_by.as_deref().unwrap_or_default()
                ));
                return r;
            }
        };
        judge_http(lab, p, req, want, &o, since, &mut r).await;
        return r;
    }
    match (cell.expect, &o.answer) {
        (Expect::Pass, Some(answer)) => match &p.ident {
            Some(want) if want != answer => {
                r.detail = Some(format!("answered by {answer:?}, expected {want:?}"));
            }
            _ => r.ok = true,
        },
        (Expect::Pass | Expect::Http(_), None) => {
            r.detail = Some(format!(
                "no answer after {PASS_TRIES} tries: {}",
                o.error.unwrap_or_default()
            ));
            // Say why when the datapath knows: a drop in Hubble.
            let (Ok(seen) | Err((seen, _))) = drops_seen(lab, p, since, None).await;
            r.drop_seen = seen.first().map(describe);
        }
        (Expect::Http(_), Some(_)) => {
            r.detail = Some("an HTTP status expected of a cell that is not HTTP".into());
        }
        (Expect::Expired, _) => {
            // run_ordered_cell judges it as the drop it becomes.
            r.detail = Some("an expiry cell outside an ordered scenario".into());
        }
        (Expect::Refused, _) => {
            r.detail = Some(format!(
                "expected REFUSED from the DNS proxy, got {}",
                o.answer.or(o.error).unwrap_or_default()
            ));
        }
        (Expect::Drop(reason), Some(answer)) => {
            r.detail = Some(format!(
                "answered by {answer:?}; expected a drop ({reason})"
            ));
        }
        (Expect::Drop(reason), None) => {
            match drops_seen(lab, p, since, Some(reason.code())).await {
                Ok(s) => {
                    r.drop_seen = s.first().map(describe);
                    r.ok = true;
                }
                Err((s, err)) => {
                    r.drop_seen = s.first().map(describe);
                    r.detail = Some(match (s.is_empty(), err) {
                        (true, Some(e)) => format!("no drop seen in Hubble ({e})"),
                        (true, None) => format!(
                            "dropped, but no drop flow with reason {reason} in Hubble of {}",
                            flow_nodes(lab, p)
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        (false, _) => format!(
                            "dropped with {} instead of {reason}",
                            s.iter().map(describe).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
        }
    }
    r
}

/// An answered HTTP cell: the status and who answered, then (through a proxy) the L7 flow on
/// the node of the rule's side.
async fn judge_http(
    lab: &Lab,
    p: &Plan,
    req: scenarios::Request,
    want: Option<HttpExpect>,
    o: &probe::Outcome,
    since: SystemTime,
    r: &mut CellResult,
) {
    let status = want.map_or(200, |h| h.status);
    let body = o.answer.as_deref().unwrap_or_default();
    if o.status != Some(status) {
        r.detail = Some(format!(
            "answered {}; expected {status}",
            r.answered_by.as_deref().unwrap_or_default()
        ));
        return;
    }
    if status == 200 {
        // The server names itself and the request it got.
        let want_body = format!(
            "{} {} {}",
            p.ident.as_deref().unwrap_or_default(),
            req.method,
            req.path
        );
        if body != want_body {
            r.detail = Some(format!("answered {body:?}, expected {want_body:?}"));
            return;
        }
    }
    let Some(h) = want else {
        r.ok = true;
        return;
    };
    let node = match h.side {
        Side::Ingress => p.dst_node.as_ref(),
        Side::Egress => p.src_node.as_ref(),
    };
    let Some(node) = node.and_then(|n| lab.state.node(n)) else {
        r.detail = Some(format!("no node for the {:?} side", h.side));
        return;
    };
    let q = hubble::L7Query {
        src: p.src,
        dst: p.flow_dst.clone(),
        request: req,
        since,
    };
    let (verdict, direction) = (h.verdict(), h.side.direction());
    match hubble::wait_for_l7(
        &node.name,
        &node.hubble_socket,
        &q,
        verdict,
        direction,
        DROP_TIMEOUT,
    )
    .await
    {
        Ok(seen) => {
            r.l7_seen = Some(seen.to_string());
            r.ok = true;
        }
        Err((seen, err)) => {
            r.l7_seen = seen.first().map(ToString::to_string);
            r.detail = Some(match (seen.is_empty(), err) {
                (true, Some(e)) => format!("no L7 flow seen ({e})"),
                (true, None) => format!(
                    "no L7 flow of {req} in Hubble of {}, expected {verdict} ({direction})",
                    node.name
                ),
                (false, _) => format!(
                    "L7 flows {}, expected {verdict} ({direction})",
                    seen.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
}

/// A DNS cell that was answered: the answer (addresses, or REFUSED) must be the expected
/// one, and the client's query must show as a DNS flow with the matching verdict in the
/// observer of the client's node (the DNS proxy runs there).
async fn judge_dns(lab: &Lab, p: &Plan, o: &probe::Outcome, since: SystemTime, r: &mut CellResult) {
    let Target::Name(name) = p.cell.to else {
        r.detail = Some("a DNS cell without a name".into());
        return;
    };
    let verdict = match (p.cell.expect, &o.answer, o.rcode.as_deref()) {
        (Expect::Pass, Some(ips), _) => {
            let want: Vec<String> = world_dns::resolve(name)
                .iter()
                .map(ToString::to_string)
                .collect();
            let mut got: Vec<&str> = ips.split(',').collect();
            got.sort_unstable();
            if got != want.iter().map(String::as_str).collect::<Vec<_>>() {
                r.detail = Some(format!("answered {ips}, expected {}", want.join(",")));
                return;
            }
            "FORWARDED"
        }
        (Expect::Refused, None, Some("REFUSED")) => "DROPPED",
        (want, _, rcode) => {
            r.detail = Some(format!(
                "answered {} ({}), expected {want}",
                o.answer.as_deref().unwrap_or("nothing"),
                rcode.unwrap_or("no response code")
            ));
            return;
        }
    };
    let Some(node) = p.src_node.as_ref().and_then(|n| lab.state.node(n)) else {
        r.detail = Some("the client has no node".into());
        return;
    };
    let q = hubble::DnsQuery {
        src: p.src,
        query: format!("{name}."),
        since,
    };
    match hubble::wait_for_dns(&node.name, &node.hubble_socket, &q, verdict, DROP_TIMEOUT).await {
        Ok(seen) => {
            r.l7_seen = Some(seen.to_string());
            r.ok = true;
        }
        Err((seen, err)) => {
            r.l7_seen = seen.first().map(ToString::to_string);
            r.detail = Some(match (seen.is_empty(), err) {
                (true, Some(e)) => format!("no DNS flow seen ({e})"),
                (true, None) => format!(
                    "no DNS flow of {name} in Hubble of {}, expected {verdict}",
                    node.name
                ),
                (false, _) => format!(
                    "DNS flows {}, expected {verdict}",
                    seen.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
}

fn describe(s: &hubble::Seen) -> String {
    format!("{} on {}", hubble::reason_name(s.reason), s.node)
}

/// The nodes whose Hubble may have seen the cell's drop: the client's and the server's.
fn flow_nodes(lab: &Lab, p: &Plan) -> Vec<(String, PathBuf)> {
    let mut names: Vec<&String> = p.src_node.iter().chain(p.dst_node.iter()).collect();
    names.dedup();
    names
        .into_iter()
        .filter_map(|n| lab.state.node(n))
        .map(|n| (n.name.clone(), n.hubble_socket.clone()))
        .collect()
}

/// Waits for the drop with reason `want` (or, with `None`, looks once for any drop).
async fn drops_seen(
    lab: &Lab,
    p: &Plan,
    since: SystemTime,
    want: Option<u32>,
) -> Result<Vec<hubble::Seen>, (Vec<hubble::Seen>, Option<String>)> {
    let q = hubble::Query {
        src: p.src,
        dst: p.flow_dst.clone(),
        proto: p.cell.proto,
        port: p.cell.port(),
        since,
    };
    let nodes = flow_nodes(lab, p);
    match want {
        Some(code) => hubble::wait_for(&nodes, &q, code, DROP_TIMEOUT)
            .await
            .map(|s| vec![s]),
        None => hubble::wait_for(&nodes, &q, u32::MAX, Duration::ZERO)
            .await
            .map(|s| vec![s]),
    }
}

fn unreachable(cell: &Cell, why: &str) -> CellResult {
    CellResult {
        cell: cell.label(),
        spec: *cell,
        address: String::new(),
        actual: Actual::Error,
        answered_by: None,
        drop_seen: None,
        l7_seen: None,
        ok: false,
        detail: Some(why.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_scenarios() {
        assert_eq!(select(None).expect("all").len(), scenarios::all().len());
        let re = Regex::new("^client-ingress").expect("regex");
        let names: Vec<&str> = select(Some(&re))
            .expect("some")
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "client-ingress",
                "client-ingress-knp",
                "client-ingress-icmp"
            ]
        );
        let err = select(Some(&Regex::new("nothing").expect("regex")))
            .expect_err("none")
            .to_string();
        assert!(
            err.contains("no scenario matches") && err.contains("no-policies"),
            "{err}"
        );
    }
}
