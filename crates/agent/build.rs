//! Link flags for the agent's binary on Linux with glibc, both for its RSS (issue #15).
//!
//! - **Packed relative relocations (DT_RELR)**. The agent is a position-independent executable:
//!   at start the dynamic loader applies one relocation per pointer in its
//!   read-only-after-relocation data (vtables, string tables: ~46,000 of them). In the classic
//!   RELA format each takes 24 bytes, so the loader read a 1.1 MB table, and those pages stayed
//!   in the agent's RSS; RELR encodes runs of adjacent pointers in bitmaps: a few KB. GNU ld >=
//!   2.38 and lld >= 15 write it, and record a dependency on glibc's `GLIBC_ABI_DT_RELR` version
//!   (glibc >= 2.36, Debian 12): a loader too old to apply RELR refuses the binary with a clear
//!   error instead of running it unrelocated.
//! - **Segments aligned to 64 KB** (`-z max-page-size=0x10000`; the default is 4 KB). The kernel
//!   maps a file's pages into a process in 64 KB windows around each page fault (fault-around),
//!   aligned on addresses, while the page cache holds the file in folios aligned on file
//!   offsets. With the code's addresses and file offsets congruent only modulo 4 KB the two
//!   disagree, and the same code touched left ~1 MB more of `.text` mapped (10.7 vs 11.8-12.2 MB
//!   at start, bench/README.md "Agent memory (session 10)"). This only widens gaps between
//!   segments in the address space; the file does not grow.
//!
//! - **The code that runs, together** (release builds): `hot-code.txt` lists the functions the
//!   agent ran in `bench/pod2pod.sh` (start-up, two endpoints, traffic, 98 more endpoints), and a
//!   linker script made from it puts their sections first, in an output section `.text.hot`
//!   before `.text`. The kernel maps an executable's pages in 64 KB windows (fault-around), and
//!   whole large folios where the page cache holds them so; the ~6 MB that ran were spread over
//!   the 20 MB of `.text`, so ~12 MB of it was mapped. Grouped, the windows are mostly those of
//!   `.text.hot` (bench/README.md "Agent memory (session 13)"). Each line is a symbol as
//!   `.text.<symbol>` names its section in the objects rustc writes (one section per function);
//!   a legacy-mangled name's hash is `*` where no other function has that path, and kept where
//!   the path is a generic function's (its instances differ only by the hash; the hash stays
//!   the same across builds of the same dependencies and features, not across others). A
//!   function missing from the list, or whose name changed, is only placed among the others,
//!   as before: the list can go stale, never wrong. `bench/hot-code.sh` makes it again.
//!
//! Measured and not done: linking without PIE (`-no-pie`, as Go links Cilium's agent) leaves
//! the relocated data clean (0.8 MB less private memory), but the same pages are then read
//! through fault-around and counted anyway: RSS only 0.1-0.3 MB lower, for an executable at a
//! fixed address in every run. Not worth giving up that part of ASLR.
//!
//! Only the agent's binary is linked this way: it is the long-running process whose memory is
//! counted.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=0x10000");
        if std::env::var("PROFILE").as_deref() == Ok("release") {
            hot_code_first();
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Writes the linker script that puts the sections of the functions in `hot-code.txt` first,
/// and links the agent's binary with it.
fn hot_code_first() {
    println!("cargo:rerun-if-changed=hot-code.txt");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let list = std::path::Path::new(&dir).join("hot-code.txt");
    let text = std::fs::read_to_string(&list)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", list.display()));
    warn_if_stale(&dir, &text);
    let mut script = String::from("SECTIONS\n{\n  .text.hot : {\n");
    for name in text.lines().map(str::trim) {
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        // The standard library's objects put some functions in `.text.unlikely.<symbol>`.
        if name.starts_with("_R") {
            script += &format!("    *(.text.{name} .text.unlikely.{name})\n");
        } else {
            script += &format!("    *(.text.{name})\n");
        }
    }
    // INSERT keeps the linker's own layout for everything else.
    script += "  }\n}\nINSERT BEFORE .text;\n";
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("hot-code.ld");
    std::fs::write(&out, script).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", out.display());
}

/// Warns (it does not fail: a stale list only places fewer functions first) when the
/// workspace's `Cargo.lock` is not the one `hot-code.txt` was made with. Generic functions'
/// symbol hashes change with the dependencies, and their lines then match nothing.
fn warn_if_stale(manifest_dir: &str, list: &str) {
    const KEY: &str = "# Cargo.lock fnv1a64: ";
    let lock = std::path::Path::new(manifest_dir).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let Ok(bytes) = std::fs::read(&lock) else {
        return; // built outside the workspace: nothing to compare with
    };
    let made_with = list
        .lines()
        .find_map(|l| l.strip_prefix(KEY))
        .map(str::trim);
    let now = format!("{:016x}", fnv1a64(&bytes));
    if made_with != Some(now.as_str()) {
        println!(
            "cargo:warning=crates/agent/hot-code.txt was made with another Cargo.lock: the \
             agent's RSS will be higher until `bench/hot-code.sh` makes it again \
             (bench/README.md, \"The list goes stale when dependencies change\")"
        );
    }
}

/// FNV-1a, 64 bits: the fingerprint `bench/hot_code.py` writes into the list.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
