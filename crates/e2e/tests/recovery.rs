//! Recovery and restarts, end to end: a second agent for one node, a lost state file, a
//! datapath changed behind the agent's back, pods that vanish without a CNI DEL.

mod common;

use std::time::{Duration, Instant};

use ciliate_testutil::privileged;
use common::Node;

#[test]
fn a_second_agent_for_the_same_node_exits_and_leaves_the_first_ones_pods_alone() {
    privileged!();
    let node = Node::start("10.211.0.0/24");
    let a = node.add_pod("a", "app=a");
    let b = node.add_pod("b", "app=b");
    let pins = node.link_pins();
    assert_eq!(pins.len(), 4, "two links per pod: {pins:?}");

    let other = tempfile::tempdir().expect("state dir");
    let started = Instant::now();
    let out = node
        .netns
        .command(common::bin("ciliate-agent"))
        .args(["--node-name", &node.name, "--pod-cidr", &node.cidr])
        .arg("--state-dir")
        .arg(other.path())
        .arg("--socket")
        .arg(other.path().join("agent.sock"))
        .env("RUST_LOG", "info")
        .output()
        .expect("run a second agent");
    let stderr =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the second agent must fail: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it exits at once, it does not wait"
    );
    let pid = node.agent_pid().expect("first agent runs");
    assert!(
        stderr.contains(&format!("pid {pid}")),
        "names the holder: {stderr}"
    );
    assert!(
        stderr.contains(&node.pin_dir().display().to_string()),
        "names the directory: {stderr}"
    );

    // The first agent's pods keep their programs and talk.
    assert_eq!(node.link_pins(), pins);
    assert_eq!(node.endpoint_count(), 2);
    assert!(a.ping(b.ip, 2), "a -> b still forwarded");
}
