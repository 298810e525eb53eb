//! Ciliate's policy engine. Pure: no I/O, no async, no kernel.
//!
//! * [`load()`] reads manifests (multi-document YAML or JSON) into policy resources, checking
//!   every field; [`check`] checks one resource that came some other way.
//! * [`PolicyEngine`] holds the policies in force; [`PolicyEngine::resolve`] resolves them
//!   against the identities that exist into a [`Resolved`] view, which computes each endpoint
//!   identity's [`EndpointPolicy`](ciliate_model::policy::EndpointPolicy) (the policy map
//!   entries), the CIDR identities and their ipcache entries, and explains any flow
//!   ([`Resolved::explain`]).
//!
//! Allow rules with HTTP rules (`toPorts[].rules.http`) send their ports through the node's
//! proxy: their entries carry the proxy's port, and [`EndpointResult::redirects`] lists, per
//! port, the rules the proxy applies ([`l7`] checks, converts and matches them).
//!
//! The engine's entries ([`ciliate_model::policy::entries`]) carry the rules they came from;
//! [`map`] turns them into the datapath's map types ([`ciliate_model::bpf_policy`]) and mirrors
//! the BPF lookup over those, so that the maps can be checked against the explanations.

#![forbid(unsafe_code)]

pub mod cidr;
mod compile;
mod engine;
pub mod explain;
pub mod l7;
pub mod load;
pub mod map;
mod names;
mod problems;
pub mod selector;

pub use compile::check;
pub use engine::{
    is_endpoint_identity, stable_rule_number, Config, EndpointResult, IdentityLabels, NamedPorts,
    PolicyEngine, Resolved,
};
pub use explain::{DirectionVerdict, Reason, Verdict};
pub use load::{load, load_documents, Loaded, LoadedPolicy};
pub use problems::{Problem, Problems};
