//! Packet tests of `bpf/lxc.c` (the pod veth programs) through BPF_PROG_TEST_RUN: forwarding,
//! conntrack, malformed input, events. Each test loads the programs with maps pinned in its
//! own bpffs directory (see `common`).

mod common;

use ciliate_datapath::MonitorAggregation;
use common::*;

// ---- tests ----

#[test]
fn every_program_loads_through_the_verifier() {
    privileged!();
    let h = Harness::new();
    for name in ["from_container", "to_container"] {
        assert!(h.bpf.program(name).is_some(), "{name} missing");
    }
}

#[test]
fn pod_to_pod_is_redirected_with_router_rewrites() {
    privileged!();
    let h = Harness::new();
    let pkt = tcp(POD_A, 40000, POD_B, 80, SYN);
    let (verdict, out) = h.run("from_container", &pkt);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &MAC_B, "destination MAC is the peer pod");
    assert_eq!(&out[6..12], &HOST_MAC_B, "source MAC is the peer's gateway");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(csum(&out[14..34]), 0, "IPv4 header checksum still valid");
    assert_eq!(&out[34..], &pkt[34..], "L4 untouched");
    let e = h
        .ct(key(POD_A, 40000, POD_B, 80, 6, abi::CT_EGRESS))
        .expect("egress CT entry");
    assert_eq!(e.tx_packets, 1);
    assert_eq!(e.src_identity, 300);
    assert!(
        e.expires >= now_secs() + 55 && e.expires <= now_secs() + 61,
        "SYN timeout"
    );
}

#[test]
fn the_header_checksum_stays_valid_for_every_ttl_and_checksum_value() {
    privileged!();
    let h = Harness::new();
    // The TTL and checksum are rewritten in place (RFC 1624): every checksum value the
    // header's id can give, the end-around carry among them, with TTLs near both ends.
    for (i, ttl) in (0u16..=0xffff)
        .step_by(97)
        .zip([255u8, 2, 64, 128].into_iter().cycle())
    {
        let mut pkt = tcp(POD_A, 41000, POD_B, 80, ACK);
        pkt[14 + 4..14 + 6].copy_from_slice(&i.to_be_bytes());
        pkt[14 + 8] = ttl;
        pkt[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = csum(&pkt[14..34]);
        pkt[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        let (verdict, out) = h.run("from_container", &pkt);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out[14 + 8], ttl - 1);
        assert_eq!(csum(&out[14..34]), 0, "id {i:#06x} ttl {ttl}");
    }
    // The carry case exactly: a header whose checksum field is 0xfeff before the rewrite.
    let mut pkt = tcp(POD_A, 41001, POD_B, 80, ACK);
    for i in 0u16..=0xffff {
        pkt[14 + 4..14 + 6].copy_from_slice(&i.to_be_bytes());
        pkt[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = csum(&pkt[14..34]);
        if c == 0xfeff {
            pkt[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
            break;
        }
    }
    assert_eq!(&pkt[14 + 10..14 + 12], &[0xfe, 0xff]);
    let (_, out) = h.run("from_container", &pkt);
    assert_eq!(csum(&out[14..34]), 0, "with the carry");
}

#[test]
fn traffic_to_the_world_goes_to_the_stack_and_replies_match_conntrack() {
    privileged!();
    let h = Harness::new();
    let (v, out) = h.run("from_container", &tcp(POD_A, 40001, WORLD, 443, SYN));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(out[14 + 8], 64, "the stack decrements TTL, not us");
    let (v, _) = h.run("to_container", &tcp(WORLD, 443, POD_A, 40001, SYN | ACK));
    assert_eq!(v, TC_ACT_OK);
    let (v, _) = h.run("from_container", &tcp(POD_A, 40001, WORLD, 443, ACK));
    assert_eq!(v, TC_ACT_OK);
    let e = h
        .ct(key(POD_A, 40001, WORLD, 443, 6, abi::CT_EGRESS))
        .expect("entry");
    assert_eq!((e.tx_packets, e.rx_packets), (2, 1));
    assert_ne!(e.state & abi::ct_state::REPLIED, 0);
    assert!(e.expires > now_secs() + 21000, "established lifetime");
    assert!(
        h.ct(key(WORLD, 443, POD_A, 40001, 6, abi::CT_INGRESS))
            .is_none(),
        "reply made no entry of its own"
    );
    assert_eq!(h.ct_len(), 1);
}

#[test]
fn connections_towards_the_pod_are_tracked_as_ingress() {
    privileged!();
    let h = Harness::new();
    let (v, _) = h.run("to_container", &udp(WORLD, 5353, POD_A, 53));
    assert_eq!(v, TC_ACT_OK);
    let (v, _) = h.run("from_container", &udp(POD_A, 53, WORLD, 5353));
    assert_eq!(v, TC_ACT_OK);
    let e = h
        .ct(key(WORLD, 5353, POD_A, 53, 17, abi::CT_INGRESS))
        .expect("ingress entry");
    assert_eq!((e.tx_packets, e.rx_packets), (1, 1));
    assert!(e.expires <= now_secs() + 61, "UDP lifetime is 60 s");
    assert_eq!(h.ct_len(), 1);
}

#[test]
fn icmp_echo_reply_finds_the_request() {
    privileged!();
    let h = Harness::new();
    assert_eq!(
        h.run("from_container", &icmp_echo(POD_A, WORLD, false, 77))
            .0,
        TC_ACT_OK
    );
    assert_eq!(
        h.run("to_container", &icmp_echo(WORLD, POD_A, true, 77)).0,
        TC_ACT_OK
    );
    let e = h
        .ct(key(POD_A, 77, WORLD, 0, 1, abi::CT_EGRESS))
        .expect("echo entry");
    assert_eq!((e.tx_packets, e.rx_packets), (1, 1));
    assert_eq!(h.ct_len(), 1);
}

#[test]
fn fin_both_ways_or_rst_shortens_the_lifetime_and_a_new_syn_reopens() {
    privileged!();
    let h = Harness::new();
    let k = key(POD_A, 40002, WORLD, 80, 6, abi::CT_EGRESS);
    h.run("from_container", &tcp(POD_A, 40002, WORLD, 80, SYN));
    h.run("to_container", &tcp(WORLD, 80, POD_A, 40002, SYN | ACK));
    h.run("from_container", &tcp(POD_A, 40002, WORLD, 80, FIN | ACK));
    assert!(
        h.ct(k).expect("entry").expires > now_secs() + 21000,
        "half-closed is still established"
    );
    h.run("to_container", &tcp(WORLD, 80, POD_A, 40002, FIN | ACK));
    assert!(
        h.ct(k).expect("entry").expires <= now_secs() + 11,
        "closed: close timeout"
    );
    h.run("from_container", &tcp(POD_A, 40002, WORLD, 80, SYN));
    let reopened = h.ct(k).expect("entry");
    assert_eq!(
        (reopened.tx_packets, reopened.rx_packets, reopened.state),
        (1, 0, 0)
    );
    h.run("to_container", &tcp(WORLD, 80, POD_A, 40002, RST));
    assert!(
        h.ct(k).expect("entry").expires <= now_secs() + 11,
        "reset: close timeout"
    );
}

#[test]
fn spoofed_sources_are_dropped_with_invalid_source_ip() {
    privileged!();
    let mut h = Harness::new();
    let (v, _) = h.run(
        "from_container",
        &tcp(Ipv4Addr::new(10, 200, 0, 99), 1, POD_B, 80, SYN),
    );
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(h.counter(abi::METRIC_EGRESS, 132), 1);
    let evs = h.events();
    assert_eq!(evs.len(), 1);
    assert_eq!(
        (evs[0].kind, evs[0].code, evs[0].ep_id),
        (abi::EVENT_DROP, 132, 11)
    );
    assert_eq!(h.ct_len(), 0, "a dropped packet makes no conntrack entry");
}

#[test]
fn arp_passes_and_ipv6_is_dropped_unmodified_with_a_reason() {
    privileged!();
    let mut h = Harness::new();
    let mut arp = eth([0xff; 6], MAC_A, 0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    let (v, out) = h.run("from_container", &arp);
    assert_eq!((v, out), (TC_ACT_OK, arp));
    let mut v6 = eth(HOST_MAC_A, MAC_A, 0x86dd);
    v6.extend_from_slice(&[0x60; 40]);
    let (v, out) = h.run("from_container", &v6);
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(out, v6, "never corrupted");
    assert_eq!(h.counter(abi::METRIC_EGRESS, 139), 1);
    let (v, _) = h.run("to_container", &v6);
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(h.counter(abi::METRIC_INGRESS, 139), 1);
    assert!(h
        .events()
        .iter()
        .all(|e| e.kind == abi::EVENT_DROP && e.code == 139));
}

/// An Ethernet/IPv4 ARP packet.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = eth([0xff; 6], sha, 0x0806);
    p.extend_from_slice(&[0, 1, 0x08, 0, 6, 4]);
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    p
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[test]
fn an_arp_request_for_the_gateway_is_answered_back_into_the_pod() {
    privileged!();
    let mut h = Harness::new();
    let req = arp(1, MAC_A, POD_A, [0; 6], GATEWAY);
    let (v, out) = h.run("from_container", &req);
    assert_eq!(v, TC_ACT_REDIRECT, "sent back out the pod's own veth");
    let mut want = eth(MAC_A, HOST_MAC_A, 0x0806);
    want.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    want.extend_from_slice(&HOST_MAC_A);
    want.extend_from_slice(&GATEWAY.octets());
    want.extend_from_slice(&MAC_A);
    want.extend_from_slice(&POD_A.octets());
    assert_eq!(
        out, want,
        "an ARP reply: the gateway is at the host veth's MAC"
    );
    // On the way into the pod the reply passes to_container untouched.
    assert_eq!(h.run("to_container", &out), (TC_ACT_OK, want));
    // Requests for other addresses, replies, and gratuitous ARP pass as they were.
    for other in [
        arp(1, MAC_A, POD_A, [0; 6], Ipv4Addr::new(169, 254, 1, 2)),
        arp(2, MAC_A, POD_A, HOST_MAC_A, GATEWAY),
        arp(1, MAC_A, POD_A, [0; 6], POD_A),
    ] {
        assert_eq!(h.run("from_container", &other), (TC_ACT_OK, other));
    }
    // Truncated: left alone.
    let short = req[..30].to_vec();
    assert_eq!(h.run("from_container", &short), (TC_ACT_OK, short));
    assert!(h.events().is_empty(), "ARP is not reported");
}

#[test]
fn truncated_and_malformed_packets_are_dropped_with_a_reason() {
    privileged!();
    let h = Harness::new();
    let whole = tcp(POD_A, 40003, POD_B, 80, SYN);
    // BPF_PROG_TEST_RUN itself refuses an IPv4 packet cut inside the IP header, so those
    // lengths only check that the kernel said no; from the IP header on, our program decides.
    let mut judged = 0;
    for cut in 15..whole.len() {
        match h.try_run("from_container", &whole[..cut]) {
            Ok((v, _)) => {
                assert_eq!(v, TC_ACT_SHOT, "cut at {cut} bytes");
                judged += 1;
            }
            Err(e) => assert!(cut < 34, "cut at {cut} bytes: {e}"),
        }
    }
    assert!(
        judged >= 20,
        "every cut inside the TCP header was judged ({judged})"
    );
    let reasons = [134, 135].map(|r| h.counter(abi::METRIC_EGRESS, r));
    assert_eq!(
        reasons.iter().sum::<u64>(),
        judged,
        "every drop counted: {reasons:?}"
    );
    assert_eq!(
        reasons[0], judged,
        "a frame shorter than its IP total length is an invalid packet"
    );
    // A consistent IP packet whose TCP/UDP/ICMP header is cut short: CT invalid header.
    for (proto, len) in [(6u8, 19usize), (17, 7), (1, 7)] {
        let pkt = ipv4(POD_A, POD_B, proto, &vec![0u8; len]);
        assert_eq!(
            h.run("from_container", &pkt).0,
            TC_ACT_SHOT,
            "proto {proto}"
        );
    }
    assert_eq!(h.counter(abi::METRIC_EGRESS, 135), 3);
    let mut bad_ihl = whole.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(h.run("from_container", &bad_ihl).0, TC_ACT_SHOT);
    let mut bad_len = whole.clone();
    bad_len[16..18].copy_from_slice(&2000u16.to_be_bytes());
    assert_eq!(h.run("from_container", &bad_len).0, TC_ACT_SHOT);
    assert_eq!(h.ct_len(), 0);
}

#[test]
fn expiring_ttl_is_left_to_the_stack() {
    privileged!();
    let h = Harness::new();
    let mut pkt = tcp(POD_A, 40004, POD_B, 80, SYN);
    pkt[14 + 8] = 1;
    let (v, out) = h.run("from_container", &pkt);
    assert_eq!(v, TC_ACT_OK, "the stack sends ICMP time exceeded");
    assert_eq!(out, pkt);
}

#[test]
fn unknown_interfaces_are_left_alone() {
    privileged!();
    let mut h = Harness::new();
    h.remove_self();
    let pkt = tcp(POD_A, 40005, POD_B, 80, SYN);
    assert_eq!(h.run("from_container", &pkt), (TC_ACT_UNSPEC, pkt.clone()));
    assert_eq!(h.run("to_container", &pkt), (TC_ACT_UNSPEC, pkt));
    assert_eq!(h.ct_len(), 0);
}

#[test]
fn new_connections_are_traced_once_not_every_packet() {
    privileged!();
    let mut h = Harness::new();
    h.run("from_container", &tcp(POD_A, 40006, WORLD, 80, SYN));
    h.run("to_container", &tcp(WORLD, 80, POD_A, 40006, SYN | ACK));
    for _ in 0..5 {
        h.run("from_container", &tcp(POD_A, 40006, WORLD, 80, ACK));
        h.run("to_container", &tcp(WORLD, 80, POD_A, 40006, ACK));
    }
    let evs = h.events();
    assert_eq!(evs.len(), 2, "the SYN and the first reply: {evs:?}");
    assert_eq!(
        (evs[0].kind, evs[0].code, evs[0].ct_state),
        (abi::EVENT_TRACE, 3, abi::ct_result::NEW)
    );
    assert_eq!((evs[1].code, evs[1].ct_state), (0, abi::ct_result::REPLY));
    assert_eq!(evs[0].src_identity, 300);
    assert_eq!(h.counter(abi::METRIC_EGRESS, 0), 6);
}

/// The traces (code, CT state) of a short same-node connection A -> B, as from_container
/// and to_container see it (both run at A's ifindex here: the to-endpoint side is A's).
fn traces_of_a_pod_to_pod_connection(h: &mut Harness, sport: u16) -> Vec<(u8, u8)> {
    h.events();
    h.run("from_container", &tcp(POD_A, sport, POD_B, 80, SYN));
    h.run("to_container", &tcp(POD_B, 80, POD_A, sport, SYN | ACK));
    h.run("from_container", &tcp(POD_A, sport, POD_B, 80, ACK));
    h.run("to_container", &tcp(POD_B, 80, POD_A, sport, ACK));
    h.run("from_container", &tcp(POD_A, sport, POD_B, 80, FIN | ACK));
    h.run("to_container", &tcp(POD_B, 80, POD_A, sport, FIN | ACK));
    h.events()
        .iter()
        .filter(|e| e.kind == abi::EVENT_TRACE)
        .map(|e| (e.code, e.ct_state))
        .collect()
}

const TO_LXC: u8 = 0;
const FROM_LXC: u8 = 5;

#[test]
fn monitor_aggregation_medium_reports_a_local_connection_only_where_it_is_delivered() {
    privileged!();
    let mut h = Harness::new();
    use abi::ct_result::{ESTABLISHED, NEW, REPLY};
    // The default (no flag in the node's configuration): Cilium's "medium". The SYN and the
    // client's FIN are to-endpoint events of B, whose to_container is not run here: A's side
    // sees the first reply and the server's FIN, and from-endpoint nothing.
    assert_eq!(
        traces_of_a_pod_to_pod_connection(&mut h, 40100),
        vec![(TO_LXC, REPLY), (TO_LXC, REPLY)]
    );
    h.set_monitor_aggregation(MonitorAggregation::Medium);
    assert_eq!(
        traces_of_a_pod_to_pod_connection(&mut h, 40101),
        vec![(TO_LXC, REPLY), (TO_LXC, REPLY)]
    );
    // "low": every packet, still only where it is delivered.
    h.set_monitor_aggregation(MonitorAggregation::Low);
    assert_eq!(
        traces_of_a_pod_to_pod_connection(&mut h, 40102),
        vec![(TO_LXC, REPLY); 3]
    );
    // "none": every packet, and from-endpoint too.
    h.set_monitor_aggregation(MonitorAggregation::None);
    assert_eq!(
        traces_of_a_pod_to_pod_connection(&mut h, 40103),
        vec![
            (FROM_LXC, NEW),
            (TO_LXC, REPLY),
            (FROM_LXC, ESTABLISHED),
            (TO_LXC, REPLY),
            (FROM_LXC, ESTABLISHED),
            (TO_LXC, REPLY)
        ]
    );
    // Drops are reported at every level.
    h.set_monitor_aggregation(MonitorAggregation::Medium);
    h.events();
    h.run("from_container", &tcp(POD_B, 40104, WORLD, 80, SYN));
    assert_eq!(
        h.events()
            .iter()
            .map(|e| (e.kind, e.code))
            .collect::<Vec<_>>(),
        vec![(abi::EVENT_DROP, 132)], // DROP_INVALID_SIP: A may not send as B
        "drops are reported at every level"
    );
}

#[test]
fn a_new_connection_is_tracked_once_policy_allowed_it_and_traced_once() {
    privileged!();
    let mut h = Harness::new();
    h.events();
    // A SYN to the world: conntrack is looked up before policy and the entry made after it,
    // without looking again; the entry is the connection's, with the SYN counted once.
    h.run("from_container", &tcp(POD_A, 40110, WORLD, 80, SYN));
    let e = h
        .ct(key(POD_A, 40110, WORLD, 80, 6, abi::CT_EGRESS))
        .expect("egress CT entry");
    assert_eq!((e.tx_packets, e.rx_packets, e.tx_flags), (1, 0, SYN));
    assert_eq!(h.ct_len(), 1);
    let evs = h.events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!((evs[0].code, evs[0].ct_state), (3, abi::ct_result::NEW));
    // A new SYN on the closed tuple starts over.
    h.run("from_container", &tcp(POD_A, 40110, WORLD, 80, RST));
    h.run("from_container", &tcp(POD_A, 40110, WORLD, 80, SYN));
    let e = h
        .ct(key(POD_A, 40110, WORLD, 80, 6, abi::CT_EGRESS))
        .expect("egress CT entry");
    assert_eq!((e.tx_packets, e.state & abi::ct_state::RESET), (1, 0));
}

#[test]
fn packets_are_matched_the_same_way_whichever_port_is_lower() {
    privileged!();
    let h = Harness::new();
    // Replies are looked up as replies first when they come from the lower port; a client on
    // a port below the server's (and a server above its client's) must still be told apart.
    for (client_port, server_port) in [(40120u16, 80u16), (1500, 5001)] {
        h.run(
            "from_container",
            &tcp(POD_A, client_port, WORLD, server_port, SYN),
        );
        h.run(
            "to_container",
            &tcp(WORLD, server_port, POD_A, client_port, SYN | ACK),
        );
        h.run(
            "from_container",
            &tcp(POD_A, client_port, WORLD, server_port, ACK),
        );
        h.run(
            "to_container",
            &tcp(WORLD, server_port, POD_A, client_port, ACK),
        );
        h.run(
            "to_container",
            &tcp(WORLD, server_port, POD_A, client_port, ACK),
        );
        let e = h
            .ct(key(
                POD_A,
                client_port,
                WORLD,
                server_port,
                6,
                abi::CT_EGRESS,
            ))
            .expect("egress CT entry");
        assert_eq!(
            (e.tx_packets, e.rx_packets),
            (2, 3),
            "{client_port} -> {server_port}"
        );
        assert!(
            h.ct(key(
                WORLD,
                server_port,
                POD_A,
                client_port,
                6,
                abi::CT_INGRESS
            ))
            .is_none(),
            "the replies made no entry of their own"
        );
    }
    // Towards the pod, a server in it on the higher port.
    h.run("to_container", &tcp(WORLD, 443, POD_A, 50000, SYN));
    h.run("from_container", &tcp(POD_A, 50000, WORLD, 443, SYN | ACK));
    h.run("to_container", &tcp(WORLD, 443, POD_A, 50000, ACK));
    let e = h
        .ct(key(WORLD, 443, POD_A, 50000, 6, abi::CT_INGRESS))
        .expect("ingress CT entry");
    assert_eq!((e.tx_packets, e.rx_packets), (2, 1));
    assert_eq!(h.ct_len(), 3);
}

#[test]
fn a_full_event_ring_loses_events_not_packets_and_counts_them() {
    privileged!();
    let mut h = Harness::new();
    let mut v6 = eth(HOST_MAC_A, MAC_A, 0x86dd);
    v6.extend_from_slice(&[0x60; 40]);
    // Every run reports a drop (139); 40,000 of them overrun the 1 MiB ring nobody drains.
    let p: &SchedClassifier = h
        .bpf
        .program("from_container")
        .expect("program")
        .try_into()
        .expect("classifier");
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&v6);
    opts.repeat = 40_000;
    let res = p.test_run(opts).expect("test run");
    assert_eq!(
        res.return_value, TC_ACT_SHOT,
        "the packet's fate is unchanged"
    );
    assert_eq!(
        h.counter(abi::METRIC_EGRESS, 139),
        40_000,
        "every drop counted"
    );
    let lost = h.counter(abi::METRIC_INGRESS, abi::METRIC_EVENTS_LOST_SLOT);
    let kept = h.events().len() as u64;
    assert!(lost > 0, "nothing lost with {kept} events kept");
    assert_eq!(
        kept + lost,
        40_000,
        "every event either kept or counted as lost"
    );
}
