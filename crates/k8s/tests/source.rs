//! The source against a scripted API server (kube's `Client` over a mock service): lists,
//! watches from the list's resourceVersion, bookmarks, 410 Gone, broken streams, CRDs.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use ciliate_k8s::{spawn, Backoff, Document, Options, ResourceKind, Source, SourceEvent};
use ciliate_model::policy::CiliumNetworkPolicy;
use common::{fixture, list, pair, pod, pod_item, PATIENCE};
use serde_json::{json, Value};

const PODS: &str = "/api/v1/pods";

fn options(kinds: &[ResourceKind]) -> Options {
    Options {
        kinds: kinds.to_vec(),
        node_name: None,
        // No waiting after errors: every step of these tests is driven by the script.
        backoff: Backoff::Fixed(Duration::ZERO),
        channel_capacity: 64,
    }
}

async fn recv(source: &mut Source) -> SourceEvent {
    tokio::time::timeout(PATIENCE, source.events.recv())
        .await
        .expect("the source sent nothing")
        .expect("the source stopped")
}

async fn recv_doc(source: &mut Source) -> (&'static str, Document) {
    match recv(source).await {
        SourceEvent::InitApply(d) => ("InitApply", d),
        SourceEvent::Apply(d) => ("Apply", d),
        SourceEvent::Delete(d) => ("Delete", d),
        other => panic!("an object event was due, got {other:?}"),
    }
}

/// A consumer following the contract of `SourceEvent`: the set is replaced on `InitDone`.
#[derive(Default)]
struct Consumer {
    current: BTreeMap<String, Value>,
    pending: Option<BTreeMap<String, Value>>,
}

impl Consumer {
    fn apply(&mut self, event: SourceEvent) {
        let key = |d: &Document| format!("{}/{}", d.namespace().unwrap_or_default(), d.name());
        match event {
            SourceEvent::Init(_) => self.pending = Some(BTreeMap::new()),
            SourceEvent::InitApply(d) => {
                let pending = self.pending.as_mut().expect("InitApply after Init");
                pending.insert(key(&d), d.object);
            }
            SourceEvent::InitDone(_) => {
                self.current = self.pending.take().expect("InitDone after Init");
            }
            SourceEvent::Apply(d) => {
                self.current.insert(key(&d), d.object);
            }
            SourceEvent::Delete(d) => {
                self.current.remove(&key(&d));
            }
        }
    }

    fn names(&self) -> Vec<&str> {
        self.current.keys().map(String::as_str).collect()
    }
}

#[tokio::test]
async fn list_then_watch_from_the_lists_resource_version_with_bookmarks() {
    let (client, mut api) = pair();
    let mut opts = options(&[ResourceKind::Pod]);
    opts.node_name = Some("node-a".into());
    let mut source = spawn(client, opts);

    // The list: only this node's pods, paged.
    let call = api.expect_list(PODS).await;
    assert_eq!(
        call.query.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-a")
    );
    assert_eq!(call.query.get("limit").map(String::as_str), Some("500"));
    call.json(200, &fixture("pod-list.json"));

    assert_eq!(
        recv(&mut source).await,
        SourceEvent::Init(ResourceKind::Pod)
    );
    let (what, web) = recv_doc(&mut source).await;
    assert_eq!(what, "InitApply");
    assert_eq!(web.describe(), "Pod prod/web-6d4cf56db6-2xk8p");
    // List items come without apiVersion/kind; bookkeeping that only costs memory is gone.
    assert_eq!(web.object["apiVersion"], "v1");
    assert_eq!(web.object["kind"], "Pod");
    assert!(web.object["metadata"].get("managedFields").is_none());
    assert!(web.object["metadata"].get("annotations").is_none());
    assert_eq!(web.uid(), Some("0b9a7c1e-3f5d-4c63-9f1e-5a3b2c1d0e01"));
    assert_eq!(web.resource_version(), Some("4711"));
    assert_eq!(
        web.object["metadata"]["ownerReferences"][0]["kind"],
        "ReplicaSet"
    );
    let (what, db) = recv_doc(&mut source).await;
    assert_eq!((what, db.name()), ("InitApply", "db-0"));
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::InitDone(ResourceKind::Pod)
    );
    assert!(source.stats.kind(ResourceKind::Pod).listed);

    // The watch starts at the list's resourceVersion, asks for bookmarks, keeps the selector.
    let call = api.expect_watch(PODS, "4821").await;
    assert_eq!(
        call.query.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        call.query.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-a")
    );
    assert_eq!(
        call.query.get("timeoutSeconds").map(String::as_str),
        Some("290")
    );
    let watch = call.watch();
    watch.event("ADDED", &pod("cache-1", "4830", "10.0.1.30"));
    let (what, added) = recv_doc(&mut source).await;
    assert_eq!((what, added.name()), ("Apply", "cache-1"));
    assert_eq!(added.object["status"]["podIP"], "10.0.1.30");
    watch.event("MODIFIED", &pod("cache-1", "4840", "10.0.1.31"));
    let (what, modified) = recv_doc(&mut source).await;
    assert_eq!((what, modified.resource_version()), ("Apply", Some("4840")));

    // A bookmark moves the resourceVersion on and sends nothing: when the API server ends the
    // stream, the watch resumes from the bookmark, and nothing came out in between.
    watch.bookmark("v1", "Pod", "4900");
    watch.end();
    let call = api.expect_watch(PODS, "4900").await;
    assert!(
        source.events.try_recv().is_err(),
        "the bookmark produced an event"
    );
    let watch = call.watch();
    watch.event("DELETED", &pod("cache-1", "4910", "10.0.1.31"));
    let (what, deleted) = recv_doc(&mut source).await;
    assert_eq!((what, deleted.name()), ("Delete", "cache-1"));

    let stats = source.stats.kind(ResourceKind::Pod);
    assert_eq!((stats.events, stats.relists, stats.errors), (5, 0, 0));
    source.task.abort();
}

#[tokio::test]
async fn a_broken_stream_resumes_and_410_gone_relists_without_the_objects_deleted_meanwhile() {
    let (client, mut api) = pair();
    let mut source = spawn(client, options(&[ResourceKind::Pod]));
    let mut consumer = Consumer::default();

    api.expect_list(PODS).await.json(
        200,
        &list(
            "v1",
            "Pod",
            "100",
            vec![
                pod_item("a", "90", "10.0.1.10"),
                pod_item("b", "95", "10.0.1.11"),
            ],
        ),
    );
    for _ in 0..4 {
        consumer.apply(recv(&mut source).await);
    }
    assert_eq!(consumer.names(), ["prod/a", "prod/b"]);

    let watch = api.expect_watch(PODS, "100").await.watch();
    watch.event("MODIFIED", &pod("a", "120", "10.0.1.10"));
    consumer.apply(recv(&mut source).await);
    // The connection drops in the middle of the next event's line.
    watch.raw(br#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"#);
    watch.break_connection();

    // The watch resumes from the last resourceVersion seen, without a list...
    let watch = api.expect_watch(PODS, "120").await.watch();
    // ...which the API server no longer has (b was deleted meanwhile, and history compacted).
    watch.gone("120", "250");

    // So the source lists again, and reports the relist in full.
    api.expect_list(PODS).await.json(
        200,
        &list("v1", "Pod", "300", vec![pod_item("a", "120", "10.0.1.10")]),
    );
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::Init(ResourceKind::Pod)
    );
    assert_eq!(
        consumer.names(),
        ["prod/a", "prod/b"],
        "kept until the relist is complete"
    );
    let (what, a) = recv_doc(&mut source).await;
    assert_eq!((what, a.name()), ("InitApply", "a"));
    consumer.apply(SourceEvent::Init(ResourceKind::Pod));
    consumer.apply(SourceEvent::InitApply(a));
    consumer.apply(recv(&mut source).await);
    assert_eq!(
        consumer.names(),
        ["prod/a"],
        "b, deleted while disconnected, is gone"
    );

    api.expect_watch(PODS, "300").await.watch();
    let stats = source.stats.kind(ResourceKind::Pod);
    assert_eq!(stats.relists, 1);
    assert_eq!(stats.errors, 2, "the broken stream and the 410");
    assert!(stats.listed);
    source.task.abort();
}

#[tokio::test]
async fn a_failed_list_is_retried() {
    let (client, mut api) = pair();
    let mut source = spawn(client, options(&[ResourceKind::Namespace]));
    api.expect_list("/api/v1/namespaces").await.json(
        500,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
    );
    api.expect_list("/api/v1/namespaces").await.json(
        200,
        &list(
            "v1",
            "Namespace",
            "77",
            vec![json!({"metadata": {"name": "prod", "uid": "ns-1",
            "resourceVersion": "12", "labels": {"kubernetes.io/metadata.name": "prod"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})],
        ),
    );
    // A list that failed before any item is not half-reported: Init starts again.
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::Init(ResourceKind::Namespace)
    );
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::Init(ResourceKind::Namespace)
    );
    let (_, ns) = recv_doc(&mut source).await;
    assert_eq!(ns.describe(), "Namespace prod");
    assert_eq!(ns.object["apiVersion"], "v1");
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::InitDone(ResourceKind::Namespace)
    );
    let stats = source.stats.kind(ResourceKind::Namespace);
    assert_eq!((stats.errors, stats.relists), (1, 1));
    let last = stats.last_error.expect("the error is kept");
    assert!(last.contains("etcdserver: request timed out"), "{last}");
    source.task.abort();
}

#[tokio::test]
async fn a_paged_list_is_followed_to_its_end() {
    let (client, mut api) = pair();
    let mut source = spawn(client, options(&[ResourceKind::Service]));
    let svc = |name: &str| {
        json!({"metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"), "resourceVersion": "40"},
               "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                        "selector": {"app": name}, "sessionAffinity": "None",
                        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
               "status": {"loadBalancer": {}}})
    };
    let call = api.expect_list("/api/v1/services").await;
    assert!(!call.query.contains_key("continue"));
    let mut first = list("v1", "Service", "61", vec![svc("web"), svc("api")]);
    first["metadata"]["continue"] =
        json!("eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NjEsInN0YXJ0Ijoid2ViXHUwMDAwIn0");
    first["metadata"]["remainingItemCount"] = json!(1);
    call.json(200, &first);
    let call = api.expect_list("/api/v1/services").await;
    assert_eq!(
        call.query.get("continue").map(String::as_str),
        Some("eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NjEsInN0YXJ0Ijoid2ViXHUwMDAwIn0")
    );
    call.json(200, &list("v1", "Service", "61", vec![svc("db")]));

    assert_eq!(
        recv(&mut source).await,
        SourceEvent::Init(ResourceKind::Service)
    );
    let mut names = Vec::new();
    for _ in 0..3 {
        let (what, doc) = recv_doc(&mut source).await;
        assert_eq!(what, "InitApply");
        names.push(doc.name().to_owned());
    }
    assert_eq!(names, ["web", "api", "db"]);
    // InitDone only after the last page.
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::InitDone(ResourceKind::Service)
    );
    api.expect_watch("/api/v1/services", "61").await.watch();
    source.task.abort();
}

#[tokio::test]
async fn a_list_that_fails_part_way_starts_again_and_the_consumer_drops_the_partial_set() {
    let (client, mut api) = pair();
    let mut source = spawn(client, options(&[ResourceKind::Pod]));
    let mut consumer = Consumer::default();
    // The state before: what a previous list gave (never replaced by a partial one).
    consumer.apply(SourceEvent::Init(ResourceKind::Pod));
    consumer.apply(SourceEvent::InitApply(Document::new(
        ResourceKind::Pod,
        pod_item("old", "1", "10.0.1.1"),
    )));
    consumer.apply(SourceEvent::InitDone(ResourceKind::Pod));

    let mut first = list("v1", "Pod", "500", vec![pod_item("a", "401", "10.0.1.10")]);
    first["metadata"]["continue"] = json!("page-2");
    api.expect_list(PODS).await.json(200, &first);
    // The continue token expired before the second page was asked for.
    let call = api.expect_list(PODS).await;
    assert_eq!(
        call.query.get("continue").map(String::as_str),
        Some("page-2")
    );
    call.json(
        410,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                "reason": "Expired", "code": 410}),
    );
    let call = api.expect_list(PODS).await;
    assert!(
        !call.query.contains_key("continue"),
        "starts from the first page"
    );
    call.json(
        200,
        &list(
            "v1",
            "Pod",
            "520",
            vec![
                pod_item("a", "401", "10.0.1.10"),
                pod_item("c", "510", "10.0.1.12"),
            ],
        ),
    );

    let mut seen = Vec::new();
    loop {
        let event = recv(&mut source).await;
        let done = matches!(event, SourceEvent::InitDone(_));
        seen.push(match &event {
            SourceEvent::Init(_) => "Init".to_owned(),
            SourceEvent::InitApply(d) => d.name().to_owned(),
            SourceEvent::InitDone(_) => "InitDone".to_owned(),
            other => panic!("{other:?}"),
        });
        consumer.apply(event);
        if done {
            break;
        }
        // Until the list completes, the consumer keeps what it had.
        assert_eq!(consumer.names(), ["prod/old"]);
    }
    assert_eq!(seen, ["Init", "a", "Init", "a", "c", "InitDone"]);
    assert_eq!(consumer.names(), ["prod/a", "prod/c"]);
    api.expect_watch(PODS, "520").await.watch();
    source.task.abort();
}

#[tokio::test]
async fn a_crd_that_is_not_installed_never_lists_and_says_why() {
    let (client, mut api) = pair();
    let mut source = spawn(
        client,
        options(&[ResourceKind::CiliumClusterwideNetworkPolicy]),
    );
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "the server could not find the requested resource",
                           "reason": "NotFound", "details": {}, "code": 404});
    for _ in 0..3 {
        api.expect_list("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies")
            .await
            .json(404, &not_found);
    }
    // The fourth attempt shows the third error was handled; nothing but Init came out.
    let _pending = api
        .expect_list("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies")
        .await;
    let kind = ResourceKind::CiliumClusterwideNetworkPolicy;
    for _ in 0..3 {
        assert_eq!(recv(&mut source).await, SourceEvent::Init(kind));
    }
    let stats = source.stats.kind(kind);
    assert_eq!(stats.errors, 3);
    assert!(!stats.listed);
    let last = stats.last_error.expect("an error");
    assert!(
        last.contains("could not find the requested resource"),
        "{last}"
    );
    source.task.abort();
}

#[tokio::test]
async fn crd_objects_keep_going_with_their_unknown_fields_named() {
    let (client, mut api) = pair();
    let mut source = spawn(client, options(&[ResourceKind::CiliumNetworkPolicy]));
    api.expect_list("/apis/cilium.io/v2/ciliumnetworkpolicies")
        .await
        .json(200, &fixture("cnp-list.json"));
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::Init(ResourceKind::CiliumNetworkPolicy)
    );
    let (_, doc) = recv_doc(&mut source).await;
    assert_eq!(doc.describe(), "CiliumNetworkPolicy prod/web-ingress");
    assert_eq!(
        doc.warnings,
        ["spec.ingress[0].fromFutureThing: unknown field, ignored"]
    );
    // The object is kept, minus that field, and the agent's strict model takes it.
    let policy: CiliumNetworkPolicy =
        serde_json::from_value(doc.object.clone()).expect("the strict model decodes it");
    let rule = policy.spec.expect("spec");
    assert_eq!(rule.ingress.expect("ingress").len(), 1);
    assert_eq!(rule.ingress_deny.expect("ingressDeny").len(), 1);
    assert_eq!(
        recv(&mut source).await,
        SourceEvent::InitDone(ResourceKind::CiliumNetworkPolicy)
    );

    // The same on a watch event.
    let watch = api
        .expect_watch("/apis/cilium.io/v2/ciliumnetworkpolicies", "9120")
        .await
        .watch();
    let mut changed = fixture("cnp-list.json")["items"][0].clone();
    changed["metadata"]["resourceVersion"] = json!("9200");
    changed["spec"]["newRuleOption"] = json!({"mode": "strict"});
    watch.event("MODIFIED", &changed);
    let (what, doc) = recv_doc(&mut source).await;
    assert_eq!(what, "Apply");
    let mut warnings = doc.warnings.clone();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            "spec.ingress[0].fromFutureThing: unknown field, ignored",
            "spec.newRuleOption: unknown field, ignored"
        ]
    );
    assert_eq!(
        source
            .stats
            .kind(ResourceKind::CiliumNetworkPolicy)
            .warnings,
        3
    );
    source.task.abort();
}

#[tokio::test]
async fn every_kind_is_listed_at_its_path_and_reports_its_own_init_done() {
    let (client, mut api) = pair();
    let mut source = spawn(client, options(&ResourceKind::ALL));
    let paths: BTreeMap<&str, (&str, &str)> = [
        ("/api/v1/pods", ("v1", "Pod")),
        ("/api/v1/namespaces", ("v1", "Namespace")),
        ("/api/v1/nodes", ("v1", "Node")),
        ("/api/v1/services", ("v1", "Service")),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            ("discovery.k8s.io/v1", "EndpointSlice"),
        ),
        (
            "/apis/networking.k8s.io/v1/networkpolicies",
            ("networking.k8s.io/v1", "NetworkPolicy"),
        ),
        (
            "/apis/cilium.io/v2/ciliumnetworkpolicies",
            ("cilium.io/v2", "CiliumNetworkPolicy"),
        ),
        (
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
            ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
        ),
    ]
    .into_iter()
    .collect();
    let mut listed = Vec::new();
    for _ in 0..paths.len() {
        let call = api.next().await;
        assert!(!call.is_watch());
        let (api_version, kind) = paths
            .get(call.path.as_str())
            .copied()
            .expect("a known path");
        listed.push(call.path.clone());
        let item = json!({"metadata": {"name": format!("one-{}", kind.to_lowercase()),
                                        "uid": "u", "resourceVersion": "5"}});
        call.json(200, &list(api_version, kind, "10", vec![item]));
    }
    listed.sort();
    assert_eq!(listed, paths.keys().copied().collect::<Vec<_>>());

    let mut done = Vec::new();
    while done.len() < ResourceKind::ALL.len() {
        match recv(&mut source).await {
            SourceEvent::InitDone(kind) => done.push(kind),
            SourceEvent::InitApply(d) => {
                assert_eq!(d.object["kind"], d.kind.as_str());
                assert_eq!(d.object["apiVersion"], d.kind.api_version());
            }
            SourceEvent::Init(_) => {}
            other => panic!("{other:?} before every list was done"),
        }
    }
    done.sort();
    assert_eq!(done, ResourceKind::ALL);
    assert!(source
        .stats
        .snapshot()
        .iter()
        .all(|s| s.listed && s.events == 1));
    source.task.abort();
}

#[tokio::test]
async fn dropping_the_receiver_stops_the_source_even_while_the_watch_is_quiet() {
    let (client, mut api) = pair();
    let Source {
        mut events, task, ..
    } = spawn(client, options(&[ResourceKind::Node]));
    api.expect_list("/api/v1/nodes")
        .await
        .json(200, &list("v1", "Node", "4410", vec![fixture("node.json")]));
    let watch = api.expect_watch("/api/v1/nodes", "4410").await.watch();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(events.recv().await.expect("an event").kind());
    }
    // Nothing more comes on the watch; the consumer leaves.
    drop(events);
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the task ended")
        .expect("without a panic");
    drop(watch);
}
