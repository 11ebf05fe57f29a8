//! lifeboat: disaster recovery for small Kubernetes clusters.
//!
//! The library behind both programs: the repository format ([`repo`]), the
//! object stores it lives in ([`storage`]), what is backed up ([`sources`]),
//! turning snapshots back into data ([`restore`]) and the local state cache
//! ([`state`]), the configuration both programs read ([`config`]) and the
//! service's daemon ([`daemon`]). `lifeboatd` (the service) and `lifeboat`
//! (the restore CLI) are thin layers over it.

pub mod api;
pub mod backup;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod drill;
pub mod errors;
pub mod field;
pub mod fuzzing;
pub mod hooks;
pub mod k8s;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod sources;
pub mod state;
pub mod storage;
pub mod talos;
pub mod text;
