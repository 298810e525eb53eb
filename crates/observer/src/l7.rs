//! One record of the node's proxy → one Hubble L7 [`Flow`], as Hubble's L7 parser
//! (`pkg/hubble/parser/seven`) builds it from Cilium's access log, named through the same
//! [`Store`] as packet flows. HTTP records here; DNS in [`crate::dns`], Kafka in
//! [`crate::kafka`], over the same [`l7_flow`].
//!
//! The proxy reports the client as `source` on requests and responses alike; Cilium's access
//! log swaps the two ends of a response (the response travels from the server to the client),
//! and Hubble shows it so: a response's source is the server, its destination the client, and
//! `is_reply` is true. Compact output then flips it back with `<-`, as for packet replies.

use std::net::SocketAddrV4;
use std::time::{Duration, UNIX_EPOCH};

use ciliate_model::identity::NumericIdentity;
use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};

use crate::convert::{endpoint, service, system_time_to_timestamp};
use crate::proto::flow::{
    layer4, layer7, CiliumEventType, Dns, Flow, FlowType, Http, HttpHeader, Ip, IpVersion, Kafka,
    L7FlowType, Layer4, Layer7, Tcp, TrafficDirection, Udp, Verdict,
};
use crate::store::Store;

/// Cilium's monitor message type of an access log record (`MessageTypeAccessLog`): the event
/// type of every L7 flow, and what `--type l7` filters on.
pub const MESSAGE_TYPE_ACCESS_LOG: i32 = 129;

/// The IP protocol number of TCP, which HTTP and Kafka run on.
pub(crate) const TCP: u8 = 6;
/// The IP protocol number of UDP (DNS, besides TCP).
pub(crate) const UDP: u8 = 17;

/// A header name as Go's `http.Header` stores it (`CanonicalMIMEHeaderKey`), which is how
/// Hubble shows headers: `x-request-id` → `X-Request-Id`. Names with a byte that is not a
/// token character (HTTP/2 pseudo-headers such as `:authority`) are left as they are.
pub fn canonical_header_key(name: &str) -> String {
    canonicalize_header_key(name.to_owned())
}

/// [`canonical_header_key`] in the name's own buffer (a token is ASCII, so changing case
/// keeps its length).
fn canonicalize_header_key(name: String) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return name;
    }
    let mut bytes = name.into_bytes();
    let mut upper = true;
    for b in &mut bytes {
        if upper {
            b.make_ascii_uppercase();
        } else {
            b.make_ascii_lowercase();
        }
        upper = *b == b'-';
    }
    // ASCII in, ASCII out: always UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The headers as Hubble lists them: canonical names, sorted by name, the values of one name
/// in the order they came. Takes the record's list: its strings become the flow's.
fn headers(list: Vec<(String, String)>) -> Vec<HttpHeader> {
    let mut h: Vec<HttpHeader> = list
        .into_iter()
        .map(|(k, v)| HttpHeader {
            key: canonicalize_header_key(k),
            value: v,
        })
        .collect();
    // Stable: a repeated header keeps its values' order.
    h.sort_by(|a, b| a.key.cmp(&b.key));
    h
}

/// Hubble's summary of an HTTP flow (`httpSummary`): `HTTP/1.1 GET http://web/api` for a
/// request, `HTTP/1.1 200 5ms (GET http://web/api)` for a response (whole milliseconds,
/// rounded down).
pub fn http_summary(record: &HttpRecord) -> String {
    use std::fmt::Write;
    // Sized up front: grown piece by piece, it was reallocated ~3 times per flow.
    let mut s =
        String::with_capacity(record.protocol.len() + record.method.len() + record.url.len() + 32);
    let _ = match record.record_type {
        L7RecordType::Request => {
            write!(s, "{} {} {}", record.protocol, record.method, record.url)
        }
        L7RecordType::Response => write!(
            s,
            "{} {} {}ms ({} {})",
            record.protocol,
            record.code,
            record.latency_ns / 1_000_000,
            record.method,
            record.url
        ),
    };
    s
}

/// An address as text, in a buffer of the right size (`to_string` grows it as it writes).
fn ip_string(ip: std::net::Ipv4Addr) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(15);
    let _ = write!(s, "{ip}");
    s
}

pub(crate) fn verdict(v: L7Verdict) -> Verdict {
    match v {
        L7Verdict::Forwarded => Verdict::Forwarded,
        L7Verdict::Dropped => Verdict::Dropped,
        L7Verdict::Error => Verdict::Error,
    }
}

/// What every L7 record of the proxy says about its connection, whatever the protocol.
pub(crate) struct L7Common {
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    /// A response (the flow runs from the server to the client).
    pub response: bool,
    /// The redirect's side: the endpoint opened the connection.
    pub egress: bool,
    /// The client's address and identity (as the client sent it).
    pub client: (SocketAddrV4, NumericIdentity),
    /// The server's address and identity (the original destination).
    pub server: (SocketAddrV4, NumericIdentity),
    /// IP protocol: 6 TCP, 17 UDP.
    pub proto: u8,
    /// The proxy's verdict.
    pub verdict: L7Verdict,
    /// Responses: time since the request.
    pub latency_ns: u64,
    /// The policy rule that allowed the request (0: none, e.g. refused).
    pub rule: u32,
}

/// The Hubble L7 flow of one proxy record: both ends named through the store, a response
/// running from the server to the client (`is_reply`), the redirect's direction as the
/// traffic direction of requests and responses alike (Hubble's observation point).
pub(crate) fn l7_flow(
    c: &L7Common,
    record: layer7::Record,
    summary: String,
    store: &dyn Store,
    node_name: &str,
) -> Flow {
    let (mut flow, [(src, src_id), (dst, dst_id)]) =
        l7_flow_unnamed(c, record, summary, store, node_name);
    flow.source = Some(endpoint(store, Some(*src.ip()), src_id).0);
    flow.destination = Some(endpoint(store, Some(*dst.ip()), dst_id).0);
    flow
}

/// The flow's two ends (address and identity) as [`l7_flow`] shows them: the source first.
pub(crate) type FlowEnds = [(SocketAddrV4, NumericIdentity); 2];

/// [`l7_flow`] without its endpoints (`source` and `destination` are `None`), and the ends
/// they are named from: what a lazily named record ([`crate::l7_entry::RecordedHttp`])
/// keeps.
pub(crate) fn l7_flow_unnamed(
    c: &L7Common,
    record: layer7::Record,
    summary: String,
    store: &dyn Store,
    node_name: &str,
) -> (Flow, FlowEnds) {
    let ((src, src_id), (dst, dst_id)) = if c.response {
        (c.server, c.client)
    } else {
        (c.client, c.server)
    };
    let svc = |a: SocketAddrV4| {
        store
            .service_by_frontend(*a.ip(), a.port(), c.proto)
            .map(service)
    };
    let (sport, dport) = (u32::from(src.port()), u32::from(dst.port()));
    let l4 = if c.proto == UDP {
        layer4::Protocol::Udp(Udp {
            source_port: sport,
            destination_port: dport,
        })
    } else {
        layer4::Protocol::Tcp(Tcp {
            source_port: sport,
            destination_port: dport,
            flags: None,
        })
    };
    let l7 = Layer7 {
        r#type: if c.response {
            L7FlowType::Response
        } else {
            L7FlowType::Request
        } as i32,
        latency_ns: if c.response { c.latency_ns } else { 0 },
        record: Some(record),
    };
    let mut flow = Flow {
        time: Some(system_time_to_timestamp(
            UNIX_EPOCH + Duration::from_nanos(c.time_ns),
        )),
        verdict: verdict(c.verdict) as i32,
        ip: Some(Ip {
            source: ip_string(*src.ip()),
            destination: ip_string(*dst.ip()),
            ip_version: IpVersion::IPv4 as i32,
            ..Ip::default()
        }),
        l4: Some(Layer4 { protocol: Some(l4) }),
        r#type: FlowType::L7 as i32,
        node_name: node_name.to_owned(),
        l7: Some(l7),
        reply: c.response,
        is_reply: Some(pbjson_types::BoolValue { value: c.response }),
        event_type: Some(CiliumEventType {
            r#type: MESSAGE_TYPE_ACCESS_LOG,
            sub_type: 0,
        }),
        source_service: svc(src),
        destination_service: svc(dst),
        traffic_direction: if c.egress {
            TrafficDirection::Egress
        } else {
            TrafficDirection::Ingress
        } as i32,
        summary,
        ..Flow::default()
    };
    // A refused request carries no rule: L7 rules only allow.
    if c.verdict == L7Verdict::Forwarded {
        crate::policy_names::fill_from_store(&mut flow, c.rule, true, store);
    }
    (flow, [(src, src_id), (dst, dst_id)])
}

/// Converts one record. `node_name` is this node's; the store supplies names, as for packet
/// flows.
pub fn http_to_flow(record: &HttpRecord, store: &dyn Store, node_name: &str) -> Flow {
    http_into_flow(record.clone(), store, node_name)
}

/// [`http_to_flow`], taking the record: its strings (method, URL, protocol, headers) become
/// the flow's instead of being copied (the agent owns the records it decoded; they were a
/// third of its allocations per request).
pub fn http_into_flow(record: HttpRecord, store: &dyn Store, node_name: &str) -> Flow {
    let (common, http, summary) = http_parts(record);
    l7_flow(&common, http, summary, store, node_name)
}

/// What [`l7_flow`] makes an HTTP record's flow of: its connection, its L7 record (taking
/// the record's strings) and its summary.
pub(crate) fn http_parts(record: HttpRecord) -> (L7Common, layer7::Record, String) {
    let summary = http_summary(&record);
    let response = record.record_type == L7RecordType::Response;
    let common = L7Common {
        time_ns: record.time_ns,
        response,
        egress: record.egress,
        client: (record.source, record.source_identity),
        server: (record.destination, record.destination_identity),
        proto: TCP,
        verdict: record.verdict,
        latency_ns: record.latency_ns,
        rule: record.rule,
    };
    let HttpRecord {
        method,
        url,
        protocol,
        headers: list,
        code,
        ..
    } = record;
    let http = Http {
        // Hubble sets only the request's fields on a request.
        code: if response { u32::from(code) } else { 0 },
        method,
        url,
        protocol,
        headers: headers(list),
    };
    (common, layer7::Record::Http(http), summary)
}

/// The flow's HTTP record, if it is an HTTP flow.
pub fn http(flow: &Flow) -> Option<&Http> {
    match flow.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(h) => Some(h),
        _ => None,
    }
}

/// The flow's DNS record, if it is a DNS flow.
pub fn dns(flow: &Flow) -> Option<&Dns> {
    match flow.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Dns(d) => Some(d),
        _ => None,
    }
}

/// The flow's Kafka record, if it is a Kafka flow.
pub fn kafka(flow: &Flow) -> Option<&Kafka> {
    match flow.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Kafka(k) => Some(k),
        _ => None,
    }
}

#[cfg(test)]
#[path = "l7_tests.rs"]
pub(crate) mod tests;
