//! Network policy, as users write it and as the datapath holds it.
//!
//! * [`k8s`]: `networking.k8s.io/v1` `NetworkPolicy`.
//! * [`cilium`]: `cilium.io/v2` `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy`.
//! * [`selector`]: the label selectors both use.
//! * [`resource`]: one type for any of the three, and the names that point into them
//!   ([`PolicyRef`], [`RuleRef`]) which verdicts, map entries and the CLI share.
//! * [`entries`]: what `crates/policy` computes from them and the datapath writes into its maps:
//!   per-endpoint policy entries and CIDR identities for the ipcache.
//!
//! These types hold what was written, field for field, so that a manifest read and written back
//! is unchanged; `crates/policy` decodes documents into them, checks their values and gives them
//! meaning. Unknown fields are rejected, as the API server's schema validation rejects them.

pub mod cilium;
pub mod entries;
pub mod k8s;
pub mod meta;
pub mod resource;
pub mod selector;

pub use cilium::CiliumNetworkPolicy;
pub use entries::{
    Direction, EndpointPolicy, EntrySource, IpcacheEntry, PolicyEntry, PolicyKey, PROTO_ANY,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
pub use k8s::NetworkPolicy;
pub use meta::{IntOrString, ObjectMeta};
pub use resource::{PolicyKind, PolicyRef, PolicyResource, RuleRef, RuleSection};
pub use selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
