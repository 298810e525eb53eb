//! GC (CNI 1.1): the runtime lists the attachments that are still valid; the agent removes every
//! other endpoint and we delete their host veths.

use ciliate_datapath::netlink::Netlink;
use ciliate_model::api::GcRequest;

use crate::commands::client;
use crate::config::NetConf;
use crate::error::{code, CniError};
use crate::log::Log;

/// Runs GC. Without a valid-attachments list it refuses: an absent list would read as "nothing
/// is valid" and remove every pod of the node.
pub async fn run(conf: &NetConf, log: &Log) -> Result<(), CniError> {
    let Some(valid) = conf.valid_attachments.clone() else {
        return Err(CniError::invalid_config(
            "GC needs \"cni.dev/valid-attachments\" (the attachments to keep)",
        ));
    };
    let kept = valid.len();
    let result = client(conf)
        .gc(&GcRequest {
            valid_attachments: valid,
        })
        .await
        .map_err(|e| CniError::agent("garbage-collecting endpoints at the agent", &e))?;
    log.line(format_args!(
        "kept {kept} attachments, the agent removed {} endpoints",
        result.removed.len()
    ));

    // Try every veth before reporting, so one failure does not leave the others behind.
    let node = Netlink::connect()?;
    let mut failed = Vec::new();
    for ep in &result.removed {
        match node.delete_link(&ep.host_ifname).await {
            Ok(deleted) => log.line(format_args!(
                "endpoint {} ({}): {} {}",
                ep.id,
                ep.container_id,
                if deleted { "deleted" } else { "already gone:" },
                ep.host_ifname
            )),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::KERNEL,
            format!(
                "deleting host interfaces of removed endpoints: {}",
                failed.join("; ")
            ),
            "",
        ))
    }
}
