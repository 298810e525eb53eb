//! The Kafka engine between a real client (kafka-python) and a real broker (Tansu), with the
//! redirect pushed on the control socket: topics created, produce and consume on an allowed
//! topic go through; a denied topic is refused with TOPIC_AUTHORIZATION_FAILED, which the
//! client reports as such, and the connection that carried the refusal carries the next
//! request. Two 200 KB messages go through whole (spliced; the second looked at before any
//! of it is read) and one is refused on a denied topic (read whole), the connection carrying
//! the next request. (Debian's kcat, librdkafka 2.0.2, cannot read Tansu 0.6's ApiVersions v3 answer
//! even without a proxy, so it is not used.)
//!
//! The broker advertises the proxy's address, so that clients reach it through the proxy
//! after the bootstrap metadata too (as a pod does through the datapath's redirect).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ciliate_model::kafka::{api_key_by_name, CONSUME_ROLE, PRODUCE_ROLE};
use ciliate_model::l7::{
    KafkaMatch, KafkaRecord, L7Parser, L7PeerRules, L7RecordType, L7Redirect, L7Verdict,
    ProxyCommand, ProxyEvent,
};
use ciliate_proxy::control::{self, ControlClient};
use ciliate_proxy::engine::{Counters, Engine, EngineConfig};
use ciliate_proxy::identity::StaticIdentities;
use ciliate_proxy::policy::Policy;
use ciliate_testutil::kafka::{kafka_tools_installed, TestBroker, KAFKA_PYTHON};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const RULE: u32 = 7;

fn rule(keys: &[i16], topic: Option<&str>) -> KafkaMatch {
    KafkaMatch {
        api_keys: keys.to_vec(),
        topic: topic.map(str::to_owned),
        ..Default::default()
    }
}

/// Produce and consume `allowed`; metadata of any topic, topic creation (the test makes its
/// topics through the proxy).
fn redirect(broker_port: u16) -> L7Redirect {
    let key = |n: &str| api_key_by_name(n).expect("known key");
    L7Redirect {
        endpoint: 42,
        endpoint_ip: "127.0.0.1".parse().expect("ip"),
        egress: true,
        proto: 6,
        port: broker_port,
        parser: L7Parser::Kafka,
        proxy_port: 15001,
        rules: vec![L7PeerRules {
            peers: None,
            rule: RULE,
            kafka: vec![
                rule(PRODUCE_ROLE, Some("allowed")),
                rule(CONSUME_ROLE, Some("allowed")),
                rule(&[key("metadata")], None),
                rule(&[key("createtopics")], None),
            ],
            ..Default::default()
        }],
    }
}

const SCRIPT: &str = r#"
import json, sys
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

bootstrap = sys.argv[1]
out = {}
admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ciliate-admin", request_timeout_ms=10000)
for t in ("allowed", "denied"):
    try:
        admin.create_topics([NewTopic(t, 1, 1)])
    except TopicAlreadyExistsError:
        pass
admin.close()
p = KafkaProducer(bootstrap_servers=bootstrap, client_id="ciliate-py", acks=1, retries=0,
                  max_block_ms=10000, request_timeout_ms=10000)
p.send("allowed", b"py-1").get(timeout=10)
out["first"] = "ok"
try:
    p.send("denied", b"py-x").get(timeout=10)
    out["denied"] = "sent"
except KafkaError as e:
    out["denied"] = type(e).__name__
p.send("allowed", b"py-2").get(timeout=10)
out["after"] = "ok"
# Requests larger than the proxy reads whole: spliced when allowed, read and refused when not.
# The first is read in part; each after a large one is looked at before any of it is read
# (spliced whole when allowed, read whole when refused).
big = bytes(range(256)) * 800
p.send("allowed", big).get(timeout=10)
p.send("allowed", big[::-1]).get(timeout=10)
out["big"] = "ok"
try:
    p.send("denied", big).get(timeout=10)
    out["big_denied"] = "sent"
except KafkaError as e:
    out["big_denied"] = type(e).__name__
p.send("allowed", b"py-3").get(timeout=10)
p.close()
c = KafkaConsumer(bootstrap_servers=bootstrap, client_id="ciliate-py-consumer",
                  auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None)
c.assign([TopicPartition("allowed", 0)])
out["consumed"] = ["big" if m.value == big else "gib" if m.value == big[::-1] else m.value.decode(errors="replace")[:20] for m in c]
c.close()
print(json.dumps(out))
"#;

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("spawn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every Kafka record that arrived, until the control connection is quiet for a while.
async fn records(c: &mut ControlClient) -> Vec<KafkaRecord> {
    let mut out = Vec::new();
    while let Ok(Ok(Some(ev))) = tokio::time::timeout(Duration::from_secs(2), c.next()).await {
        if let ProxyEvent::Kafka(r) = ev {
            out.push(*r);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_through_the_proxy_to_a_real_broker() {
    if !kafka_tools_installed("proxy kafka test") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let SocketAddr::V4(proxy) = listener.local_addr().expect("addr") else {
        panic!("v4")
    };
    let broker = TestBroker::start(proxy);
    let dst = broker.addr();

    // The engine and its control socket, as the agent drives them.
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("ctl.sock");
    let (tx, rx) = mpsc::channel(100_000);
    let engine = Arc::new(Engine {
        policy: Arc::new(Policy::default()),
        identities: Arc::new(StaticIdentities::default()),
        events: tx.into(),
        config: EngineConfig::default(),
        counters: Counters::default(),
    });
    tokio::spawn(control::serve(
        control::bind(&ctl).expect("control"),
        engine.clone(),
        rx,
    ));
    let mut c = ControlClient::connect(&ctl).await.expect("connect");
    c.send(&ProxyCommand::Snapshot {
        revision: 1,
        redirects: vec![redirect(dst.port())],
    })
    .await
    .expect("send");
    loop {
        let ev = c.next().await.expect("read").expect("open");
        if ev == (ProxyEvent::Applied { revision: 1 }) {
            break;
        }
    }
    let e2 = engine.clone();
    let (_stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((s, SocketAddr::V4(peer))) = listener.accept().await else {
                return;
            };
            tokio::spawn(e2.clone().serve(s, peer, dst, true, stop.clone()));
        }
    });

    // kafka-python: topics, produce, a refused produce, produce again, consume.
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run(Command::new(KAFKA_PYTHON)
            .arg("-c")
            .arg(SCRIPT)
            .arg(proxy.to_string()))
    })
    .await
    .expect("join");
    assert!(ok, "kafka-python failed:\n{out}\n{err}");
    let py: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(py["first"], "ok", "{py}");
    assert_eq!(py["denied"], "TopicAuthorizationFailedError", "{py}");
    assert_eq!(py["after"], "ok", "{py}");
    assert_eq!(py["big"], "ok", "{py}");
    assert_eq!(py["big_denied"], "TopicAuthorizationFailedError", "{py}");
    assert_eq!(
        py["consumed"],
        serde_json::json!(["py-1", "py-2", "big", "gib", "py-3"]),
        "{py}"
    );
    let recs = records(&mut c).await;
    let refused: Vec<&KafkaRecord> = recs
        .iter()
        .filter(|r| r.verdict == L7Verdict::Dropped)
        .collect();
    assert!(
        refused
            .iter()
            .any(|r| r.record_type == L7RecordType::Request
                && r.api_key == "produce"
                && r.topic == "denied"
                && r.rule == 0),
        "{refused:#?}"
    );
    let answer = refused
        .iter()
        .find(|r| r.record_type == L7RecordType::Response && r.api_key == "produce")
        .expect("the refusal's record");
    assert_eq!(answer.error_code, 29);
    // The connection that was refused carried the next produce.
    let later = recs
        .iter()
        .rfind(|r| {
            r.record_type == L7RecordType::Request
                && r.api_key == "produce"
                && r.topic == "allowed"
                && r.verdict == L7Verdict::Forwarded
        })
        .expect("the produce after the refusal");
    assert_eq!(later.source, answer.source);
    assert_eq!(later.rule, RULE);
    let keys: BTreeSet<&str> = recs.iter().map(|r| r.api_key.as_str()).collect();
    for k in [
        "apiversions",
        "metadata",
        "createtopics",
        "produce",
        "fetch",
    ] {
        assert!(keys.contains(k), "no {k} in {keys:?}");
    }

    // Forwarded responses carry the broker's error code (0 here); the refusal 29.
    assert!(recs.iter().any(|r| r.api_key == "fetch"
        && r.topic == "allowed"
        && r.verdict == L7Verdict::Forwarded));
    assert_eq!(
        engine
            .counters
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
