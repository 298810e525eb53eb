//! What can go wrong building a client or reading an object.

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The kubeconfig file given could not be read or parsed.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given, and neither the in-cluster environment nor a user kubeconfig
    /// (`$KUBECONFIG`, `~/.kube/config`) gave a configuration.
    #[error(
        "no Kubernetes configuration: in-cluster (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT and the service account token): {in_cluster}; kubeconfig ($KUBECONFIG or ~/.kube/config): {kubeconfig} (pass a kubeconfig file explicitly)"
    )]
    NoConfig {
        /// Why the in-cluster configuration failed.
        in_cluster: kube::config::InClusterError,
        /// Why the user's kubeconfig failed.
        kubeconfig: kube::config::KubeconfigError,
    },
    /// The configuration was read but a client could not be built from it (TLS material,
    /// an auth plugin, a proxy URL).
    #[error("{origin}: cannot build a Kubernetes client: {source}")]
    Client {
        /// Where the configuration came from (a file, or "in-cluster configuration").
        origin: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A document is not of the kind a conversion wants.
    #[error("{object}: is a {actual}, not a {expected}")]
    WrongKind {
        /// The object (`Kind namespace/name`).
        object: String,
        /// The kind wanted.
        expected: &'static str,
        /// The kind it is.
        actual: String,
    },
    /// A document does not decode as the Kubernetes type it claims to be.
    #[error("{object}: {path}: {reason}")]
    Decode {
        /// The object (`Kind namespace/name`).
        object: String,
        /// The field path (`.` for the whole object).
        path: String,
        /// Why.
        reason: String,
    },
    /// One field's value is unusable.
    #[error("{object}: {field}: {reason}")]
    Field {
        /// The object (`Kind namespace/name`).
        object: String,
        /// The field path, e.g. `status.podIPs[0].ip`.
        field: String,
        /// Why.
        reason: String,
    },
}
