//! The whole cluster as one value, built from a listing and kept current by watch events.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ciliate_model::identity::NumericIdentity;
use ciliate_model::labels::Labels;

use crate::keys::{self, KeyError, Keys, StateKey};
use crate::{IpEntry, NodeRecord};

/// What every node knows about the cluster. Published through
/// [`crate::Kvstore::subscribe`]; never emptied because etcd went away. Serialisable so that
/// an agent can keep it across restarts (and use it while etcd is away).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Registered nodes by name (this one included).
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Allocated identities: number → label set.
    pub identities: BTreeMap<NumericIdentity, Labels>,
    /// Endpoint addresses of all nodes.
    pub ips: BTreeMap<Ipv4Addr, IpEntry>,
    /// False while etcd is unreachable: the content is then the last known state.
    pub connected: bool,
    /// The etcd revision the content reflects.
    pub revision: i64,
}

impl ClusterView {
    /// A view of the listed `(key, value)` pairs at `revision`.
    pub(crate) fn from_listing<'a>(
        keys: &Keys,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        revision: i64,
    ) -> Self {
        let mut view = Self {
            connected: true,
            revision,
            ..Self::default()
        };
        for (key, value) in kvs {
            view.apply_put(keys, key, value);
        }
        view
    }

    /// Applies a put of `key`. Malformed keys and values are logged and skipped; what the view
    /// held for that key stays.
    pub(crate) fn apply_put(&mut self, keys: &Keys, key: &[u8], value: &[u8]) {
        let Some((key_str, parsed)) = parse_key(keys, key) else {
            return;
        };
        let skip = |why: String| {
            tracing::warn!(key = key_str, "skipping malformed value from etcd: {why}");
        };
        match parsed {
            StateKey::Node(name) => match serde_json::from_slice::<NodeRecord>(value) {
                Ok(node) if node.name == name => {
                    self.nodes.insert(name, node);
                }
                Ok(node) => skip(format!("record names node {:?}", node.name)),
                Err(e) => skip(format!("not a node record: {e}")),
            },
            StateKey::IdentityId(id) => {
                match std::str::from_utf8(value)
                    .map_err(|e| e.to_string())
                    .and_then(keys::parse_labels)
                {
                    Ok(labels) => {
                        self.identities.insert(id, labels);
                    }
                    Err(e) => skip(format!("not a label set: {e}")),
                }
            }
            StateKey::Ip(ip) => match serde_json::from_slice::<IpEntry>(value) {
                Ok(entry) if entry.ip == ip => {
                    self.ips.insert(ip, entry);
                }
                Ok(entry) => skip(format!("entry is for {}", entry.ip)),
                Err(e) => skip(format!("not an IP entry: {e}")),
            },
            // The allocator's bookkeeping: not part of the view.
            StateKey::IdentityLabels(_) | StateKey::IdentityRef { .. } => {}
        }
    }

    /// Applies a delete of `key`.
    pub(crate) fn apply_delete(&mut self, keys: &Keys, key: &[u8]) {
        match parse_key(keys, key) {
            Some((_, StateKey::Node(name))) => {
                self.nodes.remove(&name);
            }
            Some((_, StateKey::IdentityId(id))) => {
                self.identities.remove(&id);
            }
            Some((_, StateKey::Ip(ip))) => {
                self.ips.remove(&ip);
            }
            _ => {}
        }
    }
}

/// The key as text and what it stands for, if it is one of ours; logs the malformed ones.
fn parse_key<'k>(keys: &Keys, key: &'k [u8]) -> Option<(&'k str, StateKey)> {
    let Ok(s) = std::str::from_utf8(key) else {
        tracing::warn!(key = %String::from_utf8_lossy(key), "skipping a key from etcd that is not UTF-8");
        return None;
    };
    match keys.parse(s) {
        Ok(parsed) => Some((s, parsed)),
        Err(KeyError::Foreign) => None,
        Err(KeyError::Malformed(why)) => {
            tracing::warn!(key = s, "skipping a malformed key from etcd: {why}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new("ciliate")
    }

    fn node_json(name: &str) -> Vec<u8> {
        format!(
            r#"{{"name":"{name}","underlayIp":"192.168.0.1","podCidr":"10.1.0.0/24","health":"ok","bootId":"b"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn builds_from_a_listing_and_applies_events() {
        let k = keys();
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let ip_json =
            br#"{"ip":"10.1.0.5","identity":300,"node":"n1","tunnelEndpoint":"192.168.0.1"}"#;
        let listing: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (k.node("n1").into_bytes(), node_json("n1")),
            (k.identity_id(300).into_bytes(), b"k8s:app=web".to_vec()),
            (
                k.identity_labels("k8s:app=web").into_bytes(),
                b"300".to_vec(),
            ),
            (
                k.identity_ref("k8s:app=web", "n1").into_bytes(),
                b"300".to_vec(),
            ),
            (k.ip(ip).into_bytes(), ip_json.to_vec()),
            (b"unrelated/key".to_vec(), b"x".to_vec()),
        ];
        let mut view = ClusterView::from_listing(
            &k,
            listing.iter().map(|(a, b)| (a.as_slice(), b.as_slice())),
            42,
        );
        assert!(view.connected);
        assert_eq!(view.revision, 42);
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(
            view.identities.get(&300),
            Some(&Labels::parse_list("app=web", "k8s").unwrap())
        );
        assert_eq!(view.ips[&ip].identity, 300);

        view.apply_delete(&k, k.ip(ip).as_bytes());
        view.apply_delete(&k, k.identity_id(300).as_bytes());
        view.apply_delete(&k, k.node("n1").as_bytes());
        assert!(view.nodes.is_empty() && view.identities.is_empty() && view.ips.is_empty());
    }

    #[test]
    fn malformed_values_are_skipped_and_keep_what_was_there() {
        let k = keys();
        let mut view = ClusterView::default();
        view.apply_put(&k, k.node("n1").as_bytes(), &node_json("n1"));
        let before = view.clone();
        let bad: Vec<(String, Vec<u8>)> = vec![
            (k.node("n1"), b"{not json".to_vec()),
            (k.node("n1"), node_json("other")),
            (k.node("n2"), b"\xff\xfe".to_vec()),
            (k.identity_id(300), b"k8s:app=we b".to_vec()),
            (k.identity_id(301), b"\xff".to_vec()),
            (
                "ciliate/state/identities/v1/id/x".into(),
                b"k8s:app=web".to_vec(),
            ),
            (k.ip(Ipv4Addr::new(10, 0, 0, 1)), b"[]".to_vec()),
            (
                k.ip(Ipv4Addr::new(10, 0, 0, 1)),
                br#"{"ip":"10.0.0.2","identity":1,"node":"n","tunnelEndpoint":"1.1.1.1"}"#.to_vec(),
            ),
            ("ciliate/state/ip/v1/default/nope".into(), b"{}".to_vec()),
        ];
        for (key, value) in &bad {
            view.apply_put(&k, key.as_bytes(), value);
        }
        view.apply_put(&k, b"\xff\xff", b"x");
        view.apply_delete(&k, b"\xff\xff");
        view.apply_delete(&k, b"ciliate/state/identities/v1/id/x");
        assert_eq!(view, before);
    }
}
