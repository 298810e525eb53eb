//! GetFlows field masks: the `hubble` CLI asks for only the Flow fields its output prints
//! (`time,verdict,IP,l4,source.pod_name,...`); the flows it gets carry those and nothing else,
//! as Hubble's own server trims them.
//!
//! Paths are checked against the schema (the descriptor `build.rs` compiled from `proto/`), so
//! a mistyped path is refused by name rather than silently dropping a field. Trimming goes
//! through the flow's protojson form, whose keys are the fields' JSON names (either spelling
//! of a name is recognised, so the serde configuration may change without breaking it).

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

/// The fields to keep below one message: by proto name, with their JSON name; an empty
/// `children` keeps the whole field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Node {
    children: Vec<(String, String, Node)>,
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

/// proto3's JSON name of a field (`pod_name` → `podName`).
fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
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
                        let json = match field.json_name() {
                            "" => json_name(seg),
                            j => j.to_owned(),
                        };
                        node.children
                            .push(((*seg).to_owned(), json, Node::default()));
                        node.children.len() - 1
                    }
                };
                let child = &mut node.children[pos].2;
                if last {
                    // The whole field, even if a deeper path asked for part of it.
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
        let Ok(mut v) = serde_json::to_value(flow) else {
            return flow.clone();
        };
        prune(&mut v, &self.root);
        serde_json::from_value(v).unwrap_or_else(|_| flow.clone())
    }
}

fn prune(v: &mut serde_json::Value, node: &Node) {
    let Some(obj) = v.as_object_mut() else { return };
    obj.retain(|key, _| {
        node.children
            .iter()
            .any(|(name, json, _)| key == name || key == json)
    });
    for (key, value) in obj.iter_mut() {
        if let Some((_, _, child)) = node
            .children
            .iter()
            .find(|(name, json, _)| key == name || key == json)
        {
            if !child.children.is_empty() {
                prune(value, child);
            }
        }
    }
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
