//! Ciliate's cluster state in etcd.
//!
//! Every node's agent holds one [`Kvstore`]: it registers the node, allocates security
//! identities cluster-wide, publishes its endpoints' IP → identity, and reads everything the
//! other nodes published from one [`ClusterView`] kept current by list+watch.
//!
//! # Key layout
//!
//! All keys live under `<prefix>/state/` (`prefix` defaults to `ciliate`). `<L>` is a label
//! set in its canonical form (`source:key=value` sorted and comma-separated, as
//! [`ciliate_model::labels::Labels`] prints it, e.g. `k8s:app=web,k8s:tier=front`).
//!
//! | key | value | lease |
//! | --- | --- | --- |
//! | `<prefix>/state/nodes/v1/<node>` | JSON [`NodeRecord`] (camelCase) | the node's |
//! | `<prefix>/state/identities/v1/id/<number>` | `<L>` | none |
//! | `<prefix>/state/identities/v1/labels/<L>` | `<number>` (master key of the label set) | none |
//! | `<prefix>/state/identities/v1/refs/<L>/<node>` | `<number>` (one node's reference) | the node's |
//! | `<prefix>/state/ip/v1/default/<ip>` | JSON [`IpEntry`] (camelCase) | the node's |
//!
//! Node names may not hold `/`; label sets may, so a reference key's node is its last segment.
//!
//! # Identities
//!
//! Numbers are taken from `MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY` in etcd
//! transactions: a new label set gets the lowest free number above a random start, created
//! only if neither its `id/` nor its `labels/` key exists yet; an existing one gets a
//! reference only if its `labels/` key still holds the number, and that reference rewrites
//! the `labels/` key. [`Kvstore::gc_identities`] deletes a label set with no references only
//! if its `labels/` key was not rewritten since the snapshot that showed none, so it never
//! frees a number someone is taking. Numbers are not leased: a dead node's references expire,
//! the numbers stay until collected.
//!
//! # Liveness and resync
//!
//! Each store has one lease (TTL [`KvstoreConfig::lease_ttl`], kept alive every third of it);
//! a node that dies loses its node key, references and IPs when the lease expires, and one that
//! [`Kvstore::close`]s loses them at once. The store keeps what this node owns in memory. When
//! etcd goes away the view keeps its content with `connected = false`; when it is back the
//! session takes a new lease if the old one expired, relists (the view is replaced by the
//! fresh listing), writes back whatever of this node's keys is missing, and watches again.

mod config;
mod connection;
mod error;
mod identity;
mod keys;
mod owned;
mod records;
mod session;
mod store;
mod view;

pub use config::KvstoreConfig;
pub use error::KvError;
pub use records::{IpEntry, NodeRecord};
pub use store::Kvstore;
pub use view::ClusterView;
