//! How lifeboat reaches a PostgreSQL server: the libpq connection string,
//! the password, the client programs and where they run.
//!
//! Every connection is made by PostgreSQL's own client programs (`psql`,
//! `pg_dump`, `pg_dumpall`), so the `dsn` means exactly what libpq makes of
//! it — TLS modes, service files, `PG*` variables and all. They run here,
//! or inside the server's container ([`ClientHost`]), where the dsn is read
//! as that container sees it. The password reaches a program only through
//! its `PGPASSWORD` variable (readable by its owner and root only, on
//! Linux): never on a command line, never in a log line. A `dsn` that
//! holds a password is refused for that reason.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::client::{ClientCommand, ClientHost};
use super::{PostgresError, PostgresSource};

/// How long a connection attempt may take, unless the dsn or the
/// environment says otherwise (libpq waits for ever by default).
const CONNECT_TIMEOUT_SECONDS: &str = "30";

/// The client programs of one PostgreSQL version.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    /// `pg_dump`, as configured.
    pub pg_dump: PathBuf,
    /// `pg_dumpall`, beside `pg_dump` or on `PATH`.
    pub pg_dumpall: PathBuf,
    /// `psql`, beside `pg_dump` or on `PATH`.
    pub psql: PathBuf,
    /// `pg_restore`, beside `pg_dump` or on `PATH`.
    pub pg_restore: PathBuf,
}

impl Tools {
    /// The programs beside `pg_dump` when it is a path, else from `PATH`.
    pub fn beside(pg_dump: &Path) -> Self {
        let sibling = |name: &str| match pg_dump.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
            _ => PathBuf::from(name),
        };
        Self {
            pg_dump: pg_dump.to_owned(),
            pg_dumpall: sibling("pg_dumpall"),
            psql: sibling("psql"),
            pg_restore: sibling("pg_restore"),
        }
    }
}

/// A password kept out of logs and wiped from memory when dropped.
#[derive(Clone)]
pub(crate) struct Password(Zeroizing<String>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a connection needs: the dsn, the password and where it came from
/// (for error messages), and where the programs run.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    dsn: String,
    password: Option<Password>,
    password_origin: String,
    host: ClientHost,
}

impl Connection {
    /// Checks the source's connection settings and reads the password;
    /// the programs run on `host`, where `dsn` (the source's, or one made
    /// for a container) is read.
    ///
    /// Fails when both password settings are given, the dsn holds a
    /// password, or the password file or variable is missing or empty.
    pub fn new(
        source: &PostgresSource,
        dsn: &str,
        host: ClientHost,
    ) -> Result<Self, PostgresError> {
        if dsn_has_password(dsn) {
            return Err(PostgresError::PasswordInDsn);
        }
        let (password, password_origin) = match (&source.password_file, &source.password_env) {
            (Some(_), Some(_)) => return Err(PostgresError::TwoPasswords),
            (Some(path), None) => (
                Some(read_password_file(path)?),
                format!("password_file {}", path.display()),
            ),
            (None, Some(name)) => (
                Some(read_password_env(name)?),
                format!("the variable {name} (password_env)"),
            ),
            (None, None) => (
                None,
                "libpq's environment (PGPASSWORD, PGPASSFILE, ~/.pgpass); \
                 or set password_file or password_env in the job"
                    .to_owned(),
            ),
        };
        Ok(Self {
            dsn: dsn.trim().to_owned(),
            password,
            password_origin,
            host,
        })
    }

    /// Where the programs run.
    pub fn host(&self) -> &ClientHost {
        &self.host
    }

    /// Where the password comes from, for messages.
    pub fn password_origin(&self) -> &str {
        &self.password_origin
    }

    /// The `--dbname=` argument for the dsn's own database (none for an
    /// empty dsn: libpq's environment decides).
    pub fn server_argument(&self) -> Option<String> {
        (!self.dsn.is_empty()).then(|| format!("--dbname={}", self.dsn))
    }

    /// The `--dbname=` argument for `database` on the dsn's server.
    pub fn database_argument(&self, database: &str) -> String {
        format!("--dbname={}", with_setting(&self.dsn, "dbname", database))
    }

    /// The `--dbname=` argument for a physical replication connection to
    /// the dsn's server (which takes replication commands, not SQL).
    pub fn replication_argument(&self) -> String {
        format!(
            "--dbname={}",
            with_setting(&self.dsn, "replication", "true")
        )
    }

    /// A command for `program` with the password in its environment (no
    /// stdin unless asked for; stdout and stderr piped).
    pub fn command(&self, program: &Path) -> ClientCommand {
        let mut command = ClientCommand::new(program);
        command.env("PGCLIENTENCODING", "UTF8");
        for (name, value) in [
            ("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS),
            ("PGAPPNAME", "lifeboat"),
        ] {
            // lifeboat's own environment reaches local programs only.
            let local = matches!(self.host, ClientHost::Local);
            if !local || std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password.0.as_str());
        }
        command
    }

    /// Starts `command` where the programs run.
    ///
    /// Fails when the program cannot start there.
    pub async fn start(
        &self,
        command: &ClientCommand,
    ) -> Result<super::client::Client, PostgresError> {
        command.start(&self.host).await
    }
}

fn read_password_file(path: &Path) -> Result<Password, PostgresError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|cause| {
        PostgresError::PasswordFile {
            path: path.to_owned(),
            cause,
        }
    })?);
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(PostgresError::EmptyPassword {
            origin: format!("password_file {}", path.display()),
        });
    }
    Ok(Password(Zeroizing::new(password.to_owned())))
}

fn read_password_env(name: &str) -> Result<Password, PostgresError> {
    let value =
        std::env::var(name).map_err(|_| PostgresError::PasswordEnv { name: name.into() })?;
    if value.is_empty() {
        return Err(PostgresError::EmptyPassword {
            origin: format!("the variable {name} (password_env)"),
        });
    }
    Ok(Password(Zeroizing::new(value)))
}

/// Whether a libpq connection string (URI or `key=value` form) carries a
/// password.
fn dsn_has_password(dsn: &str) -> bool {
    let lower = dsn.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("postgresql://")
        .or_else(|| lower.strip_prefix("postgres://"))
    {
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = before_query.split('/').next().unwrap_or_default();
        let userinfo_has_password = authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
        let query_has_password = query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("password"));
        return userinfo_has_password || query_has_password;
    }
    lower
        .split(|c: char| c.is_whitespace() || c == '=')
        .any(|word| word == "password")
}

/// `dsn` with its setting `key` (a libpq keyword) set to `value`. libpq
/// takes the last value of a repeated setting, so a URI gets a query
/// parameter and a `key=value` string a trailing `key='…'`.
fn with_setting(dsn: &str, key: &str, value: &str) -> String {
    let lower = dsn.to_ascii_lowercase();
    if lower.starts_with("postgresql://") || lower.starts_with("postgres://") {
        let separator = if dsn.contains('?') { '&' } else { '?' };
        return format!("{dsn}{separator}{key}={}", percent_encode(value));
    }
    let quoted = quote_value(value);
    if dsn.is_empty() {
        format!("{key}={quoted}")
    } else {
        format!("{dsn} {key}={quoted}")
    }
}

/// `value` quoted for a libpq `key=value` connection string.
pub(crate) fn quote_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The name a database's files get in the snapshot: the database name with
/// `%`, `/` and control characters percent-encoded, so any name PostgreSQL
/// allows becomes one safe file name and the encoding can be undone.
pub(crate) fn file_stem(database: &str) -> Cow<'_, str> {
    if !database
        .chars()
        .any(|c| c == '%' || c == '/' || c.is_control())
    {
        return Cow::Borrowed(database);
    }
    let mut out = String::with_capacity(database.len() + 8);
    for c in database.chars() {
        if c == '%' || c == '/' || c.is_control() {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A fix for a failure of a PostgreSQL client program, read from its
/// (English) error text; empty when none is known. The text itself is
/// always shown too.
pub(crate) fn hint(stderr: &str, password_origin: &str) -> Hint {
    let text = stderr.to_ascii_lowercase();
    let fix = if text.contains("password authentication failed") {
        format!("check the password in {password_origin}")
    } else if text.contains("no password supplied") {
        format!("the server wants a password: give it with {password_origin}")
    } else if text.contains("server version mismatch") {
        "pg_dump must be of the server's major version or newer: install that version \
         and set `pg_dump` in the job to its path (e.g. /usr/lib/postgresql/17/bin/pg_dump)"
            .to_owned()
    } else if text.contains("pg_hba.conf") {
        "allow this host and role in the server's pg_hba.conf".to_owned()
    } else if text.contains("permission denied") {
        "the role needs to read everything it dumps: make it a superuser or \
         (PostgreSQL 14+) GRANT pg_read_all_data TO it"
            .to_owned()
    } else if text.contains("connection refused")
        || text.contains("could not translate host name")
        || text.contains("timeout expired")
        || text.contains("no route to host")
    {
        "check the host and port in the dsn and that the server is reachable from here".to_owned()
    } else {
        String::new()
    };
    Hint(fix)
}

/// A suggested fix, shown after an error's text (` — fix`), or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint(pub String);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " — {}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_a_dsn_are_found() {
        for dsn in [
            "postgresql://backup:secret@db:5432/postgres",
            "postgres://backup:secret@db/postgres",
            "postgresql://backup@db/postgres?sslmode=require&password=x",
            "host=db user=backup password=secret",
            "host=db password = 'secret'",
        ] {
            assert!(dsn_has_password(dsn), "{dsn}");
        }
        for dsn in [
            "",
            "postgresql://backup@db:5432/postgres",
            "postgresql://db/postgres?sslmode=require",
            "postgresql://backup@[::1]:5432/postgres",
            "host=db user=backup dbname=postgres",
            "postgresql:///postgres?host=%2Fvar%2Frun%2Fpostgresql",
        ] {
            assert!(!dsn_has_password(dsn), "{dsn}");
        }
    }

    #[test]
    fn a_setting_is_set_last() {
        assert_eq!(
            with_setting("postgresql://backup@db:5432/postgres", "dbname", "gitea"),
            "postgresql://backup@db:5432/postgres?dbname=gitea"
        );
        assert_eq!(
            with_setting(
                "postgresql://db/postgres?sslmode=require",
                "dbname",
                "a b/ä"
            ),
            "postgresql://db/postgres?sslmode=require&dbname=a%20b%2F%C3%A4"
        );
        assert_eq!(
            with_setting("host=db dbname=postgres", "dbname", "it's"),
            "host=db dbname=postgres dbname='it\\'s'"
        );
        assert_eq!(with_setting("", "dbname", "x"), "dbname='x'");
        assert_eq!(
            with_setting("postgresql://db/postgres", "replication", "true"),
            "postgresql://db/postgres?replication=true"
        );
    }

    #[test]
    fn file_stems_are_safe_and_reversible() {
        assert_eq!(file_stem("gitea"), "gitea");
        assert_eq!(file_stem("..").as_ref(), "..");
        assert_eq!(file_stem("a/b%c\n").as_ref(), "a%2Fb%25c%0A");
        assert_eq!(file_stem("naïve"), "naïve");
    }

    #[test]
    fn tools_sit_beside_a_configured_pg_dump() {
        let tools = Tools::beside(Path::new("/usr/lib/postgresql/17/bin/pg_dump"));
        assert_eq!(
            tools.psql,
            Path::new("/usr/lib/postgresql/17/bin/psql").to_path_buf()
        );
        let tools = Tools::beside(Path::new("pg_dump"));
        assert_eq!(tools.pg_dumpall, PathBuf::from("pg_dumpall"));
    }

    #[test]
    fn hints_name_the_fix() {
        let origin = "password_file /config/pg.pass";
        let text = "psql: error: connection to server at \"db\" failed: FATAL:  password authentication failed for user \"backup\"";
        assert!(hint(text, origin).to_string().contains(origin));
        assert_eq!(hint("something else", origin), Hint::default());
        assert_eq!(Hint::default().to_string(), "");
    }

    #[test]
    fn passwords_do_not_print() {
        let password = Password(Zeroizing::new("hunter2".into()));
        assert_eq!(format!("{password:?}"), "[redacted]");
    }
}
