//! The L7 proxy's datapath contract through the real kernel: two pods wired the way the CNI
//! plugin wires them, in a node namespace of their own, the datapath loaded and attached the
//! way the agent does, the proxy's policy routing installed, and a test-only transparent
//! listener in the node's namespace standing in for the proxy.
//!
//! - egress: A's rule towards B:80 names a proxy port: A's connection is accepted by the
//!   listener, whose socket's local address is B:80 (the original destination) and peer A;
//!   then the "proxy" opens its upstream connection to B:80 from A's address with the
//!   from-proxy mark, and B's answer comes back to that socket (not into pod A);
//! - ingress: B's rule for A on port 8080 names a proxy port: A's connection to B:8080 is
//!   accepted by the listener (through to_container's hairpin into the veth's ingress);
//! - fail closed: with the egress proxy's listener closed, A's connection to B:80 is not
//!   delivered to B's server;
//! - UDP (DNS): A's rule towards B:53/UDP names a proxy port: A's datagram reaches a
//!   transparent UDP socket with B:53 as its original destination (IP_RECVORIGDSTADDR), and the
//!   answer the "proxy" sends from B:53 (a transparent socket bound there) reaches A's socket as
//!   B's reply; B's own server sees nothing; without the proxy's socket nothing gets through.
//!
//! Needs root; without it the test prints SKIP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ciliate_datapath::linux::{purge_node_pins, LinuxConfig, LinuxDatapath};
use ciliate_datapath::netlink::{disable_rp_filter, Netlink, PodInterface};
use ciliate_datapath::netns::NetNs;
use ciliate_datapath::proxy_mark::{self, ProxyDirection};
use ciliate_datapath::{Datapath, EndpointSpec};
use ciliate_model::api::GATEWAY_IPV4;
use ciliate_model::bpf_policy::{EndpointPolicy, MatchKind, PolicyMapEntry};
use ciliate_testutil::{unique_name, TestNetns};
use ipnet::Ipv4Net;

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const ID_A: u32 = 70001;
const ID_B: u32 = 70002;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) {
    // SAFETY: fd is an open socket; the option value is a live i32 of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {level}/{name}: {}",
        std::io::Error::last_os_error()
    );
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A TCP socket with IP_TRANSPARENT (and SO_MARK when given), bound to `bind`.
fn transparent_socket(bind: SocketAddrV4, mark: Option<u32>) -> RawFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    setsockopt_int(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if let Some(m) = mark {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, m as i32);
    }
    let sa = sockaddr(bind);
    // SAFETY: sa is a valid sockaddr_in of the length given.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind {bind}: {}", std::io::Error::last_os_error());
    fd
}

/// The test's proxy: a transparent listener on 127.0.0.1 and a free port, in the calling
/// thread's namespace.
fn transparent_listener() -> TcpListener {
    let fd = transparent_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None);
    // SAFETY: fd is a bound socket we own.
    assert_eq!(unsafe { libc::listen(fd, 16) }, 0);
    // SAFETY: fd is an open, listening TCP socket, owned from here on by the listener.
    unsafe { TcpListener::from_raw_fd(fd) }
}

/// The proxy's upstream connection: from `client` (any port) with `mark`, to `dst`.
fn upstream_connect(client: Ipv4Addr, mark: u32, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    let fd = transparent_socket(SocketAddrV4::new(client, 0), Some(mark));
    // connect(2) gives up after SO_SNDTIMEO, not the kernel's two minutes of SYN retries.
    let tv = libc::timeval {
        tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: tv is a live timeval of the length given; fd is ours.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_SNDTIMEO");
    let sa = sockaddr(dst);
    // SAFETY: sa is a valid sockaddr_in of the length given; fd is ours.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::from_ref(&sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is an open TCP socket, owned from here on by the stream.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(stream)
}

/// Accepts one connection within IO_TIMEOUT (None if none came).
fn accept_within(l: &TcpListener, within: Duration) -> Option<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + within;
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).unwrap();
                return Some((s, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Runs `f` on a new thread inside `ns`.
fn in_ns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = path.to_owned();
    thread::spawn(move || {
        let ns = NetNs::open(&path).expect("open netns");
        ns.run_in(f).expect("enter netns")
    })
}

/// A pod's client: connects to `dst`, sends `hello`, returns what came back (until EOF).
fn pod_client(pod: &str, dst: SocketAddrV4) -> thread::JoinHandle<std::io::Result<String>> {
    in_ns(pod, move || {
        let mut s = TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"hello")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// A one-connection-at-a-time server in pod B: answers "from-B:<port>" and reports each peer.
fn pod_server(pod: &str, port: u16) -> mpsc::Receiver<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let path = pod.to_owned();
    thread::spawn(move || {
        let ns = NetNs::open(&path).expect("open netns");
        let _ = ns.run_in(move || {
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind server in B");
            ready_tx.send(()).unwrap();
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let peer = c.peer_addr().unwrap();
                // Take what a client sent (closing with unread data would reset it).
                let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = c.read(&mut [0u8; 64]);
                let _ = c.write_all(format!("from-B:{port}").as_bytes());
                drop(c);
                if tx.send(peer).is_err() {
                    return;
                }
            }
        });
    });
    ready_rx.recv_timeout(IO_TIMEOUT).expect("B's server up");
    rx
}

fn entry(identity: u32, egress: bool, port: u16, proxy_port: u16) -> PolicyMapEntry {
    PolicyMapEntry {
        identity,
        egress,
        proto: Some(6),
        port,
        port_prefix_len: 16,
        deny: false,
        kind: MatchKind::L3L4,
        rule: 1,
        proxy_port,
    }
}

struct Pins(LinuxConfig);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = purge_node_pins(&self.0);
    }
}

struct Wired {
    spec: EndpointSpec,
}

/// Wires a pod as the CNI plugin does (veth, /32, gateway, permanent neighbour, host route).
async fn wire(nl: &Netlink, pod: &str, id: u16, ip: Ipv4Addr, identity: u32) -> Wired {
    let host_name = unique_name("pxh");
    let tmp_name = unique_name("pxt");
    let (host, _) = nl.create_veth(&host_name, &tmp_name).await.unwrap();
    let pod_ns = NetNs::open(pod).unwrap();
    nl.move_link(&tmp_name, &pod_ns).await.unwrap();
    let nl_pod = Netlink::connect_in(&pod_ns).unwrap();
    let host_mac = host.mac.unwrap();
    let eth0 = nl_pod
        .configure_pod_interface(&PodInterface {
            current_name: tmp_name,
            ifname: "eth0".into(),
            mac: None,
            mtu: None,
            address: Ipv4Net::from(ip),
            gateway: GATEWAY_IPV4,
            gateway_mac: host_mac,
        })
        .await
        .unwrap();
    let host = nl.configure_host_veth(&host_name, ip, None).await.unwrap();
    // As the CNI plugin does: both queues attached before the first packet.
    assert!(nl.settle_link(&host_name).await.unwrap());
    assert!(nl_pod.settle_link("eth0").await.unwrap());
    disable_rp_filter(&host_name).unwrap();
    Wired {
        spec: EndpointSpec {
            id,
            ifname: host_name,
            ifindex: host.index,
            ipv4: ip,
            mac: eth0.mac.unwrap(),
            host_mac,
            identity,
        },
    }
}

#[test]
fn connections_reach_a_transparent_listener_with_their_original_destination() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("pxn");
    let pod_a = TestNetns::new("pxa");
    let pod_b = TestNetns::new("pxb");
    let node_ns = NetNs::open(node.path()).unwrap();
    let pins = Pins(LinuxConfig {
        node_name: unique_name("pxnode"),
        bpffs_root: "/sys/fs/bpf".into(),
        socket_lb_cgroup: None,
    });
    let cfg = pins.0.clone();
    let (a, b) = (pod_a.path(), pod_b.path());
    node_ns
        .run_in(move || node_side(cfg, &a, &b))
        .expect("enter the node's namespace");
}

/// Everything on the node's side, on a thread inside the node's namespace.
fn node_side(cfg: LinuxConfig, pod_a: &str, pod_b: &str) {
    for conf in ["all", "default"] {
        disable_rp_filter(conf).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _rt = rt.enter();
    let nl = Netlink::connect().unwrap();
    let (a, b) = rt.block_on(async {
        let a = wire(&nl, pod_a, 1, IP_A, ID_A).await;
        let b = wire(&nl, pod_b, 2, IP_B, ID_B).await;
        nl.install_proxy_routing().await.unwrap();
        nl.install_proxy_routing()
            .await
            .expect("a second install changes nothing");
        assert!(nl.proxy_routing_installed().await.unwrap());
        (a, b)
    });
    let dp = LinuxDatapath::open(cfg).unwrap();
    dp.upsert_endpoint(&a.spec).unwrap();
    dp.upsert_endpoint(&b.spec).unwrap();

    let egress_proxy = transparent_listener();
    let ingress_proxy = transparent_listener();
    let p_egress = egress_proxy.local_addr().unwrap().port();
    let p_ingress = ingress_proxy.local_addr().unwrap().port();
    let mut a_entries = vec![
        entry(ID_B, true, 80, p_egress),
        entry(ID_B, true, 8080, 0),
        entry(ID_B, true, 9090, p_egress),
    ];
    a_entries.sort();
    dp.set_endpoint_policy(
        &a.spec,
        &EndpointPolicy {
            ingress_enforced: false,
            egress_enforced: true,
            entries: a_entries.clone(),
        },
    )
    .unwrap();
    let mut b_entries = vec![
        entry(ID_A, false, 80, 0),
        entry(ID_A, false, 8080, p_ingress),
        entry(ID_A, false, 9090, p_ingress),
    ];
    b_entries.sort();
    dp.set_endpoint_policy(
        &b.spec,
        &EndpointPolicy {
            ingress_enforced: true,
            egress_enforced: false,
            entries: b_entries,
        },
    )
    .unwrap();
    let seen_by_b = pod_server(pod_b, 80);
    // Only L7 traffic detours: a connection without a proxy port leaves the counter alone.
    dp.set_endpoint_policy(
        &a.spec,
        &EndpointPolicy {
            ingress_enforced: false,
            egress_enforced: true,
            entries: {
                let mut e = vec![entry(ID_B, true, 80, 0)];
                e.sort();
                e
            },
        },
    )
    .unwrap();
    let direct = pod_client(pod_a, SocketAddrV4::new(IP_B, 80));
    assert_eq!(
        direct.join().unwrap().unwrap(),
        "from-B:80",
        "straight to B"
    );
    seen_by_b.recv_timeout(IO_TIMEOUT).expect("B served it");
    assert_eq!(dp.proxy_redirects(), 0, "nothing went to the proxy");
    dp.set_endpoint_policy(
        &a.spec,
        &EndpointPolicy {
            ingress_enforced: false,
            egress_enforced: true,
            entries: a_entries.clone(),
        },
    )
    .unwrap();
    let seen_by_b8080 = pod_server(pod_b, 8080);
    let seen_by_b9090 = pod_server(pod_b, 9090);
    let b80 = SocketAddrV4::new(IP_B, 80);

    // Egress: A's connection to B:80 is the proxy's, with B:80 as its local address.
    let client = pod_client(pod_a, b80);
    let (mut down, peer) =
        accept_within(&egress_proxy, IO_TIMEOUT).expect("the proxy accepted A's connection");
    assert_eq!(
        down.local_addr().unwrap(),
        SocketAddr::from(b80),
        "original destination"
    );
    assert_eq!(peer.ip(), IP_A, "the client is A");
    down.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut hello = [0u8; 5];
    down.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    assert!(
        seen_by_b.try_recv().is_err(),
        "B's server saw nothing of A's own connection"
    );
    assert!(dp.proxy_redirects() >= 3, "the handshake went to the proxy");

    // The upstream leg: from A's address with the from-proxy mark; B's answer must come back
    // to this socket (the datapath steers it), not into pod A (which would reset it).
    let mark = proxy_mark::from_proxy(ProxyDirection::Egress, ID_A).unwrap();
    let mut up = upstream_connect(IP_A, mark, b80).expect("the upstream connection to B:80");
    up.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut answer = String::new();
    up.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "from-B:80");
    let b_peer = seen_by_b.recv_timeout(IO_TIMEOUT).expect("B served it");
    assert_eq!(
        b_peer,
        up.local_addr().unwrap(),
        "B saw A's address, the proxy's port"
    );
    down.write_all(format!("via-proxy:{answer}").as_bytes())
        .unwrap();
    drop(down);
    assert_eq!(client.join().unwrap().unwrap(), "via-proxy:from-B:80");

    // Ingress: A's connection to B:8080 reaches the ingress proxy, not B's server there.
    let b8080 = SocketAddrV4::new(IP_B, 8080);
    let client = pod_client(pod_a, b8080);
    let (mut down, peer) =
        accept_within(&ingress_proxy, IO_TIMEOUT).expect("the ingress proxy accepted");
    assert_eq!(down.local_addr().unwrap(), SocketAddr::from(b8080));
    assert_eq!(peer.ip(), IP_A);
    down.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    down.read_exact(&mut hello).unwrap();
    assert!(seen_by_b8080.try_recv().is_err(), "not B's server");
    // Its upstream leg (ingress mark): into B, not back to the ingress proxy.
    let mark = proxy_mark::from_proxy(ProxyDirection::Ingress, ID_A).unwrap();
    let mut up = upstream_connect(IP_A, mark, b8080).expect("the upstream connection to B:8080");
    up.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut answer = String::new();
    up.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "from-B:8080");
    assert_eq!(
        seen_by_b8080.recv_timeout(IO_TIMEOUT).expect("B served it"),
        up.local_addr().unwrap()
    );
    assert!(
        accept_within(&ingress_proxy, Duration::from_millis(100)).is_none(),
        "the ingress proxy's own connection did not come back to it"
    );
    down.write_all(format!("via-ingress-proxy:{answer}").as_bytes())
        .unwrap();
    drop(down);
    assert_eq!(
        client.join().unwrap().unwrap(),
        "via-ingress-proxy:from-B:8080"
    );

    // Both: A's egress rule and B's ingress rule on 9090. A's connection meets the egress
    // proxy; its upstream meets the ingress proxy (whose answers reach the egress proxy's
    // socket, not pod A); the ingress proxy's upstream reaches B.
    let b9090 = SocketAddrV4::new(IP_B, 9090);
    let client = pod_client(pod_a, b9090);
    let (mut down, peer) =
        accept_within(&egress_proxy, IO_TIMEOUT).expect("the egress proxy accepted");
    assert_eq!(
        (down.local_addr().unwrap(), peer.ip()),
        (SocketAddr::from(b9090), IpAddr::V4(IP_A))
    );
    let mark = proxy_mark::from_proxy(ProxyDirection::Egress, ID_A).unwrap();
    let up1 = upstream_connect(IP_A, mark, b9090);
    let mut up1 = up1.expect("egress proxy -> ingress proxy");
    let (mut mid, mid_peer) =
        accept_within(&ingress_proxy, IO_TIMEOUT).expect("the ingress proxy accepted");
    assert_eq!(
        (mid.local_addr().unwrap(), mid_peer),
        (SocketAddr::from(b9090), up1.local_addr().unwrap())
    );
    let mark = proxy_mark::from_proxy(ProxyDirection::Ingress, ID_A).unwrap();
    let mut up2 = upstream_connect(IP_A, mark, b9090).expect("ingress proxy -> B");
    up2.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut answer = String::new();
    up2.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "from-B:9090");
    assert_eq!(
        seen_by_b9090.recv_timeout(IO_TIMEOUT).expect("B served it"),
        up2.local_addr().unwrap()
    );
    mid.write_all(answer.as_bytes()).unwrap();
    drop(mid);
    up1.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut relayed = String::new();
    up1.read_to_string(&mut relayed).unwrap();
    assert_eq!(
        relayed, "from-B:9090",
        "the ingress proxy's answer reached the egress proxy"
    );
    // Read A's request first: closing with unread data would reset the connection.
    down.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    down.read_exact(&mut hello).unwrap();
    down.write_all(relayed.as_bytes()).unwrap();
    drop(down);
    assert_eq!(client.join().unwrap().unwrap(), "from-B:9090");

    // Fail closed: without the egress proxy, A's connection does not reach B's server.
    drop(egress_proxy);
    let refused = pod_client(pod_a, b80).join().unwrap();
    assert!(refused.is_err(), "{refused:?}");
    assert!(seen_by_b.try_recv().is_err(), "B's server saw nothing");

    rt.block_on(async {
        nl.remove_proxy_routing().await.unwrap();
        assert!(!nl.proxy_routing_installed().await.unwrap());
        nl.remove_proxy_routing()
            .await
            .expect("removing twice is fine");
    });
}

// ---- UDP (the DNS proxy) ----

const IP_A3: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 10);
const IP_B3: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 11);

/// A UDP socket with IP_TRANSPARENT and IP_RECVORIGDSTADDR bound to `bind`, as the
/// supervisor makes the DNS proxy's.
fn transparent_udp(bind: SocketAddrV4) -> UdpSocket {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    setsockopt_int(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1);
    setsockopt_int(fd, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let sa = sockaddr(bind);
    // SAFETY: sa is a valid sockaddr_in of the length given.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind {bind}: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a bound UDP socket, owned from here on by the UdpSocket.
    unsafe { UdpSocket::from_raw_fd(fd) }
}

/// One datagram within IO_TIMEOUT: payload, source, original destination.
fn recv_orig_dst(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddrV4, SocketAddrV4)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 1500];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in);
    let msg =
        recvmsg::<SockaddrIn>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).ok()?;
    let src = msg.address.map(SocketAddrV4::from)?;
    let mut orig = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::Ipv4OrigDstAddr(sa) = c {
            orig = Some(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ));
        }
    }
    let len = msg.bytes;
    Some((buf[..len].to_vec(), src, orig?))
}

#[test]
fn udp_datagrams_reach_a_transparent_udp_socket_and_its_answer_reaches_the_pod() {
    ciliate_testutil::privileged!();
    let node = TestNetns::new("pun");
    let pod_a = TestNetns::new("pua");
    let pod_b = TestNetns::new("pub");
    let node_ns = NetNs::open(node.path()).unwrap();
    let pins = Pins(LinuxConfig {
        node_name: unique_name("punode"),
        bpffs_root: "/sys/fs/bpf".into(),
        socket_lb_cgroup: None,
    });
    let cfg = pins.0.clone();
    let (a, b) = (pod_a.path(), pod_b.path());
    node_ns
        .run_in(move || udp_node_side(cfg, &a, &b))
        .expect("enter the node's namespace");
}

fn udp_node_side(cfg: LinuxConfig, pod_a: &str, pod_b: &str) {
    for conf in ["all", "default"] {
        disable_rp_filter(conf).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _rt = rt.enter();
    let nl = Netlink::connect().unwrap();
    let (a, b) = rt.block_on(async {
        let a = wire(&nl, pod_a, 1, IP_A3, ID_A).await;
        let b = wire(&nl, pod_b, 2, IP_B3, ID_B).await;
        nl.install_proxy_routing().await.unwrap();
        (a, b)
    });
    let dp = LinuxDatapath::open(cfg).unwrap();
    dp.upsert_endpoint(&a.spec).unwrap();
    dp.upsert_endpoint(&b.spec).unwrap();
    let proxy = transparent_udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let port = proxy.local_addr().unwrap().port();
    let mut dns = entry(ID_B, true, 53, port);
    dns.proto = Some(17);
    dp.set_endpoint_policy(
        &a.spec,
        &EndpointPolicy {
            ingress_enforced: false,
            egress_enforced: true,
            entries: vec![dns],
        },
    )
    .unwrap();

    // B's own resolver on 53: it must see nothing of A's queries.
    let (b_tx, b_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let b_path = pod_b.to_owned();
    thread::spawn(move || {
        let ns = NetNs::open(&b_path).expect("open netns");
        let _ = ns.run_in(move || {
            let s = UdpSocket::bind(("0.0.0.0", 53)).expect("bind 53 in B");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = b_tx.send((buf[..n].to_vec(), from));
            }
        });
    });
    ready_rx.recv_timeout(IO_TIMEOUT).expect("B's resolver up");

    let b53 = SocketAddrV4::new(IP_B3, 53);
    // The pod's client: a connected socket takes only B:53's answers.
    let (client_tx, client_rx) = mpsc::channel::<(u16, std::io::Result<Vec<u8>>)>();
    let client = in_ns(pod_a, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(b53).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let sport = s.local_addr().unwrap().port();
        s.send(b"query-1").unwrap();
        let mut buf = [0u8; 512];
        let got = s.recv(&mut buf).map(|n| buf[..n].to_vec());
        client_tx.send((sport, got)).unwrap();
    });
    let (payload, from, orig) = recv_orig_dst(&proxy).expect("the proxy got A's query");
    assert_eq!(payload, b"query-1");
    assert_eq!(*from.ip(), IP_A3, "from A");
    assert_eq!(orig, b53, "original destination B:53");
    assert!(dp.proxy_redirects() >= 1);
    // The answer, from B:53 as the pod expects it.
    let answer_sock = transparent_udp(b53);
    answer_sock.send_to(b"answer-1", from).unwrap();
    client.join().unwrap();
    let (sport, got) = client_rx.recv().unwrap();
    assert_eq!(sport, from.port());
    assert_eq!(got.expect("A got the answer"), b"answer-1");
    assert!(b_rx.try_recv().is_err(), "B's resolver saw nothing");

    // Fail closed: without the proxy's socket, A's query reaches nobody.
    drop(proxy);
    let lost = in_ns(pod_a, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(b53).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.send(b"query-2").unwrap();
        let mut buf = [0u8; 512];
        s.recv(&mut buf).is_ok()
    });
    assert!(!lost.join().unwrap(), "no answer without the proxy");
    assert!(
        b_rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "B's resolver saw nothing"
    );
    rt.block_on(async {
        nl.remove_proxy_routing().await.unwrap();
    });
}

// ---- across nodes ----

const N1_UNDERLAY: Ipv4Addr = Ipv4Addr::new(172, 31, 77, 1);
const N2_UNDERLAY: Ipv4Addr = Ipv4Addr::new(172, 31, 77, 2);
const IP_A2: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 10);
const IP_B2: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 11);
const ID_NOT_A: u32 = 70009;

/// One node of the two: its datapath (kept loaded), its pod, its proxy's listener.
struct NodeSide {
    dp: LinuxDatapath,
    pod: EndpointSpec,
    proxy: TcpListener,
    _rt: tokio::runtime::Runtime,
}

/// Sets a node up inside its namespace: underlay address and the route to the other node's
/// pods, the pod, the proxy's routing, the datapath with its overlay and uplink programs, the
/// other node's pod in the ipcache.
#[allow(clippy::too_many_arguments)]
fn node_setup(
    cfg: LinuxConfig,
    underlay_if: &str,
    underlay: Ipv4Addr,
    peer_underlay: Ipv4Addr,
    peer_pods: &str,
    pod_path: &str,
    pod: (u16, Ipv4Addr, u32),
    remote_pod: (Ipv4Addr, u32),
) -> NodeSide {
    for conf in ["all", "default"] {
        disable_rp_filter(conf).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spec = {
        let _rt = rt.enter();
        rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            let link = nl.set_link_up(underlay_if, None).await.unwrap();
            nl.add_address(link.index, Ipv4Net::new(underlay, 24).unwrap())
                .await
                .unwrap();
            nl.add_route(peer_pods.parse().unwrap(), Some(peer_underlay), link.index)
                .await
                .unwrap();
            nl.install_proxy_routing().await.unwrap();
            wire(&nl, pod_path, pod.0, pod.1, pod.2).await.spec
        })
    };
    let dp = {
        let _rt = rt.enter();
        LinuxDatapath::open(cfg).unwrap()
    };
    rt.block_on(dp.ensure_tunnel_device("pxvx", 8472, 1450))
        .unwrap();
    dp.set_tunnel(Some("pxvx")).unwrap();
    dp.attach_host_programs(underlay_if).unwrap();
    dp.upsert_endpoint(&spec).unwrap();
    dp.sync_ipcache(&[ciliate_model::bpf_policy::IpcacheEntry {
        prefix: Ipv4Net::from(remote_pod.0),
        identity: remote_pod.1,
        tunnel_endpoint: Some(peer_underlay),
    }])
    .unwrap();
    NodeSide {
        dp,
        pod: spec,
        proxy: transparent_listener(),
        _rt: rt,
    }
}

/// Across nodes, through the VXLAN overlay: the egress proxy's upstream connection leaves
/// node 1 through the tunnel with the client's identity (node 2 admits only that identity) and
/// its replies come back from the tunnel to the proxy's socket; a remote client's connection
/// for the ingress proxy is assigned on node 2's overlay hook, and that proxy's answers go back
/// through the tunnel as the server pod.
#[test]
fn across_nodes_the_proxy_speaks_for_the_client_through_the_tunnel() {
    ciliate_testutil::privileged!();
    let n1 = TestNetns::new("pxm");
    let n2 = TestNetns::new("pxm");
    let pod_a = TestNetns::new("pxa");
    let pod_b = TestNetns::new("pxb");
    let (u1, u2) = (unique_name("pxu"), unique_name("pxu"));
    ciliate_testutil::run(
        "ip",
        &[
            "link",
            "add",
            &u1,
            "netns",
            n1.name(),
            "type",
            "veth",
            "peer",
            "name",
            &u2,
            "netns",
            n2.name(),
        ],
    );
    let pins1 = Pins(LinuxConfig {
        node_name: unique_name("pxnode"),
        bpffs_root: "/sys/fs/bpf".into(),
        socket_lb_cgroup: None,
    });
    let pins2 = Pins(LinuxConfig {
        node_name: unique_name("pxnode"),
        bpffs_root: "/sys/fs/bpf".into(),
        socket_lb_cgroup: None,
    });
    let ns1 = NetNs::open(n1.path()).unwrap();
    let ns2 = NetNs::open(n2.path()).unwrap();
    let (cfg1, cfg2) = (pins1.0.clone(), pins2.0.clone());
    let (pa, pb) = (pod_a.path(), pod_b.path());
    let node1 = ns1
        .run_in(|| {
            node_setup(
                cfg1,
                &u1,
                N1_UNDERLAY,
                N2_UNDERLAY,
                "10.78.1.0/24",
                &pa,
                (1, IP_A2, ID_A),
                (IP_B2, ID_B),
            )
        })
        .unwrap();
    let node2 = ns2
        .run_in(|| {
            node_setup(
                cfg2,
                &u2,
                N2_UNDERLAY,
                N1_UNDERLAY,
                "10.78.0.0/24",
                &pb,
                (1, IP_B2, ID_B),
                // Not A's identity: what reaches B outside the tunnel (routed by address) is
                // judged as this one and refused; through the tunnel the VNI says ID_A.
                (IP_A2, ID_NOT_A),
            )
        })
        .unwrap();
    let p1 = node1.proxy.local_addr().unwrap().port();
    let p2 = node2.proxy.local_addr().unwrap().port();
    let mut a_entries = vec![entry(ID_B, true, 80, p1), entry(ID_B, true, 8080, 0)];
    a_entries.sort();
    node1
        .dp
        .set_endpoint_policy(
            &node1.pod,
            &EndpointPolicy {
                ingress_enforced: false,
                egress_enforced: true,
                entries: a_entries,
            },
        )
        .unwrap();
    // B admits A's identity only: on port 80 directly, on 8080 through its ingress proxy.
    let mut b_entries = vec![entry(ID_A, false, 80, 0), entry(ID_A, false, 8080, p2)];
    b_entries.sort();
    node2
        .dp
        .set_endpoint_policy(
            &node2.pod,
            &EndpointPolicy {
                ingress_enforced: true,
                egress_enforced: false,
                entries: b_entries,
            },
        )
        .unwrap();
    let seen_by_b = pod_server(&pb, 80);
    let b80 = SocketAddrV4::new(IP_B2, 80);

    // Egress on node 1.
    let client = pod_client(&pa, b80);
    let (mut down, peer) =
        accept_within(&node1.proxy, IO_TIMEOUT).expect("node 1's proxy accepted A's connection");
    assert_eq!(down.local_addr().unwrap(), SocketAddr::from(b80));
    assert_eq!(peer.ip(), IP_A2);
    down.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut hello = [0u8; 5];
    down.read_exact(&mut hello).unwrap();
    let mark = proxy_mark::from_proxy(ProxyDirection::Egress, ID_A).unwrap();
    let mut up = ns1
        .run_in(move || upstream_connect(IP_A2, mark, b80))
        .unwrap()
        .expect("the upstream connection across the tunnel, answered to the proxy's socket");
    up.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut answer = String::new();
    up.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "from-B:80");
    assert_eq!(
        seen_by_b.recv_timeout(IO_TIMEOUT).expect("B served it"),
        up.local_addr().unwrap()
    );
    down.write_all(answer.as_bytes()).unwrap();
    drop(down);
    assert_eq!(client.join().unwrap().unwrap(), "from-B:80");

    // Ingress on node 2, for a client of node 1.
    let b8080 = SocketAddrV4::new(IP_B2, 8080);
    let client = pod_client(&pa, b8080);
    let (mut down, peer) =
        accept_within(&node2.proxy, IO_TIMEOUT).expect("node 2's proxy accepted A's connection");
    assert_eq!(
        (down.local_addr().unwrap(), peer.ip()),
        (SocketAddr::from(b8080), IpAddr::V4(IP_A2))
    );
    down.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    down.read_exact(&mut hello).unwrap();
    down.write_all(b"via-node2-proxy").unwrap();
    drop(down);
    assert_eq!(client.join().unwrap().unwrap(), "via-node2-proxy");

    drop(node1);
    drop(node2);
    drop(pins1);
    drop(pins2);
}
