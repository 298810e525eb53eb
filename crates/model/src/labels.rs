//! Labels as Cilium writes them: `source:key=value`, e.g. `k8s:app=web`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The label source of a pod label, as Cilium names it.
pub const SOURCE_K8S: &str = "k8s";
/// The label source of the reserved identities (`reserved:host`, ...).
pub const SOURCE_RESERVED: &str = "reserved";
/// The label Cilium puts on every pod for its namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// One label: where it came from, its key and its value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Where the label came from (`k8s`, `reserved`, `container`, ...).
    pub source: String,
    /// The key, e.g. `app`.
    pub key: String,
    /// The value; empty for keys without one (e.g. `reserved:host`).
    pub value: String,
}

/// Why a label could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    /// The key part was empty.
    #[error("label {0:?}: the key is empty")]
    EmptyKey(String),
    /// The key or value holds a character labels may not carry.
    #[error("label {label:?}: {what} may only hold letters, digits and '-', '_', '.', '/' (found {found:?})")]
    BadCharacter {
        /// The whole label as given.
        label: String,
        /// "key", "value" or "source".
        what: &'static str,
        /// The offending character.
        found: char,
    },
    /// Key, value or source longer than Kubernetes allows.
    #[error("label {0:?}: longer than 253 characters")]
    TooLong(String),
}

impl Label {
    /// A label with the given source, key and value. Use [`Label::parse`] for input from outside.
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Self {
            source: source.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    /// Parses `[source:]key[=value]`; `default_source` is used when no source is given.
    ///
    /// The source is only recognised when it comes before the first `=` and holds no `/` or `.`
    /// (so `example.com/tier=db` is a key with a prefix, not a source).
    pub fn parse(s: &str, default_source: &str) -> Result<Self, LabelError> {
        let (kv, value) = match s.split_once('=') {
            Some((k, v)) => (k, v),
            None => (s, ""),
        };
        let (source, key) = match kv.split_once(':') {
            Some((src, key)) if !src.contains(['/', '.']) => (src, key),
            _ => (default_source, kv),
        };
        if key.is_empty() {
            return Err(LabelError::EmptyKey(s.to_owned()));
        }
        if key.len() > 253 || value.len() > 253 || source.len() > 253 {
            return Err(LabelError::TooLong(s.to_owned()));
        }
        for (what, part) in [("source", source), ("key", key), ("value", value)] {
            if let Some(found) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
            {
                return Err(LabelError::BadCharacter {
                    label: s.to_owned(),
                    what,
                    found,
                });
            }
        }
        Ok(Self::new(source, key, value))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.key)?;
        if !self.value.is_empty() {
            write!(f, "={}", self.value)?;
        }
        Ok(())
    }
}

impl FromStr for Label {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Label::parse(s, SOURCE_K8S)
    }
}

impl Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of labels, at most one value per `source:key`, kept sorted so that equal sets
/// compare, hash and print the same: the identity of a workload is its label set.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(BTreeMap<(String, String), String>);

impl Labels {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a label.
    pub fn insert(&mut self, label: Label) {
        self.0.insert((label.source, label.key), label.value);
    }

    /// The value of `source:key`, if present.
    pub fn get(&self, source: &str, key: &str) -> Option<&str> {
        self.0
            .get(&(source.to_owned(), key.to_owned()))
            .map(String::as_str)
    }

    /// The labels in order.
    pub fn iter(&self) -> impl Iterator<Item = Label> + '_ {
        self.0
            .iter()
            .map(|((source, key), value)| Label::new(source, key, value))
    }

    /// The labels in order as `(source, key, value)`, without copying them: selectors are
    /// matched against every identity's labels, often.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &str)> + '_ {
        self.0
            .iter()
            .map(|((source, key), value)| (source.as_str(), key.as_str(), value.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses a comma-separated list such as `app=web,k8s:tier=front`.
    pub fn parse_list(s: &str, default_source: &str) -> Result<Self, LabelError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| Label::parse(p, default_source))
            .collect()
    }
}

impl FromIterator<Label> for Labels {
    fn from_iter<I: IntoIterator<Item = Label>>(iter: I) -> Self {
        let mut labels = Labels::new();
        for l in iter {
            labels.insert(l);
        }
        labels
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Label>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sources_keys_and_values() {
        assert_eq!(
            Label::parse("k8s:app=web", "x").unwrap(),
            Label::new("k8s", "app", "web")
        );
        assert_eq!(
            Label::parse("app=web", "k8s").unwrap(),
            Label::new("k8s", "app", "web")
        );
        assert_eq!(
            Label::parse("reserved:host", "k8s").unwrap(),
            Label::new("reserved", "host", "")
        );
        assert_eq!(
            Label::parse("example.com/tier=db", "k8s").unwrap(),
            Label::new("k8s", "example.com/tier", "db")
        );
        assert!(matches!(
            Label::parse("=x", "k8s"),
            Err(LabelError::EmptyKey(_))
        ));
        assert!(matches!(
            Label::parse("app=we b", "k8s"),
            Err(LabelError::BadCharacter { .. })
        ));
    }

    #[test]
    fn sets_are_ordered_and_deduplicated() {
        let a = Labels::parse_list("tier=front, app=web", "k8s").unwrap();
        let b = Labels::parse_list("app=web,tier=front,tier=front", "k8s").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "k8s:app=web,k8s:tier=front");
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(
            src in "[a-z]{1,8}", key in "[a-z][a-z0-9.-]{0,20}", value in "[a-zA-Z0-9_-]{0,20}"
        ) {
            let l = Label::new(&src, &key, &value);
            prop_assert_eq!(Label::parse(&l.to_string(), "other").unwrap(), l);
        }

        #[test]
        fn serde_round_trip(list in proptest::collection::vec(("[a-z]{1,5}", "[a-z]{0,5}"), 0..8)) {
            let labels: Labels = list.iter().map(|(k, v)| Label::new("k8s", k, v)).collect();
            let json = serde_json::to_string(&labels).unwrap();
            prop_assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), labels);
        }
    }
}
