//! A bot's webrtc-rs peer connections: building one with the codecs and extensions the bots
//! use, publishing (Opus and three-layer simulcast VP8 from the loops, paused and resumed as the
//! SFU asks), counting what arrives on remote tracks, the connection to the SFU, and the call
//! with one other participant while the room is peer-to-peer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, warn};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

use crate::media::{MediaLoop, LAYERS};
use crate::participant::{lock, Media, Stats};
use crate::report::TrackStats;
use crate::BotError;

/// Everything about the connection to the SFU.
pub(crate) struct SfuConnection {
    pub(crate) pc: Arc<RTCPeerConnection>,
    /// per layer: the SFU wants it sent
    pub(crate) active: Arc<[AtomicBool; 3]>,
    pub(crate) video_mid: Arc<Mutex<Option<String>>>,
}

/// A webrtc-rs peer connection with the codecs and extensions the bots use; `ice_servers` are
/// the STUN/TURN servers signaling handed out (none for Janus, on loopback).
pub(crate) async fn peer_connection(
    ice_servers: Vec<RTCIceServer>,
) -> Result<Arc<RTCPeerConnection>, BotError> {
    let mut m = MediaEngine::default();
    m.register_default_codecs()?;
    // retransmissions for VP8 (96): the SFU also probes the bandwidth with RTX padding, so
    // without it a subscriber's estimate could never grow past what media alone carries
    m.register_codec(
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: "video/rtx".to_string(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: "apt=96".to_string(),
                rtcp_feedback: vec![],
            },
            payload_type: 97,
            ..Default::default()
        },
        RTPCodecType::Video,
    )?;
    for uri in [
        webrtc::sdp::extmap::SDES_MID_URI,
        webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
    ] {
        m.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_string(),
            },
            RTPCodecType::Video,
            None,
        )?;
    }
    m.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: webrtc::sdp::extmap::SDES_MID_URI.to_string(),
        },
        RTPCodecType::Audio,
        None,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut m)?;
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_network_types(vec![NetworkType::Udp4]);
    let api = APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    Ok(Arc::new(
        api.new_peer_connection(RTCConfiguration {
            ice_servers,
            ..Default::default()
        })
        .await?,
    ))
}

/// `joined.ice_servers` (signaling protocol v1) as webrtc-rs servers; entries without URLs are
/// skipped.
pub(crate) fn ice_servers_of(v: &Value) -> Vec<RTCIceServer> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let urls: Vec<String> = match &s["urls"] {
                Value::String(u) => vec![u.clone()],
                Value::Array(a) => a
                    .iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            (!urls.is_empty()).then(|| RTCIceServer {
                urls,
                username: s["username"].as_str().unwrap_or_default().to_string(),
                credential: s["credential"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Who published a received track.
#[derive(Clone)]
pub(crate) enum TrackNames {
    /// the msid stream id (tidecast's SFU names the publisher there)
    StreamId,
    /// a name looked up by the transceiver's mid (Janus)
    ByMid(Arc<Mutex<BTreeMap<String, String>>>),
    /// the one other side of a peer-to-peer call
    Peer(String),
}

/// Count what arrives on `pc`'s remote tracks into `stats`.
pub(crate) fn watch_tracks(
    pc: &RTCPeerConnection,
    stats: Stats,
    started: Instant,
    names: TrackNames,
) {
    pc.on_track(Box::new(move |track, _receiver, transceiver| {
        let stats = stats.clone();
        let names = names.clone();
        Box::pin(async move {
            let publisher = match &names {
                TrackNames::ByMid(n) => {
                    let mid = transceiver.mid().map(|m| m.to_string()).unwrap_or_default();
                    lock(n).get(&mid).cloned().unwrap_or(mid)
                }
                TrackNames::StreamId => track.stream_id(),
                TrackNames::Peer(id) => id.clone(),
            };
            let kind = match track.kind() {
                RTPCodecType::Audio => "audio",
                _ => "video",
            };
            debug!(%publisher, kind, "track received");
            let key = (publisher.clone(), kind.to_string());
            let ssrc = track.ssrc();
            let again = lock(&stats)
                .insert(
                    key.clone(),
                    TrackStats::new(&publisher, kind, ssrc, started, Instant::now()),
                )
                .is_some();
            if again {
                warn!(%publisher, kind, ssrc = track.ssrc(), "track received again");
            }
            tokio::spawn(async move {
                let ended = loop {
                    match track.read_rtp().await {
                        Ok((packet, _)) => {
                            // a track replaced under the same key (the room moved from
                            // peer-to-peer to the SFU) no longer counts into it
                            if let Some(s) = lock(&stats).get_mut(&key).filter(|s| s.is_of(ssrc)) {
                                s.packet(
                                    packet.header.sequence_number,
                                    packet.header.marker,
                                    &packet.payload,
                                    Instant::now(),
                                );
                            }
                        }
                        Err(e) => break e,
                    }
                };
                debug!(%publisher, kind, "track ended: {ended}");
            });
        })
    }));
}

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
fn flag_keyframe_requests(sender: Arc<RTCRtpSender>, want_key: Arc<AtomicBool>) {
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

/// Set `description` (an offer or answer of ours) and wait for the candidates to be gathered
/// into it: the SDP to send, complete (no trickle needed).
pub(crate) async fn gathered(
    pc: &RTCPeerConnection,
    description: RTCSessionDescription,
) -> Result<String, BotError> {
    let mut done = pc.gathering_complete_promise().await;
    pc.set_local_description(description).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), done.recv()).await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| BotError::Signaling("no local description".into()))
}

/// Longest an answer waits for its receivers to start.
const RECEIVERS_WAIT: Duration = Duration::from_secs(1);

/// After answering a renegotiation (the SFU's offer of new tracks), wait (at most
/// [`RECEIVERS_WAIT`]) until every transceiver that receives has started its receiver.
/// webrtc-rs (0.17) starts the receivers of an applied answer in a queued operation, after
/// `set_local_description` returns; a packet of a new track that arrives before that is taken
/// for an undeclared SSRC, whose probe then closes the stream under the receiver: the track
/// ends after a few packets. The SFU sends as soon as it has the answer, and audio flows at once
/// (video waits for a keyframe): a meeting's bots lost an audio track that way in ~1 of 4 runs
/// ("8 lost" of 9 packets). Not for a connection's first answer: its receivers start only once
/// DTLS is up.
pub(crate) async fn receivers_started(pc: &RTCPeerConnection) {
    let began = Instant::now();
    loop {
        let mut waiting = false;
        for t in pc.get_transceivers().await {
            let receives = matches!(
                t.current_direction(),
                RTCRtpTransceiverDirection::Recvonly | RTCRtpTransceiverDirection::Sendrecv
            );
            if receives && t.receiver().await.tracks().await.is_empty() {
                waiting = true;
                break;
            }
        }
        if !waiting || began.elapsed() >= RECEIVERS_WAIT {
            debug!(
                waited_us = began.elapsed().as_micros() as u64,
                started = !waiting,
                "answer's receivers"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl SfuConnection {
    /// Connect: tracks, offer (candidates gathered into it).
    pub(crate) async fn open(
        identity: &str,
        media: &Media,
        stats: Stats,
        started: Instant,
        publish_media: bool,
        ice_servers: Vec<RTCIceServer>,
    ) -> Result<(SfuConnection, String), BotError> {
        let pc = peer_connection(ice_servers).await?;
        let publishing = if publish_media {
            publish(&pc, identity, media).await?
        } else {
            // an offer needs an m-line: one that only receives (the SFU adds the others' tracks
            // with its own offers)
            pc.add_transceiver_from_kind(
                RTPCodecType::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await?;
            Publishing {
                active: Arc::new([
                    AtomicBool::new(true),
                    AtomicBool::new(true),
                    AtomicBool::new(true),
                ]),
                video_mid: Arc::new(Mutex::new(None)),
            }
        };
        // receive what the SFU offers later
        watch_tracks(&pc, stats, started, TrackNames::StreamId);
        let offer = pc.create_offer(None).await?;
        let sdp = gathered(&pc, offer).await?;
        Ok((
            SfuConnection {
                pc,
                active: publishing.active,
                video_mid: publishing.video_mid,
            },
            sdp,
        ))
    }
}

/// A call with one other participant while the room is peer-to-peer (mode `p2p`), as between
/// two room pages: Opus and one VP8 track at the layer the other side asks for
/// (`subscription`), and what it sends back.
pub(crate) struct PeerCall {
    pub(crate) pc: Arc<RTCPeerConnection>,
    /// index into `LAYERS` to send; `LAYERS.len()`: none (`off`)
    layer: Arc<AtomicUsize>,
}

impl PeerCall {
    /// The connection to `peer` with our tracks on it (sendrecv).
    pub(crate) async fn new(
        identity: &str,
        peer: &str,
        media: &Media,
        stats: Stats,
        started: Instant,
        ice_servers: Vec<RTCIceServer>,
    ) -> Result<PeerCall, BotError> {
        let pc = peer_connection(ice_servers).await?;
        let track = |mime: &str, clock_rate: u32, channels: u16, kind: &str| {
            Arc::new(TrackLocalStaticSample::new(
                RTCRtpCodecCapability {
                    mime_type: mime.to_string(),
                    clock_rate,
                    channels,
                    ..Default::default()
                },
                kind.into(),
                identity.to_string(),
            ))
        };
        let audio = track(MIME_TYPE_OPUS, 48_000, 1, "audio");
        let video = track(MIME_TYPE_VP8, 90_000, 0, "video");
        pc.add_track(audio.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        let sender = pc
            .add_track(video.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        let want_key = Arc::new(AtomicBool::new(false));
        flag_keyframe_requests(sender, want_key.clone());
        watch_tracks(&pc, stats, started, TrackNames::Peer(peer.to_string()));
        let layer = Arc::new(AtomicUsize::new(0));
        spawn_video(
            vec![video],
            media.video.clone(),
            Sends::OneOf(layer.clone()),
            want_key,
            pc.clone(),
            PEER_SEND_HOLD,
        );
        spawn_audio(audio, media.audio.clone(), pc.clone(), PEER_SEND_HOLD);
        Ok(PeerCall { pc, layer })
    }

    /// The layer the other side's `subscription` asks for.
    pub(crate) fn subscription(&self, layer: &str) {
        let index = match layer {
            "high" => LAYERS.len() - 1,
            "off" => LAYERS.len(),
            _ => 0,
        };
        self.layer.store(index, Ordering::Relaxed);
    }
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
const PEER_SEND_HOLD: Duration = Duration::from_millis(500);

/// What a video writer sends each frame.
#[derive(Clone)]
enum Sends {
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
fn spawn_video(
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

fn spawn_audio(
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
