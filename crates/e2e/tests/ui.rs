//! `ciliate ui` end to end, in a real headless Chromium: a one-node lab with the demo app
//! (frontend-0, backend-0, Service demo/backend), traffic from the frontend to the Service,
//! the page drawing frontend → Service → backend; then a policy denying frontends, traffic
//! again, and the page drawing a red dropped connection. Screenshots go to the test's output
//! directory (printed). Needs root, etcd, dnsmasq and Debian's `chromium`; skips loudly
//! without them, except with `CILIATE_REQUIRE_PRIVILEGED=1` (CI), where a skip fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ciliate_testutil::etcd::etcd_installed;
use ciliate_testutil::{privileged, privileged_required};
use common::lab::LabGuard;
use common::{bin, ciliate, text};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium_installed() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    let why =
        format!("{CHROMIUM} is not installed (scripts/install-deps installs Debian's chromium)");
    if privileged_required() {
        panic!("ui test cannot run: {why} and CILIATE_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("\n!!! SKIPPED ui test: {why}. !!!\n");
    false
}

/// `ciliate ui` for the lab, killed on drop.
struct UiServer {
    child: Child,
    url: String,
}

impl UiServer {
    fn start(lab: &str) -> Self {
        Self::start_with(&["--lab", lab])
    }

    fn start_with(source: &[&str]) -> Self {
        let mut child = Command::new(bin("ciliate"))
            .args(["ui", "--address", "127.0.0.1:0"])
            .args(source)
            .env_remove("CILIATE_HUBBLE_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ciliate ui");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ciliate ui's first line");
        // "Service map of unix:///.../node0/hubble.sock (lab ..., ...-node0) at http://127.0.0.1:N/  (Ctrl-C to stop)"
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        Self { child, url }
    }

    /// GET of a path of the UI, as JSON (a plain HTTP/1.1 request: this crate has no client).
    fn get(&self, path: &str) -> Value {
        let hostport = self.url.trim_start_matches("http://").trim_end_matches('/');
        let mut s = TcpStream::connect(hostport).expect("connect to the UI");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response");
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where this test's screenshots go: `target/e2e-output/ui-<pid>/`.
fn output_dir() -> PathBuf {
    let dir = bin("ciliate")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("e2e-output")
        .join(format!("ui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("output dir");
    dir
}

/// Headless Chromium on `url`: the DOM after the page's scripts ran, and a screenshot. The
/// page is loaded with `live=0` (no event stream): Chromium's virtual time only runs out when
/// the network is idle, which a live stream never is.
fn chromium(url: &str, screenshot: &Path, profile: &Path) -> String {
    let page = format!("{url}?live=0");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1600,1000",
        "--virtual-time-budget=10000",
    ];
    let run = |extra: &[String]| {
        let out = Command::new(CHROMIUM)
            .args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&page)
            .stdin(Stdio::null())
            .output()
            .expect("run chromium");
        assert!(out.status.success(), "chromium: {}", text(&out));
        out
    };
    let dom = run(&["--dump-dom".to_owned()]);
    run(&[format!("--screenshot={}", screenshot.display())]);
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    println!("screenshot: {}", screenshot.display());
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// Headless Chromium showing the live page (with its event stream), for as long as it lives:
/// its console lines go to a file the test reads. It runs in a session of its own, and its
/// whole process group (zygote, renderer, GPU helper) is stopped on drop.
struct LiveBrowser {
    child: Child,
    log: PathBuf,
}

impl LiveBrowser {
    fn open(url: &str, dir: &Path) -> Self {
        let log = dir.join("live-chromium.log");
        let child = Command::new("setsid")
            .arg(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                "--remote-debugging-port=0",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.join("live-profile").display()
            ))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("chromium log"))
            .spawn()
            .expect("start chromium");
        Self { child, log }
    }

    /// The page's console lines so far (`ciliate-ui ...`).
    fn console(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .collect()
    }

    /// Waits (up to a minute) for a console line `ok` accepts.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        for _ in 0..600 {
            if let Some(l) = self.console().into_iter().find(|l| ok(l)) {
                return l;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the live page never showed {what}; its console: {:#?}",
            self.console()
        );
    }
}

impl Drop for LiveBrowser {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let group = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = killpg(group, Signal::SIGTERM);
        for _ in 0..50 {
            if killpg(group, None).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// How many connections with drops a `ciliate-ui map: ...` console line reports.
fn drops_in(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("ciliate-ui map: ")?;
    rest.split(", ")
        .find_map(|p| p.strip_suffix(" with drops"))
        .and_then(|n| n.parse().ok())
}

/// `ciliate-bench probe` from a pod to the Service: how many connections answered.
fn probe_service(netns: &str, count: &str) -> Value {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .arg(bin("ciliate-bench"))
        .args([
            "probe",
            "--dst",
            "10.96.0.10",
            "--port",
            "80",
            "--count",
            count,
        ])
        .output()
        .expect("run the probe");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe JSON ({e}): {}", text(&out)))
}

fn edges(snapshot: &Value) -> impl Iterator<Item = &Value> {
    snapshot["graph"]["edges"].as_array().into_iter().flatten()
}

fn has_edge(snapshot: &Value, from: &str, to: &str) -> bool {
    edges(snapshot).any(|e| e["from"] == from && e["to"] == to)
}

/// An edge out of the frontends with drops (to the Service or straight to the backends).
fn dropped_edge(snapshot: &Value) -> Option<&Value> {
    edges(snapshot).find(|e| {
        e["dropped"].as_u64().unwrap_or(0) > 0
            && (e["from"] == "w:demo/frontend" || e["from"] == "s:demo/backend")
    })
}

#[test]
fn the_service_map_shows_the_demo_and_a_dropped_connection() {
    privileged!();
    if !etcd_installed("ui test") || !chromium_installed() {
        return;
    }
    let lab = LabGuard::up(&["--nodes", "1", "--pods-per-node", "2"]);
    let status: Value = serde_json::from_slice(
        &ciliate(&["lab", "status", "--name", &lab.name, "-o", "json"]).stdout,
    )
    .expect("lab status JSON");
    let frontend = status["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pod"] == "demo/frontend-0")
        .and_then(|p| p["netns"].as_str())
        .unwrap_or_else(|| panic!("no frontend-0 in {status:#}"))
        .to_owned();
    let ui = UiServer::start(&lab.name);
    // By default the lab's relay (every node's flows), node0 for a lab without one.
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/lab.json", lab.state_dir())).expect("lab.json"),
    )
    .expect("lab.json is JSON");
    let expected = match record["relay"]["socket"].as_str() {
        Some(relay) => format!("unix://{relay}"),
        None => format!(
            "unix://{}",
            record["nodes"][0]["hubbleSocket"].as_str().unwrap_or("?")
        ),
    };
    assert_eq!(ui.get("/api/status")["source"], expected.as_str());
    println!("following {expected}");
    let out = output_dir();
    let profile = tempfile::tempdir().expect("chromium profile");

    // Frontend → Service → backend, allowed by the demo's policy.
    let v = probe_service(&frontend, "4");
    assert!(
        v.to_string().contains("backend-0"),
        "the Service answers: {v}"
    );
    let mut snap = Value::Null;
    for _ in 0..100 {
        snap = ui.get("/api/snapshot?namespace=demo");
        if has_edge(&snap, "w:demo/frontend", "s:demo/backend")
            && has_edge(&snap, "s:demo/backend", "w:demo/backend")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        has_edge(&snap, "w:demo/frontend", "s:demo/backend"),
        "frontend -> Service: {snap:#}"
    );
    let dom = chromium(&ui.url, &out.join("1-demo.png"), profile.path());
    for box_id in ["w:demo/frontend", "s:demo/backend", "w:demo/backend"] {
        assert!(
            dom.contains(&format!("data-id=\"{box_id}\"")),
            "the page draws {box_id}:\n{dom}"
        );
    }
    for (from, to) in [
        ("w:demo/frontend", "s:demo/backend"),
        ("s:demo/backend", "w:demo/backend"),
    ] {
        assert!(
            dom.contains(&format!(
                "class=\"edge forwarded\" data-from=\"{from}\" data-to=\"{to}\" data-verdict=\"forwarded\" data-protocol=\"TCP\" data-port=\"8080\""
            )),
            "the page draws {from} -> {to}, forwarded on TCP/8080:\n{dom}"
        );
    }
    assert!(dom.contains("namespace demo"), "the demo's area:\n{dom}");
    assert!(dom.contains("frontend-0"), "the flow table:\n{dom}");

    // The live page (event stream, no virtual time), as a user keeps it open.
    let live = LiveBrowser::open(&format!("{}?namespace=demo", ui.url), profile.path());
    let first = live.wait_for("the demo's map", |l| drops_in(l) == Some(0));
    println!("live page: {first}");

    // A policy denying the frontends, through the lab's manifest directory (every node).
    let deny = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: ui-test-deny\n  namespace: demo\nspec:\n  endpointSelector:\n    matchLabels:\n      app: backend\n  ingressDeny:\n  - fromEndpoints:\n    - matchLabels:\n        app: frontend\n";
    std::fs::write(
        format!("{}/manifests/ui-test-deny.yaml", lab.state_dir()),
        deny,
    )
    .expect("write the policy");
    let mut dropped = None;
    for _ in 0..30 {
        probe_service(&frontend, "1");
        let s = ui.get("/api/snapshot?namespace=demo");
        if let Some(e) = dropped_edge(&s) {
            dropped = Some(e.clone());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let dropped = dropped.expect("a dropped connection out of the frontends within 30 probes");
    println!("dropped connection: {dropped}");
    // The deciding policy, from the flows' ingress_denied_by.
    assert_eq!(
        dropped["deniedBy"],
        serde_json::json!(["demo/ui-test-deny"]),
        "{dropped:#}"
    );
    // The open page got it through its event stream, without a reload.
    let update = live.wait_for("a connection with drops", |l| {
        drops_in(l).is_some_and(|n| n > 0)
    });
    println!("live page: {update}");
    drop(live);
    assert!(
        dropped["dropReasons"].as_array().is_some_and(|r| r
            .iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains("Policy denied")))),
        "{dropped:#}"
    );
    let dom = chromium(&ui.url, &out.join("2-dropped.png"), profile.path());
    let (from, to) = (
        dropped["from"].as_str().unwrap_or_default(),
        dropped["to"].as_str().unwrap_or_default(),
    );
    let verdict = dropped["verdict"].as_str().unwrap_or_default();
    assert!(
        dom.contains(&format!(
            "class=\"edge {verdict}\" data-from=\"{from}\" data-to=\"{to}\" data-verdict=\"{verdict}\""
        )),
        "the page draws {from} -> {to} as {verdict}:\n{dom}"
    );
    assert!(
        dom.contains("marker-end=\"url(#arrow-drop)\""),
        "a red arrow:\n{dom}"
    );
    assert!(dom.contains("Policy denied"), "the table says why:\n{dom}");
    assert!(
        dom.contains("dropped by demo/ui-test-deny"),
        "the connection names the policy:\n{dom}"
    );

    // A bad filter in the URL: the page says which and why.
    let bad = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{}?live=0&verdict=maybe", ui.url))
        .output()
        .expect("run chromium");
    let bad = String::from_utf8_lossy(&bad.stdout);
    assert!(
        bad.contains("filter verdict=\"maybe\"")
            || bad.contains("filter verdict=&quot;maybe&quot;"),
        "the page shows the filter error:\n{bad}"
    );
}

/// No flow source: the page says which and why (and the UI keeps retrying), no root needed.
#[test]
fn the_page_says_when_the_flow_source_is_unreachable() {
    if !chromium_installed() {
        return;
    }
    let ui = UiServer::start_with(&[
        "--hubble-socket",
        "/nonexistent/ciliate-ui-test/hubble.sock",
    ]);
    for _ in 0..100 {
        if ui.get("/api/status")["state"] == "error" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tempfile::tempdir().expect("chromium profile");
    let dom = chromium(
        &ui.url,
        &output_dir().join("3-no-source.png"),
        profile.path(),
    );
    assert!(
        dom.contains("Flow source: cannot reach the observer at unix:///nonexistent/ciliate-ui-test/hubble.sock"),
        "the page names the source and why:\n{dom}"
    );
    assert!(dom.contains("No flows yet"), "an empty map says so:\n{dom}");
}
