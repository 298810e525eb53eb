//! One block of stored flows: the encoding of a few thousand flows, and its index entry.
//!
//! A flow's heaviest parts repeat from flow to flow: its two endpoints (namespace, pod name,
//! labels, identity) and the node's name. A block keeps each distinct endpoint once (a
//! dictionary) and every flow names its two by number; times, sequence numbers and UUIDs go
//! into columns of their own (deltas, 16 raw bytes), and what is left of each flow is its
//! protobuf encoding. The body is then compressed with zstd as a whole. A block's
//! [`BlockMeta`] (time range, which pods it holds, sequence range) stays uncompressed beside it,
//! so a query skips blocks without decompressing them, and the per-flow endpoint columns let it
//! skip flows without decoding them.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::hash::BuildHasherDefault;

use prost::Message;

use crate::l7_entry::RecordedHttp;
use crate::proto::flow::{Endpoint, Flow};
use crate::record::Recorded;

use super::row::RowWriter;

/// zstd level: 1 is the fastest; higher levels gain a few percent of size for twice the CPU.
const ZSTD_LEVEL: i32 = 1;

/// What is known of a block without decompressing it.
#[derive(Clone, PartialEq, Message)]
pub struct BlockMeta {
    /// Flows in the block.
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// Earliest flow time, nanoseconds since the epoch (0 when no flow has a time).
    #[prost(int64, tag = "2")]
    pub min_time_ns: i64,
    /// Latest flow time.
    #[prost(int64, tag = "3")]
    pub max_time_ns: i64,
    /// The agent run that recorded it (its start time in ns): sequence numbers restart per run.
    #[prost(uint64, tag = "4")]
    pub run: u64,
    /// Sequence number (the ring's) of the first flow.
    #[prost(uint64, tag = "5")]
    pub first_seq: u64,
    /// Sequence number of the last flow.
    #[prost(uint64, tag = "6")]
    pub last_seq: u64,
    /// `namespace/pod` of every source endpoint with a pod name.
    #[prost(string, repeated, tag = "7")]
    pub src_pods: Vec<String>,
    /// `namespace/pod` of every destination endpoint with a pod name.
    #[prost(string, repeated, tag = "8")]
    pub dst_pods: Vec<String>,
    /// The node name the flows carry (left out of each flow when it is this one).
    #[prost(string, tag = "9")]
    pub node_name: String,
    /// Flows without a time: a time range keeps them (as the ring does), so a block holding
    /// any is not skipped by its time range. Format 1 did not count them (0).
    #[prost(uint32, tag = "10")]
    pub untimed: u32,
}

/// Format 2, first part of the body: what a query needs to choose flows by their endpoints,
/// compressed on its own, so that choosing decompresses neither the endpoints' labels nor the
/// flows.
#[derive(Clone, PartialEq, Message)]
struct IndexSection {
    /// Namespace of each distinct endpoint; flows refer to them by index + 1 (0: none).
    #[prost(string, repeated, tag = "1")]
    namespaces: Vec<String>,
    /// Pod name of each.
    #[prost(string, repeated, tag = "2")]
    pods: Vec<String>,
    /// Per flow in arrival order, its source endpoint: u16 little-endian (u32 when `wide`).
    #[prost(bytes = "vec", tag = "3")]
    src: Vec<u8>,
    /// Its destination endpoint; also what orders the rows of the chunks (see
    /// [`stored_rows`]).
    #[prost(bytes = "vec", tag = "4")]
    dst: Vec<u8>,
    /// Endpoint numbers take 4 bytes (more than 65,535 endpoints).
    #[prost(bool, tag = "5")]
    wide: bool,
    /// Rows per chunk (the last may hold fewer).
    #[prost(uint32, tag = "6")]
    chunk_rows: u32,
    /// Compressed length of the endpoint dictionary, which follows the index.
    #[prost(uint32, tag = "7")]
    dictionary_len: u32,
    /// Compressed length of each chunk, in order after the dictionary.
    #[prost(uint32, repeated, tag = "8")]
    chunk_lens: Vec<u32>,
}

/// Format 2, second part: the endpoints whole, each decoded when a flow using it is read.
#[derive(Clone, PartialEq, Message)]
struct DictionarySection {
    /// Their encodings, one after the other.
    #[prost(bytes = "vec", tag = "1")]
    endpoints: Vec<u8>,
    /// Where each ends in `endpoints`.
    #[prost(uint32, repeated, tag = "2")]
    ends: Vec<u32>,
}

/// Format 2, then: `chunk_rows` flows at a time, in stored order, compressed one by one.
#[derive(Clone, PartialEq, Message)]
struct RowChunk {
    /// 16 bytes per flow: its UUID, or zeros when it had none in the canonical form (then the
    /// flow keeps its own `uuid` string).
    #[prost(bytes = "vec", tag = "1")]
    uuids: Vec<u8>,
    /// Length of each flow's remaining encoding in `flows`.
    #[prost(uint32, repeated, tag = "2")]
    lens: Vec<u32>,
    #[prost(bytes = "vec", tag = "3")]
    flows: Vec<u8>,
    /// Time − min_time + 1 in ns; 0: the flow had no time.
    #[prost(uint64, repeated, tag = "4")]
    time: Vec<u64>,
    /// seq − first_seq.
    #[prost(uint64, repeated, tag = "5")]
    seq: Vec<u64>,
}

/// Format 1 (written before format 2; still read): the whole body as one compressed message,
/// flows in arrival order.
#[derive(Clone, PartialEq, Message)]
struct BodyV1 {
    #[prost(message, repeated, tag = "1")]
    endpoints: Vec<Endpoint>,
    #[prost(uint32, repeated, tag = "2")]
    src: Vec<u32>,
    #[prost(uint32, repeated, tag = "3")]
    dst: Vec<u32>,
    #[prost(uint64, repeated, tag = "4")]
    time: Vec<u64>,
    #[prost(uint64, repeated, tag = "5")]
    seq: Vec<u64>,
    #[prost(bytes = "vec", tag = "6")]
    uuids: Vec<u8>,
    #[prost(uint32, repeated, tag = "7")]
    lens: Vec<u32>,
    #[prost(bytes = "vec", tag = "8")]
    flows: Vec<u8>,
}

/// The part of an [`Endpoint`] the pod prefilter looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointName {
    /// The endpoint's namespace.
    pub namespace: String,
    /// Its pod name.
    pub pod_name: String,
}

/// The block formats this build reads; [`FORMAT`] is the one it writes.
pub const FORMATS: [u32; 2] = [1, 2];
/// The block format written.
pub const FORMAT: u32 = 2;
/// Rows per chunk of format 2. Rows are grouped by destination endpoint, so a destination
/// pod's flows of a block (about 30 of its 4,096 in a busy node) fall into one or two chunks,
/// and a query for it decompresses those alone; smaller chunks compress worse.
pub const CHUNK_ROWS: usize = 256;

/// Where each flow (in arrival order) is stored among the rows of the chunks: grouped by
/// destination endpoint index, in arrival order within a group. Writer and reader both derive
/// it from the `dst` column, so it is not stored. Every index must be `<= endpoints`.
fn stored_rows(dst: &[u32], endpoints: usize) -> Vec<u32> {
    let mut next = vec![0u32; endpoints + 2];
    for d in dst {
        next[*d as usize + 1] += 1;
    }
    for i in 1..next.len() {
        next[i] += next[i - 1];
    }
    dst.iter()
        .map(|d| {
            let r = next[*d as usize];
            next[*d as usize] += 1;
            r
        })
        .collect()
}

/// Why a block could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// zstd refused the body.
    #[error("cannot decompress: {0}")]
    Decompress(std::io::Error),
    /// The protobuf is malformed.
    #[error("cannot decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Columns disagree with each other.
    #[error("inconsistent block: {0}")]
    Inconsistent(&'static str),
}

/// Nanoseconds since the epoch of a flow's time.
pub fn time_ns(flow: &Flow) -> Option<i64> {
    flow.time.as_ref().map(time_ns_of)
}

/// A timestamp in nanoseconds since the epoch.
fn time_ns_of(t: &pbjson_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.nanos))
}

fn timestamp(ns: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// `namespace/pod` of an endpoint with a pod name.
pub fn pod_key(ep: &Endpoint) -> Option<String> {
    (!ep.pod_name.is_empty()).then(|| format!("{}/{}", ep.namespace, ep.pod_name))
}

/// A UUID in its canonical form (36 characters, lowercase hex, hyphens at 8, 13, 18, 23) as
/// 16 bytes; anything else is `None` and is kept as written.
fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[n] = hex(b[i])? << 4 | hex(b[i + 1])?;
        n += 1;
        i += 2;
    }
    // All zeros marks "no UUID" in the column.
    (out != [0; 16]).then_some(out)
}

fn uuid_string(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn endpoint_hash(ep: &Endpoint) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Labels are left out: the same pod has the same labels, and equality is checked anyway.
    (ep.id, ep.identity, &ep.namespace, &ep.pod_name).hash(&mut h);
    h.finish()
}

// Flow's field numbers (flow.proto) of what the columns hold.
const FIELD_TIME: u32 = 1;
const FIELD_SOURCE: u32 = 8;
const FIELD_DESTINATION: u32 = 9;
const FIELD_NODE_NAME: u32 = 11;
const FIELD_UUID: u32 = 34;
const FIELD_NODE_LABELS: u32 = 37;

/// Copies the top-level fields of the protobuf message `msg` to `out`, but those whose
/// number `skip` accepts. Should the bytes not parse (they come from prost: they do), the
/// whole message is copied.
fn strip_fields(msg: &[u8], out: &mut Vec<u8>, skip: impl Fn(u32) -> bool) {
    use prost::encoding::decode_varint;
    let start = out.len();
    let mut rest = msg;
    while !rest.is_empty() {
        let field_start = msg.len() - rest.len();
        let Ok(key) = decode_varint(&mut rest) else {
            break;
        };
        let len = match key & 7 {
            0 => match decode_varint(&mut rest) {
                Ok(_) => 0,
                Err(_) => break,
            },
            1 => 8,
            2 => match decode_varint(&mut rest) {
                Ok(l) => usize::try_from(l).unwrap_or(usize::MAX),
                Err(_) => break,
            },
            5 => 4,
            _ => break,
        };
        if len > rest.len() {
            break;
        }
        rest = &rest[len..];
        let field_end = msg.len() - rest.len();
        if !skip(u32::try_from(key >> 3).unwrap_or(0)) {
            out.extend_from_slice(&msg[field_start..field_end]);
        }
    }
    if !rest.is_empty() {
        out.truncate(start);
        out.extend_from_slice(msg);
    }
}

/// Appends to `out` a flow's own encoding in a block: without what the columns and the
/// dictionary hold (time, endpoints, the UUID when `uuid_column`, the node name when it is the
/// block's `node_name`). The flow is encoded whole (into `whole`) and those top-level fields
/// are cut from the bytes, cheaper than copying the flow without them (its endpoints' strings
/// and labels).
pub(super) fn cut_columns(
    flow: &Flow,
    node_name: &str,
    uuid_column: bool,
    whole: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let same_node = flow.node_name == node_name;
    whole.clear();
    // Encoding into a Vec cannot run out of room.
    let _ = flow.encode(whole);
    strip_fields(whole, out, |tag| match tag {
        FIELD_TIME | FIELD_SOURCE | FIELD_DESTINATION => true,
        FIELD_UUID => uuid_column,
        FIELD_NODE_NAME => same_node,
        _ => false,
    });
}

/// Encodes flows (with the ring's sequence numbers they had) into one block of [`FORMAT`]:
/// its meta and its body. Flows are read back in the order given.
pub fn encode(flows: &[(u64, &Flow)], run: u64, node_name: &str) -> (BlockMeta, Vec<u8>) {
    Encoder::default().encode(flows, run, node_name)
}

/// One flow to store: built, or a datapath event whose flow is built in parts as the block
/// stores it (its endpoints once per block, not per flow). Both give the same block.
#[derive(Clone, Copy, Debug)]
pub enum Row<'a> {
    /// A built flow.
    Flow(&'a Flow),
    /// A datapath event, its flow not built.
    Event(&'a Recorded),
    /// An HTTP record of the proxy, its flow not built.
    Http(&'a RecordedHttp),
}

impl Row<'_> {
    fn time_ns(&self) -> Option<i64> {
        match self {
            Row::Flow(f) => time_ns(f),
            Row::Http(r) => Some(time_ns_of(&r.time())),
            Row::Event(r) => r.time().map(|t| {
                t.seconds
                    .saturating_mul(1_000_000_000)
                    .saturating_add(i64::from(t.nanos))
            }),
        }
    }
}

/// What encoding keeps from block to block: the zstd context and the buffers (allocating
/// them per block costs more than the encoding; the writer keeps one).
pub struct Encoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    whole: Vec<u8>,
    stripped: Vec<u8>,
    uuids: Vec<u8>,
    raw: Vec<u8>,
    chunk: RowChunk,
    rows: RowWriter,
    /// An HTTP record's flow without its names, filled in place per record
    /// (`RecordedHttp::fill_unnamed`).
    http: Flow,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).ok().map(|mut z| {
                // Each section carries its own checksum (4 bytes): a section that is not what
                // was written is refused when it is read, even behind a block checksum that
                // holds. Without it the compressor still works, unchecked.
                let _ = z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true));
                z
            }),
            whole: Vec::with_capacity(4096),
            stripped: Vec::new(),
            uuids: Vec::new(),
            raw: Vec::new(),
            chunk: RowChunk::default(),
            rows: RowWriter::default(),
            http: Flow::default(),
        }
    }
}

impl Encoder {
    /// See [`encode`].
    pub fn encode(
        &mut self,
        flows: &[(u64, &Flow)],
        run: u64,
        node_name: &str,
    ) -> (BlockMeta, Vec<u8>) {
        let rows: Vec<(u64, Row<'_>)> = flows.iter().map(|(s, f)| (*s, Row::Flow(f))).collect();
        encode_with(self, &rows, run, node_name, &mut || {})
    }

    /// Encodes rows, built flows or events: see [`encode`].
    pub fn encode_rows(
        &mut self,
        rows: &[(u64, Row<'_>)],
        run: u64,
        node_name: &str,
    ) -> (BlockMeta, Vec<u8>) {
        encode_with(self, rows, run, node_name, &mut || {})
    }

    /// [`encode_rows`](Self::encode_rows), calling `between` between steps of the work (every
    /// [`PAUSE_ROWS`] rows encoded, and after each chunk is compressed): the history's writer
    /// offers its CPU there (`crate::background::BackgroundClass::offer_cpu`), so that a
    /// block's milliseconds of work do not run in one piece.
    pub fn encode_rows_pausing(
        &mut self,
        rows: &[(u64, Row<'_>)],
        run: u64,
        node_name: &str,
        between: &mut dyn FnMut(),
    ) -> (BlockMeta, Vec<u8>) {
        encode_with(self, rows, run, node_name, between)
    }

    /// Gives back the buffers sized by a whole block (each row's encoding: ~0.2 KB a flow,
    /// 0.75 MB for a full block). While blocks follow each other they are reused; through a
    /// quiet spell they would hold the largest block's size for nothing (issue #15). The zstd
    /// context and the buffers sized by a chunk of rows stay.
    pub fn release_block_buffers(&mut self) {
        self.stripped = Vec::new();
        self.uuids = Vec::new();
    }

    /// `raw` compressed. Compressing into memory cannot fail but for allocation; the raw
    /// bytes are kept then, so a block is never lost to it (the reader tells them apart by
    /// zstd's magic).
    fn pack(&mut self) -> Vec<u8> {
        let raw = &self.raw;
        self.zstd
            .as_mut()
            .and_then(|z| z.compress(raw).ok())
            .unwrap_or_else(|| raw.clone())
    }
}

/// A block's endpoint dictionary as it is built: endpoints are not `Hash` (prost types), so
/// they are bucketed by a hash of the fields that tell them apart and compared whole within
/// a bucket. An event's endpoint is first looked up by its record's key (the shared pod
/// entry), so it is built and hashed once per block, not once per flow.
#[derive(Default)]
struct Dictionary<'a> {
    buckets: std::collections::HashMap<u64, Vec<u32>>,
    endpoints: Vec<Cow<'a, Endpoint>>,
    by_key: std::collections::HashMap<(usize, u32, usize), u32, BuildHasherDefault<KeyHasher>>,
}

/// Hashes the keys of [`Dictionary::by_key`] (two addresses and an identity), looked up twice
/// per flow: a multiply per word, where SipHash took a tenth of a row's time. Nobody outside
/// chooses these keys, so SipHash's resistance to chosen keys buys nothing here.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits (which pick the bucket) to the words' low bits,
        // and addresses' low bits are zeros: fold the high bits down.
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

impl<'a> Dictionary<'a> {
    fn index(&mut self, ep: Option<Cow<'a, Endpoint>>) -> u32 {
        let Some(ep) = ep else { return 0 };
        let bucket = self.buckets.entry(endpoint_hash(&ep)).or_default();
        if let Some(i) = bucket
            .iter()
            .find(|i| *self.endpoints[**i as usize - 1] == *ep)
        {
            return *i;
        }
        self.endpoints.push(ep);
        let i = u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX);
        bucket.push(i);
        i
    }

    /// The index of an event's source (or destination) endpoint.
    fn index_event(&mut self, r: &Recorded, destination: bool) -> u32 {
        self.index_keyed(r.history_endpoint_key(destination), || {
            r.history_endpoint(destination)
        })
    }

    /// The index of an HTTP record's source (or destination) endpoint.
    fn index_http(&mut self, r: &RecordedHttp, destination: bool) -> u32 {
        self.index_keyed(r.history_endpoint_key(destination), || {
            r.history_endpoint(destination)
        })
    }

    /// The index of the endpoint `key` tells (see `Recorded::history_endpoint_key`), built
    /// by `endpoint` only the first time the key is seen.
    fn index_keyed(
        &mut self,
        key: Option<(usize, u32, usize)>,
        endpoint: impl FnOnce() -> Endpoint,
    ) -> u32 {
        if let Some(i) = key.and_then(|k| self.by_key.get(&k)) {
            return *i;
        }
        let i = self.index(Some(Cow::Owned(endpoint())));
        if let Some(k) = key {
            self.by_key.insert(k, i);
        }
        i
    }
}

/// Rows encoded between two calls of [`Encoder::encode_rows_pausing`]'s `between` (a row is
/// a few microseconds).
pub const PAUSE_ROWS: usize = 16;

fn encode_with(
    enc: &mut Encoder,
    flows: &[(u64, Row<'_>)],
    run: u64,
    node_name: &str,
    between: &mut dyn FnMut(),
) -> (BlockMeta, Vec<u8>) {
    let n = flows.len();
    let mut dict = Dictionary::default();
    let times: Vec<Option<i64>> = flows.iter().map(|(_, f)| f.time_ns()).collect();
    let min_time = times.iter().flatten().min().copied().unwrap_or(0);
    let max_time = times.iter().flatten().max().copied().unwrap_or(0);
    let first_seq = flows.iter().map(|(s, _)| *s).min().unwrap_or(0);
    let last_seq = flows.iter().map(|(s, _)| *s).max().unwrap_or(0);
    let mut src = Vec::with_capacity(n);
    let mut dst = Vec::with_capacity(n);
    // Each flow's own encoding, in arrival order: the flows are read once, in the order they
    // sit in memory, and only these bytes are reordered into the chunks.
    enc.stripped.clear();
    enc.uuids.clear();
    let mut ends = Vec::with_capacity(n);
    for (i, (_, row)) in flows.iter().enumerate() {
        if i > 0 && i % PAUSE_ROWS == 0 {
            between();
        }
        match row {
            Row::Flow(flow) => {
                src.push(dict.index(flow.source.as_ref().map(Cow::Borrowed)));
                dst.push(dict.index(flow.destination.as_ref().map(Cow::Borrowed)));
                let uuid = uuid_bytes(&flow.uuid);
                enc.uuids.extend_from_slice(&uuid.unwrap_or([0; 16]));
                cut_columns(
                    flow,
                    node_name,
                    uuid.is_some(),
                    &mut enc.whole,
                    &mut enc.stripped,
                );
            }
            Row::Event(r) => {
                src.push(dict.index_event(r, false));
                dst.push(dict.index_event(r, true));
                // The same bytes as the built flow's once the columns' fields are cut,
                // written from the record without building the flow.
                let uuid = *r.uuid().as_bytes();
                let uuid_column = uuid != [0; 16];
                enc.uuids.extend_from_slice(&uuid);
                enc.rows.write(r, node_name, uuid_column, &mut enc.stripped);
            }
            Row::Http(r) => {
                src.push(dict.index_http(r, false));
                dst.push(dict.index_http(r, true));
                enc.uuids.extend_from_slice(r.uuid().as_bytes());
                // An HTTP record's row is written from its frame, a DNS record's cut from its
                // flow.
                if enc.rows.write_http(r, node_name, &mut enc.stripped) {
                    ends.push(enc.stripped.len());
                    continue;
                }
                // The flow without endpoints, id, node labels or policy, then its node labels
                // and the policy that allowed it: the built flow's fields (in another order, which protobuf readers accept).
                let (whole, stripped) = (&mut enc.whole, &mut enc.stripped);
                r.with_unnamed(&mut enc.http, |f| {
                    cut_columns(f, node_name, true, whole, stripped);
                });
                prost::encoding::string::encode_repeated(
                    FIELD_NODE_LABELS,
                    r.node_labels(),
                    &mut enc.stripped,
                );
                if let Some((field, policy)) = r.history_policy() {
                    prost::encoding::message::encode(field, policy, &mut enc.stripped);
                }
            }
        }
        ends.push(enc.stripped.len());
    }
    // The pod sets of the meta, from the endpoints the flows used on each side (one
    // `namespace/pod` per distinct endpoint, not per flow).
    let eps = dict.endpoints.len();
    let mut used = (vec![false; eps + 1], vec![false; eps + 1]);
    for (s, d) in src.iter().zip(&dst) {
        used.0[*s as usize] = true;
        used.1[*d as usize] = true;
    }
    let mut src_pods = std::collections::BTreeSet::new();
    let mut dst_pods = std::collections::BTreeSet::new();
    for (i, ep) in dict.endpoints.iter().enumerate() {
        if let Some(k) = pod_key(ep) {
            if used.0[i + 1] {
                src_pods.insert(k.clone());
            }
            if used.1[i + 1] {
                dst_pods.insert(k);
            }
        }
    }

    let wide = eps > usize::from(u16::MAX);
    let index_column = |v: &[u32]| -> Vec<u8> {
        if wide {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else {
            v.iter()
                .flat_map(|x| u16::try_from(*x).unwrap_or(u16::MAX).to_le_bytes())
                .collect()
        }
    };
    let mut dictionary = DictionarySection::default();
    for ep in &dict.endpoints {
        // Encoding into a Vec cannot run out of room.
        let _ = ep.encode(&mut dictionary.endpoints);
        dictionary
            .ends
            .push(u32::try_from(dictionary.endpoints.len()).unwrap_or(u32::MAX));
    }
    let mut index = IndexSection {
        namespaces: dict.endpoints.iter().map(|e| e.namespace.clone()).collect(),
        pods: dict.endpoints.iter().map(|e| e.pod_name.clone()).collect(),
        src: index_column(&src),
        dst: index_column(&dst),
        wide,
        chunk_rows: CHUNK_ROWS as u32,
        ..IndexSection::default()
    };

    // The rows, grouped by destination, in chunks of CHUNK_ROWS compressed one by one.
    let rows = stored_rows(&dst, eps);
    let mut order = vec![0usize; n];
    for (i, r) in rows.iter().enumerate() {
        order[*r as usize] = i;
    }
    let mut chunks = Vec::new();
    for part in order.chunks(CHUNK_ROWS) {
        let chunk = &mut enc.chunk;
        chunk.uuids.clear();
        chunk.lens.clear();
        chunk.flows.clear();
        chunk.time.clear();
        chunk.seq.clear();
        for &i in part {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            chunk.flows.extend_from_slice(&enc.stripped[start..ends[i]]);
            chunk
                .lens
                .push(u32::try_from(ends[i] - start).unwrap_or(u32::MAX));
            chunk
                .uuids
                .extend_from_slice(&enc.uuids[i * 16..i * 16 + 16]);
            chunk
                .time
                .push(times[i].map_or(0, |t| u64::try_from(t - min_time).unwrap_or(0) + 1));
            chunk.seq.push(flows[i].0 - first_seq);
        }
        enc.raw.clear();
        let _ = enc.chunk.encode(&mut enc.raw);
        let packed = enc.pack();
        index
            .chunk_lens
            .push(u32::try_from(packed.len()).unwrap_or(u32::MAX));
        chunks.push(packed);
        between();
    }
    enc.raw.clear();
    let _ = dictionary.encode(&mut enc.raw);
    let packed_dictionary = enc.pack();
    index.dictionary_len = u32::try_from(packed_dictionary.len()).unwrap_or(u32::MAX);
    enc.raw.clear();
    let _ = index.encode(&mut enc.raw);
    let packed_index = enc.pack();
    let total = 4
        + packed_index.len()
        + packed_dictionary.len()
        + chunks.iter().map(Vec::len).sum::<usize>();
    let mut body = Vec::with_capacity(total);
    body.extend_from_slice(
        &u32::try_from(packed_index.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    body.extend_from_slice(&packed_index);
    body.extend_from_slice(&packed_dictionary);
    for c in &chunks {
        body.extend_from_slice(c);
    }
    let meta = BlockMeta {
        count: u32::try_from(n).unwrap_or(u32::MAX),
        min_time_ns: min_time,
        max_time_ns: max_time,
        run,
        first_seq,
        last_seq,
        src_pods: src_pods.into_iter().collect(),
        dst_pods: dst_pods.into_iter().collect(),
        node_name: node_name.to_owned(),
        untimed: u32::try_from(times.iter().filter(|t| t.is_none()).count()).unwrap_or(u32::MAX),
    };
    (meta, body)
}

/// A block whose index is read, flow by flow: its endpoint dictionary is decompressed when a
/// flow is first read, each chunk of flows when a flow in it is.
#[derive(Debug)]
pub struct Decoded {
    meta: BlockMeta,
    names: Vec<EndpointName>,
    src: Vec<u32>,
    dst: Vec<u32>,
    /// Stored row of each flow (arrival order).
    rows: Vec<u32>,
    chunk_rows: usize,
    /// The body as read; where its dictionary and each compressed chunk are in it.
    body: Vec<u8>,
    dictionary_at: std::ops::Range<usize>,
    chunk_at: Vec<std::ops::Range<usize>>,
    /// The dictionary once decompressed (`None`: it could not be).
    dictionary: OnceCell<Option<DictionarySection>>,
    /// Each endpoint once decoded.
    endpoints: Vec<OnceCell<Endpoint>>,
    /// Each chunk once decompressed (`None`: it could not be).
    chunks: Vec<OnceCell<Option<Chunk>>>,
}

/// The rows of one chunk, decompressed and checked.
#[derive(Debug)]
struct Chunk {
    uuids: Vec<u8>,
    time: Vec<u64>,
    seq: Vec<u64>,
    /// Start of each row in `flows`, and one past the last.
    offsets: Vec<usize>,
    flows: Vec<u8>,
}

impl Chunk {
    fn new(c: RowChunk, rows: usize) -> Result<Self, BlockError> {
        if c.lens.len() != rows
            || c.uuids.len() != rows * 16
            || c.time.len() != rows
            || c.seq.len() != rows
        {
            return Err(BlockError::Inconsistent(
                "column lengths differ from the count",
            ));
        }
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut at = 0usize;
        offsets.push(0);
        for l in &c.lens {
            at = at.saturating_add(*l as usize);
            offsets.push(at);
        }
        if at != c.flows.len() {
            return Err(BlockError::Inconsistent("flow lengths do not add up"));
        }
        Ok(Self {
            uuids: c.uuids,
            time: c.time,
            seq: c.seq,
            offsets,
            flows: c.flows,
        })
    }
}

/// `packed` decompressed (or as is, when it was stored uncompressed), refusing to grow
/// beyond what `rows` flows can hold (a corrupted frame header cannot ask for more memory).
fn unpack(packed: &[u8], rows: usize) -> Result<std::borrow::Cow<'_, [u8]>, BlockError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if !packed.starts_with(&ZSTD_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(packed));
    }
    // 64 KiB per flow is far beyond any flow.
    let bound = rows.saturating_mul(64 << 10).max(1 << 20);
    // One zstd context per thread, reused: creating one per block costs as much as a small
    // block's decompression.
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
    }
    DCTX.with(|d| match d.borrow_mut().as_mut() {
        Some(d) => d.decompress(packed, bound),
        None => zstd::bulk::decompress(packed, bound),
    })
    .map(std::borrow::Cow::Owned)
    .map_err(BlockError::Decompress)
}

/// Reads a block's index (of format `format`, one of [`FORMATS`]) and checks it; its flows
/// are decompressed as they are read.
pub fn decode(format: u32, meta: &BlockMeta, body: Vec<u8>) -> Result<Decoded, BlockError> {
    match format {
        1 => decode_v1(meta, &body),
        2 => decode_v2(meta, body),
        _ => Err(BlockError::Inconsistent("unknown block format")),
    }
}

fn check_endpoints(n: usize, endpoints: usize, src: &[u32], dst: &[u32]) -> Result<(), BlockError> {
    if src.len() != n || dst.len() != n {
        return Err(BlockError::Inconsistent(
            "column lengths differ from the count",
        ));
    }
    let eps = u32::try_from(endpoints).unwrap_or(u32::MAX);
    if src.iter().chain(dst).any(|i| *i > eps) {
        return Err(BlockError::Inconsistent(
            "an endpoint index is out of range",
        ));
    }
    Ok(())
}

fn index_column(bytes: &[u8], wide: bool) -> Vec<u32> {
    if wide {
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        bytes
            .chunks_exact(2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
            .collect()
    }
}

fn decode_v2(meta: &BlockMeta, body: Vec<u8>) -> Result<Decoded, BlockError> {
    let n = meta.count as usize;
    let short = || BlockError::Inconsistent("the sections run past the block");
    let head = body.get(..4).ok_or_else(short)?;
    let index_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let index_end = 4usize.checked_add(index_len).ok_or_else(short)?;
    let ix = IndexSection::decode(&*unpack(body.get(4..index_end).ok_or_else(short)?, n)?)?;
    let (src, dst) = (
        index_column(&ix.src, ix.wide),
        index_column(&ix.dst, ix.wide),
    );
    let eps = ix.namespaces.len();
    if ix.pods.len() != eps {
        return Err(BlockError::Inconsistent("endpoint names differ in number"));
    }
    check_endpoints(n, eps, &src, &dst)?;
    let chunk_rows = ix.chunk_rows as usize;
    if chunk_rows == 0 || ix.chunk_lens.len() != n.div_ceil(chunk_rows) {
        return Err(BlockError::Inconsistent(
            "chunk count differs from the count",
        ));
    }
    let dictionary_at = index_end..index_end.saturating_add(ix.dictionary_len as usize);
    let mut chunk_at = Vec::with_capacity(ix.chunk_lens.len());
    let mut at = dictionary_at.end;
    for l in &ix.chunk_lens {
        let end = at.saturating_add(*l as usize);
        chunk_at.push(at..end);
        at = end;
    }
    if at != body.len() {
        return Err(BlockError::Inconsistent("section lengths do not add up"));
    }
    let names = ix
        .namespaces
        .into_iter()
        .zip(ix.pods)
        .map(|(namespace, pod_name)| EndpointName {
            namespace,
            pod_name,
        })
        .collect();
    Ok(Decoded {
        meta: meta.clone(),
        names,
        rows: stored_rows(&dst, eps),
        src,
        dst,
        chunk_rows,
        body,
        dictionary_at,
        dictionary: OnceCell::new(),
        endpoints: (0..eps).map(|_| OnceCell::new()).collect(),
        chunks: chunk_at.iter().map(|_| OnceCell::new()).collect(),
        chunk_at,
    })
}

/// Format 1: one message, decompressed whole; its flows are in arrival order, one chunk.
fn decode_v1(meta: &BlockMeta, packed: &[u8]) -> Result<Decoded, BlockError> {
    let n = meta.count as usize;
    let b = BodyV1::decode(&*unpack(packed, n)?)?;
    check_endpoints(n, b.endpoints.len(), &b.src, &b.dst)?;
    let chunk = Chunk::new(
        RowChunk {
            uuids: b.uuids,
            lens: b.lens,
            flows: b.flows,
            time: b.time,
            seq: b.seq,
        },
        n,
    )?;
    let names = b
        .endpoints
        .iter()
        .map(|e| EndpointName {
            namespace: e.namespace.clone(),
            pod_name: e.pod_name.clone(),
        })
        .collect();
    Ok(Decoded {
        meta: meta.clone(),
        names,
        endpoints: b.endpoints.into_iter().map(OnceCell::from).collect(),
        src: b.src,
        dst: b.dst,
        rows: (0..u32::try_from(n).unwrap_or(u32::MAX)).collect(),
        chunk_rows: n.max(1),
        body: Vec::new(),
        dictionary_at: 0..0,
        dictionary: OnceCell::from(Some(DictionarySection::default())),
        // Its one chunk is read already.
        chunk_at: Vec::new(),
        chunks: vec![OnceCell::from(Some(chunk))],
    })
}

/// The value in `cell`, made by `make` on first use; an error is kept as `None` (and told
/// again as `unreadable` later).
fn once<'a, T>(
    cell: &'a OnceCell<Option<T>>,
    unreadable: &'static str,
    make: impl FnOnce() -> Result<T, BlockError>,
) -> Result<&'a T, BlockError> {
    if cell.get().is_none() {
        let made = make();
        let (kept, result) = match made {
            Ok(v) => (Some(v), Ok(())),
            Err(e) => (None, Err(e)),
        };
        let _ = cell.set(kept);
        result?;
    }
    cell.get()
        .and_then(Option::as_ref)
        .ok_or(BlockError::Inconsistent(unreadable))
}

impl Decoded {
    /// Flows in the block.
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Namespace and pod of the distinct endpoints (index + 1 is what
    /// [`Self::endpoints_of`] returns).
    pub fn endpoint_names(&self) -> &[EndpointName] {
        &self.names
    }

    /// Source and destination endpoint index of flow `i` (0: none).
    pub fn endpoints_of(&self, i: usize) -> (u32, u32) {
        (self.src[i], self.dst[i])
    }

    /// Time of flow `i` in ns, if it has one.
    pub fn time_of(&self, i: usize) -> Result<Option<i64>, BlockError> {
        let (c, j) = self.row(i)?;
        Ok(match c.time[j] {
            0 => None,
            d => Some(
                self.meta
                    .min_time_ns
                    .saturating_add(i64::try_from(d - 1).unwrap_or(0)),
            ),
        })
    }

    /// Sequence number of flow `i`.
    pub fn seq_of(&self, i: usize) -> Result<u64, BlockError> {
        let (c, j) = self.row(i)?;
        Ok(self.meta.first_seq.saturating_add(c.seq[j]))
    }

    /// Endpoint `x` of the dictionary (0: none), decoded on first use.
    fn endpoint(&self, x: u32) -> Result<Option<Endpoint>, BlockError> {
        let Some(i) = (x as usize).checked_sub(1) else {
            return Ok(None);
        };
        if let Some(e) = self.endpoints[i].get() {
            return Ok(Some(e.clone()));
        }
        let d = once(
            &self.dictionary,
            "the endpoint dictionary is unreadable",
            || {
                let raw = unpack(&self.body[self.dictionary_at.clone()], self.len())?;
                let d = DictionarySection::decode(&*raw)?;
                let ordered = d.ends.windows(2).all(|w| w[0] <= w[1]);
                if d.ends.len() != self.endpoints.len()
                    || !ordered
                    || d.ends
                        .last()
                        .is_some_and(|e| *e as usize > d.endpoints.len())
                {
                    return Err(BlockError::Inconsistent(
                        "the endpoint dictionary does not add up",
                    ));
                }
                Ok(d)
            },
        )?;
        let start = if i == 0 { 0 } else { d.ends[i - 1] as usize };
        let e = Endpoint::decode(&d.endpoints[start..d.ends[i] as usize])?;
        let _ = self.endpoints[i].set(e.clone());
        Ok(Some(e))
    }

    /// The chunk holding flow `i` (decompressed on first use) and its row in it.
    fn row(&self, i: usize) -> Result<(&Chunk, usize), BlockError> {
        let r = self.rows[i] as usize;
        let k = r / self.chunk_rows;
        let rows = self
            .chunk_rows
            .min(self.len().saturating_sub(k * self.chunk_rows));
        let c = once(&self.chunks[k], "a chunk of flows is unreadable", || {
            let at = self.chunk_at.get(k).cloned().unwrap_or_default();
            let raw = unpack(&self.body[at], rows)?;
            Chunk::new(RowChunk::decode(&*raw)?, rows)
        })?;
        Ok((c, r % self.chunk_rows))
    }

    /// Bytes of flow `i`'s own encoding (what the columns do not hold).
    pub fn stored_len(&self, i: usize) -> Result<usize, BlockError> {
        let (c, j) = self.row(i)?;
        Ok(c.offsets[j + 1] - c.offsets[j])
    }

    /// Flow `i`, whole again.
    pub fn flow(&self, i: usize) -> Result<Flow, BlockError> {
        let (c, j) = self.row(i)?;
        let mut f = Flow::decode(&c.flows[c.offsets[j]..c.offsets[j + 1]])?;
        f.source = self.endpoint(self.src[i])?;
        f.destination = self.endpoint(self.dst[i])?;
        f.time = self.time_of(i)?.map(timestamp);
        let u = &c.uuids[j * 16..j * 16 + 16];
        if u != [0; 16] {
            f.uuid = uuid_string(u);
        }
        if f.node_name.is_empty() {
            f.node_name.clone_from(&self.meta.node_name);
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_only_in_canonical_form() {
        let u = "c2ad9d04-5a1e-4b0f-9d1c-0123456789ab";
        assert_eq!(uuid_string(&uuid_bytes(u).expect("canonical")), u);
        assert_eq!(uuid_bytes("C2AD9D04-5A1E-4B0F-9D1C-0123456789AB"), None);
        assert_eq!(uuid_bytes("c2ad9d04x5a1e-4b0f-9d1c-0123456789ab"), None);
        assert_eq!(uuid_bytes("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(uuid_bytes(""), None);
    }
}
