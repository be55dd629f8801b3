//! Call recording: bots (webrtc-rs) talk through the SFU with recording on; every participant's
//! audio and video ends up as self-contained chunks (ffprobe reads each) with an index, under
//! `recordings/{meeting}/…` in the object store — the local directory by default, S3 (s3s-fs)
//! with an outage in the middle — and `call.ended` says how many chunks there are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidecast_common::bus::{EventBus, LocalBus};

use crate::harness::{heavy, require_tool, Tidecast};
use crate::rooms::run_bots;

/// The `call.ended` of `room` from the local bus of `t` (waits for it).
fn call_ended(t: &Tidecast, room: &str, within: Duration) -> Value {
    let bus_dir = t.dir.join("data").join("bus");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Instant::now() + within;
    loop {
        let found = rt.block_on(async {
            let bus = LocalBus::open(bus_dir.clone());
            let mut consumer = bus.subscribe("call-events", "e2e").await.ok()?;
            loop {
                let d = tokio::time::timeout(Duration::from_millis(200), consumer.next())
                    .await
                    .ok()?
                    .ok()?;
                let json: Value = serde_json::from_slice(&d.event.payload).ok()?;
                if json["room"] == room {
                    return Some(json);
                }
            }
        });
        if let Some(json) = found {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "no call.ended for {room}\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// codec and duration of the one stream in `path`.
fn probe(path: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("running ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let codec = j["streams"][0]["codec_name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let duration = j["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codec, duration)
}

/// Check every track of the recording under `root` (the store's directory: `root/{key}`):
/// `participants` people with an audio and a video track each, every chunk of every index
/// present and readable, starts in order. Returns the number of chunks.
fn check_recording(root: &Path, meeting: &str, participants: usize, call_secs: f64) -> u64 {
    let dir = root.join("recordings").join(meeting);
    let people: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(people.len(), participants, "{people:?}");
    let mut chunks = 0;
    for person in people {
        let tracks: Vec<PathBuf> = std::fs::read_dir(&person)
            .expect("tracks")
            .flatten()
            .map(|e| e.path())
            .collect();
        let mut kinds: Vec<String> = Vec::new();
        for track in tracks {
            let index: Value = serde_json::from_slice(
                &std::fs::read(track.join("index.json")).expect("index.json"),
            )
            .expect("index JSON");
            let kind = index["kind"].as_str().unwrap_or_default().to_string();
            let want = if kind == "audio" { "opus" } else { "vp8" };
            assert_eq!(index["codec"], want, "{index}");
            let list = index["chunks"].as_array().expect("chunks");
            assert!(!list.is_empty(), "{index}");
            let mut last_start = None;
            let mut total = 0.0;
            for c in list {
                let key = c["key"].as_str().expect("key");
                let (codec, secs) = probe(&root.join(key));
                assert_eq!(codec, want, "{key}");
                total += secs;
                let start = c["start_ms"].as_u64().expect("start_ms");
                assert!(last_start < Some(start), "{index}");
                last_start = Some(start);
                chunks += 1;
            }
            // the track covers most of the call (it starts once media flows)
            assert!(
                total > call_secs * 0.5 && total < call_secs + 5.0,
                "{} s of {kind} in a {call_secs} s call: {index}",
                total
            );
            kinds.push(kind);
        }
        kinds.sort();
        assert_eq!(kinds, ["audio", "video"], "{}", person.display());
    }
    chunks
}

/// `rooms.record = true`: a call of three bots is recorded from its first join; `call.ended`
/// counts the chunks the store has.
#[test]
fn a_recorded_call_leaves_chunks_and_indexes_in_the_store() {
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let t = Tidecast::start(&[], &[("TIDECAST_ROOMS__RECORD", "true")]);
    let room = format!("rec-{}", std::process::id());
    run_bots(&t, &room, 3, 12, "0=low");
    let ended = call_ended(&t, &room, Duration::from_secs(30));
    let meeting = ended["meeting_id"].as_str().expect("meeting_id");
    let chunks = ended["chunks"].as_u64().unwrap_or(0);
    let secs = ended["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let found = check_recording(&t.dir.join("data").join("store"), meeting, 3, secs);
    assert_eq!(found, chunks, "{ended}");
}
