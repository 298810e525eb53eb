//! The relay against real observer servers (the agent's own `ciliate_observer` ring and gRPC
//! service, each in a runtime of its own so that stopping one closes its sockets as a dying
//! agent's do), read through a real gRPC client: merge order, cluster-wide --last/--first,
//! ServerStatus and GetNodes, a node going away and coming back (also during follow), bad
//! requests, and discovery through node records in a real etcd.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ciliate_kvstore::{Kvstore, KvstoreConfig, NodeRecord};
use ciliate_observer::client::{connect, Target};
use ciliate_observer::proto::flow::{Flow, FlowFilter, Ip};
use ciliate_observer::proto::observer::get_flows_response::ResponseTypes;
use ciliate_observer::proto::observer::observer_client::ObserverClient;
use ciliate_observer::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, ServerStatusRequest,
};
use ciliate_observer::proto::relay::NodeState;
use ciliate_observer::server::Service;
use ciliate_observer::{Observer, ObserverConfig, Snapshot};
use ciliate_relay::config::Listen;
use ciliate_relay::discovery::{self, StaticPeer};
use ciliate_relay::{serve, MergeConfig, Pool, PoolConfig, RelayService};
use ciliate_testutil::etcd::TestEtcd;
use tokio::sync::watch;
use tonic::transport::Channel;

/// How long anything may take to show up.
const PATIENCE: Duration = Duration::from_secs(20);
/// Flow times start here (seconds since the epoch), well in the past.
const BASE: i64 = 1_700_000_000;

/// A node: an observer ring and its gRPC service, in a runtime of its own.
struct FakeNode {
    name: String,
    observer: Arc<Observer>,
    runtime: Option<tokio::runtime::Runtime>,
    target: Target,
}

impl FakeNode {
    /// Serves on `socket` (unix) or, when `None`, on a TCP port of 127.0.0.1. Made on a thread
    /// of its own: the test's runtime may not block.
    fn start(name: &str, socket: Option<&Path>) -> Self {
        let (name, socket) = (name.to_owned(), socket.map(Path::to_owned));
        std::thread::spawn(move || Self::start_here(&name, socket.as_deref()))
            .join()
            .unwrap()
    }

    fn start_here(name: &str, socket: Option<&Path>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let observer = Arc::new(Observer::new(
            ObserverConfig {
                node_name: name.into(),
                capacity: 1000,
            },
            Arc::new(Snapshot::default()),
        ));
        let service = Service::new(Arc::clone(&observer), "test", name);
        let never = std::future::pending::<()>();
        let target = match socket {
            Some(path) => {
                let l = runtime.block_on(async { ciliate_observer::server::bind_unix(path) });
                let l = l.unwrap();
                runtime.spawn(ciliate_observer::server::serve_unix(service, l, never));
                Target::Unix(path.to_owned())
            }
            None => {
                let l = runtime
                    .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                    .unwrap();
                let addr = l.local_addr().unwrap();
                runtime.spawn(ciliate_observer::server::serve_tcp(service, l, never));
                Target::Tcp(addr.to_string())
            }
        };
        Self {
            name: name.into(),
            observer,
            runtime: Some(runtime),
            target,
        }
    }

    /// A flow at BASE + `secs` from 10.0.<node>.<secs>.
    fn push(&self, secs: i64, node: u8) {
        self.observer.push_flow(Flow {
            time: Some(pbjson_types::Timestamp {
                seconds: BASE + secs,
                nanos: 0,
            }),
            node_name: self.name.clone(),
            ip: Some(Ip {
                source: Ipv4Addr::new(10, 0, node, u8::try_from(secs % 250).unwrap()).to_string(),
                destination: "10.9.9.9".into(),
                ..Ip::default()
            }),
            ..Flow::default()
        });
    }

    /// Stops it: its runtime goes, and with it every socket (as when the agent dies).
    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay over `peers`, served on a unix socket in `dir`; returns a client of it.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ciliate_relay=info".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn relay(
    dir: &Path,
    peers: &[&FakeNode],
    etcd: Option<KvstoreConfig>,
) -> (ObserverClient<Channel>, watch::Sender<bool>) {
    init_logging();
    let pool = Pool::new(PoolConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        ..PoolConfig::default()
    });
    let statics: Vec<StaticPeer> = peers
        .iter()
        .map(|n| StaticPeer {
            name: n.name.clone(),
            target: n.target.clone(),
        })
        .collect();
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(discovery::run(pool.clone(), statics, etcd, stop.clone()));
    let merge = MergeConfig {
        sort_buffer_drain_timeout: Duration::from_millis(200),
        ..MergeConfig::default()
    };
    let service = RelayService::new(pool, merge, "test-relay", Duration::from_secs(2));
    let socket = dir.join("relay.sock");
    let bound = serve::bind(&[Listen::Unix(socket.clone())]).await.unwrap();
    let routes = serve::routes(service).await;
    tokio::spawn(serve::serve(routes, bound, stop));
    let client = connect(&Target::Unix(socket), Duration::from_secs(5))
        .await
        .unwrap();
    (client, stop_tx)
}

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_flows(c: &mut ObserverClient<Channel>, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
    let mut s = c.get_flows(req).await.unwrap().into_inner();
    let mut v = Vec::new();
    while let Some(r) = s.message().await.unwrap() {
        v.push(r);
    }
    v
}

/// Now, in seconds after BASE.
fn now_secs() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(now).unwrap() - BASE
}

/// (node, seconds after BASE) of the flows.
fn flows_of(v: &[GetFlowsResponse]) -> Vec<(String, i64)> {
    v.iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => {
                Some((unqualified(&r.node_name), f.time.unwrap().seconds - BASE))
            }
            _ => None,
        })
        .collect()
}

/// A node's name without the cluster the relay and the agents put in front (`default/a`):
/// the tests name nodes `a`, `b`.
fn unqualified(name: &str) -> String {
    name.strip_prefix("default/")
        .unwrap_or_else(|| panic!("{name:?} is not qualified with the default cluster"))
        .to_owned()
}

/// (state, nodes) of the node status events.
fn statuses_of(v: &[GetFlowsResponse]) -> Vec<(NodeState, Vec<String>)> {
    v.iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::NodeStatus(n)) => Some((
                NodeState::try_from(n.state_change).unwrap(),
                n.node_names.iter().map(|n| unqualified(n)).collect(),
            )),
            _ => None,
        })
        .collect()
}

async fn connected_nodes(c: &mut ObserverClient<Channel>) -> u32 {
    c.server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .num_connected_nodes
        .unwrap()
        .value
}

fn two_nodes(dir: &Path) -> (FakeNode, FakeNode) {
    let a = FakeNode::start("a", Some(&dir.join("a.sock")));
    let b = FakeNode::start("b", Some(&dir.join("b.sock")));
    for s in [1, 3, 5] {
        a.push(s, 1);
    }
    for s in [2, 4, 6] {
        b.push(s, 2);
    }
    (a, b)
}

#[tokio::test]
async fn flows_of_all_nodes_come_merged_in_time_order_and_cut_cluster_wide() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path());
    let (mut c, _stop) = relay(dir.path(), &[&a, &b], None).await;
    eventually("both nodes connected", || {
        let mut c = c.clone();
        async move { (connected_nodes(&mut c).await == 2).then_some(()) }
    })
    .await;

    let all = all_flows(&mut c, GetFlowsRequest::default()).await;
    let names = |v: &[(String, i64)]| v.iter().map(|(n, s)| format!("{n}{s}")).collect::<Vec<_>>();
    assert_eq!(names(&flows_of(&all)), ["a1", "b2", "a3", "b4", "a5", "b6"]);
    assert_eq!(
        statuses_of(&all),
        [(NodeState::NodeConnected, vec!["a".into(), "b".into()])]
    );

    // --last 3: the three newest of the cluster, not three per node.
    let last = all_flows(
        &mut c,
        GetFlowsRequest {
            number: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&flows_of(&last)), ["b4", "a5", "b6"]);
    // --first 2.
    let first = all_flows(
        &mut c,
        GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&flows_of(&first)), ["a1", "b2"]);
    // Filters go to the nodes: only node a's source addresses.
    let filtered = all_flows(
        &mut c,
        GetFlowsRequest {
            whitelist: vec![FlowFilter {
                source_ip: vec!["10.0.1.0/24".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&flows_of(&filtered)), ["a1", "a3", "a5"]);
    // since/until across nodes.
    let window = all_flows(
        &mut c,
        GetFlowsRequest {
            since: Some(pbjson_types::Timestamp {
                seconds: BASE + 2,
                nanos: 0,
            }),
            until: Some(pbjson_types::Timestamp {
                seconds: BASE + 4,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&flows_of(&window)), ["b2", "a3", "b4"]);

    let status = c
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.num_flows, 6);
    assert_eq!(status.seen_flows, 6);
    assert_eq!(status.max_flows, 2000);
    assert_eq!(status.num_unavailable_nodes.unwrap().value, 0);
    assert_eq!(status.version, "test-relay");
    let nodes = c.get_nodes(GetNodesRequest {}).await.unwrap().into_inner();
    let states: Vec<(String, i32, u64)> = nodes
        .nodes
        .iter()
        .map(|n| (unqualified(&n.name), n.state, n.num_flows))
        .collect();
    assert_eq!(
        states,
        [
            ("a".into(), NodeState::NodeConnected as i32, 3),
            ("b".into(), NodeState::NodeConnected as i32, 3)
        ]
    );
}

#[tokio::test]
async fn a_node_going_away_is_named_and_its_return_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = two_nodes(dir.path());
    let (mut c, _stop) = relay(dir.path(), &[&a, &b], None).await;
    eventually("both nodes connected", || {
        let mut c = c.clone();
        async move { (connected_nodes(&mut c).await == 2).then_some(()) }
    })
    .await;

    // A follower from before node b goes away.
    let mut follow = c
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = follow.message().await.unwrap().unwrap();
    assert_eq!(
        statuses_of(&[first]),
        [(NodeState::NodeConnected, vec!["a".into(), "b".into()])]
    );

    b.kill();
    let status = eventually("b unavailable", || {
        let mut c = c.clone();
        async move {
            let s = c
                .server_status(ServerStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            (s.num_unavailable_nodes.unwrap().value == 1).then_some(s)
        }
    })
    .await;
    assert_eq!(status.unavailable_nodes, ["default/b"]);
    assert_eq!(status.num_connected_nodes.unwrap().value, 1);
    assert_eq!(status.num_flows, 3, "only a's flows are counted");
    let nodes = c.get_nodes(GetNodesRequest {}).await.unwrap().into_inner();
    let b_state = nodes.nodes.iter().find(|n| n.name == "default/b").unwrap();
    assert_eq!(b_state.state, NodeState::NodeUnavailable as i32);
    // The relay still answers, with a's flows, and says b is missing.
    let v = all_flows(&mut c, GetFlowsRequest::default()).await;
    assert_eq!(
        flows_of(&v),
        [("a".into(), 1), ("a".into(), 3), ("a".into(), 5)]
    );
    assert_eq!(
        statuses_of(&v),
        [
            (NodeState::NodeConnected, vec!["a".into()]),
            (NodeState::NodeUnavailable, vec!["b".into()])
        ]
    );
    // The follower heard it too.
    let r = follow.message().await.unwrap().unwrap();
    assert_eq!(
        statuses_of(&[r]),
        [(NodeState::NodeUnavailable, vec!["b".into()])]
    );

    // b comes back (a new agent, same socket, empty ring).
    let b2 = FakeNode::start("b", Some(&dir.path().join("b.sock")));
    eventually("b back", || {
        let mut c = c.clone();
        async move { (connected_nodes(&mut c).await == 2).then_some(()) }
    })
    .await;
    let r = follow.message().await.unwrap().unwrap();
    assert_eq!(
        statuses_of(&[r]),
        [(NodeState::NodeConnected, vec!["b".into()])]
    );
    // New flows of both (live ones: stamped now) reach the follower in time order.
    let now = now_secs();
    a.push(now + 1, 1);
    b2.push(now + 2, 2);
    a.push(now + 3, 1);
    let mut got = Vec::new();
    while got.len() < 3 {
        let r = follow.message().await.unwrap().unwrap();
        got.extend(flows_of(&[r]));
    }
    assert_eq!(
        got,
        [
            ("a".into(), now + 1),
            ("b".into(), now + 2),
            ("a".into(), now + 3)
        ]
    );
}

#[tokio::test]
async fn follow_with_last_n_starts_with_the_newest_n_of_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path());
    let (mut c, _stop) = relay(dir.path(), &[&a, &b], None).await;
    eventually("both nodes connected", || {
        let mut c = c.clone();
        async move { (connected_nodes(&mut c).await == 2).then_some(()) }
    })
    .await;
    let mut follow = c
        .get_flows(GetFlowsRequest {
            number: 2,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    // Nothing newer comes: the history goes out after the quiet period.
    while got.len() < 2 {
        let r = follow.message().await.unwrap().unwrap();
        got.extend(flows_of(&[r]));
    }
    assert_eq!(got, [("a".into(), 5), ("b".into(), 6)]);
    // Live flows follow, without the history being repeated. A live flow carries the current
    // time (after the request started).
    let now = now_secs();
    a.push(now + 5, 1);
    let r = loop {
        let r = follow.message().await.unwrap().unwrap();
        if !flows_of(std::slice::from_ref(&r)).is_empty() {
            break r;
        }
    };
    assert_eq!(flows_of(&[r]), [("a".into(), now + 5)]);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path());
    let (mut c, _stop) = relay(dir.path(), &[&a, &b], None).await;
    let e = c
        .get_flows(GetFlowsRequest {
            first: true,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("first cannot be combined with follow"));
    let e = c
        .get_flows(GetFlowsRequest {
            whitelist: vec![FlowFilter {
                protocol: vec!["carrier-pigeon".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("carrier-pigeon"), "{e:?}");
}

#[tokio::test]
async fn nodes_are_found_through_their_records_in_etcd() {
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = FakeNode::start("a", None);
    a.push(1, 1);
    let Target::Tcp(addr) = a.target.clone() else {
        unreachable!()
    };
    let register = |name: &str, hubble: &str| NodeRecord {
        name: name.into(),
        underlay_ip: Ipv4Addr::new(127, 0, 0, 1),
        pod_cidr: "10.0.1.0/24".parse().unwrap(),
        health: "ok".into(),
        boot_id: "x".into(),
        hubble_address: hubble.into(),
    };
    let kv = Kvstore::connect(KvstoreConfig::new(vec![etcd.endpoint()], "a"))
        .await
        .unwrap();
    kv.register_node(register("a", &addr)).await.unwrap();
    // A node without an observer address (an older agent) is not read.
    let old = Kvstore::connect(KvstoreConfig::new(vec![etcd.endpoint()], "old"))
        .await
        .unwrap();
    old.register_node(register("old", "")).await.unwrap();

    let (mut c, _stop) = relay(
        dir.path(),
        &[],
        Some(KvstoreConfig::new(vec![etcd.endpoint()], "relay-test")),
    )
    .await;
    eventually("a found and connected", || {
        let mut c = c.clone();
        async move { (connected_nodes(&mut c).await == 1).then_some(()) }
    })
    .await;
    let v = all_flows(&mut c, GetFlowsRequest::default()).await;
    assert_eq!(flows_of(&v), [("a".into(), 1)]);

    // The node leaves the cluster: listed as gone, and no longer read.
    kv.close().await;
    let nodes = eventually("a gone", || {
        let mut c = c.clone();
        async move {
            let n = c.get_nodes(GetNodesRequest {}).await.unwrap().into_inner();
            n.nodes
                .iter()
                .any(|n| n.state == NodeState::NodeGone as i32)
                .then_some(n)
        }
    })
    .await;
    let by_name: BTreeMap<String, i32> = nodes
        .nodes
        .iter()
        .map(|n| (unqualified(&n.name), n.state))
        .collect();
    assert_eq!(
        by_name,
        BTreeMap::from([("a".into(), NodeState::NodeGone as i32)])
    );
    old.close().await;
    drop(etcd);
}

/// GET of `path` on `addr` as JSON (plain HTTP/1.1, one request per connection).
async fn http_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap()
}

/// `--ui-address`: the service map, drawn from the relay's merged flows of every node.
#[tokio::test]
async fn the_service_map_is_served_from_the_relays_flows() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path());
    let (c, stop) = relay(dir.path(), &[&a, &b], None).await;
    eventually("both nodes connected", || {
        let mut c = c.clone();
        async move { (connected_nodes(&mut c).await == 2).then_some(()) }
    })
    .await;
    let listen = [Listen::Unix(dir.path().join("relay.sock"))];
    let (addr, task) =
        ciliate_relay::ui::start("127.0.0.1:0".parse().unwrap(), &listen, stop.subscribe())
            .await
            .unwrap();
    let snap = eventually("the map of every node's flows", || async {
        let v = http_json(addr, "/api/snapshot").await;
        (v["graph"]["flows"] == 6).then_some(v)
    })
    .await;
    let source = format!("unix://{}", dir.path().join("relay.sock").display());
    assert_eq!(snap["status"]["source"], source.as_str());
    assert_eq!(snap["status"]["state"], "connected");
    let nodes: std::collections::BTreeSet<String> = snap["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            f["node"]
                .as_str()
                .unwrap()
                .trim_start_matches("default/")
                .to_owned()
        })
        .collect();
    assert_eq!(
        nodes,
        ["a", "b"].map(String::from).into(),
        "flows of both nodes"
    );
    // Live: a new flow of one node reaches the map through the relay.
    a.push(now_secs(), 1);
    eventually("the live flow", || async {
        (http_json(addr, "/api/status").await["received"] == 7).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
}
