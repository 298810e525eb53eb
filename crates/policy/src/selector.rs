//! Label selectors compiled for matching identities' labels, with Cilium's label sources.
//!
//! A requirement's key has a source (`k8s`, `reserved`, ...) or none, written `any:` or left
//! out, which matches a label of that key from any source.

use std::collections::BTreeSet;
use std::fmt;

use ciliate_model::labels::{Labels, POD_NAMESPACE_LABEL, SOURCE_K8S};
use ciliate_model::policy::{LabelSelector, SelectorOperator};

use crate::names::{check_label_key, check_label_value};
use crate::problems::Problems;

/// The source written in a key to mean "any source".
pub const ANY_SOURCE: &str = "any";

/// The key prefix under which Cilium gives each pod its namespace's labels:
/// `k8s:io.cilium.k8s.namespace.labels.<key>=<value>`.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The label Kubernetes puts on every namespace with the namespace's name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One requirement on one label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label source; `None` for any.
    pub source: Option<String>,
    /// The key.
    pub key: String,
    /// The operator.
    pub op: SelectorOperator,
    /// The values (for `In` and `NotIn`).
    pub values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let mut found = false;
        let mut in_values = false;
        for (source, key, value) in labels.entries() {
            if key == self.key && self.source.as_deref().is_none_or(|s| s == source) {
                found = true;
                in_values |= self.values.contains(value);
            }
        }
        // Kubernetes labels every namespace with its own name; pods carry their namespace's
        // name in `io.kubernetes.pod.namespace`, so the namespace label is derived from it when
        // the agent did not add the namespace's labels (selecting namespaces by name is the
        // most common namespaceSelector there is).
        if !found
            && self.key.strip_prefix(NAMESPACE_LABELS_PREFIX) == Some(NAMESPACE_NAME_LABEL)
            && self.source.as_deref().is_none_or(|s| s == SOURCE_K8S)
        {
            if let Some(ns) = labels.get(SOURCE_K8S, POD_NAMESPACE_LABEL) {
                found = true;
                in_values |= self.values.contains(ns);
            }
        }
        match self.op {
            SelectorOperator::In => in_values,
            SelectorOperator::NotIn => !in_values,
            SelectorOperator::Exists => found,
            SelectorOperator::DoesNotExist => !found,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.source {
            Some(s) => format!("{s}:{}", self.key),
            None => format!("{ANY_SOURCE}:{}", self.key),
        };
        let values = self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.op {
            SelectorOperator::In if self.values.len() == 1 => write!(f, "{key}={values}"),
            SelectorOperator::In => write!(f, "{key} in ({values})"),
            SelectorOperator::NotIn => write!(f, "{key} notin ({values})"),
            SelectorOperator::Exists => write!(f, "{key}"),
            SelectorOperator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// A compiled selector: all requirements must hold; none selects every identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    reqs: BTreeSet<Requirement>,
}

/// How keys of a selector name their source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyStyle {
    /// Cilium: `source:key`, no source meaning any.
    Cilium,
    /// Kubernetes: plain keys, matched against `k8s:` labels; with `prefix`, prepended
    /// (namespace selectors).
    Kubernetes { prefix: &'static str },
}

impl Selector {
    /// The selector that selects everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether it has no requirement.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The requirements.
    pub fn requirements(&self) -> impl Iterator<Item = &Requirement> {
        self.reqs.iter()
    }

    /// Adds `source:key = value` (`source` `None` for any).
    pub fn add_match(&mut self, source: Option<&str>, key: &str, value: &str) {
        self.reqs.insert(Requirement {
            source: source.map(str::to_owned),
            key: key.to_owned(),
            op: SelectorOperator::In,
            values: std::iter::once(value.to_owned()).collect(),
        });
    }

    /// Adds `source:key` exists.
    pub fn add_exists(&mut self, source: Option<&str>, key: &str) {
        self.reqs.insert(Requirement {
            source: source.map(str::to_owned),
            key: key.to_owned(),
            op: SelectorOperator::Exists,
            values: BTreeSet::new(),
        });
    }

    /// All requirements of both.
    pub fn and(&self, other: &Selector) -> Selector {
        Selector {
            reqs: self.reqs.union(&other.reqs).cloned().collect(),
        }
    }

    /// Removes every `In` requirement on exactly this source and key; returns their values.
    pub(crate) fn remove_matches(&mut self, source: Option<&str>, key: &str) -> Vec<String> {
        let (gone, keep): (BTreeSet<_>, BTreeSet<_>) =
            std::mem::take(&mut self.reqs).into_iter().partition(|r| {
                r.op == SelectorOperator::In && r.key == key && r.source.as_deref() == source
            });
        self.reqs = keep;
        gone.into_iter().flat_map(|r| r.values).collect()
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// Whether some requirement is on exactly this source and key (`None`: written as any).
    pub fn has_key(&self, source: Option<&str>, key: &str) -> bool {
        self.reqs
            .iter()
            .any(|r| r.key == key && r.source.as_deref() == source)
    }

    /// Whether some requirement's key on this source starts with `prefix`.
    pub fn has_key_prefix(&self, source: Option<&str>, prefix: &str) -> bool {
        self.reqs
            .iter()
            .any(|r| r.key.starts_with(prefix) && r.source.as_deref() == source)
    }

    /// Whether some requirement can only hold for a pod: a positive one (`In`, `Exists`) on the
    /// pod's namespace or a namespace label. Negative ones (`NotIn`, `DoesNotExist`) also hold
    /// for identities without namespace labels (the world, the host, CIDRs).
    pub fn requires_pod(&self) -> bool {
        self.reqs.iter().any(|r| {
            matches!(r.op, SelectorOperator::In | SelectorOperator::Exists)
                && r.source.as_deref().is_none_or(|s| s == SOURCE_K8S)
                && (r.key == POD_NAMESPACE_LABEL || r.key.starts_with(NAMESPACE_LABELS_PREFIX))
        })
    }

    /// Whether some requirement is on this source.
    pub fn has_source(&self, source: &str) -> bool {
        self.reqs
            .iter()
            .any(|r| r.source.as_deref() == Some(source))
    }

    /// Compiles a written selector, reporting every bad key, value and operator under `path`.
    pub(crate) fn compile(
        sel: &LabelSelector,
        style: KeyStyle,
        path: &str,
        problems: &mut Problems,
    ) -> Selector {
        let mut out = Selector::default();
        for (raw_key, value) in sel.match_labels.iter().flatten() {
            let p = format!("{path}.matchLabels.{raw_key}");
            let Some((source, key)) = parse_key(raw_key, style, &p, problems) else {
                continue;
            };
            if let Err(e) = check_label_value(value) {
                problems.error(&p, e);
                continue;
            }
            out.add_match(source.as_deref(), &key, value);
        }
        for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            let Some((source, key)) = parse_key(&req.key, style, &format!("{p}.key"), problems)
            else {
                continue;
            };
            let values = req.values.clone().unwrap_or_default();
            match req.operator {
                SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => {
                    problems.error(
                        format!("{p}.values"),
                        format!("operator {} needs at least one value", req.operator),
                    );
                    continue;
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => {
                    problems.error(
                        format!("{p}.values"),
                        format!("operator {} takes no values", req.operator),
                    );
                    continue;
                }
                _ => {}
            }
            let mut bad = false;
            for (j, v) in values.iter().enumerate() {
                if let Err(e) = check_label_value(v) {
                    problems.error(format!("{p}.values[{j}]"), e);
                    bad = true;
                }
            }
            if !bad {
                out.reqs.insert(Requirement {
                    source,
                    key,
                    op: req.operator,
                    values: values.into_iter().collect(),
                });
            }
        }
        out
    }
}

/// Splits `source:key` (Cilium) or prefixes a plain key (Kubernetes) and checks the key.
fn parse_key(
    raw: &str,
    style: KeyStyle,
    path: &str,
    problems: &mut Problems,
) -> Option<(Option<String>, String)> {
    let (source, key) = match style {
        KeyStyle::Cilium => match raw.split_once(':') {
            // As in `Label::parse`: `example.com/x:y` has no source.
            Some((src, key)) if !src.contains(['/', '.']) => {
                if src.is_empty()
                    || !src
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                {
                    problems.error(
                        path,
                        format!("label source {src:?} must be lowercase letters, digits and '-'"),
                    );
                    return None;
                }
                let src = (src != ANY_SOURCE).then(|| src.to_owned());
                (src, key.to_owned())
            }
            _ => (None, raw.to_owned()),
        },
        KeyStyle::Kubernetes { prefix } => {
            if let Err(e) = check_label_key(raw) {
                problems.error(path, e);
                return None;
            }
            (Some(SOURCE_K8S.to_owned()), format!("{prefix}{raw}"))
        }
    };
    if let Err(e) = check_label_key(&key) {
        problems.error(path, e);
        return None;
    }
    Some((source, key))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Labels {
        Labels::parse_list(s, "k8s").unwrap()
    }

    fn compile(yaml: serde_json::Value, style: KeyStyle) -> (Selector, Problems) {
        let sel: LabelSelector = serde_json::from_value(yaml).unwrap();
        let mut p = Problems::default();
        let s = Selector::compile(&sel, style, "sel", &mut p);
        (s, p)
    }

    #[test]
    fn sources_and_operators() {
        let (s, p) = compile(
            serde_json::json!({
                "matchLabels": {"app": "web", "k8s:tier": "front"},
                "matchExpressions": [
                    {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                    {"key": "any:canary", "operator": "DoesNotExist"},
                    {"key": "k8s:team", "operator": "NotIn", "values": ["x"]},
                ]
            }),
            KeyStyle::Cilium,
        );
        assert!(p.errors.is_empty(), "{p:?}");
        assert!(s.matches(&labels("app=web,tier=front,env=prod")));
        assert!(s.matches(&labels("container:app=web,tier=front,env=staging,team=y")));
        assert!(!s.matches(&labels("app=web,container:tier=front,env=prod")));
        assert!(!s.matches(&labels("app=web,tier=front,env=prod,canary=1")));
        assert!(!s.matches(&labels("app=web,tier=front,env=prod,team=x")));
        assert!(!s.matches(&labels("app=web,tier=front")));
        assert!(Selector::all().matches(&labels("")));
    }

    #[test]
    fn namespace_name_is_derived_from_the_pod_namespace_label() {
        let (s, _) = compile(
            serde_json::json!({"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}),
            KeyStyle::Kubernetes {
                prefix: NAMESPACE_LABELS_PREFIX,
            },
        );
        assert!(s.matches(&labels("k8s:io.kubernetes.pod.namespace=kube-system")));
        assert!(!s.matches(&labels("k8s:io.kubernetes.pod.namespace=default")));
    }

    #[test]
    fn bad_selectors_are_reported_with_paths() {
        let (_, p) = compile(
            serde_json::json!({
                "matchLabels": {"app": "we b", "Bad Key": "x"},
                "matchExpressions": [
                    {"key": "env", "operator": "In"},
                    {"key": "env", "operator": "Exists", "values": ["x"]},
                ]
            }),
            KeyStyle::Cilium,
        );
        let msgs: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(
            msgs[0].starts_with("sel.matchLabels.Bad Key: label key"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("sel.matchLabels.app: label value"),
            "{msgs:?}"
        );
        assert_eq!(
            msgs[2],
            "sel.matchExpressions[0].values: operator In needs at least one value"
        );
        assert_eq!(
            msgs[3],
            "sel.matchExpressions[1].values: operator Exists takes no values"
        );
    }
}
