//! The engine on hand-written scenarios: verdicts, reasons, entries and the ipcache.

#![allow(clippy::unwrap_used)]

use ciliate_model::labels::Labels;
use ciliate_model::policy::entries::Lookup;
use ciliate_model::policy::{Direction, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ciliate_policy::{load, Config, IdentityLabels, NamedPorts, PolicyEngine, Reason};

const CLIENT: u32 = 300;
const SERVER: u32 = 301;
const OTHER_NS: u32 = 302;
const CLIENT2: u32 = 303;
const HOST: u32 = 1;
const WORLD: u32 = 2;

fn identities() -> IdentityLabels {
    let l = |s: &str| Labels::parse_list(s, "k8s").unwrap();
    [
        (CLIENT, l("app=client,io.kubernetes.pod.namespace=default")),
        (SERVER, l("app=server,io.kubernetes.pod.namespace=default")),
        (OTHER_NS, l("app=client,io.kubernetes.pod.namespace=other,io.cilium.k8s.namespace.labels.team=a")),
        (CLIENT2, l("app=client2,other=client,io.kubernetes.pod.namespace=default")),
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
    for p in loaded.policies {
        e.upsert(p.resource).unwrap();
    }
    e
}

/// Checks that the datapath's lookup over the entries agrees with the rule-based verdict for a
/// grid of flows between every pair of identities.
fn assert_entries_agree(e: &mut PolicyEngine, named: &NamedPorts) {
    let ids = identities();
    let r = e.resolve(&ids, named);
    let mut peers: Vec<u32> = vec![HOST, WORLD, 4, 6, 7];
    peers.extend(ids.keys());
    peers.extend(r.cidr_identities().iter().map(|i| i.id));
    for subject in ids.keys() {
        let pol = r.endpoint_policy(*subject).policy;
        for dir in Direction::ALL {
            for peer in &peers {
                for (proto, port) in [
                    (PROTO_TCP, 80),
                    (PROTO_TCP, 8080),
                    (PROTO_TCP, 8085),
                    (PROTO_UDP, 53),
                    (PROTO_ICMP, 8),
                    (PROTO_TCP, 443),
                ] {
                    let v = r.explain_direction(*subject, dir, *peer, proto, port);
                    let l = pol.lookup(dir, *peer, proto, port);
                    assert_eq!(v.allowed, l.is_allowed(), "{v} vs {l:?}");
                    assert_eq!(
                        v.drop_reason(),
                        match l {
                            Lookup::Allowed(_) => None,
                            Lookup::Denied(_) => Some(181),
                            Lookup::DefaultDenied => Some(133),
                        },
                        "{v}"
                    );
                }
            }
        }
    }
}

#[test]
fn no_policy_allows_everything() {
    let mut e = PolicyEngine::default();
    let ids = identities();
    let named = NamedPorts::new();
    let r = e.resolve(&ids, &named);
    let v = r.explain(CLIENT, SERVER, PROTO_TCP, 80);
    assert!(v.allowed);
    assert_eq!(v.ingress.unwrap().reason, Reason::NoPolicy);
    let p = r.endpoint_policy(SERVER).policy;
    assert_eq!(p.entries.len(), 2, "{p:#?}");
    assert!(!p.ingress.default_deny && !p.egress.default_deny);
}

#[test]
fn client_ingress_allows_only_the_client() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}]}]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    {
        let r = e.resolve(&ids, &named);
        let v = r.explain(CLIENT, SERVER, PROTO_TCP, 8085);
        assert!(v.allowed, "{v}");
        assert!(
            v.to_string()
                .contains("rule spec.ingress[0] of CiliumNetworkPolicy default/client-ingress"),
            "{v}"
        );
        let v = r.explain(CLIENT, SERVER, PROTO_TCP, 80);
        assert!(!v.allowed);
        assert_eq!(v.drop_reason(), Some(133));
        // Same labels, other namespace: not selected by a namespaced policy's peer selector.
        assert!(!r.explain(OTHER_NS, SERVER, PROTO_TCP, 8085).allowed);
        // The node may always reach its endpoints.
        assert!(r.explain(HOST, SERVER, PROTO_TCP, 80).allowed);
        assert!(!r.explain(WORLD, SERVER, PROTO_TCP, 8080).allowed);
        let p = r.endpoint_policy(SERVER).policy;
        assert!(p.ingress.default_deny && !p.egress.default_deny);
        let keys: Vec<String> = p.entries.iter().map(|e| e.key.to_string()).collect();
        assert_eq!(
            keys,
            [
                "egress any any",
                "ingress 1 any",
                "ingress 300 TCP/8080-8087",
                "ingress 300 TCP/8088-8089",
                "ingress 300 TCP/8090",
            ]
        );
    }
    assert_entries_agree(&mut e, &named);
}

#[test]
fn deny_wins_over_allow_all_and_wildcard_denies_are_copied() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mixed}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [all]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "0", protocol: TCP}]}]
  ingressDeny:
  - toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: client2}}]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    {
        let r = e.resolve(&ids, &named);
        let v = r.explain(CLIENT, SERVER, PROTO_TCP, 8080);
        assert!(!v.allowed);
        assert_eq!(v.drop_reason(), Some(181));
        assert!(v.to_string().contains("spec.ingressDeny[0]"), "{v}");
        assert!(r.explain(CLIENT, SERVER, PROTO_TCP, 80).allowed);
        assert!(!r.explain(CLIENT2, SERVER, PROTO_UDP, 53).allowed);
        let p = r.endpoint_policy(SERVER).policy;
        // The wildcard deny of TCP/8080 is copied under the client, which has its own entry.
        assert!(p
            .entries
            .iter()
            .any(|e| e.deny && e.key.identity == CLIENT && e.key.dport == 8080));
    }
    assert_entries_agree(&mut e, &named);
}

#[test]
fn cidr_rules_get_identities_and_ipcache_entries() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-cidr}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDRSet:
    - cidr: 10.0.0.0/8
      except: [10.96.0.0/12]
  - toCIDR: [192.0.2.1]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    {
        let r = e.resolve(&ids, &named);
        let ipc: Vec<String> = r
            .ipcache()
            .iter()
            .map(|e| format!("{} {}", e.prefix, e.identity))
            .collect();
        assert_eq!(
            ipc,
            [
                "10.0.0.0/8 16777216",
                "10.96.0.0/12 16777217",
                "192.0.2.1/32 16777218"
            ]
        );
        let inside = r.cidr_identity_of("10.1.2.3".parse().unwrap());
        let excepted = r.cidr_identity_of("10.100.0.1".parse().unwrap());
        let outside = r.cidr_identity_of("8.8.8.8".parse().unwrap());
        assert_eq!(outside, WORLD);
        assert!(r.explain(CLIENT, inside, PROTO_TCP, 443).allowed);
        assert!(!r.explain(CLIENT, excepted, PROTO_TCP, 443).allowed);
        assert!(!r.explain(CLIENT, outside, PROTO_TCP, 443).allowed);
        assert!(r.explain(CLIENT, 16777218, PROTO_UDP, 53).allowed);
    }
    assert_entries_agree(&mut e, &named);
}

#[test]
fn named_ports_resolve_against_endpoints() {
    let mut e = engine(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{port: http}]
  egress:
  - ports: [{port: dns, protocol: UDP}]
"#,
    );
    let ids = identities();
    let mut named = NamedPorts::new();
    named.insert(SERVER, "http", PROTO_TCP, 8080);
    named.insert(CLIENT, "dns", PROTO_UDP, 53);
    {
        let r = e.resolve(&ids, &named);
        assert!(r.explain(CLIENT, SERVER, PROTO_TCP, 8080).allowed);
        assert!(!r.explain(CLIENT, SERVER, PROTO_TCP, 80).allowed);
        assert!(r.explain(SERVER, CLIENT, PROTO_UDP, 53).allowed);
        // A rule for every destination takes a name's ports from every endpoint declaring it.
        assert!(r.explain(SERVER, CLIENT2, PROTO_UDP, 53).allowed);
        assert!(!r.explain(SERVER, CLIENT2, PROTO_UDP, 54).allowed);
        let res = r.endpoint_policy(SERVER);
        assert!(res.notes.is_empty(), "{:?}", res.notes);
    }
    assert_entries_agree(&mut e, &named);
    let empty = NamedPorts::new();
    let r = e.resolve(&ids, &empty);
    let res = r.endpoint_policy(SERVER);
    assert_eq!(res.notes.len(), 2, "{:?}", res.notes);
    assert!(
        res.notes[0].contains("named port \"http\" is not declared by identity 301"),
        "{:?}",
        res.notes
    );
}

#[test]
fn network_policy_namespace_selectors() {
    let mut e = engine(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-a, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}
      podSelector: {matchLabels: {app: client2}}
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    {
        let r = e.resolve(&ids, &named);
        assert!(r.explain(OTHER_NS, SERVER, PROTO_TCP, 1).allowed);
        assert!(r.explain(CLIENT2, SERVER, PROTO_TCP, 1).allowed);
        assert!(!r.explain(CLIENT, SERVER, PROTO_TCP, 1).allowed);
        // Egress is not isolated: policyTypes defaults to Ingress only.
        assert!(r.explain(SERVER, WORLD, PROTO_TCP, 1).allowed);
    }
    assert_entries_agree(&mut e, &named);
}

/// Only negative expressions on the namespace (issue #11): pods of every other namespace, never
/// the node or the world, which have no namespace at all.
#[test]
fn negative_namespace_selectors_select_only_pods() {
    for yaml in [
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: not-default, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [default]}]
"#,
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: not-default, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: io.kubernetes.pod.namespace, operator: NotIn, values: [default]}]
"#,
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: not-default, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name, operator: NotIn, values: [default]}]
"#,
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: not-default}
spec:
  endpointSelector: {matchLabels: {io.kubernetes.pod.namespace: default}}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: k8s:io.kubernetes.pod.namespace, operator: NotIn, values: [default]}]
"#,
    ] {
        let mut e = engine(yaml);
        // Without the default allowance for the node, so that the host's verdict is the rule's.
        let mut strict = PolicyEngine::new(Config {
            allow_localhost: false,
            ..Config::default()
        });
        for p in load("test.yaml", yaml).unwrap().policies {
            strict.upsert(p.resource).unwrap();
        }
        let ids = identities();
        let named = NamedPorts::new();
        assert!(
            !strict
                .resolve(&ids, &named)
                .explain(HOST, SERVER, PROTO_TCP, 80)
                .allowed
        );
        {
            let r = e.resolve(&ids, &named);
            assert!(r.explain(OTHER_NS, SERVER, PROTO_TCP, 80).allowed, "{yaml}");
            assert!(!r.explain(CLIENT, SERVER, PROTO_TCP, 80).allowed, "{yaml}");
            for peer in [WORLD, 4, 6, 7] {
                assert!(
                    !r.explain(peer, SERVER, PROTO_TCP, 80).allowed,
                    "{peer} allowed by {yaml}"
                );
            }
        }
        assert_entries_agree(&mut e, &named);
    }
}

#[test]
fn clusterwide_and_default_deny_switch() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-world}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false, egress: false}
  ingressDeny:
  - fromEntities: [world]
  egress:
  - toEndpoints: [{}]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    {
        let r = e.resolve(&ids, &named);
        assert!(!r.explain(WORLD, SERVER, PROTO_TCP, 80).allowed);
        assert!(r.explain(OTHER_NS, SERVER, PROTO_TCP, 80).allowed);
        let v = r.explain(SERVER, WORLD, PROTO_TCP, 80);
        assert!(v.allowed);
        assert!(matches!(
            v.egress.unwrap().reason,
            Reason::NoDefaultDeny { .. }
        ));
        let v = r.explain(SERVER, OTHER_NS, PROTO_TCP, 80);
        assert!(matches!(v.egress.unwrap().reason, Reason::AllowedBy { .. }));
    }
    assert_entries_agree(&mut e, &named);
}

#[test]
fn a_bad_update_changes_nothing() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress: [{}]
"#,
    );
    let bad: ciliate_model::policy::PolicyResource = serde_json::from_value(serde_json::json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "endPort": 10}]}]}]}
    }))
    .unwrap();
    let before: Vec<u32> = {
        let ids = identities();
        let named = NamedPorts::new();
        let r = e.resolve(&ids, &named);
        r.map_policy(SERVER)
            .entries
            .iter()
            .map(|m| m.rule)
            .collect()
    };
    let errs = e.upsert(bad).unwrap_err();
    assert!(errs[0]
        .to_string()
        .contains("endPort 10 must be greater than or equal to port 80"));
    let ids = identities();
    let named = NamedPorts::new();
    let r = e.resolve(&ids, &named);
    assert!(!r.explain(CLIENT, SERVER, PROTO_TCP, 80).allowed);
    let after: Vec<u32> = r
        .map_policy(SERVER)
        .entries
        .iter()
        .map(|m| m.rule)
        .collect();
    assert_eq!(before, after);
}

#[test]
fn map_entries_carry_rule_numbers_and_match_kinds() {
    use ciliate_model::bpf_policy::MatchKind;
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kinds}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  egressDeny:
  - toEntities: [world]
    toPorts: [{ports: [{port: "25", protocol: TCP}]}]
"#,
    );
    let ids = identities();
    let named = NamedPorts::new();
    let r = e.resolve(&ids, &named);
    let m = r.map_policy(SERVER);
    assert!(m.ingress_enforced && m.egress_enforced);
    let got: Vec<(u32, bool, Option<u8>, MatchKind, bool, String)> = m
        .entries
        .iter()
        .map(|x| {
            let rule = e_rule(&r, x.rule);
            (x.identity, x.egress, x.proto, x.kind, x.deny, rule)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                0,
                false,
                Some(PROTO_UDP),
                MatchKind::L4Only,
                false,
                "spec.ingress[1]".into()
            ),
            (1, false, None, MatchKind::L3Only, false, "-".into()),
            (
                2,
                true,
                Some(PROTO_TCP),
                MatchKind::L3L4,
                true,
                "spec.egressDeny[0]".into()
            ),
            (
                CLIENT,
                false,
                None,
                MatchKind::L3Only,
                false,
                "spec.ingress[0]".into()
            ),
        ]
    );
    let ip = r.ipcache4();
    assert!(ip.is_empty());
}

fn e_rule(r: &ciliate_policy::Resolved<'_>, id: u32) -> String {
    r.rule(id).map_or_else(|| "-".into(), |rule| rule.path())
}

/// Rule numbers name rules across engines (an agent restart builds a new one): the same rule
/// gets the same number whatever the order policies arrive in and whatever came and went
/// before, so events the datapath reported before a restart still name the right rule.
#[test]
fn rule_numbers_are_the_same_in_every_engine() {
    const A: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n  - fromEntities: [world]\n";
    const B: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: b}\nspec:\n  endpointSelector: {}\n  ingressDeny:\n  - fromEntities: [world]\n";
    let numbers = |e: &PolicyEngine| {
        e.rules()
            .map(|(id, r)| (r.to_string(), id))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let ab = engine(&format!("{A}---\n{B}"));
    let mut ba = engine(B);
    // A policy that came and went first, then the two in the other order.
    let gone = load("gone.yaml", &A.replace("name: a", "name: gone")).unwrap();
    let gone_ref = gone.policies[0].resource.policy_ref();
    ba.upsert(gone.policies[0].resource.clone()).unwrap();
    ba.remove(&gone_ref);
    for p in load("a.yaml", A).unwrap().policies {
        ba.upsert(p.resource).unwrap();
    }
    let n = numbers(&ab);
    assert_eq!(n.len(), 3, "{n:?}");
    assert_eq!(n, numbers(&ba));
    assert!(n.values().all(|id| *id != 0));
    for (id, r) in ab.rules() {
        assert_eq!(ab.rule_id(r), id);
        assert_eq!(
            ciliate_policy::stable_rule_number(r),
            id,
            "no collision here"
        );
    }
}
