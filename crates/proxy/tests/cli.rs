//! `ciliate-proxy`'s flags: --help teaches, bad flags exit 2 with the reason.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ciliate-proxy"))
        .args(args)
        .output()
        .expect("run ciliate-proxy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn help_explains_inherited_sockets_and_the_control_socket() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "--listen",
        "egress:http=3",
        "--control-socket",
        "SIGTERM",
        "--bpf-pin-dir",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn bad_flags_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("ctl.sock");
    let ctl = ctl.to_str().expect("utf8");
    let cases: [(&[&str], &str); 6] = [
        (&["--control-socket", ctl], "--listen"),
        (&["--listen", "egress:http=7"], "--control-socket"),
        (
            &["--listen", "sideways:http=7", "--control-socket", ctl],
            "neither egress nor ingress",
        ),
        (
            &["--listen", "egress:kafka=7", "--control-socket", ctl],
            "unknown parser",
        ),
        (
            &["--listen", "egress:http=1", "--control-socket", ctl],
            "stdin/stdout/stderr",
        ),
        (
            &["--listen", "egress:http=987", "--control-socket", ctl],
            "not open",
        ),
    ];
    for (args, want) in cases {
        let (code, text) = run(args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(want), "{args:?}: wanted {want:?} in {text}");
    }
    // An open fd that is not a listening socket (a file).
    let (code, text) = {
        use std::os::fd::AsRawFd;
        let f = tempfile::tempfile().expect("file");
        let fd = f.as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciliate-proxy"));
        cmd.args([
            "--listen",
            &format!("egress:http={fd}"),
            "--control-socket",
            ctl,
        ]);
        // Keep the file open in the child.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let out = cmd.output().expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a listening TCP socket"), "{text}");
}

#[test]
fn dns_flags_are_explained_and_checked() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    for needle in ["egress:dns", "--dns-udp", "--dns-allow-timeout", "REFUSED"] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("ctl.sock");
    let ctl = ctl.to_str().expect("utf8");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--listen", "ingress:dns=7", "--control-socket", ctl],
            "DNS is egress only",
        ),
        (
            &[
                "--listen",
                "egress:http=7",
                "--dns-udp",
                "7",
                "--control-socket",
                ctl,
            ],
            "fd 7 given twice",
        ),
        (
            &["--listen", "egress:dns=987", "--control-socket", ctl],
            "not open",
        ),
        (
            &[
                "--listen",
                "egress:http=3",
                "--dns-allow-timeout",
                "soon",
                "--control-socket",
                ctl,
            ],
            "--dns-allow-timeout",
        ),
    ];
    for (args, want) in cases {
        let (code, text) = run(args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(want), "{args:?}: wanted {want:?} in {text}");
    }
    // An open fd that is not a UDP socket (a file) as --dns-udp.
    let (code, text) = {
        use std::os::fd::AsRawFd;
        let f = tempfile::tempfile().expect("file");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let (fd, lfd) = (f.as_raw_fd(), l.as_raw_fd());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciliate-proxy"));
        cmd.args([
            "--listen",
            &format!("egress:http={lfd}"),
            "--dns-udp",
            &fd.to_string(),
            "--control-socket",
            ctl,
        ]);
        // SAFETY: only fcntl between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::fcntl(fd, libc::F_SETFD, 0);
                libc::fcntl(lfd, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let out = cmd.output().expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a UDP socket"), "{text}");
}

/// `--dns-sched-slice`: out of the kernel's bounds exits 2 with them; in bounds, the running
/// proxy's main thread (the DNS thread) has that slice (Linux 6.12+, which reports a thread's
/// slice in /proc; older kernels have no custom slice and only the log line is checked).
#[test]
fn the_dns_threads_scheduler_slice_is_checked_and_set() {
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("ctl.sock");
    let ctl = ctl.to_str().expect("utf8");
    for bad in ["50us", "1s"] {
        let (code, text) = run(&[
            "--listen",
            "egress:http=3",
            "--dns-sched-slice",
            bad,
            "--control-socket",
            ctl,
        ]);
        assert_eq!(code, 2, "{bad}: {text}");
        assert!(text.contains("between 100µs and 100ms"), "{bad}: {text}");
    }

    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let lfd = l.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciliate-proxy"));
    cmd.args([
        "--listen",
        &format!("egress:http={lfd}"),
        "--dns-sched-slice",
        "300us",
        "--control-socket",
        ctl,
    ])
    .stderr(Stdio::piped());
    // SAFETY: only fcntl between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::fcntl(lfd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().expect("stderr");
    let child = Kill(child);
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        // Either outcome ends the wait (the warning fails the assertion below instead of
        // leaving the test reading a running proxy's stderr forever).
        let set = line.contains("scheduler slice") || line.contains("--dns-sched-slice:");
        seen.push(line);
        if set {
            break;
        }
    }
    let last = seen.last().cloned().unwrap_or_default();
    assert!(
        last.contains("the DNS thread's scheduler slice is set"),
        "{seen:#?}"
    );
    let pid = child.0.id();
    let sched = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/sched")).expect("sched");
    match sched.lines().find(|l| l.starts_with("se.slice")) {
        Some(l) if kernel_at_least(6, 12) => assert_eq!(
            l.rsplit(':').next().map(str::trim),
            Some("300000"),
            "the main thread's {l}"
        ),
        _ => eprintln!("a kernel before 6.12 has no custom slice: the slice is not compared"),
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let a: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let b: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (a, b) >= (major, minor)
}
