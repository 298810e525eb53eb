//! The chart's values as Helm computes them: the defaults of values.yaml, then each
//! `--values FILE` in order, then each `--set` in order (later wins; maps merge, lists and
//! scalars replace, null deletes). `--set` follows Helm's syntax: `a.b=v,c[0]=w,d={x,y}`,
//! with `true`/`false`/`null` and integers typed and everything else a string.

use std::path::Path;

use serde_json::{Map, Value};

/// Why the values could not be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValuesError {
    /// A `--set` item is malformed.
    #[error("--set {item:?}: {reason}")]
    Set {
        /// The item, as given.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A values file cannot be read or is not a YAML mapping.
    #[error("--values {file}: {reason}")]
    File {
        /// The file.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One step of a `--set` key: a map key, or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Lists above this index are refused: `a[100000]=x` would otherwise allocate a huge list.
const MAX_INDEX: usize = 65_535;

/// Applies one `--set` argument (possibly several comma-separated items) to `values`.
pub fn apply_set(values: &mut Value, arg: &str) -> Result<(), ValuesError> {
    for item in split_unescaped(arg, ',', true) {
        let err = |reason: &str| ValuesError::Set {
            item: item.clone(),
            reason: reason.to_owned(),
        };
        let mut parts = split_unescaped(&item, '=', false).into_iter();
        let key = parts.next().unwrap_or_default();
        let rest: Vec<String> = parts.collect();
        if rest.is_empty() {
            return Err(err("expected key=value"));
        }
        let raw = rest.join("=");
        let path = parse_key(&key).map_err(|r| err(&r))?;
        let value = if raw.starts_with('{') && raw.ends_with('}') {
            let inner = &raw[1..raw.len() - 1];
            Value::Array(if inner.is_empty() {
                Vec::new()
            } else {
                split_unescaped(inner, ',', false)
                    .iter()
                    .map(|s| typed(s))
                    .collect()
            })
        } else {
            typed(&unescape(&raw))
        };
        set_path(values, &path, value).map_err(|r| err(&r))?;
    }
    Ok(())
}

/// Splits at `sep` not preceded by a backslash (and, when `braces`, not inside `{...}`).
/// Escapes stay in the parts; [`unescape`] removes them at the end.
fn split_unescaped(s: &str, sep: char, braces: bool) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0usize;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut().expect("parts is never empty");
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '{' if braces => {
                depth += 1;
                current.push(c);
            }
            '}' if braces => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            c if c == sep && depth == 0 => parts.push(String::new()),
            c => current.push(c),
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `a.b[0].c` into steps; `\.` keeps a dot inside a key (`nodeSelector.kubernetes\.io/os`).
fn parse_key(key: &str) -> Result<Vec<Step>, String> {
    if key.is_empty() {
        return Err("empty key".to_owned());
    }
    let mut steps = Vec::new();
    for segment in split_unescaped(key, '.', false) {
        let (name, mut indexes) = match segment.find('[') {
            Some(i) if !segment[..i].ends_with('\\') => (&segment[..i], &segment[i..]),
            _ => (segment.as_str(), ""),
        };
        if name.is_empty() {
            return Err(format!("empty key segment in {key:?}"));
        }
        steps.push(Step::Key(unescape(name)));
        while !indexes.is_empty() {
            let close = indexes
                .find(']')
                .ok_or_else(|| format!("unclosed [ in {key:?}"))?;
            let n: usize = indexes[1..close]
                .parse()
                .map_err(|_| format!("bad list index {:?} in {key:?}", &indexes[1..close]))?;
            if n > MAX_INDEX {
                return Err(format!("list index {n} is above {MAX_INDEX}"));
            }
            steps.push(Step::Index(n));
            indexes = &indexes[close + 1..];
            if !indexes.is_empty() && !indexes.starts_with('[') {
                return Err(format!("unexpected {indexes:?} after an index in {key:?}"));
            }
        }
    }
    Ok(steps)
}

/// Helm's typing of `--set` values.
fn typed(s: &str) -> Value {
    match s {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" => return Value::Null,
        _ => {}
    }
    // Helm keeps "0123" a string (a leading zero is not a number to it).
    let leading_zero = s.len() > 1 && s.starts_with('0');
    match s.parse::<i64>() {
        Ok(n) if !leading_zero => Value::from(n),
        _ => Value::String(s.to_owned()),
    }
}

fn set_path(target: &mut Value, path: &[Step], value: Value) -> Result<(), String> {
    let Some((step, rest)) = path.split_first() else {
        *target = value;
        return Ok(());
    };
    let child = match step {
        Step::Key(k) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let map = target.as_object_mut().expect("made an object above");
            map.entry(k.clone()).or_insert(Value::Null)
        }
        Step::Index(i) => {
            if !target.is_array() {
                *target = Value::Array(Vec::new());
            }
            let list = target.as_array_mut().expect("made a list above");
            if list.len() <= *i {
                list.resize(*i + 1, Value::Null);
            }
            &mut list[*i]
        }
    };
    set_path(child, rest, value)
}

/// Reads a values file: a YAML mapping (an empty file is an empty one).
pub fn read_file(path: &Path) -> Result<Value, ValuesError> {
    let err = |reason: String| ValuesError::File {
        file: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse_file(&text).map_err(err)
}

fn parse_file(text: &str) -> Result<Value, String> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    match value {
        Value::Null => Ok(Value::Object(Map::new())),
        v @ Value::Object(_) => Ok(v),
        other => Err(format!(
            "expected a mapping of values, got {}",
            match other {
                Value::Array(_) => "a list",
                _ => "a scalar",
            }
        )),
    }
}

/// Merges `overlay` into `base` as Helm coalesces values: maps merge key by key, anything
/// else replaces, and null deletes the key.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(existing) = b.get_mut(&k) {
                    merge(existing, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(args: &[&str]) -> Result<Value, ValuesError> {
        let mut v = json!({});
        for a in args {
            apply_set(&mut v, a)?;
        }
        Ok(v)
    }

    #[test]
    fn helm_set_syntax() {
        assert_eq!(
            set(&[
                "a.b=x,c=3,d=true,e=null,f=0123,g=1.5",
                "h[1].k=v",
                "l={p,q}",
                "m=x=y"
            ])
            .unwrap(),
            json!({
                "a": {"b": "x"}, "c": 3, "d": true, "e": null, "f": "0123", "g": "1.5",
                "h": [null, {"k": "v"}], "l": ["p", "q"], "m": "x=y"
            })
        );
        assert_eq!(
            set(&["nodeSelector.kubernetes\\.io/os=linux", "s=a\\,b"]).unwrap(),
            json!({"nodeSelector": {"kubernetes.io/os": "linux"}, "s": "a,b"})
        );
        assert_eq!(set(&["a=1", "a=2"]).unwrap(), json!({"a": 2}));
        assert_eq!(set(&["l={}"]).unwrap(), json!({"l": []}));
    }

    #[test]
    fn bad_set_items_are_named() {
        for (arg, want) in [
            ("tunnel", "expected key=value"),
            ("=x", "empty key"),
            ("a..b=x", "empty key segment"),
            ("a[x]=1", "bad list index"),
            ("a[1=1", "unclosed ["),
            ("a[999999]=1", "above 65535"),
            ("a[0]b=1", "after an index"),
        ] {
            let e = set(&[arg]).unwrap_err();
            let ValuesError::Set { item, reason } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(item, arg);
            assert!(reason.contains(want), "{arg}: {e}");
        }
    }

    #[test]
    fn merge_is_helms_coalesce() {
        let mut base = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "s": "x"});
        merge(
            &mut base,
            json!({"a": {"b": 9, "d": 4}, "l": [3], "s": null, "n": {"x": 1}}),
        );
        assert_eq!(
            base,
            json!({"a": {"b": 9, "c": 2, "d": 4}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn values_files_must_be_mappings() {
        assert_eq!(parse_file("").unwrap(), json!({}));
        assert_eq!(parse_file("a: 1").unwrap(), json!({"a": 1}));
        assert!(parse_file("- a").unwrap_err().contains("a list"));
        assert!(parse_file("a: [").is_err());
        let e = read_file(Path::new("/nonexistent/values.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--values /nonexistent/values.yaml: "),
            "{e}"
        );
    }

    proptest::proptest! {
        /// `--set k1.k2...=v`, with `,` and `\` in the value escaped, puts exactly v (typed
        /// as Helm types it) at that path, and nothing else.
        #[test]
        fn set_puts_the_value_at_the_path(
            keys in proptest::collection::vec("[a-zA-Z0-9_/-]{1,6}", 1..4),
            raw in "[a-z0-9 ,=.:_\\\\-]{0,12}",
        ) {
            let escaped: String = raw
                .chars()
                .flat_map(|c| if c == ',' || c == '\\' { vec!['\\', c] } else { vec![c] })
                .collect();
            let mut v = json!({});
            apply_set(&mut v, &format!("{}={escaped}", keys.join("."))).unwrap();
            let mut expected = typed(&raw);
            for k in keys.iter().rev() {
                expected = json!({ k.as_str(): expected });
            }
            proptest::prop_assert_eq!(v, expected);
        }
    }
}
