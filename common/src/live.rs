//! Live media events: what a ladder (in process or pushed over HTTP) hands to the origin.
//!
//! Every rendition is one CMAF track: first an init segment, then media segments in order.
//! Events of one rendition arrive in order; renditions interleave freely.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// Whether a CMAF track carries video or audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrackKind {
    /// A video rendition (one rung of the ladder).
    Video,
    /// The audio rendition.
    Audio,
}

impl TrackKind {
    /// Lower-case name for logs, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
        }
    }
}

/// A rendition announced when a publishing session starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionInfo {
    /// Path component, e.g. `720p` or `audio`.
    pub name: String,
    /// Video or audio.
    pub kind: TrackKind,
    /// Target bitrate in bits/s (used until real segment sizes are known).
    pub bitrate_bps: u64,
    /// Coded width (video only, 0 for audio).
    pub width: u32,
    /// Coded height (video only, 0 for audio).
    pub height: u32,
}

/// One CMAF chunk (a `moof`+`mdat` pair). A segment is one or more chunks; the first chunk of
/// a segment starts with a sync sample. With low latency on, chunks are the LL-HLS parts.
#[derive(Debug, Clone)]
pub struct CmafChunk {
    /// The chunk bytes.
    pub data: Bytes,
    /// Presentation time of the first sample on the session's media timeline.
    pub pts: Duration,
    /// Duration of the chunk.
    pub duration: Duration,
    /// Ingest wall-clock time of the first sample (`EXT-X-PROGRAM-DATE-TIME`).
    pub program_date_time: SystemTime,
    /// Number of samples (frames for video).
    pub samples: u32,
    /// This chunk starts a new segment (and a sync sample).
    pub starts_segment: bool,
}

/// What a ladder tells the origin.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LiveEvent {
    /// A publisher started (or came back): a new session of `stream` with these renditions.
    SessionStarted {
        /// Stream name.
        stream: String,
        /// Session id, unique per stream (ingest wall clock in ms at publish time).
        session: u64,
        /// Renditions the ladder will produce for this session.
        renditions: Vec<RenditionInfo>,
        /// Wall clock at publish time.
        started_at: SystemTime,
    },
    /// The init segment (`ftyp`+`moov`) of one rendition.
    Init {
        /// Stream name.
        stream: String,
        /// Session id from `SessionStarted`.
        session: u64,
        /// Rendition name.
        rendition: String,
        /// The init segment.
        data: Bytes,
    },
    /// A media chunk of one rendition.
    Chunk {
        /// Stream name.
        stream: String,
        /// Session id from `SessionStarted`.
        session: u64,
        /// Rendition name.
        rendition: String,
        /// The chunk.
        chunk: CmafChunk,
    },
    /// The publisher went away and the ladder drained: the session is over.
    SessionEnded {
        /// Stream name.
        stream: String,
        /// Session id from `SessionStarted`.
        session: u64,
    },
}

/// Convert a duration to seconds as f64 (for playlists).
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
