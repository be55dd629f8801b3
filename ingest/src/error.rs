//! Ingest errors.

/// Why a publishing connection or a ladder failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The RTMP handshake was malformed.
    #[error("rtmp handshake failed: {0}")]
    Handshake(String),
    /// The RTMP chunk stream or a message in it was malformed.
    #[error("rtmp protocol error: {0}")]
    Protocol(String),
    /// The chunk stream was refused before it reached the RTMP decoder.
    #[error("rtmp protocol error: {0}")]
    Chunk(#[from] crate::chunk_guard::GuardError),
    /// The peer took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The publisher was refused (bad key, stream busy, wrong app).
    #[error("publish refused: {0}")]
    Refused(String),
    /// Media the ladder cannot use (not H.264/AAC, broken decoder configuration).
    #[error("unsupported media: {0}")]
    Media(String),
    /// GStreamer failed to build or run the ladder.
    #[error("ladder: {0}")]
    Ladder(String),
    /// Socket I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl IngestError {
    /// Short reason for metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            IngestError::Handshake(_) => "handshake",
            IngestError::Protocol(_) | IngestError::Chunk(_) => "protocol",
            IngestError::Timeout(_) => "timeout",
            IngestError::Refused(_) => "refused",
            IngestError::Media(_) => "media",
            IngestError::Ladder(_) => "ladder",
            IngestError::Io(_) => "io",
        }
    }
}
