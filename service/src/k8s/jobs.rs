//! Reading how a batch/v1 Job ended, for the Jobs lifeboat runs (volume
//! movers, the rebuild's restore Jobs).

use k8s_openapi::api::batch::v1::Job;

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Its pod succeeded.
    Complete,
    /// It failed, with the condition's reason and message.
    Failed(String),
}

/// The Job's ending, if it has one (`Complete` or `Failed` condition
/// `True`).
pub fn ending(job: &Job) -> Option<Ending> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some(Ending::Complete),
            ("Failed", "True") => Some(Ending::Failed(
                [c.reason.as_deref(), c.message.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": "),
            )),
            _ => None,
        })
}
