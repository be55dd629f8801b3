//! Starts the real `tidecast` binary on free loopback ports, waits for readiness, runs ffmpeg
//! publishers, and always cleans up (processes are killed on drop).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::http;

/// Tests that transcode share 2 cores: they take this lock so they never overlap.
static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback port no other test in this run was given and nothing listens on.
///
/// Ports come from below the kernel's ephemeral range (32768–60999 by default), walked by a
/// process-wide counter from a pid-dependent start: binding port 0 and releasing it (the usual
/// trick) lets the kernel hand the same port to the next caller or to any outgoing connection
/// before the binary binds it — CI once saw origin and rooms given one port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = (std::process::id() % 600) * 20;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// The first of `n` consecutive free ports (see [`free_port`]).
pub fn free_ports(n: u16) -> u16 {
    loop {
        let first = free_port();
        if (1..n).all(|i| free_port() == first + i) {
            return first;
        }
    }
}

/// Fails the test with an install hint when a tool is missing.
/// Owned environment pairs as the `&[(&str, &str)]` [`Tidecast::start`] takes.
pub fn as_env<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub fn require_tool(tool: &str, hint: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: {hint} (or run `make test`, which installs it)"
    );
}

pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("TIDECAST_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/e2e-… → target/debug/tidecast
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("tidecast");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p tidecast` (make test does)",
        bin.display()
    );
    bin
}

pub struct Tidecast {
    child: Child,
    pub rtmp_port: u16,
    pub http_port: u16,
    pub edge_port: u16,
    pub rooms_port: u16,
    pub turn_port: u16,
    pub turn_tls_port: u16,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Tidecast {
    /// Start `tidecast all` with extra args and env; waits until HTTP and RTMP accept.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Tidecast {
        Self::start_role("all", args, env)
    }

    /// Start `tidecast {role}`; waits for HTTP, and for RTMP unless the role is `origin`.
    pub fn start_role(role: &str, args: &[&str], env: &[(&str, &str)]) -> Tidecast {
        Self::start_with_rooms_port(role, free_port(), args, env)
    }

    /// [`Tidecast::start_role`] with its rooms signaling on `rooms_port` (chosen beforehand:
    /// rooms nodes list each other).
    pub fn start_with_rooms_port(
        role: &str,
        rooms_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Tidecast {
        let rtmp_port = free_port();
        let http_port = free_port();
        let edge_port = free_port();
        let turn_port = free_port();
        let turn_tls_port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tidecast-e2e-{}-{}", std::process::id(), http_port));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("tidecast.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(binary());
        cmd.arg(role)
            .arg("--rtmp-listen")
            .arg(format!("127.0.0.1:{rtmp_port}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--edge-listen")
            .arg(format!("127.0.0.1:{edge_port}"))
            .arg("--rooms-listen")
            .arg(format!("127.0.0.1:{rooms_port}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            // the SFU's media port: any free one (tests run side by side)
            .env("TIDECAST_ROOMS__MEDIA_LISTEN", "127.0.0.1:0")
            .env(
                "TIDECAST_TURN__LISTEN_UDP",
                format!("127.0.0.1:{turn_port}"),
            )
            .env(
                "TIDECAST_TURN__LISTEN_TCP",
                format!("127.0.0.1:{turn_port}"),
            )
            .env(
                "TIDECAST_TURN__LISTEN_TLS",
                format!("127.0.0.1:{turn_tls_port}"),
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(logfile);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning tidecast");
        let t = Tidecast {
            child,
            rtmp_port,
            http_port,
            edge_port,
            rooms_port,
            turn_port,
            turn_tls_port,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = |port| {
                http::get(port, "/healthz")
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            };
            let http_ok = matches!(role, "edge" | "rooms") || healthy(http_port);
            let rooms_ok = !matches!(role, "all" | "rooms") || healthy(rooms_port);
            let edge_ok = !matches!(role, "all" | "edge") || healthy(edge_port);
            let rtmp_ok = matches!(role, "origin" | "edge" | "rooms" | "turn" | "archiver")
                || TcpStream::connect(("127.0.0.1", rtmp_port)).is_ok();
            if http_ok && edge_ok && rooms_ok && rtmp_ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tidecast did not start:\n{}",
                t.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }

    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.rtmp_port)
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::get(self.http_port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GET from this instance's edge.
    pub fn edge_get(&self, path: &str) -> http::Response {
        http::get(self.edge_port, path).unwrap_or_else(|e| panic!("GET edge {path}: {e}"))
    }

    /// A counter or gauge from `/metrics` (on `port`), summed over series matching `filter`.
    pub fn metric(port: u16, name: &str, filter: &str) -> i64 {
        http::get(port, "/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `f` returns Some, polling every 250 ms.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Send SIGTERM (the drain starts).
    pub fn terminate(&self) {
        let out = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output()
            .expect("kill");
        assert!(out.status.success(), "kill -TERM failed");
    }

    /// Wait for the process to exit; its status, or None after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Wait until the stream's master playlist is served.
    pub fn wait_master(&self, stream: &str) -> String {
        self.wait_for("master playlist", Duration::from_secs(40), || {
            let r = http::get(self.http_port, &format!("/live/{stream}/master.m3u8")).ok()?;
            (r.status == 200).then(|| r.text())
        })
    }
}

impl Drop for Tidecast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tidecast log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// ffmpeg publishing a test pattern the way OBS does (x264 veryfast, 2 s GOP, AAC, FLV/RTMP).
pub struct Publisher {
    child: Child,
}

/// ffmpeg's arguments to publish as OBS does: a `size` test picture at 30 fps and a tone, x264
/// with a 2 s GOP and AAC, in real time for `seconds`, as FLV to the RTMP `url`.
pub fn publish_args(url: &str, seconds: u32, size: &str) -> Vec<String> {
    let picture = format!("testsrc2=size={size}:rate=30");
    let seconds = seconds.to_string();
    [
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-re",
        "-f",
        "lavfi",
        "-i",
        &picture,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &seconds,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-ac",
        "2",
        "-f",
        "flv",
        url,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

impl Publisher {
    pub fn start(url: &str, seconds: u32, size: &str) -> Publisher {
        require_tool("ffmpeg", "apt-get install ffmpeg");
        let child = Command::new("ffmpeg")
            .args(publish_args(url, seconds, size))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ffmpeg");
        Publisher { child }
    }

    /// Wait for ffmpeg to exit; returns (success, stderr).
    pub fn wait(mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (status.success(), err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return (false, "timed out".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Duration (s) ffprobe reads from `url` or a file.
pub fn ffprobe_duration(url: &str) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "no duration of {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
