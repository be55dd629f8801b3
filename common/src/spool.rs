//! Ordered writes to the object store that survive an outage: [`SpooledWriter`] is one task
//! that writes [`StoreWrite`]s in the order they were submitted, off the caller's path. A write
//! that fails (S3 down, disk full) goes to a [`DiskQueue`] on local disk, and so does every later
//! write until the queue has drained, so objects land in the order they were produced (a
//! playlist never before its segments, an index never before its chunks) and nothing is lost
//! across an outage or a restart (the queue is read back at start).
//!
//! Used by the origin's archive and by room recording; [`DiskQueue`] is also the event bus's
//! outbox.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::lifecycle::{Readiness, Work};
use crate::metrics::{Metric, Registry};
use crate::store::{ObjectKey, SharedStore};

/// Longest a single upload may take before it counts as failed.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Write `data` under `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreWrite {
    /// Where.
    pub key: ObjectKey,
    /// What.
    pub data: Bytes,
}

/// One record of a [`DiskQueue`]: a name (an object key, an event's topic and key) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    /// What the record is for.
    pub name: String,
    /// Its bytes.
    pub data: Bytes,
}

/// Records waiting on local disk in order, one file each (`{seq:020}.spool`: name length
/// (u16 BE), name, data), written atomically; memory holds only their paths.
#[derive(Debug)]
pub struct DiskQueue {
    dir: PathBuf,
    files: VecDeque<(u64, PathBuf)>,
    next_seq: u64,
}

impl DiskQueue {
    /// The queue in `dir` with whatever an earlier run left there (created on first push).
    pub fn open(dir: PathBuf) -> DiskQueue {
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
        DiskQueue {
            dir,
            files: files.into_iter().collect(),
            next_seq,
        }
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Append a record; it is on disk when this returns. Returns its sequence number.
    pub fn push(&mut self, name: &str, data: &[u8]) -> std::io::Result<u64> {
        let name = name.as_bytes();
        let len = u16::try_from(name.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "record name too long")
        })?;
        std::fs::create_dir_all(&self.dir)?;
        let mut buf = Vec::with_capacity(2 + name.len() + data.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(name);
        buf.extend_from_slice(data);
        let path = self.dir.join(format!("{:020}.spool", self.next_seq));
        let tmp = self.dir.join(format!("{:020}.tmp", self.next_seq));
        std::fs::write(&tmp, &buf)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.files.push_back((seq, path));
        Ok(seq)
    }

    /// The oldest record and its file; `None` inside when the file is unreadable or corrupt
    /// (pop it to skip it).
    pub fn front(&self) -> Option<(PathBuf, Option<QueuedRecord>)> {
        let (_, path) = self.files.front()?.clone();
        let record = read_record(&path);
        if record.is_none() {
            warn!(path = %path.display(), "unreadable spool file, skipping it");
        }
        Some((path, record))
    }

    /// Remove the oldest record (the one [`front`](Self::front) returned as `path`).
    pub fn pop(&mut self, path: &Path) {
        if self.files.front().is_some_and(|(_, p)| p == path) {
            self.files.pop_front();
        }
        let _ = std::fs::remove_file(path);
    }

    /// The first record with a sequence number above `after` (any, for `None`), with its
    /// number; `None` inside when its file is unreadable (it is still passed over).
    pub fn first_after(&self, after: Option<u64>) -> Option<(u64, Option<QueuedRecord>)> {
        let i = match after {
            None => 0,
            Some(a) => self.files.partition_point(|(seq, _)| *seq <= a),
        };
        let (seq, path) = self.files.get(i)?;
        Some((*seq, read_record(path)))
    }

    /// How many records have a sequence number above `after` (all, for `None`).
    pub fn count_after(&self, after: Option<u64>) -> usize {
        match after {
            None => self.files.len(),
            Some(a) => self.files.len() - self.files.partition_point(|(seq, _)| *seq <= a),
        }
    }

    /// Remove the records (oldest first) whose files were written before `cutoff`.
    pub fn pop_older_than(&mut self, cutoff: std::time::SystemTime) {
        while let Some((_, path)) = self.files.front() {
            let written = std::fs::metadata(path).and_then(|m| m.modified());
            if written.is_ok_and(|t| t >= cutoff) {
                break;
            }
            let _ = std::fs::remove_file(path);
            self.files.pop_front();
        }
    }

    /// Remove every record numbered `seq` or lower.
    pub fn pop_through(&mut self, seq: u64) {
        while let Some((s, path)) = self.files.front() {
            if *s > seq {
                break;
            }
            let _ = std::fs::remove_file(path);
            self.files.pop_front();
        }
    }
}

fn read_record(path: &Path) -> Option<QueuedRecord> {
    let buf = std::fs::read(path).ok()?;
    let len = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]) as usize;
    let name = std::str::from_utf8(buf.get(2..2 + len)?).ok()?.to_string();
    let data = Bytes::copy_from_slice(buf.get(2 + len..)?);
    Some(QueuedRecord { name, data })
}

/// Handle to the writer task: submit writes, read back through [`store`](Self::store).
#[derive(Debug, Clone)]
pub struct SpooledWriter {
    tx: mpsc::UnboundedSender<(StoreWrite, Option<Work>)>,
    store: SharedStore,
    outstanding: Arc<AtomicUsize>,
    /// set by [`SpooledWriter::hold_drain`]
    readiness: Arc<std::sync::OnceLock<Readiness>>,
}

struct WriterMetrics {
    uploaded: Metric,
    uploaded_bytes: Metric,
    failures: Metric,
    spooled: Metric,
    queued: Metric,
}

impl WriterMetrics {
    /// Series labelled with the writer (`archive`, `recording`) and the store kind.
    fn new(registry: &Registry, writer: &str, kind: &'static str) -> Self {
        let labels = [("writer", writer), ("store", kind)];
        WriterMetrics {
            uploaded: registry.counter(
                "tidecast_store_objects_written_total",
                "Objects written to the object store.",
                &labels,
            ),
            uploaded_bytes: registry.counter(
                "tidecast_store_bytes_written_total",
                "Bytes written to the object store.",
                &labels,
            ),
            failures: registry.counter(
                "tidecast_store_write_failures_total",
                "Object writes that failed and were spooled for retry.",
                &labels,
            ),
            spooled: registry.gauge(
                "tidecast_store_spooled_objects",
                "Objects waiting in the local spool for the object store to come back.",
                &labels,
            ),
            queued: registry.gauge(
                "tidecast_store_queued_objects",
                "Objects queued in memory for the object writer.",
                &labels,
            ),
        }
    }
}

impl SpooledWriter {
    /// Start the writer task (needs a tokio runtime). `spool_dir` keeps failed writes; `what`
    /// (`archive`, `recording`) labels logs and the `tidecast_store_…{writer}` metric series.
    pub fn spawn(
        store: SharedStore,
        spool_dir: PathBuf,
        retry: Duration,
        registry: &Registry,
        what: &str,
    ) -> SpooledWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let spool = DiskQueue::open(spool_dir);
        outstanding.store(spool.len(), Ordering::Relaxed);
        let task = WriterTask {
            store: store.clone(),
            spool,
            retry: retry.max(Duration::from_millis(100)),
            metrics: WriterMetrics::new(registry, what, store.kind()),
            outstanding: outstanding.clone(),
            what: what.to_string(),
        };
        tokio::spawn(task.run(rx));
        SpooledWriter {
            tx,
            store,
            outstanding,
            readiness: Default::default(),
        }
    }

    /// Make every write submitted from now on work `readiness`'s drain waits for, until it is
    /// in the store or in the spool on disk (the next start uploads it): nothing accepted is
    /// lost to a SIGTERM.
    pub fn hold_drain(&self, readiness: &Readiness) {
        let _ = self.readiness.set(readiness.clone());
    }

    /// Queue writes; returns at once.
    pub fn submit(&self, writes: Vec<StoreWrite>) {
        for w in writes {
            self.outstanding.fetch_add(1, Ordering::Relaxed);
            let work = self.readiness.get().map(Readiness::track);
            if self.tx.send((w, work)).is_err() {
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
                warn!("object writer is gone; write dropped");
            }
        }
    }

    /// Writes submitted (or left in the spool by an earlier run) and not yet in the store.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The store written to.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }
}

struct WriterTask {
    store: SharedStore,
    spool: DiskQueue,
    retry: Duration,
    metrics: WriterMetrics,
    outstanding: Arc<AtomicUsize>,
    what: String,
}

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(StoreWrite, Option<Work>)>) {
        if !self.spool.is_empty() {
            info!(
                what = %self.what,
                objects = self.spool.len(),
                "spool holds writes from an earlier run; retrying them"
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
            // the drain's hold on this write ends when the loop body does: stored or spooled
            let Some((w, _work)) = next else { return };
            self.metrics.queued.set(rx.len() as i64);
            if self.spool.is_empty() && self.upload(&w.key, w.data.clone()).await {
                continue;
            }
            if self.spool.is_empty() {
                retry_at = tokio::time::Instant::now() + self.retry;
            }
            if let Err(e) = self.spool.push(w.key.as_str(), &w.data) {
                // nothing else can hold it: say so loudly
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
                warn!(what = %self.what, key = %w.key, "write lost, spool failed too: {e}");
            }
            self.metrics.spooled.set(self.spool.len() as i64);
        }
    }

    async fn upload(&self, key: &ObjectKey, data: Bytes) -> bool {
        let len = data.len() as i64;
        match tokio::time::timeout(UPLOAD_TIMEOUT, self.store.put(key, data)).await {
            Ok(Ok(())) => {
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
                self.metrics.uploaded.inc();
                self.metrics.uploaded_bytes.add(len);
                true
            }
            Ok(Err(e)) => {
                self.metrics.failures.inc();
                warn!(what = %self.what, %key, "object write failed, spooling: {e}");
                false
            }
            Err(_) => {
                self.metrics.failures.inc();
                warn!(what = %self.what, %key, "object write timed out, spooling");
                false
            }
        }
    }

    /// Upload spooled writes oldest first; `false` when the store failed again.
    async fn drain_spool(&mut self) -> bool {
        let before = self.spool.len();
        while let Some((path, record)) = self.spool.front() {
            let write = record.and_then(|r| {
                let key = ObjectKey::new(r.name).ok()?;
                Some((key, r.data))
            });
            let Some((key, data)) = write else {
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
                self.spool.pop(&path);
                continue;
            };
            if !self.upload(&key, data).await {
                self.metrics.spooled.set(self.spool.len() as i64);
                return false;
            }
            self.spool.pop(&path);
        }
        self.metrics.spooled.set(0);
        if before > 0 {
            info!(
                what = %self.what,
                objects = before,
                "spool drained: object store reachable again"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectStore;

    #[test]
    fn disk_queue_roundtrip_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("tidecast-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut queue = DiskQueue::open(dir.clone());
        for i in 0..3u8 {
            queue
                .push(&format!("vod/s/1/720p/{i}.m4s"), &[i; 10])
                .unwrap();
        }
        let mut queue = DiskQueue::open(dir.clone());
        assert_eq!(queue.len(), 3);
        let (path, record) = queue.front().unwrap();
        let record = record.unwrap();
        assert_eq!(record.name, "vod/s/1/720p/0.m4s");
        assert_eq!(&record.data[..], &[0u8; 10]);
        queue.pop(&path);
        let mut queue = DiskQueue::open(dir.clone());
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.push("x", &[]).unwrap(), 3);
        assert_eq!(queue.first_after(Some(1)).map(|(seq, _)| seq), Some(2));
        assert_eq!(queue.first_after(None).map(|(seq, _)| seq), Some(1));
        assert!(queue.first_after(Some(3)).is_none());
        let names: Vec<String> = queue
            .files
            .iter()
            .filter_map(|(_, p)| p.file_name()?.to_str().map(str::to_string))
            .collect();
        assert_eq!(
            names.last().map(String::as_str),
            Some("00000000000000000003.spool")
        );
        // a corrupt file is reported as such and skipped, not a panic
        std::fs::write(dir.join(&names[0]), [0xff]).unwrap();
        let mut queue = DiskQueue::open(dir.clone());
        assert!(matches!(queue.front(), Some((_, None))));
        queue.pop_through(2);
        assert_eq!(queue.len(), 1);
        assert_eq!(DiskQueue::open(dir.clone()).len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A store that fails while `down` is set.
    #[derive(Debug)]
    struct Flaky {
        inner: crate::store::LocalStore,
        down: std::sync::atomic::AtomicBool,
    }

    impl ObjectStore for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        fn put<'a>(&'a self, key: &'a ObjectKey, data: Bytes) -> crate::store::StoreFuture<'a, ()> {
            if self.down.load(Ordering::Relaxed) {
                return Box::pin(async { Err(crate::StoreError::Config("down".into())) });
            }
            self.inner.put(key, data)
        }
        fn put_file<'a>(
            &'a self,
            key: &'a ObjectKey,
            path: &'a Path,
        ) -> crate::store::StoreFuture<'a, ()> {
            self.inner.put_file(key, path)
        }
        fn get<'a>(&'a self, key: &'a ObjectKey) -> crate::store::StoreFuture<'a, Option<Bytes>> {
            self.inner.get(key)
        }
        fn get_file<'a>(
            &'a self,
            key: &'a ObjectKey,
            path: &'a Path,
        ) -> crate::store::StoreFuture<'a, bool> {
            self.inner.get_file(key, path)
        }
        fn head<'a>(
            &'a self,
            key: &'a ObjectKey,
        ) -> crate::store::StoreFuture<'a, Option<crate::store::ObjectMeta>> {
            self.inner.head(key)
        }
        fn list<'a>(&'a self, prefix: &'a str) -> crate::store::StoreFuture<'a, Vec<String>> {
            self.inner.list(prefix)
        }
        fn delete<'a>(&'a self, key: &'a ObjectKey) -> crate::store::StoreFuture<'a, ()> {
            self.inner.delete(key)
        }
    }

    #[tokio::test]
    async fn writes_wait_out_an_outage_in_order() {
        let dir = std::env::temp_dir().join(format!("tidecast-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let flaky = Arc::new(Flaky {
            inner: crate::store::LocalStore::new(dir.join("store")),
            down: std::sync::atomic::AtomicBool::new(true),
        });
        let registry = Registry::default();
        let writer = SpooledWriter::spawn(
            flaky.clone(),
            dir.join("spool"),
            Duration::from_millis(100),
            &registry,
            "test",
        );
        let w = |i: u8| StoreWrite {
            key: ObjectKey::new(format!("rec/{i}")).unwrap(),
            data: Bytes::from(vec![i; 4]),
        };
        writer.submit((0..5).map(w).collect());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(writer.outstanding(), 5);
        assert_eq!(DiskQueue::open(dir.join("spool")).len(), 5);
        flaky.down.store(false, Ordering::Relaxed);
        for _ in 0..50 {
            if writer.outstanding() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(writer.outstanding(), 0);
        let keys = flaky.list("rec/").await.unwrap();
        assert_eq!(keys, (0..5).map(|i| format!("rec/{i}")).collect::<Vec<_>>());
        assert!(DiskQueue::open(dir.join("spool")).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
