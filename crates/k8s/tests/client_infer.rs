//! `client(None)`: the in-cluster environment, else `$KUBECONFIG`. Alone in its test binary
//! because it changes the process environment.

use std::io::Write;

use ciliate_k8s::{client, K8sError};

#[tokio::test]
async fn without_a_file_in_cluster_then_kubeconfig() {
    // Not in a pod, and $KUBECONFIG names nothing: both reasons are given.
    std::env::remove_var("KUBERNETES_SERVICE_HOST");
    std::env::remove_var("KUBERNETES_SERVICE_PORT");
    let dir = tempfile::tempdir().expect("tempdir");
    std::env::set_var("KUBECONFIG", dir.path().join("absent"));
    match client(None).await {
        Ok(_) => panic!("a client without any configuration"),
        Err(err @ K8sError::NoConfig { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("in-cluster (KUBERNETES_SERVICE_HOST"),
                "{text}"
            );
            assert!(
                text.contains("absent"),
                "names the kubeconfig it tried: {text}"
            );
        }
        Err(other) => panic!("{other}"),
    }

    // $KUBECONFIG is used when there is no in-cluster environment.
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    file.write_all(
        b"apiVersion: v1\nkind: Config\ncurrent-context: lab\ncontexts:\n- name: lab\n  context: {cluster: lab, user: agent, namespace: from-env}\nclusters:\n- name: lab\n  cluster: {server: \"http://127.0.0.1:9\"}\nusers:\n- name: agent\n  user: {token: abc}\n",
    )
    .expect("write");
    std::env::set_var("KUBECONFIG", file.path());
    let c = client(None).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.default_namespace(), "from-env");
}
