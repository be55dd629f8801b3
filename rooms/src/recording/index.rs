//! What a recording looks like in the object store (pure): every track of every participant is
//! a run of self-contained chunks under `recordings/{meeting}/{participant}/{track}/`, numbered
//! from 0, beside an `index.json` that gives each chunk's start on the call's timeline (ms from
//! the first join) so an archiver can line the tracks up.

use serde::{Deserialize, Serialize};
use tidecast_common::store::{ObjectKey, StoreError};

/// Version of `index.json`.
pub const INDEX_SCHEMA: u32 = 1;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// Opus.
    Audio,
    /// VP8 or H.264.
    Video,
}

/// A recorded codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedCodec {
    /// VP8 in WebM.
    Vp8,
    /// H.264 in MPEG-TS: a browser's H.264 changes resolution (simulcast layer switches, CPU
    /// adaptation) with new SPS in band, which Matroska cannot take mid-file.
    H264,
    /// Opus in WebM.
    Opus,
}

impl RecordedCodec {
    /// File extension of its chunks.
    pub fn extension(self) -> &'static str {
        match self {
            RecordedCodec::H264 => "ts",
            _ => "webm",
        }
    }

    /// Audio or video.
    pub fn kind(self) -> TrackKind {
        match self {
            RecordedCodec::Opus => TrackKind::Audio,
            _ => TrackKind::Video,
        }
    }
}

/// One chunk in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Number (0, 1, …).
    pub seq: u32,
    /// Its object key.
    pub key: String,
    /// Start on the call's timeline, ms after the call started.
    pub start_ms: u64,
    /// Length in ms.
    pub duration_ms: u64,
}

/// `index.json` of one track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackIndex {
    /// [`INDEX_SCHEMA`].
    pub schema: u32,
    /// Meeting.
    pub meeting_id: String,
    /// Participant identity.
    pub participant: String,
    /// Track name (`audio-{mid}`, `video-{mid}`).
    pub track: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Codec of the chunks.
    pub codec: RecordedCodec,
    /// Chunks in order.
    pub chunks: Vec<ChunkEntry>,
}

/// Where one track's objects go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackPlace {
    meeting: String,
    participant: String,
    track: String,
}

impl TrackPlace {
    /// The place of `participant`'s `track` in `meeting`; every part must be a valid key
    /// component (identities and meeting ids are).
    pub fn new(meeting: &str, participant: &str, track: &str) -> Result<TrackPlace, StoreError> {
        ObjectKey::from_parts(&["recordings", meeting, participant, track])?;
        Ok(TrackPlace {
            meeting: meeting.to_string(),
            participant: participant.to_string(),
            track: track.to_string(),
        })
    }

    fn key(&self, file: &str) -> Result<ObjectKey, StoreError> {
        ObjectKey::from_parts(&[
            "recordings",
            &self.meeting,
            &self.participant,
            &self.track,
            file,
        ])
    }

    /// Key of chunk `seq`.
    pub fn chunk_key(&self, seq: u32, codec: RecordedCodec) -> Result<ObjectKey, StoreError> {
        self.key(&format!("{seq:05}.{}", codec.extension()))
    }

    /// Key of the index.
    pub fn index_key(&self) -> Result<ObjectKey, StoreError> {
        self.key("index.json")
    }

    /// An empty index for this track.
    pub fn index(&self, codec: RecordedCodec) -> TrackIndex {
        TrackIndex {
            schema: INDEX_SCHEMA,
            meeting_id: self.meeting.clone(),
            participant: self.participant.clone(),
            track: self.track.clone(),
            kind: codec.kind(),
            codec,
            chunks: Vec::new(),
        }
    }
}

/// The prefix of everything recorded for `meeting`.
pub fn meeting_prefix(meeting: &str) -> String {
    format!("recordings/{meeting}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_index_have_stable_keys() {
        let place = TrackPlace::new("9f3a", "alice", "video-1").unwrap();
        assert_eq!(
            place.chunk_key(7, RecordedCodec::Vp8).unwrap().as_str(),
            "recordings/9f3a/alice/video-1/00007.webm"
        );
        assert_eq!(
            place.chunk_key(0, RecordedCodec::H264).unwrap().as_str(),
            "recordings/9f3a/alice/video-1/00000.ts"
        );
        assert_eq!(
            place.index_key().unwrap().as_str(),
            "recordings/9f3a/alice/video-1/index.json"
        );
        assert!(place
            .index_key()
            .unwrap()
            .as_str()
            .starts_with(&meeting_prefix("9f3a")));
        assert!(TrackPlace::new("9f3a", "..", "audio-0").is_err());
        let mut index = place.index(RecordedCodec::Opus);
        assert_eq!(index.kind, TrackKind::Audio);
        index.chunks.push(ChunkEntry {
            seq: 0,
            key: "k".into(),
            start_ms: 1200,
            duration_ms: 4000,
        });
        let json = serde_json::to_value(&index).unwrap();
        assert_eq!(json["codec"], "opus");
        assert_eq!(json["chunks"][0]["start_ms"], 1200);
        let back: TrackIndex = serde_json::from_value(json).unwrap();
        assert_eq!(back, index);
    }
}
