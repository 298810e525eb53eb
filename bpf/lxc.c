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
 * destination veth's egress (which runs to_container there); a pod on another node is
 * reached through the VXLAN device, addressed to that node (from the ipcache) with the
 * sender's identity as the VNI, and from_overlay on the far side applies the receiving pod's
 * ingress side and puts the packet straight into the pod (bpf_redirect_peer); everything else
 * goes to the node's stack, which routes it to the node itself or out to the world.
 *
 * A connection an L7 rule names goes to the node's proxy instead (proxy.h, abi.h's proxy
 * marks): from_container assigns it to the proxy's socket; to_container, an egress hook,
 * sends it back in through the veth's ingress for from_container to assign.
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
#include "ciliate/arp.h"

#define LB_NONE 0
#define LB_XLATED 1
#define LB_NO_BACKEND 2
#define LB_ERROR 3

/* Per-packet service translation on the pod's egress (the fallback when socket LB did not
 * already connect the socket to a backend). The connection's backend is remembered in a
 * CT_SERVICE entry keyed by the tuple towards the VIP. On LB_XLATED, p holds the backend
 * as destination and *rev_nat the frontend's rev-NAT index. */
static __always_inline int lb4_xlate(struct __sk_buff *skb, struct pkt4 *p, __u16 *rev_nat,
				     __u32 *backend_id)
{
	struct lb4_key key = {.address = p->daddr, .dport = p->dport, .proto = p->proto};
	struct ct_key4 sk = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.dir = CT_SERVICE,
	};
	struct lb4_service *svc;
	struct lb4_backend *be = NULL;
	struct ct_entry4 *e;
	__u32 now = now_secs();

	if (p->fragment || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return LB_NONE;
	svc = bpf_map_lookup_elem(&cil_lb4_svc, &key);
	if (!svc)
		return LB_NONE;

	e = bpf_map_lookup_elem(&cil_ct4, &sk);
	if (e) {
		int reopen = p->proto == IPPROTO_TCP &&
			     (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
			     (e->state & (CT_F_RESET | CT_F_TX_CLOSING | CT_F_RX_CLOSING));
		__u32 id = e->backend_id;

		/* A backend that left the maps takes its connections with it. */
		if (!reopen)
			be = bpf_map_lookup_elem(&cil_lb4_be, &id);
		if (be) {
			*backend_id = id;
			__sync_fetch_and_add(&e->tx_packets, 1);
			__sync_fetch_and_add(&e->tx_bytes, skb->len);
			if (p->proto == IPPROTO_TCP)
				ct_tcp_update(e, p->tcp_flags, 0);
			e->expires = now + ct_service_lifetime(e, p->proto);
		}
	}
	if (!be) {
		struct ct_entry4 n = {};

		be = lb4_pick(&key, svc, p->saddr, 0, backend_id);
		if (!be)
			return LB_NO_BACKEND;
		n.backend_id = *backend_id;
		n.rev_nat_index = svc->rev_nat_index;
		n.tx_packets = 1;
		n.tx_bytes = skb->len;
		n.last_report = now;
		if (p->proto == IPPROTO_TCP)
			ct_tcp_update(&n, p->tcp_flags, 0);
		n.expires = now + ct_service_lifetime(&n, p->proto);
		bpf_map_update_elem(&cil_ct4, &sk, &n, BPF_ANY);
	}
	*rev_nat = svc->rev_nat_index;
	if (nat4_rewrite(skb, p, 0, p->daddr, be->address, p->dport, be->port) < 0)
		return LB_ERROR;
	p->daddr = be->address;
	p->dport = be->port;
	return LB_XLATED;
}

/* The reply of a hairpinned connection: the pod answers HAIRPIN_IPV4, which stands for the
 * pod itself. It goes back in as the reply of the pod's own connection (to_endpoint's reply
 * side: conntrack, the Service's reverse NAT), straight out the same veth. Anything to
 * HAIRPIN_IPV4 that is not such a reply is dropped. */
static __always_inline int hairpin_reply(struct __sk_buff *skb, const struct endpoint_info *self,
					 struct pkt4 *p)
{
	struct endpoint_info me = *self;
	struct ct_proxy cp = {};
	__u16 rev_nat = 0, svc = 0;
	int ct, report = 0, rc;

	if (nat4_rewrite(skb, p, 0, p->daddr, me.ipv4, p->dport, p->dport) < 0)
		return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, me.ep_id, me.sec_identity,
			    me.sec_identity, CT_NONE);
	p->daddr = me.ipv4;
	ct = ct_process(p, CT_INGRESS, me.sec_identity, skb->len, &report, 0, 0, &rev_nat, &svc,
			0, &cp);
	if (ct != CT_REPLY)
		return drop(skb, METRIC_EGRESS, DROP_CT_UNKNOWN, me.ep_id, me.sec_identity,
			    me.sec_identity, CT_NONE);
	if (trace_flags() & NODE_F_TRACE_EVERY)
		report = 1;
	if (lb4_rev_nat(skb, p, rev_nat) < 0)
		return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, me.ep_id, me.sec_identity,
			    me.sec_identity, ct);
	count(METRIC_INGRESS, METRIC_FORWARDED, skb->len);
	if (report)
		emit_svc(skb, EVENT_TRACE, TRACE_TO_LXC, me.ep_id, me.sec_identity,
			 me.sec_identity, ct, svc);
	rc = redirect_to_endpoint(skb, &me, 0);
	if (rc < 0)
		return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, me.ep_id, me.sec_identity,
			    me.sec_identity, ct);
	skb->mark = MARK_HAIRPIN;
	return rc;
}

/* to_container runs on an egress hook, where bpf_sk_assign is refused: a packet for the
 * ingress proxy goes back in through the same veth's ingress (Cilium's proxy hairpin), where
 * from_container recognises the to-proxy mark and assigns it. It carries the host side's own
 * MAC as destination, or the stack would take it for another host's. */
static __always_inline int to_ingress_proxy(struct __sk_buff *skb,
					    const struct endpoint_info *self, __u16 port)
{
	__u8 host_mac[ETH_ALEN], pod_mac[ETH_ALEN];
	__u32 ifindex = self->ifindex;
	__u16 ep_id = self->ep_id;
	__u32 id = self->sec_identity;

	__builtin_memcpy(host_mac, self->host_mac, ETH_ALEN);
	__builtin_memcpy(pod_mac, self->mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, host_mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, pod_mac, ETH_ALEN, 0) < 0)
		return drop(skb, METRIC_INGRESS, DROP_WRITE_ERROR, ep_id, 0, id, CT_NONE);
	skb->mark = mark_to_proxy(port);
	return bpf_redirect(ifindex, BPF_F_INGRESS);
}

/* Whether `p` (towards this pod) answers an upstream connection a proxy opened from the pod's
 * address to a pod of this node: that pod's side tracked it with CT_F_FROM_PROXY. */
static __always_inline int proxy_upstream_answer(const struct pkt4 *p)
{
	struct ct_key4 k = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.dir = CT_INGRESS,
	};
	struct ct_entry4 *e = bpf_map_lookup_elem(&cil_ct4, &k);

	return e && (e->state & CT_F_FROM_PROXY);
}

SEC("classifier/from_container")
int from_container(struct __sk_buff *skb)
{
	struct endpoint_info *self, *dst;
	struct ipcache_entry *remote = NULL;
	struct proxy_ctx pc = {};
	struct pkt4 p = {};
	__u32 ifindex = skb->ifindex;
	__u32 dst_id = 0, backend_id = 0, tunnel_if;
	__be32 node = 0;
	__u16 rev_nat = 0, ct_rev_nat = 0, svc = 0;
	__u32 rule = 0;
	int rc, ct, report = 0;

	self = bpf_map_lookup_elem(&cil_lxc_ifx, &ifindex);
	if (!self)
		/* A veth we do not (or no longer) manage: stay out of its way. */
		return TC_ACT_UNSPEC;

	rc = parse_ipv4(skb, &p);
	if (rc == PARSE_PASS) {
		__u8 gw_mac[ETH_ALEN];

		/* The gateway's ARP answer goes straight back into the pod. */
		__builtin_memcpy(gw_mac, self->host_mac, ETH_ALEN);
		if (arp_gateway_reply(skb, gw_mac))
			return bpf_redirect(ifindex, 0);
		return TC_ACT_OK;
	}
	if (rc)
		return drop(skb, METRIC_EGRESS, parse_drop_reason(rc), self->ep_id,
			    self->sec_identity, 0, CT_NONE);

	/* to_container sent it back in here to reach the ingress proxy (a pod cannot set a mark:
	 * its veth clears it). Judged and tracked there; only the socket is left to find. */
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_TO_PROXY) {
		rc = proxy_assign(skb, &p, skb->mark >> 16);
		if (rc)
			return drop(skb, METRIC_INGRESS, rc, self->ep_id, 0, self->sec_identity,
				    CT_NONE);
		return TC_ACT_OK;
	}

	/* A pod may only send from its own address. */
	if (p.saddr != self->ipv4)
		return drop(skb, METRIC_EGRESS, DROP_INVALID_SIP, self->ep_id,
			    self->sec_identity, 0, CT_NONE);

	/* A pod's address, of this node or (through the tunnel) another, is never a Service
	 * frontend: pod-to-pod packets are not looked up as one. */
	dst = bpf_map_lookup_elem(&cil_lxc4, &p.daddr);
	if (!dst)
		remote = ipcache_lookup(p.daddr);
	rc = LB_NONE;
	if (!dst && !(remote && remote->tunnel_endpoint)) {
		rc = lb4_xlate(skb, &p, &rev_nat, &backend_id);
		if (rc == LB_NO_BACKEND) {
			__u8 pod_mac[ETH_ALEN], gw_mac[ETH_ALEN];
			__u32 self_if = self->ifindex;

			__builtin_memcpy(pod_mac, self->mac, ETH_ALEN);
			__builtin_memcpy(gw_mac, self->host_mac, ETH_ALEN);
			drop(skb, METRIC_EGRESS, DROP_NO_SERVICE, self->ep_id, self->sec_identity,
			     0, CT_NONE);
			if (reply_unreachable(skb, &p, gw_mac, pod_mac) < 0)
				return TC_ACT_SHOT;
			skb->mark = MARK_GENERATED;
			return bpf_redirect(self_if, 0);
		}
		if (rc == LB_ERROR)
			return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, self->ep_id,
				    self->sec_identity, 0, CT_NONE);
		if (rc == LB_NONE && p.daddr == HAIRPIN_IPV4 &&
		    (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP))
			return hairpin_reply(skb, self, &p);
		if (rc == LB_XLATED) {
			/* Where the backend is. */
			dst = bpf_map_lookup_elem(&cil_lxc4, &p.daddr);
			remote = dst ? NULL : ipcache_lookup(p.daddr);
		}
	}
	if (dst) {
		dst_id = dst->sec_identity;
	} else {
		dst_id = remote ? remote->identity : IDENTITY_WORLD;
		node = remote ? remote->tunnel_endpoint : 0;
	}

	ct = ct_and_policy(skb, self, &p, 1, dst_id, rev_nat, &ct_rev_nat, &svc, &report, &pc,
			   &rule);
	if (ct < 0)
		return drop_rule(skb, METRIC_EGRESS, -ct, self->ep_id, self->sec_identity, dst_id,
				 CT_NEW, svc, rule);

	/* An egress L7 rule's connection goes to the proxy, to the original destination (the
	 * backend, after Service DNAT); a server's reply to the proxy's upstream connection goes
	 * to that connection's socket. Both through the node's stack (policy routing of the
	 * to-proxy mark), never into the destination. */
	if (pc.redirect_port || pc.reply_to_proxy) {
		__u16 ep_id = self->ep_id;
		__u32 src_id = self->sec_identity;

		rc = proxy_assign(skb, &p, pc.redirect_port);
		if (rc)
			return drop_svc(skb, METRIC_EGRESS, rc, ep_id, src_id, dst_id, ct, svc);
		count(METRIC_EGRESS, METRIC_FORWARDED, skb->len);
		if (report)
			emit_rule(skb, EVENT_TRACE, TRACE_TO_PROXY, ep_id, src_id, dst_id, ct, svc,
				  rule);
		return TC_ACT_OK;
	}
	count(METRIC_EGRESS, METRIC_FORWARDED, skb->len);

	if (dst) {
		__u16 ep_id = self->ep_id;
		__u32 src_id = self->sec_identity;
		int hairpin = rc == LB_XLATED && dst->ifindex == self->ifindex;

		/* The destination's to-endpoint event reports the packet too: this one only at
		 * monitor aggregation "none", as Cilium, or when the packet was addressed to a
		 * Service, which only this side knows (the destination's event cannot name it). */
		if (report && (svc || (trace_flags() & NODE_F_TRACE_FROM)))
			emit_rule(skb, EVENT_TRACE, TRACE_FROM_LXC, ep_id, src_id, dst_id, ct, svc,
				  rule);
		/* The pod reached itself through a Service: it would drop a packet from its own
		 * address, so the packet comes from HAIRPIN_IPV4 (conntrack holds the real tuple). */
		if (hairpin && nat4_rewrite(skb, &p, 1, p.saddr, HAIRPIN_IPV4, p.sport, p.sport) < 0)
			return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, ep_id, src_id, dst_id,
				    ct);
		rc = redirect_to_endpoint(skb, dst, 0);
		if (rc < 0)
			return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, ep_id, src_id,
				    dst_id, ct);
		if (hairpin)
			skb->mark = MARK_HAIRPIN;
		return rc;
	}
	tunnel_if = node ? tunnel_ifindex() : 0;
	if (tunnel_if) {
		__u16 ep_id = self->ep_id;
		__u32 src_id = self->sec_identity;

		if (report)
			emit_rule(skb, EVENT_TRACE, TRACE_TO_OVERLAY, ep_id, src_id, dst_id, ct,
				  svc, rule);
		rc = encap_to_node(skb, tunnel_if, node, src_id);
		if (rc < 0)
			return drop(skb, METRIC_EGRESS, DROP_WRITE_ERROR, ep_id, src_id,
				    dst_id, ct);
		return rc;
	}
	if (report)
		emit_rule(skb, EVENT_TRACE, TRACE_TO_STACK, self->ep_id, self->sec_identity,
			  dst_id, ct, svc, rule);
	return TC_ACT_OK;
}

SEC("classifier/to_container")
int to_container(struct __sk_buff *skb)
{
	struct endpoint_info *self, *src;
	struct proxy_ctx pc = {};
	struct pkt4 p = {};
	__u32 ifindex = skb->ifindex;
	__u32 mark = skb->mark;
	__u32 src_id = 0;
	int rc;

	self = bpf_map_lookup_elem(&cil_lxc_ifx, &ifindex);
	if (!self)
		return TC_ACT_UNSPEC;
	/* Our own answers for a service without backends (already reported as a drop), and
	 * hairpinned Service packets (judged and tracked by from_container; like Cilium, a pod
	 * reaching itself is not under its own ingress policy). */
	if (skb->mark == MARK_GENERATED || skb->mark == MARK_HAIRPIN)
		return TC_ACT_OK;

	rc = parse_ipv4(skb, &p);
	if (rc == PARSE_PASS)
		return TC_ACT_OK;
	if (rc)
		return drop(skb, METRIC_INGRESS, parse_drop_reason(rc), self->ep_id, 0,
			    self->sec_identity, CT_NONE);

	/* The node's own TCP packet (no ingress device): it may be the ingress proxy answering
	 * the upstream connection another proxy opened from this pod's address (an egress-
	 * proxied connection meeting the server's ingress proxy on this node). That answer is for
	 * the proxy's socket, not the pod. */
	if (skb->ingress_ifindex == 0 && p.proto == IPPROTO_TCP && proxy_upstream_answer(&p))
		return to_ingress_proxy(skb, self, 0);
	if (mark_is_from_proxy(mark)) {
		/* The proxy's upstream connection for a client: judged as that client. After the
		 * ingress proxy it is not sent there again; after the egress proxy it may be. */
		src_id = mark_identity(mark);
		pc.from_proxy = 1;
		pc.no_redirect = (mark & MARK_MAGIC_MASK) == MARK_MAGIC_PROXY_INGRESS;
	} else {
		src = bpf_map_lookup_elem(&cil_lxc4, &p.saddr);
		src_id = src ? src->sec_identity : ipcache_identity(p.saddr);
	}
	rc = to_endpoint(skb, self, &p, src_id, &pc);
	if (rc != TC_ACT_OK || (!pc.redirect_port && !pc.reply_to_proxy))
		return rc;
	return to_ingress_proxy(skb, self, pc.redirect_port);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
