//! Links the agent with packed relative relocations (DT_RELR) where the target supports them.
//!
//! The agent is a position-independent executable: at start the dynamic loader applies one
//! relocation per pointer in its read-only-after-relocation data (vtables, string tables:
//! ~46,000 of them). In the classic RELA format each takes 24 bytes, so the loader read a 1.1 MB
//! table, and those pages stayed in the agent's RSS. RELR encodes runs of adjacent pointers in
//! bitmaps: the same relocations take a few KB. GNU ld >= 2.38 and lld >= 15 write it, and record
//! a dependency on glibc's `GLIBC_ABI_DT_RELR` version (glibc >= 2.36, Debian 12): a loader too
//! old to apply RELR refuses the binary with a clear error instead of running it unrelocated.
//! Only the agent's binary is linked this way: it is the long-running process
//! whose memory is counted.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
