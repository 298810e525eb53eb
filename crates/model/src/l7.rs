//! L7 policy as the node's proxy enforces it, and the contract between the agent and the proxy.
//!
//! The agent is the only writer: it compiles `toPorts[].rules.http` into [`L7Redirect`]s (one
//! per endpoint, direction and port whose policy map entries carry a proxy port) and pushes
//! them to `ciliate-proxy` as [`ProxyCommand`]s, one JSON object per line on the proxy's control
//! socket. The proxy answers with [`ProxyEvent`]s on the same connection: which revision is in
//! force (JSON lines), and one [`HttpRecord`] per request and response (binary frames, see
//! [`crate::l7_wire`]), which the agent's observer turns into Hubble L7 flows. Peer identities are not pushed: the proxy reads them from the pinned
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
    /// The Kafka wire protocol (request header and topics); shares the HTTP listeners: the
    /// proxy picks the parser from the redirect of the connection's (endpoint, port).
    Kafka,
    /// DNS over UDP and TCP, on its own listener ([`ProxyPorts::dns`]); egress only.
    Dns,
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
    /// DNS, UDP and TCP on the same port: queries an endpoint sends (its egress rules).
    #[serde(default = "default_dns_port")]
    pub dns: u16,
}

fn default_dns_port() -> u16 {
    15053
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            http_egress: 15001,
            http_ingress: 15002,
            dns: default_dns_port(),
        }
    }
}

impl ProxyPorts {
    /// The listener of `parser` in the given direction.
    pub fn port(&self, parser: L7Parser, egress: bool) -> u16 {
        match (parser, egress) {
            (L7Parser::Http | L7Parser::Kafka, true) => self.http_egress,
            (L7Parser::Http | L7Parser::Kafka, false) => self.http_ingress,
            (L7Parser::Dns, _) => self.dns,
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
    /// IP protocol (6: TCP; 17: UDP, DNS only). A DNS rule on port 53 gives two redirects.
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Kafka rules, OR'ed (a redirect with the Kafka parser); empty = every request allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<KafkaMatch>,
    /// DNS rules, OR'ed (a redirect with the DNS parser); empty = every query allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<DnsMatch>,
}

/// One Kafka rule as the proxy applies it; every field given must match. The compiler turns
/// Cilium's `role` and `apiKey` into the list of API keys they allow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaMatch {
    /// The request API keys allowed (Produce = 0, Fetch = 1, ...); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<i16>,
    /// The exact request API version; `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<i16>,
    /// The exact client id; `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The exact topic; `None` = any. A request naming several topics is allowed only when
    /// every one of them is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// One DNS rule (`rules.dns[]`) as Cilium defines it: exactly one of the two is given,
/// validated and lower-cased by the compiler; see [`crate::fqdn`] for the matching.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsMatch {
    /// An exact name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A pattern with `*` wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
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
    /// The IPs of [`ProxyEvent::FqdnLearned`] with this id are in the datapath's maps (or the
    /// agent gave up on them): the proxy may now hand the answer to the pod.
    FqdnAllowed {
        /// The event's id.
        id: u64,
    },
    /// The agent dropped learned addresses before their TTL (`fqdn cache clean`, or the
    /// per-name address limit evicting some) of this endpoint (`None`: of every endpoint): the
    /// proxy must hold that endpoint's next answers for the agent again rather than trust
    /// what it confirmed earlier. Sent before the addresses leave the maps.
    FqdnForget {
        /// The endpoint, or `None` for all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<u16>,
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
    /// [`ProxyEvent::Http`] as its frame arrived, not decoded into strings (what the agent
    /// reads off the control socket: [`crate::l7_wire::HttpFrame`]). Never sent as JSON.
    #[serde(skip)]
    HttpFrame(crate::l7_wire::HttpFrame),
    /// A command was refused whole (e.g. an invalid regex); the proxy keeps what it had.
    Rejected {
        /// The command's revision.
        revision: u64,
        /// Why, naming the redirect and field.
        reason: String,
    },
    /// The proxy's counters since it started, sent every second while they change.
    Stats(ProxyStats),
    /// One DNS query or answer passed (or was refused by) the proxy.
    Dns(Box<DnsRecord>),
    /// [`ProxyEvent::Dns`] as its frame arrived, not decoded into strings (what the agent
    /// reads off the control socket: [`crate::l7_wire::DnsFrame`]). Never sent as JSON.
    #[serde(skip)]
    DnsFrame(crate::l7_wire::DnsFrame),
    /// One Kafka request or response passed (or was refused by) the proxy.
    Kafka(Box<KafkaRecord>),
    /// An allowed DNS answer, held by the proxy until the agent answers
    /// [`ProxyCommand::FqdnAllowed`] with the same id: the agent adds the IPs to its FQDN cache
    /// and to the policy maps of every endpoint whose `toFQDNs` select one of the names, so
    /// that the pod's first connection after the answer is allowed.
    FqdnLearned(Box<FqdnLearned>),
}

/// The names and addresses of one allowed DNS answer (A records; CNAME chains followed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FqdnLearned {
    /// Unique per proxy process; echoed by [`ProxyCommand::FqdnAllowed`].
    pub id: u64,
    /// The endpoint that asked.
    pub endpoint: u16,
    /// Its address.
    pub endpoint_ip: Ipv4Addr,
    /// The query name and every CNAME target of the answer, each with the final A records'
    /// addresses and the TTL the answer gives them (lowest TTL along the chain), lower-case
    /// with the trailing dot (`api.example.com.`).
    pub names: Vec<FqdnAnswer>,
}

/// One name of an answer and the addresses it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FqdnAnswer {
    /// Lower-case, with the trailing dot.
    pub name: String,
    /// The addresses.
    pub ips: Vec<Ipv4Addr>,
    /// Seconds, as the answer gave them (the agent applies `--tofqdns-min-ttl`).
    pub ttl: u32,
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
    /// DNS answers handed to the pod without the agent's FqdnAllowed, after the proxy's
    /// bounded wait (the agent was slow or away).
    #[serde(default)]
    pub dns_allow_timeouts: u64,
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

/// One DNS query or answer, as the proxy saw it (always an endpoint's egress).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    /// Query (request) or answer (response; for a refused query the proxy's own REFUSED).
    pub record_type: L7RecordType,
    /// The endpoint that asked.
    pub endpoint: u16,
    /// The pod's address and port.
    pub source: SocketAddrV4,
    /// The resolver it asked (the original destination).
    pub destination: SocketAddrV4,
    /// 17 (UDP) or 6 (TCP).
    pub proto: u8,
    /// The pod's security identity.
    pub source_identity: NumericIdentity,
    /// The resolver's security identity.
    pub destination_identity: NumericIdentity,
    /// Forwarded, Dropped (refused by policy) or Error (malformed, upstream failed).
    pub verdict: L7Verdict,
    /// The rule that allowed it (0: none).
    pub rule: u32,
    /// The query name, lower-case with the trailing dot.
    pub query: String,
    /// Query types as Hubble shows them (`A`, `AAAA`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qtypes: Vec<String>,
    /// Answers: the response code (0 NOERROR, 3 NXDOMAIN, 5 REFUSED, ...).
    #[serde(default)]
    pub rcode: u16,
    /// Answers: the A records' addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<Ipv4Addr>,
    /// Answers: the lowest TTL of the records, in seconds.
    #[serde(default)]
    pub ttl: u32,
    /// Answers: the CNAME targets, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    /// Answers: the record types present (`A`, `CNAME`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rrtypes: Vec<String>,
    /// Answers: time from the query to the answer, in nanoseconds.
    #[serde(default)]
    pub latency_ns: u64,
    /// Why the verdict, for drops and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One Kafka request or response, as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRecord {
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    /// Request or response.
    pub record_type: L7RecordType,
    /// The redirect's endpoint.
    pub endpoint: u16,
    /// True when the endpoint opened the connection (an egress redirect).
    pub egress: bool,
    /// The client's address.
    pub source: SocketAddrV4,
    /// The original destination (the broker).
    pub destination: SocketAddrV4,
    /// The client's security identity.
    pub source_identity: NumericIdentity,
    /// The broker's security identity.
    pub destination_identity: NumericIdentity,
    /// The verdict.
    pub verdict: L7Verdict,
    /// The rule that allowed it (0: none).
    pub rule: u32,
    /// The request's API key as Hubble names it (`produce`, `fetch`, `metadata`, ...).
    pub api_key: String,
    /// The request's API version.
    pub api_version: i16,
    /// The request's correlation id.
    pub correlation_id: i32,
    /// The topic (the first one, when a request names several).
    #[serde(default)]
    pub topic: String,
    /// Responses: the error code (29 TOPIC_AUTHORIZATION_FAILED for a refused request).
    #[serde(default)]
    pub error_code: i16,
    /// Responses: time from the request to the response, in nanoseconds.
    #[serde(default)]
    pub latency_ns: u64,
    /// Why the verdict, for drops and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
