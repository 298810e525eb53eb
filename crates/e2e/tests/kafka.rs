//! Kafka policy end to end: the real agent, CNI plugin, `ciliate-proxy` and CLI; a Tansu
//! broker in one pod, kcat (librdkafka) in another. Every request crosses `bpf/lxc.c`, the
//! redirect to the proxy's transparent socket and the proxy's upstream connection from the
//! client's address; the verdicts are checked at the client (what kcat produced, consumed or
//! reported; Tansu has no authorization of its own, so TOPIC_AUTHORIZATION_FAILED is the
//! proxy's) and in the proxy's request counter.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ciliate_testutil::kafka::{kafka_tools_installed, KCAT_BINARY, TANSU_BINARY};
use ciliate_testutil::privileged;
use common::{Node, Pod, Proc};
use serde_json::Value;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: orders}
        - {role: consume, topic: orders}
        - {apiKey: createtopics}
"#;

/// kcat in the pod: (exit ok, stdout, stderr).
fn kcat(pod: &Pod, broker: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = pod
        .netns
        .command(KCAT_BINARY)
        .args(["-b", broker, "-m", "10"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kcat output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn proxy_status(node: &Node) -> Value {
    let out = node.cli(&["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    status["proxy"].clone()
}

#[test]
fn kafka_rules_on_a_brokers_ingress_are_enforced_by_the_proxy() {
    privileged!();
    if !kafka_tools_installed("e2e kafka test") {
        return;
    }
    let node = Node::start("10.233.0.0/24");
    let client = node.add_pod("client", "app=client");
    let broker = node.add_pod("kafka", "app=kafka");
    let addr = format!("{}:9092", broker.ip);
    let _tansu = Proc(
        Command::new("nsenter")
            .arg(format!("--net={}", broker.netns.path()))
            .arg(TANSU_BINARY)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://{addr}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{addr}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu"),
    );
    eventually("the broker listens", || {
        broker.tcp_connect(broker.ip, 9092).is_ok()
    });

    node.apply("kafka-l7.yaml", POLICY);
    // Produce to the allowed topic, through the proxy once the redirect is in force.
    eventually("producing to orders through the proxy", || {
        kcat(&client, &addr, &["-P", "-t", "orders", "-c", "1"], "o-1\n").0
            && proxy_status(&node)["requests"].as_u64().unwrap_or(0) > 0
    });
    let (ok, out, err) = kcat(&client, &addr, &["-P", "-t", "orders", "-c", "1"], "o-2\n");
    assert!(ok, "{out}{err}");
    // Another topic: refused with the authorization error, which kcat reports.
    let (_, out, err) = kcat(
        &client,
        &addr,
        &["-P", "-t", "payments", "-c", "1"],
        "p-1\n",
    );
    assert!(
        err.contains("Topic authorization failed"),
        "producing to payments:\n{out}\n{err}"
    );
    // Consume the allowed topic: Metadata, ListOffsets and Fetch through the proxy.
    let (ok, out, err) = kcat(
        &client,
        &addr,
        &["-C", "-t", "orders", "-o", "beginning", "-e", "-q"],
        "",
    );
    assert!(ok, "{out}{err}");
    let got: Vec<&str> = out.lines().collect();
    assert!(got.ends_with(&["o-2"]) && got.contains(&"o-1"), "{got:?}");

    let status = proxy_status(&node);
    assert_eq!(status["up"], true, "{status}");
}
