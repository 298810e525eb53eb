//! The kinds of object the source watches, and where the API server serves each.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::{ApiResource, GroupVersionKind};

/// One kind of object the source lists and watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// `v1/Pod`.
    Pod,
    /// `v1/Namespace` (cluster-scoped).
    Namespace,
    /// `v1/Node` (cluster-scoped).
    Node,
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy,
    /// `cilium.io/v2/CiliumNetworkPolicy` (a CRD).
    CiliumNetworkPolicy,
    /// `cilium.io/v2/CiliumClusterwideNetworkPolicy` (a CRD, cluster-scoped).
    CiliumClusterwideNetworkPolicy,
}

impl ResourceKind {
    /// Every kind, in the order the source starts watching them.
    pub const ALL: [ResourceKind; 8] = [
        Self::Pod,
        Self::Namespace,
        Self::Node,
        Self::Service,
        Self::EndpointSlice,
        Self::NetworkPolicy,
        Self::CiliumNetworkPolicy,
        Self::CiliumClusterwideNetworkPolicy,
    ];

    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Namespace => "Namespace",
            Self::Node => "Node",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }

    /// The `apiVersion` objects of this kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Pod | Self::Namespace | Self::Node | Self::Service => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::NetworkPolicy => "networking.k8s.io/v1",
            Self::CiliumNetworkPolicy | Self::CiliumClusterwideNetworkPolicy => "cilium.io/v2",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            Self::Namespace | Self::Node | Self::CiliumClusterwideNetworkPolicy
        )
    }

    /// Whether this kind is a CustomResourceDefinition (its schema is Cilium's, not the API
    /// server's, so objects may carry fields newer than what Ciliate knows).
    pub fn is_custom(self) -> bool {
        matches!(
            self,
            Self::CiliumNetworkPolicy | Self::CiliumClusterwideNetworkPolicy
        )
    }

    /// Where the API server serves this kind (group, version, plural), for an `Api` over any object type.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Self::Pod => ApiResource::erase::<Pod>(&()),
            Self::Namespace => ApiResource::erase::<Namespace>(&()),
            Self::Node => ApiResource::erase::<Node>(&()),
            Self::Service => ApiResource::erase::<Service>(&()),
            Self::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
            Self::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            Self::CiliumNetworkPolicy => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("cilium.io", "v2", self.as_str()),
                "ciliumnetworkpolicies",
            ),
            Self::CiliumClusterwideNetworkPolicy => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("cilium.io", "v2", self.as_str()),
                "ciliumclusterwidenetworkpolicies",
            ),
        }
    }

    /// The position of this kind in [`ResourceKind::ALL`] (an index for per-kind counters).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_resources_match_the_kinds() {
        for (i, kind) in ResourceKind::ALL.into_iter().enumerate() {
            let ar = kind.api_resource();
            assert_eq!(ar.kind, kind.as_str());
            assert_eq!(ar.api_version, kind.api_version());
            assert_eq!(kind.index(), i);
        }
        assert_eq!(
            ResourceKind::EndpointSlice.api_resource().plural,
            "endpointslices"
        );
        assert_eq!(
            ResourceKind::CiliumClusterwideNetworkPolicy
                .api_resource()
                .plural,
            "ciliumclusterwidenetworkpolicies"
        );
    }
}
