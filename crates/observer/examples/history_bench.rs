//! The flow history's benchmark (run by bench/history.sh): flows/s into the history, bytes per
//! flow on disk, the time to reopen it, and a query with a pod filter over all of it.
//!
//! The flows are synthetic but made the way the agent makes them: datapath trace and drop
//! events of 300 pods in 12 namespaces (5 labels each) talking TCP/UDP to 60 server pods,
//! about 3% policy drops, replies, a Service on a third of the requests, turned into Hubble
//! flows by the observer's own converter (`convert::to_flow`) with a random UUID each, 10 µs
//! apart. They are generated in chunks before the clock starts; what is timed is handing them
//! to the history and its writer thread encoding, compressing and appending them (run it
//! pinned to one CPU: `taskset -c 0`).
//!
//!   history_bench --dir DIR [--flows N] [--query-pod NS/POD]
//!   history_bench --dir DIR --query-only [--query-pod NS/POD]
//!
//! `--query-only` opens a history written before and runs the query alone (bench/history.sh
//! runs it unpinned: the query reads blocks on two threads when it has two CPUs).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ciliate_model::monitor::{EthernetAddrs, EventKind, MonitorEvent, L4};
use ciliate_model::MacAddr;
use ciliate_observer::filter::FlowFilters;
use ciliate_observer::history::{FlowHistory, HistoryConfig, PodPrefilter, Scan};
use ciliate_observer::proto::flow::{Flow, FlowFilter};
use ciliate_observer::ring::{Entry, Numbered};
use ciliate_observer::store::{EndpointInfo, ServiceRef, Snapshot};

const PODS: u32 = 300;
const SERVERS: u32 = 60;
const NAMESPACES: u32 = 12;
const CHUNK: u64 = 49 * 4096;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 2) as u8)
}

fn store() -> Snapshot {
    let mut s = Snapshot::default();
    for i in 0..PODS {
        let ns = format!("team-{}", i % NAMESPACES);
        let app = if i < SERVERS {
            format!("server-{i}")
        } else {
            format!("client-{i}")
        };
        let labels = vec![
            format!("k8s:app={app}"),
            format!("k8s:io.kubernetes.pod.namespace={ns}"),
            "k8s:io.cilium.k8s.policy.serviceaccount=default".to_owned(),
            "k8s:io.cilium.k8s.policy.cluster=default".to_owned(),
            format!(
                "k8s:tier={}",
                if i < SERVERS { "backend" } else { "frontend" }
            ),
        ];
        let identity = 256 + i;
        s.identities.insert(identity, labels.clone());
        s.endpoints.insert(
            pod_ip(i),
            EndpointInfo {
                id: 100 + i,
                identity,
                namespace: ns,
                pod_name: format!("{app}-7d9f8c6b5-{:05x}", i * 7919 % 0xfffff),
                labels,
            }
            .into(),
        );
    }
    for i in 0..SERVERS / 3 {
        s.frontends.insert(
            (Ipv4Addr::new(10, 96, 0, i as u8 + 10), 80, 6),
            ServiceRef {
                namespace: format!("team-{}", i % NAMESPACES),
                name: format!("server-{i}"),
            },
        );
    }
    s
}

fn event(rng: &mut Rng) -> MonitorEvent {
    let client = SERVERS + rng.below(PODS - SERVERS);
    let server = rng.below(SERVERS);
    let reply = rng.below(2) == 0;
    let (src, dst) = if reply {
        (server, client)
    } else {
        (client, server)
    };
    let sport = 32768 + rng.below(28000) as u16;
    let drop = rng.below(33) == 0;
    let l4 = if rng.below(10) == 0 {
        L4::Udp { sport, dport: 53 }
    } else {
        let flags = match rng.below(4) {
            0 => vec!["SYN".into()],
            1 => vec!["ACK".into()],
            2 => vec!["ACK".into(), "PSH".into()],
            _ => vec!["FIN".into(), "ACK".into()],
        };
        let (s, d) = if reply { (8080, sport) } else { (sport, 8080) };
        L4::Tcp {
            sport: s,
            dport: d,
            flags,
        }
    };
    MonitorEvent {
        kind: if drop {
            EventKind::Drop
        } else {
            EventKind::Trace
        },
        time: String::new(),
        code: if drop {
            133
        } else if reply {
            0
        } else {
            5
        },
        reason: String::new(),
        endpoint: (100 + src) as u16,
        ifindex: 40 + src,
        src_identity: 256 + src,
        dst_identity: 256 + dst,
        ct_state: if reply { "reply" } else { "established" }.into(),
        len: 66 + rng.below(1400),
        ethertype: 0x0800,
        src: Some(pod_ip(src)),
        dst: Some(pod_ip(dst)),
        l4: Some(l4),
        rule: 0,
        rev_nat: if !reply && server < SERVERS / 3 {
            (server + 1) as u16
        } else {
            0
        },
        ethernet: Some(EthernetAddrs {
            source: MacAddr([0x02, 0, 0, 0, (src >> 8) as u8, src as u8]),
            destination: MacAddr([0x02, 0, 0, 0, (dst >> 8) as u8, dst as u8]),
        }),
    }
}

fn uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

fn chunk(rng: &mut Rng, store: &Snapshot, from_seq: u64, n: u64, t0_ns: i64) -> Vec<Numbered> {
    (0..n)
        .map(|i| {
            let seq = from_seq + i;
            let mut f: Flow = ciliate_observer::convert::to_flow(&event(rng), store, "node-1");
            let t = t0_ns + seq as i64 * 10_000;
            f.time = Some(pbjson_types::Timestamp {
                seconds: t / 1_000_000_000,
                nanos: (t % 1_000_000_000) as i32,
            });
            if f.uuid.is_empty() {
                f.uuid = uuid(rng);
            }
            Numbered {
                seq,
                entry: Arc::new(Entry::Flow(Box::new(f))),
            }
        })
        .collect()
}

/// CPU seconds the thread named `name` of this process has used (user + system), from
/// /proc: the writer's cost, whatever else runs on the machine.
fn thread_cpu_s(name: &str) -> Option<f64> {
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = t.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        return stat_cpu_s(&dir.join("stat"));
    }
    None
}

/// User + system CPU seconds in a /proc `stat` file.
fn stat_cpu_s(path: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command's closing parenthesis: utime and stime are 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of the whole process (every thread, those that ended too).
fn process_cpu_s() -> Option<f64> {
    stat_cpu_s(std::path::Path::new("/proc/self/stat"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut flows: u64 = 1 << 20;
    let mut pod = "team-3/server-15".to_owned();
    let mut query_only = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next(),
            "--flows" => flows = args.next().and_then(|s| s.parse().ok()).unwrap_or(flows),
            "--query-pod" => pod = args.next().unwrap_or(pod),
            "--query-only" => query_only = true,
            _ => {
                eprintln!(
                    "usage: history_bench --dir DIR [--flows N | --query-only] [--query-pod NS/POD]"
                );
                std::process::exit(2);
            }
        }
    }
    // Whole blocks: a partial one waits for its time-out (5 s) before it is written.
    flows = (flows / 4096).max(1) * 4096;
    let Some(dir) = dir else {
        eprintln!("--dir is required");
        std::process::exit(2);
    };
    let config = HistoryConfig {
        dir: dir.into(),
        max_bytes: u64::MAX / 2,
        max_age: None,
        queue_flows: CHUNK as usize + 1,
    };
    let t0_ns = 1_796_000_000_000_000_000i64;
    if query_only {
        let history = FlowHistory::open(config, "node-1").expect("opens");
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
        let (wall, cpu, matched) = query(&history, &pod, t0_ns);
        println!("query_{threads}cpu_s {wall:.3}");
        println!("query_{threads}cpu_cpu_s {cpu:.3}");
        println!("query_{threads}cpu_matched {matched}");
        history.close();
        return;
    }
    let store = store();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let history = FlowHistory::open(config.clone(), "node-1").expect("opens");
    let mut busy = Duration::ZERO;
    let mut seq = 1;
    while seq <= flows {
        let n = CHUNK.min(flows - seq + 1);
        let batch = chunk(&mut rng, &store, seq, n, t0_ns);
        let target = history.written() + n;
        let start = Instant::now();
        for part in batch.chunks(256) {
            history.offer(part);
        }
        while history.written() < target && history.dropped() == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        busy += start.elapsed();
        seq += n;
    }
    let writer_cpu = thread_cpu_s("flow-history").unwrap_or(f64::NAN);
    history.close();
    assert_eq!(history.dropped(), 0, "the benchmark must not drop flows");
    let bytes = history.disk_bytes();
    println!("write_flows_per_s {:.0}", flows as f64 / busy.as_secs_f64());
    println!("write_flows_per_cpu_s {:.0}", flows as f64 / writer_cpu);
    println!("bytes_per_flow {:.1}", bytes as f64 / flows as f64);
    drop(history);

    let start = Instant::now();
    let history = FlowHistory::open(config, "node-1").expect("reopens");
    println!("reopen_s {:.3}", start.elapsed().as_secs_f64());
    assert_eq!(history.disk_flows(), flows);

    let (query_s, query_cpu_s, matched) = query(&history, &pod, t0_ns);
    println!("query_s {query_s:.3}");
    println!("query_cpu_s {query_cpu_s:.3}");
    println!("query_matched {matched}");
    history.close();
}

/// The flows to `pod` since `t0_ns` (all of them): wall seconds, CPU seconds of the process
/// (all its threads; nothing else runs in it meanwhile, and CPU time is less moved by other
/// load on the machine than wall time), flows matched.
fn query(history: &FlowHistory, pod: &str, t0_ns: i64) -> (f64, f64, u64) {
    let whitelist = vec![FlowFilter {
        destination_pod: vec![pod.to_owned()],
        ..FlowFilter::default()
    }];
    let filters = FlowFilters::compile(&whitelist, &[]).expect("filter");
    let prefilter = PodPrefilter::new(&whitelist);
    let start = Instant::now();
    let cpu_before = process_cpu_s();
    let snap = history.snapshot();
    let scan = Scan {
        filters: &filters,
        prefilter: &prefilter,
        since_ns: Some(t0_ns),
        until_ns: None,
        ring_from: u64::MAX,
    };
    let mut matched = 0u64;
    snap.forward(&scan, 0, &mut |_| {
        matched += 1;
        true
    });
    let wall = start.elapsed().as_secs_f64();
    let cpu = process_cpu_s()
        .zip(cpu_before)
        .map_or(f64::NAN, |(a, b)| a - b);
    (wall, cpu, matched)
}
