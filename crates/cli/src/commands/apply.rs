//! `ciliate apply|delete -f FILE|DIR|-`: manifests to the agent, kubectl-style.
//!
//! The CLI only reads files and checks their syntax; the agent decodes and validates every
//! document, so there is one set of rules whoever sends the objects. A file that cannot be
//! read stops everything before the agent is contacted; the documents are streamed to the
//! agent as they are parsed, and a syntax error breaks the stream off, so the agent applies
//! nothing. Either way every such problem is listed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ciliate_model::manifest::raw::{write_stream_document, StreamHeader};
use ciliate_model::manifest::text::for_each_document_raw;
use ciliate_model::manifest::{
    report, split_documents, split_documents_raw, ApplyAction, ApplyDocument, ApplyRequest,
    ApplyResult, ManifestError,
};

use ciliate_model::policy_api::resource_name;

use super::{Ctx, Outcome};
use crate::output::{self, Format};

/// How long the agent may take over one batch: 10,000 Services are validated, persisted and
/// programmed in seconds, and a slow disk should not turn that into a failure.
const APPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// Name standard input goes by in messages.
pub const STDIN: &str = "<stdin>";

/// Applies (or deletes) the objects of `files`; `ciliate policy import|delete` reach the agent
/// through [`send`] too.
pub async fn run(
    ctx: &Ctx,
    files: &[PathBuf],
    delete: bool,
    ignore_not_found: bool,
) -> anyhow::Result<Outcome> {
    let inputs = read_inputs(files, &mut std::io::stdin().lock());
    let texts = match readable(inputs) {
        Ok(texts) => texts,
        Err(inputs) => {
            // Something cannot be read: every problem is listed, the syntax errors of the
            // files that could be read too, and nothing is sent.
            let errors = split_inputs(inputs, split_documents_raw)
                .err()
                .unwrap_or_default();
            anyhow::bail!("{}", report(&errors, "nothing was sent to the agent"));
        }
    };
    let client = ctx.client.clone().with_timeout(APPLY_TIMEOUT);
    let result = stream(&client, texts, delete).await?;
    print_result(ctx, &result, ignore_not_found)
}

/// How much of the streamed body the parser gathers before handing it over: large enough
/// that handing over costs nothing next to parsing, small enough that the agent starts early.
const CHUNK: usize = 128 << 10;

/// What the parser hands the request's body.
enum Part {
    Chunk(bytes::Bytes),
    /// Every document was parsed and sent: the body may end.
    End,
}

/// Parses `texts` on a thread of its own and streams each document to the agent as soon as it
/// is parsed ([`ciliate_model::manifest::raw::STREAM_CONTENT_TYPE`]): the agent decodes while the rest is parsed. Each
/// document goes as JSON text written as it is parsed (a JSON value of every document, built,
/// serialized and dropped, was most of the CLI's time for 10,000 Services). A syntax error
/// anywhere breaks the body off, so the agent applies nothing; every file is still parsed so
/// that every problem is listed.
async fn stream(
    client: &ciliate_client::Client,
    texts: Vec<(String, String)>,
    delete: bool,
) -> anyhow::Result<ApplyResult> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Part>(16);
    let parser = std::thread::spawn(move || parse_into(texts, delete, &tx));
    let joined = |parser: std::thread::JoinHandle<Vec<ManifestError>>| {
        parser
            .join()
            .map_err(|_| anyhow::anyhow!("the manifest parser failed; nothing was applied"))
    };
    // Nothing is sent before the first chunk is parsed: a file that is broken from the start
    // never reaches the agent.
    let first = match rx.recv().await {
        Some(Part::Chunk(c)) => Ok(c),
        // Every document fitted in the first chunk.
        Some(Part::End) => Err(true),
        None => Err(false),
    };
    let (first, ended) = match first {
        Ok(c) => (c, false),
        Err(false) => {
            let errors = joined(parser)?;
            anyhow::bail!("{}", report(&errors, "nothing was sent to the agent"));
        }
        Err(true) => (bytes::Bytes::new(), true),
    };
    // The body ends only after the parser's `End`: a parser that stops without it (an error,
    // a panic) breaks the body off instead of sending part of a batch as the whole.
    let rest = futures::stream::unfold((rx, ended), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        match rx.recv().await {
            Some(Part::Chunk(c)) => Some((Ok(c), (rx, false))),
            Some(Part::End) => None,
            None => Some((
                Err(std::io::Error::other("the manifests have errors")),
                (rx, true),
            )),
        }
    });
    let body = futures::StreamExt::chain(
        futures::stream::iter([Ok::<_, std::io::Error>(first)]),
        rest,
    );
    let sent = client.apply_stream(body).await;
    let errors = tokio::task::spawn_blocking(move || joined(parser)).await??;
    if !errors.is_empty() {
        anyhow::bail!("{}", report(&errors, "nothing was applied"));
    }
    Ok(sent?)
}

/// The parser's side of [`stream`]: every document of `texts` as lines of the streamed form,
/// in chunks; the problems found (then the body is not ended).
fn parse_into(
    texts: Vec<(String, String)>,
    delete: bool,
    tx: &tokio::sync::mpsc::Sender<Part>,
) -> Vec<ManifestError> {
    let mut errors = Vec::new();
    let mut buf = Vec::with_capacity(CHUNK + (CHUNK >> 2));
    // A header always serializes.
    let _ = serde_json::to_writer(&mut buf, &StreamHeader { delete });
    buf.push(b'\n');
    // False once an error was found or the agent stopped reading: parse on, send no more.
    let mut sending = true;
    for (source, text) in &texts {
        let mut found = 0;
        let parsed = for_each_document_raw(source, text, |index, json| {
            found += 1;
            if !sending {
                return;
            }
            write_stream_document(&mut buf, source, index, json);
            if buf.len() >= CHUNK {
                let chunk = bytes::Bytes::from(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity(CHUNK + (CHUNK >> 2)),
                ));
                sending = tx.blocking_send(Part::Chunk(chunk)).is_ok();
            }
        });
        match parsed {
            Err(e) => errors.push(e),
            Ok(()) if found == 0 => errors.push(problem(source, "no objects in it".into())),
            Ok(()) => {}
        }
        sending &= errors.is_empty();
    }
    if sending {
        let _ = tx.blocking_send(Part::Chunk(bytes::Bytes::from(buf)));
        let _ = tx.blocking_send(Part::End);
    }
    errors
}

/// Sends documents to `POST /v1/manifests` and prints the outcome kubectl-style.
pub async fn send(
    ctx: &Ctx,
    documents: Vec<ApplyDocument>,
    delete: bool,
    ignore_not_found: bool,
) -> anyhow::Result<Outcome> {
    let request = ApplyRequest { documents, delete };
    let client = ctx.client.clone().with_timeout(APPLY_TIMEOUT);
    let result = client.apply(&request).await?;
    print_result(ctx, &result, ignore_not_found)
}

/// Prints the outcome of a batch kubectl-style.
fn print_result(
    ctx: &Ctx,
    result: &ApplyResult,
    ignore_not_found: bool,
) -> anyhow::Result<Outcome> {
    for w in &result.warnings {
        eprintln!("Warning: {w}");
    }
    let (text, missing) = render(ctx.format, result, ignore_not_found)?;
    output::print(&text)?;
    for m in &missing {
        eprintln!("Error: {m}");
    }
    Ok(if missing.is_empty() {
        Outcome::Success
    } else {
        Outcome::Unhealthy
    })
}

/// The lines to print, and the objects a delete did not find (errors, unless ignored).
pub fn render(
    format: Format,
    result: &ApplyResult,
    ignore_not_found: bool,
) -> anyhow::Result<(String, Vec<String>)> {
    let missing: Vec<String> = if ignore_not_found {
        Vec::new()
    } else {
        let services = result
            .results
            .iter()
            .filter(|r| r.action == ApplyAction::NotFound)
            .map(|r| {
                format!(
                    "{}/{} not found in namespace {} ({} document {})",
                    r.key.kind.resource(),
                    r.key.name,
                    r.key.namespace,
                    r.source,
                    r.index
                )
            });
        let policies = result
            .policies
            .iter()
            .filter(|r| r.action == ApplyAction::NotFound)
            .map(|r| {
                let place = match &r.policy.namespace {
                    Some(ns) => format!(" in namespace {ns}"),
                    None => String::new(),
                };
                format!(
                    "{}/{} not found{place} ({} document {})",
                    resource_name(r.policy.kind),
                    r.policy.name,
                    r.source,
                    r.index
                )
            });
        services.chain(policies).collect()
    };
    let text = output::render(format, result, |r| {
        use std::fmt::Write as _;
        // One string written in place (not one per line, joined: 20,000 lines for 10,000
        // Services). Writing to a `String` cannot fail.
        let mut out = String::with_capacity(r.results.len() * 32);
        for o in r
            .results
            .iter()
            .filter(|o| o.action != ApplyAction::NotFound)
        {
            let _ = writeln!(out, "{o}");
        }
        for o in r
            .policies
            .iter()
            .filter(|o| o.action != ApplyAction::NotFound)
        {
            let _ = writeln!(out, "{o}");
        }
        // As `cilium-dbg policy import` ends: what `ciliate policy wait` takes.
        if let Some(n) = r.policy_revision {
            let _ = writeln!(out, "Revision: {n}");
        }
        out
    })?;
    Ok((text, missing))
}

/// The documents of every file, in order: `-` is standard input, a directory contributes its
/// `*.yaml`, `*.yml` and `*.json` files in name order. Every unreadable file and syntax error
/// is reported, not only the first.
pub fn read_documents(
    paths: &[PathBuf],
    stdin: &mut dyn Read,
) -> Result<Vec<ApplyDocument>, Vec<ManifestError>> {
    read_with(paths, stdin, split_documents)
}

/// [`read_documents`], each file's text split by `split` (into values, or JSON text).
fn read_with<D>(
    paths: &[PathBuf],
    stdin: &mut dyn Read,
    split: fn(&str, &str) -> Result<Vec<D>, ManifestError>,
) -> Result<Vec<D>, Vec<ManifestError>> {
    split_inputs(read_inputs(paths, stdin), split)
}

/// A file read, or a problem with one of the paths given.
enum Input {
    File(String, std::io::Result<String>),
    Problem(ManifestError),
}

/// A problem with a whole file.
fn problem(source: &str, reason: String) -> ManifestError {
    ManifestError {
        source: source.to_owned(),
        index: 0,
        object: String::new(),
        path: String::new(),
        reason,
    }
}

/// Every file of `paths`, read, in order: `-` is standard input, a directory contributes its
/// `*.yaml`, `*.yml` and `*.json` files in name order.
fn read_inputs(paths: &[PathBuf], stdin: &mut dyn Read) -> Vec<Input> {
    let mut inputs = Vec::new();
    let mut stdin_read = false;
    for path in paths {
        if path.as_os_str() == "-" {
            if stdin_read {
                inputs.push(Input::Problem(problem(
                    STDIN,
                    "given twice; standard input can be read once".into(),
                )));
                continue;
            }
            stdin_read = true;
            let mut text = String::new();
            let read = stdin.read_to_string(&mut text).map(|_| text);
            inputs.push(Input::File(STDIN.to_owned(), read));
        } else if path.is_dir() {
            match manifest_files(path) {
                Ok(files) if files.is_empty() => inputs.push(Input::Problem(problem(
                    &path.display().to_string(),
                    "no *.yaml, *.yml or *.json files in this directory".into(),
                ))),
                Ok(files) => inputs.extend(files.into_iter().map(|f| {
                    let text = std::fs::read_to_string(&f);
                    Input::File(f.display().to_string(), text)
                })),
                Err(e) => inputs.push(Input::Problem(problem(
                    &path.display().to_string(),
                    format!("cannot list: {e}"),
                ))),
            }
        } else {
            inputs.push(Input::File(
                path.display().to_string(),
                std::fs::read_to_string(path),
            ));
        }
    }
    inputs
}

/// The texts of `inputs` when every one of them was read, else `inputs` as they were.
fn readable(inputs: Vec<Input>) -> Result<Vec<(String, String)>, Vec<Input>> {
    if !inputs.iter().all(|i| matches!(i, Input::File(_, Ok(_)))) {
        return Err(inputs);
    }
    Ok(inputs
        .into_iter()
        .filter_map(|i| match i {
            Input::File(source, Ok(text)) => Some((source, text)),
            _ => None,
        })
        .collect())
}

/// The documents of `inputs`, each file's text split by `split`; every unreadable file and
/// syntax error is reported, not only the first.
fn split_inputs<D>(
    inputs: Vec<Input>,
    split: fn(&str, &str) -> Result<Vec<D>, ManifestError>,
) -> Result<Vec<D>, Vec<ManifestError>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        match input {
            Input::Problem(p) => errors.push(p),
            Input::File(source, Ok(text)) => match split(&source, &text) {
                Ok(d) if d.is_empty() => errors.push(problem(&source, "no objects in it".into())),
                Ok(d) => docs.extend(d),
                Err(e) => errors.push(e),
            },
            Input::File(source, Err(e)) => {
                errors.push(problem(&source, format!("cannot read: {e}")))
            }
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// `*.yaml`, `*.yml` and `*.json` files directly in `dir`, by name, dotfiles skipped (as the
/// agent's `--manifest-dir` reads them).
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let wanted = !name.starts_with('.')
            && [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext));
        if wanted && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ciliate_model::k8s::{Kind, ObjectKey};
    use ciliate_model::manifest::ApplyOutcome;

    #[test]
    fn files_directories_and_stdin() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("b.yaml"), "kind: B\n---\nkind: C\n").unwrap();
        std::fs::write(d.join("a.json"), "{\"kind\": \"A\"}").unwrap();
        std::fs::write(d.join("notes.txt"), "ignored").unwrap();
        let one = d.join("one.manifest");
        std::fs::write(&one, "kind: One\n").unwrap();
        let docs = read_documents(
            &[d.to_owned(), PathBuf::from("-"), one.clone()],
            &mut "kind: In\n".as_bytes(),
        )
        .unwrap();
        let kinds: Vec<(&str, usize, &str)> = docs
            .iter()
            .map(|d| {
                (
                    d.source.rsplit('/').next().unwrap(),
                    d.index,
                    d.object["kind"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("a.json", 1, "A"),
                ("b.yaml", 1, "B"),
                ("b.yaml", 2, "C"),
                (STDIN, 1, "In"),
                ("one.manifest", 1, "One")
            ]
        );
    }

    #[test]
    fn every_unreadable_or_broken_file_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("bad.yaml"), "a: [\n").unwrap();
        std::fs::write(d.join("empty.yaml"), "# nothing\n").unwrap();
        let empty_dir = d.join("sub");
        std::fs::create_dir(&empty_dir).unwrap();
        let errors = read_documents(
            &[
                d.join("bad.yaml"),
                d.join("missing.yaml"),
                d.join("empty.yaml"),
                empty_dir,
            ],
            &mut "".as_bytes(),
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(
            text[0].contains("bad.yaml: document 1: YAML syntax error"),
            "{text:?}"
        );
        assert!(text[1].contains("missing.yaml: cannot read:"), "{text:?}");
        assert!(
            text[2].ends_with("empty.yaml: no objects in it"),
            "{text:?}"
        );
        assert!(
            text[3].ends_with("sub: no *.yaml, *.yml or *.json files in this directory"),
            "{text:?}"
        );
    }

    fn outcome(name: &str, action: ApplyAction) -> ApplyOutcome {
        ApplyOutcome {
            key: ObjectKey {
                kind: Kind::Service,
                namespace: "default".into(),
                name: name.into(),
            },
            action,
            source: "web.yaml".into(),
            index: 1,
        }
    }

    #[test]
    fn lines_like_kubectl_and_missing_objects_apart() {
        let result = ApplyResult {
            results: vec![
                outcome("web", ApplyAction::Deleted),
                outcome("gone", ApplyAction::NotFound),
            ],
            warnings: vec![],
            policies: vec![],
            policy_revision: None,
        };
        let (text, missing) = render(Format::Table, &result, false).unwrap();
        assert_eq!(text, "service/web deleted\n");
        assert_eq!(
            missing,
            ["service/gone not found in namespace default (web.yaml document 1)"]
        );
        let (_, missing) = render(Format::Table, &result, true).unwrap();
        assert!(missing.is_empty());
        let (json, _) = render(Format::Json, &result, true).unwrap();
        assert_eq!(serde_json::from_str::<ApplyResult>(&json).unwrap(), result);
    }
}
