//! `tidecast bot` (webrtc-rs peers) against the real binary: two bots call peer-to-peer, three
//! go through the SFU publishing simulcast, and subscription preferences switch the forwarded
//! layer (received resolution, continuous sequence numbers), `off` stops it, leaving frees it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{binary, Tidecast};
use crate::http;

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
