//! The pooled UDP sockets to resolvers (`dns::upstream`): answers reach the query with their
//! id, a shared id takes another socket, ports rotate, strays and lost answers change nothing
//! for the next query. A real UDP resolver on loopback (a thread answering with raw bytes).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ciliate_proxy::dns::upstream::{UdpPool, ROTATE_MAX, SOCKETS_PER_RESOLVER};

/// How the test resolver treats a query: by the first byte after the 12-byte header.
const ANSWER: u8 = 0;
/// Sends a datagram with another id first, then the answer.
const STRAY_FIRST: u8 = 1;
/// Never answers.
const SILENT: u8 = 2;
/// Answered one by one after later queries are (so several are in flight at once).
const LATE: u8 = 3;

/// A query: the id, the mode, and a tag the answer echoes.
fn query(id: u16, mode: u8, tag: u32) -> Vec<u8> {
    let mut q = vec![0u8; 12];
    q[..2].copy_from_slice(&id.to_be_bytes());
    q.push(mode);
    q.extend_from_slice(&tag.to_be_bytes());
    q
}

fn tag(answer: &[u8]) -> u32 {
    u32::from_be_bytes(answer[13..17].try_into().expect("a tag"))
}

/// The resolver: answers each query with its bytes (bit QR set); returns its address and the
/// source ports it saw.
fn resolver() -> (SocketAddrV4, Arc<Mutex<Vec<u16>>>) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let SocketAddr::V4(addr) = s.local_addr().expect("addr") else {
        unreachable!("bound to v4")
    };
    let ports = Arc::new(Mutex::new(Vec::new()));
    let seen = ports.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let mut late: std::collections::VecDeque<(Vec<u8>, SocketAddr)> = Default::default();
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            seen.lock().unwrap().push(from.port());
            let mut a = buf[..n].to_vec();
            a[2] |= 0x80;
            match a.get(12).copied() {
                Some(STRAY_FIRST) => {
                    let mut stray = a.clone();
                    stray[0] ^= 0xff;
                    let _ = s.send_to(&stray, from);
                    let _ = s.send_to(&a, from);
                }
                Some(SILENT) => {}
                Some(LATE) => late.push_back((a, from)),
                _ => {
                    let _ = s.send_to(&a, from);
                    if let Some((a, to)) = late.pop_front() {
                        let _ = s.send_to(&a, to);
                    }
                }
            }
        }
    });
    (addr, ports)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn every_answer_reaches_its_query_and_the_sockets_stay_few() {
    let (addr, ports) = resolver();
    let pool = Arc::new(UdpPool::new(Duration::from_secs(2)));
    rt().block_on(async {
        // In waves of 40 at once: more could overflow the loopback sockets' buffers (UDP).
        for wave in 0..10u32 {
            let mut tasks = tokio::task::JoinSet::new();
            for i in wave * 40..(wave + 1) * 40 {
                let pool = pool.clone();
                let id = u16::try_from(i).unwrap();
                tasks.spawn(async move {
                    let a = pool.exchange(addr, &query(id, ANSWER, i), id).await;
                    (i, a)
                });
            }
            while let Some(r) = tasks.join_next().await {
                let (i, a) = r.expect("task");
                let a = a.expect("answered");
                assert_eq!(tag(&a), i, "the answer of query {i}");
            }
        }
    });
    assert!(pool.sockets() <= SOCKETS_PER_RESOLVER);
    let distinct: BTreeSet<u16> = ports.lock().unwrap().iter().copied().collect();
    assert!(
        distinct.len() <= SOCKETS_PER_RESOLVER,
        "400 queries from {} ports (fewer than a rotation's worth each)",
        distinct.len()
    );
}

#[test]
fn two_pods_with_the_same_id_at_once_both_get_their_own_answer() {
    let (addr, ports) = resolver();
    let pool = Arc::new(UdpPool::new(Duration::from_secs(2)));
    rt().block_on(async {
        // More queries with id 7 in flight than sockets: the extra one gets a socket of its own.
        let n = u32::try_from(SOCKETS_PER_RESOLVER).unwrap() + 1;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let pool = pool.clone();
            tasks.spawn(async move { (i, pool.exchange(addr, &query(7, LATE, i), 7).await) });
        }
        // Let them all be sent (held by the resolver) before the one that releases them.
        while ports.lock().unwrap().len() < usize::try_from(n).unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let release = pool
            .exchange(addr, &query(8, ANSWER, 99), 8)
            .await
            .expect("answered");
        assert_eq!(tag(&release), 99);
        // The resolver sends one held answer per later query: release the rest one by one.
        let mut answered = HashMap::new();
        for k in 0..n {
            let a = pool
                .exchange(addr, &query(9, ANSWER, 100 + k), 9)
                .await
                .expect("answered");
            assert_eq!(tag(&a), 100 + k);
        }
        while let Some(r) = tasks.join_next().await {
            let (i, a) = r.expect("task");
            answered.insert(i, tag(&a.expect("answered")));
        }
        for i in 0..n {
            assert_eq!(answered[&i], i, "query {i} got another query's answer");
        }
    });
    let distinct: BTreeSet<u16> = ports.lock().unwrap().iter().copied().collect();
    assert!(
        distinct.len() > SOCKETS_PER_RESOLVER,
        "the id held on every pooled socket took a socket of its own"
    );
}

#[test]
fn ports_rotate_and_strays_and_lost_answers_change_nothing() {
    let (addr, ports) = resolver();
    let pool = Arc::new(UdpPool::new(Duration::from_millis(200)));
    rt().block_on(async {
        // A stray datagram with another id first: the query still gets its own answer.
        let a = pool
            .exchange(addr, &query(1, STRAY_FIRST, 5), 1)
            .await
            .expect("answered");
        assert_eq!(tag(&a), 5);
        // An unanswered query (the caller gives up) leaves its id free for the next one.
        let lost = tokio::time::timeout(
            Duration::from_millis(50),
            pool.exchange(addr, &query(2, SILENT, 6), 2),
        )
        .await;
        assert!(lost.is_err(), "no answer came");
        for round in 0..u32::try_from(SOCKETS_PER_RESOLVER).unwrap() {
            let a = pool
                .exchange(addr, &query(2, ANSWER, 7 + round), 2)
                .await
                .expect("the id is free again");
            assert_eq!(tag(&a), 7 + round);
        }
        // Enough queries for every socket to be replaced at least once. A query takes a
        // socket at random, so with ROTATE_MAX queries per socket on average one socket got
        // fewer than its life in about one run of 20 (CI saw 7 ports); twice that puts every
        // socket 26 standard deviations past the longest life.
        let total = 2 * ROTATE_MAX * u64::try_from(SOCKETS_PER_RESOLVER).unwrap() + 1;
        for i in 0..total {
            let id = u16::try_from(i % 60000).unwrap();
            let t = u32::try_from(i).unwrap();
            let a = pool
                .exchange(addr, &query(id, ANSWER, t), id)
                .await
                .expect("answered");
            assert_eq!(tag(&a), t);
        }
    });
    assert!(pool.sockets() <= SOCKETS_PER_RESOLVER);
    let distinct: BTreeSet<u16> = ports.lock().unwrap().iter().copied().collect();
    assert!(
        distinct.len() >= 2 * SOCKETS_PER_RESOLVER,
        "{} ports over {} queries: the sockets were not replaced",
        distinct.len(),
        ports.lock().unwrap().len()
    );
}
