//! How answers are printed: kubectl-like tables for people, the API objects themselves as
//! JSON or YAML for scripts.

use std::io::Write;

use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// An output format, chosen with `-o/--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Columns for people to read.
    #[default]
    Table,
    /// The API object as JSON (a stream prints one object per line).
    Json,
    /// The API object as YAML (a stream separates objects with `---`).
    Yaml,
    /// `observe` only: Hubble's one-line flow format (elsewhere: a table).
    Compact,
    /// `observe` only: protobuf JSON, one response per line (elsewhere: json).
    Jsonpb,
    /// `observe` only: Hubble's `KEY: value` blocks (elsewhere: a table).
    Dict,
    /// `jsonpath=TEMPLATE`: kubectl's template over the API object (see [`crate::jsonpath`]).
    /// The template was checked when the flag was parsed; it lives as long as the command.
    Jsonpath(&'static str),
}

/// What `-o` accepts, for its help.
pub const FORMATS: &str = "table, json, yaml, compact, jsonpb, dict, jsonpath=TEMPLATE";

/// Parses `-o`: a bad value, or a bad jsonpath template, is a usage error (exit 2).
pub fn parse_format(s: &str) -> Result<Format, String> {
    if let Some(t) = s.strip_prefix("jsonpath=") {
        crate::jsonpath::Template::parse(t)?;
        // Parsed once per process: leaking the text keeps `Format` a small Copy value.
        return Ok(Format::Jsonpath(Box::leak(t.to_owned().into_boxed_str())));
    }
    Ok(match s {
        "table" | "wide" => Format::Table,
        "json" => Format::Json,
        "yaml" => Format::Yaml,
        "compact" => Format::Compact,
        "jsonpb" => Format::Jsonpb,
        "dict" => Format::Dict,
        // Hubble's spellings for `observe`.
        "tab" => Format::Table,
        "JSON" => Format::Json,
        "jsonpath" => {
            return Err("jsonpath needs a template: -o jsonpath='{.items[*].id}'".to_owned())
        }
        other => return Err(format!("{other:?}: expected one of {FORMATS}")),
    })
}

/// Renders `value` in `format`; `table` draws it for people. JSON and YAML print the API
/// object unchanged, so what a script reads is what the agent's API documents.
pub fn render<T: Serialize + ?Sized>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<String> {
    Ok(match format {
        Format::Table | Format::Compact | Format::Dict => table(value),
        Format::Json | Format::Jsonpb => {
            let mut s = serde_json::to_string_pretty(value)?;
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml_ng::to_string(value)?,
        Format::Jsonpath(t) => jsonpath(t, value)?,
    })
}

/// `value` through the jsonpath template `t`, with a newline unless the template ends one.
pub fn jsonpath<T: Serialize + ?Sized>(t: &str, value: &T) -> anyhow::Result<String> {
    let template = crate::jsonpath::Template::parse(t).map_err(anyhow::Error::msg)?;
    let mut out = template.render(&serde_json::to_value(value)?);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// A table with uppercase headers and no borders, columns separated by three spaces, as
/// `kubectl get` prints them: easy to read and to `grep`/`awk`.
pub fn table<I>(headers: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = Vec<String>>,
{
    let mut t = plain_table();
    t.set_header(headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for row in rows {
        t.add_row(row);
    }
    finish(t)
}

/// One object shown vertically, a `Key:` column then its value; multi-line values (labels,
/// problems) continue under the value column.
pub fn fields(pairs: Vec<(&str, String)>) -> String {
    let mut t = plain_table();
    for (key, value) in pairs {
        t.add_row(vec![format!("{key}:"), value]);
    }
    finish(t)
}

fn plain_table() -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        // Never wrap or squeeze to the terminal: a pipe must get whole lines.
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty();
    t
}

fn finish(mut t: Table) -> String {
    let columns = t.column_count();
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i + 1 == columns { 0 } else { 3 }));
    }
    // The preset draws its (invisible) header separator as a line of spaces; drop blank lines.
    let mut out = String::new();
    for line in t.lines() {
        let line = line.trim_end();
        if !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Writes to stdout. A closed pipe (`ciliate monitor | head`) surfaces as an `io::Error` of
/// kind `BrokenPipe`, which `main` treats as a normal end instead of panicking like `print!`.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// A duration in the largest two units, as kubectl's AGE column shows it: `42s`, `5m10s`,
/// `3h4m`, `2d5h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// `n` and a noun, the noun plural unless `n` is 1: `1 node`, `3 nodes`, `0 pods`.
pub fn counted<N>(n: N, singular: &str, plural: &str) -> String
where
    N: std::fmt::Display + PartialEq + From<u8>,
{
    let noun = if n == N::from(1) { singular } else { plural };
    format!("{n} {noun}")
}

/// `<none>` where kubectl prints it: an absent or empty value, kept as one column word so
/// `awk` field numbers stay right.
pub fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_owned()
    } else {
        s
    }
}

/// Seconds since the Unix epoch, for ages; 0 when the clock is before 1970.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_plain_and_aligned() {
        let text = table(
            &["id", "name"],
            vec![
                vec!["1".into(), "a".into()],
                vec!["1234".into(), "bb".into()],
            ],
        );
        assert_eq!(text, "ID     NAME\n1      a\n1234   bb\n");
    }

    #[test]
    fn fields_align_values() {
        let text = fields(vec![("ID", "7".into()), ("Labels", "a\nb".into())]);
        assert_eq!(text, "ID:       7\nLabels:   a\n          b\n");
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(310), "5m10s");
        assert_eq!(duration(3 * 3600 + 4 * 60 + 5), "3h4m");
        assert_eq!(duration(2 * 86_400 + 5 * 3600), "2d5h");
    }

    #[test]
    fn counts_take_the_singular_only_for_one() {
        assert_eq!(counted(1usize, "node", "nodes"), "1 node");
        assert_eq!(counted(0usize, "node", "nodes"), "0 nodes");
        assert_eq!(counted(3u64, "identity", "identities"), "3 identities");
    }

    #[test]
    fn json_and_yaml_print_the_object() {
        #[derive(Serialize)]
        struct O {
            a: u8,
        }
        let table = |_: &O| unreachable!("not a table");
        assert_eq!(
            render(Format::Json, &O { a: 1 }, table).unwrap(),
            "{\n  \"a\": 1\n}\n"
        );
        assert_eq!(render(Format::Yaml, &O { a: 1 }, table).unwrap(), "a: 1\n");
    }
}
