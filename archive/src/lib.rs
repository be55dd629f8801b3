//! tidecast archive: the worker that turns a recorded call into one file. It consumes
//! `call.ended` from the event bus ([`worker`]), plans the assembly from the call's track
//! indexes as a pure core ([`plan`]: readiness, grid, timeline), and runs it as one GStreamer
//! pipeline ([`assemble`]: `compositor` + `audiomixer` → H.264/AAC MP4), then packages that
//! file as a VOD session the origin serves as HLS and DASH ([`vod`]).
#![deny(missing_docs)]

pub mod assemble;
pub mod plan;
pub mod vod;
pub mod worker;

pub use worker::{Archiver, ArchiverSettings};

use tidecast_common::bus::BusError;
use tidecast_common::store::StoreError;

/// Why an assembly failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Not every chunk is in the store yet.
    #[error(transparent)]
    NotReady(#[from] plan::NotReady),
    /// An index lists a chunk the store does not have.
    #[error("chunk {0} is not in the store")]
    MissingChunk(String),
    /// Local files.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// GStreamer failed.
    #[error("assembly pipeline: {0}")]
    Pipeline(String),
}

impl From<tidecast_common::pipeline::PipelineError> for ArchiveError {
    fn from(e: tidecast_common::pipeline::PipelineError) -> Self {
        ArchiveError::Pipeline(e.0)
    }
}

impl ArchiveError {
    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ArchiveError::Store(e) => e.is_retryable(),
            ArchiveError::Bus(e) => e.is_retryable(),
            ArchiveError::NotReady(_) | ArchiveError::MissingChunk(_) | ArchiveError::Io(..) => {
                true
            }
            // a pipeline that failed once on the same chunks fails again; still, a full disk
            // or a killed encoder is worth one more try
            ArchiveError::Pipeline(_) => true,
        }
    }
}
