//! Client of the agent's API: JSON over HTTP/1.1 on a unix socket (see [`ciliate_model::api`]).
//!
//! Shared by the `ciliate` CLI and the CNI plugin. Each request opens its own connection:
//! the callers are short-lived processes that make a handful of calls, so pooling would add
//! state without saving anything measurable, and a fresh connection never inherits a
//! half-broken one.
//!
//! The client needs a tokio runtime (either flavour): each connection is driven by a task
//! spawned on it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ciliate_client::ClientError> {
//! let client = ciliate_client::Client::new(ciliate_model::api::DEFAULT_SOCKET);
//! for ep in client.endpoints().await? {
//!     println!("{} {}", ep.id, ep.ipv4);
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ciliate_model::api::{
    ApiError, CtEntry, EndpointCreateRequest, EndpointCreated, EndpointDeleted, FqdnCacheCleaned,
    FqdnCacheEntry, GcRequest, GcResult, Health, Status,
};
use ciliate_model::lb::LbState;
use ciliate_model::manifest::{ApplyRequest, ApplyResult};
use ciliate_model::monitor::MonitorEvent;
use ciliate_model::policy::{PolicyRef, PolicyResource};
use ciliate_model::policy_api::{
    BpfPolicyView, PolicyRevision, PolicyTrace, PolicyValidation, PolicyView,
};
use ciliate_model::service::ServiceView;
use ciliate_model::{Endpoint, Identity};
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// How long a request may take, from connecting to the last byte of the answer, unless
/// [`Client::with_timeout`] says otherwise. Generous, because a CNI ADD waits for the agent
/// to program the datapath; but finite, so a wedged agent cannot hang a container runtime.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest NDJSON line the monitor stream accepts. Events are a few hundred bytes; a line
/// this long means the other side is not speaking our protocol, and buffering it forever
/// would only exhaust memory.
const MAX_LINE: usize = 1 << 20;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected: the agent is not running, or the path is wrong,
    /// or we may not open it.
    #[error(
        "cannot reach the agent at {}: {source} (is ciliate-agent running? set --socket or CILIATE_SOCKET)",
        socket.display()
    )]
    Unreachable {
        /// The socket we tried.
        socket: PathBuf,
        /// What connecting said.
        source: io::Error,
    },
    /// The socket exists but we may not open it: the agent's socket is root-only.
    #[error(
        "the agent's socket {} is root-only: run as root (sudo), or set --socket or \
         CILIATE_SOCKET to one you may open",
        socket.display()
    )]
    PermissionDenied {
        /// The socket we tried.
        socket: PathBuf,
    },
    /// The agent answered with an error status; its message says what to do.
    #[error("{}", error.message)]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The agent's error body.
        error: ApiError,
    },
    /// The agent did not answer in time.
    #[error("the agent at {} did not answer within {}s", socket.display(), after.as_secs())]
    Timeout {
        /// The socket we used.
        socket: PathBuf,
        /// The limit that passed.
        after: Duration,
    },
    /// The conversation broke at the HTTP level (connection reset, malformed answer).
    #[error("{0}")]
    Protocol(String),
    /// The answer was not the JSON we expected: usually a client and agent of different versions.
    #[error("cannot decode {what}: {source} (are the client and agent the same version?)")]
    Decode {
        /// Which answer, e.g. `GET /v1/status`.
        what: String,
        /// What serde said.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The agent's error kind (`not-found`, `conflict`, ...) when the agent answered with an error.
    pub fn api_kind(&self) -> Option<&str> {
        match self {
            Self::Api { error, .. } => Some(&error.kind),
            _ => None,
        }
    }

    /// The HTTP status when the agent answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A handle on the agent's API socket. Cheap to clone; holds no connection.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the agent listening on `socket`. Nothing is connected until a call.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-request timeout (the monitor stream has none).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/healthz`: whether the agent serves.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/healthz").await
    }

    /// `GET /v1/status`: the agent's and datapath's state.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/config`: the configuration in force, as the agent serialises it.
    pub async fn config(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/config").await
    }

    /// `GET /v1/bpf/ipcache`: the datapath's ipcache (prefix → identity, tunnel endpoint).
    pub async fn bpf_ipcache(
        &self,
    ) -> Result<Vec<ciliate_model::bpf_policy::IpcacheEntry>, ClientError> {
        self.get("/v1/bpf/ipcache").await
    }

    /// `GET /v1/bpf/endpoints`: the datapath's endpoint map, read back.
    pub async fn bpf_endpoints(&self) -> Result<Vec<ciliate_model::api::BpfEndpoint>, ClientError> {
        self.get("/v1/bpf/endpoints").await
    }

    /// `GET /v1/nodes`: the nodes this agent knows (itself alone outside a cluster).
    pub async fn nodes(&self) -> Result<Vec<ciliate_model::api::NodeView>, ClientError> {
        self.get("/v1/nodes").await
    }

    /// `GET /v1/endpoints`: every endpoint of this node.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.get("/v1/endpoints").await
    }

    /// `GET /v1/endpoints/{ref}`: one endpoint by id, container id or `namespace/pod`.
    pub async fn endpoint(&self, reference: &str) -> Result<Endpoint, ClientError> {
        self.get(&format!("/v1/endpoints/{}", encode_segment(reference)))
            .await
    }

    /// `POST /v1/endpoints`: registers a pod interface the CNI plugin has created.
    pub async fn create_endpoint(
        &self,
        request: &EndpointCreateRequest,
    ) -> Result<EndpointCreated, ClientError> {
        self.call(Method::POST, "/v1/endpoints", Some(request))
            .await
    }

    /// `DELETE /v1/endpoints/{cid}`: removes a container's endpoint. Succeeds when there is none.
    pub async fn delete_endpoint(
        &self,
        container_id: &str,
    ) -> Result<EndpointDeleted, ClientError> {
        let path = format!("/v1/endpoints/{}", encode_segment(container_id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v1/endpoints/{cid}?ifname=..`: the endpoint of one attachment (container id,
    /// interface in the container), as CNI names it; a container id of digits is never read as
    /// an endpoint id.
    pub async fn attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Endpoint, ClientError> {
        self.get(&format!(
            "/v1/endpoints/{}?ifname={}",
            encode_segment(container_id),
            encode_segment(ifname)
        ))
        .await
    }

    /// `DELETE /v1/endpoints/{cid}?ifname=..`: removes the endpoint of one attachment; the
    /// container's other interfaces stay. Succeeds when there is none.
    pub async fn delete_attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<EndpointDeleted, ClientError> {
        let path = format!(
            "/v1/endpoints/{}?ifname={}",
            encode_segment(container_id),
            encode_segment(ifname)
        );
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /v1/endpoints/gc`: removes every endpoint not among the valid attachments.
    pub async fn gc(&self, request: &GcRequest) -> Result<GcResult, ClientError> {
        self.call(Method::POST, "/v1/endpoints/gc", Some(request))
            .await
    }

    /// `GET /v1/identities`: the identities known on this node, reserved ones included.
    pub async fn identities(&self) -> Result<Vec<Identity>, ClientError> {
        self.get("/v1/identities").await
    }

    /// `GET /v1/identities/{id}`: one identity.
    pub async fn identity(&self, id: u32) -> Result<Identity, ClientError> {
        self.get(&format!("/v1/identities/{id}")).await
    }

    /// `GET /v1/bpf/ct`: the connection-tracking table.
    pub async fn ct_entries(&self) -> Result<Vec<CtEntry>, ClientError> {
        self.get("/v1/bpf/ct").await
    }

    /// `GET /v1/fqdn/cache[?matchpattern=]`: the names learned from DNS answers, with their
    /// addresses; `pattern` (a name, or `*` within a label) keeps the names it matches.
    pub async fn fqdn_cache(
        &self,
        pattern: Option<&str>,
    ) -> Result<Vec<FqdnCacheEntry>, ClientError> {
        self.get(&fqdn_path(pattern)).await
    }

    /// `DELETE /v1/fqdn/cache[?matchpattern=]`: forgets the names (all, or those `pattern`
    /// matches); their addresses leave the policy maps.
    pub async fn fqdn_cache_clean(
        &self,
        pattern: Option<&str>,
    ) -> Result<FqdnCacheCleaned, ClientError> {
        self.call(Method::DELETE, &fqdn_path(pattern), None::<&()>)
            .await
    }

    /// `POST /v1/manifests`: applies (or, with `delete`, deletes) Kubernetes objects, all
    /// or nothing. An invalid batch is an [`ClientError::Api`] of kind `invalid` whose message
    /// lists every problem, one per line.
    pub async fn apply(&self, request: &ApplyRequest) -> Result<ApplyResult, ClientError> {
        self.call(Method::POST, "/v1/manifests", Some(request))
            .await
    }

    /// [`Client::apply`] of documents kept as JSON text: the same request body, without a
    /// JSON value of each document.
    pub async fn apply_raw(
        &self,
        request: &ciliate_model::manifest::raw::RawApplyRequest,
    ) -> Result<ApplyResult, ClientError> {
        self.call(Method::POST, "/v1/manifests", Some(request))
            .await
    }

    /// `POST /v1/manifests` in the streamed form
    /// ([`ciliate_model::manifest::raw::STREAM_CONTENT_TYPE`]): the body is sent as `chunks`
    /// yields it, so the agent decodes while the caller still parses. A chunk that is an
    /// error breaks the body off: the agent then applies nothing, and this answers that error
    /// or the agent's.
    pub async fn apply_stream<S>(&self, chunks: S) -> Result<ApplyResult, ClientError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        use futures::TryStreamExt;
        let what = "POST /v1/manifests";
        let body = http_body_util::StreamBody::new(chunks.map_ok(hyper::body::Frame::data));
        self.within_timeout(async {
            let response = self
                .send_body(
                    Method::POST,
                    "/v1/manifests",
                    Some(ciliate_model::manifest::raw::STREAM_CONTENT_TYPE),
                    body,
                )
                .await?;
            let bytes = read_body(response.into_body(), what).await?;
            serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
                what: what.to_owned(),
                source,
            })
        })
        .await
    }

    /// `GET /v1/services`: every Service with its frontends and backends.
    pub async fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        self.get("/v1/services").await
    }

    /// `GET /v1/services/{namespace}/{name}`: one Service.
    pub async fn service(&self, namespace: &str, name: &str) -> Result<ServiceView, ClientError> {
        self.get(&format!(
            "/v1/services/{}/{}",
            encode_segment(namespace),
            encode_segment(name)
        ))
        .await
    }

    /// `GET /v1/bpf/lb`: the load-balancing maps as the datapath holds them.
    pub async fn lb_state(&self) -> Result<LbState, ClientError> {
        self.get("/v1/bpf/lb").await
    }

    /// `GET /v1/policies`: the network policies in force, with how many endpoints of this
    /// node each selects and what each does not enforce as written.
    pub async fn policies(&self) -> Result<Vec<PolicyView>, ClientError> {
        self.get("/v1/policies").await
    }

    /// `GET /v1/policies/{kind}/{namespace}/{name}` (or `{kind}/{name}` for a clusterwide
    /// policy): one policy as it was applied.
    pub async fn policy(&self, policy: &PolicyRef) -> Result<PolicyResource, ClientError> {
        let path = match &policy.namespace {
            Some(ns) => format!(
                "/v1/policies/{}/{}/{}",
                policy.kind,
                encode_segment(ns),
                encode_segment(&policy.name)
            ),
            None => format!(
                "/v1/policies/{}/{}",
                policy.kind,
                encode_segment(&policy.name)
            ),
        };
        self.get(&path).await
    }

    /// `POST /v1/policies/validate`: every problem of a batch of manifests; nothing is applied.
    pub async fn validate_policies(
        &self,
        request: &ApplyRequest,
    ) -> Result<PolicyValidation, ClientError> {
        self.call(Method::POST, "/v1/policies/validate", Some(request))
            .await
    }

    /// `POST /v1/policy/whatif`: recorded flows replayed through proposed policies (nothing is
    /// applied).
    pub async fn policy_whatif(
        &self,
        request: &ciliate_model::whatif::WhatIfRequest,
    ) -> Result<ciliate_model::whatif::WhatIfReport, ClientError> {
        self.call(Method::POST, "/v1/policy/whatif", Some(request))
            .await
    }

    /// `GET /v1/policy/trace`: would a flow from `src` to `dst` on `proto` (`tcp`, `udp`,
    /// `sctp`, `icmp`) port `dport` (ICMP: type) pass, and which rule decides. `src` and `dst`
    /// are a pod (`namespace/name`), an endpoint or container id, an IPv4 address or labels.
    pub async fn policy_trace(
        &self,
        src: &str,
        dst: &str,
        dport: u16,
        proto: &str,
    ) -> Result<PolicyTrace, ClientError> {
        self.get(&format!(
            "/v1/policy/trace?src={}&dst={}&dport={dport}&proto={}",
            encode_segment(src),
            encode_segment(dst),
            encode_segment(proto)
        ))
        .await
    }

    /// `GET /v1/policy/trace` with an HTTP request: as [`Client::policy_trace`], and the L7
    /// proxy's verdict on the request where a side redirects the port.
    pub async fn policy_trace_http(
        &self,
        src: &str,
        dst: &str,
        dport: u16,
        proto: &str,
        http: &ciliate_model::policy_api::TraceHttp,
    ) -> Result<PolicyTrace, ClientError> {
        let mut path = format!(
            "/v1/policy/trace?src={}&dst={}&dport={dport}&proto={}&httpMethod={}&httpPath={}",
            encode_segment(src),
            encode_segment(dst),
            encode_segment(proto),
            encode_segment(&http.method),
            encode_segment(&http.path),
        );
        if !http.host.is_empty() {
            path.push_str(&format!("&httpHost={}", encode_segment(&http.host)));
        }
        if !http.headers.is_empty() {
            path.push_str(&format!(
                "&httpHeader={}",
                encode_segment(&http.headers.join("\n"))
            ));
        }
        self.get(&path).await
    }

    /// `GET /v1/policy/revision`: the node's policy revision and the one in force.
    pub async fn policy_revision(&self) -> Result<PolicyRevision, ClientError> {
        self.get("/v1/policy/revision").await
    }

    /// `GET /v1/bpf/policy/{ref}`: an endpoint's policy map as the datapath holds it.
    pub async fn bpf_policy(&self, reference: &str) -> Result<BpfPolicyView, ClientError> {
        self.get(&format!("/v1/bpf/policy/{}", encode_segment(reference)))
            .await
    }

    /// `GET /v1/monitor[?type=kind]`: datapath events as they happen.
    ///
    /// Connecting and the agent's answer are checked before this returns (within the
    /// request timeout), so a wrong socket or a bad `kind` fails here rather than as the
    /// stream's first item. The stream itself has no timeout: it runs until the agent
    /// closes it or the caller drops it. A broken line or connection yields one error and
    /// ends the stream.
    pub async fn monitor(
        &self,
        kind: Option<&str>,
    ) -> Result<impl Stream<Item = Result<MonitorEvent, ClientError>> + Send + 'static, ClientError>
    {
        let path = match kind {
            Some(kind) => format!("/v1/monitor?type={}", encode_segment(kind)),
            None => "/v1/monitor".to_owned(),
        };
        let response = self
            .within_timeout(self.send(Method::GET, &path, None))
            .await?;
        let state = Ndjson {
            body: response.into_body(),
            buf: Vec::new(),
            done: false,
            what: format!("GET {path} event"),
        };
        Ok(futures::stream::unfold(state, Ndjson::next))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// One request and its JSON answer, all within the timeout.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let what = format!("{method} {path}");
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|source| ClientError::Decode {
                what: format!("{what} request body"),
                source,
            })?),
            None => None,
        };
        self.within_timeout(async {
            let response = self.send(method, path, body).await?;
            let bytes = read_body(response.into_body(), &what).await?;
            serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { what, source })
        })
        .await
    }

    async fn within_timeout<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    socket: self.socket.clone(),
                    after: self.timeout,
                })
            })
    }

    /// Connects, sends, and turns error statuses into [`ClientError::Api`]. Returns the
    /// response with its body unread, so the monitor can stream it.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let content_type = body.as_ref().map(|_| "application/json");
        let body = Full::new(Bytes::from(body.unwrap_or_default()));
        self.send_body(method, path, content_type, body).await
    }

    /// [`Client::send`] of any body, with its content type.
    async fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: B,
    ) -> Result<Response<Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| connect_error(&self.socket, source))?;
        let what = format!("{method} {path}");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                ClientError::Protocol(format!("{what}: HTTP handshake with the agent failed: {e}"))
            })?;
        // The connection's own error, if any, also reaches us through `send_request` or the
        // body, with more context there; this task only has to drive the socket.
        tokio::spawn(async move {
            let _ = connection.await;
        });

        let mut request = Request::builder()
            .method(method)
            .uri(path)
            // HTTP/1.1 requires a Host; over a unix socket there is none to name.
            .header(hyper::header::HOST, "localhost");
        if let Some(content_type) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = request
            .body(body)
            .map_err(|e| ClientError::Protocol(format!("{what}: cannot build the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Protocol(format!("{what}: the agent did not answer: {e}")))?;

        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = read_body(response.into_body(), &what).await?;
        let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
            // Not our agent's error format (a proxy, an older agent): keep what it said.
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            ApiError {
                kind: "http".to_owned(),
                message: if text.is_empty() {
                    format!("{what}: the agent answered {status}")
                } else {
                    format!("{what}: the agent answered {status}: {text}")
                },
            }
        });
        Err(ClientError::Api {
            status: status.as_u16(),
            error,
        })
    }
}

async fn read_body(body: Incoming, what: &str) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| ClientError::Protocol(format!("{what}: reading the answer failed: {e}")))
}

/// State of the NDJSON decoder behind [`Client::monitor`].
struct Ndjson {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
    what: String,
}

impl Ndjson {
    async fn next(mut self) -> Option<(Result<MonitorEvent, ClientError>, Self)> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.trim_ascii().is_empty() {
                    continue;
                }
                let item = self.decode(&line);
                return Some((item, self));
            }
            if self.done {
                if self.buf.trim_ascii().is_empty() {
                    return None;
                }
                // A last event without its newline: still an event.
                let line = std::mem::take(&mut self.buf);
                let item = self.decode(&line);
                return Some((item, self));
            }
            if self.buf.len() > MAX_LINE {
                return Some((
                    self.fail(format!(
                        "{}: a line longer than {MAX_LINE} bytes",
                        self.what
                    )),
                    self,
                ));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    let err = self.fail(format!("{}: the stream broke: {e}", self.what));
                    return Some((err, self));
                }
                None => self.done = true,
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<MonitorEvent, ClientError> {
        serde_json::from_slice(line).map_err(|source| ClientError::Decode {
            what: self.what.clone(),
            source,
        })
    }

    /// Ends the stream after this error: what follows a broken frame cannot be trusted.
    fn fail(&mut self, message: String) -> Result<MonitorEvent, ClientError> {
        self.done = true;
        self.buf.clear();
        Err(ClientError::Protocol(message))
    }
}

fn fqdn_path(pattern: Option<&str>) -> String {
    match pattern {
        Some(p) => format!("/v1/fqdn/cache?matchpattern={}", encode_segment(p)),
        None => "/v1/fqdn/cache".to_owned(),
    }
}

/// Percent-encodes one path segment or query value: everything but RFC 3986's unreserved
/// characters, so that `default/web` stays one segment (`default%2Fweb`).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why connecting failed: "root-only" is not "is the agent running?".
fn connect_error(socket: &Path, source: io::Error) -> ClientError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        ClientError::PermissionDenied {
            socket: socket.to_owned(),
        }
    } else {
        ClientError::Unreachable {
            socket: socket.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("default/web-1"), "default%2Fweb-1");
        assert_eq!(encode_segment("abc123"), "abc123");
        assert_eq!(encode_segment("a b?#%"), "a%20b%3F%23%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn unreachable_names_the_socket_and_the_fix() {
        let e = ClientError::Unreachable {
            socket: PathBuf::from("/nope.sock"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("cannot reach the agent at /nope.sock: "),
            "{text}"
        );
        assert!(
            text.ends_with("(is ciliate-agent running? set --socket or CILIATE_SOCKET)"),
            "{text}"
        );
    }

    #[test]
    fn permission_denied_says_root_only() {
        let e = connect_error(
            Path::new("/x.sock"),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        let text = e.to_string();
        assert!(
            text.starts_with("the agent's socket /x.sock is root-only: run as root"),
            "{text}"
        );
        assert!(!text.contains("is ciliate-agent running"), "{text}");
        let e = connect_error(
            Path::new("/x.sock"),
            io::Error::from(io::ErrorKind::NotFound),
        );
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    }
}
