//! What a bot measures on each track it receives, as a pure core over packets: bitrate, frames,
//! the frame height (from VP8 keyframes) and its changes, freezes, and whether sequence numbers
//! stayed continuous — across layer switches too, which is what the SFU's rewriting promises.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;
use tidecast_rooms::sfu::codec::vp8_keyframe_size;

/// A pause between frames longer than this is a freeze.
pub const FREEZE: Duration = Duration::from_millis(500);

/// Sequence numbers of a gap remembered so that a late arrival is not counted lost.
const MISSING_KEPT: usize = 512;

/// The height received changed (a layer switch, seen by the receiver).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeightChange {
    /// Milliseconds since the track started.
    pub at_ms: u64,
    /// New frame height.
    pub height: u16,
    /// The first packet of the new layer followed the last one of the old without a gap.
    pub continuous: bool,
}

/// One received track.
#[derive(Debug, Clone, Serialize)]
pub struct TrackReport {
    /// Publisher identity (the stream id).
    pub publisher: String,
    /// `audio` or `video`.
    pub kind: String,
    /// Packets received.
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Bitrate over the last second, kbit/s.
    pub kbps: u64,
    /// Frames completed (marker bit).
    pub frames: u64,
    /// Keyframes.
    pub keyframes: u64,
    /// Frame height now (VP8 keyframes; 0 before one).
    pub height: u16,
    /// Height changes.
    pub heights: Vec<HeightChange>,
    /// Packets missing: sequence gaps not filled by a late arrival (as RFC 3550 counts a
    /// receiver's loss, and so comparable with its RTCP reports).
    pub lost: u64,
    /// Packets that arrived after a later one (reordered, or retransmitted after a NACK).
    pub late: u64,
    /// Sequence numbers that went backwards or jumped more than 1000 (a broken rewrite).
    pub discontinuities: u64,
    /// Pauses between frames over 500 ms.
    pub freezes: u64,
    /// Longest pause between frames, ms.
    pub max_frame_gap_ms: u64,
    /// Milliseconds from the start of the bot to the first frame.
    pub first_frame_ms: Option<u64>,
    /// Round-trip time of the connection, ms.
    pub rtt_ms: Option<f64>,
}

/// Builds a [`TrackReport`] from packets.
#[derive(Debug)]
pub struct TrackStats {
    report: TrackReport,
    started: Instant,
    last_seq: Option<u16>,
    /// sequence numbers counted in `lost` that may still arrive (the latest [`MISSING_KEPT`])
    missing: VecDeque<u16>,
    last_frame: Option<Instant>,
    window: (Instant, u64),
    /// the SSRC of the received track these packets come from
    ssrc: u32,
}

impl TrackStats {
    /// A track of `publisher` received with SSRC `ssrc`, started at `started` (the bot's start).
    pub fn new(
        publisher: &str,
        kind: &str,
        ssrc: u32,
        started: Instant,
        now: Instant,
    ) -> TrackStats {
        TrackStats {
            report: TrackReport {
                publisher: publisher.to_string(),
                kind: kind.to_string(),
                packets: 0,
                bytes: 0,
                kbps: 0,
                frames: 0,
                keyframes: 0,
                height: 0,
                heights: Vec::new(),
                lost: 0,
                late: 0,
                discontinuities: 0,
                freezes: 0,
                max_frame_gap_ms: 0,
                first_frame_ms: None,
                rtt_ms: None,
            },
            started,
            ssrc,
            last_seq: None,
            missing: VecDeque::new(),
            last_frame: None,
            window: (now, 0),
        }
    }

    /// These are the stats of the track received with SSRC `ssrc` (not of an earlier one of the
    /// same publisher and kind: a peer-to-peer call's, still draining as the room moves to the SFU).
    pub fn is_of(&self, ssrc: u32) -> bool {
        self.ssrc == ssrc
    }

    /// A packet arrived.
    pub fn packet(&mut self, seq: u16, marker: bool, payload: &[u8], now: Instant) {
        let r = &mut self.report;
        r.packets += 1;
        r.bytes += payload.len() as u64;
        self.window.1 += payload.len() as u64;
        let step = self.last_seq.map(|l| seq.wrapping_sub(l));
        let gap = match step {
            None | Some(1) => false,
            Some(d) if d == 0 || d >= 0x8000 => {
                // a duplicate or reordered packet: not a gap, but not an advance either
                if (0x8000..0xfc18).contains(&d) {
                    r.discontinuities += 1;
                } else if let Some(i) = self.missing.iter().position(|m| *m == seq) {
                    // one of a gap's, late: received after all
                    self.missing.remove(i);
                    r.lost = r.lost.saturating_sub(1);
                    r.late += 1;
                }
                return;
            }
            Some(d) => {
                if d > 1000 {
                    r.discontinuities += 1;
                } else {
                    r.lost += u64::from(d - 1);
                    let last = seq.wrapping_sub(d);
                    for k in 1..d {
                        if self.missing.len() == MISSING_KEPT {
                            self.missing.pop_front();
                        }
                        self.missing.push_back(last.wrapping_add(k));
                    }
                }
                true
            }
        };
        self.last_seq = Some(seq);
        if r.kind == "video" {
            if let Some((_, h)) = vp8_keyframe_size(payload) {
                r.keyframes += 1;
                if h != r.height {
                    r.heights.push(HeightChange {
                        at_ms: now.saturating_duration_since(self.started).as_millis() as u64,
                        height: h,
                        continuous: !gap,
                    });
                    r.height = h;
                }
            }
        }
        if marker || r.kind == "audio" {
            r.frames += 1;
            if r.first_frame_ms.is_none() {
                r.first_frame_ms =
                    Some(now.saturating_duration_since(self.started).as_millis() as u64);
            }
            if let Some(last) = self.last_frame {
                let pause = now.saturating_duration_since(last);
                if pause > FREEZE {
                    r.freezes += 1;
                }
                r.max_frame_gap_ms = r.max_frame_gap_ms.max(pause.as_millis() as u64);
            }
            self.last_frame = Some(now);
        }
        let (since, bytes) = self.window;
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= Duration::from_secs(1) {
            r.kbps = bytes * 8 / elapsed.as_millis().max(1) as u64;
            self.window = (now, 0);
        }
    }

    /// Record the connection's round-trip time.
    pub fn rtt(&mut self, ms: f64) {
        self.report.rtt_ms = Some(ms);
    }

    /// The report so far (bitrate drops to 0 when nothing came for a second).
    pub fn report(&self, now: Instant) -> TrackReport {
        let mut r = self.report.clone();
        if now.saturating_duration_since(self.window.0) > Duration::from_secs(2) {
            r.kbps = 0;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(w: u16, h: u16) -> Vec<u8> {
        let mut v = vec![0x10, 0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a];
        v.extend_from_slice(&w.to_le_bytes());
        v.extend_from_slice(&h.to_le_bytes());
        v
    }

    #[test]
    fn counts_frames_loss_and_continuous_switches() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = TrackStats::new("a", "video", 1, t0, t0);
        s.packet(10, true, &key(320, 180), at(100));
        s.packet(11, true, &[0x10, 0x51], at(133));
        s.packet(12, true, &key(1280, 720), at(166)); // switch, continuous
        s.packet(15, true, &[0x10, 0x51], at(200)); // two lost
        s.packet(16, true, &key(320, 180), at(900)); // switch right after a pause
        let r = s.report(at(900));
        assert_eq!(r.packets, 5);
        assert_eq!(r.frames, 5);
        assert_eq!(r.keyframes, 3);
        assert_eq!(r.lost, 2);
        assert_eq!(r.discontinuities, 0);
        assert_eq!(r.freezes, 1);
        assert_eq!(r.max_frame_gap_ms, 700);
        assert_eq!(r.height, 180);
        assert_eq!(
            r.heights
                .iter()
                .map(|h| (h.height, h.continuous))
                .collect::<Vec<_>>(),
            vec![(180, true), (720, true), (180, true)]
        );
        assert_eq!(r.first_frame_ms, Some(100));
    }

    #[test]
    fn a_late_packet_is_not_lost() {
        let t0 = Instant::now();
        let mut s = TrackStats::new("a", "video", 1, t0, t0);
        for seq in [65_533u16, 65_534, 1, 2, 65_535, 0, 2, 5] {
            s.packet(seq, false, &[0], t0);
        }
        let r = s.report(t0);
        // 65,535 and 0 came after 1 (a NACK's retransmission, say); 3 and 4 never did; the
        // second 2 is a duplicate
        assert_eq!((r.lost, r.late, r.discontinuities), (2, 2, 0));
        s.packet(2, false, &[0], t0);
        assert_eq!(s.report(t0).lost, 2, "a duplicate fills no gap");
    }

    #[test]
    fn a_jump_in_sequence_numbers_is_a_discontinuity() {
        let t0 = Instant::now();
        let mut s = TrackStats::new("a", "video", 1, t0, t0);
        s.packet(100, false, &[0], t0);
        s.packet(30_000, false, &key(640, 360), t0);
        let r = s.report(t0);
        assert_eq!(r.discontinuities, 1);
        assert!(!r.heights[0].continuous);
        s.packet(29_990, false, &[0], t0); // late, ignored
        assert_eq!(s.report(t0).packets, 3);
    }
}
