/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ARP responder for the pods' gateway. A pod routes everything via 169.254.1.1, an address
 * no interface holds; the CNI plugin gives the pod a permanent neighbour entry for it (the
 * host veth's MAC). Should that entry go (an operator, a tool that flushes neighbours), the
 * pod asks by ARP and nothing in the node would answer: the pod is cut off. from_container
 * answers instead, with the host veth's MAC, as Cilium's ARP responder does.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"

/* The pods' gateway, 169.254.1.1 (ciliate_model::api::GATEWAY_IPV4). */
#define GATEWAY_IPV4 bpf_htonl(0xa9fe0101)

#define ARPHRD_ETHER_ 1
#define ARPOP_REQUEST_ 1
#define ARPOP_REPLY_ 2

/* An Ethernet/IPv4 ARP packet after the Ethernet header. */
struct arp_eth4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

/* Turns an ARP request for the gateway into the reply, in place: from `gw_mac` to the asker.
 * Returns 1 when the packet is now that reply (for the caller to send back where it came
 * from), 0 when it is anything else (left untouched). */
static __always_inline int arp_gateway_reply(struct __sk_buff *skb, const __u8 *gw_mac)
{
	__u8 asker_mac[ETH_ALEN], asker_ip[4];
	__be32 gw = GATEWAY_IPV4, tpa;
	struct arp_eth4 *arp;
	struct ethhdr *eth;
	void *data, *data_end;

	if (ensure_linear(skb, sizeof(*eth) + sizeof(*arp)) < 0)
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	arp = data + sizeof(*eth);
	if ((void *)(arp + 1) > data_end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_ARP) || arp->htype != bpf_htons(ARPHRD_ETHER_) ||
	    arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != ETH_ALEN || arp->plen != 4 ||
	    arp->op != bpf_htons(ARPOP_REQUEST_))
		return 0;
	__builtin_memcpy(&tpa, arp->tpa, 4);
	if (tpa != gw)
		return 0;
	__builtin_memcpy(asker_mac, arp->sha, ETH_ALEN);
	__builtin_memcpy(asker_ip, arp->spa, 4);

	__builtin_memcpy(eth->h_dest, asker_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, gw_mac, ETH_ALEN);
	arp->op = bpf_htons(ARPOP_REPLY_);
	__builtin_memcpy(arp->sha, gw_mac, ETH_ALEN);
	__builtin_memcpy(arp->spa, &gw, 4);
	__builtin_memcpy(arp->tha, asker_mac, ETH_ALEN);
	__builtin_memcpy(arp->tpa, asker_ip, 4);
	return 1;
}
