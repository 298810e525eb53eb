//! Building a client from a kubeconfig file or the in-cluster environment.

use std::path::Path;

use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::error::K8sError;

/// A client for the API server.
///
/// - `Some(file)`: that kubeconfig file, its current context.
/// - `None`: the in-cluster configuration first (the service account token and CA that a pod
///   of a DaemonSet gets, and `KUBERNETES_SERVICE_HOST`/`_PORT`), then the user's kubeconfig
///   (`$KUBECONFIG`, else `~/.kube/config`). This is kube's `Config::infer` with the order
///   reversed: an agent runs in a pod, where the in-cluster account is the one meant, even if
///   the host happens to have a kubeconfig.
///
/// Nothing is sent to the API server here; a server that is down shows up as errors of the
/// source's watches (counted in [`crate::Stats`], retried with backoff).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, K8sError> {
    let (config, origin) = match kubeconfig {
        Some(path) => (from_file(path).await?, path.display().to_string()),
        None => match Config::incluster() {
            Ok(config) => (config, "in-cluster configuration".to_owned()),
            Err(in_cluster) => match Config::from_kubeconfig(&KubeConfigOptions::default()).await {
                Ok(config) => (
                    config,
                    "kubeconfig ($KUBECONFIG or ~/.kube/config)".to_owned(),
                ),
                Err(kubeconfig) => {
                    return Err(K8sError::NoConfig {
                        in_cluster,
                        kubeconfig,
                    })
                }
            },
        },
    };
    Client::try_from(config).map_err(|source| K8sError::Client { origin, source })
}

async fn from_file(path: &Path) -> Result<Config, K8sError> {
    let err = |source| K8sError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(err)?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(err)
}
