//! A bot's webrtc-rs peer connections: building one with the codecs and extensions the bots
//! use, the connection to the SFU, and the call with one other participant while the room is
//! peer-to-peer. `publish` writes the media (simulcast to the SFU, one layer to a peer),
//! `receive` counts what arrives on remote tracks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::debug;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

use crate::media::LAYERS;
use crate::participant::{Media, Stats};
use crate::BotError;

mod publish;
mod receive;

use publish::{flag_keyframe_requests, spawn_audio, spawn_video, Sends, PEER_SEND_HOLD};
pub(crate) use publish::{publish, Publishing};
pub(crate) use receive::{watch_tracks, TrackNames};

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
