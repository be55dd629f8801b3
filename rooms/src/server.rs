//! The rooms node's shell: HTTP routes on the shared service layer (`/rooms/{room}/ws`, the
//! token and room APIs), one task per WebSocket, and a ticker that ends resume windows. Room
//! logic is in [`crate::room`], the protocol in [`crate::signal`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tidecast_common::body::{full, Body};
use tidecast_common::bus::SharedBus;
use tidecast_common::config::RoomsConfig;
use tidecast_common::demo::Demo;
use tidecast_common::keys::random_hex;
use tidecast_common::metrics::Registry;
use tidecast_common::service::{self, Readiness, ResponseFuture, Routes, Service, WebSocket};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::call_events::{CallLog, EndReason};
use crate::cluster::Placement;
use crate::recording::Recorder;
use crate::restream::{Restream, Restreamer};
use crate::room::{ConnId, Effect, Room, RoomSettings};
use crate::sfu::{Sfu, SfuSettings, Signal};
use crate::signal::{self, ClientMessage, IceServer, ServerMessage};
use crate::tap::TapPurpose;
use crate::token::{is_valid_name, JoinClaims, JoinTokens, RoomRole};

/// Largest signaling message (an SDP offer with simulcast is ~10 KB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Messages a client may send in a burst, and per second after it (trickle ICE sends a few
/// dozen candidates at once).
const BURST: f64 = 200.0;
const PER_SECOND: f64 = 50.0;
/// A socket must send `join` this soon after opening.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for a slow client before it is disconnected.
const OUTBOX: usize = 256;

enum Outgoing {
    Text(String),
    /// Send this message, then close.
    Close(String),
}

struct RoomEntry {
    room: Room,
    call: CallLog,
    /// When the call started (the recording's timeline starts here).
    started: Instant,
    recording: RecordingState,
    /// The room is restreamed to the CDN.
    restream: Option<Restream>,
}

/// A call's recording.
enum RecordingState {
    Off,
    On,
    /// Stopped: the chunk count once the last chunks are written.
    Stopped(tokio::task::JoinHandle<u64>),
}

/// Where ended calls are announced: the event bus and its topic (`bus.topic`).
#[derive(Debug, Clone)]
pub struct CallEvents {
    /// The bus.
    pub bus: SharedBus,
    /// The topic of call events.
    pub topic: String,
}

/// The rooms node.
pub struct Rooms {
    config: RoomsConfig,
    tokens: JoinTokens,
    /// `api_secret` was empty: tokens minted for anyone
    dev_mode: bool,
    settings: RoomSettings,
    rooms: Mutex<HashMap<String, RoomEntry>>,
    conns: Mutex<HashMap<ConnId, mpsc::Sender<Outgoing>>>,
    next_conn: AtomicU64,
    /// The process's lifecycle, once `serve` started: signaling sockets are work its drain
    /// waits for.
    readiness: std::sync::OnceLock<Readiness>,
    /// The other rooms nodes (`rooms.nodes`), when there are any.
    cluster: Option<Arc<crate::cluster::RoomCluster>>,
    registry: Registry,
    pages: Demo,
    /// Group calls (None when `rooms.sfu` is off).
    sfu: Option<Sfu>,
    /// TURN credentials for joining participants (None: no TURN server known).
    turn: Option<TurnHandout>,
    /// Ended calls go here (None: not announced).
    events: Option<CallEvents>,
    /// Records calls (None: no object store).
    recorder: Option<Recorder>,
    /// Restreams rooms (None: not offered).
    restreamer: Option<Restreamer>,
}

/// TURN credentials handed to each joining participant: the TURN REST API scheme, scoped to
/// its identity and expiring (the allocation ends with them).
#[derive(Debug, Clone)]
pub struct TurnHandout {
    /// The TURN server's shared secret and realm.
    pub credentials: tidecast_turn::auth::Credentials,
    /// `stun:`/`turn:` URLs of the server.
    pub urls: Vec<String>,
    /// Lifetime of the credentials.
    pub ttl: Duration,
}

impl TurnHandout {
    fn ice_server(&self, identity: &str) -> IceServer {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (username, password) = self.credentials.mint(identity, now, self.ttl.as_secs());
        IceServer {
            urls: self.urls.clone(),
            username: Some(username),
            credential: Some(password),
        }
    }
}

/// Where the SFU binds, from `rooms.media_listen` and `rooms.media_addresses`.
fn sfu_settings(config: &RoomsConfig) -> std::io::Result<SfuSettings> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("rooms.{what} is not valid"),
        )
    };
    let listen: SocketAddr = config
        .media_listen
        .parse()
        .map_err(|_| bad("media_listen"))?;
    let addresses = if config.media_addresses.is_empty() {
        tidecast_common::net::addresses_for(listen.ip())
    } else {
        config
            .media_addresses
            .iter()
            .map(|a| a.parse().map_err(|_| bad("media_addresses")))
            .collect::<Result<_, _>>()?
    };
    let port_range = media_ports(&config.media_ports).ok_or_else(|| bad("media_ports"))?;
    Ok(SfuSettings {
        port: listen.port(),
        port_range,
        addresses,
        tcp: config.media_tcp,
        stun_server: Some(config.stun_server.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

/// Most ports `rooms.media_ports` may span (each is a socket the media loop polls).
const MAX_MEDIA_PORTS: u16 = 1024;

/// `rooms.media_ports`: empty for none, else `first-last` (both non-zero, at most
/// [`MAX_MEDIA_PORTS`]); `None` when it is not valid.
fn media_ports(text: &str) -> Option<Option<std::ops::RangeInclusive<u16>>> {
    if text.trim().is_empty() {
        return Some(None);
    }
    let (first, last) =
        tidecast_common::config::check::port_range(text, MAX_MEDIA_PORTS.into()).ok()?;
    Some(Some(first..=last))
}

/// A query parameter's raw value.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec_pretty(value).unwrap_or_default()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    identity: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<RoomRole>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// May start and stop recording.
    #[serde(default)]
    record: bool,
}

/// Body of `POST /api/rooms/{room}/restream`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestreamRequest {
    /// `rtmp://host[:port]/app/key` (default: this deployment's ingest, stream `room-{room}`).
    #[serde(default)]
    url: Option<String>,
}

/// Token bucket for one socket's messages.
struct RateLimit {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(now: Instant) -> RateLimit {
        RateLimit {
            tokens: BURST,
            at: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * PER_SECOND).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Rooms {
    /// A rooms node from its config (needs a tokio runtime for the resume ticker and the
    /// SFU); fails when the SFU's media port cannot be bound.
    pub fn new(
        config: &RoomsConfig,
        registry: &Registry,
        turn: Option<TurnHandout>,
        events: Option<CallEvents>,
        recorder: Option<Recorder>,
        restreamer: Option<Restreamer>,
    ) -> std::io::Result<Arc<Rooms>> {
        let dev_mode = config.api_secret.is_empty();
        let secret = if dev_mode {
            warn!(
                "rooms.api_secret is not set: development mode, anyone may mint join tokens \
                 (POST /api/rooms/{{room}}/tokens); set TIDECAST_ROOMS__API_SECRET in production"
            );
            random_hex(32)
        } else {
            config.api_secret.clone()
        };
        let (sfu, signals) = if config.sfu {
            let (sfu, signals) = Sfu::start(&sfu_settings(config)?, registry)?;
            (Some(sfu), Some(signals))
        } else {
            (None, None)
        };
        let rooms = Arc::new(Rooms {
            config: config.clone(),
            tokens: JoinTokens::new(secret.as_bytes()),
            dev_mode,
            settings: RoomSettings {
                max_participants: config.max_participants.max(1),
                resume_window: Duration::from_secs(config.resume_secs),
                ice_servers: if config.ice_servers.is_empty() {
                    Vec::new()
                } else {
                    vec![IceServer {
                        urls: config.ice_servers.clone(),
                        username: None,
                        credential: None,
                    }]
                },
                sfu: config.sfu,
            },
            rooms: Mutex::default(),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(1),
            readiness: std::sync::OnceLock::new(),
            cluster: crate::cluster::RoomCluster::new(config),
            registry: registry.clone(),
            pages: crate::client::pages(),
            sfu,
            turn,
            events,
            recorder,
            restreamer,
        });
        tokio::spawn(rooms.clone().ticker());
        if let Some(signals) = signals {
            tokio::spawn(rooms.clone().relay_sfu(signals));
        }
        Ok(rooms)
    }

    /// The SFU's media addresses (empty without one).
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.sfu
            .as_ref()
            .map(|s| s.addrs().to_vec())
            .unwrap_or_default()
    }

    /// SDP and errors from the SFU go to the participant's signaling socket.
    async fn relay_sfu(self: Arc<Self>, mut signals: mpsc::UnboundedReceiver<Signal>) {
        while let Some(s) = signals.recv().await {
            let rooms = self.rooms();
            let Some(entry) = rooms.get(&s.room) else {
                continue;
            };
            let effect = Effect::Send {
                to: s.to,
                message: s.message,
            };
            self.apply(&entry.room, vec![effect]);
        }
    }

    /// Start recording `entry`'s call: the call moves to the SFU and the SFU hands its
    /// tracks to the recorder. Fails (status, code, message) without an SFU or a store, or when
    /// this call was recorded and stopped already (a second recording would overwrite it).
    fn start_recording(
        &self,
        room: &str,
        entry: &mut RoomEntry,
    ) -> Result<(), (StatusCode, &'static str, &'static str)> {
        let (Some(recorder), Some(sfu)) = (&self.recorder, &self.sfu) else {
            return Err((
                StatusCode::CONFLICT,
                "no_recording",
                "recording needs the SFU (rooms.sfu) and an object store",
            ));
        };
        match entry.recording {
            RecordingState::On => return Ok(()),
            RecordingState::Stopped(_) => {
                return Err((
                    StatusCode::CONFLICT,
                    "recorded",
                    "this call was recorded and stopped already",
                ))
            }
            RecordingState::Off => {}
        }
        let tap = recorder.start(entry.call.meeting_id(), entry.started);
        sfu.send(crate::sfu::Command::Tap {
            room: room.to_string(),
            purpose: TapPurpose::Record,
            tap: Some(tap),
        });
        let effects = entry.room.use_sfu();
        self.apply(&entry.room, effects);
        entry.recording = RecordingState::On;
        info!(%room, meeting = entry.call.meeting_id(), "recording the call");
        self.announce_recording(entry);
        Ok(())
    }

    /// Stop recording `entry`'s call; the chunk count comes when its last chunks are written.
    fn stop_recording(&self, room: &str, entry: &mut RoomEntry) {
        let (Some(recorder), Some(sfu)) = (&self.recorder, &self.sfu) else {
            return;
        };
        if !matches!(entry.recording, RecordingState::On) {
            return;
        }
        sfu.send(crate::sfu::Command::Tap {
            room: room.to_string(),
            purpose: TapPurpose::Record,
            tap: None,
        });
        let recorder = recorder.clone();
        let meeting = entry.call.meeting_id().to_string();
        entry.recording =
            RecordingState::Stopped(tokio::spawn(async move { recorder.finish(&meeting).await }));
        info!(%room, meeting = entry.call.meeting_id(), "recording stopped");
        self.announce_recording(entry);
    }

    /// Tell everyone in `entry`'s call whether it is recorded.
    fn announce_recording(&self, entry: &RoomEntry) {
        let on = matches!(entry.recording, RecordingState::On);
        let effects = entry
            .room
            .participants()
            .into_iter()
            .map(|p| Effect::Send {
                to: p.id,
                message: ServerMessage::Recording {
                    on,
                    can_control: None,
                },
            })
            .collect();
        self.apply(&entry.room, effects);
    }

    /// Restream `entry`'s call to `url` (default: this deployment's ingest as `room-{room}`):
    /// the call moves to the SFU and the SFU hands its tracks to the restream.
    fn start_restream(
        &self,
        room: &str,
        entry: &mut RoomEntry,
        url: Option<String>,
    ) -> Result<(), (StatusCode, &'static str, String)> {
        let (Some(restreamer), Some(sfu)) = (&self.restreamer, &self.sfu) else {
            return Err((
                StatusCode::CONFLICT,
                "no_restream",
                "restreaming needs the SFU (rooms.sfu)".into(),
            ));
        };
        let url = url.unwrap_or_else(|| restreamer.default_target(room));
        if let Some(current) = &entry.restream {
            if current.failure().is_none() && current.url == url {
                return Ok(());
            }
        }
        self.stop_restream(room, entry);
        let restream = restreamer
            .start(room, &url)
            .map_err(|e| (StatusCode::BAD_REQUEST, "bad_restream", e.to_string()))?;
        sfu.send(crate::sfu::Command::Tap {
            room: room.to_string(),
            purpose: TapPurpose::Restream,
            tap: Some(restream.tap()),
        });
        let effects = entry.room.use_sfu();
        self.apply(&entry.room, effects);
        entry.restream = Some(restream);
        Ok(())
    }

    /// Stop restreaming `entry`'s call (the stream ends with ENDLIST).
    fn stop_restream(&self, room: &str, entry: &mut RoomEntry) {
        let Some(restream) = entry.restream.take() else {
            return;
        };
        if let Some(sfu) = &self.sfu {
            sfu.send(crate::sfu::Command::Tap {
                room: room.to_string(),
                purpose: TapPurpose::Restream,
                tap: None,
            });
        }
        info!(%room, url = %restream.url, "restream stopping");
        // flushing to the RTMP server takes a moment
        tokio::task::spawn_blocking(move || restream.stop());
    }

    /// `POST /api/rooms/{room}/restream` (JSON body, optional: `{"url": "rtmp://…"}`) and
    /// `DELETE`.
    async fn restream(&self, req: Request<Incoming>, room: &str, on: bool) -> Response<Body> {
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body over 4 KB"),
        };
        let ask: RestreamRequest = if body.iter().all(u8::is_ascii_whitespace) {
            RestreamRequest::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(a) => a,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
            }
        };
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return error(StatusCode::NOT_FOUND, "no_room", "no such room");
        };
        if on {
            if let Err((status, code, message)) = self.start_restream(room, entry, ask.url) {
                return error(status, code, &message);
            }
        } else {
            self.stop_restream(room, entry);
        }
        json(
            StatusCode::OK,
            &serde_json::json!({
                "room": room,
                "restreaming": entry.restream.is_some(),
                "url": entry.restream.as_ref().map(|r| r.url.clone()),
                "stream": format!("room-{room}"),
            }),
        )
    }

    /// `POST`/`DELETE /api/rooms/{room}/recording`.
    fn record(&self, room: &str, on: bool) -> Response<Body> {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return error(StatusCode::NOT_FOUND, "no_room", "no such room");
        };
        if on {
            if let Err((status, code, message)) = self.start_recording(room, entry) {
                return error(status, code, message);
            }
        } else {
            self.stop_recording(room, entry);
        }
        json(
            StatusCode::OK,
            &serde_json::json!({
                "room": room,
                "meeting_id": entry.call.meeting_id(),
                "recording": matches!(entry.recording, RecordingState::On),
            }),
        )
    }

    /// Announce the end of `entry`'s call on the event bus (when anyone was in it), after its
    /// recording (if any) has written its last chunks. Publishing only writes to local disk; the
    /// bus delivers it later if its broker is down.
    fn call_ended(&self, room: &str, mut entry: RoomEntry, reason: EndReason) {
        self.stop_recording(room, &mut entry);
        self.stop_restream(room, &mut entry);
        if !entry.call.had_anyone() {
            return;
        }
        let Some(events) = self.events.clone() else {
            return;
        };
        let ended_at = SystemTime::now();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let chunks = match entry.recording {
                RecordingState::Stopped(chunks) => chunks.await.unwrap_or(0),
                _ => 0,
            };
            let ended = entry.call.ended(ended_at, reason, chunks);
            let labels = [("bus", events.bus.kind())];
            match events.bus.publish(ended.to_event(&events.topic)) {
                Ok(()) => {
                    info!(room = %ended.room, meeting = %ended.meeting_id, ?reason,
                          participants = ended.participants.len(), chunks, "call ended");
                    registry
                        .counter(
                            "tidecast_call_events_published_total",
                            "call.ended events handed to the event bus.",
                            &labels,
                        )
                        .inc();
                }
                Err(e) => {
                    warn!(room = %ended.room, meeting = %ended.meeting_id, "call.ended not published: {e}");
                    registry
                        .counter(
                            "tidecast_call_event_failures_total",
                            "call.ended events the event bus refused.",
                            &labels,
                        )
                        .inc();
                }
            }
        });
    }

    /// The join-token signer (for `tidecast token room` and tests).
    pub fn tokens(&self) -> &JoinTokens {
        &self.tokens
    }

    /// Serve HTTP + WebSocket on the shared service layer until `readiness` drains. Draining
    /// tells every participant `draining` and closes its socket: clients join again, on
    /// whichever node answers (see `docs/signaling.md`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        readiness: &Readiness,
    ) -> std::io::Result<()> {
        let registry = self.registry.clone();
        let _ = self.readiness.set(readiness.clone());
        if let Some(cluster) = &self.cluster {
            tokio::spawn(cluster.clone().probe_forever(registry.clone()));
        }
        let me = self.clone();
        let mut drain = readiness.drain_signal();
        tokio::spawn(async move {
            drain.started().await;
            let conns: Vec<_> = me.conns().values().cloned().collect();
            info!(
                sockets = conns.len(),
                "draining: asking every participant to reconnect"
            );
            let bye = ServerMessage::Draining.to_json();
            for tx in conns {
                let _ = tx.try_send(Outgoing::Close(bye.clone()));
            }
        });
        Service::new(self, &registry, readiness)
            .serve(listener)
            .await
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, RoomEntry>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, mpsc::Sender<Outgoing>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.registry.counter(name, help, labels).inc();
    }

    /// Carry out a room's effects (with the rooms lock held by the caller: order is kept).
    fn apply(&self, room: &Room, effects: Vec<Effect>) {
        let conns = self.conns();
        for effect in effects {
            let (conn, out) = match effect {
                Effect::Send { to, mut message } => match room.conn_of(&to) {
                    Some(conn) => {
                        if let (ServerMessage::Joined { ice_servers, .. }, Some(t)) =
                            (&mut message, &self.turn)
                        {
                            ice_servers.push(t.ice_server(&to));
                        }
                        (conn, Outgoing::Text(message.to_json()))
                    }
                    None => continue, // between connections: it renegotiates on resume
                },
                Effect::Close { conn, message } => (conn, Outgoing::Close(message.to_json())),
                Effect::Sfu(command) => {
                    if let Some(sfu) = &self.sfu {
                        sfu.send(command);
                    }
                    continue;
                }
            };
            if let Some(tx) = conns.get(&conn) {
                if tx.try_send(out).is_err() {
                    // a client that does not read its messages is cut off, not buffered for
                    debug!(room = room.name(), conn, "signaling outbox full: closing");
                    let _ = tx.try_send(Outgoing::Close(String::new()));
                }
            }
        }
    }

    fn gauges(&self, name: &str, room: Option<&Room>) {
        match room {
            Some(room) => self
                .registry
                .gauge(
                    "tidecast_rooms_participants",
                    "Participants connected to a room.",
                    &[("room", name)],
                )
                .set(room.connected() as i64),
            None => {
                self.registry.remove_labelled("room", name);
            }
        }
    }

    /// End resume windows once a second; drop empty rooms.
    async fn ticker(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut rooms = self.rooms();
            let mut ended = Vec::new();
            for (name, entry) in rooms.iter_mut() {
                let effects = entry.room.expire(now);
                if !effects.is_empty() {
                    self.apply(&entry.room, effects);
                    self.gauges(name, Some(&entry.room));
                }
                if entry.room.is_empty() {
                    ended.push(name.clone());
                }
            }
            for name in ended {
                if let Some(entry) = rooms.remove(&name) {
                    self.call_ended(&name, entry, EndReason::Empty);
                }
                self.gauges(&name, None);
                info!(room = %name, "room closed (empty)");
            }
            self.registry
                .gauge("tidecast_rooms", "Rooms open on this node.", &[])
                .set(rooms.len() as i64);
        }
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        if self.dev_mode {
            return true;
        }
        service::bearer_matches(req, &self.config.api_secret)
    }

    async fn respond(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method().clone();
        match (method, parts.as_slice()) {
            (Method::GET, ["rooms", room, "ws"]) => {
                let room = room.to_string();
                self.upgrade(req, room).await
            }
            (Method::POST, ["api", "rooms", room, "tokens"]) => {
                let room = room.to_string();
                self.mint(req, &room).await
            }
            (Method::POST | Method::DELETE, ["api", "rooms", _, "recording" | "restream"])
                if !self.authorised(&req) =>
            {
                error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "API secret required",
                )
            }
            (Method::POST, ["api", "rooms", room, "recording"]) => self.record(room, true),
            (Method::DELETE, ["api", "rooms", room, "recording"]) => self.record(room, false),
            (Method::POST, ["api", "rooms", room, "restream"]) => {
                let room = room.to_string();
                self.restream(req, &room, true).await
            }
            (Method::DELETE, ["api", "rooms", room, "restream"]) => {
                let room = room.to_string();
                self.restream(req, &room, false).await
            }
            (m, ["api", "rooms", ..]) if !self.authorised(&req) && m != Method::POST => error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "API secret required",
            ),
            (Method::GET, ["demo", file]) => self.pages.serve(file),
            (Method::GET, [""] | ["demo"]) => {
                let mut resp = Response::new(full(""));
                *resp.status_mut() = StatusCode::FOUND;
                resp.headers_mut().insert(
                    header::LOCATION,
                    HeaderValue::from_static("/demo/room.html"),
                );
                resp
            }
            (Method::GET, ["api", "rooms"]) => self.list(),
            (Method::GET, ["api", "rooms", room]) => self.describe(room),
            (Method::DELETE, ["api", "rooms", room]) => self.end(room),
            (Method::DELETE, ["api", "rooms", room, "participants", id]) => self.kick(room, id),
            _ => error(StatusCode::NOT_FOUND, "not_found", "not found"),
        }
    }

    async fn upgrade(self: Arc<Self>, req: Request<Incoming>, room: String) -> Response<Body> {
        if !is_valid_name(&room) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_room",
                "room names are 1-64 of A-Z a-z 0-9 _ - .",
            );
        }
        let token = tidecast_common::token::find_token(req.uri().query(), None).unwrap_or("");
        let claims = match self.tokens.verify(token, &room, now_secs()) {
            Ok(c) => c,
            Err(e) => {
                self.count(
                    "tidecast_rooms_refusals_total",
                    "Signaling connections or messages refused, by reason.",
                    &[("reason", e.code())],
                );
                info!(%room, reason = e.code(), "join refused");
                let status = match e {
                    crate::token::JoinTokenError::WrongRoom => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                return error(status, e.code(), &e.to_string());
            }
        };
        if self.readiness.get().is_some_and(Readiness::is_draining) {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this node is shutting down: join again",
            );
        }
        if let Some(cluster) = &self.cluster {
            let hosted = self.rooms().contains_key(&room);
            let redirects = query_param(req.uri().query(), "redirects")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if let Placement::There(node) = cluster.placement(&room, hosted, redirects).await {
                info!(%room, %node, "join redirected to the room's node");
                self.count(
                    "tidecast_rooms_redirects_total",
                    "Joins sent to the rooms node their room lives on.",
                    &[],
                );
                let url = crate::cluster::ws_url(&node, &room);
                // browsers do not follow redirects on a WebSocket handshake: say it in-band
                return service::websocket(req, MAX_MESSAGE, move |ws| async move {
                    let (mut sink, _) = ws.split();
                    let _ = sink
                        .send(Message::text(ServerMessage::Redirect { url }.to_json()))
                        .await;
                    let _ = sink.close().await;
                });
            }
        }
        let work = self.readiness.get().map(Readiness::track);
        service::websocket(req, MAX_MESSAGE, move |ws| async move {
            self.connection(ws, room, claims).await;
            drop(work);
        })
    }

    async fn mint(&self, req: Request<Incoming>, room: &str) -> Response<Body> {
        if !self.authorised(&req) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "API secret required",
            );
        }
        if !is_valid_name(room) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_room",
                "room names are 1-64 of A-Z a-z 0-9 _ - .",
            );
        }
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body over 4 KB"),
        };
        let ask: TokenRequest = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        };
        if !is_valid_name(&ask.identity) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_identity",
                "identities are 1-64 of A-Z a-z 0-9 _ - .",
            );
        }
        let now = now_secs();
        let ttl = ask
            .ttl_secs
            .unwrap_or(self.config.token_ttl_secs)
            .clamp(1, 7 * 86400);
        let claims = JoinClaims {
            room: room.to_string(),
            sub: ask.identity,
            name: ask.name.unwrap_or_default().chars().take(64).collect(),
            role: ask.role.unwrap_or(RoomRole::Publisher),
            record: ask.record,
            iat: now,
            exp: now + ttl,
        };
        let token = self.tokens.mint(&claims);
        json(
            StatusCode::OK,
            &serde_json::json!({
                "token": token,
                "room": room,
                "identity": claims.sub,
                "role": claims.role.as_str(),
                "expires_at": claims.exp,
                "ws": format!("/rooms/{room}/ws?token={token}"),
            }),
        )
    }

    fn list(&self) -> Response<Body> {
        let rooms = self.rooms();
        let mut list: Vec<serde_json::Value> = rooms
            .iter()
            .map(|(name, e)| {
                serde_json::json!({
                    "name": name,
                    "participants": e.room.participants().len(),
                    "connected": e.room.connected(),
                    "age_secs": e.room.started_at().elapsed().as_secs(),
                })
            })
            .collect();
        list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json(StatusCode::OK, &serde_json::json!({ "rooms": list }))
    }

    fn describe(&self, room: &str) -> Response<Body> {
        match self.rooms().get(room) {
            Some(e) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "name": room,
                    "mode": e.room.mode().as_str(),
                    "age_secs": e.room.started_at().elapsed().as_secs(),
                    "participants": e.room.participants(),
                    "recording": matches!(e.recording, RecordingState::On),
                    "restream": e.restream.as_ref().map(|r| serde_json::json!({
                        "url": r.url,
                        "failed": r.failure(),
                    })),
                }),
            ),
            None => error(StatusCode::NOT_FOUND, "no_room", "no such room"),
        }
    }

    fn end(&self, room: &str) -> Response<Body> {
        let mut rooms = self.rooms();
        let Some(mut entry) = rooms.remove(room) else {
            return error(StatusCode::NOT_FOUND, "no_room", "no such room");
        };
        let effects = entry.room.end();
        self.apply(&entry.room, effects);
        self.call_ended(room, entry, EndReason::Ended);
        self.gauges(room, None);
        info!(%room, "room ended by the API");
        json(StatusCode::OK, &serde_json::json!({ "ended": room }))
    }

    fn kick(&self, room: &str, id: &str) -> Response<Body> {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return error(StatusCode::NOT_FOUND, "no_room", "no such room");
        };
        if entry.room.role(id).is_none() {
            return error(
                StatusCode::NOT_FOUND,
                "no_participant",
                "no such participant",
            );
        }
        // the kicked participant's connection must still be known to receive its close
        let conn = entry.room.conn_of(id);
        let effects = entry.room.remove(id, "kicked");
        let conns = self.conns();
        for effect in effects {
            match effect {
                Effect::Close { conn: c, message } => {
                    if let Some(tx) = conns.get(&c) {
                        let _ = tx.try_send(Outgoing::Close(message.to_json()));
                    }
                }
                Effect::Send { to, message } => {
                    if let Some(tx) = entry.room.conn_of(&to).and_then(|c| conns.get(&c)) {
                        let _ = tx.try_send(Outgoing::Text(message.to_json()));
                    }
                }
                Effect::Sfu(command) => {
                    if let Some(sfu) = &self.sfu {
                        sfu.send(command);
                    }
                }
            }
        }
        drop(conns);
        self.gauges(room, Some(&entry.room));
        info!(%room, participant = id, ?conn, "participant kicked");
        json(StatusCode::OK, &serde_json::json!({ "kicked": id }))
    }

    /// One signaling WebSocket, from open to close.
    async fn connection(self: Arc<Self>, ws: WebSocket, room: String, claims: JoinClaims) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Outgoing>(OUTBOX);
        self.conns().insert(conn, tx.clone());
        let (mut sink, mut stream) = ws.split();
        let mut writer = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                match out {
                    Outgoing::Text(t) => {
                        if sink.send(Message::text(t)).await.is_err() {
                            return;
                        }
                    }
                    Outgoing::Close(last) => {
                        if !last.is_empty() {
                            let _ = sink.send(Message::text(last)).await;
                        }
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Normal,
                                reason: "".into(),
                            })))
                            .await;
                        let _ = sink.close().await;
                        return;
                    }
                }
            }
        });
        let mut writer_done = false;
        let id = claims.sub.clone();
        let mut joined = false;
        let mut left = false;
        let mut limit = RateLimit::new(Instant::now());
        let opened = Instant::now();
        let send = |m: ServerMessage| {
            let _ = tx.try_send(Outgoing::Text(m.to_json()));
        };
        let close = |m: ServerMessage| {
            let _ = tx.try_send(Outgoing::Close(m.to_json()));
        };
        loop {
            let wait = if joined {
                Duration::from_secs(3600)
            } else {
                JOIN_TIMEOUT.saturating_sub(opened.elapsed())
            };
            let read = tokio::select! {
                read = tokio::time::timeout(wait, stream.next()) => read,
                // the writer closed the socket (a close sent from elsewhere: draining, kicked)
                _ = &mut writer => {
                    writer_done = true;
                    break;
                }
            };
            let next = match read {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    // oversized message, protocol violation, reset
                    debug!(%room, participant = %id, conn, "signaling socket error: {e}");
                    self.refused("socket_error");
                    close(ServerMessage::error("bad_frame", e.to_string()));
                    break;
                }
                Ok(None) => break,
                Err(_) if !joined => {
                    close(ServerMessage::error("join_timeout", "no join within 10 s"));
                    break;
                }
                Err(_) => continue,
            };
            let text = match next {
                Message::Text(t) => t,
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Binary(_) => {
                    self.refused("bad_message");
                    send(ServerMessage::error(
                        "bad_message",
                        "text JSON messages only",
                    ));
                    continue;
                }
            };
            if !limit.allow(Instant::now()) {
                warn!(%room, participant = %id, conn, "signaling flood: closing");
                self.refused("rate_limited");
                close(ServerMessage::error("rate_limited", "too many messages"));
                break;
            }
            let message = match signal::parse(text.as_str()) {
                Ok(m) => m,
                Err(e) => {
                    self.refused(e.code);
                    send(e.into());
                    continue;
                }
            };
            let mut rooms = self.rooms();
            match (joined, message) {
                (
                    false,
                    ClientMessage::Join {
                        name,
                        session,
                        caps,
                    },
                ) => {
                    let entry = rooms.entry(room.clone()).or_insert_with(|| {
                        info!(%room, "room opened");
                        RoomEntry {
                            room: Room::new(&room, self.settings.clone(), Instant::now()),
                            call: CallLog::new(random_hex(16), &room, SystemTime::now()),
                            started: Instant::now(),
                            recording: RecordingState::Off,
                            restream: None,
                        }
                    });
                    let effects = entry.room.join(
                        &claims,
                        name,
                        session.as_deref(),
                        caps,
                        conn,
                        random_hex(16),
                    );
                    joined = entry.room.is_current(&id, conn);
                    self.apply(&entry.room, effects);
                    self.gauges(&room, Some(&entry.room));
                    if joined {
                        let shown = entry.room.participants().into_iter().find(|p| p.id == id);
                        let shown = shown.map(|p| p.name).unwrap_or_else(|| claims.name.clone());
                        entry.call.joined(&id, &shown);
                        if self.config.record && matches!(entry.recording, RecordingState::Off) {
                            if let Err(e) = self.start_recording(&room, entry) {
                                warn!(%room, "call not recorded: {}", e.2);
                            }
                        }
                        info!(%room, participant = %id, conn, meeting = entry.call.meeting_id(), "joined");
                        send(ServerMessage::Recording {
                            on: matches!(entry.recording, RecordingState::On),
                            can_control: Some(claims.record),
                        });
                    } else if entry.room.is_empty() {
                        rooms.remove(&room);
                        self.gauges(&room, None);
                    }
                    let total = rooms.len() as i64;
                    drop(rooms);
                    self.registry
                        .gauge("tidecast_rooms", "Rooms open on this node.", &[])
                        .set(total);
                }
                (false, _) => {
                    drop(rooms);
                    send(ServerMessage::error("not_joined", "send join first"));
                }
                (true, ClientMessage::Record { on }) => {
                    let Some(entry) = rooms.get_mut(&room) else {
                        close(ServerMessage::RoomEnded);
                        break;
                    };
                    let refused = if !claims.record {
                        self.refused("record_not_allowed");
                        Some(ServerMessage::error(
                            "not_allowed",
                            "this token may not start or stop recording",
                        ))
                    } else if on {
                        self.start_recording(&room, entry)
                            .err()
                            .map(|(_, code, message)| ServerMessage::error(code, message))
                    } else {
                        self.stop_recording(&room, entry);
                        None
                    };
                    drop(rooms);
                    if let Some(m) = refused {
                        send(m);
                    } else {
                        info!(%room, participant = %id, on, "recording set by a participant");
                    }
                }
                (true, message) => {
                    let leaving = message == ClientMessage::Leave;
                    let Some(entry) = rooms.get_mut(&room) else {
                        close(ServerMessage::RoomEnded);
                        break;
                    };
                    let effects = entry.room.message(&id, conn, message);
                    self.apply(&entry.room, effects);
                    self.gauges(&room, Some(&entry.room));
                    if leaving {
                        left = true;
                        info!(%room, participant = %id, conn, "left");
                        break;
                    }
                }
            }
        }
        if joined && !left {
            if let Some(entry) = self.rooms().get_mut(&room) {
                entry.room.dropped(&id, conn, Instant::now());
                self.gauges(&room, Some(&entry.room));
                debug!(%room, participant = %id, conn, "socket dropped: may resume");
            }
        }
        self.conns().remove(&conn);
        drop(tx);
        if !writer_done {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
    }

    fn refused(&self, reason: &str) {
        self.count(
            "tidecast_rooms_refusals_total",
            "Signaling connections or messages refused, by reason.",
            &[("reason", reason)],
        );
    }
}

impl Routes for Rooms {
    fn role(&self) -> &'static str {
        "rooms"
    }

    fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        Box::pin(self.respond(req, peer))
    }

    fn accepts(&self, method: &Method, path: &str) -> bool {
        (*method == Method::POST || *method == Method::DELETE) && path.starts_with("/api/rooms/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ports_is_a_bounded_range_or_nothing() {
        assert_eq!(media_ports(""), Some(None));
        assert_eq!(media_ports(" 50000-50099 "), Some(Some(50000..=50099)));
        assert_eq!(media_ports("50000-50000"), Some(Some(50000..=50000)));
        for bad in ["0-10", "10-5", "50000", "a-b", "1-70000", "1000-3000"] {
            assert_eq!(media_ports(bad), None, "{bad}");
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(t0);
        let burst = (0..1000).take_while(|_| l.allow(t0)).count();
        assert_eq!(burst, BURST as usize);
        assert!(!l.allow(t0));
        assert!(l.allow(t0 + Duration::from_millis(25)), "refilled at 50/s");
    }
}
