//! HLS playlist writers (m3u8-rs): the multivariant playlist of a stream and the media playlist
//! of each rendition. Pure functions of the packager state.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use m3u8_rs::{AlternativeMedia, AlternativeMediaType, MasterPlaylist, Resolution, VariantStream};
use tidecast_common::TrackKind;

use crate::cmaf::TrackInfo;
use crate::packager::{LiveStream, RenditionTrack, StoredSegment, WindowSettings};

const AUDIO_GROUP: &str = "aac";

/// URL of a rendition's init segment for discontinuity `disc`: the current one is `init.mp4`,
/// earlier sessions still in the window keep `init-{disc}.mp4`.
pub fn init_uri(track: &RenditionTrack, disc: u64) -> String {
    if disc == track.disc {
        "init.mp4".to_string()
    } else {
        format!("init-{disc}.mp4")
    }
}

/// What the multivariant playlist and the MPD say about one rendition.
#[derive(Debug, Clone)]
pub struct RenditionSummary<'a> {
    /// Rendition name (path component).
    pub name: &'a str,
    /// Video or audio.
    pub kind: TrackKind,
    /// From the init segment: codec string, size, channels.
    pub info: &'a TrackInfo,
    /// Peak segment bitrate, bits/s.
    pub peak: u64,
    /// Average bitrate, bits/s.
    pub average: u64,
    /// Frames per second (video).
    pub frame_rate: Option<f64>,
}

/// The multivariant playlist, or `None` while the stream is not ready.
pub fn master(stream: &LiveStream) -> Option<String> {
    if !stream.is_ready() {
        return None;
    }
    let renditions: Vec<RenditionSummary<'_>> = stream
        .current
        .iter()
        .filter_map(|n| stream.renditions.get(n))
        .filter_map(|t| {
            let (peak, average) = t.bitrates();
            Some(RenditionSummary {
                name: &t.declared.name,
                kind: t.declared.kind,
                info: t.info.as_ref()?,
                peak,
                average,
                frame_rate: t.frame_rate(),
            })
        })
        .collect();
    master_of(&renditions)
}

/// The multivariant playlist of these renditions (video variants highest first, one audio
/// group); `None` without any.
pub fn master_of(renditions: &[RenditionSummary<'_>]) -> Option<String> {
    let audio = renditions.iter().find(|t| t.kind == TrackKind::Audio);
    let (audio_peak, audio_avg) = audio.map(|a| (a.peak, a.average)).unwrap_or((0, 0));
    let mut playlist = MasterPlaylist {
        version: Some(7),
        independent_segments: true,
        ..Default::default()
    };
    if let Some(a) = audio {
        let mut other = HashMap::new();
        if a.info.channels > 0 {
            other.insert(
                "CHANNELS".to_string(),
                m3u8_rs::QuotedOrUnquoted::Quoted(a.info.channels.to_string()),
            );
        }
        playlist.alternatives.push(AlternativeMedia {
            media_type: AlternativeMediaType::Audio,
            uri: Some(format!("{}/media.m3u8", a.name)),
            group_id: AUDIO_GROUP.into(),
            name: "audio".into(),
            default: true,
            autoselect: true,
            other_attributes: (!other.is_empty()).then_some(other),
            ..Default::default()
        });
    }
    let audio_codec = audio.map(|a| a.info.codec.clone());
    let mut videos: Vec<&RenditionSummary<'_>> = renditions
        .iter()
        .filter(|t| t.kind == TrackKind::Video)
        .collect();
    videos.sort_by_key(|t| std::cmp::Reverse(t.info.height));
    for v in videos {
        let codecs = match &audio_codec {
            Some(a) => format!("{},{a}", v.info.codec),
            None => v.info.codec.clone(),
        };
        playlist.variants.push(VariantStream {
            uri: format!("{}/media.m3u8", v.name),
            bandwidth: v.peak + audio_peak,
            average_bandwidth: Some(v.average + audio_avg),
            codecs: Some(codecs),
            resolution: Some(Resolution {
                width: u64::from(v.info.width),
                height: u64::from(v.info.height),
            }),
            frame_rate: v.frame_rate,
            audio: audio.map(|_| AUDIO_GROUP.to_string()),
            ..Default::default()
        });
    }
    if playlist.variants.is_empty() {
        // audio-only stream: the audio rendition is the variant
        let a = audio?;
        playlist.alternatives.clear();
        playlist.variants.push(VariantStream {
            uri: format!("{}/media.m3u8", a.name),
            bandwidth: audio_peak,
            average_bandwidth: Some(audio_avg),
            codecs: Some(a.info.codec.clone()),
            ..Default::default()
        });
    }
    let mut out = Vec::new();
    playlist.write_to(&mut out).ok()?;
    String::from_utf8(out).ok()
}

/// Options of one media playlist request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaOptions {
    /// `_HLS_skip=YES`: a delta update (`EXT-X-SKIP` for old segments).
    pub skip: bool,
}

fn secs3(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `EXT-X-TARGETDURATION`: every EXTINF rounded to the nearest integer must be <= it
/// (RFC 8216 4.3.3.1); never below the configured target.
pub fn target_duration(track: &RenditionTrack, settings: &WindowSettings) -> u64 {
    (track.max_duration.as_secs_f64().round() as u64)
        .max(settings.target.as_secs_f64().ceil() as u64)
        .max(1)
}

/// A rendition's media playlist (LL-HLS when parts are on), or `None` with no segment yet.
pub fn media(
    stream: &LiveStream,
    rendition: &str,
    settings: &WindowSettings,
    opts: MediaOptions,
) -> Option<String> {
    let track = stream.renditions.get(rendition)?;
    let in_session = stream.current.iter().any(|c| c == rendition);
    let live = stream.live && in_session;
    let complete: Vec<&StoredSegment> = track.complete().collect();
    let listed = &complete[complete.len().saturating_sub(settings.listed_segments())..];
    let target = target_duration(track, settings);
    let part_target = settings.part_target;
    let ll = part_target.is_some();
    // the segment being produced is listed (as parts) only in LL playlists
    let open = if live && ll { track.open() } else { None };
    let first = listed.first().copied().or(open)?;
    let skip_until = 6 * target;

    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:{}", if ll { 9 } else { 7 });
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    if let Some(pt) = part_target {
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},CAN-SKIP-UNTIL={skip_until}",
            secs3(pt * 3)
        );
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={}", secs3(pt));
    }
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", first.msn);
    let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", first.disc);

    // delta update: skip segments older than CAN-SKIP-UNTIL from the live edge
    let mut skipped = 0usize;
    if opts.skip && ll && live {
        let total: Duration = listed.iter().map(|s| s.duration).sum();
        let horizon = Duration::from_secs(skip_until);
        if total > horizon {
            let mut remaining = total;
            for s in listed {
                if remaining <= horizon {
                    break;
                }
                remaining = remaining.saturating_sub(s.duration);
                skipped += 1;
            }
        }
        if skipped > 0 {
            let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
    }

    // parts are listed for the segments of the last three target durations
    let part_horizon = Duration::from_secs(3 * target);
    let mut parts_from = listed.len();
    let mut acc = open.map(|o| o.duration).unwrap_or_default();
    while parts_from > 0 && acc < part_horizon {
        parts_from -= 1;
        acc += listed[parts_from].duration;
    }

    let mut prev_disc: Option<u64> = None;
    let segments = listed.iter().copied().enumerate().skip(skipped);
    let all = segments.chain(open.map(|o| (usize::MAX, o)));
    for (i, seg) in all {
        if prev_disc != Some(seg.disc) {
            if prev_disc.is_some() {
                let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
            }
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", init_uri(track, seg.disc));
        }
        prev_disc = Some(seg.disc);
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            tidecast_common::time::rfc3339_millis(seg.program_date_time)
        );
        if ll && (i >= parts_from) {
            for (k, p) in seg.parts.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "#EXT-X-PART:DURATION={},URI=\"{}.{k}.m4s\"{}",
                    secs3(p.duration),
                    seg.msn,
                    if p.independent {
                        ",INDEPENDENT=YES"
                    } else {
                        ""
                    }
                );
            }
        }
        if seg.complete {
            let _ = writeln!(out, "#EXTINF:{},", secs3(seg.duration));
            let _ = writeln!(out, "{}.m4s", seg.msn);
        }
    }
    if let (Some(pt), true) = (part_target, live) {
        let (msn, part) = track.hinted_part(settings.target, pt);
        let _ = writeln!(
            out,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{msn}.{part}.m4s\""
        );
        for other in &stream.current {
            if other == rendition {
                continue;
            }
            if let Some((msn, part)) = stream.renditions.get(other).and_then(|t| t.last_part()) {
                let _ = writeln!(
                    out,
                    "#EXT-X-RENDITION-REPORT:URI=\"../{other}/media.m3u8\",LAST-MSN={msn},LAST-PART={part}"
                );
            }
        }
    }
    if !live {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::packager::tests::{close, end, push, push_parts, settings, start};
    use crate::packager::StreamTable;

    const LL: MediaOptions = MediaOptions { skip: false };

    #[test]
    fn ll_media_playlist_exact_text() {
        let now = Instant::now();
        let mut s = settings();
        s.window = 2;
        let mut t = StreamTable::new(s);
        start(&mut t, 1, now);
        push(&mut t, 4, now);
        push_parts(&mut t, 2, now);
        let text = media(t.get("s").unwrap(), "720p", &s, LL).unwrap();
        let part = |m: u64, k: u64| {
            format!(
                "#EXT-X-PART:DURATION=0.5,URI=\"{m}.{k}.m4s\"{}\n",
                if k == 0 { ",INDEPENDENT=YES" } else { "" }
            )
        };
        let mut expected = String::from(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-TARGETDURATION:2\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5,CAN-SKIP-UNTIL=12\n\
             #EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-MEDIA-SEQUENCE:2\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:0\n#EXT-X-MAP:URI=\"init.mp4\"\n",
        );
        for m in 2..=3u64 {
            expected += &format!(
                "#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:0{}.000Z\n",
                2 * m
            );
            for k in 0..4 {
                expected += &part(m, k);
            }
            expected += &format!("#EXTINF:2,\n{m}.m4s\n");
        }
        expected += "#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:08.000Z\n";
        expected += &part(4, 0);
        expected += &part(4, 1);
        expected += "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"4.2.m4s\"\n";
        assert_eq!(text, expected);
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(parsed.segments.len(), 2);
        assert_eq!(parsed.media_sequence, 2);
    }

    #[test]
    fn plain_playlist_without_parts() {
        let now = Instant::now();
        let mut s = settings();
        s.part_target = None;
        let mut t = StreamTable::new(s);
        start(&mut t, 1, now);
        push(&mut t, 5, now);
        let text = media(t.get("s").unwrap(), "720p", &s, LL).unwrap();
        assert!(text.contains("#EXT-X-VERSION:7\n"), "{text}");
        assert!(!text.contains("PART"), "{text}");
        assert!(!text.contains("SERVER-CONTROL"), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{text}");
        assert!(text.trim_end().ends_with("3.m4s"), "{text}");
    }

    #[test]
    fn ended_and_resumed_stream() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 2, now);
        end(&mut t, "s", 1, now);
        let text = media(t.get("s").unwrap(), "720p", &settings(), LL).unwrap();
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        assert!(!text.contains("PRELOAD-HINT"), "{text}");
        assert!(
            text.contains("1.m4s"),
            "the last segment was closed: {text}"
        );
        start(&mut t, 2, now);
        push(&mut t, 1, now);
        close(&mut t, now);
        let text = media(t.get("s").unwrap(), "720p", &settings(), LL).unwrap();
        assert!(!text.contains("#EXT-X-ENDLIST"), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:0\n"), "{text}");
        assert!(text.contains("#EXT-X-MAP:URI=\"init-0.mp4\""), "{text}");
        assert!(
            text.contains(
                "#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-PROGRAM-DATE-TIME"
            ),
            "{text}"
        );
        assert!(text.contains("\n2.m4s\n"), "{text}");
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(parsed.segments.len(), 3);
        assert!(parsed.segments[2].discontinuity);
    }

    #[test]
    fn skip_returns_a_delta_of_the_full_playlist() {
        let now = Instant::now();
        let mut s = settings();
        s.dvr = Duration::from_secs(30);
        let mut t = StreamTable::new(s);
        start(&mut t, 1, now);
        push(&mut t, 16, now);
        let full = media(t.get("s").unwrap(), "720p", &s, LL).unwrap();
        let delta = media(t.get("s").unwrap(), "720p", &s, MediaOptions { skip: true }).unwrap();
        // 15 complete segments listed = 30 s; everything older than 12 s from the end is skipped
        assert!(
            delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=9\n"),
            "{delta}"
        );
        let full_p = m3u8_rs::parse_media_playlist_res(full.as_bytes()).unwrap();
        let delta_p = m3u8_rs::parse_media_playlist_res(delta.as_bytes()).unwrap();
        assert_eq!(full_p.segments.len(), 15);
        assert_eq!(delta_p.media_sequence, full_p.media_sequence);
        let full_uris: Vec<_> = full_p.segments.iter().map(|s| s.uri.clone()).collect();
        let delta_uris: Vec<_> = delta_p.segments.iter().map(|s| s.uri.clone()).collect();
        assert_eq!(&full_uris[9..], &delta_uris[..]);
    }

    #[test]
    fn master_lists_resolution_codecs_and_frame_rate() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 1, now);
        assert!(
            master(t.get("s").unwrap()).is_none(),
            "no complete segment yet"
        );
        close(&mut t, now);
        let text = master(t.get("s").unwrap()).unwrap();
        assert!(text.contains("RESOLUTION=1280x720"), "{text}");
        assert!(text.contains("CODECS=\"avc1.64001f\""), "{text}");
        assert!(text.contains("FRAME-RATE=30"), "{text}");
        assert!(text.contains("BANDWIDTH=1000000"), "{text}");
        assert!(text.contains("720p/media.m3u8"), "{text}");
    }
}
