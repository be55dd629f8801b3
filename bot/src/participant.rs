//! One synthetic participant: joins over the room's WebSocket signaling like the room page
//! does; while the room is peer-to-peer calls the other participant directly (one VP8 track at
//! the layer it asks for, and Opus); once the room is in SFU mode publishes simulcast VP8 (three layers, paused and
//! resumed as the SFU asks) and Opus through a webrtc-rs peer connection, subscribes to the
//! others with the layer the schedule says, and measures what it receives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
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
use crate::report::{TrackReport, TrackStats};
use crate::{BotError, BotOptions};

/// What one participant saw.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantReport {
    /// Its identity.
    pub identity: String,
    /// Milliseconds from start to the SFU connection being up.
    pub connected_ms: Option<u64>,
    /// Join time: from the signaling WebSocket opening to the first remote video frame, ms.
    pub join_ms: Option<u64>,
    /// Received tracks.
    pub tracks: Vec<TrackReport>,
    /// Packets received per schedule step (from 1.5 s after it began to its end), per
    /// `publisher/kind`.
    pub packets_by_step: BTreeMap<String, Vec<u64>>,
    /// Signaling errors received.
    pub errors: Vec<String>,
}

impl ParticipantReport {
    /// An empty report for `identity`.
    pub fn new(identity: &str) -> ParticipantReport {
        ParticipantReport {
            identity: identity.to_string(),
            connected_ms: None,
            join_ms: None,
            tracks: Vec::new(),
            packets_by_step: BTreeMap::new(),
            errors: Vec::new(),
        }
    }
}

/// The media every bot sends.
#[derive(Debug, Clone)]
pub struct Media {
    /// One loop per simulcast layer, low → high.
    pub video: Vec<MediaLoop>,
    /// Opus.
    pub audio: MediaLoop,
}

pub(crate) type Stats = Arc<Mutex<BTreeMap<(String, String), TrackStats>>>;
pub(crate) type Counts = BTreeMap<(String, String), u64>;

/// Packets counted per schedule step start this long after the step began.
const SETTLE: Duration = Duration::from_millis(1500);

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ask the rooms node for a join token (`POST /api/rooms/{room}/tokens`).
async fn mint(opts: &BotOptions, identity: &str) -> Result<String, BotError> {
    let auth = if opts.secret.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {}\r\n", opts.secret)
    };
    let body = json!({ "identity": identity, "name": identity });
    let path = format!("/api/rooms/{}/tokens", opts.room);
    let (status, v) = crate::http::json(&opts.server, "POST", &path, &auth, Some(&body)).await?;
    if status != 200 {
        return Err(BotError::Signaling(format!(
            "minting a token: HTTP {status}"
        )));
    }
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BotError::Signaling("no token in the answer".into()))
}

/// Everything about the connection to the SFU.
struct SfuConnection {
    pc: Arc<RTCPeerConnection>,
    /// per layer: the SFU wants it sent
    active: Arc<[AtomicBool; 3]>,
    video_mid: Arc<Mutex<Option<String>>>,
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
fn ice_servers_of(v: &Value) -> Vec<RTCIceServer> {
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

impl SfuConnection {
    /// Connect: tracks, offer (candidates gathered into it).
    async fn open(
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
struct PeerCall {
    pc: Arc<RTCPeerConnection>,
    /// index into `LAYERS` to send; `LAYERS.len()`: none (`off`)
    layer: Arc<AtomicUsize>,
}

impl PeerCall {
    /// The connection to `peer` with our tracks on it (sendrecv).
    async fn new(
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
    fn subscription(&self, layer: &str) {
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

/// The schedule's steps and the packets received in each (counted from `SETTLE` after a step
/// began, when a switch has settled, to its end).
pub(crate) struct Steps {
    schedule: Vec<(Duration, String)>,
    started: Instant,
    step: usize,
    settled: Vec<Option<Counts>>,
    ended: Vec<Counts>,
}

fn counts(stats: &Stats) -> Counts {
    lock(stats)
        .iter()
        .map(|(k, s)| (k.clone(), s.report(Instant::now()).packets))
        .collect()
}

impl Steps {
    pub(crate) fn new(schedule: &[(Duration, String)], started: Instant) -> Steps {
        Steps {
            schedule: schedule.to_vec(),
            started,
            step: 0,
            settled: vec![None],
            ended: Vec::new(),
        }
    }

    /// The layer the current step asks for.
    pub(crate) fn layer(&self) -> String {
        self.schedule
            .get(self.step)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| "low".into())
    }

    /// Called every tick: the new step's layer when one began.
    pub(crate) fn tick(&mut self, stats: &Stats, now: Instant) -> Option<String> {
        let began = self
            .schedule
            .get(self.step)
            .map(|(at, _)| self.started + *at);
        if let (Some(slot), Some(began)) = (self.settled.last_mut(), began) {
            if slot.is_none() && now >= began + SETTLE {
                *slot = Some(counts(stats));
            }
        }
        let (at, layer) = self.schedule.get(self.step + 1)?;
        if self.started + *at > now {
            return None;
        }
        self.step += 1;
        self.ended.push(counts(stats));
        self.settled.push(None);
        Some(layer.clone())
    }

    /// The end: tracks' reports (with `rtt`) and packets per step into `report`.
    pub(crate) fn finish(
        mut self,
        stats: &Stats,
        rtt: Option<f64>,
        ws_open_ms: u64,
        report: &mut ParticipantReport,
    ) {
        let now = Instant::now();
        self.ended.push(counts(stats));
        report.join_ms = lock(stats)
            .values()
            .filter_map(|s| {
                let r = s.report(now);
                (r.kind == "video").then_some(r.first_frame_ms).flatten()
            })
            .min()
            .map(|first| first.saturating_sub(ws_open_ms));
        for (key, s) in lock(stats).iter_mut() {
            if let Some(ms) = rtt {
                s.rtt(ms);
            }
            report.tracks.push(s.report(now));
            let at = |c: &Counts| c.get(key).copied().unwrap_or(0);
            let per_step = self
                .settled
                .iter()
                .zip(&self.ended)
                .enumerate()
                .map(|(i, (from, to))| {
                    // a step too short to settle counts from its start
                    let from = match from {
                        Some(c) => at(c),
                        None => i.checked_sub(1).map(|p| at(&self.ended[p])).unwrap_or(0),
                    };
                    at(to).saturating_sub(from)
                })
                .collect();
            report
                .packets_by_step
                .insert(format!("{}/{}", key.0, key.1), per_step);
        }
    }
}

type Signaling = tokio_tungstenite::WebSocketStream<TcpStream>;

/// The `join` every participant sends first.
fn join_message(identity: &str) -> Message {
    let join = json!({ "type": "join", "name": identity, "caps": { "video_codecs": ["VP8"] } });
    Message::text(join.to_string())
}

/// Open the room's signaling socket and join, following the in-band `redirect` a rooms node
/// answers when the room lives on another node (at most [`MAX_REDIRECTS`]); returns the socket
/// and the first message of the session (normally `joined`).
async fn open_signaling(
    opts: &BotOptions,
    identity: &str,
    token: &str,
) -> Result<(Signaling, Option<Message>), BotError> {
    const MAX_REDIRECTS: u32 = 2;
    let mut url = format!("ws://{}/rooms/{}/ws?token={token}", opts.server, opts.room);
    let mut redirects = 0;
    loop {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| BotError::Signaling(format!("not a ws:// URL: {url}")))?;
        let tcp = TcpStream::connect(authority).await?;
        let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .map_err(|e| BotError::Signaling(e.to_string()))?;
        // a node that redirects may close before the join arrives: its `redirect` is read anyway
        let _ = ws.send(join_message(identity)).await;
        let first = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(BotError::Signaling(e.to_string())),
            None => return Err(BotError::Signaling("signaling closed at once".into())),
        };
        let redirect = first
            .to_text()
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .filter(|m| m["type"] == "redirect")
            .and_then(|m| m["url"].as_str().map(str::to_string));
        match redirect {
            Some(to) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                info!(%identity, %to, "room lives on another node: joining there");
                url = format!("{to}?token={token}&redirects={redirects}");
            }
            Some(_) => return Err(BotError::Signaling("redirected too many times".into())),
            None => return Ok((ws, Some(first))),
        }
    }
}

/// The first of `identities` as a person counts (`bot-2` before `bot-10`): the one a bot pins.
/// Publishers are the first participants of a run, so with viewers (`--publishers`) the pinned
/// one is a publisher, as it is in the Janus mode, which only sees publishers.
pub(crate) fn first_in_number_order<'a>(
    identities: impl Iterator<Item = &'a String>,
) -> Option<&'a String> {
    identities.min_by_key(|s| (s.len(), *s))
}

/// Run participant `identity` until `deadline`; `publish`: it also publishes (else it only
/// subscribes).
pub async fn run(
    opts: Arc<BotOptions>,
    identity: String,
    publish: bool,
    media: Arc<Media>,
    started: Instant,
    deadline: Instant,
) -> Result<ParticipantReport, BotError> {
    let token = mint(&opts, &identity).await?;
    let (ws, first) = open_signaling(&opts, &identity, &token).await?;
    let ws_open_ms = started.elapsed().as_millis() as u64;
    let (mut sink, stream) = ws.split();
    // the first message (the answer to `join`) was read already
    let mut stream = futures_util::stream::iter(first.map(Ok)).chain(stream);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        while let Some(v) = out_rx.recv().await {
            if sink.send(Message::text(v.to_string())).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let send = |v: Value| {
        let _ = out_tx.send(v);
    };
    let stats: Stats = Arc::default();
    let mut report = ParticipantReport::new(&identity);
    let mut others: Vec<String> = Vec::new();
    let mut sfu: Option<SfuConnection> = None;
    // peer-to-peer calls (mode p2p), by the other participant
    let mut calls: BTreeMap<String, PeerCall> = BTreeMap::new();
    // the layer each other participant last asked us for (it may ask before its call exists)
    let mut asked: BTreeMap<String, String> = BTreeMap::new();
    // the STUN/TURN servers `joined` hands out, used by the SFU connection
    let mut ice_servers: Vec<RTCIceServer> = Vec::new();
    let mut steps = Steps::new(&opts.schedule, started);
    // with --pin, `high` is for the first of the others only (a pinned tile), the rest low
    let subscribe_all = |others: &[String], layer: &str| {
        let pinned = first_in_number_order(others.iter());
        for o in others {
            let layer = if opts.pin && layer == "high" && Some(o) != pinned {
                "low"
            } else {
                layer
            };
            send(json!({ "type": "subscribe", "participant": o, "layer": layer }));
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // round-trip time to the rooms node, from signaling pings (webrtc-rs reports none)
    let mut ping_sent: Option<Instant> = None;
    let mut rtts: Vec<f64> = Vec::new();
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => break,
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(4) && ping_sent.is_none() {
                    ping_sent = Some(Instant::now());
                    send(json!({ "type": "ping" }));
                }
                // the next schedule step
                if let Some(layer) = steps.tick(&stats, Instant::now()) {
                    subscribe_all(&others, &layer);
                }
                let connected = |pc: &RTCPeerConnection| pc.connection_state()
                    == webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState::Connected;
                if report.connected_ms.is_none() {
                    if sfu.as_ref().is_some_and(|c| connected(&c.pc)) {
                        report.connected_ms = Some(started.elapsed().as_millis() as u64);
                        info!(%identity, "connected to the SFU");
                    } else if calls.values().any(|c| connected(&c.pc)) {
                        report.connected_ms = Some(started.elapsed().as_millis() as u64);
                        info!(%identity, "connected peer-to-peer");
                    }
                }
            }
            m = stream.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => { report.errors.push(format!("socket: {e}")); break; }
                    None => { report.errors.push("signaling closed".into()); break; }
                };
                let Ok(m) = serde_json::from_str::<Value>(&text) else { continue };
                let from_sfu = m["from"] == "sfu";
                match m["type"].as_str().unwrap_or_default() {
                    "joined" => {
                        ice_servers = ice_servers_of(&m["ice_servers"]);
                        others = m["participants"].as_array().into_iter().flatten()
                            .filter_map(|p| p["id"].as_str().map(str::to_string)).collect();
                        subscribe_all(&others, &steps.layer());
                        if m["mode"] == "sfu" && sfu.is_none() {
                            let (c, sdp) = SfuConnection::open(&identity, &media, stats.clone(), started, publish, ice_servers.clone()).await?;
                            send(json!({ "type": "offer", "to": "sfu", "sdp": sdp }));
                            sfu = Some(c);
                        } else if m["mode"] == "p2p" {
                            // the newcomer offers to the one already there
                            for o in &others {
                                let call = PeerCall::new(&identity, o, &media, stats.clone(), started, ice_servers.clone()).await?;
                                call.subscription(asked.get(o).map_or("low", String::as_str));
                                let offer = call.pc.create_offer(None).await?;
                                let sdp = gathered(&call.pc, offer).await?;
                                send(json!({ "type": "offer", "to": o, "sdp": sdp }));
                                calls.insert(o.clone(), call);
                            }
                        }
                    }
                    "mode" if m["mode"] == "sfu" && sfu.is_none() => {
                        // peer-to-peer calls end: everything goes through the SFU now
                        for (_, call) in std::mem::take(&mut calls) {
                            let _ = call.pc.close().await;
                        }
                        lock(&stats).clear();
                        let (c, sdp) = SfuConnection::open(&identity, &media, stats.clone(), started, publish, ice_servers.clone()).await?;
                        send(json!({ "type": "offer", "to": "sfu", "sdp": sdp }));
                        sfu = Some(c);
                        subscribe_all(&others, &steps.layer());
                    }
                    "participant_joined" => {
                        if let Some(id) = m["participant"]["id"].as_str() {
                            others.push(id.to_string());
                            subscribe_all(&others, &steps.layer());
                        }
                    }
                    "participant_left" => {
                        others.retain(|o| m["id"].as_str() != Some(o.as_str()));
                        if let Some(call) = m["id"].as_str().and_then(|id| calls.remove(id)) {
                            let _ = call.pc.close().await;
                        }
                    }
                    "offer" if !from_sfu && sfu.is_none() => {
                        if let (Some(from), Some(sdp)) = (m["from"].as_str(), m["sdp"].as_str()) {
                            // a new call (or one the other side starts again)
                            if let Some(old) = calls.remove(from) {
                                let _ = old.pc.close().await;
                            }
                            let call = PeerCall::new(&identity, from, &media, stats.clone(), started, ice_servers.clone()).await?;
                            call.subscription(asked.get(from).map_or("low", String::as_str));
                            call.pc.set_remote_description(RTCSessionDescription::offer(sdp.to_string())?).await?;
                            let answer = call.pc.create_answer(None).await?;
                            let sdp = gathered(&call.pc, answer).await?;
                            send(json!({ "type": "answer", "to": from, "sdp": sdp }));
                            calls.insert(from.to_string(), call);
                        }
                    }
                    "answer" if !from_sfu => {
                        let call = m["from"].as_str().and_then(|f| calls.get(f));
                        if let (Some(call), Some(sdp)) = (call, m["sdp"].as_str()) {
                            call.pc.set_remote_description(RTCSessionDescription::answer(sdp.to_string())?).await?;
                        }
                    }
                    "candidate" if !from_sfu => {
                        // a trickling peer (a room page); bots put theirs in the SDP
                        let call = m["from"].as_str().and_then(|f| calls.get(f));
                        let init = serde_json::from_value::<RTCIceCandidateInit>(m["candidate"].clone());
                        if let (Some(call), Ok(init)) = (call, init) {
                            if let Err(e) = call.pc.add_ice_candidate(init).await {
                                debug!(%identity, "candidate ignored: {e}");
                            }
                        }
                    }
                    "subscription" => {
                        if let (Some(from), Some(layer)) = (m["from"].as_str(), m["layer"].as_str()) {
                            debug!(%identity, %from, layer, "peer asks for a layer");
                            if let Some(call) = calls.get(from) {
                                call.subscription(layer);
                            }
                            asked.insert(from.to_string(), layer.to_string());
                        }
                    }
                    "offer" if from_sfu => {
                        if let (Some(c), Some(sdp)) = (&sfu, m["sdp"].as_str()) {
                            c.pc.set_remote_description(RTCSessionDescription::offer(sdp.to_string())?).await?;
                            let answer = c.pc.create_answer(None).await?;
                            c.pc.set_local_description(answer.clone()).await?;
                            send(json!({ "type": "answer", "to": "sfu", "sdp": answer.sdp }));
                        }
                    }
                    "answer" if from_sfu => {
                        if let (Some(c), Some(sdp)) = (&sfu, m["sdp"].as_str()) {
                            c.pc.set_remote_description(RTCSessionDescription::answer(sdp.to_string())?).await?;
                        }
                    }
                    "layers" => {
                        if let Some(c) = &sfu {
                            let ours = lock(&c.video_mid).clone();
                            if ours.as_deref() == m["mid"].as_str() {
                                let keep: Vec<&str> = m["active"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                                for (n, l) in LAYERS.iter().enumerate() {
                                    c.active[n].store(keep.contains(&l.rid), Ordering::Relaxed);
                                }
                                debug!(%identity, ?keep, "layers to send");
                            }
                        }
                    }
                    "pong" => {
                        if let Some(t) = ping_sent.take() {
                            rtts.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    "error" => report.errors.push(format!("{}: {}", m["code"], m["message"])),
                    _ => {}
                }
            }
        }
    }
    send(json!({ "type": "leave" }));
    rtts.sort_by(f64::total_cmp);
    steps.finish(
        &stats,
        rtts.get(rtts.len() / 2).copied(),
        ws_open_ms,
        &mut report,
    );
    if let Some(c) = sfu {
        let _ = c.pc.close().await;
    }
    for (_, call) in calls {
        let _ = call.pc.close().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(report)
}
