//! Ciliate's vocabulary, shared by the agent, the CNI plugin, the CLI and the datapath.
//!
//! Everything here is plain data: no I/O, no async, no kernel. The API between
//! the agent and its clients is made of these types, serialised as JSON.

#![forbid(unsafe_code)]

pub mod api;
pub mod bpf_policy;
pub mod endpoint;
pub mod fqdn;
pub mod identity;
pub mod k8s;
pub mod kafka;
pub mod l7;
pub mod l7_wire;
pub mod labels;
pub mod lb;
pub mod lb_diff;
pub mod manifest;
pub mod monitor;
pub mod policy;
pub mod policy_api;
pub mod service;
pub mod small_string;
pub mod whatif;

pub use endpoint::{Endpoint, EndpointState, MacAddr, NamedPort, PodRef};
pub use identity::{Identity, NumericIdentity, ReservedIdentity};
pub use labels::{Label, LabelError, Labels};
