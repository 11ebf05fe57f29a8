//! Writing a planned recovery: the base backup, the segments in `pg_wal`
//! and the recovery settings, never through a link.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{PitrError, Plan, Target};
use crate::repo::reader::BlobReader;
use crate::restore::files::{RestoreOptions, RestoreProgress, restore};
use crate::sources::postgres_wal::BASE_FOLDER;

/// What [`write`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The base backup's snapshot.
    pub base_snapshot: String,
    /// When that backup ended.
    pub base_time: DateTime<Utc>,
    /// The target, as written.
    pub target: String,
    /// WAL files written.
    pub wal_files: usize,
    /// The last segment.
    pub last_segment: String,
}

/// Writes the data directory of `plan` into `dir` (new or empty).
///
/// Fails when `dir` is not empty, the repository fails, or the base backup
/// holds links where the recovery files go.
pub async fn write(
    reader: &BlobReader,
    plan: &Plan,
    dir: &Path,
    progress: Arc<RestoreProgress>,
) -> Result<Written, PitrError> {
    let fresh = RestoreOptions {
        force: false,
        keep_special: false,
    };
    restore(
        reader,
        plan.base.snapshot.root,
        BASE_FOLDER,
        dir,
        &fresh,
        progress.clone(),
    )
    .await?;
    let wal_dir = dir.join("pg_wal");
    plain_dir(&wal_dir)?;
    let replace = RestoreOptions {
        force: true,
        keep_special: false,
    };
    for file in &plan.files {
        let name = file.stored.name();
        restore(
            reader,
            file.snapshot.snapshot.root,
            &name,
            &wal_dir,
            &replace,
            progress.clone(),
        )
        .await?;
        let written = file.written_as();
        if written != name {
            let (from, to) = (wal_dir.join(&name), wal_dir.join(&written));
            std::fs::rename(&from, &to).map_err(|source| PitrError::Write { path: to, source })?;
        }
    }
    write_new(&dir.join("recovery.signal"), b"")?;
    append(
        &dir.join("postgresql.auto.conf"),
        recovery_settings(&plan.target).as_bytes(),
    )?;
    let standby = dir.join("standby.signal");
    if std::fs::symlink_metadata(&standby).is_ok() {
        std::fs::remove_file(&standby).map_err(|source| PitrError::Write {
            path: standby,
            source,
        })?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        PitrError::Write {
            path: dir.to_owned(),
            source,
        }
    })?;
    Ok(Written {
        data_dir: dir.to_owned(),
        base_snapshot: plan.base.id.to_hex(),
        base_time: plan.base.snapshot.end_time,
        target: plan.target.to_string(),
        wal_files: plan.files.len(),
        last_segment: plan.last_segment.name(),
    })
}

/// The lines appended to `postgresql.auto.conf` (later settings win).
pub fn recovery_settings(target: &Target) -> String {
    let mut settings = String::from(
        "\n# Written by lifeboat restore --pitr: the archived WAL is in pg_wal.\n\
         restore_command = 'false'\n\
         recovery_target_timeline = 'latest'\n\
         recovery_target_action = 'promote'\n",
    );
    let line = match target {
        Target::Latest => None,
        Target::Time(time) => Some(format!(
            "recovery_target_time = {}",
            quoted(&time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        )),
        Target::Lsn(lsn) => Some(format!(
            "recovery_target_lsn = {}",
            quoted(&lsn.to_string())
        )),
        Target::Name(name) => Some(format!("recovery_target_name = {}", quoted(name))),
    };
    if let Some(line) = line {
        settings.push_str(&line);
        settings.push('\n');
    }
    settings
}

/// Makes the recovery of the data directory `dir` pause at restore point
/// `name`, open for reading as a hot standby, instead of going on.
///
/// Fails when `postgresql.auto.conf` cannot be written.
pub fn pause_at(dir: &Path, name: &str) -> Result<(), PitrError> {
    let settings = format!(
        "\n# Written by lifeboat drill: pause at the census.\n\
         recovery_target_name = {}\n\
         recovery_target_action = 'pause'\n",
        quoted(name)
    );
    append(&dir.join("postgresql.auto.conf"), settings.as_bytes())
}

/// Undoes [`pause_at`]: once restarted, recovery goes on to the end of
/// the WAL and the server is promoted.
///
/// Fails when `postgresql.auto.conf` cannot be written.
pub fn go_on(dir: &Path) -> Result<(), PitrError> {
    append(
        &dir.join("postgresql.auto.conf"),
        b"recovery_target_name = ''\nrecovery_target_action = 'promote'\n",
    )
}

/// `value` as a quoted configuration value, which ends where `value` does
/// whatever it holds: PostgreSQL's configuration files read a backslash
/// as an escape and end a value at a line break.
fn quoted(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// Fails unless `path` is a folder, not a link to one.
fn plain_dir(path: &Path) -> Result<(), PitrError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => Err(PitrError::Unsafe {
            path: path.to_owned(),
            what: if meta.is_symlink() {
                "a symbolic link"
            } else {
                "not a folder"
            },
            expected: "folder",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(path).map_err(|source| PitrError::Write {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(PitrError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` holding `bytes`; it must not exist.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), PitrError> {
    open_plain(
        path,
        std::fs::OpenOptions::new().write(true).create_new(true),
        bytes,
    )
}

/// Appends `bytes` to `path`, creating it; never through a link.
fn append(path: &Path, bytes: &[u8]) -> Result<(), PitrError> {
    open_plain(
        path,
        std::fs::OpenOptions::new().append(true).create(true),
        bytes,
    )
}

fn open_plain(
    path: &Path,
    options: &mut std::fs::OpenOptions,
    bytes: &[u8],
) -> Result<(), PitrError> {
    let failed = |source| PitrError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => PitrError::Unsafe {
                path: path.to_owned(),
                what: "a symbolic link",
                expected: "file",
            },
            _ => failed(e),
        })?;
    if !file.metadata().map_err(failed)?.is_file() {
        return Err(PitrError::Unsafe {
            path: path.to_owned(),
            what: "not a file",
            expected: "file",
        });
    }
    file.write_all(bytes).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_quote_what_they_hold() {
        let settings = recovery_settings(&Target::Name("it's".into()));
        assert!(settings.contains("recovery_target_name = 'it''s'\n"));
        // A name from a forged census cannot end the value early.
        let forged = recovery_settings(&Target::Name("x\\'\nrestore_command = 'sh'".into()));
        assert!(forged.contains("recovery_target_name = 'x\\\\''\\nrestore_command = ''sh'''\n"));
        assert!(
            !forged
                .lines()
                .any(|line| line.starts_with("restore_command = 'sh'")),
            "{forged}"
        );
        assert!(settings.contains("restore_command = 'false'"));
        assert!(!recovery_settings(&Target::Latest).contains("recovery_target_time ="));
        let time = "2026-12-06T21:29:21.5Z".parse().expect("a time");
        assert!(
            recovery_settings(&time)
                .contains("recovery_target_time = '2026-12-06 21:29:21.500000+00'")
        );
    }
}
