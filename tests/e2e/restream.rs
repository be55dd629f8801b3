//! Restreaming a room to the CDN: the participants composited (active speaker large, the
//! others in a strip) into stream `room-{room}`, through the ladder, origin and edge like any
//! RTMP stream.

use std::time::Duration;

use serde_json::Value;

use crate::browser::{browser_dir, play};
use crate::harness::{heavy, require_tool, Tidecast};
use crate::http;
use crate::recording::{bot_colour, near};
use crate::rooms::spawn_bots;

/// One frame of `url`, scaled to 64×36, as RGB.
fn small_frame(url: &str) -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            url,
            "-frames:v",
            "1",
            "-vf",
            "scale=64:36",
        ])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("running ffmpeg");
    assert!(
        out.status.success() && out.stdout.len() == 64 * 36 * 3,
        "ffmpeg frame of {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn at(frame: &[u8], x: usize, y: usize) -> [u8; 3] {
    let i = (y * 64 + x) * 3;
    [frame[i], frame[i + 1], frame[i + 2]]
}

/// Two webrtc-rs publishers (each a solid colour) are restreamed: `room-{room}` is in
/// `/api/streams` with the ladder's renditions, its picture shows one of them large and the
/// other in the strip, hls.js plays it through the edge, and stopping the restream ends the
/// stream with ENDLIST.
#[test]
fn a_restreamed_room_plays_through_an_edge_and_ends_with_endlist() {
    require_tool("ffmpeg", "apt-get install ffmpeg");
    browser_dir();
    let _guard = heavy();
    // a smaller picture than the default 720p: the bots, two ladders' worth of encoding and
    // Chromium share two cores
    let t = Tidecast::start(
        &[],
        &[
            ("TIDECAST_ROOMS__RESTREAM_WIDTH", "854"),
            ("TIDECAST_ROOMS__RESTREAM_HEIGHT", "480"),
            ("TIDECAST_ROOMS__RESTREAM_FPS", "25"),
        ],
    );
    let room = format!("restream-{}", std::process::id());
    let stream = format!("room-{room}");
    let mut bots = spawn_bots(&t, &room, 2, 90);
    t.wait_for("two participants", Duration::from_secs(30), || {
        let r = http::get(t.rooms_port, &format!("/api/rooms/{room}")).ok()?;
        let v: Value = serde_json::from_str(&r.text()).ok()?;
        (v["participants"].as_array()?.len() == 2).then_some(())
    });
    let path = format!("/api/rooms/{room}/restream");
    // a restream target that is not RTMP is refused
    let bad = http::request(t.rooms_port, "POST", &path, &[], br#"{"url":"http://x/y"}"#)
        .expect("POST restream");
    assert_eq!(bad.status, 400, "{}", bad.text());
    let r = http::request(t.rooms_port, "POST", &path, &[], b"").expect("POST restream");
    assert_eq!(r.status, 200, "{}", r.text());
    let started: Value = serde_json::from_str(&r.text()).expect("json");
    assert_eq!(started["stream"], stream.as_str(), "{started}");

    t.wait_master(&stream);
    let streams: Value = serde_json::from_str(&t.get("/api/streams").text()).expect("json");
    let entry = streams["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == stream.as_str()))
        .unwrap_or_else(|| panic!("{stream} not in /api/streams: {streams}"))
        .clone();
    let renditions = entry["renditions"].as_array().expect("renditions");
    let video: Vec<&Value> = renditions.iter().filter(|r| r["kind"] == "video").collect();
    assert!(video.len() >= 2, "a ladder of renditions: {entry}");
    assert!(renditions.iter().any(|r| r["kind"] == "audio"), "{entry}");
    assert_eq!(
        video[0]["height"], 480,
        "the ladder from the 480p picture: {entry}"
    );

    // the picture through the edge: one participant large on top, the other in the strip
    let top = video[0]["playlist"].as_str().expect("playlist");
    let url = format!("http://127.0.0.1:{}{top}", t.edge_port);
    let colours = ["bot-1", "bot-2"].map(bot_colour);
    t.wait_for(
        "both participants in the picture",
        Duration::from_secs(30),
        || {
            let frame = small_frame(&url);
            let (main, thumb) = (at(&frame, 32, 13), at(&frame, 32, 31));
            let seen = |c: [u8; 3]| colours.iter().position(|k| near(*k, c));
            match (seen(main), seen(thumb)) {
                (Some(a), Some(b)) if a != b => Some(()),
                _ => {
                    eprintln!("frame: main {main:?}, strip {thumb:?}");
                    None
                }
            }
        },
    );

    // hls.js plays it through the edge
    let page = format!("http://127.0.0.1:{}/demo/?stream={stream}", t.edge_port);
    let report = play(&page, 5, 45);
    eprintln!("hls.js report: {report}");
    assert_eq!(report["ok"], true, "playback failed: {report}");

    // stopping ends the stream
    let r = http::request(t.rooms_port, "DELETE", &path, &[], b"").expect("DELETE restream");
    assert_eq!(r.status, 200, "{}", r.text());
    t.wait_for("ENDLIST", Duration::from_secs(20), || {
        let r = http::get(t.edge_port, top).ok()?;
        r.text().contains("#EXT-X-ENDLIST").then_some(())
    });
    let _ = bots.kill();
    let _ = bots.wait();
    assert!(t.log().contains("restream ended"), "{}", t.log());
}
