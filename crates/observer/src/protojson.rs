//! Hubble's JSON, byte for byte: what `hubble observe -o json` prints and what Cilium's flow
//! exporter writes.
//!
//! Hubble's messages marshal themselves with Go's `protojson` and `UseProtoNames: true`
//! (`pod_name`, `is_reply`, `drop_reason_desc`), and are then written through
//! `encoding/json.Encoder`, which compacts the output and escapes `<`, `>`, `&`, U+2028 and
//! U+2029. protojson visits fields in declaration order (a oneof where it is declared), writes
//! 64-bit integers as strings, enums by name, timestamps in UTC with `Z` and 0, 3, 6 or 9
//! fractional digits, and wrappers as their bare value. pbjson's serde impls differ in the
//! field order of oneofs and in the timestamp format, so this module walks the message through
//! its descriptor ([`prost_reflect`]) instead and builds an ordered [`Json`] tree, which prints
//! as Hubble's JSON ([`Json::to_hubble_string`]) or as YAML (its `Serialize` impl keeps the
//! order).

use std::fmt::Write as _;
use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value,
};
use serde::ser::{SerializeMap, SerializeSeq};

use crate::proto::flow::Flow;
use crate::proto::observer::GetFlowsResponse;

/// A JSON value whose objects keep their fields in the order protojson writes them.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null` (protojson writes it only for `google.protobuf.NullValue`).
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, already formatted as protojson formats it.
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, fields in protojson's order.
    Object(Vec<(String, Json)>),
}

/// Why a message cannot be written as JSON.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message type is not in the API's descriptors.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The message's bytes did not decode with its descriptor (a bug).
    #[error("cannot decode {0}: {1}")]
    Decode(String, prost::DecodeError),
    /// A timestamp or duration out of protojson's range.
    #[error("{0}")]
    OutOfRange(String),
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The descriptors build.rs compiled the generated code from: decoding cannot fail.
        DescriptorPool::decode(
            &include_bytes!(concat!(env!("OUT_DIR"), "/ciliate_observer_descriptor.bin"))[..],
        )
        .unwrap_or_default()
    })
}

/// The JSON tree of any message of the API, by its full name (`flow.Flow`).
pub fn to_json(message: &impl prost::Message, full_name: &str) -> Result<Json, Error> {
    let desc = pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| Error::UnknownType(full_name.to_owned()))?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .map_err(|e| Error::Decode(full_name.to_owned(), e))?;
    message_json(&dynamic)
}

/// A Flow as `hubble observe -o json --compat legacy-json-output` and `hubble.Flow`'s
/// `MarshalJSON` print it, one line without the newline.
pub fn flow_string(flow: &Flow) -> Result<String, Error> {
    Ok(to_json(flow, "flow.Flow")?.to_hubble_string())
}

/// A GetFlowsResponse as `hubble observe -o json`/`-o jsonpb` prints it and Cilium's flow
/// exporter writes it, one line without the newline.
pub fn response_string(response: &GetFlowsResponse) -> Result<String, Error> {
    Ok(to_json(response, "observer.GetFlowsResponse")?.to_hubble_string())
}

/// Fields in declaration order, as protojson's `IndexNameFieldOrder` visits them.
fn declared_fields(message: &DynamicMessage) -> Vec<FieldDescriptor> {
    let desc = message.descriptor();
    desc.descriptor_proto()
        .field
        .iter()
        .filter_map(|f| desc.get_field(u32::try_from(f.number?).ok()?))
        .collect()
}

fn message_json(message: &DynamicMessage) -> Result<Json, Error> {
    if let Some(wkt) = well_known(message)? {
        return Ok(wkt);
    }
    let mut fields = Vec::new();
    for field in declared_fields(message) {
        if !message.has_field(&field) {
            continue;
        }
        let value = message.get_field(&field);
        fields.push((field.name().to_owned(), field_json(&field, &value)?));
    }
    Ok(Json::Object(fields))
}

fn field_json(field: &FieldDescriptor, value: &Value) -> Result<Json, Error> {
    let kind = field.kind();
    match value {
        Value::List(items) => Ok(Json::Array(
            items
                .iter()
                .map(|v| value_json(&kind, v))
                .collect::<Result<_, _>>()?,
        )),
        Value::Map(map) => {
            let value_kind = match &kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let mut entries: Vec<(&MapKey, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Ok(Json::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((map_key(k), value_json(&value_kind, v)?)))
                    .collect::<Result<_, Error>>()?,
            ))
        }
        v => value_json(&kind, v),
    }
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn value_json(kind: &Kind, value: &Value) -> Result<Json, Error> {
    Ok(match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::Number(n.to_string()),
        Value::U32(n) => Json::Number(n.to_string()),
        Value::I64(n) => Json::String(n.to_string()),
        Value::U64(n) => Json::String(n.to_string()),
        Value::F32(n) => float_json(f64::from(*n), true),
        Value::F64(n) => float_json(*n, false),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => Json::Null,
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => Json::String(v.name().to_owned()),
                None => Json::Number(n.to_string()),
            },
            _ => Json::Number(n.to_string()),
        },
        Value::Message(m) => message_json(m)?,
        Value::List(items) => Json::Array(
            items
                .iter()
                .map(|v| value_json(kind, v))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(_) => Json::Object(Vec::new()),
    })
}

/// protojson's float format: NaN and infinities as strings, `e` notation outside
/// [1e-6, 1e21), else the shortest decimal that reads back the same.
fn float_json(n: f64, single: bool) -> Json {
    if n.is_nan() {
        return Json::String("NaN".into());
    }
    if n.is_infinite() {
        return Json::String(if n > 0.0 { "Infinity" } else { "-Infinity" }.into());
    }
    let abs = n.abs();
    let exponent = abs != 0.0 && !(1e-6..1e21).contains(&abs);
    let text = match (exponent, single) {
        // f32 values print with f32's shortest form, as Go's bitSize 32.
        #[allow(clippy::cast_possible_truncation)]
        (false, true) => format!("{}", n as f32),
        (false, false) => format!("{n}"),
        #[allow(clippy::cast_possible_truncation)]
        (true, true) => go_exponent(&format!("{:e}", n as f32)),
        (true, false) => go_exponent(&format!("{n:e}")),
    };
    Json::Number(text)
}

/// Rust's `1e21` as Go writes it: `1e+21`.
fn go_exponent(rust: &str) -> String {
    match rust.split_once('e') {
        Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
        _ => rust.to_owned(),
    }
}

/// Go's civil date of days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// `.123`, `.123456`, `.123456789` or nothing, as protojson trims nanoseconds.
fn fraction(nanos: i32) -> String {
    if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    }
}

/// protojson's Timestamp: `2024-05-01T10:00:00.123Z`.
pub fn timestamp_string(seconds: i64, nanos: i32) -> Result<String, Error> {
    // protojson's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
    if !(-62_135_596_800..=253_402_300_799).contains(&seconds)
        || !(0..1_000_000_000).contains(&nanos)
    {
        return Err(Error::OutOfRange(format!(
            "timestamp ({seconds}, {nanos}) out of range"
        )));
    }
    let (y, mo, d) = civil_from_days(seconds.div_euclid(86_400));
    let rem = seconds.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out.push_str(&fraction(nanos));
    out.push('Z');
    Ok(out)
}

fn int_field(message: &DynamicMessage, name: &str) -> i64 {
    match message.get_field_by_name(name).as_deref() {
        Some(Value::I64(n)) => *n,
        Some(Value::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

/// The well-known types protojson writes in their own form.
fn well_known(message: &DynamicMessage) -> Result<Option<Json>, Error> {
    let desc = message.descriptor();
    let name = desc.full_name();
    let Some(short) = name.strip_prefix("google.protobuf.") else {
        return Ok(None);
    };
    Ok(Some(match short {
        "Timestamp" => {
            let (s, n) = (int_field(message, "seconds"), int_field(message, "nanos"));
            Json::String(timestamp_string(s, i32::try_from(n).unwrap_or(-1))?)
        }
        "Duration" => {
            let (mut s, mut n) = (int_field(message, "seconds"), int_field(message, "nanos"));
            let sign = if s < 0 || n < 0 {
                s = -s;
                n = -n;
                "-"
            } else {
                ""
            };
            let n = i32::try_from(n).map_err(|_| Error::OutOfRange("duration nanos".into()))?;
            Json::String(format!("{sign}{s}{}s", fraction(n)))
        }
        "DoubleValue" | "FloatValue" | "Int64Value" | "UInt64Value" | "Int32Value"
        | "UInt32Value" | "BoolValue" | "StringValue" | "BytesValue" => {
            let Some(field) = desc.get_field_by_name("value") else {
                return Ok(None);
            };
            value_json(&field.kind(), &message.get_field(&field))?
        }
        "FieldMask" => {
            let paths = match message.get_field_by_name("paths").as_deref() {
                Some(Value::List(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(lower_camel))
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            };
            Json::String(paths.join(","))
        }
        "Any" => any_json(message)?,
        _ => return Ok(None),
    }))
}

/// `foo_bar.baz_qux` → `fooBar.bazQux`, as protojson writes FieldMask paths.
fn lower_camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
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

/// `{"@type": url, ...the message's fields}` (`"value"` for well-known types).
fn any_json(message: &DynamicMessage) -> Result<Json, Error> {
    let url = match message.get_field_by_name("type_url").as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let bytes = match message.get_field_by_name("value").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let type_name = url.rsplit('/').next().unwrap_or_default().to_owned();
    let desc = pool()
        .get_message_by_name(&type_name)
        .ok_or_else(|| Error::UnknownType(type_name.clone()))?;
    let inner = DynamicMessage::decode(desc, bytes.as_ref())
        .map_err(|e| Error::Decode(type_name.clone(), e))?;
    let mut fields = vec![("@type".to_owned(), Json::String(url))];
    match message_json(&inner)? {
        Json::Object(inner_fields) if !type_name.starts_with("google.protobuf.") => {
            fields.extend(inner_fields);
        }
        other => fields.push(("value".to_owned(), other)),
    }
    Ok(Json::Object(fields))
}

impl Json {
    /// Compact JSON as Go's `encoding/json.Encoder` writes a protojson message (without the
    /// trailing newline `Encode` adds).
    pub fn to_hubble_string(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_string(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The field `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// protojson's string escapes (`\"`, `\\`, `\b\f\n\r\t`, `\u00XX` for other control
/// characters) plus `encoding/json`'s HTML-safe ones (`<`, `>`, `&`, U+2028, U+2029).
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl serde::Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => {
                if let Ok(i) = n.parse::<i64>() {
                    serializer.serialize_i64(i)
                } else if let Ok(u) = n.parse::<u64>() {
                    serializer.serialize_u64(u)
                } else {
                    serializer.serialize_f64(n.parse::<f64>().unwrap_or(f64::NAN))
                }
            }
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Checks field mask paths (`source.namespace`, `time`) against a message type, as
/// `fieldmaskpb.New` does: each part names a field, every part but the last a message.
pub fn check_field_mask(full_name: &str, paths: &[String]) -> Result<(), String> {
    let root = pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message type {full_name}"))?;
    for path in paths {
        let mut desc = root.clone();
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let field = desc.get_field_by_name(part).ok_or_else(|| {
                format!(
                    "proto: invalid path {path:?} for message {:?}",
                    root.full_name()
                )
            })?;
            if i + 1 < parts.len() {
                match field.kind() {
                    Kind::Message(m) if !field.is_list() && !field.is_map() => desc = m,
                    _ => {
                        return Err(format!(
                            "proto: invalid path {path:?} for message {:?}",
                            root.full_name()
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

impl Json {
    /// Keeps only the fields the mask's paths name (all of a field named whole), as Hubble's
    /// `fieldmask.Copy`; an empty mask keeps everything.
    pub fn masked(self, paths: &[String]) -> Json {
        if paths.is_empty() {
            return self;
        }
        let parts: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
        self.keep(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    fn keep(self, paths: &[&[&str]]) -> Json {
        let Json::Object(fields) = self else {
            return self;
        };
        let mut kept = Vec::new();
        for (name, value) in fields {
            let below: Vec<&[&str]> = paths
                .iter()
                .filter(|p| p.first() == Some(&name.as_str()))
                .map(|p| &p[1..])
                .collect();
            if below.is_empty() {
                continue;
            }
            if below.iter().any(|p| p.is_empty()) {
                kept.push((name, value));
            } else {
                kept.push((name, value.keep(&below)));
            }
        }
        Json::Object(kept)
    }
}

/// A copy of `message` (of type `full_name`) with only the fields the mask's paths name, as
/// Hubble's server applies `GetFlowsRequest.field_mask` (`fieldmask.Copy`); an empty mask
/// keeps everything. Paths are checked first ([`check_field_mask`]).
pub fn mask_message<M: prost::Message + Default>(
    message: &M,
    full_name: &str,
    paths: &[String],
) -> Result<M, String> {
    if paths.is_empty() {
        return M::decode(message.encode_to_vec().as_slice()).map_err(|e| e.to_string());
    }
    check_field_mask(full_name, paths)?;
    let desc = pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message type {full_name}"))?;
    let mut dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .map_err(|e| e.to_string())?;
    let parts: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
    keep_fields(
        &mut dynamic,
        &parts.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    );
    dynamic.transcode_to::<M>().map_err(|e| e.to_string())
}

fn keep_fields(message: &mut DynamicMessage, paths: &[&[&str]]) {
    for field in declared_fields(message) {
        let below: Vec<&[&str]> = paths
            .iter()
            .filter(|p| p.first() == Some(&field.name()))
            .map(|p| &p[1..])
            .collect();
        if below.is_empty() {
            message.clear_field(&field);
        } else if !below.iter().any(|p| p.is_empty()) && message.has_field(&field) {
            if let Value::Message(inner) = message.get_field_mut(&field) {
                keep_fields(inner, &below);
            }
        }
    }
}
