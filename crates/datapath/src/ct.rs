//! Conntrack records as the API shows them.

use std::net::Ipv4Addr;

use ciliate_model::api::CtEntry;

use crate::abi::{CtEntry4, CtKey4, CT_EGRESS, CT_INGRESS, CT_SERVICE};
use crate::events::tcp_flag_names;

/// The API view of one conntrack entry; `now` is CLOCK_MONOTONIC in seconds.
pub fn to_api(k: &CtKey4, v: &CtEntry4, now: i64) -> CtEntry {
    let proto = match k.proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        1 => "icmp".to_owned(),
        p => p.to_string(),
    };
    CtEntry {
        proto,
        src: Ipv4Addr::from(k.saddr),
        sport: u16::from_be_bytes(k.sport),
        dst: Ipv4Addr::from(k.daddr),
        dport: u16::from_be_bytes(k.dport),
        direction: match k.dir {
            CT_EGRESS => "egress",
            CT_INGRESS => "ingress",
            // The endpoint's connection to a VIP, with its backend (per-packet LB).
            CT_SERVICE => "service",
            _ => "unknown",
        }
        .to_owned(),
        expires_in: v.expires as i64 - now,
        tx_packets: v.tx_packets,
        tx_bytes: v.tx_bytes,
        rx_packets: v.rx_packets,
        rx_bytes: v.rx_bytes,
        flags: tcp_flag_names(v.tx_flags | v.rx_flags),
        src_identity: v.src_identity,
    }
}
