use super::*;
use ciliate_model::l7::{HeaderMatch, L7Parser};
use proptest::prelude::*;

fn redirect(rules: Vec<L7PeerRules>) -> CompiledRedirect {
    CompiledRedirect::compile(L7Redirect {
        endpoint: 7,
        endpoint_ip: "10.0.0.7".parse().expect("ip"),
        egress: false,
        proto: 6,
        port: 80,
        parser: L7Parser::Http,
        proxy_port: 15002,
        rules,
    })
    .expect("compiles")
}

fn m(method: Option<&str>, path: Option<&str>) -> HttpMatch {
    HttpMatch {
        method: method.map(str::to_owned),
        path: path.map(str::to_owned),
        ..Default::default()
    }
}

fn decide(
    r: &CompiledRedirect,
    remote: u32,
    method: &str,
    path: &str,
    host: &str,
    hdrs: &[(&str, &str)],
) -> (Decision, HeaderMap) {
    let mut headers = HeaderMap::new();
    for (n, v) in hdrs {
        headers.append(
            HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let view = RequestView {
        method,
        path_and_query: path,
        authority: host,
    };
    let d = r.decide(remote, &view, &mut headers);
    (d, headers)
}

fn allowed(d: &Decision) -> bool {
    matches!(d, Decision::Allowed { .. })
}

/// Cilium's documented examples (docs/security/policy/language.rst, the Star Wars demo, the
/// HTTP getting-started guide) and the anchoring that follows from Envoy's full match.
#[test]
fn cilium_documented_examples() {
    // "GET /public" (L7 HTTP example) and "PUT /avatar with X-My-Header: true".
    let r = redirect(vec![any_peer(
        1,
        vec![
            m(Some("GET"), Some("/public")),
            HttpMatch {
                method: Some("PUT".into()),
                path: Some("/avatar".into()),
                headers: vec!["X-My-Header: true".into()],
                ..Default::default()
            },
        ],
    )]);
    let host_rule = redirect(vec![any_peer(
        2,
        vec![HttpMatch {
            host: Some("api\\.example\\.com".into()),
            ..Default::default()
        }],
    )]);
    let methods = redirect(vec![any_peer(3, vec![m(Some("GET|POST"), Some("/v1/.*"))])]);
    let deathstar = redirect(vec![any_peer(
        4,
        vec![m(Some("POST"), Some("/v1/request-landing"))],
    )]);
    let header_present = redirect(vec![any_peer(
        5,
        vec![HttpMatch {
            headers: vec!["X-Token".into()],
            ..Default::default()
        }],
    )]);

    type Case<'a> = (
        &'a str,
        &'a CompiledRedirect,
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        bool,
    );
    let cases: Vec<Case<'_>> = vec![
        ("GET /public", &r, "GET", "/public", "x", vec![], true),
        (
            "POST /public: method differs",
            &r,
            "POST",
            "/public",
            "x",
            vec![],
            false,
        ),
        (
            "GET /public/x: path anchored at the end",
            &r,
            "GET",
            "/public/x",
            "x",
            vec![],
            false,
        ),
        (
            "GET /x/public: anchored at the start",
            &r,
            "GET",
            "/x/public",
            "x",
            vec![],
            false,
        ),
        (
            "GET /public?a=1: :path has the query",
            &r,
            "GET",
            "/public?a=1",
            "x",
            vec![],
            false,
        ),
        (
            "get /public: method is case-sensitive",
            &r,
            "get",
            "/public",
            "x",
            vec![],
            false,
        ),
        (
            "PUT /avatar with X-My-Header: true",
            &r,
            "PUT",
            "/avatar",
            "x",
            vec![("X-My-Header", "true")],
            true,
        ),
        (
            "PUT /avatar with x-my-header: true (names case-insensitive)",
            &r,
            "PUT",
            "/avatar",
            "x",
            vec![("x-my-header", "true")],
            true,
        ),
        (
            "PUT /avatar with X-My-Header: false",
            &r,
            "PUT",
            "/avatar",
            "x",
            vec![("X-My-Header", "false")],
            false,
        ),
        (
            "PUT /avatar without the header",
            &r,
            "PUT",
            "/avatar",
            "x",
            vec![],
            false,
        ),
        (
            "host regex matches",
            &host_rule,
            "GET",
            "/",
            "api.example.com",
            vec![],
            true,
        ),
        (
            "host regex anchored",
            &host_rule,
            "GET",
            "/",
            "api.example.com.evil",
            vec![],
            false,
        ),
        (
            "host with a port is not the host",
            &host_rule,
            "GET",
            "/",
            "api.example.com:8080",
            vec![],
            false,
        ),
        (
            "GET|POST: GET",
            &methods,
            "GET",
            "/v1/users",
            "x",
            vec![],
            true,
        ),
        (
            "GET|POST: POST",
            &methods,
            "POST",
            "/v1/",
            "x",
            vec![],
            true,
        ),
        (
            "GET|POST: DELETE",
            &methods,
            "DELETE",
            "/v1/users",
            "x",
            vec![],
            false,
        ),
        (
            "GET|POST alternation is anchored as a whole: GETX",
            &methods,
            "GETX",
            "/v1/a",
            "x",
            vec![],
            false,
        ),
        (
            "/v1/.*: /v2/",
            &methods,
            "GET",
            "/v2/users",
            "x",
            vec![],
            false,
        ),
        (
            "/v1/.*: /v1 without slash",
            &methods,
            "GET",
            "/v1",
            "x",
            vec![],
            false,
        ),
        (
            "deathstar: POST /v1/request-landing",
            &deathstar,
            "POST",
            "/v1/request-landing",
            "x",
            vec![],
            true,
        ),
        (
            "deathstar: PUT /v1/exhaust-port",
            &deathstar,
            "PUT",
            "/v1/exhaust-port",
            "x",
            vec![],
            false,
        ),
        (
            "header present",
            &header_present,
            "GET",
            "/",
            "x",
            vec![("X-Token", "")],
            true,
        ),
        (
            "header absent",
            &header_present,
            "GET",
            "/",
            "x",
            vec![],
            false,
        ),
    ];
    for (name, red, method, path, host, hdrs, want) in cases {
        let (d, _) = decide(red, 100, method, path, host, &hdrs);
        assert_eq!(allowed(&d), want, "{name}: {d:?}");
    }
}

#[test]
fn allowing_rule_id_and_peers() {
    let r = redirect(vec![
        L7PeerRules {
            peers: Some(vec![100, 200]),
            rule: 11,
            http: vec![m(Some("GET"), None)],
            ..Default::default()
        },
        L7PeerRules {
            peers: Some(vec![300]),
            rule: 12,
            http: vec![],
            ..Default::default()
        },
    ]);
    assert_eq!(
        decide(&r, 200, "GET", "/", "h", &[]).0,
        Decision::Allowed {
            rule: 11,
            notes: vec![]
        }
    );
    assert_eq!(decide(&r, 200, "POST", "/", "h", &[]).0, Decision::Denied);
    // An entry without rules allows everything from its peers...
    assert_eq!(
        decide(&r, 300, "DELETE", "/x", "h", &[]).0,
        Decision::Allowed {
            rule: 12,
            notes: vec![]
        }
    );
    // ...and nothing from other peers.
    assert_eq!(decide(&r, 400, "GET", "/", "h", &[]).0, Decision::Denied);
    // No entries at all: nothing is allowed (the agent only redirects ports with entries).
    assert_eq!(
        decide(&redirect(vec![]), 1, "GET", "/", "h", &[]).0,
        Decision::Denied
    );
}

fn hm(name: &str, value: Option<&str>, mismatch: Option<HeaderMismatch>) -> HttpMatch {
    HttpMatch {
        header_matches: vec![HeaderMatch {
            name: name.into(),
            value: value.map(str::to_owned),
            mismatch,
        }],
        ..Default::default()
    }
}

#[test]
fn header_match_mismatch_actions() {
    // No action: a mismatch fails the rule.
    let r = redirect(vec![any_peer(1, vec![hm("X-Env", Some("prod"), None)])]);
    assert!(allowed(
        &decide(&r, 1, "GET", "/", "h", &[("x-env", "prod")]).0
    ));
    assert!(!allowed(
        &decide(&r, 1, "GET", "/", "h", &[("x-env", "dev")]).0
    ));
    assert!(!allowed(&decide(&r, 1, "GET", "/", "h", &[]).0));

    // LOG: allowed, unchanged, noted.
    let r = redirect(vec![any_peer(
        1,
        vec![hm("X-Env", Some("prod"), Some(HeaderMismatch::Log))],
    )]);
    let (d, h) = decide(&r, 1, "GET", "/", "h", &[("x-env", "dev")]);
    assert!(
        matches!(&d, Decision::Allowed { notes, .. } if notes.len() == 1),
        "{d:?}"
    );
    assert_eq!(h.get("x-env").expect("kept"), "dev");

    // ADD: appended next to the wrong value; added when missing.
    let r = redirect(vec![any_peer(
        1,
        vec![hm("X-Env", Some("prod"), Some(HeaderMismatch::Add))],
    )]);
    let (d, h) = decide(&r, 1, "GET", "/", "h", &[("x-env", "dev")]);
    assert!(allowed(&d));
    let vals: Vec<_> = h.get_all("x-env").iter().collect();
    assert_eq!(vals, ["dev", "prod"]);
    let (_, h) = decide(&r, 1, "GET", "/", "h", &[]);
    assert_eq!(h.get("x-env").expect("added"), "prod");

    // DELETE: a wrong value is removed; a missing header stays missing.
    let r = redirect(vec![any_peer(
        1,
        vec![hm("X-Env", Some("prod"), Some(HeaderMismatch::Delete))],
    )]);
    let (d, h) = decide(&r, 1, "GET", "/", "h", &[("x-env", "dev")]);
    assert!(allowed(&d));
    assert!(!h.contains_key("x-env"));

    // REPLACE: the expected value, once.
    let r = redirect(vec![any_peer(
        1,
        vec![hm("X-Env", Some("prod"), Some(HeaderMismatch::Replace))],
    )]);
    let (d, h) = decide(&r, 1, "GET", "/", "h", &[("x-env", "dev"), ("x-env", "qa")]);
    assert!(allowed(&d));
    let vals: Vec<_> = h.get_all("x-env").iter().collect();
    assert_eq!(vals, ["prod"]);

    // Presence match without a value.
    let r = redirect(vec![any_peer(1, vec![hm("X-Id", None, None)])]);
    assert!(allowed(
        &decide(&r, 1, "GET", "/", "h", &[("x-id", "anything")]).0
    ));
    assert!(!allowed(&decide(&r, 1, "GET", "/", "h", &[]).0));
}

#[test]
fn bad_rules_are_named() {
    let bad = L7Redirect {
        endpoint: 3,
        endpoint_ip: "10.0.0.3".parse().expect("ip"),
        egress: true,
        proto: 6,
        port: 8080,
        parser: L7Parser::Http,
        proxy_port: 15001,
        rules: vec![any_peer(
            1,
            vec![m(None, Some("/ok")), m(None, Some("/(unclosed"))],
        )],
    };
    let e = CompiledRedirect::compile(bad).expect_err("bad regex");
    let s = e.to_string();
    assert!(s.contains("rules[0].http[1].path"), "{s}");
    assert!(s.contains("invalid regex"), "{s}");
}

#[test]
fn header_rule_split_as_cilium() {
    assert_eq!(
        split_header_rule("X-My-Header: true"),
        ("X-My-Header", Some("true"))
    );
    assert_eq!(
        split_header_rule("X-My-Header true"),
        ("X-My-Header", Some("true"))
    );
    assert_eq!(split_header_rule("X-My-Header"), ("X-My-Header", None));
    assert_eq!(split_header_rule("X-A: b c"), ("X-A", Some("b c")));
}

fn arb_req() -> impl Strategy<Value = (String, String, String)> {
    (
        prop_oneof![
            Just("GET".to_owned()),
            Just("POST".to_owned()),
            Just("PUT".to_owned()),
            Just("DELETE".to_owned()),
            "[A-Z]{1,8}"
        ],
        "/[a-z0-9/]{0,12}(\\?[a-z=]{0,6})?",
        "[a-z]{1,8}(\\.[a-z]{1,5})?",
    )
}

fn arb_match() -> impl Strategy<Value = HttpMatch> {
    (
        proptest::option::of(prop_oneof![
            Just("GET".to_owned()),
            Just("GET|POST".to_owned()),
            Just("P.*".to_owned())
        ]),
        proptest::option::of(prop_oneof![
            Just("/".to_owned()),
            Just("/a.*".to_owned()),
            Just("/[0-9]+".to_owned())
        ]),
    )
        .prop_map(|(method, path)| HttpMatch {
            method,
            path,
            ..Default::default()
        })
}

proptest! {
    /// A rule with no fields matches every request.
    #[test]
    fn empty_rule_matches_everything((method, path, host) in arb_req(), remote in 0u32..100_000) {
        let r = redirect(vec![any_peer(9, vec![HttpMatch::default()])]);
        let (d, _) = decide(&r, remote, &method, &path, &host, &[]);
        prop_assert_eq!(d, Decision::Allowed { rule: 9, notes: vec![] });
    }

    /// OR is order-independent: reordering rules never changes allow/deny.
    #[test]
    fn or_is_order_independent(rules in proptest::collection::vec(arb_match(), 0..5), (method, path, host) in arb_req()) {
        let fwd = redirect(vec![any_peer(1, rules.clone())]);
        let mut rev_rules = rules.clone();
        rev_rules.reverse();
        let rev = redirect(vec![any_peer(1, rev_rules)]);
        let a = allowed(&decide(&fwd, 5, &method, &path, &host, &[]).0);
        let b = allowed(&decide(&rev, 5, &method, &path, &host, &[]).0);
        prop_assert_eq!(a, b);
        // And equals "some rule matches on its own".
        let any = rules.iter().any(|m| allowed(&decide(&redirect(vec![any_peer(1, vec![m.clone()])]), 5, &method, &path, &host, &[]).0));
        prop_assert_eq!(a, any || rules.is_empty());
    }

    /// A peer outside the entry's peers is never allowed by it, whatever the request.
    #[test]
    fn foreign_peer_never_allowed((method, path, host) in arb_req(), remote in 1000u32..2000) {
        let r = redirect(vec![L7PeerRules { peers: Some(vec![1, 2, 3]), rule: 1, http: vec![],
 ..Default::default() }]);
        prop_assert_eq!(decide(&r, remote, &method, &path, &host, &[]).0, Decision::Denied);
    }
}
