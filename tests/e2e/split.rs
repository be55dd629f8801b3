//! Split roles on one machine, each a separate process, the CDN part in the regions lab
//! (`infra/lab/regions.sh`): ingest → two origins (one S3 bucket, s3s-fs) → shield → edges in
//! the eu and us regions ← players there. An RTMP push plays through both edges; SIGTERM to the
//! origin the shield fetches from, during playback, loses no segment from the archive and the
//! players keep playing. Beside it, rooms on two nodes with recording on, Kafka (tansu) and the
//! archiver: bots sent to the wrong node end up on the room's node, and their call is archived
//! as one recording in the same bucket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::archive::{S3Server, ACCESS, BUCKET, SECRET};
use crate::harness::{as_env, free_port, heavy, require_tool, Tidecast};
use crate::lab::{require_netns, wait_until, Lab};

const PUSH_TOKEN: &str = "split-push-secret";
const PUBLISH_SECS: u32 = 60;

/// An HLS player in namespace `ns`: ffmpeg decodes `url` live for `secs` of media, writing its
/// progress to `progress`.
fn player(lab: &Lab, ns: &str, url: &str, secs: u32, progress: &Path) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(ns),
            "ffmpeg",
            "-hide_banner",
            "-v",
            "error",
        ])
        .args(["-nostdin", "-i", url, "-t", &secs.to_string(), "-map", "0"])
        .args(["-f", "null", "-", "-progress"])
        .arg(progress)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg player in the lab")
}

/// Seconds of media a player decoded (the last `out_time_us` of its progress file).
fn played_secs(progress: &Path) -> f64 {
    std::fs::read_to_string(progress)
        .unwrap_or_default()
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("out_time_us="))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e6
}

/// Wait for `child` up to `timeout`; its exit status, or None if it is still running.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One counter summed over the series matching `filter`, read with curl inside `ns`.
fn lab_metric(lab: &Lab, ns: &str, url: &str, name: &str, filter: &str) -> i64 {
    lab.curl(ns, &[url])
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as i64
}

fn segments_of(playlist: &str) -> Vec<u64> {
    playlist
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end_matches(".m4s").parse().ok())
        .collect()
}

#[test]
fn split_roles_play_through_two_regions_and_survive_an_origin_drain() {
    require_netns("split roles");
    require_tool("curl", "apt-get install curl");
    require_tool("ffmpeg", "apt-get install ffmpeg");
    require_tool(
        "s3s-fs",
        "cargo install s3s-fs@0.14.1 --locked --features binary",
    );
    let _guard = heavy();
    let (mut lab, _) = Lab::regions("p", "split");
    let dir = lab.dir.clone();
    let bucket_root = dir.join("s3");
    std::fs::create_dir_all(bucket_root.join(BUCKET)).expect("bucket dir");
    let data = |n: &str| dir.join(n).display().to_string();

    // the origin's namespace holds S3, ingest and both origins
    lab.spawn(
        "origin",
        &[
            "s3s-fs",
            "--host",
            "127.0.0.1",
            "--port",
            "9000",
            "--access-key",
            ACCESS,
            "--secret-key",
            SECRET,
            &bucket_root.display().to_string(),
        ],
    );
    let s3 = [
        ("TIDECAST_STORE__KIND", "s3"),
        ("TIDECAST_STORE__S3__ENDPOINT", "http://127.0.0.1:9000"),
        ("TIDECAST_STORE__S3__BUCKET", BUCKET),
        ("TIDECAST_STORE__S3__ACCESS_KEY_ID", ACCESS),
        ("TIDECAST_STORE__S3__SECRET_ACCESS_KEY", SECRET),
        ("TIDECAST_ORIGIN__ARCHIVE_RETRY_SECS", "1"),
        ("TIDECAST_ORIGIN__PUSH_TOKEN", PUSH_TOKEN),
        ("TIDECAST_DRAIN_DELAY_SECS", "2"),
        ("TIDECAST_DRAIN_TIMEOUT_SECS", "20"),
    ];
    let mut origins = Vec::new();
    for (name, port) in [("origin-a", 8080), ("origin-b", 8090)] {
        let listen = format!("0.0.0.0:{port}");
        let d = data(name);
        let i = lab.tidecast(
            "origin",
            "origin",
            &["--http-listen", &listen, "--data-dir", &d],
            &s3,
        );
        origins.push((i, format!("http://10.10.0.1:{port}")));
    }
    let both = format!("{},{}", origins[0].1, origins[1].1);
    let d = data("ingest");
    lab.tidecast(
        "origin",
        "ingest",
        &[
            "--rtmp-listen",
            "127.0.0.1:1935",
            "--http-listen",
            "127.0.0.1:8070",
            "--data-dir",
            &d,
        ],
        &[
            ("TIDECAST_INGEST__ORIGIN_URL", &both),
            ("TIDECAST_INGEST__ORIGIN_TOKEN", PUSH_TOKEN),
            ("TIDECAST_DRAIN_TIMEOUT_SECS", "20"),
        ],
    );
    // the shield in front of both origins, an edge in each region behind it
    let d = data("shield");
    lab.tidecast(
        "shield",
        "edge",
        &[
            "--role",
            "shield",
            "--region",
            "core",
            "--edge-listen",
            "0.0.0.0:8081",
            "--upstream",
            &origins[0].1,
            "--upstream",
            &origins[1].1,
            "--data-dir",
            &d,
        ],
        &[],
    );
    lab.spawn_region_edges(&[]);
    wait_until(
        "ingest and both origins",
        &lab,
        Duration::from_secs(30),
        || {
            [
                "http://127.0.0.1:8070",
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8090",
            ]
            .iter()
            .all(|u| {
                let url = format!("{u}/readyz");
                lab.curl("origin", &["-o", "/dev/null", "-w", "%{http_code}", &url]) == "200"
            })
        },
    );
    let publish =
        crate::harness::publish_args("rtmp://127.0.0.1:1935/live/split", PUBLISH_SECS, "640x360");
    let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
    lab.spawn("origin", &[&["ffmpeg"][..], &publish].concat());
    let published = Instant::now();
    let edges = [("player-eu", "10.10.3.1"), ("player-us", "10.10.4.1")];
    wait_until(
        "three segments at both edges",
        &lab,
        Duration::from_secs(40),
        || {
            edges.iter().all(|(p, edge)| {
                let url = format!("http://{edge}:8081/live/split/360p/media.m3u8");
                segments_of(&lab.curl(p, &[&url])).len() >= 3
            })
        },
    );

    // a player in each region
    let play_secs = 30;
    let mut players: Vec<(&str, Child, PathBuf)> = edges
        .iter()
        .map(|(ns, edge)| {
            let progress = dir.join(format!("{ns}.progress"));
            let url = format!("http://{edge}:8081/live/split/360p/media.m3u8");
            (*ns, player(&lab, ns, &url, play_secs, &progress), progress)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(6));

    // SIGTERM to the origin the shield fetches from
    let shield_metrics = "http://127.0.0.1:8081/metrics";
    let fetched = |lab: &Lab, origin: &str| {
        lab_metric(
            lab,
            "shield",
            shield_metrics,
            "tidecast_edge_upstream_fetches_total",
            &format!("upstream=\"{origin}\",result=\"ok\""),
        )
    };
    let (a, b) = if fetched(&lab, &origins[0].1) >= fetched(&lab, &origins[1].1) {
        (origins[0].clone(), origins[1].clone())
    } else {
        (origins[1].clone(), origins[0].clone())
    };
    let from_b = fetched(&lab, &b.1);
    let pid = lab.procs[a.0].id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let sigterm = Instant::now();
    eprintln!(
        "SIGTERM to {} at {:?} into the stream",
        a.1,
        published.elapsed()
    );
    // it drains (the delay, then the archive writes under way) and exits while players play on
    let drained = wait_child(&mut lab.procs[a.0], Duration::from_secs(20));
    eprintln!(
        "{} exited {drained:?} {:?} after SIGTERM",
        a.1,
        sigterm.elapsed()
    );
    assert!(
        drained.is_some_and(|s| s.success()),
        "the drained origin exits 0 within the drain timeout\n{}",
        lab.logs()
    );

    for (ns, child, progress) in &mut players {
        let status = wait_child(child, Duration::from_secs(u64::from(play_secs) + 30));
        let secs = played_secs(progress);
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        eprintln!("{ns}: played {secs:.1} s across the origin's drain ({status:?}) {err}");
        assert!(
            status.is_some_and(|s| s.success()),
            "{ns}: ffmpeg {status:?}: {err}\n{}",
            lab.logs()
        );
        assert!(
            secs >= f64::from(play_secs) - 1.0,
            "{ns}: played {secs} of {play_secs} s\n{}",
            lab.logs()
        );
    }
    assert!(
        fetched(&lab, &b.1) > from_b,
        "the shield went on with the other origin"
    );

    // the archive: every rendition, every segment, ENDLIST, from the origin that stayed
    let vod = bucket_root.join(BUCKET).join("vod/split");
    let b_url = b.1.replace("10.10.0.1", "127.0.0.1");
    let session = {
        let mut found = None;
        wait_until(
            "the session archived",
            &lab,
            Duration::from_secs(u64::from(PUBLISH_SECS) + 60),
            || {
                found = std::fs::read_dir(&vod)
                    .ok()
                    .and_then(|mut d| d.next())
                    .and_then(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.join("session.json").is_file());
                found.is_some()
                    && lab_metric(
                        &lab,
                        "origin",
                        &format!("{b_url}/metrics"),
                        "tidecast_store_spooled_objects",
                        "",
                    ) == 0
            },
        );
        found.expect("archived session")
    };
    for rendition in ["360p", "240p", "audio"] {
        let playlist = std::fs::read_to_string(session.join(rendition).join("media.m3u8"))
            .unwrap_or_else(|e| panic!("{rendition}: {e}"));
        assert!(
            playlist.trim_end().ends_with("#EXT-X-ENDLIST"),
            "{rendition}: {playlist}"
        );
        let msns = segments_of(&playlist);
        let expected: Vec<u64> = (0..msns.len() as u64).collect();
        assert_eq!(msns, expected, "{rendition}: contiguous from 0");
        for msn in &msns {
            assert!(
                session.join(rendition).join(format!("{msn}.m4s")).is_file(),
                "{rendition}/{msn}.m4s missing from the bucket"
            );
        }
        let total: f64 = playlist
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .filter_map(|l| l.trim_end_matches(',').parse::<f64>().ok())
            .sum();
        eprintln!(
            "{rendition}: {} segments, {total:.1} s archived",
            msns.len()
        );
        assert!(
            total > f64::from(PUBLISH_SECS) - 3.0,
            "{rendition}: {total} s archived of {PUBLISH_SECS} s"
        );
    }
}

/// Rooms on two nodes with recording on, Kafka (tansu), the archiver and S3 (s3s-fs), each its
/// own process: bots told to join at the node the room does not live on end up on its owner,
/// their call is announced on Kafka, and the archiver assembles one recording in the bucket.
#[test]
fn split_rooms_nodes_redirect_bots_to_the_owner_and_archive_their_call() {
    use crate::bus::Kafka;
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let root = std::env::temp_dir().join(format!("tidecast-split-rooms-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let s3 = S3Server::start(&root, free_port());
    let kafka = Kafka::start(free_port());
    let (pa, pb) = (free_port(), free_port());
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let nodes = format!(r#"["{url_a}", "{url_b}"]"#);
    let mut env = s3.env();
    env.push(("TIDECAST_ROOMS__API_SECRET", crate::rooms::SECRET.into()));
    env.push(("TIDECAST_BUS__KIND", "kafka".into()));
    env.push(("TIDECAST_BUS__BROKERS", kafka.brokers()));
    let archiver = Tidecast::start_role("archiver", &[], &as_env(&env));
    env.push(("TIDECAST_ROOMS__RECORD", "true".into()));
    env.push(("TIDECAST_ROOMS__NODES", nodes));
    let node = |port: u16, me: &str| {
        let mut env = env.clone();
        env.push(("TIDECAST_ROOMS__NODE_URL", me.to_string()));
        Tidecast::start_with_rooms_port("rooms", port, &[], &as_env(&env))
    };
    let a = node(pa, &url_a);
    let b = node(pb, &url_b);
    let healthy = |port: u16, other: &str| {
        Tidecast::metric(
            port,
            "tidecast_rooms_node_healthy",
            &format!("node=\"{other}\""),
        ) == 1
    };
    a.wait_for("the nodes see each other", Duration::from_secs(10), || {
        (healthy(pa, &url_b) && healthy(pb, &url_a)).then_some(())
    });
    let pool = tidecast_common::rendezvous::NodePool::new(&[url_a.clone(), url_b.clone()]);
    let room = (0..100)
        .map(|i| format!("split-call{i}"))
        .find(|r| pool.order(r)[0] == url_b)
        .expect("a room owned by b");

    // both bots are sent to a, the wrong node
    let report = crate::rooms::run_bots_with(
        &a,
        &room,
        2,
        10,
        "0=low",
        &["--secret", crate::rooms::SECRET],
    );
    let participants = report["participants"].as_array().expect("participants");
    assert_eq!(participants.len(), 2, "{report}");
    for p in participants {
        assert!(p["connected_ms"].is_u64(), "{p}");
        assert!(p["errors"].as_array().is_none_or(Vec::is_empty), "{p}");
    }
    assert!(
        Tidecast::metric(pa, "tidecast_rooms_redirects_total", "") >= 2,
        "a redirected both bots:\n{}",
        a.log()
    );
    assert!(b.log().contains(&room), "the call ran on b:\n{}", b.log());

    // the call ends: b announces it on Kafka, the archiver assembles it into the bucket
    let recordings = s3.bucket_dir().join("recordings");
    let manifest = archiver.wait_for("the recording", Duration::from_secs(120), || {
        let meeting = std::fs::read_dir(&recordings)
            .ok()?
            .flatten()
            .next()?
            .path();
        let m = meeting.join("manifest.json");
        m.is_file().then_some(m)
    });
    let video = manifest.with_file_name("recording.mp4");
    let secs = crate::harness::ffprobe_duration(&video.display().to_string());
    eprintln!(
        "the call on {url_b}, archived: {secs:.1} s in {}",
        video.display()
    );
    assert!(secs > 6.0, "recording of {secs} s:\n{}", archiver.log());
    drop((a, b, archiver, kafka, s3));
    let _ = std::fs::remove_dir_all(&root);
}
