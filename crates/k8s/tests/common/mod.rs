//! A scripted API server for the source's tests: kube's `Client` over `tower_test`'s mock
//! service, answering each request as the test says, with bodies shaped as the API server's.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower_test::mock;

/// A response body: a list in one piece, or a watch stream fed line by line.
pub type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>;

type Handle = mock::Handle<Request<kube::client::Body>, Response<Body>>;

/// How long a test waits for the source to do the next thing before failing (instead of
/// hanging). Not a timing assertion: every step is driven by the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The scripted API server.
pub struct ApiServer {
    handle: Handle,
}

/// A client connected to a new scripted API server.
pub fn pair() -> (kube::Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<kube::client::Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

/// One request the source made.
pub struct Call {
    /// The path, e.g. `/api/v1/pods`.
    pub path: String,
    /// The query, decoded.
    pub query: BTreeMap<String, String>,
    respond: mock::SendResponse<Response<Body>>,
}

impl Call {
    /// Answers with a JSON body (a list, or a Status).
    pub fn json(self, status: u16, body: &Value) {
        self.text(status, body.to_string());
    }

    /// Answers with a body already rendered.
    pub fn text(self, status: u16, body: String) {
        let bytes = Bytes::from(body);
        let stream = futures::stream::once(async move { Ok(Frame::data(bytes)) }).boxed();
        self.send(status, stream);
    }

    /// Answers 200 with a watch stream, and returns its writer.
    pub fn watch(self) -> WatchStream {
        let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk.map(Frame::data), rx))
        })
        .boxed();
        self.send(200, stream);
        WatchStream { tx }
    }

    fn send(self, status: u16, stream: BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream))
            .expect("a valid response");
        self.respond.send_response(response);
    }

    /// Whether this is a watch (`watch=true`) rather than a list.
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

impl ApiServer {
    /// The next request.
    pub async fn next(&mut self) -> Call {
        let (request, respond) = tokio::time::timeout(PATIENCE, self.handle.next_request())
            .await
            .expect("the source made no request")
            .expect("the client is gone");
        assert_eq!(request.method(), http::Method::GET);
        let uri = request.uri();
        let query = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
        Call {
            path: uri.path().to_owned(),
            query,
            respond,
        }
    }

    /// The next request, which must be a list of `path`.
    pub async fn expect_list(&mut self, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(call.path, path, "query {:?}", call.query);
        assert!(
            !call.is_watch(),
            "a watch where a list was due: {:?}",
            call.query
        );
        call
    }

    /// The next request, which must be a watch of `path` from `resource_version`.
    pub async fn expect_watch(&mut self, path: &str, resource_version: &str) -> Call {
        let call = self.next().await;
        assert_eq!(call.path, path, "query {:?}", call.query);
        assert!(
            call.is_watch(),
            "a list where a watch was due: {:?}",
            call.query
        );
        assert_eq!(
            call.query.get("resourceVersion").map(String::as_str),
            Some(resource_version),
            "query {:?}",
            call.query
        );
        call
    }
}

/// The writing end of a watch response.
pub struct WatchStream {
    tx: mpsc::UnboundedSender<Result<Bytes, std::io::Error>>,
}

impl WatchStream {
    /// One watch event line, `{"type":..,"object":..}\n`.
    pub fn event(&self, kind: &str, object: &Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.raw(line.as_bytes());
    }

    /// A BOOKMARK as the API server sends it: only the type and `metadata.resourceVersion`.
    pub fn bookmark(&self, api_version: &str, kind: &str, resource_version: &str) {
        self.event(
            "BOOKMARK",
            &json!({"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": resource_version, "creationTimestamp": null},
                    "spec": {"containers": null}, "status": {}}),
        );
    }

    /// The ERROR event the API server sends when the watch's resourceVersion is too old.
    pub fn gone(&self, requested: &str, oldest: &str) {
        self.event(
            "ERROR",
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {requested} ({oldest})"),
                    "reason": "Expired", "code": 410}),
        );
    }

    /// Bytes as they are.
    pub fn raw(&self, bytes: &[u8]) {
        // The receiver is gone only if the client already dropped the response.
        let _ = self.tx.send(Ok(Bytes::copy_from_slice(bytes)));
    }

    /// The connection breaks: the body fails with an I/O error.
    pub fn break_connection(self) {
        let _ = self.tx.send(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
    }

    /// The API server ends the watch (as at `timeoutSeconds`): the body ends cleanly.
    pub fn end(self) {}
}

/// A fixture file of `tests/fixtures`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A list as the API server returns it: `kind` `<Kind>List`, the collection's
/// `resourceVersion`, items without `apiVersion`/`kind`.
pub fn list(api_version: &str, kind: &str, resource_version: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

/// A small Pod as a watch event carries it (with `apiVersion` and `kind`).
pub fn pod(name: &str, resource_version: &str, ip: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"),
                     "resourceVersion": resource_version, "labels": {"app": name},
                     "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.37"}], "nodeName": "node-a"},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// The same Pod as a list item (no `apiVersion`/`kind`).
pub fn pod_item(name: &str, resource_version: &str, ip: &str) -> Value {
    let mut v = pod(name, resource_version, ip);
    let map = v.as_object_mut().expect("an object");
    map.remove("kind");
    map.remove("apiVersion");
    v
}
