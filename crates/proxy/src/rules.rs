//! A redirect's HTTP rules compiled to matchers, with Cilium's semantics.
//!
//! What Cilium does (its Envoy filter, `cilium/proxy` `network_policy.cc`, and the agent's
//! translation of `PortRuleHTTP`), and so what this module does:
//! - `path`, `method` and `host` are RE2 regexes matched against the whole of `:path`,
//!   `:method` and `:authority` (Envoy's `safe_regex` is a full match, so they are anchored at
//!   both ends). `:path` is the request target *with* its query string: a rule `path: /public`
//!   does not match `/public?x=1`.
//! - `headers`: `"Name"` means present, `"Name: value"` (split on the first space, a trailing
//!   `:` trimmed from the name) means that exact value.
//! - `headerMatches`: value compared exactly (empty or absent value: presence). On a mismatch
//!   without an action the rule does not match; with LOG the rule matches and the mismatch is
//!   reported; ADD appends the header with the expected value, DELETE removes a header whose
//!   value is wrong, REPLACE sets the expected value. The edits are made on the request that is
//!   forwarded, and, as in Cilium, every rule is evaluated when some rule has header matches
//!   (so every action runs), not only up to the first that matches.
//! - Entries are OR'ed; an entry whose peers do not include the remote identity is skipped;
//!   an entry with no rules allows every request from its peers.

use std::fmt;

use ciliate_model::fqdn::FqdnMatcher;
use ciliate_model::identity::NumericIdentity;
use ciliate_model::l7::{HeaderMismatch, HttpMatch, L7PeerRules, L7Redirect};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use regex::Regex;

/// A rule that cannot be compiled, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error(
    "redirect of endpoint {endpoint} port {port}: rules[{entry}].{list}[{rule}].{field}: {reason}"
)]
pub struct RuleError {
    /// The redirect's endpoint.
    pub endpoint: u16,
    /// The redirect's port.
    pub port: u16,
    /// Index into `rules`.
    pub entry: usize,
    /// The rule list: `http` or `dns`.
    pub list: &'static str,
    /// Index into that list.
    pub rule: usize,
    /// The field, e.g. `path` or `headers[1]`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// The request as the rules see it.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// `GET`, ...
    pub method: &'a str,
    /// The request target with its query (`:path`).
    pub path_and_query: &'a str,
    /// `:authority` (HTTP/2) or the `Host` header (HTTP/1.1), as sent (with a port if given).
    pub authority: &'a str,
}

/// What the rules decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward it; `rule` is the agent's id of the entry that allowed it.
    Allowed {
        /// The allowing entry's rule id.
        rule: u32,
        /// Header mismatches that a LOG (or other) action let through, for the record.
        notes: Vec<String>,
    },
    /// Refuse it with 403.
    Denied,
}

/// A compiled redirect.
#[derive(Debug)]
pub struct CompiledRedirect {
    /// What the agent sent.
    pub redirect: L7Redirect,
    entries: Vec<Entry>,
    has_header_matches: bool,
}

#[derive(Debug)]
struct Entry {
    peers: Option<Vec<NumericIdentity>>,
    rule: u32,
    http: Vec<Rule>,
    dns: Vec<FqdnMatcher>,
}

struct Rule {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    headers: Vec<(HeaderName, Option<String>)>,
    header_matches: Vec<CompiledHeaderMatch>,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("method", &self.method.as_ref().map(Regex::as_str))
            .field("path", &self.path.as_ref().map(Regex::as_str))
            .field("host", &self.host.as_ref().map(Regex::as_str))
            .field("headers", &self.headers)
            .field("header_matches", &self.header_matches)
            .finish()
    }
}

#[derive(Debug)]
struct CompiledHeaderMatch {
    name: HeaderName,
    value: Option<HeaderValue>,
    mismatch: Option<HeaderMismatch>,
}

/// Anchors `re` as Envoy's `safe_regex` full match does.
fn full_match(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

/// Splits a Cilium `headers` entry into name and optional exact value.
pub fn split_header_rule(s: &str) -> (&str, Option<&str>) {
    match s.split_once(' ') {
        Some((name, value)) => {
            let name = name.strip_suffix(':').unwrap_or(name);
            (name, Some(value.trim_start()))
        }
        None => (s.strip_suffix(':').unwrap_or(s), None),
    }
}

impl CompiledRedirect {
    /// Compiles every rule of `redirect`; the first bad one is the error.
    pub fn compile(redirect: L7Redirect) -> Result<Self, RuleError> {
        let mut entries = Vec::with_capacity(redirect.rules.len());
        let mut has_header_matches = false;
        for (ei, e) in redirect.rules.iter().enumerate() {
            let err = |list: &'static str, rule: usize, field: String, reason: String| RuleError {
                endpoint: redirect.endpoint,
                port: redirect.port,
                entry: ei,
                list,
                rule,
                field,
                reason,
            };
            let mut http = Vec::with_capacity(e.http.len());
            for (ri, m) in e.http.iter().enumerate() {
                let rule = compile_rule(m).map_err(|(f, r)| err("http", ri, f, r))?;
                has_header_matches |= !rule.header_matches.is_empty();
                http.push(rule);
            }
            let mut dns = Vec::with_capacity(e.dns.len());
            for (ri, m) in e.dns.iter().enumerate() {
                let field = if m.match_pattern.is_some() {
                    "matchPattern"
                } else {
                    "matchName"
                };
                let matcher = FqdnMatcher::new(m.match_name.as_deref(), m.match_pattern.as_deref())
                    .map_err(|r| err("dns", ri, field.to_owned(), r))?;
                dns.push(matcher);
            }
            entries.push(Entry {
                peers: e.peers.clone(),
                rule: e.rule,
                http,
                dns,
            });
        }
        Ok(Self {
            redirect,
            entries,
            has_header_matches,
        })
    }

    /// Decides a request from `remote`; header actions edit `headers` in place.
    pub fn decide(
        &self,
        remote: NumericIdentity,
        req: &RequestView<'_>,
        headers: &mut HeaderMap,
    ) -> Decision {
        let mut allowed: Option<u32> = None;
        let mut notes = Vec::new();
        for e in &self.entries {
            if let Some(peers) = &e.peers {
                if !peers.contains(&remote) {
                    continue;
                }
            }
            let entry_allows = if e.http.is_empty() {
                true
            } else {
                let mut any = false;
                for r in &e.http {
                    if !r.base_matches(req, headers) {
                        continue;
                    }
                    if r.header_matches_pass(headers, &mut notes) {
                        any = true;
                        if !self.has_header_matches {
                            break;
                        }
                    }
                }
                any
            };
            if entry_allows && allowed.is_none() {
                allowed = Some(e.rule);
                if !self.has_header_matches {
                    break;
                }
            }
        }
        match allowed {
            Some(rule) => Decision::Allowed { rule, notes },
            None => Decision::Denied,
        }
    }
}

impl CompiledRedirect {
    /// Some rule reads request headers (`headers` or `headerMatches`): [`Self::decide`]
    /// needs them in its map; without such rules it reads none.
    pub fn reads_headers(&self) -> bool {
        self.entries
            .iter()
            .flat_map(|e| &e.http)
            .any(|r| !r.headers.is_empty() || !r.header_matches.is_empty())
    }

    /// Some rule has `headerMatches`, whose actions may edit the request's headers.
    pub fn edits_headers(&self) -> bool {
        self.has_header_matches
    }

    /// Decides a DNS query for `name` (lower-case, trailing dot) sent to a resolver of
    /// identity `remote`: the rule id of the first entry for that peer whose `dns` rules match
    /// it (or that has none), as Cilium's DNS proxy allows a query when any selector does.
    pub fn decide_dns(&self, remote: NumericIdentity, name: &str) -> Option<u32> {
        self.entries
            .iter()
            .filter(|e| e.peers.as_ref().is_none_or(|p| p.contains(&remote)))
            .find(|e| e.dns.is_empty() || e.dns.iter().any(|m| m.matches(name)))
            .map(|e| e.rule)
    }
}

fn compile_rule(m: &HttpMatch) -> Result<Rule, (String, String)> {
    let re = |field: &str, v: &Option<String>| -> Result<Option<Regex>, (String, String)> {
        v.as_deref()
            .map(full_match)
            .transpose()
            .map_err(|e| (field.to_owned(), format!("invalid regex: {e}")))
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        let (name, value) = split_header_rule(h);
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            (
                format!("headers[{i}]"),
                format!("invalid header name {name:?}"),
            )
        })?;
        headers.push((name, value.map(str::to_owned)));
    }
    let mut header_matches = Vec::with_capacity(m.header_matches.len());
    for (i, h) in m.header_matches.iter().enumerate() {
        let field = format!("headerMatches[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| (field.clone(), format!("invalid header name {:?}", h.name)))?;
        let value = match h.value.as_deref() {
            None | Some("") => None,
            Some(v) => Some(
                HeaderValue::from_str(v)
                    .map_err(|_| (field.clone(), format!("invalid header value {v:?}")))?,
            ),
        };
        header_matches.push(CompiledHeaderMatch {
            name,
            value,
            mismatch: h.mismatch,
        });
    }
    Ok(Rule {
        method: re("method", &m.method)?,
        path: re("path", &m.path)?,
        host: re("host", &m.host)?,
        headers,
        header_matches,
    })
}

/// All values of a header joined with `,`, as Envoy's `getAllOfHeaderAsString` does.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut it = headers.get_all(name).iter();
    let first = it.next()?;
    let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in it {
        s.push(',');
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(s)
}

impl Rule {
    fn base_matches(&self, req: &RequestView<'_>, headers: &HeaderMap) -> bool {
        let re_ok = |re: &Option<Regex>, s: &str| re.as_ref().is_none_or(|r| r.is_match(s));
        re_ok(&self.method, req.method)
            && re_ok(&self.path, req.path_and_query)
            && re_ok(&self.host, req.authority)
            && self.headers.iter().all(|(n, v)| match v {
                None => headers.contains_key(n),
                Some(v) => joined(headers, n).is_some_and(|got| got == *v),
            })
    }

    /// Runs the header matches with their actions; false when one fails the rule.
    fn header_matches_pass(&self, headers: &mut HeaderMap, notes: &mut Vec<String>) -> bool {
        let mut pass = true;
        for hm in &self.header_matches {
            let got = joined(headers, &hm.name);
            let matches = match &hm.value {
                None => got.is_some(),
                Some(want) => got.as_deref().map(str::as_bytes) == Some(want.as_bytes()),
            };
            if matches {
                continue;
            }
            let want = hm
                .value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            match hm.mismatch {
                None => pass = false,
                Some(HeaderMismatch::Log) => {
                    notes.push(format!("header {} mismatch (logged)", hm.name));
                }
                Some(HeaderMismatch::Add) => {
                    if let Some(v) = &hm.value {
                        headers.append(hm.name.clone(), v.clone());
                    }
                    notes.push(format!("header {} added", hm.name));
                }
                Some(HeaderMismatch::Delete) => {
                    if want.is_some() && got.is_some() {
                        headers.remove(&hm.name);
                        notes.push(format!("header {} deleted", hm.name));
                    }
                }
                Some(HeaderMismatch::Replace) => {
                    if let Some(v) = &hm.value {
                        headers.insert(hm.name.clone(), v.clone());
                    }
                    notes.push(format!("header {} replaced", hm.name));
                }
            }
        }
        pass
    }
}

/// Convenience for tests and `policy trace`-like callers: one entry, any peer.
pub fn any_peer(rule: u32, http: Vec<HttpMatch>) -> L7PeerRules {
    L7PeerRules {
        peers: None,
        rule,
        http,
        kafka: Vec::new(),
        dns: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
