//! Rooms signaling against the real binary: join tokens (API, CLI, refusals), two participants
//! exchanging offer/answer/candidates, resume after a dropped socket, and bad input (malformed
//! JSON, unknown types, a 1 MB message, a flood) that leaves the other participant unaffected.
//!
//! The rest of the rooms tests: `pages` (the room client in Chromium), `bots` (webrtc-rs bots
//! against the SFU), `capped_link` (network-aware layer selection behind the lab's capped link).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::harness::{binary, Tidecast};
use crate::http;

mod bots;
mod capped_link;
mod pages;

pub(crate) use bots::{run_bots, run_bots_with, spawn_bots};
pub(crate) use pages::camera_clip;

pub(crate) type Ws = tungstenite::WebSocket<TcpStream>;

pub(crate) const SECRET: &str = "rooms-test-secret";

pub(crate) fn mint(port: u16, room: &str, identity: &str) -> String {
    let auth = format!("Bearer {SECRET}");
    let body = json!({ "identity": identity, "name": identity.to_uppercase() }).to_string();
    let r = http::request(
        port,
        "POST",
        &format!("/api/rooms/{room}/tokens"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .expect("mint");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    v["token"].as_str().expect("token").to_string()
}

fn cli_token(room: &str, identity: &str, ttl: u64) -> String {
    let out = std::process::Command::new(binary())
        .args(["token", "room", "--room", room, "--identity", identity])
        .args(["--ttl", &ttl.to_string(), "--secret", SECRET])
        .output()
        .expect("tidecast token room");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Open the signaling socket: `Err(status)` when the upgrade is refused.
fn connect(port: u16, room: &str, token: &str) -> Result<Ws, u16> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let url = format!("ws://127.0.0.1:{port}/rooms/{room}/ws?token={token}");
    match tungstenite::client::client(url.as_str(), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::handshake::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

pub(crate) fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

/// The next text message (panics on timeout or close).
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).expect("json"),
            Ok(Message::Close(_)) => panic!("socket closed"),
            Ok(_) => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The next message of `kind`, skipping others.
pub(crate) fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no {kind}");
        let v = recv(ws);
        if v["type"] == kind {
            return v;
        }
    }
}

/// True once the server has closed the socket (reads until close or error).
pub(crate) fn closed(ws: &mut Ws) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(_)) => return true,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

pub(crate) fn join(port: u16, room: &str, token: &str, session: Option<&str>) -> (Ws, Value) {
    let mut ws = connect(port, room, token).expect("join refused");
    let mut msg = json!({ "type": "join" });
    if let Some(s) = session {
        msg["session"] = json!(s);
    }
    send(&mut ws, msg);
    let joined = recv_type(&mut ws, "joined");
    (ws, joined)
}

/// Still answering: ping → pong.
fn alive(ws: &mut Ws) {
    send(ws, json!({ "type": "ping" }));
    recv_type(ws, "pong");
}

#[test]
fn signaling_tokens_relay_resume_and_bad_input() {
    let t = Tidecast::start(
        &[],
        &[
            ("TIDECAST_ROOMS__API_SECRET", SECRET),
            ("TIDECAST_ROOMS__RESUME_SECS", "3"),
            // a room that stays peer-to-peer: the third participant is refused
            ("TIDECAST_ROOMS__MAX_PARTICIPANTS", "2"),
        ],
    );
    let port = t.rooms_port;

    // tokens: the API needs the secret; expired, forged and other-room tokens are refused
    let denied = http::request(
        port,
        "POST",
        "/api/rooms/r1/tokens",
        &[],
        br#"{"identity":"x"}"#,
    )
    .expect("post");
    assert_eq!(denied.status, 401, "{}", denied.text());
    let alice_token = mint(port, "r1", "alice");
    let bob_token = cli_token("r1", "bob", 600);
    assert_eq!(
        connect(port, "r1", &cli_token("r1", "eve", 0)).err(),
        Some(401),
        "expired"
    );
    assert_eq!(
        connect(port, "r2", &alice_token).err(),
        Some(403),
        "other room"
    );
    let mut forged = alice_token.clone();
    forged.pop();
    forged.push(if alice_token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(connect(port, "r1", &forged).err(), Some(401), "forged");
    assert_eq!(connect(port, "r1", "").err(), Some(401), "no token");

    // two participants: offer / answer / candidates relayed
    let (mut alice, joined) = join(port, "r1", &alice_token, None);
    assert_eq!(joined["v"], 1);
    assert_eq!(joined["mode"], "p2p");
    assert_eq!(joined["you"]["name"], "ALICE");
    assert_eq!(joined["participants"], json!([]));
    assert_eq!(
        joined["constraints"]["video_codec"], "VP8",
        "no caps sent: no limit"
    );
    let (mut bob, joined) = join(port, "r1", &bob_token, None);
    assert_eq!(joined["participants"][0]["id"], "alice");
    let bob_session = joined["session"].as_str().expect("session").to_string();
    // after joining: the call is not recorded, and bob's token may not record it
    let rec = recv_type(&mut bob, "recording");
    assert_eq!(
        (rec["on"].as_bool(), rec["can_control"].as_bool()),
        (Some(false), Some(false))
    );
    send(&mut bob, json!({ "type": "record", "on": true }));
    assert_eq!(recv_type(&mut bob, "error")["code"], "not_allowed");
    assert_eq!(
        recv_type(&mut alice, "participant_joined")["participant"]["id"],
        "bob"
    );
    send(
        &mut bob,
        json!({ "type": "offer", "to": "alice", "sdp": "v=0 offer" }),
    );
    let offer = recv_type(&mut alice, "offer");
    assert_eq!(
        (offer["from"].as_str(), offer["sdp"].as_str()),
        (Some("bob"), Some("v=0 offer"))
    );
    send(
        &mut alice,
        json!({ "type": "answer", "to": "bob", "sdp": "v=0 answer" }),
    );
    assert_eq!(recv_type(&mut bob, "answer")["sdp"], "v=0 answer");
    let cand = json!({ "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0" });
    send(
        &mut alice,
        json!({ "type": "candidate", "to": "bob", "candidate": cand }),
    );
    assert_eq!(recv_type(&mut bob, "candidate")["candidate"], cand);
    send(
        &mut alice,
        json!({ "type": "mute", "kind": "audio", "muted": true }),
    );
    assert_eq!(
        recv_type(&mut bob, "participant_updated")["participant"]["audio_muted"],
        true
    );

    // a third participant: the room is peer-to-peer only for now
    let (mut carol, _) = {
        let mut ws = connect(port, "r1", &mint(port, "r1", "carol")).expect("upgrade");
        send(&mut ws, json!({ "type": "join" }));
        let v = recv(&mut ws);
        (ws, v)
    };
    assert!(closed(&mut carol), "room_full closes the socket");

    // bad input on bob's socket: errors, and alice is not disturbed
    bob.send(Message::text("{not json")).expect("send");
    assert_eq!(recv_type(&mut bob, "error")["code"], "bad_message");
    send(&mut bob, json!({ "type": "explode" }));
    assert_eq!(recv_type(&mut bob, "error")["code"], "unknown_type");
    send(
        &mut bob,
        json!({ "type": "offer", "to": "nobody", "sdp": "x" }),
    );
    assert_eq!(recv_type(&mut bob, "error")["code"], "unknown_participant");
    alive(&mut bob);
    // 1 MB message: bob's socket closes; alice does not see bob leave (resume window)
    let _ = bob.send(Message::text("x".repeat(1024 * 1024)));
    assert!(closed(&mut bob), "a 1 MB message closes the socket");
    alive(&mut alice);
    // bob resumes within the window: alice sees nothing of it
    let (mut bob, joined) = join(port, "r1", &bob_token, Some(&bob_session));
    assert_eq!(joined["resumed"], true);
    alive(&mut alice);
    send(
        &mut bob,
        json!({ "type": "offer", "to": "alice", "sdp": "v=0 again" }),
    );
    assert_eq!(
        recv_type(&mut alice, "offer")["sdp"],
        "v=0 again",
        "no participant_left first"
    );
    // a flood closes bob's socket
    for _ in 0..1000 {
        if bob.send(Message::text(r#"{"type":"ping"}"#)).is_err() {
            break;
        }
    }
    let mut flooded = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match bob.read() {
            Ok(Message::Text(t)) if t.contains("rate_limited") => flooded = true,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(flooded, "flood answered with rate_limited");
    alive(&mut alice);
    // bob stays away past the resume window: alice sees it leave
    let left = recv_type(&mut alice, "participant_left");
    assert_eq!(
        (left["id"].as_str(), left["reason"].as_str()),
        (Some("bob"), Some("timeout"))
    );

    // the room API: list, metrics, end
    let auth = format!("Bearer {SECRET}");
    assert_eq!(
        http::request(port, "GET", "/api/rooms", &[], b"")
            .expect("get")
            .status,
        401
    );
    let list =
        http::request(port, "GET", "/api/rooms", &[("Authorization", &auth)], b"").expect("get");
    assert!(list.text().contains("\"r1\""), "{}", list.text());
    let metrics = http::get(port, "/metrics").expect("metrics").text();
    assert!(
        metrics.contains("tidecast_rooms_participants{room=\"r1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidecast_rooms_refusals_total{reason=\"rate_limited\"} 1"),
        "{metrics}"
    );
    // kick: bob joins again and is removed through the API
    let (mut bob, _) = join(port, "r1", &bob_token, None);
    assert_eq!(
        recv_type(&mut alice, "participant_joined")["participant"]["id"],
        "bob"
    );
    let kick = http::request(
        port,
        "DELETE",
        "/api/rooms/r1/participants/bob",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("kick");
    assert_eq!(kick.status, 200, "{}", kick.text());
    assert_eq!(recv_type(&mut bob, "error")["code"], "kicked");
    assert!(closed(&mut bob));
    let left = recv_type(&mut alice, "participant_left");
    assert_eq!(
        (left["id"].as_str(), left["reason"].as_str()),
        (Some("bob"), Some("kicked"))
    );
    let end = http::request(
        port,
        "DELETE",
        "/api/rooms/r1",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("delete");
    assert_eq!(end.status, 200, "{}", end.text());
    recv_type(&mut alice, "room_ended");
    assert!(closed(&mut alice));
    let metrics = http::get(port, "/metrics").expect("metrics").text();
    assert!(
        !metrics.contains("room=\"r1\""),
        "series of the ended room removed: {metrics}"
    );
    // the shared layer: CORS preflight and readiness on the rooms port
    let pre = http::request(port, "OPTIONS", "/api/rooms/r1/tokens", &[], b"").expect("options");
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert_eq!(http::get(port, "/readyz").expect("readyz").status, 200);
}
