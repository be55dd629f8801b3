//! One rendition's rolling window: segments built from CMAF chunks (LL-HLS parts), the open
//! segment being produced, init segments per discontinuity. Pure.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tidecast_common::{CmafChunk, RenditionInfo};

use crate::cmaf::TrackInfo;

/// One part (CMAF chunk).
#[derive(Debug, Clone)]
pub struct StoredPart {
    /// The chunk bytes.
    pub data: Bytes,
    /// Duration.
    pub duration: Duration,
    /// Starts with a sync sample (the first part of a segment).
    pub independent: bool,
}

/// One media segment: complete, or the open one still receiving parts.
#[derive(Debug, Clone)]
pub struct StoredSegment {
    /// Media sequence number.
    pub msn: u64,
    /// Discontinuity sequence (session index within the stream).
    pub disc: u64,
    /// Presentation time of its first sample on the session's media timeline.
    pub pts: Duration,
    /// Duration (sum of its parts).
    pub duration: Duration,
    /// `EXT-X-PROGRAM-DATE-TIME`.
    pub program_date_time: SystemTime,
    /// Samples (frames) in it.
    pub samples: u32,
    /// Its parts in order.
    pub parts: Vec<StoredPart>,
    /// The whole segment (all parts), set once complete.
    pub data: Bytes,
    /// No more parts will come.
    pub complete: bool,
}

/// Why a chunk was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRejected {
    /// The rendition has no init segment for the current session yet.
    NoInit,
    /// A continuation chunk without a segment to continue.
    NoOpenSegment,
}

/// A rendition's track.
#[derive(Debug)]
pub struct RenditionTrack {
    /// Declared by the ladder.
    pub declared: RenditionInfo,
    /// Parsed from the init segment.
    pub info: Option<TrackInfo>,
    /// Init segment per discontinuity sequence.
    pub inits: BTreeMap<u64, Bytes>,
    /// Retained segments, oldest first; the last one may be open.
    pub segments: VecDeque<StoredSegment>,
    /// Next media sequence number.
    pub next_msn: u64,
    /// Discontinuity sequence new segments get.
    pub disc: u64,
    /// Longest segment seen (for `EXT-X-TARGETDURATION`, which must not shrink).
    pub max_duration: Duration,
    /// `mfhd` sequence number of the next chunk: +1 per chunk (part) over the stream's life.
    pub next_fragment: u32,
}

impl RenditionTrack {
    /// A new track whose first segment gets `next_msn`.
    pub fn new(declared: RenditionInfo, next_msn: u64, disc: u64) -> Self {
        RenditionTrack {
            declared,
            info: None,
            inits: BTreeMap::new(),
            segments: VecDeque::new(),
            next_msn,
            disc,
            max_duration: Duration::ZERO,
            next_fragment: 1,
        }
    }

    /// Add a chunk; `keep` is how many complete segments to retain.
    /// Returns the media sequence number of the segment the chunk completed, if it did.
    pub fn push_chunk(
        &mut self,
        chunk: CmafChunk,
        keep: usize,
    ) -> Result<Option<u64>, ChunkRejected> {
        if !self.inits.contains_key(&self.disc) {
            return Err(ChunkRejected::NoInit);
        }
        let mut closed = None;
        if chunk.starts_segment {
            closed = self.close_open();
            self.segments.push_back(StoredSegment {
                msn: self.next_msn,
                disc: self.disc,
                pts: chunk.pts,
                duration: Duration::ZERO,
                program_date_time: chunk.program_date_time,
                samples: 0,
                parts: Vec::new(),
                data: Bytes::new(),
                complete: false,
            });
            self.next_msn += 1;
        }
        let open = self
            .segments
            .back_mut()
            .filter(|s| !s.complete)
            .ok_or(ChunkRejected::NoOpenSegment)?;
        open.duration += chunk.duration;
        open.samples += chunk.samples;
        let data = crate::cmaf::with_fragment_sequence(&chunk.data, self.next_fragment);
        self.next_fragment = self.next_fragment.wrapping_add(1);
        open.parts.push(StoredPart {
            data,
            duration: chunk.duration,
            independent: chunk.starts_segment,
        });
        while self.segments.len() > keep + 1 {
            self.segments.pop_front();
        }
        let oldest_disc = self.segments.front().map(|s| s.disc).unwrap_or(self.disc);
        self.inits
            .retain(|d, _| *d >= oldest_disc || *d == self.disc);
        Ok(closed)
    }

    /// Complete the open segment (the next one started, or the session ended); returns its
    /// media sequence number.
    pub fn close_open(&mut self) -> Option<u64> {
        let open = self.segments.back_mut().filter(|s| !s.complete)?;
        {
            let mut data = BytesMut::with_capacity(open.parts.iter().map(|p| p.data.len()).sum());
            for p in &open.parts {
                data.extend_from_slice(&p.data);
            }
            open.data = data.freeze();
            open.complete = true;
            self.max_duration = self.max_duration.max(open.duration);
        }
        Some(open.msn)
    }

    /// Complete segments, oldest first.
    pub fn complete(&self) -> impl DoubleEndedIterator<Item = &StoredSegment> + Clone {
        self.segments.iter().filter(|s| s.complete)
    }

    /// The segment being produced, if any.
    pub fn open(&self) -> Option<&StoredSegment> {
        self.segments.back().filter(|s| !s.complete)
    }

    /// Any segment (complete or open) by media sequence number.
    pub fn any_segment(&self, msn: u64) -> Option<&StoredSegment> {
        let first = self.segments.front()?.msn;
        let s = self.segments.get(msn.checked_sub(first)? as usize)?;
        (s.msn == msn).then_some(s)
    }

    /// A complete segment by media sequence number.
    pub fn segment(&self, msn: u64) -> Option<&StoredSegment> {
        self.any_segment(msn).filter(|s| s.complete)
    }

    /// A part by segment number and index.
    pub fn part(&self, msn: u64, index: usize) -> Option<&StoredPart> {
        self.any_segment(msn)?.parts.get(index)
    }

    /// The newest part: (msn, index).
    pub fn last_part(&self) -> Option<(u64, usize)> {
        let s = self.segments.back()?;
        Some((s.msn, s.parts.len().checked_sub(1)?))
    }

    /// The part after the newest one: where a preload hint points.
    pub fn next_part(&self) -> (u64, usize) {
        match self.open() {
            Some(open) => (open.msn, open.parts.len()),
            None => (self.next_msn, 0),
        }
    }

    /// Will part `index` of segment `msn` still be produced (while the rendition is live)? The
    /// open segment's next parts and the next segment's first part are — a preload hint points
    /// at either; anything further ahead, or behind and not in the window, is not.
    pub fn is_coming(&self, msn: u64, index: usize) -> bool {
        let (next_msn, next_index) = self.next_part();
        (msn, index) >= (next_msn, next_index)
            && (msn == next_msn || (msn == next_msn + 1 && index == 0))
    }

    /// Where a preload hint should point: the next part of the open segment, or the first part
    /// of the next segment when the open one has (about) reached the target duration — the
    /// ladder cuts there, so another part of this segment is not coming.
    pub fn hinted_part(&self, target: Duration, part: Duration) -> (u64, usize) {
        match self.open() {
            Some(open) if target.saturating_sub(open.duration) < part / 2 => (open.msn + 1, 0),
            _ => self.next_part(),
        }
    }

    /// Has the part (msn, index) been produced? An index past the end of a complete segment
    /// means the next segment's first part (RFC 8216bis 6.2.5.2).
    pub fn has_part(&self, msn: u64, index: usize) -> bool {
        match self.any_segment(msn) {
            Some(s) if index < s.parts.len() => true,
            Some(s) if s.complete => self
                .any_segment(msn + 1)
                .is_some_and(|n| !n.parts.is_empty()),
            Some(_) => false,
            None => self.segments.front().is_some_and(|f| msn < f.msn),
        }
    }

    /// Is the segment `msn` complete (or already gone from the window)?
    pub fn has_segment(&self, msn: u64) -> bool {
        match self.any_segment(msn) {
            Some(s) => s.complete,
            None => self.segments.front().is_some_and(|f| msn < f.msn),
        }
    }

    /// Media sequence number of the newest complete segment.
    pub fn last_complete_msn(&self) -> Option<u64> {
        self.complete().next_back().map(|s| s.msn)
    }

    /// Peak and average bitrate (bits/s) over complete segments; declared bitrate when none.
    pub fn bitrates(&self) -> (u64, u64) {
        let mut peak = 0u64;
        let (mut bytes, mut secs) = (0u64, 0f64);
        for s in self.complete() {
            let d = s.duration.as_secs_f64();
            if d < 0.05 {
                continue;
            }
            peak = peak.max((s.data.len() as f64 * 8.0 / d) as u64);
            bytes += s.data.len() as u64;
            secs += d;
        }
        if secs == 0.0 {
            return (self.declared.bitrate_bps, self.declared.bitrate_bps);
        }
        (peak, (bytes as f64 * 8.0 / secs) as u64)
    }

    /// Frames per second measured over complete segments of the current session.
    pub fn frame_rate(&self) -> Option<f64> {
        let (mut frames, mut secs) = (0u64, 0f64);
        for s in self.complete().filter(|s| s.disc == self.disc) {
            frames += u64::from(s.samples);
            secs += s.duration.as_secs_f64();
        }
        (secs > 0.0 && frames > 0).then(|| snap_frame_rate(frames as f64 / secs))
    }
}

/// Measured rates jitter by a frame over a window; report the nominal rate when within 0.05%.
fn snap_frame_rate(measured: f64) -> f64 {
    const NOMINAL: [f64; 9] = [23.976, 24.0, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94, 60.0];
    NOMINAL
        .iter()
        .copied()
        .filter(|n| (measured - n).abs() / n < 0.0005)
        .min_by(|a, b| (measured - a).abs().total_cmp(&(measured - b).abs()))
        .unwrap_or((measured * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tidecast_common::TrackKind;

    fn track() -> RenditionTrack {
        let mut t = RenditionTrack::new(
            RenditionInfo {
                name: "720p".into(),
                kind: TrackKind::Video,
                bitrate_bps: 1,
                width: 1280,
                height: 720,
            },
            10,
            0,
        );
        t.inits.insert(0, Bytes::from_static(b"init"));
        t
    }

    fn chunk(starts: bool) -> CmafChunk {
        CmafChunk {
            data: Bytes::from_static(b"part"),
            pts: Duration::ZERO,
            duration: Duration::from_millis(500),
            program_date_time: SystemTime::UNIX_EPOCH,
            samples: 15,
            starts_segment: starts,
        }
    }

    #[test]
    fn chunks_build_segments() {
        let mut t = track();
        assert_eq!(
            t.push_chunk(chunk(false), 5),
            Err(ChunkRejected::NoOpenSegment)
        );
        for i in 0..4 {
            t.push_chunk(chunk(i == 0), 5).unwrap();
        }
        assert_eq!(t.open().map(|s| (s.msn, s.parts.len())), Some((10, 4)));
        assert!(t.segment(10).is_none());
        assert_eq!(t.next_part(), (10, 4));
        let (target, part) = (Duration::from_secs(2), Duration::from_millis(500));
        assert_eq!(
            t.hinted_part(target, part),
            (11, 0),
            "2 s reached: next segment"
        );
        assert!(t.has_part(10, 3) && !t.has_part(10, 4));
        // the hinted next segment is coming although segment 10 is still open
        assert!(t.is_coming(10, 4) && t.is_coming(11, 0));
        assert!(!t.is_coming(11, 1) && !t.is_coming(12, 0) && !t.is_coming(10, 3));
        assert!(!t.is_coming(9, 0), "behind the window");
        t.push_chunk(chunk(true), 5).unwrap();
        let s = t.segment(10).unwrap();
        assert_eq!(s.duration, Duration::from_millis(2000));
        assert_eq!(&s.data[..], b"partpartpartpart");
        assert_eq!(t.frame_rate(), Some(30.0));
        // an index past a complete segment's end is the next segment's part 0
        assert!(t.has_part(10, 4));
        assert!(!t.has_part(11, 1));
        assert!(t.has_segment(10) && !t.has_segment(11));
        assert_eq!(t.last_part(), Some((11, 0)));
        assert_eq!(t.part(10, 0).map(|p| p.independent), Some(true));
        assert_eq!(t.part(10, 1).map(|p| p.independent), Some(false));
    }

    #[test]
    fn retains_keep_complete_plus_open() {
        let mut t = track();
        for _ in 0..10 {
            t.push_chunk(chunk(true), 3).unwrap();
        }
        assert_eq!(t.segments.len(), 4);
        assert_eq!(t.segments.front().map(|s| s.msn), Some(16));
        assert!(t.has_part(2, 0), "long gone parts count as produced");
    }

    #[test]
    fn needs_init() {
        let mut t = track();
        t.inits.clear();
        assert_eq!(t.push_chunk(chunk(true), 3), Err(ChunkRejected::NoInit));
    }

    #[test]
    fn frame_rate_snaps_to_nominal() {
        assert_eq!(snap_frame_rate(29.999), 30.0);
        assert_eq!(snap_frame_rate(29.971), 29.97);
        assert_eq!(snap_frame_rate(12.5), 12.5);
    }
}
