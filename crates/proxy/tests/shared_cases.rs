//! The proxy's matcher against the table `policy trace` is held to
//! (`ciliate_policy::l7::cases`): what the trace says a rule allows, the proxy allows.

use ciliate_model::l7::{L7Parser, L7PeerRules, L7Redirect};
use ciliate_policy::l7::cases::MATCH_CASES;
use ciliate_proxy::rules::{CompiledRedirect, Decision, RequestView};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

#[test]
fn the_proxy_decides_every_case_of_the_shared_table_as_policy_trace_does() {
    for c in MATCH_CASES {
        let redirect = L7Redirect {
            endpoint: 1,
            endpoint_ip: "10.0.0.1".parse().expect("ip"),
            egress: false,
            proto: 6,
            port: 80,
            parser: L7Parser::Http,
            proxy_port: 15002,
            rules: vec![L7PeerRules {
                peers: None,
                rule: 7,
                http: vec![c.rule()],
                ..Default::default()
            }],
        };
        let compiled =
            CompiledRedirect::compile(redirect).unwrap_or_else(|e| panic!("{}: {e:?}", c.name));
        let mut headers = HeaderMap::new();
        for (n, v) in c.req_headers {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let req = RequestView {
            method: c.req_method,
            path_and_query: c.req_path,
            authority: c.req_host,
        };
        let allowed = matches!(
            compiled.decide(300, &req, &mut headers),
            Decision::Allowed { .. }
        );
        assert_eq!(allowed, c.matches, "{}", c.name);
    }
}
