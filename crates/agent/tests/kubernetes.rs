//! The agent in Kubernetes mode (`--k8s`) against a scripted API server (kube's `Client` over
//! `tower_test`'s mock service), with the fake datapath: the Node's pod CIDR, a Service and its
//! EndpointSlice programmed, a CiliumNetworkPolicy in force, endpoints taking their Pod's
//! labels and named ports, and a relabel (a MODIFIED watch event) moving an endpoint to a new
//! identity and policy without a restart.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ciliate_agent::config::{Config, KubernetesConfig, StaticEnvironment};
use ciliate_agent::server::run_with_kube_client;
use ciliate_datapath::{Datapath, FakeDatapath};
use futures::stream::{BoxStream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tower_test::mock;

const NODE: &str = "node-k";
const PODS: &str = "/api/v1/pods";

/// How long the test waits for the agent to get somewhere before failing (instead of hanging).
/// Not a timing assertion: the condition is what is checked.
const PATIENCE: Duration = Duration::from_secs(30);

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>;
type Handle = mock::Handle<http::Request<kube::client::Body>, http::Response<Body>>;

/// The scripted API server: a list per path, and the open watch of each path to push events on.
#[derive(Default)]
struct ApiServer {
    lists: BTreeMap<&'static str, Value>,
    watches: Mutex<BTreeMap<String, mpsc::UnboundedSender<Result<Bytes, std::io::Error>>>>,
    queries: Mutex<Vec<(String, String)>>,
}

impl ApiServer {
    async fn serve(self: Arc<Self>, mut handle: Handle) {
        while let Some((req, respond)) = handle.next_request().await {
            assert_eq!(req.method(), http::Method::GET, "the agent only reads");
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            let is_watch = query.split('&').any(|kv| kv == "watch=true");
            self.queries
                .lock()
                .expect("lock")
                .push((path.clone(), query));
            let body = if is_watch {
                let (tx, rx) = mpsc::unbounded_channel();
                self.watches.lock().expect("lock").insert(path, tx);
                futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|chunk| (chunk.map(Frame::data), rx))
                })
                .boxed()
            } else {
                let list = self.lists.get(path.as_str()).cloned().unwrap_or_else(|| {
                    json!({"kind": "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": "1"}, "items": []})
                });
                let bytes = Bytes::from(list.to_string());
                futures::stream::once(async move { Ok(Frame::data(bytes)) }).boxed()
            };
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(StreamBody::new(body))
                .expect("a valid response");
            respond.send_response(response);
        }
    }

    /// Sends a watch event on the open watch of `path`.
    async fn event(&self, path: &str, kind: &str, object: &Value) {
        let tx = eventually(&format!("a watch of {path}"), || {
            self.watches.lock().expect("lock").get(path).cloned()
        })
        .await;
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        tx.send(Ok(Bytes::from(line))).expect("the watch is open");
    }
}

fn list(api_version: &str, kind: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
           "metadata": {"resourceVersion": rv}, "items": items})
}

fn pod(name: &str, rv: &str, labels: Value, ports: Value) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"),
                     "resourceVersion": rv, "labels": labels},
        "spec": {"nodeName": NODE,
                 "containers": [{"name": "c", "image": "busybox:1.37", "ports": ports}]},
        "status": {"phase": "Pending"}
    })
}

/// The API as the test starts it, with client-0 labelled `client_labels`.
fn api_server(client_labels: Value) -> ApiServer {
    let mut lists = BTreeMap::new();
    lists.insert(
        "/api/v1/nodes",
        list(
            "v1",
            "Node",
            "10",
            vec![json!({
                "metadata": {"name": NODE, "resourceVersion": "9",
                             "labels": {"topology.kubernetes.io/zone": "zone-b",
                                        "kubernetes.io/os": "linux"}},
                "spec": {"podCIDR": "10.77.3.0/24", "podCIDRs": ["10.77.3.0/24"]},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}
            })],
        ),
    );
    lists.insert(
        "/api/v1/namespaces",
        list(
            "v1",
            "Namespace",
            "10",
            vec![json!({"metadata": {"name": "prod", "resourceVersion": "3",
                                     "labels": {"kubernetes.io/metadata.name": "prod"}}})],
        ),
    );
    lists.insert(
        "/api/v1/services",
        list(
            "v1",
            "Service",
            "20",
            vec![json!({
                "metadata": {"name": "web", "namespace": "prod", "resourceVersion": "11"},
                "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                         "selector": {"app": "web"},
                         "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
            })],
        ),
    );
    lists.insert(
        "/apis/discovery.k8s.io/v1/endpointslices",
        list(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            "21",
            vec![json!({
                "metadata": {"name": "web-abcde", "namespace": "prod", "resourceVersion": "12",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.77.3.50"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
            })],
        ),
    );
    lists.insert(
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        list(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            "30",
            vec![json!({
                "metadata": {"name": "db-from-web", "namespace": "prod", "resourceVersion": "13"},
                "spec": {
                    "endpointSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                                 "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}]
                }
            })],
        ),
    );
    let mut db = pod(
        "db-0",
        "40",
        json!({"app": "db", "pod-template-hash": "6d4cf56db6"}),
        json!([{"name": "pg", "containerPort": 5432}]),
    );
    let mut client = pod(
        "client-0",
        "41",
        client_labels,
        json!([{"name": "http", "containerPort": 8080}]),
    );
    for p in [&mut db, &mut client] {
        // List items come without apiVersion and kind, as the API server sends them.
        let m = p.as_object_mut().expect("an object");
        m.remove("kind");
        m.remove("apiVersion");
    }
    lists.insert(PODS, list("v1", "Pod", "50", vec![db, client]));
    ApiServer {
        lists,
        ..ApiServer::default()
    }
}

fn config(dir: &Path) -> Config {
    let env = StaticEnvironment {
        hostname: Some(NODE.into()),
        ..Default::default()
    };
    let socket = dir.join("run/agent.sock").display().to_string();
    let state = dir.join("state").display().to_string();
    let mut cfg = Config::parse_from(
        [
            "ciliate-agent",
            "--datapath",
            "fake",
            "--socket",
            &socket,
            "--state-dir",
            &state,
        ],
        &env,
    )
    .expect("config");
    cfg.kubernetes = Some(KubernetesConfig { kubeconfig: None });
    cfg
}

/// A flow of an event the datapath reports now, read over the agent's `hubble.sock`
/// (beside its API socket) through a `node_labels` filter of `selector`.
async fn flow_on_node_labels(
    dp: &FakeDatapath,
    socket: &Path,
    selector: &str,
) -> ciliate_observer::proto::flow::Flow {
    use ciliate_model::monitor::MonitorEvent;
    use ciliate_observer::proto::flow::FlowFilter;
    use ciliate_observer::proto::observer::{get_flows_response, GetFlowsRequest};
    let hubble = socket.with_file_name("hubble.sock");
    let target = ciliate_observer::client::Target::Unix(hubble);
    let mut client = ciliate_observer::client::connect(&target, PATIENCE)
        .await
        .expect("hubble.sock");
    // A policy drop, as the datapath's event JSON has it.
    let event: MonitorEvent = serde_json::from_value(json!({
        "kind": "drop", "time": "2024-01-01T00:00:00Z", "code": 133,
        "reason": "Policy denied", "endpoint": 1, "ifindex": 3, "srcIdentity": 2,
        "dstIdentity": 256, "ctState": "", "len": 60, "ethertype": 2048
    }))
    .expect("a monitor event");
    dp.emit(event);
    // The newest flow the filter selects, asked until the event has become one.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let request = GetFlowsRequest {
            number: 1,
            whitelist: vec![FlowFilter {
                node_labels: vec![selector.to_owned()],
                ..FlowFilter::default()
            }],
            ..GetFlowsRequest::default()
        };
        let mut flows = client
            .get_flows(request)
            .await
            .expect("GetFlows")
            .into_inner();
        while let Some(msg) = flows.message().await.expect("stream") {
            if let Some(get_flows_response::ResponseTypes::Flow(f)) = msg.response_types {
                return f;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no flow with node labels {selector}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `check` gives something.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {}s for {what}",
            PATIENCE.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn call(socket: &Path, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let stream = UnixStream::connect(socket).await.expect("connects");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "agent");
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(&v).expect("serialises")))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = sender
        .send_request(req.body(body).expect("request"))
        .await
        .expect("answer");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

fn create_body(pod: &str, ifindex: u32) -> Value {
    json!({
        "containerId": format!("cid-{pod}"),
        "ifname": "eth0",
        "netns": "/var/run/netns/x",
        "pod": {"namespace": "prod", "name": pod},
        // What a runtime might pass in CNI_ARGS: not used in Kubernetes mode.
        "labels": ["k8s:app=spoofed"],
        "hostIfname": format!("lxc{ifindex}"),
        "hostIfindex": ifindex,
        "hostMac": "02:00:00:00:00:01",
        "mac": "02:00:00:00:00:02"
    })
}

fn labels_of(ep: &Value) -> Vec<String> {
    serde_json::from_value(ep["labels"].clone()).expect("labels are a list of strings")
}

/// Whether the endpoint `ep`'s policy admits TCP/`port` from identity `from`.
fn admits(dp: &FakeDatapath, ep: u16, from: u64, port: u16) -> bool {
    dp.policies().get(&ep).is_some_and(|p| {
        p.ingress_enforced
            && p.entries.iter().any(|e| {
                !e.egress
                    && !e.deny
                    && u64::from(e.identity) == from
                    && e.proto == Some(6)
                    && e.port == port
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_end_to_end_on_the_fake_datapath() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path());
    let restart_cfg = cfg.clone();
    let socket = cfg.socket.clone();
    let dp = Arc::new(FakeDatapath::new());
    let (service, handle) = mock::pair::<http::Request<kube::client::Body>, http::Response<Body>>();
    let client = kube::Client::new(service, "default");
    let api = Arc::new(api_server(json!({"app": "other"})));
    let server = tokio::spawn(Arc::clone(&api).serve(handle));
    let (stop, rx) = watch::channel(false);
    let agent = tokio::spawn(run_with_kube_client(cfg, dp.clone(), client, rx));
    eventually("the agent's socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })
    .await;

    // Only this node's pods are watched.
    let pod_query = eventually("the pods listed", || {
        api.queries
            .lock()
            .expect("lock")
            .iter()
            .find(|(p, _)| p == PODS)
            .map(|(_, q)| q.clone())
    })
    .await;
    assert!(
        pod_query.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}")),
        "{pod_query}"
    );

    // The Service and its EndpointSlice from the API, in the load-balancing maps.
    let frontend = eventually("the Service in the datapath", || {
        let lb = dp.lb_state().ok()?;
        lb.frontends
            .iter()
            .find(|f| f.addr == Ipv4Addr::new(10, 96, 0, 10) && f.port == 80)
            .filter(|f| f.backends.len() == 1)
            .cloned()
            .map(|f| (f, lb))
    })
    .await;
    let backend = frontend
        .1
        .backends
        .iter()
        .find(|b| b.id == frontend.0.backends[0])
        .expect("the backend");
    assert_eq!(
        (backend.addr, backend.port),
        (Ipv4Addr::new(10, 77, 3, 50), 8080)
    );

    // The CiliumNetworkPolicy from the API is in the policy store before pods come.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, policies) = call(&socket, "GET", "/v1/policies", None).await;
        assert_eq!(status, StatusCode::OK, "{policies}");
        if policies.to_string().contains("db-from-web") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the policy from the API never came: {policies}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A pod created through the endpoint API gets its Pod object's labels and named ports, an
    // address of the Node's pod CIDR.
    let (status, db) = call(
        &socket,
        "POST",
        "/v1/endpoints",
        Some(create_body("db-0", 11)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{db}");
    let db = &db["endpoint"];
    assert_eq!(
        labels_of(db),
        ["k8s:app=db", "k8s:io.kubernetes.pod.namespace=prod"],
        "the Pod's labels, without pod-template-hash nor the request's"
    );
    assert_eq!(db["namedPorts"][0]["port"], 5432, "{db}");
    let db_ip: Ipv4Addr = db["ipv4"].as_str().expect("ipv4").parse().expect("ip");
    assert!(
        "10.77.3.0/24"
            .parse::<ipnet::Ipv4Net>()
            .expect("cidr")
            .contains(&db_ip),
        "{db_ip} from the Node's pod CIDR"
    );
    let db_id = u16::try_from(db["id"].as_u64().expect("id")).expect("u16");

    let (status, client) = call(
        &socket,
        "POST",
        "/v1/endpoints",
        Some(create_body("client-0", 12)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{client}");
    let client = client["endpoint"].clone();
    assert_eq!(
        labels_of(&client),
        ["k8s:app=other", "k8s:io.kubernetes.pod.namespace=prod"]
    );
    let old_identity = client["identity"].as_u64().expect("identity");
    let client_id = client["id"].as_u64().expect("id");

    // A pod whose object comes after the runtime's ADD: the ADD waits for it.
    let late = tokio::spawn({
        let socket = socket.clone();
        async move {
            call(
                &socket,
                "POST",
                "/v1/endpoints",
                Some(create_body("late-0", 13)),
            )
            .await
        }
    });
    api.event(
        PODS,
        "ADDED",
        &pod("late-0", "55", json!({"app": "late"}), json!([])),
    )
    .await;
    let (status, late) = late.await.expect("the ADD");
    assert_eq!(status, StatusCode::CREATED, "{late}");
    assert_eq!(
        labels_of(&late["endpoint"]),
        ["k8s:app=late", "k8s:io.kubernetes.pod.namespace=prod"]
    );

    // The policy selects db and admits only app=web on 5432: not the client yet.
    eventually("db's policy enforced", || {
        dp.policies()
            .get(&db_id)
            .filter(|p| p.ingress_enforced)
            .map(|_| ())
    })
    .await;
    assert!(!admits(&dp, db_id, old_identity, 5432));

    // The client is relabelled app=web in the API (and its port renamed): new identity, and
    // db's policy admits it, without a restart.
    api.event(
        PODS,
        "MODIFIED",
        &pod(
            "client-0",
            "60",
            json!({"app": "web"}),
            json!([{"name": "http", "containerPort": 9090}]),
        ),
    )
    .await;
    let relabelled = eventually_endpoint(&socket, client_id, |ep| {
        labels_of(ep).contains(&"k8s:app=web".to_owned())
    })
    .await;
    let new_identity = relabelled["identity"].as_u64().expect("identity");
    assert_ne!(new_identity, old_identity);
    assert_eq!(relabelled["namedPorts"][0]["port"], 9090, "{relabelled}");
    assert_eq!(
        relabelled["ipv4"], client["ipv4"],
        "same endpoint, same address"
    );
    let programmed = dp
        .list_endpoints()
        .expect("endpoints")
        .into_iter()
        .find(|e| u64::from(e.id) == client_id)
        .expect("programmed");
    assert_eq!(u64::from(programmed.identity), new_identity);
    eventually("db's policy admitting the relabelled client", || {
        admits(&dp, db_id, new_identity, 5432).then_some(())
    })
    .await;
    assert!(!admits(&dp, db_id, old_identity, 5432));
    let (status, _) = call(
        &socket,
        "GET",
        &format!("/v1/identities/{old_identity}"),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the old identity's last reference is gone"
    );

    // Flows carry the Node object's labels, and Hubble's node_labels filter selects on them.
    let flow = flow_on_node_labels(&dp, &socket, "topology.kubernetes.io/zone=zone-b").await;
    assert_eq!(
        flow.node_labels,
        vec![
            "kubernetes.io/os=linux",
            "topology.kubernetes.io/zone=zone-b"
        ]
    );

    stop.send(true).expect("agent running");
    agent
        .await
        .expect("agent task")
        .expect("agent stops cleanly");
    server.abort();

    // Relabelled while the agent was down: the restarted agent's first Pod list relabels the
    // endpoint it restored from its state.
    let (service, handle) = mock::pair::<http::Request<kube::client::Body>, http::Response<Body>>();
    let kube_client = kube::Client::new(service, "default");
    let api = Arc::new(api_server(json!({"app": "restarted"})));
    let server = tokio::spawn(Arc::clone(&api).serve(handle));
    let (stop, rx) = watch::channel(false);
    let agent = tokio::spawn(run_with_kube_client(
        restart_cfg,
        dp.clone(),
        kube_client,
        rx,
    ));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if agent.is_finished() {
            panic!("the restarted agent stopped: {:?}", agent.await);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted agent never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restarted = eventually_endpoint(&socket, client_id, |ep| {
        labels_of(ep).contains(&"k8s:app=restarted".to_owned())
    })
    .await;
    assert_ne!(restarted["identity"], relabelled["identity"]);
    assert_eq!(restarted["ipv4"], client["ipv4"]);
    stop.send(true).expect("agent running");
    agent
        .await
        .expect("agent task")
        .expect("agent stops cleanly");
    server.abort();
}

async fn eventually_endpoint(socket: &Path, id: u64, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, ep) = call(socket, "GET", &format!("/v1/endpoints/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{ep}");
        if want(&ep) {
            return ep;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "endpoint {id} never became as wanted: {ep}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
