//! The real Hubble CLI, for tests that check our Observer API with it from the outside.
//!
//! It is built from cilium/hubble's source (see README, "Tests"); no package CI installs from
//! has it, so every test using it skips that part with a loud message when [`hubble_cli`]
//! finds none. That skip is allowed in CI: the same API is checked there by a Python grpcio
//! client and by clients generated from Hubble's own protos.

use std::path::PathBuf;

/// Where to look when `CILIATE_HUBBLE_BIN` is not set, before `hubble` on the `PATH`.
pub const DEFAULT_HUBBLE_BIN: &str = "/work/tools/bin/hubble";

/// The Hubble CLI: `$CILIATE_HUBBLE_BIN`, then [`DEFAULT_HUBBLE_BIN`], then `hubble` on the
/// `PATH`; `None` when there is none.
pub fn hubble_cli() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("hubble"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::env::var_os("CILIATE_HUBBLE_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(DEFAULT_HUBBLE_BIN)])
        .chain(on_path)
        .find(|p| p.is_file())
}

/// Prints the loud skip line for the part of `test` that needs the Hubble CLI.
pub fn skip_without_hubble(test: &str) {
    eprintln!(
        "\n!!! SKIPPED {test}: no Hubble CLI (set CILIATE_HUBBLE_BIN, or build {DEFAULT_HUBBLE_BIN}); \
         CI has none !!!\n"
    );
}
