//! ADD: wire a veth pair between the node and the pod, register it with the agent.
//!
//! Order, and why:
//! 1. Validate: the namespace opens, the agent knows no endpoint for this container, the pod has
//!    no interface of the requested name. Nothing is touched yet.
//! 2. Create the veth pair in the node's namespace (host side `lxc<hash>`, peer `tmp<hash>`) and
//!    move the peer into the pod: from here on, a failure deletes the host side (which takes the
//!    peer with it, wherever it is).
//! 3. Register the endpoint: the agent allocates the address and identity and programs the
//!    datapath on the host veth. From here on, a failure also deletes the endpoint.
//! 4. Configure the pod side (name, MTU, address, routes, gateway neighbour) and the host side
//!    (up, route to the pod), then have the kernel attach both ends' transmit queues before
//!    returning (`settle_link`), so that the pod's first packet is not dropped.
//!
//! A failed ADD leaves no veth, no address and no endpoint behind.

use ciliate_client::Client;
use ciliate_datapath::netlink::{disable_ipv6, disable_rp_filter, LinkInfo, Netlink, PodInterface};
use ciliate_datapath::netns::NetNs;
use ciliate_model::api::{EndpointCreateRequest, EndpointCreated};
use ciliate_model::MacAddr;

use crate::args::Invocation;
use crate::commands::{client, is_not_found, open_pod_netns};
use crate::config::NetConf;
use crate::error::{code, CniError};
use crate::log::Log;
use crate::names;
use crate::result::{CniResult, Wired};

/// Runs ADD and returns the result to print.
pub async fn run(inv: &Invocation, conf: &NetConf, log: &Log) -> Result<CniResult, CniError> {
    let netns_path = inv
        .netns
        .as_deref()
        .ok_or_else(|| CniError::missing_env(crate::args::CNI_NETNS))?;
    let pod_ns = open_pod_netns(netns_path)?;
    let agent = client(conf);

    match agent.attachment(&inv.container_id, &inv.ifname).await {
        Ok(ep) => {
            return Err(CniError::new(
                code::ALREADY_EXISTS,
                format!(
                    "container {} already has endpoint {} on interface {} ({}, in {})",
                    inv.container_id, ep.id, ep.ifname, ep.ipv4, ep.netns
                ),
                "the runtime must DEL the container before adding it again",
            ))
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(CniError::agent("looking up the container at the agent", &e)),
    }

    let node = Netlink::connect()?;
    let pod = Netlink::connect_in(&pod_ns)?;
    if pod.link(&inv.ifname).await?.is_some() {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!(
                "interface {} already exists in the container's network namespace {netns_path}",
                inv.ifname
            ),
            "choose another CNI_IFNAME, or DEL the attachment that made it",
        ));
    }

    let host_ifname = names::host_ifname(&inv.container_id, &inv.ifname);
    let temp_ifname = names::temp_ifname(&inv.container_id, &inv.ifname);
    let (host, peer) = node
        .create_veth(&host_ifname, &temp_ifname)
        .await
        .map_err(|e| match e {
            ciliate_datapath::netlink::NetlinkError::Exists { .. } => CniError::new(
                code::ALREADY_EXISTS,
                e.to_string(),
                "left over from an interrupted ADD of this container? DEL it first",
            ),
            other => CniError::kernel(&other),
        })?;
    log.line(format_args!(
        "created veth {host_ifname} (#{}) / {temp_ifname}",
        host.index
    ));

    let mut registered = false;
    let wiring = Wiring {
        inv,
        conf,
        log,
        agent: &agent,
        node: &node,
        pod: &pod,
        pod_ns: &pod_ns,
        netns_path,
        host: &host,
        peer: &peer,
    };
    match wiring.run(&mut registered).await {
        Ok(result) => Ok(result),
        Err(e) => {
            log.line(format_args!("ADD failed, undoing: {e}"));
            undo(&node, &host_ifname, registered.then_some(&agent), inv, log).await;
            Err(e)
        }
    }
}

/// Everything ADD has in hand once the veth pair exists.
struct Wiring<'a> {
    inv: &'a Invocation,
    conf: &'a NetConf,
    log: &'a Log,
    agent: &'a Client,
    node: &'a Netlink,
    pod: &'a Netlink,
    pod_ns: &'a NetNs,
    netns_path: &'a str,
    host: &'a LinkInfo,
    peer: &'a LinkInfo,
}

impl Wiring<'_> {
    /// Steps 2 to 4; sets `registered` as soon as the agent may hold an endpoint.
    async fn run(&self, registered: &mut bool) -> Result<CniResult, CniError> {
        let host_mac = require_mac(self.host)?;
        let pod_mac = require_mac(self.peer)?;
        self.node.move_link(&self.peer.name, self.pod_ns).await?;

        let mut labels = self.conf.labels.clone();
        for l in self.inv.args.labels.iter() {
            labels.insert(l);
        }
        let request = EndpointCreateRequest {
            container_id: self.inv.container_id.clone(),
            ifname: self.inv.ifname.clone(),
            netns: self.netns_path.to_owned(),
            pod: self.inv.args.pod.clone(),
            labels,
            named_ports: self.inv.args.named_ports.clone(),
            host_ifname: self.host.name.clone(),
            host_ifindex: self.host.index,
            host_mac,
            mac: pod_mac,
        };
        // Set before the call: if it times out after the agent acted, the undo still deletes.
        *registered = true;
        let created: EndpointCreated = self
            .agent
            .create_endpoint(&request)
            .await
            .map_err(|e| CniError::agent("registering the endpoint with the agent", &e))?;
        self.log.line(format_args!(
            "endpoint {} registered: {} via {}, identity {}, state {}",
            created.endpoint.id,
            created.address,
            created.gateway,
            created.endpoint.identity,
            created.endpoint.state
        ));

        // IPv6 off on both ends before they come up (the datapath is IPv4-only for now).
        if let Err(e) = disable_ipv6(&self.host.name) {
            self.log
                .line(format_args!("IPv6 left on for {}: {e}", self.host.name));
        }
        let peer_name = self.peer.name.clone();
        match self.pod_ns.run_in(move || disable_ipv6(&peer_name)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.log.line(format_args!("IPv6 left on in the pod: {e}")),
            Err(e) => self.log.line(format_args!("IPv6 left on in the pod: {e}")),
        }

        let mtu = self.conf.mtu.unwrap_or(created.mtu);
        let pod_if = self
            .pod
            .configure_pod_interface(&PodInterface {
                current_name: self.peer.name.clone(),
                ifname: self.inv.ifname.clone(),
                mac: None,
                mtu: Some(mtu),
                address: created.address,
                gateway: created.gateway,
                gateway_mac: host_mac,
            })
            .await?;
        self.node
            .configure_host_veth(&self.host.name, created.address.addr(), Some(mtu))
            .await?;
        // Both ends are up: have the kernel attach their transmit queues now, not when its
        // link-watch worker gets to it, or the pod's first packet may be dropped
        // (`settle_link`). The host side first: the pod side's own packets leave through it.
        settled(
            &self.host.name,
            self.node.settle_link(&self.host.name).await?,
        )?;
        settled(&pod_if.name, self.pod.settle_link(&pod_if.name).await?)?;
        // Strict reverse-path filtering passes thanks to the /32 route; this only matters where
        // pod traffic is routed asymmetrically, so a read-only /proc/sys is not fatal.
        if let Err(e) = disable_rp_filter(&self.host.name) {
            self.log.line(format_args!("rp_filter left as is: {e}"));
        }

        Ok(CniResult::for_add(
            &Wired {
                cni_version: self.conf.cni_version.clone(),
                host_ifname: self.host.name.clone(),
                host_mac: host_mac.to_string(),
                ifname: pod_if.name,
                mac: pod_if.mac.unwrap_or(pod_mac).to_string(),
                sandbox: self.netns_path.to_owned(),
                address: created.address,
                gateway: created.gateway,
            },
            self.conf.prev_result.clone(),
        ))
    }
}

/// A link without carrier after both ends of its veth pair are up is a kernel error worth
/// failing the ADD for.
fn settled(ifname: &str, carrier: bool) -> Result<(), CniError> {
    if carrier {
        return Ok(());
    }
    Err(CniError::new(
        code::KERNEL,
        format!("{ifname} has no carrier although both ends of its veth pair are up"),
        "",
    ))
}

fn require_mac(link: &LinkInfo) -> Result<MacAddr, CniError> {
    link.mac.ok_or_else(|| {
        CniError::new(
            code::KERNEL,
            format!("veth {} has no MAC address", link.name),
            "",
        )
    })
}

/// Deletes what this ADD made: the host veth (the peer goes with it) and, when it may have been
/// registered, the endpoint. Failures are logged: the original error is what the runtime needs.
async fn undo(
    node: &Netlink,
    host_ifname: &str,
    agent: Option<&Client>,
    inv: &Invocation,
    log: &Log,
) {
    match node.delete_link(host_ifname).await {
        Ok(_) => log.line(format_args!("undo: deleted {host_ifname}")),
        Err(e) => log.line(format_args!("undo: deleting {host_ifname} failed: {e}")),
    }
    if let Some(agent) = agent {
        match agent
            .delete_attachment(&inv.container_id, &inv.ifname)
            .await
        {
            Ok(_) => log.line("undo: endpoint deleted"),
            Err(e) => log.line(format_args!("undo: deleting the endpoint failed: {e}")),
        }
    }
}
