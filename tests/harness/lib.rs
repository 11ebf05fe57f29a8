//! The end-to-end test harness: real servers, started on free loopback ports
//! by the tests themselves and stopped when the test drops them.
//!
//! - [`MotoServer`]: moto's S3 server (conditional creates, any signature);
//! - [`GarageServer`]: Garage, a real S3 implementation checking signatures;
//! - [`postgres::PostgresServer`]: a throw-away PostgreSQL cluster (Debian's
//!   `postgresql`) with password authentication;
//! - [`prometheus::PrometheusServer`]: Prometheus scraping a target as a
//!   ServiceMonitor endpoint says, answering PromQL;
//! - [`FaultProxy`]: an HTTP proxy that fails the first requests on purpose;
//! - [`kubernetes::KubeApiServer`]: a protocol-level stand-in for a
//!   Kubernetes API server (HTTP/JSON and the exec websocket);
//! - [`talos::TalosApiServer`]: a protocol-level stand-in for a Talos
//!   node's API (gRPC, mutual TLS), because no Talos node can run here;
//! - [`deploy`]: the files under `deploy/` read as their consumers read
//!   them (kustomize output, strict Kubernetes types, Dockerfiles);
//! - [`s3`]: how a test reaches a bucket, and how it runs lifeboat code with
//!   the server's credentials in a child process's environment.
//!
//! A test whose server is not installed fails, naming the command that
//! installs it; it never passes silently.

pub mod cli;
pub mod deploy;
pub mod docker;
pub mod etcd;
pub mod fault_proxy;
pub mod garage;
pub mod kubernetes;
pub mod moto;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod repo;
pub mod s3;
pub mod service;
pub mod talos;

pub use fault_proxy::{Fault, FaultProxy};
pub use garage::GarageServer;
pub use moto::MotoServer;
pub use s3::S3Target;
