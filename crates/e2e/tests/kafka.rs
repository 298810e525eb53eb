//! Kafka policy end to end: the real agent, CNI plugin, `ciliate-proxy` and CLI; a Tansu
//! broker in one pod, kafka-python in another. Every request crosses `bpf/lxc.c`, the
//! redirect to the proxy's transparent socket and the proxy's upstream connection from the
//! client's address; the verdicts are checked at the client (what it produced, consumed or
//! was told; Tansu has no authorization of its own, so TOPIC_AUTHORIZATION_FAILED is the
//! proxy's) and in the proxy's request counter.

mod common;

use std::process::{Command, Stdio};

use ciliate_testutil::kafka::{kafka_tools_installed, KAFKA_PYTHON, TANSU_BINARY};
use ciliate_testutil::privileged;
use common::{eventually, Node, Pod, Proc};
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

/// Creates the topics, produces to `orders`, tries `payments`, produces again, consumes
/// `orders`: one JSON line of what happened.
const SCRIPT: &str = r#"
import json, sys
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

bootstrap = sys.argv[1]
out = {}
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
for t in ("orders", "payments"):
    try:
        admin.create_topics([NewTopic(t, 1, 1)])
    except TopicAlreadyExistsError:
        pass
admin.close()
p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, retries=0, max_block_ms=10000,
                  request_timeout_ms=10000)
p.send("orders", b"o-1").get(timeout=10)
try:
    p.send("payments", b"p-1").get(timeout=10)
    out["payments"] = "sent"
except KafkaError as e:
    out["payments"] = type(e).__name__
p.send("orders", b"o-2").get(timeout=10)
p.close()
c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                  consumer_timeout_ms=5000, group_id=None)
c.assign([TopicPartition("orders", 0)])
out["consumed"] = [m.value.decode() for m in c]
c.close()
print(json.dumps(out))
"#;

/// kafka-python in the pod: (exit ok, stdout, stderr).
fn client_run(pod: &Pod, broker: &str) -> (bool, String, String) {
    let out = pod
        .netns
        .command(KAFKA_PYTHON)
        .args(["-c", SCRIPT, broker])
        .stdin(Stdio::null())
        .output()
        .expect("kafka-python");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    // After apply the datapath sends the connections to the proxy, which resets them until
    // the redirect reaches it: a metadata call succeeds once it has.
    eventually("the redirect reaches the proxy", || {
        client
            .netns
            .command(KAFKA_PYTHON)
            .args([
                "-c",
                "import sys; from kafka import KafkaConsumer; KafkaConsumer(bootstrap_servers=sys.argv[1], request_timeout_ms=3000).topics()",
                &addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let (ok, out, err) = client_run(&client, &addr);
    assert!(ok, "kafka-python failed:\n{out}\n{err}");
    let got: Value = serde_json::from_str(out.trim()).expect("JSON");
    // Tansu has no authorization of its own: the refusal is the proxy's.
    assert_eq!(got["payments"], "TopicAuthorizationFailedError", "{got}");
    assert_eq!(got["consumed"], serde_json::json!(["o-1", "o-2"]), "{got}");
    assert!(
        proxy_status(&node)["requests"].as_u64().unwrap_or(0) > 0,
        "the requests went through the proxy"
    );

    let status = proxy_status(&node);
    assert_eq!(status["up"], true, "{status}");
}
