//! Where each video rendition's keyframes, CMAF fragments (segments) and chunks (LL-HLS parts)
//! are cut. The ladder decides and tells `cmafmux` (`manual-split`, a split-now event before the
//! buffer that starts a fragment or chunk), instead of letting `cmafmux` plan them.
//!
//! Why not `cmafmux`'s own planning: in chunk mode gst-plugin-fmp4 0.14.5 can wait for a
//! fragment forever. When a gap in the source's timestamps (frames the publisher dropped, OBS
//! under load; a muxer that wrote late pictures with clamped timestamps) spans the planned
//! fragment end, the last chunk before it drains up to the keyframe that comes after the gap;
//! from then on its "fragment filled" check (a GOP starting after the fragment end ends the
//! fragment) and its drain (which looks for a GOP starting at or before it) disagree on every new
//! buffer, and that rendition outputs nothing more while its input keeps flowing — audio plays
//! on, video freezes for good, nothing is logged.
//!
//! - [`KeyframeCadence`]: a keyframe on the first frame at or after each fragment boundary, the
//!   boundaries a fixed `segment` apart (no drift); every rung sees the same decoded frames, so
//!   every rung cuts at the same PTS.
//! - [`SplitPlan`]: per buffer entering the mux, whether it starts a fragment (a keyframe at least
//!   ~one segment after the fragment's start) or a chunk (the first frame a `part` after the
//!   chunk's start, or one that would take the chunk past LL-HLS `PART-TARGET`: at low frame
//!   rates parts stay within the target the origin announces).
//! - [`SourceKeyframes`]: passthrough mode, keyframes exactly where the source has them.
//!
//! The first two are pure (running times in, decisions out); the pad probes below apply them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;
use tidecast_common::config::part_target;

/// Keyframes on the first frame at or after every `segment` boundary, counted from the first
/// frame. Times in nanoseconds of running time.
#[derive(Debug)]
pub struct KeyframeCadence {
    segment: u64,
    next: Option<u64>,
}

impl KeyframeCadence {
    /// Boundaries `segment` apart.
    pub fn new(segment: Duration) -> KeyframeCadence {
        KeyframeCadence {
            segment: (segment.as_nanos() as u64).max(1),
            next: None,
        }
    }

    /// A frame at `rt`: whether it must be a keyframe. (The first frame is one anyway.)
    pub fn frame(&mut self, rt: u64) -> bool {
        let Some(next) = self.next else {
            self.next = Some(rt.saturating_add(self.segment));
            return false;
        };
        if rt < next {
            return false;
        }
        // the next boundary after this frame, skipping any a gap jumped over
        let passed = (rt - next) / self.segment + 1;
        self.next = Some(next.saturating_add(passed.saturating_mul(self.segment)));
        true
    }
}

/// What starts at a buffer entering the mux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// A new fragment (segment); the buffer is a keyframe.
    Fragment,
    /// A new chunk (part) inside the current fragment.
    Chunk,
}

/// Fragment and chunk starts for one rendition, from its buffers' PTS and keyframe flags.
#[derive(Debug)]
pub struct SplitPlan {
    segment: u64,
    part: Option<u64>,
    /// [`part_target`] of `part`: no chunk grows past it when its frames' lengths are known.
    limit: u64,
    fragment_start: Option<u64>,
    chunk_start: u64,
}

impl SplitPlan {
    /// Fragments of about `segment`, chunks of `part` (none: whole fragments only).
    pub fn new(segment: Duration, part: Option<Duration>) -> SplitPlan {
        SplitPlan {
            segment: segment.as_nanos() as u64,
            part: part.map(|p| (p.as_nanos() as u64).max(1)),
            limit: part.map_or(0, |p| part_target(p).as_nanos() as u64),
            fragment_start: None,
            chunk_start: 0,
        }
    }

    /// A buffer at `pts` lasting `duration` (ns; unknown: `None`): what it starts, if anything.
    /// A keyframe starts a fragment once the current one is within a twentieth of `segment` of
    /// its length (a source whose keyframes come every 1.999 s still gets 2 s segments, not 4 s
    /// ones); a longer GOP makes a longer fragment. A chunk ends before the first frame at or
    /// past `part` from its start, or before a frame that would end past `PART-TARGET`: 30 fps
    /// and 250 ms parts make 267 ms chunks, 5 fps makes 200 ms ones (not 400 ms, over the
    /// 334 ms target); a frame longer than the target is a chunk by itself.
    pub fn buffer(&mut self, pts: u64, duration: Option<u64>, keyframe: bool) -> Option<Split> {
        let Some(fragment_start) = self.fragment_start else {
            if keyframe {
                self.fragment_start = Some(pts);
                self.chunk_start = pts;
            }
            return None;
        };
        let due = fragment_start.saturating_add(self.segment - self.segment / 20);
        if keyframe && pts >= due {
            self.fragment_start = Some(pts);
            self.chunk_start = pts;
            return Some(Split::Fragment);
        }
        let part = self.part?;
        let past = pts >= self.chunk_start.saturating_add(part)
            || duration.is_some_and(|d| {
                pts.saturating_add(d) > self.chunk_start.saturating_add(self.limit)
            });
        if past && pts > self.chunk_start {
            self.chunk_start = pts;
            return Some(Split::Chunk);
        }
        None
    }
}

fn split_now(split: Split) -> gst::Event {
    // gst-plugin-fmp4's "FMP4MuxSplitNow" custom event (manual-split mode)
    gst::event::CustomDownstream::builder(
        gst::Structure::builder("FMP4MuxSplitNow")
            .field("chunk", split == Split::Chunk)
            .build(),
    )
    .build()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn running_time(pad: &gst::Pad, pts: gst::ClockTime) -> Option<gst::ClockTime> {
    let segment = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = segment.segment().downcast_ref::<gst::ClockTime>()?.clone();
    segment.to_running_time(pts)
}

fn force_keyframe(encoder_sink: &gst::Pad) {
    // no running time: the encoder makes the very next frame (this one) a keyframe
    let event = gst_video::DownstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    let _ = encoder_sink.send_event(event);
}

/// Force keyframes on `encoder` by [`KeyframeCadence`].
pub fn force_cadence(encoder: &gst::Element, segment: Duration) {
    let Some(pad) = encoder.static_pad("sink") else {
        return;
    };
    let cadence = Mutex::new(KeyframeCadence::new(segment));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let rt = info
            .buffer()
            .and_then(|b| b.pts())
            .and_then(|pts| running_time(pad, pts));
        if let Some(rt) = rt {
            if lock(&cadence).frame(rt.nseconds()) {
                force_keyframe(pad);
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Cut `mux_input`'s stream (the pad feeding a `cmafmux` with `manual-split`) by [`SplitPlan`].
pub fn split_by_plan(mux_input: &gst::Pad, segment: Duration, part: Option<Duration>) {
    let plan = Mutex::new(SplitPlan::new(segment, part));
    mux_input.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(pts) = buffer.pts() else {
            return gst::PadProbeReturn::Ok;
        };
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let duration = buffer.duration().map(|d| d.nseconds());
        if let Some(split) = lock(&plan).buffer(pts.nseconds(), duration, keyframe) {
            // serialized: the mux sees it right before this buffer
            if let Some(peer) = pad.peer() {
                let _ = peer.send_event(split_now(split));
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// PTS of the source's keyframes, recorded at the parser and turned into forced keyframes at
/// each encoder's input (passthrough mode).
#[derive(Clone, Default)]
pub struct SourceKeyframes(Arc<Mutex<BTreeSet<gst::ClockTime>>>);

impl SourceKeyframes {
    /// Record the keyframes leaving `parser`.
    pub fn watch(&self, parser: &gst::Element) {
        let Some(pad) = parser.static_pad("src") else {
            return;
        };
        let set = self.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_pad, info| {
            if let Some(buffer) = info.buffer() {
                if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                    if let Some(pts) = buffer.pts() {
                        let mut set = lock(&set.0);
                        set.insert(pts);
                        // keep the last minute of keyframes at most
                        while set.len() > 1024 {
                            set.pop_first();
                        }
                    }
                }
            }
            gst::PadProbeReturn::Ok
        });
    }

    /// Make `encoder` put a keyframe on every frame that was one in the source.
    pub fn force_on(&self, encoder: &gst::Element) {
        let Some(pad) = encoder.static_pad("sink") else {
            return;
        };
        let set = self.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let is_key = info
                .buffer()
                .and_then(|b| b.pts())
                .is_some_and(|pts| lock(&set.0).contains(&pts));
            if is_key {
                force_keyframe(pad);
            }
            gst::PadProbeReturn::Ok
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn keyframes_every_segment_without_drift() {
        let mut c = KeyframeCadence::new(ms(2000));
        let forced: Vec<u64> = (0..200u64)
            .map(|i| 21 + i * 100 / 3) // 30 fps starting at 21 ms
            .filter(|&t| c.frame(t * MS))
            .collect();
        // 2 s boundaries from 21 ms: 2021, 4021, 6021 … each on the first frame at or after
        assert_eq!(forced[..3], [2021, 4021, 6021]);
        for (i, t) in forced.iter().enumerate() {
            let boundary = 21 + 2000 * (i as u64 + 1);
            assert!(*t >= boundary && *t < boundary + 34, "{t} vs {boundary}");
        }
    }

    #[test]
    fn a_gap_over_boundaries_forces_one_keyframe_and_keeps_the_cadence() {
        let mut c = KeyframeCadence::new(ms(2000));
        assert!(!c.frame(0));
        assert!(!c.frame(1900 * MS));
        // nothing from 1.9 s to 4.5 s: one keyframe, the next boundary is 6 s
        assert!(c.frame(4500 * MS));
        assert!(!c.frame(5990 * MS));
        assert!(c.frame(6000 * MS));
    }

    #[test]
    fn fragments_start_on_keyframes_and_chunks_every_part() {
        let mut p = SplitPlan::new(ms(2000), Some(ms(250)));
        let mut out = Vec::new();
        for i in 0..130u64 {
            let t = i * 100 / 3; // 30 fps
            let key = i % 60 == 0;
            if let Some(s) = p.buffer(t * MS, Some(33 * MS), key) {
                out.push((t, s));
            }
        }
        let fragments: Vec<u64> = out
            .iter()
            .filter(|(_, s)| *s == Split::Fragment)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(fragments, [2000, 4000]);
        // chunks: the first frame at or after 250 ms past the chunk's start
        let chunks: Vec<u64> = out
            .iter()
            .filter(|(t, s)| *s == Split::Chunk && *t < 2000)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(chunks, [266, 533, 800, 1066, 1333, 1600, 1866]);
    }

    #[test]
    fn low_frame_rates_keep_parts_within_part_target() {
        // 5 fps: 200 ms frames; the frame at 200 ms ends at 400 ms, past PART-TARGET (334 ms),
        // so the chunk ends before it: 200 ms parts, not 400 ms
        let chunks = |duration: Option<u64>| {
            let mut p = SplitPlan::new(ms(2000), Some(ms(250)));
            (0..10u64)
                .filter_map(|i| {
                    let t = i * 200;
                    p.buffer(t * MS, duration, i == 0).map(|_| t)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            chunks(Some(200 * MS)),
            [200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800]
        );
        // frames of unknown length: the first frame at or after the part's end
        assert_eq!(chunks(None), [400, 800, 1200, 1600]);
        // 2 fps: a frame longer than a part is a part by itself
        let mut p = SplitPlan::new(ms(2000), Some(ms(250)));
        assert_eq!(p.buffer(0, Some(500 * MS), true), None);
        assert_eq!(
            p.buffer(500 * MS, Some(500 * MS), false),
            Some(Split::Chunk)
        );
        assert_eq!(
            p.buffer(1000 * MS, Some(500 * MS), false),
            Some(Split::Chunk)
        );
    }

    #[test]
    fn a_gap_does_not_stop_the_fragments() {
        // the case that froze cmafmux's own planning: frames up to 20.309 s, a gap, and the
        // keyframe at 20.714 s after a fragment that started at 18.624 s
        let mut p = SplitPlan::new(ms(2000), Some(ms(250)));
        assert_eq!(p.buffer(18_624 * MS, None, true), None);
        assert_eq!(p.buffer(20_309 * MS, None, false), Some(Split::Chunk));
        assert_eq!(p.buffer(20_714 * MS, None, true), Some(Split::Fragment));
        assert_eq!(p.buffer(20_747 * MS, None, false), None);
        assert_eq!(p.buffer(20_964 * MS, None, false), Some(Split::Chunk));
    }

    #[test]
    fn short_and_long_source_gops() {
        let mut p = SplitPlan::new(ms(2000), None);
        assert_eq!(p.buffer(0, None, true), None);
        // 1 s GOPs: every second keyframe starts a fragment
        assert_eq!(p.buffer(1000 * MS, None, true), None);
        assert_eq!(p.buffer(1999 * MS, None, true), Some(Split::Fragment));
        // a 3 s GOP: one 3 s fragment
        assert_eq!(p.buffer(3500 * MS, None, false), None);
        assert_eq!(p.buffer(4999 * MS, None, true), Some(Split::Fragment));
    }

    #[test]
    fn nothing_before_the_first_keyframe() {
        let mut p = SplitPlan::new(ms(2000), Some(ms(250)));
        assert_eq!(p.buffer(0, None, false), None);
        assert_eq!(p.buffer(500 * MS, None, false), None);
        assert_eq!(p.buffer(600 * MS, None, true), None);
        assert_eq!(p.buffer(900 * MS, None, false), Some(Split::Chunk));
    }
}
