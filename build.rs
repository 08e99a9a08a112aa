//! Compiles the protocol with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cachesync/v1/sync.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Received frames keep pointing into the decode buffer instead of being copied out.
        .bytes(".cachesync.v1.BlobFrame.data")
        .compile_fds(fds)?;
    Ok(())
}
