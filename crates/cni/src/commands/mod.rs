//! One module per CNI command. Each takes the validated invocation and configuration, talks to
//! the agent and the kernel, and returns what to print (or the error).

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use ciliate_client::{Client, ClientError};
use ciliate_datapath::netns::NetNs;

use crate::config::NetConf;
use crate::error::{code, CniError};

/// The agent client for this configuration.
pub fn client(conf: &NetConf) -> Client {
    Client::new(conf.agent_socket.clone())
}

/// True when the agent answered "not found".
pub fn is_not_found(e: &ClientError) -> bool {
    e.status() == Some(404)
}

/// Opens the pod's namespace from `CNI_NETNS`, refusing the plugin's own: wiring "the pod" into
/// the node's namespace would rename and readdress node interfaces.
pub fn open_pod_netns(path: &str) -> Result<NetNs, CniError> {
    let ns = NetNs::open(path).map_err(|e| CniError::netns(&e))?;
    let ours = NetNs::current().map_err(|e| CniError::netns(&e))?;
    let same = matches!((ns.inode(), ours.inode()), (Ok(a), Ok(b)) if a == b);
    if same {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS is invalid: {path} is the plugin's own network namespace, not a container's"),
            "the runtime must create a network namespace for the container and pass its path",
        ));
    }
    Ok(ns)
}
