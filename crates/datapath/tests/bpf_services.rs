//! Packet tests of Service load balancing on the per-packet path (`bpf/lxc.c`) and of the
//! socket-LB programs (`bpf/sock.c`) loading.

mod common;

use common::*;

#[test]
fn first_packet_to_a_vip_is_translated_and_the_choice_is_remembered() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&BACKENDS, None, L4Proto::Tcp));
    let (v, out) = h.run("from_container", &tcp_ok(POD_A, 41000, VIP, 80, SYN));
    let (backend, port) = dst_of(&out);
    assert!(
        BACKENDS.contains(&backend) && port == 8080,
        "translated to a backend: {backend}:{port}"
    );
    assert_eq!(
        v,
        if backend == POD_B {
            TC_ACT_REDIRECT
        } else {
            TC_ACT_OK
        },
        "local backends are redirected"
    );
    assert_checksums(&out);
    let svc_entry = h
        .ct(key(POD_A, 41000, VIP, 80, 6, abi::CT_SERVICE))
        .expect("service CT entry");
    assert_eq!(svc_entry.rev_nat_index, 5);
    let ct = h
        .ct(key(POD_A, 41000, backend, 8080, 6, abi::CT_EGRESS))
        .expect("translated CT entry");
    assert_eq!(ct.rev_nat_index, 5, "replies will be translated back");
    for _ in 0..20 {
        let (_, again) = h.run("from_container", &tcp_ok(POD_A, 41000, VIP, 80, ACK));
        assert_eq!(
            dst_of(&again),
            (backend, 8080),
            "every packet of the connection goes to the same backend"
        );
    }
}

#[test]
fn new_connections_spread_over_all_backends() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&BACKENDS, None, L4Proto::Tcp));
    let mut seen = std::collections::HashSet::new();
    for sport in 42000..42060 {
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, sport, VIP, 80, SYN));
        seen.insert(dst_of(&out).0);
    }
    assert_eq!(seen.len(), 3, "60 connections reached {seen:?}");
}

#[test]
fn replies_from_the_backend_are_translated_back_to_the_vip() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&BACKENDS[1..2], None, L4Proto::Tcp));
    let (_, out) = h.run("from_container", &tcp_ok(POD_A, 43000, VIP, 80, SYN));
    assert_eq!(dst_of(&out), (BACKENDS[1], 8080));
    let (v, reply) = h.run(
        "to_container",
        &tcp_ok(BACKENDS[1], 8080, POD_A, 43000, SYN | ACK),
    );
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(src_of(&reply), (VIP, 80), "the pod sees the VIP answer");
    assert_checksums(&reply);
}

/// A tuple already tracked untranslated (e.g. a socket-LB flow, or a direct connection to the
/// backend that used the same source port) and then reused towards the VIP: the reply must still
/// be translated back, so the entry takes the frontend of the packet that reuses it.
#[test]
fn a_reused_tuple_takes_the_frontend_of_the_vip_it_now_goes_to() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&BACKENDS[1..2], None, L4Proto::Tcp));
    let (_, direct) = h.run(
        "from_container",
        &tcp_ok(POD_A, 43100, BACKENDS[1], 8080, SYN),
    );
    assert_eq!(
        dst_of(&direct),
        (BACKENDS[1], 8080),
        "not a Service: untouched"
    );
    let (_, out) = h.run("from_container", &tcp_ok(POD_A, 43100, VIP, 80, ACK));
    assert_eq!(dst_of(&out), (BACKENDS[1], 8080));
    let (v, reply) = h.run(
        "to_container",
        &tcp_ok(BACKENDS[1], 8080, POD_A, 43100, ACK),
    );
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(src_of(&reply), (VIP, 80), "the pod sees the VIP answer");
}

#[test]
fn events_of_a_translated_connection_carry_its_rev_nat_index_both_ways() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&BACKENDS[1..2], None, L4Proto::Tcp));
    h.events();
    let (_, out) = h.run("from_container", &tcp_ok(POD_A, 47000, VIP, 80, SYN));
    assert_eq!(dst_of(&out), (BACKENDS[1], 8080));
    h.run(
        "to_container",
        &tcp_ok(BACKENDS[1], 8080, POD_A, 47000, SYN | ACK),
    );
    h.run("from_container", &tcp_ok(POD_A, 47000, VIP, 80, FIN | ACK));
    let evs = h.events();
    let traces: Vec<(u8, u8, u16)> = evs
        .iter()
        .filter(|e| e.kind == abi::EVENT_TRACE)
        .map(|e| (e.code, e.ct_state, e.rev_nat))
        .collect();
    assert_eq!(
        traces,
        vec![
            (3, abi::ct_result::NEW, 5),
            (0, abi::ct_result::REPLY, 5),
            (3, abi::ct_result::ESTABLISHED, 5),
        ],
        "the packet shows the backend, the event names the frontend"
    );

    // A connection straight to a pod address names no Service.
    h.run(
        "from_container",
        &tcp_ok(POD_A, 47001, BACKENDS[1], 8080, SYN),
    );
    let evs = h.events();
    assert!(!evs.is_empty());
    assert!(evs.iter().all(|e| e.rev_nat == 0), "{evs:?}");
}

#[test]
fn a_service_without_backends_answers_at_once_and_reports_drop_158() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&[], None, L4Proto::Tcp));
    let syn = tcp_ok(POD_A, 44000, VIP, 80, SYN);
    let (v, rst) = h.run("from_container", &syn);
    assert_eq!(v, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!(rst.len(), 54);
    assert_eq!((&rst[0..6], &rst[6..12]), (&MAC_A[..], &HOST_MAC_A[..]));
    assert_eq!(src_of(&rst), (VIP, 80));
    assert_eq!(dst_of(&rst), (POD_A, 44000));
    assert_eq!(rst[47] & (RST | ACK), RST | ACK);
    assert_eq!(
        u32::from_be_bytes([rst[42], rst[43], rst[44], rst[45]]),
        1001,
        "acks the SYN"
    );
    assert_checksums(&rst);
    assert_eq!(h.counter(abi::METRIC_EGRESS, 158), 1);
    assert!(h
        .events()
        .iter()
        .any(|e| e.kind == abi::EVENT_DROP && e.code == 158));

    h.set_lb(&service(&[], None, L4Proto::Udp));
    let (v, icmp) = h.run("from_container", &udp(POD_A, 5000, VIP, 80));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(icmp.len(), 14 + 56);
    assert_eq!(
        (icmp[23], icmp[34], icmp[35]),
        (1, 3, 3),
        "ICMP port unreachable"
    );
    assert_eq!(src_of(&icmp).0, VIP);
    assert_eq!(
        &icmp[42..62],
        &udp(POD_A, 5000, VIP, 80)[14..34],
        "quotes the offending header"
    );
    assert_checksums(&icmp);
    assert_eq!(h.counter(abi::METRIC_EGRESS, 158), 2);
}

#[test]
fn client_ip_affinity_sends_every_connection_of_a_client_to_one_backend() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&BACKENDS, Some(60), L4Proto::Tcp));
    let (_, first) = h.run("from_container", &tcp_ok(POD_A, 45000, VIP, 80, SYN));
    let chosen = dst_of(&first).0;
    for sport in 45001..45030 {
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, sport, VIP, 80, SYN));
        assert_eq!(dst_of(&out).0, chosen, "connection from port {sport}");
    }
}

#[test]
fn removing_a_backend_keeps_the_connections_of_the_others() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&BACKENDS, None, L4Proto::Tcp));
    let mut conns = Vec::new();
    for sport in 46000..46030 {
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, sport, VIP, 80, SYN));
        conns.push((sport, dst_of(&out).0));
    }
    // Backend 3 leaves: slot 0 says 2 backends, slot 3 disappears, backend 3 is deleted.
    let mut two = service(&BACKENDS[..2], None, L4Proto::Tcp);
    two.backends.truncate(2);
    h.set_lb(&two);
    h.remove_lb_slot(VIP, 80, 3);
    let mut be: BpfHashMap<&mut MapData, u32, Lb4Backend> =
        BpfHashMap::try_from(h.bpf.map_mut(abi::maps::LB4_BE).expect("map")).expect("hash");
    be.remove(&3).expect("remove backend 3");
    for (sport, backend) in conns {
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, sport, VIP, 80, ACK));
        if backend == BACKENDS[2] {
            assert_ne!(
                dst_of(&out).0,
                BACKENDS[2],
                "the removed backend gets nothing"
            );
        } else {
            assert_eq!(dst_of(&out).0, backend, "port {sport} stays on its backend");
        }
    }
}

#[test]
fn socket_lb_programs_load_through_the_verifier() {
    privileged!();
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique_name("cils"));
    let loaded = ciliate_datapath::linux::load_socket_programs(&pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    let bpf = loaded.expect("sock.o loads");
    for name in [
        "sock4_connect",
        "sock4_sendmsg",
        "sock4_recvmsg",
        "sock4_getpeername",
    ] {
        assert!(bpf.program(name).is_some(), "{name}");
    }
}

const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

/// Two ClientIP-affinity frontends, VIP:80 over backend ids `first` and VIP2:80 over
/// `second`, sharing the backends 1 (BACKENDS[0]) and 2 (BACKENDS[1]).
fn two_services(first: &[u32], second: &[u32]) -> LbState {
    let mut state = service(&BACKENDS[..2], Some(600), L4Proto::Tcp);
    state.frontends[0].backends = first.to_vec();
    let mut other = state.frontends[0].clone();
    other.addr = VIP2;
    other.rev_nat_index = 6;
    other.backends = second.to_vec();
    other.service.name = "other".into();
    state.frontends.push(other);
    state
}

#[test]
fn affinity_follows_a_backend_only_while_it_is_in_the_frontend() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&two_services(&[1], &[1]));
    let (_, out) = h.run("from_container", &tcp_ok(POD_A, 46000, VIP, 80, SYN));
    assert_eq!(dst_of(&out).0, BACKENDS[0]);
    // The backend moves to another slot of the frontend: still affine.
    h.set_lb(&two_services(&[2, 1], &[1]));
    for sport in 46001..46010 {
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, sport, VIP, 80, SYN));
        assert_eq!(dst_of(&out).0, BACKENDS[0], "from port {sport}");
    }
    // It leaves the frontend (it is still a backend of the other one, so its backend entry
    // stays and is active): new connections go to the frontend's own backend, and the
    // affinity is rewritten to it.
    h.remove_lb_slot(VIP, 80, 2);
    h.set_lb(&two_services(&[2], &[1]));
    for sport in 46010..46020 {
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, sport, VIP, 80, SYN));
        assert_eq!(dst_of(&out).0, BACKENDS[1], "from port {sport}");
    }
    // The other frontend still reaches it.
    let (_, out) = h.run("from_container", &tcp_ok(POD_A, 46100, VIP2, 80, SYN));
    assert_eq!(dst_of(&out).0, BACKENDS[0]);
    // Coming back does not move the client: its affinity is now backend 2.
    h.set_lb(&two_services(&[1, 2], &[1]));
    for sport in 46020..46030 {
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, sport, VIP, 80, SYN));
        assert_eq!(dst_of(&out).0, BACKENDS[1], "from port {sport}");
    }
}

/// The backend the affinity map holds for rev-NAT index 5 (VIP:80), if any.
fn affine_backend(h: &Harness) -> Option<u32> {
    let m: BpfHashMap<&MapData, Lb4AffinityKey, Lb4AffinityVal> =
        BpfHashMap::try_from(h.bpf.map(abi::maps::LB4_AFF).expect("map")).expect("hash");
    let found: Vec<u32> = m
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.rev_nat_index == 5)
        .map(|(_, v)| v.backend_id)
        .collect();
    assert!(found.len() <= 1, "one client, one entry: {found:?}");
    found.first().copied()
}

/// A cgroup with the socket-LB programs attached, removed on drop.
struct SockLb {
    cgroup: PathBuf,
    _bpf: Ebpf,
}

impl Drop for SockLb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

#[test]
fn socket_lb_affinity_follows_a_backend_only_while_it_is_in_the_frontend() {
    privileged!();
    let Some(cgroup_root) = ciliate_datapath::linux::cgroup2_mount() else {
        panic!("cgroup v2 is not mounted");
    };
    let mut h = Harness::new();
    let cgroup = cgroup_root.join(unique_name("cilaf"));
    let bpf = ciliate_datapath::linux::attach_socket_lb(&h.pin_dir, &cgroup).expect("attach");
    let sock = SockLb { cgroup, _bpf: bpf };
    let ns = ciliate_testutil::TestNetns::new("cilaf");
    for b in &BACKENDS[..2] {
        ns.exec("ip", &["addr", "add", &format!("{b}/32"), "dev", "lo"]);
    }
    // connect() from a process of the cgroup; nothing listens, the backend refuses: only the
    // socket program's choice matters here.
    let connect = || {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} bash -c 'exec 3<>/dev/tcp/{VIP}/80' 2>/dev/null",
            sock.cgroup.display(),
            ns.path()
        );
        let _ = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .expect("sh");
    };
    h.set_lb(&two_services(&[1], &[1]));
    connect();
    assert_eq!(affine_backend(&h), Some(1));
    // Backend 1 leaves VIP:80 but stays a (live) backend of VIP2:80.
    h.set_lb(&two_services(&[2], &[1]));
    connect();
    assert_eq!(affine_backend(&h), Some(2), "a new pick, written back");
    connect();
    assert_eq!(affine_backend(&h), Some(2));
}

const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

#[test]
fn a_pod_reaching_itself_through_a_vip_is_hairpinned_from_169_254_42_1() {
    privileged!();
    let mut h = Harness::new();
    h.set_lb(&service(&[POD_A], None, L4Proto::Tcp));
    let (v, out) = h.run("from_container", &tcp_ok(POD_A, 47000, VIP, 80, SYN));
    assert_eq!(v, TC_ACT_REDIRECT, "back out the pod's own veth");
    assert_eq!(&out[0..12], &[MAC_A, HOST_MAC_A].concat()[..]);
    assert_eq!(src_of(&out), (HAIRPIN, 47000), "from the hairpin address");
    assert_eq!(
        dst_of(&out),
        (POD_A, 8080),
        "to the backend: the pod itself"
    );
    assert_checksums(&out);
    // Conntrack holds the pod's real tuple.
    assert!(h
        .ct(key(POD_A, 47000, POD_A, 8080, 6, abi::CT_EGRESS))
        .is_some());
    // The veth's egress lets it in as it is, even under a default-deny ingress policy.
    h.set_policy_a(&ingress_policy(vec![]), 0);
    assert_eq!(
        h.run("to_container", &out).0,
        TC_ACT_SHOT,
        "unmarked: judged"
    );
    assert_eq!(
        h.run_marked("to_container", &out, abi::MARK_HAIRPIN),
        (TC_ACT_OK, out.clone())
    );
    // The pod answers the hairpin address: it goes back in as the reply, from the VIP.
    let (v, reply) = h.run(
        "from_container",
        &tcp_ok(POD_A, 8080, HAIRPIN, 47000, SYN | ACK),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(src_of(&reply), (VIP, 80));
    assert_eq!(dst_of(&reply), (POD_A, 47000));
    assert_checksums(&reply);
    let e = h
        .ct(key(POD_A, 47000, POD_A, 8080, 6, abi::CT_EGRESS))
        .expect("entry");
    assert_eq!((e.tx_packets, e.rx_packets), (1, 1));
    // The next packet of the connection takes the same way.
    let (v, out) = h.run("from_container", &tcp_ok(POD_A, 47000, VIP, 80, ACK));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(src_of(&out), (HAIRPIN, 47000));
    h.events();
    // Something to the hairpin address that answers no connection: dropped with a reason.
    let (v, _) = h.run("from_container", &tcp_ok(POD_A, 8080, HAIRPIN, 47999, ACK));
    assert_eq!(v, TC_ACT_SHOT);
    assert!(h
        .events()
        .iter()
        .any(|e| e.kind == abi::EVENT_DROP && e.code == abi::DROP_CT_UNKNOWN));
}

#[test]
fn a_pods_address_is_never_looked_up_as_a_service_frontend() {
    privileged!();
    let mut h = Harness::new();
    // A frontend on a local pod's address and on a remote pod's (the tunnel reaches it): pod
    // addresses come from the pod CIDRs, frontends never do, so packets to pods skip the
    // Service lookup and go where they are addressed.
    h.set_tunnel_ifindex(1);
    h.remote_pod();
    for frontend in [POD_B, REMOTE_POD] {
        let mut lb = service(&BACKENDS[1..2], None, L4Proto::Tcp);
        lb.frontends[0].addr = frontend;
        h.set_lb(&lb);
        let (_, out) = h.run("from_container", &tcp_ok(POD_A, 47100, frontend, 80, SYN));
        assert_eq!(dst_of(&out), (frontend, 80), "{frontend}");
    }
    // A VIP still is one.
    h.set_lb(&service(&BACKENDS[1..2], None, L4Proto::Tcp));
    let (_, out) = h.run("from_container", &tcp_ok(POD_A, 47101, VIP, 80, SYN));
    assert_eq!(dst_of(&out), (BACKENDS[1], 8080));
}

#[test]
fn a_local_backends_connection_is_traced_from_endpoint_naming_the_service() {
    privileged!();
    let mut h = Harness::new();
    // Monitor aggregation "medium" (the default) leaves a same-node packet to the
    // destination's to-endpoint trace, but that side cannot name the Service: the sender's
    // from-endpoint trace does, for packets addressed to one.
    h.set_lb(&service(&BACKENDS[..1], None, L4Proto::Tcp));
    h.events();
    let (_, out) = h.run("from_container", &tcp_ok(POD_A, 47200, VIP, 80, SYN));
    assert_eq!(dst_of(&out), (POD_B, 8080));
    h.run("from_container", &tcp_ok(POD_A, 47201, POD_B, 8080, SYN));
    let traces: Vec<(u8, u16)> = h
        .events()
        .iter()
        .filter(|e| e.kind == abi::EVENT_TRACE)
        .map(|e| (e.code, e.rev_nat))
        .collect();
    assert_eq!(
        traces,
        vec![(5, 5)],
        "from-endpoint, Service 5; none for the direct SYN"
    );
}
