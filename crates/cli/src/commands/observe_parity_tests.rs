//! `ciliate observe`'s flags, the service map's query parameters and the real `hubble
//! observe --print-raw-filters` build the same FlowFilters for the same request.

#![allow(clippy::unwrap_used)]

use super::*;
use clap::Parser;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::time::Duration;

/// Flags with values valid for every front end (the page checks each value on its own; the
/// CLI leaves that to the server, as Hubble does). Values hold no commas, except
/// `tcp-flags`, which the page takes as one value.
const VALUED: &[(&str, &[&str])] = &[
    ("pod", &["frontend", "demo/backend"]),
    ("from-pod", &["frontend", "demo/backend"]),
    ("to-pod", &["client", "demo/web-1"]),
    ("namespace", &["demo", "kube-system"]),
    ("from-namespace", &["demo"]),
    ("to-namespace", &["prod"]),
    ("ip", &["10.0.0.1", "10.0.0.0/8"]),
    ("from-ip", &["192.0.2.7"]),
    ("to-ip", &["fd00::1"]),
    ("label", &["app=web", "k8s:app=db"]),
    ("from-label", &["app=web"]),
    ("to-label", &["tier in (db)"]),
    ("service", &["backend", "demo/backend"]),
    ("from-service", &["front"]),
    ("to-service", &["demo/backend"]),
    ("fqdn", &["*.cilium.io"]),
    ("from-fqdn", &["a.example.com"]),
    ("to-fqdn", &["b.example.com"]),
    ("identity", &["world", "300"]),
    ("from-identity", &["host"]),
    ("to-identity", &["0x10"]),
    ("port", &["80", "8080"]),
    ("from-port", &["53"]),
    ("to-port", &["443"]),
    ("workload", &["deployment/web", "web"]),
    ("from-workload", &["statefulset/db"]),
    ("to-workload", &["api"]),
    ("cluster", &["prod", "dev-*"]),
    ("from-cluster", &["east"]),
    ("to-cluster", &["west"]),
    ("verdict", &["DROPPED", "forwarded"]),
    ("protocol", &["tcp", "http"]),
    ("type", &["drop", "trace:to-endpoint", "policy-verdict"]),
    ("drop-reason-desc", &["POLICY_DENIED"]),
    ("traffic-direction", &["ingress", "Egress"]),
    ("node-name", &["default/node0", "k8s*"]),
    ("node-label", &["zone=a"]),
    ("http-status", &["5+", "404"]),
    ("http-method", &["GET"]),
    ("http-path", &["/api/.*"]),
    ("http-url", &["http://x/.*"]),
    ("http-header", &["x-user:ann"]),
    ("trace-id", &["4bf92f35"]),
    ("ip-trace-id", &["7"]),
    ("uuid", &["u-1"]),
    ("snat-ip", &["192.0.2.1"]),
    ("ip-version", &["v4", "6"]),
    ("tcp-flags", &["syn,ack", "RST"]),
    ("interface", &["eth0"]),
    ("dns-query", &["cilium"]),
];

const SWITCHES: &[&str] = &[
    "ipv4",
    "ipv6",
    "all-namespaces",
    "from-all-namespaces",
    "to-all-namespaces",
    "encrypted",
    "unencrypted",
];

/// One flag occurrence: negated?, flag, value (None for a switch).
type Occurrence = (bool, &'static str, Option<&'static str>);

fn occurrence() -> impl Strategy<Value = Occurrence> {
    let valued = (0..VALUED.len(), 0..3usize).prop_map(|(i, j)| {
        let (flag, values) = VALUED[i];
        (flag, Some(values[j % values.len()]))
    });
    let switch = (0..SWITCHES.len()).prop_map(|i| (SWITCHES[i], None));
    (any::<bool>(), prop_oneof![4 => valued, 1 => switch])
        .prop_map(|(not, (flag, value))| (not, flag, value))
}

fn argv(request: &[Occurrence]) -> Vec<String> {
    let mut out = Vec::new();
    for (not, flag, value) in request {
        if *not {
            out.push("--not".to_owned());
        }
        out.push(format!("--{flag}"));
        out.extend(value.map(str::to_owned));
    }
    out
}

/// The page's query string: `not_<name>` for `--not --<name>`, `_` for `-`, `true` for a
/// switch.
fn query(request: &[Occurrence]) -> String {
    let pairs: Vec<(String, String)> = request
        .iter()
        .map(|(not, flag, value)| {
            let name = format!(
                "{}{}",
                if *not { "not_" } else { "" },
                flag.replace('-', "_")
            );
            (name, value.unwrap_or("true").to_owned())
        })
        .collect();
    serde_urlencoded::to_string(pairs).unwrap()
}

fn cli(args: &[String]) -> anyhow::Result<GetFlowsRequest> {
    let mut all = vec!["ciliate".to_owned(), "observe".to_owned()];
    all.extend_from_slice(args);
    let cli = crate::cli::Cli::try_parse_from(&all)?;
    let crate::cli::Command::Observe(a) = cli.command else {
        panic!("not observe");
    };
    let argv: Vec<std::ffi::OsString> = all.iter().map(Into::into).collect();
    request(
        &a,
        &argv,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    )
}

type Lists = (Vec<FlowFilter>, Vec<FlowFilter>);

fn ui(request: &[Occurrence]) -> Result<Lists, ciliate_ui::query::QueryError> {
    ciliate_ui::query::parse(&query(request), &[]).map(|(_, w, b)| (w, b))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_cli_and_the_page_build_the_same_filters(
        request in proptest::collection::vec(occurrence(), 0..6)
    ) {
        let by_cli = cli(&argv(&request)).map(|r| (r.whitelist, r.blacklist));
        let by_ui = ui(&request);
        match (by_cli, by_ui) {
            (Ok(c), Ok(u)) => prop_assert_eq!(c, u, "{:?}", request),
            (Err(c), Err(u)) => {
                // The same refusal: the page names the parameter the CLI names as a flag.
                prop_assert!(c.to_string().contains(&u.reason), "{c} / {u}");
            }
            // Filters fine alone but not together: the page refuses them itself, the CLI
            // (as Hubble's) leaves it to the server, which compiles them the same way.
            (Ok((w, b)), Err(u)) => {
                let server = ciliate_observer::filter::FlowFilters::compile(&w, &b);
                prop_assert!(
                    server.as_ref().is_err_and(|e| u.reason == e.to_string()),
                    "{:?}: the page refused ({}) what the server takes", request, u
                );
            }
            (c, u) => prop_assert!(false, "{:?}: cli {:?}, page {:?}", request, c, u),
        }
    }
}

/// The same against the real Hubble CLI (`--print-raw-filters`, which needs no server),
/// on fixed pseudo-random requests. Skipped where there is none (CI).
#[test]
fn the_real_hubble_cli_builds_the_same_filters() {
    let Some(hubble) = ciliate_testutil::hubble::hubble_cli() else {
        ciliate_testutil::hubble::skip_without_hubble(
            "the_real_hubble_cli_builds_the_same_filters",
        );
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(occurrence(), 1..6);
    let (mut agreed, mut refused) = (0, 0);
    for _ in 0..150 {
        let request = strategy.new_tree(&mut runner).unwrap().current();
        // Hubble has no --dns-query flag, and wants verdicts in capitals (ours take any case).
        if request
            .iter()
            .any(|(_, f, v)| *f == "dns-query" || *v == Some("forwarded"))
        {
            continue;
        }
        let args = argv(&request);
        let theirs = std::process::Command::new(&hubble)
            .args(["observe", "--print-raw-filters"])
            .args(&args)
            .output()
            .unwrap();
        let ours = cli(&args).and_then(|r| raw_filters_yaml(&r));
        match ours {
            Ok(yaml) => {
                assert!(
                    theirs.status.success(),
                    "{args:?}: hubble refused ({}) what we took",
                    String::from_utf8_lossy(&theirs.stderr)
                );
                assert_eq!(yaml, String::from_utf8_lossy(&theirs.stdout), "{args:?}");
                agreed += 1;
            }
            Err(e) => {
                assert!(
                    !theirs.status.success(),
                    "{args:?}: we refused ({e}) what hubble took"
                );
                let stderr = String::from_utf8_lossy(&theirs.stderr);
                assert!(stderr.contains(&e.to_string()), "{args:?}: {e} / {stderr}");
                refused += 1;
            }
        }
    }
    eprintln!("real hubble: {agreed} requests built alike, {refused} refused alike");
    assert!(agreed > 50 && refused > 5, "{agreed} {refused}");
}
