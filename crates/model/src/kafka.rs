//! Kafka policy as Cilium defines it (`pkg/policy/api/kafka`): the API key names a rule may
//! give, the keys a `role` stands for, topic name validation, and matching a request against
//! a port's [`KafkaMatch`]es. Shared by the compiler (validation, `policy trace`) and the
//! proxy (enforcement, Hubble's names), so that the two never disagree.
//!
//! Matching, as Cilium's Kafka parser has it (`RequestMessage.MatchesRule`):
//! - a rule matches a request when the API key is one of its keys (none: any), the version is
//!   its version (none: any) and the client id is its client id (none: any);
//! - a rule without a topic, or a request without topics (a Metadata request for every
//!   topic, a group call), is decided by the above alone; except that a rule naming a topic
//!   never matches a request of a topic-bearing API whose topics could not be read;
//! - a request naming topics is allowed only when every one of its topics is allowed by some
//!   matching rule naming it.
//!
//! One difference: Cilium does not compare the client id of requests it cannot parse beyond
//! the header (its `GH-3097`); Ciliate compares it for every request.

use crate::l7::KafkaMatch;

/// Cilium's `APIKeyMap`: the names `apiKey` accepts (compared without case) and the keys they
/// mean; Hubble shows a request's key by the same names.
pub const API_KEYS: &[(&str, i16)] = &[
    ("produce", 0),
    ("fetch", 1),
    ("offsets", 2),
    ("metadata", 3),
    ("leaderandisr", 4),
    ("stopreplica", 5),
    ("updatemetadata", 6),
    ("controlledshutdown", 7),
    ("offsetcommit", 8),
    ("offsetfetch", 9),
    ("findcoordinator", 10),
    ("joingroup", 11),
    ("heartbeat", 12),
    ("leavegroup", 13),
    ("syncgroup", 14),
    ("describegroups", 15),
    ("listgroups", 16),
    ("saslhandshake", 17),
    ("apiversions", 18),
    ("createtopics", 19),
    ("deletetopics", 20),
    ("deleterecords", 21),
    ("initproducerid", 22),
    ("offsetforleaderepoch", 23),
    ("addpartitionstotxn", 24),
    ("addoffsetstotxn", 25),
    ("endtxn", 26),
    ("writetxnmarkers", 27),
    ("txnoffsetcommit", 28),
    ("describeacls", 29),
    ("createacls", 30),
    ("deleteacls", 31),
    ("describeconfigs", 32),
    ("alterconfigs", 33),
];

/// API keys by name.
pub const PRODUCE: i16 = 0;
/// Fetch.
pub const FETCH: i16 = 1;
/// ListOffsets (Cilium's "offsets").
pub const LIST_OFFSETS: i16 = 2;
/// Metadata.
pub const METADATA: i16 = 3;
/// OffsetCommit.
pub const OFFSET_COMMIT: i16 = 8;
/// OffsetFetch.
pub const OFFSET_FETCH: i16 = 9;
/// FindCoordinator.
pub const FIND_COORDINATOR: i16 = 10;
/// JoinGroup.
pub const JOIN_GROUP: i16 = 11;
/// Heartbeat.
pub const HEARTBEAT: i16 = 12;
/// LeaveGroup.
pub const LEAVE_GROUP: i16 = 13;
/// SyncGroup.
pub const SYNC_GROUP: i16 = 14;
/// ApiVersions.
pub const API_VERSIONS: i16 = 18;

/// What `role: produce` allows (Cilium's `GetAPIKeys`).
pub const PRODUCE_ROLE: &[i16] = &[PRODUCE, METADATA, API_VERSIONS];

/// What `role: consume` allows.
pub const CONSUME_ROLE: &[i16] = &[
    FETCH,
    LIST_OFFSETS,
    METADATA,
    OFFSET_COMMIT,
    OFFSET_FETCH,
    FIND_COORDINATOR,
    JOIN_GROUP,
    HEARTBEAT,
    LEAVE_GROUP,
    SYNC_GROUP,
    API_VERSIONS,
];

/// Cilium's limit on a topic rule (Kafka itself allows 249 since 0.10).
pub const MAX_TOPIC_LEN: usize = 255;

/// The key an `apiKey` name means (any case), if Cilium knows it.
pub fn api_key_by_name(name: &str) -> Option<i16> {
    API_KEYS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, k)| *k)
}

/// A key as Hubble shows it: Cilium's name, or the number for keys it has no name for.
pub fn api_key_name(key: i16) -> String {
    API_KEYS
        .iter()
        .find(|(_, k)| *k == key)
        .map_or_else(|| key.to_string(), |(n, _)| (*n).to_owned())
}

/// The keys a `role` (any case) stands for.
pub fn role_api_keys(role: &str) -> Option<&'static [i16]> {
    if role.eq_ignore_ascii_case("produce") {
        Some(PRODUCE_ROLE)
    } else if role.eq_ignore_ascii_case("consume") {
        Some(CONSUME_ROLE)
    } else {
        None
    }
}

/// Whether requests of this API name topics (Cilium's `isTopicAPIKey`).
pub fn is_topic_api_key(key: i16) -> bool {
    matches!(
        key,
        0..=6 | 8 | 9 | 19 | 20 | 21 | 23 | 24 | 27 | 28 | 34 | 35 | 37
    )
}

/// Checks a topic as Cilium's `Sanitize` does: at most 255 characters of `[a-zA-Z0-9._-]`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "a topic has at most {MAX_TOPIC_LEN} characters, this one {}",
            topic.len()
        ));
    }
    if topic.is_empty()
        || !topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "{topic:?} is not a topic name (letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

/// What the matcher needs of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaRequestView<'a> {
    /// The API key.
    pub api_key: i16,
    /// The API version.
    pub api_version: i16,
    /// The client id (empty when the request has none).
    pub client_id: &'a str,
    /// The topics the request names.
    pub topics: Vec<&'a str>,
    /// False when the request is of a topic-bearing API but its topics could not be read.
    pub topics_known: bool,
}

/// Whether `m` matches the request, its topic aside.
fn matches_header(m: &KafkaMatch, req: &KafkaRequestView<'_>) -> bool {
    (m.api_keys.is_empty() || m.api_keys.contains(&req.api_key))
        && m.api_version.is_none_or(|v| v == req.api_version)
        && m.client_id.as_deref().is_none_or(|c| c == req.client_id)
}

/// Whether `rules` (OR'ed, every topic covered) allow the request; empty rules allow every
/// request.
pub fn request_allowed(rules: &[KafkaMatch], req: &KafkaRequestView<'_>) -> bool {
    if rules.is_empty() {
        return true;
    }
    let mut left: Vec<&str> = req.topics.clone();
    left.sort_unstable();
    left.dedup();
    for m in rules.iter().filter(|m| matches_header(m, req)) {
        match &m.topic {
            None => return true,
            Some(_) if !req.topics_known && is_topic_api_key(req.api_key) => {}
            Some(_) if req.topics.is_empty() => return true,
            Some(t) => {
                left.retain(|l| l != t);
                if left.is_empty() {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(keys: &[i16], topic: Option<&str>) -> KafkaMatch {
        KafkaMatch {
            api_keys: keys.to_vec(),
            topic: topic.map(str::to_owned),
            ..Default::default()
        }
    }

    fn req<'a>(key: i16, topics: &[&'a str]) -> KafkaRequestView<'a> {
        KafkaRequestView {
            api_key: key,
            api_version: 7,
            client_id: "rdkafka",
            topics: topics.to_vec(),
            topics_known: true,
        }
    }

    #[test]
    fn names() {
        assert_eq!(api_key_by_name("Produce"), Some(0));
        assert_eq!(api_key_by_name("offsets"), Some(2));
        assert_eq!(api_key_by_name("listoffsets"), None);
        assert_eq!(api_key_name(18), "apiversions");
        assert_eq!(api_key_name(36), "36");
        assert_eq!(role_api_keys("CONSUME").map(<[i16]>::len), Some(11));
        assert_eq!(role_api_keys("admin"), None);
    }

    #[test]
    fn topics_are_checked() {
        assert!(check_topic("deathstar-plans.v1_x").is_ok());
        assert!(check_topic("a/b").is_err());
        assert!(check_topic("").is_err());
        assert!(check_topic(&"a".repeat(255)).is_ok());
        assert!(check_topic(&"a".repeat(256)).is_err());
    }

    #[test]
    fn matching() {
        let produce_a = rule(PRODUCE_ROLE, Some("a"));
        let produce_b = rule(PRODUCE_ROLE, Some("b"));
        assert!(request_allowed(
            std::slice::from_ref(&produce_a),
            &req(PRODUCE, &["a"])
        ));
        assert!(!request_allowed(
            std::slice::from_ref(&produce_a),
            &req(PRODUCE, &["b"])
        ));
        assert!(!request_allowed(
            std::slice::from_ref(&produce_a),
            &req(FETCH, &["a"])
        ));
        // Every topic must be allowed, by one rule or several.
        assert!(!request_allowed(
            std::slice::from_ref(&produce_a),
            &req(PRODUCE, &["a", "b"])
        ));
        assert!(request_allowed(
            &[produce_a.clone(), produce_b],
            &req(PRODUCE, &["a", "b", "a"])
        ));
        // A request without topics: the key decides.
        assert!(request_allowed(
            std::slice::from_ref(&produce_a),
            &req(METADATA, &[])
        ));
        assert!(request_allowed(
            std::slice::from_ref(&produce_a),
            &req(API_VERSIONS, &[])
        ));
        // Topics that could not be read never match a topic rule.
        let mut unknown = req(PRODUCE, &[]);
        unknown.topics_known = false;
        assert!(!request_allowed(&[produce_a], &unknown));
        assert!(request_allowed(&[rule(&[], None)], &unknown));
        // Version and client id.
        let v = KafkaMatch {
            api_version: Some(3),
            client_id: Some("me".into()),
            ..Default::default()
        };
        assert!(!request_allowed(
            std::slice::from_ref(&v),
            &req(PRODUCE, &["a"])
        ));
        let mut r = req(PRODUCE, &["a"]);
        r.api_version = 3;
        r.client_id = "me";
        assert!(request_allowed(&[v], &r));
        assert!(request_allowed(&[], &req(PRODUCE, &["x"])));
    }
}
