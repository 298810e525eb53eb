//! Flows as people read them: Hubble's compact one-line format and a table.

use crate::convert::{MESSAGE_TYPE_DROP, MESSAGE_TYPE_POLICY_VERDICT, MESSAGE_TYPE_TRACE};
use crate::filter::ports;
use crate::proto::flow::{
    layer4, layer7, DropReason, Endpoint, Flow, L7FlowType, TraceObservationPoint,
    TrafficDirection, Verdict,
};

/// The enum name of a drop reason code, as Hubble's metrics label it (`POLICY_DENIED`).
pub fn drop_reason_name(code: i32) -> String {
    DropReason::try_from(code)
        .map(|r| r.as_str_name().to_owned())
        .unwrap_or_else(|_| code.to_string())
}

/// A drop reason as `hubble observe` prints it ("Policy denied").
pub fn drop_reason_text(code: i32) -> String {
    match code {
        132 => "Invalid source ip".to_owned(),
        133 => "Policy denied".to_owned(),
        134 => "Invalid packet".to_owned(),
        135 => "CT: Truncated or invalid header".to_owned(),
        136 => "Fragmentation needed".to_owned(),
        137 => "CT: Unknown L4 protocol".to_owned(),
        139 => "Unsupported L3 protocol".to_owned(),
        141 => "Error writing to packet".to_owned(),
        158 => "Service backend not found".to_owned(),
        163 => "Unknown connection tracking state".to_owned(),
        167 => "No mapping for NAT masquerade".to_owned(),
        181 => "Policy denied by denylist".to_owned(),
        other => drop_reason_name(other),
    }
}

/// `tcp`, `udp`, `icmpv4`, ... or "" when the flow has no L4 header we know.
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

/// The trace observation point in Cilium's words (`to-endpoint`, `from-endpoint`, ...).
pub fn observation_point_name(flow: &Flow) -> String {
    observation_point_name_of(flow.trace_observation_point)
}

/// [`observation_point_name`] of Hubble's enum value.
pub fn observation_point_name_of(point: i32) -> String {
    match TraceObservationPoint::try_from(point) {
        Ok(TraceObservationPoint::ToEndpoint) => "to-endpoint".to_owned(),
        Ok(TraceObservationPoint::FromEndpoint) => "from-endpoint".to_owned(),
        Ok(TraceObservationPoint::UnknownPoint) | Err(_) => "unknown".to_owned(),
        Ok(p) => p.as_str_name().to_ascii_lowercase().replace('_', "-"),
    }
}

/// What kind of event, as Hubble's compact output shows it: `to-endpoint`, `policy-verdict:L3-L4 INGRESS`,
/// the drop reason, or `http-request`, `dns-response proxy`, `kafka-request` for L7 flows.
pub fn event_summary(flow: &Flow) -> String {
    if let Some(l7) = &flow.l7 {
        // Hubble's `GetFlowType`: `http-request`, `dns-response proxy`, `kafka-request`.
        let mut kind = L7FlowType::try_from(l7.r#type)
            .map(|t| t.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "unknown_l7_type".to_owned());
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
    match flow.event_type.as_ref().map(|e| e.r#type) {
        Some(MESSAGE_TYPE_TRACE) => observation_point_name(flow),
        Some(MESSAGE_TYPE_DROP) => drop_reason_text(flow.drop_reason_desc),
        Some(MESSAGE_TYPE_POLICY_VERDICT) => {
            let m = match flow.policy_match_type {
                1 => "L3-Only",
                2 => "L3-L4",
                3 => "L4-Only",
                4 => "all",
                _ => "none",
            };
            let dir = TrafficDirection::try_from(flow.traffic_direction)
                .map(|d| d.as_str_name())
                .unwrap_or("TRAFFIC_DIRECTION_UNKNOWN");
            format!("policy-verdict:{m} {dir}")
        }
        _ => "unknown".to_owned(),
    }
}

fn verdict_text(flow: &Flow) -> String {
    let policy = flow.event_type.as_ref().map(|e| e.r#type) == Some(MESSAGE_TYPE_POLICY_VERDICT);
    match Verdict::try_from(flow.verdict) {
        Ok(Verdict::Forwarded) if policy => "ALLOWED".to_owned(),
        Ok(Verdict::Dropped) if policy => "DENIED".to_owned(),
        Ok(v) => v.as_str_name().to_owned(),
        Err(_) => flow.verdict.to_string(),
    }
}

fn identity_text(ep: &Endpoint) -> String {
    if let Some(r) = ep.labels.iter().find_map(|l| l.strip_prefix("reserved:")) {
        return r.to_owned();
    }
    format!("ID:{}", ep.identity)
}

/// `namespace/pod:port (ID:n)`, or `ip:port (world)` for what is not a pod.
pub fn endpoint_text(flow: &Flow, source: bool) -> String {
    let ep = if source {
        flow.source.as_ref()
    } else {
        flow.destination.as_ref()
    };
    let ep = ep.cloned().unwrap_or_default();
    let ip = flow
        .ip
        .as_ref()
        .map(|ip| {
            if source {
                ip.source.clone()
            } else {
                ip.destination.clone()
            }
        })
        .unwrap_or_default();
    let name = if !ep.pod_name.is_empty() {
        format!("{}/{}", ep.namespace, ep.pod_name)
    } else {
        ip
    };
    let name = match ports(flow) {
        Some((s, d)) => format!("{name}:{}", if source { s } else { d }),
        None => name,
    };
    format!("{name} ({})", identity_text(&ep))
}

fn l4_summary(flow: &Flow) -> String {
    match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            let f = t.flags.unwrap_or_default();
            let names: Vec<&str> = [
                (f.syn, "SYN"),
                (f.ack, "ACK"),
                (f.fin, "FIN"),
                (f.rst, "RST"),
                (f.psh, "PSH"),
                (f.urg, "URG"),
                (f.ece, "ECE"),
                (f.cwr, "CWR"),
                (f.ns, "NS"),
            ]
            .into_iter()
            .filter_map(|(set, n)| set.then_some(n))
            .collect();
            format!("TCP Flags: {}", names.join(", "))
        }
        Some(layer4::Protocol::Udp(_)) => "UDP".to_owned(),
        Some(layer4::Protocol::IcmPv4(i)) => match (i.r#type, i.code) {
            (8, _) => "ICMPv4 EchoRequest".to_owned(),
            (0, _) => "ICMPv4 EchoReply".to_owned(),
            (t, c) => format!("ICMPv4 type {t} code {c}"),
        },
        Some(layer4::Protocol::IcmPv6(i)) => format!("ICMPv6 type {} code {}", i.r#type, i.code),
        Some(layer4::Protocol::Sctp(_)) => "SCTP".to_owned(),
        None => "L3 only".to_owned(),
    }
}

/// What compact output prints in parentheses and tables under SUMMARY: the flow's `Summary`
/// where it has one (L7 flows: `HTTP/1.1 GET http://web/api`), else the L4 header's.
pub fn summary(flow: &Flow) -> String {
    if flow.summary.is_empty() {
        l4_summary(flow)
    } else {
        flow.summary.clone()
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Jan  2 15:04:05.000` (Go's `time.StampMilli`, as Hubble prints), in UTC.
pub fn stamp_milli(ts: Option<&pbjson_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "N/A".to_owned();
    };
    let secs = ts.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}.{:03}",
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ts.nanos / 1_000_000
    )
}

/// One line, like `hubble observe -o compact`:
/// `Jan  2 15:04:05.000 [node]: default/a:40000 (ID:256) -> default/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)`.
/// A reply is printed from the connection's point of view, with `<-`; `<>` when unknown.
pub fn compact(flow: &Flow) -> String {
    let (src, dst) = (endpoint_text(flow, true), endpoint_text(flow, false));
    let (left, arrow, right) = match crate::convert::is_reply(flow) {
        Some(true) => (dst, "<-", src),
        Some(false) => (src, "->", dst),
        None => (src, "<>", dst),
    };
    let service = flow
        .destination_service
        .as_ref()
        .map(|s| format!(" [svc {}/{}]", s.namespace, s.name))
        .unwrap_or_default();
    format!(
        "{}: {left} {arrow} {right}{service} {} {} ({})",
        stamp_milli(flow.time.as_ref()),
        event_summary(flow),
        verdict_text(flow),
        summary(flow)
    )
}

/// The header and the cells of `-o table`.
pub fn table_header() -> [&'static str; 6] {
    [
        "TIMESTAMP",
        "SOURCE",
        "DESTINATION",
        "TYPE",
        "VERDICT",
        "SUMMARY",
    ]
}

/// One row of `-o table`.
pub fn table_row(flow: &Flow) -> [String; 6] {
    [
        stamp_milli(flow.time.as_ref()),
        endpoint_text(flow, true),
        endpoint_text(flow, false),
        event_summary(flow),
        verdict_text(flow),
        summary(flow),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_is_go_stamp_milli() {
        let ts = pbjson_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        };
        assert_eq!(stamp_milli(Some(&ts)), "Nov 14 22:13:20.123");
        let ts = pbjson_types::Timestamp {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(stamp_milli(Some(&ts)), "Jan  1 00:00:00.000");
    }
}
