//! Privileged tests of the netlink and netns helpers: a pod wired the way the CNI plugin wires
//! it, between two throw-away namespaces. The "node" is a namespace too, so these tests never
//! touch the host's own network namespace. They need root; without it they print SKIP.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use ciliate_datapath::netlink::{
    disable_rp_filter, ipv4_forwarding, set_ipv4_forwarding, Netlink, NetlinkError, PodInterface,
    Scope,
};
use ciliate_datapath::netns::NetNs;
use ciliate_model::api::GATEWAY_IPV4;
use ciliate_testutil::TestNetns;
use ipnet::Ipv4Net;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 5);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// Each test gets its own runtime on its own thread, as ztunnel's namespaced tests do.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn pod_interface(host_mac: ciliate_model::MacAddr) -> PodInterface {
    PodInterface {
        current_name: "tmp0".into(),
        ifname: "eth0".into(),
        mac: None,
        mtu: Some(1400),
        address: Ipv4Net::from(POD_IP),
        gateway: GATEWAY_IPV4,
        gateway_mac: host_mac,
    }
}

#[test]
fn a_wired_pod_reaches_the_node_and_delete_leaves_nothing() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("nlnode");
    let pod = TestNetns::new("nlpod");
    let node_ns = NetNs::open(node.path()).unwrap();
    let pod_ns = NetNs::open(pod.path()).unwrap();

    block_on(async {
        let nl_node = Netlink::connect_in(&node_ns).unwrap();
        let nl_pod = Netlink::connect_in(&pod_ns).unwrap();

        let (host, peer) = nl_node.create_veth("lxc0", "tmp0").await.unwrap();
        assert_eq!(host.name, "lxc0");
        assert_eq!(peer.name, "tmp0");
        let host_mac = host.mac.unwrap();
        assert!(peer.mac.is_some());

        // Creating it again is refused without touching what exists.
        let again = nl_node.create_veth("lxc0", "tmp0").await.unwrap_err();
        assert!(matches!(again, NetlinkError::Exists { .. }), "{again}");
        assert!(again.to_string().contains("lxc0"), "{again}");

        nl_node.move_link("tmp0", &pod_ns).await.unwrap();
        assert!(nl_node.link("tmp0").await.unwrap().is_none());
        assert!(nl_pod.link("tmp0").await.unwrap().is_some());

        let cfg = pod_interface(host_mac);
        let eth0 = nl_pod.configure_pod_interface(&cfg).await.unwrap();
        assert_eq!(eth0.name, "eth0");
        assert!(eth0.up);
        assert_eq!(eth0.mtu, Some(1400));
        assert_eq!(eth0.mac, peer.mac);
        assert_eq!(eth0.addresses, vec![Ipv4Net::from(POD_IP)]);
        // Configuring again converges instead of failing.
        assert_eq!(nl_pod.configure_pod_interface(&cfg).await.unwrap(), eth0);

        let routes = nl_pod.routes().await.unwrap();
        assert!(
            routes.iter().any(|r| r.destination == Ipv4Net::default()
                && r.gateway == Some(GATEWAY_IPV4)
                && r.oif == Some(eth0.index)),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r.destination == Ipv4Net::from(GATEWAY_IPV4)
                    && r.scope == Scope::Link
                    && r.oif == Some(eth0.index)),
            "{routes:?}"
        );
        let neigh = nl_pod.neighbours(eth0.index).await.unwrap();
        assert!(
            neigh
                .iter()
                .any(|n| n.ip == GATEWAY_IPV4 && n.permanent && n.mac == Some(host_mac)),
            "{neigh:?}"
        );

        let host_up = nl_node
            .configure_host_veth("lxc0", POD_IP, Some(1400))
            .await
            .unwrap();
        assert!(host_up.up);
        let node_routes = nl_node.routes().await.unwrap();
        assert!(
            node_routes
                .iter()
                .any(|r| r.destination == Ipv4Net::from(POD_IP)
                    && r.oif == Some(host.index)
                    && r.scope == Scope::Link),
            "{node_routes:?}"
        );

        // The node's own address, on its loopback: the pod reaches it through the gateway.
        let lo = nl_node.link("lo").await.unwrap().unwrap();
        nl_node
            .add_address(lo.index, Ipv4Net::from(NODE_IP))
            .await
            .unwrap();
        node_ns
            .run_in(|| {
                set_ipv4_forwarding(true).unwrap();
                assert!(ipv4_forwarding().unwrap());
                disable_rp_filter("lxc0").unwrap();
                assert_eq!(
                    std::fs::read_to_string("/proc/sys/net/ipv4/conf/lxc0/rp_filter")
                        .unwrap()
                        .trim(),
                    "0"
                );
            })
            .unwrap();

        udp_round_trip(&node_ns, &pod_ns);

        assert!(nl_node.delete_link("lxc0").await.unwrap());
        assert!(
            !nl_node.delete_link("lxc0").await.unwrap(),
            "delete is idempotent"
        );
        // Deleting the host side took the pod side with it.
        assert!(nl_pod.link("eth0").await.unwrap().is_none());
        let names = |links: Vec<ciliate_datapath::netlink::LinkInfo>| {
            links.into_iter().map(|l| l.name).collect::<Vec<_>>()
        };
        assert_eq!(names(nl_node.links().await.unwrap()), vec!["lo"]);
        assert_eq!(names(nl_pod.links().await.unwrap()), vec!["lo"]);
        // The pod's routes went with its interface.
        assert!(nl_pod
            .routes()
            .await
            .unwrap()
            .iter()
            .all(|r| r.gateway != Some(GATEWAY_IPV4)));
    });
}

/// Sends a datagram from the pod to the node and the answer back: L3 works both ways.
fn udp_round_trip(node_ns: &NetNs, pod_ns: &NetNs) {
    // Sockets keep the namespace they were made in; made on a thread inside it, then used here.
    let server = node_ns
        .run_in(|| UdpSocket::bind(SocketAddr::from((NODE_IP, 0))))
        .unwrap()
        .unwrap();
    let client = pod_ns
        .run_in(|| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
        .unwrap()
        .unwrap();
    for s in [&server, &client] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    client
        .send_to(b"ping", server.local_addr().unwrap())
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the node got nothing from the pod");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(
        from.ip(),
        POD_IP,
        "the pod's packet keeps its source address"
    );
    server.send_to(b"pong", from).unwrap();
    let (n, from) = client.recv_from(&mut buf).expect("the pod got no answer");
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(from, server.local_addr().unwrap());
}

#[test]
fn an_existing_interface_name_in_the_pod_is_refused() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("nlnode");
    let pod = TestNetns::new("nlpod");
    // A veth pair stands in for whatever holds the name (no dummy module on every kernel).
    pod.exec(
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ],
    );
    let node_ns = NetNs::open(node.path()).unwrap();
    let pod_ns = NetNs::open(pod.path()).unwrap();

    block_on(async {
        let nl_node = Netlink::connect_in(&node_ns).unwrap();
        let nl_pod = Netlink::connect_in(&pod_ns).unwrap();
        let (host, _) = nl_node.create_veth("lxc0", "tmp0").await.unwrap();
        nl_node.move_link("tmp0", &pod_ns).await.unwrap();

        let err = nl_pod
            .configure_pod_interface(&pod_interface(host.mac.unwrap()))
            .await
            .unwrap_err();
        assert!(matches!(err, NetlinkError::Exists { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("eth0") && msg.contains(pod.name()), "{msg}");
        // The existing interface is untouched and gained nothing.
        let eth0 = nl_pod.link("eth0").await.unwrap().unwrap();
        assert!(eth0.addresses.is_empty());
        assert!(nl_pod.link("tmp0").await.unwrap().is_some());

        assert!(nl_node.delete_link("lxc0").await.unwrap());
        assert!(nl_pod.link("tmp0").await.unwrap().is_none());
    });
}

#[test]
fn missing_links_are_not_found_and_say_where() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("nlnode");
    let node_ns = NetNs::open(node.path()).unwrap();
    block_on(async {
        let nl = Netlink::connect_in(&node_ns).unwrap();
        assert!(nl.link("nothere0").await.unwrap().is_none());
        assert!(!nl.delete_link("nothere0").await.unwrap());
        let err = nl.set_link_up("nothere0", None).await.unwrap_err();
        assert!(matches!(err, NetlinkError::NotFound { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("nothere0") && msg.contains(node.name()),
            "{msg}"
        );
    });
}

#[test]
fn run_in_enters_the_namespace_and_leaves_the_caller_alone() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("nlnode");
    let ns = NetNs::open(node.path()).unwrap();
    let before = NetNs::current().unwrap().inode().unwrap();
    let inside = ns
        .run_in(|| NetNs::current().unwrap().inode().unwrap())
        .unwrap();
    assert_eq!(inside, ns.inode().unwrap());
    assert_ne!(inside, before);
    assert_eq!(NetNs::current().unwrap().inode().unwrap(), before);
}
