// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The endpoint datapath, attached with TCX to the host side of every pod veth:
 *   from_container  TCX ingress: packets leaving the pod
 *   to_container    TCX egress:  packets entering the pod
 *
 * The same two programs serve every endpoint of the node; each finds its endpoint by the
 * ifindex it runs on (cil_lxc_ifx), so attaching a new pod costs no verifier run.
 *
 * Forwarding: pod-to-pod on the node is redirected from the source veth straight to the
 * destination veth's egress (which runs to_container there); everything else goes to the
 * node's stack, which routes it to the node itself or out to the world.
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

#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))

static __always_inline int parse_drop_reason(int rc)
{
	switch (rc) {
	case PARSE_DROP_L3:
		return DROP_UNSUPPORTED_L3;
	case PARSE_DROP_L4:
		return DROP_CT_INVALID_HDR;
	default:
		return DROP_INVALID;
	}
}

/* Delivers to another endpoint of this node: router semantics (new MACs, TTL - 1), then
 * straight to that endpoint's veth, whose egress program applies its side. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb,
						const struct endpoint_info *dst)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__u16 old_ttl_word, new_ttl_word;

	if ((void *)(ip + 1) > data_end)
		return -1;
	/* The stack answers an expiring TTL with ICMP time exceeded; let it. */
	if (ip->ttl <= 1)
		return TC_ACT_OK;
	old_ttl_word = *(__u16 *)&ip->ttl;
	ip->ttl--;
	new_ttl_word = *(__u16 *)&ip->ttl;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ttl_word, new_ttl_word, 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, dst->mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, dst->host_mac, ETH_ALEN, 0) < 0)
		return -1;
	return bpf_redirect(dst->ifindex, 0);
}

SEC("classifier/from_container")
int from_container(struct __sk_buff *skb)
{
	struct endpoint_info *self, *dst;
	struct pkt4 p = {};
	__u32 ifindex = skb->ifindex;
	__u32 dst_id = 0;
	int rc, ct, report = 0;

	self = bpf_map_lookup_elem(&cil_lxc_ifx, &ifindex);
	if (!self)
		/* A veth we do not (or no longer) manage: stay out of its way. */
		return TC_ACT_UNSPEC;

	rc = parse_ipv4(skb, &p);
	if (rc == PARSE_PASS)
		return TC_ACT_OK;
	if (rc)
		return drop(skb, METRIC_EGRESS, parse_drop_reason(rc), self->ep_id,
			    self->sec_identity, 0, CT_NONE);

	/* A pod may only send from its own address. */
	if (p.saddr != self->ipv4)
		return drop(skb, METRIC_EGRESS, DROP_INVALID_SIP, self->ep_id,
			    self->sec_identity, 0, CT_NONE);

	dst = bpf_map_lookup_elem(&cil_lxc4, &p.daddr);
	if (dst)
		dst_id = dst->sec_identity;

	if (ct_untracked(&p)) {
		ct = CT_NONE;
		report = 1;
	} else {
		ct = ct_process(&p, CT_EGRESS, self->sec_identity, skb->len, &report);
	}
	count(METRIC_EGRESS, METRIC_FORWARDED, skb->len);

	if (dst) {
		__u16 ep_id = self->ep_id;
		__u32 src_id = self->sec_identity;

		if (report)
			emit(skb, EVENT_TRACE, TRACE_FROM_LXC, ep_id, src_id, dst_id, ct);
		rc = redirect_to_endpoint(skb, dst);
		if (rc < 0)
			return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, ep_id, src_id,
				    dst_id, ct);
		return rc;
	}
	if (report)
		emit(skb, EVENT_TRACE, TRACE_TO_STACK, self->ep_id, self->sec_identity,
		     dst_id, ct);
	return TC_ACT_OK;
}

SEC("classifier/to_container")
int to_container(struct __sk_buff *skb)
{
	struct endpoint_info *self, *src;
	struct pkt4 p = {};
	__u32 ifindex = skb->ifindex;
	__u32 src_id = 0;
	int rc, ct, report = 0;

	self = bpf_map_lookup_elem(&cil_lxc_ifx, &ifindex);
	if (!self)
		return TC_ACT_UNSPEC;

	rc = parse_ipv4(skb, &p);
	if (rc == PARSE_PASS)
		return TC_ACT_OK;
	if (rc)
		return drop(skb, METRIC_INGRESS, parse_drop_reason(rc), self->ep_id, 0,
			    self->sec_identity, CT_NONE);

	src = bpf_map_lookup_elem(&cil_lxc4, &p.saddr);
	if (src)
		src_id = src->sec_identity;

	if (ct_untracked(&p)) {
		ct = CT_NONE;
		report = 1;
	} else {
		ct = ct_process(&p, CT_INGRESS, src_id, skb->len, &report);
	}
	count(METRIC_INGRESS, METRIC_FORWARDED, skb->len);
	if (report)
		emit(skb, EVENT_TRACE, TRACE_TO_LXC, self->ep_id, src_id, self->sec_identity, ct);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
