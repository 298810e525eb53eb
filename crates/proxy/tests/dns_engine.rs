//! The DNS proxy's handler without the network: judging queries (REFUSED, FORMERR, no
//! redirect), compiling `rules.dns` (a bad pattern is rejected with its place), the answer
//! gate, and property tests feeding random bytes and mutated valid messages to the parsers and
//! the whole handler (never a panic; every answer well-formed and carrying the query's id).
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ciliate_model::l7::{
    DnsMatch, FqdnAnswer, L7Parser, L7PeerRules, L7RecordType, L7Redirect, L7Verdict, ProxyCommand,
    ProxyEvent,
};
use ciliate_proxy::dns::gate::AnswerGate;
use ciliate_proxy::dns::message::{self, inspect_answer, inspect_query};
use ciliate_proxy::dns::{DnsConfig, DnsProxy, Flow, Transport, Upstream};
use ciliate_proxy::engine::{Counters, Engine, EngineConfig};
use ciliate_proxy::events::Outgoing;
use ciliate_proxy::identity::StaticIdentities;
use ciliate_proxy::policy::Policy;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;
use tokio::sync::mpsc;

const POD: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
/// Nothing answers here (the discard port on loopback): an allowed query fails upstream.
const RESOLVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn dns_redirect(rules: Vec<DnsMatch>) -> L7Redirect {
    L7Redirect {
        endpoint: 4,
        endpoint_ip: POD,
        egress: true,
        proto: 17,
        port: RESOLVER.port(),
        parser: L7Parser::Dns,
        proxy_port: 15053,
        rules: vec![L7PeerRules {
            peers: None,
            rule: 21,
            dns: rules,
            ..Default::default()
        }],
    }
}

fn name(n: &str) -> DnsMatch {
    DnsMatch {
        match_name: Some(n.into()),
        match_pattern: None,
    }
}

fn pattern(p: &str) -> DnsMatch {
    DnsMatch {
        match_name: None,
        match_pattern: Some(p.into()),
    }
}

/// A proxy whose policy allows `allowed.example.` and `*.ok.example.` for POD; records come
/// out of the receiver.
fn proxy() -> (DnsProxy, mpsc::Receiver<Outgoing>) {
    let (tx, rx) = mpsc::channel(1 << 16);
    let engine = Arc::new(Engine {
        policy: Arc::new(Policy::default()),
        identities: Arc::new(StaticIdentities::default()),
        events: tx.into(),
        config: EngineConfig::default(),
        counters: Counters::default(),
    });
    engine
        .policy
        .apply(&ProxyCommand::Snapshot {
            revision: 1,
            redirects: vec![dns_redirect(vec![
                name("allowed.example"),
                pattern("*.ok.example"),
            ])],
        })
        .expect("valid rules");
    let p = DnsProxy {
        engine,
        gate: Arc::new(AnswerGate::default()),
        config: DnsConfig {
            upstream_timeout: Duration::from_millis(200),
            allow_timeout: Duration::from_millis(10),
            transparent: false,
        },
        peers: Default::default(),
    };
    (p, rx)
}

fn flow(transport: Transport) -> Flow {
    Flow {
        client: SocketAddrV4::new(POD, 40000),
        resolver: RESOLVER,
        transport,
    }
}

fn query(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(qname).expect("name"), qtype));
    m.to_vec().expect("encode")
}

fn handle(p: &DnsProxy, bytes: &[u8], t: Transport) -> Option<Vec<u8>> {
    rt().block_on(p.handle(bytes, flow(t), &mut Upstream::default()))
}

fn records(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<ciliate_model::l7::DnsRecord> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Ok(ProxyEvent::Dns(r)) = ev.into_event() {
            out.push(*r);
        }
    }
    out
}

#[test]
fn a_name_no_rule_allows_is_refused_with_the_same_id_and_question() {
    let (p, mut rx) = proxy();
    let q = query(0xbeef, "Evil.Example.", RecordType::A);
    let a = handle(&p, &q, Transport::Udp).expect("an answer");
    let m = Message::from_vec(&a).expect("well-formed");
    assert_eq!(m.id(), 0xbeef);
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.response_code(), ResponseCode::Refused);
    assert_eq!(m.queries().len(), 1);
    assert_eq!(m.queries()[0].name().to_ascii(), "Evil.Example.");
    let recs = records(&mut rx);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0].record_type, L7RecordType::Request);
    assert_eq!(recs[0].query, "evil.example.", "lower-case, trailing dot");
    assert_eq!(recs[0].qtypes, ["A"]);
    assert_eq!(recs[1].verdict, L7Verdict::Dropped);
    assert_eq!(recs[1].rcode, 5);
    assert_eq!(recs[1].endpoint, 4);
    assert_eq!(
        p.engine
            .counters
            .denied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn an_allowed_name_whose_resolver_fails_gets_servfail_and_an_error_record() {
    let (p, mut rx) = proxy();
    for (qname, t) in [
        ("allowed.example.", Transport::Udp),
        ("a.ok.example.", Transport::Tcp),
    ] {
        let a = handle(&p, &query(7, qname, RecordType::A), t).expect("an answer");
        let m = Message::from_vec(&a).expect("well-formed");
        assert_eq!((m.id(), m.response_code()), (7, ResponseCode::ServFail));
        let recs = records(&mut rx);
        assert_eq!(recs[0].verdict, L7Verdict::Forwarded, "allowed: {qname}");
        assert_eq!(recs[0].rule, 21);
        assert_eq!(recs[1].verdict, L7Verdict::Error);
        assert!(recs[1].reason.is_some());
    }
    // '*' stays within a label.
    let a = handle(
        &p,
        &query(8, "a.b.ok.example.", RecordType::A),
        Transport::Udp,
    )
    .unwrap();
    assert_eq!(
        Message::from_vec(&a).unwrap().response_code(),
        ResponseCode::Refused
    );
}

#[test]
fn a_pod_without_a_dns_redirect_is_refused() {
    let (p, mut rx) = proxy();
    let f = Flow {
        client: SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 3), 40000),
        ..flow(Transport::Udp)
    };
    let a = rt()
        .block_on(p.handle(
            &query(1, "allowed.example.", RecordType::A),
            f,
            &mut Upstream::default(),
        ))
        .unwrap();
    assert_eq!(
        Message::from_vec(&a).unwrap().response_code(),
        ResponseCode::Refused
    );
    let recs = records(&mut rx);
    assert_eq!(
        recs[0].reason.as_deref(),
        Some("no DNS redirect for this endpoint and port")
    );
}

#[test]
fn bad_queries_get_formerr_or_nothing_and_an_error_record() {
    let (p, mut rx) = proxy();
    let formerr = |a: Option<Vec<u8>>, id: u16| {
        let a = a.expect("an answer");
        assert_eq!(a[..2], id.to_be_bytes());
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[3] & 0x0f, 1, "FORMERR");
    };
    // Too short for a header: nothing to answer.
    assert_eq!(handle(&p, &[1, 2, 3], Transport::Udp), None);
    // Garbage after a header.
    formerr(
        handle(
            &p,
            &[0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0],
            Transport::Udp,
        ),
        9,
    );
    // Two questions.
    let mut m = Message::new();
    m.set_id(10);
    m.add_query(Query::query(
        Name::from_ascii("a.example.").unwrap(),
        RecordType::A,
    ));
    m.add_query(Query::query(
        Name::from_ascii("b.example.").unwrap(),
        RecordType::A,
    ));
    formerr(handle(&p, &m.to_vec().unwrap(), Transport::Udp), 10);
    // A name with a byte host names do not use.
    let odd = Name::from_labels(vec![b"a b".to_vec(), b"example".to_vec()]).unwrap();
    let mut m = Message::new();
    m.set_id(11);
    m.add_query(Query::query(odd, RecordType::A));
    formerr(handle(&p, &m.to_vec().unwrap(), Transport::Udp), 11);
    // Over 512 bytes on UDP without EDNS (a long name padded with a second, additional
    // record), but fine over TCP.
    let mut m = Message::new();
    m.set_id(12);
    let long = format!("{}.example.", vec!["x".repeat(60); 3].join("."));
    m.add_query(Query::query(
        Name::from_ascii(&long).unwrap(),
        RecordType::A,
    ));
    for i in 0..8 {
        let n = Name::from_ascii(format!("{i}{}.example.", "y".repeat(60))).unwrap();
        m.add_additional(Record::from_rdata(n, 1, RData::A(A::new(192, 0, 2, 1))));
    }
    let big = m.to_vec().unwrap();
    assert!(big.len() > 512, "{}", big.len());
    formerr(handle(&p, &big, Transport::Udp), 12);
    let over_tcp = handle(&p, &big, Transport::Tcp).unwrap();
    assert_eq!(
        Message::from_vec(&over_tcp).unwrap().response_code(),
        ResponseCode::Refused,
        "judged (and refused: not an allowed name)"
    );
    // A response is not a query.
    let mut m = Message::new();
    m.set_id(13).set_message_type(MessageType::Response);
    m.add_query(Query::query(
        Name::from_ascii("a.example.").unwrap(),
        RecordType::A,
    ));
    formerr(handle(&p, &m.to_vec().unwrap(), Transport::Udp), 13);

    let errors: Vec<_> = records(&mut rx)
        .into_iter()
        .filter(|r| r.verdict == L7Verdict::Error && r.record_type == L7RecordType::Request)
        .map(|r| r.reason.unwrap_or_default())
        .collect();
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert!(
        errors[0].contains("shorter than a DNS header"),
        "{errors:?}"
    );
    assert!(errors[1].contains("malformed"), "{errors:?}");
    assert!(errors[2].contains("2 questions"), "{errors:?}");
    assert!(errors[3].contains("0x20"), "{errors:?}");
    assert!(errors[4].contains("without EDNS"), "{errors:?}");
    assert!(errors[5].contains("not a query"), "{errors:?}");
}

#[test]
fn an_invalid_dns_rule_is_rejected_with_its_place_and_nothing_changes() {
    let (p, _rx) = proxy();
    let err = p
        .engine
        .policy
        .apply(&ProxyCommand::Snapshot {
            revision: 2,
            redirects: vec![dns_redirect(vec![name("fine.example"), pattern("**.bad")])],
        })
        .expect_err("** is not a pattern");
    let msg = err.to_string();
    assert!(
        msg.contains("rules[0].dns[1].matchPattern") && msg.contains("'**'"),
        "{msg}"
    );
    assert_eq!(p.engine.policy.current().revision, 1);
}

fn answer(id: u16, qname: &str, records: Vec<Record>, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_response_code(rcode);
    m.add_query(Query::query(
        Name::from_ascii(qname).unwrap(),
        RecordType::A,
    ));
    m.add_answers(records);
    m.to_vec().unwrap()
}

fn a_rec(n: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(
        Name::from_ascii(n).unwrap(),
        ttl,
        RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
    )
}

fn cname_rec(n: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(
        Name::from_ascii(n).unwrap(),
        ttl,
        RData::CNAME(CNAME(Name::from_ascii(target).unwrap())),
    )
}

#[test]
fn answers_follow_the_cname_chain_with_its_lowest_ttl_and_ignore_other_names() {
    let bytes = answer(
        5,
        "www.example.",
        vec![
            cname_rec("WWW.example.", 300, "edge.cdn.example."),
            cname_rec("edge.cdn.example.", 60, "node1.cdn.example."),
            a_rec("node1.cdn.example.", 120, [192, 0, 2, 1]),
            a_rec("node1.cdn.example.", 90, [192, 0, 2, 2]),
            a_rec("unrelated.example.", 5, [198, 51, 100, 1]),
        ],
        ResponseCode::NoError,
    );
    let info = inspect_answer(&bytes, "www.example.").unwrap();
    assert_eq!(info.id, 5);
    assert_eq!(info.cnames, ["edge.cdn.example.", "node1.cdn.example."]);
    assert_eq!(
        info.ips,
        [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]
    );
    assert_eq!(info.ttl, 60);
    assert_eq!(info.rrtypes, ["CNAME", "A"]);
    // A CNAME loop ends.
    let looped = answer(
        6,
        "a.example.",
        vec![
            cname_rec("a.example.", 10, "b.example."),
            cname_rec("b.example.", 10, "a.example."),
        ],
        ResponseCode::NoError,
    );
    let info = inspect_answer(&looped, "a.example.").unwrap();
    assert_eq!(info.cnames, ["b.example."]);
    assert!(info.ips.is_empty());
    let nx = answer(7, "nx.example.", vec![], ResponseCode::NXDomain);
    assert_eq!(inspect_answer(&nx, "nx.example.").unwrap().rcode, 3);
}

#[test]
fn the_gate_releases_on_fqdn_allowed_or_after_its_limit() {
    rt().block_on(async {
        let g = AnswerGate::default();
        let t = g.ticket();
        assert!(g.release(t.id));
        assert!(
            g.wait(t, Duration::from_secs(30), 1, &[]).await,
            "released by the agent"
        );
        let t = g.ticket();
        let id = t.id;
        assert!(
            !g.wait(t, Duration::from_millis(1), 1, &[]).await,
            "released by the limit"
        );
        assert!(!g.release(id), "a late FqdnAllowed finds nothing");
        assert_eq!(g.held(), 0);
    });
}

/// A resolver on loopback answering every A query with 192.0.2.1 (TTL 77): only to drive the
/// hold path here; the proxy against a real resolver is tests/dns.rs.
fn loopback_resolver() -> SocketAddrV4 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = match s.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        std::net::SocketAddr::V6(_) => unreachable!("bound to v4"),
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let qname = q.queries()[0].name().to_ascii();
            let a = answer(
                q.id(),
                &qname,
                vec![a_rec(&qname, 77, [192, 0, 2, 1])],
                ResponseCode::NoError,
            );
            let _ = s.send_to(&a, from);
        }
    });
    addr
}

#[test]
fn an_answer_with_addresses_waits_for_fqdn_allowed_or_the_limit_and_the_limit_is_counted() {
    let resolver = loopback_resolver();
    for released_by_agent in [true, false] {
        let (mut p, mut rx) = proxy();
        let mut r = dns_redirect(vec![name("allowed.example")]);
        r.port = resolver.port();
        p.engine
            .policy
            .apply(&ProxyCommand::Snapshot {
                revision: 2,
                redirects: vec![r],
            })
            .expect("rules");
        p.config.allow_timeout = if released_by_agent {
            Duration::from_secs(60)
        } else {
            Duration::from_millis(1)
        };
        let f = Flow {
            resolver,
            ..flow(Transport::Udp)
        };
        let q = query(31, "allowed.example.", RecordType::A);
        let a = rt().block_on(async {
            let gate = p.gate.clone();
            let agent = tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if let Ok(ProxyEvent::FqdnLearned(l)) = ev.into_event() {
                        if released_by_agent {
                            assert!(gate.release(l.id));
                        }
                        return *l;
                    }
                }
                panic!("no FqdnLearned");
            });
            let a = p.handle(&q, f, &mut Upstream::default()).await;
            let learned = agent.await.expect("agent");
            assert_eq!(learned.names.len(), 1);
            assert_eq!(learned.names[0].name, "allowed.example.");
            assert_eq!(learned.names[0].ips, [Ipv4Addr::new(192, 0, 2, 1)]);
            assert_eq!(learned.names[0].ttl, 77);
            a
        });
        let m = Message::from_vec(&a.expect("an answer")).expect("well-formed");
        assert_eq!(
            (m.id(), m.answers().len()),
            (31, 1),
            "the resolver's answer, unchanged"
        );
        let timeouts = p
            .engine
            .counters
            .dns_allow_timeouts
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(timeouts, u64::from(!released_by_agent));
    }
}

/// An answer whose addresses the agent confirmed for the endpoint goes out without waiting
/// (the agent still hears of it); once the proxy forgets (a Snapshot or the endpoint's policy
/// changed), the same answer is held again.
#[test]
fn an_answer_the_agent_confirmed_already_is_not_held_until_forgotten() {
    let resolver = loopback_resolver();
    let (mut p, mut rx) = proxy();
    let mut r = dns_redirect(vec![name("allowed.example")]);
    r.port = resolver.port();
    let endpoint = r.endpoint;
    p.engine
        .policy
        .apply(&ProxyCommand::Snapshot {
            revision: 2,
            redirects: vec![r],
        })
        .expect("rules");
    // Long enough that a held answer can only have been released by the agent below.
    p.config.allow_timeout = Duration::from_secs(60);
    let f = Flow {
        resolver,
        ..flow(Transport::Udp)
    };
    let held: Vec<bool> = rt().block_on(async {
        let gate = p.gate.clone();
        // The agent: confirms every FqdnLearned and says whether an answer waited for it.
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let agent = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let Ok(ProxyEvent::FqdnLearned(l)) = ev.into_event() {
                    let _ = seen_tx.send((l.endpoint, gate.release(l.id)));
                }
            }
        });
        let mut held = Vec::new();
        for step in 0..4u16 {
            match step {
                2 => p.gate.forget_endpoint(endpoint),
                3 => p.gate.forget_all(),
                _ => {}
            }
            let q = query(40 + step, "allowed.example.", RecordType::A);
            let a = p.handle(&q, f, &mut Upstream::default()).await;
            let m = Message::from_vec(&a.expect("an answer")).expect("well-formed");
            assert_eq!((m.id(), m.answers().len()), (40 + step, 1));
            let (ep, waited) = seen.recv().await.expect("the agent heard of the answer");
            assert_eq!(ep, endpoint);
            held.push(waited);
        }
        agent.abort();
        held
    });
    assert_eq!(
        held,
        [true, false, true, true],
        "held, then not (confirmed), then held after each forget"
    );
    assert_eq!(
        p.engine
            .counters
            .dns_allow_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// What counts as confirmed: every address of every name, for that endpoint, within its TTL;
/// a confirmation of an answer sent before a forget is not remembered.
#[test]
fn confirmations_count_per_endpoint_address_and_ttl() {
    use ciliate_proxy::dns::acked::AckedAnswers;
    use std::time::Instant;
    let ip1 = Ipv4Addr::new(192, 0, 2, 1);
    let ip2 = Ipv4Addr::new(192, 0, 2, 2);
    let ans = |ips: Vec<Ipv4Addr>, ttl| {
        vec![FqdnAnswer {
            name: "a.example.".into(),
            ips,
            ttl,
        }]
    };
    let now = Instant::now();
    let mut m = AckedAnswers::default();
    m.remember(7, &ans(vec![ip1], 300), now, m.generation());
    assert!(m.covers(7, &ans(vec![ip1], 300), now));
    assert!(!m.covers(8, &ans(vec![ip1], 300), now), "another endpoint");
    assert!(
        !m.covers(7, &ans(vec![ip1, ip2], 300), now),
        "a new address"
    );
    assert!(
        !m.covers(7, &ans(vec![ip1], 300), now + Duration::from_secs(3600)),
        "stale"
    );
    assert!(!m.covers(7, &ans(vec![], 300), now), "nothing to confirm");

    let mut m = AckedAnswers::default();
    m.remember(7, &ans(vec![ip1], 1), now, m.generation());
    assert!(
        !m.covers(7, &ans(vec![ip1], 1), now),
        "a TTL of a second is never trusted"
    );

    let mut m = AckedAnswers::default();
    let before = m.generation();
    m.forget_all();
    m.remember(7, &ans(vec![ip1], 300), now, before);
    assert!(
        !m.covers(7, &ans(vec![ip1], 300), now),
        "confirmed across a forget"
    );

    // The FqdnAllowed of an answer sent at once renews its names (nothing was held for it).
    let g = AnswerGate::default();
    let id = g.renewal(7, ans(vec![ip1], 300));
    assert!(!g.confirmed(7, &ans(vec![ip1], 300)));
    assert!(!g.release(id), "no answer waited");
    assert!(g.confirmed(7, &ans(vec![ip1], 300)), "renewed");
    let id = g.renewal(7, ans(vec![ip2], 300));
    g.forget_endpoint(7);
    assert!(!g.release(id));
    assert!(
        !g.confirmed(7, &ans(vec![ip2], 300)),
        "a renewal across a forget counts not"
    );
}

/// A name answered on the fast path is told to the agent at most once per RENEW_EVERY, except
/// when an answer's TTL reaches further than the agent was told by more than that; a name
/// never confirmed, or forgotten, is always told.
#[test]
fn fast_path_answers_are_told_to_the_agent_once_a_second_per_name() {
    use ciliate_proxy::dns::acked::{AckedAnswers, RENEW_EVERY};
    use std::time::Instant;
    let ip = Ipv4Addr::new(192, 0, 2, 1);
    let ans = |name: &str, ttl| {
        vec![FqdnAnswer {
            name: name.into(),
            ips: vec![ip],
            ttl,
        }]
    };
    let now = Instant::now();
    let mut m = AckedAnswers::default();
    assert!(
        m.renewal_due(7, &ans("a.example.", 300), now),
        "never confirmed"
    );
    m.remember(7, &ans("a.example.", 300), now, m.generation());
    m.remember(7, &ans("b.example.", 300), now, m.generation());
    assert!(
        m.renewal_due(7, &ans("a.example.", 300), now),
        "first telling"
    );
    let soon = now + RENEW_EVERY / 2;
    assert!(
        !m.renewal_due(7, &ans("a.example.", 300), soon),
        "told just now"
    );
    assert!(
        !m.renewal_due(7, &ans("a.example.", 299), soon),
        "a resolver's TTL counting down"
    );
    assert!(
        m.renewal_due(7, &ans("a.example.", 302), soon),
        "a TTL reaching more than RENEW_EVERY further"
    );
    assert!(
        m.renewal_due(7, &ans("b.example.", 300), soon),
        "another name"
    );
    assert!(
        m.renewal_due(8, &ans("a.example.", 300), soon),
        "another endpoint"
    );
    assert!(
        m.renewal_due(7, &ans("a.example.", 300), soon + RENEW_EVERY),
        "a second later"
    );
    m.forget_endpoint(7);
    assert!(
        m.renewal_due(7, &ans("a.example.", 300), soon + RENEW_EVERY),
        "forgotten"
    );
}

fn valid_messages() -> Vec<Vec<u8>> {
    vec![
        query(1, "allowed.example.", RecordType::A),
        query(2, "x.ok.example.", RecordType::AAAA),
        query(3, "denied.example.", RecordType::A),
        answer(
            4,
            "www.example.",
            vec![
                cname_rec("www.example.", 300, "a.example."),
                a_rec("a.example.", 30, [192, 0, 2, 9]),
            ],
            ResponseCode::NoError,
        ),
    ]
}

/// A valid message with random edits: bytes flipped, cut, inserted.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..valid_messages().len(),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(|(which, edits)| {
            let mut m = valid_messages()[which].clone();
            for (at, b, op) in edits {
                if m.is_empty() {
                    break;
                }
                let i = at % m.len();
                match op {
                    0 => m[i] = b,
                    1 => m.truncate(i),
                    _ => m.insert(i, b),
                }
            }
            m
        })
}

/// Checks what the handler answered to `bytes`: nothing only without a header; otherwise a
/// response with the query's id.
fn check_answer(bytes: &[u8], answer: Option<Vec<u8>>) -> Result<(), TestCaseError> {
    match answer {
        None => prop_assert!(bytes.len() < 12, "no answer to {bytes:?}"),
        Some(a) => {
            prop_assert!(a.len() >= 12);
            prop_assert_eq!(&a[..2], &bytes[..2], "the query's id");
            prop_assert_eq!(a[2] & 0x80, 0x80, "a response");
            if a.len() > 12 {
                prop_assert!(Message::from_vec(&a).is_ok(), "well-formed: {:?}", a);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Random bytes: the parsers never panic, a query they accept has a clean name.
    #[test]
    fn random_bytes_never_break_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..600), udp in any::<bool>()) {
        if let Ok((_, info)) = inspect_query(&bytes, udp) {
            prop_assert!(info.name.ends_with('.'));
            prop_assert!(info.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
        }
        let _ = inspect_answer(&bytes, "a.example.");
        let _ = message::header_id(&bytes);
    }

    /// Mutated valid messages through the parsers: no panic; addresses only of the chain.
    #[test]
    fn mutated_messages_never_break_the_parsers(bytes in mutated()) {
        let _ = inspect_query(&bytes, true);
        if let Ok(info) = inspect_answer(&bytes, "www.example.") {
            prop_assert!(info.ips.len() <= 1);
            prop_assert!(info.cnames.len() <= 1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// The whole handler on random bytes and mutated queries, over UDP and TCP: never a
    /// panic, and every answer is a response with the query's id.
    #[test]
    fn the_handler_answers_anything_sanely(
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), mutated()],
        tcp in any::<bool>(),
    ) {
        let (p, _rx) = proxy();
        let t = if tcp { Transport::Tcp } else { Transport::Udp };
        let a = handle(&p, &bytes, t);
        check_answer(&bytes, a)?;
    }
}

/// DNS over TCP on a listener of the test (the pod's connection as the proxy accepts it):
/// several length-prefixed queries on one connection answered in order, then a message cut
/// short: an error record, the connection closed.
#[test]
fn tcp_answers_several_queries_per_connection_and_reports_a_truncated_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rt().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (mut p, mut rx) = proxy();
        let mut r = dns_redirect(vec![name("allowed.example")]);
        r.endpoint_ip = Ipv4Addr::LOCALHOST;
        r.port = port;
        r.proto = 6;
        p.engine
            .policy
            .apply(&ProxyCommand::Snapshot {
                revision: 2,
                redirects: vec![r],
            })
            .expect("rules");
        p.config.upstream_timeout = Duration::from_millis(100);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(ciliate_proxy::dns::tcp::serve(
            Arc::new(p),
            listener,
            stop_rx,
        ));
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut framed = Vec::new();
        for id in [41u16, 42] {
            let q = query(id, "denied.example.", RecordType::A);
            framed.extend_from_slice(&u16::try_from(q.len()).unwrap().to_be_bytes());
            framed.extend_from_slice(&q);
        }
        // Both queries in one write: answered one after the other.
        c.write_all(&framed).await.expect("write");
        for id in [41u16, 42] {
            let mut len = [0u8; 2];
            c.read_exact(&mut len).await.expect("length");
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            c.read_exact(&mut body).await.expect("body");
            let m = Message::from_vec(&body).expect("well-formed");
            assert_eq!((m.id(), m.response_code()), (id, ResponseCode::Refused));
        }
        // A length of 300 and 10 bytes, then the end of the stream.
        c.write_all(&[0x01, 0x2c]).await.expect("write");
        c.write_all(&[0u8; 10]).await.expect("write");
        c.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("closed");
        assert!(rest.is_empty(), "no answer to a truncated message");
        let mut truncated = None;
        while let Ok(ev) = rx.try_recv() {
            if let Ok(ProxyEvent::Dns(r)) = ev.into_event() {
                if r.verdict == L7Verdict::Error {
                    truncated = r.reason;
                }
            }
        }
        assert_eq!(
            truncated.as_deref(),
            Some("truncated TCP message: the length says 300 bytes")
        );
        stop_tx.send(true).expect("stop");
        server.await.expect("server");
    });
}
