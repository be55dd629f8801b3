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

/// The Kubernetes manifests: every overlay renders with `kubectl kustomize`, validates against
/// the Kubernetes schemas offline (`kubernetes-validate --strict`), and every configuration a
/// manifest gives tidecast (ConfigMap, env, Secret) passes `tidecast --check-config`.
#[test]
fn kubernetes_overlays_render_validate_and_pass_check_config() {
    crate::harness::require_tool(
        "kubectl",
        "infra/bootstrap.sh --test (kubectl >= 1.27, for `kubectl kustomize`)",
    );
    let home = std::env::var("HOME").unwrap_or_default();
    let python = std::path::PathBuf::from(home).join(".cache/tidecast/venv/bin/python");
    assert!(
        python.exists(),
        "kubernetes-validate is missing: run infra/bootstrap.sh --test (installs it into {})",
        python.display()
    );
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s/check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(binary())
        .output()
        .expect("infra/k8s/check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    for overlay in ["eu", "us", "ap", "origin"] {
        assert!(
            stdout.contains(&format!("overlays/{overlay}: ")),
            "{overlay} checked: {stdout}"
        );
    }
    assert!(
        stdout.contains("7 tidecast configs pass --check-config"),
        "every origin-region workload checked: {stdout}"
    );
}

/// The Grafana dashboard and the Prometheus config name only metrics tidecast registers (a
/// renamed metric breaks this test, not an operator's dashboard).
#[test]
fn the_dashboard_names_only_metrics_tidecast_exposes() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = String::new();
    for crate_dir in [
        "common", "ingest", "origin", "edge", "rooms", "turn", "archive", "cli",
    ] {
        let mut dirs = vec![root.join(crate_dir).join("src")];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).expect("source dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    sources += &std::fs::read_to_string(&p).unwrap_or_default();
                }
            }
        }
    }
    let dashboard =
        std::fs::read_to_string(root.join("infra/observability/grafana-dashboard.json"))
            .expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut names = std::collections::BTreeSet::new();
    for p in json["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let mut rest = expr;
            while let Some(i) = rest.find("tidecast_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(
        names.len() >= 20,
        "the dashboard covers the metrics: {names:?}"
    );
    let unknown: Vec<_> = names
        .iter()
        .filter(|n| !sources.contains(&format!("\"{n}\"")))
        .collect();
    assert!(unknown.is_empty(), "not registered anywhere: {unknown:?}");
}

/// podman with the project's settings (infra/container/containers.conf).
fn podman(args: &[&str]) -> std::process::Output {
    let conf = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/container/containers.conf");
    Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(args)
        .output()
        .expect("podman")
}

/// The container image: built with podman from the local debootstrap base
/// (infra/container/build.sh), run with published ports, it takes an RTMP push and serves the
/// stream's playlists; its HEALTHCHECK passes; `podman stop` drains it (exit 0).
#[test]
fn the_container_image_builds_takes_a_push_and_drains_on_stop() {
    crate::harness::require_tool(
        "podman",
        "infra/bootstrap.sh --test (apt-get install podman runc debootstrap)",
    );
    crate::harness::require_tool(
        "debootstrap",
        "infra/bootstrap.sh --test (apt-get install debootstrap)",
    );
    let info = podman(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
    if !info.status.success() {
        eprintln!(
            "SKIPPED: podman cannot run on this machine: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        );
        return;
    }
    let _guard = crate::harness::heavy();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/container/build.sh");
    let tag = "localhost/tidecast:e2e";
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .args(["--binary", &binary().display().to_string(), "--tag", tag])
        .output()
        .expect("build.sh");
    assert!(
        out.status.success(),
        "build.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("image built in {:?}", started.elapsed());

    let (rtmp, http) = (crate::harness::free_port(), crate::harness::free_port());
    let name = format!("tidecast-e2e-{}", std::process::id());
    let _ = podman(&["rm", "-f", &name]);
    let run = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{rtmp}:1935"),
        "-p",
        &format!("127.0.0.1:{http}:8080"),
        "-e",
        "TIDECAST_DRAIN_TIMEOUT_SECS=20",
        tag,
    ]);
    assert!(
        run.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let logs = podman(&["logs", &self.0]);
                eprintln!(
                    "--- container log ---\n{}",
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            let _ = podman(&["rm", "-f", "-t", "1", &self.0]);
        }
    }
    let _remove = Remove(name.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http::get(http, "/healthz").is_ok_and(|r| r.status == 200) {
        assert!(
            Instant::now() < deadline,
            "the container did not answer /healthz"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let user = podman(&["exec", &name, "id", "-u"]);
    assert_eq!(
        String::from_utf8_lossy(&user.stdout).trim(),
        "10001",
        "runs as non-root"
    );

    // /healthz answers once the origin listens; RTMP binds a moment later
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", rtmp)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the container's RTMP port never accepted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = format!("rtmp://127.0.0.1:{rtmp}/live/boxed");
    let mut publisher = Publisher::start(&url, 60, "640x360");
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let playlist = loop {
        let p = http::get(http, "/live/boxed/360p/media.m3u8").ok();
        if let Some(p) = p.filter(|p| p.status == 200 && segments(&p.text()).len() >= 2) {
            break p.text();
        }
        assert!(Instant::now() < deadline, "no playlist from the container");
        if !publisher.is_running() && restarts < 3 {
            // refused while the container came up: publish again, as OBS reconnects
            restarts += 1;
            publisher = Publisher::start(&url, 60, "640x360");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("playlist from the container:\n{playlist}");
    let health = podman(&["healthcheck", "run", &name]);
    assert!(
        health.status.success(),
        "HEALTHCHECK: {}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );

    // podman stop sends SIGTERM: the stream ends, the process drains and exits 0
    let stopped = Instant::now();
    let stop = podman(&["stop", "-t", "30", &name]);
    assert!(
        stop.status.success(),
        "podman stop: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "drained and exited 0"
    );
    let logs = podman(&["logs", &name]);
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("drained, exiting"),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    eprintln!("podman stop took {:?}", stopped.elapsed());
    drop(publisher);
}

/// A signaling socket to a full `ws://…` URL.
fn ws_to(url: &str) -> rooms::Ws {
    let rest = url.strip_prefix("ws://").expect("ws:// URL");
    let authority = rest.split('/').next().unwrap_or_default();
    let stream = std::net::TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tokio_tungstenite::tungstenite::client::client(url, stream)
        .map(|(ws, _)| ws)
        .unwrap_or_else(|e| panic!("handshake {url}: {e}"))
}

/// Rooms on two nodes: a room lives on the node its name hashes to; a join at the other node
/// is redirected there (and every participant ends up together); when that node dies, the
/// room's participants joining again land on the surviving node. The nodes find each other by
/// name (`rooms.nodes_dns`, as behind a Kubernetes headless Service; here `localhost:PORT`,
/// whose IPv6 answer is not a member since the nodes' own URLs are IPv4); the split test
/// lists them (`rooms.nodes`).
#[test]
fn rooms_on_two_nodes_redirect_joins_to_the_owner_and_move_when_it_dies() {
    let (pa, pb) = (crate::harness::free_port(), crate::harness::free_port());
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let nodes = format!(r#"["localhost:{pa}", "localhost:{pb}"]"#);
    let start = |port: u16, me: &str| {
        Tidecast::start_with_rooms_port(
            "rooms",
            port,
            &[],
            &[
                ("TIDECAST_ROOMS__API_SECRET", rooms::SECRET),
                ("TIDECAST_ROOMS__NODES_DNS", nodes.as_str()),
                ("TIDECAST_ROOMS__NODE_URL", me),
                ("TIDECAST_ROOMS__SFU", "false"),
            ],
        )
    };
    let a = start(pa, &url_a);
    let mut b = start(pb, &url_b);
    let healthy = |port: u16, node: &str| {
        Tidecast::metric(
            port,
            "tidecast_rooms_node_healthy",
            &format!("node=\"{node}\""),
        )
    };
    a.wait_for("a sees b", Duration::from_secs(10), || {
        (healthy(pa, &url_b) == 1).then_some(())
    });
    b.wait_for("b sees a", Duration::from_secs(10), || {
        (healthy(pb, &url_a) == 1).then_some(())
    });
    for port in [pa, pb] {
        assert_eq!(
            Tidecast::metric(port, "tidecast_rooms_nodes", ""),
            2,
            "two members found by name"
        );
    }

    // a room whose owner is b
    let pool = tidecast_common::rendezvous::NodePool::new(&[url_a.clone(), url_b.clone()]);
    let room = (0..100)
        .map(|i| format!("split{i}"))
        .find(|r| pool.order(r)[0] == url_b)
        .expect("a room owned by b");

    // alice asks a: told to go to b, and joins there
    let alice = rooms::mint(pa, &room, "alice");
    let mut ws = ws_to(&format!(
        "ws://127.0.0.1:{pa}/rooms/{room}/ws?token={alice}"
    ));
    let redirect = rooms::recv_type(&mut ws, "redirect");
    let target = format!("ws://127.0.0.1:{pb}/rooms/{room}/ws");
    assert_eq!(redirect["url"], target.as_str(), "{redirect}");
    let mut alice_ws = ws_to(&format!("{target}?token={alice}&redirects=1"));
    rooms::send(&mut alice_ws, serde_json::json!({ "type": "join" }));
    rooms::recv_type(&mut alice_ws, "joined");
    // bob asks b directly: the same room
    let bob = rooms::mint(pb, &room, "bob");
    let (bob_ws, joined) = rooms::join(pb, &room, &bob, None);
    let others = joined["participants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        others.iter().any(|p| p["id"] == "alice"),
        "bob sees alice on the room's node: {joined}"
    );
    let on = |port: u16| {
        http::request(
            port,
            "GET",
            &format!("/api/rooms/{room}"),
            &[("Authorization", &format!("Bearer {}", rooms::SECRET))],
            b"",
        )
        .map(|r| r.status)
        .unwrap_or(0)
    };
    assert_eq!((on(pa), on(pb)), (404, 200), "the room lives on b only");
    assert!(
        Tidecast::metric(pa, "tidecast_rooms_redirects_total", "") >= 1,
        "a counted the redirect"
    );

    // b dies: a marks it down, and the room's participants joining again land on a
    drop(alice_ws);
    drop(bob_ws);
    b.terminate();
    assert!(b.wait_exit(Duration::from_secs(30)).is_some(), "b exits");
    a.wait_for("a marks b down", Duration::from_secs(10), || {
        (healthy(pa, &url_b) == 0).then_some(())
    });
    let (mut again, joined) = rooms::join(pa, &room, &rooms::mint(pa, &room, "alice"), None);
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(on(pa), 200, "the room moved to a");
    rooms::send(&mut again, serde_json::json!({ "type": "leave" }));
}
