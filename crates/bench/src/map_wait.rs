//! `map-wait`: how long until a Service's backend is in the kernel's load-balancing maps, seen
//! from outside the agent. `bench/services-scale.sh` uses it to time "manifest written into
//! the manifest directory → BPF map entry present": the probe itself renames the new manifest
//! into place (so no process start sits between the write and the first poll) and then reads
//! the pinned `cil_lb4_svc` / `cil_lb4_be` maps in a tight loop.
//!
//! A backend is in force for a Service when slot 0 of the frontend (VIP, port, protocol) has a
//! count, one of the slots 1..=count names a backend id, and `cil_lb4_be` holds that id with
//! the wanted address and port: the same walk the datapath does when it picks a backend.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use ciliate_datapath::abi::{Lb4Backend, Lb4Key, Lb4Service};

/// `ciliate-bench map-wait` arguments.
#[derive(clap::Args, Debug)]
pub struct MapWait {
    /// The node's pin directory (<bpffs>/ciliate/<node-name>), holding cil_lb4_svc and cil_lb4_be.
    #[arg(long)]
    pin_dir: PathBuf,
    /// The Service's frontend address (ClusterIP).
    #[arg(long)]
    vip: Ipv4Addr,
    /// The frontend port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    proto: String,
    /// The backend to wait for, ADDRESS:PORT.
    #[arg(long)]
    backend: SocketAddrV4,
    /// Wait until the backend is gone instead of present.
    #[arg(long)]
    absent: bool,
    /// Before the first poll, rename FROM to TO (an atomic write of a manifest into a watched
    /// directory); the clock starts just before the rename.
    #[arg(long, num_args = 2, value_names = ["FROM", "TO"])]
    rename: Option<Vec<PathBuf>>,
    /// Give up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
}

type SvcMap = HashMap<MapData, Lb4Key, Lb4Service>;
type BeMap = HashMap<MapData, u32, Lb4Backend>;

fn open<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let pin = dir.join(name);
    let data = MapData::from_pin(&pin).with_context(|| format!("open {}", pin.display()))?;
    HashMap::try_from(Map::HashMap(data))
        .with_context(|| format!("{} is not the expected hash map", pin.display()))
}

fn proto_number(p: &str) -> Result<u8> {
    match p {
        "tcp" | "TCP" => Ok(6),
        "udp" | "UDP" => Ok(17),
        "sctp" | "SCTP" => Ok(132),
        other => bail!("--proto {other}: expected tcp, udp or sctp"),
    }
}

/// Whether `want` is among the backends taking new connections for `frontend`. A lookup that
/// misses (an entry being replaced) counts as "not there yet", never as an error.
fn present(svc: &SvcMap, be: &BeMap, frontend: Lb4Key, want: &SocketAddrV4) -> bool {
    let Ok(head) = svc.get(&frontend, 0) else {
        return false;
    };
    (1..=head.count).any(|slot| {
        let key = Lb4Key {
            backend_slot: slot,
            ..frontend
        };
        svc.get(&key, 0)
            .and_then(|s| be.get(&s.backend_id, 0))
            .is_ok_and(|b| b.address == want.ip().octets() && b.port == want.port().to_be_bytes())
    })
}

/// Polls until the backend is present (or absent with --absent); prints one JSON object.
pub fn run(w: &MapWait) -> Result<()> {
    let svc: SvcMap = open(&w.pin_dir, "cil_lb4_svc")?;
    let be: BeMap = open(&w.pin_dir, "cil_lb4_be")?;
    let frontend = Lb4Key {
        address: w.vip.octets(),
        dport: w.port.to_be_bytes(),
        backend_slot: 0,
        proto: proto_number(&w.proto)?,
        scope: 0,
        pad: [0; 2],
    };
    let timeout = Duration::from_secs_f64(w.timeout_secs);
    let start = Instant::now();
    if let Some(r) = &w.rename {
        std::fs::rename(&r[0], &r[1])
            .with_context(|| format!("rename {} to {}", r[0].display(), r[1].display()))?;
    }
    let mut polls = 0u64;
    loop {
        polls += 1;
        if present(&svc, &be, frontend, &w.backend) != w.absent {
            break;
        }
        if start.elapsed() > timeout {
            bail!(
                "backend {} {} for {}:{}/{} after {:?} ({polls} polls)",
                w.backend,
                if w.absent {
                    "still present"
                } else {
                    "not present"
                },
                w.vip,
                w.port,
                w.proto,
                timeout
            );
        }
        // Tight, but leave the CPU to the agent now and then on a 2-CPU machine.
        if polls.is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "waited_us": start.elapsed().as_micros() as u64,
            "polls": polls,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_testutil::{privileged, unique_name};

    #[test]
    fn protocols_by_name() {
        assert_eq!(proto_number("tcp").unwrap(), 6);
        assert_eq!(proto_number("UDP").unwrap(), 17);
        let e = proto_number("icmp").unwrap_err().to_string();
        assert!(e.contains("--proto icmp"), "{e}");
    }

    /// A pin directory on bpffs of this test's own, removed even when the test fails.
    struct PinDir(PathBuf);
    impl Drop for PinDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(slot: u16) -> Lb4Key {
        Lb4Key {
            address: [10, 96, 0, 1],
            dport: 80u16.to_be_bytes(),
            backend_slot: slot,
            proto: 6,
            ..Default::default()
        }
    }

    fn args(dir: &Path, backend: &str) -> MapWait {
        MapWait {
            pin_dir: dir.to_owned(),
            vip: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            proto: "tcp".into(),
            backend: backend.parse().unwrap(),
            absent: false,
            rename: None,
            timeout_secs: 0.05,
        }
    }

    /// The walk the datapath does, on real maps: slot 0's count, the slots, the backend.
    #[test]
    fn finds_a_backend_only_where_the_datapath_would() {
        privileged!();
        let dir = PinDir(Path::new("/sys/fs/bpf").join(unique_name("cbmw")));
        std::fs::create_dir(&dir.0).unwrap();
        SvcMap::create(16, 0)
            .unwrap()
            .pin(dir.0.join("cil_lb4_svc"))
            .unwrap();
        BeMap::create(16, 0)
            .unwrap()
            .pin(dir.0.join("cil_lb4_be"))
            .unwrap();
        let mut svc: SvcMap = open(&dir.0, "cil_lb4_svc").unwrap();
        let mut be: BeMap = open(&dir.0, "cil_lb4_be").unwrap();
        let want: SocketAddrV4 = "10.0.0.1:5001".parse().unwrap();
        assert!(!present(&svc, &be, key(0), &want), "no Service yet");

        let backend = |a: [u8; 4], port: u16| Lb4Backend {
            address: a,
            port: port.to_be_bytes(),
            proto: 6,
            state: 0,
        };
        be.insert(7, backend([10, 0, 0, 2], 5001), 0).unwrap();
        be.insert(8, backend([10, 0, 0, 1], 5001), 0).unwrap();
        let slot = |id| Lb4Service {
            backend_id: id,
            ..Default::default()
        };
        svc.insert(key(1), slot(7), 0).unwrap();
        svc.insert(key(2), slot(8), 0).unwrap();
        let head = |count| Lb4Service {
            count,
            rev_nat_index: 1,
            ..Default::default()
        };
        svc.insert(key(0), head(1), 0).unwrap();
        assert!(
            !present(&svc, &be, key(0), &want),
            "in slot 2, beyond the count: takes no new connections"
        );
        svc.insert(key(0), head(2), 0).unwrap();
        assert!(present(&svc, &be, key(0), &want));
        assert!(
            !present(&svc, &be, key(0), &"10.0.0.1:5002".parse().unwrap()),
            "other port"
        );
        assert!(
            !present(&svc, &be, key(0), &"10.0.0.3:5001".parse().unwrap()),
            "other address"
        );
        let other_vip = Lb4Key {
            address: [10, 96, 0, 2],
            ..key(0)
        };
        assert!(!present(&svc, &be, other_vip, &want), "other Service");

        // run(): renames first, then finds it; times out (an error) for one that never comes.
        let files = tempfile::tempdir().unwrap(); // bpffs holds no plain files
        let from = files.path().join("manifest.tmp");
        let to = files.path().join("manifest.yaml");
        std::fs::write(&from, "x").unwrap();
        let mut w = args(&dir.0, "10.0.0.1:5001");
        w.rename = Some(vec![from.clone(), to.clone()]);
        run(&w).unwrap();
        assert!(to.exists() && !from.exists(), "renamed");
        let e = run(&args(&dir.0, "10.0.0.9:5001")).unwrap_err().to_string();
        assert!(e.contains("10.0.0.9:5001 not present"), "{e}");
        let mut gone = args(&dir.0, "10.0.0.9:5001");
        gone.absent = true;
        run(&gone).unwrap();
        let e = run(&args(
            Path::new("/sys/fs/bpf/cb-no-such-dir"),
            "10.0.0.1:5001",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("cb-no-such-dir/cil_lb4_svc"), "{e}");
    }
}
