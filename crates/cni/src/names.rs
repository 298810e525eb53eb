//! Interface names derived from the attachment, so that DEL and GC find what ADD created without
//! any state of their own.

/// FNV-1a, 64 bits: tiny, stable across versions and platforms, and good enough to spread
/// container ids over 48 bits. Not for anything adversarial: a collision only makes ADD refuse.
pub fn fnv1a64(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    data.iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// 12 hex digits (the high 48 bits) of the hash of `<container id>/<ifname>`.
fn suffix(container_id: &str, ifname: &str) -> String {
    let hash = fnv1a64(format!("{container_id}/{ifname}").as_bytes());
    format!("{:012x}", hash >> 16)
}

/// The host side of the attachment's veth pair: `lxc` + 12 hex digits, 15 bytes, the longest
/// name Linux allows.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("lxc{}", suffix(container_id, ifname))
}

/// The name the pod side has in the node's namespace between its creation and its move into the
/// pod: unique per attachment, so concurrent ADDs of different containers never collide.
pub fn temp_ifname(container_id: &str, ifname: &str) -> String {
    format!("tmp{}", suffix(container_id, ifname))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn names_are_stable() {
        // Pinned: changing them would orphan the host veths of every running pod on upgrade.
        assert_eq!(host_ifname("3f6940ab5ab43bc5", "eth0"), "lxcba79e81e7fb7");
        assert_eq!(temp_ifname("3f6940ab5ab43bc5", "eth0"), "tmpba79e81e7fb7");
        assert_eq!(host_ifname("abc", "eth0"), "lxc561a69de51a6");
        assert_ne!(host_ifname("abc", "eth0"), host_ifname("abc", "net1"));
        assert_ne!(host_ifname("abc", "eth0"), host_ifname("abd", "eth0"));
    }

    proptest! {
        #[test]
        fn names_fit_linux_and_differ_in_prefix_only(cid in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,80}", ifname in "[a-z0-9]{1,15}") {
            let host = host_ifname(&cid, &ifname);
            let temp = temp_ifname(&cid, &ifname);
            prop_assert_eq!(host.len(), 15);
            prop_assert!(host.starts_with("lxc"));
            prop_assert!(host[3..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            prop_assert_eq!(&host[3..], &temp[3..]);
            prop_assert_eq!(host, host_ifname(&cid, &ifname));
        }
    }
}
