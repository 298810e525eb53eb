//! DNS messages as the proxy reads and writes them (with `hickory-proto`): what a query asks,
//! the proxy's own answers (REFUSED, FORMERR, SERVFAIL), what an answer resolved.
//!
//! Every function takes bytes from outside: errors say why, nothing panics, and nothing is
//! allocated beyond what the (bounded: 64 KiB at most) message holds.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData};

/// The largest DNS message over UDP without EDNS (RFC 1035 4.2.1).
pub const UDP_PLAIN_MAX: usize = 512;

/// A query the proxy may judge: one question, a name it can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryInfo {
    /// The message id.
    pub id: u16,
    /// The question's name, lower-case with the trailing dot.
    pub name: String,
    /// The question's type as Hubble shows it (`A`, `AAAA`, ...).
    pub qtypes: Vec<String>,
}

/// Why a message is not a query the proxy judges. `id` is set when the header was readable
/// (the proxy then answers FORMERR with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadQuery {
    /// The message id, when at least the header could be read.
    pub id: Option<u16>,
    /// Why.
    pub reason: String,
}

/// The header's id, when the message is at least a header long.
pub fn header_id(bytes: &[u8]) -> Option<u16> {
    bytes.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a query sent over UDP (`udp`: the 512-byte limit applies without EDNS) or TCP.
pub fn inspect_query(bytes: &[u8], udp: bool) -> Result<(Message, QueryInfo), BadQuery> {
    let id = header_id(bytes);
    let bad = |reason: String| BadQuery { id, reason };
    if bytes.len() < 12 {
        return Err(BadQuery {
            id: None,
            reason: format!("{} bytes: shorter than a DNS header", bytes.len()),
        });
    }
    let msg = Message::from_vec(bytes).map_err(|e| bad(format!("malformed: {e}")))?;
    if msg.message_type() != MessageType::Query {
        return Err(bad("a response, not a query".into()));
    }
    if msg.op_code() != OpCode::Query {
        return Err(bad(format!("opcode {:?} is not QUERY", msg.op_code())));
    }
    if udp && bytes.len() > UDP_PLAIN_MAX && msg.extensions().is_none() {
        return Err(bad(format!(
            "{} bytes over UDP without EDNS (the limit is {UDP_PLAIN_MAX})",
            bytes.len()
        )));
    }
    let [q] = msg.queries() else {
        return Err(bad(format!(
            "{} questions (one is the only kind resolvers answer)",
            msg.queries().len()
        )));
    };
    let name = host_name(q.name()).map_err(bad)?;
    let info = QueryInfo {
        id: msg.id(),
        name,
        qtypes: vec![q.query_type().to_string()],
    };
    Ok((msg, info))
}

/// The name lower-case with the trailing dot, as policy matches it; refused when a label holds
/// a byte host names do not use (policy names are letters, digits, '-' and '_').
pub fn host_name(name: &Name) -> Result<String, String> {
    let mut out = String::new();
    for label in name.iter() {
        if let Some(b) = label
            .iter()
            .find(|b| !(b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_'))
        {
            return Err(format!(
                "query name has the byte {b:#04x}, which host names do not use"
            ));
        }
        for b in label {
            out.push(char::from(b.to_ascii_lowercase()));
        }
        out.push('.');
    }
    if out.is_empty() {
        out.push('.');
    }
    Ok(out)
}

/// The proxy's own answer to `query`: same id, opcode, RD flag and question, no records.
pub fn answer_with(query: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(rcode);
    m.add_queries(query.queries().iter().cloned());
    m.to_vec()
        .unwrap_or_else(|_| header_only(query.id(), rcode))
}

/// A bare header answer (FORMERR to a query that could not be read but had an id).
pub fn header_only(id: u16, rcode: ResponseCode) -> Vec<u8> {
    let mut h = [0u8; 12];
    h[0..2].copy_from_slice(&id.to_be_bytes());
    // QR=1, opcode QUERY, RA=1, and the rcode's low 4 bits.
    h[2] = 0x80;
    h[3] = 0x80 | (u16::from(rcode) & 0x0f) as u8;
    h.to_vec()
}

/// What an upstream answer says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerInfo {
    /// The id (it must be the query's).
    pub id: u16,
    /// The response code.
    pub rcode: u16,
    /// The A records' addresses of the name and its CNAME chain.
    pub ips: Vec<Ipv4Addr>,
    /// The lowest TTL of the chain's records (0 without any).
    pub ttl: u32,
    /// The CNAME targets from the query name on, in order, lower-case with the trailing dot.
    pub cnames: Vec<String>,
    /// The record types present in the answer section, each once, in order of appearance.
    pub rrtypes: Vec<String>,
}

/// Reads an upstream answer to the query for `qname` (normalized): follows the CNAME chain
/// from the query name, collecting the A records of every name on it.
pub fn inspect_answer(bytes: &[u8], qname: &str) -> Result<AnswerInfo, String> {
    let msg = Message::from_vec(bytes).map_err(|e| format!("malformed answer: {e}"))?;
    if msg.message_type() != MessageType::Response {
        return Err("the resolver sent a query, not an answer".into());
    }
    let mut info = AnswerInfo {
        id: msg.id(),
        rcode: u16::from(msg.response_code()),
        ..Default::default()
    };
    for r in msg.answers() {
        let t = r.record_type().to_string();
        if !info.rrtypes.contains(&t) {
            info.rrtypes.push(t);
        }
    }
    // Walk the chain; a record whose name is not on it is ignored (out-of-zone junk must not
    // teach the agent addresses for names nobody asked about). Bounded by the record count,
    // so a CNAME loop ends.
    let mut chain = vec![qname.to_owned()];
    let mut min_ttl: Option<u32> = None;
    for _ in 0..=msg.answers().len() {
        let Some(current) = chain.last().cloned() else {
            break;
        };
        let next = msg.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(c) if host_name(r.name()).ok().as_deref() == Some(&current) => {
                Some((host_name(&c.0).ok()?, r.ttl()))
            }
            _ => None,
        });
        match next {
            Some((target, ttl)) if !chain.contains(&target) => {
                min_ttl = Some(min_ttl.map_or(ttl, |m| m.min(ttl)));
                chain.push(target.clone());
                info.cnames.push(target);
            }
            _ => break,
        }
    }
    for r in msg.answers() {
        if let RData::A(a) = r.data() {
            let on_chain = host_name(r.name()).is_ok_and(|n| chain.contains(&n));
            if on_chain && !info.ips.contains(&a.0) {
                info.ips.push(a.0);
                min_ttl = Some(min_ttl.map_or(r.ttl(), |m| m.min(r.ttl())));
            }
        }
    }
    info.ttl = min_ttl.unwrap_or(0);
    Ok(info)
}
