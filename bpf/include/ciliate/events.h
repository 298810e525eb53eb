/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Trace and drop events into the ring buffer, and the per-reason packet counters. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "maps.h"

static __always_inline void count(__u8 dir, __u8 reason, __u32 bytes)
{
	__u32 idx = (__u32)dir * 256 + reason;
	struct metrics_value *m = bpf_map_lookup_elem(&cil_metrics, &idx);

	if (m) {
		/* Per-CPU values: no other CPU writes this slot. */
		m->packets++;
		m->bytes += bytes;
	}
}

/* The monitor aggregation flags (NODE_F_TRACE_*) of the node's configuration. */
static __always_inline __u32 trace_flags(void)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&cil_node_cfg, &zero);

	return cfg ? cfg->flags & (NODE_F_TRACE_FROM | NODE_F_TRACE_EVERY) : 0;
}

/* Reports one event, seen on device `ifindex`. A full ring buffer loses the event, never the
 * packet: the loss is counted in cil_metrics (METRIC_EVENTS_LOST), which the agent turns into
 * lost events. `rev_nat` names the Service frontend of a translated connection (0: none);
 * `rule` the policy rule that judged the packet (0: none). */
static __always_inline void emit_flags_on(struct __sk_buff *skb, __u32 ifindex, __u8 type,
					  __u8 code, __u16 ep_id, __u32 src_id, __u32 dst_id,
					  __u8 ct_state, __u8 flags, __u16 rev_nat, __u32 rule)
{
	struct ciliate_event *e = bpf_ringbuf_reserve(&cil_events, sizeof(*e), 0);
	__u32 cap;

	if (!e) {
		count(METRIC_INGRESS, METRIC_EVENTS_LOST, 1);
		return;
	}
	e->type = type;
	e->code = code;
	e->ep_id = ep_id;
	e->ifindex = ifindex;
	e->ktime_ns = bpf_ktime_get_ns();
	e->src_identity = src_id;
	e->dst_identity = dst_id;
	e->len = skb->len;
	e->ct_state = ct_state;
	e->flags = flags;
	e->rev_nat = rev_nat;
	e->pad = 0;
	e->rule = rule;
	cap = skb->len;
	if (cap > EVENT_CAPTURE_LEN)
		cap = EVENT_CAPTURE_LEN;
	e->cap_len = 0;
	/* The verifier wants a non-zero length with a known upper bound. */
	if (cap >= 1 && cap <= EVENT_CAPTURE_LEN &&
	    bpf_skb_load_bytes(skb, 0, e->data, cap) == 0)
		e->cap_len = cap;
	/* Waking the reader on every event costs an interrupt per event (and a VM exit on
	 * virtual machines): the agent drains the ring on a short timer instead, and is woken
	 * only when the ring is filling up. */
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&cil_events, BPF_RB_AVAIL_DATA) >= EVENTS_WAKEUP_BYTES
				      ? BPF_RB_FORCE_WAKEUP
				      : BPF_RB_NO_WAKEUP);
}

/* An event seen on the device the program runs on. */
static __always_inline void emit_flags(struct __sk_buff *skb, __u8 type, __u8 code, __u16 ep_id,
				       __u32 src_id, __u32 dst_id, __u8 ct_state, __u8 flags,
				       __u16 rev_nat, __u32 rule)
{
	emit_flags_on(skb, skb->ifindex, type, code, ep_id, src_id, dst_id, ct_state, flags,
		      rev_nat, rule);
}

/* The event of a packet policy judged: names the deciding rule. */
static __always_inline void emit_rule(struct __sk_buff *skb, __u8 type, __u8 code, __u16 ep_id,
				      __u32 src_id, __u32 dst_id, __u8 ct_state, __u16 rev_nat,
				      __u32 rule)
{
	emit_flags(skb, type, code, ep_id, src_id, dst_id, ct_state, 0, rev_nat, rule);
}

static __always_inline void emit_svc(struct __sk_buff *skb, __u8 type, __u8 code, __u16 ep_id,
				     __u32 src_id, __u32 dst_id, __u8 ct_state, __u16 rev_nat)
{
	emit_flags(skb, type, code, ep_id, src_id, dst_id, ct_state, 0, rev_nat, 0);
}

static __always_inline void emit(struct __sk_buff *skb, __u8 type, __u8 code, __u16 ep_id,
				 __u32 src_id, __u32 dst_id, __u8 ct_state)
{
	emit_flags(skb, type, code, ep_id, src_id, dst_id, ct_state, 0, 0, 0);
}

/* The drop of a packet policy judged, seen on device `ifindex`: names the deciding rule. */
static __always_inline int drop_rule_on(struct __sk_buff *skb, __u32 ifindex, __u8 dir,
					__u8 reason, __u16 ep_id, __u32 src_id, __u32 dst_id,
					__u8 ct_state, __u16 rev_nat, __u32 rule)
{
	count(dir, reason, skb->len);
	emit_flags_on(skb, ifindex, EVENT_DROP, reason, ep_id, src_id, dst_id, ct_state, 0,
		      rev_nat, rule);
	return TC_ACT_SHOT;
}

static __always_inline int drop_rule(struct __sk_buff *skb, __u8 dir, __u8 reason, __u16 ep_id,
				     __u32 src_id, __u32 dst_id, __u8 ct_state, __u16 rev_nat,
				     __u32 rule)
{
	return drop_rule_on(skb, skb->ifindex, dir, reason, ep_id, src_id, dst_id, ct_state,
			    rev_nat, rule);
}

static __always_inline int drop_svc(struct __sk_buff *skb, __u8 dir, __u8 reason, __u16 ep_id,
				    __u32 src_id, __u32 dst_id, __u8 ct_state, __u16 rev_nat)
{
	return drop_rule(skb, dir, reason, ep_id, src_id, dst_id, ct_state, rev_nat, 0);
}

static __always_inline int drop(struct __sk_buff *skb, __u8 dir, __u8 reason, __u16 ep_id,
				__u32 src_id, __u32 dst_id, __u8 ct_state)
{
	return drop_svc(skb, dir, reason, ep_id, src_id, dst_id, ct_state, 0);
}
