//! The packager core: live streams, their renditions and the rolling segment window. Pure —
//! events and `now` go in, snapshots for playlists and bytes for segments come out.
//!
//! Media sequence numbers never go back for a stream name: a publisher that comes back starts a
//! new session, every rendition continues from the highest next number of any rendition (so
//! renditions stay aligned) and the first segment of the session carries a discontinuity.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tidecast_common::{CmafChunk, LiveEvent, RenditionInfo};
use tracing::{info, warn};

use crate::cmaf;
pub use crate::window::{RenditionTrack, StoredPart, StoredSegment};

/// Client addresses that asked for a playlist recently.
#[derive(Debug, Default)]
struct ViewerTracker {
    seen: HashMap<IpAddr, Instant>,
}

const VIEWER_WINDOW: Duration = Duration::from_secs(30);

impl ViewerTracker {
    fn touch(&mut self, client: IpAddr, now: Instant) {
        if self.seen.len() > 100_000 {
            self.seen
                .retain(|_, t| now.saturating_duration_since(*t) < VIEWER_WINDOW);
        }
        self.seen.insert(client, now);
    }

    fn count(&self, now: Instant) -> usize {
        self.seen
            .values()
            .filter(|t| now.saturating_duration_since(**t) < VIEWER_WINDOW)
            .count()
    }
}

/// A stream name and everything published under it.
#[derive(Debug)]
pub struct LiveStream {
    /// Stream name.
    pub name: String,
    /// Current (or last) session id.
    pub session: u64,
    /// Number of sessions so far.
    pub sessions: u64,
    /// Wall clock of the current session's start.
    pub started_at: SystemTime,
    /// Wall clock of media time 0 of each session still in the window, by discontinuity
    /// sequence (DASH Period starts; the first is `availabilityStartTime`).
    pub session_starts: BTreeMap<u64, SystemTime>,
    /// Publisher connected and ladder running.
    pub live: bool,
    /// Renditions of the current session, in ladder order.
    pub current: Vec<String>,
    /// All renditions ever seen under this name.
    pub renditions: BTreeMap<String, RenditionTrack>,
    /// Discontinuity sequence of the current session.
    pub disc: u64,
    ended_at: Option<Instant>,
    viewers: ViewerTracker,
}

impl LiveStream {
    /// Ready to be played: every rendition of the current session has an init and a segment.
    pub fn is_ready(&self) -> bool {
        !self.current.is_empty()
            && self.current.iter().all(|r| {
                self.renditions
                    .get(r)
                    .is_some_and(|t| t.info.is_some() && t.complete().any(|s| s.disc == self.disc))
            })
    }

    /// A rendition of the current session.
    pub fn rendition(&self, name: &str) -> Option<&RenditionTrack> {
        self.renditions.get(name)
    }

    /// Viewers seen in the last 30 s.
    pub fn viewers(&self, now: Instant) -> usize {
        self.viewers.count(now)
    }

    /// Record a playlist request from `client`.
    pub fn touch_viewer(&mut self, client: IpAddr, now: Instant) {
        self.viewers.touch(client, now);
    }
}

/// Settings of the segment window.
#[derive(Debug, Clone, Copy)]
pub struct WindowSettings {
    /// Segments listed in a live playlist (without DVR).
    pub window: usize,
    /// DVR: list this much media instead of `window` segments (zero = off).
    pub dvr: Duration,
    /// LL-HLS part target (configured chunk duration); `None` = no parts.
    pub part_target: Option<Duration>,
    /// Segments kept downloadable after leaving the playlist.
    pub grace: usize,
    /// Target segment duration (lower bound for `EXT-X-TARGETDURATION`).
    pub target: Duration,
    /// Forget streams this long after they end.
    pub ended_ttl: Duration,
}

/// Counters the shell exports.
#[derive(Debug, Default, Clone, Copy)]
pub struct PackagerCounters {
    /// Segments started.
    pub segments: u64,
    /// Chunks (parts) accepted.
    pub chunks: u64,
    /// Segment bytes accepted.
    pub segment_bytes: u64,
    /// Events that referred to unknown streams/renditions or carried bad init segments.
    pub rejected: u64,
}

/// What applying events completed, for followers of the packager (the archiver). Drained
/// with [`StreamTable::take_outputs`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PackagerOutput {
    /// A rendition's init segment for the current session was stored.
    Init {
        /// Stream name.
        stream: String,
        /// Session id.
        session: u64,
        /// Rendition name.
        rendition: String,
    },
    /// A segment is complete (still in the window when this is drained).
    SegmentCompleted {
        /// Stream name.
        stream: String,
        /// Session id the segment belongs to.
        session: u64,
        /// Rendition name.
        rendition: String,
        /// Its media sequence number.
        msn: u64,
    },
    /// A session is over: its publisher left, or a new session took the stream over.
    SessionEnded {
        /// Stream name.
        stream: String,
        /// Session id.
        session: u64,
    },
}

/// All streams.
#[derive(Debug)]
pub struct StreamTable {
    settings: WindowSettings,
    streams: BTreeMap<String, LiveStream>,
    counters: PackagerCounters,
    outputs: Vec<PackagerOutput>,
}

impl WindowSettings {
    /// Complete segments a playlist lists.
    pub fn listed_segments(&self) -> usize {
        if self.dvr.is_zero() {
            self.window
        } else {
            let target = self.target.as_secs_f64().max(0.1);
            ((self.dvr.as_secs_f64() / target).ceil() as usize).max(self.window)
        }
    }

    /// Complete segments kept in memory (listed + grace).
    pub fn retained_segments(&self) -> usize {
        self.listed_segments() + self.grace
    }
}

impl StreamTable {
    /// Empty table.
    pub fn new(settings: WindowSettings) -> Self {
        StreamTable {
            settings,
            streams: BTreeMap::new(),
            counters: PackagerCounters::default(),
            outputs: Vec::new(),
        }
    }

    /// Window settings.
    pub fn settings(&self) -> WindowSettings {
        self.settings
    }

    /// What the events applied since the last call completed, in order.
    pub fn take_outputs(&mut self) -> Vec<PackagerOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// Counters so far.
    pub fn counters(&self) -> PackagerCounters {
        self.counters
    }

    /// Look up a stream.
    pub fn get(&self, name: &str) -> Option<&LiveStream> {
        self.streams.get(name)
    }

    /// Look up a stream mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut LiveStream> {
        self.streams.get_mut(name)
    }

    /// All streams.
    pub fn streams(&self) -> impl Iterator<Item = &LiveStream> {
        self.streams.values()
    }

    /// Apply one event from a ladder.
    pub fn apply(&mut self, event: LiveEvent, now: Instant) {
        match event {
            LiveEvent::SessionStarted {
                stream,
                session,
                renditions,
                started_at,
            } => self.start_session(stream, session, renditions, started_at),
            LiveEvent::Init {
                stream,
                session,
                rendition,
                data,
            } if self.is_current(&stream, session) => self.init(&stream, &rendition, data),
            LiveEvent::Chunk {
                stream,
                session,
                rendition,
                chunk,
            } if self.is_current(&stream, session) => self.chunk(&stream, &rendition, chunk),
            LiveEvent::SessionEnded { stream, session } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    if s.session == session && s.live {
                        close_session(s, &mut self.outputs);
                        s.ended_at = Some(now);
                        info!(stream = %stream, session, "stream ended");
                    }
                }
            }
            _ => {}
        }
        self.expire(now);
    }

    fn start_session(
        &mut self,
        stream: String,
        session: u64,
        renditions: Vec<RenditionInfo>,
        started_at: SystemTime,
    ) {
        let s = self
            .streams
            .entry(stream.clone())
            .or_insert_with(|| LiveStream {
                name: stream.clone(),
                session_starts: BTreeMap::new(),
                session,
                sessions: 0,
                started_at,
                live: true,
                current: Vec::new(),
                renditions: BTreeMap::new(),
                disc: 0,
                ended_at: None,
                viewers: ViewerTracker::default(),
            });
        if s.live && s.sessions > 0 {
            // taken over without an end: the old session is over now
            close_session(s, &mut self.outputs);
        }
        let had_media = s.renditions.values().any(|r| !r.segments.is_empty());
        if had_media {
            s.disc += 1;
        }
        let next_msn = s.renditions.values().map(|r| r.next_msn).max().unwrap_or(0);
        let next_fragment = s
            .renditions
            .values()
            .map(|r| r.next_fragment)
            .max()
            .unwrap_or(1);
        for r in s.renditions.values_mut() {
            r.next_msn = next_msn;
            r.disc = s.disc;
            r.next_fragment = next_fragment;
        }
        s.current.clear();
        for info in renditions {
            s.current.push(info.name.clone());
            match s.renditions.get_mut(&info.name) {
                Some(track) => track.declared = info,
                None => {
                    let mut track = RenditionTrack::new(info.clone(), next_msn, s.disc);
                    track.next_fragment = next_fragment;
                    s.renditions.insert(info.name, track);
                }
            }
        }
        s.session = session;
        s.sessions += 1;
        s.started_at = started_at;
        s.session_starts.insert(s.disc, started_at);
        // forget the starts of sessions no rendition holds segments of any more (keep the
        // first: it anchors availabilityStartTime)
        let oldest = s
            .renditions
            .values()
            .filter_map(|r| r.segments.front().map(|x| x.disc))
            .min()
            .unwrap_or(s.disc);
        let first = s.session_starts.keys().next().copied();
        s.session_starts
            .retain(|d, _| *d >= oldest || Some(*d) == first);
        s.live = true;
        s.ended_at = None;
        info!(stream = %stream, session, disc = s.disc, next_msn, "stream session started");
    }

    /// Media of an old session (a late ladder after a takeover) is dropped.
    fn is_current(&mut self, stream: &str, session: u64) -> bool {
        let current = self
            .streams
            .get(stream)
            .is_some_and(|s| s.session == session);
        if !current {
            self.counters.rejected += 1;
            warn!(
                stream,
                session, "media for an unknown stream or an old session, dropped"
            );
        }
        current
    }

    fn track(&mut self, stream: &str, rendition: &str) -> Option<&mut RenditionTrack> {
        let track = self
            .streams
            .get_mut(stream)
            .and_then(|s| s.renditions.get_mut(rendition));
        if track.is_none() {
            self.counters.rejected += 1;
            warn!(
                stream,
                rendition, "media for an unknown stream or rendition"
            );
        }
        track
    }

    fn init(&mut self, stream: &str, rendition: &str, data: Bytes) {
        let parsed = cmaf::parse_init(&data);
        let Some(track) = self.track(stream, rendition) else {
            return;
        };
        match parsed {
            Ok(info) => {
                track.info = Some(info);
                let disc = track.disc;
                track.inits.insert(disc, data);
                let session = self.streams.get(stream).map(|s| s.session).unwrap_or(0);
                self.outputs.push(PackagerOutput::Init {
                    stream: stream.to_string(),
                    session,
                    rendition: rendition.to_string(),
                });
            }
            Err(e) => {
                warn!(stream, rendition, "rejecting init segment: {e}");
                self.counters.rejected += 1;
            }
        }
    }

    fn chunk(&mut self, stream: &str, rendition: &str, chunk: CmafChunk) {
        let keep = self.settings.retained_segments();
        let bytes = chunk.data.len() as u64;
        let starts = chunk.starts_segment;
        let Some(track) = self.track(stream, rendition) else {
            return;
        };
        match track.push_chunk(chunk, keep) {
            Ok(closed) => {
                if let Some(msn) = closed {
                    let session = self.streams.get(stream).map(|s| s.session).unwrap_or(0);
                    self.outputs.push(PackagerOutput::SegmentCompleted {
                        stream: stream.to_string(),
                        session,
                        rendition: rendition.to_string(),
                        msn,
                    });
                }
                self.counters.chunks += 1;
                self.counters.segments += u64::from(starts);
                self.counters.segment_bytes += bytes;
            }
            Err(why) => {
                warn!(stream, rendition, ?why, "chunk dropped");
                self.counters.rejected += 1;
            }
        }
    }

    /// Forget streams that ended longer than `ended_ttl` ago (also done on every event; call it
    /// where time passes without events, e.g. before reporting).
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.settings.ended_ttl;
        self.streams.retain(|_, s| match s.ended_at {
            Some(t) => now.saturating_duration_since(t) < ttl,
            None => true,
        });
    }
}

/// End the current session of `s`: close every open segment, mark it not live.
fn close_session(s: &mut LiveStream, outputs: &mut Vec<PackagerOutput>) {
    for (name, r) in s.renditions.iter_mut() {
        if let Some(msn) = r.close_open() {
            outputs.push(PackagerOutput::SegmentCompleted {
                stream: s.name.clone(),
                session: s.session,
                rendition: name.clone(),
                msn,
            });
        }
    }
    s.live = false;
    outputs.push(PackagerOutput::SessionEnded {
        stream: s.name.clone(),
        session: s.session,
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tidecast_common::TrackKind;

    pub fn video_init() -> Bytes {
        fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
            let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(kind);
            v.extend_from_slice(body);
            v
        }
        let mut entry = vec![0u8; 78];
        entry[24..26].copy_from_slice(&1280u16.to_be_bytes());
        entry[26..28].copy_from_slice(&720u16.to_be_bytes());
        entry.extend(bx(b"avcC", &[1, 0x64, 0x00, 0x1f, 0xff]));
        let mut stsd = vec![0, 0, 0, 0, 0, 0, 0, 1];
        stsd.extend(bx(b"avc1", &entry));
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(b"vide");
        hdlr.extend_from_slice(&[0; 12]);
        let mut mdia = bx(b"hdlr", &hdlr);
        mdia.extend(bx(b"minf", &bx(b"stbl", &bx(b"stsd", &stsd))));
        Bytes::from(bx(b"moov", &bx(b"trak", &bx(b"mdia", &mdia))))
    }

    pub fn settings() -> WindowSettings {
        WindowSettings {
            window: 3,
            dvr: Duration::ZERO,
            part_target: Some(Duration::from_millis(500)),
            grace: 2,
            target: Duration::from_secs(2),
            ended_ttl: Duration::from_secs(60),
        }
    }

    pub fn start(t: &mut StreamTable, session: u64, now: Instant) {
        t.apply(
            LiveEvent::SessionStarted {
                stream: "s".into(),
                session,
                renditions: vec![RenditionInfo {
                    name: "720p".into(),
                    kind: TrackKind::Video,
                    bitrate_bps: 1_000_000,
                    width: 1280,
                    height: 720,
                }],
                started_at: SystemTime::UNIX_EPOCH,
            },
            now,
        );
        t.apply(
            LiveEvent::Init {
                stream: "s".into(),
                session,
                rendition: "720p".into(),
                data: video_init(),
            },
            now,
        );
    }

    /// Push `n` segments of 4 parts of 0.5 s each (the last one stays open until the next
    /// segment starts or the session ends).
    pub fn push(t: &mut StreamTable, n: usize, now: Instant) {
        for i in 0..n as u64 {
            for p in 0..4 {
                push_chunk(t, Duration::from_millis(2000 * i + 500 * p), p == 0, now);
            }
        }
    }

    /// Start the next segment so the open one completes.
    pub fn close(t: &mut StreamTable, now: Instant) {
        push_parts(t, 1, now);
    }

    /// Push only the first `parts` parts of a new segment.
    pub fn push_parts(t: &mut StreamTable, parts: u64, now: Instant) {
        let msn = t
            .get("s")
            .and_then(|s| s.rendition("720p"))
            .map(|r| r.next_msn)
            .unwrap_or(0);
        for p in 0..parts {
            push_chunk(t, Duration::from_millis(2000 * msn + 500 * p), p == 0, now);
        }
    }

    /// One 0.5 s part at `at` of stream `s`'s current session.
    fn push_chunk(t: &mut StreamTable, at: Duration, starts_segment: bool, now: Instant) {
        let session = t.get("s").map(|s| s.session).unwrap_or(0);
        t.apply(
            LiveEvent::Chunk {
                stream: "s".into(),
                session,
                rendition: "720p".into(),
                chunk: CmafChunk {
                    data: Bytes::from(vec![0u8; 62_500]),
                    pts: at,
                    duration: Duration::from_millis(500),
                    program_date_time: SystemTime::UNIX_EPOCH + at,
                    samples: 15,
                    starts_segment,
                },
            },
            now,
        );
    }

    /// The publisher of `stream`'s `session` stops.
    pub fn end(t: &mut StreamTable, stream: &str, session: u64, now: Instant) {
        t.apply(
            LiveEvent::SessionEnded {
                stream: stream.into(),
                session,
            },
            now,
        );
    }

    #[test]
    fn window_retains_window_plus_grace() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 8, now);
        let s = t.get("s").unwrap();
        let r = s.rendition("720p").unwrap();
        // 5 complete (window 3 + grace 2) and the open one
        assert_eq!(r.segments.len(), 6);
        assert_eq!(r.segments.front().unwrap().msn, 2);
        assert!(r.segment(1).is_none());
        assert_eq!(r.segment(6).unwrap().msn, 6);
        assert!(r.segment(7).is_none(), "still open");
        assert_eq!(r.frame_rate(), Some(30.0));
        assert_eq!(r.bitrates(), (1_000_000, 1_000_000));
        assert!(s.is_ready());
    }

    #[test]
    fn reconnect_continues_msn_with_discontinuity() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 3, now);
        end(&mut t, "s", 1, now);
        assert!(!t.get("s").unwrap().live);
        start(&mut t, 2, now);
        assert!(!t.get("s").unwrap().is_ready());
        push(&mut t, 2, now);
        close(&mut t, now);
        let s = t.get("s").unwrap();
        assert!(s.live);
        assert_eq!(s.disc, 1);
        let r = s.rendition("720p").unwrap();
        let msns: Vec<_> = r.complete().map(|x| (x.msn, x.disc)).collect();
        assert_eq!(msns, vec![(0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]);
        assert_eq!(r.inits.len(), 2);
    }

    #[test]
    fn segments_for_unknown_streams_are_rejected() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        push(&mut t, 1, now);
        assert_eq!(t.counters().rejected, 4, "every chunk of the segment");
        assert!(t.get("s").is_none());
    }

    #[test]
    fn ended_streams_expire() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        end(&mut t, "s", 1, now);
        end(&mut t, "x", 1, now + Duration::from_secs(61));
        assert!(t.get("s").is_none());
    }
}
