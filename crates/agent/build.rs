//! Links the agent as a position-dependent executable (`-no-pie`) on Linux with glibc.
//!
//! A position-independent executable (PIE, rustc's default) is loaded at a random address, so
//! at start the dynamic loader writes every pointer in its read-only-after-relocation data
//! (vtables, string tables, the GOT: ~46,000 pointers, 0.96 MB): each of those pages becomes a
//! private copy and stays in the agent's RSS, though the agent never writes them again. Linked
//! at a fixed address, the linker fills them in the file and the loader writes nothing: the
//! pages stay clean, shared with the page cache, and only those the agent reads are mapped.
//! Go programs (Cilium's agent among them) are linked this way by default on linux/amd64.
//!
//! The cost is one hardening measure: the executable's own code and data sit at the same
//! address in every run (the stack, heap, shared libraries and every other mapping are still
//! randomized), which makes return-oriented exploits of a memory-safety bug easier. The agent is
//! Rust with `unsafe` confined to a few reviewed FFI calls, so it trades that for ~1 MB.
//! Packagers who want the PIE build anyway set `CILIATE_AGENT_PIE=1` at build time; it is then
//! linked with packed relative relocations (RELR: the loader's table takes 16 KB, not 1.1 MB;
//! needs glibc >= 2.36 to run, which refuses an older loader with a clear error).
//!
//! Only the agent's binary is linked this way: it is the long-running process whose memory is
//! counted. The object code stays position-independent (the linker relaxes its GOT loads).
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let pie = std::env::var_os("CILIATE_AGENT_PIE").is_some_and(|v| v == "1");
    if os == "linux" && env == "gnu" {
        if pie {
            println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        } else {
            // After rustc's own `-pie`: the compiler driver takes the last of the two.
            println!("cargo:rustc-link-arg-bins=-no-pie");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CILIATE_AGENT_PIE");
}
