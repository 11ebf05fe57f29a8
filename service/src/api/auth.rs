//! The API's bearer token: read from `token_file` (made with a random token
//! on first start), compared in constant time, never logged or printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{AppError, AppState};

/// Tokens shorter than this are refused as guessable.
const MIN_LENGTH: usize = 16;

/// The token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read or created.
    #[error("API token file {path}: {source}; fix token_file in [service] or its permissions")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// It holds too short a token.
    #[error(
        "API token file {path} holds fewer than {MIN_LENGTH} characters; put a long random token \
         in it (e.g. `openssl rand -hex 32 > {path}`) or delete it to have one made"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
    },
}

/// The secret that mutating API requests must bear.
pub struct ApiToken(Zeroizing<String>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken([redacted])")
    }
}

impl ApiToken {
    /// A token from its text (surrounding whitespace is not part of it).
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.trim().to_owned()))
    }

    /// Reads the token in `path`, or creates the file (mode 0600) with a
    /// random 256-bit token when it does not exist.
    ///
    /// Fails when the file cannot be read or created, or holds a short token.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = Self(Zeroizing::new(text.trim().to_owned()));
                if token.0.chars().count() < MIN_LENGTH {
                    return Err(TokenError::TooShort {
                        path: path.to_owned(),
                    });
                }
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut bytes = Zeroizing::new([0u8; 32]);
                rand::thread_rng().fill_bytes(bytes.as_mut());
                let token = Zeroizing::new(hex::encode(&bytes[..]));
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                file.write_all(format!("{}\n", token.as_str()).as_bytes())
                    .map_err(io)?;
                tracing::info!(
                    "created the API token file {}; send its content as `Authorization: Bearer …` to trigger runs",
                    path.display()
                );
                Ok(Self(Zeroizing::new(token.to_string())))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Whether `offered` is the token, in time independent of where they
    /// differ (both are hashed first, so not even the length leaks).
    pub fn matches(&self, offered: &str) -> bool {
        let ours = Sha256::digest(self.0.as_bytes());
        let theirs = Sha256::digest(offered.as_bytes());
        ours.ct_eq(&theirs).into()
    }
}

/// Proof that a request bore the API token; a handler taking it refuses
/// other requests with 401.
#[derive(Debug, Clone, Copy)]
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        authorize(&parts.headers, state)
    }
}

/// Checks the request's bearer token.
fn authorize(headers: &HeaderMap, state: &AppState) -> Result<Authorized, AppError> {
    let offered = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(AppError::Unauthorized)?;
    if state.token.matches(offered) {
        Ok(Authorized)
    } else {
        tracing::warn!("refused a request with a wrong API token");
        Err(AppError::Unauthorized)
    }
}

/// Whether a request may see run errors: always on loopback, else with
/// the token.
pub fn may_read_details(headers: &HeaderMap, state: &AppState) -> bool {
    !state.reads_need_token() || authorize(headers, state).is_ok()
}

/// Middleware of the `/api/v1` routes: refuses requests without the token
/// when reads need it.
pub async fn require_token_for_reads(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    if state.reads_need_token() {
        authorize(request.headers(), &state)?;
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_made_once_and_compared_exactly() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state/api-token");
        let made = ApiToken::load_or_create(&path)?;
        let read = ApiToken::load_or_create(&path)?;
        let text = std::fs::read_to_string(&path)?;
        assert!(made.matches(text.trim()) && read.matches(text.trim()));
        assert!(!read.matches(&text.trim()[1..]));
        assert!(!read.matches(""));
        assert_eq!(format!("{read:?}"), "ApiToken([redacted])");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "short\n")?;
        assert!(matches!(
            ApiToken::load_or_create(&path),
            Err(TokenError::TooShort { .. })
        ));
        Ok(())
    }
}
