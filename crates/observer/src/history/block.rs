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

use prost::Message;

use crate::proto::flow::{Endpoint, Flow};

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
}

/// The compressed part.
#[derive(Clone, PartialEq, Message)]
struct BlockBody {
    /// Distinct endpoints; flows refer to them by index + 1 (0: no endpoint).
    #[prost(message, repeated, tag = "1")]
    endpoints: Vec<Endpoint>,
    #[prost(uint32, repeated, tag = "2")]
    src: Vec<u32>,
    #[prost(uint32, repeated, tag = "3")]
    dst: Vec<u32>,
    /// Time − min_time + 1 in ns; 0: the flow had no time.
    #[prost(uint64, repeated, tag = "4")]
    time: Vec<u64>,
    /// seq − first_seq.
    #[prost(uint64, repeated, tag = "5")]
    seq: Vec<u64>,
    /// 16 bytes per flow: its UUID, or zeros when it had none in the canonical form (then the
    /// flow keeps its own `uuid` string).
    #[prost(bytes = "vec", tag = "6")]
    uuids: Vec<u8>,
    /// Length of each flow's remaining encoding in `flows`.
    #[prost(uint32, repeated, tag = "7")]
    lens: Vec<u32>,
    #[prost(bytes = "vec", tag = "8")]
    flows: Vec<u8>,
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
    flow.time.as_ref().map(|t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
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

/// Encodes flows (with the ring's sequence numbers they had) into one block: its meta and its
/// body. Flows are kept in the order given.
pub fn encode(flows: &[(u64, &Flow)], run: u64, node_name: &str) -> (BlockMeta, Vec<u8>) {
    Encoder::default().encode(flows, run, node_name)
}

/// What encoding keeps from block to block: the zstd context and the buffers (allocating
/// them per block costs more than the encoding; the writer keeps one).
pub struct Encoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    whole: Vec<u8>,
    raw: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(),
            whole: Vec::with_capacity(4096),
            raw: Vec::new(),
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
        encode_with(self, flows, run, node_name)
    }
}

fn encode_with(
    enc: &mut Encoder,
    flows: &[(u64, &Flow)],
    run: u64,
    node_name: &str,
) -> (BlockMeta, Vec<u8>) {
    // Endpoints are not `Hash` (prost types): bucket them by a hash of the fields that tell
    // them apart, and compare whole within a bucket.
    let mut dict: std::collections::HashMap<u64, Vec<u32>> = std::collections::HashMap::new();
    let mut body = BlockBody::default();
    let mut src_pods = std::collections::BTreeSet::new();
    let mut dst_pods = std::collections::BTreeSet::new();
    let times: Vec<Option<i64>> = flows.iter().map(|(_, f)| time_ns(f)).collect();
    let min_time = times.iter().flatten().min().copied().unwrap_or(0);
    let max_time = times.iter().flatten().max().copied().unwrap_or(0);
    let first_seq = flows.iter().map(|(s, _)| *s).min().unwrap_or(0);
    let last_seq = flows.iter().map(|(s, _)| *s).max().unwrap_or(0);
    // Each new dictionary entry's `namespace/pod`, for the meta's pod sets (computed once per
    // distinct endpoint, not per flow: the writer makes no allocation per flow).
    let mut pod_keys: Vec<Option<String>> = Vec::new();
    let mut index = |ep: &Option<Endpoint>, endpoints: &mut Vec<Endpoint>| -> u32 {
        let Some(ep) = ep else { return 0 };
        let bucket = dict.entry(endpoint_hash(ep)).or_default();
        if let Some(i) = bucket.iter().find(|i| endpoints[**i as usize - 1] == *ep) {
            return *i;
        }
        endpoints.push(ep.clone());
        pod_keys.push(pod_key(ep));
        let i = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
        bucket.push(i);
        i
    };
    let whole = &mut enc.whole;
    for ((seq, flow), t) in flows.iter().zip(&times) {
        let s = index(&flow.source, &mut body.endpoints);
        let d = index(&flow.destination, &mut body.endpoints);
        body.src.push(s);
        body.dst.push(d);
        body.time
            .push(t.map_or(0, |t| u64::try_from(t - min_time).unwrap_or(0) + 1));
        body.seq.push(seq - first_seq);
        // What the columns hold is left out of the flow's own encoding: the flow is encoded
        // whole and those top-level fields are cut from the bytes, cheaper than copying the
        // flow without them (its endpoints' strings and labels).
        let uuid = uuid_bytes(&flow.uuid);
        body.uuids.extend_from_slice(&uuid.unwrap_or([0; 16]));
        let same_node = flow.node_name == node_name;
        whole.clear();
        // Encoding into a Vec cannot run out of room.
        let _ = flow.encode(whole);
        let before = body.flows.len();
        strip_fields(whole, &mut body.flows, |tag| match tag {
            FIELD_TIME | FIELD_SOURCE | FIELD_DESTINATION => true,
            FIELD_UUID => uuid.is_some(),
            FIELD_NODE_NAME => same_node,
            _ => false,
        });
        body.lens
            .push(u32::try_from(body.flows.len() - before).unwrap_or(u32::MAX));
    }
    // The pod sets from the endpoints the flows used on each side.
    let mut used = (
        vec![false; body.endpoints.len() + 1],
        vec![false; body.endpoints.len() + 1],
    );
    for (s, d) in body.src.iter().zip(&body.dst) {
        used.0[*s as usize] = true;
        used.1[*d as usize] = true;
    }
    for (i, key) in pod_keys.iter().enumerate() {
        if let Some(k) = key {
            if used.0[i + 1] {
                src_pods.insert(k.clone());
            }
            if used.1[i + 1] {
                dst_pods.insert(k.clone());
            }
        }
    }
    enc.raw.clear();
    // Encoding into a Vec cannot run out of room.
    let _ = body.encode(&mut enc.raw);
    let raw = &enc.raw;
    // Compressing into memory cannot fail but for allocation; keep the raw bytes then, so a
    // block is never lost to it (the reader tells them apart by zstd's magic).
    let packed = enc
        .zstd
        .as_mut()
        .and_then(|z| z.compress(raw).ok())
        .unwrap_or_else(|| raw.clone());
    let meta = BlockMeta {
        count: u32::try_from(flows.len()).unwrap_or(u32::MAX),
        min_time_ns: min_time,
        max_time_ns: max_time,
        run,
        first_seq,
        last_seq,
        src_pods: src_pods.into_iter().collect(),
        dst_pods: dst_pods.into_iter().collect(),
        node_name: node_name.to_owned(),
    };
    (meta, packed)
}

/// A decompressed block, read flow by flow.
#[derive(Debug)]
pub struct Decoded {
    body: BlockBodyView,
    meta: BlockMeta,
}

#[derive(Debug)]
struct BlockBodyView {
    endpoints: Vec<Endpoint>,
    src: Vec<u32>,
    dst: Vec<u32>,
    time: Vec<u64>,
    seq: Vec<u64>,
    uuids: Vec<u8>,
    /// Start of each flow in `flows`, and one past the last.
    offsets: Vec<usize>,
    flows: Vec<u8>,
}

/// Decompresses and checks a block's body.
pub fn decode(meta: &BlockMeta, packed: &[u8]) -> Result<Decoded, BlockError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let raw;
    let bytes = if packed.starts_with(&ZSTD_MAGIC) {
        // The frame header holds the size; bound it so a corrupted one cannot ask for more
        // memory than a block can hold (64 KiB per flow is far beyond any flow).
        let bound = (meta.count as usize).saturating_mul(64 << 10).max(1 << 20);
        // One zstd context per thread, reused: creating one per block costs as much as a
        // small block's decompression.
        thread_local! {
            static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
        }
        raw = DCTX
            .with(|d| match d.borrow_mut().as_mut() {
                Some(d) => d.decompress(packed, bound),
                None => zstd::bulk::decompress(packed, bound),
            })
            .map_err(BlockError::Decompress)?;
        &raw[..]
    } else {
        packed
    };
    let b = BlockBody::decode(bytes)?;
    let n = meta.count as usize;
    if b.src.len() != n
        || b.dst.len() != n
        || b.time.len() != n
        || b.seq.len() != n
        || b.lens.len() != n
        || b.uuids.len() != n * 16
    {
        return Err(BlockError::Inconsistent(
            "column lengths differ from the count",
        ));
    }
    let mut offsets = Vec::with_capacity(n + 1);
    let mut at = 0usize;
    offsets.push(0);
    for l in &b.lens {
        at = at.saturating_add(*l as usize);
        offsets.push(at);
    }
    if at != b.flows.len() {
        return Err(BlockError::Inconsistent("flow lengths do not add up"));
    }
    let eps = b.endpoints.len() as u32;
    if b.src.iter().chain(&b.dst).any(|i| *i > eps) {
        return Err(BlockError::Inconsistent(
            "an endpoint index is out of range",
        ));
    }
    Ok(Decoded {
        body: BlockBodyView {
            endpoints: b.endpoints,
            src: b.src,
            dst: b.dst,
            time: b.time,
            seq: b.seq,
            uuids: b.uuids,
            offsets,
            flows: b.flows,
        },
        meta: meta.clone(),
    })
}

impl Decoded {
    /// Flows in the block.
    pub fn len(&self) -> usize {
        self.body.src.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distinct endpoints (index + 1 is what [`Self::endpoints_of`] returns).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.body.endpoints
    }

    /// Source and destination endpoint index of flow `i` (0: none).
    pub fn endpoints_of(&self, i: usize) -> (u32, u32) {
        (self.body.src[i], self.body.dst[i])
    }

    /// Time of flow `i` in ns, if it has one.
    pub fn time_of(&self, i: usize) -> Option<i64> {
        match self.body.time[i] {
            0 => None,
            d => Some(
                self.meta
                    .min_time_ns
                    .saturating_add(i64::try_from(d - 1).unwrap_or(0)),
            ),
        }
    }

    /// Sequence number of flow `i`.
    pub fn seq_of(&self, i: usize) -> u64 {
        self.meta.first_seq.saturating_add(self.body.seq[i])
    }

    /// Bytes of flow `i`'s own encoding (what the columns do not hold).
    pub fn stored_len(&self, i: usize) -> usize {
        self.body.offsets[i + 1] - self.body.offsets[i]
    }

    /// Flow `i`, whole again.
    pub fn flow(&self, i: usize) -> Result<Flow, BlockError> {
        let b = &self.body;
        let mut f = Flow::decode(&b.flows[b.offsets[i]..b.offsets[i + 1]])?;
        let ep = |x: u32| (x > 0).then(|| b.endpoints[x as usize - 1].clone());
        f.source = ep(b.src[i]);
        f.destination = ep(b.dst[i]);
        f.time = self.time_of(i).map(timestamp);
        let u = &b.uuids[i * 16..i * 16 + 16];
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
