//! The assembly shell: one GStreamer pipeline that turns a [`Plan`] (its chunks downloaded to
//! local directories) into one MP4 — every participant's video decoded, scaled into its tile of
//! a `compositor` grid over a black background, every audio track into an `audiomixer`, H.264
//! (x264) + AAC in an MP4 with the index up front (`faststart`). Each input is offset to its
//! start on the call's timeline, so tracks line up and time 0 is the call's start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use tidecast_common::pipeline;

use crate::plan::{Plan, PlannedTrack};
use crate::ArchiveError;

/// Output frame rate.
const FPS: u64 = 30;
/// The compositor pad of the black background (tiles are `sink_0`…).
const BASE_PAD: usize = 10_000;

/// Where one planned track's chunks are on disk: `{dir}/{seq:05}.{ext}`, numbered as the plan
/// lists them (never named from anything in the event or the store).
pub fn track_dir(work: &Path, kind: &str, n: usize) -> PathBuf {
    work.join(format!("{kind}{n}"))
}

/// End of the last track on the timeline, ms (the output's length).
pub fn total_ms(plan: &Plan, durations: &dyn Fn(&PlannedTrack) -> u64) -> u64 {
    plan.tiles
        .iter()
        .filter_map(|t| t.video.as_ref())
        .chain(&plan.audio)
        .map(|t| t.start_ms + durations(t))
        .max()
        .unwrap_or(0)
}

fn quoted(path: &Path) -> Result<String, ArchiveError> {
    Ok(pipeline::quoted_path(path)?.to_string())
}

/// The pipeline text; pads are named `comp.sink_{i}` (tile i), `mix.sink_{j}` (audio j). Video
/// stays I420 from the decoders to the encoder: compositing in an RGB or AYUV format and
/// converting back made assembling 3.5× slower (28 s against 7.8 s for a 30 s call). The
/// compositor scales each tile itself (pad `width`/`height`, keeping the aspect ratio): a
/// `videoscale` per tile cost 30 % more; and the encoder has a thread of its own (`queue`), so
/// compositing the next frame overlaps encoding this one.
fn description(
    plan: &Plan,
    work: &Path,
    out: &Path,
    total_ms: u64,
) -> Result<String, ArchiveError> {
    let (w, h) = (plan.width, plan.height);
    let frames = (total_ms * FPS).div_ceil(1000).max(1);
    let mut d = format!(
        "compositor name=comp background=black start-time-selection=zero \
         ! video/x-raw,format=I420,width={w},height={h},framerate={FPS}/1 \
         ! queue max-size-buffers=8 max-size-bytes=0 max-size-time=0 \
         ! x264enc speed-preset=veryfast bitrate=2500 key-int-max={k} \
         ! video/x-h264,profile=high ! h264parse ! mux.video_0 \
         mp4mux name=mux faststart=true ! filesink location=\"{out}\" \
         videotestsrc pattern=black num-buffers={frames} \
         ! video/x-raw,format=I420,width={w},height={h},framerate={FPS}/1 ! comp.sink_{BASE_PAD} ",
        k = FPS * 2,
        out = quoted(out)?,
    );
    for (i, tile) in plan.tiles.iter().enumerate() {
        let Some(video) = &tile.video else { continue };
        let dir = quoted(&track_dir(work, "video", i))?;
        d.push_str(&format!(
            "splitmuxsrc location=\"{dir}/*.{ext}\" ! decodebin ! videoconvert ! videorate \
             ! video/x-raw,format=I420,framerate={FPS}/1 ! comp.sink_{i} ",
            ext = video.extension,
        ));
    }
    if !plan.audio.is_empty() {
        d.push_str(
            "audiomixer name=mix start-time-selection=zero \
             ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! avenc_aac ! aacparse \
             ! mux.audio_0 ",
        );
        for (j, audio) in plan.audio.iter().enumerate() {
            let dir = quoted(&track_dir(work, "audio", j))?;
            d.push_str(&format!(
                "splitmuxsrc location=\"{dir}/*.{ext}\" ! decodebin ! audioconvert \
                 ! audioresample ! audio/x-raw,rate=48000,channels=2 ! mix.sink_{j} ",
                ext = audio.extension,
            ));
        }
    }
    Ok(d)
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// Assemble `plan` (chunks in [`track_dir`]s under `work`) into `out`; `total_ms` is the
/// timeline's length. Blocks until the file is complete (or fails after a deadline).
pub fn assemble(plan: &Plan, work: &Path, out: &Path, total_ms: u64) -> Result<(), ArchiveError> {
    let launched = pipeline::launch(&description(plan, work, out, total_ms)?)?;
    let comp: gst::Element = launched.element("comp")?;
    if let Some(base) = comp.static_pad(&format!("sink_{BASE_PAD}")) {
        base.set_property("zorder", 0u32);
    }
    for (i, tile) in plan.tiles.iter().enumerate() {
        let Some(video) = &tile.video else { continue };
        let Some(pad) = comp.static_pad(&format!("sink_{i}")) else {
            continue;
        };
        pad.set_property("xpos", tile.tile.x as i32);
        pad.set_property("ypos", tile.tile.y as i32);
        pad.set_property("width", tile.tile.width as i32);
        pad.set_property("height", tile.tile.height as i32);
        pad.set_property_from_str("sizing-policy", "keep-aspect-ratio");
        pad.set_property("zorder", 1u32 + i as u32);
        pad.set_offset(ms_to_ns(video.start_ms));
    }
    if let Ok(mix) = launched.element::<gst::Element>("mix") {
        for (j, audio) in plan.audio.iter().enumerate() {
            if let Some(pad) = mix.static_pad(&format!("sink_{j}")) {
                pad.set_offset(ms_to_ns(audio.start_ms));
            }
        }
    }
    launched.play()?;
    // generous: an archiver far slower than real time is broken, not busy
    let result = launched
        .wait_end(Duration::from_millis(total_ms * 3) + Duration::from_secs(60))
        .map_err(ArchiveError::from);
    launched.stop();
    result
}
