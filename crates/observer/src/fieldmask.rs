//! GetFlows field masks: the `hubble` CLI asks for only the Flow fields its output prints
//! (`time,verdict,IP,l4,source.pod_name,...`); the flows it gets carry those and nothing else,
//! as Hubble's own server trims them.
//!
//! Paths are checked against the schema (the descriptor `build.rs` compiled from `proto/`), so
//! a mistyped path is refused by name rather than silently dropping a field. Trimming works on
//! the flow's wire encoding, by field number: encode, copy the masked fields (descending into
//! sub-messages a path names part of), decode; no per-field code, a few microseconds a flow.

use std::collections::HashMap;

use prost::Message;
use prost_types::{field_descriptor_proto::Type, DescriptorProto, FileDescriptorSet};

use crate::proto::flow::Flow;

const DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ciliate_observer_descriptor.bin"));

/// A field mask refused: the path and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid field_mask path {path:?}: {reason}")]
pub struct MaskError {
    /// The path as given.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A field to keep: whole, or only its `children` (by proto name, with their field number).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Node {
    whole: bool,
    children: Vec<(String, u64, Node)>,
}

/// A compiled field mask over Flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMask {
    root: Node,
}

fn messages() -> HashMap<String, DescriptorProto> {
    fn add(out: &mut HashMap<String, DescriptorProto>, prefix: &str, m: &DescriptorProto) {
        let name = format!("{prefix}.{}", m.name());
        for nested in &m.nested_type {
            add(out, &name, nested);
        }
        out.insert(name, m.clone());
    }
    let mut out = HashMap::new();
    // The descriptor is this crate's own build output: it always decodes.
    if let Ok(set) = FileDescriptorSet::decode(DESCRIPTOR) {
        for file in &set.file {
            for m in &file.message_type {
                add(&mut out, &format!(".{}", file.package()), m);
            }
        }
    }
    out
}

impl FlowMask {
    /// Compiles `paths`; `None` when there are none (whole flows).
    pub fn new(paths: &[String]) -> Result<Option<Self>, MaskError> {
        if paths.is_empty() {
            return Ok(None);
        }
        let messages = messages();
        let mut root = Node::default();
        for path in paths {
            let bad = |reason: String| MaskError {
                path: path.clone(),
                reason,
            };
            let mut message = ".flow.Flow".to_owned();
            let mut node = &mut root;
            let segments: Vec<&str> = path.split('.').collect();
            for (i, seg) in segments.iter().enumerate() {
                let desc = messages
                    .get(&message)
                    .ok_or_else(|| bad(format!("{message} has no fields")))?;
                let field = desc
                    .field
                    .iter()
                    .find(|f| f.name() == *seg)
                    .ok_or_else(|| bad(format!("{} has no field {seg:?}", &message[1..])))?;
                let last = i + 1 == segments.len();
                if !last && field.r#type() != Type::Message {
                    return Err(bad(format!("{seg:?} is not a message")));
                }
                let pos = match node.children.iter().position(|(n, _, _)| n == seg) {
                    Some(p) => p,
                    None => {
                        let number = u64::try_from(field.number()).unwrap_or_default();
                        node.children
                            .push(((*seg).to_owned(), number, Node::default()));
                        node.children.len() - 1
                    }
                };
                let child = &mut node.children[pos].2;
                if last || child.whole {
                    // The whole field, even if another path asks for part of it.
                    child.whole = true;
                    child.children.clear();
                    break;
                }
                node = child;
                message = field.type_name().to_owned();
            }
        }
        Ok(Some(Self { root }))
    }

    /// `flow` with only the masked fields.
    pub fn apply(&self, flow: &Flow) -> Flow {
        let wire = flow.encode_to_vec();
        let mut out = Vec::with_capacity(wire.len());
        // Our own encoding always parses; were it not to, the flow goes out whole.
        if prune(&wire, &self.root, &mut out).is_none() {
            return flow.clone();
        }
        Flow::decode(&out[..]).unwrap_or_else(|_| flow.clone())
    }
}

/// Copies the fields of the encoded message `buf` that `node` keeps into `out`.
fn prune(mut buf: &[u8], node: &Node, out: &mut Vec<u8>) -> Option<()> {
    use prost::encoding::{decode_varint, encode_varint};
    const LEN: u64 = 2;
    while !buf.is_empty() {
        let record = buf;
        let key = decode_varint(&mut buf).ok()?;
        let mut body: &[u8] = &[];
        match key & 7 {
            0 => {
                decode_varint(&mut buf).ok()?;
            }
            1 => buf = buf.get(8..)?,
            5 => buf = buf.get(4..)?,
            LEN => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                body = buf.get(..len)?;
                buf = &buf[len..];
            }
            _ => return None,
        }
        let whole = &record[..record.len() - buf.len()];
        let Some((_, _, child)) = node.children.iter().find(|(_, n, _)| *n == key >> 3) else {
            continue;
        };
        if child.whole || key & 7 != LEN {
            out.extend_from_slice(whole);
        } else {
            let mut sub = Vec::new();
            prune(body, child, &mut sub)?;
            encode_varint(key, out);
            encode_varint(sub.len() as u64, out);
            out.extend_from_slice(&sub);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{store, trace_event};
    use crate::convert::to_flow;

    #[test]
    fn keeps_only_the_masked_fields() {
        let flow = to_flow(&trace_event(), &store(), "default/node-a");
        let paths: Vec<String> = [
            "time",
            "verdict",
            "IP",
            "source.pod_name",
            "node_name",
            "Summary",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let mask = FlowMask::new(&paths).expect("valid").expect("some");
        let got = mask.apply(&flow);
        assert_eq!(got.time, flow.time);
        assert_eq!(got.verdict, flow.verdict);
        assert_eq!(got.ip, flow.ip);
        assert_eq!(got.node_name, flow.node_name);
        assert_eq!(got.summary, flow.summary);
        let src = got.source.expect("source");
        assert_eq!(src.pod_name, "client");
        assert_eq!((src.namespace.as_str(), src.identity), ("", 0));
        assert!(got.destination.is_none() && got.l4.is_none() && got.event_type.is_none());

        // Part of a oneof member, and a field asked for twice (whole and in part).
        let paths: Vec<String> = ["l4.TCP.destination_port", "source", "source.labels"]
            .into_iter()
            .map(String::from)
            .collect();
        let got = FlowMask::new(&paths)
            .expect("valid")
            .expect("some")
            .apply(&flow);
        let Some(crate::proto::flow::layer4::Protocol::Tcp(tcp)) = got.l4.and_then(|l| l.protocol)
        else {
            panic!("no TCP");
        };
        assert_eq!(
            (tcp.source_port, tcp.destination_port, tcp.flags),
            (0, 80, None)
        );
        assert_eq!(got.source, flow.source);
        assert_eq!(got.time, None);
    }

    #[test]
    fn paths_are_checked_against_the_schema() {
        assert_eq!(FlowMask::new(&[]), Ok(None));
        for (path, why) in [
            ("nope", "no field"),
            ("source.nope", "no field"),
            ("verdict.x", "not a message"),
            ("", "no field"),
        ] {
            let e = FlowMask::new(&[path.to_owned()]).expect_err(path);
            assert!(e.to_string().contains(why), "{path}: {e}");
        }
    }
}
