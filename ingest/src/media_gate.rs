//! Between "publish accepted" and "ladder running": collect the first tags until the stream's
//! shape is known (H.264 decoder configuration, whether AAC audio follows), then hand the ladder
//! an FLV stream. Pure: no sockets, no clock.

use bytes::Bytes;

use crate::flv::{self, AudioPacket, AvcInfo, VideoPacket};
use crate::IngestError;

/// Tags held back before the ladder starts, at most.
const MAX_PENDING_TAGS: usize = 1500;
/// Media time after the video header without an audio header before we start video-only.
const AUDIO_WAIT_MS: u32 = 1000;

/// What to do with a media message.
#[derive(Debug)]
pub enum GateOutput {
    /// Held back (or dropped as useless); nothing to do yet.
    Pending,
    /// Start the ladder with this shape and feed it `flv` (header + held tags).
    Start {
        /// Source video.
        avc: AvcInfo,
        /// Keyframe interval observed before starting (only measured when asked to, see
        /// [`MediaGate::measure_gop`]); `None` when not measured or longer than the limit.
        gop_ms: Option<u32>,
        /// AAC audio present.
        has_audio: bool,
        /// FLV header followed by every held tag.
        flv: Vec<Bytes>,
    },
    /// The ladder runs: feed it this FLV tag.
    Forward(Bytes),
}

/// Per-publisher gate state.
#[derive(Debug, Default)]
pub struct MediaGate {
    base_ts: Option<u32>,
    avc: Option<AvcInfo>,
    video_header_ts: u32,
    has_audio_header: bool,
    pending: Vec<Bytes>,
    started: bool,
    /// Metadata said whether audio exists (`onMetaData` `audiocodecid`/`stereo`…).
    audio_expected: Option<bool>,
    /// Hold the start until the keyframe interval is known, up to this long (ms).
    gop_limit_ms: Option<u32>,
    first_keyframe: Option<u32>,
    gop_ms: Option<u32>,
    gop_decided: bool,
}

impl MediaGate {
    /// Wait (at most `limit_ms` of media) for a second keyframe, so the ladder can decide
    /// passthrough from the GOP the encoder really sends.
    pub fn measure_gop(&mut self, limit_ms: u32) {
        self.gop_limit_ms = Some(limit_ms);
    }

    /// Tell the gate what `onMetaData` announced.
    pub fn set_audio_expected(&mut self, expected: bool) {
        self.audio_expected = Some(expected);
    }

    fn rebase(&mut self, ts: u32) -> u32 {
        let base = *self.base_ts.get_or_insert(ts);
        let delta = ts.wrapping_sub(base) as i32;
        delta.max(0) as u32
    }

    /// A video message (FLV video tag body) at RTMP timestamp `ts`.
    pub fn on_video(&mut self, ts: u32, data: &Bytes) -> Result<GateOutput, IngestError> {
        match flv::parse_video(data)? {
            VideoPacket::Unsupported(codec) => {
                return Err(IngestError::Media(format!(
                    "video codec id {codec} is not supported, publish H.264"
                )))
            }
            VideoPacket::AvcSequenceHeader(record) => {
                let info = flv::parse_avc_config(record)?;
                if let Some(prev) = self.avc {
                    if self.started && (prev.width, prev.height) != (info.width, info.height) {
                        return Err(IngestError::Media(format!(
                            "resolution changed mid-stream from {}x{} to {}x{}; reconnect to change it",
                            prev.width, prev.height, info.width, info.height
                        )));
                    }
                }
                self.avc = Some(info);
                let t = self.rebase(ts);
                self.video_header_ts = t;
                return self.hold_or_forward(flv::tag(flv::TAG_VIDEO, t, data));
            }
            VideoPacket::AvcNalus { keyframe } => {
                let t = self.rebase(ts);
                if keyframe && !self.started && self.avc.is_some() {
                    match self.first_keyframe {
                        None => self.first_keyframe = Some(t),
                        Some(first) if !self.gop_decided && t > first => {
                            self.gop_ms = Some(t - first);
                            self.gop_decided = true;
                        }
                        _ => {}
                    }
                }
                if let (Some(limit), Some(first)) = (self.gop_limit_ms, self.first_keyframe) {
                    if !self.gop_decided && t.saturating_sub(first) > limit {
                        self.gop_decided = true; // longer than the limit: no passthrough
                    }
                }
            }
            VideoPacket::AvcEndOfSequence => {}
        }
        let t = self.rebase(ts);
        let tag = flv::tag(flv::TAG_VIDEO, t, data);
        if !self.started && self.avc.is_none() {
            // frames before the decoder configuration cannot be decoded
            return Ok(GateOutput::Pending);
        }
        let wait_over = t.saturating_sub(self.video_header_ts) >= AUDIO_WAIT_MS;
        if !self.started && wait_over && !self.has_audio_header {
            self.audio_expected = Some(false);
        }
        self.hold_or_forward(tag)
    }

    /// An audio message (FLV audio tag body) at RTMP timestamp `ts`.
    pub fn on_audio(&mut self, ts: u32, data: &Bytes) -> Result<GateOutput, IngestError> {
        match flv::parse_audio(data)? {
            AudioPacket::Unsupported(format) => {
                return Err(IngestError::Media(format!(
                    "audio format {format} is not supported, publish AAC"
                )))
            }
            AudioPacket::AacSequenceHeader(_) => {
                if self.started && !self.has_audio_header {
                    // audio appeared after a video-only start; the ladder has no audio branch
                    return Ok(GateOutput::Pending);
                }
                self.has_audio_header = true;
            }
            AudioPacket::AacRaw => {
                if !self.has_audio_header {
                    return Ok(GateOutput::Pending);
                }
            }
        }
        let t = self.rebase(ts);
        self.hold_or_forward(flv::tag(flv::TAG_AUDIO, t, data))
    }

    fn hold_or_forward(&mut self, tag: Bytes) -> Result<GateOutput, IngestError> {
        if self.started {
            return Ok(GateOutput::Forward(tag));
        }
        self.pending.push(tag);
        if self.pending.len() > MAX_PENDING_TAGS {
            return Err(IngestError::Media(
                "no usable H.264 decoder configuration in the first tags".into(),
            ));
        }
        let Some(avc) = self.avc else {
            return Ok(GateOutput::Pending);
        };
        let audio_known = self.has_audio_header || self.audio_expected == Some(false);
        let gop_known = self.gop_limit_ms.is_none() || self.gop_decided;
        if !audio_known || !gop_known {
            return Ok(GateOutput::Pending);
        }
        self.started = true;
        let mut flv = Vec::with_capacity(self.pending.len() + 1);
        flv.push(flv::file_header(self.has_audio_header, true));
        flv.append(&mut self.pending);
        Ok(GateOutput::Start {
            avc,
            gop_ms: self.gop_ms,
            has_audio: self.has_audio_header,
            flv,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc_header() -> Bytes {
        let sps: &[u8] = &[
            0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
        ];
        let mut v = vec![
            0x17,
            0,
            0,
            0,
            0,
            1,
            0x64,
            0,
            0x1f,
            0xff,
            0xe1,
            0,
            sps.len() as u8,
        ];
        v.extend_from_slice(sps);
        v.extend_from_slice(&[1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb]);
        Bytes::from(v)
    }

    #[test]
    fn starts_once_video_and_audio_headers_are_seen() {
        let mut g = MediaGate::default();
        assert!(matches!(
            g.on_video(1000, &avc_header()).unwrap(),
            GateOutput::Pending
        ));
        let aac = Bytes::from_static(&[0xaf, 0, 0x12, 0x10]);
        match g.on_audio(1000, &aac).unwrap() {
            GateOutput::Start {
                avc,
                has_audio,
                flv,
                ..
            } => {
                assert_eq!(avc.height, 720);
                assert!(has_audio);
                assert_eq!(flv.len(), 3);
                // rebased: first tag at 0
                assert_eq!(&flv[1][4..8], &[0, 0, 0, 0]);
            }
            other => panic!("expected start, got {other:?}"),
        }
        let frame = Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41]);
        match g.on_video(1033, &frame).unwrap() {
            GateOutput::Forward(tag) => assert_eq!(&tag[4..7], &[0, 0, 33]),
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn video_only_starts_after_a_second() {
        let mut g = MediaGate::default();
        g.on_video(0, &avc_header()).unwrap();
        let key = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]);
        assert!(matches!(
            g.on_video(500, &key).unwrap(),
            GateOutput::Pending
        ));
        match g.on_video(1000, &key).unwrap() {
            GateOutput::Start { has_audio, flv, .. } => {
                assert!(!has_audio);
                assert_eq!(flv.len(), 4);
            }
            other => panic!("expected start, got {other:?}"),
        }
    }

    #[test]
    fn measures_gop_before_starting() {
        let aac = Bytes::from_static(&[0xaf, 0, 0x12, 0x10]);
        let key = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]);
        let delta = Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41]);
        // 2 s GOP: starts at the second keyframe with gop 2000
        let mut g = MediaGate::default();
        g.measure_gop(4000);
        g.on_video(0, &avc_header()).unwrap();
        assert!(matches!(g.on_audio(0, &aac).unwrap(), GateOutput::Pending));
        assert!(matches!(g.on_video(0, &key).unwrap(), GateOutput::Pending));
        assert!(matches!(
            g.on_video(1000, &delta).unwrap(),
            GateOutput::Pending
        ));
        match g.on_video(2000, &key).unwrap() {
            GateOutput::Start { gop_ms, .. } => assert_eq!(gop_ms, Some(2000)),
            other => panic!("expected start, got {other:?}"),
        }
        // 8 s GOP (OBS "auto"): gives up after the limit, no GOP
        let mut g = MediaGate::default();
        g.measure_gop(4000);
        g.on_video(0, &avc_header()).unwrap();
        g.on_audio(0, &aac).unwrap();
        g.on_video(0, &key).unwrap();
        assert!(matches!(
            g.on_video(3000, &delta).unwrap(),
            GateOutput::Pending
        ));
        match g.on_video(4033, &delta).unwrap() {
            GateOutput::Start { gop_ms, .. } => assert_eq!(gop_ms, None),
            other => panic!("expected start, got {other:?}"),
        }
    }

    #[test]
    fn refuses_other_codecs() {
        let mut g = MediaGate::default();
        assert!(g.on_video(0, &Bytes::from_static(&[0x12, 0, 0])).is_err());
        assert!(g.on_audio(0, &Bytes::from_static(&[0x2f, 0])).is_err());
    }
}
