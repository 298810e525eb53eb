//! Services end to end: manifests applied through the CLI, a client pod reaching a ClusterIP
//! served by backend pods, through socket LB (client in the node's cgroup) and through the
//! per-packet path (client outside it).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use ciliate_testutil::privileged;
use common::{bin, Node, Pod, Proc};
use serde_json::Value;

const VIP: &str = "10.96.100.10";

fn service_yaml(name: &str, vip: &str, affinity: bool) -> String {
    let affinity = if affinity {
        "  sessionAffinity: ClientIP\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n{affinity}  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    protocol: TCP\n  - name: dns\n    port: 80\n    targetPort: 8080\n    protocol: UDP\n"
    )
}

/// An EndpointSlice for `service` with the given (address, ready, serving, terminating).
fn slice_yaml(service: &str, endpoints: &[(String, bool, bool, bool)]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-abc\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n- name: dns\n  port: 8080\n  protocol: UDP\nendpoints:\n"
    );
    for (addr, ready, serving, terminating) in endpoints {
        y.push_str(&format!(
            "- addresses: [\"{addr}\"]\n  conditions:\n    ready: {ready}\n    serving: {serving}\n    terminating: {terminating}\n"
        ));
    }
    y
}

struct Setup {
    node: Node,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<Proc>,
}

fn setup(cidr: &str) -> Setup {
    let node = Node::start(cidr);
    let client = node.add_pod("client", "app=client");
    let backends: Vec<Pod> = (1..=3)
        .map(|i| node.add_pod(&format!("web-{i}"), "app=web"))
        .collect();
    let servers = backends
        .iter()
        .map(|b| node.ident_server(b, 8080))
        .collect();
    Setup {
        node,
        client,
        backends,
        _servers: servers,
    }
}

fn ready(backends: &[Pod]) -> Vec<(String, bool, bool, bool)> {
    backends
        .iter()
        .map(|b| (b.ip.to_string(), true, true, false))
        .collect()
}

fn answers(v: &Value) -> Vec<String> {
    v["answers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn assert_no_errors(v: &Value) {
    assert_eq!(
        v["errors"].as_array().map(Vec::len),
        Some(0),
        "probe errors: {v}"
    );
}

fn service_ct_entries(node: &Node) -> usize {
    node.cli_json(&["bpf", "ct", "list"])
        .as_array()
        .expect("ct list")
        .iter()
        .filter(|e| e["direction"] == "service" && e["dst"] == VIP)
        .count()
}

#[test]
fn a_clusterip_spreads_over_three_backends_over_tcp_and_udp_on_both_paths() {
    privileged!();
    let s = setup("10.211.0.0/24");
    s.node.apply(
        "web.yaml",
        &(service_yaml("web", VIP, false) + "---\n" + &slice_yaml("web", &ready(&s.backends))),
    );
    let svc = s.node.cli_json(&["service", "get", "default/web"]);
    assert!(svc.to_string().contains(VIP), "service view: {svc}");

    for (in_cgroup, path) in [(true, "socket LB"), (false, "per-packet")] {
        for proto in ["tcp", "udp"] {
            let v = s.node.probe(
                &s.client,
                in_cgroup,
                &[
                    "--dst", VIP, "--port", "80", "--proto", proto, "--count", "40",
                ],
            );
            assert_no_errors(&v);
            let mut got = answers(&v);
            got.sort();
            assert_eq!(got, vec!["web-1", "web-2", "web-3"], "{path} {proto}: {v}");
            // getpeername() and recvfrom() show the VIP, never a backend.
            let peers: Vec<&String> = v["peers"].as_object().expect("peers").keys().collect();
            assert_eq!(peers, vec![&format!("{VIP}:80")], "{path} {proto}");
        }
        let service_entries = service_ct_entries(&s.node);
        if in_cgroup {
            assert_eq!(
                service_entries, 0,
                "socket LB translates at connect(): no per-packet NAT state"
            );
        } else {
            assert!(
                service_entries > 0,
                "the per-packet path remembers its choices in conntrack"
            );
        }
    }
    let lb = s.node.cli_json(&["bpf", "lb", "list"]);
    assert!(lb.to_string().contains(VIP), "raw LB view: {lb}");
}

#[test]
fn a_terminating_backend_keeps_its_connections_and_gets_no_new_ones() {
    privileged!();
    let s = setup("10.212.0.0/24");
    s.node.apply(
        "web.yaml",
        &(service_yaml("web", VIP, false) + "---\n" + &slice_yaml("web", &ready(&s.backends))),
    );
    for in_cgroup in [true, false] {
        let mut held = s
            .node
            .pod_command(
                &s.client,
                in_cgroup,
                &bin("ciliate-bench"),
                &[
                    "probe",
                    "--dst",
                    VIP,
                    "--port",
                    "80",
                    "--count",
                    "0",
                    "--hold-secs",
                    "4",
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("holding probe");
        let mut out = BufReader::new(held.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("hold line");
        let victim = first
            .trim()
            .strip_prefix("hold ")
            .expect("hold <id>")
            .to_owned();
        let victim_ip = s
            .backends
            .iter()
            .find(|b| b.name == victim)
            .expect("known backend")
            .ip
            .to_string();

        // The victim starts terminating: serving, not ready.
        let eps: Vec<_> = s
            .backends
            .iter()
            .map(|b| {
                let t = b.ip.to_string() == victim_ip;
                (b.ip.to_string(), !t, true, t)
            })
            .collect();
        s.node.apply("slice.yaml", &slice_yaml("web", &eps));
        let v = s.node.probe(
            &s.client,
            in_cgroup,
            &["--dst", VIP, "--port", "80", "--count", "30"],
        );
        assert_no_errors(&v);
        assert!(
            !answers(&v).contains(&victim),
            "new connections avoid the terminating {victim}: {v}"
        );
        assert_eq!(answers(&v).len(), 2);

        let mut rest = String::new();
        for line in out.lines() {
            rest = line.expect("probe output");
        }
        assert!(held.wait().expect("probe exit").success());
        let result: Value = serde_json::from_str(&rest).expect("probe JSON");
        assert!(
            result["hold"]["error"].is_null(),
            "the held connection to {victim} survived: {result}"
        );
        assert!(result["hold"]["exchanges"].as_u64().unwrap_or(0) > 20);
        s.node
            .apply("slice.yaml", &slice_yaml("web", &ready(&s.backends)));
    }
}

#[test]
fn a_service_without_backends_refuses_at_once_on_both_paths() {
    privileged!();
    let s = setup("10.213.0.0/24");
    s.node.apply(
        "empty.yaml",
        &(service_yaml("empty", VIP, false) + "---\n" + &slice_yaml("empty", &[])),
    );
    for in_cgroup in [true, false] {
        let started = Instant::now();
        let v = s.node.probe(
            &s.client,
            in_cgroup,
            &["--dst", VIP, "--port", "80", "--count", "3"],
        );
        let errors = v["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 3, "{v}");
        assert!(
            errors
                .iter()
                .all(|e| e.as_str().unwrap_or_default().contains("refused")),
            "TCP RST, not a timeout: {v}"
        );
        eprintln!("3 refused connections in {:?}", started.elapsed());
    }
    let drops = s.node.cli_json(&["status"]);
    assert!(drops["datapath"].is_object());
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_backend() {
    privileged!();
    let s = setup("10.214.0.0/24");
    s.node.apply(
        "web.yaml",
        &(service_yaml("web", VIP, true) + "---\n" + &slice_yaml("web", &ready(&s.backends))),
    );
    for in_cgroup in [true, false] {
        let v = s.node.probe(
            &s.client,
            in_cgroup,
            &["--dst", VIP, "--port", "80", "--count", "20"],
        );
        assert_no_errors(&v);
        assert_eq!(
            answers(&v).len(),
            1,
            "one backend for every connection: {v}"
        );
    }
}

#[test]
fn a_malformed_manifest_changes_nothing() {
    privileged!();
    let s = setup("10.215.0.0/24");
    s.node.apply(
        "web.yaml",
        &(service_yaml("web", VIP, false) + "---\n" + &slice_yaml("web", &ready(&s.backends))),
    );
    let services = s.node.cli_json(&["service", "list"]);
    let lb = s.node.cli_json(&["bpf", "lb", "list"]);
    let bad = service_yaml("other", "10.96.100.11", false).replace(
        "port: 80\n    targetPort: 8080\n    protocol: TCP",
        "port: 70000\n    targetPort: 8080\n    protocol: TCP",
    ) + "---\n"
        + &service_yaml("third", "10.96.100.12", false);
    let out = s.node.manifest("apply", "bad.yaml", &bad);
    assert!(!out.status.success(), "a malformed batch is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("spec.ports[0].port"),
        "names file and field: {err}"
    );
    assert_eq!(
        s.node.cli_json(&["service", "list"]),
        services,
        "no Service of the batch applied"
    );
    assert_eq!(
        s.node.cli_json(&["bpf", "lb", "list"]),
        lb,
        "maps untouched"
    );
    let v = s.node.probe(
        &s.client,
        false,
        &["--dst", VIP, "--port", "80", "--count", "5"],
    );
    assert_no_errors(&v);
}

#[test]
fn ten_thousand_services_are_all_programmed_and_reachable() {
    privileged!();
    let s = setup("10.216.0.0/24");
    let n = 10_000u32;
    let mut yaml = String::with_capacity(n as usize * 700);
    let vip = |i: u32| format!("10.97.{}.{}", i / 250, i % 250 + 1);
    for i in 0..n {
        let name = format!("svc-{i}");
        yaml.push_str(&service_yaml(&name, &vip(i), false));
        yaml.push_str("---\n");
        yaml.push_str(&slice_yaml(&name, &ready(&s.backends)));
        yaml.push_str("---\n");
    }
    let started = Instant::now();
    s.node.apply("many.yaml", &yaml);
    eprintln!(
        "applied {n} Services with 3 backends each in {:?}",
        started.elapsed()
    );
    let list = s.node.cli_json(&["service", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(n as usize));
    for i in (0..n).step_by(997) {
        for (in_cgroup, proto) in [(true, "tcp"), (false, "tcp"), (true, "udp")] {
            let v = s.node.probe(
                &s.client,
                in_cgroup,
                &[
                    "--dst",
                    &vip(i),
                    "--port",
                    "80",
                    "--proto",
                    proto,
                    "--count",
                    "2",
                ],
            );
            assert_no_errors(&v);
        }
    }
}

#[test]
fn a_backend_reaching_its_own_service_per_packet_is_hairpinned() {
    privileged!();
    let node = Node::start("10.219.0.0/24");
    let web = node.add_pod("web-1", "app=web");
    let _server = node.ident_server(&web, 8080);
    node.apply(
        "web.yaml",
        &(service_yaml("web", VIP, false)
            + "---\n"
            + &slice_yaml("web", &ready(std::slice::from_ref(&web)))),
    );
    // Outside the socket-LB cgroup: the per-packet path picks the pod itself as backend.
    for proto in ["tcp", "udp"] {
        let v = node.probe(
            &web,
            false,
            &[
                "--dst", VIP, "--port", "80", "--proto", proto, "--count", "5",
            ],
        );
        assert_no_errors(&v);
        assert_eq!(answers(&v), vec!["web-1"], "{proto}: {v}");
        let peers: Vec<&String> = v["peers"].as_object().expect("peers").keys().collect();
        assert_eq!(peers, vec![&format!("{VIP}:80")], "{proto}");
    }
}
