//! Per-object persistence: an append-only journal of the objects one source put and deleted,
//! `<state-dir>/<node>/objects/<source>.jsonl`, one JSON record per line.
//!
//! A change writes the records of the objects it changed and one `fdatasync`, whatever the
//! number of objects held (the whole-file rewrite it replaces cost 18 MB per change at 20,000
//! Services). On open the journal is replayed; when it holds more dead records than live ones
//! it is rewritten compacted (atomically: temporary file, fsync, rename). A last line cut short
//! by a crash is ignored: its change was never acknowledged.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ciliate_lb::table::{ObjectRow, ObjectTable};
use ciliate_model::k8s::{Kind, Object, ObjectKey};
use ciliate_model::manifest::{decode, validate_typed, ApplyDocument, Decoded, ManifestError};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::state::{write_atomic, StateError};

/// One line of a journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// The object is now this document.
    Put(ApplyDocument),
    /// The object is gone.
    Del {
        /// Its kind, as the document's `kind` field.
        kind: String,
        /// Its namespace ("" for cluster-scoped kinds).
        #[serde(default)]
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Record {
    /// A delete record for `key`.
    pub fn del(key: &ObjectKey) -> Self {
        Self::Del {
            kind: key.kind.to_string(),
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
        }
    }

    /// A delete record for the object `doc` stands for.
    pub fn del_doc(doc: &ApplyDocument) -> Self {
        let (kind, namespace, name) = doc_key(doc);
        Self::Del {
            kind,
            namespace,
            name,
        }
    }
}

/// A journal line written straight from a typed object: the same line as a [`Record`] of
/// that object's document ([`Object::to_value`]), without building the document first (at
/// 10,000 Services, building 20,000 documents to write them was most of the journal's cost).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ObjectRecord<'a> {
    /// [`Record::Put`].
    Put {
        /// Where the object came from.
        source: &'a str,
        /// Its document's index there.
        index: usize,
        /// The object, as a manifest document.
        object: Manifest<'a>,
    },
    /// [`Record::Put`] of an object as the JSON text it was decoded from (a request's
    /// document: [`ciliate_model::manifest::raw::Streamed::object_text`]), written as it came
    /// instead of serialised a second time (most of the journal's cost at 10,000 Services).
    /// The text must be one JSON value without a line break; replayed as any put, it
    /// decodes to the same object, through the same typed decoding and checks.
    #[serde(skip)]
    PutText {
        /// Where the object came from.
        source: &'a str,
        /// Its document's index there.
        index: usize,
        /// The object's JSON text.
        object: &'a [u8],
    },
    /// [`Record::Del`].
    Del {
        /// Its kind.
        kind: &'static str,
        /// Its namespace.
        namespace: &'a str,
        /// Its name.
        name: &'a str,
    },
}

impl<'a> ObjectRecord<'a> {
    /// A delete record for `key`.
    pub fn del(key: &'a ObjectKey) -> Self {
        Self::Del {
            kind: key.kind.as_str(),
            namespace: &key.namespace,
            name: &key.name,
        }
    }
}

/// What a journal's line is written from.
pub trait JournalLine {
    /// Appends the line's JSON text (without its line break) to `buf`.
    fn write_line(&self, buf: &mut Vec<u8>) -> serde_json::Result<()>;
}

impl JournalLine for Record {
    fn write_line(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(buf, self)
    }
}

impl JournalLine for ObjectRecord<'_> {
    fn write_line(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Self::PutText {
                source,
                index,
                object,
            } => {
                // The same line as `Put`'s but for the object's text: the op first (as
                // `Put` writes it), then source and index.
                buf.extend_from_slice(br#"{"op":"put","source":"#);
                serde_json::to_writer(&mut *buf, source)?;
                buf.extend_from_slice(br#","index":"#);
                buf.extend_from_slice(index.to_string().as_bytes());
                buf.extend_from_slice(br#","object":"#);
                buf.extend_from_slice(object);
                buf.push(b'}');
                Ok(())
            }
            r => serde_json::to_writer(buf, r),
        }
    }
}

/// An object serialised as its manifest document: `apiVersion`, `kind`, then its fields.
#[derive(Clone, Copy, Debug)]
pub struct Manifest<'a>(pub &'a Object);

impl Serialize for Manifest<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Doc<'a, T> {
            #[serde(rename = "apiVersion")]
            api_version: &'static str,
            kind: &'static str,
            #[serde(flatten)]
            fields: &'a T,
        }
        let kind = self.0.kind();
        let (api_version, kind) = (kind.api_version(), kind.as_str());
        match self.0 {
            Object::Service(fields) => Doc {
                api_version,
                kind,
                fields,
            }
            .serialize(s),
            Object::EndpointSlice(fields) => Doc {
                api_version,
                kind,
                fields,
            }
            .serialize(s),
            Object::Endpoints(fields) => Doc {
                api_version,
                kind,
                fields,
            }
            .serialize(s),
            Object::Namespace(fields) => Doc {
                api_version,
                kind,
                fields,
            }
            .serialize(s),
        }
    }
}

/// One line read back: an object put (by key `K`), deleted (by key `D`), or one to leave out.
enum Entry<K, D, T> {
    Put(K, T),
    Del(D),
    Skip,
}

/// What a line is, read without its object's fields.
#[derive(Deserialize)]
struct Head {
    op: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    index: usize,
    #[serde(default)]
    object: Option<ObjectHead>,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct ObjectHead {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// A put line's object, typed.
#[derive(Deserialize)]
struct Line<T> {
    object: T,
}

/// A string of a line: borrowed from it unless it holds escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Skips what is left of a map.
fn drain<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A put line's object read in the same pass as the line: its `apiVersion` and `kind` first
/// (as this journal writes them, and as requests send them), then the rest of its members
/// straight into the typed object of that kind. `None` (the object skipped) when it does not
/// start so, or is of no kind of this store: the general path reads such a line.
struct ObjectSeed;

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Option<Object>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = Option<Object>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Object>, A::Error> {
        use ciliate_model::k8s::{EndpointSlice, Endpoints, Namespace, Service};
        let (mut api_version, mut kind) = (None, None);
        while api_version.is_none() || kind.is_none() {
            let Some(key) = map.next_key::<Text<'de>>()? else {
                return Ok(None);
            };
            match &*key.0 {
                "apiVersion" if api_version.is_none() => {
                    api_version = Some(map.next_value::<Text<'de>>()?.0)
                }
                "kind" if kind.is_none() => kind = Some(map.next_value::<Text<'de>>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    drain(&mut map)?;
                    return Ok(None);
                }
            }
        }
        let (api_version, kind) = (api_version.unwrap_or_default(), kind.unwrap_or_default());
        let Some(kind) = Kind::from_type(&api_version, &kind) else {
            drain(&mut map)?;
            return Ok(None);
        };
        // The members after `kind`, as the derived decoding of the whole object reads them
        // (which ignores `apiVersion` and `kind`).
        let rest = serde::de::value::MapAccessDeserializer::new(map);
        Ok(Some(match kind {
            Kind::Service => Object::Service(Service::deserialize(rest)?),
            Kind::EndpointSlice => Object::EndpointSlice(EndpointSlice::deserialize(rest)?),
            Kind::Endpoints => Object::Endpoints(Endpoints::deserialize(rest)?),
            Kind::Namespace => Object::Namespace(Namespace::deserialize(rest)?),
        }))
    }
}

/// A put line's source, index and typed object.
type Put<'a> = (Cow<'a, str>, usize, Object);

/// Reads a put line in one pass (the line and its object were parsed twice, once for what
/// the line is and once typed: a sixth of a restart's replay at 50,000 Services). `None`: not
/// a line that starts with `"op":"put"` and whose object [`ObjectSeed`] reads; the general
/// path reads it then (deletes, older layouts, objects of other kinds).
fn read_put(line: &str) -> serde_json::Result<Option<Put<'_>>> {
    struct PutLine;
    impl<'de> Visitor<'de> for PutLine {
        type Value = Option<Put<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a journal record")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut source, mut index, mut object) = (Cow::Borrowed(""), 0usize, None);
            let mut first = true;
            let mut put = false;
            while let Some(key) = map.next_key::<Text<'de>>()? {
                match &*key.0 {
                    "op" if first => put = map.next_value::<Text<'de>>()?.0 == "put",
                    "source" if put => source = map.next_value::<Text<'de>>()?.0,
                    "index" if put => index = map.next_value()?,
                    "object" if put => match map.next_value_seed(ObjectSeed)? {
                        Some(o) => object = Some(o),
                        None => put = false,
                    },
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                first = false;
            }
            Ok(if put {
                object.map(|o| (source, index, o))
            } else {
                None
            })
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    let put = de.deserialize_map(PutLine)?;
    de.end()?;
    Ok(put)
}

/// Where a replay keeps the live values, put by key `K`, deleted by key `D`.
trait Live<K, D, T> {
    /// `value` is now the one of `key`.
    fn put(&mut self, key: K, value: T);
    /// `key` has none.
    fn del(&mut self, key: &D);
    /// How many are live.
    fn len(&self) -> usize;
    /// Room for `n` more (a hint: the file's records).
    fn reserve(&mut self, _n: usize) {}
}

/// The live values in the order they were put, a put again or deleted one leaving a hole,
/// and where each key's live value is: no sort, and no moving of the (large) values once read.
struct Ordered<K, T> {
    values: Vec<Option<T>>,
    live: HashMap<K, usize>,
}

impl<K, T> Default for Ordered<K, T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            live: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, T> Live<K, K, T> for Ordered<K, T> {
    fn put(&mut self, key: K, value: T) {
        if let Some(before) = self.live.insert(key, self.values.len()) {
            self.values[before] = None;
        }
        self.values.push(Some(value));
    }
    fn del(&mut self, key: &K) {
        if let Some(before) = self.live.remove(key) {
            self.values[before] = None;
        }
    }
    fn len(&self) -> usize {
        self.live.len()
    }
}

/// Rows keyed by their objects: a put replaces the row of its object's key in place, so the
/// table read is the table kept (no index of keys beside it, no second table built from a
/// list).
impl<R: ObjectRow> Live<(), ObjectKey, R> for ObjectTable<R> {
    fn put(&mut self, _: (), row: R) {
        self.insert(row);
    }
    fn del(&mut self, key: &ObjectKey) {
        self.remove(key);
    }
    fn len(&self) -> usize {
        ObjectTable::len(self)
    }
    fn reserve(&mut self, n: usize) {
        ObjectTable::reserve(self, n);
    }
}

/// A row of a Service store's table that the journal can write back when it compacts.
pub trait JournalRow: ObjectRow {
    /// Its put record.
    fn record(&self) -> ObjectRecord<'_>;
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    name: String,
    file: File,
    /// Records in the file.
    records: usize,
}

/// The key a document stands for, as far as the journal needs it (kind, namespace, name as
/// written; the decoder checks the rest on replay).
pub fn doc_key(doc: &ApplyDocument) -> (String, String, String) {
    let o = &doc.object;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let meta = &o["metadata"];
    (s(&o["kind"]), s(&meta["namespace"]), s(&meta["name"]))
}

impl Journal {
    /// Opens (creating) `<dir>/<name>.jsonl` and answers the live documents it holds, in the
    /// order they were last put.
    pub fn open(dir: &Path, name: &str) -> Result<(Self, Vec<ApplyDocument>), StateError> {
        let mut docs = Ordered::default();
        let (mut j, compact) = Self::replay(dir, name, &mut docs, |line| {
            Ok(match serde_json::from_str::<Record>(line)? {
                Record::Put(doc) => Entry::Put(doc_key(&doc), doc),
                Record::Del {
                    kind,
                    namespace,
                    name,
                } => Entry::Del((kind, namespace, name)),
            })
        })?;
        let docs: Vec<ApplyDocument> = docs.values.into_iter().flatten().collect();
        if compact {
            j.rewrite(&docs)?;
        }
        Ok((j, docs))
    }

    /// [`Journal::open`] of a journal of Service-store objects, read straight into typed
    /// objects (no JSON value in between: at 10,000 Services, reading the values and then
    /// the objects from them was a third of a restart) and kept as the rows `row` makes of
    /// them, in a table by their keys (the table the store keeps: no list of them in put
    /// order, no index of keys beside it). Each object is checked as
    /// [`ciliate_model::manifest::decode`] checks a document; the problems of the objects
    /// that are not valid are the second result's error.
    #[allow(clippy::type_complexity)]
    pub fn open_objects<R: JournalRow>(
        dir: &Path,
        name: &str,
        mut row: impl FnMut(Decoded) -> R,
    ) -> Result<(Self, Result<ObjectTable<R>, Vec<ManifestError>>), StateError> {
        let mut errors = Vec::new();
        // Consecutive objects of one source share its name (as the store keeps them).
        let mut last_source: Option<Arc<String>> = None;
        let mut source_of = |text: &str| match &last_source {
            Some(s) if **s == text => Arc::clone(s),
            _ => {
                let s = Arc::new(text.to_owned());
                last_source = Some(Arc::clone(&s));
                s
            }
        };
        let mut table = ObjectTable::new();
        let (mut j, compact) = Self::replay(dir, name, &mut table, |line| {
            let (object, source, index) = match read_put(line)? {
                Some((source, index, object)) => (object, source_of(&source), index),
                None => {
                    let head: Head = serde_json::from_str(line)?;
                    if head.op != "put" {
                        // Kept by its key as the store has it (in place: no strings of its
                        // own). A kind of no object of this store deletes nothing that was
                        // put.
                        let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == head.kind)
                        else {
                            return Ok(Entry::Skip);
                        };
                        return Ok(Entry::Del(ObjectKey {
                            kind,
                            namespace: head.namespace.as_str().into(),
                            name: head.name.as_str().into(),
                        }));
                    }
                    let Some(kind) = head
                        .object
                        .as_ref()
                        .and_then(|o| Kind::from_type(&o.api_version, &o.kind))
                    else {
                        // Not an object of this store: the document path says what is wrong
                        // with it.
                        let record: Record = serde_json::from_str(line)?;
                        if let Record::Put(doc) = record {
                            if let Err(e) = decode(&doc) {
                                errors.extend(e);
                            }
                        }
                        return Ok(Entry::Skip);
                    };
                    let object = match kind {
                        Kind::Service => {
                            Object::Service(serde_json::from_str::<Line<_>>(line)?.object)
                        }
                        Kind::EndpointSlice => {
                            Object::EndpointSlice(serde_json::from_str::<Line<_>>(line)?.object)
                        }
                        Kind::Endpoints => {
                            Object::Endpoints(serde_json::from_str::<Line<_>>(line)?.object)
                        }
                        Kind::Namespace => {
                            Object::Namespace(serde_json::from_str::<Line<_>>(line)?.object)
                        }
                    };
                    (object, source_of(&head.source), head.index)
                }
            };
            match validate_typed(object, &source, index) {
                Ok(object) => Ok(Entry::Put(
                    (),
                    row(Decoded {
                        source,
                        index,
                        object,
                    }),
                )),
                Err(e) => {
                    errors.extend(e);
                    Ok(Entry::Skip)
                }
            }
        })?;
        if !errors.is_empty() {
            return Ok((j, Err(errors)));
        }
        if compact {
            let records: Vec<ObjectRecord> = table.iter().map(JournalRow::record).collect();
            j.rewrite_records(&records)?;
        }
        Ok((j, Ok(table)))
    }

    /// Reads the journal's records through `parse` into `live` and answers the journal open
    /// for appending and whether the file is to be rewritten compacted.
    fn replay<K, D, T>(
        dir: &Path,
        name: &str,
        live: &mut impl Live<K, D, T>,
        mut parse: impl FnMut(&str) -> serde_json::Result<Entry<K, D, T>>,
    ) -> Result<(Self, bool), StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(format!("{name}.jsonl"));
        let mut records = 0usize;
        let mut torn = false;
        // Read whole (one block, given back once replayed), its lines borrowed: no string
        // per line.
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                // Room for every record at once (growing a table of 100,000 rows moved and
                // hashed them again at each doubling).
                live.reserve(text.iter().filter(|&&b| b == b'\n').count() + 1);
                let mut lines = text.split(|&b| b == b'\n').peekable();
                while let Some(line) = lines.next() {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let line = std::str::from_utf8(line).map_err(|e| StateError::Read {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    })?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let entry = match parse(line) {
                        Ok(r) => r,
                        Err(e) if lines.peek().is_none() => {
                            warn!(journal = %path.display(), error = %e, "ignoring a last record cut short (a crash while it was written; that change was never acknowledged)");
                            torn = true;
                            break;
                        }
                        Err(source) => {
                            return Err(StateError::Parse {
                                path: path.clone(),
                                source,
                            })
                        }
                    };
                    records += 1;
                    match entry {
                        Entry::Put(key, value) => live.put(key, value),
                        Entry::Del(key) => live.del(&key),
                        Entry::Skip => {}
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StateError::Read {
                    path: path.clone(),
                    source,
                })
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| StateError::Write {
                path: path.clone(),
                source,
            })?;
        let j = Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            file,
            records,
        };
        // Dead records outnumber live ones, or a torn tail (the next append would be glued
        // to it): rewrite it compacted.
        let compact = torn || records > 2 * live.len() + 64;
        Ok((j, compact))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.jsonl", self.name))
    }

    /// Appends `records` durably: one write, one `fdatasync`. On error nothing of them counts
    /// (a torn tail is ignored on the next open).
    pub fn append<R: JournalLine>(&mut self, records: &[R]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * 256);
        for r in records {
            r.write_line(&mut buf)
                .map_err(|source| StateError::Serialise {
                    path: self.path(),
                    source,
                })?;
            buf.push(b'\n');
        }
        let path = self.path();
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        self.file.write_all(&buf).map_err(werr)?;
        self.file.sync_data().map_err(werr)?;
        self.records += records.len();
        Ok(())
    }

    /// Replaces the file with one record per live document.
    pub fn rewrite(&mut self, live: &[ApplyDocument]) -> Result<(), StateError> {
        let records: Vec<Record> = live.iter().cloned().map(Record::Put).collect();
        self.rewrite_records(&records)
    }

    /// Replaces the file with these records.
    pub fn rewrite_records<R: JournalLine>(&mut self, live: &[R]) -> Result<(), StateError> {
        let mut buf = Vec::with_capacity(live.len() * 256);
        for r in live {
            r.write_line(&mut buf)
                .map_err(|source| StateError::Serialise {
                    path: self.path(),
                    source,
                })?;
            buf.push(b'\n');
        }
        let file = format!("{}.jsonl", self.name);
        let tmp = format!(".{}.jsonl.tmp", self.name);
        write_atomic(&self.dir, &file, &tmp, &buf)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(self.path())
            .map_err(|source| StateError::Write {
                path: self.path(),
                source,
            })?;
        self.records = live.len();
        Ok(())
    }

    /// Records in the file (live and dead).
    pub fn records(&self) -> usize {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(name: &str, port: u16) -> ApplyDocument {
        ApplyDocument {
            source: "t".into(),
            index: 1,
            object: json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": {"ports": [{"port": port}]}}),
        }
    }

    fn key(name: &str) -> ObjectKey {
        use ciliate_model::k8s::Kind;
        ObjectKey {
            kind: Kind::Service,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A row of a test's table: the decoded object.
    #[derive(Debug)]
    struct TestRow(Decoded);

    impl ObjectRow for TestRow {
        fn object(&self) -> &Object {
            &self.0.object
        }
    }

    impl JournalRow for TestRow {
        fn record(&self) -> ObjectRecord<'_> {
            ObjectRecord::Put {
                source: &self.0.source,
                index: self.0.index,
                object: Manifest(&self.0.object),
            }
        }
    }

    /// [`Journal::open_objects`] with the rows as a list sorted by key.
    #[allow(clippy::type_complexity)]
    fn open_typed(
        dir: &Path,
        name: &str,
    ) -> Result<(Journal, Result<Vec<Decoded>, Vec<ManifestError>>), StateError> {
        let (j, table) = Journal::open_objects(dir, name, TestRow)?;
        Ok((j, table.map(sorted)))
    }

    fn sorted(rows: impl IntoIterator<Item = impl Into<Decoded>>) -> Vec<Decoded> {
        let mut v: Vec<Decoded> = rows.into_iter().map(Into::into).collect();
        v.sort_by_key(|d| d.object.key());
        v
    }

    impl From<TestRow> for Decoded {
        fn from(r: TestRow) -> Self {
            r.0
        }
    }

    #[test]
    fn replays_puts_and_deletes_and_survives_a_torn_tail() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut j, docs) = Journal::open(tmp.path(), "api").expect("opens");
        assert!(docs.is_empty());
        j.append(&[Record::Put(doc("a", 1)), Record::Put(doc("b", 2))])
            .expect("appends");
        j.append(&[Record::Put(doc("a", 3)), Record::del(&key("b"))])
            .expect("appends");
        drop(j);
        let path = tmp.path().join("api.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"op\":\"put\",\"source\":\"t\",\"ind")
            .expect("torn");
        let (j, docs) = Journal::open(tmp.path(), "api").expect("reopens");
        assert_eq!(docs, vec![doc("a", 3)]);
        assert_eq!(j.records(), 1, "compacted after the torn tail");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    proptest::proptest! {
        // Each append is fsynced: a few dozen sequences keep this test to seconds.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Whatever puts and deletes of a few objects were appended, the journal reads back
        /// the live ones, each with its last value, in the order they were last put.
        #[test]
        fn replay_keeps_the_last_put_of_each_live_object_in_put_order(
            ops in proptest::collection::vec((0u8..4, proptest::option::of(1u16..100)), 0..40)
        ) {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (mut j, _) = Journal::open(tmp.path(), "api").expect("opens");
            let mut model: Vec<(String, u16)> = Vec::new();
            for (obj, port) in ops {
                let name = format!("s{obj}");
                model.retain(|(n, _)| *n != name);
                match port {
                    Some(port) => {
                        j.append(&[Record::Put(doc(&name, port))]).expect("appends");
                        model.push((name, port));
                    }
                    None => j.append(&[Record::del(&key(&name))]).expect("appends"),
                }
            }
            drop(j);
            let (_, docs) = Journal::open(tmp.path(), "api").expect("reopens");
            let want: Vec<ApplyDocument> = model.iter().map(|(n, p)| doc(n, *p)).collect();
            proptest::prop_assert_eq!(docs, want);
        }
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join("api.jsonl"),
            "garbage\n{\"op\":\"del\",\"kind\":\"Service\",\"name\":\"x\"}\n",
        )
        .expect("write");
        let e = Journal::open(tmp.path(), "api").expect_err("corrupt");
        assert!(e.to_string().contains("api.jsonl"), "{e}");
    }

    #[test]
    fn object_records_read_back_as_the_records_of_their_documents() {
        use ciliate_model::manifest::decode;
        let tmp = tempfile::tempdir().expect("tempdir");
        let object = decode(&ApplyDocument {
            source: "t".into(),
            index: 1,
            object: json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-a", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "UDP"}],
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n1"}]}),
        })
        .expect("decodes");
        let (mut j, _) = Journal::open(tmp.path(), "api").expect("opens");
        j.append(&[
            ObjectRecord::Put {
                source: "f.yaml",
                index: 3,
                object: Manifest(&object),
            },
            ObjectRecord::del(&key("b")),
        ])
        .expect("appends");
        drop(j);
        let text = std::fs::read_to_string(tmp.path().join("api.jsonl")).expect("read");
        let records: Vec<Record> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record"))
            .collect();
        let doc = ApplyDocument {
            source: "f.yaml".into(),
            index: 3,
            object: object.to_value(),
        };
        assert_eq!(
            records,
            vec![Record::Put(doc.clone()), Record::del(&key("b"))]
        );
        assert_eq!(decode(&doc).expect("decodes again"), object);
    }

    #[test]
    fn objects_are_read_back_typed_and_checked_as_documents_are() {
        use ciliate_model::manifest::decode;
        let tmp = tempfile::tempdir().expect("tempdir");
        // Documents as an older agent wrote them: keys in any order.
        let svc = |name: &str, port: u16| ApplyDocument {
            source: "t".into(),
            index: 1,
            object: json!({"spec": {"clusterIP": format!("10.96.0.{port}"), "ports": [{"port": port}]}, "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "apiVersion": "v1"}),
        };
        let a = decode(&svc("a", 80)).expect("decodes");
        let b = decode(&svc("b", 81)).expect("decodes");
        let (mut j, objects) = open_typed(tmp.path(), "api").expect("opens");
        assert!(objects.expect("valid").is_empty());
        let put = |o| ObjectRecord::Put {
            source: "t",
            index: 1,
            object: Manifest(o),
        };
        j.append(&[put(&a), put(&b)]).expect("appends");
        j.append(&[ObjectRecord::del(&key("a"))]).expect("appends");
        j.append(&[Record::Put(svc("c", 82))]).expect("appends");
        drop(j);
        let (_, objects) = open_typed(tmp.path(), "api").expect("reopens");
        let objects: Vec<Object> = objects
            .expect("valid")
            .into_iter()
            .map(|d| d.object)
            .collect();
        assert_eq!(objects, vec![b, decode(&svc("c", 82)).expect("decodes")]);

        // An object that no longer validates is reported, not loaded.
        std::fs::write(
            tmp.path().join("bad.jsonl"),
            "{\"op\":\"put\",\"source\":\"t\",\"index\":1,\"object\":{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"Bad_Name\"},\"spec\":{\"ports\":[{\"port\":80}]}}}\n",
        )
        .expect("write");
        let (_, objects) = open_typed(tmp.path(), "bad").expect("opens");
        let errors = objects.expect_err("invalid");
        assert!(errors[0].to_string().contains("Bad_Name"), "{errors:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// The typed replay (what the Service store opens) keeps, by the objects' keys, the
        /// last put of each live object, whatever puts and deletes came
        /// before; a delete of a kind the store does not hold deletes nothing; lines ended by
        /// CRLF read as those ended by LF.
        #[test]
        fn typed_replay_keeps_the_last_put_of_each_live_object(
            ops in proptest::collection::vec((0u8..4, proptest::option::of(1u16..100), proptest::bool::ANY), 0..30),
            crlf in proptest::bool::ANY,
        ) {
            use ciliate_model::manifest::decode;
            let svc = |name: &str, port: u16| ApplyDocument {
                source: "t".into(),
                index: 1,
                object: json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                    "spec": {"clusterIP": format!("10.96.0.{}", port % 250 + 1), "ports": [{"port": port}]}}),
            };
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut text = String::new();
            let mut model: Vec<(String, u16)> = Vec::new();
            let end = if crlf { "\r\n" } else { "\n" };
            for (obj, port, other_kind) in ops {
                let name = format!("s{obj}");
                match port {
                    Some(port) => {
                        model.retain(|(n, _)| *n != name);
                        let o = decode(&svc(&name, port)).expect("decodes");
                        let r = ObjectRecord::Put { source: "t", index: 1, object: Manifest(&o) };
                        text += &serde_json::to_string(&r).expect("json");
                        model.push((name, port));
                    }
                    None if other_kind => {
                        text += &format!("{{\"op\":\"del\",\"kind\":\"Pod\",\"namespace\":\"default\",\"name\":\"{name}\"}}");
                    }
                    None => {
                        model.retain(|(n, _)| *n != name);
                        text += &serde_json::to_string(&ObjectRecord::del(&key(&name))).expect("json");
                    }
                }
                text += end;
            }
            std::fs::write(tmp.path().join("api.jsonl"), &text).expect("write");
            let (_, objects) = open_typed(tmp.path(), "api").expect("opens");
            let objects: Vec<Object> = objects.expect("valid").into_iter().map(|d| d.object).collect();
            let mut want: Vec<Object> = model
                .iter()
                .map(|(n, p)| decode(&svc(n, *p)).expect("decodes"))
                .collect();
            want.sort_by_key(Object::key);
            proptest::prop_assert_eq!(objects, want);
        }
    }

    /// One streamed document line for the object `object` (JSON text): as the CLI writes it,
    /// or with its members in another order and spaced.
    fn stream_line(source: &str, index: usize, object: &str, reordered: bool) -> Vec<u8> {
        let mut line = Vec::new();
        if reordered {
            line.extend_from_slice(
                format!(
                    " {{ \"index\" : {index} , \"object\" :\t{object} , \"source\" : {} }} ",
                    serde_json::to_string(source).expect("a string")
                )
                .as_bytes(),
            );
            line.push(b'\n');
        } else {
            ciliate_model::manifest::raw::write_stream_document(
                &mut line,
                source,
                index,
                object.as_bytes(),
            );
        }
        line
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The objects of a streamed batch journaled as the text they came in read back as the
        /// objects the batch decoded from it, with their sources and indexes, whatever the
        /// line's layout (members in any order, spaces) and the objects' optional fields.
        #[test]
        fn objects_journaled_as_their_text_read_back_as_decoded(
            services in proptest::collection::vec(
                (1u16..1000, proptest::option::of(1u16..9000), proptest::bool::ANY,
                 proptest::collection::vec(0u8..255, 0..3), proptest::bool::ANY),
                1..6),
            source in "[a-z/\\\\\" .]{1,12}",
        ) {
            use ciliate_model::manifest::raw::StreamedBatch;
            let mut body = b"{\"delete\":false}\n".to_vec();
            let mut index = 0;
            for (i, (port, target, udp, endpoints, reordered)) in services.iter().enumerate() {
                let mut svc = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("s{i}"), "namespace": "default"},
                    "spec": {"clusterIP": format!("10.96.0.{}", i + 1),
                             "ports": [{"name": "p", "port": port}]}});
                if let Some(t) = target {
                    svc["spec"]["ports"][0]["targetPort"] = json!(t);
                }
                if *udp {
                    svc["spec"]["ports"][0]["protocol"] = json!("UDP");
                }
                let slice = json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"name": format!("s{i}-a"), "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": format!("s{i}")}},
                    "addressType": "IPv4",
                    "ports": [{"name": "p", "port": target.unwrap_or(*port)}],
                    "endpoints": endpoints.iter().map(|e| json!({"addresses": [format!("10.1.{i}.{e}")]})).collect::<Vec<_>>()});
                for object in [svc, slice] {
                    index += 1;
                    body.extend(stream_line(&source, index, &object.to_string(), *reordered));
                }
            }
            let mut batch = StreamedBatch::new();
            // In pieces, as a body arrives.
            for piece in body.chunks(37) {
                batch.feed(piece).expect("a valid line");
            }
            let mut batch = batch.finish().expect("complete");
            let decoded = batch.decoded.take().expect("all valid");
            proptest::prop_assert_eq!(decoded.len(), batch.documents());
            let tmp = tempfile::tempdir().expect("tempdir");
            let (mut j, _) = open_typed(tmp.path(), "api").expect("opens");
            let records: Vec<ObjectRecord> = decoded
                .iter()
                .enumerate()
                .map(|(i, d)| ObjectRecord::PutText {
                    source: &d.source,
                    index: d.index,
                    object: batch.object_text(i).expect("a text per document"),
                })
                .collect();
            j.append(&records).expect("appends");
            drop(j);
            let (_, back) = open_typed(tmp.path(), "api").expect("reopens");
            proptest::prop_assert_eq!(back.expect("valid"), sorted(decoded));
        }
    }

    /// A put line of `object` (JSON text).
    fn put_line(object: &str) -> String {
        format!("{{\"op\":\"put\",\"source\":\"t\",\"index\":1,\"object\":{object}}}\n")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A put line reads back as the object its document decodes to, whether the object
        /// starts with `apiVersion` and `kind` (read in one pass) or not (the general path),
        /// for Services and EndpointSlices; a line cut anywhere is an error naming the file in
        /// the middle of the journal and ignored as its last line (a torn tail); a member of
        /// the wrong type is an error in either layout.
        #[test]
        fn put_lines_read_alike_in_either_layout(
            port in 1u16..1000,
            endpoints in proptest::collection::vec(0u8..255, 0..4),
            ready in proptest::bool::ANY,
            cut in 1usize..10_000,
        ) {
            use ciliate_model::manifest::decode;
            let service = (
                r#""apiVersion":"v1","kind":"Service""#.to_owned(),
                format!(r#""metadata":{{"name":"web","namespace":"default"}},"spec":{{"clusterIP":"10.96.0.1","ports":[{{"name":"p","port":{port},"targetPort":8080}}]}}"#),
            );
            let eps: Vec<String> = endpoints
                .iter()
                .map(|e| format!(r#"{{"addresses":["10.1.0.{e}"],"conditions":{{"ready":{ready}}}}}"#))
                .collect();
            let slice = (
                r#""apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice""#.to_owned(),
                format!(r#""metadata":{{"name":"web-a","namespace":"default","labels":{{"kubernetes.io/service-name":"web"}}}},"addressType":"IPv4","ports":[{{"name":"p","port":8080}}],"endpoints":[{}]"#, eps.join(",")),
            );
            let tmp = tempfile::tempdir().expect("tempdir");
            for (head, rest) in [service, slice] {
                let first = format!("{{{head},{rest}}}");
                let last = format!("{{{rest},{head}}}");
                let want = decode(&ApplyDocument {
                    source: "t".into(),
                    index: 1,
                    object: serde_json::from_str(&first).expect("json"),
                })
                .expect("decodes");
                for text in [&first, &last] {
                    std::fs::write(tmp.path().join("a.jsonl"), put_line(text)).expect("write");
                    let (_, back) = open_typed(tmp.path(), "a").expect("opens");
                    let back = back.expect("valid");
                    proptest::prop_assert_eq!(back.len(), 1);
                    proptest::prop_assert_eq!(&back[0].object, &want);
                    proptest::prop_assert_eq!(back[0].index, 1);
                    proptest::prop_assert_eq!(back[0].source.as_str(), "t");

                    let line = put_line(text);
                    let torn = &line[..1 + cut % (line.len() - 2)];
                    let other = put_line(&first.replacen("\"name\":\"web", "\"name\":\"other", 1));
                    std::fs::write(tmp.path().join("b.jsonl"), format!("{other}{torn}\n")).expect("write");
                    let (_, back) = open_typed(tmp.path(), "b").expect("a torn tail is ignored");
                    proptest::prop_assert_eq!(back.expect("valid").len(), 1);
                    std::fs::write(tmp.path().join("c.jsonl"), format!("{torn}\n{other}")).expect("write");
                    let e = open_typed(tmp.path(), "c").expect_err("corrupt in the middle");
                    proptest::prop_assert!(e.to_string().contains("c.jsonl"), "{}", e);
                }
                let wrong = rest.replacen("\"name\":\"web", "\"name\":7,\"x\":\"web", 1);
                for text in [format!("{{{head},{wrong}}}"), format!("{{{wrong},{head}}}")] {
                    std::fs::write(tmp.path().join("d.jsonl"), format!("{}{}", put_line(&text), put_line(&first))).expect("write");
                    proptest::prop_assert!(open_typed(tmp.path(), "d").is_err());
                }
            }
        }
    }

    #[test]
    fn many_changes_to_one_object_are_compacted_on_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut j, _) = Journal::open(tmp.path(), "api").expect("opens");
        for i in 0..200 {
            j.append(&[Record::Put(doc("a", i))]).expect("appends");
        }
        drop(j);
        let (j, docs) = Journal::open(tmp.path(), "api").expect("reopens");
        assert_eq!(docs, vec![doc("a", 199)]);
        assert_eq!(j.records(), 1);
    }
}
