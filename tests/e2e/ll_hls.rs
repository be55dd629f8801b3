//! Low-latency HLS against the real binary: blocking playlist reloads answered as soon as the
//! part exists, the 400/503 rules, delta updates, the hinted part, chunked segment streaming.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::harness::{heavy, Tidecast};
use crate::http;

fn publish(t: &Tidecast, key: &str, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "128k", "-f", "flv", &t.rtmp_url(key)])
        .spawn()
        .expect("spawning ffmpeg")
}

/// (msn, part) of the `EXT-X-PRELOAD-HINT`.
fn hint(text: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))
        .unwrap_or_else(|| panic!("no preload hint:\n{text}"));
    let uri = line
        .split("URI=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("");
    let mut it = uri.trim_end_matches(".m4s").split('.');
    let msn = it.next().and_then(|x| x.parse().ok()).expect("hint msn");
    let part = it.next().and_then(|x| x.parse().ok()).expect("hint part");
    (msn, part)
}

/// Does the playlist list the part (an `EXT-X-PART` line, not the preload hint)?
fn lists_part(text: &str, msn: u64, part: u64) -> bool {
    let uri = format!("URI=\"{msn}.{part}.m4s\"");
    text.lines()
        .any(|l| l.starts_with("#EXT-X-PART:") && l.contains(&uri))
}

/// The `mfhd` sequence number of every top-level `moof` in a CMAF segment.
fn mfhd_sequences(data: &[u8]) -> Vec<u32> {
    let be32 = |d: &[u8], at: usize| -> Option<u32> {
        let b = d.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(size) = be32(data, at).map(|s| s as usize).filter(|&s| s >= 8) {
        if data.get(at + 4..at + 8) == Some(b"moof") && data.get(at + 12..at + 16) == Some(b"mfhd")
        {
            out.extend(be32(data, at + 20));
        }
        at += size;
    }
    out
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

#[test]
fn blocking_reload_hints_skips_and_errors() {
    let _guard = heavy();
    let t = Tidecast::start(&[], &[("TIDECAST_ORIGIN__DVR_WINDOW_SECS", "30")]);
    let mut ffmpeg = publish(&t, "ll", 45);
    t.wait_master("ll");
    let base = "/live/ll/360p/media.m3u8";
    let text = t.get(base).text();
    assert!(
        text.contains(
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.002,CAN-SKIP-UNTIL=12"
        ),
        "{text}"
    );
    assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.334"), "{text}");
    assert!(text.contains(",INDEPENDENT=YES"), "{text}");
    assert!(
        text.contains("#EXT-X-RENDITION-REPORT:URI=\"../240p/media.m3u8\""),
        "{text}"
    );
    m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("m3u8-rs parses the LL playlist");
    // the first listed part, to fetch again once it has left the playlist
    let (old_msn, old_part) = text
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .find_map(|l| {
            let uri = l.split("URI=\"").nth(1)?.split('"').next()?;
            let mut it = uri.trim_end_matches(".m4s").split('.');
            Some((
                it.next()?.parse::<u64>().ok()?,
                it.next()?.parse::<u64>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no part listed:\n{text}"));
    let old_part_path = format!("/live/ll/360p/{old_msn}.{old_part}.m4s");
    let old_part_body = t.get(&old_part_path).body;
    assert!(!old_part_body.is_empty());

    // a blocking request for the hinted part returns within 100 ms of the part appearing
    for _ in 0..3 {
        let (msn, part) = hint(&t.get(base).text());
        let port = t.http_port;
        let path = format!("{base}?_HLS_msn={msn}&_HLS_part={part}");
        let asked = Instant::now();
        let blocking = std::thread::spawn(move || {
            let r = http::get(port, &path).expect("blocking request");
            (Instant::now(), r)
        });
        // meanwhile poll the plain playlist every 5 ms to see when the part is produced
        let seen = loop {
            let r = http::get(t.http_port, base).expect("poll");
            if lists_part(&r.text(), msn, part) {
                break Instant::now();
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "part {msn}.{part} never appeared"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let (answered, r) = blocking.join().expect("join");
        assert_eq!(r.status, 200);
        assert!(
            lists_part(&r.text(), msn, part),
            "blocking response lacks {msn}.{part}"
        );
        let diff = if answered > seen {
            answered - seen
        } else {
            seen - answered
        };
        eprintln!("blocking reload for {msn}.{part}: answered {:?} after asking, {diff:?} from production", answered - asked);
        assert!(
            diff < Duration::from_millis(100),
            "answered {diff:?} away from production"
        );
    }

    // the hinted part itself blocks, then serves the complete part
    let (msn, part) = hint(&t.get(base).text());
    let started = Instant::now();
    let r = t.get(&format!("/live/ll/360p/{msn}.{part}.m4s"));
    assert_eq!(r.status, 200, "hinted part {msn}.{part}");
    let kind = r.body.get(4..8).unwrap_or_default();
    assert!(
        r.body.len() > 100 && (kind == b"moof" || kind == b"styp"),
        "a CMAF chunk: {kind:?}"
    );
    assert!(
        started.elapsed() > Duration::from_millis(20),
        "it was not there yet, so it blocked"
    );

    // the segment being produced streams (chunked) and equals the complete one afterwards
    let (msn, _) = hint(&t.get(base).text());
    let streamed = t.get(&format!("/live/ll/360p/{msn}.m4s"));
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"));
    let complete = t.get(&format!("/live/ll/360p/{msn}.m4s"));
    assert_eq!(
        complete.header("content-length").map(|l| l.to_string()),
        Some(complete.body.len().to_string())
    );
    assert_eq!(
        streamed.body, complete.body,
        "streamed segment differs from the stored one"
    );

    // mfhd sequence numbers: +1 per moof (part) across segments, the same in every video
    // rendition, so a player switching renditions sees no fragment discontinuity (VLC)
    let msn = t.wait_for("3 complete segments", Duration::from_secs(20), || {
        let (msn, _) = hint(&t.get(base).text());
        (msn >= 3).then_some(msn)
    });
    let (a, b) = (msn - 3, msn - 2);
    let seqs = |rendition: &str, n: u64| {
        mfhd_sequences(&t.get(&format!("/live/ll/{rendition}/{n}.m4s")).body)
    };
    let first = seqs("360p", a);
    let next = seqs("360p", b);
    let other = seqs("240p", b);
    eprintln!("mfhd: 360p/{a} {first:?} 360p/{b} {next:?} 240p/{b} {other:?}");
    assert!(first.len() >= 3, "one moof per part: {first:?}");
    let joined: Vec<u32> = first.iter().chain(&next).copied().collect();
    assert!(
        joined.windows(2).all(|w| w[1] == w[0] + 1),
        "mfhd not +1 per fragment: {joined:?}"
    );
    assert_eq!(other, next, "renditions number their fragments alike");

    // 400s: _HLS_part alone, _HLS_msn far ahead, malformed values
    let (msn, _) = hint(&t.get(base).text());
    assert_eq!(t.get(&format!("{base}?_HLS_part=1")).status, 400);
    assert_eq!(t.get(&format!("{base}?_HLS_msn={}", msn + 10)).status, 400);
    assert_eq!(t.get(&format!("{base}?_HLS_msn=abc")).status, 400);

    // delta updates once the DVR playlist is longer than CAN-SKIP-UNTIL (12 s)
    let (full, delta) = t.wait_for(
        "a playlist longer than 12 s",
        Duration::from_secs(30),
        || {
            let delta = t.get(&format!("{base}?_HLS_skip=YES")).text();
            let full = t.get(base).text();
            delta
                .contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=")
                .then_some((full, delta))
        },
    );
    let full_p = m3u8_rs::parse_media_playlist_res(full.as_bytes()).expect("full parses");
    // every part within PART-TARGET (RFC 8216bis 4.4.4.9), over 12 s of parts
    let longest = full
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PART:DURATION="))
        .filter_map(|l| l.split(',').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        longest > 0.2 && longest <= 0.334,
        "a part of {longest}s exceeds PART-TARGET 0.334:\n{full}"
    );
    let delta_p = m3u8_rs::parse_media_playlist_res(delta.as_bytes()).expect("delta parses");
    let skipped: usize = delta
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS="))
        .and_then(|n| n.parse().ok())
        .expect("skip count");
    assert_eq!(delta_p.media_sequence, full_p.media_sequence);
    let full_uris: Vec<&str> = full_p.segments.iter().map(|s| s.uri.as_str()).collect();
    let delta_uris: Vec<&str> = delta_p.segments.iter().map(|s| s.uri.as_str()).collect();
    // the full playlist may have advanced by a segment between the two requests
    assert!(
        full_uris.len() >= skipped && full_uris[skipped..].starts_with(&delta_uris[..delta_uris.len().min(full_uris.len() - skipped)]),
        "delta is not a suffix of the full playlist:\nfull {full_uris:?}\ndelta (skipped {skipped}) {delta_uris:?}"
    );

    // by now (over 12 s later) that part is no longer listed as an EXT-X-PART
    assert!(
        !lists_part(&t.get(base).text(), old_msn, old_part),
        "part {old_msn}.{old_part} still listed"
    );
    let unlisted_at = Instant::now();

    // 503: the publisher stalls (SIGSTOP), a blocking request cannot be satisfied in 3 × 2 s
    let (msn, part) = hint(&t.get(base).text());
    signal(&ffmpeg, "-STOP");
    std::thread::sleep(Duration::from_millis(800));
    let (msn2, part2) = hint(&t.get(base).text());
    let started = Instant::now();
    let r = t.get(&format!("{base}?_HLS_msn={msn2}&_HLS_part={part2}"));
    signal(&ffmpeg, "-CONT");
    assert_eq!(
        r.status, 503,
        "stalled stream: hint was {msn}.{part} then {msn2}.{part2}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "held for 3 target durations"
    );
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();

    // a part stays downloadable for at least 3 target durations after it left the playlist
    let hold = Duration::from_secs(6);
    std::thread::sleep(hold.saturating_sub(unlisted_at.elapsed()));
    let again = t.get(&old_part_path);
    assert_eq!(
        again.status, 200,
        "{old_part_path} gone 6 s after leaving the playlist"
    );
    assert!(again.body == old_part_body, "{old_part_path} changed");

    // after the end: ENDLIST, and blocking directives are ignored
    t.wait_for("ENDLIST", Duration::from_secs(30), || {
        t.get(base).text().contains("#EXT-X-ENDLIST").then_some(())
    });
    let started = Instant::now();
    let r = t.get(&format!("{base}?_HLS_msn={}&_HLS_part=0", msn2 + 1));
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let metrics = t.get("/metrics").text();
    assert!(
        metrics.contains("tidecast_origin_blocked_requests 0"),
        "{metrics}"
    );
}
