//! `ciliate observe`: flows from the agent's Hubble-compatible observer API.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use ciliate_observer::convert::system_time_to_timestamp;
use ciliate_observer::l7::MESSAGE_TYPE_ACCESS_LOG;
use ciliate_observer::print;
use ciliate_observer::proto::flow::{EventTypeFilter, FlowFilter, HttpHeader, Verdict};
use ciliate_observer::proto::observer::{
    get_flows_response::ResponseTypes, GetFlowsRequest, GetFlowsResponse,
};
use clap::{Args, CommandFactory};
use tokio::signal::unix::{signal, SignalKind};

use super::{Hinted, Outcome};
use crate::output::{self, Format};

/// Arguments of `ciliate observe`.
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
    /// The last N flows (the first N with --first).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
    /// With --last: the oldest flows in the buffer instead of the newest.
    #[arg(long)]
    pub first: bool,
    /// Flows since this time: RFC 3339 (2024-05-01T10:00:00Z) or a duration ago (5m).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Flows until this time: RFC 3339 or a duration ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Keep printing new flows until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Negate the filter flag that follows.
    #[arg(long, action = clap::ArgAction::Count)]
    pub not: u8,
    /// Source pod, `[namespace/]name-prefix`.
    #[arg(long, value_name = "POD")]
    pub from_pod: Vec<String>,
    /// Destination pod, `[namespace/]name-prefix`.
    #[arg(long, value_name = "POD")]
    pub to_pod: Vec<String>,
    /// Either end's pod.
    #[arg(long, value_name = "POD")]
    pub pod: Vec<String>,
    /// Source IP or CIDR.
    #[arg(long, value_name = "IP")]
    pub from_ip: Vec<String>,
    /// Destination IP or CIDR.
    #[arg(long, value_name = "IP")]
    pub to_ip: Vec<String>,
    /// Either end's IP or CIDR.
    #[arg(long, value_name = "IP")]
    pub ip: Vec<String>,
    /// Source label selector, e.g. `app=web` or `k8s:app in (a,b)`.
    #[arg(long, value_name = "SELECTOR")]
    pub from_label: Vec<String>,
    /// Destination label selector.
    #[arg(long, value_name = "SELECTOR")]
    pub to_label: Vec<String>,
    /// Either end's label selector.
    #[arg(long, value_name = "SELECTOR")]
    pub label: Vec<String>,
    /// Either end's namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Vec<String>,
    /// Verdict: FORWARDED, DROPPED, ...
    #[arg(long, value_name = "VERDICT")]
    pub verdict: Vec<String>,
    /// L4 or L7 protocol: tcp, udp, icmp, sctp, http, dns, kafka (`kafka` is Ciliate's; Hubble's
    /// filter knows http and dns).
    #[arg(long, value_name = "PROTO")]
    pub protocol: Vec<String>,
    /// Either end's port.
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Source port.
    #[arg(long, value_name = "PORT")]
    pub from_port: Vec<u16>,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    pub to_port: Vec<u16>,
    /// Event type: trace, drop, policy-verdict or l7 (HTTP, DNS and Kafka records of the
    /// node's proxy), optionally with a sub type number (`drop:133`, `trace:5`).
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub kind: Vec<String>,
    /// L7 flows with this HTTP method, e.g. GET (any case).
    #[arg(long, value_name = "METHOD")]
    pub http_method: Vec<String>,
    /// L7 flows whose HTTP path (without host and query) matches this regex, e.g. `^/api/`.
    #[arg(long, value_name = "REGEX")]
    pub http_path: Vec<String>,
    /// L7 responses with this HTTP status code (404) or a prefix of one (4+, 40+).
    #[arg(long, value_name = "CODE")]
    pub http_status: Vec<String>,
    /// L7 flows whose whole URL matches this regex, e.g. `^http://web/`.
    #[arg(long, value_name = "REGEX")]
    pub http_url: Vec<String>,
    /// L7 flows with this HTTP header, `Name:value` (exact, names as flows show them:
    /// `X-Request-Id`).
    #[arg(long, value_name = "NAME:VALUE")]
    pub http_header: Vec<String>,
}

/// The values of the filter flags, either kept or negated.
#[derive(Debug, Default, Clone)]
struct Spec {
    from_pod: Vec<String>,
    to_pod: Vec<String>,
    pod: Vec<String>,
    from_ip: Vec<String>,
    to_ip: Vec<String>,
    ip: Vec<String>,
    from_label: Vec<String>,
    to_label: Vec<String>,
    label: Vec<String>,
    namespace: Vec<String>,
    verdict: Vec<String>,
    protocol: Vec<String>,
    port: Vec<String>,
    from_port: Vec<String>,
    to_port: Vec<String>,
    kind: Vec<String>,
    http_method: Vec<String>,
    http_path: Vec<String>,
    http_status: Vec<String>,
    http_url: Vec<String>,
    http_header: Vec<String>,
}

const FILTER_IDS: [&str; 21] = [
    "from_pod",
    "to_pod",
    "pod",
    "from_ip",
    "to_ip",
    "ip",
    "from_label",
    "to_label",
    "label",
    "namespace",
    "verdict",
    "protocol",
    "port",
    "from_port",
    "to_port",
    "kind",
    "http_method",
    "http_path",
    "http_status",
    "http_url",
    "http_header",
];

impl Spec {
    fn field(&mut self, id: &str) -> Option<&mut Vec<String>> {
        Some(match id {
            "from_pod" => &mut self.from_pod,
            "to_pod" => &mut self.to_pod,
            "pod" => &mut self.pod,
            "from_ip" => &mut self.from_ip,
            "to_ip" => &mut self.to_ip,
            "ip" => &mut self.ip,
            "from_label" => &mut self.from_label,
            "to_label" => &mut self.to_label,
            "label" => &mut self.label,
            "namespace" => &mut self.namespace,
            "verdict" => &mut self.verdict,
            "protocol" => &mut self.protocol,
            "port" => &mut self.port,
            "from_port" => &mut self.from_port,
            "to_port" => &mut self.to_port,
            "kind" => &mut self.kind,
            "http_method" => &mut self.http_method,
            "http_path" => &mut self.http_path,
            "http_status" => &mut self.http_status,
            "http_url" => &mut self.http_url,
            "http_header" => &mut self.http_header,
            _ => return None,
        })
    }

    fn is_empty(&self) -> bool {
        let mut s = self.clone();
        FILTER_IDS
            .iter()
            .all(|id| s.field(id).is_none_or(|v| v.is_empty()))
    }

    /// Hubble's construction: one filter of the directional flags; flags about either end
    /// double it into a source-side and a destination-side filter (ORed).
    fn filters(&self) -> anyhow::Result<Vec<FlowFilter>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let mut base = FlowFilter {
            source_pod: self.from_pod.clone(),
            destination_pod: self.to_pod.clone(),
            source_ip: self.from_ip.clone(),
            destination_ip: self.to_ip.clone(),
            source_label: self.from_label.clone(),
            destination_label: self.to_label.clone(),
            source_port: self.from_port.clone(),
            destination_port: self.to_port.clone(),
            protocol: self.protocol.clone(),
            http_method: self.http_method.clone(),
            http_path: self.http_path.clone(),
            http_status_code: self.http_status.clone(),
            http_url: self.http_url.clone(),
            ..FlowFilter::default()
        };
        for h in &self.http_header {
            let (key, value) = h
                .split_once(':')
                .ok_or_else(|| anyhow!("--http-header {h}: expected NAME:VALUE"))?;
            base.http_header.push(HttpHeader {
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
        for v in &self.verdict {
            let verdict = Verdict::from_str_name(&v.to_ascii_uppercase())
                .ok_or_else(|| anyhow!("--verdict {v}: expected FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED or TRANSLATED"))?;
            base.verdict.push(verdict as i32);
        }
        for k in &self.kind {
            let (name, sub) = k
                .split_once(':')
                .map_or((k.as_str(), None), |(n, s)| (n, Some(s)));
            let r#type = match name {
                "drop" => 1,
                "trace" => 4,
                "policy-verdict" => 5,
                "l7" => MESSAGE_TYPE_ACCESS_LOG,
                _ => {
                    return Err(anyhow!(
                    "--type {k}: expected trace, drop, policy-verdict or l7, optionally :SUBTYPE"
                ))
                }
            };
            let sub_type = sub
                .map(|s| {
                    s.parse::<i32>()
                        .map_err(|_| anyhow!("--type {k}: the sub type must be a number"))
                })
                .transpose()?;
            base.event_type.push(EventTypeFilter {
                r#type,
                match_sub_type: sub_type.is_some(),
                sub_type: sub_type.unwrap_or(0),
            });
        }
        let pods: Vec<String> = self
            .pod
            .iter()
            .cloned()
            .chain(
                self.namespace
                    .iter()
                    .map(|n| format!("{}/", n.trim_end_matches('/'))),
            )
            .collect();
        let either = !pods.is_empty()
            || !self.ip.is_empty()
            || !self.label.is_empty()
            || !self.port.is_empty();
        if !either {
            return Ok(vec![base]);
        }
        let mut src = base.clone();
        src.source_pod.extend(pods.iter().cloned());
        src.source_ip.extend(self.ip.iter().cloned());
        src.source_label.extend(self.label.iter().cloned());
        src.source_port.extend(self.port.iter().cloned());
        let mut dst = base;
        dst.destination_pod.extend(pods);
        dst.destination_ip.extend(self.ip.iter().cloned());
        dst.destination_label.extend(self.label.iter().cloned());
        dst.destination_port.extend(self.port.iter().cloned());
        Ok(vec![src, dst])
    }
}

/// Splits the filter flags into kept and negated ones by where `--not` stands on the command
/// line: each `--not` negates the next filter flag.
fn split_negated(args: &ObserveArgs, argv: &[std::ffi::OsString]) -> (Spec, Spec) {
    let all = Spec {
        from_pod: args.from_pod.clone(),
        to_pod: args.to_pod.clone(),
        pod: args.pod.clone(),
        from_ip: args.from_ip.clone(),
        to_ip: args.to_ip.clone(),
        ip: args.ip.clone(),
        from_label: args.from_label.clone(),
        to_label: args.to_label.clone(),
        label: args.label.clone(),
        namespace: args.namespace.clone(),
        verdict: args.verdict.clone(),
        protocol: args.protocol.clone(),
        port: args.port.iter().map(u16::to_string).collect(),
        from_port: args.from_port.iter().map(u16::to_string).collect(),
        to_port: args.to_port.iter().map(u16::to_string).collect(),
        kind: args.kind.clone(),
        http_method: args.http_method.clone(),
        http_path: args.http_path.clone(),
        http_status: args.http_status.clone(),
        http_url: args.http_url.clone(),
        http_header: args.http_header.clone(),
    };
    if args.not == 0 {
        return (all, Spec::default());
    }
    let matches = crate::cli::Cli::command().try_get_matches_from(argv).ok();
    let Some(m) = matches
        .as_ref()
        .and_then(|m| m.subcommand_matches("observe"))
    else {
        return (all, Spec::default());
    };
    let nots: Vec<usize> = m
        .indices_of("not")
        .map(Iterator::collect)
        .unwrap_or_default();
    // (index on the command line, flag id, position among that flag's values)
    let mut occurrences: Vec<(usize, &str, usize)> = Vec::new();
    for id in FILTER_IDS {
        if let Some(idx) = m.indices_of(id) {
            occurrences.extend(idx.enumerate().map(|(pos, i)| (i, id, pos)));
        }
    }
    occurrences.sort_unstable();
    let mut negated_positions: Vec<(&str, usize)> = Vec::new();
    for n in nots {
        if let Some((_, id, pos)) = occurrences.iter().find(|(i, _, _)| *i > n) {
            negated_positions.push((id, *pos));
        }
    }
    let (mut keep, mut negated) = (Spec::default(), Spec::default());
    let mut source = all;
    for id in FILTER_IDS {
        let values = source.field(id).map(std::mem::take).unwrap_or_default();
        for (pos, v) in values.into_iter().enumerate() {
            let target = if negated_positions.contains(&(id, pos)) {
                &mut negated
            } else {
                &mut keep
            };
            if let Some(f) = target.field(id) {
                f.push(v);
            }
        }
    }
    (keep, negated)
}

fn parse_time(flag: &str, s: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago: Duration = humantime::parse_duration(s).map_err(|_| {
        anyhow!(
            "--{flag} {s}: expected an RFC 3339 time (2024-05-01T10:00:00Z) or a duration ago (5m)"
        )
    })?;
    now.checked_sub(ago)
        .ok_or_else(|| anyhow!("--{flag} {s}: too far back"))
}

/// The request the flags ask for.
pub fn request(
    args: &ObserveArgs,
    argv: &[std::ffi::OsString],
    now: SystemTime,
) -> anyhow::Result<GetFlowsRequest> {
    let (keep, negated) = split_negated(args, argv);
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time("since", s, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time("until", s, now))
        .transpose()?;
    let number = match args.last {
        Some(n) => n,
        None if args.follow || since.is_some() => 0,
        None => 20,
    };
    Ok(GetFlowsRequest {
        number,
        first: args.first,
        follow: args.follow,
        whitelist: keep.filters()?,
        blacklist: negated.filters()?,
        since: since.map(system_time_to_timestamp),
        until: until.map(system_time_to_timestamp),
        ..GetFlowsRequest::default()
    })
}

/// One response as printed.
pub fn render(format: Format, r: &GetFlowsResponse) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json | Format::Jsonpb | Format::Yaml => {
            let mut s = serde_json::to_string(r)?;
            s.push('\n');
            s
        }
        Format::Jsonpath(t) => output::jsonpath(t, r)?,
        Format::Compact | Format::Table => match &r.response_types {
            Some(ResponseTypes::Flow(f)) if format == Format::Table => {
                format!("{}\n", print::table_row(f).join("\t"))
            }
            Some(ResponseTypes::Flow(f)) => format!("{}\n", print::compact(f)),
            Some(ResponseTypes::LostEvents(l)) => format!(
                "EVENTS LOST: {} {}\n",
                ciliate_observer::proto::flow::LostEventSource::try_from(l.source)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN"),
                l.num_events_lost
            ),
            Some(ResponseTypes::NodeStatus(n)) => {
                format!("NODE STATUS: {:?} {}\n", n.node_names, n.message)
            }
            None => String::new(),
        },
    })
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
    let req = request(&args, &argv, SystemTime::now()).map_err(|error| super::Coded {
        code: 2,
        error: Hinted {
            error,
            hint: "see `ciliate observe --help`".into(),
        }
        .into(),
    })?;
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
    if format == Format::Table {
        output::print(&format!("{}\n", print::table_header().join("\t")))?;
    }
    loop {
        tokio::select! {
            biased;
            _ = interrupt.recv() => return Ok(Outcome::Success),
            _ = terminate.recv() => return Ok(Outcome::Success),
            msg = stream.message() => match msg.context("reading flows")? {
                Some(r) => {
                    if let Err(e) = output::print(&render(format, &r)?) {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(Outcome::Success);
                        }
                        return Err(e.into());
                    }
                }
                None => return Ok(Outcome::Success),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> (ObserveArgs, Vec<std::ffi::OsString>) {
        let argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let cli = crate::cli::Cli::try_parse_from(&argv).unwrap();
        match cli.command {
            crate::cli::Command::Observe(a) => (*a, argv),
            _ => panic!("not observe"),
        }
    }

    #[test]
    fn flags_become_hubble_filters() {
        let (a, argv) = parse(&[
            "ciliate",
            "observe",
            "--from-pod",
            "default/client",
            "--to-port",
            "80",
            "--verdict",
            "dropped",
            "--type",
            "drop:133",
        ]);
        let r = request(&a, &argv, SystemTime::now()).unwrap();
        assert_eq!(r.number, 20);
        assert_eq!(r.whitelist.len(), 1);
        let f = &r.whitelist[0];
        assert_eq!(f.source_pod, vec!["default/client"]);
        assert_eq!(f.destination_port, vec!["80"]);
        assert_eq!(f.verdict, vec![Verdict::Dropped as i32]);
        assert_eq!(
            f.event_type,
            vec![EventTypeFilter {
                r#type: 1,
                match_sub_type: true,
                sub_type: 133
            }]
        );
        assert!(r.blacklist.is_empty());
    }

    #[test]
    fn either_end_flags_make_two_filters_and_not_negates_the_next_flag() {
        let (a, argv) = parse(&[
            "ciliate",
            "observe",
            "--namespace",
            "prod",
            "--not",
            "--verdict",
            "FORWARDED",
            "--last",
            "5",
            "-f",
        ]);
        let r = request(&a, &argv, SystemTime::now()).unwrap();
        assert_eq!((r.number, r.follow), (5, true));
        assert_eq!(r.whitelist.len(), 2);
        assert_eq!(r.whitelist[0].source_pod, vec!["prod/"]);
        assert_eq!(r.whitelist[1].destination_pod, vec!["prod/"]);
        assert!(r.whitelist[0].verdict.is_empty());
        assert_eq!(r.blacklist.len(), 1);
        assert_eq!(r.blacklist[0].verdict, vec![Verdict::Forwarded as i32]);
    }

    #[test]
    fn times_and_bad_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (a, argv) = parse(&[
            "ciliate",
            "observe",
            "--since",
            "10m",
            "--until",
            "1970-01-12T13:46:40Z",
        ]);
        let r = request(&a, &argv, now).unwrap();
        assert_eq!(r.number, 0);
        assert_eq!(r.since.unwrap().seconds, 1_000_000 - 600);
        assert_eq!(r.until.unwrap().seconds, 1_000_000);
        let (a, argv) = parse(&["ciliate", "observe", "--verdict", "maybe"]);
        assert!(request(&a, &argv, now).is_err());
        let (a, argv) = parse(&["ciliate", "observe", "--since", "yesterday-ish"]);
        assert!(request(&a, &argv, now).is_err());
    }

    #[test]
    fn l7_flags_become_hubble_http_filters() {
        let (a, argv) = parse(&[
            "ciliate",
            "observe",
            "-t",
            "l7",
            "--http-method",
            "GET",
            "--http-path",
            "^/api/",
            "--http-status",
            "5+",
            "--http-status",
            "404",
            "--http-url",
            "web",
            "--http-header",
            "X-Request-Id:a:b",
            "--protocol",
            "http",
            "--not",
            "--http-method",
            "POST",
        ]);
        let r = request(&a, &argv, SystemTime::now()).unwrap();
        assert_eq!(r.whitelist.len(), 1);
        let f = &r.whitelist[0];
        assert_eq!(
            f.event_type,
            vec![EventTypeFilter {
                r#type: 129,
                match_sub_type: false,
                sub_type: 0
            }]
        );
        assert_eq!(f.http_method, vec!["GET"]);
        assert_eq!(f.http_path, vec!["^/api/"]);
        assert_eq!(f.http_status_code, vec!["5+", "404"]);
        assert_eq!(f.http_url, vec!["web"]);
        assert_eq!(
            f.http_header,
            vec![HttpHeader {
                key: "X-Request-Id".into(),
                value: "a:b".into()
            }]
        );
        assert_eq!(f.protocol, vec!["http"]);
        assert_eq!(r.blacklist.len(), 1);
        assert_eq!(r.blacklist[0].http_method, vec!["POST"]);
        let (a, argv) = parse(&["ciliate", "observe", "--type", "l7", "--http-method", "GET"]);
        let long = request(&a, &argv, SystemTime::now()).unwrap();
        assert_eq!(long.whitelist[0].event_type[0].r#type, 129);
        let (a, argv) = parse(&["ciliate", "observe", "--http-header", "no-colon"]);
        let e = request(&a, &argv, SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("NAME:VALUE"), "{e}");
        let (a, argv) = parse(&["ciliate", "observe", "--type", "l8"]);
        assert!(request(&a, &argv, SystemTime::now()).is_err());
    }

    fn l7_response() -> GetFlowsResponse {
        use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};
        use ciliate_observer::store::{EndpointInfo, Snapshot};
        let mut store = Snapshot::default();
        for (ip, id, pod) in [("10.0.0.2", 1, "client"), ("10.0.0.3", 2, "web-0")] {
            store.endpoints.insert(
                ip.parse().unwrap(),
                EndpointInfo {
                    id,
                    identity: 300 + id,
                    namespace: "default".into(),
                    pod_name: pod.into(),
                    labels: vec![],
                },
            );
        }
        let record = HttpRecord {
            time_ns: 1_700_000_000_123_000_000,
            record_type: L7RecordType::Response,
            endpoint: 1,
            egress: true,
            source: "10.0.0.2:40000".parse().unwrap(),
            destination: "10.0.0.3:80".parse().unwrap(),
            source_identity: 301,
            destination_identity: 302,
            verdict: L7Verdict::Forwarded,
            rule: 1,
            method: "GET".into(),
            url: "http://web/api".into(),
            protocol: "HTTP/1.1".into(),
            code: 200,
            headers: vec![],
            latency_ns: 12_500_000,
            reason: None,
        };
        let flow = ciliate_observer::l7::http_to_flow(&record, &store, "node-1");
        ciliate_observer::server::flow_response(flow, "node-1")
    }

    #[test]
    fn l7_flows_print_as_hubble_prints_them() {
        let r = l7_response();
        assert_eq!(
            render(Format::Compact, &r).unwrap(),
            "Nov 14 22:13:20.123: default/client:40000 (ID:301) <- default/web-0:80 (ID:302) \
             http-response FORWARDED (HTTP/1.1 200 12ms (GET http://web/api))\n"
        );
        let row = render(Format::Table, &r).unwrap();
        assert!(
            row.ends_with("\thttp-response\tFORWARDED\tHTTP/1.1 200 12ms (GET http://web/api)\n"),
            "{row}"
        );
        let json: serde_json::Value =
            serde_json::from_str(render(Format::Json, &r).unwrap().trim_end()).unwrap();
        let flow = &json["flow"];
        assert_eq!(flow["Type"], "L7");
        assert_eq!(flow["l7"]["type"], "RESPONSE");
        assert_eq!(flow["l7"]["http"]["code"], 200);
        assert_eq!(flow["l7"]["http"]["method"], "GET");
        assert_eq!(flow["l7"]["http"]["url"], "http://web/api");
        assert_eq!(flow["Summary"], "HTTP/1.1 200 12ms (GET http://web/api)");
        assert_eq!(
            flow["event_type"]["type"]
                .as_i64()
                .or(flow["eventType"]["type"].as_i64()),
            Some(129)
        );
    }
}
