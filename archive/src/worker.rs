//! The archiver's shell: consume `call.ended` in a consumer group, and for each recorded call
//! fetch its chunks, assemble them ([`crate::assemble`]), store `recording.mp4` and then
//! `manifest.json`, and only then commit. A redelivered event finds the manifest and makes no
//! second file; an assembly that fails is retried with backoff (chunks may still be on their
//! way from a rooms node's spool); an event that can never work goes to the dead-letter topic.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tidecast_common::bus::{Delivery, Event, EventConsumer, SharedBus};
use tidecast_common::lifecycle::Readiness;
use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::store::{ObjectKey, SharedStore};
use tidecast_rooms::recording::index::TrackIndex;
use tracing::{debug, info, warn};

use crate::assemble::{assemble, total_ms, track_dir};
use crate::plan::{self, manifest_key, parse_event, recording_key, CallEnded, Plan};
use crate::vod::{self, VodPlace};
use crate::ArchiveError;

/// How often the consumer lag is measured while no event comes.
const LAG_EVERY: Duration = Duration::from_secs(10);

/// How the archiver runs.
#[derive(Debug, Clone)]
pub struct ArchiverSettings {
    /// Topic of call events.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Where chunks are assembled (one directory per meeting, removed after).
    pub work_dir: PathBuf,
    /// Tries per event before it goes to the dead-letter topic.
    pub max_attempts: u32,
    /// First pause between tries (doubling, at most a minute).
    pub retry: Duration,
    /// Output size.
    pub width: u32,
    /// Output size.
    pub height: u32,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Assembled,
    AlreadyDone,
    NotRecorded,
    DeadLettered,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Assembled => "assembled",
            Outcome::AlreadyDone => "already_done",
            Outcome::NotRecorded => "not_recorded",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

struct Metrics {
    registry: Registry,
    failures: Metric,
    seconds: Metric,
    recorded_ms: Metric,
    lag_ms: Metric,
    consumer_lag: Metric,
}

/// The archiver.
pub struct Archiver {
    store: SharedStore,
    bus: SharedBus,
    settings: ArchiverSettings,
    metrics: Metrics,
}

impl Archiver {
    /// An archiver reading `settings.topic` from `bus` and writing to `store`.
    pub fn new(
        store: SharedStore,
        bus: SharedBus,
        settings: ArchiverSettings,
        registry: &Registry,
    ) -> Archiver {
        let metrics = Metrics {
            registry: registry.clone(),
            failures: registry.counter(
                "tidecast_archiver_failures_total",
                "Assembly attempts that failed (each is retried, then dead-lettered).",
                &[],
            ),
            seconds: registry.gauge(
                "tidecast_archiver_last_assembly_ms",
                "Wall time of the last assembly, ms.",
                &[],
            ),
            recorded_ms: registry.counter(
                "tidecast_archiver_recorded_ms_total",
                "Length of the recordings assembled, ms.",
                &[],
            ),
            lag_ms: registry.gauge(
                "tidecast_archiver_lag_ms",
                "From a call's end to the archiver taking up its event, ms (the last event).",
                &[],
            ),
            consumer_lag: registry.gauge(
                "tidecast_archiver_consumer_lag",
                "call.ended events on the bus the archiver's group has not committed yet.",
                &[("bus", bus.kind())],
            ),
        };
        Archiver {
            store,
            bus,
            settings,
            metrics,
        }
    }

    /// Consume until `readiness` drains (a bus that cannot be reached is retried). A call
    /// being assembled when the drain starts is finished (it is work the drain waits for);
    /// one cut short by the drain's timeout is not committed, so the next start does it again.
    pub async fn run(self, readiness: &Readiness) {
        let mut drain = readiness.drain_signal();
        let mut consumer = loop {
            match self
                .bus
                .subscribe(&self.settings.topic, &self.settings.group)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    warn!("archiver cannot subscribe to {}: {e}", self.settings.topic);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        info!(topic = %self.settings.topic, group = %self.settings.group, bus = self.bus.kind(), "archiver consuming call events");
        self.update_lag(&mut consumer).await;
        loop {
            // while waiting, the lag is measured now and then (the wait is cancel-safe)
            let next = tokio::select! {
                _ = drain.started() => {
                    info!("draining: the archiver stops consuming");
                    return;
                }
                next = consumer.next() => next,
                _ = tokio::time::sleep(LAG_EVERY) => {
                    self.update_lag(&mut consumer).await;
                    continue;
                }
            };
            let _work = readiness.track();
            let delivery = match next {
                Ok(d) => d,
                Err(e) => {
                    warn!("archiver receive failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let outcome = self.handle(&delivery).await;
            self.metrics
                .registry
                .counter(
                    "tidecast_archiver_events_total",
                    "call.ended events the archiver finished with, by outcome.",
                    &[("outcome", outcome.label())],
                )
                .inc();
            // committed only now: a crash before this redelivers the event
            while let Err(e) = consumer.commit(&delivery).await {
                warn!("archiver commit failed, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            self.update_lag(&mut consumer).await;
        }
    }

    async fn update_lag(&self, consumer: &mut Box<dyn EventConsumer>) {
        match consumer.lag().await {
            Ok(lag) => self.metrics.consumer_lag.set(lag as i64),
            Err(e) => debug!("consumer lag unknown: {e}"),
        }
    }

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let event = match parse_event(&delivery.event.payload) {
            Ok(e) => e,
            Err(poison) => return self.dead_letter(delivery, &poison.to_string()),
        };
        if event.chunks == 0 {
            return Outcome::NotRecorded;
        }
        if let Some(ended) = lag_ms(&event) {
            self.metrics.lag_ms.set(ended);
        }
        let mut pause = self.settings.retry;
        for attempt in 1..=self.settings.max_attempts.max(1) {
            match self.archive(&event).await {
                Ok(outcome) => return outcome,
                Err(e) => {
                    self.metrics.failures.inc();
                    warn!(meeting = %event.meeting_id, attempt, "assembly failed: {e}");
                    if !e.is_retryable() || attempt == self.settings.max_attempts {
                        return self.dead_letter(delivery, &e.to_string());
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
        Outcome::DeadLettered
    }

    /// To `{topic}.dlq`: the original event and why.
    fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Outcome {
        warn!(key = %delivery.event.key, "call event dead-lettered: {reason}");
        let payload = serde_json::json!({
            "reason": reason,
            "topic": delivery.event.topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "event": String::from_utf8_lossy(&delivery.event.payload),
        });
        let dlq = Event {
            topic: format!("{}.dlq", self.settings.topic),
            key: delivery.event.key.clone(),
            payload: Bytes::from(payload.to_string()),
        };
        if let Err(e) = self.bus.publish(dlq) {
            warn!("dead-letter publish failed: {e}");
        }
        Outcome::DeadLettered
    }

    async fn archive(&self, event: &CallEnded) -> Result<Outcome, ArchiveError> {
        let meeting = &event.meeting_id;
        let recording = ObjectKey::new(recording_key(meeting))?;
        let manifest = ObjectKey::new(manifest_key(meeting))?;
        if self.store.head(&manifest).await?.is_some() {
            info!(%meeting, "recording exists already: event redelivered, nothing to do");
            return Ok(Outcome::AlreadyDone);
        }
        let started = Instant::now();
        let indexes = self.indexes(meeting).await?;
        let plan = plan::plan(event, &indexes, self.settings.width, self.settings.height)?;
        let work = self.settings.work_dir.join(meeting);
        let _ = tokio::fs::remove_dir_all(&work).await;
        let durations = self.fetch(&plan, &indexes, &work).await?;
        let total = total_ms(&plan, &|t| {
            durations
                .iter()
                .find(|(k, _)| Some(k) == t.chunks.first())
                .map_or(0, |(_, d)| *d)
        });
        let out = work.join("recording.mp4");
        info!(%meeting, duration_ms = total, tiles = plan.tiles.len(), audio = plan.audio.len(), "assembling the recording");
        let (p, w, o) = (plan.clone(), work.clone(), out.clone());
        tokio::task::spawn_blocking(move || assemble(&p, &w, &o, total))
            .await
            .map_err(|e| ArchiveError::Pipeline(e.to_string()))??;
        self.store.put_file(&recording, &out).await?;
        // the same file as VOD (HLS + DASH), before the manifest says the recording is complete
        let call_start =
            tidecast_common::time::parse_rfc3339(&event.started_at).unwrap_or_else(SystemTime::now);
        let vod_place = VodPlace::new(meeting, call_start);
        let vod_objects = vod::package(
            &out,
            &vod_place,
            call_start,
            (plan.width, plan.height),
            !plan.audio.is_empty(),
            &self.store,
        )
        .await?;
        let size = tokio::fs::metadata(&out)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let took = started.elapsed();
        let manifest_json = serde_json::json!({
            "schema": 1,
            "meeting_id": meeting,
            "room": event.room,
            "participants": event.participants,
            "started_at": event.started_at,
            "ended_at": event.ended_at,
            "recording": recording.as_str(),
            "vod": {
                "hls": vod_place.master(),
                "dash": vod_place.manifest(),
                "objects": vod_objects,
            },
            "bytes": size,
            "duration_ms": total,
            "width": plan.width,
            "height": plan.height,
            "tiles": plan.tiles,
            "chunks": event.chunks,
            "assembled_at": tidecast_common::time::rfc3339_millis(SystemTime::now()),
            "assembly_ms": took.as_millis() as u64,
        });
        self.store
            .put(&manifest, Bytes::from(manifest_json.to_string()))
            .await?;
        let _ = tokio::fs::remove_dir_all(&work).await;
        self.metrics.seconds.set(took.as_millis() as i64);
        self.metrics.recorded_ms.add(total as i64);
        info!(%meeting, duration_ms = total, assembly_ms = took.as_millis() as u64, bytes = size,
              tiles = plan.tiles.len(), vod = %vod_place.master(), "recording assembled");
        Ok(Outcome::Assembled)
    }

    /// Every track index of `meeting` in the store.
    async fn indexes(&self, meeting: &str) -> Result<Vec<TrackIndex>, ArchiveError> {
        let keys = self
            .store
            .list(&tidecast_rooms::recording::index::meeting_prefix(meeting))
            .await?;
        let mut out = Vec::new();
        for key in keys.iter().filter(|k| k.ends_with("/index.json")) {
            let key = ObjectKey::new(key.clone())?;
            let Some(bytes) = self.store.get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<TrackIndex>(&bytes) {
                Ok(i) if i.meeting_id == meeting => out.push(i),
                Ok(_) => warn!(%key, "index of another meeting, ignored"),
                Err(e) => warn!(%key, "unreadable index, ignored: {e}"),
            }
        }
        Ok(out)
    }

    /// Download every planned chunk into its track's directory; returns (first chunk key, the
    /// track's length in ms) per track.
    async fn fetch(
        &self,
        plan: &Plan,
        indexes: &[TrackIndex],
        work: &std::path::Path,
    ) -> Result<Vec<(String, u64)>, ArchiveError> {
        let tracks = plan
            .tiles
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((track_dir(work, "video", i), t.video.as_ref()?)))
            .chain(
                plan.audio
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (track_dir(work, "audio", j), a)),
            );
        let mut lengths = Vec::new();
        for (dir, track) in tracks {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| ArchiveError::Io(dir.display().to_string(), e))?;
            for (seq, key) in track.chunks.iter().enumerate() {
                let object = ObjectKey::new(key.clone())?;
                let file = dir.join(format!("{seq:05}.{}", track.extension));
                if !self.store.get_file(&object, &file).await? {
                    return Err(ArchiveError::MissingChunk(key.clone()));
                }
            }
            let length = indexes
                .iter()
                .find(|i| i.chunks.first().map(|c| &c.key) == track.chunks.first())
                .map(|i| i.chunks.iter().map(|c| c.duration_ms).sum())
                .unwrap_or(0);
            if let Some(first) = track.chunks.first() {
                lengths.push((first.clone(), length));
            }
        }
        Ok(lengths)
    }
}

/// ms from the call's end (`ended_at`) to now, when it parses.
fn lag_ms(event: &CallEnded) -> Option<i64> {
    let ended = tidecast_common::time::parse_rfc3339(&event.ended_at)?;
    let lag = SystemTime::now().duration_since(ended).ok()?;
    Some(lag.as_millis() as i64)
}
