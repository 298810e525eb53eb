//! Flow history end to end: flows of real traffic through the datapath survive an agent
//! restart and come back with `ciliate observe --since` (and the real `hubble observe`, when
//! installed); `ciliate policy whatif` replays them through a proposed deny and names it.

mod common;

use std::thread;
use std::time::Duration;

use ciliate_testutil::privileged;
use common::{text, Node};
use serde_json::Value;

fn is_client_to_server(f: &Value) -> bool {
    let pod = |side: &str| {
        f[side]["podName"]
            .as_str()
            .or_else(|| f[side]["pod_name"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let port = f["l4"]["TCP"]["destinationPort"]
        .as_u64()
        .or_else(|| f["l4"]["TCP"]["destination_port"].as_u64());
    pod("source") == "client" && pod("destination") == "server" && port == Some(8080)
}

const DENY_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-no-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#;

#[test]
fn flows_survive_a_restart_and_whatif_replays_them() {
    privileged!();
    let mut node = Node::start("10.248.0.0/24");
    let client = node.add_pod("client", "app=client");
    let server = node.add_pod("server", "app=server");
    server.echo_server(8080);
    // Enrichment reads the agent's tables on a short refresh; let it see the pods.
    thread::sleep(Duration::from_millis(1200));
    for _ in 0..3 {
        assert_eq!(
            client.tcp_echo(server.ip, 8080, b"history").expect("tcp"),
            b"history"
        );
    }
    thread::sleep(Duration::from_millis(300));

    // A restart: the ring is gone, the history is not (SIGTERM writes what is queued). The
    // new agent's ring can only hold flows seen after it started: flows older than that come
    // from the history.
    thread::sleep(Duration::from_millis(1100));
    node.stop_agent();
    let restarted = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    node.start_agent();
    let flows = node.observe(&["--since", "1h", "--to-pod", "default/server"]);
    // RFC 3339 UTC times sort as text; compared to the second (the traffic was over a second
    // before the restart).
    let old: Vec<&Value> = flows
        .iter()
        .filter_map(|v| v.get("flow"))
        .filter(|f| is_client_to_server(f))
        .filter(|f| {
            f["time"]
                .as_str()
                .is_some_and(|t| t.get(..19) < restarted.get(..19))
        })
        .collect();
    assert!(
        !old.is_empty(),
        "observe --since 1h --to-pod default/server after a restart: {} flows, none client -> server:8080\n{}",
        flows.len(),
        node.agent_log()
    );
    assert!(
        flows.iter().filter_map(|v| v.get("flow")).all(|f| {
            f["destination"]["podName"]
                .as_str()
                .or(f["destination"]["pod_name"].as_str())
                == Some("server")
        }),
        "the pod filter holds for history flows"
    );

    // The real Hubble CLI reads the same history (not installed in CI: skipped there).
    if let Some(hubble) = ciliate_testutil::hubble::hubble_cli() {
        let out = std::process::Command::new(hubble)
            .args(["observe", "--server"])
            .arg(format!("unix://{}", node.hubble_socket().display()))
            .args(["--since", "1h", "--to-pod", "default/server", "-o", "json"])
            .output()
            .expect("hubble observe");
        assert!(out.status.success(), "{}", text(&out));
        let seen = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v.get("flow").is_some_and(is_client_to_server));
        assert!(seen, "hubble observe --since 1h: {}", text(&out));
    } else {
        ciliate_testutil::hubble::skip_without_hubble("hubble observe --since");
    }

    // What if server denied client? The recorded connections would be dropped, by that rule.
    let dir = tempfile::tempdir().expect("tmp");
    let proposed = dir.path().join("deny.yaml");
    std::fs::write(&proposed, DENY_CLIENT).expect("write");
    let p = proposed.to_str().expect("utf-8");
    let out = node.cli(&["policy", "whatif", "-f", p, "--since", "1h"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "changes exit 1: {shown}");
    assert!(shown.contains("allowed -> DENIED"), "{shown}");
    assert!(
        shown.contains("default/client") && shown.contains("default/server"),
        "{shown}"
    );
    assert!(shown.contains("8080/TCP"), "{shown}");
    assert!(shown.contains("server-no-client"), "{shown}");
    let out = node.cli(&["policy", "whatif", "-f", p, "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let change = report["changes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["destination"] == "default/server"))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(change["change"], "allowed-to-denied");
    assert!(change["flows"].as_u64().unwrap_or(0) >= 3, "{report}");
    // Nothing was applied: the connection still works.
    assert_eq!(
        client.tcp_echo(server.ip, 8080, b"still").expect("tcp"),
        b"still"
    );

    // A bad manifest: its file and field, exit 2, nothing replayed.
    std::fs::write(
        &proposed,
        DENY_CLIENT.replace("ingressDeny:", "ingressDeny: 7\n  x:"),
    )
    .expect("write");
    let out = node.cli(&["policy", "whatif", "-f", p]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("deny.yaml") && shown.contains("ingressDeny"),
        "{shown}"
    );
}
