//! Packet tests of the L7 proxy's datapath contract (issue #12, item 1): the redirect decision
//! on an entry with a proxy port, conntrack's proxy flags, the proxy marks, the host-side
//! program tunnelling the proxy's upstream traffic as the client.
//!
//! BPF_PROG_TEST_RUN runs the programs on the loopback device of the test's namespace, where
//! `bpf_sk_lookup` finds this process's sockets; so a listener opened by the test is the
//! "proxy". Whether `bpf_sk_assign` is allowed there (it wants a TC ingress hook) is found
//! out below and asserted either way; a real TCP connection delivered to a transparent
//! listener is crates/datapath/tests/proxy_kernel.rs's job.

mod common;

use std::net::{TcpListener, UdpSocket};

use ciliate_datapath::proxy_mark::{self, ProxyDirection, ProxyMark};
use common::*;

const PROXY_PORT_UNUSED: u16 = 1;
const ID_CLIENT: u32 = 4242;

fn with_proxy(mut e: PolicyMapEntry, port: u16) -> PolicyMapEntry {
    e.proxy_port = port;
    e
}

fn egress_policy(entries: Vec<PolicyMapEntry>) -> EndpointPolicy {
    EndpointPolicy {
        ingress_enforced: false,
        egress_enforced: true,
        entries,
    }
}

/// The drop reasons reported since the last call.
fn drops(h: &mut Harness) -> Vec<u8> {
    h.events()
        .iter()
        .filter(|e| e.kind == abi::EVENT_DROP)
        .map(|e| e.code)
        .collect()
}

/// A listener standing in for the proxy, on 127.0.0.1 and a free port.
fn proxy_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

/// The kernel's answer to bpf_sk_assign on this hook under BPF_PROG_TEST_RUN: `Ok` with the
/// to-proxy mark when it assigns, else the reported drop 179 (never 178: the socket was found).
fn assert_assigned_or_refused_on_test_run(h: &mut Harness, res: (u32, Vec<u8>, u32), port: u16) {
    let reasons = drops(h);
    match res.0 {
        TC_ACT_OK => {
            assert_eq!(
                proxy_mark::decode(res.2),
                Some(ProxyMark::ToProxy { port }),
                "handed to the proxy with the to-proxy mark"
            );
            assert!(reasons.is_empty(), "{reasons:?}");
        }
        TC_ACT_SHOT => assert_eq!(
            reasons,
            vec![abi::DROP_PROXY_SET_FAILED],
            "the listener was found (not 178), only the assignment refused"
        ),
        v => panic!("unexpected verdict {v}"),
    }
}

/// An egress rule with a proxy port: a new TCP connection is sent to the proxy and conntrack
/// remembers it, with the port; with no proxy listening it is refused with 178 (fail closed).
#[test]
fn an_egress_entry_with_a_proxy_port_sends_the_connection_to_the_proxy_or_fails_closed() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &egress_policy(vec![with_proxy(
            rule(ID_B, true, Some(6), 80, 16, false),
            PROXY_PORT_UNUSED,
        )]),
        0,
    );
    let syn = tcp_ok(POD_A, 40000, POD_B, 80, SYN);
    let (v, out, _) = run_ctx(&h, "from_container", &syn, 0);
    assert_eq!(v, TC_ACT_SHOT, "nobody listens on the proxy port");
    assert_eq!(out, syn, "not redirected to B");
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    assert_eq!(h.counter(abi::METRIC_EGRESS, 178), 1);
    let e = h
        .ct(key(POD_A, 40000, POD_B, 80, 6, abi::CT_EGRESS))
        .expect("tracked");
    assert_eq!(e.state & abi::ct_state::TO_PROXY, abi::ct_state::TO_PROXY);
    assert_eq!(e.proxy_port, PROXY_PORT_UNUSED);

    // With a listener: the socket is found (the assignment's outcome depends on the hook).
    let (_l, port) = proxy_listener();
    let mut h = Harness::new();
    h.set_policy_a(
        &egress_policy(vec![with_proxy(
            rule(ID_B, true, Some(6), 80, 16, false),
            port,
        )]),
        0,
    );
    let res = run_ctx(&h, "from_container", &syn, 0);
    eprintln!(
        "bpf_sk_assign under BPF_PROG_TEST_RUN at from_container: verdict {}",
        res.0
    );
    assert_assigned_or_refused_on_test_run(&mut h, res, port);
    let e = h
        .ct(key(POD_A, 40000, POD_B, 80, 6, abi::CT_EGRESS))
        .expect("tracked");
    assert_eq!(e.proxy_port, port);
}

/// The same connection without a proxy port on its entry goes to B as before, untouched by
/// the proxy: no flag, no mark.
#[test]
fn an_entry_without_a_proxy_port_is_forwarded_as_before() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &egress_policy(vec![rule(ID_B, true, Some(6), 80, 16, false)]),
        0,
    );
    let (v, _, mark) = run_ctx(
        &h,
        "from_container",
        &tcp_ok(POD_A, 40001, POD_B, 80, SYN),
        0,
    );
    assert_eq!(v, TC_ACT_REDIRECT, "straight to B's veth");
    assert_eq!(mark, 0);
    let e = h
        .ct(key(POD_A, 40001, POD_B, 80, 6, abi::CT_EGRESS))
        .expect("tracked");
    assert_eq!(
        e.state & (abi::ct_state::TO_PROXY | abi::ct_state::FROM_PROXY),
        0
    );
    assert_eq!(e.proxy_port, 0);
    assert!(drops(&mut h).is_empty());
}

/// Conntrack keeps the decision: once a connection goes to the proxy, its later packets do
/// too, even when the policy no longer names the proxy (a connection cannot leave the proxy
/// mid-stream); one that started without the proxy stays without it.
#[test]
fn later_packets_follow_the_connections_decision_not_a_new_one() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &egress_policy(vec![with_proxy(
            rule(ID_B, true, Some(6), 80, 16, false),
            PROXY_PORT_UNUSED,
        )]),
        0,
    );
    run_ctx(
        &h,
        "from_container",
        &tcp_ok(POD_A, 40002, POD_B, 80, SYN),
        0,
    );
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    // The policy flips to a plain allow.
    h.set_policy_a(
        &egress_policy(vec![rule(ID_B, true, Some(6), 80, 16, false)]),
        1,
    );
    let (v, _, _) = run_ctx(
        &h,
        "from_container",
        &tcp_ok(POD_A, 40002, POD_B, 80, ACK),
        0,
    );
    assert_eq!(v, TC_ACT_SHOT, "still the proxy's, which is down");
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    // A new connection follows the new policy.
    let (v, _, _) = run_ctx(
        &h,
        "from_container",
        &tcp_ok(POD_A, 40003, POD_B, 80, SYN),
        0,
    );
    assert_eq!(v, TC_ACT_REDIRECT);
}

/// A UDP socket standing in for the DNS proxy's, on 0.0.0.0 and a free port (the proxy's
/// socket is unconnected and bound to every address, like a resolver's).
fn udp_proxy_socket() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    let port = s.local_addr().expect("addr").port();
    (s, port)
}

/// An egress UDP entry with a proxy port (a DNS rule): the datagram is sent to the proxy's
/// UDP socket and tracked with the proxy flag, so that later datagrams of the flow follow and
/// the proxy's answer (from the resolver's address) is a reply; with nothing on the proxy
/// port it is refused with 178 (fail closed), even when a socket of the node is bound to the
/// original destination's port (a node-local resolver must not get the pod's query).
#[test]
fn an_egress_udp_entry_with_a_proxy_port_sends_the_datagram_to_the_proxy_or_fails_closed() {
    privileged!();
    // A "node-local resolver" on the port the pod asks, and no proxy.
    let (_resolver, dns_port) = udp_proxy_socket();
    let mut h = Harness::new();
    h.set_policy_a(
        &egress_policy(vec![with_proxy(
            rule(ID_B, true, Some(17), dns_port, 16, false),
            PROXY_PORT_UNUSED,
        )]),
        0,
    );
    let query = udp(POD_A, 40004, POD_B, dns_port);
    let (v, out, _) = run_ctx(&h, "from_container", &query, 0);
    assert_eq!(v, TC_ACT_SHOT, "nobody on the proxy port");
    assert_eq!(out, query, "not redirected to B");
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    let e = h
        .ct(key(POD_A, 40004, POD_B, dns_port, 17, abi::CT_EGRESS))
        .expect("tracked");
    assert_eq!(e.state & abi::ct_state::TO_PROXY, abi::ct_state::TO_PROXY);
    assert_eq!(e.proxy_port, PROXY_PORT_UNUSED);

    // With the proxy's socket: found (the assignment's outcome depends on the hook).
    let (_proxy, port) = udp_proxy_socket();
    let mut h = Harness::new();
    h.set_policy_a(
        &egress_policy(vec![with_proxy(
            rule(ID_B, true, Some(17), 53, 16, false),
            port,
        )]),
        0,
    );
    let query = udp(POD_A, 40005, POD_B, 53);
    let res = run_ctx(&h, "from_container", &query, 0);
    assert_ne!(res.0, TC_ACT_REDIRECT, "not to B");
    assert_assigned_or_refused_on_test_run(&mut h, res, port);
    let e = h
        .ct(key(POD_A, 40005, POD_B, 53, 17, abi::CT_EGRESS))
        .expect("tracked");
    assert_eq!(e.state & abi::ct_state::TO_PROXY, abi::ct_state::TO_PROXY);
    assert_eq!(e.proxy_port, port);
    // The next query of the same flow goes the same way.
    let res = run_ctx(&h, "from_container", &query, 0);
    assert_assigned_or_refused_on_test_run(&mut h, res, port);

    // The proxy's answer, from B:53 to the pod, is the flow's reply: delivered into the pod,
    // not to the proxy again, without a policy verdict.
    let mut answer = udp(POD_B, 53, POD_A, 40005);
    answer[0..6].copy_from_slice(&MAC_A);
    answer[6..12].copy_from_slice(&HOST_MAC_A);
    let (v, _, mark) = run_ctx(&h, "to_container", &answer, 0);
    assert_eq!(v, TC_ACT_OK, "into the pod");
    assert_eq!(mark, 0);
    assert!(drops(&mut h).is_empty());
    let e = h
        .ct(key(POD_A, 40005, POD_B, 53, 17, abi::CT_EGRESS))
        .expect("tracked");
    assert_eq!(e.rx_packets, 1, "counted as the reply");
}

/// The proxy takes UDP only from an endpoint (DNS queries): a proxy port on an ingress UDP
/// entry refuses the packet (180) rather than let it pass unchecked.
#[test]
fn a_proxy_port_on_ingress_udp_fails_closed() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![with_proxy(
            rule(ID_B, false, Some(17), 53, 16, false),
            PROXY_PORT_UNUSED,
        )]),
        0,
    );
    let mut q = udp(POD_B, 40006, POD_A, 53);
    q[0..6].copy_from_slice(&MAC_A);
    q[6..12].copy_from_slice(&HOST_MAC_A);
    let (v, _, _) = run_ctx(&h, "to_container", &q, 0);
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_UNKNOWN_PROTO]);
}

/// An ingress rule with a proxy port: to_container (an egress hook, where bpf_sk_assign is
/// refused) sends the packet back in through the pod's veth with the to-proxy mark and the
/// host side's MAC as destination; from_container there assigns it to the proxy (the packet
/// is not the pod's, yet not dropped as a spoofed source).
#[test]
fn an_ingress_entry_with_a_proxy_port_goes_through_the_veths_ingress_to_the_proxy() {
    privileged!();
    let (_l, port) = proxy_listener();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![with_proxy(
            rule(ID_B, false, Some(6), 80, 16, false),
            port,
        )]),
        0,
    );
    let mut syn = tcp_ok(POD_B, 40010, POD_A, 80, SYN);
    syn[0..6].copy_from_slice(&MAC_A);
    syn[6..12].copy_from_slice(&HOST_MAC_A);
    let (v, out, mark) = run_ctx(&h, "to_container", &syn, 0);
    assert_eq!(v, TC_ACT_REDIRECT, "to the veth's ingress");
    assert_eq!(proxy_mark::decode(mark), Some(ProxyMark::ToProxy { port }));
    assert_eq!(
        &out[0..6],
        &HOST_MAC_A,
        "the host side's MAC: the stack's own"
    );
    assert_eq!(&out[6..12], &MAC_A);
    assert_eq!(&out[12..], &syn[12..], "the IP packet untouched");
    let e = h
        .ct(key(POD_B, 40010, POD_A, 80, 6, abi::CT_INGRESS))
        .expect("tracked");
    assert_eq!(e.state & abi::ct_state::TO_PROXY, abi::ct_state::TO_PROXY);
    assert_eq!(e.proxy_port, port);
    let evs = h.events();
    assert!(
        evs.iter()
            .any(|e| e.kind == abi::EVENT_TRACE && e.code == abi::TRACE_TO_PROXY),
        "traced as to-proxy"
    );
    // This side never sees the proxy's replies: the client's ACK makes it established, its
    // FIN closing.
    let lifetime = |h: &Harness| {
        h.ct(key(POD_B, 40010, POD_A, 80, 6, abi::CT_INGRESS))
            .expect("tracked")
            .expires
            .saturating_sub(now_secs())
    };
    assert!(lifetime(&h) <= 60, "a SYN only");
    let mut ack = tcp_ok(POD_B, 40010, POD_A, 80, ACK);
    ack[0..12].copy_from_slice(&syn[0..12]);
    assert_eq!(run_ctx(&h, "to_container", &ack, 0).0, TC_ACT_REDIRECT);
    assert!(lifetime(&h) > 3600, "established");
    let mut fin = tcp_ok(POD_B, 40010, POD_A, 80, FIN | ACK);
    fin[0..12].copy_from_slice(&syn[0..12]);
    assert_eq!(run_ctx(&h, "to_container", &fin, 0).0, TC_ACT_REDIRECT);
    assert!(lifetime(&h) <= 10, "closing");
    h.events();

    // Back in through the veth: the listener is found.
    let res = run_ctx(&h, "from_container", &out, mark);
    assert_assigned_or_refused_on_test_run(&mut h, res, port);
    // With nobody listening on that port: refused, fail closed.
    let res = run_ctx(
        &h,
        "from_container",
        &out,
        proxy_mark::to_proxy(PROXY_PORT_UNUSED),
    );
    assert_eq!(res.0, TC_ACT_SHOT);
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    // Without the mark the same packet is a spoofed source.
    let res = run_ctx(&h, "from_container", &out, 0);
    assert_eq!(res.0, TC_ACT_SHOT);
    assert_eq!(drops(&mut h), vec![132]);
}

/// The proxy's upstream packet (from B's address, with a from-proxy mark for a client of
/// another identity) is judged as that client, not as B nor the host, and tracked with
/// CT_F_FROM_PROXY; so the server's reply goes to the proxy's socket instead of to B.
#[test]
fn a_from_proxy_mark_is_judged_as_its_client_and_the_reply_goes_back_to_the_proxy() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![
            rule(ID_CLIENT, false, Some(6), 80, 16, false),
            rule(ID_CIDR, false, Some(6), 80, 16, false),
        ]),
        0,
    );
    let syn = tcp_ok(POD_B, 40020, POD_A, 80, SYN);
    // B itself may not.
    assert_eq!(run_ctx(&h, "to_container", &syn, 0).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut h), vec![133]);
    let m = proxy_mark::from_proxy(ProxyDirection::Egress, ID_CLIENT).expect("mark");
    let (v, out, _) = run_ctx(&h, "to_container", &syn, m);
    assert_eq!(v, TC_ACT_OK, "the client may");
    assert_eq!(out, syn);
    let e = h
        .ct(key(POD_B, 40020, POD_A, 80, 6, abi::CT_INGRESS))
        .expect("tracked");
    assert_eq!(e.src_identity, ID_CLIENT);
    assert_eq!(
        e.state & (abi::ct_state::FROM_PROXY | abi::ct_state::TO_PROXY),
        abi::ct_state::FROM_PROXY
    );
    let verdict = h
        .events()
        .into_iter()
        .find(|e| e.kind == abi::EVENT_POLICY_VERDICT)
        .expect("verdict");
    assert_eq!((verdict.code, verdict.src_identity), (0, ID_CLIENT));

    // A CIDR identity (bit 24) travels too.
    let m = proxy_mark::from_proxy(ProxyDirection::Ingress, ID_CIDR).expect("mark");
    let syn2 = tcp_ok(POD_B, 40021, POD_A, 80, SYN);
    assert_eq!(run_ctx(&h, "to_container", &syn2, m).0, TC_ACT_OK);

    // A's reply would go straight to B's veth; it is the proxy's connection: to its socket,
    // which does not exist here, so it is dropped (never delivered to B).
    let (v, _, _) = run_ctx(
        &h,
        "from_container",
        &tcp_ok(POD_A, 80, POD_B, 40020, SYN | ACK),
        0,
    );
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
}

/// After the egress proxy a connection may still need the destination's ingress proxy; after
/// the ingress proxy it is never sent there again.
#[test]
fn the_ingress_proxys_own_traffic_is_not_redirected_again_the_egress_proxys_may_be() {
    privileged!();
    let mut h = Harness::new();
    h.set_policy_a(
        &ingress_policy(vec![with_proxy(
            rule(ID_CLIENT, false, Some(6), 80, 16, false),
            PROXY_PORT_UNUSED,
        )]),
        0,
    );
    let ingress = proxy_mark::from_proxy(ProxyDirection::Ingress, ID_CLIENT).expect("mark");
    let (v, out, mark) = run_ctx(
        &h,
        "to_container",
        &tcp_ok(POD_B, 40030, POD_A, 80, SYN),
        ingress,
    );
    assert_eq!(v, TC_ACT_OK, "into the pod");
    assert_eq!(mark, ingress, "no to-proxy mark");
    assert_eq!(out, tcp_ok(POD_B, 40030, POD_A, 80, SYN));
    let egress = proxy_mark::from_proxy(ProxyDirection::Egress, ID_CLIENT).expect("mark");
    let (v, _, mark) = run_ctx(
        &h,
        "to_container",
        &tcp_ok(POD_B, 40031, POD_A, 80, SYN),
        egress,
    );
    assert_eq!(v, TC_ACT_REDIRECT, "to the ingress proxy");
    assert_eq!(
        proxy_mark::decode(mark),
        Some(ProxyMark::ToProxy {
            port: PROXY_PORT_UNUSED
        })
    );
}

/// host.c: the proxy's upstream packet to a pod of another node goes through the tunnel as
/// the client (the mark's identity), not as the host, and is tracked so that the reply finds
/// the proxy; the ingress proxy's answer to a remote client goes as the server pod.
#[test]
fn the_proxys_upstream_to_a_remote_pod_is_tunnelled_as_the_client() {
    privileged!();
    let mut h = Harness::new();
    h.remote_pod();
    h.set_tunnel_ifindex(2);
    let syn = tcp_ok(POD_A, 40040, REMOTE_POD, 80, SYN);
    // Without a mark, a pod's packet is lxc.c's business.
    assert_eq!(run_ctx(&h, "to_netdev", &syn, 0).0, TC_ACT_OK);
    let m = proxy_mark::from_proxy(ProxyDirection::Egress, ID_CLIENT).expect("mark");
    let (v, out, _) = run_ctx(&h, "to_netdev", &syn, m);
    assert_eq!(v, TC_ACT_REDIRECT, "handed to the VXLAN device");
    assert_eq!(out, syn);
    let trace = h
        .events()
        .into_iter()
        .find(|e| e.kind == abi::EVENT_TRACE && e.code == abi::TRACE_TO_OVERLAY)
        .expect("trace");
    assert_eq!((trace.src_identity, trace.dst_identity), (ID_CLIENT, 777));
    let e = h
        .ct(key(POD_A, 40040, REMOTE_POD, 80, 6, abi::CT_EGRESS))
        .expect("tracked for the reply");
    assert_eq!(
        e.state & abi::ct_state::FROM_PROXY,
        abi::ct_state::FROM_PROXY
    );
    assert_eq!(e.src_identity, ID_CLIENT);

    // The ingress proxy answering a remote client of A (a connection conntrack sent to it).
    let mut by_ct: BpfHashMap<&mut MapData, CtKey4, CtEntry4> =
        BpfHashMap::try_from(h.bpf.map_mut(abi::maps::CT4).expect("map")).expect("hash");
    let proxied = CtEntry4 {
        expires: now_secs() + 60,
        state: abi::ct_state::TO_PROXY,
        proxy_port: 15002,
        src_identity: 777,
        ..CtEntry4::default()
    };
    by_ct
        .insert(
            key(REMOTE_POD, 50000, POD_A, 80, 6, abi::CT_INGRESS),
            proxied,
            0,
        )
        .expect("ct");
    let answer = tcp_ok(POD_A, 80, REMOTE_POD, 50000, SYN | ACK);
    assert_eq!(run_ctx(&h, "to_netdev", &answer, 0).0, TC_ACT_REDIRECT);
    let trace = h
        .events()
        .into_iter()
        .find(|e| e.kind == abi::EVENT_TRACE && e.code == abi::TRACE_TO_OVERLAY)
        .expect("trace");
    assert_eq!(trace.src_identity, 300, "as the server pod A");
    // Any other packet from A's address to another port is still not the host's to tunnel.
    let other = tcp_ok(POD_A, 80, REMOTE_POD, 50001, SYN | ACK);
    assert_eq!(run_ctx(&h, "to_netdev", &other, 0).0, TC_ACT_OK);
}

/// L7 rules see the backend: Service DNAT runs before policy, so the proxy gets the backend
/// as the original destination; the proxy's answers (from the backend's address) reach the
/// client as ordinary replies, translated back to the Service's address.
#[test]
fn a_service_connection_goes_to_the_proxy_as_its_backend_and_replies_are_rev_natted() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&[POD_B], None, L4Proto::Tcp));
    h.set_policy_a(
        &egress_policy(vec![with_proxy(
            rule(ID_B, true, Some(6), 8080, 16, false),
            PROXY_PORT_UNUSED,
        )]),
        0,
    );
    let (v, out, _) = run_ctx(&h, "from_container", &tcp_ok(POD_A, 40050, VIP, 80, SYN), 0);
    assert_eq!(v, TC_ACT_SHOT, "no proxy listening");
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    assert_eq!(
        dst_of(&out),
        (POD_B, 8080),
        "judged and sent as the backend"
    );
    let e = h
        .ct(key(POD_A, 40050, POD_B, 8080, 6, abi::CT_EGRESS))
        .expect("tracked as the backend");
    assert_eq!(e.state & abi::ct_state::TO_PROXY, abi::ct_state::TO_PROXY);
    assert_eq!(e.rev_nat_index, 5);
    // The proxy answers from the backend's address (its socket's local address).
    let (v, out, _) = run_ctx(
        &h,
        "to_container",
        &tcp_ok(POD_B, 8080, POD_A, 40050, SYN | ACK),
        0,
    );
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(
        src_of(&out),
        (VIP, 80),
        "the Service's address, as the client asked"
    );
    assert_checksums(&out);
}

/// DNS to a Service (a cluster's resolver behind a ClusterIP): the query goes to the DNS proxy
/// as the backend's, and the proxy's answer from the backend's address reaches the pod from the
/// Service's address, as its stub resolver asked.
#[test]
fn a_udp_query_to_a_service_goes_to_the_proxy_as_its_backend_and_the_answer_is_rev_natted() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&[POD_B], None, L4Proto::Udp));
    h.set_policy_a(
        &egress_policy(vec![with_proxy(
            rule(ID_B, true, Some(17), 8080, 16, false),
            PROXY_PORT_UNUSED,
        )]),
        0,
    );
    let (v, out, _) = run_ctx(&h, "from_container", &udp(POD_A, 40060, VIP, 80), 0);
    assert_eq!(v, TC_ACT_SHOT, "no proxy socket");
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    assert_eq!(
        dst_of(&out),
        (POD_B, 8080),
        "judged and sent as the backend"
    );
    let e = h
        .ct(key(POD_A, 40060, POD_B, 8080, 17, abi::CT_EGRESS))
        .expect("tracked as the backend");
    assert_eq!(e.state & abi::ct_state::TO_PROXY, abi::ct_state::TO_PROXY);
    assert_eq!(e.rev_nat_index, 5);
    // With a real checksum, so that the reverse NAT's incremental fix-up can be checked.
    let mut answer = udp(POD_B, 8080, POD_A, 40060);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&answer[26..34]);
    pseudo.extend_from_slice(&[0, 17, 0, 12]);
    pseudo.extend_from_slice(&answer[34..46]);
    let c = csum(&pseudo);
    answer[34 + 6..34 + 8].copy_from_slice(&c.to_be_bytes());
    answer[0..6].copy_from_slice(&MAC_A);
    answer[6..12].copy_from_slice(&HOST_MAC_A);
    let (v, out, _) = run_ctx(&h, "to_container", &answer, 0);
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(src_of(&out), (VIP, 80), "the Service's address");
    assert_checksums(&out);
}

/// The ingress proxy's answer to an upstream connection another proxy opened from pod A's
/// address (both on this node) comes from the node's stack towards A: it belongs to that
/// proxy's socket, so to_container sends it back in through the veth's ingress to be
/// assigned there, instead of into pod A.
#[test]
fn a_proxys_answer_to_another_proxys_upstream_goes_back_to_that_proxy() {
    privileged!();
    let mut h = Harness::new();
    let mut by_ct: BpfHashMap<&mut MapData, CtKey4, CtEntry4> =
        BpfHashMap::try_from(h.bpf.map_mut(abi::maps::CT4).expect("map")).expect("hash");
    // B's side of the upstream connection A:40060 -> B:80, which a proxy opened.
    by_ct
        .insert(
            key(POD_A, 40060, POD_B, 80, 6, abi::CT_INGRESS),
            CtEntry4 {
                expires: now_secs() + 60,
                state: abi::ct_state::FROM_PROXY | abi::ct_state::TO_PROXY,
                proxy_port: 15002,
                src_identity: 300,
                ..CtEntry4::default()
            },
            0,
        )
        .expect("ct");
    // And an ordinary one, A:40061 -> B:80.
    by_ct
        .insert(
            key(POD_A, 40061, POD_B, 80, 6, abi::CT_INGRESS),
            CtEntry4 {
                expires: now_secs() + 60,
                src_identity: 300,
                ..CtEntry4::default()
            },
            0,
        )
        .expect("ct");
    let answer = tcp_ok(POD_B, 80, POD_A, 40060, SYN | ACK);
    let (v, out, mark) = run_ctx(&h, "to_container", &answer, 0);
    assert_eq!(v, TC_ACT_REDIRECT, "back in through the veth");
    assert_eq!(
        proxy_mark::decode(mark),
        Some(ProxyMark::ToProxy { port: 0 })
    );
    assert_eq!(&out[0..6], &HOST_MAC_A);
    // There, the proxy's socket is looked up by the exact tuple; none here: dropped, never
    // into the pod.
    let (v, _, _) = run_ctx(&h, "from_container", &out, mark);
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    // The ordinary connection's packet goes into the pod as before.
    let other = tcp_ok(POD_B, 80, POD_A, 40061, SYN | ACK);
    let (v, _, mark) = run_ctx(&h, "to_container", &other, 0);
    assert_eq!((v, mark), (TC_ACT_OK, 0));
}

/// The proxy's upstream connection to the world from a pod's address is masqueraded like the
/// pod's own and tracked: the world's reply, translated back, goes to the proxy's socket (none
/// here: dropped, 178) rather than into the pod; an ordinary masqueraded reply is routed to the
/// pod as before.
#[test]
fn the_worlds_reply_to_the_proxys_upstream_goes_to_the_proxy_not_the_pod() {
    privileged!();
    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    let mut h = Harness::new();
    {
        let mut cfg: aya::maps::Array<&mut MapData, abi::NodeConfig> =
            aya::maps::Array::try_from(h.bpf.map_mut(abi::maps::NODE_CFG).expect("map"))
                .expect("array");
        cfg.set(
            0,
            abi::NodeConfig {
                flags: abi::NODE_F_MASQUERADE,
                masq_ipv4: NODE.octets(),
                masq_ifindex: 1,
                ..abi::NodeConfig::default()
            },
            0,
        )
        .expect("node config");
    }
    let m = proxy_mark::from_proxy(ProxyDirection::Egress, 300).expect("mark");
    let (v, out, _) = run_ctx(&h, "to_netdev", &tcp_ok(POD_A, 40070, WORLD, 443, SYN), m);
    assert_eq!(v, TC_ACT_OK);
    let (src, port) = src_of(&out);
    assert_eq!(src, NODE, "masqueraded");
    let e = h
        .ct(key(POD_A, 40070, WORLD, 443, 6, abi::CT_EGRESS))
        .expect("tracked");
    assert_eq!(
        e.state & abi::ct_state::FROM_PROXY,
        abi::ct_state::FROM_PROXY
    );
    let (v, _, _) = run_ctx(
        &h,
        "from_netdev",
        &tcp_ok(WORLD, 443, NODE, port, SYN | ACK),
        0,
    );
    assert_eq!(v, TC_ACT_SHOT, "for the proxy's socket, which is not there");
    assert_eq!(drops(&mut h), vec![abi::DROP_PROXY_LOOKUP_FAILED]);
    // The pod's own connection.
    let (_, out, _) = run_ctx(&h, "to_netdev", &tcp_ok(POD_A, 40071, WORLD, 443, SYN), 0);
    let port = src_of(&out).1;
    let (v, back, _) = run_ctx(
        &h,
        "from_netdev",
        &tcp_ok(WORLD, 443, NODE, port, SYN | ACK),
        0,
    );
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(dst_of(&back), (POD_A, 40071));
}
