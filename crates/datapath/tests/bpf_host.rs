//! Packet tests of masquerading (`bpf/host.c`) on the uplink: pods' traffic to the world
//! leaves as the node's address and a port of its own; the reply gets the pod back.

mod common;

use common::*;

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

impl Harness {
    /// Masquerading on ifindex 1 (where test runs execute) as NODE, or off.
    fn set_masquerade(&mut self, on: bool) {
        let mut cfg: aya::maps::Array<&mut MapData, abi::NodeConfig> =
            aya::maps::Array::try_from(self.bpf.map_mut(abi::maps::NODE_CFG).expect("map"))
                .expect("array");
        let value = if on {
            abi::NodeConfig {
                flags: abi::NODE_F_MASQUERADE,
                masq_ipv4: NODE.octets(),
                masq_ifindex: 1,
                ..abi::NodeConfig::default()
            }
        } else {
            abi::NodeConfig::default()
        };
        cfg.set(0, value, 0).expect("node config");
    }

    fn exempt(&mut self, prefix: &str) {
        let net: ipnet::Ipv4Net = prefix.parse().expect("prefix");
        let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> =
            LpmTrie::try_from(self.bpf.map_mut(abi::maps::NOMASQ4).expect("map")).expect("lpm");
        trie.insert(
            &LpmKey::new(u32::from(net.prefix_len()), net.network().octets()),
            1,
            0,
        )
        .expect("exempt");
    }

    fn snat_len(&self) -> usize {
        let m: BpfHashMap<&MapData, CtKey4, abi::SnatEntry4> =
            BpfHashMap::try_from(self.bpf.map(abi::maps::SNAT4).expect("map")).expect("hash");
        m.keys().count()
    }
}

fn udp_ok(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = udp(src, sport, dst, dport);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 17, 0, 12]);
    pseudo.extend_from_slice(&f[34..46]);
    let c = csum(&pseudo);
    f[34 + 6..34 + 8].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn a_pods_connection_to_the_world_leaves_as_the_node_and_the_reply_comes_back() {
    privileged!();
    let mut h = Harness::new();
    h.set_masquerade(true);
    let syn = tcp_ok(POD_A, 40000, WORLD, 443, SYN);
    let (v, out) = h.run("to_netdev", &syn);
    assert_eq!(v, TC_ACT_OK);
    let (src, port) = src_of(&out);
    assert_eq!(src, NODE);
    assert!(
        port >= abi::SNAT_PORT_MIN,
        "port {port} from the masquerade range"
    );
    assert_eq!(dst_of(&out), (WORLD, 443), "the destination is untouched");
    assert_checksums(&out);
    assert_eq!(h.snat_len(), 2, "both ways recorded");
    // Every packet of the flow keeps its port.
    let (_, again) = h.run("to_netdev", &tcp_ok(POD_A, 40000, WORLD, 443, ACK));
    assert_eq!(src_of(&again), (NODE, port));
    // Another flow of the pod towards the same destination gets another port.
    let (_, other) = h.run("to_netdev", &tcp_ok(POD_A, 40001, WORLD, 443, SYN));
    assert_ne!(src_of(&other).1, port);
    // The reply is translated back to the pod before routing.
    let (v, back) = h.run("from_netdev", &tcp_ok(WORLD, 443, NODE, port, SYN | ACK));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(dst_of(&back), (POD_A, 40000));
    assert_eq!(src_of(&back), (WORLD, 443));
    assert_checksums(&back);
    // UDP too.
    let (_, q) = h.run("to_netdev", &udp_ok(POD_A, 5353, WORLD, 53));
    let (src, uport) = src_of(&q);
    assert_eq!(src, NODE);
    assert_checksums(&q);
    let (_, a) = h.run("from_netdev", &udp_ok(WORLD, 53, NODE, uport));
    assert_eq!(dst_of(&a), (POD_A, 5353));
    assert_checksums(&a);
}

/// An ICMP echo (request or reply) with a valid checksum.
fn echo_ok(src: Ipv4Addr, dst: Ipv4Addr, reply: bool, id: u16) -> Vec<u8> {
    let mut f = icmp_echo(src, dst, reply, id);
    let c = csum(&f[34..]);
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn a_pods_ping_to_the_world_leaves_as_the_node_with_an_id_of_its_own() {
    privileged!();
    let mut h = Harness::new();
    h.set_masquerade(true);
    let (v, out) = h.run("to_netdev", &echo_ok(POD_A, WORLD, false, 7));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(src_of(&out).0, NODE);
    let id = u16::from_be_bytes([out[38], out[39]]);
    assert!(
        id >= abi::SNAT_PORT_MIN,
        "id {id} from the masquerade range"
    );
    assert_checksums(&out);
    let (v, back) = h.run("from_netdev", &echo_ok(WORLD, NODE, true, id));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(dst_of(&back).0, POD_A);
    assert_eq!(
        u16::from_be_bytes([back[38], back[39]]),
        7,
        "the pod's id back"
    );
    assert_checksums(&back);
}

#[test]
fn the_cluster_exempt_prefixes_and_the_nodes_own_traffic_are_left_alone() {
    privileged!();
    let mut h = Harness::new();
    h.set_masquerade(true);
    h.set_ipcache(&[IpcacheEntry {
        prefix: "10.200.1.0/24".parse().expect("prefix"),
        identity: 777,
        tunnel_endpoint: None,
    }]);
    h.exempt("203.0.113.0/24");
    for pkt in [
        // A pod of another node (the ipcache knows it).
        tcp_ok(POD_A, 40000, Ipv4Addr::new(10, 200, 1, 5), 80, SYN),
        // An exempt prefix.
        tcp_ok(POD_A, 40000, Ipv4Addr::new(203, 0, 113, 9), 80, SYN),
        // The node's own connection.
        tcp_ok(NODE, 40000, WORLD, 80, SYN),
        // An echo reply leaving the pod answers the world's ping: not translated.
        icmp_echo(POD_A, WORLD, true, 9),
    ] {
        assert_eq!(h.run("to_netdev", &pkt), (TC_ACT_OK, pkt.clone()));
    }
    // The world opened a connection to the pod (the pod's veth tracked it): its replies leave
    // from the pod's own address.
    assert_eq!(
        h.run("to_container", &tcp_ok(WORLD, 33000, POD_A, 8080, SYN))
            .0,
        TC_ACT_OK
    );
    let answer = tcp_ok(POD_A, 8080, WORLD, 33000, SYN | ACK);
    assert_eq!(h.run("to_netdev", &answer), (TC_ACT_OK, answer.clone()));
    // A reply to the node on a port no pod flow holds: the node's own.
    let own = tcp_ok(WORLD, 80, NODE, 61001, SYN | ACK);
    assert_eq!(h.run("from_netdev", &own), (TC_ACT_OK, own.clone()));
    assert_eq!(h.snat_len(), 0);
    // Off: nothing is translated.
    h.set_masquerade(false);
    let syn = tcp_ok(POD_A, 40000, WORLD, 443, SYN);
    assert_eq!(h.run("to_netdev", &syn), (TC_ACT_OK, syn.clone()));
}

#[test]
fn only_ports_masquerading_lends_are_translated_back() {
    privileged!();
    let mut h = Harness::new();
    h.set_masquerade(true);
    // A reverse entry on a port masquerading never lends (as if planted): the node's own
    // traffic there, the overlay's VXLAN packets among it, is not even looked up.
    let mut snat: BpfHashMap<&mut MapData, CtKey4, abi::SnatEntry4> =
        BpfHashMap::try_from(h.bpf.map_mut(abi::maps::SNAT4).expect("map")).expect("hash");
    let planted = abi::SnatEntry4 {
        to_addr: POD_A.octets(),
        to_port: 40000u16.to_be_bytes(),
        pad: 0,
        expires: now_secs() + 600,
    };
    for port in [8472u16, abi::SNAT_PORT_MIN - 1, abi::SNAT_PORT_MIN] {
        snat.insert(
            key(WORLD, 443, NODE, port, 17, abi::SNAT_INGRESS),
            planted,
            0,
        )
        .expect("insert");
    }
    for port in [8472u16, abi::SNAT_PORT_MIN - 1] {
        let pkt = udp_ok(WORLD, 443, NODE, port);
        assert_eq!(
            h.run("from_netdev", &pkt),
            (TC_ACT_OK, pkt.clone()),
            "{port}"
        );
    }
    let (_, back) = h.run("from_netdev", &udp_ok(WORLD, 443, NODE, abi::SNAT_PORT_MIN));
    assert_eq!(
        dst_of(&back),
        (POD_A, 40000),
        "the first port of the range is lent"
    );
}

/// The node's own packet to a pod of another node goes through the tunnel as HOST (whose
/// VNI the receiving node judges as remote-node); the VXLAN device's own output, pods'
/// packets and destinations on no other node are left to routing.
#[test]
fn the_nodes_packet_to_a_remote_pod_goes_through_the_tunnel_as_the_host() {
    privileged!();
    let mut h = Harness::new();
    h.remote_pod();
    h.set_ipcache(&[IpcacheEntry {
        prefix: ipnet::Ipv4Net::from(REMOTE_NODE),
        identity: 6,
        tunnel_endpoint: None,
    }]);
    // Off until the overlay is: the underlay routes it as before.
    let syn = tcp_ok(NODE, 40000, REMOTE_POD, 8080, SYN);
    assert_eq!(h.run("to_netdev", &syn), (TC_ACT_OK, syn.clone()));
    h.set_tunnel_ifindex(2);
    let (v, out, mark) = run_ctx(&h, "to_netdev", &syn, 0);
    assert_eq!(v, TC_ACT_REDIRECT, "handed to the VXLAN device");
    assert_eq!(out, syn, "the inner packet is untouched");
    assert_eq!(mark, abi::MARK_MAGIC_OVERLAY, "marked as the overlay's");
    let evs = h.events();
    let trace = evs
        .iter()
        .find(|e| e.kind == abi::EVENT_TRACE)
        .expect("a trace event");
    assert_eq!(trace.code, abi::TRACE_TO_OVERLAY);
    assert_eq!(trace.src_identity, 1, "the host's identity");
    assert_eq!(
        trace.dst_identity, 777,
        "the remote pod's, from the ipcache"
    );
    // An address of that node's pod CIDR not yet known by identity travels too.
    let other = tcp_ok(NODE, 40001, Ipv4Addr::new(10, 200, 1, 21), 80, SYN);
    assert_eq!(h.run("to_netdev", &other).0, TC_ACT_REDIRECT);
    for pkt in [
        // The VXLAN device's own output, to the remote node's address: never again.
        udp_ok(NODE, 40000, REMOTE_NODE, 8472),
        // The remote node itself: remote-node, with no tunnel endpoint.
        tcp_ok(NODE, 40002, REMOTE_NODE, 22, SYN),
        // A pod's packet: lxc.c's to encapsulate, not the host's.
        tcp_ok(POD_A, 40003, REMOTE_POD, 8080, SYN),
        // The world.
        tcp_ok(NODE, 40004, WORLD, 443, SYN),
    ] {
        assert_eq!(h.run("to_netdev", &pkt), (TC_ACT_OK, pkt.clone()));
    }
}

/// What the overlay encapsulated comes back through the uplink's egress as the node's own
/// tunnel packet, with the overlay mark: to_netdev lets it by as it is, neither masquerading
/// it nor tunnelling it again, whatever it looks like.
#[test]
fn a_packet_the_overlay_encapsulated_passes_the_uplink_untouched() {
    privileged!();
    let mut h = Harness::new();
    h.set_masquerade(true);
    h.remote_pod();
    let to_world = tcp_ok(POD_A, 40010, WORLD, 443, SYN);
    let (v, out, mark) = run_ctx(&h, "to_netdev", &to_world, abi::MARK_MAGIC_OVERLAY);
    assert_eq!((v, &out), (TC_ACT_OK, &to_world), "not masqueraded");
    assert_eq!(mark, abi::MARK_MAGIC_OVERLAY);
    assert_eq!(h.snat_len(), 0, "no port lent");
    h.set_tunnel_ifindex(2);
    let to_remote = tcp_ok(NODE, 40011, REMOTE_POD, 8080, SYN);
    let (v, out, _) = run_ctx(&h, "to_netdev", &to_remote, abi::MARK_MAGIC_OVERLAY);
    assert_eq!((v, &out), (TC_ACT_OK, &to_remote), "not tunnelled again");
    assert!(h.events().is_empty(), "nothing to report");
    // Without the mark the same packets are the uplink's to handle.
    assert_eq!(run_ctx(&h, "to_netdev", &to_remote, 0).0, TC_ACT_REDIRECT);
}
