//! Compiles every `bpf/*.c` into `$OUT_DIR/<name>.o` with clang (BPF target, BTF, -O2).
//! The objects are embedded in the crate with `include_bytes_aligned!`-style alignment.
//!
//! `CILIATE_BPF_SKIP=1` skips clang and embeds empty objects, so that crates which never load
//! BPF build on machines without clang; loading then fails with an error saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let bpf_dir = manifest.join("../../bpf");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=CILIATE_BPF_SKIP");
    let skip = std::env::var("CILIATE_BPF_SKIP").is_ok_and(|v| !v.is_empty() && v != "0");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for dir in [bpf_dir.clone(), bpf_dir.join("include/ciliate")] {
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&bpf_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", bpf_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    for src in sources {
        if skip {
            let obj = out.join(
                src.with_extension("o")
                    .file_name()
                    .expect("source has a name"),
            );
            std::fs::write(&obj, b"").unwrap_or_else(|e| panic!("writing {}: {e}", obj.display()));
        } else {
            compile(&clang, &bpf_dir, &src, &out);
        }
    }
}

fn compile(clang: &str, bpf_dir: &Path, src: &Path, out: &Path) {
    let stem = src
        .file_stem()
        .expect("source has a name")
        .to_string_lossy()
        .into_owned();
    let obj = out.join(format!("{stem}.o"));
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror", "-Wno-unused-function"])
        .arg("-I")
        .arg(bpf_dir.join("include"))
        .arg("-I")
        .arg(&arch_include)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} to build the BPF programs ({e}); install it: apt-get install clang libbpf-dev")
        });
    assert!(status.success(), "{clang} failed on {}", src.display());
}
