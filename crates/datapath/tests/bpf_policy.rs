//! Packet tests of policy enforcement in `bpf/lxc.c`: default deny, L3/L4 allows, deny
//! precedence, replies, port ranges, CIDR identities.

mod common;

use common::*;

#[test]
fn an_enforced_direction_without_a_matching_entry_is_default_deny_133() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(&ingress_policy(vec![]), 0);
    let (v, _) = h.run("to_container", &tcp_ok(POD_B, 1234, POD_A, 80, SYN));
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(h.counter(abi::METRIC_INGRESS, 133), 1);
    let evs = h.events();
    let verdict = evs
        .iter()
        .find(|e| e.kind == abi::EVENT_POLICY_VERDICT)
        .expect("policy verdict event");
    assert_eq!(
        (verdict.code, verdict.src_identity, verdict.dst_identity),
        (133, ID_B, 300)
    );
    assert!(evs
        .iter()
        .any(|e| e.kind == abi::EVENT_DROP && e.code == 133));
    assert_eq!(h.ct_len(), 0, "a denied connection is not tracked");
    // Egress is not under policy: allowed.
    assert_eq!(
        h.run("from_container", &tcp_ok(POD_A, 1234, WORLD, 80, SYN))
            .0,
        TC_ACT_OK
    );
}

#[test]
fn an_l3_l4_allow_admits_exactly_its_peer_protocol_and_port() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![rule(ID_B, false, Some(6), 80, 16, false)]),
        1,
    );
    assert_eq!(
        h.run("to_container", &tcp_ok(POD_B, 2000, POD_A, 80, SYN))
            .0,
        TC_ACT_OK
    );
    assert_eq!(
        h.run("to_container", &tcp_ok(POD_B, 2001, POD_A, 81, SYN))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 2002, POD_A, 80, SYN))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run("to_container", &udp(POD_B, 2003, POD_A, 80)).0,
        TC_ACT_SHOT
    );
    let verdicts: Vec<RawEvent> = h
        .events()
        .into_iter()
        .filter(|e| e.kind == abi::EVENT_POLICY_VERDICT)
        .collect();
    assert_eq!(verdicts[0].code, 0, "allowed");
    assert_eq!(
        verdicts[0].flags & abi::EVENT_F_MATCH_MASK,
        2,
        "matched L3+L4"
    );
    assert_eq!(verdicts[0].flags & abi::EVENT_F_EGRESS, 0, "ingress");
}

#[test]
fn deny_wins_over_allow_and_reports_181() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![
            rule(0, false, Some(6), 80, 16, false),
            rule(ID_B, false, None, 0, 0, true),
        ]),
        0,
    );
    assert_eq!(
        h.run("to_container", &tcp_ok(POD_B, 3000, POD_A, 80, SYN))
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(h.counter(abi::METRIC_INGRESS, 181), 1);
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 3001, POD_A, 80, SYN))
            .0,
        TC_ACT_OK,
        "others still allowed"
    );
}

#[test]
fn replies_of_allowed_connections_need_no_policy_decision() {
    privileged!();
    let mut h = Harness::new();
    let policy = EndpointPolicy {
        ingress_enforced: true,
        egress_enforced: true,
        entries: vec![rule(2, true, Some(6), 443, 16, false)],
    };
    h.set_policy_a(&policy, 0);
    assert_eq!(
        h.run("from_container", &tcp_ok(POD_A, 4000, WORLD, 443, SYN))
            .0,
        TC_ACT_OK
    );
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 443, POD_A, 4000, SYN | ACK))
            .0,
        TC_ACT_OK,
        "reply"
    );
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 443, POD_A, 4001, SYN))
            .0,
        TC_ACT_SHOT,
        "not a reply"
    );
    assert_eq!(
        h.run("from_container", &tcp_ok(POD_A, 4002, WORLD, 80, SYN))
            .0,
        TC_ACT_SHOT,
        "egress to :80 not allowed"
    );
}

#[test]
fn port_ranges_match_by_prefix() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![rule(ID_B, false, Some(6), 8080, 14, false)]),
        0,
    );
    for (port, ok) in [(8079, false), (8080, true), (8083, true), (8084, false)] {
        let v = h
            .run(
                "to_container",
                &tcp_ok(POD_B, 5000 + port, POD_A, port, SYN),
            )
            .0;
        assert_eq!(v == TC_ACT_OK, ok, "port {port}");
    }
}

#[test]
fn cidr_identities_come_from_the_ipcache_and_the_host_is_always_admitted() {
    privileged!();
    let mut h = Harness::new();
    h.set_ipcache(&[
        IpcacheEntry {
            prefix: "192.0.2.0/24".parse().unwrap(),
            identity: ID_CIDR,
            tunnel_endpoint: None,
        },
        IpcacheEntry {
            prefix: "10.0.0.1/32".parse().unwrap(),
            identity: 1,
            tunnel_endpoint: None,
        },
    ]);
    let policy = EndpointPolicy {
        ingress_enforced: true,
        egress_enforced: true,
        entries: vec![rule(ID_CIDR, true, None, 0, 0, false)],
    };
    h.set_policy_a(&policy, 1);
    assert_eq!(
        h.run("from_container", &tcp_ok(POD_A, 6000, WORLD, 80, SYN))
            .0,
        TC_ACT_OK,
        "192.0.2.7 is in the CIDR"
    );
    let outside = Ipv4Addr::new(198, 51, 100, 1);
    assert_eq!(
        h.run("from_container", &tcp_ok(POD_A, 6001, outside, 80, SYN))
            .0,
        TC_ACT_SHOT,
        "world is not"
    );
    let host = Ipv4Addr::new(10, 0, 0, 1);
    assert_eq!(
        h.run("to_container", &tcp_ok(host, 6002, POD_A, 8080, SYN))
            .0,
        TC_ACT_OK,
        "the node reaches its pods"
    );
}

// ---- ICMP errors ----

const UNREACHABLE: u8 = 3;
const TIME_EXCEEDED: u8 = 11;

fn drops(h: &mut Harness, code: u8) -> usize {
    h.events()
        .iter()
        .filter(|e| e.kind == abi::EVENT_DROP && e.code == code)
        .count()
}

#[test]
fn an_icmp_error_quoting_a_connection_of_the_endpoint_passes_a_default_deny() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(&ingress_policy(vec![]), 0);
    let query = udp(POD_A, 5353, WORLD, 53);
    assert_eq!(h.run("from_container", &query).0, TC_ACT_OK);
    let ping = icmp_echo(POD_A, WORLD, false, 7);
    assert_eq!(h.run("from_container", &ping).0, TC_ACT_OK);
    h.events();
    // Port unreachable for the query, time exceeded for the ping (from a router on the way).
    let err = icmp_error(WORLD, POD_A, UNREACHABLE, 3, &query);
    assert_eq!(h.run("to_container", &err).0, TC_ACT_OK);
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let err = icmp_error(router, POD_A, TIME_EXCEEDED, 0, &ping);
    assert_eq!(h.run("to_container", &err).0, TC_ACT_OK);
    assert_eq!(drops(&mut h, 163), 0);
}

#[test]
fn a_forged_icmp_error_is_judged_by_policy_and_dropped_with_163() {
    privileged!();
    let mut h = Harness::new();
    let b_query = udp(POD_B, 5353, WORLD, 53);
    h.set_policy_a(&ingress_policy(vec![]), 0);
    // Nothing tracked for this tuple.
    let forged = icmp_error(WORLD, POD_A, UNREACHABLE, 3, &udp(POD_A, 5354, WORLD, 53));
    assert_eq!(h.run("to_container", &forged).0, TC_ACT_SHOT);
    assert_eq!(
        drops(&mut h, 163),
        1,
        "dropped with its reason and an event"
    );
    assert_eq!(h.counter(abi::METRIC_INGRESS, 163), 1);
    // Quoting a tracked connection of another endpoint does not make it A's.
    let key_b = key(POD_B, 5353, WORLD, 53, 17, abi::CT_EGRESS);
    let mut ct: BpfHashMap<&mut MapData, CtKey4, CtEntry4> =
        BpfHashMap::try_from(h.bpf.map_mut(abi::maps::CT4).expect("map")).expect("hash");
    let entry = CtEntry4 {
        expires: now_secs() + 60,
        ..CtEntry4::default()
    };
    ct.insert(key_b, entry, 0).expect("B's connection");
    let stolen = icmp_error(WORLD, POD_A, UNREACHABLE, 3, &b_query);
    assert_eq!(h.run("to_container", &stolen).0, TC_ACT_SHOT);
    // A truncated quote is unrelated too.
    let mut short = icmp_error(WORLD, POD_A, UNREACHABLE, 3, &b_query);
    short.truncate(14 + 20 + 8 + 10);
    short[16..18].copy_from_slice(&((20 + 8 + 10) as u16).to_be_bytes());
    assert_eq!(h.run("to_container", &short).0, TC_ACT_SHOT);
    // An explicit allow of ICMP type 3 from the world admits it, like any packet.
    h.set_policy_a(
        &ingress_policy(vec![rule(2, false, Some(1), 3, 16, false)]),
        1,
    );
    assert_eq!(h.run("to_container", &forged).0, TC_ACT_OK);
}

#[test]
fn an_icmp_error_the_endpoint_sends_about_a_connection_towards_it_passes_its_egress_policy() {
    privileged!();
    let mut h = Harness::new();
    let syn = tcp_ok(WORLD, 40000, POD_A, 80, SYN);
    assert_eq!(h.run("to_container", &syn).0, TC_ACT_OK);
    h.set_policy_a(
        &EndpointPolicy {
            egress_enforced: true,
            ..EndpointPolicy::default()
        },
        1,
    );
    let err = icmp_error(POD_A, WORLD, UNREACHABLE, 3, &syn);
    assert_eq!(h.run("from_container", &err).0, TC_ACT_OK);
    let other = icmp_error(
        POD_A,
        WORLD,
        UNREACHABLE,
        3,
        &tcp_ok(WORLD, 40001, POD_A, 80, SYN),
    );
    assert_eq!(h.run("from_container", &other).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut h, 163), 1);
}

/// Events of `kind`, as (code, rule) in order.
fn rules_of(evs: &[RawEvent], kind: u8) -> Vec<(u8, u32)> {
    evs.iter()
        .filter(|e| e.kind == kind)
        .map(|e| (e.code, e.rule))
        .collect()
}

#[test]
fn ingress_events_carry_the_rule_of_the_deciding_entry_and_default_deny_carries_none() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![
            PolicyMapEntry {
                rule: 7,
                ..rule(ID_B, false, Some(6), 80, 16, false)
            },
            PolicyMapEntry {
                rule: 9,
                ..rule(2, false, None, 0, 0, true)
            },
        ]),
        0,
    );

    // Allowed by rule 7: the verdict and the delivery's trace name it.
    assert_eq!(
        h.run("to_container", &tcp_ok(POD_B, 5000, POD_A, 80, SYN))
            .0,
        TC_ACT_OK
    );
    let evs = h.events();
    assert_eq!(rules_of(&evs, abi::EVENT_POLICY_VERDICT), vec![(0, 7)]);
    assert_eq!(
        rules_of(&evs, abi::EVENT_TRACE),
        vec![(0, 7)],
        "to-endpoint"
    );

    // Denied by rule 9 (an explicit deny): verdict and drop name it.
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 5001, POD_A, 80, SYN))
            .0,
        TC_ACT_SHOT
    );
    let evs = h.events();
    assert_eq!(rules_of(&evs, abi::EVENT_POLICY_VERDICT), vec![(181, 9)]);
    assert_eq!(rules_of(&evs, abi::EVENT_DROP), vec![(181, 9)]);

    // No entry for port 81: default deny, no rule.
    assert_eq!(
        h.run("to_container", &tcp_ok(POD_B, 5002, POD_A, 81, SYN))
            .0,
        TC_ACT_SHOT
    );
    let evs = h.events();
    assert_eq!(rules_of(&evs, abi::EVENT_POLICY_VERDICT), vec![(133, 0)]);
    assert_eq!(rules_of(&evs, abi::EVENT_DROP), vec![(133, 0)]);
}

#[test]
fn egress_events_carry_the_rule_and_replies_carry_none() {
    privileged!();
    let mut h = Harness::new();
    let policy = EndpointPolicy {
        ingress_enforced: false,
        egress_enforced: true,
        entries: vec![PolicyMapEntry {
            rule: 11,
            ..rule(2, true, Some(6), 443, 16, false)
        }],
    };
    h.set_policy_a(&policy, 0);
    assert_eq!(
        h.run("from_container", &tcp_ok(POD_A, 6000, WORLD, 443, SYN))
            .0,
        TC_ACT_OK
    );
    let evs = h.events();
    assert_eq!(rules_of(&evs, abi::EVENT_POLICY_VERDICT), vec![(0, 11)]);
    let traces = rules_of(&evs, abi::EVENT_TRACE);
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert_eq!(traces[0].1, 11, "the trace of the allowed packet");

    // The reply is not judged by policy: its trace names no rule.
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 443, POD_A, 6000, SYN | ACK))
            .0,
        TC_ACT_OK
    );
    let evs = h.events();
    assert!(rules_of(&evs, abi::EVENT_POLICY_VERDICT).is_empty());
    assert_eq!(
        rules_of(&evs, abi::EVENT_TRACE)
            .iter()
            .map(|t| t.1)
            .collect::<Vec<_>>(),
        vec![0]
    );

    // Egress to :80 has no entry: default deny, no rule.
    assert_eq!(
        h.run("from_container", &tcp_ok(POD_A, 6001, WORLD, 80, SYN))
            .0,
        TC_ACT_SHOT
    );
    let evs = h.events();
    assert_eq!(rules_of(&evs, abi::EVENT_POLICY_VERDICT), vec![(133, 0)]);
    assert_eq!(rules_of(&evs, abi::EVENT_DROP), vec![(133, 0)]);
}

#[test]
fn what_an_entry_allows_is_counted_per_cpu_under_the_entrys_own_key() {
    privileged!();
    let mut h = Harness::new();
    let from_b = rule(ID_B, false, Some(6), 80, 16, false);
    let anyone = rule(0, false, Some(6), 8080, 16, false);
    h.set_policy_a(&ingress_policy(vec![from_b.clone(), anyone.clone()]), 1);
    let syn = tcp_ok(POD_B, 2000, POD_A, 80, SYN);
    let ack = tcp_ok(POD_B, 2000, POD_A, 80, ACK);
    for pkt in [&syn, &ack, &ack] {
        assert_eq!(h.run("to_container", pkt).0, TC_ACT_OK);
    }
    let world = tcp_ok(WORLD, 2001, POD_A, 8080, SYN);
    for _ in 0..2 {
        assert_eq!(h.run("to_container", &world).0, TC_ACT_OK);
    }
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 2002, POD_A, 81, SYN))
            .0,
        TC_ACT_SHOT,
        "denied: counted by no entry"
    );

    let trie: LpmTrie<&MapData, PolicyKeyData, PolicyValue> =
        LpmTrie::try_from(h.bpf.map(abi::maps::POLICY).expect("map")).expect("lpm");
    let stats: PerCpuHashMap<&MapData, LpmKey<PolicyKeyData>, PolicyStats> =
        PerCpuHashMap::try_from(h.bpf.map(abi::maps::POLICY_STATS).expect("map"))
            .expect("per-CPU hash");
    let counted = |e: &PolicyMapEntry| {
        let (prefix, data) = policy_map::policy_key(11, 1, e);
        let key = LpmKey::new(prefix, data);
        let v = trie.get(&key, 0).expect("entry");
        assert_eq!(
            (v.key_prefix_len, v.key),
            (prefix, data),
            "the entry carries its key"
        );
        let per_cpu = stats.get(&key, 0).expect("counters");
        per_cpu
            .iter()
            .fold((0, 0), |(p, b), s| (p + s.packets, b + s.bytes))
    };
    assert_eq!(counted(&from_b), (3, 3 * syn.len() as u64));
    assert_eq!(counted(&anyone), (2, 2 * world.len() as u64));
    assert_eq!(stats.keys().count(), 2, "no counters for anything else");
}
