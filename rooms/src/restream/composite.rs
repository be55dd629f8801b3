//! The restream picture and sound: one GStreamer pipeline per restreamed room.
//!
//! ```text
//! videotestsrc (black, live) ─┐
//! appsrc(RTP) ─ jitterbuffer ─ depay ─ dec ─┤ compositor ─ x264enc ─┐
//!                                   …       ┘                       ├─ flvmux ─ rtmp2sink
//! audiotestsrc (silence, live) ─┐                                    │
//! appsrc(RTP) ─ jitterbuffer ─ depay ─ opusdec ─┤ audiomixer ─ AAC ──┘
//! ```
//! The black and silent live sources keep the output going before anyone publishes and
//! between speakers; each participant's track is a branch added while the pipeline plays.
//! Where each video sits is set per compositor pad ([`Composite::set_layout`]).

use std::collections::HashMap;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tidecast_common::pipeline::{self, Launched};
use tracing::{debug, info, warn};

use super::layout::Rect;
use super::RestreamError;
use crate::recording::index::RecordedCodec;
use crate::tap::TappedPacket;

/// What the restream is encoded as (from `[rooms]` config).
#[derive(Debug, Clone)]
pub struct CompositeSettings {
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// H.264 bitrate, kbit/s.
    pub video_kbps: u32,
    /// x264 speed preset.
    pub x264_preset: String,
}

/// How long the aggregators wait for a late input (jitter buffer plus decoding).
const MIX_LATENCY: Duration = Duration::from_millis(400);
/// How long the FLV muxer waits for a late encoded picture before it writes the audio past it
/// (a picture later than that gets a clamped, backwards timestamp, which the receiving ladder
/// does not recover from): the encoder's delay on a busy machine, with room to spare.
const MUX_LATENCY: Duration = Duration::from_secs(2);
/// How long a finishing restream may take to flush to the RTMP server.
const DRAIN: Duration = Duration::from_secs(5);

struct Branch {
    appsrc: gst_app::AppSrc,
    /// The compositor's pad (video only).
    pad: Option<gst::Pad>,
}

/// A running restream pipeline.
pub struct Composite {
    launched: Launched,
    vmix: gst::Element,
    amix: gst::Element,
    branches: HashMap<(String, String), Option<Branch>>,
}

fn gst_error(e: impl std::fmt::Display) -> RestreamError {
    RestreamError::Pipeline(e.to_string())
}

fn main_description(url: &str, s: &CompositeSettings) -> String {
    let raw = format!(
        "video/x-raw,format=I420,width={},height={},framerate={}/1",
        s.width, s.height, s.fps
    );
    let audio = "audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=2";
    let latency = MIX_LATENCY.as_nanos();
    // the encoder gets the newest pictures: when it cannot keep up (a busy machine) pictures
    // are dropped before it rather than queued, so the video stays live instead of falling
    // further behind the audio
    format!(
        "compositor name=vmix background=black latency={latency} ! {raw} \
           ! queue leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0 \
           ! x264enc tune=zerolatency speed-preset={preset} bitrate={kbps} \
             key-int-max={gop} bframes=0 ! video/x-h264,profile=main ! h264parse \
           ! queue ! flvmux name=mux streamable=true latency={mux_latency} \
           ! rtmp2sink name=out location=\"{url}\" \
         videotestsrc is-live=true pattern=black ! {raw} ! vmix. \
         audiotestsrc is-live=true wave=silence ! {audio} ! amix. \
         audiomixer name=amix latency={latency} ! {audio} ! audioconvert ! avenc_aac bitrate=128000 \
           ! aacparse ! queue ! mux.",
        preset = s.x264_preset,
        kbps = s.video_kbps,
        gop = s.fps * 2,
        mux_latency = MUX_LATENCY.as_nanos(),
    )
}

fn branch_description(p: &TappedPacket) -> String {
    let (media, name, chain) = match p.codec {
        RecordedCodec::Vp8 => (
            "video",
            "VP8",
            "rtpvp8depay wait-for-keyframe=true ! vp8dec ! videoconvert",
        ),
        RecordedCodec::H264 => (
            "video",
            "H264",
            "rtph264depay wait-for-keyframe=true ! h264parse ! avdec_h264 ! videoconvert",
        ),
        RecordedCodec::Opus => (
            "audio",
            "OPUS",
            "rtpopusdepay ! opusdec plc=true ! audioconvert ! audioresample \
             ! audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=2",
        ),
    };
    format!(
        "appsrc name=src is-live=true do-timestamp=true format=time max-bytes=4000000 \
           caps=\"application/x-rtp,media=(string){media},encoding-name=(string){name},\
clock-rate=(int){},payload=(int){}\" \
         ! rtpjitterbuffer latency=200 ! {chain} ! queue max-size-time=1000000000",
        p.clock_rate, p.pt
    )
}

impl Composite {
    /// Build the pipeline and start pushing to `url` (`rtmp://host:port/app/stream`).
    pub fn start(url: &str, settings: &CompositeSettings) -> Result<Composite, RestreamError> {
        if url.contains('"') {
            return Err(RestreamError::Refused("the URL has a quote".into()));
        }
        let launched = pipeline::launch(&main_description(url, settings)).map_err(gst_error)?;
        let vmix = launched.element("vmix").map_err(gst_error)?;
        let amix = launched.element("amix").map_err(gst_error)?;
        launched.play().map_err(gst_error)?;
        Ok(Composite {
            launched,
            vmix,
            amix,
            branches: HashMap::new(),
        })
    }

    /// A packet of a participant's track: its branch is made on the first (then true: the
    /// new video needs a place in the layout).
    pub fn push(&mut self, packet: &TappedPacket) -> bool {
        let key = (packet.publisher.clone(), packet.track.clone());
        let new = !self.branches.contains_key(&key);
        if new {
            let branch = match self.add_branch(packet) {
                Ok(b) => {
                    info!(participant = %key.0, track = %key.1, codec = ?packet.codec, "restreaming track");
                    Some(b)
                }
                Err(e) => {
                    warn!(participant = %key.0, track = %key.1, "track not restreamed: {e}");
                    None
                }
            };
            self.branches.insert(key.clone(), branch);
        }
        if let Some(Some(b)) = self.branches.get(&key) {
            let buffer = gst::Buffer::from_mut_slice(packet.to_rtp());
            if let Err(e) = b.appsrc.push_buffer(buffer) {
                debug!(participant = %key.0, "restream input refused: {e:?}");
            }
        }
        new
    }

    fn add_branch(&self, packet: &TappedPacket) -> Result<Branch, RestreamError> {
        let bin = gst::parse::bin_from_description(&branch_description(packet), true)
            .map_err(gst_error)?;
        let appsrc = bin
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| gst_error("no appsrc"))?;
        let src = bin.static_pad("src").ok_or_else(|| gst_error("no src"))?;
        let mixer = if packet.is_audio() {
            &self.amix
        } else {
            &self.vmix
        };
        let pad = mixer
            .request_pad_simple("sink_%u")
            .ok_or_else(|| gst_error("no mixer pad"))?;
        if !packet.is_audio() {
            // hidden until the layout places it
            pad.set_property("alpha", 0.0f64);
            pad.set_property_from_str("sizing-policy", "keep-aspect-ratio");
        }
        self.launched.pipeline.add(&bin).map_err(gst_error)?;
        src.link(&pad).map_err(gst_error)?;
        bin.sync_state_with_parent().map_err(gst_error)?;
        Ok(Branch {
            appsrc,
            pad: (!packet.is_audio()).then_some(pad),
        })
    }

    /// Place each participant's video; the videos of everyone not in `tiles` are hidden.
    pub fn set_layout(&self, tiles: &[(String, Rect)]) {
        for ((publisher, _), branch) in &self.branches {
            let Some(Branch { pad: Some(pad), .. }) = branch else {
                continue;
            };
            match tiles.iter().find(|(p, _)| p == publisher) {
                Some((_, r)) => {
                    pad.set_property("xpos", r.x);
                    pad.set_property("ypos", r.y);
                    pad.set_property("width", r.width);
                    pad.set_property("height", r.height);
                    pad.set_property("alpha", 1.0f64);
                }
                None => pad.set_property("alpha", 0.0f64),
            }
        }
    }

    /// End `publisher`'s tracks (it left): their branches end, and come back if it does.
    pub fn remove(&mut self, publisher: &str) {
        self.branches.retain(|(p, _), branch| {
            if p != publisher {
                return true;
            }
            if let Some(b) = branch {
                if let Some(pad) = &b.pad {
                    pad.set_property("alpha", 0.0f64);
                }
                let _ = b.appsrc.end_of_stream();
            }
            false
        });
    }

    /// Why the pipeline failed, if it did (the RTMP server refused or went away).
    pub fn failure(&self) -> Option<String> {
        self.launched.failure().map(|e| e.0)
    }

    /// End the stream: the last frames are flushed to the server, then the connection closes.
    pub fn finish(self) {
        for b in self.branches.values().flatten() {
            let _ = b.appsrc.end_of_stream();
        }
        // the live test sources never end by themselves
        self.launched.pipeline.send_event(gst::event::Eos::new());
        if let Err(e) = self.launched.wait_end(DRAIN) {
            warn!("restream did not drain: {e}");
        }
        self.launched.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_pushes_h264_and_aac_in_flv_to_the_url() {
        let s = CompositeSettings {
            width: 1280,
            height: 720,
            fps: 30,
            video_kbps: 2500,
            x264_preset: "veryfast".into(),
        };
        let d = main_description("rtmp://127.0.0.1:1935/live/room-a", &s);
        assert!(
            d.contains("location=\"rtmp://127.0.0.1:1935/live/room-a\""),
            "{d}"
        );
        assert!(d.contains("key-int-max=60"), "{d}");
        assert!(d.contains("width=1280,height=720,framerate=30/1"), "{d}");
        assert!(d.contains("avenc_aac"), "{d}");
    }
}
