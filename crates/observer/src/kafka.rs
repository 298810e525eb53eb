//! One Kafka record of the node's proxy → one Hubble L7 flow with `l7.kafka`, as Hubble's L7
//! parser decodes Cilium's Kafka access log (`decodeKafka`, `kafkaSummary`): a request
//! carries the API key, version, correlation id and topic; a response adds the error code.
//! Like HTTP, a response runs from the broker back to the client (`is_reply`).

use ciliate_model::l7::{KafkaRecord, L7RecordType};

use crate::l7::{l7_flow, L7Common, TCP};
use crate::proto::flow::{layer7, Flow, Kafka};
use crate::store::Store;

/// Hubble's summary of a Kafka flow: `Kafka request produce correlation id 7 topic 'orders'`,
/// `Kafka response produce correlation id 7 topic 'orders' return code 29`.
pub fn kafka_summary(k: &Kafka, response: bool) -> String {
    if response {
        format!(
            "Kafka response {} correlation id {} topic '{}' return code {}",
            k.api_key, k.correlation_id, k.topic, k.error_code
        )
    } else {
        format!(
            "Kafka request {} correlation id {} topic '{}'",
            k.api_key, k.correlation_id, k.topic
        )
    }
}

/// Converts one record. `node_name` is this node's; the store names both ends.
pub fn kafka_to_flow(record: &KafkaRecord, store: &dyn Store, node_name: &str) -> Flow {
    let response = record.record_type == L7RecordType::Response;
    let common = L7Common {
        time_ns: record.time_ns,
        response,
        egress: record.egress,
        client: (record.source, record.source_identity),
        server: (record.destination, record.destination_identity),
        proto: TCP,
        verdict: record.verdict,
        latency_ns: record.latency_ns,
        rule: record.rule,
    };
    let kafka = Kafka {
        // Hubble sets only the request's fields on a request.
        error_code: if response {
            i32::from(record.error_code)
        } else {
            0
        },
        api_version: i32::from(record.api_version),
        api_key: record.api_key.clone(),
        correlation_id: record.correlation_id,
        topic: record.topic.clone(),
    };
    let summary = kafka_summary(&kafka, response);
    l7_flow(
        &common,
        layer7::Record::Kafka(kafka),
        summary,
        store,
        node_name,
    )
}

#[cfg(test)]
#[path = "kafka_tests.rs"]
pub(crate) mod tests;
