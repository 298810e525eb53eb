//! CIDR identities: one numeric identity per prefix that a policy names, from 1<<24 up, and
//! the ipcache entries that map each prefix to it.
//!
//! Every prefix a rule names, its `except` prefixes included, gets its own identity. The
//! ipcache is a longest-prefix-match table, so an address resolves to the identity of the
//! longest named prefix holding it; a rule `cidr: C, except: [E]` then selects exactly the
//! identities whose prefix lies inside `C` and outside every `E`, and that is exact per
//! address: the carving is done by the LPM, not by splitting prefixes. Addresses in no named
//! prefix are `world` (2), which is also the identity of `0.0.0.0/0` and `::/0`.
//!
//! Identities stay with their prefix for as long as some policy names it, so that updates do
//! not renumber the ipcache under live traffic; released numbers are reused lowest first.

use std::collections::{BTreeMap, BTreeSet};

use ciliate_model::identity::{NumericIdentity, ReservedIdentity, MIN_CIDR_IDENTITY};
use ciliate_model::labels::{Label, Labels, SOURCE_RESERVED};
use ciliate_model::policy::IpcacheEntry;
use ipnet::IpNet;

/// The label source of CIDR identities' labels (`cidr:10.0.0.0/8`).
pub const SOURCE_CIDR: &str = "cidr";

/// The allocation of CIDR identities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrIdentities {
    by_prefix: BTreeMap<IpNet, NumericIdentity>,
    by_id: BTreeMap<NumericIdentity, IpNet>,
}

impl CidrIdentities {
    /// An empty allocation.
    pub fn new() -> Self {
        Self::default()
    }

    /// An allocation restored from a saved one (e.g. the agent's state after a restart), so
    /// that prefixes keep their numbers. Entries outside the CIDR range, for `/0`, or reusing a
    /// number are skipped.
    pub fn restore(entries: impl IntoIterator<Item = IpcacheEntry>) -> Self {
        let mut out = Self::new();
        out.adopt(entries);
        out
    }

    /// Adds saved numbers for prefixes not allocated yet (e.g. the pinned ipcache's, for the
    /// addresses of a restored FQDN cache), skipping any that clash with what is there.
    pub fn adopt(&mut self, entries: impl IntoIterator<Item = IpcacheEntry>) {
        for e in entries {
            let prefix = e.prefix.trunc();
            if e.identity < MIN_CIDR_IDENTITY
                || prefix.prefix_len() == 0
                || self.by_id.contains_key(&e.identity)
                || self.by_prefix.contains_key(&prefix)
            {
                continue;
            }
            self.by_prefix.insert(prefix, e.identity);
            self.by_id.insert(e.identity, prefix);
        }
    }

    /// Makes the allocation hold exactly `wanted` (less `/0`, which is world): keeps the
    /// numbers of prefixes already there, frees the others, numbers the new ones.
    pub fn sync(&mut self, wanted: &BTreeSet<IpNet>) {
        let wanted: BTreeSet<IpNet> = wanted
            .iter()
            .map(IpNet::trunc)
            .filter(|p| p.prefix_len() > 0)
            .collect();
        let stale: Vec<IpNet> = self
            .by_prefix
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for p in stale {
            if let Some(id) = self.by_prefix.remove(&p) {
                self.by_id.remove(&id);
            }
        }
        for p in wanted {
            self.insert(p);
        }
    }

    /// Allocates `prefix` (less `/0`) if it is not; the lowest free number.
    pub fn insert(&mut self, prefix: IpNet) {
        let prefix = prefix.trunc();
        if prefix.prefix_len() == 0 || self.by_prefix.contains_key(&prefix) {
            return;
        }
        let id = self.lowest_free();
        self.by_prefix.insert(prefix, id);
        self.by_id.insert(id, prefix);
    }

    /// Frees `prefix`'s number, if allocated.
    pub fn remove(&mut self, prefix: &IpNet) {
        if let Some(id) = self.by_prefix.remove(&prefix.trunc()) {
            self.by_id.remove(&id);
        }
    }

    /// The lowest number not in use: past the highest when none below is free (numbers taken
    /// in a row, the usual case: O(log n)), else the first gap.
    fn lowest_free(&self) -> NumericIdentity {
        let Some((&last, _)) = self.by_id.last_key_value() else {
            return MIN_CIDR_IDENTITY;
        };
        // Every number here is at least MIN_CIDR_IDENTITY (adopt and insert see to it).
        if u64::from(last - MIN_CIDR_IDENTITY) + 1 == self.by_id.len() as u64 {
            return last + 1;
        }
        let mut next = MIN_CIDR_IDENTITY;
        for id in self.by_id.range(MIN_CIDR_IDENTITY..).map(|(id, _)| *id) {
            if id != next {
                break;
            }
            next += 1;
        }
        next
    }

    /// The identity of a prefix (world for `/0`), if allocated.
    pub fn identity(&self, prefix: &IpNet) -> Option<NumericIdentity> {
        let prefix = prefix.trunc();
        if prefix.prefix_len() == 0 {
            return Some(ReservedIdentity::World.id());
        }
        self.by_prefix.get(&prefix).copied()
    }

    /// The prefix of a CIDR identity.
    pub fn prefix(&self, id: NumericIdentity) -> Option<IpNet> {
        self.by_id.get(&id).copied()
    }

    /// `(identity, prefix)` in identity order.
    pub fn iter(&self) -> impl Iterator<Item = (NumericIdentity, IpNet)> + '_ {
        self.by_id.iter().map(|(id, p)| (*id, *p))
    }

    /// The ipcache entries, in prefix order.
    pub fn ipcache(&self) -> Vec<IpcacheEntry> {
        self.by_prefix
            .iter()
            .map(|(prefix, identity)| IpcacheEntry {
                prefix: *prefix,
                identity: *identity,
            })
            .collect()
    }

    /// The identity an address has as far as CIDR identities go: that of the longest allocated
    /// prefix holding it, else world. (Endpoints and nodes have longer, /32, entries in the
    /// agent's ipcache; this is the part policy adds.)
    pub fn lookup(&self, ip: std::net::IpAddr) -> NumericIdentity {
        self.by_prefix
            .iter()
            .filter(|(p, _)| p.contains(&ip))
            .max_by_key(|(p, _)| p.prefix_len())
            .map_or(ReservedIdentity::World.id(), |(_, id)| *id)
    }
}

/// The labels of a CIDR identity: `cidr:<prefix>` and `reserved:world`, as Cilium labels
/// them, so that selectors on `reserved:world` select them too. In IPv6 prefixes ':' is
/// written '-' so that the label reads back as one label.
pub fn cidr_labels(prefix: &IpNet) -> Labels {
    let key = prefix.to_string().replace(':', "-");
    [
        Label::new(SOURCE_CIDR, &key, ""),
        Label::new(SOURCE_RESERVED, ReservedIdentity::World.name(), ""),
    ]
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn numbers_are_stable_and_reused() {
        let mut c = CidrIdentities::new();
        c.sync(&[net("10.0.0.0/8"), net("10.1.0.0/16"), net("0.0.0.0/0")].into());
        assert_eq!(c.identity(&net("10.0.0.0/8")), Some(MIN_CIDR_IDENTITY));
        assert_eq!(c.identity(&net("10.1.0.0/16")), Some(MIN_CIDR_IDENTITY + 1));
        assert_eq!(c.identity(&net("0.0.0.0/0")), Some(2));
        c.sync(&[net("10.1.0.0/16"), net("192.168.0.0/24")].into());
        assert_eq!(c.identity(&net("10.1.0.0/16")), Some(MIN_CIDR_IDENTITY + 1));
        assert_eq!(c.identity(&net("192.168.0.0/24")), Some(MIN_CIDR_IDENTITY));
        assert_eq!(c.identity(&net("10.0.0.0/8")), None);
        assert_eq!(c.lookup("10.1.2.3".parse().unwrap()), MIN_CIDR_IDENTITY + 1);
        assert_eq!(c.lookup("10.2.2.3".parse().unwrap()), 2);
        let restored = CidrIdentities::restore(c.ipcache());
        assert_eq!(restored, c);
    }

    #[test]
    fn labels() {
        assert_eq!(
            cidr_labels(&net("10.0.0.0/8")).to_string(),
            "cidr:10.0.0.0/8,reserved:world"
        );
        assert_eq!(
            cidr_labels(&net("2001:db8::/32")).to_string(),
            "cidr:2001-db8--/32,reserved:world"
        );
    }
}
