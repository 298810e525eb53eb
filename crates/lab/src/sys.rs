//! The few things the lab asks of the system: `ip` for namespaces, links and addresses (as an
//! operator would type them, and what the quickstart did), processes started in a namespace
//! with `nsenter`, `/proc` to find processes again, and entering a namespace on a thread of
//! our own for probes.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::layout::LAB_ENV;
use crate::LabError;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The path of named namespace `netns`, as a runtime passes it in `CNI_NETNS`.
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

/// Runs `program args`, failing with its standard error. It runs in a process group of its
/// own: a Ctrl-C at the terminal is for `ciliate`, which then rolls back between two steps;
/// killing the step half-way would only turn an interruption into a failure.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| LabError::io(format!("running {program}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: command_line(program, args),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn command_line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// `ip -n <netns> <args>`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Makes a named namespace with loopback up.
pub fn add_netns(netns: &str) -> Result<(), LabError> {
    ip(&["netns", "add", netns])?;
    ip_in(netns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named namespace (its interfaces, and their veth peers, go with it).
pub fn delete_netns(netns: &str) -> Result<(), LabError> {
    ip(&["netns", "delete", netns]).map(drop)
}

/// The named namespaces there are.
pub fn list_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Sets a sysctl inside `netns` (e.g. `net.ipv4.ip_forward=1`), through `sysctl -w` in it.
pub fn sysctl_in(netns: &str, setting: &str) -> Result<(), LabError> {
    let path = netns_path(netns);
    run(
        "nsenter",
        &[
            &format!("--net={}", path.display()),
            "sysctl",
            "-q",
            "-w",
            setting,
        ],
    )
    .map(drop)
}

/// A command that runs `program` inside `netns`, carrying `CILIATE_LAB=<lab>` so that it can
/// be found again. The caller adds arguments, environment and output.
pub fn command_in(lab: &str, netns: &str, program: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns_path(netns).display()))
        .arg(program)
        .env(LAB_ENV, lab)
        .stdin(Stdio::null())
        // See `run`: a terminal's Ctrl-C is ours to handle, not the step's.
        .process_group(0);
    c
}

/// Starts a daemon in `netns` with its output appended to `log`. It gets a process group of
/// its own, so a Ctrl-C meant for the `ciliate` command that started it does not reach it.
pub fn spawn_daemon(
    lab: &str,
    netns: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Child, LabError> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let mut cmd = command_in(lab, netns, program);
    cmd.args(args).stdout(out).stderr(err).process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .map_err(|e| LabError::io(format!("starting {} in {netns}", program.display()), e))
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Where cgroup v2 is mounted, if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// Whether a BPF filesystem is mounted at `/sys/fs/bpf`.
pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
        })
    })
}

/// Every process id there is.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// A process's command line, arguments joined by spaces (empty for kernel threads and
/// processes that are gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Whether a process's environment holds exactly `key=value`.
pub fn has_env(pid: u32, key: &str, value: &str) -> bool {
    let want = format!("{key}={value}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|b| b.split(|c| *c == 0).any(|v| v == want.as_bytes()))
}

/// The inode of a process's network namespace.
pub fn netns_inode_of_pid(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The inode of named namespace `netns` (what `/proc/<pid>/ns/net` of its processes shows).
pub fn netns_inode(netns: &str) -> Option<u64> {
    std::fs::metadata(netns_path(netns)).ok().map(|m| m.ino())
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The process's parent.
pub fn parent(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// This process and its ancestors: never to be killed by the lab.
pub fn self_and_ancestors() -> Vec<u32> {
    let mut out = vec![std::process::id()];
    while let Some(p) = out.last().copied().and_then(parent) {
        if p == 0 || out.contains(&p) {
            break;
        }
        out.push(p);
    }
    out
}

/// Sends SIGTERM to `pids`, waits up to `grace` for them to end, then SIGKILLs the rest and
/// waits for those. Returns the ones still alive at the end.
pub fn terminate(pids: &[u32], grace: Duration) -> Vec<u32> {
    let signal = |sig| {
        for p in pids {
            if let Ok(raw) = i32::try_from(*p) {
                let _ = kill(Pid::from_raw(raw), sig);
            }
        }
    };
    let wait = |until: Instant| loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= until {
            return alive;
        }
        thread::sleep(Duration::from_millis(50));
    };
    signal(Signal::SIGTERM);
    if wait(Instant::now() + grace).is_empty() {
        return Vec::new();
    }
    signal(Signal::SIGKILL);
    wait(Instant::now() + Duration::from_secs(5))
}

/// Runs `f` on a new thread inside the namespace at `path` and returns its result. The thread
/// switches in before `f` and ends after it, so no other code ever runs in that namespace.
pub fn in_netns<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LabError> {
    thread::spawn(move || {
        let ns = File::open(&path)
            .map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            LabError::io(
                format!("entering {}", path.display()),
                std::io::Error::from(e),
            )
        })?;
        Ok(f())
    })
    .join()
    .map_err(|_| LabError::Failed("a thread inside a namespace panicked".into()))?
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_found() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(pids().contains(&me));
        assert!(!cmdline(me).is_empty());
        assert!(self_and_ancestors().starts_with(&[me]));
        assert!(!is_alive(u32::MAX));
    }
}
