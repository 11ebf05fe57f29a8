//! S3-compatible object store: Cloudflare R2 in production, and Garage, MinIO
//! or AWS S3 where they serve.
//!
//! One SDK client per store; it is cheap to clone and safe to share between
//! tasks, so callers bound upload parallelism themselves. The client is tuned
//! for S3-compatible servers rather than AWS alone:
//!
//! - checksums are computed and validated only where an operation requires
//!   them: the SDK's default CRC trailers have broken R2 and other servers;
//! - the SDK's standard retry mode retries throttling (429, `SlowDown`), 5xx
//!   answers, dropped connections (also after the request was sent) and
//!   timeouts with exponential backoff and jitter, up to [`MAX_ATTEMPTS`]
//!   attempts. Its client-side retry quota is off: it is shared by the whole
//!   process, and once a lossy uplink drained it every later request failed
//!   at its first error; each request is bounded by count and time instead;
//! - each request's timeouts scale with the bytes it moves
//!   ([`super::limits`]); the SDK's stalled-stream protection fails a body
//!   that stops moving for 20 s, and a GET body gets the same size-scaled
//!   limit as a request, so a trickle cannot hold it forever either. A body
//!   cut off, stalled or too slow after its headers arrived is fetched
//!   again here, with jittered backoff, since the SDK retries only until the
//!   headers;
//! - a failure that ends the retries names the request, the key, the
//!   attempts made and the last cause;
//! - a create is one `PutObject` with `If-None-Match: *`, which R2 and AWS
//!   refuse atomically when the object exists (some servers, e.g. Garage,
//!   ignore the header and overwrite).
//!
//! Credentials come from the standard AWS chain (`AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and the shared files, …); endpoint
//! and region from [`S3Options`], then the environment.

mod body;
mod get;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::{BeforeTransmitInterceptorContextRef, InterceptorContext};
use aws_sdk_s3::config::retry::{
    ClassifyRetry, RetryAction, RetryConfig, RetryPartition, TokenBucket,
};
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    ConfigBag, Intercept, ProvideCredentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use bytes::Bytes;

use super::limits::{
    CONNECT_TIMEOUT, INITIAL_BACKOFF, MAX_ATTEMPTS, MAX_BACKOFF, attempt_time, operation_time,
};
use super::{ObjectInfo, ObjectReader, ObjectStore, Staged, StorageError, Swept};

/// Region when neither the options nor the environment name one (R2's).
const DEFAULT_REGION: &str = "auto";
/// How to give credentials.
/// The environment variables that reach a store: what a process lifeboat
/// starts elsewhere (a mover, a restore Job) must be given to open the
/// same repository.
pub const CREDENTIAL_VARIABLES: [&str; 6] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
];

const CREDENTIALS_SET: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE";
/// The fix for every authentication or authorization failure.
const CREDENTIALS_FIX: &str =
    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the token's bucket scope";

/// How to reach an S3-compatible server; every field falls back to the
/// standard AWS environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// Endpoint URL, e.g. `https://<account>.r2.cloudflarestorage.com`;
    /// else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Region; else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `auto` (R2's).
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`.
    #[serde(default)]
    pub path_style: bool,
}

/// A bucket (and key prefix) on an S3-compatible server.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or the prefix with one trailing slash.
    prefix: String,
    /// The endpoint as configured, for messages; `None` means AWS.
    endpoint: Option<String>,
}

impl S3Store {
    /// Connects to `bucket`, storing objects under `prefix` (`""` or `a/b`).
    ///
    /// Nothing is sent to the server yet. Fails with [`StorageError::Remote`]
    /// when no credentials can be found, or when the region is `auto` but no
    /// endpoint is given.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
    ) -> Result<Self, StorageError> {
        let prefix = normalize_prefix(prefix);
        let url = store_url(bucket, &prefix);
        let connect_failure = |message: String| StorageError::Remote {
            store: url.clone(),
            operation: "connect",
            key: String::new(),
            message,
        };
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .map(with_scheme);
        let region = options
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        if endpoint.is_none() && region == DEFAULT_REGION {
            return Err(connect_failure(
                "no endpoint: set AWS_ENDPOINT_URL_S3 or the endpoint option \
                 (R2: https://<account_id>.r2.cloudflarestorage.com)"
                    .into(),
            ));
        }

        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(INITIAL_BACKOFF)
                    .with_max_backoff(MAX_BACKOFF),
            )
            .timeout_config(timeouts(0))
            .load()
            .await;
        // Look the credentials up now, so that a missing one is reported
        // here, once, rather than as the failure of some later request.
        let Some(credentials) = shared.credentials_provider() else {
            return Err(connect_failure(format!(
                "no credentials provider; {CREDENTIALS_SET}"
            )));
        };
        if let Err(e) = credentials.provide_credentials().await {
            return Err(connect_failure(format!(
                "no usable credentials ({}); {CREDENTIALS_SET}",
                error_chain(&e)
            )));
        }
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_classifier(TooManyRequests)
            .retry_partition(
                RetryPartition::custom("lifeboat")
                    .token_bucket(TokenBucket::unlimited())
                    .build(),
            );
        if let Some(endpoint) = &endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_owned(),
            prefix,
            endpoint,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn failure(&self, operation: &'static str, key: &str, message: String) -> StorageError {
        StorageError::Remote {
            store: self.url(),
            operation,
            key: key.to_owned(),
            message,
        }
    }

    /// Maps an SDK error that means neither "absent" nor "exists", after
    /// `attempts` attempts, to [`StorageError::Remote`], naming the fix where
    /// one is known.
    fn remote<E>(
        &self,
        operation: &'static str,
        key: &str,
        attempts: &Attempts,
        err: &SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (status, code) = status_and_code(err);
        let endpoint = self.endpoint.as_deref().unwrap_or("AWS S3");
        let fix = match (err, status, code) {
            (_, _, Some("NoSuchBucket")) => format!(
                "bucket {} does not exist at {endpoint}: create it, or check the bucket name",
                self.bucket
            ),
            (_, Some(401 | 403), _)
            | (_, _, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied")) => {
                CREDENTIALS_FIX.to_owned()
            }
            (_, _, Some("AuthorizationHeaderMalformed")) => {
                "check the region (AWS_REGION or the region option; R2 wants `auto`)".to_owned()
            }
            (_, Some(501), _) => "the server does not implement this request".to_owned(),
            (_, Some(429 | 500 | 502..=504), _) => {
                "the server kept failing; try again later".to_owned()
            }
            (SdkError::TimeoutError(_), ..) => {
                format!(
                    "no answer from {endpoint} in time: is the endpoint right and the network up?"
                )
            }
            (SdkError::DispatchFailure(failure), ..) if failure.is_timeout() || failure.is_io() => {
                format!(
                    "could not reach {endpoint}: is the endpoint right \
                     (endpoint option, AWS_ENDPOINT_URL_S3), the server up and the network too?"
                )
            }
            _ => String::new(),
        };
        // A server's answer says enough in its status, code and message; the
        // SDK's full context is for failures without one.
        let details = match err.as_service_error() {
            Some(service) => format!(
                "HTTP {} {}: {}",
                status.unwrap_or_default(),
                service.code().unwrap_or("(no error code)"),
                service.message().unwrap_or("(no message)")
            ),
            None => error_chain(err),
        };
        let tried = match attempts.made() {
            0 | 1 => String::new(),
            made => format!("gave up after {made} attempts, last: "),
        };
        let message = if fix.is_empty() {
            format!("{tried}{details}")
        } else {
            format!("{tried}{details}; {fix}")
        };
        self.failure(operation, key, message)
    }

    fn not_found(&self, key: &str) -> StorageError {
        StorageError::NotFound {
            store: self.url(),
            key: key.to_owned(),
        }
    }

    /// One `PutObject` of `body` (`len` bytes) with `If-None-Match: *`.
    async fn put_body(&self, key: &str, body: ByteStream, len: u64) -> Result<(), StorageError> {
        let attempts = Attempts::default();
        let sized = aws_sdk_s3::config::Builder::default().timeout_config(timeouts(len));
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .if_none_match("*")
            .body(body)
            .customize()
            .config_override(sized)
            .interceptor(attempts.clone())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match status_and_code(&err) {
                (Some(412), _)
                | (_, Some("PreconditionFailed"))
                | (Some(409), Some("ConditionalRequestConflict")) => {
                    Err(StorageError::AlreadyExists {
                        store: self.url(),
                        key: key.to_owned(),
                    })
                }
                _ => Err(self.remote("PutObject", key, &attempts, &err)),
            },
        }
    }
}

/// A file without a name in `dir` to stage an upload in.
///
/// Fails, naming `TMPDIR` as the fix, when `dir` cannot hold one.
fn stage_in(dir: &std::path::Path) -> Result<Staged, StorageError> {
    Staged::anonymous_in(dir).map_err(|source| StorageError::Io {
        action: "staging an upload (TMPDIR must name a writable folder) in",
        path: dir.to_owned(),
        source,
    })
}

/// The timeouts of a request that moves `bytes` bytes.
fn timeouts(bytes: u64) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(attempt_time(bytes))
        .operation_timeout(operation_time(bytes))
        .build()
}

/// Counts the attempts the SDK makes at one request, for the message of a
/// request that gives up.
#[derive(Debug, Clone, Default)]
struct Attempts(Arc<AtomicU32>);

impl Attempts {
    fn made(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for Attempts {
    fn name(&self) -> &'static str {
        "lifeboat attempt counter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// An error and its sources, `: `-separated: the first half of the SDK's
/// `DisplayErrorContext`, without its `Debug` dump.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The HTTP status and the S3 error code of a failed request, where it got an answer.
fn status_and_code<E: ProvideErrorMetadata>(
    err: &SdkError<E, HttpResponse>,
) -> (Option<u16>, Option<&str>) {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.as_service_error().and_then(ProvideErrorMetadata::code);
    (status, code)
}

/// Whether a GET failed because the object (not the bucket) is absent.
fn is_missing_object<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match status_and_code(err) {
        (_, Some("NoSuchKey")) => true,
        (Some(404), code) => code != Some("NoSuchBucket"),
        _ => false,
    }
}

/// `""` for no prefix, else the prefix without leading and with one trailing slash.
fn normalize_prefix(prefix: &str) -> String {
    match prefix.trim_matches('/') {
        "" => String::new(),
        prefix => format!("{prefix}/"),
    }
}

/// The store as a URL: `s3://bucket/prefix`.
fn store_url(bucket: &str, prefix: &str) -> String {
    format!("s3://{bucket}/{}", prefix.trim_end_matches('/'))
}

/// An endpoint as the SDK wants it: with a scheme, `https` unless given.
fn with_scheme(endpoint: String) -> String {
    if endpoint.contains("://") {
        endpoint
    } else {
        format!("https://{endpoint}")
    }
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Retries any HTTP 429 as throttling, whatever its body says: the standard
/// classifiers know 429 only by S3 error codes such as `SlowDown`.
#[derive(Debug)]
struct TooManyRequests;

impl ClassifyRetry for TooManyRequests {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.response() {
            Some(response) if response.status().as_u16() == 429 => RetryAction::throttling_error(),
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "HTTP 429 Too Many Requests"
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn url(&self) -> String {
        store_url(&self.bucket, &self.prefix)
    }

    fn has_conditional_create(&self) -> bool {
        true
    }

    /// Creates `key` with one `PutObject` carrying `If-None-Match: *`.
    ///
    /// A create whose first attempt landed but whose answer was lost is
    /// retried and then reported as [`StorageError::AlreadyExists`]; objects
    /// are named by their content or uniquely, so the caller may treat that
    /// as done.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let len = data.len() as u64;
        self.put_body(key, data.into(), len).await
    }

    fn stage(&self) -> Result<Staged, StorageError> {
        stage_in(&std::env::temp_dir())
    }

    /// Creates `key` as [`ObjectStore::put_new`] does, streaming the body
    /// from the staged file (again on each retry).
    async fn put_staged(&self, key: &str, staged: Staged) -> Result<(), StorageError> {
        let read_failed = |source| StorageError::Io {
            action: "reading the upload staged in TMPDIR through",
            path: staged.path().to_owned(),
            source,
        };
        let len = staged.size().map_err(read_failed)?;
        let body = ByteStream::read_from()
            .path(staged.path())
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| read_failed(std::io::Error::other(e)))?;
        self.put_body(key, body, len).await
    }

    async fn size(&self, key: &str) -> Result<u64, StorageError> {
        let attempts = Attempts::default();
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .customize()
            .interceptor(attempts.clone())
            .send()
            .await;
        match result {
            Ok(head) => head
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    self.failure("HeadObject", key, "the answer has no Content-Length".into())
                }),
            Err(err) if is_missing_object(&err) => Err(self.not_found(key)),
            Err(err) => Err(self.remote("HeadObject", key, &attempts, &err)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.fetch(key, None).await
    }

    /// One `GetObject`, retried by the SDK until its answer begins; the body
    /// is then read as it arrives, within the time its size allows. A body
    /// cut off midway fails a read: the caller fetches what it still needs
    /// again (a restore reads those blobs with ranged GETs).
    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StorageError> {
        self.open_body(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.fetch(key, Some(&range)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut continuation = None;
        loop {
            let attempts = Attempts::default();
            let sent = continuation.take();
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full_key(prefix))
                .set_continuation_token(sent.clone())
                .customize()
                .interceptor(attempts.clone())
                .send()
                .await
                .map_err(|err| self.remote("ListObjectsV2", prefix, &attempts, &err))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                });
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => {
                    if sent.as_deref() == Some(token) {
                        let message = "the server sent the same continuation token twice".into();
                        return Err(self.failure("ListObjectsV2", prefix, message));
                    }
                    continuation = Some(token.to_owned());
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let attempts = Attempts::default();
        let result = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .customize()
            .interceptor(attempts.clone())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if is_missing_object(&err) => Ok(()),
            Err(err) => Err(self.remote("DeleteObject", key, &attempts, &err)),
        }
    }

    async fn sweep_leftovers(&self, _older_than: Duration) -> Result<Swept, StorageError> {
        Ok(Swept::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_folder_that_cannot_hold_a_file_names_tmpdir() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("gone");
        let message = stage_in(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("TMPDIR must name a writable folder") && message.contains("gone"),
            "{message}"
        );
        let staged = stage_in(dir.path())?;
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            0,
            "{staged:?} has a name"
        );
        Ok(())
    }

    #[test]
    fn prefixes_and_endpoints_are_normalised() {
        for (given, prefix, url) in [
            ("", "", "s3://b/"),
            ("/", "", "s3://b/"),
            ("a/b", "a/b/", "s3://b/a/b"),
            ("/a/b/", "a/b/", "s3://b/a/b"),
        ] {
            assert_eq!(normalize_prefix(given), prefix);
            assert_eq!(store_url("b", prefix), url);
        }
        assert_eq!(
            with_scheme("x.r2.cloudflarestorage.com".into()),
            "https://x.r2.cloudflarestorage.com"
        );
        assert_eq!(
            with_scheme("http://127.0.0.1:9000".into()),
            "http://127.0.0.1:9000"
        );
    }
}
