//! One line for people out of an error and its causes.
//!
//! Many error messages already quote their cause (`reading X: permission
//! denied`); printing the whole chain would then say it twice. This keeps
//! each cause once.

use std::error::Error;

/// The error's message followed by each cause not already part of it.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let part = inner.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}: {1}")]
    struct Quoting(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("backup failed")]
    struct Wrapping(#[source] Quoting);

    #[test]
    fn each_cause_appears_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let error = Wrapping(Quoting("/srv", io));
        assert_eq!(
            describe(&error),
            "backup failed: reading /srv: permission denied"
        );
    }
}
