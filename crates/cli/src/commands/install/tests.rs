//! The chart rendered with various values, and the deploy files checked against each other:
//! the CRDs structural, the repository's example policies valid against them, the compiled-in
//! file lists complete.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::schema::{self, Dialect};
use super::*;

fn args(set: &[&str]) -> InstallArgs {
    InstallArgs {
        dry_run: true,
        set: set.iter().map(|s| (*s).to_owned()).collect(),
        values: Vec::new(),
        namespace: DEFAULT_NAMESPACE.to_owned(),
        image_version: None,
    }
}

/// The documents of a rendered stream, parsed.
fn documents(stream: &str) -> Vec<Value> {
    stream
        .split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn render_docs(a: &InstallArgs) -> Vec<Value> {
    documents(&render(a).unwrap())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crd(file: &str) -> Value {
    let text = CRDS.iter().find(|(f, _)| *f == file).unwrap().1;
    serde_yaml_ng::from_str(text).unwrap()
}

fn crd_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

#[test]
fn defaults_render_every_object_once() {
    let docs = render_docs(&args(&[]));
    let kinds: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "CustomResourceDefinition",
                "ciliumclusterwidenetworkpolicies.cilium.io"
            ),
            (
                "CustomResourceDefinition",
                "ciliumnetworkpolicies.cilium.io"
            ),
            ("ServiceAccount", "ciliate"),
            ("ConfigMap", "ciliate-config"),
            ("ClusterRole", "ciliate"),
            ("ClusterRoleBinding", "ciliate"),
            ("DaemonSet", "ciliate"),
        ]
    );
    for d in &docs[2..] {
        if d["kind"] != "ClusterRole" && d["kind"] != "ClusterRoleBinding" {
            assert_eq!(d["metadata"]["namespace"], "kube-system", "{}", d["kind"]);
        }
    }
}

#[test]
fn the_relay_is_a_deployment_and_a_service_reading_etcd() {
    let docs = render_docs(&args(&[
        "relay.enabled=true",
        "etcd.endpoints={http://10.0.0.1:2379,http://10.0.0.2:2379}",
        "hubble.listenAddress=:4244",
    ]));
    let kinds: Vec<&str> = docs[2..]
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    // Helm's install order by kind.
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "DaemonSet",
            "Deployment"
        ]
    );
    let service = find(&docs, "Service");
    assert_eq!(service["metadata"]["name"], "ciliate-relay");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 4245);
    let relay = find(&docs, "Deployment");
    let c = &relay["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["ciliate-relay"]));
    assert_eq!(
        c["args"],
        json!([
            "--listen-address=:4245",
            "--etcd-endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379"
        ])
    );
    assert_eq!(
        relay["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    // Off by default.
    let docs = render_docs(&args(&[]));
    assert!(!docs
        .iter()
        .any(|d| d["kind"] == "Deployment" || d["kind"] == "Service"));
}

#[test]
fn the_daemonset_is_what_an_agent_needs() {
    let docs = render_docs(&args(&[]));
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], false);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "ciliate");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let agent = &pod["containers"][0];
    assert_eq!(agent["securityContext"]["privileged"], true);
    assert_eq!(agent["command"], json!(["ciliate-agent"]));
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(
            agent[probe]["exec"]["command"],
            json!(["ciliate", "status"]),
            "{probe}"
        );
    }
    let env = agent["env"].as_array().unwrap();
    assert_eq!(env.len(), 2, "no API server override by default: {env:?}");
    let node_name = env
        .iter()
        .find(|e| e["name"] == "CILIATE_NODE_NAME")
        .unwrap();
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        agent["envFrom"][0]["configMapRef"]["name"],
        find(&docs, "ConfigMap")["metadata"]["name"]
    );
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--write-cni-conf=/host/etc/cni/net.d",
            "--install-cni-bin=/host/opt/cni/bin"
        ]
    );

    // Every mount has its volume, with the host path and propagation it needs.
    let volumes = pod["volumes"].as_array().unwrap();
    let host_path = |mount: &Value| -> String {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        volume["hostPath"]["path"].as_str().unwrap().to_owned()
    };
    let mounts = agent["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| -> &Value {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}"))
    };
    let bpf = mount("/sys/fs/bpf");
    assert_eq!(host_path(bpf), "/sys/fs/bpf");
    assert_eq!(bpf["mountPropagation"], "Bidirectional");
    assert_eq!(host_path(mount("/run/ciliate/cgroupv2")), "/sys/fs/cgroup");
    assert_eq!(host_path(mount("/var/run/ciliate")), "/var/run/ciliate");
    assert_eq!(host_path(mount("/host/etc/cni/net.d")), "/etc/cni/net.d");
    assert_eq!(host_path(mount("/host/opt/cni/bin")), "/opt/cni/bin");
    let modules = mount("/lib/modules");
    assert_eq!(host_path(modules), "/lib/modules");
    assert_eq!(modules["readOnly"], true);

    // The init step mounts bpffs on the host when it is not.
    let init = &pod["initContainers"][0];
    assert_eq!(init["securityContext"]["privileged"], true);
    assert_eq!(init["volumeMounts"][0]["mountPropagation"], "Bidirectional");
    assert!(init["command"][2]
        .as_str()
        .unwrap()
        .contains("mount -t bpf bpf /sys/fs/bpf"));
    assert_eq!(init["image"], agent["image"]);
    assert_eq!(
        agent["image"],
        format!("localhost/ciliate:{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn rbac_only_reads_what_the_agent_watches() {
    let docs = render_docs(&args(&[]));
    let role = find(&docs, "ClusterRole");
    let mut granted: Vec<String> = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
        let keys: Vec<&str> = rule
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["apiGroups", "resources", "verbs"],
            "no names or URLs: {rule}"
        );
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                granted.push(format!(
                    "{}/{}",
                    group.as_str().unwrap(),
                    resource.as_str().unwrap()
                ));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/namespaces",
            "/nodes",
            "/pods",
            "/services",
            "cilium.io/ciliumclusterwidenetworkpolicies",
            "cilium.io/ciliumnetworkpolicies",
            "discovery.k8s.io/endpointslices",
            "networking.k8s.io/networkpolicies",
        ]
    );
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "kube-system"}])
    );
}

#[test]
fn values_reach_the_objects() {
    let docs = render_docs(&args(&[]));
    assert_eq!(
        find(&docs, "ConfigMap")["data"],
        json!({
            "CILIATE_K8S": "true",
            "CILIATE_TUNNEL": "disabled",
            "CILIATE_LOG_FORMAT": "json",
            "CILIATE_SOCKET_LB_CGROUP": "/run/ciliate/cgroupv2",
        })
    );

    let mut a = args(&[
        "tunnel=disabled,logFormat=text,mtu=1450",
        "etcd.endpoints={http://10.0.0.1:2379,http://10.0.0.2:2379}",
        "hubble.listenAddress=:4244",
        "hubble.metricsAddress=:9965",
        "socketLB.enabled=false",
        "k8sServiceHost=192.0.2.10",
        "extraArgs={--ct-gc-interval=60}",
        "extraEnv[0].name=RUST_LOG,extraEnv[0].value=debug",
        "podAnnotations.a=b,podLabels.team=net",
        "serviceAccount.annotations.x=y",
        "nodeSelector.kubernetes\\.io/arch=amd64",
        "resources.limits.memory=1Gi",
        "updateStrategy.maxUnavailable=10%",
        "priorityClassName=high",
        "image.repository=registry.example/ciliate,image.pullPolicy=Always",
    ]);
    a.namespace = "ciliate-system".into();
    a.image_version = Some("v9.9.9".into());
    let docs = render_docs(&a);
    assert_eq!(
        find(&docs, "ConfigMap")["data"],
        json!({
            "CILIATE_K8S": "true",
            "CILIATE_TUNNEL": "disabled",
            "CILIATE_LOG_FORMAT": "text",
            "CILIATE_MTU": "1450",
            "CILIATE_ETCD_ENDPOINTS": "http://10.0.0.1:2379,http://10.0.0.2:2379",
            "CILIATE_HUBBLE_LISTEN_ADDRESS": ":4244",
            "CILIATE_HUBBLE_METRICS_ADDRESS": ":9965",
            "CILIATE_NO_SOCKET_LB": "true",
        })
    );
    let ds = find(&docs, "DaemonSet");
    let tpl = &ds["spec"]["template"];
    let agent = &tpl["spec"]["containers"][0];
    assert_eq!(agent["image"], "registry.example/ciliate:v9.9.9");
    assert_eq!(agent["imagePullPolicy"], "Always");
    assert_eq!(agent["args"][2], "--ct-gc-interval=60");
    assert_eq!(
        json!(agent["env"].as_array().unwrap()[2..]),
        json!([
            {"name": "KUBERNETES_SERVICE_HOST", "value": "192.0.2.10"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
            {"name": "RUST_LOG", "value": "debug"},
        ])
    );
    assert_eq!(agent["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(agent["resources"]["requests"]["cpu"], "100m");
    assert_eq!(tpl["metadata"]["annotations"], json!({"a": "b"}));
    assert_eq!(tpl["metadata"]["labels"]["team"], "net");
    assert_eq!(
        tpl["spec"]["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"})
    );
    assert_eq!(tpl["spec"]["priorityClassName"], "high");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    assert_eq!(
        find(&docs, "ServiceAccount")["metadata"]["annotations"],
        json!({"x": "y"})
    );
    for kind in ["ServiceAccount", "ConfigMap", "DaemonSet"] {
        assert_eq!(find(&docs, kind)["metadata"]["namespace"], "ciliate-system");
    }
    assert_eq!(
        find(&docs, "ClusterRoleBinding")["subjects"][0]["namespace"],
        "ciliate-system"
    );
}

#[test]
fn a_values_file_merges_under_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.yaml");
    std::fs::write(
        &file,
        "tunnel: disabled\nhubble:\n  listenAddress: ':4244'\n",
    )
    .unwrap();
    let mut a = args(&["tunnel=vxlan"]);
    a.values = vec![file];
    let values = compute_values(&a).unwrap();
    assert_eq!(values["tunnel"], "vxlan", "--set wins over --values");
    assert_eq!(values["hubble"]["listenAddress"], ":4244");
    assert_eq!(values["hubble"]["metricsAddress"], "", "defaults kept");
}

#[test]
fn bad_values_are_usage_errors_naming_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["tunnnel=vxlan"], "values.tunnnel: unknown field"),
        (&["image.tagg=1"], "values.image.tagg: unknown field"),
        (
            &["tunnel=geneve"],
            "values.tunnel: \"geneve\" is not one of \"vxlan\", \"disabled\"",
        ),
        (
            &["socketLB.enabled=yes"],
            "values.socketLB.enabled: expected boolean, got string \"yes\"",
        ),
        (&["mtu=100"], "values.mtu: must satisfy at least one of"),
        (&["mtu=big"], "values.mtu: expected integer, got string"),
        (
            &["etcd.endpoints={10.0.0.1:2379}"],
            "does not match ^https?://",
        ),
        (
            &["extraArgs={-v}"],
            "values.extraArgs[0]: \"-v\" does not match ^--",
        ),
        (&["image=x"], "values.image: expected object, got string"),
        (&["tunnel"], "--set \"tunnel\": expected key=value"),
    ];
    for (set, want) in cases {
        match compute_values(&args(set)) {
            Err(InstallError::Usage(m)) => assert!(m.contains(want), "{set:?}: {m}"),
            other => panic!("{set:?}: {other:?}"),
        }
    }
    let mut a = args(&[]);
    a.namespace = "Kube_System".into();
    assert!(matches!(render(&a), Err(InstallError::Usage(m)) if m.contains("--namespace")));
    let mut a = args(&[]);
    a.image_version = Some("../x".into());
    assert!(matches!(render(&a), Err(InstallError::Usage(m)) if m.contains("--version")));
    // Deleting a value the templates need is refused by the schema? No: Helm allows null to
    // delete; the template then names what is missing, as a chart error.
    match render(&args(&["tunnel=null"])) {
        Err(InstallError::Chart(m)) => assert!(m.contains(".Values.tunnel is not set"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn chart_versions_agree_with_the_crate() {
    let chart: Value = serde_yaml_ng::from_str(CHART_YAML).unwrap();
    let values: Value = serde_yaml_ng::from_str(VALUES_YAML).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(values["image"]["tag"], env!("CARGO_PKG_VERSION"));
    // The defaults satisfy their own schema.
    let schema: Value = serde_json::from_str(VALUES_SCHEMA).unwrap();
    assert_eq!(
        schema::validate(&schema, &values, Dialect::JsonSchema, "values"),
        Vec::<String>::new()
    );
}

#[test]
fn every_chart_file_is_compiled_in() {
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut templates: Vec<String> = TEMPLATES.iter().map(|(f, _)| (*f).to_owned()).collect();
    templates.sort();
    assert_eq!(names("deploy/helm/ciliate/templates"), templates);
    let crds: Vec<String> = CRDS.iter().map(|(f, _)| (*f).to_owned()).collect();
    assert_eq!(names("deploy/crds"), crds, "CRDS is in file-name order");
    // The chart's crds/ are the same files (symbolic links), so Helm installs these too.
    assert_eq!(names("deploy/helm/ciliate/crds"), crds);
    for (file, text) in CRDS {
        let linked = std::fs::read_to_string(repo().join("deploy/helm/ciliate/crds").join(file));
        assert_eq!(linked.unwrap(), *text, "{file}");
    }
}

#[test]
fn crds_are_structural_and_named_as_cilium_names_them() {
    for (file, plural, kind, scope, short) in [
        (
            "ciliumnetworkpolicies.yaml",
            "ciliumnetworkpolicies",
            "CiliumNetworkPolicy",
            "Namespaced",
            "cnp",
        ),
        (
            "ciliumclusterwidenetworkpolicies.yaml",
            "ciliumclusterwidenetworkpolicies",
            "CiliumClusterwideNetworkPolicy",
            "Cluster",
            "ccnp",
        ),
    ] {
        let crd = crd(file);
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(crd["metadata"]["name"], format!("{plural}.cilium.io"));
        let spec = &crd["spec"];
        assert_eq!(spec["group"], "cilium.io");
        assert_eq!(spec["scope"], scope);
        assert_eq!(spec["names"]["kind"], kind);
        assert_eq!(spec["names"]["plural"], plural);
        assert!(spec["names"]["shortNames"]
            .as_array()
            .unwrap()
            .contains(&json!(short)));
        let version = &spec["versions"][0];
        assert_eq!(spec["versions"].as_array().unwrap().len(), 1);
        assert_eq!(version["name"], "v2");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        let schema = crd_schema(&crd);
        assert_eq!(schema::structural_problems(schema), Vec::<String>::new());
        // The top level is typed, not preserved wholesale.
        assert!(schema.get("x-kubernetes-preserve-unknown-fields").is_none());
        for field in ["spec", "specs", "status"] {
            assert!(schema["properties"].get(field).is_some(), "{file}: {field}");
        }
        assert_eq!(
            schema["properties"]["spec"], schema["properties"]["specs"]["items"],
            "{file}: spec and specs[] are the same rule"
        );
    }
    assert_eq!(
        crd_schema(&crd("ciliumnetworkpolicies.yaml"))["properties"]["spec"],
        crd_schema(&crd("ciliumclusterwidenetworkpolicies.yaml"))["properties"]["spec"],
        "both kinds take the same rules"
    );
}

/// The Cilium policies in a manifest file: every document, and the items of a List.
fn cilium_policies(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        let items = if v["kind"] == "List" {
            v["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![v]
        };
        out.extend(items.into_iter().filter(|i| {
            i["kind"] == "CiliumNetworkPolicy" || i["kind"] == "CiliumClusterwideNetworkPolicy"
        }));
    }
    out
}

fn check_policy(policy: &Value) -> Vec<String> {
    let file = if policy["kind"] == "CiliumNetworkPolicy" {
        "ciliumnetworkpolicies.yaml"
    } else {
        "ciliumclusterwidenetworkpolicies.yaml"
    };
    let crd = crd(file);
    schema::validate(crd_schema(&crd), policy, Dialect::Kubernetes, "")
}

/// Examples valid for the agent but not for the CRD, with the reason. Each must stay
/// invalid (the test says so when one is fixed).
const NOT_APPLICABLE_TO_A_CLUSTER: &[(&str, &str)] = &[(
    "cnp-description-labels.yaml",
    "spec.labels[1]: a label as a \"source:key=value\" string; Cilium's CRD (and ours) takes \
     only {key, value, source} objects there",
)];

#[test]
fn example_policies_are_valid_against_the_crds() {
    let dir = repo().join("examples/policies");
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let errors: Vec<String> = cilium_policies(&text)
            .iter()
            .inspect(|_| checked += 1)
            .flat_map(check_policy)
            .collect();
        match NOT_APPLICABLE_TO_A_CLUSTER.iter().find(|(f, _)| *f == name) {
            Some((_, why)) => {
                let field = why.split(':').next().unwrap();
                assert!(
                    errors.iter().any(|e| e.starts_with(field)),
                    "{name} is now valid against the CRD ({errors:?}): drop it from the list"
                );
            }
            None => assert!(errors.is_empty(), "{name}: {errors:?}"),
        }
    }
    assert!(checked >= 30, "only {checked} Cilium policies found");
}

#[test]
fn the_crd_schema_refuses_what_it_types() {
    let dir = repo().join("examples/policies/invalid");
    for (file, want) in [
        (
            "bad-operator.yaml",
            "spec.endpointSelector.matchExpressions[0].operator: \"Equals\" is not one of",
        ),
        (
            "no-subject.yaml",
            "spec: must satisfy exactly one of: endpointSelector set | nodeSelector set (0 do)",
        ),
        (
            "bad-label-value.yaml",
            "spec.endpointSelector.matchLabels.app: \"web server\" does not match",
        ),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let policies = cilium_policies(&text);
        assert_eq!(policies.len(), 1, "{file}");
        let errors = check_policy(&policies[0]);
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{file}: {errors:?}"
        );
    }
    // Neither ingress nor egress of any kind.
    let errors = check_policy(&json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "x"},
        "spec": {"endpointSelector": {}, "description": "nothing"},
        "specs": [{"endpointSelector": {}, "nodeSelector": {}, "egress": [{}]}],
        "bogus": 1
    }));
    assert_eq!(
        errors,
        [
            "bogus: unknown field (not in the schema)",
            "spec: must satisfy at least one of: ingress set | ingressDeny set | egress set | \
             egressDeny set",
            "specs[0]: must satisfy exactly one of: endpointSelector set | nodeSelector set (2 do)",
        ]
    );
}
