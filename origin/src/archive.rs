//! The archive core: follows what the packager completes and says which objects to write to the
//! object store, so every session of every stream ends up as VOD under
//! `vod/{stream}/{session}/` — `master.m3u8`, `manifest.mpd`, `session.json` and per rendition
//! `init.mp4`, `{msn}.m4s` and `media.m3u8` (an `EVENT` playlist while live, `VOD` with
//! `EXT-X-ENDLIST` once the session is over). Pure: the shell ([`crate::archiver`]) does the I/O.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tidecast_common::spool::StoreWrite;
use tidecast_common::store::ObjectKey;
use tidecast_common::TrackKind;
use tracing::warn;

use crate::cmaf::TrackInfo;
use crate::dash;
use crate::packager::{PackagerOutput, StreamTable};
use crate::playlist::{self, RenditionSummary};

/// One archived segment.
#[derive(Debug, Clone, Copy)]
struct SegmentMeta {
    msn: u64,
    pts: Duration,
    duration: Duration,
    program_date_time: SystemTime,
    bytes: u64,
    samples: u32,
}

#[derive(Debug)]
struct RenditionRecord {
    kind: TrackKind,
    info: Option<TrackInfo>,
    segments: Vec<SegmentMeta>,
}

impl RenditionRecord {
    fn summary<'a>(&'a self, name: &'a str) -> Option<RenditionSummary<'a>> {
        let info = self.info.as_ref()?;
        let total: Duration = self.segments.iter().map(|s| s.duration).sum();
        let bits =
            |bytes: u64, d: Duration| (bytes as f64 * 8.0 / d.as_secs_f64().max(0.001)) as u64;
        let peak = self
            .segments
            .iter()
            .map(|s| bits(s.bytes, s.duration))
            .max()?;
        let average = bits(self.segments.iter().map(|s| s.bytes).sum(), total);
        let samples: u64 = self.segments.iter().map(|s| u64::from(s.samples)).sum();
        let frame_rate = (self.kind == TrackKind::Video && !total.is_zero())
            .then(|| (samples as f64 / total.as_secs_f64() * 1000.0).round() / 1000.0);
        Some(RenditionSummary {
            name,
            kind: self.kind,
            info,
            peak,
            average,
            frame_rate,
        })
    }
}

#[derive(Debug)]
struct SessionRecord {
    started_at: SystemTime,
    renditions: BTreeMap<String, RenditionRecord>,
}

/// Sessions being archived, keyed by (stream, session).
#[derive(Debug, Default)]
pub struct ArchiveRecorder {
    sessions: HashMap<(String, u64), SessionRecord>,
}

/// The key prefix of a session's archive.
pub fn session_prefix(
    stream: &str,
    session: u64,
) -> Result<ObjectKey, tidecast_common::StoreError> {
    ObjectKey::from_parts(&["vod", stream, &session.to_string()])
}

fn key(stream: &str, session: u64, rest: &[&str]) -> Option<ObjectKey> {
    let session = session.to_string();
    let mut parts = vec!["vod", stream, session.as_str()];
    parts.extend_from_slice(rest);
    match ObjectKey::from_parts(&parts) {
        Ok(k) => Some(k),
        Err(e) => {
            warn!(stream, "not archived: {e}");
            None
        }
    }
}

fn secs3(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// A media playlist of a whole session: `EVENT` while it grows, `VOD` + `EXT-X-ENDLIST` when done.
fn media_playlist(segments: &[SegmentMeta], ended: bool) -> Option<String> {
    let first = segments.first()?;
    let longest = segments
        .iter()
        .map(|s| s.duration)
        .max()
        .unwrap_or_default();
    let mut out = String::with_capacity(64 * segments.len() + 256);
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:7");
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    let _ = writeln!(
        out,
        "#EXT-X-TARGETDURATION:{}",
        (longest.as_secs_f64().round() as u64).max(1)
    );
    let _ = writeln!(
        out,
        "#EXT-X-PLAYLIST-TYPE:{}",
        if ended { "VOD" } else { "EVENT" }
    );
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", first.msn);
    let _ = writeln!(out, "#EXT-X-MAP:URI=\"init.mp4\"");
    let _ = writeln!(
        out,
        "#EXT-X-PROGRAM-DATE-TIME:{}",
        tidecast_common::time::rfc3339_millis(first.program_date_time)
    );
    for s in segments {
        let _ = writeln!(out, "#EXTINF:{},", secs3(s.duration));
        let _ = writeln!(out, "{}.m4s", s.msn);
    }
    if ended {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    }
    Some(out)
}

impl ArchiveRecorder {
    /// Sessions currently followed.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The writes for what the packager just completed; `table` is its state right after.
    pub fn on_outputs(
        &mut self,
        table: &StreamTable,
        outputs: Vec<PackagerOutput>,
    ) -> Vec<StoreWrite> {
        let mut writes = Vec::new();
        for output in outputs {
            match output {
                PackagerOutput::Init {
                    stream,
                    session,
                    rendition,
                } => self.on_init(table, &stream, session, &rendition, &mut writes),
                PackagerOutput::SegmentCompleted {
                    stream,
                    session,
                    rendition,
                    msn,
                } => self.on_segment(table, &stream, session, &rendition, msn, &mut writes),
                PackagerOutput::SessionEnded { stream, session } => {
                    self.on_end(&stream, session, &mut writes)
                }
            }
        }
        writes
    }

    fn on_init(
        &mut self,
        table: &StreamTable,
        stream: &str,
        session: u64,
        rendition: &str,
        writes: &mut Vec<StoreWrite>,
    ) {
        let Some(s) = table.get(stream) else { return };
        let Some(track) = s.rendition(rendition) else {
            return;
        };
        let Some(data) = track.inits.get(&track.disc) else {
            return;
        };
        let record = self
            .sessions
            .entry((stream.to_string(), session))
            .or_insert_with(|| SessionRecord {
                started_at: s.started_at,
                renditions: BTreeMap::new(),
            });
        record.renditions.insert(
            rendition.to_string(),
            RenditionRecord {
                kind: track.declared.kind,
                info: track.info.clone(),
                segments: Vec::new(),
            },
        );
        if let Some(key) = key(stream, session, &[rendition, "init.mp4"]) {
            writes.push(StoreWrite {
                key,
                data: data.clone(),
            });
        }
    }

    fn on_segment(
        &mut self,
        table: &StreamTable,
        stream: &str,
        session: u64,
        rendition: &str,
        msn: u64,
        writes: &mut Vec<StoreWrite>,
    ) {
        let Some(record) = self
            .sessions
            .get_mut(&(stream.to_string(), session))
            .and_then(|r| r.renditions.get_mut(rendition))
        else {
            return;
        };
        let Some(seg) = table
            .get(stream)
            .and_then(|s| s.rendition(rendition))
            .and_then(|t| t.segment(msn))
        else {
            return;
        };
        record.segments.push(SegmentMeta {
            msn,
            pts: seg.pts,
            duration: seg.duration,
            program_date_time: seg.program_date_time,
            bytes: seg.data.len() as u64,
            samples: seg.samples,
        });
        let msn_file = format!("{msn}.m4s");
        if let Some(key) = key(stream, session, &[rendition, &msn_file]) {
            writes.push(StoreWrite {
                key,
                data: seg.data.clone(),
            });
        }
        // the growing playlist goes after its segment, so it never lists a missing object
        if let (Some(key), Some(text)) = (
            key(stream, session, &[rendition, "media.m3u8"]),
            media_playlist(&record.segments, false),
        ) {
            writes.push(StoreWrite {
                key,
                data: Bytes::from(text),
            });
        }
    }

    fn on_end(&mut self, stream: &str, session: u64, writes: &mut Vec<StoreWrite>) {
        let Some(record) = self.sessions.remove(&(stream.to_string(), session)) else {
            return;
        };
        let mut put = |rest: &[&str], text: String| {
            if let Some(key) = key(stream, session, rest) {
                writes.push(StoreWrite {
                    key,
                    data: Bytes::from(text),
                });
            }
        };
        for (name, r) in &record.renditions {
            if let Some(text) = media_playlist(&r.segments, true) {
                put(&[name, "media.m3u8"], text);
            }
        }
        let summaries: Vec<RenditionSummary<'_>> = record
            .renditions
            .iter()
            .filter_map(|(name, r)| r.summary(name))
            .collect();
        if let Some(text) = playlist::master_of(&summaries) {
            put(&["master.m3u8"], text);
        }
        let tracks: Vec<_> = summaries
            .iter()
            .filter_map(|s| {
                let r = record.renditions.get(s.name)?;
                let segs = r
                    .segments
                    .iter()
                    .map(|m| (m.msn, m.pts, m.duration))
                    .collect();
                Some((s.clone(), segs))
            })
            .collect();
        if let Some(text) = dash::vod_mpd(&tracks) {
            put(&["manifest.mpd"], text);
        }
        let duration = summaries
            .iter()
            .filter_map(|s| record.renditions.get(s.name))
            .map(|r| r.segments.iter().map(|m| m.duration).sum::<Duration>())
            .max()
            .unwrap_or_default();
        let meta = serde_json::json!({
            "stream": stream,
            "session": session,
            "started_at": tidecast_common::time::rfc3339_millis(record.started_at),
            "duration_secs": duration.as_secs_f64(),
            "renditions": summaries.iter().map(|s| s.name).collect::<Vec<_>>(),
            "master": format!("/vod/{stream}/{session}/master.m3u8"),
            "manifest": format!("/vod/{stream}/{session}/manifest.mpd"),
        });
        put(&["session.json"], meta.to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::packager::tests::{end, push, settings, start};

    fn keys(writes: &[StoreWrite]) -> Vec<String> {
        writes.iter().map(|w| w.key.to_string()).collect()
    }

    #[test]
    fn session_archived_as_vod() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        let mut rec = ArchiveRecorder::default();
        start(&mut t, 1, now);
        let w = step(&mut rec, &mut t);
        assert_eq!(keys(&w), vec!["vod/s/1/720p/init.mp4"]);
        push(&mut t, 3, now);
        let w = step(&mut rec, &mut t);
        // segments 0 and 1 completed (2 still open), each followed by the growing playlist
        assert_eq!(
            keys(&w),
            vec![
                "vod/s/1/720p/0.m4s",
                "vod/s/1/720p/media.m3u8",
                "vod/s/1/720p/1.m4s",
                "vod/s/1/720p/media.m3u8"
            ]
        );
        assert_eq!(w[2].data.len(), 4 * 62_500);
        let event = std::str::from_utf8(&w[3].data).unwrap();
        assert!(event.contains("#EXT-X-PLAYLIST-TYPE:EVENT\n"), "{event}");
        assert!(!event.contains("ENDLIST"), "{event}");
        end(&mut t, "s", 1, now);
        let w = step(&mut rec, &mut t);
        assert_eq!(
            keys(&w),
            vec![
                "vod/s/1/720p/2.m4s",
                "vod/s/1/720p/media.m3u8",
                "vod/s/1/720p/media.m3u8",
                "vod/s/1/master.m3u8",
                "vod/s/1/manifest.mpd",
                "vod/s/1/session.json"
            ]
        );
        let vod = std::str::from_utf8(&w[2].data).unwrap();
        assert!(vod.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"), "{vod}");
        assert!(vod.trim_end().ends_with("#EXT-X-ENDLIST"), "{vod}");
        let parsed = m3u8_rs::parse_media_playlist_res(vod.as_bytes()).unwrap();
        assert_eq!(parsed.segments.len(), 3);
        assert!(parsed.end_list);
        let master = std::str::from_utf8(&w[3].data).unwrap();
        assert!(master.contains("RESOLUTION=1280x720"), "{master}");
        assert!(master.contains("FRAME-RATE=30"), "{master}");
        let mpd = std::str::from_utf8(&w[4].data).unwrap();
        assert!(
            mpd.contains(r#"type="static" mediaPresentationDuration="PT6.000S""#),
            "{mpd}"
        );
        assert!(mpd.contains(r#"<S t="0" d="180000" r="2"/>"#), "{mpd}");
        assert_eq!(rec.sessions(), 0);
    }

    fn step(rec: &mut ArchiveRecorder, t: &mut StreamTable) -> Vec<StoreWrite> {
        let outputs = t.take_outputs();
        rec.on_outputs(t, outputs)
    }
}
