//! The RTMP handshake (C0/C1/C2) in reads of any size, then whatever follows it into the
//! guarded session. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidecast_ingest::rtmp_input::{HandshakeInput, HandshakeStep, RtmpInput};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let mut handshake = HandshakeInput::default();
    let mut pieces = data.chunks(usize::from(step) * 64 + 1);
    for piece in pieces.by_ref() {
        match handshake.handle(piece) {
            Ok(HandshakeStep::Continue(_)) => {}
            Ok(HandshakeStep::Done { remaining, .. }) => {
                let Ok((mut session, _)) = RtmpInput::new() else {
                    return;
                };
                if session.handle(&remaining).is_err() {
                    return;
                }
                for rest in pieces.by_ref() {
                    if session.handle(rest).is_err() {
                        return;
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
});
