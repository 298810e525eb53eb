//! The proxy's own answer to a refused request: a well-formed response of the request's API and
//! version carrying an authorization error, so the client sees why and keeps the connection.
//!
//! Topic APIs get TOPIC_AUTHORIZATION_FAILED (29) on every topic and partition the request
//! named (as a broker's ACLs answer); group calls get GROUP_AUTHORIZATION_FAILED (30) and
//! ApiVersions CLUSTER_AUTHORIZATION_FAILED (31), their only error fields. The responses are
//! encoded by `kafka-protocol` (our data, no decoding of client bytes), so a version it cannot
//! encode (older than Kafka 4 still serves, or newer than it knows) has no answer: the caller
//! closes the connection then.

use bytes::{BufMut, Bytes, BytesMut};
use ciliate_model::kafka::{
    API_VERSIONS, FETCH, FIND_COORDINATOR, HEARTBEAT, JOIN_GROUP, LEAVE_GROUP, LIST_OFFSETS,
    METADATA, OFFSET_COMMIT, OFFSET_FETCH, PRODUCE, SYNC_GROUP,
};
use kafka_protocol::messages::{
    api_versions_response::ApiVersionsResponse,
    fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData},
    find_coordinator_response::FindCoordinatorResponse,
    heartbeat_response::HeartbeatResponse,
    join_group_response::JoinGroupResponse,
    leave_group_response::LeaveGroupResponse,
    list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
    },
    metadata_response::{MetadataResponse, MetadataResponseTopic},
    offset_commit_response::{
        OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
    },
    offset_fetch_response::{
        OffsetFetchResponse, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
    },
    produce_response::{PartitionProduceResponse, ProduceResponse, TopicProduceResponse},
    sync_group_response::SyncGroupResponse,
    ApiKey, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::request::KafkaRequest;

/// TOPIC_AUTHORIZATION_FAILED.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// GROUP_AUTHORIZATION_FAILED.
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// CLUSTER_AUTHORIZATION_FAILED.
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;

/// A refusal ready to send: the frame (length prefix included) and the error code it carries.
#[derive(Debug)]
pub struct Refusal {
    /// The whole response frame.
    pub frame: Bytes,
    /// The error code in it.
    pub error_code: i16,
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn encode_body<M: Encodable>(m: &M, v: i16, b: &mut BytesMut) -> Result<(), String> {
    m.encode(b, v)
        .map_err(|e| format!("cannot encode the refusal at version {v}: {e}"))
}

/// The response refusing `req`, or why there is none.
pub fn refusal(req: &KafkaRequest) -> Result<Refusal, String> {
    let v = req.api_version;
    let t = TOPIC_AUTHORIZATION_FAILED;
    let mut body = BytesMut::new();
    let error_code = match req.api_key {
        PRODUCE => {
            let mut r = ProduceResponse::default();
            r.responses = req
                .topics
                .iter()
                .map(|(name, parts)| {
                    let mut tr = TopicProduceResponse::default();
                    tr.name = topic_name(name);
                    tr.partition_responses = parts
                        .iter()
                        .map(|p| {
                            let mut pr = PartitionProduceResponse::default();
                            pr.index = *p;
                            pr.error_code = t;
                            pr.base_offset = -1;
                            pr.log_append_time_ms = -1;
                            pr.log_start_offset = -1;
                            pr
                        })
                        .collect();
                    tr
                })
                .collect();
            encode_body(&r, v, &mut body)?;
            t
        }
        FETCH => {
            let mut r = FetchResponse::default();
            r.responses = req
                .topics
                .iter()
                .map(|(name, parts)| {
                    let mut tr = FetchableTopicResponse::default();
                    tr.topic = topic_name(name);
                    tr.partitions = parts
                        .iter()
                        .map(|p| {
                            let mut pd = PartitionData::default();
                            pd.partition_index = *p;
                            pd.error_code = t;
                            pd.high_watermark = -1;
                            pd.last_stable_offset = -1;
                            pd.log_start_offset = -1;
                            pd.records = Some(Bytes::new());
                            pd
                        })
                        .collect();
                    tr
                })
                .collect();
            encode_body(&r, v, &mut body)?;
            t
        }
        LIST_OFFSETS => {
            let mut r = ListOffsetsResponse::default();
            r.topics = req
                .topics
                .iter()
                .map(|(name, parts)| {
                    let mut tr = ListOffsetsTopicResponse::default();
                    tr.name = topic_name(name);
                    tr.partitions = parts
                        .iter()
                        .map(|p| {
                            let mut pr = ListOffsetsPartitionResponse::default();
                            pr.partition_index = *p;
                            pr.error_code = t;
                            pr.timestamp = -1;
                            pr.offset = -1;
                            pr
                        })
                        .collect();
                    tr
                })
                .collect();
            encode_body(&r, v, &mut body)?;
            t
        }
        METADATA => {
            // The brokers are not given: the client keeps the ones it knows.
            let mut r = MetadataResponse::default();
            r.topics = req
                .topics
                .iter()
                .map(|(name, _)| {
                    let mut tr = MetadataResponseTopic::default();
                    tr.name = Some(topic_name(name));
                    tr.error_code = t;
                    tr
                })
                .collect();
            encode_body(&r, v, &mut body)?;
            t
        }
        OFFSET_COMMIT => {
            let mut r = OffsetCommitResponse::default();
            r.topics = req
                .topics
                .iter()
                .map(|(name, parts)| {
                    let mut tr = OffsetCommitResponseTopic::default();
                    tr.name = topic_name(name);
                    tr.partitions = parts
                        .iter()
                        .map(|p| {
                            let mut pr = OffsetCommitResponsePartition::default();
                            pr.partition_index = *p;
                            pr.error_code = t;
                            pr
                        })
                        .collect();
                    tr
                })
                .collect();
            encode_body(&r, v, &mut body)?;
            t
        }
        OFFSET_FETCH if req.groups.is_empty() && v <= 7 => {
            let mut r = OffsetFetchResponse::default();
            r.topics = req
                .topics
                .iter()
                .map(|(name, parts)| {
                    let mut tr = OffsetFetchResponseTopic::default();
                    tr.name = topic_name(name);
                    tr.partitions = parts
                        .iter()
                        .map(|p| {
                            let mut pr = OffsetFetchResponsePartition::default();
                            pr.partition_index = *p;
                            pr.committed_offset = -1;
                            pr.committed_leader_epoch = -1;
                            pr.error_code = t;
                            pr
                        })
                        .collect();
                    tr
                })
                .collect();
            if req.topics.is_empty() {
                // Every topic of the group was asked for: the group's own error.
                r.error_code = GROUP_AUTHORIZATION_FAILED;
            }
            encode_body(&r, v, &mut body)?;
            if req.topics.is_empty() {
                GROUP_AUTHORIZATION_FAILED
            } else {
                t
            }
        }
        FIND_COORDINATOR if v <= 3 => {
            let mut r = FindCoordinatorResponse::default();
            r.error_code = GROUP_AUTHORIZATION_FAILED;
            r.node_id = kafka_protocol::messages::BrokerId(-1);
            r.port = -1;
            encode_body(&r, v, &mut body)?;
            GROUP_AUTHORIZATION_FAILED
        }
        JOIN_GROUP => {
            let mut r = JoinGroupResponse::default();
            r.error_code = GROUP_AUTHORIZATION_FAILED;
            r.generation_id = -1;
            encode_body(&r, v, &mut body)?;
            GROUP_AUTHORIZATION_FAILED
        }
        HEARTBEAT => {
            let mut r = HeartbeatResponse::default();
            r.error_code = GROUP_AUTHORIZATION_FAILED;
            encode_body(&r, v, &mut body)?;
            GROUP_AUTHORIZATION_FAILED
        }
        LEAVE_GROUP => {
            let mut r = LeaveGroupResponse::default();
            r.error_code = GROUP_AUTHORIZATION_FAILED;
            encode_body(&r, v, &mut body)?;
            GROUP_AUTHORIZATION_FAILED
        }
        SYNC_GROUP => {
            let mut r = SyncGroupResponse::default();
            r.error_code = GROUP_AUTHORIZATION_FAILED;
            encode_body(&r, v, &mut body)?;
            GROUP_AUTHORIZATION_FAILED
        }
        API_VERSIONS => {
            let mut r = ApiVersionsResponse::default();
            r.error_code = CLUSTER_AUTHORIZATION_FAILED;
            encode_body(&r, v, &mut body)?;
            CLUSTER_AUTHORIZATION_FAILED
        }
        k => {
            return Err(format!(
                "no refusal is built for {} v{v}",
                ciliate_model::kafka::api_key_name(k)
            ))
        }
    };
    let key = ApiKey::try_from(req.api_key).map_err(|_| "unknown API key".to_owned())?;
    let mut header = BytesMut::new();
    let mut h = ResponseHeader::default();
    h.correlation_id = req.correlation_id;
    h.encode(&mut header, key.response_header_version(v))
        .map_err(|e| format!("cannot encode the response header: {e}"))?;
    let len = header.len() + body.len();
    let len = i32::try_from(len).map_err(|_| "refusal too large".to_owned())?;
    let mut frame = BytesMut::with_capacity(4 + header.len() + body.len());
    frame.put_i32(len);
    frame.put_slice(&header);
    frame.put_slice(&body);
    Ok(Refusal {
        frame: frame.freeze(),
        error_code,
    })
}
