//! Netlink: veth pairs, addresses, routes and neighbours, in the node's namespace or a pod's.
//!
//! A [`Netlink`] is an rtnetlink connection bound to one network namespace: every operation on it
//! acts on that namespace, whatever thread or task calls it. [`Netlink::connect`] binds to the
//! caller's namespace, [`Netlink::connect_in`] to another one (the socket is made on a thread that
//! entered it; see [`crate::netns`]). The connection is driven by a tokio task, so both need a
//! runtime.
//!
//! The wiring of a pod, as the CNI plugin does it:
//!
//! ```text
//!  node namespace                          pod namespace
//!  lxc<hash> ──────── veth ────────────── eth0  10.x.y.z/32
//!   route 10.x.y.z/32 dev lxc<hash>        route 169.254.1.1 dev eth0 scope link
//!                                          default via 169.254.1.1 dev eth0
//!                                          neigh 169.254.1.1 lladdr <lxc MAC> PERMANENT
//! ```
//!
//! The gateway address is never configured anywhere: the pod's permanent neighbour entry sends
//! everything to the host veth, where the datapath (or the node's routing) takes over.
//!
//! Operations that create state are idempotent where the kernel allows it (routes, addresses and
//! neighbours are replaced, deleting a missing link succeeds), so a retried CNI call converges.
//! Sysctl helpers ([`set_ipv4_forwarding`], [`disable_rp_filter`]) act on the calling thread's
//! namespace; run them through [`NetNs::run_in`] for another one.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ciliate_model::MacAddr;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{
    Handle, IpVersion, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::netns::{NetNs, NetnsError};

/// What went wrong, with the operation and the namespace it was done in.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused a request.
    #[error("{op} (in {netns}): {source}")]
    Request {
        /// What was being done, e.g. "create veth lxc0123 / tmp0123".
        op: String,
        /// The namespace, by path (or "the current network namespace").
        netns: String,
        /// The errno as an I/O error (or the decoding problem).
        #[source]
        source: io::Error,
    },
    /// A link that the operation needs is not there.
    #[error("{what} not found (in {netns})")]
    NotFound {
        /// What was looked for, e.g. "link tmp0123".
        what: String,
        /// The namespace.
        netns: String,
    },
    /// A link of the requested name already exists.
    #[error("{what} already exists (in {netns})")]
    Exists {
        /// What is in the way, e.g. "link eth0".
        what: String,
        /// The namespace.
        netns: String,
    },
    /// The namespace could not be opened or entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A sysctl could not be read or written.
    #[error("sysctl {path}: {source}", path = path.display())]
    Sysctl {
        /// The /proc/sys path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// No socket could be opened, or no tokio runtime is there to drive it.
    #[error("opening a netlink socket (in {netns}): {reason}")]
    Connect {
        /// The namespace.
        netns: String,
        /// Why.
        reason: String,
    },
}

impl NetlinkError {
    /// The errno of a refused request, e.g. `libc::EEXIST`.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } | Self::Sysctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index (in the namespace it was read from).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address; `None` for links without one.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Its IPv4 addresses with prefix lengths.
    pub addresses: Vec<Ipv4Net>,
}

/// Scope of a route, as far as we care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Reached through a gateway or globally (`scope global`).
    Universe,
    /// Directly on the link (`scope link`).
    Link,
    /// Local to this host (`scope host`).
    Host,
    /// Anything else, by number.
    Other(u8),
}

impl From<RouteScope> for Scope {
    fn from(s: RouteScope) -> Self {
        match s {
            RouteScope::Universe => Self::Universe,
            RouteScope::Link => Self::Link,
            RouteScope::Host => Self::Host,
            other => Self::Other(other.into()),
        }
    }
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination prefix (`0.0.0.0/0` for the default route).
    pub destination: Ipv4Net,
    /// Next hop, if the route has one.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope.
    pub scope: Scope,
}

/// An IPv4 neighbour (ARP) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourInfo {
    /// Interface index.
    pub ifindex: u32,
    /// The neighbour's address.
    pub ip: Ipv4Addr,
    /// The hardware address it resolves to, when resolved.
    pub mac: Option<MacAddr>,
    /// True for a PERMANENT entry (never expires, never re-resolved).
    pub permanent: bool,
}

/// How to configure the pod side of a veth pair, inside the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    /// The name the peer has now (the temporary name it was created with).
    pub current_name: String,
    /// The name it must get (`CNI_IFNAME`).
    pub ifname: String,
    /// MAC to set; `None` keeps the one the kernel chose.
    pub mac: Option<MacAddr>,
    /// MTU to set; `None` keeps the current one.
    pub mtu: Option<u32>,
    /// The pod's address; a /32, all traffic goes via the gateway.
    pub address: Ipv4Net,
    /// The gateway (169.254.1.1): reached on the link, never configured anywhere.
    pub gateway: Ipv4Addr,
    /// MAC of the host side of the veth pair; the gateway resolves to it, permanently.
    pub gateway_mac: MacAddr,
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    netns: String,
    // The namespace the socket lives in, for the few requests that are not netlink ones.
    ns: NetNs,
    // The connection task would outlive us until the kernel sends something unsolicited, so it
    // is aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Maps an rtnetlink error to an I/O error, keeping the errno when there is one.
fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

impl Netlink {
    /// A connection in the calling thread's namespace (normally the node's). Needs a tokio
    /// runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let netns = "the current network namespace".to_owned();
        let rt = runtime(&netns)?;
        let ns = NetNs::current()?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError::Connect {
            netns: netns.clone(),
            reason: e.to_string(),
        })?;
        let task = rt.spawn(conn);
        Ok(Self {
            handle,
            netns,
            ns,
            task,
        })
    }

    /// A connection whose socket lives in `ns`: every request acts on that namespace. The socket
    /// is made on a thread that entered `ns`; the connection is then driven from tokio as usual.
    pub fn connect_in(ns: &NetNs) -> Result<Self, NetlinkError> {
        let netns = format!("network namespace {}", ns.path().display());
        let rt = runtime(&netns)?;
        let enter = rt.clone();
        let (conn, handle, _) = ns
            .run_in(move || {
                // The socket registers with the runtime's reactor when made; the reactor is not
                // tied to any thread, so entering the runtime's context here is enough.
                let _guard = enter.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| NetlinkError::Connect {
                netns: netns.clone(),
                reason: e.to_string(),
            })?;
        let task = rt.spawn(conn);
        Ok(Self {
            handle,
            netns,
            ns: ns.try_clone()?,
            task,
        })
    }

    /// [`settle_link`] on the link `name` of this connection's namespace.
    pub async fn settle_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.ns.run_in(|| settle_link(name))?
    }

    /// The namespace this connection acts on, for messages.
    pub fn namespace(&self) -> &str {
        &self.netns
    }

    fn request_error(&self, op: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
        NetlinkError::Request {
            op: op.into(),
            netns: self.netns.clone(),
            source: to_io(e),
        }
    }

    fn not_found(&self, what: String) -> NetlinkError {
        NetlinkError::NotFound {
            what,
            netns: self.netns.clone(),
        }
    }

    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.request_error(format!("look up link {name}"), e)),
        }
    }

    async fn required_link(&self, name: &str) -> Result<LinkMessage, NetlinkError> {
        self.link_message(name)
            .await?
            .ok_or_else(|| self.not_found(format!("link {name}")))
    }

    /// The link called `name` with its IPv4 addresses, or `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let Some(msg) = self.link_message(name).await? else {
            return Ok(None);
        };
        let mut info = link_info(&msg);
        info.addresses = self.addresses(info.index).await?;
        Ok(Some(info))
    }

    /// Every link of the namespace, with their IPv4 addresses.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.request_error("list links", e))?;
        let addrs = self.all_addresses().await?;
        Ok(msgs
            .iter()
            .map(|m| {
                let mut info = link_info(m);
                info.addresses = addrs
                    .iter()
                    .filter(|(index, _)| *index == info.index)
                    .map(|(_, net)| *net)
                    .collect();
                info
            })
            .collect())
    }

    /// Creates a veth pair in this namespace and returns `(host side, peer)`. Fails with
    /// [`NetlinkError::Exists`] when either name is taken: nothing that exists is touched.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
    ) -> Result<(LinkInfo, LinkInfo), NetlinkError> {
        for name in [host, peer] {
            if self.link_message(name).await?.is_some() {
                return Err(NetlinkError::Exists {
                    what: format!("link {name}"),
                    netns: self.netns.clone(),
                });
            }
        }
        let op = format!("create veth pair {host} / {peer}");
        self.handle
            .link()
            .add(LinkVeth::new(host, peer).build())
            .execute()
            .await
            .map_err(|e| self.request_error(op.clone(), e))?;
        let host_link = self.required_link(host).await?;
        let peer_link = self.required_link(peer).await?;
        Ok((link_info(&host_link), link_info(&peer_link)))
    }

    /// Moves the link `name` into the namespace `ns` (where it keeps its name, gets a new index).
    pub async fn move_link(&self, name: &str, ns: &NetNs) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let link = self.required_link(name).await?;
        let msg = LinkUnspec::new_with_index(link.header.index)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        self.handle.link().change(msg).execute().await.map_err(|e| {
            self.request_error(format!("move link {name} to {}", ns.path().display()), e)
        })
    }

    /// Deletes the link `name`. Returns whether there was one: a missing link is not an error, so
    /// that deleting is idempotent. Deleting one side of a veth pair deletes both.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link_message(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            // Gone between the lookup and the delete (the peer's namespace went away).
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(self.request_error(format!("delete link {name}"), e)),
        }
    }

    /// Makes sure the VXLAN device `name` exists in collect_md ("external") mode on UDP `port`,
    /// with `mtu`, and is up: the BPF programs choose the remote node and the VNI per packet.
    /// An existing device of that name is reused (after an agent restart, traffic keeps
    /// flowing through it), so this is idempotent.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        port: u16,
        mtu: u32,
    ) -> Result<LinkInfo, NetlinkError> {
        if self.link_message(name).await?.is_none() {
            let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
                .port(port)
                .collect_metadata(true)
                .learning(false)
                .build();
            self.handle.link().add(msg).execute().await.map_err(|e| {
                self.request_error(
                    format!("create VXLAN device {name} (UDP {port}, external)"),
                    e,
                )
            })?;
        }
        self.set_link_up(name, Some(mtu)).await
    }

    /// Brings the link `name` up, setting its MTU first when given.
    pub async fn set_link_up(
        &self,
        name: &str,
        mtu: Option<u32>,
    ) -> Result<LinkInfo, NetlinkError> {
        let link = self.required_link(name).await?;
        let mut builder = LinkUnspec::new_with_index(link.header.index).up();
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        self.handle
            .link()
            .change(builder.build())
            .execute()
            .await
            .map_err(|e| self.request_error(format!("set link {name} up"), e))?;
        let link = self.required_link(name).await?;
        Ok(link_info(&link))
    }

    /// Adds `address` to the link `ifindex`, replacing it if it is there (idempotent).
    pub async fn add_address(&self, ifindex: u32, address: Ipv4Net) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(ifindex, IpAddr::V4(address.addr()), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| self.request_error(format!("add address {address} to link #{ifindex}"), e))
    }

    /// The IPv4 addresses of the link `ifindex`.
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<Ipv4Net>, NetlinkError> {
        Ok(self
            .all_addresses()
            .await?
            .into_iter()
            .filter(|(index, _)| *index == ifindex)
            .map(|(_, net)| net)
            .collect())
    }

    /// Every IPv4 address of the namespace, on any link (the agent's own addresses are the
    /// `host` identity for policy).
    pub async fn ipv4_addresses(&self) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let mut out: Vec<Ipv4Addr> = self
            .all_addresses()
            .await?
            .into_iter()
            .map(|(_, net)| net.addr())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every IPv4 address of the namespace with the index of the link holding it.
    pub async fn all_addresses(&self) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.request_error("list addresses", e))?;
        Ok(msgs.iter().filter_map(ipv4_address).collect())
    }

    /// Adds (or replaces) a route to `destination` out of `oif`, via `gateway` when given, else
    /// on the link.
    pub async fn add_route(
        &self,
        destination: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        oif: u32,
    ) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .output_interface(oif);
        builder = match gateway {
            Some(gw) => builder.gateway(gw),
            None => builder.scope(RouteScope::Link),
        };
        let what = match gateway {
            Some(gw) => format!("add route {destination} via {gw} dev #{oif}"),
            None => format!("add route {destination} dev #{oif} scope link"),
        };
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(|e| self.request_error(what, e))
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, NetlinkError> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.request_error("list routes", e))?;
        Ok(msgs.iter().filter_map(ipv4_main_route).collect())
    }

    /// Adds (or replaces) a PERMANENT neighbour entry `ip` → `mac` on the link `ifindex`.
    pub async fn add_permanent_neighbour(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                self.request_error(format!("add neighbour {ip} lladdr {mac} dev #{ifindex}"), e)
            })
    }

    /// The IPv4 neighbour entries of the link `ifindex`.
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<NeighbourInfo>, NetlinkError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.request_error("list neighbours", e))?;
        Ok(msgs
            .iter()
            .filter_map(ipv4_neighbour)
            .filter(|n| n.ifindex == ifindex)
            .collect())
    }

    /// Configures the pod side of a veth pair; call it on a connection inside the pod's
    /// namespace, after the peer was moved there. Renames the peer to `ifname`, sets MAC and MTU,
    /// brings `lo` and the interface up, adds the /32 address, the on-link route to the gateway,
    /// the default route via the gateway and the permanent neighbour entry for the gateway.
    ///
    /// Refuses with [`NetlinkError::Exists`] when another link is already called `ifname`.
    /// Running it again on a configured interface changes nothing.
    pub async fn configure_pod_interface(
        &self,
        cfg: &PodInterface,
    ) -> Result<LinkInfo, NetlinkError> {
        let link = match self.link_message(&cfg.current_name).await? {
            Some(link) => {
                if cfg.current_name != cfg.ifname && self.link_message(&cfg.ifname).await?.is_some()
                {
                    return Err(NetlinkError::Exists {
                        what: format!("link {}", cfg.ifname),
                        netns: self.netns.clone(),
                    });
                }
                link
            }
            // Already renamed by an earlier attempt.
            None => self.required_link(&cfg.ifname).await.map_err(|_| {
                self.not_found(format!("link {} (or {})", cfg.current_name, cfg.ifname))
            })?,
        };
        let index = link.header.index;

        // Renaming needs the link down; a fresh veth peer is, and so is one moved between
        // namespaces. Name, MAC and MTU go in one request.
        let mut builder = LinkUnspec::new_with_index(index);
        if cfg.current_name != cfg.ifname {
            builder = builder.name(cfg.ifname.clone());
        }
        if let Some(mac) = cfg.mac {
            builder = builder.address(mac.0.to_vec());
        }
        if let Some(mtu) = cfg.mtu {
            builder = builder.mtu(mtu);
        }
        self.handle
            .link()
            .change(builder.build())
            .execute()
            .await
            .map_err(|e| {
                self.request_error(
                    format!(
                        "rename {} to {} / set MAC and MTU",
                        cfg.current_name, cfg.ifname
                    ),
                    e,
                )
            })?;

        self.set_link_up("lo", None).await?;
        self.set_link_up(&cfg.ifname, None).await?;
        self.add_address(index, cfg.address).await?;
        self.add_route(Ipv4Net::from(cfg.gateway), None, index)
            .await?;
        self.add_route(Ipv4Net::default(), Some(cfg.gateway), index)
            .await?;
        self.add_permanent_neighbour(index, cfg.gateway, cfg.gateway_mac)
            .await?;

        self.link(&cfg.ifname)
            .await?
            .ok_or_else(|| self.not_found(format!("link {}", cfg.ifname)))
    }

    /// Configures the host side of a veth pair, in the node's namespace: brings it up (with
    /// `mtu` when given) and routes `pod_ip`/32 to it on the link.
    pub async fn configure_host_veth(
        &self,
        name: &str,
        pod_ip: Ipv4Addr,
        mtu: Option<u32>,
    ) -> Result<LinkInfo, NetlinkError> {
        let link = self.set_link_up(name, mtu).await?;
        self.add_route(Ipv4Net::from(pod_ip), None, link.index)
            .await?;
        Ok(link)
    }
}

/// The L7 proxy's policy routing (Cilium's): packets the datapath marked to-proxy are
/// delivered locally whatever their destination, so a connection assigned to a transparent
/// proxy socket keeps its original destination. See `bpf/include/ciliate/abi.h`.
impl Netlink {
    /// Installs `ip rule add fwmark 0x200/0xf00 lookup 2004 pref 9` and `ip route replace
    /// local 0.0.0.0/0 dev lo table 2004` in this connection's namespace; a second call
    /// changes nothing.
    pub async fn install_proxy_routing(&self) -> Result<(), NetlinkError> {
        use crate::proxy_mark::{
            MAGIC_MASK, MAGIC_TO_PROXY, PROXY_ROUTE_TABLE, PROXY_RULE_PRIORITY,
        };
        let lo = self
            .link("lo")
            .await?
            .ok_or_else(|| self.not_found("link lo".into()))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(lo.index)
            .table_id(PROXY_ROUTE_TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                self.request_error(
                    format!("add route local 0.0.0.0/0 dev lo table {PROXY_ROUTE_TABLE}"),
                    e,
                )
            })?;
        if !self.proxy_rules().await?.is_empty() {
            return Ok(());
        }
        let mut add = self
            .handle
            .rule()
            .add()
            .v4()
            .fw_mark(MAGIC_TO_PROXY)
            .table_id(PROXY_ROUTE_TABLE)
            .priority(PROXY_RULE_PRIORITY)
            .action(RuleAction::ToTable);
        add.message_mut()
            .attributes
            .push(RuleAttribute::FwMask(MAGIC_MASK));
        add.execute().await.map_err(|e| {
            self.request_error(
                format!(
                    "add rule fwmark {MAGIC_TO_PROXY:#x}/{MAGIC_MASK:#x} lookup {PROXY_ROUTE_TABLE}"
                ),
                e,
            )
        })
    }

    /// Removes what [`Netlink::install_proxy_routing`] installed; nothing to remove is fine.
    pub async fn remove_proxy_routing(&self) -> Result<(), NetlinkError> {
        use crate::proxy_mark::PROXY_ROUTE_TABLE;
        for rule in self.proxy_rules().await? {
            match self.handle.rule().del(rule).execute().await {
                Ok(()) => {}
                Err(e) if matches!(errno_of(&e), Some(libc::ENOENT)) => {}
                Err(e) => return Err(self.request_error("delete the proxy's ip rule", e)),
            }
        }
        let lo = self
            .link("lo")
            .await?
            .ok_or_else(|| self.not_found("link lo".into()))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(lo.index)
            .table_id(PROXY_ROUTE_TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno_of(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            Err(e) => Err(self.request_error(
                format!("delete route local 0.0.0.0/0 table {PROXY_ROUTE_TABLE}"),
                e,
            )),
        }
    }

    /// Whether the proxy's rule and route are both in place.
    pub async fn proxy_routing_installed(&self) -> Result<bool, NetlinkError> {
        use crate::proxy_mark::PROXY_ROUTE_TABLE;
        if self.proxy_rules().await?.is_empty() {
            return Ok(false);
        }
        let mut get = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(PROXY_ROUTE_TABLE)
            .build();
        get.header.table = RouteHeader::RT_TABLE_UNSPEC;
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(get)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.request_error("list routes", e))?;
        Ok(msgs.iter().any(|m| {
            m.header.kind == RouteType::Local
                && m.header.destination_prefix_length == 0
                && m.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Table(t) if *t == PROXY_ROUTE_TABLE))
        }))
    }

    /// The IPv4 rules that are the proxy's (its mark, mask and table).
    async fn proxy_rules(&self) -> Result<Vec<RuleMessage>, NetlinkError> {
        use crate::proxy_mark::{MAGIC_MASK, MAGIC_TO_PROXY, PROXY_ROUTE_TABLE};
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.request_error("list ip rules", e))?;
        Ok(rules
            .into_iter()
            .filter(|r| {
                let has = |want: &RuleAttribute| r.attributes.iter().any(|a| a == want);
                has(&RuleAttribute::FwMark(MAGIC_TO_PROXY))
                    && has(&RuleAttribute::FwMask(MAGIC_MASK))
                    && (has(&RuleAttribute::Table(PROXY_ROUTE_TABLE))
                        || u32::from(r.header.table) == PROXY_ROUTE_TABLE)
            })
            .collect())
    }
}

fn runtime(netns: &str) -> Result<tokio::runtime::Handle, NetlinkError> {
    tokio::runtime::Handle::try_current().map_err(|e| NetlinkError::Connect {
        netns: netns.to_owned(),
        reason: format!("needs a tokio runtime: {e}"),
    })
}

fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name.clone_from(name),
            LinkAttribute::Address(bytes) => info.mac = mac_of(bytes),
            LinkAttribute::Mtu(mtu) => info.mtu = Some(*mtu),
            _ => {}
        }
    }
    info
}

fn ipv4_address(msg: &AddressMessage) -> Option<(u32, Ipv4Net)> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links
    // and equal to IFA_LOCAL otherwise.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Ipv4Net::new(ip, msg.header.prefix_len)
        .ok()
        .map(|net| (msg.header.index, net))
}

fn ipv4_main_route(msg: &RouteMessage) -> Option<RouteInfo> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(RouteInfo {
        destination: Ipv4Net::new(destination, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        scope: msg.header.scope.into(),
    })
}

fn ipv4_neighbour(msg: &NeighbourMessage) -> Option<NeighbourInfo> {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = mac_of(bytes),
            _ => {}
        }
    }
    Some(NeighbourInfo {
        ifindex: msg.header.ifindex,
        ip: ip?,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

/// Reads a sysctl of the calling thread's network namespace.
fn read_sysctl(path: &str) -> Result<String, NetlinkError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| NetlinkError::Sysctl {
            path: path.into(),
            source,
        })
}

/// Writes a sysctl of the calling thread's network namespace, unless it already holds `value`
/// (so that a read-only /proc/sys is only an error when a change is really needed).
fn write_sysctl(path: &str, value: &str) -> Result<(), NetlinkError> {
    if read_sysctl(path).is_ok_and(|v| v == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| NetlinkError::Sysctl {
        path: path.into(),
        source,
    })
}

/// Turns IPv6 off on `ifname` in the calling thread's namespace. Until the datapath forwards
/// IPv6 it drops it (reason 139); switching it off at the interface keeps the kernel's own
/// router solicitations and DAD probes from filling the drop stream. A kernel without IPv6
/// has nothing to switch off.
pub fn disable_ipv6(ifname: &str) -> Result<(), NetlinkError> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(NetlinkError::Sysctl {
            path: path.into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    write_sysctl(&path, "1")
}

/// Whether IPv4 forwarding is on in the calling thread's namespace.
pub fn ipv4_forwarding() -> Result<bool, NetlinkError> {
    Ok(read_sysctl("/proc/sys/net/ipv4/ip_forward")? == "1")
}

/// Turns IPv4 forwarding on or off in the calling thread's namespace (`net.ipv4.ip_forward`):
/// the node must forward between pod veths and its other interfaces.
pub fn set_ipv4_forwarding(enable: bool) -> Result<(), NetlinkError> {
    write_sysctl(
        "/proc/sys/net/ipv4/ip_forward",
        if enable { "1" } else { "0" },
    )
}

/// Sets `rp_filter` to 0 on the interface `ifname` in the calling thread's namespace. The
/// kernel uses the maximum of `conf/all` and `conf/<if>`, so this only helps where `all` is 0;
/// the /32 route to the pod makes strict reverse-path checks pass anyway, this is for setups
/// that route pod traffic asymmetrically.
pub fn disable_rp_filter(ifname: &str) -> Result<(), NetlinkError> {
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(NetlinkError::Sysctl {
            path: format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter").into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not an interface name"),
        });
    }
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter"), "0")
}

/// Has the kernel finish bringing `ifname` up, in the calling thread's namespace, and returns
/// whether it has a carrier.
///
/// A veth end opened while its peer is down gets its carrier only when the peer comes up, and
/// its transmit queue later still: until the kernel's link-watch worker attaches it, the device
/// keeps the `noop` qdisc, which drops every packet (`QDISC_DROP` in `__dev_queue_xmit`). A
/// pod whose first packet left before that worker ran lost it: a ping went unanswered, a TCP
/// SYN waits a second for its retry, a DNS query five. `ETHTOOL_GLINK` runs the device's
/// pending link-watch work at once (`ethtool_op_get_link` → `linkwatch_sync_dev`), under the
/// same lock as the worker, so when this returns the queue is attached whoever ran the work.
pub fn settle_link(ifname: &str) -> Result<bool, NetlinkError> {
    use std::os::fd::{AsRawFd, FromRawFd};

    /// `struct ethtool_value` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_GLINK: u32 = 0x0000_000a;

    let request = |source: io::Error| NetlinkError::Request {
        op: format!("ETHTOOL_GLINK on {ifname}"),
        netns: "the calling thread's network namespace".into(),
        source,
    };
    let name = ifname.as_bytes();
    // IFNAMSIZ (16) with the terminating NUL.
    if name.is_empty() || name.len() >= 16 || name.contains(&0) {
        return Err(request(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an interface name",
        )));
    }
    // SAFETY: socket(2) takes no pointers; a valid descriptor is owned by nobody else.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(request(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is closed only by this `OwnedFd`.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GLINK,
        data: 0,
    };
    // SAFETY: all-zero is a valid `ifreq` (a name of NULs and a null union).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads `ifr` and reads/writes the `ethtool_value` its data points at;
    // both live until the call returns.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        return Err(request(io::Error::last_os_error()));
    }
    Ok(value.data != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rp_filter_refuses_path_tricks() {
        for bad in ["", "..", "a/b"] {
            assert!(disable_rp_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_operation_and_namespace() {
        let e = NetlinkError::Request {
            op: "create veth pair lxc1 / tmp1".into(),
            netns: "network namespace /var/run/netns/x".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        let s = e.to_string();
        assert!(s.contains("lxc1") && s.contains("/var/run/netns/x"), "{s}");
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }

    #[test]
    fn parses_link_route_and_neighbour_messages() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.header.flags = LinkFlags::Up;
        link.attributes = vec![
            LinkAttribute::IfName("lxc0".into()),
            LinkAttribute::Address(vec![0x0a, 0x58, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1500),
        ];
        let info = link_info(&link);
        assert_eq!(info.index, 7);
        assert_eq!(info.name, "lxc0");
        assert!(info.up);
        assert_eq!(info.mac, Some(MacAddr([0x0a, 0x58, 0, 0, 0, 1])));
        assert_eq!(info.mtu, Some(1500));

        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::new(169, 254, 1, 1))
            .output_interface(3)
            .build();
        let r = ipv4_main_route(&default).unwrap();
        assert_eq!(r.destination, Ipv4Net::default());
        assert_eq!(r.gateway, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(r.oif, Some(3));

        let other_table = RouteMessageBuilder::<Ipv4Addr>::new().table_id(255).build();
        assert!(ipv4_main_route(&other_table).is_none());

        let mut n = NeighbourMessage::default();
        n.header.ifindex = 3;
        n.header.state = NeighbourState::Permanent;
        n.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(169, 254, 1, 1))),
            NeighbourAttribute::LinkLayerAddress(vec![1, 2, 3, 4, 5, 6]),
        ];
        let n = ipv4_neighbour(&n).unwrap();
        assert!(n.permanent);
        assert_eq!(n.mac, Some(MacAddr([1, 2, 3, 4, 5, 6])));
    }
}
