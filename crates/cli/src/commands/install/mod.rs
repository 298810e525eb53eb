//! `ciliate install --dry-run`: the manifests that install Ciliate on a Kubernetes cluster,
//! as one `---` separated YAML stream (as `cilium install --dry-run` prints them).
//!
//! It renders deploy/helm/ciliate itself: the chart's own files are compiled in, with the
//! small part of Go templates they use ([`template`]) and Helm's way of computing values
//! ([`values`], checked against the chart's values.schema.json by [`schema`]), so the output
//! is what `helm template --include-crds` prints for the same values (a test holds them to
//! it). Nothing is sent to a cluster: `kubectl apply -f -` does that.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use super::{Coded, Outcome};

pub mod schema;
pub mod template;
pub mod values;
pub mod yaml;

/// The chart's name, and the fixed name of its release (the objects are named after it).
pub const CHART: &str = "ciliate";
/// The namespace the agents run in unless `--namespace` says otherwise (Cilium's too).
pub const DEFAULT_NAMESPACE: &str = "kube-system";

/// The CRDs, as `helm template --include-crds` prints them: in file-name order.
pub const CRDS: &[(&str, &str)] = &[
    (
        "ciliumclusterwidenetworkpolicies.yaml",
        include_str!("../../../../../deploy/crds/ciliumclusterwidenetworkpolicies.yaml"),
    ),
    (
        "ciliumnetworkpolicies.yaml",
        include_str!("../../../../../deploy/crds/ciliumnetworkpolicies.yaml"),
    ),
];

/// The templates, in the order Helm prints them (its install order by kind: ServiceAccount,
/// ConfigMap, ClusterRole, ClusterRoleBinding, Service, DaemonSet, Deployment).
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "serviceaccount.yaml",
        include_str!("../../../../../deploy/helm/ciliate/templates/serviceaccount.yaml"),
    ),
    (
        "configmap.yaml",
        include_str!("../../../../../deploy/helm/ciliate/templates/configmap.yaml"),
    ),
    (
        "clusterrole.yaml",
        include_str!("../../../../../deploy/helm/ciliate/templates/clusterrole.yaml"),
    ),
    (
        "clusterrolebinding.yaml",
        include_str!("../../../../../deploy/helm/ciliate/templates/clusterrolebinding.yaml"),
    ),
    (
        "relay-service.yaml",
        include_str!("../../../../../deploy/helm/ciliate/templates/relay-service.yaml"),
    ),
    (
        "daemonset.yaml",
        include_str!("../../../../../deploy/helm/ciliate/templates/daemonset.yaml"),
    ),
    (
        "relay-deployment.yaml",
        include_str!("../../../../../deploy/helm/ciliate/templates/relay-deployment.yaml"),
    ),
];

/// The chart's metadata, its default values and their schema.
pub const CHART_YAML: &str = include_str!("../../../../../deploy/helm/ciliate/Chart.yaml");
/// values.yaml.
pub const VALUES_YAML: &str = include_str!("../../../../../deploy/helm/ciliate/values.yaml");
/// values.schema.json.
pub const VALUES_SCHEMA: &str =
    include_str!("../../../../../deploy/helm/ciliate/values.schema.json");

/// Arguments of `ciliate install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print the manifests instead of installing (the only mode: see the command's help).
    #[arg(long)]
    pub dry_run: bool,
    /// Set a chart value, Helm's syntax (key.sub=value, list[0]=v, list={a,b}); repeatable,
    /// later wins. Keys are those of deploy/helm/ciliate/values.yaml.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A YAML file of chart values, merged over the defaults before any --set; repeatable.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// The namespace of the agents, their ServiceAccount and ConfigMap (it must exist).
    #[arg(short = 'n', long, value_name = "NS", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// The agent image's tag (image.tag) [default: this ciliate's version].
    #[arg(long = "version", value_name = "TAG")]
    pub image_version: Option<String>,
}

/// Why the manifests could not be rendered. `Usage` is the user's input (exit 2); `Chart` is
/// a bug in the compiled-in chart.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Bad --set, --values, --namespace or --version, or values the schema refuses.
    #[error("{0}")]
    Usage(String),
    /// The chart itself does not render.
    #[error("the compiled-in chart is broken: {0}")]
    Chart(String),
}

/// Runs `ciliate install`.
pub fn run(args: &InstallArgs) -> anyhow::Result<Outcome> {
    if !args.dry_run {
        return Err(Coded {
            code: 2,
            error: anyhow::anyhow!(
                "ciliate install does not talk to a cluster itself: it prints the manifests \
                 with --dry-run, and kubectl applies them:\n  \
                 ciliate install --dry-run | kubectl apply -f -"
            ),
        }
        .into());
    }
    match render(args) {
        Ok(stream) => {
            crate::output::print(&stream)?;
            Ok(Outcome::Success)
        }
        Err(InstallError::Usage(message)) => Err(Coded {
            code: 2,
            error: anyhow::anyhow!(message),
        }
        .into()),
        Err(e @ InstallError::Chart(_)) => Err(e.into()),
    }
}

/// The manifests for `args`: the CRDs, then every template rendered, each document headed
/// by `---` and `# Source: <chart path>` as Helm prints them.
pub fn render(args: &InstallArgs) -> Result<String, InstallError> {
    check_namespace(&args.namespace)?;
    let values = compute_values(args)?;
    let chart: Value = serde_yaml_ng::from_str(CHART_YAML)
        .map_err(|e| InstallError::Chart(format!("Chart.yaml: {e}")))?;
    let root = json!({
        "Values": values,
        "Release": {"Name": CHART, "Namespace": args.namespace, "Service": "Helm"},
        "Chart": {
            "Name": chart.get("name"),
            "Version": chart.get("version"),
            "AppVersion": chart.get("appVersion"),
        },
    });
    let mut out = String::new();
    for (file, text) in CRDS {
        // Helm prints CRD files as they are, untrimmed.
        out.push_str(&format!("---\n# Source: {CHART}/crds/{file}\n{text}\n"));
    }
    for (file, text) in TEMPLATES {
        let rendered = template::Template::parse(file, text)
            .and_then(|t| t.render(&root))
            .map_err(|e| InstallError::Chart(e.to_string()))?;
        let rendered = rendered.trim();
        if !rendered.is_empty() {
            out.push_str(&format!(
                "---\n# Source: {CHART}/templates/{file}\n{rendered}\n"
            ));
        }
    }
    Ok(out)
}

/// Defaults, then --values files, then --set, then --version; checked against the schema.
pub fn compute_values(args: &InstallArgs) -> Result<Value, InstallError> {
    let mut merged: Value = serde_yaml_ng::from_str(VALUES_YAML)
        .map_err(|e| InstallError::Chart(format!("values.yaml: {e}")))?;
    let usage = |e: values::ValuesError| InstallError::Usage(e.to_string());
    for file in &args.values {
        values::merge(&mut merged, values::read_file(file).map_err(usage)?);
    }
    let mut sets = Value::Object(serde_json::Map::new());
    for s in &args.set {
        values::apply_set(&mut sets, s).map_err(usage)?;
    }
    values::merge(&mut merged, sets);
    if let Some(tag) = &args.image_version {
        check_tag(tag)?;
        values::merge(&mut merged, json!({"image": {"tag": tag}}));
    }
    let schema: Value = serde_json::from_str(VALUES_SCHEMA)
        .map_err(|e| InstallError::Chart(format!("values.schema.json: {e}")))?;
    let errors = schema::validate(&schema, &merged, schema::Dialect::JsonSchema, "values");
    if !errors.is_empty() {
        return Err(InstallError::Usage(format!(
            "invalid chart values (deploy/helm/ciliate/values.yaml lists the keys):\n  {}",
            errors.join("\n  ")
        )));
    }
    Ok(merged)
}

/// A namespace name is a DNS label: the API server would refuse anything else.
fn check_namespace(ns: &str) -> Result<(), InstallError> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InstallError::Usage(format!(
            "--namespace {ns:?}: not a valid namespace name (lower-case letters, digits and \
             '-', at most 63, starting and ending with a letter or digit)"
        )))
    }
}

/// An image tag as registries accept it.
fn check_tag(tag: &str) -> Result<(), InstallError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(InstallError::Usage(format!(
            "--version {tag:?}: not a valid image tag (letters, digits, '_', '.', '-', at most \
             128, not starting with '.' or '-')"
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
