//! The Talos machine API's messages and service, generated at build time
//! from `service/proto/` — lifeboat's own subset of siderolabs/talos'
//! `api/common/common.proto` and `api/machine/machine.proto`, with Talos'
//! package, service and message names and field numbers, so that the gRPC
//! paths and the encoding are those of a real node.
//!
//! The server half ([`machine::machine_service_server`]) exists for the
//! protocol-level Talos stand-in of the end-to-end tests.

#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

/// Talos' `common` package: metadata and byte-stream pieces.
pub mod common {
    tonic::include_proto!("common");
}

/// Talos' `machine` package: `MachineService` and its messages.
pub mod machine {
    tonic::include_proto!("machine");
}
