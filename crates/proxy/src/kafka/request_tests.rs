//! Request parsing held to an independent encoder (`kafka-protocol`'s, every version it
//! encodes, flexible and not), refusals decoded by its decoder, and mutated bytes.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchRequest, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic},
    metadata_request::{MetadataRequest, MetadataRequestTopic},
    offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    },
    offset_fetch_request::{
        OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic,
        OffsetFetchRequestTopics,
    },
    produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData},
    ApiKey, FetchResponse, ListOffsetsResponse, MetadataResponse, OffsetCommitResponse,
    OffsetFetchResponse, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use proptest::prelude::*;

use super::*;
use crate::kafka::deny::{refusal, TOPIC_AUTHORIZATION_FAILED};

const TOPICS: &[(&str, &[i32])] = &[("orders", &[0, 1]), ("audit.v1", &[2])];

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// Header + body as a client sends them (without the size prefix).
fn frame<M: Encodable>(key: ApiKey, version: i16, body: &M) -> Bytes {
    let mut buf = BytesMut::new();
    let mut h = RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = version;
    h.correlation_id = 4242;
    h.client_id = Some(StrBytes::from_static_str("rdkafka"));
    h.encode(&mut buf, key.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    buf.freeze()
}

fn expected() -> Vec<(String, Vec<i32>)> {
    TOPICS
        .iter()
        .map(|(t, p)| ((*t).to_owned(), p.to_vec()))
        .collect()
}

fn check(key: ApiKey, version: i16, f: Bytes, want_partitions: bool) -> KafkaRequest {
    let r = parse(f).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
    assert_eq!(
        (
            r.api_key,
            r.api_version,
            r.correlation_id,
            r.client_id.as_str()
        ),
        (key as i16, version, 4242, "rdkafka"),
        "{key:?} v{version}"
    );
    assert!(r.topics_known, "{key:?} v{version}: {:?}", r.body_error);
    let want = if want_partitions {
        expected()
    } else {
        expected().into_iter().map(|(t, _)| (t, vec![])).collect()
    };
    assert_eq!(r.topics, want, "{key:?} v{version}");
    r
}

/// The refusal decodes as the API's response with the request's correlation id and error 29
/// on every topic (and partition) it names.
fn check_refusal(key: ApiKey, version: i16, req: &KafkaRequest) {
    let r = refusal(req).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
    let mut b = r.frame.clone();
    let size = bytes::Buf::get_i32(&mut b);
    assert_eq!(size as usize, b.len());
    let h = ResponseHeader::decode(&mut b, key.response_header_version(version)).expect("header");
    assert_eq!(h.correlation_id, 4242);
    let what = format!("{key:?} v{version}");
    fn dec<T: Decodable>(b: &mut Bytes, v: i16, what: &str) -> T {
        T::decode(b, v).unwrap_or_else(|e| panic!("{what}: {e}"))
    }
    let codes: Vec<(String, i32, i16)> = match key {
        ApiKey::Produce => dec::<ProduceResponse>(&mut b, version, &what)
            .responses
            .iter()
            .flat_map(|t| {
                t.partition_responses
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.index, p.error_code))
            })
            .collect(),
        ApiKey::Fetch => dec::<FetchResponse>(&mut b, version, &what)
            .responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.0.to_string(), p.partition_index, p.error_code))
            })
            .collect(),
        ApiKey::ListOffsets => dec::<ListOffsetsResponse>(&mut b, version, &what)
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
            })
            .collect(),
        ApiKey::OffsetCommit => dec::<OffsetCommitResponse>(&mut b, version, &what)
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
            })
            .collect(),
        ApiKey::OffsetFetch => dec::<OffsetFetchResponse>(&mut b, version, &what)
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
            })
            .collect(),
        ApiKey::Metadata => dec::<MetadataResponse>(&mut b, version, &what)
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    -1,
                    t.error_code,
                )
            })
            .collect(),
        other => panic!("{other:?}"),
    };
    assert!(b.is_empty(), "{what}: {} bytes left", b.len());
    let want: Vec<(String, i32, i16)> = if key == ApiKey::Metadata {
        TOPICS
            .iter()
            .map(|(t, _)| ((*t).to_owned(), -1, TOPIC_AUTHORIZATION_FAILED))
            .collect()
    } else {
        TOPICS
            .iter()
            .flat_map(|(t, ps)| {
                ps.iter()
                    .map(|p| ((*t).to_owned(), *p, TOPIC_AUTHORIZATION_FAILED))
            })
            .collect()
    };
    assert_eq!(codes, want, "{key:?} v{version}");
    assert_eq!(r.error_code, TOPIC_AUTHORIZATION_FAILED);
}

#[test]
fn produce_every_version() {
    for v in 3..=12 {
        let mut r = ProduceRequest::default();
        r.acks = -1;
        r.timeout_ms = 1000;
        r.topic_data = TOPICS
            .iter()
            .map(|(t, ps)| {
                let mut td = TopicProduceData::default();
                td.name = name(t);
                td.partition_data = ps
                    .iter()
                    .map(|p| {
                        let mut pd = PartitionProduceData::default();
                        pd.index = *p;
                        pd.records = Some(Bytes::from_static(b"not really a batch"));
                        pd
                    })
                    .collect();
                td
            })
            .collect();
        let req = check(ApiKey::Produce, v, frame(ApiKey::Produce, v, &r), true);
        assert!(!req.no_response);
        check_refusal(ApiKey::Produce, v, &req);
        r.acks = 0;
        let req = check(ApiKey::Produce, v, frame(ApiKey::Produce, v, &r), true);
        assert!(req.no_response, "acks 0 v{v}");
    }
}

#[test]
fn fetch_every_version_that_names_topics() {
    for v in 4..=12 {
        let mut r = FetchRequest::default();
        r.max_wait_ms = 500;
        r.topics = TOPICS
            .iter()
            .map(|(t, ps)| {
                let mut ft = FetchTopic::default();
                ft.topic = name(t);
                ft.partitions = ps
                    .iter()
                    .map(|p| {
                        let mut fp = FetchPartition::default();
                        fp.partition = *p;
                        fp.fetch_offset = 17;
                        fp.partition_max_bytes = 1 << 20;
                        fp
                    })
                    .collect();
                ft
            })
            .collect();
        let req = check(ApiKey::Fetch, v, frame(ApiKey::Fetch, v, &r), true);
        check_refusal(ApiKey::Fetch, v, &req);
    }
    // From v13 topics are named by id: unknown to policy.
    let mut r = FetchRequest::default();
    r.topics = vec![FetchTopic::default()];
    let req = parse(frame(ApiKey::Fetch, 13, &r)).expect("header");
    assert!(!req.topics_known);
    assert!(req.body_error.is_some());
}

#[test]
fn list_offsets_every_version() {
    for v in 1..=10 {
        let mut r = ListOffsetsRequest::default();
        r.topics = TOPICS
            .iter()
            .map(|(t, ps)| {
                let mut lt = ListOffsetsTopic::default();
                lt.name = name(t);
                lt.partitions = ps
                    .iter()
                    .map(|p| {
                        let mut lp = ListOffsetsPartition::default();
                        lp.partition_index = *p;
                        lp.timestamp = -1;
                        lp
                    })
                    .collect();
                lt
            })
            .collect();
        let req = check(
            ApiKey::ListOffsets,
            v,
            frame(ApiKey::ListOffsets, v, &r),
            true,
        );
        check_refusal(ApiKey::ListOffsets, v, &req);
    }
}

#[test]
fn metadata_every_version() {
    for v in 0..=13 {
        let mut r = MetadataRequest::default();
        r.topics = Some(
            TOPICS
                .iter()
                .map(|(t, _)| {
                    let mut mt = MetadataRequestTopic::default();
                    mt.name = Some(name(t));
                    mt
                })
                .collect(),
        );
        let req = check(ApiKey::Metadata, v, frame(ApiKey::Metadata, v, &r), false);
        check_refusal(ApiKey::Metadata, v, &req);
        if v >= 1 {
            // Every topic: none named.
            r.topics = None;
            let req = parse(frame(ApiKey::Metadata, v, &r)).expect("parse");
            assert!(req.topics_known && req.topics.is_empty(), "v{v}");
        }
    }
}

#[test]
fn offset_commit_every_version_that_names_topics() {
    for v in 2..=9 {
        let mut r = OffsetCommitRequest::default();
        r.group_id = kafka_protocol::messages::GroupId(StrBytes::from_static_str("g1"));
        r.member_id = StrBytes::from_static_str("m1");
        r.topics = TOPICS
            .iter()
            .map(|(t, ps)| {
                let mut ot = OffsetCommitRequestTopic::default();
                ot.name = name(t);
                ot.partitions = ps
                    .iter()
                    .map(|p| {
                        let mut op = OffsetCommitRequestPartition::default();
                        op.partition_index = *p;
                        op.committed_offset = 99;
                        op.committed_metadata = Some(StrBytes::from_static_str("meta"));
                        op
                    })
                    .collect();
                ot
            })
            .collect();
        let req = check(
            ApiKey::OffsetCommit,
            v,
            frame(ApiKey::OffsetCommit, v, &r),
            true,
        );
        check_refusal(ApiKey::OffsetCommit, v, &req);
    }
}

#[test]
fn offset_fetch_every_version_that_names_topics() {
    for v in 1..=7 {
        let mut r = OffsetFetchRequest::default();
        r.group_id = kafka_protocol::messages::GroupId(StrBytes::from_static_str("g1"));
        r.topics = Some(
            TOPICS
                .iter()
                .map(|(t, ps)| {
                    let mut ot = OffsetFetchRequestTopic::default();
                    ot.name = name(t);
                    ot.partition_indexes = ps.to_vec();
                    ot
                })
                .collect(),
        );
        let req = check(
            ApiKey::OffsetFetch,
            v,
            frame(ApiKey::OffsetFetch, v, &r),
            true,
        );
        check_refusal(ApiKey::OffsetFetch, v, &req);
    }
    for v in 8..=9 {
        let mut r = OffsetFetchRequest::default();
        let mut g = OffsetFetchRequestGroup::default();
        g.group_id = kafka_protocol::messages::GroupId(StrBytes::from_static_str("g1"));
        g.topics = Some(
            TOPICS
                .iter()
                .map(|(t, ps)| {
                    let mut ot = OffsetFetchRequestTopics::default();
                    ot.name = name(t);
                    ot.partition_indexes = ps.to_vec();
                    ot
                })
                .collect(),
        );
        r.groups = vec![g];
        let req = check(
            ApiKey::OffsetFetch,
            v,
            frame(ApiKey::OffsetFetch, v, &r),
            true,
        );
        assert_eq!(req.groups.len(), 2);
        // Groups in the response are not built: the connection is closed instead.
        assert!(refusal(&req).is_err());
    }
}

#[test]
fn headers_without_bodies() {
    // ApiVersions v3 (flexible: header v2 with tagged fields) as librdkafka sends it.
    let mut b = BytesMut::new();
    let mut h = RequestHeader::default();
    h.request_api_key = 18;
    h.request_api_version = 3;
    h.correlation_id = 1;
    h.client_id = Some(StrBytes::from_static_str("rdkafka"));
    h.encode(&mut b, 2).expect("header");
    b.extend_from_slice(b"\x0alibrdkafka\x062.0.2\x00");
    let r = parse(b.freeze()).expect("parse");
    assert_eq!((r.api_key, r.api_version, r.correlation_id), (18, 3, 1));
    assert!(r.topics_known && r.topics.is_empty());
    // An API key this proxy does not know still has a header.
    let r = parse(Bytes::from_static(
        b"\x00\x63\x00\x01\x00\x00\x00\x09\xff\xff",
    ))
    .expect("parse");
    assert_eq!((r.api_key, r.client_id.as_str()), (99, ""));
    // Too short, negative.
    assert!(parse(Bytes::from_static(b"\x00\x00\x00")).is_err());
    assert!(parse(Bytes::from_static(
        b"\xff\xff\x00\x00\x00\x00\x00\x01\xff\xff"
    ))
    .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Real requests with bytes flipped, cut or appended: never a panic, and a frame whose
    /// topics are read names only topics that are in the frame's bytes.
    #[test]
    fn mutated_requests(which in 0usize..4, version in 0i16..14, cut in 0usize..400, flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8)) {
        let f = match which {
            0 => {
                let mut r = ProduceRequest::default();
                let mut td = TopicProduceData::default();
                td.name = name("orders");
                td.partition_data = vec![PartitionProduceData::default()];
                r.topic_data = vec![td];
                let v = version.clamp(3, 12);
                frame(ApiKey::Produce, v, &r)
            }
            1 => {
                let mut r = MetadataRequest::default();
                let mut mt = MetadataRequestTopic::default();
                mt.name = Some(name("orders"));
                r.topics = Some(vec![mt]);
                frame(ApiKey::Metadata, version, &r)
            }
            2 => {
                let mut r = FetchRequest::default();
                let mut ft = FetchTopic::default();
                ft.topic = name("orders");
                ft.partitions = vec![FetchPartition::default()];
                r.topics = vec![ft];
                frame(ApiKey::Fetch, version.clamp(4, 12), &r)
            }
            _ => {
                let mut r = OffsetCommitRequest::default();
                let mut ot = OffsetCommitRequestTopic::default();
                ot.name = name("orders");
                ot.partitions = vec![OffsetCommitRequestPartition::default()];
                r.topics = vec![ot];
                frame(ApiKey::OffsetCommit, version.clamp(2, 9), &r)
            }
        };
        let mut bytes = f.to_vec();
        for (at, b) in flips {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = b;
            }
        }
        bytes.truncate(cut.max(1));
        let len = bytes.len();
        if let Some(h) = parse_head(Bytes::from(bytes.clone())) {
            prop_assert_eq!(h.topics.len(), 1);
            prop_assert!(h.topics[0].0.len() <= len);
        }
        if let Ok(r) = parse(Bytes::from(bytes.clone())) {
            let total: usize = r.topics.iter().map(|(t, p)| t.len() + 4 * p.len()).sum();
            prop_assert!(total <= len);
            if let Ok(refused) = refusal(&r) {
                prop_assert!(refused.frame.len() >= 8);
            }
        }
    }

    /// Any bytes at all.
    #[test]
    fn random_frames(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_head(Bytes::from(bytes.clone()));
        let _ = parse(Bytes::from(bytes)).map(|r| refusal(&r));
    }
}

/// A Produce request's head: for every version that names topics by name and every prefix
/// of the frame, `parse_head` says nothing or what `parse` says of the whole frame (without
/// the partitions); it says it once the prefix holds the topic's name; and never for a
/// request of two topics (the second could be refused) or of another API.
#[test]
fn produce_head_agrees_with_the_whole_request() {
    for v in 3..=12 {
        for topics in [&TOPICS[..1], TOPICS] {
            for acks in [1, 0] {
                let mut r = ProduceRequest::default();
                r.acks = acks;
                r.timeout_ms = 1000;
                r.transactional_id = Some(kafka_protocol::messages::TransactionalId(
                    StrBytes::from_static_str("tx"),
                ));
                r.topic_data = topics
                    .iter()
                    .map(|(t, ps)| {
                        let mut td = TopicProduceData::default();
                        td.name = name(t);
                        td.partition_data = ps
                            .iter()
                            .map(|p| {
                                let mut pd = PartitionProduceData::default();
                                pd.index = *p;
                                pd.records = Some(Bytes::from(vec![b'm'; 300]));
                                pd
                            })
                            .collect();
                        td
                    })
                    .collect();
                let f = frame(ApiKey::Produce, v, &r);
                let mut whole = parse(f.clone()).expect("whole");
                whole.topics.truncate(1);
                whole.topics[0].1.clear();
                let mut first = None;
                for cut in 0..=f.len() {
                    let Some(h) = parse_head(f.slice(..cut)) else {
                        assert!(first.is_none(), "v{v}: a longer prefix said nothing");
                        continue;
                    };
                    assert_eq!(topics.len(), 1, "v{v}: two topics");
                    assert_eq!(h, whole, "v{v} cut {cut}");
                    first.get_or_insert(cut);
                }
                if topics.len() == 1 {
                    // The header, the transactional id and the topic's name, then nothing
                    // of the partitions is needed.
                    let cut = first.expect("decided on a prefix");
                    assert!(cut < f.len() - 600, "v{v}: needed {cut} of {}", f.len());
                }
            }
        }
    }
    let mut m = MetadataRequest::default();
    let mut mt = MetadataRequestTopic::default();
    mt.name = Some(name("orders"));
    m.topics = Some(vec![mt]);
    assert_eq!(parse_head(frame(ApiKey::Metadata, 9, &m)), None);
}
