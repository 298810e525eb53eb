//! `ciliate endpoint list|get`.

use ciliate_model::Endpoint;

use super::{hint_not_found, Ctx, Outcome};
use crate::output::{self, duration, fields, or_none};

/// Prints every endpoint of the node.
pub async fn list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut endpoints = ctx.client.endpoints().await?;
    // A stable order, so two listings can be diffed.
    endpoints.sort_by_key(|e| e.id);
    output::print(&output::render(ctx.format, &endpoints, |e| list_table(e))?)?;
    Ok(Outcome::Success)
}

/// Prints one endpoint, found by id, container id or `namespace/pod`.
pub async fn get(ctx: &Ctx, reference: &str) -> anyhow::Result<Outcome> {
    let endpoint = ctx.client.endpoint(reference).await.map_err(|e| {
        hint_not_found(
            e,
            "`ciliate endpoint list` shows the endpoints; refer to one by ENDPOINT ID, container id or namespace/pod",
        )
    })?;
    let now = output::now_unix();
    output::print(&output::render(ctx.format, &endpoint, |e| {
        get_table(e, now)
    })?)?;
    Ok(Outcome::Success)
}

/// One row per endpoint: ENDPOINT ID, POD, IPV4, IDENTITY, LABELS, STATE.
pub fn list_table(endpoints: &[Endpoint]) -> String {
    output::table(
        &["endpoint id", "pod", "ipv4", "identity", "labels", "state"],
        endpoints.iter().map(|e| {
            vec![
                e.id.to_string(),
                pod(e),
                e.ipv4.to_string(),
                e.identity.to_string(),
                or_none(e.labels.to_string()),
                e.state.to_string(),
            ]
        }),
    )
}

/// Every field of one endpoint, vertically; `now` (Unix seconds) turns the creation time
/// into an age.
pub fn get_table(e: &Endpoint, now: u64) -> String {
    let labels = e
        .labels
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    fields(vec![
        ("Endpoint ID", e.id.to_string()),
        ("Pod", pod(e)),
        ("Container ID", e.container_id.clone()),
        ("State", e.state.to_string()),
        (
            "Status",
            or_none(e.status_message.clone().unwrap_or_default()),
        ),
        ("IPv4", e.ipv4.to_string()),
        ("MAC", e.mac.to_string()),
        ("Interface", e.ifname.clone()),
        ("Netns", e.netns.clone()),
        (
            "Host interface",
            format!(
                "{} (ifindex {}, mac {})",
                e.host_ifname, e.host_ifindex, e.host_mac
            ),
        ),
        ("Identity", e.identity.to_string()),
        ("Labels", or_none(labels)),
        (
            "Created",
            format!(
                "{} ago (unix {})",
                duration(now.saturating_sub(e.created_unix)),
                e.created_unix
            ),
        ),
    ])
}

fn pod(e: &Endpoint) -> String {
    e.pod
        .as_ref()
        .map_or_else(|| "<none>".to_owned(), |p| p.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::endpoint;
    use crate::output::{render, Format};

    #[test]
    fn list_has_the_columns_and_values() {
        let mut bare = endpoint();
        bare.id = 7;
        bare.pod = None;
        bare.labels = Default::default();
        let text = list_table(&[endpoint(), bare]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ENDPOINT", "ID", "POD", "IPV4", "IDENTITY", "LABELS", "STATE"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "1234",
                "default/web",
                "10.0.0.5",
                "256",
                "k8s:app=web,k8s:io.kubernetes.pod.namespace=default",
                "not-ready"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["7", "<none>", "10.0.0.5", "256", "<none>", "not-ready"]
        );
    }

    #[test]
    fn get_shows_every_field() {
        let text = get_table(&endpoint(), 1_700_000_000 + 310);
        for want in [
            "Endpoint ID:      1234\n",
            "Pod:              default/web\n",
            "Container ID:     9f1c2d3e\n",
            "State:            not-ready\n",
            "Status:           policy map full\n",
            "IPv4:             10.0.0.5\n",
            "MAC:              0a:58:0a:00:00:05\n",
            "Interface:        eth0\n",
            "Netns:            /var/run/netns/cni-1\n",
            "Host interface:   lxc9f1c2d3e (ifindex 17, mac 0a:58:0a:00:01:05)\n",
            "Identity:         256\n",
            "Labels:           k8s:app=web\n                  k8s:io.kubernetes.pod.namespace=default\n",
            "Created:          5m10s ago (unix 1700000000)\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn json_and_yaml_round_trip() {
        let eps = vec![endpoint()];
        let json = render(Format::Json, &eps, |e| list_table(e)).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Endpoint>>(&json).unwrap(), eps);
        let yaml = render(Format::Yaml, &eps[0], |e| get_table(e, 0)).unwrap();
        assert_eq!(serde_yaml_ng::from_str::<Endpoint>(&yaml).unwrap(), eps[0]);
    }
}
