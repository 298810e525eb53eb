use std::net::{Ipv4Addr, SocketAddrV4};

use ciliate_model::l7::{DnsRecord, L7RecordType, L7Verdict};

use super::*;
use crate::convert::tests::store as pods;
use crate::Snapshot;

/// The pods of `convert`'s tests, and the policy of rule 3 (the one `request()` names).
fn store() -> Snapshot {
    let mut s = pods();
    s.rules.insert(
        3,
        Policy {
            name: "web-allow".into(),
            namespace: "prod".into(),
            labels: vec![
                "k8s:io.cilium.k8s.policy.name=web-allow".into(),
                "k8s:io.cilium.k8s.policy.namespace=prod".into(),
            ],
            revision: 7,
            kind: "CiliumNetworkPolicy".into(),
        },
    );
    s
}
use crate::history::block;
use crate::l7::http_to_flow;
use crate::l7::tests::{request, response};

fn node() -> Arc<NodeNames> {
    Arc::new(NodeNames {
        node_name: "default/node-a".into(),
        cluster: "default".into(),
        labels: vec!["zone=a".into(), "kubernetes.io/os=linux".into()],
    })
}

/// The flow as the observer built it at once before records were kept unnamed: named now,
/// then given the record's id, the node's labels and the cluster's names.
fn built_at_once(record: &HttpRecord, r: &RecordedHttp, node: &NodeNames) -> Flow {
    let mut f = http_to_flow(record, &store(), "default/node-a");
    f.uuid = r.uuid().to_string();
    f.node_labels.clone_from(&node.labels);
    crate::convert::finish_flow(&mut f, &node.cluster);
    f
}

/// A request from outside the cluster (no pod: the identity's labels), refused.
fn from_outside() -> HttpRecord {
    HttpRecord {
        source: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 5555),
        source_identity: 2,
        verdict: L7Verdict::Dropped,
        ..request()
    }
}

/// A record unlike `r` in every field the flow shows: the other type, other headers (more of
/// them, or none), another URL, a Service at its ends.
fn other(r: &HttpRecord) -> HttpRecord {
    let mut o = if r.record_type == L7RecordType::Request {
        response()
    } else {
        request()
    };
    o.url = format!("{}/longer/than/before?q=1", r.url);
    if r.headers.is_empty() {
        o.headers = vec![
            ("b-two".into(), "2".into()),
            ("a-one".into(), "1".into()),
            ("x".into(), "3".into()),
        ];
    } else {
        o.headers.clear();
    }
    o.egress = !r.egress;
    // A Service's frontend as the server (the store's `web` on port 80).
    o.destination = SocketAddrV4::new(crate::convert::tests::VIP, 80);
    o
}

#[test]
fn a_kept_record_reads_as_the_flow_built_at_once() {
    let (store, node, ids) = (store(), node(), FlowIds::default());
    for record in [
        request(),
        response(),
        from_outside(),
        other(&request()),
        other(&response()),
    ] {
        let r = RecordedHttp::capture(record.clone(), &store, &node, &ids, "default/node-a");
        let flow = r.flow();
        assert_eq!(flow, built_at_once(&record, &r, &node));
        assert!(flow.source.is_some() && flow.destination.is_some());
        assert!(!flow.uuid.is_empty());
        // Allowed flows name the policy of their rule; the refused one none.
        let forwarded = record.verdict == L7Verdict::Forwarded;
        assert_eq!(
            flow.ingress_allowed_by.len() + flow.egress_allowed_by.len(),
            usize::from(forwarded),
            "{flow:?}"
        );
        // What the metrics count from is the same flow but for its names and policy.
        let unnamed = Flow {
            source: None,
            destination: None,
            node_labels: Vec::new(),
            uuid: String::new(),
            ingress_allowed_by: Vec::new(),
            egress_allowed_by: Vec::new(),
            ..flow.clone()
        };
        assert_eq!(r.unnamed(), unnamed);
        // Filled in place over another record's flow, the same.
        let mut reused =
            RecordedHttp::capture(other(&record), &store, &node, &ids, "default/node-a").unnamed();
        r.fill_unnamed(&mut reused);
        assert_eq!(reused, unnamed);
    }
}

#[test]
fn the_records_of_a_batch_share_their_rules_policy() {
    let (store, node, ids) = (store(), node(), FlowIds::default());
    let mut policies = RulePolicies::default();
    let name: Arc<str> = Arc::from("default/node-a");
    let ingress = HttpRecord {
        egress: false,
        ..request()
    };
    let kept: Vec<RecordedHttp> = [request(), response(), ingress.clone(), request()]
        .into_iter()
        .map(|r| RecordedHttp::capture_with(r, &store, &node, &ids, &name, &mut policies))
        .collect();
    for (r, record) in kept.iter().zip([request(), response(), ingress, request()]) {
        assert_eq!(r.flow(), built_at_once(&record, r, &node));
    }
    let shared = |r: &RecordedHttp| r.history_policy().map(|(_, p)| p as *const Policy);
    assert!(shared(&kept[0]).is_some());
    assert_eq!(shared(&kept[0]), shared(&kept[3]), "one copy per batch");
    // A rule the store does not know names no policy.
    let unknown = RecordedHttp::capture_with(
        HttpRecord {
            rule: 99,
            ..request()
        },
        &store,
        &node,
        &ids,
        &name,
        &mut policies,
    );
    assert!(unknown.history_policy().is_none());
    assert!(unknown.flow().egress_allowed_by.is_empty());
}

#[test]
fn a_pod_renamed_later_keeps_the_names_it_had() {
    let (store, node, ids) = (store(), node(), FlowIds::default());
    let r = RecordedHttp::capture(request(), &store, &node, &ids, "default/node-a");
    drop(store);
    let f = r.flow();
    assert_eq!(f.source.expect("source").pod_name, "client");
    assert_eq!(f.destination.expect("destination").pod_name, "web-1");
}

#[test]
fn a_block_written_from_kept_records_holds_their_flows() {
    let (store, node, ids) = (store(), node(), FlowIds::default());
    let ingress = HttpRecord {
        egress: false,
        ..response()
    };
    let records: Vec<RecordedHttp> = [request(), response(), from_outside(), request(), ingress]
        .into_iter()
        .map(|r| RecordedHttp::capture(r, &store, &node, &ids, "default/node-a"))
        .collect();
    let built: Vec<Flow> = records.iter().map(RecordedHttp::flow).collect();
    let rows: Vec<(u64, block::Row<'_>)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u64 + 1, block::Row::Http(r)))
        .collect();
    let (meta_r, body_r) = block::Encoder::default().encode_rows(&rows, 3, "default/node-a");
    let from_flows: Vec<(u64, &Flow)> = built
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64 + 1, f))
        .collect();
    let (meta, _) = block::encode(&from_flows, 3, "default/node-a");
    assert_eq!(meta_r, meta, "the same meta (times, pods, endpoints)");
    let d = block::decode(block::FORMAT, &meta_r, body_r).expect("decodes");
    for (i, f) in built.iter().enumerate() {
        assert_eq!(&d.flow(i).expect("flow"), f, "flow {i}");
    }
}

#[test]
fn a_kept_dns_record_reads_as_the_flow_built_at_once_with_an_id() {
    use crate::dns::dns_to_flow;
    use crate::dns::tests::{answer, query};
    let (store, node, ids) = (store(), node(), FlowIds::default());
    let mut policies = RulePolicies::default();
    // Rule 3 has a policy in the store, rule 4 none; a refused query carries none.
    let allowed = DnsRecord { rule: 3, ..query() };
    let refused = DnsRecord {
        verdict: L7Verdict::Dropped,
        rule: 0,
        ..query()
    };
    for record in [query(), answer(), allowed.clone(), refused] {
        let frame = ciliate_model::l7_wire::DnsFrame::of_record(&record);
        let r = RecordedHttp::capture_dns_with(
            &frame.view(),
            &store,
            &node,
            &ids,
            "default/node-a",
            &mut policies,
        );
        let mut at_once = dns_to_flow(&record, &store, "default/node-a");
        at_once.uuid = r.uuid().to_string();
        at_once.node_labels.clone_from(&node.labels);
        crate::convert::finish_flow(&mut at_once, &node.cluster);
        let flow = r.flow();
        assert_eq!(flow, at_once);
        assert!(!flow.uuid.is_empty());
        assert_eq!(
            flow.egress_allowed_by.len(),
            usize::from(record.rule == allowed.rule),
            "{flow:?}"
        );
        assert!(
            crate::l7::dns(&r.unnamed()).is_some(),
            "the metrics see the DNS record"
        );
    }
}

#[test]
fn the_metrics_count_a_kept_record_as_they_count_its_flow() {
    let (store, node, ids) = (store(), node(), FlowIds::default());
    let (from_flows, from_records) = (Metrics::default(), Metrics::default());
    for base in [
        request(),
        response(),
        from_outside(),
        other(&request()),
        other(&response()),
    ] {
        for verdict in [L7Verdict::Forwarded, L7Verdict::Dropped, L7Verdict::Error] {
            for (egress, method, code, latency_ns) in [
                (false, "GET", 200, 1_500_000),
                (true, "POST", 403, 0),
                (true, "", 0, 7_000_000_000),
                (false, "BREW", 418, u64::MAX),
            ] {
                let record = HttpRecord {
                    verdict,
                    egress,
                    method: method.into(),
                    code,
                    latency_ns,
                    ..base.clone()
                };
                let r = RecordedHttp::capture_frame(
                    HttpFrame::of_record(&record),
                    &store,
                    &node,
                    &ids,
                    &Arc::from("default/node-a"),
                    &mut RulePolicies::default(),
                    Some(&from_records),
                );
                from_flows.record(&r.unnamed());
            }
        }
    }
    // A DNS record is counted from its flow (as the observer counts it).
    let dns = crate::dns::tests::answer();
    let frame = ciliate_model::l7_wire::DnsFrame::of_record(&dns);
    let r = RecordedHttp::capture_dns_with(
        &frame.view(),
        &store,
        &node,
        &ids,
        "default/node-a",
        &mut RulePolicies::default(),
    );
    from_flows.record(&r.unnamed());
    from_records.record(&r.unnamed());
    let rendered = from_records.render();
    assert_eq!(rendered, from_flows.render());
    for family in [
        "hubble_http_requests_total{",
        "hubble_http_responses_total{",
        "hubble_http_request_duration_seconds_bucket{",
        "hubble_flows_processed_total{",
        "hubble_drop_total{",
        "hubble_dns_responses_total{",
    ] {
        assert!(rendered.contains(family), "{family} in {rendered}");
    }
}
