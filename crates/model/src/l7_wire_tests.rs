use proptest::prelude::*;

use super::*;

fn addr() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
}

fn record_type() -> impl Strategy<Value = L7RecordType> {
    prop_oneof![Just(L7RecordType::Request), Just(L7RecordType::Response)]
}

fn verdict() -> impl Strategy<Value = L7Verdict> {
    prop_oneof![
        Just(L7Verdict::Forwarded),
        Just(L7Verdict::Dropped),
        Just(L7Verdict::Error)
    ]
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, multi-byte included.
    ".{0,24}"
}

prop_compose! {
    fn http()(
        (time_ns, record_type, endpoint, egress) in (any::<u64>(), record_type(), any::<u16>(), any::<bool>()),
        (source, destination, source_identity, destination_identity) in (addr(), addr(), any::<u32>(), any::<u32>()),
        (verdict, rule, code, latency_ns) in (verdict(), any::<u32>(), any::<u16>(), any::<u64>()),
        (method, url, protocol) in (text(), text(), text()),
        headers in proptest::collection::vec((text(), text()), 0..4),
        reason in proptest::option::of(text()),
    ) -> HttpRecord {
        HttpRecord {
            time_ns, record_type, endpoint, egress, source, destination, source_identity,
            destination_identity, verdict, rule, method, url, protocol, code, headers,
            latency_ns, reason,
        }
    }
}

prop_compose! {
    fn dns()(
        (time_ns, record_type, endpoint, proto) in (any::<u64>(), record_type(), any::<u16>(), any::<u8>()),
        (source, destination, source_identity, destination_identity) in (addr(), addr(), any::<u32>(), any::<u32>()),
        (verdict, rule, rcode, ttl, latency_ns) in (verdict(), any::<u32>(), any::<u16>(), any::<u32>(), any::<u64>()),
        (query, qtypes, cnames, rrtypes) in (text(), proptest::collection::vec(text(), 0..3), proptest::collection::vec(text(), 0..3), proptest::collection::vec(text(), 0..3)),
        ips in proptest::collection::vec(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 0..4),
        reason in proptest::option::of(text()),
    ) -> DnsRecord {
        DnsRecord {
            time_ns, record_type, endpoint, source, destination, proto, source_identity,
            destination_identity, verdict, rule, query, qtypes, rcode, ips, ttl, cnames, rrtypes,
            latency_ns, reason,
        }
    }
}

prop_compose! {
    fn kafka()(
        (time_ns, record_type, endpoint, egress) in (any::<u64>(), record_type(), any::<u16>(), any::<bool>()),
        (source, destination, source_identity, destination_identity) in (addr(), addr(), any::<u32>(), any::<u32>()),
        (verdict, rule, api_version, correlation_id, error_code) in (verdict(), any::<u32>(), any::<i16>(), any::<i32>(), any::<i16>()),
        (api_key, topic, latency_ns) in (text(), text(), any::<u64>()),
        reason in proptest::option::of(text()),
    ) -> KafkaRecord {
        KafkaRecord {
            time_ns, record_type, endpoint, egress, source, destination, source_identity,
            destination_identity, verdict, rule, api_key, api_version, correlation_id, topic,
            error_code, latency_ns, reason,
        }
    }
}

fn event() -> impl Strategy<Value = ProxyEvent> {
    prop_oneof![
        http().prop_map(|r| ProxyEvent::Http(Box::new(r))),
        dns().prop_map(|r| ProxyEvent::Dns(Box::new(r))),
        kafka().prop_map(|r| ProxyEvent::Kafka(Box::new(r))),
    ]
}

/// Splits one encoded frame into its kind and payload, checking the header.
fn split(frame: &[u8]) -> (u8, &[u8]) {
    let header: [u8; FRAME_HEADER] = frame[..FRAME_HEADER].try_into().unwrap();
    let len = frame_len(header).unwrap();
    assert_eq!(
        len,
        frame.len() - FRAME_HEADER,
        "the header counts the payload"
    );
    (frame[0], &frame[FRAME_HEADER..])
}

proptest! {
    #[test]
    fn every_record_round_trips(ev in event()) {
        let mut buf = vec![b'x'];
        prop_assert!(encode_record(&ev, &mut buf));
        prop_assert_eq!(buf[0], b'x', "appends, keeps what was there");
        prop_assert!(is_frame_kind(buf[1]));
        let (kind, payload) = split(&buf[1..]);
        prop_assert_eq!(decode_record(kind, payload).unwrap(), ev);
    }

    #[test]
    fn a_cut_payload_is_an_error_naming_the_field_never_a_panic(ev in event(), cut in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        encode_record(&ev, &mut buf);
        let (kind, payload) = split(&buf);
        let n = cut.index(payload.len());
        let err = decode_record(kind, &payload[..n]).unwrap_err();
        prop_assert!(matches!(err, WireError::Truncated { .. }), "{err}");
        prop_assert!(err.to_string().contains("truncated in field"), "{err}");
    }

    /// The proxy encodes its records from borrowed parts, the URL in pieces: the same bytes
    /// as the owned record's frame, wherever the URL is cut.
    #[test]
    fn a_record_from_parts_is_the_owned_records_frame(rec in http(), cut in any::<prop::sample::Index>(), cut2 in any::<prop::sample::Index>()) {
        let mut owned = Vec::new();
        encode_record(&ProxyEvent::Http(Box::new(rec.clone())), &mut owned);
        let bounds: Vec<usize> = (0..=rec.url.len()).filter(|i| rec.url.is_char_boundary(*i)).collect();
        let (mut a, mut b) = (bounds[cut.index(bounds.len())], bounds[cut2.index(bounds.len())]);
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        let pieces = [&rec.url[..a], &rec.url[a..b], &rec.url[b..]];
        let parts = parts_of(&rec, &pieces);
        let mut borrowed = vec![b'x'];
        encode_http_parts(&parts, rec.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), &mut borrowed);
        prop_assert_eq!(&borrowed[1..], &owned[..]);
    }

    /// An HTTP record kept as its frame reads as the decoded record, field by field, and
    /// the frame is refused where decoding is.
    #[test]
    fn an_http_frame_reads_as_its_record(rec in http(), cut in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        encode_record(&ProxyEvent::Http(Box::new(rec.clone())), &mut buf);
        let (_, payload) = split(&buf);
        let frame = HttpFrame::new(payload).unwrap();
        prop_assert_eq!(frame.payload(), payload);
        prop_assert_eq!(frame.record(), rec.clone());
        prop_assert_eq!(&HttpFrame::of_record(&rec), &frame);
        let v = frame.view();
        prop_assert_eq!(v.header_count(), rec.headers.len());
        let headers: Vec<(&str, &str)> = v.headers().collect();
        let want: Vec<(&str, &str)> = rec.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        prop_assert_eq!(headers, want);
        // Written back as a frame, the same bytes.
        let mut again = Vec::new();
        prop_assert!(encode_record(&ProxyEvent::HttpFrame(frame.clone()), &mut again));
        prop_assert_eq!(&again, &buf);
        let n = cut.index(payload.len());
        prop_assert_eq!(HttpFrame::new(&payload[..n]).unwrap_err(), decode_record(FRAME_HTTP, &payload[..n]).unwrap_err());
    }

    /// A DNS record kept as its frame reads as the decoded record, field by field, and the
    /// frame is refused where decoding is.
    #[test]
    fn a_dns_frame_reads_as_its_record(rec in dns(), cut in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        encode_record(&ProxyEvent::Dns(Box::new(rec.clone())), &mut buf);
        let (_, payload) = split(&buf);
        let frame = DnsFrame::new(payload).unwrap();
        prop_assert_eq!(frame.payload(), payload);
        prop_assert_eq!(frame.record(), rec.clone());
        prop_assert_eq!(&DnsFrame::of_record(&rec), &frame);
        let v = frame.view();
        prop_assert_eq!(v.query, rec.query.as_str());
        prop_assert_eq!(v.qtypes.len(), rec.qtypes.len());
        prop_assert_eq!(v.qtypes.iter().collect::<Vec<_>>(), rec.qtypes.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(v.cnames.iter().collect::<Vec<_>>(), rec.cnames.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(v.rrtypes.iter().collect::<Vec<_>>(), rec.rrtypes.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(v.ips().collect::<Vec<_>>(), rec.ips.clone());
        prop_assert_eq!(v.reason, rec.reason.as_deref());
        // Written back as a frame, the same bytes.
        let mut again = Vec::new();
        prop_assert!(encode_record(&ProxyEvent::DnsFrame(frame.clone()), &mut again));
        prop_assert_eq!(&again, &buf);
        let n = cut.index(payload.len());
        prop_assert_eq!(DnsFrame::new(&payload[..n]).unwrap_err(), decode_record(FRAME_DNS, &payload[..n]).unwrap_err());
    }

    #[test]
    fn garbage_never_panics(kind in 0u8..5, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        // Any outcome but a panic; an unknown kind is refused as such.
        let r = decode_record(kind, &payload);
        if kind == FRAME_HTTP {
            prop_assert_eq!(HttpFrame::new(&payload).err(), r.clone().err());
        }
        if kind == FRAME_DNS {
            prop_assert_eq!(DnsFrame::new(&payload).err(), r.clone().err());
        }
        if !is_frame_kind(kind) {
            prop_assert_eq!(r.unwrap_err(), WireError::UnknownKind(kind));
        }
    }
}

/// `rec`'s fields as [`HttpParts`], its URL given as `url`'s pieces.
fn parts_of<'a>(rec: &'a HttpRecord, url: &'a [&'a str]) -> HttpParts<'a> {
    HttpParts {
        time_ns: rec.time_ns,
        record_type: rec.record_type,
        endpoint: rec.endpoint,
        egress: rec.egress,
        source: rec.source,
        destination: rec.destination,
        source_identity: rec.source_identity,
        destination_identity: rec.destination_identity,
        verdict: rec.verdict,
        rule: rec.rule,
        method: &rec.method,
        url,
        protocol: &rec.protocol,
        code: rec.code,
        latency_ns: rec.latency_ns,
        reason: rec.reason.as_deref(),
    }
}

fn sample_http() -> HttpRecord {
    HttpRecord {
        time_ns: 1,
        record_type: L7RecordType::Response,
        endpoint: 7,
        egress: false,
        source: "10.0.0.1:40000".parse().unwrap(),
        destination: "10.0.0.2:80".parse().unwrap(),
        source_identity: 256,
        destination_identity: 257,
        verdict: L7Verdict::Forwarded,
        rule: 3,
        method: "GET".into(),
        url: "http://web/".into(),
        protocol: "HTTP/1.1".into(),
        code: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        latency_ns: 5,
        reason: None,
    }
}

#[test]
fn bad_payloads_name_what_is_wrong() {
    let mut buf = Vec::new();
    encode_record(&ProxyEvent::Http(Box::new(sample_http())), &mut buf);
    let (kind, payload) = split(&buf);

    let mut extra = payload.to_vec();
    extra.push(0);
    assert_eq!(
        decode_record(kind, &extra).unwrap_err().to_string(),
        "http record: 1 bytes after the last field"
    );

    // record_type is the byte after time_ns.
    let mut bad = payload.to_vec();
    bad[8] = 9;
    assert_eq!(
        decode_record(kind, &bad).unwrap_err().to_string(),
        "http record: field `record_type`: unknown value 9"
    );

    // The method's bytes (after its length) made invalid UTF-8.
    let at = payload.windows(3).position(|w| w == b"GET").unwrap();
    let mut bad = payload.to_vec();
    bad[at] = 0xff;
    let err = decode_record(kind, &bad).unwrap_err().to_string();
    assert!(
        err.starts_with("http record: field `method`: not UTF-8"),
        "{err}"
    );

    // A header count far beyond what the payload holds is refused before anything is
    // reserved for it.
    let count_at = at + 3 + 4 + "http://web/".len() + 4 + "HTTP/1.1".len() + 2;
    let mut bad = payload.to_vec();
    bad[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode_record(kind, &bad).unwrap_err().to_string(),
        "http record: truncated in field `headers`"
    );

    let mut header = [FRAME_HTTP, 0, 0, 0, 0];
    header[1..].copy_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
    assert_eq!(
        frame_len(header).unwrap_err(),
        WireError::TooLong(MAX_FRAME + 1)
    );
}

#[test]
fn json_lines_never_start_like_a_frame() {
    for ev in [
        ProxyEvent::Applied { revision: 1 },
        ProxyEvent::Stats(Default::default()),
    ] {
        assert!(!encode_record(&ev, &mut Vec::new()), "not a record");
        let line = serde_json::to_vec(&ev).unwrap();
        assert!(!is_frame_kind(line[0]));
    }
}

/// A header value that is not UTF-8 arrives as `String::from_utf8_lossy` makes it.
#[test]
fn a_header_value_that_is_not_utf8_is_written_lossily() {
    let rec = sample_http();
    let url = [rec.url.as_str()];
    let parts = parts_of(&rec, &url);
    let mut buf = Vec::new();
    encode_http_parts(
        &parts,
        [("x-bin", &b"a\xffb"[..]), ("host", b"web")],
        &mut buf,
    );
    let (kind, payload) = split(&buf);
    let ProxyEvent::Http(got) = decode_record(kind, payload).unwrap() else {
        panic!("not an HTTP record");
    };
    assert_eq!(
        got.headers,
        vec![
            ("x-bin".to_owned(), "a\u{fffd}b".to_owned()),
            ("host".to_owned(), "web".to_owned())
        ]
    );
}
