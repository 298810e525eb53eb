//! The real `hubble` CLI (built from cilium/hubble's own source) against an agent's observer
//! socket: `hubble status` (the gRPC health service, then ServerStatus) and `hubble observe`
//! with several of its filters, over flows of the real datapath.
//!
//! Needs root and the `hubble` binary: `CILIATE_HUBBLE_BIN`, or /work/tools/bin/hubble. CI has
//! no hubble binary (it is not packaged anywhere CI installs from): there the test skips with
//! "SKIPPED (no hubble CLI)", which is allowed; the Python grpcio and Hubble-proto client tests
//! of crates/observer cover the same API in CI.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use ciliate_testutil::hubble::{hubble_cli, skip_without_hubble};
use ciliate_testutil::privileged;
use common::Node;
use serde_json::Value;

fn hubble(bin: &PathBuf, node: &Node, args: &[&str]) -> (bool, String, String) {
    let server = format!("unix://{}", node.hubble_socket().display());
    let out = Command::new(bin)
        .args(args)
        .args(["--server", &server])
        .output()
        .expect("run hubble");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `hubble observe -o json` lines: bare flows or `{"flow": ...}` responses, as its version
/// prints them.
fn flows(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v.get("flow").cloned().unwrap_or(v))
        .collect()
}

#[test]
fn the_real_hubble_cli_reads_status_and_filtered_flows() {
    let Some(bin) = hubble_cli() else {
        skip_without_hubble("the_real_hubble_cli_reads_status_and_filtered_flows");
        return;
    };
    privileged!();
    let node = Node::start("10.243.0.0/24");
    let client = node.add_pod("client", "app=client");
    let server = node.add_pod("server", "app=server");
    server.echo_server(8080);
    // Enrichment reads the agent's tables on a short refresh; let it see the pods.
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        client.tcp_echo(server.ip, 8080, b"hubble").expect("tcp"),
        b"hubble"
    );
    node.apply(
        "empty.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec:\n  clusterIP: 10.96.43.43\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    assert!(client
        .tcp_echo("10.96.43.43".parse().expect("ip"), 80, b"x")
        .is_err());
    thread::sleep(Duration::from_millis(500));

    // `hubble status` asks grpc.health.v1 first, then ServerStatus.
    let (ok, out, err) = hubble(&bin, &node, &["status"]);
    assert!(ok, "hubble status: {out}{err}");
    assert!(out.contains("Healthcheck") && out.contains("Ok"), "{out}");
    assert!(out.contains("Current/Max Flows"), "{out}");
    assert!(out.contains("Flows/s"), "{out}");

    // Pod, port, verdict and node filters together; every flow Hubble prints matches them.
    let node_pattern = "default/*";
    let (ok, out, err) = hubble(
        &bin,
        &node,
        &[
            "observe",
            "--last",
            "1000",
            "-o",
            "json",
            "--from-pod",
            "default/client",
            "--to-pod",
            "server",
            "--to-port",
            "8080",
            "--verdict",
            "FORWARDED",
            "--node-name",
            node_pattern,
            "--protocol",
            "tcp",
        ],
    );
    assert!(ok, "hubble observe: {err}");
    let got = flows(&out);
    assert!(
        !got.is_empty(),
        "no client -> server:8080 flows: {out}{err}"
    );
    for f in &got {
        assert_eq!(f["source"]["pod_name"], "client", "{f}");
        assert_eq!(f["destination"]["pod_name"], "server", "{f}");
        assert_eq!(f["destination"]["cluster_name"], "default", "{f}");
        assert_eq!(f["l4"]["TCP"]["destination_port"], 8080, "{f}");
        assert_eq!(f["verdict"], "FORWARDED", "{f}");
        assert_eq!(f["node_name"], format!("default/{}", node.name), "{f}");
        assert!(f["uuid"].as_str().is_some_and(|u| u.len() == 36), "{f}");
        // The captured Ethernet header, as Hubble writes MACs.
        assert!(
            f["ethernet"]["source"]
                .as_str()
                .is_some_and(|m| m.len() == 17 && m.contains(':')),
            "{f}"
        );
    }
    // The SYN reads as Hubble's compact line does.
    let (ok, out, err) = hubble(
        &bin,
        &node,
        &[
            "observe",
            "--last",
            "1000",
            "--to-pod",
            "default/server",
            "--to-port",
            "8080",
        ],
    );
    assert!(ok, "hubble observe: {err}");
    assert!(out.contains("TCP Flags: SYN"), "{out}");

    // drop_reason_desc (field 33): only the drops with that reason.
    let (ok, out, err) = hubble(
        &bin,
        &node,
        &[
            "observe",
            "--last",
            "1000",
            "-o",
            "json",
            "--drop-reason-desc",
            "SERVICE_BACKEND_NOT_FOUND",
        ],
    );
    assert!(ok, "hubble observe --drop-reason-desc: {err}");
    let drops = flows(&out);
    assert!(
        !drops.is_empty(),
        "no SERVICE_BACKEND_NOT_FOUND drop: {out}"
    );
    assert!(
        drops
            .iter()
            .all(|f| f["drop_reason_desc"] == "SERVICE_BACKEND_NOT_FOUND"),
        "{drops:?}"
    );
    let (ok, out, err) = hubble(
        &bin,
        &node,
        &[
            "observe",
            "--last",
            "1000",
            "-o",
            "json",
            "--drop-reason-desc",
            "POLICY_DENIED",
        ],
    );
    assert!(ok, "{err}");
    assert!(flows(&out).is_empty(), "no policy drop happened: {out}");

    // A node of another cluster: nothing.
    let (ok, out, err) = hubble(
        &bin,
        &node,
        &[
            "observe",
            "--last",
            "1000",
            "-o",
            "json",
            "--node-name",
            "other/*",
        ],
    );
    assert!(ok, "{err}");
    assert!(flows(&out).is_empty(), "{out}");

    // Bad input is refused with the field named, and the agent serves on.
    let (ok, _, err) = hubble(
        &bin,
        &node,
        &["observe", "--last", "10", "--to-ip", "10.0.0.300"],
    );
    assert!(!ok, "an invalid IP was accepted");
    assert!(
        err.contains("destination_ip") || err.contains("10.0.0.300"),
        "{err}"
    );
    let (ok, out, err) = hubble(&bin, &node, &["status"]);
    assert!(ok, "hubble status after bad input: {out}{err}");
}
