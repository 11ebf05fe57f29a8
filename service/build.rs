//! Generates the Talos machine API client and server from `proto/`
//! (lifeboat's own subset of Talos' protos; see `proto/machine/machine.proto`).
//! Needs `protoc` (Debian: `apt-get install protobuf-compiler`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        // The server half serves the protocol-level Talos stand-in of the
        // end-to-end tests (tests/harness/talos.rs).
        .build_server(true)
        .bytes(".")
        .compile_protos(
            &["proto/machine/machine.proto", "proto/common/common.proto"],
            &["proto"],
        )
        .map_err(|e| {
            format!("generating the Talos API code: {e} (is protoc installed? apt-get install protobuf-compiler)")
                .into()
        })
}
