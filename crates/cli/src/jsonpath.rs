//! `-o jsonpath=TEMPLATE`: kubectl's template syntax over a small JSONPath subset.
//!
//! A template is literal text with `{expression}` parts, as in kubectl: `{.items[*].name}`,
//! `{.health}{"\n"}`. Expressions are RFC 9535 JSONPath (evaluated by `serde_json_path`)
//! written kubectl's way, relative to the root: `.a.b`, `[0]`, `[*]`, `..name`, filters
//! `[?(@.x == 1)]`. A quoted string (`{"\n"}`, `{"\t"}`) is printed as it is. kubectl's
//! `range`/`end` blocks are not supported, and are refused as such.
//!
//! Listings are arrays in the agent's API; here they are wrapped as kubectl's lists are,
//! `{"kind": "List", "items": [...]}`, so `{.items[*].id}` works as a kubectl user expects.
//! Matches are printed separated by spaces; strings without quotes, everything else as JSON.

use serde_json::Value;
use serde_json_path::JsonPath;

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Path(JsonPath),
}

impl Template {
    /// Parses `template`; the error says what is wrong and where, for a usage error.
    pub fn parse(template: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = closing_brace(after)
                .ok_or_else(|| format!("jsonpath {template:?}: a {{ without its }}"))?;
            let expr = after[..close].trim();
            parts.push(expression(template, expr)?);
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Path(_))) {
            return Err(format!(
                "jsonpath {template:?}: no {{expression}}; try {{.items[*].id}} or {{.health}}"
            ));
        }
        Ok(Template { parts })
    }

    /// Renders `value` (an API object or listing) through the template.
    pub fn render(&self, value: &Value) -> String {
        let wrapped;
        let root = if value.is_array() {
            wrapped = serde_json::json!({"kind": "List", "items": value});
            &wrapped
        } else {
            value
        };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Path(p) => {
                    let found: Vec<String> = p.query(root).all().into_iter().map(text).collect();
                    out.push_str(&found.join(" "));
                }
            }
        }
        out
    }
}

/// Where the `}` that closes an expression is, skipping braces inside quoted strings.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
        escaped = false;
    }
    None
}

fn expression(template: &str, expr: &str) -> Result<Part, String> {
    if let Some(lit) = expr
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .filter(|_| expr.len() >= 2)
    {
        return Ok(Part::Text(unescape(lit)));
    }
    let word = expr.split_whitespace().next().unwrap_or_default();
    if matches!(word, "range" | "end") {
        return Err(format!(
            "jsonpath {template:?}: {{{word}}} blocks are not supported; use -o json and jq"
        ));
    }
    let full = if expr.starts_with('$') {
        expr.to_owned()
    } else if expr.starts_with('.') || expr.starts_with('[') {
        format!("${expr}")
    } else if expr.is_empty() {
        "$".to_owned()
    } else {
        format!("$.{expr}")
    };
    // kubectl writes filters `[?(@.x == 1)]`; RFC 9535 takes the same without the parentheses
    // too, and with them as a grouping, so both read the same.
    JsonPath::parse(&full)
        .map(Part::Path)
        .map_err(|e| format!("jsonpath {template:?}: {{{expr}}}: {e}"))
}

/// `\n`, `\t` and `\<char>` escapes of a quoted string, as Go templates and kubectl's
/// JSONPath read them (also used by `ciliate install`'s template renderer).
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v)
    }

    #[test]
    fn listings_are_items_as_in_kubectl() {
        let eps = json!([{"id": 1, "ipv4": "10.0.0.1"}, {"id": 2, "ipv4": "10.0.0.2"}]);
        assert_eq!(render("{.items[*].id}", &eps), "1 2");
        assert_eq!(render("{.items[*].ipv4}", &eps), "10.0.0.1 10.0.0.2");
        assert_eq!(render("{.items[0].ipv4}{\"\\n\"}", &eps), "10.0.0.1\n");
        assert_eq!(render("{.items[?(@.id == 2)].ipv4}", &eps), "10.0.0.2");
        assert_eq!(render("n={.items[1].id};", &eps), "n=2;");
    }

    #[test]
    fn objects_are_the_root() {
        let s = json!({"health": "ok", "ipam": {"allocated": 3}, "problems": []});
        assert_eq!(render("{.health}", &s), "ok");
        assert_eq!(render("{$.ipam.allocated}", &s), "3");
        assert_eq!(render("{.ipam}", &s), r#"{"allocated":3}"#);
        assert_eq!(render("{.missing}", &s), "");
        assert_eq!(render("{..allocated}", &s), "3");
    }

    #[test]
    fn bad_templates_say_why() {
        for (t, want) in [
            ("{.items[", "{.items["),
            ("{.items[*].id", "without its }"),
            ("plain text", "no {expression}"),
            ("{range .items[*]}{.id}{end}", "not supported"),
        ] {
            let err = Template::parse(t).unwrap_err();
            assert!(err.contains(want), "{t}: {err}");
        }
    }
}
