//! The packet marks of the L7 proxy, as `bpf/include/ciliate/abi.h` lays them out ("Packet
//! marks of the L7 proxy"): what the proxy sets with `SO_MARK` on the upstream connection it
//! opens for a client, and what the datapath puts on the packets it hands to the proxy.
//!
//! Bits 8..11 are the magic (Cilium's values). A to-proxy mark holds the proxy port in bits
//! 16..31. A from-proxy mark holds the client's security identity: bits 16..31 are identity
//! bits 0..15, bits 0..7 identity bits 16..23, bit 12 identity bit 24, so reserved, cluster
//! and CIDR identities (`1 << 24 | n`) all fit; nothing above 25 bits does.

use thiserror::Error;

/// The bits that say what a mark is.
pub const MAGIC_MASK: u32 = 0x0f00;
/// `MARK_MAGIC_TO_PROXY`: the datapath handed the packet to a proxy socket.
pub const MAGIC_TO_PROXY: u32 = 0x0200;
/// `MARK_MAGIC_PROXY_INGRESS`: the proxy's upstream traffic after an ingress rule.
pub const MAGIC_PROXY_INGRESS: u32 = 0x0a00;
/// `MARK_MAGIC_PROXY_EGRESS`: the proxy's upstream traffic after an egress rule.
pub const MAGIC_PROXY_EGRESS: u32 = 0x0b00;
const IDENTITY_BIT24: u32 = 0x1000;
/// The largest identity a from-proxy mark carries.
pub const MAX_IDENTITY: u32 = (1 << 25) - 1;
/// The routing table of the proxy's policy routing (`PROXY_ROUTE_TABLE`, Cilium's 2004).
pub const PROXY_ROUTE_TABLE: u32 = 2004;
/// The priority of its `ip rule` (`PROXY_RULE_PRIORITY`, Cilium's 9).
pub const PROXY_RULE_PRIORITY: u32 = 9;

/// Which rule sent a connection through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyDirection {
    /// An ingress rule of the server pod.
    Ingress,
    /// An egress rule of the client pod.
    Egress,
}

/// A decoded proxy mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMark {
    /// Handed by the datapath to the proxy's socket (listener on `port`, or 0 for an
    /// established connection's own socket).
    ToProxy {
        /// The proxy port, 0 when the packet went to an existing connection's socket.
        port: u16,
    },
    /// Sent by the proxy on behalf of a client.
    FromProxy {
        /// After which rule.
        direction: ProxyDirection,
        /// The client's security identity.
        identity: u32,
    },
}

/// An identity that does not fit in a mark.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("identity {0} cannot be carried in a proxy mark (at most {MAX_IDENTITY})")]
pub struct IdentityTooLarge(pub u32);

/// The mark the proxy sets (SO_MARK) on an upstream connection for a client of `identity`.
pub fn from_proxy(direction: ProxyDirection, identity: u32) -> Result<u32, IdentityTooLarge> {
    if identity > MAX_IDENTITY {
        return Err(IdentityTooLarge(identity));
    }
    let magic = match direction {
        ProxyDirection::Ingress => MAGIC_PROXY_INGRESS,
        ProxyDirection::Egress => MAGIC_PROXY_EGRESS,
    };
    let bit24 = if identity & (1 << 24) != 0 {
        IDENTITY_BIT24
    } else {
        0
    };
    Ok(magic | ((identity & 0xffff) << 16) | ((identity >> 16) & 0xff) | bit24)
}

/// The mark the datapath puts on a packet it hands to the proxy's listener on `port`.
pub fn to_proxy(port: u16) -> u32 {
    MAGIC_TO_PROXY | (u32::from(port) << 16)
}

/// What `mark` says, if it is a proxy mark.
pub fn decode(mark: u32) -> Option<ProxyMark> {
    let identity = || (mark >> 16) | ((mark & 0xff) << 16) | ((mark & IDENTITY_BIT24) << 12);
    match mark & MAGIC_MASK {
        MAGIC_TO_PROXY => Some(ProxyMark::ToProxy {
            // Bits 16..31 exactly: the shift leaves nothing above.
            port: u16::try_from(mark >> 16).unwrap_or(0),
        }),
        MAGIC_PROXY_INGRESS => Some(ProxyMark::FromProxy {
            direction: ProxyDirection::Ingress,
            identity: identity(),
        }),
        MAGIC_PROXY_EGRESS => Some(ProxyMark::FromProxy {
            direction: ProxyDirection::Egress,
            identity: identity(),
        }),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::abi::{MARK_GENERATED, MARK_HAIRPIN};

    #[test]
    fn every_kind_of_identity_round_trips() {
        for id in [
            1,
            2,
            255,
            256,
            300,
            0xffff,
            0x1_0000,
            0xff_ffff,
            1 << 24,
            (1 << 24) + 1,
            (1 << 24) + 0x12_3456,
            MAX_IDENTITY,
        ] {
            for dir in [ProxyDirection::Ingress, ProxyDirection::Egress] {
                let m = from_proxy(dir, id).unwrap();
                assert_eq!(
                    decode(m),
                    Some(ProxyMark::FromProxy {
                        direction: dir,
                        identity: id
                    }),
                    "{id:#x} {m:#x}"
                );
                assert_ne!(m & MAGIC_MASK, MAGIC_TO_PROXY, "never taken for to-proxy");
            }
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // Identity 0x01_23_4567 (a CIDR identity): low 16 bits on top, bits 16..23 at the
        // bottom, bit 24 at bit 12, the magic in bits 8..11.
        assert_eq!(
            from_proxy(ProxyDirection::Egress, 0x0123_4567).unwrap(),
            0x4567_1b23
        );
        assert_eq!(
            from_proxy(ProxyDirection::Ingress, 300).unwrap(),
            0x012c_0a00
        );
        assert_eq!(to_proxy(15001), 0x3a99_0200);
        assert_eq!(
            decode(0x3a99_0200),
            Some(ProxyMark::ToProxy { port: 15001 })
        );
    }

    #[test]
    fn identities_beyond_25_bits_are_refused_not_truncated() {
        assert_eq!(
            from_proxy(ProxyDirection::Egress, 1 << 25),
            Err(IdentityTooLarge(1 << 25))
        );
        assert!(from_proxy(ProxyDirection::Egress, u32::MAX).is_err());
    }

    #[test]
    fn other_marks_are_not_proxy_marks() {
        for m in [0, MARK_GENERATED, MARK_HAIRPIN, 0x0100, 0x0c00] {
            assert_eq!(decode(m), None, "{m:#x}");
        }
    }
}
