use std::net::{Ipv4Addr, SocketAddrV4};

use ciliate_model::l7::L7Verdict;

use super::*;
use crate::convert::tests::store;
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

#[test]
fn a_kept_record_reads_as_the_flow_built_at_once() {
    let (store, node, ids) = (store(), node(), FlowIds::default());
    for record in [request(), response(), from_outside()] {
        let r = RecordedHttp::capture(record.clone(), &store, &node, &ids, "default/node-a");
        let flow = r.flow();
        assert_eq!(flow, built_at_once(&record, &r, &node));
        assert!(flow.source.is_some() && flow.destination.is_some());
        assert!(!flow.uuid.is_empty());
        // What the metrics count from is the same flow but for its names.
        let unnamed = Flow {
            source: None,
            destination: None,
            node_labels: Vec::new(),
            uuid: String::new(),
            ..flow.clone()
        };
        assert_eq!(r.unnamed(), &unnamed);
    }
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
    let records: Vec<RecordedHttp> = [request(), response(), from_outside(), request()]
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
