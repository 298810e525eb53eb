//! Observability end to end: flows from the real datapath read through the Hubble-compatible
//! observer with `ciliate observe`, and counted on the metrics endpoint.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use ciliate_testutil::privileged;
use common::{bin, Node};
use serde_json::Value;

/// The flow of a GetFlows response line, if it is one.
fn flow(v: &Value) -> Option<&Value> {
    v.get("flow")
}

fn pod(f: &Value, side: &str) -> String {
    f[side]["pod_name"].as_str().unwrap_or_default().to_owned()
}

fn dport(f: &Value) -> Option<u64> {
    let l4 = &f["l4"];
    l4["TCP"]["destination_port"]
        .as_u64()
        .or_else(|| l4["UDP"]["destination_port"].as_u64())
}

fn verdict(f: &Value) -> &str {
    f["verdict"].as_str().unwrap_or_default()
}

#[test]
fn flows_are_observed_by_pod_with_verdicts_and_counted_in_metrics() {
    privileged!();
    let node = Node::start_with(
        "10.221.0.0/24",
        &["--hubble-metrics-address", "127.0.0.1:9965"],
    );
    let client = node.add_pod("client", "app=client");
    let server = node.add_pod("server", "app=server");
    server.echo_server(8080);
    // Enrichment reads the agent's tables on a short refresh; let it see the pods.
    thread::sleep(Duration::from_millis(1200));

    let mut follow = std::process::Command::new(bin("ciliate"))
        .arg("observe")
        .arg("--hubble-socket")
        .arg(node.hubble_socket())
        .args(["-f", "--to-pod", "default/server", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("observe -f");
    thread::sleep(Duration::from_millis(500));

    assert_eq!(
        client.tcp_echo(server.ip, 8080, b"observed").expect("tcp"),
        b"observed"
    );
    thread::sleep(Duration::from_millis(500));

    // After the fact: the connection, named by pod, forwarded.
    let flows = node.observe(&["--last", "500"]);
    let seen = flows.iter().filter_map(flow).any(|f| {
        pod(f, "source") == "client"
            && pod(f, "destination") == "server"
            && dport(f) == Some(8080)
            && verdict(f) == "FORWARDED"
    });
    assert!(
        seen,
        "client -> server:8080 FORWARDED not among {} flows: {:?}",
        flows.len(),
        flows.iter().take(5).collect::<Vec<_>>()
    );

    // Every interface a flow names has its name: pod veths and the node's own devices alike.
    let interfaces: std::collections::BTreeSet<(u64, String)> = flows
        .iter()
        .filter_map(flow)
        .filter_map(|f| f.get("interface"))
        .map(|i| {
            let index = i["index"].as_u64().unwrap_or_default();
            (index, i["name"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    eprintln!("interfaces of the flows: {interfaces:?}");
    assert!(
        interfaces.iter().all(|(_, name)| !name.is_empty()),
        "an interface without its name: {interfaces:?}"
    );

    // A Service without backends: a drop with Hubble's reason.
    node.apply(
        "empty.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec:\n  clusterIP: 10.96.50.50\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    assert!(client
        .tcp_echo("10.96.50.50".parse().expect("ip"), 80, b"x")
        .is_err());
    thread::sleep(Duration::from_millis(500));
    let drops = node.observe(&["--last", "500", "--verdict", "DROPPED"]);
    let reasons: Vec<String> = drops
        .iter()
        .filter_map(flow)
        .map(|f| {
            f["drop_reason_desc"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SERVICE_BACKEND_NOT_FOUND"),
        "drop reasons: {reasons:?}"
    );
    assert!(
        drops
            .iter()
            .filter_map(flow)
            .all(|f| verdict(f) == "DROPPED"),
        "the verdict filter holds"
    );

    // Following: the flow that happened after `observe -f` started.
    let _ = follow.kill();
    let out = follow.wait_with_output().expect("follow output");
    let followed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        followed
            .iter()
            .filter_map(flow)
            .any(|f| pod(f, "destination") == "server" && dport(f) == Some(8080)),
        "observe -f showed {followed:?}"
    );
    assert!(
        followed
            .iter()
            .filter_map(flow)
            .all(|f| pod(f, "destination") == "server"),
        "--to-pod filter"
    );

    // Metrics, in the node's namespace.
    let metrics = client_metrics(&node);
    assert!(
        metrics.contains("hubble_flows_processed_total"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hubble_drop_total") && l.contains("SERVICE_BACKEND_NOT_FOUND")),
        "{metrics}"
    );
    // The agent's own, from the same status the API serves.
    let endpoints = node.endpoint_count();
    assert!(
        metrics.contains(&format!("\nciliate_endpoints {endpoints}\n")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ciliate_bpf_map_pressure{map=\"cil_ct4\"}")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "ciliate_api_request_duration_seconds_count{method=\"POST\",route=\"/v1/endpoints\",code=\"201\"}"
        )),
        "{metrics}"
    );
}

/// GET /metrics from inside the node's namespace.
fn client_metrics(node: &Node) -> String {
    let path = node.netns.path();
    thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&ns),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .expect("setns");
        let mut s = TcpStream::connect("127.0.0.1:9965").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("response");
        body
    })
    .join()
    .expect("metrics thread")
}

#[test]
fn a_flood_that_overruns_the_event_ring_is_counted_as_lost_events() {
    privileged!();
    // A flow ring that holds all the ring buffer had (~24,000), so the loss record stays.
    let node = Node::start_with(
        "10.222.0.0/24",
        &[
            "--hubble-metrics-address",
            "127.0.0.1:9965",
            "--hubble-event-buffer-capacity",
            "65535",
        ],
    );
    let client = node.add_pod("client", "app=client");
    let server = node.add_pod("server", "app=server");
    let dst = server.ip;
    // A stopped agent drains nothing: 25,000 new UDP flows (each reported where it leaves the
    // client and where it enters the server) overrun the 4 MiB ring.
    node.signal_agent(nix::sys::signal::Signal::SIGSTOP);
    let sent = client
        .in_netns(move || {
            let mut sent = 0u32;
            for port in 20_000u16..45_000 {
                let Ok(s) = std::net::UdpSocket::bind(("0.0.0.0", port)) else {
                    continue;
                };
                if s.send_to(b"x", (dst, 9)).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
        .join()
        .expect("flood");
    node.signal_agent(nix::sys::signal::Signal::SIGCONT);
    assert!(sent > 20_000, "only {sent} datagrams sent");
    // Counted within a refresh or two, and the agent still answers.
    let mut lost = 0u64;
    for _ in 0..50 {
        let metrics = client_metrics(&node);
        lost = metrics
            .lines()
            .find(|l| {
                l.starts_with("hubble_lost_events_total")
                    && l.contains("source=\"perf_event_ring_buffer\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if lost > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        lost > 0,
        "no lost events counted; agent log:\n{}",
        node.agent_log()
    );
    assert!(
        lost < 2 * u64::from(sent),
        "{lost} lost of at most {} events",
        2 * sent
    );
    let status = node.cli_json(&["status"]);
    assert_eq!(status["health"], "ok", "{status}");
    // The flows that fit are there, with the loss among them as Hubble shows it.
    let out = std::process::Command::new(bin("ciliate"))
        .arg("observe")
        .arg("--hubble-socket")
        .arg(node.hubble_socket())
        .args(["--last", "100000"])
        .output()
        .expect("observe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(" EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(")),
        "no lost-events record among the flows:\n{}",
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}

/// `namespace/name` of a flow's `source_service` or `destination_service`, "" when none.
fn service_of(f: &Value, side: &str) -> String {
    let s = &f[side];
    match (s["namespace"].as_str(), s["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => String::new(),
    }
}

#[test]
fn flows_of_a_clusterip_name_the_service_through_socket_lb_and_per_packet() {
    privileged!();
    const VIP: &str = "10.96.60.60";
    let node = Node::start("10.226.0.0/24");
    // One client per path: the socket-LB one runs inside the node's cgroup.
    let sock_client = node.add_pod("sock-client", "app=client");
    let pkt_client = node.add_pod("pkt-client", "app=client");
    let server = node.add_pod("server", "app=server");
    let _ident = node.ident_server(&server, 8080);
    node.apply(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- addresses: [\"{}\"]\n",
            server.ip
        ),
    );
    // Enrichment reads the agent's tables on a short refresh; let it see pods and Service.
    thread::sleep(Duration::from_millis(1200));

    for (client, in_cgroup) in [(&sock_client, true), (&pkt_client, false)] {
        let v = node.probe(
            client,
            in_cgroup,
            &[
                "--dst", VIP, "--port", "80", "--proto", "tcp", "--count", "3",
            ],
        );
        assert_eq!(
            v["errors"].as_array().map(Vec::len),
            Some(0),
            "probe errors: {v}"
        );
    }
    thread::sleep(Duration::from_millis(500));

    let flows = node.observe(&["--last", "2000"]);
    let flows: Vec<&Value> = flows.iter().filter_map(flow).collect();
    for client in ["sock-client", "pkt-client"] {
        // The request, seen after translation: to the backend pod on its port, naming the
        // Service it was addressed to.
        let request = flows.iter().any(|f| {
            pod(f, "source") == client
                && pod(f, "destination") == "server"
                && dport(f) == Some(8080)
                && service_of(f, "destination_service") == "default/web"
        });
        // The reply towards the client names the Service as its source.
        let reply = flows.iter().any(|f| {
            pod(f, "destination") == client
                && f["is_reply"].as_bool() == Some(true)
                && service_of(f, "source_service") == "default/web"
        });
        let theirs: Vec<&&Value> = flows
            .iter()
            .filter(|f| pod(f, "source") == client || pod(f, "destination") == client)
            .take(6)
            .collect();
        assert!(
            request,
            "{client}: no request flow with destination_service default/web: {theirs:?}"
        );
        assert!(
            reply,
            "{client}: no reply flow with source_service default/web: {theirs:?}"
        );
    }
}

#[test]
fn flows_of_the_datapath_are_exported_to_a_file_as_hubble_json_lines() {
    privileged!();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubble/events.log");
    let node = Node::start_with(
        "10.241.0.0/24",
        &[
            "--hubble-export-file-path",
            path.to_str().expect("utf-8 path"),
            "--hubble-export-allowlist",
            r#"{"destination_port":["8080"]}"#,
            "--hubble-export-fieldmask",
            "time,source.pod_name,destination.pod_name,verdict,l4,node_name",
        ],
    );
    let client = node.add_pod("client", "app=client");
    let server = node.add_pod("server", "app=server");
    server.echo_server(8080);
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        client.tcp_echo(server.ip, 8080, b"exported").expect("tcp"),
        b"exported"
    );
    // The exporter writes as flows arrive; wait for the connection's first packet.
    let mut lines: Vec<Value> = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        if lines.iter().any(|v| pod(&v["flow"], "source") == "client") {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let seen = lines
        .iter()
        .find(|v| pod(&v["flow"], "source") == "client")
        .unwrap_or_else(|| panic!("no client flow exported: {lines:?}"));
    let f = &seen["flow"];
    assert_eq!(pod(f, "destination"), "server", "{seen}");
    assert_eq!(f["verdict"], "FORWARDED", "{seen}");
    assert!(
        seen["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{seen}"
    );
    assert!(seen["node_name"].is_string(), "{seen}");
    // The field mask left the rest out; the allowlist every flow not to or from port 8080.
    assert!(
        f.get("IP").is_none() && f.get("event_type").is_none(),
        "{seen}"
    );
    assert!(
        lines
            .iter()
            .all(|v| v["flow"]["l4"]["TCP"]["destination_port"] == 8080),
        "{lines:?}"
    );
}

/// A field under Hubble's proto name or its JSON (camelCase) name: `ciliate observe -o json`
/// prints one or the other.
fn field<'a>(v: &'a Value, proto: &str, json: &str) -> &'a Value {
    match v.get(proto) {
        Some(x) => x,
        None => &v[json],
    }
}

/// The flow of an `-o json` line: the `flow` of a GetFlows response, or a bare Flow.
fn any_flow(v: &Value) -> Option<&Value> {
    match v.get("flow") {
        Some(f) => Some(f),
        None => v.get("verdict").map(|_| v),
    }
}

fn pod_of(f: &Value, side: &str) -> String {
    field(&f[side], "pod_name", "podName")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// (name, namespace, kind) of each policy in the flow's list `proto`/`json`.
fn policies(f: &Value, proto: &str, json: &str) -> Vec<(String, String, String)> {
    field(f, proto, json)
        .as_array()
        .map(|l| {
            l.iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
                    (s("name"), s("namespace"), s("kind"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn event_type(f: &Value) -> u64 {
    field(f, "event_type", "eventType")["type"]
        .as_u64()
        .unwrap_or_default()
}

const ALLOW_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-allow-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-deny-other, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: other}}]
"#;

const STRANGER_EGRESS: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: stranger-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: stranger}}
  egress:
  - toCIDR: [198.51.100.0/24]
"#;

fn labels_of(f: &Value, side: &str) -> Vec<String> {
    f[side]["labels"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Which policy decided: real connections through the datapath, read back through the
/// Observer API. The allowed flow names the allowing CNP, the explicitly denied one (181) the
/// denying CNP in its drop and its policy verdict, a default deny (133) none; and, when the
/// real `hubble` CLI is installed, `hubble observe --print-policy-names` prints the names.
#[test]
fn verdicts_name_the_policy_that_decided_them() {
    privileged!();
    let node = Node::start("10.221.0.0/24");
    let server = node.add_pod("server", "app=server");
    let client = node.add_pod("client", "app=client");
    let other = node.add_pod("other", "app=other");
    let stranger = node.add_pod("stranger", "app=stranger");
    server.echo_server(8080);
    node.apply("policies.yaml", ALLOW_CLIENT);

    assert_eq!(
        client.tcp_echo(server.ip, 8080, b"named").expect("allowed"),
        b"named"
    );
    assert!(other.tcp_connect(server.ip, 8080).is_err(), "explicit deny");
    assert!(
        stranger.tcp_connect(server.ip, 8080).is_err(),
        "default deny"
    );
    thread::sleep(Duration::from_millis(300));

    let flows: Vec<Value> = node
        .observe(&["--last", "2000", "--to-pod", "default/server"])
        .iter()
        .filter_map(any_flow)
        .cloned()
        .collect();
    let from = |pod: &str| {
        flows
            .iter()
            .filter(|f| pod_of(f, "source") == pod)
            .cloned()
            .collect::<Vec<_>>()
    };
    let allow = (
        "server-allow-client".to_owned(),
        "default".to_owned(),
        "CiliumNetworkPolicy".to_owned(),
    );
    let deny = (
        "server-deny-other".to_owned(),
        "default".to_owned(),
        "CiliumNetworkPolicy".to_owned(),
    );

    // Allowed: the policy verdict and the delivery name the allowing policy.
    let client_flows = from("client");
    let verdict_allowed = client_flows
        .iter()
        .find(|f| event_type(f) == 5)
        .unwrap_or_else(|| panic!("no policy verdict for the client: {client_flows:#?}"));
    assert_eq!(verdict(verdict_allowed), "FORWARDED");
    assert_eq!(
        policies(verdict_allowed, "ingress_allowed_by", "ingressAllowedBy"),
        vec![allow.clone()],
        "{verdict_allowed:#}"
    );
    assert!(
        client_flows.iter().any(|f| event_type(f) == 4
            && policies(f, "ingress_allowed_by", "ingressAllowedBy") == vec![allow.clone()]),
        "the forwarded SYN names the policy: {client_flows:#?}"
    );
    // The labels as Cilium puts them.
    let labels = field(verdict_allowed, "ingress_allowed_by", "ingressAllowedBy")[0]["labels"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for l in [
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
        "k8s:io.cilium.k8s.policy.name=server-allow-client",
        "k8s:io.cilium.k8s.policy.namespace=default",
    ] {
        assert!(labels.iter().any(|x| x == l), "{l} not in {labels:?}");
    }

    // Denied by a rule: the DROPPED flows (drop and policy verdict) name the denying policy.
    let other_flows = from("other");
    let dropped: Vec<&Value> = other_flows
        .iter()
        .filter(|f| verdict(f) == "DROPPED")
        .collect();
    assert!(
        dropped.iter().any(|f| event_type(f) == 1),
        "{other_flows:#?}"
    );
    assert!(
        dropped.iter().any(|f| event_type(f) == 5),
        "{other_flows:#?}"
    );
    for f in &dropped {
        assert_eq!(
            policies(f, "ingress_denied_by", "ingressDeniedBy"),
            vec![deny.clone()],
            "{f:#}"
        );
    }

    // Default deny: dropped by no rule, so no policy named (as Hubble has it).
    let stranger_flows = from("stranger");
    assert!(
        stranger_flows
            .iter()
            .any(|f| verdict(f) == "DROPPED" && event_type(f) == 1),
        "{stranger_flows:#?}"
    );
    for f in &stranger_flows {
        assert!(
            policies(f, "ingress_denied_by", "ingressDeniedBy").is_empty()
                && policies(f, "ingress_allowed_by", "ingressAllowedBy").is_empty(),
            "{f:#}"
        );
    }

    // Peers outside the cluster carry Cilium's labels: a CIDR identity its prefix, the world
    // `reserved:world`, never a bare number.
    node.apply("egress.yaml", STRANGER_EGRESS);
    let _ = stranger.tcp_connect("198.51.100.7".parse().expect("ip"), 80);
    assert!(
        stranger
            .tcp_connect("203.0.113.9".parse().expect("ip"), 80)
            .is_err(),
        "egress to the world is not allowed"
    );
    thread::sleep(Duration::from_millis(300));
    let out: Vec<Value> = node
        .observe(&["--last", "2000", "--from-pod", "default/stranger"])
        .iter()
        .filter_map(any_flow)
        .cloned()
        .collect();
    let to = |ip: &str| {
        out.iter()
            .filter(|f| field(f, "IP", "IP")["destination"] == ip)
            .cloned()
            .collect::<Vec<_>>()
    };
    let cidr_flows = to("198.51.100.7");
    let cidr_verdict = cidr_flows
        .iter()
        .find(|f| event_type(f) == 5)
        .unwrap_or_else(|| panic!("no verdict to the CIDR: {out:#?}"));
    let labels = labels_of(cidr_verdict, "destination");
    assert!(
        labels.contains(&"cidr:198.51.100.0/24".to_owned())
            && labels.contains(&"reserved:world".to_owned()),
        "{cidr_verdict:#}"
    );
    assert_eq!(
        policies(cidr_verdict, "egress_allowed_by", "egressAllowedBy")
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>(),
        ["stranger-egress"]
    );
    let world = to("203.0.113.9");
    assert!(
        world
            .iter()
            .any(|f| verdict(f) == "DROPPED" && labels_of(f, "destination") == ["reserved:world"]),
        "{world:#?}"
    );

    // The real Hubble CLI, when installed (not in CI: this part is skipped there).
    let Some(hubble) = ciliate_testutil::hubble::hubble_cli() else {
        ciliate_testutil::hubble::skip_without_hubble("hubble observe --print-policy-names");
        return;
    };
    let out = std::process::Command::new(hubble)
        .arg("observe")
        .arg("--server")
        .arg(format!("unix://{}", node.hubble_socket().display()))
        .args([
            "--last",
            "2000",
            "--type",
            "policy-verdict",
            "--print-policy-names",
            // Hubble's default field mask for compact output leaves out the traffic
            // direction and the policy lists, so its own --print-policy-names prints nothing
            // (against Cilium too): ask for whole flows.
            "--use-default-field-masks=false",
        ])
        .output()
        .expect("hubble observe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("hubble observe --print-policy-names:\n{text}");
    assert!(
        text.lines().any(|l| l.contains("default/other")
            && l.contains("DENIED BY server-deny-other (CiliumNetworkPolicy)")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("default/client")
            && l.contains("ALLOWED BY server-allow-client (CiliumNetworkPolicy)")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("default/stranger")
            && l.contains("-> default/server")
            && l.contains("INGRESS DENIED")
            && !l.contains(" BY ")),
        "a default deny names no policy: {text}"
    );
}
