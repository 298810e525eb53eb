//! The real `hubble` CLI (built from cilium/hubble's own source) against an agent's observer
//! socket: `hubble status` (the gRPC health service, then ServerStatus) and `hubble observe`
//! with several of its filters, over flows of the real datapath, and over the L7 flows of
//! HTTP requests judged by the node's proxy (`--type l7`, `--protocol http`, `--http-*`).
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
use common::{eventually, Node};
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

const L7_POLICY: &str = r#"
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
        http: [{method: GET, path: "/public(/.*)?"}]
"#;

/// The HTTP status `curl` in the pod got for `method url` (0 when no answer came).
fn curl_status(pod: &common::Pod, method: &str, url: &str) -> u16 {
    let out = pod
        .netns
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "3",
            "-w",
            "%{http_code}",
        ])
        .args(["-X", method, url])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn the_real_hubble_cli_filters_l7_http_flows() {
    let Some(bin) = hubble_cli() else {
        skip_without_hubble("the_real_hubble_cli_filters_l7_http_flows");
        return;
    };
    privileged!();
    let node = Node::start("10.243.1.0/24");
    let client = node.add_pod("client", "app=client");
    let web = node.add_pod("web", "app=web");
    let _web_80 = node.http_server(&web, 80);
    node.apply("web-l7.yaml", L7_POLICY);
    let base = format!("http://{}", web.ip);
    eventually("the HTTP rule reaches the proxy", || {
        curl_status(&client, "GET", &format!("{base}/private")) == 403
    });
    assert_eq!(
        curl_status(&client, "GET", &format!("{base}/public/a")),
        200
    );
    assert_eq!(
        curl_status(&client, "POST", &format!("{base}/public/b")),
        403
    );

    let observe = |filters: &[&str]| -> Vec<Value> {
        let mut args = vec!["observe", "--last", "1000", "-o", "json"];
        args.extend_from_slice(filters);
        let (ok, out, err) = hubble(&bin, &node, &args);
        assert!(ok, "hubble {args:?}: {err}");
        flows(&out)
    };
    eventually("the L7 flows of all three requests", || {
        observe(&["--type", "l7", "--protocol", "http"]).len() >= 6
    });

    // Every flow `--type l7 --protocol http` gives is an HTTP flow between the two pods.
    let l7 = observe(&["--type", "l7", "--protocol", "http"]);
    for f in &l7 {
        assert_eq!(f["Type"], "L7", "{f}");
        assert!(f["l7"]["http"].is_object(), "{f}");
        let pods = [&f["source"]["pod_name"], &f["destination"]["pod_name"]];
        assert!(pods.contains(&&Value::from("client")), "{f}");
        assert!(pods.contains(&&Value::from("web")), "{f}");
    }
    // The allowed request: forwarded, named by its method and path, answered 200 with a latency.
    let get_public = observe(&["--http-method", "GET", "--http-path", "/public/a"]);
    assert!(
        get_public
            .iter()
            .any(|f| f["l7"]["type"] == "REQUEST" && f["verdict"] == "FORWARDED"),
        "{get_public:#?}"
    );
    assert!(
        get_public.iter().any(|f| f["l7"]["type"] == "RESPONSE"
            && f["l7"]["http"]["code"] == 200
            && f["l7"]["latency_ns"].as_str().is_some_and(|l| l != "0")),
        "{get_public:#?}"
    );
    // The refused ones: `--http-status 403` gives only 403 answers, and both refusals.
    let refused = observe(&["--http-status", "403"]);
    assert!(
        refused.iter().all(|f| f["l7"]["http"]["code"] == 403),
        "{refused:#?}"
    );
    for (method, path) in [("GET", "/private"), ("POST", "/public/b")] {
        assert!(
            refused.iter().any(|f| f["l7"]["http"]["method"] == method
                && f["l7"]["http"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(path))),
            "no 403 for {method} {path}: {refused:#?}"
        );
    }
    let drops = observe(&[
        "--type",
        "l7",
        "--verdict",
        "DROPPED",
        "--http-method",
        "POST",
    ]);
    assert!(
        !drops.is_empty()
            && drops
                .iter()
                .all(|f| f["verdict"] == "DROPPED" && f["l7"]["http"]["method"] == "POST"),
        "{drops:#?}"
    );
    // No flow of another protocol under `--protocol dns`.
    assert!(observe(&["--type", "l7", "--protocol", "dns"]).is_empty());
    // Hubble's compact line of a request, as it prints its own.
    let (ok, out, err) = hubble(
        &bin,
        &node,
        &[
            "observe",
            "--last",
            "1000",
            "--type",
            "l7",
            "--http-path",
            "/private",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("http-request DROPPED (HTTP/1.1 GET http://") && out.contains("/private)"),
        "{out}"
    );
}
