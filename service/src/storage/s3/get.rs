//! Reading objects: one `GetObject` per read, its body either collected
//! (fetched again when it is cut off) or read as it arrives.

use std::ops::Range;
use std::time::Instant;

use aws_sdk_s3::operation::get_object::GetObjectOutput;
use bytes::Bytes;

use super::body::BodyReader;
use super::{Attempts, S3Store, error_chain, is_missing_object};
use crate::storage::limits::{MAX_ATTEMPTS, attempt_time, backoff, operation_time};
use crate::storage::{ObjectReader, StorageError};

impl S3Store {
    /// Sends one `GetObject`, of the whole object or of `range`, and waits
    /// for its answer's head; the SDK retries the request until then.
    async fn get_object(
        &self,
        key: &str,
        range: Option<&Range<u64>>,
    ) -> Result<GetObjectOutput, StorageError> {
        let attempts = Attempts::default();
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_range(range.map(|r| format!("bytes={}-{}", r.start, r.end - 1)))
            .customize()
            .interceptor(attempts.clone());
        match request.send().await {
            Ok(output) => Ok(output),
            Err(err) if is_missing_object(&err) => Err(self.not_found(key)),
            Err(err) => Err(self.remote("GetObject", key, &attempts, &err)),
        }
    }

    /// One GET, of the whole object or of `range`. The SDK retries a
    /// request until its answer begins; a body cut off, stalled or slower
    /// than [`crate::storage::limits::MIN_THROUGHPUT`] after that is fetched again
    /// here, up to [`MAX_ATTEMPTS`] times in all, within the limit of a
    /// whole request of its size.
    pub(super) async fn fetch(
        &self,
        key: &str,
        range: Option<&Range<u64>>,
    ) -> Result<Bytes, StorageError> {
        let operation = "GetObject";
        let started = Instant::now();
        let wanted = range.map(|r| r.end - r.start);
        let mut fetches = 1;
        let data = loop {
            let output = self.get_object(key, range).await?;
            let length = body_length(&output);
            if let Some(wanted) = wanted.filter(|&w| w != length) {
                return Err(self.failure(operation, key, wrong_length(range, wanted, length)));
            }
            let limit = attempt_time(length);
            let cause = match tokio::time::timeout(limit, output.body.collect()).await {
                Ok(Ok(data)) => break data.into_bytes(),
                Ok(Err(e)) => error_chain(&e),
                Err(_) => format!(
                    "the {length}-byte body did not arrive within {}s",
                    limit.as_secs()
                ),
            };
            let budget = operation_time(length);
            if fetches >= MAX_ATTEMPTS || started.elapsed() >= budget {
                let message = format!(
                    "reading the body failed {fetches} times in {}s, last: {cause}; \
                     is the network up and the server well?",
                    started.elapsed().as_secs()
                );
                return Err(self.failure(operation, key, message));
            }
            tracing::debug!(key, fetches, %cause, "S3 body cut off; fetching again");
            tokio::time::sleep(backoff(fetches)).await;
            fetches += 1;
        };
        if let Some(wanted) = wanted.filter(|&w| w != data.len() as u64) {
            return Err(self.failure(
                operation,
                key,
                wrong_length(range, wanted, data.len() as u64),
            ));
        }
        Ok(data)
    }

    /// One `GetObject` whose body is read as it arrives, within the time its
    /// size allows. A body cut off midway fails a read: the caller fetches
    /// what it still needs again (a restore reads those blobs with ranged
    /// GETs).
    pub(super) async fn open_body(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let output = self.get_object(key, None).await?;
        let deadline = tokio::time::Instant::now() + attempt_time(body_length(&output));
        Ok(Box::new(BodyReader::new(output.body, deadline)))
    }
}

/// The body length an answer announces (0 when it announces none).
fn body_length(output: &GetObjectOutput) -> u64 {
    output
        .content_length()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// Why a ranged GET's answer of `got` bytes is refused.
fn wrong_length(range: Option<&Range<u64>>, wanted: u64, got: u64) -> String {
    let (start, end) = range.map_or((0, wanted), |r| (r.start, r.end));
    format!(
        "asked for bytes {start}..{end} and got {got} bytes: is the range past the end, \
         or does the server ignore Range headers?"
    )
}
