//! `ciliate node list`: the nodes this agent knows.

use ciliate_model::api::NodeView;

use super::{Ctx, Outcome};
use crate::output::{self, table};

/// Prints `GET /v1/nodes`.
pub async fn list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let nodes = ctx.client.nodes().await?;
    output::print(&output::render(ctx.format, &nodes, |n| nodes_table(n))?)?;
    Ok(Outcome::Success)
}

/// NAME (`*` marks the node answering), UNDERLAY IP, POD CIDR, HEALTH.
pub fn nodes_table(nodes: &[NodeView]) -> String {
    table(
        &["name", "underlay ip", "pod cidr", "health"],
        nodes.iter().map(|n| {
            vec![
                if n.local {
                    format!("{} *", n.name)
                } else {
                    n.name.clone()
                },
                n.underlay_ip
                    .map_or_else(|| "<none>".to_owned(), |i| i.to_string()),
                n.pod_cidr.to_string(),
                n.health.clone(),
            ]
        }),
    )
}
