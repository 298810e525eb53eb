//! `ciliate identity list|get`.

use ciliate_model::Identity;

use super::{hint_not_found, Ctx, Outcome};
use crate::output::{self, fields, or_none};

/// Prints every identity the agent knows, in numeric order.
pub async fn list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut identities = ctx.client.identities().await?;
    identities.sort_by_key(|i| i.id);
    output::print(&output::render(ctx.format, &identities, |i| list_table(i))?)?;
    Ok(Outcome::Success)
}

/// Prints one identity.
pub async fn get(ctx: &Ctx, id: u32) -> anyhow::Result<Outcome> {
    let identity = ctx.client.identity(id).await.map_err(|e| {
        hint_not_found(
            e,
            "`ciliate identity list` shows the identities in use on this node and in the cluster",
        )
    })?;
    output::print(&output::render(ctx.format, &identity, get_table)?)?;
    Ok(Outcome::Success)
}

/// One row per identity: ID, LABELS, RESERVED, REFS.
pub fn list_table(identities: &[Identity]) -> String {
    output::table(
        &["id", "labels", "reserved", "refs"],
        identities.iter().map(|i| {
            vec![
                i.id.to_string(),
                or_none(i.labels.to_string()),
                yes_no(i.reserved),
                i.references.to_string(),
            ]
        }),
    )
}

/// One identity, vertically, a label per line.
pub fn get_table(i: &Identity) -> String {
    let labels = i
        .labels
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    fields(vec![
        ("ID", i.id.to_string()),
        ("Labels", or_none(labels)),
        ("Reserved", yes_no(i.reserved)),
        ("Refs", i.references.to_string()),
    ])
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::identity;
    use crate::output::{render, Format};
    use ciliate_model::ReservedIdentity;

    #[test]
    fn list_has_the_columns_and_values() {
        let text = list_table(&[Identity::reserved(ReservedIdentity::World), identity()]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["ID", "LABELS", "RESERVED", "REFS"]);
        assert_eq!(rows[1], ["2", "reserved:world", "yes", "0"]);
        assert_eq!(
            rows[2],
            [
                "256",
                "k8s:app=web,k8s:io.kubernetes.pod.namespace=default",
                "no",
                "2"
            ]
        );
    }

    #[test]
    fn get_shows_every_field() {
        let text = get_table(&identity());
        assert_eq!(
            text,
            "ID:         256\n\
             Labels:     k8s:app=web\n            k8s:io.kubernetes.pod.namespace=default\n\
             Reserved:   no\n\
             Refs:       2\n"
        );
    }

    #[test]
    fn json_and_yaml_round_trip() {
        let ids = vec![identity()];
        let json = render(Format::Json, &ids, |i| list_table(i)).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Identity>>(&json).unwrap(), ids);
        let yaml = render(Format::Yaml, &ids[0], get_table).unwrap();
        assert_eq!(serde_yaml_ng::from_str::<Identity>(&yaml).unwrap(), ids[0]);
    }
}
