//! What the plugin prints: the success result of ADD, the error result, the version result.
//! The shapes are those of CNI 1.0/1.1 (identical for what we emit). Fields we do not know are
//! kept (`extra`), so that a `prevResult` from another plugin passes through unchanged.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::CniError;

/// The spec versions we speak.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// The newest of them; used where no request version is known.
pub const LATEST_VERSION: &str = "1.1.0";

/// The success result of ADD (and the `prevResult` of CHECK/DEL).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The spec version of the request.
    #[serde(default)]
    pub cni_version: String,
    /// Interfaces made by the attachment: host side (no sandbox) and pod side.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses, with the index of their interface in `interfaces`.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes made in the sandbox.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings (we set none; the runtime's own apply).
    #[serde(default)]
    pub dns: Dns,
    /// Anything else another plugin put there.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One interface of a result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The network namespace path for a pod-side interface; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Fields of later spec versions or other plugins.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One address of a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.0.1.5/32`.
    pub address: IpNet,
    /// The gateway for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Fields of later spec versions or other plugins.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One route of a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Fields of later spec versions (mtu, advmss, priority, table, scope).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS settings of a result; printed as `{}` when empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// What ADD wired, in the terms of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    /// The request's spec version.
    pub cni_version: String,
    /// Host veth name.
    pub host_ifname: String,
    /// Host veth MAC.
    pub host_mac: String,
    /// Pod interface name (`CNI_IFNAME`).
    pub ifname: String,
    /// Pod interface MAC.
    pub mac: String,
    /// `CNI_NETNS`.
    pub sandbox: String,
    /// The pod's address (a /32).
    pub address: Ipv4Net,
    /// Its gateway.
    pub gateway: Ipv4Addr,
}

impl CniResult {
    /// The result of our ADD: host veth (index 0), pod interface (index 1) with the address,
    /// and the default route via the gateway. Appended to `prev` when a previous plugin left a
    /// result, as the spec asks of chained plugins.
    pub fn for_add(w: &Wired, prev: Option<CniResult>) -> CniResult {
        let mut result = prev.unwrap_or_default();
        result.cni_version.clone_from(&w.cni_version);
        let host_index = result.interfaces.len();
        result.interfaces.push(Interface {
            name: w.host_ifname.clone(),
            mac: Some(w.host_mac.clone()),
            sandbox: None,
            extra: Map::new(),
        });
        result.interfaces.push(Interface {
            name: w.ifname.clone(),
            mac: Some(w.mac.clone()),
            sandbox: Some(w.sandbox.clone()),
            extra: Map::new(),
        });
        result.ips.push(IpConfig {
            address: IpNet::V4(w.address),
            gateway: Some(IpAddr::V4(w.gateway)),
            interface: Some(host_index + 1),
            extra: Map::new(),
        });
        result.routes.push(Route {
            dst: IpNet::V4(Ipv4Net::default()),
            gw: Some(IpAddr::V4(w.gateway)),
            extra: Map::new(),
        });
        result
    }

    /// The addresses the result assigns to the sandbox interface `ifname`.
    pub fn addresses_of(&self, ifname: &str) -> Vec<IpNet> {
        self.ips
            .iter()
            .filter(|ip| {
                ip.interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_some_and(|iface| iface.name == ifname && iface.sandbox.is_some())
            })
            .map(|ip| ip.address)
            .collect()
    }
}

/// The error result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResult {
    /// The request's spec version (ours when it is unknown or unsupported).
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

impl ErrorResult {
    /// The error result for `e`, answering a request of `cni_version`.
    pub fn new(cni_version: &str, e: &CniError) -> Self {
        Self {
            cni_version: cni_version.to_owned(),
            code: e.code,
            msg: e.msg.clone(),
            details: e.details.clone(),
        }
    }
}

/// The result of VERSION.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    /// The version of this output.
    pub cni_version: String,
    /// The versions we speak.
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// What we answer to VERSION.
    pub fn ours() -> Self {
        Self {
            cni_version: LATEST_VERSION.to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::error::code;

    fn wired() -> Wired {
        Wired {
            cni_version: "1.1.0".into(),
            host_ifname: "lxc0123456789ab".into(),
            host_mac: "0a:00:00:00:00:01".into(),
            ifname: "eth0".into(),
            mac: "0a:00:00:00:00:02".into(),
            sandbox: "/var/run/netns/pod".into(),
            address: "10.0.1.5/32".parse().unwrap(),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
        }
    }

    #[test]
    fn add_result_has_the_spec_shape() {
        let r = CniResult::for_add(&wired(), None);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "lxc0123456789ab", "mac": "0a:00:00:00:00:01"},
                    {"name": "eth0", "mac": "0a:00:00:00:00:02", "sandbox": "/var/run/netns/pod"}
                ],
                "ips": [{"address": "10.0.1.5/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
        assert_eq!(
            r.addresses_of("eth0"),
            vec!["10.0.1.5/32".parse::<IpNet>().unwrap()]
        );
        assert!(
            r.addresses_of("lxc0123456789ab").is_empty(),
            "host side has no sandbox"
        );
    }

    #[test]
    fn add_result_appends_to_a_previous_one_and_keeps_unknown_fields() {
        let prev: CniResult = serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "dummy0", "mtu": 9000}],
            "ips": [{"address": "192.168.0.2/24", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]},
            "custom": {"a": 1}
        }))
        .unwrap();
        let r = serde_json::to_value(CniResult::for_add(&wired(), Some(prev))).unwrap();
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["interfaces"][0], json!({"name": "dummy0", "mtu": 9000}));
        assert_eq!(r["interfaces"][2]["name"], "eth0");
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(r["custom"], json!({"a": 1}));
    }

    #[test]
    fn error_and_version_shapes() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "agent down", "connect: ENOENT");
        assert_eq!(
            serde_json::to_value(ErrorResult::new("1.0.0", &e)).unwrap(),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent down", "details": "connect: ENOENT"})
        );
        assert_eq!(
            serde_json::to_string(&VersionResult::ours()).unwrap(),
            r#"{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}"#
        );
    }

    proptest! {
        #[test]
        fn add_result_round_trips(a in any::<u8>(), b in any::<u8>(), prefix in 0u8..=32) {
            let mut w = wired();
            w.address = Ipv4Net::new(Ipv4Addr::new(10, 0, a, b), prefix).unwrap();
            let r = CniResult::for_add(&w, None);
            let back: CniResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            prop_assert_eq!(&back, &r);
            prop_assert_eq!(back.addresses_of("eth0"), vec![IpNet::V4(w.address)]);
        }
    }
}
