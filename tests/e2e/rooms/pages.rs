//! The room client (`/demo/room.html`) in Chromium, driven by playwright-core: two pages call
//! peer-to-peer (directly, or relay-only through tidecast's TURN), a third moves the call to the
//! SFU, and pinning raises the pinned tile's received layer.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Tidecast;

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
