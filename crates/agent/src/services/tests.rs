use std::path::Path;

use ciliate_datapath::FakeDatapath;
use ciliate_model::lb::{BackendState, FrontendKind};
use ciliate_model::manifest::split_documents;

use super::*;

fn settings(dir: Option<&Path>) -> ServiceSettings {
    ServiceSettings {
        node_name: "node-a".into(),
        node_ips: vec![Ipv4Addr::new(192, 168, 1, 10)],
        manifest_dir: dir.map(Path::to_owned),
        kubernetes: false,
    }
}

fn open(state: &Path, dir: Option<&Path>, dp: &Arc<FakeDatapath>) -> ServiceManager {
    ServiceManager::open(settings(dir), state, Arc::clone(dp) as Arc<dyn Datapath>).expect("opens")
}

fn request(source: &str, yaml: &str, delete: bool) -> ApplyRequest {
    ApplyRequest {
        documents: split_documents(source, yaml).expect("YAML"),
        delete,
    }
}

fn svc(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

fn slice(service: &str, addrs: &[&str]) -> String {
    let eps: String = addrs
        .iter()
        .map(|a| format!("- addresses: [{a}]\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-abc\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
    )
}

fn web() -> String {
    format!(
        "{}---\n{}",
        svc("web", "10.96.0.10"),
        slice("web", &["10.200.0.1", "10.200.0.2", "10.200.0.3"])
    )
}

fn lines(r: &ApplyResult) -> Vec<String> {
    r.results.iter().map(ToString::to_string).collect()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/services")
}

#[test]
fn apply_creates_configures_and_leaves_unchanged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), None, &dp);
    let r = m
        .apply(&request("web.yaml", &web(), false))
        .expect("applies");
    assert_eq!(
        lines(&r),
        ["service/web created", "endpointslice/web-abc created"]
    );
    assert!(r.warnings.is_empty());
    let lb = dp.lb_state().expect("state");
    assert_eq!(lb.frontends.len(), 1);
    assert_eq!(lb.frontends[0].backends.len(), 3);

    let syncs = dp.lb_syncs();
    let r = m
        .apply(&request("web.yaml", &web(), false))
        .expect("applies");
    assert_eq!(
        lines(&r),
        ["service/web unchanged", "endpointslice/web-abc unchanged"]
    );
    assert_eq!(dp.lb_syncs(), syncs, "nothing changed: no sync");

    let r = m
        .apply(&request(
            "s.yaml",
            &slice("web", &["10.200.0.1", "10.200.0.4"]),
            false,
        ))
        .expect("applies");
    assert_eq!(lines(&r), ["endpointslice/web-abc configured"]);
    let v = m.get("default", "web").expect("exists");
    let backends: Vec<String> = v.frontends[0]
        .backends
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(backends, ["10.200.0.1:8080", "10.200.0.4:8080"]);
    assert_eq!(v.source, API_SOURCE);
    // 10.200.0.1 kept its id; 10.200.0.4 got a new one, not the freed ids 2 or 3.
    assert_eq!(v.frontends[0].backends[0].id, 1);
    assert_eq!(v.frontends[0].backends[1].id, 4);
    let s = m.status();
    assert_eq!((s.services, s.backends), (1, 2));
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

#[test]
fn an_invalid_batch_applies_nothing_and_says_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), None, &dp);
    let bad = format!(
        "{}---\n{}---\n{}",
        svc("ok", "10.96.0.11"),
        svc("web", "10.96.0.10").replace("port: 80,", "port: 70000,"),
        svc("Bad", "10.96.0.300")
    );
    let err = m
        .apply(&request("services.yaml", &bad, false))
        .expect_err("invalid");
    assert_eq!(err.kind(), "invalid");
    let text = err.to_string();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("3 problems in the manifests; nothing was applied:")
    );
    assert_eq!(
        lines.next(),
        Some("  services.yaml: document 2 (Service default/web): spec.ports[0].port: invalid value 70000: must be 1-65535")
    );
    assert!(
        text.contains("document 3 (Service default/Bad): metadata.name"),
        "{text}"
    );
    assert!(
        text.contains("document 3 (Service default/Bad): spec.clusterIP"),
        "{text}"
    );
    assert!(m.list().is_empty(), "not even the valid Service");
    assert!(dp.lb_state().expect("state").frontends.is_empty());
}

#[test]
fn a_cluster_ip_taken_by_another_service_is_refused_whatever_the_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), None, &dp);
    m.apply(&request("web.yaml", &web(), false))
        .expect("applies");
    let another_port = svc("other", "10.96.0.10").replace("port: 80,", "port: 81,");
    for (doc, what) in [
        (svc("other", "10.96.0.10"), "same VIP and port"),
        (another_port, "same VIP, another port"),
    ] {
        let err = m
            .apply(&request("other.yaml", &doc, false))
            .expect_err(what);
        assert!(
            err.to_string().contains(
                "other.yaml: document 1 (Service default/other): spec.clusterIP: invalid value \"10.96.0.10\": the cluster IP is already allocated to Service default/web"
            ),
            "{what}: {err}"
        );
        assert_eq!(m.list().len(), 1);
    }
    // The same Service may change its ports on its own cluster IP.
    let moved = svc("web", "10.96.0.10").replace("port: 80,", "port: 81,");
    m.apply(&request("web.yaml", &moved, false))
        .expect("its own cluster IP");
}

#[test]
fn delete_removes_and_reports_what_was_not_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), None, &dp);
    m.apply(&request("web.yaml", &web(), false))
        .expect("applies");
    // Deleting needs only the identity: a manifest that no longer validates still works.
    let r = m
        .apply(&request(
            "web.yaml",
            &format!("{}---\n{}", svc("web", "bogus"), svc("gone", "10.96.0.99")),
            true,
        ))
        .expect("deletes");
    assert_eq!(lines(&r), ["service/web deleted", "service/gone not found"]);
    assert!(m.list().is_empty());
    // The slice alone stays, and its backends with it are no longer programmed.
    assert!(dp.lb_state().expect("state").backends.is_empty());
}

#[test]
fn a_restart_keeps_objects_and_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let before = {
        let m = open(tmp.path(), None, &dp);
        m.apply(&request(
            "a.yaml",
            &format!(
                "{}---\n{}",
                svc("aaa", "10.96.0.5"),
                slice("aaa", &["10.200.0.9"])
            ),
            false,
        ))
        .expect("applies");
        m.apply(&request("web.yaml", &web(), false))
            .expect("applies");
        m.apply(&request("a.yaml", &svc("aaa", "10.96.0.5"), true))
            .expect("deletes");
        dp.lb_state().expect("state")
    };
    // After a reboot (a new, empty datapath: no conntrack entry names an id any more) the
    // restarted store programs the same Services, with ids afresh.
    let dp2 = Arc::new(FakeDatapath::new());
    drop(open(tmp.path(), None, &dp2));
    let rebooted = dp2.lb_state().expect("state");
    assert_eq!(rebooted.frontends.len(), before.frontends.len());
    assert_eq!(
        rebooted.backends.iter().map(|b| b.addr).collect::<Vec<_>>(),
        before.backends.iter().map(|b| b.addr).collect::<Vec<_>>()
    );
    // An agent restart (the pinned maps stay) keeps every id: read back from the maps.
    let m = open(tmp.path(), None, &dp);
    assert_eq!(dp.lb_state().expect("state"), before);
    assert_eq!(m.list().len(), 1);
    // The ids freed before the restart are still not handed out first.
    m.apply(&request(
        "b.yaml",
        &format!(
            "{}---\n{}",
            svc("bbb", "10.96.0.6"),
            slice("bbb", &["10.200.0.8"])
        ),
        false,
    ))
    .expect("applies");
    let b = m.get("default", "bbb").expect("exists");
    assert!(b.frontends[0].rev_nat_index > 2, "{b:?}");
    assert!(b.frontends[0].backends[0].id > 4, "{b:?}");
}

#[test]
fn a_failed_sync_keeps_the_objects_and_is_retried() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), None, &dp);
    dp.fail_lb_sync(Some("map full"));
    let r = m
        .apply(&request("web.yaml", &web(), false))
        .expect("applied anyway");
    assert!(r.warnings[0].contains("map full"), "{:?}", r.warnings);
    assert_eq!(m.list().len(), 1);
    let s = m.status();
    assert!(
        s.problems[0]
            .contains("cannot program the Services into the datapath: injected failure: map full"),
        "{:?}",
        s.problems
    );
    m.tick();
    assert!(
        dp.lb_state().expect("state").frontends.is_empty(),
        "still failing"
    );
    dp.fail_lb_sync(None);
    m.tick();
    assert_eq!(dp.lb_state().expect("state").frontends.len(), 1);
    assert!(m.status().problems.is_empty());
    let syncs = dp.lb_syncs();
    m.tick();
    assert_eq!(
        dp.lb_syncs(),
        syncs,
        "in sync: the poll does not sync again"
    );
}

#[test]
fn the_manifest_directory_is_a_batch_with_a_last_good_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("web.yaml"), web()).expect("write");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(&state, Some(&dir), &dp);
    let v = m.get("default", "web").expect("read at start");
    assert!(v.source.ends_with("web.yaml"), "{}", v.source);
    assert_eq!(dp.lb_state().expect("state").frontends.len(), 1);

    // The API cannot change what the directory defines.
    let err = m
        .apply(&request("x.yaml", &svc("web", "10.96.0.10"), false))
        .expect_err("owned");
    assert!(
        err.to_string()
            .contains("managed by the manifest directory"),
        "{err}"
    );

    // A second file joins the set.
    std::fs::write(
        dir.join("api.json"),
        serde_json::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
        }))
        .expect("json"),
    )
    .expect("write");
    assert!(m.reload_dir());
    m.sync().expect("syncs");
    assert_eq!(m.list().len(), 2);
    assert!(!m.reload_dir(), "unchanged directory: not read again");

    // A broken file keeps the last good set in force, and says so.
    std::fs::write(
        dir.join("web.yaml"),
        web().replace("port: 80,", "port: 70000,"),
    )
    .expect("write");
    assert!(!m.reload_dir());
    assert_eq!(m.list().len(), 2);
    let problems = m.status().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("manifest directory: "),
        "{problems:?}"
    );
    assert!(
        problems[0].contains(
            "web.yaml: document 1 (Service default/web): spec.ports[0].port: invalid value 70000"
        ),
        "{problems:?}"
    );

    // So does a restart while the directory is broken: the last good set was persisted.
    drop(m);
    let dp2 = Arc::new(FakeDatapath::new());
    let m = open(&state, Some(&dir), &dp2);
    assert_eq!(m.list().len(), 2);
    assert_eq!(
        dp2.lb_state().expect("state"),
        dp.lb_state().expect("state")
    );
    assert_eq!(m.status().problems.len(), 1);

    // Fixing the file and removing the other applies the new set as one batch.
    std::fs::write(dir.join("web.yaml"), web()).expect("write");
    std::fs::remove_file(dir.join("api.json")).expect("rm");
    m.tick();
    assert_eq!(m.list().len(), 1);
    assert!(m.status().problems.is_empty());
    assert_eq!(dp2.lb_state().expect("state").frontends.len(), 1);
}

#[test]
fn the_examples_directory_programs_every_kind_of_service() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), Some(&examples()), &dp);
    let names: Vec<String> = m.list().iter().map(ServiceView::full_name).collect();
    assert_eq!(
        names,
        ["default/echo", "default/web", "shop/api", "shop/cart"]
    );
    assert!(m.status().problems.is_empty(), "{:?}", m.status().problems);

    let web = m.get("default", "web").expect("web");
    assert_eq!(web.frontends.len(), 1);
    assert_eq!(web.frontends[0].backends.len(), 3);

    let api = m.get("shop", "api").expect("api");
    let http = api.frontends.iter().find(|f| f.port == 80).expect("http");
    let states: Vec<(String, BackendState)> = http
        .backends
        .iter()
        .map(|b| (b.to_string(), b.state))
        .collect();
    assert_eq!(
        states,
        [
            ("10.200.0.21:9090".to_owned(), BackendState::Active),
            ("10.200.0.22:9090".to_owned(), BackendState::Terminating)
        ],
        "the named targetPort resolves to 9090"
    );

    let cart = m.get("shop", "cart").expect("cart");
    assert_eq!(cart.affinity_timeout, Some(600));
    assert_eq!(
        cart.frontends[0].backends.len(),
        2,
        "the not-ready address is left out"
    );

    let echo = m.get("default", "echo").expect("echo");
    let node_ports: Vec<String> = echo
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::NodePort)
        .map(|f| f.address())
        .collect();
    assert_eq!(
        node_ports,
        ["192.168.1.10:30080/TCP", "192.168.1.10:30080/UDP"]
    );
    assert_eq!(
        m.status().backends,
        dp.lb_state().expect("state").backends.len()
    );
}

#[test]
fn a_corrupt_store_names_its_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("services.json"), b"{\"version\": 1, \"api\": [{\"source\": \"x\", \"index\": 1, \"object\": {\"kind\": \"Nope\"}}]}").expect("write");
    let err = ServiceManager::open(settings(None), tmp.path(), Arc::new(FakeDatapath::new()))
        .expect_err("inconsistent");
    let text = err.to_string();
    assert!(text.contains("services.json is inconsistent"), "{text}");
    assert!(text.contains("apiVersion: required value"), "{text}");
}

fn object(yaml: &str) -> Object {
    let docs = split_documents("k8s", yaml).expect("YAML");
    decode_all(&docs).expect("valid").remove(0).object
}

fn k8s_settings() -> ServiceSettings {
    ServiceSettings {
        kubernetes: true,
        ..settings(None)
    }
}

#[test]
fn the_kubernetes_source_lists_then_watches_and_gc_waits_for_every_kind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    // A Service a previous run programmed (here through the API, whose journal is then
    // forgotten): it stays in the maps until Kubernetes has listed every kind.
    drop(open(tmp.path(), None, &dp).apply(&request("old.yaml", &svc("old", "10.96.0.99"), false)));
    std::fs::remove_dir_all(tmp.path().join(OBJECTS_DIR)).expect("forget the API's objects");
    let m = ServiceManager::open(
        k8s_settings(),
        tmp.path(),
        Arc::clone(&dp) as Arc<dyn Datapath>,
    )
    .expect("opens");
    assert_eq!(
        dp.lb_state().expect("state").frontends.len(),
        1,
        "kept while listing"
    );
    assert!(m
        .status()
        .problems
        .iter()
        .any(|p| p.contains("waiting for the Kubernetes API")));

    m.kubernetes_event(SourceEvent::Init(Kind::Service));
    m.kubernetes_event(SourceEvent::InitApply(object(&svc("web", "10.96.0.10"))));
    m.kubernetes_event(SourceEvent::InitDone(Kind::Service));
    m.kubernetes_event(SourceEvent::Init(Kind::EndpointSlice));
    m.kubernetes_event(SourceEvent::InitApply(object(&slice(
        "web",
        &["10.200.0.1"],
    ))));
    m.kubernetes_event(SourceEvent::InitDone(Kind::EndpointSlice));
    let state = dp.lb_state().expect("state");
    assert_eq!(
        state.frontends.len(),
        2,
        "the stale one stays until Namespaces are listed too"
    );
    m.kubernetes_event(SourceEvent::Init(Kind::Namespace));
    m.kubernetes_event(SourceEvent::InitDone(Kind::Namespace));
    let state = dp.lb_state().expect("state");
    assert_eq!(state.frontends.len(), 1, "{state:?}");
    assert_eq!(state.frontends[0].service.name, "web");
    assert!(m.status().problems.is_empty(), "{:?}", m.status().problems);
    assert_eq!(
        m.get("default", "web").expect("listed").source,
        KUBERNETES_SOURCE
    );

    // Watch events: one backend more, then the Service deleted.
    m.kubernetes_event(SourceEvent::Apply(object(&slice(
        "web",
        &["10.200.0.1", "10.200.0.2"],
    ))));
    assert_eq!(dp.lb_state().expect("state").frontends[0].backends.len(), 2);
    // The API cannot change what Kubernetes owns.
    let e = m
        .apply(&request("web.yaml", &svc("web", "10.96.0.10"), false))
        .expect_err("owned by Kubernetes");
    assert!(
        e.to_string().contains("managed by the Kubernetes API"),
        "{e}"
    );
    // A relist without the Service (deleted while the watch was broken) removes it.
    m.kubernetes_event(SourceEvent::Init(Kind::Service));
    m.kubernetes_event(SourceEvent::InitDone(Kind::Service));
    assert!(dp.lb_state().expect("state").frontends.is_empty());
    assert!(m.list().is_empty());
    // Nothing of Kubernetes' is persisted.
    let journal =
        std::fs::read_to_string(tmp.path().join(OBJECTS_DIR).join("api.jsonl")).unwrap_or_default();
    assert!(!journal.contains("web"), "{journal}");
}

#[test]
fn a_change_appends_one_record_whatever_the_number_of_services() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), None, &dp);
    let many: String = (0..200)
        .map(|i| svc(&format!("s{i}"), &format!("10.96.1.{}", i % 250)))
        .collect::<Vec<_>>()
        .join("---\n");
    m.apply(&request("many.yaml", &many, false))
        .expect("applies");
    let path = tmp.path().join(OBJECTS_DIR).join("api.jsonl");
    let before = std::fs::metadata(&path).expect("journal").len();
    m.apply(&request("web.yaml", &web(), false))
        .expect("applies");
    let grown = std::fs::metadata(&path).expect("journal").len() - before;
    assert!(
        grown < 2_000,
        "one Service and one slice appended, not the whole set: {grown} bytes"
    );
    // And a restart reads them all back.
    drop(m);
    let m = open(tmp.path(), None, &dp);
    assert_eq!(m.list().len(), 201);
}

#[test]
fn an_older_agents_services_json_is_moved_to_the_journals() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let doc = ApplyDocument {
        source: "web.yaml".into(),
        index: 1,
        object: serde_json::to_value(serde_yaml_like(&svc("web", "10.96.0.10"))).expect("json"),
    };
    let old = store::PersistedServices {
        version: store::SERVICES_VERSION,
        api: vec![doc],
        ..Default::default()
    };
    std::fs::write(
        tmp.path().join(store::SERVICES_FILE),
        serde_json::to_vec(&old).expect("json"),
    )
    .expect("write");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), None, &dp);
    assert_eq!(m.list().len(), 1);
    assert!(!tmp.path().join(store::SERVICES_FILE).exists());
    drop(m);
    let m = open(tmp.path(), None, &dp);
    assert_eq!(m.list().len(), 1, "kept in the journal");
}

fn serde_yaml_like(yaml: &str) -> serde_json::Value {
    split_documents("x", yaml).expect("YAML").remove(0).object
}

mod sources {
    //! The table of sources against a model: whatever the order of events, the object in
    //! force for a key is the first source's that holds it, and the load-balancing state is
    //! what `compute` makes of the objects in force; a source that drops everything (a relist
    //! with nothing) takes only its own objects away.

    use super::*;
    use ciliate_lb::compute;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Put(Source, u8, u8),
        Del(Source, u8),
        Clear(Source),
    }

    fn source() -> impl Strategy<Value = Source> {
        prop_oneof![
            Just(Source::ManifestDir),
            Just(Source::Kubernetes),
            Just(Source::Api)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (source(), 0u8..4, 0u8..3).prop_map(|(s, k, v)| Op::Put(s, k, v)),
            2 => (source(), 0u8..4).prop_map(|(s, k)| Op::Del(s, k)),
            1 => source().prop_map(Op::Clear),
        ]
    }

    /// Object `k` in version `v`: even keys are Services (version = cluster IP), odd keys
    /// their slices (version = backend).
    fn object(k: u8, v: u8) -> Object {
        let yaml = if k.is_multiple_of(2) {
            svc(&format!("s{}", k / 2), &format!("10.96.0.{}", v + 1))
        } else {
            slice(&format!("s{}", k / 2), &[&format!("10.200.0.{}", v + 1)])
        };
        decode_all(&split_documents("t", &yaml).expect("YAML"))
            .expect("valid")
            .remove(0)
            .object
    }

    fn tables() -> Tables {
        Tables {
            rows: Default::default(),
            balancer: Balancer::new(
                Node {
                    name: "node-a".into(),
                    addresses: vec![],
                },
                IdAllocator::new(),
            ),
            pending: HashMap::new(),
            k8s_listed: BTreeSet::new(),
            listing: BTreeSet::new(),
            opening: false,
        }
    }

    fn shape(s: &ciliate_model::lb::LbState) -> Vec<(String, Vec<String>)> {
        s.frontends
            .iter()
            .map(|f| {
                let backends = f
                    .backends
                    .iter()
                    .filter_map(|id| s.backends.iter().find(|b| b.id == *id))
                    .map(|b| format!("{}:{}", b.addr, b.port))
                    .collect();
                (format!("{}:{}", f.addr, f.port), backends)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn any_interleaving_ends_in_the_models_objects(ops in prop::collection::vec(op(), 1..40)) {
            let mut t = tables();
            // The model: per source, key → version.
            let mut model: BTreeMap<Source, BTreeMap<u8, u8>> = BTreeMap::new();
            for op in ops {
                let rows: Vec<(ObjectKey, Option<Stored>)>;
                let src;
                match op {
                    Op::Put(s, k, v) => {
                        model.entry(s).or_default().insert(k, v);
                        let o = object(k, v);
                        rows = vec![(o.key(), Some(Stored { object: Arc::new(o), source: Arc::new("t".to_owned()), index: 1 }))];
                        src = s;
                    }
                    Op::Del(s, k) => {
                        model.entry(s).or_default().remove(&k);
                        rows = vec![(object(k, 0).key(), None)];
                        src = s;
                    }
                    Op::Clear(s) => {
                        model.remove(&s);
                        rows = t.rows[s.index()].iter().map(|r| (r.object.key(), None)).collect();
                        src = s;
                    }
                }
                let (changes, _) = t.set_rows(src, rows);
                t.balancer.apply(changes).expect("fits");
                // In force: the first source (by precedence) holding each key.
                let mut expected: BTreeMap<u8, u8> = BTreeMap::new();
                for s in Source::ALL.into_iter().rev() {
                    expected.extend(model.get(&s).into_iter().flatten().map(|(k, v)| (*k, *v)));
                }
                for k in 0u8..4 {
                    let got = t.effective(&object(k, 0).key()).map(|(_, r)| Arc::clone(&r.object));
                    let want = expected.get(&k).map(|v| object(k, *v));
                    prop_assert_eq!(got.as_deref(), want.as_ref());
                }
                let objects: Vec<Object> = expected.iter().map(|(k, v)| object(*k, *v)).collect();
                let full = compute(&objects, t.balancer.node(), &mut IdAllocator::new()).expect("fits");
                prop_assert_eq!(shape(&t.balancer.state()), shape(&full.state));
            }
        }
    }
}

#[test]
fn status_names_api_objects_another_source_shadows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = ServiceManager::open(
        ServiceSettings {
            kubernetes: true,
            ..settings(Some(&dir))
        },
        &state,
        Arc::clone(&dp) as Arc<dyn Datapath>,
    )
    .expect("opens");
    // Three Services through the API, none shadowed yet.
    let three = format!(
        "{}---\n{}---\n{}",
        svc("web", "10.96.0.10"),
        svc("api", "10.96.0.20"),
        svc("db", "10.96.0.30")
    );
    m.apply(&request("three.yaml", &three, false))
        .expect("applies");
    let shadowed = |m: &ServiceManager| -> Vec<String> {
        m.status()
            .problems
            .into_iter()
            .filter(|p| p.contains("defined both through the API"))
            .collect()
    };
    assert!(shadowed(&m).is_empty());
    // The directory defines web, Kubernetes api and web: one problem each for web (the
    // file's copy in force) and api (Kubernetes'); db is the API's alone.
    std::fs::write(dir.join("web.yaml"), svc("web", "10.96.0.10")).expect("write");
    assert!(m.reload_dir());
    m.kubernetes_event(SourceEvent::Init(Kind::Service));
    m.kubernetes_event(SourceEvent::InitApply(object(&svc("api", "10.96.0.20"))));
    m.kubernetes_event(SourceEvent::InitApply(object(&svc("web", "10.96.0.10"))));
    m.kubernetes_event(SourceEvent::InitDone(Kind::Service));
    let problems = shadowed(&m);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("Service default/api is defined both through the API and in Kubernetes"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("Service default/web is defined both through the API and by ")
            && problems[1].contains("web.yaml; the file's copy is in force"),
        "{problems:?}"
    );
}
