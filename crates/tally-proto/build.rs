//! Compiles proto/tally/v1/tally.proto and proto/tally/cluster/v1/peer.proto with protox
//! (pure Rust, no protoc needed) and generates the prost messages and the tonic clients
//! and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let protos = [
        "../../proto/tally/v1/tally.proto",
        "../../proto/tally/cluster/v1/peer.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, [proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
