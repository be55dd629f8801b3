//! Taps: where the SFU copies a room's forwarded media besides its subscribers — the recorder
//! and the restreamer. Both take the same thing: every participant's audio and the best video
//! layer each one sends, as one continuous RTP stream per track (the SFU's `RECORDER` place in
//! the forwarding table), plus who the active speaker is.

use std::fmt;
use std::sync::Arc;

use crate::recording::index::RecordedCodec;

/// One RTP packet of a tapped track, as forwarded (rewritten to one continuous stream).
#[derive(Debug, Clone)]
pub struct TappedPacket {
    /// Participant identity.
    pub publisher: String,
    /// Track name (`audio-{mid}`, `video-{mid}`).
    pub track: String,
    /// Codec.
    pub codec: RecordedCodec,
    /// Payload type.
    pub pt: u8,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload.
    pub payload: Arc<[u8]>,
}

impl TappedPacket {
    /// The packet as bytes: a 12-byte RTP header (SSRC 1) and the payload.
    pub fn to_rtp(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.pt & 0x7f));
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Whether this is an audio packet.
    pub fn is_audio(&self) -> bool {
        self.codec == RecordedCodec::Opus
    }
}

/// What consumes a tap. Called on the SFU's thread: implementations only queue.
pub trait PacketSink: Send + Sync {
    /// What it is, for logs.
    fn label(&self) -> String;
    /// A forwarded packet.
    fn send(&self, packet: TappedPacket);
    /// The room's active speaker changed.
    fn active_speaker(&self, _participant: &str) {}
}

/// Why a room is tapped (a room has at most one tap of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TapPurpose {
    /// Call recording.
    Record,
    /// Restreaming to the CDN.
    Restream,
}

/// A shared [`PacketSink`].
#[derive(Clone)]
pub struct Tap(Arc<dyn PacketSink>);

impl Tap {
    /// Wrap a sink.
    pub fn new(sink: impl PacketSink + 'static) -> Tap {
        Tap(Arc::new(sink))
    }

    /// Whether both are the same sink.
    pub fn same(&self, other: &Tap) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl PartialEq for Tap {
    fn eq(&self, other: &Tap) -> bool {
        self.same(other)
    }
}

impl std::ops::Deref for Tap {
    type Target = dyn PacketSink;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_become_rtp_with_a_fixed_ssrc() {
        let p = TappedPacket {
            publisher: "a".into(),
            track: "video-0".into(),
            codec: RecordedCodec::Vp8,
            pt: 96,
            clock_rate: 90_000,
            seq: 0x1234,
            timestamp: 0xdead_beef,
            marker: true,
            payload: Arc::from(&[1u8, 2, 3][..]),
        };
        assert_eq!(
            p.to_rtp(),
            vec![
                0x80,
                0x80 | 96,
                0x12,
                0x34,
                0xde,
                0xad,
                0xbe,
                0xef,
                0,
                0,
                0,
                1,
                1,
                2,
                3
            ]
        );
        assert!(!p.is_audio());
    }
}
