//! [`LocalBus`]: the embedded event bus. Each topic is a durable log on local disk (a
//! [`DiskQueue`] in `{dir}/{topic}/`); each consumer group's committed offset is a file
//! (`{dir}/{topic}.groups/{group}`). Like a Kafka topic, the log keeps records for its retention
//! time whoever has read them, so a group that starts later reads from the oldest one kept. One
//! consumer per group at a time (one process).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tracing::warn;

use super::{check_name, io_error, BusError, BusFuture, Delivery, Event, EventBus, EventConsumer};
use crate::spool::DiskQueue;

/// The in-process bus over a directory.
#[derive(Debug, Clone)]
pub struct LocalBus {
    dir: PathBuf,
    topics: Arc<Mutex<HashMap<String, DiskQueue>>>,
    published: Arc<Notify>,
    retention: Duration,
}

/// How long records stay by default (Kafka's default too).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl LocalBus {
    /// The bus in `dir`, with whatever an earlier run left there.
    pub fn open(dir: PathBuf) -> LocalBus {
        LocalBus {
            dir,
            topics: Arc::default(),
            published: Arc::default(),
            retention: DEFAULT_RETENTION,
        }
    }

    /// Keep records for `retention` (older ones go when the topic is next published to).
    pub fn with_retention(mut self, retention: Duration) -> LocalBus {
        self.retention = retention;
        self
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, DiskQueue>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_log<T>(&self, topic: &str, f: impl FnOnce(&mut DiskQueue) -> T) -> T {
        let mut topics = self.topics();
        let log = topics
            .entry(topic.to_string())
            .or_insert_with(|| DiskQueue::open(self.dir.join(topic)));
        f(log)
    }

    fn groups_dir(&self, topic: &str) -> PathBuf {
        self.dir.join(format!("{topic}.groups"))
    }
}

/// The committed offset in a group file; `None` when the group has committed nothing.
fn read_offset(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl EventBus for LocalBus {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn publish(&self, event: Event) -> Result<(), BusError> {
        check_name(&event.topic)?;
        let path = self.dir.join(&event.topic);
        let cutoff = SystemTime::now().checked_sub(self.retention);
        self.with_log(&event.topic, |log| {
            if let Some(cutoff) = cutoff {
                log.pop_older_than(cutoff);
            }
            log.push(&event.key, &event.payload)
        })
        .map_err(io_error(&path))?;
        self.published.notify_waiters();
        Ok(())
    }

    fn pending(&self) -> usize {
        0
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BusFuture<'a, Box<dyn EventConsumer>> {
        Box::pin(async move {
            check_name(topic)?;
            check_name(group)?;
            let groups = self.groups_dir(topic);
            std::fs::create_dir_all(&groups).map_err(io_error(&groups))?;
            let offset_file = groups.join(group);
            let committed = read_offset(&offset_file);
            if committed.is_none() {
                // the group exists from now on: records stay until it has committed them
                std::fs::write(&offset_file, "").map_err(io_error(&offset_file))?;
            }
            Ok(Box::new(LocalConsumer {
                bus: self.clone(),
                topic: topic.to_string(),
                offset_file,
                cursor: committed,
            }) as Box<dyn EventConsumer>)
        })
    }
}

struct LocalConsumer {
    bus: LocalBus,
    topic: String,
    offset_file: PathBuf,
    /// The last record handed out.
    cursor: Option<u64>,
}

impl EventConsumer for LocalConsumer {
    fn next(&mut self) -> BusFuture<'_, Delivery> {
        Box::pin(async move {
            loop {
                let published = self.bus.published.notified();
                tokio::pin!(published);
                published.as_mut().enable();
                let next = self
                    .bus
                    .with_log(&self.topic, |log| log.first_after(self.cursor));
                match next {
                    Some((seq, Some(record))) => {
                        self.cursor = Some(seq);
                        return Ok(Delivery {
                            event: Event {
                                topic: self.topic.clone(),
                                key: record.name,
                                payload: record.data,
                            },
                            partition: 0,
                            offset: seq as i64,
                        });
                    }
                    Some((seq, None)) => {
                        warn!(topic = %self.topic, seq, "unreadable event in the local log, skipped");
                        self.cursor = Some(seq);
                    }
                    None => published.await,
                }
            }
        })
    }

    fn commit<'a>(&'a mut self, delivery: &'a Delivery) -> BusFuture<'a, ()> {
        Box::pin(async move {
            let seq = u64::try_from(delivery.offset).unwrap_or(0);
            let tmp = self.offset_file.with_extension("tmp");
            std::fs::write(&tmp, seq.to_string()).map_err(io_error(&tmp))?;
            std::fs::rename(&tmp, &self.offset_file).map_err(io_error(&self.offset_file))?;
            Ok(())
        })
    }

    fn lag(&mut self) -> BusFuture<'_, u64> {
        Box::pin(async move {
            let committed = read_offset(&self.offset_file);
            Ok(self
                .bus
                .with_log(&self.topic, |log| log.count_after(committed)) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(key: &str) -> Event {
        Event {
            topic: "call-events".into(),
            key: key.into(),
            payload: Bytes::from(format!("{{\"meeting\":\"{key}\"}}")),
        }
    }

    #[tokio::test]
    async fn groups_get_every_event_again_until_they_commit_it_and_records_stay_for_their_retention(
    ) {
        let dir = std::env::temp_dir().join(format!("tidecast-bus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bus = LocalBus::open(dir.clone());
        let mut archiver = bus.subscribe("call-events", "archiver").await.unwrap();
        let audit = bus.subscribe("call-events", "audit").await.unwrap();
        bus.publish(event("m1")).unwrap();
        bus.publish(event("m2")).unwrap();
        assert_eq!(archiver.lag().await.unwrap(), 2);
        let first = archiver.next().await.unwrap();
        assert_eq!(first.event, event("m1"));
        // read is not done: the lag counts commits
        assert_eq!(archiver.lag().await.unwrap(), 2);
        archiver.commit(&first).await.unwrap();
        assert_eq!(archiver.lag().await.unwrap(), 1);
        let second = archiver.next().await.unwrap();
        assert_eq!(second.event.key, "m2");
        // a consumer waits for what is published later
        let bus2 = bus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            bus2.publish(event("m3")).unwrap();
        });
        assert_eq!(archiver.next().await.unwrap().event.key, "m3");
        // "restart": m2 was not committed, so the group gets it again
        drop((archiver, audit));
        let bus = LocalBus::open(dir.clone());
        let mut archiver = bus.subscribe("call-events", "archiver").await.unwrap();
        let mut audit = bus.subscribe("call-events", "audit").await.unwrap();
        let again = archiver.next().await.unwrap();
        assert_eq!(again.event.key, "m2");
        let third = archiver.next().await.unwrap();
        archiver.commit(&third).await.unwrap();
        assert_eq!(archiver.lag().await.unwrap(), 0);
        // records stay for their retention whoever read them: the audit group, which read
        // nothing, and a group that starts now both read from the oldest
        assert_eq!(bus.with_log("call-events", |l| l.len()), 3);
        assert_eq!(audit.next().await.unwrap().event.key, "m1");
        let mut late = bus.subscribe("call-events", "late").await.unwrap();
        assert_eq!(late.next().await.unwrap().event.key, "m1");
        // past their retention they go (when the topic is next published to)
        let bus = LocalBus::open(dir.clone()).with_retention(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(20)).await;
        bus.publish(event("m4")).unwrap();
        assert_eq!(bus.with_log("call-events", |l| l.len()), 1);
        assert!(bus
            .publish(Event {
                topic: "../x".into(),
                ..event("m5")
            })
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
