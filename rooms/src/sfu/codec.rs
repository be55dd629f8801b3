//! What the SFU needs to know about an RTP payload without decoding it: whether a packet starts
//! a keyframe (a layer switch may happen only there), a VP8 keyframe's size, and extended
//! sequence numbers for the outgoing streams. Pure functions over bytes from the network: every
//! length is checked, nothing panics on short or hostile input.

/// Video codecs the SFU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 7741 payload).
    Vp8,
    /// H.264 (RFC 6184 payload).
    H264,
}

/// Whether this RTP payload is the first packet of a keyframe.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => {
            vp8_frame_header(payload).is_some_and(|h| h.first().is_some_and(|b| b & 1 == 0))
        }
        VideoCodec::H264 => h264_starts_keyframe(payload),
    }
}

/// The VP8 frame header of a packet that starts a frame (S bit set, partition 0), after the
/// payload descriptor.
fn vp8_frame_header(payload: &[u8]) -> Option<&[u8]> {
    let b0 = *payload.first()?;
    let extended = b0 & 0x80 != 0;
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x0f;
    if !start || partition != 0 {
        return None;
    }
    let mut i = 1;
    if extended {
        let x = *payload.get(1)?;
        i = 2;
        if x & 0x80 != 0 {
            // picture id, 7 or 15 bits
            let m = *payload.get(i)? & 0x80 != 0;
            i += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / KEYIDX
        }
    }
    payload.get(i..).filter(|h| !h.is_empty())
}

/// Width and height of a VP8 keyframe, from its first packet.
pub fn vp8_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let h = vp8_frame_header(payload)?;
    if h.len() < 10 || h[0] & 1 != 0 || h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([h[6], h[7]]) & 0x3fff;
    let ht = u16::from_le_bytes([h[8], h[9]]) & 0x3fff;
    Some((w, ht))
}

fn h264_is_key_nal(nal_type: u8) -> bool {
    // IDR slice, or a sequence parameter set (Chrome sends SPS/PPS right before an IDR)
    nal_type == 5 || nal_type == 7
}

fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    match b0 & 0x1f {
        24 => {
            // STAP-A: 16-bit size + NAL unit, repeated
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[i], payload[i + 1]]));
                i += 2;
                if size == 0 {
                    return false;
                }
                if payload.get(i).is_some_and(|n| h264_is_key_nal(n & 0x1f)) {
                    return true;
                }
                i += size;
            }
            false
        }
        28 => {
            // FU-A: the start fragment of a key NAL unit
            payload
                .get(1)
                .is_some_and(|fu| fu & 0x80 != 0 && h264_is_key_nal(fu & 0x1f))
        }
        t => h264_is_key_nal(t),
    }
}

/// Extends 16-bit sequence numbers to 64 bits (the rollover counter SRTP needs), following
/// reordering within half the range.
#[derive(Debug, Clone, Default)]
pub struct SeqExtender {
    last: Option<u64>,
}

impl SeqExtender {
    /// The extended form of `seq`.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let Some(last) = self.last else {
            self.last = Some(u64::from(seq));
            return u64::from(seq);
        };
        let last16 = last as u16;
        let delta = seq.wrapping_sub(last16);
        let ext = if delta < 0x8000 {
            last + u64::from(delta)
        } else {
            // older than the last one (reordered)
            last.saturating_sub(u64::from(last16.wrapping_sub(seq)))
        };
        self.last = Some(self.last.map_or(ext, |l| l.max(ext)));
        ext
    }
}

/// Packets lost on one incoming stream, from its extended sequence numbers: a packet still
/// missing once the stream has moved [`LossWindow::SPAN`] packets past it is counted lost, so a
/// reordered or retransmitted packet that arrives within that span is not.
#[derive(Debug, Clone, Default)]
pub struct LossWindow {
    /// highest sequence number seen
    highest: Option<u64>,
    /// bit `i` set: `highest - i` arrived
    seen: u64,
}

impl LossWindow {
    /// How far behind the highest packet a late one still counts as arrived.
    pub const SPAN: u64 = 64;

    /// A packet with extended sequence number `seq` arrived; returns how many packets became
    /// lost by it (those that fell out of the window unseen).
    pub fn arrived(&mut self, seq: u64) -> u64 {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.seen = u64::MAX; // nothing before the first packet is missing
            return 0;
        };
        if seq <= highest {
            let behind = highest - seq;
            if behind < Self::SPAN {
                self.seen |= 1 << behind;
            }
            return 0;
        }
        let advance = seq - highest;
        // the bits pushed out of the window by the advance: unseen ones are lost
        let lost = if advance >= Self::SPAN {
            u64::from((!self.seen).count_ones()) + (advance - Self::SPAN)
        } else {
            let leaving = self.seen >> (Self::SPAN - advance);
            let mask = (1u64 << advance) - 1;
            u64::from((!leaving & mask).count_ones())
        };
        self.seen = if advance >= Self::SPAN {
            1
        } else {
            (self.seen << advance) | 1
        };
        self.highest = Some(seq);
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 keyframe's first packet as Chrome sends it: extended descriptor with a 15-bit
    /// picture id, then the frame tag, start code and 640×360.
    fn vp8_key() -> Vec<u8> {
        vec![
            0x90, 0x80, 0x81, 0x23, // X S, I, picture id 0x0123 (M)
            0x50, 0x2a, 0x00, // frame tag, keyframe (P = 0)
            0x9d, 0x01, 0x2a, // start code
            0x80, 0x02, 0x68, 0x01, // 640, 360
            0xaa,
        ]
    }

    #[test]
    fn vp8_keyframes_and_their_size() {
        let key = vp8_key();
        assert!(starts_keyframe(VideoCodec::Vp8, &key));
        assert_eq!(vp8_keyframe_size(&key), Some((640, 360)));
        let mut delta = key.clone();
        delta[4] |= 1; // P = 1: interframe
        assert!(!starts_keyframe(VideoCodec::Vp8, &delta));
        assert_eq!(vp8_keyframe_size(&delta), None);
        let mut middle = key.clone();
        middle[0] &= !0x10; // not the start of the frame
        assert!(!starts_keyframe(VideoCodec::Vp8, &middle));
        // no extension: frame header right after one byte
        let plain = [
            0x10, 0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00,
        ];
        assert!(starts_keyframe(VideoCodec::Vp8, &plain));
        assert_eq!(vp8_keyframe_size(&plain), Some((320, 180)));
    }

    #[test]
    fn h264_keyframes_in_every_packetisation() {
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0x88])); // IDR
        assert!(starts_keyframe(VideoCodec::H264, &[0x67, 0x42])); // SPS
        assert!(!starts_keyframe(VideoCodec::H264, &[0x41, 0x9a])); // non-IDR slice
                                                                    // STAP-A with SPS, PPS
        assert!(starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]
        ));
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x02, 0x41, 0x9a]
        ));
        // FU-A start of an IDR, and its continuation
        assert!(starts_keyframe(VideoCodec::H264, &[0x7c, 0x85, 0x88]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7c, 0x05, 0x88]));
    }

    #[test]
    fn hostile_payloads_do_not_panic() {
        for len in 0..24 {
            for fill in [0x00u8, 0xff, 0x90, 0x78, 0x7c] {
                let p = vec![fill; len];
                let _ = starts_keyframe(VideoCodec::Vp8, &p);
                let _ = starts_keyframe(VideoCodec::H264, &p);
                let _ = vp8_keyframe_size(&p);
            }
        }
        // STAP-A claiming a huge unit
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0xff, 0xff, 0x41]
        ));
    }

    #[test]
    fn sequence_numbers_extend_across_rollover_and_reordering() {
        let mut x = SeqExtender::default();
        assert_eq!(x.extend(65_534), 65_534);
        assert_eq!(x.extend(65_535), 65_535);
        assert_eq!(x.extend(0), 65_536);
        assert_eq!(x.extend(65_535), 65_535); // late packet
        assert_eq!(x.extend(1), 65_537);
        assert_eq!(x.extend(5), 65_541);
    }

    #[test]
    fn a_packet_is_lost_once_the_stream_is_a_window_past_it() {
        let mut w = LossWindow::default();
        let mut lost = 0;
        for seq in (1000..1010).chain(1011..1020) {
            lost += w.arrived(seq);
        }
        assert_eq!(lost, 0, "1010 may still come");
        // 1010 arrives late (reordered or retransmitted): not lost
        assert_eq!(w.arrived(1010), 0);
        for seq in 1020..1200 {
            if seq != 1100 && seq != 1101 {
                lost += w.arrived(seq);
            }
        }
        assert_eq!(lost, 2, "1100 and 1101 never came");
        // a jump past the whole window: what it skipped is lost, the last SPAN - 1 of them once
        // the stream moves on past them too
        assert_eq!(
            w.arrived(1399),
            200 - LossWindow::SPAN,
            "1200..1334 of 1200..1398"
        );
        assert_eq!(w.arrived(1399 + LossWindow::SPAN), LossWindow::SPAN - 1);
        // duplicates and very old packets change nothing
        assert_eq!(w.arrived(1000), 0);
        assert_eq!(w.arrived(1399 + LossWindow::SPAN), 0);
    }
}
