//! The JSON records stored in etcd.

use std::net::Ipv4Addr;

use ciliate_model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

/// A node of the cluster, as its agent registers it under `nodes/v1/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The node's name; equals the last segment of its key.
    pub name: String,
    /// The address other nodes tunnel to.
    pub underlay_ip: Ipv4Addr,
    /// The pod CIDR the node hands addresses out of.
    pub pod_cidr: ipnet::Ipv4Net,
    /// Free text, e.g. `ok`.
    pub health: String,
    /// Changes on every boot of the agent, so peers can tell a restart.
    pub boot_id: String,
    /// Where the node's Hubble observer API is served over TCP (`host:port`), for
    /// `ciliate-relay`; empty when the agent serves it on its unix socket only. Records of
    /// agents from before this field read as empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hubble_address: String,
}

/// One endpoint address and the identity its packets carry, under `ip/v1/default/<ip>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpEntry {
    /// The endpoint's address; equals the last segment of its key.
    pub ip: Ipv4Addr,
    /// The endpoint's security identity.
    pub identity: NumericIdentity,
    /// The node the endpoint lives on.
    pub node: String,
    /// Where to tunnel packets for it (the node's underlay address).
    pub tunnel_endpoint: Ipv4Addr,
    /// The pod's namespace, for flows on other nodes ("" when the runtime named no pod).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The pod's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_camel_case() {
        let node = NodeRecord {
            name: "n1".into(),
            underlay_ip: Ipv4Addr::new(192, 168, 0, 1),
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
            health: "ok".into(),
            boot_id: "b1".into(),
            hubble_address: String::new(),
        };
        let json = serde_json::to_value(&node).unwrap();
        // A record without hubbleAddress is what agents before it wrote: it still reads.
        assert_eq!(
            json,
            serde_json::json!({"name": "n1", "underlayIp": "192.168.0.1",
                "podCidr": "10.1.0.0/24", "health": "ok", "bootId": "b1"})
        );
        assert_eq!(serde_json::from_value::<NodeRecord>(json).unwrap(), node);
        let with = NodeRecord {
            hubble_address: "192.168.0.1:4244".into(),
            ..node
        };
        let json = serde_json::to_value(&with).unwrap();
        assert_eq!(json["hubbleAddress"], "192.168.0.1:4244");
        assert_eq!(serde_json::from_value::<NodeRecord>(json).unwrap(), with);
        let ip = IpEntry {
            ip: Ipv4Addr::new(10, 1, 0, 5),
            identity: 300,
            node: "n1".into(),
            tunnel_endpoint: Ipv4Addr::new(192, 168, 0, 1),
            namespace: String::new(),
            pod_name: String::new(),
        };
        let json = serde_json::to_value(&ip).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ip": "10.1.0.5", "identity": 300, "node": "n1",
                "tunnelEndpoint": "192.168.0.1"})
        );
        assert_eq!(serde_json::from_value::<IpEntry>(json).unwrap(), ip);
    }
}
