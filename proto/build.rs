//! Generates the etcd v3 API (packages etcdserverpb, mvccpb, authpb, v3electionpb, v3lockpb), eden's peer protocol and its join call.
//! protoc comes from protoc-bin-vendored, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[
                "proto/etcd/rpc.proto",
                "proto/etcd/kv.proto",
                "proto/etcd/auth.proto",
                "proto/etcd/v3election.proto",
                "proto/etcd/v3lock.proto",
                "proto/eden/peer.proto",
                "proto/eden/join.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
