//! Address management for the node's pod CIDR. Pure: no I/O, the caller persists.
//!
//! Three addresses of the CIDR are never handed out: the network address, the first host
//! address (kept for the node's router IP, which a later routing mode needs) and the broadcast
//! address. Addresses are handed out round-robin from a cursor that is persisted with the
//! allocations, so an address released a moment ago is the last one to be reused: a peer that
//! still holds connection state or a cached DNS answer for the old pod does not reach a new one.

use std::collections::{btree_map, BTreeMap};
use std::net::Ipv4Addr;

use ciliate_model::api::IpamStatus;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Longest prefix a pod CIDR may have: a /30 leaves one address for pods.
pub const MAX_PREFIX_LEN: u8 = 30;

/// Why an address could not be allocated or the allocator not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The CIDR is too small to hold any pod.
    #[error(
        "pod CIDR {0} is too small: the prefix must be /{MAX_PREFIX_LEN} or shorter, because the \
         network, router and broadcast addresses are reserved"
    )]
    TooSmall(Ipv4Net),
    /// Every usable address is allocated.
    #[error(
        "no free address in pod CIDR {cidr} (all {capacity} addresses are in use); delete unused \
         pods or garbage-collect stale endpoints, or give the node a larger --pod-cidr"
    )]
    Exhausted {
        /// The node's pod CIDR.
        cidr: Ipv4Net,
        /// How many addresses it holds for pods.
        capacity: u32,
    },
    /// Persisted allocations do not fit the configured CIDR (the CIDR was changed while pods
    /// were running): starting would orphan live addresses.
    #[error(
        "the pod CIDR changed from {persisted} to {configured}, but {count} address(es) allocated \
         from {persisted} are still in use (e.g. {example} by container {owner}); delete those \
         pods first or start the agent with --pod-cidr {persisted}"
    )]
    CidrChanged {
        /// The CIDR the allocations were made from.
        persisted: Ipv4Net,
        /// The CIDR the agent was started with.
        configured: Ipv4Net,
        /// How many allocations do not fit.
        count: usize,
        /// One of them.
        example: Ipv4Addr,
        /// Who holds it.
        owner: String,
    },
    /// A persisted allocation names an address that may never be handed out.
    #[error(
        "persisted allocation {ip} (container {owner}) is a reserved address of pod CIDR {cidr} \
         (network, router or broadcast)"
    )]
    ReservedAllocated {
        /// The address.
        ip: Ipv4Addr,
        /// Who holds it.
        owner: String,
        /// The node's pod CIDR.
        cidr: Ipv4Net,
    },
}

/// What is persisted of the allocator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamSnapshot {
    /// Address → container id holding it.
    pub allocations: BTreeMap<Ipv4Addr, String>,
    /// The next address to try; `None` on a fresh node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Ipv4Addr>,
}

/// The allocator of one pod CIDR.
#[derive(Clone, Debug)]
pub struct Ipam {
    cidr: Ipv4Net,
    /// Offset (from the network address) → owner.
    allocated: BTreeMap<u32, String>,
    /// Offset of the next address to try.
    cursor: u32,
}

impl Ipam {
    /// An empty allocator for `cidr` (host bits are ignored).
    pub fn new(cidr: Ipv4Net) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > MAX_PREFIX_LEN {
            return Err(IpamError::TooSmall(cidr));
        }
        Ok(Self {
            cidr,
            allocated: BTreeMap::new(),
            cursor: Self::first_offset(),
        })
    }

    /// Rebuilds the allocator from persisted allocations. `persisted_cidr` is the CIDR they were
    /// made from (it names the old CIDR in the error when it changed).
    pub fn restore(
        cidr: Ipv4Net,
        persisted_cidr: Option<Ipv4Net>,
        snap: &IpamSnapshot,
    ) -> Result<Self, IpamError> {
        let mut ipam = Self::new(cidr)?;
        let outside: Vec<(&Ipv4Addr, &String)> = snap
            .allocations
            .iter()
            .filter(|(ip, _)| !ipam.cidr.contains(*ip))
            .collect();
        if let Some((ip, owner)) = outside.first() {
            return Err(IpamError::CidrChanged {
                persisted: persisted_cidr.unwrap_or_else(|| Ipv4Net::from(**ip)),
                configured: ipam.cidr,
                count: outside.len(),
                example: **ip,
                owner: (*owner).clone(),
            });
        }
        for (ip, owner) in &snap.allocations {
            let off = ipam.offset(*ip);
            if !ipam.is_usable(off) {
                return Err(IpamError::ReservedAllocated {
                    ip: *ip,
                    owner: owner.clone(),
                    cidr: ipam.cidr,
                });
            }
            ipam.allocated.insert(off, owner.clone());
        }
        // A cursor from another CIDR (or a reserved address) means nothing here: start over.
        if let Some(c) = snap.cursor.filter(|c| ipam.cidr.contains(c)) {
            let off = ipam.offset(c);
            if ipam.is_usable(off) {
                ipam.cursor = off;
            }
        }
        Ok(ipam)
    }

    /// What to persist.
    pub fn snapshot(&self) -> IpamSnapshot {
        IpamSnapshot {
            allocations: self
                .allocated
                .iter()
                .map(|(off, owner)| (self.addr(*off), owner.clone()))
                .collect(),
            cursor: Some(self.addr(self.cursor)),
        }
    }

    /// The pod CIDR.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The address kept for the node's router (the first host address).
    pub fn router_ip(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// How many addresses can be handed out in all.
    pub fn capacity(&self) -> u32 {
        self.size() - 3
    }

    /// How many are handed out.
    pub fn allocated(&self) -> u32 {
        // At most 2^30 entries fit a /2; the map never holds more than `capacity`.
        u32::try_from(self.allocated.len()).unwrap_or(u32::MAX)
    }

    /// Usage, as `GET /v1/status` shows it.
    pub fn status(&self) -> IpamStatus {
        IpamStatus {
            cidr: self.cidr,
            allocated: self.allocated(),
            capacity: self.capacity(),
        }
    }

    /// Who holds `ip`, if anyone.
    pub fn owner(&self, ip: Ipv4Addr) -> Option<&str> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        self.allocated.get(&self.offset(ip)).map(String::as_str)
    }

    /// Hands out the next free address, round-robin from the cursor, to `owner`.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let (first, last) = (Self::first_offset(), self.last_offset());
        let span = last - first + 1;
        let start = self.cursor.clamp(first, last);
        for i in 0..span {
            let off = first + (start - first + i) % span;
            if let btree_map::Entry::Vacant(slot) = self.allocated.entry(off) {
                slot.insert(owner.to_owned());
                self.cursor = if off == last { first } else { off + 1 };
                return Ok(self.addr(off));
            }
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr,
            capacity: self.capacity(),
        })
    }

    /// Gives `ip` back; returns its owner. Releasing an address that is not allocated (or not
    /// in the CIDR) does nothing, so a retried delete is harmless.
    pub fn release(&mut self, ip: Ipv4Addr) -> Option<String> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let off = self.offset(ip);
        self.allocated.remove(&off)
    }

    /// Number of addresses in the CIDR (a /2 or longer prefix always fits a u32 count).
    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.cidr.prefix_len()))
    }

    /// Offset 0 is the network address, 1 the router.
    fn first_offset() -> u32 {
        2
    }

    /// The last offset is the broadcast address.
    fn last_offset(&self) -> u32 {
        self.size() - 2
    }

    fn is_usable(&self, off: u32) -> bool {
        (Self::first_offset()..=self.last_offset()).contains(&off)
    }

    fn offset(&self, ip: Ipv4Addr) -> u32 {
        u32::from(ip) - u32::from(self.cidr.network())
    }

    fn addr(&self, off: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    #[test]
    fn reserves_network_router_and_broadcast() {
        let mut ipam = Ipam::new(net("10.0.0.0/29")).expect("valid");
        assert_eq!(ipam.capacity(), 5);
        assert_eq!(ipam.router_ip(), ip("10.0.0.1"));
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}")).expect("free"))
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
                .map(ip)
                .to_vec()
        );
        let err = ipam.allocate("c5").expect_err("full");
        assert!(
            matches!(err, IpamError::Exhausted { capacity: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10.0.0.0/29"), "{err}");
    }

    #[test]
    fn smallest_cidr_has_one_address_and_longer_prefixes_are_refused() {
        let mut ipam = Ipam::new(net("10.0.0.4/30")).expect("valid");
        assert_eq!(ipam.capacity(), 1);
        assert_eq!(ipam.allocate("a").expect("one"), ip("10.0.0.6"));
        assert!(ipam.allocate("b").is_err());
        assert_eq!(
            Ipam::new(net("10.0.0.0/31")).expect_err("too small"),
            IpamError::TooSmall(net("10.0.0.0/31"))
        );
        assert!(Ipam::new(net("10.0.0.1/32")).is_err());
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let mut ipam = Ipam::new(net("10.0.0.0/24")).expect("valid");
        let a = ipam.allocate("a").expect("free");
        assert_eq!(ipam.release(a), Some("a".to_owned()));
        let b = ipam.allocate("b").expect("free");
        assert_ne!(a, b);
        assert_eq!(b, ip("10.0.0.3"));
    }

    #[test]
    fn cursor_wraps_around_to_free_addresses() {
        let mut ipam = Ipam::new(net("10.0.0.0/29")).expect("valid");
        for i in 0..5 {
            ipam.allocate(&i.to_string()).expect("free");
        }
        ipam.release(ip("10.0.0.3"));
        assert_eq!(ipam.allocate("x").expect("one free"), ip("10.0.0.3"));
    }

    #[test]
    fn release_is_idempotent_and_ignores_foreign_addresses() {
        let mut ipam = Ipam::new(net("10.0.0.0/24")).expect("valid");
        let a = ipam.allocate("a").expect("free");
        assert!(ipam.release(a).is_some());
        assert!(ipam.release(a).is_none());
        assert!(ipam.release(ip("192.168.1.1")).is_none());
        assert_eq!(ipam.allocated(), 0);
    }

    #[test]
    fn restore_keeps_allocations_and_cursor() {
        let mut ipam = Ipam::new(net("10.0.0.0/24")).expect("valid");
        for i in 0..10 {
            ipam.allocate(&format!("c{i}")).expect("free");
        }
        ipam.release(ip("10.0.0.5"));
        let snap = ipam.snapshot();
        let mut back =
            Ipam::restore(net("10.0.0.0/24"), Some(net("10.0.0.0/24")), &snap).expect("restores");
        assert_eq!(back.snapshot(), snap);
        assert_eq!(back.owner(ip("10.0.0.2")), Some("c0"));
        // The cursor survives: the next address continues the sequence, not the hole at .5.
        assert_eq!(back.allocate("new").expect("free"), ip("10.0.0.12"));
    }

    #[test]
    fn restore_refuses_a_cidr_change_that_orphans_allocations() {
        let mut old = Ipam::new(net("10.0.0.0/24")).expect("valid");
        old.allocate("c0").expect("free");
        let snap = old.snapshot();
        let err = Ipam::restore(net("10.1.0.0/24"), Some(net("10.0.0.0/24")), &snap)
            .expect_err("orphans");
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.0/24") && msg.contains("10.1.0.0/24") && msg.contains("c0"),
            "{msg}"
        );
        // A change that keeps every allocation inside (a larger CIDR) is fine.
        let bigger =
            Ipam::restore(net("10.0.0.0/16"), Some(net("10.0.0.0/24")), &snap).expect("fits");
        assert_eq!(bigger.owner(ip("10.0.0.2")), Some("c0"));
        // Without allocations any change is fine, and the foreign cursor is dropped.
        let empty = IpamSnapshot {
            allocations: BTreeMap::new(),
            cursor: Some(ip("10.0.0.9")),
        };
        let mut moved = Ipam::restore(net("10.1.0.0/24"), Some(net("10.0.0.0/24")), &empty)
            .expect("no allocations");
        assert_eq!(moved.allocate("a").expect("free"), ip("10.1.0.2"));
    }

    #[test]
    fn restore_refuses_reserved_addresses() {
        for reserved in ["10.0.0.0", "10.0.0.1", "10.0.0.255"] {
            let snap = IpamSnapshot {
                allocations: [(ip(reserved), "c".to_owned())].into(),
                cursor: None,
            };
            let err = Ipam::restore(net("10.0.0.0/24"), None, &snap).expect_err("reserved");
            assert!(
                matches!(err, IpamError::ReservedAllocated { .. }),
                "{reserved}: {err}"
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc,
        Release(usize),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Alloc),
            2 => (0usize..64).prop_map(Op::Release),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        /// Whatever the sequence of allocations, releases and restarts, no address is ever held
        /// twice, none is reserved, and allocation fails only when the CIDR is full.
        #[test]
        fn never_hands_out_an_address_twice(prefix in 26u8..=30, ops in proptest::collection::vec(op(), 0..200)) {
            let cidr = Ipv4Net::new(Ipv4Addr::new(10, 9, 8, 0), prefix).expect("valid prefix").trunc();
            let mut ipam = Ipam::new(cidr).expect("valid");
            let mut live: BTreeSet<Ipv4Addr> = BTreeSet::new();
            let mut n = 0u32;
            for op in ops {
                match op {
                    Op::Alloc => {
                        n += 1;
                        match ipam.allocate(&format!("c{n}")) {
                            Ok(a) => {
                                prop_assert!(live.insert(a), "{a} handed out twice");
                                prop_assert!(cidr.contains(&a));
                                prop_assert!(a != cidr.network() && a != cidr.broadcast() && a != ipam.router_ip());
                            }
                            Err(IpamError::Exhausted { .. }) => {
                                prop_assert_eq!(live.len() as u32, ipam.capacity());
                            }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Release(i) => {
                        if let Some(a) = live.iter().nth(i % live.len().max(1)).copied() {
                            prop_assert!(ipam.release(a).is_some());
                            live.remove(&a);
                        }
                    }
                    Op::Restart => {
                        ipam = Ipam::restore(cidr, Some(cidr), &ipam.snapshot()).expect("own snapshot restores");
                    }
                }
                prop_assert_eq!(ipam.allocated() as usize, live.len());
            }
        }

        /// A released address comes back only after every other free address was handed out.
        #[test]
        fn round_robin_delays_reuse(prefix in 26u8..=29) {
            let cidr = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), prefix).expect("valid prefix");
            let mut ipam = Ipam::new(cidr).expect("valid");
            let first = ipam.allocate("a").expect("free");
            ipam.release(first);
            for i in 1..ipam.capacity() {
                let a = ipam.allocate(&i.to_string()).expect("free");
                prop_assert_ne!(a, first);
            }
            prop_assert_eq!(ipam.allocate("last").expect("free"), first);
        }
    }
}
