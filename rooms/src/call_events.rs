//! Call events: what a room leaves on the event bus when its call ends. A [`CallLog`] follows
//! one call (a room from its first join until it closes) and turns into the `call.ended` event
//! ([`CallEnded`], JSON with a schema version, keyed by meeting id) that the archiver consumes.
//! Pure: times are passed in.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tidecast_common::bus::Event;
use tidecast_common::time::rfc3339_millis as rfc3339;

/// Version of the `call.ended` JSON; a consumer refuses versions it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The last participant left (or its resume window ran out).
    Empty,
    /// The room was ended through the API (`DELETE /api/rooms/{room}`).
    Ended,
}

/// One participant of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attendee {
    /// Identity (from the join token).
    pub id: String,
    /// Display name at join.
    pub name: String,
}

/// A call in progress.
#[derive(Debug, Clone)]
pub struct CallLog {
    meeting_id: String,
    room: String,
    started: SystemTime,
    attendees: Vec<Attendee>,
}

/// The `call.ended` event, as the rooms write it and the archiver reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEnded {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Always `call.ended`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unique per call (a room name is reused by later calls).
    pub meeting_id: String,
    /// The room.
    pub room: String,
    /// Everyone who joined, in join order.
    pub participants: Vec<Attendee>,
    /// First join (RFC 3339, UTC).
    pub started_at: String,
    /// End (RFC 3339, UTC).
    pub ended_at: String,
    /// Length of the call in milliseconds.
    pub duration_ms: u64,
    /// Why it ended.
    pub reason: EndReason,
    /// Recording chunks written for the call (0: not recorded).
    pub chunks: u64,
}

impl CallLog {
    /// A call in `room` that starts now, named `meeting_id`.
    pub fn new(meeting_id: String, room: &str, started: SystemTime) -> CallLog {
        CallLog {
            meeting_id,
            room: room.to_string(),
            started,
            attendees: Vec::new(),
        }
    }

    /// The meeting id.
    pub fn meeting_id(&self) -> &str {
        &self.meeting_id
    }

    /// `id` joined (again, after a resume or a reconnect: counted once).
    pub fn joined(&mut self, id: &str, name: &str) {
        if !self.attendees.iter().any(|a| a.id == id) {
            self.attendees.push(Attendee {
                id: id.to_string(),
                name: name.to_string(),
            });
        }
    }

    /// Whether anyone ever joined (a room nobody got into was no call).
    pub fn had_anyone(&self) -> bool {
        !self.attendees.is_empty()
    }

    /// The event for the call ending at `ended`.
    pub fn ended(&self, ended: SystemTime, reason: EndReason, chunks: u64) -> CallEnded {
        let duration = ended.duration_since(self.started).unwrap_or_default();
        CallEnded {
            schema: SCHEMA_VERSION,
            kind: "call.ended".into(),
            meeting_id: self.meeting_id.clone(),
            room: self.room.clone(),
            participants: self.attendees.clone(),
            started_at: rfc3339(self.started),
            ended_at: rfc3339(ended),
            duration_ms: duration.as_millis() as u64,
            reason,
            chunks,
        }
    }
}

impl CallEnded {
    /// As a bus event on `topic`, keyed by meeting id.
    pub fn to_event(&self, topic: &str) -> Event {
        Event {
            topic: topic.to_string(),
            key: self.meeting_id.clone(),
            payload: Bytes::from(serde_json::to_vec(self).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_call_becomes_one_versioned_event_keyed_by_meeting() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut log = CallLog::new("m-1".into(), "standup", start);
        assert!(!log.had_anyone());
        log.joined("alice", "Alice");
        log.joined("bob", "Bob");
        log.joined("alice", "Alice (phone)");
        let ended = log.ended(start + Duration::from_millis(15_250), EndReason::Empty, 12);
        let event = ended.to_event("call-events");
        assert_eq!(event.key, "m-1");
        let json: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "schema": 1,
                "type": "call.ended",
                "meeting_id": "m-1",
                "room": "standup",
                "participants": [{"id": "alice", "name": "Alice"}, {"id": "bob", "name": "Bob"}],
                "started_at": "2027-01-15T08:00:00.000Z",
                "ended_at": "2027-01-15T08:00:15.250Z",
                "duration_ms": 15250,
                "reason": "empty",
                "chunks": 12,
            })
        );
    }
}
