//! Generates the etcd v3 API (packages etcdserverpb, mvccpb, authpb, v3electionpb, v3lockpb), eden's peer protocol, its join call, its forming call, its task call and
//! its plugin protocol (with gRPC's health service, which plugins serve).
//! protoc comes from protoc-bin-vendored, so no system protoc is needed.
//!
//! The etcd packages also get serde implementations in etcd's JSON mapping (pbjson): what etcd's
//! HTTP/JSON gateway speaks (proto field names, 64-bit integers as strings, bytes as base64,
//! enums by name, fields left out when they hold their default; unknown fields ignored).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("descriptors.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(
            &[
                "proto/etcd/rpc.proto",
                "proto/etcd/kv.proto",
                "proto/etcd/auth.proto",
                "proto/etcd/v3election.proto",
                "proto/etcd/v3lock.proto",
                "proto/eden/peer.proto",
                "proto/eden/join.proto",
                "proto/eden/forming.proto",
                "proto/eden/tasks.proto",
                "proto/eden/plugin.proto",
                "proto/grpc/health/v1/health.proto",
            ],
            &["proto"],
        )?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3electionpb",
            ".v3lockpb",
        ])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
