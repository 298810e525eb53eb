//! The scenarios: a policy (or none) and the cells it decides, each a client, a target, a
//! protocol and the expected outcome. Pure data; the policies are the YAML files under
//! `examples/connectivity/`, embedded so that what runs is what users read.
//!
//! The workload they run against (namespace `ciliate-test`):
//!
//! | pod               | labels                                     | node   |
//! |-------------------|--------------------------------------------|--------|
//! | `client`          | `kind=client, name=client`                 | node 0 |
//! | `client2`         | `kind=client, name=client2, other=client`  | node 0 |
//! | `echo-same-node`  | `kind=echo, name=echo-same-node`           | node 0 |
//! | `echo-other-node` | `kind=echo, name=echo-other-node`          | node 1 |
//!
//! Each echo pod serves its name on 8080 (TCP and UDP) behind a Service of the same name, and
//! HTTP on 8090 (answering `<pod> <METHOD> <path>`) for the L7 scenarios; each
//! node's own namespace serves the node's name on 8081 ("host"); the underlay serves `world`
//! on 172.31.0.1:8080 and 172.31.0.2:8080. Cells that need a second node are left out on a
//! one-node lab.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::layout::{GATEWAY_IP, HOST_PORT, WORLD2_IP, WORLD_PORT};

/// The test's Kubernetes namespace.
pub const NAMESPACE: &str = "ciliate-test";
/// Where the echo pods listen (TCP and UDP).
pub const ECHO_PORT: u16 = 8080;
/// Where the echo pods serve HTTP/1.1 (the L7 scenarios).
pub const HTTP_PORT: u16 = 8090;

/// Who opens the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Pod `client` (node 0).
    Client,
    /// Pod `client2` (node 0).
    Client2,
    /// Pod `echo-same-node` (node 0), as a client.
    EchoSameNode,
    /// The underlay (172.31.0.1), outside the cluster.
    World,
}

impl Source {
    /// The pod's name; `None` for the world.
    pub fn pod(self) -> Option<&'static str> {
        match self {
            Self::Client => Some("client"),
            Self::Client2 => Some("client2"),
            Self::EchoSameNode => Some("echo-same-node"),
            Self::World => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.pod().unwrap_or("world"))
    }
}

/// Which echo pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Echo {
    /// `echo-same-node`, on the clients' node.
    SameNode,
    /// `echo-other-node`, on node 1.
    OtherNode,
}

impl Echo {
    /// The pod's (and its Service's) name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SameNode => "echo-same-node",
            Self::OtherNode => "echo-other-node",
        }
    }

    /// The node index it runs on.
    pub fn node(self) -> usize {
        match self {
            Self::SameNode => 0,
            Self::OtherNode => 1,
        }
    }

    /// Its Service's cluster IP.
    pub fn service_ip(self) -> Ipv4Addr {
        match self {
            Self::SameNode => Ipv4Addr::new(10, 96, 200, 10),
            Self::OtherNode => Ipv4Addr::new(10, 96, 200, 11),
        }
    }
}

/// What is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "of")]
pub enum Target {
    /// An echo pod, by its address.
    Pod(Echo),
    /// An echo pod's Service, by its cluster IP.
    Service(Echo),
    /// The node the source runs on, by its address.
    Host,
    /// Node 1, by its address.
    RemoteHost,
    /// 172.31.0.1.
    World,
    /// 172.31.0.2.
    World2,
    /// A name of the world's DNS server (`world.ciliate.test`): a DNS cell asks for it; a
    /// TCP cell resolves it in the pod (through the DNS proxy when a policy says so) and
    /// connects to the answer's first address.
    Name(&'static str),
}

impl Target {
    /// The port asked (TCP and UDP).
    pub fn port(self) -> u16 {
        match self {
            Self::Pod(_) | Self::Service(_) => ECHO_PORT,
            Self::Host | Self::RemoteHost => HOST_PORT,
            Self::World | Self::World2 | Self::Name(_) => WORLD_PORT,
        }
    }

    /// Its name in a cell.
    pub fn label(self) -> String {
        match self {
            Self::Pod(e) => e.name().to_owned(),
            Self::Service(e) => format!("svc/{}", e.name()),
            Self::Host => "host".to_owned(),
            Self::RemoteHost => "remote-host".to_owned(),
            Self::World => format!("world/{GATEWAY_IP}"),
            Self::World2 => format!("world/{WORLD2_IP}"),
            Self::Name(n) => n.to_owned(),
        }
    }

    /// Whether it needs a second node.
    pub fn remote(self) -> bool {
        matches!(
            self,
            Self::Pod(Echo::OtherNode) | Self::Service(Echo::OtherNode) | Self::RemoteHost
        )
    }
}

/// The protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    /// Connect, read the ident line.
    Tcp,
    /// Send a datagram, read the ident.
    Udp,
    /// `ping -c1`.
    Icmp,
    /// One HTTP/1.1 request on port [`HTTP_PORT`]: its status code and body.
    Http(Request),
    /// One DNS query (A) for a [`Target::Name`] to the world's DNS server, with `dig`.
    Dns,
}

/// The HTTP request of an L7 cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// `GET`, `POST`, `PUT`.
    pub method: &'static str,
    /// `/public`.
    pub path: &'static str,
    /// Whether it carries the header `X-Token: yes`.
    pub token: bool,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if self.token {
            f.write_str(" +X-Token")?;
        }
        Ok(())
    }
}

/// Which side's proxy holds the HTTP rule of an L7 cell, and so reports its L7 flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The server's (an ingress rule): its node's observer, direction INGRESS.
    Ingress,
    /// The client's (an egress rule): its node's observer, direction EGRESS.
    Egress,
}

impl Side {
    /// Hubble's name of the traffic direction.
    pub fn direction(self) -> &'static str {
        match self {
            Self::Ingress => "INGRESS",
            Self::Egress => "EGRESS",
        }
    }
}

/// What an L7 cell should get: a status code from the proxy (or the server behind it), and an
/// L7 flow with the matching verdict (200 FORWARDED, 403 DROPPED) from the rule's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HttpExpect {
    /// 200 or 403.
    pub status: u16,
    /// Whose proxy decides.
    pub side: Side,
}

impl HttpExpect {
    /// The verdict of the L7 request flow, as Hubble names it.
    pub fn verdict(self) -> &'static str {
        if self.status == 403 {
            "DROPPED"
        } else {
            "FORWARDED"
        }
    }
}

/// A drop reason a policy cell may expect, as the datapath and Hubble name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DropReason {
    /// 133: no rule allows it (default deny).
    PolicyDenied,
    /// 181: a deny rule matched.
    PolicyDeny,
}

impl DropReason {
    /// The datapath's code.
    pub fn code(self) -> u32 {
        match self {
            Self::PolicyDenied => 133,
            Self::PolicyDeny => 181,
        }
    }

    /// Hubble's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PolicyDenied => "POLICY_DENIED",
            Self::PolicyDeny => "POLICY_DENY",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

/// What a cell should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict", content = "reason")]
pub enum Expect {
    /// Answered.
    Pass,
    /// Dropped, with this reason seen in Hubble.
    Drop(DropReason),
    /// Passed through an L7 proxy: this status, and the L7 flow.
    Http(HttpExpect),
    /// A DNS query the DNS proxy refuses (REFUSED, and a dropped DNS flow).
    Refused,
    /// Dropped (133) once the answer that allowed the address has expired: the test waits
    /// until no node's FQDN cache holds the address (a connection still open keeps it), then
    /// probes once.
    Expired,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass => f.write_str("pass"),
            Self::Drop(r) => write!(f, "drop ({})", r.code()),
            Self::Http(h) => write!(f, "{} ({} {})", h.status, h.side.direction(), h.verdict()),
            Self::Refused => f.write_str("refused"),
            Self::Expired => f.write_str("drop (133) after its TTL"),
        }
    }
}

/// One cell of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Who asks.
    pub from: Source,
    /// What is asked.
    pub to: Target,
    /// How.
    pub proto: Proto,
    /// What should happen.
    pub expect: Expect,
}

impl Cell {
    /// `client → echo-other-node:8080/TCP`, `client → world/172.31.0.1 ICMP`.
    pub fn label(&self) -> String {
        match self.proto {
            Proto::Icmp => format!("{} → {} ICMP", self.from, self.to.label()),
            Proto::Http(r) => format!("{} → {}:{HTTP_PORT} {r}", self.from, self.to.label()),
            Proto::Dns => format!("{} → dns {}", self.from, self.to.label()),
            p => format!(
                "{} → {}:{}/{}",
                self.from,
                self.to.label(),
                self.to.port(),
                match p {
                    Proto::Udp => "UDP",
                    _ => "TCP",
                }
            ),
        }
    }

    /// Whether it needs a second node.
    pub fn remote(&self) -> bool {
        self.to.remote()
    }

    /// The port asked: the target's, [`HTTP_PORT`] for HTTP, 53 for DNS.
    pub fn port(&self) -> u16 {
        match self.proto {
            Proto::Http(_) => HTTP_PORT,
            Proto::Dns => 53,
            _ => self.to.port(),
        }
    }
}

/// A policy of a scenario: its file under `examples/connectivity/` and its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The file name.
    pub file: &'static str,
    /// The manifest.
    #[serde(skip)]
    pub yaml: &'static str,
}

/// A scenario: a policy in force (or none) and its cells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// Its name (also the policy's).
    pub name: &'static str,
    /// What it shows.
    pub description: &'static str,
    /// The policy, or none.
    pub policy: Option<Policy>,
    /// The cells.
    pub cells: Vec<Cell>,
}

impl Scenario {
    /// Whether the cells run one after the other, in order, with the nodes' FQDN caches
    /// emptied first: what a DNS cell teaches the datapath, the next cells rely on.
    pub fn ordered(&self) -> bool {
        self.cells
            .iter()
            .any(|c| c.proto == Proto::Dns || matches!(c.to, Target::Name(_)))
    }

    /// The cells a lab of `nodes` nodes can run.
    pub fn cells_for(&self, nodes: usize) -> Vec<Cell> {
        self.cells
            .iter()
            .copied()
            .filter(|c| nodes >= 2 || !c.remote())
            .collect()
    }
}

macro_rules! policy {
    ($file:literal) => {
        Some(Policy {
            file: $file,
            yaml: include_str!(concat!("../../../../examples/connectivity/", $file)),
        })
    };
}

use self::Echo::{OtherNode, SameNode};
use self::Proto::{Dns, Icmp, Tcp, Udp};
use self::Source::{Client, Client2, EchoSameNode, World};

const DENIED: Expect = Expect::Drop(DropReason::PolicyDenied);
const DENY: Expect = Expect::Drop(DropReason::PolicyDeny);
const PASS: Expect = Expect::Pass;
const REFUSED: Expect = Expect::Refused;
const EXPIRED: Expect = Expect::Expired;
const ECHO: Target = Target::Pod(SameNode);
const ECHO_OTHER: Target = Target::Pod(OtherNode);
const SVC: Target = Target::Service(SameNode);
const SVC_OTHER: Target = Target::Service(OtherNode);

const fn get(path: &'static str) -> Proto {
    Proto::Http(Request {
        method: "GET",
        path,
        token: false,
    })
}

const fn req(method: &'static str, token: bool) -> Proto {
    Proto::Http(Request {
        method,
        path: "/public",
        token,
    })
}

const fn http(status: u16, side: Side) -> Expect {
    Expect::Http(HttpExpect { status, side })
}

const fn name(n: &'static str) -> Target {
    Target::Name(n)
}

fn c(from: Source, to: Target, proto: Proto, expect: Expect) -> Cell {
    Cell {
        from,
        to,
        proto,
        expect,
    }
}

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    let client_ingress = |name, description, policy| Scenario {
        name,
        description,
        policy,
        cells: vec![
            c(Client, ECHO, Tcp, PASS),
            c(Client, ECHO, Udp, PASS),
            c(Client, ECHO, Icmp, PASS),
            c(Client2, ECHO, Tcp, PASS),
            c(Client, SVC, Tcp, PASS),
            c(World, ECHO, Tcp, DENIED),
            c(Client, ECHO_OTHER, Tcp, PASS),
            c(Client, SVC_OTHER, Tcp, PASS),
            c(EchoSameNode, ECHO_OTHER, Tcp, DENIED),
            c(Client, Target::World, Tcp, PASS),
        ],
    };
    let all_ingress_deny = |name, description, policy| Scenario {
        name,
        description,
        policy,
        cells: vec![
            c(Client, ECHO, Tcp, DENIED),
            c(Client, ECHO, Udp, DENIED),
            c(Client, ECHO, Icmp, DENIED),
            c(Client, SVC, Tcp, DENIED),
            c(World, ECHO, Tcp, DENIED),
            c(Client, ECHO_OTHER, Tcp, DENIED),
            c(Client, Target::Host, Tcp, PASS),
            c(Client, Target::World, Tcp, PASS),
        ],
    };
    let all_egress_deny = |name, description, policy| Scenario {
        name,
        description,
        policy,
        cells: vec![
            c(Client, ECHO, Tcp, DENIED),
            c(Client, ECHO, Icmp, DENIED),
            c(Client, SVC, Tcp, DENIED),
            c(Client, Target::Host, Tcp, DENIED),
            c(Client, Target::World, Tcp, DENIED),
            c(Client, Target::World, Icmp, DENIED),
            c(Client, ECHO_OTHER, Tcp, DENIED),
            c(World, ECHO, Tcp, PASS),
        ],
    };
    let echo_ingress = |name, description, policy| Scenario {
        name,
        description,
        policy,
        cells: vec![
            c(Client, ECHO, Tcp, PASS),
            c(Client, ECHO, Udp, DENIED),
            c(Client, ECHO, Icmp, DENIED),
            c(Client2, ECHO, Tcp, PASS),
            c(Client, SVC, Tcp, PASS),
            c(World, ECHO, Tcp, DENIED),
            c(Client, ECHO_OTHER, Tcp, PASS),
            c(Client, SVC_OTHER, Tcp, PASS),
            c(Client, ECHO_OTHER, Udp, DENIED),
        ],
    };
    let client_egress = |name, description, policy| Scenario {
        name,
        description,
        policy,
        cells: vec![
            c(Client, ECHO, Tcp, PASS),
            c(Client, ECHO, Udp, DENIED),
            c(Client, ECHO, Icmp, DENIED),
            c(Client2, ECHO, Tcp, PASS),
            c(Client, SVC, Tcp, PASS),
            c(Client, Target::Host, Tcp, DENIED),
            c(Client, Target::World, Tcp, DENIED),
            c(Client, ECHO_OTHER, Tcp, PASS),
            c(Client, SVC_OTHER, Tcp, PASS),
        ],
    };
    let client_egress_expression = |name, description, policy| Scenario {
        name,
        description,
        policy,
        cells: vec![
            c(Client, ECHO, Tcp, PASS),
            c(Client, ECHO, Udp, DENIED),
            c(Client, Target::World, Tcp, DENIED),
            c(Client2, Target::World, Tcp, PASS),
            c(Client2, ECHO, Udp, PASS),
            c(Client, ECHO_OTHER, Tcp, PASS),
        ],
    };
    let to_cidr_except = |name, description, policy| Scenario {
        name,
        description,
        policy,
        cells: vec![
            c(Client, Target::World2, Tcp, PASS),
            c(Client, Target::World, Tcp, DENIED),
            c(Client2, Target::World, Tcp, DENIED),
            c(Client, ECHO, Tcp, DENIED),
            c(Client, Target::Host, Tcp, DENIED),
        ],
    };
    vec![
        Scenario {
            name: "no-policies",
            description: "no policy: everything is reachable, pods, Services, nodes and the world",
            policy: None,
            cells: vec![
                c(Client, ECHO, Tcp, PASS),
                c(Client, ECHO, Udp, PASS),
                c(Client, ECHO, Icmp, PASS),
                c(Client2, ECHO, Tcp, PASS),
                c(Client, SVC, Tcp, PASS),
                c(Client, Target::Host, Tcp, PASS),
                c(Client, Target::Host, Icmp, PASS),
                c(Client, Target::World, Tcp, PASS),
                c(Client, Target::World, Udp, PASS),
                c(Client, Target::World, Icmp, PASS),
                c(Client, Target::World2, Tcp, PASS),
                c(World, ECHO, Tcp, PASS),
                c(Client, ECHO_OTHER, Tcp, PASS),
                c(Client, ECHO_OTHER, Udp, PASS),
                c(Client, ECHO_OTHER, Icmp, PASS),
                c(Client, SVC_OTHER, Tcp, PASS),
                c(Client, Target::RemoteHost, Tcp, PASS),
                c(EchoSameNode, ECHO_OTHER, Tcp, PASS),
            ],
        },
        client_ingress(
            "client-ingress",
            "echo accepts the clients only (CiliumNetworkPolicy, fromEndpoints)",
            policy!("client-ingress.yaml"),
        ),
        client_ingress(
            "client-ingress-knp",
            "echo accepts the clients only (NetworkPolicy, podSelector)",
            policy!("client-ingress-knp.yaml"),
        ),
        all_ingress_deny(
            "all-ingress-deny",
            "nothing gets into the namespace (CiliumNetworkPolicy, empty ingress rule)",
            policy!("all-ingress-deny.yaml"),
        ),
        all_ingress_deny(
            "all-ingress-deny-knp",
            "nothing gets into the namespace (NetworkPolicy, default deny ingress)",
            policy!("all-ingress-deny-knp.yaml"),
        ),
        all_egress_deny(
            "all-egress-deny",
            "nothing leaves the namespace (CiliumNetworkPolicy, empty egress rule)",
            policy!("all-egress-deny.yaml"),
        ),
        all_egress_deny(
            "all-egress-deny-knp",
            "nothing leaves the namespace (NetworkPolicy, default deny egress)",
            policy!("all-egress-deny-knp.yaml"),
        ),
        echo_ingress(
            "echo-ingress",
            "echo accepts the clients on 8080/TCP only (CiliumNetworkPolicy, toPorts)",
            policy!("echo-ingress.yaml"),
        ),
        echo_ingress(
            "echo-ingress-knp",
            "echo accepts the clients on 8080/TCP only (NetworkPolicy, ports)",
            policy!("echo-ingress-knp.yaml"),
        ),
        client_egress(
            "client-egress",
            "the clients reach echo on 8080/TCP only (CiliumNetworkPolicy, matchLabels)",
            policy!("client-egress.yaml"),
        ),
        client_egress(
            "client-egress-knp",
            "the clients reach echo on 8080/TCP only (NetworkPolicy, matchLabels)",
            policy!("client-egress-knp.yaml"),
        ),
        client_egress_expression(
            "client-egress-expression",
            "client (not client2) reaches echo on 8080/TCP only (CiliumNetworkPolicy, matchExpressions)",
            policy!("client-egress-expression.yaml"),
        ),
        client_egress_expression(
            "client-egress-expression-knp",
            "client (not client2) reaches echo on 8080/TCP only (NetworkPolicy, matchExpressions)",
            policy!("client-egress-expression-knp.yaml"),
        ),
        Scenario {
            name: "allow-all-except-world",
            description: "the cluster but not the world, both ways (CiliumNetworkPolicy, entities)",
            policy: policy!("allow-all-except-world.yaml"),
            cells: vec![
                c(Client, ECHO, Tcp, PASS),
                c(Client, ECHO, Icmp, PASS),
                c(Client, SVC, Tcp, PASS),
                c(Client, Target::Host, Tcp, PASS),
                c(Client, Target::World, Tcp, DENIED),
                c(Client, Target::World, Icmp, DENIED),
                c(World, ECHO, Tcp, DENIED),
                c(Client, ECHO_OTHER, Tcp, PASS),
                c(Client, SVC_OTHER, Tcp, PASS),
            ],
        },
        Scenario {
            name: "ingress-deny-wins",
            description: "echo allows all but denies client2: deny wins (ingressDeny, 181)",
            policy: policy!("ingress-deny-wins.yaml"),
            cells: vec![
                c(Client, ECHO, Tcp, PASS),
                c(Client2, ECHO, Tcp, DENY),
                c(Client2, ECHO, Icmp, DENY),
                c(World, ECHO, Tcp, PASS),
                c(Client2, ECHO_OTHER, Tcp, DENY),
                c(Client, ECHO_OTHER, Tcp, PASS),
            ],
        },
        Scenario {
            name: "egress-deny-wins",
            description: "the clients may reach all but echo on 8080/TCP: deny wins (egressDeny, 181)",
            policy: policy!("egress-deny-wins.yaml"),
            cells: vec![
                c(Client, ECHO, Tcp, DENY),
                c(Client2, ECHO, Tcp, DENY),
                c(Client, SVC, Tcp, DENY),
                c(Client, ECHO, Udp, PASS),
                c(Client, ECHO, Icmp, PASS),
                c(Client, Target::World, Tcp, PASS),
                c(Client, ECHO_OTHER, Tcp, DENY),
            ],
        },
        to_cidr_except(
            "to-cidr-except",
            "the clients reach 172.31.0.0/24 except 172.31.0.1 (CiliumNetworkPolicy, toCIDRSet)",
            policy!("to-cidr-except.yaml"),
        ),
        to_cidr_except(
            "to-cidr-except-knp",
            "the clients reach 172.31.0.0/24 except 172.31.0.1 (NetworkPolicy, ipBlock)",
            policy!("to-cidr-except-knp.yaml"),
        ),
        Scenario {
            name: "l7-ingress",
            description: "echo's proxy lets the clients GET /public and PUT with X-Token: yes on \
                          8090, answers 403 to the rest (CiliumNetworkPolicy, rules.http on ingress)",
            policy: policy!("l7-ingress.yaml"),
            cells: vec![
                c(Client, ECHO, get("/public"), http(200, Side::Ingress)),
                c(Client, ECHO, get("/private"), http(403, Side::Ingress)),
                c(Client, ECHO, req("POST", false), http(403, Side::Ingress)),
                c(Client, ECHO, req("PUT", false), http(403, Side::Ingress)),
                c(Client, ECHO, req("PUT", true), http(200, Side::Ingress)),
                c(Client2, ECHO, get("/public"), http(200, Side::Ingress)),
                c(World, ECHO, get("/public"), DENIED),
                c(Client, ECHO_OTHER, get("/public"), http(200, Side::Ingress)),
                c(Client, ECHO_OTHER, get("/private"), http(403, Side::Ingress)),
                c(Client, ECHO_OTHER, req("PUT", true), http(200, Side::Ingress)),
                c(Client, ECHO_OTHER, req("PUT", false), http(403, Side::Ingress)),
            ],
        },
        Scenario {
            name: "l7-egress",
            description: "client's proxy lets it GET /public from echo on 8090 and nothing else; \
                          client2 has no rule (CiliumNetworkPolicy, rules.http on egress)",
            policy: policy!("l7-egress.yaml"),
            cells: vec![
                c(Client, ECHO, get("/public"), http(200, Side::Egress)),
                c(Client, ECHO, get("/private"), http(403, Side::Egress)),
                c(Client, ECHO, req("POST", false), http(403, Side::Egress)),
                c(Client, ECHO, Tcp, DENIED),
                c(Client2, ECHO, get("/private"), PASS),
                c(Client, ECHO_OTHER, get("/public"), http(200, Side::Egress)),
                c(Client, ECHO_OTHER, get("/private"), http(403, Side::Egress)),
            ],
        },
        Scenario {
            name: "client-ingress-icmp",
            description: "echo answers the clients' pings and nothing else (CiliumNetworkPolicy, icmps)",
            policy: policy!("client-ingress-icmp.yaml"),
            cells: vec![
                c(Client, ECHO, Icmp, PASS),
                c(Client, ECHO, Tcp, DENIED),
                c(World, ECHO, Tcp, DENIED),
                c(Client, ECHO_OTHER, Icmp, PASS),
                c(Client, ECHO_OTHER, Tcp, DENIED),
            ],
        },
        Scenario {
            name: "fqdn",
            description: "the clients may ask the world's DNS server for world.ciliate.test and \
                          *.s3.ciliate.test only (the DNS proxy refuses other names) and reach \
                          what those names resolved to on 8080, nothing else \
                          (CiliumNetworkPolicy, rules.dns and toFQDNs)",
            policy: policy!("fqdn.yaml"),
            cells: vec![
                // Before any answer, the address is nobody's.
                c(Client2, Target::World, Tcp, DENIED),
                c(Client, name("world.ciliate.test"), Dns, PASS),
                c(Client, name("world2.ciliate.test"), Dns, REFUSED),
                c(Client, name("world.ciliate.test"), Tcp, PASS),
                c(Client, name("api.s3.ciliate.test"), Tcp, PASS),
            ],
        },
        Scenario {
            name: "fqdn-learned",
            description: "client reaches world2.ciliate.test's address without asking once \
                          client2 (under the same policy) has; a name not in toFQDNs stays \
                          dropped though its answer was allowed (CiliumNetworkPolicy, toFQDNs)",
            policy: policy!("fqdn-learned.yaml"),
            cells: vec![
                c(Client, Target::World2, Udp, DENIED),
                c(Client2, name("world2.ciliate.test"), Dns, PASS),
                c(Client, Target::World2, Tcp, PASS),
                c(Client, name("world.ciliate.test"), Dns, PASS),
                c(Client, Target::World, Tcp, DENIED),
            ],
        },
        Scenario {
            name: "fqdn-ttl",
            description: "short.ciliate.test answers with a TTL of 2 s: its address is allowed \
                          after the answer and dropped again once the TTL ran out and no \
                          connection holds it (CiliumNetworkPolicy, toFQDNs; the lab's agents \
                          run with --tofqdns-min-ttl 0)",
            policy: policy!("fqdn-ttl.yaml"),
            cells: vec![
                c(Client, name("short.ciliate.test"), Tcp, PASS),
                c(Client, Target::World2, Tcp, EXPIRED),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_and_match_their_policies() {
        let all = all();
        let names: BTreeSet<&str> = all.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), all.len());
        for s in &all {
            if let Some(p) = s.policy {
                assert_eq!(p.file, format!("{}.yaml", s.name), "{}", s.name);
                let refs = crate::lab::policy_refs(p.file, p.yaml).expect("policy refs");
                assert_eq!(refs.len(), 1, "{}", s.name);
                let r = refs.first().expect("one");
                assert_eq!(r.name, s.name);
                assert_eq!(r.namespace.as_deref(), Some(NAMESPACE), "{}", s.name);
            }
            assert!(
                !s.cells_for(1).is_empty(),
                "{} has no one-node cell",
                s.name
            );
        }
    }

    /// Every policy parses with the real loader, without warnings (everything in it is
    /// enforced), and compiles in the engine against the test's identities.
    #[test]
    fn every_policy_loads_and_compiles() {
        use ciliate_policy::{Config, PolicyEngine};
        for s in all() {
            let Some(p) = s.policy else { continue };
            let loaded = ciliate_policy::load(p.file, p.yaml)
                .unwrap_or_else(|e| panic!("{}: {e:?}", p.file));
            assert!(
                loaded.warnings.is_empty(),
                "{}: {:?}",
                p.file,
                loaded.warnings
            );
            let mut engine = PolicyEngine::new(Config::default());
            for lp in loaded.policies {
                engine
                    .upsert(lp.resource)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", p.file));
            }
        }
    }

    /// The expected outcome of every cell is the policy engine's verdict for it (the engine
    /// the agents run), with identities as the overlay carries them between nodes: the tables
    /// are not wishful thinking, and the datapath is what the lab puts on trial.
    #[test]
    fn expectations_agree_with_the_policy_engine() {
        use ciliate_model::identity::ReservedIdentity;
        use ciliate_model::labels::Labels;
        use ciliate_policy::{IdentityLabels, NamedPorts, PolicyEngine};

        let labels = |extra: &str| {
            Labels::parse_list(
                &format!("k8s:io.kubernetes.pod.namespace={NAMESPACE},{extra}"),
                "k8s",
            )
            .expect("labels")
        };
        let ids: IdentityLabels = [
            (256, labels("kind=client,name=client")),
            (257, labels("kind=client,name=client2,other=client")),
            (258, labels("kind=echo,name=echo-same-node")),
            (259, labels("kind=echo,name=echo-other-node")),
        ]
        .into();
        let echo_id = |e: Echo| match e {
            SameNode => 258,
            OtherNode => 259,
        };
        for s in all() {
            let mut engine = PolicyEngine::default();
            if let Some(p) = s.policy {
                for lp in ciliate_policy::load(p.file, p.yaml)
                    .expect("loads")
                    .policies
                {
                    engine.upsert(lp.resource).expect("compiles");
                }
            }
            // An FQDN scenario's verdicts depend on what its DNS cells teach the agents, in
            // order; the lab checks those (cells_are_well_formed checks their shape).
            if s.ordered() {
                continue;
            }
            let ports = NamedPorts::new();
            let r = engine.resolve(&ids, &ports);
            let cidr = |ip: Ipv4Addr| r.cidr_identity_of(ip.into());
            for cell in &s.cells {
                let src = match cell.from {
                    Client => 256,
                    Client2 => 257,
                    EchoSameNode => 258,
                    World => cidr(GATEWAY_IP),
                };
                let dst = match cell.to {
                    Target::Pod(e) | Target::Service(e) => echo_id(e),
                    Target::Host => ReservedIdentity::Host.id(),
                    Target::RemoteHost => ReservedIdentity::RemoteNode.id(),
                    Target::World => cidr(GATEWAY_IP),
                    Target::World2 => cidr(WORLD2_IP),
                    Target::Name(n) => panic!("{}: {n} outside an FQDN scenario", s.name),
                };
                let (proto, dport) = match cell.proto {
                    Tcp | Proto::Http(_) => (6, cell.port()),
                    Udp => (17, cell.to.port()),
                    Icmp => (1, 8),
                    Dns => (17, 53),
                };
                let v = r.explain(src, dst, proto, dport);
                let got = match v.drop_reason() {
                    None if v.allowed => Expect::Pass,
                    Some(133) => DENIED,
                    Some(181) => DENY,
                    other => panic!("{}: {}: drop reason {other:?}", s.name, cell.label()),
                };
                // An L7 cell is allowed at L4; its proxy decides the rest.
                let want = match cell.expect {
                    Expect::Http(_) => Expect::Pass,
                    e => e,
                };
                assert_eq!(got, want, "{}: {}: {v:#?}", s.name, cell.label());
            }
        }
    }

    /// The tables make sense: the world only asks pods, Services are TCP only, no cell is
    /// there twice, and every expected drop names a policy reason.
    #[test]
    fn cells_are_well_formed() {
        for s in all() {
            let mut seen = BTreeSet::new();
            for cell in &s.cells {
                assert!(
                    seen.insert(cell.label()),
                    "{}: {} twice",
                    s.name,
                    cell.label()
                );
                if cell.from == Source::World {
                    assert!(
                        matches!(cell.to, Target::Pod(_)),
                        "{}: {}",
                        s.name,
                        cell.label()
                    );
                }
                if matches!(cell.to, Target::Service(_)) {
                    assert_eq!(cell.proto, Proto::Tcp, "{}: {}", s.name, cell.label());
                }
                if s.policy.is_none() {
                    assert_eq!(cell.expect, Expect::Pass, "{}", cell.label());
                }
                // An HTTP status is only expected of an HTTP request to a pod.
                if let Expect::Http(h) = cell.expect {
                    assert!(
                        matches!(cell.proto, Proto::Http(_)) && matches!(cell.to, Target::Pod(_)),
                        "{}: {}",
                        s.name,
                        cell.label()
                    );
                    assert!(matches!(h.status, 200 | 403), "{}", cell.label());
                }
                // DNS asks for a name of the world's server; a name is asked by DNS, or
                // resolved and connected to over TCP where an answer allows it.
                if cell.proto == Dns {
                    assert!(matches!(cell.to, Target::Name(_)), "{}", cell.label());
                    assert!(
                        matches!(cell.expect, Expect::Pass | Expect::Refused),
                        "{}",
                        cell.label()
                    );
                }
                if let Target::Name(n) = cell.to {
                    assert!(
                        !crate::world_dns::resolve(n).is_empty(),
                        "{}: the world's DNS server does not know {n}",
                        s.name
                    );
                    if cell.proto != Dns {
                        assert_eq!(
                            (cell.proto, cell.expect),
                            (Tcp, PASS),
                            "{}: {}",
                            s.name,
                            cell.label()
                        );
                    }
                }
                if cell.expect == Expect::Refused {
                    assert_eq!(cell.proto, Dns, "{}", cell.label());
                }
                if cell.expect == Expect::Expired {
                    assert!(s.ordered(), "{}: {}", s.name, cell.label());
                    assert!(
                        matches!(cell.to, Target::World | Target::World2),
                        "{}",
                        cell.label()
                    );
                }
            }
        }
    }

    #[test]
    fn labels_read_like_cilium() {
        assert_eq!(
            c(Client, ECHO_OTHER, Tcp, PASS).label(),
            "client → echo-other-node:8080/TCP"
        );
        assert_eq!(
            c(Client, Target::World, Icmp, PASS).label(),
            "client → world/172.31.0.1 ICMP"
        );
        assert_eq!(
            c(Client2, SVC, Tcp, PASS).label(),
            "client2 → svc/echo-same-node:8080/TCP"
        );
        assert_eq!(
            c(Client, Target::Host, Udp, PASS).label(),
            "client → host:8081/UDP"
        );
        assert_eq!(DENY.to_string(), "drop (181)");
        assert_eq!(
            c(
                Client,
                ECHO_OTHER,
                req("PUT", true),
                http(200, Side::Ingress)
            )
            .label(),
            "client → echo-other-node:8090 PUT /public +X-Token"
        );
        assert_eq!(http(403, Side::Egress).to_string(), "403 (EGRESS DROPPED)");
        assert_eq!(DropReason::PolicyDenied.to_string(), "133 POLICY_DENIED");
        assert_eq!(
            c(Client, name("world.ciliate.test"), Dns, REFUSED).label(),
            "client → dns world.ciliate.test"
        );
        assert_eq!(
            c(Client, name("world.ciliate.test"), Tcp, PASS).label(),
            "client → world.ciliate.test:8080/TCP"
        );
    }

    #[test]
    fn one_node_labs_skip_remote_cells() {
        let no = &all()[0];
        assert!(no.cells_for(1).iter().all(|c| !c.remote()));
        assert!(no.cells_for(2).len() > no.cells_for(1).len());
    }
}
