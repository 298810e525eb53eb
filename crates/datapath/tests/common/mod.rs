//! What the packet tests of the BPF programs share: a harness that loads the programs with
//! their own pinned maps and runs packets through them (BPF_PROG_TEST_RUN), and packet builders.
//!
//! BPF_PROG_TEST_RUN runs a tc program on the loopback device (ifindex 1) of the test's
//! network namespace, so the endpoint under test is registered at ifindex 1.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

pub use std::net::Ipv4Addr;
pub use std::path::PathBuf;

pub use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
pub use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
pub use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
pub use aya::Ebpf;
pub use ciliate_datapath::abi::{
    self, CtEntry4, CtKey4, EndpointInfo, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service,
    MetricsValue, RawEvent,
};
pub use ciliate_datapath::abi::{
    IpcacheValue, Lb4AffinityKey, Lb4AffinityVal, PolicyKeyData, PolicyStats, PolicyValue,
};
pub use ciliate_datapath::policy_map;
pub use ciliate_model::bpf_policy::{EndpointPolicy, IpcacheEntry, MatchKind, PolicyMapEntry};
pub use ciliate_model::lb::{
    BackendState, FrontendKind, L4Proto, LbBackend, LbFrontend, LbState, ServiceRef,
};
pub use ciliate_testutil::{privileged, unique_name};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
pub const WORLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
pub const MAC_A: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xa1];
pub const HOST_MAC_A: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xa2];
pub const MAC_B: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xb1];
pub const HOST_MAC_B: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xb2];
pub const B_IFINDEX: u32 = 4242;

/// The loaded programs with their own pinned maps, removed on drop.
pub struct Harness {
    /// `bpf/lxc.c`.
    pub bpf: Ebpf,
    /// `bpf/overlay.c`, sharing the maps of `bpf`.
    pub overlay: Ebpf,
    /// `bpf/host.c`, sharing the maps of `bpf`.
    pub host: Ebpf,
    pub pin_dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

impl Harness {
    /// Loads lxc.o; endpoint A sits at ifindex 1 (where test runs execute), B at B_IFINDEX.
    pub fn new() -> Self {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique_name("cilt"));
        let bpf = ciliate_datapath::linux::load_endpoint_programs(&pin_dir).expect("load lxc.o");
        let overlay =
            ciliate_datapath::linux::load_overlay_program(&pin_dir).expect("load overlay.o");
        let host = ciliate_datapath::linux::load_host_programs(&pin_dir).expect("load host.o");
        let mut h = Self {
            bpf,
            overlay,
            host,
            pin_dir,
        };
        h.add_endpoint(1, 11, 300, POD_A, MAC_A, HOST_MAC_A);
        h.add_endpoint(B_IFINDEX, 12, 301, POD_B, MAC_B, HOST_MAC_B);
        h
    }

    pub fn add_endpoint(
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
    pub fn set_lb(&mut self, state: &LbState) {
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

    pub fn remove_lb_slot(&mut self, vip: Ipv4Addr, port: u16, slot: u16) {
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
    pub fn set_policy_a(&mut self, policy: &EndpointPolicy, version: u8) {
        let mut trie: LpmTrie<&mut MapData, PolicyKeyData, PolicyValue> =
            LpmTrie::try_from(self.bpf.map_mut(abi::maps::POLICY).expect("map")).expect("lpm");
        for e in &policy.entries {
            let (prefix, data) = policy_map::policy_key(11, version, e);
            trie.insert(
                &LpmKey::new(prefix, data),
                policy_map::policy_value(prefix, &data, e),
                0,
            )
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
        // By address too, as the agent writes it: what from_overlay finds the pod by.
        let mut by_ip: BpfHashMap<&mut MapData, [u8; 4], EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC4).expect("map")).expect("hash");
        by_ip
            .insert(POD_A.octets(), info, 0)
            .expect("flags by address");
    }

    pub fn set_ipcache(&mut self, entries: &[IpcacheEntry]) {
        let mut trie: LpmTrie<&mut MapData, [u8; 4], IpcacheValue> =
            LpmTrie::try_from(self.bpf.map_mut(abi::maps::IPCACHE4).expect("map")).expect("lpm");
        for e in entries {
            let (p, a, v) = policy_map::ipcache_record(e);
            trie.insert(&LpmKey::new(p, a), v, 0)
                .expect("ipcache entry");
        }
    }

    pub fn remove_self(&mut self) {
        let mut by_if: BpfHashMap<&mut MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC_IFX).expect("map")).expect("hash");
        by_if.remove(&1).expect("remove");
    }

    /// Runs `prog` on `pkt`; returns the verdict and the packet as the program left it.
    pub fn run(&self, prog: &str, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(prog, pkt)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", pkt.len()))
    }

    pub fn try_run(
        &self,
        prog: &str,
        pkt: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let p: &SchedClassifier = self
            .bpf
            .program(prog)
            .or_else(|| self.overlay.program(prog))
            .or_else(|| self.host.program(prog))
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

    /// Runs `prog` on `pkt` carrying `skb->mark` = `mark`.
    pub fn run_marked(&self, prog: &str, pkt: &[u8], mark: u32) -> (u32, Vec<u8>) {
        let p: &SchedClassifier = self
            .bpf
            .program(prog)
            .expect("program")
            .try_into()
            .expect("classifier");
        // struct __sk_buff up to and including `mark` (len and pkt_type must be 0).
        let mut ctx = [0u8; 12];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut out = vec![0u8; pkt.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(pkt);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let res = p.test_run(opts).expect("test run with a mark");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    pub fn ct(&self, key: CtKey4) -> Option<CtEntry4> {
        let m: BpfHashMap<&MapData, CtKey4, CtEntry4> =
            BpfHashMap::try_from(self.bpf.map(abi::maps::CT4).expect("map")).expect("hash");
        m.get(&key, 0).ok()
    }

    pub fn ct_len(&self) -> usize {
        let m: BpfHashMap<&MapData, CtKey4, CtEntry4> =
            BpfHashMap::try_from(self.bpf.map(abi::maps::CT4).expect("map")).expect("hash");
        m.keys().count()
    }

    pub fn counter(&self, dir: u32, reason: u32) -> u64 {
        let m: PerCpuArray<&MapData, MetricsValue> =
            PerCpuArray::try_from(self.bpf.map(abi::maps::METRICS).expect("map")).expect("array");
        m.get(&(dir * 256 + reason), 0)
            .expect("slot")
            .iter()
            .map(|v| v.packets)
            .sum()
    }

    pub fn events(&mut self) -> Vec<RawEvent> {
        let mut ring =
            RingBuf::try_from(self.bpf.map_mut(abi::maps::EVENTS).expect("map")).expect("ringbuf");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(RawEvent::from_bytes(&item).expect("whole event"));
        }
        out
    }
}

/// Runs `prog` on `pkt` with `skb->mark` = `mark`; returns the verdict, the packet and the
/// mark the program left.
pub fn run_ctx(h: &Harness, prog: &str, pkt: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
    let p: &SchedClassifier = h
        .bpf
        .program(prog)
        .or_else(|| h.overlay.program(prog))
        .or_else(|| h.host.program(prog))
        .expect("program")
        .try_into()
        .expect("classifier");
    // struct __sk_buff up to and including `mark` (len and pkt_type must be 0).
    let mut ctx = [0u8; 12];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; 256]; // at least sizeof(struct __sk_buff)
    let mut out = vec![0u8; pkt.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(pkt);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.ctx_out = Some(&mut ctx_out);
    let res = p.test_run(opts).expect("test run");
    out.truncate(res.data_size_out as usize);
    let mark_out = u32::from_ne_bytes(ctx_out[8..12].try_into().expect("4 bytes"));
    (res.return_value, out, mark_out)
}

pub fn now_secs() -> u64 {
    ciliate_datapath::events::monotonic_now().as_secs()
}

// ---- packet building ----

pub fn csum(data: &[u8]) -> u16 {
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

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
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

pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    ipv4(src, dst, 6, &t)
}

pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 8 + 4];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, reply: bool, id: u16) -> Vec<u8> {
    let mut i = vec![if reply { 0 } else { 8 }, 0, 0, 0, 0, 0, 0, 1];
    i[4..6].copy_from_slice(&id.to_be_bytes());
    ipv4(src, dst, 1, &i)
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

pub fn key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8, dir: u8) -> CtKey4 {
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

// ---- services ----

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const BACKENDS: [Ipv4Addr; 3] = [
    POD_B,
    Ipv4Addr::new(10, 200, 1, 2),
    Ipv4Addr::new(10, 200, 1, 3),
];

pub fn service(backends: &[Ipv4Addr], affinity: Option<u32>, proto: L4Proto) -> LbState {
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
pub fn dst_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]),
        u16::from_be_bytes([frame[36], frame[37]]),
    )
}

pub fn src_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]),
        u16::from_be_bytes([frame[34], frame[35]]),
    )
}

/// Checks the IPv4 header checksum and the L4 checksum over its pseudo-header.
pub fn assert_checksums(frame: &[u8]) {
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
pub fn tcp_ok(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
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

// ---- policy ----

pub const ID_B: u32 = 301;
pub const ID_CIDR: u32 = (1 << 24) + 1;

pub fn rule(
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
        proxy_port: 0,
    }
}

pub fn ingress_policy(entries: Vec<PolicyMapEntry>) -> EndpointPolicy {
    EndpointPolicy {
        ingress_enforced: true,
        egress_enforced: false,
        entries,
    }
}

// ---- the overlay ----

pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 20);
pub const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 11);

impl Harness {
    pub fn set_tunnel_ifindex(&mut self, ifindex: u32) {
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

    /// Sets the monitor aggregation level as the agent does (`NODE_F_TRACE_*` in the node's
    /// configuration), keeping the rest of it.
    pub fn set_monitor_aggregation(&mut self, level: ciliate_datapath::MonitorAggregation) {
        let mut cfg: aya::maps::Array<&mut MapData, abi::NodeConfig> =
            aya::maps::Array::try_from(self.bpf.map_mut(abi::maps::NODE_CFG).expect("map"))
                .expect("array");
        let mut c = cfg.get(&0, 0).expect("node config");
        c.flags =
            (c.flags & !(abi::NODE_F_TRACE_FROM | abi::NODE_F_TRACE_EVERY)) | level.node_flags();
        cfg.set(0, c, 0).expect("node config");
    }

    pub fn remote_pod(&mut self) {
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

/// An ICMP error of `icmp_type`/`code` from `src` to `dst` quoting `quoted` (a frame built by
/// the helpers above: its IPv4 header and the first 8 bytes after it are quoted, as RFC 792
/// asks).
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut i = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    i.extend_from_slice(&quoted[14..14 + 28]);
    let c = csum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &i)
}
