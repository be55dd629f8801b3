//! The byte path of one RTMP connection after the handshake: every byte is checked by the
//! [`ChunkStreamGuard`] and only then handed to rml_rtmp's [`ServerSession`]. Pure (no socket,
//! no clock); the server shell and the fuzz targets drive it alike.

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionResult};

use crate::chunk_guard::ChunkStreamGuard;
use crate::IngestError;

/// Largest handshake a client may send before it completes (C0 + C1 + C2 = 3073 bytes; more
/// arrives only with the first chunks).
const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

/// The server side of the RTMP handshake, bounded.
pub struct HandshakeInput {
    handshake: Handshake,
    received: usize,
}

/// What the handshake produced from some bytes.
#[derive(Debug)]
pub enum HandshakeStep {
    /// Send these bytes, read more.
    Continue(Vec<u8>),
    /// Send these bytes; the handshake is done and `remaining` bytes belong to the chunk stream.
    Done {
        /// Bytes to send.
        response: Vec<u8>,
        /// Chunk-stream bytes that arrived with the end of the handshake.
        remaining: Vec<u8>,
    },
}

impl Default for HandshakeInput {
    fn default() -> Self {
        HandshakeInput {
            handshake: Handshake::new(PeerType::Server),
            received: 0,
        }
    }
}

impl HandshakeInput {
    /// Feed handshake bytes.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<HandshakeStep, IngestError> {
        self.received += bytes.len();
        match self
            .handshake
            .process_bytes(bytes)
            .map_err(|e| IngestError::Handshake(e.to_string()))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                if self.received > MAX_HANDSHAKE_BYTES {
                    return Err(IngestError::Handshake("handshake too long".into()));
                }
                Ok(HandshakeStep::Continue(response_bytes))
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => Ok(HandshakeStep::Done {
                response: response_bytes,
                remaining: remaining_bytes,
            }),
        }
    }
}

/// See the module docs.
pub struct RtmpInput {
    guard: ChunkStreamGuard,
    session: ServerSession,
}

impl RtmpInput {
    /// A session, and what it sends first (window size, bandwidth, chunk size).
    pub fn new() -> Result<(Self, Vec<ServerSessionResult>), IngestError> {
        let (session, initial) = ServerSession::new(ServerSessionConfig::new())
            .map_err(|e| IngestError::Protocol(e.to_string()))?;
        let input = RtmpInput {
            guard: ChunkStreamGuard::new(),
            session,
        };
        Ok((input, initial))
    }

    /// Check `bytes`, then let the session decode them.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<Vec<ServerSessionResult>, IngestError> {
        self.guard.check(bytes)?;
        self.session
            .handle_input(bytes)
            .map_err(|e| IngestError::Protocol(e.to_string()))
    }

    /// The session, to accept or reject requests it raised.
    pub fn session(&mut self) -> &mut ServerSession {
        &mut self.session
    }
}

/// The chunk-stream bytes an rml_rtmp client sends to publish `frames` video frames (an AVC
/// sequence header, then alternating key/inter frames of a few KB, so messages span chunks)
/// and as many AAC frames, to `app` under `key`: what a well-behaved publisher sends after the
/// handshake. For tests and as the fuzz targets' seed.
#[doc(hidden)]
pub fn sample_publish(app: &str, key: &str, frames: u32) -> Result<Vec<u8>, String> {
    use bytes::Bytes;
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType, ServerSessionEvent, StreamMetadata,
    };
    use rml_rtmp::time::RtmpTimestamp;

    let err = |e: &dyn std::fmt::Debug| format!("{e:?}");
    let (mut client, _) = ClientSession::new(ClientSessionConfig::new()).map_err(|e| err(&e))?;
    let (mut server, initial) = RtmpInput::new().map_err(|e| err(&e))?;
    let mut sent = Vec::new();
    let mut to_client: Vec<u8> = initial
        .into_iter()
        .filter_map(|r| match r {
            ServerSessionResult::OutboundResponse(p) => Some(p.bytes),
            _ => None,
        })
        .flatten()
        .collect();
    let mut to_server = Vec::new();
    let push = |r: ClientSessionResult, out: &mut Vec<u8>| {
        if let ClientSessionResult::OutboundResponse(p) = r {
            out.extend_from_slice(&p.bytes);
        }
    };
    push(
        client
            .request_connection(app.to_string())
            .map_err(|e| err(&e))?,
        &mut to_server,
    );
    let mut publishing = false;
    for _ in 0..20 {
        if !to_server.is_empty() {
            let bytes = std::mem::take(&mut to_server);
            sent.extend_from_slice(&bytes);
            for r in server.handle(&bytes).map_err(|e| err(&e))? {
                match r {
                    ServerSessionResult::OutboundResponse(p) => to_client.extend(p.bytes),
                    ServerSessionResult::RaisedEvent(
                        ServerSessionEvent::ConnectionRequested { request_id, .. }
                        | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                    ) => {
                        for r in server
                            .session()
                            .accept_request(request_id)
                            .map_err(|e| err(&e))?
                        {
                            if let ServerSessionResult::OutboundResponse(p) = r {
                                to_client.extend(p.bytes);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if !to_client.is_empty() {
            let bytes = std::mem::take(&mut to_client);
            for r in client.handle_input(&bytes).map_err(|e| err(&e))? {
                match r {
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::ConnectionRequestAccepted,
                    ) => push(
                        client
                            .request_publishing(key.to_string(), PublishRequestType::Live)
                            .map_err(|e| err(&e))?,
                        &mut to_server,
                    ),
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::PublishRequestAccepted,
                    ) => publishing = true,
                    r => push(r, &mut to_server),
                }
            }
        }
        if publishing {
            break;
        }
    }
    if !publishing {
        return Err("the server never accepted publishing".into());
    }
    let mut metadata = StreamMetadata::new();
    metadata.video_width = Some(640);
    metadata.video_height = Some(360);
    metadata.video_codec_id = Some(7);
    metadata.audio_codec_id = Some(10);
    let r = client.publish_metadata(&metadata).map_err(|e| err(&e))?;
    push(r, &mut to_server);
    // AVC sequence header (avcC of a 640x360 High profile stream) and AAC-LC config
    let sps = [
        0x67, 0x64, 0x00, 0x1E, 0xAC, 0xD9, 0x40, 0xA0, 0x2F, 0xF9, 0x70, 0x11, 0x00, 0x00, 0x03,
        0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3C, 0x0F, 0x16, 0x2D, 0x96,
    ];
    let pps = [0x68, 0xEB, 0xE3, 0xCB, 0x22, 0xC0];
    let mut avc = vec![0x17, 0, 0, 0, 0, 1, 0x64, 0x00, 0x1E, 0xFF, 0xE1];
    avc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avc.extend_from_slice(&sps);
    avc.push(1);
    avc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avc.extend_from_slice(&pps);
    let ts = RtmpTimestamp::new;
    let r = client
        .publish_video_data(Bytes::from(avc), ts(0), false)
        .map_err(|e| err(&e))?;
    push(r, &mut to_server);
    let r = client
        .publish_audio_data(Bytes::from_static(&[0xAF, 0, 0x11, 0x90]), ts(0), false)
        .map_err(|e| err(&e))?;
    push(r, &mut to_server);
    for i in 0..frames {
        let key = i % 30 == 0;
        let size: usize = if key { 9000 } else { 1500 };
        let mut frame = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        frame.extend_from_slice(&((size - 4) as u32).to_be_bytes());
        frame.push(if key { 0x65 } else { 0x41 });
        frame.resize(5 + size, 0x5A);
        let r = client
            .publish_video_data(Bytes::from(frame), ts(i * 33), !key)
            .map_err(|e| err(&e))?;
        push(r, &mut to_server);
        let r = client
            .publish_audio_data(
                Bytes::from(vec![0xAF, 1, 0x21, 0x10, 0x04]),
                ts(i * 33),
                true,
            )
            .map_err(|e| err(&e))?;
        push(r, &mut to_server);
    }
    server.handle(&to_server).map_err(|e| err(&e))?;
    sent.extend_from_slice(&to_server);
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_client_publish_passes_the_guard() {
        let bytes = sample_publish("live", "key", 60).unwrap();
        assert!(bytes.len() > 60 * 1500, "{}", bytes.len());
        // the same bytes again, in small odd-sized reads (so each request is accepted before
        // the next arrives, as with a live client), through a fresh session
        use rml_rtmp::sessions::ServerSessionEvent as E;
        let (mut input, _) = RtmpInput::new().unwrap();
        let mut video = 0;
        for piece in bytes.chunks(7) {
            for r in input.handle(piece).unwrap() {
                match r {
                    ServerSessionResult::RaisedEvent(
                        E::ConnectionRequested { request_id, .. }
                        | E::PublishStreamRequested { request_id, .. },
                    ) => {
                        input.session().accept_request(request_id).unwrap();
                    }
                    ServerSessionResult::RaisedEvent(E::VideoDataReceived { .. }) => video += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(video, 61, "sequence header + 60 frames");
    }

    #[test]
    fn fuzz_findings_are_errors() {
        // a one-value AMF0 command: rml_rtmp's `arguments.drain(..3)` panicked (rtmp_session)
        let input = [
            0x01, 0x24, 0x01, 0x24, 0x00, 0x2d, 0x00, 0x00, 0x00, 0x11, 0x02, 0xef, 0x48, 0x8b,
            0x30, 0x41, 0xa3,
        ];
        let (mut session, _) = RtmpInput::new().unwrap();
        assert!(session.handle(&input).is_err());
    }

    #[test]
    fn handshake_garbage_is_an_error_not_a_panic() {
        let mut h = HandshakeInput::default();
        assert!(h.handle(&[0xFF; 1537]).is_err(), "C0 version 255");
        let mut h = HandshakeInput::default();
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[7u8; 1536]);
        assert!(matches!(h.handle(&c0c1), Ok(HandshakeStep::Continue(_))));
    }
}
