//! `ciliate observe`: flows from the agent's Hubble-compatible observer API, with
//! `hubble observe`'s flags and output.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use ciliate_observer::convert::system_time_to_timestamp;
use ciliate_observer::print::{Options, Output, Printer, TimeFormat};
use ciliate_observer::proto::flow::FlowFilter;
use ciliate_observer::proto::observer::{GetFlowsRequest, GetFlowsResponse};
use ciliate_observer::protojson;
use clap::{ArgAction, ArgMatches, Args, CommandFactory};
use tokio::signal::unix::{signal, SignalKind};

use super::{Hinted, Outcome};
use crate::output::{self, Format};

use ciliate_observer::filter_builder::{FilterBuilder, SWITCH_FLAGS, VALUE_FLAGS};

/// How many flows `observe` shows without --last, --since or --follow (Hubble's
/// `defaults.FlowPrintCount`).
const FLOW_PRINT_COUNT: u64 = 20;

/// Arguments of `ciliate observe`: `hubble observe`'s flags.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// The observer API's unix socket [default: hubble.sock beside --socket, as the agent
    /// puts it].
    #[arg(long, env = "CILIATE_HUBBLE_SOCKET", value_name = "PATH")]
    pub hubble_socket: Option<PathBuf>,
    /// Read another observer API instead, as Hubble's `--server`: `host:port` (the relay,
    /// e.g. localhost:4245, for the whole cluster) or `unix:///path`.
    #[arg(
        long,
        env = "HUBBLE_SERVER",
        value_name = "ADDR",
        conflicts_with = "hubble_socket"
    )]
    pub server: Option<String>,

    // Selectors.
    /// Get last N flows stored in the buffer (default 20 without --since, --until, --follow).
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub last: Option<u64>,
    /// Get first N flows stored in the buffer.
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub first: Option<u64>,
    /// Get all flows stored in the buffer.
    #[arg(long, help_heading = "Selectors")]
    pub all: bool,
    /// Follow flows output.
    #[arg(short = 'f', long, help_heading = "Selectors")]
    pub follow: bool,
    /// Flows since this time: relative (3s, 4m, 1h43m, 2d) or a date (2024-05-01,
    /// 2024-05-01T10:00:00Z, RFC 3339 with any precision).
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub since: Option<String>,
    /// Flows until this time, as --since (ignored with --follow).
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub until: Option<String>,

    // Formatting.
    /// Print node name in output.
    #[arg(long, help_heading = "Formatting")]
    pub print_node_name: bool,
    /// Print the names of the policies that allowed or denied policy verdicts.
    #[arg(long, help_heading = "Formatting")]
    pub print_policy_names: bool,
    /// Time format of compact, dict and table output: StampMilli, RFC3339, RFC3339Milli,
    /// RFC3339Micro, RFC3339Nano, RFC1123Z, YearMonthDay, YearMonthDayHour,
    /// YearMonthDayHourMinute.
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "StampMilli",
        help_heading = "Formatting"
    )]
    pub time_format: String,
    /// Display all information in numeric form (IPs, not pod, Service or DNS names).
    #[arg(long, help_heading = "Formatting")]
    pub numeric: bool,
    /// Compatibility with older Hubble: `legacy-json-output` makes -o json print the bare
    /// Flow instead of the GetFlowsResponse.
    #[arg(long, value_name = "OPTION", value_parser = ["legacy-json-output"], help_heading = "Formatting")]
    pub compat: Vec<String>,
    /// Also print informational node status events (a relay's nodes connecting).
    #[arg(long, help_heading = "Formatting")]
    pub debug: bool,
    /// Print the allowlist and denylist the flags make, as YAML, and exit.
    #[arg(long, help_heading = "Formatting")]
    pub print_raw_filters: bool,

    // Filters, in Hubble's order; each occurrence is applied in command-line order.
    /// Reverses the next filter to be a denylist, i.e. --not --from-ip 2.2.2.2.
    #[arg(long, id = "not", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub not: Vec<bool>,
    /// Show the only flow matching this unique flow identifier, if any.
    #[arg(long, id = "uuid", value_name = "UUID", help_heading = "Filters")]
    pub uuid: Vec<String>,
    /// Flows of the given node names (e.g. "k8s*", "test-cluster/*.company.com").
    #[arg(long, id = "node-name", value_name = "NAME", help_heading = "Filters")]
    pub node_name: Vec<String>,
    /// Flows observed on nodes matching the given label selector (e.g. "key1=value1").
    #[arg(
        long,
        id = "node-label",
        value_name = "SELECTOR",
        help_heading = "Filters"
    )]
    pub node_label: Vec<String>,
    /// Flows from endpoints in the given cluster.
    #[arg(
        long,
        id = "from-cluster",
        value_name = "CLUSTER",
        help_heading = "Filters"
    )]
    pub from_cluster: Vec<String>,
    /// Flows from or to endpoints in the given clusters (e.g. "test-cluster", "prod-*").
    #[arg(long, id = "cluster", value_name = "CLUSTER", help_heading = "Filters")]
    pub cluster: Vec<String>,
    /// Flows to endpoints in the given cluster.
    #[arg(
        long,
        id = "to-cluster",
        value_name = "CLUSTER",
        help_heading = "Filters"
    )]
    pub to_cluster: Vec<String>,
    /// L4/L7 protocol: tcp, udp, icmp, sctp, http, dns, kafka.
    #[arg(long, id = "protocol", value_name = "PROTO", help_heading = "Filters")]
    pub protocol: Vec<String>,
    /// TCP flags, comma-separated (e.g. "syn", "syn,ack", "fin").
    #[arg(long, id = "tcp-flags", value_name = "FLAGS", help_heading = "Filters")]
    pub tcp_flags: Vec<String>,
    /// Event type TYPE[:SUBTYPE] (trace, drop, l7, policy-verdict, capture, trace-sock, or a
    /// number; trace subtypes by name: trace:to-endpoint). See below.
    #[arg(
        short = 't',
        long = "type",
        id = "type",
        value_name = "TYPE",
        help_heading = "Filters"
    )]
    pub kind: Vec<String>,
    /// Verdict: FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED.
    #[arg(long, id = "verdict", value_name = "VERDICT", help_heading = "Filters")]
    pub verdict: Vec<String>,
    /// Drop reason (e.g. "POLICY_DENIED", "UNSUPPORTED_L3_PROTOCOL").
    #[arg(
        long,
        id = "drop-reason-desc",
        value_name = "REASON",
        help_heading = "Filters"
    )]
    pub drop_reason_desc: Vec<String>,
    /// HTTP status code prefix (e.g. "404", "5+").
    #[arg(
        long,
        id = "http-status",
        value_name = "CODE",
        help_heading = "Filters"
    )]
    pub http_status: Vec<String>,
    /// HTTP method (e.g. "get", "post").
    #[arg(
        long,
        id = "http-method",
        value_name = "METHOD",
        help_heading = "Filters"
    )]
    pub http_method: Vec<String>,
    /// HTTP path regular expression (e.g. "/page/\\d+").
    #[arg(long, id = "http-path", value_name = "REGEX", help_heading = "Filters")]
    pub http_path: Vec<String>,
    /// HTTP URL regular expression (e.g. "http://.*cilium\.io/page/\\d+").
    #[arg(long, id = "http-url", value_name = "REGEX", help_heading = "Filters")]
    pub http_url: Vec<String>,
    /// HTTP header key:value pair (e.g. "foo:bar").
    #[arg(
        long,
        id = "http-header",
        value_name = "KEY:VALUE",
        help_heading = "Filters"
    )]
    pub http_header: Vec<String>,
    /// Trace ID (of L7 flows).
    #[arg(long, id = "trace-id", value_name = "ID", help_heading = "Filters")]
    pub trace_id: Vec<String>,
    /// IP trace ID (IP option).
    #[arg(long, id = "ip-trace-id", value_name = "ID", help_heading = "Filters")]
    pub ip_trace_id: Vec<String>,
    /// Flows from the given FQDN (e.g. "*.cilium.io").
    #[arg(long, id = "from-fqdn", value_name = "FQDN", help_heading = "Filters")]
    pub from_fqdn: Vec<String>,
    /// Flows from or to the given FQDN.
    #[arg(long, id = "fqdn", value_name = "FQDN", help_heading = "Filters")]
    pub fqdn: Vec<String>,
    /// Flows to the given FQDN.
    #[arg(long, id = "to-fqdn", value_name = "FQDN", help_heading = "Filters")]
    pub to_fqdn: Vec<String>,
    /// Flows from the given IP or CIDR.
    #[arg(long, id = "from-ip", value_name = "IP", help_heading = "Filters")]
    pub from_ip: Vec<String>,
    /// Flows SNATed to the given IP or CIDR.
    #[arg(long, id = "snat-ip", value_name = "IP", help_heading = "Filters")]
    pub snat_ip: Vec<String>,
    /// Flows from or to the given IP or CIDR.
    #[arg(long, id = "ip", value_name = "IP", help_heading = "Filters")]
    pub ip: Vec<String>,
    /// Flows to the given IP or CIDR.
    #[arg(long, id = "to-ip", value_name = "IP", help_heading = "Filters")]
    pub to_ip: Vec<String>,
    /// Only IPv4 flows.
    #[arg(short = '4', long, id = "ipv4", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub ipv4: Vec<bool>,
    /// Only IPv6 flows.
    #[arg(short = '6', long, id = "ipv6", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub ipv6: Vec<bool>,
    /// Only IPv4, IPv6 or non-IP flows ("v4", "v6", "none").
    #[arg(
        long,
        id = "ip-version",
        value_name = "VERSION",
        help_heading = "Filters"
    )]
    pub ip_version: Vec<String>,
    /// Flows from the given pod name prefix ([namespace/]name; namespace "default" if none).
    #[arg(long, id = "from-pod", value_name = "POD", help_heading = "Filters")]
    pub from_pod: Vec<String>,
    /// Flows from or to the given pod name prefix.
    #[arg(long, id = "pod", value_name = "POD", help_heading = "Filters")]
    pub pod: Vec<String>,
    /// Flows to the given pod name prefix.
    #[arg(long, id = "to-pod", value_name = "POD", help_heading = "Filters")]
    pub to_pod: Vec<String>,
    /// Flows from the given namespace.
    #[arg(
        long,
        id = "from-namespace",
        value_name = "NS",
        help_heading = "Filters"
    )]
    pub from_namespace: Vec<String>,
    /// Flows from or to the given namespace.
    #[arg(
        short = 'n',
        long,
        id = "namespace",
        value_name = "NS",
        help_heading = "Filters"
    )]
    pub namespace: Vec<String>,
    /// Flows to the given namespace.
    #[arg(long, id = "to-namespace", value_name = "NS", help_heading = "Filters")]
    pub to_namespace: Vec<String>,
    /// Flows from any namespace.
    #[arg(long, id = "from-all-namespaces", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub from_all_namespaces: Vec<bool>,
    /// Flows from or to any namespace.
    #[arg(short = 'A', long, id = "all-namespaces", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub all_namespaces: Vec<bool>,
    /// Flows to any namespace.
    #[arg(long, id = "to-all-namespaces", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub to_all_namespaces: Vec<bool>,
    /// Flows from an endpoint with the given labels (e.g. "key1=value1", "reserved:world").
    #[arg(
        long,
        id = "from-label",
        value_name = "SELECTOR",
        help_heading = "Filters"
    )]
    pub from_label: Vec<String>,
    /// Flows from or to an endpoint with the given labels.
    #[arg(
        short = 'l',
        long,
        id = "label",
        value_name = "SELECTOR",
        help_heading = "Filters"
    )]
    pub label: Vec<String>,
    /// Flows to an endpoint with the given labels.
    #[arg(
        long,
        id = "to-label",
        value_name = "SELECTOR",
        help_heading = "Filters"
    )]
    pub to_label: Vec<String>,
    /// Flows from the given Service name prefix ([namespace/]name).
    #[arg(
        long,
        id = "from-service",
        value_name = "SVC",
        help_heading = "Filters"
    )]
    pub from_service: Vec<String>,
    /// Flows from or to the given Service name prefix.
    #[arg(long, id = "service", value_name = "SVC", help_heading = "Filters")]
    pub service: Vec<String>,
    /// Flows to the given Service name prefix ([namespace/]name).
    #[arg(long, id = "to-service", value_name = "SVC", help_heading = "Filters")]
    pub to_service: Vec<String>,
    /// Flows with the given source port.
    #[arg(long, id = "from-port", value_name = "PORT", help_heading = "Filters")]
    pub from_port: Vec<String>,
    /// Flows with the given port at either end.
    #[arg(long, id = "port", value_name = "PORT", help_heading = "Filters")]
    pub port: Vec<String>,
    /// Flows with the given destination port.
    #[arg(long, id = "to-port", value_name = "PORT", help_heading = "Filters")]
    pub to_port: Vec<String>,
    /// Flows from an endpoint of the given workload ([kind/]name).
    #[arg(
        long,
        id = "from-workload",
        value_name = "WORKLOAD",
        help_heading = "Filters"
    )]
    pub from_workload: Vec<String>,
    /// Flows from or to an endpoint of the given workload.
    #[arg(
        long,
        id = "workload",
        value_name = "WORKLOAD",
        help_heading = "Filters"
    )]
    pub workload: Vec<String>,
    /// Flows to an endpoint of the given workload.
    #[arg(
        long,
        id = "to-workload",
        value_name = "WORKLOAD",
        help_heading = "Filters"
    )]
    pub to_workload: Vec<String>,
    /// Flows from the given security identity (a number or a reserved name: world, host...).
    #[arg(
        long,
        id = "from-identity",
        value_name = "ID",
        help_heading = "Filters"
    )]
    pub from_identity: Vec<String>,
    /// Flows from or to the given security identity.
    #[arg(long, id = "identity", value_name = "ID", help_heading = "Filters")]
    pub identity: Vec<String>,
    /// Flows to the given security identity.
    #[arg(long, id = "to-identity", value_name = "ID", help_heading = "Filters")]
    pub to_identity: Vec<String>,
    /// Flows in the given traffic direction (ingress or egress).
    #[arg(
        long,
        id = "traffic-direction",
        value_name = "DIR",
        help_heading = "Filters"
    )]
    pub traffic_direction: Vec<String>,
    /// Flows matching the given CEL expression.
    #[arg(
        long,
        id = "cel-expression",
        value_name = "EXPR",
        help_heading = "Filters"
    )]
    pub cel_expression: Vec<String>,
    /// Flows observed at the given interface name (e.g. eth0).
    #[arg(long, id = "interface", value_name = "NAME", help_heading = "Filters")]
    pub interface: Vec<String>,
    /// DNS query name regular expression (e.g. "\\.cilium\\.io\\.$"); Ciliate's, Hubble has
    /// the filter but no flag for it.
    #[arg(long, id = "dns-query", value_name = "REGEX", help_heading = "Filters")]
    pub dns_query: Vec<String>,
    /// Only encrypted flows (WireGuard/IPsec).
    #[arg(long, id = "encrypted", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub encrypted: Vec<bool>,
    /// Only unencrypted flows.
    #[arg(long, id = "unencrypted", action = ArgAction::Append, num_args = 0, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Filters")]
    pub unencrypted: Vec<bool>,
    /// Allowlist as JSON encoded FlowFilters (Hubble's proto field names).
    #[arg(long, value_name = "JSON", help_heading = "Filters")]
    pub allowlist: Vec<String>,
    /// Denylist as JSON encoded FlowFilters.
    #[arg(long, value_name = "JSON", help_heading = "Filters")]
    pub denylist: Vec<String>,
}

/// Every filter flag occurrence, `(name, value)`, in command-line order.
fn filter_flags_in_order(m: &ArgMatches) -> Vec<(&'static str, String)> {
    let mut seen: Vec<(usize, &'static str, String)> = Vec::new();
    for &id in VALUE_FLAGS {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            seen.extend(idx.zip(vals).map(|(i, v)| (i, id, v.clone())));
        }
    }
    for &(id, val) in SWITCH_FLAGS {
        // One index per occurrence (an appending flag; a counting one would have one in all).
        if m.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        if let Some(idx) = m.indices_of(id) {
            seen.extend(idx.map(|i| (i, id, val.to_owned())));
        }
    }
    seen.sort_by_key(|(i, _, _)| *i);
    seen.into_iter().map(|(_, id, v)| (id, v)).collect()
}

/// A flag as pflag names it in errors: `-A, --all-namespaces`, `--from-pod`.
fn flag_name(id: &str) -> String {
    let cmd = crate::cli::Cli::command();
    let short = cmd
        .find_subcommand("observe")
        .and_then(|c| c.get_arguments().find(|a| a.get_id() == id))
        .and_then(clap::Arg::get_short);
    match short {
        Some(s) => format!("-{s}, --{id}"),
        None => format!("--{id}"),
    }
}

/// The `observe` matches of a whole command line.
fn observe_matches(argv: &[std::ffi::OsString]) -> anyhow::Result<ArgMatches> {
    let m = crate::cli::Cli::command()
        .try_get_matches_from(argv)
        .map_err(|e| anyhow!("{}", e.kind()))?;
    m.subcommand_matches("observe")
        .cloned()
        .ok_or_else(|| anyhow!("not an observe command line"))
}

/// Hubble's `--allowlist`/`--denylist`: each value holds one or more JSON FlowFilters.
fn raw_filters(flag: &str, values: &[String]) -> anyhow::Result<Vec<FlowFilter>> {
    let mut out = Vec::new();
    for v in values {
        for f in serde_json::Deserializer::from_str(v).into_iter::<FlowFilter>() {
            out.push(f.map_err(|e| anyhow!("invalid --{flag} flag: failed to decode '{v}': {e}"))?);
        }
    }
    Ok(out)
}

/// Hubble's `hubtime.FromString`: a duration ago, or a date.
fn parse_time(flag: &str, s: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    if let Ok(ago) = humantime::parse_duration(s) {
        return now
            .checked_sub(ago)
            .ok_or_else(|| anyhow!("failed to parse the {flag} time: {s} is too far back"));
    }
    let candidates = [
        s.to_owned(),
        format!("{s}T00:00:00Z"),
        format!("{s}:00:00Z"),
        format!("{s}:00Z"),
    ];
    candidates
        .iter()
        .find_map(|c| humantime::parse_rfc3339_weak(c.trim_end_matches('Z')).ok())
        .ok_or_else(|| {
            anyhow!(
                "failed to parse the {flag} time: failed to convert {s} to time (a duration \
                 ago such as 5m, or a date such as 2024-05-01T10:00:00Z)"
            )
        })
}

/// The request the flags ask for (Hubble's `getFlowsRequest`).
pub fn request(
    args: &ObserveArgs,
    argv: &[std::ffi::OsString],
    now: SystemTime,
) -> anyhow::Result<GetFlowsRequest> {
    let (first, last) = (
        args.first.is_some_and(|n| n > 0),
        args.last.is_some_and(|n| n > 0),
    );
    if first && last {
        return Err(anyhow!("cannot set both --first and --last"));
    }
    if first && args.all {
        return Err(anyhow!("cannot set both --first and --all"));
    }
    if first && args.follow {
        return Err(anyhow!("cannot set both --first and --follow"));
    }
    if last && args.all {
        return Err(anyhow!("cannot set both --last and --all"));
    }
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time("since", s, now))
        .transpose()?;
    let until = match (&args.until, args.follow) {
        (Some(s), false) => Some(parse_time("until", s, now)?),
        _ => None,
    };
    let mut number = args.last.unwrap_or(0);
    if since.is_none() && until.is_none() && !first {
        if args.all {
            number = u64::MAX;
        } else if number == 0 && !args.follow {
            number = FLOW_PRINT_COUNT;
        }
    }
    if first {
        number = args.first.unwrap_or(0);
    }

    let mut builder = FilterBuilder::default();
    for (name, value) in filter_flags_in_order(&observe_matches(argv)?) {
        builder.set(name, &value).map_err(|e| {
            anyhow!(
                "invalid argument {value:?} for \"{}\" flag: {e}",
                flag_name(name)
            )
        })?;
    }
    let (mut whitelist, mut blacklist) = builder.finish()?;
    whitelist.extend(raw_filters("allowlist", &args.allowlist)?);
    blacklist.extend(raw_filters("denylist", &args.denylist)?);
    Ok(GetFlowsRequest {
        number,
        first,
        follow: args.follow,
        whitelist,
        blacklist,
        since: since.map(system_time_to_timestamp),
        until: until.map(system_time_to_timestamp),
        ..GetFlowsRequest::default()
    })
}

/// `--print-raw-filters`: the filters as Hubble prints them, YAML lists of JSON strings, as
/// go-yaml v3 writes them: items indented by four, single-quoted (`'` doubled), never
/// folded. (The JSON has every control character escaped, so no other style is needed.)
pub fn raw_filters_yaml(req: &GetFlowsRequest) -> anyhow::Result<String> {
    let mut out = String::new();
    for (key, filters) in [("allowlist", &req.whitelist), ("denylist", &req.blacklist)] {
        if filters.is_empty() {
            continue;
        }
        out.push_str(key);
        out.push_str(":\n");
        for f in filters.iter() {
            let json = protojson::to_json(f, "flow.FlowFilter")?.to_hubble_string();
            out.push_str("    - '");
            out.push_str(&json.replace('\'', "''"));
            out.push_str("'\n");
        }
    }
    if out.is_empty() {
        out.push_str("{}\n");
    }
    Ok(out)
}

/// The printer options of `-o` and the formatting flags; `-o table` cannot follow.
pub fn printer_options(format: Format, args: &ObserveArgs) -> anyhow::Result<Options> {
    let output = match format {
        Format::Compact => Output::Compact,
        Format::Dict => Output::Dict,
        Format::Json if args.compat.iter().any(|c| c == "legacy-json-output") => Output::JsonLegacy,
        Format::Json | Format::Jsonpb | Format::Jsonpath(_) => Output::JsonPb,
        Format::Yaml => Output::Yaml,
        Format::Table => {
            if args.follow {
                return Err(anyhow!(
                    "table output format is not compatible with follow mode"
                ));
            }
            Output::Table
        }
    };
    if !TimeFormat::NAMES
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&args.time_format))
    {
        return Err(anyhow!(
            "--time-format {}: expected one of {}",
            args.time_format,
            TimeFormat::NAMES.join(", ")
        ));
    }
    Ok(Options {
        output,
        node_name: args.print_node_name,
        ip_translation: !args.numeric,
        time_format: TimeFormat::from_name(&args.time_format),
        debug: args.debug,
        policy_names: args.print_policy_names,
    })
}

/// What one response prints on stdout and stderr.
pub fn render(
    format: Format,
    printer: &mut Printer,
    r: &GetFlowsResponse,
) -> anyhow::Result<(String, String)> {
    if let Format::Jsonpath(t) = format {
        let json = protojson::to_json(r, "observer.GetFlowsResponse")?;
        let value = serde_json::to_value(&json)?;
        return Ok((output::jsonpath(t, &value)?, String::new()));
    }
    let w = printer.write(r)?;
    Ok((w.stdout, w.stderr))
}

fn usage_error(error: anyhow::Error) -> anyhow::Error {
    super::Coded {
        code: 2,
        error: Hinted {
            error,
            hint: "see `ciliate observe --help`".into(),
        }
        .into(),
    }
    .into()
}

/// A client of the observer `--server` names, or of the agent's socket.
async fn connect(
    args: &ObserveArgs,
    api_socket: &std::path::Path,
) -> anyhow::Result<
    ciliate_observer::proto::observer::observer_client::ObserverClient<tonic::transport::Channel>,
> {
    if let Some(server) = &args.server {
        let target = ciliate_observer::client::Target::parse(server).map_err(|e| super::Coded {
            code: 2,
            error: anyhow!("--server {e}"),
        })?;
        return ciliate_observer::client::connect(&target, std::time::Duration::from_secs(5))
            .await
            .map_err(|e| {
                Hinted {
                    error: anyhow!("cannot reach the observer at {target}: {e}"),
                    hint: "is the relay (or agent) running there? `ciliate lab status` shows the \
                           lab's relay"
                        .into(),
                }
                .into()
            });
    }
    let socket = args
        .hubble_socket
        .clone()
        .unwrap_or_else(|| api_socket.with_file_name("hubble.sock"));
    Ok(ciliate_observer::server::connect_unix(socket.clone())
        .await
        .map_err(|e| Hinted {
            error: anyhow!("cannot reach the observer at {}: {e}", socket.display()),
            hint: "is the agent running? Its observer socket is hubble.sock beside its API socket \
                   (--hubble-socket on both sides)"
                .into(),
        })?)
}

/// Prints flows; with --follow until Ctrl-C or SIGTERM.
pub async fn run(
    format: Option<Format>,
    args: ObserveArgs,
    api_socket: &std::path::Path,
) -> anyhow::Result<Outcome> {
    let format = format.unwrap_or(Format::Compact);
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Every error here is about the flags (a bad verdict, type or time): a usage error, exit
    // 2, as the help promises.
    let req = request(&args, &argv, SystemTime::now()).map_err(usage_error)?;
    if args.print_raw_filters {
        output::print(&raw_filters_yaml(&req)?)?;
        return Ok(Outcome::Success);
    }
    let mut printer = Printer::new(printer_options(format, &args).map_err(usage_error)?);
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| anyhow!("cannot handle Ctrl-C: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
    let mut client = connect(&args, api_socket).await?;
    let mut stream = client
        .get_flows(req)
        .await
        .map_err(|s| anyhow!("the observer refused the request: {}", s.message()))?
        .into_inner();
    let result = loop {
        tokio::select! {
            biased;
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            msg = stream.message() => match msg.context("reading flows") {
                Ok(Some(r)) => {
                    let (out, err) = render(format, &mut printer, &r)?;
                    if !err.is_empty() {
                        eprint!("{err}");
                    }
                    if let Err(e) = output::print(&out) {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(Outcome::Success);
                        }
                        return Err(e.into());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
        }
    };
    // The table is aligned over all rows: it comes out at the end, even after an error.
    let table = printer.finish();
    if !table.is_empty() {
        let _ = output::print(&table);
    }
    result.map(|()| Outcome::Success)
}

#[cfg(test)]
#[path = "observe_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "observe_parity_tests.rs"]
mod parity_tests;
