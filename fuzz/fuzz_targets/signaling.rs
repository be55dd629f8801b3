//! What a room client sends: signaling messages (JSON) through the parser and into a room's
//! state machine, and join tokens (JWT) through verification. Nothing may panic.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tidecast_rooms::room::{Room, RoomSettings};
use tidecast_rooms::signal;
use tidecast_rooms::token::{JoinClaims, JoinTokens, RoomRole};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tokens = JoinTokens::new(b"fuzz");
    let _ = tokens.verify(text, "room", 1_800_000_000);
    let now = Instant::now();
    let mut room = Room::new(
        "room",
        RoomSettings {
            max_participants: 3,
            resume_window: Duration::from_secs(15),
            ice_servers: Vec::new(),
            sfu: true,
        },
        now,
    );
    let claims = |id: &str| JoinClaims {
        room: "room".into(),
        sub: id.into(),
        name: String::new(),
        role: RoomRole::Publisher,
        record: false,
        iat: 0,
        exp: u64::MAX,
    };
    let caps = signal::Capabilities::default;
    room.join(&claims("a"), None, None, caps(), 1, "s1".into());
    room.join(&claims("b"), None, None, caps(), 2, "s2".into());
    if text.len() % 2 == 0 {
        // a third participant: the room routes through the SFU
        room.join(&claims("c"), None, None, caps(), 4, "s4".into());
    }
    // each line is one message from `a`
    for line in text.lines() {
        if let Ok(message) = signal::parse(line) {
            if let signal::ClientMessage::Join {
                name,
                session,
                caps,
            } = message
            {
                room.join(&claims("a"), name, session.as_deref(), caps, 3, "s3".into());
            } else {
                room.message("a", 1, message);
            }
        }
    }
    room.dropped("b", 2, now);
    let _ = room.expire(now + Duration::from_secs(20));
});
