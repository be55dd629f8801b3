//! One recorded track: a GStreamer pipeline that takes the track's RTP (as the SFU forwards it,
//! one continuous stream) and cuts it into self-contained chunks —
//! `appsrc ! rtpjitterbuffer ! depay ! [parse] ! splitmuxsink (webmmux | mpegtsmux)` — and a
//! thread on its bus that hands each closed chunk, then the updated index, to the spooled writer.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tidecast_common::pipeline::{self, Launched};
use tidecast_common::spool::{SpooledWriter, StoreWrite};
use tracing::{debug, info, warn};

use super::index::{ChunkEntry, RecordedCodec, TrackIndex, TrackPlace};
use super::RecordingError;

/// Target length of a chunk (video chunks end at the first keyframe after it).
pub const CHUNK: Duration = Duration::from_secs(4);
/// How long a finishing track may take to write its last chunk.
const DRAIN: Duration = Duration::from_secs(10);

/// A track being recorded.
pub struct TrackWriter {
    appsrc: gst_app::AppSrc,
    done: std_mpsc::Receiver<u32>,
    label: String,
}

fn pipeline_description(codec: RecordedCodec, pt: u8, clock_rate: u32, dir: &str) -> String {
    let (media, name, chain, muxer) = match codec {
        RecordedCodec::Vp8 => (
            "video",
            "VP8",
            "rtpvp8depay wait-for-keyframe=true",
            "webmmux",
        ),
        RecordedCodec::H264 => (
            "video",
            "H264",
            "rtph264depay wait-for-keyframe=true ! h264parse config-interval=-1 ! \
             video/x-h264,stream-format=byte-stream,alignment=au",
            "mpegtsmux",
        ),
        RecordedCodec::Opus => ("audio", "OPUS", "rtpopusdepay ! opusparse", "webmmux"),
    };
    // splitmuxsink has a `video` pad and `audio_%u` pads: name the one this track takes
    let pad = if media == "audio" { "audio_0" } else { "video" };
    format!(
        "splitmuxsink name=sink muxer-factory={muxer} max-size-time={} \
           location=\"{dir}/%05d.{}\" \
         appsrc name=src is-live=true do-timestamp=true format=time max-bytes=4000000 \
           caps=\"application/x-rtp,media=(string){media},encoding-name=(string){name},\
clock-rate=(int){clock_rate},payload=(int){pt}\" \
         ! rtpjitterbuffer latency=200 ! {chain} ! sink.{pad}",
        CHUNK.as_nanos(),
        codec.extension()
    )
}

impl TrackWriter {
    /// Start recording into chunks under `place`; the pipeline's time 0 is `offset_ms` after
    /// the call started. `dir` holds each chunk until it is handed to `writer`.
    pub fn start(
        place: TrackPlace,
        codec: RecordedCodec,
        pt: u8,
        clock_rate: u32,
        offset_ms: u64,
        dir: PathBuf,
        writer: SpooledWriter,
    ) -> Result<TrackWriter, RecordingError> {
        let gst_error = |e: &dyn std::fmt::Display| RecordingError::Pipeline(e.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| gst_error(&e))?;
        let dir_text = pipeline::quoted_path(&dir)?;
        let launched = pipeline::launch(&pipeline_description(codec, pt, clock_rate, dir_text))?;
        let appsrc: gst_app::AppSrc = launched.element("src")?;
        launched.play()?;
        let (tx, done) = std_mpsc::channel();
        let label = format!("{place:?}");
        let index = place.index(codec);
        let watch = BusWatch {
            launched,
            place,
            codec,
            index,
            offset_ms,
            writer,
            dir,
        };
        std::thread::Builder::new()
            .name("recording".into())
            .spawn(move || {
                let chunks = watch.run();
                let _ = tx.send(chunks);
            })
            .map_err(|e| gst_error(&e))?;
        Ok(TrackWriter {
            appsrc,
            done,
            label,
        })
    }

    /// One RTP packet (header and payload).
    pub fn push(&self, rtp: Vec<u8>) {
        if let Err(e) = self.appsrc.push_buffer(gst::Buffer::from_mut_slice(rtp)) {
            debug!(track = %self.label, "recording input refused: {e:?}");
        }
    }

    /// End the track: the last chunk is written. Blocks (up to 10 s); returns how many chunks
    /// the track has.
    pub fn finish(self) -> u32 {
        let _ = self.appsrc.end_of_stream();
        match self.done.recv_timeout(DRAIN) {
            Ok(n) => n,
            Err(_) => {
                warn!(track = %self.label, "recording did not drain in 10 s");
                0
            }
        }
    }
}

struct BusWatch {
    launched: Launched,
    place: TrackPlace,
    codec: RecordedCodec,
    index: TrackIndex,
    offset_ms: u64,
    writer: SpooledWriter,
    dir: PathBuf,
}

impl BusWatch {
    /// Until EOS or an error: each closed chunk goes to the writer, then the index.
    fn run(mut self) -> u32 {
        let mut opened_at: Option<u64> = None;
        loop {
            let Some(msg) = self
                .launched
                .bus
                .timed_pop(gst::ClockTime::from_mseconds(500))
            else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Element(e) => {
                    let Some(s) = e.structure() else { continue };
                    let running_ms = s
                        .get::<u64>("running-time")
                        .map(|ns| ns / 1_000_000)
                        .unwrap_or(0);
                    match s.name().as_str() {
                        "splitmuxsink-fragment-opened" => opened_at = Some(running_ms),
                        "splitmuxsink-fragment-closed" => {
                            let location = s.get::<String>("location").unwrap_or_default();
                            let start = opened_at.take().unwrap_or(running_ms);
                            self.chunk_closed(PathBuf::from(location), start, running_ms);
                        }
                        _ => {}
                    }
                }
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(err) => {
                    warn!(track = ?self.place, debug = ?err.debug(), "recording error: {}", err.error());
                    break;
                }
                _ => {}
            }
        }
        self.launched.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        self.index.chunks.len() as u32
    }

    fn chunk_closed(&mut self, path: PathBuf, start_ms: u64, end_ms: u64) {
        let data = match std::fs::read(&path) {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => return,
            Err(e) => {
                warn!(track = ?self.place, path = %path.display(), "recorded chunk unreadable: {e}");
                return;
            }
        };
        let _ = std::fs::remove_file(&path);
        let seq = self.index.chunks.len() as u32;
        let (Ok(key), Ok(index_key)) = (
            self.place.chunk_key(seq, self.codec),
            self.place.index_key(),
        ) else {
            return;
        };
        self.index.chunks.push(ChunkEntry {
            seq,
            key: key.to_string(),
            start_ms: self.offset_ms + start_ms,
            duration_ms: end_ms.saturating_sub(start_ms),
        });
        let index = serde_json::to_vec_pretty(&self.index).unwrap_or_default();
        debug!(%key, bytes = data.len(), start_ms, "recording chunk written");
        if seq == 0 {
            info!(track = ?self.place, codec = ?self.codec, "recording: first chunk");
        }
        self.writer.submit(vec![
            StoreWrite {
                key,
                data: Bytes::from(data),
            },
            StoreWrite {
                key: index_key,
                data: Bytes::from(index),
            },
        ]);
    }
}
