//! The agent's API: JSON over HTTP/1.1 on a unix socket (default `/var/run/ciliate/agent.sock`).
//!
//! | method + path                    | body → answer                                   |
//! |----------------------------------|-------------------------------------------------|
//! | `GET /v1/healthz`                | → `Health`                                      |
//! | `GET /v1/status`                 | → [`Status`]                                    |
//! | `GET /v1/config`                 | → the agent's configuration in force (JSON)     |
//! | `GET /v1/endpoints`              | → `[Endpoint]`                                  |
//! | `GET /v1/endpoints/{ref}`        | → `Endpoint`; ref = id, container id or ns/pod  |
//! | `POST /v1/endpoints`             | [`EndpointCreateRequest`] → [`EndpointCreated`] |
//! | `DELETE /v1/endpoints/{cid}`     | → [`EndpointDeleted`] (idempotent)              |
//! | `POST /v1/endpoints/gc`          | [`GcRequest`] → [`GcResult`]                    |
//! | `GET /v1/identities`             | → `[Identity]`: reserved, endpoint and CIDR ones |
//! | `GET /v1/identities/{id}`        | → `Identity`                                    |
//! | `GET /v1/bpf/ct`                 | → `[CtEntry]`                                   |
//! | `POST /v1/manifests`             | [`ApplyRequest`] → [`ApplyResult`]; Services and policies in one batch; 400 `invalid` lists every problem, nothing applied. Also streamed, `application/x-ndjson` ([`crate::manifest::raw::STREAM_CONTENT_TYPE`]): what `ciliate apply` sends |
//! | `GET /v1/services`               | → `[ServiceView]`                               |
//! | `GET /v1/services/{ns}/{name}`   | → [`ServiceView`]                               |
//! | `GET /v1/bpf/lb`                 | → [`LbState`] as the datapath's maps hold it    |
//! | `GET /v1/bpf/ipcache`            | → `[IpcacheEntry]` as the ipcache map holds it  |
//! | `GET /v1/bpf/endpoints`          | → `[`[`BpfEndpoint`]`]`: the endpoint map       |
//! | `GET /v1/nodes`                  | → `[`[`NodeView`]`]`: the cluster's nodes       |
//! | `GET /v1/policies`               | → `[PolicyView]`                                |
//! | `GET /v1/policies/{kind}/{ns}/{name}` | → the policy resource (`{kind}/{name}` for clusterwide) |
//! | `POST /v1/policies/validate`     | [`ApplyRequest`] → `PolicyValidation`; applies nothing |
//! | `GET /v1/policy/trace?src=&dst=&dport=&proto=` | → `PolicyTrace`                   |
//! | `GET /v1/bpf/policy/{ref}`       | → `BpfPolicyView`: an endpoint's policy map     |
//! | `GET /v1/monitor[?type=]`        | → a stream of `MonitorEvent`, one JSON per line; type = drop, trace or policy-verdict |
//! | `GET /v1/endpoints/{cid}?ifname=` | → `Endpoint` of one CNI attachment (container id, interface); cid never read as an id |
//! | `DELETE /v1/endpoints/{cid}?ifname=` | → [`EndpointDeleted`]: only that attachment (idempotent); without `ifname` a container with several attachments is a 409 `conflict` |
//! | `GET /v1/fqdn/cache[?matchpattern=]` | → `[`[`FqdnCacheEntry`]`]`: names learned from DNS answers |
//! | `DELETE /v1/fqdn/cache[?matchpattern=]` | → [`FqdnCacheCleaned`]: forgets them (all, or the names the pattern matches) |
//!
//! Errors answer with a 4xx/5xx status and an [`ApiError`] body. The policy answers are in
//! [`crate::policy_api`].
//!
//! [`ApplyRequest`]: crate::manifest::ApplyRequest
//! [`ApplyResult`]: crate::manifest::ApplyResult
//! [`ServiceView`]: crate::service::ServiceView
//! [`LbState`]: crate::lb::LbState

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::endpoint::{Endpoint, MacAddr, NamedPort, PodRef};
use crate::labels::Labels;

/// Default path of the agent's API socket.
pub const DEFAULT_SOCKET: &str = "/var/run/ciliate/agent.sock";

/// The address every pod uses as its gateway. It is link-local and never on the wire:
/// each pod holds a permanent neighbour entry that maps it to its veth peer's MAC.
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable machine-readable kind, e.g. `not-found`, `conflict`, `invalid`, `exhausted`, `datapath`.
    pub kind: String,
    /// What went wrong and what to do about it, for a human.
    pub message: String,
}

/// Answer of `GET /v1/healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// "ok" when the agent serves.
    pub status: String,
}

/// Answer of `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The node's name.
    pub node: String,
    /// The agent's version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// "ok", or "degraded" with reasons in `problems`.
    pub health: String,
    /// What is wrong, when anything is.
    #[serde(default)]
    pub problems: Vec<String>,
    /// The datapath's state.
    pub datapath: DatapathStatus,
    /// Number of endpoints.
    pub endpoints: usize,
    /// Number of identities in use on this node (reserved ones not counted).
    pub identities: usize,
    /// Address management.
    pub ipam: IpamStatus,
    /// Number of Services the agent knows (from the API and the manifest directory).
    #[serde(default)]
    pub services: usize,
    /// Number of backends programmed for them.
    #[serde(default)]
    pub backends: usize,
    /// Number of network policies in force (from the API and the manifest directory).
    #[serde(default)]
    pub policies: usize,
    /// The cluster this node is part of; absent when it stands alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Endpoint datapaths found broken (links detached, unpinned or swapped, map entries gone)
    /// and put back by the agent since it started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub datapath_repairs: u64,
    /// Endpoints removed because their veth vanished without a CNI DEL, since the agent started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub endpoints_vanished: u64,
    /// The node's L7 proxy: the redirects policy sends to it, and its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
}

/// The L7 proxy part of [`Status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// Whether a proxy is attached to receive the redirects (the agent supervises one).
    pub enabled: bool,
    /// The proxy's listeners, which redirected policy entries carry.
    pub listeners: crate::l7::ProxyPorts,
    /// Redirects in force: (endpoint, direction, port) whose traffic goes through the proxy.
    pub redirects: usize,
    /// Endpoints with at least one redirect.
    pub endpoints: usize,
    /// The policy revision of the redirects last computed.
    pub revision: u64,
    /// Whether the proxy process runs and answers (filled by the supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    /// The revision the proxy says it has in force (filled by the supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<u64>,
    /// Times the proxy was restarted since the agent started (filled by the supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    /// HTTP requests the proxy handled (filled by the supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// The proxy's process id (filled by the supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Packets the datapath handed to the proxy's sockets (both directions): connections
    /// without HTTP rules never add to it.
    #[serde(default)]
    pub redirected_packets: u64,
}

/// Counters that are zero are left out of [`Status`], as they were before they existed.
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The cluster part of [`Status`] (multi-node).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The etcd endpoints.
    pub etcd: Vec<String>,
    /// Whether etcd answers now (when not, the node forwards with the cluster as last seen).
    pub connected: bool,
    /// Names of the nodes registered, this one included.
    pub nodes: Vec<String>,
    /// Identities in use anywhere in the cluster.
    pub identities: usize,
    /// Endpoints of other nodes this node knows.
    pub remote_endpoints: usize,
    /// The overlay device, when pods of other nodes are reached through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    /// While etcd has not been reached since the agent started: when the cluster view in use
    /// (saved by the previous run) was saved, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_view_unix: Option<u64>,
}

/// The datapath part of [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathStatus {
    /// Whether the BPF programs are loaded.
    pub loaded: bool,
    /// "bpf" for the kernel datapath, "fake" for the in-memory one used in tests.
    pub kind: String,
    /// The bpffs directory holding this node's pins.
    pub pin_dir: String,
    /// Loaded programs by name.
    pub programs: Vec<String>,
    /// Map name → entries in use (for the maps where counting is cheap).
    #[serde(default)]
    pub maps: Vec<MapUsage>,
}

/// How full one BPF map is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapUsage {
    /// Map name.
    pub name: String,
    /// Entries present.
    pub entries: u32,
    /// Maximum entries.
    pub max_entries: u32,
}

/// The IPAM part of [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamStatus {
    /// The node's pod CIDR.
    pub cidr: Ipv4Net,
    /// Addresses handed out.
    pub allocated: u32,
    /// Addresses that can be handed out in all.
    pub capacity: u32,
}

/// Body of `POST /v1/endpoints`: the CNI plugin registers a pod interface it has created.
///
/// The plugin has already created the veth pair and moved the pod side into the pod's
/// network namespace; the agent allocates the address and identity and programs the datapath.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCreateRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_NETNS.
    pub netns: String,
    /// The pod, from CNI_ARGS K8S_POD_NAMESPACE / K8S_POD_NAME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Labels the runtime passed (CNI args / network config `args.cni.labels`). The agent adds
    /// the namespace label and, later, labels from the Kubernetes source.
    #[serde(default)]
    pub labels: Labels,
    /// Named container ports (CNI args `CILIATE_PORTS=http=8080/tcp,...`), for policies that
    /// name ports; the Kubernetes source will fill the same field from the Pod spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
    /// Host side of the veth pair.
    pub host_ifname: String,
    /// Its interface index in the node's namespace.
    pub host_ifindex: u32,
    /// Its MAC address.
    pub host_mac: MacAddr,
    /// MAC address of the pod side.
    pub mac: MacAddr,
}

/// Answer of `POST /v1/endpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCreated {
    /// The endpoint as registered.
    pub endpoint: Endpoint,
    /// The pod's address with its prefix length (a /32: all traffic goes via the gateway).
    pub address: Ipv4Net,
    /// The gateway the pod routes through.
    pub gateway: Ipv4Addr,
    /// MTU to set on the pod's interface.
    pub mtu: u32,
}

/// Answer of `DELETE /v1/endpoints/{cid}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDeleted {
    /// The endpoint that was removed; `None` when there was none (DEL is idempotent).
    pub endpoint: Option<Endpoint>,
    /// The address released, if any.
    pub released: Option<Ipv4Addr>,
}

/// One attachment a runtime still considers valid (CNI 1.1 GC `cni.dev/valid-attachments`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Container id.
    pub container_id: String,
    /// Interface name in the container.
    pub ifname: String,
}

/// Body of `POST /v1/endpoints/gc`: every endpoint not listed is removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRequest {
    /// The attachments to keep.
    pub valid_attachments: Vec<Attachment>,
}

/// Answer of `POST /v1/endpoints/gc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcResult {
    /// The endpoints removed (the caller deletes their host veths).
    pub removed: Vec<Endpoint>,
}

/// One name of the agent's FQDN cache (`ciliate fqdn cache list`): the addresses DNS answers
/// gave it, which `toFQDNs` rules allow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FqdnCacheEntry {
    /// Lower-case, with the trailing dot.
    pub name: String,
    /// The addresses, of every endpoint that asked.
    pub ips: Vec<Ipv4Addr>,
    /// Seconds until the last of them expires (with `--tofqdns-min-ttl` applied).
    pub ttl_left: u64,
    /// The TTL the last answer gave, in seconds.
    pub ttl: u32,
    /// The endpoints (ids) that learned the name.
    pub endpoints: Vec<u16>,
    /// Addresses past their expiry that stay because a connection to them is still open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zombies: Vec<Ipv4Addr>,
}

/// Answer of `DELETE /v1/fqdn/cache`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FqdnCacheCleaned {
    /// Names forgotten.
    pub names: usize,
    /// (endpoint, name, address) entries forgotten.
    pub entries: usize,
}

/// One connection-tracking entry, as `ciliate bpf ct list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CtEntry {
    /// "tcp", "udp", "icmp" or the protocol number.
    pub proto: String,
    /// Source address of the original direction.
    pub src: Ipv4Addr,
    /// Source port (ICMP: echo id).
    pub sport: u16,
    /// Destination address of the original direction.
    pub dst: Ipv4Addr,
    /// Destination port.
    pub dport: u16,
    /// "egress" (the endpoint opened it), "ingress" (opened towards the endpoint) or "service"
    /// (the endpoint's connection to a VIP, with the backend it was given).
    pub direction: String,
    /// Seconds until the entry expires (negative: expired, awaiting GC).
    pub expires_in: i64,
    /// Packets and bytes in the original direction.
    pub tx_packets: u64,
    /// Bytes in the original direction.
    pub tx_bytes: u64,
    /// Packets in the reply direction.
    pub rx_packets: u64,
    /// Bytes in the reply direction.
    pub rx_bytes: u64,
    /// TCP flags seen so far, by name.
    pub flags: Vec<String>,
    /// Security identity of the remote side when the entry was made.
    pub src_identity: u32,
}

/// One entry of the datapath's endpoint map, as read back from it (`GET /v1/bpf/endpoints`):
/// what `from_container`/`to_container` find by interface index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfEndpoint {
    /// Node-local endpoint id.
    pub id: u16,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Security identity.
    pub identity: u32,
    /// Host-side veth name.
    pub ifname: String,
    /// Host-side veth interface index.
    pub ifindex: u32,
    /// The pod interface's MAC.
    pub mac: MacAddr,
    /// The host-side veth's MAC.
    pub host_mac: MacAddr,
}

/// A node as this agent knows it (`GET /v1/nodes`): every registered node in a cluster, or
/// this node alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// The address other nodes tunnel to; `None` for a node on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ip: Option<Ipv4Addr>,
    /// The pod CIDR it hands addresses out of.
    pub pod_cidr: Ipv4Net,
    /// What the node reports of itself (`ok`, ...).
    pub health: String,
    /// Whether it is the node answering.
    pub local: bool,
}
