//! The live spine: ffmpeg → RTMP → ladder → CMAF → HLS, checked with m3u8-rs and ffprobe;
//! stream end (ENDLIST) and reconnect (DISCONTINUITY, media sequence continues).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use m3u8_rs::{MasterPlaylist, MediaPlaylist};

use crate::harness::{heavy, require_tool, Publisher, Tidecast};

fn master(t: &Tidecast, stream: &str) -> MasterPlaylist {
    let text = t.wait_master(stream);
    m3u8_rs::parse_master_playlist_res(text.as_bytes())
        .unwrap_or_else(|e| panic!("master playlist does not parse: {e:?}\n{text}"))
}

pub fn media(t: &Tidecast, stream: &str, rendition: &str) -> (MediaPlaylist, String) {
    let r = t.get(&format!("/live/{stream}/{rendition}/media.m3u8"));
    assert_eq!(r.status, 200, "{rendition} media playlist");
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    let text = r.text();
    let p = m3u8_rs::parse_media_playlist_res(text.as_bytes())
        .unwrap_or_else(|e| panic!("media playlist does not parse: {e:?}\n{text}"));
    (p, text)
}

fn last_msn(p: &MediaPlaylist) -> u64 {
    p.media_sequence + p.segments.len() as u64 - 1
}

struct Probe {
    codec: String,
    width: u64,
    height: u64,
    fps: f64,
    color_space: String,
}

fn ffprobe(path: &std::path::Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args([
            "stream=codec_name,width,height,r_frame_rate,color_space",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("running ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let s = &j["streams"][0];
    let rate = s["r_frame_rate"].as_str().unwrap_or("0/1");
    let (n, d) = rate.split_once('/').unwrap_or((rate, "1"));
    Probe {
        codec: s["codec_name"].as_str().unwrap_or_default().to_string(),
        width: s["width"].as_u64().unwrap_or(0),
        height: s["height"].as_u64().unwrap_or(0),
        fps: n.parse::<f64>().unwrap_or(0.0) / d.parse::<f64>().unwrap_or(1.0),
        color_space: s["color_space"].as_str().unwrap_or_default().to_string(),
    }
}

#[test]
fn ladder_playlists_segments_and_lifecycle() {
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let t = Tidecast::start(&[], &[]);
    let stream = "spine";
    let publisher = Publisher::start(&t.rtmp_url(stream), 16, "1280x720");

    // multivariant playlist: 720p and below, never 1080p, with derived codecs and sizes
    let m = master(&t, stream);
    let expected = [(1280u64, 720u64), (854, 480), (640, 360), (426, 240)];
    let sizes: Vec<(u64, u64)> = m
        .variants
        .iter()
        .map(|v| {
            v.resolution
                .map(|r| (r.width, r.height))
                .expect("RESOLUTION")
        })
        .collect();
    assert_eq!(sizes, expected, "renditions");
    for v in &m.variants {
        let codecs = v.codecs.as_deref().expect("CODECS");
        assert!(codecs.starts_with("avc1.64"), "video codec in {codecs}");
        assert!(codecs.ends_with(",mp4a.40.2"), "audio codec in {codecs}");
        assert!(v.bandwidth > 100_000, "BANDWIDTH {}", v.bandwidth);
        assert!(v.average_bandwidth.unwrap_or(0) <= v.bandwidth);
        let fps = v.frame_rate.expect("FRAME-RATE");
        assert!((fps - 30.0).abs() < 0.01, "FRAME-RATE {fps}");
        assert_eq!(v.audio.as_deref(), Some("aac"));
    }
    assert!(m
        .alternatives
        .iter()
        .any(|a| a.uri.as_deref() == Some("audio/media.m3u8")));
    let renditions: Vec<String> = m
        .variants
        .iter()
        .map(|v| v.uri.trim_end_matches("/media.m3u8").to_string())
        .chain(std::iter::once("audio".to_string()))
        .collect();

    // every media playlist advances
    let before: BTreeMap<String, u64> = renditions
        .iter()
        .map(|r| (r.clone(), last_msn(&media(&t, stream, r).0)))
        .collect();
    t.wait_for("playlists to advance", Duration::from_secs(15), || {
        renditions
            .iter()
            .all(|r| {
                let p = media(&t, stream, r).0;
                last_msn(&p) > before[r] && p.segments.len() >= 4
            })
            .then_some(())
    });

    // every advertised segment downloads; ffprobe checks codec, size and frame rate
    let mut durations: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let mut color_spaces = BTreeMap::new();
    for (i, r) in renditions.iter().enumerate() {
        let (p, text) = media(&t, stream, r);
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:"), "{text}");
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\""), "{text}");
        let init = t.get(&format!("/live/{stream}/{r}/init.mp4"));
        assert_eq!(init.status, 200);
        let mut file = init.body.clone();
        for s in &p.segments {
            let seg = t.get(&format!("/live/{stream}/{r}/{}", s.uri));
            assert_eq!(seg.status, 200, "{r}/{}", s.uri);
            assert!(seg
                .header("cache-control")
                .unwrap_or("")
                .contains("immutable"));
            file.extend_from_slice(&seg.body);
        }
        if r == "audio" {
            continue;
        }
        for (k, s) in p.segments.iter().enumerate() {
            durations
                .entry(p.media_sequence + k as u64)
                .or_default()
                .push(s.duration);
        }
        let path = t.dir.join(format!("{r}.mp4"));
        std::fs::write(&path, &file).expect("write probe file");
        let probe = ffprobe(&path);
        assert_eq!(probe.codec, "h264", "{r}");
        assert_eq!((probe.width, probe.height), expected[i], "{r} size");
        assert!((probe.fps - 30.0).abs() < 0.1, "{r} fps {}", probe.fps);
        color_spaces.insert(r.clone(), probe.color_space);
    }
    // every rung keeps the 720p source's colour matrix (BT.709), none is converted to BT.601
    assert!(
        color_spaces.values().all(|c| c == "bt709"),
        "colour matrix per rendition: {color_spaces:?}"
    );
    // keyframe alignment: the same segment has the same duration in every video rendition
    let mut compared = 0;
    for (msn, d) in &durations {
        if d.len() == expected.len() {
            let (lo, hi) = d
                .iter()
                .fold((f32::MAX, 0f32), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            assert!(
                hi - lo < 0.001,
                "segment {msn} durations differ across renditions: {d:?}"
            );
            assert!((1.9..=2.1).contains(&hi), "segment {msn} duration {hi}");
            compared += 1;
        }
    }
    assert!(compared >= 3, "too few segments compared: {durations:?}");

    // a plain (non-LL) HLS client reads the same LL playlist URL: ffprobe through ffmpeg's demuxer
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width",
            "-of",
            "csv=p=0",
        ])
        .arg(format!(
            "http://127.0.0.1:{}/live/{stream}/master.m3u8",
            t.http_port
        ))
        .output()
        .expect("ffprobe");
    let probed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && probed.contains("h264,1280"),
        "ffprobe on the master playlist: {probed} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // publisher stops: ENDLIST on every media playlist
    let (ok, err) = publisher.wait(Duration::from_secs(30));
    assert!(ok, "ffmpeg failed: {err}");
    t.wait_for("ENDLIST everywhere", Duration::from_secs(15), || {
        renditions
            .iter()
            .all(|r| media(&t, stream, r).1.contains("#EXT-X-ENDLIST"))
            .then_some(())
    });
    let (ended, _) = media(&t, stream, "720p");
    let end_msn = last_msn(&ended);

    // publisher comes back: same stream, DISCONTINUITY, sequence continues
    let again = Publisher::start(&t.rtmp_url(stream), 10, "1280x720");
    let (resumed, text) = t.wait_for("resumed playlist", Duration::from_secs(30), || {
        let (p, text) = media(&t, stream, "720p");
        (!text.contains("#EXT-X-ENDLIST") && last_msn(&p) > end_msn).then_some((p, text))
    });
    assert!(
        resumed.media_sequence >= ended.media_sequence,
        "media sequence went back"
    );
    assert!(text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
    let first_new = resumed
        .segments
        .iter()
        .position(|s| s.discontinuity)
        .expect("a discontinuity");
    assert_eq!(
        resumed.media_sequence + first_new as u64,
        end_msn + 1,
        "{text}"
    );
    // the audio rendition and the others continue the same way
    for r in &renditions {
        let (_, text) = media(&t, stream, r);
        assert!(
            text.contains("#EXT-X-DISCONTINUITY\n") || !text.contains("ENDLIST"),
            "{r}: {text}"
        );
    }
    let api: serde_json::Value = serde_json::from_slice(&t.get("/api/streams").body).expect("json");
    let s = &api["streams"][0];
    assert_eq!(s["name"], stream);
    assert_eq!(s["sessions"], 2);
    assert_eq!(s["renditions"].as_array().map(|a| a.len()), Some(5));
    let metrics = t.get("/metrics").text();
    assert!(
        metrics.contains("tidecast_origin_live_streams 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidecast_ingest_publishers 1"),
        "{metrics}"
    );
    drop(again);
}

#[test]
fn split_ingest_pushes_to_a_remote_origin() {
    let _guard = heavy();
    let origin = Tidecast::start_role(
        "origin",
        &[],
        &[("TIDECAST_ORIGIN__PUSH_TOKEN", "push-secret")],
    );
    let origin_url = format!("http://127.0.0.1:{}", origin.http_port);
    // a wrong token is refused with 401 and nothing is created
    let bad = Tidecast::start_role(
        "ingest",
        &[],
        &[
            ("TIDECAST_INGEST__ORIGIN_URL", origin_url.as_str()),
            ("TIDECAST_INGEST__ORIGIN_TOKEN", "wrong"),
        ],
    );
    let (ok, err) =
        Publisher::start(&bad.rtmp_url("nope"), 3, "320x240").wait(Duration::from_secs(20));
    assert!(ok, "{err}");
    assert!(
        origin.log().contains("push refused: bad token"),
        "{}",
        origin.log()
    );
    drop(bad);
    let ingest = Tidecast::start_role(
        "ingest",
        &[],
        &[
            ("TIDECAST_INGEST__ORIGIN_URL", origin_url.as_str()),
            ("TIDECAST_INGEST__ORIGIN_TOKEN", "push-secret"),
        ],
    );
    let publisher = Publisher::start(&ingest.rtmp_url("split"), 8, "640x360");
    let m = master(&origin, "split");
    assert_eq!(m.variants.len(), 2, "360p and 240p");
    let (p, _) = media(&origin, "split", "360p");
    let seg = origin.get(&format!("/live/split/360p/{}", p.segments[0].uri));
    assert_eq!(seg.status, 200);
    assert!(!origin.get("/api/streams").text().contains("\"nope\""));
    // the ladder says how much media each rendition has output (its real-time factor's base)
    let output_ms = |ingest: &Tidecast| {
        Tidecast::metric(
            ingest.http_port,
            "tidecast_ladder_output_milliseconds_total",
            "stream=\"split\",rendition=\"360p\"",
        )
    };
    assert!(output_ms(&ingest) >= 2000, "a 2 s segment is out");
    let (ok, err) = publisher.wait(Duration::from_secs(30));
    assert!(ok, "{err}");
    origin.wait_for("ENDLIST pushed", Duration::from_secs(15), || {
        media(&origin, "split", "360p")
            .1
            .contains("#EXT-X-ENDLIST")
            .then_some(())
    });
    let metrics = ingest.get("/metrics").text();
    assert!(
        metrics.contains("tidecast_ingest_push_failures_total 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tidecast_ladder_output_milliseconds_total{stream=\"split\""),
        "the stream's ladder series went with its publisher: {metrics}"
    );
}

/// Publish with ffmpeg using a given frame rate, GOP (frames) and B-frames, like differently
/// configured OBS.
fn publish_gop(
    t: &Tidecast,
    key: &str,
    (size, fps): (&str, u32),
    gop: u32,
    seconds: u32,
) -> std::process::Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}:rate={fps}"),
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-pix_fmt", "yuv420p",
        ])
        .args([
            "-g",
            &gop.to_string(),
            "-keyint_min",
            &gop.to_string(),
            "-sc_threshold",
            "0",
        ])
        .args(["-c:a", "aac", "-b:a", "128k", "-f", "flv", &t.rtmp_url(key)])
        .spawn()
        .expect("spawning ffmpeg")
}

#[test]
fn passthrough_follows_source_keyframes_and_long_gops_are_transcoded() {
    let _guard = heavy();
    let t = Tidecast::start(&[], &[("TIDECAST_LADDER__PASSTHROUGH", "true")]);
    // two publishers at once: a 2 s GOP (passthrough) and OBS's "auto" ~8.3 s GOP (transcoded)
    let mut short = publish_gop(&t, "short", ("1280x720", 30), 60, 16);
    let mut long = publish_gop(&t, "long", ("640x360", 30), 250, 16);

    let m = master(&t, "short");
    let uris: Vec<&str> = m.variants.iter().map(|v| v.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "source/media.m3u8",
            "480p/media.m3u8",
            "360p/media.m3u8",
            "240p/media.m3u8"
        ]
    );
    let source = &m.variants[0];
    assert_eq!(
        source.resolution.map(|r| (r.width, r.height)),
        Some((1280, 720))
    );
    // the source codec string is the publisher's own (ffmpeg x264 High@3.1)
    assert_eq!(source.codecs.as_deref(), Some("avc1.64001f,mp4a.40.2"));

    t.wait_for("4 segments", Duration::from_secs(20), || {
        (media(&t, "short", "240p").0.segments.len() >= 4).then_some(())
    });
    let lists: Vec<MediaPlaylist> = ["source", "480p", "360p", "240p"]
        .iter()
        .map(|r| media(&t, "short", r).0)
        .collect();
    let first = lists.iter().map(|p| p.media_sequence).max().unwrap_or(0);
    let last = lists.iter().map(last_msn).min().unwrap_or(0);
    assert!(last >= first + 2, "too few common segments");
    for msn in first..=last {
        let d: Vec<f32> = lists
            .iter()
            .map(|p| p.segments[(msn - p.media_sequence) as usize].duration)
            .collect();
        assert!(
            d.iter().all(|x| (x - d[0]).abs() < 0.001),
            "segment {msn}: {d:?}"
        );
    }
    let seg = t.get(&format!("/live/short/source/{}", lists[0].segments[0].uri));
    assert_eq!(seg.status, 200);

    // the long-GOP publisher got no passthrough and still 2 s segments
    let m = master(&t, "long");
    assert!(
        m.variants.iter().all(|v| !v.uri.starts_with("source")),
        "{:?}",
        m.variants
    );
    let (p, text) = t.wait_for("segments", Duration::from_secs(20), || {
        let (p, text) = media(&t, "long", "360p");
        (p.segments.len() >= 3).then_some((p, text))
    });
    assert!(p.segments.iter().all(|s| s.duration < 2.2), "{text}");
    assert!(t.log().contains("passthrough=false"), "{}", t.log());
    let _ = short.wait();
    let _ = long.wait();
}

/// A 5 fps publisher (slides, a screen, a camera at a low rate) gets 2 s segments in every video
/// rendition. With `cmafmux` planning the fragments itself, its chunk grid (two 200 ms frames per
/// 250 ms part) ended a chunk exactly on the fragment's end, and from then on it never closed the
/// fragment: one endless segment 0, the HLS playlists stuck (see `ingest::segmenting`). Its LL-HLS
/// parts are one frame (200 ms): two frames made 400 ms parts, past the 334 ms PART-TARGET.
#[test]
fn a_5_fps_publisher_gets_segments_in_every_rendition() {
    let _guard = heavy();
    let t = Tidecast::start(&[], &[]);
    let mut publisher = publish_gop(&t, "slow", ("640x360", 5), 10, 12);
    let status = publisher.wait().expect("ffmpeg");
    assert!(status.success(), "ffmpeg: {status}");
    let (audio, _) = t.wait_for("the stream's end", Duration::from_secs(20), || {
        let (p, text) = media(&t, "slow", "audio");
        p.end_list.then_some((p, text))
    });
    for rendition in ["360p", "240p"] {
        let (p, text) = media(&t, "slow", rendition);
        assert!(p.end_list, "{rendition}: no ENDLIST\n{text}");
        assert!(
            p.segments.len() >= 5,
            "{rendition}: too few segments\n{text}"
        );
        let whole = &p.segments[..p.segments.len() - 1];
        assert!(
            whole.iter().all(|s| (1.9..2.1).contains(&s.duration)),
            "{rendition}: segments are not 2 s\n{text}"
        );
        assert!(
            last_msn(&p).abs_diff(last_msn(&audio)) <= 1,
            "{rendition} ends at segment {}, audio at {}\n{text}",
            last_msn(&p),
            last_msn(&audio)
        );
        // LL-HLS parts of 200 ms (one 5 fps frame), not 400 ms: within PART-TARGET
        let target: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-PART-INF:PART-TARGET="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{rendition}: no PART-TARGET\n{text}"));
        let parts: Vec<f64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-PART:DURATION="))
            .filter_map(|l| l.split(',').next()?.parse().ok())
            .collect();
        assert!(
            parts.len() >= 10 && parts.iter().all(|d| *d <= target),
            "{rendition}: parts {parts:?} against PART-TARGET {target}\n{text}"
        );
    }
}

/// A stream the origin forgets (`ended_stream_ttl_secs` after it ended) takes its metric series
/// with it: a long-running origin's `/metrics` does not grow with every stream ever published.
#[test]
fn forgotten_streams_leave_metrics() {
    let _guard = heavy();
    let t = Tidecast::start(&[], &[("TIDECAST_ORIGIN__ENDED_STREAM_TTL_SECS", "2")]);
    let (ok, err) =
        Publisher::start(&t.rtmp_url("brief"), 5, "320x240").wait(Duration::from_secs(30));
    assert!(ok, "{err}");
    let count = || {
        crate::http::get(t.http_port, "/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("stream=\"brief\""))
            .count()
    };
    assert!(
        count() > 0,
        "the ended stream is still reported within its TTL"
    );
    t.wait_for(
        "the forgotten stream's series to go",
        Duration::from_secs(15),
        || (count() == 0).then_some(()),
    );
}
