//! What leaves the ladder: each rendition's `cmafmux`, the appsink after it, and its samples
//! turned into the origin's [`LiveEvent`]s (an init segment, then one CMAF chunk per sample),
//! counted per rendition in [`OUTPUT_MS`]. [`sample_events`] is shared with the archiver, which
//! packages recordings with the same muxer.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tidecast_common::{CmafChunk, LiveEvent};
use tokio::sync::mpsc;
use tracing::warn;

use crate::ladder::{make, LadderInput, LadderSettings};
use crate::IngestError;

/// Media time output per rendition, in milliseconds: `rate(…[1m]) / 1000` is the ladder's
/// real-time factor (1 keeps up with a live source; below 1 falls behind).
pub const OUTPUT_MS: &str = "tidecast_ladder_output_milliseconds_total";

pub(crate) trait SendFromAnyThread {
    fn blocking_send_or_try(&self, ev: LiveEvent) -> Result<(), ()>;
}

impl SendFromAnyThread for mpsc::Sender<LiveEvent> {
    /// `blocking_send` panics inside a runtime thread; there we fall back to `try_send`.
    fn blocking_send_or_try(&self, ev: LiveEvent) -> Result<(), ()> {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.try_send(ev).map_err(|_| ())
        } else {
            self.blocking_send(ev).map_err(|_| ())
        }
    }
}

/// A `cmafmux` cutting `settings.segment` fragments and `settings.part` chunks: planned by the
/// mux itself (audio), or by the ladder with split-now events (`manual_split`, video: see
/// [`crate::segmenting`] for why).
pub(crate) fn cmafmux(
    name: &str,
    settings: &LadderSettings,
    manual_split: bool,
) -> Result<gst::Element, IngestError> {
    let mux = make("cmafmux", name)?;
    mux.set_property(
        "fragment-duration",
        gst::ClockTime::from_nseconds(settings.segment.as_nanos() as u64),
    );
    if let Some(part) = settings.part {
        mux.set_property(
            "chunk-duration",
            gst::ClockTime::from_nseconds(part.as_nanos() as u64),
        );
    }
    mux.set_property("send-force-keyunit", false);
    mux.set_property("manual-split", manual_split);
    Ok(mux)
}

pub(crate) fn appsink(name: &str) -> gst_app::AppSink {
    gst_app::AppSink::builder()
        .name(name)
        .buffer_list(true)
        .sync(false)
        .build()
}

pub(crate) fn wire_appsink(
    appsink: &gst_app::AppSink,
    input: &LadderInput,
    rendition: &str,
    sink: mpsc::Sender<LiveEvent>,
) {
    let stream = input.stream.clone();
    let session = input.session;
    let rendition = rendition.to_string();
    let started_at = input.started_at;
    let output_ms = input.metrics.as_ref().map(|r| {
        r.counter(
            OUTPUT_MS,
            "Media time each ladder rendition has output (ms); rate/1000 is the real-time factor.",
            &[("stream", &stream), ("rendition", &rendition)],
        )
    });
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |appsink| {
                let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                for event in sample_events(&sample, &stream, session, &rendition, started_at) {
                    if let (Some(m), LiveEvent::Chunk { chunk, .. }) = (&output_ms, &event) {
                        m.add(chunk.duration.as_millis() as i64);
                    }
                    if sink.blocking_send_or_try(event).is_err() {
                        warn!(stream = %stream, rendition = %rendition, "origin gone, dropping output");
                        return Err(gst::FlowError::Flushing);
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// Turn one `cmafmux` output sample (a buffer list) into init / chunk events of `rendition`
/// (the archiver packages recordings with it too).
pub fn sample_events(
    sample: &gst::Sample,
    stream: &str,
    session: u64,
    rendition: &str,
    started_at: SystemTime,
) -> Vec<LiveEvent> {
    let mut out = Vec::new();
    let Some(list) = sample.buffer_list() else {
        return out;
    };
    let mut buffers: Vec<&gst::BufferRef> = list.iter().collect();
    if buffers.is_empty() {
        return out;
    }
    if buffers[0]
        .flags()
        .contains(gst::BufferFlags::DISCONT | gst::BufferFlags::HEADER)
    {
        if let Ok(map) = buffers[0].map_readable() {
            out.push(LiveEvent::Init {
                stream: stream.to_string(),
                session,
                rendition: rendition.to_string(),
                data: Bytes::copy_from_slice(&map),
            });
        }
        buffers.remove(0);
        if buffers.is_empty() {
            return out;
        }
    }
    let first = buffers[0];
    let pts = first
        .pts()
        .and_then(|pts| {
            sample
                .segment()
                .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                .and_then(|s| s.to_running_time(pts))
        })
        .unwrap_or(gst::ClockTime::ZERO);
    let duration = first.duration().unwrap_or(gst::ClockTime::ZERO);
    let size: usize = buffers.iter().map(|b| b.size()).sum();
    let mut data = BytesMut::with_capacity(size);
    for b in &buffers {
        if let Ok(map) = b.map_readable() {
            data.extend_from_slice(&map);
        }
    }
    let pts = Duration::from_nanos(pts.nseconds());
    out.push(LiveEvent::Chunk {
        stream: stream.to_string(),
        session,
        rendition: rendition.to_string(),
        chunk: CmafChunk {
            data: data.freeze(),
            pts,
            duration: Duration::from_nanos(duration.nseconds()),
            program_date_time: started_at + pts,
            samples: buffers.len().saturating_sub(1) as u32,
            // the header of a chunk that continues a fragment is DELTA_UNIT
            starts_segment: !first.flags().contains(gst::BufferFlags::DELTA_UNIT),
        },
    });
    out
}
