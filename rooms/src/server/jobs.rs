//! What runs beside a call: its recording (the SFU's tap into the recorder, stopped with the
//! chunk count), its restream to the CDN, and the `call.ended` event when the room closes.

use std::time::SystemTime;

use hyper::StatusCode;
use tracing::{info, warn};

use crate::call_events::EndReason;
use crate::room::Effect;
use crate::signal::ServerMessage;
use crate::tap::TapPurpose;

use super::{RecordingState, RoomEntry, Rooms};

impl Rooms {
    /// Start recording `entry`'s call: the call moves to the SFU and the SFU hands its
    /// tracks to the recorder. Fails (status, code, message) without an SFU or a store, or when
    /// this call was recorded and stopped already (a second recording would overwrite it).
    pub(super) fn start_recording(
        &self,
        room: &str,
        entry: &mut RoomEntry,
    ) -> Result<(), (StatusCode, &'static str, &'static str)> {
        let (Some(recorder), Some(sfu)) = (&self.recorder, &self.sfu) else {
            return Err((
                StatusCode::CONFLICT,
                "no_recording",
                "recording needs the SFU (rooms.sfu) and an object store",
            ));
        };
        match entry.recording {
            RecordingState::On => return Ok(()),
            RecordingState::Stopped(_) => {
                return Err((
                    StatusCode::CONFLICT,
                    "recorded",
                    "this call was recorded and stopped already",
                ))
            }
            RecordingState::Off => {}
        }
        let tap = recorder.start(entry.call.meeting_id(), entry.started);
        sfu.send(crate::sfu::Command::Tap {
            room: room.to_string(),
            purpose: TapPurpose::Record,
            tap: Some(tap),
        });
        let effects = entry.room.use_sfu();
        self.apply(&entry.room, effects);
        entry.recording = RecordingState::On;
        info!(%room, meeting = entry.call.meeting_id(), "recording the call");
        self.announce_recording(entry);
        Ok(())
    }

    /// Stop recording `entry`'s call; the chunk count comes when its last chunks are written.
    pub(super) fn stop_recording(&self, room: &str, entry: &mut RoomEntry) {
        let (Some(recorder), Some(sfu)) = (&self.recorder, &self.sfu) else {
            return;
        };
        if !matches!(entry.recording, RecordingState::On) {
            return;
        }
        sfu.send(crate::sfu::Command::Tap {
            room: room.to_string(),
            purpose: TapPurpose::Record,
            tap: None,
        });
        let recorder = recorder.clone();
        let meeting = entry.call.meeting_id().to_string();
        entry.recording =
            RecordingState::Stopped(tokio::spawn(async move { recorder.finish(&meeting).await }));
        info!(%room, meeting = entry.call.meeting_id(), "recording stopped");
        self.announce_recording(entry);
    }

    /// Tell everyone in `entry`'s call whether it is recorded.
    fn announce_recording(&self, entry: &RoomEntry) {
        let on = matches!(entry.recording, RecordingState::On);
        let effects = entry
            .room
            .participants()
            .into_iter()
            .map(|p| Effect::Send {
                to: p.id,
                message: ServerMessage::Recording {
                    on,
                    can_control: None,
                },
            })
            .collect();
        self.apply(&entry.room, effects);
    }

    /// Restream `entry`'s call to `url` (default: this deployment's ingest as `room-{room}`):
    /// the call moves to the SFU and the SFU hands its tracks to the restream.
    pub(super) fn start_restream(
        &self,
        room: &str,
        entry: &mut RoomEntry,
        url: Option<String>,
    ) -> Result<(), (StatusCode, &'static str, String)> {
        let (Some(restreamer), Some(sfu)) = (&self.restreamer, &self.sfu) else {
            return Err((
                StatusCode::CONFLICT,
                "no_restream",
                "restreaming needs the SFU (rooms.sfu)".into(),
            ));
        };
        let url = url.unwrap_or_else(|| restreamer.default_target(room));
        if let Some(current) = &entry.restream {
            if current.failure().is_none() && current.url == url {
                return Ok(());
            }
        }
        self.stop_restream(room, entry);
        let restream = restreamer
            .start(room, &url)
            .map_err(|e| (StatusCode::BAD_REQUEST, "bad_restream", e.to_string()))?;
        sfu.send(crate::sfu::Command::Tap {
            room: room.to_string(),
            purpose: TapPurpose::Restream,
            tap: Some(restream.tap()),
        });
        let effects = entry.room.use_sfu();
        self.apply(&entry.room, effects);
        entry.restream = Some(restream);
        Ok(())
    }

    /// Stop restreaming `entry`'s call (the stream ends with ENDLIST).
    pub(super) fn stop_restream(&self, room: &str, entry: &mut RoomEntry) {
        let Some(restream) = entry.restream.take() else {
            return;
        };
        if let Some(sfu) = &self.sfu {
            sfu.send(crate::sfu::Command::Tap {
                room: room.to_string(),
                purpose: TapPurpose::Restream,
                tap: None,
            });
        }
        info!(%room, url = %restream.url, "restream stopping");
        // flushing to the RTMP server takes a moment
        tokio::task::spawn_blocking(move || restream.stop());
    }

    /// Announce the end of `entry`'s call on the event bus (when anyone was in it), after its
    /// recording (if any) has written its last chunks. Publishing only writes to local disk; the
    /// bus delivers it later if its broker is down.
    pub(super) fn call_ended(&self, room: &str, mut entry: RoomEntry, reason: EndReason) {
        self.stop_recording(room, &mut entry);
        self.stop_restream(room, &mut entry);
        if !entry.call.had_anyone() {
            return;
        }
        let Some(events) = self.events.clone() else {
            return;
        };
        let ended_at = SystemTime::now();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let chunks = match entry.recording {
                RecordingState::Stopped(chunks) => chunks.await.unwrap_or(0),
                _ => 0,
            };
            let ended = entry.call.ended(ended_at, reason, chunks);
            let labels = [("bus", events.bus.kind())];
            match events.bus.publish(ended.to_event(&events.topic)) {
                Ok(()) => {
                    info!(room = %ended.room, meeting = %ended.meeting_id, ?reason,
                          participants = ended.participants.len(), chunks, "call ended");
                    registry
                        .counter(
                            "tidecast_call_events_published_total",
                            "call.ended events handed to the event bus.",
                            &labels,
                        )
                        .inc();
                }
                Err(e) => {
                    warn!(room = %ended.room, meeting = %ended.meeting_id, "call.ended not published: {e}");
                    registry
                        .counter(
                            "tidecast_call_event_failures_total",
                            "call.ended events the event bus refused.",
                            &labels,
                        )
                        .inc();
                }
            }
        });
    }
}
