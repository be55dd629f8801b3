//! Object storage for archives and recordings: a local directory (default) or an S3 bucket
//! (`aws-sdk-s3`; AWS, MinIO, s3s-fs, …).
//!
//! Keys are [`ObjectKey`]s: `/`-separated components of `[A-Za-z0-9._-]`, never `.`/`..`, so a
//! key is never a path escape whatever it was built from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::config::{StoreConfig, StoreKind};

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
    /// The S3 service failed or could not be reached (worth retrying).
    #[error("s3 {op} {key}: {message}")]
    S3 {
        /// Operation (`put`, `get`, `list`).
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// The SDK's error, with its sources.
        message: String,
    },
    /// The store configuration is unusable.
    #[error("object store configuration: {0}")]
    Config(String),
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

/// An object store backend.
#[derive(Debug, Clone)]
pub enum ObjectStore {
    /// Files under a directory.
    Local(LocalStore),
    /// An S3 bucket.
    S3(S3Store),
}

impl ObjectStore {
    /// Build the configured backend; `data_dir` anchors the default local directory.
    pub fn from_config(config: &StoreConfig, data_dir: &Path) -> Result<Self, StoreError> {
        match config.kind {
            StoreKind::Local => Ok(ObjectStore::Local(LocalStore::new(
                config
                    .local_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("store")),
            ))),
            StoreKind::S3 => S3Store::new(config).map(ObjectStore::S3),
        }
    }

    /// Store `data` under `key` (replacing any object there).
    pub async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(s) => s.put(key, data).await,
            ObjectStore::S3(s) => s.put(key, data).await,
        }
    }

    /// The object under `key`, `None` if there is none.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>, StoreError> {
        match self {
            ObjectStore::Local(s) => s.get(key).await,
            ObjectStore::S3(s) => s.get(key).await,
        }
    }

    /// Keys that start with `prefix` (a directory-like prefix ending in `/`, or empty), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            ObjectStore::Local(s) => s.list(prefix).await,
            ObjectStore::S3(s) => s.list(prefix).await,
        }
    }

    /// Short name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectStore::Local(_) => "local",
            ObjectStore::S3(_) => "s3",
        }
    }
}

/// Objects as files under a root directory (`{root}/{key}`), written atomically.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        // ObjectKey components are validated: no `..`, no absolute paths
        key.as_str()
            .split('/')
            .fold(self.root.clone(), |p, c| p.join(c))
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        tokio::fs::write(&tmp, &data).await.map_err(io(&tmp))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let walk = move || -> Result<Vec<String>, StoreError> {
            let mut out = Vec::new();
            let mut stack = vec![(root.clone(), String::new())];
            while let Some((dir, rel)) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(StoreError::Io { path: dir, source }),
                };
                for entry in entries.flatten() {
                    let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    let key = if rel.is_empty() {
                        name.clone()
                    } else {
                        format!("{rel}/{name}")
                    };
                    let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    if is_dir {
                        if prefix.starts_with(&format!("{key}/")) || key.starts_with(&prefix) {
                            stack.push((entry.path(), key));
                        }
                    } else if key.starts_with(&prefix) && !name.contains(".tmp") {
                        out.push(key);
                    }
                }
            }
            out.sort();
            Ok(out)
        };
        tokio::task::spawn_blocking(walk)
            .await
            .map_err(|e| StoreError::Config(format!("list task: {e}")))?
    }
}

/// An S3 bucket through `aws-sdk-s3`.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

fn sdk_error<E: std::error::Error>(op: &'static str, key: &str, e: E) -> StoreError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    StoreError::S3 {
        op,
        key: key.to_string(),
        message,
    }
}

impl S3Store {
    /// A client for the configured bucket. Credentials: `store.s3.access_key_id` /
    /// `secret_access_key`, else the `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` env vars.
    pub fn new(config: &StoreConfig) -> Result<Self, StoreError> {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let s3 = &config.s3;
        if s3.bucket.is_empty() {
            return Err(StoreError::Config("store.s3.bucket is empty".into()));
        }
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let access = if s3.access_key_id.is_empty() {
            env("AWS_ACCESS_KEY_ID")
        } else {
            s3.access_key_id.clone()
        };
        let secret = if s3.secret_access_key.is_empty() {
            env("AWS_SECRET_ACCESS_KEY")
        } else {
            s3.secret_access_key.clone()
        };
        if access.is_empty() || secret.is_empty() {
            return Err(StoreError::Config(
                "S3 credentials missing: set store.s3.access_key_id/secret_access_key or \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                    .into(),
            ));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(20))
            .build();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(s3.region.clone()))
            .credentials_provider(Credentials::new(
                access,
                secret,
                None,
                None,
                "tidecast-config",
            ))
            .force_path_style(s3.path_style)
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2));
        if !s3.endpoint.is_empty() {
            builder = builder.endpoint_url(s3.endpoint.clone());
        }
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.trim_matches('/').to_string(),
        })
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key.as_str());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_type(content_type(key.as_str()))
            .body(aws_sdk_s3::primitives::ByteStream::from(data))
            .send()
            .await
            .map_err(|e| sdk_error("put", &full, e))?;
        Ok(())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>, StoreError> {
        let full = self.full_key(key.as_str());
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await;
        match resp {
            Ok(out) => {
                let data = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| sdk_error("get", &full, e))?;
                Ok(Some(data.into_bytes()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error("get", &full, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.full_key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_error("list", &full, e))?;
            for obj in resp.contents() {
                if let Some(k) = obj.key().and_then(|k| k.get(strip..)) {
                    out.push(k.to_string());
                }
            }
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }
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
        let store = ObjectStore::Local(LocalStore::new(dir.clone()));
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
        let _ = std::fs::remove_dir_all(dir);
    }
}
