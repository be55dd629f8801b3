//! One signaling WebSocket: the upgrade (token check, placement across nodes), then a task that
//! reads the client's messages under a rate limit and writes the room's to it through a bounded
//! outbox.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tidecast_common::body::Body;
use tidecast_common::keys::random_hex;
use tidecast_common::service::{self, Readiness, WebSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::call_events::CallLog;
use crate::cluster::Placement;
use crate::room::Room;
use crate::signal::{self, ClientMessage, ServerMessage};
use crate::token::{is_valid_name, JoinClaims};

use super::{error, now_secs, Outgoing, RecordingState, RoomEntry, Rooms, MAX_MESSAGE};

/// Messages a client may send in a burst, and per second after it (trickle ICE sends a few
/// dozen candidates at once).
const BURST: f64 = 200.0;
const PER_SECOND: f64 = 50.0;
/// Messages queued for a slow client before it is disconnected.
const OUTBOX: usize = 256;
/// A socket must send `join` this soon after opening.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A query parameter's raw value.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
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
    pub(super) async fn upgrade(
        self: Arc<Self>,
        req: Request<Incoming>,
        room: String,
    ) -> Response<Body> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
