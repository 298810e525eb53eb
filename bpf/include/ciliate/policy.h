/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Identity of a peer address, and the policy verdict for a packet. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "maps.h"
#include "parse.h"

#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_REMOTE_NODE 6

/* The longest ipcache prefix that holds an address that is not a local endpoint. */
static __always_inline struct ipcache_entry *ipcache_lookup(__be32 addr)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = addr};

	return bpf_map_lookup_elem(&cil_ipcache4, &k);
}

/* The security identity of such an address: its ipcache entry's, or world. */
static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct ipcache_entry *e = ipcache_lookup(addr);

	return e ? e->identity : IDENTITY_WORLD;
}

/* The port a policy matches on: the destination port, or the ICMP type (as a port number,
 * the way the policy map entries are written). */
static __always_inline __be16 policy_port(const struct pkt4 *p)
{
	if (p->proto == IPPROTO_ICMP)
		return bpf_htons((__u16)p->icmp_type);
	return p->dport;
}

/* Counts a packet that `hit` allowed in cil_pol_stats, this CPU's slot (see struct
 * policy_stats). Two CPUs creating the same entry at once: the loser counts in the winner's. */
static __always_inline void policy_count(const struct policy_entry *hit, __u32 bytes)
{
	struct policy_stats *s = bpf_map_lookup_elem(&cil_pol_stats, &hit->key);
	struct policy_stats n = {.packets = 1, .bytes = bytes};

	if (!s && bpf_map_update_elem(&cil_pol_stats, &hit->key, &n, BPF_NOEXIST) == 0)
		return;
	if (!s)
		s = bpf_map_lookup_elem(&cil_pol_stats, &hit->key);
	if (s) {
		s->packets++;
		s->bytes += bytes;
	}
}

struct policy_result {
	__u8 match; /* POLICY_MATCH_*, 0 when no entry matched */
	__u16 proxy_port; /* the allowing entry's L7 proxy port (host order), 0 = none */
	__u32 rule;
};

/* 0 when the endpoint may send (egress) or receive (ingress) the packet; otherwise the drop
 * reason: DROP_POLICY_DENY for a deny entry, DROP_POLICY for default deny. */
static __always_inline int policy_check(const struct endpoint_info *ep, __u8 egress,
					__u32 peer, const struct pkt4 *p, __u32 bytes,
					struct policy_result *res)
{
	struct policy_key k = {
		.prefixlen = POLICY_PREFIX_FULL,
		.ep_id = bpf_htons(ep->ep_id),
		.version = (ep->flags & EP_F_POLICY_V1) ? 1 : 0,
		.egress = egress,
		.identity = bpf_htonl(peer),
		.proto = p->proto,
		.dport = policy_port(p),
	};
	struct policy_entry *exact, *any;
	__u16 enforced = egress ? EP_F_EGRESS_ENFORCED : EP_F_INGRESS_ENFORCED;

	res->match = 0;
	res->rule = 0;
	res->proxy_port = 0;
	/* Fragments carry no port: only port-less entries can match them. */
	if (p->fragment)
		k.prefixlen = POLICY_PREFIX_ANY_PORT;
	exact = bpf_map_lookup_elem(&cil_policy, &k);
	k.identity = 0;
	any = bpf_map_lookup_elem(&cil_policy, &k);
	if (exact && (exact->flags & POLICY_F_DENY)) {
		res->match = exact->match;
		res->rule = exact->rule;
		return DROP_POLICY_DENY;
	}
	if (any && (any->flags & POLICY_F_DENY)) {
		res->match = any->match;
		res->rule = any->rule;
		return DROP_POLICY_DENY;
	}
	if (exact || any) {
		struct policy_entry *hit = exact ? exact : any;

		policy_count(hit, bytes);
		res->match = hit->match;
		res->rule = hit->rule;
		res->proxy_port = hit->proxy_port;
		return 0;
	}
	return (ep->flags & enforced) ? DROP_POLICY : 0;
}
