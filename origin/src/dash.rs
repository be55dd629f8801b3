//! The DASH writer: a dynamic MPD over the same CMAF init and media segments as HLS. One
//! AdaptationSet for the video renditions, one for audio; one Period per publishing session
//! (a reconnect starts a new Period); `SegmentTimeline` with `$Number$` (the HLS media sequence
//! number), so both formats name the same files. Low latency: `availabilityTimeOffset` lets
//! players fetch the segment being produced, which the origin streams chunk by chunk. Pure.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use tidecast_common::TrackKind;

use crate::packager::{LiveStream, StoredSegment, WindowSettings};
pub use crate::playlist::RenditionSummary;
use crate::window::RenditionTrack;

/// MPD timescale (ticks per second).
const TIMESCALE: u64 = 90_000;

fn ticks(d: Duration) -> u64 {
    (d.as_nanos() * u128::from(TIMESCALE) / 1_000_000_000) as u64
}

/// `PT1.234S`
fn iso_duration(d: Duration) -> String {
    format!("PT{:.3}S", d.as_secs_f64())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The segments of `track` in discontinuity `disc` that the MPD lists (the same window as the
/// HLS playlist), plus the open one when live (with low latency off too: players then fetch it
/// when it completes, see [`spans`]).
fn listed<'a>(
    track: &'a RenditionTrack,
    settings: &WindowSettings,
    disc: u64,
    live: bool,
) -> Vec<&'a StoredSegment> {
    let complete: Vec<&StoredSegment> = track.complete().collect();
    let window = &complete[complete.len().saturating_sub(settings.listed_segments())..];
    let mut out: Vec<&StoredSegment> = window.iter().copied().filter(|s| s.disc == disc).collect();
    if live {
        if let Some(open) = track.open().filter(|o| o.disc == disc) {
            out.push(open);
        }
    }
    out
}

/// `(t, d)` in ticks for each listed segment: durations from the next segment's start (so the
/// timeline has no gaps), the open segment announced with its nominal duration (or what it has
/// already, if that is longer). With `announce_next`, one more segment follows the open one: the
/// next segment, not started yet. A player learns of a segment only from the MPD; listed ahead,
/// it asks for each segment as soon as it becomes available (at its end, or `availabilityTime
/// Offset` earlier in low latency: the origin holds the request until the segment starts, then
/// streams it) instead of one MPD refresh (and an edge's cached copy) later. Without it dash.js 5
/// ran dry once per refresh and stalled 1–9 s per 30 s.
fn spans(segments: &[&StoredSegment], target: Duration, announce_next: bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = segments
        .iter()
        .enumerate()
        .map(|(k, seg)| {
            let t = ticks(seg.pts);
            let d = match segments.get(k + 1) {
                Some(next) => ticks(next.pts).saturating_sub(t),
                None if !seg.complete => ticks(target.max(seg.duration)),
                None => ticks(seg.duration),
            };
            (t, d)
        })
        .collect();
    if let (true, Some(&(t, d)), Some(last)) = (announce_next, out.last(), segments.last()) {
        if !last.complete {
            out.push((t + d, ticks(target)));
        }
    }
    out
}

/// Where an ended stream's presentation ends, from `availabilityStartTime`: the end of the
/// latest segment of the last session (its Period start + the segment's end in media time).
fn presentation_end(stream: &LiveStream, ast: SystemTime) -> Option<Duration> {
    let (&disc, &start) = stream.session_starts.iter().next_back()?;
    let media_end = stream
        .renditions
        .values()
        .filter_map(|t| t.complete().rev().find(|s| s.disc == disc))
        .map(|s| s.pts + s.duration)
        .max()?;
    Some(start.duration_since(ast).unwrap_or_default() + media_end)
}

/// `<SegmentTimeline>` with runs of equal durations folded into `r`.
fn timeline(out: &mut String, spans: &[(u64, u64)]) {
    let _ = writeln!(out, "          <SegmentTimeline>");
    let mut i = 0;
    while i < spans.len() {
        let (t, d) = spans[i];
        let mut r = 0;
        while i + r + 1 < spans.len() && spans[i + r + 1].1 == d {
            r += 1;
        }
        if r > 0 {
            let _ = writeln!(out, "            <S t=\"{t}\" d=\"{d}\" r=\"{r}\"/>");
        } else {
            let _ = writeln!(out, "            <S t=\"{t}\" d=\"{d}\"/>");
        }
        i += r + 1;
    }
    let _ = writeln!(out, "          </SegmentTimeline>");
}

/// One `<Representation>` with its `SegmentTemplate` (`extra` = more template attributes).
fn representation(
    out: &mut String,
    rep: &RenditionSummary<'_>,
    init: &str,
    start_number: u64,
    presentation_time_offset: u64,
    extra: &str,
    spans: &[(u64, u64)],
) {
    let name = xml_escape(rep.name);
    let _ = write!(
        out,
        r#"      <Representation id="{name}" codecs="{}" bandwidth="{}""#,
        xml_escape(&rep.info.codec),
        rep.peak
    );
    if rep.kind == TrackKind::Video {
        let _ = write!(
            out,
            r#" width="{}" height="{}""#,
            rep.info.width, rep.info.height
        );
        if let Some(fps) = rep.frame_rate {
            let _ = write!(out, r#" frameRate="{}""#, (fps * 1000.0).round() / 1000.0);
        }
    }
    let _ = writeln!(out, ">");
    if rep.kind == TrackKind::Audio && rep.info.channels > 0 {
        let _ = writeln!(
            out,
            r#"        <AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="{}"/>"#,
            rep.info.channels
        );
    }
    let _ = writeln!(
        out,
        r#"        <SegmentTemplate timescale="{TIMESCALE}" presentationTimeOffset="{presentation_time_offset}" startNumber="{start_number}" initialization="{name}/{init}" media="{name}/$Number$.m4s"{extra}>"#
    );
    timeline(out, spans);
    let _ = writeln!(out, "        </SegmentTemplate>");
    let _ = writeln!(out, "      </Representation>");
}

/// Wrap representations of one kind into an `<AdaptationSet>` (nothing if there are none).
fn adaptation_set(out: &mut String, set_id: u32, kind: TrackKind, reps: &str) {
    if reps.is_empty() {
        return;
    }
    let (content, mime) = match kind {
        TrackKind::Audio => ("audio", "audio/mp4"),
        _ => ("video", "video/mp4"),
    };
    let _ = writeln!(
        out,
        r#"    <AdaptationSet id="{set_id}" contentType="{content}" mimeType="{mime}" segmentAlignment="true" startWithSAP="1">"#
    );
    out.push_str(reps);
    let _ = writeln!(out, "    </AdaptationSet>");
}

/// One archived segment: (media sequence number, presentation time, duration).
pub type VodSegment = (u64, Duration, Duration);

/// A static (VOD) MPD of one finished session: `tracks` are the renditions with their segments.
pub fn vod_mpd(tracks: &[(RenditionSummary<'_>, Vec<VodSegment>)]) -> Option<String> {
    let total = tracks
        .iter()
        .map(|(_, segs)| segs.iter().map(|s| s.2).sum::<Duration>())
        .max()?;
    let longest = tracks
        .iter()
        .flat_map(|(_, segs)| segs.iter().map(|s| s.2))
        .max()?;
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="static" mediaPresentationDuration="{}" minBufferTime="{}" maxSegmentDuration="{}">"#,
        iso_duration(total),
        iso_duration(longest),
        iso_duration(longest)
    );
    let _ = writeln!(out, r#"  <Period id="0" start="PT0S">"#);
    for (set_id, kind) in [(0, TrackKind::Video), (1, TrackKind::Audio)] {
        let mut reps = String::new();
        for (rep, segs) in tracks.iter().filter(|(r, _)| r.kind == kind) {
            let Some(first) = segs.first() else { continue };
            // each segment lasts until the next one starts: no gaps or overlaps
            let spans: Vec<(u64, u64)> = segs
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let t = ticks(s.1);
                    let d = match segs.get(k + 1) {
                        Some(next) => ticks(next.1).saturating_sub(t),
                        None => ticks(s.2),
                    };
                    (t, d)
                })
                .collect();
            // the recording starts at its first segment
            let pto = spans.first().map(|s| s.0).unwrap_or(0);
            representation(&mut reps, rep, "init.mp4", first.0, pto, "", &spans);
        }
        adaptation_set(&mut out, set_id, kind, &reps);
    }
    let _ = writeln!(out, "  </Period>");
    let _ = writeln!(out, "</MPD>");
    Some(out)
}

/// `UTCTiming` source: path-absolute, so players resolve it against the MPD's own URL and ask
/// whichever node served the MPD (origin or an edge in their region; both answer `/api/time`).
pub const UTC_TIMING_PATH: &str = "/api/time";

/// The MPD, or `None` while the stream has no segment. Live: `minimumUpdatePeriod`, no
/// duration. Ended: still `dynamic` (players already playing keep their timeline) but with no
/// `minimumUpdatePeriod` and a `mediaPresentationDuration` up to the last segment's end, so
/// players play out what is listed and end (DASH-IF IOP, "end of live").
pub fn mpd(stream: &LiveStream, settings: &WindowSettings, now: SystemTime) -> Option<String> {
    let ast = *stream.session_starts.values().next()?;
    let target = settings.target;
    let low_latency = settings.part_target.is_some();
    let window: Duration = stream
        .renditions
        .values()
        .map(|r| {
            r.complete()
                .rev()
                .take(settings.listed_segments())
                .map(|s| s.duration)
                .sum()
        })
        .max()
        .unwrap_or(target);
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = write!(
        out,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="dynamic" availabilityStartTime="{}" publishTime="{}" minBufferTime="{}" timeShiftBufferDepth="{}" suggestedPresentationDelay="{}" maxSegmentDuration="{}""#,
        tidecast_common::time::rfc3339_millis(ast),
        tidecast_common::time::rfc3339_millis(now),
        iso_duration(target),
        iso_duration(window.max(target)),
        iso_duration(if low_latency { target } else { target * 3 }),
        iso_duration(target + target / 2),
    );
    if stream.live {
        let _ = write!(out, r#" minimumUpdatePeriod="{}""#, iso_duration(target));
    } else if let Some(end) = presentation_end(stream, ast) {
        let _ = write!(out, r#" mediaPresentationDuration="{}""#, iso_duration(end));
    }
    let _ = writeln!(out, ">");
    let mut periods = 0;
    for (&disc, &start) in &stream.session_starts {
        let live = stream.live && disc == stream.disc;
        let mut sets = String::new();
        for (set_id, kind) in [(0, TrackKind::Video), (1, TrackKind::Audio)] {
            let mut reps = String::new();
            let mut tracks: Vec<&RenditionTrack> = stream
                .renditions
                .values()
                .filter(|t| t.declared.kind == kind && t.inits.contains_key(&disc))
                .collect();
            tracks.sort_by_key(|t| std::cmp::Reverse(t.declared.height));
            for track in tracks {
                let (Some(info), segments) = (&track.info, listed(track, settings, disc, live))
                else {
                    continue;
                };
                let Some(first) = segments.first() else {
                    continue;
                };
                let mut extra = String::new();
                if live {
                    if let Some(part) = settings.part_target {
                        let ato = target.saturating_sub(part.min(target));
                        extra = format!(
                            r#" availabilityTimeOffset="{:.3}" availabilityTimeComplete="false""#,
                            ato.as_secs_f64()
                        );
                    }
                }
                let rep = RenditionSummary {
                    name: &track.declared.name,
                    kind,
                    info,
                    peak: track.bitrates().0,
                    average: track.bitrates().1,
                    frame_rate: track.frame_rate(),
                };
                let init = format!("init-{disc}.mp4");
                let spans = spans(&segments, target, live);
                // media time 0 of the session is the Period start
                representation(&mut reps, &rep, &init, first.msn, 0, &extra, &spans);
            }
            adaptation_set(&mut sets, set_id, kind, &reps);
        }
        if sets.is_empty() {
            continue;
        }
        let offset = start.duration_since(ast).unwrap_or_default();
        let _ = writeln!(
            out,
            r#"  <Period id="{disc}" start="{}">"#,
            iso_duration(offset)
        );
        out.push_str(&sets);
        let _ = writeln!(out, "  </Period>");
        periods += 1;
    }
    if periods == 0 {
        return None;
    }
    let _ = writeln!(
        out,
        r#"  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="{UTC_TIMING_PATH}"/>"#
    );
    let _ = writeln!(out, "</MPD>");
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::packager::tests::{close, end, push, settings, start};
    use crate::packager::StreamTable;

    #[test]
    fn live_mpd_with_timeline_and_ll_offset() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 4, now);
        let text = mpd(t.get("s").unwrap(), &settings(), SystemTime::UNIX_EPOCH).unwrap();
        assert!(
            text.contains(r#"type="dynamic" availabilityStartTime="1970-01-01T00:00:00.000Z""#),
            "{text}"
        );
        assert!(text.contains(r#"minimumUpdatePeriod="PT2.000S""#), "{text}");
        assert!(
            text.contains(r#"<Period id="0" start="PT0.000S">"#),
            "{text}"
        );
        assert!(text.contains(r#"<Representation id="720p" codecs="avc1.64001f" bandwidth="1000000" width="1280" height="720" frameRate="30">"#), "{text}");
        // segments 0..=2 complete (window 3), 3 open, 4 announced ahead: one S with r
        assert!(text.contains(r#"startNumber="0" initialization="720p/init-0.mp4" media="720p/$Number$.m4s" availabilityTimeOffset="1.500" availabilityTimeComplete="false">"#), "{text}");
        assert!(text.contains(r#"<S t="0" d="180000" r="4"/>"#), "{text}");
        assert!(text.contains(
            r#"<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="/api/time"/>"#
        ));
        assert!(!text.contains("mediaPresentationDuration"), "{text}");
    }

    #[test]
    fn reconnect_starts_a_new_period() {
        let now = Instant::now();
        let mut t = StreamTable::new(settings());
        start(&mut t, 1, now);
        push(&mut t, 2, now);
        end(&mut t, "s", 1, now);
        let ended = mpd(t.get("s").unwrap(), &settings(), SystemTime::UNIX_EPOCH).unwrap();
        assert!(!ended.contains("minimumUpdatePeriod"), "{ended}");
        // two 2 s segments from PTS 0: the presentation ends at 4 s
        assert!(
            ended.contains(r#"type="dynamic""#)
                && ended.contains(r#"mediaPresentationDuration="PT4.000S""#),
            "{ended}"
        );
        assert!(!ended.contains("availabilityTimeOffset"), "{ended}");
        start(&mut t, 2, now);
        push(&mut t, 1, now);
        close(&mut t, now);
        let text = mpd(t.get("s").unwrap(), &settings(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(text.matches("<Period ").count(), 2, "{text}");
        assert!(text.contains(r#"<Period id="1""#), "{text}");
        assert!(
            text.contains(r#"initialization="720p/init-1.mp4""#),
            "{text}"
        );
        assert!(text.contains(r#"startNumber="2""#), "{text}");
    }
}
