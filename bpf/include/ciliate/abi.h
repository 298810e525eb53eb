/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ABI between the BPF programs and the agent: map records, event records and the
 * constants both sides read. Every struct here is mirrored exactly once in Rust
 * (crates/datapath/src/abi.rs) with compile-time size and offset checks; change both together.
 */
#pragma once

#include <linux/types.h>

/* ---- Map names (kernel object names are at most 15 characters). ---- */
/* cil_ct4        LRU hash   struct ct_key4     -> struct ct_entry4     */
/* cil_lxc4       hash       __be32 pod address -> struct endpoint_info */
/* cil_lxc_ifx    hash       __u32 host ifindex -> struct endpoint_info */
/* cil_events     ring buffer of struct ciliate_event                    */
/* cil_metrics    per-CPU array, index dir * 256 + reason -> struct metrics_value */
/* cil_lb4_svc    hash       struct lb4_key     -> struct lb4_service   */
/* cil_lb4_be     hash       __u32 backend id   -> struct lb4_backend   */
/* cil_lb4_rnat   hash       __u16 rev-NAT idx  -> struct lb4_reverse_nat */
/* cil_lb4_aff    LRU hash   struct lb4_affinity_key -> struct lb4_affinity_val */
/* cil_lb4_sk     LRU hash   struct lb4_sock_key -> struct lb4_reverse_nat (socket LB)  */
/* cil_policy     LPM trie   struct policy_key  -> struct policy_entry  */
/* cil_pol_stats  per-CPU hash  struct policy_key (an entry's own) -> struct policy_stats */
/* cil_ipcache4   LPM trie   struct ipcache_key -> struct ipcache_entry */
/* cil_node_cfg   array      __u32 0 -> struct node_config (one entry)  */
/* cil_snat4      LRU hash   struct ct_key4 -> struct snat_entry4 (masquerading) */
/* cil_nomasq4    LPM trie   struct ipcache_key -> __u8 (not masqueraded)  */

#define CT_MAP_SIZE 262144
#define LXC_MAP_SIZE 65536
/* The agent maps the ring's data pages twice (so that a record never wraps), and all of it
 * counts in its RSS from the start: a 4 MB ring was 8 MB of the agent's RSS, 1 MB was 2 MB
 * (issue #15). The agent drains the ring every 10 ms (crates/datapath/src/linux/events.rs):
 * at 11,000 new connections/s (4 records of 176 bytes each, ring header included) that is
 * ~80 KB per drain. 512 KB holds about 2,900 records: past the wakeup mark below, 384 KB or
 * ~50 ms for a reader that missed its timer to catch up; bench/pod2pod.sh counts what a late
 * reader loses. */
#define EVENTS_RING_SIZE (512 * 1024)
/* Unread bytes in the ring past which an event wakes the reader at once. */
#define EVENTS_WAKEUP_BYTES (128 * 1024)
#define METRICS_MAP_SIZE 512
#define LB_SERVICE_MAP_SIZE 262144
#define LB_BACKEND_MAP_SIZE 131072
#define LB_REVNAT_MAP_SIZE 65536
#define LB_AFFINITY_MAP_SIZE 65536
#define LB_SOCK_MAP_SIZE 131072
#define POLICY_MAP_SIZE 524288
#define IPCACHE_MAP_SIZE 524288

/* ---- Connection tracking ---- */

/* Who opened the connection, seen from the endpoint. */
#define CT_EGRESS 0  /* the endpoint opened it (created in from-container) */
#define CT_INGRESS 1 /* it was opened towards the endpoint (created in to-container) */
#define CT_SERVICE 2 /* the endpoint's connection to a service VIP: remembers the backend */

/* Lifetimes, in seconds (Cilium's defaults). */
#define CT_LIFETIME_TCP 21600
#define CT_LIFETIME_NONTCP 60
#define CT_SYN_TIMEOUT 60
#define CT_CLOSE_TIMEOUT 10

/* The tuple of the original direction: saddr opened the connection to daddr. */
struct ct_key4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP echo: the echo id */
	__be16 dport; /* ICMP echo: 0 */
	__u8 proto;
	__u8 dir; /* CT_EGRESS or CT_INGRESS */
	__u16 pad;
};

/* ct_entry4.state bits */
#define CT_F_TX_CLOSING 0x01 /* FIN seen in the original direction */
#define CT_F_RX_CLOSING 0x02 /* FIN seen in the reply direction */
#define CT_F_RESET 0x04      /* RST seen */
#define CT_F_REPLIED 0x08    /* at least one reply seen */
/* The L7 proxy (see "Packet marks of the L7 proxy" below). Set when the entry is created,
 * never changed after: a connection cannot move into or out of the proxy mid-stream. */
#define CT_F_TO_PROXY 0x10   /* the original direction goes to the proxy on proxy_port */
#define CT_F_FROM_PROXY 0x20 /* the proxy opened it for a client: replies go to its socket */

struct ct_entry4 {
	__u64 expires; /* seconds on CLOCK_MONOTONIC (ct.h, now_secs) */
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u32 src_identity; /* identity of the side that opened the connection */
	__u8 tx_flags;      /* TCP flags seen in the original direction */
	__u8 rx_flags;      /* TCP flags seen in the reply direction */
	__u8 state;         /* CT_F_* */
	__u8 pad1;
	/* Per-packet service translation: the frontend the connection was DNAT'd from, whose
	 * address replies get back as their source (cil_lb4_rnat). */
	__u16 rev_nat_index;
	/* Socket LB: the frontend the socket asked for before connect4/sendmsg4 gave it a
	 * backend. Only reported in events (Hubble's destination/source service); replies are
	 * not translated, the socket's own hooks show the VIP. */
	__u16 sock_rev_nat;
	__u32 backend_id; /* CT_SERVICE entries: the chosen backend */
	__u32 last_report; /* seconds; trace events are aggregated per connection */
	__u16 proxy_port;  /* with CT_F_TO_PROXY: the proxy's port, host byte order */
	__u16 pad3;
};

/* Result of a conntrack lookup, also reported in events. */
#define CT_NONE 0
#define CT_NEW 1
#define CT_ESTABLISHED 2
#define CT_REPLY 3

/* ---- Endpoints ---- */

/* endpoint_info.flags */
#define EP_F_INGRESS_ENFORCED 0x01 /* some policy selects it for ingress: default deny */
#define EP_F_EGRESS_ENFORCED 0x02  /* some policy selects it for egress: default deny */
#define EP_F_POLICY_V1 0x04        /* its policy entries are generation 1 (else 0) */

struct endpoint_info {
	__u32 ifindex;     /* host-side veth */
	__u16 ep_id;       /* node-local endpoint id */
	__u16 flags;       /* EP_F_* */
	__u32 sec_identity;
	__be32 ipv4;
	__u8 mac[6];       /* pod side */
	__u8 host_mac[6];  /* host side: the pod's gateway */
};

/* ---- The node ---- */

/* What the programs need to know about their node, written by the agent at start. */
struct node_config {
	__u32 tunnel_ifindex; /* the VXLAN device in collect_md mode; 0 = no overlay */
	__u32 flags;          /* NODE_F_*; bits 16..31: the overlay's UDP port (0: unknown) */
	__be32 masq_ipv4;     /* with NODE_F_MASQUERADE: the node address pods leave as */
	__u32 masq_ifindex;   /* with NODE_F_MASQUERADE: the device it is done on */
};

#define NODE_F_MASQUERADE 0x01
/* Monitor aggregation (the agent's --monitor-aggregation, Cilium's levels). Neither bit is
 * Cilium's default "medium": trace events only at the points a packet is handed on to (to-
 * endpoint, to-stack, to-overlay, to-proxy), and only for packets that matter to a connection
 * (its first packet, its first reply, a TCP flag new in its direction). */
#define NODE_F_TRACE_FROM 0x02  /* "none": also where a packet is taken from an endpoint */
#define NODE_F_TRACE_EVERY 0x04 /* "none", "low(est)": every packet, not per connection */
/* The UDP port of the VXLAN device, in the top half of node_config.flags (the struct keeps its
 * size, so a pinned map of an earlier agent is still this map): with it from_netdev takes the
 * overlay's packets for local pods off the uplink itself (host.c). */
#define NODE_TUNNEL_PORT_SHIFT 16

/* ---- Masquerading (host.c) ---- */

/* cil_snat4 (LRU hash, struct ct_key4 -> struct snat_entry4) holds both ways of a
 * masqueraded flow: SNAT_EGRESS keyed by the pod's tuple gives the node address and port it
 * leaves as; SNAT_INGRESS keyed by the reply's tuple (remote -> node address:port) gives the
 * pod's address and port back. cil_nomasq4 (LPM trie, struct ipcache_key -> __u8) lists the
 * destinations never masqueraded besides the cluster's own (pods, nodes: the ipcache). */
#define SNAT_EGRESS 0
#define SNAT_INGRESS 1
#define SNAT_MAP_SIZE 131072
#define NOMASQ_MAP_SIZE 1024
/* Ports the node's address lends to pods: above Linux's default ephemeral range
 * (32768-60999), so the node's own connections do not collide with them. Per remote
 * address, port and protocol. */
#define SNAT_PORT_MIN 61000
#define SNAT_PORT_MAX 65535
#define SNAT_TRIES 32
#define SNAT_LIFETIME_TCP 7200
#define SNAT_LIFETIME_NONTCP 60
#define SNAT_CLOSE_TIMEOUT 10

struct snat_entry4 {
	__be32 to_addr;
	__be16 to_port;
	__u16 pad;
	__u64 expires; /* seconds, CLOCK_MONOTONIC */
};

/* ---- Services ---- */

/* Service map key: slot 0 is the service itself, slots 1..count point at backends. */
struct lb4_key {
	__be32 address; /* the frontend (VIP) */
	__be16 dport;   /* the frontend port */
	__u16 backend_slot;
	__u8 proto;
	__u8 scope; /* reserved (0) */
	__u8 pad[2];
};

#define SVC_F_AFFINITY 0x01

struct lb4_service {
	__u32 backend_id;    /* slots 1..n */
	__u16 count;         /* slot 0: backends taking new connections */
	__u16 rev_nat_index; /* slot 0 */
	__u8 flags;          /* SVC_F_* */
	__u8 pad[3];
	__u32 affinity_timeout; /* seconds, with SVC_F_AFFINITY */
};

#define BE_STATE_ACTIVE 0
#define BE_STATE_TERMINATING 1

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state; /* BE_STATE_* */
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 rev_nat_index;
};

/* ClientIP affinity: the client is its IPv4 address on the per-packet path and its
 * network namespace cookie on the socket path (where the address is not known yet). */
struct lb4_affinity_key {
	__u64 client;
	__u16 rev_nat_index;
	__u8 netns; /* 1 when client is a netns cookie */
	__u8 pad[5];
};

struct lb4_affinity_val {
	__u64 last_used; /* seconds, CLOCK_MONOTONIC */
	__u32 backend_id;
	__u32 slot; /* the frontend slot it was picked from: where it is looked for first */
};

/* Socket LB: which VIP a connected/sent-to backend stands for, per socket. */
struct lb4_sock_key {
	__u64 cookie;
	__be32 address; /* backend */
	__be16 port;    /* backend */
	__u16 pad;
};

/* ---- Policy ---- */

/*
 * One LPM trie for every endpoint's policy. The data after prefixlen is matched bit by bit:
 * endpoint, generation, direction and peer identity always (64 bits), then the protocol
 * (8 bits, left out for "any protocol"), then the leading bits of the port (a port range is
 * stored as a few prefixes). Identity 0 stands for "any peer"; the datapath looks up the
 * peer's identity and 0, and a deny from either wins.
 *
 * An endpoint's policy is replaced atomically: the agent writes the new entries under the
 * other generation, then flips EP_F_POLICY_V1 (and the enforcement bits) in its
 * endpoint_info with one map update, then deletes the old generation.
 */
#define POLICY_PREFIX_ANY_PROTO 64
#define POLICY_PREFIX_ANY_PORT 72
#define POLICY_PREFIX_FULL 88

struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;   /* network order, like everything in the matched data */
	__u8 version;  /* generation 0 or 1 */
	__u8 egress;   /* 0 ingress, 1 egress */
	__u32 identity; /* network order; 0 = any peer */
	__u8 proto;
	__be16 dport;  /* ICMP: the type, as a port number */
	__u8 pad;
} __attribute__((packed));

#define POLICY_F_DENY 0x01
/* How an entry matches, for policy-verdict events (Hubble's match types). */
#define POLICY_MATCH_L3_ONLY 1
#define POLICY_MATCH_L3_L4 2
#define POLICY_MATCH_L4_ONLY 3
#define POLICY_MATCH_ALL 4

struct policy_entry {
	__u8 flags;      /* POLICY_F_* */
	__u8 match;      /* POLICY_MATCH_* */
	__u16 proxy_port; /* L7 redirect: the node's proxy port, HOST byte order; 0 = none */
	__u32 rule;      /* the agent's id of the rule that made it: `policy trace`, events */
	/* The entry's own key, under which cil_pol_stats counts what it allowed (a trie lookup
	 * returns the value of the longest match, not its key). */
	struct policy_key key;
};

/* What a policy entry allowed, per CPU. Its counters were in the entry itself, which every
 * CPU shares: an atomic add from two CPUs in turn on every packet of a port (a proxied
 * connection's client and the proxy's upstream hit the same entry) was most of
 * to_container's time on node Y of bench/l7.sh (bench/README.md, "Session 17"). Cilium
 * moved its policy counters to a per-CPU map for the same reason (cilium/cilium#37591). */
struct policy_stats {
	__u64 packets;
	__u64 bytes;
};

struct ipcache_key {
	__u32 prefixlen;
	__be32 addr;
};

struct ipcache_entry {
	__u32 identity;
	__be32 tunnel_endpoint; /* the node that holds it (multi-node, later); 0 = local */
	__u32 flags;
	__u32 pad;
};

/* ---- Events (ring buffer) ---- */

#define EVENT_DROP 1  /* Cilium's MessageTypeDrop */
#define EVENT_TRACE 4 /* Cilium's MessageTypeTrace */
#define EVENT_POLICY_VERDICT 5 /* Cilium's MessageTypePolicyVerdict */

/* Trace observation points: Cilium's TRACE_* numbering. */
#define TRACE_TO_LXC 0
#define TRACE_TO_PROXY 1
#define TRACE_TO_HOST 2
#define TRACE_TO_STACK 3
#define TRACE_TO_OVERLAY 4
#define TRACE_FROM_LXC 5
#define TRACE_FROM_OVERLAY 9

/* skb->mark of replies the datapath generates itself (TCP RST, ICMP unreachable): the
 * receiving side lets them through without tracking them. */
#define MARK_GENERATED 0x0c1a0001
/* skb->mark of hairpinned Service packets (a pod reaching itself through a VIP, per packet):
 * from_container has judged and tracked them; to_container lets them into the pod as they are. */
#define MARK_HAIRPIN 0x0c1a0002
/* The source a pod sees on a hairpinned connection (Cilium's IPV4_LOOPBACK): a pod cannot
 * receive a packet from its own address, so its own connection comes "from" this one, which
 * from_container translates back on the reply. 169.254.42.1. */
#define HAIRPIN_IPV4 bpf_htonl(0xa9fe2a01)

/* ---- Packet marks of the L7 proxy ----
 *
 * Bits 8..11 of skb->mark (MARK_MAGIC_MASK) say what a mark is, with Cilium's values; the
 * marks above (MARK_GENERATED, MARK_HAIRPIN) have 0 there. A pod cannot set a mark: the veth
 * clears it when the packet leaves the pod's namespace.
 *
 * MARK_MAGIC_TO_PROXY (0x0200): the datapath has assigned the packet to a socket of the
 *   node's proxy (bpf_sk_assign) and hands it to the host stack; bits 16..31 hold the proxy
 *   port (host order). The agent's policy routing makes such packets local whatever their
 *   destination (crates/datapath/src/netlink.rs, install_proxy_routing):
 *     ip rule add fwmark 0x200/0xf00 lookup 2004 pref 9
 *     ip route add local 0.0.0.0/0 dev lo table 2004
 *   so the original destination is preserved: the proxy's accepted socket's local address is
 *   the address and port the client connected to (after Service DNAT: the backend).
 *   The proxy listens in the node's namespace on 127.0.0.1:<port> or 0.0.0.0:<port> with
 *   IP_TRANSPARENT; the datapath looks its listener up as 127.0.0.1:<port>, which finds either.
 *
 * MARK_MAGIC_PROXY_INGRESS (0x0a00) / MARK_MAGIC_PROXY_EGRESS (0x0b00): set by the proxy
 *   (SO_MARK) on the upstream connection it opens for a client, bound to the client's own
 *   address (IP_TRANSPARENT), after an ingress or egress rule. The rest of the mark is the
 *   client's security identity:
 *     bits 16..31 = identity bits 0..15
 *     bits  0..7  = identity bits 16..23
 *     bit   12    = identity bit 24 (CIDR identities, 1 << 24 | n with n < 1 << 24)
 *   Identities of 1 << 25 and above cannot be carried (none are allocated). The datapath
 *   judges such a packet by that identity (not the host's), does not send it to the same
 *   proxy again (an egress-proxied connection may still meet the destination's ingress
 *   proxy), records CT_F_FROM_PROXY so the server's replies go to the proxy's socket, and
 *   tunnels it to other nodes with that identity as the VNI (host.c).
 */
#define MARK_MAGIC_MASK 0x0f00
#define MARK_MAGIC_TO_PROXY 0x0200
/* MARK_MAGIC_OVERLAY (0x0400, Cilium's): the datapath has handed the packet to the VXLAN
 * device (overlay.h, encap_to_node). The mark stays on the encapsulated packet within the
 * node's namespace, so to_netdev knows the node's tunnel packet on the uplink at a glance,
 * without parsing it or looking it up. It matches no policy-routing rule (not the to-proxy
 * magic) and the veth to the world clears it. */
#define MARK_MAGIC_OVERLAY 0x0400
#define MARK_MAGIC_PROXY_INGRESS 0x0a00
#define MARK_MAGIC_PROXY_EGRESS 0x0b00
#define MARK_IDENTITY_BIT24 0x1000
/* The table and rule priority of the proxy's policy routing (Cilium's). */
#define PROXY_ROUTE_TABLE 2004
#define PROXY_RULE_PRIORITY 9

/* Drop reasons: Cilium's / Hubble's numbering. */
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_FRAG_NEEDED 136
#define DROP_CT_UNKNOWN_PROTO 137
#define DROP_UNSUPPORTED_L3 139
#define DROP_WRITE_ERROR 141
#define DROP_NO_TUNNEL_KEY 147 /* Cilium's: error retrieving tunnel key */
#define DROP_NO_SERVICE 158
/* Hubble's "Unknown connection tracking state": an ICMP error that quotes no connection of
 * the endpoint, refused by its policy. */
#define DROP_CT_UNKNOWN 163
/* Hubble's "No mapping for NAT masquerade": every masquerade port towards that remote
 * address and port is taken. */
#define DROP_NAT_NO_MAPPING 167
/* The L7 proxy (Cilium's DROP_PROXY_*; Hubble's SOCKET_LOOKUP_FAILED, SOCKET_ASSIGN_FAILED,
 * PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL): no proxy socket to send the connection to (the proxy
 * is down: traffic that needs it is refused, fail closed), the socket could not be assigned,
 * and a proxy port on a protocol the proxy does not take (not TCP, nor UDP on egress). */
#define DROP_PROXY_LOOKUP_FAILED 178
#define DROP_PROXY_SET_FAILED 179
#define DROP_PROXY_UNKNOWN_PROTO 180
#define DROP_POLICY_DENY 181

#define EVENT_CAPTURE_LEN 128

#define EVENT_F_MATCH_MASK 0x07 /* POLICY_MATCH_* */
#define EVENT_F_EGRESS 0x08     /* the verdict was for the endpoint's egress */

struct ciliate_event {
	__u8 type;   /* EVENT_* */
	__u8 code;   /* drop reason, or trace observation point */
	__u16 ep_id; /* endpoint that reported it */
	__u32 ifindex;
	__u64 ktime_ns;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 len;       /* packet length */
	__u16 cap_len;   /* bytes of the packet copied into data */
	__u8 ct_state;   /* CT_* */
	__u8 flags;      /* EVENT_F_*; policy verdicts: the match type in the low bits */
	__u8 data[EVENT_CAPTURE_LEN];
	/* The rev-NAT index of the Service frontend the connection was addressed to (per-packet
	 * DNAT or socket LB), 0 when none: the packet shows the backend, this names the
	 * Service. */
	__u16 rev_nat;
	__u16 pad;
	/* The agent's number of the rule whose policy entry decided (struct policy_entry's
	 * `rule`), on the events of a packet policy judged: its policy verdict, its drop (for
	 * DROP_POLICY_DENY the deny rule) or its trace once allowed. 0 when no entry matched
	 * (default deny, or a direction without policy) and on every other event. It took 4 of
	 * the 6 bytes of padding: the record keeps its size (32 + EVENT_CAPTURE_LEN + 8) and
	 * its 8-byte alignment. */
	__u32 rule;
};

/* ---- Metrics ---- */

#define METRIC_INGRESS 0 /* towards the endpoint */
#define METRIC_EGRESS 1  /* from the endpoint */
#define METRIC_FORWARDED 0 /* reason 0 counts forwarded packets */
/* Slot (direction 0, reason 255: no drop reason) counting events lost because the ring buffer
 * was full; the agent reports them as Hubble's lost events. */
#define METRIC_EVENTS_LOST 255
/* Slot (direction 0, reason 254) counting packets handed to a socket of the L7 proxy: how
 * much traffic detours through it ("only L7 traffic detours"). */
#define METRIC_TO_PROXY 254

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};
