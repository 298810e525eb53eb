//! HTTP policy as the node's proxy enforces it: checking Cilium's `rules.http` fields, turning
//! them into the agent–proxy contract's [`HttpMatch`], and matching a request against them.
//!
//! The matcher is pure and shared: `policy trace` uses it to say which rule allows a request,
//! and the proxy can use the same function so that the two never disagree. Semantics, as
//! Cilium's Envoy filter applies them:
//!
//! * `method`, `path` and `host` are regular expressions matched against the whole value
//!   (Cilium compiles them with Go's RE2 `regexp`, Envoy matches them anchored; the `regex`
//!   crate is RE2's dialect, so a pattern valid here is valid there and means the same);
//! * `path` is the request target as Envoy's `:path` holds it, query string included (the
//!   agent–proxy contract, [`HttpMatch::path`]): `/public` does not match `/public?a=1`, a
//!   rule that wants queries says `/public(\?.*)?`; `host` is the authority as sent (`Host` or
//!   `:authority`, with any port);
//! * `headers` entries are `Name` (present) or `Name: value` (present with exactly that value,
//!   names compared without case);
//! * `headerMatches` with no `mismatch` must match (the value, or presence when no value); with
//!   a mismatch action (`LOG`, `ADD`, `DELETE`, `REPLACE`) a mismatch does not fail the rule:
//!   the proxy carries out the action instead;
//! * every field given must match; the rules of a port are OR'ed; a peer allowed on the port
//!   without L7 rules may send any request.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ciliate_model::identity::NumericIdentity;
use ciliate_model::kafka::{api_key_by_name, check_topic, role_api_keys};
use ciliate_model::l7::KafkaMatch;
use ciliate_model::l7::{
    HeaderMatch, HeaderMismatch, HttpMatch, L7Parser, L7PeerRules, L7Redirect, ProxyPorts,
};
use ciliate_model::policy::cilium::{HttpRule, KafkaRule};
use ciliate_model::policy::{
    Direction, EntrySource, PolicyEntry, PolicyKey, RuleRef, PROTO_TCP, PROTO_UDP,
};
use regex::Regex;

use crate::compile::PortL7;
use crate::problems::Problems;

/// What the matcher needs of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRequestView<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The request target: the path with its query, if any (Envoy's `:path`).
    pub path: &'a str,
    /// The authority (`Host` header or HTTP/2 `:authority`), as sent.
    pub host: &'a str,
    /// Every header (name, value), in any order; a name may repeat.
    pub headers: Vec<(&'a str, &'a str)>,
}

impl HttpRequestView<'_> {
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// A `headers` entry: the name, and the exact value when one is given.
pub fn parse_header(entry: &str) -> (&str, Option<&str>) {
    // Cilium splits on the first space and drops a trailing ':' from the name.
    let entry = entry.trim();
    match entry.split_once(|c: char| c == ':' || c.is_ascii_whitespace()) {
        Some((name, value)) => {
            let value = value.trim_start_matches(':').trim();
            (name.trim(), Some(value))
        }
        None => (entry, None),
    }
}

/// Anchors a pattern so that it must match the whole value (as Envoy's `safe_regex` does).
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// An [`HttpMatch`] with its regular expressions compiled, for matching many requests.
#[derive(Clone, Debug)]
pub struct CompiledHttpMatch {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    headers: Vec<(String, Option<String>)>,
    header_matches: Vec<HeaderMatch>,
}

impl CompiledHttpMatch {
    /// Compiles a rule; fails on a pattern that is not a valid regular expression (the agent
    /// never sends one: it checks them when the policy is applied).
    pub fn compile(rule: &HttpMatch) -> Result<Self, regex::Error> {
        let re = |p: &Option<String>| {
            p.as_deref()
                .filter(|p| !p.is_empty())
                .map(anchored)
                .transpose()
        };
        Ok(Self {
            method: re(&rule.method)?,
            path: re(&rule.path)?,
            host: re(&rule.host)?,
            headers: rule
                .headers
                .iter()
                .map(|h| {
                    let (n, v) = parse_header(h);
                    (n.to_owned(), v.map(str::to_owned))
                })
                .collect(),
            header_matches: rule.header_matches.clone(),
        })
    }

    /// Whether the request matches the rule.
    pub fn matches(&self, req: &HttpRequestView<'_>) -> bool {
        let re_ok = |re: &Option<Regex>, v: &str| re.as_ref().is_none_or(|re| re.is_match(v));
        re_ok(&self.method, req.method)
            && re_ok(&self.path, req.path)
            && re_ok(&self.host, req.host)
            && self.headers.iter().all(|(name, value)| match value {
                None => req.values(name).next().is_some(),
                Some(v) => req.values(name).any(|got| got == v),
            })
            && self
                .header_matches
                .iter()
                .all(|m| m.mismatch.is_some() || header_match_holds(m, req))
    }

    /// The header matches of the rule the request does not meet and that carry a mismatch
    /// action: what the proxy does to the request once the rule allowed it.
    pub fn mismatches<'s>(&'s self, req: &HttpRequestView<'_>) -> Vec<&'s HeaderMatch> {
        self.header_matches
            .iter()
            .filter(|m| m.mismatch.is_some() && !header_match_holds(m, req))
            .collect()
    }
}

fn header_match_holds(m: &HeaderMatch, req: &HttpRequestView<'_>) -> bool {
    match m.value.as_deref().filter(|v| !v.is_empty()) {
        None => req.values(&m.name).next().is_some(),
        Some(v) => req.values(&m.name).any(|got| got == v),
    }
}

/// Whether `req` matches one HTTP rule (an invalid pattern matches nothing). For many requests
/// against the same rules, compile them once with [`CompiledHttpMatch`].
pub fn http_rule_matches(rule: &HttpMatch, req: &HttpRequestView<'_>) -> bool {
    CompiledHttpMatch::compile(rule).is_ok_and(|c| c.matches(req))
}

/// Which rules of a redirect allow a request from `peer`: each `(rule id, index of the HTTP
/// rule)`, the index `None` for a peer allowed every request. Empty: the proxy answers 403.
pub fn allowing_rules(
    redirect: &L7Redirect,
    peer: u32,
    req: &HttpRequestView<'_>,
) -> Vec<(u32, Option<usize>)> {
    let mut out = Vec::new();
    for r in redirect.rules.iter().filter(|r| peer_rules_apply(r, peer)) {
        if !r.kafka.is_empty() || !r.dns.is_empty() {
            // Rules of another protocol allow no HTTP request.
            continue;
        }
        if r.http.is_empty() {
            out.push((r.rule, None));
            continue;
        }
        for (i, m) in r.http.iter().enumerate() {
            if http_rule_matches(m, req) {
                out.push((r.rule, Some(i)));
            }
        }
    }
    out
}

/// Whether the rules are for `peer`.
pub fn peer_rules_apply(rules: &L7PeerRules, peer: u32) -> bool {
    rules
        .peers
        .as_ref()
        .is_none_or(|p| p.binary_search(&peer).is_ok())
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The message of a regex error: its last line (the others draw the pattern with a caret).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().trim_start_matches("error:").trim().to_owned()
}

/// Checks one `rules.http[]` entry at `path` and converts it; `None` when it has errors.
pub(crate) fn check_http_rule(rule: &HttpRule, path: &str, p: &mut Problems) -> Option<HttpMatch> {
    let before = p.errors.len();
    for (field, value) in [
        ("method", &rule.method),
        ("path", &rule.path),
        ("host", &rule.host),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            if let Err(e) = anchored(v) {
                p.error(
                    format!("{path}.{field}"),
                    format!(
                        "{v:?} is not a valid regular expression: {}",
                        regex_reason(&e)
                    ),
                );
            }
        }
    }
    let mut headers = Vec::new();
    for (i, h) in rule.headers.iter().flatten().enumerate() {
        let (name, value) = parse_header(h);
        if !is_token(name) {
            p.error(
                format!("{path}.headers[{i}]"),
                format!("{h:?} is not a header: write \"Name\" (present) or \"Name: value\" (present with that value)"),
            );
            continue;
        }
        headers.push(match value {
            Some(v) => format!("{name}: {v}"),
            None => name.to_owned(),
        });
    }
    let mut header_matches = Vec::new();
    for (i, m) in rule.header_matches.iter().flatten().enumerate() {
        let at = format!("{path}.headerMatches[{i}]");
        if m.name.is_empty() {
            p.error(format!("{at}.name"), "a header name is required");
        } else if !is_token(&m.name) {
            p.error(
                format!("{at}.name"),
                format!("{:?} is not a header name", m.name),
            );
        }
        if m.secret.is_some() {
            p.error(
                format!("{at}.secret"),
                "header values from Secrets are not supported by Ciliate (the agent does not read Kubernetes Secrets): give the value in value",
            );
        }
        let mismatch = match m.mismatch.as_deref() {
            None | Some("") => None,
            Some("LOG") => Some(HeaderMismatch::Log),
            Some("ADD") => Some(HeaderMismatch::Add),
            Some("DELETE") => Some(HeaderMismatch::Delete),
            Some("REPLACE") => Some(HeaderMismatch::Replace),
            Some(other) => {
                p.error(
                    format!("{at}.mismatch"),
                    format!(
                        "{other:?} is not a mismatch action (want LOG, ADD, DELETE or REPLACE)"
                    ),
                );
                None
            }
        };
        header_matches.push(HeaderMatch {
            name: m.name.clone(),
            value: m.value.clone().filter(|v| !v.is_empty()),
            mismatch,
        });
    }
    if p.errors.len() > before {
        return None;
    }
    let text = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    Some(HttpMatch {
        method: text(&rule.method),
        path: text(&rule.path),
        host: text(&rule.host),
        headers,
        header_matches,
    })
}

/// Checks one `rules.kafka[]` entry at `path` as Cilium's `PortRuleKafka.Sanitize` does and
/// expands it (`role` or `apiKey` into API keys); `None` when it has errors.
pub(crate) fn check_kafka_rule(
    rule: &KafkaRule,
    path: &str,
    p: &mut Problems,
) -> Option<KafkaMatch> {
    let before = p.errors.len();
    let text = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let (role, api_key) = (text(&rule.role), text(&rule.api_key));
    let mut api_keys = Vec::new();
    if let (Some(r), Some(k)) = (&role, &api_key) {
        p.error(
            path,
            format!(
                "role {r:?} and apiKey {k:?} cannot both be given: a role stands for its API keys"
            ),
        );
    } else if let Some(r) = &role {
        match role_api_keys(r) {
            Some(keys) => api_keys = keys.to_vec(),
            None => p.error(
                format!("{path}.role"),
                format!("{r:?} is not a Kafka role (want produce or consume)"),
            ),
        }
    } else if let Some(k) = &api_key {
        match api_key_by_name(k) {
            Some(key) => api_keys = vec![key],
            None => p.error(
                format!("{path}.apiKey"),
                format!("{k:?} is not a Kafka API key name Cilium knows (produce, fetch, offsets, metadata, offsetcommit, offsetfetch, findcoordinator, joingroup, heartbeat, leavegroup, syncgroup, apiversions, createtopics, ...)"),
            ),
        }
    }
    let api_version = match text(&rule.api_version) {
        None => None,
        Some(v) => match v.parse::<i16>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                p.error(
                    format!("{path}.apiVersion"),
                    format!("{v:?} is not an API version (a number from 0 to 32767)"),
                );
                None
            }
        },
    };
    let topic = text(&rule.topic);
    if let Some(t) = &topic {
        if let Err(e) = check_topic(t) {
            p.error(format!("{path}.topic"), e);
        }
    }
    if p.errors.len() > before {
        return None;
    }
    Some(KafkaMatch {
        api_keys,
        api_version,
        client_id: text(&rule.client_id),
        topic,
    })
}

/// What the proxy does on one side of a flow ([`Resolved::explain_l7`](crate::Resolved::explain_l7)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Explanation {
    /// The proxy listener the datapath sends the connection to.
    pub proxy_port: u16,
    /// The policy rules whose HTTP rules apply to the peer here, OR'ed (empty `http`: every
    /// request).
    pub rules: Vec<(RuleRef, L7PeerRules)>,
    /// Given a request: the rules that allow it, with the index of the HTTP rule (`None`: the
    /// rule allows every request). Empty: the proxy answers 403.
    pub allowed_by: Option<Vec<(RuleRef, Option<usize>)>>,
}

/// An identity's redirects for one of its endpoints.
pub fn for_endpoint(redirects: &[L7Redirect], endpoint: u16, ip: Ipv4Addr) -> Vec<L7Redirect> {
    redirects
        .iter()
        .map(|r| L7Redirect {
            endpoint,
            endpoint_ip: ip,
            ..r.clone()
        })
        .collect()
}

/// A raw entry of the engine: key, deny, source, and the L7 rules of the port it came from.
pub(crate) type Raw<'a> = (PolicyKey, bool, EntrySource, Option<&'a PortL7>);

/// A redirected port: direction, protocol, port.
type PortKey = (Direction, u8, u16);

/// Which entries of an endpoint go through the proxy, before they are built.
pub(crate) struct Plan<'a> {
    /// Entries to add: a peer with an allow of its own wider than a redirected port (an
    /// L3-only allow, a range) gets the port's exact key, so that the datapath's lookup (the
    /// peer's own entries first) does not pass the redirect by.
    pub extra: Vec<Raw<'a>>,
    /// The exact keys whose allow entries carry the proxy port, with the parser.
    pub keys: BTreeMap<PolicyKey, L7Parser>,
    /// The parser and rules per (direction, protocol, port).
    pub redirects: BTreeMap<PortKey, (L7Parser, Vec<L7PeerRules>)>,
    /// Conflicts worth telling (rules of two L7 protocols on one port).
    pub notes: Vec<String>,
}

fn exact_key(identity: NumericIdentity, direction: Direction, proto: u8, port: u16) -> PolicyKey {
    PolicyKey {
        identity,
        direction,
        proto,
        dport: port,
        port_prefix_len: 16,
    }
}

fn parser_of(l7: &PortL7) -> L7Parser {
    match l7 {
        PortL7::Http(_) => L7Parser::Http,
        PortL7::Dns(_) => L7Parser::Dns,
        PortL7::Kafka(_) => L7Parser::Kafka,
    }
}

/// Plans the redirects of one endpoint from its raw entries, as Cilium's `L4Filter` and
/// `PerSelectorPolicy` have it:
///
/// * a port with L7 rules for some peers is redirected as a whole (HTTP: a TCP port; DNS: a
///   UDP or TCP port, egress): every allow entry of exactly that port (those peers', and
///   other peers' allowed there by rules without L7 rules) carries the proxy port; the latter
///   may send any request (an empty rule list);
/// * when the port is redirected for every peer (identity 0), a peer with an allow of its own
///   that covers the port more widely (L3-only, a range) gets an exact entry for the port with
///   the redirect too: Cilium's map state makes more specific entries inherit the proxy port
///   of a covering L4-only redirect, since the datapath tries the peer's own entries first;
/// * the proxy allows a request when any allow rule covering the port for that peer allows it
///   (an allow without L7 rules for the port allows every request), as the L4 rules are
///   OR'ed;
/// * deny entries never redirect, and the defaults (no default deny, the local node's
///   access) neither redirect nor allow requests at the proxy.
pub(crate) fn plan<'a>(raw: &[Raw<'a>], rule_id: impl Fn(&RuleRef) -> u32) -> Plan<'a> {
    let mut out = Plan {
        extra: Vec::new(),
        keys: BTreeMap::new(),
        redirects: BTreeMap::new(),
        notes: Vec::new(),
    };
    // The first parser named for a port wins (one port speaks one protocol).
    let mut ports: BTreeMap<PortKey, L7Parser> = BTreeMap::new();
    for (k, deny, _, l7) in raw {
        let Some(l7) = l7.filter(|_| !deny) else {
            continue;
        };
        let fits = match l7 {
            PortL7::Http(_) | PortL7::Kafka(_) => k.proto == PROTO_TCP,
            PortL7::Dns(_) => {
                k.direction == Direction::Egress && matches!(k.proto, PROTO_TCP | PROTO_UDP)
            }
        };
        if fits {
            ports
                .entry((k.direction, k.proto, k.dport))
                .or_insert(parser_of(l7));
        }
    }
    for ((direction, proto, port), parser) in ports {
        let covering: Vec<&Raw<'a>> = raw
            .iter()
            .filter(|(k, deny, src, _)| {
                !deny
                    && matches!(src, EntrySource::Rule(_))
                    && k.direction == direction
                    && k.covers(proto, port)
            })
            .collect();
        let is_exact = |k: &PolicyKey| *k == exact_key(k.identity, direction, proto, port);
        let mut ids: BTreeSet<NumericIdentity> = covering
            .iter()
            .filter(|(k, ..)| is_exact(k))
            .map(|(k, ..)| k.identity)
            .collect();
        if ids.contains(&0) {
            ids.extend(covering.iter().map(|(k, ..)| k.identity));
        }
        for id in &ids {
            let key = exact_key(*id, direction, proto, port);
            out.keys.insert(key, parser);
            if !covering.iter().any(|(k, ..)| *k == key) {
                for (_, _, src, _) in covering.iter().filter(|(k, ..)| k.identity == *id) {
                    out.extra.push((key, false, src.clone(), None));
                }
            }
        }
        // (rule, any peer, rules) -> peers
        let mut groups: Vec<(u32, bool, Option<&PortL7>, BTreeSet<NumericIdentity>)> = Vec::new();
        for (k, _, src, l7) in &covering {
            if !(ids.contains(&k.identity) || k.identity == 0) {
                continue;
            }
            let EntrySource::Rule(r) = src else {
                continue;
            };
            let rules = l7.filter(|_| is_exact(k));
            if let Some(other) = rules.filter(|l| parser_of(l) != parser) {
                // Cilium refuses to merge two parsers on one port; the proxy speaks one, so
                // these rules allow nothing there (fail closed), and the conflict is told.
                let note = format!(
                    "{r}: {:?} rules on {direction:?} port {port}, which other rules give {parser:?} rules; they allow nothing there",
                    parser_of(other)
                );
                if !out.notes.contains(&note) {
                    out.notes.push(note);
                }
                continue;
            }
            let (rule, any) = (rule_id(r), k.identity == 0);
            match groups
                .iter_mut()
                .find(|g| g.0 == rule && g.1 == any && g.2 == rules)
            {
                Some(g) => {
                    g.3.insert(k.identity);
                }
                None => groups.push((rule, any, rules, BTreeSet::from([k.identity]))),
            }
        }
        let mut rules: Vec<L7PeerRules> = groups
            .into_iter()
            .map(|(rule, any, l7, peers)| {
                let mut r = L7PeerRules {
                    peers: (!any).then(|| peers.into_iter().collect()),
                    rule,
                    ..L7PeerRules::default()
                };
                match l7 {
                    Some(PortL7::Http(h)) => r.http = h.clone(),
                    Some(PortL7::Dns(d)) => r.dns = d.clone(),
                    Some(PortL7::Kafka(kf)) => r.kafka = kf.clone(),
                    None => {}
                }
                r
            })
            .collect();
        rules.sort_by(|a, b| (a.rule, &a.peers).cmp(&(b.rule, &b.peers)));
        out.redirects
            .insert((direction, proto, port), (parser, rules));
    }
    out
}

/// Puts the proxy port on the planned allow entries and gives the redirects of the ports where
/// at least one entry carries it (a redirect whose entries all became denies is left out).
pub(crate) fn finish(
    redirects: BTreeMap<PortKey, (L7Parser, Vec<L7PeerRules>)>,
    entries: &mut [PolicyEntry],
    keys: &BTreeMap<PolicyKey, L7Parser>,
    ports: ProxyPorts,
) -> Vec<L7Redirect> {
    let mut used = BTreeSet::new();
    for e in entries.iter_mut() {
        if e.deny {
            continue;
        }
        if let Some(parser) = keys.get(&e.key) {
            let egress = e.key.direction == Direction::Egress;
            e.proxy_port = ports.port(*parser, egress);
            used.insert((e.key.direction, e.key.proto, e.key.dport));
        }
    }
    redirects
        .into_iter()
        .filter(|(k, _)| used.contains(k))
        .map(|((direction, proto, port), (parser, rules))| {
            let egress = direction == Direction::Egress;
            L7Redirect {
                endpoint: 0,
                endpoint_ip: Ipv4Addr::UNSPECIFIED,
                egress,
                proto,
                port,
                parser,
                proxy_port: ports.port(parser, egress),
                rules,
            }
        })
        .collect()
}

/// Request/rule pairs with the verdict every matcher of these rules must give: the proxy's
/// matcher can be held to the same table as [`http_rule_matches`].
pub mod cases {
    use ciliate_model::l7::{HeaderMatch, HeaderMismatch, HttpMatch};

    /// One case: a rule (as its fields), a request, and whether the rule matches it.
    #[derive(Clone, Copy, Debug)]
    pub struct MatchCase {
        /// What the case shows.
        pub name: &'static str,
        /// Rule: method regex.
        pub method: Option<&'static str>,
        /// Rule: path regex.
        pub path: Option<&'static str>,
        /// Rule: host regex.
        pub host: Option<&'static str>,
        /// Rule: `headers` entries.
        pub headers: &'static [&'static str],
        /// Rule: `headerMatches` as (name, value, mismatch action).
        pub header_matches: &'static [(&'static str, Option<&'static str>, Option<&'static str>)],
        /// Request: method.
        pub req_method: &'static str,
        /// Request: path, with any query.
        pub req_path: &'static str,
        /// Request: authority.
        pub req_host: &'static str,
        /// Request: headers.
        pub req_headers: &'static [(&'static str, &'static str)],
        /// Whether the rule matches the request.
        pub matches: bool,
    }

    impl MatchCase {
        /// The case's rule in the agent–proxy contract's form.
        pub fn rule(&self) -> HttpMatch {
            HttpMatch {
                method: self.method.map(str::to_owned),
                path: self.path.map(str::to_owned),
                host: self.host.map(str::to_owned),
                headers: self.headers.iter().map(|h| (*h).to_owned()).collect(),
                header_matches: self
                    .header_matches
                    .iter()
                    .map(|(n, v, m)| HeaderMatch {
                        name: (*n).to_owned(),
                        value: v.map(str::to_owned),
                        mismatch: m.map(|m| match m {
                            "LOG" => HeaderMismatch::Log,
                            "ADD" => HeaderMismatch::Add,
                            "DELETE" => HeaderMismatch::Delete,
                            "REPLACE" => HeaderMismatch::Replace,
                            other => panic!("{}: unknown mismatch action {other}", self.name),
                        }),
                    })
                    .collect(),
            }
        }
    }

    const fn case(name: &'static str, matches: bool) -> MatchCase {
        MatchCase {
            name,
            method: None,
            path: None,
            host: None,
            headers: &[],
            header_matches: &[],
            req_method: "GET",
            req_path: "/",
            req_host: "svc",
            req_headers: &[],
            matches,
        }
    }

    /// The table, from Cilium's documented examples and the edges of its semantics.
    pub const MATCH_CASES: &[MatchCase] = &[
        MatchCase {
            method: Some("GET"),
            path: Some("/public"),
            req_path: "/public",
            ..case("docs: GET /public allows GET /public", true)
        },
        MatchCase {
            method: Some("GET"),
            path: Some("/public"),
            req_method: "POST",
            req_path: "/public",
            ..case("docs: GET /public refuses POST", false)
        },
        MatchCase {
            method: Some("GET"),
            path: Some("/public"),
            req_path: "/public/x",
            ..case("path is anchored at the end", false)
        },
        MatchCase {
            method: Some("GET"),
            path: Some("/public"),
            req_path: "/x/public",
            ..case("path is anchored at the start", false)
        },
        MatchCase {
            method: Some("GET"),
            path: Some("/public"),
            req_path: "/public?a=1",
            ..case("the query is part of the path, as Envoy's :path", false)
        },
        MatchCase {
            method: Some("GET"),
            path: Some("/public(\\?.*)?"),
            req_path: "/public?a=1",
            ..case("a rule admits queries by saying so", true)
        },
        MatchCase {
            method: Some("GET"),
            path: Some("/public/.*"),
            req_path: "/public/a/b",
            ..case("a regex path", true)
        },
        MatchCase {
            method: Some("GET"),
            req_method: "get",
            ..case("methods are case sensitive", false)
        },
        MatchCase {
            method: Some("GET|HEAD"),
            req_method: "HEAD",
            ..case("a method alternation is anchored as a whole", true)
        },
        MatchCase {
            method: Some("GET|HEAD"),
            req_method: "GETX",
            ..case("an alternation does not match a longer method", false)
        },
        MatchCase {
            method: Some("PUT"),
            path: Some("/path2$"),
            headers: &["X-My-Header: true"],
            req_method: "PUT",
            req_path: "/path2",
            req_headers: &[("x-my-header", "true")],
            ..case("docs: PUT /path2 with X-My-Header: true", true)
        },
        MatchCase {
            method: Some("PUT"),
            path: Some("/path2$"),
            headers: &["X-My-Header: true"],
            req_method: "PUT",
            req_path: "/path2",
            req_headers: &[("X-My-Header", "false")],
            ..case("docs: a different header value is refused", false)
        },
        MatchCase {
            method: Some("PUT"),
            path: Some("/path2$"),
            headers: &["X-My-Header: true"],
            req_method: "PUT",
            req_path: "/path2",
            ..case("docs: a missing header is refused", false)
        },
        MatchCase {
            headers: &["X-Token"],
            req_headers: &[("x-token", "anything")],
            ..case("a header without a value only needs to be present", true)
        },
        MatchCase {
            host: Some("^external-service.org$"),
            req_host: "external-service.org",
            ..case("docs: host regex", true)
        },
        MatchCase {
            host: Some("external-service.org"),
            req_host: "external-service.org:8080",
            ..case("the host is the authority as sent, port included", false)
        },
        MatchCase {
            host: Some("external-service\\.org(:[0-9]+)?"),
            req_host: "external-service.org:8080",
            ..case("a host regex may allow a port", true)
        },
        MatchCase {
            header_matches: &[("X-Env", Some("prod"), None)],
            req_headers: &[("X-Env", "prod")],
            ..case("headerMatches: value matches", true)
        },
        MatchCase {
            header_matches: &[("X-Env", Some("prod"), None)],
            req_headers: &[("X-Env", "dev")],
            ..case("headerMatches: a different value fails the rule", false)
        },
        MatchCase {
            header_matches: &[("X-Env", None, None)],
            req_headers: &[("x-env", "dev")],
            ..case("headerMatches without value: presence", true)
        },
        MatchCase {
            header_matches: &[("X-Env", Some("prod"), Some("LOG"))],
            req_headers: &[("X-Env", "dev")],
            ..case("headerMatches LOG: a mismatch does not fail the rule", true)
        },
        MatchCase {
            header_matches: &[("X-Env", Some("prod"), Some("ADD"))],
            ..case(
                "headerMatches ADD: a missing header does not fail the rule",
                true,
            )
        },
        MatchCase {
            ..case("an empty rule matches every request", true)
        },
    ];
}

#[cfg(test)]
mod tests {
    use super::cases::MATCH_CASES;
    use super::*;

    #[test]
    fn the_shared_table() {
        for c in MATCH_CASES {
            let req = HttpRequestView {
                method: c.req_method,
                path: c.req_path,
                host: c.req_host,
                headers: c.req_headers.to_vec(),
            };
            assert_eq!(http_rule_matches(&c.rule(), &req), c.matches, "{}", c.name);
        }
    }

    #[test]
    fn header_entries() {
        assert_eq!(
            parse_header("X-My-Header: true"),
            ("X-My-Header", Some("true"))
        );
        assert_eq!(
            parse_header("X-My-Header true"),
            ("X-My-Header", Some("true"))
        );
        assert_eq!(parse_header("X-Token"), ("X-Token", None));
        assert_eq!(parse_header("X-A: b: c"), ("X-A", Some("b: c")));
    }

    #[test]
    fn mismatch_actions_are_reported() {
        let m = CompiledHttpMatch::compile(&HttpMatch {
            header_matches: vec![HeaderMatch {
                name: "X-Env".into(),
                value: Some("prod".into()),
                mismatch: Some(HeaderMismatch::Replace),
            }],
            ..HttpMatch::default()
        })
        .unwrap();
        let req = HttpRequestView {
            method: "GET",
            path: "/",
            host: "h",
            headers: vec![("x-env", "dev")],
        };
        assert!(m.matches(&req));
        assert_eq!(m.mismatches(&req).len(), 1);
    }
}
