//! Operating tidecast: `--check-config` and the SIGTERM drain.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{binary, Publisher, Tidecast};
use crate::http;
use crate::rooms;

/// `tidecast --check-config` with this config file and environment: (exit code, stderr).
fn check_config(file: Option<&std::path::Path>, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("--check-config").env_remove("RUST_BACKTRACE");
    if let Some(f) = file {
        cmd.arg("--config").arg(f);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("tidecast --check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_passes_the_defaults_and_names_each_offending_key() {
    assert_eq!(check_config(None, &[]).0, 0, "the embedded defaults");

    let (code, err) = check_config(
        None,
        &[
            ("TIDECAST_EDGE__ROLE", "cache"),
            ("TIDECAST_ROOMS__API_SECRET", "short"),
            ("TIDECAST_INGEST__RTMP_LISTEN", "localhost:1935"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    for key in ["edge.role", "rooms.api_secret", "ingest.rtmp_listen"] {
        assert!(err.contains(&format!("{key}: ")), "{key} in {err}");
    }

    let dir = std::env::temp_dir().join(format!("tidecast-checkconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[edge]\ncache_mbs = 10\n").expect("write");
    let (code, err) = check_config(Some(&file), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cache_mbs") && err.contains("edge"), "{err}");
    std::fs::write(&file, "[ladder]\nsegment_ms = \"two\"\n").expect("write");
    let (code, err) = check_config(Some(&file), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ladder.segment_ms"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every segment line of a playlist.
fn segments(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| l.ends_with(".m4s") && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// SIGTERM while a stream is published, a participant is in a room and players fetch:
/// readiness turns 503 first while requests are still served, the participant is told to
/// join again, the publisher is closed, the stream's archive ends with ENDLIST and holds every
/// segment, and the process exits 0.
#[test]
fn sigterm_drains_ingest_rooms_and_http_and_loses_no_segment() {
    let _guard = crate::harness::heavy();
    let mut t = Tidecast::start(
        &[],
        &[
            ("TIDECAST_DRAIN_DELAY_SECS", "2"),
            ("TIDECAST_ROOMS__API_SECRET", rooms::SECRET),
        ],
    );
    let publisher = Publisher::start(&t.rtmp_url("drain"), 120, "640x360");
    t.wait_master("drain");
    let live = t.wait_for("three segments", Duration::from_secs(30), || {
        let p = http::get(t.http_port, "/live/drain/360p/media.m3u8").ok()?;
        (segments(&p.text()).len() >= 3).then(|| p.text())
    });
    let token = rooms::mint(t.rooms_port, "drainroom", "alice");
    let (mut ws, _) = rooms::join(t.rooms_port, "drainroom", &token, None);

    let started = Instant::now();
    t.terminate();
    // not ready at once, yet still serving during the drain delay
    let ready = t.wait_for("/readyz 503", Duration::from_secs(2), || {
        let r = http::get(t.http_port, "/readyz").ok()?;
        (r.status == 503).then_some(r.status)
    });
    assert_eq!(ready, 503);
    let edge = http::get(t.edge_port, "/readyz").expect("edge answers while draining");
    assert_eq!(edge.status, 503, "one readiness for every role");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "checked within the delay"
    );
    let r = http::get(t.http_port, "/live/drain/master.m3u8").expect("served while draining");
    assert_eq!(r.status, 200, "requests are served during the drain delay");

    // the participant is told to join again, then its socket closes
    let bye = rooms::recv_type(&mut ws, "draining");
    assert_eq!(bye["type"], "draining");
    assert!(rooms::closed(&mut ws), "the signaling socket closes");

    // the publisher is disconnected (ffmpeg exits with an error: the server closed on it)
    let (ok, _) = publisher.wait(Duration::from_secs(15));
    assert!(!ok, "ffmpeg saw its connection closed");

    let status = t
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("tidecast did not exit after SIGTERM:\n{}", t.log()));
    assert!(status.success(), "exit status {status:?}:\n{}", t.log());
    let took = started.elapsed();
    let log = t.log();
    assert!(log.contains("drained, exiting"), "{log}");
    eprintln!("SIGTERM to exit: {took:?} (2 s of it the drain delay)");

    // the archive: every rendition's VOD playlist ends with ENDLIST and holds at least what
    // was live before the signal (the segment under way is closed and kept too)
    let vod = t.dir.join("data/store/vod/drain");
    let session = std::fs::read_dir(&vod)
        .unwrap_or_else(|e| panic!("no archive at {}: {e}\n{log}", vod.display()))
        .flatten()
        .next()
        .expect("one session")
        .path();
    for rendition in ["360p", "240p", "audio"] {
        let playlist = std::fs::read_to_string(session.join(rendition).join("media.m3u8"))
            .unwrap_or_else(|e| panic!("{rendition}: {e}\n{log}"));
        assert!(
            playlist.trim_end().ends_with("#EXT-X-ENDLIST"),
            "{rendition}: {playlist}"
        );
        let archived = segments(&playlist);
        for s in &archived {
            assert!(session.join(rendition).join(s).is_file(), "{rendition}/{s}");
        }
        if rendition == "360p" {
            let before = segments(&live);
            assert!(
                archived.len() > before.len() && before.iter().all(|s| archived.contains(s)),
                "live {before:?}, archived {archived:?}"
            );
        }
    }
}
