/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The node's L7 proxy, seen from the datapath: the marks of abi.h ("Packet marks of the L7
 * proxy") and handing a packet to one of the proxy's sockets with bpf_sk_assign, as Cilium's
 * tproxy path does. Only valid on a TC ingress hook (the helper refuses egress); to_container
 * (an egress hook) sends its packets through the veth's ingress first.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "parse.h"
#include "events.h"

#define PACKET_HOST 0

/* Whether the proxy sent the packet for a client (an upstream connection). */
static __always_inline int mark_is_from_proxy(__u32 mark)
{
	__u32 magic = mark & MARK_MAGIC_MASK;

	return magic == MARK_MAGIC_PROXY_INGRESS || magic == MARK_MAGIC_PROXY_EGRESS;
}

/* The client's identity a from-proxy mark carries. */
static __always_inline __u32 mark_identity(__u32 mark)
{
	return (mark >> 16) | ((mark & 0xff) << 16) | ((mark & MARK_IDENTITY_BIT24) << 12);
}

static __always_inline __u32 mark_to_proxy(__u16 port)
{
	return MARK_MAGIC_TO_PROXY | ((__u32)port << 16);
}

/* Assigns a TCP packet to the proxy's socket for it: the connection's own socket when one
 * exists for the exact tuple (later packets, and replies to the proxy's upstream
 * connections), else the listener on `port` (a new connection; 0 = none may be made). */
static __always_inline int proxy_lookup_tcp(struct __sk_buff *skb, struct bpf_sock_tuple *t,
					    __u16 port, struct bpf_sock **out)
{
	struct bpf_sock *sk;

	sk = bpf_skc_lookup_tcp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* A listener of the node on the original destination, or a dying socket, is not
		 * the proxy's connection. */
		if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT) {
			*out = sk;
			return 0;
		}
		bpf_sk_release(sk);
	}
	if (!port)
		return DROP_PROXY_LOOKUP_FAILED;
	/* 127.0.0.1:port finds a listener bound there or to 0.0.0.0:port. */
	t->ipv4.daddr = bpf_htonl(0x7f000001);
	t->ipv4.dport = bpf_htons(port);
	sk = bpf_skc_lookup_tcp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return DROP_PROXY_LOOKUP_FAILED;
	}
	*out = sk;
	return 0;
}

/* Finds the proxy's UDP socket on `port` (the DNS proxy's). UDP has no per-flow socket of the
 * proxy, so the original tuple is not looked up at all: it could only find a socket of the
 * node bound to the original destination (a node-local resolver on 0.0.0.0:53), which is
 * exactly what the redirect must not reach. The proxy's socket is unconnected and bound to
 * 0.0.0.0:port (or 127.0.0.1:port), which a lookup for 127.0.0.1:port finds. */
static __always_inline int proxy_lookup_udp(struct __sk_buff *skb, struct bpf_sock_tuple *t,
					    __u16 port, struct bpf_sock **out)
{
	struct bpf_sock *sk;

	if (!port)
		return DROP_PROXY_LOOKUP_FAILED;
	t->ipv4.daddr = bpf_htonl(0x7f000001);
	t->ipv4.dport = bpf_htons(port);
	sk = bpf_sk_lookup_udp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	*out = sk;
	return 0;
}

/* Assigns the packet to the proxy's socket for it and marks it for the proxy's policy
 * routing (TCP: proxy_lookup_tcp; UDP: the proxy's datagram socket on `port`). Returns 0, or
 * the drop reason: no such socket (the proxy is down: fail closed), a protocol the proxy does
 * not take, or the kernel refused the assignment. */
static __always_inline int proxy_assign(struct __sk_buff *skb, const struct pkt4 *p, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk = NULL;
	long rc;

	if (p->fragment)
		return DROP_PROXY_UNKNOWN_PROTO;
	t.ipv4.saddr = p->saddr;
	t.ipv4.daddr = p->daddr;
	t.ipv4.sport = p->sport;
	t.ipv4.dport = p->dport;
	if (p->proto == IPPROTO_TCP)
		rc = proxy_lookup_tcp(skb, &t, port, &sk);
	else if (p->proto == IPPROTO_UDP)
		rc = proxy_lookup_udp(skb, &t, port, &sk);
	else
		return DROP_PROXY_UNKNOWN_PROTO;
	if (rc)
		return rc;
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	rc = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (rc)
		return DROP_PROXY_SET_FAILED;
	skb->mark = mark_to_proxy(port);
	count(METRIC_INGRESS, METRIC_TO_PROXY, skb->len);
	/* A decapsulated packet may carry another host's MAC: the stack must take it as ours. */
	bpf_skb_change_type(skb, PACKET_HOST);
	return 0;
}
