//! The `--manifest-dir` source: which files count, whether any changed, and their documents.
//!
//! Only regular files (or links to them) named `*.yaml`, `*.yml` or `*.json` directly in the
//! directory are read, in name order; names starting with `.` are skipped, which also skips
//! editors' swap files and the `..data` links of a mounted Kubernetes ConfigMap (whose files
//! are links into it and are read).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use ciliate_model::manifest::{split_documents, ApplyDocument, ManifestError};
use tracing::{info, warn};

/// What a file looked like when read: size and modification time. A file is parsed again
/// only when this changes, so a change to one file costs reading that file.
type Stamp = (u64, u128);

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

fn stamp(path: &Path) -> Result<Stamp, DirError> {
    let m = std::fs::metadata(path).map_err(|source| DirError {
        path: path.to_owned(),
        source,
    })?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((m.len(), mtime))
}

/// The documents of one file, or why it cannot be read or parsed.
fn read_file(path: &Path) -> Result<Vec<ApplyDocument>, String> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => split_documents(&source, &text).map_err(|e| e.to_string()),
        Err(e) => Err(ManifestError {
            source,
            index: 0,
            object: String::new(),
            path: String::new(),
            reason: format!("cannot read: {e}"),
        }
        .to_string()),
    }
}

/// Every document of every manifest file, or every problem (unreadable files and syntax
/// errors), each naming its file.
pub fn read_documents(dir: &Path) -> Result<Vec<ApplyDocument>, Vec<String>> {
    let files = manifest_files(dir).map_err(|e| vec![e.to_string()])?;
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        match read_file(&path) {
            Ok(d) => docs.extend(d),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(problems)
    }
}

/// One file as last read.
#[derive(Debug)]
struct CachedFile {
    stamp: Stamp,
    /// Its documents the store takes, or its problem.
    docs: Result<Vec<ApplyDocument>, String>,
}

/// The directory's documents as a store sees them: per file (named by path), and which files
/// changed since the store last took them.
#[derive(Debug)]
pub struct DirDocs<'a> {
    /// Each file's documents (only those the store takes).
    pub files: BTreeMap<&'a str, &'a [ApplyDocument]>,
    /// Files added, changed or removed since the last successful apply.
    pub changed: &'a BTreeSet<String>,
}

impl DirDocs<'_> {
    /// Every document, in file order.
    pub fn all(&self) -> Vec<ApplyDocument> {
        self.files
            .values()
            .flat_map(|d| d.iter().cloned())
            .collect()
    }
}

/// What a store remembers of the directory: each file as last read, and which files changed
/// since the store last applied them.
#[derive(Debug, Default)]
pub struct DirWatch {
    files: BTreeMap<String, CachedFile>,
    changed: BTreeSet<String>,
    /// Whether the directory could be listed last time.
    listed: bool,
    /// Problems of the last read; the last good set stays in force while there are some.
    pub problems: Vec<String>,
}

impl DirWatch {
    /// Lists `dir` and re-reads the files whose size or time changed (documents `take`
    /// rejects are dropped at once). Returns whether anything changed.
    fn refresh(&mut self, dir: &Path, take: fn(&ApplyDocument) -> bool) -> Result<bool, DirError> {
        let paths = manifest_files(dir)?;
        let mut seen = BTreeSet::new();
        let mut any = !self.listed;
        self.listed = true;
        for path in paths {
            let name = path.display().to_string();
            // A file that vanished between listing and stat is gone, not an error.
            let Ok(stamp) = stamp(&path) else { continue };
            seen.insert(name.clone());
            if self.files.get(&name).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let docs = read_file(&path).map(|d| d.into_iter().filter(take).collect());
            self.files.insert(name.clone(), CachedFile { stamp, docs });
            self.changed.insert(name);
            any = true;
        }
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for name in gone {
            self.files.remove(&name);
            self.changed.insert(name);
            any = true;
        }
        Ok(any)
    }
}

/// Re-reads the files of `dir` that changed since `watch` last saw them and, when any did,
/// hands the store its documents (those `take` accepts) through `apply`, which answers
/// whether what is in force changed, or every problem (then nothing of the read is in force
/// and the last good set stays). A file that does not parse (one being written, say) makes
/// the whole read wait, as does an invalid object: the directory is applied whole or not at
/// all. `what` names the store's objects in logs ("objects", "policies"). The watch has
/// its own lock, held while `apply` runs (so two reads never interleave). Returns whether what
/// is in force changed.
pub fn reload(
    dir: &Path,
    what: &str,
    watch: &Mutex<DirWatch>,
    take: fn(&ApplyDocument) -> bool,
    apply: impl FnOnce(DirDocs<'_>) -> Result<bool, Vec<String>>,
) -> bool {
    let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
    match w.refresh(dir, take) {
        Ok(false) => return false,
        Ok(true) => {}
        Err(e) => {
            let problem = format!("{e}; the last good set of its {what} stays in force");
            if w.problems != [problem.clone()] {
                warn!("{problem}");
                w.problems = vec![problem];
            }
            w.listed = false;
            return false;
        }
    }
    let read_problems: Vec<String> = w
        .files
        .values()
        .filter_map(|f| f.docs.as_ref().err().cloned())
        .collect();
    let outcome = if read_problems.is_empty() {
        let files = w
            .files
            .iter()
            .map(|(k, f)| (k.as_str(), f.docs.as_deref().unwrap_or_default()))
            .collect();
        apply(DirDocs {
            files,
            changed: &w.changed,
        })
    } else {
        Err(read_problems)
    };
    match outcome {
        Ok(changed) => {
            if changed || !w.problems.is_empty() {
                info!(dir = %dir.display(), changed, files = w.changed.len(), "manifest directory read for its {what}");
            }
            w.problems.clear();
            w.changed.clear();
            changed
        }
        Err(problems) => {
            if w.problems != problems {
                warn!(
                    dir = %dir.display(),
                    problems = problems.len(),
                    "manifest directory rejected; the last good set of its {what} stays in force"
                );
                for p in &problems {
                    warn!("{p}");
                }
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
        let mut w = DirWatch::default();
        let all: fn(&ApplyDocument) -> bool = |_| true;
        assert!(w.refresh(d, all).expect("reads"), "first read");
        w.changed.clear();
        assert!(!w.refresh(d, all).expect("reads"), "nothing changed");
        std::fs::write(d.join("b.yaml"), "a: 12\n").expect("write");
        assert!(w.refresh(d, all).expect("reads"), "size changed");
        assert_eq!(w.changed.len(), 1, "{:?}", w.changed);
        std::fs::remove_file(d.join("a.json")).expect("rm");
        assert!(w.refresh(d, all).expect("reads"), "removed");
        assert_eq!(w.changed.len(), 2);
        assert!(w.refresh(&d.join("missing"), all).is_err());
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
