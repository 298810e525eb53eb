//! The node's uplink: the interface its traffic to other nodes and the world leaves by, whose
//! MTU pod interfaces follow.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netlink::RouteInfo;

/// The index of the uplink: the interface holding `underlay` (the node's address towards
/// other nodes) when given, else the one the default route of the main table leaves by.
/// `None` when there is no such interface.
pub fn uplink_index(
    addresses: &[(u32, Ipv4Net)],
    routes: &[RouteInfo],
    underlay: Option<Ipv4Addr>,
) -> Option<u32> {
    match underlay {
        Some(ip) => addresses
            .iter()
            .find(|(_, net)| net.addr() == ip)
            .map(|(index, _)| *index),
        None => routes
            .iter()
            .filter(|r| r.destination.prefix_len() == 0)
            .find_map(|r| r.oif),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Scope;

    fn route(dst: &str, oif: Option<u32>) -> RouteInfo {
        RouteInfo {
            destination: dst.parse().expect("prefix"),
            gateway: None,
            oif,
            scope: Scope::Universe,
        }
    }

    #[test]
    fn the_underlay_address_names_the_device_else_the_default_route() {
        let addrs = [
            (1, "127.0.0.1/8".parse().expect("net")),
            (3, "172.31.0.10/24".parse().expect("net")),
            (4, "198.18.0.1/24".parse().expect("net")),
        ];
        let routes = [route("172.31.0.0/24", Some(3)), route("0.0.0.0/0", Some(4))];
        assert_eq!(uplink_index(&addrs, &routes, None), Some(4));
        assert_eq!(
            uplink_index(&addrs, &routes, Some(Ipv4Addr::new(172, 31, 0, 10))),
            Some(3)
        );
        assert_eq!(
            uplink_index(&addrs, &routes, Some(Ipv4Addr::new(10, 9, 9, 9))),
            None,
            "an address the node does not hold"
        );
        assert_eq!(
            uplink_index(&addrs, &routes[..1], None),
            None,
            "no default route"
        );
    }
}
