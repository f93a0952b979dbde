//! Compiles `proto/rookery/v1/cluster.proto` with protox (pure Rust, no `protoc`) and
//! generates the prost messages and the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("rookery/v1/cluster.proto");
    let fds = protox::compile([&file], [&root])?;
    // No generated `RouterServiceClient::connect(dst)` constructor: it would clash with the
    // `Connect` rpc method. Clients are built with `RouterServiceClient::new(channel)`.
    tonic_prost_build::configure().build_transport(false).bytes(".rookery.v1").compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", file.display());
    Ok(())
}
