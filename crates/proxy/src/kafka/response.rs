//! The error code of a broker's response, for the record: the first non-zero one among the
//! partitions of a Produce response, or the top-level one of the APIs that have it (Fetch v7+,
//! ApiVersions, the group calls, InitProducerId). Other responses (Metadata's per-topic
//! errors, Fetch's per-partition ones) are not read: 0. Reading stops at the first field that
//! does not fit, never allocating from the wire.

use bytes::Bytes;
use ciliate_model::kafka::{
    API_VERSIONS, FETCH, FIND_COORDINATOR, HEARTBEAT, JOIN_GROUP, LEAVE_GROUP, PRODUCE, SYNC_GROUP,
};
use kafka_protocol::messages::ApiKey;

use super::request::{Reader, R};

const INIT_PRODUCER_ID: i16 = 22;

/// The response's error code (0 when none or not read), given the request's key and version.
pub fn error_code(api_key: i16, version: i16, frame: Bytes) -> i16 {
    read(api_key, version, frame).unwrap_or(0)
}

fn read(api_key: i16, v: i16, frame: Bytes) -> R<i16> {
    let key = ApiKey::try_from(api_key).map_err(|_| "unknown key".to_owned())?;
    let flexible_header = key.response_header_version(v) >= 1;
    let flexible = key.request_header_version(v) >= 2;
    let mut r = Reader {
        buf: frame,
        compact: flexible_header,
    };
    r.i32()?; // correlation id
    r.tagged_fields()?;
    r.compact = flexible;
    let throttle_first = |min: i16| v >= min;
    match api_key {
        PRODUCE => produce(&mut r, v),
        API_VERSIONS => r.i16(),
        FETCH if v >= 7 => {
            r.i32()?;
            r.i16()
        }
        HEARTBEAT | SYNC_GROUP | LEAVE_GROUP | INIT_PRODUCER_ID => {
            if throttle_first(1) || api_key == INIT_PRODUCER_ID {
                r.i32()?;
            }
            r.i16()
        }
        JOIN_GROUP => {
            if throttle_first(2) {
                r.i32()?;
            }
            r.i16()
        }
        FIND_COORDINATOR if v <= 3 => {
            if throttle_first(1) {
                r.i32()?;
            }
            r.i16()
        }
        _ => Ok(0),
    }
}

fn produce(r: &mut Reader, v: i16) -> R<i16> {
    let n = r.array("topics")?.unwrap_or(0);
    for _ in 0..n {
        if v >= 13 {
            r.skip(16, "topic id")?;
        } else {
            r.skip_string("topic")?;
        }
        let np = r.array("partitions")?.unwrap_or(0);
        for _ in 0..np {
            r.i32()?; // index
            let code = r.i16()?;
            if code != 0 {
                return Ok(code);
            }
            r.skip(8, "base offset")?;
            if v >= 2 {
                r.skip(8, "log append time")?;
            }
            if v >= 5 {
                r.skip(8, "log start offset")?;
            }
            if v >= 8 {
                let ne = r.array("record errors")?.unwrap_or(0);
                for _ in 0..ne {
                    r.i32()?;
                    r.skip_string("batch error message")?;
                    r.tagged_fields()?;
                }
                r.skip_string("error message")?;
            }
            r.tagged_fields()?;
        }
        r.tagged_fields()?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::deny::refusal;
    use crate::kafka::request::KafkaRequest;

    /// The proxy's own refusals, read back: every version the refusal encodes.
    #[test]
    fn refusals_read_back() {
        for (key, versions, want) in [
            (PRODUCE, 3..=12, 29),
            (API_VERSIONS, 0..=4, 31),
            (HEARTBEAT, 0..=4, 30),
            (SYNC_GROUP, 0..=5, 30),
            (LEAVE_GROUP, 0..=5, 30),
            (JOIN_GROUP, 0..=9, 30),
            (FIND_COORDINATOR, 0..=3, 30),
        ] {
            for v in versions {
                let req = KafkaRequest {
                    api_key: key,
                    api_version: v,
                    correlation_id: 9,
                    topics: vec![("t".into(), vec![0, 1])],
                    topics_known: true,
                    ..Default::default()
                };
                let r = refusal(&req).unwrap_or_else(|e| panic!("{key} v{v}: {e}"));
                let body = r.frame.slice(4..);
                assert_eq!(error_code(key, v, body), want, "{key} v{v}");
            }
        }
        // Truncated: 0, no panic.
        assert_eq!(error_code(PRODUCE, 9, Bytes::from_static(b"\x00\x00")), 0);
    }
}
