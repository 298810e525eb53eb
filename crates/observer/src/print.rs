//! Flows as `hubble observe` prints them: a port of Hubble's `pkg/printer` (compact, dict,
//! table, json/jsonpb), byte for byte, plus a YAML stream of the same JSON.
//!
//! A [`Printer`] is fed every GetFlowsResponse of a stream ([`Printer::write`]) and says what
//! goes to stdout and what to stderr (node status events go to stderr, as Hubble's do); the
//! table is aligned over all rows, so it comes out at [`Printer::finish`], as Hubble's
//! tabwriter flushes at the end.

use crate::convert::{MESSAGE_TYPE_DROP, MESSAGE_TYPE_POLICY_VERDICT, MESSAGE_TYPE_TRACE};
use crate::proto::flow::{
    layer4, layer7, AuthType, DropReason, Flow, L7FlowType, LostEventSource, Policy,
    TraceObservationPoint, TrafficDirection, Verdict,
};
use crate::proto::observer::{get_flows_response::ResponseTypes, GetFlowsResponse};
use crate::proto::relay::NodeState;
use crate::protojson;

/// Hubble's `MessageTypeCapture`.
const MESSAGE_TYPE_CAPTURE: i32 = 3;
/// Hubble's `MessageTypeTraceSock`.
const MESSAGE_TYPE_TRACE_SOCK: i32 = 7;

/// The fields `hubble observe` asks the server for in compact, dict and table output
/// (Hubble's `defaults.FieldMask`). `ciliate observe` asks for whole flows: Hubble's mask
/// leaves out `traffic_direction` and `policy_match_type`, so Hubble prints policy verdicts
/// as `policy-verdict:none TRAFFIC_DIRECTION_UNKNOWN`.
pub const HUBBLE_DEFAULT_FIELD_MASK: [&str; 20] = [
    "time",
    "verdict",
    "ethernet",
    "IP",
    "l4",
    "source.identity",
    "source.namespace",
    "source.pod_name",
    "destination.identity",
    "destination.namespace",
    "destination.pod_name",
    "Type",
    "node_name",
    "l7",
    "event_type",
    "source_service",
    "destination_service",
    "is_reply",
    "Summary",
    "ip_trace_id",
];

/// How [`Printer`] writes responses (`hubble observe -o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// One line per flow (the default).
    #[default]
    Compact,
    /// `KEY: value` blocks separated by `------------`.
    Dict,
    /// Aligned columns under a header, printed at the end.
    Table,
    /// The GetFlowsResponse in Hubble's JSON, one per line (`-o json` and `-o jsonpb`).
    JsonPb,
    /// The bare Flow in Hubble's JSON (Hubble's `--compat legacy-json-output`).
    JsonLegacy,
    /// The GetFlowsResponse of `JsonPb` as YAML documents, each started by `---`.
    Yaml,
}

/// The time layouts of `--time-format` (Hubble's `hubtime.FormatNames`), in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// `Jan _2 15:04:05.000` (the default).
    #[default]
    StampMilli,
    /// `2006-01-02`.
    YearMonthDay,
    /// `2006-01-02T15Z`.
    YearMonthDayHour,
    /// `2006-01-02T15:04Z`.
    YearMonthDayHourMinute,
    /// `2006-01-02T15:04:05Z`.
    Rfc3339,
    /// RFC 3339 with up to 3 fractional digits, trailing zeros dropped.
    Rfc3339Milli,
    /// RFC 3339 with up to 6 fractional digits, trailing zeros dropped.
    Rfc3339Micro,
    /// RFC 3339 with up to 9 fractional digits, trailing zeros dropped.
    Rfc3339Nano,
    /// `Mon, 02 Jan 2006 15:04:05 +0000`.
    Rfc1123Z,
}

impl TimeFormat {
    /// The names `--time-format` accepts, as Hubble lists them.
    pub const NAMES: [&'static str; 9] = [
        "YearMonthDay",
        "YearMonthDayHour",
        "YearMonthDayHourMinute",
        "StampMilli",
        "RFC3339",
        "RFC3339Milli",
        "RFC3339Micro",
        "RFC3339Nano",
        "RFC1123Z",
    ];

    /// Hubble's `FormatNameToLayout`: any case; an unknown name means StampMilli.
    pub fn from_name(name: &str) -> TimeFormat {
        match name.to_ascii_lowercase().as_str() {
            "yearmonthday" => TimeFormat::YearMonthDay,
            "yearmonthdayhour" => TimeFormat::YearMonthDayHour,
            "yearmonthdayhourminute" => TimeFormat::YearMonthDayHourMinute,
            "rfc3339" => TimeFormat::Rfc3339,
            "rfc3339milli" => TimeFormat::Rfc3339Milli,
            "rfc3339micro" => TimeFormat::Rfc3339Micro,
            "rfc3339nano" => TimeFormat::Rfc3339Nano,
            "rfc1123z" => TimeFormat::Rfc1123Z,
            _ => TimeFormat::StampMilli,
        }
    }
}

/// Printer options (Hubble's `printer.Options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The format.
    pub output: Output,
    /// `--print-node-name`: the node in compact, dict and table output.
    pub node_name: bool,
    /// Pod, Service and DNS names instead of IPs (`--ip-translation`, off with `--numeric`).
    pub ip_translation: bool,
    /// `--time-format`.
    pub time_format: TimeFormat,
    /// `--debug`: every node status event, not only errors and unavailable nodes.
    pub debug: bool,
    /// `--print-policy-names`: policy verdicts name the policies that decided them.
    pub policy_names: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            output: Output::Compact,
            node_name: false,
            ip_translation: true,
            time_format: TimeFormat::StampMilli,
            debug: false,
            policy_names: false,
        }
    }
}

/// What one response prints.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// For stdout.
    pub stdout: String,
    /// For stderr.
    pub stderr: String,
}

/// Hubble's printer over a stream of responses.
#[derive(Debug, Default)]
pub struct Printer {
    opts: Options,
    line: usize,
    rows: Vec<Vec<String>>,
}

const DICT_SEPARATOR: &str = "------------";
const NODE_NAMES_CUT_OFF: usize = 50;

impl Printer {
    /// A printer with these options.
    pub fn new(opts: Options) -> Printer {
        Printer {
            opts,
            line: 0,
            rows: Vec::new(),
        }
    }

    /// Prints one response (Hubble's `WriteGetFlowsResponse`).
    pub fn write(&mut self, res: &GetFlowsResponse) -> Result<Written, protojson::Error> {
        match &res.response_types {
            Some(ResponseTypes::Flow(f)) => self.write_flow(res, f),
            Some(ResponseTypes::NodeStatus(_)) => Ok(Written {
                stdout: String::new(),
                stderr: self.write_node_status(res)?,
            }),
            Some(ResponseTypes::LostEvents(_)) => self.write_lost(res),
            None => Ok(Written::default()),
        }
    }

    /// What is left to print when the stream ends: the table.
    pub fn finish(&mut self) -> String {
        let out = align(&std::mem::take(&mut self.rows));
        escape_terminal(&out)
    }

    fn header(&self) -> Vec<String> {
        let mut h = vec!["TIMESTAMP".to_owned()];
        if self.opts.node_name {
            h.push("NODE".to_owned());
        }
        h.extend(
            ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        h
    }

    fn time(&self, ts: Option<&pbjson_types::Timestamp>) -> String {
        format_time(self.opts.time_format, ts)
    }

    fn json(
        &self,
        res: &GetFlowsResponse,
        flow: Option<&Flow>,
    ) -> Result<String, protojson::Error> {
        Ok(match (self.opts.output, flow) {
            (Output::JsonLegacy, Some(f)) => {
                format!(
                    "{}\n",
                    protojson::to_json(f, "flow.Flow")?.to_hubble_string()
                )
            }
            (Output::Yaml, _) => {
                yaml_document(&protojson::to_json(res, "observer.GetFlowsResponse")?)
            }
            _ => format!("{}\n", protojson::response_string(res)?),
        })
    }

    fn write_flow(
        &mut self,
        res: &GetFlowsResponse,
        f: &Flow,
    ) -> Result<Written, protojson::Error> {
        let mut out = String::new();
        match self.opts.output {
            Output::Table => {
                if self.line == 0 {
                    self.rows.push(self.header());
                }
                let (src, dst) = host_names(f, self.opts.ip_translation);
                let mut row = vec![self.time(f.time.as_ref())];
                if self.opts.node_name {
                    row.push(f.node_name.clone());
                }
                row.extend([
                    src,
                    dst,
                    flow_type(f),
                    verdict_with(f, self.opts.policy_names),
                    summary_text(f),
                ]);
                self.rows.push(row);
            }
            Output::Dict => {
                let (src, dst) = host_names(f, self.opts.ip_translation);
                if self.line != 0 {
                    out.push_str(DICT_SEPARATOR);
                    out.push('\n');
                }
                out.push_str(&format!("  TIMESTAMP: {}\n", self.time(f.time.as_ref())));
                if self.opts.node_name {
                    out.push_str(&format!("       NODE: {}\n", f.node_name));
                }
                out.push_str(&format!(
                    "     SOURCE: {src}\nDESTINATION: {dst}\n       TYPE: {}\n    VERDICT: {}\n    SUMMARY: {}\n",
                    flow_type(f),
                    verdict_with(f, self.opts.policy_names),
                    summary_text(f)
                ));
                out = escape_terminal(&out);
            }
            Output::Compact => {
                out = escape_terminal(&compact_line(f, self.opts));
            }
            Output::JsonPb | Output::JsonLegacy | Output::Yaml => out = self.json(res, Some(f))?,
        }
        self.line += 1;
        Ok(Written {
            stdout: out,
            stderr: String::new(),
        })
    }

    fn write_lost(&mut self, res: &GetFlowsResponse) -> Result<Written, protojson::Error> {
        let Some(ResponseTypes::LostEvents(l)) = &res.response_types else {
            return Ok(Written::default());
        };
        let src = LostEventSource::try_from(l.source)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| l.source.to_string());
        let cpu = l.cpu.as_ref().map_or(0, |c| c.value);
        let node = if res.node_name.is_empty() {
            "-".to_owned()
        } else {
            res.node_name.clone()
        };
        // Hubble: `CPU(5) - 1 (first: …, last: …)`, without the dash in compact output.
        let span = match (&l.first, &l.last) {
            (Some(first), Some(last)) => format!(
                " (first: {}, last: {})",
                self.time(Some(first)),
                self.time(Some(last))
            ),
            _ => String::new(),
        };
        let mut out = String::new();
        match self.opts.output {
            Output::Table => {
                if self.line == 0 {
                    self.rows.push(self.header());
                }
                let mut row = vec![self.time(res.time.as_ref())];
                if self.opts.node_name {
                    row.push(node);
                }
                row.extend([
                    src,
                    "-".to_owned(),
                    "EVENTS LOST".to_owned(),
                    "-".to_owned(),
                    format!("CPU({cpu}) - {}{span}", l.num_events_lost),
                ]);
                self.rows.push(row);
            }
            Output::Dict => {
                if self.line != 0 {
                    out.push_str(DICT_SEPARATOR);
                    out.push('\n');
                }
                out.push_str(&format!("  TIMESTAMP: {}\n", self.time(res.time.as_ref())));
                if self.opts.node_name {
                    out.push_str(&format!("       NODE: {node}\n"));
                }
                out.push_str(&format!(
                    "     SOURCE: {src}\n       TYPE: EVENTS LOST\n    VERDICT: -\n    SUMMARY: CPU({cpu}) - {}{span}\n",
                    l.num_events_lost
                ));
                out = escape_terminal(&out);
            }
            Output::Compact => {
                out = escape_terminal(&format!(
                    "{} EVENTS LOST: {src} CPU({cpu}) {}{span}\n",
                    self.time(res.time.as_ref()),
                    l.num_events_lost
                ));
            }
            Output::JsonLegacy => {
                out = format!(
                    "{}\n",
                    protojson::to_json(l, "flow.LostEvent")?.to_hubble_string()
                );
            }
            Output::JsonPb | Output::Yaml => out = self.json(res, None)?,
        }
        self.line += 1;
        Ok(Written {
            stdout: out,
            stderr: String::new(),
        })
    }

    fn write_node_status(&mut self, res: &GetFlowsResponse) -> Result<String, protojson::Error> {
        let Some(ResponseTypes::NodeStatus(s)) = &res.response_types else {
            return Ok(String::new());
        };
        let state = NodeState::try_from(s.state_change).unwrap_or(NodeState::UnknownNodeState);
        if !self.opts.debug && !matches!(state, NodeState::NodeError | NodeState::NodeUnavailable) {
            // Hubble skips informational node events unless debugging.
            return Ok(String::new());
        }
        let names = join_with_cut_off(&s.node_names, ", ", NODE_NAMES_CUT_OFF);
        let n = s.node_names.len();
        Ok(match self.opts.output {
            Output::JsonPb | Output::Yaml => self.json(res, None)?,
            Output::JsonLegacy => String::new(),
            Output::Dict => {
                let mut out = String::new();
                if self.line != 0 {
                    out.push_str(DICT_SEPARATOR);
                    out.push('\n');
                } else {
                    self.line += 1;
                }
                let message = if s.message.is_empty() {
                    "N/A".to_owned()
                } else {
                    go_quote(&s.message)
                };
                out.push_str(&format!(
                    "  TIMESTAMP: {}\n      STATE: {}\n      NODES: {names}\n    MESSAGE: {message}\n",
                    self.time(res.time.as_ref()),
                    state.as_str_name()
                ));
                escape_terminal(&out)
            }
            Output::Table | Output::Compact => {
                let prefix = format!("{} [{}]", self.time(res.time.as_ref()), res.node_name);
                let msg = match state {
                    NodeState::NodeConnected => {
                        format!("{prefix}: Receiving flows from {n} nodes: {names}")
                    }
                    NodeState::NodeUnavailable => {
                        format!("{prefix}: {n} nodes are unavailable: {names}")
                    }
                    NodeState::NodeGone => {
                        format!("{prefix}: {n} nodes removed from cluster: {names}")
                    }
                    NodeState::NodeError => format!(
                        "{prefix}: Error {} on {n} nodes: {names}",
                        go_quote(&s.message)
                    ),
                    NodeState::UnknownNodeState => format!(
                        "{prefix}: unknown node status event: {{state_change:{} node_names:{:?} message:{}}}",
                        s.state_change,
                        s.node_names,
                        go_quote(&s.message)
                    ),
                };
                escape_terminal(&format!("{msg}\n"))
            }
        })
    }
}

/// One YAML document of a JSON tree, started by `---`.
fn yaml_document(json: &protojson::Json) -> String {
    let body = serde_yaml_ng::to_string(json).unwrap_or_else(|e| format!("# {e}\n"));
    format!("---\n{body}")
}

/// Hubble's `terminalEscaperWriter`: ESC and CR in names must not drive the terminal.
fn escape_terminal(s: &str) -> String {
    if !s.contains(['\x1b', '\r']) {
        return s.to_owned();
    }
    s.replace('\x1b', "^[").replace('\r', "\\r")
}

/// Go's `strconv.Quote` for the printable text flows carry.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_control() => {
                let n = u32::from(c);
                if n < 0x100 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else {
                    out.push_str(&format!("\\u{n:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Hubble's `joinWithCutOff`: names joined until about `target` bytes, then `(and N more)`.
fn join_with_cut_off(elems: &[String], sep: &str, target: usize) -> String {
    let mut len = 0;
    let mut end = elems.len();
    for (i, e) in elems.iter().enumerate() {
        len += e.len() + sep.len();
        if len > target && i > 0 {
            end = i;
            break;
        }
    }
    let joined = elems[..end].join(sep);
    if end == elems.len() {
        joined
    } else {
        format!("{joined} (and {} more)", elems.len() - end)
    }
}

/// Go's `text/tabwriter` as Hubble configures it (min width 2, padding 3, spaces): every
/// cell but the last of a line padded to its column's widest cell plus 3.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns.saturating_sub(1)];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns.saturating_sub(1)) {
            if i + 1 < row.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let width = (widths[i] + 3).max(2);
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// The compact line of a flow (with its newline), Hubble's `CompactOutput`:
/// `Jan  2 15:04:05.000 [node]: default/a:40000 (ID:256) -> default/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)`.
/// A reply is printed from the connection's point of view, with `<-`; `<>` when unknown.
pub fn compact_line(f: &Flow, opts: Options) -> String {
    let (mut src, mut dst) = host_names(f, opts.ip_translation);
    let (mut src_id, mut dst_id) = (
        fmt_identity(f.source.as_ref().map_or(0, |e| e.identity)),
        fmt_identity(f.destination.as_ref().map_or(0, |e| e.identity)),
    );
    let node = if opts.node_name {
        format!(" [{}]", f.node_name)
    } else {
        String::new()
    };
    let arrow = match f.is_reply.as_ref().map(|b| b.value) {
        None => "<>",
        Some(true) => {
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
        Some(false) => "->",
    };
    format!(
        "{}{node}: {src} {src_id} {arrow} {dst} {dst_id} {} {} ({})\n",
        format_time(opts.time_format, f.time.as_ref()),
        flow_type(f),
        verdict_with(f, opts.policy_names),
        summary_text(f)
    )
}

/// [`compact_line`] with Hubble's default options, without the newline.
pub fn compact(flow: &Flow) -> String {
    compact_line(flow, Options::default())
        .trim_end_matches('\n')
        .to_owned()
}

/// The enum name of a drop reason code, as Hubble's metrics label it (`POLICY_DENIED`).
pub fn drop_reason_name(code: i32) -> String {
    DropReason::try_from(code)
        .map(|r| r.as_str_name().to_owned())
        .unwrap_or_else(|_| code.to_string())
}

/// Cilium's text of a drop reason (`pkg/monitor/api.DropReason`): `Policy denied`, or
/// `<code>, 0` for one it does not know.
pub fn drop_reason_text(code: i32) -> String {
    let text = match code {
        0 => "Success",
        2 | 134 => "Invalid packet",
        3 => "Interface",
        4 => "Interface Decrypted",
        5 => "LB, sock cgroup: No backend slot entry found",
        6 => "LB, sock cgroup: No backend entry found",
        7 => "LB, sock cgroup: Reverse entry update failed",
        8 => "LB, sock cgroup: Reverse entry stale",
        9 => "Fragmented packet",
        10 => "Fragmented packet entry update failed",
        11 => "Missed tail call to custom program",
        12 => "Interface Decrypting",
        13 => "Interface Encrypting",
        14 => "LB: sock cgroup: Reverse entry delete succeeded",
        15 => "MTU error message",
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied",
        135 => "CT: Truncated or invalid header",
        136 => "Fragmentation needed",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        148 => "Error retrieving tunnel options",
        149 => "Invalid Geneve option",
        150 => "Unknown L3 target address",
        151 => "Stale or unroutable IP",
        152 => "No matching local container found",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        158 => "Service backend not found",
        160 => "No tunnel/encapsulation endpoint (datapath BUG!)",
        161 => "NAT 46/64 not enabled",
        162 => "Reached EDT rate-limiting drop horizon",
        163 => "Unknown connection tracking state",
        164 => "Local host is unreachable",
        165 => "No configuration available to perform policy decision",
        166 => "Unsupported L2 protocol",
        167 => "No mapping for NAT masquerade",
        168 => "Unsupported protocol for NAT masquerade",
        169 => "FIB lookup failed",
        170 => "Encapsulation traffic is prohibited",
        171 => "Invalid identity",
        172 => "Unknown sender",
        173 => "NAT not needed",
        174 => "Is a ClusterIP",
        175 => "First logical datagram fragment not found",
        176 => "Forbidden ICMPv6 message",
        177 => "Denied by LB src range check",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        182 => "VLAN traffic disallowed by VLAN filter",
        183 => "Incorrect VNI from VTEP",
        184 => "Failed to update or lookup TC buffer",
        185 => "No SID was found for the IP address",
        186 => "SRv6 state was removed during tail call",
        187 => "L3 translation from IPv4 to IPv6 failed (NAT46)",
        188 => "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189 => "Authentication required",
        190 => "No conntrack map found",
        191 => "No nat map found",
        192 => "Invalid ClusterID",
        193 => "Unsupported packet protocol for DSR encapsulation",
        194 => "No egress gateway found",
        195 => "Traffic is unencrypted",
        196 => "TTL exceeded",
        197 => "No node ID found",
        198 => "Rate limited",
        199 => "IGMP handled",
        200 => "IGMP subscribed",
        201 => "Multicast handled",
        202 => "Host datapath not ready",
        203 => "Endpoint policy program not available",
        204 => "No Egress IP configured",
        205 => "Punt to proxy",
        other => return format!("{other}, 0"),
    };
    text.to_owned()
}

/// `TCP`, `UDP`, `ICMPv4`, ... or "" when the flow has no L4 header we know.
pub fn protocol_name(flow: &Flow) -> &'static str {
    match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => "TCP",
        Some(layer4::Protocol::Udp(_)) => "UDP",
        Some(layer4::Protocol::IcmPv4(_)) => "ICMPv4",
        Some(layer4::Protocol::IcmPv6(_)) => "ICMPv6",
        Some(layer4::Protocol::Sctp(_)) => "SCTP",
        None => "",
    }
}

/// Hubble's trace observation point enum in Cilium's words (`to-endpoint`, `from-endpoint`).
pub fn observation_point_name_of(point: i32) -> String {
    match TraceObservationPoint::try_from(point) {
        Ok(TraceObservationPoint::ToEndpoint) => "to-endpoint".to_owned(),
        Ok(TraceObservationPoint::FromEndpoint) => "from-endpoint".to_owned(),
        Ok(TraceObservationPoint::UnknownPoint) | Err(_) => "unknown".to_owned(),
        Ok(p) => p.as_str_name().to_ascii_lowercase().replace('_', "-"),
    }
}

/// Cilium's trace observation points by the trace event's sub type
/// (`pkg/monitor/api.TraceObservationPoint`): `to-endpoint`, or the number.
pub fn trace_point_text(sub_type: u8) -> String {
    const POINTS: [&str; 14] = [
        "to-endpoint",
        "to-proxy",
        "to-host",
        "to-stack",
        "to-overlay",
        "from-endpoint",
        "from-proxy",
        "from-host",
        "from-stack",
        "from-overlay",
        "from-network",
        "to-network",
        "from-crypto",
        "to-crypto",
    ];
    POINTS
        .get(usize::from(sub_type))
        .map_or_else(|| sub_type.to_string(), |p| (*p).to_owned())
}

/// Hubble's `GetFlowType`: `to-endpoint`, `Policy denied`, `policy-verdict:L3-L4 INGRESS`,
/// `http-request`, `dns-response proxy`, `kafka-request`.
pub fn flow_type(flow: &Flow) -> String {
    if let Some(l7) = &flow.l7 {
        let mut kind = L7FlowType::try_from(l7.r#type)
            .map(|t| t.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| l7.r#type.to_string());
        let proto = match &l7.record {
            Some(layer7::Record::Http(_)) => "http",
            Some(layer7::Record::Dns(d)) => {
                kind = format!("{kind} {}", d.observation_source);
                "dns"
            }
            Some(layer7::Record::Kafka(_)) => "kafka",
            None => "l7",
        };
        return format!("{proto}-{kind}");
    }
    let (kind, sub) = flow
        .event_type
        .as_ref()
        .map_or((0, 0), |e| (e.r#type, e.sub_type));
    // Go converts the sub type with uint8(): the low byte.
    let sub = u8::try_from(sub & 0xff).unwrap_or(0);
    match kind {
        MESSAGE_TYPE_TRACE => trace_point_text(sub),
        MESSAGE_TYPE_DROP => drop_reason_text(i32::from(sub)),
        MESSAGE_TYPE_POLICY_VERDICT => format!(
            "policy-verdict:{} {}",
            policy_match_text(flow.policy_match_type),
            enum_text(
                TrafficDirection::try_from(flow.traffic_direction).map(|d| d.as_str_name()),
                flow.traffic_direction
            )
        ),
        // Ciliate records no debug captures and no socket translations (their Flow fields
        // are not in the API); Hubble prints the capture point's enum name here.
        MESSAGE_TYPE_CAPTURE => "DBG_CAPTURE_POINT_UNKNOWN".to_owned(),
        MESSAGE_TYPE_TRACE_SOCK => "SOCK_XLATE_POINT_UNKNOWN".to_owned(),
        _ => "UNKNOWN".to_owned(),
    }
}

/// [`flow_type`] (the former name).
pub fn event_summary(flow: &Flow) -> String {
    flow_type(flow)
}

fn enum_text(name: Result<&'static str, prost::UnknownEnumValue>, value: i32) -> String {
    name.map_or_else(|_| value.to_string(), str::to_owned)
}

/// Cilium's `PolicyMatchType.String()`.
fn policy_match_text(m: u32) -> &'static str {
    match m {
        0 => "none",
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        5 => "L3-Proto",
        6 => "Proto-Only",
        _ => "unknown",
    }
}

/// Hubble's `getVerdict`: policy verdicts read ALLOWED, DENIED, AUDITED.
pub fn verdict_text(flow: &Flow) -> String {
    verdict_with(flow, false)
}

/// Hubble's `getVerdict`; with `names`, `ALLOWED BY web-allow (CiliumNetworkPolicy)`.
fn verdict_with(flow: &Flow, names: bool) -> String {
    let policy = flow.event_type.as_ref().map(|e| e.r#type) == Some(MESSAGE_TYPE_POLICY_VERDICT);
    let verdict = Verdict::try_from(flow.verdict);
    let ingress = flow.traffic_direction == TrafficDirection::Ingress as i32;
    let egress = flow.traffic_direction == TrafficDirection::Egress as i32;
    let by = |egress_list: &[Policy], ingress_list: &[Policy]| -> String {
        match (names, egress, ingress) {
            (true, true, _) => policy_names_text(egress_list),
            (true, _, true) => policy_names_text(ingress_list),
            _ => String::new(),
        }
    };
    match verdict {
        Ok(Verdict::Forwarded | Verdict::Redirected) if policy => format!(
            "ALLOWED{}",
            by(&flow.egress_allowed_by, &flow.ingress_allowed_by)
        ),
        Ok(Verdict::Dropped | Verdict::Error) if policy => format!(
            "DENIED{}",
            by(&flow.egress_denied_by, &flow.ingress_denied_by)
        ),
        // Hubble v1.19 names no policies for audits (later Cilium does).
        Ok(Verdict::Audit) if policy => "AUDITED".to_owned(),
        v => enum_text(v.map(|v| v.as_str_name()), flow.verdict),
    }
}

/// Hubble's `formatPolicyNames`: ` BY a (CiliumNetworkPolicy), b (Kind)`, policies without
/// a kind or a name left out.
pub fn policy_names_text(policies: &[Policy]) -> String {
    let named: Vec<String> = policies
        .iter()
        .filter(|p| !p.kind.is_empty() && !p.name.is_empty())
        .map(|p| format!("{} ({})", p.name, p.kind))
        .collect();
    if named.is_empty() {
        String::new()
    } else {
        format!(" BY {}", named.join(", "))
    }
}

/// Hubble's `getSummary`: the flow's `Summary`, after its IP trace ID if any, and
/// `; Auth: SPIRE` when auth is on.
pub fn summary_text(flow: &Flow) -> String {
    let mut out = match &flow.ip_trace_id {
        Some(t) if t.trace_id > 0 => format!("IP Trace ID: {}; ", t.trace_id),
        _ => String::new(),
    };
    out.push_str(&flow.summary);
    if flow.auth_type != AuthType::Disabled as i32 {
        out.push_str("; Auth: ");
        out.push_str(&enum_text(
            AuthType::try_from(flow.auth_type).map(|a| a.as_str_name()),
            flow.auth_type,
        ));
    }
    out
}

/// One end of a flow as compact output shows it: `default/web-0:80 (ID:257)`, `1.1.1.1:443
/// (world)`.
pub fn endpoint_text(flow: &Flow, source: bool) -> String {
    let (src, dst) = host_names(flow, true);
    let ep = if source {
        flow.source.as_ref()
    } else {
        flow.destination.as_ref()
    };
    let host = if source { src } else { dst };
    format!("{host} {}", fmt_identity(ep.map_or(0, |e| e.identity)))
}

/// [`summary_text`] (the former name).
pub fn summary(flow: &Flow) -> String {
    summary_text(flow)
}

/// A flow time in Go's `StampMilli` (`Jan  2 15:04:05.000`, UTC), `N/A` when missing.
pub fn stamp_milli(ts: Option<&pbjson_types::Timestamp>) -> String {
    format_time(TimeFormat::StampMilli, ts)
}

/// Cilium's reserved identities by number (`identity.NumericIdentity.String`).
fn reserved_identity(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "unknown",
        1 => "host",
        2 => "world",
        3 => "unmanaged",
        4 => "health",
        5 => "init",
        6 => "remote-node",
        7 => "kube-apiserver",
        8 => "ingress",
        9 => "world-ipv4",
        10 => "world-ipv6",
        _ => return None,
    })
}

/// `(world)` for a reserved identity, else `(ID:1234)`.
pub fn fmt_identity(id: u32) -> String {
    match reserved_identity(id) {
        Some(name) => format!("({name})"),
        None => format!("(ID:{id})"),
    }
}

fn ports(f: &Flow) -> (String, String) {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            (t.source_port.to_string(), t.destination_port.to_string())
        }
        Some(layer4::Protocol::Udp(u)) => {
            (u.source_port.to_string(), u.destination_port.to_string())
        }
        Some(layer4::Protocol::Sctp(s)) => {
            (s.source_port.to_string(), s.destination_port.to_string())
        }
        _ => (String::new(), String::new()),
    }
}

/// Go's `path.Join(ns, name)` for the names flows carry.
fn join_name(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}/{name}")
    }
}

/// Hubble's `Hostname`: the pod, else the Service, else the DNS names, else the IP; with
/// `:port` unless the port is 0 (IPv6 in brackets, as Go's `net.JoinHostPort`).
fn hostname(
    ip: &str,
    port: &str,
    ns: &str,
    pod: &str,
    svc: &str,
    names: &[String],
    translate: bool,
) -> String {
    let mut host = ip.to_owned();
    if translate {
        if !pod.is_empty() {
            host = join_name(ns, pod);
        } else if !svc.is_empty() {
            host = join_name(ns, svc);
        } else if !names.is_empty() {
            host = names.join(",");
        }
    }
    if !port.is_empty() && port != "0" {
        if host.contains(':') {
            return format!("[{host}]:{port}");
        }
        return format!("{host}:{port}");
    }
    host
}

/// Hubble's `GetHostNames`: the two ends as compact and table output name them. A Service's
/// namespace wins over the pod's, as in Hubble.
pub fn host_names(f: &Flow, translate: bool) -> (String, String) {
    let Some(ip) = &f.ip else {
        if let Some(eth) = &f.ethernet {
            return (eth.source.clone(), eth.destination.clone());
        }
        return (String::new(), String::new());
    };
    let (mut src_ns, mut src_pod, mut dst_ns, mut dst_pod) = Default::default();
    let (mut src_svc, mut dst_svc) = (String::new(), String::new());
    if let Some(s) = &f.source {
        (src_ns, src_pod) = (s.namespace.clone(), s.pod_name.clone());
    }
    if let Some(d) = &f.destination {
        (dst_ns, dst_pod) = (d.namespace.clone(), d.pod_name.clone());
    }
    if let Some(s) = &f.source_service {
        (src_ns, src_svc) = (s.namespace.clone(), s.name.clone());
    }
    if let Some(s) = &f.destination_service {
        (dst_ns, dst_svc) = (s.namespace.clone(), s.name.clone());
    }
    let (sp, dp) = ports(f);
    (
        hostname(
            &ip.source,
            &sp,
            &src_ns,
            &src_pod,
            &src_svc,
            &f.source_names,
            translate,
        ),
        hostname(
            &ip.destination,
            &dp,
            &dst_ns,
            &dst_pod,
            &dst_svc,
            &f.destination_names,
            translate,
        ),
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// Go's `.999…` fraction: up to `digits` digits, trailing zeros and an empty fraction dropped.
fn trimmed_fraction(nanos: i32, digits: usize) -> String {
    let all = format!("{nanos:09}");
    let cut = all[..digits].trim_end_matches('0');
    if cut.is_empty() {
        String::new()
    } else {
        format!(".{cut}")
    }
}

/// A flow time as Hubble prints it (`fmtTimestamp`): `N/A` when missing or invalid.
pub fn format_time(format: TimeFormat, ts: Option<&pbjson_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "N/A".to_owned();
    };
    if protojson::timestamp_string(ts.seconds, ts.nanos).is_err() {
        return "N/A".to_owned();
    }
    let days = ts.seconds.div_euclid(86_400);
    let rem = ts.seconds.rem_euclid(86_400);
    let (y, mo, d) = protojson::civil_from_days(days);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let month = MONTHS[usize::try_from(mo - 1).unwrap_or(0)];
    let date = format!("{y:04}-{mo:02}-{d:02}");
    match format {
        TimeFormat::StampMilli => format!(
            "{month} {d:>2} {h:02}:{mi:02}:{s:02}.{:03}",
            ts.nanos / 1_000_000
        ),
        TimeFormat::YearMonthDay => date,
        TimeFormat::YearMonthDayHour => format!("{date}T{h:02}Z"),
        TimeFormat::YearMonthDayHourMinute => format!("{date}T{h:02}:{mi:02}Z"),
        TimeFormat::Rfc3339 => format!("{date}T{h:02}:{mi:02}:{s:02}Z"),
        TimeFormat::Rfc3339Milli | TimeFormat::Rfc3339Micro | TimeFormat::Rfc3339Nano => {
            let digits = match format {
                TimeFormat::Rfc3339Milli => 3,
                TimeFormat::Rfc3339Micro => 6,
                _ => 9,
            };
            format!(
                "{date}T{h:02}:{mi:02}:{s:02}{}Z",
                trimmed_fraction(ts.nanos, digits)
            )
        }
        TimeFormat::Rfc1123Z => format!(
            "{}, {d:02} {month} {y:04} {h:02}:{mi:02}:{s:02} +0000",
            WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)]
        ),
    }
}

#[cfg(test)]
#[path = "print_tests.rs"]
mod tests;
