//! What a run did with each thing it was asked to back up: a volume, a
//! resource type, a hook. Skips and failures carry their reason, so nothing
//! goes missing silently.

use serde::{Deserialize, Serialize};

/// One thing a backup run handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// What it is: `volume`, `resource`, `hook`.
    pub kind: String,
    /// Which one: `namespace/pvc`, `apps/deployments`, a hook's name.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// Counts or the reason, as a sentence.
    pub detail: String,
    /// Bytes of data it holds, where counted (a volume read by a mover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// What happened to an [`Item`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Stored in the snapshot.
    Stored,
    /// Left out on purpose; the detail says why.
    Skipped,
    /// Could not be stored; the detail says why.
    Failed,
}

impl Outcome {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

impl Item {
    /// An item with `outcome`.
    pub fn new(
        kind: &str,
        name: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            outcome,
            detail: detail.into(),
            bytes: None,
        }
    }

    /// The item holding `bytes` of data.
    pub fn with_bytes(mut self, bytes: u64) -> Self {
        self.bytes = Some(bytes);
        self
    }

    /// Whether the service should show it among a run's warnings: every
    /// failure, and every volume whose data is not in the snapshot.
    pub fn needs_attention(&self) -> bool {
        self.outcome == Outcome::Failed
            || (self.outcome == Outcome::Skipped && self.kind == "volume")
    }

    /// One line for logs and warnings: `skipped volume apps/media: reason`.
    pub fn sentence(&self) -> String {
        format!(
            "{} {} {}: {}",
            self.outcome.as_str(),
            self.kind,
            self.name,
            self.detail
        )
    }
}
