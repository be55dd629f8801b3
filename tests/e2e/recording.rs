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

/// How many chunks the indexes under `root` list for `meeting` (0 for what is not there yet).
fn indexed_chunks(root: &Path, meeting: &str) -> u64 {
    let dir = root.join("recordings").join(meeting);
    let mut n = 0;
    for person in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for track in std::fs::read_dir(person.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let index: Option<Value> = std::fs::read(track.path().join("index.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            n += index
                .and_then(|i| i["chunks"].as_array().map(|c| c.len() as u64))
                .unwrap_or(0);
        }
    }
    n
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

/// A two-person call (peer-to-peer) recorded from `POST /api/rooms/{room}/recording` on moves to
/// the SFU and is recorded into S3 (s3s-fs); S3 is down for 10 s in the middle, and afterwards
/// every chunk of every index is in the bucket.
#[test]
fn recording_started_by_the_api_reaches_s3_across_an_outage() {
    use crate::archive::{S3Server, ACCESS, BUCKET, SECRET};
    use crate::harness::free_port;
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let root = std::env::temp_dir().join(format!("tidecast-rec-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut s3 = S3Server::start(&root, free_port());
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let t = Tidecast::start(
        &[],
        &[
            ("TIDECAST_STORE__KIND", "s3"),
            ("TIDECAST_STORE__S3__ENDPOINT", &endpoint),
            ("TIDECAST_STORE__S3__BUCKET", BUCKET),
            ("TIDECAST_STORE__S3__ACCESS_KEY_ID", ACCESS),
            ("TIDECAST_STORE__S3__SECRET_ACCESS_KEY", SECRET),
            ("TIDECAST_ORIGIN__ARCHIVE_RETRY_SECS", "1"),
        ],
    );
    let room = format!("rec-api-{}", std::process::id());
    let bots = {
        let (rooms_port, room) = (t.rooms_port, room.clone());
        std::thread::spawn(move || {
            let out = Command::new(crate::harness::binary())
                .args(["bot", "--server", &format!("127.0.0.1:{rooms_port}")])
                .args(["--room", &room, "--participants", "2", "--duration", "24"])
                .args(["--schedule", "0=low", "--json"])
                .env("RUST_LOG", "warn")
                .output()
                .expect("tidecast bot");
            String::from_utf8_lossy(&out.stdout).to_string()
        })
    };
    // the call is on: record it
    let path = format!("/api/rooms/{room}/recording");
    t.wait_for("the room", Duration::from_secs(20), || {
        let r = crate::http::get(t.rooms_port, &format!("/api/rooms/{room}")).ok()?;
        (r.status == 200 && r.text().contains("bot-2")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let r = crate::http::request(t.rooms_port, "POST", &path, &[], b"").expect("POST recording");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("\"recording\": true") || r.text().contains("\"recording\":true"),
        "{}",
        r.text()
    );
    // S3 goes away for 10 s while chunks are being written
    std::thread::sleep(Duration::from_secs(5));
    s3.stop();
    std::thread::sleep(Duration::from_secs(10));
    s3.restart();
    let report = bots.join().expect("bots");
    assert!(report.contains("participants"), "bots: {report}");
    let ended = call_ended(&t, &room, Duration::from_secs(30));
    let meeting = ended["meeting_id"]
        .as_str()
        .expect("meeting_id")
        .to_string();
    let chunks = ended["chunks"].as_u64().unwrap_or(0);
    assert!(chunks >= 8, "{ended}");
    // writes failed while S3 was down, and once it is back the spool drains: every index in
    // the bucket lists its track's last chunk
    assert!(
        Tidecast::metric(
            t.http_port,
            "tidecast_store_write_failures_total",
            "recording"
        ) > 0
    );
    t.wait_for("every chunk in the bucket", Duration::from_secs(40), || {
        let spooled = Tidecast::metric(t.http_port, "tidecast_store_spooled_objects", "recording");
        (spooled == 0 && indexed_chunks(&s3.bucket_dir(), &meeting) == chunks).then_some(())
    });
    // recorded from the API call on: the track starts a few seconds into the call
    let secs = ended["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0 - 4.0;
    let found = check_recording(&s3.bucket_dir(), &meeting, 2, secs);
    assert_eq!(found, chunks, "{ended}");
    let log = t.log();
    assert!(log.contains("spooling"), "{log}");
    drop(t);
    drop(s3);
    let _ = std::fs::remove_dir_all(&root);
}
