#![allow(clippy::unwrap_used)]

use super::*;
use ciliate_model::k8s::{
    EndpointConditions, EndpointPort, ObjectMeta, SliceEndpoint, SERVICE_NAME_LABEL,
};
use ciliate_model::manifest::{decode_all, split_documents};

fn objects(yaml: &str) -> Vec<Object> {
    let docs = split_documents("t.yaml", yaml).unwrap();
    decode_all(&docs)
        .unwrap_or_else(|e| panic!("{e:#?}"))
        .into_iter()
        .map(|d| d.object)
        .collect()
}

fn node() -> Node {
    Node {
        name: "node-a".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
    }
}

fn plan(objs: &[Object], ids: &mut IdAllocator) -> LbPlan {
    compute(objs, &node(), ids).unwrap()
}

fn svc(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n{extra}\n"
    )
}

fn slice(name: &str, service: &str, endpoints: &str, ports: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{{SERVICE_NAME_LABEL}: {service}}}\naddressType: IPv4\nendpoints:\n{endpoints}\nports: {ports}\n"
    )
}

const WEB: &str = "  ports: [{name: http, port: 80, targetPort: 8080}]";
const THREE: &str =
    "- {addresses: [10.200.0.1]}\n- {addresses: [10.200.0.2]}\n- {addresses: [10.200.0.3]}";

fn web() -> Vec<Object> {
    objects(&format!(
        "{}---\n{}",
        svc("web", "10.96.0.10", WEB),
        slice("web-1", "web", THREE, "[{name: http, port: 8080}]")
    ))
}

fn addrs(state: &LbState, f: &LbFrontend) -> Vec<String> {
    f.backends
        .iter()
        .map(|id| {
            let b = state.backends.iter().find(|b| b.id == *id).unwrap();
            format!("{}:{}", b.addr, b.port)
        })
        .collect()
}

#[test]
fn an_address_two_slices_disagree_about_is_one_active_backend() {
    // One address, ready in one Service's slice and terminating in another's (Kubernetes
    // reports one pod's conditions alike in every slice; a stale or hand-written slice can
    // differ). The address is one backend with one state, and it serves someone: active.
    // The second Service has no ready endpoint, so its slots hold its terminating ones, this
    // backend among them.
    let t = "{ready: false, serving: true, terminating: true}";
    let objs = objects(&format!(
        "{}---\n{}---\n{}---\n{}",
        svc("a", "10.96.0.10", WEB),
        slice("a-1", "a", "- {addresses: [10.200.0.6]}", "[{name: http, port: 8080}]"),
        svc("b", "10.96.0.11", WEB),
        slice(
            "b-1",
            "b",
            &format!("- {{addresses: [10.200.0.7], conditions: {t}}}\n- {{addresses: [10.200.0.6], conditions: {t}}}"),
            "[{name: http, port: 8080}]"
        ),
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    let state = |addr: &str| {
        let b = p
            .state
            .backends
            .iter()
            .find(|b| b.addr.to_string() == addr)
            .unwrap();
        b.state
    };
    assert_eq!(state("10.200.0.6"), BackendState::Active);
    assert_eq!(state("10.200.0.7"), BackendState::Terminating);
    let by_ip = |ip: [u8; 4]| {
        let f = p
            .state
            .frontends
            .iter()
            .find(|f| f.addr == Ipv4Addr::from(ip))
            .unwrap();
        let mut a = addrs(&p.state, f);
        a.sort();
        a
    };
    assert_eq!(by_ip([10, 96, 0, 10]), ["10.200.0.6:8080"]);
    assert_eq!(
        by_ip([10, 96, 0, 11]),
        ["10.200.0.6:8080", "10.200.0.7:8080"]
    );
}

#[test]
fn a_service_with_three_backends() {
    let mut ids = IdAllocator::new();
    let p = plan(&web(), &mut ids);
    assert_eq!(p.state.frontends.len(), 1);
    let f = &p.state.frontends[0];
    assert_eq!(
        (f.addr, f.port, f.proto),
        (Ipv4Addr::new(10, 96, 0, 10), 80, L4Proto::Tcp)
    );
    assert_eq!(f.kind, FrontendKind::ClusterIp);
    assert_eq!(f.rev_nat_index, 1);
    assert_eq!(f.backends, [1, 2, 3]);
    assert_eq!(
        addrs(&p.state, f),
        ["10.200.0.1:8080", "10.200.0.2:8080", "10.200.0.3:8080"]
    );
    assert_eq!(f.service.to_string(), "default/web:http");
    assert_eq!(f.affinity_timeout, None);
    assert!(p
        .state
        .backends
        .iter()
        .all(|b| b.state == BackendState::Active));
    let v = &p.services[0];
    assert_eq!(v.full_name(), "default/web");
    assert_eq!(v.frontends[0].backends.len(), 3);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

#[test]
fn conditions_are_honoured_as_kube_proxy_does() {
    let eps = "\
- {addresses: [10.200.0.1], conditions: {ready: true}}
- {addresses: [10.200.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.200.0.3], conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.200.0.4], conditions: {ready: false}}
- {addresses: [10.200.0.5], conditions: {ready: false, serving: true}}";
    let objs = objects(&format!(
        "{}---\n{}",
        svc("web", "10.96.0.10", WEB),
        slice("web-1", "web", eps, "[{name: http, port: 8080}]")
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    let f = &p.state.frontends[0];
    assert_eq!(
        addrs(&p.state, f),
        ["10.200.0.1:8080"],
        "only the ready one takes new connections"
    );
    let states: Vec<_> = p
        .state
        .backends
        .iter()
        .map(|b| (b.addr.octets()[3], b.state))
        .collect();
    assert_eq!(
        states,
        [(1, BackendState::Active), (2, BackendState::Terminating)],
        "terminating-but-serving stays for its connections; not serving is left out"
    );

    // With no ready endpoint, terminating ones take new connections.
    let eps =
        "- {addresses: [10.200.0.2], conditions: {ready: false, serving: true, terminating: true}}";
    let objs = objects(&format!(
        "{}---\n{}",
        svc("web", "10.96.0.10", WEB),
        slice("web-1", "web", eps, "[{name: http, port: 8080}]")
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert_eq!(addrs(&p.state, &p.state.frontends[0]), ["10.200.0.2:8080"]);
    assert_eq!(p.state.backends[0].state, BackendState::Terminating);

    // Nothing serving: the frontend stays, without backends, so the datapath refuses at once.
    let eps = "- {addresses: [10.200.0.3], conditions: {ready: false}}";
    let objs = objects(&format!(
        "{}---\n{}",
        svc("web", "10.96.0.10", WEB),
        slice("web-1", "web", eps, "[{name: http, port: 8080}]")
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert!(p.state.frontends[0].backends.is_empty());
    assert!(p.state.backends.is_empty());
    assert!(
        p.services[0].problems[0].contains("no ready or terminating endpoints"),
        "{:?}",
        p.services[0].problems
    );
}

#[test]
fn named_target_ports_resolve_through_slice_port_names() {
    // kube-proxy's way: the slice port is named after the Service port.
    let by_service_port = objects(&format!(
        "{}---\n{}",
        svc(
            "api",
            "10.96.0.11",
            "  ports: [{name: web, port: 80, targetPort: http-api}]"
        ),
        slice(
            "api-1",
            "api",
            "- {addresses: [10.200.0.9]}",
            "[{name: web, port: 9090}]"
        )
    ));
    // A hand-written slice may name the container port instead.
    let by_target_name = objects(&format!(
        "{}---\n{}",
        svc(
            "api",
            "10.96.0.11",
            "  ports: [{name: web, port: 80, targetPort: http-api}]"
        ),
        slice(
            "api-1",
            "api",
            "- {addresses: [10.200.0.9]}",
            "[{name: http-api, port: 9090}]"
        )
    ));
    for objs in [by_service_port, by_target_name] {
        let p = plan(&objs, &mut IdAllocator::new());
        assert_eq!(addrs(&p.state, &p.state.frontends[0]), ["10.200.0.9:9090"]);
    }
    // A name nothing serves is said so.
    let objs = objects(&format!(
        "{}---\n{}",
        svc(
            "api",
            "10.96.0.11",
            "  ports: [{name: web, port: 80, targetPort: http-api}]"
        ),
        slice(
            "api-1",
            "api",
            "- {addresses: [10.200.0.9]}",
            "[{name: other, port: 9090}]"
        )
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert!(p.state.frontends[0].backends.is_empty());
    assert!(
        p.services[0].problems[0].contains("no EndpointSlice port serves it"),
        "{:?}",
        p.services[0].problems
    );
}

/// kube-proxy's rule: the slice port named like the Service port is used, its number as is;
/// `targetPort` is the EndpointSlice controller's business.
#[test]
fn the_slice_port_named_like_the_service_port_is_used_as_is() {
    // Selectorless, no targetPort, a hand-written slice on another port.
    let objs = objects(&format!(
        "{}---\n{}",
        svc("ext", "10.96.0.12", "  ports: [{name: http, port: 80}]"),
        slice(
            "ext-1",
            "ext",
            "- {addresses: [10.200.0.1]}",
            "[{name: http, port: 8080}]"
        ),
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert_eq!(addrs(&p.state, &p.state.frontends[0]), ["10.200.0.1:8080"]);
    assert!(
        p.services[0].problems.is_empty(),
        "{:?}",
        p.services[0].problems
    );
    // During a targetPort change (8080 → 9090) the slices written for 8080 still serve, each
    // on its own port, until the controller rewrites them.
    let objs = objects(&format!(
        "{}---\n{}---\n{}",
        svc(
            "web",
            "10.96.0.10",
            "  ports: [{name: http, port: 80, targetPort: 9090}]"
        ),
        slice(
            "web-1",
            "web",
            "- {addresses: [10.200.0.1]}",
            "[{name: http, port: 8080}]"
        ),
        slice(
            "web-2",
            "web",
            "- {addresses: [10.200.0.2]}",
            "[{name: http, port: 9090}]"
        )
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert_eq!(
        addrs(&p.state, &p.state.frontends[0]),
        ["10.200.0.1:8080", "10.200.0.2:9090"]
    );
    // Another name, or another protocol, does not serve it.
    let objs = objects(&format!(
        "{}---\n{}",
        svc("web", "10.96.0.10", "  ports: [{name: http, port: 80}]"),
        slice(
            "web-1",
            "web",
            "- {addresses: [10.200.0.1]}",
            "[{name: metrics, port: 80}, {name: http, port: 80, protocol: UDP}]"
        ),
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert!(p.state.frontends[0].backends.is_empty());
    assert!(
        p.services[0].problems[0].contains("no EndpointSlice port serves it"),
        "{:?}",
        p.services[0].problems
    );
}

#[test]
fn headless_and_external_name_services_have_no_frontends() {
    let objs = objects(&format!(
        "{}---\n{}---\n{}",
        svc("db", "None", "  ports: [{port: 5432}]"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {type: ExternalName, externalName: db.example.com}\n",
        slice("db-1", "db", "- {addresses: [10.200.0.1]}", "[{port: 5432}]"),
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert!(p.state.frontends.is_empty() && p.state.backends.is_empty());
    assert_eq!(p.services.len(), 2, "still listed");
    assert!(p
        .services
        .iter()
        .all(|s| s.frontends.is_empty() && s.problems.is_empty()));
}

#[test]
fn every_kind_of_frontend() {
    let objs = objects(&format!(
        "{}status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.7}}]}}}}\n---\n{}",
        svc(
            "lb",
            "10.96.0.20",
            "  type: LoadBalancer\n  externalIPs: [192.0.2.1]\n  sessionAffinity: ClientIP\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {name: dns, protocol: UDP, port: 53, targetPort: 53}]\n"
        ),
        slice("lb-1", "lb", "- {addresses: [10.200.0.1]}", "[{name: http, port: 8080}, {name: dns, protocol: UDP, port: 53}]"),
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    let got: Vec<String> = p
        .state
        .frontends
        .iter()
        .map(|f| {
            format!(
                "{}:{}/{} {:?} {:?}",
                f.addr, f.port, f.proto, f.kind, f.affinity_timeout
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "10.96.0.20:53/UDP ClusterIp Some(10800)",
            "10.96.0.20:80/TCP ClusterIp Some(10800)",
            "192.0.2.1:53/UDP ExternalIp Some(10800)",
            "192.0.2.1:80/TCP ExternalIp Some(10800)",
            "192.168.1.10:30080/TCP NodePort Some(10800)",
            "198.51.100.7:53/UDP LoadBalancer Some(10800)",
            "198.51.100.7:80/TCP LoadBalancer Some(10800)",
        ]
    );
    // One backend per (address, port, protocol), shared by the frontends.
    assert_eq!(p.state.backends.len(), 2);
    // Rev-NAT indexes are distinct and never 0.
    let rev: BTreeSet<u16> = p.state.frontends.iter().map(|f| f.rev_nat_index).collect();
    assert_eq!(rev.len(), 7);
    assert!(!rev.contains(&0));

    // Without node addresses, node ports are not programmed, and the Service says why.
    let p = compute(&objs, &Node::default(), &mut IdAllocator::new()).unwrap();
    assert_eq!(p.state.frontends.len(), 6);
    assert!(p.services[0]
        .problems
        .iter()
        .any(|m| m.contains("--node-ip")));
}

#[test]
fn local_traffic_policies_keep_node_local_endpoints() {
    let eps = "- {addresses: [10.200.0.1], nodeName: node-a}\n- {addresses: [10.200.0.2], nodeName: node-b}";
    let objs = objects(&format!(
        "{}---\n{}",
        svc(
            "web",
            "10.96.0.10",
            "  type: NodePort\n  internalTrafficPolicy: Local\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]"
        ),
        slice("web-1", "web", eps, "[{name: http, port: 8080}]")
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    let by_kind = |k| p.state.frontends.iter().find(|f| f.kind == k).unwrap();
    assert_eq!(
        addrs(&p.state, by_kind(FrontendKind::ClusterIp)),
        ["10.200.0.1:8080"]
    );
    assert_eq!(
        by_kind(FrontendKind::NodePort).backends.len(),
        2,
        "external policy is Cluster"
    );
}

#[test]
fn endpoints_objects_count_like_slices_and_duplicates_merge() {
    let objs = objects(&format!(
        "{}---\n{}---\n{}",
        svc("web", "10.96.0.10", WEB),
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n- addresses: [{ip: 10.200.0.1}, {ip: 10.200.0.4}]\n  notReadyAddresses: [{ip: 10.200.0.5}]\n  ports: [{name: http, port: 8080}]\n",
        slice("web-1", "web", THREE, "[{name: http, port: 8080}]")
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert_eq!(
        addrs(&p.state, &p.state.frontends[0]),
        [
            "10.200.0.1:8080",
            "10.200.0.2:8080",
            "10.200.0.3:8080",
            "10.200.0.4:8080"
        ]
    );
}

#[test]
fn slices_of_other_namespaces_or_services_are_not_used() {
    let objs = objects(&format!(
        "{}---\n{}---\n{}",
        svc("web", "10.96.0.10", WEB),
        slice("web-1", "api", THREE, "[{name: http, port: 8080}]"),
        slice("web-2", "web", THREE, "[{name: http, port: 8080}]")
            .replace("name: web-2", "name: web-2\n  namespace: other"),
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    assert!(p.state.frontends[0].backends.is_empty());
}

#[test]
fn a_frontend_two_services_claim_goes_to_the_first() {
    let objs = objects(&format!(
        "{}---\n{}",
        svc(
            "b",
            "10.96.0.11",
            "  externalIPs: [192.0.2.1]\n  ports: [{name: http, port: 80}]"
        ),
        svc(
            "a",
            "10.96.0.10",
            "  externalIPs: [192.0.2.1]\n  ports: [{name: http, port: 80}]"
        ),
    ));
    let p = plan(&objs, &mut IdAllocator::new());
    let external: Vec<&str> = p
        .state
        .frontends
        .iter()
        .filter(|f| f.addr.to_string() == "192.0.2.1")
        .map(|f| f.service.name.as_str())
        .collect();
    assert_eq!(external, ["a"]);
    assert_eq!(
        p.conflicts,
        [Conflict {
            kind: ConflictKind::Frontend,
            frontend: "192.0.2.1:80/TCP".into(),
            holder: "default/a".into(),
            loser: "default/b".into()
        }]
    );
    assert!(p.services[1]
        .problems
        .iter()
        .any(|m| m.contains("held by Service default/a")));
}

/// Kubernetes allocates a cluster IP to one Service: another port does not make a second
/// Service on it acceptable. Headless Services ("None") share nothing.
#[test]
fn a_cluster_ip_belongs_to_one_service_whatever_the_ports() {
    // One batch would be refused (`decode_all`); objects of two sources (the API and the
    // manifest directory) can still meet here.
    let mut objs = objects(&svc(
        "b",
        "10.96.0.10",
        "  ports: [{name: dns, port: 53, protocol: UDP}]",
    ));
    objs.extend(objects(&format!(
        "{}---\n{}---\n{}",
        svc("a", "10.96.0.10", WEB),
        svc("h1", "None", WEB),
        svc("h2", "None", WEB),
    )));
    let p = plan(&objs, &mut IdAllocator::new());
    let names: Vec<&str> = p
        .state
        .frontends
        .iter()
        .map(|f| f.service.name.as_str())
        .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(
        p.conflicts,
        [Conflict {
            kind: ConflictKind::ClusterIp,
            frontend: "10.96.0.10".into(),
            holder: "default/a".into(),
            loser: "default/b".into()
        }]
    );
    let b = p.services.iter().find(|v| v.name == "b").unwrap();
    assert!(b.frontends.is_empty());
    assert_eq!(
        b.problems,
        ["cluster IP 10.96.0.10 is allocated to Service default/a; this Service gets no frontend"]
    );
}

#[test]
fn ids_are_stable_across_restarts_and_input_order() {
    let mut objs = web();
    objs.extend(objects(&format!(
        "{}---\n{}",
        svc("api", "10.96.0.11", WEB),
        slice(
            "api-1",
            "api",
            "- {addresses: [10.200.0.7]}\n- {addresses: [10.200.0.1]}",
            "[{name: http, port: 8080}]"
        )
    )));
    let mut ids = IdAllocator::new();
    let first = plan(&objs, &mut ids);
    // The agent persists the allocator as JSON; a restarted agent restores it.
    let saved = serde_json::to_string(&ids.snapshot()).unwrap();
    let mut restored =
        IdAllocator::restore(&serde_json::from_str::<AllocatorSnapshot>(&saved).unwrap()).unwrap();
    objs.reverse();
    let again = plan(&objs, &mut restored);
    assert_eq!(again.state, first.state);
    assert_eq!(restored, ids);
    // A fresh allocator gives the same ids too: new keys are numbered in key order.
    assert_eq!(plan(&objs, &mut IdAllocator::new()).state, first.state);
}

#[test]
fn unrelated_changes_leave_ids_and_entries_alone() {
    let mut ids = IdAllocator::new();
    let before = plan(&web(), &mut ids);
    let mut objs = objects(&format!(
        "{}---\n{}",
        svc("aaa", "10.96.0.1", WEB),
        slice(
            "aaa-1",
            "aaa",
            "- {addresses: [10.200.0.100]}",
            "[{name: http, port: 8080}]"
        )
    ));
    objs.extend(web());
    let after = plan(&objs, &mut ids);
    let d = LbDiff::between(&before.state, &after.state);
    assert_eq!(d.frontends_added.len(), 1);
    assert_eq!(d.backends_added.len(), 1);
    assert_eq!(d.len(), 2, "{d:#?}");
    // Removing it again gives the first state back, ids included.
    let back = plan(&web(), &mut ids);
    assert_eq!(back.state, before.state);
}

#[test]
fn changing_one_backend_changes_only_it() {
    let mut ids = IdAllocator::new();
    let before = plan(&web(), &mut ids);
    let eps = "- {addresses: [10.200.0.1]}\n- {addresses: [10.200.0.2], conditions: {ready: false, serving: true, terminating: true}}\n- {addresses: [10.200.0.3]}";
    let objs = objects(&format!(
        "{}---\n{}",
        svc("web", "10.96.0.10", WEB),
        slice("web-1", "web", eps, "[{name: http, port: 8080}]")
    ));
    let after = plan(&objs, &mut ids);
    let d = LbDiff::between(&before.state, &after.state);
    assert_eq!(d.backends_changed.len(), 1);
    assert_eq!(d.backends_changed[0].state, BackendState::Terminating);
    assert_eq!(d.frontends_changed.len(), 1, "its slot goes");
    assert_eq!(d.frontends_changed[0].backends, [1, 3]);
    assert_eq!(d.len(), 2);
    assert_eq!(d.apply(&before.state), after.state);
    assert!(LbDiff::between(&after.state, &after.state).is_empty());
}

/// Many Services of the same shape, built directly (YAML would dominate the run time).
fn many(n: u32) -> Vec<Object> {
    let mut out = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        let name = format!("svc-{i}");
        let meta = |name: &str| ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            labels: Default::default(),
        };
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": Ipv4Addr::from(0x0a60_0000 + i).to_string(),
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let mut m = meta(&format!("{name}-1"));
        m.labels.insert(SERVICE_NAME_LABEL, name.clone());
        let endpoints = (0..3)
            .map(|j| SliceEndpoint {
                addresses: ciliate_model::k8s::Addresses::one(
                    Ipv4Addr::from(0x0ac8_0000 + i * 3 + j).to_string(),
                ),
                conditions: EndpointConditions::default(),
                node_name: Default::default(),
            })
            .collect();
        out.push(Object::Service(s));
        out.push(Object::EndpointSlice(EndpointSlice {
            metadata: m,
            address_type: AddressType::IPv4,
            endpoints,
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: L4Proto::Tcp,
                port: 8080,
            }],
        }));
    }
    out
}

#[test]
fn ten_thousand_services() {
    let objs = many(10_000);
    let mut ids = IdAllocator::new();
    let p = plan(&objs, &mut ids);
    assert_eq!(p.state.frontends.len(), 10_000);
    assert_eq!(p.state.backends.len(), 30_000);
    assert!(p.state.frontends.iter().all(|f| f.backends.len() == 3));
    // Recomputing with one Service less touches only its entries.
    let fewer: Vec<Object> = objs[2..].to_vec();
    let q = plan(&fewer, &mut ids);
    let d = LbDiff::between(&p.state, &q.state);
    assert_eq!(
        (d.frontends_removed.len(), d.backends_removed.len(), d.len()),
        (1, 3, 4)
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A small world: services 0..8 on ports 80/81, endpoints from a pool of 16 addresses
    /// with random conditions.
    fn world() -> impl Strategy<Value = Vec<Object>> {
        let ep = (
            0u8..16,
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            any::<Option<bool>>(),
        );
        let service = (0u8..8, prop::bool::ANY, prop::collection::vec(ep, 0..6));
        prop::collection::vec(service, 0..8).prop_map(|svcs| {
            let mut out = Vec::new();
            let mut seen = BTreeSet::new();
            for (n, two_ports, eps) in svcs {
                if !seen.insert(n) {
                    continue;
                }
                let name = format!("s{n}");
                let mut ports =
                    vec![serde_json::json!({"name": "a", "port": 80, "targetPort": 8080})];
                if two_ports {
                    ports.push(serde_json::json!({"name": "b", "port": 81, "targetPort": "web"}));
                }
                out.push(Object::Service(
                    serde_json::from_value(serde_json::json!({
                        "metadata": {"name": name, "namespace": "default"},
                        "spec": {"clusterIP": format!("10.96.0.{n}"), "ports": ports}
                    }))
                    .unwrap(),
                ));
                let mut labels = ciliate_model::k8s::StringMap::new();
                labels.insert(SERVICE_NAME_LABEL.to_owned(), name.clone());
                out.push(Object::EndpointSlice(EndpointSlice {
                    metadata: ObjectMeta {
                        name: format!("{name}-x").into(),
                        namespace: "default".into(),
                        labels,
                    },
                    address_type: AddressType::IPv4,
                    endpoints: eps
                        .into_iter()
                        .map(|(a, ready, serving, terminating)| SliceEndpoint {
                            addresses: ciliate_model::k8s::Addresses::one(format!("10.200.0.{a}")),
                            conditions: EndpointConditions {
                                ready,
                                serving,
                                terminating,
                            },
                            node_name: Default::default(),
                        })
                        .collect(),
                    ports: vec![
                        EndpointPort {
                            name: "a".into(),
                            protocol: L4Proto::Tcp,
                            port: 8080,
                        },
                        EndpointPort {
                            name: "web".into(),
                            protocol: L4Proto::Tcp,
                            port: 9000,
                        },
                    ],
                }));
            }
            out
        })
    }

    /// The world with every address under the conditions of its first endpoint, as
    /// Kubernetes reports one pod's conditions in every slice that lists it. (Where two slices
    /// disagree, the address is one backend with one state: see
    /// `an_address_two_slices_disagree_about_is_one_active_backend`.)
    fn one_condition_per_address(mut world: Vec<Object>) -> Vec<Object> {
        let mut first: BTreeMap<String, EndpointConditions> = BTreeMap::new();
        for o in &mut world {
            if let Object::EndpointSlice(s) = o {
                for e in &mut s.endpoints {
                    let c = first
                        .entry(e.addresses[0].to_string())
                        .or_insert(e.conditions);
                    e.conditions = *c;
                }
            }
        }
        world
    }

    fn check_invariants(s: &LbState) -> Result<(), TestCaseError> {
        let ids: BTreeSet<u32> = s.backends.iter().map(|b| b.id).collect();
        prop_assert_eq!(ids.len(), s.backends.len());
        prop_assert!(!ids.contains(&0));
        let rev: BTreeSet<u16> = s.frontends.iter().map(|f| f.rev_nat_index).collect();
        prop_assert_eq!(rev.len(), s.frontends.len());
        prop_assert!(!rev.contains(&0));
        for f in &s.frontends {
            for id in &f.backends {
                prop_assert!(ids.contains(id), "slot points at a missing backend");
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn ids_survive_restarts_and_unrelated_changes(a in world(), b in world()) {
            let mut ids = IdAllocator::new();
            let pa = plan(&a, &mut ids);
            check_invariants(&pa.state)?;
            // A restart: the same input from the persisted allocator gives the same state.
            let mut restored = IdAllocator::restore(&ids.snapshot()).unwrap();
            let mut reversed = a.clone();
            reversed.reverse();
            prop_assert_eq!(&plan(&reversed, &mut restored).state, &pa.state);

            // Moving to another world keeps the id of every key that stays.
            let pb = plan(&b, &mut ids);
            check_invariants(&pb.state)?;
            for bb in &pb.state.backends {
                if let Some(ba) = pa.state.backends.iter().find(|x| (x.addr, x.port, x.proto) == (bb.addr, bb.port, bb.proto)) {
                    prop_assert_eq!(ba.id, bb.id);
                }
            }
            for fb in &pb.state.frontends {
                if let Some(fa) = pa.state.frontends.iter().find(|x| diff::frontend_key(x) == diff::frontend_key(fb)) {
                    prop_assert_eq!(fa.rev_nat_index, fb.rev_nat_index);
                }
            }

            // The diff is exact and minimal.
            let d = LbDiff::between(&pa.state, &pb.state);
            prop_assert_eq!(d.apply(&pa.state), pb.state.clone());
            for f in &d.frontends_changed {
                prop_assert!(!pa.state.frontends.contains(f));
            }
            for x in &d.backends_changed {
                prop_assert!(!pa.state.backends.contains(x));
            }
            prop_assert!(LbDiff::between(&pb.state, &pb.state).is_empty());
        }

        #[test]
        fn active_backends_are_preferred(a in world().prop_map(one_condition_per_address)) {
            let p = plan(&a, &mut IdAllocator::new());
            for f in &p.state.frontends {
                let states: BTreeSet<BackendState> = f.backends.iter()
                    .map(|id| p.state.backends.iter().find(|b| b.id == *id).unwrap().state)
                    .collect();
                prop_assert!(states.len() <= 1, "slots never mix active and terminating");
            }
        }
    }
}
