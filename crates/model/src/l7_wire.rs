//! The binary form of the proxy's records (HTTP, DNS, Kafka) on the control socket.
//!
//! Proxy → agent, the stream mixes two kinds of items: JSON lines (every [`ProxyEvent`] that
//! is not a record: `Applied`, `Stats`, ...; a line starts with `{` or `"`) and record
//! frames. A frame is one kind byte ([`FRAME_HTTP`], [`FRAME_DNS`], [`FRAME_KAFKA`]: control
//! characters, which never start a JSON line), the payload's length (u32, little-endian, at
//! most [`MAX_FRAME`]) and the payload. Records are two per request: as JSON each cost the
//! proxy a serialization and the agent a parse of field names and escapes, more than the rest
//! of what the agent does with it; here both sides copy fixed-size fields and length-prefixed
//! strings.
//!
//! Payload: the record's fields in declaration order; integers little-endian at their width,
//! `bool` and enums as one byte, an address as 4 bytes and a port (u16), a string as its
//! length (u32) and UTF-8 bytes, a list as its count (u32) and items, an `Option` as one byte
//! (0 none, 1 some) and the value. A reader that finds a payload it cannot decode (truncated,
//! invalid UTF-8, an unknown enum value, bytes left over) skips that frame with a
//! [`WireError`] naming the record kind and field; the frame's length keeps the stream in
//! step. Only a frame header it cannot trust (a length over [`MAX_FRAME`]) ends the stream.

use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::identity::NumericIdentity;
use crate::l7::{DnsRecord, HttpRecord, KafkaRecord, L7RecordType, L7Verdict, ProxyEvent};

/// Frame kind of an [`HttpRecord`].
pub const FRAME_HTTP: u8 = 0x01;
/// Frame kind of a [`DnsRecord`].
pub const FRAME_DNS: u8 = 0x02;
/// Frame kind of a [`KafkaRecord`].
pub const FRAME_KAFKA: u8 = 0x03;
/// Bytes of a frame's header: the kind and the length.
pub const FRAME_HEADER: usize = 5;
/// The largest payload a reader accepts (a record with every header of a maximal request is a
/// few hundred KB at most).
pub const MAX_FRAME: usize = 4 << 20;

/// Whether `b`, the first byte of an item, starts a record frame (not a JSON line).
pub fn is_frame_kind(b: u8) -> bool {
    matches!(b, FRAME_HTTP | FRAME_DNS | FRAME_KAFKA)
}

/// A frame or payload that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The payload ended inside a field.
    #[error("{record} record: truncated in field `{field}`")]
    Truncated {
        /// `http`, `dns` or `kafka`.
        record: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// A field holds a value no encoder writes.
    #[error("{record} record: field `{field}`: {reason}")]
    Invalid {
        /// `http`, `dns` or `kafka`.
        record: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Bytes remain after the last field.
    #[error("{record} record: {extra} bytes after the last field")]
    Trailing {
        /// `http`, `dns` or `kafka`.
        record: &'static str,
        /// How many.
        extra: usize,
    },
    /// A frame kind that is not a record's.
    #[error("unknown record frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A frame's length over [`MAX_FRAME`]: the stream cannot be trusted past it.
    #[error("record frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLong(usize),
}

/// Appends `ev` as a frame to `out` if it is a record; false (nothing written) otherwise.
pub fn encode_record(ev: &ProxyEvent, out: &mut Vec<u8>) -> bool {
    let kind = match ev {
        ProxyEvent::Http(_) | ProxyEvent::HttpFrame(_) => FRAME_HTTP,
        ProxyEvent::Dns(_) | ProxyEvent::DnsFrame(_) => FRAME_DNS,
        ProxyEvent::Kafka(_) => FRAME_KAFKA,
        _ => return false,
    };
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    match ev {
        ProxyEvent::Http(r) => put_http(r, out),
        ProxyEvent::HttpFrame(f) => out.extend_from_slice(f.payload()),
        ProxyEvent::Dns(r) => put_dns(r, out),
        ProxyEvent::DnsFrame(f) => out.extend_from_slice(f.payload()),
        ProxyEvent::Kafka(r) => put_kafka(r, out),
        _ => unreachable!("checked above"),
    }
    let len = (out.len() - start - FRAME_HEADER) as u32;
    out[start + 1..start + FRAME_HEADER].copy_from_slice(&len.to_le_bytes());
    true
}

/// The payload length a frame header announces; an error for a length over [`MAX_FRAME`].
pub fn frame_len(header: [u8; FRAME_HEADER]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLong(len));
    }
    Ok(len)
}

/// Decodes the payload of a frame of `kind`.
pub fn decode_record(kind: u8, payload: &[u8]) -> Result<ProxyEvent, WireError> {
    match kind {
        FRAME_HTTP => {
            let mut r = Reader::new("http", payload);
            let rec = get_http(&mut r)?;
            r.finish()?;
            Ok(ProxyEvent::Http(Box::new(rec)))
        }
        FRAME_DNS => Ok(ProxyEvent::Dns(Box::new(
            DnsView::parse(payload)?.to_record(),
        ))),
        FRAME_KAFKA => {
            let mut r = Reader::new("kafka", payload);
            let rec = get_kafka(&mut r)?;
            r.finish()?;
            Ok(ProxyEvent::Kafka(Box::new(rec)))
        }
        k => Err(WireError::UnknownKind(k)),
    }
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_strs(v: &[String], out: &mut Vec<u8>) {
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for s in v {
        put_str(s, out);
    }
}

fn put_opt_str(s: &Option<String>, out: &mut Vec<u8>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(s, out);
        }
    }
}

fn put_addr(a: &SocketAddrV4, out: &mut Vec<u8>) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_le_bytes());
}

fn record_type_byte(t: L7RecordType) -> u8 {
    match t {
        L7RecordType::Request => 0,
        L7RecordType::Response => 1,
    }
}

fn verdict_byte(v: L7Verdict) -> u8 {
    match v {
        L7Verdict::Forwarded => 0,
        L7Verdict::Dropped => 1,
        L7Verdict::Error => 2,
    }
}

// Each encoder destructures its record whole: a field added to the record does not compile
// until the wire form carries it.

fn put_http(r: &HttpRecord, out: &mut Vec<u8>) {
    let HttpRecord {
        time_ns,
        record_type,
        endpoint,
        egress,
        source,
        destination,
        source_identity,
        destination_identity,
        verdict,
        rule,
        method,
        url,
        protocol,
        code,
        headers,
        latency_ns,
        reason,
    } = r;
    let parts = HttpParts {
        time_ns: *time_ns,
        record_type: *record_type,
        endpoint: *endpoint,
        egress: *egress,
        source: *source,
        destination: *destination,
        source_identity: *source_identity,
        destination_identity: *destination_identity,
        verdict: *verdict,
        rule: *rule,
        method,
        url: &[url],
        protocol,
        code: *code,
        latency_ns: *latency_ns,
        reason: reason.as_deref(),
    };
    put_http_parts(
        &parts,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        out,
    );
}

/// An [`HttpRecord`]'s fields borrowed from wherever the proxy holds them (the request's own
/// buffers), so that a record is encoded without being built: the strings and the header
/// list an owned record needs were ~15 of a request's ~20 allocations in the proxy.
/// [`encode_http_parts`] writes the same frame [`encode_record`] writes for the owned record.
#[derive(Clone, Copy, Debug)]
pub struct HttpParts<'a> {
    /// [`HttpRecord::time_ns`].
    pub time_ns: u64,
    /// [`HttpRecord::record_type`].
    pub record_type: L7RecordType,
    /// [`HttpRecord::endpoint`].
    pub endpoint: u16,
    /// [`HttpRecord::egress`].
    pub egress: bool,
    /// [`HttpRecord::source`].
    pub source: SocketAddrV4,
    /// [`HttpRecord::destination`].
    pub destination: SocketAddrV4,
    /// [`HttpRecord::source_identity`].
    pub source_identity: NumericIdentity,
    /// [`HttpRecord::destination_identity`].
    pub destination_identity: NumericIdentity,
    /// [`HttpRecord::verdict`].
    pub verdict: L7Verdict,
    /// [`HttpRecord::rule`].
    pub rule: u32,
    /// [`HttpRecord::method`].
    pub method: &'a str,
    /// [`HttpRecord::url`], as pieces written one after the other (`http://`, the authority,
    /// the path), so that it need not be put together first.
    pub url: &'a [&'a str],
    /// [`HttpRecord::protocol`].
    pub protocol: &'a str,
    /// [`HttpRecord::code`].
    pub code: u16,
    /// [`HttpRecord::latency_ns`].
    pub latency_ns: u64,
    /// [`HttpRecord::reason`].
    pub reason: Option<&'a str>,
}

/// Appends the frame of the HTTP record `r` with `headers` (name, value; a value that is not
/// UTF-8 is written with U+FFFD in place of its bad bytes, as `String::from_utf8_lossy` does)
/// to `out`.
pub fn encode_http_parts<'h>(
    r: &HttpParts<'_>,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.push(FRAME_HTTP);
    out.extend_from_slice(&[0; 4]);
    put_http_parts(r, headers, out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    out[start + 1..start + FRAME_HEADER].copy_from_slice(&len.to_le_bytes());
}

fn put_http_parts<'h>(
    r: &HttpParts<'_>,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&r.time_ns.to_le_bytes());
    out.push(record_type_byte(r.record_type));
    out.extend_from_slice(&r.endpoint.to_le_bytes());
    out.push(u8::from(r.egress));
    put_addr(&r.source, out);
    put_addr(&r.destination, out);
    out.extend_from_slice(&r.source_identity.to_le_bytes());
    out.extend_from_slice(&r.destination_identity.to_le_bytes());
    out.push(verdict_byte(r.verdict));
    out.extend_from_slice(&r.rule.to_le_bytes());
    put_str(r.method, out);
    let url_len: usize = r.url.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(url_len as u32).to_le_bytes());
    for p in r.url {
        out.extend_from_slice(p.as_bytes());
    }
    put_str(r.protocol, out);
    out.extend_from_slice(&r.code.to_le_bytes());
    // The count is known once the headers have been written.
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut count = 0u32;
    for (n, v) in headers {
        put_str(n, out);
        match std::str::from_utf8(v) {
            Ok(v) => put_str(v, out),
            Err(_) => put_str(&String::from_utf8_lossy(v), out),
        }
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&r.latency_ns.to_le_bytes());
    match r.reason {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(s, out);
        }
    }
}

fn put_dns(r: &DnsRecord, out: &mut Vec<u8>) {
    let DnsRecord {
        time_ns,
        record_type,
        endpoint,
        source,
        destination,
        proto,
        source_identity,
        destination_identity,
        verdict,
        rule,
        query,
        qtypes,
        rcode,
        ips,
        ttl,
        cnames,
        rrtypes,
        latency_ns,
        reason,
    } = r;
    out.extend_from_slice(&time_ns.to_le_bytes());
    out.push(record_type_byte(*record_type));
    out.extend_from_slice(&endpoint.to_le_bytes());
    put_addr(source, out);
    put_addr(destination, out);
    out.push(*proto);
    out.extend_from_slice(&source_identity.to_le_bytes());
    out.extend_from_slice(&destination_identity.to_le_bytes());
    out.push(verdict_byte(*verdict));
    out.extend_from_slice(&rule.to_le_bytes());
    put_str(query, out);
    put_strs(qtypes, out);
    out.extend_from_slice(&rcode.to_le_bytes());
    out.extend_from_slice(&(ips.len() as u32).to_le_bytes());
    for ip in ips {
        out.extend_from_slice(&ip.octets());
    }
    out.extend_from_slice(&ttl.to_le_bytes());
    put_strs(cnames, out);
    put_strs(rrtypes, out);
    out.extend_from_slice(&latency_ns.to_le_bytes());
    put_opt_str(reason, out);
}

fn put_kafka(r: &KafkaRecord, out: &mut Vec<u8>) {
    let KafkaRecord {
        time_ns,
        record_type,
        endpoint,
        egress,
        source,
        destination,
        source_identity,
        destination_identity,
        verdict,
        rule,
        api_key,
        api_version,
        correlation_id,
        topic,
        error_code,
        latency_ns,
        reason,
    } = r;
    out.extend_from_slice(&time_ns.to_le_bytes());
    out.push(record_type_byte(*record_type));
    out.extend_from_slice(&endpoint.to_le_bytes());
    out.push(u8::from(*egress));
    put_addr(source, out);
    put_addr(destination, out);
    out.extend_from_slice(&source_identity.to_le_bytes());
    out.extend_from_slice(&destination_identity.to_le_bytes());
    out.push(verdict_byte(*verdict));
    out.extend_from_slice(&rule.to_le_bytes());
    put_str(api_key, out);
    out.extend_from_slice(&api_version.to_le_bytes());
    out.extend_from_slice(&correlation_id.to_le_bytes());
    put_str(topic, out);
    out.extend_from_slice(&error_code.to_le_bytes());
    out.extend_from_slice(&latency_ns.to_le_bytes());
    put_opt_str(reason, out);
}

/// A cursor over a payload that names the record and field in its errors.
struct Reader<'a> {
    record: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(record: &'static str, buf: &'a [u8]) -> Self {
        Self { record, buf }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated {
                record: self.record,
                field,
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let b = self.take(N, field)?;
        let mut a = [0; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.array(field).map(u16::from_le_bytes)
    }
    fn i16(&mut self, field: &'static str) -> Result<i16, WireError> {
        self.array(field).map(i16::from_le_bytes)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.array(field).map(u32::from_le_bytes)
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, WireError> {
        self.array(field).map(i32::from_le_bytes)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn invalid(&self, field: &'static str, reason: String) -> WireError {
        WireError::Invalid {
            record: self.record,
            field,
            reason,
        }
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.invalid(field, format!("{b} is not a boolean"))),
        }
    }

    fn record_type(&mut self) -> Result<L7RecordType, WireError> {
        match self.u8("record_type")? {
            0 => Ok(L7RecordType::Request),
            1 => Ok(L7RecordType::Response),
            b => Err(self.invalid("record_type", format!("unknown value {b}"))),
        }
    }

    fn verdict(&mut self) -> Result<L7Verdict, WireError> {
        match self.u8("verdict")? {
            0 => Ok(L7Verdict::Forwarded),
            1 => Ok(L7Verdict::Dropped),
            2 => Ok(L7Verdict::Error),
            b => Err(self.invalid("verdict", format!("unknown value {b}"))),
        }
    }

    fn addr(&mut self, field: &'static str) -> Result<SocketAddrV4, WireError> {
        let ip = Ipv4Addr::from(self.array::<4>(field)?);
        Ok(SocketAddrV4::new(ip, self.u16(field)?))
    }

    /// A count of items each at least `min_item` bytes long; checked against what is left so
    /// that a garbage count cannot make the reader reserve gigabytes.
    fn count(&mut self, field: &'static str, min_item: usize) -> Result<usize, WireError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(WireError::Truncated {
                record: self.record,
                field,
            });
        }
        Ok(n)
    }

    fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        let n = self.u32(field)? as usize;
        let b = self.take(n, field)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.invalid(field, format!("not UTF-8: {e}"))),
        }
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let n = self.u32(field)? as usize;
        let b = self.take(n, field)?;
        std::str::from_utf8(b).map_err(|e| self.invalid(field, format!("not UTF-8: {e}")))
    }

    fn opt_str(&mut self, field: &'static str) -> Result<Option<&'a str>, WireError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.str(field).map(Some),
            b => Err(self.invalid(field, format!("option tag {b}"))),
        }
    }

    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, WireError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.string(field).map(Some),
            b => Err(self.invalid(field, format!("option tag {b}"))),
        }
    }

    fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                record: self.record,
                extra: self.buf.len(),
            })
        }
    }
}

/// A record kind that the agent keeps as its frame payload ([`Frame`]): how a payload of the
/// kind is read in place ([`View`](Self::View)) and how a record of it is written.
pub trait FrameKind {
    /// The owned record.
    type Record;
    /// The record's fields borrowed from a payload.
    type View<'a>;
    /// Reads a payload whole (the error names the field).
    fn parse(payload: &[u8]) -> Result<Self::View<'_>, WireError>;
    /// The view of an empty record (never met: a frame's payload was checked to parse).
    fn blank<'a>() -> Self::View<'a>;
    /// Writes `r`'s payload.
    fn put(r: &Self::Record, out: &mut Vec<u8>);
    /// The owned record of a view.
    fn to_record(view: &Self::View<'_>) -> Self::Record;
}

/// A record's frame payload, checked to decode whole when it was made: what the agent keeps of
/// a record instead of the owned record (one allocation instead of one per string, header and
/// list), so that the task reading the proxy's stream allocates once per record and the record
/// is read ([`view`](Self::view)) on the thread that makes it into a flow.
pub struct Frame<K: FrameKind> {
    payload: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

/// An HTTP record kept as its frame.
pub type HttpFrame = Frame<HttpKind>;
/// A DNS record kept as its frame.
pub type DnsFrame = Frame<DnsKind>;

impl<K: FrameKind> Frame<K> {
    /// The payload of a frame of this kind, if it decodes whole (the error names the field).
    pub fn new(payload: &[u8]) -> Result<Self, WireError> {
        K::parse(payload)?;
        Ok(Self::checked(payload.into()))
    }

    /// The frame of `r`.
    pub fn of_record(r: &K::Record) -> Self {
        let mut out = Vec::with_capacity(128);
        K::put(r, &mut out);
        Self::checked(out.into_boxed_slice())
    }

    fn checked(payload: Box<[u8]>) -> Self {
        Self {
            payload,
            kind: PhantomData,
        }
    }

    /// The payload (a frame without its header).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The record's fields, borrowed from the frame.
    pub fn view(&self) -> K::View<'_> {
        // Checked when the frame was made (`new`, `of_record`): it parses.
        K::parse(&self.payload).unwrap_or_else(|_| K::blank())
    }

    /// The record, owned.
    pub fn record(&self) -> K::Record {
        K::to_record(&self.view())
    }
}

// By hand: derived impls would ask the kind (a marker) for the same traits.
impl<K: FrameKind> Clone for Frame<K> {
    fn clone(&self) -> Self {
        Self::checked(self.payload.clone())
    }
}

impl<K: FrameKind> PartialEq for Frame<K> {
    fn eq(&self, other: &Self) -> bool {
        self.payload == other.payload
    }
}

impl<K: FrameKind> Eq for Frame<K> {}

impl<K: FrameKind> std::fmt::Debug for Frame<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.payload).finish()
    }
}

/// HTTP records as frames ([`HttpFrame`]).
#[derive(Debug)]
pub enum HttpKind {}

impl FrameKind for HttpKind {
    type Record = HttpRecord;
    type View<'a> = HttpView<'a>;
    fn parse(payload: &[u8]) -> Result<HttpView<'_>, WireError> {
        HttpView::parse(payload)
    }
    fn blank<'a>() -> HttpView<'a> {
        HttpView::blank()
    }
    fn put(r: &HttpRecord, out: &mut Vec<u8>) {
        put_http(r, out)
    }
    fn to_record(view: &HttpView<'_>) -> HttpRecord {
        view.to_record()
    }
}

/// DNS records as frames ([`DnsFrame`]).
#[derive(Debug)]
pub enum DnsKind {}

impl FrameKind for DnsKind {
    type Record = DnsRecord;
    type View<'a> = DnsView<'a>;
    fn parse(payload: &[u8]) -> Result<DnsView<'_>, WireError> {
        DnsView::parse(payload)
    }
    fn blank<'a>() -> DnsView<'a> {
        DnsView::blank()
    }
    fn put(r: &DnsRecord, out: &mut Vec<u8>) {
        put_dns(r, out)
    }
    fn to_record(view: &DnsView<'_>) -> DnsRecord {
        view.to_record()
    }
}

/// An HTTP record's fields borrowed from its frame ([`Frame::view`] of an [`HttpFrame`]), as in [`HttpRecord`].
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct HttpView<'a> {
    pub time_ns: u64,
    pub record_type: L7RecordType,
    pub endpoint: u16,
    pub egress: bool,
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    pub source_identity: NumericIdentity,
    pub destination_identity: NumericIdentity,
    pub verdict: L7Verdict,
    pub rule: u32,
    pub method: &'a str,
    pub url: &'a str,
    pub protocol: &'a str,
    pub code: u16,
    /// The encoded header list (checked), read by [`headers`](Self::headers).
    headers: &'a [u8],
    header_count: usize,
    pub latency_ns: u64,
    pub reason: Option<&'a str>,
}

impl<'a> HttpView<'a> {
    /// Reads an HTTP frame's payload whole (every string checked to be UTF-8, nothing left
    /// over).
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new("http", payload);
        let time_ns = r.u64("time_ns")?;
        let record_type = r.record_type()?;
        let endpoint = r.u16("endpoint")?;
        let egress = r.bool("egress")?;
        let source = r.addr("source")?;
        let destination = r.addr("destination")?;
        let source_identity = r.u32("source_identity")?;
        let destination_identity = r.u32("destination_identity")?;
        let verdict = r.verdict()?;
        let rule = r.u32("rule")?;
        let method = r.str("method")?;
        let url = r.str("url")?;
        let protocol = r.str("protocol")?;
        let code = r.u16("code")?;
        let header_count = r.count("headers", 8)?;
        let before = r.buf;
        for _ in 0..header_count {
            r.str("headers")?;
            r.str("headers")?;
        }
        let headers = &before[..before.len() - r.buf.len()];
        let latency_ns = r.u64("latency_ns")?;
        let reason = r.opt_str("reason")?;
        r.finish()?;
        Ok(Self {
            time_ns,
            record_type,
            endpoint,
            egress,
            source,
            destination,
            source_identity,
            destination_identity,
            verdict,
            rule,
            method,
            url,
            protocol,
            code,
            headers,
            header_count,
            latency_ns,
            reason,
        })
    }

    fn blank() -> Self {
        let unspecified = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        Self {
            time_ns: 0,
            record_type: L7RecordType::Request,
            endpoint: 0,
            egress: false,
            source: unspecified,
            destination: unspecified,
            source_identity: 0,
            destination_identity: 0,
            verdict: L7Verdict::Error,
            rule: 0,
            method: "",
            url: "",
            protocol: "",
            code: 0,
            headers: &[],
            header_count: 0,
            latency_ns: 0,
            reason: None,
        }
    }

    /// How many headers the record lists.
    pub fn header_count(&self) -> usize {
        self.header_count
    }

    /// The headers (name, value), in the record's order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut r = Reader::new("http", self.headers);
        (0..self.header_count)
            .map_while(move |_| Some((r.str("headers").ok()?, r.str("headers").ok()?)))
    }

    /// The record, owned.
    pub fn to_record(&self) -> HttpRecord {
        HttpRecord {
            time_ns: self.time_ns,
            record_type: self.record_type,
            endpoint: self.endpoint,
            egress: self.egress,
            source: self.source,
            destination: self.destination,
            source_identity: self.source_identity,
            destination_identity: self.destination_identity,
            verdict: self.verdict,
            rule: self.rule,
            method: self.method.to_owned(),
            url: self.url.to_owned(),
            protocol: self.protocol.to_owned(),
            code: self.code,
            headers: self
                .headers()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            latency_ns: self.latency_ns,
            reason: self.reason.map(str::to_owned),
        }
    }
}

fn get_http(r: &mut Reader<'_>) -> Result<HttpRecord, WireError> {
    Ok(HttpRecord {
        time_ns: r.u64("time_ns")?,
        record_type: r.record_type()?,
        endpoint: r.u16("endpoint")?,
        egress: r.bool("egress")?,
        source: r.addr("source")?,
        destination: r.addr("destination")?,
        source_identity: r.u32("source_identity")?,
        destination_identity: r.u32("destination_identity")?,
        verdict: r.verdict()?,
        rule: r.u32("rule")?,
        method: r.string("method")?,
        url: r.string("url")?,
        protocol: r.string("protocol")?,
        code: r.u16("code")?,
        headers: {
            let n = r.count("headers", 8)?;
            (0..n)
                .map(|_| Ok((r.string("headers")?, r.string("headers")?)))
                .collect::<Result<_, WireError>>()?
        },
        latency_ns: r.u64("latency_ns")?,
        reason: r.opt_string("reason")?,
    })
}

/// A list of strings as encoded in a frame (checked), read by [`iter`](Self::iter).
#[derive(Clone, Copy, Debug)]
pub struct WireStrs<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> WireStrs<'a> {
    /// Reads a list off `r`, checking every item.
    fn read(r: &mut Reader<'a>, field: &'static str) -> Result<Self, WireError> {
        let count = r.count(field, 4)?;
        let before = r.buf;
        for _ in 0..count {
            r.str(field)?;
        }
        Ok(Self {
            bytes: &before[..before.len() - r.buf.len()],
            count,
        })
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The strings, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader::new("dns", self.bytes);
        (0..self.count).map_while(move |_| r.str("strings").ok())
    }

    fn to_vec(self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

/// A DNS record's fields borrowed from its frame ([`Frame::view`] of a [`DnsFrame`]), as in [`DnsRecord`].
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct DnsView<'a> {
    pub time_ns: u64,
    pub record_type: L7RecordType,
    pub endpoint: u16,
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    pub proto: u8,
    pub source_identity: NumericIdentity,
    pub destination_identity: NumericIdentity,
    pub verdict: L7Verdict,
    pub rule: u32,
    pub query: &'a str,
    pub qtypes: WireStrs<'a>,
    pub rcode: u16,
    /// The addresses, 4 bytes each ([`ips`](Self::ips) reads them).
    ips: &'a [u8],
    pub ttl: u32,
    pub cnames: WireStrs<'a>,
    pub rrtypes: WireStrs<'a>,
    pub latency_ns: u64,
    pub reason: Option<&'a str>,
}

impl<'a> DnsView<'a> {
    /// Reads a DNS frame's payload whole (every string checked to be UTF-8, nothing left
    /// over).
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new("dns", payload);
        let time_ns = r.u64("time_ns")?;
        let record_type = r.record_type()?;
        let endpoint = r.u16("endpoint")?;
        let source = r.addr("source")?;
        let destination = r.addr("destination")?;
        let proto = r.u8("proto")?;
        let source_identity = r.u32("source_identity")?;
        let destination_identity = r.u32("destination_identity")?;
        let verdict = r.verdict()?;
        let rule = r.u32("rule")?;
        let query = r.str("query")?;
        let qtypes = WireStrs::read(&mut r, "qtypes")?;
        let rcode = r.u16("rcode")?;
        let n = r.count("ips", 4)?;
        let ips = r.take(4 * n, "ips")?;
        let ttl = r.u32("ttl")?;
        let cnames = WireStrs::read(&mut r, "cnames")?;
        let rrtypes = WireStrs::read(&mut r, "rrtypes")?;
        let latency_ns = r.u64("latency_ns")?;
        let reason = r.opt_str("reason")?;
        r.finish()?;
        Ok(Self {
            time_ns,
            record_type,
            endpoint,
            source,
            destination,
            proto,
            source_identity,
            destination_identity,
            verdict,
            rule,
            query,
            qtypes,
            rcode,
            ips,
            ttl,
            cnames,
            rrtypes,
            latency_ns,
            reason,
        })
    }

    fn blank() -> Self {
        let unspecified = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let none = WireStrs {
            bytes: &[],
            count: 0,
        };
        Self {
            time_ns: 0,
            record_type: L7RecordType::Request,
            endpoint: 0,
            source: unspecified,
            destination: unspecified,
            proto: 0,
            source_identity: 0,
            destination_identity: 0,
            verdict: L7Verdict::Error,
            rule: 0,
            query: "",
            qtypes: none,
            rcode: 0,
            ips: &[],
            ttl: 0,
            cnames: none,
            rrtypes: none,
            latency_ns: 0,
            reason: None,
        }
    }

    /// The answer's addresses, in order.
    pub fn ips(&self) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.ips
            .chunks_exact(4)
            .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }

    /// The record, owned.
    pub fn to_record(&self) -> DnsRecord {
        DnsRecord {
            time_ns: self.time_ns,
            record_type: self.record_type,
            endpoint: self.endpoint,
            source: self.source,
            destination: self.destination,
            proto: self.proto,
            source_identity: self.source_identity,
            destination_identity: self.destination_identity,
            verdict: self.verdict,
            rule: self.rule,
            query: self.query.to_owned(),
            qtypes: self.qtypes.to_vec(),
            rcode: self.rcode,
            ips: self.ips().collect(),
            ttl: self.ttl,
            cnames: self.cnames.to_vec(),
            rrtypes: self.rrtypes.to_vec(),
            latency_ns: self.latency_ns,
            reason: self.reason.map(str::to_owned),
        }
    }
}

fn get_kafka(r: &mut Reader<'_>) -> Result<KafkaRecord, WireError> {
    Ok(KafkaRecord {
        time_ns: r.u64("time_ns")?,
        record_type: r.record_type()?,
        endpoint: r.u16("endpoint")?,
        egress: r.bool("egress")?,
        source: r.addr("source")?,
        destination: r.addr("destination")?,
        source_identity: r.u32("source_identity")?,
        destination_identity: r.u32("destination_identity")?,
        verdict: r.verdict()?,
        rule: r.u32("rule")?,
        api_key: r.string("api_key")?,
        api_version: r.i16("api_version")?,
        correlation_id: r.i32("correlation_id")?,
        topic: r.string("topic")?,
        error_code: r.i16("error_code")?,
        latency_ns: r.u64("latency_ns")?,
        reason: r.opt_string("reason")?,
    })
}

#[cfg(test)]
#[path = "l7_wire_tests.rs"]
mod tests;
