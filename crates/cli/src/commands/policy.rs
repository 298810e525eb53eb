//! `ciliate policy import|delete|get|validate|trace|wait`: network policies.
//!
//! Import and delete go through `POST /v1/manifests` like `ciliate apply`, with documents of
//! other kinds refused before anything is sent. Validate and trace ask the agent, so the rules
//! are the ones it enforces.

use std::path::PathBuf;

use ciliate_model::manifest::{describe, report, ApplyDocument, ManifestError};
use ciliate_model::policy::{PolicyKind, PolicyRef, PolicyResource};
use ciliate_model::policy_api::{
    is_policy_document, parse_kind, PolicyRevision, PolicyTrace, PolicyValidation, PolicyView,
    TraceDirection,
};

use super::apply::{read_documents, send};
use super::{hint_not_found, Coded, Ctx, Outcome};
use crate::output::{self, fields, or_none, Format};

/// Exit code of `policy trace` when it could not trace (1 means denied).
pub const TRACE_ERROR_EXIT: u8 = 2;

/// Reads the documents of `files`; every unreadable file or syntax error is reported.
fn documents(files: &[PathBuf]) -> anyhow::Result<Vec<ApplyDocument>> {
    read_documents(files, &mut std::io::stdin().lock())
        .map_err(|errors| anyhow::anyhow!(report(&errors, "nothing was sent to the agent")))
}

/// A problem for each document that is not a policy.
fn not_policies(docs: &[ApplyDocument], command: &str) -> Vec<ManifestError> {
    docs.iter()
        .filter(|d| !is_policy_document(&d.object))
        .map(|d| {
            let kind = d
                .object
                .get("kind")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("<none>");
            ManifestError {
                source: d.source.clone(),
                index: d.index,
                object: describe(&d.object),
                path: "kind".into(),
                reason: format!(
                    "{kind} is not a network policy; `ciliate policy {command}` takes \
                     NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy only \
                     (use `ciliate apply -f` for other objects)"
                ),
            }
        })
        .collect()
}

/// `ciliate policy import -f ...`.
pub async fn import(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<Outcome> {
    let docs = documents(files)?;
    let refused = not_policies(&docs, "import");
    if !refused.is_empty() {
        anyhow::bail!("{}", report(&refused, "nothing was sent to the agent"));
    }
    send(ctx, docs, false, false).await
}

/// Reads `KIND/NAMESPACE/NAME` or `KIND/NAME` (clusterwide, or namespaced in `default`).
pub fn parse_ref(s: &str) -> anyhow::Result<PolicyRef> {
    let parts: Vec<&str> = s.split('/').collect();
    let usage = || {
        anyhow::anyhow!(
            "{s:?} names no policy: write KIND/NAMESPACE/NAME or KIND/NAME (clusterwide), e.g. \
             cnp/default/client-ingress or ccnp/deny-world"
        )
    };
    let (kind, namespace, name) = match parts.as_slice() {
        [kind, name] => (*kind, None, *name),
        [kind, ns, name] => (*kind, Some(*ns), *name),
        _ => return Err(usage()),
    };
    if name.is_empty() || namespace.is_some_and(str::is_empty) {
        return Err(usage());
    }
    let kind = parse_kind(kind).ok_or_else(|| {
        anyhow::anyhow!(
            "{kind:?} is not a policy kind: use NetworkPolicy (netpol), CiliumNetworkPolicy (cnp) \
             or CiliumClusterwideNetworkPolicy (ccnp)"
        )
    })?;
    let namespace = match (kind.is_namespaced(), namespace) {
        (true, ns) => Some(ns.unwrap_or("default").to_owned()),
        (false, None) => None,
        (false, Some(_)) => {
            anyhow::bail!("{kind} has no namespace: write {}/{name}", short(kind))
        }
    };
    Ok(PolicyRef {
        kind,
        namespace,
        name: name.to_owned(),
    })
}

fn short(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::NetworkPolicy => "netpol",
        PolicyKind::CiliumNetworkPolicy => "cnp",
        PolicyKind::CiliumClusterwideNetworkPolicy => "ccnp",
    }
}

/// The document that names a policy, for deletion.
fn ref_document(r: &PolicyRef, index: usize) -> ApplyDocument {
    let mut metadata = serde_json::json!({ "name": r.name });
    if let Some(ns) = &r.namespace {
        metadata["namespace"] = ns.clone().into();
    }
    ApplyDocument {
        source: "<command line>".into(),
        index,
        object: serde_json::json!({
            "apiVersion": r.kind.api_version(),
            "kind": r.kind.as_str(),
            "metadata": metadata,
        }),
    }
}

/// `ciliate policy delete REF... | -f ...`.
pub async fn delete(
    ctx: &Ctx,
    refs: &[String],
    files: &[PathBuf],
    ignore_not_found: bool,
) -> anyhow::Result<Outcome> {
    let mut docs = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        docs.push(ref_document(&parse_ref(r)?, i + 1));
    }
    if !files.is_empty() {
        let from_files = documents(files)?;
        let refused = not_policies(&from_files, "delete");
        if !refused.is_empty() {
            anyhow::bail!("{}", report(&refused, "nothing was sent to the agent"));
        }
        docs.extend(from_files);
    }
    send(ctx, docs, true, ignore_not_found).await
}

/// `ciliate policy get [REF]`.
pub async fn get(ctx: &Ctx, policy: Option<&str>) -> anyhow::Result<Outcome> {
    let views = ctx.client.policies().await?;
    let Some(policy) = policy else {
        let text = match ctx.format {
            // The list, then the revision, as `cilium-dbg policy get` ends.
            Format::Table => {
                let revision = ctx.client.policy_revision().await?;
                format!("{}{}", list_table(&views), revision_line(&revision))
            }
            format => output::render(format, &views, |_| String::new())?,
        };
        output::print(&text)?;
        return Ok(Outcome::Success);
    };
    let r = parse_ref(policy)?;
    let resource = ctx
        .client
        .policy(&r)
        .await
        .map_err(|e| hint_not_found(e, "`ciliate policy get` lists the policies in force"))?;
    let view = views.into_iter().find(|v| v.policy == r);
    let text = match ctx.format {
        Format::Table => get_table(view.as_ref(), &resource)?,
        format => output::render(format, &resource, |_| String::new())?,
    };
    output::print(&text)?;
    Ok(Outcome::Success)
}

/// `Revision: 12`, and what is in force when that is older.
pub fn revision_line(r: &PolicyRevision) -> String {
    if r.is_in_force(r.revision) {
        format!("Revision: {}\n", r.revision)
    } else {
        format!(
            "Revision: {} (in force on every endpoint: {}; `ciliate policy wait` waits for it)\n",
            r.revision, r.in_force
        )
    }
}

/// How often `policy wait` asks.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// `ciliate policy wait [REVISION] [--timeout]`: exit 0 once `revision` (the current one
/// when `None`) is in force on every endpoint, 1 when `timeout` passes first.
pub async fn wait(
    ctx: &Ctx,
    revision: Option<u64>,
    timeout: std::time::Duration,
) -> anyhow::Result<Outcome> {
    let deadline = tokio::time::Instant::now() + timeout;
    let first = ctx.client.policy_revision().await?;
    let want = revision.unwrap_or(first.revision);
    let mut now = first;
    loop {
        if now.is_in_force(want) {
            if ctx.format == Format::Table {
                output::print(&format!("Revision {want} is in force\n"))?;
            } else {
                output::print(&output::render(ctx.format, &now, |_| String::new())?)?;
            }
            return Ok(Outcome::Success);
        }
        if tokio::time::Instant::now() >= deadline {
            let ahead = if want > now.revision {
                format!(
                    "; the node is only at revision {} (a revision of another node, or of an \
                     agent since restarted?)",
                    now.revision
                )
            } else {
                String::new()
            };
            eprintln!(
                "Error: policy revision {want} is not in force after {:?}: every endpoint holds \
                 revision {} (the node is at {}){ahead}; see `ciliate status` for why",
                timeout, now.in_force, now.revision
            );
            return Ok(Outcome::Unhealthy);
        }
        tokio::time::sleep(WAIT_POLL).await;
        now = ctx.client.policy_revision().await?;
    }
}

/// One row per policy: KIND, NAMESPACE, NAME, ENDPOINTS, SOURCE, WARNINGS.
pub fn list_table(views: &[PolicyView]) -> String {
    output::table(
        &[
            "kind",
            "namespace",
            "name",
            "endpoints",
            "source",
            "warnings",
        ],
        views.iter().map(|v| {
            vec![
                v.policy.kind.to_string(),
                or_none(v.policy.namespace.clone().unwrap_or_default()),
                v.policy.name.clone(),
                v.endpoints.to_string(),
                v.source.clone(),
                v.warnings.len().to_string(),
            ]
        }),
    )
}

/// A policy's summary, then its manifest.
pub fn get_table(view: Option<&PolicyView>, resource: &PolicyResource) -> anyhow::Result<String> {
    let r = resource.policy_ref();
    let mut pairs = vec![
        ("Kind", r.kind.to_string()),
        (
            "Namespace",
            or_none(r.namespace.clone().unwrap_or_default()),
        ),
        ("Name", r.name.clone()),
    ];
    if let Some(v) = view {
        pairs.push(("Source", v.source.clone()));
        pairs.push(("Endpoints", v.endpoints.to_string()));
        pairs.push(("Warnings", or_none(v.warnings.join("\n"))));
    }
    let mut text = fields(pairs);
    text.push_str("---\n");
    text.push_str(&serde_yaml_ng::to_string(resource)?);
    Ok(text)
}

/// `ciliate policy validate -f ...`: exit 0 when valid, 1 with every problem.
pub async fn validate(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<Outcome> {
    let docs = documents(files)?;
    let mut refused = not_policies(&docs, "validate");
    let policies: Vec<ApplyDocument> = docs
        .into_iter()
        .filter(|d| is_policy_document(&d.object))
        .collect();
    let mut v = if policies.is_empty() {
        PolicyValidation::default()
    } else {
        ctx.client
            .validate_policies(&ciliate_model::manifest::ApplyRequest {
                documents: policies,
                delete: false,
            })
            .await?
    };
    if !refused.is_empty() {
        v.valid = false;
        v.errors.append(&mut refused);
        v.errors
            .sort_by(|a, b| (&a.source, a.index).cmp(&(&b.source, b.index)));
    }
    match ctx.format {
        Format::Table => {
            for w in &v.warnings {
                eprintln!("Warning: {w}");
            }
            if v.valid {
                output::print(&format!(
                    "valid: {} polic{}\n",
                    v.policies.len(),
                    if v.policies.len() == 1 { "y" } else { "ies" }
                ))?;
            } else {
                eprintln!("{}", report(&v.errors, "the policies are not valid"));
            }
        }
        format => output::print(&output::render(format, &v, |_| String::new())?)?,
    }
    Ok(if v.valid {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

/// `ciliate policy whatif -f ...`: exit 0 when no recorded flow would change verdict, 1 when
/// some would, 2 when it could not replay.
pub async fn whatif(ctx: &Ctx, args: &crate::cli::WhatIfArgs) -> anyhow::Result<Outcome> {
    let coded = |error: anyhow::Error| Coded {
        code: TRACE_ERROR_EXIT,
        error,
    };
    let docs = documents(&args.files).map_err(coded)?;
    let refused = not_policies(&docs, "whatif");
    if !refused.is_empty() {
        return Err(coded(anyhow::anyhow!(
            "{}",
            report(&refused, "nothing was sent to the agent")
        ))
        .into());
    }
    let request = ciliate_model::whatif::WhatIfRequest {
        documents: docs,
        replace_all: args.replace_all,
        since_seconds: args.since.map(|d| d.as_secs().max(1)),
    };
    let r = ctx
        .client
        .policy_whatif(&request)
        .await
        .map_err(|e| coded(e.into()))?;
    let files = args
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    match ctx.format {
        Format::Table | Format::Compact => {
            for w in &r.warnings {
                eprintln!("Warning: {w}");
            }
            output::print(&whatif_text(&r, &files))?;
        }
        format => output::print(&output::render(format, &r, |_| String::new())?)?,
    }
    Ok(if r.changes.is_empty() {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

/// The report for people: what was compared, then one row per group that would change.
fn whatif_text(r: &ciliate_model::whatif::WhatIfReport, files: &str) -> String {
    let mut out = String::new();
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    out.push_str(&format!(
        "Proposed ({files}): added {}; replaced {}",
        list(&r.added),
        list(&r.replaced)
    ));
    if !r.removed.is_empty() {
        out.push_str(&format!("; removed (--replace-all) {}", list(&r.removed)));
    }
    out.push('\n');
    let range = match (&r.from, &r.to) {
        (Some(a), Some(b)) => format!(" recorded {a} .. {b}"),
        _ => String::new(),
    };
    out.push_str(&format!(
        "Replayed {} of {} flows{range} (L3/L4 policy decisions, replies left out){}.\n",
        r.flows_replayed,
        r.flows_read,
        if r.history {
            ""
        } else {
            "; the agent keeps no flow history (--flow-history-size 0): nothing to replay"
        }
    ));
    if r.identities_from_flows > 0 {
        out.push_str(&format!(
            "{} identities no longer exist: judged by the labels their flows recorded.\n",
            r.identities_from_flows
        ));
    }
    if r.flows_recorded_differently > 0 {
        out.push_str(&format!(
            "Note: {} replayed flows were recorded with another verdict than the current policies give (policies changed since); the comparison is current vs proposed.\n",
            r.flows_recorded_differently
        ));
    }
    if r.changes.is_empty() {
        out.push_str("\nNo recorded flow would change verdict.\n");
        return out;
    }
    let n: u64 = r.changes.iter().map(|c| c.flows).sum();
    out.push_str(&format!(
        "\n{n} flows in {} groups would change verdict:\n\n",
        r.changes.len()
    ));
    out.push_str(&output::table(
        &[
            "change",
            "source",
            "destination",
            "port",
            "flows",
            "last seen",
            "proposed: decided by",
            "now: decided by",
        ],
        r.changes.iter().map(|c| {
            vec![
                match c.change.as_str() {
                    "allowed-to-denied" => "allowed -> DENIED".to_owned(),
                    "denied-to-allowed" => "denied -> ALLOWED".to_owned(),
                    other => other.to_owned(),
                },
                c.source.clone(),
                c.destination.clone(),
                if c.port == 0 {
                    c.protocol.clone()
                } else {
                    format!("{}/{}", c.port, c.protocol)
                },
                c.flows.to_string(),
                c.last_seen.clone(),
                c.proposed_rule.clone(),
                c.current_rule.clone(),
            ]
        }),
    ));
    out.push_str("\nNothing was applied (`ciliate policy import -f ...` applies).\n");
    out
}

/// `ciliate policy trace`: exit 0 allowed, 1 denied, 2 when it could not trace.
/// `--dst-fqdn`: one trace per address the FQDN cache holds for the name.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FqdnTrace {
    /// The name, normalized.
    pub name: String,
    /// Its addresses in the FQDN cache.
    pub ips: Vec<std::net::Ipv4Addr>,
    /// Every address allowed (false when none is learned).
    pub allowed: bool,
    /// One trace per address.
    pub traces: Vec<PolicyTrace>,
}

async fn trace_fqdn(
    ctx: &Ctx,
    args: &crate::cli::TraceArgs,
    name: &str,
) -> anyhow::Result<Outcome> {
    let name = ciliate_model::fqdn::validate_name(name).map_err(|e| Coded {
        code: TRACE_ERROR_EXIT,
        error: anyhow::anyhow!("--dst-fqdn {name:?} {e}"),
    })?;
    let cached = ctx
        .client
        .fqdn_cache(Some(&name))
        .await
        .map_err(|e| Coded {
            code: TRACE_ERROR_EXIT,
            error: e.into(),
        })?;
    let ips: Vec<std::net::Ipv4Addr> = cached
        .into_iter()
        .filter(|e| e.name == name)
        .flat_map(|e| e.ips)
        .collect();
    let mut traces = Vec::new();
    for ip in &ips {
        let mut a = args.clone();
        a.dst = Some(ip.to_string());
        a.dst_fqdn = None;
        traces.push(one_trace(ctx, &a).await?);
    }
    let out = FqdnTrace {
        allowed: !ips.is_empty() && traces.iter().all(|t| t.allowed),
        name,
        ips,
        traces,
    };
    output::print(&output::render(ctx.format, &out, fqdn_trace_table)?)?;
    Ok(if out.allowed {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

/// The name, then each address's trace.
pub fn fqdn_trace_table(t: &FqdnTrace) -> String {
    if t.ips.is_empty() {
        return format!(
            "Verdict:    DENIED\nno IPs learned for {} yet: toFQDNs allows nothing until a DNS answer for it passes the node's DNS proxy (`ciliate fqdn cache list` shows what was learned)\n",
            t.name
        );
    }
    let mut out = format!(
        "{} resolves (FQDN cache) to {}\n",
        t.name,
        t.ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (ip, trace) in t.ips.iter().zip(&t.traces) {
        out.push_str(&format!("\n--- {ip} ---\n{}", trace_table(trace)));
    }
    out
}

async fn one_trace(ctx: &Ctx, args: &crate::cli::TraceArgs) -> anyhow::Result<PolicyTrace> {
    let dst = args.dst.clone().unwrap_or_default();
    let (src, dst, dport, proto) = (&args.src, &dst, args.dport.0, &args.dport.1);
    let traced = match (&args.http_method, &args.http_path) {
        (Some(method), Some(path)) => {
            let http = ciliate_model::policy_api::TraceHttp {
                method: method.clone(),
                path: path.clone(),
                host: args.http_host.clone().unwrap_or_default(),
                headers: args.http_headers.clone(),
            };
            ctx.client
                .policy_trace_http(src, dst, dport, proto, &http)
                .await
        }
        _ => ctx.client.policy_trace(src, dst, dport, proto).await,
    };
    Ok(traced.map_err(|e| Coded {
        code: TRACE_ERROR_EXIT,
        error: hint_not_found(
            e,
            "`ciliate endpoint list` shows the pods of this node; labels and addresses \
                 need no pod",
        ),
    })?)
}

/// `ciliate policy trace`.
pub async fn trace(ctx: &Ctx, args: &crate::cli::TraceArgs) -> anyhow::Result<Outcome> {
    if let Some(name) = &args.dst_fqdn {
        return trace_fqdn(ctx, args, name).await;
    }
    let traced = one_trace(ctx, args).await?;
    output::print(&output::render(ctx.format, &traced, trace_table)?)?;
    Ok(if traced.allowed {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

fn proto_name(proto: u8) -> String {
    match proto {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMP".into(),
        n => format!("proto-{n}"),
    }
}

fn side(v: &TraceDirection) -> String {
    let mut out = format!(
        "{}: {}",
        if v.allowed { "allowed" } else { "denied" },
        v.message
    );
    if let Some(l7) = &v.l7 {
        out.push_str(&format!("\nL7: {}", l7.message));
        if l7.allowed.is_none() {
            for r in &l7.rules {
                out.push_str(&format!(
                    "\n  {} {}: {}",
                    r.rule.policy,
                    r.rule.path(),
                    if r.kafka.is_empty() {
                        http_rules(&r.http)
                    } else {
                        kafka_rules(&r.kafka)
                    }
                ));
            }
        }
    }
    out
}

/// Kafka rules as one line: `produce,metadata,apiversions topic=orders | fetch v11 client=c`.
fn kafka_rules(rules: &[ciliate_model::l7::KafkaMatch]) -> String {
    rules
        .iter()
        .map(|k| {
            let mut parts = Vec::new();
            parts.push(if k.api_keys.is_empty() {
                "any API".to_owned()
            } else {
                k.api_keys
                    .iter()
                    .map(|key| ciliate_model::kafka::api_key_name(*key))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            if let Some(v) = k.api_version {
                parts.push(format!("v{v}"));
            }
            if let Some(c) = &k.client_id {
                parts.push(format!("client={c}"));
            }
            if let Some(t) = &k.topic {
                parts.push(format!("topic={t}"));
            }
            parts.join(" ")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// HTTP rules as one line: `GET /public | PUT /path2 [X-My-Header: true]`.
fn http_rules(rules: &[ciliate_model::l7::HttpMatch]) -> String {
    if rules.is_empty() {
        return "every request".to_owned();
    }
    rules
        .iter()
        .map(|m| {
            let mut parts: Vec<String> = Vec::new();
            parts.push(m.method.clone().unwrap_or_else(|| "any method".into()));
            parts.push(m.path.clone().unwrap_or_else(|| "any path".into()));
            if let Some(h) = &m.host {
                parts.push(format!("host {h}"));
            }
            for h in &m.headers {
                parts.push(format!("[{h}]"));
            }
            for h in &m.header_matches {
                parts.push(format!(
                    "[{}{}{}]",
                    h.name,
                    h.value
                        .as_ref()
                        .map(|v| format!(": {v}"))
                        .unwrap_or_default(),
                    h.mismatch
                        .map(|a| format!(", on mismatch {a:?}"))
                        .unwrap_or_default()
                ));
            }
            parts.join(" ")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The verdict, each side's reason and the deciding rule.
pub fn trace_table(t: &PolicyTrace) -> String {
    let port = if t.proto == 1 {
        format!("type {}", t.dport)
    } else {
        format!("port {}", t.dport)
    };
    let verdict = match (t.allowed, t.drop_reason) {
        (true, _) => "ALLOWED".to_owned(),
        (false, Some(code)) => format!("DENIED (drop reason {code})"),
        (false, None) => "DENIED".to_owned(),
    };
    let flow = match &t.http {
        Some(h) => format!(
            "{} {port}, HTTP {} {}{}{}",
            proto_name(t.proto),
            h.method,
            h.path,
            if h.host.is_empty() {
                String::new()
            } else {
                format!(" (host {})", h.host)
            },
            h.headers
                .iter()
                .map(|x| format!(" [{x}]"))
                .collect::<String>()
        ),
        None => format!("{} {port}", proto_name(t.proto)),
    };
    let mut pairs = vec![
        ("Verdict", verdict),
        ("Flow", flow),
        ("Source", t.src.to_string()),
        ("Destination", t.dst.to_string()),
        (
            "Egress",
            t.egress
                .as_ref()
                .map_or_else(|| "not an endpoint: no egress policy".to_owned(), side),
        ),
        (
            "Ingress",
            t.ingress
                .as_ref()
                .map_or_else(|| "not an endpoint: no ingress policy".to_owned(), side),
        ),
    ];
    let l7_of = |v: &TraceDirection| v.l7.clone().filter(|l| l.allowed.is_some());
    let deciding = match t.deciding_verdict() {
        None => "<none>".to_owned(),
        Some(v) if l7_of(v).is_some_and(|l| l.allowed == Some(false)) => format!(
            "the L7 proxy: no HTTP rule matches, 403 Forbidden ({})",
            v.direction
        ),
        Some(v) if l7_of(v).is_some() => l7_of(v)
            .map(|l| l.allowed_by)
            .unwrap_or_default()
            .iter()
            .map(|m| match m.http_index {
                Some(i) => format!(
                    "{} {} rules.http[{i}] ({}, L7)",
                    m.rule.policy,
                    m.rule.path(),
                    v.direction
                ),
                None => format!(
                    "{} {} (every request, {}, L7)",
                    m.rule.policy,
                    m.rule.path(),
                    v.direction
                ),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(v) if !v.rules.is_empty() => v
            .rules
            .iter()
            .map(|r| format!("{} {} ({})", r.policy, r.path(), v.direction))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(v) if !v.policies.is_empty() => format!(
            "{} of {} ({})",
            match v.reason {
                ciliate_model::policy_api::TraceReason::DefaultDeny => "default deny",
                _ => "no default deny",
            },
            v.policies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            v.direction
        ),
        Some(v) => format!("<none: {}> ({})", v.message, v.direction),
    };
    pairs.push(("Decided by", deciding));
    if !t.notes.is_empty() {
        pairs.push(("Notes", t.notes.join("\n")));
    }
    fields(pairs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refs_as_users_write_them() {
        let r = parse_ref("cnp/prod/web").unwrap();
        assert_eq!(r.to_string(), "CiliumNetworkPolicy prod/web");
        let r = parse_ref("netpol/web").unwrap();
        assert_eq!(r.to_string(), "NetworkPolicy default/web");
        let r = parse_ref("CiliumClusterwideNetworkPolicy/all").unwrap();
        assert_eq!(r.to_string(), "CiliumClusterwideNetworkPolicy all");
        for bad in ["web", "cnp/", "svc/default/web", "ccnp/ns/all", "a/b/c/d"] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
        let doc = ref_document(&parse_ref("cnp/prod/web").unwrap(), 1);
        assert_eq!(
            doc.object,
            serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "web", "namespace": "prod"}})
        );
    }

    #[test]
    fn other_kinds_are_named_and_refused() {
        let docs = ciliate_model::manifest::split_documents(
            "m.yaml",
            "kind: CiliumNetworkPolicy\n---\nkind: Service\nmetadata: {name: web}\n",
        )
        .unwrap();
        let refused = not_policies(&docs, "import");
        assert_eq!(refused.len(), 1);
        assert!(refused[0].to_string().starts_with(
            "m.yaml: document 2 (Service default/web): kind: Service is not a network policy"
        ));
    }

    #[test]
    fn tables() {
        let text = list_table(&[crate::fixtures::policy_view()]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            [
                "KIND",
                "NAMESPACE",
                "NAME",
                "ENDPOINTS",
                "SOURCE",
                "WARNINGS"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "CiliumNetworkPolicy",
                "default",
                "server-ingress",
                "2",
                "api",
                "1"
            ]
        );
        let text = trace_table(&crate::fixtures::trace());
        assert!(
            text.starts_with("Verdict:       DENIED (drop reason 181)\n"),
            "{text}"
        );
        assert!(
            text.contains("Decided by:    CiliumNetworkPolicy default/deny-client spec.ingressDeny[0] (ingress)"),
            "{text}"
        );
        assert!(
            text.contains("Egress:        allowed: no policy selects"),
            "{text}"
        );
        let text = trace_table(&crate::fixtures::trace_http());
        assert!(text.starts_with("Verdict:       DENIED\n"), "{text}");
        assert!(
            text.contains("Flow:          TCP port 80, HTTP POST /api [X-Token: t]\n"),
            "{text}"
        );
        assert!(
            text.contains("L7: the L7 proxy refuses the request with 403 Forbidden"),
            "{text}"
        );
        assert!(
            text.contains(
                "Decided by:    the L7 proxy: no HTTP rule matches, 403 Forbidden (ingress)"
            ),
            "{text}"
        );
        let mut allowed = crate::fixtures::trace_http();
        allowed.allowed = true;
        allowed.deciding = Some(ciliate_model::policy::Direction::Ingress);
        if let Some(l7) = allowed.ingress.as_mut().and_then(|i| i.l7.as_mut()) {
            l7.allowed = Some(true);
            l7.allowed_by = vec![ciliate_model::policy_api::TraceL7Match {
                rule: l7.rules[0].rule.clone(),
                http_index: Some(1),
            }];
        }
        let text = trace_table(&allowed);
        assert!(
            text.contains("Decided by:    CiliumNetworkPolicy default/http spec.ingress[0] rules.http[1] (ingress, L7)"),
            "{text}"
        );
        // Without a request: the rules in force.
        let mut plain = crate::fixtures::trace_http();
        plain.http = None;
        if let Some(l7) = plain.ingress.as_mut().and_then(|i| i.l7.as_mut()) {
            l7.allowed = None;
            l7.message = "redirected to the L7 proxy (port 15002)".into();
        }
        let text = trace_table(&plain);
        assert!(
            text.contains("  CiliumNetworkPolicy default/http spec.ingress[0]: GET /public | any method /healthz [X-Probe: true]"),
            "{text}"
        );
    }

    #[test]
    fn fqdn_trace_names_the_addresses_or_says_none_is_learned() {
        let none = FqdnTrace {
            name: "api.example.com.".into(),
            ips: vec![],
            allowed: false,
            traces: vec![],
        };
        let text = fqdn_trace_table(&none);
        assert!(text.starts_with("Verdict:    DENIED\n"), "{text}");
        assert!(
            text.contains("no IPs learned for api.example.com. yet"),
            "{text}"
        );
        let one = FqdnTrace {
            name: "api.example.com.".into(),
            ips: vec!["192.0.2.7".parse().unwrap()],
            allowed: true,
            traces: vec![crate::fixtures::trace()],
        };
        let text = fqdn_trace_table(&one);
        assert!(
            text.starts_with(
                "api.example.com. resolves (FQDN cache) to 192.0.2.7\n\n--- 192.0.2.7 ---\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(&trace_table(&crate::fixtures::trace())),
            "{text}"
        );
    }
}
