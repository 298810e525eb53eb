//! A Kafka request's header and the topics (with partitions) it names, read from one frame.
//!
//! Only what policy needs is read, and nothing is allocated from a count the client sent
//! before the bytes it announces are there: every array length is checked against the bytes
//! left (each element takes at least one), so a hostile frame costs at most its own size.
//! (`kafka-protocol`'s decoders reserve `Vec::with_capacity(count)` from the wire first,
//! which a 10-byte frame can turn into a multi-gigabyte allocation; they also dropped the
//! versions Kafka 4 removed, which older clients still send.)
//!
//! Layouts follow Kafka's message schemas (`clients/src/main/resources/common/message`):
//! a version at or above an API's first flexible version uses compact strings and arrays
//! (unsigned varint lengths, plus one) and tagged fields after every struct.

use bytes::{Buf, Bytes};
use ciliate_model::kafka::{FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH, PRODUCE};

/// A request as policy sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaRequest {
    /// The API key.
    pub api_key: i16,
    /// The API version.
    pub api_version: i16,
    /// The correlation id the response must echo.
    pub correlation_id: i32,
    /// The client id (empty when null).
    pub client_id: String,
    /// The topics named, in order, each with its partitions (OffsetFetch: possibly none).
    pub topics: Vec<(String, Vec<i32>)>,
    /// True when the topics were read (or the API names none); false when the body could not
    /// be read or names topics by id only.
    pub topics_known: bool,
    /// Produce with `acks: 0`: the broker sends no response.
    pub no_response: bool,
    /// Why the body could not be read, if it could not.
    pub body_error: Option<String>,
    /// OffsetFetch v8+: the group of each topic, by index into `topics`.
    pub groups: Vec<(String, usize)>,
}

/// Why a frame is not a Kafka request at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a Kafka request: {0}")]
pub struct HeaderError(pub String);

/// The first version of each API whose requests are flexible (compact, with tagged fields).
pub fn first_flexible(api_key: i16) -> Option<i16> {
    use kafka_protocol::messages::ApiKey;
    let key = ApiKey::try_from(api_key).ok()?;
    (0..i16::MAX).find(|v| key.request_header_version(*v) >= 2)
}

fn flexible(api_key: i16, version: i16) -> bool {
    // Cached per call site would be faster; the search is at most ~15 steps.
    first_flexible(api_key).is_some_and(|f| version >= f)
}

/// A cursor over the frame with Kafka's primitive types; every read is checked.
pub(super) struct Reader {
    pub(super) buf: Bytes,
    pub(super) compact: bool,
}

pub(super) type R<T> = Result<T, String>;

impl Reader {
    fn need(&self, n: usize, what: &str) -> R<()> {
        if self.buf.remaining() < n {
            return Err(format!("{what}: the frame ends early"));
        }
        Ok(())
    }
    pub(super) fn i8(&mut self) -> R<i8> {
        self.need(1, "int8")?;
        Ok(self.buf.get_i8())
    }
    pub(super) fn i16(&mut self) -> R<i16> {
        self.need(2, "int16")?;
        Ok(self.buf.get_i16())
    }
    pub(super) fn i32(&mut self) -> R<i32> {
        self.need(4, "int32")?;
        Ok(self.buf.get_i32())
    }
    pub(super) fn skip(&mut self, n: usize, what: &str) -> R<()> {
        self.need(n, what)?;
        self.buf.advance(n);
        Ok(())
    }
    pub(super) fn uvarint(&mut self) -> R<u32> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            self.need(1, "varint")?;
            let b = self.buf.get_u8();
            v |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 5 bytes".into())
    }
    /// A length that must fit in what is left; `None` for null.
    fn len(&mut self, what: &str) -> R<Option<usize>> {
        let n: i64 = if self.compact {
            i64::from(self.uvarint()?) - 1
        } else {
            i64::from(self.i16()?)
        };
        self.checked_len(n, what)
    }
    fn checked_len(&self, n: i64, what: &str) -> R<Option<usize>> {
        if n < 0 {
            return Ok(None);
        }
        let n = usize::try_from(n).map_err(|_| format!("{what}: bad length"))?;
        if n > self.buf.remaining() {
            return Err(format!(
                "{what}: length {n} beyond the {} bytes left",
                self.buf.remaining()
            ));
        }
        Ok(Some(n))
    }
    fn nullable_string(&mut self, what: &str) -> R<Option<String>> {
        let Some(n) = self.len(what)? else {
            return Ok(None);
        };
        let b = self.buf.split_to(n);
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| format!("{what}: not UTF-8"))
    }
    fn string(&mut self, what: &str) -> R<String> {
        self.nullable_string(what)?
            .ok_or_else(|| format!("{what}: null where a string is required"))
    }
    pub(super) fn skip_string(&mut self, what: &str) -> R<()> {
        if let Some(n) = self.len(what)? {
            self.buf.advance(n);
        }
        Ok(())
    }
    /// `bytes`/`records`: an int32 (or compact varint) length.
    fn skip_bytes(&mut self, what: &str) -> R<()> {
        let n: i64 = if self.compact {
            i64::from(self.uvarint()?) - 1
        } else {
            i64::from(self.i32()?)
        };
        if let Some(n) = self.checked_len(n, what)? {
            self.buf.advance(n);
        }
        Ok(())
    }
    /// An array's element count (`None`: null); at most one element per byte left.
    pub(super) fn array(&mut self, what: &str) -> R<Option<usize>> {
        let n: i64 = if self.compact {
            i64::from(self.uvarint()?) - 1
        } else {
            i64::from(self.i32()?)
        };
        self.checked_len(n, what)
    }
    pub(super) fn tagged_fields(&mut self) -> R<()> {
        if !self.compact {
            return Ok(());
        }
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.skip(size, "tagged field")?;
        }
        Ok(())
    }
    fn int32_array(&mut self, what: &str) -> R<Vec<i32>> {
        let n = self.array(what)?.unwrap_or(0);
        let mut out = Vec::with_capacity(n.min(self.buf.remaining() / 4));
        for _ in 0..n {
            out.push(self.i32()?);
        }
        Ok(out)
    }
}

/// Reads the request header of a frame (without its length prefix).
pub fn parse(frame: Bytes) -> Result<KafkaRequest, HeaderError> {
    let mut r = Reader {
        buf: frame,
        compact: false,
    };
    let mut req = header(&mut r)?;
    match body(&mut r, &mut req) {
        Ok(Some(())) => req.topics_known = true,
        Ok(None) => {}
        Err(e) => {
            req.topics.clear();
            req.groups.clear();
            req.topics_known = false;
            req.body_error = Some(e);
        }
    }
    Ok(req)
}

/// A Produce request read from the first bytes of its frame, when they name its one topic
/// (v3 to v12: later versions name topics by id), with no partitions (`None` otherwise).
/// What follows the topic's name (its partitions and their records) cannot name another
/// topic, so policy decides on this as on the whole frame; only a refusal needs the rest
/// (the partitions it answers for).
pub fn parse_head(head: Bytes) -> Option<KafkaRequest> {
    let mut r = Reader {
        buf: head,
        compact: false,
    };
    let mut req = header(&mut r).ok()?;
    if req.api_key != PRODUCE || !(3..=12).contains(&req.api_version) {
        return None;
    }
    r.skip_string("transactional id").ok()?;
    req.no_response = r.i16().ok()? == 0;
    r.i32().ok()?; // timeout
    if r.array("topics").ok()?? != 1 {
        return None;
    }
    let name = r.string("topic").ok()?;
    req.topics.push((name, Vec::new()));
    req.topics_known = true;
    Some(req)
}

/// The request header, leaving `r` at the body in the API's encoding.
fn header(r: &mut Reader) -> Result<KafkaRequest, HeaderError> {
    let head = |e: String| HeaderError(e);
    let api_key = r.i16().map_err(head)?;
    let api_version = r.i16().map_err(head)?;
    let correlation_id = r.i32().map_err(head)?;
    if api_key < 0 || api_version < 0 {
        return Err(HeaderError(format!(
            "api key {api_key}, version {api_version}"
        )));
    }
    // Every header since v1 has the client id, a non-compact nullable string even in v2;
    // only ControlledShutdown v0 (a broker-to-controller call) had header v0.
    let client_id = r
        .nullable_string("client id")
        .map_err(head)?
        .unwrap_or_default();
    let flex = flexible(api_key, api_version);
    let req = KafkaRequest {
        api_key,
        api_version,
        correlation_id,
        client_id,
        topics_known: !ciliate_model::kafka::is_topic_api_key(api_key),
        ..Default::default()
    };
    r.compact = flex;
    r.tagged_fields().map_err(head)?;
    Ok(req)
}

/// The topics of the APIs whose topics are read: `Some` when read, `None` for other APIs
/// (their topics stay unknown when the API names some).
fn body(r: &mut Reader, req: &mut KafkaRequest) -> R<Option<()>> {
    let v = req.api_version;
    match req.api_key {
        PRODUCE => {
            if v >= 3 {
                r.skip_string("transactional id")?;
            }
            let acks = r.i16()?;
            req.no_response = acks == 0;
            r.i32()?;
            let n = r.array("topics")?.unwrap_or(0);
            for _ in 0..n {
                if v >= 13 {
                    return Err("Produce v13+ names topics by id".into());
                }
                let name = r.string("topic")?;
                let mut parts = Vec::new();
                let np = r.array("partitions")?.unwrap_or(0);
                for _ in 0..np {
                    parts.push(r.i32()?);
                    r.skip_bytes("records")?;
                    r.tagged_fields()?;
                }
                r.tagged_fields()?;
                req.topics.push((name, parts));
            }
        }
        FETCH => {
            if v <= 14 {
                r.i32()?; // replica id
            }
            r.i32()?; // max wait
            r.i32()?; // min bytes
            if v >= 3 {
                r.i32()?; // max bytes
            }
            if v >= 4 {
                r.i8()?; // isolation level
            }
            if v >= 7 {
                r.i32()?; // session id
                r.i32()?; // session epoch
            }
            let n = r.array("topics")?.unwrap_or(0);
            for _ in 0..n {
                if v >= 13 {
                    return Err("Fetch v13+ names topics by id".into());
                }
                let name = r.string("topic")?;
                let mut parts = Vec::new();
                let np = r.array("partitions")?.unwrap_or(0);
                for _ in 0..np {
                    parts.push(r.i32()?);
                    if v >= 9 {
                        r.i32()?; // current leader epoch
                    }
                    r.skip(8, "fetch offset")?;
                    if v >= 12 {
                        r.i32()?; // last fetched epoch
                    }
                    if v >= 5 {
                        r.skip(8, "log start offset")?;
                    }
                    r.i32()?; // partition max bytes
                    r.tagged_fields()?;
                }
                r.tagged_fields()?;
                req.topics.push((name, parts));
            }
        }
        LIST_OFFSETS => {
            r.i32()?; // replica id
            if v >= 2 {
                r.i8()?; // isolation level
            }
            let n = r.array("topics")?.unwrap_or(0);
            for _ in 0..n {
                let name = r.string("topic")?;
                let mut parts = Vec::new();
                let np = r.array("partitions")?.unwrap_or(0);
                for _ in 0..np {
                    parts.push(r.i32()?);
                    if v >= 4 {
                        r.i32()?; // current leader epoch
                    }
                    r.skip(8, "timestamp")?;
                    if v == 0 {
                        r.i32()?; // max num offsets
                    }
                    r.tagged_fields()?;
                }
                r.tagged_fields()?;
                req.topics.push((name, parts));
            }
        }
        METADATA => {
            // Null (v1+) or empty (v0) = every topic: no topic named.
            let n = r.array("topics")?.unwrap_or(0);
            for _ in 0..n {
                if v >= 10 {
                    r.skip(16, "topic id")?;
                }
                match r.nullable_string("topic")? {
                    Some(name) => req.topics.push((name, Vec::new())),
                    None => return Err("Metadata names a topic by id".into()),
                }
                r.tagged_fields()?;
            }
        }
        OFFSET_COMMIT => {
            r.skip_string("group id")?;
            if v >= 1 {
                r.i32()?; // generation
                r.skip_string("member id")?;
            }
            if v >= 7 {
                r.skip_string("group instance id")?;
            }
            if (2..=4).contains(&v) {
                r.skip(8, "retention time")?;
            }
            let n = r.array("topics")?.unwrap_or(0);
            for _ in 0..n {
                if v >= 10 {
                    return Err("OffsetCommit v10+ names topics by id".into());
                }
                let name = r.string("topic")?;
                let mut parts = Vec::new();
                let np = r.array("partitions")?.unwrap_or(0);
                for _ in 0..np {
                    parts.push(r.i32()?);
                    r.skip(8, "committed offset")?;
                    if v >= 6 {
                        r.i32()?; // leader epoch
                    }
                    if v == 1 {
                        r.skip(8, "commit timestamp")?;
                    }
                    r.skip_string("metadata")?;
                    r.tagged_fields()?;
                }
                r.tagged_fields()?;
                req.topics.push((name, parts));
            }
        }
        OFFSET_FETCH => {
            if v <= 7 {
                r.skip_string("group id")?;
                offset_fetch_topics(r, req, v)?;
            } else {
                let ng = r.array("groups")?.unwrap_or(0);
                for _ in 0..ng {
                    let group = r.string("group id")?;
                    if v >= 9 {
                        r.skip_string("member id")?;
                        r.i32()?; // member epoch
                    }
                    let before = req.topics.len();
                    offset_fetch_topics(r, req, v)?;
                    for i in before..req.topics.len() {
                        req.groups.push((group.clone(), i));
                    }
                    r.tagged_fields()?;
                }
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(()))
}

fn offset_fetch_topics(r: &mut Reader, req: &mut KafkaRequest, v: i16) -> R<()> {
    // Null (v2+) = every topic of the group.
    let n = r.array("topics")?.unwrap_or(0);
    for _ in 0..n {
        if v >= 10 {
            return Err("OffsetFetch v10+ names topics by id".into());
        }
        let name = r.string("topic")?;
        let parts = r.int32_array("partitions")?;
        r.tagged_fields()?;
        req.topics.push((name, parts));
    }
    Ok(())
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
