//! Rust mirrors of `bpf/include/ciliate/abi.h`, one per C struct, with compile-time size and
//! offset checks: a mismatch fails the build instead of corrupting a map.

use std::mem::{align_of, offset_of, size_of};

/// Map names, as the kernel knows them and as they are pinned.
pub mod maps {
    /// Connection tracking (LRU hash).
    pub const CT4: &str = "cil_ct4";
    /// Pod address → endpoint.
    pub const LXC4: &str = "cil_lxc4";
    /// Host veth ifindex → endpoint.
    pub const LXC_IFX: &str = "cil_lxc_ifx";
    /// Event ring buffer.
    pub const EVENTS: &str = "cil_events";
    /// Per-CPU packet counters by direction and reason.
    pub const METRICS: &str = "cil_metrics";
    /// Service frontends and their backend slots.
    pub const LB4_SVC: &str = "cil_lb4_svc";
    /// Backends by id.
    pub const LB4_BE: &str = "cil_lb4_be";
    /// Reverse NAT by index.
    pub const LB4_RNAT: &str = "cil_lb4_rnat";
    /// ClientIP session affinity.
    pub const LB4_AFF: &str = "cil_lb4_aff";
    /// Socket LB reverse translations.
    pub const LB4_SK: &str = "cil_lb4_sk";
    /// Every endpoint's policy (LPM trie).
    pub const POLICY: &str = "cil_policy";
    /// What each policy entry allowed, per CPU, under the entry's key (per-CPU hash).
    pub const POLICY_STATS: &str = "cil_pol_stats";
    /// Prefix → identity (LPM trie).
    pub const IPCACHE4: &str = "cil_ipcache4";
    /// The node's configuration for the programs (one-entry array).
    pub const NODE_CFG: &str = "cil_node_cfg";
    /// Masquerading translations, both ways.
    pub const SNAT4: &str = "cil_snat4";
    /// Destinations never masqueraded.
    pub const NOMASQ4: &str = "cil_nomasq4";
    /// Every pinned map of the node.
    pub const ALL: [&str; 14] = [
        CT4,
        LXC4,
        LXC_IFX,
        EVENTS,
        METRICS,
        LB4_SVC,
        LB4_BE,
        LB4_RNAT,
        LB4_AFF,
        LB4_SK,
        POLICY,
        POLICY_STATS,
        IPCACHE4,
        NODE_CFG,
    ];
}

/// `endpoint_info.flags`: ingress under policy.
pub const EP_F_INGRESS_ENFORCED: u16 = 0x01;
/// `endpoint_info.flags`: egress under policy.
pub const EP_F_EGRESS_ENFORCED: u16 = 0x02;
/// `endpoint_info.flags`: the policy entries in force are generation 1.
pub const EP_F_POLICY_V1: u16 = 0x04;
/// `POLICY_PREFIX_ANY_PROTO`: bits of the key always matched.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 64;
/// `POLICY_F_DENY`.
pub const POLICY_F_DENY: u8 = 0x01;
/// `EVENT_POLICY_VERDICT`.
pub const EVENT_POLICY_VERDICT: u8 = 5;
/// `EVENT_F_MATCH_MASK`.
pub const EVENT_F_MATCH_MASK: u8 = 0x07;
/// `EVENT_F_EGRESS`.
pub const EVENT_F_EGRESS: u8 = 0x08;
/// `POLICY_MAP_SIZE`.
pub const POLICY_MAP_SIZE: u32 = 524_288;
/// `IPCACHE_MAP_SIZE`.
pub const IPCACHE_MAP_SIZE: u32 = 524_288;

/// `CT_SERVICE`: the remembered backend of an endpoint's connection to a VIP.
pub const CT_SERVICE: u8 = 2;
/// `LB_SERVICE_MAP_SIZE`.
pub const LB_SERVICE_MAP_SIZE: u32 = 262_144;
/// `LB_BACKEND_MAP_SIZE`.
pub const LB_BACKEND_MAP_SIZE: u32 = 131_072;
/// `SVC_F_AFFINITY`.
pub const SVC_F_AFFINITY: u8 = 0x01;
/// `BE_STATE_ACTIVE`.
pub const BE_STATE_ACTIVE: u8 = 0;
/// `BE_STATE_TERMINATING`.
pub const BE_STATE_TERMINATING: u8 = 1;
/// `MARK_GENERATED`.
pub const MARK_GENERATED: u32 = 0x0c1a_0001;
/// `MARK_HAIRPIN`: a Service packet from a pod to itself, let into the pod as it is.
pub const MARK_HAIRPIN: u32 = 0x0c1a_0002;
/// `MARK_MAGIC_OVERLAY`: a packet the datapath handed to the VXLAN device (Cilium's value).
pub const MARK_MAGIC_OVERLAY: u32 = 0x0400;

/// `CT_MAP_SIZE`.
pub const CT_MAP_SIZE: u32 = 262_144;
/// `LXC_MAP_SIZE`.
pub const LXC_MAP_SIZE: u32 = 65_536;
/// `METRICS_MAP_SIZE`: direction * 256 + reason.
pub const METRICS_SLOTS: u32 = 512;
/// Metrics direction: towards the endpoint.
pub const METRIC_INGRESS: u32 = 0;
/// Metrics direction: from the endpoint.
pub const METRIC_EGRESS: u32 = 1;
/// The `cil_metrics` slot counting events lost to a full ring buffer (`METRIC_EVENTS_LOST`).
pub const METRIC_EVENTS_LOST_SLOT: u32 = 255;
/// The `cil_metrics` slot counting packets handed to the L7 proxy's sockets (`METRIC_TO_PROXY`).
pub const METRIC_TO_PROXY_SLOT: u32 = 254;

/// `CT_EGRESS`: the endpoint opened the connection.
pub const CT_EGRESS: u8 = 0;
/// `CT_INGRESS`: the connection was opened towards the endpoint.
pub const CT_INGRESS: u8 = 1;

/// `ct_entry4.state` bits.
pub mod ct_state {
    /// FIN seen in the original direction.
    pub const TX_CLOSING: u8 = 0x01;
    /// FIN seen in the reply direction.
    pub const RX_CLOSING: u8 = 0x02;
    /// RST seen.
    pub const RESET: u8 = 0x04;
    /// A reply was seen.
    pub const REPLIED: u8 = 0x08;
    /// `CT_F_TO_PROXY`: the original direction goes to the L7 proxy on `proxy_port`.
    pub const TO_PROXY: u8 = 0x10;
    /// `CT_F_FROM_PROXY`: the proxy opened it for a client; replies go to its socket.
    pub const FROM_PROXY: u8 = 0x20;
}

/// Conntrack verdicts carried in events.
pub mod ct_result {
    /// Not tracked.
    pub const NONE: u8 = 0;
    /// First packet of a connection.
    pub const NEW: u8 = 1;
    /// Original direction of a known connection.
    pub const ESTABLISHED: u8 = 2;
    /// Reply direction of a known connection.
    pub const REPLY: u8 = 3;
}

/// `EVENT_DROP`.
pub const EVENT_DROP: u8 = 1;
/// `EVENT_TRACE`.
pub const EVENT_TRACE: u8 = 4;
/// `TRACE_TO_OVERLAY`: a pod's packet handed to the VXLAN device for another node.
pub const TRACE_TO_OVERLAY: u8 = 4;
/// `DROP_CT_UNKNOWN`: an ICMP error quoting no connection of the endpoint, refused by its
/// policy (Hubble's "Unknown connection tracking state").
pub const DROP_CT_UNKNOWN: u8 = 163;
/// `DROP_NO_TUNNEL_KEY`: a packet from the overlay whose sender's identity is missing.
pub const DROP_NO_TUNNEL_KEY: u8 = 147;
/// `TRACE_TO_PROXY`: a packet handed to the node's L7 proxy.
pub const TRACE_TO_PROXY: u8 = 1;
/// `DROP_PROXY_LOOKUP_FAILED`: no proxy socket for a connection that needs the proxy.
pub const DROP_PROXY_LOOKUP_FAILED: u8 = 178;
/// `DROP_PROXY_SET_FAILED`: the kernel refused to assign the packet to the proxy's socket.
pub const DROP_PROXY_SET_FAILED: u8 = 179;
/// `DROP_PROXY_UNKNOWN_PROTO`: a proxy port on a protocol the proxy does not take (not TCP, nor
/// UDP on egress).
pub const DROP_PROXY_UNKNOWN_PROTO: u8 = 180;
/// Bytes of packet copied into each event.
pub const EVENT_CAPTURE_LEN: usize = 128;

/// `struct ct_key4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    /// Source of the original direction (network order).
    pub saddr: [u8; 4],
    /// Destination of the original direction.
    pub daddr: [u8; 4],
    /// Source port, network order.
    pub sport: [u8; 2],
    /// Destination port, network order.
    pub dport: [u8; 2],
    /// IP protocol.
    pub proto: u8,
    /// `CT_EGRESS` or `CT_INGRESS`.
    pub dir: u8,
    /// Padding.
    pub pad: u16,
}

/// `struct ct_entry4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry4 {
    /// Expiry, seconds on CLOCK_MONOTONIC.
    pub expires: u64,
    /// Packets in the original direction.
    pub tx_packets: u64,
    /// Bytes in the original direction.
    pub tx_bytes: u64,
    /// Packets in the reply direction.
    pub rx_packets: u64,
    /// Bytes in the reply direction.
    pub rx_bytes: u64,
    /// Identity of the opening side.
    pub src_identity: u32,
    /// TCP flags seen in the original direction.
    pub tx_flags: u8,
    /// TCP flags seen in the reply direction.
    pub rx_flags: u8,
    /// `ct_state` bits.
    pub state: u8,
    /// Padding.
    pub pad1: u8,
    /// Per-packet service translation: the frontend replies are translated back to.
    pub rev_nat_index: u16,
    /// Socket LB: the frontend the socket asked for (reported in events only).
    pub sock_rev_nat: u16,
    /// `CT_SERVICE` entries: the chosen backend.
    pub backend_id: u32,
    /// Last trace report, seconds.
    pub last_report: u32,
    /// With `ct_state::TO_PROXY`: the L7 proxy's port, host byte order.
    pub proxy_port: u16,
    /// Padding.
    pub pad3: u16,
}

/// `struct endpoint_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Host-side veth ifindex.
    pub ifindex: u32,
    /// Endpoint id.
    pub ep_id: u16,
    /// Reserved.
    pub flags: u16,
    /// Security identity.
    pub sec_identity: u32,
    /// Pod address, network order.
    pub ipv4: [u8; 4],
    /// Pod MAC.
    pub mac: [u8; 6],
    /// Host veth MAC.
    pub host_mac: [u8; 6],
}

/// `struct ciliate_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawEvent {
    /// `EVENT_*`.
    pub kind: u8,
    /// Drop reason or observation point.
    pub code: u8,
    /// Endpoint id.
    pub ep_id: u16,
    /// Interface index.
    pub ifindex: u32,
    /// `bpf_ktime_get_ns()`.
    pub ktime_ns: u64,
    /// Source identity.
    pub src_identity: u32,
    /// Destination identity.
    pub dst_identity: u32,
    /// Packet length.
    pub len: u32,
    /// Bytes captured.
    pub cap_len: u16,
    /// Conntrack verdict.
    pub ct_state: u8,
    /// `EVENT_F_*`.
    pub flags: u8,
    /// The first bytes of the packet.
    pub data: [u8; EVENT_CAPTURE_LEN],
    /// Rev-NAT index of the Service frontend the connection was addressed to; 0 = none.
    pub rev_nat: u16,
    /// Padding.
    pub pad: u16,
    /// The rule of the policy entry that judged the packet; 0 = none.
    pub rule: u32,
}

/// `struct metrics_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsValue {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// `struct lb4_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    /// Frontend address, network order.
    pub address: [u8; 4],
    /// Frontend port, network order.
    pub dport: [u8; 2],
    /// 0 for the service entry, 1..=count for backend slots.
    pub backend_slot: u16,
    /// IP protocol.
    pub proto: u8,
    /// Reserved.
    pub scope: u8,
    /// Padding.
    pub pad: [u8; 2],
}

/// `struct lb4_service`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Service {
    /// Slots 1..n: the backend.
    pub backend_id: u32,
    /// Slot 0: backends taking new connections.
    pub count: u16,
    /// Slot 0: rev-NAT index.
    pub rev_nat_index: u16,
    /// `SVC_F_*`.
    pub flags: u8,
    /// Padding.
    pub pad: [u8; 3],
    /// Affinity timeout, seconds.
    pub affinity_timeout: u32,
}

/// `struct lb4_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Backend {
    /// Address, network order.
    pub address: [u8; 4],
    /// Port, network order.
    pub port: [u8; 2],
    /// IP protocol.
    pub proto: u8,
    /// `BE_STATE_*`.
    pub state: u8,
}

/// `struct lb4_reverse_nat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4ReverseNat {
    /// Frontend address, network order.
    pub address: [u8; 4],
    /// Frontend port, network order.
    pub port: [u8; 2],
    /// Its index.
    pub rev_nat_index: u16,
}

/// `struct lb4_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4AffinityKey {
    /// Client IPv4 (per-packet) or netns cookie (socket LB).
    pub client: u64,
    /// Frontend.
    pub rev_nat_index: u16,
    /// 1 when `client` is a netns cookie.
    pub netns: u8,
    /// Padding.
    pub pad: [u8; 5],
}

/// `struct lb4_affinity_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4AffinityVal {
    /// Seconds, CLOCK_MONOTONIC.
    pub last_used: u64,
    /// Backend.
    pub backend_id: u32,
    /// The frontend slot it was picked from, where it is looked for first.
    pub slot: u32,
}

/// The matched data of `struct policy_key` (after its `prefixlen`): all in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyData {
    /// Endpoint id, network order.
    pub ep_id: [u8; 2],
    /// Generation 0 or 1.
    pub version: u8,
    /// 1 for egress.
    pub egress: u8,
    /// Peer identity, network order; 0 = any.
    pub identity: [u8; 4],
    /// IP protocol.
    pub proto: u8,
    /// Port, network order.
    pub dport: [u8; 2],
    /// Never matched.
    pub pad: u8,
}

/// `struct policy_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// `POLICY_F_*`.
    pub flags: u8,
    /// `POLICY_MATCH_*`.
    pub match_kind: u8,
    /// L7 proxy port, host byte order (as in `PolicyMapEntry::proxy_port`); 0 = none.
    pub proxy_port: u16,
    /// Rule id.
    pub rule: u32,
    /// The entry's own key's prefix length: with `key`, where `cil_pol_stats` counts what
    /// the entry allowed.
    pub key_prefix_len: u32,
    /// The entry's own key's data.
    pub key: PolicyKeyData,
}

/// `struct policy_stats`: what a policy entry allowed on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Packets allowed.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// `struct ipcache_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    /// Identity.
    pub identity: u32,
    /// Tunnel endpoint, network order (0 = local).
    pub tunnel_endpoint: [u8; 4],
    /// Flags.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct node_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The VXLAN device (collect_md); 0 = no overlay.
    pub tunnel_ifindex: u32,
    /// `NODE_F_*`; bits 16..31 the overlay's UDP port ([`NODE_TUNNEL_PORT_SHIFT`]).
    pub flags: u32,
    /// With [`NODE_F_MASQUERADE`]: the address pods leave the node as (network order).
    pub masq_ipv4: [u8; 4],
    /// With [`NODE_F_MASQUERADE`]: the device masquerading is done on.
    pub masq_ifindex: u32,
}

/// `node_config.flags`: pods' traffic to the world leaves as the node's address.
pub const NODE_F_MASQUERADE: u32 = 0x01;
/// `NODE_TUNNEL_PORT_SHIFT`: where the VXLAN device's UDP port sits in `node_config.flags`.
pub const NODE_TUNNEL_PORT_SHIFT: u32 = 16;
/// `node_config.flags`: trace events also where a packet leaves an endpoint (from-endpoint);
/// monitor aggregation "none".
pub const NODE_F_TRACE_FROM: u32 = 0x02;
/// `node_config.flags`: a trace event for every packet, not only those that matter to its
/// connection; monitor aggregation "none" and "low".
pub const NODE_F_TRACE_EVERY: u32 = 0x04;
/// `SNAT_EGRESS`: a `cil_snat4` key of a pod's tuple.
pub const SNAT_EGRESS: u8 = 0;
/// `SNAT_INGRESS`: a `cil_snat4` key of a reply's tuple.
pub const SNAT_INGRESS: u8 = 1;
/// First port masquerading lends.
pub const SNAT_PORT_MIN: u16 = 61000;
/// `DROP_NAT_NO_MAPPING`: no masquerade port left towards that destination.
pub const DROP_NAT_NO_MAPPING: u8 = 167;

/// `struct snat_entry4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatEntry4 {
    /// Address translated to (network order).
    pub to_addr: [u8; 4],
    /// Port translated to (network order).
    pub to_port: [u8; 2],
    /// Padding.
    pub pad: u16,
    /// Seconds, CLOCK_MONOTONIC.
    pub expires: u64,
}

// SAFETY: plain-old-data, `repr(C)`, no padding the kernel could leave uninitialised that we
// would read as anything but bytes; layouts checked below.
unsafe impl aya::Pod for CtKey4 {}
// SAFETY: as above.
unsafe impl aya::Pod for NodeConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntry4 {}
// SAFETY: as above.
unsafe impl aya::Pod for EndpointInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for MetricsValue {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyKeyData {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyValue {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyStats {}
// SAFETY: as above.
unsafe impl aya::Pod for IpcacheValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4Service {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4Backend {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4ReverseNat {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4AffinityKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4AffinityVal {}
// SAFETY: as above.
unsafe impl aya::Pod for SnatEntry4 {}

const _: () = {
    assert!(size_of::<CtKey4>() == 16);
    assert!(size_of::<NodeConfig>() == 16);
    assert!(size_of::<SnatEntry4>() == 16);
    assert!(offset_of!(CtKey4, proto) == 12);
    assert!(size_of::<CtEntry4>() == 64);
    assert!(offset_of!(CtEntry4, src_identity) == 40);
    assert!(offset_of!(CtEntry4, rev_nat_index) == 48);
    assert!(offset_of!(CtEntry4, last_report) == 56);
    assert!(offset_of!(CtEntry4, proxy_port) == 60);
    assert!(offset_of!(PolicyValue, proxy_port) == 2);
    assert!(size_of::<EndpointInfo>() == 28);
    assert!(offset_of!(EndpointInfo, ipv4) == 12);
    assert!(offset_of!(EndpointInfo, host_mac) == 22);
    assert!(size_of::<RawEvent>() == 32 + EVENT_CAPTURE_LEN + 8);
    assert!(offset_of!(RawEvent, data) == 32);
    assert!(offset_of!(RawEvent, rev_nat) == 32 + EVENT_CAPTURE_LEN);
    assert!(offset_of!(RawEvent, rule) == 32 + EVENT_CAPTURE_LEN + 4);
    assert!(align_of::<RawEvent>() == 8);
    assert!(offset_of!(CtEntry4, sock_rev_nat) == 50);
    assert!(offset_of!(RawEvent, ktime_ns) == 8);
    assert!(offset_of!(RawEvent, cap_len) == 28);
    assert!(size_of::<MetricsValue>() == 16);
    assert!(size_of::<PolicyKeyData>() == 12);
    assert!(offset_of!(PolicyKeyData, proto) == 8);
    assert!(size_of::<PolicyValue>() == 24);
    assert!(offset_of!(PolicyValue, key_prefix_len) == 8);
    assert!(offset_of!(PolicyValue, key) == 12);
    assert!(size_of::<PolicyStats>() == 16);
    assert!(size_of::<IpcacheValue>() == 16);
    assert!(size_of::<Lb4Key>() == 12);
    assert!(offset_of!(Lb4Key, backend_slot) == 6);
    assert!(offset_of!(Lb4Key, proto) == 8);
    assert!(size_of::<Lb4Service>() == 16);
    assert!(offset_of!(Lb4Service, flags) == 8);
    assert!(offset_of!(Lb4Service, affinity_timeout) == 12);
    assert!(size_of::<Lb4Backend>() == 8);
    assert!(size_of::<Lb4ReverseNat>() == 8);
    assert!(size_of::<Lb4AffinityKey>() == 16);
    assert!(size_of::<Lb4AffinityVal>() == 16);
};

impl RawEvent {
    /// Reads an event from ring-buffer bytes; `None` if too short (a truncated record).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Self>() {
            return None;
        }
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut data = [0u8; EVENT_CAPTURE_LEN];
        data.copy_from_slice(&b[32..32 + EVENT_CAPTURE_LEN]);
        Some(Self {
            kind: b[0],
            code: b[1],
            ep_id: u16_at(2),
            ifindex: u32_at(4),
            ktime_ns: u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            src_identity: u32_at(16),
            dst_identity: u32_at(20),
            len: u32_at(24),
            cap_len: u16_at(28),
            ct_state: b[30],
            flags: b[31],
            data,
            rev_nat: u16_at(32 + EVENT_CAPTURE_LEN),
            pad: 0,
            rule: u32_at(32 + EVENT_CAPTURE_LEN + 4),
        })
    }
}
