//! Call recording. The SFU hands every packet it forwards of a recorded room — each
//! participant's audio and the best video layer it receives, as one continuous stream per track
//! — to a [`RecordTap`] (one of the SFU's [`crate::tap`]s); the [`Recorder`] task gives each track a [`track::TrackWriter`]
//! (GStreamer: RTP → self-contained WebM (VP8, Opus) or MPEG-TS (H.264) chunks of ~4 s) whose chunks and
//! [`index`] go through the spooled writer to the object store, so a store outage loses
//! nothing. [`Recorder::finish`] ends a meeting's tracks and says how many chunks it has.

pub mod index;
pub mod track;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::spool::SpooledWriter;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use index::TrackPlace;

use crate::tap::{PacketSink, Tap, TappedPacket};
use track::TrackWriter;

/// Why recording a track failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// GStreamer could not build or start the pipeline.
    #[error("recording pipeline: {0}")]
    Pipeline(String),
}

impl From<tidecast_common::pipeline::PipelineError> for RecordingError {
    fn from(e: tidecast_common::pipeline::PipelineError) -> Self {
        RecordingError::Pipeline(e.0)
    }
}

enum Msg {
    Start {
        meeting: Arc<str>,
        started: Instant,
    },
    Packet(Arc<str>, TappedPacket),
    Finish {
        meeting: Arc<str>,
        reply: oneshot::Sender<u64>,
    },
}

/// Where the SFU sends a recorded room's packets.
#[derive(Debug, Clone)]
pub struct RecordTap {
    meeting: Arc<str>,
    tx: mpsc::UnboundedSender<Msg>,
}

impl PacketSink for RecordTap {
    fn label(&self) -> String {
        format!("recording of meeting {}", self.meeting)
    }

    fn send(&self, packet: TappedPacket) {
        let _ = self.tx.send(Msg::Packet(self.meeting.clone(), packet));
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("recording message")
    }
}

/// The recorder of a rooms node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

struct MeetingTracks {
    started: Instant,
    /// `None`: the track could not be recorded (not tried again)
    tracks: HashMap<(String, String), Option<TrackWriter>>,
}

impl Recorder {
    /// Start the recorder task (needs a tokio runtime): chunks wait in `dir` until `writer`
    /// has them.
    pub fn spawn(writer: SpooledWriter, dir: PathBuf, registry: &Registry) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        let active = registry.gauge(
            "tidecast_recordings_active",
            "Meetings being recorded on this node.",
            &[],
        );
        let tracks = registry.gauge(
            "tidecast_recording_tracks",
            "Tracks being recorded on this node.",
            &[],
        );
        tokio::spawn(run(rx, writer, dir, active, tracks));
        Recorder { tx }
    }

    /// Start recording `meeting` (whose call started at `started`); the SFU sends its packets
    /// to the returned tap.
    pub fn start(&self, meeting: &str, started: Instant) -> Tap {
        let meeting: Arc<str> = Arc::from(meeting);
        let _ = self.tx.send(Msg::Start {
            meeting: meeting.clone(),
            started,
        });
        Tap::new(RecordTap {
            meeting,
            tx: self.tx.clone(),
        })
    }

    /// End `meeting`'s recording: every track writes its last chunk. Returns the number of
    /// chunks recorded (all handed to the spooled writer).
    pub async fn finish(&self, meeting: &str) -> u64 {
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Finish {
            meeting: Arc::from(meeting),
            reply,
        };
        if self.tx.send(msg).is_err() {
            return 0;
        }
        answer.await.unwrap_or(0)
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    writer: SpooledWriter,
    dir: PathBuf,
    active: Metric,
    track_count: Metric,
) {
    if let Err(e) = gstreamer::init() {
        warn!("GStreamer did not initialise, calls cannot be recorded: {e}");
    }
    let mut meetings: HashMap<Arc<str>, MeetingTracks> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Start { meeting, started } => {
                info!(%meeting, "recording started");
                meetings.entry(meeting).or_insert_with(|| MeetingTracks {
                    started,
                    tracks: HashMap::new(),
                });
            }
            Msg::Packet(meeting, packet) => {
                let Some(m) = meetings.get_mut(&meeting) else {
                    continue; // finished
                };
                let key = (packet.publisher.clone(), packet.track.clone());
                if !m.tracks.contains_key(&key) {
                    let place = match TrackPlace::new(&meeting, &packet.publisher, &packet.track) {
                        Ok(p) => p,
                        Err(e) => {
                            warn!(%meeting, "track not recorded: {e}");
                            m.tracks.insert(key, None);
                            continue;
                        }
                    };
                    let offset_ms = m.started.elapsed().as_millis() as u64;
                    let tmp = dir.join(format!("{meeting}-{}-{}", key.0, key.1));
                    match TrackWriter::start(
                        place,
                        packet.codec,
                        packet.pt,
                        packet.clock_rate,
                        offset_ms,
                        tmp,
                        writer.clone(),
                    ) {
                        Ok(w) => {
                            info!(%meeting, participant = %key.0, track = %key.1, codec = ?packet.codec, "recording track");
                            m.tracks.insert(key.clone(), Some(w));
                            track_count.add(1);
                        }
                        Err(e) => {
                            warn!(%meeting, participant = %key.0, "track not recorded: {e}");
                            m.tracks.insert(key, None);
                            continue;
                        }
                    }
                }
                if let Some(Some(w)) = m.tracks.get(&key) {
                    w.push(packet.to_rtp());
                }
            }
            Msg::Finish { meeting, reply } => {
                let Some(m) = meetings.remove(&meeting) else {
                    let _ = reply.send(0);
                    continue;
                };
                let writers: Vec<TrackWriter> = m.tracks.into_values().flatten().collect();
                track_count.add(-(writers.len() as i64));
                let meeting_name = meeting.clone();
                // drain off the task: each track waits for its last chunk
                tokio::spawn(async move {
                    let waits = writers
                        .into_iter()
                        .map(|w| tokio::task::spawn_blocking(move || w.finish()));
                    let mut chunks = 0u64;
                    for w in waits.collect::<Vec<_>>() {
                        chunks += u64::from(w.await.unwrap_or(0));
                    }
                    info!(meeting = %meeting_name, chunks, "recording finished");
                    let _ = reply.send(chunks);
                });
            }
        }
        active.set(meetings.len() as i64);
    }
}
