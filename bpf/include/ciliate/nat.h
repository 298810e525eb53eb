/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address/port rewrites with checksum fix-ups, and the replies the datapath generates. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "parse.h"

#define IP_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_CHECK_OFF (ETH_HLEN + offsetof(struct iphdr, check))

/* Rewrites an address and a port of the packet (source when `source`, else destination),
 * fixing the IPv4 and TCP/UDP checksums. Returns < 0 on failure. */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, const struct pkt4 *p, int source,
					__be32 old_addr, __be32 new_addr, __be16 old_port,
					__be16 new_port)
{
	__u32 addr_off = source ? IP_SADDR_OFF : IP_DADDR_OFF;
	__u32 port_off = p->l4_off + (source ? 0 : 2);
	__u32 csum_off;
	__u64 udp_flag = 0;

	if (p->proto == IPPROTO_TCP) {
		csum_off = p->l4_off + 16;
	} else if (p->proto == IPPROTO_UDP) {
		csum_off = p->l4_off + 6;
		/* A zero UDP checksum means "none" and must stay zero. */
		udp_flag = BPF_F_MARK_MANGLED_0;
	} else {
		return -1;
	}
	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					BPF_F_PSEUDO_HDR | udp_flag | sizeof(new_addr)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CHECK_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					udp_flag | sizeof(new_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return -1;
	}
	return 0;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* One's-complement sum of `words` 16-bit words (byte order does not matter for it). */
static __always_inline __u32 csum_words(const void *buf, int words)
{
	const __u16 *w = buf;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < words; i++)
		sum += w[i];
	return sum;
}

static __always_inline void reply_ip(struct iphdr *ip, __be32 saddr, __be32 daddr, __u8 proto,
				     __u16 tot_len)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(tot_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000); /* DF */
	ip->ttl = 64;
	ip->protocol = proto;
	ip->check = 0;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = csum_fold(csum_words(ip, sizeof(*ip) / 2));
}

/* Replies are built on the stack; two bytes of padding in front keep the IP header 4-byte
 * aligned. Only the bytes from `eth` on are written to the packet. */
struct tcp_reset_frame {
	__u8 pad[2];
	struct ethhdr eth;
	struct iphdr ip;
	struct tcphdr tcp;
};

struct icmp_unreach_frame {
	__u8 pad[2];
	struct ethhdr eth;
	struct iphdr ip;
	struct icmphdr icmp;
	__u8 orig[28]; /* the offending IP header and the first 8 bytes of its payload */
};

#define FRAME_LEN(r) (sizeof(r) - 2)

/* Turns the packet into the answer a host without the service would give – a TCP RST, or
 * ICMP port unreachable for UDP – addressed back to the sender as if from the frontend.
 * `eth_src` / `eth_dst` are the MACs of the reply. Returns < 0 when it cannot. */
static __always_inline int reply_unreachable(struct __sk_buff *skb, const struct pkt4 *p,
					     const __u8 *eth_src, const __u8 *eth_dst)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcp_reset_frame r = {};
		__be32 seq, ack;
		__u16 tot_len;
		__u8 doff, flags = p->tcp_flags;
		__u32 seg_len, sum;

		if (flags & TCP_FLAG_RST)
			return -1; /* never answer a reset */
		if (bpf_skb_load_bytes(skb, p->l4_off + 4, &seq, 4) < 0 ||
		    bpf_skb_load_bytes(skb, p->l4_off + 8, &ack, 4) < 0 ||
		    bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) < 0 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 2, &tot_len, 2) < 0)
			return -1;
		seg_len = bpf_ntohs(tot_len) - (p->l4_off - ETH_HLEN) - (doff >> 4) * 4;
		if (flags & TCP_FLAG_SYN)
			seg_len++;
		if (flags & TCP_FLAG_FIN)
			seg_len++;
		__builtin_memcpy(r.eth.h_dest, eth_dst, ETH_ALEN);
		__builtin_memcpy(r.eth.h_source, eth_src, ETH_ALEN);
		r.eth.h_proto = bpf_htons(ETH_P_IP);
		reply_ip(&r.ip, p->daddr, p->saddr, IPPROTO_TCP, sizeof(r.ip) + sizeof(r.tcp));
		r.tcp.source = p->dport;
		r.tcp.dest = p->sport;
		r.tcp.doff = 5;
		r.tcp.rst = 1;
		/* RFC 793: answer an ACK with its ack number; anything else with ACK of it. */
		if (flags & TCP_FLAG_ACK) {
			r.tcp.seq = ack;
		} else {
			r.tcp.ack = 1;
			r.tcp.ack_seq = bpf_htonl(bpf_ntohl(seq) + seg_len);
		}
		sum = csum_words(&r.ip.saddr, 4) + bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(r.tcp));
		sum += csum_words(&r.tcp, sizeof(r.tcp) / 2);
		r.tcp.check = csum_fold(sum);
		if (bpf_skb_change_tail(skb, FRAME_LEN(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, 0, &r.eth, FRAME_LEN(r), 0) < 0)
			return -1;
		return 0;
	}
	if (p->proto == IPPROTO_UDP) {
		struct icmp_unreach_frame r = {};

		if (p->l4_off != ETH_HLEN + sizeof(struct iphdr))
			return -1; /* IP options: not worth an answer */
		if (bpf_skb_load_bytes(skb, ETH_HLEN, r.orig, sizeof(r.orig)) < 0)
			return -1;
		__builtin_memcpy(r.eth.h_dest, eth_dst, ETH_ALEN);
		__builtin_memcpy(r.eth.h_source, eth_src, ETH_ALEN);
		r.eth.h_proto = bpf_htons(ETH_P_IP);
		reply_ip(&r.ip, p->daddr, p->saddr, IPPROTO_ICMP,
			 sizeof(r.ip) + sizeof(r.icmp) + sizeof(r.orig));
		r.icmp.type = 3; /* destination unreachable */
		r.icmp.code = 3; /* port unreachable */
		r.icmp.checksum = csum_fold(csum_words(&r.icmp, (sizeof(r.icmp) + sizeof(r.orig)) / 2));
		if (bpf_skb_change_tail(skb, FRAME_LEN(r), 0) < 0 ||
		    bpf_skb_store_bytes(skb, 0, &r.eth, FRAME_LEN(r), 0) < 0)
			return -1;
		return 0;
	}
	return -1;
}
