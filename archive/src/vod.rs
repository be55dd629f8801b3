//! The recording as VOD. `recording.mp4` is remuxed (not re-encoded) into CMAF by `cmafmux`
//! — the ladder's muxer, and its sample conversion — and run through the origin's packager and
//! archive core, so a recording is stored exactly like an archived live session:
//! `vod/rec-{meeting}/{session}/master.m3u8`, `manifest.mpd`, and per rendition `init.mp4`,
//! `{n}.m4s`, `media.m3u8` — served by the origin's `/vod/` routes to hls.js, dash.js and the
//! player demo (`/demo/?src=/vod/rec-{meeting}/{session}/master.m3u8`).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer_app as gst_app;
use tidecast_common::live::unix_millis;
use tidecast_common::pipeline;
use tidecast_common::store::SharedStore;
use tidecast_common::{LiveEvent, RenditionInfo, TrackKind};
use tidecast_origin::archive::ArchiveRecorder;
use tidecast_origin::packager::{StreamTable, WindowSettings};
use tokio::sync::mpsc;

use crate::ArchiveError;

/// CMAF fragment (segment) length of recordings.
pub const SEGMENT: Duration = Duration::from_secs(4);

/// Where a recording's VOD lives: stream `rec-{meeting}`, session = the call's start (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VodPlace {
    /// Stream name.
    pub stream: String,
    /// Session id.
    pub session: u64,
}

impl VodPlace {
    /// The place of `meeting`'s recording, whose call started at `started_at`.
    pub fn new(meeting: &str, started_at: SystemTime) -> VodPlace {
        VodPlace {
            stream: format!("rec-{meeting}"),
            session: unix_millis(started_at),
        }
    }

    /// Its master playlist's URL path on the origin.
    pub fn master(&self) -> String {
        format!("/vod/{}/{}/master.m3u8", self.stream, self.session)
    }

    /// Its DASH manifest's URL path on the origin.
    pub fn manifest(&self) -> String {
        format!("/vod/{}/{}/manifest.mpd", self.stream, self.session)
    }
}

/// The sinks do not wait for preroll (`async=false`): cmafmux holds a whole fragment, so one
/// prerolled sink would block qtdemux before the other branch had its first fragment.
fn description(mp4: &str, audio: bool) -> String {
    let fragment = SEGMENT.as_nanos();
    let mut d = format!(
        "filesrc location=\"{mp4}\" ! qtdemux name=demux \
         demux.video_0 ! queue ! h264parse ! cmafmux fragment-duration={fragment} \
           ! appsink name=video sync=false async=false buffer-list=true "
    );
    if audio {
        d.push_str(&format!(
            "demux.audio_0 ! queue ! aacparse ! cmafmux fragment-duration={fragment} \
               ! appsink name=audio sync=false async=false buffer-list=true "
        ));
    }
    d
}

/// The window settings that keep a whole recording (the archive core reads each segment from
/// the table as it completes).
fn settings() -> WindowSettings {
    WindowSettings {
        window: 3,
        dvr: Duration::ZERO,
        part_target: None,
        grace: 4,
        target: SEGMENT,
        ended_ttl: Duration::from_secs(60),
    }
}

/// Package `mp4` (a `width`×`height` H.264 video, AAC audio if `audio`) as `place` and store
/// it. Returns the number of objects written.
pub async fn package(
    mp4: &Path,
    place: &VodPlace,
    started_at: SystemTime,
    (width, height): (u32, u32),
    audio: bool,
    store: &SharedStore,
) -> Result<usize, ArchiveError> {
    let err = |e: &dyn std::fmt::Display| ArchiveError::Pipeline(format!("vod: {e}"));
    tidecast_ingest::ladder::init_gstreamer().map_err(|e| err(&e))?;
    let launched = pipeline::launch(&description(pipeline::quoted_path(mp4)?, audio))?;
    let video_name = format!("{height}p");
    let mut renditions = vec![RenditionInfo {
        name: video_name.clone(),
        kind: TrackKind::Video,
        bitrate_bps: 2_500_000,
        width,
        height,
    }];
    if audio {
        renditions.push(RenditionInfo {
            name: "audio".into(),
            kind: TrackKind::Audio,
            bitrate_bps: 128_000,
            width: 0,
            height: 0,
        });
    }
    let (tx, mut rx) = mpsc::channel::<Option<LiveEvent>>(64);
    for (sink_name, rendition) in [("video", video_name.as_str()), ("audio", "audio")] {
        let Ok(sink) = launched.element::<gst_app::AppSink>(sink_name) else {
            continue;
        };
        let (tx, stream, session, rendition) = (
            tx.clone(),
            place.stream.clone(),
            place.session,
            rendition.to_string(),
        );
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let events = tidecast_ingest::ladder_output::sample_events(
                        &sample, &stream, session, &rendition, started_at,
                    );
                    for event in events {
                        tx.blocking_send(Some(event))
                            .map_err(|_| gst::FlowError::Flushing)?;
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    launched.play()?;
    // the bus: EOS or an error ends the event stream
    let watch = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let result = launched.wait_end(Duration::from_secs(600));
            launched.stop();
            let _ = tx.blocking_send(None);
            result
        })
    };
    drop(tx);

    let mut table = StreamTable::new(settings());
    let mut recorder = ArchiveRecorder::default();
    let mut written = 0;
    let mut apply = |table: &mut StreamTable, event: LiveEvent| {
        table.apply(event, Instant::now());
        let outputs = table.take_outputs();
        recorder.on_outputs(table, outputs)
    };
    let mut writes = apply(
        &mut table,
        LiveEvent::SessionStarted {
            stream: place.stream.clone(),
            session: place.session,
            renditions,
            started_at,
        },
    );
    loop {
        for w in writes.drain(..) {
            store.put(&w.key, w.data).await?;
            written += 1;
        }
        match rx.recv().await {
            Some(Some(event)) => writes = apply(&mut table, event),
            _ => break,
        }
    }
    tokio::task::spawn_blocking(move || watch.join())
        .await
        .map_err(|e| err(&e))?
        .map_err(|_| err(&"bus thread panicked"))?
        .map_err(|e| err(&e))?;
    let end = LiveEvent::SessionEnded {
        stream: place.stream.clone(),
        session: place.session,
    };
    for w in apply(&mut table, end) {
        store.put(&w.key, w.data).await?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_is_a_vod_session_of_its_own_stream() {
        let started = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let place = VodPlace::new("0123abcd", started);
        assert_eq!(place.stream, "rec-0123abcd");
        assert!(tidecast_common::keys::is_valid_stream_name(&place.stream));
        assert_eq!(
            place.master(),
            "/vod/rec-0123abcd/1800000000123/master.m3u8"
        );
    }

    #[test]
    fn audio_is_remuxed_only_when_there_is_some() {
        assert!(description("/r.mp4", true).contains("demux.audio_0"));
        assert!(!description("/r.mp4", false).contains("audio"));
        assert!(description("/r.mp4", false).contains("cmafmux fragment-duration=4000000000"));
    }
}
