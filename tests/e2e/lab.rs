//! Multi-region lab (`infra/lab/regions.sh`, network namespaces): origin ← shield ← edge-eu /
//! edge-us ← player-eu / player-us. Each player is steered to its own region's edge, and a cold
//! segment requested by many us players crosses the long shield → edge-us link once. The links
//! have their 40/120 ms round trips (netem, or regions.sh's user-space links). Skipped,
//! with a message saying why, where network namespaces cannot be created (not root, no iproute2).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{binary, heavy, require_tool};

pub(crate) struct Lab {
    pub(crate) prefix: String,
    /// regions.sh (torn down with `down`), or None: the namespaces in `namespaces` are deleted
    pub(crate) script: Option<PathBuf>,
    pub(crate) namespaces: Vec<String>,
    pub(crate) procs: Vec<Child>,
    pub(crate) dir: PathBuf,
}

impl Lab {
    /// The regions lab (`infra/lab/regions.sh up`), torn down on drop; also says how its links
    /// are delayed. `tag` keeps the namespaces of concurrent labs apart.
    pub(crate) fn regions(tag: &str, name: &str) -> (Lab, String) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/lab/regions.sh");
        let prefix = format!("{tag}{}-", std::process::id() % 100_000);
        let up = Command::new(&script)
            .arg("up")
            .env("LAB_PREFIX", &prefix)
            .output()
            .expect("regions.sh up");
        let up_log = String::from_utf8_lossy(&up.stdout).into_owned();
        let lab = Lab {
            prefix,
            script: Some(script),
            namespaces: Vec::new(),
            procs: Vec::new(),
            dir: std::env::temp_dir().join(format!("tidecast-{name}-{}", std::process::id())),
        };
        assert!(
            up.status.success(),
            "regions.sh up: {up_log}{}",
            String::from_utf8_lossy(&up.stderr)
        );
        eprintln!("{up_log}");
        std::fs::create_dir_all(&lab.dir).expect("lab dir");
        (lab, up_log)
    }

    pub(crate) fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) fn spawn(&mut self, ns: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{ns}-{}.log", self.procs.len())))
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ip netns exec");
        self.procs.push(child);
    }

    /// `tidecast {role}` in namespace `ns` with `env` set; returns its index in `procs`.
    pub(crate) fn tidecast(
        &mut self,
        ns: &str,
        role: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> usize {
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(binary().display().to_string());
        argv.push(role.into());
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.spawn(ns, &argv);
        self.procs.len() - 1
    }

    /// `tidecast edge` in the eu and us regions, each on port 8081 of its namespace behind the
    /// shield's link (data under the lab's directory), with `env` set.
    pub(crate) fn spawn_region_edges(&mut self, env: &[(&str, &str)]) {
        for (ns, region, up) in [
            ("edge-eu", "eu", "http://10.10.1.1:8081"),
            ("edge-us", "us", "http://10.10.2.1:8081"),
        ] {
            let data = self.dir.join(ns).display().to_string();
            let args = [
                "--region",
                region,
                "--edge-listen",
                "0.0.0.0:8081",
                "--upstream",
                up,
                "--data-dir",
                &data,
            ];
            self.tidecast(ns, "edge", &args, env);
        }
    }

    /// `curl` inside a namespace: (status line + headers, body).
    pub(crate) fn curl(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), "curl", "-s", "-m", "20"])
            .args(args)
            .output()
            .expect("curl in netns");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn tx_bytes(&self, ns: &str, dev: &str) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.ns(ns), "-s", "-j", "link", "show", "dev", dev])
            .output()
            .expect("ip link stats");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("\"tx\":{\"bytes\":")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no tx bytes for {dev}: {text}"))
    }

    pub(crate) fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                all += &format!(
                    "--- {}\n{}\n",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
        all
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(script) = &self.script {
            let _ = Command::new(script)
                .arg("down")
                .env("LAB_PREFIX", &self.prefix)
                .output();
        }
        for ns in &self.namespaces {
            // the link's relay ends when its devices go with the namespace
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails the test unless network namespaces can be made here (root, iproute2). Probed once per
/// process: tests run in parallel, and two probes racing on one namespace name made one of them
/// see "unavailable" and skip silently.
pub(crate) fn require_netns(what: &str) {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let probe = format!("tc-probe-{}", std::process::id());
        let netns = root
            && Command::new("ip")
                .args(["netns", "add", &probe])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        netns
    });
    assert!(
        available,
        "{what} needs network namespaces: run the tests as root with iproute2 installed \
         (`ip netns add` failed; apt-get install iproute2)"
    );
}

pub(crate) fn wait_until(what: &str, lab: &Lab, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn regions_lab_steers_players_and_crosses_the_long_link_once() {
    require_netns("regions lab");
    require_tool("curl", "apt-get install curl");
    require_tool("ffmpeg", "apt-get install ffmpeg");
    let _guard = heavy();
    let (mut lab, up_log) = Lab::regions("l", "lab");
    let dir = lab.dir.clone();
    let bin = binary().display().to_string();
    let data = |n: &str| dir.join(n).display().to_string();
    let director = "[\"eu=http://10.10.3.1:8081\", \"us=http://10.10.4.1:8081\"]";
    let (d_origin, d_shield) = (data("origin"), data("shield"));
    lab.spawn(
        "origin",
        &[
            &bin,
            "all",
            "--rtmp-listen",
            "127.0.0.1:1935",
            "--http-listen",
            "0.0.0.0:8080",
            "--edge-listen",
            "127.0.0.1:8081",
            "--data-dir",
            &d_origin,
        ],
    );
    lab.spawn(
        "shield",
        &[
            &bin,
            "edge",
            "--role",
            "shield",
            "--region",
            "core",
            "--edge-listen",
            "0.0.0.0:8081",
            "--upstream",
            "http://10.10.0.1:8080",
            "--data-dir",
            &d_shield,
        ],
    );
    lab.spawn_region_edges(&[("TIDECAST_EDGE__DIRECTOR", director)]);
    wait_until("the origin", &lab, Duration::from_secs(30), || {
        lab.curl("origin", &["http://127.0.0.1:8080/healthz"])
            .starts_with("ok")
    });
    let publish = crate::harness::publish_args("rtmp://127.0.0.1:1935/live/lab", 60, "640x360");
    let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
    lab.spawn("origin", &[&["ffmpeg"][..], &publish].concat());
    wait_until(
        "the stream at both edges",
        &lab,
        Duration::from_secs(40),
        || {
            ["player-eu", "player-us"]
                .iter()
                .zip(["10.10.3.1", "10.10.4.1"])
                .all(|(p, edge)| {
                    lab.curl(p, &[&format!("http://{edge}:8081/live/lab/master.m3u8")])
                        .starts_with("#EXTM3U")
                })
        },
    );

    // the links are as long as the lab says: TCP connect time across them is one round trip
    let delayed = up_log.contains("delay 60ms each way");
    for (player, shield_ip, rtt_ms) in [
        ("player-eu", "10.10.1.1", 40),
        ("player-us", "10.10.2.1", 120),
    ] {
        let connect: f64 = lab
            .curl(
                player,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{time_connect}",
                    &format!("http://{shield_ip}:8081/healthz"),
                ],
            )
            .trim()
            .parse()
            .unwrap_or(0.0);
        eprintln!(
            "{player} → shield: TCP connect {:.1} ms (link RTT {rtt_ms} ms)",
            connect * 1000.0
        );
        if delayed {
            let rtt = f64::from(rtt_ms) / 1000.0;
            assert!(
                (rtt * 0.9..rtt * 3.0).contains(&connect),
                "{player}: connect {connect}s over a {rtt_ms} ms link"
            );
        }
    }
    if !delayed {
        eprintln!("links undelayed: {up_log}");
    }

    // each player is steered to its own region's edge (region from the LB/GeoDNS header),
    // whichever director it asks
    for (player, director_ip) in [("player-eu", "10.10.3.1"), ("player-us", "10.10.4.1")] {
        for (region, edge_ip) in [("eu", "10.10.3.1"), ("us", "10.10.4.1")] {
            let head = lab.curl(
                player,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{redirect_url}",
                    "-H",
                    &format!("X-Client-Region: {region}"),
                    &format!("http://{director_ip}:8081/director/live/lab/master.m3u8"),
                ],
            );
            assert_eq!(
                head,
                format!("302 http://{edge_ip}:8081/live/lab/master.m3u8"),
                "{player} in {region}"
            );
        }
    }

    // a cold segment wanted by 20 us players crosses shield → edge-us once
    let playlist = lab.curl(
        "player-eu",
        &["http://10.10.3.1:8081/live/lab/360p/media.m3u8"],
    );
    let last = playlist
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end_matches(".m4s").parse::<u64>().ok())
        .max()
        .unwrap_or_else(|| panic!("no segment in {playlist}"));
    // the newest complete segment is cold at edge-us (only the eu edge has seen this playlist)
    let url = format!("http://10.10.4.1:8081/live/lab/360p/{last}.m4s");
    let long_link = format!("{}v3a", lab.prefix);
    let before = lab.tx_bytes("shield", &long_link);
    let started = Instant::now();
    let sizes = lab.curl(
        "player-us",
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} ",
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            "20",
            &format!("{url}?[1-20]"),
        ],
    );
    let cold_us = started.elapsed();
    let crossed = lab.tx_bytes("shield", &long_link) - before;
    let sizes: Vec<u64> = sizes
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    assert_eq!(sizes.len(), 20, "20 downloads: {sizes:?}");
    let size = sizes[0];
    assert!(
        size > 10_000 && sizes.iter().all(|s| *s == size),
        "{sizes:?}"
    );
    eprintln!(
        "20 us players, cold {size}-byte segment: {crossed} bytes crossed shield→edge-us ({:.2}× the segment) in {cold_us:?}",
        crossed as f64 / size as f64
    );
    assert!(crossed >= size, "the segment crossed the long link");
    assert!(
        crossed < size * 3 / 2,
        "crossed {crossed} bytes for one {size}-byte segment: more than once"
    );
}

pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
