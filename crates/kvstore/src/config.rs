//! How a node reaches the cluster state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::KvError;

/// Where etcd is and who this node is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvstoreConfig {
    /// etcd client URLs, e.g. `http://10.0.0.1:2379` (plain HTTP; a bare `host:port` works too).
    pub endpoints: Vec<String>,
    /// This node's name: the last segment of its node key and of its identity references.
    pub node_name: String,
    /// Lifetime of this node's lease: how long its keys outlive it when it dies. Default 15 s.
    pub lease_ttl: Duration,
    /// First segment of every key. Default `ciliate`.
    pub prefix: String,
    /// How long [`crate::Kvstore::connect`] tries before giving up. Default 5 s.
    pub connect_timeout: Duration,
    /// Bound on each etcd request. Default 5 s.
    pub request_timeout: Duration,
}

impl KvstoreConfig {
    /// The defaults for a node named `node_name` talking to `endpoints`.
    pub fn new(endpoints: Vec<String>, node_name: impl Into<String>) -> Self {
        Self {
            endpoints,
            node_name: node_name.into(),
            lease_ttl: Duration::from_secs(15),
            prefix: "ciliate".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Checks what can be checked without talking to etcd.
    pub fn validate(&self) -> Result<(), KvError> {
        let bad = |why: String| Err(KvError::Config(why));
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return bad(
                "endpoints: give at least one etcd client URL, e.g. http://127.0.0.1:2379".into(),
            );
        }
        if self.node_name.is_empty() || self.node_name.contains(['/', ' ']) {
            return bad(format!(
                "node_name {:?}: must be non-empty without '/' or spaces (it ends etcd keys)",
                self.node_name
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad(format!(
                "lease_ttl {:?}: must be at least 1 s",
                self.lease_ttl
            ));
        }
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            return bad("prefix: must not be empty (e.g. \"ciliate\")".into());
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("connect_timeout and request_timeout must be above zero".into());
        }
        Ok(())
    }
}

impl Default for KvstoreConfig {
    /// A node named after nothing on `http://127.0.0.1:2379`: set `node_name` before use.
    fn default() -> Self {
        Self::new(vec!["http://127.0.0.1:2379".into()], "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let cfg = KvstoreConfig::new(vec!["http://127.0.0.1:2379".into()], "node-a");
        assert_eq!(cfg.lease_ttl, Duration::from_secs(15));
        assert_eq!(cfg.prefix, "ciliate");
        assert!(cfg.validate().is_ok());
        assert!(KvstoreConfig::default().validate().is_err());
        let slash = KvstoreConfig::new(vec!["x:1".into()], "a/b");
        assert!(matches!(slash.validate(), Err(KvError::Config(m)) if m.contains("node_name")));
        let none = KvstoreConfig::new(vec![], "a");
        assert!(none.validate().is_err());
        let mut short = cfg.clone();
        short.lease_ttl = Duration::from_millis(10);
        assert!(short.validate().is_err());
    }
}
