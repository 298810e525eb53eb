//! HTTP policy compiled to proxy redirects: Cilium's documented L7 examples
//! (`examples/policies/l7/http/` of Cilium, the `policy/language` page's HTTP examples) to the
//! exact entries and redirects, the invariants between entries and redirects, and `explain_l7`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use ciliate_model::l7::{HttpMatch, KafkaMatch, L7Parser, L7PeerRules, L7Redirect};
use ciliate_model::labels::Labels;
use ciliate_model::policy::{Direction, EndpointPolicy, EntrySource, PROTO_ANY, PROTO_TCP};
use ciliate_policy::l7::HttpRequestView;
use ciliate_policy::{load, IdentityLabels, NamedPorts, PolicyEngine};

const SERVICE: u32 = 300;
const PROD: u32 = 301;
const OTHER: u32 = 302;
const MY_SERVICE: u32 = 303;
const HOST: u32 = 1;
const INGRESS_PROXY: u16 = 15002;
const EGRESS_PROXY: u16 = 15001;

fn identities() -> IdentityLabels {
    let l = |s: &str| Labels::parse_list(s, "k8s").unwrap();
    [
        (
            SERVICE,
            l("app=service,io.kubernetes.pod.namespace=default"),
        ),
        (PROD, l("env=prod,io.kubernetes.pod.namespace=default")),
        (OTHER, l("app=other,io.kubernetes.pod.namespace=default")),
        (
            MY_SERVICE,
            l("app=myService,io.kubernetes.pod.namespace=default"),
        ),
    ]
    .into_iter()
    .collect()
}

fn engine(yaml: &str) -> PolicyEngine {
    let mut e = PolicyEngine::default();
    let loaded = load("test.yaml", yaml).unwrap_or_else(|errs| {
        panic!(
            "{}",
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    for p in loaded.policies {
        e.upsert(p.resource).unwrap();
    }
    e
}

/// The entries as (direction, identity, proto, port, prefix, deny, proxy port).
type Row = (Direction, u32, u8, u16, u8, bool, u16);

fn rows(p: &EndpointPolicy) -> Vec<Row> {
    let mut out: Vec<Row> = p
        .entries
        .iter()
        .map(|e| {
            let k = &e.key;
            (
                k.direction,
                k.identity,
                k.proto,
                k.dport,
                k.port_prefix_len,
                e.deny,
                e.proxy_port,
            )
        })
        .collect();
    out.sort();
    out
}

fn get(method: &str, path: &str) -> HttpMatch {
    HttpMatch {
        method: Some(method.into()),
        path: Some(path.into()),
        ..HttpMatch::default()
    }
}

/// Every allow entry with a proxy port has a redirect for its direction and port, every
/// redirect has such an entry, denies never redirect, the proxy port is the direction's.
fn check_invariants(p: &EndpointPolicy, redirects: &[L7Redirect]) {
    let with_port: BTreeSet<(bool, u16)> = p
        .entries
        .iter()
        .filter(|e| e.proxy_port != 0)
        .map(|e| {
            assert!(!e.deny, "a deny entry redirects: {:?}", e.key);
            assert_eq!(e.key.proto, PROTO_TCP, "{:?}", e.key);
            assert_eq!(e.key.port_prefix_len, 16, "{:?}", e.key);
            let egress = e.key.direction == Direction::Egress;
            assert_eq!(
                e.proxy_port,
                if egress { EGRESS_PROXY } else { INGRESS_PROXY }
            );
            (egress, e.key.dport)
        })
        .collect();
    let redirected: BTreeSet<(bool, u16)> = redirects.iter().map(|r| (r.egress, r.port)).collect();
    assert_eq!(with_port, redirected);
    for r in redirects {
        assert_eq!(r.proto, PROTO_TCP);
        assert!(!r.rules.is_empty());
        for pr in &r.rules {
            if let Some(p) = &pr.peers {
                assert!(p.windows(2).all(|w| w[0] < w[1]), "peers sorted: {p:?}");
            }
        }
    }
    // No default entry ever redirects.
    for e in &p.entries {
        if e.derived_from
            .iter()
            .all(|s| matches!(s, EntrySource::NoDefaultDeny | EntrySource::AllowLocalhost))
        {
            assert_eq!(e.proxy_port, 0, "{:?}", e.key);
        }
    }
}

#[test]
fn docs_l7_rule_get_path1_put_path2_with_header() {
    // Cilium's examples/policies/l7/http/http.yaml (written there with `HTTP:`, which Go's
    // case-insensitive JSON accepts; Kubernetes' schema and Ciliate want `http`).
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-rule, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: myService}
  ingress:
  - toPorts:
    - ports:
      - port: '80'
        protocol: TCP
      rules:
        http:
        - method: GET
          path: "/path1$"
        - method: PUT
          path: "/path2$"
          headers:
          - 'X-My-Header: true'
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let id = rule_number(&e, "spec.ingress[0]");
    let r = e.resolve(&ids, &named);
    let res = r.endpoint_policy(MY_SERVICE);
    assert_eq!(
        rows(&res.policy),
        vec![
            (
                Direction::Ingress,
                0,
                PROTO_TCP,
                80,
                16,
                false,
                INGRESS_PROXY
            ),
            (Direction::Ingress, HOST, PROTO_ANY, 0, 0, false, 0),
            (Direction::Egress, 0, PROTO_ANY, 0, 0, false, 0),
        ]
    );
    assert_eq!(
        res.redirects,
        vec![L7Redirect {
            endpoint: 0,
            endpoint_ip: std::net::Ipv4Addr::UNSPECIFIED,
            egress: false,
            proto: PROTO_TCP,
            port: 80,
            parser: ciliate_model::l7::L7Parser::Http,
            proxy_port: INGRESS_PROXY,
            rules: vec![L7PeerRules {
                peers: None,
                rule: id,
                http: vec![
                    get("GET", "/path1$"),
                    HttpMatch {
                        headers: vec!["X-My-Header: true".into()],
                        ..get("PUT", "/path2$")
                    },
                ],
                ..Default::default()
            }],
        }]
    );
    check_invariants(&res.policy, &res.redirects);
    // The map carries the proxy port through.
    let map = r.map_policy(MY_SERVICE);
    assert!(map
        .entries
        .iter()
        .any(|m| m.port == 80 && m.proxy_port == INGRESS_PROXY && m.rule == id));
    // What the proxy does, explained.
    let req = |m, p, h: Vec<(&'static str, &'static str)>| HttpRequestView {
        method: m,
        path: p,
        host: "my-service",
        headers: h,
    };
    let x = |q: &HttpRequestView<'_>| {
        r.explain_l7(MY_SERVICE, Direction::Ingress, OTHER, 80, Some(q))
            .unwrap()
            .allowed_by
            .unwrap()
    };
    assert_eq!(x(&req("GET", "/path1", vec![])).len(), 1);
    assert_eq!(x(&req("GET", "/path1", vec![]))[0].1, Some(0));
    assert!(x(&req("GET", "/path2", vec![])).is_empty());
    assert!(x(&req("PUT", "/path2", vec![])).is_empty());
    assert_eq!(
        x(&req("PUT", "/path2", vec![("X-My-Header", "true")]))[0].1,
        Some(1)
    );
    // Port 81 is not redirected (and not allowed).
    assert!(r
        .explain_l7(MY_SERVICE, Direction::Ingress, OTHER, 81, None)
        .is_none());
}

#[test]
fn docs_rule1_separate_l3_rule_inherits_the_redirect() {
    // Cilium's examples/policies/l7/http/simple/l7.yaml as written: the L3 rule (from
    // env=prod, every port) and the L7 rule (any peer, GET /public on 80) are separate rules.
    // Cilium's map state gives env=prod an exact entry for port 80 with the redirect (a peer's
    // own entries are looked up first), and env=prod may send any request there.
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: service}
  ingress:
  - fromEndpoints:
    - matchLabels: {env: prod}
  - toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: "GET"
          path: "/public"
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let (l3, l7) = ids_of(&mut e, &["spec.ingress[0]", "spec.ingress[1]"]);
    let r = e.resolve(&ids, &named);
    let res = r.endpoint_policy(SERVICE);
    assert_eq!(
        rows(&res.policy),
        vec![
            (
                Direction::Ingress,
                0,
                PROTO_TCP,
                80,
                16,
                false,
                INGRESS_PROXY
            ),
            (Direction::Ingress, HOST, PROTO_ANY, 0, 0, false, 0),
            (Direction::Ingress, PROD, PROTO_ANY, 0, 0, false, 0),
            (
                Direction::Ingress,
                PROD,
                PROTO_TCP,
                80,
                16,
                false,
                INGRESS_PROXY
            ),
            (Direction::Egress, 0, PROTO_ANY, 0, 0, false, 0),
        ]
    );
    assert_eq!(res.redirects.len(), 1);
    assert_eq!(
        res.redirects[0].rules,
        vec![
            L7PeerRules {
                peers: Some(vec![PROD]),
                rule: l3,
                http: vec![],
                ..Default::default()
            },
            L7PeerRules {
                peers: None,
                rule: l7,
                http: vec![get("GET", "/public")],
                ..Default::default()
            },
        ]
    );
    check_invariants(&res.policy, &res.redirects);
    let post = HttpRequestView {
        method: "POST",
        path: "/private",
        host: "service",
        headers: vec![],
    };
    let by_prod = r
        .explain_l7(SERVICE, Direction::Ingress, PROD, 80, Some(&post))
        .unwrap();
    assert_eq!(by_prod.allowed_by.unwrap().len(), 1);
    let by_other = r
        .explain_l7(SERVICE, Direction::Ingress, OTHER, 80, Some(&post))
        .unwrap();
    assert!(by_other.allowed_by.unwrap().is_empty());
    // Other ports of env=prod stay L3-allowed, without the proxy.
    assert!(r
        .explain_l7(SERVICE, Direction::Ingress, PROD, 443, None)
        .is_none());
}

#[test]
fn docs_fancyrule_ingress_and_egress_with_host() {
    // Cilium's examples/policies/l7/http/l7_multi.yaml.
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fancyrule, namespace: default}
specs:
  - endpointSelector:
      matchLabels: {app: service}
    ingress:
    - fromEndpoints:
      - matchLabels: {env: prod}
      toPorts:
      - ports:
        - port: "80"
          protocol: TCP
        rules:
          http:
          - method: "GET"
            path: "/public"
  - endpointSelector:
      matchLabels: {env: prod}
    egress:
    - toPorts:
      - ports:
        - port: "80"
          protocol: TCP
        rules:
          http:
          - method: "POST"
            host: "^external-service.org$"
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let (ing, eg) = ids_of(&mut e, &["specs[0].ingress[0]", "specs[1].egress[0]"]);
    let r = e.resolve(&ids, &named);
    let svc = r.endpoint_policy(SERVICE);
    assert_eq!(
        rows(&svc.policy),
        vec![
            (Direction::Ingress, HOST, PROTO_ANY, 0, 0, false, 0),
            (
                Direction::Ingress,
                PROD,
                PROTO_TCP,
                80,
                16,
                false,
                INGRESS_PROXY
            ),
            (Direction::Egress, 0, PROTO_ANY, 0, 0, false, 0),
        ]
    );
    assert_eq!(
        svc.redirects[0].rules,
        vec![L7PeerRules {
            peers: Some(vec![PROD]),
            rule: ing,
            http: vec![get("GET", "/public")],
            ..Default::default()
        }]
    );
    check_invariants(&svc.policy, &svc.redirects);
    let prod = r.endpoint_policy(PROD);
    assert_eq!(
        rows(&prod.policy),
        vec![
            (Direction::Ingress, 0, PROTO_ANY, 0, 0, false, 0),
            (Direction::Egress, 0, PROTO_TCP, 80, 16, false, EGRESS_PROXY),
        ]
    );
    assert_eq!(prod.redirects.len(), 1);
    assert!(prod.redirects[0].egress);
    assert_eq!(
        prod.redirects[0].rules,
        vec![L7PeerRules {
            peers: None,
            rule: eg,
            http: vec![HttpMatch {
                method: Some("POST".into()),
                host: Some("^external-service.org$".into()),
                ..HttpMatch::default()
            }],
            ..Default::default()
        }]
    );
    check_invariants(&prod.policy, &prod.redirects);
    let q = HttpRequestView {
        method: "POST",
        path: "/x",
        host: "external-service.org",
        headers: vec![],
    };
    assert_eq!(
        r.explain_l7(PROD, Direction::Egress, 2, 80, Some(&q))
            .unwrap()
            .allowed_by
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn an_l4_allow_on_the_same_port_allows_every_request_and_denies_never_redirect() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mixed, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: service}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: other}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - fromEndpoints:
    - matchLabels: {env: prod}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {app: myService}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let (plain, l7) = ids_of(&mut e, &["spec.ingress[0]", "spec.ingress[1]"]);
    let r = e.resolve(&ids, &named);
    let res = r.endpoint_policy(SERVICE);
    assert_eq!(
        rows(&res.policy),
        vec![
            (Direction::Ingress, HOST, PROTO_ANY, 0, 0, false, 0),
            (
                Direction::Ingress,
                PROD,
                PROTO_TCP,
                80,
                16,
                false,
                INGRESS_PROXY
            ),
            (
                Direction::Ingress,
                OTHER,
                PROTO_TCP,
                80,
                16,
                false,
                INGRESS_PROXY
            ),
            (Direction::Ingress, MY_SERVICE, PROTO_TCP, 80, 16, true, 0),
            (Direction::Egress, 0, PROTO_ANY, 0, 0, false, 0),
        ]
    );
    assert_eq!(
        res.redirects[0].rules,
        vec![
            L7PeerRules {
                peers: Some(vec![OTHER]),
                rule: plain,
                http: vec![],
                ..Default::default()
            },
            L7PeerRules {
                peers: Some(vec![PROD]),
                rule: l7,
                http: vec![HttpMatch {
                    method: Some("GET".into()),
                    ..HttpMatch::default()
                }],
                ..Default::default()
            },
        ]
    );
    check_invariants(&res.policy, &res.redirects);
    assert!(r
        .explain_l7(SERVICE, Direction::Ingress, MY_SERVICE, 80, None)
        .is_none());
}

#[test]
fn a_redirect_whose_entries_are_all_denied_is_dropped() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: denied, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: service}
  ingress:
  - fromEndpoints:
    - matchLabels: {env: prod}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
  ingressDeny:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let r = e.resolve(&ids, &named);
    let res = r.endpoint_policy(SERVICE);
    assert!(res.redirects.is_empty());
    assert!(res.policy.entries.iter().all(|e| e.proxy_port == 0));
    check_invariants(&res.policy, &res.redirects);
}

#[test]
fn every_example_keeps_the_invariants() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let ids = identities();
    let named = NamedPorts::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap();
        if !f.file_type().unwrap().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(f.path()).unwrap();
        let Ok(loaded) = load("x.yaml", &text) else {
            continue;
        };
        let mut e = PolicyEngine::default();
        for p in loaded.policies {
            e.upsert(p.resource).unwrap();
        }
        let r = e.resolve(&ids, &named);
        for id in ids.keys() {
            let res = r.endpoint_policy(*id);
            check_invariants(&res.policy, &res.redirects);
        }
    }
}

/// The number of a rule, by its path.
fn rule_number(e: &PolicyEngine, path: &str) -> u32 {
    e.rules()
        .find(|(_, r)| r.path() == path)
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no rule {path}"))
}

/// The numbers of two rules, by path.
fn ids_of(e: &mut PolicyEngine, paths: &[&str; 2]) -> (u32, u32) {
    (rule_number(e, paths[0]), rule_number(e, paths[1]))
}

#[test]
fn docs_kafka_roles_become_api_keys_on_a_kafka_redirect() {
    // Cilium's "Securing a Kafka cluster" policy, reduced to its two kinds of rule.
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: secure-kafka, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: service}
  ingress:
  - fromEndpoints:
    - matchLabels: {env: prod}
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - role: produce
          topic: deathstar-plans
        - apiKey: ApiVersions
        - apiKey: metadata
          apiVersion: "12"
          clientID: rdkafka
  - fromEndpoints:
    - matchLabels: {app: other}
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - role: consume
          topic: empire-announce
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let produce = rule_number(&e, "spec.ingress[0]");
    let consume = rule_number(&e, "spec.ingress[1]");
    let r = e.resolve(&ids, &named);
    let res = r.endpoint_policy(SERVICE);
    assert_eq!(
        rows(&res.policy),
        vec![
            (Direction::Ingress, HOST, PROTO_ANY, 0, 0, false, 0),
            (
                Direction::Ingress,
                PROD,
                PROTO_TCP,
                9092,
                16,
                false,
                INGRESS_PROXY
            ),
            (
                Direction::Ingress,
                OTHER,
                PROTO_TCP,
                9092,
                16,
                false,
                INGRESS_PROXY
            ),
            (Direction::Egress, 0, PROTO_ANY, 0, 0, false, 0),
        ]
    );
    assert_eq!(res.redirects.len(), 1);
    let rd = &res.redirects[0];
    assert_eq!(
        (rd.parser, rd.port, rd.egress, rd.proxy_port),
        (L7Parser::Kafka, 9092, false, INGRESS_PROXY)
    );
    assert_eq!(
        rd.rules,
        vec![
            L7PeerRules {
                peers: Some(vec![PROD]),
                rule: produce,
                kafka: vec![
                    KafkaMatch {
                        api_keys: vec![0, 3, 18],
                        topic: Some("deathstar-plans".into()),
                        ..Default::default()
                    },
                    KafkaMatch {
                        api_keys: vec![18],
                        ..Default::default()
                    },
                    KafkaMatch {
                        api_keys: vec![3],
                        api_version: Some(12),
                        client_id: Some("rdkafka".into()),
                        topic: None,
                    },
                ],
                ..Default::default()
            },
            L7PeerRules {
                peers: Some(vec![OTHER]),
                rule: consume,
                kafka: vec![KafkaMatch {
                    api_keys: vec![1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18],
                    topic: Some("empire-announce".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ]
    );
    check_invariants(&res.policy, &res.redirects);
    // An HTTP request is allowed by none of these rules.
    let get = HttpRequestView {
        method: "GET",
        path: "/",
        host: "kafka",
        headers: vec![],
    };
    assert!(r
        .explain_l7(SERVICE, Direction::Ingress, PROD, 9092, Some(&get))
        .unwrap()
        .allowed_by
        .unwrap()
        .is_empty());
}

#[test]
fn http_and_kafka_rules_on_one_port_fail_closed_with_a_note() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: service}
  ingress:
  - fromEndpoints: [{matchLabels: {env: prod}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        http: [{method: GET}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: service}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce}]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let r = e.resolve(&ids, &named);
    let res = r.endpoint_policy(SERVICE);
    assert_eq!(res.redirects.len(), 1);
    let rd = &res.redirects[0];
    // One parser per port; the other protocol's peers have no rule there: refused.
    assert_eq!(rd.rules.len(), 1, "{:?}", rd.rules);
    assert_eq!(rd.rules[0].peers, Some(vec![PROD]));
    assert!(
        res.notes.iter().any(|n| n.contains("port 9092")),
        "{:?}",
        res.notes
    );
    check_invariants(&res.policy, &res.redirects);
}
