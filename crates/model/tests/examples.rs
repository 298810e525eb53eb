//! The manifests under `examples/services`: the good ones decode, and every file under
//! `invalid/` is refused with exactly the problems its `# expect:` lines name.

use std::path::{Path, PathBuf};

use ciliate_model::manifest::{decode_all, split_documents, ApplyDocument, ManifestError};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/services")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every problem of one file, as the user reads them.
fn problems(path: &Path) -> Vec<String> {
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(path).expect("read");
    let docs: Vec<ApplyDocument> = match split_documents(&name, &text) {
        Ok(d) => d,
        Err(e) => return vec![e.to_string()],
    };
    match decode_all(&docs) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(ManifestError::to_string).collect(),
    }
}

#[test]
fn the_examples_are_valid() {
    let files = yaml_files(&examples());
    assert_eq!(files.len(), 4, "{files:?}");
    for f in files {
        assert_eq!(problems(&f), Vec::<String>::new(), "{}", f.display());
    }
}

#[test]
fn every_invalid_example_is_refused_with_its_message() {
    let files = yaml_files(&examples().join("invalid"));
    assert!(files.len() >= 10, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        let got = problems(&f);
        assert_eq!(got.len(), expected.len(), "{}: {got:#?}", f.display());
        for (g, want) in got.iter().zip(&expected) {
            assert!(g.contains(want), "{}\n got: {g}\nwant: {want}", f.display());
        }
    }
}
