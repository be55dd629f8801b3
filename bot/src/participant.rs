//! One synthetic participant: joins over the room's WebSocket signaling like the room page
//! does; while the room is peer-to-peer calls the other participant directly (one VP8 track at
//! the layer it asks for, and Opus); once the room is in SFU mode publishes simulcast VP8 (three
//! layers, paused and resumed as the SFU asks) and Opus, subscribes to the others with the layer
//! the schedule says, and measures what it receives. This module is the signaling side; the
//! peer connections are [`crate::peer`]'s, the schedule's counting [`crate::steps`]'.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;

use crate::media::{MediaLoop, LAYERS};
use crate::peer::{gathered, ice_servers_of, receivers_started, PeerCall, SfuConnection};
use crate::report::{TrackReport, TrackStats};
use crate::steps::Steps;
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
                            receivers_started(&c.pc).await;
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
