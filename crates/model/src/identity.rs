//! Numeric security identities, numbered as Cilium numbers them.

use serde::{Deserialize, Serialize};

use crate::labels::{Label, Labels, SOURCE_RESERVED};

/// A numeric security identity as carried in BPF maps and events.
pub type NumericIdentity = u32;

/// First identity handed to a cluster-local label set. Below it are the reserved ones.
pub const MIN_CLUSTER_IDENTITY: NumericIdentity = 256;
/// Last cluster-local identity (Cilium allocates 16 bits' worth per cluster).
pub const MAX_CLUSTER_IDENTITY: NumericIdentity = 65535;
/// First identity of the CIDR-derived (local) scope.
pub const MIN_CIDR_IDENTITY: NumericIdentity = 1 << 24;

/// The reserved identities, with Cilium's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReservedIdentity {
    /// Unknown or unset.
    Unknown = 0,
    /// The local node.
    Host = 1,
    /// Anything outside the cluster.
    World = 2,
    /// Pods not managed by Ciliate.
    Unmanaged = 3,
    /// Health-check endpoints.
    Health = 4,
    /// Endpoints whose labels are not yet known.
    Init = 5,
    /// Other nodes of the cluster.
    RemoteNode = 6,
    /// The Kubernetes API server.
    KubeApiserver = 7,
    /// The ingress proxy.
    Ingress = 8,
}

impl ReservedIdentity {
    /// All reserved identities but `Unknown`, in numeric order.
    pub const ALL: [ReservedIdentity; 8] = [
        Self::Host,
        Self::World,
        Self::Unmanaged,
        Self::Health,
        Self::Init,
        Self::RemoteNode,
        Self::KubeApiserver,
        Self::Ingress,
    ];

    /// The numeric value.
    pub fn id(self) -> NumericIdentity {
        self as NumericIdentity
    }

    /// The name as it appears in `reserved:<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Host => "host",
            Self::World => "world",
            Self::Unmanaged => "unmanaged",
            Self::Health => "health",
            Self::Init => "init",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Ingress => "ingress",
        }
    }

    /// The reserved identity with this number, if any.
    pub fn from_id(id: NumericIdentity) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.id() == id)
    }

    /// The label set of this identity (`reserved:<name>`).
    pub fn labels(self) -> Labels {
        std::iter::once(Label::new(SOURCE_RESERVED, self.name(), "")).collect()
    }
}

/// A security identity: a number and the label set it stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The number carried in the datapath.
    pub id: NumericIdentity,
    /// The labels that define it.
    pub labels: Labels,
    /// Whether this is one of Cilium's reserved identities.
    #[serde(default)]
    pub reserved: bool,
    /// How many endpoints of this node use it (0 for reserved identities).
    #[serde(default)]
    pub references: u32,
}

impl Identity {
    /// The identity record of a reserved identity.
    pub fn reserved(r: ReservedIdentity) -> Self {
        Self {
            id: r.id(),
            labels: r.labels(),
            reserved: true,
            references: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_numbers_match_cilium() {
        let got: Vec<(u32, &str)> = ReservedIdentity::ALL
            .iter()
            .map(|r| (r.id(), r.name()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "host"),
                (2, "world"),
                (3, "unmanaged"),
                (4, "health"),
                (5, "init"),
                (6, "remote-node"),
                (7, "kube-apiserver"),
                (8, "ingress")
            ]
        );
        assert_eq!(
            ReservedIdentity::from_id(6),
            Some(ReservedIdentity::RemoteNode)
        );
        assert_eq!(ReservedIdentity::from_id(300), None);
        assert_eq!(
            ReservedIdentity::World.labels().to_string(),
            "reserved:world"
        );
    }
}
