//! The UI over a real Observer: the agent's own ring and gRPC service on a unix socket, fed
//! with flows, followed by the UI's source task through the generated client; the HTTP API
//! driven through its router. Live updates, bad filters, a source that goes away and too
//! many viewers.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ciliate_observer::proto::flow::Flow;
use ciliate_observer::server::{bind_unix, serve_unix, Service};
use ciliate_observer::{Observer, ObserverConfig, Snapshot};
use ciliate_ui::{synthetic, Source, Ui};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

struct Fixture {
    observer: Arc<Observer>,
    /// Stops the Observer: its runtime, with every connection it serves, is dropped.
    stop: Option<std::sync::mpsc::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
    ui: Arc<Ui>,
    feed: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn fixture(flows: Vec<Flow>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hubble.sock");
    let observer = Arc::new(Observer::new(
        ObserverConfig {
            node_name: "test".into(),
            capacity: 4096,
        },
        Arc::new(Snapshot::default()),
    ));
    for f in flows {
        observer.push_flow(f);
    }
    // The Observer on a runtime of its own, so that going away drops its connections too
    // (as a process exiting would), not only its listener.
    let service = Service::new(observer.clone(), "test", "unix");
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready, is_ready) = std::sync::mpsc::channel::<()>();
    let at = sock.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let listener = bind_unix(&at).unwrap();
            ready.send(()).unwrap();
            serve_unix(service, listener, std::future::pending())
                .await
                .unwrap();
        });
        let _ = stopped.recv();
        rt.shutdown_background();
    });
    is_ready.recv().unwrap();
    let (ui, feed) = ciliate_ui::start(Source::Unix(sock), 1000);
    Fixture {
        observer,
        stop: Some(stop),
        server: Some(server),
        ui,
        feed,
        _dir: dir,
    }
}

async fn get(ui: &Arc<Ui>, uri: &str) -> (StatusCode, Value) {
    let resp = ui
        .clone()
        .router()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Polls `/api/snapshot` until `ok` holds (the source task is asynchronous).
async fn wait_for(ui: &Arc<Ui>, uri: &str, ok: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (status, v) = get(ui, uri).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if ok(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{uri} never got there: {}", get(ui, uri).await.1);
}

fn has_edge(v: &Value, from: &str, to: &str) -> bool {
    v["graph"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from"] == from && e["to"] == to)
}

/// The next `snapshot` event of a server-sent event stream.
async fn next_event(body: &mut Body) -> Value {
    let mut buf = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("an event within 20 s")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.lines().any(|l| l == "event: snapshot") {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return serde_json::from_str(&data).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_follows_the_observer_live() {
    let f = fixture(synthetic::cluster(20, 2, 1_000)).await;
    let v = wait_for(&f.ui, "/api/snapshot", |v| v["status"]["received"] == 40).await;
    assert_eq!(v["status"]["state"], "connected");
    assert_eq!(v["graph"]["flows"], 40);
    // w3 calls w5 through Service w5 ((3 + 2) % 5 == 0), and that call carries an HTTP GET.
    assert!(has_edge(&v, "w:ns0/w3", "s:ns0/w5"), "{v:#}");
    assert!(has_edge(&v, "s:ns0/w5", "w:ns0/w5"));
    // (6 + 1) % 7 == 0: w6 -> w7 is dropped, red.
    let red = v["graph"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == "w:ns0/w6" && e["to"] == "w:ns0/w7")
        .unwrap();
    assert_eq!(red["verdict"], "dropped");
    assert_eq!(red["dropReasons"][0], "Policy denied");
    assert_eq!(v["flows"].as_array().unwrap().len(), 40);

    // The same filters as `ciliate observe`: only drops.
    let (status, d) = get(&f.ui, "/api/snapshot?verdict=DROPPED&limit=5").await;
    assert_eq!(status, StatusCode::OK);
    assert!(d["graph"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["verdict"] == "dropped"));
    assert!(d["flows"].as_array().unwrap().len() <= 5);
    assert!(d["flows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["verdict"] == "DROPPED"));

    // Live: the stream's first event is the current map; a new flow brings another.
    let resp =
        f.ui.clone()
            .router()
            .oneshot(
                Request::get("/api/events?namespace=ns0")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = next_event(&mut body).await;
    assert!(!has_edge(&first, "w:ns0/w0", "w:ns0/w19"));
    let mut new = synthetic::call(20, 0, 19, 1_001);
    new.destination_service = None;
    f.observer.push_flow(new);
    let mut seen = false;
    for _ in 0..10 {
        let e = next_event(&mut body).await;
        if has_edge(&e, "w:ns0/w0", "w:ns0/w19") {
            seen = true;
            break;
        }
    }
    assert!(seen, "the new connection reached the live stream");
    drop(body);

    // The source goes away: the page is told why, and keeps the last map.
    let mut f = f;
    drop(f.stop.take());
    f.server.take().unwrap().join().unwrap();
    let gone = wait_for(&f.ui, "/api/snapshot", |v| v["status"]["state"] == "error").await;
    let err = gone["status"]["error"].as_str().unwrap();
    assert!(
        err.contains("hubble.sock") || err.contains("flow stream"),
        "{err}"
    );
    assert_eq!(gone["graph"]["flows"], 41);
    f.feed.abort();
}

#[tokio::test]
async fn bad_filters_are_refused_naming_the_parameter() {
    let f = fixture(Vec::new()).await;
    for (uri, word) in [
        ("/api/snapshot?verdict=maybe", "verdict"),
        ("/api/snapshot?colour=red", "unknown filter"),
        ("/api/snapshot?to_port=99999", "to_port"),
        ("/api/snapshot?http_path=%28", "http_path"),
        ("/api/snapshot?limit=0", "limit"),
        ("/api/events?protocol=quic", "protocol"),
        // The filters of `ciliate observe` the page took over with its builder.
        ("/api/snapshot?tcp_flags=syn,nope", "filter tcp_flags="),
        (
            "/api/snapshot?from_identity=nobody",
            "filter from_identity=",
        ),
        (
            "/api/snapshot?not_node_label=a%20in%20b",
            "filter not_node_label=",
        ),
        ("/api/snapshot?ip_trace_id=0", "filter ip_trace_id="),
        ("/api/snapshot?encrypted&unencrypted", "filter unencrypted="),
        (
            "/api/events?from_ip=1.2.3.4&from_fqdn=a.io",
            "filter from_fqdn=",
        ),
        (
            "/api/snapshot?cel_expression=true",
            "filter cel_expression=",
        ),
    ] {
        let (status, v) = get(&f.ui, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(word), "{uri}: {e}");
    }
    f.feed.abort();
}

#[tokio::test]
async fn an_unreachable_source_is_reported_and_viewers_are_bounded() {
    let (ui, feed) = ciliate_ui::start(Source::Unix("/nonexistent/hubble.sock".into()), 10);
    let v = wait_for(&ui, "/api/snapshot", |v| v["status"]["state"] == "error").await;
    let e = v["status"]["error"].as_str().unwrap();
    assert!(
        e.contains("cannot reach the observer at unix:///nonexistent/hubble.sock"),
        "{e}"
    );
    // Every viewer holds a slot until its browser goes away.
    let open = || async {
        ui.clone()
            .router()
            .oneshot(Request::get("/api/events").body(Body::empty()).unwrap())
            .await
            .unwrap()
    };
    let mut streams = Vec::new();
    for _ in 0..ciliate_ui::api::MAX_VIEWERS {
        let r = open().await;
        assert_eq!(r.status(), StatusCode::OK);
        streams.push(r);
    }
    let refused = open().await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    streams.pop();
    assert_eq!(open().await.status(), StatusCode::OK);
    feed.abort();
}

#[tokio::test]
async fn the_page_and_its_assets_are_served() {
    let (ui, feed) = ciliate_ui::start(Source::Unix("/nonexistent/hubble.sock".into()), 10);
    for (uri, kind, needle) in [
        ("/", "text/html", "<svg id=\"map\""),
        ("/app.js", "text/javascript", "EventSource"),
        ("/style.css", "text/css", ".edge.dropped"),
    ] {
        let resp = ui
            .clone()
            .router()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{uri}: {ct}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(needle), "{uri}");
    }
    feed.abort();
}
