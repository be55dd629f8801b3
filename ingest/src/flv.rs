//! FLV: what RTMP audio/video messages carry, and the FLV byte stream the ladder's `flvdemux`
//! reads. Also parses the AVC decoder configuration record and its SPS (dimensions, profile).

use bytes::{BufMut, Bytes, BytesMut};

use crate::IngestError;

/// FLV tag type for audio.
pub const TAG_AUDIO: u8 = 8;
/// FLV tag type for video.
pub const TAG_VIDEO: u8 = 9;

/// The FLV file header (signature, version 1, audio/video flags) plus the first
/// `PreviousTagSize0`.
pub fn file_header(has_audio: bool, has_video: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    b.put_slice(b"FLV");
    b.put_u8(1);
    b.put_u8((if has_audio { 4 } else { 0 }) | (if has_video { 1 } else { 0 }));
    b.put_u32(9);
    b.put_u32(0);
    b.freeze()
}

/// One FLV tag (header + payload + trailing `PreviousTagSize`). `timestamp_ms` is the
/// 32-bit RTMP timestamp (FLV stores the low 24 bits and an extension byte).
pub fn tag(tag_type: u8, timestamp_ms: u32, payload: &[u8]) -> Bytes {
    let len = payload.len() as u32;
    let mut b = BytesMut::with_capacity(11 + payload.len() + 4);
    b.put_u8(tag_type);
    b.put_uint(u64::from(len & 0x00ff_ffff), 3);
    b.put_uint(u64::from(timestamp_ms & 0x00ff_ffff), 3);
    b.put_u8((timestamp_ms >> 24) as u8);
    b.put_uint(0, 3);
    b.put_slice(payload);
    b.put_u32(11 + len);
    b.freeze()
}

/// What an RTMP video message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoPacket<'a> {
    /// AVC sequence header: an `AVCDecoderConfigurationRecord`.
    AvcSequenceHeader(&'a [u8]),
    /// AVC NAL units (length-prefixed); `keyframe` from the FLV frame type.
    AvcNalus {
        /// FLV frame type 1.
        keyframe: bool,
    },
    /// AVC end of sequence.
    AvcEndOfSequence,
    /// Anything that is not H.264 (codec id given).
    Unsupported(u8),
}

/// Classify an FLV video tag body.
pub fn parse_video(data: &[u8]) -> Result<VideoPacket<'_>, IngestError> {
    let first = *data
        .first()
        .ok_or_else(|| IngestError::Media("empty video message".into()))?;
    if first & 0x80 != 0 {
        // Enhanced RTMP (HEVC/AV1 via FourCC) — not supported by this ladder yet.
        return Ok(VideoPacket::Unsupported(first & 0x0f));
    }
    let codec = first & 0x0f;
    if codec != 7 {
        return Ok(VideoPacket::Unsupported(codec));
    }
    if data.len() < 5 {
        return Err(IngestError::Media("truncated AVC video message".into()));
    }
    match data[1] {
        0 => Ok(VideoPacket::AvcSequenceHeader(&data[5..])),
        1 => Ok(VideoPacket::AvcNalus {
            keyframe: first >> 4 == 1,
        }),
        2 => Ok(VideoPacket::AvcEndOfSequence),
        other => Err(IngestError::Media(format!("bad AVCPacketType {other}"))),
    }
}

/// What an RTMP audio message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioPacket<'a> {
    /// AAC sequence header: the `AudioSpecificConfig`.
    AacSequenceHeader(&'a [u8]),
    /// A raw AAC frame.
    AacRaw,
    /// Not AAC (sound format given).
    Unsupported(u8),
}

/// Classify an FLV audio tag body.
pub fn parse_audio(data: &[u8]) -> Result<AudioPacket<'_>, IngestError> {
    let first = *data
        .first()
        .ok_or_else(|| IngestError::Media("empty audio message".into()))?;
    let format = first >> 4;
    if format != 10 {
        return Ok(AudioPacket::Unsupported(format));
    }
    match data.get(1) {
        Some(0) => Ok(AudioPacket::AacSequenceHeader(&data[2..])),
        Some(1) => Ok(AudioPacket::AacRaw),
        Some(other) => Err(IngestError::Media(format!("bad AACPacketType {other}"))),
        None => Err(IngestError::Media("truncated AAC audio message".into())),
    }
}

/// What the ladder needs to know about the published H.264 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvcInfo {
    /// `profile_idc`.
    pub profile: u8,
    /// Constraint flags byte.
    pub compat: u8,
    /// `level_idc`.
    pub level: u8,
    /// Display width after cropping.
    pub width: u32,
    /// Display height after cropping.
    pub height: u32,
}

impl AvcInfo {
    /// RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile, self.compat, self.level
        )
    }
}

/// Parse an `AVCDecoderConfigurationRecord` (ISO 14496-15) and its first SPS.
pub fn parse_avc_config(record: &[u8]) -> Result<AvcInfo, IngestError> {
    let bad = |why: &str| IngestError::Media(format!("AVC decoder configuration: {why}"));
    if record.len() < 7 || record[0] != 1 {
        return Err(bad("too short or wrong version"));
    }
    let num_sps = record[5] & 0x1f;
    if num_sps == 0 {
        return Err(bad("no SPS"));
    }
    let len = usize::from(u16::from_be_bytes([
        record[6],
        *record.get(7).ok_or_else(|| bad("truncated"))?,
    ]));
    let sps = record.get(8..8 + len).ok_or_else(|| bad("SPS truncated"))?;
    parse_sps(sps)
}

/// Parse an H.264 sequence parameter set NAL unit (with its NAL header byte).
pub fn parse_sps(nal: &[u8]) -> Result<AvcInfo, IngestError> {
    let bad = |why: &str| IngestError::Media(format!("SPS: {why}"));
    if nal.len() < 4 || nal[0] & 0x1f != 7 {
        return Err(bad("not an SPS NAL unit"));
    }
    let rbsp = unescape(&nal[1..]);
    let Some((&[profile, compat, level], rest)) = rbsp.split_first_chunk::<3>() else {
        return Err(bad("truncated"));
    };
    let mut r = BitReader::new(rest);
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            let delta = r.se()?;
                            next = (last + delta + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return Err(bad("too many ref frames in POC cycle"));
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
              // 64-bit from here: every field is attacker-controlled and up to 2^32 - 2
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.bit()?;
    if !frame_mbs_only {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut cl, mut cr, mut ct, mut cb) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? {
        cl = r.ue()?.into();
        cr = r.ue()?.into();
        ct = r.ue()?.into();
        cb = r.ue()?.into();
    }
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let (crop_x, crop_y) = match (chroma_format_idc, separate_colour_plane) {
        (0, _) | (_, true) => (1, field_factor),
        (1, _) => (2, 2 * field_factor),
        (2, _) => (2, field_factor),
        _ => (1, field_factor),
    };
    let width = (width_mbs * 16).checked_sub(crop_x * (cl + cr));
    let height = (field_factor * height_map_units * 16).checked_sub(crop_y * (ct + cb));
    match (width, height) {
        (Some(w @ 1..=16384), Some(h @ 1..=16384)) => Ok(AvcInfo {
            profile,
            compat,
            level,
            width: w as u32,
            height: h as u32,
        }),
        _ => Err(bad("implausible dimensions")),
    }
}

/// Remove emulation-prevention bytes (00 00 03 → 00 00).
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    fn bit(&mut self) -> Result<bool, IngestError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or_else(|| IngestError::Media("SPS: truncated".into()))?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    fn ue(&mut self) -> Result<u32, IngestError> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return Err(IngestError::Media("SPS: bad exp-golomb code".into()));
            }
        }
        let mut value: u64 = 0;
        for _ in 0..zeros {
            value = (value << 1) | u64::from(self.bit()?);
        }
        Ok(((1u64 << zeros) - 1 + value) as u32)
    }

    fn se(&mut self) -> Result<i64, IngestError> {
        let v = i64::from(self.ue()?);
        Ok(if v % 2 == 1 { (v + 1) / 2 } else { -(v / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPS NAL units written by x264 (ffmpeg testsrc, -pix_fmt yuv420p / default yuv444p).
    const SPS_720P: &[u8] = &[
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    const SPS_360P_CROPPED: &[u8] = &[
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03,
        0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2d, 0x96,
    ];
    const SPS_360P_444: &[u8] = &[
        0x67, 0xf4, 0x00, 0x1e, 0x91, 0x9b, 0x28, 0x14, 0x05, 0xff, 0x13, 0x80, 0x88, 0x00, 0x00,
        0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x01, 0xe0, 0x78, 0xb1, 0x6c, 0xb0,
    ];

    #[test]
    fn fuzz_findings_are_errors() {
        // an SPS whose width in macroblocks × 16 overflowed u32 (cargo fuzz, flv_tags)
        let sps = [
            0xc7, 0x36, 0x36, 0x10, 0x36, 0x36, 0x00, 0x31, 0x00, 0x00, 0x00, 0x00, 0xc6, 0xc6,
            0xc6, 0xc6, 0x00,
        ];
        assert!(parse_avc_config(&sps).is_err());
        assert!(
            parse_sps(&[0x67, 0x00, 0x00, 0x03]).is_err(),
            "shorter than 3 bytes unescaped"
        );
    }

    #[test]
    fn parses_sps_dimensions_and_profile() {
        let info = parse_sps(SPS_720P).unwrap();
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(info.codec_string(), "avc1.64001f");
        let info = parse_sps(SPS_360P_CROPPED).unwrap();
        assert_eq!((info.width, info.height), (640, 360));
        let info = parse_sps(SPS_360P_444).unwrap();
        assert_eq!((info.width, info.height, info.profile), (640, 360, 0xf4));
    }

    #[test]
    fn parses_config_record() {
        let mut rec = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0, SPS_720P.len() as u8];
        rec.extend_from_slice(SPS_720P);
        rec.extend_from_slice(&[1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb]);
        let info = parse_avc_config(&rec).unwrap();
        assert_eq!(info.height, 720);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_avc_config(&[1, 2, 3]).is_err());
        assert!(parse_sps(&[0x67, 0x64, 0, 0x1f]).is_err());
        assert!(parse_video(&[]).is_err());
        assert!(parse_audio(&[0xaf]).is_err());
        assert_eq!(
            parse_video(&[0x12, 0]).unwrap(),
            VideoPacket::Unsupported(2)
        );
    }

    #[test]
    fn tag_layout() {
        let t = tag(TAG_VIDEO, 0x0102_0304, &[9, 9]);
        assert_eq!(
            &t[..],
            &[9, 0, 0, 2, 2, 3, 4, 1, 0, 0, 0, 9, 9, 0, 0, 0, 13]
        );
        assert_eq!(&file_header(true, true)[..5], b"FLV\x01\x05");
    }
}
