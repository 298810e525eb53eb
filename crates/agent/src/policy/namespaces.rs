//! Namespace labels on identities, as Cilium gives them: every pod of namespace `ns` carries
//! `k8s:io.cilium.k8s.namespace.labels.<key>=<value>` for each label of the `Namespace` object
//! `ns` (with `kubernetes.io/metadata.name`, which Kubernetes always sets), so that
//! `namespaceSelector`s and Cilium selectors on namespace labels select its pods.
//!
//! Identities are numbered from the labels the endpoint was created with; the namespace's
//! labels are added when policy is computed and shown (see
//! [`super::PolicyManager::with_cluster_identities`]). A pod of one namespace and labels keeps
//! one identity, so adding a function of the namespace keeps numbers and label sets one to
//! one, and a change of a Namespace's labels changes what selects its pods at the next
//! reconciliation without renumbering them.

use std::collections::BTreeMap;

use ciliate_model::k8s::{Namespace, Object};
use ciliate_model::labels::{Label, Labels, POD_NAMESPACE_LABEL, SOURCE_K8S};
use ciliate_policy::IdentityLabels;

/// The key prefix of namespace labels on a pod (Cilium's).
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The labels of every Namespace object in force, by namespace name.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// The namespace labels of `objects` (the Namespaces among them).
pub fn namespace_labels<'a>(objects: impl IntoIterator<Item = &'a Object>) -> NamespaceLabels {
    objects
        .into_iter()
        .filter_map(|o| match o {
            Object::Namespace(ns) => Some((ns.metadata.name.to_string(), Namespace::labels(ns))),
            _ => None,
        })
        .collect()
}

/// `labels` as the identity's labels: when they name a namespace that has a Namespace object,
/// its labels replace any namespace labels the endpoint was created with (a pod cannot claim
/// its namespace's labels); otherwise they are kept as given.
pub fn with_namespace_labels(labels: &Labels, namespaces: &NamespaceLabels) -> Labels {
    let Some(ns) = labels
        .get(SOURCE_K8S, POD_NAMESPACE_LABEL)
        .and_then(|ns| namespaces.get(ns))
    else {
        return labels.clone();
    };
    labels
        .iter()
        .filter(|l| !(l.source == SOURCE_K8S && l.key.starts_with(NAMESPACE_LABELS_PREFIX)))
        .chain(
            ns.iter()
                .map(|(k, v)| Label::new(SOURCE_K8S, &format!("{NAMESPACE_LABELS_PREFIX}{k}"), v)),
        )
        .collect()
}

/// Every identity's labels with its namespace's.
pub fn identities_with_namespace_labels(
    identities: IdentityLabels,
    namespaces: &NamespaceLabels,
) -> IdentityLabels {
    if namespaces.is_empty() {
        return identities;
    }
    identities
        .into_iter()
        .map(|(id, l)| (id, with_namespace_labels(&l, namespaces)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)]) -> Object {
        let mut n = Namespace::default();
        n.metadata.name = name.into();
        n.metadata.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Object::Namespace(n)
    }

    #[test]
    fn a_namespace_objects_labels_replace_the_pods_claims() {
        let namespaces = namespace_labels(&[ns("alpha", &[("team", "a")])]);
        let pod = Labels::parse_list(
            "app=web,io.kubernetes.pod.namespace=alpha,io.cilium.k8s.namespace.labels.team=forged",
            "k8s",
        )
        .unwrap();
        let got = with_namespace_labels(&pod, &namespaces);
        assert_eq!(
            got.to_string(),
            Labels::parse_list(
                "app=web,io.kubernetes.pod.namespace=alpha,io.cilium.k8s.namespace.labels.team=a,io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=alpha",
                "k8s"
            )
            .unwrap()
            .to_string()
        );
        // Without a Namespace object (or a namespace at all), the labels stay as given.
        let other = Labels::parse_list(
            "app=web,io.kubernetes.pod.namespace=beta,io.cilium.k8s.namespace.labels.team=b",
            "k8s",
        )
        .unwrap();
        assert_eq!(with_namespace_labels(&other, &namespaces), other);
        let world = Labels::parse_list("reserved:world", "k8s").unwrap();
        assert_eq!(with_namespace_labels(&world, &namespaces), world);
    }

    #[test]
    fn only_namespaces_count() {
        let svc = Object::Service(Default::default());
        let got = namespace_labels([&svc, &ns("alpha", &[])]);
        assert_eq!(got.len(), 1);
        assert_eq!(got["alpha"]["kubernetes.io/metadata.name"], "alpha");
    }
}
