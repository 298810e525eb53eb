//! Which box of the map an endpoint of a flow belongs to: pods grouped into workloads by
//! their labels (as hubble-ui groups them), the cluster's reserved identities (`world`,
//! `host`, ...) as boxes of their own.

use ciliate_observer::proto::flow::Endpoint;

/// Label keys that name a pod's workload, most specific first (hubble-ui's order: the
/// Kubernetes recommended label, then the conventional ones).
const WORKLOAD_LABELS: [&str; 4] = ["app.kubernetes.io/name", "app", "k8s-app", "name"];

/// The label Kubernetes puts on every pod's identity naming its namespace.
const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// Cilium's identity of the world (anything outside the cluster).
const WORLD_IDENTITY: u32 = 2;

/// A box of the map, as a key: what flows are grouped by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKey {
    /// Pods of one workload in one namespace.
    Workload {
        /// Namespace.
        namespace: String,
        /// Workload name (label value or pod name without its replica suffix).
        name: String,
    },
    /// A Service, drawn between its clients and its backends.
    Service {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A reserved identity (`world`, `host`, `remote-node`, ...).
    Reserved(String),
    /// An endpoint known only by its security identity.
    Identity(u32),
}

impl NodeKey {
    /// The stable id the page refers to the box by.
    pub fn id(&self) -> String {
        match self {
            Self::Workload { namespace, name } => format!("w:{namespace}/{name}"),
            Self::Service { namespace, name } => format!("s:{namespace}/{name}"),
            Self::Reserved(r) => format!("r:{r}"),
            Self::Identity(i) => format!("i:{i}"),
        }
    }

    /// The namespace whose area holds the box ("" for what is outside every namespace).
    pub fn namespace(&self) -> &str {
        match self {
            Self::Workload { namespace, .. } | Self::Service { namespace, .. } => namespace,
            Self::Reserved(_) | Self::Identity(_) => "",
        }
    }

    /// The name on the box.
    pub fn name(&self) -> String {
        match self {
            Self::Workload { name, .. } | Self::Service { name, .. } => name.clone(),
            Self::Reserved(r) => r.clone(),
            Self::Identity(i) => format!("identity {i}"),
        }
    }

    /// `workload`, `service`, `reserved` or `identity`: how the page draws it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Workload { .. } => "workload",
            Self::Service { .. } => "service",
            Self::Reserved(_) => "reserved",
            Self::Identity(_) => "identity",
        }
    }
}

/// A label `source:key=value` split into key and value (the source dropped).
fn label_kv(label: &str) -> Option<(&str, &str)> {
    let body = label.split_once(':').map_or(label, |(_, rest)| rest);
    body.split_once('=')
}

/// A pod name without its replica suffix: `frontend-0` → `frontend`,
/// `web-7d4b9c8f6d-x2x9q` → `web`. Segments containing a digit are taken to be generated,
/// at most two of them, and never the first segment.
pub fn strip_replica_suffix(pod: &str) -> &str {
    let mut name = pod;
    for _ in 0..2 {
        match name.rsplit_once('-') {
            Some((head, tail))
                if !head.is_empty()
                    && !tail.is_empty()
                    && tail.bytes().any(|b| b.is_ascii_digit()) =>
            {
                name = head;
            }
            _ => break,
        }
    }
    name
}

/// The box an endpoint belongs to.
pub fn node_of(ep: Option<&Endpoint>) -> NodeKey {
    let Some(ep) = ep else {
        return NodeKey::Reserved("world".to_owned());
    };
    if let Some(r) = ep.labels.iter().find_map(|l| l.strip_prefix("reserved:")) {
        return NodeKey::Reserved(r.to_owned());
    }
    let namespace = if ep.namespace.is_empty() {
        ep.labels
            .iter()
            .filter_map(|l| label_kv(l))
            .find(|(k, _)| *k == NAMESPACE_LABEL)
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default()
    } else {
        ep.namespace.clone()
    };
    let by_label = WORKLOAD_LABELS.iter().find_map(|want| {
        ep.labels
            .iter()
            .filter_map(|l| label_kv(l))
            .find(|(k, _)| k == want)
            .map(|(_, v)| v.to_owned())
    });
    let name = ep
        .workloads
        .first()
        .map(|w| w.name.clone())
        .filter(|n| !n.is_empty())
        .or(by_label)
        .or_else(|| {
            (!ep.pod_name.is_empty()).then(|| strip_replica_suffix(&ep.pod_name).to_owned())
        });
    match name {
        Some(name) => NodeKey::Workload { namespace, name },
        None if ep.identity == 0 || ep.identity == WORLD_IDENTITY => {
            NodeKey::Reserved("world".to_owned())
        }
        None => NodeKey::Identity(ep.identity),
    }
}

/// The labels worth showing on a box: the endpoint's own, without source prefixes and without
/// the namespace label the area already shows.
pub fn shown_labels(ep: &Endpoint) -> Vec<String> {
    ep.labels
        .iter()
        .filter(|l| label_kv(l).is_none_or(|(k, _)| k != NAMESPACE_LABEL))
        .map(|l| l.split_once(':').map_or(l.as_str(), |(_, r)| r).to_owned())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ep(namespace: &str, pod: &str, labels: &[&str], identity: u32) -> Endpoint {
        Endpoint {
            namespace: namespace.into(),
            pod_name: pod.into(),
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            identity,
            ..Endpoint::default()
        }
    }

    #[test]
    fn pods_group_by_app_label_then_name() {
        let a = node_of(Some(&ep("demo", "frontend-0", &["k8s:app=frontend"], 300)));
        let b = node_of(Some(&ep("demo", "frontend-1", &["k8s:app=frontend"], 300)));
        assert_eq!(a, b);
        assert_eq!(a.id(), "w:demo/frontend");
        let named = node_of(Some(&ep(
            "demo",
            "x",
            &["k8s:app=a", "k8s:app.kubernetes.io/name=b"],
            1,
        )));
        assert_eq!(named.name(), "b");
        let bare = node_of(Some(&ep("prod", "web-7d4b9c8f6d-x2x9q", &[], 5)));
        assert_eq!(bare.id(), "w:prod/web");
    }

    #[test]
    fn remote_pods_get_their_namespace_from_the_identity_labels() {
        let remote = node_of(Some(&ep(
            "",
            "",
            &["k8s:app=backend", "k8s:io.kubernetes.pod.namespace=demo"],
            301,
        )));
        assert_eq!(remote.id(), "w:demo/backend");
    }

    #[test]
    fn reserved_and_unknown_endpoints() {
        assert_eq!(
            node_of(Some(&ep("", "", &["reserved:host"], 1))).id(),
            "r:host"
        );
        assert_eq!(node_of(Some(&ep("", "", &[], 2))).id(), "r:world");
        assert_eq!(node_of(Some(&ep("", "", &[], 0))).id(), "r:world");
        assert_eq!(node_of(None).id(), "r:world");
        assert_eq!(node_of(Some(&ep("", "", &[], 7777))).id(), "i:7777");
    }

    #[test]
    fn replica_suffixes() {
        assert_eq!(strip_replica_suffix("frontend-0"), "frontend");
        assert_eq!(strip_replica_suffix("web-7d4b9c8f6d-x2x9q"), "web");
        assert_eq!(strip_replica_suffix("plain"), "plain");
        assert_eq!(strip_replica_suffix("my-app"), "my-app");
        assert_eq!(strip_replica_suffix("0-1"), "0");
        assert_eq!(strip_replica_suffix("-1"), "-1");
    }

    #[test]
    fn shown_labels_drop_the_source_and_namespace() {
        let e = ep(
            "demo",
            "p",
            &["k8s:app=web", "k8s:io.kubernetes.pod.namespace=demo"],
            1,
        );
        assert_eq!(shown_labels(&e), vec!["app=web"]);
    }
}
