//! What this node wants in etcd (its node record, identity references and IPs), kept in
//! memory, and the fixes that make etcd match it after a reconnect or a lost lease.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ciliate_model::identity::NumericIdentity;

use crate::keys::{Keys, StateKey};
use crate::{IpEntry, KvError, NodeRecord};

/// This node's desired keys.
#[derive(Debug, Default)]
pub(crate) struct Owned {
    /// The registered node record.
    pub(crate) node: Option<NodeRecord>,
    /// Held identities by canonical label set.
    pub(crate) refs: BTreeMap<String, Held>,
    /// Published endpoint addresses.
    pub(crate) ips: BTreeMap<Ipv4Addr, IpEntry>,
}

/// One held identity: its number and how many local users hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// The number etcd gave the label set.
    pub(crate) id: NumericIdentity,
    /// Allocations not yet released on this node.
    pub(crate) count: u32,
}

/// One key as listed from etcd.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listed<'a> {
    /// The whole key.
    pub(crate) key: &'a [u8],
    /// Its value.
    pub(crate) value: &'a [u8],
    /// The lease it is attached to (0 = none).
    pub(crate) lease: i64,
}

/// One step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fix {
    /// Put `value` at `key` with the current lease.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete a key of ours nobody wants any more.
    Delete {
        /// The key.
        key: String,
    },
    /// Write this node's reference to a label set again (through the allocator, which also
    /// brings back a master key that was collected meanwhile).
    RestoreRef {
        /// The canonical label set.
        labels: String,
        /// The number held so far.
        id: NumericIdentity,
    },
}

impl Owned {
    /// The fixes that make `listing` (everything under `<prefix>/state/`) hold this node's
    /// desired keys on `lease`, and nothing else of ours on that lease.
    pub(crate) fn plan(
        &self,
        keys: &Keys,
        node: &str,
        lease: i64,
        listing: &[Listed<'_>],
    ) -> Result<Vec<Fix>, KvError> {
        let listed: BTreeMap<&[u8], &Listed<'_>> = listing.iter().map(|l| (l.key, l)).collect();
        let is_current = |key: &str, value: &[u8]| {
            listed
                .get(key.as_bytes())
                .is_some_and(|l| l.value == value && l.lease == lease)
        };
        let mut fixes = Vec::new();

        let mut wanted: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(record) = &self.node {
            wanted.push((keys.node(node), encode(record, "node record")?));
        }
        for entry in self.ips.values() {
            wanted.push((keys.ip(entry.ip), encode(entry, "IP entry")?));
        }
        for (key, value) in wanted {
            if !is_current(&key, &value) {
                fixes.push(Fix::Put { key, value });
            }
        }
        for (labels, held) in &self.refs {
            let key = keys.identity_ref(labels, node);
            if !is_current(&key, held.id.to_string().as_bytes()) {
                fixes.push(Fix::RestoreRef {
                    labels: labels.clone(),
                    id: held.id,
                });
            }
        }

        // Keys on our lease that we no longer want: deletes that failed while etcd was away.
        let ips: BTreeSet<Ipv4Addr> = self.ips.keys().copied().collect();
        for l in listing.iter().filter(|l| lease != 0 && l.lease == lease) {
            let Ok(key) = std::str::from_utf8(l.key) else {
                continue;
            };
            let stale = match keys.parse(key) {
                Ok(StateKey::Node(name)) => name == node && self.node.is_none(),
                Ok(StateKey::Ip(ip)) => !ips.contains(&ip),
                Ok(StateKey::IdentityRef { labels, node: n }) => {
                    n == node && !self.refs.contains_key(&labels)
                }
                _ => false,
            };
            if stale {
                fixes.push(Fix::Delete { key: key.into() });
            }
        }
        Ok(fixes)
    }
}

/// JSON of a record.
pub(crate) fn encode<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, KvError> {
    serde_json::to_vec(value).map_err(|source| KvError::Encode {
        what: what.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: i64 = 7;

    fn node() -> NodeRecord {
        NodeRecord {
            name: "n1".into(),
            underlay_ip: Ipv4Addr::new(192, 168, 0, 1),
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
            health: "ok".into(),
            boot_id: "b".into(),
            hubble_address: String::new(),
        }
    }

    fn entry(last: u8) -> IpEntry {
        IpEntry {
            ip: Ipv4Addr::new(10, 1, 0, last),
            identity: 300,
            node: "n1".into(),
            tunnel_endpoint: Ipv4Addr::new(192, 168, 0, 1),
            namespace: String::new(),
            pod_name: String::new(),
        }
    }

    fn owned() -> Owned {
        let mut o = Owned {
            node: Some(node()),
            ..Owned::default()
        };
        o.ips.insert(entry(5).ip, entry(5));
        o.refs
            .insert("k8s:app=web".into(), Held { id: 300, count: 2 });
        o
    }

    #[test]
    fn empty_etcd_gets_everything() {
        let k = Keys::new("ciliate");
        let fixes = owned().plan(&k, "n1", LEASE, &[]).unwrap();
        assert_eq!(
            fixes,
            vec![
                Fix::Put {
                    key: k.node("n1"),
                    value: encode(&node(), "").unwrap()
                },
                Fix::Put {
                    key: k.ip(entry(5).ip),
                    value: encode(&entry(5), "").unwrap()
                },
                Fix::RestoreRef {
                    labels: "k8s:app=web".into(),
                    id: 300
                },
            ]
        );
    }

    #[test]
    fn current_keys_need_nothing_and_stale_ones_on_our_lease_go() {
        let k = Keys::new("ciliate");
        let node_key = k.node("n1");
        let node_val = encode(&node(), "").unwrap();
        let ip_key = k.ip(entry(5).ip);
        let ip_val = encode(&entry(5), "").unwrap();
        let ref_key = k.identity_ref("k8s:app=web", "n1");
        let stale_ip = k.ip(entry(6).ip);
        let stale_ref = k.identity_ref("k8s:app=db", "n1");
        let other_lease_ip = k.ip(entry(7).ip);
        let other_node_ref = k.identity_ref("k8s:app=db", "n2");
        let listing = [
            Listed {
                key: node_key.as_bytes(),
                value: &node_val,
                lease: LEASE,
            },
            Listed {
                key: ip_key.as_bytes(),
                value: &ip_val,
                lease: LEASE,
            },
            Listed {
                key: ref_key.as_bytes(),
                value: b"300",
                lease: LEASE,
            },
            Listed {
                key: stale_ip.as_bytes(),
                value: b"{}",
                lease: LEASE,
            },
            Listed {
                key: stale_ref.as_bytes(),
                value: b"301",
                lease: LEASE,
            },
            Listed {
                key: other_lease_ip.as_bytes(),
                value: b"{}",
                lease: 99,
            },
            Listed {
                key: other_node_ref.as_bytes(),
                value: b"301",
                lease: LEASE,
            },
        ];
        let fixes = owned().plan(&k, "n1", LEASE, &listing).unwrap();
        assert_eq!(
            fixes,
            vec![
                Fix::Delete { key: stale_ip },
                Fix::Delete { key: stale_ref }
            ]
        );
    }

    #[test]
    fn keys_on_an_old_lease_or_with_old_values_are_rewritten() {
        let k = Keys::new("ciliate");
        let node_key = k.node("n1");
        let node_val = encode(&node(), "").unwrap();
        let ip_key = k.ip(entry(5).ip);
        let ref_key = k.identity_ref("k8s:app=web", "n1");
        let listing = [
            Listed {
                key: node_key.as_bytes(),
                value: &node_val,
                lease: 1,
            },
            Listed {
                key: ip_key.as_bytes(),
                value: b"{}",
                lease: LEASE,
            },
            Listed {
                key: ref_key.as_bytes(),
                value: b"299",
                lease: LEASE,
            },
        ];
        let fixes = owned().plan(&k, "n1", LEASE, &listing).unwrap();
        assert_eq!(fixes.len(), 3, "{fixes:?}");
        let mut deregistered = owned();
        deregistered.node = None;
        let listing = [Listed {
            key: node_key.as_bytes(),
            value: &node_val,
            lease: LEASE,
        }];
        let fixes = deregistered.plan(&k, "n1", LEASE, &listing).unwrap();
        assert!(fixes.contains(&Fix::Delete { key: node_key }), "{fixes:?}");
    }
}
