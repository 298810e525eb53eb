//! A CRI (`runtime.v1`) client generated from the vendored `proto/runtime/v1/api.proto`,
//! connected over the runtime's unix socket as the kubelet connects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("runtime.v1");
}

pub use generated::*;

/// The runtime service (pods and containers).
pub type RuntimeClient = runtime_service_client::RuntimeServiceClient<Channel>;
/// The image service.
pub type ImageClient = image_service_client::ImageServiceClient<Channel>;

/// Connects to the CRI socket at `socket` (e.g. containerd's `--address`).
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_owned();
    // The URI only fills `:authority`; the connector decides where to go.
    Endpoint::from_static("http://cri")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}
