//! `ciliate-relay`: one Hubble observer API for the whole cluster, as `hubble-relay` is for
//! Cilium.
//!
//! The nodes come from [`discovery`] (a static `--peer` list and/or the node records in etcd,
//! watched); the [`pool`] keeps a connection to each and notices at once when one closes;
//! [`service`] answers Hubble's `observer.Observer` API over them, with GetFlows in
//! [`flows`]: the request goes to every node, the answers are merged in time order by the
//! reorder buffer of [`sort`] and cut to what was asked of the whole cluster. [`serve`] puts
//! it, with the gRPC health service, on the listen addresses; [`config`] parses the flags.

#![forbid(unsafe_code)]

pub mod config;
pub mod discovery;
pub mod flows;
pub mod pool;
pub mod serve;
pub mod service;
pub mod sort;
pub mod ui;

pub use config::{Args, Config};
pub use flows::MergeConfig;
pub use pool::{Pool, PoolConfig};
pub use service::RelayService;
