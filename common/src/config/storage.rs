//! Where data goes: `[store]` (local directory or S3), `[bus]` (local or Kafka), `[archiver]`.

use std::path::PathBuf;

use serde::Deserialize;

/// Which object-store backend to use.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A local directory (`store.local_dir`, default `{data_dir}/store`).
    #[default]
    Local,
    /// An S3 bucket (`[store.s3]`).
    S3,
}

/// Object store settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `local` (default) or `s3`.
    pub kind: StoreKind,
    /// Directory of the local store; default `{data_dir}/store`.
    pub local_dir: Option<PathBuf>,
    /// S3 settings (used when `kind = "s3"`).
    pub s3: S3Config,
}

/// Which event bus.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process, durable under `bus.dir` (the embedded default).
    #[default]
    Local,
    /// Kafka at `bus.brokers`.
    Kafka,
}

/// Event bus settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `local` (default) or `kafka`.
    pub kind: BusKind,
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic of call events (`call.ended`).
    pub topic: String,
    /// Directory of the local log and of the Kafka outbox; default `{data_dir}/bus`.
    pub dir: Option<PathBuf>,
    /// How long the local bus keeps records, read or not (a Kafka topic has its own).
    pub retention_hours: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::Local,
            brokers: "127.0.0.1:9092".into(),
            topic: "call-events".into(),
            dir: None,
            retention_hours: 168,
        }
    }
}

/// Archiver settings: assembles recorded calls into one MP4 each.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiverConfig {
    /// Run the archiver inside `tidecast all` (a separate `tidecast archiver` runs it anyway).
    pub enabled: bool,
    /// Consumer group on `bus.topic`.
    pub group: String,
    /// Where chunks are assembled; default `{data_dir}/archiver`.
    pub work_dir: Option<PathBuf>,
    /// Tries per call before its event goes to `{bus.topic}.dlq`.
    pub max_attempts: u32,
    /// First pause between tries, seconds (doubling, at most 60).
    pub retry_secs: u64,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        ArchiverConfig {
            enabled: true,
            group: "archiver".into(),
            work_dir: None,
            max_attempts: 8,
            retry_secs: 2,
            width: 1280,
            height: 720,
        }
    }
}

/// S3 bucket settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL (e.g. `http://127.0.0.1:9000` for MinIO/s3s-fs); empty = AWS for `region`.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Bucket (must exist).
    pub bucket: String,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted servers.
    pub path_style: bool,
    /// Access key id; empty = `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// Secret key; empty = `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: true,
            access_key_id: String::new(),
            secret_access_key: String::new(),
        }
    }
}
