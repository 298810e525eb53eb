// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Masquerading on the node's uplink, as Cilium's BPF masquerading does:
 *   to_netdev      TCX egress:  a pod's packet to the world leaves as the node's address
 *   from_netdev    TCX ingress: the reply gets the pod's address back before routing
 *
 * Only connections this node's pods (cil_lxc4) open to destinations outside the cluster are
 * translated: not to an address the ipcache knows as a pod or node of the cluster, nor to a
 * prefix of cil_nomasq4, nor replies of connections the world opened to a pod (conntrack).
 * TCP, UDP and ICMP echo (by id); each flow gets a port (or id) of SNAT_PORT_MIN..MAX unique
 * per remote address, port and protocol, kept in cil_snat4 both ways and released when it
 * has been idle for its lifetime (a closed TCP connection soon). The pod's conntrack and
 * policy ran on the pod's veth before, with the untranslated tuple, and recognise the reply
 * once translated back.
 *
 * With the overlay on, from_netdev takes the overlay's VXLAN packets for this node's pods off
 * the uplink itself (overlay_from_uplink, below) and to_netdev lets the overlay's own output
 * (MARK_MAGIC_OVERLAY) by untouched.
 *
 * With the overlay on, to_netdev also carries the node's own packets to pods of other nodes
 * (Cilium's host-to-remote-pod encapsulation): they go through the tunnel with the HOST
 * identity in the VNI, which the receiving node judges as remote-node (overlay.c), instead
 * of crossing the underlay with nothing to say who sent them.
 *
 * The node's L7 proxy speaks for pods: its upstream connections (a from-proxy mark, bound to
 * the client pod's address) go through the tunnel with the client's identity from the mark,
 * so the far node judges the real client, and are tracked (CT_F_FROM_PROXY) so that their
 * replies, from the tunnel (overlay.c) or the world (from_netdev), reach the proxy's socket
 * rather than the pod. The ingress proxy's answers to a remote client (from the server pod's
 * address, of a connection conntrack sent to the proxy) go through the tunnel as that pod.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ciliate/abi.h"
#include "ciliate/maps.h"
#include "ciliate/parse.h"
#include "ciliate/events.h"
#include "ciliate/ct.h"
#include "ciliate/nat.h"
#include "ciliate/policy.h"
#include "ciliate/overlay.h"
#include "ciliate/endpoint.h"
#include "ciliate/proxy.h"

/* Cluster identities below this are pods, nodes, the host: never masqueraded. CIDR
 * identities (1 << 24 and up) and world are the outside. */
#define IDENTITY_CIDR_BASE (1U << 24)

static __always_inline const struct node_config *masq_config(void)
{
	__u32 zero = 0;
	const struct node_config *cfg = bpf_map_lookup_elem(&cil_node_cfg, &zero);

	if (!cfg || !(cfg->flags & NODE_F_MASQUERADE) || !cfg->masq_ipv4)
		return NULL;
	return cfg;
}

static __always_inline int masq_exempt(__be32 daddr)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = daddr};
	struct ipcache_entry *e;

	if (bpf_map_lookup_elem(&cil_nomasq4, &k))
		return 1;
	e = ipcache_lookup(daddr);
	return e && e->identity != IDENTITY_WORLD && e->identity < IDENTITY_CIDR_BASE;
}

/* Whether masquerading handles this packet at all: TCP, UDP, and ICMP echo (its id stands
 * for the port: the request's on the way out, the reply's on the way in). */
static __always_inline int masq_proto(const struct pkt4 *p, int egress)
{
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
		return 1;
	return p->proto == IPPROTO_ICMP && p->icmp_type == (egress ? ICMP_ECHO : ICMP_ECHOREPLY);
}

/* Rewrites an address and the port (TCP/UDP) or echo id (ICMP), with the checksums. */
static __always_inline int masq_rewrite(struct __sk_buff *skb, const struct pkt4 *p, int source,
					__be32 old_addr, __be32 new_addr, __be16 old_port,
					__be16 new_port)
{
	__u32 id_off = p->l4_off + 4, csum_off = p->l4_off + 2;
	__u32 addr_off = source ? IP_SADDR_OFF : IP_DADDR_OFF;

	if (p->proto != IPPROTO_ICMP)
		return nat4_rewrite(skb, p, source, old_addr, new_addr, old_port, new_port);
	/* ICMP's checksum covers no pseudo-header: the address only touches the IP one. */
	if (bpf_l3_csum_replace(skb, IP_CHECK_OFF, old_addr, new_addr, sizeof(new_addr)) < 0 ||
	    bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) < 0)
		return -1;
	if (old_port != new_port &&
	    (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, sizeof(new_port)) < 0 ||
	     bpf_skb_store_bytes(skb, id_off, &new_port, sizeof(new_port), 0) < 0))
		return -1;
	return 0;
}

/* Whether the packet answers a connection opened towards the pod (its conntrack has it as
 * CT_INGRESS): the world reached the pod at its own address and expects it back from there. */
static __always_inline int reply_of_inbound(const struct pkt4 *p)
{
	struct ct_key4 k = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.dir = CT_INGRESS,
	};

	return bpf_map_lookup_elem(&cil_ct4, &k) != NULL;
}

static __always_inline __u64 snat_expiry(const struct pkt4 *p, __u64 now)
{
	if (p->proto != IPPROTO_TCP)
		return now + SNAT_LIFETIME_NONTCP;
	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return now + SNAT_CLOSE_TIMEOUT;
	return now + SNAT_LIFETIME_TCP;
}

/* Refreshes an entry's deadline, writing only when it moved (once a second at most). */
static __always_inline void snat_touch(struct snat_entry4 *e, __u64 expires)
{
	if (e->expires != expires)
		e->expires = expires;
}

/* The reverse entry a pod flow's egress entry `out` stands for, if it is still the flow's:
 * its port may have been handed to another flow once idle. */
static __always_inline struct snat_entry4 *snat_reverse(const struct pkt4 *p,
							 const struct snat_entry4 *out)
{
	struct ct_key4 rk = {
		.saddr = p->daddr,
		.daddr = out->to_addr,
		.sport = p->dport,
		.dport = out->to_port,
		.proto = p->proto,
		.dir = SNAT_INGRESS,
	};
	struct snat_entry4 *back = bpf_map_lookup_elem(&cil_snat4, &rk);

	if (!back || back->to_addr != p->saddr || back->to_port != p->sport)
		return NULL;
	return back;
}

/* Takes a free port (or one idle past its deadline) towards the packet's destination and
 * records both ways. Returns the egress entry, or NULL when every port is in use. */
static __always_inline struct snat_entry4 *snat_allocate(const struct pkt4 *p,
							  const struct ct_key4 *out_key,
							  __be32 node_ip, __u64 now)
{
	__u32 range = SNAT_PORT_MAX - SNAT_PORT_MIN + 1;
	__u32 port = SNAT_PORT_MIN + bpf_get_prandom_u32() % range;
	__u64 expires = snat_expiry(p, now);
	struct snat_entry4 back = {.to_addr = p->saddr, .to_port = p->sport, .expires = expires};
	struct ct_key4 rk = {
		.saddr = p->daddr,
		.daddr = node_ip,
		.sport = p->dport,
		.proto = p->proto,
		.dir = SNAT_INGRESS,
	};

	for (int i = 0; i < SNAT_TRIES; i++) {
		struct snat_entry4 *taken;

		rk.dport = bpf_htons((__u16)port);
		if (bpf_map_update_elem(&cil_snat4, &rk, &back, BPF_NOEXIST) == 0)
			goto found;
		taken = bpf_map_lookup_elem(&cil_snat4, &rk);
		if (taken && taken->expires < now) {
			bpf_map_update_elem(&cil_snat4, &rk, &back, BPF_ANY);
			goto found;
		}
		port = port >= SNAT_PORT_MAX ? SNAT_PORT_MIN : port + 1;
	}
	return NULL;
found: {
	struct snat_entry4 out = {.to_addr = node_ip, .to_port = rk.dport, .expires = expires};

	bpf_map_update_elem(&cil_snat4, out_key, &out, BPF_ANY);
	return bpf_map_lookup_elem(&cil_snat4, out_key);
}
}

/* Whether `p` is a reply in a connection conntrack holds as opened in direction `dir` with
 * `flag` set. */
static __always_inline int ct_reply_has(const struct pkt4 *p, __u8 dir, __u8 flag)
{
	struct ct_key4 k = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.dir = dir,
	};
	struct ct_entry4 *e = bpf_map_lookup_elem(&cil_ct4, &k);

	return e && (e->state & flag);
}

/* Whether `p`, from a pod of this node, is the ingress proxy answering a connection opened
 * towards that pod (conntrack sent it to the proxy). */
static __always_inline int proxy_answer(const struct pkt4 *p)
{
	return ct_reply_has(p, CT_INGRESS, CT_F_TO_PROXY);
}

/* Whether `p` (towards a pod's address) answers an upstream connection the proxy opened. */
static __always_inline int proxy_upstream_reply(const struct pkt4 *p)
{
	return ct_reply_has(p, CT_EGRESS, CT_F_FROM_PROXY);
}

/* Tracks a proxy's upstream packet leaving the node (CT_EGRESS of the client's tuple, with
 * CT_F_FROM_PROXY): its replies are looked up there and handed to the proxy's socket. */
static __always_inline void proxy_upstream_track(struct __sk_buff *skb, const struct pkt4 *p,
						 __u32 client_id)
{
	struct ct_proxy cp = {.flags = CT_F_FROM_PROXY};
	__u16 rev_nat = 0, svc = 0;
	int report = 0;

	if (p->proto == IPPROTO_TCP && !p->fragment)
		ct_process(p, CT_EGRESS, client_id, skb->len, &report, 0, 0, &rev_nat, &svc, 1,
			   &cp);
}

/* Where the node's own packet goes through the tunnel: the node holding its destination, or
 * 0 to leave it to routing, and *src_id the identity it travels as. Only for a destination
 * the ipcache places on another node (a pod there); a node's address has no tunnel endpoint,
 * and the VXLAN device's own UDP packets are addressed to one, so they are never encapsulated
 * again. A pod's own packets are lxc.c's (already through the tunnel, or left to the stack on
 * purpose) and masqueraded below; those the proxy sends from a pod's address travel as the
 * client (upstream) or the server pod (the ingress proxy's answers). */
static __always_inline __be32 host_tunnel_endpoint(struct __sk_buff *skb, const struct pkt4 *p,
						   const struct endpoint_info *pod,
						   __u32 *src_id, __u32 *dst_id)
{
	struct ipcache_entry *e;
	__u32 mark = skb->mark;

	*src_id = IDENTITY_HOST;
	/* A pod's own packet (its world-bound traffic on its way to masquerading): out early. */
	if (pod && !mark_is_from_proxy(mark) && p->proto != IPPROTO_TCP)
		return 0;
	e = ipcache_lookup(p->daddr);
	if (!e || !e->tunnel_endpoint || e->tunnel_endpoint == p->daddr)
		return 0;
	if (pod) {
		if (mark_is_from_proxy(mark))
			*src_id = mark_identity(mark);
		else if (proxy_answer(p))
			*src_id = pod->sec_identity;
		else
			return 0;
	}
	*dst_id = e->identity;
	return e->tunnel_endpoint;
}

/* Encapsulates the node's packet to a remote pod (VNI = HOST, or the pod the proxy speaks
 * for); TC_ACT_OK when it is not one. */
static __always_inline int host_to_overlay(struct __sk_buff *skb, const struct pkt4 *p,
					   const struct endpoint_info *pod)
{
	__u32 tunnel_if = tunnel_ifindex(), src_id = IDENTITY_HOST, dst_id = 0;
	__be32 node;
	int rc;

	if (!tunnel_if)
		return TC_ACT_OK;
	node = host_tunnel_endpoint(skb, p, pod, &src_id, &dst_id);
	if (!node)
		return TC_ACT_OK;
	if (mark_is_from_proxy(skb->mark))
		proxy_upstream_track(skb, p, src_id);
	count(METRIC_EGRESS, METRIC_FORWARDED, skb->len);
	emit(skb, EVENT_TRACE, TRACE_TO_OVERLAY, 0, src_id, dst_id, CT_NONE);
	rc = encap_to_node(skb, tunnel_if, node, src_id);
	if (rc < 0)
		return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, 0, src_id, dst_id, CT_NONE);
	return rc;
}

SEC("classifier/to_netdev")
int to_netdev(struct __sk_buff *skb)
{
	const struct node_config *cfg;
	struct snat_entry4 *out, *back;
	struct endpoint_info *pod;
	struct ct_key4 key = {};
	struct pkt4 p = {};
	__be32 node_ip;
	__u64 now;
	int rc;

	/* A packet the overlay has just encapsulated (its mark says so) is the node's own
	 * tunnel traffic to another node: neither to be tunnelled again nor masqueraded. It is
	 * most of what crosses the uplink between pods of two nodes; it costs no parse. */
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_OVERLAY)
		return TC_ACT_OK;
	/* The node's own traffic is never ours to judge: anything odd passes. The packet is
	 * parsed and its source looked up once, for both jobs. */
	if (parse_ipv4(skb, &p) != 0)
		return TC_ACT_OK;
	pod = bpf_map_lookup_elem(&cil_lxc4, &p.saddr);
	rc = host_to_overlay(skb, &p, pod);
	if (rc != TC_ACT_OK)
		return rc;
	cfg = masq_config();
	if (!cfg || skb->ifindex != cfg->masq_ifindex)
		return TC_ACT_OK;
	node_ip = cfg->masq_ipv4;
	if (p.fragment || !masq_proto(&p, 1))
		return TC_ACT_OK;
	if (!pod || masq_exempt(p.daddr))
		return TC_ACT_OK;
	if (reply_of_inbound(&p))
		return TC_ACT_OK;
	if (mark_is_from_proxy(skb->mark))
		proxy_upstream_track(skb, &p, mark_identity(skb->mark));

	now = now_secs();
	key.saddr = p.saddr;
	key.daddr = p.daddr;
	key.sport = p.sport;
	key.dport = p.dport;
	key.proto = p.proto;
	key.dir = SNAT_EGRESS;
	out = bpf_map_lookup_elem(&cil_snat4, &key);
	back = out ? snat_reverse(&p, out) : NULL;
	if (!back) {
		out = snat_allocate(&p, &key, node_ip, now);
		if (!out)
			return drop(skb, METRIC_EGRESS, DROP_NAT_NO_MAPPING, pod->ep_id,
				    pod->sec_identity, IDENTITY_WORLD, CT_NONE);
	} else {
		__u64 expires = snat_expiry(&p, now);

		snat_touch(out, expires);
		snat_touch(back, expires);
	}
	if (masq_rewrite(skb, &p, 1, p.saddr, out->to_addr, p.sport, out->to_port) < 0)
		return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, pod->ep_id, pod->sec_identity,
			    IDENTITY_WORLD, CT_NONE);
	return TC_ACT_OK;
}

#define VXLAN_HLEN 8
#define VXLAN_FLAG_VNI 0x08
/* What a VXLAN packet carries before the inner IPv4 header, after the outer Ethernet one. */
#define OVERLAY_OUTER_LEN \
	(sizeof(struct iphdr) + sizeof(struct udphdr) + VXLAN_HLEN + ETH_HLEN)
/* from_netdev: not the overlay's to take off the uplink. */
#define UPLINK_NOT_OVERLAY -1

/* A VXLAN packet from another node for a pod of this node, taken off the uplink here instead
 * of through the tunnel device: decapsulated in place and handed to the pod's receiving side
 * as from_overlay would (overlay_deliver; events still name the tunnel device). It skips what
 * the device costs per packet (the outer packet's routing, the UDP socket, the device's
 * metadata allocated and freed per packet, a second pass through the receive path). Only
 * the common case: a plain IPv4 VXLAN packet (no options, no fragment, one segment) to one of
 * the node's own addresses on the overlay's port, carrying an IPv4 packet for a local pod
 * with a non-zero VNI. Anything else (the node's own traffic, an aggregated packet, a VNI of
 * 0 to be dropped as from_overlay does) goes the device's way: UPLINK_NOT_OVERLAY. */
static __always_inline int overlay_from_uplink(struct __sk_buff *skb,
					       const struct node_config *cfg)
{
	__u16 port = cfg->flags >> NODE_TUNNEL_PORT_SHIFT;
	struct endpoint_info *dst;
	void *data, *data_end;
	struct iphdr *ip, *inner;
	struct udphdr *udp;
	struct ethhdr *eth;
	struct pkt4 p = {};
	__u8 *vx;
	__u32 vni;

	if (!port || skb->gso_size || skb->protocol != bpf_htons(ETH_P_IP))
		return UPLINK_NOT_OVERLAY;
	if (ensure_linear(skb, ETH_HLEN + OVERLAY_OUTER_LEN + sizeof(struct iphdr)) < 0)
		return UPLINK_NOT_OVERLAY;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = data + ETH_HLEN;
	udp = (void *)(ip + 1);
	vx = (void *)(udp + 1);
	inner = (void *)(vx + VXLAN_HLEN + ETH_HLEN);
	if ((void *)(inner + 1) > data_end)
		return UPLINK_NOT_OVERLAY;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    udp->dest != bpf_htons(port) || vx[0] != VXLAN_FLAG_VNI ||
	    ((struct ethhdr *)(vx + VXLAN_HLEN))->h_proto != bpf_htons(ETH_P_IP))
		return UPLINK_NOT_OVERLAY;
	vni = ((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6];
	if (!vni)
		return UPLINK_NOT_OVERLAY;
	dst = bpf_map_lookup_elem(&cil_lxc4, &inner->daddr);
	if (!dst)
		return UPLINK_NOT_OVERLAY;
	/* Addressed to this node (its addresses are HOST in the ipcache), as the device's
	 * socket would take it; a packet the node routes on is not ours. */
	if (ipcache_identity(ip->daddr) != IDENTITY_HOST)
		return UPLINK_NOT_OVERLAY;
	/* The outer headers go, the outer Ethernet header stays (delivery rewrites it). The
	 * checksum state stays as the device's path leaves it: one level less for the UDP
	 * header removed (its checksum is not the inner packet's). */
	if (bpf_skb_adjust_room(skb, -(__s32)OVERLAY_OUTER_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_NO_CSUM_RESET) < 0)
		return UPLINK_NOT_OVERLAY;
	bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	/* From here the packet is the inner one: anything odd in it is dropped as the device's
	 * path drops it. */
	if (parse_ipv4(skb, &p) != 0 || !(dst = bpf_map_lookup_elem(&cil_lxc4, &p.daddr)))
		return drop_rule_on(skb, cfg->tunnel_ifindex, METRIC_INGRESS, DROP_INVALID, 0, 0,
				    0, CT_NONE, 0, 0);
	return overlay_deliver(skb, dst, &p, overlay_source_identity(vni), cfg->tunnel_ifindex);
}

SEC("classifier/from_netdev")
int from_netdev(struct __sk_buff *skb)
{
	const struct node_config *cfg;
	struct snat_entry4 *back;
	struct ct_key4 key = {};
	struct pkt4 p = {};
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&cil_node_cfg, &zero);
	if (!cfg)
		return TC_ACT_OK;
	if (cfg->tunnel_ifindex) {
		int rc = overlay_from_uplink(skb, cfg);

		if (rc != UPLINK_NOT_OVERLAY)
			return rc;
	}
	if (!(cfg->flags & NODE_F_MASQUERADE) || !cfg->masq_ipv4 ||
	    skb->ifindex != cfg->masq_ifindex)
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p) != 0 || p.fragment || p.daddr != cfg->masq_ipv4 ||
	    !masq_proto(&p, 0))
		return TC_ACT_OK;
	/* Only ports (echo ids) masquerading lends can be translated back: the node's own
	 * traffic, the overlay's VXLAN packets among it, is not looked up. */
	if (bpf_ntohs(p.dport) < SNAT_PORT_MIN)
		return TC_ACT_OK;
	key.saddr = p.saddr;
	key.daddr = p.daddr;
	key.sport = p.sport;
	key.dport = p.dport;
	key.proto = p.proto;
	key.dir = SNAT_INGRESS;
	back = bpf_map_lookup_elem(&cil_snat4, &key);
	if (!back)
		/* The node's own connection. */
		return TC_ACT_OK;
	snat_touch(back, snat_expiry(&p, now_secs()));
	if (masq_rewrite(skb, &p, 0, p.daddr, back->to_addr, p.dport, back->to_port) < 0)
		return drop(skb, METRIC_INGRESS, DROP_WRITE_ERROR, 0, IDENTITY_WORLD, 0, CT_NONE);
	p.daddr = back->to_addr;
	p.dport = back->to_port;
	/* The reply to an upstream connection the proxy opened for a pod: to its socket. */
	if (proxy_upstream_reply(&p)) {
		int rc = proxy_assign(skb, &p, 0);

		if (rc)
			return drop(skb, METRIC_INGRESS, rc, 0, IDENTITY_WORLD, 0, CT_REPLY);
		return TC_ACT_OK;
	}
	/* The stack routes it to the pod, whose veth runs its conntrack and policy. */
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
