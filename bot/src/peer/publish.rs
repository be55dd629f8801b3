//! Publishing from a bot: Opus and three-layer simulcast VP8 written from the loops, paused and
//! resumed as the SFU asks, or one chosen layer on one track in a peer-to-peer call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::media::Sample;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

use crate::media::{MediaLoop, LAYERS};
use crate::participant::{lock, Media};
use crate::BotError;

/// What a publishing peer connection is told to send.
pub(crate) struct Publishing {
    /// per layer: the SFU wants it sent
    pub active: Arc<[AtomicBool; 3]>,
    /// the video transceiver's mid, once the offer made it
    pub video_mid: Arc<Mutex<Option<String>>>,
}

/// Add Opus and three-layer simulcast VP8 to `pc` and start sending the loops.
pub(crate) async fn publish(
    pc: &Arc<RTCPeerConnection>,
    identity: &str,
    media: &Media,
) -> Result<Publishing, BotError> {
    let active = Arc::new([
        AtomicBool::new(true),
        AtomicBool::new(true),
        AtomicBool::new(true),
    ]);
    let want_key = Arc::new(AtomicBool::new(false));
    let video_mid = Arc::new(Mutex::new(None));
    let vp8 = RTCRtpCodecCapability {
        mime_type: MIME_TYPE_VP8.to_string(),
        clock_rate: 90_000,
        ..Default::default()
    };
    let opus = RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_string(),
        clock_rate: 48_000,
        channels: 1,
        ..Default::default()
    };
    let send_only = || {
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            send_encodings: vec![],
        })
    };
    let audio = Arc::new(TrackLocalStaticSample::new(
        opus,
        "audio".into(),
        identity.to_string(),
    ));
    pc.add_transceiver_from_track(
        audio.clone() as Arc<dyn TrackLocal + Send + Sync>,
        send_only(),
    )
    .await?;
    let layers: Vec<Arc<TrackLocalStaticSample>> = LAYERS
        .iter()
        .map(|l| {
            Arc::new(TrackLocalStaticSample::new_with_rid(
                vp8.clone(),
                "video".into(),
                l.rid.to_string(),
                identity.to_string(),
            ))
        })
        .collect();
    let t = pc
        .add_transceiver_from_track(
            layers[0].clone() as Arc<dyn TrackLocal + Send + Sync>,
            send_only(),
        )
        .await?;
    let sender = t.sender().await;
    for l in &layers[1..] {
        sender
            .add_encoding(l.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
    }
    // keyframe requests from the SFU
    flag_keyframe_requests(sender, want_key.clone());
    let vm = video_mid.clone();
    tokio::spawn(async move {
        // the mid is known once the offer is made
        for _ in 0..100 {
            if let Some(mid) = t.mid() {
                *lock(&vm) = Some(mid.to_string());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    spawn_video(
        layers,
        media.video.clone(),
        Sends::Simulcast(active.clone()),
        want_key,
        pc.clone(),
        Duration::ZERO,
    );
    spawn_audio(audio, media.audio.clone(), pc.clone(), Duration::ZERO);
    Ok(Publishing { active, video_mid })
}

/// Raise `want_key` whenever the receiving side asks `sender` for a keyframe (PLI or FIR).
pub(super) fn flag_keyframe_requests(sender: Arc<RTCRtpSender>, want_key: Arc<AtomicBool>) {
    tokio::spawn(async move {
        while let Ok((packets, _)) = sender.read_rtcp().await {
            let asked = packets.iter().any(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
            });
            if asked {
                want_key.store(true, Ordering::Relaxed);
            }
        }
    });
}

/// How long a peer-to-peer call waits, once connected, before it sends media. The other side
/// is a webrtc-rs peer too (another bot) or a browser; webrtc-rs opens the receivers the SDP
/// declares only after its own DTLS handshake ends, and a packet that arrives before that goes
/// to its undeclared-SSRC probe, which reads 11 packets (webrtc 0.17) and then closes the
/// stream — the one the declared receiver shares, so that track ends ("buffer: closed") and
/// nothing more of it arrives. The DTLS server side is connected a flight before the client:
/// without the hold its first audio packets could land in that window (seen: a call in which
/// one side never got the other's audio). The SFU path has no such window: its tracks come in
/// renegotiations.
pub(super) const PEER_SEND_HOLD: Duration = Duration::from_millis(500);

/// What a video writer sends each frame.
#[derive(Clone)]
pub(super) enum Sends {
    /// one track per layer, each while its flag is on (simulcast to the SFU)
    Simulcast(Arc<[AtomicBool; 3]>),
    /// one track carrying the layer at this index, nothing at `LAYERS.len()` (a peer-to-peer
    /// call: the layer the other side's `subscription` asks for)
    OneOf(Arc<AtomicUsize>),
}

/// Write the loops at their frame rate until the connection closes (all layers on one clock,
/// so a keyframe request moves them to the same keyframe): per layer track as `Simulcast` says
/// — a layer that resumes makes the whole set jump to the next keyframe — or the one chosen
/// layer on one track, which jumps to the next keyframe when the choice changes.
pub(super) fn spawn_video(
    tracks: Vec<Arc<TrackLocalStaticSample>>,
    loops: Vec<MediaLoop>,
    sends: Sends,
    want_key: Arc<AtomicBool>,
    pc: Arc<RTCPeerConnection>,
    hold: Duration,
) {
    use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as State;
    tokio::spawn(async move {
        let Some(first) = loops.first() else {
            return;
        };
        let mut tick = tokio::time::interval(first.frame_duration);
        let mut i = 0usize;
        let mut was_active = [true; 3];
        let mut chosen = None;
        // with a hold: when the connection was first seen connected, and whether it has passed
        let mut connected_at: Option<Instant> = None;
        let mut holding = !hold.is_zero();
        loop {
            tick.tick().await;
            let state = pc.connection_state();
            if state == State::Closed {
                return;
            }
            if holding {
                if state == State::Connected {
                    let at = *connected_at.get_or_insert_with(Instant::now);
                    holding = at.elapsed() < hold;
                }
                if holding {
                    continue;
                }
            }
            if want_key.swap(false, Ordering::Relaxed) {
                i = first.next_key(i);
            }
            // (track, loop) pairs to write this tick
            let mut writes: Vec<(&Arc<TrackLocalStaticSample>, &MediaLoop)> = Vec::new();
            match &sends {
                Sends::Simulcast(active) => {
                    for (n, (track, lp)) in tracks.iter().zip(&loops).enumerate() {
                        if !active[n].load(Ordering::Relaxed) {
                            was_active[n] = false;
                            continue;
                        }
                        // a resumed layer starts on a keyframe: the whole call jumps to the next
                        if !was_active[n] {
                            was_active[n] = true;
                            want_key.store(true, Ordering::Relaxed);
                        }
                        writes.push((track, lp));
                    }
                }
                Sends::OneOf(layer) => {
                    let n = layer.load(Ordering::Relaxed);
                    if let (Some(track), Some(lp)) = (tracks.first(), loops.get(n)) {
                        if chosen != Some(n) {
                            chosen = Some(n);
                            i = lp.next_key(i);
                        }
                        writes.push((track, lp));
                    } else {
                        chosen = None;
                    }
                }
            }
            for (track, lp) in writes {
                let frame = &lp.frames[i % lp.frames.len()];
                let _ = track
                    .write_sample(&Sample {
                        data: frame.data.clone(),
                        duration: lp.frame_duration,
                        ..Default::default()
                    })
                    .await;
            }
            i += 1;
        }
    });
}

pub(super) fn spawn_audio(
    track: Arc<TrackLocalStaticSample>,
    lp: MediaLoop,
    pc: Arc<RTCPeerConnection>,
    hold: Duration,
) {
    // one layer, always on, never asked for a keyframe
    spawn_video(
        vec![track],
        vec![lp],
        Sends::OneOf(Arc::new(AtomicUsize::new(0))),
        Arc::new(AtomicBool::new(false)),
        pc,
        hold,
    );
}
