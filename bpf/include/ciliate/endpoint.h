/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * An endpoint's side of the datapath, shared by every hook that delivers to or sends from a
 * pod: the pod veth (lxc.c) and the VXLAN device (overlay.c). Conntrack then policy for one
 * direction, reverse NAT of Service replies, delivery to an endpoint with router semantics.
 */
#pragma once

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
#include "ciliate/proxy.h"

/* The L7 proxy for one packet of an endpoint's direction. In: what the packet is. Out: where
 * it goes besides the endpoint. */
struct proxy_ctx {
	__u8 from_proxy;      /* in: the proxy sent it for a client (a from-proxy mark) */
	__u8 no_redirect;     /* in: it left this direction's proxy: never sent there again */
	__u8 reply_to_proxy;  /* out: a reply of a connection the proxy opened: to its socket */
	__u8 pad;
	__u16 redirect_port;  /* out: the original direction of a proxied connection: to the
			       * proxy's socket, its listener on this port for a new one */
	__u16 pad2;
	__u32 ifindex;        /* in: the device events name; 0: the one the program runs on
			       * (the uplink names the tunnel device for what it decapsulated) */
};

/* The device an endpoint's events name. */
static __always_inline __u32 event_ifindex(const struct __sk_buff *skb,
					   const struct proxy_ctx *pc)
{
	return pc->ifindex ? pc->ifindex : skb->ifindex;
}

/* Whether the proxy takes connections of `proto` in this direction: TCP (HTTP, Kafka, DNS)
 * both ways, UDP (DNS) only from an endpoint. A UDP "connection" is tracked like any other, so
 * the proxy's answer (sent from the resolver's address) is its reply. */
static __always_inline int proxy_takes(__u8 proto, __u8 egress)
{
	return proto == IPPROTO_TCP || (proto == IPPROTO_UDP && egress);
}

/* Socket LB: the rev-NAT index of the frontend the packet's socket asked for, when sock.c
 * connected it (or sent this datagram) to a backend instead; 0 otherwise. sock.c records the
 * translation per socket in cil_lb4_sk, keyed by the socket cookie and the backend; the pod's
 * packet still carries its socket here (a veth keeps skb->sk), so the cookie finds it. It is
 * looked up once, for a new connection, and kept in the conntrack entry (sock_rev_nat), which
 * names the Service in the events of every later packet, replies included, without being
 * translated back like a per-packet rev_nat_index. */
static __always_inline __u16 sock_lb_rev_nat(struct __sk_buff *skb, const struct pkt4 *p)
{
	struct lb4_sock_key key = {.address = p->daddr, .port = p->dport};
	struct lb4_reverse_nat *rn;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	key.cookie = bpf_get_socket_cookie(skb);
	if (!key.cookie)
		return 0;
	rn = bpf_map_lookup_elem(&cil_lb4_sk, &key);
	return rn ? rn->rev_nat_index : 0;
}

/* Conntrack, then policy, for one direction of an endpoint. Returns the CT state, or the
 * negated drop reason when policy refuses the packet. Replies of tracked connections skip
 * policy; a new connection is recorded only once policy allowed it, and where the direction
 * is under policy (or denied) it gets a policy-verdict event. *svc_out is the rev-NAT index
 * of the Service frontend the connection was addressed to (per-packet or socket LB), for
 * events; *rev_nat_out the one replies are translated back from; *rule_out the rule of the
 * policy entry that judged the packet (0: none), for its drop or trace event. */
static __always_inline int ct_and_policy(struct __sk_buff *skb, const struct endpoint_info *self,
					 const struct pkt4 *p, __u8 egress, __u32 peer,
					 __u16 rev_nat, __u16 *rev_nat_out, __u16 *svc_out,
					 int *report, struct proxy_ctx *pc, __u32 *rule_out)
{
	__u8 dir = egress ? CT_EGRESS : CT_INGRESS;
	__u32 src_id = egress ? self->sec_identity : peer;
	__u32 dst_id = egress ? peer : self->sec_identity;
	__u16 enforced = egress ? EP_F_EGRESS_ENFORCED : EP_F_INGRESS_ENFORCED;
	struct policy_result res = {};
	int ct, verdict = 0, icmp_unrelated = 0;
	__u16 sock_rev_nat = 0;
	struct ct_proxy cp = {};

	*report = 0;
	*svc_out = 0;
	*rule_out = 0;
	pc->reply_to_proxy = 0;
	pc->redirect_port = 0;
	if (ct_untracked(p)) {
		*report = 1;
		/* An ICMP error belongs to the connection it quotes, which policy has already
		 * judged: it passes when that is a connection of this endpoint. Any other (a
		 * forged or stray one) is judged like other untracked packets (fragments, ICMP
		 * other than echo), one by one. */
		if (p->proto == IPPROTO_ICMP && !p->fragment && icmp_is_error(p->icmp_type)) {
			if (icmp_error_related(skb, p, egress, self->ipv4))
				return CT_NONE;
			icmp_unrelated = 1;
		}
		ct = CT_NONE;
	} else {
		ct = ct_process(p, dir, src_id, skb->len, report, rev_nat, 0, rev_nat_out,
				svc_out, 0, &cp);
		if (ct == CT_REPLY) {
			pc->reply_to_proxy = (cp.flags & CT_F_FROM_PROXY) != 0;
			if (trace_flags() & NODE_F_TRACE_EVERY)
				*report = 1;
			return ct;
		}
		if (ct == CT_NEW && egress && !rev_nat) {
			sock_rev_nat = sock_lb_rev_nat(skb, p);
			*svc_out = sock_rev_nat;
		}
	}
	verdict = policy_check(self, egress, peer, p, skb->len, &res);
	*rule_out = res.rule;
	/* The node reaches its own pods (health checks) unless a rule denies it explicitly:
	 * Cilium's allow-localhost default. */
	if (verdict == DROP_POLICY && !egress && peer == IDENTITY_HOST)
		verdict = 0;
	/* Say why a default-deny refused it: it quoted no connection of the endpoint. */
	if (verdict == DROP_POLICY && icmp_unrelated)
		verdict = DROP_CT_UNKNOWN;
	/* L7 rules are for TCP, and for UDP on egress (DNS queries): another protocol never
	 * passes unchecked (fail closed). */
	if (!verdict && ct == CT_NEW && res.proxy_port && !pc->no_redirect &&
	    !proxy_takes(p->proto, egress))
		verdict = DROP_PROXY_UNKNOWN_PROTO;
	if (ct == CT_NEW && (verdict || (self->flags & enforced)))
		emit_flags_on(skb, event_ifindex(skb, pc), EVENT_POLICY_VERDICT, verdict,
			      self->ep_id, src_id, dst_id, ct,
			      res.match | (egress ? EVENT_F_EGRESS : 0), *svc_out, res.rule);
	if (verdict)
		return -verdict;
	if (ct == CT_NEW) {
		/* The redirect is decided once, here, and kept by the connection. */
		cp.flags = pc->from_proxy ? CT_F_FROM_PROXY : 0;
		cp.port = 0;
		if (res.proxy_port && !pc->no_redirect && proxy_takes(p->proto, egress)) {
			cp.flags |= CT_F_TO_PROXY;
			cp.port = res.proxy_port;
		}
		ct_create(p, dir, src_id, skb->len, rev_nat, sock_rev_nat, rev_nat_out, svc_out,
			  &cp);
	}
	if ((cp.flags & CT_F_TO_PROXY) && !pc->no_redirect)
		pc->redirect_port = cp.port;
	if (trace_flags() & NODE_F_TRACE_EVERY)
		*report = 1;
	return ct;
}

/* Replies of translated connections get the frontend back as their source. */
static __always_inline int lb4_rev_nat(struct __sk_buff *skb, struct pkt4 *p, __u16 rev_nat)
{
	struct lb4_reverse_nat *rn;

	if (!rev_nat)
		return 0;
	rn = bpf_map_lookup_elem(&cil_lb4_rnat, &rev_nat);
	if (!rn)
		return 0;
	if (nat4_rewrite(skb, p, 1, p->saddr, rn->address, p->sport, rn->port) < 0)
		return -1;
	p->saddr = rn->address;
	p->sport = rn->port;
	return 0;
}


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

/* Delivers to an endpoint of this node: router semantics (new MACs, TTL - 1), then either to
 * that endpoint's veth egress, whose program applies its side (`peer` 0), or, where the caller
 * has applied it, straight into the pod (`peer` 1, from an ingress hook only). */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb,
						const struct endpoint_info *dst, int peer)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	__u32 check;

	if ((void *)(ip + 1) > data_end)
		return -1;
	/* The stack answers an expiring TTL with ICMP time exceeded; let it. */
	if (ip->ttl <= 1)
		return TC_ACT_OK;
	/* Written in place, without helpers: they cost a call (and a writability check) each,
	 * on every packet. The checksum follows the TTL as the kernel's ip_decrease_ttl does it
	 * (RFC 1624: the TTL is the high byte of its 16-bit word). */
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xFFFF));
	ip->ttl--;
	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, dst->host_mac, ETH_ALEN);
	return peer ? bpf_redirect_peer(dst->ifindex, 0) : bpf_redirect(dst->ifindex, 0);
}

/* The receiving side of an endpoint: conntrack, ingress policy against the sender's identity
 * `src_id`, reverse NAT of Service replies. TC_ACT_OK to deliver, or a reported drop. */
static __always_inline int to_endpoint(struct __sk_buff *skb, const struct endpoint_info *self,
				       struct pkt4 *p, __u32 src_id, struct proxy_ctx *pc)
{
	__u32 ifindex = event_ifindex(skb, pc);
	__u16 rev_nat = 0, svc = 0;
	__u32 rule = 0;
	int ct, report = 0;

	ct = ct_and_policy(skb, self, p, 0, src_id, 0, &rev_nat, &svc, &report, pc, &rule);
	if (ct < 0)
		return drop_rule_on(skb, ifindex, METRIC_INGRESS, -ct, self->ep_id, src_id,
				    self->sec_identity, CT_NEW, svc, rule);
	if (ct == CT_REPLY && lb4_rev_nat(skb, p, rev_nat) < 0)
		return drop_rule_on(skb, ifindex, METRIC_INGRESS, DROP_WRITE_ERROR, self->ep_id,
				    src_id, self->sec_identity, ct, 0, 0);
	count(METRIC_INGRESS, METRIC_FORWARDED, skb->len);
	if (report)
		emit_flags_on(skb, ifindex, EVENT_TRACE,
			      (pc->redirect_port || pc->reply_to_proxy) ? TRACE_TO_PROXY
									: TRACE_TO_LXC,
			      self->ep_id, src_id, self->sec_identity, ct, 0, svc, rule);
	return TC_ACT_OK;
}

/* A packet from another node for this node's pod `dst`, judged by `src_id` (the identity the
 * sender's node put in the VNI): the pod's receiving side (to_endpoint), then straight into
 * the pod (bpf_redirect_peer), or to the proxy's socket for a remote client's connection to
 * the pod's ingress proxy, or a reply to an upstream connection the proxy here opened for one
 * of this node's pods (an ingress hook, where the socket can be assigned directly). Events
 * name device `ifindex`: the tunnel device, wherever the packet was decapsulated. */
static __always_inline int overlay_deliver(struct __sk_buff *skb, struct endpoint_info *dst,
					   struct pkt4 *p, __u32 src_id, __u32 ifindex)
{
	struct proxy_ctx pc = {.ifindex = ifindex};
	int rc;

	rc = to_endpoint(skb, dst, p, src_id, &pc);
	if (rc != TC_ACT_OK)
		return rc;
	if (pc.redirect_port || pc.reply_to_proxy) {
		rc = proxy_assign(skb, p, pc.redirect_port);
		if (rc)
			return drop_rule_on(skb, ifindex, METRIC_INGRESS, rc, dst->ep_id, src_id,
					    dst->sec_identity, CT_NONE, 0, 0);
		return TC_ACT_OK;
	}
	rc = redirect_to_endpoint(skb, dst, 1);
	if (rc < 0)
		return drop_rule_on(skb, ifindex, METRIC_INGRESS, DROP_WRITE_ERROR, dst->ep_id,
				    src_id, dst->sec_identity, CT_NONE, 0, 0);
	return rc;
}
