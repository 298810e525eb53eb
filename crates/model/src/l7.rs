//! L7 policy as the node's proxy enforces it, and the contract between the agent and the proxy.
//!
//! The agent is the only writer: it compiles `toPorts[].rules.http` into [`L7Redirect`]s (one
//! per endpoint, direction and port whose policy map entries carry a proxy port) and pushes
//! them to `ciliate-proxy` as [`ProxyCommand`]s, one JSON object per line on the proxy's control
//! socket. The proxy answers with [`ProxyEvent`]s on the same connection: which revision is in
//! force, and one [`HttpRecord`] per request and response, which the agent's observer turns into
//! Hubble L7 flows. Peer identities are not pushed: the proxy reads them from the pinned
//! endpoint and ipcache maps, the same ones the datapath uses.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::identity::NumericIdentity;

/// The L7 protocol a redirect parses. One proxy listener per parser and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L7Parser {
    /// HTTP/1.1 and HTTP/2 (h2c).
    Http,
}

/// The proxy's listening ports (on the node, in the host network namespace), which policy map
/// entries carry as their proxy port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPorts {
    /// HTTP, for connections an endpoint opens (its egress rules).
    pub http_egress: u16,
    /// HTTP, for connections towards an endpoint (its ingress rules).
    pub http_ingress: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            http_egress: 15001,
            http_ingress: 15002,
        }
    }
}

impl ProxyPorts {
    /// The listener of `parser` in the given direction.
    pub fn port(&self, parser: L7Parser, egress: bool) -> u16 {
        match (parser, egress) {
            (L7Parser::Http, true) => self.http_egress,
            (L7Parser::Http, false) => self.http_ingress,
        }
    }
}

/// One port of one endpoint whose traffic in one direction goes through the proxy, with the
/// rules the proxy applies to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Redirect {
    /// The endpoint (its datapath id).
    pub endpoint: u16,
    /// Its address: the source of an egress connection, the destination of an ingress one.
    pub endpoint_ip: Ipv4Addr,
    /// The endpoint's egress (it opens the connection) or ingress (it accepts it).
    pub egress: bool,
    /// IP protocol (6: TCP).
    pub proto: u8,
    /// The destination port as the datapath sees it (after Service translation: a backend's
    /// port, as Cilium matches `toPorts` on backends).
    pub port: u16,
    /// How the proxy parses it.
    pub parser: L7Parser,
    /// The proxy listener the datapath sends it to.
    pub proxy_port: u16,
    /// Per set of peers, the rules. A request is allowed when an entry whose peers include the
    /// remote identity has a rule that matches it, or has no rules at all.
    pub rules: Vec<L7PeerRules>,
}

/// The L7 rules for a set of peers of a redirect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7PeerRules {
    /// The remote identities, sorted; `None` = any peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<NumericIdentity>>,
    /// The agent's id of the policy rule these come from (as in policy map entries and
    /// `policy trace`), reported with the verdict.
    pub rule: u32,
    /// HTTP rules, OR'ed; empty = every request allowed (an L3/L4 allow on a port that some
    /// other rule sends through the proxy, as Cilium has it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpMatch>,
}

/// One HTTP rule as Cilium defines it; every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Extended POSIX regex over the method, matched whole (Cilium anchors it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Regex over the request target as Envoy's `:path` holds it, query string included
    /// (`/public` does not match `/public?x=1`), matched whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regex over the host (authority), matched whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present: `Name` or `Name: value` (exact value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Header value matches, with what to do on a mismatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

/// Cilium's `headerMatches` entry (secrets are not supported and rejected by the compiler).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// The exact value; `None` = the header must be present (any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `None`: a mismatch means the rule does not match. Otherwise the rule matches anyway and
    /// the proxy does this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<HeaderMismatch>,
}

/// Cilium's mismatch actions of a header match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HeaderMismatch {
    /// Log it (the flow says so) and forward unchanged.
    Log,
    /// Add the header with the value.
    Add,
    /// Remove the header.
    Delete,
    /// Replace the header's value.
    Replace,
}

/// Agent → proxy, one per line on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProxyCommand {
    /// Everything in force, replacing what the proxy holds; sent first on every connection.
    Snapshot {
        /// Policy revision these rules belong to.
        revision: u64,
        /// Every redirect of the node.
        redirects: Vec<L7Redirect>,
    },
    /// One endpoint's redirects replace its earlier ones (empty: it has none any more).
    Endpoint {
        /// Policy revision.
        revision: u64,
        /// The endpoint.
        endpoint: u16,
        /// Its redirects now.
        redirects: Vec<L7Redirect>,
    },
}

/// Proxy → agent, one per line on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProxyEvent {
    /// The rules of this revision (and every earlier one) are in force in the proxy.
    Applied {
        /// Policy revision.
        revision: u64,
    },
    /// One HTTP request or response passed (or was refused by) the proxy.
    Http(Box<HttpRecord>),
    /// A command was refused whole (e.g. an invalid regex); the proxy keeps what it had.
    Rejected {
        /// The command's revision.
        revision: u64,
        /// Why, naming the redirect and field.
        reason: String,
    },
    /// The proxy's counters since it started, sent every second while they change.
    Stats(ProxyStats),
}

/// The proxy's counters (since the process started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStats {
    /// The proxy's process id.
    pub pid: u32,
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub active_connections: u64,
    /// Requests seen.
    pub requests: u64,
    /// Requests refused by policy (403).
    pub denied: u64,
    /// Requests that failed (400, 502).
    pub errors: u64,
    /// Connections reset (not HTTP, no redirect).
    pub resets: u64,
    /// Records dropped because nobody was reading the control socket.
    pub records_lost: u64,
}

/// Request or response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum L7RecordType {
    /// A request from the client.
    Request,
    /// The response to it (for a refused request: the proxy's own 403/400).
    Response,
}

/// What the proxy did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum L7Verdict {
    /// Allowed and forwarded.
    Forwarded,
    /// Refused by policy (403), or not HTTP at all (connection reset).
    Dropped,
    /// Could not be parsed or forwarded (400, 502, ...).
    Error,
}

/// One HTTP request or response, as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRecord {
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    /// Request or response.
    pub record_type: L7RecordType,
    /// The redirect's endpoint and direction.
    pub endpoint: u16,
    /// True when the endpoint opened the connection (an egress redirect).
    pub egress: bool,
    /// The client's address (as the client sent it).
    pub source: SocketAddrV4,
    /// The original destination (as the client sent it, after Service translation).
    pub destination: SocketAddrV4,
    /// The client's security identity.
    pub source_identity: NumericIdentity,
    /// The server's security identity.
    pub destination_identity: NumericIdentity,
    /// The verdict.
    pub verdict: L7Verdict,
    /// The rule that allowed it (0: none, e.g. a denied request).
    pub rule: u32,
    /// Method, e.g. `GET`.
    pub method: String,
    /// The URL as Hubble shows it: `http://host/path?query`.
    pub url: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// The response's status code; 0 on requests.
    #[serde(default)]
    pub code: u16,
    /// Headers as Hubble lists them (name, value), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Responses: time from the request to the response headers, in nanoseconds.
    #[serde(default)]
    pub latency_ns: u64,
    /// Why the verdict, for drops and errors (e.g. "no rule matched", "not HTTP").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
