//! What can go wrong talking to the cluster state.

use std::time::Duration;

use ciliate_model::identity::{MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY};

/// Errors of [`crate::Kvstore`].
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The configuration cannot work; nothing was contacted.
    #[error("kvstore configuration: {0}")]
    Config(String),
    /// [`crate::Kvstore::connect`] could not reach etcd in time.
    #[error(
        "etcd at {endpoints} is unreachable (gave up after {timeout:?}): {reason}; \
         check that etcd runs and that this is its client URL"
    )]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// How long connecting was tried.
        timeout: Duration,
        /// The last failure.
        reason: String,
    },
    /// The connection to etcd is down right now. Changes to this node's own keys (node record,
    /// IPs, identity references) are kept and written when it is back.
    #[error("etcd is unreachable right now ({what}); the session reconnects on its own")]
    Disconnected {
        /// What was being done.
        what: String,
    },
    /// An etcd request failed.
    #[error("etcd {op}: {reason}")]
    Etcd {
        /// The request and its key, e.g. `put ciliate/state/nodes/v1/node-a`.
        op: String,
        /// What etcd or the transport said.
        reason: String,
    },
    /// An etcd request got no answer in time.
    #[error("etcd {op}: no answer within {timeout:?}")]
    Timeout {
        /// The request and its key.
        op: String,
        /// The request timeout in force.
        timeout: Duration,
    },
    /// A label set that cannot be written as a key and read back unchanged.
    #[error("label set {labels:?} cannot be stored in etcd: {reason}")]
    InvalidLabels {
        /// The label set as printed.
        labels: String,
        /// Why.
        reason: String,
    },
    /// A record that does not belong to this node.
    #[error("{0}")]
    InvalidRecord(String),
    /// Every cluster identity number is taken.
    #[error(
        "no free identity between {MIN_CLUSTER_IDENTITY} and {MAX_CLUSTER_IDENTITY}; \
         run identity garbage collection or remove unused label sets"
    )]
    IdentitiesExhausted,
    /// Other agents kept winning the race for this label set.
    #[error("allocating an identity for {labels:?} lost {attempts} races in a row; try again")]
    Contention {
        /// The label set.
        labels: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A record could not be encoded as JSON.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was encoded.
        what: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// [`crate::Kvstore::close`] was called on this store (or a clone of it).
    #[error("the kvstore was closed")]
    Closed,
}

impl KvError {
    /// An etcd failure of `op`.
    pub(crate) fn etcd(op: impl Into<String>, err: etcd_client::Error) -> Self {
        Self::Etcd {
            op: op.into(),
            reason: err.to_string(),
        }
    }
}
