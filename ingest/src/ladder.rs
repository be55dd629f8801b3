//! The transcode ladder: one GStreamer pipeline per publishing session.
//!
//! ```text
//! appsrc (FLV bytes) ─ flvdemux ─┬─ h264parse ─ avdec_h264 ─ videoconvert(I420)
//!                                │      └─ scale→tee(720p) ─┬─ x264enc ─ cmafmux ─ appsink
//!                                │                          └─ scale→tee(480p) ─┬─ …
//!                                └─ aacparse ─ cmafmux ─ appsink (audio)
//! ```
//! Decode once; each rung scales from the previous rung (a cascade, cheaper than scaling every
//! rung from the source). Each encoder gets a keyframe at every segment boundary and each video
//! `cmafmux` is told where fragments and chunks start ([`crate::segmenting`]); all rungs see the
//! same decoded frames, so segments are cut at the same PTS in every rendition.

use std::sync::mpsc as std_mpsc;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tidecast_common::lifecycle::Work;
use tidecast_common::metrics::Registry;
use tidecast_common::{LiveEvent, RenditionInfo, TrackKind};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ladder_output::{appsink, cmafmux, wire_appsink, SendFromAnyThread};
use crate::ladder_plan::PlannedRung;
use crate::segmenting::{force_cadence, split_by_plan, SourceKeyframes};
use crate::IngestError;

/// Settings that shape every ladder (from `[ladder]` config).
#[derive(Debug, Clone)]
pub struct LadderSettings {
    /// Target segment duration.
    pub segment: Duration,
    /// CMAF chunk (LL-HLS part) duration; `None` = one chunk per segment.
    pub part: Option<Duration>,
    /// x264 speed preset.
    pub x264_preset: String,
    /// x264 threads per rung (0 = auto).
    pub x264_threads: u32,
}

/// Initialise GStreamer and register `cmafmux` (statically linked from gst-plugin-fmp4).
pub fn init_gstreamer() -> Result<(), IngestError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().map_err(|e| e.to_string())?;
        gstfmp4::plugin_register_static().map_err(|e| e.to_string())?;
        for needed in [
            "appsrc",
            "flvdemux",
            "h264parse",
            "avdec_h264",
            "videoconvert",
            "videoscale",
            "x264enc",
            "aacparse",
            "cmafmux",
            "appsink",
            "tee",
            "queue",
        ] {
            if gst::ElementFactory::find(needed).is_none() {
                return Err(format!(
                    "GStreamer element '{needed}' is missing; install gstreamer1.0-plugins-base, \
                     -good, -bad, -ugly and gstreamer1.0-libav (infra/bootstrap.sh does)"
                ));
            }
        }
        Ok(())
    })
    .clone()
    .map_err(IngestError::Ladder)
}

/// One running ladder.
pub struct Ladder {
    stream: String,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    done: Option<std_mpsc::Sender<()>>,
}

/// What the ladder is asked to build.
#[derive(Debug, Clone)]
pub struct LadderInput {
    /// Stream name.
    pub stream: String,
    /// Session id.
    pub session: u64,
    /// Planned video rungs, highest first.
    pub rungs: Vec<PlannedRung>,
    /// Repackage the source H.264 as a `source` rendition; every rung then cuts segments at the
    /// source's keyframes.
    pub passthrough: Option<crate::flv::AvcInfo>,
    /// Whether the source has AAC audio.
    pub has_audio: bool,
    /// Ingest wall clock of the first media byte (running time 0).
    pub started_at: SystemTime,
    /// Where each rendition counts the media time it has output
    /// ([`crate::ladder_output::OUTPUT_MS`]: its rate is the ladder's real-time factor).
    pub metrics: Option<Registry>,
}

pub(crate) fn make(factory: &str, name: &str) -> Result<gst::Element, IngestError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|e| IngestError::Ladder(format!("creating {factory}: {e}")))
}

fn link(elements: &[&gst::Element]) -> Result<(), IngestError> {
    gst::Element::link_many(elements.iter().copied())
        .map_err(|e| IngestError::Ladder(format!("linking: {e}")))
}

fn queue(name: &str) -> Result<gst::Element, IngestError> {
    let q = make("queue", name)?;
    // generous in time, so a slow rung does not stall its siblings for a moment
    q.set_property("max-size-time", 4_000_000_000u64);
    q.set_property("max-size-buffers", 0u32);
    q.set_property("max-size-bytes", 0u32);
    Ok(q)
}

impl Ladder {
    /// Build and start the pipeline; announces the session to `sink`. `work` (the drain's)
    /// is held until the session's end has been sent.
    pub fn start(
        input: LadderInput,
        settings: &LadderSettings,
        sink: mpsc::Sender<LiveEvent>,
        work: Option<Work>,
    ) -> Result<Ladder, IngestError> {
        init_gstreamer()?;
        let pipeline =
            gst::Pipeline::with_name(&format!("ladder-{}-{}", input.stream, input.session));
        let appsrc = gst_app::AppSrc::builder()
            .name("src")
            .caps(&gst::Caps::builder("video/x-flv").build())
            .is_live(false)
            .stream_type(gst_app::AppStreamType::Stream)
            .max_bytes(64 * 1024 * 1024)
            .build();
        let demux = make("flvdemux", "demux")?;
        pipeline
            .add_many([appsrc.upcast_ref(), &demux])
            .map_err(|e| IngestError::Ladder(e.to_string()))?;
        link(&[appsrc.upcast_ref(), &demux])?;

        // video: parse, decode once, convert to I420 once
        let vqueue = queue("vqueue")?;
        let parse = make("h264parse", "vparse")?;
        let dec = make("avdec_h264", "vdec")?;
        let conv = make("videoconvert", "vconv")?;
        let i420 = make("capsfilter", "i420")?;
        i420.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .build(),
        );
        pipeline
            .add_many([&vqueue, &parse, &dec, &conv, &i420])
            .map_err(|e| IngestError::Ladder(e.to_string()))?;
        link(&[&vqueue, &parse, &dec, &conv, &i420])?;

        let mut renditions = Vec::new();
        let source_keyframes = SourceKeyframes::default();
        if let Some(avc) = input.passthrough {
            // parse ─ tee ─┬─ queue ─ cmafmux ─ appsink (source)
            //              └─ queue ─ avdec_h264 … (the ladder)
            let tee = make("tee", "tee-source")?;
            let pass_q = queue("passq")?;
            let pass_mux = cmafmux("mux-source", settings, true)?;
            let pass_sink = appsink("sink-source");
            let dec_q = queue("decq")?;
            pipeline
                .add_many([&tee, &pass_q, &pass_mux, pass_sink.upcast_ref(), &dec_q])
                .map_err(|e| IngestError::Ladder(e.to_string()))?;
            parse.unlink(&dec);
            link(&[&parse, &tee, &pass_q, &pass_mux, pass_sink.upcast_ref()])?;
            if let Some(pad) = pass_q.static_pad("src") {
                split_by_plan(&pad, settings.segment, settings.part);
            }
            link(&[&tee, &dec_q, &dec])?;
            wire_appsink(&pass_sink, &input, "source", sink.clone());
            source_keyframes.watch(&parse);
            renditions.push(RenditionInfo {
                name: "source".into(),
                kind: TrackKind::Video,
                bitrate_bps: 0,
                width: avc.width,
                height: avc.height,
            });
        }
        let mut upstream = i420.clone();
        let mut size_filters = Vec::new();
        for rung in &input.rungs {
            let n = &rung.name;
            let scale_q = queue(&format!("scaleq-{n}"))?;
            let scale = make("videoscale", &format!("scale-{n}"))?;
            let caps = make("capsfilter", &format!("size-{n}"))?;
            caps.set_property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("width", rung.width as i32)
                    .field("height", rung.height as i32)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            );
            let tee = make("tee", &format!("tee-{n}"))?;
            let enc_q = queue(&format!("encq-{n}"))?;
            let enc = make("x264enc", &format!("x264-{n}"))?;
            enc.set_property("bitrate", rung.video_kbps);
            enc.set_property_from_str("speed-preset", &settings.x264_preset);
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property("threads", settings.x264_threads);
            // keyframes are forced where segments start (below); scene-cut detection would only
            // add analysis work and stray IDRs inside segments
            enc.set_property("option-string", "scenecut=0");
            if input.passthrough.is_some() {
                // keyframes exactly where the source has them, nowhere else, so every rendition
                // cuts at the same PTS as the passthrough one
                enc.set_property("key-int-max", 100_000u32);
                source_keyframes.force_on(&enc);
            } else {
                // keyframes on the segment cadence (below); this only bounds the GOP if those
                // stop
                enc.set_property("key-int-max", 600u32);
                force_cadence(&enc, settings.segment);
            }
            let profile = make("capsfilter", &format!("profile-{n}"))?;
            profile.set_property(
                "caps",
                gst::Caps::builder("video/x-h264")
                    .field("profile", "high")
                    .build(),
            );
            let mux = cmafmux(&format!("mux-{n}"), settings, true)?;
            let appsink = appsink(&format!("sink-{n}"));
            pipeline
                .add_many([
                    &scale_q,
                    &scale,
                    &caps,
                    &tee,
                    &enc_q,
                    &enc,
                    &profile,
                    &mux,
                    appsink.upcast_ref(),
                ])
                .map_err(|e| IngestError::Ladder(e.to_string()))?;
            link(&[&upstream, &scale_q, &scale, &caps, &tee])?;
            size_filters.push(caps.clone());
            link(&[&tee, &enc_q, &enc, &profile, &mux, appsink.upcast_ref()])?;
            if let Some(pad) = profile.static_pad("src") {
                split_by_plan(&pad, settings.segment, settings.part);
            }
            wire_appsink(&appsink, &input, n, sink.clone());
            upstream = tee;
            renditions.push(RenditionInfo {
                name: n.clone(),
                kind: TrackKind::Video,
                bitrate_bps: u64::from(rung.video_kbps) * 1000,
                width: rung.width,
                height: rung.height,
            });
        }

        if let Some(pad) = i420.static_pad("src") {
            keep_colorimetry(&pad, size_filters);
        }

        // audio: AAC is kept as it is, repackaged as its own CMAF track
        let audio_entry = if input.has_audio {
            let aqueue = queue("aqueue")?;
            let aparse = make("aacparse", "aparse")?;
            let amux = cmafmux("mux-audio", settings, false)?;
            let asink = appsink("sink-audio");
            pipeline
                .add_many([&aqueue, &aparse, &amux, asink.upcast_ref()])
                .map_err(|e| IngestError::Ladder(e.to_string()))?;
            link(&[&aqueue, &aparse, &amux, asink.upcast_ref()])?;
            wire_appsink(&asink, &input, "audio", sink.clone());
            renditions.push(RenditionInfo {
                name: "audio".into(),
                kind: TrackKind::Audio,
                bitrate_bps: 128_000,
                width: 0,
                height: 0,
            });
            Some(aqueue)
        } else {
            None
        };

        // flvdemux pads appear once tags arrive; anything unexpected goes to a fakesink
        let video_entry = vqueue.clone();
        let pipeline_weak = pipeline.downgrade();
        let stream_name = input.stream.clone();
        demux.connect_pad_added(move |_demux, pad| {
            let target = match pad.name().as_str() {
                "video" => Some(video_entry.clone()),
                "audio" => audio_entry.clone(),
                _ => None,
            };
            let target = match target {
                Some(t) => t,
                None => {
                    let Some(pipeline) = pipeline_weak.upgrade() else {
                        return;
                    };
                    let Ok(fake) = gst::ElementFactory::make("fakesink").build() else {
                        return;
                    };
                    fake.set_property("sync", false);
                    let _ = pipeline.add(&fake);
                    let _ = fake.sync_state_with_parent();
                    fake
                }
            };
            let Some(sinkpad) = target.static_pad("sink") else {
                return;
            };
            if let Err(e) = pad.link(&sinkpad) {
                warn!(stream = %stream_name, pad = %pad.name(), "linking demuxer pad: {e:?}");
            }
        });

        let started = LiveEvent::SessionStarted {
            stream: input.stream.clone(),
            session: input.session,
            renditions,
            started_at: input.started_at,
        };
        if sink.blocking_send_or_try(started).is_err() {
            return Err(IngestError::Ladder("origin is gone".into()));
        }

        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| IngestError::Ladder(format!("starting pipeline: {e}")))?;

        let (done_tx, done_rx) = std_mpsc::channel::<()>();
        spawn_bus_watch(&pipeline, &input, sink, done_rx, work)?;
        info!(stream = %input.stream, session = input.session, rungs = input.rungs.len(), audio = input.has_audio, "ladder started");
        Ok(Ladder {
            stream: input.stream,
            pipeline,
            appsrc,
            done: Some(done_tx),
        })
    }

    /// Feed FLV bytes (file header first, then tags).
    pub fn push(&self, data: Bytes) -> Result<(), IngestError> {
        let buffer = gst::Buffer::from_slice(data);
        self.appsrc
            .push_buffer(buffer)
            .map(|_| ())
            .map_err(|e| IngestError::Ladder(format!("pipeline refused data: {e:?}")))
    }

    /// Bytes queued in the ladder's input (grows when transcoding falls behind real time).
    pub fn queued_bytes(&self) -> u64 {
        self.appsrc.current_level_bytes()
    }

    /// End of stream: drain every rung, then the bus watch reports `SessionEnded`.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(done) = self.done.take() {
            debug!(stream = %self.stream, "ladder draining");
            let _ = self.appsrc.end_of_stream();
            let _ = done.send(());
        }
    }

    /// The pipeline (for diagnostics).
    pub fn pipeline(&self) -> &gst::Pipeline {
        &self.pipeline
    }
}

impl Drop for Ladder {
    fn drop(&mut self) {
        self.end();
    }
}

/// Give every rung the source's colorimetry and chroma siting, taken from the decoded caps into
/// each rung's size capsfilter as they pass `pad`. Left open, `videoscale` fixates a smaller
/// picture to the default for its size (BT.601 below 576 lines) and converts the colour matrix of
/// every frame: two thirds of its CPU for 720p → 480p, and not what ffmpeg (or the source's VUI)
/// does.
fn keep_colorimetry(pad: &gst::Pad, filters: Vec<gst::Element>) {
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(event)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let gst::EventView::Caps(c) = event.view() else {
            return gst::PadProbeReturn::Ok;
        };
        // decoders leave colorimetry out when the stream's VUI has none; then it is the
        // default for the source's size, which is what the rungs must keep
        let (Some(source), Ok(info)) = (
            c.caps().structure(0),
            gst_video::VideoInfo::from_caps(c.caps()),
        ) else {
            return gst::PadProbeReturn::Ok;
        };
        let colorimetry = info.colorimetry().to_string();
        for filter in &filters {
            let mut caps = filter.property::<gst::Caps>("caps");
            if let Some(rung) = caps.make_mut().structure_mut(0) {
                rung.set("colorimetry", colorimetry.as_str());
                match source.value("chroma-site") {
                    Ok(v) => rung.set_value("chroma-site", v.clone()),
                    Err(_) => rung.remove_field("chroma-site"),
                }
            }
            filter.set_property("caps", caps);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Watch the bus on a plain thread: errors and EOS end the session. After `finish`, a pipeline
/// that does not drain within 10 s is stopped anyway.
fn spawn_bus_watch(
    pipeline: &gst::Pipeline,
    input: &LadderInput,
    sink: mpsc::Sender<LiveEvent>,
    done: std_mpsc::Receiver<()>,
    work: Option<Work>,
) -> Result<(), IngestError> {
    let bus = pipeline
        .bus()
        .ok_or_else(|| IngestError::Ladder("pipeline without bus".into()))?;
    let pipeline = pipeline.clone();
    let stream = input.stream.clone();
    let session = input.session;
    std::thread::Builder::new()
        .name(format!("ladder-{stream}"))
        .spawn(move || {
            let mut drain_deadline: Option<std::time::Instant> = None;
            loop {
                if drain_deadline.is_none() && done.try_recv().is_ok() {
                    drain_deadline = Some(std::time::Instant::now() + Duration::from_secs(10));
                }
                if let Some(deadline) = drain_deadline {
                    if std::time::Instant::now() > deadline {
                        warn!(stream = %stream, session, "ladder did not drain in 10 s, stopping");
                        break;
                    }
                }
                let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else {
                    continue;
                };
                match msg.view() {
                    gst::MessageView::Eos(_) => {
                        info!(stream = %stream, session, "ladder drained");
                        break;
                    }
                    gst::MessageView::Error(err) => {
                        warn!(
                            stream = %stream,
                            session,
                            source = ?err.src().map(|s| s.path_string()),
                            debug = ?err.debug(),
                            "ladder error: {}",
                            err.error()
                        );
                        break;
                    }
                    gst::MessageView::Warning(w) => {
                        debug!(stream = %stream, "ladder warning: {}", w.error());
                    }
                    _ => {}
                }
            }
            let _ = pipeline.set_state(gst::State::Null);
            let _ = sink.blocking_send(LiveEvent::SessionEnded { stream, session });
            // a draining process waits for this: the stream's end is on its way to the origin
            drop(work);
        })
        .map(|_| ())
        .map_err(|e| IngestError::Ladder(format!("spawning bus thread: {e}")))
}
