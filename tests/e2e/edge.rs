//! The edge tier against real processes: `tidecast all` (origin) ← `tidecast edge --role shield`
//! ← `tidecast edge`, with ffmpeg publishing and hls.js playing through both tiers.

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::browser::{browser_dir, play, play_report, spawn_play};
use crate::harness::{binary, heavy, Publisher, Tidecast};
use crate::http;

fn origin_count(origin: &Tidecast, route: &str) -> i64 {
    Tidecast::metric(
        origin.http_port,
        "tidecast_origin_http_requests_total",
        &format!("route=\"{route}\""),
    )
}

/// (msn, part) of the preload hint, and the newest complete segment, of a media playlist.
fn hint_and_last(text: &str) -> ((u64, u64), u64) {
    let hint = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .and_then(|u| {
            let mut it = u.trim_end_matches(".m4s\"").split('.');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no hint:\n{text}"));
    let last = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end_matches(".m4s").parse().ok())
        .max()
        .unwrap_or_else(|| panic!("no segment:\n{text}"));
    (hint, last)
}

/// `n` clients GET `path` on `port` at the same moment; their responses.
fn burst(port: u16, path: &str, n: usize) -> Vec<http::Response> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let path = path.to_string();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    http::get(port, &path)
                })
                .expect("spawning a client thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread").expect("client request"))
        .collect()
}

#[test]
fn edge_and_shield_coalesce_and_play_ll_hls() {
    browser_dir();
    let _guard = heavy();
    let origin = Tidecast::start(&[], &[]);
    let origin_url = format!("http://127.0.0.1:{}", origin.http_port);
    let shield = Tidecast::start_role(
        "edge",
        &[
            "--role",
            "shield",
            "--region",
            "core",
            "--upstream",
            &origin_url,
        ],
        &[],
    );
    let shield_url = format!("http://127.0.0.1:{}", shield.edge_port);
    let edge = Tidecast::start_role("edge", &["--region", "eu", "--upstream", &shield_url], &[]);
    let _publisher = Publisher::start(&origin.rtmp_url("cdn"), 75, "640x360");
    origin.wait_master("cdn");
    let media = "/live/cdn/360p/media.m3u8";

    // 500 concurrent requests for a cold segment: one upstream fetch reaches the origin
    let (_, last) = hint_and_last(&origin.get(media).text());
    let segment = format!("/live/cdn/360p/{last}.m4s");
    let before = origin_count(&origin, "segment");
    let responses = burst(edge.edge_port, &segment, 500);
    let fetched = origin_count(&origin, "segment") - before;
    let reference = origin.get(&segment);
    assert_eq!(reference.status, 200);
    let misses = responses
        .iter()
        .filter(|r| r.header("x-cache") == Some("MISS"))
        .count();
    for r in &responses {
        assert_eq!(r.status, 200);
        assert!(r.body == reference.body, "a body differs from the origin's");
    }
    eprintln!(
        "500 cold requests: {fetched} origin fetch, x-cache MISS={misses} COALESCED={} HIT={}",
        responses
            .iter()
            .filter(|r| r.header("x-cache") == Some("COALESCED"))
            .count(),
        responses
            .iter()
            .filter(|r| r.header("x-cache") == Some("HIT"))
            .count()
    );
    assert_eq!(
        fetched, 1,
        "exactly one upstream fetch for 500 cold requests"
    );
    assert_eq!(misses, 1);
    let via = responses[0].header("via").unwrap_or_default().to_string();
    assert!(
        via.contains("tidecast-shield-core") && via.contains("tidecast-edge-eu"),
        "{via}"
    );

    // 200 players blocked on the next part: one blocking request reaches the origin
    let ((msn, part), _) = hint_and_last(&origin.get(media).text());
    let before = origin_count(&origin, "media_playlist");
    let blocked = format!("{media}?_HLS_msn={msn}&_HLS_part={part}");
    let started = Instant::now();
    let responses = burst(edge.edge_port, &blocked, 200);
    let upstream = origin_count(&origin, "media_playlist") - before;
    eprintln!(
        "200 blocked players: {upstream} origin request(s), answered in {:?}",
        started.elapsed()
    );
    let uri = format!("URI=\"{msn}.{part}.m4s\"");
    for r in &responses {
        assert_eq!(r.status, 200);
        assert!(
            r.text()
                .lines()
                .any(|l| l.starts_with("#EXT-X-PART:") && l.contains(&uri)),
            "answered before part {msn}.{part} existed"
        );
    }
    assert_eq!(upstream, 1, "one upstream blocking request for 200 players");

    // 50 players asking for the preload-hinted part: one upstream part request, all served
    // the complete part once it exists
    let ((msn, part), _) = hint_and_last(&origin.get(media).text());
    let hinted = format!("/live/cdn/360p/{msn}.{part}.m4s");
    let before = origin_count(&origin, "part");
    let responses = burst(edge.edge_port, &hinted, 50);
    assert_eq!(
        origin_count(&origin, "part") - before,
        1,
        "one upstream request for the hinted part"
    );
    assert!(responses
        .iter()
        .all(|r| r.status == 200 && !r.body.is_empty() && r.body == responses[0].body));

    // the segment being produced streams through both tiers as the origin writes it (LL-DASH)
    let ((open, _), _) = hint_and_last(&origin.get(media).text());
    let (seg, first_byte, done) =
        http::get_timed(edge.edge_port, &format!("/live/cdn/360p/{open}.m4s"))
            .expect("open segment");
    assert_eq!(seg.status, 200);
    let streamed_for = done - first_byte;
    eprintln!(
        "segment {open} in production through edge+shield: body streamed over {streamed_for:?}"
    );
    assert!(
        streamed_for > Duration::from_millis(300),
        "not streamed: {streamed_for:?}"
    );
    assert_eq!(
        seg.body,
        origin.get(&format!("/live/cdn/360p/{open}.m4s")).body
    );
    // the segment after it (not started yet, but a hint may already point at it) waits for
    // its first part instead of being a 404
    let next = format!("/live/cdn/360p/{}.m4s", open + 1);
    let seg = edge.edge_get(&next);
    assert_eq!(seg.status, 200, "segment {} requested early", open + 1);
    assert_eq!(seg.body, origin.get(&next).body);

    // a 404 is cached briefly: 20 quick requests for a segment that will never exist → 1 origin hit
    let missing = "/live/cdn/360p/999999.m4s";
    let before = Tidecast::metric(
        origin.http_port,
        "tidecast_origin_http_requests_total",
        "status=\"404\"",
    );
    for _ in 0..20 {
        assert_eq!(edge.edge_get(missing).status, 404);
    }
    let misses = Tidecast::metric(
        origin.http_port,
        "tidecast_origin_http_requests_total",
        "status=\"404\"",
    ) - before;
    assert!(
        misses <= 2,
        "404 not cached: {misses} origin requests for 20"
    );

    // hls.js (LL mode) plays through edge → shield → origin
    let url = format!("http://127.0.0.1:{}/demo/?stream=cdn", edge.edge_port);
    let report = play(&url, 6, 45);
    eprintln!("hls.js through two edge tiers: {report}");
    assert_eq!(report["ok"], true, "{report}");
    let latency = report["latency"].as_f64().unwrap_or(f64::MAX);
    assert!(latency < 3.5, "hls.latency through two tiers {latency}s");
    let hits = Tidecast::metric(
        edge.edge_port,
        "tidecast_edge_requests_total",
        "cache=\"HIT\"",
    );
    assert!(hits > 0, "the edge served from cache");
    // cached segments go out with sendfile from their memfd copy: same bytes as the origin's
    let files = Tidecast::metric(edge.edge_port, "tidecast_edge_cache_file_bodies", "");
    assert!(files > 0, "no cached body is file-backed");
    let seg = edge.edge_get(&segment);
    assert_eq!(seg.header("x-cache"), Some("HIT"));
    assert!(seg.body.len() >= 16 * 1024, "{} bytes", seg.body.len());
    // against the origin's answer of the cold burst: by now (~20-35 s on) the segment may
    // have left the origin's live window (window_segments + grace), where it is a 404
    assert!(
        seg.body == reference.body,
        "sendfile body differs: edge {} bytes, origin {} bytes, first difference at byte {:?}",
        seg.body.len(),
        reference.body.len(),
        seg.body
            .iter()
            .zip(&reference.body)
            .position(|(a, b)| a != b),
    );

    // the origin goes away: the edge keeps serving the playlist and segments it has, STALE
    let playlist = edge.edge_get(media);
    assert_eq!(playlist.status, 200);
    drop(origin);
    std::thread::sleep(Duration::from_millis(1500));
    let stale = edge.edge_get(media);
    assert_eq!(stale.status, 200, "{}", stale.text());
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    let seg = edge.edge_get(&segment);
    assert_eq!(seg.status, 200);
    assert!(matches!(seg.header("x-cache"), Some("HIT" | "STALE")));
    // beyond the playlist grace (4 s) the stale playlist is gone
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(edge.edge_get(media).status, 502);
}

#[test]
fn signed_playback_at_the_edge() {
    let _guard = heavy();
    let origin = Tidecast::start(
        &[],
        &[
            ("TIDECAST_EDGE__SIGNING_SECRET", "edge-secret"),
            ("TIDECAST_EDGE__SIGNED_STREAMS", "[\"sec\"]"),
        ],
    );
    let _publisher = Publisher::start(&origin.rtmp_url("sec"), 30, "640x360");
    origin.wait_master("sec");
    let sign = |path: &str, ttl: &str| {
        let out = Command::new(binary())
            .args([
                "token",
                "sign",
                "--secret",
                "edge-secret",
                "--path",
                path,
                "--ttl",
                ttl,
            ])
            .output()
            .expect("tidecast token sign");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let token = sign("/live/sec/", "600");
    let master = "/live/sec/master.m3u8";
    assert_eq!(origin.edge_get(master).status, 403, "no token");
    let ok = origin.edge_get(&format!("{master}?token={token}"));
    assert_eq!(ok.status, 200);
    assert!(ok
        .header("set-cookie")
        .is_some_and(|c| c.contains("tidecast_token=")));
    let tampered = token.replace("path=/live/sec/", "path=/live/");
    assert_eq!(
        origin
            .edge_get(&format!("{master}?token={tampered}"))
            .status,
        403
    );
    let expired = sign("/live/sec/", "0");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        origin.edge_get(&format!("{master}?token={expired}")).status,
        410
    );
    let other = sign("/live/other/", "600");
    assert_eq!(
        origin.edge_get(&format!("{master}?token={other}")).status,
        403
    );
    // the token is not part of the cache key: a second, different token hits the same object
    let (_, last) = hint_and_last(&origin.get("/live/sec/360p/media.m3u8").text());
    let seg = format!("/live/sec/360p/{last}.m4s");
    let first = origin.edge_get(&format!("{seg}?token={token}"));
    let token2 = sign("/live/sec/360p/", "300");
    let second = origin.edge_get(&format!("{seg}?token={token2}"));
    assert_eq!(first.status, 200);
    assert_eq!(
        second.header("x-cache"),
        Some("HIT"),
        "token leaked into the cache key"
    );
    assert_eq!(first.body, second.body);
    // streams without a policy stay open
    assert_eq!(origin.edge_get("/live/nosuch/master.m3u8").status, 404);
}

#[test]
fn origin_failover_and_region_director() {
    browser_dir();
    let _guard = heavy();
    let push = [("TIDECAST_ORIGIN__PUSH_TOKEN", "push-secret")];
    let a = Tidecast::start_role("origin", &[], &push);
    let b = Tidecast::start_role("origin", &[], &push);
    let (a_url, b_url) = (
        format!("http://127.0.0.1:{}", a.http_port),
        format!("http://127.0.0.1:{}", b.http_port),
    );
    let both = format!("{a_url},{b_url}");
    let ingest = Tidecast::start_role(
        "ingest",
        &[],
        &[
            ("TIDECAST_INGEST__ORIGIN_URL", &both),
            ("TIDECAST_INGEST__ORIGIN_TOKEN", "push-secret"),
        ],
    );
    let upstreams = ["--upstream", &a_url, "--upstream", &b_url];
    let eu = Tidecast::start_role(
        "edge",
        &[&["--region", "eu"][..], &upstreams[..]].concat(),
        &[],
    );
    let us = Tidecast::start_role(
        "edge",
        &[&["--region", "us"][..], &upstreams[..]].concat(),
        &[],
    );
    let (eu_url, us_url) = (
        format!("http://127.0.0.1:{}", eu.edge_port),
        format!("http://127.0.0.1:{}", us.edge_port),
    );
    let directory = format!("[\"eu={eu_url}\", \"us={us_url}\"]");
    let director = Tidecast::start_role(
        "edge",
        &[&["--region", "core"][..], &upstreams[..]].concat(),
        &[
            ("TIDECAST_EDGE__DIRECTOR", &directory),
            ("TIDECAST_EDGE__NEAREST__EU", "[\"us\"]"),
        ],
    );
    let _publisher = Publisher::start(&ingest.rtmp_url("fo"), 90, "640x360");
    a.wait_master("fo");
    b.wait_master("fo");

    // the director sends each region's players to its own edge
    let d = |path: &str| http::get(director.edge_port, path).expect("director");
    let r = d("/director/live/fo/master.m3u8?region=eu&token=abc");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("{eu_url}/live/fo/master.m3u8?token=abc").as_str())
    );
    let r = d("/director/live/fo/master.m3u8?region=us");
    assert_eq!(
        r.header("location"),
        Some(format!("{us_url}/live/fo/master.m3u8").as_str())
    );
    let steering = d("/director/steering/fo.json?region=eu").text();
    assert!(
        steering.contains(r#""PATHWAY-PRIORITY":["eu","us"]"#),
        "{steering}"
    );
    let steered = d("/director/live/fo/steered.m3u8?region=us");
    assert_eq!(steered.status, 200);
    let master = m3u8_rs::parse_master_playlist_res(&steered.body).expect("steered master parses");
    assert!(
        steered
            .text()
            .contains("#EXT-X-CONTENT-STEERING:SERVER-URI="),
        "{}",
        steered.text()
    );
    assert!(master.variants.iter().any(|v| v.uri.starts_with(&us_url)));
    assert!(master.variants.iter().any(|v| v.uri.starts_with(&eu_url)));

    // hls.js plays through the eu edge while the stream's origin dies
    let url = format!("{eu_url}/demo/?stream=fo");
    let player = spawn_play(&url, 18, 60);
    std::thread::sleep(Duration::from_secs(8));
    let fetched_from = |base: &str| {
        Tidecast::metric(
            eu.edge_port,
            "tidecast_edge_upstream_fetches_total",
            &format!("upstream=\"{base}\",result=\"ok\""),
        )
    };
    let (primary, secondary, survivor_url) = if fetched_from(&a_url) >= fetched_from(&b_url) {
        (a, b, b_url.clone())
    } else {
        (b, a, a_url.clone())
    };
    let before = fetched_from(&survivor_url);
    let seq = |t: &Tidecast| {
        let text = t.edge_get("/live/fo/360p/media.m3u8").text();
        m3u8_rs::parse_media_playlist_res(text.as_bytes())
            .map(|p| p.media_sequence + p.segments.len() as u64)
            .unwrap_or(0)
    };
    let edge_before = seq(&eu);
    drop(primary);
    eprintln!("killed the stream's origin; {survivor_url} takes over");
    let report = play_report(player);
    eprintln!("hls.js across the origin failover: {report}");
    assert_eq!(
        report["ok"], true,
        "playback stopped at the failover: {report}"
    );
    assert!(
        fetched_from(&survivor_url) > before,
        "the edge fetched from the surviving origin"
    );
    assert!(
        seq(&eu) > edge_before,
        "the playlist kept advancing through the edge"
    );
    assert_eq!(secondary.get("/healthz").status, 200);

    // an edge goes down: the director sends its region to the nearest one
    drop(eu);
    director.wait_for("eu players moved to us", Duration::from_secs(10), || {
        let r = d("/director/live/fo/master.m3u8?region=eu");
        (r.header("location").is_some_and(|l| l.starts_with(&us_url))).then_some(())
    });
}
