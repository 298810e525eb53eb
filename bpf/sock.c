// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level load balancing, attached to the cgroup the node's pods run in:
 *   sock4_connect      cgroup/connect4      connect() to a VIP connects to a backend
 *   sock4_sendmsg      cgroup/sendmsg4      unconnected UDP sendto() a VIP goes to a backend
 *   sock4_recvmsg      cgroup/recvmsg4      replies read from a backend show the VIP
 *   sock4_getpeername  cgroup/getpeername4  getpeername() shows the VIP
 *
 * The translation happens once per connection, before any packet exists, so packets
 * carry the backend address and need no NAT. A VIP with no backend is left untranslated:
 * the per-packet path then answers it (TCP RST / ICMP unreachable), as without socket LB.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "ciliate/abi.h"
#include "ciliate/maps.h"
#include "ciliate/lb.h"

#define SYS_PROCEED 1

static __always_inline void sock4_xlate(struct bpf_sock_addr *ctx)
{
	struct lb4_key key = {
		.address = ctx->user_ip4,
		.dport = (__be16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};
	struct lb4_service *svc;
	struct lb4_backend *be;
	__u32 backend_id = 0;

	svc = bpf_map_lookup_elem(&cil_lb4_svc, &key);
	if (!svc)
		return;
	be = lb4_pick(&key, svc, bpf_get_netns_cookie(ctx), 1, &backend_id);
	if (!be)
		return;
	{
		struct lb4_sock_key sk = {
			.cookie = bpf_get_socket_cookie(ctx),
			.address = be->address,
			.port = be->port,
		};
		struct lb4_reverse_nat rn = {
			.address = key.address,
			.port = key.dport,
			.rev_nat_index = svc->rev_nat_index,
		};

		bpf_map_update_elem(&cil_lb4_sk, &sk, &rn, BPF_ANY);
	}
	ctx->user_ip4 = be->address;
	ctx->user_port = (__u32)be->port;
}

/* The VIP a backend address stands for on this socket, if it was translated. */
static __always_inline void sock4_rev_xlate(struct bpf_sock_addr *ctx)
{
	struct lb4_sock_key sk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_reverse_nat *rn = bpf_map_lookup_elem(&cil_lb4_sk, &sk);

	if (rn) {
		ctx->user_ip4 = rn->address;
		ctx->user_port = (__u32)rn->port;
	}
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	sock4_xlate(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_rev_xlate(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_rev_xlate(ctx);
	return SYS_PROCEED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
