//! The archive shell: one task writes [`ArchiveWrite`]s to the object store in order, off the
//! live path. A write that fails (S3 down, disk full) goes to a spool directory on local disk,
//! and so does every later write until the spool has drained, so objects land in the order
//! they were produced (a playlist never before its segments) and nothing is lost across an
//! outage or a restart (the spool is read back at start).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::store::{ObjectKey, ObjectStore};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::archive::{ArchiveRecorder, ArchiveWrite};

/// Longest a single upload may take before it counts as failed.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle held by the origin: the recorder core and the queue to the writer task.
pub struct Archiver {
    recorder: Mutex<ArchiveRecorder>,
    tx: mpsc::UnboundedSender<ArchiveWrite>,
    store: ObjectStore,
}

struct ArchiveMetrics {
    uploaded: Metric,
    uploaded_bytes: Metric,
    failures: Metric,
    spooled: Metric,
    queued: Metric,
}

impl ArchiveMetrics {
    fn new(registry: &Registry, store: &ObjectStore) -> Self {
        let kind = [("store", store.kind())];
        ArchiveMetrics {
            uploaded: registry.counter(
                "tidecast_archive_objects_written_total",
                "Objects written to the object store by the archiver.",
                &kind,
            ),
            uploaded_bytes: registry.counter(
                "tidecast_archive_bytes_written_total",
                "Bytes written to the object store by the archiver.",
                &kind,
            ),
            failures: registry.counter(
                "tidecast_archive_write_failures_total",
                "Object writes that failed and were spooled for retry.",
                &kind,
            ),
            spooled: registry.gauge(
                "tidecast_archive_spooled_objects",
                "Objects waiting in the local spool for the object store to come back.",
                &kind,
            ),
            queued: registry.gauge(
                "tidecast_archive_queued_objects",
                "Objects queued in memory for the archive writer.",
                &kind,
            ),
        }
    }
}

impl Archiver {
    /// Start the writer task (needs a tokio runtime). `spool_dir` keeps failed writes.
    pub fn spawn(
        store: ObjectStore,
        spool_dir: PathBuf,
        retry: Duration,
        registry: &Registry,
    ) -> Archiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = ArchiveMetrics::new(registry, &store);
        let writer = Writer {
            store: store.clone(),
            spool: Spool::open(spool_dir),
            retry: retry.max(Duration::from_millis(100)),
            metrics,
        };
        tokio::spawn(writer.run(rx));
        Archiver {
            recorder: Mutex::new(ArchiveRecorder::default()),
            tx,
            store,
        }
    }

    /// The recorder core (the origin feeds it packager outputs under its table lock).
    pub fn recorder(&self) -> MutexGuard<'_, ArchiveRecorder> {
        self.recorder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue writes; returns at once.
    pub fn submit(&self, writes: Vec<ArchiveWrite>) {
        for w in writes {
            if self.tx.send(w).is_err() {
                warn!("archive writer is gone; archive write dropped");
            }
        }
    }

    /// The store archives are read back from (VOD).
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }
}

struct Writer {
    store: ObjectStore,
    spool: Spool,
    retry: Duration,
    metrics: ArchiveMetrics,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ArchiveWrite>) {
        if !self.spool.is_empty() {
            info!(
                objects = self.spool.len(),
                "archive spool holds writes from an earlier run; retrying them"
            );
        }
        self.metrics.spooled.set(self.spool.len() as i64);
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let next = if self.spool.is_empty() {
                rx.recv().await
            } else {
                tokio::select! {
                    w = rx.recv() => w,
                    _ = tokio::time::sleep_until(retry_at) => {
                        if !self.drain_spool().await {
                            retry_at = tokio::time::Instant::now() + self.retry;
                        }
                        continue;
                    }
                }
            };
            let Some(w) = next else { return };
            self.metrics.queued.set(rx.len() as i64);
            if self.spool.is_empty() && self.upload(&w.key, w.data.clone()).await {
                continue;
            }
            if self.spool.is_empty() {
                retry_at = tokio::time::Instant::now() + self.retry;
            }
            if let Err(e) = self.spool.push(&w) {
                // nothing else can hold it: say so loudly
                warn!(key = %w.key, "archive write lost, spool failed too: {e}");
            }
            self.metrics.spooled.set(self.spool.len() as i64);
        }
    }

    async fn upload(&self, key: &ObjectKey, data: Bytes) -> bool {
        let len = data.len() as i64;
        match tokio::time::timeout(UPLOAD_TIMEOUT, self.store.put(key, data)).await {
            Ok(Ok(())) => {
                self.metrics.uploaded.inc();
                self.metrics.uploaded_bytes.add(len);
                true
            }
            Ok(Err(e)) => {
                self.metrics.failures.inc();
                warn!(%key, "archive write failed, spooling: {e}");
                false
            }
            Err(_) => {
                self.metrics.failures.inc();
                warn!(%key, "archive write timed out, spooling");
                false
            }
        }
    }

    /// Upload spooled writes oldest first; `false` when the store failed again.
    async fn drain_spool(&mut self) -> bool {
        let before = self.spool.len();
        while let Some((path, w)) = self.spool.front() {
            let Some(w) = w else {
                self.spool.pop(&path);
                continue;
            };
            if !self.upload(&w.key, w.data).await {
                self.metrics.spooled.set(self.spool.len() as i64);
                return false;
            }
            self.spool.pop(&path);
        }
        self.metrics.spooled.set(0);
        if before > 0 {
            info!(
                objects = before,
                "archive spool drained: object store reachable again"
            );
        }
        true
    }
}

/// Writes waiting on local disk, one file each (`{seq:020}.spool`: key length (u16 BE), key,
/// data), written atomically; the in-memory queue holds only their paths.
struct Spool {
    dir: PathBuf,
    files: VecDeque<PathBuf>,
    next_seq: u64,
}

impl Spool {
    fn open(dir: PathBuf) -> Spool {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name();
                        let seq = name.to_str()?.strip_suffix(".spool")?.parse().ok()?;
                        Some((seq, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let next_seq = files.last().map(|(s, _)| s + 1).unwrap_or(0);
        Spool {
            dir,
            files: files.into_iter().map(|(_, p)| p).collect(),
            next_seq,
        }
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn len(&self) -> usize {
        self.files.len()
    }

    fn push(&mut self, w: &ArchiveWrite) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let key = w.key.as_str().as_bytes();
        let mut buf = Vec::with_capacity(2 + key.len() + w.data.len());
        buf.extend_from_slice(&(key.len() as u16).to_be_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(&w.data);
        let path = self.dir.join(format!("{:020}.spool", self.next_seq));
        let tmp = self.dir.join(format!("{:020}.tmp", self.next_seq));
        std::fs::write(&tmp, &buf)?;
        std::fs::rename(&tmp, &path)?;
        self.next_seq += 1;
        self.files.push_back(path);
        Ok(())
    }

    /// The oldest entry; `None` inside when its file is unreadable or corrupt (it is skipped).
    fn front(&self) -> Option<(PathBuf, Option<ArchiveWrite>)> {
        let path = self.files.front()?.clone();
        let w = read_spooled(&path);
        if w.is_none() {
            warn!(path = %path.display(), "unreadable archive spool file, skipping it");
        }
        Some((path, w))
    }

    fn pop(&mut self, path: &Path) {
        if self.files.front().is_some_and(|p| p == path) {
            self.files.pop_front();
        }
        let _ = std::fs::remove_file(path);
    }
}

fn read_spooled(path: &Path) -> Option<ArchiveWrite> {
    let buf = std::fs::read(path).ok()?;
    let len = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]) as usize;
    let key = std::str::from_utf8(buf.get(2..2 + len)?).ok()?;
    let key = ObjectKey::new(key).ok()?;
    let data = Bytes::copy_from_slice(buf.get(2 + len..)?);
    Some(ArchiveWrite { key, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_roundtrip_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("tidecast-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(dir.clone());
        for i in 0..3u8 {
            let w = ArchiveWrite {
                key: ObjectKey::new(format!("vod/s/1/720p/{i}.m4s")).unwrap(),
                data: Bytes::from(vec![i; 10]),
            };
            spool.push(&w).unwrap();
        }
        let mut spool = Spool::open(dir.clone());
        assert_eq!(spool.len(), 3);
        let (path, w) = spool.front().unwrap();
        let w = w.unwrap();
        assert_eq!(w.key.as_str(), "vod/s/1/720p/0.m4s");
        assert_eq!(&w.data[..], &[0u8; 10]);
        spool.pop(&path);
        let mut spool = Spool::open(dir.clone());
        assert_eq!(spool.len(), 2);
        spool
            .push(&ArchiveWrite {
                key: ObjectKey::new("x").unwrap(),
                data: Bytes::new(),
            })
            .unwrap();
        let names: Vec<String> = spool
            .files
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        assert_eq!(
            names.last().map(String::as_str),
            Some("00000000000000000003.spool")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
