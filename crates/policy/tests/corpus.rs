//! Every manifest under `examples/policies/` is loaded, checked, compiled for a small cluster
//! and held to a few verdicts; every one under `examples/policies/invalid/` is rejected with
//! the expected message. A file added to either directory must be added here too.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ciliate_model::labels::Labels;
use ciliate_model::policy::entries::Lookup;
use ciliate_model::policy::{
    Direction, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use ciliate_policy::map::datapath_verdict;
use ciliate_policy::{
    is_endpoint_identity, load, IdentityLabels, NamedPorts, PolicyEngine, Resolved,
};

/// The cluster the examples are written for.
const PODS: &[(&str, u32, &str)] = &[
    ("frontend", 1000, "app=frontend,tier=web,io.kubernetes.pod.namespace=default"),
    ("backend", 1001, "app=backend,tier=api,io.kubernetes.pod.namespace=default"),
    ("db", 1002, "app=db,tier=data,io.kubernetes.pod.namespace=default"),
    ("client", 1003, "app=client,io.kubernetes.pod.namespace=default"),
    ("echo", 1004, "app=echo,io.kubernetes.pod.namespace=default"),
    ("legacy", 1005, "app=legacy,tier=web,env=dev,io.kubernetes.pod.namespace=default"),
    ("kube-dns", 1006, "k8s-app=kube-dns,io.kubernetes.pod.namespace=kube-system"),
    (
        "prometheus",
        1007,
        "app=prometheus,io.kubernetes.pod.namespace=monitoring,io.cilium.k8s.namespace.labels.team=observability",
    ),
    ("prod-web", 1008, "app=web,io.kubernetes.pod.namespace=prod,io.cilium.k8s.namespace.labels.env=prod"),
    ("staging-web", 1009, "app=web,io.kubernetes.pod.namespace=staging,io.cilium.k8s.namespace.labels.env=staging"),
    ("prod-api", 1010, "app=api,io.kubernetes.pod.namespace=prod,io.cilium.k8s.namespace.labels.env=prod"),
    ("kafka", 1011, "app=kafka,io.kubernetes.pod.namespace=default"),
    ("empire-hq", 1012, "app=empire-hq,io.kubernetes.pod.namespace=default"),
    ("empire-outpost", 1013, "app=empire-outpost,io.kubernetes.pod.namespace=default"),
];

const RESERVED: &[(&str, u32)] = &[
    ("host", 1),
    ("world", 2),
    ("unmanaged", 3),
    ("health", 4),
    ("init", 5),
    ("remote-node", 6),
    ("kube-apiserver", 7),
    ("ingress", 8),
];

fn identities() -> IdentityLabels {
    PODS.iter()
        .map(|(_, id, labels)| (*id, Labels::parse_list(labels, "k8s").unwrap()))
        .collect()
}

fn named_ports() -> NamedPorts {
    let mut n = NamedPorts::new();
    n.insert(1004, "http", PROTO_TCP, 8080);
    n.insert(1006, "dns", PROTO_UDP, 53);
    n.insert(1006, "dns-tcp", PROTO_TCP, 53);
    n.insert(1010, "grpc", PROTO_TCP, 9090);
    n
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Allowed.
    A,
    /// Denied by default deny (drop reason 133).
    D133,
    /// Denied by a deny rule (drop reason 181).
    D181,
}
use Expect::*;

type Check = (&'static str, &'static str, &'static str, Expect);

struct Case {
    file: &'static str,
    checks: &'static [Check],
    /// Substrings that must each appear in some warning; a file not expecting any must have none.
    warnings: &'static [&'static str],
}

const fn case(file: &'static str, checks: &'static [Check]) -> Case {
    Case {
        file,
        checks,
        warnings: &[],
    }
}

const fn warned(
    file: &'static str,
    checks: &'static [Check],
    warnings: &'static [&'static str],
) -> Case {
    Case {
        file,
        checks,
        warnings,
    }
}

const CASES: &[Case] = &[
    case(
        "k8s-default-deny-ingress.yaml",
        &[
            ("client", "echo", "tcp/8080", D133),
            ("world", "frontend", "tcp/443", D133),
            ("client", "world", "tcp/443", A),
            ("prometheus", "prod-web", "tcp/80", A),
            ("host", "echo", "tcp/8080", A),
        ],
    ),
    case(
        "k8s-default-deny-egress.yaml",
        &[
            ("client", "echo", "tcp/8080", D133),
            ("client", "kube-dns", "udp/53", D133),
            ("prometheus", "echo", "tcp/9090", A),
        ],
    ),
    case(
        "k8s-default-deny-all.yaml",
        &[
            ("prod-web", "prod-api", "tcp/9090", D133),
            ("frontend", "prod-api", "tcp/9090", D133),
            ("frontend", "echo", "tcp/8080", A),
        ],
    ),
    case(
        "k8s-allow-all-ingress.yaml",
        &[
            ("world", "echo", "tcp/80", A),
            ("prometheus", "echo", "udp/9999", A),
        ],
    ),
    case(
        "k8s-allow-all-egress.yaml",
        &[
            ("client", "world", "tcp/443", A),
            ("client", "echo", "sctp/1", A),
        ],
    ),
    case(
        "k8s-allow-same-namespace.yaml",
        &[
            ("client", "echo", "tcp/8080", A),
            ("prometheus", "echo", "tcp/8080", D133),
            ("world", "echo", "tcp/8080", D133),
        ],
    ),
    case(
        "k8s-frontend-to-backend.yaml",
        &[
            ("frontend", "backend", "tcp/8080", A),
            ("frontend", "backend", "tcp/80", D133),
            ("frontend", "backend", "udp/8080", D133),
            ("client", "backend", "tcp/8080", D133),
        ],
    ),
    case(
        "k8s-namespace-selector.yaml",
        &[
            ("prometheus", "echo", "tcp/9090", A),
            ("prometheus", "echo", "tcp/80", D133),
            ("client", "echo", "tcp/9090", D133),
        ],
    ),
    case(
        "k8s-namespace-and-pod-selector.yaml",
        &[
            ("prometheus", "db", "tcp/9187", A),
            ("backend", "db", "tcp/9187", D133),
            ("backend", "db", "tcp/5432", A),
            ("prometheus", "db", "tcp/5432", D133),
        ],
    ),
    case(
        "k8s-ipblock-except.yaml",
        &[
            ("frontend", "ip:8.8.8.8", "tcp/443", A),
            ("frontend", "ip:10.1.2.3", "tcp/443", D133),
            ("frontend", "ip:192.168.1.1", "udp/53", D133),
            ("frontend", "backend", "tcp/8080", D133),
        ],
    ),
    case(
        "k8s-ipblock-ingress.yaml",
        &[
            ("ip:203.0.113.10", "frontend", "tcp/443", A),
            ("ip:203.0.113.200", "frontend", "tcp/443", D133),
            ("ip:203.0.113.10", "frontend", "tcp/80", D133),
            ("world", "frontend", "tcp/443", D133),
        ],
    ),
    case(
        "k8s-port-range.yaml",
        &[
            ("client", "echo", "tcp/32000", A),
            ("world", "echo", "tcp/32768", A),
            ("client", "echo", "tcp/32769", D133),
            ("client", "echo", "tcp/31999", D133),
            ("client", "echo", "udp/32000", D133),
        ],
    ),
    case(
        "k8s-named-port.yaml",
        &[
            ("client", "echo", "tcp/8080", A),
            ("client", "echo", "tcp/80", D133),
            ("frontend", "echo", "tcp/8080", D133),
        ],
    ),
    case(
        "k8s-egress-dns.yaml",
        &[
            ("client", "kube-dns", "udp/53", A),
            ("client", "kube-dns", "tcp/53", A),
            ("client", "world", "udp/53", D133),
            ("client", "echo", "tcp/8080", D133),
        ],
    ),
    case(
        "k8s-match-expressions.yaml",
        &[
            ("frontend", "backend", "tcp/1", A),
            ("legacy", "backend", "tcp/1", D133),
            ("client", "db", "tcp/5432", D133),
            ("client", "echo", "tcp/1", A),
        ],
    ),
    case(
        "k8s-udp-sctp.yaml",
        &[
            ("client", "echo", "udp/5353", A),
            ("client", "echo", "sctp/3868", A),
            ("client", "echo", "tcp/5353", D133),
        ],
    ),
    case(
        "k8s-policytypes-defaulting.yaml",
        &[
            ("backend", "db", "tcp/5432", A),
            ("backend", "world", "tcp/443", D133),
            ("frontend", "backend", "tcp/1234", A),
            ("client", "backend", "tcp/1234", D133),
        ],
    ),
    warned(
        "k8s-ingress-only-ignores-egress.yaml",
        &[
            ("backend", "world", "tcp/443", A),
            ("frontend", "backend", "tcp/8080", A),
            ("client", "backend", "tcp/8080", D133),
        ],
        &["spec.egress: ignored: spec.policyTypes does not include Egress"],
    ),
    case(
        "cnp-client-ingress.yaml",
        &[
            ("client", "echo", "tcp/80", A),
            ("client", "echo", "icmp/8", A),
            ("frontend", "echo", "tcp/80", D133),
            ("prometheus", "echo", "tcp/80", D133),
        ],
    ),
    case(
        "cnp-echo-ingress-l4.yaml",
        &[
            ("client", "echo", "tcp/8080", A),
            ("client", "echo", "tcp/8081", D133),
            ("client", "echo", "udp/8080", D133),
        ],
    ),
    case(
        "cnp-port-range.yaml",
        &[
            ("frontend", "backend", "tcp/8000", A),
            ("frontend", "backend", "tcp/8999", A),
            ("frontend", "backend", "tcp/9000", D133),
            ("frontend", "backend", "tcp/7999", D133),
        ],
    ),
    case(
        "cnp-any-protocol.yaml",
        &[
            ("client", "kube-dns", "udp/53", A),
            ("client", "kube-dns", "tcp/53", A),
            ("client", "kube-dns", "sctp/53", A),
            ("client", "kube-dns", "icmp/8", D133),
            ("client", "world", "udp/53", D133),
        ],
    ),
    case(
        "cnp-all-ingress-deny.yaml",
        &[
            ("client", "echo", "tcp/8080", D133),
            ("world", "frontend", "tcp/443", D133),
            ("host", "echo", "tcp/8080", A),
            ("client", "world", "tcp/443", A),
        ],
    ),
    case(
        "cnp-all-egress-deny.yaml",
        &[
            ("client", "echo", "tcp/8080", D133),
            ("client", "world", "tcp/443", D133),
            ("world", "echo", "tcp/8080", A),
        ],
    ),
    case(
        "cnp-allow-all-except-world.yaml",
        &[
            ("world", "echo", "tcp/8080", D133),
            ("prometheus", "echo", "tcp/8080", A),
            ("remote-node", "echo", "tcp/8080", A),
            ("client", "world", "tcp/443", D133),
            ("client", "ip:1.1.1.1", "tcp/443", D133),
            ("client", "kube-dns", "udp/53", A),
            ("client", "kube-apiserver", "tcp/6443", A),
        ],
    ),
    case(
        "cnp-from-world-https.yaml",
        &[
            ("world", "frontend", "tcp/443", A),
            ("ip:8.8.8.8", "frontend", "tcp/443", A),
            ("world", "frontend", "tcp/80", D133),
            ("client", "frontend", "tcp/443", D133),
        ],
    ),
    case(
        "cnp-host-and-remote-node.yaml",
        &[
            ("remote-node", "echo", "tcp/8080", A),
            ("host", "echo", "tcp/8080", A),
            ("client", "echo", "tcp/8080", A),
            ("world", "echo", "tcp/8080", D133),
        ],
    ),
    case(
        "cnp-reserved-entities.yaml",
        &[
            ("backend", "kube-apiserver", "tcp/6443", A),
            ("backend", "kube-apiserver", "tcp/443", D133),
            ("backend", "world", "tcp/6443", D133),
            ("health", "frontend", "tcp/80", A),
            ("ingress", "frontend", "tcp/80", A),
            ("unmanaged", "frontend", "tcp/80", D133),
            ("unmanaged", "db", "tcp/5432", A),
            ("init", "db", "tcp/5432", D133),
        ],
    ),
    case(
        "cnp-entity-all.yaml",
        &[
            ("client", "world", "tcp/443", A),
            ("client", "echo", "udp/1", A),
            ("client", "ip:10.0.0.1", "tcp/22", A),
        ],
    ),
    case(
        "cnp-to-cidr.yaml",
        &[
            ("backend", "ip:192.0.2.55", "tcp/5432", A),
            ("backend", "ip:198.51.100.7", "tcp/5432", A),
            ("backend", "ip:198.51.100.8", "tcp/5432", D133),
            ("backend", "ip:192.0.2.55", "tcp/80", D133),
            ("backend", "db", "tcp/5432", D133),
        ],
    ),
    case(
        "cnp-cidrset-except.yaml",
        &[
            ("client", "ip:10.1.1.1", "tcp/443", A),
            ("client", "ip:10.96.0.10", "tcp/443", D133),
            ("client", "ip:10.244.1.1", "tcp/443", D133),
            ("client", "ip:10.1.1.1", "tcp/80", D133),
            ("client", "ip:11.0.0.1", "tcp/443", D133),
        ],
    ),
    case(
        "cnp-ipv6-cidr.yaml",
        &[
            ("ip:2001:db8::1", "frontend", "tcp/443", A),
            ("ip:2001:db8:dead::1", "frontend", "tcp/443", D133),
            ("ip:2001:db9::1", "frontend", "tcp/443", D133),
        ],
    ),
    case(
        "cnp-ingress-deny-legacy.yaml",
        &[
            ("legacy", "echo", "tcp/8080", D181),
            ("client", "echo", "tcp/8080", A),
            ("world", "echo", "tcp/8080", A),
        ],
    ),
    case(
        "cnp-egress-deny-smtp.yaml",
        &[
            ("client", "world", "tcp/25", D181),
            ("client", "ip:1.2.3.4", "tcp/25", D181),
            ("client", "world", "tcp/443", A),
            ("client", "echo", "tcp/25", A),
        ],
    ),
    case(
        "cnp-deny-wins.yaml",
        &[
            ("client", "echo", "tcp/8080", D181),
            ("client", "echo", "tcp/8081", D133),
        ],
    ),
    case(
        "cnp-match-expressions.yaml",
        &[
            ("client", "frontend", "tcp/80", A),
            ("frontend", "backend", "tcp/80", A),
            ("db", "frontend", "tcp/80", D133),
            ("db", "legacy", "tcp/80", A),
        ],
    ),
    case(
        "cnp-cross-namespace.yaml",
        &[
            ("prometheus", "echo", "tcp/9090", A),
            ("client", "echo", "tcp/9090", D133),
        ],
    ),
    case(
        "cnp-namespace-labels.yaml",
        &[
            ("prod-web", "prod-api", "tcp/9090", A),
            ("staging-web", "prod-api", "tcp/9090", D133),
            ("prometheus", "prod-api", "tcp/9090", A),
            ("frontend", "prod-api", "tcp/9090", D133),
        ],
    ),
    case(
        "cnp-three-tier-specs.yaml",
        &[
            ("world", "frontend", "tcp/443", A),
            ("frontend", "backend", "tcp/8080", A),
            ("legacy", "backend", "tcp/8080", A),
            ("backend", "db", "tcp/5432", A),
            ("frontend", "db", "tcp/5432", D133),
            ("world", "backend", "tcp/8080", D133),
        ],
    ),
    case(
        "cnp-spec-and-specs.yaml",
        &[
            ("client", "echo", "tcp/8080", A),
            ("echo", "kube-dns", "udp/53", A),
            ("echo", "world", "tcp/443", D133),
        ],
    ),
    case(
        "cnp-default-deny-disabled.yaml",
        &[
            ("world", "frontend", "tcp/443", A),
            ("ip:198.51.100.1", "frontend", "tcp/443", D181),
            ("client", "frontend", "tcp/80", A),
        ],
    ),
    case(
        "cnp-icmp.yaml",
        &[
            ("client", "echo", "icmp/8", A),
            ("client", "echo", "icmpv6/128", A),
            ("client", "echo", "icmp/0", D133),
            ("client", "echo", "tcp/8", D133),
        ],
    ),
    case(
        "cnp-named-port.yaml",
        &[
            ("frontend", "echo", "tcp/8080", A),
            ("frontend", "echo", "tcp/80", D133),
        ],
    ),
    case(
        "cnp-from-requires.yaml",
        &[
            ("prod-web", "prod-api", "tcp/9090", A),
            ("prometheus", "prod-api", "tcp/9090", D133),
            ("staging-web", "prod-api", "tcp/9090", D133),
        ],
    ),
    case(
        "cnp-l7-http.yaml",
        &[
            ("client", "echo", "tcp/8080", A),
            ("frontend", "echo", "tcp/8080", D133),
        ],
    ),
    case(
        "cnp-l7-kafka.yaml",
        &[
            ("empire-hq", "kafka", "tcp/9092", A),
            ("empire-outpost", "kafka", "tcp/9092", A),
            ("client", "kafka", "tcp/9092", D133),
        ],
    ),
    // No name is learned yet: toFQDNs selects no address (see tests/fqdn.rs).
    case(
        "cnp-l7-dns-visibility.yaml",
        &[
            ("client", "kube-dns", "udp/53", A),
            ("client", "kube-dns", "tcp/53", A),
            ("client", "world", "tcp/443", D133),
        ],
    ),
    warned(
        "cnp-to-services.yaml",
        &[("backend", "db", "tcp/5432", D133)],
        &["spec.egress[0].toServices: toServices are not enforced yet"],
    ),
    warned(
        "cnp-authentication.yaml",
        &[("client", "echo", "tcp/8080", D133)],
        &["spec.ingress[0].authentication: mutual authentication is not enforced yet"],
    ),
    case(
        "cnp-description-labels.yaml",
        &[
            ("frontend", "backend", "tcp/8080", A),
            ("client", "backend", "tcp/8080", D133),
        ],
    ),
    case(
        "ccnp-namespace-isolation.yaml",
        &[
            ("world", "echo", "tcp/8080", D133),
            ("prometheus", "echo", "tcp/8080", A),
            ("remote-node", "prod-api", "tcp/9090", A),
            ("world", "kube-dns", "udp/53", A),
        ],
    ),
    case(
        "ccnp-allow-dns.yaml",
        &[
            ("client", "kube-dns", "udp/53", A),
            ("prod-web", "kube-dns", "tcp/53", A),
            ("client", "world", "tcp/443", D133),
        ],
    ),
    case(
        "ccnp-deny-world-prod.yaml",
        &[
            ("prod-web", "world", "tcp/443", D181),
            ("world", "prod-api", "tcp/9090", D181),
            ("staging-web", "world", "tcp/443", A),
            ("prod-web", "prod-api", "tcp/9090", A),
        ],
    ),
    warned(
        "ccnp-host-policy.yaml",
        &[("world", "echo", "tcp/22", A)],
        &["spec.nodeSelector: host policies are computed for the host identity but not enforced"],
    ),
    case(
        "ccnp-init-dns.yaml",
        &[
            ("init", "kube-dns", "udp/53", A),
            ("init", "world", "udp/53", D133),
            ("client", "world", "udp/53", A),
        ],
    ),
    case(
        "kubectl-list.yaml",
        &[
            ("backend", "db", "tcp/5432", A),
            ("frontend", "db", "tcp/5432", D133),
            ("client", "echo", "tcp/8080", A),
            ("frontend", "echo", "tcp/8080", D133),
        ],
    ),
    case(
        "cnp-policy.json",
        &[
            ("client", "frontend", "tcp/443", A),
            ("client", "frontend", "tcp/8080", D133),
        ],
    ),
    case(
        "multi-doc-lockdown.yaml",
        &[
            ("client", "kube-dns", "udp/53", A),
            ("client", "kube-dns", "tcp/53", D133),
            ("world", "frontend", "tcp/443", A),
            ("frontend", "backend", "tcp/8080", D133),
            ("client", "echo", "tcp/8080", D133),
        ],
    ),
];

const INVALID: &[(&str, &str)] = &[
    ("endport-below-port.yaml", "spec.ingress[0].toPorts[0].ports[0].endPort: endPort 79 must be greater than or equal to port 80"),
    ("port-out-of-range.yaml", "spec.ingress[0].ports[0].port: port 70000 is out of range 1-65535"),
    ("bad-protocol.yaml", "spec.ingress[0].toPorts[0].ports[0].protocol: unknown variant `HTTP`"),
    ("bad-cidr.yaml", "spec.egress[0].toCIDR[0]: \"10.0.0.0/33\" is not a CIDR"),
    ("except-outside-cidr.yaml", "spec.egress[0].toCIDRSet[0].except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8"),
    ("unknown-entity.yaml", "spec.ingress[0].fromEntities[0]: unknown variant `internet`"),
    ("unknown-field.yaml", "spec.ingress[0].fromEndpoint: unknown field `fromEndpoint`"),
    ("bad-operator.yaml", "spec.endpointSelector.matchExpressions[0].operator: unknown variant `Equals`"),
    ("in-without-values.yaml", "spec.podSelector.matchExpressions[0].values: operator In needs at least one value"),
    ("exists-with-values.yaml", "matchExpressions[0].values: operator Exists takes no values"),
    ("combined-l3.yaml", "spec.ingress[0]: combining fromEndpoints and fromCIDR in one rule is not supported"),
    ("icmps-with-toports.yaml", "spec.ingress[0]: icmps may only be given without toPorts"),
    ("no-subject.yaml", "spec: a rule needs endpointSelector or nodeSelector"),
    ("no-rules.yaml", "spec: a rule needs at least one of ingress, ingressDeny, egress, egressDeny"),
    ("peer-ipblock-and-pods.yaml", "spec.ingress[0].from[0]: ipBlock may not be combined with podSelector"),
    ("named-port-with-endport.yaml", "spec.ingress[0].ports[0].endPort: endPort may only be given with a numeric port"),
    ("bad-label-value.yaml", "spec.endpointSelector.matchLabels.app: label value \"web server\""),
    ("node-selector-namespaced.yaml", "spec.nodeSelector: host policies (nodeSelector) are only valid in a CiliumClusterwideNetworkPolicy"),
    ("wrong-api-version.yaml", "apiVersion: \"cilium.io/v1\" is not served for CiliumNetworkPolicy"),
    ("not-a-policy.yaml", "kind: \"Service\" is not a policy"),
    ("missing-name.yaml", "metadata.name: a name is required"),
    ("yaml-syntax.yaml", "YAML syntax error"),
    ("duplicate-policy.yaml", "NetworkPolicy default/twice is defined twice"),
    ("bad-policy-type.yaml", "spec.policyTypes[0]: unknown variant `Inbound`"),
    ("dns-rules-on-ingress.yaml", "spec.ingress[0].toPorts[0].rules.dns: DNS rules are not allowed on ingress"),
    ("bad-icmp-type.yaml", "spec.ingress[0].icmps[0].fields[0].type: Ping is not an ICMP type"),
    ("missing-port.yaml", "spec.egress[0].toPorts[0].ports[0].port: a port is required"),
    ("bad-port-name.yaml", "\"http_web\" is neither a port number nor a port name"),
    ("missing-pod-selector.yaml", "spec: missing field `podSelector`"),
    ("endport-with-port-zero.yaml", "endPort needs a non-zero port"),
    ("l7-on-udp.yaml", "spec.ingress[0].toPorts[0].ports[0].protocol: L7 rules can only apply to TCP (not UDP) except for DNS rules"),
    ("l7-no-protocol.yaml", "spec.ingress[0].toPorts[0].ports[0].protocol: L7 rules can only apply to TCP (not ANY) except for DNS rules (no protocol given means ANY: add protocol: TCP)"),
    ("l7-port-zero.yaml", "spec.ingress[0].toPorts[0].rules: L7 rules can not be used when a port is 0"),
    ("l7-port-range.yaml", "spec.ingress[0].toPorts[0].ports[0].endPort: L7 rules can not be used with a port range"),
    ("l7-http-and-kafka.yaml", "spec.ingress[0].toPorts[0].rules: multiple L7 protocol rule types in one toPorts entry (http and kafka)"),
    ("l7-kafka-role-and-apikey.yaml", "spec.ingress[0].toPorts[0].rules.kafka[1]: role \"consume\" and apiKey \"fetch\" cannot both be given"),
    ("l7-kafka-bad-role.yaml", "spec.ingress[0].toPorts[0].rules.kafka[1].role: \"admin\" is not a Kafka role (want produce or consume)"),
    ("l7-kafka-bad-apikey.yaml", "spec.ingress[0].toPorts[0].rules.kafka[1].apiKey: \"listoffsets\" is not a Kafka API key name Cilium knows"),
    ("l7-kafka-bad-version.yaml", "spec.ingress[0].toPorts[0].rules.kafka[1].apiVersion: \"v3\" is not an API version"),
    ("l7-kafka-bad-topic.yaml", "spec.ingress[0].toPorts[0].rules.kafka[1].topic: \"orders/eu\" is not a topic name"),
    ("l7-bad-regex.yaml", "spec.ingress[0].toPorts[0].rules.http[1].path: \"/api/(v1\" is not a valid regular expression: unclosed group"),
    ("l7-bad-header.yaml", "spec.ingress[0].toPorts[0].rules.http[0].headers[0]: \"X/Bad: 1\" is not a header"),
    ("l7-header-secret.yaml", "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret: header values from Secrets are not supported"),
    ("l7-bad-mismatch.yaml", "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch: \"DROP\" is not a mismatch action (want LOG, ADD, DELETE or REPLACE)"),
    ("l7-header-match-no-name.yaml", "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name: a header name is required"),
    ("l7-unknown-field.yaml", "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].values: unknown field `values`, expected one of `name`, `value`, `mismatch`, `secret`"),
    ("many-errors.yaml", "spec.ingress[0].toPorts[0].ports[0].port: port 99999 is out of range 0-65535"),
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn party(r: &Resolved<'_>, name: &str) -> u32 {
    if let Some(ip) = name.strip_prefix("ip:") {
        return r.cidr_identity_of(ip.parse().unwrap());
    }
    PODS.iter()
        .map(|(n, id, _)| (*n, *id))
        .chain(RESERVED.iter().copied())
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no party {name}"))
        .1
}

fn flow(s: &str) -> (u8, u16) {
    let (proto, port) = s.split_once('/').unwrap();
    let proto = match proto {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        "sctp" => PROTO_SCTP,
        "icmp" => PROTO_ICMP,
        "icmpv6" => PROTO_ICMPV6,
        p => panic!("protocol {p}"),
    };
    (proto, port.parse().unwrap())
}

#[test]
fn every_example_loads_compiles_and_decides_as_expected() {
    let dir = examples();
    let listed: Vec<&str> = CASES.iter().map(|c| c.file).collect();
    let present: Vec<String> = files(&dir);
    assert!(present.len() >= 40, "only {} examples", present.len());
    for f in &present {
        assert!(
            listed.contains(&f.as_str()),
            "{f} has no case in tests/corpus.rs"
        );
    }
    let ids = identities();
    let named = named_ports();
    let mut failures = Vec::new();
    for case in CASES {
        let text = std::fs::read_to_string(dir.join(case.file)).unwrap();
        let loaded = load(case.file, &text).unwrap_or_else(|errs| {
            panic!(
                "{}",
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        assert!(!loaded.policies.is_empty(), "{}: no policy", case.file);
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        for w in case.warnings {
            if !warnings.iter().any(|got| got.contains(w)) {
                failures.push(format!(
                    "{}: no warning containing {w:?} in {warnings:#?}",
                    case.file
                ));
            }
        }
        if case.warnings.is_empty() && !warnings.is_empty() {
            failures.push(format!("{}: unexpected warnings {warnings:#?}", case.file));
        }
        let mut engine = PolicyEngine::default();
        for p in loaded.policies {
            engine.upsert(p.resource).unwrap();
        }
        let r = engine.resolve(&ids, &named);
        let policies: BTreeMap<u32, _> = ids
            .keys()
            .chain([4, 5, 8].iter())
            .map(|id| (*id, r.endpoint_policy(*id)))
            .collect();
        for res in policies.values() {
            assert!(res.notes.is_empty(), "{}: {:?}", case.file, res.notes);
        }
        let maps: BTreeMap<u32, _> = policies.keys().map(|id| (*id, r.map_policy(*id))).collect();
        for (src, dst, f, expect) in case.checks {
            let (s, d) = (party(&r, src), party(&r, dst));
            let (proto, port) = flow(f);
            let v = r.explain(s, d, proto, port);
            let got = match (v.allowed, v.drop_reason()) {
                (true, _) => A,
                (false, Some(181)) => D181,
                (false, _) => D133,
            };
            if got != *expect {
                failures.push(format!(
                    "{}: {src} -> {dst} {f}: want {expect:?}, got {v}",
                    case.file
                ));
            }
            // The datapath's lookup over the computed entries must agree, side by side.
            for (endpoint, direction, peer, side) in [
                (s, Direction::Egress, d, &v.egress),
                (d, Direction::Ingress, s, &v.ingress),
            ] {
                if !is_endpoint_identity(endpoint) {
                    continue;
                }
                let side = side.as_ref().unwrap();
                let lookup = policies[&endpoint]
                    .policy
                    .lookup(direction, peer, proto, port);
                let reason = match lookup {
                    Lookup::Allowed(_) => None,
                    Lookup::Denied(_) => Some(181),
                    Lookup::DefaultDenied => Some(133),
                };
                if reason != side.drop_reason() {
                    failures.push(format!(
                        "{}: {src} -> {dst} {f}: entries say {lookup:?}, rules say {side}",
                        case.file
                    ));
                }
                // And the BPF program's lookup over the map entries.
                let dp = datapath_verdict(
                    &maps[&endpoint],
                    direction == Direction::Egress,
                    peer,
                    proto,
                    port,
                );
                if dp != side.drop_reason() {
                    failures.push(format!(
                        "{}: {src} -> {dst} {f}: the datapath says {dp:?}, rules say {side}",
                        case.file
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_invalid_example_is_rejected_with_its_message() {
    let dir = examples().join("invalid");
    let present = files(&dir);
    assert!(present.len() >= 15);
    let listed: Vec<&str> = INVALID.iter().map(|(f, _)| *f).collect();
    for f in &present {
        assert!(
            listed.contains(&f.as_str()),
            "{f} has no expected message in tests/corpus.rs"
        );
    }
    let mut failures = Vec::new();
    for (file, want) in INVALID {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        match load(file, &text) {
            Ok(l) => failures.push(format!("{file}: accepted ({} policies)", l.policies.len())),
            Err(errs) => {
                let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
                if !msgs.iter().any(|m| m.contains(want)) {
                    failures.push(format!("{file}: no error containing {want:?} in {msgs:#?}"));
                }
                for m in &msgs {
                    if !m.starts_with(&format!("{file}: document ")) {
                        failures.push(format!("{file}: {m:?} does not name the file and document"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_file_reports_every_problem_and_yields_no_policy() {
    let text = std::fs::read_to_string(examples().join("invalid/many-errors.yaml")).unwrap();
    let errs = load("many-errors.yaml", &text).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let want = [
        "many-errors.yaml: document 1 (CiliumNetworkPolicy default/many-errors-1): spec.ingress[0].toPorts[0].ports[0].port: port 99999 is out of range 0-65535",
        "many-errors.yaml: document 1 (CiliumNetworkPolicy default/many-errors-1): spec.ingress[0].toPorts[0].ports[1].endPort: endPort 8 must be greater than or equal to port 80",
        "many-errors.yaml: document 1 (CiliumNetworkPolicy default/many-errors-1): spec.egress[0].toCIDRSet[0].except[0]: 11.0.0.0/8 is not inside 10.0.0.0/8",
        "many-errors.yaml: document 2 (NetworkPolicy default/Many_Errors): metadata.name: \"Many_Errors\" must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
        "many-errors.yaml: document 2 (NetworkPolicy default/Many_Errors): spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock",
    ];
    assert_eq!(msgs, want);
}
