//! The archive shell: the recorder core ([`ArchiveRecorder`]) under a lock, and the
//! [`SpooledWriter`] from `common` that writes what it decides to the object store in order,
//! off the live path, through a disk spool when the store is down.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tidecast_common::metrics::Registry;
use tidecast_common::spool::{SpooledWriter, StoreWrite};
use tidecast_common::store::SharedStore;

use crate::archive::ArchiveRecorder;

/// Handle held by the origin: the recorder core and the writer.
pub struct Archiver {
    recorder: Mutex<ArchiveRecorder>,
    writer: SpooledWriter,
}

impl Archiver {
    /// Start the writer task (needs a tokio runtime). `spool_dir` keeps failed writes.
    pub fn spawn(
        store: SharedStore,
        spool_dir: PathBuf,
        retry: Duration,
        registry: &Registry,
    ) -> Archiver {
        Archiver {
            recorder: Mutex::new(ArchiveRecorder::default()),
            writer: SpooledWriter::spawn(store, spool_dir, retry, registry, "archive"),
        }
    }

    /// The recorder core (the origin feeds it packager outputs under its table lock).
    pub fn recorder(&self) -> MutexGuard<'_, ArchiveRecorder> {
        self.recorder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue writes; returns at once.
    pub fn submit(&self, writes: Vec<StoreWrite>) {
        self.writer.submit(writes);
    }

    /// A drain waits for every write until it is stored or spooled.
    pub fn hold_drain(&self, readiness: &tidecast_common::lifecycle::Readiness) {
        self.writer.hold_drain(readiness);
    }

    /// The store archives are read back from (VOD).
    pub fn store(&self) -> &SharedStore {
        self.writer.store()
    }
}
