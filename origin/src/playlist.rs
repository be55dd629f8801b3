//! HLS playlist writers (m3u8-rs): the multivariant playlist of a stream and the media playlist
//! of each rendition. Pure functions of the packager state.

use std::collections::HashMap;
use std::time::SystemTime;

use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, ExtTag, MasterPlaylist, MediaPlaylist, MediaSegment,
    Resolution, VariantStream,
};
use tidecast_common::TrackKind;

use crate::packager::{LiveStream, RenditionTrack, WindowSettings};

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

/// The multivariant playlist, or `None` while the stream is not ready.
pub fn master(stream: &LiveStream) -> Option<String> {
    if !stream.is_ready() {
        return None;
    }
    let tracks: Vec<&RenditionTrack> = stream
        .current
        .iter()
        .filter_map(|n| stream.renditions.get(n))
        .collect();
    let audio = tracks.iter().find(|t| t.declared.kind == TrackKind::Audio);
    let (audio_peak, audio_avg) = audio.map(|a| a.bitrates()).unwrap_or((0, 0));
    let mut playlist = MasterPlaylist {
        version: Some(7),
        independent_segments: true,
        ..Default::default()
    };
    if let Some(a) = audio {
        let mut other = HashMap::new();
        if let Some(info) = &a.info {
            if info.channels > 0 {
                other.insert(
                    "CHANNELS".to_string(),
                    m3u8_rs::QuotedOrUnquoted::Quoted(info.channels.to_string()),
                );
            }
        }
        playlist.alternatives.push(AlternativeMedia {
            media_type: AlternativeMediaType::Audio,
            uri: Some(format!("{}/media.m3u8", a.declared.name)),
            group_id: AUDIO_GROUP.into(),
            name: "audio".into(),
            default: true,
            autoselect: true,
            other_attributes: (!other.is_empty()).then_some(other),
            ..Default::default()
        });
    }
    let audio_codec = audio.and_then(|a| a.info.as_ref()).map(|i| i.codec.clone());
    let mut videos: Vec<&&RenditionTrack> = tracks
        .iter()
        .filter(|t| t.declared.kind == TrackKind::Video)
        .collect();
    videos.sort_by_key(|t| std::cmp::Reverse(t.declared.height));
    for v in videos {
        let info = v.info.as_ref()?;
        let (peak, avg) = v.bitrates();
        let codecs = match &audio_codec {
            Some(a) => format!("{},{a}", info.codec),
            None => info.codec.clone(),
        };
        playlist.variants.push(VariantStream {
            uri: format!("{}/media.m3u8", v.declared.name),
            bandwidth: peak + audio_peak,
            average_bandwidth: Some(avg + audio_avg),
            codecs: Some(codecs),
            resolution: Some(Resolution {
                width: u64::from(info.width),
                height: u64::from(info.height),
            }),
            frame_rate: v.frame_rate(),
            audio: audio.map(|_| AUDIO_GROUP.to_string()),
            ..Default::default()
        });
    }
    if playlist.variants.is_empty() {
        // audio-only stream: the audio rendition is the variant
        let a = audio?;
        let info = a.info.as_ref()?;
        playlist.alternatives.clear();
        playlist.variants.push(VariantStream {
            uri: format!("{}/media.m3u8", a.declared.name),
            bandwidth: audio_peak,
            average_bandwidth: Some(audio_avg),
            codecs: Some(info.codec.clone()),
            ..Default::default()
        });
    }
    let mut out = Vec::new();
    playlist.write_to(&mut out).ok()?;
    String::from_utf8(out).ok()
}

/// A rendition's media playlist, or `None` if it has no segments yet.
pub fn media(stream: &LiveStream, rendition: &str, settings: &WindowSettings) -> Option<String> {
    let track = stream.renditions.get(rendition)?;
    let listed: Vec<_> = {
        let n = track.segments.len();
        let skip = n.saturating_sub(settings.window);
        track.segments.iter().skip(skip).collect()
    };
    let first = listed.first()?;
    // RFC 8216 4.3.3.1: every EXTINF rounded to the nearest integer must be <= the target
    let target = (track.max_duration.as_secs_f64().round() as u64)
        .max(settings.target.as_secs_f64().ceil() as u64)
        .max(1);
    let mut playlist = MediaPlaylist {
        version: Some(7),
        target_duration: target,
        media_sequence: first.msn,
        discontinuity_sequence: first.disc,
        end_list: !stream.live || !stream.current.iter().any(|c| c == rendition),
        independent_segments: true,
        ..Default::default()
    };
    let mut prev_disc: Option<u64> = None;
    for s in listed {
        let new_disc = prev_disc != Some(s.disc);
        playlist.segments.push(MediaSegment {
            uri: format!("{}.m4s", s.msn),
            duration: s.duration.as_secs_f32(),
            discontinuity: new_disc && prev_disc.is_some(),
            // written as a tag after EXT-X-DISCONTINUITY (m3u8-rs would put `map` before it),
            // so the new init belongs to the new discontinuity for every player
            unknown_tags: if new_disc {
                vec![ExtTag {
                    tag: "X-MAP".into(),
                    rest: Some(format!("URI=\"{}\"", init_uri(track, s.disc))),
                }]
            } else {
                Vec::new()
            },
            program_date_time: Some(to_chrono(s.program_date_time)),
            ..Default::default()
        });
        prev_disc = Some(s.disc);
    }
    let mut out = Vec::new();
    playlist.write_to(&mut out).ok()?;
    String::from_utf8(out).ok()
}

fn to_chrono(t: SystemTime) -> chrono::DateTime<chrono::FixedOffset> {
    let utc: chrono::DateTime<chrono::Utc> = t.into();
    utc.fixed_offset()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::packager::tests::{push, settings, start};
    use crate::packager::StreamTable;
    use tidecast_common::LiveEvent;

    #[test]
    fn media_playlist_lists_window_with_pdt() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 5, now);
        let text = media(t.get("s").unwrap(), "720p", &settings()).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"), "{text}");
        assert!(
            text.contains("#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:04.000Z\n"),
            "{text}"
        );
        assert!(text.contains("#EXTINF:2,\n2.m4s\n"), "{text}");
        assert!(text.trim_end().ends_with("4.m4s"), "{text}");
        assert!(!text.contains("ENDLIST"));
    }

    #[test]
    fn ended_and_resumed_stream() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 2, now);
        t.apply(
            LiveEvent::SessionEnded {
                stream: "s".into(),
                session: 1,
            },
            now,
        );
        let text = media(t.get("s").unwrap(), "720p", &settings()).unwrap();
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        start(&mut t, 2, now);
        push(&mut t, 1, now);
        let text = media(t.get("s").unwrap(), "720p", &settings()).unwrap();
        assert!(!text.contains("#EXT-X-ENDLIST"), "{text}");
        // media sequence 0 and discontinuity sequence 0 are the defaults (tags omitted)
        assert!(!text.contains("SEQUENCE:"), "{text}");
        assert!(text.contains("#EXT-X-MAP:URI=\"init-0.mp4\""), "{text}");
        assert!(
            text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:00.000Z\n#EXT-X-MAP:URI=\"init.mp4\""),
            "{text}"
        );
        assert!(text.contains("2.m4s"), "{text}");
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(parsed.segments.len(), 3);
    }

    #[test]
    fn master_lists_resolution_codecs_and_frame_rate() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        assert!(master(t.get("s").unwrap()).is_none());
        push(&mut t, 1, now);
        let text = master(t.get("s").unwrap()).unwrap();
        assert!(text.contains("RESOLUTION=1280x720"), "{text}");
        assert!(text.contains("CODECS=\"avc1.64001f\""), "{text}");
        assert!(text.contains("FRAME-RATE=30"), "{text}");
        assert!(text.contains("BANDWIDTH=1000000"), "{text}");
        assert!(text.contains("720p/media.m3u8"), "{text}");
    }
}
