//! Generates the gRPC code from the .proto files with protox (no protoc needed): the API
//! under proto/, with protojson serde impls, and a client-only copy of Hubble's protos from
//! tests/hubble-proto/ for the compatibility test.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=tests/hubble-proto");

    let fds = protox::compile(
        [
            "flow/flow.proto",
            "relay/relay.proto",
            "observer/observer.proto",
        ],
        ["proto"],
    )?;
    let descriptor_path = out.join("ciliate_observer_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".flow", ".relay", ".observer"])?;

    let compat_out = out.join("hubble_compat");
    std::fs::create_dir_all(&compat_out)?;
    let compat = protox::compile(
        [
            "flow/flow.proto",
            "relay/relay.proto",
            "observer/observer.proto",
        ],
        ["tests/hubble-proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .out_dir(&compat_out)
        .compile_fds(compat)?;
    Ok(())
}
