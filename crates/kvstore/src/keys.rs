//! The key layout (see the crate documentation) and its parsing.

use std::net::Ipv4Addr;

use ciliate_model::identity::NumericIdentity;
use ciliate_model::labels::{Labels, SOURCE_K8S};

use crate::KvError;

const NODES: &str = "nodes/v1/";
const IDS: &str = "identities/v1/id/";
const LABELS: &str = "identities/v1/labels/";
const REFS: &str = "identities/v1/refs/";
const IDENTITIES: &str = "identities/v1/";
const IPS: &str = "ip/v1/default/";

/// Builds and parses the keys under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `<prefix>/state/`.
    state: String,
}

/// What a key under `<prefix>/state/` stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StateKey {
    /// `nodes/v1/<name>`.
    Node(String),
    /// `identities/v1/id/<number>`.
    IdentityId(NumericIdentity),
    /// `identities/v1/labels/<canonical labels>`.
    IdentityLabels(String),
    /// `identities/v1/refs/<canonical labels>/<node>`.
    IdentityRef {
        /// The canonical label set.
        labels: String,
        /// The referencing node.
        node: String,
    },
    /// `ip/v1/default/<ip>`.
    Ip(Ipv4Addr),
}

/// A key that is ours but does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// Not under `<prefix>/state/`, or in a section this version does not know: ignore.
    Foreign,
    /// In a known section but malformed: log and skip.
    Malformed(&'static str),
}

impl Keys {
    /// Keys under `prefix` (surrounding slashes ignored).
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            state: format!("{}/state/", prefix.trim_matches('/')),
        }
    }

    /// `<prefix>/state/`: everything the view lists and watches.
    pub(crate) fn state_prefix(&self) -> &str {
        &self.state
    }

    /// The key of a node record.
    pub(crate) fn node(&self, name: &str) -> String {
        format!("{}{NODES}{name}", self.state)
    }

    /// Everything about identities.
    pub(crate) fn identities_prefix(&self) -> String {
        format!("{}{IDENTITIES}", self.state)
    }

    /// The prefix of the number → labels keys.
    pub(crate) fn ids_prefix(&self) -> String {
        format!("{}{IDS}", self.state)
    }

    /// `id/<n>` → canonical labels.
    pub(crate) fn identity_id(&self, id: NumericIdentity) -> String {
        format!("{}{IDS}{id}", self.state)
    }

    /// `labels/<L>` → number: the master key of a label set.
    pub(crate) fn identity_labels(&self, canonical: &str) -> String {
        format!("{}{LABELS}{canonical}", self.state)
    }

    /// `refs/<L>/<node>` → number: one node's reference.
    pub(crate) fn identity_ref(&self, canonical: &str, node: &str) -> String {
        format!("{}{REFS}{canonical}/{node}", self.state)
    }

    /// The key of an IP entry.
    pub(crate) fn ip(&self, ip: Ipv4Addr) -> String {
        format!("{}{IPS}{ip}", self.state)
    }

    /// What `key` stands for.
    pub(crate) fn parse(&self, key: &str) -> Result<StateKey, KeyError> {
        let rest = key.strip_prefix(&self.state).ok_or(KeyError::Foreign)?;
        if let Some(name) = rest.strip_prefix(NODES) {
            if name.is_empty() || name.contains('/') {
                return Err(KeyError::Malformed("node name is empty or holds '/'"));
            }
            return Ok(StateKey::Node(name.to_owned()));
        }
        if let Some(n) = rest.strip_prefix(IDS) {
            return parse_number(n)
                .map(StateKey::IdentityId)
                .ok_or(KeyError::Malformed("identity number is not a decimal u32"));
        }
        if let Some(labels) = rest.strip_prefix(LABELS) {
            return Ok(StateKey::IdentityLabels(labels.to_owned()));
        }
        if let Some(r) = rest.strip_prefix(REFS) {
            // Labels may hold '/', node names may not: the node is the last segment.
            let (labels, node) = r
                .rsplit_once('/')
                .ok_or(KeyError::Malformed("reference without a node segment"))?;
            if node.is_empty() {
                return Err(KeyError::Malformed("reference with an empty node name"));
            }
            return Ok(StateKey::IdentityRef {
                labels: labels.to_owned(),
                node: node.to_owned(),
            });
        }
        if let Some(ip) = rest.strip_prefix(IPS) {
            return ip
                .parse()
                .map(StateKey::Ip)
                .map_err(|_| KeyError::Malformed("not an IPv4 address"));
        }
        Err(KeyError::Foreign)
    }
}

/// A decimal identity number written exactly as `to_string` writes it (no sign, no leading
/// zeros), so that one number has one key.
pub(crate) fn parse_number(s: &str) -> Option<NumericIdentity> {
    let n: NumericIdentity = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

/// The canonical string of a label set, used in keys and values: `source:key=value,...` in
/// order. Fails for sets that would not read back the same (labels built without
/// validation that hold ',', '=' or ':' where the syntax does not allow them).
pub(crate) fn canonical_labels(labels: &Labels) -> Result<String, KvError> {
    let s = labels.to_string();
    match parse_labels(&s) {
        Ok(back) if back == *labels => Ok(s),
        Ok(back) => Err(KvError::InvalidLabels {
            labels: s,
            reason: format!("it reads back as {back}"),
        }),
        Err(reason) => Err(KvError::InvalidLabels { labels: s, reason }),
    }
}

/// Reads a canonical label string back.
pub(crate) fn parse_labels(s: &str) -> Result<Labels, String> {
    Labels::parse_list(s, SOURCE_K8S).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_model::labels::Label;

    fn keys() -> Keys {
        Keys::new("/ciliate/")
    }

    #[test]
    fn builds_the_documented_layout() {
        let k = keys();
        assert_eq!(k.state_prefix(), "ciliate/state/");
        assert_eq!(k.node("node-a"), "ciliate/state/nodes/v1/node-a");
        assert_eq!(k.identity_id(256), "ciliate/state/identities/v1/id/256");
        assert_eq!(
            k.identity_labels("k8s:app=web"),
            "ciliate/state/identities/v1/labels/k8s:app=web"
        );
        assert_eq!(
            k.identity_ref("k8s:app=web", "node-a"),
            "ciliate/state/identities/v1/refs/k8s:app=web/node-a"
        );
        assert_eq!(
            k.ip(Ipv4Addr::new(10, 1, 2, 3)),
            "ciliate/state/ip/v1/default/10.1.2.3"
        );
    }

    #[test]
    fn parses_what_it_builds() {
        let k = keys();
        let canonical = "k8s:app=web,k8s:example.com/tier=db";
        let cases = [
            (k.node("n1"), StateKey::Node("n1".into())),
            (k.identity_id(65535), StateKey::IdentityId(65535)),
            (
                k.identity_labels(canonical),
                StateKey::IdentityLabels(canonical.into()),
            ),
            (
                k.identity_ref(canonical, "n1"),
                StateKey::IdentityRef {
                    labels: canonical.into(),
                    node: "n1".into(),
                },
            ),
            (
                k.ip(Ipv4Addr::new(10, 0, 0, 9)),
                StateKey::Ip(Ipv4Addr::new(10, 0, 0, 9)),
            ),
        ];
        for (key, want) in cases {
            assert_eq!(k.parse(&key), Ok(want), "{key}");
        }
    }

    #[test]
    fn rejects_malformed_and_ignores_foreign_keys() {
        let k = keys();
        for bad in [
            "ciliate/state/identities/v1/id/abc",
            "ciliate/state/identities/v1/id/0256",
            "ciliate/state/identities/v1/id/-1",
            "ciliate/state/identities/v1/id/99999999999",
            "ciliate/state/ip/v1/default/10.0.0.256",
            "ciliate/state/ip/v1/default/fd00::1",
            "ciliate/state/nodes/v1/",
            "ciliate/state/nodes/v1/a/b",
            "ciliate/state/identities/v1/refs/k8s:app=web/",
            "ciliate/state/identities/v1/refs/nonode",
        ] {
            assert!(
                matches!(k.parse(bad), Err(KeyError::Malformed(_))),
                "{bad}: {:?}",
                k.parse(bad)
            );
        }
        for foreign in [
            "other/state/nodes/v1/a",
            "ciliate/state/nodes/v2/a",
            "ciliate/state/services/v1/x",
            "ciliate/stat",
        ] {
            assert_eq!(k.parse(foreign), Err(KeyError::Foreign), "{foreign}");
        }
    }

    #[test]
    fn canonical_labels_round_trip() {
        let labels = Labels::parse_list("tier=front,app=web,reserved:host", "k8s").unwrap();
        let s = canonical_labels(&labels).unwrap();
        assert_eq!(s, "k8s:app=web,k8s:tier=front,reserved:host");
        assert_eq!(parse_labels(&s).unwrap(), labels);
        assert_eq!(canonical_labels(&Labels::new()).unwrap(), "");
        assert_eq!(parse_labels("").unwrap(), Labels::new());
    }

    #[test]
    fn canonical_labels_refuses_what_would_not_read_back() {
        for bad in [
            Label::new("k8s", "app", "a,b"),
            Label::new("k8s", "app", "x=y"),
            Label::new("k8s", "a b", "c"),
            Label::new("my.source", "app", "web"),
        ] {
            let labels: Labels = std::iter::once(bad.clone()).collect();
            assert!(
                matches!(
                    canonical_labels(&labels),
                    Err(KvError::InvalidLabels { .. })
                ),
                "{bad}"
            );
        }
    }
}
