//! Documents of a YAML or JSON stream turned straight into JSON text ([`split_documents_raw`]),
//! what `ciliate apply` sends: the same documents, checks and errors as
//! [`super::split_documents`], without a [`serde_json::Value`] of each.
//!
//! Building the values (a map node per mapping), serializing them and dropping them was most of
//! the CLI's time for 10,000 Services; here each parser event is written out as it comes. Keys
//! keep the document's order (a value sorts them), which no reader of the objects depends on.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::raw::RawApplyDocument;
use super::ManifestError;

/// The documents of `text` (YAML, or a JSON stream when `source` ends in `.json`) as JSON text,
/// empty documents left out, with [`super::split_documents`]'s rules and errors.
pub fn split_documents_raw(
    source: &str,
    text: &str,
) -> Result<Vec<RawApplyDocument>, ManifestError> {
    let mut out = Vec::new();
    for_each_document_raw(source, text, |index, json| {
        // Written by `JsonText` from parser events: UTF-8 and valid JSON by construction.
        let Ok(text) = std::str::from_utf8(json) else {
            return;
        };
        let Ok(object) = RawValue::from_string(text.to_owned()) else {
            return;
        };
        out.push(RawApplyDocument {
            source: source.to_owned(),
            index,
            object,
        });
    })?;
    Ok(out)
}

/// [`split_documents_raw`] one document at a time: `each` gets every non-empty document's
/// 1-based index and JSON text as soon as it is parsed (what `ciliate apply` streams to the
/// agent while it parses the rest). The first syntax error ends the file; the documents before
/// it have been handed out already.
pub fn for_each_document_raw(
    source: &str,
    text: &str,
    mut each: impl FnMut(usize, &[u8]),
) -> Result<(), ManifestError> {
    let syntax = |index: usize, what: &str, e: &dyn fmt::Display| {
        super::syntax_error(source, index, what, e)
    };
    let mut buf = Vec::new();
    let mut emit = |index: usize, json: &[u8]| {
        if json != b"null" {
            each(index, json);
        }
    };
    if source.ends_with(".json") {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut index = 0;
        loop {
            // What `into_iter` does between values: whitespace, then the end or a value.
            if de.end().is_ok() {
                break;
            }
            index += 1;
            buf.clear();
            JsonText(&mut buf)
                .deserialize(&mut de)
                .map_err(|e| syntax(index, "JSON", &e))?;
            emit(index, &buf);
        }
    } else {
        // The common subset first; from the first document it is unsure of on, libyaml.
        let done = match super::plain_yaml::for_each_document(text, &mut buf, &mut emit) {
            super::plain_yaml::Read::Done => return Ok(()),
            super::plain_yaml::Read::Stopped { done } => done,
        };
        for_each_yaml_document(text, &mut buf, done, emit)
            .map_err(|(i, e)| syntax(i, "YAML", &e))?;
    }
    Ok(())
}

/// The documents of YAML `text` read with `serde_yaml_ng`, the first `skip` of them read but
/// not handed out; the first syntax error (its document's index) ends the file.
pub(super) fn for_each_yaml_document(
    text: &str,
    buf: &mut Vec<u8>,
    skip: usize,
    mut each: impl FnMut(usize, &[u8]),
) -> Result<(), (usize, serde_yaml_ng::Error)> {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        buf.clear();
        // serde_yaml_ng can panic when asked for more documents after an error, so the
        // first error ends the loop.
        JsonText(&mut *buf)
            .deserialize(doc)
            .map_err(|e| (i + 1, e))?;
        if i >= skip {
            each(i + 1, buf);
        }
    }
    Ok(())
}

/// Writes the value it is given as JSON text, refusing duplicate keys as `StrictValue` does
/// (both parsers keep the last of two equal keys silently).
struct JsonText<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for JsonText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl JsonText<'_> {
    fn write<T: serde::Serialize + ?Sized, E: serde::de::Error>(self, v: &T) -> Result<(), E> {
        serde_json::to_writer(&mut *self.0, v).map_err(E::custom)
    }
}

impl<'de> Visitor<'de> for JsonText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.write(&v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.write(&v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.write(&v)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        // As a value holds it: not finite is null.
        self.write(&serde_json::Value::from(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.write(v)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push(b'[');
        let mut first = true;
        loop {
            let at = self.0.len();
            if !first {
                self.0.push(b',');
            }
            if seq.next_element_seed(JsonText(self.0))?.is_none() {
                self.0.truncate(at);
                break;
            }
            first = false;
        }
        self.0.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push(b'{');
        // Nearly every mapping has a few keys: a vector searched is cheaper than a set.
        let mut keys: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.is_empty() {
                self.0.push(b',');
            }
            serde_json::to_writer(&mut *self.0, &key).map_err(serde::de::Error::custom)?;
            self.0.push(b':');
            map.next_value_seed(JsonText(self.0))?;
            // After the value, as `StrictValue` does: the error names the same place.
            if keys.contains(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {key:?} in one mapping"
                )));
            }
            keys.push(key);
        }
        self.0.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::split_documents;
    use super::*;

    /// The text documents read back as values, with their places.
    fn values(docs: &[RawApplyDocument]) -> Vec<(String, usize, serde_json::Value)> {
        docs.iter()
            .map(|d| {
                (
                    d.source.clone(),
                    d.index,
                    serde_json::from_str(d.object.get()).unwrap(),
                )
            })
            .collect()
    }

    fn same_as_values(source: &str, text: &str) {
        let want: Vec<_> = split_documents(source, text)
            .unwrap()
            .into_iter()
            .map(|d| (d.source, d.index, d.object))
            .collect();
        let got = split_documents_raw(source, text).unwrap();
        assert_eq!(values(&got), want, "{source}: {text}");
    }

    #[test]
    fn the_same_documents_as_values() {
        same_as_values(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: \"w\\\"eb\", n: '1'}\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  x: [1, -2, 2.5, 1e400, true, null, ~, [], {}]\n  u: 18446744073709551615\n  e: ''\n  s: \"\\u00e9\\n\\t\"\n",
        );
        // Empty documents are left out; positions count them.
        same_as_values("b.yaml", "---\n---\nkind: A\n---\n\n---\nkind: B\n");
        same_as_values("c.yaml", "");
        same_as_values(
            "d.json",
            "{\"kind\": \"A\", \"n\": [1, 2.5, null]}\n{\"kind\": \"B\"} null {\"k\": {}}",
        );
        same_as_values("e.json", "  \n");
    }

    #[test]
    fn the_same_errors_as_values() {
        for (source, text) in [
            ("a.yaml", "kind: A\nkind: B\n"),
            ("b.yaml", "kind: A\n---\nmetadata: {labels: {a: 1, a: 2}}\n"),
            ("c.yaml", "kind: A\n---\nspec: [unclosed\n"),
            ("d.json", "{\"kind\": \"A\"} {\"a\": 1, \"a\": 1}"),
            ("e.json", "{\"kind\": \"A\"} {"),
            ("f.yaml", "? [a, b]\n: c\n"),
        ] {
            let want = split_documents(source, text).unwrap_err();
            let got = split_documents_raw(source, text).unwrap_err();
            assert_eq!(got, want, "{source}: {text}");
        }
    }
}
