//! `ciliate bpf ...`: the datapath's maps as the agent reads them.

use std::collections::BTreeSet;

use ciliate_model::api::{BpfEndpoint, CtEntry};
use ciliate_model::bpf_policy::IpcacheEntry;
use ciliate_model::bpf_policy::MatchKind;
use ciliate_model::lb::LbState;
use ciliate_model::policy_api::BpfPolicyView;
use ciliate_model::service::ServiceView;
use ciliate_model::Identity;

use super::service::state;
use super::{hint_not_found, Ctx, Outcome};
use crate::output::{self, duration, or_none};

/// Prints the connection-tracking table.
pub async fn ct_list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let entries = ctx.client.ct_entries().await?;
    output::print(&output::render(ctx.format, &entries, |e| ct_table(e))?)?;
    Ok(Outcome::Success)
}

/// One row per entry: PROTO, SRC, DST, DIR, EXPIRES, TX, RX (packets/bytes), FLAGS.
pub fn ct_table(entries: &[CtEntry]) -> String {
    output::table(
        &["proto", "src", "dst", "dir", "expires", "tx", "rx", "flags"],
        entries.iter().map(|e| {
            vec![
                e.proto.clone(),
                format!("{}:{}", e.src, e.sport),
                format!("{}:{}", e.dst, e.dport),
                e.direction.clone(),
                expires(e.expires_in),
                format!("{}/{}", e.tx_packets, e.tx_bytes),
                format!("{}/{}", e.rx_packets, e.rx_bytes),
                or_none(e.flags.join(",")),
            ]
        }),
    )
}

/// Prints the ipcache; the table names each identity's labels when the agent knows them.
pub async fn ipcache_list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let entries = ctx.client.bpf_ipcache().await?;
    let identities = if ctx.format == output::Format::Table {
        ctx.client.identities().await.unwrap_or_default()
    } else {
        Vec::new()
    };
    output::print(&output::render(ctx.format, &entries, |e| {
        ipcache_table(e, &identities)
    })?)?;
    Ok(Outcome::Success)
}

/// PREFIX, IDENTITY (with labels), TUNNEL ENDPOINT.
pub fn ipcache_table(entries: &[IpcacheEntry], identities: &[Identity]) -> String {
    output::table(
        &["prefix", "identity", "tunnel endpoint"],
        entries.iter().map(|e| {
            let labels = identities
                .iter()
                .find(|i| i.id == e.identity)
                .map(|i| format!(" ({})", i.labels))
                .unwrap_or_default();
            vec![
                e.prefix.to_string(),
                format!("{}{labels}", e.identity),
                e.tunnel_endpoint
                    .map_or_else(|| "<local>".to_owned(), |t| t.to_string()),
            ]
        }),
    )
}

/// Prints the endpoint map.
pub async fn endpoint_list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let eps = ctx.client.bpf_endpoints().await?;
    output::print(&output::render(ctx.format, &eps, |e| {
        bpf_endpoint_table(e)
    })?)?;
    Ok(Outcome::Success)
}

/// ENDPOINT ID, IPV4, IDENTITY, IFINDEX, IFNAME, MAC, HOST MAC.
pub fn bpf_endpoint_table(eps: &[BpfEndpoint]) -> String {
    output::table(
        &[
            "endpoint id",
            "ipv4",
            "identity",
            "ifindex",
            "ifname",
            "mac",
            "host mac",
        ],
        eps.iter().map(|e| {
            vec![
                e.id.to_string(),
                e.ipv4.to_string(),
                e.identity.to_string(),
                e.ifindex.to_string(),
                e.ifname.clone(),
                e.mac.to_string(),
                e.host_mac.to_string(),
            ]
        }),
    )
}

/// Prints the load-balancing maps.
pub async fn lb_list(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut lb = ctx.client.lb_state().await?;
    if ctx.format == output::Format::Table {
        // The maps hold no names: the table names each frontend's Service from the agent's
        // Services, by reverse-NAT index (json and yaml stay the API's object, unchanged).
        if let Ok(services) = ctx.client.services().await {
            name_services(&mut lb, &services);
        }
    }
    output::print(&output::render(ctx.format, &lb, lb_table)?)?;
    Ok(Outcome::Success)
}

/// Fills the SERVICE of frontends the datapath read back without one, from the Service whose
/// frontend has the same reverse-NAT index.
pub fn name_services(lb: &mut LbState, services: &[ServiceView]) {
    for f in lb
        .frontends
        .iter_mut()
        .filter(|f| f.service.name.is_empty())
    {
        let owner = services.iter().find_map(|s| {
            s.frontends
                .iter()
                .find(|v| v.rev_nat_index == f.rev_nat_index)
                .map(|v| (s, v))
        });
        if let Some((s, v)) = owner {
            f.service.namespace = s.namespace.clone();
            f.service.name = s.name.clone();
            f.service.port_name = v.port_name.clone();
        }
    }
}

/// One row per frontend: FRONTEND, REV-NAT, SERVICE, FLAGS, SLOTS (one `slot => backend` per
/// line); then backends no slot points at, with FRONTEND `<none>`.
pub fn lb_table(lb: &LbState) -> String {
    let backend = |id: u32| match lb.backends.iter().find(|b| b.id == id) {
        Some(b) => format!("{}:{} (id {id}, {})", b.addr, b.port, state(b.state)),
        None => format!("<missing backend {id}>"),
    };
    let mut used = BTreeSet::new();
    let mut rows = Vec::new();
    for f in &lb.frontends {
        used.extend(f.backends.iter().copied());
        let slots = f
            .backends
            .iter()
            .enumerate()
            .map(|(i, &id)| format!("{} => {}", i + 1, backend(id)))
            .collect::<Vec<_>>()
            .join("\n");
        rows.push(vec![
            format!("{}:{}/{}", f.addr, f.port, f.proto),
            f.rev_nat_index.to_string(),
            if f.service.name.is_empty() {
                "<unknown>".to_owned()
            } else {
                f.service.to_string()
            },
            f.affinity_timeout
                .map_or_else(|| "<none>".to_owned(), |t| format!("affinity={t}s")),
            or_none(slots),
        ]);
    }
    for b in lb.backends.iter().filter(|b| !used.contains(&b.id)) {
        rows.push(vec![
            "<none>".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "<none>".to_owned(),
            format!("- => {}", backend(b.id)),
        ]);
    }
    output::table(&["frontend", "rev-nat", "service", "flags", "slots"], rows)
}

/// Prints an endpoint's policy map.
pub async fn policy_get(ctx: &Ctx, endpoint: &str) -> anyhow::Result<Outcome> {
    let view = ctx.client.bpf_policy(endpoint).await.map_err(|e| {
        hint_not_found(
            e,
            "`ciliate endpoint list` shows the endpoints of this node",
        )
    })?;
    output::print(&output::render(ctx.format, &view, policy_table)?)?;
    Ok(Outcome::Success)
}

/// A line on each direction's enforcement, then one row per entry: IDENTITY (with labels),
/// DIRECTION, PROTO, PORT(S), VERDICT, MATCH, RULE, PACKETS. Columns hold no spaces, so `awk`
/// field numbers hold.
pub fn policy_table(v: &BpfPolicyView) -> String {
    let pod = v
        .pod
        .as_ref()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    let dir = |enforced: bool| {
        if enforced {
            "enforced (default deny)"
        } else {
            "not enforced (allow all but deny entries)"
        }
    };
    let mut out = format!(
        "Endpoint {}{pod}, identity {}: ingress {}, egress {}\n",
        v.endpoint,
        v.identity,
        dir(v.ingress_enforced),
        dir(v.egress_enforced)
    );
    let rows = v.entries.iter().map(|e| {
        let m = &e.entry;
        let identity = match (m.identity, e.labels.is_empty()) {
            (0, _) => "any".to_owned(),
            (id, true) => id.to_string(),
            (id, false) => format!("{id}({})", e.labels),
        };
        let (proto, ports) = match m.proto {
            None => ("ANY".to_owned(), "*".to_owned()),
            Some(p) => {
                let len = u32::from(m.port_prefix_len.min(16));
                let span = if len == 0 {
                    u16::MAX
                } else {
                    (1u32 << (16 - len)) as u16 - 1
                };
                let lo = m.port & !span;
                let hi = lo | span;
                let ports = match (lo, hi) {
                    (0, u16::MAX) => "*".to_owned(),
                    (lo, hi) if lo == hi => lo.to_string(),
                    (lo, hi) => format!("{lo}-{hi}"),
                };
                let name = match p {
                    6 => "TCP".to_owned(),
                    17 => "UDP".to_owned(),
                    132 => "SCTP".to_owned(),
                    1 => "ICMP".to_owned(),
                    n => format!("proto-{n}"),
                };
                (name, ports)
            }
        };
        let rule = match (&e.rule_ref, m.rule, m.identity) {
            (Some(r), _, _) => format!("{}:{}:{}", r.policy.kind, r.policy.short_name(), r.path()),
            (None, 0, 1) if !m.deny => "<allow-localhost>".to_owned(),
            (None, 0, _) => "<none>".to_owned(),
            (None, id, _) => format!("<rule-{id}>"),
        };
        vec![
            identity,
            if m.egress { "egress" } else { "ingress" }.to_owned(),
            proto,
            ports,
            if m.deny { "deny" } else { "allow" }.to_owned(),
            match m.kind {
                MatchKind::L3Only => "l3-only",
                MatchKind::L3L4 => "l3-l4",
                MatchKind::L4Only => "l4-only",
                MatchKind::All => "all",
            }
            .to_owned(),
            rule,
            e.packets.to_string(),
        ]
    });
    out.push_str(&output::table(
        &[
            "identity",
            "direction",
            "proto",
            "port(s)",
            "verdict",
            "match",
            "rule",
            "packets",
        ],
        rows,
    ));
    out
}

/// Time left, or how long ago it ran out: expired entries linger until the next GC, and
/// seeing that they are stale matters when debugging.
fn expires(secs: i64) -> String {
    if secs >= 0 {
        duration(secs.unsigned_abs())
    } else {
        format!("expired-{}-ago", duration(secs.unsigned_abs()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{ct_entry, lb_state};
    use crate::output::{render, Format};

    #[test]
    fn ct_has_the_columns_and_values() {
        let mut stale = ct_entry();
        stale.proto = "udp".into();
        stale.expires_in = -5;
        stale.flags = vec![];
        let text = ct_table(&[ct_entry(), stale]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["PROTO", "SRC", "DST", "DIR", "EXPIRES", "TX", "RX", "FLAGS"]
        );
        assert_eq!(
            rows[1],
            [
                "tcp",
                "10.0.0.5:40000",
                "10.0.0.9:80",
                "egress",
                "5h59m",
                "10/1200",
                "8/9000",
                "SYN,ACK"
            ]
        );
        assert_eq!(rows[2][0], "udp");
        assert_eq!(rows[2][4], "expired-5s-ago");
        assert_eq!(rows[2][7], "<none>");
    }

    #[test]
    fn lb_shows_slots_and_backends_in_no_slot() {
        let text = lb_table(&lb_state());
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["FRONTEND", "REV-NAT", "SERVICE", "FLAGS", "SLOTS"]
        );
        assert_eq!(
            rows[1],
            [
                "10.96.0.10:80/TCP",
                "1",
                "default/web:http",
                "affinity=600s",
                "1",
                "=>",
                "10.200.0.5:8080",
                "(id",
                "1,",
                "active)"
            ]
        );
        assert_eq!(
            rows[2],
            ["2", "=>", "10.200.0.7:8080", "(id", "3,", "active)"]
        );
        assert_eq!(
            rows[3],
            [
                "<none>",
                "-",
                "-",
                "<none>",
                "-",
                "=>",
                "10.200.0.6:8080",
                "(id",
                "2,",
                "terminating)"
            ]
        );
        let json = render(Format::Json, &lb_state(), lb_table).unwrap();
        assert_eq!(serde_json::from_str::<LbState>(&json).unwrap(), lb_state());
    }

    #[test]
    fn policy_map_rows() {
        let text = policy_table(&crate::fixtures::bpf_policy_view());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Endpoint 3 (default/server), identity 257: ingress enforced (default deny), egress not enforced (allow all but deny entries)"
        );
        let rows: Vec<Vec<&str>> = lines[1..]
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            [
                "IDENTITY",
                "DIRECTION",
                "PROTO",
                "PORT(S)",
                "VERDICT",
                "MATCH",
                "RULE",
                "PACKETS"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "1(reserved:host)",
                "ingress",
                "ANY",
                "*",
                "allow",
                "l3-only",
                "<allow-localhost>",
                "0"
            ]
        );
        assert_eq!(
            rows[2],
            [
                "256(k8s:app=client,k8s:io.kubernetes.pod.namespace=default)",
                "ingress",
                "TCP",
                "8080-8083",
                "allow",
                "l3-l4",
                "CiliumNetworkPolicy:default/server-ingress:spec.ingress[0]",
                "12"
            ]
        );
        assert_eq!(
            rows[3],
            ["any", "ingress", "ICMP", "8", "deny", "l4-only", "<rule-9>", "0"]
        );
        let json = render(
            Format::Json,
            &crate::fixtures::bpf_policy_view(),
            policy_table,
        )
        .unwrap();
        assert_eq!(
            serde_json::from_str::<BpfPolicyView>(&json).unwrap(),
            crate::fixtures::bpf_policy_view()
        );
    }

    #[test]
    fn json_and_yaml_round_trip() {
        let entries = vec![ct_entry()];
        let json = render(Format::Json, &entries, |e| ct_table(e)).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<CtEntry>>(&json).unwrap(),
            entries
        );
        let yaml = render(Format::Yaml, &entries, |e| ct_table(e)).unwrap();
        assert_eq!(
            serde_yaml_ng::from_str::<Vec<CtEntry>>(&yaml).unwrap(),
            entries
        );
    }
}
