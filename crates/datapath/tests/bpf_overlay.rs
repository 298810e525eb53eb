//! Packet tests of the overlay: pods of other nodes reached through the VXLAN device
//! (`bpf/lxc.c`) and packets received from it (`bpf/overlay.c`).

mod common;

use common::*;

#[test]
fn a_pod_on_another_node_is_reached_through_the_tunnel_device() {
    privileged!();
    let mut h = Harness::new();
    h.remote_pod();
    h.set_tunnel_ifindex(1);
    let pkt = tcp(POD_A, 40100, REMOTE_POD, 8080, SYN);
    let (v, out) = h.run("from_container", &pkt);
    assert_eq!(v, TC_ACT_REDIRECT, "handed to the VXLAN device");
    assert_eq!(&out[14..], &pkt[14..], "the inner packet is untouched");
    let e = h
        .ct(key(POD_A, 40100, REMOTE_POD, 8080, 6, abi::CT_EGRESS))
        .expect("egress CT entry");
    assert_eq!(e.src_identity, 300);
    let evs = h.events();
    let trace = evs
        .iter()
        .find(|e| e.kind == abi::EVENT_TRACE)
        .expect("a trace event");
    assert_eq!(trace.code, abi::TRACE_TO_OVERLAY);
    assert_eq!(
        trace.dst_identity, 777,
        "the remote pod's identity from the ipcache"
    );
}

#[test]
fn without_a_tunnel_device_remote_pods_are_left_to_the_stack() {
    privileged!();
    let mut h = Harness::new();
    h.remote_pod();
    let (v, _) = h.run("from_container", &tcp(POD_A, 40101, REMOTE_POD, 8080, SYN));
    assert_eq!(v, TC_ACT_OK);
}

#[test]
fn egress_policy_judges_a_remote_pod_by_its_identity_before_the_tunnel() {
    privileged!();
    let mut h = Harness::new();
    h.remote_pod();
    h.set_tunnel_ifindex(1);
    // A's egress is enforced and allows identity 777 on TCP 8080 only.
    let mut policy = EndpointPolicy {
        egress_enforced: true,
        ..EndpointPolicy::default()
    };
    policy
        .entries
        .push(rule(777, true, Some(6), 8080, 16, false));
    h.set_policy_a(&policy, 0);
    let (v, _) = h.run("from_container", &tcp(POD_A, 40102, REMOTE_POD, 8080, SYN));
    assert_eq!(v, TC_ACT_REDIRECT);
    let (v, _) = h.run("from_container", &tcp(POD_A, 40103, REMOTE_POD, 9090, SYN));
    assert_eq!(v, TC_ACT_SHOT, "port not allowed");
    // Another address of that node's pod CIDR, not yet known by identity: world.
    let (v, _) = h.run(
        "from_container",
        &tcp(POD_A, 40104, Ipv4Addr::new(10, 200, 1, 21), 8080, SYN),
    );
    assert_eq!(v, TC_ACT_SHOT, "identity world is not allowed");
}

#[test]
fn from_the_overlay_a_packet_without_a_tunnel_key_is_dropped_and_others_pass() {
    privileged!();
    let mut h = Harness::new();
    // BPF_PROG_TEST_RUN packets carry no tunnel metadata: for a local pod, that is a packet
    // whose sender cannot be told, dropped with Cilium's reason 147.
    let (v, _) = h.run("from_overlay", &tcp(REMOTE_POD, 8080, POD_A, 40200, SYN));
    assert_eq!(v, TC_ACT_SHOT);
    let evs = h.events();
    assert!(evs
        .iter()
        .any(|e| e.kind == abi::EVENT_DROP && e.code == abi::DROP_NO_TUNNEL_KEY));
    // Not for a pod of this node (the node itself): the stack's.
    let (v, _) = h.run(
        "from_overlay",
        &tcp(REMOTE_POD, 8080, Ipv4Addr::new(172, 31, 0, 10), 40200, SYN),
    );
    assert_eq!(v, TC_ACT_OK);
}
