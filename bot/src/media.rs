//! The media a bot publishes: short loops encoded once at start with GStreamer (a moving test
//! pattern in VP8 at 180p, 360p and 720p for the three simulcast layers, a tone in Opus) and
//! shared by every synthetic participant, so N bots cost N × packetisation, not N encoders.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::BotError;

/// One encoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Encoded data (a VP8 frame or an Opus packet).
    pub data: Bytes,
    /// Starts a keyframe.
    pub key: bool,
}

/// A loop of frames at a fixed rate.
#[derive(Debug, Clone)]
pub struct MediaLoop {
    /// Frames in order.
    pub frames: Arc<Vec<Frame>>,
    /// Time per frame.
    pub frame_duration: Duration,
}

impl MediaLoop {
    /// The index of the next keyframe at or after `i`.
    pub fn next_key(&self, i: usize) -> usize {
        let n = self.frames.len();
        (0..n)
            .map(|k| (i + k) % n)
            .find(|k| self.frames[*k].key)
            .unwrap_or(i % n.max(1))
    }
}

/// A simulcast layer: its RID, size and bitrate.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    /// RID (`q`, `h`, `f`).
    pub rid: &'static str,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Target bitrate, kbit/s.
    pub kbps: u32,
}

/// The room client's three layers, low → high.
pub const LAYERS: [LayerSpec; 3] = [
    LayerSpec {
        rid: "q",
        width: 320,
        height: 180,
        kbps: 150,
    },
    LayerSpec {
        rid: "h",
        width: 640,
        height: 360,
        kbps: 400,
    },
    LayerSpec {
        rid: "f",
        width: 1280,
        height: 720,
        kbps: 1000,
    },
];

/// Frames per second of the video loops.
pub const FPS: u32 = 30;

fn run_to_frames(description: &str) -> Result<Vec<Frame>, BotError> {
    let media = |e: String| BotError::Media(e);
    gst::init().map_err(|e| media(e.to_string()))?;
    let pipeline = gst::parse::launch(description)
        .map_err(|e| media(format!("{description}: {e}")))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| media("not a pipeline".into()))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| media("no appsink".into()))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| media(e.to_string()))?;
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let Some(buffer) = sample.buffer() else {
            continue;
        };
        let Ok(map) = buffer.map_readable() else {
            continue;
        };
        frames.push(Frame {
            data: Bytes::copy_from_slice(map.as_slice()),
            key: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
        });
    }
    let _ = pipeline.set_state(gst::State::Null);
    if frames.is_empty() {
        return Err(media(format!("{description}: no frames")));
    }
    Ok(frames)
}

/// Solid colours (ARGB) that `--colours` gives participants in turn: red, green, blue, yellow,
/// magenta, cyan.
pub const COLOURS: [u32; 6] = [
    0xffff_0000,
    0xff00_ff00,
    0xff00_00ff,
    0xffff_ff00,
    0xffff_00ff,
    0xff00_ffff,
];

/// What the video shows: the moving test pattern, or one solid colour (to tell participants
/// apart in a composited recording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picture {
    /// A pinwheel scrolling sideways.
    TestPattern,
    /// One colour, ARGB.
    Solid(u32),
}

/// Encode the video loops (one per layer, `seconds` long, a keyframe every second).
pub fn video_loops(seconds: u32, picture: Picture) -> Result<Vec<MediaLoop>, BotError> {
    let source = match picture {
        // not `smpte`: its corner of random noise costs ~1.8 Mbit/s at 720p whatever the
        // encoder is asked for (measured: 1,930 / 570 / 190 kbit/s for 1,000 / 400 / 150);
        // a scrolling pinwheel comes out at 1,100 / 420 / 155, as a camera's picture would
        Picture::TestPattern => "videotestsrc pattern=pinwheel horizontal-speed=8".to_string(),
        Picture::Solid(argb) => {
            format!("videotestsrc pattern=solid-color foreground-color={argb}")
        }
    };
    LAYERS
        .iter()
        .map(|l| {
            let frames = run_to_frames(&format!(
                "{source} num-buffers={n} ! \
                 video/x-raw,width={w},height={h},framerate={FPS}/1 ! \
                 vp8enc deadline=1 cpu-used=8 keyframe-max-dist={FPS} target-bitrate={b} \
                 error-resilient=default ! appsink name=sink sync=false",
                n = seconds * FPS,
                w = l.width,
                h = l.height,
                b = l.kbps * 1000,
            ))?;
            Ok(MediaLoop {
                frames: Arc::new(frames),
                frame_duration: Duration::from_secs(1) / FPS,
            })
        })
        .collect()
}

/// Encode the audio loop (20 ms Opus packets of a tone, at the 32 kbit/s a browser sends mono
/// voice at — opusenc's default of 128 kbit/s is four times what a real participant costs).
pub fn audio_loop(seconds: u32) -> Result<MediaLoop, BotError> {
    let frames = run_to_frames(&format!(
        "audiotestsrc wave=sine freq=440 volume=0.3 num-buffers={n} samplesperbuffer=960 ! \
         audio/x-raw,rate=48000,channels=1 ! opusenc frame-size=20 bitrate=32000 ! appsink name=sink sync=false",
        n = seconds * 50,
    ))?;
    Ok(MediaLoop {
        frames: Arc::new(frames),
        frame_duration: Duration::from_millis(20),
    })
}
