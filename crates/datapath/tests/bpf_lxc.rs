//! Packet-level tests of `bpf/lxc.c` through BPF_PROG_TEST_RUN: each test loads the programs
//! with maps pinned in its own bpffs directory, writes endpoint entries, runs packets
//! through `from_container` / `to_container` and checks the verdict, the rewritten bytes,
//! the conntrack table, the counters and the events.
//!
//! BPF_PROG_TEST_RUN runs a tc program on the loopback device (ifindex 1) of the test's
//! network namespace, so the endpoint under test is registered at ifindex 1.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::Ebpf;
use ciliate_datapath::abi::{
    self, CtEntry4, CtKey4, EndpointInfo, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service,
    MetricsValue, RawEvent,
};
use ciliate_datapath::abi::{IpcacheValue, PolicyKeyData, PolicyValue};
use ciliate_datapath::policy_map;
use ciliate_model::bpf_policy::{EndpointPolicy, IpcacheEntry, MatchKind, PolicyMapEntry};
use ciliate_model::lb::{
    BackendState, FrontendKind, L4Proto, LbBackend, LbFrontend, LbState, ServiceRef,
};
use ciliate_testutil::{privileged, unique_name};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_UNSPEC: u32 = u32::MAX;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
const WORLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const MAC_A: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xa1];
const HOST_MAC_A: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xa2];
const MAC_B: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xb1];
const HOST_MAC_B: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xb2];
const B_IFINDEX: u32 = 4242;

/// The loaded programs with their own pinned maps, removed on drop.
struct Harness {
    bpf: Ebpf,
    pin_dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

impl Harness {
    /// Loads lxc.o; endpoint A sits at ifindex 1 (where test runs execute), B at B_IFINDEX.
    fn new() -> Self {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique_name("cilt"));
        let bpf = ciliate_datapath::linux::load_endpoint_programs(&pin_dir).expect("load lxc.o");
        let mut h = Self { bpf, pin_dir };
        h.add_endpoint(1, 11, 300, POD_A, MAC_A, HOST_MAC_A);
        h.add_endpoint(B_IFINDEX, 12, 301, POD_B, MAC_B, HOST_MAC_B);
        h
    }

    fn add_endpoint(
        &mut self,
        ifindex: u32,
        ep_id: u16,
        identity: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
        host_mac: [u8; 6],
    ) {
        let info = EndpointInfo {
            ifindex,
            ep_id,
            flags: 0,
            sec_identity: identity,
            ipv4: ip.octets(),
            mac,
            host_mac,
        };
        let mut by_if: BpfHashMap<&mut MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC_IFX).expect("map")).expect("hash");
        by_if.insert(ifindex, info, 0).expect("insert");
        let mut by_ip: BpfHashMap<&mut MapData, [u8; 4], EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC4).expect("map")).expect("hash");
        by_ip.insert(ip.octets(), info, 0).expect("insert");
    }

    /// Writes load-balancing state the way the agent's sync does.
    fn set_lb(&mut self, state: &LbState) {
        let mut svc: BpfHashMap<&mut MapData, Lb4Key, Lb4Service> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LB4_SVC).expect("map")).expect("hash");
        let e = ciliate_datapath::lb::entries(state);
        for (k, v) in &e.services {
            svc.insert(*k, *v, 0).expect("svc");
        }
        let mut be: BpfHashMap<&mut MapData, u32, Lb4Backend> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LB4_BE).expect("map")).expect("hash");
        for (k, v) in &e.backends {
            be.insert(*k, *v, 0).expect("be");
        }
        let mut rn: BpfHashMap<&mut MapData, u16, Lb4ReverseNat> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LB4_RNAT).expect("map"))
                .expect("hash");
        for (k, v) in &e.rev_nat {
            rn.insert(*k, *v, 0).expect("rnat");
        }
    }

    fn remove_lb_slot(&mut self, vip: Ipv4Addr, port: u16, slot: u16) {
        let mut svc: BpfHashMap<&mut MapData, Lb4Key, Lb4Service> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LB4_SVC).expect("map")).expect("hash");
        let key = Lb4Key {
            address: vip.octets(),
            dport: port.to_be_bytes(),
            backend_slot: slot,
            proto: 6,
            ..Lb4Key::default()
        };
        svc.remove(&key).expect("remove slot");
    }

    /// Installs `policy` for endpoint A (ifindex 1) through the real datapath code path:
    /// records under generation `version`, then the endpoint's flags.
    fn set_policy_a(&mut self, policy: &EndpointPolicy, version: u8) {
        let mut trie: LpmTrie<&mut MapData, PolicyKeyData, PolicyValue> =
            LpmTrie::try_from(self.bpf.map_mut(abi::maps::POLICY).expect("map")).expect("lpm");
        for e in &policy.entries {
            let (prefix, data) = policy_map::policy_key(11, version, e);
            trie.insert(&LpmKey::new(prefix, data), policy_map::policy_value(e), 0)
                .expect("policy entry");
        }
        let mut by_if: BpfHashMap<&mut MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC_IFX).expect("map")).expect("hash");
        let mut info = by_if.get(&1, 0).expect("endpoint A");
        info.flags = 0;
        if policy.ingress_enforced {
            info.flags |= abi::EP_F_INGRESS_ENFORCED;
        }
        if policy.egress_enforced {
            info.flags |= abi::EP_F_EGRESS_ENFORCED;
        }
        if version == 1 {
            info.flags |= abi::EP_F_POLICY_V1;
        }
        by_if.insert(1, info, 0).expect("flags");
    }

    fn set_ipcache(&mut self, entries: &[IpcacheEntry]) {
        let mut trie: LpmTrie<&mut MapData, [u8; 4], IpcacheValue> =
            LpmTrie::try_from(self.bpf.map_mut(abi::maps::IPCACHE4).expect("map")).expect("lpm");
        for e in entries {
            let (p, a, v) = policy_map::ipcache_record(e);
            trie.insert(&LpmKey::new(p, a), v, 0)
                .expect("ipcache entry");
        }
    }

    fn remove_self(&mut self) {
        let mut by_if: BpfHashMap<&mut MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC_IFX).expect("map")).expect("hash");
        by_if.remove(&1).expect("remove");
    }

    /// Runs `prog` on `pkt`; returns the verdict and the packet as the program left it.
    fn run(&self, prog: &str, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(prog, pkt)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", pkt.len()))
    }

    fn try_run(
        &self,
        prog: &str,
        pkt: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let p: &SchedClassifier = self
            .bpf
            .program(prog)
            .expect("program")
            .try_into()
            .expect("classifier");
        let mut out = vec![0u8; pkt.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(pkt);
        opts.data_out = Some(&mut out);
        let res = p.test_run(opts)?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    fn ct(&self, key: CtKey4) -> Option<CtEntry4> {
        let m: BpfHashMap<&MapData, CtKey4, CtEntry4> =
            BpfHashMap::try_from(self.bpf.map(abi::maps::CT4).expect("map")).expect("hash");
        m.get(&key, 0).ok()
    }

    fn ct_len(&self) -> usize {
        let m: BpfHashMap<&MapData, CtKey4, CtEntry4> =
            BpfHashMap::try_from(self.bpf.map(abi::maps::CT4).expect("map")).expect("hash");
        m.keys().count()
    }

    fn counter(&self, dir: u32, reason: u32) -> u64 {
        let m: PerCpuArray<&MapData, MetricsValue> =
            PerCpuArray::try_from(self.bpf.map(abi::maps::METRICS).expect("map")).expect("array");
        m.get(&(dir * 256 + reason), 0)
            .expect("slot")
            .iter()
            .map(|v| v.packets)
            .sum()
    }

    fn events(&mut self) -> Vec<RawEvent> {
        let mut ring =
            RingBuf::try_from(self.bpf.map_mut(abi::maps::EVENTS).expect("map")).expect("ringbuf");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(RawEvent::from_bytes(&item).expect("whole event"));
        }
        out
    }
}

fn now_secs() -> u64 {
    ciliate_datapath::events::monotonic_now().as_secs()
}

// ---- packet building ----

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = eth(HOST_MAC_A, MAC_A, 0x0800);
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(l4);
    p
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    ipv4(src, dst, 6, &t)
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 8 + 4];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, reply: bool, id: u16) -> Vec<u8> {
    let mut i = vec![if reply { 0 } else { 8 }, 0, 0, 0, 0, 0, 0, 1];
    i[4..6].copy_from_slice(&id.to_be_bytes());
    ipv4(src, dst, 1, &i)
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

fn key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8, dir: u8) -> CtKey4 {
    CtKey4 {
        saddr: src.octets(),
        daddr: dst.octets(),
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto,
        dir,
        pad: 0,
    }
}

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

// ---- services ----

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKENDS: [Ipv4Addr; 3] = [
    POD_B,
    Ipv4Addr::new(10, 200, 1, 2),
    Ipv4Addr::new(10, 200, 1, 3),
];

fn service(backends: &[Ipv4Addr], affinity: Option<u32>, proto: L4Proto) -> LbState {
    LbState {
        frontends: vec![LbFrontend {
            addr: VIP,
            port: 80,
            proto,
            kind: FrontendKind::ClusterIp,
            rev_nat_index: 5,
            backends: (1..=backends.len() as u32).collect(),
            affinity_timeout: affinity,
            service: ServiceRef {
                namespace: "default".into(),
                name: "web".into(),
                port_name: String::new(),
            },
        }],
        backends: backends
            .iter()
            .enumerate()
            .map(|(i, ip)| LbBackend {
                id: i as u32 + 1,
                addr: *ip,
                port: 8080,
                proto,
                state: BackendState::Active,
            })
            .collect(),
    }
}

/// Destination address and port of an IPv4 TCP/UDP frame.
fn dst_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]),
        u16::from_be_bytes([frame[36], frame[37]]),
    )
}

fn src_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]),
        u16::from_be_bytes([frame[34], frame[35]]),
    )
}

/// Checks the IPv4 header checksum and the L4 checksum over its pseudo-header.
fn assert_checksums(frame: &[u8]) {
    assert_eq!(csum(&frame[14..34]), 0, "IPv4 header checksum");
    let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let l4 = &frame[34..14 + total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[26..34]);
    pseudo.extend_from_slice(&[0, frame[23]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    if frame[23] == 1 {
        assert_eq!(csum(l4), 0, "ICMP checksum");
    } else {
        assert_eq!(csum(&pseudo), 0, "L4 checksum");
    }
}

/// A TCP segment with a valid checksum (the DNAT fix-ups are incremental, so they need one).
fn tcp_ok(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = tcp(src, sport, dst, dport, flags);
    f[34 + 4..34 + 8].copy_from_slice(&1000u32.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&f[34..54]);
    let c = csum(&pseudo);
    f[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

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

// ---- policy ----

const ID_B: u32 = 301;
const ID_CIDR: u32 = (1 << 24) + 1;

fn rule(
    identity: u32,
    egress: bool,
    proto: Option<u8>,
    port: u16,
    len: u8,
    deny: bool,
) -> PolicyMapEntry {
    let kind = match (identity, proto) {
        (0, None) => MatchKind::All,
        (0, Some(_)) => MatchKind::L4Only,
        (_, None) => MatchKind::L3Only,
        (_, Some(_)) => MatchKind::L3L4,
    };
    PolicyMapEntry {
        identity,
        egress,
        proto,
        port,
        port_prefix_len: len,
        deny,
        kind,
        rule: 42,
    }
}

fn ingress_policy(entries: Vec<PolicyMapEntry>) -> EndpointPolicy {
    EndpointPolicy {
        ingress_enforced: true,
        egress_enforced: false,
        entries,
    }
}

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

// ---- the overlay ----

const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 20);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 11);

impl Harness {
    fn set_tunnel_ifindex(&mut self, ifindex: u32) {
        let mut cfg: aya::maps::Array<&mut MapData, abi::NodeConfig> =
            aya::maps::Array::try_from(self.bpf.map_mut(abi::maps::NODE_CFG).expect("map"))
                .expect("array");
        cfg.set(
            0,
            abi::NodeConfig {
                tunnel_ifindex: ifindex,
                ..abi::NodeConfig::default()
            },
            0,
        )
        .expect("node config");
    }

    fn remote_pod(&mut self) {
        self.set_ipcache(&[
            IpcacheEntry {
                prefix: "10.200.1.0/24".parse().expect("prefix"),
                identity: 2,
                tunnel_endpoint: Some(REMOTE_NODE),
            },
            IpcacheEntry {
                prefix: "10.200.1.20/32".parse().expect("prefix"),
                identity: 777,
                tunnel_endpoint: Some(REMOTE_NODE),
            },
        ]);
    }
}

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

#[test]
fn a_full_event_ring_loses_events_not_packets_and_counts_them() {
    privileged!();
    let mut h = Harness::new();
    let mut v6 = eth(HOST_MAC_A, MAC_A, 0x86dd);
    v6.extend_from_slice(&[0x60; 40]);
    // Every run reports a drop (139); 40,000 of them overrun the 4 MiB ring nobody drains.
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
