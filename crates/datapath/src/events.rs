//! Decoding of datapath events (`struct ciliate_event`) into [`MonitorEvent`]s.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use ciliate_model::monitor::{
    CtState, EventKind, EventRecord, MonitorEvent, RecordL4, VerdictInfo, TCP_FLAG_NAMES,
};

use crate::abi::{
    ct_result, RawEvent, EVENT_DROP, EVENT_F_EGRESS, EVENT_F_MATCH_MASK, EVENT_POLICY_VERDICT,
    EVENT_TRACE,
};

/// Hubble's name of a drop reason code.
pub fn drop_reason_name(code: u8) -> &'static str {
    match code {
        132 => "Invalid source ip",
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        136 => "Fragmentation needed",
        137 => "CT: Unknown L4 protocol",
        139 => "Unsupported L3 protocol",
        141 => "Error writing to packet",
        147 => "Error retrieving tunnel key",
        158 => "Service backend not found",
        160 => "No mapping for NAT masquerade",
        163 => "Unknown connection tracking state",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        _ => "Unknown drop reason",
    }
}

/// The name of a trace observation point (Cilium's TRACE_* numbering).
pub fn trace_point_name(code: u8) -> &'static str {
    match code {
        0 => "to-endpoint",
        1 => "to-proxy",
        2 => "to-host",
        3 => "to-stack",
        4 => "to-overlay",
        5 => "from-endpoint",
        6 => "from-proxy",
        7 => "from-host",
        8 => "from-stack",
        9 => "from-overlay",
        10 => "from-network",
        11 => "to-network",
        _ => "unknown",
    }
}

/// A policy verdict as text: direction, action and how it matched, e.g.
/// "egress allowed (L3-L4)" or "ingress denied (Policy denied)".
fn policy_verdict_name(code: u8, flags: u8) -> &'static str {
    let egress = flags & EVENT_F_EGRESS != 0;
    let matched = flags & EVENT_F_MATCH_MASK;
    match (egress, code, matched) {
        (true, 0, 1) => "egress allowed (L3-Only)",
        (true, 0, 2) => "egress allowed (L3-L4)",
        (true, 0, 3) => "egress allowed (L4-Only)",
        (true, 0, _) => "egress allowed (all)",
        (false, 0, 1) => "ingress allowed (L3-Only)",
        (false, 0, 2) => "ingress allowed (L3-L4)",
        (false, 0, 3) => "ingress allowed (L4-Only)",
        (false, 0, _) => "ingress allowed (all)",
        // An explicit deny entry matched as allow entries do: Hubble shows its match type
        // (`policy-verdict:L3-Only ... DENIED`); only the default deny matched nothing.
        (true, 181, 1) => "egress denied by denylist (L3-Only)",
        (true, 181, 2) => "egress denied by denylist (L3-L4)",
        (true, 181, 3) => "egress denied by denylist (L4-Only)",
        (true, 181, 4) => "egress denied by denylist (all)",
        (false, 181, 1) => "ingress denied by denylist (L3-Only)",
        (false, 181, 2) => "ingress denied by denylist (L3-L4)",
        (false, 181, 3) => "ingress denied by denylist (L4-Only)",
        (false, 181, 4) => "ingress denied by denylist (all)",
        (true, 181, _) => "egress denied (Policy denied by denylist)",
        (false, 181, _) => "ingress denied (Policy denied by denylist)",
        (true, _, _) => "egress denied (Policy denied)",
        (false, _, _) => "ingress denied (Policy denied)",
    }
}

fn ct_state(ct: u8) -> CtState {
    match ct {
        ct_result::NEW => CtState::New,
        ct_result::ESTABLISHED => CtState::Established,
        ct_result::REPLY => CtState::Reply,
        _ => CtState::Untracked,
    }
}

/// Names of the TCP flags set in `flags`, in header order.
pub fn tcp_flag_names(flags: u8) -> Vec<String> {
    TCP_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect()
}

/// Why an event could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than `struct ciliate_event`.
    #[error("event record of {0} bytes is shorter than the {1} bytes of struct ciliate_event")]
    Truncated(usize, usize),
    /// An event type this agent does not know (a newer datapath?).
    #[error("unknown event type {0}")]
    UnknownType(u8),
}

/// Turns monotonic timestamps from `bpf_ktime_get_ns()` into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot_wall: SystemTime,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Self {
        let mono = monotonic_now();
        let wall = SystemTime::now();
        Self {
            boot_wall: wall.checked_sub(mono).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// The wall-clock time of a monotonic timestamp.
    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(ktime_ns)
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()` and of conntrack expiry.
pub fn monotonic_now() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32),
        Err(_) => Duration::ZERO,
    }
}

/// Decodes one ring-buffer record into names, as `ciliate monitor` shows it.
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<MonitorEvent, DecodeError> {
    decode_record(bytes, clock).map(|r| monitor_event(&r))
}

/// Decodes one ring-buffer record into numbers only: what the observer keeps. Allocates
/// nothing.
pub fn decode_record(bytes: &[u8], clock: &Clock) -> Result<EventRecord, DecodeError> {
    let raw = RawEvent::from_bytes(bytes).ok_or(DecodeError::Truncated(
        bytes.len(),
        std::mem::size_of::<RawEvent>(),
    ))?;
    let kind = match raw.kind {
        EVENT_DROP => EventKind::Drop,
        EVENT_TRACE => EventKind::Trace,
        EVENT_POLICY_VERDICT => EventKind::PolicyVerdict,
        other => return Err(DecodeError::UnknownType(other)),
    };
    let verdict = if kind == EventKind::PolicyVerdict {
        VerdictInfo {
            egress: Some(raw.flags & EVENT_F_EGRESS != 0),
            match_type: verdict_match_type(raw.code, raw.flags),
        }
    } else {
        VerdictInfo::default()
    };
    let cap = usize::from(raw.cap_len).min(raw.data.len());
    let pkt = parse_packet(&raw.data[..cap]);
    Ok(EventRecord {
        kind,
        time: Some(clock.wall(raw.ktime_ns)),
        code: raw.code,
        verdict,
        endpoint: raw.ep_id,
        ifindex: raw.ifindex,
        src_identity: raw.src_identity,
        dst_identity: raw.dst_identity,
        ct_state: ct_state(raw.ct_state),
        len: raw.len,
        ethertype: pkt.ethertype,
        src: pkt.src,
        dst: pkt.dst,
        l4: pkt.l4,
        rev_nat: raw.rev_nat,
        rule: raw.rule,
        ethernet: pkt.ethernet,
    })
}

/// The match type a verdict's reason names (see [`policy_verdict_name`]): an allow entry's,
/// an explicit deny entry's; none for the default deny.
fn verdict_match_type(code: u8, flags: u8) -> u8 {
    match (code, flags & EVENT_F_MATCH_MASK) {
        (0, m @ 1..=3) | (181, m @ 1..=4) => m,
        (0, _) => 4,
        _ => 0,
    }
}

/// The event with its numbers named, as `ciliate monitor` shows it.
pub fn monitor_event(r: &EventRecord) -> MonitorEvent {
    let reason = match r.kind {
        EventKind::Drop => drop_reason_name(r.code),
        EventKind::Trace => trace_point_name(r.code),
        EventKind::PolicyVerdict => {
            let egress = if r.verdict.egress == Some(true) {
                EVENT_F_EGRESS
            } else {
                0
            };
            policy_verdict_name(r.code, egress | r.verdict.match_type)
        }
    };
    MonitorEvent {
        kind: r.kind,
        time: r
            .time
            .map(|t| humantime::format_rfc3339_micros(t).to_string())
            .unwrap_or_default(),
        code: r.code,
        reason: reason.to_owned(),
        endpoint: r.endpoint,
        ifindex: r.ifindex,
        src_identity: r.src_identity,
        dst_identity: r.dst_identity,
        ct_state: r.ct_state.as_str().to_owned(),
        len: r.len,
        ethertype: r.ethertype,
        src: r.src,
        dst: r.dst,
        l4: r.l4.map(RecordL4::to_l4),
        rev_nat: r.rev_nat,
        rule: r.rule,
        ethernet: r.ethernet,
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    ethernet: Option<ciliate_model::monitor::EthernetAddrs>,
    ethertype: u16,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    l4: Option<RecordL4>,
}

/// Parses what was captured: Ethernet, IPv4, and TCP/UDP/ICMP when present in full.
/// Anything cut short yields the layers that were complete, never a panic.
fn parse_packet(b: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    if b.len() < 14 {
        return p;
    }
    let mac = |o: usize| {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[o..o + 6]);
        ciliate_model::endpoint::MacAddr(m)
    };
    p.ethernet = Some(ciliate_model::monitor::EthernetAddrs {
        source: mac(6),
        destination: mac(0),
    });
    p.ethertype = u16::from_be_bytes([b[12], b[13]]);
    if p.ethertype != 0x0800 || b.len() < 34 {
        return p;
    }
    let ip = &b[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    p.src = Some(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    p.dst = Some(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let proto = ip[9];
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if ihl < 20 || fragment_offset != 0 {
        p.l4 = Some(RecordL4::Other { proto });
        return p;
    }
    let l4 = ip.get(ihl..).unwrap_or(&[]);
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    p.l4 = match proto {
        6 if l4.len() >= 14 => Some(RecordL4::Tcp {
            sport: port(0),
            dport: port(2),
            flags: l4[13],
        }),
        17 if l4.len() >= 4 => Some(RecordL4::Udp {
            sport: port(0),
            dport: port(2),
        }),
        1 if l4.len() >= 2 => Some(RecordL4::Icmp {
            r#type: l4[0],
            code: l4[1],
        }),
        6 | 17 | 1 => None,
        other => Some(RecordL4::Other { proto: other }),
    };
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::EVENT_CAPTURE_LEN;
    use ciliate_model::monitor::L4;

    #[test]
    fn a_denied_verdict_keeps_the_match_type_of_the_deny_entry() {
        assert_eq!(
            policy_verdict_name(181, EVENT_F_EGRESS | 2),
            "egress denied by denylist (L3-L4)"
        );
        assert_eq!(
            policy_verdict_name(181, 1),
            "ingress denied by denylist (L3-Only)"
        );
        // The default deny matched no entry.
        assert_eq!(
            policy_verdict_name(133, 0),
            "ingress denied (Policy denied)"
        );
    }

    #[test]
    fn the_proxys_drop_reasons_and_trace_point_have_hubbles_names() {
        use crate::abi::{
            DROP_PROXY_LOOKUP_FAILED, DROP_PROXY_SET_FAILED, DROP_PROXY_UNKNOWN_PROTO,
            TRACE_TO_PROXY,
        };
        assert_eq!(
            drop_reason_name(DROP_PROXY_LOOKUP_FAILED),
            "Socket lookup failed"
        );
        assert_eq!(
            drop_reason_name(DROP_PROXY_SET_FAILED),
            "Socket assign failed"
        );
        assert_eq!(
            drop_reason_name(DROP_PROXY_UNKNOWN_PROTO),
            "Proxy redirection not supported for protocol"
        );
        assert_eq!(trace_point_name(TRACE_TO_PROXY), "to-proxy");
    }

    fn tcp_syn() -> Vec<u8> {
        let mut p = vec![0u8; 14 + 20 + 20];
        p[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        p[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        p[14] = 0x45;
        p[14 + 9] = 6;
        p[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        p[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        p[34..36].copy_from_slice(&40000u16.to_be_bytes());
        p[36..38].copy_from_slice(&80u16.to_be_bytes());
        p[34 + 13] = 0x02;
        p
    }

    fn record(kind: u8, code: u8, pkt: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 32 + EVENT_CAPTURE_LEN + 8];
        r[0] = kind;
        r[1] = code;
        r[2..4].copy_from_slice(&7u16.to_ne_bytes());
        r[24..28].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
        r[28..30].copy_from_slice(&(pkt.len() as u16).to_ne_bytes());
        r[30] = ct_result::NEW;
        r[32..32 + pkt.len()].copy_from_slice(pkt);
        r
    }

    #[test]
    fn a_verdict_decoded_to_numbers_is_named_as_the_kernel_reported_it() {
        for code in [0u8, 133, 181] {
            for flags in [0u8, 1, 2, 3, 4] {
                for egress in [0, EVENT_F_EGRESS] {
                    let mut r = record(EVENT_POLICY_VERDICT, code, &tcp_syn());
                    r[31] = flags | egress;
                    let rec = decode_record(&r, &Clock::now()).unwrap();
                    assert_eq!(
                        monitor_event(&rec).reason,
                        policy_verdict_name(code, flags | egress),
                        "code {code} flags {flags} egress {egress}"
                    );
                }
            }
        }
    }

    #[test]
    fn decodes_a_trace_of_a_tcp_syn() {
        let ev = decode(&record(EVENT_TRACE, 5, &tcp_syn()), &Clock::now()).unwrap();
        assert_eq!(ev.kind, EventKind::Trace);
        assert_eq!(ev.reason, "from-endpoint");
        assert_eq!(ev.endpoint, 7);
        assert_eq!(ev.ct_state, "new");
        assert_eq!(ev.rev_nat, 0);
        assert_eq!(ev.src, Some(Ipv4Addr::new(10, 0, 0, 1)));
        let eth = ev.ethernet.expect("ethernet");
        assert_eq!(
            (eth.source.to_string(), eth.destination.to_string()),
            ("02:00:00:00:00:01".into(), "02:00:00:00:00:02".into())
        );
        assert_eq!(
            ev.l4,
            Some(L4::Tcp {
                sport: 40000,
                dport: 80,
                flags: vec!["SYN".into()]
            })
        );
    }

    #[test]
    fn decodes_the_rev_nat_index_of_a_service_connection() {
        let mut r = record(EVENT_TRACE, 5, &tcp_syn());
        r[32 + EVENT_CAPTURE_LEN..32 + EVENT_CAPTURE_LEN + 2].copy_from_slice(&5u16.to_ne_bytes());
        let ev = decode(&r, &Clock::now()).unwrap();
        assert_eq!(ev.rev_nat, 5);
        assert_eq!(ev.rule, 0);
    }

    #[test]
    fn decodes_the_rule_that_judged_the_packet() {
        let mut r = record(EVENT_POLICY_VERDICT, 0, &tcp_syn());
        let at = 32 + EVENT_CAPTURE_LEN + 4;
        r[at..at + 4].copy_from_slice(&0x0102_0304u32.to_ne_bytes());
        let ev = decode(&r, &Clock::now()).unwrap();
        assert_eq!(ev.rule, 0x0102_0304);
        assert_eq!(ev.rev_nat, 0);
    }

    #[test]
    fn decodes_drops_with_hubble_reason_names() {
        let ev = decode(&record(EVENT_DROP, 132, &tcp_syn()), &Clock::now()).unwrap();
        assert_eq!(ev.kind, EventKind::Drop);
        assert_eq!(ev.reason, "Invalid source ip");
    }

    #[test]
    fn truncated_records_and_packets_are_errors_or_partial_never_panics() {
        assert!(matches!(
            decode(&[1, 2, 3], &Clock::now()),
            Err(DecodeError::Truncated(3, _))
        ));
        assert!(matches!(
            decode(&record(9, 0, &[]), &Clock::now()),
            Err(DecodeError::UnknownType(9))
        ));
        let syn = tcp_syn();
        for cut in 0..syn.len() {
            let ev = decode(&record(EVENT_TRACE, 0, &syn[..cut]), &Clock::now()).unwrap();
            if cut < 34 {
                assert_eq!(ev.src, None);
            }
            if cut < 48 {
                assert_eq!(ev.l4, None, "cut at {cut}");
            }
        }
    }

    #[test]
    fn non_first_fragments_have_no_ports() {
        let mut p = tcp_syn();
        p[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        let ev = decode(&record(EVENT_TRACE, 0, &p), &Clock::now()).unwrap();
        assert_eq!(ev.l4, Some(L4::Other { proto: 6 }));
    }
}
