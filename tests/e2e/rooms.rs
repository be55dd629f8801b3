//! Rooms signaling against the real binary: join tokens (API, CLI, refusals), two participants
//! exchanging offer/answer/candidates, resume after a dropped socket, and bad input (malformed
//! JSON, unknown types, a 1 MB message, a flood) that leaves the other participant unaffected.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::harness::{binary, Tidecast};
use crate::http;

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

/// A 1280x720 y4m clip for Chromium's fake camera.
pub(crate) fn camera_clip(dir: &std::path::Path) -> std::path::PathBuf {
    crate::harness::require_tool("ffmpeg", "apt-get install ffmpeg");
    let clip = dir.join("camera-720p.y4m");
    let out = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=1280x720:rate=30")
        .args(["-frames:v", "30", "-pix_fmt", "yuv420p"])
        .arg(&clip)
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    clip
}

/// Runs tests/browser/room.mjs with `pages` room pages on `t`'s room page; its report.
fn room_pages(
    t: &Tidecast,
    room: &str,
    page_a_query: &str,
    pages: usize,
    c_transport: &str,
    all_query: &str,
) -> Value {
    let clip = camera_clip(&t.dir);
    let url = format!(
        "http://127.0.0.1:{}/demo/room.html?room={room}-{}",
        t.rooms_port,
        std::process::id()
    );
    let out = std::process::Command::new("node")
        .arg(crate::browser::browser_dir().join("room.mjs"))
        .arg(&url)
        .arg(&clip)
        .arg("90")
        .arg(page_a_query)
        .arg(pages.to_string())
        .arg(c_transport)
        .arg(all_query)
        .output()
        .expect("node room.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("room report: {report}");
    assert_eq!(report["ok"], true, "{report}\n{}", t.log());
    report
}

/// Pinning raised the received frame height and unpinning lowered it again.
fn assert_pinning_switches_layers(steps: &Value) {
    let (thumb, pinned, unpinned) = (
        steps["thumbnail"].as_u64().unwrap_or(0),
        steps["pinned"].as_u64().unwrap_or(0),
        steps["unpinned"].as_u64().unwrap_or(0),
    );
    assert!(pinned >= 2 * thumb && pinned > unpinned, "{steps}");
}

/// The room client in Chromium: two pages in the development default (each mints its own
/// token) call peer-to-peer — the selected candidate pair is between the browsers, not tidecast —
/// in the codec the weaker (H.264-only) side supports, and pinning raises the received frame
/// height, unpinning lowers it.
#[test]
fn room_page_calls_peer_to_peer_and_pinning_raises_the_layer() {
    crate::browser::browser_dir();
    let _guard = crate::harness::heavy();
    let t = Tidecast::start(&[], &[]);
    // the H.264-only page A is the weaker side
    let report = room_pages(&t, "p2p", "codecs=h264", 2, "udp", "-");
    let steps = &report["steps"];
    assert_eq!(steps["connected"]["mode"], "p2p");
    // the weaker side decides: A declares only H.264, so both directions use it
    assert_eq!(
        steps["connected"]["constraints"]["video_codec"], "H264",
        "{steps}"
    );
    assert_eq!(steps["connected"]["codecs"]["a"], "video/H264", "{steps}");
    assert_eq!(steps["connected"]["codecs"]["b"], "video/H264", "{steps}");
    // media flows browser to browser: no candidate on either side is tidecast's port
    let pair = &steps["pair"];
    let media = Tidecast::metric(t.rooms_port, "tidecast_sfu_peers", "");
    for side in ["local", "remote"] {
        assert_ne!(pair[side]["type"], "relay", "{pair}");
        assert_ne!(pair[side]["port"], t.rooms_port, "{pair}");
    }
    assert_eq!(media, 0, "no peer connection to the SFU in a 1:1 call");
    assert_pinning_switches_layers(steps);
    assert!(t.log().contains("joined"), "{}", t.log());
}

/// A 1:1 call whose pages may only use relays (`iceTransportPolicy: "relay"`): the TURN
/// credentials the room hands out get both browsers an allocation on tidecast's TURN server and
/// the call's media flows through it. The relays are on loopback, which the peer filter refuses
/// unless allow-listed: the test allows 127.0.0.1 as a deployment allows its own addresses.
#[test]
fn a_relay_only_call_goes_through_tidecasts_turn_server() {
    crate::browser::browser_dir();
    let _guard = crate::harness::heavy();
    let t = Tidecast::start(
        &[],
        &[("TIDECAST_TURN__ALLOWED_PEERS", "[\"127.0.0.1/32\"]")],
    );
    let report = room_pages(&t, "relay", "-", 2, "udp", "policy=relay");
    let steps = &report["steps"];
    assert_eq!(steps["connected"]["mode"], "p2p", "{steps}");
    let pair = &steps["pair"];
    for side in ["local", "remote"] {
        assert_eq!(pair[side]["type"], "relay", "{side} candidate: {pair}");
    }
    let relayed = Tidecast::metric(t.http_port, "tidecast_turn_relayed_packets_total", "");
    assert!(relayed > 100, "TURN relayed {relayed} packets\n{}", t.log());
    assert!(Tidecast::metric(t.http_port, "tidecast_turn_allocations_total", "") >= 2);
}

/// Group calls: two pages call peer-to-peer, a third joins and all three move to the SFU by
/// renegotiation (no reload) — every page receives the two others from tidecast's one media
/// port, A and B over UDP, C (whose browser may not use UDP) over ICE-TCP — and the simulcast
/// layer A receives of B follows A's layout: pinned → 720p, thumbnail → 180p. Then a fourth
/// page that decodes only H.264 joins: the room's codec changes mid-call (the others publish
/// again, in H.264, without a reload) and every page receives the three others in it.
#[test]
fn third_page_moves_the_call_to_the_sfu_and_pinning_switches_the_simulcast_layer() {
    crate::browser::browser_dir();
    let _guard = crate::harness::heavy();
    let t = Tidecast::start(&[], &[]);
    // C's browser may not use UDP (as behind a corporate firewall): it comes in over ICE-TCP;
    // A's token may start the recording
    let report = room_pages(&t, "sfu", "record=1", 4, "tcp", "-");
    let steps = &report["steps"];
    assert_eq!(steps["connected"]["mode"], "p2p", "{steps}");
    let media_port = t
        .log()
        .lines()
        .find(|l| l.contains("SFU media listening"))
        .and_then(|l| l.split("addrs=[").nth(1))
        .and_then(|a| a.split(']').next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no SFU address in the log:\n{}", t.log()));
    for page in ["A", "B", "C"] {
        let seen = &steps["sfu"]["pages"][page];
        assert_eq!(seen["mode"], "sfu", "{steps}");
        // the media comes from the SFU's port, not from another browser
        assert_eq!(seen["pair"]["remote"]["port"], media_port, "{steps}");
        let transport = if page == "C" { "tcp" } else { "udp" };
        assert_eq!(
            seen["pair"]["remote"]["protocol"], transport,
            "{page}: {steps}"
        );
    }
    assert_pinning_switches_layers(steps);
    let forwarded = Tidecast::metric(t.rooms_port, "tidecast_sfu_forwarded_packets_total", "");
    let switches = Tidecast::metric(t.rooms_port, "tidecast_sfu_layer_switches_total", "");
    assert!(forwarded > 1000, "forwarded {forwarded} packets");
    assert!(switches >= 4, "{switches} layer switches");
    // the codec changed mid-call: VP8 before D came, H.264 for everyone after
    assert_eq!(
        steps["sfu"]["pages"]["A"]["codecs"]["B"], "video/VP8",
        "{steps}"
    );
    assert_eq!(
        steps["recodec"]["constraints"]["video_codec"], "H264",
        "{steps}"
    );
    for page in ["A", "B", "C", "D"] {
        let seen = &steps["recodec"]["pages"][page];
        assert_eq!(
            seen.as_object().map(|o| o.len()),
            Some(3),
            "{page}: {steps}"
        );
        for (_, codec) in seen.as_object().into_iter().flatten() {
            assert_eq!(codec, "video/H264", "{page}: {steps}");
        }
    }
    // A started and stopped the recording from the page; B's token could not, and saw it
    let rec = &steps["recording"];
    assert_eq!(rec["b_can"], false, "{steps}");
    assert_eq!(rec["b_shows_rec"], true, "{steps}");
    let recordings = t.dir.join("data/store/recordings");
    t.wait_for("A's recorded chunks", Duration::from_secs(20), || {
        let meeting = std::fs::read_dir(&recordings)
            .ok()?
            .flatten()
            .next()?
            .path();
        let tracks = std::fs::read_dir(meeting.join("A")).ok()?;
        let chunks = tracks
            .flatten()
            .filter(|t| t.file_name().to_string_lossy().starts_with("video-"))
            .flat_map(|t| std::fs::read_dir(t.path()).into_iter().flatten().flatten())
            .filter(|c| c.file_name().to_string_lossy().ends_with(".ts"))
            .count();
        (chunks > 0).then_some(())
    });
    assert!(
        t.log().contains("recording set by a participant"),
        "{}",
        t.log()
    );
}

/// `tidecast bot` with `participants` in `room` for `seconds`, subscribing on `schedule`
/// (`--pin`): its JSON report.
pub fn run_bots(
    t: &Tidecast,
    room: &str,
    participants: u32,
    seconds: u32,
    schedule: &str,
) -> Value {
    run_bots_with(t, room, participants, seconds, schedule, &[])
}

/// [`run_bots`] with more `tidecast bot` arguments.
pub fn run_bots_with(
    t: &Tidecast,
    room: &str,
    participants: u32,
    seconds: u32,
    schedule: &str,
    extra: &[&str],
) -> Value {
    let out = std::process::Command::new(binary())
        .args(["bot", "--server"])
        .arg(format!("127.0.0.1:{}", t.rooms_port))
        .args(["--room", room, "--participants", &participants.to_string()])
        .args(["--duration", &seconds.to_string(), "--schedule", schedule])
        .args(["--pin", "--json"])
        .args(extra)
        .env("RUST_LOG", "warn,tidecast_bot=debug,webrtc=warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("tidecast bot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no bot report ({e}): {stdout} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            t.log()
        )
    });
    eprintln!("bot log:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{report}");
    report
}

/// Start `participants` bots (each a solid colour, sending the low layer) in `room` for
/// `seconds`, in the background.
pub fn spawn_bots(
    t: &Tidecast,
    room: &str,
    participants: u32,
    seconds: u32,
) -> std::process::Child {
    std::process::Command::new(binary())
        .args(["bot", "--server", &format!("127.0.0.1:{}", t.rooms_port)])
        .args(["--room", room, "--participants", &participants.to_string()])
        .args(["--duration", &seconds.to_string()])
        .args(["--schedule", "0=low", "--json", "--colours"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tidecast bot")
}

/// A bot report's packets of `track` (one of participant `p`'s) per schedule step, with the
/// track's key (`publisher/kind`).
fn steps_of(p: &Value, track: &Value) -> (String, Vec<u64>) {
    let key = format!(
        "{}/{}",
        track["publisher"].as_str().unwrap_or_default(),
        track["kind"].as_str().unwrap_or_default()
    );
    let steps = p["packets_by_step"][&key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    (key, steps)
}

/// Two bots are a peer-to-peer call (no SFU): each receives the other's audio and video
/// directly, and the video follows what the receiver's `subscribe` asks for — 180p, then 720p
/// (the sender switches its one track on a keyframe), nothing while off, 180p again.
#[test]
fn two_bots_call_peer_to_peer_and_the_sent_layer_follows_the_subscription() {
    let _guard = crate::harness::heavy();
    let t = Tidecast::start(&[], &[]);
    let room = format!("p2p-bots-{}", std::process::id());
    let report = run_bots(&t, &room, 2, 14, "0=low,4=high,8=off,11=low");
    let participants = report["participants"].as_array().expect("participants");
    assert_eq!(participants.len(), 2, "{report}");
    for p in participants {
        let me = p["identity"].as_str().unwrap_or_default();
        assert!(p["connected_ms"].as_u64().is_some(), "{me}: {p}");
        let tracks = p["tracks"].as_array().expect("tracks");
        assert_eq!(
            tracks.len(),
            2,
            "{me} receives the other's audio and video: {p}"
        );
        for track in tracks {
            assert_ne!(track["publisher"], me, "{p}");
            let (key, steps) = steps_of(p, track);
            assert_eq!(steps.len(), 4, "{me} {key}: {steps:?}");
            if track["kind"] == "audio" {
                assert!(steps.iter().all(|n| *n > 30), "{me} {key}: {steps:?}");
                continue;
            }
            assert!(
                steps[0] > 30 && steps[1] > 30 && steps[3] > 20,
                "{me} {key}: {steps:?}"
            );
            assert!(steps[2] < steps[1] / 10, "{me} {key} while off: {steps:?}");
            let heights: Vec<u64> = track["heights"]
                .as_array()
                .expect("heights")
                .iter()
                .filter_map(|h| h["height"].as_u64())
                .collect();
            assert_eq!(heights.first(), Some(&180), "{me} {key}: {heights:?}");
            assert!(heights.contains(&720), "{me} {key}: {heights:?}");
            assert_eq!(heights.last(), Some(&180), "{me} {key}: {heights:?}");
        }
    }
    // nothing went through the SFU
    assert!(
        !t.log().contains("peer connecting to the SFU"),
        "{}",
        t.log()
    );
    assert_eq!(
        Tidecast::metric(t.rooms_port, "tidecast_sfu_forwarded_packets_total", ""),
        0
    );
}

/// webrtc-rs peers (`tidecast bot`) against the SFU: three participants publish simulcast VP8
/// and Opus; each receives the two others' audio and video; the layer each asks for moves
/// low → high → low → off → low, and what arrives follows — 180p, then a higher layer (720p on an
/// idle machine; 360p when the subscriber's estimate allows no more) with sequence numbers
/// continuous across the switch, 180p, nothing while off, 180p again, going on from the last
/// packet sent before `off`; leaving frees the SFU's state.
/// The SFU has a range of three media ports (`rooms.media_ports`): each peer is on its own.
#[test]
fn bots_publish_simulcast_and_subscriber_preferences_switch_the_forwarded_layer() {
    let _guard = crate::harness::heavy();
    let first = crate::harness::free_ports(3);
    let range = format!("{first}-{}", first + 2);
    // the SFU's estimates and layer switches in its log, for a failure to show
    let t = Tidecast::start(
        &[],
        &[
            ("TIDECAST_ROOMS__MEDIA_PORTS", &range),
            ("RUST_LOG", "info,tidecast_rooms=debug"),
        ],
    );
    let room = format!("bots-{}", std::process::id());
    // 12 s of `high`: the pinned 720p needs the subscriber's estimate at ~2.5 Mbit/s, and with
    // the machine's two cores busy (debug-build bots, other tests) GCC took 8–11 s to get there
    // from the join (failed 1 in 3 with a busy core beside it when `high` lasted 8 s)
    let report = run_bots(&t, &room, 3, 28, "0=low,6=high,18=low,21=off,24=low");
    let participants = report["participants"].as_array().expect("participants");
    assert_eq!(participants.len(), 3, "{report}");
    for p in participants {
        let me = p["identity"].as_str().unwrap_or_default();
        let tracks = p["tracks"].as_array().expect("tracks");
        assert_eq!(
            tracks.len(),
            4,
            "{me} receives audio and video of two others: {p}"
        );
        for track in tracks {
            let from = track["publisher"].as_str().unwrap_or_default();
            assert_ne!(from, me);
            let (key, steps) = steps_of(p, track);
            assert_eq!(steps.len(), 5, "{me} {key}: {steps:?}");
            assert_eq!(track["discontinuities"], 0, "{me} {key}: {track}");
            if track["kind"] == "audio" {
                assert!(steps.iter().all(|n| *n > 50), "{me} {key}: {steps:?}");
                continue;
            }
            // off stops forwarding; low resumes it
            assert!(
                steps[0] > 50 && steps[1] > 50 && steps[2] > 30 && steps[4] > 30,
                "{me} {key}: {steps:?}"
            );
            assert!(steps[3] < steps[1] / 10, "{me} {key} while off: {steps:?}");
            // the same layer before and after `off`: the stream goes on from the last packet it
            // was sent, so what it was not sent while off is no gap (~90 packets the receiver
            // would count lost and ask for again); a few are allowed for a busy machine's drops
            assert!(
                track["lost"].as_u64().unwrap_or(u64::MAX) < 30,
                "{me} {key}: resumed with a gap in sequence numbers: {track}"
            );
            let heights: Vec<(u64, bool)> = track["heights"]
                .as_array()
                .expect("heights")
                .iter()
                .map(|h| (h["height"].as_u64().unwrap_or(0), h["continuous"] == true))
                .collect();
            assert_eq!(
                heights.first().map(|h| h.0),
                Some(180),
                "{me} {key}: {heights:?}"
            );
            assert_eq!(
                heights.last().map(|h| h.0),
                Some(180),
                "{me} {key}: {heights:?}"
            );
            // the pinned one (the first of the others) rises to 720p, the other stays small
            let others: Vec<&str> = participants
                .iter()
                .filter_map(|q| q["identity"].as_str())
                .filter(|id| *id != me)
                .collect();
            let pinned = others.iter().min().copied() == Some(from);
            // above the thumbnail: 720p, or 360p when the subscriber's bandwidth estimate does not
            // allow more (on a busy two-core machine GCC sees the bots' own processing delay)
            let first_high = heights.iter().position(|(h, _)| *h > 180);
            if !pinned {
                assert!(
                    heights.iter().all(|(h, _)| *h <= 180),
                    "{me} {key} not pinned: {heights:?}"
                );
                continue;
            }
            assert!(
                first_high.is_some(),
                "{me} {key} never rose above 180p: {heights:?}\n{}",
                t.log()
            );
            // the switch up happened without a gap in sequence numbers
            for (h, continuous) in &heights[1..=first_high.unwrap_or(0)] {
                assert!(
                    continuous,
                    "{me} {key}: switch to {h} not continuous: {heights:?}"
                );
            }
        }
    }
    // leaving frees the SFU's state and the room
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let peers = Tidecast::metric(t.rooms_port, "tidecast_sfu_peers", "");
        let rooms = http::request(t.rooms_port, "GET", "/api/rooms", &[], b"")
            .map(|r| r.text())
            .unwrap_or_default();
        if peers == 0 && !rooms.contains(&room) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after leaving: {peers} SFU peers, rooms {rooms}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(Tidecast::metric(t.rooms_port, "tidecast_sfu_layer_switches_total", "") >= 9);
    // loss both ways is measured: none from the publishers on loopback, and the subscribers'
    // reports carry no gap of the paused layer (six video tracks × ~90 packets with one)
    let metrics = http::get(t.rooms_port, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    for direction in ["from_publishers", "to_subscribers"] {
        let series = format!("tidecast_sfu_lost_packets_total{{direction=\"{direction}\"}}");
        assert!(metrics.contains(&series), "{series} missing: {metrics}");
    }
    let reported = Tidecast::metric(t.rooms_port, "tidecast_sfu_lost_packets_total", "to_sub");
    assert!(reported < 90, "subscribers report {reported} packets lost");
    // the three peer connections were given the three ports of the range, one each
    let log = t.log();
    let mut ports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("peer connecting to the SFU"))
        .filter_map(|l| l.split("port=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    ports.sort();
    let want: Vec<String> = (first..=first + 2).map(|p| p.to_string()).collect();
    assert_eq!(ports, want, "{log}");
}
