//! FqdnLearned → FQDN cache → policy maps → FqdnAllowed, against the fake datapath, as the
//! agent wires them (endpoint manager, policy manager, FQDN manager), and across a restart.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use ciliate_datapath::FakeDatapath;
use ciliate_model::api::EndpointCreateRequest;
use ciliate_model::bpf_policy::{EndpointPolicy, PolicyMapEntry};
use ciliate_model::identity::MIN_CIDR_IDENTITY;
use ciliate_model::l7::{FqdnAnswer, ProxyCommand};
use ciliate_model::manifest::{split_documents, ApplyRequest};
use ciliate_model::{Labels, MacAddr, PodRef};
use tokio::sync::mpsc;

use super::*;
use crate::endpoints::{EndpointManager, ManagerSettings};
use crate::manifests;
use crate::policy::PolicySettings;
use crate::services::{ServiceManager, ServiceSettings};
use crate::state::StateStore;

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-fqdn}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
  - toFQDNs: [{matchName: allowed.example.com}, {matchPattern: "*.s3.example.com"}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

struct Node {
    dp: Arc<FakeDatapath>,
    endpoints: Arc<EndpointManager>,
    policies: Arc<PolicyManager>,
    fqdn: Arc<FqdnManager>,
    _services: ServiceManager,
}

impl Node {
    /// As the agent starts: endpoints, policies, the FQDN cache, then one reconciliation.
    fn open(dir: &Path, dp: Arc<FakeDatapath>) -> Self {
        let store = StateStore::open(dir).unwrap();
        let endpoints = Arc::new(
            EndpointManager::open(
                ManagerSettings {
                    node_name: "node-a".into(),
                    pod_cidr: "10.200.0.0/24".parse().unwrap(),
                    mtu: 1500,
                },
                store,
                dp.clone(),
            )
            .unwrap(),
        );
        let services = ServiceManager::open(
            ServiceSettings {
                node_name: "node-a".into(),
                node_ips: vec![],
                manifest_dir: None,
                kubernetes: false,
            },
            dir,
            dp.clone(),
        )
        .unwrap();
        let policies =
            Arc::new(PolicyManager::open(PolicySettings::default(), dir, dp.clone()).unwrap());
        services.attach_policy(Arc::clone(&policies));
        endpoints.attach_policy(Arc::clone(&policies));
        let view = Arc::clone(&endpoints);
        let fqdn = Arc::new(
            FqdnManager::open(
                FqdnSettings::default(),
                dir,
                Arc::clone(&policies),
                dp.clone(),
                Box::new(move || view.policy_snapshot()),
            )
            .unwrap(),
        );
        endpoints.reconcile_policy().unwrap();
        Self {
            dp,
            endpoints,
            policies,
            fqdn,
            _services: services,
        }
    }

    fn apply(&self, yaml: &str) {
        let req = ApplyRequest {
            documents: split_documents("p.yaml", yaml).unwrap(),
            delete: false,
        };
        manifests::apply(&self._services, &self.policies, &self.endpoints, &req).unwrap();
    }

    fn pod(&self, name: &str, app: &str, ifindex: u32) -> ciliate_model::Endpoint {
        self.endpoints
            .create(&EndpointCreateRequest {
                container_id: format!("c-{name}"),
                ifname: "eth0".into(),
                netns: format!("/var/run/netns/{name}"),
                pod: Some(PodRef {
                    namespace: "default".into(),
                    name: name.into(),
                }),
                labels: Labels::parse_list(&format!("app={app}"), "k8s").unwrap(),
                named_ports: vec![],
                host_ifname: format!("lxc{ifindex}"),
                host_ifindex: ifindex,
                host_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mac: MacAddr([2, 0, 0, 0, 0, 2]),
            })
            .unwrap()
            .endpoint
    }

    fn policy_of(&self, ep: &ciliate_model::Endpoint) -> EndpointPolicy {
        self.dp.policies().get(&ep.id).cloned().unwrap_or_default()
    }

    /// The identity the ipcache gives `ip` (a /32 of its own), if any.
    fn identity_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.dp
            .ipcache()
            .unwrap()
            .into_iter()
            .find(|e| e.prefix.prefix_len() == 32 && e.prefix.addr() == ip)
            .map(|e| e.identity)
    }
}

fn learned(id: u64, ep: &ciliate_model::Endpoint, name: &str, ips: &[&str]) -> FqdnLearned {
    FqdnLearned {
        id,
        endpoint: ep.id,
        endpoint_ip: ep.ipv4,
        names: vec![FqdnAnswer {
            name: name.into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ttl: 5,
        }],
    }
}

fn allows(p: &EndpointPolicy, identity: u32, port: u16) -> Option<&PolicyMapEntry> {
    p.entries
        .iter()
        .find(|e| e.egress && e.identity == identity && e.port == port && !e.deny)
}

/// What the proxy side sees: the ack, after which the maps must already hold the address.
async fn ack(
    node: &Node,
    ev: FqdnLearned,
    rx: &mut mpsc::UnboundedReceiver<ProxyCommand>,
    tx: &mpsc::UnboundedSender<ProxyCommand>,
) {
    let id = ev.id;
    crate::proxy::allow_learned(ev, Some(Arc::clone(&node.fqdn)), tx.clone());
    assert_eq!(rx.recv().await, Some(ProxyCommand::FqdnAllowed { id }));
}

#[tokio::test]
async fn a_learned_answer_is_in_the_maps_before_it_is_allowed_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dp = Arc::new(FakeDatapath::new());
    let node = Node::open(dir.path(), dp.clone());
    node.apply(POLICY);
    let client = node.pod("client", "client", 11);
    let other = node.pod("other", "other", 12);

    // DNS goes through the proxy: port 53 UDP and TCP carry the DNS proxy's port.
    let p = node.policy_of(&client);
    let dns: Vec<_> = p
        .entries
        .iter()
        .filter(|e| e.egress && e.port == 53)
        .map(|e| (e.proto, e.proxy_port))
        .collect();
    assert_eq!(dns, vec![(Some(6), 15053), (Some(17), 15053)]);
    let redirects = node.policies.l7_redirects(client.id);
    assert_eq!(redirects.len(), 2);
    assert!(redirects.iter().all(|r| r.endpoint_ip == client.ipv4));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let allowed: Ipv4Addr = "198.51.100.7".parse().unwrap();
    let denied: Ipv4Addr = "198.51.100.9".parse().unwrap();
    ack(
        &node,
        learned(1, &client, "allowed.example.com.", &["198.51.100.7"]),
        &mut rx,
        &tx,
    )
    .await;
    let id = node
        .identity_of(allowed)
        .expect("the address has an identity in the ipcache");
    assert!(id >= MIN_CIDR_IDENTITY);
    assert!(allows(&node.policy_of(&client), id, 80).is_some());
    // The other pod's policy does not name it.
    assert!(allows(&node.policy_of(&other), id, 80).is_none());
    // A name no toFQDNs selects: learned, not allowed.
    ack(
        &node,
        learned(2, &client, "denied.example.com.", &["198.51.100.9"]),
        &mut rx,
        &tx,
    )
    .await;
    assert_eq!(node.identity_of(denied), None);
    assert_eq!(node.fqdn.list(None).len(), 2);
    // A pattern.
    ack(
        &node,
        learned(3, &client, "b1.s3.example.com.", &["198.51.100.8"]),
        &mut rx,
        &tx,
    )
    .await;
    let s3 = node.identity_of("198.51.100.8".parse().unwrap()).unwrap();
    assert!(allows(&node.policy_of(&client), s3, 80).is_some());

    // A restart (the pinned maps stay): the address keeps its identity and its entry, before
    // any new answer.
    let (client_id, dp) = (client.id, node.dp.clone());
    drop(node);
    let node = Node::open(dir.path(), dp);
    assert_eq!(node.identity_of(allowed), Some(id));
    let p = node.dp.policies().get(&client_id).cloned().unwrap();
    assert!(allows(&p, id, 80).is_some());
    assert_eq!(
        node.policies.fqdn_ips("allowed.example.com."),
        vec![allowed]
    );

    // Clean: the addresses leave the maps.
    let cleaned = node
        .fqdn
        .clean(Some(
            &FqdnMatcher::new(None, Some("*.s3.example.com")).unwrap(),
        ))
        .unwrap();
    assert_eq!(cleaned.names, 1);
    assert_eq!(node.identity_of("198.51.100.8".parse().unwrap()), None);
    assert!(node.identity_of(allowed).is_some());
    node.fqdn.clean(None).unwrap();
    assert_eq!(node.identity_of(allowed), None);
    let p = node.dp.policies().get(&client_id).cloned().unwrap();
    assert!(allows(&p, id, 80).is_none());
}

/// How long the agent takes from a FqdnLearned to its FqdnAllowed (fake datapath: the
/// agent's own work). Printed, not asserted: the numbers that count are in bench/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_from_learned_to_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path(), Arc::new(FakeDatapath::new()));
    node.apply(POLICY);
    let client = node.pod("client", "client", 11);
    for i in 0..20 {
        node.pod(&format!("bystander{i}"), "other", 20 + i);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut new_name = Vec::new();
    let mut known = Vec::new();
    for i in 0..200u64 {
        let ip = format!("198.51.{}.{}", 100 + i / 250, i % 250 + 1);
        let ev = learned(i, &client, &format!("n{i}.s3.example.com."), &[&ip]);
        let t = Instant::now();
        ack(&node, ev.clone(), &mut rx, &tx).await;
        new_name.push(t.elapsed());
        let t = Instant::now();
        ack(&node, ev, &mut rx, &tx).await;
        known.push(t.elapsed());
    }
    let stats = |v: &mut Vec<std::time::Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (new_p50, new_p99) = stats(&mut new_name);
    let (known_p50, known_p99) = stats(&mut known);
    eprintln!(
        "FqdnLearned -> FqdnAllowed (fake datapath, 21 endpoints, up to 200 names): new address p50 {new_p50:?} p99 {new_p99:?}; known address p50 {known_p50:?} p99 {known_p99:?}"
    );
    assert_eq!(node.fqdn.list(None).len(), 200);
}

/// A burst of answers taken together: every address in the maps, with one policy computation
/// for all of them (not one per address).
#[tokio::test]
async fn a_burst_of_answers_is_put_in_force_with_one_computation() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path(), Arc::new(FakeDatapath::new()));
    node.apply(POLICY);
    let client = node.pod("client", "client", 11);
    let burst: Vec<FqdnLearned> = (0..50u64)
        .map(|i| {
            let ip = format!("198.51.100.{}", i + 1);
            learned(i, &client, &format!("n{i}.s3.example.com."), &[&ip])
        })
        .collect();
    let names = node.policies.subscribe_names();
    let before = *names.borrow();
    node.fqdn.learned_all(&burst).unwrap();
    assert_eq!(
        names.borrow().wrapping_sub(before),
        1,
        "one computation for the burst"
    );
    let p = node.policy_of(&client);
    for i in 0..50u8 {
        let ip = Ipv4Addr::new(198, 51, 100, i + 1);
        let id = node.identity_of(ip).expect("in the ipcache");
        assert!(id >= MIN_CIDR_IDENTITY);
        assert!(allows(&p, id, 80).is_some(), "{ip} allowed on 80");
    }
    // Through the learner: each answer is acknowledged, in order, after its addresses.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let learner = crate::proxy::FqdnLearner::new(Some(Arc::clone(&node.fqdn)), tx);
    for i in 50..80u64 {
        let ip = format!("198.51.101.{}", i + 1);
        learner.learn(learned(
            i,
            &client,
            &format!("n{i}.s3.example.com."),
            &[&ip],
        ));
    }
    for i in 50..80u64 {
        assert_eq!(rx.recv().await, Some(ProxyCommand::FqdnAllowed { id: i }));
    }
    assert!(node.identity_of(Ipv4Addr::new(198, 51, 101, 80)).is_some());
    assert_eq!(node.fqdn.list(None).len(), 80);
}
