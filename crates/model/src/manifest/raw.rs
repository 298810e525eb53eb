//! `POST /v1/manifests` as the agent receives it: each document's JSON text kept as it came
//! ([`RawApplyRequest`]), decoded straight into its typed object ([`decode_all_raw`]).
//!
//! Building a [`serde_json::Value`] of every document first, then the typed object from it,
//! and dropping the values, was about half of the agent's time for a batch of 10,000 Services
//! (a map node per JSON object, most of them one or two entries). The straight path decodes
//! and validates exactly as [`super::decode_all`] does, and answers `None` wherever that
//! could differ or has something to say (a document of another kind, such as a policy; any
//! problem at all): the caller then converts the request ([`RawApplyRequest::to_request`])
//! and takes the [`super::decode_all`] path, which reports every problem as it always did.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    check_batch, validate_typed, ApplyDocument, ApplyRequest, BatchCheck, Decoded, ManifestError,
};
use crate::k8s::{Kind, Object};

/// One document of [`RawApplyRequest`]: [`ApplyDocument`] with its object kept as JSON text.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawApplyDocument {
    /// The file it came from.
    pub source: String,
    /// Its 1-based position in the file.
    pub index: usize,
    /// The document's JSON text (syntax checked).
    pub object: Box<RawValue>,
}

/// [`ApplyRequest`] with each document's object kept as JSON text: the same body, read
/// without building a JSON value of every document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawApplyRequest {
    /// The documents, in order.
    pub documents: Vec<RawApplyDocument>,
    /// Delete the objects named by the documents instead of applying them.
    #[serde(default)]
    pub delete: bool,
}

impl RawApplyRequest {
    /// The request with every document parsed into a JSON value, as [`ApplyRequest`] reads
    /// it. Fails, naming the document, only where a value the syntax allows does not fit
    /// [`serde_json::Value`] (a number out of range).
    pub fn to_request(&self) -> Result<ApplyRequest, ManifestError> {
        let documents = self
            .documents
            .iter()
            .map(|d| {
                Ok(ApplyDocument {
                    source: d.source.clone(),
                    index: d.index,
                    object: serde_json::from_str(d.object.get()).map_err(|e| ManifestError {
                        source: d.source.clone(),
                        index: d.index,
                        object: String::new(),
                        path: String::new(),
                        reason: format!("JSON value not readable: {e}"),
                    })?,
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        Ok(ApplyRequest {
            documents,
            delete: self.delete,
        })
    }
}

/// What a document is, read without its other fields.
#[derive(Deserialize)]
struct TypeHead<'a> {
    #[serde(rename = "apiVersion", borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

/// One document decoded straight from its text and validated; `None` where
/// [`super::decode`] would answer a problem, or where the document is not one of [`Kind`]'s.
fn decode_raw(doc: &RawApplyDocument) -> Option<Object> {
    decode_text(doc.object.get(), &doc.source, doc.index)
}

/// [`decode_raw`] of document `index` of `source`, whose JSON text is `text`.
fn decode_text(text: &str, source: &str, index: usize) -> Option<Object> {
    let kind = match leading_type(text) {
        Some(kind) => kind,
        None => {
            let head: TypeHead = serde_json::from_str(text).ok()?;
            Kind::from_type(&head.api_version, &head.kind)?
        }
    };
    // A duplicate key is an error here (typed fields, straight from text) and the last value
    // in a JSON value: such documents take the value path, which reads them as it always did.
    let object = match kind {
        Kind::Service => Object::Service(serde_json::from_str(text).ok()?),
        Kind::EndpointSlice => Object::EndpointSlice(serde_json::from_str(text).ok()?),
        Kind::Endpoints => Object::Endpoints(serde_json::from_str(text).ok()?),
        Kind::Namespace => Object::Namespace(serde_json::from_str(text).ok()?),
    };
    validate_typed(object, source, index).ok()
}

/// The kind of a document whose text starts `{"apiVersion":"..","kind":"..",` (as the CLI
/// writes a manifest's usual first lines) and names neither key again: read without going
/// through the whole text a second time, as [`TypeHead`] does. `None`: read it that way.
fn leading_type(text: &str) -> Option<Kind> {
    let rest = text.strip_prefix(r#"{"apiVersion":""#)?;
    let (api_version, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(r#","kind":""#)?;
    let (kind, rest) = rest.split_once('"')?;
    // An escape would need decoding; a key given twice is the value path's to read.
    if api_version.contains('\\')
        || kind.contains('\\')
        || rest.contains(r#""apiVersion""#)
        || rest.contains(r#""kind""#)
    {
        return None;
    }
    Kind::from_type(api_version, kind)
}

/// [`super::decode_all`] of the documents, straight from their text: every object when all
/// of them are valid objects of [`Kind`]'s kinds, else `None` (take the value path, which
/// reports the problems).
pub fn decode_all_raw(docs: &[RawApplyDocument]) -> Option<Vec<Decoded>> {
    let mut objects = Vec::with_capacity(docs.len());
    for d in docs {
        objects.push(decode_raw(d)?);
    }
    check_batch(
        docs.iter()
            .zip(objects)
            .map(|(d, o)| (d.source.as_str(), d.index, Ok(o))),
    )
    .ok()
}

/// Content type of the streamed form of `POST /v1/manifests`, what `ciliate apply` sends: one
/// JSON object per line, first a [`StreamHeader`], then one [`RawApplyDocument`] per line.
/// The CLI sends each document as soon as it has parsed it and the agent decodes it as it
/// arrives, so that for a large batch the two work at the same time instead of one after the
/// other. Nothing is applied before the body is complete: a body that breaks off (the CLI met
/// a syntax error further on) applies nothing.
pub const STREAM_CONTENT_TYPE: &str = "application/x-ndjson";

/// The first line of the streamed form.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StreamHeader {
    /// Delete the objects named by the documents instead of applying them.
    #[serde(default)]
    pub delete: bool,
}

/// Appends one document line of the streamed form: document `index` of `source`, whose
/// JSON text is `json` (written by a JSON serializer: no raw newline in it).
pub fn write_stream_document(out: &mut Vec<u8>, source: &str, index: usize, json: &[u8]) {
    out.extend_from_slice(b"{\"source\":");
    // A string always serializes.
    let _ = serde_json::to_writer(&mut *out, source);
    out.extend_from_slice(b",\"index\":");
    out.extend_from_slice(index.to_string().as_bytes());
    out.extend_from_slice(b",\"object\":");
    out.extend_from_slice(json);
    out.extend_from_slice(b"}\n");
}

/// A batch in the streamed form read as it arrives ([`StreamedBatch::feed`]), each document
/// decoded straight from its text at once (as [`decode_all_raw`] does), and put through the
/// batch checks (duplicates, cluster IPs given twice), while the batch is an apply and every
/// document so far was a valid object of [`Kind`]'s kinds that passed them: what is left when
/// the last byte arrives is to apply the objects. The documents' lines are kept in one
/// buffer, not a string each, for the fallback path ([`Streamed::to_request`]): the objects
/// kept by the store are not interleaved with them on the heap, which returns the room once
/// the batch is done.
#[derive(Debug, Default)]
pub struct StreamedBatch {
    header: Option<StreamHeader>,
    /// Every document line, one after another; `lines` says where each is.
    text: Vec<u8>,
    lines: Vec<std::ops::Range<usize>>,
    /// Where in `text` each document's object is (its `object` member's JSON text).
    objects: Vec<std::ops::Range<usize>>,
    /// The objects of the documents, checked, while every one of them decoded and passed.
    check: Option<BatchCheck>,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    line_count: usize,
}

/// The source, index and object's text of a document line exactly as
/// [`write_stream_document`] writes it (`{"source":"..","index":N,"object":{..}}`, a source
/// without escapes), found without reading the object: the typed decoding then reads it
/// once, where [`DocumentLine`] first went through all of it to find its end (a tenth of the
/// agent's decoding of 10,000 Services). `None`: any other layout, read by [`DocumentLine`].
///
/// Whether the object is one whole JSON value is left to its decoding: only a line whose
/// object decoded may be taken as split here (then the line is the JSON `DocumentLine`
/// reads, and these are its fields).
fn split_document_line(line: &[u8]) -> Option<(&str, usize, &str)> {
    let rest = line.strip_prefix(br#"{"source":""#)?;
    let end = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if rest[end] != b'"' {
        return None;
    }
    let source = std::str::from_utf8(&rest[..end]).ok()?;
    let rest = rest[end + 1..].strip_prefix(br#","index":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // JSON has no leading zeros.
    if digits == 0 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let index = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let object = rest[digits..]
        .strip_prefix(br#","object":"#)?
        .strip_suffix(b"}")?;
    if !(object.starts_with(b"{") && object.ends_with(b"}")) {
        return None;
    }
    Some((source, index, std::str::from_utf8(object).ok()?))
}

/// A document line, borrowed from the body.
#[derive(Deserialize)]
struct DocumentLine<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    index: usize,
    #[serde(borrow)]
    object: &'a RawValue,
}

impl StreamedBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            check: Some(BatchCheck::default()),
            ..Self::default()
        }
    }

    /// Reads the next bytes of the body. A line that is not what the form has fails, naming
    /// the line.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), String> {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.line(&chunk[..end])?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[..end]);
                self.line(&line)?;
            }
            chunk = &chunk[end + 1..];
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        self.line_count += 1;
        if line.trim_ascii().is_empty() {
            return Ok(());
        }
        let at = self.line_count;
        if self.header.is_some() && self.check.is_some() {
            if let Some((source, index, object, o)) = split_document_line(line)
                .and_then(|(s, i, text)| Some((s, i, text, decode_text(text, s, i)?)))
            {
                if let Some(check) = &mut self.check {
                    check.push(source, index, Ok(o));
                    if check.failed() {
                        self.check = None;
                    }
                }
                self.keep(line, object.as_bytes());
                return Ok(());
            }
            // Not as the CLI writes it, or not a valid object: read as any line (which
            // names a syntax error, or leaves the batch to the value path).
        }
        if self.header.is_none() {
            let header: StreamHeader = serde_json::from_slice(line)
                .map_err(|e| format!("line {at}: not the batch's header line: {e}"))?;
            if header.delete {
                self.check = None;
            }
            self.header = Some(header);
            return Ok(());
        }
        let doc: DocumentLine = serde_json::from_slice(line)
            .map_err(|e| format!("line {at}: not a document line: {e}"))?;
        if let Some(check) = &mut self.check {
            match decode_text(doc.object.get(), &doc.source, doc.index) {
                Some(o) => {
                    check.push(&doc.source, doc.index, Ok(o));
                    if check.failed() {
                        // The value path reports it, with every other problem.
                        self.check = None;
                    }
                }
                None => self.check = None,
            }
        }
        self.keep(line, doc.object.get().as_bytes());
        Ok(())
    }

    /// Keeps document line `line`, whose object's text is `object` (borrowed from it).
    fn keep(&mut self, line: &[u8], object: &[u8]) {
        let start = self.text.len();
        // Its place in the line, by address.
        let offset = object.as_ptr() as usize - line.as_ptr() as usize;
        self.objects
            .push(start + offset..start + offset + object.len());
        self.text.extend_from_slice(line);
        self.lines.push(start..self.text.len());
    }

    /// The batch once its body is complete.
    pub fn finish(mut self) -> Result<Streamed, String> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last)?;
        }
        let Some(header) = self.header else {
            return Err("an empty body: expected a header line, then one line per document".into());
        };
        let decoded = match self.check.take() {
            Some(check) if !check.is_empty() => check.finish().ok(),
            _ => None,
        };
        Ok(Streamed {
            delete: header.delete,
            decoded,
            text: self.text,
            lines: self.lines,
            objects: self.objects,
        })
    }
}

/// A complete streamed batch ([`StreamedBatch::finish`]).
#[derive(Debug)]
pub struct Streamed {
    /// Delete the objects named by the documents instead of applying them.
    pub delete: bool,
    /// The objects, when the batch is an apply whose documents all decoded and pass the batch
    /// checks; else `None`: take [`Streamed::to_request`]'s path, which reports the problems
    /// (as for [`decode_all_raw`]).
    pub decoded: Option<Vec<Decoded>>,
    text: Vec<u8>,
    lines: Vec<std::ops::Range<usize>>,
    objects: Vec<std::ops::Range<usize>>,
}

impl Streamed {
    /// How many documents the batch has.
    pub fn documents(&self) -> usize {
        self.lines.len()
    }

    /// The JSON text of document `i`'s object as it arrived: what `decoded[i]` was decoded
    /// from (the documents that [`Streamed::decoded`] holds are every document, in order).
    /// Valid UTF-8 JSON without a line break.
    pub fn object_text(&self, i: usize) -> Option<&[u8]> {
        self.objects.get(i).map(|r| &self.text[r.clone()])
    }

    /// The batch with every document parsed into a JSON value, as [`ApplyRequest`] reads it.
    pub fn to_request(&self) -> Result<ApplyRequest, ManifestError> {
        let documents = self
            .lines
            .iter()
            .map(|r| {
                let line = &self.text[r.clone()];
                serde_json::from_slice::<ApplyDocument>(line).map_err(|e| ManifestError {
                    source: "request".into(),
                    index: 0,
                    object: String::new(),
                    path: String::new(),
                    reason: format!("JSON value not readable: {e}"),
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        Ok(ApplyRequest {
            documents,
            delete: self.delete,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const SERVICE: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"n"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}"#;

    fn line_of(source: &str, index: usize, object: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_stream_document(&mut out, source, index, object.as_bytes());
        assert_eq!(out.pop(), Some(b'\n'));
        out
    }

    /// What the fast path takes from `line`: its fields, when the object decodes too.
    fn fast(line: &[u8]) -> Option<(String, usize, String)> {
        let (s, i, o) = split_document_line(line)?;
        decode_text(o, s, i)?;
        Some((s.to_owned(), i, o.to_owned()))
    }

    /// What [`DocumentLine`] reads from `line`.
    fn full(line: &[u8]) -> Option<(String, usize, String)> {
        let d: DocumentLine = serde_json::from_slice(line).ok()?;
        Some((d.source.into_owned(), d.index, d.object.get().to_owned()))
    }

    #[test]
    fn a_line_as_the_cli_writes_it_is_split_without_reading_the_object() {
        let line = line_of("dir/s.yaml", 12, SERVICE);
        assert_eq!(
            split_document_line(&line),
            Some(("dir/s.yaml", 12, SERVICE))
        );
        assert_eq!(fast(&line), full(&line));
        // Anything else is left to the full read.
        for other in [
            line_of("a\"b.yaml", 1, SERVICE),
            line_of("a\\b.yaml", 1, SERVICE),
            line_of("a\nb.yaml", 1, SERVICE),
            [line.as_slice(), b"\r"].concat(),
            [line.as_slice(), b" "].concat(),
            br#"{"source":"s","index":01,"object":{}}"#.to_vec(),
            br#"{"source":"s","index":-1,"object":{}}"#.to_vec(),
            br#"{"source":"s","index":1, "object":{}}"#.to_vec(),
            br#"{"source":"s","object":{},"index":1}"#.to_vec(),
            br#"{"source":"s","index":1,"object":[]}"#.to_vec(),
            br#"{"source":"s","index":99999999999999999999999,"object":{}}"#.to_vec(),
        ] {
            assert_eq!(
                split_document_line(&other),
                None,
                "{}",
                String::from_utf8_lossy(&other)
            );
        }
        // Split, but not one object: its decoding refuses it, and the full read too.
        let two = format!(r#"{{"source":"s","index":1,"object":{SERVICE},"x":{{}}}}"#);
        assert!(split_document_line(two.as_bytes()).is_some());
        assert_eq!(fast(two.as_bytes()), None);
    }

    #[test]
    fn a_batch_of_lines_split_or_read_whole_is_the_same_batch() {
        let body = |lines: &[Vec<u8>]| {
            let mut b = b"{}\n".to_vec();
            for l in lines {
                b.extend_from_slice(l);
                b.push(b'\n');
            }
            b
        };
        let other = SERVICE
            .replace(r#""a""#, r#""b""#)
            .replace("96.0.1", "96.0.2");
        // The second line in another layout (a space after a colon): read whole.
        let spaced = String::from_utf8(line_of("s.yaml", 2, &other))
            .unwrap()
            .replacen(r#""index":"#, r#""index": "#, 1);
        let lines = [line_of("s.yaml", 1, SERVICE), spaced.into_bytes()];
        let mut batch = StreamedBatch::new();
        batch.feed(&body(&lines)).unwrap();
        let s = batch.finish().unwrap();
        let decoded = s.decoded.as_ref().expect("decoded");
        assert_eq!(decoded.len(), 2);
        assert_eq!(s.object_text(0), Some(SERVICE.as_bytes()));
        assert_eq!(s.object_text(1), Some(other.as_bytes()));
        assert_eq!(decoded[1].index, 2);
        assert_eq!(&*decoded[1].object.key().name, "b");
        // A line that is no JSON at all still fails, naming it.
        let mut batch = StreamedBatch::new();
        let bad = [line_of("s.yaml", 1, SERVICE), b"{\"source\":\"s".to_vec()];
        assert!(batch
            .feed(&body(&bad))
            .unwrap_err()
            .starts_with("line 3: not a document line"));
    }

    proptest! {
        /// Whatever the fast path takes from a line (written by the CLI's writer, or that
        /// changed in one byte), the full read takes too, with the same fields.
        #[test]
        fn the_fast_path_takes_only_what_the_full_read_takes(
            source in "\\PC{0,12}|[a-z\"\\\\/ \\x01]{0,8}",
            index in 0usize..100_000,
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            change in any::<bool>(),
        ) {
            let mut line = line_of(&source, index, SERVICE);
            if change {
                let i = at.index(line.len());
                line[i] = byte;
            }
            if let Some(taken) = fast(&line) {
                prop_assert_eq!(Some(taken), full(&line));
            }
            if !change {
                prop_assert_eq!(full(&line).map(|f| f.0), Some(source.clone()));
            }
        }
    }
}
