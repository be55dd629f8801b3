//! The rooms node's shell: HTTP routes on the shared service layer (`/rooms/{room}/ws`, the
//! token and room APIs), one task per WebSocket, and a ticker that ends resume windows. Room
//! logic is in [`crate::room`], the protocol in [`crate::signal`].
//!
//! * this module: the node's state, applying a room's effects, the ticker, the SFU's signals.
//! * `api`: the HTTP API (tokens, rooms, kick, recording and restream switches).
//! * `connection`: one signaling WebSocket, from upgrade to close.
//! * `jobs`: a call's recording and restream, and its `call.ended` event.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tidecast_common::body::{full, Body};
use tidecast_common::bus::SharedBus;
use tidecast_common::config::RoomsConfig;
use tidecast_common::demo::Demo;
use tidecast_common::keys::random_hex;
use tidecast_common::metrics::Registry;
use tidecast_common::service::{Readiness, ResponseFuture, Routes, Service};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::call_events::{CallLog, EndReason};
use crate::recording::Recorder;
use crate::restream::{Restream, Restreamer};
use crate::room::{ConnId, Effect, Room, RoomSettings};
use crate::sfu::{Sfu, SfuSettings, Signal};
use crate::signal::{IceServer, ServerMessage};
use crate::token::JoinTokens;

/// Largest signaling message (an SDP offer with simulcast is ~10 KB).
pub const MAX_MESSAGE: usize = 64 * 1024;

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

mod api;
mod connection;
mod jobs;

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
}
