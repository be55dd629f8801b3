//! Network-aware layer selection in the lab (network namespaces and `infra/lab`'s user-space
//! link): skipped, with a message saying why, where namespaces cannot be created.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{binary, heavy, require_tool};
use crate::lab::{ip, require_netns, wait_until, Lab};

/// Network-aware layer selection, for real: the SFU and two publishing bots in one namespace, a
/// subscribing bot in another behind the lab's user-space link capped at 400 kbit/s. The pinned
/// publisher reaches it in the low layer while the cap holds (the SFU's TWCC/GCC estimate sees the
/// link); lifting the cap brings a higher layer back within 10 s and 720p within 20 s.
#[test]
fn sfu_serves_a_capped_subscriber_the_low_layer_and_raises_it_when_the_cap_lifts() {
    require_netns("SFU bandwidth lab");
    require_tool("python3", "apt-get install python3");
    let _guard = heavy();
    let prefix = format!("s{}-", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("tidecast-sfulab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("lab dir");
    let (sfu, sub) = (format!("{prefix}sfu"), format!("{prefix}sub"));
    let mut lab = Lab {
        prefix: prefix.clone(),
        script: None,
        namespaces: vec![sfu.clone(), sub.clone()],
        procs: Vec::new(),
        dir: dir.clone(),
    };
    for ns in [&sfu, &sub] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    // the subscriber's link: 5 ms each way, 400 kbit/s until the rate file says otherwise
    let rate_file = dir.join("rate");
    std::fs::write(&rate_file, "400").expect("rate file");
    let link = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/lab/delay_link.py");
    let (tap_a, tap_b) = (format!("{prefix}a"), format!("{prefix}b"));
    let out = Command::new("python3")
        .arg(&link)
        .args([&tap_a, &sfu, &tap_b, &sub, "5"])
        .arg(&rate_file)
        .output()
        .expect("delay_link.py");
    assert!(
        out.status.success(),
        "delay_link.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ip(&["-n", &sfu, "addr", "add", "10.79.0.1/24", "dev", &tap_a]);
    ip(&["-n", &sfu, "link", "set", &tap_a, "up"]);
    ip(&["-n", &sub, "addr", "add", "10.79.0.2/24", "dev", &tap_b]);
    ip(&["-n", &sub, "link", "set", &tap_b, "up"]);

    let bin = binary().display().to_string();
    let data = dir.join("data").display().to_string();
    lab.spawn(
        "sfu",
        &[
            "env",
            "TIDECAST_ROOMS__MEDIA_LISTEN=0.0.0.0:50000",
            "TIDECAST_ROOMS__MEDIA_ADDRESSES=[\"10.79.0.1\", \"127.0.0.1\"]",
            "RUST_LOG=info,tidecast_rooms=debug",
            &bin,
            "rooms",
            "--rooms-listen",
            "0.0.0.0:7880",
            "--data-dir",
            &data,
        ],
    );
    wait_until("the rooms node", &lab, Duration::from_secs(20), || {
        lab.curl("sfu", &["http://127.0.0.1:7880/healthz"])
            .contains("ok")
    });
    lab.spawn(
        "sfu",
        &[
            &bin,
            "bot",
            "--server",
            "127.0.0.1:7880",
            "--room",
            "net",
            "--participants",
            "2",
            "--prefix",
            "pub-",
            "--duration",
            "58",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    // the subscriber: pins pub-1 (high), pub-2 a thumbnail; the cap lifts 16 s after it connects
    let subscriber = Command::new("ip")
        .args([
            "netns",
            "exec",
            &sub,
            &bin,
            "bot",
            "--server",
            "10.79.0.1:7880",
        ])
        .args([
            "--room",
            "net",
            "--participants",
            "1",
            "--prefix",
            "sub-",
            "--no-publish",
        ])
        .args([
            "--schedule",
            "0=high",
            "--pin",
            "--duration",
            "40",
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("subscriber.log")).expect("log"))
        .spawn()
        .expect("subscriber bot");
    let estimate = |lab: &Lab| {
        lab.curl("sfu", &["http://127.0.0.1:7880/metrics"])
            .lines()
            .find(|l| l.starts_with("tidecast_sfu_estimated_bandwidth_bps") && l.contains("sub-1"))
            .and_then(|l| l.rsplit(' ').next().map(str::to_string))
            .unwrap_or_default()
    };
    // each second: the SFU's estimate and what it offered the capped link
    let mut last_tx = lab.tx_bytes("sfu", &tap_a);
    let mut sample = || {
        std::thread::sleep(Duration::from_secs(1));
        let tx = lab.tx_bytes("sfu", &tap_a);
        let kbps = (tx - last_tx) * 8 / 1000;
        last_tx = tx;
        format!("{} (link {kbps} kbit/s)", estimate(&lab))
    };
    // the capped phase counts from the subscriber's connection (the SFU has an estimate for
    // it): on a busy machine the bot's start alone took 5 s, leaving the phase too short to settle
    let mut estimates: Vec<String> = Vec::new();
    while estimates.len() < 20 && estimate(&lab).is_empty() {
        estimates.push(sample());
    }
    estimates.extend((0..16).map(|_| sample()));
    std::fs::write(&rate_file, "0").expect("lifting the cap");
    let lifted_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // (the bot runs 40 s from its start: samples past its end would say nothing)
    let waited = estimates.len() - 16;
    estimates.extend((0..24 - waited.min(12)).map(|_| sample()));
    eprintln!("subscriber's bandwidth estimate each second (cap lifted after the first 16 with one): {estimates:?}");
    let out = subscriber.wait_with_output().expect("subscriber report");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no subscriber report ({e}): {stdout}\n{}", lab.logs()));
    eprintln!("subscriber report: {report}");
    let p = &report["participants"][0];
    let video = p["tracks"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["publisher"] == "pub-1" && t["kind"] == "video")
        })
        .unwrap_or_else(|| panic!("no video from pub-1: {report}\n{}", lab.logs()));
    let heights: Vec<(u64, u64)> = video["heights"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x["at_ms"].as_u64().unwrap_or(0),
                        x["height"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // the bot's times count from its start; the capped state settles within 10 s (the first
    // estimate is optimistic): for the 6 s before the lift the pinned video is the low layer
    let lifted_ms = lifted_unix_ms.saturating_sub(report["started_unix_ms"].as_u64().unwrap_or(0));
    let in_effect = |t: u64| {
        heights
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, h)| *h)
    };
    // and it keeps flowing: with every video paused the estimate sank to the audio rate and the
    // pinned video stayed away for 10-14 s (now 0.3-0.6 s at most between frames)
    let gap = video["max_frame_gap_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(
        gap <= 3000,
        "the pinned video paused for {gap} ms over the capped link: {heights:?}\n{}",
        lab.logs()
    );
    let window = lifted_ms.saturating_sub(6000);
    let capped_ok = in_effect(window).is_some_and(|h| h <= 180)
        && heights
            .iter()
            .filter(|(t, _)| *t > window && *t < lifted_ms)
            .all(|(_, h)| *h <= 180);
    assert!(
        capped_ok,
        "the pinned video over a 400 kbit/s link must be the low layer: {heights:?} (lifted at {lifted_ms} ms)\n{}",
        lab.logs()
    );
    let after = |min: u64| {
        heights
            .iter()
            .find(|(t, h)| *t >= lifted_ms && *h >= min)
            .map(|(t, _)| t - lifted_ms)
    };
    let (higher, full) = (after(360), after(720));
    eprintln!("after the cap lifted: 360p+ in {higher:?} ms, 720p in {full:?} ms");
    // the SFU probes a held-back subscriber at least every 2 s, and a probe that finds the cap
    // gone lifts the estimate from ~0.35 to ~2.5 Mbit/s at once: the high layer (720p, ~2 Mbit/s
    // for the bots' noisy test picture) in 3.9-5.7 s over 6 runs. While the bots' SDP made
    // str0m probe on its SSRC 0 fallback (see `trim_sdp_lines`) GCC had to creep up instead:
    // 6-20 s, and two runs in five failed even the 20 s this asserted then
    assert!(
        full.is_some_and(|ms| ms <= 10_000),
        "the high layer within 10 s of lifting the cap: {heights:?} (lifted at {lifted_ms} ms)\n{}",
        lab.logs()
    );
}
