//! The part of Go's text/template (with Helm's functions) that deploy/helm/ciliate uses, so
//! `ciliate install` renders the chart's own files and `helm template` is not needed.
//!
//! Supported: text; `{{ PIPELINE }}`; `{{ if PIPELINE }}` … `{{ else }}` … `{{ end }}`;
//! `{{-`/`-}}` whitespace trimming; operands `.Values.a.b`, `.Release.Namespace` (any path
//! from the root), `"strings"`, integers, `true`/`false`; pipes `x | f a`; the functions
//! `quote`, `toYaml`, `indent`, `nindent`, `join`, `default` and `not`. Anything else is an
//! error naming the template and the action, never silently wrong output.

use crate::jsonpath::unescape;
use serde_json::Value;

/// Why a template could not be parsed or rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("template {template}: {message}")]
pub struct TemplateError {
    /// The template's file name.
    pub template: String,
    /// What is wrong, quoting the action.
    pub message: String,
}

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    name: String,
    nodes: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Output(Pipeline),
    If {
        cond: Pipeline,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Commands joined by `|`; each after the first gets the previous result as its last argument.
#[derive(Debug, Clone)]
struct Pipeline {
    source: String,
    commands: Vec<Vec<Operand>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// `.a.b`: a path from the root (no `with`/`range` rebinds the dot here).
    Field(Vec<String>),
    Literal(Value),
    Function(String),
}

/// The actions of one `{{ }}` after lexing.
enum Action {
    If(Pipeline),
    Else,
    End,
    Output(Pipeline),
}

impl Template {
    /// Parses `text`; `name` appears in errors.
    pub fn parse(name: &str, text: &str) -> Result<Template, TemplateError> {
        let err = |message: String| TemplateError {
            template: name.to_owned(),
            message,
        };
        let tokens = lex(text).map_err(err)?;
        // A stack of open `if`s: (condition, then-branch, else-branch, in-else).
        let mut stack: Vec<(Pipeline, Vec<Node>, Vec<Node>, bool)> = Vec::new();
        let mut top: Vec<Node> = Vec::new();
        for token in tokens {
            let node = match token {
                Token::Text(t) => Node::Text(t),
                Token::Action(src) => match parse_action(&src).map_err(err)? {
                    Action::Output(p) => Node::Output(p),
                    Action::If(cond) => {
                        stack.push((cond, Vec::new(), Vec::new(), false));
                        continue;
                    }
                    Action::Else => {
                        match stack.last_mut() {
                            Some(open) if !open.3 => open.3 = true,
                            _ => return Err(err(format!("{{{{ {src} }}}} without an open if"))),
                        }
                        continue;
                    }
                    Action::End => {
                        let (cond, then, otherwise, _) = stack
                            .pop()
                            .ok_or_else(|| err(format!("{{{{ {src} }}}} without an open if")))?;
                        Node::If {
                            cond,
                            then,
                            otherwise,
                        }
                    }
                },
            };
            match stack.last_mut() {
                Some((_, _, otherwise, true)) => otherwise.push(node),
                Some((_, then, _, false)) => then.push(node),
                None => top.push(node),
            }
        }
        if let Some((cond, ..)) = stack.last() {
            return Err(err(format!("{{{{ if {} }}}} is never closed", cond.source)));
        }
        Ok(Template {
            name: name.to_owned(),
            nodes: top,
        })
    }

    /// Renders with `root` as the dot (`{"Values": ..., "Release": ...}`).
    pub fn render(&self, root: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        render_nodes(&self.nodes, root, &mut out).map_err(|message| TemplateError {
            template: self.name.clone(),
            message,
        })?;
        Ok(out)
    }
}

enum Token {
    Text(String),
    Action(String),
}

/// Splits text from actions, applying `{{- ` and ` -}}` (which eat the whitespace before
/// and after them, newlines included, as Go does).
fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while !rest.is_empty() {
        let (before, after) = match rest.find("{{") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        let mut before = if trim_next {
            before.trim_start()
        } else {
            before
        };
        let Some(after) = after else {
            tokens.push(Token::Text(before.to_owned()));
            break;
        };
        // `{{-` trims only when whitespace follows the dash (`{{-3}}` is a number).
        let (trim_left, body_start) = match after.strip_prefix('-') {
            Some(b) if b.starts_with(char::is_whitespace) => (true, b),
            _ => (false, after),
        };
        if trim_left {
            before = before.trim_end();
        }
        if !before.is_empty() {
            tokens.push(Token::Text(before.to_owned()));
        }
        let end = body_start
            .find("}}")
            .ok_or_else(|| format!("unclosed action {{{{{}", first_line(after)))?;
        let mut body = &body_start[..end];
        trim_next = false;
        if let Some(b) = body.strip_suffix('-') {
            if b.ends_with(char::is_whitespace) {
                body = b;
                trim_next = true;
            }
        }
        let body = body.trim();
        if body.starts_with("/*") {
            // A comment: `{{/* ... */}}`.
            if !body.ends_with("*/") {
                return Err(format!("unclosed comment {{{{{body}"));
            }
        } else {
            tokens.push(Token::Action(body.to_owned()));
        }
        rest = &body_start[end + 2..];
    }
    Ok(tokens)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn parse_action(src: &str) -> Result<Action, String> {
    let words = split_words(src)?;
    match words.first().map(String::as_str) {
        Some("if") => Ok(Action::If(parse_pipeline(src, &words[1..])?)),
        Some("else") if words.len() == 1 => Ok(Action::Else),
        Some("end") if words.len() == 1 => Ok(Action::End),
        Some(
            w @ ("else" | "range" | "with" | "define" | "template" | "block" | "include" | "tpl"
            | "break" | "continue"),
        ) => Err(format!(
            "{{{{ {src} }}}}: `{w}` is not supported by ciliate's renderer (only if/else/end)"
        )),
        Some(_) => Ok(Action::Output(parse_pipeline(src, &words)?)),
        None => Err("empty action {{ }}".to_owned()),
    }
}

/// Words of an action: string literals whole (with Go's escapes), `|` on its own.
fn split_words(src: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut lit = String::from('"');
            loop {
                match chars.next() {
                    None => return Err(format!("{{{{ {src} }}}}: unterminated string")),
                    Some('\\') => {
                        lit.push('\\');
                        lit.push(chars.next().unwrap_or('\\'));
                    }
                    Some('"') => break,
                    Some(other) => lit.push(other),
                }
            }
            lit.push('"');
            words.push(lit);
        } else if c == '|' {
            chars.next();
            words.push("|".to_owned());
        } else if c == '(' || c == ')' || c == '$' || c == ':' {
            return Err(format!(
                "{{{{ {src} }}}}: `{c}` (parentheses, variables) is not supported by ciliate's \
                 renderer"
            ));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '|' || c == '"' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            words.push(word);
        }
    }
    Ok(words)
}

fn parse_pipeline(src: &str, words: &[String]) -> Result<Pipeline, String> {
    let mut commands = Vec::new();
    for command in words.split(|w| w == "|") {
        if command.is_empty() {
            return Err(format!("{{{{ {src} }}}}: empty command in pipeline"));
        }
        let operands = command
            .iter()
            .map(|w| parse_operand(src, w))
            .collect::<Result<Vec<_>, _>>()?;
        commands.push(operands);
    }
    if commands.is_empty() {
        return Err(format!("{{{{ {src} }}}}: missing value"));
    }
    Ok(Pipeline {
        source: src.to_owned(),
        commands,
    })
}

fn parse_operand(src: &str, word: &str) -> Result<Operand, String> {
    if let Some(lit) = word.strip_prefix('"') {
        let inner = lit.strip_suffix('"').unwrap_or(lit);
        return Ok(Operand::Literal(Value::String(unescape(inner))));
    }
    if word == "." {
        return Ok(Operand::Field(Vec::new()));
    }
    if let Some(path) = word.strip_prefix('.') {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("{{{{ {src} }}}}: bad field {word}"));
        }
        return Ok(Operand::Field(parts));
    }
    match word {
        "true" => return Ok(Operand::Literal(Value::Bool(true))),
        "false" => return Ok(Operand::Literal(Value::Bool(false))),
        "nil" => return Ok(Operand::Literal(Value::Null)),
        _ => {}
    }
    if let Ok(n) = word.parse::<i64>() {
        return Ok(Operand::Literal(Value::from(n)));
    }
    if FUNCTIONS.contains(&word) {
        return Ok(Operand::Function(word.to_owned()));
    }
    Err(format!(
        "{{{{ {src} }}}}: `{word}` is not a function ciliate's renderer knows ({})",
        FUNCTIONS.join(", ")
    ))
}

const FUNCTIONS: &[&str] = &[
    "quote", "toYaml", "indent", "nindent", "join", "default", "not",
];

fn render_nodes(nodes: &[Node], root: &Value, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Output(p) => {
                let v = eval(p, root)?;
                out.push_str(&print(&v).map_err(|e| format!("{{{{ {} }}}}: {e}", p.source))?);
            }
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                let branch = if truthy(&eval(cond, root)?) {
                    then
                } else {
                    otherwise
                };
                render_nodes(branch, root, out)?;
            }
        }
    }
    Ok(())
}

fn eval(p: &Pipeline, root: &Value) -> Result<Value, String> {
    let mut previous: Option<Value> = None;
    for command in &p.commands {
        let value = match command.split_first() {
            Some((Operand::Function(f), args)) => {
                let mut values = args
                    .iter()
                    .map(|a| operand(a, root, &p.source))
                    .collect::<Result<Vec<_>, _>>()?;
                values.extend(previous.take());
                call(f, &values).map_err(|e| format!("{{{{ {} }}}}: {f}: {e}", p.source))?
            }
            Some((only, [])) if previous.is_none() => operand(only, root, &p.source)?,
            _ => {
                return Err(format!(
                    "{{{{ {} }}}}: a value can only start a pipeline",
                    p.source
                ))
            }
        };
        previous = Some(value);
    }
    previous.ok_or_else(|| format!("{{{{ {} }}}}: missing value", p.source))
}

fn operand(o: &Operand, root: &Value, src: &str) -> Result<Value, String> {
    match o {
        Operand::Literal(v) => Ok(v.clone()),
        Operand::Field(path) => {
            let mut v = root;
            for (i, key) in path.iter().enumerate() {
                v = v.get(key.as_str()).ok_or_else(|| {
                    format!("{{{{ {src} }}}}: .{} is not set", path[..=i].join("."))
                })?;
            }
            Ok(v.clone())
        }
        Operand::Function(f) => Err(format!(
            "{{{{ {src} }}}}: {f} used as a value (functions need parentheses, unsupported)"
        )),
    }
}

fn call(f: &str, args: &[Value]) -> Result<Value, String> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("takes {n} arguments, got {}", args.len()))
        }
    };
    match f {
        "quote" => {
            // Helm's quote: each non-nil argument printed and Go-%q-quoted, joined by spaces.
            let quoted = args
                .iter()
                .filter(|a| !a.is_null())
                .map(|a| print(a).map(|s| go_quote(&s)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::String(quoted.join(" ")))
        }
        "toYaml" => {
            arity(1)?;
            Ok(Value::String(super::yaml::to_yaml(&args[0])))
        }
        "indent" | "nindent" => {
            arity(2)?;
            let n = args[0]
                .as_u64()
                .ok_or_else(|| format!("the width must be a number, got {}", args[0]))?;
            let pad = " ".repeat(usize::try_from(n).map_err(|e| e.to_string())?);
            let text = print(&args[1])?;
            let indented = format!("{pad}{}", text.replace('\n', &format!("\n{pad}")));
            Ok(Value::String(if f == "nindent" {
                format!("\n{indented}")
            } else {
                indented
            }))
        }
        "join" => {
            arity(2)?;
            let sep = print(&args[0])?;
            let items = match &args[1] {
                Value::Array(items) => items.iter().map(print).collect::<Result<Vec<_>, _>>()?,
                Value::Null => Vec::new(),
                other => vec![print(other)?],
            };
            Ok(Value::String(items.join(&sep)))
        }
        "default" => {
            arity(2)?;
            Ok(if truthy(&args[1]) {
                args[1].clone()
            } else {
                args[0].clone()
            })
        }
        "not" => {
            arity(1)?;
            Ok(Value::Bool(!truthy(&args[0])))
        }
        other => Err(format!("unknown function {other}")),
    }
}

/// Go's truth: false, 0, nil and empty strings, lists and maps are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as `{{ }}` prints it. Maps and lists print as Go's `map[...]`, which is never
/// meant in a manifest: that is an error here (use toYaml).
fn print(v: &Value) -> Result<String, String> {
    match v {
        // Helm turns Go's "<no value>" into "".
        Value::Null => Ok(String::new()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(_) | Value::Object(_) => {
            Err("a list or map cannot be printed as text (pipe it to toYaml)".to_owned())
        }
    }
}

/// Go's `%q`: double quotes, with `"`, `\` and control characters escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
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

    fn render(text: &str, root: &Value) -> Result<String, TemplateError> {
        Template::parse("t.yaml", text)?.render(root)
    }

    #[test]
    fn fields_quote_and_text() {
        let root = json!({"Values": {"a": {"b": "x\"y"}, "n": 3, "t": true}, "Release": {"Namespace": "ns"}});
        assert_eq!(
            render(
                "ns: {{ .Release.Namespace }}\nb: {{ .Values.a.b | quote }}\nn: {{ .Values.n }} {{ .Values.t }}",
                &root
            )
            .unwrap(),
            "ns: ns\nb: \"x\\\"y\"\nn: 3 true"
        );
        assert_eq!(
            render("{{ quote 1 \"a b\" }}", &root).unwrap(),
            "\"1\" \"a b\""
        );
    }

    #[test]
    fn trimming_eats_whitespace_and_newlines() {
        let root = json!({"Values": {"on": true, "off": false}});
        let text = "a:\n{{- if .Values.on }}\n  b: 1\n{{- end }}\n{{- if .Values.off }}\n  c: 2\n{{- else }}\n  d: 3\n{{- end }}\ne: {{ 5 -}}  \n  x";
        assert_eq!(render(text, &root).unwrap(), "a:\n  b: 1\n  d: 3\ne: 5x");
    }

    #[test]
    fn go_truthiness() {
        for (v, want) in [
            (json!(null), false),
            (json!(0), false),
            (json!(""), false),
            (json!([]), false),
            (json!({}), false),
            (json!(false), false),
            (json!(1), true),
            (json!("x"), true),
            (json!([1]), true),
            (json!({"a": 1}), true),
        ] {
            let root = json!({"v": v});
            let out = render("{{ if .v }}yes{{ else }}no{{ end }}", &root).unwrap();
            assert_eq!(out, if want { "yes" } else { "no" }, "{v}");
        }
    }

    #[test]
    fn to_yaml_nindent_join_default() {
        let root = json!({"Values": {"m": {"b": [1, 2], "a": "x"}, "l": ["p", "q"], "e": ""}});
        assert_eq!(
            render("m:{{ toYaml .Values.m | nindent 2 }}", &root).unwrap(),
            "m:\n  a: x\n  b:\n  - 1\n  - 2"
        );
        assert_eq!(
            render("{{ toYaml .Values.l | indent 4 }}", &root).unwrap(),
            "    - p\n    - q"
        );
        assert_eq!(
            render("{{ join \",\" .Values.l | quote }}", &root).unwrap(),
            "\"p,q\""
        );
        assert_eq!(
            render("{{ .Values.e | default \"d\" }} {{ not .Values.e }}", &root).unwrap(),
            "d true"
        );
    }

    #[test]
    fn errors_name_the_template_and_action() {
        let root = json!({"Values": {"m": {"a": 1}}});
        let cases = [
            ("{{ .Values.x.y }}", ".Values.x is not set"),
            ("{{ .Values.m }}", "pipe it to toYaml"),
            ("{{ range .Values.m }}{{ end }}", "`range` is not supported"),
            ("{{ include \"x\" . }}", "`include` is not supported"),
            ("{{ upper .Values.m.a }}", "`upper` is not a function"),
            ("{{ if .Values.m }}x", "is never closed"),
            ("{{ end }}", "without an open if"),
            ("{{ .Values.m.a", "unclosed action"),
            ("{{ $x := 1 }}", "not supported"),
            ("{{ nindent 2 }}", "takes 2 arguments"),
        ];
        for (text, want) in cases {
            let e = render(text, &root).unwrap_err();
            assert_eq!(e.template, "t.yaml");
            assert!(e.message.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn comments_are_dropped() {
        assert_eq!(render("a{{/* note */}}b", &json!({})).unwrap(), "ab");
    }
}
