#![allow(clippy::unwrap_used)]

use super::*;
use crate::k8s::{TrafficPolicy, SERVICE_NAME_LABEL};
use crate::lb::L4Proto;

const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
  annotations: {ignored: "yes"}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalIPs: [192.0.2.10]
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  internalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: http-web, nodePort: 30080}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}
status:
  loadBalancer: {ingress: [{ip: 198.51.100.1}, {hostname: lb.example.com}]}
  conditions: null
---
# a comment-only document is skipped but counted
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.200.0.5]
  conditions: {ready: true}
  nodeName: node-a
- addresses: ["10.200.0.6"]
  conditions: {ready: false, serving: true, terminating: true}
ports:
- {name: http, port: 8080}
- {name: dns, protocol: UDP, port: 5353}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: other}
subsets:
- addresses: [{ip: 10.200.0.7}]
  notReadyAddresses: [{ip: 10.200.0.8}]
  ports: [{name: http, port: 8080}]
"#;

fn docs(text: &str) -> Vec<ApplyDocument> {
    split_documents("svc.yaml", text).unwrap()
}

/// The problems of a batch, as the lines a user reads.
fn problems(text: &str) -> Vec<String> {
    match decode_all(&docs(text)) {
        Ok(objs) => panic!("expected problems, decoded {objs:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn service(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{spec}")
}

#[test]
fn a_realistic_batch_decodes() {
    let d = docs(GOOD);
    assert_eq!(
        d.iter().map(|d| d.index).collect::<Vec<_>>(),
        [1, 3, 4],
        "the empty document 2 is counted, not returned"
    );
    let objs = decode_all(&d).unwrap();
    let Object::Service(s) = &objs[0].object else {
        panic!("{objs:?}")
    };
    assert_eq!(s.metadata.namespace, "default", "namespace defaults");
    assert_eq!(s.spec.service_type, ServiceType::NodePort);
    assert_eq!(
        s.spec.ports[0].target_port,
        Some(IntOrString::String("http-web".into()))
    );
    assert_eq!(s.spec.ports[1].protocol, L4Proto::Udp);
    assert_eq!(s.spec.ports[1].target_port, Some(IntOrString::Int(5353)));
    assert_eq!(s.spec.ports[0].node_port, Some(30080));
    assert_eq!(s.spec.affinity_timeout(), Some(60));
    assert_eq!(s.spec.internal_traffic_policy, Some(TrafficPolicy::Local));
    assert_eq!(s.status.load_balancer.ingress[0].ip, "198.51.100.1");
    let Object::EndpointSlice(es) = &objs[1].object else {
        panic!()
    };
    assert_eq!(es.service_name(), Some("web"));
    assert!(es.endpoints[1].conditions.is_terminating());
    assert_eq!(objs[1].index, 3);
    let Object::Endpoints(e) = &objs[2].object else {
        panic!()
    };
    assert_eq!(e.metadata.namespace, "other");
    assert_eq!(objs[2].object.key().to_string(), "Endpoints other/web");
}

#[test]
fn objects_round_trip_through_to_value() {
    for d in decode_all(&docs(GOOD)).unwrap() {
        let again = decode(&ApplyDocument {
            source: "x".into(),
            index: 1,
            object: d.object.to_value(),
        })
        .unwrap();
        assert_eq!(again, d.object);
    }
}

#[test]
fn the_port_example_reads_as_documented() {
    let text = format!(
        "{}\n---\n{}",
        service("  clusterIP: 10.96.0.9\n  ports: [{port: 80}]"),
        service("  clusterIP: 10.96.0.10\n  ports: [{port: 70000}]").replace("web", "web2"),
    );
    let text = text.replace("name: web2", "name: web");
    // Two Services named web: the second is also a duplicate, but its bad port is reported
    // first (duplicates are only looked for among valid objects).
    assert_eq!(
        problems(&text),
        ["svc.yaml: document 2 (Service default/web): spec.ports[0].port: invalid value 70000: must be 1-65535"]
    );
}

#[test]
fn every_problem_of_a_batch_is_reported() {
    let text = format!(
        "{}\n---\n{}\n---\n{}",
        service(
            "  clusterIP: 10.96.0.300\n  ports:\n  - {name: http, port: 80, targetPort: Http_Port}\n  - {name: http, port: 80}\n  - {port: 0}"
        ),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv6\n",
    );
    let got = problems(&text);
    let want = [
        "svc.yaml: document 1 (Service default/web): spec.clusterIP: invalid value \"10.96.0.300\": must be an IPv4 address, e.g. 10.96.0.10",
        "svc.yaml: document 1 (Service default/web): spec.ports[0].targetPort: invalid value \"Http_Port\"",
        "svc.yaml: document 1 (Service default/web): spec.ports[1].name: duplicate value \"http\": port names must be unique",
        "svc.yaml: document 1 (Service default/web): spec.ports[1].port: duplicate value 80/TCP",
        "svc.yaml: document 1 (Service default/web): spec.ports[2].name: required value",
        "svc.yaml: document 1 (Service default/web): spec.ports[2].port: invalid value 0: must be 1-65535",
        "svc.yaml: document 2 (Deployment default/x): kind: unsupported kind \"Deployment\" (apiVersion \"apps/v1\"): Ciliate reads v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Endpoints and v1 Namespace",
        "svc.yaml: document 3 (EndpointSlice default/s): metadata.labels[\"kubernetes.io/service-name\"]: required value",
        "svc.yaml: document 3 (EndpointSlice default/s): addressType: unsupported value \"IPv6\": only IPv4 EndpointSlices are supported",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.starts_with(w), "\n got: {g}\nwant: {w}...");
    }
}

#[test]
fn type_errors_name_the_field() {
    let cases = [
        (
            service("  clusterIP: 10.96.0.1\n  ports: [{port: eighty}]"),
            "spec.ports[0].port: invalid type: string \"eighty\", expected i32",
        ),
        (
            service("  clusterIP: 10.96.0.1\n  ports: [{protocol: tcp, port: 80}]"),
            "spec.ports[0].protocol: unknown variant `tcp`, expected one of `TCP`, `UDP`, `SCTP`",
        ),
        (
            service("  clusterIP: 10.96.0.1\n  ports: [{name: a}]"),
            "spec.ports[0].port: required value",
        ),
        (
            service("  type: Cluster\n  clusterIP: 10.96.0.1"),
            "spec.type: unknown variant `Cluster`, expected one of `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`",
        ),
        (
            service("  clusterIP: 10.96.0.1\n  ports: [{port: 80, targetPort: 1.5}]"),
            "spec.ports[0].targetPort: invalid type: floating point `1.5`, expected a port number or a port name",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\n".into(),
            "(EndpointSlice default/s): addressType: required value",
        ),
        (
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\n".into(),
            "apiVersion: unsupported value \"discovery.k8s.io/v1beta1\" for kind EndpointSlice: use \"discovery.k8s.io/v1\"",
        ),
        ("kind: Service\n".into(), "(Service): apiVersion: required value"),
        ("- a\n- b\n".into(), "document 1: a document must be a mapping"),
    ];
    for (text, want) in cases {
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{text}: {got:#?}");
        assert!(
            got[0].contains(want),
            "{text}\n got: {}\nwant: {want}",
            got[0]
        );
    }
}

#[test]
fn value_checks() {
    let bad = |spec: &str, want: &str| {
        let got = problems(&service(spec));
        assert!(
            got.iter().any(|g| g.contains(want)),
            "{spec}\nwant {want}\n got {got:#?}"
        );
    };
    bad("  ports: [{port: 80}]", "spec.clusterIP: required value");
    bad(
        "  clusterIP: fd00::1\n  ports: [{port: 80}]",
        "spec.clusterIP: unsupported value \"fd00::1\": IPv6 is not supported",
    );
    bad(
        "  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.2]\n  ports: [{port: 80}]",
        "spec.clusterIPs[0]: invalid value \"10.96.0.2\": must match spec.clusterIP",
    );
    bad("  clusterIP: 10.96.0.1", "spec.ports: required value");
    bad(
        "  clusterIP: 10.96.0.1\n  externalIPs: [0.0.0.0]\n  ports: [{port: 80}]",
        "spec.externalIPs[0]: invalid value \"0.0.0.0\": must be a unicast IPv4 address",
    );
    bad(
        "  clusterIP: 10.96.0.1\n  ports: [{port: 80, nodePort: 30000}]",
        "spec.ports[0].nodePort: forbidden: only NodePort and LoadBalancer Services have node ports",
    );
    bad(
        "  type: NodePort\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]",
        "spec.ports[0].nodePort: required value",
    );
    bad(
        "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80, nodePort: 30001}]",
        "a NodePort Service cannot be headless",
    );
    bad(
        "  clusterIP: 10.96.0.1\n  ports: [{port: 80, targetPort: 70000}]",
        "spec.ports[0].targetPort: invalid value 70000: must be 1-65535",
    );
    bad(
        "  clusterIP: 10.96.0.1\n  ports: [{port: 80, targetPort: \"8080\"}]",
        "spec.ports[0].targetPort: invalid value \"8080\"",
    );
    bad(
        "  clusterIP: 10.96.0.1\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n  ports: [{port: 80}]",
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: invalid value 86401: must be 1-86400",
    );
    bad(
        "  clusterIP: 10.96.0.1\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 5}}\n  ports: [{port: 80}]",
        "spec.sessionAffinityConfig: forbidden",
    );
    bad("  type: ExternalName", "spec.externalName: required value");
    let got = problems(
        &service("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]")
            .replace("name: web", "name: Web_1"),
    );
    assert!(
        got[0].contains("metadata.name: invalid value \"Web_1\": must be a DNS-1035 label"),
        "{got:?}"
    );
    let got = problems(
        &service("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]")
            .replace("{name: web}", "{name: web, namespace: Prod}"),
    );
    assert!(
        got[0].contains("metadata.namespace: invalid value \"Prod\""),
        "{got:?}"
    );
}

#[test]
fn headless_and_external_name_are_valid_without_ports_or_ip() {
    decode_all(&docs(&service("  clusterIP: None"))).unwrap();
    decode_all(&docs(&service(
        "  type: ExternalName\n  externalName: db.example.com",
    )))
    .unwrap();
    // clusterIP defaults from clusterIPs[0].
    let objs = decode_all(&docs(&service(
        "  clusterIPs: [10.96.0.7]\n  ports: [{port: 80}]",
    )))
    .unwrap();
    assert_eq!(objs.len(), 1);
}

#[test]
fn slice_and_endpoints_checks() {
    let slice = |body: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{{SERVICE_NAME_LABEL}: web}}\naddressType: IPv4\n{body}"
        )
    };
    let got = problems(&slice(
        "endpoints:\n- addresses: [10.0.0.1, 300.1.1.1]\n- addresses: []\nports:\n- {name: http, port: 8080}\n- {name: http, port: 8081}\n- {name: x, port: 65536}",
    ));
    let want = [
        "endpoints[0].addresses[1]: invalid value \"300.1.1.1\"",
        "endpoints[1].addresses: invalid value: 0 addresses, must be 1-100",
        "ports[1].name: duplicate value \"http\"",
        "ports[2].port: invalid value 65536: must be 1-65535",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.contains(w), "\n got: {g}\nwant: {w}");
    }
    let got = problems(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n- addresses: [{ip: nope}]\n  ports: [{port: 0}]\n",
    );
    assert!(
        got[0].contains("subsets[0].addresses[0].ip: invalid value \"nope\""),
        "{got:?}"
    );
    assert!(
        got[1].contains("subsets[0].ports[0].port: invalid value 0"),
        "{got:?}"
    );
}

#[test]
fn duplicate_objects_and_keys_are_refused() {
    let one = service("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]");
    let got = problems(&format!("{one}\n---\n{one}"));
    assert_eq!(
        got,
        ["svc.yaml: document 2 (Service default/web): duplicate object: svc.yaml document 1 defines it too; keep one"]
    );
    let err = split_documents("dup.yaml", "a: 1\nb: 2\na: 3\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("dup.yaml: document 1: YAML syntax error: duplicate key \"a\""),
        "{err}"
    );
}

#[test]
fn syntax_errors_name_the_document_and_line() {
    let err = split_documents("s.yaml", "a: 1\n---\nb: [1, 2\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("s.yaml: document 2: YAML syntax error: "),
        "{text}"
    );
    assert!(text.contains("line 4"), "{text}");
    let err = split_documents("s.json", "{\"a\": 1}\n{\"b\": }").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("s.json: document 2: JSON syntax error: "),
        "{err}"
    );
    // JSON files may hold several values, and YAML reads JSON too.
    assert_eq!(
        split_documents("s.json", "{\"a\":1} {\"b\":2}")
            .unwrap()
            .len(),
        2
    );
    assert_eq!(split_documents("s.yaml", "{\"a\":\t1}").unwrap().len(), 1);
    assert!(split_documents("e.yaml", "").unwrap().is_empty());
}

#[test]
fn identify_needs_only_the_identity() {
    let d = docs(&service("  ports: [{port: 70000}]"));
    assert!(decode(&d[0]).is_err());
    let key = identify(&d[0]).unwrap();
    assert_eq!(key.to_string(), "Service default/web");
    let d = docs("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n");
    let err = identify(&d[0]).unwrap_err();
    assert_eq!(
        err[0].to_string(),
        "svc.yaml: document 1 (Service): metadata.name: required value"
    );
}

#[test]
fn report_lists_every_problem() {
    let errs = decode_all(&docs(&service("  ports: [{port: 0}]"))).unwrap_err();
    let text = report(&errs, "nothing was applied");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("2 problems in the manifests; nothing was applied:")
    );
    assert!(lines.all(|l| l.starts_with("  svc.yaml: document 1 (Service default/web): ")));
}

#[test]
fn outcomes_print_like_kubectl() {
    let o = ApplyOutcome {
        key: ObjectKey {
            kind: Kind::EndpointSlice,
            namespace: "default".into(),
            name: "web-abc".into(),
        },
        action: ApplyAction::Configured,
        source: "a.yaml".into(),
        index: 1,
    };
    assert_eq!(o.to_string(), "endpointslice/web-abc configured");
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["kind"], "EndpointSlice");
    assert_eq!(v["action"], "configured");
    assert_eq!(serde_json::from_value::<ApplyOutcome>(v).unwrap(), o);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, splitting and decoding never panics.
        #[test]
        fn never_panics_on_garbage(text in "\\PC{0,200}") {
            if let Ok(d) = split_documents("g.yaml", &text) {
                let _ = decode_all(&d);
            }
            let _ = split_documents("g.json", &text);
        }

        /// Any port outside 1-65535 is reported at its path.
        #[test]
        fn out_of_range_ports_are_reported(port in prop_oneof![-100_000i64..=0, 65_536i64..=1_000_000]) {
            let text = service(&format!("  clusterIP: 10.96.0.1\n  ports: [{{port: {port}}}]"));
            let got = problems(&text);
            let want = format!("spec.ports[0].port: invalid value {port}: must be 1-65535");
            prop_assert!(got.iter().any(|g| g.contains(&want)), "{:?}", got);
        }

        /// An outcome is written as it was when its key was a `flatten`ed field (the answer's
        /// form is the API's), and either form reads back as the other's.
        #[test]
        fn outcomes_are_written_and_read_as_with_a_flattened_key(
            kind in prop_oneof![Just(Kind::Service), Just(Kind::EndpointSlice),
                                Just(Kind::Endpoints), Just(Kind::Namespace)],
            namespace in "[a-z0-9-]{0,30}",
            name in "[a-z0-9.-]{1,70}",
            action in prop_oneof![Just(ApplyAction::Created), Just(ApplyAction::Configured),
                                  Just(ApplyAction::Unchanged), Just(ApplyAction::Deleted),
                                  Just(ApplyAction::NotFound)],
            source in "\\PC{0,20}",
            index in 0usize..100_000,
        ) {
            #[derive(Debug, PartialEq, Serialize, Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Flattened {
                #[serde(flatten)]
                key: ObjectKey,
                action: ApplyAction,
                source: String,
                index: usize,
            }
            let key = ObjectKey { kind, namespace: namespace.as_str().into(), name: name.as_str().into() };
            let o = ApplyOutcome { key: key.clone(), action, source: source.as_str().into(), index };
            let f = Flattened { key, action, source, index };
            let text = serde_json::to_string(&o).unwrap();
            prop_assert_eq!(&text, &serde_json::to_string(&f).unwrap());
            prop_assert_eq!(serde_yaml_ng::to_string(&o).unwrap(), serde_yaml_ng::to_string(&f).unwrap());
            prop_assert_eq!(serde_json::from_str::<ApplyOutcome>(&text).unwrap(), o);
            prop_assert_eq!(serde_json::from_str::<Flattened>(&text).unwrap(), f);
        }
    }
}

#[test]
fn namespaces_decode_as_cluster_scoped_objects() {
    let objs = decode_all(&docs(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: alpha, namespace: ignored, labels: {team: a}}\n",
    ))
    .unwrap();
    let Object::Namespace(ns) = &objs[0].object else {
        panic!("{objs:?}")
    };
    assert_eq!(objs[0].object.key().to_string(), "Namespace alpha");
    assert_eq!(
        ns.metadata.namespace, "",
        "a Namespace lives in no namespace"
    );
    let labels = ns.labels();
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("alpha"),
        "kubernetes.io/metadata.name is automatic"
    );
    assert_eq!(
        identify(&docs("apiVersion: v1\nkind: Namespace\nmetadata: {name: alpha}\n")[0])
            .unwrap()
            .to_string(),
        "Namespace alpha"
    );
    assert_eq!(
        problems(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: Alpha_1, labels: {kubernetes.io/metadata.name: beta, \"bad key!\": x}}\n"
        ),
        [
            "svc.yaml: document 1 (Namespace Alpha_1): metadata.name: invalid value \"Alpha_1\": must be a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
            "svc.yaml: document 1 (Namespace Alpha_1): metadata.labels[\"bad key!\"]: invalid key \"bad key!\": must be an optional DNS subdomain prefix and '/', then a name of letters, digits, '-', '_' and '.' (at most 63 characters)",
            "svc.yaml: document 1 (Namespace Alpha_1): metadata.labels[\"kubernetes.io/metadata.name\"]: invalid value \"beta\": must be the namespace's name \"Alpha_1\" (Kubernetes sets it)",
        ]
    );
    assert_eq!(
        problems("apiVersion: v2\nkind: Namespace\nmetadata: {name: a}\n"),
        ["svc.yaml: document 1 (Namespace a): apiVersion: unsupported value \"v2\" for kind Namespace: use \"v1\""]
    );
}

#[test]
fn a_cluster_ip_is_given_to_one_service_of_a_batch() {
    let a = service("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]");
    let b = a
        .replace("name: web", "name: dns")
        .replace("port: 80", "port: 53, protocol: UDP");
    assert_eq!(
        problems(&format!("{a}\n---\n{b}")),
        ["svc.yaml: document 2 (Service default/dns): spec.clusterIP: invalid value \"10.96.0.1\": the cluster IP is already allocated to Service default/web (svc.yaml document 1); a cluster IP belongs to one Service"]
    );
    // Headless Services share no address.
    let h = service("  clusterIP: None\n  ports: [{port: 80}]");
    let h2 = h.replace("name: web", "name: web2");
    assert_eq!(
        decode_all(&docs(&format!("{h}\n---\n{h2}"))).unwrap().len(),
        2
    );
}

/// The documents of `text` as the agent receives them: each object's JSON text.
fn raw_docs(text: &str) -> (Vec<ApplyDocument>, Vec<raw::RawApplyDocument>) {
    let docs = split_documents("svc.yaml", text).unwrap();
    let raws = docs
        .iter()
        .map(|d| raw::RawApplyDocument {
            source: d.source.clone(),
            index: d.index,
            object: serde_json::value::to_raw_value(&d.object).unwrap(),
        })
        .collect();
    (docs, raws)
}

#[test]
fn raw_decoding_gives_the_objects_of_decode_all() {
    let (docs, raws) = raw_docs(GOOD);
    let want = decode_all(&docs).unwrap();
    assert!(!want.is_empty());
    assert_eq!(raw::decode_all_raw(&raws), Some(want));
}

#[test]
fn raw_decoding_leaves_every_problem_and_other_kind_to_decode_all() {
    let service = |name: &str, ip: &str, port: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}, ports: [{{port: {port}}}]}}\n")
    };
    let cases = [
        // A value out of range, a wrong type, an unknown kind, a policy.
        service("a", "10.96.0.1", "70000"),
        service("a", "10.96.0.1", "http"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n".to_owned(),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n".to_owned(),
        // Two documents for one object; one cluster IP for two Services.
        format!("{}---\n{}", service("a", "10.96.0.1", "80"), service("a", "10.96.0.2", "80")),
        format!("{}---\n{}", service("a", "10.96.0.1", "80"), service("b", "10.96.0.1", "81")),
    ];
    for text in cases {
        let (_, raws) = raw_docs(&text);
        assert_eq!(raw::decode_all_raw(&raws), None, "{text}");
    }
    // A key given twice: the value path reads the last one, so the raw path leaves it.
    let doc = raw::RawApplyDocument {
        source: "svc.json".into(),
        index: 1,
        object: serde_json::value::RawValue::from_string(
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"},"metadata":{"name":"b"}}"#.into(),
        )
        .unwrap(),
    };
    assert_eq!(raw::decode_all_raw(std::slice::from_ref(&doc)), None);
}

#[test]
fn a_raw_request_converts_to_the_request_of_json_values() {
    let (docs, raws) = raw_docs(GOOD);
    let req = raw::RawApplyRequest {
        documents: raws,
        delete: true,
    };
    assert_eq!(
        req.to_request().unwrap(),
        ApplyRequest {
            documents: docs,
            delete: true
        }
    );
    // The same body read either way.
    let body = serde_json::to_string(&req).unwrap();
    let typed: ApplyRequest = serde_json::from_str(&body).unwrap();
    let raw: raw::RawApplyRequest = serde_json::from_str(&body).unwrap();
    assert_eq!(raw.to_request().unwrap(), typed);
}

fn raw_doc(text: &str) -> raw::RawApplyDocument {
    raw::RawApplyDocument {
        source: "s.json".into(),
        index: 1,
        object: serde_json::value::RawValue::from_string(text.into()).unwrap(),
    }
}

#[test]
fn a_document_led_by_its_type_decodes_as_any_other() {
    let led = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}"#;
    let other_order = r#"{"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]},"kind":"Service","apiVersion":"v1"}"#;
    let decoded = raw::decode_all_raw(&[raw_doc(led)]).expect("decoded");
    assert_eq!(decoded.len(), 1);
    assert_eq!(raw::decode_all_raw(&[raw_doc(other_order)]), Some(decoded));
    // A type given twice is the value path's (which reads the last), led or not.
    for text in [
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"kind":"Namespace"}"#,
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"},"apiVersion":"v2"}"#,
    ] {
        assert_eq!(raw::decode_all_raw(&[raw_doc(text)]), None, "{text}");
    }
    // An escape in the type is decoded as JSON has it.
    let escaped = r#"{"apiVersion":"v1","kind":"Names\u0070ace","metadata":{"name":"a"}}"#;
    assert_eq!(
        raw::decode_all_raw(&[raw_doc(escaped)]).map(|d| d.len()),
        Some(1)
    );
}

#[test]
fn a_streamed_batch_is_checked_as_it_arrives() {
    let line = |index: usize, name: &str, ip: &str| {
        format!(
            r#"{{"source":"s.yaml","index":{index},"object":{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}}}"#
        ) + "\n"
    };
    let body = |lines: &[String]| format!("{{}}\n{}", lines.concat());
    let streamed = |text: &str| {
        let mut batch = raw::StreamedBatch::new();
        // In pieces that cut lines, as a body arrives.
        for piece in text.as_bytes().chunks(7) {
            batch.feed(piece).unwrap();
        }
        batch.finish().unwrap()
    };
    let good = streamed(&body(&[
        line(1, "a", "10.96.0.1"),
        line(2, "b", "10.96.0.2"),
    ]));
    let decoded = good.decoded.expect("decoded and checked");
    assert_eq!(
        decoded
            .iter()
            .map(|d| (d.source.as_str(), d.index, d.object.key().name.to_string()))
            .collect::<Vec<_>>(),
        [("s.yaml", 1, "a".to_owned()), ("s.yaml", 2, "b".to_owned())]
    );
    // A duplicate, a cluster IP given twice: left to the value path, which reports them.
    for lines in [
        [line(1, "a", "10.96.0.1"), line(2, "a", "10.96.0.2")],
        [line(1, "a", "10.96.0.1"), line(2, "b", "10.96.0.1")],
    ] {
        let s = streamed(&body(&lines));
        assert!(s.decoded.is_none());
        let errors = decode_all(&s.to_request().unwrap().documents).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].index, 2);
    }
}
