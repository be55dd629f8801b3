//! What the archiver reads from the event bus and the object store: `call.ended` payloads and
//! track indexes (JSON), through parsing and into the assembly plan. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidecast_archive::plan::{grid, parse_event, plan};
use tidecast_rooms::recording::index::TrackIndex;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = parse_event(data) {
        let _ = plan(&event, &[], 1280, 720);
        let _ = grid(event.participants.len().min(10_000), 1280, 720);
    }
    if let Ok(index) = serde_json::from_slice::<TrackIndex>(data) {
        let event = br#"{"schema":1,"type":"call.ended","meeting_id":"m","room":"r",
            "participants":[{"id":"a","name":"A"}],"started_at":"","ended_at":"",
            "duration_ms":1,"reason":"empty","chunks":0}"#;
        if let Ok(event) = parse_event(event) {
            let _ = plan(&event, &[index], 640, 360);
        }
    }
});
