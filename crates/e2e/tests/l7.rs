//! HTTP policy end to end: the real agent, CNI plugin, `ciliate-proxy` and CLI; pods in network
//! namespaces; `curl` in the client pod against a small HTTP/1.1 server in the server pod.
//! Every request really crosses `bpf/lxc.c`, the redirect to the proxy's transparent socket and
//! the proxy's upstream connection; the verdicts are checked at the client (status code, body),
//! and in the L7 flows `ciliate observe` reports.

mod common;

use std::process::Command;
use std::thread;
use std::time::Duration;

use ciliate_testutil::privileged;
use common::{eventually, Node, Pod};
use serde_json::Value;

/// `curl` from the pod: (status code, body) per URL, all on one connection when several are
/// given; `None` when no HTTP answer came (connection refused, dropped or reset).
fn curl(pod: &Pod, args: &[&str]) -> Option<Vec<(u16, String)>> {
    let out = pod
        .netns
        .command("curl")
        .args(["-sS", "--max-time", "3", "-w", "##%{http_code}##"])
        .args(args)
        .output()
        .expect("run curl");
    if !out.status.success() {
        eprintln!(
            "curl {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    // Each transfer prints its body, then ##code## (a format starting with @ would name a file).
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pieces: Vec<&str> = text.split("##").collect();
    Some(
        pieces
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[1].parse().unwrap_or(0), c[0].trim().to_owned()))
            .collect(),
    )
}

fn get(pod: &Pod, url: &str) -> Option<(u16, String)> {
    curl(pod, &[url]).and_then(|mut v| v.pop())
}

/// The L7 flows the node's observer holds, as `ciliate observe --type l7 -o json` prints them
/// (Hubble's JSON: the GetFlowsResponse with proto field names).
fn l7_flows(node: &Node) -> Vec<Value> {
    node.observe(&["--type", "l7", "--last", "1000"])
        .into_iter()
        .map(|v| {
            if v.get("flow").is_some() {
                v["flow"].clone()
            } else {
                v
            }
        })
        .collect()
}

/// A response flow's latency (a uint64, so a string in proto JSON).
fn latency_ns(flow: &Value) -> u64 {
    let l = &flow["l7"]["latency_ns"];
    l.as_u64()
        .or_else(|| l.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// `status -o json`'s proxy section (whatever the node's health: the exit code says that).
fn proxy_status(node: &Node) -> Value {
    let out = node.cli(&["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status -o json ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    status["proxy"].clone()
}

const INGRESS_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public(/.*)?"}
        - {method: PUT, path: "/upload", headers: ["X-Token: yes"]}
"#;

#[test]
fn http_rules_on_a_pods_ingress_are_enforced_by_the_proxy() {
    privileged!();
    let node = Node::start("10.231.0.0/24");
    let client = node.add_pod("client", "app=client");
    let other = node.add_pod("other", "app=other");
    let web = node.add_pod("web", "app=web");
    let _web_80 = node.http_server(&web, 80);
    // No policy yet: plain forwarding, the proxy is not involved.
    let base = format!("http://{}", web.ip);
    assert_eq!(
        get(&client, &format!("{base}/private")).map(|r| r.0),
        Some(200)
    );

    node.apply("web-l7.yaml", INGRESS_POLICY);
    eventually("the policy reaches the proxy", || {
        get(&client, &format!("{base}/private")).map(|r| r.0) == Some(403)
    });

    let (code, body) = get(&client, &format!("{base}/public/a")).expect("answer");
    assert_eq!((code, body.as_str()), (200, "web GET /public/a"));
    let (code, body) = get(&client, &format!("{base}/private")).expect("answer");
    assert_eq!(code, 403);
    assert_eq!(body, "Access denied", "Cilium's body of a denied request");
    // The path regex is anchored: a prefix match is not enough.
    assert_eq!(
        get(&client, &format!("{base}/publicity")).map(|r| r.0),
        Some(403)
    );
    // Method and header rules.
    assert_eq!(
        curl(&client, &["-X", "POST", &format!("{base}/public")]).map(|v| v[0].0),
        Some(403)
    );
    assert_eq!(
        curl(&client, &["-X", "PUT", &format!("{base}/upload")]).map(|v| v[0].0),
        Some(403)
    );
    assert_eq!(
        curl(
            &client,
            &["-X", "PUT", "-H", "X-Token: yes", &format!("{base}/upload")]
        )
        .map(|v| v[0].0),
        Some(200)
    );
    // A denied request leaves the connection usable: curl reuses it for the next URL.
    let both = curl(
        &client,
        &[&format!("{base}/private"), &format!("{base}/public")],
    )
    .expect("answers");
    assert_eq!(
        both.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![403, 200],
        "{both:?}"
    );
    // A pod the policy does not admit at all is dropped in the kernel, before any proxy.
    assert_eq!(get(&other, &format!("{base}/public")), None);

    // Every request is an L7 flow with both pods named and the verdict.
    eventually("L7 flows of the requests", || {
        let flows = l7_flows(&node);
        let has = |path: &str, verdict: &str| {
            flows.iter().any(|f| {
                f["l7"]["type"] == "REQUEST"
                    && f["l7"]["http"]["url"]
                        .as_str()
                        .is_some_and(|u| u.ends_with(path))
                    && f["verdict"] == verdict
                    && f["source"]["pod_name"] == "client"
                    && f["destination"]["pod_name"] == "web"
            })
        };
        has("/public/a", "FORWARDED") && has("/private", "DROPPED")
    });
    let flows = l7_flows(&node);
    assert!(
        flows.iter().any(|f| f["l7"]["type"] == "RESPONSE"
            && f["l7"]["http"]["code"] == 200
            && latency_ns(f) > 0),
        "a response flow with its latency: {flows:#?}"
    );
    // The allowed request names the policy whose rule allowed it; the refused one none.
    let allowed_by = |f: &Value| -> Vec<String> {
        let list = f
            .get("ingress_allowed_by")
            .unwrap_or(&f["ingressAllowedBy"]);
        list.as_array()
            .map(|l| {
                l.iter()
                    .map(|p| format!("{}/{} {}", p["namespace"], p["name"], p["kind"]))
                    .collect()
            })
            .unwrap_or_default()
    };
    let request = |path: &str| {
        flows
            .iter()
            .find(|f| {
                f["l7"]["type"] == "REQUEST"
                    && f["l7"]["http"]["url"]
                        .as_str()
                        .is_some_and(|u| u.ends_with(path))
            })
            .unwrap_or_else(|| panic!("no request for {path}: {flows:#?}"))
    };
    assert_eq!(
        allowed_by(request("/public/a")),
        ["\"default\"/\"web-l7\" \"CiliumNetworkPolicy\""]
    );
    assert!(allowed_by(request("/private")).is_empty());

    let status = proxy_status(&node);
    assert_eq!(status["up"], true, "{status}");
}

const EGRESS_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/api/.*"}]
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
"#;

#[test]
fn http_rules_on_a_pods_egress_are_enforced_and_other_ports_skip_the_proxy() {
    privileged!();
    let node = Node::start("10.232.0.0/24");
    let client = node.add_pod("client", "app=client");
    let web = node.add_pod("web", "app=web");
    let _web_80 = node.http_server(&web, 80);
    let _web_8080 = node.http_server(&web, 8080);
    node.apply("client-l7.yaml", EGRESS_POLICY);
    let base = format!("http://{}", web.ip);
    eventually("the policy reaches the proxy", || {
        get(&client, &format!("{base}/api/x")).map(|r| r.0) == Some(200)
    });
    assert_eq!(
        get(&client, &format!("{base}/admin")).map(|r| r.0),
        Some(403)
    );
    // The proxy reports its counters every second while they change: let them settle.
    thread::sleep(Duration::from_millis(1500));
    let before = proxy_status(&node);
    // Port 8080 is allowed at L4 only: it never detours through the proxy.
    for _ in 0..5 {
        assert_eq!(
            get(&client, &format!("http://{}:8080/admin", web.ip)).map(|r| r.0),
            Some(200)
        );
    }
    thread::sleep(Duration::from_millis(1500));
    let after = proxy_status(&node);
    assert_eq!(
        (&before["requests"], &before["redirectedPackets"]),
        (&after["requests"], &after["redirectedPackets"]),
        "L4-only connections went through the proxy: {before} -> {after}"
    );
    assert!(
        before["redirectedPackets"].as_u64() > Some(0),
        "the HTTP requests before were redirected: {before}"
    );
    eventually("an egress L7 flow", || {
        l7_flows(&node).iter().any(|f| {
            f["traffic_direction"] == "EGRESS"
                && f["l7"]["http"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/admin"))
                && f["verdict"] == "DROPPED"
        })
    });
}

#[test]
fn killing_or_stopping_the_proxy_refuses_no_connection() {
    privileged!();
    let node = Node::start("10.233.0.0/24");
    let client = node.add_pod("client", "app=client");
    let web = node.add_pod("web", "app=web");
    let _web_80 = node.http_server(&web, 80);
    node.apply("web-l7.yaml", INGRESS_POLICY);
    let url = format!("http://{}/public", web.ip);
    eventually("the policy reaches the proxy", || {
        get(&client, &format!("http://{}/private", web.ip)).map(|r| r.0) == Some(403)
    });
    let pid = |node: &Node| proxy_status(node)["pid"].as_u64();
    let first = pid(&node).expect("the proxy's pid in status");
    let load = HttpLoad::start(&client, &url);
    thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        replace_proxy(&node, nix::sys::signal::Signal::SIGKILL);
    }
    let (ok, in_flight, failed) = load.stop();
    assert!(ok > 0);
    assert!(
        in_flight <= 3,
        "more requests died than the three kills had in flight: {in_flight}"
    );
    assert!(
        failed.is_empty(),
        "requests failed while the proxy was killed ({ok} ok): {failed:?}"
    );
    assert_ne!(pid(&node), Some(first));
    assert!(proxy_status(&node)["restarts"].as_u64() >= Some(3));

    // SIGTERM (what an upgrade or `systemctl stop` sends): the proxy finishes what it serves
    // and goes; nothing fails at all.
    let load = HttpLoad::start(&client, &url);
    thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        replace_proxy(&node, nix::sys::signal::Signal::SIGTERM);
    }
    let (ok, in_flight, failed) = load.stop();
    assert!(ok > 0);
    assert_eq!(
        (in_flight, failed.len()),
        (0, 0),
        "requests failed while the proxy was stopped with SIGTERM: {failed:?}"
    );
}

/// Sends `signal` to the node's proxy and waits until another one serves (then half a second
/// more, so the load runs against the new one for a while).
fn replace_proxy(node: &Node, signal: nix::sys::signal::Signal) {
    let pid = |node: &Node| proxy_status(node)["pid"].as_u64();
    let old = pid(node).expect("the proxy's pid in status");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), signal)
        .unwrap_or_else(|e| panic!("{signal} to the proxy: {e}"));
    eventually("a new proxy", || pid(node).is_some_and(|n| n != old));
    thread::sleep(Duration::from_millis(500));
}

/// `curl` in a loop from a pod, one connection per request, until stopped.
struct HttpLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<(u32, u32, Vec<String>)>,
}

impl HttpLoad {
    fn start(client: &Pod, url: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let url = url.to_owned();
        let netns = client.netns.path();
        let thread = thread::spawn(move || {
            let (mut ok, mut in_flight, mut failed) = (0u32, 0u32, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("nsenter")
                    .arg(format!("--net={netns}"))
                    .args(["curl", "-s", "-o", "/dev/null", "--max-time", "5"])
                    .args(["-w", "%{http_code}", &url])
                    .output()
                    .expect("curl");
                let code = String::from_utf8_lossy(&out.stdout).into_owned();
                match (out.status.code(), code.as_str()) {
                    (Some(0), "200") => ok += 1,
                    // The request a killed proxy was serving dies with it (curl: empty reply
                    // 52, receive error 56): that much kill -9 cannot spare.
                    (Some(52 | 56), _) => in_flight += 1,
                    // Refused (7), timed out (28) or anything else: a connection lost.
                    (rc, _) => failed.push(format!("curl exit {rc:?}, HTTP {code}")),
                }
            }
            (ok, in_flight, failed)
        });
        Self { stop, thread }
    }

    /// (answered 200, died in flight, failed otherwise).
    fn stop(self) -> (u32, u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

#[test]
fn restarting_the_agent_leaves_the_proxy_serving() {
    privileged!();
    let mut node = Node::start("10.234.0.0/24");
    let client = node.add_pod("client", "app=client");
    let web = node.add_pod("web", "app=web");
    let _web_80 = node.http_server(&web, 80);
    node.apply("web-l7.yaml", INGRESS_POLICY);
    let base = format!("http://{}", web.ip);
    eventually("the policy reaches the proxy", || {
        get(&client, &format!("{base}/private")).map(|r| r.0) == Some(403)
    });
    let pid = proxy_status(&node)["pid"]
        .as_u64()
        .expect("the proxy's pid");
    let load = HttpLoad::start(&client, &format!("{base}/public"));
    thread::sleep(Duration::from_millis(300));
    // The worst case: the agent killed outright, then started again.
    node.kill_agent();
    thread::sleep(Duration::from_millis(500));
    node.start_agent();
    thread::sleep(Duration::from_millis(500));
    let (ok, in_flight, failed) = load.stop();
    assert!(ok > 0);
    assert_eq!(
        (in_flight, failed.len()),
        (0, 0),
        "requests failed across the agent's restart: {failed:?}"
    );
    // The new agent adopted the same proxy and drives it: a policy change reaches it.
    eventually("the new agent reports the proxy", || {
        proxy_status(&node)["pid"].as_u64() == Some(pid)
    });
    node.apply(
        "web-l7.yaml",
        &INGRESS_POLICY.replace("/public(/.*)?", "/(public|private)(/.*)?"),
    );
    eventually("the new policy reaches the adopted proxy", || {
        get(&client, &format!("{base}/private")).map(|r| r.0) == Some(200)
    });
}

#[test]
fn a_new_pod_under_http_rules_is_judged_from_its_first_request() {
    privileged!();
    let node = Node::start("10.235.0.0/24");
    // The policy first: the proxy starts with the first pod it selects, and that pod's ADD
    // returns once the proxy has its rules.
    node.apply("web-l7.yaml", INGRESS_POLICY);
    let client = node.add_pod("client", "app=client");
    let web = node.add_pod("web", "app=web");
    let _web_80 = node.http_server(&web, 80);
    let base = format!("http://{}", web.ip);
    assert_eq!(
        get(&client, &format!("{base}/private")).map(|r| r.0),
        Some(403)
    );
    assert_eq!(
        get(&client, &format!("{base}/public")).map(|r| r.0),
        Some(200)
    );
}

#[test]
fn without_a_proxy_http_rules_fail_closed_and_status_says_why() {
    privileged!();
    // A proxy binary that cannot run: the listeners exist, nobody serves them.
    let node = Node::start_with(
        "10.236.0.0/24",
        &["--proxy-bin", "/nonexistent/ciliate-proxy"],
    );
    let client = node.add_pod("client", "app=client");
    let web = node.add_pod("web", "app=web");
    let _web_80 = node.http_server(&web, 80);
    let base = format!("http://{}", web.ip);
    assert_eq!(
        get(&client, &format!("{base}/public")).map(|r| r.0),
        Some(200)
    );
    node.apply("web-l7.yaml", INGRESS_POLICY);
    eventually("status names the missing proxy", || {
        let out = node.cli(&["status", "-o", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        !out.status.success()
            && status["problems"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|m| m.as_str().is_some_and(|m| m.contains("L7 proxy")))
            })
    });
    // Allowed by the rules, but nothing may judge it: no answer.
    assert_eq!(get(&client, &format!("{base}/public")), None);
}
