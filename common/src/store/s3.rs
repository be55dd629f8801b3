//! [`S3Store`]: an S3 bucket through `aws-sdk-s3` (AWS, MinIO, s3s-fs, …).

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{
    content_type, ObjectKey, ObjectMeta, ObjectStore, StoreError, StoreFuture, MULTIPART_PART,
    MULTIPART_THRESHOLD,
};
use crate::config::StoreConfig;

/// An S3 bucket through `aws-sdk-s3`.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// An SDK failure as a [`StoreError`]; only a 4xx answer (other than timeout and throttling)
/// is not worth retrying.
fn sdk_error<E: std::error::Error + 'static>(
    op: &'static str,
    key: &str,
    e: SdkError<E, HttpResponse>,
) -> StoreError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let retryable = !status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429);
    match message_error(op, key, e) {
        StoreError::S3 {
            op, key, message, ..
        } => StoreError::S3 {
            op,
            key,
            message,
            retryable,
        },
        other => other,
    }
}

/// Any other failure on the way (a body that broke off, a local file): worth retrying.
fn message_error<E: std::error::Error>(op: &'static str, key: &str, e: E) -> StoreError {
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
        retryable: true,
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

    async fn put_small(
        &self,
        full: &str,
        key: &ObjectKey,
        body: ByteStream,
    ) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_type(content_type(key.as_str()))
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_error("put", full, e))?;
        Ok(())
    }

    /// A multipart upload of the file at `path` in [`MULTIPART_PART`] parts, read one at a
    /// time; aborted (no half object, no orphaned parts) if any part fails.
    async fn put_multipart(
        &self,
        full: &str,
        key: &ObjectKey,
        path: &Path,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .content_type(content_type(key.as_str()))
            .send()
            .await
            .map_err(|e| sdk_error("multipart create", full, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(message_error("multipart create", full, NoUploadId));
        };
        let parts = self.upload_parts(full, &upload_id, path).await;
        let done = match parts {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_error("multipart complete", full, e)),
            Err(e) => Err(e),
        };
        if done.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        done
    }

    async fn upload_parts(
        &self,
        full: &str,
        upload_id: &str,
        path: &Path,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        use tokio::io::AsyncReadExt;
        let io = |e| message_error("multipart read", full, e);
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut parts = Vec::new();
        for number in 1..=10_000 {
            let mut buf = Vec::with_capacity(MULTIPART_PART);
            (&mut file)
                .take(MULTIPART_PART as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(io)?;
            if buf.is_empty() && number > 1 {
                break;
            }
            let last = buf.len() < MULTIPART_PART;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| sdk_error("multipart part", full, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
            if last {
                break;
            }
        }
        Ok(parts)
    }

    async fn get_object(
        &self,
        full: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error("get", full, e)),
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
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

#[derive(Debug, thiserror::Error)]
#[error("the service answered without an upload id")]
struct NoUploadId;

impl ObjectStore for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn put<'a>(&'a self, key: &'a ObjectKey, data: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let full = self.full_key(key.as_str());
            self.put_small(&full, key, ByteStream::from(data)).await
        })
    }

    fn put_file<'a>(&'a self, key: &'a ObjectKey, path: &'a Path) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let full = self.full_key(key.as_str());
            let size = tokio::fs::metadata(path)
                .await
                .map_err(|e| message_error("put", &full, e))?
                .len();
            if size > MULTIPART_THRESHOLD {
                return self.put_multipart(&full, key, path).await;
            }
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| message_error("put", &full, e))?;
            self.put_small(&full, key, body).await
        })
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let full = self.full_key(key.as_str());
            let Some(out) = self.get_object(&full).await? else {
                return Ok(None);
            };
            let data = out
                .body
                .collect()
                .await
                .map_err(|e| message_error("get", &full, e))?;
            Ok(Some(data.into_bytes()))
        })
    }

    fn get_file<'a>(&'a self, key: &'a ObjectKey, path: &'a Path) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let full = self.full_key(key.as_str());
            let Some(mut out) = self.get_object(&full).await? else {
                return Ok(false);
            };
            let io = |e| message_error("get", &full, e);
            let mut file = tokio::fs::File::create(path).await.map_err(io)?;
            while let Some(chunk) = out
                .body
                .try_next()
                .await
                .map_err(|e| message_error("get", &full, e))?
            {
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.flush().await.map_err(io)?;
            Ok(true)
        })
    }

    fn head<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, Option<ObjectMeta>> {
        Box::pin(async move {
            let full = self.full_key(key.as_str());
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(out) => Ok(Some(ObjectMeta {
                    size: out.content_length().unwrap_or(0).max(0) as u64,
                })),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(sdk_error("head", &full, e)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(self.list_keys(prefix))
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let full = self.full_key(key.as_str());
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| sdk_error("delete", &full, e))?;
            Ok(())
        })
    }
}
