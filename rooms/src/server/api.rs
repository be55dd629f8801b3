//! The HTTP API of the rooms node: its routes (`respond`), join tokens (`POST
//! /api/rooms/{room}/tokens`), listing, describing, ending a room, kicking a participant, and
//! starting or stopping a room's recording and restream.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tidecast_common::body::{full, Body};
use tidecast_common::service;
use tracing::info;

use crate::call_events::EndReason;
use crate::room::Effect;
use crate::token::{is_valid_name, JoinClaims, RoomRole};

use super::{error, json, now_secs, Outgoing, RecordingState, Rooms};

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

impl Rooms {
    fn authorised(&self, req: &Request<Incoming>) -> bool {
        if self.dev_mode {
            return true;
        }
        service::bearer_matches(req, &self.config.api_secret)
    }

    pub(super) async fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Response<Body> {
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
}
