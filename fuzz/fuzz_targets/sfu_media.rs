//! The SFU's media input: what a peer can put on the media port. A str0m client and the SFU's
//! own `Peer` are connected in memory once (ICE, DTLS, SRTP); then each input is split into
//! (a) a raw datagram from the client's address — STUN, DTLS, RTP/RTCP headers, garbage — and
//! (b) RTP packets the client sends properly encrypted with fuzzed sequence numbers, timestamps,
//! markers and payloads, which the SFU decrypts and runs through its forwarding path
//! (`RoomMedia::forward`: source lookup, layer, keyframe detection, speaker levels). The payload
//! parsers of `sfu::codec` get the bytes directly too.
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tidecast_rooms::sfu::codec::{starts_keyframe, vp8_keyframe_size, SeqExtender, VideoCodec};
use tidecast_rooms::sfu::media::RoomMedia;
use tidecast_rooms::sfu::peer::Peer;

const CLIENT: &str = "10.0.0.2:5000";
const SFU: &str = "10.0.0.1:50000";

struct Pair {
    client: Rtc,
    media: RoomMedia,
    now: Instant,
    video: Mid,
    seq: u64,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// `data` as a datagram from the client to the SFU's peer (if it is one the peer accepts).
fn to_sfu(p: &mut Pair, data: &[u8]) {
    let Ok(contents) = data.try_into() else {
        return;
    };
    let input = Input::Receive(
        p.now,
        Receive {
            proto: Protocol::Udp,
            source: addr(CLIENT),
            destination: addr(SFU),
            contents,
        },
    );
    if let Some(peer) = p.media.peers.get_mut("pub") {
        if peer.rtc.accepts(&input) {
            let _ = peer.rtc.handle_input(input);
        }
    }
}

/// Move packets both ways and events into the SFU's room media until both sides wait.
fn pump(p: &mut Pair) {
    for _ in 0..200 {
        let mut moved = false;
        loop {
            match p.client.poll_output() {
                Ok(Output::Transmit(t)) => {
                    moved = true;
                    let data = t.contents.to_vec();
                    to_sfu(p, &data);
                }
                Ok(Output::Timeout(_)) | Err(_) => break,
                Ok(Output::Event(_)) => {}
            }
        }
        loop {
            let Some(peer) = p.media.peers.get_mut("pub") else {
                break;
            };
            match peer.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    moved = true;
                    let data = t.contents.to_vec();
                    if let Ok(contents) = data.as_slice().try_into() {
                        let input = Input::Receive(
                            p.now,
                            Receive {
                                proto: Protocol::Udp,
                                source: addr(SFU),
                                destination: addr(CLIENT),
                                contents,
                            },
                        );
                        let _ = p.client.handle_input(input);
                    }
                }
                Ok(Output::Event(e)) => {
                    moved = true;
                    match e {
                        Event::MediaAdded(m) => p.media.track_added("pub", m.mid, m.kind, &[]),
                        Event::RtpPacket(packet) => p.media.forward("pub", &packet, p.now),
                        _ => {}
                    }
                }
                Ok(Output::Timeout(_)) | Err(_) => break,
            }
        }
        p.now += Duration::from_millis(5);
        let _ = p.client.handle_input(Input::Timeout(p.now));
        if let Some(peer) = p.media.peers.get_mut("pub") {
            let _ = peer.rtc.handle_input(Input::Timeout(p.now));
        }
        if !moved {
            break;
        }
    }
}

fn connect() -> Option<Pair> {
    let now = Instant::now();
    let mut client = Rtc::builder().set_rtp_mode(true).build(now);
    client.add_local_candidate(Candidate::host(addr(CLIENT), "udp").ok()?);
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply()?;
    let (peer, answer) =
        Peer::accept("pub", &offer.to_sdp_string(), &[addr(SFU)], &[], false, now).ok()?;
    client
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).ok()?)
        .ok()?;
    client.add_remote_candidate(Candidate::host(addr(SFU), "udp").ok()?);
    let mut media = RoomMedia::new("fuzz");
    media.peers.insert("pub".into(), peer);
    let mut p = Pair {
        client,
        media,
        now,
        video,
        seq: 1,
    };
    for _ in 0..20 {
        pump(&mut p);
        if p.client.is_connected() {
            break;
        }
    }
    Some(p)
}

static PAIR: Mutex<Option<Option<Pair>>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let _ = starts_keyframe(VideoCodec::Vp8, data);
    let _ = starts_keyframe(VideoCodec::H264, data);
    let _ = vp8_keyframe_size(data);
    let mut x = SeqExtender::default();
    for c in data.chunks(2) {
        x.extend(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }

    let mut guard = PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = guard.get_or_insert_with(connect).as_mut() else {
        return;
    };
    // (a) the bytes as one datagram from the client's address
    to_sfu(p, data);
    // (b) the bytes as RTP packets: [seq step, ts (4), marker, len, payload…]…
    let mut rest = data;
    while rest.len() >= 7 {
        let step = u64::from(rest[0]);
        let ts = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let marker = rest[5] & 1 == 1;
        let len = usize::from(rest[6]).min(rest.len() - 7);
        let payload = rest[7..7 + len].to_vec();
        rest = &rest[7 + len..];
        p.seq = p.seq.wrapping_add(step.max(1)) % (1 << 40);
        let pt = p
            .client
            .codec_config()
            .find(|c| c.spec().codec == str0m::format::Codec::Vp8)
            .map(|c| c.pt());
        let Some(pt) = pt else {
            break;
        };
        let mut api = p.client.direct_api();
        if let Some(stream) = api.stream_tx_by_mid(p.video, None) {
            stream.write_rtp(RtpWrite::new(pt, p.seq.into(), ts, p.now, payload).marker(marker));
        }
    }
    pump(p);
});
