//! `ciliate install --dry-run`, the real binary: its output is the committed
//! deploy/manifests/ciliate.yaml, byte for byte what the real `helm template` prints for the
//! chart with the same values, and valid against Kubernetes' own schemas
//! (kubernetes-validate --strict). Helm and kubernetes-validate come from
//! scripts/install-deploy-tools; without them those tests SKIP loudly, and fail in CI.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ciliate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ciliate"))
        .args(args)
        .env_remove("CILIATE_SOCKET")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A checker installed by scripts/install-deploy-tools, or `None` after a loud SKIP (a panic
/// when CILIATE_REQUIRE_PRIVILEGED=1, as in CI, where the script always runs).
fn tool(relative: &str, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CILIATE_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/ciliate-tools"));
    let path = dir.join(relative);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} is missing (scripts/install-deploy-tools installs it)",
        path.display()
    );
    if ciliate_testutil::privileged_required() {
        panic!("{test} cannot run: {why} and CILIATE_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("\n!!! SKIPPED {test}: {why}. !!!\n");
    None
}

/// Value sets the chart is rendered with in these tests, as command-line arguments.
fn variants(values_file: &Path) -> Vec<Vec<String>> {
    let v = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    vec![
        v(&[]),
        v(&[
            "--namespace",
            "ciliate-system",
            "--set",
            "tunnel=disabled,logFormat=text,mtu=1450",
            "--set",
            "etcd.endpoints={http://10.0.0.1:2379,http://10.0.0.2:2379}",
            "--set",
            "hubble.listenAddress=:4244,hubble.metricsAddress=:9965",
            "--set",
            "relay.enabled=true",
            "--set",
            "socketLB.enabled=false",
            "--set",
            "k8sServiceHost=192.0.2.10,k8sServicePort=443",
            "--set",
            "extraArgs={--ct-gc-interval=60}",
            "--set",
            "extraEnv[0].name=RUST_LOG,extraEnv[0].value=debug",
            "--set",
            "nodeSelector.kubernetes\\.io/arch=amd64",
            "--set",
            "resources.limits.memory=1Gi",
            "--set",
            "updateStrategy.maxUnavailable=10%",
            "--set",
            "tolerations[0].key=a,tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule",
        ]),
        vec!["--values".into(), values_file.display().to_string()],
    ]
}

/// Strings YAML 1.1 would read as something else, and other quoting cases, in places toYaml
/// writes them.
const TRICKY_VALUES: &str = r#"
podAnnotations:
  yes-word: "y"
  on-word: "on"
  octal: "0123"
  float: "1e3"
  sexagesimal: "1:20"
  date: "2024-01-31"
  at: "@home"
  hash: "a #b"
  colon: "a: b"
  multi: "first line\nsecond line"
  multi-newline: "ends with a newline\n"
  quote: "it's \"quoted\""
  unicode: "héllo"
  tab: "a\tb"
  empty: ""
  a10: "1"
  a9: "1"
  a_: "1"
  aB: "1"
  a-b: "1"
  a.b: "1"
  a0: "1"
  a00: "1"
  b1x: "1"
  b01: "1"
  b001: "1"
  c10d: "1"
  c1e: "1"
  Z: "1"
  "1": "1"
  "2a": "1"
  "10": "1"
podLabels:
  app.kubernetes.io/instance: ciliate-1
serviceAccount:
  annotations:
    eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/ciliate"
image:
  repository: registry.example:5000/ciliate
  tag: "v1.2.3"
hubble:
  listenAddress: ":4244"
priorityClassName: ""
"#;

#[test]
fn dry_run_prints_the_committed_manifests() {
    let out = ciliate(&["install", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(repo().join("deploy/manifests/ciliate.yaml")).unwrap();
    assert!(
        text(&out.stdout) == committed,
        "deploy/manifests/ciliate.yaml is stale: regenerate it with\n  \
         cargo run -p ciliate-cli -- install --dry-run > deploy/manifests/ciliate.yaml"
    );
}

#[test]
fn without_dry_run_nothing_is_installed_and_it_says_how() {
    let out = ciliate(&["install"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("ciliate install --dry-run | kubectl apply -f -"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_usage_error_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.yaml");
    std::fs::write(&list, "- a\n").unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "tunnel: [\n").unwrap();
    let list = list.display().to_string();
    let broken = broken.display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "tunel=vxlan"], "values.tunel: unknown field"),
        (
            &["--set", "tunnel=geneve"],
            "values.tunnel: \"geneve\" is not one of \"vxlan\", \"disabled\"",
        ),
        (&["--set", "mtu"], "--set \"mtu\": expected key=value"),
        (&["--set", "a[x]=1"], "bad list index"),
        (
            &["--values", "/nonexistent.yaml"],
            "--values /nonexistent.yaml: ",
        ),
        (
            &["--values", &list],
            "expected a mapping of values, got a list",
        ),
        (&["--values", &broken], &format!("--values {broken}: ")),
        (
            &["--namespace", "Kube_System"],
            "not a valid namespace name",
        ),
        (&["--version", "a b"], "not a valid image tag"),
    ];
    for (args, want) in cases {
        let mut all = vec!["install", "--dry-run"];
        all.extend_from_slice(args);
        let out = ciliate(&all);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?} printed manifests");
        let err = text(&out.stderr);
        assert!(err.starts_with("Error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn helm_template_prints_the_same_bytes() {
    let Some(helm) = tool("bin/helm", "helm_template_prints_the_same_bytes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, TRICKY_VALUES).unwrap();
    for variant in variants(&values) {
        let mut ours = vec!["install".to_owned(), "--dry-run".to_owned()];
        ours.extend(variant.iter().cloned());
        let ours = ciliate(&ours.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ours.status.success(), "{variant:?}: {}", text(&ours.stderr));

        let namespace_given = variant.iter().any(|a| a == "--namespace");
        let mut cmd = Command::new(&helm);
        cmd.args(["template", "ciliate"])
            .arg(repo().join("deploy/helm/ciliate"))
            .arg("--include-crds")
            .args(&variant);
        if !namespace_given {
            cmd.args(["--namespace", "kube-system"]);
        }
        let theirs = cmd.output().unwrap();
        assert!(
            theirs.status.success(),
            "helm {variant:?}: {}",
            text(&theirs.stderr)
        );
        let (ours, theirs) = (text(&ours.stdout), text(&theirs.stdout));
        if ours != theirs {
            let line = ours
                .lines()
                .zip(theirs.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{variant:?}: ours and helm's differ from line {}:\n  ours: {:?}\n  helm: {:?}",
                line + 1,
                ours.lines().nth(line),
                theirs.lines().nth(line)
            );
        }
    }
}

#[test]
fn helm_lint_strict_passes() {
    let Some(helm) = tool("bin/helm", "helm_lint_strict_passes") else {
        return;
    };
    let out = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(repo().join("deploy/helm/ciliate"))
        .output()
        .unwrap();
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    assert!(
        report.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{report}"
    );
}

#[test]
fn helm_refuses_the_values_we_refuse() {
    let Some(helm) = tool("bin/helm", "helm_refuses_the_values_we_refuse") else {
        return;
    };
    for set in [
        "tunel=vxlan",
        "tunnel=geneve",
        "mtu=100",
        "socketLB.enabled=yes",
        "image.tag=1",
        "extraArgs={-v}",
    ] {
        let ours = ciliate(&["install", "--dry-run", "--set", set]);
        assert_eq!(ours.status.code(), Some(2), "{set}");
        let theirs = Command::new(&helm)
            .args(["template", "ciliate"])
            .arg(repo().join("deploy/helm/ciliate"))
            .args(["--set", set])
            .output()
            .unwrap();
        assert!(!theirs.status.success(), "helm accepted --set {set}");
        assert!(
            text(&theirs.stderr).contains("values don't meet the specifications"),
            "{set}: {}",
            text(&theirs.stderr)
        );
    }
}

#[test]
fn manifests_pass_kubernetes_validate_strict() {
    let Some(validate) = tool(
        "venv/bin/kubernetes-validate",
        "manifests_pass_kubernetes_validate_strict",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, TRICKY_VALUES).unwrap();
    let mut files = Vec::new();
    for (i, variant) in variants(&values).iter().enumerate() {
        let mut args = vec!["install", "--dry-run"];
        args.extend(variant.iter().map(String::as_str));
        let out = ciliate(&args);
        assert!(out.status.success(), "{variant:?}: {}", text(&out.stderr));
        let file = dir.path().join(format!("variant-{i}.yaml"));
        std::fs::write(&file, &out.stdout).unwrap();
        files.push(file);
    }
    // The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema.
    for version in ["1.26.0", "1.37.0"] {
        let out = Command::new(&validate)
            .args(["--strict", "-k", version])
            .args(&files)
            .output()
            .unwrap();
        let report = text(&out.stdout) + &text(&out.stderr);
        assert!(out.status.success(), "{version}:\n{report}");
        // Seven objects per file, and the relay's Service and Deployment in the second, each
        // checked against a schema (none skipped as unknown).
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(passed, 7 * files.len() + 2, "{version}:\n{report}");
    }

    // And it does fail on a wrong manifest.
    let broken = dir.path().join("broken.yaml");
    let stream = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(&broken, stream.replace("hostPID: false", "hostPid: false")).unwrap();
    let out = Command::new(&validate)
        .args(["--strict", "--quiet"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("'hostPid' was unexpected"),
        "{}",
        text(&out.stdout)
    );
}
