//! Helm's `toYaml`: YAML as go-yaml v2 writes it (sorted keys, sequences not indented under
//! their key, multi-line strings as literal blocks) and, above all, quoted where YAML 1.1
//! would read something else: Kubernetes' YAML parser takes an unquoted `y`, `on` or `0123`
//! for a boolean or a number, so `toYaml` of the string "y" must write `"y"`.
//!
//! Keys are in go-yaml's order (numbers in them compared as numbers: `a9` before `a10`).
//! Not reproduced: go-yaml folds long strings at 80 columns (same value, other bytes).

use serde_json::{Map, Value};

/// `value` as YAML, without the final newline (as Helm's toYaml trims it).
pub fn to_yaml(value: &Value) -> String {
    match value {
        Value::Object(m) if !m.is_empty() => map_lines(m, 0),
        Value::Array(l) if !l.is_empty() => list_lines(l, 0),
        other => scalar(other, 2),
    }
}

fn pad(n: usize) -> String {
    " ".repeat(n)
}

/// A mapping's entries, the first line not indented (the caller places it).
fn map_lines(map: &Map<String, Value>, indent: usize) -> String {
    let entries = sorted_keys(map);
    let mut out = String::new();
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(&pad(indent));
        }
        // A key is never a block scalar.
        if k.contains('\n') {
            out.push_str(&double_quoted(k));
        } else {
            out.push_str(&string(k, indent + 2));
        }
        out.push(':');
        out.push_str(&after_key(v, indent));
    }
    out
}

/// go-yaml v2's order of map keys (its keyList.Less): runs of digits compare as numbers, and
/// a letter sorts after anything that is not one.
/// Inserted one by one rather than sorted: go-yaml's comparison is not guaranteed to be a
/// total order, on which `sort_by` may panic.
fn sorted_keys(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut out: Vec<(&String, &Value)> = Vec::with_capacity(map.len());
    for (k, v) in map {
        let chars: Vec<char> = k.chars().collect();
        let at = out
            .iter()
            .position(|(other, _)| key_less(&chars, &other.chars().collect::<Vec<_>>()))
            .unwrap_or(out.len());
        out.insert(at, (k, v));
    }
    out
}

/// keyList.Less itself.
fn key_less(a: &[char], b: &[char]) -> bool {
    let number = |s: &[char], from: usize, start: i64| -> (i64, usize) {
        let mut n = start;
        let mut end = from;
        while let Some(d) = s.get(end).and_then(|c| c.to_digit(10)) {
            n = n.saturating_mul(10).saturating_add(i64::from(d));
            end += 1;
        }
        (n, end)
    };
    for i in 0..a.len().min(b.len()) {
        if a[i] == b[i] {
            continue;
        }
        let (al, bl) = (a[i].is_alphabetic(), b[i].is_alphabetic());
        if al && bl {
            return a[i] < b[i];
        }
        if al || bl {
            return bl;
        }
        // Zeros after a non-zero digit belong to the number before them.
        let start = i64::from(
            (a[i] == '0' || b[i] == '0')
                && a[..i]
                    .iter()
                    .rev()
                    .take_while(|c| c.is_ascii_digit())
                    .any(|c| *c != '0'),
        );
        let (an, ai) = number(a, i, start);
        let (bn, bi) = number(b, i, start);
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return a[i] < b[i];
    }
    a.len() < b.len()
}

/// A sequence's items, the first line not indented.
fn list_lines(list: &[Value], indent: usize) -> String {
    let mut out = String::new();
    for (i, v) in list.iter().enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(&pad(indent));
        }
        out.push('-');
        out.push_str(&as_item(v, indent));
    }
    out
}

fn after_key(v: &Value, key_indent: usize) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => {
            format!("\n{}{}", pad(key_indent + 2), map_lines(m, key_indent + 2))
        }
        // go-yaml does not indent a sequence under its key.
        Value::Array(l) if !l.is_empty() => {
            format!("\n{}{}", pad(key_indent), list_lines(l, key_indent))
        }
        other => format!(" {}", scalar(other, key_indent + 2)),
    }
}

fn as_item(v: &Value, indent: usize) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => format!(" {}", map_lines(m, indent + 2)),
        Value::Array(l) if !l.is_empty() => format!(" {}", list_lines(l, indent + 2)),
        other => format!(" {}", scalar(other, indent + 2)),
    }
}

/// A scalar (or an empty collection); `block_indent` is where a literal block's lines go.
fn scalar(v: &Value, block_indent: usize) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s, block_indent),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
    }
}

fn string(s: &str, block_indent: usize) -> String {
    if s.contains('\n') {
        return match literal(s, block_indent) {
            Some(block) => block,
            None => double_quoted(s),
        };
    }
    if resolves_to_non_string(s) || s.chars().any(special) {
        return double_quoted(s);
    }
    if plain_allowed(s) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Characters go-yaml will not write unescaped (it then double-quotes): the non-printable
/// ones, and the line breaks other than \n.
fn special(c: char) -> bool {
    let printable = matches!(c, '\n' | ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{10000}'..)
        || (('\u{e000}'..='\u{fffd}').contains(&c) && c != '\u{feff}');
    !printable || matches!(c, '\u{2028}' | '\u{2029}' | '\u{a0}')
}

/// `|-`, `|` or `|+` with the lines at `indent`, when go-yaml would write one.
fn literal(s: &str, indent: usize) -> Option<String> {
    // Only breaks would leave the block empty, which reads back as "".
    if s.chars().any(|c| c != '\n' && special(c))
        || s.trim_end_matches('\n').is_empty()
        // The block's indentation is read from its first non-empty line (an indentation
        // indicator would be needed).
        || s.trim_start_matches('\n').starts_with([' ', '\t'])
        || s.split('\n').any(|l| l.ends_with(' '))
    {
        return None;
    }
    let body = s.trim_end_matches('\n');
    let chomp = match s.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut out = format!("|{chomp}");
    let kept: Vec<&str> = if chomp == "+" {
        s.strip_suffix('\n').unwrap_or(s).split('\n').collect()
    } else {
        body.split('\n').collect()
    };
    for line in kept {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad(indent));
            out.push_str(line);
        }
    }
    Some(out)
}

/// YAML 1.1 reads these unquoted as booleans, nulls, numbers or timestamps.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    if !s.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c)) {
        return false;
    }
    let plain = s.replace('_', "");
    go_int(&plain) || float(&plain) || base60(s) || timestamp(s)
}

/// Go's strconv.ParseInt with base 0: 0x, 0o, 0b prefixes, a leading 0 for octal.
fn go_int(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (radix, rest) = if let Some(r) = digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        (16, r)
    } else if let Some(r) = digits.strip_prefix("0o").or(digits.strip_prefix("0O")) {
        (8, r)
    } else if let Some(r) = digits.strip_prefix("0b").or(digits.strip_prefix("0B")) {
        (2, r)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    !rest.is_empty() && rest.chars().all(|c| c.is_digit(radix))
}

/// go-yaml's float syntax: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn float(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            int.chars().all(|c| c.is_ascii_digit())
                && frac.chars().all(|c| c.is_ascii_digit())
                && (!int.is_empty() || !frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.chars().all(|c| c.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

/// Sexagesimal numbers (`1:20`, `190:20:30.15`), which YAML 1.1 reads as numbers.
fn base60(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let mut parts = whole.split(':');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    !rest.is_empty()
        && first.starts_with(|c: char| c.is_ascii_digit())
        && first.chars().all(|c| c.is_ascii_digit() || c == '_')
        && rest.iter().all(|p| {
            (1..=2).contains(&p.len())
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || p.starts_with(['0', '1', '2', '3', '4', '5']))
        })
        && frac.is_none_or(|f| f.chars().all(|c| c.is_ascii_digit() || c == '_'))
}

/// `2024-01-31`, optionally followed by a time: YAML 1.1 timestamps.
fn timestamp(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.len() < 8 || !bytes[..4].iter().all(u8::is_ascii_digit) || bytes[4] != b'-' {
        return false;
    }
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let fields: Vec<&str> = date.split('-').collect();
    let date_ok = fields.len() == 3
        && fields[1..]
            .iter()
            .all(|f| (1..=2).contains(&f.len()) && f.chars().all(|c| c.is_ascii_digit()));
    date_ok
        && time.is_none_or(|t| {
            t.split(':').count() >= 3 && t.starts_with(|c: char| c.is_ascii_digit())
        })
}

/// Whether go-yaml writes `s` plain in block context.
fn plain_allowed(s: &str) -> bool {
    if s.starts_with([' ', '\t']) || s.ends_with([' ', '\t']) {
        return false;
    }
    let chars: Vec<char> = s.chars().collect();
    let followed_by_space = |i: usize| chars.get(i + 1).is_none_or(|c| *c == ' ' || *c == '\t');
    for (i, c) in chars.iter().enumerate() {
        let blocked = if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => true,
                '?' | ':' | '-' => followed_by_space(i),
                _ => false,
            }
        } else {
            match c {
                ':' => followed_by_space(i),
                '#' => chars[i - 1] == ' ' || chars[i - 1] == '\t',
                _ => false,
            }
        };
        if blocked {
            return false;
        }
    }
    true
}

fn double_quoted(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            '\u{85}' => out.push_str("\\N"),
            '\u{a0}' => out.push_str("\\_"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if special(c) => {
                let n = u32::from(c);
                if n <= 0xff {
                    out.push_str(&format!("\\x{n:02X}"));
                } else if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04X}"));
                } else {
                    out.push_str(&format!("\\U{n:08X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What Helm 3.17's toYaml printed for these values (recorded by hand from
    /// `helm template` of a chart holding `{{ toYaml .Values }}`).
    #[test]
    fn quoting_as_go_yaml_does() {
        for (s, want) in [
            ("y", "\"y\""),
            ("true", "\"true\""),
            ("Yes", "\"Yes\""),
            ("on", "\"on\""),
            ("n", "\"n\""),
            ("null", "\"null\""),
            ("~", "\"~\""),
            ("", "\"\""),
            ("1.5", "\"1.5\""),
            ("0123", "\"0123\""),
            ("1e3", "\"1e3\""),
            ("0x1F", "\"0x1F\""),
            ("1:20", "\"1:20\""),
            ("1_000", "\"1_000\""),
            (".inf", "\".inf\""),
            ("+1", "\"+1\""),
            ("-1", "\"-1\""),
            (".5", "\".5\""),
            ("2024-01-01", "\"2024-01-01\""),
            ("tab\there", "\"tab\\there\""),
            ("x\u{1}", "\"x\\x01\""),
            ("@x", "'@x'"),
            ("!x", "'!x'"),
            ("[x]", "'[x]'"),
            ("{x}", "'{x}'"),
            ("x #y", "'x #y'"),
            ("a: b", "'a: b'"),
            ("#x", "'#x'"),
            ("*x", "'*x'"),
            ("- x", "'- x'"),
            ("-", "'-'"),
            (" lead", "' lead'"),
            ("trail ", "'trail '"),
            ("|x", "'|x'"),
            (">x", "'>x'"),
            ("%x", "'%x'"),
            ("`x", "'`x'"),
            ("&x", "'&x'"),
            ("x,y", "x,y"),
            ("x#y", "x#y"),
            ("é", "é"),
            ("?x", "?x"),
            ("=x", "=x"),
            ("a:b", "a:b"),
            (":4244", ":4244"),
            ("--flag=1", "--flag=1"),
            ("10%", "10%"),
            ("a b", "a b"),
            ("a'b", "a'b"),
            ("a\"b", "a\"b"),
            ("100m", "100m"),
            ("1Gi", "1Gi"),
            ("v1.2.3", "v1.2.3"),
        ] {
            assert_eq!(to_yaml(&json!(s)), want, "{s:?}");
        }
    }

    #[test]
    fn layout_as_go_yaml_does() {
        // Keys are quoted like values: YAML 1.1 reads an unquoted n as false.
        let v = json!({
            "n": [1, 2.5, -3, 1000000, true, null, {}, [], [[1]], {"a": ["b"]}],
            "s": {"j": "multi\nline", "k": "end\n"},
            "e": {},
        });
        assert_eq!(
            to_yaml(&v),
            "e: {}\n\"n\":\n- 1\n- 2.5\n- -3\n- 1000000\n- true\n- null\n- {}\n- []\n- - - 1\n\
             - a:\n  - b\ns:\n  j: |-\n    multi\n    line\n  k: |\n    end"
        );
        assert_eq!(to_yaml(&json!({})), "{}");
        assert_eq!(
            to_yaml(&json!([{"a": 1, "b": {"c": 2}}])),
            "- a: 1\n  b:\n    c: 2"
        );
    }

    /// The order Helm 3.17 printed these keys in (podAnnotations in crates/cli/tests/install.rs).
    #[test]
    fn keys_in_go_yaml_order() {
        let helm = [
            "1", "2a", "10", "Z", "a-b", "a.b", "a_", "a0", "a00", "a9", "a10", "aB", "at", "b1x",
            "b01", "b001", "c10d", "c1e", "colon",
        ];
        let mut map = Map::new();
        for k in helm.iter().rev() {
            map.insert((*k).to_owned(), Value::Null);
        }
        let got: Vec<&str> = sorted_keys(&map).iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got, helm);
    }

    /// Strings of the characters that matter to YAML: indicators, quotes, blanks, breaks,
    /// digits and the letters of YAML 1.1's booleans and numbers.
    fn text() -> proptest::string::RegexGeneratorStrategy<String> {
        proptest::string::string_regex(
            "[-:#?@!&*|>%`'\",\\[\\]{}. \t\n_+0-9eExXoOyYnNtrufalsé~]{0,8}",
        )
        .unwrap()
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map(text(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the values, toYaml's output reads back as exactly them (with the line
        /// break that follows it in any manifest: toYaml trims its last one, as Helm's does).
        #[test]
        fn to_yaml_reads_back_unchanged(v in json()) {
            let yaml = format!("{}\n", to_yaml(&v));
            let back: Value = serde_yaml_ng::from_str(&yaml)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{yaml}")))?;
            proptest::prop_assert_eq!(back, v, "{}", yaml);
        }

        /// Nested in a template with nindent, as the chart uses it.
        #[test]
        fn to_yaml_nindented_under_a_key_reads_back(v in json()) {
            let yaml = format!("key:{}\n", super::super::template::Template::parse("t", "{{ toYaml .v | nindent 2 }}")
                .unwrap()
                .render(&serde_json::json!({"v": v.clone()}))
                .unwrap());
            let back: Value = serde_yaml_ng::from_str(&yaml)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{yaml}")))?;
            proptest::prop_assert_eq!(&back["key"], &v, "{}", yaml);
        }
    }
}
