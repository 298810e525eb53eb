//! Segment files: a header, then framed blocks appended one after the other.
//!
//! ```text
//! segment: "CILFLOWS" | version u32 LE | 0 u32
//! block:   "CFB2" | meta_len u32 | body_len u32 | crc32(meta ‖ body) u32 | meta | body
//! ```
//!
//! The block magic names the block's format ([`super::block::FORMATS`]): "CFB1" blocks
//! (segments of version 1, written before format 2) are still read, so an upgraded agent keeps
//! its history; the version in the header is that of the blocks its run wrote.
//!
//! A segment is only ever appended to by the run that created it, and a crash can leave a
//! block half written; a disk can flip bits. Reading a segment back ([`scan`]) therefore trusts
//! nothing: a frame whose lengths run past the file, whose checksum fails or whose meta does not
//! decode is dropped, and reading resumes at the next block magic whose frame checks out. What
//! was dropped is reported, never fatal.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;

use super::block::BlockMeta;

const SEGMENT_MAGIC: &[u8; 8] = b"CILFLOWS";
const VERSION: u32 = super::block::FORMAT;
/// Size of the segment header.
pub const HEADER_LEN: u64 = 16;
/// Block magic of each format in [`super::block::FORMATS`]: "CFB" and the format's digit.
fn block_magic(format: u32) -> [u8; 4] {
    [
        b'C',
        b'F',
        b'B',
        b'0' + u8::try_from(format % 10).unwrap_or(0),
    ]
}

/// The format a block magic names, if this build reads it.
fn format_of(magic: &[u8]) -> Option<u32> {
    super::block::FORMATS
        .into_iter()
        .find(|f| magic == block_magic(*f))
}
const FRAME_LEN: usize = 16;
/// Bounds that no block we write comes near; larger lengths are corruption.
const MAX_META: usize = 16 << 20;
const MAX_BODY: usize = 512 << 20;

/// Where a block is in its segment.
#[derive(Clone, Debug)]
pub struct BlockRef {
    /// Offset of its frame.
    pub offset: u64,
    /// Length of meta + body.
    pub len: u64,
    /// Length of the meta part.
    pub meta_len: u32,
    /// Its format (one of [`super::block::FORMATS`]).
    pub format: u32,
    /// What it holds.
    pub meta: BlockMeta,
}

/// What [`scan`] could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Bytes skipped.
    pub bytes: u64,
    /// Ranges skipped: (offset, length).
    pub ranges: Vec<(u64, u64)>,
}

/// Writes the header of a new segment.
pub fn create(path: &Path) -> std::io::Result<File> {
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .open(path)?;
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(SEGMENT_MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    f.write_all(&h)?;
    Ok(f)
}

/// The frame of one block.
pub fn frame(meta: &BlockMeta, body: &[u8]) -> Vec<u8> {
    let m = meta.encode_to_vec();
    let mut out = Vec::with_capacity(FRAME_LEN + m.len() + body.len());
    out.extend_from_slice(&block_magic(VERSION));
    out.extend_from_slice(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&m);
    crc.update(body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(body);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The block whose frame starts at `at` in `data`, if it checks out.
fn block_at(data: &[u8], at: usize) -> Option<BlockRef> {
    let head = data.get(at..at + FRAME_LEN)?;
    let format = format_of(&head[..4])?;
    let meta_len = u32_at(head, 4) as usize;
    let body_len = u32_at(head, 8) as usize;
    if meta_len > MAX_META || body_len > MAX_BODY {
        return None;
    }
    let payload = data.get(at + FRAME_LEN..at + FRAME_LEN + meta_len + body_len)?;
    if crc32fast::hash(payload) != u32_at(head, 12) {
        return None;
    }
    let meta = BlockMeta::decode(&payload[..meta_len]).ok()?;
    Some(BlockRef {
        offset: at as u64,
        len: (meta_len + body_len) as u64,
        meta_len: meta_len as u32,
        format,
        meta,
    })
}

/// The readable blocks of a segment's contents, and what had to be skipped.
pub fn scan_bytes(data: &[u8]) -> (Vec<BlockRef>, Dropped) {
    let mut blocks = Vec::new();
    let mut dropped = Dropped::default();
    let skip = |from: usize, to: usize, d: &mut Dropped| {
        if to > from {
            d.bytes += (to - from) as u64;
            d.ranges.push((from as u64, (to - from) as u64));
        }
    };
    let header_ok = data.len() >= HEADER_LEN as usize
        && &data[..8] == SEGMENT_MAGIC
        && super::block::FORMATS.contains(&u32_at(data, 8));
    let mut at = if header_ok { HEADER_LEN as usize } else { 0 };
    let mut bad_from: Option<usize> = (!header_ok).then_some(0);
    while at < data.len() {
        if let Some(b) = block_at(data, at) {
            if let Some(from) = bad_from.take() {
                skip(from, at, &mut dropped);
            }
            at += FRAME_LEN + b.len as usize;
            blocks.push(b);
            continue;
        }
        bad_from.get_or_insert(at);
        // Resynchronise on the next block magic.
        match data[at + 1..]
            .windows(4)
            .position(|w| format_of(w).is_some())
        {
            Some(p) => at = at + 1 + p,
            None => at = data.len(),
        }
    }
    if let Some(from) = bad_from {
        skip(from, data.len(), &mut dropped);
    }
    (blocks, dropped)
}

/// Reads a segment file back (see [`scan_bytes`]).
pub fn scan(path: &Path) -> std::io::Result<(Vec<BlockRef>, Dropped, u64)> {
    let data = std::fs::read(path)?;
    // A segment of a newer format is not this build's to judge (or delete): left alone.
    if data.len() >= HEADER_LEN as usize && &data[..8] == SEGMENT_MAGIC {
        let version = u32_at(&data, 8);
        if version > VERSION {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("segment of format {version}; this build reads up to {VERSION}"),
            ));
        }
    }
    let (blocks, dropped) = scan_bytes(&data);
    Ok((blocks, dropped, data.len() as u64))
}

/// Reads a block's meta and body back from its segment, checking its checksum again (the
/// file may have changed since it was scanned).
pub fn read_body(file: &File, b: &BlockRef) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; FRAME_LEN + b.len as usize];
    file.read_exact_at(&mut buf, b.offset)?;
    if buf[..4] != block_magic(b.format) || crc32fast::hash(&buf[FRAME_LEN..]) != u32_at(&buf, 12) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "block checksum mismatch",
        ));
    }
    buf.drain(..FRAME_LEN + b.meta_len as usize);
    Ok(buf)
}

/// `flows-<run>-<n>.seg`: sorts in the order written.
pub fn file_name(run: u64, n: u32) -> String {
    format!("flows-{run:020}-{n:06}.seg")
}

/// The (run, n) of a segment file name.
pub fn parse_name(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix("flows-")?.strip_suffix(".seg")?;
    let (run, n) = rest.split_once('-')?;
    Some((run.parse().ok()?, n.parse().ok()?))
}

/// The segment files in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<((u64, u32), PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(id) = e.file_name().to_str().and_then(parse_name) {
            out.push((id, e.path()));
        }
    }
    out.sort();
    Ok(out)
}
