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

fn connects(pod: &common::Pod, dst: std::net::Ipv4Addr, port: u16) -> bool {
    pod.in_netns(move || {
        std::net::TcpStream::connect_timeout(&(dst, port).into(), Duration::from_millis(700))
            .is_ok()
    })
    .join()
    .expect("connect thread")
}

const WEB_POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-client, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n";

#[test]
fn a_lost_state_file_is_rebuilt_from_the_datapath_without_detaching_or_reusing() {
    privileged!();
    let mut node = Node::start("10.212.0.0/24");
    let web = node.add_pod("web", "app=web");
    let client = node.add_pod("client", "app=client");
    let stranger = node.add_pod("stranger", "app=stranger");
    web.echo_server(8080);
    node.apply("policy.yaml", WEB_POLICY);
    assert!(connects(&client, web.ip, 8080), "client -> web allowed");
    assert!(!connects(&stranger, web.ip, 8080), "stranger -> web denied");
    let before = node.cli_json(&["endpoint", "list"]);
    let pins = node.link_pins();

    node.kill_agent();
    let state = node.state.path().join(&node.name).join("state.json");
    std::fs::remove_file(&state).expect("remove state.json");
    node.start_agent();

    assert_eq!(node.link_pins(), pins, "no link was detached");
    let after = node.cli_json(&["endpoint", "list"]);
    let key = |v: &serde_json::Value| {
        let mut eps: Vec<(String, String, u64, String)> = v
            .as_array()
            .expect("list")
            .iter()
            .map(|e| {
                (
                    e["containerId"].as_str().unwrap_or_default().to_owned(),
                    e["ipv4"].as_str().unwrap_or_default().to_owned(),
                    e["identity"].as_u64().unwrap_or_default(),
                    e["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        eps.sort();
        eps
    };
    assert_eq!(key(&after), key(&before), "endpoints rebuilt as they were");
    assert!(
        node.agent_log()
            .contains("rebuilt the state from the datapath"),
        "says so in the log"
    );
    // Policy still in force, both ways.
    assert!(
        connects(&client, web.ip, 8080),
        "client -> web still allowed"
    );
    assert!(
        !connects(&stranger, web.ip, 8080),
        "stranger -> web still denied"
    );
    // A new pod gets a fresh address; deleting a recovered pod by its container id works.
    let fresh = node.add_pod("fresh", "app=fresh");
    assert!(
        ![web.ip, client.ip, stranger.ip].contains(&fresh.ip),
        "fresh address {}",
        fresh.ip
    );
    assert!(node.del_pod(&stranger).ok, "DEL of a recovered pod");
    assert_eq!(node.endpoint_count(), 3);
}

fn endpoint_of(node: &Node, pod: &common::Pod) -> serde_json::Value {
    node.cli_json(&["endpoint", "list"])
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["containerId"] == pod.container_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint for {}", pod.container_id))
}

#[test]
fn a_program_detached_behind_the_agents_back_is_noticed_and_repaired() {
    privileged!();
    let node = Node::start("10.213.0.0/24");
    let web = node.add_pod("web", "app=web");
    let client = node.add_pod("client", "app=client");
    let stranger = node.add_pod("stranger", "app=stranger");
    web.echo_server(8080);
    node.apply("policy.yaml", WEB_POLICY);
    assert!(connects(&client, web.ip, 8080), "client -> web allowed");
    assert!(!connects(&stranger, web.ip, 8080), "stranger -> web denied");
    assert_eq!(
        node.cli_json(&["status"])["datapathRepairs"]
            .as_u64()
            .unwrap_or(0),
        0,
        "nothing repaired yet"
    );

    // Unpinning the link drops its last reference: the kernel detaches web's ingress policy.
    let ifindex = endpoint_of(&node, &web)["hostIfindex"]
        .as_u64()
        .expect("hostIfindex");
    let pin = node.pin_dir().join("links").join(format!("{ifindex}-to"));
    std::fs::remove_file(&pin).expect("unpin web's to_container link");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = node.cli_json(&["status"]);
        if st["datapathRepairs"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(st["health"], "ok", "repaired: {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not repaired: {st}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pin.exists(), "the link is pinned again");
    let log = node.agent_log();
    assert!(
        log.contains("has a broken datapath") && log.contains("not pinned"),
        "the log names what was broken"
    );
    assert!(
        !connects(&stranger, web.ip, 8080),
        "stranger -> web denied again"
    );
    assert!(
        connects(&client, web.ip, 8080),
        "client -> web still allowed"
    );
}

#[test]
fn a_pod_whose_namespace_is_deleted_without_del_is_garbage_collected() {
    privileged!();
    let node = Node::start("10.214.0.0/24");
    let gone = node.add_pod("gone", "app=gone");
    let stays = node.add_pod("stays", "app=stays");
    assert_eq!(node.ipam_allocated(), 2);
    let pins = node.link_pins().len();

    std::process::Command::new("ip")
        .args(["netns", "del", gone.netns.name()])
        .status()
        .expect("ip netns del");

    let deadline = Instant::now() + Duration::from_secs(3);
    while node.endpoint_count() != 1 {
        assert!(
            Instant::now() < deadline,
            "endpoint not removed within 3 s:\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = node.cli_json(&["endpoint", "list"]);
    assert_eq!(left[0]["containerId"], stays.container_id.as_str());
    assert_eq!(node.ipam_allocated(), 1, "address released");
    assert_eq!(node.link_pins().len(), pins - 2, "its links unpinned");
    assert_eq!(node.cli_json(&["status"])["endpointsVanished"], 1);
    // A DEL arriving late is answered as for a pod already gone.
    assert!(node.del_pod(&gone).ok, "late DEL succeeds");
    let next = node.add_pod("next", "app=next");
    assert_ne!(next.ip, stays.ip);
    assert_eq!(node.ipam_allocated(), 2);
}

#[test]
fn cni_attachments_are_container_and_interface() {
    privileged!();
    let node = Node::start("10.215.0.0/24");
    let first = node.add_pod("first", "app=first");
    assert_eq!(endpoint_of(&node, &first)["id"], 1);
    // CNI_CONTAINERID=1 is container "1", not endpoint 1.
    let netns = ciliate_testutil::TestNetns::new("cp");
    let path = netns.path();
    let env = |cmd: &'static str, ifname: &'static str| -> Vec<(&str, &str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "1"),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", ifname),
        ]
    };
    let conf = node.cni_config("1.0.0");
    let add = node.cni(&env("ADD", "eth0"), &conf);
    assert!(add.ok, "ADD of container 1: {} {}", add.stdout, add.stderr);
    // A runtime's DEL for an eth1 whose ADD never completed leaves eth0 alone.
    let del = node.cni(&env("DEL", "eth1"), &conf);
    assert!(del.ok, "DEL eth1: {}", del.stderr);
    let eps = node.cli_json(&["endpoint", "list"]);
    let mine: Vec<&serde_json::Value> = eps
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["containerId"] == "1")
        .collect();
    assert_eq!(mine.len(), 1, "{eps}");
    assert_eq!(mine[0]["ifname"], "eth0");
    assert!(netns.exec("ip", &["-o", "link"]).contains("eth0"));
    // DEL of eth0 removes it.
    let del = node.cni(&env("DEL", "eth0"), &conf);
    assert!(del.ok, "DEL eth0: {}", del.stderr);
    assert_eq!(node.endpoint_count(), 1, "only the first pod is left");
}
