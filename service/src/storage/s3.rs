//! S3-compatible object store (Cloudflare R2, Garage, MinIO, AWS).
//! (Being written: see the S3 helper's task.)

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectStore, StorageError};

/// How to reach an S3-compatible server; every field falls back to the
/// standard AWS environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// Endpoint URL, e.g. `https://<account>.r2.cloudflarestorage.com`.
    pub endpoint: Option<String>,
    /// Region; `auto` (R2's) when unset.
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`.
    #[serde(default)]
    pub path_style: bool,
}

/// A bucket (and key prefix) on an S3-compatible server.
#[derive(Debug)]
pub struct S3Store {
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// Connects to `bucket`, storing objects under `prefix`.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        _options: &S3Options,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
    fn has_conditional_create(&self) -> bool {
        true
    }
    async fn put_new(&self, key: &str, _data: Bytes) -> Result<(), StorageError> {
        Err(StorageError::NotFound {
            store: self.url(),
            key: key.into(),
        })
    }
    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        Err(StorageError::NotFound {
            store: self.url(),
            key: key.into(),
        })
    }
    async fn get_range(&self, key: &str, _range: Range<u64>) -> Result<Bytes, StorageError> {
        Err(StorageError::NotFound {
            store: self.url(),
            key: key.into(),
        })
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _key: &str) -> Result<(), StorageError> {
        Ok(())
    }
}
