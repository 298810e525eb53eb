//! Rows written from records against rows cut from the records' built flows: random events of
//! every kind, with and without names, Services, policies, interfaces, Ethernet headers, node
//! labels, on this node or another.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ciliate_model::l7::{HttpRecord, L7RecordType, L7Verdict};
use ciliate_model::monitor::{
    CtState, EthernetAddrs, EventKind, EventRecord, RecordL4, VerdictInfo,
};
use ciliate_model::policy::PolicyKind;
use ciliate_model::MacAddr;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

use crate::history::block;
use crate::l7_entry::{RecordedHttp, RulePolicies};
use crate::proto::flow::Flow;
use crate::record::{FlowIds, NodeNames, Recorded};
use crate::store::{EndpointInfo, ServiceRef, Snapshot};

/// Addresses the events use: two pods, a Service frontend, one unknown.
const ADDRS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 200, 0, 2),
    Ipv4Addr::new(10, 200, 0, 3),
    Ipv4Addr::new(10, 96, 0, 10),
    Ipv4Addr::new(192, 0, 2, 9),
];

fn store() -> Snapshot {
    let mut s = Snapshot::default();
    for (i, (ns, pod)) in [("default", "client"), ("prod", "web-1")]
        .iter()
        .enumerate()
    {
        let i = u32::try_from(i).expect("small");
        s.endpoints.insert(
            ADDRS[i as usize],
            EndpointInfo {
                id: 1 + i,
                identity: 256 + i,
                namespace: (*ns).into(),
                pod_name: (*pod).into(),
                labels: vec![format!("k8s:app={pod}"), "k8s:tier=front".into()],
            }
            .into(),
        );
    }
    s.identities.insert(2, vec!["reserved:world".into()]);
    let web = ServiceRef {
        namespace: "prod".into(),
        name: "web".into(),
    };
    s.frontends.insert((ADDRS[2], 80, 6), web.clone());
    s.frontends.insert((ADDRS[1], 53, 17), web.clone());
    s.rev_nats.insert(5, web);
    s.rules.insert(
        7,
        crate::policy_names::policy(
            PolicyKind::CiliumNetworkPolicy,
            Some("prod"),
            "web-allow",
            Some("1234-abcd"),
            3,
        ),
    );
    s.interfaces.insert(42, Arc::from("lxc1234"));
    s
}

fn any_l4() -> impl Strategy<Value = Option<RecordL4>> {
    prop_oneof![
        (prop::sample::select(vec![80u16, 40000, 53]), any::<u8>()).prop_map(|(dport, flags)| {
            Some(RecordL4::Tcp {
                sport: 40000,
                dport,
                flags,
            })
        }),
        Just(Some(RecordL4::Udp {
            sport: 5353,
            dport: 53
        })),
        (0u8..20, 0u8..20).prop_map(|(t, c)| Some(RecordL4::Icmp { r#type: t, code: c })),
        prop::sample::select(vec![132u8, 47]).prop_map(|p| Some(RecordL4::Other { proto: p })),
        Just(None),
    ]
}

prop_compose! {
    fn any_event()(
        kind in prop::sample::select(vec![EventKind::Trace, EventKind::Drop, EventKind::PolicyVerdict]),
        code in prop::sample::select(vec![0u8, 4, 5, 133, 181]),
        egress in proptest::option::of(any::<bool>()),
        match_type in 0u8..5,
        endpoint in 0u16..3,
        ifindex in prop::sample::select(vec![0u32, 42, 43]),
        identities in (prop::sample::select(vec![0u32, 2, 256, 257]), prop::sample::select(vec![0u32, 2, 256, 257])),
        ct in prop::sample::select(vec![CtState::Untracked, CtState::New, CtState::Established, CtState::Reply, CtState::Related]),
        ethertype in prop::sample::select(vec![0x0800u16, 0x0806, 0x86dd, 0x88cc]),
        addrs in (proptest::option::of(0usize..4), proptest::option::of(0usize..4)),
        l4 in any_l4(),
        rev_nat in prop::sample::select(vec![0u16, 5, 9]),
        rule in prop::sample::select(vec![0u32, 7, 8]),
        ethernet in proptest::option::of(any::<[u8; 6]>()),
        time in proptest::option::of(0u64..1_000_000),
    ) -> EventRecord {
        EventRecord {
            kind,
            time: time.map(|t| UNIX_EPOCH + Duration::from_micros(1_796_000_000_000_000 + t)),
            code,
            verdict: VerdictInfo { egress, match_type },
            endpoint,
            ifindex,
            src_identity: identities.0,
            dst_identity: identities.1,
            ct_state: ct,
            len: 74,
            ethertype,
            src: addrs.0.map(|i| ADDRS[i]),
            dst: addrs.1.map(|i| ADDRS[i]),
            l4,
            rev_nat,
            rule,
            ethernet: ethernet.map(|m| EthernetAddrs {
                source: MacAddr(m),
                destination: MacAddr([m[5], m[4], m[3], m[2], m[1], m[0]]),
            }),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_block_written_from_records_is_the_block_of_their_built_flows(
        events in proptest::collection::vec((any_event(), 0usize..3), 1..300),
    ) {
        let store = store();
        let node = |name: &str, labels: &[&str]| Arc::new(NodeNames {
            node_name: name.into(),
            cluster: "default".into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        });
        // This node with labels, with none, and another node.
        let nodes = [
            node("default/node-1", &["zone=a", "kubernetes.io/os=linux"]),
            node("default/node-1", &[]),
            node("default/node-2", &["zone=b"]),
        ];
        let ids = FlowIds::default();
        let records: Vec<Recorded> = events
            .into_iter()
            .map(|(ev, n)| Recorded::capture(ev, &store, &nodes[n], &ids))
            .collect();
        let built: Vec<Flow> = records.iter().map(Recorded::flow).collect();
        let from_flows: Vec<(u64, &Flow)> =
            built.iter().enumerate().map(|(i, f)| (i as u64 + 1, f)).collect();
        let from_records: Vec<(u64, block::Row<'_>)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, block::Row::Event(r)))
            .collect();
        let (meta, body) = block::encode(&from_flows, 3, "default/node-1");
        let (meta_r, body_r) =
            block::Encoder::default().encode_rows(&from_records, 3, "default/node-1");
        prop_assert_eq!(&meta_r, &meta);
        prop_assert!(body_r == body, "the same block, byte for byte");
        let d = block::decode(block::FORMAT, &meta_r, body_r).expect("decodes");
        for (i, f) in built.iter().enumerate() {
            prop_assert_eq!(&d.flow(i).expect("flow"), f, "flow {}", i);
        }
    }
}

#[test]
fn rows_of_records_are_those_cut_from_their_built_flows_field_by_field() {
    // One row at a time, so a difference names the event (the block test above compares
    // compressed chunks).
    let store = store();
    let node = Arc::new(NodeNames {
        node_name: "default/node-1".into(),
        cluster: "default".into(),
        labels: vec!["zone=a".into()],
    });
    let ids = FlowIds::default();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut writer = super::RowWriter::default();
    for _ in 0..2000 {
        let ev = any_event()
            .new_tree(&mut runner)
            .expect("an event")
            .current();
        let r = Recorded::capture(ev, &store, &node, &ids);
        let mut want = Vec::new();
        block::cut_columns(
            &r.flow(),
            "default/node-1",
            true,
            &mut Vec::new(),
            &mut want,
        );
        let mut got = Vec::new();
        writer.write(&r, "default/node-1", true, &mut got);
        assert_eq!(got, want, "{ev:?}");
    }
}

#[test]
fn addresses_are_written_as_their_display_writes_them() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..5000 {
        let (ip, mac) = (any::<u32>(), any::<[u8; 6]>())
            .new_tree(&mut runner)
            .expect("values")
            .current();
        let ip = Ipv4Addr::from(ip);
        let mut s = String::new();
        super::push_ipv4(ip, &mut s);
        assert_eq!(s, ip.to_string());
        s.clear();
        super::push_mac(mac, &mut s);
        assert_eq!(s, MacAddr(mac).to_string());
    }
    for n in [
        0,
        1,
        9,
        10,
        99,
        100,
        65_535,
        1_000_000,
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut s = String::new();
        super::push_u64(n, &mut s);
        assert_eq!(s, n.to_string());
    }
    for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.10.99.200"] {
        let mut s = String::new();
        super::push_ipv4(ip.parse().expect("ip"), &mut s);
        assert_eq!(s, ip);
    }
}

prop_compose! {
    fn any_http()(
        response in any::<bool>(),
        egress in any::<bool>(),
        verdict in prop::sample::select(vec![L7Verdict::Forwarded, L7Verdict::Dropped, L7Verdict::Error]),
        ends in (0usize..4, 0usize..4),
        ports in (prop::sample::select(vec![0u16, 80, 40000]), prop::sample::select(vec![0u16, 80, 8080])),
        identities in (prop::sample::select(vec![0u32, 2, 256, 257]), prop::sample::select(vec![0u32, 2, 256, 257])),
        rule in prop::sample::select(vec![0u32, 7, 8]),
        method in prop::sample::select(vec!["GET", "POST", "", "BREW"]),
        url in prop::sample::select(vec!["http://web/", "http://web/a/b?q=1&r=%20", "", "/ünïcode"]),
        protocol in prop::sample::select(vec!["HTTP/1.1", "HTTP/2", ""]),
        code in prop::sample::select(vec![0u16, 200, 403, 65535]),
        latency_ns in prop::sample::select(vec![0u64, 999_999, 1_000_000, 12_345_678_901, u64::MAX]),
        headers in proptest::collection::vec(
            (
                prop::sample::select(vec!["x-request-id", "X-REQUEST-ID", "host", "", "bad name", "a_b", "accept", "content-LENGTH"]),
                prop::sample::select(vec!["", "1", "web", "ä value"]),
            ),
            0..6,
        ),
        time_us in 0u64..1_000_000,
    ) -> HttpRecord {
        HttpRecord {
            time_ns: 1_796_000_000_000_000_000 + time_us * 1000,
            record_type: if response { L7RecordType::Response } else { L7RecordType::Request },
            endpoint: 1,
            egress,
            source: SocketAddrV4::new(ADDRS[ends.0], ports.0),
            destination: SocketAddrV4::new(ADDRS[ends.1], ports.1),
            source_identity: identities.0,
            destination_identity: identities.1,
            verdict,
            rule,
            method: method.into(),
            url: url.into(),
            protocol: protocol.into(),
            code,
            headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            latency_ns,
            reason: None,
        }
    }
}

/// An HTTP record's row as the writer cut it from the record's flow without names before rows
/// were written from frames: the flow filled, encoded and cut, then the node's labels and the
/// policy.
fn http_row_from_flow(r: &RecordedHttp, block_node: &str) -> Vec<u8> {
    let mut out = Vec::new();
    r.with_unnamed(&mut Flow::default(), |f| {
        block::cut_columns(f, block_node, true, &mut Vec::new(), &mut out);
    });
    prost::encoding::string::encode_repeated(37, r.node_labels(), &mut out);
    if let Some((field, policy)) = r.history_policy() {
        prost::encoding::message::encode(field, policy, &mut out);
    }
    out
}

#[test]
fn http_rows_written_from_frames_are_those_cut_from_their_flows() {
    // One row at a time, so a difference names the record; one writer for all (its buffers
    // reused from row to row, as in a block).
    let store = store();
    let node = |name: &str, labels: &[&str]| {
        Arc::new(NodeNames {
            node_name: name.into(),
            cluster: "default".into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        })
    };
    let nodes = [
        node("default/node-1", &["zone=a", "kubernetes.io/os=linux"]),
        node("default/node-1", &[]),
        node("default/node-2", &["zone=b"]),
    ];
    let ids = FlowIds::default();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut writer = super::RowWriter::default();
    let mut policies = RulePolicies::default();
    for i in 0..3000 {
        let record = any_http()
            .new_tree(&mut runner)
            .expect("a record")
            .current();
        let n = &nodes[i % nodes.len()];
        let r = RecordedHttp::capture_with(
            record.clone(),
            &store,
            n,
            &ids,
            &Arc::from(n.node_name.as_str()),
            &mut policies,
        );
        let mut got = Vec::new();
        assert!(writer.write_http(&r, "default/node-1", &mut got));
        assert_eq!(got, http_row_from_flow(&r, "default/node-1"), "{record:?}");
    }
}
