//! The part of JSON Schema and of Kubernetes' OpenAPI v3 schemas the deploy files use:
//! `ciliate install` checks values against the chart's values.schema.json with it (as Helm
//! does), and the tests check policies against the CRDs' schemas and the CRDs' schemas for
//! being structural.
//!
//! Keywords: type (one or a list), properties, required, additionalProperties, items, enum,
//! pattern, minLength, maxLength, minimum, maximum, anyOf, oneOf, allOf,
//! x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string. Others are ignored
//! (descriptions, formats, list types).

use serde_json::{Map, Value};

/// How fields a schema does not name are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// JSON Schema: allowed unless `additionalProperties: false`.
    JsonSchema,
    /// A CRD's schema: refused unless `x-kubernetes-preserve-unknown-fields` or
    /// `additionalProperties` (the API server prunes them; `kubectl apply`'s strict field
    /// validation refuses them, and so do we).
    Kubernetes,
}

/// Every way `value` breaks `schema`, each as `path: reason`; empty when it is valid. `root`
/// names the value in paths (`values`, or "" for a whole object).
pub fn validate(schema: &Value, value: &Value, dialect: Dialect, root: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, dialect, root, &mut errors);
    errors
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn at(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    let actual = type_name(v);
    actual == ty || (ty == "number" && actual == "integer")
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// A value as it appears in messages: strings quoted, the rest as JSON.
fn show(v: &Value) -> String {
    v.to_string()
}

fn check(schema: &Value, value: &Value, dialect: Dialect, path: &str, errors: &mut Vec<String>) {
    let before = errors.len();
    if flag(schema, "x-kubernetes-int-or-string")
        && !matches!(type_name(value), "integer" | "string")
    {
        errors.push(format!(
            "{}: {} is a {}, not an integer or a string",
            at(path),
            show(value),
            type_name(value)
        ));
        return;
    }
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.iter().any(|t| has_type(value, t)) {
            errors.push(format!(
                "{}: expected {}, got {} {}",
                at(path),
                types.join(" or "),
                type_name(value),
                show(value)
            ));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            let names: Vec<String> = allowed.iter().map(show).collect();
            errors.push(format!(
                "{}: {} is not one of {}",
                at(path),
                show(value),
                names.join(", ")
            ));
        }
    }
    match value {
        Value::String(s) => check_string(schema, s, path, errors),
        Value::Number(n) => {
            if let (Some(min), Some(x)) =
                (schema.get("minimum").and_then(Value::as_f64), n.as_f64())
            {
                if x < min {
                    errors.push(format!("{}: {n} is less than the minimum {min}", at(path)));
                }
            }
            if let (Some(max), Some(x)) =
                (schema.get("maximum").and_then(Value::as_f64), n.as_f64())
            {
                if x > max {
                    errors.push(format!("{}: {n} is more than the maximum {max}", at(path)));
                }
            }
        }
        Value::Object(map) => {
            // The API server checks metadata as ObjectMeta, whatever the CRD says of it.
            if !(dialect == Dialect::Kubernetes && path == "metadata") {
                check_object(schema, map, dialect, path, errors);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, dialect, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
    // anyOf/oneOf/allOf only add constraints (in CRDs they name required fields): a value
    // already wrong in itself gets those errors alone.
    if errors.len() == before {
        check_combinators(schema, value, path, errors);
    }
}

fn check_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<String>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if len > max {
            errors.push(format!(
                "{}: {s:?} is longer than {max} characters",
                at(path)
            ));
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if len < min {
            errors.push(format!(
                "{}: {s:?} is shorter than {min} characters",
                at(path)
            ));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => errors.push(format!("{}: {s:?} does not match {pattern}", at(path))),
            Err(e) => errors.push(format!(
                "{}: the schema's pattern is invalid: {e}",
                at(path)
            )),
        }
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    dialect: Dialect,
    path: &str,
    errors: &mut Vec<String>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                errors.push(format!("{}: required", join(path, name)));
            }
        }
    }
    let additional = schema.get("additionalProperties");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    for (key, v) in map {
        let child = join(path, key);
        if let Some(s) = properties.and_then(|p| p.get(key)) {
            check(s, v, dialect, &child, errors);
            continue;
        }
        match additional {
            Some(Value::Bool(false)) => {
                errors.push(format!("{child}: unknown field (not in the schema)"));
            }
            Some(Value::Bool(true)) => {}
            Some(s @ Value::Object(_)) => check(s, v, dialect, &child, errors),
            _ => {
                if dialect == Dialect::Kubernetes && !preserve {
                    errors.push(format!("{child}: unknown field (not in the schema)"));
                }
            }
        }
    }
}

fn check_combinators(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    // Branches only constrain: fields they do not name are not theirs to refuse.
    let branch_errors = |branch: &Value| validate(branch, value, Dialect::JsonSchema, path);
    if let Some(Value::Array(branches)) = schema.get("allOf") {
        for b in branches {
            errors.extend(branch_errors(b));
        }
    }
    if let Some(Value::Array(branches)) = schema.get("anyOf") {
        let results: Vec<Vec<String>> = branches.iter().map(branch_errors).collect();
        if !results.iter().any(Vec::is_empty) {
            errors.push(format!(
                "{}: must satisfy at least one of: {}",
                at(path),
                describe_branches(branches)
            ));
        }
    }
    if let Some(Value::Array(branches)) = schema.get("oneOf") {
        let matching = branches
            .iter()
            .filter(|b| branch_errors(b).is_empty())
            .count();
        if matching != 1 {
            errors.push(format!(
                "{}: must satisfy exactly one of: {} ({matching} do)",
                at(path),
                describe_branches(branches)
            ));
        }
    }
}

/// `ingress is set | egress is set` for required-only branches, the JSON otherwise.
fn describe_branches(branches: &[Value]) -> String {
    let parts: Vec<String> = branches
        .iter()
        .map(|b| match b.get("required").and_then(Value::as_array) {
            Some(names) => {
                let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                format!("{} set", names.join(" and "))
            }
            None => b.to_string(),
        })
        .collect();
    parts.join(" | ")
}

/// (Tests only: the CRDs are fixed at build time.) Where a CRD's schema is not structural (Kubernetes refuses such CRDs): a node without a
/// type (unless it preserves unknown fields or is int-or-string), or an anyOf/oneOf/allOf
/// branch that sets a type, description, default or additionalProperties, or names a field
/// the node itself does not declare.
#[cfg(test)]
pub fn structural_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk_structural(schema, "openAPIV3Schema", &mut problems);
    problems
}

#[cfg(test)]
fn walk_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: not a schema object"));
        return;
    };
    let open = flag(node, "x-kubernetes-preserve-unknown-fields")
        || flag(node, "x-kubernetes-int-or-string");
    if !map.contains_key("type") && !open {
        problems.push(format!(
            "{path}: no type (and no x-kubernetes-preserve-unknown-fields)"
        ));
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (k, child) in props {
            walk_structural(child, &format!("{path}.properties.{k}"), problems);
        }
    }
    if let Some(items) = map.get("items") {
        walk_structural(items, &format!("{path}.items"), problems);
    }
    if let Some(extra @ Value::Object(_)) = map.get("additionalProperties") {
        walk_structural(extra, &format!("{path}.additionalProperties"), problems);
    }
    for keyword in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = map.get(keyword) {
            for (i, b) in branches.iter().enumerate() {
                check_branch(b, node, &format!("{path}.{keyword}[{i}]"), problems);
            }
        }
    }
    if map.contains_key("not") {
        problems.push(format!(
            "{path}: `not` is not used by these CRDs; check it by hand"
        ));
    }
}

#[cfg(test)]
fn check_branch(branch: &Value, node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = branch.as_object() else {
        problems.push(format!("{path}: not a schema object"));
        return;
    };
    for forbidden in [
        "type",
        "description",
        "default",
        "additionalProperties",
        "nullable",
    ] {
        if map.contains_key(forbidden) {
            problems.push(format!(
                "{path}: a value validation may not set {forbidden}"
            ));
        }
    }
    if map.keys().any(|k| k.starts_with("x-kubernetes-")) {
        problems.push(format!(
            "{path}: a value validation may not set x-kubernetes-*"
        ));
    }
    let declared = node.get("properties").and_then(Value::as_object);
    let mut names: Vec<&str> = map
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if let Some(Value::Array(required)) = map.get("required") {
        names.extend(required.iter().filter_map(Value::as_str));
    }
    for name in names {
        if declared.is_none_or(|d| !d.contains_key(name)) {
            problems.push(format!(
                "{path}: names {name}, which the node's properties do not declare"
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_schema_keywords() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "pattern": "^[a-z]+$"},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "n": {"type": "integer", "minimum": 1, "maximum": 9},
                "tags": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "object"},
                "either": {"type": ["integer", "string"]}
            }
        });
        let ok = json!({"name": "x", "mode": "a", "n": 3, "tags": ["t"], "free": {"q": 1}, "either": "s"});
        assert_eq!(
            validate(&schema, &ok, Dialect::JsonSchema, "values"),
            Vec::<String>::new()
        );
        let bad = json!({"mode": "c", "n": 10, "tags": [1], "extra": true, "either": true});
        let errors = validate(&schema, &bad, Dialect::JsonSchema, "values");
        for want in [
            "values.name: required",
            "values.mode: \"c\" is not one of \"a\", \"b\"",
            "values.n: 10 is more than the maximum 9",
            "values.tags[0]: expected string, got integer 1",
            "values.extra: unknown field",
            "values.either: expected integer or string, got boolean true",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{want} in {errors:?}"
            );
        }
        assert_eq!(errors.len(), 6, "{errors:?}");
        let errors = validate(
            &schema,
            &json!({"name": "X1"}),
            Dialect::JsonSchema,
            "values",
        );
        assert_eq!(errors, vec!["values.name: \"X1\" does not match ^[a-z]+$"]);
    }

    #[test]
    fn kubernetes_dialect_refuses_unknown_fields_unless_preserved() {
        let schema = json!({
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
                "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "port": {"x-kubernetes-int-or-string": true}
            }
        });
        let v = json!({"metadata": {"name": "n", "labels": {}}, "spec": {"a": "x", "b": 1}, "open": {"z": 1}, "port": 80});
        assert_eq!(
            validate(&schema, &v, Dialect::Kubernetes, ""),
            vec!["spec.b: unknown field (not in the schema)"]
        );
        assert!(validate(&schema, &v, Dialect::JsonSchema, "").is_empty());
        let errors = validate(&schema, &json!({"port": 1.5}), Dialect::Kubernetes, "");
        assert_eq!(
            errors,
            vec!["port: 1.5 is a number, not an integer or a string"]
        );
    }

    #[test]
    fn any_of_and_one_of_with_required_branches() {
        let schema = json!({
            "type": "object",
            "properties": {"a": {"type": "object"}, "b": {"type": "object"}, "i": {"type": "array"}},
            "anyOf": [{"required": ["i"]}],
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}]
        });
        assert!(validate(&schema, &json!({"a": {}, "i": []}), Dialect::Kubernetes, "").is_empty());
        let both = validate(
            &schema,
            &json!({"a": {}, "b": {}, "i": []}),
            Dialect::Kubernetes,
            "spec",
        );
        assert_eq!(
            both,
            vec!["spec: must satisfy exactly one of: a set | b set (2 do)"]
        );
        let none = validate(&schema, &json!({"a": {}}), Dialect::Kubernetes, "spec");
        assert_eq!(none, vec!["spec: must satisfy at least one of: i set"]);
    }

    #[test]
    fn structural_checks() {
        let good = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "oneOf": [{"required": ["x"]}, {"properties": {"y": {}}, "required": ["y"]}],
                    "properties": {"x": {"type": "string"}, "y": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
                }
            }
        });
        assert_eq!(structural_problems(&good), Vec::<String>::new());
        let bad = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "properties": {"x": {"type": "string"}, "l": {"type": "array", "items": {"description": "untyped"}}},
                    "anyOf": [{"type": "object", "required": ["z"]}]
                }
            }
        });
        let problems = structural_problems(&bad);
        for want in [
            "openAPIV3Schema.properties.spec: no type",
            "openAPIV3Schema.properties.spec.properties.l.items: no type",
            "openAPIV3Schema.properties.spec.anyOf[0]: a value validation may not set type",
            "openAPIV3Schema.properties.spec.anyOf[0]: names z",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want} in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
