//! Properties of the engine over random policies and identities:
//!
//! * the lookup over the computed entries gives the same verdict (and drop reason) as the
//!   rule-based explanation, for every endpoint, direction, peer, protocol and port, both as
//!   `EndpointPolicy::lookup` does it (peer identity first, then identity 0) and as the BPF
//!   program does it over the map entries (both identities, a deny in either wins);
//! * a deny rule always wins;
//! * entries carry the proxy port exactly where an endpoint has a redirect (HTTP on TCP, DNS on
//!   UDP and TCP), never on a deny, and a peer the datapath redirects always has rules at the
//!   proxy;
//! * `toFQDNs` peers, over a fixed FQDN view whose addresses fall inside and outside the CIDR
//!   rules' prefixes, agree between entries and explanations like every other peer;
//! * an endpoint selected by no policy allows everything;
//! * adding an allow rule never removes an allowed flow;
//! * a peer selector on namespaces (a `namespaceSelector`, or a Cilium selector naming the
//!   namespace or its labels), whatever its operators, selects pods only.

#![allow(clippy::unwrap_used)]

use ciliate_model::labels::Labels;
use ciliate_model::policy::entries::Lookup;
use ciliate_model::policy::{
    Direction, PolicyResource, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use ciliate_policy::map::datapath_verdict;
use ciliate_policy::{Config, IdentityLabels, NamedPorts, PolicyEngine, Resolved};
use proptest::prelude::*;
use serde_json::{json, Value};

const APPS: &[&str] = &["a", "b", "c"];
const PORTS: &[u16] = &[0, 53, 79, 80, 81, 1000, 1005, 1023, 8080, 65535];
const PROTOS: &[u8] = &[PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP];
/// An identity no policy can select (no rule names app z), for the "no policy" property.
const LONER: u32 = 399;

fn arb_identities() -> impl Strategy<Value = IdentityLabels> {
    prop::collection::vec(
        (
            prop::sample::select(APPS),
            prop::option::of(prop::sample::select(&["x", "y"][..])),
            prop::bool::ANY,
        ),
        1..6,
    )
    .prop_map(|v| {
        let mut ids: IdentityLabels = v
            .into_iter()
            .enumerate()
            .map(|(i, (app, tier, other_ns))| {
                let mut s = format!(
                    "app={app},io.kubernetes.pod.namespace={}",
                    if other_ns { "other" } else { "default" }
                );
                if let Some(t) = tier {
                    s.push_str(&format!(",tier={t}"));
                }
                (300 + i as u32, Labels::parse_list(&s, "k8s").unwrap())
            })
            .collect();
        ids.insert(
            LONER,
            Labels::parse_list("app=z,io.kubernetes.pod.namespace=default", "k8s").unwrap(),
        );
        ids
    })
}

/// The L3 part of a rule; `allow`: of an allow rule (only egress allow rules take toFQDNs).
fn arb_peer(ingress: bool, allow: bool) -> BoxedStrategy<Option<(String, Value)>> {
    let w = if ingress { "from" } else { "to" };
    let common = prop_oneof![
        Just(None),
        prop::sample::select(APPS).prop_map(move |a| Some((format!("{w}Endpoints"), json!([{"matchLabels": {"app": a}}])))),
        Just(Some((format!("{w}Endpoints"), json!([{}])))),
        prop::sample::select(APPS).prop_map(move |a| Some((
            format!("{w}Endpoints"),
            json!([{"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [a]}, {"key": "io.kubernetes.pod.namespace", "operator": "Exists"}]}])
        ))),
        prop::sample::select(&["all", "world", "cluster", "host"][..])
            .prop_map(move |e| Some((format!("{w}Entities"), json!([e])))),
        Just(Some((format!("{w}CIDRSet"), json!([{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}])))),
        Just(Some((format!("{w}CIDR"), json!(["10.1.2.0/24"])))),
    ];
    if ingress || !allow {
        return common.boxed();
    }
    // toFQDNs: egress allow rules only.
    let fqdns = prop::sample::select(vec![
        json!([{"matchName": "a.example.com"}]),
        json!([{"matchPattern": "*.example.com"}]),
    ])
    .prop_map(|f| Some(("toFQDNs".to_owned(), f)));
    prop_oneof![7 => common, 1 => fqdns].boxed()
}

/// The FQDN view the engines of these properties hold: addresses inside the CIDR rules'
/// prefixes (10.1.2.3), outside them, and shared by two names.
const FQDN_VIEW: &[(&str, &[&str])] = &[
    ("a.example.com.", &["10.1.2.3", "203.0.113.5"]),
    ("b.example.com.", &["10.1.2.3"]),
    ("c.example.org.", &["198.51.100.1"]),
];

/// The L4 part of a rule: `toPorts`, `icmps`, or nothing.
fn arb_l4() -> impl Strategy<Value = Option<(String, Value)>> {
    prop_oneof![
        Just(None),
        (
            prop::sample::select(PORTS),
            prop::option::of(0u16..40),
            prop::sample::select(&["TCP", "UDP", "ANY"][..])
        )
            .prop_map(|(port, span, proto)| {
                let mut p = json!({"port": port.to_string(), "protocol": proto});
                if let Some(s) = span.filter(|_| port != 0) {
                    p["endPort"] = json!(port.saturating_add(s));
                }
                Some(("toPorts".to_owned(), json!([{"ports": [p]}])))
            }),
        Just(Some((
            "icmps".to_owned(),
            json!([{"fields": [{"type": 8}]}])
        ))),
    ]
}

/// The L4 part of an allow rule: as [`arb_l4`], a TCP port with HTTP rules, or (egress) port
/// 53 with DNS rules.
fn arb_allow_l4(ingress: bool) -> BoxedStrategy<Option<(String, Value)>> {
    let http = (
        prop::sample::select(&PORTS[1..]),
        prop::sample::select(&["GET", "POST|PUT", ""][..]),
    )
        .prop_map(|(port, method)| {
            let http = if method.is_empty() { json!([{}]) } else { json!([{"method": method}]) };
            Some((
                "toPorts".to_owned(),
                json!([{"ports": [{"port": port.to_string(), "protocol": "TCP"}], "rules": {"http": http}}]),
            ))
        });
    if ingress {
        return prop_oneof![3 => arb_l4(), 1 => http].boxed();
    }
    // DNS rules are egress only.
    let dns = (
        prop::sample::select(&["ANY", "UDP", "TCP"][..]),
        prop::sample::select(vec![
            json!([{"matchPattern": "*"}]),
            json!([{"matchName": "a.example.com"}]),
        ]),
    )
        .prop_map(|(proto, dns)| {
            Some((
                "toPorts".to_owned(),
                json!([{"ports": [{"port": "53", "protocol": proto}], "rules": {"dns": dns}}]),
            ))
        });
    prop_oneof![3 => arb_l4(), 1 => http, 1 => dns].boxed()
}

fn arb_rule(ingress: bool) -> impl Strategy<Value = Value> {
    (arb_peer(ingress, false), arb_l4()).prop_map(|(peer, l4)| {
        let mut r = json!({});
        for (k, v) in [peer, l4].into_iter().flatten() {
            r[k] = v;
        }
        r
    })
}

fn arb_allow_rule(ingress: bool) -> impl Strategy<Value = Value> {
    (arb_peer(ingress, true), arb_allow_l4(ingress)).prop_map(|(peer, l4)| {
        let mut r = json!({});
        for (k, v) in [peer, l4].into_iter().flatten() {
            r[k] = v;
        }
        r
    })
}

/// One Cilium rule (`spec`): a subject and up to four sections.
fn arb_spec(allow_everyone: bool) -> impl Strategy<Value = Value> {
    let subject = if allow_everyone {
        prop_oneof![
            prop::sample::select(APPS).prop_map(|a| json!({"matchLabels": {"app": a}})),
            Just(json!({})),
        ]
        .boxed()
    } else {
        prop::sample::select(APPS)
            .prop_map(|a| json!({"matchLabels": {"app": a}}))
            .boxed()
    };
    (
        subject,
        prop::collection::vec(arb_allow_rule(true), 0..3),
        prop::collection::vec(arb_rule(true), 0..2),
        prop::collection::vec(arb_allow_rule(false), 0..3),
        prop::collection::vec(arb_rule(false), 0..2),
        prop::option::of(prop::bool::ANY),
        prop::option::of(prop::bool::ANY),
        prop::option::of(prop::sample::select(APPS)),
    )
        .prop_map(
            |(sel, ing, ing_deny, eg, eg_deny, dd_in, dd_eg, requires)| {
                let mut s = json!({"endpointSelector": sel});
                let mut ing = ing;
                if let (Some(app), Some(first)) = (requires, ing.first_mut()) {
                    first["fromRequires"] = json!([{"matchLabels": {"app": app}}]);
                }
                for (k, v) in [
                    ("ingress", ing),
                    ("ingressDeny", ing_deny),
                    ("egress", eg),
                    ("egressDeny", eg_deny),
                ] {
                    if !v.is_empty() {
                        s[k] = Value::Array(v);
                    }
                }
                if s.as_object().is_some_and(|o| o.len() == 1) {
                    s["ingress"] = json!([{}]);
                }
                let mut dd = json!({});
                if let Some(b) = dd_in {
                    dd["ingress"] = json!(b);
                }
                if let Some(b) = dd_eg {
                    dd["egress"] = json!(b);
                }
                s["enableDefaultDeny"] = dd;
                s
            },
        )
}

fn arb_policies(allow_everyone: bool) -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec((arb_spec(allow_everyone), prop::bool::ANY), 0..4).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (spec, clusterwide))| {
                let kind = if clusterwide {
                    "CiliumClusterwideNetworkPolicy"
                } else {
                    "CiliumNetworkPolicy"
                };
                json!({
                    "apiVersion": "cilium.io/v2",
                    "kind": kind,
                    "metadata": {"name": format!("p{i}"), "namespace": "default"},
                    "spec": spec,
                })
            })
            .collect()
    })
}

fn engine(policies: &[Value]) -> PolicyEngine {
    let mut e = PolicyEngine::default();
    for p in policies {
        let r: PolicyResource = serde_json::from_value(p.clone()).unwrap();
        e.upsert(r).unwrap_or_else(|errs| panic!("{p:#}: {errs:?}"));
    }
    for (name, ips) in FQDN_VIEW {
        e.set_fqdn_name(name, ips.iter().map(|i| i.parse().unwrap()).collect());
    }
    e
}

/// Every peer worth trying: the identities, the reserved ones, the CIDR ones, an unknown one.
fn peers(r: &Resolved<'_>, ids: &IdentityLabels) -> Vec<u32> {
    let mut out: Vec<u32> = (1..=8).collect();
    out.extend(ids.keys());
    out.extend(r.cidr_identities().iter().map(|i| i.id));
    out.push(12345);
    out
}

/// A case: (endpoint, direction, peer, protocol, port).
type Case = (u32, Direction, u32, u8, u16);

/// A case and its verdicts: allowed and drop reason from the rules, then from the entries.
type Verdicts = (Case, bool, Option<u8>, bool, Option<u8>);

/// Every case's verdicts.
fn verdicts(r: &Resolved<'_>, ids: &IdentityLabels) -> Vec<Verdicts> {
    let mut out = Vec::new();
    let peers = peers(r, ids);
    for subject in ids.keys() {
        let pol = r.endpoint_policy(*subject).policy;
        for dir in Direction::ALL {
            for peer in &peers {
                for proto in PROTOS {
                    for port in PORTS.iter().chain([8].iter()) {
                        let v = r.explain_direction(*subject, dir, *peer, *proto, *port);
                        let l = pol.lookup(dir, *peer, *proto, *port);
                        let lr = match l {
                            Lookup::Allowed(_) => None,
                            Lookup::Denied(_) => Some(181),
                            Lookup::DefaultDenied => Some(133),
                        };
                        out.push((
                            (*subject, dir, *peer, *proto, *port),
                            v.allowed,
                            v.drop_reason(),
                            l.is_allowed(),
                            lr,
                        ));
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn entries_agree_with_explain(ids in arb_identities(), policies in arb_policies(true)) {
        let mut e = engine(&policies);
        let named = NamedPorts::new();
        let r = e.resolve(&ids, &named);
        let maps: std::collections::BTreeMap<u32, _> = ids.keys().map(|id| (*id, r.map_policy(*id))).collect();
        for (case, allowed, reason, l_allowed, l_reason) in verdicts(&r, &ids) {
            prop_assert_eq!(allowed, l_allowed, "{:?}: explain {} vs entries", case, r.explain_direction(case.0, case.1, case.2, case.3, case.4));
            prop_assert_eq!(reason, l_reason, "{:?}", case);
            // And the datapath's own lookup (both identities, deny from either wins) over the
            // map entries.
            let (subject, dir, peer, proto, port) = case;
            let dp = datapath_verdict(&maps[&subject], dir == Direction::Egress, peer, proto, port);
            prop_assert_eq!(reason, dp, "{:?}: datapath", case);
        }
    }

    #[test]
    fn redirects_match_entries(ids in arb_identities(), policies in arb_policies(true)) {
        let mut e = engine(&policies);
        let named = NamedPorts::new();
        let r = e.resolve(&ids, &named);
        let peers = peers(&r, &ids);
        for subject in ids.keys() {
            let res = r.endpoint_policy(*subject);
            let with_port: std::collections::BTreeSet<(bool, u8, u16, u16)> = res
                .policy
                .entries
                .iter()
                .filter(|e| e.proxy_port != 0)
                .map(|e| (e.key.direction == Direction::Egress, e.key.proto, e.key.dport, e.proxy_port))
                .collect();
            let redirected: std::collections::BTreeSet<(bool, u8, u16, u16)> =
                res.redirects.iter().map(|x| (x.egress, x.proto, x.port, x.proxy_port)).collect();
            prop_assert_eq!(&with_port, &redirected);
            for entry in &res.policy.entries {
                let udp_dns = entry.key.proto == PROTO_UDP && entry.proxy_port == 15053;
                prop_assert!(entry.proxy_port == 0 || (!entry.deny && (entry.key.proto == PROTO_TCP || udp_dns) && entry.key.port_prefix_len == 16), "{:?}", entry);
            }
            for x in &res.redirects {
                let dns = x.parser == ciliate_model::l7::L7Parser::Dns;
                prop_assert_eq!(dns, x.proxy_port == 15053, "{:?}", x);
                prop_assert!(!dns || (x.egress && x.port == 53), "{:?}", x);
            }
            // A redirected peer always has rules at the proxy: the datapath never sends a
            // connection the proxy knows nothing of (which would be a 403 for an allowed flow
            // with no L7 rule). The one exception is told in a note: rules of a second L7
            // protocol on a port (DNS rules on a TCP port with HTTP rules) allow nothing there,
            // so a peer only they cover is redirected with no rules and refused (fail closed).
            for dir in Direction::ALL {
                for peer in &peers {
                    for (proto, port) in PORTS.iter().flat_map(|p| [(PROTO_TCP, *p), (PROTO_UDP, *p)]) {
                        if let Lookup::Allowed(e) = res.policy.lookup(dir, *peer, proto, port) {
                            if e.proxy_port != 0 {
                                let x = res.redirects.iter().find(|x| x.egress == (dir == Direction::Egress) && x.proto == proto && x.port == port);
                                let conflict = format!("{dir:?} port {port}, which other rules give");
                                let told = res.notes.iter().any(|n| n.contains(&conflict));
                                prop_assert!(told || x.is_some_and(|x| x.rules.iter().any(|p| ciliate_policy::l7::peer_rules_apply(p, *peer))), "{:?} {} {}", dir, peer, port);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn deny_always_wins(
        ids in arb_identities(),
        policies in arb_policies(true),
        ingress in prop::bool::ANY,
        port in prop::sample::select(PORTS),
        peer_kind in 0usize..3,
    ) {
        let (w, section) = if ingress { ("from", "ingressDeny") } else { ("to", "egressDeny") };
        let (field, value) = match peer_kind {
            0 => (format!("{w}Entities"), json!(["all"])),
            1 => (format!("{w}Endpoints"), json!([{"matchLabels": {"app": "a"}}])),
            _ => (format!("{w}CIDR"), json!(["10.0.0.0/8"])),
        };
        let mut policies = policies;
        policies.push(json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "deny"},
            "spec": {
                "endpointSelector": {},
                "enableDefaultDeny": {"ingress": false, "egress": false},
                section: [{field: value, "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]}],
            },
        }));
        let mut e = engine(&policies);
        let named = NamedPorts::new();
        let r = e.resolve(&ids, &named);
        let dir = if ingress { Direction::Ingress } else { Direction::Egress };
        let cidr_peers = [r.cidr_identity_of("10.1.2.3".parse().unwrap()), r.cidr_identity_of("10.200.0.1".parse().unwrap())];
        let denied_peers: Vec<u32> = match peer_kind {
            0 => peers(&r, &ids),
            // A clusterwide selector without a namespace selects pods of any namespace.
            1 => ids.iter().filter(|(_, l)| l.get("k8s", "app") == Some("a")).map(|(id, _)| *id).collect(),
            _ => cidr_peers.to_vec(),
        };
        for subject in ids.keys() {
            let pol = r.endpoint_policy(*subject).policy;
            for peer in &denied_peers {
                let v = r.explain_direction(*subject, dir, *peer, PROTO_TCP, port);
                prop_assert!(!v.allowed && v.drop_reason() == Some(181), "{}", v);
                prop_assert!(matches!(pol.lookup(dir, *peer, PROTO_TCP, port), Lookup::Denied(_)));
            }
        }
    }

    #[test]
    fn an_endpoint_no_policy_selects_allows_all(ids in arb_identities(), policies in arb_policies(false)) {
        let mut e = engine(&policies);
        let named = NamedPorts::new();
        let r = e.resolve(&ids, &named);
        let pol = r.endpoint_policy(LONER).policy;
        prop_assert_eq!(pol.entries.len(), 2);
        for dir in Direction::ALL {
            for peer in peers(&r, &ids) {
                for proto in PROTOS {
                    for port in PORTS {
                        prop_assert!(r.explain_direction(LONER, dir, peer, *proto, *port).allowed);
                        prop_assert!(pol.lookup(dir, peer, *proto, *port).is_allowed());
                    }
                }
            }
        }
    }

    #[test]
    fn adding_an_allow_rule_never_removes_a_flow(
        ids in arb_identities(),
        policies in arb_policies(true),
        ingress in prop::bool::ANY,
        rule in (arb_peer(true, true), arb_peer(false, true), arb_l4()),
        target in any::<prop::sample::Index>(),
    ) {
        let (peer_in, peer_out, l4) = rule;
        let mut extra = json!({});
        for (k, v) in [if ingress { peer_in } else { peer_out }, l4].into_iter().flatten() {
            extra[k] = v;
        }
        let (section, deny_section) = if ingress { ("ingress", "ingressDeny") } else { ("egress", "egressDeny") };
        let mut more = policies.clone();
        // Into a policy that already has rules in that direction (its default deny does not
        // change), or as a new policy that does not enable default deny.
        let candidates: Vec<usize> = more
            .iter()
            .enumerate()
            .filter(|(_, p)| p["spec"].get(section).is_some() || p["spec"].get(deny_section).is_some())
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            more.push(json!({
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumClusterwideNetworkPolicy",
                "metadata": {"name": "extra"},
                "spec": {"endpointSelector": {}, "enableDefaultDeny": {section: false}, section: [extra]},
            }));
        } else {
            let i = candidates[target.index(candidates.len())];
            let spec = &mut more[i]["spec"];
            match spec.get_mut(section).and_then(Value::as_array_mut) {
                Some(list) => list.push(extra),
                None => spec[section] = json!([extra]),
            }
        }
        let named = NamedPorts::new();
        let mut before = engine(&policies);
        let mut after = engine(&more);
        let rb = before.resolve(&ids, &named);
        let ra = after.resolve(&ids, &named);
        // CIDR identities may be numbered differently: compare by representative addresses.
        let b = verdicts(&rb, &ids);
        let a = verdicts(&ra, &ids);
        let key = |r: &Resolved<'_>, c: &Case| -> Option<(u32, Direction, String, u8, u16)> {
            let peer = if c.2 >= 1 << 24 {
                r.ipcache()
                    .into_iter()
                    .find(|e| e.identity == c.2)?
                    .prefix
                    .to_string()
            } else {
                c.2.to_string()
            };
            Some((c.0, c.1, peer, c.3, c.4))
        };
        let after_map: std::collections::BTreeMap<_, _> = a.iter().filter_map(|v| Some((key(&ra, &v.0)?, (v.1, v.3)))).collect();
        for v in &b {
            let Some(k) = key(&rb, &v.0) else { continue };
            if v.1 {
                if let Some((explained, looked_up)) = after_map.get(&k) {
                    prop_assert!(*explained && *looked_up, "{:?} was allowed and is not after adding {}", k, more.len());
                }
            }
        }
    }
}

/// A selector naming only the namespace or its labels, with any operator.
fn arb_namespace_requirement() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["kubernetes.io/metadata.name", "team"][..]),
        prop::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
        prop::sample::select(&["default", "other", "a"][..]),
    )
        .prop_map(|(key, op, value)| {
            let mut r = json!({"key": key, "operator": op});
            if op == "In" || op == "NotIn" {
                r["values"] = json!([value]);
            }
            r
        })
}

/// The same requirement in a policy of `kind` (0: NetworkPolicy namespaceSelector, 1: CNP on
/// namespace labels, 2: CNP on the namespace name, 3: clusterwide on the namespace name).
fn namespace_peer_policy(kind: usize, req: &Value) -> Value {
    let cilium_key = |key: &str| {
        if kind == 1 || key != "kubernetes.io/metadata.name" {
            format!("io.cilium.k8s.namespace.labels.{key}")
        } else {
            "io.kubernetes.pod.namespace".to_owned()
        }
    };
    let mut creq = req.clone();
    creq["key"] = json!(cilium_key(req["key"].as_str().unwrap()));
    match kind {
        0 => json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "ns", "namespace": "default"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [req]}}]}]},
        }),
        1 | 2 => json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "ns", "namespace": "default"},
            "spec": {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchExpressions": [creq]}]}]},
        }),
        _ => json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "ns"},
            "spec": {"endpointSelector": {"matchLabels": {"io.kubernetes.pod.namespace": "default"}}, "ingress": [{"fromEndpoints": [{"matchExpressions": [creq]}]}]},
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn namespace_peers_are_pods_only(
        ids in arb_identities(),
        kind in 0usize..4,
        req in arb_namespace_requirement(),
    ) {
        let mut ids = ids;
        // A pod whose namespace carries a label, for selectors on namespace labels.
        ids.insert(
            398,
            Labels::parse_list(
                "app=a,io.kubernetes.pod.namespace=other,io.cilium.k8s.namespace.labels.team=a",
                "k8s",
            )
            .unwrap(),
        );
        let policy = namespace_peer_policy(kind, &req);
        // Without the default allowance for the node, so that the host's verdict is the rule's.
        let mut e = PolicyEngine::new(Config { allow_localhost: false, ..Config::default() });
        e.upsert(serde_json::from_value(policy.clone()).unwrap()).unwrap();
        let named = NamedPorts::new();
        let r = e.resolve(&ids, &named);
        let subject = LONER;
        let maps = r.map_policy(subject);
        // No namespace: the reserved identities, CIDR identities, an unknown identity.
        let not_pods: Vec<u32> = peers(&r, &ids).into_iter().filter(|p| !ids.contains_key(p)).collect();
        for peer in not_pods {
            let v = r.explain_direction(subject, Direction::Ingress, peer, PROTO_TCP, 80);
            prop_assert!(!v.allowed, "{} allowed by {:#}: {}", peer, policy, v);
            prop_assert_eq!(
                datapath_verdict(&maps, false, peer, PROTO_TCP, 80),
                Some(133),
                "{} by {:#}",
                peer,
                policy
            );
        }
        for peer in ids.keys() {
            let v = r.explain_direction(subject, Direction::Ingress, *peer, PROTO_TCP, 80);
            prop_assert_eq!(
                v.drop_reason(),
                datapath_verdict(&maps, false, *peer, PROTO_TCP, 80),
                "{} by {:#}",
                peer,
                policy
            );
        }
    }
}
