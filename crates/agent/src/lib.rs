//! The Ciliate agent: the per-node daemon.
//!
//! It owns the node's pod CIDR and hands out addresses ([`ipam`]), allocates numeric security
//! identities per distinct label set ([`identity`]), keeps the endpoint table and programs the
//! datapath through the [`Datapath`](ciliate_datapath::Datapath) trait ([`endpoints`]), persists
//! all of it ([`state`]) and serves the JSON API documented in [`ciliate_model::api`] on a unix
//! socket ([`api`], [`server`]). Conntrack garbage collection runs in the background ([`gc`]),
//! and so does the endpoint watch ([`endpoints_watch`]): pods whose veth vanished are removed,
//! datapaths changed behind the agent's back repaired.
//! Services (Kubernetes Service and EndpointSlice objects from the API and a manifest
//! directory) are kept and turned into the datapath's load-balancing state by [`services`];
//! network policies (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, from
//! the same sources, dispatched by [`manifests`]) are put in force on every endpoint by
//! [`policy`]. In Kubernetes mode ([`kubernetes`]) endpoints take their labels and named ports
//! from their Pod objects ([`pods`]), and follow them when they change.
//!
//! The binary (`main.rs`) only parses the configuration ([`config`]), sets up logging
//! ([`logging`]) and signal handling, and calls [`server::run`].

// Denied, not forbidden: one call into the C allocator ([`heap`]) allows it, with its reason.
#![deny(unsafe_code)]

pub mod api;
pub mod cluster;
pub mod cni_install;
pub mod config;
pub mod endpoints;
pub mod endpoints_watch;
pub mod fqdn;
pub mod gc;
pub mod heap;
pub mod identity;
pub mod ipam;
pub mod kubernetes;
pub mod l7;
pub mod logging;
pub mod manifests;
pub mod metrics;
pub mod observer;
pub mod pods;
pub mod policy;
pub mod proxy;
pub mod proxy_flows;
pub mod server;
pub mod services;
pub mod state;

pub use config::Config;
pub use endpoints::EndpointManager;
