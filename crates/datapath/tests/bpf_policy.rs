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
