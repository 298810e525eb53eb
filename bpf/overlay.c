// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The overlay datapath, attached with TCX to the ingress of the node's VXLAN device:
 *   from_overlay    packets from other nodes, decapsulated
 *
 * It shares every map with lxc.c (pinned by name in the node's bpffs directory), so a pod's
 * conntrack and policy are the same whichever hook sees its packets.
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
#include "ciliate/lb.h"
#include "ciliate/nat.h"
#include "ciliate/policy.h"
#include "ciliate/overlay.h"
#include "ciliate/endpoint.h"

/* Packets from other nodes, decapsulated by the device: those the uplink did not take
 * itself (host.c, from_netdev: anything but the common case). One for a pod of this node gets
 * that pod's receiving side here, judged by the identity the sender's node put in the VNI
 * (HOST there being remote-node here), and goes straight into the pod; anything else (the
 * node's own address) is left to the stack. */
SEC("classifier/from_overlay")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct endpoint_info *dst;
	struct pkt4 p = {};
	int rc;

	rc = parse_ipv4(skb, &p);
	if (rc == PARSE_PASS)
		return TC_ACT_OK;
	if (rc)
		return drop(skb, METRIC_INGRESS, parse_drop_reason(rc), 0, 0, 0, CT_NONE);
	dst = bpf_map_lookup_elem(&cil_lxc4, &p.daddr);
	if (!dst)
		return TC_ACT_OK;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0 || key.tunnel_id == 0)
		return drop(skb, METRIC_INGRESS, DROP_NO_TUNNEL_KEY, dst->ep_id, 0,
			    dst->sec_identity, CT_NONE);
	return overlay_deliver(skb, dst, &p, overlay_source_identity(key.tunnel_id),
			       skb->ifindex);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
