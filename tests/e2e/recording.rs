//! Call recording: bots (webrtc-rs) talk through the SFU with recording on; every participant's
//! audio and video ends up as self-contained chunks (ffprobe reads each) with an index, under
//! `recordings/{meeting}/…` in the object store — the local directory by default, S3 (s3s-fs)
//! with an outage in the middle — and `call.ended` says how many chunks there are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidecast_common::bus::{EventBus, LocalBus};

use crate::harness::{as_env, heavy, require_tool, Tidecast};
use crate::rooms::run_bots_with;

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

/// RGB of the pixel at (`x`, `y`) of the frame at `at` seconds of `video`.
pub fn pixel(video: &Path, at: f64, x: u32, y: u32) -> [u8; 3] {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &format!("{at}"), "-i"])
        .arg(video)
        // 2×2: a 4:2:0 picture cannot be cropped to one pixel
        .args([
            "-frames:v",
            "1",
            "-vf",
            &format!("crop=2:2:{}:{}", x & !1, y & !1),
        ])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("running ffmpeg");
    assert!(
        out.status.success() && out.stdout.len() == 12,
        "ffmpeg frame at {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    [out.stdout[0], out.stdout[1], out.stdout[2]]
}

/// `bot-N`'s colour with `--colours` (red, green, blue).
pub fn bot_colour(id: &str) -> [u8; 3] {
    match id {
        "bot-1" => [255, 0, 0],
        "bot-2" => [0, 255, 0],
        "bot-3" => [0, 0, 255],
        other => panic!("unexpected participant {other}"),
    }
}

pub fn near(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 60)
}

/// `rooms.record = true`: a call of three bots (each a solid colour) is recorded from its first
/// join; `call.ended` counts the chunks the store has; the archiver inside `tidecast all`
/// assembles `recording.mp4` (H.264 + AAC, as long as the call within 1 s) with every
/// participant in its tile of the grid; consuming the same event again makes no second file.
#[test]
fn a_recorded_call_is_chunked_then_assembled_into_one_mp4() {
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let t = Tidecast::start(&[], &[("TIDECAST_ROOMS__RECORD", "true")]);
    let room = format!("rec-{}", std::process::id());
    run_bots_with(&t, &room, 3, 15, "0=low", &["--colours"]);
    let ended = call_ended(&t, &room, Duration::from_secs(30));
    let meeting = ended["meeting_id"].as_str().expect("meeting_id");
    let chunks = ended["chunks"].as_u64().unwrap_or(0);
    let secs = ended["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let store = t.dir.join("data").join("store");
    // call.ended can be out before the recorder's writer has stored the last chunk and index
    t.wait_for("every chunk stored", Duration::from_secs(20), || {
        (indexed_chunks(&store, meeting) == chunks).then_some(())
    });
    let found = check_recording(&store, meeting, 3, secs);
    assert_eq!(found, chunks, "{ended}");

    // the archiver's recording
    let dir = store.join("recordings").join(meeting);
    t.wait_for("manifest.json", Duration::from_secs(90), || {
        dir.join("manifest.json").exists().then_some(())
    });
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let mp4 = dir.join("recording.mp4");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height:format=duration",
        ])
        .args(["-of", "json"])
        .arg(&mp4)
        .output()
        .expect("ffprobe");
    let probe: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let codecs: Vec<&str> = probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["codec_name"].as_str())
        .collect();
    assert!(
        codecs.contains(&"h264") && codecs.contains(&"aac"),
        "{probe}"
    );
    let length: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    assert!(
        (length - secs).abs() <= 1.0,
        "recording {length} s, call {secs} s: {manifest}"
    );
    // each participant's colour in its tile, in join order, halfway through
    let tiles = manifest["tiles"].as_array().expect("tiles");
    assert_eq!(tiles.len(), 3, "{manifest}");
    for tile in tiles {
        let id = tile["participant"].as_str().unwrap_or_default();
        let (x, y, w, h) = (
            tile["tile"]["x"].as_u64().unwrap_or(0) as u32,
            tile["tile"]["y"].as_u64().unwrap_or(0) as u32,
            tile["tile"]["width"].as_u64().unwrap_or(0) as u32,
            tile["tile"]["height"].as_u64().unwrap_or(0) as u32,
        );
        let seen = pixel(&mp4, length / 2.0, x + w / 2, y + h / 2);
        assert!(
            near(seen, bot_colour(id)),
            "{id}'s tile shows {seen:?}: {manifest}"
        );
    }
    let made = std::fs::metadata(&mp4)
        .and_then(|m| m.modified())
        .expect("mtime");

    // the recording as VOD from the origin: the whole call in HLS, played by hls.js in the demo
    let master = manifest["vod"]["hls"].as_str().expect("vod.hls");
    let vod_url = format!("http://127.0.0.1:{}{master}", t.http_port);
    let vod = crate::harness::ffprobe_duration(&vod_url);
    assert!(
        (vod - length).abs() <= 1.0,
        "VOD {vod} s, recording {length} s: {manifest}"
    );
    let page = format!("http://127.0.0.1:{}/demo/?src={master}", t.http_port);
    let report = crate::browser::play(&page, 4, 45);
    assert_eq!(report["ok"], true, "hls.js on the VOD: {report}");

    // the same event again (a new consumer group reads the log from the start): nothing new
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = tidecast_common::metrics::Registry::default();
    rt.block_on(async {
        let bus = std::sync::Arc::new(LocalBus::open(t.dir.join("data").join("bus")));
        let settings = tidecast_archive::ArchiverSettings {
            topic: "call-events".into(),
            group: "again".into(),
            work_dir: t.dir.join("again"),
            max_attempts: 1,
            retry: Duration::from_secs(1),
            width: 1280,
            height: 720,
        };
        let store = std::sync::Arc::new(tidecast_common::store::LocalStore::new(store.clone()));
        let archiver = tidecast_archive::Archiver::new(store, bus, settings, &registry);
        let readiness = tidecast_common::lifecycle::Readiness::default();
        let task = tokio::spawn(async move { archiver.run(&readiness).await });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !registry.render().contains("outcome=\"already_done\"} 1") {
            assert!(Instant::now() < deadline, "{}", registry.render());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        task.abort();
    });
    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("meeting dir")
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(
        std::fs::metadata(&mp4).and_then(|m| m.modified()).ok(),
        Some(made)
    );
    let text = crate::http::get(t.http_port, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    assert!(
        text.contains("tidecast_archiver_events_total{outcome=\"assembled\"} 1"),
        "{text}"
    );
}

/// A two-person call (peer-to-peer) recorded from `POST /api/rooms/{room}/recording` on moves to
/// the SFU and is recorded into S3 (s3s-fs); S3 is down for 10 s in the middle, and afterwards
/// every chunk of every index is in the bucket.
#[test]
fn recording_started_by_the_api_reaches_s3_across_an_outage() {
    use crate::archive::S3Server;
    use crate::harness::free_port;
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let root = std::env::temp_dir().join(format!("tidecast-rec-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut s3 = S3Server::start(&root, free_port());
    let t = Tidecast::start(&[], &as_env(&s3.env()));
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

/// The seed's pipeline on real engines, with its faults: rooms and archiver in separate
/// processes on Kafka (tansu) and S3 (s3s-fs). Kafka is down when the call ends — `call.ended`
/// waits in the rooms node's outbox and is delivered once Kafka is back; the archiver is killed
/// in the middle of the assembly — a new one assembles the call, and the recording appears once.
#[test]
fn kafka_down_at_the_end_and_an_archiver_killed_mid_assembly_still_give_one_recording() {
    use crate::archive::S3Server;
    use crate::bus::Kafka;
    use crate::harness::free_port;
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let root = std::env::temp_dir().join(format!("tidecast-rec-kafka-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let s3 = S3Server::start(&root, free_port());
    let kafka_port = free_port();
    let kafka = Kafka::start(kafka_port);
    let brokers = kafka.brokers();
    let env = |extra: &[(&'static str, &'static str)]| {
        let mut v = s3.env();
        v.push(("TIDECAST_BUS__KIND", "kafka".into()));
        v.push(("TIDECAST_BUS__BROKERS", brokers.clone()));
        v.extend(extra.iter().map(|(k, x)| (*k, x.to_string())));
        v
    };
    let rooms_env = env(&[
        ("TIDECAST_ROOMS__RECORD", "true"),
        ("TIDECAST_ARCHIVER__ENABLED", "false"),
    ]);
    let t = Tidecast::start(&[], &as_env(&rooms_env));
    let room = format!("rec-kafka-{}", std::process::id());
    let bots = crate::rooms::spawn_bots(&t, &room, 2, 12);
    // Kafka goes away before the call ends
    std::thread::sleep(Duration::from_secs(8));
    drop(kafka);
    let out = bots.wait_with_output().expect("bots");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    t.wait_for("call.ended in the outbox", Duration::from_secs(30), || {
        let waiting = Tidecast::metric(t.http_port, "tidecast_bus_outbox_events", "kafka");
        let ended = t.log().contains("call ended");
        (ended && waiting > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let kafka = Kafka::start(kafka_port);
    t.wait_for("call.ended delivered", Duration::from_secs(30), || {
        (Tidecast::metric(t.http_port, "tidecast_bus_published_total", "kafka") >= 1).then_some(())
    });

    // an archiver that dies in the middle of the assembly, then one that finishes
    let archiver_env = env(&[]);
    let archiver_env = as_env(&archiver_env);
    let first = Tidecast::start_role("archiver", &[], &archiver_env);
    first.wait_for("the assembly to start", Duration::from_secs(60), || {
        first
            .log()
            .contains("assembling the recording")
            .then_some(())
    });
    drop(first); // SIGKILL
    let recordings = s3.bucket_dir().join("recordings");
    let meeting_dir = std::fs::read_dir(&recordings)
        .expect("recordings")
        .flatten()
        .next()
        .expect("a meeting")
        .path();
    assert!(!meeting_dir.join("manifest.json").exists());
    let second = Tidecast::start_role("archiver", &[], &archiver_env);
    second.wait_for("the recording", Duration::from_secs(120), || {
        meeting_dir.join("manifest.json").exists().then_some(())
    });
    let files: Vec<String> = std::fs::read_dir(&meeting_dir)
        .expect("meeting dir")
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    let mut files = files;
    files.sort();
    assert_eq!(
        files,
        ["manifest.json", "recording.mp4"],
        "{}",
        second.log()
    );
    let (codec, secs) = probe(&meeting_dir.join("recording.mp4"));
    assert_eq!(codec, "h264");
    assert!(secs > 8.0, "{secs} s");
    assert!(
        Tidecast::metric(
            second.http_port,
            "tidecast_archiver_events_total",
            "assembled"
        ) == 1,
        "{}",
        second.log()
    );
    drop(second);
    drop(kafka);
    drop(t);
    drop(s3);
    let _ = std::fs::remove_dir_all(&root);
}
