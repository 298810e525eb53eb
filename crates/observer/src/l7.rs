//! One HTTP record of the node's proxy → one Hubble L7 [`Flow`], as Hubble's L7 parser
//! (`pkg/hubble/parser/seven`) builds it from Cilium's access log, named through the same
//! [`Store`] as packet flows.
//!
//! The proxy reports the client as `source` on requests and responses alike; Cilium's access
//! log swaps the two ends of a response (the response travels from the server to the client),
//! and Hubble shows it so: a response's source is the server, its destination the client, and
//! `is_reply` is true. Compact output then flips it back with `<-`, as for packet replies.

use std::net::SocketAddrV4;
use std::time::{Duration, UNIX_EPOCH};

use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};

use crate::convert::{endpoint, service, system_time_to_timestamp};
use crate::proto::flow::{
    layer4, layer7, CiliumEventType, Flow, FlowType, Http, HttpHeader, Ip, IpVersion, L7FlowType,
    Layer4, Layer7, Tcp, TrafficDirection, Verdict,
};
use crate::store::Store;

/// Cilium's monitor message type of an access log record (`MessageTypeAccessLog`): the event
/// type of every L7 flow, and what `--type l7` filters on.
pub const MESSAGE_TYPE_ACCESS_LOG: i32 = 129;

/// The IP protocol number of TCP, which HTTP runs on here.
const TCP: u8 = 6;

/// A header name as Go's `http.Header` stores it (`CanonicalMIMEHeaderKey`), which is how
/// Hubble shows headers: `x-request-id` → `X-Request-Id`. Names with a byte that is not a
/// token character (HTTP/2 pseudo-headers such as `:authority`) are left as they are.
pub fn canonical_header_key(name: &str) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// The headers as Hubble lists them: canonical names, sorted by name, the values of one name
/// in the order they came.
fn headers(record: &HttpRecord) -> Vec<HttpHeader> {
    let mut h: Vec<HttpHeader> = record
        .headers
        .iter()
        .map(|(k, v)| HttpHeader {
            key: canonical_header_key(k),
            value: v.clone(),
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
    match record.record_type {
        L7RecordType::Request => {
            format!("{} {} {}", record.protocol, record.method, record.url)
        }
        L7RecordType::Response => format!(
            "{} {} {}ms ({} {})",
            record.protocol,
            record.code,
            record.latency_ns / 1_000_000,
            record.method,
            record.url
        ),
    }
}

fn verdict(v: L7Verdict) -> Verdict {
    match v {
        L7Verdict::Forwarded => Verdict::Forwarded,
        L7Verdict::Dropped => Verdict::Dropped,
        L7Verdict::Error => Verdict::Error,
    }
}

/// Converts one record. `node_name` is this node's; the store supplies names, as for packet
/// flows.
pub fn http_to_flow(record: &HttpRecord, store: &dyn Store, node_name: &str) -> Flow {
    let response = record.record_type == L7RecordType::Response;
    // (address, identity) of the flow's source and destination.
    let client = (record.source, record.source_identity);
    let server = (record.destination, record.destination_identity);
    let ((src, src_id), (dst, dst_id)) = if response {
        (server, client)
    } else {
        (client, server)
    };
    let (source, _) = endpoint(store, Some(*src.ip()), src_id);
    let (destination, _) = endpoint(store, Some(*dst.ip()), dst_id);
    let svc = |a: SocketAddrV4| {
        store
            .service_by_frontend(*a.ip(), a.port(), TCP)
            .map(service)
    };
    let mut code = u32::from(record.code);
    if !response {
        // Hubble sets only the request's fields on a request.
        code = 0;
    }
    let l7 = Layer7 {
        r#type: if response {
            L7FlowType::Response
        } else {
            L7FlowType::Request
        } as i32,
        latency_ns: if response { record.latency_ns } else { 0 },
        record: Some(layer7::Record::Http(Http {
            code,
            method: record.method.clone(),
            url: record.url.clone(),
            protocol: record.protocol.clone(),
            headers: headers(record),
        })),
    };
    let is_reply = Some(pbjson_types::BoolValue { value: response });
    Flow {
        time: Some(system_time_to_timestamp(
            UNIX_EPOCH + Duration::from_nanos(record.time_ns),
        )),
        verdict: verdict(record.verdict) as i32,
        ip: Some(Ip {
            source: src.ip().to_string(),
            destination: dst.ip().to_string(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: u32::from(src.port()),
                destination_port: u32::from(dst.port()),
                flags: None,
            })),
        }),
        source: Some(source),
        destination: Some(destination),
        r#type: FlowType::L7 as i32,
        node_name: node_name.to_owned(),
        l7: Some(l7),
        reply: response,
        is_reply,
        event_type: Some(CiliumEventType {
            r#type: MESSAGE_TYPE_ACCESS_LOG,
            sub_type: 0,
        }),
        source_service: svc(src),
        destination_service: svc(dst),
        // The redirect's side, for requests and responses alike (Hubble's observation point).
        traffic_direction: if record.egress {
            TrafficDirection::Egress
        } else {
            TrafficDirection::Ingress
        } as i32,
        summary: http_summary(record),
        ..Flow::default()
    }
}

/// The flow's HTTP record, if it is an HTTP flow.
pub fn http(flow: &Flow) -> Option<&Http> {
    match flow.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(h) => Some(h),
    }
}

#[cfg(test)]
#[path = "l7_tests.rs"]
pub(crate) mod tests;
