/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Header parsing with the bounds checks the verifier demands. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* <linux/icmp.h> pulls in glibc headers that do not build for the BPF target. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};

/* TCP flag bits as in the header's 14th byte. */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* What a packet is, as far as the datapath needs to know. */
struct pkt4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 fragment; /* a non-first fragment: no L4 header */
	__u8 icmp_type;
	__u32 l3_off;
	__u32 l4_off;
};

/* Parse results besides 0 (IPv4, parsed). */
#define PARSE_PASS 1 /* not IPv4 but harmless: ARP */
#define PARSE_DROP_L3 2 /* unsupported L3 (IPv6 until it is supported, others) */
#define PARSE_DROP_INVALID 3 /* truncated or malformed IPv4 */
#define PARSE_DROP_L4 4 /* truncated L4 header */

/* Makes sure the first `len` bytes are in the linear part of the skb. */
static __always_inline int ensure_linear(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (skb->len < len)
		return -1;
	return bpf_skb_pull_data(skb, len);
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt4 *p)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 ihl_len;

	if (ensure_linear(skb, sizeof(struct ethhdr)) < 0)
		return PARSE_DROP_INVALID;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_DROP_INVALID;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return PARSE_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_DROP_L3;

	if (ensure_linear(skb, sizeof(struct ethhdr) + sizeof(struct iphdr)) < 0)
		return PARSE_DROP_INVALID;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return PARSE_DROP_INVALID;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_DROP_INVALID;
	ihl_len = ip->ihl * 4;
	if (bpf_ntohs(ip->tot_len) < ihl_len ||
	    skb->len < sizeof(struct ethhdr) + bpf_ntohs(ip->tot_len))
		return PARSE_DROP_INVALID;

	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->icmp_type = 0;
	p->fragment = (bpf_ntohs(ip->frag_off) & IP_OFFSET) != 0;
	p->l3_off = sizeof(struct ethhdr);
	p->l4_off = sizeof(struct ethhdr) + ihl_len;
	if (p->fragment)
		return 0;

	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp;

		if (ensure_linear(skb, p->l4_off + sizeof(struct tcphdr)) < 0)
			return PARSE_DROP_L4;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (ihl_len > 60)
			return PARSE_DROP_INVALID;
		tcp = data + sizeof(struct ethhdr) + ihl_len;
		if ((void *)(tcp + 1) > data_end)
			return PARSE_DROP_L4;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: { /* SCTP's ports sit where UDP's do */
		struct udphdr *udp;

		if (ensure_linear(skb, p->l4_off + sizeof(struct udphdr)) < 0)
			return PARSE_DROP_L4;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (ihl_len > 60)
			return PARSE_DROP_INVALID;
		udp = data + sizeof(struct ethhdr) + ihl_len;
		if ((void *)(udp + 1) > data_end)
			return PARSE_DROP_L4;
		p->sport = udp->source;
		p->dport = udp->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp;

		if (ensure_linear(skb, p->l4_off + sizeof(struct icmphdr)) < 0)
			return PARSE_DROP_L4;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (ihl_len > 60)
			return PARSE_DROP_INVALID;
		icmp = data + sizeof(struct ethhdr) + ihl_len;
		if ((void *)(icmp + 1) > data_end)
			return PARSE_DROP_L4;
		p->icmp_type = icmp->type;
		/* Echo request and reply are tracked by their id, placed so that the reply's
		 * reversed tuple finds the request's entry. */
		if (icmp->type == ICMP_ECHO)
			p->sport = icmp->un.echo.id;
		else if (icmp->type == ICMP_ECHOREPLY)
			p->dport = icmp->un.echo.id;
		break;
	}
	default:
		/* Other protocols are tracked by address pair only. */
		break;
	}
	return 0;
}
