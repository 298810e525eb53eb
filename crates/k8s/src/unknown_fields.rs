//! Unknown fields of policy objects from the API: dropped with a warning, not an error.
//!
//! The agent decodes policies with the strict types of `ciliate_model::policy`, which reject
//! any field they do not know: right for a manifest a person wrote (a typo must not silently
//! widen a policy), wrong for what the API server hands out, where a newer Cilium CRD schema
//! (or a newer Kubernetes) may carry fields Ciliate does not know yet. So objects from the API
//! are stripped of exactly those fields before the agent sees them, and each one is reported.
//!
//! The list of known fields is not written down a second time here: it is the model's own
//! types. Decoding is tried with [`serde_path_to_error`], and as long as the failure is an
//! unknown field at a path that exists in the object, that field is removed and decoding tried
//! again. Any other failure (a wrong type, a missing name) stops the stripping and is left for
//! the agent's decoder to report with its usual message.

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

/// More unknown fields than this in one object and the rest are left to the strict decoder
/// (bounds the work per object: each round decodes the object once more).
const MAX_STRIPPED: usize = 64;

/// Removes from `object` every field that `T` rejects as unknown, at any depth, and returns one
/// warning per removed field, naming its path (e.g. `spec.ingress[0].fromWorkloads: unknown
/// field, ignored`). An object that decodes as `T` is left untouched and gets no warnings.
pub fn strip_unknown_fields<T: DeserializeOwned>(object: &mut Value) -> Vec<String> {
    let mut warnings = Vec::new();
    while warnings.len() < MAX_STRIPPED {
        let err = match serde_path_to_error::deserialize::<_, T>(&*object) {
            Ok(_) => break,
            Err(err) => err,
        };
        let Some(field) = unknown_field_name(&err.inner().to_string()) else {
            break;
        };
        let mut segments: Vec<&Segment> = err.path().iter().collect();
        // serde_path_to_error records the key it was reading when the key itself is rejected.
        if matches!(segments.last(), Some(Segment::Map { key }) if *key == field) {
            segments.pop();
        }
        let Some(parent) = lookup_mut(object, &segments).and_then(Value::as_object_mut) else {
            break;
        };
        if parent.remove(&field).is_none() {
            break;
        }
        let mut path = render(&segments);
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&field);
        warnings.push(format!("{path}: unknown field, ignored"));
    }
    warnings
}

/// The field named by serde's "unknown field `x`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

fn lookup_mut<'a>(mut v: &'a mut Value, path: &[&Segment]) -> Option<&'a mut Value> {
    for seg in path {
        v = match seg {
            Segment::Map { key } => v.as_object_mut()?.get_mut(key.as_str())?,
            Segment::Seq { index } => v.as_array_mut()?.get_mut(*index)?,
            // An enum or a path serde could not follow: do not guess.
            _ => return None,
        };
    }
    Some(v)
}

fn render(path: &[&Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ciliate_model::policy::{CiliumNetworkPolicy, NetworkPolicy};
    use serde_json::json;

    use super::*;

    fn cnp() -> Value {
        json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "allow-web", "namespace": "prod", "uid": "1c1e0f0a", "resourceVersion": "812"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]
            }
        })
    }

    #[test]
    fn a_known_object_is_untouched() {
        let mut v = cnp();
        assert!(strip_unknown_fields::<CiliumNetworkPolicy>(&mut v).is_empty());
        assert_eq!(v, cnp());
    }

    #[test]
    fn unknown_fields_at_every_level_are_removed_and_named() {
        let mut v = cnp();
        v["spec"]["ingress"][0]["fromWorkloads"] = json!([{"name": "x"}]);
        v["spec"]["newTopLevelRuleField"] = json!(true);
        v["specs"] = json!([{"endpointSelector": {}, "futureField": 1}]);
        v["metadata"]["futureMeta"] = json!("x");
        v["extra"] = json!({});
        let mut warnings = strip_unknown_fields::<CiliumNetworkPolicy>(&mut v);
        warnings.sort();
        assert_eq!(
            warnings,
            [
                "extra: unknown field, ignored",
                "metadata.futureMeta: unknown field, ignored",
                "spec.ingress[0].fromWorkloads: unknown field, ignored",
                "spec.newTopLevelRuleField: unknown field, ignored",
                "specs[0].futureField: unknown field, ignored",
            ]
        );
        let mut want = cnp();
        want["specs"] = json!([{"endpointSelector": {}}]);
        assert_eq!(v, want);
        // What is left is what the agent's strict decoder accepts.
        serde_json::from_value::<CiliumNetworkPolicy>(v).expect("decodes after stripping");
    }

    #[test]
    fn other_errors_are_left_for_the_decoder() {
        let mut v = cnp();
        v["spec"]["ingress"] = json!("not a list");
        v["spec"]["zzzUnknown"] = json!(1);
        let before = v.clone();
        // The type error comes first in field order: nothing is guessed past it.
        let warnings = strip_unknown_fields::<CiliumNetworkPolicy>(&mut v);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(v, before);
    }

    #[test]
    fn network_policy_fields_from_a_newer_kubernetes_are_dropped() {
        let mut v = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "prod"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "someFutureField": {"a": 1}}
        });
        let warnings = strip_unknown_fields::<NetworkPolicy>(&mut v);
        assert_eq!(warnings, ["spec.someFutureField: unknown field, ignored"]);
        assert!(v["spec"].get("someFutureField").is_none());
    }

    #[test]
    fn inside_hand_written_deserializers_too() {
        // `labels` entries are read by a hand-written Deserialize (text or structured form).
        let mut v = cnp();
        v["spec"]["labels"] = json!([{"key": "team", "source": "k8s", "color": "blue"}]);
        let warnings = strip_unknown_fields::<CiliumNetworkPolicy>(&mut v);
        assert_eq!(warnings, ["spec.labels[0].color: unknown field, ignored"]);
        serde_json::from_value::<CiliumNetworkPolicy>(v).expect("decodes after stripping");
    }
}
