//! The world's DNS server: a real `dnsmasq` (Debian's `dnsmasq-base`, never the system
//! service) in the underlay namespace, answering names under [`DOMAIN`] with the world's
//! addresses, so that FQDN policies, the DNS proxy and the connectivity test have real
//! answers to work with: several A records, a CNAME chain, a short TTL, a wildcard domain,
//! and NXDOMAIN for every other name (it has no upstream: the lab is offline).
//!
//! Its configuration is written to the lab's state directory; nothing of the host's
//! (`/etc/dnsmasq.conf`, `/etc/hosts`, `/etc/resolv.conf`) is read. Pods resolve through it:
//! each pod namespace gets `/etc/netns/<netns>/resolv.conf` naming it, which `ip netns exec`
//! puts in place of `/etc/resolv.conf` (`ip netns exec <pod-netns> getent hosts NAME`); tools
//! run with `nsenter --net` ask it by address (`dig @172.31.0.1 NAME`).

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::layout::{Layout, GATEWAY_IP, WORLD2_IP};
use crate::{sys, Lab, LabError};

/// Where Debian's `dnsmasq-base` puts dnsmasq.
pub const DNSMASQ_BINARY: &str = "/usr/sbin/dnsmasq";
/// The address the server listens on (UDP and TCP port 53): the world's.
pub const DNS_IP: Ipv4Addr = GATEWAY_IP;
/// The domain it answers for; `.test` is reserved (RFC 2606), so no real name is shadowed.
pub const DOMAIN: &str = "ciliate.test";
/// The TTL of every name but [`SHORT_TTL_NAME`], in seconds.
pub const TTL: u32 = 300;
/// A name whose answer expires quickly (TTL expiry scenarios).
pub const SHORT_TTL_NAME: &str = "short.ciliate.test";
/// Its TTL, in seconds.
pub const SHORT_TTL: u32 = 2;
/// What the lab's record calls the server's process.
pub const PROCESS: &str = "dns-server";

/// One name the server answers, as `docs/lab.md` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A records (one per address), with a TTL.
    A {
        /// The name.
        name: &'static str,
        /// Its addresses.
        ips: Vec<Ipv4Addr>,
        /// Seconds.
        ttl: u32,
    },
    /// A CNAME to another name of the server.
    Cname {
        /// The alias.
        name: &'static str,
        /// What it points to.
        target: &'static str,
    },
    /// Every name under `domain` (and `domain` itself) has this address.
    Wildcard {
        /// The domain.
        domain: &'static str,
        /// The address.
        ip: Ipv4Addr,
    },
}

/// The names the world's server answers.
pub fn records() -> Vec<Record> {
    vec![
        Record::A {
            name: "world.ciliate.test",
            ips: vec![GATEWAY_IP],
            ttl: TTL,
        },
        Record::A {
            name: "world2.ciliate.test",
            ips: vec![WORLD2_IP],
            ttl: TTL,
        },
        Record::A {
            name: "multi.ciliate.test",
            ips: vec![GATEWAY_IP, WORLD2_IP],
            ttl: TTL,
        },
        Record::A {
            name: SHORT_TTL_NAME,
            ips: vec![WORLD2_IP],
            ttl: SHORT_TTL,
        },
        // alias → alias2 → world: a chain of two CNAMEs.
        Record::Cname {
            name: "alias.ciliate.test",
            target: "alias2.ciliate.test",
        },
        Record::Cname {
            name: "alias2.ciliate.test",
            target: "world.ciliate.test",
        },
        Record::Wildcard {
            domain: "s3.ciliate.test",
            ip: WORLD2_IP,
        },
    ]
}

/// What the server answers for `name` (no trailing dot): the addresses after following
/// CNAMEs, or none (NXDOMAIN). The connectivity test knows by it where a name it resolves
/// in a pod should lead.
pub fn resolve(name: &str) -> Vec<Ipv4Addr> {
    let records = records();
    let mut name = name.trim_end_matches('.').to_ascii_lowercase();
    // A chain is at most as long as the records (no loops in ours).
    for _ in 0..=records.len() {
        let mut next = None;
        for r in &records {
            match r {
                Record::A { name: n, ips, .. } if *n == name => return ips.clone(),
                Record::Cname { name: n, target } if *n == name => next = Some(*target),
                Record::Wildcard { domain, ip }
                    if name == *domain || name.ends_with(&format!(".{domain}")) =>
                {
                    return vec![*ip];
                }
                _ => {}
            }
        }
        match next {
            Some(t) => name = t.to_owned(),
            None => return Vec::new(),
        }
    }
    Vec::new()
}

/// dnsmasq's configuration: only our names, only on `listen`, no upstream (every other
/// name is NXDOMAIN), nothing read from the host.
pub fn config(listen: Ipv4Addr, records: &[Record]) -> String {
    let mut c = format!(
        "# Written by `ciliate lab up`: the lab's world DNS server.\n\
         no-resolv\nno-hosts\nno-poll\n\
         listen-address={listen}\nbind-interfaces\n\
         local-ttl={TTL}\n\
         # No upstream: names not below are answered NXDOMAIN.\n\
         local=/#/\n"
    );
    for r in records {
        match r {
            Record::A { name, ips, ttl } => {
                for ip in ips {
                    c.push_str(&format!("host-record={name},{ip},{ttl}\n"));
                }
            }
            Record::Cname { name, target } => {
                c.push_str(&format!("cname={name},{target}\n"));
            }
            Record::Wildcard { domain, ip } => {
                c.push_str(&format!("address=/{domain}/{ip}\n"));
            }
        }
    }
    c
}

/// Where the configuration goes.
pub fn config_path(layout: &Layout) -> PathBuf {
    layout.state_dir().join("dnsmasq.conf")
}

/// Where its log goes.
pub fn log_path(layout: &Layout) -> PathBuf {
    layout.state_dir().join("dnsmasq.log")
}

/// dnsmasq, or why the lab cannot run it.
pub fn binary() -> Result<PathBuf, LabError> {
    binary_at(Path::new(DNSMASQ_BINARY))
}

fn binary_at(path: &Path) -> Result<PathBuf, LabError> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(LabError::Prerequisite(format!(
            "dnsmasq is not installed ({} is missing): the lab's world DNS server is a real \
             dnsmasq. Install it with `apt-get install -y dnsmasq-base` (or run \
             scripts/install-deps)",
            path.display()
        )))
    }
}

/// The resolver configuration of a pod namespace, as `ip netns exec` looks for it.
pub fn pod_resolv_conf(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns).join("resolv.conf")
}

/// Makes pod namespace `netns` resolve through the world's server (for `ip netns exec`).
pub fn write_pod_resolv_conf(netns: &str) -> Result<(), LabError> {
    let path = pod_resolv_conf(netns);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(
        &path,
        format!("# Written by ciliate lab: the world's DNS server.\nnameserver {DNS_IP}\nsearch {DOMAIN}\n"),
    )
    .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// Removes what [`write_pod_resolv_conf`] wrote; absent is fine.
pub fn remove_pod_resolv_conf(netns: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(Path::new("/etc/netns").join(netns)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The `/etc/netns/` entries of lab namespaces (pods'), for `lab down`.
pub fn etc_netns_entries(layout: &Layout) -> Vec<PathBuf> {
    let prefix = layout.netns_prefix();
    let mut v: Vec<PathBuf> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether the server accepts connections (TCP 53) in the underlay.
pub fn answering(layout: &Layout) -> bool {
    let path = sys::netns_path(&layout.underlay_netns());
    sys::in_netns(path, || {
        TcpStream::connect_timeout(&(DNS_IP, 53).into(), Duration::from_millis(200)).is_ok()
    })
    .unwrap_or(false)
}

/// Writes the configuration and starts dnsmasq in the underlay, recorded as [`PROCESS`];
/// returns its pid once it answers.
pub fn start(lab: &mut Lab) -> Result<u32, LabError> {
    let program = binary()?;
    let conf = config_path(&lab.layout);
    std::fs::write(&conf, config(DNS_IP, &records()))
        .map_err(|e| LabError::io(format!("writing {}", conf.display()), e))?;
    let log = log_path(&lab.layout);
    let args = vec![
        "--keep-in-foreground".to_owned(),
        format!("--conf-file={}", conf.display()),
        // No pid file (the lab records the pid), no privilege drop (a `dnsmasq` user exists
        // only with the system package), log to stderr (our log file).
        "--pid-file=".to_owned(),
        "--user=root".to_owned(),
        "--log-facility=-".to_owned(),
    ];
    let netns = lab.layout.underlay_netns();
    let mut child = sys::spawn_daemon(lab.name(), &netns, &program, &args, &[], &log)?;
    let pid = child.id();
    lab.state.add_process(PROCESS, pid, Some(&netns));
    lab.save()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if answering(&lab.layout) {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Failed(format!(
                "dnsmasq in {netns} exited with {status}:\n{}",
                sys::tail(&log, 5)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "dnsmasq in {netns} does not answer on {DNS_IP}:53 after 10 s:\n{}",
                sys::tail(&log, 5)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_holds_every_record_and_nothing_of_the_host() {
        let c = config(DNS_IP, &records());
        for line in [
            "no-resolv",
            "no-hosts",
            "listen-address=172.31.0.1",
            "bind-interfaces",
            "local=/#/",
            "host-record=world.ciliate.test,172.31.0.1,300",
            "host-record=multi.ciliate.test,172.31.0.1,300",
            "host-record=multi.ciliate.test,172.31.0.2,300",
            "host-record=short.ciliate.test,172.31.0.2,2",
            "cname=alias.ciliate.test,alias2.ciliate.test",
            "cname=alias2.ciliate.test,world.ciliate.test",
            "address=/s3.ciliate.test/172.31.0.2",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing from:\n{c}");
        }
        // Every name is under the lab's domain.
        for r in records() {
            let name = match r {
                Record::A { name, .. } | Record::Cname { name, .. } => name,
                Record::Wildcard { domain, .. } => domain,
            };
            assert!(name.ends_with(DOMAIN), "{name}");
        }
    }

    #[test]
    fn names_resolve_as_the_server_answers_them() {
        assert_eq!(resolve("world.ciliate.test"), [GATEWAY_IP]);
        assert_eq!(resolve("World.Ciliate.Test."), [GATEWAY_IP]);
        assert_eq!(resolve("multi.ciliate.test"), [GATEWAY_IP, WORLD2_IP]);
        assert_eq!(resolve("alias.ciliate.test"), [GATEWAY_IP]);
        assert_eq!(resolve("a.b.s3.ciliate.test"), [WORLD2_IP]);
        assert_eq!(resolve("s3.ciliate.test"), [WORLD2_IP]);
        assert!(resolve("nope.ciliate.test").is_empty());
        assert!(resolve("xs3.ciliate.test").is_empty());
    }

    #[test]
    fn a_missing_dnsmasq_says_what_to_install() {
        let e = binary_at(Path::new("/nonexistent/dnsmasq")).expect_err("missing");
        assert!(e.to_string().contains("dnsmasq-base"), "{e}");
    }
}
