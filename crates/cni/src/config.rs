//! The network configuration the runtime streams on stdin. Pure.
//!
//! Parsed in two steps so that errors get the right code: bytes that are not JSON are code 6
//! (with serde's line and column), JSON that is not a valid configuration is code 7 (naming the
//! field), and a `cniVersion` we do not speak is code 1, checked before anything else because
//! other fields may mean different things in other versions.

use std::path::PathBuf;

use ciliate_model::api::{Attachment, DEFAULT_SOCKET};
use ciliate_model::labels::SOURCE_K8S;
use ciliate_model::{Label, Labels};
use serde_json::{Map, Value};

use crate::error::{code, CniError};
use crate::result::{CniResult, LATEST_VERSION, SUPPORTED_VERSIONS};

/// The key of CNI 1.1's GC list.
const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
/// The same list under the name an earlier draft used; libcni sends both.
const ATTACHMENTS_ALIAS: &str = "cni.dev/attachments";

/// The capability containerd's CRI plugin fills with the pod's annotations (when the network
/// configuration lists it under `capabilities`).
pub const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";
/// The pod annotation our labels come from under containerd: the CRI passes a pod's
/// annotations to CNI, but never its labels.
pub const LABELS_ANNOTATION: &str = "ciliate.io/labels";

/// The smallest MTU IPv4 allows, and the largest any link has.
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

/// Our configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name`: the network's name.
    pub name: String,
    /// `type`: the plugin binary's name.
    pub plugin_type: String,
    /// `agentSocket`: where the agent listens (default [`DEFAULT_SOCKET`]).
    pub agent_socket: PathBuf,
    /// `mtu`: overrides the MTU the agent hands out.
    pub mtu: Option<u32>,
    /// `args.cni.labels` and the `ciliate.io/labels` pod annotation (from
    /// `runtimeConfig."io.kubernetes.cri.pod-annotations"`): labels the runtime gives the pod.
    pub labels: Labels,
    /// `prevResult`: the result of the previous plugin (CHECK and DEL get ours).
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments`: the attachments GC must keep.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `cniVersion` of `input` if it is a supported one, else the newest we speak: the version
/// to answer errors in, even when the configuration is otherwise broken.
pub fn answer_version(input: &[u8]) -> String {
    serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}

impl NetConf {
    /// Parses and validates the configuration bytes.
    pub fn parse(input: &[u8]) -> Result<Self, CniError> {
        if input.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::new(
                code::DECODE,
                "no network configuration on stdin",
                "the runtime must write the network configuration (JSON) to the plugin's stdin",
            ));
        }
        let value: Value = serde_json::from_slice(input).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration is not valid JSON: {e}"),
                "",
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::invalid_config("it must be a JSON object"));
        };

        let cni_version = match obj.get("cniVersion") {
            None => return Err(CniError::invalid_config("cniVersion is missing")),
            Some(Value::String(v)) => v.clone(),
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "cniVersion must be a string, got {other}"
                )))
            }
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CNI version {cni_version:?} is not supported: ciliate-cni supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
                "set \"cniVersion\" in the network configuration to a supported version",
            ));
        }

        let name = required_str(&obj, "name")?;
        validate_network_name(&name)?;
        let plugin_type = required_str(&obj, "type")?;
        let agent_socket = match optional_str(&obj, "agentSocket")? {
            None => PathBuf::from(DEFAULT_SOCKET),
            Some(s) if s.starts_with('/') => PathBuf::from(s),
            Some(s) => {
                return Err(CniError::invalid_config(format!(
                    "agentSocket must be an absolute path, got {s:?}"
                )))
            }
        };
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().filter(|m| MTU_RANGE.contains(m)) {
                Some(m) => u32::try_from(m).ok(),
                None => {
                    return Err(CniError::invalid_config(format!(
                        "mtu must be an integer from 68 to 65535, got {v}"
                    )))
                }
            },
        };
        let mut labels = labels(&obj)?;
        for l in annotation_labels(&obj)?.iter() {
            labels.insert(l);
        }
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
                CniError::invalid_config(format!("prevResult is not a CNI result: {e}"))
            })?),
        };
        let valid_attachments = match obj
            .get(VALID_ATTACHMENTS)
            .or_else(|| obj.get(ATTACHMENTS_ALIAS))
        {
            None => None,
            Some(v) => Some(attachments(v)?),
        };

        Ok(Self {
            cni_version,
            name,
            plugin_type,
            agent_socket,
            mtu,
            labels,
            prev_result,
            valid_attachments,
        })
    }
}

fn required_str(obj: &Map<String, Value>, key: &str) -> Result<String, CniError> {
    match optional_str(obj, key)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(CniError::invalid_config(format!("{key} is missing"))),
    }
}

fn optional_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::invalid_config(format!(
            "{key} must be a string, got {other}"
        ))),
    }
}

/// Network names follow the container id rule of the spec.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_config(format!(
            "name {name:?} must start with a letter or digit and hold only letters, digits, \
             '_', '.' and '-'"
        )))
    }
}

/// `args.cni.labels`: `[{"key": "app", "value": "web"}, ...]` (the CNI labels convention).
fn labels(obj: &Map<String, Value>) -> Result<Labels, CniError> {
    let Some(list) = obj
        .get("args")
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("labels"))
    else {
        return Ok(Labels::new());
    };
    let Value::Array(items) = list else {
        return Err(CniError::invalid_config(format!(
            "args.cni.labels must be a list of {{\"key\", \"value\"}} objects, got {list}"
        )));
    };
    let mut labels = Labels::new();
    for (i, item) in items.iter().enumerate() {
        let field = |f: &str| item.get(f).and_then(Value::as_str);
        let (Some(key), Some(value)) = (field("key"), field("value")) else {
            return Err(CniError::invalid_config(format!(
                "args.cni.labels[{i}] must be {{\"key\": string, \"value\": string}}, got {item}"
            )));
        };
        let label = Label::parse(&format!("{key}={value}"), SOURCE_K8S)
            .map_err(|e| CniError::invalid_config(format!("args.cni.labels[{i}]: {e}")))?;
        labels.insert(label);
    }
    Ok(labels)
}

/// The `ciliate.io/labels` annotation (`app=web,tier=front`, as `CILIATE_LABELS`) among the pod
/// annotations containerd passes in `runtimeConfig`; other annotations are not ours to judge.
fn annotation_labels(obj: &Map<String, Value>) -> Result<Labels, CniError> {
    let Some(annotations) = obj
        .get("runtimeConfig")
        .and_then(|r| r.get(POD_ANNOTATIONS))
    else {
        return Ok(Labels::new());
    };
    let field = format!("runtimeConfig.{POD_ANNOTATIONS}");
    let Value::Object(annotations) = annotations else {
        return Err(CniError::invalid_config(format!(
            "{field} must be an object of annotations, got {annotations}"
        )));
    };
    match annotations.get(LABELS_ANNOTATION) {
        None => Ok(Labels::new()),
        Some(Value::String(list)) => Labels::parse_list(list, SOURCE_K8S)
            .map_err(|e| CniError::invalid_config(format!("{field}[{LABELS_ANNOTATION:?}]: {e}"))),
        Some(other) => Err(CniError::invalid_config(format!(
            "{field}[{LABELS_ANNOTATION:?}] must be a string, got {other}"
        ))),
    }
}

/// `[{"containerID": "...", "ifname": "..."}, ...]`.
fn attachments(v: &Value) -> Result<Vec<Attachment>, CniError> {
    let Value::Array(items) = v else {
        return Err(CniError::invalid_config(format!(
            "{VALID_ATTACHMENTS} must be a list, got {v}"
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |f: &str| item.get(f).and_then(Value::as_str);
            match (field("containerID"), field("ifname")) {
                (Some(cid), Some(ifname)) => Ok(Attachment {
                    container_id: cid.to_owned(),
                    ifname: ifname.to_owned(),
                }),
                _ => Err(CniError::invalid_config(format!(
                    "{VALID_ATTACHMENTS}[{i}] must be {{\"containerID\": string, \"ifname\": string}}, got {item}"
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn minimal() -> Value {
        json!({"cniVersion": "1.0.0", "name": "ciliate", "type": "ciliate-cni"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = minimal();
        v[key] = value;
        v
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(minimal()).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "ciliate");
        assert_eq!(c.plugin_type, "ciliate-cni");
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.mtu, None);
        assert!(c.labels.is_empty());
        assert_eq!(c.prev_result, None);
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn full_config() {
        let mut v = with("agentSocket", json!("/run/ciliate/a.sock"));
        v["mtu"] = json!(1400);
        v["args"] = json!({"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": "front"}]}});
        v["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        v["prevResult"] =
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/32", "interface": 1}]});
        v["runtimeConfig"] = json!({"anything": true});
        let c = parse(v).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/run/ciliate/a.sock"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.labels.to_string(), "k8s:app=web,k8s:tier=front");
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
        assert_eq!(c.prev_result.unwrap().ips.len(), 1);
    }

    #[test]
    fn labels_come_from_the_pod_annotation_containerd_passes() {
        let mut v = with(
            "args",
            json!({"cni": {"labels": [{"key": "team", "value": "a"}]}}),
        );
        // As containerd sends them: every annotation of the pod, ours among them.
        v["runtimeConfig"] = json!({POD_ANNOTATIONS: {
            "kubernetes.io/config.seen": "2026-01-01",
            LABELS_ANNOTATION: "app=web,tier=front",
        }});
        let c = parse(v).unwrap();
        assert_eq!(
            c.labels.to_string(),
            "k8s:app=web,k8s:team=a,k8s:tier=front"
        );
        // Without our annotation, or without annotations at all, nothing is added.
        let c = parse(with("runtimeConfig", json!({POD_ANNOTATIONS: {"x": "y"}}))).unwrap();
        assert!(c.labels.is_empty());
        let c = parse(with("runtimeConfig", json!({"portMappings": []}))).unwrap();
        assert!(c.labels.is_empty());
    }

    #[test]
    fn attachments_alias_is_accepted() {
        let c = parse(with(
            "cni.dev/attachments",
            json!([{"containerID": "c", "ifname": "e"}]),
        ))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap().len(), 1);
    }

    #[test]
    fn malformed_json_is_code_6_with_position() {
        let err = NetConf::parse(b"{\"cniVersion\": \"1.0.0\",\n  \"name\": }").unwrap_err();
        assert_eq!(err.code, code::DECODE);
        assert!(err.msg.contains("line 2 column"), "{err}");
        let empty = NetConf::parse(b"  \n").unwrap_err();
        assert_eq!(empty.code, code::DECODE);
        assert_eq!(empty.msg, "no network configuration on stdin");
    }

    #[test]
    fn unsupported_version_is_code_1_naming_both() {
        for v in ["0.4.0", "2.0.0", "1.0"] {
            let err = parse(with("cniVersion", json!(v))).unwrap_err();
            assert_eq!(err.code, code::INCOMPATIBLE_VERSION, "{v}");
            assert_eq!(
                err.msg,
                format!("CNI version \"{v}\" is not supported: ciliate-cni supports 1.0.0, 1.1.0")
            );
        }
        // The version is checked first: nothing else matters when we do not speak it.
        let err = NetConf::parse(br#"{"cniVersion": "0.3.1"}"#).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn invalid_fields_are_code_7_naming_the_field() {
        let mut no_version = minimal();
        no_version.as_object_mut().unwrap().remove("cniVersion");
        let mut no_name = minimal();
        no_name.as_object_mut().unwrap().remove("name");
        let cases = [
            (json!([1, 2]), "must be a JSON object"),
            (no_version, "cniVersion is missing"),
            (with("cniVersion", json!(1)), "cniVersion must be a string"),
            (no_name, "name is missing"),
            (with("name", json!("-bad")), "name \"-bad\" must start"),
            (with("type", json!("")), "type is missing"),
            (
                with("agentSocket", json!("rel/a.sock")),
                "agentSocket must be an absolute path",
            ),
            (
                with("agentSocket", json!(3)),
                "agentSocket must be a string",
            ),
            (
                with("mtu", json!(10)),
                "mtu must be an integer from 68 to 65535, got 10",
            ),
            (with("mtu", json!("1500")), "mtu must be an integer"),
            (
                with("args", json!({"cni": {"labels": {"app": "web"}}})),
                "args.cni.labels must be a list",
            ),
            (
                with("args", json!({"cni": {"labels": [{"key": "app"}]}})),
                "args.cni.labels[0] must be",
            ),
            (
                with(
                    "args",
                    json!({"cni": {"labels": [{"key": "app", "value": "a b"}]}}),
                ),
                "args.cni.labels[0]: label",
            ),
            (
                with("runtimeConfig", json!({POD_ANNOTATIONS: ["a"]})),
                "runtimeConfig.io.kubernetes.cri.pod-annotations must be an object",
            ),
            (
                with(
                    "runtimeConfig",
                    json!({POD_ANNOTATIONS: {LABELS_ANNOTATION: 1}}),
                ),
                "[\"ciliate.io/labels\"] must be a string",
            ),
            (
                with(
                    "runtimeConfig",
                    json!({POD_ANNOTATIONS: {LABELS_ANNOTATION: "app=a b"}}),
                ),
                "[\"ciliate.io/labels\"]: ",
            ),
            (
                with("prevResult", json!({"ips": [{"address": "nope"}]})),
                "prevResult is not a CNI result",
            ),
            (
                with("cni.dev/valid-attachments", json!({})),
                "cni.dev/valid-attachments must be a list",
            ),
            (
                with("cni.dev/valid-attachments", json!([{"containerID": "c"}])),
                "cni.dev/valid-attachments[0] must be",
            ),
        ];
        for (v, want) in cases {
            let err = parse(v.clone()).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{v}: {err}");
            assert!(
                err.msg.starts_with("invalid network configuration: "),
                "{err}"
            );
            assert!(err.msg.contains(want), "{v}: {err}");
        }
    }

    #[test]
    fn answer_version_falls_back_to_ours() {
        assert_eq!(answer_version(br#"{"cniVersion":"1.0.0"}"#), "1.0.0");
        assert_eq!(answer_version(br#"{"cniVersion":"0.4.0"}"#), "1.1.0");
        assert_eq!(answer_version(b"garbage"), "1.1.0");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,200}") {
            let _ = NetConf::parse(s.as_bytes());
        }

        #[test]
        fn any_mtu_in_range_is_kept(mtu in 68u32..=65535) {
            prop_assert_eq!(parse(with("mtu", json!(mtu))).unwrap().mtu, Some(mtu));
        }
    }
}
