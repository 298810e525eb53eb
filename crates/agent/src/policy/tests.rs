//! The policy store and reconciler with the endpoint manager, against the fake datapath.

use std::path::Path;

use ciliate_datapath::FakeDatapath;
use ciliate_model::api::EndpointCreateRequest;
use ciliate_model::bpf_policy::MatchKind;
use ciliate_model::l7::ProxyCommand;
use ciliate_model::manifest::{split_documents, ApplyRequest, ApplyResult};
use ciliate_model::policy_api::{TracePeerKind, TraceReason};
use ciliate_model::{Labels, MacAddr, PodRef};

use super::trace::TraceQuery;
use super::*;
use crate::endpoints::{EndpointManager, ManagerSettings};
use crate::manifests;
use crate::services::{ServiceManager, ServiceSettings};
use crate::state::StateStore;

const SERVER_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

const DENY_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-client}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#;

const CIDR_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-cidr}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
  - toCIDR: [192.168.0.0/16]
"#;

const L7_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http-get}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
"#;

const UNENFORCED_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7proto-redis}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "6379", protocol: TCP}]
      rules:
        l7proto: redis
"#;

const BROKEN_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - toPorts: [{ports: [{port: "99999", protocol: TCP}]}]
"#;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";

struct Node {
    dp: Arc<FakeDatapath>,
    endpoints: Arc<EndpointManager>,
    policies: Arc<PolicyManager>,
    services: ServiceManager,
}

impl Node {
    /// A node over `dir`, as the agent starts one: endpoints restored, policies loaded and
    /// attached, one reconciliation.
    fn open(dir: &Path, dp: Arc<FakeDatapath>, manifest_dir: Option<&Path>) -> Self {
        let store = StateStore::open(dir).expect("state dir");
        let endpoints = Arc::new(
            EndpointManager::open(
                ManagerSettings {
                    node_name: "node-a".into(),
                    pod_cidr: "10.200.0.0/24".parse().expect("cidr"),
                    mtu: 1500,
                },
                store,
                dp.clone(),
            )
            .expect("endpoints"),
        );
        let services = ServiceManager::open(
            ServiceSettings {
                node_name: "node-a".into(),
                node_ips: vec![],
                manifest_dir: manifest_dir.map(Path::to_owned),
                kubernetes: false,
            },
            dir,
            dp.clone(),
        )
        .expect("services");
        let policies = Arc::new(
            PolicyManager::open(
                PolicySettings {
                    manifest_dir: manifest_dir.map(Path::to_owned),
                    node_ips: vec!["192.0.2.1".parse().expect("ip")],
                    ..PolicySettings::default()
                },
                dir,
                dp.clone(),
            )
            .expect("policies"),
        );
        services.attach_policy(Arc::clone(&policies));
        endpoints.attach_policy(Arc::clone(&policies));
        endpoints.reconcile_policy().expect("reconciles");
        Self {
            dp,
            endpoints,
            policies,
            services,
        }
    }

    fn apply(&self, yaml: &str, delete: bool) -> Result<ApplyResult, manifests::ApplyError> {
        let req = ApplyRequest {
            documents: split_documents("p.yaml", yaml).expect("YAML"),
            delete,
        };
        manifests::apply(&self.services, &self.policies, &self.endpoints, &req)
    }

    fn pod(&self, name: &str, app: &str, ifindex: u32) -> ciliate_model::Endpoint {
        self.pod_with_ports(name, app, ifindex, &[])
    }

    fn pod_with_ports(
        &self,
        name: &str,
        app: &str,
        ifindex: u32,
        ports: &[&str],
    ) -> ciliate_model::Endpoint {
        self.endpoints
            .create(&EndpointCreateRequest {
                container_id: format!("c-{name}"),
                ifname: "eth0".into(),
                netns: format!("/var/run/netns/{name}"),
                pod: Some(PodRef {
                    namespace: "default".into(),
                    name: name.into(),
                }),
                labels: Labels::parse_list(&format!("app={app}"), "k8s").expect("labels"),
                named_ports: ports
                    .iter()
                    .map(|p| p.parse().expect("named port"))
                    .collect(),
                host_ifname: format!("lxc{ifindex}"),
                host_ifindex: ifindex,
                host_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mac: MacAddr([2, 0, 0, 0, 0, 2]),
            })
            .expect("endpoint created")
            .endpoint
    }

    fn policy_of(&self, ep: &ciliate_model::Endpoint) -> bpf_policy::EndpointPolicy {
        self.dp.policies().get(&ep.id).cloned().unwrap_or_default()
    }

    fn trace(&self, src: &str, dst: &str, dport: u16) -> ciliate_model::policy_api::PolicyTrace {
        self.policies
            .trace(
                &self.endpoints.list(),
                &self.endpoints.policy_snapshot().identities,
                &TraceQuery {
                    src: src.into(),
                    dst: dst.into(),
                    proto: 6,
                    dport,
                    http: None,
                },
            )
            .expect("traces")
    }
}

fn lines(r: &ApplyResult) -> Vec<String> {
    r.policies.iter().map(ToString::to_string).collect()
}

#[test]
fn import_puts_policy_in_force_and_delete_lifts_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let server = n.pod("server", "server", 10);
    let client = n.pod("client", "client", 11);
    assert!(
        !n.policy_of(&server).ingress_enforced,
        "no policy: allow all"
    );

    let r = n.apply(SERVER_POLICY, false).expect("applies");
    assert_eq!(
        lines(&r),
        ["ciliumnetworkpolicy.cilium.io/server-ingress created"]
    );
    assert!(r.results.is_empty() && r.warnings.is_empty(), "{r:?}");
    let p = n.policy_of(&server);
    assert!(p.ingress_enforced && !p.egress_enforced);
    assert!(
        p.entries.iter().any(|e| e.identity == client.identity
            && e.proto == Some(6)
            && e.port == 8080
            && !e.deny
            && e.kind == MatchKind::L3L4
            && e.rule != 0),
        "{p:?}"
    );
    let rule = p
        .entries
        .iter()
        .find(|e| e.identity == client.identity)
        .map(|e| e.rule);
    assert_eq!(
        rule.and_then(|id| n.policies.rule(id)).map(|r| r.path()),
        Some("spec.ingress[0]".to_owned())
    );
    assert!(
        !n.policy_of(&client).ingress_enforced,
        "the client is not selected"
    );

    let views = n.policies.list(&n.endpoints.policy_snapshot());
    assert_eq!(views.len(), 1);
    assert_eq!(
        (
            views[0].policy.to_string(),
            views[0].source.as_str(),
            views[0].endpoints
        ),
        (
            "CiliumNetworkPolicy default/server-ingress".to_owned(),
            API_SOURCE,
            1
        )
    );

    // The same again changes nothing.
    let r = n.apply(SERVER_POLICY, false).expect("applies");
    assert_eq!(
        lines(&r),
        ["ciliumnetworkpolicy.cilium.io/server-ingress unchanged"]
    );

    let r = n.apply(SERVER_POLICY, true).expect("deletes");
    assert_eq!(
        lines(&r),
        ["ciliumnetworkpolicy.cilium.io/server-ingress deleted"]
    );
    assert!(!n.policy_of(&server).ingress_enforced);
    assert!(n.policy_of(&server).entries.is_empty());
    let r = n.apply(SERVER_POLICY, true).expect("deletes");
    assert_eq!(
        lines(&r),
        ["ciliumnetworkpolicy.cilium.io/server-ingress not found"]
    );
}

#[test]
fn a_bad_batch_changes_nothing_and_names_every_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let server = n.pod("server", "server", 10);
    n.apply(SERVER_POLICY, false).expect("applies");
    let before = (
        n.dp.policies(),
        std::fs::read(tmp.path().join("objects/policies-api.jsonl")).expect("persisted"),
        n.policies.list(&n.endpoints.policy_snapshot()),
    );
    let bad_service = SERVICE.replace("port: 80,", "port: 70000,");
    let batch = format!("{DENY_CLIENT}---\n{BROKEN_POLICY}---\n{bad_service}");
    let err = n.apply(&batch, false).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.starts_with("2 problems in the manifests; nothing was applied:"),
        "{text}"
    );
    assert!(
        text.contains("p.yaml: document 2 (CiliumNetworkPolicy default/broken): spec.ingress[0].toPorts[0].ports[0].port:"),
        "{text}"
    );
    assert!(
        text.contains("p.yaml: document 3 (Service default/web): spec.ports[0].port:"),
        "{text}"
    );
    let after = (
        n.dp.policies(),
        std::fs::read(tmp.path().join("objects/policies-api.jsonl")).expect("persisted"),
        n.policies.list(&n.endpoints.policy_snapshot()),
    );
    assert_eq!(before, after, "nothing in force, on disk or listed changed");
    assert!(
        n.services.list().is_empty(),
        "the valid Service was not applied either"
    );
    assert!(n.policy_of(&server).ingress_enforced);

    // A valid mixed batch applies both kinds.
    let r = n
        .apply(&format!("{SERVICE}---\n{DENY_CLIENT}"), false)
        .expect("applies");
    assert_eq!(
        r.results
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["service/web created"]
    );
    assert_eq!(
        lines(&r),
        ["ciliumnetworkpolicy.cilium.io/deny-client created"]
    );
}

#[test]
fn a_new_endpoint_has_its_policy_before_create_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let n = Node::open(tmp.path(), dp.clone(), None);
    n.apply(SERVER_POLICY, false).expect("applies");
    let client = n.pod("client", "client", 11);
    let server = n.pod("server", "server", 10);
    // Checked right after create returned: no reconcile loop ran in between.
    let p = n.policy_of(&server);
    assert!(p.ingress_enforced, "{p:?}");
    assert!(p
        .entries
        .iter()
        .any(|e| e.identity == client.identity && e.port == 8080));

    // A client created after the server is admitted by the time its create returns.
    let client2 = n.pod("client2", "client", 12);
    assert_eq!(client2.identity, client.identity);
    let other = n.pod("other", "other", 13);
    assert!(!n
        .policy_of(&server)
        .entries
        .iter()
        .any(|e| e.identity == other.identity));

    // When the policy cannot be written, the endpoint is not created and leaves nothing.
    dp.fail_next_policy("map full");
    let before = n.endpoints.status();
    let err = n
        .endpoints
        .create(&EndpointCreateRequest {
            container_id: "c-late".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/late".into(),
            pod: None,
            labels: Labels::parse_list("app=server", "k8s").expect("labels"),
            named_ports: Vec::new(),
            host_ifname: "lxc20".into(),
            host_ifindex: 20,
            host_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mac: MacAddr([2, 0, 0, 0, 0, 2]),
        })
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("cannot program the network policy of container c-late"),
        "{err}"
    );
    assert_eq!(n.endpoints.status(), before);
    assert!(!dp.programmed().iter().any(|e| e.ifindex == 20));
}

#[test]
fn restart_keeps_policies_and_cidr_identities() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ids, policy_before, client_id) = {
        let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
        let client = n.pod("client", "client", 11);
        n.apply(CIDR_POLICY, false).expect("applies");
        n.apply(SERVER_POLICY, false).expect("applies");
        let ids: Vec<(NumericIdentity, String)> = n
            .policies
            .cidr_identities()
            .into_iter()
            .map(|i| (i.id, i.labels.to_string()))
            .collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        // The ipcache holds them and the node's address as host.
        let ipcache = n.dp.ipcache().expect("ipcache");
        assert!(ipcache
            .iter()
            .any(|e| e.prefix.to_string() == "192.0.2.1/32" && e.identity == 1));
        assert_eq!(ipcache.iter().filter(|e| e.identity >= 1 << 24).count(), 3);
        (ids, n.policy_of(&client), client.id)
    };
    // A fresh datapath as after a reboot of the agent's memory; the state directory stays.
    let dp = Arc::new(FakeDatapath::new());
    let n = Node::open(tmp.path(), dp.clone(), None);
    let after: Vec<(NumericIdentity, String)> = n
        .policies
        .cidr_identities()
        .into_iter()
        .map(|i| (i.id, i.labels.to_string()))
        .collect();
    assert_eq!(after, ids, "same prefixes, same numbers");
    assert_eq!(n.policies.list(&n.endpoints.policy_snapshot()).len(), 2);
    assert_eq!(
        dp.policies().get(&client_id),
        Some(&policy_before),
        "re-applied at start-up, identical"
    );
    // Adding a prefix keeps the others' numbers.
    n.apply(
        &CIDR_POLICY.replace(
            "toCIDR: [192.168.0.0/16]",
            "toCIDR: [192.168.0.0/16, 172.16.0.0/12]",
        ),
        false,
    )
    .expect("applies");
    let more: Vec<(NumericIdentity, String)> = n
        .policies
        .cidr_identities()
        .into_iter()
        .map(|i| (i.id, i.labels.to_string()))
        .collect();
    for id in &ids {
        assert!(more.contains(id), "{id:?} kept in {more:?}");
    }
}

/// Flows name rules by the numbers the maps carry: after a restart the same rules have the
/// same numbers (and names), whatever came and went before, so the entries the datapath kept
/// and the events still queued name the right policy.
#[test]
fn rule_numbers_and_their_names_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let before = {
        let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
        n.apply(CIDR_POLICY, false).expect("applies");
        n.apply(SERVER_POLICY, false).expect("applies");
        n.apply(CIDR_POLICY, true).expect("deletes");
        n.policies.flow_names().rules
    };
    assert!(!before.is_empty());
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    assert_eq!(n.policies.flow_names().rules, before);
}

#[test]
fn trace_explains_allow_default_deny_and_deny() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let server = n.pod("server", "server", 10);
    let client = n.pod("client", "client", 11);
    n.pod("other", "other", 12);
    let t = n.trace("default/client", "default/server", 8080);
    assert!(t.allowed);
    assert_eq!(
        t.ingress.as_ref().map(|v| v.reason),
        Some(TraceReason::NoPolicy)
    );

    n.apply(SERVER_POLICY, false).expect("applies");
    let t = n.trace("default/client", &server.ipv4.to_string(), 8080);
    assert!(t.allowed, "{t:?}");
    assert_eq!(t.dst.kind, TracePeerKind::Endpoint);
    let d = t.deciding_verdict().expect("decided");
    assert_eq!(d.reason, TraceReason::AllowedBy);
    assert_eq!(d.rules[0].path(), "spec.ingress[0]");
    assert_eq!(d.rules[0].policy.name, "server-ingress");

    let t = n.trace("other", "server", 8080);
    assert!(!t.allowed);
    assert_eq!(t.drop_reason, Some(133));
    assert_eq!(t.deciding, Some(ciliate_model::policy::Direction::Ingress));
    let t = n.trace("default/client", "default/server", 8081);
    assert_eq!(t.drop_reason, Some(133));

    // A label set no pod has yet: a hypothetical identity, judged the same.
    let t = n.trace(
        "k8s:app=client,k8s:io.kubernetes.pod.namespace=default",
        "default/server",
        8080,
    );
    assert!(t.allowed);
    assert_eq!(t.src.kind, TracePeerKind::Identity);
    assert_eq!(t.src.identity, client.identity);
    let t = n.trace(
        "k8s:app=client,k8s:tier=new,k8s:io.kubernetes.pod.namespace=default",
        "default/server",
        8080,
    );
    assert_eq!(t.src.kind, TracePeerKind::Hypothetical);
    assert!(t.allowed);
    let t = n.trace("k8s:app=client", "default/server", 8080);
    assert!(
        !t.allowed,
        "no namespace label: not selected by a namespaced policy"
    );
    assert!(!t.notes.is_empty());

    // The node reaches its pods; world does not.
    let t = n.trace("192.0.2.1", "default/server", 9999);
    assert!(t.allowed);
    assert_eq!(t.src.identity, 1);
    assert_eq!(
        t.ingress.as_ref().map(|v| v.reason),
        Some(TraceReason::AllowLocalhost)
    );
    let t = n.trace("203.0.113.9", "default/server", 8080);
    assert_eq!((t.src.identity, t.allowed), (2, false));

    n.apply(DENY_CLIENT, false).expect("applies");
    let t = n.trace("default/client", "default/server", 8080);
    assert_eq!(t.drop_reason, Some(181));
    let d = t.deciding_verdict().expect("decided");
    assert_eq!(d.reason, TraceReason::DeniedBy);
    assert_eq!(d.rules[0].path(), "spec.ingressDeny[0]");

    assert!(matches!(
        n.policies.trace(
            &n.endpoints.list(),
            &IdentityLabels::new(),
            &TraceQuery {
                src: "default/nope".into(),
                dst: "default/server".into(),
                proto: 6,
                dport: 80,
                http: None,
            }
        ),
        Err(trace::TraceError::NotFound(_))
    ));
}

#[test]
fn fields_not_enforced_are_warnings_everywhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let r = n.apply(UNENFORCED_POLICY, false).expect("applies");
    assert_eq!(r.warnings.len(), 1, "{r:?}");
    assert!(
        r.warnings[0].starts_with(
            "p.yaml: document 1 (CiliumNetworkPolicy default/l7proto-redis): spec.ingress[0].toPorts[0].rules"
        ),
        "{r:?}"
    );
    let views = n.policies.list(&n.endpoints.policy_snapshot());
    assert_eq!(views[0].warnings.len(), 1);
    assert!(views[0].warnings[0].starts_with("spec.ingress[0].toPorts[0].rules"));
    // Re-applying the same still says so.
    let r = n.apply(UNENFORCED_POLICY, false).expect("applies");
    assert_eq!(r.warnings.len(), 1);
    // And validation too.
    let v = manifests::validate(&split_documents("p.yaml", UNENFORCED_POLICY).expect("YAML"));
    assert!(v.valid);
    assert_eq!(v.warnings.len(), 1);
    let v = manifests::validate(
        &split_documents("p.yaml", &format!("{BROKEN_POLICY}---\n{SERVICE}")).expect("YAML"),
    );
    assert!(!v.valid);
    assert_eq!((v.errors.len(), v.other_objects), (1, 1), "{v:?}");
}

#[test]
fn the_manifest_directory_holds_policies_next_to_services() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("svc.yaml"), SERVICE).expect("write");
    std::fs::write(dir.path().join("policy.yaml"), SERVER_POLICY).expect("write");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), Some(dir.path()));
    assert_eq!(n.services.list().len(), 1);
    assert!(
        n.services.status().problems.is_empty(),
        "{:?}",
        n.services.status()
    );
    let views = n.policies.list(&n.endpoints.policy_snapshot());
    assert_eq!(views.len(), 1);
    assert!(views[0].source.ends_with("policy.yaml"), "{views:?}");
    // Not through the API.
    let err = n
        .apply(SERVER_POLICY, true)
        .expect_err("owned by the directory");
    assert!(
        err.to_string()
            .contains("managed by the manifest directory"),
        "{err}"
    );
    // A broken file keeps the last good set.
    std::fs::write(dir.path().join("policy.yaml"), BROKEN_POLICY).expect("write");
    assert!(!n.policies.reload_dir());
    assert_eq!(n.policies.list(&n.endpoints.policy_snapshot()).len(), 1);
    assert_eq!(n.policies.status().problems.len(), 1);
}

#[test]
fn node_addresses_are_host_in_the_ipcache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    assert!(n
        .policies
        .set_discovered_addresses(["10.0.0.5".parse().expect("ip")]));
    assert!(n.policies.needs_reconcile());
    n.endpoints.reconcile_policy().expect("reconciles");
    assert!(!n.policies.needs_reconcile());
    let hosts: Vec<String> =
        n.dp.ipcache()
            .expect("ipcache")
            .into_iter()
            .filter(|e| e.identity == 1)
            .map(|e| e.prefix.to_string())
            .collect();
    assert_eq!(
        hosts,
        ["10.0.0.5/32", "192.0.2.1/32"],
        "discovered and --node-ip"
    );
    assert!(!n
        .policies
        .set_discovered_addresses(["10.0.0.5".parse().expect("ip")]));
}

#[test]
fn named_ports_resolve_against_the_ports_endpoints_declare() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let client = n.pod("client", "client", 11);
    n.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: http}]\n",
        false,
    )
    .expect("applies");
    // A pod that declares `http` gets that port opened, before its create returns.
    let web = n.pod_with_ports("web", "web", 10, &["http=8080/tcp", "metrics=9090/tcp"]);
    let p = n.policy_of(&web);
    assert!(p.ingress_enforced);
    // (Identity 1 is the node: it reaches its pods unless denied.)
    let open: Vec<(u32, Option<u8>, u16)> = p
        .entries
        .iter()
        .filter(|e| !e.deny && e.identity != 1)
        .map(|e| (e.identity, e.proto, e.port))
        .collect();
    assert_eq!(open, vec![(client.identity, Some(6), 8080)], "{p:?}");
    assert!(n.trace("default/client", "default/web", 8080).allowed);
    assert!(!n.trace("default/client", "default/web", 9090).allowed);
}

/// Another node's pods, as the cluster view gives them: (address, identity, labels, pod).
const REMOTE: &[(&str, u32, &str, &str)] = &[
    (
        "10.201.0.5",
        400,
        "app=client,io.kubernetes.pod.namespace=default",
        "default/remote-client",
    ),
    (
        "10.201.0.6",
        401,
        "app=other,io.kubernetes.pod.namespace=default",
        "default/remote-other",
    ),
    (
        "10.201.0.7",
        402,
        "app=client,io.kubernetes.pod.namespace=beta",
        "beta/remote-client",
    ),
];

fn remote_cluster() -> ClusterInputs {
    let tunnel: Ipv4Addr = "192.0.2.50".parse().expect("ip");
    let mut inputs = ClusterInputs {
        identities: REMOTE
            .iter()
            .map(|(_, id, l, _)| (*id, Labels::parse_list(l, "k8s").expect("labels")))
            .collect(),
        ipcache: vec![
            bpf_policy::IpcacheEntry {
                prefix: "10.201.0.0/24".parse().expect("prefix"),
                identity: ReservedIdentity::World.id(),
                tunnel_endpoint: Some(tunnel),
            },
            bpf_policy::IpcacheEntry {
                prefix: "192.0.2.50/32".parse().expect("prefix"),
                identity: ReservedIdentity::RemoteNode.id(),
                tunnel_endpoint: None,
            },
        ],
        endpoints: Vec::new(),
    };
    for (ip, id, _, pod) in REMOTE {
        let (namespace, name) = pod.split_once('/').expect("ns/name");
        inputs.ipcache.push(bpf_policy::IpcacheEntry {
            prefix: format!("{ip}/32").parse().expect("prefix"),
            identity: *id,
            tunnel_endpoint: Some(tunnel),
        });
        inputs.endpoints.push(RemoteEndpoint {
            ip: ip.parse().expect("ip"),
            identity: *id,
            node: "node-b".into(),
            pod: Some(PodRef {
                namespace: namespace.into(),
                name: name.into(),
            }),
        });
    }
    inputs
}

/// #14: a pod of another node, by address or by name, is its identity (not `world`), and the
/// trace's verdict is the one the datapath reaches with the identity its ipcache gives the
/// address, over the policy map it holds; `identity get` knows the cluster's identities.
#[test]
fn trace_judges_other_nodes_pods_as_the_datapath_does() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let server = n.pod("server", "server", 5);
    let client = n.pod("client", "client", 6);
    n.apply(SERVER_POLICY, false).expect("applies");
    n.apply(CIDR_POLICY, false).expect("applies");
    assert!(n.policies.set_cluster(remote_cluster()));
    n.endpoints.reconcile_policy().expect("reconciles");
    let ipcache = n.dp.ipcache().expect("ipcache");
    let addresses = REMOTE.iter().map(|r| r.0).chain([
        "10.201.0.99",
        "192.0.2.50",
        "192.0.2.1",
        "10.1.2.3",
        "8.8.8.8",
    ]);
    for addr in addresses {
        let ip: Ipv4Addr = addr.parse().expect("ip");
        let want = super::trace::address_identity(&ipcache, ip);
        // Ingress to a local pod from the address, egress from a local pod to it.
        for (src, dst, local, egress) in [
            (addr, "default/server", &server, false),
            ("default/client", addr, &client, true),
        ] {
            let t = n.trace(src, dst, 8080);
            let peer = if egress { &t.dst } else { &t.src };
            assert_eq!(peer.identity, want, "{src} -> {dst}: {peer}");
            let dp =
                ciliate_policy::map::datapath_verdict(&n.policy_of(local), egress, want, 6, 8080);
            let judged = if egress { &t.egress } else { &t.ingress };
            let judged = judged.as_ref().expect("the local side is judged");
            assert_eq!(
                judged.drop_reason, dp,
                "{src} -> {dst}: trace says {judged:?}, the datapath {dp:?}"
            );
        }
    }
    // By address and by name: the remote pod, on its node.
    for q in ["10.201.0.5", "default/remote-client", "remote-client"] {
        let t = n.trace(q, "default/server", 8080);
        assert_eq!(t.src.kind, TracePeerKind::RemoteEndpoint, "{q}");
        assert_eq!(t.src.identity, 400, "{q}");
        assert_eq!(t.src.node.as_deref(), Some("node-b"));
        let ingress = t.ingress.as_ref().expect("the server is judged");
        assert!(ingress.allowed, "{q}: a client of default: {t:?}");
        // Its own egress is judged as its node judges it, with the same policies (the
        // CIDR policy selects every client: default deny there).
        assert_eq!(t.deciding, Some(ciliate_model::policy::Direction::Egress));
        assert!(
            t.notes.iter().any(|n| n.contains("on node node-b")),
            "{:?}",
            t.notes
        );
    }
    let t = n.trace("beta/remote-client", "default/server", 8080);
    let ingress = t.ingress.as_ref().expect("judged");
    assert_eq!((t.src.identity, ingress.allowed), (402, false), "{t:?}");
    let t = n.trace("default/remote-other", "default/server", 8080);
    assert_eq!((t.src.identity, t.drop_reason), (401, Some(133)), "{t:?}");
    assert_eq!(t.deciding, Some(ciliate_model::policy::Direction::Ingress));
    // The cluster's identities, with their labels.
    assert_eq!(
        n.policies
            .cluster_identities()
            .get(&402)
            .map(ToString::to_string),
        Some("k8s:app=client,k8s:io.kubernetes.pod.namespace=beta".to_owned())
    );
}

mod ipcache_resolution {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::trace::address_identity;

    /// The datapath's LPM trie, as a reference: the entry with the longest prefix that holds
    /// the address, found by trying every prefix length from /32 down.
    fn lpm_reference(entries: &[bpf_policy::IpcacheEntry], ip: Ipv4Addr) -> NumericIdentity {
        let by_key: BTreeMap<Ipv4Net, NumericIdentity> =
            entries.iter().map(|e| (e.prefix, e.identity)).collect();
        (0..=32u8)
            .rev()
            .find_map(|len| {
                let key = Ipv4Net::new(ip, len).expect("len").trunc();
                by_key.get(&key).copied()
            })
            .unwrap_or(ReservedIdentity::World.id())
    }

    proptest! {
        #[test]
        fn trace_resolves_addresses_as_the_datapath_lpm(
            entries in prop::collection::btree_map(
                (prop::sample::select(vec![8u8, 16, 24, 28, 32]), 0u32..4, 0u32..256),
                prop::sample::select(vec![1u32, 2, 6, 300, 301, 16_777_217]),
                0..12,
            ),
            probes in prop::collection::vec((0u32..4, 0u32..256), 1..20),
        ) {
            // Prefixes inside 10.0.0.0/8 so that they overlap often.
            let ip = |a: u32, b: u32| Ipv4Addr::from(0x0a00_0000 | (a << 8) | b);
            let entries: Vec<bpf_policy::IpcacheEntry> = entries
                .into_iter()
                .map(|((len, a, b), identity)| bpf_policy::IpcacheEntry {
                    prefix: Ipv4Net::new(ip(a, b), len).expect("len").trunc(),
                    identity,
                    tunnel_endpoint: None,
                })
                .collect();
            // Dedup by prefix as the ipcache map does (one value per key).
            let mut by_prefix: BTreeMap<Ipv4Net, bpf_policy::IpcacheEntry> = BTreeMap::new();
            for e in entries {
                by_prefix.insert(e.prefix, e);
            }
            let entries: Vec<_> = by_prefix.into_values().collect();
            for (a, b) in probes {
                let addr = ip(a, b);
                prop_assert_eq!(address_identity(&entries, addr), lpm_reference(&entries, addr));
            }
        }
    }
}

/// #12 from the manifest directory: a Namespace file labels its pods for policy once the
/// Services' poll reads it, and the policy revision says when that is in force.
#[test]
fn namespaces_from_the_manifest_directory_label_their_pods() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-team-a}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}}]\n",
    )
    .expect("write");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), Some(dir.path()));
    let server = n.pod("server", "server", 5);
    let client = n.pod("client", "client", 6);
    let allowed = |n: &Node| {
        ciliate_policy::map::datapath_verdict(&n.policy_of(&server), false, client.identity, 6, 80)
            .is_none()
    };
    assert!(!allowed(&n), "default has no label team=a yet");
    std::fs::write(
        dir.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {team: a}}\n",
    )
    .expect("write");
    let before = n.policies.revision();
    n.services.tick();
    let after = n.policies.revision();
    assert!(after.revision > before.revision, "{before:?} {after:?}");
    assert!(
        !after.is_in_force(after.revision),
        "the policy loop reconciles next"
    );
    assert!(n.policies.needs_reconcile());
    n.endpoints.reconcile_policy().expect("reconciles");
    assert!(n.policies.revision().is_in_force(after.revision));
    assert!(allowed(&n), "default now has team=a");
}

/// Drains what the proxy's side received so far.
fn received(rx: &std::sync::mpsc::Receiver<ProxyCommand>) -> Vec<ProxyCommand> {
    rx.try_iter().collect()
}

#[test]
fn http_rules_are_pushed_to_the_proxy_and_lifted_on_delete() {
    use ciliate_model::l7::HttpMatch;

    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let server = n.pod("server", "server", 10);
    let client = n.pod("client", "client", 11);
    let (tx, rx) = std::sync::mpsc::channel();
    n.policies.attach_l7_sink(Box::new(tx));
    assert!(matches!(
        received(&rx).as_slice(),
        [ProxyCommand::Snapshot { redirects, .. }] if redirects.is_empty()
    ));

    n.apply(L7_POLICY, false).expect("applies");
    let p = n.policy_of(&server);
    let entry = p
        .entries
        .iter()
        .find(|e| e.identity == client.identity && e.port == 80)
        .expect("an entry for the client on port 80");
    assert_eq!((entry.proxy_port, entry.deny), (15002, false), "{p:?}");
    let cmds = received(&rx);
    let [ProxyCommand::Endpoint {
        endpoint,
        redirects,
        revision,
    }] = cmds.as_slice()
    else {
        panic!("one command for the server: {cmds:?}");
    };
    assert_eq!(*endpoint, server.id);
    assert!(*revision >= 2);
    assert_eq!(redirects.len(), 1);
    let r = &redirects[0];
    assert_eq!(
        (r.endpoint, r.endpoint_ip, r.egress, r.port, r.proxy_port),
        (server.id, server.ipv4, false, 80, 15002)
    );
    assert_eq!(r.rules.len(), 1);
    assert_eq!(r.rules[0].peers, Some(vec![client.identity]));
    assert_eq!(r.rules[0].rule, entry.rule);
    assert_eq!(
        r.rules[0].http,
        vec![HttpMatch {
            method: Some("GET".into()),
            ..HttpMatch::default()
        }]
    );
    assert_eq!(
        n.policies.l7_snapshot(),
        ProxyCommand::Snapshot {
            revision: *revision,
            redirects: redirects.clone()
        }
    );
    let status = n.policies.status();
    assert_eq!((status.proxy.redirects, status.proxy.endpoints), (1, 1));
    assert!(
        status.proxy.enabled && status.problems.is_empty(),
        "{status:?}"
    );
    // Reconciling again changes nothing, so nothing is sent.
    n.endpoints.reconcile_policy().expect("reconciles");
    assert!(received(&rx).is_empty());

    // A rejected change of the policy leaves the rules in force and sends nothing.
    let bad = L7_POLICY.replace("{method: GET}", "{method: GET, path: \"/api/(v1\"}");
    let err = n.apply(&bad, false).expect_err("refused").to_string();
    assert!(
        err.contains("spec.ingress[0].toPorts[0].rules.http[0].path: \"/api/(v1\" is not a valid regular expression"),
        "{err}"
    );
    assert!(received(&rx).is_empty());
    assert_eq!(n.policy_of(&server), p);
    assert_eq!(n.policies.l7_redirects(server.id), redirects.clone());

    // Deleting the policy lifts the redirect.
    n.apply(L7_POLICY, true).expect("deletes");
    assert!(matches!(
        received(&rx).as_slice(),
        [ProxyCommand::Endpoint { endpoint, redirects, .. }] if *endpoint == server.id && redirects.is_empty()
    ));
    assert!(n
        .policy_of(&server)
        .entries
        .iter()
        .all(|e| e.proxy_port == 0));
    assert_eq!(n.policies.status().proxy.redirects, 0);

    // An endpoint removed: its redirects go.
    n.apply(L7_POLICY, false).expect("applies");
    assert_eq!(received(&rx).len(), 1);
    n.endpoints.delete("c-server").expect("deleted");
    assert!(matches!(
        received(&rx).as_slice(),
        [ProxyCommand::Endpoint { endpoint, redirects, .. }] if *endpoint == server.id && redirects.is_empty()
    ));
    assert_eq!(n.policies.status().proxy.redirects, 0);
}

#[test]
fn redirects_without_a_proxy_are_a_status_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let _server = n.pod("server", "server", 10);
    let _client = n.pod("client", "client", 11);
    n.apply(L7_POLICY, false).expect("applies");
    let status = n.policies.status();
    assert!(!status.proxy.enabled);
    assert_eq!(status.proxy.redirects, 1);
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.contains("no L7 proxy runs on this node")),
        "{status:?}"
    );
}

#[test]
fn trace_explains_http_rules() {
    use ciliate_model::policy_api::TraceHttp;

    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let _server = n.pod("server", "server", 10);
    let _client = n.pod("client", "client", 11);
    n.apply(L7_POLICY, false).expect("applies");
    let trace = |http: Option<TraceHttp>| {
        n.policies
            .trace(
                &n.endpoints.list(),
                &n.endpoints.policy_snapshot().identities,
                &TraceQuery {
                    src: "default/client".into(),
                    dst: "default/server".into(),
                    proto: 6,
                    dport: 80,
                    http,
                },
            )
            .expect("traces")
    };
    // Without a request: the port is redirected, and the rules in force are listed.
    let t = trace(None);
    assert!(t.allowed);
    let l7 = t.ingress.as_ref().and_then(|d| d.l7.clone()).expect("l7");
    assert_eq!(l7.proxy_port, 15002);
    assert_eq!(l7.rules.len(), 1);
    assert_eq!(l7.rules[0].rule.path(), "spec.ingress[0]");
    assert_eq!(l7.rules[0].http[0].method.as_deref(), Some("GET"));
    assert_eq!(l7.allowed, None);
    assert!(l7.message.contains("redirected to the L7 proxy"), "{l7:?}");
    assert!(t.egress.as_ref().is_some_and(|d| d.l7.is_none()));

    let req = |method: &str| TraceHttp {
        method: method.into(),
        path: "/api".into(),
        host: String::new(),
        headers: vec![],
    };
    let t = trace(Some(req("GET")));
    assert!(t.allowed, "{t:?}");
    let l7 = t.ingress.as_ref().and_then(|d| d.l7.clone()).expect("l7");
    assert_eq!(l7.allowed, Some(true));
    assert_eq!(l7.allowed_by[0].rule.path(), "spec.ingress[0]");
    assert_eq!(l7.allowed_by[0].http_index, Some(0));
    assert_eq!(t.http, Some(req("GET")));

    let t = trace(Some(req("POST")));
    assert!(!t.allowed);
    assert_eq!(t.deciding, Some(ciliate_model::policy::Direction::Ingress));
    assert_eq!(t.drop_reason, None);
    let l7 = t.ingress.as_ref().and_then(|d| d.l7.clone()).expect("l7");
    assert_eq!(l7.allowed, Some(false));
    assert!(l7.message.contains("403"), "{l7:?}");

    // A port without HTTP rules: the request is not judged, and the trace says so.
    n.apply(
        &SERVER_POLICY.replace("name: server-ingress", "name: server-8080"),
        false,
    )
    .expect("applies");
    let t = n
        .policies
        .trace(
            &n.endpoints.list(),
            &n.endpoints.policy_snapshot().identities,
            &TraceQuery {
                src: "default/client".into(),
                dst: "default/server".into(),
                proto: 6,
                dport: 8080,
                http: Some(req("DELETE")),
            },
        )
        .expect("traces");
    assert!(t.allowed);
    assert!(
        t.notes.iter().any(|x| x.contains("no HTTP rule applies")),
        "{t:?}"
    );

    // A request over UDP, or without a path, is a bad query.
    let bad = n.policies.trace(
        &n.endpoints.list(),
        &IdentityLabels::new(),
        &TraceQuery {
            src: "default/client".into(),
            dst: "default/server".into(),
            proto: 17,
            dport: 80,
            http: Some(req("GET")),
        },
    );
    assert!(matches!(bad, Err(trace::TraceError::Invalid(_))));
}

#[test]
fn a_new_endpoint_has_its_redirects_before_it_is_created() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::open(tmp.path(), Arc::new(FakeDatapath::new()), None);
    let _client = n.pod("client", "client", 11);
    n.apply(L7_POLICY, false).expect("applies");
    let (tx, rx) = std::sync::mpsc::channel();
    n.policies.attach_l7_sink(Box::new(tx));
    let _ = received(&rx);
    let server = n.pod("server", "server", 10);
    let cmds = received(&rx);
    // Exactly one command: the redirects set while the endpoint was created; the
    // reconciliation after it finds nothing to change and removes nothing.
    assert!(
        matches!(
            cmds.as_slice(),
            [ProxyCommand::Endpoint { endpoint, redirects, .. }] if *endpoint == server.id && redirects.len() == 1
        ),
        "{cmds:?}"
    );
    assert_eq!(
        n.policies.l7_redirects(server.id)[0].endpoint_ip,
        server.ipv4
    );
    n.endpoints.reconcile_policy().expect("reconciles");
    assert!(received(&rx).is_empty());
}
