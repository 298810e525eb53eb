//! A datapath event's row, encoded straight from its record: the bytes the block keeps of the
//! event's flow (everything but its time, its endpoints, its UUID when that is a column, and
//! the node name when it is the block's), written field by field from the record's numbers
//! and shared names, without building the flow.
//!
//! Why: building the flow to encode it cost about 1 µs per flow on the history's writer
//! thread, most of it allocating strings (addresses, summary, interface, node labels) that
//! were encoded once and dropped. Here the numbers come from [`Recorded::numbers`] (which
//! allocates nothing), text is formatted into one buffer kept from row to row, and each
//! field is written in the order prost writes it (by field number, defaults left out), so
//! the bytes are exactly those of the built flow with those fields cut, and a block written
//! from records equals one written from their built flows, byte for byte (tested).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, WireType};

use ciliate_model::l7::L7RecordType;

use crate::convert::write_l34_summary;
use crate::l7::{verdict, MESSAGE_TYPE_ACCESS_LOG};
use crate::l7_entry::{canonical_key_into, flow_ends, RecordedHttp};
use crate::proto::flow::{CiliumEventType, Flow, FlowType, L7FlowType, TrafficDirection};
use crate::record::Recorded;
use crate::store::ServiceRef;

// Flow's field numbers (flow.proto) of what a row holds, in the order prost writes them.
const VERDICT: u32 = 2;
const DROP_REASON: u32 = 3;
const ETHERNET: u32 = 4;
const IP: u32 = 5;
const L4: u32 = 6;
const TYPE: u32 = 10;
const NODE_NAME: u32 = 11;
const L7: u32 = 15;
const REPLY: u32 = 16;
const EVENT_TYPE: u32 = 19;
const SOURCE_SERVICE: u32 = 20;
const DESTINATION_SERVICE: u32 = 21;
const TRAFFIC_DIRECTION: u32 = 22;
const POLICY_MATCH_TYPE: u32 = 23;
const TRACE_OBSERVATION_POINT: u32 = 24;
const DROP_REASON_DESC: u32 = 25;
const IS_REPLY: u32 = 26;
const INTERFACE: u32 = 28;
const UUID: u32 = 34;
const TRACE_REASON: u32 = 36;
const NODE_LABELS: u32 = 37;
const EGRESS_ALLOWED_BY: u32 = 21001;
const INGRESS_ALLOWED_BY: u32 = 21002;
const EGRESS_DENIED_BY: u32 = 21004;
const INGRESS_DENIED_BY: u32 = 21005;
const SUMMARY: u32 = 100_000;
/// `Layer7.http` (a field of `Layer7`).
const L7_HTTP: u32 = 101;
/// `IPVersion.IPv4`.
const IPV4: u64 = 1;

/// Writes rows; keeps its text buffers from row to row (so a row allocates nothing once they
/// have grown to the longest text).
#[derive(Debug, Default)]
pub(super) struct RowWriter {
    text: String,
    /// An HTTP record's headers, canonical names and values one after the other.
    headers: String,
    /// Each header's name and value as ranges of `headers`.
    header_ranges: Vec<[usize; 4]>,
    /// One canonical header name.
    key: String,
}

/// A varint field (integers, enums, bools), left out when 0 as prost does.
fn varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

/// An int32 or enum field: prost writes negatives sign-extended to 64 bits.
fn int32(tag: u32, v: i32, out: &mut Vec<u8>) {
    varint(tag, i64::from(v) as u64, out);
}

/// A string or bytes field whose value is `s`, always written (a repeated field's element).
fn bytes(tag: u32, s: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s);
}

/// A singular string field, left out when empty as prost does.
fn string(tag: u32, s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        bytes(tag, s.as_bytes(), out);
    }
}

/// Bytes [`string`] writes for a string of `len` bytes.
fn string_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

/// A message field made of two strings (fields 1 and 2), then a varint field 3 (`third`, 0:
/// none): `Ethernet`, `IP`, `Service`.
fn two_strings(tag: u32, first: &str, second: &str, third: u64, out: &mut Vec<u8>) {
    let third_len = if third == 0 {
        0
    } else {
        key_len(3) + encoded_len_varint(third)
    };
    let len = string_len(1, first.len()) + string_len(2, second.len()) + third_len;
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    string(1, first, out);
    string(2, second, out);
    varint(3, third, out);
}

fn service(tag: u32, s: Option<&ServiceRef>, out: &mut Vec<u8>) {
    if let Some(s) = s {
        two_strings(tag, &s.name, &s.namespace, 0, out);
    }
}

/// `n` in decimal, as its `Display` writes it.
fn push_u64(n: u64, s: &mut String) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        s.push(char::from(*d));
    }
}

/// Bytes [`varint`] writes for `v`.
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

/// The key and length of a message field of `len` bytes.
fn message_head(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Bytes of a message field of `len` bytes, head included.
fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// `ip` as its `Display` writes it (dotted decimal), without the formatting machinery, which
/// took a quarter of a row's time.
fn push_ipv4(ip: Ipv4Addr, s: &mut String) {
    for (i, b) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if b >= 100 {
            s.push(char::from(b'0' + b / 100));
        }
        if b >= 10 {
            s.push(char::from(b'0' + b / 10 % 10));
        }
        s.push(char::from(b'0' + b % 10));
    }
}

/// A MAC address as `MacAddr`'s `Display` writes it (`02:00:0a:c8:00:02`).
fn push_mac(m: [u8; 6], s: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in m.into_iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// The list a flow names its deciding policy in, as `policy_names::fill` chooses it.
fn policy_list(direction: i32, allowed: bool) -> Option<u32> {
    match (TrafficDirection::try_from(direction), allowed) {
        (Ok(TrafficDirection::Ingress), true) => Some(INGRESS_ALLOWED_BY),
        (Ok(TrafficDirection::Egress), true) => Some(EGRESS_ALLOWED_BY),
        (Ok(TrafficDirection::Ingress), false) => Some(INGRESS_DENIED_BY),
        (Ok(TrafficDirection::Egress), false) => Some(EGRESS_DENIED_BY),
        _ => None,
    }
}

impl RowWriter {
    /// Appends `r`'s row to `out`: the encoding of its flow (as [`Recorded::flow`] shows it)
    /// without its time and endpoints, without its UUID when `uuid_column` (the block keeps
    /// it in a column), and without its node name when that is `block_node`.
    pub(super) fn write(
        &mut self,
        r: &Recorded,
        block_node: &str,
        uuid_column: bool,
        out: &mut Vec<u8>,
    ) {
        let ev = &r.event;
        let names = r.names();
        let numbers: Flow = r.numbers();
        let text = &mut self.text;
        // The texts of the row, one after the other in `text`: Ethernet addresses, IP
        // addresses, summary, and the UUID when it is not a column. Writing into a String
        // cannot fail.
        text.clear();
        let mut cut = [0usize; 6];
        if let Some(e) = ev.ethernet {
            push_mac(e.source.0, text);
            cut[0] = text.len();
            push_mac(e.destination.0, text);
        }
        cut[1] = text.len();
        let ip = ev.src.zip(ev.dst);
        if let Some((src, dst)) = ip {
            push_ipv4(src, text);
            cut[2] = text.len();
            push_ipv4(dst, text);
        } else {
            cut[2] = text.len();
        }
        cut[3] = text.len();
        write_l34_summary(ev, text);
        cut[4] = text.len();
        if !uuid_column {
            let _ = write!(text, "{}", r.uuid());
        }
        cut[5] = text.len();
        let text = text.as_str();

        int32(VERDICT, numbers.verdict, out);
        varint(DROP_REASON, u64::from(numbers.drop_reason), out);
        if ev.ethernet.is_some() {
            two_strings(ETHERNET, &text[..cut[0]], &text[cut[0]..cut[1]], 0, out);
        }
        if ip.is_some() {
            two_strings(IP, &text[cut[1]..cut[2]], &text[cut[2]..cut[3]], IPV4, out);
        }
        if let Some(l4) = &numbers.l4 {
            message::encode(L4, l4, out);
        }
        int32(TYPE, numbers.r#type, out);
        if names.node.node_name != block_node {
            string(NODE_NAME, &names.node.node_name, out);
        }
        varint(REPLY, u64::from(numbers.reply), out);
        if let Some(t) = &numbers.event_type {
            message::encode(EVENT_TYPE, t, out);
        }
        service(SOURCE_SERVICE, names.source_service, out);
        service(DESTINATION_SERVICE, names.destination_service, out);
        int32(TRAFFIC_DIRECTION, numbers.traffic_direction, out);
        varint(POLICY_MATCH_TYPE, u64::from(numbers.policy_match_type), out);
        int32(
            TRACE_OBSERVATION_POINT,
            numbers.trace_observation_point,
            out,
        );
        int32(DROP_REASON_DESC, numbers.drop_reason_desc, out);
        if let Some(b) = &numbers.is_reply {
            message::encode(IS_REPLY, b, out);
        }
        if ev.ifindex != 0 {
            let len = key_len(1)
                + encoded_len_varint(u64::from(ev.ifindex))
                + string_len(2, names.interface.len());
            encode_key(INTERFACE, WireType::LengthDelimited, out);
            encode_varint(len as u64, out);
            varint(1, u64::from(ev.ifindex), out);
            string(2, names.interface, out);
        }
        string(UUID, &text[cut[4]..cut[5]], out);
        int32(TRACE_REASON, numbers.trace_reason, out);
        for label in &names.node.labels {
            bytes(NODE_LABELS, label.as_bytes(), out);
        }
        if let (Some(policy), Some(allowed)) = (names.policy, crate::policy_names::decision(ev)) {
            if let Some(tag) = policy_list(numbers.traffic_direction, allowed) {
                message::encode(tag, policy, out);
            }
        }
        string(SUMMARY, &text[cut[3]..cut[4]], out);
    }
}

impl RowWriter {
    /// Appends an HTTP record's row to `out`, written from its frame: the bytes the row had
    /// when it was cut from the record's flow without names
    /// ([`RecordedHttp::fill_unnamed`], the columns' fields cut as `block::cut_columns` cuts
    /// them with the UUID a column), followed by the node's labels and the policy that allowed
    /// the request. False (nothing written) for a record that is not HTTP (a DNS one).
    ///
    /// Why: filling that flow (both addresses and the summary formatted, the headers' names
    /// made canonical into its strings), encoding it whole and cutting the columns' fields was
    /// most of the writer's time per HTTP record, two records per request.
    pub(super) fn write_http(
        &mut self,
        r: &RecordedHttp,
        block_node: &str,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some((v, node_name, services)) = r.http_parts() else {
            return false;
        };
        let response = v.record_type == L7RecordType::Response;
        let [(src, _), (dst, _)] = flow_ends(&v);
        let (code, latency_ns) = if response {
            (u32::from(v.code), v.latency_ns)
        } else {
            (0, 0)
        };
        // Addresses and the summary (Hubble's `httpSummary`, as `fill_unnamed` writes it).
        let text = &mut self.text;
        text.clear();
        push_ipv4(*src.ip(), text);
        let src_end = text.len();
        push_ipv4(*dst.ip(), text);
        let dst_end = text.len();
        text.push_str(v.protocol);
        text.push(' ');
        if response {
            push_u64(u64::from(v.code), text);
            text.push(' ');
            push_u64(v.latency_ns / 1_000_000, text);
            text.push_str("ms (");
            text.push_str(v.method);
            text.push(' ');
            text.push_str(v.url);
            text.push(')');
        } else {
            text.push_str(v.method);
            text.push(' ');
            text.push_str(v.url);
        }
        let text = text.as_str();
        // The headers under their canonical names, sorted by name (stable: a repeated
        // header keeps its values' order).
        self.headers.clear();
        self.header_ranges.clear();
        for (k, value) in v.headers() {
            canonical_key_into(k, &mut self.key);
            let start = self.headers.len();
            self.headers.push_str(&self.key);
            let key_end = self.headers.len();
            self.headers.push_str(value);
            self.header_ranges
                .push([start, key_end, key_end, self.headers.len()]);
        }
        let headers = self.headers.as_str();
        self.header_ranges
            .sort_by(|a, b| headers[a[0]..a[1]].cmp(&headers[b[0]..b[1]]));
        let header_len = |h: &[usize; 4]| string_len(1, h[1] - h[0]) + string_len(2, h[3] - h[2]);

        int32(VERDICT, verdict(v.verdict) as i32, out);
        two_strings(IP, &text[..src_end], &text[src_end..dst_end], IPV4, out);
        let tcp_len = varint_len(1, u64::from(src.port())) + varint_len(2, u64::from(dst.port()));
        message_head(L4, message_len(1, tcp_len), out);
        message_head(1, tcp_len, out);
        varint(1, u64::from(src.port()), out);
        varint(2, u64::from(dst.port()), out);
        int32(TYPE, FlowType::L7 as i32, out);
        if node_name != block_node {
            string(NODE_NAME, node_name, out);
        }
        let l7_type = if response {
            L7FlowType::Response
        } else {
            L7FlowType::Request
        } as i32;
        let http_len = varint_len(1, u64::from(code))
            + string_len(2, v.method.len())
            + string_len(3, v.url.len())
            + string_len(4, v.protocol.len())
            + self
                .header_ranges
                .iter()
                .map(|h| message_len(5, header_len(h)))
                .sum::<usize>();
        let l7_len = varint_len(1, i64::from(l7_type) as u64)
            + varint_len(2, latency_ns)
            + message_len(L7_HTTP, http_len);
        message_head(L7, l7_len, out);
        int32(1, l7_type, out);
        varint(2, latency_ns, out);
        message_head(L7_HTTP, http_len, out);
        varint(1, u64::from(code), out);
        string(2, v.method, out);
        string(3, v.url, out);
        string(4, v.protocol, out);
        for h in &self.header_ranges {
            message_head(5, header_len(h), out);
            string(1, &headers[h[0]..h[1]], out);
            string(2, &headers[h[2]..h[3]], out);
        }
        varint(REPLY, u64::from(response), out);
        message::encode(
            EVENT_TYPE,
            &CiliumEventType {
                r#type: MESSAGE_TYPE_ACCESS_LOG,
                sub_type: 0,
            },
            out,
        );
        if let Some(s) = services[0] {
            message::encode(SOURCE_SERVICE, s, out);
        }
        if let Some(s) = services[1] {
            message::encode(DESTINATION_SERVICE, s, out);
        }
        let direction = if v.egress {
            TrafficDirection::Egress
        } else {
            TrafficDirection::Ingress
        };
        int32(TRAFFIC_DIRECTION, direction as i32, out);
        message::encode(IS_REPLY, &pbjson_types::BoolValue { value: response }, out);
        string(SUMMARY, &text[dst_end..], out);
        for label in r.node_labels() {
            bytes(NODE_LABELS, label.as_bytes(), out);
        }
        if let Some((field, policy)) = r.history_policy() {
            message::encode(field, policy, out);
        }
        true
    }
}

#[cfg(test)]
#[path = "row_tests.rs"]
mod tests;
