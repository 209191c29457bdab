//! Generates the Rust types and tonic stubs from `proto/` with a vendored
//! protoc (no system protoc needed), and writes the descriptor set that server
//! reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        PathBuf::from("tributary/v1/event.proto"),
        PathBuf::from("tributary/v1/ingest.proto"),
        PathBuf::from("tributary/v1/query.proto"),
        PathBuf::from("tributary/v1/admin.proto"),
    ];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let include_wkt = protoc_bin_vendored::include_path()?;
    let includes = [PathBuf::from("."), include_wkt];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tributary_descriptor.bin"))
        // google.rpc.Status is tonic-types' message, so its helpers apply to ours.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_with_config(config, &protos, &includes)?;
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    Ok(())
}
