//! Checking a SQL script before `psql` runs it.
//!
//! `psql` executes meta-commands wherever a backslash stands outside a
//! quoted string, identifier or comment, and some of them reach the host
//! (`\!` runs a shell command, `\o |cmd` pipes into one, `\copy … program`,
//! `\i` reads other files). A `globals.sql` comes from the repository, which
//! the service key can write, so it is scanned first: the only
//! meta-commands `pg_dumpall --globals-only` writes are `\connect` and, since
//! the CVE-2025-8714 fixes, `\restrict KEY` / `\unrestrict KEY`. Anything
//! else is refused before `psql` starts.

/// Meta-commands `pg_dumpall` writes, and so the only ones allowed.
const ALLOWED: [&str; 3] = ["connect", "restrict", "unrestrict"];

/// A meta-command the script may not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "line {line} holds the psql meta-command \\{command}, which pg_dumpall never writes \
     (only \\connect, \\restrict and \\unrestrict): the file was altered, refusing to run it"
)]
pub struct ForbiddenMetaCommand {
    /// The 1-based line.
    pub line: usize,
    /// The command's name, without the backslash.
    pub command: String,
}

/// Where the scanner is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Sql,
    /// In `'…'`; `true` when backslashes escape (`E'…'`).
    Quoted(bool),
    /// In `"…"`.
    Identifier,
    LineComment,
    /// In `/* … */`, nested this deep.
    BlockComment(u32),
}

/// Finds the first meta-command of `script` that is not allowed.
///
/// Fails with the line and the command. A backslash anywhere outside
/// quotes, identifiers, dollar-quoted bodies and comments counts, as psql
/// counts it.
pub fn check(script: &[u8]) -> Result<(), ForbiddenMetaCommand> {
    let mut state = State::Sql;
    let mut line = 1;
    let mut at = 0;
    while at < script.len() {
        let byte = script[at];
        let next = script.get(at + 1).copied();
        if byte == b'\n' {
            line += 1;
        }
        match state {
            State::Sql => match byte {
                b'\'' => {
                    let escaped = at > 0
                        && matches!(script[at - 1], b'E' | b'e')
                        && (at < 2 || !is_word(script[at - 2]));
                    state = State::Quoted(escaped);
                }
                b'"' => state = State::Identifier,
                b'-' if next == Some(b'-') => state = State::LineComment,
                b'/' if next == Some(b'*') => {
                    state = State::BlockComment(1);
                    at += 1;
                }
                b'$' => {
                    if let Some(end) = dollar_quote_end(script, at) {
                        line += script[at..end].iter().filter(|&&b| b == b'\n').count();
                        at = end;
                        continue;
                    }
                }
                b'\\' => {
                    let name: String = script[at + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                        .map(|&b| char::from(b))
                        .collect();
                    if !ALLOWED.contains(&name.as_str()) {
                        let command = if name.is_empty() {
                            next.map_or_else(String::new, |b| char::from(b).to_string())
                        } else {
                            name
                        };
                        return Err(ForbiddenMetaCommand { line, command });
                    }
                }
                _ => {}
            },
            State::Quoted(escaped) => match byte {
                b'\\' if escaped => at += 1,
                b'\'' if next == Some(b'\'') => at += 1,
                b'\'' => state = State::Sql,
                _ => {}
            },
            State::Identifier => match byte {
                b'"' if next == Some(b'"') => at += 1,
                b'"' => state = State::Sql,
                _ => {}
            },
            State::LineComment => {
                if byte == b'\n' {
                    state = State::Sql;
                }
            }
            State::BlockComment(depth) => match (byte, next) {
                (b'*', Some(b'/')) => {
                    state = if depth == 1 {
                        State::Sql
                    } else {
                        State::BlockComment(depth - 1)
                    };
                    at += 1;
                }
                (b'/', Some(b'*')) => {
                    state = State::BlockComment(depth + 1);
                    at += 1;
                }
                _ => {}
            },
        }
        at += 1;
    }
    Ok(())
}

fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Where a dollar-quoted string starting at `start` (`$tag$…$tag$`) ends,
/// past its closing tag; `None` when `start` begins no such string (e.g. a
/// `$1` parameter) or it is never closed.
fn dollar_quote_end(script: &[u8], start: usize) -> Option<usize> {
    if start > 0 && is_word(script[start - 1]) {
        return None;
    }
    let tag_len = script[start + 1..]
        .iter()
        .take_while(|&&b| b != b'$')
        .count();
    let tag = script.get(start..start + tag_len + 2)?;
    if tag.last() != Some(&b'$') || tag[1..tag.len() - 1].iter().any(|&b| !is_word(b)) {
        return None;
    }
    if tag.get(1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let body = start + tag.len();
    script[body..]
        .windows(tag.len())
        .position(|window| window == tag)
        .map(|found| body + found + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_pg_dumpall_writes_passes() {
        let script = b"\\restrict AbC123\n--\n-- PostgreSQL database cluster dump\n--\n\
            SET standard_conforming_strings = on;\n\
            CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:a\\b';\n\
            COMMENT ON ROLE app IS E'it''s \\\\ fine \\' still';\n\
            CREATE FUNCTION f() RETURNS text AS $body$ select '\\! no' $body$ LANGUAGE sql;\n\
            /* a /* nested \\! */ comment */\n\
            \\connect template1\n\\unrestrict AbC123\n";
        assert_eq!(check(script), Ok(()));
    }

    #[test]
    fn a_shell_escape_anywhere_outside_quotes_is_refused() {
        for (script, line, command) in [
            (&b"CREATE ROLE a;\n\\! touch /tmp/pwned\n"[..], 2, "!"),
            (b"CREATE ROLE a; \\o |sh\n", 1, "o"),
            (b"SELECT 'quoted' \\gexec\n", 1, "gexec"),
            (b"SELECT \"id\\\" \\copy x to program 'sh'\n", 1, "copy"),
            (
                b"-- comment\n/* c */ SELECT $$ a $$ \\i /etc/passwd\n",
                2,
                "i",
            ),
            (b"SELECT E'\\'' \\! id\n", 1, "!"),
        ] {
            assert_eq!(
                check(script),
                Err(ForbiddenMetaCommand {
                    line,
                    command: command.into()
                }),
                "{}",
                String::from_utf8_lossy(script)
            );
        }
    }
}
