//! Building a client from a kubeconfig file: errors name the file and the reason.

use std::io::Write;

use ciliate_k8s::{client, Client, K8sError};

// `Client` is not `Debug`, so no `expect_err`.
fn refused(result: Result<Client, K8sError>) -> K8sError {
    match result {
        Ok(_) => panic!("a client was built"),
        Err(err) => err,
    }
}

#[tokio::test]
async fn a_missing_kubeconfig_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.yaml");
    let err = refused(client(Some(&path)).await);
    assert!(matches!(&err, K8sError::Kubeconfig { path: p, .. } if *p == path));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("kubeconfig {}: ", path.display())),
        "{text}"
    );
}

#[tokio::test]
async fn a_malformed_kubeconfig_is_named() {
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    file.write_all(b"apiVersion: v1\nclusters: [ {\n")
        .expect("write");
    let err = refused(client(Some(file.path())).await);
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_kubeconfig_without_a_server_is_refused() {
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    file.write_all(
        b"apiVersion: v1\nkind: Config\ncurrent-context: lab\ncontexts:\n- name: lab\n  context: {cluster: lab, user: agent}\nclusters:\n- name: lab\n  cluster: {}\nusers:\n- name: agent\n  user: {token: abc}\n",
    )
    .expect("write");
    let err = refused(client(Some(file.path())).await);
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_valid_kubeconfig_gives_a_client_without_contacting_the_server() {
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    // Port 9 on loopback: nothing is sent at construction, so nothing needs to listen.
    file.write_all(
        b"apiVersion: v1\nkind: Config\ncurrent-context: lab\ncontexts:\n- name: lab\n  context: {cluster: lab, user: agent, namespace: kube-system}\nclusters:\n- name: lab\n  cluster: {server: \"http://127.0.0.1:9\"}\nusers:\n- name: agent\n  user: {token: abc}\n",
    )
    .expect("write");
    let c = client(Some(file.path())).await.expect("a client");
    assert_eq!(c.default_namespace(), "kube-system");
}

#[tokio::test]
async fn an_https_kubeconfig_builds_its_tls_client() {
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    // TLS set up from the system roots (rustls with ring): nothing is contacted yet.
    file.write_all(
        b"apiVersion: v1\nkind: Config\ncurrent-context: lab\ncontexts:\n- name: lab\n  context: {cluster: lab, user: agent}\nclusters:\n- name: lab\n  cluster: {server: \"https://127.0.0.1:9\"}\nusers:\n- name: agent\n  user: {token: abc}\n",
    )
    .expect("write");
    let c = client(Some(file.path())).await.expect("a client");
    assert_eq!(c.default_namespace(), "default");
}
