//! [`KafkaBus`]: events to and from Kafka through `rdkafka`. Published events go to an outbox on
//! local disk first ([`DiskQueue`] in `{dir}/outbox/`); one task forwards them in order and
//! removes each once Kafka has acknowledged it, retrying while Kafka is down, so an event
//! published during an outage (or before a restart) is delivered when Kafka is back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{check_name, io_error, BusError, BusFuture, Delivery, Event, EventBus, EventConsumer};
use crate::metrics::{Metric, Registry};
use crate::spool::DiskQueue;

/// How long one send may wait for Kafka's acknowledgement before it is retried.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between forwarding attempts while Kafka is unreachable.
const RETRY: Duration = Duration::from_secs(1);

/// Kafka through an outbox. The forwarding task ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct KafkaBus {
    shared: Arc<Shared>,
    _forwarder: Arc<AbortOnDrop>,
}

/// Stops the forwarding task (at its current await: no send is retried after this).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Shared {
    brokers: String,
    outbox: Mutex<DiskQueue>,
    outbox_dir: PathBuf,
    queued: Notify,
    pending: AtomicUsize,
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, DiskQueue> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn kafka_error(op: &'static str, e: KafkaError) -> BusError {
    let retryable = !matches!(
        e,
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
    );
    BusError::Kafka {
        op,
        message: e.to_string(),
        retryable,
    }
}

/// A blocking librdkafka call (a broker round trip), run off the async threads.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::Kafka {
            op,
            message: e.to_string(),
            retryable: true,
        })?
        .map_err(|e| kafka_error(op, e))
}

/// Client settings every tidecast Kafka client uses.
fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("socket.connection.setup.timeout.ms", "3000")
        .set("reconnect.backoff.max.ms", "2000");
    c
}

/// Create `topic` (one partition) if the cluster does not have it; an existing one is fine.
async fn ensure_topic(brokers: &str, topic: &str) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| kafka_error("admin client", e))?;
    let options = AdminOptions::new().operation_timeout(Some(SEND_TIMEOUT));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .map_err(|e| kafka_error("create topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(BusError::Kafka {
                    op: "create topic",
                    message: format!("{t}: {code}"),
                    retryable: true,
                })
            }
        }
    }
    Ok(())
}

struct BusMetrics {
    published: Metric,
    failures: Metric,
    outbox: Metric,
}

impl KafkaBus {
    /// Connect to `brokers` (`host:port,…`) and start forwarding the outbox in `dir`.
    pub fn start(brokers: &str, dir: PathBuf, registry: &Registry) -> Result<KafkaBus, BusError> {
        let producer: FutureProducer = client_config(brokers)
            .set("message.timeout.ms", "10000")
            .set("acks", "all")
            .create()
            .map_err(|e| kafka_error("producer", e))?;
        let outbox_dir = dir.join("outbox");
        let outbox = DiskQueue::open(outbox_dir.clone());
        let labels = [("bus", "kafka")];
        let metrics = BusMetrics {
            published: registry.counter(
                "tidecast_bus_published_total",
                "Events the broker acknowledged.",
                &labels,
            ),
            failures: registry.counter(
                "tidecast_bus_publish_failures_total",
                "Attempts to hand an event to the broker that failed (it stays in the outbox).",
                &labels,
            ),
            outbox: registry.gauge(
                "tidecast_bus_outbox_events",
                "Events waiting in the outbox for the broker.",
                &labels,
            ),
        };
        let shared = Arc::new(Shared {
            brokers: brokers.to_string(),
            pending: AtomicUsize::new(outbox.len()),
            outbox: Mutex::new(outbox),
            outbox_dir,
            queued: Notify::new(),
        });
        let task = tokio::spawn(forward(shared.clone(), producer, metrics));
        let bus = KafkaBus {
            shared,
            _forwarder: Arc::new(AbortOnDrop(task)),
        };
        if bus.pending() > 0 {
            info!(
                events = bus.pending(),
                "event outbox holds events from an earlier run; forwarding them"
            );
        }
        Ok(bus)
    }
}

/// Hand outbox events to Kafka oldest first; each leaves the outbox once acknowledged.
async fn forward(bus: Arc<Shared>, producer: FutureProducer, metrics: BusMetrics) {
    let mut topics_made: HashSet<String> = HashSet::new();
    let mut failing = false;
    loop {
        {
            let queued = bus.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let front = bus.outbox().front();
            metrics
                .outbox
                .set(bus.pending.load(Ordering::Relaxed) as i64);
            let Some((path, record)) = front else {
                queued.await;
                continue;
            };
            // name = "{topic}/{key}" (topics have no '/')
            let Some((topic, key, payload)) = record.and_then(|r| {
                let (topic, key) = r.name.split_once('/')?;
                Some((topic.to_string(), key.to_string(), r.data))
            }) else {
                bus.outbox().pop(&path);
                bus.pending.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            if !topics_made.contains(&topic) {
                match ensure_topic(&bus.brokers, &topic).await {
                    Ok(()) => {
                        topics_made.insert(topic.clone());
                    }
                    Err(e) => {
                        metrics.failures.inc();
                        if !failing {
                            warn!(%topic, "kafka unreachable, events wait in the outbox: {e}");
                            failing = true;
                        }
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            let record = FutureRecord::to(&topic).key(&key).payload(&payload[..]);
            match producer.send(record, SEND_TIMEOUT).await {
                Ok(_) => {
                    bus.outbox().pop(&path);
                    bus.pending.fetch_sub(1, Ordering::Relaxed);
                    metrics.published.inc();
                    if failing {
                        info!(%topic, "kafka reachable again, forwarding the outbox");
                        failing = false;
                    }
                }
                Err((e, _)) => {
                    metrics.failures.inc();
                    // a broker that came back empty (or another cluster) may lack the topic
                    topics_made.remove(&topic);
                    if !failing {
                        warn!(%topic, %key, "kafka send failed, event stays in the outbox: {e}");
                        failing = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

impl EventBus for KafkaBus {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn publish(&self, event: Event) -> Result<(), BusError> {
        check_name(&event.topic)?;
        let name = format!("{}/{}", event.topic, event.key);
        self.shared
            .outbox()
            .push(&name, &event.payload)
            .map_err(io_error(&self.shared.outbox_dir))?;
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        self.shared.queued.notify_waiters();
        Ok(())
    }

    fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BusFuture<'a, Box<dyn EventConsumer>> {
        Box::pin(async move {
            check_name(topic)?;
            check_name(group)?;
            ensure_topic(&self.shared.brokers, topic).await?;
            let consumer: StreamConsumer = client_config(&self.shared.brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "1000")
                .create()
                .map_err(|e| kafka_error("consumer", e))?;
            consumer
                .subscribe(&[topic])
                .map_err(|e| kafka_error("subscribe", e))?;
            Ok(Box::new(KafkaConsumer {
                consumer: Arc::new(consumer),
            }) as Box<dyn EventConsumer>)
        })
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
}

impl EventConsumer for KafkaConsumer {
    fn next(&mut self) -> BusFuture<'_, Delivery> {
        Box::pin(async move {
            let m = self
                .consumer
                .recv()
                .await
                .map_err(|e| kafka_error("receive", e))?;
            Ok(Delivery {
                event: Event {
                    topic: m.topic().to_string(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                },
                partition: m.partition(),
                offset: m.offset(),
            })
        })
    }

    fn commit<'a>(&'a mut self, delivery: &'a Delivery) -> BusFuture<'a, ()> {
        Box::pin(async move {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                &delivery.event.topic,
                delivery.partition,
                Offset::Offset(delivery.offset + 1),
            )
            .map_err(|e| kafka_error("commit", e))?;
            let consumer = self.consumer.clone();
            // a synchronous commit blocks on the broker's answer
            blocking("commit", move || consumer.commit(&tpl, CommitMode::Sync)).await
        })
    }

    fn lag(&mut self) -> BusFuture<'_, u64> {
        Box::pin(async move {
            let consumer = self.consumer.clone();
            // watermarks and committed offsets are broker round trips
            blocking("lag", move || {
                let timeout = Duration::from_secs(2);
                let committed = consumer.committed(timeout)?;
                let mut lag = 0u64;
                for p in committed.elements() {
                    let (low, high) =
                        consumer.fetch_watermarks(p.topic(), p.partition(), timeout)?;
                    let at = match p.offset() {
                        Offset::Offset(o) => o,
                        _ => low,
                    };
                    lag += u64::try_from(high - at.max(low)).unwrap_or(0);
                }
                Ok(lag)
            })
            .await
        })
    }
}
