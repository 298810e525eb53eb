use super::*;
use crate::manifest::text::for_each_yaml_document;

fn fast(text: &str) -> (Read, Vec<(usize, String)>) {
    let mut docs = Vec::new();
    let mut buf = Vec::new();
    let read = for_each_document(text, &mut buf, |i, json| {
        docs.push((i, String::from_utf8(json.to_vec()).unwrap()))
    });
    (read, docs)
}

fn libyaml(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    for_each_yaml_document(text, &mut Vec::new(), 0, |i, json| {
        docs.push((i, String::from_utf8(json.to_vec()).unwrap()))
    })
    .unwrap();
    docs
}

/// The documents that are not empty (`null`), as [`super::super::text`] hands them out.
fn objects(docs: Vec<(usize, String)>) -> Vec<(usize, String)> {
    docs.into_iter().filter(|(_, d)| d != "null").collect()
}

/// Read whole by the fast path, and exactly as libyaml reads it (which also counts one empty
/// document in a stream without any).
fn same(text: &str) {
    let (read, docs) = fast(text);
    assert_eq!(read, Read::Done, "{text:?}");
    assert_eq!(objects(docs), objects(libyaml(text)), "{text:?}");
}

/// The fast path stops at document `at` (1-based), having handed out the same documents as
/// libyaml before it.
fn stops_at(text: &str, at: usize) {
    let (read, docs) = fast(text);
    assert_eq!(read, Read::Stopped { done: at - 1 }, "{text:?}");
    let want: Vec<_> = libyaml_lenient(text).into_iter().take(at - 1).collect();
    assert_eq!(docs, want, "{text:?}");
}

/// libyaml's documents up to its first error.
fn libyaml_lenient(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let _ = for_each_yaml_document(text, &mut Vec::new(), 0, |i, json| {
        docs.push((i, String::from_utf8(json.to_vec()).unwrap()))
    });
    docs
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-1\n  namespace: bench\nspec:\n  clusterIP: 10.96.0.2\n  ports:\n  - name: http\n    port: 80\n    targetPort: 5001\n    protocol: TCP\n";
const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-1-a\n  namespace: bench\n  labels:\n    kubernetes.io/service-name: svc-1\naddressType: IPv4\nports:\n- name: http\n  port: 5001\n  protocol: TCP\nendpoints:\n- addresses: [\"10.128.0.2\"]\n  conditions:\n    ready: true\n- addresses: [\"10.128.0.3\"]\n  conditions:\n    ready: true\n";

#[test]
fn manifests_as_written_read_as_libyaml_reads_them() {
    same(SERVICE);
    same(SLICE);
    same(&format!("{SERVICE}---\n{SLICE}"));
    same(&format!("---\n{SERVICE}---\n---\n{SLICE}---\n"));
    same(&format!(
        "# a comment\n\n---   # and one here\n{SERVICE}\n# between\n---\n{SLICE}"
    ));
    same("");
    same("# nothing\n");
    same("---\n");
    same("a: 1\n---");
    same("  a: 1\n  b:\n    c: d\n");
    same("a:\n  - x\n  - y\nb:\n- 1\n- [2, 3]\n-\n- - p\n  - q\n- k: v\n  l: w\nc: end\n");
    same("a: [ ]\nb: {}\nc: { x: 1, y: [a, 'b c', \"d\"], \"z\": {} }\nd: [[1], {e: f}]\n");
    same("s: 'it is'\nt: \"x: y # z\"\nu: ''\nv: \"\"\n'w': 1\n\"x y\": 2\n");
    same("n: null\nN: Null\nt: true\nT: TRUE\nf: False\ne:\nz: 0\nbig: 1234567890123456789\n");
    same("ip: 10.96.0.1\ncidr: 10.0.0.0/8\ncpu: 100m\nmem: 64Mi\nimage: nginx:1.25\nurl: http://a/b\nw: two words\nn2: nan\ni: inf\ny: yes\no: off\nk: a=b\n");
    same("a: b   # comment\nc: [1, 2]  # comment\nd: 'q'  # comment\n");
    same("- a\n- b: c\n");
    same("a:\n  b:\n    c:\n      - d\ne: f\n");
}

#[test]
fn what_it_is_unsure_of_goes_to_libyaml() {
    for (text, at) in [
        ("a: &x 1\nb: *x\n", 1),
        ("a: !!str 1\n", 1),
        ("a: |\n  text\n", 1),
        ("a: >\n  text\n", 1),
        ("a: b\n  continued\n", 1),
        ("a: \"esc\\n\"\n", 1),
        ("a: 'it''s'\n", 1),
        ("a:\tb\n", 1),
        ("a: b\r\n", 1),
        ("a: é\n", 1),
        ("a: 1.5\n", 1),
        ("a: 1e3\n", 1),
        ("a: 0x1f\n", 1),
        ("a: 0123\n", 1),
        ("a: -1\n", 1),
        ("a: 12:30\n", 1),
        ("a: 12345678901234567890\n", 1),
        ("a: ~\n", 1),
        ("a: [1,\n  2]\n", 1),
        ("a: [1, ]\n", 1),
        ("? a\n: b\n", 1),
        ("%YAML 1.2\n---\na: 1\n", 1),
        ("a: 1\n...\n", 1),
        ("--- a: 1\n", 1),
        ("scalar\n", 1),
        ("a: 1\na: 2\n", 1),
        ("a: {b: 1, b: 2}\n", 1),
        ("a: 1\n b: 2\n", 1),
        ("a: b: c\n", 1),
        ("<<: {a: 1}\n", 1),
        ("a: 1\n---\nb: [unclosed\n", 2),
        ("a: 1\n---\n---\nb: *x\n", 3),
    ] {
        stops_at(text, at);
    }
}

#[test]
fn errors_come_from_libyaml() {
    use crate::manifest::text::split_documents_raw;
    let err = split_documents_raw("f.yaml", "a: 1\n---\nb: [unclosed\n").unwrap_err();
    assert_eq!(err.index, 2);
    assert!(err.reason.starts_with("YAML syntax error:"), "{err}");
    let err = split_documents_raw("f.yaml", "a: 1\n---\nb: 1\nb: 2\n").unwrap_err();
    assert_eq!(err.index, 2);
    assert!(err.reason.contains("duplicate key"), "{err}");
    // Documents before the one it is unsure of are handed out once.
    let docs = split_documents_raw("f.yaml", "a: 1\n---\nb: |\n  x\n---\nc: 3\n").unwrap();
    let got: Vec<(usize, &str)> = docs.iter().map(|d| (d.index, d.object.get())).collect();
    assert_eq!(
        got,
        [(1, "{\"a\":1}"), (2, "{\"b\":\"x\\n\"}"), (3, "{\"c\":3}")]
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Lines of YAML-like text: indentation, keys, items, scalars of every kind it decides
    /// on (and some it must not), flow collections, comments and markers.
    fn line() -> impl Strategy<Value = String> {
        let indent = prop_oneof![Just(""), Just("  "), Just("    "), Just(" "), Just("\t")];
        let key = prop_oneof![
            Just("a: "),
            Just("b: "),
            Just("a:"),
            Just("- "),
            Just("- k: "),
            Just("-"),
            Just("'q': "),
            Just(""),
        ];
        let value = prop_oneof![
            Just(""),
            Just("1"),
            Just("01"),
            Just("-1"),
            Just("1.5"),
            Just("1e5"),
            Just("0x10"),
            Just("10.0.0.1"),
            Just("100m"),
            Just("true"),
            Just("Null"),
            Just("~"),
            Just("x y"),
            Just("x: y"),
            Just("nginx:1"),
            Just("'s'"),
            Just("\"d\""),
            Just("\"e\\n\""),
            Just("[1, a, \"b\"]"),
            Just("{a: 1, b: [2]}"),
            Just("[1,"),
            Just("&x 1"),
            Just("*x"),
            Just("|"),
            Just("# c"),
            Just("a # c"),
        ];
        let whole = prop_oneof![
            Just(None),
            Just(Some("---")),
            Just(Some("...")),
            Just(Some("# c"))
        ];
        (indent, key, value, whole).prop_map(|(i, k, v, w)| match w {
            Some(w) => w.to_owned(),
            None => format!("{i}{k}{v}"),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the text, the documents the fast path hands out are libyaml's, and
        /// where it reads a whole file libyaml reads it without an error.
        #[test]
        fn the_fast_path_never_differs(lines in proptest::collection::vec(line(), 0..12)) {
            let text = lines.join("\n");
            let (read, docs) = fast(&text);
            match read {
                Read::Done => {
                    let mut want = Vec::new();
                    let all = for_each_yaml_document(&text, &mut Vec::new(), 0, |i, json| {
                        want.push((i, String::from_utf8(json.to_vec()).unwrap()))
                    });
                    prop_assert!(all.is_ok(), "{:?}: libyaml says {:?}", text, all.err());
                    prop_assert_eq!(objects(docs), objects(want), "{:?}", text);
                }
                Read::Stopped { done } => {
                    let want: Vec<_> = libyaml_lenient(&text).into_iter().take(done).collect();
                    prop_assert_eq!(objects(docs), objects(want), "{:?}", text);
                }
            }
        }
    }
}

#[test]
fn deep_nesting_goes_to_libyaml() {
    let block: String = (0..200).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
    assert_eq!(fast(&block).0, Read::Stopped { done: 0 });
    let flow = format!("a: {}1{}\n", "[".repeat(40), "]".repeat(40));
    assert_eq!(fast(&flow).0, Read::Stopped { done: 0 });
    same(&format!("a: {}1{}\n", "[".repeat(20), "]".repeat(20)));
}

/// Every YAML file of the repository (examples, deploy, tests; Helm templates aside, which are
/// not YAML until rendered): whatever the fast path hands out is what libyaml reads.
#[test]
fn the_repositorys_yaml_reads_the_same() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(
                    name.as_str(),
                    "target" | "templates" | ".git" | "node_modules"
                ) {
                    walk(&p, out);
                }
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(p);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for d in ["examples", "deploy", "tests", "bench"] {
        if root.join(d).is_dir() {
            walk(&root.join(d), &mut files);
        }
    }
    assert!(files.len() > 20, "{files:?}");
    let mut whole = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let (read, docs) = fast(&text);
        let want = libyaml_lenient(&text);
        match read {
            Read::Done => {
                whole += 1;
                assert_eq!(objects(docs), objects(want), "{}", f.display());
            }
            Read::Stopped { done } => {
                let want: Vec<_> = want.into_iter().take(done).collect();
                assert_eq!(objects(docs), objects(want), "{}", f.display());
            }
        }
    }
    // Most manifests as people write them are read whole.
    assert!(whole * 2 > files.len(), "{whole} of {}", files.len());
}
