//! DNS rules and `toFQDNs` compiled: Cilium's documented examples (the `dns-sw-app` toFQDNs
//! policy of the "Locking down external access with DNS-based policies" guide, DNS visibility
//! with `matchPattern: "*"`) to the exact entries and redirects, the addresses the FQDN view
//! holds becoming CIDR identities and allowed peers, which endpoints a change touches, and
//! bad names and patterns refused with the field that holds them.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ciliate_model::identity::MIN_CIDR_IDENTITY;
use ciliate_model::l7::{DnsMatch, L7Parser};
use ciliate_model::labels::Labels;
use ciliate_model::policy::{Direction, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use ciliate_policy::{load, IdentityLabels, NamedPorts, PolicyEngine};

const APP: u32 = 300;
const KUBE_DNS: u32 = 301;
const OTHER: u32 = 302;
const DNS_PROXY: u16 = 15053;

fn identities() -> IdentityLabels {
    let l = |s: &str| Labels::parse_list(s, "k8s").unwrap();
    [
        (
            APP,
            l("org=empire,class=mediabot,io.kubernetes.pod.namespace=default"),
        ),
        (
            KUBE_DNS,
            l("k8s-app=kube-dns,io.kubernetes.pod.namespace=kube-system"),
        ),
        (OTHER, l("app=other,io.kubernetes.pod.namespace=default")),
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

fn errors(yaml: &str) -> Vec<String> {
    match load("bad.yaml", yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    }
}

/// Cilium's `dns-sw-app.yaml` (the toFQDNs getting-started guide), as written there.
const SW_APP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: fqdn
spec:
  endpointSelector:
    matchLabels:
      org: empire
      class: mediabot
  egress:
  - toFQDNs:
    - matchName: "api.github.com"
  - toEndpoints:
    - matchLabels:
        "k8s:io.kubernetes.pod.namespace": kube-system
        "k8s:k8s-app": kube-dns
    toPorts:
    - ports:
      - port: "53"
        protocol: ANY
      rules:
        dns:
        - matchPattern: "*"
"#;

/// The guide's second step: a pattern, on port 443 only.
const SW_APP_PATTERN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: fqdn
spec:
  endpointSelector:
    matchLabels:
      org: empire
      class: mediabot
  egress:
  - toFQDNs:
    - matchPattern: "*.github.com"
    toPorts:
    - ports:
      - port: "443"
        protocol: TCP
  - toEndpoints:
    - matchLabels:
        "k8s:io.kubernetes.pod.namespace": kube-system
        "k8s:k8s-app": kube-dns
    toPorts:
    - ports:
      - port: "53"
        protocol: ANY
      rules:
        dns:
        - matchPattern: "*"
"#;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|s| ip(s)).collect()
}

#[test]
fn dns_rules_redirect_udp_and_tcp_port_53_to_the_dns_proxy() {
    let mut e = engine(SW_APP);
    let ids = identities();
    let np = NamedPorts::new();
    let r = e.resolve(&ids, &np);
    let result = r.endpoint_policy(APP);
    let dns: Vec<_> = result
        .policy
        .entries
        .iter()
        .filter(|e| e.key.identity == KUBE_DNS)
        .map(|e| (e.key.proto, e.key.dport, e.deny, e.proxy_port))
        .collect();
    // ANY is TCP, UDP and SCTP; the proxy speaks UDP and TCP, SCTP stays closed.
    assert_eq!(
        dns,
        vec![
            (PROTO_TCP, 53, false, DNS_PROXY),
            (PROTO_UDP, 53, false, DNS_PROXY)
        ]
    );
    assert!(!result
        .policy
        .entries
        .iter()
        .any(|e| e.key.proto == PROTO_SCTP));
    let redirects: Vec<_> = result
        .redirects
        .iter()
        .map(|x| (x.egress, x.proto, x.port, x.parser, x.proxy_port))
        .collect();
    assert_eq!(
        redirects,
        vec![
            (true, PROTO_TCP, 53, L7Parser::Dns, DNS_PROXY),
            (true, PROTO_UDP, 53, L7Parser::Dns, DNS_PROXY)
        ]
    );
    for x in &result.redirects {
        assert_eq!(x.rules.len(), 1);
        assert_eq!(x.rules[0].peers, Some(vec![KUBE_DNS]));
        assert_eq!(
            x.rules[0].dns,
            vec![DnsMatch {
                match_name: None,
                match_pattern: Some("*.".into())
            }]
        );
        assert!(x.rules[0].rule > 0);
    }
    // Other endpoints are not touched.
    assert!(r.endpoint_policy(OTHER).redirects.is_empty());
}

#[test]
fn to_fqdns_allows_the_learned_addresses_only() {
    let mut e = engine(SW_APP);
    let ids = identities();
    let np = NamedPorts::new();
    {
        let r = e.resolve(&ids, &np);
        // Nothing learned: no CIDR identity, the world is refused.
        assert!(r.ipcache().is_empty());
        assert!(!r.explain(APP, 2, PROTO_TCP, 443).allowed);
    }
    assert!(e.set_fqdn_name("api.github.com.", ips(&["140.82.121.6", "140.82.121.5"])));
    assert!(!e.set_fqdn_name("api.github.com.", ips(&["140.82.121.6", "140.82.121.5"])));
    // A name no selector matches gets no identity.
    e.set_fqdn_name("example.com.", ips(&["93.184.216.34"]));
    let r = e.resolve(&ids, &np);
    let cache: Vec<_> = r.ipcache().iter().map(|c| c.prefix.to_string()).collect();
    assert_eq!(cache, vec!["140.82.121.5/32", "140.82.121.6/32"]);
    let gh = r.cidr_identity_of(ip("140.82.121.6").into());
    assert!(gh >= MIN_CIDR_IDENTITY);
    assert_eq!(r.cidr_identity_of(ip("93.184.216.34").into()), 2);
    // toFQDNs without toPorts: every port of the learned addresses.
    assert!(r.explain(APP, gh, PROTO_TCP, 443).allowed);
    assert!(r.explain(APP, gh, PROTO_UDP, 123).allowed);
    assert!(!r.explain(APP, 2, PROTO_TCP, 443).allowed);
    // An endpoint no toFQDNs selects is not affected by what was learned.
    assert!(r.explain(OTHER, gh, PROTO_TCP, 443).allowed);
    assert!(r
        .endpoint_policy(OTHER)
        .policy
        .entries
        .iter()
        .all(|e| e.key.identity != gh));
    let p = r.endpoint_policy(APP).policy;
    let gh_entries: Vec<_> = p
        .entries
        .iter()
        .filter(|e| e.key.identity == gh)
        .map(|e| (e.key.proto, e.deny, e.proxy_port))
        .collect();
    assert_eq!(gh_entries, vec![(0, false, 0)]);
    assert_eq!(
        r.fqdn_ips("api.github.com."),
        vec![ip("140.82.121.5"), ip("140.82.121.6")]
    );
}

#[test]
fn learned_addresses_are_labelled_with_the_selector_that_reached_them() {
    let mut e = engine(SW_APP);
    e.set_fqdn_name("api.github.com.", ips(&["140.82.121.6"]));
    let ids = identities();
    let np = NamedPorts::new();
    let gh = e
        .resolve(&ids, &np)
        .cidr_identity_of(ip("140.82.121.6").into());
    let labels: Vec<(u32, BTreeSet<String>)> = e
        .cidr_identity_labels()
        .into_iter()
        .map(|(id, l)| (id, l.iter().map(|l| l.to_string()).collect()))
        .collect();
    let want: BTreeSet<String> = [
        "cidr:140.82.121.6/32",
        "fqdn:api.github.com",
        "reserved:world",
    ]
    .map(String::from)
    .into();
    assert_eq!(labels, vec![(gh, want)]);
}

#[test]
fn patterns_and_ports_as_the_guide_has_them() {
    let mut e = engine(SW_APP_PATTERN);
    e.set_fqdn_name("api.github.com.", ips(&["140.82.121.6"]));
    e.set_fqdn_name("a.b.github.com.", ips(&["140.82.121.7"]));
    e.set_fqdn_name("github.com.", ips(&["140.82.121.8"]));
    let ids = identities();
    let np = NamedPorts::new();
    let r = e.resolve(&ids, &np);
    let id = |s: &str| r.cidr_identity_of(ip(s).into());
    assert!(id("140.82.121.6") >= MIN_CIDR_IDENTITY);
    // `*` stays within one label, and does not match the empty label before the dot.
    assert_eq!(id("140.82.121.7"), 2);
    assert_eq!(id("140.82.121.8"), 2);
    assert!(r.explain(APP, id("140.82.121.6"), PROTO_TCP, 443).allowed);
    assert!(!r.explain(APP, id("140.82.121.6"), PROTO_TCP, 80).allowed);
}

#[test]
fn identities_keep_their_numbers_and_go_with_the_name() {
    let mut e = engine(SW_APP);
    let ids = identities();
    let np = NamedPorts::new();
    e.set_fqdn_name("api.github.com.", ips(&["140.82.121.6"]));
    let first = e
        .resolve(&ids, &np)
        .cidr_identity_of(ip("140.82.121.6").into());
    e.set_fqdn_name("api.github.com.", ips(&["140.82.121.6", "140.82.121.9"]));
    let r = e.resolve(&ids, &np);
    assert_eq!(r.cidr_identity_of(ip("140.82.121.6").into()), first);
    drop(r);
    e.set_fqdn_name("api.github.com.", BTreeSet::new());
    let r = e.resolve(&ids, &np);
    assert!(r.ipcache().is_empty());
    assert!(r.fqdn_ips("api.github.com.").is_empty());
}

#[test]
fn a_change_touches_only_the_endpoints_that_can_see_it() {
    let yaml = format!(
        "{SW_APP}---\n{}",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: other-to-world
spec:
  endpointSelector:
    matchLabels:
      app: other
  egress:
  - toCIDR:
    - 140.82.0.0/16
"#
    );
    let mut e = engine(&yaml);
    let ids = identities();
    let np = NamedPorts::new();
    let r = e.resolve(&ids, &np);
    let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    let gh = names(&["api.github.com."]);
    // A new address: the toFQDNs subject, and the CIDR rule that holds it.
    let new_ip = ips(&["140.82.121.6"]);
    assert!(r.fqdn_affects(APP, &gh, &new_ip));
    assert!(r.fqdn_affects(OTHER, &gh, &new_ip));
    assert!(!r.fqdn_affects(KUBE_DNS, &gh, &new_ip));
    // An address outside the CIDR: only the toFQDNs subject.
    assert!(!r.fqdn_affects(OTHER, &gh, &ips(&["1.1.1.1"])));
    // A name no selector matches, with known addresses: nobody.
    assert!(!r.fqdn_affects(APP, &names(&["example.com."]), &BTreeSet::new()));
}

const BAD: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bad
spec:
  endpointSelector: {}
  egress:
  - toFQDNs:
    - matchPattern: "**.example.com"
  - toFQDNs:
    - matchName: "a..example.com"
  - toFQDNs:
    - matchName: "exa mple.com"
  - toFQDNs:
    - matchName: "a.com"
      matchPattern: "*.a.com"
  - toPorts:
    - ports:
      - port: "53"
        protocol: UDP
      rules:
        dns:
        - matchPattern: "*.exa$mple.com"
"#;

#[test]
fn bad_names_and_patterns_are_refused_with_their_field() {
    let errs = errors(BAD);
    let want = [
        ("spec.egress[0].toFQDNs[0]", "'**' is not a valid wildcard"),
        ("spec.egress[1].toFQDNs[0]", "has an empty label"),
        ("spec.egress[2].toFQDNs[0]", "' ' is not allowed"),
        ("spec.egress[3].toFQDNs[0]", "not both"),
        (
            "spec.egress[4].toPorts[0].rules.dns[0]",
            "'$' is not allowed",
        ),
    ];
    for (path, reason) in want {
        assert!(
            errs.iter()
                .any(|e| e.contains("bad.yaml") && e.contains(path) && e.contains(reason)),
            "no error at {path} saying {reason:?} in {errs:#?}"
        );
    }
    // Nothing applied: the engine keeps what it had.
    let mut e = engine(SW_APP);
    let before: Vec<_> = e.policies().map(|(r, _)| r.clone()).collect();
    let doc = ciliate_model::manifest::split_documents("bad.yaml", BAD).unwrap();
    let bad = ciliate_model::policy::PolicyResource::Cilium(
        serde_json::from_value(doc[0].object.clone()).unwrap(),
    );
    assert!(e.upsert(bad).is_err());
    let after: Vec<_> = e.policies().map(|(r, _)| r.clone()).collect();
    assert_eq!(before, after);
}

#[test]
fn dns_rules_on_ingress_are_refused_as_cilium_does() {
    let errs = errors(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bad
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports:
      - port: "53"
        protocol: UDP
      rules:
        dns:
        - matchName: "example.com"
"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.ingress[0].toPorts[0].rules.dns")
                && e.contains("DNS rules are not allowed on ingress")),
        "{errs:#?}"
    );
}

#[test]
fn dns_names_are_sent_normalized() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: names
spec:
  endpointSelector:
    matchLabels:
      app: other
  egress:
  - toPorts:
    - ports:
      - port: "53"
        protocol: UDP
      rules:
        dns:
        - matchName: "API.Example.com"
        - matchPattern: "*.S3.example.com."
"#,
    );
    let ids = identities();
    let np = NamedPorts::new();
    let r = e.resolve(&ids, &np);
    let res = r.endpoint_policy(OTHER);
    assert_eq!(res.redirects.len(), 1);
    let x = &res.redirects[0];
    assert_eq!((x.proto, x.port, x.parser), (PROTO_UDP, 53, L7Parser::Dns));
    // No L3 field: every resolver.
    assert_eq!(x.rules[0].peers, None);
    assert_eq!(
        x.rules[0].dns,
        vec![
            DnsMatch {
                match_name: Some("api.example.com.".into()),
                match_pattern: None
            },
            DnsMatch {
                match_name: None,
                match_pattern: Some("*.s3.example.com.".into())
            }
        ]
    );
    assert_eq!(
        res.policy
            .entries
            .iter()
            .filter(|e| e.key.direction == Direction::Egress && e.proxy_port == DNS_PROXY)
            .count(),
        1
    );
}

/// Two names a `matchPattern` selects and one it does not, sharing addresses, with a CIDR rule
/// naming one of them too.
const SHARED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: shared
spec:
  endpointSelector:
    matchLabels:
      org: empire
  egress:
  - toFQDNs:
    - matchPattern: "*.sel.test"
  - toCIDR:
    - 192.0.2.3/32
"#;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Learning names one change at a time (each only touching the addresses it changes)
    /// allocates CIDR identities for exactly the prefixes a whole recomputation gives, and
    /// never renumbers an address that stays.
    #[test]
    fn learning_one_name_at_a_time_allocates_as_a_whole_recomputation(
        steps in proptest::collection::vec((0usize..4, proptest::collection::btree_set(0u8..6, 0..3)), 1..40)
    ) {
        let names = ["a.sel.test.", "b.sel.test.", "c.other.test.", "d.sel.test."];
        let ids = identities();
        let np = NamedPorts::new();
        let mut e = engine(SHARED);
        for (n, addrs) in steps {
            let before = e.resolve(&ids, &np).ipcache();
            let next: BTreeSet<Ipv4Addr> = addrs.iter().map(|a| Ipv4Addr::new(192, 0, 2, *a)).collect();
            e.set_fqdn_name(names[n], next);
            let got = e.resolve(&ids, &np).ipcache();
            let mut whole = engine(SHARED);
            whole.set_fqdn_names(e.fqdn_names().clone());
            let want = whole.resolve(&ids, &np).ipcache();
            let prefixes = |v: &[ciliate_model::policy::IpcacheEntry]| v.iter().map(|x| x.prefix).collect::<BTreeSet<_>>();
            proptest::prop_assert_eq!(prefixes(&got), prefixes(&want));
            for b in &before {
                if let Some(g) = got.iter().find(|g| g.prefix == b.prefix) {
                    proptest::prop_assert_eq!(g.identity, b.identity, "{} renumbered", b.prefix);
                }
            }
        }
    }
}
