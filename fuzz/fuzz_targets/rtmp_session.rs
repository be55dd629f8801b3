//! The RTMP chunk stream, AMF0 commands and FLV media after the handshake: bytes →
//! `ChunkStreamGuard` → rml_rtmp `ServerSession` (requests accepted, so publishing starts) →
//! `MediaGate` (FLV video/audio tags, AVC configuration, SPS). Nothing may panic.
//!
//! The first byte picks the read size and a mode: the fuzz bytes alone, or appended to (or
//! spliced into) a real client's connect + publish + media, so mutations reach the publishing
//! state without having to discover the whole command sequence.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rml_rtmp::sessions::{ServerSessionEvent as Event, ServerSessionResult as Out};
use tidecast_ingest::media_gate::MediaGate;
use tidecast_ingest::rtmp_input::{sample_publish, RtmpInput};

fn publish() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| sample_publish("live", "key", 8).unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(control >> 2) * 31 + 1;
    let input: Vec<u8> = match control & 3 {
        0 => data.to_vec(),
        1 => [publish(), data].concat(),
        _ => {
            // keep a prefix of the real session, then the fuzz bytes
            let Some((cut, rest)) = data.split_first_chunk::<2>() else {
                return;
            };
            let real = publish();
            let at = usize::from(u16::from_be_bytes(*cut)) % real.len().max(1);
            [&real[..at], rest].concat()
        }
    };
    let Ok((mut session, _)) = RtmpInput::new() else {
        return;
    };
    let mut gate = MediaGate::default();
    for piece in input.chunks(step) {
        let Ok(results) = session.handle(piece) else {
            return;
        };
        for result in results {
            let Out::RaisedEvent(event) = result else {
                continue;
            };
            let media = match event {
                Event::ConnectionRequested { request_id, .. }
                | Event::PublishStreamRequested { request_id, .. } => {
                    let _ = session.session().accept_request(request_id);
                    Ok(())
                }
                Event::VideoDataReceived {
                    data, timestamp, ..
                } => gate.on_video(timestamp.value, &data).map(drop),
                Event::AudioDataReceived {
                    data, timestamp, ..
                } => gate.on_audio(timestamp.value, &data).map(drop),
                _ => Ok(()),
            };
            if media.is_err() {
                return; // the server closes the connection here
            }
        }
    }
});
