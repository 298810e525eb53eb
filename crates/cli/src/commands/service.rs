//! `ciliate service list|get`.

use ciliate_model::k8s::DEFAULT_NAMESPACE;
use ciliate_model::lb::{BackendState, FrontendKind};
use ciliate_model::service::{FrontendView, ServiceView};

use super::{hint_not_found, Ctx, Outcome};
use crate::output::{self, fields, or_none};

/// Prints every Service.
pub async fn list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let services = ctx.client.services().await?;
    output::print(&output::render(ctx.format, &services, |s| list_table(s))?)?;
    Ok(Outcome::Success)
}

/// Prints one Service, named `namespace/name` or `name` (default namespace).
pub async fn get(ctx: &Ctx, reference: &str) -> anyhow::Result<Outcome> {
    let (namespace, name) = reference
        .split_once('/')
        .unwrap_or((DEFAULT_NAMESPACE, reference));
    let service = ctx.client.service(namespace, name).await.map_err(|e| {
        hint_not_found(
            e,
            "`ciliate service list` shows the Services; name one as namespace/name",
        )
    })?;
    output::print(&output::render(ctx.format, &service, get_table)?)?;
    Ok(Outcome::Success)
}

/// `active` or `terminating`.
pub fn state(s: BackendState) -> &'static str {
    match s {
        BackendState::Active => "active",
        BackendState::Terminating => "terminating",
    }
}

/// How Kubernetes spells the kind of a frontend.
pub fn kind(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::ExternalIp => "ExternalIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::LoadBalancer => "LoadBalancer",
    }
}

/// The frontend's address, with its kind unless it is the cluster IP.
fn frontend(f: &FrontendView) -> String {
    match f.kind {
        FrontendKind::ClusterIp => f.address(),
        k => format!("{} ({})", f.address(), kind(k)),
    }
}

/// One backend per line, `addr:port (state)`.
fn backends(f: &FrontendView) -> String {
    or_none(
        f.backends
            .iter()
            .map(|b| format!("{b} ({})", state(b.state)))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// One row per frontend: ID (rev-NAT index), SERVICE, TYPE, FRONTEND, BACKENDS (one per
/// line). A Service without frontends (headless, ExternalName) gets one row of its own.
pub fn list_table(services: &[ServiceView]) -> String {
    let mut rows = Vec::new();
    for s in services {
        if s.frontends.is_empty() {
            rows.push(vec![
                "-".to_owned(),
                s.full_name(),
                s.service_type.to_string(),
                "<none>".to_owned(),
                "<none>".to_owned(),
            ]);
        }
        for f in &s.frontends {
            rows.push(vec![
                f.rev_nat_index.to_string(),
                s.full_name(),
                s.service_type.to_string(),
                frontend(f),
                backends(f),
            ]);
        }
    }
    output::table(&["id", "service", "type", "frontend", "backends"], rows)
}

/// One Service vertically: its settings, then each frontend with its backends indented.
pub fn get_table(s: &ServiceView) -> String {
    let mut frontends = Vec::new();
    for f in &s.frontends {
        let port = if f.port_name.is_empty() {
            String::new()
        } else {
            format!(", port {}", f.port_name)
        };
        frontends.push(format!(
            "{} ({}{port}, rev-NAT {})",
            f.address(),
            kind(f.kind),
            f.rev_nat_index
        ));
        if f.backends.is_empty() {
            frontends.push("  no backends: connections are refused".to_owned());
        }
        for b in &f.backends {
            frontends.push(format!("  {b} {} (backend {})", state(b.state), b.id));
        }
    }
    fields(vec![
        ("Service", s.full_name()),
        ("Type", s.service_type.to_string()),
        ("Cluster IP", or_none(s.cluster_ip.clone())),
        (
            "Affinity",
            s.affinity_timeout
                .map_or_else(|| "None".to_owned(), |t| format!("ClientIP, {t}s")),
        ),
        ("Source", or_none(s.source.clone())),
        ("Frontends", or_none(frontends.join("\n"))),
        (
            "Problems",
            if s.problems.is_empty() {
                "none".to_owned()
            } else {
                s.problems.join("\n")
            },
        ),
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::service;
    use crate::output::{render, Format};

    #[test]
    fn list_has_a_row_per_frontend_and_a_line_per_backend() {
        let mut headless = service();
        headless.name = "db".into();
        headless.cluster_ip = "None".into();
        headless.frontends.clear();
        let text = list_table(&[service(), headless]);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["ID", "SERVICE", "TYPE", "FRONTEND", "BACKENDS"]);
        assert_eq!(
            lines[1],
            [
                "1",
                "default/web",
                "NodePort",
                "10.96.0.10:80/TCP",
                "10.200.0.5:8080",
                "(active)"
            ]
        );
        assert_eq!(lines[2], ["10.200.0.6:8080", "(terminating)"]);
        assert_eq!(
            lines[3],
            [
                "2",
                "default/web",
                "NodePort",
                "192.168.1.10:30080/TCP",
                "(NodePort)",
                "<none>"
            ]
        );
        assert_eq!(
            lines[4],
            ["-", "default/db", "NodePort", "<none>", "<none>"]
        );
    }

    #[test]
    fn get_shows_frontends_backends_and_problems() {
        let text = get_table(&service());
        for want in [
            "Service:      default/web\n",
            "Type:         NodePort\n",
            "Cluster IP:   10.96.0.10\n",
            "Affinity:     ClientIP, 600s\n",
            "Source:       api\n",
            "Frontends:    10.96.0.10:80/TCP (ClusterIP, port http, rev-NAT 1)\n",
            "                10.200.0.5:8080 active (backend 1)\n",
            "                10.200.0.6:8080 terminating (backend 2)\n",
            "              192.168.1.10:30080/TCP (NodePort, port http, rev-NAT 2)\n",
            "                no backends: connections are refused\n",
            "Problems:     port http: no ready endpoints\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn json_and_yaml_round_trip() {
        let s = vec![service()];
        let json = render(Format::Json, &s, |s| list_table(s)).unwrap();
        assert_eq!(serde_json::from_str::<Vec<ServiceView>>(&json).unwrap(), s);
        let yaml = render(Format::Yaml, &s[0], get_table).unwrap();
        assert_eq!(serde_yaml_ng::from_str::<ServiceView>(&yaml).unwrap(), s[0]);
    }
}
