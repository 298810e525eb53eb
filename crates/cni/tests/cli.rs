//! The plugin binary driven exactly as a runtime drives it: environment, stdin, stdout, exit
//! status. The first tests need nothing; the others need root: they run the plugin inside a
//! throw-away "node" namespace (never the host's) against a fake agent on a unix socket.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ciliate_model::api::{
    ApiError, EndpointCreateRequest, EndpointCreated, EndpointDeleted, GcRequest, GcResult, Health,
    GATEWAY_IPV4,
};
use ciliate_model::{Endpoint, EndpointState};
use ciliate_testutil::TestNetns;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ciliate-cni");

/// What one invocation printed and returned.
#[derive(Debug)]
struct Outcome {
    status: i32,
    stdout: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts an error outcome with `code` and returns the error object.
    fn error(&self, code: u64) -> Value {
        assert_eq!(self.status, 1, "exit status of an error: {self:?}");
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        for key in ["cniVersion", "msg", "details"] {
            assert!(v.get(key).is_some(), "error lacks {key}: {v}");
        }
        v
    }

    fn ok_silent(&self) {
        assert_eq!(self.status, 0, "{self:?}");
        assert_eq!(self.stdout, "", "nothing but a result goes to stdout");
    }
}

/// Runs the plugin with exactly `env` (plus PATH) and `stdin`; inside `node` when given.
fn cni(node: Option<&TestNetns>, env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut cmd = match node {
        Some(ns) => ns.command(BIN),
        None => Command::new(BIN),
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap().trim_end().to_owned(),
    }
}

fn conf(version: &str, socket: &Path) -> String {
    json!({
        "cniVersion": version,
        "name": "ciliate",
        "type": "ciliate-cni",
        "agentSocket": socket,
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}
    })
    .to_string()
}

/// The host veth name the plugin derives (FNV-1a 64 of "<cid>/<ifname>", high 48 bits).
fn host_ifname(cid: &str, ifname: &str) -> String {
    let h = format!("{cid}/{ifname}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("lxc{:012x}", h >> 16)
}

const NO_AGENT: &str = "/nonexistent/ciliate/agent.sock";

#[test]
fn version_answers_whatever_the_input() {
    for stdin in ["", r#"{"cniVersion":"0.4.0"}"#, "garbage"] {
        let out = cni(None, &[("CNI_COMMAND", "VERSION")], stdin);
        assert_eq!(out.status, 0);
        assert_eq!(
            out.stdout,
            r#"{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}"#
        );
    }
}

#[test]
fn help_and_version_name_the_plugin_without_reading_stdin() {
    for flag in ["--help", "--version", "-h"] {
        // stdin stays open: the plugin must not wait for it.
        let out = Command::new(BIN)
            .arg(flag)
            .env_clear()
            .stdin(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!(
                "CNI ciliate plugin v{}\nCNI protocol versions supported: 1.0.0, 1.1.0\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{flag}: {text}"
        );
    }
}

#[test]
fn a_missing_or_unknown_command_is_code_4() {
    let v = cni(None, &[], "{}").error(4);
    assert_eq!(v["msg"], "CNI_COMMAND is not set");
    let v = cni(None, &[("CNI_COMMAND", "FROB")], "{}").error(4);
    assert!(v["msg"].as_str().unwrap().contains("FROB"), "{v}");
}

fn add_env<'a>(netns: &'a str, cid: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

#[test]
fn input_errors_have_their_codes_before_anything_is_touched() {
    let socket = Path::new(NO_AGENT);
    let good = conf("1.0.0", socket);
    let env = add_env("/var/run/netns/ciliate-none", "c1");

    let v = cni(None, &env, &conf("0.4.0", socket)).error(1);
    assert_eq!(
        v["cniVersion"], "1.1.0",
        "answered in our version when theirs is unknown"
    );
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("0.4.0") && msg.contains("1.0.0, 1.1.0"),
        "{msg}"
    );

    let v = cni(None, &env, "{\"cniVersion\": \"1.0.0\",\n \"name\": }").error(6);
    assert!(v["msg"].as_str().unwrap().contains("line 2 column"), "{v}");

    let v = cni(
        None,
        &env,
        r#"{"cniVersion": "1.0.0", "type": "ciliate-cni"}"#,
    )
    .error(7);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(
        v["msg"].as_str().unwrap().contains("name is missing"),
        "{v}"
    );

    for (var, value, want) in [
        ("CNI_CONTAINERID", "", "CNI_CONTAINERID is not set"),
        ("CNI_CONTAINERID", "-bad", "CNI_CONTAINERID is invalid"),
        ("CNI_IFNAME", "a-very-long-ifname", "CNI_IFNAME is invalid"),
        ("CNI_IFNAME", "..", "CNI_IFNAME is invalid"),
        ("CNI_NETNS", "", "CNI_NETNS is not set"),
        ("CNI_ARGS", "FOO=bar", "CNI_ARGS is invalid"),
    ] {
        let mut env = env.clone();
        env.retain(|(k, _)| *k != var);
        env.push((var, value));
        let v = cni(None, &env, &good).error(4);
        assert!(
            v["msg"].as_str().unwrap().starts_with(want),
            "{var}={value:?}: {v}"
        );
    }

    // The namespace is gone: code 3, naming it.
    let v = cni(None, &env, &good).error(3);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("/var/run/netns/ciliate-none"),
        "{v}"
    );

    // The plugin's own namespace is not a container's.
    let own = add_env("/proc/self/ns/net", "c1");
    let v = cni(None, &own, &good).error(4);
    assert!(
        v["msg"].as_str().unwrap().contains("own network namespace"),
        "{v}"
    );
}

#[test]
fn status_without_agent_is_code_50_naming_the_socket() {
    let v = cni(
        None,
        &[("CNI_COMMAND", "STATUS")],
        &conf("1.1.0", Path::new(NO_AGENT)),
    )
    .error(50);
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains(NO_AGENT) && msg.contains("is ciliate-agent running?"),
        "{msg}"
    );
}

#[test]
fn gc_without_valid_attachments_is_refused() {
    let v = cni(
        None,
        &[("CNI_COMMAND", "GC")],
        &conf("1.1.0", Path::new(NO_AGENT)),
    )
    .error(7);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("cni.dev/valid-attachments"),
        "{v}"
    );
}

// ---------------------------------------------------------------------------------------------
// A fake agent: the endpoint API over a unix socket, in memory.

#[derive(Debug, Default)]
struct FakeState {
    /// By attachment: (container id, interface in the container), as the agent keys them.
    endpoints: BTreeMap<(String, String), Endpoint>,
    requests: Vec<EndpointCreateRequest>,
    deletes: Vec<String>,
    next_ip: u8,
    fail_create: bool,
}

type Shared = Arc<Mutex<FakeState>>;

struct FakeAgent {
    socket: PathBuf,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ApiError>)>;

fn not_found(what: &str) -> (StatusCode, Json<ApiError>) {
    (
        StatusCode::NOT_FOUND,
        Json(ApiError {
            kind: "not-found".into(),
            message: format!("no endpoint {what}"),
        }),
    )
}

impl FakeAgent {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Shared::default();
        let app = Router::new()
            .route(
                "/v1/healthz",
                get(|| async {
                    Json(Health {
                        status: "ok".into(),
                    })
                }),
            )
            .route("/v1/endpoints", post(create))
            .route("/v1/endpoints/gc", post(gc))
            .route("/v1/endpoints/{reference}", get(lookup).delete(delete))
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            socket,
            state,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `?ifname=`: the attachment's interface (the plugin always names it).
#[derive(Debug, serde::Deserialize)]
struct Attachment {
    ifname: Option<String>,
}

fn find(s: &FakeState, cid: &str, q: &Attachment) -> Option<(String, String)> {
    s.endpoints
        .keys()
        .find(|(c, i)| c == cid && q.ifname.as_ref().is_none_or(|want| want == i))
        .cloned()
}

async fn lookup(
    State(s): State<Shared>,
    UrlPath(reference): UrlPath<String>,
    Query(q): Query<Attachment>,
) -> ApiResult<Endpoint> {
    let s = s.lock().unwrap();
    find(&s, &reference, &q)
        .and_then(|k| s.endpoints.get(&k).cloned())
        .map(Json)
        .ok_or_else(|| not_found(&reference))
}

async fn create(
    State(s): State<Shared>,
    Json(req): Json<EndpointCreateRequest>,
) -> ApiResult<EndpointCreated> {
    let mut s = s.lock().unwrap();
    s.requests.push(req.clone());
    if s.fail_create {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(ApiError {
                kind: "datapath".into(),
                message: "injected failure".into(),
            }),
        ));
    }
    s.next_ip += 1;
    let ip = std::net::Ipv4Addr::new(10, 200, 0, 1 + s.next_ip);
    let ep = Endpoint {
        id: u16::from(s.next_ip),
        container_id: req.container_id.clone(),
        ifname: req.ifname,
        netns: req.netns,
        pod: req.pod,
        labels: req.labels,
        named_ports: Vec::new(),
        identity: 300,
        ipv4: ip,
        mac: req.mac,
        host_ifname: req.host_ifname,
        host_ifindex: req.host_ifindex,
        host_mac: req.host_mac,
        state: EndpointState::Ready,
        status_message: None,
        created_unix: 0,
    };
    s.endpoints
        .insert((req.container_id, ep.ifname.clone()), ep.clone());
    Ok(Json(EndpointCreated {
        endpoint: ep,
        address: ip.into(),
        gateway: GATEWAY_IPV4,
        mtu: 1500,
    }))
}

async fn delete(
    State(s): State<Shared>,
    UrlPath(cid): UrlPath<String>,
    Query(q): Query<Attachment>,
) -> Json<EndpointDeleted> {
    let mut s = s.lock().unwrap();
    s.deletes.push(cid.clone());
    let endpoint = find(&s, &cid, &q).and_then(|k| s.endpoints.remove(&k));
    let released = endpoint.as_ref().map(|e| e.ipv4);
    Json(EndpointDeleted { endpoint, released })
}

async fn gc(State(s): State<Shared>, Json(req): Json<GcRequest>) -> Json<GcResult> {
    let mut s = s.lock().unwrap();
    let keep: Vec<_> = req
        .valid_attachments
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let (kept, removed): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut s.endpoints)
        .into_iter()
        .partition(|(_, e)| keep.contains(&(e.container_id.clone(), e.ifname.clone())));
    s.endpoints = kept;
    Json(GcResult {
        removed: removed.into_values().collect(),
    })
}

// ---------------------------------------------------------------------------------------------

fn links(ns: &TestNetns) -> Vec<String> {
    ns.exec("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

#[test]
fn add_check_del_lifecycle() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("cninode");
    let pod = TestNetns::new("cnipod");
    let agent = FakeAgent::start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let netns = pod.path();
    let config = conf("1.1.0", &agent.socket);
    let mut env = add_env(&netns, "ctr-1");
    env.push(("CNI_ARGS", "K8S_POD_NAME=web-0;CILIATE_LABELS=tier=front"));
    let log_path = log.path().to_str().unwrap().to_owned();
    env.push(("CILIATE_CNI_LOG", &log_path));
    let host = host_ifname("ctr-1", "eth0");

    let out = cni(Some(&node), &env, &config);
    assert_eq!(out.status, 0, "{out:?}");
    let result = out.json();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], host.as_str());
    assert!(result["interfaces"][0].get("sandbox").is_none());
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], netns.as_str());
    assert_eq!(
        result["ips"],
        json!([{"address": "10.200.0.2/32", "gateway": "169.254.1.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    assert_eq!(result["dns"], json!({}));

    {
        let s = agent.state();
        let req = &s.requests[0];
        assert_eq!(req.host_ifname, host);
        assert_eq!(req.pod.as_ref().unwrap().to_string(), "default/web-0");
        assert_eq!(req.labels.to_string(), "k8s:app=web,k8s:tier=front");
        assert_eq!(req.netns, netns);
    }
    let addr = pod.exec("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("10.200.0.2/32"), "{addr}");
    let routes = pod.exec("ip", &["route"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    let neigh = pod.exec("ip", &["neigh", "show", "dev", "eth0"]);
    let host_mac = result["interfaces"][0]["mac"].as_str().unwrap();
    assert!(
        neigh.contains(&format!("169.254.1.1 lladdr {host_mac} PERMANENT")),
        "{neigh}"
    );
    let node_routes = node.exec("ip", &["route"]);
    assert!(
        node_routes
            .lines()
            .any(|l| l.starts_with(&format!("10.200.0.2 dev {host} ")) && l.contains("scope link")),
        "{node_routes}"
    );
    assert!(std::fs::read_to_string(log.path())
        .unwrap()
        .contains("ADD ctr-1/eth0"));

    // CHECK with our own result as prevResult passes, silently.
    let mut check_conf: Value = serde_json::from_str(&config).unwrap();
    check_conf["prevResult"] = result.clone();
    let mut check_env = env.clone();
    check_env[0] = ("CNI_COMMAND", "CHECK");
    cni(Some(&node), &check_env, &check_conf.to_string()).ok_silent();

    // A second ADD of the same container is refused and touches nothing.
    let v = cni(Some(&node), &env, &config).error(100);
    assert!(v["msg"].as_str().unwrap().contains("ctr-1"), "{v}");
    assert!(pod.exec("ip", &["-o", "addr"]).contains("10.200.0.2/32"));

    // CHECK notices what is missing.
    pod.exec("ip", &["route", "del", "default"]);
    let v = cni(Some(&node), &check_env, &check_conf.to_string()).error(103);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("default route via 169.254.1.1"),
        "{v}"
    );

    let mut del_env = env.clone();
    del_env[0] = ("CNI_COMMAND", "DEL");
    cni(Some(&node), &del_env, &check_conf.to_string()).ok_silent();
    assert_eq!(links(&node), vec!["lo"]);
    assert_eq!(links(&pod), vec!["lo"]);
    assert!(agent.state().endpoints.is_empty());
    // DEL again, and DEL without a namespace, still succeed.
    cni(Some(&node), &del_env, &config).ok_silent();
    del_env.retain(|(k, _)| *k != "CNI_NETNS");
    cni(Some(&node), &del_env, &config).ok_silent();

    let v = cni(Some(&node), &check_env, &check_conf.to_string()).error(103);
    assert!(v["msg"].as_str().unwrap().contains("no endpoint"), "{v}");
}

#[test]
fn a_failed_add_leaves_nothing_behind() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("cninode");
    let pod = TestNetns::new("cnipod");
    let agent = FakeAgent::start();
    agent.state().fail_create = true;
    let netns = pod.path();

    let v = cni(
        Some(&node),
        &add_env(&netns, "ctr-2"),
        &conf("1.0.0", &agent.socket),
    )
    .error(101);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(
        v["msg"].as_str().unwrap().contains("injected failure"),
        "{v}"
    );
    assert_eq!(links(&node), vec!["lo"]);
    assert_eq!(links(&pod), vec!["lo"]);
    assert_eq!(
        agent.state().deletes,
        vec!["ctr-2"],
        "the endpoint is released too"
    );
}

#[test]
fn an_existing_pod_interface_is_refused_untouched() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("cninode");
    let pod = TestNetns::new("cnipod");
    pod.exec(
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ],
    );
    let agent = FakeAgent::start();
    let netns = pod.path();

    let v = cni(
        Some(&node),
        &add_env(&netns, "ctr-3"),
        &conf("1.1.0", &agent.socket),
    )
    .error(100);
    assert!(v["msg"].as_str().unwrap().contains("eth0"), "{v}");
    assert_eq!(links(&node), vec!["lo"]);
    assert!(agent.state().requests.is_empty());
}

#[test]
fn an_unreachable_agent_is_try_again_later() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("cninode");
    let pod = TestNetns::new("cnipod");
    let netns = pod.path();
    let config = conf("1.1.0", Path::new(NO_AGENT));

    let v = cni(Some(&node), &add_env(&netns, "ctr-4"), &config).error(11);
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains(NO_AGENT) && msg.contains("is ciliate-agent running?"),
        "{msg}"
    );
    assert_eq!(links(&node), vec!["lo"]);

    // DEL still removes the veth, then asks to be retried for the address.
    let host = host_ifname("ctr-4", "eth0");
    node.exec(
        "ip",
        &[
            "link", "add", &host, "type", "veth", "peer", "name", "peer0",
        ],
    );
    let mut env = add_env(&netns, "ctr-4");
    env[0] = ("CNI_COMMAND", "DEL");
    cni(Some(&node), &env, &config).error(11);
    assert_eq!(links(&node), vec!["lo"]);
}

#[test]
fn gc_removes_what_is_not_listed() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("cninode");
    let pod1 = TestNetns::new("cnipod");
    let pod2 = TestNetns::new("cnipod");
    let agent = FakeAgent::start();
    let config = conf("1.1.0", &agent.socket);
    let (ns1, ns2) = (pod1.path(), pod2.path());
    assert_eq!(cni(Some(&node), &add_env(&ns1, "keep"), &config).status, 0);
    assert_eq!(cni(Some(&node), &add_env(&ns2, "drop"), &config).status, 0);

    let mut gc_conf: Value = serde_json::from_str(&config).unwrap();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    cni(Some(&node), &[("CNI_COMMAND", "GC")], &gc_conf.to_string()).ok_silent();

    let left = links(&node);
    assert!(left.contains(&host_ifname("keep", "eth0")), "{left:?}");
    assert!(!left.contains(&host_ifname("drop", "eth0")), "{left:?}");
    assert_eq!(links(&pod2), vec!["lo"]);
    assert_eq!(
        agent.state().endpoints.keys().collect::<Vec<_>>(),
        vec![&("keep".to_owned(), "eth0".to_owned())]
    );
}

#[test]
fn status_with_a_healthy_agent_is_silent_success() {
    let agent = FakeAgent::start();
    cni(
        None,
        &[("CNI_COMMAND", "STATUS")],
        &conf("1.1.0", &agent.socket),
    )
    .ok_silent();
}

#[test]
fn an_attachment_is_a_container_and_an_interface() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("cninode");
    let pod = TestNetns::new("cnipod");
    let agent = FakeAgent::start();
    let config = conf("1.1.0", &agent.socket);
    let netns = pod.path();
    // An all-digit container id is a container id, not an endpoint id.
    let eth0 = add_env(&netns, "1");
    assert_eq!(cni(Some(&node), &eth0, &config).status, 0);

    // The runtime adds a second interface; the agent fails it; the runtime cleans up with a
    // DEL of that interface. The container's eth0 must survive all of it.
    let mut eth1 = eth0.clone();
    eth1[3] = ("CNI_IFNAME", "eth1");
    agent.state().fail_create = true;
    cni(Some(&node), &eth1, &config).error(101);
    agent.state().fail_create = false;
    let mut del1 = eth1.clone();
    del1[0] = ("CNI_COMMAND", "DEL");
    cni(Some(&node), &del1, &config).ok_silent();
    assert!(
        links(&node).contains(&host_ifname("1", "eth0")),
        "{:?}",
        links(&node)
    );
    assert!(links(&pod).contains(&"eth0".to_owned()));
    assert_eq!(
        agent.state().endpoints.keys().collect::<Vec<_>>(),
        vec![&("1".to_owned(), "eth0".to_owned())]
    );

    // Both interfaces can live side by side, and each DEL takes only its own.
    assert_eq!(cni(Some(&node), &eth1, &config).status, 0);
    assert_eq!(agent.state().endpoints.len(), 2);
    cni(Some(&node), &del1, &config).ok_silent();
    assert_eq!(
        agent.state().endpoints.keys().collect::<Vec<_>>(),
        vec![&("1".to_owned(), "eth0".to_owned())]
    );
    let mut del0 = eth0.clone();
    del0[0] = ("CNI_COMMAND", "DEL");
    cni(Some(&node), &del0, &config).ok_silent();
    assert!(agent.state().endpoints.is_empty());
    assert_eq!(links(&node), vec!["lo"]);
}
