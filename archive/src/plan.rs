//! What to assemble (pure): the `call.ended` event as the archiver reads it, whether the store
//! has every chunk it announced, and the plan — one tile of a grid per participant (join order)
//! with its video chunks, every audio track, each placed on the call's timeline.

use serde::Serialize;
use tidecast_rooms::recording::index::{TrackIndex, TrackKind};

/// Most participants the grid shows (a room holds 16 by default).
pub const MAX_TILES: usize = 64;

pub use tidecast_rooms::call_events::{Attendee, CallEnded, SCHEMA_VERSION as SCHEMA};

/// Why an event can never be assembled (it goes to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    /// Not JSON of the expected shape.
    #[error("not a call.ended event: {0}")]
    Malformed(String),
    /// A schema this archiver does not know.
    #[error("call.ended schema {0} is not supported (this archiver reads {SCHEMA})")]
    Schema(u32),
    /// A meeting id that cannot name objects or files.
    #[error("meeting id {0:?} is not [A-Za-z0-9_-]")]
    MeetingId(String),
}

/// Read a `call.ended` payload.
pub fn parse_event(payload: &[u8]) -> Result<CallEnded, Poison> {
    let event: CallEnded =
        serde_json::from_slice(payload).map_err(|e| Poison::Malformed(e.to_string()))?;
    if event.kind != "call.ended" {
        return Err(Poison::Malformed(format!("type {:?}", event.kind)));
    }
    if event.schema != SCHEMA {
        return Err(Poison::Schema(event.schema));
    }
    let id = &event.meeting_id;
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Poison::MeetingId(id.clone()));
    }
    Ok(event)
}

/// A rectangle of the output picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tile {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// `n` tiles of a `width`×`height` picture: the smallest square-ish grid (columns first), row
/// by row. Sizes are even (encoders want that).
pub fn grid(n: usize, width: u32, height: u32) -> Vec<Tile> {
    let n = n.max(1);
    let cols = (1..).find(|c| c * c >= n).unwrap_or(1);
    let rows = n.div_ceil(cols);
    let (w, h) = ((width / cols as u32) & !1, (height / rows as u32) & !1);
    (0..n)
        .map(|i| Tile {
            x: (i % cols) as u32 * w,
            y: (i / cols) as u32 * h,
            width: w,
            height: h,
        })
        .collect()
}

/// One recorded track in the plan: its chunks in order and where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedTrack {
    /// Object keys of its chunks, in order.
    pub chunks: Vec<String>,
    /// File extension of the chunks.
    pub extension: &'static str,
    /// Start on the call's timeline, ms.
    pub start_ms: u64,
}

/// One participant's tile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedTile {
    /// Identity.
    pub participant: String,
    /// Where.
    pub tile: Tile,
    /// Its video (none: the tile stays black).
    pub video: Option<PlannedTrack>,
}

/// The assembly of one meeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Meeting.
    pub meeting_id: String,
    /// Output size.
    pub width: u32,
    /// Output size.
    pub height: u32,
    /// One per participant, in join order.
    pub tiles: Vec<PlannedTile>,
    /// Every audio track (mixed).
    pub audio: Vec<PlannedTrack>,
}

/// Not every announced chunk is in the store yet (still in a rooms node's spool): try later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{have} of {want} chunks in the store so far")]
pub struct NotReady {
    /// Chunks the indexes list.
    pub have: u64,
    /// Chunks `call.ended` announced.
    pub want: u64,
}

fn planned(index: &TrackIndex) -> Option<PlannedTrack> {
    let first = index.chunks.first()?;
    Some(PlannedTrack {
        chunks: index.chunks.iter().map(|c| c.key.clone()).collect(),
        extension: index.codec.extension(),
        start_ms: first.start_ms,
    })
}

/// The plan for `event` from the track indexes in the store; [`NotReady`] while they list
/// fewer chunks than the event announced (an index is written after its chunk, so what an
/// index lists is there).
pub fn plan(
    event: &CallEnded,
    indexes: &[TrackIndex],
    width: u32,
    height: u32,
) -> Result<Plan, NotReady> {
    let have: u64 = indexes.iter().map(|i| i.chunks.len() as u64).sum();
    if have < event.chunks {
        return Err(NotReady {
            have,
            want: event.chunks,
        });
    }
    // participants in join order; anyone recorded but not listed goes after them
    let mut people: Vec<String> = event.participants.iter().map(|a| a.id.clone()).collect();
    for i in indexes {
        if !people.contains(&i.participant) {
            people.push(i.participant.clone());
        }
    }
    let video_of = |id: &str| {
        let mut videos: Vec<&TrackIndex> = indexes
            .iter()
            .filter(|i| i.participant == id && i.kind == TrackKind::Video)
            .collect();
        videos.sort_by(|a, b| a.track.cmp(&b.track));
        videos.first().and_then(|i| planned(i))
    };
    // only people with a recorded track get a tile; a grid has room for MAX_TILES
    people.retain(|id| indexes.iter().any(|i| &i.participant == id));
    people.truncate(MAX_TILES);
    let tiles = grid(people.len(), width, height)
        .into_iter()
        .zip(&people)
        .map(|(tile, id)| PlannedTile {
            participant: id.clone(),
            tile,
            video: video_of(id),
        })
        .collect();
    let mut audio: Vec<&TrackIndex> = indexes
        .iter()
        .filter(|i| i.kind == TrackKind::Audio)
        .collect();
    audio.sort_by(|a, b| (&a.participant, &a.track).cmp(&(&b.participant, &b.track)));
    Ok(Plan {
        meeting_id: event.meeting_id.clone(),
        width,
        height,
        tiles,
        audio: audio.into_iter().filter_map(planned).collect(),
    })
}

/// Key of the assembled recording.
pub fn recording_key(meeting: &str) -> String {
    format!("recordings/{meeting}/recording.mp4")
}

/// Key of its manifest (written last: its presence means the recording is complete).
pub fn manifest_key(meeting: &str) -> String {
    format!("recordings/{meeting}/manifest.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidecast_rooms::recording::index::{ChunkEntry, RecordedCodec, TrackPlace};

    fn event(chunks: u64) -> Vec<u8> {
        serde_json::json!({
            "schema": 1, "type": "call.ended", "meeting_id": "m1", "room": "r",
            "participants": [{"id": "b", "name": "B"}, {"id": "a", "name": "A"}, {"id": "c", "name": "C"}],
            "started_at": "x", "ended_at": "y", "duration_ms": 15000, "reason": "empty",
            "chunks": chunks,
        })
        .to_string()
        .into_bytes()
    }

    fn index(who: &str, track: &str, codec: RecordedCodec, starts: &[u64]) -> TrackIndex {
        let place = TrackPlace::new("m1", who, track).unwrap();
        let mut i = place.index(codec);
        for (n, s) in starts.iter().enumerate() {
            i.chunks.push(ChunkEntry {
                seq: n as u32,
                key: place.chunk_key(n as u32, codec).unwrap().to_string(),
                start_ms: *s,
                duration_ms: 4000,
            });
        }
        i
    }

    #[test]
    fn events_are_read_or_poison() {
        assert_eq!(parse_event(&event(3)).unwrap().chunks, 3);
        assert!(matches!(parse_event(b"{"), Err(Poison::Malformed(_))));
        let v2 = String::from_utf8(event(3))
            .unwrap()
            .replace("\"schema\":1", "\"schema\":2");
        assert_eq!(parse_event(v2.as_bytes()), Err(Poison::Schema(2)));
        let bad = String::from_utf8(event(3))
            .unwrap()
            .replace("\"m1\"", "\"../x\"");
        assert!(matches!(
            parse_event(bad.as_bytes()),
            Err(Poison::MeetingId(_))
        ));
    }

    #[test]
    fn grids_fit_everyone() {
        assert_eq!(
            grid(1, 1280, 720),
            vec![Tile {
                x: 0,
                y: 0,
                width: 1280,
                height: 720
            }]
        );
        let g = grid(3, 1280, 720);
        assert_eq!(g.len(), 3);
        assert_eq!(
            g[1],
            Tile {
                x: 640,
                y: 0,
                width: 640,
                height: 360
            }
        );
        assert_eq!(
            g[2],
            Tile {
                x: 0,
                y: 360,
                width: 640,
                height: 360
            }
        );
        let g = grid(5, 1280, 720);
        assert_eq!(
            (g[4].x, g[4].y, g[4].width, g[4].height),
            (426, 360, 426, 360)
        );
    }

    #[test]
    fn plans_wait_for_every_chunk_and_keep_join_order() {
        let e = parse_event(&event(5)).unwrap();
        let mut indexes = vec![
            index("a", "video-1", RecordedCodec::Vp8, &[1200, 5200]),
            index("a", "audio-0", RecordedCodec::Opus, &[900]),
            index("b", "audio-0", RecordedCodec::Opus, &[800]),
        ];
        assert_eq!(
            plan(&e, &indexes, 1280, 720),
            Err(NotReady { have: 4, want: 5 })
        );
        indexes.push(index("b", "video-1", RecordedCodec::H264, &[1000]));
        let p = plan(&e, &indexes, 1280, 720).unwrap();
        // b joined first; c recorded nothing and gets no tile
        let who: Vec<&str> = p.tiles.iter().map(|t| t.participant.as_str()).collect();
        assert_eq!(who, ["b", "a"]);
        assert_eq!(p.tiles[0].tile.width, 640);
        let b_video = p.tiles[0].video.as_ref().unwrap();
        assert_eq!((b_video.extension, b_video.start_ms), ("ts", 1000));
        assert_eq!(p.tiles[1].video.as_ref().unwrap().chunks.len(), 2);
        assert_eq!(p.audio.len(), 2);
        assert_eq!(p.audio[0].start_ms, 900);
        assert_eq!(recording_key("m1"), "recordings/m1/recording.mp4");
    }
}
