//! Manifests to policies: multi-document YAML or JSON in, checked policy resources out.
//!
//! Every problem names its file, document, policy and field:
//! `policies.yaml: document 3 (CiliumNetworkPolicy default/web): spec.ingress[0].toPorts[0].ports[0].endPort: endPort 79 must be greater than or equal to port 80`.
//! A batch with any error yields all its errors and no policy, so that nothing half-checked is
//! ever put in force and one round of fixes is enough. Warnings (what is accepted but not
//! enforced as written) come in the same form.
//!
//! Documents are split as for every other manifest ([`ciliate_model::manifest`]); a
//! `kind: List` document (what `kubectl get -o yaml` prints) is read item by item.
//! Pure: the caller reads the files.

use std::collections::BTreeMap;

use ciliate_model::manifest::{split_documents, ApplyDocument, ManifestError};
use ciliate_model::policy::{PolicyKind, PolicyRef, PolicyResource};

use crate::compile::compile;

/// One policy read from a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedPolicy {
    /// The file it came from.
    pub source: String,
    /// Its document's 1-based index in the file.
    pub index: usize,
    /// The policy.
    pub resource: PolicyResource,
}

/// The policies of a batch of documents, and what they will not enforce as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The policies, in document order.
    pub policies: Vec<LoadedPolicy>,
    /// Warnings, in the same form as errors.
    pub warnings: Vec<ManifestError>,
}

/// Reads one file's text: `source` names it in messages (a name ending in `.json` is read as
/// JSON, anything else as YAML).
pub fn load(source: &str, text: &str) -> Result<Loaded, Vec<ManifestError>> {
    let docs = split_documents(source, text).map_err(|e| vec![e])?;
    load_documents(&docs)
}

/// Reads documents already split (e.g. sent by the CLI to the agent). All or nothing.
pub fn load_documents(docs: &[ApplyDocument]) -> Result<Loaded, Vec<ManifestError>> {
    let mut out = Loaded::default();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<PolicyRef, (String, usize)> = BTreeMap::new();
    for doc in docs {
        let items: Vec<(String, &serde_json::Value)> = match list_items(&doc.object) {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("items[{i}]."), v))
                .collect(),
            None => vec![(String::new(), &doc.object)],
        };
        for (prefix, value) in items {
            let err = |object: String, path: String, reason: String| ManifestError {
                source: doc.source.clone(),
                index: doc.index,
                object,
                path: format!("{prefix}{path}").trim_end_matches('.').to_owned(),
                reason,
            };
            match decode(value) {
                Err((path, reason)) => errors.push(err(describe(value), path, reason)),
                Ok(resource) => {
                    let policy = resource.policy_ref();
                    let object = policy.to_string();
                    let (compiled, problems) = compile(&resource);
                    for p in problems.errors {
                        errors.push(err(object.clone(), p.path, p.message));
                    }
                    for p in problems.warnings {
                        out.warnings.push(err(object.clone(), p.path, p.message));
                    }
                    if compiled.is_none() {
                        continue;
                    }
                    if let Some((src, idx)) = seen.get(&policy) {
                        errors.push(err(
                            object.clone(),
                            String::new(),
                            format!("{policy} is defined twice (also in {src}: document {idx})"),
                        ));
                        continue;
                    }
                    seen.insert(policy, (doc.source.clone(), doc.index));
                    out.policies.push(LoadedPolicy {
                        source: doc.source.clone(),
                        index: doc.index,
                        resource,
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The items of a `kind: List` (or `...List`) document.
fn list_items(v: &serde_json::Value) -> Option<&Vec<serde_json::Value>> {
    let kind = v.get("kind")?.as_str()?;
    if !kind.ends_with("List") {
        return None;
    }
    v.get("items")?.as_array()
}

/// `CiliumNetworkPolicy default/web`, or as much of it as a possibly broken document says.
fn describe(v: &serde_json::Value) -> String {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let meta = v.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|n| n.as_str())
            .unwrap_or("")
    };
    let (name, ns) = (field("name"), field("namespace"));
    let namespaced = PolicyKind::from_kind(kind).is_none_or(PolicyKind::is_namespaced);
    let full = match (namespaced, ns.is_empty()) {
        (true, true) => format!("default/{name}"),
        (true, false) => format!("{ns}/{name}"),
        (false, _) => name.to_owned(),
    };
    match (kind.is_empty(), name.is_empty()) {
        (true, true) => String::new(),
        (false, true) => kind.to_owned(),
        (true, false) => full,
        (false, false) => format!("{kind} {full}"),
    }
}

/// Dispatches on `apiVersion`/`kind` and decodes; on failure, the field path and the reason.
fn decode(v: &serde_json::Value) -> Result<PolicyResource, (String, String)> {
    let Some(map) = v.as_object() else {
        return Err((
            String::new(),
            "a document must be a mapping with apiVersion, kind and metadata".into(),
        ));
    };
    let text = |name: &str| map.get(name).and_then(|k| k.as_str());
    let Some(kind) = text("kind") else {
        return Err((
            "kind".into(),
            "missing: want NetworkPolicy, CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy"
                .into(),
        ));
    };
    let Some(kind) = PolicyKind::from_kind(kind) else {
        return Err((
            "kind".into(),
            format!("{kind:?} is not a policy (want NetworkPolicy, CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy)"),
        ));
    };
    match text("apiVersion") {
        Some(av) if av == kind.api_version() => {}
        Some(av) => {
            return Err((
                "apiVersion".into(),
                format!(
                    "{av:?} is not served for {kind} (want {})",
                    kind.api_version()
                ),
            ))
        }
        None => {
            return Err((
                "apiVersion".into(),
                format!("missing: want {}", kind.api_version()),
            ))
        }
    }
    let typed = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    };
    match kind {
        PolicyKind::NetworkPolicy => serde_path_to_error::deserialize(v)
            .map(PolicyResource::NetworkPolicy)
            .map_err(typed),
        _ => serde_path_to_error::deserialize(v)
            .map(PolicyResource::Cilium)
            .map_err(typed),
    }
}
