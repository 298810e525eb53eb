/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The VXLAN overlay between nodes. The tunnel device runs in collect_md ("external") mode:
 * the programs choose the remote node per packet, and the VNI carries the security identity of
 * the sender, so the receiving node judges the packet by who sent it, not by its address. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "maps.h"
#include "policy.h"

/* VNIs are 24 bits: identities above that cannot travel (Cilium's limit too). */
#define TUNNEL_ID_MAX 0xffffff

static __always_inline __u32 tunnel_ifindex(void)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&cil_node_cfg, &zero);

	return cfg ? cfg->tunnel_ifindex : 0;
}

/* Hands the packet to the tunnel device, addressed to `node` (the node holding the
 * destination) with the sender's identity as the key. The outer source address is the one
 * the node's routing picks towards `node`. The overlay mark tells to_netdev on the uplink
 * that the encapsulated packet is the node's own tunnel traffic, nothing for it to do. */
static __always_inline int encap_to_node(struct __sk_buff *skb, __u32 tunnel_if, __be32 node,
					 __u32 src_identity)
{
	struct bpf_tunnel_key key = {
		.tunnel_id = src_identity,
		.remote_ipv4 = bpf_ntohl(node),
		.tunnel_ttl = 64,
	};

	if (src_identity > TUNNEL_ID_MAX)
		return -1;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return -1;
	skb->mark = MARK_MAGIC_OVERLAY;
	return bpf_redirect(tunnel_if, 0);
}

/* The identity a packet from the tunnel is judged by: the one its sender's node put in the
 * VNI, except that a node's own traffic (HOST there) is remote-node here, as in Cilium: a
 * node's host is only "host" to itself. */
static __always_inline __u32 overlay_source_identity(__u32 tunnel_id)
{
	return tunnel_id == IDENTITY_HOST ? IDENTITY_REMOTE_NODE : tunnel_id;
}
