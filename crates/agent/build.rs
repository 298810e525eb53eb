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
    }
    println!("cargo:rerun-if-changed=build.rs");
}
