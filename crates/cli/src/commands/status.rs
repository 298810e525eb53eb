//! `ciliate status`: is the agent healthy, and what does it run?

use std::time::{Duration, Instant};

use ciliate_model::api::Status;

use super::{Ctx, Hinted, Outcome};
use crate::cli::StatusArgs;
use crate::output::{self, counted, duration, fields, Format};

/// How often `--wait` asks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Prints the status; [`Outcome::Unhealthy`] (exit 1) unless the agent says "ok", so that
/// probes and scripts can trust the exit code without parsing the output. With `--wait`,
/// asks again until the agent is healthy or `--wait-duration` has passed.
pub async fn run(ctx: &Ctx, args: &StatusArgs) -> anyhow::Result<Outcome> {
    let status = if args.wait {
        wait(ctx, args.wait_duration).await?
    } else {
        ctx.client.status().await?
    };
    if args.verbose && ctx.format == Format::Table {
        output::print(&verbose(ctx, &status).await)?;
    } else {
        output::print(&output::render(ctx.format, &status, table)?)?;
    }
    Ok(if status.health == "ok" {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

/// Asks until the agent is healthy; at the deadline returns the last answer (degraded, exit
/// 1 with its problems) or the last error, with how long we waited.
async fn wait(ctx: &Ctx, limit: Duration) -> anyhow::Result<Status> {
    let deadline = Instant::now() + limit;
    let client = ctx
        .client
        .clone()
        .with_timeout(WAIT_POLL.max(Duration::from_secs(5)));
    loop {
        let last = client.status().await;
        if matches!(&last, Ok(s) if s.health == "ok") || Instant::now() >= deadline {
            return last.map_err(|e| {
                Hinted {
                    error: e.into(),
                    hint: format!(
                        "waited {} for the agent to be healthy",
                        humantime::format_duration(limit)
                    ),
                }
                .into()
            });
        }
        if let Err(ciliate_client::ClientError::PermissionDenied { .. }) = &last {
            // Waiting will not make the socket ours.
            return last.map_err(Into::into);
        }
        tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The status, then the endpoints, Services and identities it counts (each asked for; one
/// that cannot be had says why instead).
async fn verbose(ctx: &Ctx, s: &Status) -> String {
    let mut out = table(s);
    let section = |title: &str, body: Result<String, ciliate_client::ClientError>| match body {
        Ok(b) => format!("\n{title}:\n{b}"),
        Err(e) => format!("\n{title}: {e}\n"),
    };
    out.push_str(&section(
        "Endpoints",
        ctx.client
            .endpoints()
            .await
            .map(|e| super::endpoint::list_table(&e)),
    ));
    out.push_str(&section(
        "Services",
        ctx.client
            .services()
            .await
            .map(|v| super::service::list_table(&v)),
    ));
    out.push_str(&section(
        "Identities",
        ctx.client
            .identities()
            .await
            .map(|i| super::identity::list_table(&i)),
    ));
    out
}

/// The status as `Key: value` lines, in the order an operator checks them.
pub fn table(s: &Status) -> String {
    let dp = &s.datapath;
    let datapath = format!(
        "{} ({})",
        if dp.loaded { "loaded" } else { "not loaded" },
        dp.kind
    );
    let maps = s
        .datapath
        .maps
        .iter()
        .map(|m| {
            let pct = if m.max_entries == 0 {
                0
            } else {
                u64::from(m.entries) * 100 / u64::from(m.max_entries)
            };
            format!("{} {}/{} ({pct}%)", m.name, m.entries, m.max_entries)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ipam_pct = if s.ipam.capacity == 0 {
        0
    } else {
        u64::from(s.ipam.allocated) * 100 / u64::from(s.ipam.capacity)
    };
    fields(vec![
        ("Health", s.health.clone()),
        ("Node", s.node.clone()),
        ("Version", s.version.clone()),
        ("Uptime", duration(s.uptime_seconds)),
        ("Datapath", datapath),
        ("Pin dir", output::or_none(dp.pin_dir.clone())),
        ("Programs", output::or_none(dp.programs.join(", "))),
        ("Maps", output::or_none(maps)),
        ("Endpoints", s.endpoints.to_string()),
        ("Identities", s.identities.to_string()),
        (
            "Services",
            format!("{} ({} backends)", s.services, s.backends),
        ),
        ("Policies", s.policies.to_string()),
        ("L7 proxy", proxy(s)),
        ("Cluster", cluster(s)),
        (
            "IPAM",
            format!(
                "{}/{} allocated from {} ({ipam_pct}%)",
                s.ipam.allocated, s.ipam.capacity, s.ipam.cidr
            ),
        ),
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

/// One line on the L7 proxy: whether it runs, its listeners, the redirects it takes, and what
/// its supervisor reports.
fn proxy(s: &Status) -> String {
    let Some(p) = &s.proxy else {
        return "none".to_owned();
    };
    let state = match (p.enabled, p.up) {
        (false, _) => "not running".to_owned(),
        (true, Some(true)) => "up".to_owned(),
        (true, Some(false)) => "DOWN".to_owned(),
        (true, None) => "attached".to_owned(),
    };
    let mut out = format!(
        "{state}; listeners {} (egress HTTP), {} (ingress HTTP); {} on {} (revision {})",
        p.listeners.http_egress,
        p.listeners.http_ingress,
        counted(p.redirects, "redirect", "redirects"),
        counted(p.endpoints, "endpoint", "endpoints"),
        p.revision
    );
    if let Some(r) = p.applied_revision {
        out.push_str(&format!(", revision {r} applied"));
    }
    if let Some(n) = p.requests {
        out.push_str(&format!("; {}", counted(n, "request", "requests")));
    }
    if let Some(n) = p.restarts {
        out.push_str(&format!("; {}", counted(n, "restart", "restarts")));
    }
    if let Some(pid) = p.pid {
        out.push_str(&format!("; pid {pid}"));
    }
    out.push_str(&format!(
        "; {} redirected",
        counted(p.redirected_packets, "packet", "packets")
    ));
    out
}

/// One line on the cluster: etcd, nodes, what this node knows of the others, the overlay.
fn cluster(s: &Status) -> String {
    let Some(c) = &s.cluster else {
        return "none (a node on its own)".to_owned();
    };
    format!(
        "{} to etcd {}; {} ({}), {}, {}; overlay {}",
        if c.connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        c.etcd.join(","),
        counted(c.nodes.len(), "node", "nodes"),
        c.nodes.join(", "),
        counted(c.identities, "identity", "identities"),
        counted(c.remote_endpoints, "remote endpoint", "remote endpoints"),
        c.tunnel.as_deref().unwrap_or("none"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::status as sample;

    #[test]
    fn table_shows_every_part() {
        let text = table(&sample());
        for want in [
            "Health:       degraded\n",
            "Node:         node-1\n",
            "Uptime:       1h2m\n",
            "Datapath:     loaded (bpf)\n",
            "Pin dir:      /sys/fs/bpf/ciliate\n",
            "Programs:     from_container, to_container\n",
            "Maps:         ciliate_ct 62259/65536 (94%)\n",
            "Endpoints:    3\n",
            "Identities:   2\n",
            "Services:     2 (5 backends)\n",
            "Policies:     1\n",
            "L7 proxy:     up; listeners 15001 (egress HTTP), 15002 (ingress HTTP); 2 redirects on 1 endpoint (revision 7), revision 7 applied; 12 requests; 1 restart; pid 4242; 96 packets redirected\n",
            "Cluster:      connected to etcd http://172.31.0.1:2379; 2 nodes (node-1, node-2), 4 identities, 2 remote endpoints; overlay ciliate_vxlan\n",
            "IPAM:         4/253 allocated from 10.0.0.0/24 (1%)\n",
            "Problems:     ct map 95% full\n              kubernetes source unreachable\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn json_and_yaml_round_trip() {
        let s = sample();
        let json = crate::output::render(crate::output::Format::Json, &s, table).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        let yaml = crate::output::render(crate::output::Format::Yaml, &s, table).unwrap();
        assert_eq!(serde_yaml_ng::from_str::<Status>(&yaml).unwrap(), s);
    }
}
