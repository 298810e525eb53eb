//! Flows for Ciliate, the way Hubble shows them.
//!
//! The datapath's events ([`EventRecord`](ciliate_model::monitor::EventRecord)s, numbers only)
//! are named with pod names, labels and Services from a [`Store`] the agent implements
//! ([`store`]) when they arrive and kept so in a ring of the last N ([`record`], [`ring`]), fed
//! through a queue that absorbs bursts ([`intake`]); the Hubble [`Flow`](proto::flow::Flow)
//! is built from a record only when a client reads it ([`convert`]). The node's L7 proxy's
//! HTTP, DNS and Kafka records become Hubble L7 flows in the same ring ([`l7`], [`dns`],
//! [`kafka`]; [`Observer::observe_http`], [`Observer::observe_dns`],
//! [`Observer::observe_kafka`]). Verdicts name the policy that decided them
//! ([`policy_names`]). [`filter`] implements
//! Hubble's FlowFilter semantics, [`server`] serves Hubble's
//! `observer.Observer` gRPC API (wire-compatible: Hubble's own clients read it), [`metrics`]
//! counts flows under Hubble's metric names, and [`print`](mod@print) renders flows the way
//! `hubble observe` does, for `ciliate observe`.
//!
//! Everything but [`server`] is synchronous and pure enough to test without a runtime.

#![forbid(unsafe_code)]

pub mod authority;
pub mod background;
pub mod client;
pub mod convert;
pub mod dns;
mod dns_metrics;
pub mod export;
pub mod export_otlp;
pub mod fieldmask;
pub mod filter;
pub mod filter_builder;
pub mod history;
mod http_metrics;
pub mod intake;
pub mod kafka;
mod kafka_metrics;
pub mod l7;
pub mod l7_entry;
pub mod metrics;
pub mod policy_names;
pub mod print;
pub mod proto;
pub mod protojson;
pub mod record;
pub mod ring;
pub mod server;
pub mod store;

pub use ring::{Observer, ObserverConfig};
pub use store::{EndpointInfo, ServiceRef, Snapshot, Store};

/// Where the agent serves the observer API by default, as Hubble's `unix:///var/run/cilium/hubble.sock`.
pub const DEFAULT_SOCKET: &str = "/var/run/ciliate/hubble.sock";

/// The cluster name flows carry when none is configured (Cilium's `--cluster-name` default);
/// node names are `<cluster>/<node>`.
pub const DEFAULT_CLUSTER_NAME: &str = "default";

/// Default capacity of the flow ring (Hubble's default `--hubble-event-buffer-capacity`).
pub const DEFAULT_RING_CAPACITY: usize = 4095;

/// Default port of the metrics endpoint (Hubble's `--hubble-metrics-server :9965`).
pub const DEFAULT_METRICS_PORT: u16 = 9965;
