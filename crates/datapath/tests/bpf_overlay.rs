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
    let (v, out, mark) = run_ctx(&h, "from_container", &pkt, 0);
    assert_eq!(v, TC_ACT_REDIRECT, "handed to the VXLAN device");
    assert_eq!(&out[14..], &pkt[14..], "the inner packet is untouched");
    assert_eq!(
        mark,
        abi::MARK_MAGIC_OVERLAY,
        "marked for to_netdev, which lets the encapsulated packet by"
    );
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

// ---- the uplink takes the overlay's packets for local pods itself (host.c, from_netdev) ----

const THIS_NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 10);
const TUNNEL_IFINDEX: u32 = 77;
const VXLAN_PORT: u16 = 8472;

/// `inner` (an Ethernet frame) in VXLAN from REMOTE_NODE to `to`, UDP port `port`, VNI `vni`.
fn vxlan(to: Ipv4Addr, port: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&(vni << 8).to_be_bytes());
    vx.extend_from_slice(inner);
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&40000u16.to_be_bytes());
    u[2..4].copy_from_slice(&port.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + vx.len()) as u16).to_be_bytes());
    u.extend_from_slice(&vx);
    ipv4(REMOTE_NODE, to, 17, &u)
}

impl Harness {
    /// The overlay on (device TUNNEL_IFINDEX, UDP VXLAN_PORT) and this node's address known as
    /// the host, as the agent sets them.
    fn overlay_node(&mut self) {
        let mut cfg: aya::maps::Array<&mut MapData, abi::NodeConfig> =
            aya::maps::Array::try_from(self.bpf.map_mut(abi::maps::NODE_CFG).expect("map"))
                .expect("array");
        cfg.set(
            0,
            abi::NodeConfig {
                tunnel_ifindex: TUNNEL_IFINDEX,
                flags: u32::from(VXLAN_PORT) << abi::NODE_TUNNEL_PORT_SHIFT,
                ..abi::NodeConfig::default()
            },
            0,
        )
        .expect("node config");
        self.set_ipcache(&[IpcacheEntry {
            prefix: ipnet::Ipv4Net::from(THIS_NODE),
            identity: 1,
            tunnel_endpoint: None,
        }]);
    }
}

#[test]
fn the_uplink_decapsulates_a_pods_packet_from_another_node_and_delivers_it() {
    privileged!();
    let mut h = Harness::new();
    h.overlay_node();
    let inner = tcp_ok(REMOTE_POD, 40300, POD_A, 8080, SYN);
    let (v, out) = h.run("from_netdev", &vxlan(THIS_NODE, VXLAN_PORT, 777, &inner));
    assert_eq!(v, TC_ACT_REDIRECT, "straight into the pod");
    assert_eq!(out.len(), inner.len(), "the outer headers are gone");
    assert_eq!(&out[0..6], &MAC_A, "to the pod's MAC");
    assert_eq!(&out[6..12], &HOST_MAC_A, "from its gateway");
    assert_eq!(out[22], inner[22] - 1, "routed: TTL - 1");
    assert_eq!(
        (src_of(&out), dst_of(&out)),
        (src_of(&inner), dst_of(&inner))
    );
    assert_checksums(&out);
    let e = h
        .ct(key(REMOTE_POD, 40300, POD_A, 8080, 6, abi::CT_INGRESS))
        .expect("the pod's ingress CT entry");
    assert_eq!(e.src_identity, 777, "judged by the VNI's identity");
    let evs = h.events();
    let trace = evs
        .iter()
        .find(|e| e.kind == abi::EVENT_TRACE)
        .expect("a trace event");
    assert_eq!(trace.code, 0, "to-endpoint (TRACE_TO_LXC)");
    assert_eq!(trace.src_identity, 777);
    assert_eq!(
        trace.ifindex, TUNNEL_IFINDEX,
        "seen from the overlay, as when the tunnel device delivers it"
    );
    // The host of the other node is remote-node here.
    let from_host = tcp_ok(REMOTE_NODE, 40301, POD_A, 8080, SYN);
    h.run("from_netdev", &vxlan(THIS_NODE, VXLAN_PORT, 1, &from_host));
    let e = h
        .ct(key(REMOTE_NODE, 40301, POD_A, 8080, 6, abi::CT_INGRESS))
        .expect("entry");
    assert_eq!(e.src_identity, 6, "remote-node");
}

#[test]
fn ingress_policy_judges_the_identity_the_uplink_took_from_the_vni() {
    privileged!();
    let mut h = Harness::new();
    h.overlay_node();
    h.set_policy_a(
        &ingress_policy(vec![rule(777, false, Some(6), 8080, 16, false)]),
        0,
    );
    let allowed = tcp_ok(REMOTE_POD, 40310, POD_A, 8080, SYN);
    let (v, _) = h.run("from_netdev", &vxlan(THIS_NODE, VXLAN_PORT, 777, &allowed));
    assert_eq!(v, TC_ACT_REDIRECT);
    // The same packet from another identity is dropped, reported on the tunnel device.
    h.events();
    let denied = tcp_ok(REMOTE_POD, 40311, POD_A, 8080, SYN);
    let (v, _) = h.run("from_netdev", &vxlan(THIS_NODE, VXLAN_PORT, 778, &denied));
    assert_eq!(v, TC_ACT_SHOT);
    let evs = h.events();
    let dropped = evs
        .iter()
        .find(|e| e.kind == abi::EVENT_DROP)
        .expect("a drop event");
    assert_eq!(dropped.code, 133, "policy denied");
    assert_eq!(
        (dropped.src_identity, dropped.ifindex),
        (778, TUNNEL_IFINDEX)
    );
}

#[test]
fn the_uplink_leaves_anything_but_the_overlays_packets_for_local_pods_to_the_device() {
    privileged!();
    let mut h = Harness::new();
    let inner = tcp_ok(REMOTE_POD, 40320, POD_A, 8080, SYN);
    let ours = vxlan(THIS_NODE, VXLAN_PORT, 777, &inner);
    // The overlay off: nothing is taken.
    assert_eq!(h.run("from_netdev", &ours), (TC_ACT_OK, ours.clone()));
    h.overlay_node();
    let to_node = tcp_ok(REMOTE_POD, 40321, THIS_NODE, 22, SYN);
    let mut vni_zero = ours.clone();
    vni_zero[14 + 20 + 8 + 4..14 + 20 + 8 + 7].fill(0);
    for (what, pkt) in [
        ("another UDP port", vxlan(THIS_NODE, 4789, 777, &inner)),
        (
            "for the node itself",
            vxlan(THIS_NODE, VXLAN_PORT, 777, &to_node),
        ),
        (
            "to an address not the node's",
            vxlan(Ipv4Addr::new(172, 31, 0, 99), VXLAN_PORT, 777, &inner),
        ),
        ("VNI 0 (the device's program drops it)", vni_zero),
        ("not VXLAN", udp(REMOTE_NODE, 40000, THIS_NODE, VXLAN_PORT)),
    ] {
        assert_eq!(
            h.run("from_netdev", &pkt),
            (TC_ACT_OK, pkt.clone()),
            "{what}"
        );
    }
    assert!(h.events().is_empty());
    assert_eq!(h.ct_len(), 0, "nothing tracked");
}
