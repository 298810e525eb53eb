//! The `--manifest-dir` source: which files count, whether any changed, and their documents.
//!
//! Only regular files (or links to them) named `*.yaml`, `*.yml` or `*.json` directly in the
//! directory are read, in name order; names starting with `.` are skipped, which also skips
//! editors' swap files and the `..data` links of a mounted Kubernetes ConfigMap (whose files
//! are links into it and are read).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use ciliate_model::manifest::{split_documents, ApplyDocument, ManifestError};
use tracing::{info, warn};

/// What the directory looked like: each file's name, size and modification time. Reading
/// again only when this changes costs one `stat` per file every poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(String, u64, u128)>);

/// Why the directory could not be read as a whole.
#[derive(Debug, thiserror::Error)]
#[error("manifest directory {path}: {source}")]
pub struct DirError {
    /// The directory or file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

fn is_manifest(name: &str) -> bool {
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The manifest files of `dir`, sorted by name.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, DirError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| DirError { path, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_manifest(name) {
            continue;
        }
        let path = entry.path();
        // Follows links: a ConfigMap's files are links to its current revision.
        if std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The directory's current fingerprint.
pub fn fingerprint(dir: &Path) -> Result<Fingerprint, DirError> {
    let mut out = Vec::new();
    for path in manifest_files(dir)? {
        let m = std::fs::metadata(&path).map_err(|source| DirError {
            path: path.clone(),
            source,
        })?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.push((path.display().to_string(), m.len(), mtime));
    }
    Ok(Fingerprint(out))
}

/// Every document of every manifest file, or every problem (unreadable files and syntax
/// errors), each naming its file.
pub fn read_documents(dir: &Path) -> Result<Vec<ApplyDocument>, Vec<String>> {
    let files = manifest_files(dir).map_err(|e| vec![e.to_string()])?;
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let source = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => match split_documents(&source, &text) {
                Ok(d) => docs.extend(d),
                Err(e) => problems.push(e.to_string()),
            },
            Err(e) => problems.push(
                ManifestError {
                    source,
                    index: 0,
                    object: String::new(),
                    path: String::new(),
                    reason: format!("cannot read: {e}"),
                }
                .to_string(),
            ),
        }
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(problems)
    }
}

/// What a store remembers of its last read of the directory.
#[derive(Debug, Default)]
pub struct DirWatch {
    /// The directory as last read (successfully or not), so an unchanged broken directory is
    /// not re-read and re-logged every poll.
    fingerprint: Option<Fingerprint>,
    /// Problems of the last read; the last good set stays in force while there are some.
    pub problems: Vec<String>,
}

/// Re-reads `dir` when it changed since `watch` last saw it, and hands its documents to
/// `apply`, which answers whether what is in force changed, or every problem (then nothing
/// of the read is in force and the last good set stays). `what` names the store's objects in
/// logs ("objects", "policies"). The watch lives in the store's `health`, reached by `watch`;
/// that lock is taken only around the bookkeeping, never while `apply` runs. Returns whether
/// what is in force changed.
pub fn reload<H>(
    dir: &Path,
    what: &str,
    health: &Mutex<H>,
    watch: fn(&mut H) -> &mut DirWatch,
    apply: impl FnOnce(Vec<ApplyDocument>) -> Result<bool, Vec<String>>,
) -> bool {
    let lock = || health.lock().unwrap_or_else(|p| p.into_inner());
    let fingerprint = match fingerprint(dir) {
        Ok(f) => f,
        Err(e) => {
            let mut h = lock();
            let w = watch(&mut h);
            let problem = format!("{e}; the last good set of its {what} stays in force");
            if w.problems != [problem.clone()] {
                warn!("{problem}");
                w.problems = vec![problem];
            }
            w.fingerprint = None;
            return false;
        }
    };
    if watch(&mut lock()).fingerprint.as_ref() == Some(&fingerprint) {
        return false;
    }
    let outcome = read_documents(dir).and_then(apply);
    let mut h = lock();
    let w = watch(&mut h);
    w.fingerprint = Some(fingerprint);
    match outcome {
        Ok(changed) => {
            if changed || !w.problems.is_empty() {
                info!(dir = %dir.display(), changed, "manifest directory read for its {what}");
            }
            w.problems.clear();
            changed
        }
        Err(problems) => {
            warn!(
                dir = %dir.display(),
                problems = problems.len(),
                "manifest directory rejected; the last good set of its {what} stays in force"
            );
            for p in &problems {
                warn!("{p}");
            }
            w.problems = problems;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifests_count_and_changes_show() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        std::fs::write(d.join("b.yaml"), "a: 1\n").expect("write");
        std::fs::write(d.join("a.json"), "{}").expect("write");
        std::fs::write(d.join("c.yml"), "").expect("write");
        std::fs::write(d.join(".b.yaml.swp"), "x").expect("write");
        std::fs::write(d.join("README.md"), "x").expect("write");
        std::fs::create_dir(d.join("sub.yaml")).expect("mkdir");
        let names: Vec<String> = manifest_files(d)
            .expect("lists")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json", "b.yaml", "c.yml"]);
        let before = fingerprint(d).expect("fp");
        assert_eq!(fingerprint(d).expect("fp"), before);
        std::fs::write(d.join("b.yaml"), "a: 12\n").expect("write");
        assert_ne!(fingerprint(d).expect("fp"), before, "size changed");
        assert!(fingerprint(&d.join("missing")).is_err());
    }

    #[test]
    fn documents_or_every_problem() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        std::fs::write(d.join("a.yaml"), "a: 1\n---\nb: 2\n").expect("write");
        assert_eq!(read_documents(d).expect("reads").len(), 2);
        std::fs::write(d.join("b.yaml"), "a: [\n").expect("write");
        std::fs::write(d.join("c.json"), "{").expect("write");
        let problems = read_documents(d).expect_err("broken");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("b.yaml: document 1: YAML syntax error"),
            "{problems:?}"
        );
    }
}
