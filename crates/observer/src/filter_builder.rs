//! Hubble FlowFilters from `hubble observe`'s filter flags, built exactly as Hubble's CLI
//! builds them (`hubble/cmd/observe/flows_filter.go`). One builder for every front end:
//! `ciliate observe` feeds it its command line, the service map (`ciliate ui`) its query
//! string, so both select the same flows for the same request.
//!
//! Hubble's rules: flags are applied in the order given; a flag about either end (`--pod`,
//! `--ip`, `--label`, `--port`, `--service`, `--fqdn`, `--identity`, `--workload`,
//! `--cluster`) fills the source side of a left filter and the destination side of a right
//! one (ORed); `--namespace` flags are applied to the pod and Service filters at the end; some
//! flags cannot be combined; `--not` sends the next flag to the denylist.

use crate::filter::FlowFilters;
use crate::proto::flow::{
    DropReason, EventTypeFilter, FlowFilter, HttpHeader, IpVersion, NetworkInterface, TcpFlags,
    TrafficDirection, Verdict, Workload,
};

/// The filter flags that take a value: Hubble's, in the order of its `--help`, and
/// Ciliate's `dns-query` (Hubble has the FlowFilter field but no flag for it).
pub const VALUE_FLAGS: &[&str] = &[
    "uuid",
    "node-name",
    "node-label",
    "from-cluster",
    "cluster",
    "to-cluster",
    "protocol",
    "tcp-flags",
    "type",
    "verdict",
    "drop-reason-desc",
    "http-status",
    "http-method",
    "http-path",
    "http-url",
    "http-header",
    "trace-id",
    "ip-trace-id",
    "from-fqdn",
    "fqdn",
    "to-fqdn",
    "from-ip",
    "snat-ip",
    "ip",
    "to-ip",
    "ip-version",
    "from-pod",
    "pod",
    "to-pod",
    "from-namespace",
    "namespace",
    "to-namespace",
    "from-label",
    "label",
    "to-label",
    "from-service",
    "service",
    "to-service",
    "from-port",
    "port",
    "to-port",
    "from-workload",
    "workload",
    "to-workload",
    "from-identity",
    "identity",
    "to-identity",
    "traffic-direction",
    "cel-expression",
    "interface",
    "dns-query",
];

/// The filter flags without a value, and the value Hubble gives them (`NoOptDefVal`).
pub const SWITCH_FLAGS: &[(&str, &str)] = &[
    ("not", "true"),
    ("ipv4", "v4"),
    ("ipv6", "v6"),
    ("from-all-namespaces", "true"),
    ("all-namespaces", "true"),
    ("to-all-namespaces", "true"),
    ("encrypted", "true"),
    ("unencrypted", "true"),
];

/// The flags that fill each FlowFilter field (namespace flags fill the pod and Service
/// fields), so a front end can name the flag behind a field the filter compiler refused.
pub fn flags_of_field(field: &str) -> &'static [&'static str] {
    const SRC_NS: [&str; 4] = [
        "namespace",
        "from-namespace",
        "all-namespaces",
        "from-all-namespaces",
    ];
    match field {
        "uuid" => &["uuid"],
        "source_ip" => &["ip", "from-ip"],
        "destination_ip" => &["ip", "to-ip"],
        "source_ip_xlated" => &["snat-ip"],
        "source_pod" => &[
            "pod", "from-pod", SRC_NS[0], SRC_NS[1], SRC_NS[2], SRC_NS[3],
        ],
        "destination_pod" => &[
            "pod",
            "to-pod",
            "namespace",
            "to-namespace",
            "all-namespaces",
            "to-all-namespaces",
        ],
        "source_service" => &[
            "service",
            "from-service",
            SRC_NS[0],
            SRC_NS[1],
            SRC_NS[2],
            SRC_NS[3],
        ],
        "destination_service" => &[
            "service",
            "to-service",
            "namespace",
            "to-namespace",
            "all-namespaces",
            "to-all-namespaces",
        ],
        "source_fqdn" => &["fqdn", "from-fqdn"],
        "destination_fqdn" => &["fqdn", "to-fqdn"],
        "source_label" => &["label", "from-label"],
        "destination_label" => &["label", "to-label"],
        "source_workload" => &["workload", "from-workload"],
        "destination_workload" => &["workload", "to-workload"],
        "source_cluster_name" => &["cluster", "from-cluster"],
        "destination_cluster_name" => &["cluster", "to-cluster"],
        "source_identity" => &["identity", "from-identity"],
        "destination_identity" => &["identity", "to-identity"],
        "source_port" => &["port", "from-port"],
        "destination_port" => &["port", "to-port"],
        "traffic_direction" => &["traffic-direction"],
        "verdict" => &["verdict"],
        "drop_reason_desc" => &["drop-reason-desc"],
        "interface" => &["interface"],
        "event_type" => &["type"],
        "protocol" => &["protocol"],
        "dns_query" => &["dns-query"],
        "http_status_code" => &["http-status"],
        "http_method" => &["http-method"],
        "http_path" => &["http-path"],
        "http_url" => &["http-url"],
        "http_header" => &["http-header"],
        "tcp_flags" => &["tcp-flags"],
        "node_name" => &["node-name"],
        "node_labels" => &["node-label"],
        "ip_version" => &["ipv4", "ipv6", "ip-version"],
        "trace_id" => &["trace-id"],
        "ip_trace_id" => &["ip-trace-id"],
        "encrypted" => &["encrypted", "unencrypted"],
        "experimental" | "cel_expression" => &["cel-expression"],
        _ => &[],
    }
}

/// A flag the builder refused: which, with what value, why (Hubble's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct FlagError {
    /// The flag, without dashes (`from-pod`).
    pub flag: String,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FlagError {
    fn new(flag: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            flag: flag.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Whether the filter `flag` alone makes can be evaluated, checked by the observer's own
/// filter compiler. Hubble's CLI leaves this to the server (INVALID_ARGUMENT); front ends that
/// want to name the bad parameter themselves (the service map) ask here first.
pub fn check(flag: &str, value: &str) -> Result<(), FlagError> {
    let mut b = FilterBuilder::default();
    b.set(flag, value)?;
    let (allow, deny) = b.finish()?;
    FlowFilters::compile(&allow, &deny)
        .map(drop)
        .map_err(|e| FlagError::new(flag, value, e.to_string()))
}

/// Flags that cannot be combined, Hubble's `conflicts` table.
const CONFLICTS: &[&[&str]] = &[
    &[
        "from-fqdn",
        "from-ip",
        "ip",
        "fqdn",
        "from-namespace",
        "namespace",
        "from-all-namespaces",
        "all-namespaces",
    ],
    &["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    &[
        "to-fqdn",
        "to-ip",
        "ip",
        "fqdn",
        "to-namespace",
        "namespace",
        "to-all-namespaces",
        "all-namespaces",
    ],
    &["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    &["to-pod", "namespace", "all-namespaces"],
    &["from-pod", "namespace", "all-namespaces"],
    &["to-service", "namespace", "all-namespaces"],
    &["from-service", "namespace", "all-namespaces"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
    &["workload", "to-workload"],
    &["workload", "from-workload"],
    &["encrypted", "unencrypted"],
];

/// One side's filters as they are built: `left OR right`.
#[derive(Debug, Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
    ns: Vec<String>,
    src_ns: Vec<String>,
    dst_ns: Vec<String>,
    changed: Vec<String>,
}

impl Tracker {
    fn apply(&mut self, update: impl Fn(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
        update(self.right.get_or_insert_with(FlowFilter::default));
    }

    fn apply_left(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
    }

    fn apply_right(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.right.get_or_insert_with(FlowFilter::default));
    }

    /// `left` gets the source side, `right` the destination side.
    fn either(&mut self, src: impl FnOnce(&mut FlowFilter), dst: impl FnOnce(&mut FlowFilter)) {
        self.apply_left(src);
        self.apply_right(dst);
    }

    fn check_conflict(&self) -> Result<(), String> {
        for group in CONFLICTS {
            for flag in group.iter() {
                if !self.changed.iter().any(|c| c == flag) {
                    continue;
                }
                for other in group.iter() {
                    if other != flag && self.changed.iter().any(|c| c == other) {
                        return Err(format!("filters --{flag} and --{other} cannot be combined"));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_namespace_conflicts(&self) -> Result<(), String> {
        for f in [&self.left, &self.right].into_iter().flatten() {
            for (nss, names) in [
                (&self.ns, &f.source_pod),
                (&self.ns, &f.source_service),
                (&self.ns, &f.destination_pod),
                (&self.ns, &f.destination_service),
                (&self.src_ns, &f.source_pod),
                (&self.src_ns, &f.source_service),
                (&self.dst_ns, &f.destination_pod),
                (&self.dst_ns, &f.destination_service),
            ] {
                for ns in nss {
                    for name in names {
                        if let Some((n, _)) = name.split_once('/') {
                            if n != ns {
                                return Err(format!(
                                    "namespace conflict: {ns:?} does not contain {name:?}"
                                ));
                            }
                        }
                    }
                }
            }
            for (pods, services) in [
                (&f.source_pod, &f.source_service),
                (&f.destination_pod, &f.destination_service),
            ] {
                for pod in pods {
                    let Some((pod_ns, _)) = pod.split_once('/') else {
                        continue;
                    };
                    for svc in services {
                        if svc.split_once('/').map(|(n, _)| n) != Some(pod_ns) {
                            return Err(format!(
                                "namespace of service {svc:?} conflict with pod {pod_ns:?}"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Hubble's `flowFilters`: namespaces folded into the pod and Service filters; one
    /// filter when both sides came out the same.
    fn flow_filters(mut self) -> Vec<FlowFilter> {
        if self.left.is_none()
            && self.right.is_none()
            && self.ns.is_empty()
            && self.src_ns.is_empty()
            && self.dst_ns.is_empty()
        {
            return Vec::new();
        }
        let mut left = self.left.take().unwrap_or_default();
        let mut right = self.right.take().unwrap_or_default();
        if !self.dst_ns.is_empty() {
            apply_dst_ns(&self.dst_ns, &mut left);
            apply_dst_ns(&self.dst_ns, &mut right);
        }
        if !self.src_ns.is_empty() {
            apply_src_ns(&self.src_ns, &mut left);
            apply_src_ns(&self.src_ns, &mut right);
        }
        if !self.ns.is_empty() {
            apply_src_ns(&self.ns, &mut left);
            apply_dst_ns(&self.ns, &mut right);
        }
        if left == right {
            vec![left]
        } else {
            vec![left, right]
        }
    }
}

fn apply_src_ns(ns: &[String], f: &mut FlowFilter) {
    if f.source_pod.is_empty() && f.source_service.is_empty() {
        f.source_pod = vec![String::new()];
    }
    f.source_pod = add_namespaces(&f.source_pod, ns);
    f.source_service = add_namespaces(&f.source_service, ns);
}

fn apply_dst_ns(ns: &[String], f: &mut FlowFilter) {
    if f.destination_pod.is_empty() && f.destination_service.is_empty() {
        f.destination_pod = vec![String::new()];
    }
    f.destination_pod = add_namespaces(&f.destination_pod, ns);
    f.destination_service = add_namespaces(&f.destination_service, ns);
}

/// `name` becomes `ns/name` for each namespace; names with a namespace stay.
fn add_namespaces(filter: &[String], ns: &[String]) -> Vec<String> {
    if ns.is_empty() || filter.is_empty() {
        return filter.to_vec();
    }
    let mut out = Vec::new();
    for name in filter {
        if name.contains('/') {
            out.push(name.clone());
            continue;
        }
        out.extend(ns.iter().map(|n| format!("{n}/{name}")));
    }
    out
}

/// Cilium's reserved identities by name (`identity.GetReservedID`).
fn reserved_identity(name: &str) -> Option<u32> {
    Some(match name {
        "host" => 1,
        "world" => 2,
        "unmanaged" => 3,
        "health" => 4,
        "init" => 5,
        "remote-node" => 6,
        "kube-apiserver" => 7,
        "ingress" => 8,
        "world-ipv4" => 9,
        "world-ipv6" => 10,
        "overlay-to-encrypt" => 11,
        _ => return None,
    })
}

/// Hubble's `parseIdentity`: a reserved name or a number (Go's base prefixes allowed).
fn parse_identity(s: &str) -> Result<u32, String> {
    if let Some(id) = reserved_identity(s) {
        return Ok(id);
    }
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        s.parse::<u32>().ok()
    };
    // Identities are 24 bits (`MaxNumericIdentity`).
    parsed.filter(|id| *id <= 0x00ff_ffff).ok_or_else(|| {
        "invalid security identity, expected one of [host world unmanaged health init \
         remote-node kube-apiserver ingress world-ipv4 world-ipv6 11] or a numeric value"
            .to_owned()
    })
}

fn parse_workload(s: &str) -> Workload {
    match s.split_once('/') {
        Some((kind, name)) => Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
        },
        None => Workload {
            kind: String::new(),
            name: s.to_owned(),
        },
    }
}

fn parse_tcp_flags(val: &str) -> Result<TcpFlags, String> {
    let mut flags = TcpFlags::default();
    for f in val.split(',') {
        match f.to_ascii_uppercase().as_str() {
            "SYN" => flags.syn = true,
            "FIN" => flags.fin = true,
            "RST" => flags.rst = true,
            "PSH" => flags.psh = true,
            "ACK" => flags.ack = true,
            "URG" => flags.urg = true,
            "ECE" => flags.ece = true,
            "CWR" => flags.cwr = true,
            "NS" => flags.ns = true,
            _ => return Err(format!("unknown tcp flag: {f}")),
        }
    }
    Ok(flags)
}

fn ip_version(v: &str) -> IpVersion {
    match v.to_ascii_lowercase().as_str() {
        "4" | "v4" | "ipv4" | "ip4" => IpVersion::IPv4,
        "6" | "v6" | "ipv6" | "ip6" => IpVersion::IPv6,
        _ => IpVersion::IpNotUsed,
    }
}

/// Cilium's monitor message types by name (`monitorAPI.MessageTypeNames`).
fn message_type(name: &str) -> Option<i32> {
    Some(match name {
        "drop" => 1,
        "debug" => 2,
        "capture" => 3,
        "trace" => 4,
        "policy-verdict" => 5,
        "trace-sock" => 7,
        "l7" => 129,
        "agent" => 130,
        _ => return None,
    })
}

/// Cilium's trace observation points by name (`monitorAPI.TraceObservationPoints`).
fn trace_point(name: &str) -> Option<i32> {
    Some(match name {
        "to-endpoint" => 0,
        "to-proxy" => 1,
        "to-host" => 2,
        "to-stack" => 3,
        "to-overlay" => 4,
        "from-endpoint" => 5,
        "from-proxy" => 6,
        "from-host" => 7,
        "from-stack" => 8,
        "from-overlay" => 9,
        "from-network" => 10,
        "to-network" => 11,
        "from-crypto" => 12,
        "to-crypto" => 13,
        _ => return None,
    })
}

/// Hubble's agent event sub types by name (`agentEventSubtypes`).
fn agent_subtype(name: &str) -> Option<i32> {
    Some(match name {
        "unspecified" => 0,
        "message" => 1,
        "agent-started" => 2,
        "policy-updated" => 3,
        "policy-deleted" => 4,
        "endpoint-regenerate-success" => 5,
        "endpoint-regenerate-failure" => 6,
        "endpoint-created" => 7,
        "endpoint-deleted" => 8,
        "ipcache-upserted" => 9,
        "ipcache-deleted" => 10,
        _ => return None,
    })
}

fn parse_type(val: &str) -> Result<EventTypeFilter, String> {
    let (name, sub) = match val.split_once(':') {
        Some((n, s)) => (n, Some(s)),
        None => (val, None),
    };
    let known = message_type(name);
    let r#type = match known {
        Some(t) => t,
        None => name
            .parse::<u32>()
            .ok()
            .and_then(|t| i32::try_from(t).ok())
            .ok_or_else(|| {
                format!(
                    "unable to parse type '{name}', not a known type name and unable to parse \
                     as numeric value"
                )
            })?,
    };
    let mut filter = EventTypeFilter {
        r#type,
        match_sub_type: false,
        sub_type: 0,
    };
    if let Some(sub) = sub {
        let named = match known {
            Some(4) => trace_point(sub),
            Some(130) => agent_subtype(sub),
            _ => None,
        };
        let sub_type = match named {
            Some(s) => s,
            None => sub
                .parse::<u32>()
                .ok()
                .and_then(|s| i32::try_from(s).ok())
                .ok_or_else(|| {
                    format!(
                        "unable to parse event sub-type '{sub}', not a known sub-type name and \
                         unable to parse as numeric value"
                    )
                })?,
        };
        filter.match_sub_type = true;
        filter.sub_type = sub_type;
    }
    Ok(filter)
}

/// The allowlist and denylist the filter flags build.
#[derive(Debug, Default)]
pub struct FilterBuilder {
    whitelist: Option<Tracker>,
    blacklist: Option<Tracker>,
    blacklisting: bool,
}

impl FilterBuilder {
    /// Applies one flag (`name` without the dashes) with its value, as Hubble's
    /// `flowFilter.Set`.
    pub fn set(&mut self, name: &str, val: &str) -> Result<(), FlagError> {
        if name == "not" {
            if self.blacklisting {
                return Err(FlagError::new(name, val, "consecutive --not statements"));
            }
            self.blacklisting = true;
            return Ok(());
        }
        let tracker = if self.blacklisting {
            self.blacklisting = false;
            self.blacklist.get_or_insert_with(Tracker::default)
        } else {
            self.whitelist.get_or_insert_with(Tracker::default)
        };
        set(tracker, name, val).map_err(|reason| FlagError::new(name, val, reason))
    }

    /// The allowlist and the denylist; a `--not` with nothing after it is an error.
    pub fn finish(self) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>), FlagError> {
        if self.blacklisting {
            return Err(FlagError::new(
                "not",
                "true",
                "trailing --not found in the arguments",
            ));
        }
        Ok((
            self.whitelist
                .map(Tracker::flow_filters)
                .unwrap_or_default(),
            self.blacklist
                .map(Tracker::flow_filters)
                .unwrap_or_default(),
        ))
    }
}

fn push<T: Clone>(v: &mut Vec<T>, x: &T) {
    v.push(x.clone());
}

fn set(f: &mut Tracker, name: &str, val: &str) -> Result<(), String> {
    if !f.changed.iter().any(|c| c == name) {
        f.changed.push(name.to_owned());
    }
    f.check_conflict()?;
    let v = val.to_owned();
    match name {
        "uuid" => f.apply(|f| push(&mut f.uuid, &v)),
        "fqdn" => f.either(
            |f| push(&mut f.source_fqdn, &v),
            |f| push(&mut f.destination_fqdn, &v),
        ),
        "from-fqdn" => f.apply(|f| push(&mut f.source_fqdn, &v)),
        "to-fqdn" => f.apply(|f| push(&mut f.destination_fqdn, &v)),
        "pod" => f.either(
            |f| push(&mut f.source_pod, &v),
            |f| push(&mut f.destination_pod, &v),
        ),
        "from-pod" => f.apply(|f| push(&mut f.source_pod, &v)),
        "to-pod" => f.apply(|f| push(&mut f.destination_pod, &v)),
        "from-ip" => f.apply(|f| push(&mut f.source_ip, &v)),
        "ip" => f.either(
            |f| push(&mut f.source_ip, &v),
            |f| push(&mut f.destination_ip, &v),
        ),
        "to-ip" => f.apply(|f| push(&mut f.destination_ip, &v)),
        "ipv4" => f.apply(|f| f.ip_version.push(IpVersion::IPv4 as i32)),
        "ipv6" => f.apply(|f| f.ip_version.push(IpVersion::IPv6 as i32)),
        "ip-version" => {
            let version = ip_version(val) as i32;
            f.apply(|f| f.ip_version.push(version));
        }
        "label" => f.either(
            |f| push(&mut f.source_label, &v),
            |f| push(&mut f.destination_label, &v),
        ),
        "from-label" => f.apply(|f| push(&mut f.source_label, &v)),
        "to-label" => f.apply(|f| push(&mut f.destination_label, &v)),
        "namespace" => f.ns.push(v),
        "from-namespace" => f.src_ns.push(v),
        "to-namespace" => f.dst_ns.push(v),
        "all-namespaces" => f.ns.push(String::new()),
        "from-all-namespaces" => f.src_ns.push(String::new()),
        "to-all-namespaces" => f.dst_ns.push(String::new()),
        "service" => f.either(
            |f| push(&mut f.source_service, &v),
            |f| push(&mut f.destination_service, &v),
        ),
        "from-service" => f.apply(|f| push(&mut f.source_service, &v)),
        "to-service" => f.apply(|f| push(&mut f.destination_service, &v)),
        "port" => f.either(
            |f| push(&mut f.source_port, &v),
            |f| push(&mut f.destination_port, &v),
        ),
        "from-port" => f.apply(|f| push(&mut f.source_port, &v)),
        "to-port" => f.apply(|f| push(&mut f.destination_port, &v)),
        "trace-id" => f.apply(|f| push(&mut f.trace_id, &v)),
        "verdict" => {
            // Hubble wants the exact enum name; any case is accepted here.
            let verdict = Verdict::from_str_name(&val.to_ascii_uppercase()).ok_or_else(|| {
                format!(
                    "invalid --verdict value: {val} (expected FORWARDED, DROPPED, ERROR, \
                         AUDIT, REDIRECTED, TRACED or TRANSLATED)"
                )
            })? as i32;
            f.apply(|f| f.verdict.push(verdict));
        }
        "http-status" => f.apply(|f| push(&mut f.http_status_code, &v)),
        "http-method" => f.apply(|f| push(&mut f.http_method, &v)),
        "http-path" => f.apply(|f| push(&mut f.http_path, &v)),
        "http-url" => f.apply(|f| push(&mut f.http_url, &v)),
        "http-header" => {
            let (key, value) = val
                .split_once(':')
                .ok_or_else(|| format!("invalid http-header value {val:?}, expected name:value"))?;
            let header = HttpHeader {
                key: key.to_owned(),
                value: value.to_owned(),
            };
            f.apply(|f| push(&mut f.http_header, &header));
        }
        "type" => {
            let filter = parse_type(val)?;
            f.apply(|f| push(&mut f.event_type, &filter));
        }
        "protocol" => f.apply(|f| push(&mut f.protocol, &v)),
        "workload" => {
            let w = parse_workload(val);
            f.either(
                |f| push(&mut f.source_workload, &w),
                |f| push(&mut f.destination_workload, &w),
            );
        }
        "from-workload" => {
            let w = parse_workload(val);
            f.apply(|f| push(&mut f.source_workload, &w));
        }
        "to-workload" => {
            let w = parse_workload(val);
            f.apply(|f| push(&mut f.destination_workload, &w));
        }
        "identity" => {
            let id = parse_identity(val)?;
            f.either(
                |f| f.source_identity.push(id),
                |f| f.destination_identity.push(id),
            );
        }
        "from-identity" => {
            let id = parse_identity(val)?;
            f.apply(|f| f.source_identity.push(id));
        }
        "to-identity" => {
            let id = parse_identity(val)?;
            f.apply(|f| f.destination_identity.push(id));
        }
        "node-name" => f.apply(|f| push(&mut f.node_name, &v)),
        "tcp-flags" => {
            let flags = parse_tcp_flags(val)?;
            f.apply(|f| push(&mut f.tcp_flags, &flags));
        }
        "traffic-direction" => {
            let td = val.to_ascii_lowercase();
            let dir = match td.as_str() {
                "ingress" => TrafficDirection::Ingress,
                "egress" => TrafficDirection::Egress,
                _ => {
                    return Err(format!(
                        "{td}: invalid traffic direction, expected ingress or egress"
                    ))
                }
            } as i32;
            f.apply(|f| f.traffic_direction.push(dir));
        }
        other => set_more(f, other, val)?,
    }
    f.check_namespace_conflicts()
}

/// The flags over the newer FlowFilter fields (clusters, nodes, drop reasons, interfaces,
/// SNAT, IP trace IDs, encryption, CEL).
fn set_more(f: &mut Tracker, name: &str, val: &str) -> Result<(), String> {
    let v = val.to_owned();
    match name {
        "node-label" => f.apply(|f| push(&mut f.node_labels, &v)),
        "cluster" => f.either(
            |f| push(&mut f.source_cluster_name, &v),
            |f| push(&mut f.destination_cluster_name, &v),
        ),
        "from-cluster" => f.apply(|f| push(&mut f.source_cluster_name, &v)),
        "to-cluster" => f.apply(|f| push(&mut f.destination_cluster_name, &v)),
        "snat-ip" => f.apply(|f| push(&mut f.source_ip_xlated, &v)),
        "drop-reason-desc" => {
            if val.is_empty() {
                return Err("empty --drop-reason-desc value".to_owned());
            }
            // Hubble wants the exact enum name (POLICY_DENIED).
            let reason = DropReason::from_str_name(val)
                .ok_or_else(|| format!("invalid --drop-reason-desc value: {val}"))?
                as i32;
            f.apply(|f| f.drop_reason_desc.push(reason));
        }
        "interface" => {
            let iface = NetworkInterface {
                name: v,
                ..NetworkInterface::default()
            };
            f.apply(|f| push(&mut f.interface, &iface));
        }
        "ip-trace-id" => {
            if val == "0" {
                return Err("invalid --ip-trace-id value; must be greater than 0".to_owned());
            }
            let id = val
                .parse::<u64>()
                .map_err(|e| format!("invalid --ip-trace-id value: {e}"))?;
            f.apply(|f| f.ip_trace_id.push(id));
        }
        "encrypted" => f.apply(|f| f.encrypted.push(true)),
        "unencrypted" => f.apply(|f| f.encrypted.push(false)),
        "dns-query" => f.apply(|f| push(&mut f.dns_query, &v)),
        "cel-expression" => f.apply(|f| {
            f.experimental
                .get_or_insert_with(Default::default)
                .cel_expression
                .push(v.clone());
        }),
        other => return Err(format!("--{other} is not a filter flag")),
    }
    Ok(())
}

#[cfg(test)]
#[path = "filter_builder_tests.rs"]
mod tests;
