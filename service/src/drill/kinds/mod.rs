//! How each source kind is restored and verified in a drill. One module
//! per kind; [`DrillKind::of`] picks it from the snapshot's `source_kind`.
//!
//! To drill a new kind: add a variant, map its `source_kind` in
//! [`DrillKind::of`], and write its module's `verify(run)`, which records
//! timed steps with [`JobRun::step`] and failures with [`JobRun::fail`].

mod etcd;
mod files;
mod kubernetes;
mod postgres;
mod talos_config;

use super::JobRun;

/// The drill of one source kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillKind {
    /// `directory`, `volumes`, `stream`: every file restored and hashed
    /// against the tree.
    Files,
    /// `etcd`, `talos-etcd`: a data dir made by etcd's tool, a throwaway
    /// member, key count and revision against the recorded ones.
    Etcd,
    /// `postgres`: every dump into a scratch database, row counts against
    /// the recorded ones.
    Postgres,
    /// `talos-config`: files present, hashed, and their YAML parses.
    TalosConfig,
    /// `kubernetes`: the API objects (see [`kubernetes`]).
    Kubernetes,
}

impl DrillKind {
    /// The drill for snapshots of `source_kind`; `None` for a kind lifeboat
    /// cannot verify.
    pub fn of(source_kind: &str) -> Option<Self> {
        Some(match source_kind {
            "directory" | "volumes" | "stream" => Self::Files,
            "etcd" | "talos-etcd" => Self::Etcd,
            "postgres" => Self::Postgres,
            "talos-config" => Self::TalosConfig,
            "kubernetes" => Self::Kubernetes,
            _ => return None,
        })
    }

    /// Restores the snapshot of `run` into its scratch folder and verifies
    /// it, recording steps and failures in `run.report`.
    pub async fn verify(self, run: &mut JobRun<'_>) {
        match self {
            Self::Files => files::verify(run).await,
            Self::Etcd => etcd::verify(run).await,
            Self::Postgres => postgres::verify(run).await,
            Self::TalosConfig => talos_config::verify(run).await,
            Self::Kubernetes => kubernetes::verify(run).await,
        }
    }
}
