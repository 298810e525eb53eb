/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection tracking. One LRU hash for the node; an entry is keyed by the tuple of the
 * direction that opened the connection plus who opened it (CT_EGRESS: the endpoint, from
 * from-container; CT_INGRESS: someone towards the endpoint, from to-container). A packet
 * first looks itself up as the original direction, then reversed as a reply. The agent
 * deletes expired entries; LRU eviction only guards against a full table.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "maps.h"
#include "parse.h"

/* Seconds on CLOCK_MONOTONIC, for deadlines. The coarse clock (the last tick's time, at
 * most a tick behind) is read from memory; the precise one reads the clock source, which on a
 * virtual machine is a paravirtual clock costing tens of nanoseconds, once per packet. */
static __always_inline __u32 now_secs(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

/* An ICMP error: it reports on a connection (or packet) it quotes, and belongs to it. */
static __always_inline int icmp_is_error(__u8 type)
{
	return type == 3 /* unreachable */ || type == 4 /* source quench */ ||
	       type == 5 /* redirect */ || type == 11 /* time exceeded */ ||
	       type == 12 /* parameter problem */;
}

/* ICMP errors and other packets that belong to no connection of their own are not tracked. */
static __always_inline int ct_untracked(const struct pkt4 *p)
{
	if (p->fragment)
		return 1;
	if (p->proto == IPPROTO_ICMP)
		return p->icmp_type != ICMP_ECHO && p->icmp_type != ICMP_ECHOREPLY;
	return 0;
}

/* Whether the ICMP error `p` (at the endpoint whose address is `self_ip`; `egress` when the
 * endpoint sends it) quotes a connection conntrack holds for that endpoint. The quoted packet
 * travelled the other way: when the endpoint receives the error it is the endpoint's own
 * packet (source `self_ip`), either the original direction of a connection it opened
 * (CT_EGRESS, as quoted) or a reply in one opened towards it (CT_INGRESS, reversed); and
 * symmetrically when the endpoint sends the error. A quote that cannot be read is unrelated. */
static __always_inline int icmp_error_related(struct __sk_buff *skb, const struct pkt4 *p,
					      __u8 egress, __be32 self_ip)
{
	__u32 off = p->l4_off + sizeof(struct icmphdr);
	struct ct_key4 key = {};
	struct iphdr in;
	__u8 err_dir = egress ? CT_EGRESS : CT_INGRESS;
	__u8 quoted_dir = egress ? CT_INGRESS : CT_EGRESS;
	__be16 ports[2] = {};

	if (bpf_skb_load_bytes(skb, off, &in, sizeof(in)) < 0)
		return 0;
	if (in.version != 4 || in.ihl < 5 || (bpf_ntohs(in.frag_off) & IP_OFFSET))
		return 0;
	if ((egress ? in.daddr : in.saddr) != self_ip)
		return 0;
	off += in.ihl * 4;
	switch (in.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return 0;
		break;
	case IPPROTO_ICMP: {
		struct icmphdr ih;

		if (bpf_skb_load_bytes(skb, off, &ih, sizeof(ih)) < 0)
			return 0;
		/* Echoes are tracked by id, as parse_ipv4 places it; errors about errors are not
		 * answered (RFC 1122), so nothing else can be quoted legitimately. */
		if (ih.type == ICMP_ECHO)
			ports[0] = ih.un.echo.id;
		else if (ih.type == ICMP_ECHOREPLY)
			ports[1] = ih.un.echo.id;
		else
			return 0;
		break;
	}
	default:
		break;
	}
	key.saddr = in.saddr;
	key.daddr = in.daddr;
	key.sport = ports[0];
	key.dport = ports[1];
	key.proto = in.protocol;
	key.dir = quoted_dir;
	if (bpf_map_lookup_elem(&cil_ct4, &key))
		return 1;
	key.saddr = in.daddr;
	key.daddr = in.saddr;
	key.sport = ports[1];
	key.dport = ports[0];
	key.dir = err_dir;
	return bpf_map_lookup_elem(&cil_ct4, &key) != NULL;
}

/* A connection's relation to the node's L7 proxy, in and out of ct_process. In: the
 * CT_F_TO_PROXY / CT_F_FROM_PROXY bits and port a new entry gets. Out: the entry's. */
struct ct_proxy {
	__u16 port;
	__u8 flags;
};

static __always_inline __u32 ct_lifetime(const struct ct_entry4 *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (e->state & CT_F_RESET)
		return CT_CLOSE_TIMEOUT;
	if ((e->state & (CT_F_TX_CLOSING | CT_F_RX_CLOSING)) ==
	    (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
		return CT_CLOSE_TIMEOUT;
	/* Established once the other side has answered with an ACK. */
	if ((e->state & CT_F_REPLIED) && (e->rx_flags & TCP_FLAG_ACK))
		return CT_LIFETIME_TCP;
	/* The server side of a connection sent to the ingress proxy never sees the replies (the
	 * proxy answers the client itself): the client's ACK says it is established, its FIN
	 * that it is closing. */
	if ((e->state & (CT_F_TO_PROXY | CT_F_REPLIED)) == CT_F_TO_PROXY) {
		if (e->state & CT_F_TX_CLOSING)
			return CT_CLOSE_TIMEOUT;
		if (e->tx_flags & TCP_FLAG_ACK)
			return CT_LIFETIME_TCP;
	}
	return CT_SYN_TIMEOUT;
}

static __always_inline void ct_tcp_update(struct ct_entry4 *e, __u8 flags, int reply)
{
	if (reply)
		e->rx_flags |= flags;
	else
		e->tx_flags |= flags;
	if (flags & TCP_FLAG_RST)
		e->state |= CT_F_RESET;
	if (flags & TCP_FLAG_FIN)
		e->state |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
}

/* Records a new connection of `p` (the caller knows it has no usable entry): returns
 * CT_NEW. `rev_nat`, `sock_rev_nat`, `px` and the outputs are those of ct_process. Entries of
 * other CPUs racing for the same tuple are equivalent: last wins. */
static __always_inline int ct_create(const struct pkt4 *p, __u8 dir, __u32 src_identity,
				     __u32 bytes, __u16 rev_nat, __u16 sock_rev_nat,
				     __u16 *rev_nat_out, __u16 *svc_out, struct ct_proxy *px)
{
	struct ct_key4 key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.dir = dir,
	};
	struct ct_entry4 n = {};
	__u32 now = now_secs();

	n.state = px->flags & (CT_F_TO_PROXY | CT_F_FROM_PROXY);
	n.proxy_port = (n.state & CT_F_TO_PROXY) ? px->port : 0;
	px->flags = n.state;
	px->port = n.proxy_port;

	n.tx_packets = 1;
	n.tx_bytes = bytes;
	n.rev_nat_index = rev_nat;
	n.sock_rev_nat = sock_rev_nat;
	*rev_nat_out = rev_nat;
	*svc_out = rev_nat ? rev_nat : sock_rev_nat;
	n.src_identity = src_identity;
	n.last_report = now;
	if (p->proto == IPPROTO_TCP)
		ct_tcp_update(&n, p->tcp_flags, 0);
	n.expires = now + ct_lifetime(&n, p->proto);
	bpf_map_update_elem(&cil_ct4, &key, &n, BPF_ANY);
	return CT_NEW;
}

/* Looks the packet up and creates an entry for a new connection. Returns CT_NEW,
 * CT_ESTABLISHED or CT_REPLY; *report says whether this packet is worth a trace event
 * (a new connection, or a TCP flag not seen before in its direction). A new entry records
 * `rev_nat` (the service frontend the connection was translated from per packet) and
 * `sock_rev_nat` (the one socket LB translated it from); *rev_nat_out is the entry's
 * rev_nat_index, so that replies can be translated back, and *svc_out the frontend the
 * connection was addressed to either way, for events. Without `create`, a new connection is
 * reported as CT_NEW but not recorded: the caller records it with ct_create once policy
 * allowed it, without looking it up again. */
static __always_inline int ct_process(const struct pkt4 *p, __u8 dir, __u32 src_identity,
				      __u32 bytes, int *report, __u16 rev_nat, __u16 sock_rev_nat,
				      __u16 *rev_nat_out, __u16 *svc_out, int create,
				      struct ct_proxy *px)
{
	struct ct_key4 key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.dir = dir,
	};
	struct ct_key4 rkey = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.dir = dir == CT_EGRESS ? CT_INGRESS : CT_EGRESS,
	};
	struct ct_entry4 *e = NULL;
	int reply = 0, reply_first;

	*report = 0;
	/* A tuple is tracked one way only (a packet that finds neither way creates the entry),
	 * so the order of the two lookups changes what they cost, not what they find. A packet
	 * from the lower port is most likely a server's reply (servers listen low, clients send
	 * from ephemeral ports): it is looked up as a reply first, saving the lookup that would
	 * miss. A bare SYN opens a connection: never a reply first (a new SYN on a closed tuple
	 * must find that tuple's own entry, below). */
	reply_first = bpf_ntohs(p->sport) < bpf_ntohs(p->dport) &&
		      !(p->proto == IPPROTO_TCP &&
			(p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN);
	if (reply_first) {
		e = bpf_map_lookup_elem(&cil_ct4, &rkey);
		reply = e != NULL;
	}
	if (!e)
		e = bpf_map_lookup_elem(&cil_ct4, &key);
	if (!e && !reply_first) {
		e = bpf_map_lookup_elem(&cil_ct4, &rkey);
		reply = 1;
	}

	/* A new SYN on a closed connection's tuple starts a new connection. */
	if (e && !reply && p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
	    (e->state & (CT_F_RESET | CT_F_TX_CLOSING | CT_F_RX_CLOSING)))
		e = NULL;

	if (!e) {
		*report = 1;
		if (create)
			return ct_create(p, dir, src_identity, bytes, rev_nat, sock_rev_nat,
					 rev_nat_out, svc_out, px);
		/* Policy decides first; the caller comes back to create the entry. */
		*rev_nat_out = rev_nat;
		*svc_out = rev_nat ? rev_nat : sock_rev_nat;
		return CT_NEW;
	}

	/* A tuple tracked untranslated (a socket-LB flow, a direct connection on the same source
	 * port) and now sent to a VIP: its replies must come back from that frontend. */
	if (!reply && rev_nat && e->rev_nat_index != rev_nat)
		e->rev_nat_index = rev_nat;
	*rev_nat_out = e->rev_nat_index;
	*svc_out = e->rev_nat_index ? e->rev_nat_index : e->sock_rev_nat;
	px->flags = e->state & (CT_F_TO_PROXY | CT_F_FROM_PROXY);
	px->port = e->proxy_port;
	if (reply) {
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, bytes);
		if (!(e->state & CT_F_REPLIED)) {
			e->state |= CT_F_REPLIED;
			*report = 1;
		}
	} else {
		__sync_fetch_and_add(&e->tx_packets, 1);
		__sync_fetch_and_add(&e->tx_bytes, bytes);
	}
	if (p->proto == IPPROTO_TCP) {
		__u8 seen = reply ? e->rx_flags : e->tx_flags;
		__u8 interesting = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST);

		if (interesting & ~seen)
			*report = 1;
		ct_tcp_update(e, p->tcp_flags, reply);
	}
	/* Refresh the deadline at most once a second: it spares a cache line on every packet. */
	{
		__u64 expires = now_secs() + ct_lifetime(e, p->proto);

		if (expires != e->expires)
			e->expires = expires;
	}
	return reply ? CT_REPLY : CT_ESTABLISHED;
}

/* The lifetime of a CT_SERVICE entry: it only sees the original direction. */
static __always_inline __u32 ct_service_lifetime(const struct ct_entry4 *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (e->state & (CT_F_RESET | CT_F_TX_CLOSING))
		return CT_CLOSE_TIMEOUT;
	return (e->tx_flags & TCP_FLAG_ACK) ? CT_LIFETIME_TCP : CT_SYN_TIMEOUT;
}
