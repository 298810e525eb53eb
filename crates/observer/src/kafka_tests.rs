use std::net::{Ipv4Addr, SocketAddrV4};

use ciliate_model::l7::{KafkaRecord, L7RecordType, L7Verdict};

use super::*;
use crate::convert::tests::store;
use crate::proto::flow::{layer4, L7FlowType, TrafficDirection, Verdict};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const BROKER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);

/// The client pod produces to `orders` on the broker pod, through its egress redirect.
pub(crate) fn produce() -> KafkaRecord {
    KafkaRecord {
        time_ns: 1_714_557_600_000_000_000,
        record_type: L7RecordType::Request,
        endpoint: 1,
        egress: true,
        source: SocketAddrV4::new(CLIENT, 42000),
        destination: SocketAddrV4::new(BROKER, 9092),
        source_identity: 256,
        destination_identity: 257,
        verdict: L7Verdict::Forwarded,
        rule: 2,
        api_key: "produce".into(),
        api_version: 7,
        correlation_id: 11,
        topic: "orders".into(),
        error_code: 0,
        latency_ns: 0,
        reason: None,
    }
}

/// A refused produce answered by the proxy: TOPIC_AUTHORIZATION_FAILED.
pub(crate) fn refused() -> KafkaRecord {
    KafkaRecord {
        record_type: L7RecordType::Response,
        verdict: L7Verdict::Dropped,
        rule: 0,
        topic: "secrets".into(),
        error_code: 29,
        latency_ns: 80_000,
        ..produce()
    }
}

#[test]
fn a_request_carries_the_request_fields_only() {
    let f = kafka_to_flow(
        &KafkaRecord {
            error_code: 3,
            ..produce()
        },
        &store(),
        "n",
    );
    let k = crate::l7::kafka(&f).expect("kafka");
    assert_eq!(
        k,
        &Kafka {
            error_code: 0,
            api_version: 7,
            api_key: "produce".into(),
            correlation_id: 11,
            topic: "orders".into(),
        }
    );
    assert!(matches!(
        f.l4.as_ref().and_then(|l| l.protocol.as_ref()),
        Some(layer4::Protocol::Tcp(t)) if (t.source_port, t.destination_port) == (42000, 9092)
    ));
    assert_eq!(
        f.l7.as_ref().map(|l| l.r#type),
        Some(L7FlowType::Request as i32)
    );
    assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
    assert_eq!(
        f.summary,
        "Kafka request produce correlation id 11 topic 'orders'"
    );
    assert_eq!(
        crate::print::compact(&f),
        "May  1 10:00:00.000: default/client:42000 (ID:256) -> prod/web-1:9092 (ID:257) \
         kafka-request FORWARDED (Kafka request produce correlation id 11 topic 'orders')"
    );
}

#[test]
fn a_refused_response_runs_back_to_the_client_with_its_error_code() {
    let f = kafka_to_flow(&refused(), &store(), "n");
    assert_eq!(f.verdict, Verdict::Dropped as i32);
    assert_eq!(crate::convert::is_reply(&f), Some(true));
    assert_eq!(f.source.clone().expect("src").pod_name, "web-1");
    assert_eq!(crate::l7::kafka(&f).map(|k| k.error_code), Some(29));
    assert_eq!(f.l7.as_ref().map(|l| l.latency_ns), Some(80_000));
    assert_eq!(
        f.summary,
        "Kafka response produce correlation id 11 topic 'secrets' return code 29"
    );
    assert_eq!(crate::print::event_summary(&f), "kafka-response");
}
