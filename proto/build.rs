//! Generates the Rust types and tonic stubs from `proto/` with a vendored
//! protoc (no system protoc needed), and writes the descriptor set that server
//! reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        PathBuf::from("tributary/v1/event.proto"),
        PathBuf::from("tributary/v1/ingest.proto"),
        PathBuf::from("tributary/v1/query.proto"),
        PathBuf::from("tributary/v1/subscription.proto"),
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
    ingest_wire_server();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    Ok(())
}

/// `tributary.v1.IngestService`'s server over `crate::wire`'s requests, which
/// keep `Event.payload` as bytes (see `src/wire.rs`). Same package, service
/// and method names, so the routes are the contract's.
fn ingest_wire_server() {
    use tonic_build::manual::{Builder, Method, Service};
    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::wire::{input}"))
            .output_type(format!("crate::v1::{output}"))
            .codec_path("tonic_prost::ProstCodec")
    };
    let service = Service::builder()
        .name("IngestService")
        .package("tributary.v1")
        .method(method("publish", "Publish", "PublishRequest", "PublishResponse").build())
        .method(
            method(
                "publish_batch",
                "PublishBatch",
                "PublishBatchRequest",
                "PublishBatchResponse",
            )
            .build(),
        )
        .method(
            method(
                "publish_stream",
                "PublishStream",
                "PublishRequest",
                "PublishResult",
            )
            .client_streaming()
            .server_streaming()
            .build(),
        )
        .build();
    Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
}
