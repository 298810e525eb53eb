//! Code generated from `proto/` (Hubble's flow, relay and observer packages) by `build.rs`,
//! with protojson serde impls (`-o json`/`jsonpb` output, as Hubble prints it).

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

/// Hubble's `flow` package: Flow, FlowFilter and their parts.
pub mod flow {
    include!(concat!(env!("OUT_DIR"), "/flow.rs"));
    include!(concat!(env!("OUT_DIR"), "/flow.serde.rs"));
}

/// Hubble's `relay` package (only what `observer` refers to).
pub mod relay {
    include!(concat!(env!("OUT_DIR"), "/relay.rs"));
    include!(concat!(env!("OUT_DIR"), "/relay.serde.rs"));
}

/// Hubble's `observer` package: the Observer service and its requests and responses.
pub mod observer {
    include!(concat!(env!("OUT_DIR"), "/observer.rs"));
    include!(concat!(env!("OUT_DIR"), "/observer.serde.rs"));
}
