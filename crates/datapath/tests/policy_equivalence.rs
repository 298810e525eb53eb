//! The policy engine's verdict equals the datapath's: for many random small policies
//! (CiliumNetworkPolicy and NetworkPolicy), the
//! engine's map policy ([`Resolved::map_policy`]) and ipcache are installed into `bpf/lxc.c`'s
//! maps as the agent installs them, and sampled flows (peer, protocol, port, both directions)
//! are run through `from_container` / `to_container` with BPF_PROG_TEST_RUN. Allowed or
//! dropped, and the drop reason (133 default deny, 181 deny rule), must be what
//! [`Resolved::explain`] says.
//!
//! Seeded, so a failure reproduces; the seed, the policies and the flow are printed.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::Ebpf;
use ciliate_datapath::abi::{
    self, EndpointInfo, IpcacheValue, MetricsValue, PolicyKeyData, PolicyValue,
};
use ciliate_datapath::policy_map;
use ciliate_model::bpf_policy::{EndpointPolicy, IpcacheEntry};
use ciliate_model::labels::Labels;
use ciliate_model::policy::Direction;
use ciliate_policy::{load, IdentityLabels, NamedPorts, PolicyEngine};
use ciliate_testutil::{privileged, unique_name};

const TC_ACT_SHOT: u32 = 2;

const ID_A: u32 = 300;
const ID_B: u32 = 301;
const ID_C: u32 = 302;
const EP_A: u16 = 11;
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 12);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Peers by address: local endpoints, the node, world, and addresses inside (and outside)
/// the prefixes policies name.
const PEERS: [Ipv4Addr; 9] = [
    POD_B,
    POD_C,
    HOST,
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(10, 1, 2, 3),
    Ipv4Addr::new(10, 1, 200, 1),
    Ipv4Addr::new(10, 2, 3, 4),
    Ipv4Addr::new(172, 16, 5, 5),
    Ipv4Addr::new(172, 32, 0, 1),
];

/// (protocol, port); ICMP's port is the type (8: echo request).
const FLOWS: [(u8, u16); 9] = [
    (6, 80),
    (6, 81),
    (6, 443),
    (6, 8080),
    (6, 8083),
    (6, 8084),
    (17, 53),
    (17, 443),
    (1, 8),
];

const CASES: usize = 400;

/// Whether random policies use `icmps` rules.
const ICMP_RULES: bool = true;

/// xorshift64*: small, seeded, good enough to pick from lists.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// One random rule of a section: a peer (or none: any peer) and ports (or none: any).
fn rule(rng: &mut Rng, ingress: bool, deny: bool) -> String {
    let (ep, ent, cidr, cidr_set) = if ingress {
        ("fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet")
    } else {
        ("toEndpoints", "toEntities", "toCIDR", "toCIDRSet")
    };
    let peer = match rng.below(6) {
        0 => format!(
            "{ep}: [{}]",
            rng.pick(&[
                "{matchLabels: {app: b}}",
                "{matchLabels: {app: c}}",
                "{}",
                "{matchExpressions: [{key: app, operator: In, values: [b, c]}]}",
                "{matchLabels: {app: c, \"k8s:io.kubernetes.pod.namespace\": other}}",
            ])
        ),
        1 => format!(
            "{ent}: [{}]",
            rng.pick(&["world", "host", "all", "cluster"])
        ),
        2 => format!(
            "{cidr}: [{}]",
            rng.pick(&[
                "10.0.0.0/8",
                "10.1.0.0/16",
                "172.16.0.0/12",
                "198.51.100.0/24"
            ])
        ),
        3 => format!(
            "{cidr_set}: [{}]",
            rng.pick(&[
                "{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}",
                "{cidr: 10.1.0.0/16, except: [10.1.128.0/17]}",
                "{cidr: 0.0.0.0/0, except: [172.16.0.0/12]}",
            ])
        ),
        _ => String::new(),
    };
    let ports = match rng.below(7) {
        0 => "toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]".to_owned(),
        1 => "toPorts: [{ports: [{port: \"8080\", endPort: 8083, protocol: TCP}]}]".to_owned(),
        2 => "toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]".to_owned(),
        3 => "toPorts: [{ports: [{port: \"443\", protocol: ANY}]}]".to_owned(),
        4 if ICMP_RULES => "icmps: [{fields: [{type: 8}]}]".to_owned(),
        5 if !deny => "toPorts: [{ports: [{port: \"0\", protocol: TCP}]}]".to_owned(),
        _ => String::new(),
    };
    let body: Vec<String> = [peer, ports]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if body.is_empty() {
        // An empty rule selects nothing in Cilium; give it a peer that exists.
        return format!("{{{ent}: [all]}}");
    }
    format!("{{{}}}", body.join(", "))
}

fn policy(rng: &mut Rng, name: usize) -> String {
    let selector = rng.pick(&["{matchLabels: {app: a}}", "{}", "{matchLabels: {app: b}}"]);
    let mut sections = Vec::new();
    for (section, ingress, deny) in [
        ("ingress", true, false),
        ("ingressDeny", true, true),
        ("egress", false, false),
        ("egressDeny", false, true),
    ] {
        let n = match rng.below(5) {
            0..=1 => 0,
            2..=3 => 1,
            _ => 2,
        };
        if n == 0 || (deny && rng.below(2) == 0) {
            continue;
        }
        let rules: Vec<String> = (0..n).map(|_| rule(rng, ingress, deny)).collect();
        sections.push(format!("  {section}: [{}]", rules.join(", ")));
    }
    if sections.is_empty() {
        let r = rule(rng, true, false);
        sections.push(format!("  ingress: [{r}]"));
    }
    if rng.below(6) == 0 {
        sections.push(format!(
            "  enableDefaultDeny: {{ingress: {}, egress: {}}}",
            rng.below(2) == 0,
            rng.below(2) == 0
        ));
    }
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{name}, namespace: default}}\nspec:\n  endpointSelector: {selector}\n{}\n",
        sections.join("\n")
    )
}

/// A random Kubernetes NetworkPolicy: peers by pod, namespace or ipBlock, ports or none.
fn network_policy(rng: &mut Rng, name: usize) -> String {
    let selector = rng.pick(&["{matchLabels: {app: a}}", "{}", "{matchLabels: {app: b}}"]);
    let types = rng.pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]);
    let mut sections = Vec::new();
    for (section, peers) in [("ingress", "from"), ("egress", "to")] {
        if rng.below(3) == 0 {
            continue;
        }
        let peer = rng.pick(&[
            "{podSelector: {matchLabels: {app: b}}}",
            "{podSelector: {}}",
            "{namespaceSelector: {}}",
            "{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}",
            "{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}",
            "{ipBlock: {cidr: 172.16.0.0/12}}",
        ]);
        let ports = rng.pick(&[
            "",
            ", ports: [{protocol: TCP, port: 80}]",
            ", ports: [{protocol: TCP, port: 8080, endPort: 8083}]",
            ", ports: [{protocol: UDP, port: 53}]",
        ]);
        let rule = if rng.below(5) == 0 {
            "{}".to_owned()
        } else {
            format!("{{{peers}: [{peer}]{ports}}}")
        };
        sections.push(format!("  {section}: [{rule}]"));
    }
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{name}, namespace: default}}\nspec:\n  podSelector: {selector}\n  policyTypes: {types}\n{}\n",
        sections.join("\n")
    )
}

/// `bpf/lxc.c` loaded with its own pinned maps: A at ifindex 1 (where test runs execute),
/// B and C elsewhere (for their addresses' identities).
struct Harness {
    bpf: Ebpf,
    pin_dir: PathBuf,
    version: u8,
    policy_keys: Vec<(u32, PolicyKeyData)>,
    ipcache_keys: Vec<(u32, [u8; 4])>,
    next_port: u16,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

impl Harness {
    fn new() -> Self {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique_name("cilpe"));
        let bpf = ciliate_datapath::linux::load_endpoint_programs(&pin_dir).expect("load lxc.o");
        let mut h = Self {
            bpf,
            pin_dir,
            version: 0,
            policy_keys: Vec::new(),
            ipcache_keys: Vec::new(),
            next_port: 20_000,
        };
        h.endpoint(1, EP_A, ID_A, POD_A);
        h.endpoint(4242, 12, ID_B, POD_B);
        h.endpoint(4243, 13, ID_C, POD_C);
        h
    }

    fn endpoint(&mut self, ifindex: u32, ep_id: u16, identity: u32, ip: Ipv4Addr) {
        let info = EndpointInfo {
            ifindex,
            ep_id,
            flags: 0,
            sec_identity: identity,
            ipv4: ip.octets(),
            mac: [0x0a, 0, 0, 0, 0, ep_id as u8],
            host_mac: [0x0a, 0, 0, 0, 1, ep_id as u8],
        };
        let mut by_if: BpfHashMap<&mut MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC_IFX).expect("map")).expect("hash");
        by_if.insert(ifindex, info, 0).expect("insert");
        let mut by_ip: BpfHashMap<&mut MapData, [u8; 4], EndpointInfo> =
            BpfHashMap::try_from(self.bpf.map_mut(abi::maps::LXC4).expect("map")).expect("hash");
        by_ip.insert(ip.octets(), info, 0).expect("insert");
    }

    /// As the datapath's `set_endpoint_policy`: the new generation written whole, one flags
    /// update switches A to it, the old generation deleted.
    fn set_policy(&mut self, policy: &EndpointPolicy) {
        let next = 1 - self.version;
        let mut trie: LpmTrie<&mut MapData, PolicyKeyData, PolicyValue> =
            LpmTrie::try_from(self.bpf.map_mut(abi::maps::POLICY).expect("map")).expect("lpm");
        let mut written = Vec::new();
        for e in &policy.entries {
            let (prefix, data) = policy_map::policy_key(EP_A, next, e);
            trie.insert(
                &LpmKey::new(prefix, data),
                policy_map::policy_value(prefix, &data, e),
                0,
            )
            .expect("policy entry");
            written.push((prefix, data));
        }
        for (prefix, data) in std::mem::replace(&mut self.policy_keys, written) {
            let _ = trie.remove(&LpmKey::new(prefix, data));
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
        if next == 1 {
            info.flags |= abi::EP_F_POLICY_V1;
        }
        by_if.insert(1, info, 0).expect("flags");
        self.version = next;
    }

    fn set_ipcache(&mut self, entries: &[IpcacheEntry]) {
        let mut trie: LpmTrie<&mut MapData, [u8; 4], IpcacheValue> =
            LpmTrie::try_from(self.bpf.map_mut(abi::maps::IPCACHE4).expect("map")).expect("lpm");
        for (p, a) in self.ipcache_keys.drain(..) {
            let _ = trie.remove(&LpmKey::new(p, a));
        }
        for e in entries {
            let (p, a, v) = policy_map::ipcache_record(e);
            trie.insert(&LpmKey::new(p, a), v, 0)
                .expect("ipcache entry");
            self.ipcache_keys.push((p, a));
        }
    }

    fn run(&self, prog: &str, pkt: &[u8]) -> u32 {
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
        p.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
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

    /// A fresh source port (or ICMP id), so no flow meets another's conntrack entry.
    fn port(&mut self) -> u16 {
        self.next_port = self.next_port.wrapping_add(1).max(20_000);
        self.next_port
    }

    /// Runs one new flow; `None` when it passed, else the drop reason the metrics counted.
    fn flow(&mut self, egress: bool, peer: Ipv4Addr, proto: u8, port: u16) -> Option<u32> {
        let (src, dst) = if egress { (POD_A, peer) } else { (peer, POD_A) };
        let sport = self.port();
        let pkt = match proto {
            6 => tcp_syn(src, sport, dst, port),
            17 => udp(src, sport, dst, port),
            _ => icmp(src, dst, port as u8, sport),
        };
        let (prog, dir) = if egress {
            ("from_container", abi::METRIC_EGRESS)
        } else {
            ("to_container", abi::METRIC_INGRESS)
        };
        let before = [133, 181].map(|r| self.counter(dir, r));
        let verdict = self.run(prog, &pkt);
        let after = [133, 181].map(|r| self.counter(dir, r));
        if verdict != TC_ACT_SHOT {
            assert_eq!(before, after, "passed but counted as a policy drop");
            return None;
        }
        match (after[0] - before[0], after[1] - before[1]) {
            (1, 0) => Some(133),
            (0, 1) => Some(181),
            other => panic!("dropped, but not for policy: counters moved by {other:?}"),
        }
    }
}

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x0a, 0, 0, 0, 1, 11, 0x0a, 0, 0, 0, 0, 11, 0x08, 0x00];
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

fn tcp_syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&t);
    let c = csum(&pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 6, &t)
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 12];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

fn icmp(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
    let mut i = vec![ty, 0, 0, 0, 0, 0, 0, 1];
    i[4..6].copy_from_slice(&id.to_be_bytes());
    let c = csum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &i)
}

fn identities() -> IdentityLabels {
    let l = |s: &str| Labels::parse_list(s, "k8s").expect("labels");
    [
        (ID_A, l("app=a,io.kubernetes.pod.namespace=default")),
        (ID_B, l("app=b,io.kubernetes.pod.namespace=default")),
        (ID_C, l("app=c,io.kubernetes.pod.namespace=other")),
    ]
    .into_iter()
    .collect()
}

#[test]
fn the_datapath_enforces_what_the_engine_explains() {
    privileged!();
    let seed: u64 = std::env::var("CILIATE_POLICY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c11a_7e00_0001);
    let mut rng = Rng(seed);
    let mut h = Harness::new();
    let ids = identities();
    let named = NamedPorts::new();
    let mut mismatches = Vec::new();
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let (mut checked, mut enforced_cases, mut denied, mut deny_rule) =
        (0usize, 0usize, 0usize, 0usize);
    for case in 0..CASES {
        let yaml: Vec<String> = (0..1 + rng.below(3))
            .map(|i| {
                if rng.below(4) == 0 {
                    network_policy(&mut rng, i)
                } else {
                    policy(&mut rng, i)
                }
            })
            .collect();
        let yaml = yaml.join("---\n");
        let loaded = load("random.yaml", &yaml).unwrap_or_else(|e| {
            panic!(
                "seed {seed:#x} case {case}: generated policy does not load:\n{yaml}\n{}",
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        let mut engine = PolicyEngine::default();
        for p in loaded.policies {
            engine.upsert(p.resource).expect("loaded policies compile");
        }
        let r = engine.resolve(&ids, &named);
        let map = r.map_policy(ID_A);
        if map.ingress_enforced || map.egress_enforced {
            enforced_cases += 1;
        }
        let mut ipcache = r.ipcache4();
        ipcache.push(IpcacheEntry {
            prefix: HOST.into(),
            identity: 1,
            tunnel_endpoint: None,
        });
        h.set_ipcache(&ipcache);
        h.set_policy(&map);
        for peer in PEERS {
            let peer_id = match peer {
                POD_B => ID_B,
                POD_C => ID_C,
                HOST => 1,
                ip => r.cidr_identity_of(ip.into()),
            };
            for (proto, port) in FLOWS {
                for direction in Direction::ALL {
                    let egress = direction == Direction::Egress;
                    let v = if egress {
                        r.explain(ID_A, peer_id, proto, port).egress
                    } else {
                        r.explain(peer_id, ID_A, proto, port).ingress
                    }
                    .expect("A is an endpoint");
                    let want = v.drop_reason().map(u32::from);
                    let got = h.flow(egress, peer, proto, port);
                    checked += 1;
                    if want.is_some() {
                        denied += 1;
                    }
                    if want == Some(181) {
                        deny_rule += 1;
                    }
                    if got != want {
                        *kinds
                            .entry(format!(
                                "proto {proto} port {port}: engine {want:?}, datapath {got:?}"
                            ))
                            .or_insert(0usize) += 1;
                        mismatches.push(format!(
                            "case {case}: {direction} peer {peer} (identity {peer_id}) proto {proto} port {port}: \
                             engine {want:?} ({v}), datapath {got:?}\n{yaml}"
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "seed {seed:#x}: {checked} flows over {CASES} policy sets ({enforced_cases} enforcing), \
         {denied} denied by the engine ({deny_rule} by a deny rule), {} mismatches",
        mismatches.len()
    );
    assert!(
        enforced_cases > CASES / 3 && deny_rule > 100 && denied > checked / 10,
        "the generator must exercise enforcement and deny rules"
    );
    assert!(
        mismatches.is_empty(),
        "seed {seed:#x}: {} of {checked} flows disagree ({kinds:?}); first ones:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
}

/// One ICMP echo request from world to A under `yaml`: the engine's drop reason and the
/// datapath's, and with the entry's port rewritten as the BPF program keys ICMP (type in the
/// high byte), the datapath's again.
fn icmp_case(h: &mut Harness, yaml: &str, ty: u8) -> (Option<u32>, Option<u32>, Option<u32>) {
    let mut engine = PolicyEngine::default();
    for p in load("icmp.yaml", yaml).expect("loads").policies {
        engine.upsert(p.resource).expect("compiles");
    }
    let ids = identities();
    let named = NamedPorts::new();
    let r = engine.resolve(&ids, &named);
    let world = Ipv4Addr::new(198, 51, 100, 7);
    let want = r
        .explain(2, ID_A, 1, u16::from(ty))
        .ingress
        .and_then(|v| v.drop_reason())
        .map(u32::from);
    let mut map = r.map_policy(ID_A);
    h.set_ipcache(&[]);
    h.set_policy(&map);
    let got = h.flow(false, world, 1, u16::from(ty));
    for e in &mut map.entries {
        if e.proto == Some(1) {
            e.port <<= 8;
        }
    }
    h.set_policy(&map);
    let shifted = h.flow(false, world, 1, u16::from(ty));
    (want, got, shifted)
}

/// `icmps` rules: the program keys an ICMP packet by its type as a port number, the way the
/// engine writes the entries (this once disagreed: type << 8 against type). The third value
/// is the verdict when the entry is keyed the other way, which must no longer match.
#[test]
fn icmp_type_rules_match_echo_requests() {
    privileged!();
    let mut h = Harness::new();
    let allow = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: icmp}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress: [{fromEntities: [world], icmps: [{fields: [{type: 8}]}]}]\n";
    let deny = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: icmp}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress: [{fromEntities: [world]}]\n  ingressDeny: [{fromEntities: [world], icmps: [{fields: [{type: 8}]}]}]\n";
    let allowed = icmp_case(&mut h, allow, 8);
    let denied = icmp_case(&mut h, deny, 8);
    eprintln!("allow rule: engine, datapath, datapath with type<<8 = {allowed:?}");
    eprintln!("deny rule:  engine, datapath, datapath with type<<8 = {denied:?}");
    assert_eq!(
        allowed.1, allowed.0,
        "an icmps allow rule admits echo requests"
    );
    assert_eq!(
        denied.1, denied.0,
        "an icmps deny rule drops echo requests with 181"
    );
}

/// ICMP that is neither echo nor an error of a connection (a timestamp request, 13) belongs to
/// no connection and is judged by policy packet by packet (it once slipped through as if it
/// were an error).
#[test]
fn non_echo_icmp_is_judged_by_policy() {
    privileged!();
    let mut h = Harness::new();
    let deny_all = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: lockdown}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: b}}]}]\n";
    let (want, got, _) = icmp_case(&mut h, deny_all, 13);
    eprintln!("timestamp request from world under default deny: engine {want:?}, datapath {got:?}");
    assert_eq!(got, want);
}
