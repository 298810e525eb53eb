//! Manifests: multi-document YAML (or JSON) → typed [`Object`]s, every value checked.
//!
//! Reading happens in two steps, so that the CLI can do the first and the agent the second:
//!
//! 1. [`split_documents`] turns a file's text into [`ApplyDocument`]s: one JSON value per
//!    document, with the file name and the document's 1-based index. Only syntax is checked.
//! 2. [`decode_all`] dispatches each document on `apiVersion`/`kind`, decodes it into its type
//!    and validates every value, as the Kubernetes API server would.
//!
//! Every problem becomes a [`ManifestError`] naming the file, the document, the object, the
//! field path and the reason, e.g.
//! `services.yaml: document 2 (Service default/web): spec.ports[0].port: invalid value 70000: must be 1-65535`.
//! A batch is all or nothing: one bad document rejects all of it, and all problems are
//! reported at once, so one round of fixes is enough.
//!
//! Pure: the caller reads files; nothing here does I/O.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use batch_hash::BatchHash;

use crate::k8s::{
    AddressType, EndpointPort, EndpointSlice, Endpoints, IntOrString, Kind, Namespace, Object,
    ObjectKey, ObjectMeta, Service, ServiceType, SessionAffinity, SmallString, DEFAULT_NAMESPACE,
    MAX_AFFINITY_TIMEOUT, NAMESPACE_NAME_LABEL, SERVICE_NAME_LABEL,
};

/// One document of a manifest, as the CLI sends it to `POST /v1/manifests`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyDocument {
    /// The file it came from (`-` or `<stdin>` for standard input), for messages.
    pub source: String,
    /// Its 1-based position in the file, for messages.
    pub index: usize,
    /// The document itself.
    pub object: serde_json::Value,
}

/// Body of `POST /v1/manifests`: objects to apply, or to delete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    /// The documents, in order.
    pub documents: Vec<ApplyDocument>,
    /// Delete the objects named by the documents instead of applying them.
    #[serde(default)]
    pub delete: bool,
}

/// What applying (or deleting) one document did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyAction {
    /// The object did not exist.
    Created,
    /// The object existed and changed.
    Configured,
    /// The object existed as given.
    Unchanged,
    /// The object was deleted.
    Deleted,
    /// A delete named an object that does not exist.
    NotFound,
}

impl fmt::Display for ApplyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
            Self::NotFound => "not found",
        })
    }
}

/// One line of an [`ApplyResult`]: `{"kind","namespace","name","action","source","index"}`
/// (the key's fields in line with the others).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "OutcomeLine")]
pub struct ApplyOutcome {
    /// The object.
    pub key: ObjectKey,
    /// What happened to it.
    pub action: ApplyAction,
    /// The file of the document that named it (one block shared by the outcomes of one
    /// file: at 10,000 Services, a copy per outcome was 20,000 blocks allocated while the
    /// batch was applied).
    pub source: SharedText,
    /// The document's index in that file.
    pub index: usize,
}

/// A text shared by the values that name it (the file of a batch's documents), read and
/// written as a JSON string.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedText(Arc<String>);

impl SharedText {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SharedText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<Arc<String>> for SharedText {
    fn from(s: Arc<String>) -> Self {
        Self(s)
    }
}

impl From<String> for SharedText {
    fn from(s: String) -> Self {
        Self(Arc::new(s))
    }
}

impl From<&str> for SharedText {
    fn from(s: &str) -> Self {
        Self(Arc::new(s.to_owned()))
    }
}

impl PartialEq<str> for SharedText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for SharedText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

/// [`ApplyOutcome`] as written: the key's fields read in line, not through serde's `flatten`
/// (which buffers every field of every outcome before reading it: most of the CLI's time
/// reading the answer of 20,000 documents).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutcomeLine {
    kind: Kind,
    namespace: SmallString,
    name: SmallString,
    action: ApplyAction,
    source: SharedText,
    index: usize,
}

impl From<OutcomeLine> for ApplyOutcome {
    fn from(l: OutcomeLine) -> Self {
        Self {
            key: ObjectKey {
                kind: l.kind,
                namespace: l.namespace,
                name: l.name,
            },
            action: l.action,
            source: l.source,
            index: l.index,
        }
    }
}

impl Serialize for ApplyOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut o = s.serialize_struct("ApplyOutcome", 6)?;
        o.serialize_field("kind", &self.key.kind)?;
        o.serialize_field("namespace", &self.key.namespace)?;
        o.serialize_field("name", &self.key.name)?;
        o.serialize_field("action", &self.action)?;
        o.serialize_field("source", &self.source)?;
        o.serialize_field("index", &self.index)?;
        o.end()
    }
}

impl fmt::Display for ApplyOutcome {
    /// kubectl's line: `service/web created`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}",
            self.key.kind.resource(),
            self.key.name,
            self.action
        )
    }
}

/// Answer of `POST /v1/manifests`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// One outcome per document, in order.
    pub results: Vec<ApplyOutcome>,
    /// Things the caller should know although the change was made (e.g. the datapath could
    /// not be programmed yet and the agent retries, or a policy field is not enforced yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// One outcome per policy of the batch (NetworkPolicy, CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<crate::policy_api::PolicyOutcome>,
    /// The node's policy revision once the batch is applied, when it held policies or changed
    /// namespaces' labels (`ciliate policy wait` takes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<u64>,
}

/// One problem with one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestError {
    /// The file.
    pub source: String,
    /// The 1-based document index; 0 when the problem is the file's as a whole.
    pub index: usize,
    /// `Service default/web`, or as much of it as the document says; empty when unknown.
    pub object: String,
    /// The field, e.g. `spec.ports[0].port`; empty for the document as a whole.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if self.index > 0 {
            write!(f, ": document {}", self.index)?;
            if !self.object.is_empty() {
                write!(f, " ({})", self.object)?;
            }
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ManifestError {}

/// Joins problems into one message: a summary line, then one problem per line.
pub fn report(errors: &[ManifestError], outcome: &str) -> String {
    let mut out = format!(
        "{} problem{} in the manifests; {outcome}:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}

/// A decoded, valid object and the document it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The file; the objects of one file share one copy of its name (a string per document
    /// was a block made while the batch arrived and freed after it, leaving a hole between
    /// the objects kept).
    pub source: Arc<String>,
    /// The document's index in the file.
    pub index: usize,
    /// The object.
    pub object: Object,
}

/// A syntax error in document `index` of `source`: it ends the file (what follows cannot be
/// trusted), so it names no object or field.
fn syntax_error(source: &str, index: usize, what: &str, e: &dyn fmt::Display) -> ManifestError {
    ManifestError {
        source: source.to_owned(),
        index,
        object: String::new(),
        path: String::new(),
        reason: format!("{what} syntax error: {e}"),
    }
}

/// Splits a file into documents. `source` names the file in messages; a name ending in
/// `.json` is read as JSON (one value, or several one after the other), anything else as
/// YAML, whose `---` separates documents. Empty documents are skipped but counted, so indexes
/// match what an editor shows. A syntax error ends the file: what follows cannot be trusted.
pub fn split_documents(source: &str, text: &str) -> Result<Vec<ApplyDocument>, ManifestError> {
    let syntax =
        |index: usize, what: &str, e: &dyn fmt::Display| syntax_error(source, index, what, e);
    let mut out = Vec::new();
    if source.ends_with(".json") {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<StrictValue>();
        for (i, v) in stream.enumerate() {
            let v = v.map_err(|e| syntax(i + 1, "JSON", &e))?;
            push_document(&mut out, source, i + 1, v.0);
        }
    } else {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            // serde_yaml_ng can panic when asked for more documents after an error, so the
            // first error ends the loop.
            let v = StrictValue::deserialize(doc).map_err(|e| syntax(i + 1, "YAML", &e))?;
            push_document(&mut out, source, i + 1, v.0);
        }
    }
    Ok(out)
}

fn push_document(out: &mut Vec<ApplyDocument>, source: &str, index: usize, v: serde_json::Value) {
    if !v.is_null() {
        out.push(ApplyDocument {
            source: source.to_owned(),
            index,
            object: v,
        });
    }
}

/// A JSON value read from YAML or JSON that refuses duplicate keys: both parsers keep the
/// last of two equal keys silently, which hides mistakes such as two `ports:` blocks.
struct StrictValue(serde_json::Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {key:?} in one mapping"
                )));
            }
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// `Service default/web`: as much of the object's identity as the document gives, for
/// messages about documents that may be broken.
pub fn describe(v: &serde_json::Value) -> String {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    match (kind.is_empty(), name.is_empty()) {
        (true, true) => String::new(),
        (false, true) => kind.to_owned(),
        (true, false) => format!("{namespace}/{name}"),
        (false, false) if kind == Kind::Namespace.as_str() => format!("{kind} {name}"),
        (false, false) => format!("{kind} {namespace}/{name}"),
    }
}

/// Collects `(path, reason)` problems while checking one object.
#[derive(Debug, Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push((path.into(), reason.into()));
    }
}

/// The kind a document names, or why it names none Ciliate reads.
fn kind_of(v: &serde_json::Value, p: &mut Problems) -> Option<Kind> {
    let Some(map) = v.as_object() else {
        p.add(
            "",
            "a document must be a mapping with apiVersion, kind and metadata",
        );
        return None;
    };
    let field = |name: &str, p: &mut Problems| match map.get(name) {
        None | Some(serde_json::Value::Null) => {
            p.add(name, "required value");
            None
        }
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            p.add(name, format!("invalid type: {other}, expected a string"));
            None
        }
    };
    let api_version = field("apiVersion", p);
    let kind = field("kind", p);
    let (api_version, kind) = (api_version?, kind?);
    if let Some(k) = Kind::from_type(&api_version, &kind) {
        return Some(k);
    }
    let supported = "Ciliate reads v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Endpoints and v1 Namespace";
    match Kind::ALL.into_iter().find(|k| k.as_str() == kind) {
        Some(k) => p.add(
            "apiVersion",
            format!(
                "unsupported value {api_version:?} for kind {kind}: use {:?}",
                k.api_version()
            ),
        ),
        None => p.add(
            "kind",
            format!("unsupported kind {kind:?} (apiVersion {api_version:?}): {supported}"),
        ),
    }
    None
}

/// Decodes one document into its typed object and validates it.
pub fn decode(doc: &ApplyDocument) -> Result<Object, Vec<ManifestError>> {
    let errors = |problems: Problems| -> Vec<ManifestError> {
        let object = describe(&doc.object);
        problems
            .0
            .into_iter()
            .map(|(path, reason)| ManifestError {
                source: doc.source.clone(),
                index: doc.index,
                object: object.clone(),
                path,
                reason,
            })
            .collect()
    };
    let mut p = Problems::default();
    let Some(kind) = kind_of(&doc.object, &mut p) else {
        return Err(errors(p));
    };
    let mut object = match kind {
        Kind::Service => typed(&doc.object, &mut p).map(Object::Service),
        Kind::EndpointSlice => typed(&doc.object, &mut p).map(Object::EndpointSlice),
        Kind::Endpoints => typed(&doc.object, &mut p).map(Object::Endpoints),
        Kind::Namespace => typed(&doc.object, &mut p).map(Object::Namespace),
    }
    .ok_or_else(|| errors(std::mem::take(&mut p)))?;
    let meta = object.metadata_mut();
    meta.namespace = object_namespace(kind, std::mem::take(&mut meta.namespace));
    match &object {
        Object::Service(s) => validate_service(s, &mut p),
        Object::EndpointSlice(s) => validate_slice(s, &mut p),
        Object::Endpoints(e) => validate_endpoints(e, &mut p),
        Object::Namespace(n) => validate_namespace(n, &mut p),
    }
    if p.0.is_empty() {
        Ok(object)
    } else {
        Err(errors(p))
    }
}

/// Checks an object typed by other means than [`decode`] (the agent's journal, read straight
/// into typed objects) as [`decode`] checks it: its namespace defaulted, then validated.
pub fn validate_typed(
    mut object: Object,
    source: &str,
    index: usize,
) -> Result<Object, Vec<ManifestError>> {
    let kind = object.kind();
    let meta = object.metadata_mut();
    meta.namespace = object_namespace(kind, std::mem::take(&mut meta.namespace));
    let mut p = Problems::default();
    match &object {
        Object::Service(s) => validate_service(s, &mut p),
        Object::EndpointSlice(s) => validate_slice(s, &mut p),
        Object::Endpoints(e) => validate_endpoints(e, &mut p),
        Object::Namespace(n) => validate_namespace(n, &mut p),
    }
    if p.0.is_empty() {
        return Ok(object);
    }
    let name = object.key().to_string();
    Err(p
        .0
        .into_iter()
        .map(|(path, reason)| ManifestError {
            source: source.to_owned(),
            index,
            object: name.clone(),
            path,
            reason,
        })
        .collect())
}

/// The namespace an object of `kind` is stored under: `default` when a namespaced object
/// names none; none for a cluster-scoped one, whatever it says (Kubernetes ignores it).
fn object_namespace(kind: Kind, written: SmallString) -> SmallString {
    if !kind.is_namespaced() {
        SmallString::new()
    } else if written.is_empty() {
        SmallString::from(DEFAULT_NAMESPACE)
    } else {
        written
    }
}

/// Decodes a value into `T`, recording where and why it does not fit.
fn typed<T: serde::de::DeserializeOwned>(v: &serde_json::Value, p: &mut Problems) -> Option<T> {
    // From the borrowed value, not a copy of it: copying each of 20,000 documents first was
    // a good part of decoding a batch of 10,000 Services.
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let mut path = e.path().to_string();
            if path == "." {
                path.clear();
            }
            let mut reason = e.inner().to_string();
            // serde says "missing field `port`" at the parent; Kubernetes says
            // "spec.ports[0].port: Required value", which points at what to add.
            if let Some(field) = reason
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                path = if path.is_empty() {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                reason = "required value".to_owned();
            }
            p.add(path, reason);
            None
        }
    }
}

/// Decodes and validates a batch. Also refuses two documents for the same object. Returns
/// every object, or every problem.
pub fn decode_all(docs: &[ApplyDocument]) -> Result<Vec<Decoded>, Vec<ManifestError>> {
    check_batch(docs.iter().map(|d| (d.source.as_str(), d.index, decode(d))))
}

/// The batch checks of [`decode_all`] over objects decoded one by one (from documents, or
/// straight from a request's text, [`raw`]): every object, or every problem.
fn check_batch<'a>(
    objects: impl IntoIterator<Item = (&'a str, usize, Result<Object, Vec<ManifestError>>)>,
) -> Result<Vec<Decoded>, Vec<ManifestError>> {
    let objects = objects.into_iter();
    let mut check = BatchCheck::with_capacity(objects.size_hint().0);
    for (source, index, decoded) in objects {
        check.push(source, index, decoded);
    }
    check.finish()
}

/// The batch checks of [`decode_all`] made one object at a time, as the objects arrive (the
/// streamed form checks each document while the rest of the body is still on its way):
/// duplicates, and cluster IPs given twice.
#[derive(Debug, Default)]
pub(crate) struct BatchCheck {
    out: Vec<Decoded>,
    errors: Vec<ManifestError>,
    // Where in `out` each object, and the Service of each cluster IP, is: hashed, and
    // naming the document without a copy of its source (a sorted map of keys and sources
    // was a tenth of the agent's time after the last byte of 10,000 Services).
    seen: HashMap<ObjectKey, usize, BatchHash>,
    cluster_ips: HashMap<Ipv4Addr, usize, BatchHash>,
    /// The last document's source, shared by the next documents of the same source.
    last_source: Option<Arc<String>>,
}

impl BatchCheck {
    /// An empty check, with room for `n` objects.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            out: Vec::with_capacity(n),
            seen: HashMap::with_capacity_and_hasher(n, BatchHash::default()),
            ..Self::default()
        }
    }

    /// Whether a problem was found so far.
    pub(crate) fn failed(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Whether nothing was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.out.is_empty() && self.errors.is_empty()
    }

    /// The next object of the batch: document `doc_index` of `doc_source`, decoded (or its
    /// problems).
    pub(crate) fn push(
        &mut self,
        doc_source: &str,
        doc_index: usize,
        decoded: Result<Object, Vec<ManifestError>>,
    ) {
        let object = match decoded {
            Ok(object) => object,
            Err(e) => {
                self.errors.extend(e);
                return;
            }
        };
        let key = object.key();
        if let Some(&at) = self.seen.get(&key) {
            let Decoded { source, index, .. } = &self.out[at];
            self.errors.push(ManifestError {
                source: doc_source.to_owned(),
                index: doc_index,
                object: key.to_string(),
                path: String::new(),
                reason: format!(
                    "duplicate object: {source} document {index} defines it too; keep one"
                ),
            });
            return;
        }
        if let Object::Service(svc) = &object {
            if let Some(e) = reused_cluster_ip(
                svc,
                (doc_source, doc_index, &key),
                &self.out,
                &mut self.cluster_ips,
            ) {
                self.errors.push(e);
                return;
            }
        }
        self.seen.insert(key, self.out.len());
        let source = match &self.last_source {
            Some(s) if **s == doc_source => Arc::clone(s),
            _ => Arc::new(doc_source.to_owned()),
        };
        self.last_source = Some(Arc::clone(&source));
        self.out.push(Decoded {
            source,
            index: doc_index,
            object,
        });
    }

    /// Every object, or every problem.
    pub(crate) fn finish(self) -> Result<Vec<Decoded>, Vec<ManifestError>> {
        if self.errors.is_empty() {
            Ok(self.out)
        } else {
            Err(self.errors)
        }
    }
}

/// Kubernetes allocates a cluster IP to one Service: a second Service of the batch on an
/// address another already has (whatever its ports) is refused. `None` (headless) is no
/// address. `seen` says where in `out` the Service of each address is; the Service of
/// document `index` of `source`, `key`, goes at `out`'s end.
fn reused_cluster_ip(
    svc: &Service,
    (doc_source, doc_index, key): (&str, usize, &ObjectKey),
    out: &[Decoded],
    seen: &mut HashMap<Ipv4Addr, usize, BatchHash>,
) -> Option<ManifestError> {
    let written = if svc.spec.cluster_ip.is_empty() {
        svc.spec.cluster_ips.first()?
    } else {
        &svc.spec.cluster_ip
    };
    let ip: Ipv4Addr = written.parse().ok()?;
    match seen.get(&ip).map(|&at| &out[at]) {
        Some(Decoded {
            source,
            index,
            object,
        }) => Some(ManifestError {
            source: doc_source.to_owned(),
            index: doc_index,
            object: key.to_string(),
            path: "spec.clusterIP".into(),
            reason: format!(
                "invalid value {written:?}: the cluster IP is already allocated to {} \
                 ({source} document {index}); a cluster IP belongs to one Service",
                object.key()
            ),
        }),
        None => {
            seen.insert(ip, out.len());
            None
        }
    }
}

/// What a document names, for deletion: only `apiVersion`, `kind` and `metadata` need to be
/// right, so an object can be deleted with the manifest that no longer validates.
pub fn identify(doc: &ApplyDocument) -> Result<ObjectKey, Vec<ManifestError>> {
    let mut p = Problems::default();
    let key = kind_of(&doc.object, &mut p).and_then(|kind| {
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            metadata: ObjectMeta,
        }
        let meta = typed::<Meta>(&doc.object, &mut p)?.metadata;
        let namespace = object_namespace(kind, meta.namespace);
        let before = p.0.len();
        check_name(kind, &meta.name, &mut p);
        if kind.is_namespaced() {
            check_dns_label("metadata.namespace", &namespace, &mut p);
        }
        (p.0.len() == before).then_some(ObjectKey {
            kind,
            namespace,
            name: meta.name,
        })
    });
    key.ok_or_else(|| {
        let object = describe(&doc.object);
        p.0.into_iter()
            .map(|(path, reason)| ManifestError {
                source: doc.source.clone(),
                index: doc.index,
                object: object.clone(),
                path,
                reason,
            })
            .collect()
    })
}

// ---- validation -------------------------------------------------------------------------

const DNS_LABEL_HELP: &str =
    "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1035: a DNS-1123 label that starts with a letter (Service names).
fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// IANA service name: what a named port may be called (`http`, `grpc-web`).
fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn check_dns_label(path: &str, s: &str, p: &mut Problems) {
    if !is_dns_label(s) {
        p.add(
            path,
            format!("invalid value {s:?}: must be a DNS-1123 label ({DNS_LABEL_HELP})"),
        );
    }
}

fn check_name(kind: Kind, name: &str, p: &mut Problems) {
    let path = "metadata.name";
    if name.is_empty() {
        p.add(path, "required value");
        return;
    }
    let ok = match kind {
        Kind::Service => is_dns1035_label(name),
        Kind::EndpointSlice | Kind::Endpoints => is_dns_subdomain(name),
        Kind::Namespace => is_dns_label(name),
    };
    if !ok {
        let what = match kind {
            Kind::Service => format!("a DNS-1035 label ({DNS_LABEL_HELP}, starting with a letter)"),
            Kind::Namespace => format!("a DNS-1123 label ({DNS_LABEL_HELP})"),
            _ => {
                "a DNS-1123 subdomain (DNS labels joined by '.', at most 253 characters)".to_owned()
            }
        };
        p.add(path, format!("invalid value {name:?}: must be {what}"));
    }
}

fn check_meta(kind: Kind, m: &ObjectMeta, p: &mut Problems) {
    check_name(kind, &m.name, p);
    if kind.is_namespaced() {
        check_dns_label("metadata.namespace", &m.namespace, p);
    }
    for (k, v) in &m.labels {
        let path = || format!("metadata.labels[{k:?}]");
        let (prefix, name) = match k.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, k),
        };
        if prefix.is_some_and(|p| !is_dns_subdomain(p)) || !is_label_value(name) || name.is_empty()
        {
            p.add(
                path(),
                format!(
                    "invalid key {k:?}: must be an optional DNS subdomain prefix and '/', then \
                     a name of letters, digits, '-', '_' and '.' (at most 63 characters)"
                ),
            );
        }
        if !is_label_value(v) {
            p.add(
                path(),
                format!(
                    "invalid value {v:?}: must be empty or letters, digits, '-', '_' and '.', \
                     starting and ending with a letter or digit, at most 63 characters"
                ),
            );
        }
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// `path` is made only for a problem: formatting it for every valid port and address was a
/// tenth of decoding 10,000 Services and slices.
fn check_port(path: impl FnOnce() -> String, port: i64, p: &mut Problems) {
    if !(1..=65535).contains(&port) {
        p.add(path(), format!("invalid value {port}: must be 1-65535"));
    }
}

/// An address a frontend or backend may have: IPv4, not 0.0.0.0, broadcast or multicast.
fn check_ipv4(path: impl FnOnce() -> String, s: &str, p: &mut Problems) -> Option<Ipv4Addr> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
            p.add(
                path(),
                format!("invalid value {s:?}: must be a unicast IPv4 address"),
            );
            None
        }
        Ok(IpAddr::V4(a)) => Some(a),
        Ok(IpAddr::V6(_)) => {
            p.add(
                path(),
                format!("unsupported value {s:?}: IPv6 is not supported (Ciliate's datapath is IPv4-only)"),
            );
            None
        }
        Err(_) => {
            p.add(
                path(),
                format!("invalid value {s:?}: must be an IPv4 address, e.g. 10.96.0.10"),
            );
            None
        }
    }
}

fn validate_service(s: &Service, p: &mut Problems) {
    check_meta(Kind::Service, &s.metadata, p);
    let spec = &s.spec;
    if spec.service_type == ServiceType::ExternalName {
        if !is_dns_subdomain(&spec.external_name.to_ascii_lowercase()) {
            p.add(
                "spec.externalName",
                if spec.external_name.is_empty() {
                    "required value: an ExternalName Service names a DNS name".to_owned()
                } else {
                    format!("invalid value {:?}: must be a DNS name", spec.external_name)
                },
            );
        }
        // Nothing else of an ExternalName Service reaches the datapath.
        return;
    }

    // clusterIP, defaulted from clusterIPs[0] as the API server does.
    let cluster_ip = if spec.cluster_ip.is_empty() {
        spec.cluster_ips.first().cloned().unwrap_or_default()
    } else {
        spec.cluster_ip.clone()
    };
    let headless = cluster_ip == "None";
    if cluster_ip.is_empty() {
        p.add(
            "spec.clusterIP",
            "required value: Ciliate does not allocate cluster IPs; give one (e.g. 10.96.0.10), \
             or \"None\" for a headless Service",
        );
    } else if !headless {
        check_ipv4(|| "spec.clusterIP".into(), &cluster_ip, p);
    }
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        let path = format!("spec.clusterIPs[{i}]");
        if i == 0 && *ip != cluster_ip {
            p.add(
                path,
                format!("invalid value {ip:?}: must match spec.clusterIP {cluster_ip:?}"),
            );
        } else if !(headless && ip == "None") {
            check_ipv4(|| path, ip, p);
        }
    }
    if headless
        && matches!(
            spec.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        )
    {
        p.add(
            "spec.clusterIP",
            format!(
                "invalid value \"None\": a {} Service cannot be headless",
                spec.service_type
            ),
        );
    }
    for (i, ip) in spec.external_ips.iter().enumerate() {
        check_ipv4(|| format!("spec.externalIPs[{i}]"), ip, p);
    }
    for (i, ing) in s.status.load_balancer.ingress.iter().enumerate() {
        if !ing.ip.is_empty() {
            check_ipv4(
                || format!("status.loadBalancer.ingress[{i}].ip"),
                &ing.ip,
                p,
            );
        }
    }

    if spec.ports.is_empty() && !headless {
        p.add(
            "spec.ports",
            "required value: a Service needs at least one port",
        );
    }
    let node_ports_allowed = matches!(
        spec.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        if port.name.is_empty() {
            if spec.ports.len() > 1 {
                p.add(
                    at("name"),
                    "required value: every port of a Service with several ports needs a name",
                );
            }
        } else if !is_dns_label(&port.name) {
            p.add(
                at("name"),
                format!(
                    "invalid value {:?}: must be a DNS-1123 label ({DNS_LABEL_HELP})",
                    port.name
                ),
            );
        } else if !names.insert(port.name.as_str()) {
            p.add(
                at("name"),
                format!("duplicate value {:?}: port names must be unique", port.name),
            );
        }
        check_port(|| at("port"), i64::from(port.port), p);
        if !ports.insert((port.port, port.protocol)) {
            p.add(
                at("port"),
                format!(
                    "duplicate value {}/{}: each port and protocol may appear once",
                    port.port, port.protocol
                ),
            );
        }
        match &port.target_port {
            None => {}
            Some(IntOrString::Int(n)) => check_port(|| at("targetPort"), *n, p),
            Some(IntOrString::String(name)) if !is_iana_svc_name(name) => p.add(
                at("targetPort"),
                format!(
                    "invalid value {name:?}: must be a port number (1-65535) or a port name \
                     (IANA service name: at most 15 lowercase letters, digits and '-', with at \
                     least one letter, no '-' at either end and no \"--\")"
                ),
            ),
            Some(IntOrString::String(_)) => {}
        }
        match port.node_port {
            Some(_) if !node_ports_allowed => p.add(
                at("nodePort"),
                format!(
                    "forbidden: only NodePort and LoadBalancer Services have node ports (type is {})",
                    spec.service_type
                ),
            ),
            Some(n) => {
                check_port(|| at("nodePort"), i64::from(n), p);
                if !node_ports.insert((n, port.protocol)) {
                    p.add(
                        at("nodePort"),
                        format!("duplicate value {n}/{}: node ports must be unique", port.protocol),
                    );
                }
            }
            None if spec.service_type == ServiceType::NodePort => p.add(
                at("nodePort"),
                "required value: Ciliate does not allocate node ports; choose one, e.g. 30080",
            ),
            None => {}
        }
    }

    match (&spec.session_affinity, &spec.session_affinity_config) {
        (SessionAffinity::None, Some(c)) if c.client_ip.is_some() => p.add(
            "spec.sessionAffinityConfig",
            "forbidden: only for sessionAffinity: ClientIP",
        ),
        (SessionAffinity::ClientIP, Some(c)) => {
            if let Some(t) = c.client_ip.as_ref().and_then(|c| c.timeout_seconds) {
                if !(1..=i64::from(MAX_AFFINITY_TIMEOUT)).contains(&t) {
                    p.add(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("invalid value {t}: must be 1-{MAX_AFFINITY_TIMEOUT}"),
                    );
                }
            }
        }
        _ => {}
    }
}

fn check_endpoint_ports(prefix: &str, ports: &[EndpointPort], p: &mut Problems) {
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = |f: &str| format!("{prefix}[{i}].{f}");
        if !port.name.is_empty() && !is_dns_label(&port.name) {
            p.add(
                at("name"),
                format!(
                    "invalid value {:?}: must be a DNS-1123 label ({DNS_LABEL_HELP})",
                    port.name
                ),
            );
        }
        if !names.insert((port.name.as_str(), port.protocol)) {
            p.add(
                at("name"),
                format!(
                    "duplicate value {:?}: port names must be unique per protocol",
                    port.name
                ),
            );
        }
        check_port(|| at("port"), i64::from(port.port), p);
    }
}

fn validate_namespace(n: &Namespace, p: &mut Problems) {
    check_meta(Kind::Namespace, &n.metadata, p);
    // Kubernetes sets this label to the name and refuses any other value.
    if let Some(v) = n.metadata.labels.get(NAMESPACE_NAME_LABEL) {
        if *v != n.metadata.name {
            p.add(
                format!("metadata.labels[{NAMESPACE_NAME_LABEL:?}]"),
                format!(
                    "invalid value {v:?}: must be the namespace's name {:?} (Kubernetes sets it)",
                    n.metadata.name
                ),
            );
        }
    }
}

fn validate_slice(s: &EndpointSlice, p: &mut Problems) {
    check_meta(Kind::EndpointSlice, &s.metadata, p);
    match s.service_name() {
        None => p.add(
            format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
            "required value: the label names the Service this slice serves",
        ),
        Some(name) if !is_dns1035_label(name) => p.add(
            format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
            format!("invalid value {name:?}: must be a Service name (a DNS-1035 label)"),
        ),
        Some(_) => {}
    }
    if s.address_type != AddressType::IPv4 {
        p.add(
            "addressType",
            format!(
                "unsupported value {:?}: only IPv4 EndpointSlices are supported (Ciliate's \
                 datapath is IPv4-only)",
                s.address_type.to_string()
            ),
        );
        // The addresses would all be reported again as not IPv4.
        return;
    }
    for (i, ep) in s.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            p.add(
                format!("endpoints[{i}].addresses"),
                format!(
                    "invalid value: {} addresses, must be 1-100",
                    ep.addresses.len()
                ),
            );
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            check_ipv4(|| format!("endpoints[{i}].addresses[{j}]"), a, p);
        }
        if !ep.node_name.is_empty() && !is_dns_subdomain(&ep.node_name) {
            p.add(
                format!("endpoints[{i}].nodeName"),
                format!(
                    "invalid value {:?}: must be a node name (DNS-1123 subdomain)",
                    ep.node_name
                ),
            );
        }
    }
    check_endpoint_ports("ports", &s.ports, p);
}

fn validate_endpoints(e: &Endpoints, p: &mut Problems) {
    check_meta(Kind::Endpoints, &e.metadata, p);
    if !is_dns1035_label(&e.metadata.name) && is_dns_subdomain(&e.metadata.name) {
        p.add(
            "metadata.name",
            format!(
                "invalid value {:?}: an Endpoints object is named after its Service (a DNS-1035 label)",
                e.metadata.name
            ),
        );
    }
    for (i, subset) in e.subsets.iter().enumerate() {
        for (field, list) in [
            ("addresses", &subset.addresses),
            ("notReadyAddresses", &subset.not_ready_addresses),
        ] {
            for (j, a) in list.iter().enumerate() {
                check_ipv4(|| format!("subsets[{i}].{field}[{j}].ip"), &a.ip, p);
            }
        }
        check_endpoint_ports(&format!("subsets[{i}].ports"), &subset.ports, p);
    }
}

mod batch_hash;
mod plain_yaml;
pub mod raw;
pub mod text;

pub use text::split_documents_raw;

#[cfg(test)]
mod tests;
