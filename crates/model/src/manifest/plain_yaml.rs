//! The YAML that manifests are nearly always written in, read without libyaml: block mappings
//! and sequences, one-line scalars (plain, or quoted without escapes) and one-line flow
//! collections. It writes each document as the JSON text [`super::text`] writes from
//! `serde_yaml_ng`'s events, about five times faster (libyaml's scanner was most of
//! `ciliate apply`'s time for 10,000 Services).
//!
//! It answers only for what it is sure of. Anything else (anchors, tags, block or multi-line
//! scalars, escapes, tabs, non-ASCII text, a number it would have to guess the type of, a
//! duplicate key, any syntax error) stops it at that document, and the caller reads the file
//! again with `serde_yaml_ng` from that document on: the same documents, and the same error
//! messages, as ever. A plain scalar's type follows `serde_yaml_ng`'s rules
//! (`visit_untagged_scalar`): `null`/`true`/`false` in its three spellings, decimal integers
//! without leading zeros, and strings that no rule could read as a number (such as
//! `10.96.0.1` or `100m`).

/// How far [`for_each_document`] went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// Every document was handed out.
    Done,
    /// Stopped at a document it does not read: documents `1..=done` were handed out (or
    /// were empty), the rest were not.
    Stopped { done: usize },
}

/// Something this reader leaves to `serde_yaml_ng`.
struct Unsure;

/// Collections nested deeper than this are left to `serde_yaml_ng`, which refuses them past
/// its own limit (128).
const MAX_DEPTH: usize = 64;

type R<T = ()> = Result<T, Unsure>;

/// Hands each document of `text` to `each` as JSON text (`null` for an empty one), with its
/// 1-based index, counted as `serde_yaml_ng` counts documents; `buf` is scratch.
pub(super) fn for_each_document(
    text: &str,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(usize, &[u8]),
) -> Read {
    let mut lines: Vec<(usize, &str)> = Vec::new();
    let mut open = false;
    let mut done = 0;
    for line in text.split('\n') {
        if !line.is_ascii() || line.bytes().any(|b| b < b' ' || b == 0x7f) {
            // Tabs, carriage returns, other controls, non-ASCII text.
            return Read::Stopped { done };
        }
        if let Some(rest) = line.strip_prefix("---") {
            let rest = rest.trim_start_matches(' ');
            if !(rest.is_empty() || rest.starts_with('#') && line.as_bytes()[3] == b' ') {
                return Read::Stopped { done };
            }
            if open {
                if document(&mut lines, buf).is_err() {
                    return Read::Stopped { done };
                }
                done += 1;
                each(done, buf);
            }
            open = true;
            lines.clear();
            continue;
        }
        if line.starts_with("...") || line.starts_with('%') {
            return Read::Stopped { done };
        }
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        open = true;
        lines.push((line.len() - content.len(), content));
    }
    if open {
        if document(&mut lines, buf).is_err() {
            return Read::Stopped { done };
        }
        each(done + 1, buf);
    }
    Read::Done
}

/// One document's content lines (indentation, text) as JSON text into `out`.
fn document(lines: &mut [(usize, &str)], out: &mut Vec<u8>) -> R {
    out.clear();
    let Some(&(indent, _)) = lines.first() else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    let mut p = Parser {
        lines,
        i: 0,
        depth: 0,
        out,
    };
    p.node(indent)?;
    if p.i != p.lines.len() {
        return Err(Unsure);
    }
    Ok(())
}

struct Parser<'l, 'a, 'o> {
    lines: &'l mut [(usize, &'a str)],
    /// The next line.
    i: usize,
    /// Block collections open.
    depth: usize,
    out: &'o mut Vec<u8>,
}

fn is_item(c: &str) -> bool {
    c == "-" || c.starts_with("- ")
}

impl<'a> Parser<'_, 'a, '_> {
    fn peek(&self) -> Option<(usize, &'a str)> {
        self.lines.get(self.i).copied()
    }

    /// A block node starting at the next line, indented by `n`.
    fn node(&mut self, n: usize) -> R {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Unsure);
        }
        let read = match self.peek() {
            Some((_, c)) if is_item(c) => self.sequence(n),
            Some(_) => self.mapping(n),
            None => Err(Unsure),
        };
        self.depth -= 1;
        read
    }

    fn mapping(&mut self, n: usize) -> R {
        self.out.push(b'{');
        let mut keys: Vec<&str> = Vec::new();
        while let Some((indent, c)) = self.peek() {
            if indent < n {
                break;
            }
            if indent > n || is_item(c) {
                return Err(Unsure);
            }
            let (key, rest) = split_key(c).ok_or(Unsure)?;
            if keys.contains(&key) {
                return Err(Unsure);
            }
            if !keys.is_empty() {
                self.out.push(b',');
            }
            keys.push(key);
            write_str(self.out, key);
            self.out.push(b':');
            self.i += 1;
            self.value(n, rest, true)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn sequence(&mut self, n: usize) -> R {
        self.out.push(b'[');
        let mut first = true;
        while let Some((indent, c)) = self.peek() {
            if indent < n || indent == n && !is_item(c) {
                break;
            }
            if indent > n {
                return Err(Unsure);
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            let rest = c[1..].trim_start_matches(' ');
            if is_item(rest) || split_key(rest).is_some() {
                // `- - a` or `- key: value`: a node that starts within the line.
                let col = n + c.len() - rest.len();
                self.lines[self.i] = (col, rest);
                self.node(col)?;
            } else {
                self.i += 1;
                self.value(n, rest, false)?;
            }
        }
        self.out.push(b']');
        Ok(())
    }

    /// The value after `key:` (`in_mapping`) or `-` on a line indented by `n`, `rest` being
    /// what follows on that line.
    fn value(&mut self, n: usize, rest: &'a str, in_mapping: bool) -> R {
        let rest = rest.trim_end_matches(' ');
        if rest.is_empty() || rest.starts_with('#') {
            return match self.peek() {
                Some((indent, _)) if indent > n => self.node(indent),
                // A mapping's value may be a sequence at the mapping's own indentation.
                Some((indent, c)) if indent == n && in_mapping && is_item(c) => self.node(n),
                _ => {
                    self.out.extend_from_slice(b"null");
                    Ok(())
                }
            };
        }
        let used = match rest.as_bytes()[0] {
            b'"' | b'\'' => {
                let (s, used) = quoted(rest).ok_or(Unsure)?;
                write_str(self.out, s);
                used
            }
            b'[' | b'{' => flow(rest, self.out)?,
            _ => {
                let end = rest.find(" #").unwrap_or(rest.len());
                let s = rest[..end].trim_end_matches(' ');
                if s.contains(": ") || s.ends_with(':') || !plain_chars(s, true) {
                    return Err(Unsure);
                }
                write_plain(self.out, s)?;
                rest.len()
            }
        };
        if !ends_line(&rest[used..]) {
            return Err(Unsure);
        }
        // A more indented line would continue the scalar (or be an error).
        if self.peek().is_some_and(|(indent, _)| indent > n) {
            return Err(Unsure);
        }
        Ok(())
    }
}

/// Whether what is left of a line after a value is nothing, or a comment.
fn ends_line(rest: &str) -> bool {
    let t = rest.trim_start_matches(' ');
    t.is_empty() || t.starts_with('#') && t.len() < rest.len()
}

/// `key: rest` or `key:` (rest empty): the key as written and what follows `: `.
fn split_key(c: &str) -> Option<(&str, &str)> {
    let (key, after) = if c.starts_with(['"', '\'']) {
        let (key, used) = quoted(c)?;
        (key, &c[used..])
    } else {
        let colon = c.find(':')?;
        let key = &c[..colon];
        if !is_key(key) {
            return None;
        }
        (key, &c[colon..])
    };
    let after = after.strip_prefix(':')?;
    if after.is_empty() {
        Some((key, after))
    } else {
        after.strip_prefix(' ').map(|rest| (key, rest))
    }
}

/// A plain key this reader takes: letters, digits and `_`, then also `-`, `.` and `/`.
fn is_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/'))
}

/// A quoted scalar at the start of `s` without escapes: its text and the bytes it takes.
fn quoted(s: &str) -> Option<(&str, usize)> {
    let q = s.as_bytes()[0];
    let end = 1 + s[1..].find(q as char)?;
    let text = &s[1..end];
    if q == b'"' && text.contains('\\') {
        return None;
    }
    if q == b'\'' && s.as_bytes().get(end + 1) == Some(&b'\'') {
        // `''` is a quote within the scalar.
        return None;
    }
    Some((text, end + 1))
}

/// Whether `s` is a plain scalar this reader takes: it starts with a letter, digit, `_` or
/// `/`, and has only those, `-.+=@()`, and in block context (`block`) `:` not followed by a
/// space and single spaces.
fn plain_chars(s: &str, block: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphanumeric() || matches!(b[0], b'_' | b'/'))
        && b.iter().all(|&c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'_' | b'/' | b'-' | b'.' | b'+' | b'=' | b'@' | b'(' | b')'
                )
                || block && matches!(c, b':' | b' ')
        })
}

/// A plain scalar as `serde_yaml_ng` types it, as JSON; unsure of numbers other than plain
/// decimal integers.
fn write_plain(out: &mut Vec<u8>, s: &str) -> R {
    match s {
        "null" | "Null" | "NULL" => out.extend_from_slice(b"null"),
        "true" | "True" | "TRUE" => out.extend_from_slice(b"true"),
        "false" | "False" | "FALSE" => out.extend_from_slice(b"false"),
        _ => {
            let b = s.as_bytes();
            if !b[0].is_ascii_digit() {
                // Neither an integer nor a finite float can start so.
                write_str(out, s);
            } else if b.iter().all(u8::is_ascii_digit) {
                // Leading zeros make a string; past 19 digits, a u128 or a string.
                if b.len() > 1 && b[0] == b'0' || b.len() > 19 {
                    return Err(Unsure);
                }
                out.extend_from_slice(b);
            } else if b.len() > 1 && matches!(b[1], b'x' | b'o' | b'b') {
                // 0x.., 0o.., 0b..: maybe an integer.
                return Err(Unsure);
            } else if b.iter().filter(|&&c| c == b'.').count() > 1
                || b.iter()
                    .any(|&c| c.is_ascii_alphabetic() && !matches!(c, b'e' | b'E'))
            {
                // Two dots (an address), or a letter no number has: not a number.
                write_str(out, s);
            } else {
                return Err(Unsure);
            }
        }
    }
    Ok(())
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // A string always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A flow collection at the start of `s`, on one line, as JSON; the bytes it takes.
fn flow(s: &str, out: &mut Vec<u8>) -> R<usize> {
    // With the block collections around it, under `serde_yaml_ng`'s limit.
    if s.bytes().filter(|b| matches!(b, b'[' | b'{')).count() > MAX_DEPTH / 2 {
        return Err(Unsure);
    }
    let b = s.as_bytes();
    let mut at = 0;
    flow_node(b, &mut at, out)?;
    Ok(at)
}

fn skip_spaces(b: &[u8], at: &mut usize) {
    while b.get(*at) == Some(&b' ') {
        *at += 1;
    }
}

fn flow_node(b: &[u8], at: &mut usize, out: &mut Vec<u8>) -> R {
    match b.get(*at) {
        Some(b'[') => {
            *at += 1;
            out.push(b'[');
            skip_spaces(b, at);
            if b.get(*at) == Some(&b']') {
                *at += 1;
            } else {
                loop {
                    flow_node(b, at, out)?;
                    skip_spaces(b, at);
                    match b.get(*at) {
                        Some(b',') => {
                            *at += 1;
                            out.push(b',');
                            skip_spaces(b, at);
                        }
                        Some(b']') => {
                            *at += 1;
                            break;
                        }
                        _ => return Err(Unsure),
                    }
                }
            }
            out.push(b']');
        }
        Some(b'{') => {
            *at += 1;
            out.push(b'{');
            skip_spaces(b, at);
            let mut keys: Vec<&[u8]> = Vec::new();
            if b.get(*at) == Some(&b'}') {
                *at += 1;
            } else {
                loop {
                    let start = *at;
                    let key = flow_scalar(b, at)?;
                    if !(b[start] == b'"' || b[start] == b'\'' || is_key(key))
                        || b.get(*at) != Some(&b':')
                        || b.get(*at + 1) != Some(&b' ')
                    {
                        return Err(Unsure);
                    }
                    if keys.contains(&key.as_bytes()) {
                        return Err(Unsure);
                    }
                    if !keys.is_empty() {
                        out.push(b',');
                    }
                    keys.push(key.as_bytes());
                    write_str(out, key);
                    out.push(b':');
                    *at += 2;
                    skip_spaces(b, at);
                    flow_node(b, at, out)?;
                    skip_spaces(b, at);
                    match b.get(*at) {
                        Some(b',') => {
                            *at += 1;
                            skip_spaces(b, at);
                        }
                        Some(b'}') => {
                            *at += 1;
                            break;
                        }
                        _ => return Err(Unsure),
                    }
                }
            }
            out.push(b'}');
        }
        Some(b'"' | b'\'') => {
            let s = flow_scalar(b, at)?;
            write_str(out, s);
        }
        Some(_) => {
            let s = flow_scalar(b, at)?;
            write_plain(out, s)?;
        }
        None => return Err(Unsure),
    }
    Ok(())
}

/// A scalar within a flow collection: quoted (its text), or plain, up to the next space,
/// `,`, `]`, `}` or `:`.
fn flow_scalar<'b>(b: &'b [u8], at: &mut usize) -> R<&'b str> {
    // Only ASCII reaches here: any slice of it is a str.
    let s = std::str::from_utf8(&b[*at..]).map_err(|_| Unsure)?;
    if s.starts_with(['"', '\'']) {
        let (text, used) = quoted(s).ok_or(Unsure)?;
        *at += used;
        return Ok(text);
    }
    let end = s.find([' ', ',', ']', '}', ':']).ok_or(Unsure)?;
    let plain = &s[..end];
    if !plain_chars(plain, false) {
        return Err(Unsure);
    }
    *at += end;
    Ok(plain)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
