//! hls.js in headless Chromium plays the player demo.

use std::process::Command;

use crate::harness::{heavy, require_tool, Publisher, Tidecast};

/// Start `play.mjs` (hls.js/dash.js page in headless Chromium) on `url` until `seconds` of
/// playback or `timeout` seconds; read its report with [`play_report`].
pub fn spawn_play(url: &str, seconds: u32, timeout: u32) -> std::process::Child {
    require_tool("node", "apt-get install nodejs npm");
    require_tool("chromium", "apt-get install chromium");
    Command::new("node")
        .arg(browser_dir().join("play.mjs"))
        .args([url, &seconds.to_string(), &timeout.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running node")
}

/// The JSON report of a finished `play.mjs`.
pub fn play_report(player: std::process::Child) -> serde_json::Value {
    let out = player.wait_with_output().expect("play.mjs output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Play `url` in Chromium and return the report.
pub fn play(url: &str, seconds: u32, timeout: u32) -> serde_json::Value {
    play_report(spawn_play(url, seconds, timeout))
}

pub fn browser_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `cd tests/browser && npm ci` (make test does)"
    );
    dir
}

#[test]
fn hlsjs_plays_the_demo_page() {
    browser_dir();
    let _guard = heavy();
    let t = Tidecast::start(&[], &[]);
    let _publisher = Publisher::start(&t.rtmp_url("demo"), 40, "1280x720");
    t.wait_master("demo");
    let url = format!("http://127.0.0.1:{}/demo/?stream=demo", t.http_port);
    let report = play(&url, 8, 45);
    eprintln!("hls.js report: {report}");
    assert_eq!(report["ok"], true, "playback failed: {report}");
    assert!(report["fatal"].is_null(), "{report}");
    let advanced = report["end"].as_f64().unwrap_or(0.0) - report["start"].as_f64().unwrap_or(0.0);
    assert!(
        advanced >= 5.0,
        "currentTime advanced only {advanced}s: {report}"
    );
    // low-latency HLS: hls.js plays from parts close to the live edge
    let latency = report["latency"].as_f64().unwrap_or(f64::MAX);
    assert!(latency < 3.0, "hls.latency {latency}s: {report}");
    // the demo counted as a viewer
    let api = t.get("/api/streams").text();
    assert!(api.contains("\"viewers\": 1"), "{api}");
}
