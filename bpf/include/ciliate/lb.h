/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service load balancing, shared by the per-packet path (lxc.c) and socket LB (sock.c).
 *
 * A frontend (VIP, port, proto) has a slot-0 entry with the number of backends that take
 * new connections and its rev-NAT index; slots 1..count name backend ids. A connection's
 * choice is remembered (a CT_SERVICE conntrack entry per-packet, the socket itself with
 * socket LB), so every packet of a connection reaches the same backend and removing one
 * backend never moves the connections of the others.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "maps.h"

static __always_inline __u64 lb_now_secs(void)
{
	return bpf_ktime_get_ns() / 1000000000ULL;
}

struct lb4_slot_scan {
	struct lb4_key key;
	__u32 backend_id;
	__u32 found;
};

static long lb4_slot_scan_cb(__u64 i, void *data)
{
	struct lb4_slot_scan *scan = data;
	struct lb4_service *slot;

	scan->key.backend_slot = (__u16)(i + 1);
	slot = bpf_map_lookup_elem(&cil_lb4_svc, &scan->key);
	if (slot && slot->backend_id == scan->backend_id) {
		scan->found = (__u32)i + 1;
		return 1;
	}
	return 0;
}

/* The slot (1..count) of the frontend `svc_key` holding `backend_id`, 0 when it holds it in
 * none: the backend left the frontend or stopped taking its new connections (terminating),
 * even though the same backend may still serve another frontend. `hint` is tried first. */
static __always_inline __u32 lb4_backend_slot(const struct lb4_key *svc_key, __u16 count,
					      __u32 backend_id, __u32 hint)
{
	struct lb4_slot_scan scan = {.key = *svc_key, .backend_id = backend_id};
	struct lb4_service *slot;

	if (hint >= 1 && hint <= count) {
		scan.key.backend_slot = (__u16)hint;
		slot = bpf_map_lookup_elem(&cil_lb4_svc, &scan.key);
		if (slot && slot->backend_id == backend_id)
			return hint;
	}
	/* Slots moved (the frontend changed since): look through all of them. */
	bpf_loop(count, lb4_slot_scan_cb, &scan, 0);
	return scan.found;
}

/* Picks the backend for a new connection: the client's affine backend while it is fresh and
 * still one of this frontend's active backends, else a random slot (and the affinity is
 * overwritten). Returns NULL when no backend takes new connections. */
static __always_inline struct lb4_backend *lb4_pick(const struct lb4_key *svc_key,
						    const struct lb4_service *svc, __u64 client,
						    __u8 netns, __u32 *backend_id)
{
	struct lb4_affinity_key ak = {
		.client = client,
		.rev_nat_index = svc->rev_nat_index,
		.netns = netns,
	};
	struct lb4_backend *be;
	struct lb4_service *slot;
	struct lb4_key key = *svc_key;
	__u64 now = lb_now_secs();

	if (svc->flags & SVC_F_AFFINITY) {
		struct lb4_affinity_val *av = bpf_map_lookup_elem(&cil_lb4_aff, &ak);

		if (av && now - av->last_used <= svc->affinity_timeout) {
			__u32 id = av->backend_id;
			__u32 at = lb4_backend_slot(svc_key, svc->count, id, av->slot);

			be = at ? bpf_map_lookup_elem(&cil_lb4_be, &id) : NULL;
			if (be && be->state == BE_STATE_ACTIVE) {
				av->last_used = now;
				av->slot = at;
				*backend_id = id;
				return be;
			}
		}
	}
	if (svc->count == 0)
		return NULL;
	key.backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&cil_lb4_svc, &key);
	if (!slot)
		return NULL;
	*backend_id = slot->backend_id;
	be = bpf_map_lookup_elem(&cil_lb4_be, backend_id);
	if (!be)
		return NULL;
	if (svc->flags & SVC_F_AFFINITY) {
		struct lb4_affinity_val nv = {
			.last_used = now,
			.backend_id = *backend_id,
			.slot = key.backend_slot,
		};

		bpf_map_update_elem(&cil_lb4_aff, &ak, &nv, BPF_ANY);
	}
	return be;
}
