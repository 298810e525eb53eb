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

use super::{check_batch, validate_typed, ApplyDocument, ApplyRequest, Decoded, ManifestError};
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
    let text = doc.object.get();
    let head: TypeHead = serde_json::from_str(text).ok()?;
    // A duplicate key is an error here (typed fields, straight from text) and the last value
    // in a JSON value: such documents take the value path, which reads them as it always did.
    let object = match Kind::from_type(&head.api_version, &head.kind)? {
        Kind::Service => Object::Service(serde_json::from_str(text).ok()?),
        Kind::EndpointSlice => Object::EndpointSlice(serde_json::from_str(text).ok()?),
        Kind::Endpoints => Object::Endpoints(serde_json::from_str(text).ok()?),
        Kind::Namespace => Object::Namespace(serde_json::from_str(text).ok()?),
    };
    validate_typed(object, &doc.source, doc.index).ok()
}

/// [`super::decode_all`] of the documents, straight from their text: every object when all
/// of them are valid objects of [`Kind`]'s kinds, else `None` (take the value path, which
/// reports the problems).
pub fn decode_all_raw(docs: &[RawApplyDocument]) -> Option<Vec<Decoded>> {
    let mut objects = Vec::with_capacity(docs.len());
    for d in docs {
        objects.push((d.source.as_str(), d.index, Ok(decode_raw(d)?)));
    }
    check_batch(objects).ok()
}
