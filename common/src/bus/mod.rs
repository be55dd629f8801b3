//! The event bus: how the rooms tell the archiver that a call ended. [`EventBus`] is the trait;
//! [`LocalBus`] is the embedded default (in-process, a durable log on local disk kept for
//! `bus.retention_hours`, consumer-group offsets in files), [`KafkaBus`] publishes to and consumes from Kafka (`rdkafka`).
//!
//! Publishing never waits for a broker: [`EventBus::publish`] returns once the event is on local
//! disk (the local log, or the Kafka bus's outbox, which a task forwards in order and retries
//! while Kafka is down). Consumers get events at least once: an event is delivered again after
//! a restart until its consumer group commits it.

mod kafka;
mod local;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{BusConfig, BusKind};
use crate::metrics::Registry;

pub use kafka::KafkaBus;
pub use local::LocalBus;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A topic or group name outside `[A-Za-z0-9._-]{1,200}`.
    #[error("invalid topic or group name {0:?}")]
    InvalidName(String),
    /// The local log or outbox could not be read or written.
    #[error("event bus {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Kafka failed or could not be reached.
    #[error("kafka {op}: {message}")]
    Kafka {
        /// What was being done.
        op: &'static str,
        /// librdkafka's error.
        message: String,
        /// Whether trying again can help (a broker down or busy), or not (bad configuration).
        retryable: bool,
    },
}

impl BusError {
    /// Whether the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            BusError::InvalidName(_) => false,
            BusError::Io { .. } => true,
            BusError::Kafka { retryable, .. } => *retryable,
        }
    }
}

/// One event: a topic, a key (events with the same key stay in order) and a payload (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Topic.
    pub topic: String,
    /// Key (a meeting id).
    pub key: String,
    /// Payload.
    pub payload: Bytes,
}

/// An event handed to a consumer, with where it is in its log (for [`EventConsumer::commit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// Partition (0 on the local bus).
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// The future a bus operation returns.
pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BusError>> + Send + 'a>>;

/// Publish events and consume them in consumer groups.
pub trait EventBus: Send + Sync + std::fmt::Debug {
    /// Short name for logs and metric labels (`local`, `kafka`).
    fn kind(&self) -> &'static str;

    /// Accept `event`: on local disk when this returns, delivered in order afterwards.
    fn publish(&self, event: Event) -> Result<(), BusError>;

    /// Events accepted and not yet handed to the broker (the outbox; 0 on the local bus).
    fn pending(&self) -> usize;

    /// Consume `topic` as a member of `group`, from the group's last commit.
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BusFuture<'a, Box<dyn EventConsumer>>;
}

/// One consumer of one topic in one group.
pub trait EventConsumer: Send {
    /// The next event (waits for one).
    fn next(&mut self) -> BusFuture<'_, Delivery>;

    /// Done with `delivery` and everything before it in its partition: the group will not
    /// get them again.
    fn commit<'a>(&'a mut self, delivery: &'a Delivery) -> BusFuture<'a, ()>;

    /// Events in the topic after the group's last commit (its consumer lag).
    fn lag(&mut self) -> BusFuture<'_, u64>;
}

/// The bus a role holds.
pub type SharedBus = Arc<dyn EventBus>;

/// Build the configured bus (starts its tasks: needs a tokio runtime); `data_dir` anchors the
/// default directory of the local log and the outbox.
pub fn from_config(
    config: &BusConfig,
    data_dir: &Path,
    registry: &Registry,
) -> Result<SharedBus, BusError> {
    let dir = config.dir.clone().unwrap_or_else(|| data_dir.join("bus"));
    Ok(match config.kind {
        BusKind::Local => Arc::new(LocalBus::open(dir).with_retention(
            std::time::Duration::from_secs(config.retention_hours.saturating_mul(3600)),
        )),
        BusKind::Kafka => Arc::new(KafkaBus::start(&config.brokers, dir, registry)?),
    })
}

/// Kafka's topic name rule, kept for the local bus too (names become file names there).
pub(crate) fn check_name(name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidName(name.to_string()))
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BusError {
    let path = path.to_path_buf();
    move |source| BusError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafkas_rule() {
        for good in ["call-events", "call-events.dlq", "archiver_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "../x", &"x".repeat(201)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
