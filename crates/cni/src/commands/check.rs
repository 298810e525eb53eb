//! CHECK: verify that the attachment is as ADD left it. Every problem found is reported, each
//! naming exactly what is missing or wrong, so one CHECK tells the whole story.

use std::net::Ipv4Addr;

use ciliate_datapath::netlink::{LinkInfo, Netlink, RouteInfo};
use ciliate_model::api::GATEWAY_IPV4;
use ciliate_model::{Endpoint, EndpointState};
use ipnet::{IpNet, Ipv4Net};

use crate::args::Invocation;
use crate::commands::{client, is_not_found, open_pod_netns};
use crate::config::NetConf;
use crate::error::{code, CniError};
use crate::result::CniResult;

/// Runs CHECK.
pub async fn run(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let netns_path = inv
        .netns
        .as_deref()
        .ok_or_else(|| CniError::missing_env(crate::args::CNI_NETNS))?;
    let pod_ns = open_pod_netns(netns_path)?;
    let ep = match client(conf)
        .attachment(&inv.container_id, &inv.ifname)
        .await
    {
        Ok(ep) => ep,
        Err(e) if is_not_found(&e) => {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!(
                    "the agent has no endpoint for container {} interface {}",
                    inv.container_id, inv.ifname
                ),
                "was ADD run for it? did the agent lose its state?",
            ))
        }
        Err(e) => return Err(CniError::agent("looking up the endpoint at the agent", &e)),
    };

    let pod = Netlink::connect_in(&pod_ns)?;
    let node = Netlink::connect()?;
    let observed = Observed {
        pod_if: pod.link(&inv.ifname).await?,
        pod_routes: pod.routes().await?,
        gateway_neighbour: None,
        host_if: node.link(&ep.host_ifname).await?,
        node_routes: node.routes().await?,
    };
    let gateway_neighbour = match &observed.pod_if {
        Some(l) => pod
            .neighbours(l.index)
            .await?
            .into_iter()
            .find(|n| n.ip == GATEWAY_IPV4)
            .map(|n| (n.mac, n.permanent)),
        None => None,
    };
    let observed = Observed {
        gateway_neighbour,
        ..observed
    };

    let problems = problems(inv, netns_path, &ep, conf.prev_result.as_ref(), &observed);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "container {} ({} in {netns_path}): {}",
                inv.container_id,
                inv.ifname,
                problems.join("; ")
            ),
            format!("endpoint {} at the agent", ep.id),
        ))
    }
}

/// What the kernel shows, gathered before judging, so that judging is pure.
#[derive(Debug, Default)]
pub struct Observed {
    /// The pod's interface, if there.
    pub pod_if: Option<LinkInfo>,
    /// The pod's routes.
    pub pod_routes: Vec<RouteInfo>,
    /// The gateway's neighbour entry on the pod interface: (MAC, permanent).
    pub gateway_neighbour: Option<(Option<ciliate_model::MacAddr>, bool)>,
    /// The host veth, if there.
    pub host_if: Option<LinkInfo>,
    /// The node's routes.
    pub node_routes: Vec<RouteInfo>,
}

/// Everything that differs from what ADD set up, in words.
pub fn problems(
    inv: &Invocation,
    netns_path: &str,
    ep: &Endpoint,
    prev: Option<&CniResult>,
    seen: &Observed,
) -> Vec<String> {
    let mut out = Vec::new();
    if ep.ifname != inv.ifname {
        out.push(format!(
            "the agent's endpoint {} is for interface {}, not {}",
            ep.id, ep.ifname, inv.ifname
        ));
    }
    if ep.state != EndpointState::Ready {
        out.push(match &ep.status_message {
            Some(m) => format!("endpoint {} is {}: {m}", ep.id, ep.state),
            None => format!("endpoint {} is {}, not ready", ep.id, ep.state),
        });
    }

    let want = Ipv4Net::from(ep.ipv4);
    match &seen.pod_if {
        None => out.push(format!(
            "interface {} is missing in {netns_path}",
            inv.ifname
        )),
        Some(link) => {
            if !link.up {
                out.push(format!("interface {} is down", inv.ifname));
            }
            if !link.addresses.contains(&want) {
                out.push(format!(
                    "interface {} lacks address {want} (has {})",
                    inv.ifname,
                    list(&link.addresses)
                ));
            }
            if let Some(prev) = prev {
                for addr in prev.addresses_of(&inv.ifname) {
                    let present = match addr {
                        IpNet::V4(a) => link.addresses.contains(&a),
                        IpNet::V6(_) => true, // we assign none; another plugin's concern
                    };
                    if !present {
                        out.push(format!(
                            "interface {} lacks address {addr} listed in prevResult",
                            inv.ifname
                        ));
                    }
                }
                let prev_mac = prev
                    .interfaces
                    .iter()
                    .find(|i| i.name == inv.ifname && i.sandbox.is_some())
                    .and_then(|i| i.mac.as_deref());
                if let (Some(want_mac), Some(mac)) = (prev_mac, link.mac) {
                    if !want_mac.eq_ignore_ascii_case(&mac.to_string()) {
                        out.push(format!(
                            "interface {} has MAC {mac}, prevResult says {want_mac}",
                            inv.ifname
                        ));
                    }
                }
            }
            if !has_route(
                &seen.pod_routes,
                Ipv4Net::default(),
                Some(GATEWAY_IPV4),
                link.index,
            ) {
                out.push(format!(
                    "the default route via {GATEWAY_IPV4} dev {} is missing",
                    inv.ifname
                ));
            }
            match seen.gateway_neighbour {
                Some((Some(mac), true)) if mac == ep.host_mac => {}
                Some((mac, permanent)) => out.push(format!(
                    "the neighbour entry for {GATEWAY_IPV4} is {} {}, want {} PERMANENT",
                    mac.map_or("unresolved".to_owned(), |m| m.to_string()),
                    if permanent {
                        "PERMANENT"
                    } else {
                        "(not permanent)"
                    },
                    ep.host_mac
                )),
                None => out.push(format!(
                    "the neighbour entry {GATEWAY_IPV4} → {} is missing",
                    ep.host_mac
                )),
            }
        }
    }

    match &seen.host_if {
        None => out.push(format!("host interface {} is missing", ep.host_ifname)),
        Some(host) => {
            if host.index != ep.host_ifindex {
                out.push(format!(
                    "host interface {} has index {}, the agent programmed index {}",
                    ep.host_ifname, host.index, ep.host_ifindex
                ));
            }
            if !host.up {
                out.push(format!("host interface {} is down", ep.host_ifname));
            }
            if !has_route(&seen.node_routes, want, None, host.index) {
                out.push(format!(
                    "the node's route {want} dev {} is missing",
                    ep.host_ifname
                ));
            }
        }
    }
    out
}

fn has_route(routes: &[RouteInfo], dst: Ipv4Net, gw: Option<Ipv4Addr>, oif: u32) -> bool {
    routes
        .iter()
        .any(|r| r.destination == dst && r.gateway == gw && r.oif == Some(oif))
}

fn list(addrs: &[Ipv4Net]) -> String {
    if addrs.is_empty() {
        "none".to_owned()
    } else {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ciliate_datapath::netlink::Scope;
    use ciliate_model::MacAddr;
    use serde_json::json;

    use super::*;
    use crate::args::CniArgs;

    const HOST_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 0, 1]);
    const POD_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 0, 2]);

    fn inv() -> Invocation {
        Invocation {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: Some("/var/run/netns/p".into()),
            args: CniArgs::default(),
        }
    }

    fn endpoint() -> Endpoint {
        serde_json::from_value(json!({
            "id": 7, "containerId": "c1", "ifname": "eth0", "netns": "/var/run/netns/p",
            "labels": [], "identity": 300, "ipv4": "10.0.1.5", "mac": POD_MAC.to_string(),
            "hostIfname": "lxc000000000001", "hostIfindex": 12, "hostMac": HOST_MAC.to_string(),
            "state": "ready", "createdUnix": 0
        }))
        .unwrap()
    }

    fn healthy() -> Observed {
        let route = |dst: &str, gw: Option<Ipv4Addr>, oif| RouteInfo {
            destination: dst.parse().unwrap(),
            gateway: gw,
            oif: Some(oif),
            scope: Scope::Universe,
        };
        Observed {
            pod_if: Some(LinkInfo {
                index: 2,
                name: "eth0".into(),
                mac: Some(POD_MAC),
                mtu: Some(1500),
                up: true,
                addresses: vec!["10.0.1.5/32".parse().unwrap()],
            }),
            pod_routes: vec![
                route("169.254.1.1/32", None, 2),
                route("0.0.0.0/0", Some(GATEWAY_IPV4), 2),
            ],
            gateway_neighbour: Some((Some(HOST_MAC), true)),
            host_if: Some(LinkInfo {
                index: 12,
                name: "lxc000000000001".into(),
                mac: Some(HOST_MAC),
                mtu: Some(1500),
                up: true,
                addresses: vec![],
            }),
            node_routes: vec![route("10.0.1.5/32", None, 12)],
        }
    }

    fn check(ep: &Endpoint, prev: Option<&CniResult>, seen: &Observed) -> Vec<String> {
        problems(&inv(), "/var/run/netns/p", ep, prev, seen)
    }

    #[test]
    fn a_healthy_attachment_has_no_problems() {
        assert_eq!(check(&endpoint(), None, &healthy()), Vec::<String>::new());
        // Our own ADD result as prevResult agrees too.
        let prev: CniResult = serde_json::from_value(json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lxc000000000001"}, {"name": "eth0", "mac": POD_MAC.to_string(), "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "10.0.1.5/32", "gateway": "169.254.1.1", "interface": 1}]
        }))
        .unwrap();
        assert_eq!(
            check(&endpoint(), Some(&prev), &healthy()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_missing_piece_is_named() {
        let mut seen = healthy();
        seen.pod_if = None;
        assert_eq!(
            check(&endpoint(), None, &seen),
            vec!["interface eth0 is missing in /var/run/netns/p"]
        );

        let mut seen = healthy();
        seen.pod_if.as_mut().unwrap().addresses.clear();
        seen.pod_routes.retain(|r| r.gateway.is_none());
        seen.gateway_neighbour = None;
        assert_eq!(
            check(&endpoint(), None, &seen),
            vec![
                "interface eth0 lacks address 10.0.1.5/32 (has none)".to_owned(),
                "the default route via 169.254.1.1 dev eth0 is missing".to_owned(),
                format!("the neighbour entry 169.254.1.1 → {HOST_MAC} is missing"),
            ]
        );

        let mut seen = healthy();
        seen.host_if = None;
        assert_eq!(
            check(&endpoint(), None, &seen),
            vec!["host interface lxc000000000001 is missing"]
        );

        let mut seen = healthy();
        seen.node_routes.clear();
        seen.host_if.as_mut().unwrap().index = 13;
        let p = check(&endpoint(), None, &seen);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("has index 13, the agent programmed index 12"),
            "{p:?}"
        );
        assert!(
            p[1].contains("route 10.0.1.5/32 dev lxc000000000001 is missing"),
            "{p:?}"
        );
    }

    #[test]
    fn endpoint_state_and_prev_result_mismatches() {
        let mut ep = endpoint();
        ep.state = EndpointState::NotReady;
        ep.status_message = Some("attach failed".into());
        assert_eq!(
            check(&ep, None, &healthy()),
            vec!["endpoint 7 is not-ready: attach failed"]
        );

        let prev: CniResult = serde_json::from_value(json!({
            "interfaces": [{"name": "eth0", "mac": "0a:00:00:00:00:99", "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "10.0.1.9/32", "interface": 0}]
        }))
        .unwrap();
        let p = check(&endpoint(), Some(&prev), &healthy());
        assert_eq!(
            p,
            vec![
                "interface eth0 lacks address 10.0.1.9/32 listed in prevResult".to_owned(),
                format!("interface eth0 has MAC {POD_MAC}, prevResult says 0a:00:00:00:00:99"),
            ]
        );
    }

    #[test]
    fn a_resolved_but_not_permanent_gateway_is_reported() {
        let mut seen = healthy();
        seen.gateway_neighbour = Some((Some(HOST_MAC), false));
        let p = check(&endpoint(), None, &seen);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("(not permanent)"), "{p:?}");
    }
}
