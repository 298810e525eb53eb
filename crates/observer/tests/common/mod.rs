//! Fixtures shared by the observer's integration tests: the TCP event they observe, the pods
//! they name, and an Observer served over gRPC on a unix socket in a temporary directory.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ciliate_model::monitor::{EventKind, MonitorEvent, L4};
use ciliate_observer::proto::observer::observer_client::ObserverClient;
use ciliate_observer::server::{bind_unix, connect_unix, serve_unix, ServeError, Service};
use ciliate_observer::store::{EndpointInfo, Snapshot};
use ciliate_observer::{Observer, ObserverConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A TCP SYN from the client pod 10.200.0.2:41000 (identity 256) to the server pod 10.200.0.3
/// (identity 257) at 2024-05-01T10:00:00.5Z; tests change other fields with `..tcp_syn(..)`.
pub fn tcp_syn(kind: EventKind, code: u8, dport: u16) -> MonitorEvent {
    MonitorEvent {
        kind,
        time: "2024-05-01T10:00:00.5Z".into(),
        code,
        reason: String::new(),
        endpoint: 1,
        ifindex: 9,
        src_identity: 256,
        dst_identity: 257,
        ct_state: "new".into(),
        len: 60,
        ethertype: 0x0800,
        src: Some("10.200.0.2".parse().expect("ip")),
        dst: Some("10.200.0.3".parse().expect("ip")),
        l4: Some(L4::Tcp {
            sport: 41000,
            dport,
            flags: vec!["SYN".into()],
        }),
        rev_nat: 0,
        rule: 0,
        ethernet: None,
    }
}

/// The current time as the monitor stamps events, for tests that need flows of "now".
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Pod `name` in namespace "default", endpoint `id`, identity 255 + `id`, label k8s:app=name.
pub fn pod_endpoint(id: u32, name: &str) -> EndpointInfo {
    EndpointInfo {
        id,
        identity: 255 + id,
        namespace: "default".into(),
        pod_name: name.into(),
        labels: vec![format!("k8s:app={name}")],
    }
}

/// A store knowing the two pods of `tcp_syn`: client 10.200.0.2 and server 10.200.0.3.
pub fn client_and_server_pods() -> Snapshot {
    let mut store = Snapshot::default();
    for (ip, id, name) in [("10.200.0.2", 1, "client"), ("10.200.0.3", 2, "server")] {
        store
            .endpoints
            .insert(ip.parse().expect("ip"), pod_endpoint(id, name).into());
    }
    store
}

/// An Observer on node "node-1" with a ring of `capacity` flows over `store`.
pub fn observer_on_node_1(capacity: usize, store: Snapshot) -> Arc<Observer> {
    Arc::new(Observer::new(
        ObserverConfig {
            node_name: "node-1".into(),
            capacity,
        },
        Arc::new(store),
    ))
}

/// An Observer's gRPC service on `hubble.sock` in a temporary directory; the server stops when
/// this is dropped (or, waiting for it, through `stop`).
pub struct ServedObserver {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), ServeError>>>,
    dir: tempfile::TempDir,
}

/// Serves `observer` on `hubble.sock` in a new temporary directory.
pub fn serve_in_tempdir(observer: &Arc<Observer>) -> ServedObserver {
    serve_in(tempfile::tempdir().expect("tempdir"), observer)
}

/// Serves `observer` on `hubble.sock` in `dir`, which lives as long as the server.
pub fn serve_in(dir: tempfile::TempDir, observer: &Arc<Observer>) -> ServedObserver {
    let socket = dir.path().join("hubble.sock");
    let listener = bind_unix(&socket).expect("bind");
    let (stop, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_unix(
        Service::new(Arc::clone(observer), "0.1.0-test", "unix://hubble.sock"),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    ServedObserver {
        socket,
        stop: Some(stop),
        server: Some(server),
        dir,
    }
}

impl ServedObserver {
    /// The temporary directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client of our own protos over the socket.
    pub async fn connect(&self) -> ObserverClient<Channel> {
        connect_unix(self.socket.clone()).await.expect("connect")
    }

    /// A bare gRPC channel over the socket, for clients generated from other protos.
    pub async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .expect("connect")
    }

    /// Stops the server and waits until it has ended.
    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Stops the server, waiting at most 5 s for it to end.
    pub async fn stop_within_5s(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stop()).await;
    }
}

impl Drop for ServedObserver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
