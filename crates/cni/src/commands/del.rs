//! DEL: release the endpoint at the agent and delete the veth pair. Idempotent: a container we do
//! not know, a namespace that is gone, a veth already deleted are all success.
//!
//! When the agent cannot be reached the veth is deleted anyway (nothing should keep forwarding
//! to a dead pod) and the error says "try again later", so that the runtime retries and the
//! address is released once the agent is back.

use ciliate_datapath::netlink::Netlink;
use ciliate_datapath::netns::NetNs;

use crate::args::Invocation;
use crate::commands::{client, is_not_found};
use crate::config::NetConf;
use crate::error::CniError;
use crate::log::Log;
use crate::names;

/// Runs DEL.
pub async fn run(inv: &Invocation, conf: &NetConf, log: &Log) -> Result<(), CniError> {
    let agent = client(conf);
    let released = agent
        .delete_attachment(&inv.container_id, &inv.ifname)
        .await;

    let mut host_ifnames = vec![names::host_ifname(&inv.container_id, &inv.ifname)];
    match &released {
        Ok(d) => {
            log.line(format_args!(
                "agent: endpoint {}, released {}",
                d.endpoint
                    .as_ref()
                    .map_or("none".to_owned(), |e| e.id.to_string()),
                d.released.map_or("nothing".to_owned(), |a| a.to_string())
            ));
            // An endpoint registered with another name (an older naming) is deleted too.
            if let Some(ep) = &d.endpoint {
                if !host_ifnames.contains(&ep.host_ifname) {
                    host_ifnames.push(ep.host_ifname.clone());
                }
            }
        }
        Err(e) => log.line(format_args!("agent: {e}")),
    }

    let node = Netlink::connect()?;
    for name in &host_ifnames {
        if node.delete_link(name).await? {
            log.line(format_args!("deleted {name}"));
        }
    }
    delete_pod_side(inv, log).await?;

    match released {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(CniError::agent("releasing the endpoint at the agent", &e)),
    }
}

/// Deletes the pod's interface when its namespace still exists and still has one: normally it
/// went with the host side, this catches a pair whose host side was removed by hand.
async fn delete_pod_side(inv: &Invocation, log: &Log) -> Result<(), CniError> {
    let Some(path) = inv.netns.as_deref() else {
        return Ok(());
    };
    let ns = match NetNs::open(path) {
        Ok(ns) => ns,
        Err(e) => {
            // The runtime may already have removed the namespace: nothing is left inside it.
            log.line(format_args!("pod side: {e}"));
            return Ok(());
        }
    };
    // Never delete in our own namespace, whatever CNI_NETNS says.
    let ours = NetNs::current().map_err(|e| CniError::netns(&e))?;
    if matches!((ns.inode(), ours.inode()), (Ok(a), Ok(b)) if a == b) {
        return Ok(());
    }
    let pod = Netlink::connect_in(&ns)?;
    if pod.delete_link(&inv.ifname).await? {
        log.line(format_args!("deleted {} in {path}", inv.ifname));
    }
    Ok(())
}
