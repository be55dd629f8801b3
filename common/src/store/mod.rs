//! Object storage for archives and recordings: a local directory (default) or an S3 bucket
//! (`aws-sdk-s3`; AWS, MinIO, s3s-fs, …).
//!
//! Keys are [`ObjectKey`]s: `/`-separated components of `[A-Za-z0-9._-]`, never `.`/`..`, so a
//! key is never a path escape whatever it was built from.
//!
//! [`ObjectStore`] is the trait both backends implement ([`LocalStore`], [`S3Store`]); roles
//! hold a [`SharedStore`]. Large files go through [`ObjectStore::put_file`] /
//! [`ObjectStore::get_file`], which never hold the whole object in memory (S3 multipart upload
//! above [`MULTIPART_THRESHOLD`]).

mod local;
mod s3;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{StoreConfig, StoreKind};

pub use local::LocalStore;
pub use s3::S3Store;

/// Why an object-store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key has an empty, `.`/`..` or non-`[A-Za-z0-9._-]` component.
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// Local filesystem error.
    #[error("local store {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The S3 service failed, refused or could not be reached.
    #[error("s3 {op} {key}: {message}")]
    S3 {
        /// Operation (`put`, `get`, `list`, …).
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// The SDK's error, with its sources.
        message: String,
        /// Whether trying again can help (unreachable, timeout, 5xx, throttling), or the
        /// request itself is refused (4xx: no such bucket, access denied).
        retryable: bool,
    },
    /// The store configuration is unusable.
    #[error("object store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether the same operation may succeed later (the store is down or overloaded, a disk
    /// is full), as opposed to failing again the same way (a bad key, configuration, a 4xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::InvalidKey(_) | StoreError::Config(_) => false,
            StoreError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::PermissionDenied
            ),
            StoreError::S3 { retryable, .. } => *retryable,
        }
    }
}

/// A validated object key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && c.len() <= 128
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ObjectKey {
    /// Validate `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, StoreError> {
        let key = key.into();
        if key.len() <= 1024 && key.split('/').all(valid_component) {
            Ok(ObjectKey(key))
        } else {
            Err(StoreError::InvalidKey(key))
        }
    }

    /// Join validated components (each must be one component, no `/`).
    pub fn from_parts(parts: &[&str]) -> Result<Self, StoreError> {
        if parts.iter().all(|p| valid_component(p)) {
            Self::new(parts.join("/"))
        } else {
            Err(StoreError::InvalidKey(parts.join("/")))
        }
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`ObjectStore::head`] knows about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
}

/// The future an [`ObjectStore`] operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Objects larger than this go to S3 as a multipart upload, in parts of [`MULTIPART_PART`].
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size of a multipart upload (S3's minimum is 5 MiB).
pub const MULTIPART_PART: usize = 8 * 1024 * 1024;

/// An object store backend: a flat namespace of [`ObjectKey`]s.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Short name for logs and metric labels (`local`, `s3`).
    fn kind(&self) -> &'static str;

    /// Store `data` under `key` (replacing any object there); readers never see half of it.
    fn put<'a>(&'a self, key: &'a ObjectKey, data: Bytes) -> StoreFuture<'a, ()>;

    /// Store the file at `path` under `key`, streamed from disk (multipart for large files).
    fn put_file<'a>(&'a self, key: &'a ObjectKey, path: &'a Path) -> StoreFuture<'a, ()>;

    /// The object under `key`, `None` if there is none.
    fn get<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, Option<Bytes>>;

    /// Stream the object under `key` into the file `path`; `false` if there is none.
    fn get_file<'a>(&'a self, key: &'a ObjectKey, path: &'a Path) -> StoreFuture<'a, bool>;

    /// Size of the object under `key`, `None` if there is none.
    fn head<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, Option<ObjectMeta>>;

    /// Keys that start with `prefix` (a directory-like prefix ending in `/`, or empty), sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// Remove the object under `key`; removing what is not there is not an error.
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, ()>;
}

/// The store a role holds.
pub type SharedStore = Arc<dyn ObjectStore>;

/// Build the configured backend; `data_dir` anchors the default local directory.
pub fn from_config(config: &StoreConfig, data_dir: &Path) -> Result<SharedStore, StoreError> {
    Ok(match config.kind {
        StoreKind::Local => Arc::new(LocalStore::new(
            config
                .local_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("store")),
        )),
        StoreKind::S3 => Arc::new(S3Store::new(config)?),
    })
}

/// MIME type by extension, for objects served or fetched over HTTP.
pub fn content_type(key: &str) -> &'static str {
    match key.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mpd") => "application/dash+xml",
        Some("mp4") | Some("m4s") => "video/mp4",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(ObjectKey::new("vod/s/123/720p/0.m4s").is_ok());
        for bad in [
            "", "/a", "a//b", "a/../b", "..", "a/./b", "a b", "a\\b", "é",
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::from_parts(&["vod", "a/b"]).is_err());
        assert_eq!(
            ObjectKey::from_parts(&["vod", "s", "1"])
                .map(|k| k.to_string())
                .ok(),
            Some("vod/s/1".to_string())
        );
    }

    #[tokio::test]
    async fn local_put_get_list() {
        let dir = std::env::temp_dir().join(format!("tidecast-store-{}", std::process::id()));
        let store = LocalStore::new(dir.clone());
        let k = |s: &str| ObjectKey::new(s).unwrap();
        store
            .put(&k("vod/a/1/x.m4s"), Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put(&k("vod/a/1/y.m4s"), Bytes::from_static(b"two"))
            .await
            .unwrap();
        store
            .put(&k("vod/b/1/z.m4s"), Bytes::from_static(b"three"))
            .await
            .unwrap();
        store
            .put(&k("vod/a/1/x.m4s"), Bytes::from_static(b"uno"))
            .await
            .unwrap();
        assert_eq!(
            store.get(&k("vod/a/1/x.m4s")).await.unwrap().as_deref(),
            Some(&b"uno"[..])
        );
        assert_eq!(store.get(&k("vod/a/1/none")).await.unwrap(), None);
        assert_eq!(
            store.list("vod/a/").await.unwrap(),
            vec!["vod/a/1/x.m4s".to_string(), "vod/a/1/y.m4s".to_string()]
        );
        assert_eq!(store.list("").await.unwrap().len(), 3);
        assert_eq!(
            store.head(&k("vod/b/1/z.m4s")).await.unwrap(),
            Some(ObjectMeta { size: 5 })
        );
        assert_eq!(store.head(&k("vod/b/1/none")).await.unwrap(), None);
        store.delete(&k("vod/b/1/z.m4s")).await.unwrap();
        store.delete(&k("vod/b/1/z.m4s")).await.unwrap();
        assert_eq!(store.list("vod/b/").await.unwrap(), Vec::<String>::new());
        // files in and out without holding them in memory
        let src = dir.join("src.bin");
        std::fs::write(&src, vec![7u8; 100_000]).unwrap();
        store.put_file(&k("rec/a.bin"), &src).await.unwrap();
        let out = dir.join("out.bin");
        assert!(store.get_file(&k("rec/a.bin"), &out).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 100_000]);
        assert!(!store.get_file(&k("rec/none"), &out).await.unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
